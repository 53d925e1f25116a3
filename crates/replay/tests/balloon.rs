//! The memory balloon's target as a control entry: a recording in which
//! the host sets the target, and a guest driver (hand-assembled, below)
//! gives pages to the balloon in answer, replays to the same digest at
//! every checkpoint; the same log with another target does not.

use ftvm_board::virtio::DeviceKind;
use ftvm_board::{
    BalloonInfo, Engine, Firmware, Image, ImageMap, Input, Machine, MachineConfig, Stop,
};
use ftvm_replay::{End, Event, LogReader, LogWriter, MachineId, Recorder, ReplayError, Replayer};

// RV64 encodings, enough for the driver.
const T0: u32 = 5;
const T1: u32 = 6;
const T2: u32 = 7;
const S1: u32 = 9;
const A0: u32 = 10;
const A1: u32 = 11;
const A2: u32 = 12;
const A3: u32 = 13;
const T3: u32 = 28;
const T4: u32 = 29;

fn lui(rd: u32, imm20: u32) -> u32 {
    (imm20 << 12) | (rd << 7) | 0x37
}
fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (rd << 7) | 0x13
}
fn add(rd: u32, rs1: u32, rs2: u32) -> u32 {
    (rs2 << 20) | (rs1 << 15) | (rd << 7) | 0x33
}
fn store(funct3: u32, rs2: u32, rs1: u32, offset: u32) -> u32 {
    ((offset >> 5) << 25) | (rs2 << 20) | (rs1 << 15) | (funct3 << 12) | ((offset & 31) << 7) | 0x23
}
fn sw(rs2: u32, rs1: u32, offset: u32) -> u32 {
    store(2, rs2, rs1, offset)
}
fn lw(rd: u32, rs1: u32, offset: u32) -> u32 {
    (offset << 20) | (rs1 << 15) | (2 << 12) | (rd << 7) | 0x03
}
fn beq(rs1: u32, rs2: u32, offset: i32) -> u32 {
    let i = offset as u32;
    (((i >> 12) & 1) << 31)
        | (((i >> 5) & 0x3f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (((i >> 1) & 0xf) << 8)
        | (((i >> 11) & 1) << 7)
        | 0x63
}
const SPIN: u32 = 0x0000_006f;

/// Frame numbers of the two pages the driver gives.
const PAGES: [u64; 2] = [0x80200, 0x80201];

/// A balloon driver in 40 instructions: mark two pages, lay out queue 0
/// (a buffer with their frame numbers), wait until the host sets a
/// target, then give the pages, report the target as `actual`, and spin.
fn driver() -> Image {
    let code = [
        lui(S1, 0x10008), // s1: the balloon's registers (slot 7)
        // Two pages with something in them.
        lui(T0, 0x40100),
        add(T0, T0, T0), // 0x8020_0000
        addi(T1, 0, 0x5a),
        sw(T1, T0, 0),
        lui(T2, 1),
        add(T3, T0, T2), // 0x8020_1000
        sw(T1, T3, 0),
        // Their frame numbers at 0x8010_0000.
        lui(A0, 0x40080),
        add(A0, A0, A0),
        lui(T1, 0x80),
        addi(T1, T1, 0x200),
        sw(T1, A0, 0),
        addi(T1, T1, 1),
        sw(T1, A0, 4),
        // One descriptor at 0x8011_0000: that buffer, 8 bytes.
        lui(A1, 0x40088),
        add(A1, A1, A1),
        store(3, A0, A1, 0), // sd a0, 0(a1)
        addi(T1, 0, 8),
        sw(T1, A1, 8),
        // The available ring at 0x8011_1000 (idx 1, ring[0] = 0), the
        // used ring at 0x8011_2000.
        add(A2, A1, T2),
        addi(T1, 0, 1),
        store(1, T1, A2, 2), // sh t1, 2(a2)
        add(A3, A2, T2),
        // Wait for a target.
        lw(T1, S1, 0x100),
        beq(T1, 0, -4),
        // Queue 0: size 8, rings, ready; DRIVER_OK; notify; actual.
        sw(0, S1, 0x30),
        addi(T4, 0, 8),
        sw(T4, S1, 0x38),
        sw(A1, S1, 0x80),
        sw(A2, S1, 0x90),
        sw(A3, S1, 0xa0),
        addi(T4, 0, 1),
        sw(T4, S1, 0x44),
        addi(T4, 0, 15),
        sw(T4, S1, 0x70),
        sw(0, S1, 0x50),
        sw(T1, S1, 0x104),
        SPIN,
    ];
    let bytes: Vec<u8> = code.iter().flat_map(|w| w.to_le_bytes()).collect();
    Image::new("/guests/balloon-driver.img", bytes)
}

fn config() -> MachineConfig {
    MachineConfig {
        memory_mib: 16,
        firmware: Firmware::None,
        kernel: driver(),
        initrd: None,
        append: String::new(),
        insns_per_tick: 10,
        engine: Engine::Interpreter,
        virtio: vec![DeviceKind::Balloon],
    }
}

fn run_to(machine: &mut Machine, target: u64) {
    while machine.icount() < target {
        assert_eq!(machine.run(target), Stop::Limit, "the driver only spins");
    }
}

fn page_byte(machine: &Machine, pfn: u64) -> u8 {
    let mut b = [0u8; 1];
    machine.hart().ram().read(pfn << 12, &mut b).expect("ram");
    b[0]
}

/// Record: the driver waits, the host sets a target of `pages` at icount
/// 3000, the driver answers. The log and the final machine.
fn record(pages: u32) -> (Vec<u8>, Machine) {
    let cfg = config();
    let mut machine = Machine::new(&cfg).expect("machine");
    let mut rec =
        Recorder::new(Vec::new(), &machine, MachineId::of(&cfg), cfg.engine).expect("header");
    rec.inject(&mut machine, Input::WallClock { unix_ns: 1 << 60 })
        .expect("log");
    run_to(&mut machine, 3000);
    assert_eq!(page_byte(&machine, PAGES[0]), 0x5a, "the driver marked it");
    assert_eq!(machine.balloon().map(|b| b.held_pages), Some(0));
    rec.checkpoint(&machine).expect("log");
    rec.inject(&mut machine, Input::BalloonTarget { pages })
        .expect("log");
    run_to(&mut machine, 6000);
    rec.checkpoint(&machine).expect("log");
    run_to(&mut machine, 7000);
    rec.end(&machine, End::InsnLimit).expect("end");
    let log = rec.into_inner().expect("flush").expect("logging");
    (log, machine)
}

fn replay(log: &[u8]) -> Result<ftvm_replay::Replayed, ReplayError> {
    let images = ImageMap::of([&driver()]);
    let mut replayer = Replayer::new(log, Engine::Translator, &images).expect("opens");
    replayer.run(&mut |_| {})
}

#[test]
fn a_recording_with_a_balloon_target_replays_to_the_same_digests() {
    let (log, machine) = record(2);
    assert_eq!(
        machine.balloon(),
        Some(BalloonInfo {
            target_pages: 2,
            actual_pages: 2,
            held_pages: 2
        }),
        "the driver gave its two pages and reported the target"
    );
    for pfn in PAGES {
        assert_eq!(page_byte(&machine, pfn), 0, "a ballooned page is zeroed");
    }
    let entries: Vec<Event> = {
        let mut reader = LogReader::open(&log[..]).expect("opens");
        std::iter::from_fn(|| reader.next().expect("valid"))
            .map(|e| e.event)
            .collect()
    };
    assert!(entries.contains(&Event::Input(Input::BalloonTarget { pages: 2 })));
    let done = replay(&log).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done.checkpoints, 3);
    assert_eq!(done.digest, machine.digest());
}

/// The entry is what the backup acts on: the same log with another target
/// in it diverges at the next checkpoint.
#[test]
fn a_log_with_another_target_diverges() {
    let (log, _) = record(2);
    let mut reader = LogReader::open(&log[..]).expect("opens");
    let mut writer = LogWriter::new(Vec::new(), &reader.header().clone()).expect("header");
    while let Some(entry) = reader.next().expect("valid") {
        let event = match entry.event {
            Event::Input(Input::BalloonTarget { .. }) => {
                Event::Input(Input::BalloonTarget { pages: 1 })
            }
            other => other,
        };
        writer.push(entry.icount, &event).expect("push");
    }
    let tampered = writer.into_inner().expect("flush");
    match replay(&tampered) {
        Err(ReplayError::Diverged(divergence)) => {
            // The checkpoint right after the target (entries: wall clock,
            // checkpoint, target, checkpoint).
            assert_eq!((divergence.seq, divergence.icount), (3, 6000));
        }
        other => panic!("another target went unnoticed: {other:?}"),
    }
}
