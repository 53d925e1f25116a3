//! Cloning a running VM into a new backup, driven by hand: the snapshot
//! streamed through the real `CloneSender` and `CloneReceiver`, the log
//! from the snapshot's icount, the catch-up during which outputs do not
//! wait, the switch to the output rule, and a take-over by the clone with
//! the console continuing without a gap. A clone whose primary fails
//! before it caught up must not take over; a clone that fails before it
//! caught up costs the primary nothing.

mod support;

use ftvm_board::{Image, ImageMap};
use ftvm_ft::channel::Message;
use ftvm_ft::clone::{CloneReceiver, CloneSender};
use ftvm_ft::golive::Verdict;
use ftvm_node::{CloneRefused, Effect, HaltReason, Node, Status};
use support::*;

const T4: u32 = 29;

fn i_type(funct3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (funct3 << 12) | (rd << 7) | 0x13
}

/// `blt rs1, rs2, offset` (offset in bytes, within ±4 KiB).
fn blt(rs1: u32, rs2: u32, offset: i32) -> u32 {
    let o = offset as u32;
    (((o >> 12) & 1) << 31)
        | (((o >> 5) & 0x3f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (4 << 12)
        | (((o >> 1) & 0xf) << 8)
        | (((o >> 11) & 1) << 7)
        | 0x63
}

/// `jal x0, offset` (offset in bytes, within ±1 MiB).
fn jump(offset: i32) -> u32 {
    let o = offset as u32;
    (((o >> 20) & 1) << 31)
        | (((o >> 1) & 0x3ff) << 21)
        | (((o >> 11) & 1) << 20)
        | (((o >> 12) & 0xff) << 12)
        | 0x6f
}

/// Prints the printable characters from `@` to DEL in a cycle, forever,
/// with a busy wait of some 20,000 instructions between two.
fn ticker() -> Vec<u32> {
    vec![
        lui(T0, 0x10000),        // 0: UART
        addi(T1, 0, 0x40),       // 4: t1 = '@'
        lui(T3, 0x2),            // 8: t3 = 8192
        store(0, T1, T0, 0),     // 12: sb t1, 0(t0)
        addi(T1, T1, 1),         // 16
        i_type(7, T1, T1, 0x3f), // 20: andi t1, t1, 0x3f
        i_type(6, T1, T1, 0x40), // 24: ori t1, t1, 0x40
        addi(T2, 0, 0),          // 28: t2 = 0
        addi(T2, T2, 1),         // 32: t2 += 1
        blt(T2, T3, -4),         // 36: while t2 < t3
        addi(T4, T4, 1),         // 40: a count the digest sees
        jump(-32),               // 44: back to the store
    ]
}

fn kernel() -> Image {
    image("ticker", &ticker())
}

/// Deliver `messages` to `to` and return what it sends back.
fn deliver(to: &mut Node, messages: &[Message], clock: &Clock) -> Vec<Message> {
    let mut replies = Vec::new();
    for message in messages {
        to.receive(message, clock.now());
        replies.extend(sent(to.take_effects()));
    }
    replies
}

/// A VM running alone, cloned: the clone's snapshot, and the new backup.
fn cloned(clock: &mut Clock) -> (Node, Node, Vec<u8>) {
    let kernel = kernel();
    let mut primary =
        Node::solo(config(), machine(&kernel, Vec::new()), clock.now(), false).expect("machine");
    primary.take_effects();
    let mut console = Vec::new();
    for _ in 0..4 {
        clock.advance_ms(5);
        let (_, effects) = run_slices(&mut primary, clock, 1);
        console.extend(console_of(&effects));
    }
    assert!(!console.is_empty(), "the ticker prints");
    let mut buffer = vec![0xEE; 1 << 20];
    let begun = primary
        .start_clone(2, &mut buffer, clock.now())
        .expect("a VM alone can be cloned");
    assert!(buffer.is_empty(), "the buffer went into the snapshot");
    assert_eq!(*primary.status(), Status::Cloning);
    assert_eq!(primary.config().epoch, 2);
    assert_eq!(
        primary.start_clone(3, &mut Vec::new(), clock.now()).err(),
        Some(CloneRefused::HasBackup)
    );
    let digest = begun.snapshot.digest();
    assert_eq!(Some(digest), primary.machine().map(|m| m.digest()));

    // The guest runs on while the snapshot is on its way: its output
    // leaves at once, and nothing is sent yet.
    let mut sender = CloneSender::new(begun.snapshot, begun.start);
    for _ in 0..3 {
        clock.advance_ms(5);
        let (_, effects) = run_slices(&mut primary, clock, 1);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Send(_))));
        console.extend(console_of(&effects));
    }
    let mut receiver = CloneReceiver::default();
    let mut whole = None;
    while let Some(message) = sender.next_message() {
        whole = receiver.receive(message).expect("a valid stream");
    }
    let whole = whole.expect("the clone arrived");
    let backup = Node::backup_from_clone(
        config(),
        Box::new(ImageMap::of([&kernel])),
        whole,
        clock.now(),
    )
    .expect("the backup restores the snapshot");
    assert_eq!(backup.machine().map(|m| m.digest()), Some(digest));
    assert!(primary.clone_sent(digest, clock.now()).expect("log"));
    (primary, backup, console)
}

/// Run the pair until the primary says the clone caught up.
fn catch_up(primary: &mut Node, backup: &mut Node, clock: &mut Clock, console: &mut Vec<u8>) {
    let mut to_backup = sent(primary.take_effects());
    for round in 0..2000 {
        let acks = deliver(backup, &to_backup, clock);
        let (_, effects) = run_slices(backup, clock, 50);
        let mut to_primary = acks;
        to_primary.extend(sent(effects));
        clock.advance_ms(1);
        backup.tick(clock.now());
        to_primary.extend(sent(backup.take_effects()));
        to_backup.clear();
        for message in &to_primary {
            primary.receive(message, clock.now());
            let effects = primary.take_effects();
            console.extend(console_of(&effects));
            to_backup.extend(sent(effects));
        }
        if *primary.status() == Status::Primary {
            assert!(
                to_backup
                    .iter()
                    .any(|m| matches!(m, Message::Protected { .. })),
                "round {round}: the backup is told"
            );
            deliver(backup, &to_backup, clock);
            return;
        }
        let (_, effects) = run_slices(primary, clock, 1);
        console.extend(console_of(&effects));
        to_backup.extend(sent(effects));
    }
    panic!("the clone never caught up");
}

#[test]
fn a_clone_catches_up_protects_the_vm_and_takes_over_without_a_gap_in_the_console() {
    let mut clock = Clock(0);
    let (mut primary, mut backup, mut console) = cloned(&mut clock);
    assert_eq!(*primary.status(), Status::Cloning);
    catch_up(&mut primary, &mut backup, &mut clock, &mut console);
    assert_eq!(primary.stats().milestones.clones, 1);

    // Now output waits for the backup.
    let mut log = Vec::new();
    for _ in 0..3 {
        clock.advance_ms(400);
        let (_, effects) = run_slices(&mut primary, &clock, 1);
        assert!(console_of(&effects).is_empty(), "output before its ack");
        log.extend(sent(effects));
    }
    // The backup holds that log; the primary dies before the acks reach it.
    deliver(&mut backup, &log, &clock);
    clock.advance_ms(5_000);
    backup.tick(clock.now());
    assert_eq!(*backup.status(), Status::TakingOver);
    run_until_quiet(&mut backup, &clock, 100_000);
    clock.advance_ms(5_000);
    backup.tick(clock.now());
    assert!(backup.take_effects().contains(&Effect::TestAndSet));
    backup.verdict(Verdict::Won, clock.now()).expect("verdict");
    assert_eq!(*backup.status(), Status::Live);
    // The clone writes the console from where the world's stream stands
    // (the bytes the dead primary never released included), the same bytes
    // at the same offsets.
    let effects = backup.take_effects();
    let mut stream = console.clone();
    for effect in &effects {
        if let Effect::Console { offset, bytes } = effect {
            let offset = *offset as usize;
            assert!(offset <= stream.len(), "a gap in the console");
            let overlap = (stream.len() - offset).min(bytes.len());
            assert_eq!(
                &stream[offset..offset + overlap],
                &bytes[..overlap],
                "different bytes at the same offset"
            );
            stream.extend_from_slice(&bytes[overlap..]);
        }
    }
    assert!(stream.len() > console.len(), "the held output is written");
    let (_, effects) = run_slices(&mut backup, &clock, 20);
    for effect in effects {
        if let Effect::Console { offset, bytes } = effect {
            assert_eq!(offset as usize, stream.len(), "the live clone continues");
            stream.extend(bytes);
        }
    }
    // The guest cycles through 64 characters: the stream is one cycle.
    for pair in stream.windows(2) {
        assert_eq!(((pair[0] + 1) & 0x3f) | 0x40, pair[1], "{stream:?}");
    }
}

/// The primary dies while its clone is catching up: the primary released
/// outputs without waiting for the clone, so the clone must halt rather
/// than take over.
#[test]
fn a_clone_that_has_not_caught_up_never_takes_over() {
    let mut clock = Clock(0);
    let (mut primary, mut backup, _) = cloned(&mut clock);
    let log = sent(primary.take_effects());
    deliver(&mut backup, &log, &clock);
    clock.advance_ms(5_000);
    backup.tick(clock.now());
    assert_eq!(*backup.status(), Status::Halted(HaltReason::NotCaughtUp));
    assert!(HaltReason::NotCaughtUp.code().is_expected());
    assert!(!backup.take_effects().contains(&Effect::TestAndSet));
}

/// The clone falls silent before it caught up: the primary drops it, runs
/// on alone with no arbiter asked, and can be cloned again.
#[test]
fn a_primary_drops_a_clone_that_fails_before_it_caught_up() {
    let mut clock = Clock(0);
    let (mut primary, _backup, _) = cloned(&mut clock);
    primary.take_effects();
    // A clone may be busy restoring its snapshot: some seconds of silence
    // are not held against it.
    clock.advance_ms(5_000);
    primary.tick(clock.now());
    assert_eq!(*primary.status(), Status::Cloning);
    clock.advance_ms(6_000);
    primary.tick(clock.now());
    assert_eq!(*primary.status(), Status::Live);
    let effects = primary.take_effects();
    assert!(effects.contains(&Effect::CloseChannel));
    assert!(!effects.contains(&Effect::TestAndSet));
    let (_, effects) = run_slices(&mut primary, &clock, 1);
    assert!(!console_of(&effects).is_empty(), "it runs on");
    assert!(
        primary.start_clone(3, &mut Vec::new(), clock.now()).is_ok(),
        "a later clone may try again"
    );
    // A clone given up while its snapshot is on the way.
    primary.clone_failed("the transfer failed");
    assert_eq!(*primary.status(), Status::Live);
    assert!(
        !primary
            .clone_sent(ftvm_board::Digest([0; 32]), clock.now())
            .expect("ok")
    );
}

#[test]
fn only_a_vm_that_runs_alone_can_be_cloned() {
    let clock = Clock(0);
    let kernel = kernel();
    let mut primary =
        Node::primary(config(), machine(&kernel, Vec::new()), clock.now()).expect("machine");
    assert_eq!(
        primary.start_clone(2, &mut Vec::new(), clock.now()).err(),
        Some(CloneRefused::HasBackup)
    );
    let mut backup = Node::backup(config(), Box::new(ImageMap::of([&kernel])), clock.now());
    assert_eq!(
        backup.start_clone(2, &mut Vec::new(), clock.now()).err(),
        Some(CloneRefused::NotRunning)
    );
    let mut recording =
        Node::solo(config(), machine(&kernel, Vec::new()), clock.now(), true).expect("machine");
    assert_eq!(
        recording.start_clone(2, &mut Vec::new(), clock.now()).err(),
        Some(CloneRefused::Recording)
    );
}

/// A clone of a machine this host cannot build as the primary built it
/// (another file behind the same path) is one error, and no backup.
#[test]
fn a_clone_of_another_machine_is_refused() {
    let clock = Clock(0);
    let kernel = kernel();
    let mut primary =
        Node::solo(config(), machine(&kernel, Vec::new()), clock.now(), false).expect("machine");
    run_slices(&mut primary, &clock, 2);
    let begun = primary
        .start_clone(2, &mut Vec::new(), clock.now())
        .expect("clone");
    let mut sender = CloneSender::new(begun.snapshot, begun.start);
    let mut receiver = CloneReceiver::default();
    let mut whole = None;
    while let Some(message) = sender.next_message() {
        whole = receiver.receive(message).expect("a valid stream");
    }
    let other = Image::new(kernel.path.clone(), vec![0x13, 0, 0, 0]);
    let refused = Node::backup_from_clone(
        config(),
        Box::new(ImageMap::of([&other])),
        whole.expect("whole"),
        clock.now(),
    );
    let Err(error) = refused else {
        panic!("a backup from a clone of another machine");
    };
    assert!(error.to_string().contains("changed since"), "{error}");
}
