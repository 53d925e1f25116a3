//! # ftvm-host — everything that touches the host
//!
//! The crates below this one (`ftvm-cpu`, `ftvm-board`, `ftvm-replay`,
//! `ftvm-ft`, `ftvm-node`) are pure: they never read a clock, open a file
//! or a socket, or start a thread, and clippy holds them to it (their
//! `clippy.toml`). This crate is where the host comes in, around a
//! `Node`:
//!
//! - [`vm`]: the one run loop that drives a node — alone (`ftvm run`), as
//!   a primary or as a backup (`ftvm primary`, `ftvm backup`) — and hands
//!   it what the threads below report;
//! - [`pair`]: a VM of a pair as a process (`ftvm primary`, `ftvm
//!   backup`): connecting, waiting, the pre-shared key, the arbiter;
//! - [`channel`]: the logging channel over TCP (handshake, reading without
//!   waiting for the loop's epoll);
//! - [`clone`]: streaming a running VM's snapshot to a new backup, and
//!   taking it; [`control`]: the socket through which a VM is asked to
//!   clone itself;
//! - [`io`]: the machine's devices on this host (disk images, entropy,
//!   the network card's backend), inline or in an I/O thread;
//! - [`arbiter`]: the test-and-set stores (a file on shared storage,
//!   etcd), asked from a thread of their own;
//! - [`console`] and [`terminal`]: the pair's console file and input
//!   socket, and the terminal of `ftvm run` and `ftvm console`;
//! - [`status`]: the one-line status each process keeps, as one type;
//!   [`process`]: whether another process lives, and asking it to end;
//! - [`clock`] and [`files`]: the host's clocks and files as the node and
//!   the board take them.

pub mod arbiter;
pub mod channel;
pub mod clock;
pub mod clone;
pub mod console;
pub mod control;
pub mod etcd;
pub mod files;
pub mod io;
pub mod metrics;
pub mod pair;
pub mod process;
pub mod status;
pub mod terminal;
pub mod vm;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Why the host side failed. Each names what it was doing, and says its
/// cause in the same line (causes are part of the message, not a
/// `#[source]` chain that a printer would repeat).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// A configuration that cannot work, said in one line.
    #[error("{0}")]
    Config(String),
    #[error("{what}: {error}")]
    Context { what: String, error: Box<HostError> },
    #[error(transparent)]
    Node(#[from] ftvm_node::NodeError),
    #[error(transparent)]
    Board(#[from] ftvm_board::BoardError),
    #[error(transparent)]
    Net(#[from] ftvm_net::NetError),
    #[error(transparent)]
    Channel(#[from] ftvm_ft::channel::ChannelError),
    #[error(transparent)]
    Arbiter(#[from] arbiter::BadName),
}

impl HostError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> HostError {
        HostError::Io {
            what: what.into(),
            error: source,
        }
    }

    /// Whether this comes from writing to a pipe nobody reads any more
    /// (`ftvm run | head`): the command should end quietly, as a Unix tool
    /// does.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            HostError::Io { error, .. } => error.kind() == std::io::ErrorKind::BrokenPipe,
            HostError::Context { error, .. } => error.is_broken_pipe(),
            _ => false,
        }
    }

    /// This error, said as part of `what`.
    pub fn context(self, what: impl Into<String>) -> HostError {
        HostError::Context {
            what: what.into(),
            error: Box::new(self),
        }
    }
}

/// `N` bytes from the host's random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], HostError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| {
        HostError::io(
            "reading the host's random source",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(bytes)
}

/// A flag SIGTERM and SIGINT set: the process is asked to stop (a VM
/// running the guest then ends cleanly).
pub fn stop_flag() -> Result<Arc<AtomicBool>, HostError> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&flag))
            .map_err(|e| HostError::io("installing the signal handlers", e))?;
    }
    Ok(flag)
}
