//! Waking a loop when a polled backend's host sockets have input.
//!
//! The user-mode gateway is polled: its loop (a VM's, or the switch's)
//! calls [`NetBackend::poll`](crate::NetBackend::poll) between other work.
//! Polling alone made a client's bytes wait for the next turn, up to a
//! millisecond each way. So the gateway puts its host sockets in the
//! loop's own epoll (mio), under the token the loop gave, and the loop
//! polls the gateway as soon as one of them has something. (A thread of
//! our own waiting on them and then waking the loop cost a second
//! wake-up, tens of microseconds, on every arrival.) Registrations are
//! edge-triggered: one wake per arrival, not one per poll that left bytes
//! unread (the loop's own periodic poll covers those).

use std::os::fd::AsRawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// Where the gateway's host sockets are watched.
pub(crate) struct HostReadiness {
    registry: Registry,
    token: Token,
}

impl HostReadiness {
    /// Watch sockets in `registry`'s epoll, reported as `token`.
    pub(crate) fn new(registry: &Registry, token: Token) -> std::io::Result<HostReadiness> {
        Ok(HostReadiness {
            registry: registry.try_clone()?,
            token,
        })
    }

    /// Wake on input to `socket` from now on, until it is closed (closing
    /// a socket removes it from epoll).
    pub(crate) fn watch(&self, socket: &impl AsRawFd) -> std::io::Result<()> {
        self.registry.register(
            &mut SourceFd(&socket.as_raw_fd()),
            self.token,
            Interest::READABLE,
        )
    }
}
