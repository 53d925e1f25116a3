//! A running VM's snapshot, streamed to a new backup over the logging
//! channel, sans-IO (ARCHITECTURE.md, "Cloning").
//!
//! Execution is deterministic, so a clone needs no iterative pre-copy: the
//! primary captures its machine at one icount, keeps logging from there,
//! and streams that snapshot while it runs on; the new backup restores it
//! and replays the log from the same icount. The stream is
//! [`Message::CloneStart`] (what machine, where its counters stand, the
//! hart and device state), then [`Message::Pages`] for every RAM chunk
//! that is not all zeroes (LZ4-compressed when that makes it smaller), then,
//! for a VM with a private disk, [`Message::DiskPages`] for every chunk of
//! the disk as it was at the snapshot that is not all zeroes, then
//! [`Message::CloneEnd`] with the number of chunks sent and the digests
//! of the snapshot and of the disk. [`CloneSender`] makes the messages
//! (the host reads the disk and hands it chunk by chunk); [`CloneReceiver`]
//! checks every one (offsets, sizes, order, counts, the snapshot's digest)
//! and builds the snapshot, handing the disk's chunks to the host to
//! write, so a truncated, corrupt or foreign stream is one clear error and
//! nothing is started.

use ftvm_board::{Engine, Snapshot};
use ftvm_replay::MachineId;
use serde::{Deserialize, Serialize};

use crate::channel::Message;

/// RAM is sent in chunks of this size (the last may be shorter).
pub const CHUNK: usize = 64 << 10;

/// The most RAM a clone may announce: a peer must not make a backup
/// allocate without bound before it has checked anything.
pub const MAX_RAM: u64 = 64 << 30;

/// What a new backup needs besides RAM, first in the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneStart {
    /// The machine (its images by hash): the backup builds the same one.
    pub machine: MachineId,
    /// The engine the primary runs.
    pub engine: Engine,
    pub ram_size: u64,
    /// The snapshot without RAM ([`Snapshot::state_bytes`]).
    pub state: Vec<u8>,
    /// Instructions executed before the machine's last reset: the lag
    /// compares counts that grow across resets.
    pub icount_base: u64,
    /// Bytes of the guest's console stream before the snapshot: the
    /// backup's console continues from there.
    pub console_offset: u64,
    /// A private disk's size: its content at the snapshot follows the RAM
    /// (a shared disk is not sent: the new backup never writes it while it
    /// replays).
    pub disk_size: Option<u64>,
}

/// The largest disk a clone may announce.
pub const MAX_DISK: u64 = 16 << 40;

/// How a chunk's bytes are carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageEncoding {
    Raw,
    /// LZ4 block format (`lz4_flex::block`), uncompressed size implied by
    /// the chunk.
    Lz4,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloneError {
    #[error("the clone stream did not start with CloneStart but with {0}")]
    NoStart(&'static str),
    #[error("unexpected {0} in the clone stream")]
    Unexpected(&'static str),
    #[error("the snapshot announces {0} bytes of RAM, which is not a RAM size this backup takes")]
    RamSize(u64),
    #[error("a chunk at offset {offset:#x}: {why}")]
    BadChunk { offset: u64, why: String },
    #[error("the stream ended after {got} chunks, the primary says it sent {sent}")]
    Truncated { got: u64, sent: u64 },
    #[error("the snapshot announces a disk of {0} bytes, which is not a disk this backup takes")]
    DiskSize(u64),
    #[error("the snapshot's state: {0}")]
    State(String),
    #[error("the snapshot does not match its digest (corrupt in transfer)")]
    Digest,
}

/// The primary's side: the messages of one snapshot, one at a time, so a
/// thread can send them at the channel's pace.
pub struct CloneSender {
    snapshot: Snapshot,
    start: Option<CloneStart>,
    /// The next chunk's offset.
    offset: usize,
    digest: Option<ftvm_board::Digest>,
    has_disk: bool,
    chunks_sent: u64,
    disk_chunks_sent: u64,
    bytes_sent: u64,
    done: bool,
}

impl CloneSender {
    pub fn new(snapshot: Snapshot, start: CloneStart) -> CloneSender {
        CloneSender {
            has_disk: start.disk_size.is_some(),
            digest: None,
            snapshot,
            start: Some(start),
            offset: 0,
            chunks_sent: 0,
            disk_chunks_sent: 0,
            bytes_sent: 0,
            done: false,
        }
    }

    /// RAM bytes looked at so far, and in all: the transfer's progress.
    pub fn progress(&self) -> (u64, u64) {
        (self.offset as u64, self.snapshot.ram().len() as u64)
    }

    /// Payload bytes put in messages so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Non-zero chunks sent so far.
    pub fn chunks_sent(&self) -> u64 {
        self.chunks_sent
    }

    pub fn into_snapshot(self) -> Snapshot {
        self.snapshot
    }

    /// The snapshot's digest (a BLAKE3 pass over RAM, computed once).
    pub fn digest(&mut self) -> ftvm_board::Digest {
        *self.digest.get_or_insert_with(|| self.snapshot.digest())
    }

    /// The message for the disk's chunk at `offset` (its content at the
    /// snapshot), unless it is all zeroes. Chunks are given in order, each
    /// [`CHUNK`] bytes but the last, after the RAM's messages.
    pub fn disk_message(&mut self, offset: u64, chunk: &[u8]) -> Option<Message> {
        if chunk.iter().all(|&b| b == 0) {
            return None;
        }
        let (encoding, data) = encode(chunk);
        self.disk_chunks_sent += 1;
        self.bytes_sent += data.len() as u64;
        Some(Message::DiskPages {
            offset,
            encoding,
            data,
        })
    }

    /// The stream's last message, once RAM (and the disk) are sent: the
    /// counts, the snapshot's digest and `disk_digest` (BLAKE3 of the whole
    /// disk as sent, zero chunks included).
    pub fn end_message(&mut self, disk_digest: Option<[u8; 32]>) -> Message {
        self.done = true;
        Message::CloneEnd {
            chunks: self.chunks_sent,
            digest: self.digest().0,
            disk_chunks: self.disk_chunks_sent,
            disk_digest,
        }
    }

    /// The next message of the stream: its start, the RAM's chunks, and
    /// for a clone without a disk the end; `None` after that. With a disk,
    /// `None` once every RAM chunk was given: then the disk's chunks
    /// ([`CloneSender::disk_message`]) and [`CloneSender::end_message`].
    pub fn next_message(&mut self) -> Option<Message> {
        if let Some(start) = self.start.take() {
            self.bytes_sent += start.state.len() as u64;
            return Some(Message::CloneStart(Box::new(start)));
        }
        let ram = self.snapshot.ram();
        while self.offset < ram.len() {
            let offset = self.offset;
            let chunk = &ram[offset..(offset + CHUNK).min(ram.len())];
            self.offset += chunk.len();
            // A fresh machine's RAM is zero: zero chunks need no bytes.
            if chunk.iter().all(|&b| b == 0) {
                continue;
            }
            let (encoding, data) = encode(chunk);
            self.chunks_sent += 1;
            self.bytes_sent += data.len() as u64;
            return Some(Message::Pages {
                offset: offset as u64,
                encoding,
                data,
            });
        }
        if self.done || self.has_disk {
            return None;
        }
        Some(self.end_message(None))
    }

    /// Whether the end was given.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// A chunk as sent: LZ4 when that is smaller.
fn encode(chunk: &[u8]) -> (PageEncoding, Vec<u8>) {
    let compressed = lz4_flex::block::compress(chunk);
    if compressed.len() < chunk.len() {
        (PageEncoding::Lz4, compressed)
    } else {
        (PageEncoding::Raw, chunk.to_vec())
    }
}

/// The length of the chunk at `offset` of `what` (`size` bytes), which
/// must lie on a chunk boundary, inside, and after `next` (chunks come in
/// increasing order, each once).
fn chunk_len(offset: u64, next: u64, size: u64, what: &str) -> Result<usize, CloneError> {
    let bad = |why: String| CloneError::BadChunk { offset, why };
    if !offset.is_multiple_of(CHUNK as u64) {
        return Err(bad("not on a chunk boundary".into()));
    }
    if offset < next {
        return Err(bad("out of order or sent twice".into()));
    }
    if offset >= size {
        return Err(bad(format!("beyond the end of {what}")));
    }
    Ok((CHUNK as u64).min(size - offset) as usize)
}

/// A chunk as received, into `target` (its whole length).
fn decode_into(encoding: PageEncoding, data: &[u8], target: &mut [u8]) -> Result<(), String> {
    let len = target.len();
    match encoding {
        PageEncoding::Raw if data.len() == len => {
            target.copy_from_slice(data);
            Ok(())
        }
        PageEncoding::Raw => Err(format!("{} bytes for a chunk of {len}", data.len())),
        PageEncoding::Lz4 => {
            let n = lz4_flex::block::decompress_into(data, target)
                .map_err(|e| format!("does not decompress: {e}"))?;
            if n != len {
                return Err(format!("decompresses to {n} bytes, not {len}"));
            }
            Ok(())
        }
    }
}

/// The new backup's side: takes the stream's messages in order and gives
/// the snapshot once it is whole and checked.
#[derive(Default)]
pub struct CloneReceiver {
    start: Option<CloneStart>,
    ram: Vec<u8>,
    /// Where the next chunk may start (chunks come in increasing order).
    next_offset: u64,
    chunks: u64,
    /// The same for the disk's chunks.
    next_disk_offset: u64,
    disk_chunks: u64,
}

/// A whole, checked clone.
pub struct Cloned {
    pub start: CloneStart,
    pub snapshot: Snapshot,
    /// The digest of the disk as sent, which the host checks against
    /// what it wrote.
    pub disk_digest: Option<[u8; 32]>,
    /// The snapshot's digest, checked (the log's header must name it).
    pub digest: ftvm_board::Digest,
}

/// What a message of the stream asks of the new backup's host.
pub enum Received {
    /// Nothing yet.
    More,
    /// Write these bytes at `offset` of the backup's own disk.
    Disk { offset: u64, bytes: Vec<u8> },
    /// The clone is whole and checked.
    Done(Box<Cloned>),
}

impl CloneReceiver {
    /// RAM bytes received so far, and in all.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.next_offset,
            self.start.as_ref().map_or(0, |s| s.ram_size),
        )
    }

    /// Take the next message of a clone without a disk; the clone once
    /// [`Message::CloneEnd`] arrived and everything checked.
    pub fn receive(&mut self, message: Message) -> Result<Option<Cloned>, CloneError> {
        match self.take(message)? {
            Received::More => Ok(None),
            Received::Done(cloned) => Ok(Some(*cloned)),
            Received::Disk { .. } => Err(CloneError::Unexpected("a disk chunk")),
        }
    }

    /// Take the next message; what the host must do with it (write a disk
    /// chunk). After an error the stream is unusable.
    pub fn take(&mut self, message: Message) -> Result<Received, CloneError> {
        let Some(start) = &self.start else {
            let Message::CloneStart(start) = message else {
                return Err(CloneError::NoStart(message.name()));
            };
            if start.ram_size == 0
                || start.ram_size > MAX_RAM
                || start.ram_size != start.machine.memory_mib.saturating_mul(1 << 20)
            {
                return Err(CloneError::RamSize(start.ram_size));
            }
            if let Some(size) = start.disk_size {
                if size == 0 || size > MAX_DISK || size % 512 != 0 {
                    return Err(CloneError::DiskSize(size));
                }
            }
            self.ram = vec![0; start.ram_size as usize];
            self.start = Some(*start);
            return Ok(Received::More);
        };
        match message {
            Message::Pages {
                offset,
                encoding,
                data,
            } => {
                let len = chunk_len(offset, self.next_offset, start.ram_size, "RAM")?;
                let at = offset as usize;
                decode_into(encoding, &data, &mut self.ram[at..at + len])
                    .map_err(|why| CloneError::BadChunk { offset, why })?;
                self.next_offset = offset + len as u64;
                self.chunks += 1;
                Ok(Received::More)
            }
            Message::DiskPages {
                offset,
                encoding,
                data,
            } => {
                let bad = |why: String| CloneError::BadChunk { offset, why };
                let Some(size) = start.disk_size else {
                    return Err(bad("a disk chunk for a clone without a disk".into()));
                };
                let len = chunk_len(offset, self.next_disk_offset, size, "the disk")?;
                let mut bytes = vec![0; len];
                decode_into(encoding, &data, &mut bytes).map_err(bad)?;
                self.next_disk_offset = offset + len as u64;
                self.disk_chunks += 1;
                Ok(Received::Disk { offset, bytes })
            }
            Message::CloneEnd {
                chunks,
                digest,
                disk_chunks,
                disk_digest,
            } => {
                if chunks != self.chunks {
                    return Err(CloneError::Truncated {
                        got: self.chunks,
                        sent: chunks,
                    });
                }
                if disk_chunks != self.disk_chunks {
                    return Err(CloneError::Truncated {
                        got: self.disk_chunks,
                        sent: disk_chunks,
                    });
                }
                if disk_digest.is_some() != start.disk_size.is_some() {
                    return Err(CloneError::Unexpected("a disk digest without a disk"));
                }
                let snapshot = Snapshot::from_parts(&start.state, std::mem::take(&mut self.ram))
                    .map_err(|e| CloneError::State(e.to_string()))?;
                if snapshot.digest().0 != digest {
                    return Err(CloneError::Digest);
                }
                self.next_offset = start.ram_size;
                let Some(start) = self.start.take() else {
                    return Err(CloneError::Unexpected("CloneEnd"));
                };
                Ok(Received::Done(Box::new(Cloned {
                    start,
                    snapshot,
                    disk_digest,
                    digest: ftvm_board::Digest(digest),
                })))
            }
            other => Err(CloneError::Unexpected(other.name())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftvm_board::virtio::DeviceKind;
    use ftvm_board::{Firmware, Image, Machine, MachineConfig};
    use ftvm_replay::format::FileId;

    fn machine() -> (Machine, MachineConfig) {
        // addi a0, a0, 1; j -4: counts in a0.
        let code: Vec<u8> = [0x0015_0513u32, 0xffdf_f06f]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let config = MachineConfig {
            memory_mib: 16,
            firmware: Firmware::None,
            kernel: Image::new("count.img", code),
            initrd: None,
            append: String::new(),
            insns_per_tick: 100,
            engine: Engine::Interpreter,
            virtio: vec![DeviceKind::Entropy],
        };
        let mut m = Machine::new(&config).expect("machine");
        m.run(5_000);
        // Some data that compresses, some that does not.
        m.hart_mut()
            .ram_mut()
            .write(0x8010_0000, &[7; 100_000])
            .expect("ram");
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..70_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        m.hart_mut()
            .ram_mut()
            .write(0x8018_0000, &noise)
            .expect("ram");
        (m, config)
    }

    fn start(m: &Machine, snapshot: &Snapshot) -> CloneStart {
        CloneStart {
            machine: MachineId {
                memory_mib: 16,
                firmware: None,
                kernel: FileId {
                    path: "count.img".into(),
                    len: 8,
                    blake3: [1; 32],
                },
                initrd: None,
                append: String::new(),
                insns_per_tick: 100,
                virtio: vec![DeviceKind::Entropy],
            },
            engine: Engine::Interpreter,
            ram_size: m.hart().ram().size(),
            state: snapshot.state_bytes(),
            icount_base: 0,
            console_offset: 0,
            disk_size: None,
        }
    }

    fn stream() -> (Vec<Message>, Machine) {
        let (m, _) = machine();
        let snapshot = m.snapshot();
        let mut sender = CloneSender::new(snapshot.clone(), start(&m, &snapshot));
        let mut messages = Vec::new();
        while let Some(message) = sender.next_message() {
            messages.push(message);
        }
        assert!(sender.is_done(), "without a disk the end comes by itself");
        (messages, m)
    }

    /// Feed `messages` to a receiver: the clone, and the disk it wrote
    /// (`disk_size` bytes).
    fn receive_all(
        messages: Vec<Message>,
        disk_size: usize,
    ) -> Result<Option<(Cloned, Vec<u8>)>, CloneError> {
        let mut receiver = CloneReceiver::default();
        let mut disk = vec![0u8; disk_size];
        for message in messages {
            match receiver.take(message)? {
                Received::More => {}
                Received::Disk { offset, bytes } => {
                    disk[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
                }
                Received::Done(cloned) => return Ok(Some((*cloned, disk))),
            }
        }
        Ok(None)
    }

    #[test]
    fn a_snapshot_arrives_whole_with_zero_chunks_skipped_and_others_compressed() {
        let (messages, m) = stream();
        let pages: Vec<&Message> = messages
            .iter()
            .filter(|m| matches!(m, Message::Pages { .. }))
            .collect();
        // 16 MiB is 256 chunks; only the kernel's, the 100,000 sevens' and
        // the noise's are not zero.
        assert!(
            pages.len() >= 3 && pages.len() <= 6,
            "{} chunks",
            pages.len()
        );
        assert!(pages.iter().any(|p| matches!(
            p,
            Message::Pages {
                encoding: PageEncoding::Lz4,
                ..
            }
        )));
        assert!(pages.iter().any(|p| matches!(
            p,
            Message::Pages {
                encoding: PageEncoding::Raw,
                ..
            }
        )));
        let (cloned, _) = receive_all(messages, 0).expect("valid").expect("whole");
        assert_eq!(cloned.snapshot.digest(), m.digest());
        assert_eq!(cloned.snapshot.icount(), m.icount());
        assert_eq!(cloned.disk_digest, None);
    }

    /// A private disk follows the RAM: only its non-zero chunks travel,
    /// and the receiver's host writes exactly the disk that was sent.
    #[test]
    fn a_private_disk_arrives_with_the_snapshot() {
        let (m, _) = machine();
        let snapshot = m.snapshot();
        let disk_size = 5 * CHUNK + 1024;
        let mut disk = vec![0u8; disk_size];
        disk[CHUNK + 7] = 1;
        disk[4 * CHUNK..5 * CHUNK].fill(9);
        disk[disk_size - 1] = 3;
        let mut start = start(&m, &snapshot);
        start.disk_size = Some(disk_size as u64);
        let mut sender = CloneSender::new(snapshot, start);
        let mut messages: Vec<Message> = std::iter::from_fn(|| sender.next_message()).collect();
        let ram_messages = messages.len();
        for (i, chunk) in disk.chunks(CHUNK).enumerate() {
            messages.extend(sender.disk_message((i * CHUNK) as u64, chunk));
        }
        assert_eq!(
            messages.len() - ram_messages,
            3,
            "three chunks are not zero"
        );
        messages.push(sender.end_message(Some([5; 32])));
        let (cloned, written) = receive_all(messages.clone(), disk_size)
            .expect("valid")
            .expect("whole");
        assert_eq!(written, disk);
        assert_eq!(cloned.disk_digest, Some([5; 32]));
        // A disk chunk beyond the disk, or for a clone without one.
        let mut beyond = messages.clone();
        beyond.insert(
            ram_messages,
            Message::DiskPages {
                offset: 6 * CHUNK as u64,
                encoding: PageEncoding::Raw,
                data: vec![1; CHUNK],
            },
        );
        assert!(matches!(
            receive_all(beyond, disk_size),
            Err(CloneError::BadChunk { .. })
        ));
        let mut dropped = messages.clone();
        dropped.remove(ram_messages);
        assert!(matches!(
            receive_all(dropped, disk_size),
            Err(CloneError::Truncated { .. })
        ));
        if let Message::CloneStart(start) = &mut messages[0] {
            start.disk_size = Some(1000);
        }
        assert_eq!(
            receive_all(messages, disk_size).err(),
            Some(CloneError::DiskSize(1000))
        );
    }

    /// Every way a stream can be wrong is an error, never a panic or a
    /// wrong snapshot.
    #[test]
    fn truncated_reordered_corrupt_and_foreign_streams_are_refused() {
        let (messages, _) = stream();
        let run = |messages: Vec<Message>| receive_all(messages, 0).map(|c| c.map(|(c, _)| c));
        // A chunk left out.
        let mut dropped = messages.clone();
        dropped.remove(2);
        assert!(matches!(run(dropped), Err(CloneError::Truncated { .. })));
        // No end.
        let mut cut = messages.clone();
        cut.pop();
        assert!(matches!(run(cut), Ok(None)));
        // Two chunks swapped.
        let mut swapped = messages.clone();
        swapped.swap(1, 2);
        assert!(matches!(run(swapped), Err(CloneError::BadChunk { .. })));
        // A byte of compressed data changed.
        let mut flipped = messages.clone();
        for message in &mut flipped {
            if let Message::Pages {
                encoding: PageEncoding::Raw,
                data,
                ..
            } = message
            {
                data[17] ^= 1;
                break;
            }
        }
        assert_eq!(run(flipped).err(), Some(CloneError::Digest));
        let mut garbled = messages.clone();
        for message in &mut garbled {
            if let Message::Pages {
                encoding: PageEncoding::Lz4,
                data,
                ..
            } = message
            {
                data.truncate(data.len() / 2);
                break;
            }
        }
        assert!(matches!(run(garbled), Err(CloneError::BadChunk { .. })));
        // A chunk beyond RAM, or off a boundary.
        for offset in [16 << 20, 100] {
            let mut wrong = messages.clone();
            wrong.insert(
                1,
                Message::Pages {
                    offset,
                    encoding: PageEncoding::Raw,
                    data: vec![1; CHUNK],
                },
            );
            assert!(matches!(run(wrong), Err(CloneError::BadChunk { .. })));
        }
        // RAM that does not match the machine, or absurd.
        for ram_size in [0, 32 << 20, u64::MAX] {
            let mut foreign = messages.clone();
            if let Message::CloneStart(start) = &mut foreign[0] {
                start.ram_size = ram_size;
            }
            assert_eq!(run(foreign).err(), Some(CloneError::RamSize(ram_size)));
        }
        // Pages before the start, a log in the middle.
        assert!(matches!(
            run(messages[1..].to_vec()),
            Err(CloneError::NoStart(_))
        ));
        let mut interleaved = messages.clone();
        interleaved.insert(1, Message::Heartbeat);
        assert!(matches!(run(interleaved), Err(CloneError::Unexpected(_))));
    }
}
