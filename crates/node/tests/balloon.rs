//! The memory balloon's target set on a node (`Node::set_balloon`, what
//! `ftvm set --balloon` asks of the VM that runs the guest): logged as a
//! control entry at the icount where it is applied, so a backup applies
//! it at the same one; a recording replays with it; a guest's reboot keeps
//! it; refused where it cannot be set.

mod support;

use ftvm_board::{DeviceKind, Engine, Image, ImageMap, Input};
use ftvm_ft::channel::Message;
use ftvm_node::{BalloonRefused, Node, Ran, Status};
use ftvm_replay::{Event, LogDecoder, Replayer};

use support::*;

fn target_pages(node: &Node) -> Option<u32> {
    node.machine()
        .and_then(|m| m.balloon())
        .map(|b| b.target_pages)
}

/// The entries of the log bytes in `messages`.
fn logged(messages: &[Message]) -> Vec<ftvm_replay::Entry> {
    let mut decoder = LogDecoder::default();
    for message in messages {
        if let Message::Entries { log } = message {
            decoder.push(log);
        }
    }
    std::iter::from_fn(|| decoder.next().expect("a valid log")).collect()
}

#[test]
fn a_primarys_target_reaches_its_backup_at_the_same_icount() {
    let kernel = image("spin", &[SPIN]);
    let mut clock = Clock(0);
    let balloon = machine(&kernel, vec![DeviceKind::Balloon]);
    let mut primary = Node::primary(config(), balloon, clock.now()).expect("a machine");
    let mut backup = Node::backup(config(), Box::new(ImageMap::of([&kernel])), clock.now());
    let mut to_backup = sent(primary.take_effects());
    let (_, effects) = run_slices(&mut primary, &clock, 3);
    to_backup.extend(sent(effects));

    let time = clock.advance_ms(1);
    assert_eq!(
        backup.set_balloon(4, time),
        Err(BalloonRefused::NotRunning("backup"))
    );
    assert_eq!(
        primary.set_balloon(17, time),
        Err(BalloonRefused::TooLarge {
            mib: 17,
            ram_mib: 16
        })
    );
    let set = primary.set_balloon(4, time).expect("set");
    assert_eq!((set.previous_pages, set.target_pages), (0, 1024));
    assert_eq!(Some(set.icount), primary.machine().map(|m| m.icount()));
    assert_eq!(target_pages(&primary), Some(1024));
    assert!(
        set.to_string()
            .starts_with("balloon target 4 MiB (was 0 MiB) at icount")
    );
    let (_, effects) = run_slices(&mut primary, &clock, 3);
    to_backup.extend(sent(effects));

    // The entry is in the log at the icount where the primary applied it.
    let entries = logged(&to_backup);
    let entry = entries
        .iter()
        .find(|e| e.event == Event::Input(Input::BalloonTarget { pages: 1024 }))
        .expect("the target in the log");
    assert_eq!(entry.icount, set.icount);

    // The backup replays it there: before it, no target; after, 1024.
    let time = clock.advance_ms(1);
    for message in &to_backup {
        backup.receive(message, time);
    }
    let (ran, _) = run_until_quiet(&mut backup, &clock, 1000);
    assert_eq!(ran, Ran::Blocked, "caught up, waiting for more");
    assert_eq!(*backup.status(), Status::Backup);
    let last = entries.last().map_or(0, |e| e.icount);
    assert_eq!(backup.machine().map(|m| m.icount()), Some(last));
    assert_eq!(
        backup.machine().and_then(|m| m.balloon()),
        primary.machine().and_then(|m| m.balloon())
    );
}

#[test]
fn a_machine_without_a_balloon_refuses_a_target() {
    let kernel = image("spin", &[SPIN]);
    let clock = Clock(0);
    let mut node =
        Node::solo(config(), machine(&kernel, Vec::new()), clock.now(), false).expect("a machine");
    assert_eq!(
        node.set_balloon(1, clock.now()),
        Err(BalloonRefused::NoDevice)
    );
    assert_eq!(target_pages(&node), None);
}

/// A guest that resets as soon as it starts: sifive-test 0x7777.
fn resetter() -> Image {
    image(
        "reset",
        &[
            lui(T2, 0x100),
            lui(T3, 0x7),
            addi(T3, T3, 0x777),
            store(2, T3, T2, 0),
            SPIN,
        ],
    )
}

/// A recorded solo run: the target survives the guest's reboots (each a
/// new machine), and the recording replays to the same state.
#[test]
fn a_recorded_target_survives_reboots_and_replays() {
    let kernel = resetter();
    let clock = Clock(0);
    let balloon = machine(&kernel, vec![DeviceKind::Balloon]);
    let mut node = Node::solo(config(), balloon, clock.now(), true).expect("a machine");
    let mut effects = node.take_effects();
    let set = node.set_balloon(2, clock.now()).expect("set");
    assert_eq!(set.target_pages, 512);
    let (_, more) = run_slices(&mut node, &clock, 5);
    effects.extend(more);
    assert_eq!(target_pages(&node), Some(512), "after reboots");
    node.stop(clock.now()).expect("stop");
    effects.extend(node.take_effects());
    assert!(node.status().is_done());
    let log: Vec<u8> = effects
        .into_iter()
        .filter_map(|e| match e {
            ftvm_node::Effect::Record(bytes) => Some(bytes),
            _ => None,
        })
        .flatten()
        .collect();
    let mut decoder = LogDecoder::default();
    decoder.push(&log);
    let events: Vec<Event> = std::iter::from_fn(|| decoder.next().expect("valid"))
        .map(|e| e.event)
        .collect();
    let resets = events.iter().filter(|e| **e == Event::Reset).count();
    let targets = events
        .iter()
        .filter(|e| **e == Event::Input(Input::BalloonTarget { pages: 512 }))
        .count();
    assert!(resets >= 2, "{events:?}");
    assert_eq!(targets, resets + 1, "set once, and again after each reboot");
    let replayed = Replayer::new(&log[..], Engine::Interpreter, &ImageMap::of([&kernel]))
        .expect("opens")
        .run(&mut |_| {})
        .expect("replays");
    assert_eq!(Some(replayed.digest), node.final_digest());
}
