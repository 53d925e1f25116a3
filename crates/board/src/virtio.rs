//! virtio-mmio (version 2) with split virtqueues, and the devices behind
//! it: block, entropy, network and the memory balloon (`balloon.rs`).
//!
//! Devices never touch the host. A guest's request becomes an [`IoRequest`]
//! that the machine's owner collects
//! ([`crate::Machine::take_io_requests`]), performs wherever it likes (a
//! disk file, the host's entropy source, a logged value on replay) and
//! answers with [`crate::Input::IoDone`] at an instruction boundary of its
//! choosing. Only then does the device write the result into guest memory
//! and raise its interrupt: I/O completions and the data they bring are
//! inputs of the machine like any other (ARCHITECTURE.md, "The input
//! boundary").
//!
//! Guest memory is read (requests, data to write) when the guest notifies
//! the queue and written when the completion is injected; both happen
//! between instructions.

use std::collections::{BTreeMap, VecDeque};

use ftvm_cpu::Hart;
use serde::{Deserialize, Serialize};

mod balloon;
mod checksum;

use balloon::Balloon;
pub use balloon::{BALLOON_PAGE_SIZE, BalloonInfo};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VENDOR: u32 = 0x554d_4551; // "QEMU"
const QUEUE_MAX: u16 = 256;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FAILED: u32 = 128;
/// InterruptStatus bits: a used buffer, a configuration change.
const INT_VRING: u32 = 1;
const INT_CONFIG: u32 = 2;

/// An Ethernet header, before the MTU's bytes.
const ETHERNET_HEADER: usize = 14;
/// Most frames, and bytes of them, a network card holds while the guest
/// has no receive buffer for them.
const RX_FIFO_FRAMES: usize = 256;
const RX_FIFO_BYTES: usize = 1 << 20;
/// Most entropy bytes one request gets.
const ENTROPY_MAX: u64 = 64 << 10;
/// Largest block request served (Linux sends at most a few hundred KiB).
const BLOCK_MAX_BYTES: u32 = 16 << 20;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// What a device asks of the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoRequest {
    /// Read `len` bytes of the disk from byte `offset`.
    BlockRead { id: u64, offset: u64, len: u32 },
    /// Write `data` to the disk at byte `offset` (an output of the VM).
    BlockWrite { id: u64, offset: u64, data: Vec<u8> },
    /// Make earlier writes durable.
    BlockFlush { id: u64 },
    /// `len` bytes of entropy.
    Entropy { id: u64, len: u32 },
    /// Send `frame` (an Ethernet frame) on the network (an output of the
    /// VM). Answered with the status only.
    NetTransmit { id: u64, frame: Vec<u8> },
    /// A request the device does not serve (out of range, an unknown
    /// type): the host answers [`IoStatus::Unsupported`]. It still goes
    /// through the host so that every completion is an input.
    Unsupported { id: u64 },
}

impl IoRequest {
    pub fn id(&self) -> u64 {
        match self {
            IoRequest::BlockRead { id, .. }
            | IoRequest::BlockWrite { id, .. }
            | IoRequest::BlockFlush { id }
            | IoRequest::Entropy { id, .. }
            | IoRequest::NetTransmit { id, .. }
            | IoRequest::Unsupported { id } => *id,
        }
    }
}

/// The device types ftvm has, with their virtio device IDs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceKind {
    /// A disk of `sectors` 512-byte sectors.
    Block {
        sectors: u64,
    },
    Entropy,
    /// A network card with this MAC address and MTU (the largest IP
    /// packet it sends or receives; ftvm-net's `--net` parsing bounds it
    /// by what its networks carry).
    Net {
        mac: [u8; 6],
        mtu: u16,
    },
    /// A memory balloon (virtio-balloon): the host sets a target of pages
    /// for the guest to give back, the guest reports what it gave. Last,
    /// so that logs and snapshots of machines without it keep their bytes.
    Balloon,
}

/// The virtio-net header that precedes every frame (with VERSION_1).
const NET_HEADER: usize = 12;
/// Its flags: the guest left the checksum for the card to finish; the
/// card checked the checksum of a frame it received.
const NET_HDR_F_NEEDS_CSUM: u8 = 1;
const NET_HDR_F_DATA_VALID: u8 = 2;

impl DeviceKind {
    fn device_id(&self) -> u32 {
        match self {
            DeviceKind::Net { .. } => 1,
            DeviceKind::Block { .. } => 2,
            DeviceKind::Entropy => 4,
            DeviceKind::Balloon => 5,
        }
    }
    fn features(&self) -> u64 {
        const BLK_F_FLUSH: u64 = 1 << 9;
        const NET_F_MAC: u64 = 1 << 5;
        // The card completes the checksums the guest leaves partial, and
        // checks those of the frames it receives; and tells its MTU.
        const NET_F_CSUM: u64 = 1 << 0;
        const NET_F_GUEST_CSUM: u64 = 1 << 1;
        const NET_F_MTU: u64 = 1 << 3;
        VIRTIO_F_VERSION_1
            | match self {
                DeviceKind::Block { .. } => BLK_F_FLUSH,
                DeviceKind::Net { .. } => NET_F_MAC | NET_F_CSUM | NET_F_GUEST_CSUM | NET_F_MTU,
                DeviceKind::Entropy | DeviceKind::Balloon => 0,
            }
    }
    fn queues(&self) -> usize {
        match self {
            DeviceKind::Net { .. } => 2, // receive, transmit
            DeviceKind::Balloon => 2,    // inflate, deflate
            _ => 1,
        }
    }
    fn config(&self, offset: u64) -> u32 {
        match (self, offset) {
            (DeviceKind::Block { sectors }, 0) => *sectors as u32,
            (DeviceKind::Block { sectors }, 4) => (*sectors >> 32) as u32,
            (DeviceKind::Net { mac, .. }, 0) => {
                u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]])
            }
            (DeviceKind::Net { mac, .. }, 4) => u32::from(u16::from_le_bytes([mac[4], mac[5]])),
            // max_virtqueue_pairs (without MQ: unused), then the MTU.
            (DeviceKind::Net { mtu, .. }, 8) => u32::from(*mtu) << 16,
            _ => 0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Queue {
    num: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
    /// The next avail ring entry to take.
    next_avail: u16,
    /// The next used ring index to fill.
    next_used: u16,
}

/// A descriptor chain: its head index and its buffers (guest address,
/// length, device-writable).
type Chain = (u16, Vec<(u64, u32, bool)>);

/// Where a request's answer goes in guest memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    queue: usize,
    head: u16,
    /// Device-writable buffers, in order (address, length).
    writable: Vec<(u64, u32)>,
    /// Block requests: the status byte (the last writable byte).
    status: Option<u64>,
}

/// The outcome of a request, as the host reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoStatus {
    Ok,
    Error,
    Unsupported,
}

/// One virtio-mmio slot with a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioMmio {
    kind: DeviceKind,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    status: u32,
    interrupt_status: u32,
    /// Queues the guest notified, for the machine to process.
    notified: u32,
    pending: BTreeMap<u64, Pending>,
    /// A balloon's own state (its configuration and the pages it holds).
    balloon: Option<Balloon>,
    /// A network card's frames that came while the guest had no receive
    /// buffer, delivered as it adds buffers (a card's own memory).
    rx_fifo: VecDeque<Vec<u8>>,
}

impl VirtioMmio {
    pub fn new(kind: DeviceKind) -> Self {
        let queues = kind.queues();
        VirtioMmio {
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues: vec![Queue::default(); queues],
            status: 0,
            interrupt_status: 0,
            notified: 0,
            pending: BTreeMap::new(),
            balloon: (kind == DeviceKind::Balloon).then(Balloon::default),
            rx_fifo: VecDeque::new(),
            kind,
        }
    }

    pub fn kind(&self) -> &DeviceKind {
        &self.kind
    }

    pub fn irq_level(&self) -> bool {
        self.interrupt_status != 0
    }

    /// The driver reset the device: everything goes back to its reset
    /// state, except what the host set (a balloon's target).
    fn reset(&mut self) {
        let balloon = self.balloon.take().map(Balloon::after_reset);
        *self = VirtioMmio::new(self.kind.clone());
        self.balloon = balloon;
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    pub fn load(&mut self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            0x000 => MAGIC,
            0x004 => 2,
            0x008 => self.kind.device_id(),
            0x00c => VENDOR,
            0x010 => match self.device_features_sel {
                0 => self.kind.features() as u32,
                1 => (self.kind.features() >> 32) as u32,
                _ => 0,
            },
            0x034 => q.map_or(0, |_| u32::from(QUEUE_MAX)),
            0x044 => u32::from(q.is_some_and(|q| q.ready)),
            0x060 => self.interrupt_status,
            0x070 => self.status,
            0x0fc => self.balloon.as_ref().map_or(0, Balloon::generation),
            o if o >= 0x100 => match &self.balloon {
                Some(balloon) => balloon.config_load(o - 0x100),
                None => self.kind.config(o - 0x100),
            },
            _ => 0,
        }
    }

    pub fn store(&mut self, offset: u64, value: u32) {
        let split = |old: u64, high: bool| {
            if high {
                (old & 0xffff_ffff) | (u64::from(value) << 32)
            } else {
                (old & !0xffff_ffff) | u64::from(value)
            }
        };
        match offset {
            0x014 => self.device_features_sel = value,
            0x020 => {
                let shift = 32 * u64::from(self.driver_features_sel.min(1));
                if self.driver_features_sel < 2 {
                    self.driver_features = (self.driver_features & !(0xffff_ffff << shift))
                        | (u64::from(value) << shift);
                }
            }
            0x024 => self.driver_features_sel = value,
            0x030 => self.queue_sel = value,
            0x038 => {
                if let Some(q) = self.queue() {
                    q.num = (value as u16).min(QUEUE_MAX);
                }
            }
            0x044 => {
                if let Some(q) = self.queue() {
                    q.ready = value & 1 != 0;
                }
            }
            0x050 if (value as usize) < self.queues.len() => self.notified |= 1 << value,
            0x064 => self.interrupt_status &= !value,
            0x070 => {
                if value == 0 {
                    self.reset();
                } else {
                    self.status = value;
                }
            }
            0x080 | 0x084 => {
                if let Some(q) = self.queue() {
                    q.desc = split(q.desc, offset == 0x084);
                }
            }
            0x090 | 0x094 => {
                if let Some(q) = self.queue() {
                    q.avail = split(q.avail, offset == 0x094);
                }
            }
            0x0a0 | 0x0a4 => {
                if let Some(q) = self.queue() {
                    q.used = split(q.used, offset == 0x0a4);
                }
            }
            o if o >= 0x100 => {
                if let Some(balloon) = &mut self.balloon {
                    balloon.config_store(o - 0x100, value);
                }
            }
            _ => {}
        }
    }

    /// Take the requests the guest made available on notified queues,
    /// numbering them from `next_id`. A balloon's requests need nothing of
    /// the host: they are served here and now, between two instructions.
    pub fn process(&mut self, hart: &mut Hart, next_id: &mut u64, out: &mut Vec<IoRequest>) {
        let notified = std::mem::take(&mut self.notified);
        if self.status & STATUS_FAILED != 0 {
            return;
        }
        for index in 0..self.queues.len() {
            if notified & (1 << index) == 0 || !self.queues[index].ready {
                continue;
            }
            // A network card's receive buffers wait for frames: those the
            // card holds first.
            if matches!(self.kind, DeviceKind::Net { .. }) && index == 0 {
                while let Some(frame) = self.rx_fifo.pop_front() {
                    if !self.deliver(hart, &frame) {
                        self.rx_fifo.push_front(frame);
                        break;
                    }
                }
                continue;
            }
            if self.balloon.is_some() {
                self.serve_balloon(hart, index);
                continue;
            }
            while let Some(chain) = self.pop(hart, index) {
                let id = *next_id;
                match self.request(hart, id, index, chain) {
                    Ok((pending, request)) => {
                        *next_id += 1;
                        self.pending.insert(id, pending);
                        out.push(request);
                    }
                    Err(()) => {
                        // A malformed chain: mark the device broken, as the
                        // spec allows (DEVICE_NEEDS_RESET), and stop.
                        self.status |= 64;
                        self.interrupt_status |= INT_CONFIG;
                        return;
                    }
                }
            }
        }
    }

    /// The next available descriptor chain of queue `index`: its head and
    /// its descriptors (address, length, writable).
    fn pop(&mut self, hart: &Hart, index: usize) -> Option<Chain> {
        let q = &self.queues[index];
        if q.num == 0 {
            return None;
        }
        let avail_idx = read_u16(hart, q.avail + 2)?;
        if avail_idx == q.next_avail {
            return None;
        }
        let slot = u64::from(q.next_avail % q.num);
        let head = read_u16(hart, q.avail + 4 + 2 * slot)?;
        let (desc, num) = (q.desc, q.num);
        self.queues[index].next_avail = q.next_avail.wrapping_add(1);
        let mut chain = Vec::new();
        let mut next = head;
        for _ in 0..num {
            if next >= num {
                return Some((head, Vec::new()));
            }
            let at = desc + 16 * u64::from(next);
            let addr = read_u64(hart, at)?;
            let len = read_u32(hart, at + 8)?;
            let flags = read_u16(hart, at + 12)?;
            chain.push((addr, len, flags & DESC_F_WRITE != 0));
            if flags & DESC_F_NEXT == 0 {
                return Some((head, chain));
            }
            next = read_u16(hart, at + 14)?;
        }
        // A loop: no valid chain.
        Some((head, Vec::new()))
    }

    fn request(
        &self,
        hart: &Hart,
        id: u64,
        queue: usize,
        (head, chain): Chain,
    ) -> Result<(Pending, IoRequest), ()> {
        let writable: Vec<(u64, u32)> = chain
            .iter()
            .filter(|d| d.2)
            .map(|&(addr, len, _)| (addr, len))
            .collect();
        // Requests without a status byte (network, entropy).
        let unstatused = |writable| Pending {
            queue,
            head,
            writable,
            status: None,
        };
        match self.kind {
            DeviceKind::Net { mtu, .. } => {
                let total: usize = chain.iter().map(|d| d.1 as usize).sum();
                if chain.iter().any(|d| d.2)
                    || total < NET_HEADER
                    || total > NET_HEADER + ETHERNET_HEADER + usize::from(mtu)
                {
                    return Err(());
                }
                // The header and the frame gathered apart: the frame is
                // read once, straight into its own buffer.
                let mut header = [0u8; NET_HEADER];
                let mut frame = vec![0u8; total - NET_HEADER];
                let mut at = 0;
                for &(addr, len, _) in &chain {
                    let (mut addr, mut len) = (addr, len as usize);
                    if at < NET_HEADER {
                        let n = len.min(NET_HEADER - at);
                        hart.ram()
                            .read(addr, &mut header[at..at + n])
                            .map_err(|_| ())?;
                        (addr, at, len) = (addr + n as u64, at + n, len - n);
                    }
                    if len > 0 {
                        // The header is whole: `at` is past it.
                        let start = at - NET_HEADER;
                        hart.ram()
                            .read(addr, &mut frame[start..start + len])
                            .map_err(|_| ())?;
                        at += len;
                    }
                }
                if header[0] & NET_HDR_F_NEEDS_CSUM != 0 {
                    let start = usize::from(u16::from_le_bytes([header[6], header[7]]));
                    let offset = usize::from(u16::from_le_bytes([header[8], header[9]]));
                    checksum::complete(&mut frame, start, offset).ok_or(())?;
                }
                Ok((unstatused(writable), IoRequest::NetTransmit { id, frame }))
            }
            DeviceKind::Entropy => {
                // The device may fill less than offered; a request is
                // capped so a guest cannot make the host allocate much.
                let offered: u64 = writable.iter().map(|d| u64::from(d.1)).sum();
                let len = offered.min(ENTROPY_MAX) as u32;
                Ok((unstatused(writable), IoRequest::Entropy { id, len }))
            }
            // Served in `serve_balloon`, never as a request.
            DeviceKind::Balloon => Err(()),
            DeviceKind::Block { sectors } => {
                // Header (type, reserved, sector), data, then a status byte.
                let &(header, header_len, false) = chain.first().ok_or(())? else {
                    return Err(());
                };
                let &(status_addr, status_len, true) = chain.last().ok_or(())? else {
                    return Err(());
                };
                if header_len < 16 || status_len < 1 || chain.len() < 2 {
                    return Err(());
                }
                let kind = read_u32(hart, header).ok_or(())?;
                let sector = read_u64(hart, header + 8).ok_or(())?;
                let data = &chain[1..chain.len() - 1];
                let status = Some(status_addr + u64::from(status_len) - 1);
                let mut buffers: Vec<(u64, u32)> = writable;
                buffers.pop(); // the status descriptor
                let total: u64 = data.iter().map(|d| u64::from(d.1)).sum();
                let in_range = sector
                    .checked_mul(512)
                    .and_then(|start| start.checked_add(total))
                    .is_some_and(|end| end <= sectors.saturating_mul(512))
                    && total <= u64::from(BLOCK_MAX_BYTES);
                let pending = Pending {
                    queue,
                    head,
                    writable: buffers,
                    status,
                };
                let request = match kind {
                    // IN: the data descriptors must all be writable.
                    0 if in_range && data.iter().all(|d| d.2) => IoRequest::BlockRead {
                        id,
                        offset: sector * 512,
                        len: total as u32,
                    },
                    1 if in_range && data.iter().all(|d| !d.2) => {
                        let mut bytes = Vec::with_capacity(total as usize);
                        for &(addr, len, _) in data {
                            let start = bytes.len();
                            bytes.resize(start + len as usize, 0);
                            hart.ram().read(addr, &mut bytes[start..]).map_err(|_| ())?;
                        }
                        IoRequest::BlockWrite {
                            id,
                            offset: sector * 512,
                            data: bytes,
                        }
                    }
                    4 => IoRequest::BlockFlush { id },
                    // Out of range, GET_ID and anything else.
                    _ => IoRequest::Unsupported { id },
                };
                Ok((pending, request))
            }
        }
    }

    /// Apply the host's answer to request `id`: write `data` into the
    /// request's buffers, its status, the used ring, and interrupt.
    /// Returns false if no such request is pending (e.g. after a reset).
    pub fn complete(&mut self, hart: &mut Hart, id: u64, status: IoStatus, data: &[u8]) -> bool {
        let Some(pending) = self.pending.remove(&id) else {
            return false;
        };
        let mut written = scatter(hart, pending.writable.iter().copied(), &[data]);
        if let Some(status_addr) = pending.status {
            let byte = match status {
                IoStatus::Ok => 0u8,
                IoStatus::Error => 1,
                IoStatus::Unsupported => 2,
            };
            let _ = hart.dma_write(status_addr, &[byte]);
            written += 1;
        }
        self.push_used(hart, pending.queue, pending.head, written);
        true
    }

    fn push_used(&mut self, hart: &mut Hart, queue: usize, head: u16, written: u32) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        if q.num == 0 {
            return;
        }
        let slot = u64::from(q.next_used % q.num);
        let entry = q.used + 4 + 8 * slot;
        let _ = hart.dma_write(entry, &u32::from(head).to_le_bytes());
        let _ = hart.dma_write(entry + 4, &written.to_le_bytes());
        q.next_used = q.next_used.wrapping_add(1);
        let _ = hart.dma_write(q.used + 2, &q.next_used.to_le_bytes());
        self.interrupt_status |= INT_VRING;
    }

    /// A network card receives `frame`: into the next receive buffer the
    /// guest made available, with an interrupt; or, while there is none,
    /// into the card's own memory, until the guest adds buffers (as a
    /// real card, and QEMU's, hold frames: a frame dropped here costs a
    /// TCP sender a retransmission timeout). Returns false (the frame is
    /// dropped) when that memory is full too.
    pub fn receive(&mut self, hart: &mut Hart, frame: &[u8]) -> bool {
        if !matches!(self.kind, DeviceKind::Net { .. })
            || self.status & STATUS_DRIVER_OK == 0
            || !self.queues.first().is_some_and(|q| q.ready)
        {
            return false;
        }
        if self.rx_fifo.is_empty() && self.deliver(hart, frame) {
            return true;
        }
        let held: usize = self.rx_fifo.iter().map(Vec::len).sum();
        if self.rx_fifo.len() >= RX_FIFO_FRAMES || held + frame.len() > RX_FIFO_BYTES {
            return false;
        }
        self.rx_fifo.push_back(frame.to_vec());
        true
    }

    fn deliver(&mut self, hart: &mut Hart, frame: &[u8]) -> bool {
        let Some((head, chain)) = self.pop(hart, 0) else {
            return false;
        };
        let mut header = [0u8; NET_HEADER];
        if checksum::verified(frame) {
            header[0] = NET_HDR_F_DATA_VALID;
        }
        header[10] = 1; // num_buffers
        let buffers = chain
            .iter()
            .filter(|d| d.2)
            .map(|&(addr, len, _)| (addr, len));
        let written = scatter(hart, buffers, &[&header, frame]);
        // A buffer too small gets the frame cut short, as the guest asked.
        self.push_used(hart, 0, head, written);
        true
    }
}

/// Write `parts`, one after the other, across guest buffers (address,
/// length) in order; returns the bytes written.
fn scatter(hart: &mut Hart, buffers: impl Iterator<Item = (u64, u32)>, parts: &[&[u8]]) -> u32 {
    let mut written = 0u32;
    let mut parts = parts.iter().copied();
    let mut rest: &[u8] = parts.next().unwrap_or_default();
    for (mut addr, mut room) in buffers {
        while room > 0 {
            while rest.is_empty() {
                match parts.next() {
                    Some(part) => rest = part,
                    None => return written,
                }
            }
            let n = rest.len().min(room as usize);
            if hart.dma_write(addr, &rest[..n]).is_err() {
                return written;
            }
            written += n as u32;
            addr += n as u64;
            room -= n as u32;
            rest = &rest[n..];
        }
    }
    written
}

fn read_u16(hart: &Hart, addr: u64) -> Option<u16> {
    let mut b = [0; 2];
    hart.ram().read(addr, &mut b).ok()?;
    Some(u16::from_le_bytes(b))
}
fn read_u32(hart: &Hart, addr: u64) -> Option<u32> {
    let mut b = [0; 4];
    hart.ram().read(addr, &mut b).ok()?;
    Some(u32::from_le_bytes(b))
}
fn read_u64(hart: &Hart, addr: u64) -> Option<u64> {
    let mut b = [0; 8];
    hart.ram().read(addr, &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftvm_cpu::HartConfig;
    use proptest::prelude::*;

    const RAM: u64 = 0x8000_0000;

    fn hart() -> Hart {
        Hart::new(HartConfig {
            hart_id: 0,
            ram_base: RAM,
            ram_size: 1 << 20,
            insns_per_tick: 10,
        })
    }

    /// Set up queue 0 with its rings at fixed places and the given chain
    /// of descriptors (address, length, flags) made available.
    fn driver(dev: &mut VirtioMmio, h: &mut Hart, descs: &[(u64, u32, u16)]) {
        driver_queue(dev, h, 0, descs);
    }

    fn driver_queue(dev: &mut VirtioMmio, h: &mut Hart, queue: u32, descs: &[(u64, u32, u16)]) {
        let (desc, avail, used) = (RAM + 0x1000, RAM + 0x2000, RAM + 0x3000);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let at = desc + 16 * i as u64;
            let next = if flags & DESC_F_NEXT != 0 {
                i as u16 + 1
            } else {
                0
            };
            h.dma_write(at, &addr.to_le_bytes()).expect("ram");
            h.dma_write(at + 8, &len.to_le_bytes()).expect("ram");
            h.dma_write(at + 12, &flags.to_le_bytes()).expect("ram");
            h.dma_write(at + 14, &next.to_le_bytes()).expect("ram");
        }
        h.dma_write(avail + 4, &0u16.to_le_bytes()).expect("ram"); // ring[0] = head 0
        h.dma_write(avail + 2, &1u16.to_le_bytes()).expect("ram"); // idx = 1
        for (reg, value) in [
            (0x030, queue),
            (0x038, 8),
            (0x080, desc as u32),
            (0x084, 0),
            (0x090, avail as u32),
            (0x094, 0),
            (0x0a0, used as u32),
            (0x0a4, 0),
            (0x044, 1),
            (0x070, 15),
            (0x050, queue),
        ] {
            dev.store(reg, value);
        }
    }

    #[test]
    fn block_read_request_completes_into_guest_memory() {
        let mut h = hart();
        let mut dev = VirtioMmio::new(DeviceKind::Block { sectors: 8 });
        assert_eq!(dev.load(0x008), 2);
        assert_eq!(dev.load(0x100), 8, "capacity in sectors");
        let (header, data, status) = (RAM + 0x4000, RAM + 0x5000, RAM + 0x6000);
        h.dma_write(header, &0u32.to_le_bytes()).expect("ram"); // IN
        h.dma_write(header + 8, &2u64.to_le_bytes()).expect("ram"); // sector 2
        driver(
            &mut dev,
            &mut h,
            &[
                (header, 16, DESC_F_NEXT),
                (data, 1024, DESC_F_NEXT | DESC_F_WRITE),
                (status, 1, DESC_F_WRITE),
            ],
        );
        let (mut next_id, mut out) = (7, Vec::new());
        dev.process(&mut h, &mut next_id, &mut out);
        assert_eq!(
            out,
            vec![IoRequest::BlockRead {
                id: 7,
                offset: 1024,
                len: 1024
            }]
        );
        assert!(!dev.irq_level(), "no interrupt before the completion");
        assert!(dev.complete(&mut h, 7, IoStatus::Ok, &[0xab; 1024]));
        assert!(dev.irq_level());
        let mut buf = [0u8; 1024];
        h.ram().read(data, &mut buf).expect("ram");
        assert!(buf.iter().all(|&b| b == 0xab));
        h.ram().read(status, &mut buf[..1]).expect("ram");
        assert_eq!(buf[0], 0, "status OK");
        h.ram().read(RAM + 0x3000 + 2, &mut buf[..2]).expect("ram");
        assert_eq!(u16::from_le_bytes([buf[0], buf[1]]), 1, "used idx");
        assert!(!dev.complete(&mut h, 7, IoStatus::Ok, &[]), "only once");
        dev.store(0x064, 1);
        assert!(!dev.irq_level(), "acknowledged");
    }

    #[test]
    fn a_request_beyond_the_disk_is_unsupported() {
        let mut h = hart();
        let mut dev = VirtioMmio::new(DeviceKind::Block { sectors: 1 });
        let header = RAM + 0x4000;
        h.dma_write(header + 8, &1u64.to_le_bytes()).expect("ram");
        driver(
            &mut dev,
            &mut h,
            &[
                (header, 16, DESC_F_NEXT),
                (RAM + 0x5000, 512, DESC_F_NEXT | DESC_F_WRITE),
                (RAM + 0x6000, 1, DESC_F_WRITE),
            ],
        );
        let (mut next_id, mut out) = (0, Vec::new());
        dev.process(&mut h, &mut next_id, &mut out);
        assert_eq!(out, vec![IoRequest::Unsupported { id: 0 }]);
    }

    /// A network card of Ethernet's MTU.
    fn card() -> VirtioMmio {
        VirtioMmio::new(DeviceKind::Net {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            mtu: 1500,
        })
    }

    /// Make descriptor `index` (one device-writable buffer at `addr`) the
    /// next available chain of queue 0 (set up by `driver`), as the
    /// guest's driver refilling its receive ring, and notify.
    fn add_receive_buffer(dev: &mut VirtioMmio, h: &mut Hart, index: u16, addr: u64) {
        let (desc, avail) = (RAM + 0x1000, RAM + 0x2000);
        let at = desc + 16 * u64::from(index);
        h.dma_write(at, &addr.to_le_bytes()).expect("ram");
        h.dma_write(at + 8, &2048u32.to_le_bytes()).expect("ram");
        h.dma_write(at + 12, &DESC_F_WRITE.to_le_bytes())
            .expect("ram");
        h.dma_write(avail + 4 + 2 * u64::from(index), &index.to_le_bytes())
            .expect("ram");
        h.dma_write(avail + 2, &(index + 1).to_le_bytes())
            .expect("ram");
        dev.store(0x050, 0);
        dev.process(h, &mut 0, &mut Vec::new());
    }

    fn used_idx(h: &Hart) -> u16 {
        read_u16(h, RAM + 0x3000 + 2).expect("ram")
    }

    #[test]
    fn a_card_holds_frames_until_the_guest_adds_buffers() {
        let mut h = hart();
        let mut dev = card();
        assert_eq!(dev.load(0x100 + 8) >> 16, 1500, "the MTU in the config");
        let (first, second) = (RAM + 0x4000, RAM + 0x5000);
        driver(&mut dev, &mut h, &[(first, 2048, DESC_F_WRITE)]);
        let (mut good, start, offset) = checksum::tests::partial_ipv4(checksum::TCP, b"ping");
        checksum::complete(&mut good, start, offset).expect("inside");
        let odd = vec![0xee; 60];
        assert!(dev.receive(&mut h, &good));
        assert_eq!(used_idx(&h), 1);
        // No buffer left: the card keeps the frame, and the next one.
        assert!(dev.receive(&mut h, &odd));
        assert!(dev.receive(&mut h, &good));
        assert_eq!(used_idx(&h), 1, "nothing delivered without a buffer");
        add_receive_buffer(&mut dev, &mut h, 1, second);
        assert_eq!(used_idx(&h), 2, "the first frame held goes first");
        add_receive_buffer(&mut dev, &mut h, 2, RAM + 0x6000);
        assert_eq!(used_idx(&h), 3);
        let header = |at: u64| {
            let mut header = [0u8; NET_HEADER];
            h.ram().read(at, &mut header).expect("ram");
            header
        };
        assert_eq!(
            header(first)[0],
            NET_HDR_F_DATA_VALID,
            "a checked TCP frame"
        );
        assert_eq!(header(second)[0], 0, "anything else: the guest checks");
        let mut frame = vec![0u8; odd.len()];
        h.ram()
            .read(second + NET_HEADER as u64, &mut frame)
            .expect("ram");
        assert_eq!(frame, odd);
        assert_eq!(header(RAM + 0x6000)[0], NET_HDR_F_DATA_VALID);
        // What the card holds is bounded, in bytes and in frames: past
        // it, frames are dropped.
        let big = vec![0u8; 65294];
        let held = (0..2000).take_while(|_| dev.receive(&mut h, &big)).count();
        assert_eq!(held, RX_FIFO_BYTES / big.len());
        dev.store(0x070, 0); // a reset empties it
        driver(&mut dev, &mut h, &[(first, 2048, DESC_F_WRITE)]);
        assert!(dev.receive(&mut h, &odd), "into the buffer");
        let held = (0..2000).take_while(|_| dev.receive(&mut h, &odd)).count();
        assert_eq!(held, RX_FIFO_FRAMES);
    }

    #[test]
    fn the_card_finishes_a_checksum_the_guest_left_partial() {
        let mut h = hart();
        let mut dev = card();
        let (partial, start, offset) = checksum::tests::partial_ipv4(checksum::TCP, &[9; 300]);
        assert!(!checksum::verified(&partial));
        let mut header = [0u8; NET_HEADER];
        header[0] = NET_HDR_F_NEEDS_CSUM;
        header[6..8].copy_from_slice(&(start as u16).to_le_bytes());
        header[8..10].copy_from_slice(&(offset as u16).to_le_bytes());
        let (at_header, at_frame) = (RAM + 0x4000, RAM + 0x5000);
        h.dma_write(at_header, &header).expect("ram");
        h.dma_write(at_frame, &partial).expect("ram");
        driver_queue(
            &mut dev,
            &mut h,
            1,
            &[
                (at_header, NET_HEADER as u32, DESC_F_NEXT),
                (at_frame, partial.len() as u32, 0),
            ],
        );
        let mut out = Vec::new();
        dev.process(&mut h, &mut 0, &mut out);
        let [IoRequest::NetTransmit { frame, .. }] = out.as_slice() else {
            panic!("one frame sent: {out:?}");
        };
        assert!(
            checksum::verified(frame),
            "the frame leaves with its checksum"
        );
        assert_eq!(frame[..start], partial[..start]);
    }

    #[test]
    fn a_frame_split_anywhere_across_descriptors_is_gathered_whole() {
        let frame: Vec<u8> = (0..200u8).collect();
        let mut bytes = vec![0u8; NET_HEADER];
        bytes.extend_from_slice(&frame);
        let at = RAM + 0x4000;
        for (a, b) in [(5, 10), (12, 12), (1, 150), (11, 13), (12, 212), (0, 3)] {
            let mut h = hart();
            let mut dev = card();
            h.dma_write(at, &bytes).expect("ram");
            let len = bytes.len() as u64;
            let descs: Vec<(u64, u32, u16)> = [(0, a), (a, b), (b, len)]
                .into_iter()
                .filter(|(from, to)| to > from)
                .map(|(from, to)| (at + from, (to - from) as u32, DESC_F_NEXT))
                .collect();
            let mut descs = descs;
            if let Some(last) = descs.last_mut() {
                last.2 = 0;
            }
            driver_queue(&mut dev, &mut h, 1, &descs);
            let mut out = Vec::new();
            dev.process(&mut h, &mut 0, &mut out);
            assert_eq!(
                out,
                [IoRequest::NetTransmit {
                    id: 0,
                    frame: frame.clone()
                }],
                "split at {a} and {b}"
            );
        }
    }

    #[test]
    fn a_frame_longer_than_the_mtu_breaks_the_card() {
        let mut h = hart();
        let mut dev = card();
        let (at_header, at_frame) = (RAM + 0x4000, RAM + 0x5000);
        driver_queue(
            &mut dev,
            &mut h,
            1,
            &[
                (at_header, NET_HEADER as u32, DESC_F_NEXT),
                (at_frame, 1515, 0),
            ],
        );
        let mut out = Vec::new();
        dev.process(&mut h, &mut 0, &mut out);
        assert!(out.is_empty());
        assert_ne!(dev.load(0x070) & 64, 0, "DEVICE_NEEDS_RESET");
    }

    proptest! {
        /// Whatever a guest puts in the registers and rings, processing
        /// and completing never panics.
        #[test]
        fn garbage_queues_never_panic(
            regs in prop::collection::vec((0u64..0x110, any::<u32>()), 0..40),
            ring in prop::collection::vec(any::<u8>(), 0..0x3000),
            kind in 0..3u8,
        ) {
            let mut h = hart();
            h.dma_write(RAM, &ring).expect("ram");
            let kind = match kind {
                0 => DeviceKind::Entropy,
                1 => DeviceKind::Balloon,
                _ => DeviceKind::Block { sectors: 4 },
            };
            let mut dev = VirtioMmio::new(kind);
            for (offset, value) in regs {
                dev.store(offset & !3, value);
                let _ = dev.load(offset & !3);
            }
            dev.store(0x050, 0);
            let (mut next_id, mut out) = (0, Vec::new());
            dev.process(&mut h, &mut next_id, &mut out);
            for request in out {
                let len = match request { IoRequest::BlockRead { len, .. } | IoRequest::Entropy { len, .. } => len, _ => 0 };
                dev.complete(&mut h, request.id(), IoStatus::Ok, &vec![1; len.min(1 << 16) as usize]);
            }
        }
    }
}
