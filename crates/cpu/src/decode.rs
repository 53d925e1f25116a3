//! Decoding once: an instruction becomes a flat [`Op`] with its operand
//! fields already extracted, so executing it from the decoded-instruction
//! cache is a single dispatch.

/// The operations the interpreter executes from their decoded form. System,
/// atomic and floating-point instructions are rare in hot loops and keep
/// their full decoding ([`Op::Other`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Lui,
    Auipc,
    Jal,
    Jalr,
    Beq,
    Bne,
    Blt,
    Bge,
    Bltu,
    Bgeu,
    Lb,
    Lh,
    Lw,
    Ld,
    Lbu,
    Lhu,
    Lwu,
    Sb,
    Sh,
    Sw,
    Sd,
    Addi,
    Slti,
    Sltiu,
    Xori,
    Ori,
    Andi,
    Slli,
    Srli,
    Srai,
    Addiw,
    Slliw,
    Srliw,
    Sraiw,
    Add,
    Sub,
    Sll,
    Slt,
    Sltu,
    Xor,
    Srl,
    Sra,
    Or,
    And,
    Mul,
    Mulh,
    Mulhsu,
    Mulhu,
    Div,
    Divu,
    Rem,
    Remu,
    Addw,
    Subw,
    Sllw,
    Srlw,
    Sraw,
    Mulw,
    Divw,
    Divuw,
    Remw,
    Remuw,
    Fence,
    /// Anything else: executed from `raw` by the general path (which also
    /// raises illegal-instruction for what is not an instruction).
    Other,
}

impl Op {
    /// Bytes a load or store accesses (0 for other operations).
    pub fn access_size(self) -> u64 {
        match self {
            Op::Lb | Op::Lbu | Op::Sb => 1,
            Op::Lh | Op::Lhu | Op::Sh => 2,
            Op::Lw | Op::Lwu | Op::Sw => 4,
            Op::Ld | Op::Sd => 8,
            _ => 0,
        }
    }
}

/// A decoded instruction (16 bytes, so a block of them is dense in the
/// host cache). `imm` is the sign-extended immediate (every RV64
/// immediate fits in 32 bits); for shifts it is the shift amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub op: Op,
    pub rd: u8,
    pub rs1: u8,
    pub rs2: u8,
    /// 2 or 4.
    pub len: u8,
    pub imm: i32,
    /// The instruction as fetched (the 16-bit parcel for compressed ones).
    pub raw: u32,
}

/// Decode `insn` (a 32-bit instruction; compressed ones already expanded).
pub fn decode(insn: u32, raw: u32, len: u8) -> Decoded {
    let rd = ((insn >> 7) & 31) as u8;
    let rs1 = ((insn >> 15) & 31) as u8;
    let rs2 = ((insn >> 20) & 31) as u8;
    let funct3 = (insn >> 12) & 7;
    let funct7 = insn >> 25;
    let imm_i = (insn as i32) >> 20;
    let imm_s = (((insn as i32) >> 25) << 5) | ((insn >> 7) & 31) as i32;
    let imm_u = (insn & 0xffff_f000) as i32;
    let imm_b = (((insn as i32) >> 31) << 12)
        | (((insn >> 25) & 0x3f) << 5) as i32
        | (((insn >> 8) & 0xf) << 1) as i32
        | (((insn >> 7) & 1) << 11) as i32;
    let imm_j = (((insn as i32) >> 31) << 20)
        | (((insn >> 21) & 0x3ff) << 1) as i32
        | (((insn >> 20) & 1) << 11) as i32
        | (((insn >> 12) & 0xff) << 12) as i32;
    let shamt6 = ((insn >> 20) & 63) as i32;
    let shamt5 = ((insn >> 20) & 31) as i32;
    use Op::*;
    let (op, imm) = match insn & 0x7f {
        0x37 => (Lui, imm_u),
        0x17 => (Auipc, imm_u),
        0x6f => (Jal, imm_j),
        0x67 if funct3 == 0 => (Jalr, imm_i),
        0x63 => match funct3 {
            0 => (Beq, imm_b),
            1 => (Bne, imm_b),
            4 => (Blt, imm_b),
            5 => (Bge, imm_b),
            6 => (Bltu, imm_b),
            7 => (Bgeu, imm_b),
            _ => (Other, 0),
        },
        0x03 => match funct3 {
            0 => (Lb, imm_i),
            1 => (Lh, imm_i),
            2 => (Lw, imm_i),
            3 => (Ld, imm_i),
            4 => (Lbu, imm_i),
            5 => (Lhu, imm_i),
            6 => (Lwu, imm_i),
            _ => (Other, 0),
        },
        0x23 => match funct3 {
            0 => (Sb, imm_s),
            1 => (Sh, imm_s),
            2 => (Sw, imm_s),
            3 => (Sd, imm_s),
            _ => (Other, 0),
        },
        0x13 => match funct3 {
            0 => (Addi, imm_i),
            2 => (Slti, imm_i),
            3 => (Sltiu, imm_i),
            4 => (Xori, imm_i),
            6 => (Ori, imm_i),
            7 => (Andi, imm_i),
            1 if insn >> 26 == 0 => (Slli, shamt6),
            5 if insn >> 26 == 0 => (Srli, shamt6),
            5 if insn >> 26 == 0x10 => (Srai, shamt6),
            _ => (Other, 0),
        },
        0x1b => match (funct3, funct7) {
            (0, _) => (Addiw, imm_i),
            (1, 0) => (Slliw, shamt5),
            (5, 0) => (Srliw, shamt5),
            (5, 0x20) => (Sraiw, shamt5),
            _ => (Other, 0),
        },
        0x33 => (
            match (funct7, funct3) {
                (0, 0) => Add,
                (0x20, 0) => Sub,
                (0, 1) => Sll,
                (0, 2) => Slt,
                (0, 3) => Sltu,
                (0, 4) => Xor,
                (0, 5) => Srl,
                (0x20, 5) => Sra,
                (0, 6) => Or,
                (0, 7) => And,
                (1, 0) => Mul,
                (1, 1) => Mulh,
                (1, 2) => Mulhsu,
                (1, 3) => Mulhu,
                (1, 4) => Div,
                (1, 5) => Divu,
                (1, 6) => Rem,
                (1, 7) => Remu,
                _ => Other,
            },
            0,
        ),
        0x3b => (
            match (funct7, funct3) {
                (0, 0) => Addw,
                (0x20, 0) => Subw,
                (0, 1) => Sllw,
                (0, 5) => Srlw,
                (0x20, 5) => Sraw,
                (1, 0) => Mulw,
                (1, 4) => Divw,
                (1, 5) => Divuw,
                (1, 6) => Remw,
                (1, 7) => Remuw,
                _ => Other,
            },
            0,
        ),
        0x0f if funct3 == 0 => (Fence, 0),
        _ => (Other, 0),
    };
    Decoded {
        op,
        rd,
        rs1,
        rs2,
        len,
        imm,
        raw,
    }
}
