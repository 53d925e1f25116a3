//! Why a VM halted, as a type: the status line, the simulator's checks and
//! the tests read the reason's code, never its wording.

/// Why a VM halted (stopped for good without ending the pair).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HaltReason {
    /// The other VM of the pair won the test-and-set and runs the guest.
    #[error("lost the test-and-set: the other VM is live")]
    LostTestAndSet,
    /// A backup asked to stop (`ftvm stop`, SIGTERM) while its primary ran.
    #[error("stopped")]
    Stopped,
    /// The primary failed before its log's header arrived, or a backup won
    /// the test-and-set before it: there is no machine to take over.
    #[error("the primary failed before it sent its machine: nothing to take over")]
    NothingToTakeOver,
    /// The replay reached a state the primary's log says it did not.
    #[error("diverged from the primary at entry {seq} (icount {icount}): {what}")]
    Diverged { seq: u64, icount: u64, what: String },
    /// The replay could not apply the primary's log.
    #[error("replay failed: {0}")]
    ReplayFailed(String),
    /// This host cannot build the primary's machine (another file, another
    /// initial state, a bad header).
    #[error("cannot replay the primary's machine: {0}")]
    CannotReplay(String),
    /// The primary's VM has a network card and this VM has no network: a
    /// backup would take over with its cable cut.
    #[error("the primary's VM has a network card, and this VM has no network: start it with --net")]
    NoNetwork,
    /// A clone whose primary failed before it had caught up: the primary
    /// released outputs without waiting for it, so it must not take over.
    #[error("the primary failed before this clone had caught up: it cannot take over")]
    NotCaughtUp,
    /// A primary that handed the VM over to its backup (`ftvm migrate`).
    #[error("handed the VM over to its backup")]
    HandedOver,
}

impl HaltReason {
    /// The reason without its details.
    pub fn code(&self) -> HaltCode {
        match self {
            HaltReason::LostTestAndSet => HaltCode::LostTestAndSet,
            HaltReason::Stopped => HaltCode::Stopped,
            HaltReason::NothingToTakeOver => HaltCode::NothingToTakeOver,
            HaltReason::Diverged { .. } => HaltCode::Diverged,
            HaltReason::ReplayFailed(_) => HaltCode::ReplayFailed,
            HaltReason::CannotReplay(_) => HaltCode::CannotReplay,
            HaltReason::NoNetwork => HaltCode::NoNetwork,
            HaltReason::NotCaughtUp => HaltCode::NotCaughtUp,
            HaltReason::HandedOver => HaltCode::HandedOver,
        }
    }
}

/// [`HaltReason`] without its details: one word in a status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HaltCode {
    LostTestAndSet,
    Stopped,
    NothingToTakeOver,
    Diverged,
    ReplayFailed,
    CannotReplay,
    NoNetwork,
    NotCaughtUp,
    HandedOver,
}

impl HaltCode {
    pub const ALL: [HaltCode; 9] = [
        HaltCode::LostTestAndSet,
        HaltCode::Stopped,
        HaltCode::NothingToTakeOver,
        HaltCode::Diverged,
        HaltCode::ReplayFailed,
        HaltCode::CannotReplay,
        HaltCode::NoNetwork,
        HaltCode::NotCaughtUp,
        HaltCode::HandedOver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HaltCode::LostTestAndSet => "lost-test-and-set",
            HaltCode::Stopped => "stopped",
            HaltCode::NothingToTakeOver => "nothing-to-take-over",
            HaltCode::Diverged => "diverged",
            HaltCode::ReplayFailed => "replay-failed",
            HaltCode::CannotReplay => "cannot-replay",
            HaltCode::NoNetwork => "no-network",
            HaltCode::NotCaughtUp => "not-caught-up",
            HaltCode::HandedOver => "handed-over",
        }
    }

    /// Whether a VM may halt so in a healthy pair: it lost a fair race,
    /// was stopped, or its primary died before there was anything to take
    /// over (or before a clone had caught up). Every other reason is a
    /// fault of the pair or of its host.
    pub fn is_expected(self) -> bool {
        matches!(
            self,
            HaltCode::LostTestAndSet
                | HaltCode::Stopped
                | HaltCode::NothingToTakeOver
                | HaltCode::NotCaughtUp
                | HaltCode::HandedOver
        )
    }
}

impl std::fmt::Display for HaltCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HaltCode {
    type Err = String;

    fn from_str(s: &str) -> Result<HaltCode, String> {
        HaltCode::ALL
            .into_iter()
            .find(|code| code.as_str() == s)
            .ok_or_else(|| format!("unknown halt reason {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself() {
        for code in HaltCode::ALL {
            assert_eq!(code.as_str().parse::<HaltCode>(), Ok(code));
        }
        assert!("lost".parse::<HaltCode>().is_err());
    }
}
