//! Property tests: histories of real executions are linearizable, and
//! stop being so when a read is corrupted; on tiny random histories the
//! checker agrees with an exhaustive search.

mod common;

use common::{KvHistory, WholeStore, Workload, brute_force, corrupt_a_read, simulate};
use ftvm_check::{CheckResult, History, KvOp, Operation, Register, RegisterOutput, check};
use proptest::prelude::*;

fn workload() -> impl Strategy<Value = Workload> {
    (
        (1usize..8, 1usize..150, 1u64..4, 1i64..6),
        (0u64..120, 0u64..100, 0u64..400, 0u64..20_000),
    )
        .prop_map(
            |((clients, ops, keys, values), (unknown, fail, cas, failover))| Workload {
                clients,
                ops,
                keys,
                values,
                unknown,
                fail,
                cas,
                failover,
                lose: 0,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn real_executions_are_linearizable(seed in any::<u64>(), w in workload()) {
        let history = simulate(seed, w);
        let verdict = check(&Register::new(), &history).unwrap();
        prop_assert!(verdict.is_ok(), "{}", verdict);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_caught(
        seed in any::<u64>(),
        pick in any::<u64>(),
        w in workload(),
    ) {
        let mut history = simulate(seed, w);
        let Some(corrupted) = corrupt_a_read(&mut history, pick) else {
            return Ok(());
        };
        match check(&Register::new(), &history).unwrap() {
            CheckResult::Illegal { key, explanation } => {
                prop_assert_eq!(key, history.ops()[corrupted.0].input.key);
                prop_assert!(!explanation.candidates.is_empty());
            }
            other => prop_assert!(false, "corrupting {} gave {}", corrupted, other),
        }
    }
}

/// A tiny history with random inputs, outcomes and intervals: mostly
/// not linearizable, which is the point.
fn tiny_history() -> impl Strategy<Value = KvHistory> {
    prop::collection::vec(any::<(u8, u8, u8, u8, u8, u8, u8)>(), 0..7).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (key, kind, a, b, call, len, outcome))| {
                let (key, a, b) = (u64::from(key % 2), i64::from(a % 3), i64::from(b % 3));
                let (input, output) = match kind % 3 {
                    0 => (
                        KvOp::read(key),
                        RegisterOutput::Read(if b == 2 { None } else { Some(a) }),
                    ),
                    1 => (KvOp::write(key, a), RegisterOutput::Written),
                    _ => (KvOp::cas(key, a, b), RegisterOutput::Cas(b % 2 == 0)),
                };
                let (call, ret) = (u64::from(call % 12), u64::from(call % 12 + len % 6));
                let p = i as u64;
                match outcome % 6 {
                    0 => Operation::unknown(p, input, call),
                    1 => Operation::fail(p, input, call, ret),
                    _ => Operation::ok(p, input, output, call, ret),
                }
            })
            .collect::<History<_, _>>()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn agrees_with_exhaustive_search(history in tiny_history()) {
        let expected = brute_force(&WholeStore, &history);
        let per_key = check(&Register::new(), &history).unwrap();
        prop_assert_eq!(per_key.is_ok(), expected, "per key: {}", per_key);
        prop_assert_eq!(per_key.is_illegal(), !expected);
        // Compositionality: one object for the whole store agrees.
        let whole = check(&WholeStore, &history).unwrap();
        prop_assert_eq!(whole.is_ok(), expected, "whole store: {}", whole);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A store that loses acknowledged writes, and clients that give up:
    /// small enough for the exhaustive search, buggy enough that about
    /// one history in ten is not linearizable.
    #[test]
    fn buggy_stores_agree_with_exhaustive_search(
        seed in any::<u64>(),
        (clients, ops, keys, values) in (1usize..4, 1usize..9, 1u64..3, prop_oneof![Just(1i64 << 40), 1i64..4]),
        (unknown, cas, failover, lose) in (0u64..200, 0u64..500, 0u64..50_000, 0u64..500_000),
    ) {
        let w = Workload { clients, ops, keys, values, unknown, fail: 50, cas, failover, lose };
        let history = simulate(seed, w);
        let expected = brute_force(&WholeStore, &history);
        let verdict = check(&Register::new(), &history).unwrap();
        prop_assert_eq!(verdict.is_ok(), expected, "{}\n{:#?}", verdict, history);
    }
}

#[test]
fn multi_key_real_executions_agree_with_the_whole_store_model() {
    for seed in 0..200 {
        let w = Workload {
            clients: 4,
            ops: 40,
            keys: 3,
            values: 3,
            unknown: 60,
            fail: 30,
            cas: 300,
            failover: 5_000,
            lose: 0,
        };
        let mut history = simulate(seed, w);
        assert!(check(&Register::new(), &history).unwrap().is_ok());
        assert!(check(&WholeStore, &history).unwrap().is_ok());
        corrupt_a_read(&mut history, seed);
        assert_eq!(
            check(&Register::new(), &history).unwrap().is_ok(),
            check(&WholeStore, &history).unwrap().is_ok(),
        );
    }
}
