//! Golden bytes of the replay log: a log written from fixed values must be
//! exactly the bytes below, and those bytes must read back as the same
//! header and entries. Logs outlive the binary that wrote them (files on
//! disk, a backup of another version on the logging channel), so the byte
//! form may only change on purpose: together with `format::VERSION`, and
//! with the constants here regenerated (a failing test prints them).
//!
//! Bad logs in general are `log.rs`'s; here every single-bit flip of the
//! golden bytes must be an error that names the frame it is in.

use ftvm_board::virtio::DeviceKind;
use ftvm_board::{Digest, Engine, Firmware, Image, Input, IoStatus, MachineConfig};
use ftvm_replay::format::{FRAME_MAX, MAGIC, Position, VERSION};
use ftvm_replay::{
    End, Entry, Event, LogDecoder, LogError, LogHeader, LogReader, LogWriter, MachineId,
};

const CHANGED: &str = "THE REPLAY LOG FORMAT CHANGED (crates/replay/src/format.rs)";
const IF_INTENDED: &str = "If this change is intended, bump ftvm_replay::format::VERSION \
     (old logs must be refused, not misread) and update the golden constants in \
     crates/replay/tests/golden.rs";

// ---------------------------------------------------------------- golden bytes

/// `full_log()`: every event, every input, every I/O status and every end,
/// in four entry frames.
const GOLDEN_LOG: &str = concat!(
    "4654564d4c4f470004000000ee000000e91836a1800201162f676f6c64656e2f",
    "66775f64796e616d69632e62696e0ff026f01bab75bc3ae59bf15762cef8cdcc",
    "071e290643dd6c856c7c2ae2ce710f0d2f676f6c64656e2f496d61676513a41c",
    "5855bf688302995fa8590725a7b43919df701ff58dc02f2ac52f381bb7cf0113",
    "2f676f6c64656e2f696e697472642e6370696f0d1d273c385f5e8c6ef6fafc7c",
    "0779c9c217ca647424b03bafb19461135ae162c51c636f6e736f6c653d747479",
    "5330206561726c79636f6e20717569657419040080100102525400123456dc0b",
    "0301000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d",
    "1e1f170000008b48065c000400959a97ece39fe7cb170011610000ff019b02e8",
    "079d000000602ef055040294823d2a03010c05f3033c00010203040506070809",
    "0a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223242526272829",
    "2a2b2c2d2e2f303132333435363738393a3b0664010010a0a1a2a3a4a5a6a7a8",
    "a9aaabacadaeaf06640201000664ffffffffffffffffff010201000a640b32fe",
    "ffffff0f0732fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6",
    "e5e4e3e2e1e00e000000640dac370d08e80700050a0afbffffffff1f1c000000",
    "8fa10c84100900008180d4aa05090101ffffffffffffffffff01090102090103",
);

/// `minimal_log()`: the other engine, no firmware, no initrd, no devices,
/// an empty command line and a single entry.
const GOLDEN_MINIMAL_LOG: &str = concat!(
    "4654564d4c4f4700040000004a0000000b4e39161000016b00af1349b9f5f9a1",
    "a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f326200000100000000",
    "0000000000000000000000000000000000000000000000000000000000000400",
    "0000881427c600090003",
);

// ---------------------------------------------------------------- fixtures

fn image(path: &str, text: &str) -> Image {
    Image::new(path, text.as_bytes().to_vec())
}

/// Every field of a `MachineId` set, from fixed bytes.
fn full_config() -> MachineConfig {
    MachineConfig {
        memory_mib: 256,
        firmware: Firmware::File(image("/golden/fw_dynamic.bin", "golden firmware")),
        kernel: image("/golden/Image", "golden kernel image"),
        initrd: Some(image("/golden/initrd.cpio", "golden initrd")),
        append: "console=ttyS0 earlycon quiet".into(),
        insns_per_tick: 25,
        // Not part of the machine's identity: the header names the engine
        // that recorded.
        engine: Engine::Interpreter,
        virtio: vec![
            DeviceKind::Block { sectors: 2048 },
            DeviceKind::Entropy,
            DeviceKind::Net {
                mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
                mtu: 1500,
            },
            DeviceKind::Balloon,
        ],
    }
}

fn full_header() -> LogHeader {
    LogHeader {
        machine: MachineId::of(&full_config()),
        engine: Engine::Translator,
        initial_digest: std::array::from_fn(|i| i as u8),
    }
}

/// The entries of `full_log()`, frame by frame: (icount, event).
fn full_frames() -> Vec<Vec<(u64, Event)>> {
    let input = Event::Input;
    vec![
        vec![
            (
                0,
                input(Input::WallClock {
                    unix_ns: 1_700_000_000_123_456_789,
                }),
            ),
            (17, input(Input::ConsoleByte(b'a'))),
            // Same icount: a delta of 0.
            (17, input(Input::ConsoleByte(0xff))),
            (300, input(Input::IdleSleep { ticks: 1000 })),
        ],
        vec![
            (1_000_000, input(Input::GuestTimeStep { ticks: 42 })),
            (
                1_000_001,
                input(Input::GuestTimeRate { insns_per_tick: 12 }),
            ),
            (
                1_000_500,
                input(Input::NetReceive {
                    frame: (0..60).collect(),
                }),
            ),
            (
                1_000_600,
                input(Input::IoDone {
                    id: 1,
                    status: IoStatus::Ok,
                    data: (0..16).map(|i| 0xa0 | i).collect(),
                }),
            ),
            (
                1_000_700,
                input(Input::IoDone {
                    id: 2,
                    status: IoStatus::Error,
                    data: Vec::new(),
                }),
            ),
            (
                1_000_800,
                input(Input::IoDone {
                    id: u64::MAX,
                    status: IoStatus::Unsupported,
                    data: vec![0],
                }),
            ),
            (1_000_900, Event::Output),
            // A control entry: the balloon's target.
            (
                1_000_950,
                input(Input::BalloonTarget {
                    pages: u32::MAX - 1,
                }),
            ),
            (
                1_001_000,
                Event::Checkpoint(Digest(std::array::from_fn(|i| 0xff - i as u8))),
            ),
        ],
        vec![
            // Icounts start again from 0 after a reset.
            (1_002_000, Event::Reset),
            (5, input(Input::ConsoleByte(b'\n'))),
            // A delta of many varint bytes.
            (1 << 40, Event::Output),
        ],
        // Every way a recording ends. (One log holds one end; the byte
        // form does not care, and one log pins them all.)
        vec![
            (1 << 40, Event::End(End::PowerOff { code: 0x5555_0001 })),
            ((1 << 40) + 1, Event::End(End::HtifExit { code: u64::MAX })),
            ((1 << 40) + 2, Event::End(End::InsnLimit)),
            ((1 << 40) + 3, Event::End(End::Quit)),
        ],
    ]
}

fn minimal_header() -> LogHeader {
    let config = MachineConfig {
        memory_mib: 16,
        firmware: Firmware::None,
        kernel: image("k", ""),
        initrd: None,
        append: String::new(),
        insns_per_tick: 1,
        engine: Engine::Interpreter,
        virtio: Vec::new(),
    };
    LogHeader {
        machine: MachineId::of(&config),
        engine: Engine::Interpreter,
        initial_digest: [0; 32],
    }
}

fn minimal_frames() -> Vec<Vec<(u64, Event)>> {
    vec![vec![(0, Event::End(End::Quit))]]
}

/// Write `frames` through a `LogWriter`, flushing after each frame.
fn write(header: &LogHeader, frames: &[Vec<(u64, Event)>]) -> Vec<u8> {
    let mut writer = LogWriter::new(Vec::new(), header).expect("the header encodes");
    let mut seq = 0;
    for frame in frames {
        for (icount, event) in frame {
            let pushed = writer.push(*icount, event).expect("the entry encodes");
            assert_eq!(pushed, seq, "sequence numbers are consecutive from 0");
            seq += 1;
        }
        writer.flush().expect("writing to memory");
    }
    assert_eq!(writer.entries(), seq);
    let written = writer.bytes();
    let bytes = writer.into_inner().expect("writing to memory");
    assert_eq!(written, bytes.len() as u64, "LogWriter::bytes");
    bytes
}

/// The entries `frames` must read back as.
fn entries(frames: &[Vec<(u64, Event)>]) -> Vec<Entry> {
    frames
        .iter()
        .flatten()
        .zip(0..)
        .map(|((icount, event), seq)| Entry {
            seq,
            icount: *icount,
            event: event.clone(),
        })
        .collect()
}

// ---------------------------------------------------------------- helpers

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd number of hex digits");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("a hex constant"))
        .collect()
}

/// `bytes` as a Rust constant to paste over the old one.
fn as_constant(name: &str, bytes: &[u8]) -> String {
    let mut out = format!("const {name}: &str = concat!(\n");
    for line in bytes.chunks(32) {
        out += &format!("    \"{}\",\n", hex(line));
    }
    out + ");"
}

/// Fail, naming the change, unless `actual` is the golden constant `name`.
fn assert_golden(name: &str, golden: &str, actual: &[u8]) {
    let expected = unhex(golden);
    if expected == actual {
        return;
    }
    let first = expected
        .iter()
        .zip(actual)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(actual.len()));
    panic!(
        "{CHANGED}: the bytes written differ from {name} from byte {first} on \
         ({} bytes expected, {} written).\n{IF_INTENDED}; the new constant is:\n\n{}\n",
        expected.len(),
        actual.len(),
        as_constant(name, actual),
    );
}

fn golden_log() -> Vec<u8> {
    unhex(GOLDEN_LOG)
}

/// Every entry of `bytes`, and how reading ended.
fn read_all(bytes: &[u8]) -> (Vec<Entry>, Result<LogHeader, LogError>) {
    let mut reader = match LogReader::open(bytes) {
        Ok(reader) => reader,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut got = Vec::new();
    loop {
        match reader.next() {
            Ok(Some(entry)) => got.push(entry),
            Ok(None) => return (got, Ok(reader.header().clone())),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// Decode `bytes` with a `LogDecoder` fed `piece` bytes at a time.
fn decode_in_pieces(bytes: &[u8], piece: usize) -> (Option<LogHeader>, Vec<Entry>) {
    let mut decoder = LogDecoder::default();
    let mut got = Vec::new();
    for chunk in bytes.chunks(piece) {
        decoder.push(chunk);
        while let Some(entry) = decoder.next().expect("the golden log is valid") {
            got.push(entry);
        }
    }
    decoder
        .finish()
        .expect("the golden log ends on a frame boundary");
    let header = decoder.header().expect("the golden log is valid").cloned();
    (header, got)
}

/// (offset, length) of each frame after the 12 bytes of magic and version:
/// the header's first.
fn frames_of(log: &[u8]) -> Vec<(usize, usize)> {
    let mut at = 12;
    let mut out = Vec::new();
    while at < log.len() {
        let len = u32::from_le_bytes(log[at..at + 4].try_into().expect("4 bytes")) as usize;
        out.push((at, 8 + len));
        at += 8 + len;
    }
    assert_eq!(at, log.len(), "the golden log ends on a frame boundary");
    out
}

// ---------------------------------------------------------------- tests

#[test]
fn the_magic_version_and_frame_limit_are_pinned() {
    assert_eq!(
        MAGIC, b"FTVMLOG\0",
        "{CHANGED}: MAGIC. Old logs would no longer be recognised as logs."
    );
    assert_eq!(
        VERSION, 4,
        "{CHANGED}: VERSION was bumped. Update this test and the golden constants in \
         crates/replay/tests/golden.rs (the failing tests print them)."
    );
    assert_eq!(
        FRAME_MAX,
        64 << 20,
        "{CHANGED}: FRAME_MAX. A reader with a lower limit refuses a writer's larger frames. \
         {IF_INTENDED}"
    );
    let log = golden_log();
    assert_eq!(
        &log[..8],
        MAGIC,
        "{CHANGED}: the log does not start with MAGIC"
    );
    assert_eq!(
        log[8..12],
        VERSION.to_le_bytes(),
        "{CHANGED}: the version after the magic is not VERSION as a u32le"
    );
}

#[test]
fn a_log_of_every_entry_kind_is_written_as_the_golden_bytes() {
    let bytes = write(&full_header(), &full_frames());
    assert_golden("GOLDEN_LOG", GOLDEN_LOG, &bytes);
    // One frame for the header, one per flush.
    assert_eq!(frames_of(&bytes).len(), 1 + full_frames().len());
}

#[test]
fn a_minimal_log_is_written_as_the_golden_bytes() {
    let bytes = write(&minimal_header(), &minimal_frames());
    assert_golden("GOLDEN_MINIMAL_LOG", GOLDEN_MINIMAL_LOG, &bytes);
}

#[test]
fn the_golden_bytes_read_back_as_the_same_header_and_entries() {
    for (name, golden, header, frames) in [
        ("GOLDEN_LOG", GOLDEN_LOG, full_header(), full_frames()),
        (
            "GOLDEN_MINIMAL_LOG",
            GOLDEN_MINIMAL_LOG,
            minimal_header(),
            minimal_frames(),
        ),
    ] {
        let bytes = unhex(golden);
        let expected = entries(&frames);
        let (got, read) = read_all(&bytes);
        let read = read.unwrap_or_else(|e| {
            panic!("{CHANGED}: {name} no longer reads with LogReader: {e}. {IF_INTENDED}")
        });
        assert_eq!(
            read, header,
            "{CHANGED}: {name}'s header reads back differently. {IF_INTENDED}"
        );
        assert_eq!(
            got, expected,
            "{CHANGED}: {name}'s entries read back differently. {IF_INTENDED}"
        );
        for piece in [1, 2, 3, 7, 64, bytes.len()] {
            let (decoded_header, decoded) = decode_in_pieces(&bytes, piece);
            assert_eq!(
                decoded_header.as_ref(),
                Some(&header),
                "{CHANGED}: {name}'s header decodes differently in pieces of {piece}. \
                 {IF_INTENDED}"
            );
            assert_eq!(
                decoded, expected,
                "{CHANGED}: {name}'s entries decode differently in pieces of {piece}. \
                 {IF_INTENDED}"
            );
        }
    }
}

#[test]
fn every_flipped_bit_of_the_golden_log_is_an_error_naming_its_frame() {
    let log = golden_log();
    let good = entries(&full_frames());
    let frames = frames_of(&log);
    // The first sequence number of each entry frame.
    let firsts: Vec<u64> = full_frames()
        .iter()
        .scan(0, |seq, frame| {
            let first = *seq;
            *seq += frame.len() as u64;
            Some(first)
        })
        .collect();
    for at in 0..log.len() {
        for bit in 0..8 {
            let mut bad = log.clone();
            bad[at] ^= 1 << bit;
            let (got, result) = read_all(&bad);
            let err = match result {
                Ok(_) => panic!("flipping bit {bit} of byte {at} went unnoticed"),
                Err(e) => e,
            };
            if at < 8 {
                assert!(matches!(err, LogError::NotALog), "byte {at}: {err}");
                continue;
            }
            if at < 12 {
                assert!(matches!(err, LogError::Version { .. }), "byte {at}: {err}");
                continue;
            }
            let frame = frames
                .iter()
                .position(|&(start, len)| at < start + len)
                .expect("every byte after the version is in a frame");
            let expected = match frame {
                0 => Position::Header,
                k => Position::Entry {
                    seq: firsts[k - 1],
                    offset: frames[k].0 as u64,
                },
            };
            let at_position = match &err {
                LogError::Truncated { at } | LogError::Checksum { at } => *at,
                LogError::Malformed { at, .. } => *at,
                other => panic!("bit {bit} of byte {at}: {other}, not naming a position"),
            };
            assert_eq!(at_position, expected, "bit {bit} of byte {at}: {err}");
            assert!(
                err.to_string().contains(&expected.to_string()),
                "bit {bit} of byte {at}: {err}"
            );
            // The frames before the bad one read as they are.
            let before = match expected {
                Position::Header => 0,
                Position::Entry { seq, .. } => seq as usize,
            };
            assert_eq!(got, good[..before], "bit {bit} of byte {at}");
        }
    }
}
