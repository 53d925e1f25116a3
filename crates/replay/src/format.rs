//! The log's byte form, the same in a file and on a logging channel.
//!
//! ```text
//! log    = "FTVMLOG\0" version:u32le frame(header) frame(entries)*
//! frame  = len:u32le crc32c(payload):u32le payload
//! header = postcard(LogHeader)
//! entries= first_seq:varint entry+            (sequence numbers are consecutive)
//! entry  = postcard(Wire): kind, icount delta, fields
//! ```
//!
//! Entries are batched into frames so the 8 bytes of framing are paid once
//! per flush, not per entry. Each entry stores its icount as the distance
//! from the previous entry's (a varint of a byte or three), and a `Reset`
//! entry restarts icounts at 0 because the machine is rebuilt.

use ftvm_board::virtio::DeviceKind;
use ftvm_board::{Digest, Engine, Firmware, Image, ImageSource, Input, IoStatus, MachineConfig};
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"FTVMLOG\0";
/// 2: the balloon's target (`Input::BalloonTarget`), a control entry.
/// 3: checkpoint digests hash RAM as a tree of pages (`Machine::digest`).
/// 4: the machine's configuration gives a network card's MTU.
pub const VERSION: u32 = 4;
/// No frame is larger; a corrupt length cannot make the reader allocate
/// more than this.
pub const FRAME_MAX: u32 = 64 << 20;
/// A frame is written once its entries reach this size.
const FRAME_TARGET: usize = 256 << 10;

/// Where in a log something went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    Header,
    /// The entry with this sequence number (or the frame that should start
    /// with it), and the byte offset of its frame.
    Entry {
        seq: u64,
        offset: u64,
    },
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Header => f.write_str("the header"),
            Position::Entry { seq, offset } => write!(f, "entry {seq} (frame at byte {offset})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the file is empty: not an ftvm log")]
    Empty,
    #[error("not an ftvm log (it does not start with \"FTVMLOG\")")]
    NotALog,
    #[error("log format version {found}, but this ftvm reads version {VERSION}")]
    Version { found: u32 },
    #[error("the log is truncated in {at}")]
    Truncated { at: Position },
    #[error("the log is corrupt: checksum mismatch in {at}")]
    Checksum { at: Position },
    #[error("the log is corrupt: {at} cannot be decoded ({reason})")]
    Malformed { at: Position, reason: String },
    #[error(
        "the log is corrupt: frame at byte {offset} starts with entry {found}, expected entry {expected}"
    )]
    Sequence {
        expected: u64,
        found: u64,
        offset: u64,
    },
    #[error("the log is truncated: it ends before entry {next}, with no end-of-recording entry")]
    NoEnd { next: u64 },
    #[error("{what} {path} changed since the log was recorded ({reason})")]
    FileChanged {
        what: &'static str,
        path: String,
        reason: String,
    },
    // The cause in the message, not a `#[source]`: one line, said once.
    #[error("reading {what} {path}: {error}")]
    File {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("cannot write entry {seq}: {reason}")]
    Encode { seq: u64, reason: String },
    #[error("the log reader stopped at an earlier error")]
    Stopped,
    #[error("log I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A file the machine was built from, identified by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: String,
    pub len: u64,
    pub blake3: [u8; 32],
}

impl FileId {
    fn of(image: &Image) -> FileId {
        FileId {
            path: image.path.display().to_string(),
            len: image.bytes.len() as u64,
            blake3: *blake3::hash(&image.bytes).as_bytes(),
        }
    }

    /// Read the file again from `source`: it must be what was recorded.
    fn load(&self, what: &'static str, source: &dyn ImageSource) -> Result<Image, LogError> {
        let path = std::path::Path::new(&self.path);
        let bytes = source.read(path).map_err(|error| LogError::File {
            what,
            path: self.path.clone(),
            error,
        })?;
        let image = Image::new(path, bytes);
        let now = FileId::of(&image);
        if now != *self {
            let reason = if now.len != self.len {
                format!("{} bytes then, {} now", self.len, now.len)
            } else {
                "same size, different content".into()
            };
            return Err(LogError::FileChanged {
                what,
                path: self.path.clone(),
                reason,
            });
        }
        Ok(image)
    }
}

/// The machine configuration a log was recorded on: enough to build the
/// same machine again, with the content of every file it was loaded from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineId {
    pub memory_mib: u64,
    pub firmware: Option<FileId>,
    pub kernel: FileId,
    pub initrd: Option<FileId>,
    pub append: String,
    pub insns_per_tick: u64,
    pub virtio: Vec<DeviceKind>,
}

impl MachineId {
    /// Identify `config`: its settings and the content of its images.
    pub fn of(config: &MachineConfig) -> MachineId {
        MachineId {
            memory_mib: config.memory_mib,
            firmware: match &config.firmware {
                Firmware::None => None,
                Firmware::File(image) => Some(FileId::of(image)),
            },
            kernel: FileId::of(&config.kernel),
            initrd: config.initrd.as_ref().map(FileId::of),
            append: config.append.clone(),
            insns_per_tick: config.insns_per_tick,
            virtio: config.virtio.clone(),
        }
    }

    /// The configuration to build this machine again with `engine`, its
    /// images read from `source`; a file that is not what was recorded is
    /// an error that names it.
    pub fn config(
        &self,
        engine: Engine,
        source: &dyn ImageSource,
    ) -> Result<MachineConfig, LogError> {
        Ok(MachineConfig {
            memory_mib: self.memory_mib,
            firmware: match &self.firmware {
                None => Firmware::None,
                Some(fw) => Firmware::File(fw.load("firmware", source)?),
            },
            kernel: self.kernel.load("kernel", source)?,
            initrd: self
                .initrd
                .as_ref()
                .map(|f| f.load("initrd", source))
                .transpose()?,
            append: self.append.clone(),
            insns_per_tick: self.insns_per_tick,
            engine,
            virtio: self.virtio.clone(),
        })
    }
}

/// The first frame of a log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHeader {
    pub machine: MachineId,
    /// The engine that recorded (replay may use another; the narrowing of
    /// a divergence compares the two).
    pub engine: Engine,
    /// Digest of the machine's state before the first instruction.
    pub initial_digest: [u8; 32],
}

/// Why a recording ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum End {
    PowerOff {
        code: u32,
    },
    HtifExit {
        code: u64,
    },
    /// The instruction limit of the run was reached.
    InsnLimit,
    /// The user stopped the run.
    Quit,
}

/// What an entry records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A non-deterministic input, applied at the entry's icount.
    Input(Input),
    /// The state digest at the entry's icount, after the entries before it.
    Checkpoint(Digest),
    /// Control: the guest asked for a reset; the machine is built anew and
    /// icounts start again from 0.
    Reset,
    /// Control: the recording ends here.
    End(End),
    /// Control: an FT primary produced output (console bytes, a frame, a
    /// disk write) in the instructions up to here. The output leaves only
    /// once the backup holds this entry, and a backup that goes live runs
    /// at least to this icount before it takes any input of its own, so it
    /// re-produces exactly the output the world may have seen.
    Output,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub icount: u64,
    pub event: Event,
}

/// The encoded form of an entry: the icount distance first in every kind.
///
/// A frame's or a read's bytes go through serde as bytes: serde writes a
/// plain `&[u8]` as a sequence, a call per byte, and a 64 KiB frame cost
/// the primary 0.1 ms to log. postcard writes both the same way (a
/// length, then the bytes; the golden tests hold it).
#[derive(Serialize, Deserialize)]
enum Wire<'a> {
    ConsoleByte(u64, u8),
    IdleSleep(u64, u64),
    GuestTimeStep(u64, u64),
    GuestTimeRate(u64, u64),
    WallClock(u64, u64),
    NetReceive(u64, #[serde(borrow, with = "serde_bytes")] &'a [u8]),
    IoDone(
        u64,
        u64,
        IoStatus,
        #[serde(borrow, with = "serde_bytes")] &'a [u8],
    ),
    Checkpoint(u64, [u8; 32]),
    Reset(u64),
    End(u64, End),
    Output(u64),
    BalloonTarget(u64, u32),
}

impl<'a> Wire<'a> {
    fn encode(delta: u64, event: &'a Event) -> Wire<'a> {
        match event {
            Event::Input(input) => match input {
                Input::ConsoleByte(b) => Wire::ConsoleByte(delta, *b),
                Input::IdleSleep { ticks } => Wire::IdleSleep(delta, *ticks),
                Input::GuestTimeStep { ticks } => Wire::GuestTimeStep(delta, *ticks),
                Input::GuestTimeRate { insns_per_tick } => {
                    Wire::GuestTimeRate(delta, *insns_per_tick)
                }
                Input::WallClock { unix_ns } => Wire::WallClock(delta, *unix_ns),
                Input::NetReceive { frame } => Wire::NetReceive(delta, frame),
                Input::IoDone { id, status, data } => Wire::IoDone(delta, *id, *status, data),
                Input::BalloonTarget { pages } => Wire::BalloonTarget(delta, *pages),
            },
            Event::Checkpoint(d) => Wire::Checkpoint(delta, d.0),
            Event::Reset => Wire::Reset(delta),
            Event::End(end) => Wire::End(delta, *end),
            Event::Output => Wire::Output(delta),
        }
    }

    fn decode(self) -> (u64, Event) {
        let input = |i| Event::Input(i);
        match self {
            Wire::ConsoleByte(d, b) => (d, input(Input::ConsoleByte(b))),
            Wire::IdleSleep(d, ticks) => (d, input(Input::IdleSleep { ticks })),
            Wire::GuestTimeStep(d, ticks) => (d, input(Input::GuestTimeStep { ticks })),
            Wire::GuestTimeRate(d, insns_per_tick) => {
                (d, input(Input::GuestTimeRate { insns_per_tick }))
            }
            Wire::WallClock(d, unix_ns) => (d, input(Input::WallClock { unix_ns })),
            Wire::NetReceive(d, frame) => (
                d,
                input(Input::NetReceive {
                    frame: frame.to_vec(),
                }),
            ),
            Wire::IoDone(d, id, status, data) => (
                d,
                input(Input::IoDone {
                    id,
                    status,
                    data: data.to_vec(),
                }),
            ),
            Wire::Checkpoint(d, digest) => (d, Event::Checkpoint(Digest(digest))),
            Wire::Reset(d) => (d, Event::Reset),
            Wire::End(d, end) => (d, Event::End(end)),
            Wire::Output(d) => (d, Event::Output),
            Wire::BalloonTarget(d, pages) => (d, input(Input::BalloonTarget { pages })),
        }
    }
}

/// The 8 bytes before a frame's payload: its length and its CRC32C.
pub fn frame_header(payload: &[u8]) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[4..].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    h
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

mod reader;
mod writer;

pub use reader::{LogDecoder, LogReader};
pub use writer::LogWriter;

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> LogHeader {
        LogHeader {
            machine: MachineId {
                memory_mib: 16,
                firmware: None,
                kernel: FileId {
                    path: "k".into(),
                    len: 1,
                    blake3: [1; 32],
                },
                initrd: None,
                append: String::new(),
                insns_per_tick: 10,
                virtio: vec![DeviceKind::Entropy],
            },
            engine: Engine::Interpreter,
            initial_digest: [7; 32],
        }
    }

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, u64::MAX >> 1, u64::MAX] {
            let mut out = Vec::new();
            varint(v, &mut out);
            assert_eq!(read_varint(&out), Some((v, out.len())));
        }
        assert_eq!(read_varint(&[0x80; 11]), None);
    }

    #[test]
    fn entries_round_trip_across_frames_and_resets() {
        let events = [
            (5, Event::Input(Input::ConsoleByte(b'x'))),
            (5, Event::Input(Input::IdleSleep { ticks: 1000 })),
            (90, Event::Checkpoint(Digest([3; 32]))),
            (
                100,
                Event::Input(Input::IoDone {
                    id: 4,
                    status: IoStatus::Ok,
                    data: vec![1, 2, 3],
                }),
            ),
            (150, Event::Input(Input::BalloonTarget { pages: 8192 })),
            (200, Event::Reset),
            (3, Event::Input(Input::NetReceive { frame: vec![9; 60] })),
            (
                4,
                Event::Input(Input::GuestTimeRate {
                    insns_per_tick: 250,
                }),
            ),
            (9, Event::End(End::PowerOff { code: 0 })),
        ];
        let mut w = LogWriter::new(Vec::new(), &header()).expect("header");
        for (i, (icount, event)) in events.iter().enumerate() {
            assert_eq!(w.push(*icount, event).expect("push"), i as u64);
            if i % 3 == 2 {
                w.flush().expect("flush");
            }
        }
        let bytes = w.into_inner().expect("flush");
        let mut r = LogReader::open(&bytes[..]).expect("open");
        assert_eq!(r.header(), &header());
        for (i, (icount, event)) in events.iter().enumerate() {
            let e = r.next().expect("entry").expect("present");
            assert_eq!((e.seq, e.icount, &e.event), (i as u64, *icount, event));
        }
        assert!(r.next().expect("end").is_none());
    }

    /// A log whose header comes later holds its frames until then, and
    /// the bytes are those of a log written with the header at once.
    #[test]
    fn a_deferred_header_gives_the_same_bytes() {
        let events: Vec<(u64, Event)> = (0..3000u64)
            .map(|i| (1_000_000 + i * 7, Event::Input(Input::ConsoleByte(i as u8))))
            .collect();
        let mut now = LogWriter::new(Vec::new(), &header()).expect("header");
        let mut later = LogWriter::deferred(Vec::new());
        for (icount, event) in &events {
            now.push(*icount, event).expect("push");
            later.push(*icount, event).expect("push");
        }
        later.flush().expect("flush");
        assert!(later.get_ref().is_empty(), "nothing before the header");
        assert!(!later.has_header());
        later.write_header(&header()).expect("header");
        assert!(later.write_header(&header()).is_err(), "once only");
        assert_eq!(now.bytes(), later.bytes());
        assert_eq!(
            now.into_inner().expect("flush"),
            later.into_inner().expect("flush")
        );
    }

    #[test]
    fn going_back_in_icount_is_refused_by_the_writer_and_changes_nothing() {
        let mut w = LogWriter::new(Vec::new(), &header()).expect("header");
        w.push(10, &Event::Reset).expect("push");
        w.push(10, &Event::Input(Input::ConsoleByte(1)))
            .expect("after a reset, 10 is forward");
        assert!(w.push(9, &Event::Input(Input::ConsoleByte(1))).is_err());
        assert_eq!(w.push(11, &Event::End(End::Quit)).expect("push"), 2);
        let bytes = w.into_inner().expect("flush");
        let mut r = LogReader::open(&bytes[..]).expect("open");
        let seqs: Vec<u64> = std::iter::from_fn(|| r.next().expect("valid"))
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [0, 1, 2]);
    }

    #[test]
    fn the_decoder_takes_the_log_in_pieces_of_any_size() {
        let mut w = LogWriter::new(Vec::new(), &header()).expect("header");
        for i in 0..50u64 {
            w.push(
                i * 7,
                &Event::Input(Input::NetReceive {
                    frame: vec![i as u8; 90],
                }),
            )
            .expect("push");
            if i % 7 == 0 {
                w.flush().expect("flush");
            }
        }
        let bytes = w.into_inner().expect("flush");
        for piece in [1, 5, 64, bytes.len()] {
            let mut d = LogDecoder::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(piece) {
                d.push(chunk);
                while let Some(e) = d.next().expect("valid") {
                    got.push(e.seq);
                }
            }
            assert_eq!(got, (0..50).collect::<Vec<_>>(), "pieces of {piece}");
            assert_eq!(d.header().expect("header"), Some(&header()));
            d.finish().expect("ends on a frame boundary");
        }
        // Cut inside a frame: the entries before it, then a truncation
        // naming the first entry of the cut frame.
        let mut d = LogDecoder::default();
        d.push(&bytes[..bytes.len() - 3]);
        while d.next().expect("valid").is_some() {}
        let first_missing = d.next_seq();
        assert!(matches!(
            d.finish(),
            Err(LogError::Truncated { at: Position::Entry { seq, .. } }) if seq == first_missing
        ));
    }

    #[test]
    fn a_reader_stops_for_good_at_its_first_error() {
        let mut w = LogWriter::new(Vec::new(), &header()).expect("header");
        w.push(1, &Event::Input(Input::ConsoleByte(1)))
            .expect("push");
        let mut bytes = w.into_inner().expect("flush");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let mut r = LogReader::open(&bytes[..]).expect("open");
        assert!(matches!(r.next(), Err(LogError::Checksum { .. })));
        assert!(matches!(r.next(), Err(LogError::Stopped)));
    }
}
