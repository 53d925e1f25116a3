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

pub mod fpu;

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
/// little-endian, zero-extended in the low `size` bytes.
pub trait Bus {
    fn load(&mut self, paddr: u64, size: u8) -> Result<u64, BusFault>;
    fn store(&mut self, paddr: u64, size: u8, value: u64) -> Result<(), BusFault>;
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
    /// Smallest icount >= `now` at which `mtime >= target`.
    pub fn icount_at(&self, now: u64, target: u64) -> u64 {
        if self.mtime(now) >= target {
            return now;
        }
        let ticks_needed = target - self.offset;
        ticks_needed.saturating_mul(self.insns_per_tick).max(now)
    }
    /// Make `mtime(icount) == value`.
    pub fn set_mtime(&mut self, icount: u64, value: u64) {
        self.offset = value.wrapping_sub(icount / self.insns_per_tick);
    }
    /// Advance guest time without executing instructions (idle sleep).
    pub fn advance(&mut self, ticks: u64) {
        self.offset = self.offset.wrapping_add(ticks);
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

/// Guest RAM: one contiguous block of physical memory at `base`.
///
/// Host-side writes (loader, device DMA at an instruction boundary, snapshot
/// restore) go through [`Ram::write`] / [`Ram::restore_bytes`], which keep
/// the hart's decoded-instruction cache coherent.
pub struct Ram {
    // filled in by the CPU implementation
}

impl Ram {
    pub fn new(base: u64, size: u64) -> Self {
        let _ = (base, size);
        todo!("cpu: Ram::new")
    }
    pub fn base(&self) -> u64 {
        todo!()
    }
    pub fn size(&self) -> u64 {
        todo!()
    }
    /// True if `[paddr, paddr+len)` lies wholly in RAM.
    pub fn contains(&self, paddr: u64, len: u64) -> bool {
        let _ = (paddr, len);
        todo!()
    }
    /// The whole of RAM (for digests and snapshots).
    pub fn bytes(&self) -> &[u8] {
        todo!()
    }
    pub fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BusFault> {
        let _ = (paddr, buf);
        todo!()
    }
    pub fn write(&mut self, paddr: u64, data: &[u8]) -> Result<(), BusFault> {
        let _ = (paddr, data);
        todo!()
    }
    /// Replace the whole of RAM (snapshot restore). `data.len()` must equal `size()`.
    pub fn restore_bytes(&mut self, data: &[u8]) -> Result<(), BusFault> {
        let _ = data;
        todo!()
    }
}

/// Architectural state of the hart except RAM: registers, CSRs, privilege,
/// icount, clock, reservation. Serializable for snapshots; two harts with
/// equal `HartState` and equal RAM behave identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HartState {
    // filled in by the CPU implementation
}

pub struct Hart {
    // filled in by the CPU implementation
}

impl Hart {
    /// A hart at reset: M-mode, pc = ram_base, all registers zero, icount 0.
    pub fn new(config: HartConfig) -> Self {
        let _ = config;
        todo!("cpu: Hart::new")
    }
    pub fn config(&self) -> &HartConfig {
        todo!()
    }
    pub fn ram(&self) -> &Ram {
        todo!()
    }
    pub fn ram_mut(&mut self) -> &mut Ram {
        todo!()
    }
    /// Execute until `icount == icount_limit` or an [`Exit`] condition. If
    /// `icount >= icount_limit` on entry, returns `Exit::Limit` at once
    /// without executing. Pending enabled interrupts are taken before the
    /// first instruction.
    pub fn run<B: Bus>(&mut self, bus: &mut B, icount_limit: u64) -> Exit {
        let _ = (bus, icount_limit);
        todo!("cpu: Hart::run")
    }
    pub fn icount(&self) -> u64 {
        todo!()
    }
    pub fn pc(&self) -> u64 {
        todo!()
    }
    pub fn set_pc(&mut self, pc: u64) {
        let _ = pc;
        todo!()
    }
    pub fn xreg(&self, index: usize) -> u64 {
        let _ = index;
        todo!()
    }
    /// Writes to x0 are ignored.
    pub fn set_xreg(&mut self, index: usize, value: u64) {
        let _ = (index, value);
        todo!()
    }
    pub fn freg(&self, index: usize) -> u64 {
        let _ = index;
        todo!()
    }
    pub fn privilege(&self) -> Privilege {
        todo!()
    }
    /// Drive the board-owned bits of `mip` ([`irq::BOARD_DRIVEN`]): bits in
    /// `mask` take their value from `value`.
    pub fn set_irq_lines(&mut self, mask: u64, value: u64) {
        let _ = (mask, value);
        todo!()
    }
    /// True if an interrupt is pending and enabled in `mie` (the WFI wake-up
    /// condition, independent of the global enable bits).
    pub fn wfi_wakeup_pending(&self) -> bool {
        todo!()
    }
    pub fn clock(&self) -> &GuestClock {
        todo!()
    }
    pub fn clock_mut(&mut self) -> &mut GuestClock {
        todo!()
    }
    /// Current guest time (`mtime`).
    pub fn mtime(&self) -> u64 {
        self.clock().mtime(self.icount())
    }
    /// Make stores that touch the 8 bytes at `paddr` (in RAM) end `run` with
    /// [`Exit::StoreWatch`] once they have completed (HTIF `tohost`).
    pub fn watch_store(&mut self, paddr: u64) {
        let _ = paddr;
        todo!()
    }
    /// Read a CSR by number as the hardware would in M-mode (for debugging
    /// and tests); `None` if it does not exist.
    pub fn csr(&self, number: u16) -> Option<u64> {
        let _ = number;
        todo!()
    }
    pub fn state(&self) -> HartState {
        todo!()
    }
    /// Restore architectural state; caches are flushed. RAM is restored
    /// separately through [`Ram::restore_bytes`].
    pub fn restore(&mut self, state: &HartState) {
        let _ = state;
        todo!()
    }
}
