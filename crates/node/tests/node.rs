//! `Node` on its own, driven by hand with a fake clock and no I/O: the
//! roles (solo, primary, backup), the output rule between a primary and
//! its backup, the end of a pair, taking over, halting, and a recording
//! that replays. The guests are a few hand-assembled instructions, so
//! these run in milliseconds and need nothing built.

use ftvm_board::{DeviceKind, Engine, Firmware, Image, ImageMap, MachineConfig};
use ftvm_ft::channel::Message;
use ftvm_ft::golive::Verdict;
use ftvm_node::{Effect, HaltCode, HaltReason, Node, NodeConfig, Ran, Status, Time};
use ftvm_replay::{End, Replayer};

// A few RV64 encodings, enough for the guests below.
const T0: u32 = 5;
const T1: u32 = 6;
const T2: u32 = 7;
const T3: u32 = 28;

fn lui(rd: u32, imm20: u32) -> u32 {
    (imm20 << 12) | (rd << 7) | 0x37
}

fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (rd << 7) | 0x13
}

fn store(funct3: u32, rs2: u32, rs1: u32, offset: u32) -> u32 {
    ((offset >> 5) << 25) | (rs2 << 20) | (rs1 << 15) | (funct3 << 12) | ((offset & 31) << 7) | 0x23
}

/// `jal x0, 0`: spin forever.
const SPIN: u32 = 0x0000_006f;

/// Print `text` on the UART, then power off with the pass code.
fn printer(text: &[u8]) -> Vec<u32> {
    let mut code = vec![lui(T0, 0x10000)]; // UART at 0x1000_0000
    for &byte in text {
        code.push(addi(T1, 0, i32::from(byte)));
        code.push(store(0, T1, T0, 0)); // sb t1, 0(t0)
    }
    code.extend([
        lui(T2, 0x100), // sifive-test at 0x0010_0000
        lui(T3, 0x5),
        addi(T3, T3, 0x555),
        store(2, T3, T2, 0), // sw t3, 0(t2): pass, power off
        SPIN,
    ]);
    code
}

fn image(name: &str, code: &[u32]) -> Image {
    let bytes: Vec<u8> = code.iter().flat_map(|w| w.to_le_bytes()).collect();
    Image::new(format!("/guests/{name}.img"), bytes)
}

fn machine(kernel: &Image, virtio: Vec<DeviceKind>) -> MachineConfig {
    MachineConfig {
        memory_mib: 16,
        firmware: Firmware::None,
        kernel: kernel.clone(),
        initrd: None,
        append: String::new(),
        insns_per_tick: MachineConfig::DEFAULT_INSNS_PER_TICK,
        engine: Engine::Interpreter,
        virtio,
    }
}

fn config() -> NodeConfig {
    let mut config = NodeConfig::new("test-pair");
    config.steer_time = false;
    config.engine = Engine::Interpreter;
    config
}

/// A clock the test moves.
struct Clock(u64);

impl Clock {
    fn now(&self) -> Time {
        Time {
            mono_ns: self.0,
            unix_ns: 1_700_000_000_000_000_000 + self.0,
        }
    }

    fn advance_ms(&mut self, ms: u64) -> Time {
        self.0 += ms * 1_000_000;
        self.now()
    }
}

/// Run `node` until it blocks or ends (at most `limit` calls).
fn run_until_quiet(node: &mut Node, clock: &Clock, limit: usize) -> (Ran, Vec<Effect>) {
    let (ran, effects) = run_slices(node, clock, limit);
    assert_ne!(ran, Ran::Busy, "still busy after {limit} calls");
    (ran, effects)
}

/// Run `node` for at most `calls` calls, until it is not busy.
fn run_slices(node: &mut Node, clock: &Clock, calls: usize) -> (Ran, Vec<Effect>) {
    let mut effects = Vec::new();
    let mut ran = Ran::Busy;
    for _ in 0..calls {
        let time = clock.now();
        ran = node.run(&mut || time).expect("run");
        effects.extend(node.take_effects());
        if ran != Ran::Busy {
            break;
        }
    }
    (ran, effects)
}

fn console_of(effects: &[Effect]) -> Vec<u8> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Console { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn sent(effects: Vec<Effect>) -> Vec<Message> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

#[test]
fn a_solo_run_prints_ends_and_its_recording_replays_to_the_same_state() {
    let kernel = image("hello", &printer(b"hi\n"));
    let clock = Clock(0);
    let mut node =
        Node::solo(config(), machine(&kernel, Vec::new()), clock.now(), true).expect("a machine");
    assert_eq!(*node.status(), Status::Live);
    let mut effects = node.take_effects();
    let (ran, more) = run_until_quiet(&mut node, &clock, 100);
    effects.extend(more);
    assert_eq!(ran, Ran::Done);
    assert_eq!(*node.status(), Status::Ended(End::PowerOff { code: 0 }));
    assert_eq!(console_of(&effects), b"hi\n");
    let log: Vec<u8> = effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Record(bytes) => Some(bytes),
            _ => None,
        })
        .flatten()
        .collect();
    let machine = node.machine().expect("the machine as it ended");
    let digest = node
        .final_digest()
        .expect("a recorded run ends on a checkpoint");
    assert_eq!(digest, machine.digest());
    let replayed = Replayer::new(&log[..], Engine::Interpreter, &ImageMap::of([&kernel]))
        .expect("the recording opens")
        .run(&mut |_| {})
        .expect("the recording replays");
    assert_eq!(replayed.end, End::PowerOff { code: 0 });
    assert_eq!(replayed.icount, machine.icount());
    assert_eq!(replayed.digest, digest);
}

#[test]
fn a_solo_run_stops_at_exactly_its_instruction_limit() {
    let kernel = image("spin", &[SPIN]);
    let mut config = config();
    config.max_insns = Some(12_345);
    let clock = Clock(0);
    let mut node =
        Node::solo(config, machine(&kernel, Vec::new()), clock.now(), false).expect("a machine");
    let (ran, effects) = run_until_quiet(&mut node, &clock, 100);
    assert_eq!(ran, Ran::Done);
    assert_eq!(*node.status(), Status::Ended(End::InsnLimit));
    assert_eq!(node.machine().map(|m| m.icount()), Some(12_345));
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Record(_))),
        "an unrecorded run records nothing"
    );
}

/// A primary and a backup wired by hand: the primary's console output
/// leaves only once the backup has acknowledged the log up to it, and the
/// pair ends when the backup holds the end.
#[test]
fn a_primary_releases_output_only_after_the_backups_acknowledgement() {
    let kernel = image("hello", &printer(b"ok\n"));
    let mut clock = Clock(0);
    let mut primary =
        Node::primary(config(), machine(&kernel, Vec::new()), clock.now()).expect("a machine");
    let mut backup = Node::backup(config(), Box::new(ImageMap::of([&kernel])), clock.now());
    let mut to_backup = sent(primary.take_effects());
    let (ran, effects) = run_until_quiet(&mut primary, &clock, 100);
    assert_eq!(ran, Ran::Blocked, "an ending primary waits for its backup");
    assert!(
        console_of(&effects).is_empty(),
        "output left before the backup held it"
    );
    assert_eq!(*primary.status(), Status::Primary);
    to_backup.extend(sent(effects));
    assert!(!to_backup.is_empty());

    // The backup acknowledges what it received before it executes it.
    let time = clock.advance_ms(1);
    let mut acks = Vec::new();
    for message in &to_backup {
        backup.receive(message, time);
        acks.extend(sent(backup.take_effects()));
    }
    assert!(matches!(acks.last(), Some(Message::Ack { .. })), "{acks:?}");
    assert_eq!(backup.machine().map(|m| m.icount()), Some(0));

    let time = clock.advance_ms(1);
    let mut released = Vec::new();
    for ack in &acks {
        primary.receive(ack, time);
        released.extend(primary.take_effects());
    }
    assert_eq!(console_of(&released), b"ok\n");
    assert_eq!(*primary.status(), Status::Ended(End::PowerOff { code: 0 }));
    assert!(primary.stats().outputs >= 1);

    // The backup replays to the end, and ends too, without going live.
    let (ran, effects) = run_until_quiet(&mut backup, &clock, 1000);
    assert_eq!(ran, Ran::Done);
    assert_eq!(*backup.status(), Status::Ended(End::PowerOff { code: 0 }));
    assert!(
        console_of(&effects).is_empty(),
        "a backup releases nothing while its primary runs"
    );
    assert!(!backup.stats().milestones.took_over);
}

/// A pair whose primary falls silent: the backup drains what it holds,
/// asks the arbiter, and only a win makes it live (announcing the VM's
/// address first); a loss halts it.
#[test]
fn a_backup_takes_over_only_when_it_wins_the_test_and_set() {
    let kernel = image("spin", &[SPIN]);
    let mac = [0x52, 0x54, 0, 1, 2, 3];
    let net = vec![DeviceKind::Net { mac }];
    for verdict in [Verdict::Won, Verdict::Lost] {
        let mut clock = Clock(0);
        let mut primary =
            Node::primary(config(), machine(&kernel, net.clone()), clock.now()).expect("a machine");
        let mut backup = Node::backup(config(), Box::new(ImageMap::of([&kernel])), clock.now());
        let mut log = sent(primary.take_effects());
        let (_, effects) = run_slices(&mut primary, &clock, 5);
        log.extend(sent(effects));
        let time = clock.advance_ms(1);
        for message in &log {
            backup.receive(message, time);
        }
        backup.take_effects();
        // The primary dies: no more messages; the detector times out.
        let time = clock.advance_ms(5_000);
        backup.tick(time);
        assert_eq!(*backup.status(), Status::TakingOver);
        assert!(backup.stats().milestones.suspected_peer);
        run_until_quiet(&mut backup, &clock, 10_000);
        // It asks once the primary can no longer act on an acknowledgement.
        let time = clock.advance_ms(5_000);
        backup.tick(time);
        assert!(
            backup.take_effects().contains(&Effect::TestAndSet),
            "the backup did not ask the arbiter"
        );
        backup.verdict(verdict, time).expect("verdict");
        match verdict {
            Verdict::Won => {
                assert_eq!(*backup.status(), Status::Live);
                let effects = backup.take_effects();
                assert_eq!(effects.first(), Some(&Effect::Announce { mac }));
                let milestones = backup.stats().milestones;
                assert!(milestones.took_over && milestones.announced);
                assert_eq!(milestones.verdict, Some(Verdict::Won));
            }
            _ => {
                assert_eq!(*backup.status(), Status::Halted(HaltReason::LostTestAndSet));
                assert!(HaltCode::LostTestAndSet.is_expected());
            }
        }
    }
}

/// A primary that suspects its backup stops releasing output until it
/// wins the test-and-set; then it runs on alone and releases what it held.
#[test]
fn a_primary_whose_backup_is_silent_releases_its_output_only_after_winning() {
    let kernel = image("hello", &printer(b"held\n"));
    let mut clock = Clock(0);
    let mut primary =
        Node::primary(config(), machine(&kernel, Vec::new()), clock.now()).expect("a machine");
    primary.take_effects();
    let (_, effects) = run_until_quiet(&mut primary, &clock, 100);
    assert!(console_of(&effects).is_empty());
    let time = clock.advance_ms(5_000);
    primary.tick(time);
    assert_eq!(*primary.status(), Status::Arbitrating);
    assert!(primary.take_effects().contains(&Effect::TestAndSet));
    primary.verdict(Verdict::Won, time).expect("verdict");
    let effects = primary.take_effects();
    assert_eq!(console_of(&effects), b"held\n");
    assert_eq!(*primary.status(), Status::Ended(End::PowerOff { code: 0 }));
}

/// A backup that cannot build the primary's machine (its copy of the
/// kernel is another file) halts with a reason, before replaying anything.
#[test]
fn a_backup_with_other_files_halts_and_says_why() {
    let kernel = image("hello", &printer(b"x"));
    let clock = Clock(0);
    let mut primary =
        Node::primary(config(), machine(&kernel, Vec::new()), clock.now()).expect("a machine");
    let other = Image::new(kernel.path.clone(), vec![0x13, 0, 0, 0]);
    let mut backup = Node::backup(config(), Box::new(ImageMap::of([&other])), clock.now());
    for message in sent(primary.take_effects()) {
        backup.receive(&message, clock.now());
    }
    let Status::Halted(why) = backup.status() else {
        panic!("{:?}", backup.status());
    };
    assert_eq!(why.code(), HaltCode::CannotReplay);
    assert!(!why.code().is_expected());
    assert!(why.to_string().contains("changed since"), "{why}");
}

#[test]
fn stopping_ends_a_running_vm_and_halts_a_backup() {
    let kernel = image("spin", &[SPIN]);
    let clock = Clock(0);
    let mut solo =
        Node::solo(config(), machine(&kernel, Vec::new()), clock.now(), false).expect("a machine");
    run_slices(&mut solo, &clock, 3);
    solo.stop(clock.now()).expect("stop");
    assert_eq!(*solo.status(), Status::Ended(End::Quit));
    let mut backup = Node::backup(config(), Box::new(ImageMap::default()), clock.now());
    backup.stop(clock.now()).expect("stop");
    assert_eq!(*backup.status(), Status::Halted(HaltReason::Stopped));
}
