//! The jump cache: how translated code goes on by itself where a block's
//! target is not known when it is translated (`jalr`: returns, indirect
//! calls) or is on another page (a static exit no link slot may take),
//! instead of leaving to the run loop every time.
//!
//! A direct-mapped table, indexed by a hash of the guest's virtual pc,
//! whose entries the run loop fills whenever it enters a translation: the
//! virtual pc, the fetch context it translated that pc in ([`fetch_key`]:
//! privilege and ASID context as in the TLB's tags, and whether fetches
//! were translated at all), the physical page it found the pc on, and the
//! translation's address. Translated code leaving for a target looks the
//! target up ([`lookup`]) and, on a hit, jumps straight into the target's
//! translation; on a miss it leaves as before.
//!
//! A hit is the block the run loop would have run, as exactly as a static
//! link is:
//!
//! * The pc and the fetch key are equal, and, when fetches are translated,
//!   the fetch TLB's entry for the pc's page is still the one the run loop
//!   used (same tag, so same page and key, and same physical page). The
//!   run loop's own fetch translation would then hit the same entry (or
//!   its one-page `fetch_vpage` cache, which only ever holds a page whose
//!   fetch TLB entry is present: every change to the fetch TLB other than
//!   a fetch's own fill, and every change of privilege or `satp`, resets
//!   it), so it would find the same RAM offset without a walk, a fault or
//!   any other effect. The fetch is not checked again against the page
//!   tables, exactly as the run loop does not check a TLB hit again:
//!   changed tables take effect at `sfence.vma`, which drops the entry.
//!   Under a bare `satp` or in M-mode the mapping is the identity, which
//!   the run loop found to be RAM when it filled the entry.
//! * The translation belongs to the code region's current epoch: a flush
//!   empties the table ([`super::Jit::flush`]).
//! * The translation's own top checks, as for a linked exit, that its
//!   chunk's code was not retired since (else it leaves, and the run loop
//!   translates the block anew) and that the block fits below the icount
//!   limit (else it leaves at its start, and the run loop interprets up to
//!   the limit).
//! * Nothing the run loop looks at between blocks can have changed while
//!   translated code ran: interrupts become pending or enabled only
//!   through what ends a block in the interpreter (CSR writes, traps,
//!   `xret`, MMIO) or between runs, the Sstc timer's deadline is part of
//!   the icount limit, and every instruction that could set an exit, end
//!   the block early, or retire code bails. The same argument makes static
//!   links sound.
//!
//! A block entered from the table leaves through its stale-code exit with
//! no link slot (`JitContext::link` null), so the run loop links nothing.

use dynasmrt::x64::X64Relocation;
use dynasmrt::{DynasmApi, DynasmLabelApi, VecAssembler, dynasm};

use super::ctx;
use super::{EXIT_DONE, JitContext};
use std::mem::offset_of;

/// log2 of the number of entries.
const BITS: u32 = 12;
const ENTRIES: usize = 1 << BITS;
/// Bytes per entry: `lookup` scales the index by this shift.
const ENTRY_SHIFT: i8 = 5;

/// Fetch-key bit: fetches are not translated (M-mode, or a bare `satp`).
/// Above the 12 bits of a TLB key.
pub(crate) const DIRECT_FETCH: u64 = 1 << 12;

/// The fetch context a translation was entered in: the TLB key of fetches
/// (see `tlb_key`), with [`DIRECT_FETCH`] if fetches are not translated.
pub(crate) fn fetch_key(tlb_key: u64, direct: bool) -> u64 {
    debug_assert!(tlb_key < DIRECT_FETCH);
    tlb_key | if direct { DIRECT_FETCH } else { 0 }
}

/// One entry; `repr(C)` because translated code reads its words.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct JumpEntry {
    /// Guest virtual pc, or `NO_PC`.
    pc: u64,
    /// [`fetch_key`] it was entered with.
    key: u64,
    /// Physical page the fetch TLB mapped its page to (unused when the key
    /// has [`DIRECT_FETCH`]).
    ppage: u64,
    /// Host address of the translation.
    code: u64,
}

const _: () = assert!(size_of::<JumpEntry>() == 1 << ENTRY_SHIFT);

/// Never a target: every jump target is even.
const NO_PC: u64 = u64::MAX;

const EMPTY: JumpEntry = JumpEntry {
    pc: NO_PC,
    key: 0,
    ppage: 0,
    code: 0,
};

/// The entry of virtual pc `pc`: bits 12:1 folded with bits 24:13, so code
/// 8 KiB apart does not collide. `lookup` computes the same.
fn index(pc: u64) -> usize {
    (((pc >> 1) ^ (pc >> 13)) as usize) & (ENTRIES - 1)
}

pub(crate) struct JumpCache {
    entries: Box<[JumpEntry]>,
}

impl JumpCache {
    pub(crate) fn new() -> Self {
        JumpCache {
            entries: vec![EMPTY; ENTRIES].into_boxed_slice(),
        }
    }

    /// Forget every entry (the translations they point to are gone).
    pub(crate) fn clear(&mut self) {
        self.entries.fill(EMPTY);
    }

    /// Remember that the run loop entered translation `code` for virtual pc
    /// `pc`, fetched with `key` from physical page `ppage`.
    #[inline(always)]
    pub(crate) fn fill(&mut self, pc: u64, key: u64, ppage: u64, code: usize) {
        self.entries[index(pc)] = JumpEntry {
            pc,
            key,
            ppage,
            code: code as u64,
        };
    }

    /// For `JitContext::jump_cache`: the array stays where it is for the
    /// cache's life (a boxed slice, never reallocated).
    pub(crate) fn as_ptr(&self) -> *const JumpEntry {
        self.entries.as_ptr()
    }
}

/// Emit the lookup stub (`Stubs::lookup`), called with the guest pc in
/// rax, r13 the icount after the jump and every cached guest register
/// written back. On a hit it returns with rbp = the target (as at any
/// block's start) and rcx the entry, whose translation the caller jumps
/// to ([`lookup`]); on a miss it drops its return address and leaves to
/// the run loop at `exit` with `pc` = rax. Clobbers rcx, rdx and rbp (the
/// leaving block's start, no longer needed).
pub(super) fn lookup_stub(ops: &mut VecAssembler<X64Relocation>, exit: usize) {
    let mask = (ENTRIES - 1) as i32;
    let direct = DIRECT_FETCH as i32;
    let (pc, key, ppage) = (
        offset_of!(JumpEntry, pc) as i32,
        offset_of!(JumpEntry, key) as i32,
        offset_of!(JumpEntry, ppage) as i32,
    );
    dynasm!(ops
        ; .arch x64
        // rcx = &entries[index(rax)]
        ; mov rcx, rax
        ; shr rcx, 12
        ; xor rcx, rax
        ; shr rcx, 1
        ; and ecx, mask
        ; shl rcx, ENTRY_SHIFT
        ; add rcx, QWORD [r12 + ctx!(jump_cache)]
        ; cmp rax, QWORD [rcx + pc]
        ; jne >miss
        ; mov rdx, QWORD [rcx + key]
        ; cmp rdx, QWORD [r12 + ctx!(fetch_key)]
        ; jne >miss
        ; test edx, direct
        ; jnz >hit
        // The fetch TLB's entry for the page, (rax >> 12) % 256, must
        // still be tag = page | key, mapping to the same physical page.
        ; mov rbp, rax
        ; shr rbp, 12
        ; and ebp, 255
        ; shl ebp, 4
        ; add rbp, QWORD [r12 + ctx!(tlb_fetch)]
        ; mov rdx, rax
        ; and rdx, -4096
        ; or rdx, QWORD [r12 + ctx!(fetch_key)]
        ; cmp rdx, QWORD [rbp]
        ; jne >miss
        ; mov rdx, QWORD [rcx + ppage]
        ; cmp rdx, QWORD [rbp + 8]
        ; jne >miss
        ; hit:
        ; mov rbp, rax
        ; mov QWORD [r12 + ctx!(link)], 0
        ; ret
        ; miss:
        // Not back to the caller: its return address goes.
        ; pop rcx
        ; mov QWORD [r12 + ctx!(pc)], rax
        ; mov eax, EXIT_DONE as i32
        ; jmp extern exit
    );
}

/// Emit the jump to the guest pc in rax through the jump cache, by the
/// lookup stub at `stub` (see [`lookup_stub`] for what it expects): into
/// the target's translation on a hit, out to the run loop otherwise. The
/// indirect jump is the caller's own, so each call site has its own
/// prediction.
pub(super) fn lookup(ops: &mut VecAssembler<X64Relocation>, stub: usize) {
    let code = offset_of!(JumpEntry, code) as i32;
    dynasm!(ops
        ; .arch x64
        ; call extern stub
        ; jmp QWORD [rcx + code]
    );
}
