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
/// Blocks are found through a two-way set-associative table, hashed by RAM
/// offset. A direct-mapped table of 4096 slots indexed by the offset's low
/// bits held too little of a Linux system's hot code: blocks 8 KiB apart
/// evicted each other, and a third of a process-heavy workload went to
/// decoding and translating blocks again.
const SETS: usize = 1 << 14;
const WAYS: usize = 2;
/// Instructions of every cached block, allocated in order; when it is full
/// the whole cache is dropped and allocation starts again (blocks replaced
/// in the table leave their instructions behind until then).
const ARENA: usize = 1 << 18;
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
    /// Where its instructions start in the arena.
    start: u32,
}

const EMPTY: Meta = Meta {
    tag: NO_TAG,
    generation: 0,
    len: 0,
    jit: 0,
    jit_epoch: 0,
    runs: 0,
    start: 0,
};

/// The cache's bookkeeping. The instructions themselves live in a separate
/// arena ([`BlockCache::new_arena`]) that the run loop holds as a local, so
/// iterating over a block borrows nothing from the hart.
pub(crate) struct BlockCache {
    /// `SETS * WAYS` entries; way 0 of a set holds its newer block.
    metas: Box<[Meta]>,
    /// The next free instruction of the arena.
    next: usize,
    /// Per chunk: bumped when a store hits a chunk with cached code.
    chunk_generation: Box<[u32]>,
    /// One bit per chunk that has blocks built from it since its last bump.
    code_chunks: Box<[u64]>,
    /// `Ram::host_generation` the cache is coherent with.
    pub(crate) host_generation: u64,
    /// A chunk generation wrapped since the flag was last cleared.
    pub(crate) wrapped: bool,
}

/// A cached block: instructions `insns[start..start + len]`; `slot` is its
/// entry in the table.
#[derive(Clone, Copy)]
pub(crate) struct BlockRef {
    pub start: usize,
    pub len: usize,
    pub slot: usize,
}

/// The first slot of the set of RAM offset `off` (a Fibonacci hash of the
/// halfword index, so that neighbouring and power-of-two-apart offsets
/// spread over the table).
#[inline(always)]
fn set_of(off: usize) -> usize {
    let hash = ((off >> 1) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (hash >> (64 - SETS.trailing_zeros())) as usize * WAYS
}

impl BlockCache {
    pub(crate) fn new(ram_size: u64) -> Self {
        let chunks = (ram_size >> CHUNK_SHIFT) as usize + 1;
        BlockCache {
            metas: vec![EMPTY; SETS * WAYS].into_boxed_slice(),
            next: 0,
            chunk_generation: vec![0; chunks].into_boxed_slice(),
            code_chunks: vec![0; chunks.div_ceil(64)].into_boxed_slice(),
            host_generation: 0,
            wrapped: false,
        }
    }

    /// Forget every block (host-side writes to RAM, snapshot restore).
    pub(crate) fn flush(&mut self, host_generation: u64) {
        self.metas.fill(EMPTY);
        self.next = 0;
        self.code_chunks.fill(0);
        self.host_generation = host_generation;
    }

    #[inline(always)]
    pub(crate) fn lookup(&self, off: usize) -> Option<BlockRef> {
        let set = set_of(off);
        let generation = self.chunk_generation[off >> CHUNK_SHIFT];
        (set..set + WAYS).find_map(|slot| {
            let meta = &self.metas[slot];
            (meta.tag == off as u64 && meta.generation == generation).then_some(BlockRef {
                start: meta.start as usize,
                len: meta.len as usize,
                slot,
            })
        })
    }

    /// The instruction arena.
    pub(crate) fn new_arena(filler: Decoded) -> Box<[Decoded]> {
        vec![filler; ARENA].into_boxed_slice()
    }

    /// Where in the arena the next block is built; call
    /// [`BlockCache::commit`] with its length once filled. Drops every
    /// block if the arena is full.
    pub(crate) fn buffer<'a>(&mut self, arena: &'a mut [Decoded]) -> &'a mut [Decoded] {
        if self.next + BLOCK_MAX > arena.len() {
            self.metas.fill(EMPTY);
            self.next = 0;
        }
        &mut arena[self.next..][..BLOCK_MAX]
    }

    /// Enter the block just built in the buffer, for RAM offset `off`: in
    /// way 0 of its set, the block there moving to way 1 (replacing the
    /// older one) unless it is stale or the same offset's.
    pub(crate) fn commit(&mut self, off: usize, len: usize) -> BlockRef {
        let set = set_of(off);
        let chunk = off >> CHUNK_SHIFT;
        let first = self.metas[set];
        if first.tag != off as u64 && first.tag != NO_TAG && !self.is_stale(&first) {
            self.metas[set + 1] = first;
        }
        let start = self.next;
        self.next += len;
        self.metas[set] = Meta {
            tag: off as u64,
            generation: self.chunk_generation[chunk],
            len: len as u32,
            jit: 0,
            jit_epoch: 0,
            runs: 0,
            start: start as u32,
        };
        self.code_chunks[chunk / 64] |= 1 << (chunk % 64);
        BlockRef {
            start,
            len,
            slot: set,
        }
    }

    fn is_stale(&self, meta: &Meta) -> bool {
        meta.generation != self.chunk_generation[meta.tag as usize >> CHUNK_SHIFT]
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

    /// Whether any of chunks `first..=last` holds cached code.
    pub(crate) fn has_code(&self, first: usize, last: usize) -> bool {
        (first..=last).any(|chunk| {
            self.code_chunks
                .get(chunk / 64)
                .is_some_and(|word| word & (1 << (chunk % 64)) != 0)
        })
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
        let mut arena = BlockCache::new_arena(crate::decode::decode(0, 0, 4));
        let a = 0x100;
        let b = 0x100 + (1 << CHUNK_SHIFT);
        cache.buffer(&mut arena);
        cache.commit(a, 3);
        cache.buffer(&mut arena);
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
