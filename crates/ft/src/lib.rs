//! # ftvm-ft — the fault-tolerance protocol, as state machines
//!
//! The parts of the VMware FT protocol (DESIGN.md §4) that decide, written
//! as sans-IO state machines (DESIGN.md §6): they take events (a message,
//! a timer, the machine reaching an icount) and return what to do, and
//! never touch a socket, a clock or a file themselves, so the daemon and
//! the deterministic simulator run the same code.
//!
//! - [`channel`]: the logging channel's messages, framing and the
//!   pre-shared-key handshake;
//! - [`primary`]: the output rule and flow control;
//! - [`backup`]: log bytes acknowledged on receipt, replayed from the
//!   buffer;
//! - [`detector`]: heartbeats and silence;
//! - [`console`]: the pair's console as a file written at stream offsets,
//!   so that it reads as one stream across a failover;
//! - [`golive`]: the backup's drain, test-and-set and go-live;
//! - [`arbiter`]: the test-and-set itself, on a file on shared storage or
//!   ([`etcd`]) on an etcd cluster.
//!
//! `ftvm-node` puts these together around a machine (one VM of a pair);
//! the `ftvm` daemon and the simulator (`ftvm-sim`) drive that.

#![forbid(unsafe_code)]

pub mod arbiter;
pub mod backup;
pub mod channel;
#[cfg(unix)]
pub mod console;
pub mod detector;
pub mod etcd;
pub mod golive;
pub mod primary;
