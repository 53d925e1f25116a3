//! Invariant 1 (ARCHITECTURE.md, "Invariants") at the machine level: the same
//! program with the same inputs reaches the same state, bit for bit, however
//! its run is cut up, and across a snapshot serialised to bytes and restored
//! into a fresh machine.

mod support;

use ftvm_board::{Engine, Firmware, Input, Machine, MachineConfig, Snapshot, Stop};
use proptest::prelude::*;
use support::{ftvm_run, guest_elf, parse_digest};

use std::time::Duration;

fn config(program: &str) -> MachineConfig {
    config_with(program, Engine::default())
}

fn config_with(program: &str, engine: Engine) -> MachineConfig {
    MachineConfig {
        memory_mib: 16,
        firmware: Firmware::None,
        kernel: ftvm_host::files::load(&guest_elf(program)).expect("the guest program"),
        initrd: None,
        append: String::new(),
        insns_per_tick: MachineConfig::DEFAULT_INSNS_PER_TICK,
        engine,
        virtio: Vec::new(),
    }
}

/// The deterministic host policy of these tests: an idle guest sleeps
/// exactly until its timer is due.
fn step(machine: &mut Machine, limit: u64) -> Option<Stop> {
    loop {
        match machine.run(limit) {
            Stop::Limit => return None,
            Stop::Idle { wake_at: Some(t) } if t > machine.hart().mtime() => {
                let ticks = t - machine.hart().mtime();
                machine.inject(Input::IdleSleep { ticks });
            }
            Stop::Idle { .. } => panic!("guest idle with nothing that can wake it"),
            done => return Some(done),
        }
    }
}

/// Run to the end; returns (console output, final stop, digest, icount).
fn run_in_chunks(program: &str, chunks: &[u64]) -> (Vec<u8>, Stop, String, u64) {
    run_in_chunks_with(program, chunks, &[Engine::default()])
}

/// As `run_in_chunks`, each chunk run by the next of `engines` in turn
/// (the machine moving between them through a snapshot).
fn run_in_chunks_with(
    program: &str,
    chunks: &[u64],
    engines: &[Engine],
) -> (Vec<u8>, Stop, String, u64) {
    let mut engine = engines.iter().copied().cycle();
    let mut machine =
        Machine::new(&config_with(program, engine.next().unwrap_or_default())).expect("machine");
    let mut output = Vec::new();
    let mut chunk = chunks.iter().copied().cycle();
    loop {
        let limit = machine.icount() + chunk.next().unwrap_or(u64::MAX / 2);
        let stop = step(&mut machine, limit);
        output.extend(machine.take_console_output());
        if let Some(stop) = stop {
            return (output, stop, machine.digest().to_string(), machine.icount());
        }
        assert_eq!(
            machine.icount(),
            limit,
            "a run must stop at exactly its icount limit"
        );
        assert!(machine.icount() < 3_000_000_000, "{program} did not finish");
        if !chunks.is_empty() {
            // Move the machine through bytes into a fresh one, as a backup
            // or a clone would receive it.
            let bytes = machine.snapshot().to_bytes();
            let snapshot = Snapshot::from_bytes(&bytes).expect("snapshot decodes");
            let before = machine.digest();
            let cfg = config_with(program, engine.next().unwrap_or_default());
            machine = Machine::new(&cfg).expect("machine");
            machine.restore(&snapshot).expect("restore");
            assert_eq!(machine.digest(), before, "restore changed the state");
        }
    }
}

const PROGRAMS: [&str; 4] = ["interrupts", "sv39", "rv64d", "rv64a"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn chunked_runs_with_snapshot_restore_match_a_straight_run(
        program in prop::sample::select(PROGRAMS.to_vec()),
        chunks in prop::collection::vec(1u64..20_000, 1..8),
    ) {
        let straight = run_in_chunks(program, &[]);
        let chunked = run_in_chunks(program, &chunks);
        prop_assert_eq!(&straight.1, &Stop::PowerOff { code: 0 });
        prop_assert_eq!(straight, chunked);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// The engines are interchangeable at any instruction boundary.
    #[test]
    fn engines_alternating_by_chunk_match_a_straight_run(
        program in prop::sample::select(PROGRAMS.to_vec()),
        chunks in prop::collection::vec(1u64..20_000, 1..8),
    ) {
        let straight = run_in_chunks_with(program, &[], &[Engine::Interpreter]);
        let alternating = run_in_chunks_with(
            program,
            &chunks,
            &[Engine::Translator, Engine::Interpreter],
        );
        prop_assert_eq!(straight, alternating);
    }
}

/// Every guest program ends in the same state, with the same output, on
/// the interpreter and on the block translator.
#[test]
fn interpreter_and_translator_agree_on_every_guest_program() {
    for program in [
        "rv64i",
        "rv64m",
        "rv64a",
        "rv64c",
        "rv64f",
        "rv64d",
        "zicsr",
        "traps",
        "interrupts",
        "sv39",
        "counters",
        "htif",
        "htif-fail",
    ] {
        let interpreted = run_in_chunks_with(program, &[], &[Engine::Interpreter]);
        let translated = run_in_chunks_with(program, &[], &[Engine::Translator]);
        assert_eq!(interpreted, translated, "{program}");
    }
}

#[test]
fn two_runs_of_the_binary_end_in_the_same_state() {
    let elf = guest_elf("interrupts");
    let limit = Duration::from_secs(120);
    // The RTC's time of day and the host clock are inputs: fix them.
    let args = ["--digest", "--rtc-time", "1700000000", "--clock", "icount"];
    let a = ftvm_run(&elf, &args, limit);
    let b = ftvm_run(&elf, &args, limit);
    assert_eq!(a.code, Some(0), "{}", a.stderr);
    assert_eq!(parse_digest(&a.stderr), parse_digest(&b.stderr));
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn digest_reflects_state() {
    let cfg = config("rv64i");
    let mut a = Machine::new(&cfg).expect("machine");
    let b = Machine::new(&cfg).expect("machine");
    assert_eq!(a.digest(), b.digest());
    step(&mut a, 10);
    assert_ne!(
        a.digest(),
        b.digest(),
        "executing instructions must change the digest"
    );
}
