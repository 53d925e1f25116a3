//! The decoded-block cache: straight-line runs of decoded instructions,
//! keyed by the RAM offset of their first instruction, so the run loop
//! pays for fetch, cache lookup, limit and interrupt checks once per block
//! rather than once per instruction.
//!
//! Coherence is exact, because determinism depends on it: a cached block
//! must never execute bytes the guest has since overwritten, or a run that
//! restored a snapshot (with an empty cache) would diverge from one that
//! did not. RAM is divided into chunks; a block lies within one chunk and
//! remembers the chunk's generation. A guest store to a chunk that holds
//! cached code bumps its generation, which retires every block in it at
//! once. Chunks are smaller than pages so that data sharing a page with hot
//! code (common in small bare-metal programs) does not keep evicting it.

use crate::decode::Decoded;

/// log2 of the chunk size that code invalidation works in.
pub(crate) const CHUNK_SHIFT: u32 = 10;
/// Most instructions in one block.
pub(crate) const BLOCK_MAX: usize = 64;
/// Blocks are direct-mapped by RAM offset. 4096 slots hold too little of a
/// Linux system's hot code (a quarter of the Debian build's second stage
/// goes to decoding blocks again; the linux bench's process loop ran 1.35x
/// faster with 16384), but with 16384 slots (a 16 MiB arena per hart)
/// debug-build pairs missed their 500 ms timeout at startup on a loaded
/// host (ft_pair, A/B under the same load; why is not known yet).
const SLOTS: usize = 1 << 12;
const NO_TAG: u64 = u64::MAX;

#[derive(Clone, Copy)]
struct Meta {
    /// RAM offset of the first instruction, or `NO_TAG`.
    tag: u64,
    /// The chunk's generation when the block was built.
    generation: u32,
    len: u32,
    /// Address of the block's translation, valid in `jit_epoch` (0: none).
    jit: usize,
    jit_epoch: u64,
    /// Times the block ran without a translation.
    runs: u32,
}

const EMPTY: Meta = Meta {
    tag: NO_TAG,
    generation: 0,
    len: 0,
    jit: 0,
    jit_epoch: 0,
    runs: 0,
};

/// The cache's bookkeeping. The instructions themselves live in a separate
/// arena ([`BlockCache::new_arena`]) that the run loop holds as a local, so
/// iterating over a block borrows nothing from the hart.
pub(crate) struct BlockCache {
    metas: Box<[Meta]>,
    /// Per chunk: bumped when a store hits a chunk with cached code.
    chunk_generation: Box<[u32]>,
    /// One bit per chunk that has blocks built from it since its last bump.
    code_chunks: Box<[u64]>,
    /// `Ram::host_generation` the cache is coherent with.
    pub(crate) host_generation: u64,
    /// A chunk generation wrapped since the flag was last cleared.
    pub(crate) wrapped: bool,
}

/// A cached block: instructions `insns[start..start + len]`.
#[derive(Clone, Copy)]
pub(crate) struct BlockRef {
    pub start: usize,
    pub len: usize,
    pub slot: usize,
}

#[inline(always)]
fn slot_of(off: usize) -> usize {
    (off >> 1) % SLOTS
}

impl BlockCache {
    pub(crate) fn new(ram_size: u64) -> Self {
        let chunks = (ram_size >> CHUNK_SHIFT) as usize + 1;
        BlockCache {
            metas: vec![EMPTY; SLOTS].into_boxed_slice(),
            chunk_generation: vec![0; chunks].into_boxed_slice(),
            code_chunks: vec![0; chunks.div_ceil(64)].into_boxed_slice(),
            host_generation: 0,
            wrapped: false,
        }
    }

    /// Forget every block (host-side writes to RAM, snapshot restore).
    pub(crate) fn flush(&mut self, host_generation: u64) {
        self.metas.fill(EMPTY);
        self.code_chunks.fill(0);
        self.host_generation = host_generation;
    }

    #[inline(always)]
    pub(crate) fn lookup(&self, off: usize) -> Option<BlockRef> {
        let slot = slot_of(off);
        let meta = self.metas[slot];
        (meta.tag == off as u64 && meta.generation == self.chunk_generation[off >> CHUNK_SHIFT])
            .then_some(BlockRef {
                start: slot * BLOCK_MAX,
                len: meta.len as usize,
                slot,
            })
    }

    /// The instruction arena: `SLOTS * BLOCK_MAX` instructions; the block
    /// in slot `s` is at `[s * BLOCK_MAX..][..len]`.
    pub(crate) fn new_arena(filler: Decoded) -> Box<[Decoded]> {
        vec![filler; SLOTS * BLOCK_MAX].into_boxed_slice()
    }

    /// Where in the arena a block starting at RAM offset `off` is built;
    /// call [`BlockCache::commit`] with its length once filled.
    pub(crate) fn buffer<'a>(&self, arena: &'a mut [Decoded], off: usize) -> &'a mut [Decoded] {
        &mut arena[slot_of(off) * BLOCK_MAX..][..BLOCK_MAX]
    }

    pub(crate) fn commit(&mut self, off: usize, len: usize) -> BlockRef {
        let slot = slot_of(off);
        let chunk = off >> CHUNK_SHIFT;
        self.metas[slot] = Meta {
            tag: off as u64,
            generation: self.chunk_generation[chunk],
            len: len as u32,
            jit: 0,
            jit_epoch: 0,
            runs: 0,
        };
        self.code_chunks[chunk / 64] |= 1 << (chunk % 64);
        BlockRef {
            start: slot * BLOCK_MAX,
            len,
            slot,
        }
    }

    /// The block's translation made in `epoch`, if any.
    #[inline(always)]
    pub(crate) fn translation(&self, block: BlockRef, epoch: u64) -> Option<usize> {
        let meta = &self.metas[block.slot];
        (meta.jit_epoch == epoch).then_some(meta.jit)
    }

    /// Count one run of `block` without a translation; returns the count.
    pub(crate) fn count_run(&mut self, block: BlockRef) -> u32 {
        let meta = &mut self.metas[block.slot];
        meta.runs = meta.runs.saturating_add(1);
        meta.runs
    }

    pub(crate) fn set_translation(&mut self, block: BlockRef, code: usize, epoch: u64) {
        let meta = &mut self.metas[block.slot];
        meta.jit = code;
        meta.jit_epoch = epoch;
    }

    /// The chunk generations, for translated code's staleness check.
    pub(crate) fn chunk_generation_ptr(&self) -> *const u32 {
        self.chunk_generation.as_ptr()
    }

    /// The chunk of RAM offset `off` and its current generation.
    pub(crate) fn chunk_stamp(&self, off: usize) -> (usize, u32) {
        let chunk = off >> CHUNK_SHIFT;
        (chunk, self.chunk_generation[chunk])
    }

    /// The chunk bitmap, for translated code's store check.
    pub(crate) fn code_chunks_ptr(&self) -> *const u64 {
        self.code_chunks.as_ptr()
    }

    /// Note a guest store to RAM offsets `[off, off + size)`. Returns true
    /// if it retired cached code. An instruction starting up to 2 bytes
    /// before the store overlaps it, so the chunk holding `off - 2` counts.
    /// If a generation wraps, every block is dropped and `wrapped` is set
    /// (translations must go too).
    #[inline(always)]
    pub(crate) fn note_store(&mut self, off: usize, size: usize) -> bool {
        let first = off.saturating_sub(2) >> CHUNK_SHIFT;
        let last = (off + size - 1) >> CHUNK_SHIFT;
        let mut hit = false;
        for chunk in first..=last {
            let (word, bit) = (chunk / 64, 1u64 << (chunk % 64));
            if self.code_chunks[word] & bit != 0 {
                self.code_chunks[word] &= !bit;
                let generation = &mut self.chunk_generation[chunk];
                *generation = generation.wrapping_add(1);
                if *generation == 0 {
                    // A wrapped generation could revalidate an ancient block.
                    self.metas.fill(EMPTY);
                    self.wrapped = true;
                }
                hit = true;
            }
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_retire_blocks_of_their_chunk_only() {
        let mut cache = BlockCache::new(1 << 16);
        let a = 0x100;
        let b = 0x100 + (1 << CHUNK_SHIFT);
        cache.commit(a, 3);
        cache.commit(b, 5);
        assert!(cache.lookup(a).is_some());
        // A store to a chunk without code retires nothing.
        assert!(!cache.note_store(0x8000, 8));
        assert!(cache.lookup(a).is_some());
        assert!(cache.note_store(a + 40, 4));
        assert!(cache.lookup(a).is_none());
        assert_eq!(cache.lookup(b).map(|r| r.len), Some(5));
        // The chunk's bit is cleared: a second store is free.
        assert!(!cache.note_store(a + 40, 4));
    }

    #[test]
    fn a_store_into_the_tail_of_a_straddling_instruction_retires_it() {
        let mut cache = BlockCache::new(1 << 16);
        let last_in_chunk = (1 << CHUNK_SHIFT) - 2;
        cache.commit(last_in_chunk, 1);
        assert!(cache.note_store(1 << CHUNK_SHIFT, 1));
        assert!(cache.lookup(last_in_chunk).is_none());
    }
}
