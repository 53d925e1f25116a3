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
    "1e0000009ee2f86300050009766d2d676f6c64656e0710111213141516171819",
    "1a1b1c1d1e1f",
);
const GOLDEN_BACKUP_HELLO: &str = concat!(
    "1e000000c8ad544400050109766d2d676f6c64656e07e0e1e2e3e4e5e6e7e8e9",
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
        "2e0000005408ca6f86c2d212453ce3e3795f75123aac37bbe999969bb675d945",
        "894ff57fa594b8c1c78fba1fec3fe0776d9a70ab5c41",
    ),
    // Proof
    concat!(
        "310000001d0697aecd1f641270d4bb20c7f7fd6c73be34980380637c5092693f",
        "5141505564e74f9c33c13c9e6bb4c66c87e1694804b305fff5",
    ),
    // Entries
    concat!(
        "420000002776a19cf5895f28259f125f34dfc4dc46ca84ea3e92902cbfe2e29b",
        "8cd0a1e4df4e6b2898433efdddfc287f59c5d8a6e961e9e8c9b3be1b7e3f1d47",
        "d929173f9a33c0244f1d",
    ),
    // Ack
    concat!(
        "190000003ee770d89f7f2c6b0a18dec7dac228aa9739a1c6c05718d97e8a03bc",
        "cc",
    ),
    // Heartbeat
    "11000000e637ee9ad024433b8531f73cd9e53e04574352ee13",
    // Released
    "1400000079c66a251b4ff17c0bbf907680c20412a028f39f38e292ea",
    // CloneStart
    concat!(
        "bd0000008a7be3cef95ebc2489910199dbe51ea9fb5a291408bd78612abd03ad",
        "61587c9bf7207499ba9ccedcc50b5319b154889e3104048e8e9379a6be03138e",
        "46b4cbc6e708faf5355a2600d62974a39094f15e940b4fd95e1ed508a1c3a406",
        "e5f4c2470b7d6ebdb2c26726d2de7ec5b4108986ae6facffe6656e564e6c9666",
        "db463ee0bb3bdd0d5ecab3dd268b9928970a8fa4bb2a8cb9b4e17794f26acef8",
        "35b52744b0c672963a8f5d6b072b7a8934155cf41d4797e9bcf91905be0bf6c5",
        "5a8a8bf44a",
    ),
    // Pages
    concat!(
        "2e0000007122568045618e11c60138113d064c39e31375c671e6dce922f9140b",
        "8693897e28fd8f41a99c68e3408043e53572d4727db8",
    ),
    // DiskPages
    concat!(
        "260000000ec3318d70a7ded558af4620ae3bfcaa14b4eccde7dc07a428c95c83",
        "0a6e5030ce8aee7ab25b1a52307f",
    ),
    // CloneEnd
    concat!(
        "540000000c1454ecda6a34f9d572f79642269c4f67b10f0b7e7d4fd2c6e99825",
        "6a6f9073e0787ad66fcb03e1eaa4b13a818aa1ddda992e2e1d21eeca40ea9f37",
        "153819772b0b520e10b0fcf044e4faf172d9ad8390f2119b2e4b1bb3",
    ),
    // Protected
    "130000001d7efa4e88beeafd430c6829d5809136b4601c0d575dfa",
    // HandOver
    "130000007e428c53bfbb33fe4e8a3c636dfb39698c9f3e0715a154",
];
/// `messages(Role::Backup)` sealed by the backup, in order.
const GOLDEN_SEALED_BY_BACKUP: [&str; KINDS] = [
    // Hello
    concat!(
        "2e000000181aa197fbb984d5cef011d79643a12051fee11528664d831ddd191e",
        "57106b08059e3bfbc98530c08eab7e85686476f11134",
    ),
    // Proof
    concat!(
        "31000000557cd8a1ce5896189c138af0f1084ac0c41da5fa19d634553c9881f7",
        "050b66ed3bdc74b968ea39e5d732d0c37a74d74da28020035f",
    ),
    // Entries
    concat!(
        "42000000eb916963bb1b93b0cb2e3b3aa01c91f6f2a3e0b3ee2bfad447e828be",
        "fba62d75b662a54ac10429601a74542127b1bd9e7b45a9ed7b316175d55270c8",
        "05b9a7ea7d33398e49c6",
    ),
    // Ack
    concat!(
        "1900000050693b45eb46d20b731426271e7526a307d7c858eafd0b629a3d1837",
        "ba",
    ),
    // Heartbeat
    "1100000050425cef8dca7cb33dc6eb3466f83d5021ce325670",
    // Released
    "140000007d011ffb22b3cad9eb3372d6049cc9175139ee4aa567c4ec",
    // CloneStart
    concat!(
        "bd0000006344f1d7fe509eb80fe8979ac6fc153554223ac55e630b4c05358af3",
        "e8c175437933eac9fab6fc7076be6eb25eef9a8745dc29efc8df56fa022ae436",
        "7e1f8ee071c76ebb2c2657650a8186618ccbffa4a958d3866092e1c0cf1b078b",
        "b72d5ae4f16c93eb113f218fa65059b1783f01111080a479b2c272795cdd95a3",
        "21fbccd53c4c0ff9afdc47e80814a260a1dd83f02f27907960c26fd3c7f5c53b",
        "cd9a6b3fef70a5303e1a1b20eecb87ec9a71263b5e0fe162397b42fd9e564a95",
        "61e8485c03",
    ),
    // Pages
    concat!(
        "2e000000e83975c356ef271c8536b52a8b4267b9351040aa2db6e95e2180ca64",
        "a3e231f0ab4493b9b8c89eba1c97c4e8a2df5f68b6db",
    ),
    // DiskPages
    concat!(
        "26000000f57e88cf0ceae218a77cc9c77db78b5022b3b1775eac140a34045ac4",
        "c3cfd3bb41b8dd0f2202b7fb1f16",
    ),
    // CloneEnd
    concat!(
        "560000002ce160f28b74ae6c47e84b6c15329eab84a17d4a003771926be5ab57",
        "4204c13e8bcf7c7ba0caf5f1781db39b570103d4ddee026f1163a20978537416",
        "eb382913fa347f989fdf9ff29f89e8ef4ebeb261103250c74968fa4af55f",
    ),
    // Protected
    "1300000056870ddb03d11ae1b137676370240c850b4eebe8b0be41",
    // HandOver
    "1300000012eecb273bee95d08eb715268cc141c3a944cc5846baf0",
];

// ---------------------------------------------------------------- fixtures

const KINDS: usize = 12;

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
                        mtu: 1500,
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
        Message::HandOver {
            through: 4242 + u64::from(salt),
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
            | Message::Protected { .. }
            | Message::HandOver { .. } => {}
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
        CHANNEL_VERSION, 5,
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
/// establishes) or by the AEAD tag. A refused sealed frame leaves the session
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
                    // Forged, with a valid CRC: the AEAD tag refuses it.
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
