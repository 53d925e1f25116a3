//! virtio-balloon (virtio 1.x, device ID 5): the host sets a target of
//! pages (`num_pages`) for the guest to give back; the guest's driver
//! gives pages (the inflate queue) or takes them back (the deflate queue),
//! each buffer an array of 32-bit page frame numbers of 4 KiB pages, and
//! reports how many it holds (`actual`). No feature bits besides
//! `VERSION_1` are offered: no statistics queue, no free-page hinting, no
//! deflate-on-OOM (so Linux takes ballooned pages out of its total memory).
//!
//! Everything happens inside the machine, between two instructions, with
//! no request to the host: a queue is served when the guest notifies it,
//! and the target changes only through a logged input
//! ([`crate::Input::BalloonTarget`]), so a replay does exactly the same.
//!
//! Decisions (ARCHITECTURE.md, "The memory balloon"):
//! - A page given to the balloon is zeroed by the device, as QEMU's
//!   discarded pages read back as zero. It is deterministic, and the host
//!   then sees ballooned memory as zero pages, which a clone's stream does
//!   not send.
//! - The device keeps the set of pages it holds: a page given twice counts
//!   once, a page taken back that it does not hold, and a frame number
//!   outside RAM, are ignored (QEMU ignores them too).
//! - A driver reset (status 0) empties the balloon but keeps the host's
//!   target, which the next driver reads at probe.

use std::collections::BTreeSet;

use ftvm_cpu::Hart;
use serde::{Deserialize, Serialize};

use super::{INT_CONFIG, STATUS_DRIVER_OK, VirtioMmio, read_u32};

/// The balloon's page size: 4 KiB, whatever the guest's.
pub const BALLOON_PAGE_SIZE: u64 = 4096;
const PFN_SHIFT: u32 = 12;
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
/// Most frame numbers read from one buffer (Linux sends 256 at most); the
/// rest of a larger buffer is ignored.
const PFNS_PER_BUFFER_MAX: u32 = 1 << 16;

static ZERO_PAGE: [u8; BALLOON_PAGE_SIZE as usize] = [0; BALLOON_PAGE_SIZE as usize];

/// A balloon's state: part of snapshots and digests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Balloon {
    /// The host's target (config `num_pages`).
    num_pages: u32,
    /// What the driver says it holds (config `actual`).
    actual: u32,
    /// The configuration's generation: it changes with the host's target.
    generation: u32,
    /// The frame numbers of the pages the balloon holds.
    pages: BTreeSet<u32>,
}

/// What a balloon holds, for the host's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalloonInfo {
    /// The host's target, in 4 KiB pages.
    pub target_pages: u32,
    /// The pages the guest's driver reports it gave.
    pub actual_pages: u32,
    /// The pages the device holds (given and not taken back).
    pub held_pages: u32,
}

impl Balloon {
    pub(super) fn generation(&self) -> u32 {
        self.generation
    }

    /// After a driver reset: empty, with the host's target.
    pub(super) fn after_reset(self) -> Balloon {
        Balloon {
            num_pages: self.num_pages,
            generation: self.generation,
            ..Balloon::default()
        }
    }

    /// `struct virtio_balloon_config`: `num_pages`, `actual`, and the
    /// free-page-hint and poison words of features not offered.
    pub(super) fn config_load(&self, offset: u64) -> u32 {
        match offset {
            0 => self.num_pages,
            4 => self.actual,
            _ => 0,
        }
    }

    /// Only `actual` is the driver's to write.
    pub(super) fn config_store(&mut self, offset: u64, value: u32) {
        if offset == 4 {
            self.actual = value;
        }
    }

    /// Give page `pfn` to the balloon (zeroed) or take it back.
    fn page(&mut self, hart: &mut Hart, pfn: u32, inflate: bool) {
        let addr = u64::from(pfn) << PFN_SHIFT;
        let ram = hart.ram();
        if addr < ram.base() || addr + BALLOON_PAGE_SIZE > ram.base() + ram.size() {
            tracing::debug!(pfn, "balloon: a page outside RAM, ignored");
            return;
        }
        if inflate {
            if self.pages.insert(pfn) {
                // In RAM (checked above), so the write cannot fail.
                let _ = hart.dma_write(addr, &ZERO_PAGE);
            }
        } else if !self.pages.remove(&pfn) {
            tracing::debug!(pfn, "balloon: a page taken back that it does not hold");
        }
    }
}

impl VirtioMmio {
    /// Set a balloon's target (`num_pages`) and tell a running driver
    /// (the configuration-change interrupt). False if this is no balloon.
    pub fn set_balloon_target(&mut self, pages: u32) -> bool {
        let Some(balloon) = &mut self.balloon else {
            return false;
        };
        balloon.num_pages = pages;
        balloon.generation = balloon.generation.wrapping_add(1);
        if self.status & STATUS_DRIVER_OK != 0 {
            self.interrupt_status |= INT_CONFIG;
        }
        true
    }

    /// What a balloon holds; `None` if this is no balloon.
    pub fn balloon(&self) -> Option<BalloonInfo> {
        self.balloon.as_ref().map(|b| BalloonInfo {
            target_pages: b.num_pages,
            actual_pages: b.actual,
            held_pages: b.pages.len() as u32,
        })
    }

    /// Serve every buffer available on the inflate or deflate queue: each
    /// is used at once (nothing written), with an interrupt.
    pub(super) fn serve_balloon(&mut self, hart: &mut Hart, index: usize) {
        let inflate = match index {
            INFLATE => true,
            DEFLATE => false,
            _ => return,
        };
        while let Some((head, chain)) = self.pop(hart, index) {
            let Some(balloon) = self.balloon.as_mut() else {
                return;
            };
            for &(addr, len, writable) in &chain {
                if writable {
                    continue;
                }
                for i in 0..u64::from((len / 4).min(PFNS_PER_BUFFER_MAX)) {
                    let Some(pfn) = addr.checked_add(4 * i).and_then(|at| read_u32(hart, at))
                    else {
                        break;
                    };
                    balloon.page(hart, pfn, inflate);
                }
            }
            self.push_used(hart, index, head, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DESC_F_NEXT, DESC_F_WRITE, DeviceKind, IoRequest};
    use super::*;
    use ftvm_cpu::HartConfig;

    const RAM: u64 = 0x8000_0000;
    const RAM_SIZE: u64 = 1 << 20;

    fn hart() -> Hart {
        Hart::new(HartConfig {
            hart_id: 0,
            ram_base: RAM,
            ram_size: RAM_SIZE,
            insns_per_tick: 10,
        })
    }

    /// A driver's view of the device: queues 0 and 1 set up with rings of
    /// their own, DRIVER_OK, as Linux's virtio_balloon leaves it.
    struct Driver {
        dev: VirtioMmio,
        h: Hart,
        /// Buffers made available so far, per queue.
        avail: [u16; 2],
    }

    impl Driver {
        fn rings(queue: usize) -> (u64, u64, u64) {
            let base = RAM + 0x1_0000 * (queue as u64 + 1);
            (base, base + 0x1000, base + 0x2000)
        }

        fn new() -> Driver {
            let mut dev = VirtioMmio::new(DeviceKind::Balloon);
            for queue in 0..2 {
                let (desc, avail, used) = Driver::rings(queue);
                for (reg, value) in [
                    (0x030, queue as u32),
                    (0x038, 8),
                    (0x080, desc as u32),
                    (0x090, avail as u32),
                    (0x0a0, used as u32),
                    (0x044, 1),
                ] {
                    dev.store(reg, value);
                }
            }
            dev.store(0x070, 15);
            Driver {
                dev,
                h: hart(),
                avail: [0; 2],
            }
        }

        /// Put `pfns` in one buffer on `queue` and notify.
        fn send(&mut self, queue: usize, pfns: &[u32]) {
            let (desc, avail, _) = Driver::rings(queue);
            let slot = self.avail[queue] % 8;
            let buffer = RAM + 0x4_0000 + 0x1_0000 * queue as u64 + 0x1000 * u64::from(slot);
            let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
            let h = &mut self.h;
            h.dma_write(buffer, &bytes).expect("ram");
            let at = desc + 16 * u64::from(slot);
            h.dma_write(at, &buffer.to_le_bytes()).expect("ram");
            h.dma_write(at + 8, &(bytes.len() as u32).to_le_bytes())
                .expect("ram");
            h.dma_write(at + 12, &0u16.to_le_bytes()).expect("ram");
            h.dma_write(avail + 4 + 2 * u64::from(slot), &slot.to_le_bytes())
                .expect("ram");
            self.avail[queue] += 1;
            h.dma_write(avail + 2, &self.avail[queue].to_le_bytes())
                .expect("ram");
            self.dev.store(0x050, queue as u32);
            let (mut next_id, mut out) = (0, Vec::new());
            self.dev.process(h, &mut next_id, &mut out);
            assert_eq!(out, Vec::<IoRequest>::new(), "nothing for the host");
        }

        fn used_idx(&self, queue: usize) -> u16 {
            let mut b = [0u8; 2];
            self.h
                .ram()
                .read(Driver::rings(queue).2 + 2, &mut b)
                .expect("ram");
            u16::from_le_bytes(b)
        }

        fn held(&self) -> u32 {
            self.dev.balloon().expect("a balloon").held_pages
        }
    }

    fn pfn(offset: u64) -> u32 {
        ((RAM + offset) >> PFN_SHIFT) as u32
    }

    #[test]
    fn config_space_target_actual_and_the_config_interrupt() {
        let mut dev = VirtioMmio::new(DeviceKind::Balloon);
        assert_eq!(dev.load(0x008), 5, "device ID");
        dev.store(0x014, 1);
        assert_eq!(dev.load(0x010), 1, "VERSION_1 only");
        dev.store(0x014, 0);
        assert_eq!(dev.load(0x010), 0, "no balloon feature bits");
        dev.store(0x030, 1);
        assert_eq!(dev.load(0x034), u32::from(super::super::QUEUE_MAX));
        dev.store(0x030, 2);
        assert_eq!(dev.load(0x034), 0, "two queues only");
        // Before the driver is up: the target is there, no interrupt.
        assert!(dev.set_balloon_target(300));
        assert_eq!(dev.load(0x100), 300, "num_pages");
        assert!(!dev.irq_level());
        let generation = dev.load(0x0fc);
        dev.store(0x070, 15);
        assert!(dev.set_balloon_target(512));
        assert_ne!(dev.load(0x0fc), generation, "a new generation");
        assert_eq!(dev.load(0x060), INT_CONFIG, "configuration changed");
        dev.store(0x064, INT_CONFIG);
        assert!(!dev.irq_level());
        // The driver reports; num_pages is the host's, not the driver's.
        dev.store(0x104, 256);
        dev.store(0x100, 7);
        assert_eq!((dev.load(0x100), dev.load(0x104)), (512, 256));
        assert_eq!((dev.load(0x108), dev.load(0x10c)), (0, 0));
        assert_eq!(
            dev.balloon(),
            Some(BalloonInfo {
                target_pages: 512,
                actual_pages: 256,
                held_pages: 0
            })
        );
        assert!(!VirtioMmio::new(DeviceKind::Entropy).set_balloon_target(1));
        assert_eq!(VirtioMmio::new(DeviceKind::Entropy).balloon(), None);
    }

    #[test]
    fn inflate_zeroes_and_holds_pages_deflate_gives_them_back() {
        let mut d = Driver::new();
        let page = 0xC_0000;
        d.h.dma_write(RAM + page, &[0xab; 4096]).expect("ram");
        d.h.dma_write(RAM + page + 4096, &[0xcd; 4096])
            .expect("ram");
        // Two pages, one of them twice, one outside RAM, one below it.
        d.send(
            INFLATE,
            &[pfn(page), pfn(page + 4096), pfn(page), pfn(RAM_SIZE), 7],
        );
        assert_eq!(d.held(), 2);
        assert_eq!(d.used_idx(INFLATE), 1);
        assert_eq!(d.dev.load(0x060), 1, "a used buffer");
        let mut buf = vec![1u8; 8192];
        d.h.ram().read(RAM + page, &mut buf).expect("ram");
        assert!(buf.iter().all(|&b| b == 0), "ballooned pages read as zero");
        // The page after them is untouched.
        d.h.dma_write(RAM + page + 8192, &[0xee; 4]).expect("ram");
        d.send(DEFLATE, &[pfn(page), pfn(page + 8192)]);
        assert_eq!(d.held(), 1, "a page it does not hold is ignored");
        assert_eq!(d.used_idx(DEFLATE), 1);
        d.h.ram()
            .read(RAM + page + 8192, &mut buf[..4])
            .expect("ram");
        assert_eq!(&buf[..4], &[0xee; 4], "deflate writes nothing");
        d.send(DEFLATE, &[pfn(page + 4096)]);
        assert_eq!(d.held(), 0);
        assert_eq!(d.used_idx(DEFLATE), 2);
    }

    #[test]
    fn a_driver_reset_empties_the_balloon_and_keeps_the_target() {
        let mut d = Driver::new();
        assert!(d.dev.set_balloon_target(64));
        d.send(INFLATE, &[pfn(0xC_0000)]);
        d.dev.store(0x104, 1);
        d.dev.store(0x070, 0);
        assert_eq!(
            d.dev.balloon(),
            Some(BalloonInfo {
                target_pages: 64,
                actual_pages: 0,
                held_pages: 0
            })
        );
        assert_eq!(d.dev.load(0x070), 0, "reset");
    }

    #[test]
    fn writable_and_oversized_buffers_do_not_hurt() {
        let mut d = Driver::new();
        // A descriptor chain with a writable buffer and a huge length.
        let (desc, avail, _) = Driver::rings(INFLATE);
        let h = &mut d.h;
        let list = RAM + 0x9_0000;
        h.dma_write(list, &pfn(0xC_0000).to_le_bytes())
            .expect("ram");
        for (i, (addr, len, flags)) in [(list, u32::MAX, DESC_F_NEXT), (list, 4, DESC_F_WRITE)]
            .into_iter()
            .enumerate()
        {
            let at = desc + 16 * i as u64;
            h.dma_write(at, &addr.to_le_bytes()).expect("ram");
            h.dma_write(at + 8, &len.to_le_bytes()).expect("ram");
            h.dma_write(at + 12, &flags.to_le_bytes()).expect("ram");
            h.dma_write(at + 14, &1u16.to_le_bytes()).expect("ram");
        }
        h.dma_write(avail + 4, &0u16.to_le_bytes()).expect("ram");
        h.dma_write(avail + 2, &1u16.to_le_bytes()).expect("ram");
        d.dev.store(0x050, 0);
        let (mut next_id, mut out) = (0, Vec::new());
        d.dev.process(&mut d.h, &mut next_id, &mut out);
        assert!(out.is_empty());
        assert_eq!(d.used_idx(INFLATE), 1, "used all the same");
        assert!(d.held() >= 1);
    }

    #[test]
    fn the_state_survives_serialisation() {
        let mut d = Driver::new();
        assert!(d.dev.set_balloon_target(3));
        d.send(INFLATE, &[pfn(0xC_0000), pfn(0xD_0000)]);
        d.dev.store(0x104, 2);
        let bytes = postcard::to_stdvec(&d.dev).expect("serialise");
        let back: VirtioMmio = postcard::from_bytes(&bytes).expect("deserialise");
        assert_eq!(back, d.dev);
        assert_eq!(back.balloon(), d.dev.balloon());
        assert_eq!(back.balloon().map(|b| b.held_pages), Some(2));
    }
}
