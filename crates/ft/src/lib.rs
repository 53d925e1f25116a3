//! # ftvm-ft — the fault-tolerance protocol, as state machines
//!
//! The parts of the VMware FT protocol that decide, written as sans-IO
//! state machines (ARCHITECTURE.md, "Sans-IO"): they take events (a
//! message, a timer, the machine reaching an icount) and return what to
//! do, and never touch a socket, a clock or a file themselves (clippy
//! holds them to it, see `clippy.toml`), so the daemon and the
//! deterministic simulator run the same code.
//!
//! - [`channel`]: the logging channel's messages, framing and the
//!   pre-shared-key handshake;
//! - [`primary`]: the output rule and flow control;
//! - [`backup`]: log bytes acknowledged on receipt, replayed from the
//!   buffer;
//! - [`clone`]: a running VM's snapshot streamed to a new backup;
//! - [`detector`]: heartbeats and silence;
//! - [`golive`]: the backup's drain, test-and-set and go-live.
//!
//! `ftvm-node` puts these together around a machine (one VM of a pair);
//! the host's run loop (`ftvm-host`, which also holds the test-and-set
//! stores: a file on shared storage, or etcd) and the simulator
//! (`ftvm-sim`) drive that.

#![forbid(unsafe_code)]

pub mod backup;
pub mod channel;
pub mod clone;
pub mod detector;
pub mod golive;
pub mod primary;
