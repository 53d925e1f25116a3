//! # ftvm-node — one VM, sans-IO: alone, as a primary, or as a backup
//!
//! A [`Node`] is a whole VM: the machine, and around it one of three roles.
//! - **Solo** (`ftvm run`): the machine runs alone; every input still goes
//!   through the [`Recorder`](ftvm_replay::Recorder), which logs it when the
//!   run is recorded ([`Effect::Record`]).
//! - **Primary**: every input logged and the log sent to the backup,
//!   outputs held by the output rule until the backup acknowledges them,
//!   flow control.
//! - **Backup**: entries taken from the channel, acknowledged on receipt,
//!   replayed; on the primary's failure, drain, test-and-set and go-live.
//!
//! It owns the protocol state machines of `ftvm-ft` and does no I/O itself
//! (ARCHITECTURE.md, "Sans-IO"): the caller hands it messages, host
//! answers and the time, and carries out the [`Effect`]s it returns. The
//! host's run loop (`ftvm-host`) drives it for `ftvm run`, `ftvm primary`
//! and `ftvm backup` alike, with sockets, disks and the host clock; the
//! simulator (`ftvm-sim`) drives the very same code with a simulated
//! network, clock and crashes. There is one run loop: [`Node::run`].
//!
//! The code is split by role: `live` (a machine that runs: solo, primary,
//! or a backup that went live), `replaying` (a backup), `stats` (what the
//! status line shows, and the release of outputs it counts).
//!
//! Decisions worth knowing:
//! - Every output (console bytes, a transmitted frame, a shared-disk write
//!   or flush) logs an [`Event::Output`](ftvm_replay::Event::Output)
//!   marker at the icount where the primary took it, and waits for the
//!   backup to acknowledge that marker. A backup that goes live first
//!   executes to its last entry, so it has re-produced every output the
//!   world may have seen before any input of its own can change the
//!   execution.
//! - A shared-disk write's completion is logged only after the write was
//!   performed, so a backup that goes live re-issues every write whose
//!   completion it never saw (idempotent), and no acknowledged write is
//!   lost. Frames are completed the same way, after they left.
//! - Disk reads and entropy are answered by the primary and their data is
//!   logged; the backup never reads its own disk.

#![forbid(unsafe_code)]

mod balloon;
mod clone;
mod halt;
mod handover;
mod live;
mod replaying;
mod stats;

use ftvm_board::{ImageSource, Input, IoRequest, Machine, MachineConfig};
use ftvm_ft::channel::Message;
use ftvm_ft::detector::{DetectorConfig, FailureDetector};
use ftvm_ft::golive::Verdict;
use ftvm_replay::{End, LogError};

pub use balloon::{BalloonRefused, BalloonSet, pages_to_mib};
pub use clone::{CloneBegun, CloneRefused};
pub use halt::{HaltCode, HaltReason};
pub use stats::{DELAY_BUCKETS_S, Durations, Milestones, Stats};

use live::Running;
use replaying::Replaying;

/// Instructions per run slice: a few milliseconds of guest execution,
/// short enough that console input and output feel immediate.
pub const SLICE: u64 = 1 << 20;

/// A shorter slice, while someone waits for this VM to look at its
/// channel: a primary with outputs held (their acknowledgement is
/// waiting). A backup's is [`REPLAY_SLICE`].
pub const SHORT_SLICE: u64 = SLICE / 8;

/// The most a backup replays before it looks at its channel again: the
/// primary's outputs wait for the acknowledgement of entries that arrive
/// meanwhile, and every look costs a turn of the loop (a system call, the
/// clocks, a re-entry into translated code). A quarter of this replayed
/// some 10% slower than the primary ran: a busy guest's pair fell to the
/// backup's pace once it trailed by `--max-lag-ms`. Round trips through
/// the pair did not change (ARCHITECTURE.md, "The path of an input").
pub const REPLAY_SLICE: u64 = SLICE / 8;

/// How the pair's disk is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskMode {
    /// One image both VMs reach: only the live VM writes, and its writes
    /// are outputs (held by the output rule).
    Shared,
    /// Each VM has its own copy: the primary writes at once, the backup
    /// performs the same writes on its copy while replaying.
    Private,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub pair: String,
    pub epoch: u64,
    pub detector: DetectorConfig,
    /// Entries logged but not acknowledged before the primary stops
    /// executing (its log buffer is full).
    pub max_unacked_entries: u64,
    /// How far the backup may trail the primary's last entry before the
    /// primary is slowed down (the paper: about 1 s): the instructions
    /// between the two, at the primary's measured speed, so about how long
    /// a backup taking over needs to catch up.
    pub max_lag_ns: u64,
    /// Host time between state digests in the log.
    pub checkpoint_interval_ns: u64,
    pub disk: DiskMode,
    /// Steer guest time toward the host's clock (see `TimeSteering`).
    pub steer_time: bool,
    /// The engine a backup replays with.
    pub engine: ftvm_board::Engine,
    /// End the run ([`End::InsnLimit`]) once the machine has executed this
    /// many instructions (`ftvm run --max-insns`).
    pub max_insns: Option<u64>,
}

impl NodeConfig {
    /// The defaults of ARCHITECTURE.md for `pair`: heartbeat 100 ms,
    /// timeout 1 s, up to 1 s of lag, a checkpoint a second.
    pub fn new(pair: &str) -> NodeConfig {
        NodeConfig {
            pair: pair.to_string(),
            epoch: 1,
            detector: DetectorConfig::default(),
            max_unacked_entries: 1 << 20,
            max_lag_ns: 1_000_000_000,
            checkpoint_interval_ns: 1_000_000_000,
            disk: DiskMode::Shared,
            steer_time: true,
            engine: ftvm_board::Engine::default(),
            max_insns: None,
        }
    }
}

/// The host's clocks at the moment of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Time {
    /// Monotonic, for timeouts and delays.
    pub mono_ns: u64,
    /// Wall clock (ns since the Unix epoch), for the guest's RTC.
    pub unix_ns: u64,
}

impl Time {
    fn ms(self) -> u64 {
        self.mono_ns / 1_000_000
    }
}

/// What [`Node::run`] asks of its host while it runs a slice.
pub trait Host {
    /// The host's clocks now.
    fn now(&mut self) -> Time;

    /// Answer `request` at the instruction boundary where the machine
    /// stopped, if this host can (`ftvm run` reads its disk there and
    /// then); `None` makes the node ask with [`Effect::Perform`] and take
    /// the answer later through [`Node::input`] (a daemon's I/O thread).
    fn answer_now(&mut self, request: &IoRequest) -> Option<Input> {
        let _ = request;
        None
    }
}

/// A clock alone is a host that answers nothing at once.
impl<F: FnMut() -> Time> Host for F {
    fn now(&mut self) -> Time {
        self()
    }
}

/// What the caller must carry out.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this to the peer over the logging channel.
    Send(Message),
    /// Append these bytes to the recording (`ftvm run --record`): the
    /// log's header first, then frames of entries.
    Record(Vec<u8>),
    /// Console bytes released to the world, at their offset in the
    /// guest's console stream.
    Console { offset: u64, bytes: Vec<u8> },
    /// Perform this I/O request and hand its answer to [`Node::input`].
    Perform(IoRequest),
    /// Perform this write on the backup's own (private) disk; its
    /// completion comes from the log.
    PerformOwn(IoRequest),
    /// Ask the arbiter for (pair, epoch) and hand the verdict to
    /// [`Node::verdict`], whenever it comes.
    TestAndSet,
    /// Close the logging channel: the clone it led to was given up.
    CloseChannel,
    /// Tell the network that the VM's card, with this MAC address, is now
    /// here: a backup that went live broadcasts it before any output, so
    /// the switches send the VM's traffic to it rather than to the dead
    /// primary's port.
    Announce { mac: [u8; 6] },
}

/// Where a VM stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Running, logging to a backup.
    Primary,
    /// Replaying the primary's log (or waiting for it).
    Backup,
    /// The primary is suspected: replaying what was received, then asking
    /// the arbiter.
    TakingOver,
    /// The primary suspects its backup and asks the arbiter.
    Arbitrating,
    /// Running alone: a VM started alone, a primary whose backup failed,
    /// or a backup that went live.
    Live,
    /// Running, and cloning a new backup: logging to it, but not waiting
    /// for it (its snapshot is on the way, or it is catching up). It
    /// becomes a primary once the backup has caught up.
    Cloning,
    /// Stopped for good without ending the pair: it lost the test-and-set
    /// or failed.
    Halted(HaltReason),
    /// The run or the pair ended cleanly (power-off, `ftvm stop`).
    Ended(End),
}

impl Status {
    /// The word `ftvm status` begins its line with.
    pub fn word(&self) -> &'static str {
        match self {
            Status::Primary | Status::Arbitrating => "primary",
            Status::Backup | Status::TakingOver => "backup",
            Status::Live => "live",
            Status::Cloning => "cloning",
            Status::Halted(_) => "halted",
            Status::Ended(_) => "ended",
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Status::Halted(_) | Status::Ended(_))
    }

    /// Whether this VM's guest takes input from the world: a primary's
    /// (which logs it) or a live VM's. A backup's guest hears the world
    /// only through the log.
    pub fn runs_the_guest(&self) -> bool {
        matches!(
            self,
            Status::Primary | Status::Arbitrating | Status::Live | Status::Cloning
        )
    }
}

/// What a call to [`Node::run`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// It executed; call again.
    Busy,
    /// The primary is slowed down: the backup trails by more than the
    /// bound. Wait for a message (its progress) or a short while.
    Throttled,
    /// Nothing to execute until an event arrives: a message, a host
    /// answer, a verdict, or the next [`Node::deadline_ms`].
    Blocked,
    /// The guest idles (WFI). Wait at most `sleep_ns` (none: only an
    /// input wakes it), then call [`Node::wake`] with the time waited.
    Idle { sleep_ns: Option<u64> },
    /// The VM is done ([`Node::status`] says how).
    Done,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the log: {0}")]
    Log(#[from] LogError),
    #[error("the machine: {0}")]
    Board(#[from] ftvm_board::BoardError),
    #[error("the clone: {0}")]
    Clone(String),
}

enum Mode {
    Running(Box<Running>),
    Replaying(Box<Replaying>),
    Done,
}

pub struct Node {
    config: NodeConfig,
    mode: Mode,
    status: Status,
    detector: FailureDetector,
    effects: Vec<Effect>,
    /// Bytes of the guest's console stream produced so far.
    console_offset: u64,
    /// Instructions of the machines before the last guest reset: the lag
    /// compares instruction counts that keep growing across resets.
    icount_base: u64,
    stats: Stats,
    /// The machine as it stood when the VM ended, for a final digest.
    ended_machine: Option<Box<Machine>>,
    /// The digest the log's last checkpoint holds, when the run was
    /// logged: the state it ended in.
    final_digest: Option<ftvm_board::Digest>,
    /// I/O requests handed to the host ([`Effect::Perform`]) whose answer
    /// has not come: a clone's snapshot waits until there are none.
    in_flight: std::collections::BTreeSet<u64>,
    /// The recorder's entries already counted in `stats.log_entries` (the
    /// recorder starts again at a clone; the count must not).
    entries_counted: u64,
}

impl Node {
    /// A VM running alone (`ftvm run`) on a machine built from
    /// `machine_config`; with `record`, every input is logged and the log
    /// goes out as [`Effect::Record`], its header with the first
    /// [`Node::take_effects`].
    pub fn solo(
        config: NodeConfig,
        machine_config: MachineConfig,
        time: Time,
        record: bool,
    ) -> Result<Node, NodeError> {
        live::start(config, machine_config, time, live::Role::Solo { record })
    }

    /// A primary for a machine built from `machine_config`, connected to its
    /// backup at `time`. The log's header and the wall clock go out with the
    /// first [`Node::take_effects`].
    pub fn primary(
        config: NodeConfig,
        machine_config: MachineConfig,
        time: Time,
    ) -> Result<Node, NodeError> {
        live::start(config, machine_config, time, live::Role::Primary)
    }

    /// A backup whose primary just connected at `time`; its machine is built
    /// from the log's header when that arrives, with the files it names
    /// read from `images`.
    pub fn backup(config: NodeConfig, images: Box<dyn ImageSource + Send>, time: Time) -> Node {
        replaying::start(config, images, time)
    }

    fn new(config: NodeConfig, mode: Mode, status: Status, time: Time) -> Node {
        Node {
            detector: FailureDetector::new(config.detector, time.ms()),
            config,
            mode,
            status,
            effects: Vec::new(),
            console_offset: 0,
            icount_base: 0,
            stats: Stats::default(),
            ended_machine: None,
            final_digest: None,
            in_flight: std::collections::BTreeSet::new(),
            entries_counted: 0,
        }
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The machine this VM runs, or replays (a backup knows it once the
    /// primary's log header has arrived).
    pub fn machine_config(&self) -> Option<&MachineConfig> {
        match &self.mode {
            Mode::Running(r) => Some(&r.config),
            Mode::Replaying(r) => r.machine_config(),
            Mode::Done => None,
        }
    }

    /// The machine, once there is one; after a clean end, as it ended.
    pub fn machine(&self) -> Option<&Machine> {
        match &self.mode {
            Mode::Running(r) => Some(&r.machine),
            Mode::Replaying(r) => r.machine(),
            Mode::Done => self.ended_machine.as_deref(),
        }
    }

    /// The state digest the log's last checkpoint holds, once a logged run
    /// ended: the digest of [`Node::machine`], without computing it again.
    pub fn final_digest(&self) -> Option<ftvm_board::Digest> {
        self.final_digest
    }

    /// Give up for a reason of the host's (this host cannot run the VM
    /// the primary runs): the VM halts, without ending the pair.
    pub fn give_up(&mut self, why: HaltReason) {
        if !self.status.is_done() {
            self.halt(why);
        }
    }

    fn halt(&mut self, why: HaltReason) {
        tracing::warn!(pair = %self.config.pair, reason = %why.code(), "halted: {why}");
        self.status = Status::Halted(why);
        self.mode = Mode::Done;
    }

    /// Effects to carry out, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        for effect in &self.effects {
            if let Effect::Perform(request) = effect {
                self.in_flight.insert(request.id());
            }
        }
        std::mem::take(&mut self.effects)
    }

    /// I/O requests handed to the host whose answer has not come.
    pub fn io_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// When [`Node::tick`] next has something to do (ms, monotonic).
    pub fn deadline_ms(&self) -> u64 {
        match &self.mode {
            Mode::Done => u64::MAX,
            Mode::Running(r) => r.deadline_ms(&self.detector),
            Mode::Replaying(r) => r.deadline_ms(&self.detector),
        }
    }

    /// A message from the peer.
    pub fn receive(&mut self, message: &Message, time: Time) {
        self.detector.heard(time.ms());
        match &self.mode {
            Mode::Running(_) => self.primary_receive(message, time),
            Mode::Replaying(_) => self.backup_receive(message, time),
            Mode::Done => {}
        }
    }

    /// The logging channel is closed: the peer is suspected at the next
    /// [`Node::tick`], which leads to the arbiter as a timeout would.
    /// `by_peer`: the peer closed it (its process died, or it gave the
    /// channel up), so it will act on nothing this VM sent any more;
    /// otherwise this VM closed it (a frame failed its check, or the peer
    /// stopped reading).
    pub fn channel_closed(&mut self, by_peer: bool) {
        self.detector.closed();
        if let Mode::Replaying(r) = &mut self.mode {
            r.peer_closed |= by_peer;
        }
    }

    /// Heartbeats, failure detection and arbiter retries.
    pub fn tick(&mut self, time: Time) {
        match &self.mode {
            Mode::Running(_) => self.primary_tick(time),
            Mode::Replaying(_) => self.backup_tick(time),
            Mode::Done => {}
        }
    }

    /// The arbiter's answer to [`Effect::TestAndSet`].
    pub fn verdict(&mut self, verdict: Verdict, time: Time) -> Result<(), NodeError> {
        self.stats.milestones.verdict = Some(verdict);
        match &self.mode {
            Mode::Running(_) => self.primary_verdict(verdict, time),
            Mode::Replaying(_) => self.backup_verdict(verdict, time)?,
            Mode::Done => {}
        }
        Ok(())
    }

    /// End cleanly (`ftvm stop`, Ctrl-A x): a VM that runs the guest logs
    /// the end (a primary finishes once the backup holds it); a backup
    /// just stops.
    pub fn stop(&mut self, time: Time) -> Result<(), NodeError> {
        match &mut self.mode {
            Mode::Running(_) => self.end(End::Quit, time)?,
            Mode::Replaying(_) => self.halt(HaltReason::Stopped),
            Mode::Done => {}
        }
        Ok(())
    }

    /// The host's answer to an [`Effect::Perform`], or any other input
    /// from the host (console bytes, a frame), at `time`: logged, then
    /// applied. An idle guest first sleeps until `time`. A backup ignores
    /// it: its guest hears the world only through the log.
    pub fn input(&mut self, input: Input, time: Time) -> Result<(), NodeError> {
        if let Input::IoDone { id, .. } = &input {
            self.in_flight.remove(id);
        }
        self.wake(time)?;
        self.inject(input)?;
        // A completion may be what a hand-over waits for.
        self.finish_hand_over(time);
        Ok(())
    }

    /// Execute: a slice of the live machine, or the backup's next entries.
    /// `host` reads the clocks (before the slice, and again after it for
    /// what depends on how long it took: guest-time steering, delays) and
    /// may answer I/O at the boundary where the slice stopped.
    pub fn run(&mut self, host: &mut dyn Host) -> Result<Ran, NodeError> {
        let ran = match &mut self.mode {
            Mode::Running(_) => self.run_live(host)?,
            Mode::Replaying(_) => self.run_replay()?,
            Mode::Done => Ran::Done,
        };
        if self.status.is_done() {
            return Ok(Ran::Done);
        }
        Ok(ran)
    }
}
