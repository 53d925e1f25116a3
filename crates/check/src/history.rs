//! Histories: what each client asked, when, and what it learned.
//!
//! Times are nanoseconds on one monotonic clock shared by every client of
//! a run (typically `Instant::elapsed` from one origin taken by the
//! harness). The crate never reads a clock itself: the recorder passes
//! `now` in.
//!
//! Recording rules that keep the check sound: read the clock for
//! [`History::invoke`] *before* the request leaves, and for
//! [`History::complete`] *after* the answer arrives. A wider interval
//! only gives the checker more freedom, so a late invoke or an early
//! completion is the one mistake that can produce a false alarm.

use std::fmt;

use thiserror::Error;

/// Identifies a client. A client that got [`Outcome::Unknown`] may still
/// have a request in flight; Jepsen then gives it a fresh process id, and
/// so may the harness, but the checker does not rely on it.
pub type ProcessId = u64;

/// The index of an operation in its [`History`] (and in
/// [`History::ops`]). Explanations and reports name operations by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What the client learned about its operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome<O> {
    /// The operation took effect and returned this output. A compare and
    /// swap whose comparison failed is `Ok(false)`, not a failure.
    Ok(O),
    /// The operation certainly did not take effect: the server said so
    /// before doing anything (an aborted serializable transaction, a
    /// refused connection). Failed operations are left out of checks.
    Fail,
    /// The client never learned: a timeout, a reset connection, a crash.
    /// The operation may take effect at any time after its invocation,
    /// even after the client gave up, or never.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client that issued it.
    pub process: ProcessId,
    /// What was asked.
    pub input: I,
    /// What was learned; [`Outcome::Unknown`] while still pending.
    pub outcome: Outcome<O>,
    /// When the request was sent (ns).
    pub call: u64,
    /// When the client learned the outcome or gave up (ns); `None` while
    /// pending. For an [`Outcome::Unknown`] operation it is informative
    /// only: the checker treats its return as +infinity.
    pub ret: Option<u64>,
}

impl<I, O> Operation<I, O> {
    /// A completed operation that returned `output`.
    pub fn ok(process: ProcessId, input: I, output: O, call: u64, ret: u64) -> Self {
        Self {
            process,
            input,
            outcome: Outcome::Ok(output),
            call,
            ret: Some(ret),
        }
    }

    /// An operation that certainly did not take effect.
    pub fn fail(process: ProcessId, input: I, call: u64, ret: u64) -> Self {
        Self {
            process,
            input,
            outcome: Outcome::Fail,
            call,
            ret: Some(ret),
        }
    }

    /// An operation whose outcome nobody learned.
    pub fn unknown(process: ProcessId, input: I, call: u64) -> Self {
        Self {
            process,
            input,
            outcome: Outcome::Unknown,
            call,
            ret: None,
        }
    }

    /// The output, if the operation completed with [`Outcome::Ok`].
    pub fn output(&self) -> Option<&O> {
        match &self.outcome {
            Outcome::Ok(output) => Some(output),
            Outcome::Fail | Outcome::Unknown => None,
        }
    }

    /// The return time the checker uses: `None` (+infinity) unless the
    /// operation completed with [`Outcome::Ok`].
    pub fn effective_ret(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Ok(_) => self.ret,
            Outcome::Fail | Outcome::Unknown => None,
        }
    }
}

/// A history is malformed: the recorder or the hand-written test made a
/// mistake, not the service.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HistoryError {
    /// [`History::complete`] named an operation that does not exist.
    #[error("operation {0} does not exist")]
    NoSuchOp(OpId),
    /// [`History::complete`] was called twice for one operation.
    #[error("operation {0} was already completed")]
    AlreadyCompleted(OpId),
    /// An operation returned before it was invoked: the clocks disagree.
    #[error("operation {op} returned at {ret} ns before its call at {call} ns")]
    ReturnBeforeCall {
        /// The operation.
        op: OpId,
        /// Its invocation time.
        call: u64,
        /// Its return time.
        ret: u64,
    },
    /// An operation is [`Outcome::Ok`] but has no return time.
    #[error("operation {0} is Ok but has no return time")]
    OkWithoutReturn(OpId),
}

/// A history of operations, in the order they were recorded.
///
/// Concurrency: `History` is a plain value. Either share one behind a
/// `Mutex` (invoke and complete are O(1), so the lock is never held
/// long, and taking the time outside the lock is fine: it only widens
/// intervals), or give each client its own `History` and join them at
/// the end with [`History::append`]. The checkers sort by time
/// themselves, so the order of operations in the vector does not matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History<I, O> {
    ops: Vec<Operation<I, O>>,
}

impl<I, O> Default for History<I, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I, O> From<Vec<Operation<I, O>>> for History<I, O> {
    fn from(ops: Vec<Operation<I, O>>) -> Self {
        Self { ops }
    }
}

impl<I, O> FromIterator<Operation<I, O>> for History<I, O> {
    fn from_iter<T: IntoIterator<Item = Operation<I, O>>>(iter: T) -> Self {
        Self {
            ops: iter.into_iter().collect(),
        }
    }
}

impl<I, O> History<I, O> {
    /// An empty history.
    pub fn new() -> Self {
        Self { ops: Vec::new() }
    }

    /// Records that `process` sent `input` at `now` (ns). The operation
    /// stays pending, and counts as [`Outcome::Unknown`], until
    /// [`History::complete`] is called.
    pub fn invoke(&mut self, process: ProcessId, input: I, now: u64) -> OpId {
        self.push(Operation::unknown(process, input, now))
    }

    /// Records what `op`'s client learned at `now` (ns). Completing with
    /// [`Outcome::Unknown`] records when the client gave up.
    pub fn complete(
        &mut self,
        op: OpId,
        outcome: Outcome<O>,
        now: u64,
    ) -> Result<(), HistoryError> {
        let entry = self.ops.get_mut(op.0).ok_or(HistoryError::NoSuchOp(op))?;
        if entry.ret.is_some() {
            return Err(HistoryError::AlreadyCompleted(op));
        }
        if now < entry.call {
            return Err(HistoryError::ReturnBeforeCall {
                op,
                call: entry.call,
                ret: now,
            });
        }
        entry.outcome = outcome;
        entry.ret = Some(now);
        Ok(())
    }

    /// Adds a whole operation (for histories built by hand or imported).
    pub fn push(&mut self, op: Operation<I, O>) -> OpId {
        self.ops.push(op);
        OpId(self.ops.len() - 1)
    }

    /// Moves every operation of `other` to the end of this history (to
    /// join per-client logs). `other`'s `OpId`s are not valid here.
    pub fn append(&mut self, other: &mut History<I, O>) {
        self.ops.append(&mut other.ops);
    }

    /// The operations; an [`OpId`] indexes this slice.
    pub fn ops(&self) -> &[Operation<I, O>] {
        &self.ops
    }

    /// Mutable access to the operations (for tests that corrupt a history).
    pub fn ops_mut(&mut self) -> &mut [Operation<I, O>] {
        &mut self.ops
    }

    /// One operation.
    pub fn get(&self, op: OpId) -> Option<&Operation<I, O>> {
        self.ops.get(op.0)
    }

    /// How many operations were recorded.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations that were invoked and never completed.
    pub fn pending(&self) -> impl Iterator<Item = OpId> + '_ {
        self.ops
            .iter()
            .enumerate()
            .filter(|(_, op)| op.ret.is_none())
            .map(|(i, _)| OpId(i))
    }

    /// Checks what every checker relies on: returns after calls, and a
    /// return time for every `Ok`.
    pub fn validate(&self) -> Result<(), HistoryError> {
        for (i, op) in self.ops.iter().enumerate() {
            match (&op.outcome, op.ret) {
                (Outcome::Ok(_), None) => return Err(HistoryError::OkWithoutReturn(OpId(i))),
                (_, Some(ret)) if ret < op.call => {
                    return Err(HistoryError::ReturnBeforeCall {
                        op: OpId(i),
                        call: op.call,
                        ret,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Formats nanoseconds as seconds with nine decimals, the unit a human
/// reading an anomaly compares across a log of the run.
pub(crate) struct Nanos(pub u64);

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

/// Describes one operation on one line, for explanations and reports.
pub(crate) fn describe<I: fmt::Debug, O: fmt::Debug>(id: OpId, op: &Operation<I, O>) -> String {
    let outcome = match &op.outcome {
        Outcome::Ok(output) => format!("{output:?}"),
        Outcome::Fail => "fail".to_owned(),
        Outcome::Unknown => "unknown".to_owned(),
    };
    let ret = match (op.effective_ret(), op.ret) {
        (Some(ret), _) => Nanos(ret).to_string(),
        (None, Some(gave_up)) => format!("never (gave up at {})", Nanos(gave_up)),
        (None, None) => "never".to_owned(),
    };
    format!(
        "{id} process {} {:?} -> {outcome}  [{}, {ret}]",
        op.process,
        op.input,
        Nanos(op.call)
    )
}
