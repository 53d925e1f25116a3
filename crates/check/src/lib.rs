//! # ftvm-check — checking what clients saw of a service in the FT VM
//!
//! ftvm's promise is that a failover is invisible to clients: a service
//! (Redis, PostgreSQL) running in a fault-tolerant pair behaves as one
//! machine that never failed. The way to test that promise is Jepsen's:
//! a harness on the host drives concurrent clients against the service
//! while faults kill or stop the primary or the backup, records every
//! operation with its invocation and completion times, and afterwards
//! checks the whole history against a sequential specification. This
//! crate is that check. It is pure (no I/O, no clock, no threads; see
//! `clippy.toml`): the harness, written elsewhere, records a [`History`]
//! and calls the checkers.
//!
//! ## Histories
//!
//! An [`Operation`] has a client ([`ProcessId`]), an input, a call time,
//! and an [`Outcome`]: `Ok(output)` with a return time, `Fail` (certainly
//! no effect; dropped before checking) or `Unknown` (a timeout or a reset
//! connection: it may take effect at any time after its call, or never;
//! its return is +infinity). Failovers produce `Unknown` operations, and
//! treating them as either failures or successes would be wrong both
//! ways; the tests show histories where each mistake gives the wrong
//! verdict.
//!
//! ```
//! use ftvm_check::{History, KvOp, Outcome, Register, RegisterOutput, check};
//!
//! // The harness: one History behind a Mutex, or one per client joined
//! // with `History::append`. Times are ns on one monotonic clock.
//! let mut history = History::new();
//! let w = history.invoke(1, KvOp::write("x", 5), 100);
//! let r = history.invoke(2, KvOp::read("x"), 150);
//! history.complete(w, Outcome::Ok(RegisterOutput::Written), 200).unwrap();
//! history.complete(r, Outcome::Ok(RegisterOutput::Read(Some(5))), 250).unwrap();
//! let lost = history.invoke(1, KvOp::write("x", 6), 300); // never completes
//! # let _ = lost;
//!
//! let verdict = check(&Register::<&str>::new(), &history).unwrap();
//! assert!(verdict.is_ok(), "{verdict}");
//! ```
//!
//! ## Linearizability ([`check`], [`check_with`])
//!
//! A [`Model`] is a sequential specification with a partition key;
//! [`Register`] models Redis keys (read, write, compare-and-swap). Keys
//! are checked independently, which is sound because linearizability is
//! compositional (Herlihy & Wing 1990) and is what makes long histories
//! tractable. Each key is searched with the algorithm of Wing & Gong
//! ("Testing and verifying concurrent objects", JPDC 1993) with Lowe's
//! improvements ("Testing for linearizability", Concurrency and
//! Computation 2017): a depth-first search over linearization orders on
//! a doubly-linked list of call and return entries, memoizing every
//! (linearized set, state) configuration reached. This is the algorithm
//! of Porcupine (Athalye, github.com/anishathalye/porcupine,
//! `checkSingle`); Knossos (Kingsbury, Jepsen's checker) searches the
//! same space breadth-first. The verdict is [`CheckResult::Ok`],
//! [`CheckResult::Illegal`] with an [`Explanation`] (the longest
//! linearizable prefix and the operations that could not be placed after
//! it, with their times), or [`CheckResult::Timeout`] when the budget of
//! [`CheckOptions`] runs out — never `Ok` on giving up.
//!
//! Cost: the memo makes ordinary histories near-linear, and three cuts,
//! each argued in `search.rs` to keep verdicts exact, keep failovers
//! from making them exponential: read-only operations are placed as
//! soon as they are legal instead of in every order
//! ([`Model::is_read_only`]); of unknown operations with equal inputs
//! only the earliest is a candidate; and a configuration is skipped if
//! one with the same completed operations and state but fewer unknown
//! ones was seen. Every `Unknown` operation stays pending to the end of
//! the history, so each adds one to the concurrency of everything after
//! its call; [`Register`] also drops those nobody can have observed
//! ([`Model::prunable_unknowns`]). Measured (release build, `tests/big.rs`):
//! 50,000 operations on 5 or 10 keys with 10 clients and 25 to 76 unknown
//! operations check in about 30 ms, and refuting a corrupted one takes
//! as long; all of it on one key, 20,000 operations, takes up to a few
//! seconds to refute. Dozens of unknown operations on one key can still
//! make a refutation exponential: that ends in [`CheckResult::Timeout`],
//! so set [`CheckOptions::interrupt`] to the harness's deadline.
//!
//! ```
//! use ftvm_check::{Bank, BankInput, BankOutput, FinalState, History, Operation, Transfer};
//!
//! let t = Transfer { from: 0, to: 1, amount: 30 };
//! let history = History::from(vec![
//!     Operation::ok(1, BankInput::Transfer(t), BankOutput::Transferred, 0, 10),
//!     Operation::ok(2, BankInput::Read, BankOutput::Balances(vec![70, 130]), 20, 30),
//!     // A transfer lost in a failover: it committed, as the final read shows.
//!     Operation::unknown(3, BankInput::Transfer(Transfer { from: 1, to: 0, amount: 5 }), 40),
//! ]);
//! let report = Bank::new(vec![100, 100]).check(&history, Some(&[75, 125])).unwrap();
//! assert!(report.is_ok(), "{report}");
//! assert!(matches!(report.final_state, FinalState::Explained { .. }));
//! ```
//!
//! ## Bank ([`Bank`])
//!
//! For PostgreSQL: accounts with a fixed total, transfers in serializable
//! transactions, reads of every balance. Every read must see the total
//! (and no negative balance, unless allowed); the balances read after
//! the run must be the initial ones plus every acknowledged transfer plus
//! some subset of the unknown ones, found by a meet-in-the-middle search
//! over at most [`Bank::max_unknown`] of them. A mismatch names the
//! acknowledged transfers whose loss or duplication would explain it.

#![forbid(unsafe_code)]

mod bank;
mod history;
mod linearizability;
mod model;
mod search;

pub use bank::{Bank, BankAnomaly, BankInput, BankOutput, BankReport, FinalState, Transfer};
pub use history::{History, HistoryError, OpId, Operation, Outcome, ProcessId};
pub use linearizability::{CheckOptions, CheckResult, Explanation, GiveUp, check, check_with};
pub use model::{KvOp, Model, Register, RegisterOp, RegisterOutput};
