//! The test-and-set against split brain: per pair and epoch, the first VM
//! to ask wins and every other loses, forever. A VM that cannot reach the
//! store must wait ([`Verdict::Unreachable`]), never go live.
//!
//! Two stores: [`FileArbiter`] (a directory on shared storage, the
//! embedded default) and [`EtcdArbiter`] (an etcd cluster). Either can take
//! seconds to answer (an fsync on NFS, etcd's timeout), so a VM asks
//! through an [`ArbiterThread`]: the run loop goes on answering its
//! channel (heartbeats, acknowledgements) while the claim is in flight.

mod etcd;
mod file;

use std::sync::mpsc::Sender;

use ftvm_ft::golive::Verdict;

pub use etcd::EtcdArbiter;
pub use file::FileArbiter;

pub trait Arbiter: Send {
    /// Claim (pair, epoch) for this VM. Asking again after a win wins
    /// again.
    fn test_and_set(&mut self, pair: &str, epoch: u64) -> Verdict;
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid pair or VM name (use letters, digits, '.', '_' and '-')")]
pub struct BadName(String);

pub fn check_name(name: &str) -> Result<(), BadName> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BadName(name.to_string()))
    }
}

/// What a claim holds: the VM's name and a token random per instance, so
/// two VMs that happen to share a name never both win.
fn claimant(me: &str, token: [u8; 16]) -> Result<String, BadName> {
    check_name(me)?;
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{me} {token}"))
}

/// The verdict of a claim on `pair` made by `claim` against `store`: a
/// bad pair name (a configuration error, not a lost race) or a store that
/// fails is unreachable, so the VM never goes live on it.
fn settle<E: std::fmt::Display>(
    pair: &str,
    store: &dyn std::fmt::Display,
    claim: impl FnOnce() -> Result<Verdict, E>,
) -> Verdict {
    if let Err(e) = check_name(pair) {
        tracing::error!("test-and-set impossible: {e}");
        return Verdict::Unreachable;
    }
    claim().unwrap_or_else(|e| {
        tracing::warn!(%store, "the arbiter is unreachable: {e}");
        Verdict::Unreachable
    })
}

/// An arbiter in a thread of its own: [`ArbiterThread::ask`] returns at
/// once, and the verdict arrives later through the sink given to
/// [`ArbiterThread::spawn`].
pub struct ArbiterThread {
    asks: Sender<(String, u64)>,
}

impl ArbiterThread {
    /// Run `arbiter` in a thread; each verdict goes to `sink`, which says
    /// whether anyone still listens.
    pub fn spawn(
        mut arbiter: Box<dyn Arbiter>,
        sink: impl Fn(Verdict) -> bool + Send + 'static,
    ) -> std::io::Result<ArbiterThread> {
        let (asks, rx) = std::sync::mpsc::channel::<(String, u64)>();
        std::thread::Builder::new()
            .name("arbiter".into())
            .spawn(move || {
                for (pair, epoch) in rx {
                    let verdict = arbiter.test_and_set(&pair, epoch);
                    tracing::warn!(?verdict, %pair, epoch, "test-and-set");
                    if !sink(verdict) {
                        return;
                    }
                }
            })?;
        Ok(ArbiterThread { asks })
    }

    /// Claim (pair, epoch); false if the thread is gone.
    pub fn ask(&self, pair: &str, epoch: u64) -> bool {
        self.asks.send((pair.to_string(), epoch)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Slow(std::sync::Arc<std::sync::Barrier>);

    impl Arbiter for Slow {
        fn test_and_set(&mut self, _: &str, _: u64) -> Verdict {
            self.0.wait();
            Verdict::Won
        }
    }

    /// The caller is not held while the store takes its time: `ask`
    /// returns before the claim is even made.
    #[test]
    fn asking_does_not_wait_for_the_store() {
        let gate = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread =
            ArbiterThread::spawn(Box::new(Slow(gate.clone())), move |v| tx.send(v).is_ok())
                .expect("thread");
        assert!(thread.ask("pair", 1));
        assert!(
            rx.try_recv().is_err(),
            "no verdict before the store answers"
        );
        gate.wait();
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(10)),
            Ok(Verdict::Won)
        );
    }
}
