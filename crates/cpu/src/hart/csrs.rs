//! CSR reads and writes by number: access rules (privilege, read-only,
//! counter enables, TVM), WARL masking, and the counters derived from the
//! instruction count.

use super::Hart;
use super::trap::Trap;
use crate::csr::{self, status};
use crate::{Privilege, irq};

impl Hart {
    fn counter_allowed(&self, number: u16) -> bool {
        let bit = 1u64 << (number & 31);
        match self.s.privilege {
            Privilege::Machine => true,
            Privilege::Supervisor => self.s.mcounteren & bit != 0,
            Privilege::User => self.s.mcounteren & bit != 0 && self.s.scounteren & bit != 0,
        }
    }

    fn hpmcounter(&self, index: u16) -> u64 {
        self.s
            .mhpmcounter
            .get(usize::from(index))
            .copied()
            .unwrap_or(0)
    }

    fn mcycle(&self) -> u64 {
        self.s.icount.wrapping_add(self.s.mcycle_offset)
    }
    fn minstret(&self) -> u64 {
        self.s.icount.wrapping_add(self.s.minstret_offset)
    }

    /// The value of a CSR, ignoring access rules; `None` if it doesn't exist.
    pub(super) fn csr_value(&self, number: u16) -> Option<u64> {
        let s = &self.s;
        let sstatus = |m: u64| m & status::S_VISIBLE;
        Some(match number {
            csr::FFLAGS => s.fcsr & 0x1f,
            csr::FRM => (s.fcsr >> 5) & 7,
            csr::FCSR => s.fcsr & 0xff,
            csr::CYCLE | csr::MCYCLE => self.mcycle(),
            csr::INSTRET | csr::MINSTRET => self.minstret(),
            csr::TIME => s.clock.mtime(s.icount),
            csr::HPMCOUNTER3..=csr::HPMCOUNTER31 => self.hpmcounter(number - csr::HPMCOUNTER3),
            csr::MHPMCOUNTER3..=csr::MHPMCOUNTER31 => self.hpmcounter(number - csr::MHPMCOUNTER3),
            csr::MHPMEVENT3..=csr::MHPMEVENT31 => 0,
            csr::SSTATUS => sstatus(self.mstatus()),
            csr::SIE => s.mie & s.mideleg,
            csr::STVEC => s.stvec,
            csr::SCOUNTEREN => s.scounteren,
            csr::SENVCFG => s.senvcfg,
            csr::SSCRATCH => s.sscratch,
            csr::SEPC => s.sepc,
            csr::SCAUSE => s.scause,
            csr::STVAL => s.stval,
            csr::SIP => self.mip() & s.mideleg,
            csr::STIMECMP => s.stimecmp,
            csr::SATP => s.satp,
            csr::MVENDORID | csr::MARCHID | csr::MIMPID | csr::MCONFIGPTR => 0,
            csr::MHARTID => self.config.hart_id,
            csr::MSTATUS => self.mstatus(),
            csr::MISA => csr::MISA_VALUE,
            csr::MEDELEG => s.medeleg,
            csr::MIDELEG => s.mideleg,
            csr::MIE => s.mie,
            csr::MTVEC => s.mtvec,
            csr::MCOUNTEREN => s.mcounteren,
            csr::MENVCFG => s.menvcfg,
            csr::MCOUNTINHIBIT => s.mcountinhibit,
            csr::MSCRATCH => s.mscratch,
            csr::MEPC => s.mepc,
            csr::MCAUSE => s.mcause,
            csr::MTVAL => s.mtval,
            csr::MIP => self.mip(),
            csr::PMPCFG0..=csr::PMPCFG15 => {
                if number & 1 != 0 {
                    return None; // odd pmpcfg registers do not exist on RV64
                }
                let index = usize::from((number - csr::PMPCFG0) / 2);
                s.pmpcfg.get(index).copied().unwrap_or(0)
            }
            csr::PMPADDR0..=csr::PMPADDR63 => {
                let index = usize::from(number - csr::PMPADDR0);
                s.pmpaddr.get(index).copied().unwrap_or(0)
            }
            csr::TSELECT..=csr::TDATA3 => 0,
            _ => return None,
        })
    }

    fn mstatus(&self) -> u64 {
        let m = self.s.mstatus;
        if m & status::FS == status::FS {
            m | status::SD
        } else {
            m & !status::SD
        }
    }

    /// Read-modify-write of a CSR by an instruction at the current privilege.
    pub(super) fn csr_access(
        &mut self,
        insn: u32,
        number: u16,
        write: Option<u64>,
    ) -> Result<u64, Trap> {
        let illegal = Trap::illegal(insn);
        let min_prv = (number >> 8) & 3;
        if (self.s.privilege as u16) < min_prv {
            return Err(illegal);
        }
        let fp_csr = matches!(number, csr::FFLAGS | csr::FRM | csr::FCSR);
        if fp_csr && self.s.mstatus & status::FS == 0 {
            return Err(illegal);
        }
        if number == csr::SATP
            && self.s.privilege == Privilege::Supervisor
            && self.s.mstatus & status::TVM != 0
        {
            return Err(illegal);
        }
        if (csr::CYCLE..=csr::HPMCOUNTER31).contains(&number) && !self.counter_allowed(number) {
            return Err(illegal);
        }
        // Sstc: below M-mode, `stimecmp` needs menvcfg.STCE and
        // mcounteren.TM.
        if number == csr::STIMECMP
            && self.s.privilege < Privilege::Machine
            && (!self.sstc_enabled() || self.s.mcounteren & 2 == 0)
        {
            return Err(illegal);
        }
        let old = self.csr_value(number).ok_or(illegal)?;
        let Some(value) = write else {
            return Ok(old);
        };
        if number >> 10 == 3 {
            return Err(illegal); // read-only
        }
        let s = &mut self.s;
        match number {
            csr::FFLAGS => s.fcsr = (s.fcsr & !0x1f) | (value & 0x1f),
            csr::FRM => s.fcsr = (s.fcsr & 0x1f) | ((value & 7) << 5),
            csr::FCSR => s.fcsr = value & 0xff,
            csr::MCYCLE => {
                // The write replaces this instruction's own increment.
                s.mcycle_offset = value.wrapping_sub(s.icount + 1);
            }
            csr::MINSTRET => s.minstret_offset = value.wrapping_sub(s.icount + 1),
            csr::MHPMCOUNTER3..=csr::MHPMCOUNTER31 => {
                if let Some(counter) = s
                    .mhpmcounter
                    .get_mut(usize::from(number - csr::MHPMCOUNTER3))
                {
                    *counter = value;
                }
            }
            csr::MHPMEVENT3..=csr::MHPMEVENT31 => {}
            // No TLB flush: SUM and MXR are part of the TLB key.
            csr::SSTATUS => {
                s.mstatus = (s.mstatus & !status::S_WRITABLE) | (value & status::S_WRITABLE);
            }
            csr::SIE => s.mie = (s.mie & !s.mideleg) | (value & s.mideleg & csr::MIE_WRITABLE),
            csr::STVEC => s.stvec = value & !2,
            csr::SCOUNTEREN => s.scounteren = value & 0xffff_ffff,
            csr::SENVCFG => s.senvcfg = 0,
            csr::SSCRATCH => s.sscratch = value,
            csr::SEPC => s.sepc = value & !1,
            csr::SCAUSE => s.scause = value,
            csr::STVAL => s.stval = value,
            csr::SIP => {
                let mask = irq::SSIP & s.mideleg;
                s.mip_software = (s.mip_software & !mask) | (value & mask);
            }
            csr::STIMECMP => s.stimecmp = value,
            // No TLB flush (that is `sfence.vma`'s job): entries are tagged
            // with their ASID, so another address space's stay cached.
            csr::SATP => {
                let mode = value >> 60;
                if mode == 0 || mode == 8 {
                    s.satp = value;
                    self.claim_tlb_context();
                }
            }
            csr::MSTATUS => {
                let mut v = value & status::M_WRITABLE;
                if (v & status::MPP) >> status::MPP_SHIFT == 2 {
                    v &= !status::MPP; // reserved: WARL to U
                }
                s.mstatus = v | status::XLEN_FIELDS;
            }
            csr::MISA => {}
            csr::MEDELEG => s.medeleg = value & csr::MEDELEG_WRITABLE,
            csr::MIDELEG => s.mideleg = value & csr::MIDELEG_WRITABLE,
            csr::MIE => s.mie = value & csr::MIE_WRITABLE,
            csr::MTVEC => s.mtvec = value & !2,
            csr::MCOUNTEREN => s.mcounteren = value & 0xffff_ffff,
            csr::MENVCFG => {
                // Clearing STCE leaves STIP as `stimecmp` last drove it, now
                // M's to write again (as QEMU does).
                if self.sstc_enabled() && value & csr::MENVCFG_STCE == 0 {
                    let stip = self.mip() & irq::STIP;
                    self.s.mip_software = (self.s.mip_software & !irq::STIP) | stip;
                }
                self.s.menvcfg = value & csr::MENVCFG_STCE;
            }
            csr::MCOUNTINHIBIT => s.mcountinhibit = 0,
            csr::MSCRATCH => s.mscratch = value,
            csr::MEPC => s.mepc = value & !1,
            csr::MCAUSE => s.mcause = value,
            csr::MTVAL => s.mtval = value,
            csr::MIP => {
                // Under Sstc, STIP is `stimecmp`'s and read-only here.
                let writable = if self.sstc_enabled() {
                    csr::MIP_M_WRITABLE & !irq::STIP
                } else {
                    csr::MIP_M_WRITABLE
                };
                self.s.mip_software = (self.s.mip_software & !writable) | (value & writable);
            }
            csr::PMPCFG0..=csr::PMPCFG15 => {
                if let Some(cfg) = s.pmpcfg.get_mut(usize::from((number - csr::PMPCFG0) / 2)) {
                    *cfg = value;
                }
            }
            csr::PMPADDR0..=csr::PMPADDR63 => {
                if let Some(addr) = s.pmpaddr.get_mut(usize::from(number - csr::PMPADDR0)) {
                    *addr = value & ((1 << 54) - 1);
                }
            }
            csr::TSELECT..=csr::TDATA3 => {}
            _ => return Err(illegal),
        }
        if fp_csr {
            self.s.mstatus |= status::FS_DIRTY;
        }
        self.irq_dirty = true;
        Ok(old)
    }
}
