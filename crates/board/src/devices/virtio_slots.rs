use serde::{Deserialize, Serialize};

use super::{BusCtx, MmioDevice};
use crate::BoardError;
use crate::virtio::{DeviceKind, VirtioMmio};

/// The eight virtio-mmio slots of `virt`, as one window on the bus. QEMU
/// fills them from slot 7 down; an empty slot answers with the virtio
/// magic and device ID 0 ("no device"), as QEMU's do, so a guest probing
/// it finds nothing.
///
/// The slots go behind [`MmioDevice`] like every other device, so that
/// the bus has a single decode path and the slots' access rules live here
/// rather than in the bus. The virtio transport and device models stay in
/// [`crate::virtio`]; this is only their place on the bus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// Snapshots hold the slots as the plain list they were before this type.
#[serde(transparent)]
pub struct VirtioSlots(Vec<Option<VirtioMmio>>);

impl VirtioSlots {
    pub const BASE: u64 = 0x1000_1000;
    pub const SLOT_SIZE: u64 = 0x1000;
    pub const SLOTS: u64 = 8;
    /// PLIC source of slot 0; slot `n` has source `FIRST_IRQ + n`.
    pub const FIRST_IRQ: u32 = 1;

    /// Place the devices in slots 7, 6, ... (QEMU's order).
    pub fn new(kinds: &[DeviceKind]) -> Result<VirtioSlots, BoardError> {
        if kinds.len() > Self::SLOTS as usize {
            return Err(BoardError::Config(format!(
                "at most {} virtio devices, not {}",
                Self::SLOTS,
                kinds.len()
            )));
        }
        let mut slots: Vec<Option<VirtioMmio>> = vec![None; Self::SLOTS as usize];
        for (i, kind) in kinds.iter().enumerate() {
            slots[Self::SLOTS as usize - 1 - i] = Some(VirtioMmio::new(kind.clone()));
        }
        Ok(VirtioSlots(slots))
    }

    /// The PLIC source and interrupt level of each filled slot.
    pub fn irq_levels(&self) -> impl Iterator<Item = (usize, bool)> + '_ {
        self.0.iter().enumerate().filter_map(|(slot, dev)| {
            let dev = dev.as_ref()?;
            Some((Self::FIRST_IRQ as usize + slot, dev.irq_level()))
        })
    }

    /// The devices, slot 0 first.
    pub fn devices_mut(&mut self) -> impl Iterator<Item = &mut VirtioMmio> {
        self.0.iter_mut().flatten()
    }

    /// The devices, slot 0 first.
    pub fn devices(&self) -> impl Iterator<Item = &VirtioMmio> {
        self.0.iter().flatten()
    }

    fn empty_slot_load(offset: u64) -> u64 {
        match offset {
            0x000 => 0x7472_6976, // "virt"
            0x004 => 2,           // version: modern
            0x00c => 0x554d_4551, // vendor "QEMU"
            _ => 0,
        }
    }

    fn slot(&mut self, offset: u64) -> (Option<&mut VirtioMmio>, u64) {
        let slot = (offset / Self::SLOT_SIZE) as usize;
        let dev = self.0.get_mut(slot).and_then(Option::as_mut);
        (dev, offset % Self::SLOT_SIZE)
    }
}

/// Registers are 32-bit; the config space (0x100 on) may also be read in
/// bytes and halves. Stores of other sizes, and to empty slots, are
/// ignored.
impl MmioDevice for VirtioSlots {
    fn window(&self) -> (u64, u64) {
        (Self::BASE, Self::SLOTS * Self::SLOT_SIZE)
    }

    fn load(&mut self, offset: u64, size: u8, _ctx: &mut BusCtx) -> Option<u64> {
        let (dev, offset) = self.slot(offset);
        let (aligned, shift) = (offset & !3, 8 * (offset & 3));
        match dev {
            Some(dev) if size == 4 && offset & 3 == 0 => Some(u64::from(dev.load(offset))),
            Some(dev) if offset >= 0x100 && size < 4 && (offset & 3) + u64::from(size) <= 4 => {
                let mask = (1u64 << (8 * u64::from(size))) - 1;
                Some((u64::from(dev.load(aligned)) >> shift) & mask)
            }
            None if size == 4 => Some(Self::empty_slot_load(offset)),
            _ => None,
        }
    }

    fn store(&mut self, offset: u64, size: u8, value: u64, _ctx: &mut BusCtx) -> Option<()> {
        if let (Some(dev), offset) = self.slot(offset) {
            if size == 4 {
                dev.store(offset, value as u32);
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fill_slots_from_7_down_and_empty_slots_say_so() {
        let mut slots = VirtioSlots::new(&[DeviceKind::Entropy]).expect("one device");
        let ctx = &mut BusCtx::at_mtime(0);
        let slot = |n: u64| n * VirtioSlots::SLOT_SIZE;
        assert_eq!(slots.load(slot(7) + 0x008, 4, ctx), Some(4), "entropy");
        assert_eq!(slots.load(slot(6) + 0x008, 4, ctx), Some(0), "no device");
        assert_eq!(slots.load(slot(6), 4, ctx), Some(0x7472_6976), "magic");
        assert_eq!(slots.load(slot(6), 2, ctx), None);
        assert_eq!(slots.irq_levels().collect::<Vec<_>>(), [(8, false)]);
        assert!(VirtioSlots::new(&vec![DeviceKind::Entropy; 9]).is_err());
    }

    #[test]
    fn config_space_reads_in_bytes_and_halves() {
        let mac = [1, 2, 3, 4, 5, 6];
        let mut slots =
            VirtioSlots::new(&[DeviceKind::Net { mac, mtu: 1500 }]).expect("one device");
        let ctx = &mut BusCtx::at_mtime(0);
        let config = 7 * VirtioSlots::SLOT_SIZE + 0x100;
        assert_eq!(slots.load(config + 1, 1, ctx), Some(2));
        assert_eq!(slots.load(config + 4, 2, ctx), Some(0x0605));
        assert_eq!(slots.load(config + 10, 2, ctx), Some(1500), "the MTU");
        assert_eq!(slots.load(config + 3, 2, ctx), None, "crosses a word");
        assert_eq!(
            slots.load(config - 0x100 + 1, 1, ctx),
            None,
            "registers are 32-bit"
        );
    }
}
