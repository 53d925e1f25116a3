//! The primary's side of the logging channel: the output rule and flow
//! control (ARCHITECTURE.md, "The FT protocol"), sans-IO.
//!
//! The primary keeps executing while the log is in flight; only outputs
//! wait. An output produced when the log held `n` entries may leave once
//! the backup has acknowledged all `n`: whatever the primary did before
//! the output is then in the backup's hands, so a backup that takes over
//! re-executes to the same output (and drops it, since it was released).

use std::collections::VecDeque;

/// Limits of the primary's lead over the backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLimits {
    /// Entries logged but not yet acknowledged before the primary stops
    /// executing (its log buffer is full).
    pub max_unacked_entries: u64,
    /// Instructions the primary may run ahead of what the backup has
    /// executed before it is slowed (the paper: about 1 s of execution).
    pub max_lag_insns: u64,
}

/// What the primary's run loop should do about flow control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Run freely.
    Run,
    /// Run, but slower: the backup lags more than the bound.
    SlowDown,
    /// Do not execute: the log buffer is full.
    Stall,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("the backup acknowledged {through} entries, but only {logged} were sent")]
    AheadOfLog { through: u64, logged: u64 },
    #[error("the backup's acknowledgement went back from {before} to {through} entries")]
    Backwards { before: u64, through: u64 },
}

/// The primary's view of the pair; `O` identifies an output.
pub struct Primary<O> {
    limits: FlowLimits,
    /// Entries logged so far (the next entry's sequence number).
    logged: u64,
    icount: u64,
    /// Entries the backup has acknowledged, and its icount.
    acked: u64,
    backup_icount: u64,
    /// Outputs held, with the number of entries each waits for.
    held: VecDeque<(u64, O)>,
    /// The backup is gone: nothing waits any more.
    solo: bool,
}

impl<O> Primary<O> {
    pub fn new(limits: FlowLimits) -> Primary<O> {
        Primary {
            limits,
            logged: 0,
            icount: 0,
            acked: 0,
            backup_icount: 0,
            held: VecDeque::new(),
            solo: false,
        }
    }

    /// The log now holds `entries` entries and the machine has executed
    /// `icount` instructions (a total that keeps growing across guest
    /// resets, so lags stay meaningful). Only entries that have been sent
    /// can ever be acknowledged: flush the log before waiting on them.
    pub fn logged(&mut self, entries: u64, icount: u64) {
        self.logged = self.logged.max(entries);
        self.icount = self.icount.max(icount);
    }

    /// The machine produced `output` when the log held `entries` entries.
    /// It is returned at once if all of them are acknowledged (or the
    /// primary runs alone), otherwise held.
    pub fn output(&mut self, entries: u64, output: O) -> Option<O> {
        self.logged = self.logged.max(entries);
        if self.solo || (self.acked >= self.logged && self.held.is_empty()) {
            return Some(output);
        }
        self.held.push_back((self.logged, output));
        None
    }

    /// The backup acknowledged the entries before `through` and is at
    /// `icount`; the outputs that may leave now, in order.
    pub fn ack(&mut self, through: u64, icount: u64) -> Result<Vec<O>, AckError> {
        if through > self.logged {
            return Err(AckError::AheadOfLog {
                through,
                logged: self.logged,
            });
        }
        if through < self.acked {
            return Err(AckError::Backwards {
                before: self.acked,
                through,
            });
        }
        self.acked = through;
        self.backup_icount = self.backup_icount.max(icount);
        let mut released = Vec::new();
        while self
            .held
            .front()
            .is_some_and(|(needs, _)| *needs <= through)
        {
            if let Some((_, output)) = self.held.pop_front() {
                released.push(output);
            }
        }
        Ok(released)
    }

    /// Change the lag bound (the caller converts guest time into
    /// instructions at the machine's current rate).
    pub fn set_max_lag_insns(&mut self, insns: u64) {
        self.limits.max_lag_insns = insns;
    }

    pub fn pace(&self) -> Pace {
        if self.solo {
            Pace::Run
        } else if self.logged - self.acked >= self.limits.max_unacked_entries {
            Pace::Stall
        } else if self.icount.saturating_sub(self.backup_icount) > self.limits.max_lag_insns {
            Pace::SlowDown
        } else {
            Pace::Run
        }
    }

    /// Entries not yet acknowledged, and instructions the backup trails by.
    pub fn lag(&self) -> (u64, u64) {
        (
            self.logged - self.acked,
            self.icount.saturating_sub(self.backup_icount),
        )
    }

    /// Outputs still held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The backup is gone and this VM won the test-and-set: it runs alone,
    /// so nothing waits for acknowledgements any more.
    pub fn go_solo(&mut self) -> Vec<O> {
        self.solo = true;
        self.acked = self.logged;
        self.held.drain(..).map(|(_, o)| o).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: FlowLimits = FlowLimits {
        max_unacked_entries: 4,
        max_lag_insns: 1000,
    };

    #[test]
    fn an_output_waits_for_every_entry_before_it() {
        let mut p = Primary::new(LIMITS);
        assert_eq!(p.output(2, "a"), None);
        p.logged(3, 150);
        assert_eq!(p.output(3, "b"), None);
        assert_eq!(p.ack(1, 50), Ok(vec![]));
        assert_eq!(p.ack(2, 60), Ok(vec!["a"]));
        assert_eq!(p.ack(3, 70), Ok(vec!["b"]));
        assert_eq!(p.output(3, "c"), Some("c"), "nothing unacknowledged");
        assert_eq!(p.output(4, "d"), None);
        assert_eq!(p.go_solo(), vec!["d"]);
        p.logged(9, 900);
        assert_eq!(p.output(9, "e"), Some("e"), "alone, nothing waits");
        assert_eq!(p.pace(), Pace::Run);
    }

    #[test]
    fn outputs_leave_in_order_even_when_a_later_one_needs_less() {
        let mut p = Primary::new(LIMITS);
        assert_eq!(p.output(1, 1), None);
        p.ack(1, 10).expect("ack");
        // Output 1 left; now 2 waits for entry 1, and 3 must queue behind.
        assert_eq!(p.output(2, 2), None);
        assert_eq!(p.output(2, 3), None);
        assert_eq!(p.ack(2, 20), Ok(vec![2, 3]));
    }

    #[test]
    fn flow_control_stalls_on_a_full_buffer_and_slows_on_lag() {
        let mut p: Primary<()> = Primary::new(LIMITS);
        p.logged(3, 500);
        assert_eq!(p.pace(), Pace::Run);
        p.logged(3, 1600);
        assert_eq!(p.pace(), Pace::SlowDown);
        p.logged(4, 1600);
        assert_eq!(p.pace(), Pace::Stall);
        p.ack(4, 1500).expect("ack");
        assert_eq!(p.pace(), Pace::Run);
        assert_eq!(p.lag(), (0, 100));
    }

    #[test]
    fn impossible_acks_are_errors() {
        let mut p: Primary<()> = Primary::new(LIMITS);
        p.logged(3, 0);
        assert_eq!(
            p.ack(4, 0),
            Err(AckError::AheadOfLog {
                through: 4,
                logged: 3
            })
        );
        p.ack(2, 0).expect("ack");
        assert_eq!(
            p.ack(1, 0),
            Err(AckError::Backwards {
                before: 2,
                through: 1
            })
        );
    }

    proptest! {
        /// The output rule, for any interleaving: an output is released
        /// only once every entry logged before it is acknowledged, and
        /// outputs leave in the order they were produced.
        #[test]
        fn the_output_rule_holds(steps in prop::collection::vec((0u8..3, 0u64..3), 1..200)) {
            let mut p = Primary::new(FlowLimits { max_unacked_entries: u64::MAX, max_lag_insns: u64::MAX });
            let (mut logged, mut acked) = (0u64, 0u64);
            let mut needs = Vec::new(); // entries logged when output i was made
            let mut released = Vec::new();
            for (what, n) in steps {
                match what {
                    0 => { logged += n; p.logged(logged, logged); }
                    1 => {
                        needs.push(logged);
                        released.extend(p.output(logged, needs.len() - 1));
                    }
                    _ => {
                        acked = (acked + n).min(logged);
                        let now = p.ack(acked, acked).expect("valid ack");
                        released.extend(now);
                    }
                }
                for &o in &released {
                    prop_assert!(needs[o] <= acked, "output {} left before its entries were acknowledged", o);
                }
            }
            prop_assert!(released.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(released.len() + p.held(), needs.len());
        }
    }
}
