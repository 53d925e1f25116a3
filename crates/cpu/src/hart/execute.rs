//! The interpreter's instruction semantics: the integer instructions from
//! their decoded form, and the rest (system, CSR, atomic, floating point,
//! fence.i) from their encoding.

use super::mmu::Access;
use super::trap::{Trap, cause};
use super::{Hart, mpp_privilege, sext};
use crate::csr::{self, status};
use crate::decode::{Decoded, Op};
use crate::fpu::{self, Fmt, FpOp, Rm};
use crate::{Bus, Exit, Privilege, irq};

#[inline(always)]
fn sext32(v: u64) -> u64 {
    v as i32 as i64 as u64
}

impl Hart {
    #[inline(always)]
    fn set_x(&mut self, rd: usize, value: u64) {
        self.s.x[rd] = value;
        self.s.x[0] = 0;
    }

    fn fp_enabled(&self) -> bool {
        self.s.mstatus & status::FS != 0
    }

    fn set_f(&mut self, rd: usize, value: u64) {
        self.s.f[rd] = value;
        self.s.mstatus |= status::FS_DIRTY;
    }

    /// Execute one decoded instruction at `pc` (which `self.s.pc` must
    /// equal) and return the next `pc`; the caller stores it. On a trap
    /// `pc` is unchanged. Returning the next pc rather than storing it keeps
    /// the run loop's pc in a register instead of a chain of memory round
    /// trips.
    #[inline(always)]
    pub(super) fn execute(&mut self, bus: &mut dyn Bus, d: Decoded, pc: u64) -> Result<u64, Trap> {
        let npc = pc.wrapping_add(u64::from(d.len));
        let rd = usize::from(d.rd & 31);
        let x1 = self.s.x[usize::from(d.rs1 & 31)];
        let x2 = self.s.x[usize::from(d.rs2 & 31)];
        let imm = i64::from(d.imm) as u64;
        let shamt = d.imm as u32;
        let branch = |taken: bool| if taken { pc.wrapping_add(imm) } else { npc };
        let value = match d.op {
            Op::Lui => imm,
            Op::Auipc => pc.wrapping_add(imm),
            Op::Jal => {
                self.set_x(rd, npc);
                return Ok(pc.wrapping_add(imm));
            }
            Op::Jalr => {
                let target = x1.wrapping_add(imm) & !1;
                self.set_x(rd, npc);
                return Ok(target);
            }
            Op::Beq | Op::Bne | Op::Blt | Op::Bge | Op::Bltu | Op::Bgeu => {
                return Ok(branch(match d.op {
                    Op::Beq => x1 == x2,
                    Op::Bne => x1 != x2,
                    Op::Blt => (x1 as i64) < (x2 as i64),
                    Op::Bge => (x1 as i64) >= (x2 as i64),
                    Op::Bltu => x1 < x2,
                    _ => x1 >= x2,
                }));
            }
            Op::Lb => sext(self.load(bus, x1.wrapping_add(imm), 1)?, 8),
            Op::Lh => sext(self.load(bus, x1.wrapping_add(imm), 2)?, 16),
            Op::Lw => sext32(self.load(bus, x1.wrapping_add(imm), 4)?),
            Op::Ld => self.load(bus, x1.wrapping_add(imm), 8)?,
            Op::Lbu => self.load(bus, x1.wrapping_add(imm), 1)?,
            Op::Lhu => self.load(bus, x1.wrapping_add(imm), 2)?,
            Op::Lwu => self.load(bus, x1.wrapping_add(imm), 4)?,
            Op::Sb | Op::Sh | Op::Sw | Op::Sd => {
                self.store(bus, x1.wrapping_add(imm), d.op.access_size(), x2)?;
                return Ok(npc);
            }
            Op::Addi => x1.wrapping_add(imm),
            Op::Slti => ((x1 as i64) < (imm as i64)) as u64,
            Op::Sltiu => (x1 < imm) as u64,
            Op::Xori => x1 ^ imm,
            Op::Ori => x1 | imm,
            Op::Andi => x1 & imm,
            Op::Slli => x1 << shamt,
            Op::Srli => x1 >> shamt,
            Op::Srai => ((x1 as i64) >> shamt) as u64,
            Op::Addiw => sext32(x1.wrapping_add(imm)),
            Op::Slliw => sext32(x1 << shamt),
            Op::Srliw => sext32(u64::from(x1 as u32 >> shamt)),
            Op::Sraiw => ((x1 as i32) >> shamt) as i64 as u64,
            Op::Add => x1.wrapping_add(x2),
            Op::Sub => x1.wrapping_sub(x2),
            Op::Sll => x1 << (x2 & 63),
            Op::Slt => ((x1 as i64) < (x2 as i64)) as u64,
            Op::Sltu => (x1 < x2) as u64,
            Op::Xor => x1 ^ x2,
            Op::Srl => x1 >> (x2 & 63),
            Op::Sra => ((x1 as i64) >> (x2 & 63)) as u64,
            Op::Or => x1 | x2,
            Op::And => x1 & x2,
            Op::Mul => x1.wrapping_mul(x2),
            Op::Mulh => ((x1 as i64 as i128 * x2 as i64 as i128) >> 64) as u64,
            Op::Mulhsu => ((x1 as i64 as i128 * x2 as i128) >> 64) as u64,
            Op::Mulhu => ((x1 as u128 * x2 as u128) >> 64) as u64,
            Op::Div => {
                if x2 == 0 {
                    u64::MAX
                } else {
                    (x1 as i64).wrapping_div(x2 as i64) as u64
                }
            }
            Op::Divu => x1.checked_div(x2).unwrap_or(u64::MAX),
            Op::Rem => {
                if x2 == 0 {
                    x1
                } else {
                    (x1 as i64).wrapping_rem(x2 as i64) as u64
                }
            }
            Op::Remu => x1.checked_rem(x2).unwrap_or(x1),
            Op::Addw => sext32(u64::from((x1 as u32).wrapping_add(x2 as u32))),
            Op::Subw => sext32(u64::from((x1 as u32).wrapping_sub(x2 as u32))),
            Op::Sllw => sext32(u64::from((x1 as u32) << (x2 & 31))),
            Op::Srlw => sext32(u64::from((x1 as u32) >> (x2 & 31))),
            Op::Sraw => ((x1 as i32) >> (x2 & 31)) as i64 as u64,
            Op::Mulw => sext32(u64::from((x1 as u32).wrapping_mul(x2 as u32))),
            Op::Divw => {
                let (a, b) = (x1 as i32, x2 as i32);
                if b == 0 {
                    u64::MAX
                } else {
                    a.wrapping_div(b) as i64 as u64
                }
            }
            Op::Divuw => sext32(u64::from(
                (x1 as u32).checked_div(x2 as u32).unwrap_or(u32::MAX),
            )),
            Op::Remw => {
                let (a, b) = (x1 as i32, x2 as i32);
                if b == 0 {
                    a as i64 as u64
                } else {
                    a.wrapping_rem(b) as i64 as u64
                }
            }
            Op::Remuw => {
                let (a, b) = (x1 as u32, x2 as u32);
                sext32(u64::from(a.checked_rem(b).unwrap_or(a)))
            }
            Op::Fence => return Ok(npc),
            Op::Other => {
                self.execute_other(bus, d.raw, u64::from(d.len))?;
                return Ok(self.s.pc);
            }
        };
        self.set_x(rd, value);
        Ok(npc)
    }

    /// The instructions that are not executed from their decoded form:
    /// fence.i, system, atomic and floating point, and anything illegal.
    fn execute_other(&mut self, bus: &mut dyn Bus, raw: u32, len: u64) -> Result<(), Trap> {
        let illegal = Trap::illegal(raw);
        let insn = if len == 2 {
            match self.rvc[raw as usize & 0xffff] {
                0 => return Err(illegal),
                expanded => expanded,
            }
        } else {
            raw
        };
        let npc = self.s.pc.wrapping_add(len);
        match insn & 0x7f {
            // fence.i: stores already invalidated any cached copy of the
            // code they overwrote; only the fetch page needs forgetting.
            0x0f if (insn >> 12) & 7 == 1 => self.fetch_vpage = u64::MAX,
            0x73 => return self.system(bus, raw, insn, npc),
            0x2f => self.atomic(bus, raw, insn)?,
            0x07 | 0x27 | 0x43 | 0x47 | 0x4b | 0x4f | 0x53 => self.float(bus, raw, insn)?,
            _ => return Err(illegal),
        }
        self.s.pc = npc;
        Ok(())
    }

    fn system(&mut self, _bus: &mut dyn Bus, raw: u32, insn: u32, npc: u64) -> Result<(), Trap> {
        let illegal = Trap::illegal(raw);
        let funct3 = (insn >> 12) & 7;
        let rd = ((insn >> 7) & 31) as usize;
        let rs1 = ((insn >> 15) & 31) as usize;
        let prv = self.s.privilege;
        if funct3 == 0 {
            match insn {
                0x0000_0073 => {
                    return Err(Trap::new(cause::ECALL_U + prv as u64, 0));
                }
                0x0010_0073 => return Err(Trap::new(cause::BREAKPOINT, 0)),
                0x1020_0073 => {
                    // sret
                    if prv < Privilege::Supervisor
                        || (prv == Privilege::Supervisor && self.s.mstatus & status::TSR != 0)
                    {
                        return Err(illegal);
                    }
                    let to = if self.s.mstatus & status::SPP != 0 {
                        Privilege::Supervisor
                    } else {
                        Privilege::User
                    };
                    self.xret(to, status::SIE, status::SPIE, status::SPP, self.s.sepc);
                    return Ok(());
                }
                0x3020_0073 => {
                    // mret
                    if prv != Privilege::Machine {
                        return Err(illegal);
                    }
                    let to = mpp_privilege(self.s.mstatus);
                    self.xret(to, status::MIE, status::MPIE, status::MPP, self.s.mepc);
                    return Ok(());
                }
                0x1050_0073 => {
                    // wfi
                    if prv == Privilege::User
                        || (prv == Privilege::Supervisor && self.s.mstatus & status::TW != 0)
                    {
                        return Err(illegal);
                    }
                    self.s.pc = npc;
                    if !self.wfi_wakeup_pending() {
                        self.set_exit(Exit::Wfi);
                    }
                    return Ok(());
                }
                _ if insn >> 25 == 0x09 && rd == 0 => {
                    // sfence.vma
                    if prv == Privilege::User
                        || (prv == Privilege::Supervisor && self.s.mstatus & status::TVM != 0)
                    {
                        return Err(illegal);
                    }
                    let rs2 = (insn >> 20) as usize & 31;
                    let vaddr = (rs1 != 0).then(|| self.s.x[rs1]);
                    let asid = (rs2 != 0).then(|| self.s.x[rs2]);
                    self.sfence_vma(vaddr, asid);
                    self.s.pc = npc;
                    return Ok(());
                }
                _ => return Err(illegal),
            }
        }
        let number = (insn >> 20) as u16;
        let operand = if funct3 & 4 != 0 {
            rs1 as u64
        } else {
            self.s.x[rs1]
        };
        let old_for_write = |old: u64| match funct3 & 3 {
            1 => Some(operand),
            2 => (rs1 != 0).then_some(old | operand),
            3 => (rs1 != 0).then_some(old & !operand),
            _ => None,
        };
        let op = funct3 & 3;
        if op == 0 {
            return Err(illegal);
        }
        // No CSR here has read side effects, so csrrw with rd = x0 may read.
        let current = self.csr_access(raw, number, None)?;
        // Privileged spec, mip: only the software-writable SEIP bit takes
        // part in csrrs/csrrc; the external line is read but never latched.
        let base = if number == csr::MIP {
            self.s.mip_software | (self.s.mip_lines & !irq::SEIP)
        } else {
            current
        };
        let old = match old_for_write(base) {
            Some(value) => self.csr_access(raw, number, Some(value))?,
            None => current,
        };
        self.set_x(rd, old);
        self.s.pc = npc;
        Ok(())
    }

    fn atomic(&mut self, bus: &mut dyn Bus, raw: u32, insn: u32) -> Result<(), Trap> {
        let illegal = Trap::illegal(raw);
        let funct3 = (insn >> 12) & 7;
        let size = match funct3 {
            2 => 4,
            3 => 8,
            _ => return Err(illegal),
        };
        let rd = ((insn >> 7) & 31) as usize;
        let addr = self.s.x[((insn >> 15) & 31) as usize];
        let src = self.s.x[((insn >> 20) & 31) as usize];
        let funct5 = insn >> 27;
        let extend = |v: u64| if size == 4 { sext32(v) } else { v };
        match funct5 {
            0x02 => {
                // lr
                if addr & (size - 1) != 0 {
                    return Err(Trap::new(cause::LOAD_MISALIGNED, addr));
                }
                let value = self.load(bus, addr, size)?;
                let paddr = self.translate(addr, Access::Load)?;
                self.s.reservation = Some(paddr);
                self.set_x(rd, extend(value));
            }
            0x03 => {
                // sc
                if addr & (size - 1) != 0 {
                    return Err(Trap::new(cause::STORE_MISALIGNED, addr));
                }
                let paddr = self.translate(addr, Access::Store)?;
                if self.s.reservation == Some(paddr) {
                    self.store(bus, addr, size, src)?;
                    self.set_x(rd, 0);
                } else {
                    self.set_x(rd, 1);
                }
                self.s.reservation = None;
            }
            _ => {
                if addr & (size - 1) != 0 {
                    return Err(Trap::new(cause::STORE_MISALIGNED, addr));
                }
                // Translate for store first: an AMO faults as a store.
                self.translate(addr, Access::Store)?;
                let old = self.load(bus, addr, size).map_err(|t| {
                    if t.cause == cause::LOAD_ACCESS {
                        Trap::new(cause::STORE_ACCESS, t.tval)
                    } else {
                        t
                    }
                })?;
                let (a, b) = (extend(old), extend(src));
                let new = match funct5 {
                    0x01 => b,
                    0x00 => a.wrapping_add(b),
                    0x04 => a ^ b,
                    0x0c => a & b,
                    0x08 => a | b,
                    0x10 => (a as i64).min(b as i64) as u64,
                    0x14 => (a as i64).max(b as i64) as u64,
                    0x18 => a.min(b),
                    0x1c => a.max(b),
                    _ => return Err(illegal),
                };
                let new = if size == 4 {
                    // unsigned min/max of .w compare the 32-bit values
                    match funct5 {
                        0x18 => (old as u32).min(src as u32) as u64,
                        0x1c => (old as u32).max(src as u32) as u64,
                        _ => new,
                    }
                } else {
                    new
                };
                self.store(bus, addr, size, new)?;
                self.set_x(rd, a);
            }
        }
        Ok(())
    }

    fn float(&mut self, bus: &mut dyn Bus, raw: u32, insn: u32) -> Result<(), Trap> {
        let illegal = Trap::illegal(raw);
        if !self.fp_enabled() {
            return Err(illegal);
        }
        let rd = ((insn >> 7) & 31) as usize;
        let rs1 = ((insn >> 15) & 31) as usize;
        let rs2 = ((insn >> 20) & 31) as usize;
        let rs3 = (insn >> 27) as usize;
        let funct3 = (insn >> 12) & 7;
        match insn & 0x7f {
            0x07 => {
                let addr = self.s.x[rs1].wrapping_add(((insn as i32) >> 20) as i64 as u64);
                let value = match funct3 {
                    2 => self.load(bus, addr, 4)? | 0xffff_ffff_0000_0000,
                    3 => self.load(bus, addr, 8)?,
                    _ => return Err(illegal),
                };
                self.set_f(rd, value);
                return Ok(());
            }
            0x27 => {
                let imm =
                    ((((insn as i32) >> 25) << 5) as i64 as u64) | u64::from((insn >> 7) & 31);
                let addr = self.s.x[rs1].wrapping_add(imm);
                match funct3 {
                    2 => self.store(bus, addr, 4, self.s.f[rs2])?,
                    3 => self.store(bus, addr, 8, self.s.f[rs2])?,
                    _ => return Err(illegal),
                }
                return Ok(());
            }
            _ => {}
        }
        let fmt = match (insn >> 25) & 3 {
            0 => Fmt::S,
            1 => Fmt::D,
            _ => return Err(illegal),
        };
        let (f1, f2, f3) = (self.s.f[rs1], self.s.f[rs2], self.s.f[rs3]);
        let x1 = self.s.x[rs1];
        let funct7 = insn >> 25;
        let (op, a, b, c) = match insn & 0x7f {
            0x43 => (FpOp::MAdd, f1, f2, f3),
            0x47 => (FpOp::MSub, f1, f2, f3),
            0x4b => (FpOp::NMSub, f1, f2, f3),
            0x4f => (FpOp::NMAdd, f1, f2, f3),
            _ => {
                let op = match (funct7 >> 2, funct3, rs2) {
                    (0x00, _, _) => FpOp::Add,
                    (0x01, _, _) => FpOp::Sub,
                    (0x02, _, _) => FpOp::Mul,
                    (0x03, _, _) => FpOp::Div,
                    (0x0b, _, 0) => FpOp::Sqrt,
                    (0x04, 0, _) => FpOp::SgnJ,
                    (0x04, 1, _) => FpOp::SgnJN,
                    (0x04, 2, _) => FpOp::SgnJX,
                    (0x05, 0, _) => FpOp::Min,
                    (0x05, 1, _) => FpOp::Max,
                    (0x08, _, 0) if fmt == Fmt::D => FpOp::CvtFromOther, // fcvt.d.s
                    (0x08, _, 1) if fmt == Fmt::S => FpOp::CvtFromOther, // fcvt.s.d
                    (0x14, 2, _) => FpOp::Eq,
                    (0x14, 1, _) => FpOp::Lt,
                    (0x14, 0, _) => FpOp::Le,
                    (0x18, _, 0) => FpOp::CvtToW,
                    (0x18, _, 1) => FpOp::CvtToWU,
                    (0x18, _, 2) => FpOp::CvtToL,
                    (0x18, _, 3) => FpOp::CvtToLU,
                    (0x1a, _, 0) => FpOp::CvtFromW,
                    (0x1a, _, 1) => FpOp::CvtFromWU,
                    (0x1a, _, 2) => FpOp::CvtFromL,
                    (0x1a, _, 3) => FpOp::CvtFromLU,
                    (0x1c, 0, 0) => FpOp::MvToX,
                    (0x1c, 1, 0) => FpOp::Class,
                    (0x1e, 0, 0) => FpOp::MvFromX,
                    _ => return Err(illegal),
                };
                let takes_x = matches!(
                    op,
                    FpOp::CvtFromW
                        | FpOp::CvtFromWU
                        | FpOp::CvtFromL
                        | FpOp::CvtFromLU
                        | FpOp::MvFromX
                );
                (op, if takes_x { x1 } else { f1 }, f2, 0)
            }
        };
        // Operations whose funct3 is not a rounding mode.
        let fixed_rm = matches!(
            op,
            FpOp::SgnJ
                | FpOp::SgnJN
                | FpOp::SgnJX
                | FpOp::Min
                | FpOp::Max
                | FpOp::Eq
                | FpOp::Lt
                | FpOp::Le
                | FpOp::MvToX
                | FpOp::Class
                | FpOp::MvFromX
        );
        let rm = if fixed_rm {
            Rm::Rne
        } else {
            let code = if funct3 == 7 {
                (self.s.fcsr >> 5) & 7
            } else {
                u64::from(funct3)
            };
            match code {
                0 => Rm::Rne,
                1 => Rm::Rtz,
                2 => Rm::Rdn,
                3 => Rm::Rup,
                4 => Rm::Rmm,
                _ => return Err(illegal),
            }
        };
        let result = fpu::execute(op, fmt, a, b, c, rm);
        if result.flags != 0 {
            self.s.fcsr |= u64::from(result.flags);
            self.s.mstatus |= status::FS_DIRTY;
        }
        if op.writes_xreg() {
            self.set_x(rd, result.value);
        } else {
            self.set_f(rd, result.value);
        }
        Ok(())
    }
}
