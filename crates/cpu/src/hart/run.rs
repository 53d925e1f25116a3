//! The run loop: interrupts checked at block boundaries, blocks found or
//! built in the block cache from fetched and decoded instructions, then
//! run translated where the translator takes them and interpreted
//! otherwise, up to the icount limit.

use super::mmu::Access;
use super::trap::{Trap, cause};
use super::{Hart, JitExit, PAGE_MASK, PAGE_SIZE};
use crate::block::{BLOCK_MAX, BlockRef, CHUNK_SHIFT};
use crate::decode::{Decoded, Op, decode};
use crate::{Bus, Exit};

/// Decode a fetched instruction (`len` 2: a compressed parcel, expanded
/// through `rvc`, the [`crate::rvc::expansion_table`]).
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

impl Hart {
    /// Execute until `icount == icount_limit` or an [`Exit`] condition. If
    /// `icount >= icount_limit` on entry, returns `Exit::Limit` at once
    /// without executing. Pending enabled interrupts are taken before the
    /// first instruction.
    ///
    /// The bus is a trait object, not a type parameter: the interpreter's
    /// loop is compiled once, whatever board it sits on, rather than
    /// re-compiled (and laid out anew) with every change to the board's
    /// bus; an MMIO access, rare, costs one indirect call. Measured on
    /// `guest/bench` and a Linux command, it was as fast or a little faster
    /// than the monomorphised loop.
    pub fn run(&mut self, bus: &mut dyn Bus, icount_limit: u64) -> Exit {
        let mut arena = std::mem::take(&mut self.block_arena);
        let exit = self.run_blocks(bus, icount_limit, &mut arena);
        self.block_arena = arena;
        exit
    }

    fn run_blocks(&mut self, bus: &mut dyn Bus, icount_limit: u64, arena: &mut [Decoded]) -> Exit {
        self.irq_dirty = true;
        if self.blocks.host_generation != self.ram.host_generation {
            self.flush_icache();
        }
        while self.s.icount < icount_limit {
            // Everything that can make an interrupt pending or enabled ends
            // a block (CSR writes, traps, xret, MMIO), or happens outside
            // `run`, so block boundaries are the only places to look; the
            // one thing that does so with time alone, the Sstc timer, has
            // its icount as a limit so that it too falls on a boundary.
            if self.s.icount >= self.stimer_deadline {
                self.irq_dirty = true;
            }
            if self.irq_dirty {
                self.irq_dirty = false;
                self.stimer_deadline = self.sstc_deadline();
                if let Some(cause) = self.pending_interrupt() {
                    self.take_trap(cause | cause::INTERRUPT, 0);
                }
            }
            let limit = icount_limit.min(self.stimer_deadline);
            match self.block_at(self.s.pc, arena) {
                Some(block) => self.run_block(bus, block, arena, limit),
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
    fn run_block(
        &mut self,
        bus: &mut dyn Bus,
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
    fn step_uncached(&mut self, bus: &mut dyn Bus) {
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
        let buffer = self.blocks.buffer(arena);
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
        if len == 0 {
            return None;
        }
        let fresh = !self.blocks.has_code(chunk, chunk);
        let block = self.blocks.commit(off, len);
        if fresh {
            // Stores there must bail from now on, to retire the code.
            self.translator.forget_stores_near_code(chunk);
        }
        Some(block)
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
}
