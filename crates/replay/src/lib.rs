//! # ftvm-replay — the log of non-deterministic inputs, and its replay
//!
//! A machine is a pure function of its initial state and its ordered inputs
//! (ARCHITECTURE.md, "The input boundary"). This crate records those inputs
//! as a log and re-executes a machine from one (ARCHITECTURE.md, "The
//! log"):
//!
//! - [`format`](mod@format): typed entries (inputs at an icount, checkpoints of the
//!   state digest, control entries), sequence numbers, a compact encoding,
//!   frames with CRC32C, and a versioned header naming the machine
//!   configuration (with the content hash of each file) and the digest of
//!   the initial state;
//! - [`Recorder`]: the only way a recording run injects inputs, so each is
//!   logged at the icount where it is applied;
//! - [`Replayer`] / [`ReplayMachine`]: apply a log's entries with no live
//!   input, check every checkpoint, and on a mismatch bisect from the last
//!   good checkpoint's snapshot to the first instruction whose state
//!   differs;
//! - [`TimeSteering`]: small logged corrections that keep guest time (a
//!   function of icount) close to the host's wall clock.
//!
//! Everything here is sans-IO apart from the `Read`/`Write` the log goes
//! through: the same code records to a file today and feeds a logging
//! channel in an FT pair.

#![forbid(unsafe_code)]

pub mod format;
mod record;
mod replay;
mod steering;

pub use format::{
    End, Entry, Event, LogDecoder, LogError, LogHeader, LogReader, LogWriter, MachineId,
};
pub use record::Recorder;
pub use replay::{
    Applied, Divergence, Fault, FirstDifference, Output, ReplayError, ReplayMachine, Replayed,
    Replayer, describe_difference,
};
pub use steering::{ClockReading, TimeSteering};
