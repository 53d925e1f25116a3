//! Sequential specifications that histories are checked against.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;

/// A sequential specification, as in Porcupine: what one object does
/// when operations are applied to it one at a time.
///
/// A model is checked per partition: operations with different
/// [`Model::key`]s act on independent objects, and since linearizability
/// is compositional (Herlihy & Wing 1990) a history is linearizable if and
/// only if each key's sub-history is. Every key starts in
/// [`Model::init`]. A model that does not partition uses `type Key = ()`.
pub trait Model {
    /// What a client asks. Unknown operations with equal inputs are
    /// interchangeable, which the search exploits, hence `Eq + Hash`.
    type Input: Debug + Eq + Hash;
    /// What a client is told.
    type Output: Debug;
    /// The state of one object. Hashed and compared by the search's memo
    /// (Lowe's cache of configurations), so keep it small.
    type State: Clone + Eq + Hash + Debug;
    /// The object an operation acts on.
    type Key: Clone + Ord + Debug;

    /// The state every object starts in.
    fn init(&self) -> Self::State;

    /// The object `input` acts on.
    fn key(&self, input: &Self::Input) -> Self::Key;

    /// Applies `input` to `state`. `output` is what the client was told,
    /// or `None` when it never learned (the operation's outcome is
    /// unknown): then every output the specification allows is accepted.
    /// Returns the new state, or `None` if the step is impossible.
    ///
    /// The model must be deterministic: one state and one input give at
    /// most one new state. With an unknown output that means the outcome
    /// is decided by the state (a compare and swap swaps exactly when the
    /// value matches).
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Whether `input` with this `output` leaves the state as it is in
    /// every state where it is legal (a read, a compare and swap that
    /// failed). The search then linearizes it as soon as it is legal
    /// instead of trying it in every order, the single most effective cut
    /// for read-heavy histories: answering `true` for an operation that
    /// can change the state makes verdicts wrong. The default, `false`,
    /// is always safe.
    fn is_read_only(&self, input: &Self::Input, output: &Self::Output) -> bool {
        let _ = (input, output);
        false
    }

    /// Which operations of one partition, given as `(input, output)` in
    /// history order, the search may leave out. Only operations whose
    /// output is `None` (unknown) are ever left out, whatever this says.
    ///
    /// An unknown operation is optional already (it may never have taken
    /// effect); leaving it out must not change the verdict: answer `true`
    /// only if every linearization that uses it can be rewritten into one
    /// that does not. The gain is speed: every unknown operation stays
    /// pending to the end of the history and is a candidate at every
    /// step of the search. The default leaves everything in.
    fn prunable_unknowns(&self, ops: &[(&Self::Input, Option<&Self::Output>)]) -> Vec<bool> {
        vec![false; ops.len()]
    }
}

/// An operation on one register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    /// Read the value (Redis `GET`).
    Read,
    /// Set the value (Redis `SET`).
    Write(i64),
    /// Compare and swap: set to `new` if the value is `expected`.
    Cas(i64, i64),
}

/// What a register operation returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    /// A read's value; `None` if the key did not exist.
    Read(Option<i64>),
    /// A write was acknowledged.
    Written,
    /// Whether a compare and swap swapped.
    Cas(bool),
}

/// A register operation on a key of a key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KvOp<K> {
    /// The key.
    pub key: K,
    /// The operation.
    pub op: RegisterOp,
}

impl<K> KvOp<K> {
    /// A read of `key`.
    pub fn read(key: K) -> Self {
        Self {
            key,
            op: RegisterOp::Read,
        }
    }

    /// A write of `value` to `key`.
    pub fn write(key: K, value: i64) -> Self {
        Self {
            key,
            op: RegisterOp::Write(value),
        }
    }

    /// A compare and swap on `key`.
    pub fn cas(key: K, expected: i64, new: i64) -> Self {
        Self {
            key,
            op: RegisterOp::Cas(expected, new),
        }
    }
}

/// Registers, one per key: the model of a Redis workload of `GET`, `SET`
/// and compare-and-swap (a `WATCH`/`MULTI` or Lua script). A key's state
/// is its value, `None` while it does not exist.
#[derive(Clone, Copy, Debug)]
pub struct Register<K> {
    initial: Option<i64>,
    key: PhantomData<fn() -> K>,
}

impl<K> Default for Register<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> Register<K> {
    /// Every key starts absent.
    pub fn new() -> Self {
        Self::with_initial(None)
    }

    /// Every key starts with `initial` (when the harness preloads keys).
    pub fn with_initial(initial: Option<i64>) -> Self {
        Self {
            initial,
            key: PhantomData,
        }
    }
}

impl<K: Clone + Ord + Hash + Debug> Model for Register<K> {
    type Input = KvOp<K>;
    type Output = RegisterOutput;
    type State = Option<i64>;
    type Key = K;

    fn init(&self) -> Option<i64> {
        self.initial
    }

    fn key(&self, input: &KvOp<K>) -> K {
        input.key.clone()
    }

    fn step(
        &self,
        state: &Option<i64>,
        input: &KvOp<K>,
        output: Option<&RegisterOutput>,
    ) -> Option<Option<i64>> {
        match (input.op, output) {
            (RegisterOp::Read, None) => Some(*state),
            (RegisterOp::Read, Some(RegisterOutput::Read(value))) => {
                (value == state).then_some(*state)
            }
            (RegisterOp::Write(value), None | Some(RegisterOutput::Written)) => Some(Some(value)),
            (RegisterOp::Cas(expected, new), None) => Some(if *state == Some(expected) {
                Some(new)
            } else {
                *state
            }),
            (RegisterOp::Cas(expected, new), Some(RegisterOutput::Cas(swapped))) => {
                match (*state == Some(expected), *swapped) {
                    (true, true) => Some(Some(new)),
                    (false, false) => Some(*state),
                    _ => None,
                }
            }
            // An output of the wrong kind: the recorder mixed up replies.
            _ => None,
        }
    }

    fn is_read_only(&self, input: &KvOp<K>, output: &RegisterOutput) -> bool {
        match (input.op, output) {
            (RegisterOp::Read, _) | (RegisterOp::Cas(_, _), RegisterOutput::Cas(false)) => true,
            (RegisterOp::Cas(expected, new), RegisterOutput::Cas(true)) => expected == new,
            // Never legal, so vacuously read-only; say no all the same.
            (RegisterOp::Write(_) | RegisterOp::Cas(_, _), _) => false,
        }
    }

    /// Unknown reads constrain nothing. An unknown write or swap whose
    /// new value `v` nobody can have observed is left out too, if no
    /// completed read returned `v` and no swap (completed and successful,
    /// or unknown) expected `v`: in any linearization that uses it, `v` is
    /// overwritten before anything looks at it, and the operations in
    /// between are unknown swaps that did nothing (they expected another
    /// value), which can be left out as well. One more observer: a failed
    /// swap of `e` sees "not `e`", which the unobserved write may have
    /// caused in place of an `e` before it. So if any failed swap expected
    /// a value that the key can hold (one written, or the initial one),
    /// nothing is pruned but reads.
    fn prunable_unknowns(&self, ops: &[(&KvOp<K>, Option<&RegisterOutput>)]) -> Vec<bool> {
        let mut observed = HashSet::new();
        let mut held: HashSet<i64> = self.initial.into_iter().collect();
        let mut failed = HashSet::new();
        for (input, output) in ops {
            match (input.op, output) {
                (RegisterOp::Read, Some(RegisterOutput::Read(Some(value)))) => {
                    observed.insert(*value);
                }
                (RegisterOp::Read, _) => {}
                (RegisterOp::Write(value), _) => {
                    held.insert(value);
                }
                (RegisterOp::Cas(expected, new), Some(RegisterOutput::Cas(false))) => {
                    failed.insert(expected);
                    held.insert(new);
                }
                (RegisterOp::Cas(expected, new), _) => {
                    observed.insert(expected);
                    held.insert(new);
                }
            }
        }
        let failed_matters = failed.iter().any(|e| held.contains(e));
        ops.iter()
            .map(|(input, output)| {
                output.is_none()
                    && match input.op {
                        RegisterOp::Read => true,
                        RegisterOp::Write(value) | RegisterOp::Cas(_, value) => {
                            !failed_matters && !observed.contains(&value)
                        }
                    }
            })
            .collect()
    }
}
