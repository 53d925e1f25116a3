//! Big histories, as Redis runs with failovers produce, checked and
//! timed. Ignored by default (they are measurements, not tests of
//! behavior); run them with
//! `cargo test -p ftvm-check --release --test big -- --ignored --nocapture`.

// This crate reads no clock; these measurements do.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::time::{Duration, Instant};

use common::{KvHistory, Rng, Workload, corrupt_a_read, simulate};
use ftvm_check::{CheckOptions, CheckResult, Outcome, Register, check_with};

/// A minute per check: what a harness would allow.
fn timed(history: &KvHistory) -> (CheckResult<u64>, Duration) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    let stop = || Instant::now() > deadline;
    let options = CheckOptions {
        interrupt: Some(&stop),
        ..CheckOptions::default()
    };
    let verdict = check_with(&Register::new(), history, &options).expect("well-formed");
    (verdict, start.elapsed())
}

fn summary(verdict: &CheckResult<u64>) -> String {
    match verdict {
        CheckResult::Ok => "linearizable".to_owned(),
        CheckResult::Illegal { key, explanation } => format!(
            "illegal on key {key} after a prefix of {} of {} ops",
            explanation.prefix.len(),
            explanation.operations
        ),
        CheckResult::Timeout { reason, .. } => format!("gave up ({reason:?})"),
    }
}

fn measure(name: &str, w: Workload, seed: u64) {
    let mut history = simulate(seed, w);
    let unknown = history
        .ops()
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Unknown))
        .count();
    let (verdict, good) = timed(&history);
    if w.lose == 0 {
        assert!(verdict.is_ok(), "{verdict}");
    }
    println!(
        "{name}: {} ops, {unknown} unknown, {} keys, {} clients: {} in {good:.1?}",
        history.len(),
        w.keys,
        w.clients,
        summary(&verdict),
    );
    if w.lose == 0 {
        let corrupted = corrupt_a_read(&mut history, Rng::new(seed).next()).expect("reads");
        let (verdict, bad) = timed(&history);
        assert!(!verdict.is_ok());
        println!(
            "    read {corrupted} corrupted: {} in {bad:.1?}",
            summary(&verdict)
        );
    }
}

#[test]
#[ignore = "a measurement; run explicitly"]
fn big_histories() {
    // The target: tens of thousands of operations on a few keys, ten
    // clients, failovers that leave a handful of operations unknown.
    let base = Workload {
        clients: 10,
        ops: 50_000,
        keys: 10,
        values: 5,
        unknown: 0,
        fail: 2,
        cas: 200,
        failover: 50,
        lose: 0,
    };
    for seed in 0..3 {
        let five = Workload { keys: 5, ..base };
        let unique = Workload {
            values: 1 << 40,
            ..five
        };
        measure("10 keys, values 0..5", base, seed);
        measure("5 keys, values 0..5", five, seed);
        measure("5 keys, unique values", unique, seed);
        // A store that loses one acknowledged write in a thousand.
        measure(
            "5 keys, values 0..5, lost writes",
            Workload { lose: 1000, ..five },
            seed,
        );
        measure(
            "5 keys, unique values, lost writes",
            Workload {
                lose: 1000,
                ..unique
            },
            seed,
        );
    }
    // Beyond the target: one hot key, every unknown operation on it.
    for seed in 0..3 {
        let hot = Workload {
            keys: 1,
            ops: 20_000,
            ..base
        };
        measure("1 key, 20k ops", hot, seed);
    }
}
