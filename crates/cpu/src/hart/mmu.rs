//! Guest memory as instructions see it: Sv39 translation with the TLB in
//! front of the page-table walk, and loads and stores that go to RAM
//! directly or to the [`Bus`] (MMIO), split bytewise where they are
//! misaligned or cross a page.

use super::trap::{Trap, cause};
use super::{Hart, PAGE_MASK, PAGE_SIZE, SavedTlbEntry, mpp_privilege, sext};
use crate::csr::status;
use crate::ram::PAGE_SHIFT;
use crate::{Bus, Exit, Privilege};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Access {
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

/// `repr(C)`: translated code reads entries as two u64 words.
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct TlbEntry {
    /// Virtual page | access key; `u64::MAX` when empty.
    tag: u64,
    /// Physical page address.
    ppage: u64,
}

pub(super) const TLB_ENTRIES: usize = 256;
pub(super) const EMPTY_TLB: TlbEntry = TlbEntry {
    tag: u64::MAX,
    ppage: 0,
};

/// Address spaces the TLB tells apart at once: entries carry the low 8 bits
/// of their ASID (tag bits 11:4, below the page number), and
/// [`Hart::tlb_owner`] says which full 16-bit ASID those bits stand for.
pub(super) const TLB_CONTEXTS: usize = 256;
/// No ASID owns a context's entries (there are none).
pub(super) const NO_OWNER: u32 = u32::MAX;
const ASID_SHIFT: u32 = 44;
/// `satp.ASID`: 16 bits, as on QEMU's `virt`.
const ASID_MASK: u64 = 0xffff;

/// The ASID field of a `satp` value.
fn satp_asid(satp: u64) -> u64 {
    (satp >> ASID_SHIFT) & ASID_MASK
}

/// A TLB entry's context: the low bits of its ASID.
fn tlb_context(asid: u64) -> usize {
    asid as usize % TLB_CONTEXTS
}

/// The context of a (valid) TLB entry, from its tag's bits 11:4.
fn tag_context(tag: u64) -> usize {
    (tag >> 4) as usize % TLB_CONTEXTS
}

/// The key of the translator's TLB entries for accesses without
/// translation (M-mode, or a bare `satp`): effective privilege 2, which no
/// [`tlb_key`] has (privilege 2 does not exist, and M-mode never
/// translates).
pub(super) const DIRECT_KEY: u64 = 2;
/// A key that no TLB entry of either kind has: the translator's stores
/// use it while all of them must bail.
pub(super) const NO_KEY: u64 = 6;

/// The low 12 bits of a TLB tag: effective privilege (bits 1:0), SUM and
/// MXR (bits 3:2; loads and stores only, as fetches ignore them), the
/// TLB context (bits 11:4).
pub(super) fn tlb_key(satp: u64, mstatus: u64, prv: Privilege, access: Access) -> u64 {
    let status_bits = if access == Access::Fetch {
        0
    } else {
        (mstatus >> 16) & 0xc
    };
    prv as u64 | status_bits | (tlb_context(satp_asid(satp)) as u64) << 4
}

impl Hart {
    /// Forget every translation (`sfence.vma` with no operands, reset).
    pub(super) fn flush_tlb(&mut self) {
        self.clear_tlb();
        self.claim_tlb_context();
    }

    /// Empty every entry and every context's owner.
    fn clear_tlb(&mut self) {
        for tlb in self.tlb.iter_mut() {
            tlb.fill(EMPTY_TLB);
        }
        self.tlb_owner.fill(NO_OWNER);
        self.translator.forget_tlb();
    }

    /// Empty entry `slot` of the TLB for `access`, with the translator's
    /// entry standing for it.
    fn drop_tlb_entry(&mut self, access: usize, slot: usize) {
        self.tlb[access][slot] = EMPTY_TLB;
        self.translator.forget_tlb_entry(access, slot);
    }

    /// The physical page the TLB for `access` holds for `vaddr` under
    /// `key`, without a walk.
    pub(super) fn tlb_hit(&self, access: Access, vaddr: u64, key: u64) -> Option<u64> {
        let slot = ((vaddr >> PAGE_SHIFT) as usize) % TLB_ENTRIES;
        let entry = self.tlb[access as usize][slot];
        (entry.tag == (vaddr & !PAGE_MASK) | key).then_some(entry.ppage)
    }

    /// The TLB's valid entries and context owners, for [`Hart::state`].
    pub(super) fn saved_tlb(&self) -> (Vec<SavedTlbEntry>, Vec<(u8, u16)>) {
        let mut entries = Vec::new();
        for (access, (tlb, levels)) in self.tlb.iter().zip(self.tlb_level.iter()).enumerate() {
            for (slot, (entry, &level)) in tlb.iter().zip(levels.iter()).enumerate() {
                if entry.tag != u64::MAX {
                    entries.push(SavedTlbEntry {
                        index: (access * TLB_ENTRIES + slot) as u16,
                        tag: entry.tag,
                        ppage: entry.ppage,
                        level,
                    });
                }
            }
        }
        let owners = (self.tlb_owner.iter().enumerate())
            .filter(|&(_, &owner)| owner != NO_OWNER)
            .map(|(context, &owner)| (context as u8, owner as u16))
            .collect();
        (entries, owners)
    }

    /// Replace the TLB with a saved one (see [`Hart::restore`]). Entries
    /// out of range, or of a context no ASID owns, are dropped: a TLB may
    /// always hold less.
    pub(super) fn restore_tlb(&mut self, entries: &[SavedTlbEntry], owners: &[(u8, u16)]) {
        self.clear_tlb();
        for &(context, asid) in owners {
            if tlb_context(u64::from(asid)) == usize::from(context) {
                self.tlb_owner[usize::from(context)] = u32::from(asid);
            }
        }
        for saved in entries {
            let (access, slot) = (
                usize::from(saved.index) / TLB_ENTRIES,
                usize::from(saved.index) % TLB_ENTRIES,
            );
            let context = tag_context(saved.tag);
            if access < 3 && saved.level < 3 && self.tlb_owner[context] != NO_OWNER {
                self.tlb[access][slot] = TlbEntry {
                    tag: saved.tag,
                    ppage: saved.ppage,
                };
                self.tlb_level[access][slot] = saved.level;
            }
        }
        self.claim_tlb_context();
    }

    /// Make the current ASID the owner of its TLB context. Entries another
    /// ASID with the same low bits left there must go, or the current one
    /// would see them; entries of other contexts stay, so switching back
    /// and forth between address spaces (Linux's context switch) keeps
    /// them.
    pub(super) fn claim_tlb_context(&mut self) {
        let asid = satp_asid(self.s.satp) as u32;
        let context = tlb_context(u64::from(asid));
        let owner = self.tlb_owner[context];
        if owner != asid {
            if owner != NO_OWNER {
                self.flush_tlb_context(context);
            }
            self.tlb_owner[context] = asid;
        }
        self.fetch_vpage = u64::MAX;
    }

    fn flush_tlb_context(&mut self, context: usize) {
        for access in 0..self.tlb.len() {
            for slot in 0..TLB_ENTRIES {
                let tag = self.tlb[access][slot].tag;
                if tag != u64::MAX && tag_context(tag) == context {
                    self.drop_tlb_entry(access, slot);
                }
            }
        }
    }

    /// `sfence.vma`: `vaddr` and `asid` are its operands when not `x0`.
    /// Flushing more than asked is always allowed: an ASID-only fence
    /// flushes its context (global mappings too), an address fence every
    /// entry covering the address, in every address space.
    pub(super) fn sfence_vma(&mut self, vaddr: Option<u64>, asid: Option<u64>) {
        match (vaddr, asid) {
            (None, None) => self.flush_tlb(),
            (None, Some(asid)) => {
                let asid = asid & ASID_MASK;
                let context = tlb_context(asid);
                if self.tlb_owner[context] == asid as u32 {
                    self.flush_tlb_context(context);
                }
            }
            (Some(vaddr), _) => {
                for access in 0..self.tlb.len() {
                    for slot in 0..TLB_ENTRIES {
                        // The entry caches one 4 KiB piece of a leaf of
                        // 4 KiB << (9 * level): it covers `vaddr` if that
                        // lies in the same leaf.
                        let tag = self.tlb[access][slot].tag;
                        let span_shift = PAGE_SHIFT + 9 * u32::from(self.tlb_level[access][slot]);
                        if tag != u64::MAX && (tag ^ vaddr) >> span_shift == 0 {
                            self.drop_tlb_entry(access, slot);
                        }
                    }
                }
            }
        }
        self.fetch_vpage = u64::MAX;
    }

    /// The physical page the fetch TLB maps `vaddr`'s page to under TLB
    /// key `key`, if it holds that page for that key.
    pub(super) fn fetch_tlb_page(&self, vaddr: u64, key: u64) -> Option<u64> {
        let slot = ((vaddr >> PAGE_SHIFT) as usize) % TLB_ENTRIES;
        let entry = self.tlb[Access::Fetch as usize][slot];
        (entry.tag == (vaddr & !PAGE_MASK) | key).then_some(entry.ppage)
    }

    pub(super) fn effective_privilege(&self, access: Access) -> Privilege {
        if access != Access::Fetch && self.s.mstatus & status::MPRV != 0 {
            mpp_privilege(self.s.mstatus)
        } else {
            self.s.privilege
        }
    }

    /// Virtual to physical, with the TLB in front of the Sv39 walk.
    #[inline(always)]
    pub(super) fn translate(&mut self, vaddr: u64, access: Access) -> Result<u64, Trap> {
        let prv = self.effective_privilege(access);
        if prv == Privilege::Machine || self.s.satp >> 60 == 0 {
            return Ok(vaddr);
        }
        let key = tlb_key(self.s.satp, self.s.mstatus, prv, access);
        let tag = (vaddr & !PAGE_MASK) | key;
        let slot = ((vaddr >> PAGE_SHIFT) as usize) % TLB_ENTRIES;
        let entry = self.tlb[access as usize][slot];
        if entry.tag == tag {
            return Ok(entry.ppage | (vaddr & PAGE_MASK));
        }
        let (ppage, level) = self.walk(vaddr, access, prv)?;
        self.tlb[access as usize][slot] = TlbEntry { tag, ppage };
        self.tlb_level[access as usize][slot] = level;
        self.translator.forget_tlb_entry(access as usize, slot);
        Ok(ppage | (vaddr & PAGE_MASK))
    }

    /// Sv39 page-table walk with hardware A/D updates; returns the physical
    /// page of `vaddr` and the level of its leaf (0: 4 KiB, 1: 2 MiB,
    /// 2: 1 GiB).
    fn walk(&mut self, vaddr: u64, access: Access, prv: Privilege) -> Result<(u64, u8), Trap> {
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
            return Ok(((ppn | vpn_low) << PAGE_SHIFT, level as u8));
        }
        Err(page_fault)
    }

    #[inline(always)]
    pub(super) fn load(&mut self, bus: &mut dyn Bus, vaddr: u64, size: u64) -> Result<u64, Trap> {
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

    fn load_bytewise(&mut self, bus: &mut dyn Bus, vaddr: u64, size: u64) -> Result<u64, Trap> {
        let mut value = 0;
        for i in 0..size {
            let byte = self.load(bus, vaddr.wrapping_add(i), 1)?;
            value |= byte << (8 * i);
        }
        Ok(value)
    }

    #[inline(always)]
    pub(super) fn store(
        &mut self,
        bus: &mut dyn Bus,
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

    fn store_bytewise(
        &mut self,
        bus: &mut dyn Bus,
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
}

#[cfg(test)]
mod tests {
    //! What the TLB keeps and drops. A stale entry is visible to software
    //! that changes a PTE without `sfence.vma`, which is how these tests
    //! tell a kept entry from a new walk.
    use super::*;
    use crate::HartConfig;

    const BASE: u64 = 0x8000_0000;
    const VA: u64 = 0x4000_0000; // root[1] -> l1 -> l0[0]
    const PAGE_A: u64 = BASE + 0x8000;
    const PAGE_B: u64 = BASE + 0x9000;
    const LEAF: u64 = 0xcf; // V R W X A D

    struct Space {
        root: u64,
        l1: u64,
        l0: u64,
    }

    fn pte(paddr: u64, flags: u64) -> u64 {
        ((paddr >> 12) << 10) | flags
    }

    fn write(h: &mut Hart, at: u64, value: u64) {
        h.ram.write(at, &value.to_le_bytes()).expect("in RAM");
    }

    /// An address space whose `VA` maps `page` with a 4 KiB leaf.
    fn space(h: &mut Hart, tables: u64, page: u64) -> Space {
        let s = Space {
            root: tables,
            l1: tables + 0x1000,
            l0: tables + 0x2000,
        };
        write(h, s.root + 8, pte(s.l1, 1));
        write(h, s.l1, pte(s.l0, 1));
        write(h, s.l0, pte(page, LEAF));
        s
    }

    fn hart() -> Hart {
        let mut h = Hart::new(HartConfig {
            hart_id: 0,
            ram_base: BASE,
            ram_size: 1 << 20,
            insns_per_tick: 10,
        });
        h.s.privilege = Privilege::Supervisor;
        h
    }

    fn set_satp(h: &mut Hart, space: &Space, asid: u64) {
        h.s.satp = (8 << 60) | (asid << 44) | (space.root >> 12);
        h.claim_tlb_context();
    }

    fn load_page(h: &mut Hart, vaddr: u64) -> u64 {
        h.translate(vaddr, Access::Load).expect("mapped") & !PAGE_MASK
    }

    #[test]
    fn switching_address_spaces_keeps_each_ones_entries() {
        let mut h = hart();
        let a = space(&mut h, BASE + 0x10000, PAGE_A);
        let b = space(&mut h, BASE + 0x20000, PAGE_B);
        // B also maps the next page (the TLB is direct-mapped by page, so
        // B's use of VA itself would evict A's entry).
        write(&mut h, b.l0 + 8, pte(PAGE_B, LEAF));
        set_satp(&mut h, &a, 1);
        assert_eq!(load_page(&mut h, VA), PAGE_A);
        set_satp(&mut h, &b, 2);
        assert_eq!(load_page(&mut h, VA + 0x1000), PAGE_B);
        // A's entry outlives the switch: a PTE change without a fence
        // does not show.
        write(&mut h, a.l0, pte(PAGE_B, LEAF));
        set_satp(&mut h, &a, 1);
        assert_eq!(load_page(&mut h, VA), PAGE_A, "kept across the switch");
        h.sfence_vma(None, Some(2));
        assert_eq!(load_page(&mut h, VA), PAGE_A, "another ASID's fence");
        h.sfence_vma(None, Some(1));
        assert_eq!(load_page(&mut h, VA), PAGE_B, "its own ASID's fence");
    }

    #[test]
    fn asids_sharing_low_bits_never_see_each_others_entries() {
        let mut h = hart();
        let a = space(&mut h, BASE + 0x10000, PAGE_A);
        let b = space(&mut h, BASE + 0x20000, PAGE_B);
        set_satp(&mut h, &a, 1);
        assert_eq!(load_page(&mut h, VA), PAGE_A);
        set_satp(&mut h, &b, 1 + TLB_CONTEXTS as u64);
        assert_eq!(load_page(&mut h, VA), PAGE_B);
        set_satp(&mut h, &a, 1);
        assert_eq!(load_page(&mut h, VA), PAGE_A);
    }

    #[test]
    fn an_address_fence_drops_every_piece_of_a_superpage_covering_it() {
        let mut h = hart();
        let a = space(&mut h, BASE + 0x10000, PAGE_A);
        // l1[1]: VA + 2 MiB is a 2 MiB leaf at BASE.
        write(&mut h, a.l1 + 8, pte(BASE, LEAF));
        set_satp(&mut h, &a, 1);
        let superpage = VA + (2 << 20);
        assert_eq!(load_page(&mut h, superpage + 0x3000), BASE + 0x3000);
        assert_eq!(load_page(&mut h, VA), PAGE_A);
        write(&mut h, a.l1 + 8, pte(BASE + (2 << 20), LEAF));
        write(&mut h, a.l0, pte(PAGE_B, LEAF));
        // A fence of another address in the superpage drops the cached
        // piece at +0x3000, not the 4 KiB page outside it.
        h.sfence_vma(Some(superpage + 0x1f_f000), None);
        assert_eq!(
            load_page(&mut h, superpage + 0x3000),
            BASE + (2 << 20) + 0x3000
        );
        assert_eq!(load_page(&mut h, VA), PAGE_A, "outside the fenced leaf");
    }

    #[test]
    fn status_writes_keep_entries_and_a_restored_state_has_them() {
        let mut h = hart();
        let a = space(&mut h, BASE + 0x10000, PAGE_A);
        set_satp(&mut h, &a, 1);
        assert_eq!(load_page(&mut h, VA), PAGE_A);
        write(&mut h, a.l0, pte(PAGE_B, LEAF));
        // sstatus.SIE toggles (Linux's interrupt enable) flush nothing.
        let sie = status::SIE;
        h.csr_access(0, crate::csr::SSTATUS, Some(sie))
            .expect("S may write sstatus");
        h.csr_access(0, crate::csr::SSTATUS, Some(0))
            .expect("S may write sstatus");
        assert_eq!(load_page(&mut h, VA), PAGE_A);
        // A copy restored from the state keeps the stale entry too, and
        // so continues exactly as the original.
        let mut copy = hart();
        copy.ram.restore_bytes(h.ram.bytes()).expect("same size");
        copy.restore(&h.state());
        assert_eq!(copy.state(), h.state());
        assert_eq!(load_page(&mut copy, VA), PAGE_A);
        h.sfence_vma(Some(VA), None);
        assert_eq!(load_page(&mut h, VA), PAGE_B);
    }
}
