//! Cloning a running VM into a new backup (ARCHITECTURE.md, "Cloning").
//!
//! A VM that runs alone (a survivor, or one started without a backup)
//! takes a snapshot at an instruction boundary where no I/O is in flight,
//! and from that icount logs every input again. The host streams the
//! snapshot to the new backup while the guest runs on; meanwhile the log
//! waits (its header names the snapshot's digest, which the host computes
//! off the run loop). Then the log flows, and while the new backup
//! restores the snapshot and replays, outputs do not wait for it: it may
//! not take over yet. Once it has caught up (it trails by less than half
//! the lag bound), the primary sends [`Message::Protected`], and from
//! there on its outputs wait for the backup's acknowledgements as in any
//! pair. A failure before that costs nothing but the clone: the primary
//! drops it and runs on alone, and a later clone tries again.
//!
//! Each clone is a new epoch of the test-and-set: only VMs of the newest
//! pairing can claim it, so a VM of an older pairing can never go live.

use ftvm_board::{Digest, ImageSource, Snapshot};
use ftvm_ft::channel::Message;
use ftvm_ft::clone::{CloneStart, Cloned};
use ftvm_ft::detector::FailureDetector;
use ftvm_replay::{MachineId, Recorder};

use crate::live::{OUTPUT_GRACE, PairLink, Phase};
use crate::{Effect, Mode, Node, NodeConfig, NodeError, Status, Time};

/// The most log a primary keeps while its snapshot is on the way; past
/// it the clone is given up (a transfer that slow would never catch up).
pub(crate) const LOG_WHILE_SENDING_MAX: u64 = 256 << 20;

/// How long a clone that is catching up may be silent before the primary
/// drops it (it may be restoring its snapshot meanwhile).
pub(crate) const CATCH_UP_SILENCE_MS: u64 = 10_000;

/// A clone has begun: send `start`, then the snapshot's pages, then call
/// [`Node::clone_sent`] with the snapshot's digest.
pub struct CloneBegun {
    pub snapshot: Snapshot,
    pub start: CloneStart,
}

/// Why a VM cannot be cloned now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloneRefused {
    #[error("it has a backup already")]
    HasBackup,
    #[error("it does not run the guest (it is a backup, or done)")]
    NotRunning,
    #[error("its run is ending")]
    Ending,
    #[error("it records its run to a file")]
    Recording,
    /// I/O is in flight: try again in a moment.
    #[error("I/O is in flight")]
    Busy,
}

impl CloneRefused {
    /// Whether asking again soon can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, CloneRefused::Busy)
    }
}

impl Node {
    /// Begin a clone for the pairing `epoch` (newer than this VM's): the
    /// machine is captured into `buffer` (taken on success; a buffer
    /// allocated and touched beforehand makes the guest's pause a plain
    /// copy), and inputs are logged from here.
    pub fn start_clone(
        &mut self,
        epoch: u64,
        buffer: &mut Vec<u8>,
        time: Time,
    ) -> Result<CloneBegun, CloneRefused> {
        let Mode::Running(r) = &mut self.mode else {
            return Err(CloneRefused::NotRunning);
        };
        if r.pair.is_some() {
            return Err(CloneRefused::HasBackup);
        }
        if r.ended.is_some() || self.status.is_done() {
            return Err(CloneRefused::Ending);
        }
        if r.recorder.is_logging() {
            return Err(CloneRefused::Recording);
        }
        // A request in flight has no completion in the log, and the new
        // backup would never re-issue it: wait until there is none.
        if !self.in_flight.is_empty() {
            return Err(CloneRefused::Busy);
        }
        let snapshot = r.machine.snapshot_into(std::mem::take(buffer));
        let start = CloneStart {
            machine: r.machine_id(),
            engine: r.config.engine,
            ram_size: snapshot.ram_size(),
            state: snapshot.state_bytes(),
            icount_base: self.icount_base,
            console_offset: self.console_offset,
            // The host knows the disk: it sets this for a private one.
            disk_size: None,
        };
        r.recorder = Recorder::continuing(Vec::new());
        self.entries_counted = 0;
        r.pair = Some(PairLink::new(&self.config, Phase::Transferring));
        self.config.epoch = epoch;
        self.status = Status::Cloning;
        tracing::info!(pair = %self.config.pair, epoch, icount = snapshot.icount(),
            mono_ms = time.ms(), "cloning: snapshot taken");
        Ok(CloneBegun { snapshot, start })
    }

    /// The snapshot has reached the new backup, whose digest is `digest`:
    /// the log flows from here. `false` if the clone was given up
    /// meanwhile (the host then drops the connection).
    pub fn clone_sent(&mut self, digest: Digest, time: Time) -> Result<bool, NodeError> {
        let Mode::Running(r) = &mut self.mode else {
            return Ok(false);
        };
        let Some(pair) = r.pair.as_mut().filter(|p| p.phase == Phase::Transferring) else {
            return Ok(false);
        };
        pair.phase = Phase::CatchingUp;
        let id = r.machine_id();
        r.recorder.start_from(id, r.config.engine, digest)?;
        self.detector = FailureDetector::new(self.config.detector, time.ms());
        self.send_log(time, true)?;
        Ok(true)
    }

    /// Give up a clone that cannot take over yet: the VM runs on alone,
    /// unlogged. A protected backup is not given up so: its failure goes
    /// to the arbiter like any backup's.
    pub fn clone_failed(&mut self, why: &str) {
        let Mode::Running(r) = &mut self.mode else {
            return;
        };
        let Some(pair) = &r.pair else {
            return;
        };
        if pair.phase == Phase::Protected {
            return;
        }
        tracing::warn!(pair = %self.config.pair, "giving up the clone: {why}");
        let connected = pair.phase == Phase::CatchingUp;
        r.pair = None;
        r.recorder = Recorder::unlogged();
        r.machine.stop_after_output(None);
        self.status = Status::Live;
        if connected {
            self.effects.push(Effect::CloseChannel);
        }
    }

    /// The clone has caught up: from here outputs wait for it.
    pub(crate) fn clone_caught_up(&mut self, time: Time) {
        if let Err(e) = self.send_log(time, true) {
            tracing::warn!("sending the log: {e}");
        }
        let Mode::Running(r) = &mut self.mode else {
            return;
        };
        let Some(pair) = &mut r.pair else {
            return;
        };
        pair.phase = Phase::Protected;
        r.machine.stop_after_output(Some(OUTPUT_GRACE));
        let through = r.recorder.entries();
        self.status = Status::Primary;
        // The story starts again with the new pairing: what the status
        // line tells of suspicions and take-overs is about this one.
        self.stats.milestones = crate::Milestones {
            clones: self.stats.milestones.clones + 1,
            ..crate::Milestones::default()
        };
        tracing::info!(pair = %self.config.pair, epoch = self.config.epoch, through,
            "the new backup has caught up: it protects this VM");
        self.effects
            .push(Effect::Send(Message::Protected { through }));
        // Everything before was released as it came: the backup need not
        // keep it to write again.
        self.effects.push(Effect::Send(Message::Released {
            console: self.console_offset,
        }));
        self.detector.sent(time.ms());
    }

    /// A new backup from a clone: the snapshot restored on a machine built
    /// from the files the clone names (read from `images`); it replays the
    /// log that follows, and may take over once the primary says it has
    /// caught up.
    pub fn backup_from_clone(
        config: NodeConfig,
        images: Box<dyn ImageSource + Send>,
        cloned: Cloned,
        time: Time,
    ) -> Result<Node, NodeError> {
        crate::replaying::start_from_clone(config, images, cloned, time)
    }
}

impl crate::live::Running {
    /// The machine's identity (its images' hashes), computed once.
    pub(crate) fn machine_id(&mut self) -> MachineId {
        self.machine_id
            .get_or_insert_with(|| MachineId::of(&self.config))
            .clone()
    }
}
