//! Reconfiguration as a control entry (ARCHITECTURE.md, "The memory
//! balloon"): the operator sets the memory balloon's target on the VM
//! that runs the guest, which logs it as an input at the instruction
//! boundary where it is applied ([`Input::BalloonTarget`]); a backup
//! replays it at exactly the same icount, so the two machines stay one.

use ftvm_board::{BALLOON_PAGE_SIZE, Input};

use crate::{Mode, Node, Time};

/// Pages of the balloon per MiB.
const PAGES_PER_MIB: u64 = (1 << 20) / BALLOON_PAGE_SIZE;

/// Why the balloon's target cannot be set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BalloonRefused {
    #[error("it does not run the guest (it is {0})")]
    NotRunning(&'static str),
    #[error("its run is ending")]
    Ending,
    #[error("the machine has no balloon device (start the VM with --balloon)")]
    NoDevice,
    #[error("{mib} MiB is more than the guest's {ram_mib} MiB of RAM")]
    TooLarge { mib: u64, ram_mib: u64 },
    #[error("logging the target failed: {0}")]
    Log(String),
}

/// A target set: what it was, what it is, and where in the execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalloonSet {
    pub previous_pages: u32,
    pub target_pages: u32,
    /// What the guest's driver reported it held, when the target was set.
    pub actual_pages: u32,
    /// The icount at which the target was logged and applied.
    pub icount: u64,
}

/// `pages` of the balloon in MiB.
pub fn pages_to_mib(pages: u32) -> f64 {
    u64::from(pages) as f64 / PAGES_PER_MIB as f64
}

impl std::fmt::Display for BalloonSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "balloon target {} MiB (was {} MiB) at icount {}; the guest holds {} MiB in it",
            pages_to_mib(self.target_pages),
            pages_to_mib(self.previous_pages),
            self.icount,
            pages_to_mib(self.actual_pages),
        )
    }
}

impl Node {
    /// Set the memory balloon's target to `mib` MiB at `time`: logged
    /// (for the backup, or the recording) and applied at the machine's
    /// current instruction boundary; a running driver is told by the
    /// configuration-change interrupt. Only the VM that runs the guest
    /// can, on a machine with a balloon, up to its RAM.
    pub fn set_balloon(&mut self, mib: u64, time: Time) -> Result<BalloonSet, BalloonRefused> {
        let Mode::Running(r) = &self.mode else {
            return Err(BalloonRefused::NotRunning(self.status.word()));
        };
        if r.ended.is_some()
            || self.status.is_done()
            || r.pair.as_ref().is_some_and(|p| p.is_closing())
        {
            return Err(BalloonRefused::Ending);
        }
        let before = r.machine.balloon().ok_or(BalloonRefused::NoDevice)?;
        let ram_mib = r.machine.hart().ram().size() >> 20;
        if mib > ram_mib {
            return Err(BalloonRefused::TooLarge { mib, ram_mib });
        }
        // At most 64 GiB of RAM: the pages fit in the device's 32 bits.
        let pages = u32::try_from(mib * PAGES_PER_MIB)
            .map_err(|_| BalloonRefused::TooLarge { mib, ram_mib })?;
        self.input(Input::BalloonTarget { pages }, time)
            .map_err(|e| BalloonRefused::Log(e.to_string()))?;
        tracing::info!(pair = %self.config.pair, mib, pages, "balloon target set");
        let icount = self.machine().map_or(0, |m| m.icount());
        Ok(BalloonSet {
            previous_pages: before.target_pages,
            target_pages: pages,
            actual_pages: before.actual_pages,
            icount,
        })
    }
}
