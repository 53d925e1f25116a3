//! A running VM's snapshot, streamed to a new backup over the logging
//! channel, sans-IO (ARCHITECTURE.md, "Cloning").
//!
//! Execution is deterministic, so a clone needs no iterative pre-copy: the
//! primary captures its machine at one icount, keeps logging from there,
//! and streams that snapshot while it runs on; the new backup restores it
//! and replays the log from the same icount. The stream is
//! [`Message::CloneStart`] (what machine, where its counters stand, the
//! hart and device state), then [`Message::Pages`] for every RAM chunk
//! that is not all zeroes (LZ4-compressed when that makes it smaller), then
//! [`Message::CloneEnd`] with the number of chunks sent and the snapshot's
//! digest. [`CloneSender`] makes the messages; [`CloneReceiver`] checks
//! every one (offsets, sizes, order, the digest) and builds the snapshot,
//! so a truncated, corrupt or foreign stream is one clear error and
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
}

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
    chunks_sent: u64,
    bytes_sent: u64,
    done: bool,
}

impl CloneSender {
    pub fn new(snapshot: Snapshot, start: CloneStart) -> CloneSender {
        CloneSender {
            snapshot,
            start: Some(start),
            offset: 0,
            chunks_sent: 0,
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

    /// The snapshot (its digest names the log's start), and its RAM
    /// buffer for reuse.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn into_snapshot(self) -> Snapshot {
        self.snapshot
    }

    /// The next message of the stream; `None` once [`Message::CloneEnd`]
    /// was given.
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
            let compressed = lz4_flex::block::compress(chunk);
            let (encoding, data) = if compressed.len() < chunk.len() {
                (PageEncoding::Lz4, compressed)
            } else {
                (PageEncoding::Raw, chunk.to_vec())
            };
            self.chunks_sent += 1;
            self.bytes_sent += data.len() as u64;
            return Some(Message::Pages {
                offset: offset as u64,
                encoding,
                data,
            });
        }
        if self.done {
            return None;
        }
        self.done = true;
        Some(Message::CloneEnd {
            chunks: self.chunks_sent,
            digest: self.snapshot.digest().0,
        })
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
}

/// A whole, checked clone.
pub struct Cloned {
    pub start: CloneStart,
    pub snapshot: Snapshot,
}

impl CloneReceiver {
    /// What the stream said it is, once its first message came.
    pub fn start(&self) -> Option<&CloneStart> {
        self.start.as_ref()
    }

    /// RAM bytes received so far, and in all.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.next_offset,
            self.start.as_ref().map_or(0, |s| s.ram_size),
        )
    }

    /// Take the next message; the clone once [`Message::CloneEnd`] arrived
    /// and everything checked. After an error the stream is unusable.
    pub fn receive(&mut self, message: Message) -> Result<Option<Cloned>, CloneError> {
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
            self.ram = vec![0; start.ram_size as usize];
            self.start = Some(*start);
            return Ok(None);
        };
        match message {
            Message::Pages {
                offset,
                encoding,
                data,
            } => {
                let bad = |why: String| CloneError::BadChunk { offset, why };
                if offset % CHUNK as u64 != 0 {
                    return Err(bad("not on a chunk boundary".into()));
                }
                if offset < self.next_offset {
                    return Err(bad("out of order or sent twice".into()));
                }
                if offset >= start.ram_size {
                    return Err(bad("beyond the end of RAM".into()));
                }
                let at = offset as usize;
                let len = CHUNK.min(self.ram.len() - at);
                let target = &mut self.ram[at..at + len];
                match encoding {
                    PageEncoding::Raw if data.len() == len => target.copy_from_slice(&data),
                    PageEncoding::Raw => {
                        return Err(bad(format!("{} bytes for a chunk of {len}", data.len())));
                    }
                    PageEncoding::Lz4 => {
                        let n = lz4_flex::block::decompress_into(&data, target)
                            .map_err(|e| bad(format!("does not decompress: {e}")))?;
                        if n != len {
                            return Err(bad(format!("decompresses to {n} bytes, not {len}")));
                        }
                    }
                }
                self.next_offset = offset + len as u64;
                self.chunks += 1;
                Ok(None)
            }
            Message::CloneEnd { chunks, digest } => {
                if chunks != self.chunks {
                    return Err(CloneError::Truncated {
                        got: self.chunks,
                        sent: chunks,
                    });
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
                Ok(Some(Cloned { start, snapshot }))
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
        (messages, m)
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
        let mut receiver = CloneReceiver::default();
        let mut cloned = None;
        for message in messages {
            assert!(cloned.is_none(), "nothing after the end");
            cloned = receiver.receive(message).expect("valid");
        }
        let cloned = cloned.expect("whole");
        assert_eq!(cloned.snapshot.digest(), m.digest());
        assert_eq!(cloned.snapshot.icount(), m.icount());
    }

    /// Every way a stream can be wrong is an error, never a panic or a
    /// wrong snapshot.
    #[test]
    fn truncated_reordered_corrupt_and_foreign_streams_are_refused() {
        let (messages, _) = stream();
        let run = |messages: Vec<Message>| -> Result<Option<Cloned>, CloneError> {
            let mut receiver = CloneReceiver::default();
            let mut last = None;
            for message in messages {
                last = receiver.receive(message)?;
            }
            Ok(last)
        };
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
