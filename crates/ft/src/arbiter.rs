//! The test-and-set against split brain (DESIGN.md §4): per pair and
//! epoch, the first VM to ask wins and every other loses, forever. A VM
//! that cannot reach the store must wait ([`Verdict::Unreachable`]), never
//! go live.
//!
//! [`FileArbiter`] is the embedded default: a directory on storage both
//! VMs reach. The claim is written to a private file first and then
//! hard-linked to the pair's name, which is atomic and fails if the name
//! exists, so a claim is never seen half-written.

use std::path::{Path, PathBuf};

use crate::golive::Verdict;

pub trait Arbiter {
    /// Claim (pair, epoch) for `me`. Asking again after a win wins again.
    fn test_and_set(&mut self, pair: &str, epoch: u64, me: &str) -> Verdict;
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a valid pair or VM name (use letters, digits, '.', '_' and '-')")]
pub struct BadName(String);

fn check_name(name: &str) -> Result<(), BadName> {
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

pub struct FileArbiter {
    dir: PathBuf,
}

impl FileArbiter {
    pub fn new(dir: impl Into<PathBuf>) -> FileArbiter {
        FileArbiter { dir: dir.into() }
    }

    /// The VM that holds (pair, epoch), if any.
    pub fn holder(&self, pair: &str, epoch: u64) -> Option<String> {
        std::fs::read_to_string(self.claim_path(pair, epoch)).ok()
    }

    fn claim_path(&self, pair: &str, epoch: u64) -> PathBuf {
        self.dir.join(format!("{pair}.{epoch}.owner"))
    }

    fn try_claim(&self, pair: &str, epoch: u64, me: &str) -> Result<Verdict, std::io::Error> {
        let claim = self.claim_path(pair, epoch);
        let private = self
            .dir
            .join(format!(".{pair}.{epoch}.{me}.{}.claim", std::process::id()));
        write_synced(&private, me.as_bytes())?;
        let linked = std::fs::hard_link(&private, &claim);
        let _ = std::fs::remove_file(&private);
        match linked {
            Ok(()) => Ok(Verdict::Won),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&claim)?;
                Ok(if holder == me {
                    Verdict::Won
                } else {
                    Verdict::Lost
                })
            }
            Err(e) => Err(e),
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

impl Arbiter for FileArbiter {
    fn test_and_set(&mut self, pair: &str, epoch: u64, me: &str) -> Verdict {
        if let Err(e) = check_name(pair).and_then(|()| check_name(me)) {
            tracing::error!("test-and-set refused: {e}");
            return Verdict::Unreachable;
        }
        match self.try_claim(pair, epoch, me) {
            Ok(verdict) => verdict,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "the arbiter is unreachable: {e}");
                Verdict::Unreachable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ftvm-arbiter-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn exactly_one_of_many_racing_claimants_wins() {
        let dir = scratch("race");
        for epoch in 0..20 {
            let winners: Vec<Verdict> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|i| {
                        let dir = dir.clone();
                        s.spawn(move || {
                            FileArbiter::new(dir).test_and_set("pair", epoch, &format!("vm{i}"))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("thread"))
                    .collect()
            });
            assert_eq!(
                winners.iter().filter(|v| **v == Verdict::Won).count(),
                1,
                "epoch {epoch}: {winners:?}"
            );
            assert!(winners.iter().all(|v| *v != Verdict::Unreachable));
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_winner_keeps_winning_and_epochs_are_independent() {
        let dir = scratch("again");
        let mut a = FileArbiter::new(&dir);
        assert_eq!(a.test_and_set("p", 1, "backup"), Verdict::Won);
        assert_eq!(a.test_and_set("p", 1, "backup"), Verdict::Won);
        assert_eq!(a.test_and_set("p", 1, "primary"), Verdict::Lost);
        assert_eq!(a.test_and_set("p", 2, "primary"), Verdict::Won);
        assert_eq!(a.holder("p", 1).as_deref(), Some("backup"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unreachable_store_or_a_bad_name_never_wins() {
        let mut a = FileArbiter::new("/nonexistent/ftvm-arbiter");
        assert_eq!(a.test_and_set("p", 1, "vm"), Verdict::Unreachable);
        let dir = scratch("names");
        let mut a = FileArbiter::new(&dir);
        assert_eq!(a.test_and_set("../p", 1, "vm"), Verdict::Unreachable);
        assert_eq!(a.test_and_set("p", 1, ""), Verdict::Unreachable);
        let _ = std::fs::remove_dir_all(dir);
    }
}
