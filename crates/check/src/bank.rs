//! The bank checker, for a PostgreSQL workload.
//!
//! `N` accounts hold a fixed total. Clients move money between them in
//! serializable transactions and read every balance in one transaction.
//! Whatever the failovers did, every committed read must see the total
//! (a torn or stale-mixed snapshot does not), and the balances after the
//! run must be the initial ones plus every acknowledged transfer plus
//! some of the transfers whose outcome is unknown: anything else means a
//! committed transaction was lost or applied twice.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::history::{History, HistoryError, OpId, Outcome};

/// Moves `amount` from account `from` to account `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transfer {
    /// The debited account.
    pub from: usize,
    /// The credited account.
    pub to: usize,
    /// How much.
    pub amount: i64,
}

impl Transfer {
    fn apply(&self, balances: &mut [i64], sign: i64) {
        balances[self.from] -= sign * self.amount;
        balances[self.to] += sign * self.amount;
    }
}

/// What a bank client asks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BankInput {
    /// One transfer in one transaction.
    Transfer(Transfer),
    /// Every balance, in one transaction.
    Read,
}

/// What a bank client is told.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BankOutput {
    /// The transfer committed.
    Transferred,
    /// The transaction committed without moving money (the workload
    /// refused it, e.g. for lack of funds).
    Declined,
    /// The balances, indexed by account.
    Balances(Vec<i64>),
}

/// Something no correct execution produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BankAnomaly {
    /// A read's balances do not add up to the total. `read` is `None` for
    /// the final read.
    WrongTotal {
        /// The read.
        read: Option<OpId>,
        /// What it saw.
        balances: Vec<i64>,
        /// Their sum.
        total: i64,
        /// The fixed total.
        expected: i64,
    },
    /// A read saw a negative balance and the workload forbids them.
    Negative {
        /// The read (`None`: the final read).
        read: Option<OpId>,
        /// The account.
        account: usize,
        /// Its balance.
        balance: i64,
    },
    /// A read returned the wrong number of accounts.
    WrongShape {
        /// The read (`None`: the final read).
        read: Option<OpId>,
        /// How many it returned.
        accounts: usize,
        /// How many there are.
        expected: usize,
    },
    /// An operation the recorder got wrong: an account out of range, or a
    /// reply of the wrong kind.
    Malformed {
        /// The operation.
        op: OpId,
        /// What is wrong.
        reason: String,
    },
    /// The final balances are not the initial ones plus every
    /// acknowledged transfer plus any subset of the unknown ones.
    FinalMismatch {
        /// Initial balances plus every acknowledged transfer.
        expected: Vec<i64>,
        /// The final read.
        actual: Vec<i64>,
        /// `actual - expected`, per account.
        difference: Vec<i64>,
        /// How many unknown transfers were considered.
        unknown: usize,
        /// Acknowledged transfers whose loss (together with some subset
        /// of the unknown ones) explains the difference exactly.
        lost: Vec<(OpId, Transfer)>,
        /// Acknowledged transfers whose second application explains it.
        duplicated: Vec<(OpId, Transfer)>,
    },
}

fn which(read: &Option<OpId>) -> String {
    read.map_or_else(|| "the final read".to_owned(), |op| format!("read {op}"))
}

impl fmt::Display for BankAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongTotal {
                read,
                balances,
                total,
                expected,
            } => write!(
                f,
                "{} saw {balances:?}, which sums to {total}, not {expected}",
                which(read)
            ),
            Self::Negative {
                read,
                account,
                balance,
            } => {
                write!(f, "{} saw account {account} at {balance}", which(read))
            }
            Self::WrongShape {
                read,
                accounts,
                expected,
            } => {
                write!(
                    f,
                    "{} returned {accounts} accounts, not {expected}",
                    which(read)
                )
            }
            Self::Malformed { op, reason } => write!(f, "operation {op} is malformed: {reason}"),
            Self::FinalMismatch {
                expected,
                actual,
                difference,
                unknown,
                lost,
                duplicated,
            } => {
                write!(
                    f,
                    "the final balances {actual:?} are not {expected:?} (initial plus every \
                     acknowledged transfer) plus any subset of the {unknown} unknown transfers; \
                     difference {difference:?}"
                )?;
                for (op, t) in lost {
                    write!(f, "\n    explained if transfer {op} {t:?} was lost")?;
                }
                for (op, t) in duplicated {
                    write!(
                        f,
                        "\n    explained if transfer {op} {t:?} was applied twice"
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// What the final read says about the unknown transfers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalState {
    /// No final read was given.
    NotChecked,
    /// The final balances are explained: these unknown transfers took
    /// effect, the others did not (one explanation; there may be more).
    Explained {
        /// Unknown transfers that took effect.
        applied: Vec<OpId>,
        /// Unknown transfers that did not.
        not_applied: Vec<OpId>,
    },
    /// Nothing explains them: see [`BankAnomaly::FinalMismatch`].
    Mismatch,
    /// Too many unknown transfers to search their subsets: no verdict on
    /// the final balances (they are not guessed at).
    TooManyUnknown {
        /// How many there were.
        unknown: usize,
        /// [`Bank::max_unknown`].
        limit: usize,
    },
}

/// The bank checker's findings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankReport {
    /// Completed reads checked.
    pub reads: usize,
    /// Acknowledged transfers.
    pub transfers: usize,
    /// What is wrong; empty if nothing is.
    pub anomalies: Vec<BankAnomaly>,
    /// The verdict on the final read.
    pub final_state: FinalState,
}

impl BankReport {
    /// No anomaly, and the final read (if any) explained.
    pub fn is_ok(&self) -> bool {
        self.anomalies.is_empty() && !matches!(self.final_state, FinalState::TooManyUnknown { .. })
    }
}

impl fmt::Display for BankReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} reads, {} acknowledged transfers: ",
            self.reads, self.transfers
        )?;
        match &self.final_state {
            FinalState::TooManyUnknown { unknown, limit } => write!(
                f,
                "final balances not checked: {unknown} unknown transfers, more than {limit}"
            )?,
            _ if self.anomalies.is_empty() => write!(f, "ok")?,
            _ => write!(f, "{} anomalies", self.anomalies.len())?,
        }
        for anomaly in &self.anomalies {
            write!(f, "\n  {anomaly}")?;
        }
        Ok(())
    }
}

/// The bank workload's invariants.
#[derive(Clone, Debug)]
pub struct Bank {
    initial: Vec<i64>,
    allow_negative: bool,
    max_unknown: usize,
}

impl Bank {
    /// Accounts starting with these balances; negative balances are
    /// anomalies, at most 30 unknown transfers are searched.
    pub fn new(initial: Vec<i64>) -> Self {
        Self {
            initial,
            allow_negative: false,
            max_unknown: 30,
        }
    }

    /// Whether the workload lets balances go negative.
    pub fn allow_negative(mut self, allow: bool) -> Self {
        self.allow_negative = allow;
        self
    }

    /// The most unknown transfers whose subsets are searched to explain
    /// the final balances. The search meets in the middle, 2^(n/2) sums
    /// per half: 30 takes milliseconds, 40 about a second. At most 60.
    pub fn max_unknown(mut self, limit: usize) -> Self {
        self.max_unknown = limit.min(60);
        self
    }

    /// The fixed total.
    pub fn total(&self) -> i64 {
        self.initial.iter().sum()
    }

    /// Checks every completed read, and, given `final_balances` read
    /// after every client stopped, that no acknowledged transfer was lost.
    pub fn check(
        &self,
        history: &History<BankInput, BankOutput>,
        final_balances: Option<&[i64]>,
    ) -> Result<BankReport, HistoryError> {
        history.validate()?;
        let mut report = BankReport {
            reads: 0,
            transfers: 0,
            anomalies: Vec::new(),
            final_state: FinalState::NotChecked,
        };
        let mut expected = self.initial.clone();
        let mut unknown = Vec::new();
        for (i, op) in history.ops().iter().enumerate() {
            let id = OpId(i);
            let malformed = |reason: String| BankAnomaly::Malformed { op: id, reason };
            match (&op.input, &op.outcome) {
                (_, Outcome::Fail) | (BankInput::Read, Outcome::Unknown) => {}
                (BankInput::Read, Outcome::Ok(BankOutput::Balances(balances))) => {
                    report.reads += 1;
                    self.check_read(Some(id), balances, &mut report.anomalies);
                }
                (BankInput::Transfer(t), outcome) if t.from.max(t.to) >= self.initial.len() => {
                    report.anomalies.push(malformed(format!(
                        "{t:?} names an account beyond the {} there are ({outcome:?})",
                        self.initial.len()
                    )));
                }
                (BankInput::Transfer(t), Outcome::Ok(BankOutput::Transferred)) => {
                    report.transfers += 1;
                    t.apply(&mut expected, 1);
                }
                (BankInput::Transfer(_), Outcome::Ok(BankOutput::Declined)) => {}
                (BankInput::Transfer(t), Outcome::Unknown) => {
                    if t.from != t.to && t.amount != 0 {
                        unknown.push((id, *t));
                    }
                }
                (input, Outcome::Ok(output)) => {
                    report
                        .anomalies
                        .push(malformed(format!("{input:?} answered {output:?}")));
                }
            }
        }
        let Some(actual) = final_balances else {
            return Ok(report);
        };
        if !self.check_read(None, actual, &mut report.anomalies) {
            report.final_state = FinalState::Mismatch;
            return Ok(report);
        }
        if unknown.len() > self.max_unknown {
            report.final_state = FinalState::TooManyUnknown {
                unknown: unknown.len(),
                limit: self.max_unknown,
            };
            return Ok(report);
        }
        let difference: Vec<i64> = actual.iter().zip(&expected).map(|(a, e)| a - e).collect();
        let deltas: Vec<Transfer> = unknown.iter().map(|(_, t)| *t).collect();
        if let Some(chosen) = subset_with_sum(&deltas, &difference) {
            let (applied, not_applied) = unknown.iter().zip(chosen).fold(
                (Vec::new(), Vec::new()),
                |(mut yes, mut no), ((id, _), took)| {
                    if took { &mut yes } else { &mut no }.push(*id);
                    (yes, no)
                },
            );
            report.final_state = FinalState::Explained {
                applied,
                not_applied,
            };
            return Ok(report);
        }
        let (lost, duplicated) = suspects(history, &deltas, &difference);
        report.final_state = FinalState::Mismatch;
        report.anomalies.push(BankAnomaly::FinalMismatch {
            expected,
            actual: actual.to_vec(),
            difference,
            unknown: unknown.len(),
            lost,
            duplicated,
        });
        Ok(report)
    }

    /// Checks one snapshot; returns whether it had the right shape.
    fn check_read(&self, read: Option<OpId>, balances: &[i64], out: &mut Vec<BankAnomaly>) -> bool {
        if balances.len() != self.initial.len() {
            out.push(BankAnomaly::WrongShape {
                read,
                accounts: balances.len(),
                expected: self.initial.len(),
            });
            return false;
        }
        let total: i64 = balances.iter().sum();
        if total != self.total() {
            out.push(BankAnomaly::WrongTotal {
                read,
                balances: balances.to_vec(),
                total,
                expected: self.total(),
            });
        }
        if !self.allow_negative {
            for (account, &balance) in balances.iter().enumerate() {
                if balance < 0 {
                    out.push(BankAnomaly::Negative {
                        read,
                        account,
                        balance,
                    });
                }
            }
        }
        true
    }
}

/// Every sum of a subset of `transfers`, visited in Gray-code order so
/// that each differs from the last by one transfer: `visit(mask, sum)`.
fn each_subset_sum(transfers: &[Transfer], accounts: usize, mut visit: impl FnMut(u64, &[i64])) {
    let mut sum = vec![0; accounts];
    let mut mask = 0u64;
    visit(mask, &sum);
    for i in 1..1u64 << transfers.len() {
        let bit = i.trailing_zeros();
        mask ^= 1 << bit;
        let sign = if mask & (1 << bit) != 0 { 1 } else { -1 };
        transfers[bit as usize].apply(&mut sum, sign);
        visit(mask, &sum);
    }
}

/// A subset of `transfers` whose net effect is `target`, by meeting in
/// the middle: the sums of the first half go in a table, and each sum
/// of the second half looks up the remainder it needs.
fn subset_with_sum(transfers: &[Transfer], target: &[i64]) -> Option<Vec<bool>> {
    let (low, high) = transfers.split_at(transfers.len() / 2);
    let mut table: HashMap<Vec<i64>, u64> = HashMap::new();
    each_subset_sum(low, target.len(), |mask, sum| {
        table.entry(sum.to_vec()).or_insert(mask);
    });
    let mut found = None;
    let mut need = vec![0; target.len()];
    each_subset_sum(high, target.len(), |mask, sum| {
        if found.is_some() {
            return;
        }
        for ((n, t), s) in need.iter_mut().zip(target).zip(sum) {
            *n = t - s;
        }
        if let Some(&low_mask) = table.get(&need) {
            found = Some((low_mask, mask));
        }
    });
    let (low_mask, high_mask) = found?;
    let bits = (0..low.len()).map(|i| low_mask >> i & 1 == 1);
    Some(
        bits.chain((0..high.len()).map(|i| high_mask >> i & 1 == 1))
            .collect(),
    )
}

type Suspects = Vec<(OpId, Transfer)>;

/// Acknowledged transfers whose loss, or second application, together
/// with some subset of the unknown ones, explains `difference` exactly.
/// The unknown subsets are enumerated only when there are at most 16 of
/// them; beyond that only the empty subset is tried.
fn suspects(
    history: &History<BankInput, BankOutput>,
    unknown: &[Transfer],
    difference: &[i64],
) -> (Suspects, Suspects) {
    let mut sums = HashSet::new();
    if unknown.len() <= 16 {
        each_subset_sum(unknown, difference.len(), |_, sum| {
            sums.insert(sum.to_vec());
        });
    } else {
        sums.insert(vec![0; difference.len()]);
    }
    let (mut lost, mut duplicated) = (Vec::new(), Vec::new());
    for (i, op) in history.ops().iter().enumerate() {
        let (BankInput::Transfer(t), Outcome::Ok(BankOutput::Transferred)) =
            (&op.input, &op.outcome)
        else {
            continue;
        };
        if t.from == t.to || t.amount == 0 || t.from.max(t.to) >= difference.len() {
            continue;
        }
        let mut shifted = difference.to_vec();
        t.apply(&mut shifted, 1);
        if sums.contains(&shifted) {
            lost.push((OpId(i), *t));
        }
        t.apply(&mut shifted, -2);
        if sums.contains(&shifted) {
            duplicated.push((OpId(i), *t));
        }
    }
    (lost, duplicated)
}
