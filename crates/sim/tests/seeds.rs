//! The simulator's seeds: a thousand runs of an FT pair under faults must
//! hold every invariant (with redundancy restored by clones placed on a
//! pool of hosts after each failover, restores struck by faults of their
//! own, and planned migrations of either VM, struck by crashes in the
//! middle), and deliberately broken variants must be caught.

use std::collections::BTreeMap;

use ftvm_sim::{
    Broken, Invariant, Options, Outcome, Output, Progress, SimError, case, guest_elf, run_seed,
};

/// Seeds per test run (split over the available cores).
const SEEDS: u64 = 1_000;

fn require_guest() {
    assert!(
        guest_elf().is_file(),
        "{} is missing: run `make -C guest`",
        guest_elf().display()
    );
}

/// Run `seeds` with `options` on every core; the failures, by seed.
fn run_all(seeds: std::ops::Range<u64>, options: &Options) -> Vec<SimError> {
    run_all_outcomes(seeds, options).1
}

/// Run `seeds` with `options` on every core; the outcomes and the
/// failures, by seed.
fn run_all_outcomes(
    seeds: std::ops::Range<u64>,
    options: &Options,
) -> (Vec<Outcome>, Vec<SimError>) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let results: Vec<Result<Outcome, SimError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let seeds = seeds.clone();
                scope.spawn(move || {
                    seeds
                        .filter(|s| s % threads == t)
                        .map(|s| run_seed(s, options))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a simulator thread panicked"))
            .collect()
    });
    let (mut outcomes, mut failures) = (Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => failures.push(e),
        }
    }
    outcomes.sort_by_key(|o| o.seed);
    failures.sort_by_key(SimError::seed);
    (outcomes, failures)
}

/// How many seeds went through each of the restores' cases.
fn cases(outcomes: &[Outcome]) -> BTreeMap<&'static str, usize> {
    let mut cases = BTreeMap::new();
    for outcome in outcomes {
        for case in &outcome.clone_cases {
            *cases.entry(*case).or_default() += 1;
        }
    }
    cases
}

/// Every seed held the invariants, and at least `at_least` seeds went
/// through each case of `required` (the seeds' plans still exercise what
/// they are meant to).
fn assert_all_hold(
    what: &str,
    outcomes: &[Outcome],
    failures: &[SimError],
    required: &[&str],
    at_least: usize,
) {
    let cases = cases(outcomes);
    let clones = outcomes.iter().filter(|o| o.clones > 0).count();
    eprintln!(
        "{what}: {} seeds, {} failed; {clones} cloned a VM; seeds in which:",
        outcomes.len() + failures.len(),
        failures.len()
    );
    for (case, n) in &cases {
        eprintln!("  {n:>5}  {case}");
    }
    let report: Vec<String> = failures.iter().map(|e| e.to_string()).collect();
    assert!(report.is_empty(), "{}", report.join("\n"));
    for case in required {
        let n = cases.get(case).copied().unwrap_or(0);
        assert!(
            n >= at_least,
            "{what}: only {n} seeds in which {case} (at least {at_least} expected)"
        );
    }
}

/// Every case of a restore the plans are drawn to exercise.
const RESTORE_CASES: [&str; 10] = [
    case::RESTORED,
    case::RESTORED_TWICE,
    case::SURVIVOR_IN_TRANSFER,
    case::CLONE_IN_TRANSFER,
    case::SURVIVOR_IN_CATCH_UP,
    case::CLONE_IN_CATCH_UP,
    case::PRIMARY_AFTER,
    case::BACKUP_AFTER,
    case::NOT_CAUGHT_UP,
    case::CLONE_TOOK_OVER,
];

/// What the default mix's migrations and placements must go through too.
const CLUSTER_CASES: [&str; 4] = [
    case::HANDED_OVER,
    case::BACKUP_MOVED,
    case::BESIDE_SURVIVOR,
    case::HOST_TOOK_BOTH,
];

/// Every case of a migration the plans are drawn to exercise.
const MIGRATION_CASES: [&str; 5] = [
    case::HANDED_OVER,
    case::HAND_OVER_PRIMARY_CRASHED,
    case::HAND_OVER_BACKUP_CRASHED,
    case::HAND_OVER_RAN_ON,
    case::BACKUP_MOVED,
];

#[test]
fn a_thousand_seeds_hold_every_invariant() {
    require_guest();
    let started = std::time::Instant::now();
    let (outcomes, failures) = run_all_outcomes(0..SEEDS, &Options::default());
    eprintln!("{SEEDS} seeds in {:.1} s", started.elapsed().as_secs_f64());
    let required: Vec<&str> = RESTORE_CASES.into_iter().chain(CLUSTER_CASES).collect();
    assert_all_hold("the default mix", &outcomes, &failures, &required, 20);
}

/// Every seed migrates early, the primary (a planned hand-over) or the
/// backup (ended, then a clone on another host), once or twice, most
/// migrations struck by a crash of either VM in the middle (for a
/// hand-over: before `HandOver`, while the backup drains, after it won the
/// test-and-set; for the backup: while its clone is sent, catches up, or
/// after). Every invariant holds, and after each hand-over the new primary
/// continues from exactly where the old one's log ends, in the state the
/// replay of that log reaches there. This found that a hand-over's crash
/// of the backup after it won the test-and-set loses the VM (the old
/// primary can never win that epoch again), and that a primary that sent
/// `HandOver` to a backup whose host died silently waits 10 s before it
/// runs on: both held as such here (the first is a second failure, the
/// second within liveness's patience).
#[test]
fn migrations_hold_every_invariant() {
    require_guest();
    let options = Options {
        migrations: true,
        ..Options::default()
    };
    let (outcomes, failures) = run_all_outcomes(0..120, &options);
    let hand_overs: u64 = outcomes.iter().map(|o| o.hand_overs).sum();
    let moves: u64 = outcomes.iter().map(|o| o.backup_moves).sum();
    eprintln!("{hand_overs} hand-overs, {moves} backups moved");
    assert_all_hold("migrations", &outcomes, &failures, &MIGRATION_CASES, 5);
}

/// Hand-overs to the letter of issue 13: the new primary continues from
/// the very icount at which the old one stopped (the log names it), in the
/// state the old one had there, re-issues no output (I/O quiesced at the
/// switch-over), and `HandOver` names only entries that were sent. Today's
/// `Node::hand_over` names no stop point, releases outputs after it
/// stopped without waiting for their completions, and logs inputs it
/// takes while handing over without sending them: about two seeds in five
/// of these fail (ARCHITECTURE.md, "The simulator").
#[test]
fn hand_overs_to_the_letter() {
    require_guest();
    let options = Options {
        migrations: true,
        strict_hand_over: true,
        ..Options::default()
    };
    let (outcomes, failures) = run_all_outcomes(0..120, &options);
    assert_all_hold("strict hand-overs", &outcomes, &failures, &[], 0);
}

/// Every seed fails over early and every restore of redundancy is struck:
/// the survivor or the new backup crashes (mostly losing what it had in
/// flight) while the snapshot is on its way, while the clone catches up,
/// or after it protects the VM. A clone must never take over before it is
/// protected, a primary must run on when its clone fails, and each new
/// pairing must hold the invariants as the first did. Seed 44 here (and
/// seeds 1723, 1873, 2164, 2773 and 3717 of the default mix) caught a
/// primary that released frames and shared-disk writes while its clone
/// caught up with no `Output` marker in the log: the clone, protected a
/// moment later and taking over when the primary died with the rest of
/// its log in flight, went live before those outputs, and its guest never
/// sent a frame the world had.
#[test]
fn restores_struck_by_faults_hold_every_invariant() {
    require_guest();
    let options = Options {
        restore_faults: true,
        ..Options::default()
    };
    let (outcomes, failures) = run_all_outcomes(0..60, &options);
    assert_all_hold("restore faults", &outcomes, &failures, &RESTORE_CASES, 10);
}

#[test]
fn a_healthy_pair_ends_cleanly() {
    require_guest();
    let options = Options {
        faults: false,
        ..Options::default()
    };
    for seed in 0..4 {
        let outcome = run_seed(seed, &options).expect("a healthy pair holds the invariants");
        assert_eq!(outcome.a, "ended (Quit)", "seed {seed}: {outcome:?}");
        assert_eq!(outcome.b, "ended (Quit)", "seed {seed}: {outcome:?}");
        assert!(outcome.ticks_seen > 50, "seed {seed}: {outcome:?}");
        assert!(outcome.requests_answered > 20, "seed {seed}: {outcome:?}");
        assert!(
            outcome.frames_received > outcome.ticks_seen,
            "seed {seed}: {outcome:?}"
        );
        assert!(outcome.replayed_entries > 0, "seed {seed}: {outcome:?}");
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    require_guest();
    let a = run_seed(7, &Options::default()).expect("seed 7");
    let b = run_seed(7, &Options::default()).expect("seed 7");
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    let options = Options {
        migrations: true,
        ..Options::default()
    };
    let a = run_seed(2, &options).expect("seed 2");
    let b = run_seed(2, &options).expect("seed 2");
    assert!(a.hand_overs + a.backup_moves > 0, "{a:?}");
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

/// A failing seed fails the same way every time, its event trace (the
/// switch's forwarding and the client's frames included) byte for byte.
#[test]
fn the_same_seed_gives_the_same_trace() {
    require_guest();
    let options = Options {
        broken: Some(Broken::StaleSwitch),
        trace: true,
        ..Options::default()
    };
    let seed = (0..60)
        .find(|&s| run_seed(s, &options).is_err())
        .expect("a stale switch is caught within 60 seeds");
    let a = run_seed(seed, &options).expect_err("the seed failed before");
    let b = run_seed(seed, &options).expect_err("the seed failed before");
    assert_eq!(a.to_string(), b.to_string());
}

/// Run `seeds` of a deliberately broken variant: at least `at_least` of
/// them must fail, and every failure must break an invariant `expected`
/// accepts (a violation of another kind is a failure of the test: the
/// variant broke something it should not, or a check is misfiled).
fn assert_caught(
    broken: Broken,
    seeds: std::ops::Range<u64>,
    at_least: usize,
    expected: fn(Invariant) -> bool,
) {
    assert_caught_with(Options::default(), broken, seeds, at_least, expected);
}

/// [`assert_caught`] with other options than the default mix.
fn assert_caught_with(
    options: Options,
    broken: Broken,
    seeds: std::ops::Range<u64>,
    at_least: usize,
    expected: fn(Invariant) -> bool,
) {
    require_guest();
    let options = Options {
        broken: Some(broken),
        ..options
    };
    let n = seeds.end - seeds.start;
    let failures = run_all(seeds, &options);
    let (caught, other): (Vec<&SimError>, Vec<&SimError>) = failures
        .iter()
        .partition(|e| e.invariant().is_some_and(expected));
    let mut kinds: Vec<String> = failures
        .iter()
        .map(|e| e.invariant().map_or("setup".into(), |i| i.to_string()))
        .collect();
    kinds.sort();
    kinds.dedup();
    eprintln!(
        "{}: {} of {n} seeds caught ({})",
        broken.name(),
        caught.len(),
        kinds.join(", ")
    );
    assert!(
        other.is_empty(),
        "{} seeds of {} fail with an unexpected invariant:\n{}",
        other.len(),
        broken.name(),
        report(&other)
    );
    assert!(
        caught.len() >= at_least,
        "only {} of {n} seeds caught {}:\n{}",
        caught.len(),
        broken.name(),
        report(&caught)
    );
}

fn report(failures: &[&SimError]) -> String {
    let lines: Vec<String> = failures.iter().map(|e| e.to_string()).collect();
    lines.join("\n")
}

/// Outputs released before the backup holds their entries: when it goes
/// live, the world has output its execution never produced. The forged
/// acknowledgements also keep the primary's failure detector hearing from
/// a backup that crashed, so the primary never goes live after the crash:
/// that is caught as liveness (no VM live after the failure). And a clone
/// never protects the VM (the forged acknowledgements run ahead of its
/// own, which its primary then refuses as going backwards, so it never
/// learns how far the clone has come): caught as liveness of the restore.
#[test]
fn releasing_outputs_without_acks_is_caught() {
    assert_caught(Broken::AckOnSend, 0..60, 3, |i| {
        matches!(
            i,
            Invariant::OutputConsistency(Output::Orphan)
                | Invariant::Liveness(Progress::Failover | Progress::Restore)
        )
    });
}

/// A test-and-set that always wins lets both VMs go live (one after the
/// other, at least): the second releases outputs after the first did as
/// the live VM, or both are live at once.
#[test]
fn a_split_brain_is_caught() {
    assert_caught(Broken::ArbiterAlwaysWins, 0..60, 3, |i| {
        i == Invariant::AtMostOneLive
    });
}

/// A disk that acknowledges writes it never made: the guest's read-back
/// (or the final check of its table against the disk) notices.
#[test]
fn a_lost_acknowledged_write_is_caught() {
    assert_caught(Broken::DiskLosesWrites, 0..10, 5, |i| {
        i == Invariant::NoLostWrite
    });
}

/// A backup that goes live without re-issuing the transmits that have no
/// completion in the log: a frame the old primary never sent is never sent
/// at all, and the world's stream of the guest's frames has a gap. (The
/// forgotten requests also stay in flight for good, so the VM can never be
/// cloned: caught as liveness of the restore when no frame follows.)
#[test]
fn a_forgotten_reissue_of_frames_is_caught() {
    assert_caught(Broken::NoReissue, 0..60, 3, |i| {
        matches!(
            i,
            Invariant::OutputConsistency(Output::FrameGap) | Invariant::Liveness(Progress::Restore)
        )
    });
}

/// A switch that never moves the VM's address after the first port it
/// learnt: after a failover the client's requests go to the old primary's
/// port, and the client stalls.
#[test]
fn a_switch_that_ignores_the_announcement_is_caught() {
    assert_caught(Broken::StaleSwitch, 0..60, 3, |i| {
        i == Invariant::Liveness(Progress::Client)
    });
}

/// A new backup told it protects the VM before its primary holds outputs
/// for it: when the primary dies while the clone catches up, losing the
/// log it had in flight, the clone takes over although the primary
/// released outputs the clone never had the log of. The world then holds
/// output the surviving execution never produced (or produced otherwise).
#[test]
fn a_clone_that_joins_before_it_is_protected_is_caught() {
    let options = Options {
        restore_faults: true,
        ..Options::default()
    };
    assert_caught_with(options, Broken::CloneJoinsEarly, 0..100, 5, |i| {
        matches!(i, Invariant::OutputConsistency(_) | Invariant::Determinism)
    });
}

/// A clone that misses the log its primary wrote while the snapshot was on
/// its way (cut out by a middlebox that renumbers what follows, so that no
/// sequence check notices) replays from its snapshot without those inputs:
/// it diverges from its primary (a guest that idles where the log says it
/// ran on, or a checkpoint that does not match) and halts.
#[test]
fn a_clone_that_drops_the_log_tail_is_caught() {
    assert_caught(Broken::CloneDropsLogTail, 0..60, 3, |i| {
        i == Invariant::Determinism
    });
}

/// A migrated primary that continues from the wrong icount: `HandOver`
/// reaches the backup ahead of the log its primary still had in flight
/// (and of what it flushed as it stopped), so the backup freezes short of
/// the stop point and goes live there. Caught when the new primary goes
/// live at another icount than the one where the log the old primary sent
/// ends, or (an input at the same icount missing) at the end, where the
/// replay of that log reaches another state than it continued from. When
/// nothing was in flight the backup lands where the log ends, but it went
/// live without waiting for a primary that may still act on the
/// acknowledgements it had sent: the old primary then releases an output
/// after the new one did (at most one live).
#[test]
fn a_migrated_primary_that_continues_from_the_wrong_icount_is_caught() {
    assert_caught(Broken::MigratedPrimaryWrongIcount, 0..60, 20, |i| {
        matches!(
            i,
            Invariant::HandOver | Invariant::AtMostOneLive | Invariant::OutputConsistency(_)
        )
    });
}

/// An agent that places a new backup on its own host while another host
/// has room (anti-affinity ignored): caught at the placement, before a
/// crash of that host could take both VMs.
#[test]
fn a_backup_placed_beside_its_survivor_is_caught() {
    assert_caught(Broken::SameHostBackup, 0..30, 15, |i| {
        i == Invariant::Placement
    });
}

/// Slow links with corrupt frames: a backup that closes the channel on a
/// bad frame must not go live while acknowledgements it sent are still in
/// flight, or the primary, not yet aware of the close, releases outputs
/// after the live backup's (invariant 3; for a shared-disk write, an old
/// write could land after a newer one). Seeds 43, 127, 242 and 247 caught
/// this before the backup learnt to wait out the primary's timeout.
#[test]
fn slow_links_with_corrupt_frames_hold_every_invariant() {
    require_guest();
    let options = Options {
        slow_and_corrupt: true,
        ..Options::default()
    };
    let failures = run_all(0..300, &options);
    let report: Vec<String> = failures.iter().map(|e| e.to_string()).collect();
    assert!(report.is_empty(), "{}", report.join("\n"));
}
