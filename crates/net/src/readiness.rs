//! Waking a loop when a polled backend's host sockets have input.
//!
//! The user-mode gateway is polled: its loop (a VM's, or the switch's)
//! calls [`NetBackend::poll`](crate::NetBackend::poll) between other work.
//! Polling alone made a client's bytes wait for the next turn, up to a
//! millisecond each way. Here a thread waits in epoll (mio) on the
//! gateway's host sockets and calls a wake function when one of them has
//! something, so the loop can poll at once. Registrations are
//! edge-triggered: one wake per arrival, not one per poll that left bytes
//! unread (the loop's own periodic poll covers those).

use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

const INPUT: Token = Token(0);
const STOP: Token = Token(1);

/// The waiting thread, and the registry to add sockets to it.
pub(crate) struct HostReadiness {
    registry: Registry,
    stop: Waker,
    thread: Option<JoinHandle<()>>,
}

impl HostReadiness {
    /// Start the thread; `wake` is called from it on every arrival.
    pub(crate) fn start(wake: Box<dyn Fn() + Send>) -> std::io::Result<HostReadiness> {
        let mut poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let stop = Waker::new(poll.registry(), STOP)?;
        let thread = std::thread::Builder::new()
            .name("net-readiness".into())
            .spawn(move || {
                let mut events = Events::with_capacity(64);
                loop {
                    match poll.poll(&mut events, None) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!(%e, "waiting for the gateway's host sockets failed");
                            return;
                        }
                    }
                    if events.iter().any(|event| event.token() == STOP) {
                        return;
                    }
                    if !events.is_empty() {
                        wake();
                    }
                }
            })?;
        Ok(HostReadiness {
            registry,
            stop,
            thread: Some(thread),
        })
    }

    /// Wake on input to `socket` from now on, until it is closed (closing
    /// a socket removes it from epoll).
    pub(crate) fn watch(&self, socket: &impl AsRawFd) -> std::io::Result<()> {
        self.registry.register(
            &mut SourceFd(&socket.as_raw_fd()),
            INPUT,
            Interest::READABLE,
        )
    }
}

impl Drop for HostReadiness {
    fn drop(&mut self) {
        if self.stop.wake().is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}
