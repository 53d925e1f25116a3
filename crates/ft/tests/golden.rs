//! Golden bytes of the logging channel: a handshake with a fixed key and
//! fixed nonces, run through the real code, must put exactly the frames
//! below on the wire, and one message of every kind sealed in each
//! direction must be exactly the bytes below and open on the other side
//! as the same message. Primary and backup may run different builds
//! (an upgrade of one host at a time), so the byte form may only change on
//! purpose, together with the channel's version and with the constants
//! here regenerated (a failing test prints them).
//!
//! Every `Hello` starts with `CHANNEL_VERSION`, pinned here too, so a peer
//! of another version is told so at the handshake instead of misreading
//! frames.

use ftvm_board::{DeviceKind, Engine};
use ftvm_ft::channel::{
    self, CHANNEL_FRAME_MAX, CHANNEL_VERSION, ChannelError, FrameDecoder, HANDSHAKE_FRAME_MAX,
    Handshake, Message, Role, Session, Step, channel_key,
};
use ftvm_ft::clone::{CloneStart, PageEncoding};
use ftvm_replay::format::{FRAME_MAX, FileId, MachineId, frame_header};

const CHANGED: &str = "THE LOGGING CHANNEL FORMAT CHANGED (crates/ft/src/channel.rs)";
const IF_INTENDED: &str = "If this change is intended, bump CHANNEL_VERSION in \
     crates/ft/src/channel.rs (every Hello carries it, so peers of different versions refuse \
     each other by name rather than misread frames) and update the golden constants in \
     crates/ft/tests/golden.rs";

const SECRET: &[u8] = b"ftvm golden-bytes test secret (not a real one)";
const PAIR: &str = "vm-golden";
const EPOCH: u64 = 7;

// ---------------------------------------------------------------- golden bytes

/// `channel_key(SECRET)`.
const GOLDEN_KEY: &str = "0b6058b08fcf89b82bde9d25129195257764c9270a5bedf978fdead2fb93b701";

/// The handshake's frames, as `channel::encode` puts them on the wire.
const GOLDEN_PRIMARY_HELLO: &str = concat!(
    "1e000000a2b5f85800030009766d2d676f6c64656e0710111213141516171819",
    "1a1b1c1d1e1f",
);
const GOLDEN_BACKUP_HELLO: &str = concat!(
    "1e000000f4fa547f00030109766d2d676f6c64656e07e0e1e2e3e4e5e6e7e8e9",
    "eaebecedeeef",
);
const GOLDEN_PRIMARY_PROOF: &str = concat!(
    "21000000f54f84780121db2b58f3cf45d08bcf94f322a0db8a9ae174d1d39219",
    "cb623b70091074d693",
);
const GOLDEN_BACKUP_PROOF: &str = concat!(
    "2100000063a52eeb0179fbce790b06752ecf2888214a8159d626efa9373fe313",
    "1f2bd03dac7ed7c932",
);

/// `messages(Role::Primary)` sealed by the primary, in order.
const GOLDEN_SEALED_BY_PRIMARY: [&str; KINDS] = [
    // Hello
    concat!(
        "3e000000d6f3882000030009766d2d676f6c64656e0710111213141516171819",
        "1a1b1c1d1e1fdafa11f96ec46ae147ddcff7abea56d12d5ddf2a17acfd5c3286",
        "70c6f6438cad",
    ),
    // Proof
    concat!(
        "410000007c69925d01000102030405060708090a0b0c0d0e0f10111213141516",
        "1718191a1b1c1d1e1faab54267e74944c224cf1fd59ca0e5751654df1d732b09",
        "953898fffd9645d877",
    ),
    // Entries
    concat!(
        "52000000518beab4023000050a0f14191e23282d32373c41464b50555a5f6469",
        "6e73787d82878c91969ba0a5aaafb4b9bec3c8cdd2d7dce1e6ebe3211a1cfe8e",
        "775a20ede7e0ad90f9b5d255f48b3f49581e0a23c0a7fe923b86",
    ),
    // Ack
    concat!(
        "29000000e1ca74da03d209808080808020626000be29c95cc7374bdad24e752a",
        "7d5017030595ec237151187207c7042f89",
    ),
    // Heartbeat
    concat!(
        "210000006fa09dab049d468b1cbe91f7b78016bf2d4d1af37867ca263c6f5328",
        "9920a417bddf3f57d1",
    ),
    // Released
    concat!(
        "240000002542a9d505cd8306056bef7c2fb9280a67e24022d124779496feeb93",
        "03811f2bacd0ddc13f1e4908",
    ),
    // CloneStart
    concat!(
        "cb00000082886b83068001010666772e62696e80200101010101010101010101",
        "01010101010101010101010101010101010101010105496d6167658080400202",
        "020202020202020202020202020202020202020202020202020202020202000d",
        "636f6e736f6c653d747479533064020080100202000000000000808080402800",
        "0306090c0f1215181b1e2124272a2d303336393c3f4245484b4e5154575a5d60",
        "6366696c6f727580e497d012e1210180808020c69e300a62c26091ecf9e20d74",
        "c996c79f6e6993b9ec66b913da3c42141703e4",
    ),
    // Pages
    concat!(
        "3e0000005aef510e07808004011800070e151c232a31383f464d545b62697077",
        "7e858c939aa1c62131f6fb3d5d3ef0d385615e0285993d2a0d082fcb5a2840a4",
        "9e5521509e16",
    ),
    // DiskPages
    concat!(
        "3600000002faab0c0880800c0010000b16212c37424d58636e79848f9aa5a0a9",
        "b9494e6a7fe98e6f1f603cf4cb3de7d7650b0f217899b4019d233d0ba0a5",
    ),
    // CloneEnd
    concat!(
        "64000000511f6fd1094d000102030405060708090a0b0c0d0e0f101112131415",
        "161718191a1b1c1d1e1f050100020406080a0c0e10121416181a1c1e20222426",
        "282a2c2e30323436383a3c3ea090745df4ad0d6d0cce63e88c5cfdac438b39b1",
        "e06b4168af79ea2c0802b433",
    ),
    // Protected
    concat!(
        "2300000062522bc80ae707b52292c34e6a76a6565d322e7addbb104b4573e216",
        "496c8e6fa6f6d90d5e5933",
    ),
];
/// `messages(Role::Backup)` sealed by the backup, in order.
const GOLDEN_SEALED_BY_BACKUP: [&str; KINDS] = [
    // Hello
    concat!(
        "3e00000033076f0c00030109766d2d676f6c64656e07e0e1e2e3e4e5e6e7e8e9",
        "eaebecedeeefe94bd3019797c2ef4a17bce5d459b19e6287717ff40483523386",
        "edd9749f5b8b",
    ),
    // Proof
    concat!(
        "41000000a97f112901808182838485868788898a8b8c8d8e8f90919293949596",
        "9798999a9b9c9d9e9f229a8aa67cc6126c5129313b77f60728fa39b28a9aee2c",
        "990db3b4435d7ea407",
    ),
    // Entries
    concat!(
        "5200000053cac2f2023080858a8f94999ea3a8adb2b7bcc1c6cbd0d5dadfe4e9",
        "eef3f8fd02070c11161b20252a2f34393e43484d52575c61666b59b711e82313",
        "bae2070dbb9cdfd6ac580c629d10f241f147952b409185248eda",
    ),
    // Ack
    concat!(
        "290000000add557003d20a8081808080209e6e9f3c77d1d247d7605433fea0fa",
        "39e85c4737e988253670fcddeb88fbc4d1",
    ),
    // Heartbeat
    concat!(
        "21000000635d440c0465fee705d9386d0580decaad76f464de944ab9be2ed468",
        "587a325cd28347ef74",
    ),
    // Released
    concat!(
        "24000000a2f8473f05cd8406c75f6152d6da5d78271f72ee5523645f79e66fbc",
        "d536bf61f434c8e32594987c",
    ),
    // CloneStart
    concat!(
        "cb000000ebc40cfb068001010666772e62696e80208181818181818181818181",
        "81818181818181818181818181818181818181818105496d6167658080408282",
        "828282828282828282828282828282828282828282828282828282828282000d",
        "636f6e736f6c653d747479533064020080100202000000008000808080402880",
        "8386898c8f9295989b9ea1a4a7aaadb0b3b6b9bcbfc2c5c8cbced1d4d7dadde0",
        "e3e6e9eceff2f580e597d012e1220180808020f7ae686584799a421ec4f54846",
        "433d6750b88e8e68d007101cd04a43eb8624ba",
    ),
    // Pages
    concat!(
        "3e00000005ac5c0107808004011880878e959ca3aab1b8bfc6cdd4dbe2e9f0f7",
        "fe050c131a21a5f15f210fcca623880f7c0f58e8b6014942045ac812d232beac",
        "b349b33a5352",
    ),
    // DiskPages
    concat!(
        "36000000f66acce80880800c0010808b96a1acb7c2cdd8e3eef9040f1a253dd6",
        "97dade4d7e4103abbaddfa8a0a1dd2e41147616ffb65039111df42d12a99",
    ),
    // CloneEnd
    concat!(
        "66000000679df29b09cd01808182838485868788898a8b8c8d8e8f9091929394",
        "95969798999a9b9c9d9e9f85010180828486888a8c8e90929496989a9c9ea0a2",
        "a4a6a8aaacaeb0b2b4b6b8babcbe9dc8989e0cc7fb37c28159e21ea109c6de1e",
        "18c8fd57452b4d67b9d5bb142e57",
    ),
    // Protected
    concat!(
        "230000001a195a020ae70865aedddf598c2b377e7129e63a42ceffc5d350615b",
        "102bc3a71eecee8e4f96cf",
    ),
];

// ---------------------------------------------------------------- fixtures

const KINDS: usize = 11;

fn nonce(role: Role) -> [u8; 16] {
    std::array::from_fn(|i| match role {
        Role::Primary => 0x10 + i as u8,
        Role::Backup => 0xe0 + i as u8,
    })
}

/// One message of every kind, as `from` would seal it (Hello and Proof
/// are never sealed today, but their bodies are part of the format).
fn messages(from: Role) -> [Message; KINDS] {
    let salt = match from {
        Role::Primary => 0x00,
        Role::Backup => 0x80,
    };
    let messages = [
        Message::Hello {
            version: CHANNEL_VERSION,
            role: from,
            pair: PAIR.into(),
            epoch: EPOCH,
            nonce: nonce(from),
        },
        Message::Proof {
            mac: std::array::from_fn(|i| salt | i as u8),
        },
        Message::Entries {
            log: (0..48).map(|i| salt ^ (i * 5) as u8).collect(),
        },
        Message::Ack {
            through: 1234 + u64::from(salt),
            icount: (1 << 40) + u64::from(salt),
        },
        Message::Heartbeat,
        Message::Released {
            console: 98_765 + u64::from(salt),
        },
        Message::CloneStart(Box::new(CloneStart {
            machine: MachineId {
                memory_mib: 128,
                firmware: Some(FileId {
                    path: "fw.bin".into(),
                    len: 4096,
                    blake3: [salt | 1; 32],
                }),
                kernel: FileId {
                    path: "Image".into(),
                    len: 1 << 20,
                    blake3: [salt | 2; 32],
                },
                initrd: None,
                append: "console=ttyS0".into(),
                insns_per_tick: 100,
                virtio: vec![
                    DeviceKind::Block { sectors: 2048 },
                    DeviceKind::Net {
                        mac: [2, 0, 0, 0, 0, salt],
                    },
                ],
            },
            engine: Engine::Interpreter,
            ram_size: 128 << 20,
            state: (0..40).map(|i| salt ^ (i * 3) as u8).collect(),
            icount_base: 5_000_000_000 + u64::from(salt),
            console_offset: 4_321 + u64::from(salt),
            disk_size: Some(64 << 20),
        })),
        Message::Pages {
            offset: 64 << 10,
            encoding: PageEncoding::Lz4,
            data: (0..24).map(|i| salt ^ (i * 7) as u8).collect(),
        },
        Message::DiskPages {
            offset: 3 << 16,
            encoding: PageEncoding::Raw,
            data: (0..16).map(|i| salt ^ (i * 11) as u8).collect(),
        },
        Message::CloneEnd {
            chunks: 77 + u64::from(salt),
            digest: std::array::from_fn(|i| salt ^ i as u8),
            disk_chunks: 5 + u64::from(salt),
            disk_digest: Some(std::array::from_fn(|i| salt ^ (2 * i) as u8)),
        },
        Message::Protected {
            through: 999 + u64::from(salt),
        },
    ];
    // A new kind of message must be added here (and pinned).
    for m in &messages {
        match m {
            Message::Hello { .. }
            | Message::Proof { .. }
            | Message::Entries { .. }
            | Message::Ack { .. }
            | Message::Heartbeat
            | Message::Released { .. }
            | Message::CloneStart(_)
            | Message::Pages { .. }
            | Message::DiskPages { .. }
            | Message::CloneEnd { .. }
            | Message::Protected { .. } => {}
        }
    }
    messages
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

/// `bytes` as a string literal, a `concat!` of lines if long, to paste
/// into a constant.
fn concat_of(bytes: &[u8], indent: &str) -> String {
    if bytes.len() <= 32 {
        return format!("\"{}\"", hex(bytes));
    }
    let mut out = "concat!(\n".to_string();
    for line in bytes.chunks(32) {
        out += &format!("{indent}    \"{}\",\n", hex(line));
    }
    out + indent + ")"
}

/// How `actual` differs from the golden constant `name`, if it does: the
/// failure message, with the new constant.
fn mismatch(name: &str, golden: &str, actual: &[u8]) -> Option<String> {
    let expected = unhex(golden);
    (expected != actual).then(|| {
        format!(
            "{CHANGED}: the bytes differ from {name} ({} bytes expected, {} now).\n\
             {IF_INTENDED}; the new constant is:\n\nconst {name}: &str = {};\n",
            expected.len(),
            actual.len(),
            concat_of(actual, ""),
        )
    })
}

/// Fail, naming the change, unless `actual` is the golden constant `name`.
fn assert_golden(name: &str, golden: &str, actual: &[u8]) {
    if let Some(message) = mismatch(name, golden, actual) {
        panic!("{message}");
    }
}

/// Fail, naming the kinds that changed, unless `actual` is the golden
/// array `name`.
fn assert_golden_sealed(name: &str, golden: &[&str; KINDS], actual: &[Vec<u8>]) {
    let changed: Vec<&str> = golden
        .iter()
        .zip(actual)
        .zip(messages(Role::Primary).iter().map(kind))
        .filter(|((g, a), _)| unhex(g) != **a)
        .map(|(_, kind)| kind)
        .collect();
    if !changed.is_empty() {
        let mut constant = format!("const {name}: [&str; KINDS] = [\n");
        for (bytes, kind) in actual.iter().zip(messages(Role::Primary).iter().map(kind)) {
            constant += &format!("    // {kind}\n    {},\n", concat_of(bytes, "    "));
        }
        constant += "];";
        panic!(
            "{CHANGED}: the sealed bytes of {} differ from {name}.\n\
             {IF_INTENDED}; the new constant is:\n\n{constant}\n",
            changed.join(", "),
        );
    }
}

fn kind(message: &Message) -> &'static str {
    message.name()
}

/// Pass `wire` through a receiver's decoder: the message in it.
fn deliver(decoder: &mut FrameDecoder, wire: &[u8]) -> Result<Message, String> {
    decoder.push(wire);
    let payload = decoder
        .next_frame()
        .map_err(|e| e.to_string())?
        .ok_or("the frame never completes")?;
    channel::decode(&payload).map_err(|e| e.to_string())
}

/// The order of the handshake's frames on the wire, and in `Shaken::wire`.
const HANDSHAKE_FRAMES: [&str; 4] = [
    "GOLDEN_PRIMARY_HELLO",
    "GOLDEN_BACKUP_HELLO",
    "GOLDEN_PRIMARY_PROOF",
    "GOLDEN_BACKUP_PROOF",
];

fn golden_handshake() -> [Vec<u8>; 4] {
    [
        unhex(GOLDEN_PRIMARY_HELLO),
        unhex(GOLDEN_BACKUP_HELLO),
        unhex(GOLDEN_PRIMARY_PROOF),
        unhex(GOLDEN_BACKUP_PROOF),
    ]
}

/// A handshake that established both sides.
struct Shaken {
    /// The frames as sent, in the order of `HANDSHAKE_FRAMES`.
    wire: Vec<Vec<u8>>,
    primary: Session,
    backup: Session,
}

/// Run the handshake between a primary and a backup with these nonces,
/// through the real code: `channel::encode` on the sending side, a
/// `FrameDecoder` and `channel::decode` on the receiving one. `tamper`
/// sees each frame (by its index in `HANDSHAKE_FRAMES`) on its way and
/// returns what arrives. Why it failed, if either side refused.
fn shake(
    nonces: [[u8; 16]; 2],
    tamper: &mut dyn FnMut(usize, &[u8]) -> Vec<u8>,
) -> Result<Shaken, String> {
    let key = channel_key(SECRET);
    let (mut p, p_hello) = Handshake::start(Role::Primary, PAIR, EPOCH, key, nonces[0]);
    let (mut b, b_hello) = Handshake::start(Role::Backup, PAIR, EPOCH, key, nonces[1]);
    let mut to_p = FrameDecoder::default();
    let mut to_b = FrameDecoder::default();
    let mut wire = Vec::new();
    let mut send = |i: usize, message: &Message, to: &mut FrameDecoder| {
        let bytes = channel::encode(message);
        let arrived = tamper(i, &bytes);
        wire.push(bytes);
        deliver(to, &arrived)
    };
    let proof = |step: Result<Step, ChannelError>| match step.map_err(|e| e.to_string())? {
        Step {
            send: Some(proof @ Message::Proof { .. }),
            established: false,
        } => Ok(proof),
        other => Err(format!("a Hello answered with {other:?}")),
    };
    let established = |step: Result<Step, ChannelError>| match step.map_err(|e| e.to_string())? {
        Step {
            send: None,
            established: true,
        } => Ok(()),
        other => Err(format!("a Proof answered with {other:?}")),
    };

    let p_hello_arrived = send(0, &p_hello, &mut to_b)?;
    let b_hello_arrived = send(1, &b_hello, &mut to_p)?;
    let b_proof = proof(b.receive(&p_hello_arrived))?;
    let p_proof = proof(p.receive(&b_hello_arrived))?;
    let p_proof_arrived = send(2, &p_proof, &mut to_b)?;
    let b_proof_arrived = send(3, &b_proof, &mut to_p)?;
    established(b.receive(&p_proof_arrived))?;
    established(p.receive(&b_proof_arrived))?;
    assert!(p.is_established() && b.is_established());
    Ok(Shaken {
        wire,
        primary: p.session().ok_or("the primary has no session")?,
        backup: b.session().ok_or("the backup has no session")?,
    })
}

fn golden_nonces() -> [[u8; 16]; 2] {
    [nonce(Role::Primary), nonce(Role::Backup)]
}

fn handshake() -> Shaken {
    shake(golden_nonces(), &mut |_, wire| wire.to_vec())
        .unwrap_or_else(|e| panic!("the handshake fails: {e}"))
}

/// Seal `message` on `from`, pass it through `decoder` and open it on
/// `to`: the sealed frame.
fn transfer(
    message: Message,
    from: &mut Session,
    to: &mut Session,
    decoder: &mut FrameDecoder,
) -> Vec<u8> {
    let sealed = from.seal(&message).expect("a small message fits");
    decoder.push(&sealed);
    let payload = decoder
        .next_frame()
        .expect("a valid frame")
        .expect("a whole frame");
    assert_eq!(to.open(&payload), Ok(message));
    sealed
}

/// Seal every kind both ways, interleaved (primary's first, then the
/// backup's), each opened on the other side; the sealed frames of each.
fn seal_all(shaken: &mut Shaken) -> [Vec<Vec<u8>>; 2] {
    let (mut by_primary, mut by_backup) = (Vec::new(), Vec::new());
    let mut to_p = FrameDecoder::new(CHANNEL_FRAME_MAX);
    let mut to_b = FrameDecoder::new(CHANNEL_FRAME_MAX);
    let (p, b) = (&mut shaken.primary, &mut shaken.backup);
    for (pm, bm) in messages(Role::Primary)
        .into_iter()
        .zip(messages(Role::Backup))
    {
        by_primary.push(transfer(pm, p, b, &mut to_b));
        by_backup.push(transfer(bm, b, p, &mut to_p));
    }
    [by_primary, by_backup]
}

/// Flip `bit` of byte `at` in `frame`; with `fix_crc`, recompute the
/// frame's CRC as a forger would (for a byte in the payload).
fn flip(frame: &[u8], at: usize, bit: u32, fix_crc: bool) -> Vec<u8> {
    let mut bad = frame.to_vec();
    bad[at] ^= 1 << bit;
    if fix_crc {
        let header = frame_header(&bad[8..]);
        bad[..8].copy_from_slice(&header);
    }
    bad
}

// ---------------------------------------------------------------- tests

#[test]
fn the_frame_limits_and_the_key_derivation_are_pinned() {
    assert_eq!(
        CHANNEL_VERSION, 3,
        "{CHANGED}: the channel's version. Update this test with the golden constants."
    );
    assert_eq!(
        (HANDSHAKE_FRAME_MAX, CHANNEL_FRAME_MAX, FRAME_MAX),
        (1024, (64 << 20) + 4096, 64 << 20),
        "{CHANGED}: a frame limit. A peer with a lower limit refuses the other's frames. \
         {IF_INTENDED}"
    );
    assert_golden("GOLDEN_KEY", GOLDEN_KEY, &channel_key(SECRET));
}

#[test]
fn the_handshake_puts_the_golden_frames_on_the_wire() {
    let shaken = handshake();
    let changed = HANDSHAKE_FRAMES
        .iter()
        .zip([
            GOLDEN_PRIMARY_HELLO,
            GOLDEN_BACKUP_HELLO,
            GOLDEN_PRIMARY_PROOF,
            GOLDEN_BACKUP_PROOF,
        ])
        .zip(&shaken.wire)
        .filter_map(|((name, golden), wire)| mismatch(name, golden, wire))
        .collect::<Vec<_>>();
    assert!(changed.is_empty(), "{}", changed.join("\n"));
    // And the golden frames read as what they are.
    let decoded: Vec<Message> = golden_handshake()
        .iter()
        .map(|frame| {
            channel::decode(&frame[8..]).unwrap_or_else(|e| {
                panic!("{CHANGED}: a golden handshake frame no longer decodes: {e}. {IF_INTENDED}")
            })
        })
        .collect();
    for (i, role) in [Role::Primary, Role::Backup].into_iter().enumerate() {
        assert_eq!(
            decoded[i],
            Message::Hello {
                version: CHANNEL_VERSION,
                role,
                pair: PAIR.into(),
                epoch: EPOCH,
                nonce: nonce(role),
            },
            "{CHANGED}: {} decodes differently. {IF_INTENDED}",
            HANDSHAKE_FRAMES[i]
        );
        assert!(
            matches!(decoded[2 + i], Message::Proof { .. }),
            "{CHANGED}: {} decodes as {:?}. {IF_INTENDED}",
            HANDSHAKE_FRAMES[2 + i],
            decoded[2 + i]
        );
    }
}

#[test]
fn the_channel_is_a_function_of_key_pair_epoch_and_nonces() {
    let mut first = handshake();
    let mut second = handshake();
    assert_eq!(
        first.wire, second.wire,
        "the handshake is not deterministic"
    );
    assert_eq!(
        seal_all(&mut first),
        seal_all(&mut second),
        "sealing is not deterministic"
    );
    // The nonces are what makes each connection's frames unique.
    let mut other = shake([nonce(Role::Primary), [0xee; 16]], &mut |_, w| w.to_vec())
        .expect("another nonce establishes too");
    let mut again = handshake();
    assert_eq!(other.wire[0], again.wire[0], "the primary's Hello");
    for ((theirs, ours), name) in other
        .wire
        .iter()
        .zip(&again.wire)
        .zip(HANDSHAKE_FRAMES)
        .skip(1)
    {
        assert_ne!(theirs, ours, "{name}");
    }
    let (theirs, ours) = (seal_all(&mut other), seal_all(&mut again));
    for (a, b) in theirs.iter().flatten().zip(ours.iter().flatten()) {
        assert_ne!(a, b, "a sealed frame does not depend on the nonces");
    }
}

#[test]
fn every_message_kind_is_sealed_as_the_golden_bytes_both_ways() {
    let mut shaken = handshake();
    let [by_primary, by_backup] = seal_all(&mut shaken);
    assert_golden_sealed(
        "GOLDEN_SEALED_BY_PRIMARY",
        &GOLDEN_SEALED_BY_PRIMARY,
        &by_primary,
    );
    assert_golden_sealed(
        "GOLDEN_SEALED_BY_BACKUP",
        &GOLDEN_SEALED_BY_BACKUP,
        &by_backup,
    );

    // The golden bytes open on the other side as the same messages.
    let mut shaken = handshake();
    let mut to_p = FrameDecoder::new(CHANNEL_FRAME_MAX);
    let mut to_b = FrameDecoder::new(CHANNEL_FRAME_MAX);
    for i in 0..KINDS {
        for (golden, to, decoder, from) in [
            (
                GOLDEN_SEALED_BY_PRIMARY[i],
                &mut shaken.backup,
                &mut to_b,
                Role::Primary,
            ),
            (
                GOLDEN_SEALED_BY_BACKUP[i],
                &mut shaken.primary,
                &mut to_p,
                Role::Backup,
            ),
        ] {
            let expected = messages(from)[i].clone();
            decoder.push(&unhex(golden));
            let opened = decoder
                .next_frame()
                .map_err(|e| e.to_string())
                .and_then(|f| f.ok_or_else(|| "an incomplete frame".to_string()))
                .and_then(|payload| to.open(&payload).map_err(|e| e.to_string()));
            assert_eq!(
                opened,
                Ok(expected),
                "{CHANGED}: the golden {} sealed by the {from:?} opens differently. \
                 {IF_INTENDED}",
                kind(&messages(from)[i]),
            );
        }
    }
}

/// A flipped bit anywhere is refused: in the framing by the CRC, and in a
/// frame whose CRC a forger recomputed by the handshake (which then never
/// establishes) or by the MAC. A refused sealed frame leaves the session
/// as it was: the genuine frame still opens after it.
#[test]
fn every_flipped_bit_of_the_golden_channel_bytes_is_refused() {
    for (i, frame) in golden_handshake().iter().enumerate() {
        for at in 0..frame.len() {
            for bit in 0..8 {
                // Recomputing the CRC is a forger's move in the payload.
                for fix_crc in [false, true].into_iter().filter(|&fix| !fix || at >= 8) {
                    let bad = flip(frame, at, bit, fix_crc);
                    let outcome = shake(golden_nonces(), &mut |j, wire| {
                        if j == i { bad.clone() } else { wire.to_vec() }
                    });
                    assert!(
                        outcome.is_err(),
                        "{} with bit {bit} of byte {at} flipped (CRC fixed: {fix_crc}) \
                         established the channel",
                        HANDSHAKE_FRAMES[i]
                    );
                }
            }
        }
    }

    let mut shaken = handshake();
    for i in 0..KINDS {
        for (golden, to, from) in [
            (
                GOLDEN_SEALED_BY_PRIMARY[i],
                &mut shaken.backup,
                Role::Primary,
            ),
            (
                GOLDEN_SEALED_BY_BACKUP[i],
                &mut shaken.primary,
                Role::Backup,
            ),
        ] {
            let frame = unhex(golden);
            let what = format!("{} sealed by the {from:?}", kind(&messages(from)[i]));
            for at in 0..frame.len() {
                for bit in 0..8 {
                    // As it arrives: the framing refuses it.
                    let mut decoder = FrameDecoder::new(CHANNEL_FRAME_MAX);
                    decoder.push(&flip(&frame, at, bit, false));
                    if let Ok(Some(payload)) = decoder.next_frame() {
                        assert!(
                            to.open(&payload).is_err(),
                            "{what} with bit {bit} of byte {at} flipped was accepted"
                        );
                    }
                    // Forged, with a valid CRC: the MAC refuses it.
                    if at >= 8 {
                        let forged = flip(&frame, at, bit, true);
                        assert_eq!(
                            to.open(&forged[8..]),
                            Err(ChannelError::BadMac),
                            "{what} with bit {bit} of byte {at} flipped"
                        );
                    }
                }
            }
            assert_eq!(
                to.open(&frame[8..]),
                Ok(messages(from)[i].clone()),
                "{what}, genuine, after the refused copies (if the golden bytes no longer \
                 open at all, the format changed: see the other tests' messages)"
            );
        }
    }
}
