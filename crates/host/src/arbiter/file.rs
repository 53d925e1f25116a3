//! [`FileArbiter`], the embedded default: a directory on storage both
//! VMs reach. The claim is written to a private file first and then
//! hard-linked to the pair's name, which is atomic and fails if the name
//! exists, so a claim is never seen half-written.

use std::path::{Path, PathBuf};

use ftvm_ft::golive::Verdict;

use super::{Arbiter, BadName, claimant, settle};

pub struct FileArbiter {
    dir: PathBuf,
    claimant: String,
}

impl FileArbiter {
    /// An arbiter in `dir` for the VM `me`; `token` must be random and
    /// fresh for every VM process.
    pub fn new(dir: impl Into<PathBuf>, me: &str, token: [u8; 16]) -> Result<FileArbiter, BadName> {
        Ok(FileArbiter {
            dir: dir.into(),
            claimant: claimant(me, token)?,
        })
    }

    /// Who holds (pair, epoch), as `NAME TOKEN`, if anyone.
    pub fn holder(&self, pair: &str, epoch: u64) -> Option<String> {
        std::fs::read_to_string(self.claim_path(pair, epoch)).ok()
    }

    fn claim_path(&self, pair: &str, epoch: u64) -> PathBuf {
        self.dir.join(format!("{pair}.{epoch}.owner"))
    }

    fn try_claim(&self, pair: &str, epoch: u64) -> Result<Verdict, std::io::Error> {
        let claim = self.claim_path(pair, epoch);
        // Unique per instance (the token is in the claimant).
        let private = self.dir.join(format!(
            ".{pair}.{epoch}.{}.claim",
            self.claimant.replace(' ', ".")
        ));
        let linked = write_synced(&private, self.claimant.as_bytes())
            .and_then(|()| std::fs::hard_link(&private, &claim));
        let _ = std::fs::remove_file(&private);
        match linked {
            // The claim's name must survive a crash of the store before
            // anyone acts on the win.
            Ok(()) => std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map(|()| Verdict::Won),
            // Also what a retransmitted link over NFS gives the winner:
            // the holder check below sorts it out.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&claim)?;
                Ok(if holder == self.claimant {
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
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

impl Arbiter for FileArbiter {
    fn test_and_set(&mut self, pair: &str, epoch: u64) -> Verdict {
        settle(pair, &self.dir.display(), || self.try_claim(pair, epoch))
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

    fn arbiter(dir: &Path, me: &str, token: u8) -> FileArbiter {
        FileArbiter::new(dir, me, [token; 16]).expect("valid name")
    }

    #[test]
    fn exactly_one_of_many_racing_claimants_wins() {
        let dir = scratch("race");
        for epoch in 0..20 {
            let winners: Vec<Verdict> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4u8)
                    .map(|i| {
                        let dir = dir.clone();
                        // Two of them even share a name.
                        s.spawn(move || {
                            arbiter(&dir, &format!("vm{}", i % 3), i).test_and_set("pair", epoch)
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
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".claim"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "private claim files left: {leftovers:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_winner_keeps_winning_and_epochs_are_independent() {
        let dir = scratch("again");
        let mut backup = arbiter(&dir, "backup", 1);
        let mut primary = arbiter(&dir, "primary", 2);
        assert_eq!(backup.test_and_set("p", 1), Verdict::Won);
        assert_eq!(backup.test_and_set("p", 1), Verdict::Won);
        assert_eq!(primary.test_and_set("p", 1), Verdict::Lost);
        assert_eq!(primary.test_and_set("p", 2), Verdict::Won);
        assert!(
            backup
                .holder("p", 1)
                .is_some_and(|h| h.starts_with("backup "))
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unreachable_store_or_a_bad_name_never_wins() {
        let mut a = arbiter(Path::new("/nonexistent/ftvm-arbiter"), "vm", 1);
        assert_eq!(a.test_and_set("p", 1), Verdict::Unreachable);
        let dir = scratch("names");
        assert_eq!(a.test_and_set("../p", 1), Verdict::Unreachable);
        let mut a = arbiter(&dir, "vm", 1);
        assert_eq!(a.test_and_set("../p", 1), Verdict::Unreachable);
        assert!(FileArbiter::new(&dir, "", [0; 16]).is_err());
        assert!(FileArbiter::new(&dir, "a/b", [0; 16]).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
