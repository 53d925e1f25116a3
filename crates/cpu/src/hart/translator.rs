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

    use super::{EngineError, JitExit};
    use crate::Privilege;
    use crate::block::BlockRef;
    use crate::decode::Decoded;
    use crate::hart::mmu::{Access, tlb_key};
    use crate::hart::{Hart, PAGE_MASK};
    use crate::jit::{ChunkStamp, EXIT_BAIL, EXIT_DONE, EXIT_LINK, Jit, JitContext, PendingLink};

    pub(super) const AVAILABLE: bool = true;

    const TRANSLATE_AFTER_RUNS: u32 = 8;

    pub(in crate::hart) struct Translator {
        jit: Option<Box<Jit>>,
        ctx: JitContext,
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
    }

    impl Translator {
        pub(in crate::hart) fn new() -> Self {
            Translator {
                jit: None,
                ctx: JitContext::default(),
                flush_pending: false,
                link: None,
                threshold: TRANSLATE_AFTER_RUNS,
                known: HashMap::new(),
                known_epoch: 0,
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
                self.jit = Some(Box::new(Jit::new()?));
                self.flush_pending = false;
                self.link = None;
            }
            Ok(())
        }

        pub(super) fn disable(&mut self) {
            self.jit = None;
        }

        pub(super) fn is_enabled(&self) -> bool {
            self.jit.is_some()
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
            self.translator.jit = Some(jit);
            match result {
                Ok(exit) => exit,
                Err(error) => {
                    // The interpreter carries on alone; nothing guest-visible
                    // depends on the engine.
                    tracing::warn!(%error, "block translator disabled");
                    self.translator.jit = None;
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
            let load_prv = self.effective_privilege(Access::Load);
            let store_prv = self.effective_privilege(Access::Store);
            let bare = self.s.satp >> 60 == 0;
            let load_key = tlb_key(self.s.satp, self.s.mstatus, load_prv, Access::Load);
            let store_key = tlb_key(self.s.satp, self.s.mstatus, store_prv, Access::Store);
            let ctx = &mut self.translator.ctx;
            ctx.x = self.s.x.as_mut_ptr();
            ctx.ram = self.ram.host_ptr();
            ctx.ram_base = self.ram.base();
            ctx.ram_size = self.ram.size();
            ctx.pc = pc;
            ctx.icount = self.s.icount;
            ctx.icount_limit = icount_limit;
            ctx.code_chunks = self.blocks.code_chunks_ptr();
            ctx.chunk_generation = self.blocks.chunk_generation_ptr();
            ctx.dirty_pages = self.ram.dirty_ptr().cast();
            ctx.tlb_load = self.tlb[Access::Load as usize].as_ptr().cast();
            ctx.tlb_store = self.tlb[Access::Store as usize].as_ptr().cast();
            ctx.load_direct = u64::from(bare || load_prv == Privilege::Machine);
            ctx.store_direct = u64::from(bare || store_prv == Privilege::Machine);
            ctx.load_key = load_key;
            ctx.store_key = store_key;
            ctx.stores_bail = u64::from(self.s.reservation.is_some() || !self.s.watches.is_empty());
            ctx.link = std::ptr::null_mut();
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
    }
}

/// The stand-in where there is no translator: it cannot be enabled, so
/// every block is left to the interpreter.
#[cfg(not(all(target_arch = "x86_64", unix)))]
mod imp {
    use super::{EngineError, JitExit};
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

        pub(super) fn set_threshold(&mut self, _: u32) {}

        #[inline(always)]
        pub(in crate::hart) fn schedule_flush(&mut self) {}
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
