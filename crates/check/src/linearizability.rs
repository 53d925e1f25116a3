//! The linearizability checker: Wing & Gong's search with Lowe's memo,
//! the algorithm of Porcupine's `checkSingle`, written from its
//! description (the search itself is in `search.rs`).
//!
//! A partition's operations become a doubly-linked list of call and
//! return entries in time order. The search walks the list from the
//! front: a call entry is a candidate for the next linearization point;
//! if the model accepts it and the configuration (set of linearized
//! operations, state) is new, the operation is *lifted* out of the list
//! (both entries unlinked, in O(1)) and the walk restarts from the front.
//! Reaching a return entry means that operation had to be linearized
//! before anything later, and nothing left fits: the last choice is
//! undone (*unlifted*, relinking its entries where they were) and the
//! walk continues after it. The memo of configurations (Lowe 2017) is
//! what keeps this from being exponential on ordinary histories.
//!
//! Unknown operations have no return entry: their return is at
//! +infinity, so no return entry ever forces them, and the search
//! succeeds as soon as every *completed* operation is linearized; the
//! unknown operations never placed are the ones that never took effect.

use std::collections::BTreeMap;
use std::fmt;

use crate::history::{History, HistoryError, Nanos, OpId, Outcome, describe};
use crate::model::Model;
use crate::search::{Search, Verdict};

/// How much effort a check may spend before it gives up.
#[derive(Clone, Copy)]
pub struct CheckOptions<'a> {
    /// Model steps the search may take per key.
    pub max_steps: u64,
    /// Approximate bytes the memo of one key may hold.
    pub max_cache_bytes: usize,
    /// Polled every few thousand steps; returning `true` gives up. The
    /// harness puts its deadline here (`|| Instant::now() > deadline`),
    /// as this crate reads no clock.
    pub interrupt: Option<&'a dyn Fn() -> bool>,
}

impl Default for CheckOptions<'_> {
    /// 500 million model steps (some tens of seconds on a current
    /// machine) and 2 GiB of memo per key, no interruption.
    fn default() -> Self {
        Self {
            max_steps: 500_000_000,
            max_cache_bytes: 2 << 30,
            interrupt: None,
        }
    }
}

impl fmt::Debug for CheckOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckOptions")
            .field("max_steps", &self.max_steps)
            .field("max_cache_bytes", &self.max_cache_bytes)
            .field("interrupt", &self.interrupt.is_some())
            .finish()
    }
}

/// Why a check gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// [`CheckOptions::max_steps`] was reached.
    Steps,
    /// [`CheckOptions::max_cache_bytes`] was reached.
    Memory,
    /// [`CheckOptions::interrupt`] said so.
    Interrupted,
}

/// The verdict on a history.
#[derive(Clone, Debug)]
pub enum CheckResult<K> {
    /// Every key's sub-history is linearizable.
    Ok,
    /// `key`'s sub-history is not linearizable.
    Illegal {
        /// The key.
        key: K,
        /// Where the search got stuck.
        explanation: Explanation,
    },
    /// The search for `key` gave up: nothing is known about it. (Keys
    /// after it are still checked, and an illegal one is reported
    /// instead.)
    Timeout {
        /// The key.
        key: K,
        /// Which budget ran out.
        reason: GiveUp,
        /// Model steps taken on that key.
        steps: u64,
    },
}

impl<K> CheckResult<K> {
    /// Whether the history was found linearizable.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }

    /// Whether the history was found not linearizable.
    pub fn is_illegal(&self) -> bool {
        matches!(self, Self::Illegal { .. })
    }
}

impl<K: fmt::Debug> fmt::Display for CheckResult<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => write!(f, "linearizable"),
            Self::Illegal { key, explanation } => {
                write!(f, "key {key:?} is not linearizable\n{explanation}")
            }
            Self::Timeout { key, reason, steps } => {
                write!(
                    f,
                    "gave up on key {key:?} after {steps} steps ({reason:?}): unknown"
                )
            }
        }
    }
}

/// Why a key's sub-history is not linearizable: the longest linearizable
/// prefix the search found, and where it got stuck after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The longest linearizable prefix, in linearization order.
    pub prefix: Vec<OpId>,
    /// The model's state after `prefix`, formatted.
    pub state: String,
    /// The completed operation that had to come next (its return is the
    /// earliest of those left) and could not be placed.
    pub stuck: OpId,
    /// The operations that could have been linearized before `stuck`
    /// returned (including `stuck`): none of them leads to a
    /// linearization from here.
    pub candidates: Vec<OpId>,
    /// How many operations of this key were searched (failed and pruned
    /// unknown ones excluded).
    pub operations: usize,
    report: String,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report)
    }
}

/// Checks `history` against `model` with the default budget.
pub fn check<M: Model>(
    model: &M,
    history: &History<M::Input, M::Output>,
) -> Result<CheckResult<M::Key>, HistoryError> {
    check_with(model, history, &CheckOptions::default())
}

/// Checks `history` against `model`, key by key, within `options`.
///
/// Cost: each unknown operation stays a candidate from its call to the
/// end of the history (its return is +infinity), so it adds one to the
/// concurrency of everything after it. A handful per key is cheap;
/// dozens on one key can make a non-linearizable history exponential to
/// refute, which ends in [`CheckResult::Timeout`], never in `Ok`.
pub fn check_with<M: Model>(
    model: &M,
    history: &History<M::Input, M::Output>,
    options: &CheckOptions<'_>,
) -> Result<CheckResult<M::Key>, HistoryError> {
    history.validate()?;
    let mut partitions: BTreeMap<M::Key, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.ops().iter().enumerate() {
        if !matches!(op.outcome, Outcome::Fail) {
            partitions.entry(model.key(&op.input)).or_default().push(i);
        }
    }
    let mut timeout = None;
    for (key, mut ops) in partitions {
        let views: Vec<_> = ops
            .iter()
            .map(|&i| (&history.ops()[i].input, history.ops()[i].output()))
            .collect();
        let prunable = model.prunable_unknowns(&views);
        let mut keep = prunable.iter().map(|&p| !p);
        ops.retain(|&i| keep.next().unwrap_or(true) || history.ops()[i].output().is_some());
        match Search::new(model, history, &ops, options).run() {
            Verdict::Ok => {}
            Verdict::Illegal(explanation) => {
                return Ok(CheckResult::Illegal { key, explanation });
            }
            Verdict::GaveUp(reason, steps) => {
                timeout.get_or_insert(CheckResult::Timeout { key, reason, steps });
            }
        }
    }
    Ok(timeout.unwrap_or(CheckResult::Ok))
}

/// Builds an [`Explanation`] and its report.
pub(crate) fn explain<I: fmt::Debug, O: fmt::Debug>(
    history: &History<I, O>,
    prefix: Vec<OpId>,
    state: String,
    stuck: OpId,
    candidates: Vec<OpId>,
    operations: usize,
) -> Explanation {
    const SHOWN: usize = 10;
    let line = |op: OpId| match history.get(op) {
        Some(o) => describe(op, o),
        None => format!("{op} (missing)"),
    };
    let mut report = format!(
        "longest linearizable prefix: {} of {operations} operations",
        prefix.len()
    );
    if prefix.len() > SHOWN {
        report += &format!(", the last {SHOWN}:");
    } else if !prefix.is_empty() {
        report += ":";
    }
    for &op in prefix.iter().skip(prefix.len().saturating_sub(SHOWN)) {
        report += &format!("\n    {}", line(op));
    }
    let returned = history.get(stuck).and_then(|o| o.ret).unwrap_or(0);
    report += &format!(
        "\nstate after it: {state}\n\
         then {stuck}, which returned at {}, must be linearized, but no order of \
         the operations that could come before it works from here:",
        Nanos(returned)
    );
    for &op in &candidates {
        report += &format!("\n    {}", line(op));
    }
    Explanation {
        prefix,
        state,
        stuck,
        candidates,
        operations,
        report,
    }
}
