//! Guest memory as instructions see it: Sv39 translation with the TLB in
//! front of the page-table walk, and loads and stores that go to RAM
//! directly or to the [`Bus`] (MMIO), split bytewise where they are
//! misaligned or cross a page.

use super::trap::{Trap, cause};
use super::{Hart, PAGE_MASK, PAGE_SIZE, mpp_privilege, sext};
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

impl Hart {
    pub(super) fn flush_tlb(&mut self) {
        for tlb in self.tlb.iter_mut() {
            tlb.fill(EMPTY_TLB);
        }
        self.fetch_vpage = u64::MAX;
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
        let key = (prv as u64) | ((self.s.mstatus >> 16) & 0xc); // SUM, MXR -> bits 2, 3
        let tag = (vaddr & !PAGE_MASK) | key;
        let slot = ((vaddr >> PAGE_SHIFT) as usize) % TLB_ENTRIES;
        let entry = self.tlb[access as usize][slot];
        if entry.tag == tag {
            return Ok(entry.ppage | (vaddr & PAGE_MASK));
        }
        let ppage = self.walk(vaddr, access, prv)?;
        self.tlb[access as usize][slot] = TlbEntry { tag, ppage };
        Ok(ppage | (vaddr & PAGE_MASK))
    }

    /// Sv39 page-table walk with hardware A/D updates; returns the physical
    /// page of `vaddr`.
    fn walk(&mut self, vaddr: u64, access: Access, prv: Privilege) -> Result<u64, Trap> {
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
            return Ok((ppn | vpn_low) << PAGE_SHIFT);
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
