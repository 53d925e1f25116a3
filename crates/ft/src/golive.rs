//! The backup's decision to take over, sans-IO (ARCHITECTURE.md, "The FT
//! protocol").
//!
//! When the primary is suspected, the caller also freezes the backup's
//! receive buffer ([`crate::backup::Backup::freeze`]): nothing more is
//! acknowledged, so every output the primary released is behind an entry
//! the backup holds and will execute before it goes live.
//!
//! While the primary is alive the backup replays. Once the failure
//! detector suspects the primary, the backup first consumes every entry
//! it has received (so it reaches the state the primary's released
//! outputs depend on), then asks the arbiter; only a win makes it live.
//! A clean end in the log (power-off, `ftvm stop`) ends the backup
//! without a go-live. The primary uses the same arbiter when the backup
//! goes silent, and then runs on alone.

/// The arbiter's answer to a test-and-set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Won,
    Lost,
    /// The store could not be reached: ask again later, never go live.
    Unreachable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupState {
    /// Replaying the primary's log.
    Replaying,
    /// The primary is suspected: replaying what was received, no more.
    Draining,
    /// Everything received is executed: waiting for the arbiter.
    Arbitrating,
    /// Won: leave replay, re-issue unfinished I/O, release outputs.
    Live,
    /// Lost: the primary is alive after all (or another VM won); stop.
    Halted,
    /// The log ended cleanly: stop, the pair is done.
    Ended,
}

/// What the backup must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Ask the arbiter for (pair, epoch).
    TestAndSet,
    /// The arbiter was unreachable: ask again after a pause.
    RetryTestAndSet,
    GoLive,
    Halt,
}

#[derive(Clone, Debug)]
pub struct GoLive {
    state: BackupState,
}

impl Default for GoLive {
    fn default() -> Self {
        GoLive {
            state: BackupState::Replaying,
        }
    }
}

impl GoLive {
    pub fn state(&self) -> BackupState {
        self.state
    }

    /// The failure detector suspects the primary.
    pub fn primary_suspected(&mut self) -> Action {
        if self.state == BackupState::Replaying {
            self.state = BackupState::Draining;
        }
        Action::None
    }

    /// Every received entry has been executed.
    pub fn drained(&mut self) -> Action {
        if self.state == BackupState::Draining {
            self.state = BackupState::Arbitrating;
            return Action::TestAndSet;
        }
        Action::None
    }

    /// The log's end entry arrived: the primary ended the pair on purpose.
    pub fn clean_end(&mut self) -> Action {
        match self.state {
            BackupState::Live | BackupState::Halted => Action::None,
            _ => {
                self.state = BackupState::Ended;
                Action::Halt
            }
        }
    }

    pub fn verdict(&mut self, verdict: Verdict) -> Action {
        if self.state != BackupState::Arbitrating {
            return Action::None;
        }
        match verdict {
            Verdict::Won => {
                self.state = BackupState::Live;
                Action::GoLive
            }
            Verdict::Lost => {
                self.state = BackupState::Halted;
                Action::Halt
            }
            Verdict::Unreachable => Action::RetryTestAndSet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backup_drains_before_it_asks_and_goes_live_only_on_a_win() {
        let mut g = GoLive::default();
        assert_eq!(
            g.drained(),
            Action::None,
            "nothing to drain while the primary is alive"
        );
        assert_eq!(g.primary_suspected(), Action::None);
        assert_eq!(g.verdict(Verdict::Won), Action::None, "not before draining");
        assert_eq!(g.drained(), Action::TestAndSet);
        assert_eq!(g.verdict(Verdict::Unreachable), Action::RetryTestAndSet);
        assert_eq!(g.state(), BackupState::Arbitrating);
        assert_eq!(g.verdict(Verdict::Won), Action::GoLive);
        assert_eq!(g.state(), BackupState::Live);
        assert_eq!(g.clean_end(), Action::None);
    }

    #[test]
    fn a_lost_test_and_set_halts_and_a_clean_end_never_goes_live() {
        let mut g = GoLive::default();
        g.primary_suspected();
        g.drained();
        assert_eq!(g.verdict(Verdict::Lost), Action::Halt);
        assert_eq!(g.state(), BackupState::Halted);

        let mut g = GoLive::default();
        g.primary_suspected();
        assert_eq!(g.clean_end(), Action::Halt);
        assert_eq!(g.drained(), Action::None);
        assert_eq!(g.state(), BackupState::Ended);
    }
}
