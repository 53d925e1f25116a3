//! Guest RAM and the bookkeeping that keeps decoded code coherent with it
//! and tells which pages changed.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::BusFault;

/// Size of the pages whose code generation is tracked.
pub(crate) const PAGE_SHIFT: u32 = 12;

/// Guest RAM: one contiguous block of physical memory at `base`.
///
/// Host-side writes (loader, device DMA at an instruction boundary, snapshot
/// restore) go through [`Ram::write`] / [`Ram::restore_bytes`]; they bump
/// the code generation so the hart drops instructions it decoded from the
/// old bytes.
pub struct Ram {
    base: u64,
    bytes: Vec<u8>,
    /// Bumped by every host-side write: decoded instructions are only valid
    /// for the generation they were decoded in.
    pub(crate) host_generation: u64,
    /// One byte per page, set by every write to the page (guest stores,
    /// page-table A/D updates, DMA, host writes; translated code stores
    /// only to pages already marked, see `dirty_clears`) and cleared by
    /// [`Ram::take_dirty_pages`]: what a digest
    /// must hash again. Atomic only so that a reader holding `&Ram` can
    /// clear it; the machine is single-threaded and `Relaxed` compiles to
    /// plain byte moves.
    dirty: Box<[AtomicU8]>,
    /// Calls of [`Ram::take_dirty_pages`]: the translator's store TLB
    /// holds pages already marked dirty, and drops them all when this
    /// moves.
    dirty_clears: AtomicU64,
}

impl Ram {
    pub fn new(base: u64, size: u64) -> Self {
        let pages = (size as usize).div_ceil(1 << PAGE_SHIFT);
        Ram {
            base,
            bytes: vec![0; size as usize],
            host_generation: 0,
            // Everything is dirty for a digest cache that has seen nothing.
            dirty: (0..pages).map(|_| AtomicU8::new(1)).collect(),
            dirty_clears: AtomicU64::new(0),
        }
    }
    /// Call `page` with the index of every page written since the last
    /// call (all of them on the first), and forget them.
    pub fn take_dirty_pages(&self, mut page: impl FnMut(usize)) {
        self.dirty_clears.fetch_add(1, Ordering::Relaxed);
        for (index, flag) in self.dirty.iter().enumerate() {
            if flag.load(Ordering::Relaxed) != 0 {
                flag.store(0, Ordering::Relaxed);
                page(index);
            }
        }
    }
    /// How many times the dirty pages were taken (and cleared).
    pub(crate) fn dirty_clears(&self) -> u64 {
        self.dirty_clears.load(Ordering::Relaxed)
    }
    /// Whether the page holding RAM offset `off` is marked dirty.
    pub(crate) fn is_dirty(&self, off: usize) -> bool {
        self.dirty
            .get(off >> PAGE_SHIFT)
            .is_some_and(|flag| flag.load(Ordering::Relaxed) != 0)
    }
    #[inline(always)]
    fn mark_dirty(&self, off: usize, len: usize) {
        let first = off >> PAGE_SHIFT;
        let last = (off + len.max(1) - 1) >> PAGE_SHIFT;
        for flag in &self.dirty[first..=last] {
            flag.store(1, Ordering::Relaxed);
        }
    }
    pub fn base(&self) -> u64 {
        self.base
    }
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    /// True if `[paddr, paddr+len)` lies wholly in RAM.
    #[inline(always)]
    pub fn contains(&self, paddr: u64, len: u64) -> bool {
        // One subtraction and compare: wraps to a huge offset below base.
        let off = paddr.wrapping_sub(self.base);
        off < self.bytes.len() as u64 && len <= self.bytes.len() as u64 - off
    }
    /// Host address of RAM's first byte, for translated code.
    pub(crate) fn host_ptr(&mut self) -> *mut u8 {
        self.bytes.as_mut_ptr()
    }
    /// The whole of RAM (for digests and snapshots).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BusFault> {
        let off = self.offset(paddr, buf.len() as u64)?;
        buf.copy_from_slice(&self.bytes[off..off + buf.len()]);
        Ok(())
    }
    pub fn write(&mut self, paddr: u64, data: &[u8]) -> Result<(), BusFault> {
        self.copy_in(paddr, data)?;
        self.host_generation += 1;
        Ok(())
    }
    /// Copy `data` to `paddr` without any code-coherence bookkeeping (the
    /// caller does it); returns the RAM offset written.
    pub(crate) fn copy_in(&mut self, paddr: u64, data: &[u8]) -> Result<usize, BusFault> {
        let off = self.offset(paddr, data.len() as u64)?;
        self.bytes[off..off + data.len()].copy_from_slice(data);
        self.mark_dirty(off, data.len());
        Ok(off)
    }
    /// Replace the whole of RAM (snapshot restore). `data.len()` must equal `size()`.
    pub fn restore_bytes(&mut self, data: &[u8]) -> Result<(), BusFault> {
        if data.len() != self.bytes.len() {
            return Err(BusFault {
                addr: self.base + data.len() as u64,
            });
        }
        self.bytes.copy_from_slice(data);
        self.mark_dirty(0, data.len());
        self.host_generation += 1;
        Ok(())
    }

    fn offset(&self, paddr: u64, len: u64) -> Result<usize, BusFault> {
        if self.contains(paddr, len) {
            Ok((paddr - self.base) as usize)
        } else {
            Err(BusFault { addr: paddr })
        }
    }

    /// Offset of a RAM access the caller has bounds-checked with `contains`.
    #[inline(always)]
    pub(crate) fn off(&self, paddr: u64) -> usize {
        (paddr - self.base) as usize
    }
    #[inline(always)]
    pub(crate) fn load_le(&self, off: usize, size: usize) -> u64 {
        let b = &self.bytes[off..off + size];
        match size {
            1 => u64::from(b[0]),
            2 => u64::from(u16::from_le_bytes([b[0], b[1]])),
            4 => u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            _ => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        }
    }
    #[inline(always)]
    pub(crate) fn load_u32(&self, off: usize) -> u32 {
        self.load_le(off, 4) as u32
    }
    #[inline(always)]
    pub(crate) fn store_le(&mut self, off: usize, size: usize, value: u64) {
        // Callers split accesses that cross a page.
        self.dirty[off >> PAGE_SHIFT].store(1, Ordering::Relaxed);
        let b = &mut self.bytes[off..off + size];
        match size {
            1 => b[0] = value as u8,
            2 => b.copy_from_slice(&(value as u16).to_le_bytes()),
            4 => b.copy_from_slice(&(value as u32).to_le_bytes()),
            _ => b.copy_from_slice(&value.to_le_bytes()),
        }
    }
}
