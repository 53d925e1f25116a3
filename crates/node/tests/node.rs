//! `Node` on its own, driven by hand with a fake clock and no I/O: the
//! roles (solo, primary, backup), the output rule between a primary and
//! its backup, the end of a pair, taking over, halting, and a recording
//! that replays. The guests are a few hand-assembled instructions, so
//! these run in milliseconds and need nothing built.

mod support;

use ftvm_board::{DeviceKind, Engine, Image, ImageMap};
use ftvm_ft::channel::Message;
use ftvm_ft::golive::Verdict;
use ftvm_node::{Effect, HaltCode, HaltReason, Node, Ran, Status};
use ftvm_replay::{End, Replayer};

use support::*;

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
    // The log went at 0 ms and its acknowledgement came at 2 ms: each
    // round trip measured is 2 ms, in the bucket up to 2.5 ms.
    let acks = &primary.stats().ack_histogram;
    assert!(acks.count >= 1, "no round trip measured");
    assert_eq!(acks.sum_ns, acks.count * 2_000_000);
    let bucket = ftvm_node::DELAY_BUCKETS_S
        .iter()
        .position(|&b| b == 0.0025)
        .expect("a 2.5 ms bucket");
    assert_eq!(acks.buckets[bucket], acks.count);

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
    let net = vec![DeviceKind::Net { mac, mtu: 1500 }];
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

/// A planned hand-over (`ftvm migrate`): the primary stops, sends
/// `HandOver` once everything is acknowledged, the backup takes over at
/// once (no timeout to wait out) and closes the channel, and the old
/// primary, asking the arbiter in turn, loses and halts as handed over.
/// Had the backup failed first, the primary would win and run on.
#[test]
fn a_hand_over_moves_the_guest_to_the_backup_without_waiting_out_a_timeout() {
    let kernel = image("spin", &[SPIN]);
    for backup_survives in [true, false] {
        let clock = Clock(0);
        let mut primary =
            Node::primary(config(), machine(&kernel, Vec::new()), clock.now()).expect("machine");
        let mut backup = Node::backup(config(), Box::new(ImageMap::of([&kernel])), clock.now());
        let mut to_backup = sent(primary.take_effects());
        let (_, effects) = run_slices(&mut primary, &clock, 3);
        to_backup.extend(sent(effects));
        assert!(primary.hand_over(clock.now()).is_ok());
        to_backup.extend(sent(primary.take_effects()));
        let icount = primary.machine().map(|m| m.icount());
        let (ran, _) = run_slices(&mut primary, &clock, 3);
        assert_eq!(ran, Ran::Blocked, "a primary handing over executes no more");
        assert_eq!(primary.machine().map(|m| m.icount()), icount);
        // The backup acknowledges; then the primary says it hands over.
        let mut acks = Vec::new();
        for message in &to_backup {
            backup.receive(message, clock.now());
            acks.extend(sent(backup.take_effects()));
        }
        let mut hand_over = Vec::new();
        for ack in &acks {
            primary.receive(ack, clock.now());
            hand_over.extend(sent(primary.take_effects()));
        }
        assert!(
            hand_over
                .iter()
                .any(|m| matches!(m, Message::HandOver { .. })),
            "{hand_over:?}"
        );
        // The backup drains in silence: the primary does not ask the
        // arbiter for that.
        let mut later = Clock(clock.0);
        primary.tick(later.advance_ms(3_000));
        assert!(!primary.take_effects().contains(&Effect::TestAndSet));
        if backup_survives {
            for message in &hand_over {
                backup.receive(message, clock.now());
            }
            assert_eq!(*backup.status(), Status::TakingOver);
            run_until_quiet(&mut backup, &clock, 1000);
            // No timeout to wait out: the arbiter is asked at once.
            backup.tick(clock.now());
            assert!(backup.take_effects().contains(&Effect::TestAndSet));
            backup.verdict(Verdict::Won, clock.now()).expect("verdict");
            assert_eq!(*backup.status(), Status::Live);
            assert!(backup.take_effects().contains(&Effect::CloseChannel));
            primary.channel_closed(true);
            primary.tick(clock.now());
            assert!(primary.take_effects().contains(&Effect::TestAndSet));
            primary
                .verdict(Verdict::Lost, clock.now())
                .expect("verdict");
            assert_eq!(*primary.status(), Status::Halted(HaltReason::HandedOver));
            assert!(HaltCode::HandedOver.is_expected());
        } else {
            primary.channel_closed(true);
            primary.tick(clock.now());
            assert!(primary.take_effects().contains(&Effect::TestAndSet));
            primary.verdict(Verdict::Won, clock.now()).expect("verdict");
            assert_eq!(*primary.status(), Status::Live);
            let (ran, _) = run_slices(&mut primary, &clock, 2);
            assert_eq!(ran, Ran::Busy, "it runs on");
        }
    }
}
