//! Code generation for one block: each decoded instruction becomes x86-64
//! code or a bail to the interpreter, and the block's exits go back to the
//! run loop or through link slots (see the parent module for the register
//! use and the rules translated code keeps).
//!
//! Safe code only: it appends bytes to an assembler buffer. Placing them
//! in the code region and running them is the parent's business.

#![deny(unsafe_code)]

use std::mem::offset_of;

use dynasmrt::x64::X64Relocation;
use dynasmrt::{DynasmApi, DynasmLabelApi, VecAssembler, dynasm};

use super::{ChunkStamp, EXIT_BAIL, EXIT_LINK, JitContext, ctx};
use crate::decode::{Decoded, Op};

const PAGE_BYTES: u64 = 4096;

/// A static exit waiting to be emitted out of line.
struct Cold {
    label: dynasmrt::DynamicLabel,
    kind: ColdKind,
}

enum ColdKind {
    /// Bail at the instruction `index` at block-relative offset `rel`.
    Bail { index: i32, rel: i32 },
    /// Leave for a target `rel` bytes from the block start, having executed
    /// `executed` instructions of the block.
    Exit { executed: i32, rel: i64 },
}

pub(super) struct Emitter<'a> {
    /// The block's code; finalized by the caller.
    pub(super) ops: VecAssembler<X64Relocation>,
    exit: usize,
    exit_link: usize,
    links: &'a mut [usize],
    links_used: &'a mut usize,
    page_offset: u64,
    count: i32,
    cold: Vec<Cold>,
}

impl<'a> Emitter<'a> {
    /// An emitter for code that will live at address `at` and leave
    /// through the stubs at `exit` and `exit_link`, handing out link slots
    /// from `links[*links_used..]`; the block has `count` instructions, the
    /// first at page offset `page_offset`.
    pub(super) fn new(
        at: usize,
        exit: usize,
        exit_link: usize,
        links: &'a mut [usize],
        links_used: &'a mut usize,
        page_offset: u64,
        count: i32,
    ) -> Self {
        Emitter {
            ops: VecAssembler::new(at),
            exit,
            exit_link,
            links,
            links_used,
            page_offset,
            count,
            cold: Vec::new(),
        }
    }

    pub(super) fn block(&mut self, insns: &[Decoded], chunk: ChunkStamp) {
        let count = self.count;
        let exit = self.exit;
        let no_room = self.ops.new_dynamic_label();
        let stale = self.ops.new_dynamic_label();
        let generation_at = (chunk.index * 4) as i32;
        let generation = chunk.generation as i32;
        dynasm!(self.ops
            ; .arch x64
            ; mov rax, QWORD [r12 + ctx!(chunk_generation)]
            ; cmp DWORD [rax + generation_at], generation
            ; jne =>stale
            ; lea rax, [r13 + count]
            ; cmp rax, QWORD [r12 + ctx!(icount_limit)]
            ; ja =>no_room
        );
        let mut rel: i64 = 0;
        let mut ended = false;
        for (index, d) in insns.iter().enumerate() {
            if self.insn(index as i32, rel, d) {
                ended = true;
                break;
            }
            rel += i64::from(d.len);
        }
        if !ended {
            self.static_exit(count, rel);
        }
        dynasm!(self.ops
            ; .arch x64
            ; =>no_room
            ; mov QWORD [r12 + ctx!(pc)], rbp
            ; xor eax, eax
            ; jmp extern exit
            // Retired code: the run loop translates the block anew and
            // points the link that led here at the new translation.
            ; =>stale
            ; mov QWORD [r12 + ctx!(pc)], rbp
            ; mov eax, EXIT_LINK as i32
            ; jmp extern exit
        );
        for cold in std::mem::take(&mut self.cold) {
            dynasm!(self.ops ; .arch x64 ; =>cold.label);
            match cold.kind {
                ColdKind::Bail { index, rel } => self.bail_now(index, rel),
                ColdKind::Exit { executed, rel } => self.static_exit(executed, rel),
            }
        }
    }

    fn bail_label(&mut self, index: i32, rel: i64) -> dynasmrt::DynamicLabel {
        let label = self.ops.new_dynamic_label();
        self.cold.push(Cold {
            label,
            kind: ColdKind::Bail {
                index,
                rel: rel as i32,
            },
        });
        label
    }

    fn bail_now(&mut self, index: i32, rel: i32) {
        let exit = self.exit;
        dynasm!(self.ops
            ; .arch x64
            ; lea rax, [rbp + rel]
            ; mov QWORD [r12 + ctx!(pc)], rax
            ; add r13, index
            ; mov eax, EXIT_BAIL as i32
            ; jmp extern exit
        );
    }

    /// Leave the block for block-relative target `rel` after `executed`
    /// instructions: chained through a link slot when the target is in the
    /// same page, to the run loop otherwise.
    fn static_exit(&mut self, executed: i32, rel: i64) {
        let exit = self.exit;
        let target = self.page_offset as i64 + rel;
        let rel32 = rel as i32;
        if (0..PAGE_BYTES as i64).contains(&target) && *self.links_used < self.links.len() {
            // Slots are handed out unlinked; `Jit::set_link` links them.
            let slot = &mut self.links[*self.links_used];
            *slot = self.exit_link;
            let slot = slot as *mut usize as i64;
            *self.links_used += 1;
            dynasm!(self.ops
                ; .arch x64
                ; add r13, executed
                ; add rbp, rel32
                ; mov rax, QWORD slot
                ; mov QWORD [r12 + ctx!(link)], rax
                ; jmp QWORD [rax]
            );
        } else {
            // `rel` fits in 32 bits: an immediate is at most 2^20 and the
            // block is within a page.
            dynasm!(self.ops
                ; .arch x64
                ; add r13, executed
                ; add rbp, rel32
                ; mov QWORD [r12 + ctx!(pc)], rbp
                ; xor eax, eax
                ; jmp extern exit
            );
        }
    }

    fn load_x(&mut self, host: u8, r: u8) {
        let r = r & 31;
        if r == 0 {
            dynasm!(self.ops ; .arch x64 ; xor Rd(host), Rd(host));
        } else {
            let disp = i32::from(r) * 8;
            dynasm!(self.ops ; .arch x64 ; mov Rq(host), QWORD [rbx + disp]);
        }
    }

    fn store_x(&mut self, r: u8, host: u8) {
        let r = r & 31;
        if r != 0 {
            let disp = i32::from(r) * 8;
            dynasm!(self.ops ; .arch x64 ; mov QWORD [rbx + disp], Rq(host));
        }
    }

    /// Emit one instruction; returns true if it ended the block.
    fn insn(&mut self, index: i32, rel: i64, d: &Decoded) -> bool {
        const RAX: u8 = 0;
        const RCX: u8 = 1;
        let imm = d.imm;
        let len = i64::from(d.len);
        let (rd, rs1, rs2) = (d.rd, d.rs1, d.rs2);
        match d.op {
            Op::Lui => {
                dynasm!(self.ops ; .arch x64 ; mov rax, imm);
                self.store_x(rd, RAX);
            }
            Op::Auipc => {
                let rel32 = rel as i32;
                dynasm!(self.ops
                    ; .arch x64
                    ; lea rax, [rbp + rel32]
                    ; add rax, imm
                );
                self.store_x(rd, RAX);
            }
            Op::Jal => {
                let link = (rel + len) as i32;
                dynasm!(self.ops ; .arch x64 ; lea rax, [rbp + link]);
                self.store_x(rd, RAX);
                self.static_exit(index + 1, rel + i64::from(imm));
                return true;
            }
            Op::Jalr => {
                let link = (rel + len) as i32;
                let exit = self.exit;
                let executed = index + 1;
                self.load_x(RAX, rs1);
                dynasm!(self.ops
                    ; .arch x64
                    ; add rax, imm
                    ; and rax, -2
                    ; mov QWORD [r12 + ctx!(pc)], rax
                    ; lea rcx, [rbp + link]
                );
                self.store_x(rd, RCX);
                dynasm!(self.ops
                    ; .arch x64
                    ; add r13, executed
                    ; xor eax, eax
                    ; jmp extern exit
                );
                return true;
            }
            Op::Beq | Op::Bne | Op::Blt | Op::Bge | Op::Bltu | Op::Bgeu => {
                self.load_x(RAX, rs1);
                self.load_x(RCX, rs2);
                let taken = self.ops.new_dynamic_label();
                self.cold.push(Cold {
                    label: taken,
                    kind: ColdKind::Exit {
                        executed: index + 1,
                        rel: rel + i64::from(imm),
                    },
                });
                dynasm!(self.ops ; .arch x64 ; cmp rax, rcx);
                match d.op {
                    Op::Beq => dynasm!(self.ops ; .arch x64 ; je =>taken),
                    Op::Bne => dynasm!(self.ops ; .arch x64 ; jne =>taken),
                    Op::Blt => dynasm!(self.ops ; .arch x64 ; jl =>taken),
                    Op::Bge => dynasm!(self.ops ; .arch x64 ; jge =>taken),
                    Op::Bltu => dynasm!(self.ops ; .arch x64 ; jb =>taken),
                    _ => dynasm!(self.ops ; .arch x64 ; jae =>taken),
                }
            }
            Op::Lb | Op::Lh | Op::Lw | Op::Ld | Op::Lbu | Op::Lhu | Op::Lwu => {
                let size = d.op.access_size() as i32;
                let bail = self.bail_label(index, rel);
                self.address(rs1, imm, size, false, bail);
                match d.op {
                    Op::Lb => dynasm!(self.ops ; .arch x64 ; movsx rcx, BYTE [r15 + rax]),
                    Op::Lbu => dynasm!(self.ops ; .arch x64 ; movzx ecx, BYTE [r15 + rax]),
                    Op::Lh => dynasm!(self.ops ; .arch x64 ; movsx rcx, WORD [r15 + rax]),
                    Op::Lhu => dynasm!(self.ops ; .arch x64 ; movzx ecx, WORD [r15 + rax]),
                    Op::Lw => dynasm!(self.ops ; .arch x64 ; movsxd rcx, DWORD [r15 + rax]),
                    Op::Lwu => dynasm!(self.ops ; .arch x64 ; mov ecx, DWORD [r15 + rax]),
                    _ => dynasm!(self.ops ; .arch x64 ; mov rcx, QWORD [r15 + rax]),
                }
                self.store_x(rd, RCX);
            }
            Op::Sb | Op::Sh | Op::Sw | Op::Sd => {
                let size = d.op.access_size() as i32;
                let bail = self.bail_label(index, rel);
                dynasm!(self.ops
                    ; .arch x64
                    ; cmp QWORD [r12 + ctx!(stores_bail)], 0
                    ; jne =>bail
                );
                self.address(rs1, imm, size, true, bail);
                // A store overlapping cached code (the chunk of its first
                // byte - 2, or of its last byte) bails: the interpreter
                // retires that code.
                dynasm!(self.ops
                    ; .arch x64
                    ; cmp rax, 2
                    ; jb =>bail
                    ; mov rdx, QWORD [r12 + ctx!(code_chunks)]
                    ; lea rcx, [rax - 2]
                    ; shr rcx, crate::block::CHUNK_SHIFT as i8
                    ; bt QWORD [rdx], rcx
                    ; jc =>bail
                    ; lea rcx, [rax + (size - 1)]
                    ; shr rcx, crate::block::CHUNK_SHIFT as i8
                    ; bt QWORD [rdx], rcx
                    ; jc =>bail
                );
                // Mark the pages of its first and last byte dirty (without
                // translation, in M-mode or under a bare satp, an access may
                // cross a page).
                dynasm!(self.ops
                    ; .arch x64
                    ; mov rdx, QWORD [r12 + ctx!(dirty_pages)]
                    ; mov rcx, rax
                    ; shr rcx, crate::ram::PAGE_SHIFT as i8
                    ; mov BYTE [rdx + rcx], 1
                    ; lea rcx, [rax + (size - 1)]
                    ; shr rcx, crate::ram::PAGE_SHIFT as i8
                    ; mov BYTE [rdx + rcx], 1
                );
                self.load_x(RCX, rs2);
                match size {
                    1 => dynasm!(self.ops ; .arch x64 ; mov BYTE [r15 + rax], cl),
                    2 => dynasm!(self.ops ; .arch x64 ; mov WORD [r15 + rax], cx),
                    4 => dynasm!(self.ops ; .arch x64 ; mov DWORD [r15 + rax], ecx),
                    _ => dynasm!(self.ops ; .arch x64 ; mov QWORD [r15 + rax], rcx),
                }
            }
            Op::Addi
            | Op::Slti
            | Op::Sltiu
            | Op::Xori
            | Op::Ori
            | Op::Andi
            | Op::Slli
            | Op::Srli
            | Op::Srai
            | Op::Addiw
            | Op::Slliw
            | Op::Srliw
            | Op::Sraiw => {
                if rd & 31 == 0 {
                    return false;
                }
                self.load_x(RAX, rs1);
                let sh = imm as i8;
                match d.op {
                    Op::Addi => dynasm!(self.ops ; .arch x64 ; add rax, imm),
                    Op::Slti => dynasm!(self.ops
                        ; .arch x64
                        ; xor edx, edx
                        ; cmp rax, imm
                        ; setl dl
                        ; mov rax, rdx
                    ),
                    Op::Sltiu => dynasm!(self.ops
                        ; .arch x64
                        ; xor edx, edx
                        ; cmp rax, imm
                        ; setb dl
                        ; mov rax, rdx
                    ),
                    Op::Xori => dynasm!(self.ops ; .arch x64 ; xor rax, imm),
                    Op::Ori => dynasm!(self.ops ; .arch x64 ; or rax, imm),
                    Op::Andi => dynasm!(self.ops ; .arch x64 ; and rax, imm),
                    Op::Slli => dynasm!(self.ops ; .arch x64 ; shl rax, sh),
                    Op::Srli => dynasm!(self.ops ; .arch x64 ; shr rax, sh),
                    Op::Srai => dynasm!(self.ops ; .arch x64 ; sar rax, sh),
                    Op::Addiw => dynasm!(self.ops ; .arch x64 ; add eax, imm ; movsxd rax, eax),
                    Op::Slliw => dynasm!(self.ops ; .arch x64 ; shl eax, sh ; movsxd rax, eax),
                    Op::Srliw => dynasm!(self.ops ; .arch x64 ; shr eax, sh ; movsxd rax, eax),
                    _ => dynasm!(self.ops ; .arch x64 ; sar eax, sh ; movsxd rax, eax),
                }
                self.store_x(rd, RAX);
            }
            Op::Div
            | Op::Divu
            | Op::Rem
            | Op::Remu
            | Op::Divw
            | Op::Divuw
            | Op::Remw
            | Op::Remuw
            | Op::Other => {
                // The interpreter executes these; the block ends here.
                self.bail_now(index, rel as i32);
                return true;
            }
            Op::Fence => {}
            _ => {
                if rd & 31 == 0 {
                    return false;
                }
                self.load_x(RAX, rs1);
                self.load_x(RCX, rs2);
                match d.op {
                    Op::Add => dynasm!(self.ops ; .arch x64 ; add rax, rcx),
                    Op::Sub => dynasm!(self.ops ; .arch x64 ; sub rax, rcx),
                    Op::Sll => dynasm!(self.ops ; .arch x64 ; shl rax, cl),
                    Op::Srl => dynasm!(self.ops ; .arch x64 ; shr rax, cl),
                    Op::Sra => dynasm!(self.ops ; .arch x64 ; sar rax, cl),
                    Op::Slt => dynasm!(self.ops
                        ; .arch x64
                        ; xor edx, edx
                        ; cmp rax, rcx
                        ; setl dl
                        ; mov rax, rdx
                    ),
                    Op::Sltu => dynasm!(self.ops
                        ; .arch x64
                        ; xor edx, edx
                        ; cmp rax, rcx
                        ; setb dl
                        ; mov rax, rdx
                    ),
                    Op::Xor => dynasm!(self.ops ; .arch x64 ; xor rax, rcx),
                    Op::Or => dynasm!(self.ops ; .arch x64 ; or rax, rcx),
                    Op::And => dynasm!(self.ops ; .arch x64 ; and rax, rcx),
                    Op::Mul => dynasm!(self.ops ; .arch x64 ; imul rax, rcx),
                    Op::Mulh => dynasm!(self.ops ; .arch x64 ; imul rcx ; mov rax, rdx),
                    Op::Mulhu => dynasm!(self.ops ; .arch x64 ; mul rcx ; mov rax, rdx),
                    Op::Mulhsu => dynasm!(self.ops
                        ; .arch x64
                        // mulhsu = mulhu - (x1 < 0 ? x2 : 0)
                        ; mov r8, rax
                        ; sar r8, 63
                        ; and r8, rcx
                        ; mul rcx
                        ; sub rdx, r8
                        ; mov rax, rdx
                    ),
                    Op::Addw => dynasm!(self.ops ; .arch x64 ; add eax, ecx ; movsxd rax, eax),
                    Op::Subw => dynasm!(self.ops ; .arch x64 ; sub eax, ecx ; movsxd rax, eax),
                    Op::Sllw => dynasm!(self.ops ; .arch x64 ; shl eax, cl ; movsxd rax, eax),
                    Op::Srlw => dynasm!(self.ops ; .arch x64 ; shr eax, cl ; movsxd rax, eax),
                    Op::Sraw => dynasm!(self.ops ; .arch x64 ; sar eax, cl ; movsxd rax, eax),
                    Op::Mulw => dynasm!(self.ops ; .arch x64 ; imul eax, ecx ; movsxd rax, eax),
                    other => unreachable!("{other:?} is handled above"),
                }
                self.store_x(rd, RAX);
            }
        }
        false
    }

    /// Leave in rax the RAM offset that the access of `size` bytes at
    /// `x[rs1] + imm` touches, or jump to `bail`.
    fn address(&mut self, rs1: u8, imm: i32, size: i32, store: bool, bail: dynasmrt::DynamicLabel) {
        self.load_x(0, rs1);
        if imm != 0 {
            dynasm!(self.ops ; .arch x64 ; add rax, imm);
        }
        let (direct, tlb, key) = if store {
            (ctx!(store_direct), ctx!(tlb_store), ctx!(store_key))
        } else {
            (ctx!(load_direct), ctx!(tlb_load), ctx!(load_key))
        };
        let page_limit = PAGE_BYTES as i32 - size;
        dynasm!(self.ops
            ; .arch x64
            ; cmp QWORD [r12 + direct], 0
            ; jne >physical
            // TLB: entry (vaddr >> 12) % 256, tag = page | key.
            ; mov rcx, rax
            ; shr rcx, 12
            ; and ecx, 255
            ; shl ecx, 4
            ; add rcx, QWORD [r12 + tlb]
            ; mov rdx, rax
            ; and rdx, -4096
            ; or rdx, QWORD [r12 + key]
            ; cmp rdx, QWORD [rcx]
            ; jne =>bail
            // Accesses crossing a page take the interpreter's path.
            ; mov edx, eax
            ; and edx, 4095
            ; cmp edx, page_limit
            ; ja =>bail
            ; or rdx, QWORD [rcx + 8]
            ; mov rax, rdx
            ; physical:
            ; sub rax, QWORD [r12 + ctx!(ram_base)]
            ; mov rdx, QWORD [r12 + ctx!(ram_size)]
            ; sub rdx, size
            ; cmp rax, rdx
            ; ja =>bail
        );
    }
}
