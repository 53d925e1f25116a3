//! The digest of guest RAM: a two-level hash tree over its 4 KiB pages.
//! A running machine rehashes only the pages written since its last
//! digest (the hart marks them), so the once-a-second checkpoint of an FT
//! pair costs what the guest changed, not what it has; a snapshot, which
//! has no such record, hashes every page to the same root.

use ftvm_cpu::Ram;

const PAGE: usize = 4096;
/// Pages per group: the groups' hashes are what the root hashes, so the
/// root costs 32 bytes per 2 MiB of RAM.
const GROUP_PAGES: usize = 512;

type Hash = [u8; 32];

fn hash_page(page: &[u8]) -> Hash {
    *blake3::hash(page).as_bytes()
}

/// One update of the whole list: BLAKE3 hashes a long input's chunks in
/// parallel (SIMD), which 32-byte updates would not let it do.
fn hash_list(hashes: &[Hash]) -> Hash {
    *blake3::hash(hashes.as_flattened()).as_bytes()
}

/// The root of RAM holding `bytes`, computed from nothing.
pub(super) fn ram_root(bytes: &[u8]) -> Hash {
    let pages: Vec<Hash> = bytes.chunks(PAGE).map(hash_page).collect();
    let groups: Vec<Hash> = pages.chunks(GROUP_PAGES).map(hash_list).collect();
    hash_list(&groups)
}

/// The tree of one machine's RAM as of its last digest.
pub(super) struct RamDigest {
    pages: Vec<Hash>,
    groups: Vec<Hash>,
    stale_groups: Vec<bool>,
}

impl RamDigest {
    pub(super) fn new(ram_size: u64) -> Self {
        let pages = (ram_size as usize).div_ceil(PAGE);
        let groups = pages.div_ceil(GROUP_PAGES);
        RamDigest {
            pages: vec![[0; 32]; pages],
            groups: vec![[0; 32]; groups],
            stale_groups: vec![false; groups],
        }
    }

    /// The root of `ram`, equal to [`ram_root`] of its bytes. Correct as
    /// long as this is the only reader of `ram`'s dirty pages, which start
    /// all dirty.
    pub(super) fn root(&mut self, ram: &Ram) -> Hash {
        let bytes = ram.bytes();
        ram.take_dirty_pages(|page| {
            let start = page * PAGE;
            self.pages[page] = hash_page(&bytes[start..(start + PAGE).min(bytes.len())]);
            self.stale_groups[page / GROUP_PAGES] = true;
        });
        for (group, stale) in self.stale_groups.iter_mut().enumerate() {
            if std::mem::take(stale) {
                let first = group * GROUP_PAGES;
                let last = (first + GROUP_PAGES).min(self.pages.len());
                self.groups[group] = hash_list(&self.pages[first..last]);
            }
        }
        hash_list(&self.groups)
    }
}
