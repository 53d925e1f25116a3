use serde::{Deserialize, Serialize};

use super::{BusCtx, MmioDevice};

/// PLIC with QEMU `virt`'s layout: 96 sources, two contexts for hart 0
/// (0 = M-mode -> MEIP, 1 = S-mode -> SEIP). Sources are level-triggered:
/// a source is pending while its line is high and it is not being served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plic {
    priority: Vec<u32>,
    level: Vec<bool>,
    claimed: Vec<bool>,
    enable: [[u32; 3]; 2],
    threshold: [u32; 2],
}

impl Plic {
    pub const BASE: u64 = 0x0c00_0000;
    pub const SIZE: u64 = 0x60_0000;
    pub const SOURCES: usize = 96;

    pub fn new() -> Self {
        Plic {
            priority: vec![0; Self::SOURCES],
            level: vec![false; Self::SOURCES],
            claimed: vec![false; Self::SOURCES],
            enable: [[0; 3]; 2],
            threshold: [0; 2],
        }
    }

    pub fn set_level(&mut self, source: usize, high: bool) {
        if (1..Self::SOURCES).contains(&source) {
            self.level[source] = high;
        }
    }

    fn pending(&self, source: usize) -> bool {
        self.level[source] && !self.claimed[source]
    }

    fn enabled(&self, context: usize, source: usize) -> bool {
        self.enable[context][source / 32] & (1 << (source % 32)) != 0
    }

    /// The best source a context would claim now: the highest priority
    /// above the threshold, the lowest source among equals. It runs after
    /// every MMIO access, so it visits only the sources the context
    /// enabled (a guest enables a handful of the 96).
    fn best(&self, context: usize) -> Option<usize> {
        let mut best: Option<(u32, usize)> = None;
        for (word, &enabled) in self.enable[context].iter().enumerate() {
            let mut bits = enabled;
            while bits != 0 {
                let source = word * 32 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if source == 0 || source >= Self::SOURCES {
                    continue;
                }
                let prio = self.priority[source];
                if self.pending(source)
                    && prio > self.threshold[context]
                    && best.is_none_or(|(p, _)| prio > p)
                {
                    best = Some((prio, source));
                }
            }
        }
        best.map(|(_, s)| s)
    }

    /// The interrupt line of a context (MEIP for 0, SEIP for 1).
    pub fn context_pending(&self, context: usize) -> bool {
        self.best(context).is_some()
    }

    fn claim(&mut self, context: usize) -> u32 {
        match self.best(context) {
            Some(source) => {
                self.claimed[source] = true;
                source as u32
            }
            None => 0,
        }
    }
}

/// Registers are 32-bit; other sizes fault.
impl MmioDevice for Plic {
    fn window(&self) -> (u64, u64) {
        (Self::BASE, Self::SIZE)
    }

    fn load(&mut self, offset: u64, size: u8, _ctx: &mut BusCtx) -> Option<u64> {
        if size != 4 {
            return None;
        }
        let word = (offset / 4) as usize;
        Some(u64::from(match offset {
            0..0x1000 => self.priority.get(word).copied().unwrap_or(0),
            0x1000..0x100c => {
                let base = (offset as usize - 0x1000) * 8;
                (0..32).fold(0, |acc, bit| {
                    acc | (u32::from(self.pending(base + bit)) << bit)
                })
            }
            0x2000..0x2100 => {
                let context = (offset as usize - 0x2000) / 0x80;
                let index = (offset as usize % 0x80) / 4;
                self.enable
                    .get(context)
                    .and_then(|c| c.get(index))
                    .copied()
                    .unwrap_or(0)
            }
            0x20_0000..0x20_2000 => {
                let context = (offset as usize - 0x20_0000) / 0x1000;
                match offset % 0x1000 {
                    0 => self.threshold[context],
                    4 => self.claim(context),
                    _ => 0,
                }
            }
            _ => 0,
        }))
    }

    fn store(&mut self, offset: u64, size: u8, value: u64, _ctx: &mut BusCtx) -> Option<()> {
        if size != 4 {
            return None;
        }
        let value = value as u32;
        let word = (offset / 4) as usize;
        match offset {
            0..0x1000 if (1..Self::SOURCES).contains(&word) => self.priority[word] = value & 7,
            0x2000..0x2100 => {
                let context = (offset as usize - 0x2000) / 0x80;
                let index = (offset as usize % 0x80) / 4;
                if let Some(slot) = self.enable.get_mut(context).and_then(|c| c.get_mut(index)) {
                    *slot = if index == 0 { value & !1 } else { value };
                }
            }
            0x20_0000..0x20_2000 => {
                let context = (offset as usize - 0x20_0000) / 0x1000;
                match offset % 0x1000 {
                    0 => self.threshold[context] = value & 7,
                    4 => {
                        let source = value as usize;
                        if (1..Self::SOURCES).contains(&source) && self.enabled(context, source) {
                            self.claimed[source] = false;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plic_claims_highest_priority_and_respects_threshold() {
        let mut plic = Plic::new();
        let ctx = &mut BusCtx::at_mtime(0);
        plic.store(4 * 10, 4, 1, ctx);
        plic.store(4 * 11, 4, 3, ctx);
        plic.store(0x2000, 4, (1 << 10) | (1 << 11), ctx);
        plic.set_level(10, true);
        plic.set_level(11, true);
        assert!(plic.context_pending(0));
        assert!(!plic.context_pending(1), "context 1 enabled nothing");
        assert_eq!(plic.load(0x20_0004, 4, ctx), Some(11));
        assert_eq!(plic.load(0x20_0004, 4, ctx), Some(10));
        assert_eq!(plic.load(0x20_0004, 4, ctx), Some(0), "both in service");
        plic.store(0x20_0004, 4, 11, ctx);
        assert!(plic.context_pending(0), "11 is still high after completion");
        plic.store(0x20_0000, 4, 3, ctx);
        assert!(!plic.context_pending(0), "threshold 3 masks priority 3");
        assert_eq!(plic.load(0x1000, 4, ctx), Some(1 << 11));
        assert_eq!(plic.load(0x1000, 8, ctx), None, "registers are 32-bit");
    }

    /// The best source as the spec says it, by looking at every source.
    fn best_by_scan(plic: &Plic, context: usize) -> Option<usize> {
        let mut best: Option<(u32, usize)> = None;
        for source in 1..Plic::SOURCES {
            let prio = plic.priority[source];
            if plic.pending(source)
                && plic.enabled(context, source)
                && prio > plic.threshold[context]
                && best.is_none_or(|(p, _)| prio > p)
            {
                best = Some((prio, source));
            }
        }
        best.map(|(_, s)| s)
    }

    proptest::proptest! {
        /// Visiting only the enabled sources picks what a scan of all 96
        /// picks, ties and thresholds included.
        #[test]
        fn the_best_source_is_the_one_a_full_scan_finds(
            priorities in proptest::collection::vec(0u32..4, Plic::SOURCES),
            levels in proptest::collection::vec(proptest::bool::ANY, Plic::SOURCES),
            claimed in proptest::collection::vec(proptest::bool::weighted(0.2), Plic::SOURCES),
            enable in proptest::array::uniform2(proptest::array::uniform3(proptest::num::u32::ANY)),
            threshold in proptest::array::uniform2(0u32..3),
        ) {
            let plic = Plic {
                priority: priorities,
                level: levels,
                claimed,
                enable,
                threshold,
            };
            for context in 0..2 {
                proptest::prop_assert_eq!(plic.best(context), best_by_scan(&plic, context));
            }
        }
    }
}
