//! Traps and interrupts: the exception causes, which interrupt is taken
//! when, entering a trap handler (with delegation to S-mode) and returning
//! from one (`mret`/`sret`).

use super::Hart;
use crate::Privilege;
use crate::csr::status;

/// Exception causes.
pub(super) mod cause {
    pub const INSN_ACCESS: u64 = 1;
    pub const ILLEGAL: u64 = 2;
    pub const BREAKPOINT: u64 = 3;
    pub const LOAD_MISALIGNED: u64 = 4;
    pub const LOAD_ACCESS: u64 = 5;
    pub const STORE_MISALIGNED: u64 = 6;
    pub const STORE_ACCESS: u64 = 7;
    pub const ECALL_U: u64 = 8;
    pub const INSN_PAGE: u64 = 12;
    pub const LOAD_PAGE: u64 = 13;
    pub const STORE_PAGE: u64 = 15;
    pub const INTERRUPT: u64 = 1 << 63;
}

/// A synchronous exception about to be taken.
#[derive(Clone, Copy, Debug)]
pub(super) struct Trap {
    pub(super) cause: u64,
    pub(super) tval: u64,
}

impl Trap {
    pub(super) fn new(cause: u64, tval: u64) -> Self {
        Trap { cause, tval }
    }
    pub(super) fn illegal(insn: u32) -> Self {
        Trap::new(cause::ILLEGAL, u64::from(insn))
    }
}

impl Hart {
    pub(super) fn pending_interrupt(&self) -> Option<u64> {
        let pending = self.mip() & self.s.mie;
        if pending == 0 {
            return None;
        }
        let prv = self.s.privilege;
        let m_enabled = prv < Privilege::Machine || self.s.mstatus & status::MIE != 0;
        let s_enabled = prv < Privilege::Supervisor
            || (prv == Privilege::Supervisor && self.s.mstatus & status::SIE != 0);
        let m_pending = if m_enabled {
            pending & !self.s.mideleg
        } else {
            0
        };
        let s_pending = if s_enabled {
            pending & self.s.mideleg
        } else {
            0
        };
        let set = if m_pending != 0 { m_pending } else { s_pending };
        // Priority: MEI, MSI, MTI, SEI, SSI, STI.
        [11u64, 3, 7, 9, 1, 5]
            .into_iter()
            .find(|&bit| set & (1 << bit) != 0)
    }

    pub(super) fn take_trap(&mut self, cause: u64, tval: u64) {
        let interrupt = cause & cause::INTERRUPT != 0;
        let code = cause & 63;
        let deleg = if interrupt {
            self.s.mideleg
        } else {
            self.s.medeleg
        };
        let prv = self.s.privilege;
        let to_s = prv <= Privilege::Supervisor && (deleg >> code) & 1 != 0;
        let vector_offset = |tvec: u64| {
            if tvec & 1 != 0 && interrupt {
                4 * code
            } else {
                0
            }
        };
        if to_s {
            self.s.scause = cause;
            self.s.sepc = self.s.pc;
            self.s.stval = tval;
            let mut st = self.s.mstatus & !(status::SPIE | status::SPP | status::SIE);
            if self.s.mstatus & status::SIE != 0 {
                st |= status::SPIE;
            }
            if prv == Privilege::Supervisor {
                st |= status::SPP;
            }
            self.s.mstatus = st;
            self.s.privilege = Privilege::Supervisor;
            self.s.pc = (self.s.stvec & !3) + vector_offset(self.s.stvec);
        } else {
            self.s.mcause = cause;
            self.s.mepc = self.s.pc;
            self.s.mtval = tval;
            let mut st = self.s.mstatus & !(status::MPIE | status::MPP | status::MIE);
            if self.s.mstatus & status::MIE != 0 {
                st |= status::MPIE;
            }
            st |= (prv as u64) << status::MPP_SHIFT;
            self.s.mstatus = st;
            self.s.privilege = Privilege::Machine;
            self.s.pc = (self.s.mtvec & !3) + vector_offset(self.s.mtvec);
        }
        self.s.reservation = None;
        self.fetch_vpage = u64::MAX;
        self.irq_dirty = true;
    }

    /// Return from a trap to `to`: the saved interrupt enable (`pie`) comes
    /// back into `ie`, `pie` is set, the saved privilege field `pp` clears.
    pub(super) fn xret(&mut self, to: Privilege, ie: u64, pie: u64, pp: u64, epc: u64) {
        let old = self.s.mstatus;
        let mut st = old & !(ie | pp);
        if old & pie != 0 {
            st |= ie;
        }
        st |= pie;
        if to != Privilege::Machine {
            st &= !status::MPRV;
        }
        self.s.mstatus = st;
        self.s.privilege = to;
        self.s.pc = epc;
        self.s.reservation = None;
        self.fetch_vpage = u64::MAX;
        self.irq_dirty = true;
    }
}
