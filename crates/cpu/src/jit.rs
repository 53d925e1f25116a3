//! The block translator: decoded blocks become x86-64 code, so the hot
//! integer paths run without an interpreter's dispatch.
//!
//! The translator is deliberately small, and the interpreter stays the
//! reference. Translated code handles the RV64IM integer instructions,
//! branches and jumps, and loads and stores that hit RAM through the
//! current translation. Anything else -- division, system, atomic and
//! floating-point instructions, MMIO, misses in the translator's TLBs
//! (below), page-crossing accesses, stores to a page holding cached code,
//! stores while an LR reservation or a store watch is set -- *bails out*:
//! the code stores the pc and icount of that instruction and returns, and
//! the interpreter executes it. Because the bail happens before the
//! instruction has any effect, every instruction executes with exactly
//! the interpreter's semantics, and the machine's state after any number of
//! instructions is the same whichever engine ran them (the tests compare
//! the two engines' state digests).
//!
//! Loads and stores go through the translator's own TLBs
//! ([`JitContext::fast_load`], [`JitContext::fast_store`]), one entry per
//! entry of the hart's load and store TLBs: tag (virtual page | context
//! key) and the RAM offset of the page, less the virtual page. A hit is
//! one compare, of the tag with the page of the access's *last* byte (so
//! an access crossing a page misses), and one add. An entry exists only
//! where the interpreter would do nothing but the access itself: the
//! hart's TLB holds the mapping (or there is none: M-mode or a bare
//! `satp` use a key of their own), the page is RAM, and for stores the
//! page is already marked dirty and no code is cached in it. A miss bails
//! and notes the address; once the interpreter has executed the access
//! (walking the page table, marking the page dirty, retiring code), the
//! run loop enters the page if it now qualifies. Entries go when the
//! hart's entry in the same slot changes (a refill, `sfence.vma`), when
//! the dirty pages are taken (stores), and when code is cached in their
//! page (stores). Loads without translation skip the TLB: a bounds check
//! against RAM is all they need, and is shorter on their address's path.
//!
//! Blocks are chained: an exit to a target in the same guest page (whose
//! physical page is therefore the same) goes through a link slot that,
//! once the target is translated, jumps straight into it. Other exits
//! (`jalr`, and jumps to another page) look their target up in the jump
//! cache ([`jump_cache`]), by virtual pc and fetch context, and jump
//! straight into its translation if the run loop entered it before in the
//! same context and the fetch TLB still maps it the same. Every block
//! starts by checking the icount limit, so chaining never runs past it.
//! Translated code never changes interrupt state, so pending interrupts are
//! only looked for back in the run loop, as with the interpreter.
//!
//! All translated code is dropped at once when a guest store retires cached
//! code or the host writes RAM, which keeps links trivially coherent.
//!
//! Register use inside translated code: r12 = context, rbx = guest `x`
//! array + `emit::X_BIAS` (so every register is an 8-bit displacement
//! away), r15 = host address of RAM, r13 = icount at the current block's
//! start, rbp = guest pc of the current block's start; rax, rcx and rdx
//! are temporaries (and `mulhsu` pushes one on the host stack).
//!
//! rsi, rdi, r8-r11 and r14 cache guest registers within a block: each
//! block gives them to the guest registers it uses most (those of its loop
//! first, if it jumps back to its own start), loads one at its first read
//! (those its loop uses, before the loop's head) and writes back the ones
//! it changed before every way out: its exits, chained or not, and every
//! bail, with the values from before the bailing instruction. Between
//! blocks, and wherever the run loop or the interpreter looks, the guest
//! registers are in the `x` array.
//!
//! A block that jumps back to its own start (a loop whose body fits in
//! one block) goes round without leaving: the jump makes the icount check
//! of the block's top (leaving there if the next pass could overrun the
//! limit) and goes on at the loop's head with the registers still cached,
//! exactly as if it had left through a link slot to its own top.
//!
//! Host code size matters: broad guest code (a kernel's network path) runs
//! thousands of blocks once each per request, bound by host instruction
//! fetch. So what every block would repeat off its hot path is emitted
//! once, among the stubs at the start of the code region ([`Stubs`]): the
//! jump cache lookup (called; the indirect jump stays at each site, for
//! its prediction), the bails (each site writes back its registers and
//! names its instruction in edx) and the blocks' exits for the icount
//! limit and retired code; and registers, context fields and immediates
//! take their 8-bit encodings where they fit. Loads' and stores' TLB
//! lookups stay inline: called, they cost more time than their bytes
//! saved. [`CodeStats`] counts what blocks are made of.

// dynasm's dynamic-register operands (`Rq(n)`) expand to `n.into()`.
#![allow(clippy::useless_conversion)]

use std::mem::offset_of;

use dynasmrt::x64::X64Relocation;
use dynasmrt::{DynasmApi, DynasmLabelApi, VecAssembler, dynasm};
use memmap2::{Mmap, MmapMut};

use crate::decode::Decoded;

mod emit;
pub(crate) mod jump_cache;

use emit::{Emitter, PARTS};
pub(crate) use jump_cache::{JumpCache, JumpEntry};

const CODE_BYTES: usize = 32 << 20;
/// Link slots (one per static exit of a block).
const LINK_SLOTS: usize = 1 << 20;
/// Room one block's code may need, at most: translation stops before it.
const MAX_BLOCK_BYTES: usize = 64 << 10;
/// The writable view's pages are given back in steps of this many bytes
/// once the code below them is written (see [`Jit::release_written`]).
const RELEASE_STEP: usize = 1 << 20;

/// Why translated code returned.
pub(crate) const EXIT_DONE: u64 = 0;
/// `pc` is an instruction the interpreter must execute.
pub(crate) const EXIT_BAIL: u64 = 1;
/// A static exit whose link slot (`JitContext::link`) is still unset.
pub(crate) const EXIT_LINK: u64 = 2;

/// Entries in each of the translator's TLBs: as many as the hart's, and
/// indexed the same way, so that an entry stands for the hart's entry in
/// the same slot (see [`JitContext::fast_load`]).
pub(crate) const FAST_ENTRIES: usize = 256;

/// One entry of the translator's TLBs. `repr(C)`: translated code reads it
/// as two u64 words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct FastEntry {
    /// Virtual page | access key, like the hart TLB's tags; `u64::MAX`
    /// when empty (no key reaches the low 12 bits' all-ones).
    pub tag: u64,
    /// RAM offset of the page minus the virtual page (wrapping): added to
    /// a virtual address in the page, the RAM offset it reaches.
    pub addend: u64,
}

pub(crate) const FAST_EMPTY: FastEntry = FastEntry {
    tag: u64::MAX,
    addend: 0,
};

/// The key of translator TLB entries for accesses without translation
/// (see `hart::mmu`), which loads check for to take their direct path.
pub(crate) const DIRECT_KEY: u64 = 2;

/// What the last bail of translated code was for: an access its TLB
/// did not hold (`JitContext::miss`).
pub(crate) const MISS_NONE: u64 = 0;
pub(crate) const MISS_LOAD: u64 = 1;
pub(crate) const MISS_STORE: u64 = 2;

/// What translated code reads and writes besides guest registers and RAM.
/// Filled by the run loop before entering translated code.
#[repr(C)]
pub(crate) struct JitContext {
    pub pc: u64,
    pub icount: u64,
    pub icount_limit: u64,
    /// `BlockCache`'s chunk generations.
    pub chunk_generation: *const u32,
    /// The tag bits of the current translation context for loads and
    /// stores: the hart's TLB key, or the direct key (no translation),
    /// or, for stores that must all bail (an LR reservation or a store
    /// watch is set), a key no entry has.
    pub load_key: u64,
    pub store_key: u64,
    /// Loads without translation check RAM's bounds instead: the RAM
    /// offset of an access of `1 << i` bytes is at most `ram_limit[i]`.
    pub ram_base: u64,
    pub ram_limit: [u64; 4],
    /// The link slot of the last static exit taken (null after a jump
    /// through the jump cache).
    pub link: *mut usize,
    /// Set by a bail for a TLB miss (`MISS_*`), with the virtual address:
    /// the run loop fills the entry once the interpreter has executed the
    /// access, if the access may take the fast path.
    pub miss: u64,
    pub miss_vaddr: u64,
    /// [`JumpCache`]'s entries.
    pub jump_cache: *const JumpEntry,
    /// The current fetch context ([`jump_cache::fetch_key`]).
    pub fetch_key: u64,
    /// The hart's fetch TLB (`[TlbEntry; 256]`).
    pub tlb_fetch: *const u64,
    /// Read on entry only, so last of the fields translated code reads
    /// with 8-bit displacements.
    pub x: *mut u64,
    pub ram: *mut u8,
    /// The translator's TLBs, indexed by virtual page like the hart's:
    /// where a load or store of the current context hits, the access is
    /// wholly in one page of RAM, through the mapping the hart's TLB holds
    /// in the same slot (or the direct mapping), and, for stores, the page
    /// is marked dirty already and no code is cached in its chunks or in
    /// the chunk before it, so the store is all there is to do. Anything
    /// else (a miss, a page crossing, MMIO) bails.
    pub fast_load: [FastEntry; FAST_ENTRIES],
    pub fast_store: [FastEntry; FAST_ENTRIES],
}

/// A link slot to fill once the block at `pc` is translated.
#[derive(Clone, Copy)]
pub(crate) struct PendingLink {
    pub slot: usize,
    pub pc: u64,
    pub epoch: u64,
}

impl Default for JitContext {
    fn default() -> Self {
        JitContext {
            x: std::ptr::null_mut(),
            ram: std::ptr::null_mut(),
            pc: 0,
            icount: 0,
            icount_limit: 0,
            chunk_generation: std::ptr::null(),
            load_key: 0,
            store_key: 0,
            ram_base: 0,
            ram_limit: [0; 4],
            link: std::ptr::null_mut(),
            miss: MISS_NONE,
            miss_vaddr: 0,
            jump_cache: std::ptr::null(),
            fetch_key: 0,
            tlb_fetch: std::ptr::null(),
            fast_load: [FAST_EMPTY; FAST_ENTRIES],
            fast_store: [FAST_EMPTY; FAST_ENTRIES],
        }
    }
}

macro_rules! ctx {
    ($field:ident) => {
        offset_of!(JitContext, $field) as i32
    };
}
// By path as well, for `emit`, which is declared before the macro.
use ctx;

/// The offset of a field of `JitContext` within an 8-bit displacement.
macro_rules! ctx8 {
    ($field:ident) => {{
        const OFFSET: usize = offset_of!(JitContext, $field);
        const _: () = assert!(OFFSET < 128);
        OFFSET as i8
    }};
}
use ctx8;

type Entry = unsafe extern "sysv64" fn(*mut JitContext, *const u8) -> u64;

/// The addresses of the code every block shares, emitted once at the
/// start of the code region: blocks jump or call there rather than each
/// carrying its own copy, which keeps translated code small (host
/// instruction fetch is what broad guest code is bound by).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stubs {
    /// Where unlinked link slots point: `EXIT_LINK` with `pc` = rbp.
    exit_link: usize,
    /// A block's top found the icount limit too close: `EXIT_DONE` at its
    /// start (rbp).
    no_room: usize,
    /// A block's top found its code retired: `EXIT_LINK` at its start, so
    /// the run loop translates it anew and links the slot that led here.
    stale: usize,
    /// Bail at an instruction of the current block, named by edx (see
    /// [`bail_operand`]), its cached registers written back.
    bail: usize,
    /// The same for a load or store whose virtual address (rax) missed the
    /// translator's TLB: noted for the run loop first.
    miss_load: usize,
    miss_store: usize,
    /// Called with a guest pc in rax, the icount after the jump in r13 and
    /// every cached register written back: on a hit in the jump cache,
    /// return with rcx the entry (whose code the caller jumps to) and rbp
    /// the pc; on a miss, leave to the run loop at that pc.
    lookup: usize,
}

/// The operand of the bail stubs, in edx: the bailing instruction's index
/// in its block (what to add to the icount) in the low byte, its offset
/// from the block's start (what to add to its pc) above.
fn bail_operand(index: i32, rel: i32) -> i32 {
    debug_assert!((0..256).contains(&index) && (0..1 << 23).contains(&rel));
    (rel << 8) | index
}

/// Memory holding the entry/exit stubs and translated blocks, mapped
/// twice: writable at one address, executable at another, never both at
/// once (W^X) and without a system call per translation.
struct Region {
    write_view: MmapMut,
    exec_view: Mmap,
}

impl Region {
    fn new() -> Result<Region, JitError> {
        let file = code_file()?;
        let mut options = memmap2::MmapOptions::new();
        options.len(CODE_BYTES);
        // SAFETY: mapping a file is unsound only if someone else changes
        // or truncates it while mapped. `code_file` created it exclusively
        // (create_new, mode 0600), unlinked it and fixed its size, and no
        // other handle to it escapes this function, so the two views below
        // are its only users, and both live as long as the region.
        let (write_view, exec_view) = unsafe {
            (
                options.map_mut(&file).map_err(JitError::Map)?,
                options.map_exec(&file).map_err(JitError::Map)?,
            )
        };
        Ok(Region {
            write_view,
            exec_view,
        })
    }
}

/// The file behind the code region, `CODE_BYTES` long, already unlinked:
/// a file because the region is mapped twice, writable and executable,
/// and both mappings must share its pages.
///
/// The crate otherwise keeps away from `std::fs`: nothing the machine
/// computes may depend on a host file. This one is host memory for
/// generated code, never an input to the machine: nothing is read from it
/// but what the translator wrote, and it is gone when the process is.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
fn code_file() -> Result<std::fs::File, JitError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = ["/dev/shm"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!(
        "ftvm-code-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(JitError::Map)?;
    // Unlinked at once: from here on only this process can reach it.
    let _ = std::fs::remove_file(&path);
    file.set_len(CODE_BYTES as u64).map_err(JitError::Map)?;
    Ok(file)
}

pub(crate) struct Jit {
    region: Region,
    base: usize,
    /// Bytes in use; the stubs occupy `[0, stubs_end)`.
    used: usize,
    stubs_end: usize,
    enter: usize,
    stubs: Stubs,
    links: Box<[usize]>,
    links_used: usize,
    /// Bumped by every flush; block cache entries remember the epoch their
    /// translation belongs to.
    pub epoch: u64,
    /// The writable view's pages below this offset are released.
    released: usize,
    /// Translations by virtual pc, for jumps translated code cannot link.
    pub jump_cache: JumpCache,
    /// What this translator emitted so far.
    pub stats: CodeStats,
}

/// What a translator emitted: host code bytes by what they are for (the
/// order of `emit::Part`), blocks, and their guest instructions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeStats {
    pub bytes: [u64; PARTS],
    pub blocks: u64,
    pub insns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error("cannot map executable memory for the translator: {0}")]
    Map(std::io::Error),
    #[error("cannot assemble translated code: {0}")]
    Assemble(String),
}

impl Jit {
    /// A translator whose epochs start at `first_epoch`: above those of
    /// any earlier translator of the same hart, whose blocks may still
    /// name code in a region that is gone.
    pub(crate) fn new(first_epoch: u64) -> Result<Self, JitError> {
        let region = Region::new()?;
        let base = region.exec_view.as_ptr() as usize;
        let mut jit = Jit {
            region,
            base,
            used: 0,
            stubs_end: 0,
            enter: 0,
            stubs: Stubs::default(),
            links: vec![0; LINK_SLOTS].into_boxed_slice(),
            links_used: 0,
            epoch: first_epoch.max(1),
            released: 0,
            jump_cache: JumpCache::new(),
            stats: CodeStats::default(),
        };
        jit.emit_stubs()?;
        Ok(jit)
    }

    fn emit_stubs(&mut self) -> Result<(), JitError> {
        let mut ops = VecAssembler::<X64Relocation>::new(self.base);
        let enter = ops.offset().0;
        dynasm!(ops
            ; .arch x64
            ; push rbx
            ; push rbp
            ; push r12
            ; push r13
            ; push r14
            ; push r15
            ; mov r12, rdi
            ; mov rbx, QWORD [r12 + ctx!(x)]
            ; add rbx, emit::X_BIAS
            ; mov r15, QWORD [r12 + ctx!(ram)]
            ; mov r13, QWORD [r12 + ctx!(icount)]
            ; mov rbp, QWORD [r12 + ctx!(pc)]
            ; jmp rsi
        );
        let exit = ops.offset().0;
        dynasm!(ops
            ; .arch x64
            ; mov QWORD [r12 + ctx!(icount)], r13
            ; pop r15
            ; pop r14
            ; pop r13
            ; pop r12
            ; pop rbp
            ; pop rbx
            ; ret
        );
        let exit_link = ops.offset().0;
        let stale = exit_link;
        dynasm!(ops
            ; .arch x64
            ; mov QWORD [r12 + ctx!(pc)], rbp
            ; mov eax, EXIT_LINK as i32
            ; jmp extern self.base + exit
        );
        let no_room = ops.offset().0;
        dynasm!(ops
            ; .arch x64
            ; mov QWORD [r12 + ctx!(pc)], rbp
            ; xor eax, eax
            ; jmp extern self.base + exit
        );
        let miss_load = ops.offset().0;
        dynasm!(ops
            ; .arch x64
            ; mov QWORD [r12 + ctx!(miss_vaddr)], rax
            ; mov QWORD [r12 + ctx!(miss)], MISS_LOAD as i32
            ; jmp >bail
        );
        let miss_store = ops.offset().0;
        dynasm!(ops
            ; .arch x64
            ; mov QWORD [r12 + ctx!(miss_vaddr)], rax
            ; mov QWORD [r12 + ctx!(miss)], MISS_STORE as i32
        );
        let bail = ops.offset().0;
        dynasm!(ops
            ; .arch x64
            ; bail:
            ; movzx ecx, dl
            ; add r13, rcx
            ; shr edx, 8
            ; lea rax, [rbp + rdx]
            ; mov QWORD [r12 + ctx!(pc)], rax
            ; mov eax, EXIT_BAIL as i32
            ; jmp extern self.base + exit
        );
        let lookup = ops.offset().0;
        jump_cache::lookup_stub(&mut ops, self.base + exit);
        let code = ops
            .finalize()
            .map_err(|e| JitError::Assemble(e.to_string()))?;
        self.write(0, &code)?;
        self.enter = self.base + enter;
        self.stubs = Stubs {
            exit_link: self.base + exit_link,
            no_room: self.base + no_room,
            stale: self.base + stale,
            bail: self.base + bail,
            miss_load: self.base + miss_load,
            miss_store: self.base + miss_store,
            lookup: self.base + lookup,
        };
        self.used = code.len().next_multiple_of(16);
        self.stubs_end = self.used;
        Ok(())
    }

    /// Drop every translation.
    pub(crate) fn flush(&mut self) {
        self.used = self.stubs_end;
        self.released = 0;
        self.links_used = 0;
        // 64 bits: an epoch never comes round again to revive a
        // translation recorded long ago.
        self.epoch += 1;
        self.jump_cache.clear();
    }

    fn write(&mut self, at: usize, code: &[u8]) -> Result<(), JitError> {
        self.region.write_view[at..at + code.len()].copy_from_slice(code);
        // The code is executed through the other view: keep the compiler
        // from sinking these writes past the call into it.
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Translate a block whose first instruction is at page offset
    /// `page_offset`; returns the code's address. A full region is flushed
    /// first (which bumps the epoch); `None` only if the block cannot fit
    /// even then.
    pub(crate) fn translate(
        &mut self,
        insns: &[Decoded],
        page_offset: u64,
        chunk: ChunkStamp,
    ) -> Result<Option<usize>, JitError> {
        let full = |jit: &Jit| {
            jit.used + MAX_BLOCK_BYTES > CODE_BYTES || jit.links_used + insns.len() + 1 > LINK_SLOTS
        };
        if full(self) {
            self.flush();
            if full(self) {
                return Ok(None);
            }
        }
        let at = self.used;
        let mut emitter = Emitter::new(
            self.base + at,
            self.stubs,
            &mut self.links,
            &mut self.links_used,
            page_offset,
            insns.len() as i32,
        );
        emitter.block(insns, chunk);
        for (total, bytes) in self.stats.bytes.iter_mut().zip(emitter.bytes) {
            *total += bytes;
        }
        self.stats.blocks += 1;
        self.stats.insns += insns.len() as u64;
        let code = emitter
            .ops
            .finalize()
            .map_err(|e| JitError::Assemble(e.to_string()))?;
        debug_assert!(code.len() <= MAX_BLOCK_BYTES);
        self.write(at, &code)?;
        self.used = (at + code.len()).next_multiple_of(16);
        self.release_written();
        Ok(Some(self.base + at))
    }

    /// Unmap the writable view's pages below the last whole step of
    /// written code: the code stays in the file, mapped by the executable
    /// view, and the view faults a page back in if a flush writes there
    /// again. Otherwise every page of code would be resident twice, once
    /// in each view (64 MiB of RSS for a full region).
    fn release_written(&mut self) {
        let written = self.used / RELEASE_STEP * RELEASE_STEP;
        if written <= self.released {
            return;
        }
        // SAFETY: MADV_DONTNEED on a shared file mapping only removes this
        // view's page-table entries; the bytes stay in the file, and a
        // later access faults them back in unchanged (unlike a private or
        // anonymous mapping, which it would zero). No reference into the
        // range is held: `write` borrows the view only while it copies.
        let advised = unsafe {
            self.region.write_view.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.released,
                written - self.released,
            )
        };
        // Failing to give memory back changes nothing else: try again at
        // the next step.
        if advised.is_ok() {
            self.released = written;
        }
    }

    /// Point the link slot at address `slot` to `code`.
    pub(crate) fn set_link(&mut self, link: PendingLink, code: usize) {
        if link.epoch != self.epoch {
            return;
        }
        let first = self.links.as_ptr() as usize;
        let index = link.slot.wrapping_sub(first) / size_of::<usize>();
        if let Some(slot) = self.links[..self.links_used].get_mut(index) {
            *slot = code;
        }
    }

    /// Run translated code from `code` until it exits; returns the exit
    /// kind.
    pub(crate) fn run(&mut self, ctx: &mut JitContext, code: usize) -> Result<u64, JitError> {
        // SAFETY: `enter` is the entry stub emitted by `emit_stubs`, a
        // sysv64 function of this signature that saves and restores every
        // callee-saved register it uses and returns through the exit stub
        // (translated code calls the stubs with balanced calls and returns;
        // a lookup that misses drops its return address before leaving).
        // `code` is the start of a translation in the region's executable
        // view, written completely before this call. Translated code reads
        // and writes only: `ctx`'s fields, its TLBs at a masked index below
        // `FAST_ENTRIES`; `ctx.x[0..32]` (register numbers are 5-bit); RAM
        // at `vaddr + addend` for an entry of `ctx`'s TLBs whose tag matched
        // the page of the access's last byte, in the slot of its first
        // byte's page; the run loop fills an entry only in the slot of its
        // own page, so both bytes lie in that page and the access is at
        // most 4096 - size bytes into it, a page that was wholly in RAM
        // when the entry was filled (the loop empties them all when RAM's
        // address or size is not what they were filled for); untranslated
        // loads (M-mode, bare `satp`) at `vaddr - ram_base`, below
        // `ram_limit` for their size; the chunk generation of the block's
        // own chunk; the hart's fetch TLB at a masked index below 256; the
        // link slots, whose array is owned by `self` and never
        // reallocated; and the jump cache's entries at a masked index below
        // their number, also owned by `self` and never reallocated. It
        // jumps only to the stubs, to code it was emitted with, to link
        // slots' targets and to jump cache entries' code, both of which
        // hold only the stubs or translations written in the current epoch
        // (a flush resets the slots as it hands them out again, and empties
        // the jump cache). The run loop builds `ctx` from live `&mut`
        // borrows of the hart that nothing else uses during this call.
        let exit = unsafe {
            let enter: Entry = std::mem::transmute::<usize, Entry>(self.enter);
            enter(ctx, code as *const u8)
        };
        Ok(exit)
    }
}

/// The RAM chunk a block was decoded from and that chunk's generation then:
/// a translation entered through a link after a store retired its chunk
/// leaves at once.
#[derive(Clone, Copy)]
pub(crate) struct ChunkStamp {
    pub index: usize,
    pub generation: u32,
}
