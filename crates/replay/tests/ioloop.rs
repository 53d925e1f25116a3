//! Record then replay random input sequences on a bare-metal guest that
//! folds every input into its state (`guest/tests/ioloop.c`: UART bytes,
//! received frames, disk reads and entropy, each answered at a random
//! icount), with the balloon's target set at random icounts too (a
//! control entry; the guest has no balloon driver): the replay must match
//! the recording at every checkpoint.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::OnceLock;

use ftvm_board::virtio::DeviceKind;
use ftvm_board::{
    Engine, Firmware, Image, ImageMap, Input, IoRequest, IoStatus, Machine, MachineConfig, Stop,
};
use ftvm_replay::{End, MachineId, Output, Recorder, Replayer};
use proptest::prelude::*;

/// The guest program, read once. (The crate is pure; its test reads its
/// fixture from the build, as the host would.)
#[allow(clippy::disallowed_methods)]
fn ioloop_elf() -> Image {
    static ELF: OnceLock<Image> = OnceLock::new();
    ELF.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guest/build/ioloop.elf");
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `make -C guest`)", path.display()));
        Image::new(path, bytes)
    })
    .clone()
}

fn config(engine: Engine) -> MachineConfig {
    MachineConfig {
        memory_mib: 16,
        firmware: Firmware::None,
        kernel: ioloop_elf(),
        initrd: None,
        append: String::new(),
        insns_per_tick: 10,
        engine,
        virtio: vec![
            DeviceKind::Net {
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                mtu: 1500,
            },
            DeviceKind::Block { sectors: 64 },
            DeviceKind::Entropy,
            DeviceKind::Balloon,
        ],
    }
}

/// What the random host does after letting the guest run for a while.
#[derive(Clone, Debug)]
enum Action {
    Console(u8),
    Frame(Vec<u8>),
    /// Answer the oldest outstanding request, with this byte as its data.
    Complete(u8),
    IdleSleep(u64),
    TimeStep(u64),
    TimeRate(u64),
    WallClock(u64),
    Balloon(u32),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => any::<u8>().prop_map(Action::Console),
        2 => prop::collection::vec(any::<u8>(), 14..300).prop_map(Action::Frame),
        4 => any::<u8>().prop_map(Action::Complete),
        1 => (0u64..100_000).prop_map(Action::IdleSleep),
        1 => (0u64..100_000).prop_map(Action::TimeStep),
        1 => (1u64..500).prop_map(Action::TimeRate),
        1 => any::<u64>().prop_map(Action::WallClock),
        1 => (0u32..4096).prop_map(Action::Balloon),
    ]
}

fn answer(request: &IoRequest, byte: u8) -> Input {
    let (status, data) = match request {
        IoRequest::BlockRead { len, .. } => (IoStatus::Ok, vec![byte; *len as usize]),
        IoRequest::Entropy { len, .. } => (IoStatus::Ok, vec![byte ^ 0x5a; *len as usize]),
        IoRequest::Unsupported { .. } => (IoStatus::Unsupported, Vec::new()),
        _ => (IoStatus::Ok, Vec::new()),
    };
    Input::IoDone {
        id: request.id(),
        status,
        data,
    }
}

/// Run to `target`, collecting the guest's requests.
fn run_to(machine: &mut Machine, target: u64, pending: &mut VecDeque<IoRequest>) {
    while machine.icount() < target {
        let stop = machine.run(target);
        pending.extend(machine.take_io_requests());
        let _ = machine.take_console_output();
        assert!(
            matches!(stop, Stop::Limit | Stop::Io | Stop::Idle { .. }),
            "ioloop never stops by itself: {stop:?}"
        );
    }
}

struct Recording {
    log: Vec<u8>,
    completions: usize,
    digests: usize,
    final_digest: ftvm_board::Digest,
}

fn record(engine: Engine, steps: &[(u64, Action)]) -> Recording {
    let cfg = config(engine);
    let mut machine = Machine::new(&cfg).expect("machine");
    let mut rec = Recorder::new(Vec::new(), &machine, MachineId::of(&cfg), engine).expect("header");
    let mut pending = VecDeque::new();
    let mut completions = 0;
    // Let the guest set its devices up and post its first requests.
    run_to(&mut machine, 200_000, &mut pending);
    for (gap, action) in steps {
        let target = machine.icount() + gap;
        run_to(&mut machine, target, &mut pending);
        let input = match action {
            Action::Console(b) => Input::ConsoleByte(*b),
            Action::Frame(frame) => Input::NetReceive {
                frame: frame.clone(),
            },
            Action::Complete(byte) => match pending.pop_front() {
                Some(request) => {
                    completions += 1;
                    answer(&request, *byte)
                }
                None => Input::ConsoleByte(*byte),
            },
            Action::IdleSleep(ticks) => Input::IdleSleep { ticks: *ticks },
            Action::TimeStep(ticks) => Input::GuestTimeStep { ticks: *ticks },
            Action::TimeRate(rate) => Input::GuestTimeRate {
                insns_per_tick: *rate,
            },
            Action::WallClock(ns) => Input::WallClock { unix_ns: *ns },
            Action::Balloon(pages) => Input::BalloonTarget { pages: *pages },
        };
        rec.inject(&mut machine, input).expect("log");
        rec.checkpoint(&machine).expect("log");
    }
    let target = machine.icount() + 10_000;
    run_to(&mut machine, target, &mut pending);
    rec.end(&machine, End::InsnLimit).expect("end");
    Recording {
        log: rec.into_inner().expect("flush").expect("logging"),
        completions,
        digests: steps.len() + 1,
        final_digest: machine.digest(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn replay_matches_the_recording_at_every_checkpoint(
        steps in prop::collection::vec((1u64..60_000, action()), 1..40),
        record_translated in any::<bool>(),
        replay_translated in any::<bool>(),
    ) {
        let engine = |t: bool| if t { Engine::Translator } else { Engine::Interpreter };
        let recording = record(engine(record_translated), &steps);
        let mut console = Vec::new();
        let mut replayer = Replayer::new(
            &recording.log[..],
            engine(replay_translated),
            &ImageMap::of([&ioloop_elf()]),
        )
            .expect("opens");
        let done = replayer
            .run(&mut |out| {
                if let Output::Console(bytes) = out {
                    console.extend(bytes);
                }
            })
            .unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(done.checkpoints as usize, recording.digests);
        prop_assert_eq!(done.digest, recording.final_digest);
        prop_assert!(String::from_utf8_lossy(&console).contains("ioloop ready"));
        let _ = recording.completions;
    }
}

/// The guest really consumes what it is given: the same schedule with one
/// completion's data changed ends in another state.
#[test]
fn the_guest_state_depends_on_the_data_of_every_input() {
    let steps: Vec<(u64, Action)> = (0..12)
        .map(|i| (5_000 + i * 300, Action::Complete(i as u8)))
        .chain([
            (1_000, Action::Frame(vec![0xab; 60])),
            (1_000, Action::Console(b'q')),
        ])
        .collect();
    let base = record(Engine::Interpreter, &steps);
    assert!(base.completions >= 6, "{} completions", base.completions);
    for changed in [0, 5, steps.len() - 2, steps.len() - 1] {
        let mut other = steps.clone();
        other[changed].1 = match &other[changed].1 {
            Action::Complete(b) => Action::Complete(b.wrapping_add(1)),
            Action::Frame(f) => Action::Frame(f.iter().map(|b| b ^ 1).collect()),
            Action::Console(b) => Action::Console(b ^ 1),
            a => a.clone(),
        };
        let digest = record(Engine::Interpreter, &other).final_digest;
        assert_ne!(
            digest, base.final_digest,
            "changing step {changed} changed nothing"
        );
    }
}
