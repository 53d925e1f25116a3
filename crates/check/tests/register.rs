//! Hand-written register histories with known verdicts, including ones
//! that a checker with a common mistake would get wrong.

use ftvm_check::{
    CheckOptions, CheckResult, GiveUp, History, HistoryError, KvOp, Model, OpId, Operation,
    Outcome, Register, RegisterOutput, check, check_with,
};

type Op = Operation<KvOp<&'static str>, RegisterOutput>;

fn write(p: u64, v: i64, call: u64, ret: u64) -> Op {
    Operation::ok(p, KvOp::write("x", v), RegisterOutput::Written, call, ret)
}

fn read(p: u64, v: Option<i64>, call: u64, ret: u64) -> Op {
    Operation::ok(p, KvOp::read("x"), RegisterOutput::Read(v), call, ret)
}

fn cas(p: u64, expected: i64, new: i64, swapped: bool, call: u64, ret: u64) -> Op {
    Operation::ok(
        p,
        KvOp::cas("x", expected, new),
        RegisterOutput::Cas(swapped),
        call,
        ret,
    )
}

fn unknown_write(p: u64, v: i64, call: u64) -> Op {
    Operation::unknown(p, KvOp::write("x", v), call)
}

/// Register without pruning of unknown operations, so that the search
/// itself meets every unknown operation.
struct Unpruned(Register<&'static str>);

impl Model for Unpruned {
    type Input = KvOp<&'static str>;
    type Output = RegisterOutput;
    type State = Option<i64>;
    type Key = &'static str;

    fn init(&self) -> Option<i64> {
        self.0.init()
    }

    fn key(&self, input: &Self::Input) -> &'static str {
        self.0.key(input)
    }

    fn step(
        &self,
        state: &Option<i64>,
        input: &Self::Input,
        output: Option<&RegisterOutput>,
    ) -> Option<Option<i64>> {
        self.0.step(state, input, output)
    }
}

/// The verdict, which must not depend on pruning.
fn verdict(ops: Vec<Op>) -> CheckResult<&'static str> {
    let history = History::from(ops);
    let pruned = check(&Register::new(), &history).expect("a well-formed history");
    let unpruned = check(&Unpruned(Register::new()), &history).expect("well-formed");
    assert_eq!(
        pruned.is_ok(),
        unpruned.is_ok(),
        "pruning changed {unpruned} into {pruned}"
    );
    pruned
}

fn assert_ok(ops: Vec<Op>) {
    let v = verdict(ops);
    assert!(v.is_ok(), "expected linearizable, got: {v}");
}

fn assert_illegal(ops: Vec<Op>) -> CheckResult<&'static str> {
    let v = verdict(ops);
    assert!(v.is_illegal(), "expected not linearizable, got: {v}");
    v
}

#[test]
fn empty_and_absent_keys() {
    assert_ok(vec![]);
    assert_ok(vec![read(1, None, 0, 1)]);
    assert_illegal(vec![read(1, Some(0), 0, 1)]);
    let preloaded = History::from(vec![read(1, Some(0), 0, 1)]);
    assert!(
        check(&Register::with_initial(Some(0)), &preloaded)
            .unwrap()
            .is_ok()
    );
}

#[test]
fn sequential() {
    assert_ok(vec![
        write(1, 1, 0, 1),
        read(2, Some(1), 2, 3),
        cas(1, 1, 2, true, 4, 5),
        read(2, Some(2), 6, 7),
        cas(3, 1, 3, false, 8, 9),
        read(1, Some(2), 10, 11),
    ]);
}

#[test]
fn concurrent_overlapping() {
    // w2 must come before the read of 2, w1 after it: only possible
    // because both writes overlap everything.
    assert_ok(vec![
        write(1, 1, 0, 10),
        write(2, 2, 1, 11),
        read(3, Some(2), 2, 3),
        read(3, Some(1), 4, 12),
    ]);
    // Touching intervals are concurrent (closed intervals).
    assert_ok(vec![write(1, 1, 0, 5), read(2, None, 5, 6)]);
}

#[test]
fn concurrent_cas_chain() {
    assert_ok(vec![
        write(1, 0, 0, 1),
        cas(2, 1, 2, true, 2, 10),
        cas(3, 0, 1, true, 3, 9),
        cas(4, 0, 5, false, 4, 8),
        read(1, Some(2), 11, 12),
    ]);
}

#[test]
fn stale_read_after_completed_write() {
    assert_illegal(vec![
        write(1, 1, 0, 1),
        write(1, 2, 2, 3),
        read(2, Some(1), 4, 5),
    ]);
}

#[test]
fn read_of_value_never_written() {
    assert_illegal(vec![write(1, 1, 0, 1), read(2, Some(7), 0, 5)]);
}

#[test]
fn two_concurrent_cas_from_same_value_both_succeed() {
    assert_illegal(vec![
        write(1, 0, 0, 1),
        cas(2, 0, 1, true, 2, 5),
        cas(3, 0, 2, true, 3, 6),
    ]);
}

#[test]
fn lost_write_across_a_failover() {
    // The write of 2 was acknowledged, the unknown write of 3 is in
    // flight, and a later read sees 1: nothing can write 1 again.
    assert_illegal(vec![
        write(1, 1, 0, 1),
        unknown_write(2, 3, 2),
        write(1, 2, 4, 5),
        read(3, Some(1), 6, 7),
    ]);
}

#[test]
fn sequentially_consistent_but_not_linearizable() {
    // Each process's order is respected if the read goes first, which
    // sequential consistency allows; real time does not.
    assert_illegal(vec![write(1, 1, 0, 1), read(2, None, 2, 3)]);
    assert_illegal(vec![
        write(1, 1, 0, 1),
        write(1, 2, 2, 3),
        read(2, Some(1), 4, 5),
    ]);
}

#[test]
fn unknown_write_that_took_effect_is_accepted() {
    // A checker that treats Unknown as Fail rejects this.
    assert_ok(vec![
        write(1, 1, 0, 1),
        unknown_write(2, 2, 2),
        read(3, Some(2), 5, 6),
    ]);
}

#[test]
fn unknown_write_that_never_took_effect_is_accepted() {
    assert_ok(vec![
        write(1, 1, 0, 1),
        unknown_write(2, 2, 2),
        read(3, Some(1), 5, 6),
        read(3, Some(1), 7, 8),
    ]);
}

#[test]
fn unknown_write_takes_effect_late() {
    // A checker that applies Unknown at its invocation rejects this.
    assert_ok(vec![
        write(1, 1, 0, 1),
        unknown_write(2, 2, 2),
        read(3, Some(1), 3, 4),
        read(3, Some(2), 5, 6),
    ]);
    // Even after the client gave up: a checker that uses the time the
    // client gave up as the return rejects this.
    let mut history = History::new();
    history.push(write(1, 1, 0, 1));
    let lost = history.invoke(2, KvOp::write("x", 2), 2);
    history.complete(lost, Outcome::Unknown, 3).unwrap();
    history.push(read(3, Some(1), 4, 5));
    history.push(read(3, Some(2), 10, 11));
    assert!(check(&Register::new(), &history).unwrap().is_ok());
}

#[test]
fn unknown_write_takes_effect_once() {
    // A checker that matches each read against "any value that might be
    // current" accepts this: the unknown write would have to take effect
    // twice, with 1 restored in between by nothing.
    assert_illegal(vec![
        write(1, 1, 0, 1),
        unknown_write(2, 2, 2),
        read(3, Some(2), 3, 4),
        read(3, Some(1), 5, 6),
        read(3, Some(2), 7, 8),
    ]);
}

#[test]
fn unknown_cas_both_ways() {
    let unknown_cas = Operation::unknown(2, KvOp::cas("x", 0, 5), 2);
    assert_ok(vec![
        write(1, 0, 0, 1),
        unknown_cas.clone(),
        read(3, Some(5), 4, 5),
    ]);
    assert_ok(vec![
        write(1, 0, 0, 1),
        unknown_cas.clone(),
        read(3, Some(0), 4, 5),
    ]);
    // It explains a failed compare and swap that sees the value changed.
    assert_ok(vec![
        write(1, 0, 0, 1),
        unknown_cas.clone(),
        cas(3, 0, 7, false, 4, 5),
        read(3, Some(5), 6, 7),
    ]);
    // But it cannot swap when the value does not match: a model that
    // lets an unknown swap do anything would accept this.
    assert_illegal(vec![
        write(1, 1, 0, 1),
        Operation::unknown(2, KvOp::cas("x", 0, 5), 2),
        read(3, Some(5), 4, 5),
    ]);
}

#[test]
fn unobserved_unknown_write_explains_a_failed_cas() {
    // Nobody reads 3, but the failed swap saw "not 0": only the unknown
    // write explains it, so it must not be pruned away.
    assert_ok(vec![
        write(1, 0, 0, 1),
        unknown_write(2, 3, 2),
        cas(3, 0, 7, false, 4, 5),
    ]);
    assert_illegal(vec![write(1, 0, 0, 1), cas(3, 0, 7, false, 4, 5)]);
}

#[test]
fn unknown_reads_are_irrelevant() {
    assert_ok(vec![
        write(1, 1, 0, 1),
        Operation::unknown(2, KvOp::read("x"), 0),
    ]);
}

#[test]
fn failed_operations_took_no_effect() {
    assert_ok(vec![
        Operation::fail(1, KvOp::write("x", 9), 0, 1),
        read(2, None, 2, 3),
    ]);
    assert_illegal(vec![
        Operation::fail(1, KvOp::write("x", 9), 0, 1),
        read(2, Some(9), 2, 3),
    ]);
}

#[test]
fn keys_are_independent() {
    let op = |p, input, output, call, ret| Operation::ok(p, input, output, call, ret);
    let history = |seen| {
        History::from(vec![
            op(1, KvOp::write("x", 1), RegisterOutput::Written, 0, 1),
            op(2, KvOp::write("y", 2), RegisterOutput::Written, 2, 3),
            op(1, KvOp::read("x"), RegisterOutput::Read(Some(seen)), 4, 5),
            op(2, KvOp::read("y"), RegisterOutput::Read(Some(2)), 4, 5),
        ])
    };
    assert!(check(&Register::new(), &history(1)).unwrap().is_ok());
    // A checker that mixed the keys up into one register accepts this.
    match check(&Register::new(), &history(2)).unwrap() {
        CheckResult::Illegal { key, .. } => assert_eq!(key, "x"),
        other => panic!("expected x to be illegal, got {other}"),
    }
}

#[test]
fn wrong_reply_kind_is_illegal() {
    assert_illegal(vec![Operation::ok(
        1,
        KvOp::read("x"),
        RegisterOutput::Written,
        0,
        1,
    )]);
}

#[test]
fn explanation_names_the_anomaly() {
    let v = assert_illegal(vec![
        write(1, 1, 0, 1),
        write(1, 2, 2_000_000_000, 2_000_000_003),
        read(2, Some(1), 3_000_000_000, 3_000_000_005),
    ]);
    let CheckResult::Illegal { key, explanation } = &v else {
        unreachable!()
    };
    assert_eq!(*key, "x");
    assert_eq!(explanation.prefix, vec![OpId(0), OpId(1)]);
    assert_eq!(explanation.stuck, OpId(2));
    assert_eq!(explanation.candidates, vec![OpId(2)]);
    assert_eq!(explanation.state, "Some(2)");
    assert_eq!(explanation.operations, 3);
    let text = v.to_string();
    assert!(text.contains("#2 process 2"), "{text}");
    assert!(text.contains("Read(Some(1))"), "{text}");
    assert!(text.contains("3.000000005s"), "{text}");
    assert!(text.contains("2 of 3 operations"), "{text}");
}

fn long_history(n: u64) -> History<KvOp<&'static str>, RegisterOutput> {
    (0..n)
        .map(|i| write(1, i as i64, 2 * i, 2 * i + 1))
        .collect()
}

#[test]
fn gives_up_instead_of_answering() {
    let history = long_history(100);
    let options = CheckOptions {
        max_steps: 10,
        ..CheckOptions::default()
    };
    match check_with(&Register::new(), &history, &options).unwrap() {
        CheckResult::Timeout { reason, .. } => assert_eq!(reason, GiveUp::Steps),
        other => panic!("expected a timeout, got {other}"),
    }
    let options = CheckOptions {
        max_cache_bytes: 100,
        ..CheckOptions::default()
    };
    let v = check_with(&Register::new(), &history, &options).unwrap();
    assert!(
        matches!(
            v,
            CheckResult::Timeout {
                reason: GiveUp::Memory,
                ..
            }
        ),
        "{v}"
    );
    let stop = || true;
    let history = long_history(10_000);
    let options = CheckOptions {
        interrupt: Some(&stop),
        ..CheckOptions::default()
    };
    let v = check_with(&Register::new(), &history, &options).unwrap();
    assert!(
        matches!(
            v,
            CheckResult::Timeout {
                reason: GiveUp::Interrupted,
                ..
            }
        ),
        "{v}"
    );
    // The same budget is plenty for a real check.
    assert!(check(&Register::new(), &history).unwrap().is_ok());
}

#[test]
fn recorder_api() {
    let mut history: History<KvOp<&str>, RegisterOutput> = History::new();
    let a = history.invoke(1, KvOp::write("x", 1), 10);
    let b = history.invoke(2, KvOp::read("x"), 11);
    assert_eq!(history.pending().collect::<Vec<_>>(), vec![a, b]);
    history
        .complete(b, Outcome::Ok(RegisterOutput::Read(Some(1))), 20)
        .unwrap();
    assert_eq!(
        history.complete(b, Outcome::Fail, 21),
        Err(HistoryError::AlreadyCompleted(b))
    );
    assert_eq!(
        history.complete(a, Outcome::Fail, 5),
        Err(HistoryError::ReturnBeforeCall {
            op: a,
            call: 10,
            ret: 5
        })
    );
    assert_eq!(
        history.complete(OpId(9), Outcome::Fail, 5),
        Err(HistoryError::NoSuchOp(OpId(9)))
    );
    // `a` never completes: it is unknown, and explains the read.
    assert!(check(&Register::new(), &history).unwrap().is_ok());

    let mut other = History::new();
    other.invoke(3, KvOp::read("x"), 30);
    history.append(&mut other);
    assert_eq!(history.len(), 3);
    assert!(other.is_empty());

    let malformed = History::from(vec![Operation {
        process: 1,
        input: KvOp::read("x"),
        outcome: Outcome::Ok(RegisterOutput::Read(None)),
        call: 0,
        ret: None,
    }]);
    assert_eq!(
        check(&Register::new(), &malformed).unwrap_err(),
        HistoryError::OkWithoutReturn(OpId(0))
    );
}
