//! # ftvm-cpu — the deterministic RISC-V hart
//!
//! One RV64GC hart (RV64IMAFDC, Zicsr, Zifencei) with M/S/U privilege modes,
//! Sv39 paging, precise traps and interrupts. Its execution is a pure function
//! of its state and of what the [`Bus`] returns: it never reads the host
//! clock, a file or randomness. Guest time is derived from the instruction
//! count ([`GuestClock`]), so timer interrupts land at exact icounts.
//!
//! The hart owns guest RAM ([`Ram`]) because the hot loop must reach it
//! without a call per access; everything outside RAM (devices) is reached
//! through the [`Bus`] trait, implemented by the board.
//!
//! ## The run contract
//! [`Hart::run`] executes until `icount` reaches a limit or until something
//! happens that the board must look at ([`Exit`]). The board changes
//! interrupt lines only between calls ([`Hart::set_irq_lines`]), so nothing
//! outside the hart is polled per instruction.
//!
//! ## Instruction count
//! `icount` counts every instruction that retires **and** every instruction
//! that raises a synchronous exception (each is one step of the machine);
//! taking an interrupt does not count. `mcycle`, `minstret` and the `cycle`/
//! `instret` user counters are derived from it (one instruction per cycle).
//! `icount` itself is the machine's clock of record and is never written by
//! the guest.

#![deny(unsafe_code)]

mod block;
mod csr;
mod decode;
pub mod fpu;
mod hart;
#[cfg(all(target_arch = "x86_64", unix))]
// The translator maps and calls generated code: the only unsafe code of
// the hart, confined to this module.
#[allow(unsafe_code)]
mod jit;
mod ram;
mod rvc;

pub use hart::{Engine, EngineError, Hart, HartState, SavedTlbEntry, TranslatedCode};
pub use ram::Ram;

use serde::{Deserialize, Serialize};

/// Bits of `mip`/`mie` (privileged spec, table "Machine interrupt-pending").
pub mod irq {
    pub const SSIP: u64 = 1 << 1;
    pub const MSIP: u64 = 1 << 3;
    pub const STIP: u64 = 1 << 5;
    pub const MTIP: u64 = 1 << 7;
    pub const SEIP: u64 = 1 << 9;
    pub const MEIP: u64 = 1 << 11;
    /// The bits a board drives from its devices (CLINT and PLIC).
    pub const BOARD_DRIVEN: u64 = MSIP | MTIP | SEIP | MEIP;
}

/// Privilege mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Privilege {
    User = 0,
    Supervisor = 1,
    Machine = 3,
}

/// A physical access the bus could not satisfy (becomes an access fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bus fault at physical address {addr:#x}")]
pub struct BusFault {
    pub addr: u64,
}

/// Everything outside RAM. Implemented by the board.
///
/// `size` is 1, 2, 4 or 8 and the address is naturally aligned for it (the
/// hart splits misaligned MMIO accesses into byte accesses). Values are
/// little-endian, zero-extended in the low `size` bytes. `icount` is the
/// instruction count of the accessing instruction, so that devices whose
/// registers depend on guest time (the CLINT's `mtime`) read it exactly.
pub trait Bus {
    fn load(&mut self, paddr: u64, size: u8, icount: u64) -> Result<u64, BusFault>;
    fn store(&mut self, paddr: u64, size: u8, value: u64, icount: u64) -> Result<(), BusFault>;
}

/// Why [`Hart::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `icount` reached the limit passed to `run`.
    Limit,
    /// The hart executed WFI and no enabled interrupt is pending: it sleeps
    /// until the board raises an interrupt line. `pc` already points past
    /// the WFI; the WFI has been counted.
    Wfi,
    /// An instruction accessed the [`Bus`] (MMIO). The access completed; the
    /// board may now update interrupt lines or stop the machine.
    Mmio,
    /// A store touched a watched physical address ([`Hart::watch_store`]);
    /// the store completed into RAM. Carries the watched address.
    StoreWatch(u64),
}

/// Guest time as a function of the instruction count: the value of the
/// CLINT's `mtime` (and of the `time` CSR).
///
/// `mtime = offset + icount / insns_per_tick`. The offset moves only by
/// explicit calls (a guest write to `mtime`, an idle sleep, a logged time
/// correction), all of which arrive through the machine's input boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestClock {
    pub insns_per_tick: u64,
    pub offset: u64,
}

impl GuestClock {
    pub fn mtime(&self, icount: u64) -> u64 {
        self.offset.wrapping_add(icount / self.insns_per_tick)
    }
    /// Smallest icount >= `now` at which `mtime >= target`. Computed from
    /// the ticks still to go, so a wrapped `offset` (a guest that set
    /// `mtime` back) cannot overflow it.
    pub fn icount_at(&self, now: u64, target: u64) -> u64 {
        let current = self.mtime(now);
        if current >= target {
            return now;
        }
        let ticks_to_go = target - current;
        (now / self.insns_per_tick)
            .saturating_add(ticks_to_go)
            .saturating_mul(self.insns_per_tick)
    }
    /// Make `mtime(icount) == value`.
    pub fn set_mtime(&mut self, icount: u64, value: u64) {
        self.offset = value.wrapping_sub(icount / self.insns_per_tick);
    }
    /// Advance guest time without executing instructions (idle sleep).
    pub fn advance(&mut self, ticks: u64) {
        self.offset = self.offset.wrapping_add(ticks);
    }
    /// Run guest time at `insns_per_tick` (at least 1) from `icount` on,
    /// without a jump: `mtime(icount)` keeps its value, so time stays
    /// monotonic.
    pub fn set_rate(&mut self, icount: u64, insns_per_tick: u64) {
        let now = self.mtime(icount);
        self.insns_per_tick = insns_per_tick.max(1);
        self.set_mtime(icount, now);
    }
}

/// Configuration fixed at machine creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HartConfig {
    pub hart_id: u64,
    pub ram_base: u64,
    pub ram_size: u64,
    /// Guest-time rate: instructions per `mtime` tick.
    pub insns_per_tick: u64,
}

#[cfg(test)]
mod tests {
    use super::GuestClock;

    #[test]
    fn deadlines_land_on_the_tick_boundary() {
        let clock = GuestClock {
            insns_per_tick: 10,
            offset: 5,
        };
        assert_eq!(clock.mtime(0), 5);
        assert_eq!(clock.icount_at(0, 5), 0);
        assert_eq!(clock.icount_at(3, 7), 20);
        assert_eq!(clock.mtime(20), 7);
        assert_eq!(clock.mtime(19), 6);
    }

    #[test]
    fn a_rate_change_keeps_time_continuous_and_monotonic() {
        let mut clock = GuestClock {
            insns_per_tick: 10,
            offset: 0,
        };
        assert_eq!(clock.mtime(1005), 100);
        clock.set_rate(1005, 1000);
        assert_eq!(clock.mtime(1005), 100);
        // Ticks now fall on multiples of the new rate: the first one after
        // the change may come early, but time never jumps or goes back.
        assert_eq!(clock.mtime(1999), 100);
        assert_eq!(clock.mtime(2000), 101);
        assert_eq!(clock.mtime(3005), 102);
        clock.set_rate(3005, 0);
        assert_eq!(clock.insns_per_tick, 1);
        assert_eq!(clock.mtime(3006), 103);
    }

    #[test]
    fn a_guest_setting_time_back_cannot_overflow_the_deadline() {
        let mut clock = GuestClock {
            insns_per_tick: 10,
            offset: 0,
        };
        clock.set_mtime(1_000_000, 3); // offset wraps below zero
        assert_eq!(clock.mtime(1_000_000), 3);
        assert_eq!(clock.icount_at(1_000_000, 5), 1_000_020);
        assert_eq!(clock.icount_at(1_000_000, u64::MAX), u64::MAX);
    }
}
