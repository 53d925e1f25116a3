//! The hart's side of the block translator ([`crate::jit`]): choosing the
//! engine, deciding when a block is worth translating, entering translated
//! code with the hart's state and taking that state back, and the flushes
//! and chain links that keep translations coherent with guest code.
//!
//! The translator exists on x86-64 Unix hosts only, and this module is the
//! one place that knows: `imp` is the real glue there and, elsewhere, a
//! stand-in with the same interface that refuses to be enabled and never
//! runs anything. The rest of the hart is the same on every host.
//!
//! A child of `hart` rather than of the crate so that it reads the hart's
//! state directly, without widening the visibility of the hart's fields.

use serde::{Deserialize, Serialize};

use super::Hart;

/// How the hart executes instructions. Both engines give bit-identical
/// machine states after any number of instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Engine {
    /// Decoded blocks run by the interpreter: the reference, and the only
    /// engine on hosts other than x86-64 Unix.
    Interpreter,
    /// Blocks translated to x86-64 code, with the interpreter executing
    /// what the translator leaves to it (the default where available).
    Translator,
}

impl Default for Engine {
    fn default() -> Self {
        if imp::AVAILABLE {
            Engine::Translator
        } else {
            Engine::Interpreter
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the block translator is only available on x86-64 Unix hosts")]
    Unsupported,
    #[cfg(all(target_arch = "x86_64", unix))]
    #[error(transparent)]
    Jit(#[from] crate::jit::JitError),
}

/// What the block translator emitted since it was last enabled: host code
/// bytes, blocks translated and their guest instructions (zero without a
/// translator). For measuring the translator's code density; nothing the
/// machine does depends on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TranslatedCode {
    pub bytes: u64,
    pub blocks: u64,
    pub insns: u64,
}

/// How translated code handed control back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum JitExit {
    /// At a block boundary; `pc` is where to go on.
    Done,
    /// `pc` is an instruction the interpreter must execute.
    Bail,
}

pub(super) use imp::Translator;

impl Hart {
    /// Choose the execution engine. The choice does not affect the
    /// machine's behaviour, only its speed.
    pub fn set_engine(&mut self, engine: Engine) -> Result<(), EngineError> {
        match engine {
            Engine::Interpreter => {
                self.translator.disable();
                Ok(())
            }
            Engine::Translator => self.translator.enable(),
        }
    }

    /// Translate a block only after it ran this many times in the
    /// interpreter (default 8): code that runs a few times only, like most
    /// of a boot, is cheaper to interpret. Tests set 0 to translate
    /// everything at once. No effect on the machine's behaviour.
    pub fn set_translation_threshold(&mut self, runs: u32) {
        self.translator.set_threshold(runs);
    }

    /// What the translator emitted so far (see [`TranslatedCode`]).
    pub fn translated_code(&self) -> TranslatedCode {
        self.translator.code_stats()
    }

    pub fn engine(&self) -> Engine {
        if self.translator.is_enabled() {
            Engine::Translator
        } else {
            Engine::Interpreter
        }
    }
}

#[cfg(all(target_arch = "x86_64", unix))]
mod imp {
    use std::collections::HashMap;

    use super::{EngineError, JitExit, TranslatedCode};
    use crate::Privilege;
    use crate::block::{BlockRef, CHUNK_SHIFT};
    use crate::decode::Decoded;
    use crate::hart::mmu::{Access, DIRECT_KEY, NO_KEY, tlb_key};
    use crate::hart::{Hart, PAGE_MASK, PAGE_SIZE};
    use crate::jit::jump_cache::fetch_key;
    use crate::jit::{
        ChunkStamp, EXIT_BAIL, EXIT_DONE, EXIT_LINK, FAST_EMPTY, FAST_ENTRIES, FastEntry, Jit,
        JitContext, MISS_LOAD, MISS_NONE, MISS_STORE, PendingLink,
    };
    use crate::ram::PAGE_SHIFT;

    pub(super) const AVAILABLE: bool = true;

    // Translated loads test for the direct key by value.
    const _: () = assert!(crate::jit::DIRECT_KEY == DIRECT_KEY);

    const TRANSLATE_AFTER_RUNS: u32 = 8;

    pub(in crate::hart) struct Translator {
        jit: Option<Box<Jit>>,
        /// Boxed: it holds the translator's TLBs (8 KiB).
        ctx: Box<JitContext>,
        /// What the translator's TLBs were filled under: RAM's host
        /// address and size, and `Ram::dirty_clears` (stores hit dirty
        /// pages only). Checked before translated code runs; a change
        /// empties the TLBs concerned.
        ram_seen: (usize, u64),
        dirty_clears_seen: u64,
        /// A guest store retired cached code: translations are dropped before
        /// translated code runs again.
        flush_pending: bool,
        link: Option<PendingLink>,
        /// Runs of a block in the interpreter before it is translated.
        threshold: u32,
        /// Every translation of the JIT's current epoch, by the RAM offset
        /// and chunk generation of its block, with the block's length. The
        /// block cache forgets blocks (a full arena, a set's older way
        /// replaced) while their translations are still in the code region;
        /// without this, two translations in three were of a block
        /// translated before in the same epoch (a Linux process loop), and
        /// the copies filled the region and flushed it over and over.
        known: HashMap<(usize, u32), (usize, usize)>,
        known_epoch: u64,
        /// Above every epoch of a translator dropped so far: the blocks
        /// and `known` still hold their code addresses, in a freed region,
        /// and a new translator starting at epoch 1 again ran them.
        next_epoch: u64,
    }

    impl Translator {
        pub(in crate::hart) fn new() -> Self {
            Translator {
                jit: None,
                ctx: Box::new(JitContext::default()),
                ram_seen: (0, 0),
                dirty_clears_seen: 0,
                flush_pending: false,
                link: None,
                threshold: TRANSLATE_AFTER_RUNS,
                known: HashMap::new(),
                known_epoch: 0,
                next_epoch: 1,
            }
        }

        /// The translations of the code region's `epoch`: emptied first if
        /// the region was flushed since they were made.
        fn known(&mut self, epoch: u64) -> &mut HashMap<(usize, u32), (usize, usize)> {
            if self.known_epoch != epoch {
                self.known.clear();
                self.known_epoch = epoch;
            }
            &mut self.known
        }

        pub(super) fn enable(&mut self) -> Result<(), EngineError> {
            if self.jit.is_none() {
                self.jit = Some(Box::new(Jit::new(self.next_epoch)?));
                self.flush_pending = false;
                self.link = None;
            }
            Ok(())
        }

        pub(super) fn disable(&mut self) {
            if let Some(jit) = self.jit.take() {
                self.retire(&jit);
            }
        }

        /// Forget translator `jit` (dropped next): the next one's epochs
        /// start above its.
        fn retire(&mut self, jit: &Jit) {
            self.next_epoch = jit.epoch + 1;
        }

        pub(super) fn is_enabled(&self) -> bool {
            self.jit.is_some()
        }

        pub(super) fn code_stats(&self) -> TranslatedCode {
            self.jit
                .as_ref()
                .map_or_else(TranslatedCode::default, |jit| {
                    let stats = jit.stats;
                    TranslatedCode {
                        bytes: stats.bytes.iter().sum(),
                        blocks: stats.blocks,
                        insns: stats.insns,
                    }
                })
        }

        pub(super) fn set_threshold(&mut self, runs: u32) {
            self.threshold = runs;
        }

        /// Drop every translation before translated code runs again (cached
        /// code was retired wholesale).
        #[inline(always)]
        pub(in crate::hart) fn schedule_flush(&mut self) {
            self.flush_pending = true;
        }

        /// The hart's TLB entry `slot` for `access` (`Access as usize`)
        /// changed: the translator's entry standing for it goes.
        #[inline(always)]
        pub(in crate::hart) fn forget_tlb_entry(&mut self, access: usize, slot: usize) {
            let table = if access == Access::Load as usize {
                &mut self.ctx.fast_load
            } else if access == Access::Store as usize {
                &mut self.ctx.fast_store
            } else {
                return;
            };
            if let Some(entry) = table.get_mut(slot) {
                *entry = FAST_EMPTY;
            }
        }

        /// The hart's TLB was emptied: so are the translator's.
        pub(in crate::hart) fn forget_tlb(&mut self) {
            self.ctx.fast_load.fill(FAST_EMPTY);
            self.ctx.fast_store.fill(FAST_EMPTY);
        }

        /// RAM chunk `chunk` holds cached code from now on: stores to its
        /// page must bail, and, if it is its page's last, stores to the
        /// next page too (the interpreter's `note_store` counts a store's
        /// first byte - 2, so one at the next page's start retires it).
        pub(in crate::hart) fn forget_stores_near_code(&mut self, chunk: usize) {
            let page = chunk >> (PAGE_SHIFT - CHUNK_SHIFT);
            let last_in_page = (chunk + 1) >> (PAGE_SHIFT - CHUNK_SHIFT) != page;
            for entry in self.ctx.fast_store.iter_mut() {
                if entry.tag == u64::MAX {
                    continue;
                }
                let entry_page =
                    ((entry.tag & !PAGE_MASK).wrapping_add(entry.addend) >> PAGE_SHIFT) as usize;
                if entry_page == page || (last_in_page && entry_page == page + 1) {
                    *entry = FAST_EMPTY;
                }
            }
        }
    }

    impl Hart {
        /// Run `block` (at `pc`) and whatever it chains to as translated code;
        /// `None` if there is no translator or the block cannot be translated.
        pub(in crate::hart) fn run_translated(
            &mut self,
            block: BlockRef,
            arena: &[Decoded],
            icount_limit: u64,
        ) -> Option<JitExit> {
            let mut jit = self.translator.jit.take()?;
            let result = self.run_translated_with(&mut jit, block, arena, icount_limit);
            match result {
                Ok(exit) => {
                    self.translator.jit = Some(jit);
                    exit
                }
                Err(error) => {
                    // The interpreter carries on alone; nothing guest-visible
                    // depends on the engine.
                    tracing::warn!(%error, "block translator disabled");
                    self.translator.retire(&jit);
                    None
                }
            }
        }

        fn run_translated_with(
            &mut self,
            jit: &mut Jit,
            block: BlockRef,
            arena: &[Decoded],
            icount_limit: u64,
        ) -> Result<Option<JitExit>, EngineError> {
            if std::mem::take(&mut self.translator.flush_pending) {
                jit.flush();
            }
            let pc = self.s.pc;
            let code = match self.blocks.translation(block, jit.epoch) {
                Some(code) => code,
                None => {
                    let off = self.fetch_page_off + (pc & PAGE_MASK) as usize;
                    let (index, generation) = self.blocks.chunk_stamp(off);
                    let known = self.translator.known(jit.epoch).get(&(off, generation));
                    match known.copied() {
                        Some((code, len)) if len == block.len => {
                            self.blocks.set_translation(block, code, jit.epoch);
                            code
                        }
                        // Code that runs a few times only (most of a boot)
                        // is cheaper to interpret than to translate.
                        _ if self.blocks.count_run(block) < self.translator.threshold => {
                            return Ok(None);
                        }
                        _ => {
                            let insns = &arena[block.start..block.start + block.len];
                            let stamp = ChunkStamp { index, generation };
                            let Some(code) = jit.translate(insns, pc & PAGE_MASK, stamp)? else {
                                return Ok(None);
                            };
                            // Translating may have flushed a full region:
                            // `known` takes the epoch after it.
                            self.translator
                                .known(jit.epoch)
                                .insert((off, generation), (code, block.len));
                            self.blocks.set_translation(block, code, jit.epoch);
                            code
                        }
                    }
                }
            };
            if let Some(link) = self.translator.link.take() {
                if link.pc == pc {
                    jit.set_link(link, code);
                }
            }
            let bare = self.s.satp >> 60 == 0;
            let fetch_prv = self.effective_privilege(Access::Fetch);
            let fetch_direct = bare || fetch_prv == Privilege::Machine;
            let fetch_tlb_key = tlb_key(self.s.satp, self.s.mstatus, fetch_prv, Access::Fetch);
            let fetch_key = fetch_key(fetch_tlb_key, fetch_direct);
            // Remember this entry for jumps from translated code (see
            // `jit::jump_cache` for why a hit is this same block): the
            // block is at RAM offset `off` of the page the run loop's fetch
            // translation found, which is the fetch TLB's page when
            // fetches are translated.
            let off = self.fetch_page_off + (pc & PAGE_MASK) as usize;
            let ppage = if fetch_direct {
                Some(pc & !PAGE_MASK)
            } else {
                self.fetch_tlb_page(pc, fetch_tlb_key)
            };
            match ppage {
                Some(page)
                    if self.ram.contains(page, PAGE_SIZE)
                        && self.ram.off(page) + (pc & PAGE_MASK) as usize == off =>
                {
                    jit.jump_cache.fill(pc, fetch_key, page, code);
                }
                _ => debug_assert!(false, "the fetch page of {pc:#x} is not the TLB's"),
            }
            // Loads without translation check RAM's bounds rather than
            // the TLB, by the limits below; RAM too small for them takes
            // the TLB, which holds no page of it.
            let load_key = match self.fast_key(Access::Load) {
                DIRECT_KEY if self.ram.size() < 8 => NO_KEY,
                key => key,
            };
            let store_key = if self.s.reservation.is_some() || !self.s.watches.is_empty() {
                NO_KEY
            } else {
                self.fast_key(Access::Store)
            };
            self.check_fast_tlbs();
            let miss = std::mem::replace(&mut self.translator.ctx.miss, MISS_NONE);
            let vaddr = self.translator.ctx.miss_vaddr;
            match miss {
                MISS_LOAD => self.fill_fast(Access::Load, vaddr, load_key),
                MISS_STORE => self.fill_fast(Access::Store, vaddr, store_key),
                _ => {}
            }
            let ctx = &mut *self.translator.ctx;
            ctx.x = self.s.x.as_mut_ptr();
            ctx.ram = self.ram.host_ptr();
            ctx.pc = pc;
            ctx.icount = self.s.icount;
            ctx.icount_limit = icount_limit;
            ctx.chunk_generation = self.blocks.chunk_generation_ptr();
            ctx.load_key = load_key;
            ctx.store_key = store_key;
            ctx.ram_base = self.ram.base();
            for (i, limit) in ctx.ram_limit.iter_mut().enumerate() {
                *limit = self.ram.size().saturating_sub(1 << i);
            }
            ctx.link = std::ptr::null_mut();
            ctx.jump_cache = jit.jump_cache.as_ptr();
            ctx.fetch_key = fetch_key;
            ctx.tlb_fetch = self.tlb[Access::Fetch as usize].as_ptr().cast();
            let kind = jit.run(ctx, code)?;
            self.s.pc = ctx.pc;
            self.s.icount = ctx.icount;
            Ok(Some(match kind {
                EXIT_BAIL => JitExit::Bail,
                EXIT_LINK => {
                    self.translator.link = Some(PendingLink {
                        slot: ctx.link as usize,
                        pc: ctx.pc,
                        epoch: jit.epoch,
                    });
                    JitExit::Done
                }
                other => {
                    debug_assert_eq!(other, EXIT_DONE);
                    JitExit::Done
                }
            }))
        }

        /// The key of the translator's TLB entries for `access` in the
        /// current context: the hart TLB's key, or the direct key where
        /// there is no translation.
        fn fast_key(&self, access: Access) -> u64 {
            let prv = self.effective_privilege(access);
            if prv == Privilege::Machine || self.s.satp >> 60 == 0 {
                DIRECT_KEY
            } else {
                tlb_key(self.s.satp, self.s.mstatus, prv, access)
            }
        }

        /// Empty the translator's TLBs where what they were filled under
        /// changed: RAM itself (both), or the dirty pages were taken
        /// (stores).
        fn check_fast_tlbs(&mut self) {
            let ram = (self.ram.host_ptr() as usize, self.ram.size());
            let clears = self.ram.dirty_clears();
            let t = &mut self.translator;
            if t.ram_seen != ram {
                t.ram_seen = ram;
                t.forget_tlb();
            }
            if t.dirty_clears_seen != clears {
                t.dirty_clears_seen = clears;
                t.ctx.fast_store.fill(FAST_EMPTY);
            }
        }

        /// Enter `vaddr`'s page in the translator's TLB for `access` under
        /// `key`, if every access wholly in it may take the fast path (see
        /// `JitContext::fast_load`): the hart's TLB holds its mapping (or
        /// there is none to hold), the page is RAM, and, for a store, the
        /// page is dirty already and no code is cached in its chunks or
        /// the one before.
        fn fill_fast(&mut self, access: Access, vaddr: u64, key: u64) {
            if key == NO_KEY {
                return;
            }
            let vpage = vaddr & !PAGE_MASK;
            let ppage = if key == DIRECT_KEY {
                vpage
            } else {
                match self.tlb_hit(access, vaddr, key) {
                    Some(ppage) => ppage,
                    None => return,
                }
            };
            if !self.ram.contains(ppage, PAGE_SIZE) {
                return;
            }
            let off = self.ram.off(ppage);
            // RAM's dirty pages and code chunks count RAM offsets: an entry
            // stands for whole ones only if the guest page starts a RAM
            // page (always, with the board's aligned base). With a base
            // off by 2 KiB, a store to a page's upper half went unmarked.
            if off & PAGE_MASK as usize != 0 {
                return;
            }
            if access == Access::Store {
                let first = (off >> CHUNK_SHIFT).saturating_sub(1);
                let last = (off + PAGE_SIZE as usize - 1) >> CHUNK_SHIFT;
                if !self.ram.is_dirty(off) || self.blocks.has_code(first, last) {
                    return;
                }
            }
            let slot = (vaddr >> PAGE_SHIFT) as usize % FAST_ENTRIES;
            let table = if access == Access::Store {
                &mut self.translator.ctx.fast_store
            } else {
                &mut self.translator.ctx.fast_load
            };
            table[slot] = FastEntry {
                tag: vpage | key,
                addend: (off as u64).wrapping_sub(vpage),
            };
        }
    }
}

/// The stand-in where there is no translator: it cannot be enabled, so
/// every block is left to the interpreter.
#[cfg(not(all(target_arch = "x86_64", unix)))]
mod imp {
    use super::{EngineError, JitExit, TranslatedCode};
    use crate::block::BlockRef;
    use crate::decode::Decoded;
    use crate::hart::Hart;

    pub(super) const AVAILABLE: bool = false;

    pub(in crate::hart) struct Translator;

    impl Translator {
        pub(in crate::hart) fn new() -> Self {
            Translator
        }

        pub(super) fn enable(&mut self) -> Result<(), EngineError> {
            Err(EngineError::Unsupported)
        }

        pub(super) fn disable(&mut self) {}

        pub(super) fn is_enabled(&self) -> bool {
            false
        }

        pub(super) fn code_stats(&self) -> TranslatedCode {
            TranslatedCode::default()
        }

        pub(super) fn set_threshold(&mut self, _: u32) {}

        #[inline(always)]
        pub(in crate::hart) fn schedule_flush(&mut self) {}

        #[inline(always)]
        pub(in crate::hart) fn forget_tlb_entry(&mut self, _: usize, _: usize) {}

        pub(in crate::hart) fn forget_tlb(&mut self) {}

        pub(in crate::hart) fn forget_stores_near_code(&mut self, _: usize) {}
    }

    impl Hart {
        pub(in crate::hart) fn run_translated(
            &mut self,
            _: BlockRef,
            _: &[Decoded],
            _: u64,
        ) -> Option<JitExit> {
            None
        }
    }
}
