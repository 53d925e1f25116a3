//! Golden bytes of the snapshot format. Snapshots outlive the process
//! that wrote them (FT pairs ship them, logs refer to them), so their bytes
//! must change only on purpose: this pins the exact header, and the length
//! and hash of the whole snapshot, of a small machine whose devices all
//! hold non-reset state.

use super::*;
use crate::virtio::DeviceKind;

/// Hand-assembled (`riscv64-linux-gnu-as -march=rv64g`), loaded raw at the
/// start of RAM and entered in M-mode. It programs every device on the bus
/// through MMIO, leaves one entropy request for the host, then counts.
const PROGRAM: &[u32] = &[
    // UART: 8N1, receive interrupt on, scratch, one byte out, LSR read.
    0x1000_02b7, // lui t0, 0x10000
    0x0030_0313, // addi t1, zero, 3
    0x0062_81a3, // sb t1, 3(t0)
    0x0010_0313, // addi t1, zero, 1
    0x0062_80a3, // sb t1, 1(t0)
    0x05a0_0313, // addi t1, zero, 90
    0x0062_83a3, // sb t1, 7(t0)
    0x0470_0313, // addi t1, zero, 71
    0x0062_8023, // sb t1, 0(t0)
    0x0052_c383, // lbu t2, 5(t0)
    // PLIC: priorities of sources 10 (UART) and 8 (slot 7), context 0 enables.
    0x0c00_02b7, // lui t0, 0xc000
    0x0050_0313, // addi t1, zero, 5
    0x0262_a423, // sw t1, 40(t0)
    0x0020_0313, // addi t1, zero, 2
    0x0262_a023, // sw t1, 32(t0)
    0x0000_2e37, // lui t3, 0x2
    0x01c2_8eb3, // add t4, t0, t3
    0x5000_0313, // addi t1, zero, 1280
    0x006e_a023, // sw t1, 0(t4)
    // CLINT: msip, mtimecmp = 0x1_2345_6789.
    0x0200_02b7, // lui t0, 0x2000
    0x0010_0313, // addi t1, zero, 1
    0x0062_a023, // sw t1, 0(t0)
    0x0000_4e37, // lui t3, 0x4
    0x01c2_8eb3, // add t4, t0, t3
    0x0009_2337, // lui t1, 0x92
    0xa2b3_031b, // addiw t1, t1, -1493
    0x00d3_1313, // slli t1, t1, 0xd
    0x7893_0313, // addi t1, t1, 1929
    0x006e_b023, // sd t1, 0(t4)
    // RTC: interrupt on, an alarm armed far ahead, TIME_LOW read (latches TIME_HIGH).
    0x0010_12b7, // lui t0, 0x101
    0x0010_0313, // addi t1, zero, 1
    0x0062_a823, // sw t1, 16(t0)
    0x07e0_0313, // addi t1, zero, 126
    0x0062_a623, // sw t1, 12(t0)
    0x0765_4337, // lui t1, 0x7654
    0x3213_031b, // addiw t1, t1, 801
    0x0062_a423, // sw t1, 8(t0)
    0x0002_a383, // lw t2, 0(t0)
    // Slot 7 (block): status, capacity read, driver features, queue 0 size.
    0x1000_82b7, // lui t0, 0x10008
    0x0030_0313, // addi t1, zero, 3
    0x0662_a823, // sw t1, 112(t0)
    0x1002_a383, // lw t2, 256(t0)
    0x0010_0313, // addi t1, zero, 1
    0x0262_a223, // sw t1, 36(t0)
    0x0262_a023, // sw t1, 32(t0)
    0x0202_a823, // sw zero, 48(t0)
    0x0080_0313, // addi t1, zero, 8
    0x0262_ac23, // sw t1, 56(t0)
    // Slot 5 (net): status, transmit queue selected and sized.
    0x1000_62b7, // lui t0, 0x10006
    0x0010_0313, // addi t1, zero, 1
    0x0662_a823, // sw t1, 112(t0)
    0x0262_a823, // sw t1, 48(t0)
    0x0100_0313, // addi t1, zero, 16
    0x0262_ac23, // sw t1, 56(t0)
    // Slot 6 (entropy): one writable 16-byte descriptor made available...
    0x0008_0437, // lui s0, 0x80
    0x0014_041b, // addiw s0, s0, 1
    0x00c4_1413, // slli s0, s0, 0xc
    0x0004_04b7, // lui s1, 0x40
    0x0014_849b, // addiw s1, s1, 1
    0x00d4_9493, // slli s1, s1, 0xd
    0x0008_0937, // lui s2, 0x80
    0x0039_091b, // addiw s2, s2, 3
    0x00c9_1913, // slli s2, s2, 0xc
    0x0002_0337, // lui t1, 0x20
    0x0013_031b, // addiw t1, t1, 1
    0x00e3_1313, // slli t1, t1, 0xe
    0x0064_3023, // sd t1, 0(s0)
    0x0100_0313, // addi t1, zero, 16
    0x0064_2423, // sw t1, 8(s0)
    0x0020_0313, // addi t1, zero, 2
    0x0064_1623, // sh t1, 12(s0)
    0x0004_9223, // sh zero, 4(s1)
    0x0010_0313, // addi t1, zero, 1
    0x0064_9123, // sh t1, 2(s1)
    // ...queue 0 set up and ready, DRIVER_OK, notified: a request for the host.
    0x1000_72b7, // lui t0, 0x10007
    0x0202_a823, // sw zero, 48(t0)
    0x0080_0313, // addi t1, zero, 8
    0x0262_ac23, // sw t1, 56(t0)
    0x0882_a023, // sw s0, 128(t0)
    0x0802_a223, // sw zero, 132(t0)
    0x0892_a823, // sw s1, 144(t0)
    0x0802_aa23, // sw zero, 148(t0)
    0x0b22_a023, // sw s2, 160(t0)
    0x0a02_a223, // sw zero, 164(t0)
    0x0010_0313, // addi t1, zero, 1
    0x0462_a223, // sw t1, 68(t0)
    0x00f0_0313, // addi t1, zero, 15
    0x0662_a823, // sw t1, 112(t0)
    0x0402_a823, // sw zero, 80(t0)
    // Then count in a0 forever.
    0x0015_0513, // addi a0, a0, 1
    0xffdf_f06f, // jal zero, -4
];

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Early enough that the RTC alarm the program arms (at 541 s) stays in
/// the future.
const WALL_CLOCK_NS: u64 = 1_000_000;

const GOLDEN_VERSION: u32 = 5;
const GOLDEN_HEADER: &str = "\
    4654564d534e4150050000008f02000080808008000000000080e08180010f08\
    80a080800880c08080086a808080870800000000000080e08080080000000000\
    0000000080800180808110000000000000000000000000000000000000000000\
    00000000000000000000000000e88280800802ac0280808080a0010000000088\
    1000000000000000000000000000000002000010000000000000000000000000\
    00000000100000000000000000000000000000000000000000000a0000000001\
    00000189cf959a12600000000000000000020005000000000000000000000000\
    0000000000000000000000000000000000000000000000000000000000000000\
    0000000000000000000000000000000000000000000000000000000000000000\
    0000000000000000006000000000000000000000010000000000000000000000\
    0000000000000000000000000000000000000000000000000000000000000000\
    0000000000000000000000000000000000000000000000000000000000000000\
    0000000000000000000060000000000000000000000000000000000000000000\
    0000000000000000000000000000000000000000000000000000000000000000\
    0000000000000000000000000000000000000000000000000000000000000000\
    0000000000000000000000800a0000000000000001210103005a00000001c084\
    3d0000a18695bbe00f7e01010008000000000103000000000200000000000000\
    000000000000000000000001b424000100000102525400123456dc0b00000001\
    02000000000000001000000000000001000000000001010000000001080180a0\
    80800880c080800880e080800801000f00000100000001808081800810000000\
    01000800018080808010000108000000000000030000000000010300100100";
const GOLDEN_LEN: usize = 16777887;
const GOLDEN_HASH: &str = "4cc1840e147c400f2980c9143ad8646b008cf17efcf65c841d82f236143d3a3a";
const GOLDEN_DIGEST: &str = "7250933b255791385ef50181ea6126e1df66375767c62738f747ae71f5b5333c";

fn golden_config() -> MachineConfig {
    let code: Vec<u8> = PROGRAM.iter().flat_map(|w| w.to_le_bytes()).collect();
    MachineConfig {
        memory_mib: 16,
        firmware: Firmware::None,
        kernel: crate::Image::new("golden.img", code),
        initrd: None,
        append: String::new(),
        insns_per_tick: 10,
        engine: crate::Engine::default(),
        virtio: vec![
            DeviceKind::Block { sectors: 8 },
            DeviceKind::Entropy,
            DeviceKind::Net {
                mac: MAC,
                mtu: 1500,
            },
            // Slot 4, untouched by the program: its target set by an input.
            DeviceKind::Balloon,
        ],
    }
}

fn golden_machine() -> Machine {
    let mut m = Machine::new(&golden_config()).expect("machine");
    m.inject(Input::WallClock {
        unix_ns: WALL_CLOCK_NS,
    });
    m.inject(Input::ConsoleByte(b'!'));
    m.inject(Input::BalloonTarget { pages: 0x1234 });
    // The notify ends a run with Stop::Io; its request stays untaken so
    // that the snapshot holds a request queued for the host.
    let mut stops = Vec::new();
    while m.icount() < 300 {
        stops.push(m.run(300));
    }
    assert_eq!(stops, [Stop::Io, Stop::Limit]);
    assert_eq!(m.take_console_output(), b"G");
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `hex` as the body of a Rust string constant, 64 digits a line.
fn as_constant(hex: &str) -> String {
    let lines: Vec<&str> = hex
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).expect("hex is ASCII"))
        .collect();
    format!("\"\\\n    {}\"", lines.join("\\\n    "))
}

#[test]
fn snapshot_bytes_match_the_golden_format() {
    let changed = "the snapshot format changed; if that is intended, bump \
                   SNAPSHOT_VERSION and update the golden constants in \
                   crates/board/src/machine/golden.rs";
    assert_eq!(SNAPSHOT_VERSION, GOLDEN_VERSION, "{changed}");

    let m = golden_machine();
    let bytes = m.snapshot().to_bytes();
    let ram_size = m.ram_size as usize;
    let header = &bytes[..bytes.len() - ram_size];
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let digest = m.digest().to_string();
    if hex(header) != GOLDEN_HEADER
        || bytes.len() != GOLDEN_LEN
        || hash != GOLDEN_HASH
        || digest != GOLDEN_DIGEST
    {
        panic!(
            "{changed}.\nNow:\nconst GOLDEN_HEADER: &str = {};\nconst GOLDEN_LEN: usize = {};\n\
             const GOLDEN_HASH: &str = \"{hash}\";\nconst GOLDEN_DIGEST: &str = \"{digest}\";",
            as_constant(&hex(header)),
            bytes.len(),
        );
    }

    let decoded = Snapshot::from_bytes(&bytes).expect("golden bytes decode");
    assert_eq!(decoded.to_bytes(), bytes, "decoding and re-encoding");
    let mut restored = Machine::new(&golden_config()).expect("machine");
    restored.restore(&decoded).expect("restore");
    assert_eq!(restored.snapshot().to_bytes(), bytes, "restoring");
    assert_eq!(restored.digest().to_string(), digest, "restoring");
}
