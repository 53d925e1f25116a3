//! The hart: its architectural state, reset, the accessors the board
//! uses, and the code caches every part keeps coherent. The parts:
//! [`run`] (the run loop over decoded blocks), [`execute`] (instruction
//! semantics), [`mmu`] (Sv39 translation, TLB, loads and stores), [`csrs`],
//! [`trap`] (traps and interrupts) and [`translator`] (the glue to the
//! block translator).

use serde::{Deserialize, Serialize};

use crate::block::BlockCache;
use crate::csr::{self, status};
use crate::decode::{Decoded, decode};
use crate::ram::{PAGE_SHIFT, Ram};
use crate::{Exit, GuestClock, HartConfig, Privilege, irq, rvc};

mod csrs;
mod execute;
mod mmu;
mod run;
mod translator;
mod trap;

use mmu::{EMPTY_TLB, NO_OWNER, TLB_CONTEXTS, TLB_ENTRIES, TlbEntry};
pub use translator::{Engine, EngineError, TranslatedCode};
use translator::{JitExit, Translator};

const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
const PAGE_MASK: u64 = PAGE_SIZE - 1;

/// Architectural state of the hart except RAM: registers, CSRs, privilege,
/// icount, clock, reservation. Serializable for snapshots; two harts with
/// equal `HartState` and equal RAM behave identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HartState {
    pub x: [u64; 32],
    pub f: [u64; 32],
    pub pc: u64,
    pub privilege: Privilege,
    pub icount: u64,
    pub mstatus: u64,
    pub medeleg: u64,
    pub mideleg: u64,
    pub mie: u64,
    /// Bits of `mip` written by software (SSIP, STIP, SEIP).
    pub mip_software: u64,
    /// Bits of `mip` driven by the board (MSIP, MTIP, MEIP, SEIP).
    pub mip_lines: u64,
    pub mtvec: u64,
    pub stvec: u64,
    pub mscratch: u64,
    pub sscratch: u64,
    pub mepc: u64,
    pub sepc: u64,
    pub mcause: u64,
    pub scause: u64,
    pub mtval: u64,
    pub stval: u64,
    pub satp: u64,
    pub mcounteren: u64,
    pub scounteren: u64,
    pub mcountinhibit: u64,
    /// `fflags` in bits 4:0, `frm` in bits 7:5.
    pub fcsr: u64,
    /// pmpcfg0 and pmpcfg2: the 16 PMP entries QEMU `virt` has.
    pub pmpcfg: Vec<u64>,
    pub pmpaddr: Vec<u64>,
    /// mhpmcounter3..18: they hold what software writes; with every
    /// mhpmevent hardwired to "no event" they never count.
    pub mhpmcounter: Vec<u64>,
    /// Only `STCE` (bit 63) is writable.
    pub menvcfg: u64,
    pub senvcfg: u64,
    /// Sstc: the supervisor timer is pending while `time >= stimecmp` (and
    /// `menvcfg.STCE` is set).
    pub stimecmp: u64,
    /// `mcycle = icount + mcycle_offset` (wrapping); writes move the offset.
    pub mcycle_offset: u64,
    pub minstret_offset: u64,
    pub clock: GuestClock,
    /// Physical address reserved by LR.
    pub reservation: Option<u64>,
    /// Watched physical addresses (8 bytes each).
    pub watches: Vec<u64>,
    /// The TLB's valid entries. A guest can observe the TLB (an entry
    /// outlives a PTE change until `sfence.vma`; a kept entry spares a
    /// walk its A/D update), so a restored machine must start with the
    /// same one to continue exactly as the original. Filled by
    /// [`Hart::state`]; the live TLB is kept in the hart.
    pub tlb: Vec<SavedTlbEntry>,
    /// Which full ASID owns each TLB context that has one: (context, ASID).
    pub tlb_owners: Vec<(u8, u16)>,
}

/// One valid TLB entry of a [`HartState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTlbEntry {
    /// Access type * 256 + slot.
    pub index: u16,
    pub tag: u64,
    pub ppage: u64,
    /// Level of the leaf it came from (0: 4 KiB, 1: 2 MiB, 2: 1 GiB).
    pub level: u8,
}

/// As many PMP entries and programmable counters as QEMU 7.2's `virt`, so
/// firmware probing them sees the same machine.
const PMP_ENTRIES: usize = 16;
const HPM_COUNTERS: usize = 16;

pub struct Hart {
    config: HartConfig,
    ram: Ram,
    s: HartState,
    /// One direct-mapped TLB per access type, keyed by virtual page and the
    /// translation context (effective privilege, SUM, MXR, ASID): see
    /// [`mmu::tlb_key`]. Part of the state ([`HartState::tlb`]).
    tlb: Box<[[TlbEntry; TLB_ENTRIES]; 3]>,
    /// The level of each entry's leaf, for `sfence.vma` of an address.
    tlb_level: Box<[[u8; TLB_ENTRIES]; 3]>,
    /// Per TLB context: the full ASID whose entries it holds, or `NO_OWNER`.
    tlb_owner: Box<[u32; TLB_CONTEXTS]>,
    /// The icount at which the Sstc timer becomes pending (`u64::MAX`:
    /// not armed); recomputed whenever interrupt state may have changed.
    stimer_deadline: u64,
    /// The RAM offset of the page `pc` is on (`fetch_vpage`), so sequential
    /// fetches skip translation.
    fetch_vpage: u64,
    fetch_page_off: usize,
    /// Set when something the board must see happened during an instruction.
    exit: Option<Exit>,
    /// Set when interrupt state may have changed.
    irq_dirty: bool,
    /// [`rvc::expansion_table`].
    rvc: &'static [u32],
    blocks: BlockCache,
    /// [`BlockCache::new_arena`]; taken by `run` for its duration.
    block_arena: Box<[Decoded]>,
    /// Set when the block being executed must end after the current
    /// instruction: an [`Exit`] is pending or a store retired cached code.
    stop_block: bool,
    translator: Translator,
}

/// Sign-extend the low `bits` of `v`.
#[inline(always)]
fn sext(v: u64, bits: u32) -> u64 {
    (((v << (64 - bits)) as i64) >> (64 - bits)) as u64
}

/// The privilege held in `mstatus.MPP`.
fn mpp_privilege(mstatus: u64) -> Privilege {
    match (mstatus & status::MPP) >> status::MPP_SHIFT {
        0 => Privilege::User,
        1 => Privilege::Supervisor,
        _ => Privilege::Machine,
    }
}

impl Hart {
    /// A hart at reset: M-mode, pc = ram_base, all registers zero, icount 0.
    pub fn new(config: HartConfig) -> Self {
        let clock = GuestClock {
            insns_per_tick: config.insns_per_tick.max(1),
            offset: 0,
        };
        let s = HartState {
            x: [0; 32],
            f: [0; 32],
            pc: config.ram_base,
            privilege: Privilege::Machine,
            icount: 0,
            mstatus: status::XLEN_FIELDS,
            medeleg: 0,
            mideleg: 0,
            mie: 0,
            mip_software: 0,
            mip_lines: 0,
            mtvec: 0,
            stvec: 0,
            mscratch: 0,
            sscratch: 0,
            mepc: 0,
            sepc: 0,
            mcause: 0,
            scause: 0,
            mtval: 0,
            stval: 0,
            satp: 0,
            mcounteren: 0,
            scounteren: 0,
            mcountinhibit: 0,
            fcsr: 0,
            pmpcfg: vec![0; PMP_ENTRIES / 8],
            pmpaddr: vec![0; PMP_ENTRIES],
            mhpmcounter: vec![0; HPM_COUNTERS],
            menvcfg: 0,
            senvcfg: 0,
            stimecmp: 0,
            mcycle_offset: 0,
            minstret_offset: 0,
            clock,
            reservation: None,
            watches: Vec::new(),
            tlb: Vec::new(),
            tlb_owners: Vec::new(),
        };
        let mut hart = Hart {
            config,
            ram: Ram::new(config.ram_base, config.ram_size),
            s,
            tlb: Box::new([[EMPTY_TLB; TLB_ENTRIES]; 3]),
            tlb_level: Box::new([[0; TLB_ENTRIES]; 3]),
            tlb_owner: Box::new([NO_OWNER; TLB_CONTEXTS]),
            stimer_deadline: u64::MAX,
            fetch_vpage: u64::MAX,
            fetch_page_off: 0,
            exit: None,
            irq_dirty: true,
            rvc: rvc::expansion_table(),
            blocks: BlockCache::new(config.ram_size),
            block_arena: BlockCache::new_arena(decode(0, 0, 4)),
            stop_block: false,
            translator: Translator::new(),
        };
        hart.flush_tlb();
        hart
    }
    pub fn config(&self) -> &HartConfig {
        &self.config
    }
    pub fn ram(&self) -> &Ram {
        &self.ram
    }
    /// A device's DMA write into guest RAM, between instructions. Unlike
    /// [`Ram::write`] it retires only the cached code it overwrites (and an
    /// LR reservation on it), not the whole cache.
    pub fn dma_write(&mut self, paddr: u64, data: &[u8]) -> Result<(), crate::BusFault> {
        if data.is_empty() {
            return Ok(());
        }
        let off = self.ram.copy_in(paddr, data)?;
        self.invalidate_code(off, data.len());
        self.stop_block = false;
        if self
            .s
            .reservation
            .is_some_and(|r| r + 8 > paddr && r < paddr + data.len() as u64)
        {
            self.s.reservation = None;
        }
        Ok(())
    }

    pub fn ram_mut(&mut self) -> &mut Ram {
        &mut self.ram
    }
    pub fn icount(&self) -> u64 {
        self.s.icount
    }
    pub fn pc(&self) -> u64 {
        self.s.pc
    }
    pub fn set_pc(&mut self, pc: u64) {
        self.s.pc = pc;
    }
    pub fn xreg(&self, index: usize) -> u64 {
        self.s.x[index & 31]
    }
    /// Writes to x0 are ignored.
    pub fn set_xreg(&mut self, index: usize, value: u64) {
        if index & 31 != 0 {
            self.s.x[index & 31] = value;
        }
    }
    pub fn freg(&self, index: usize) -> u64 {
        self.s.f[index & 31]
    }
    pub fn privilege(&self) -> Privilege {
        self.s.privilege
    }
    /// Drive the board-owned bits of `mip` ([`irq::BOARD_DRIVEN`]): bits in
    /// `mask` take their value from `value`.
    pub fn set_irq_lines(&mut self, mask: u64, value: u64) {
        let mask = mask & irq::BOARD_DRIVEN;
        self.s.mip_lines = (self.s.mip_lines & !mask) | (value & mask);
        self.irq_dirty = true;
    }
    fn mip(&self) -> u64 {
        let mip = self.s.mip_software | self.s.mip_lines;
        if self.sstc_enabled() {
            let pending = self.mtime() >= self.s.stimecmp;
            (mip & !irq::STIP) | if pending { irq::STIP } else { 0 }
        } else {
            mip
        }
    }
    /// `menvcfg.STCE`: `stimecmp` drives `STIP`.
    fn sstc_enabled(&self) -> bool {
        self.s.menvcfg & csr::MENVCFG_STCE != 0
    }
    /// The icount at which the Sstc timer interrupt becomes pending, if it
    /// is armed and not pending yet.
    fn sstc_deadline(&self) -> u64 {
        if self.sstc_enabled() && self.mtime() < self.s.stimecmp {
            self.s.clock.icount_at(self.s.icount, self.s.stimecmp)
        } else {
            u64::MAX
        }
    }
    /// The guest time at which the Sstc timer would wake an idle hart: it
    /// is armed, enabled in `mie` and not pending yet.
    pub fn supervisor_timer_wake(&self) -> Option<u64> {
        // All ones is "never" (Linux stops its timer so), as for the CLINT.
        let armed = self.s.stimecmp != u64::MAX && self.mtime() < self.s.stimecmp;
        (self.sstc_enabled() && self.s.mie & irq::STIP != 0 && armed).then_some(self.s.stimecmp)
    }
    /// True if an interrupt is pending and enabled in `mie` (the WFI wake-up
    /// condition, independent of the global enable bits).
    pub fn wfi_wakeup_pending(&self) -> bool {
        self.mip() & self.s.mie != 0
    }
    pub fn clock(&self) -> &GuestClock {
        &self.s.clock
    }
    pub fn clock_mut(&mut self) -> &mut GuestClock {
        &mut self.s.clock
    }
    /// Current guest time (`mtime`).
    pub fn mtime(&self) -> u64 {
        self.clock().mtime(self.icount())
    }
    /// Make stores that touch the 8 bytes at `paddr` (in RAM) end `run` with
    /// [`Exit::StoreWatch`] once they have completed (HTIF `tohost`).
    pub fn watch_store(&mut self, paddr: u64) {
        if !self.s.watches.contains(&paddr) {
            self.s.watches.push(paddr);
        }
    }
    /// Read a CSR by number as the hardware would in M-mode (for debugging
    /// and tests); `None` if it does not exist.
    pub fn csr(&self, number: u16) -> Option<u64> {
        self.csr_value(number)
    }
    pub fn state(&self) -> HartState {
        let mut state = self.s.clone();
        (state.tlb, state.tlb_owners) = self.saved_tlb();
        state
    }
    /// Restore architectural state; caches are flushed. RAM is restored
    /// separately through [`Ram::restore_bytes`].
    pub fn restore(&mut self, state: &HartState) {
        let mut state = state.clone();
        let tlb = std::mem::take(&mut state.tlb);
        let owners = std::mem::take(&mut state.tlb_owners);
        self.s = state;
        self.restore_tlb(&tlb, &owners);
        self.flush_icache();
        self.exit = None;
        self.stop_block = false;
        self.irq_dirty = true;
    }

    fn flush_icache(&mut self) {
        self.blocks.flush(self.ram.host_generation);
        self.translator.schedule_flush();
    }

    /// Retire cached code overlapping a guest write to RAM offsets
    /// `[off, off + size)`; the block being executed ends after this
    /// instruction in case it was among them.
    #[inline(always)]
    fn invalidate_code(&mut self, off: usize, size: usize) {
        if self.blocks.note_store(off, size) {
            // Translations of the retired chunks check its generation on
            // entry; only a wrapped generation needs them all dropped.
            self.stop_block = true;
            if std::mem::take(&mut self.blocks.wrapped) {
                self.translator.schedule_flush();
            }
        }
    }

    /// Something the board must see happened: `run` returns `exit` once
    /// this instruction completes.
    fn set_exit(&mut self, exit: Exit) {
        self.exit = Some(exit);
        self.stop_block = true;
    }
}
