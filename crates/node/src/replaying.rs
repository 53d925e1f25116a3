//! A backup: the primary's log taken from the channel, acknowledged on
//! receipt and replayed; on the primary's failure, drain, test-and-set and
//! go-live.

use std::collections::{BTreeMap, VecDeque};

use ftvm_board::{DeviceKind, ImageSource, Input, IoRequest, Machine, MachineConfig};
use ftvm_ft::backup::Backup;
use ftvm_ft::channel::Message;
use ftvm_ft::clone::Cloned;
use ftvm_ft::detector::FailureDetector;
use ftvm_ft::golive::{Action, BackupState, GoLive, Verdict};
use ftvm_replay::{Applied, Entry, Event, MachineId, Output, ReplayError, ReplayMachine};

use crate::live::{ARBITER_RETRY_NS, Running};
use crate::stats::{Held, release};
use crate::{
    DiskMode, Effect, HaltReason, Mode, Node, NodeConfig, NodeError, REPLAY_SLICE, Ran, Status,
    Time,
};

/// The most console bytes a backup keeps to write again when it goes live.
/// It keeps those after the offset the primary last said it released
/// ([`Message::Released`]), which trails the replay by about one round trip;
/// the bound only guards memory against a primary that never says.
const CONSOLE_TAIL: usize = 64 << 20;

pub(crate) struct Replaying {
    /// Where the backup reads the files the primary's machine is built
    /// from (the log's header names them, with their hashes).
    images: Box<dyn ImageSource + Send>,
    backup: Backup,
    golive: GoLive,
    replay: Option<(ReplayMachine, MachineConfig)>,
    next: Option<Entry>,
    /// Requests the replay produced whose completion has not been applied.
    outstanding: BTreeMap<u64, IoRequest>,
    retry_at: Option<u64>,
    /// The console bytes the replay produced after the offset the primary
    /// last said it released: a backup that goes live writes them again at
    /// their offsets, since they may never have reached the world.
    console_tail: VecDeque<u8>,
    /// That offset.
    released_console: u64,
    /// The primary closed the channel itself.
    pub(crate) peer_closed: bool,
    /// Host time before which this backup must not go live (see
    /// [`Node::backup_tick`]).
    live_not_before_ns: u64,
    /// Whether the primary's outputs wait for this backup, so it may take
    /// over: from the start for a backup of a booting machine, from
    /// [`Message::Protected`] on for a clone.
    protected: bool,
    /// A clone's log must start where its snapshot stands: the machine and
    /// the digest its header must name, until it has arrived.
    clone_header: Option<(MachineId, [u8; 32])>,
    /// The primary handed the VM over: going live, close the channel, so
    /// that it asks the arbiter (and loses) at once.
    handed_over: bool,
}

impl Replaying {
    pub(crate) fn machine_config(&self) -> Option<&MachineConfig> {
        self.replay.as_ref().map(|(_, config)| config)
    }

    pub(crate) fn machine(&self) -> Option<&Machine> {
        self.replay.as_ref().map(|(m, _)| m.machine())
    }

    pub(crate) fn deadline_ms(&self, detector: &FailureDetector) -> u64 {
        let retry_ms = self.retry_at.map_or(u64::MAX, |ns| ns / 1_000_000);
        if self.golive.state() == BackupState::Replaying {
            retry_ms.min(detector.next_deadline())
        } else {
            retry_ms
        }
    }
}

pub(crate) fn start(config: NodeConfig, images: Box<dyn ImageSource + Send>, time: Time) -> Node {
    let replaying = Replaying {
        images,
        backup: Backup::default(),
        golive: GoLive::default(),
        replay: None,
        next: None,
        outstanding: BTreeMap::new(),
        console_tail: VecDeque::new(),
        released_console: 0,
        peer_closed: false,
        live_not_before_ns: 0,
        retry_at: None,
        protected: true,
        clone_header: None,
        handed_over: false,
    };
    Node::new(
        config,
        Mode::Replaying(Box::new(replaying)),
        Status::Backup,
        time,
    )
}

/// A backup that starts from a clone's snapshot (see [`Node::backup_from_clone`]).
pub(crate) fn start_from_clone(
    config: NodeConfig,
    images: Box<dyn ImageSource + Send>,
    cloned: Cloned,
    time: Time,
) -> Result<Node, NodeError> {
    let Cloned {
        start: clone,
        snapshot,
        digest,
        ..
    } = cloned;
    let machine_config = clone
        .machine
        .config(config.engine, images.as_ref())
        .map_err(|e| NodeError::Clone(format!("the primary's machine: {e}")))?;
    let replay = ReplayMachine::from_snapshot(machine_config.clone(), &snapshot)?;
    let mut node = start(config, images, time);
    if let Mode::Replaying(r) = &mut node.mode {
        r.replay = Some((replay, machine_config));
        r.protected = false;
        // The first acknowledgement says where the replay stands: the
        // snapshot's icount, not zero (the primary's lag counts from it).
        r.backup.executed(clone.icount_base + snapshot.icount());
        r.clone_header = Some((clone.machine, digest.0));
        r.released_console = clone.console_offset;
    }
    node.console_offset = clone.console_offset;
    node.icount_base = clone.icount_base;
    node.stats.icount = snapshot.icount();
    Ok(node)
}

impl Node {
    /// A message from the primary.
    pub(crate) fn backup_receive(&mut self, message: &Message, time: Time) {
        let Mode::Replaying(r) = &mut self.mode else {
            return;
        };
        if let Message::Released { console } = message {
            r.released_console = r.released_console.max(*console);
            trim_console_tail(&mut r.console_tail, self.console_offset, r.released_console);
            return;
        }
        if let Message::Protected { through } = message {
            tracing::info!(pair = %self.config.pair, through, "caught up: this backup protects the VM");
            r.protected = true;
            return;
        }
        if let Message::HandOver { through } = message {
            if r.protected && r.golive.state() == BackupState::Replaying {
                tracing::warn!(pair = %self.config.pair, through, "the primary hands the VM over");
                // The primary has stopped and released everything: there
                // is nothing to wait out before asking the arbiter.
                r.peer_closed = true;
                r.backup.freeze();
                r.golive.primary_suspected();
                r.live_not_before_ns = 0;
                r.handed_over = true;
                self.status = Status::TakingOver;
            }
            return;
        }
        match r.backup.receive(message) {
            Ok(ack) => {
                if let Message::Entries { log } = message {
                    self.stats.log_bytes += log.len() as u64;
                    self.stats.log_entries = r.backup.acked();
                }
                if let Some(ack) = ack {
                    self.effects.push(Effect::Send(ack));
                    self.detector.sent(time.ms());
                }
                if let Err(e) = self.build_replay() {
                    self.halt(HaltReason::CannotReplay(e));
                }
            }
            // A log that does not check is a channel failure: nothing more
            // is acknowledged, and the detector decides.
            Err(e) => {
                tracing::error!("refusing the primary's log: {e}");
                r.backup.freeze();
            }
        }
    }

    /// Build the primary's machine once the log's header has arrived.
    fn build_replay(&mut self) -> Result<(), String> {
        let Mode::Replaying(r) = &mut self.mode else {
            return Ok(());
        };
        if r.replay.is_some() {
            let Some((machine, digest)) = &r.clone_header else {
                return Ok(());
            };
            let header = match r.backup.header() {
                Ok(Some(header)) => header,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("the log's header: {e}")),
            };
            if header.machine != *machine {
                return Err("the log is of another machine than the clone's".into());
            }
            if header.initial_digest != *digest {
                return Err("the log does not start where the clone's snapshot stands".into());
            }
            r.clone_header = None;
            return Ok(());
        }
        let header = match r.backup.header() {
            Ok(Some(header)) => header.clone(),
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("the log's header: {e}")),
        };
        let config = header
            .machine
            .config(self.config.engine, r.images.as_ref())
            .map_err(|e| format!("the primary's machine: {e}"))?;
        let replay =
            ReplayMachine::new(config.clone()).map_err(|e| format!("building the machine: {e}"))?;
        if replay.machine().digest().0 != header.initial_digest {
            return Err("this host builds a different initial machine than the primary".into());
        }
        r.replay = Some((replay, config));
        Ok(())
    }

    /// A backup's heartbeat (an acknowledgement), its suspicion of the
    /// primary, and its arbiter retries.
    pub(crate) fn backup_tick(&mut self, time: Time) {
        let now = time.ms();
        let suspects = self.detector.suspects(now);
        let heartbeat = self.detector.heartbeat_due(now);
        let Mode::Replaying(r) = &mut self.mode else {
            return;
        };
        if heartbeat && r.golive.state() == BackupState::Replaying {
            // The backup's heartbeat is an ack: it also tells the primary
            // how far the replay has come.
            let icount =
                self.icount_base + r.replay.as_ref().map_or(0, |(m, _)| m.machine().icount());
            r.backup.executed(icount);
            self.effects.push(Effect::Send(Message::Ack {
                through: r.backup.acked(),
                icount,
            }));
            self.detector.sent(now);
        }
        if suspects && r.golive.state() == BackupState::Replaying && !r.protected {
            tracing::warn!(pair = %self.config.pair, "the primary is silent before this clone caught up");
            self.halt(HaltReason::NotCaughtUp);
            return;
        }
        if suspects && r.golive.state() == BackupState::Replaying {
            tracing::warn!(pair = %self.config.pair, "the primary is silent: draining the log");
            r.backup.freeze();
            r.golive.primary_suspected();
            self.status = Status::TakingOver;
            self.stats.milestones.suspected_peer = true;
            // A primary that may still be running acts on the
            // acknowledgements this VM sent (it releases outputs) until it
            // suspects this VM in turn, a timeout after the last of them
            // arrives. Going live before then could put the live VM's
            // outputs (a disk write) before an old one. Sending nothing
            // more, and waiting that timeout, rules it out; a primary that
            // closed the channel itself acts on nothing any more.
            r.live_not_before_ns = if r.peer_closed {
                0
            } else {
                (self.detector.last_sent() + self.config.detector.timeout_ms)
                    .saturating_mul(1_000_000)
            };
        }
        if r.retry_at.is_some_and(|at| time.mono_ns >= at) {
            r.retry_at = None;
            self.effects.push(Effect::TestAndSet);
        }
    }

    /// The arbiter's answer to a backup taking over.
    pub(crate) fn backup_verdict(&mut self, verdict: Verdict, time: Time) -> Result<(), NodeError> {
        let Mode::Replaying(r) = &mut self.mode else {
            return Ok(());
        };
        match r.golive.verdict(verdict) {
            Action::GoLive => self.go_live(time)?,
            Action::Halt => self.halt(HaltReason::LostTestAndSet),
            Action::RetryTestAndSet => r.retry_at = Some(time.mono_ns + ARBITER_RETRY_NS),
            Action::None | Action::TestAndSet => {}
        }
        Ok(())
    }

    /// Replay the next entry, or a short slice toward it.
    pub(crate) fn run_replay(&mut self) -> Result<Ran, NodeError> {
        let Mode::Replaying(r) = &mut self.mode else {
            return Ok(Ran::Done);
        };
        let Some((replay, _)) = &mut r.replay else {
            if r.golive.state() == BackupState::Draining {
                self.halt(HaltReason::NothingToTakeOver);
                return Ok(Ran::Done);
            }
            return Ok(Ran::Blocked);
        };
        if r.next.is_none() {
            r.next = r.backup.next_entry();
        }
        let Some(entry) = r.next.take() else {
            self.stats.lag_entries = 0;
            if r.backup.drained() && r.golive.drained() == Action::TestAndSet {
                tracing::warn!(pair = %self.config.pair, icount = replay.machine().icount(),
                    not_before_ms = r.live_not_before_ns / 1_000_000,
                    "every received entry is executed: asking the arbiter");
                // [`Node::backup_tick`] asks, once the primary can no
                // longer act on an acknowledgement.
                r.retry_at = Some(r.live_not_before_ns);
            }
            return Ok(Ran::Blocked);
        };
        let private = self.config.disk == DiskMode::Private;
        let mut console = 0u64;
        let mut requests = Vec::new();
        let tail = &mut r.console_tail;
        let mut out = |output: Output| match output {
            Output::Console(bytes) => {
                console += bytes.len() as u64;
                tail.extend(bytes);
            }
            Output::Io(request) => requests.push(request),
        };
        let icount_before = replay.machine().icount();
        let applied = if entry.icount > icount_before.saturating_add(REPLAY_SLICE) {
            replay
                .advance(&entry, icount_before + REPLAY_SLICE, &mut out)
                .map(|()| None)
        } else {
            replay.apply(&entry, &mut out).map(Some)
        };
        self.console_offset += console;
        trim_console_tail(&mut r.console_tail, self.console_offset, r.released_console);
        for request in requests {
            if private && matches!(request, IoRequest::BlockWrite { .. }) {
                self.effects.push(Effect::PerformOwn(request.clone()));
            }
            r.outstanding.insert(request.id(), request);
        }
        if matches!(applied, Ok(Some(Applied::Reset))) {
            self.icount_base += icount_before;
        }
        let icount = replay.machine().icount();
        r.backup.executed(self.icount_base + icount);
        self.stats.icount = icount;
        self.stats.lag_entries = r.backup.acked().saturating_sub(entry.seq);
        let applied = match applied {
            Err(ReplayError::Mismatch { seq, icount, what }) => {
                self.halt(HaltReason::Diverged { seq, icount, what });
                return Ok(Ran::Done);
            }
            Err(e) => {
                self.halt(HaltReason::ReplayFailed(e.to_string()));
                return Ok(Ran::Done);
            }
            Ok(None) => {
                r.next = Some(entry);
                return Ok(Ran::Busy);
            }
            Ok(Some(applied)) => applied,
        };
        match applied {
            Applied::Input => {
                if let Event::Input(Input::IoDone { id, .. }) = &entry.event {
                    r.outstanding.remove(id);
                }
            }
            Applied::Output => {}
            Applied::Reset => r.outstanding.clear(),
            Applied::Checkpoint { logged, found } if logged == found => {}
            Applied::Checkpoint { logged, found } => {
                self.halt(HaltReason::Diverged {
                    seq: entry.seq,
                    icount: entry.icount,
                    what: format!("the state digest is {found}, the primary's is {logged}"),
                });
                return Ok(Ran::Done);
            }
            Applied::End(end) => {
                r.golive.clean_end();
                tracing::info!(pair = %self.config.pair, ?end, "the primary ended the pair");
                self.status = Status::Ended(end);
                self.mode = Mode::Done;
                return Ok(Ran::Done);
            }
        }
        Ok(Ran::Busy)
    }

    /// Won the test-and-set: leave replay, re-issue the I/O that has no
    /// completion, run live from here.
    fn go_live(&mut self, time: Time) -> Result<(), NodeError> {
        let Mode::Replaying(r) = std::mem::replace(&mut self.mode, Mode::Done) else {
            return Ok(());
        };
        let Some((replay, config)) = r.replay else {
            self.halt(HaltReason::NothingToTakeOver);
            return Ok(());
        };
        let machine = replay.into_machine();
        tracing::warn!(pair = %self.config.pair, icount = machine.icount(),
            reissued = r.outstanding.len(), "going live");
        self.stats.milestones.took_over = true;
        for device in &config.virtio {
            if let DeviceKind::Net { mac, .. } = device {
                self.effects.push(Effect::Announce { mac: *mac });
                self.stats.milestones.announced = true;
            }
        }
        // The console bytes the primary may not have released: written
        // again at their offsets, they continue the world's stream without
        // a gap (bytes it did release are rewritten with the same values).
        if !r.console_tail.is_empty() {
            let bytes: Vec<u8> = r.console_tail.into_iter().collect();
            let offset = self.console_offset - bytes.len() as u64;
            release(
                &mut self.effects,
                &mut self.stats,
                Held::Console { offset, bytes },
                0,
            );
        }
        for request in r.outstanding.into_values() {
            self.effects.push(Effect::Perform(request));
        }
        if r.handed_over {
            self.effects.push(Effect::CloseChannel);
        }
        self.mode = Mode::Running(Box::new(Running::took_over(
            machine,
            config,
            &self.config,
            time,
        )));
        self.status = Status::Live;
        Ok(())
    }
}

/// Keep in `tail` (which ends at stream offset `end`) only the bytes from
/// offset `released` on, and at most [`CONSOLE_TAIL`].
fn trim_console_tail(tail: &mut VecDeque<u8>, end: u64, released: u64) {
    let start = end - tail.len() as u64;
    let released = usize::try_from(released.saturating_sub(start)).unwrap_or(usize::MAX);
    let mut drop = released.min(tail.len());
    if tail.len() - drop > CONSOLE_TAIL {
        tracing::warn!(
            "keeping only the last {CONSOLE_TAIL} console bytes the primary has not confirmed"
        );
        drop = tail.len() - CONSOLE_TAIL;
    }
    tail.drain(..drop);
}
