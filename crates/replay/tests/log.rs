//! Bad logs: every corruption is a typed error naming where it is, never a
//! panic and never a silently different log. Includes a fuzz of the
//! decoder (random mutations of a valid log).

use ftvm_board::{
    Digest, Engine, Firmware, Image, ImageMap, Input, IoStatus, Machine, MachineConfig,
};
use ftvm_replay::format::Position;
use ftvm_replay::{End, Event, LogError, LogReader, MachineId, Recorder, ReplayError, Replayer};
use proptest::prelude::*;

/// A raw kernel that counts in a0 forever.
fn kernel(tag: &str, extra: u32) -> Image {
    // addi a0, a0, 1; j -4; (an unreached word that makes kernels differ)
    let code: Vec<u8> = [0x0015_0513u32, 0xffdf_f06f, extra]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    Image::new(format!("/kernels/{tag}.img"), code)
}

fn config(kernel: Image) -> MachineConfig {
    MachineConfig {
        memory_mib: 16,
        firmware: Firmware::None,
        kernel,
        initrd: None,
        append: String::new(),
        insns_per_tick: 10,
        engine: Engine::Interpreter,
        virtio: Vec::new(),
    }
}

/// A recording of the counting kernel with a few inputs and checkpoints.
fn record(config: &MachineConfig) -> Vec<u8> {
    let mut machine = Machine::new(config).expect("machine");
    let id = MachineId::of(config);
    let mut rec = Recorder::new(Vec::new(), &machine, id, config.engine).expect("header");
    rec.inject(&mut machine, Input::WallClock { unix_ns: 1 << 60 })
        .expect("log");
    for round in 0..20u64 {
        machine.run(machine.icount() + 1000 + round * 37);
        rec.inject(&mut machine, Input::ConsoleByte(round as u8))
            .expect("log");
        rec.inject(
            &mut machine,
            Input::IoDone {
                id: round,
                status: IoStatus::Ok,
                data: vec![round as u8; 40],
            },
        )
        .expect("log");
        if round % 4 == 0 {
            rec.checkpoint(&machine).expect("log");
            rec.flush().expect("flush");
        }
    }
    rec.end(&machine, End::InsnLimit).expect("end");
    rec.into_inner().expect("flush").expect("logging")
}

/// Read a whole log; the first error.
fn read_all(bytes: &[u8]) -> Result<Vec<ftvm_replay::Entry>, LogError> {
    let mut reader = LogReader::open(bytes)?;
    let mut entries = Vec::new();
    while let Some(entry) = reader.next()? {
        entries.push(entry);
    }
    Ok(entries)
}

struct Fixture {
    kernel: Image,
    log: Vec<u8>,
}

fn fixture(tag: &str) -> Fixture {
    let kernel = kernel(tag, 0);
    let log = record(&config(kernel.clone()));
    Fixture { kernel, log }
}

/// Replay `bytes` with `kernel` as the only file there is.
fn replay_with(bytes: &[u8], kernel: &Image) -> Result<ftvm_replay::Replayed, ReplayError> {
    Replayer::new(bytes, Engine::Interpreter, &ImageMap::of([kernel]))?.run(&mut |_| {})
}

#[test]
fn a_good_log_replays_to_the_same_state() {
    let f = fixture("good");
    let entries = read_all(&f.log).expect("valid");
    assert_eq!(entries.len(), 1 + 20 * 2 + 5 + 2);
    let done = replay_with(&f.log, &f.kernel).expect("replays");
    assert_eq!(done.checkpoints, 6);
    let last_checkpoint = entries
        .iter()
        .rev()
        .find_map(|e| match e.event {
            Event::Checkpoint(d) => Some(d),
            _ => None,
        })
        .expect("a checkpoint");
    assert_eq!(done.digest, last_checkpoint);
}

#[test]
fn an_empty_file_is_not_a_log() {
    assert!(matches!(read_all(&[]), Err(LogError::Empty)));
    assert!(matches!(read_all(b"hello, world"), Err(LogError::NotALog)));
    assert_eq!(
        LogError::Empty.to_string(),
        "the file is empty: not an ftvm log"
    );
}

#[test]
fn a_flipped_byte_in_an_entry_is_a_checksum_error_naming_the_entry() {
    let f = fixture("flip");
    let entries = read_all(&f.log).expect("valid");
    // The last byte belongs to the end entry, in the last frame.
    let mut bad = f.log.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    let err = read_all(&bad).expect_err("corrupt");
    let LogError::Checksum {
        at: Position::Entry { seq, .. },
    } = err
    else {
        panic!("{err}");
    };
    // The frame holds the entries since the last flush; it starts at the
    // entry after the last checkpoint's flush and ends with the end entry.
    assert!(seq < entries.len() as u64 && seq > 30, "{seq}");
    assert!(err.to_string().contains(&format!("entry {seq}")), "{err}");
}

#[test]
fn a_truncated_log_names_the_entry_where_it_breaks_off() {
    let f = fixture("cut");
    let entries = read_all(&f.log).expect("valid");
    for cut in [f.log.len() - 1, f.log.len() - 30, 30, 13] {
        let err = read_all(&f.log[..cut]).expect_err("truncated");
        assert!(
            matches!(err, LogError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
    }
    // Cut at a frame boundary: the entries read fine, but replay misses the
    // end entry and says where the log stops.
    let boundary = frame_boundaries(&f.log)[2];
    let readable = read_all(&f.log[..boundary]).expect("whole frames");
    assert!(readable.len() < entries.len());
    let err = replay_with(&f.log[..boundary], &f.kernel).expect_err("no end");
    assert_eq!(
        err.to_string(),
        format!(
            "the log is truncated: it ends before entry {}, with no end-of-recording entry",
            readable.len()
        )
    );
}

/// Byte offsets where frames end (after the header frame).
fn frame_boundaries(log: &[u8]) -> Vec<usize> {
    let mut at = 12;
    let mut out = Vec::new();
    while at + 8 <= log.len() {
        let len = u32::from_le_bytes([log[at], log[at + 1], log[at + 2], log[at + 3]]) as usize;
        at += 8 + len;
        out.push(at);
    }
    out
}

#[test]
fn a_log_of_another_machine_is_refused_before_running() {
    let f = fixture("other");
    // The kernel file changes after recording.
    let changed = Image::new(f.kernel.path.clone(), vec![0x13u8, 0, 0, 0, 0x6f, 0, 0, 0]);
    let err = replay_with(&f.log, &changed).expect_err("changed kernel");
    let text = err.to_string();
    assert!(
        text.starts_with("kernel ") && text.contains("changed since the log was recorded"),
        "{text}"
    );

    // Same files, but a header whose initial state is another machine's.
    let kernel = kernel("other2", 7);
    let cfg = config(kernel.clone());
    let other = Machine::new(&config(f.kernel.clone())).expect("machine");
    let mut rec = Recorder::new(Vec::new(), &other, MachineId::of(&cfg), Engine::Interpreter)
        .expect("header");
    rec.end(&other, End::Quit).expect("end");
    let log = rec.into_inner().expect("flush").expect("logging");
    let err = replay_with(&log, &kernel).expect_err("other initial state");
    assert!(matches!(err, ReplayError::InitialState { .. }), "{err}");
}

#[test]
fn a_different_checkpoint_digest_is_a_divergence() {
    // Forge a log whose checkpoint says another digest, with a valid frame:
    // replay must stop there and name the checkpoint.
    let kernel = kernel("forged", 0);
    let cfg = config(kernel.clone());
    let mut machine = Machine::new(&cfg).expect("machine");
    let mut w = ftvm_replay::LogWriter::new(
        Vec::new(),
        &ftvm_replay::LogHeader {
            machine: MachineId::of(&cfg),
            engine: Engine::Interpreter,
            initial_digest: machine.digest().0,
        },
    )
    .expect("header");
    machine.run(500);
    w.push(500, &Event::Checkpoint(machine.digest()))
        .expect("push");
    w.push(900, &Event::Checkpoint(Digest([9; 32])))
        .expect("push");
    w.push(1000, &Event::End(End::Quit)).expect("push");
    let log = w.into_inner().expect("flush");
    let err = replay_with(&log, &kernel).expect_err("diverges");
    let ReplayError::Diverged(d) = &err else {
        panic!("{err}");
    };
    assert_eq!((d.seq, d.icount), (1, 900));
    // Nothing differs between two clean re-executions: the log itself is
    // what disagrees, and the report says so.
    // (Replay keeps a snapshot of every 8th matching checkpoint; here that
    // is still the initial state.)
    assert_eq!(
        d.first,
        ftvm_replay::FirstDifference::NotReproduced { from_icount: 0 }
    );
}

#[test]
fn every_single_byte_flip_is_detected() {
    let f = fixture("every");
    let good = read_all(&f.log).expect("valid");
    for at in 0..f.log.len() {
        let mut bad = f.log.clone();
        bad[at] ^= 0x01;
        match read_all(&bad) {
            Err(_) => {}
            Ok(entries) => panic!(
                "flipping byte {at} went unnoticed ({} entries, same: {})",
                entries.len(),
                entries == good
            ),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// The decoder never panics, whatever it is given: mutations of a valid
    /// log (flips, cuts, splices of random bytes) and plain random bytes.
    #[test]
    fn the_decoder_survives_any_input(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
        splice in prop::option::of((any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..64))),
        random in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        thread_local! {
            static LOG: Vec<u8> = fixture(&format!("fuzz-{:?}", std::thread::current().id())).log.clone();
        }
        let mut bytes = LOG.with(Clone::clone);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some((at, junk)) = splice {
            let i = at.index(bytes.len());
            bytes.splice(i..i, junk);
        }
        if let Some(cut) = cut {
            let n = cut.index(bytes.len() + 1);
            bytes.truncate(n);
        }
        let _ = read_all(&bytes);
        let _ = read_all(&random);
        let mut prefixed = b"FTVMLOG\0\x01\0\0\0".to_vec();
        prefixed.extend_from_slice(&random);
        let _ = read_all(&prefixed);
    }
}
