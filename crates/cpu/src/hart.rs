//! The hart: architectural state, CSRs, traps, Sv39 translation and the
//! interpreter loop.

use serde::{Deserialize, Serialize};

use crate::block::{BLOCK_MAX, BlockCache, BlockRef, CHUNK_SHIFT};
use crate::csr::{self, status};
use crate::decode::{Decoded, Op, decode};
use crate::fpu::{self, Fmt, FpOp, Rm};
use crate::ram::{PAGE_SHIFT, Ram};
use crate::{Bus, Exit, GuestClock, HartConfig, Privilege, irq, rvc};

mod translator;

pub use translator::{Engine, EngineError};
use translator::{JitExit, Translator};

const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
const PAGE_MASK: u64 = PAGE_SIZE - 1;

/// Exception causes.
mod cause {
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
struct Trap {
    cause: u64,
    tval: u64,
}

impl Trap {
    fn new(cause: u64, tval: u64) -> Self {
        Trap { cause, tval }
    }
    fn illegal(insn: u32) -> Self {
        Trap::new(cause::ILLEGAL, u64::from(insn))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Access {
    Fetch = 0,
    Load = 1,
    Store = 2,
}

impl Access {
    fn page_fault(self) -> u64 {
        match self {
            Access::Fetch => cause::INSN_PAGE,
            Access::Load => cause::LOAD_PAGE,
            Access::Store => cause::STORE_PAGE,
        }
    }
    fn access_fault(self) -> u64 {
        match self {
            Access::Fetch => cause::INSN_ACCESS,
            Access::Load => cause::LOAD_ACCESS,
            Access::Store => cause::STORE_ACCESS,
        }
    }
}

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
    pub menvcfg: u64,
    pub senvcfg: u64,
    /// `mcycle = icount + mcycle_offset` (wrapping); writes move the offset.
    pub mcycle_offset: u64,
    pub minstret_offset: u64,
    pub clock: GuestClock,
    /// Physical address reserved by LR.
    pub reservation: Option<u64>,
    /// Watched physical addresses (8 bytes each).
    pub watches: Vec<u64>,
}

/// `repr(C)`: translated code reads entries as two u64 words.
#[derive(Clone, Copy)]
#[repr(C)]
struct TlbEntry {
    /// Virtual page | access key; `u64::MAX` when empty.
    tag: u64,
    /// Physical page address.
    ppage: u64,
}

const TLB_ENTRIES: usize = 256;
/// As many PMP entries and programmable counters as QEMU 7.2's `virt`, so
/// firmware probing them sees the same machine.
const PMP_ENTRIES: usize = 16;
const HPM_COUNTERS: usize = 16;
const EMPTY_TLB: TlbEntry = TlbEntry {
    tag: u64::MAX,
    ppage: 0,
};

pub struct Hart {
    config: HartConfig,
    ram: Ram,
    s: HartState,
    /// One direct-mapped TLB per access type, keyed by virtual page and the
    /// translation context (effective privilege, SUM, MXR).
    tlb: Box<[[TlbEntry; TLB_ENTRIES]; 3]>,
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

/// Decode a fetched instruction (`len` 2: a compressed parcel, expanded
/// through `rvc`, the [`rvc::expansion_table`]).
fn decode_parcel(rvc: &[u32], (raw, len): (u32, u8)) -> Decoded {
    if len == 2 {
        match rvc[raw as usize & 0xffff] {
            // Reserved parcel: the general path raises illegal-instruction.
            0 => Decoded {
                op: Op::Other,
                rd: 0,
                rs1: 0,
                rs2: 0,
                len,
                imm: 0,
                raw,
            },
            expanded => decode(expanded, raw, len),
        }
    } else {
        decode(raw, raw, len)
    }
}

/// Instructions after which a block ends: jumps, and those executed by the
/// general path, which may change privilege, translation or interrupt
/// state, or stop the run. A conditional branch does not end a block: when
/// taken it leaves it as a side exit, when not taken execution falls
/// through to the next instruction of the block.
fn ends_block(op: Op) -> bool {
    matches!(op, Op::Jal | Op::Jalr | Op::Other)
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

#[inline(always)]
fn sext32(v: u64) -> u64 {
    v as i32 as i64 as u64
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
            mcycle_offset: 0,
            minstret_offset: 0,
            clock,
            reservation: None,
            watches: Vec::new(),
        };
        Hart {
            config,
            ram: Ram::new(config.ram_base, config.ram_size),
            s,
            tlb: Box::new([[EMPTY_TLB; TLB_ENTRIES]; 3]),
            fetch_vpage: u64::MAX,
            fetch_page_off: 0,
            exit: None,
            irq_dirty: true,
            rvc: rvc::expansion_table(),
            blocks: BlockCache::new(config.ram_size),
            block_arena: BlockCache::new_arena(decode(0, 0, 4)),
            stop_block: false,
            translator: Translator::new(),
        }
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
        self.s.mip_software | self.s.mip_lines
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
        self.s.clone()
    }
    /// Restore architectural state; caches are flushed. RAM is restored
    /// separately through [`Ram::restore_bytes`].
    pub fn restore(&mut self, state: &HartState) {
        self.s = state.clone();
        self.flush_tlb();
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

    fn flush_tlb(&mut self) {
        for tlb in self.tlb.iter_mut() {
            tlb.fill(EMPTY_TLB);
        }
        self.fetch_vpage = u64::MAX;
    }

    // ----- the run loop -----

    /// Execute until `icount == icount_limit` or an [`Exit`] condition. If
    /// `icount >= icount_limit` on entry, returns `Exit::Limit` at once
    /// without executing. Pending enabled interrupts are taken before the
    /// first instruction.
    pub fn run<B: Bus>(&mut self, bus: &mut B, icount_limit: u64) -> Exit {
        let mut arena = std::mem::take(&mut self.block_arena);
        let exit = self.run_blocks(bus, icount_limit, &mut arena);
        self.block_arena = arena;
        exit
    }

    fn run_blocks<B: Bus>(
        &mut self,
        bus: &mut B,
        icount_limit: u64,
        arena: &mut [Decoded],
    ) -> Exit {
        self.irq_dirty = true;
        if self.blocks.host_generation != self.ram.host_generation {
            self.flush_icache();
        }
        while self.s.icount < icount_limit {
            // Everything that can make an interrupt pending or enabled ends
            // a block (CSR writes, traps, xret, MMIO), or happens outside
            // `run`, so block boundaries are the only places to look.
            if self.irq_dirty {
                self.irq_dirty = false;
                if let Some(cause) = self.pending_interrupt() {
                    self.take_trap(cause | cause::INTERRUPT, 0);
                }
            }
            match self.block_at(self.s.pc, arena) {
                Some(block) => self.run_block(bus, block, arena, icount_limit),
                None => self.step_uncached(bus),
            }
            self.stop_block = false;
            if let Some(exit) = self.exit.take() {
                return exit;
            }
        }
        Exit::Limit
    }

    /// Run (part of) `block`, which starts at `pc`: translated if it can be,
    /// interpreted up to the icount limit otherwise.
    #[inline(always)]
    fn run_block<B: Bus>(
        &mut self,
        bus: &mut B,
        block: BlockRef,
        arena: &[Decoded],
        icount_limit: u64,
    ) {
        if self.s.icount + block.len as u64 <= icount_limit {
            match self.run_translated(block, arena, icount_limit) {
                Some(JitExit::Bail) => {
                    self.step_uncached(bus);
                    return;
                }
                Some(JitExit::Done) => return,
                None => {}
            }
        }
        let budget = (icount_limit - self.s.icount).min(block.len as u64) as usize;
        // `pc` and `icount` live in registers across the block; the
        // stores keep the hart's state exact for every instruction that
        // observes it (CSR reads, MMIO, traps).
        let mut pc = self.s.pc;
        let mut icount = self.s.icount;
        for &d in &arena[block.start..block.start + budget] {
            self.s.pc = pc;
            self.s.icount = icount;
            let result = self.execute(bus, d, pc);
            icount += 1;
            match result {
                // A taken branch leaves the block (a side exit).
                Ok(next) if next != pc.wrapping_add(u64::from(d.len)) => {
                    pc = next;
                    break;
                }
                Ok(next) => pc = next,
                Err(trap) => {
                    self.s.icount = icount;
                    self.take_trap(trap.cause, trap.tval);
                    pc = self.s.pc;
                    break;
                }
            }
            if self.stop_block {
                break;
            }
        }
        self.s.pc = pc;
        self.s.icount = icount;
    }

    /// Execute one instruction without the block cache: instructions that
    /// straddle a page, and fetches that fault.
    fn step_uncached<B: Bus>(&mut self, bus: &mut B) {
        let pc = self.s.pc;
        let result = match self.fetch_uncached(pc) {
            Ok(d) => self.execute(bus, d, pc),
            Err(trap) => Err(trap),
        };
        self.s.icount += 1;
        match result {
            Ok(next) => self.s.pc = next,
            Err(trap) => self.take_trap(trap.cause, trap.tval),
        }
    }

    fn pending_interrupt(&self) -> Option<u64> {
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

    fn take_trap(&mut self, cause: u64, tval: u64) {
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

    // ----- address translation -----

    fn effective_privilege(&self, access: Access) -> Privilege {
        if access != Access::Fetch && self.s.mstatus & status::MPRV != 0 {
            mpp_privilege(self.s.mstatus)
        } else {
            self.s.privilege
        }
    }

    /// Virtual to physical, with the TLB in front of the Sv39 walk.
    #[inline(always)]
    fn translate(&mut self, vaddr: u64, access: Access) -> Result<u64, Trap> {
        let prv = self.effective_privilege(access);
        if prv == Privilege::Machine || self.s.satp >> 60 == 0 {
            return Ok(vaddr);
        }
        let key = (prv as u64) | ((self.s.mstatus >> 16) & 0xc); // SUM, MXR -> bits 2, 3
        let tag = (vaddr & !PAGE_MASK) | key;
        let slot = ((vaddr >> PAGE_SHIFT) as usize) % TLB_ENTRIES;
        let entry = self.tlb[access as usize][slot];
        if entry.tag == tag {
            return Ok(entry.ppage | (vaddr & PAGE_MASK));
        }
        let ppage = self.walk(vaddr, access, prv)?;
        self.tlb[access as usize][slot] = TlbEntry { tag, ppage };
        Ok(ppage | (vaddr & PAGE_MASK))
    }

    /// Sv39 page-table walk with hardware A/D updates; returns the physical
    /// page of `vaddr`.
    fn walk(&mut self, vaddr: u64, access: Access, prv: Privilege) -> Result<u64, Trap> {
        let page_fault = Trap::new(access.page_fault(), vaddr);
        // Bits 63:39 must equal bit 38.
        if sext(vaddr, 39) != vaddr {
            return Err(page_fault);
        }
        let mut table = (self.s.satp & ((1 << 44) - 1)) << PAGE_SHIFT;
        for level in (0..3).rev() {
            let vpn = (vaddr >> (12 + 9 * level)) & 0x1ff;
            let pte_addr = table + vpn * 8;
            if !self.ram.contains(pte_addr, 8) {
                return Err(Trap::new(access.access_fault(), vaddr));
            }
            let off = self.ram.off(pte_addr);
            let mut pte = self.ram.load_le(off, 8);
            let (v, r, w, x, u) = (
                pte & 1 != 0,
                pte & 2 != 0,
                pte & 4 != 0,
                pte & 8 != 0,
                pte & 16 != 0,
            );
            // Bits 63:54 (reserved, PBMT, N) must be zero: none of those
            // extensions is implemented.
            if !v || (!r && w) || pte >> 54 != 0 {
                return Err(page_fault);
            }
            let ppn = (pte >> 10) & ((1 << 44) - 1);
            if !r && !x {
                if level == 0 {
                    return Err(page_fault);
                }
                table = ppn << PAGE_SHIFT;
                continue;
            }
            // A leaf: check permissions.
            let allowed = match access {
                Access::Fetch => x,
                Access::Load => r || (x && self.s.mstatus & status::MXR != 0),
                Access::Store => w,
            };
            let user_ok = match prv {
                Privilege::User => u,
                Privilege::Supervisor => {
                    !u || (access != Access::Fetch && self.s.mstatus & status::SUM != 0)
                }
                Privilege::Machine => true,
            };
            if !allowed || !user_ok {
                return Err(page_fault);
            }
            let low_ppn_mask = (1u64 << (9 * level)) - 1;
            if ppn & low_ppn_mask != 0 {
                return Err(page_fault); // misaligned superpage
            }
            let new_pte = pte | 0x40 | if access == Access::Store { 0x80 } else { 0 };
            if new_pte != pte {
                pte = new_pte;
                self.ram.store_le(off, 8, pte);
                self.invalidate_code(off, 8);
            }
            let vpn_low = (vaddr >> PAGE_SHIFT) & low_ppn_mask;
            return Ok((ppn | vpn_low) << PAGE_SHIFT);
        }
        Err(page_fault)
    }

    // ----- memory access -----

    /// The cached block starting at `pc`, built if need be; `None` if the
    /// first instruction straddles a page or its fetch faults (the caller
    /// then takes the uncached path, which raises the fault).
    #[inline(always)]
    fn block_at(&mut self, pc: u64, arena: &mut [Decoded]) -> Option<BlockRef> {
        if pc & !PAGE_MASK != self.fetch_vpage {
            // Translate (and fill `fetch_vpage`) without raising anything.
            let paddr = self.translate(pc, Access::Fetch).ok()?;
            let page = paddr & !PAGE_MASK;
            if !self.ram.contains(page, PAGE_SIZE) {
                return None;
            }
            self.fetch_vpage = pc & !PAGE_MASK;
            self.fetch_page_off = self.ram.off(page);
        }
        let off = self.fetch_page_off + (pc & PAGE_MASK) as usize;
        if let Some(block) = self.blocks.lookup(off) {
            return Some(block);
        }
        self.build_block(off, arena)
    }

    /// Decode a block from RAM offset `off`: it ends after a control
    /// transfer or an instruction that takes the general path, at the end
    /// of the chunk, or before an instruction straddling the page.
    #[cold]
    fn build_block(&mut self, off: usize, arena: &mut [Decoded]) -> Option<BlockRef> {
        let page_end = (off & !(PAGE_SIZE as usize - 1)) + PAGE_SIZE as usize;
        let chunk = off >> CHUNK_SHIFT;
        let rvc = self.rvc;
        let buffer = self.blocks.buffer(arena, off);
        let mut at = off;
        let mut len = 0;
        while len < BLOCK_MAX && at + 2 <= page_end && at >> CHUNK_SHIFT == chunk {
            let low = self.ram.load_le(at, 2) as u32;
            let fetched = if low & 3 != 3 {
                (low, 2)
            } else if at + 4 <= page_end {
                (self.ram.load_u32(at), 4)
            } else {
                break;
            };
            let d = decode_parcel(rvc, fetched);
            buffer[len] = d;
            len += 1;
            at += usize::from(d.len);
            if ends_block(d.op) {
                break;
            }
        }
        (len > 0).then(|| self.blocks.commit(off, len))
    }

    /// The instruction at `pc`, fetched halfword by halfword.
    fn fetch_uncached(&mut self, pc: u64) -> Result<Decoded, Trap> {
        let low = self.fetch_half(pc)?;
        if low & 3 != 3 {
            return Ok(decode_parcel(self.rvc, (low, 2)));
        }
        let high = self.fetch_half(pc.wrapping_add(2))?;
        Ok(decode_parcel(self.rvc, (low | (high << 16), 4)))
    }

    fn fetch_half(&mut self, vaddr: u64) -> Result<u32, Trap> {
        let paddr = self.translate(vaddr, Access::Fetch)?;
        if !self.ram.contains(paddr, 2) {
            return Err(Trap::new(cause::INSN_ACCESS, vaddr));
        }
        let page = paddr & !PAGE_MASK;
        if self.ram.contains(page, PAGE_SIZE) {
            self.fetch_vpage = vaddr & !PAGE_MASK;
            self.fetch_page_off = self.ram.off(page);
        }
        Ok(self.ram.load_le(self.ram.off(paddr), 2) as u32)
    }

    #[inline(always)]
    fn load<B: Bus>(&mut self, bus: &mut B, vaddr: u64, size: u64) -> Result<u64, Trap> {
        if (vaddr & PAGE_MASK) + size > PAGE_SIZE {
            return self.load_bytewise(bus, vaddr, size);
        }
        let paddr = self.translate(vaddr, Access::Load)?;
        if self.ram.contains(paddr, size) {
            return Ok(self.ram.load_le(self.ram.off(paddr), size as usize));
        }
        if paddr & (size - 1) != 0 {
            return self.load_bytewise(bus, vaddr, size);
        }
        self.set_exit(Exit::Mmio);
        bus.load(paddr, size as u8, self.s.icount)
            .map_err(|_| Trap::new(cause::LOAD_ACCESS, vaddr))
    }

    fn load_bytewise<B: Bus>(&mut self, bus: &mut B, vaddr: u64, size: u64) -> Result<u64, Trap> {
        let mut value = 0;
        for i in 0..size {
            let byte = self.load(bus, vaddr.wrapping_add(i), 1)?;
            value |= byte << (8 * i);
        }
        Ok(value)
    }

    #[inline(always)]
    fn store<B: Bus>(
        &mut self,
        bus: &mut B,
        vaddr: u64,
        size: u64,
        value: u64,
    ) -> Result<(), Trap> {
        if (vaddr & PAGE_MASK) + size > PAGE_SIZE {
            // Translate both pages first so a fault leaves memory untouched.
            self.translate(vaddr, Access::Store)?;
            self.translate((vaddr | PAGE_MASK).wrapping_add(1), Access::Store)?;
            return self.store_bytewise(bus, vaddr, size, value);
        }
        let paddr = self.translate(vaddr, Access::Store)?;
        if self.ram.contains(paddr, size) {
            let off = self.ram.off(paddr);
            self.ram.store_le(off, size as usize, value);
            self.invalidate_code(off, size as usize);
            if self.s.reservation.is_some_and(|r| r >> 3 == paddr >> 3) {
                self.s.reservation = None;
            }
            if !self.s.watches.is_empty() {
                self.check_watch(paddr, size);
            }
            return Ok(());
        }
        if paddr & (size - 1) != 0 {
            return self.store_bytewise(bus, vaddr, size, value);
        }
        self.set_exit(Exit::Mmio);
        bus.store(paddr, size as u8, value, self.s.icount)
            .map_err(|_| Trap::new(cause::STORE_ACCESS, vaddr))
    }

    fn store_bytewise<B: Bus>(
        &mut self,
        bus: &mut B,
        vaddr: u64,
        size: u64,
        value: u64,
    ) -> Result<(), Trap> {
        for i in 0..size {
            self.store(bus, vaddr.wrapping_add(i), 1, value >> (8 * i))?;
        }
        Ok(())
    }

    fn check_watch(&mut self, paddr: u64, size: u64) {
        if let Some(&w) = self
            .s
            .watches
            .iter()
            .find(|&&w| paddr < w + 8 && w < paddr + size)
        {
            self.set_exit(Exit::StoreWatch(w));
        }
    }

    // ----- CSRs -----

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
    fn csr_value(&self, number: u16) -> Option<u64> {
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
    fn csr_access(&mut self, insn: u32, number: u16, write: Option<u64>) -> Result<u64, Trap> {
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
            csr::SSTATUS => {
                s.mstatus = (s.mstatus & !status::S_WRITABLE) | (value & status::S_WRITABLE);
                self.flush_tlb();
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
            csr::SATP => {
                let mode = value >> 60;
                if mode == 0 || mode == 8 {
                    s.satp = value & !(0xffffu64 << 44); // no ASIDs
                    self.flush_tlb();
                }
            }
            csr::MSTATUS => {
                let mut v = value & status::M_WRITABLE;
                if (v & status::MPP) >> status::MPP_SHIFT == 2 {
                    v &= !status::MPP; // reserved: WARL to U
                }
                s.mstatus = v | status::XLEN_FIELDS;
                self.flush_tlb();
            }
            csr::MISA => {}
            csr::MEDELEG => s.medeleg = value & csr::MEDELEG_WRITABLE,
            csr::MIDELEG => s.mideleg = value & csr::MIDELEG_WRITABLE,
            csr::MIE => s.mie = value & csr::MIE_WRITABLE,
            csr::MTVEC => s.mtvec = value & !2,
            csr::MCOUNTEREN => s.mcounteren = value & 0xffff_ffff,
            csr::MENVCFG => s.menvcfg = 0,
            csr::MCOUNTINHIBIT => s.mcountinhibit = 0,
            csr::MSCRATCH => s.mscratch = value,
            csr::MEPC => s.mepc = value & !1,
            csr::MCAUSE => s.mcause = value,
            csr::MTVAL => s.mtval = value,
            csr::MIP => {
                s.mip_software =
                    (s.mip_software & !csr::MIP_M_WRITABLE) | (value & csr::MIP_M_WRITABLE);
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

    // ----- the interpreter -----

    fn set_exit(&mut self, exit: Exit) {
        self.exit = Some(exit);
        self.stop_block = true;
    }

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
    fn execute<B: Bus>(&mut self, bus: &mut B, d: Decoded, pc: u64) -> Result<u64, Trap> {
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
    fn execute_other<B: Bus>(&mut self, bus: &mut B, raw: u32, len: u64) -> Result<(), Trap> {
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

    fn system<B: Bus>(&mut self, _bus: &mut B, raw: u32, insn: u32, npc: u64) -> Result<(), Trap> {
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
                    self.flush_tlb();
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

    /// Return from a trap to `to`: the saved interrupt enable (`pie`) comes
    /// back into `ie`, `pie` is set, the saved privilege field `pp` clears.
    fn xret(&mut self, to: Privilege, ie: u64, pie: u64, pp: u64, epc: u64) {
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

    fn atomic<B: Bus>(&mut self, bus: &mut B, raw: u32, insn: u32) -> Result<(), Trap> {
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

    fn float<B: Bus>(&mut self, bus: &mut B, raw: u32, insn: u32) -> Result<(), Trap> {
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
