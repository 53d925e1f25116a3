//! # ftvm-node — one VM of an FT pair, sans-IO
//!
//! A [`Node`] is a whole VM of a pair: the machine, and around it either
//! the primary's side of the protocol (every input logged, the log sent,
//! outputs held by the output rule until the backup acknowledges them,
//! flow control) or the backup's (entries taken from the channel,
//! acknowledged on receipt, replayed; on the primary's failure, drain,
//! test-and-set and go-live). It owns the protocol state machines of
//! `ftvm-ft` and does no I/O itself (DESIGN.md §6): the caller hands it
//! messages, host answers and the time, and carries out the [`Effect`]s it
//! returns. The daemon (`ftvm primary` / `ftvm backup`) drives it with
//! sockets, a disk and the host clock; the simulator (`ftvm-sim`) drives
//! the very same code with a simulated network, clock and crashes.
//!
//! Decisions worth knowing:
//! - Every output (console bytes, a transmitted frame, a shared-disk write
//!   or flush) logs an [`Event::Output`] marker at the icount where the
//!   primary took it, and waits for the backup to acknowledge that marker.
//!   A backup that goes live first executes to its last entry, so it has
//!   re-produced every output the world may have seen before any input of
//!   its own can change the execution.
//! - A shared-disk write's completion is logged only after the write was
//!   performed, so a backup that goes live re-issues every write whose
//!   completion it never saw (idempotent), and no acknowledged write is
//!   lost. Frames are completed the same way, after they left.
//! - Disk reads and entropy are answered by the primary and their data is
//!   logged; the backup never reads its own disk.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};

use ftvm_board::{
    DeviceKind, ImageSource, Input, IoRequest, MTIME_TICK_NS, Machine, MachineConfig, Stop,
};
use ftvm_ft::backup::Backup;
use ftvm_ft::channel::Message;
use ftvm_ft::detector::{DetectorConfig, FailureDetector};
use ftvm_ft::golive::{Action, BackupState, GoLive, Verdict};
use ftvm_ft::primary::{FlowLimits, Pace, Primary};

use ftvm_replay::{
    Applied, ClockReading, End, Entry, Event, LogError, LogHeader, LogWriter, MachineId, Output,
    ReplayError, ReplayMachine, TimeSteering,
};

/// Instructions per run slice: a few milliseconds of guest execution.
pub const SLICE: u64 = 1 << 20;

/// A shorter slice, while someone waits for this VM to look at its
/// channel: a primary with outputs held (their acknowledgement is waiting),
/// and a backup between two entries (the primary waits for acks).
pub const SHORT_SLICE: u64 = SLICE / 8;

/// Instructions a primary runs on after the first console byte of a slice
/// before it stops to send the log and hold the output: enough for a line.
const OUTPUT_GRACE: u64 = 20_000;

/// The most console bytes a backup keeps to write again when it goes live.
/// It keeps those after the offset the primary last said it released
/// ([`Message::Released`]), which trails the replay by about one round trip;
/// the bound only guards memory against a primary that never says.
const CONSOLE_TAIL: usize = 64 << 20;

/// Largest piece of log sent in one message.
const ENTRIES_CHUNK: usize = 8 << 20;

/// Pause before asking an unreachable arbiter again.
const ARBITER_RETRY_NS: u64 = 200_000_000;

/// How many recent output-rule delays the statistics keep.
const DELAYS_KEPT: usize = 4096;

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
}

impl NodeConfig {
    /// The defaults of DESIGN.md §4 for `pair`: heartbeat 100 ms, timeout
    /// 1 s, up to 1 s of lag, a checkpoint a second.
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
        }
    }
}

/// What the primary assumes of its speed before it has measured it:
/// 100 instructions per microsecond (the board's nominal guest-time rate).
const NOMINAL_INSNS_PER_MS: f64 = 100_000.0;

/// Instructions the primary executes in `ns` of its own execution.
fn insns_for_ns(ns: u64, insns_per_ms: f64) -> u64 {
    (ns as f64 / 1e6 * insns_per_ms) as u64
}

/// Host time `insns` instructions take the primary.
fn ns_for_insns(insns: u64, insns_per_ms: f64) -> u64 {
    (insns as f64 / insns_per_ms.max(1.0) * 1e6) as u64
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

/// What the caller must carry out.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this to the peer over the logging channel.
    Send(Message),
    /// Console bytes released to the world, at their offset in the
    /// guest's console stream.
    Console { offset: u64, bytes: Vec<u8> },
    /// Perform this I/O request and hand its answer to [`Node::input`].
    Perform(IoRequest),
    /// Perform this write on the backup's own (private) disk; its
    /// completion comes from the log.
    PerformOwn(IoRequest),
    /// Ask the arbiter for (pair, epoch) and hand the verdict to
    /// [`Node::verdict`].
    TestAndSet,
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
    /// Running alone: a primary whose backup failed, or a backup that went
    /// live.
    Live,
    /// Stopped for good without ending the pair: it lost the test-and-set
    /// or failed.
    Halted(HaltReason),
    /// The pair ended cleanly (power-off, `ftvm stop`).
    Ended(End),
}

impl Status {
    /// The word `ftvm status` begins its line with.
    pub fn word(&self) -> &'static str {
        match self {
            Status::Primary | Status::Arbitrating => "primary",
            Status::Backup | Status::TakingOver => "backup",
            Status::Live => "live",
            Status::Halted(_) => "halted",
            Status::Ended(_) => "ended",
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Status::Halted(_) | Status::Ended(_))
    }
}

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
}

impl HaltReason {
    /// The reason as one word, for status lines and scripts.
    pub fn code(&self) -> HaltCode {
        match self {
            HaltReason::LostTestAndSet => HaltCode::LostTestAndSet,
            HaltReason::Stopped => HaltCode::Stopped,
            HaltReason::NothingToTakeOver => HaltCode::NothingToTakeOver,
            HaltReason::Diverged { .. } => HaltCode::Diverged,
            HaltReason::ReplayFailed(_) => HaltCode::ReplayFailed,
            HaltReason::CannotReplay(_) => HaltCode::CannotReplay,
            HaltReason::NoNetwork => HaltCode::NoNetwork,
        }
    }
}

/// [`HaltReason`] without its details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HaltCode {
    LostTestAndSet,
    Stopped,
    NothingToTakeOver,
    Diverged,
    ReplayFailed,
    CannotReplay,
    NoNetwork,
}

impl HaltCode {
    pub const ALL: [HaltCode; 7] = [
        HaltCode::LostTestAndSet,
        HaltCode::Stopped,
        HaltCode::NothingToTakeOver,
        HaltCode::Diverged,
        HaltCode::ReplayFailed,
        HaltCode::CannotReplay,
        HaltCode::NoNetwork,
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
        }
    }

    /// Whether a VM may halt so in a healthy system: it lost a fair race,
    /// was stopped, or its primary died before there was anything to take
    /// over. Every other reason is a fault of the pair.
    pub fn is_expected(self) -> bool {
        matches!(
            self,
            HaltCode::LostTestAndSet | HaltCode::Stopped | HaltCode::NothingToTakeOver
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

/// What a call to [`Node::run`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// It executed; call again.
    Busy,
    /// The primary is slowed down: the backup trails by more than the
    /// bound. Wait for a message (its progress) or a short while.
    Throttled,
    /// Nothing to execute until an event arrives: a message, a host
    /// answer, a verdict, or the next [`Node::deadline`].
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
}

/// An output waiting for the backup's acknowledgement.
#[derive(Debug)]
enum Held {
    Console { offset: u64, bytes: Vec<u8> },
    Io(IoRequest),
}

/// The primary's logging, while it has a backup.
struct Logging {
    log: LogWriter<Vec<u8>>,
    protocol: Primary<(u64, Held)>,
    last_entry_icount: u64,
    /// Entries of the End, once the pair is ending.
    ending: Option<End>,
    arbitrating: bool,
    /// Slowed down: the backup trails by more than the bound.
    throttled: bool,
    retry_at: Option<u64>,
    last_checkpoint_ns: u64,
    checkpointed_icount: u64,
}

struct Running {
    machine: Machine,
    config: MachineConfig,
    logging: Option<Logging>,
    steering: Option<TimeSteering>,
    steering_origin_ns: u64,
    /// The primary's measured speed (a moving average over its busy
    /// slices): the lag bound is time the backup needs to catch up, and
    /// catching up costs instructions, not guest time (an idle sleep
    /// replays at once).
    insns_per_ms: f64,
    /// The current idle wait: its deadline in `mtime` ticks (none: only
    /// an input wakes the guest) and when it began (host ns).
    idle: Option<(Option<u64>, u64)>,
    /// A live VM's pending end (power-off) once nothing is held.
    ended: Option<End>,
}

struct Replaying {
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
    peer_closed: bool,
    /// Host time before which this backup must not go live (see
    /// [`Node::tick`]).
    live_not_before_ns: u64,
}

enum Mode {
    Running(Box<Running>),
    Replaying(Box<Replaying>),
    Done,
}

/// Numbers for `ftvm status` and the benchmarks.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Log bytes sent (primary) or received (backup).
    pub log_bytes: u64,
    /// Entries not yet acknowledged (primary) or not yet executed
    /// (backup).
    pub lag_entries: u64,
    /// How long the primary would take to execute what the backup has
    /// still to execute up to the primary's last entry (at its measured
    /// speed).
    pub lag_ns: u64,
    /// The machine's instruction count.
    pub icount: u64,
    /// Recent output-rule delays (ns from an output's production to its
    /// release).
    pub output_delays_ns: VecDeque<u64>,
    /// Outputs released in all.
    pub outputs: u64,
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
}

impl Node {
    /// A primary for a machine built from `machine_config`, connected to its
    /// backup at `time`. The log's header and the wall clock go out with the
    /// first [`Node::take_effects`].
    pub fn primary(
        config: NodeConfig,
        machine_config: MachineConfig,
        time: Time,
    ) -> Result<Node, NodeError> {
        let mut machine = Machine::new(&machine_config)?;
        machine.stop_after_output(Some(OUTPUT_GRACE));
        let header = LogHeader {
            machine: MachineId::of(&machine_config),
            engine: machine_config.engine,
            initial_digest: machine.digest().0,
        };
        let log = LogWriter::new(Vec::new(), &header)?;
        let logging = Logging {
            log,
            protocol: Primary::new(FlowLimits {
                max_unacked_entries: config.max_unacked_entries,
                max_lag_insns: insns_for_ns(config.max_lag_ns, NOMINAL_INSNS_PER_MS),
            }),
            last_entry_icount: 0,
            ending: None,
            arbitrating: false,
            throttled: false,
            retry_at: None,
            last_checkpoint_ns: time.mono_ns,
            checkpointed_icount: 0,
        };
        let mut node = Node {
            detector: FailureDetector::new(config.detector, time.ms()),
            mode: Mode::Running(Box::new(Running {
                machine,
                config: machine_config,
                logging: Some(logging),
                steering: config.steer_time.then(TimeSteering::default),
                steering_origin_ns: time.mono_ns,
                insns_per_ms: NOMINAL_INSNS_PER_MS,
                idle: None,
                ended: None,
            })),
            config,
            status: Status::Primary,
            effects: Vec::new(),
            console_offset: 0,
            icount_base: 0,
            stats: Stats::default(),
        };
        node.inject(Input::WallClock {
            unix_ns: time.unix_ns,
        })?;
        node.send_log(time)?;
        Ok(node)
    }

    /// A backup whose primary just connected at `time`; its machine is built
    /// from the log's header when that arrives.
    pub fn backup(config: NodeConfig, images: Box<dyn ImageSource + Send>, time: Time) -> Node {
        Node {
            detector: FailureDetector::new(config.detector, time.ms()),
            mode: Mode::Replaying(Box::new(Replaying {
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
            })),
            config,
            status: Status::Backup,
            effects: Vec::new(),
            console_offset: 0,
            icount_base: 0,
            stats: Stats::default(),
        }
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The machine this VM runs, or replays (a backup knows it once the
    /// primary's log header has arrived).
    pub fn machine_config(&self) -> Option<&MachineConfig> {
        match &self.mode {
            Mode::Running(r) => Some(&r.config),
            Mode::Replaying(r) => r.replay.as_ref().map(|(_, config)| config),
            Mode::Done => None,
        }
    }

    /// Give up for a reason of the host's (this host cannot run the VM
    /// the primary runs): the VM halts, without ending the pair.
    pub fn give_up(&mut self, why: HaltReason) {
        if !self.status.is_done() {
            self.halt(why);
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The machine, once there is one.
    pub fn machine(&self) -> Option<&Machine> {
        match &self.mode {
            Mode::Running(r) => Some(&r.machine),
            Mode::Replaying(r) => r.replay.as_ref().map(|(m, _)| m.machine()),
            Mode::Done => None,
        }
    }

    /// Effects to carry out, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// When [`Node::tick`] next has something to do (ms, monotonic).
    pub fn deadline_ms(&self) -> u64 {
        let retry_ms = |at: Option<u64>| at.map_or(u64::MAX, |ns| ns / 1_000_000);
        match &self.mode {
            // Alone, or done: `tick` has nothing to do.
            Mode::Done => u64::MAX,
            Mode::Running(r) => match &r.logging {
                None => u64::MAX,
                // Once the backup is suspected only the arbiter matters
                // (the detector's deadline stays in the past).
                Some(l) if l.arbitrating => {
                    retry_ms(l.retry_at).min(self.detector.next_heartbeat())
                }
                Some(l) => retry_ms(l.retry_at).min(self.detector.next_deadline()),
            },
            Mode::Replaying(r) if r.golive.state() != BackupState::Replaying => {
                retry_ms(r.retry_at)
            }
            Mode::Replaying(r) => retry_ms(r.retry_at).min(self.detector.next_deadline()),
        }
    }

    fn halt(&mut self, why: HaltReason) {
        tracing::warn!(pair = %self.config.pair, reason = %why.code(), "halted: {why}");
        self.status = Status::Halted(why);
        self.mode = Mode::Done;
    }

    /// A message from the peer.
    pub fn receive(&mut self, message: &Message, time: Time) {
        self.detector.heard(time.ms());
        match &mut self.mode {
            Mode::Running(r) => {
                let Some(logging) = &mut r.logging else {
                    return;
                };
                match message {
                    // Once it suspects its backup, the primary must not
                    // release anything until it wins the test-and-set: the
                    // backup may be live already, and an acknowledgement
                    // that was held up in the network would let an old
                    // output (a disk write) land after the live VM's.
                    Message::Ack { .. } if logging.arbitrating => {}
                    Message::Ack { through, icount } => {
                        match logging.protocol.ack(*through, *icount) {
                            Ok(released) => {
                                let mut console = None;
                                for (produced, held) in released {
                                    if let Held::Console { offset, bytes } = &held {
                                        console = Some(offset + bytes.len() as u64);
                                    }
                                    release(
                                        &mut self.effects,
                                        &mut self.stats,
                                        held,
                                        time.mono_ns.saturating_sub(produced),
                                    );
                                }
                                if let Some(console) = console {
                                    self.effects
                                        .push(Effect::Send(Message::Released { console }));
                                    self.detector.sent(time.ms());
                                }
                            }
                            Err(e) => tracing::warn!("ignoring an impossible ack: {e}"),
                        }
                        let (entries, insns) = logging.protocol.lag();
                        self.stats.lag_entries = entries;
                        self.stats.lag_ns = ns_for_insns(insns, r.insns_per_ms);
                        self.finish_ending();
                    }
                    Message::Heartbeat => {}
                    other => tracing::warn!("ignoring an unexpected {other:?} from the backup"),
                }
            }
            Mode::Replaying(r) if matches!(message, Message::Released { .. }) => {
                if let Message::Released { console } = message {
                    r.released_console = r.released_console.max(*console);
                    trim_console_tail(&mut r.console_tail, self.console_offset, r.released_console);
                }
            }
            Mode::Replaying(r) => match r.backup.receive(message) {
                Ok(ack) => {
                    if let Message::Entries { log } = message {
                        self.stats.log_bytes += log.len() as u64;
                    }
                    if let Some(ack) = ack {
                        self.effects.push(Effect::Send(ack));
                        self.detector.sent(time.ms());
                    }
                    if let Err(e) = self.build_replay() {
                        self.halt(HaltReason::CannotReplay(e));
                    }
                }
                // A log that does not check is a channel failure: nothing
                // more is acknowledged, and the detector decides.
                Err(e) => {
                    tracing::error!("refusing the primary's log: {e}");
                    r.backup.freeze();
                }
            },
            Mode::Done => {}
        }
    }

    fn build_replay(&mut self) -> Result<(), String> {
        let Mode::Replaying(r) = &mut self.mode else {
            return Ok(());
        };
        if r.replay.is_some() {
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
        let now = time.ms();
        let suspects = self.detector.suspects(now);
        let heartbeat = self.detector.heartbeat_due(now);
        match &mut self.mode {
            Mode::Running(r) => {
                let Some(logging) = &mut r.logging else {
                    return;
                };
                if heartbeat {
                    self.effects.push(Effect::Send(Message::Heartbeat));
                    self.detector.sent(now);
                }
                let retry = logging.retry_at.is_some_and(|at| time.mono_ns >= at);
                if (suspects && !logging.arbitrating) || retry {
                    if !logging.arbitrating {
                        tracing::warn!(pair = %self.config.pair, "the backup is silent: asking the arbiter");
                    }
                    logging.arbitrating = true;
                    logging.retry_at = None;
                    self.status = Status::Arbitrating;
                    self.effects.push(Effect::TestAndSet);
                }
            }
            Mode::Replaying(r) => {
                if heartbeat && r.golive.state() == BackupState::Replaying {
                    // The backup's heartbeat is an ack: it also tells the
                    // primary how far the replay has come.
                    let icount = self.icount_base
                        + r.replay.as_ref().map_or(0, |(m, _)| m.machine().icount());
                    r.backup.executed(icount);
                    self.effects.push(Effect::Send(Message::Ack {
                        through: r.backup.acked(),
                        icount,
                    }));
                    self.detector.sent(now);
                }
                if suspects && r.golive.state() == BackupState::Replaying {
                    tracing::warn!(pair = %self.config.pair, "the primary is silent: draining the log");
                    r.backup.freeze();
                    r.golive.primary_suspected();
                    self.status = Status::TakingOver;
                    // A primary that may still be running acts on the
                    // acknowledgements this VM sent (it releases outputs)
                    // until it suspects this VM in turn, a timeout after
                    // the last of them arrives. Going live before then
                    // could put the live VM's outputs (a disk write) before
                    // an old one. Sending nothing more, and waiting that
                    // timeout, rules it out; a primary that closed the
                    // channel itself acts on nothing any more.
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
            Mode::Done => {}
        }
    }

    /// The arbiter's answer to [`Effect::TestAndSet`].
    pub fn verdict(&mut self, verdict: Verdict, time: Time) -> Result<(), NodeError> {
        match &mut self.mode {
            Mode::Running(r) => {
                let Some(logging) = &mut r.logging else {
                    return Ok(());
                };
                match verdict {
                    Verdict::Won => {
                        tracing::warn!(pair = %self.config.pair, "won the test-and-set: running alone");
                        for (produced, held) in logging.protocol.go_solo() {
                            release(
                                &mut self.effects,
                                &mut self.stats,
                                held,
                                time.mono_ns.saturating_sub(produced),
                            );
                        }
                        r.ended = logging.ending;
                        r.logging = None;
                        self.status = Status::Live;
                        self.finish_ending();
                    }
                    Verdict::Lost => self.halt(HaltReason::LostTestAndSet),
                    Verdict::Unreachable => {
                        logging.retry_at = Some(time.mono_ns + ARBITER_RETRY_NS);
                    }
                }
            }
            Mode::Replaying(r) => match r.golive.verdict(verdict) {
                Action::GoLive => self.go_live(time)?,
                Action::Halt => self.halt(HaltReason::LostTestAndSet),
                Action::RetryTestAndSet => r.retry_at = Some(time.mono_ns + ARBITER_RETRY_NS),
                Action::None | Action::TestAndSet => {}
            },
            Mode::Done => {}
        }
        Ok(())
    }

    /// End the pair cleanly (`ftvm stop`): the primary logs the end and
    /// finishes once the backup holds it; a backup just stops.
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
    /// applied. An idle guest first sleeps until `time`.
    pub fn input(&mut self, input: Input, time: Time) -> Result<(), NodeError> {
        self.wake(time)?;
        self.inject(input)
    }

    fn inject(&mut self, input: Input) -> Result<(), NodeError> {
        if let Mode::Running(r) = &mut self.mode {
            if let Some(logging) = &mut r.logging {
                if logging.ending.is_some() {
                    return Ok(());
                }
                logging
                    .log
                    .push(r.machine.icount(), &Event::Input(input.clone()))?;
                logging.last_entry_icount = r.machine.icount();
            }
            r.machine.inject(input);
        }
        Ok(())
    }

    /// End the guest's idle wait at `time`: the guest time that passed
    /// (at most to its timer's deadline) is applied. Call it when the wait
    /// of [`Ran::Idle`] is over; an input does it itself.
    pub fn wake(&mut self, time: Time) -> Result<(), NodeError> {
        let Mode::Running(r) = &mut self.mode else {
            return Ok(());
        };
        let Some((deadline, since)) = r.idle.take() else {
            return Ok(());
        };
        let elapsed = time.mono_ns.saturating_sub(since) / MTIME_TICK_NS;
        let ticks = deadline.map_or(elapsed, |d| elapsed.min(d));
        if let Some(steering) = &mut r.steering {
            steering.note_idle();
        }
        self.inject(Input::IdleSleep { ticks })
    }

    /// Execute: a slice of the live machine, or the backup's next entries.
    /// `now` reads the host's clocks: before the slice, and again after it
    /// for what depends on how long it took (guest-time steering, delays).
    pub fn run(&mut self, now: &mut dyn FnMut() -> Time) -> Result<Ran, NodeError> {
        let ran = match &mut self.mode {
            Mode::Running(_) => self.run_live(now)?,
            Mode::Replaying(_) => self.run_replay()?,
            Mode::Done => Ran::Done,
        };
        if self.status.is_done() {
            return Ok(Ran::Done);
        }
        Ok(ran)
    }

    fn run_live(&mut self, now: &mut dyn FnMut() -> Time) -> Result<Ran, NodeError> {
        let time = now();
        let Mode::Running(r) = &mut self.mode else {
            return Ok(Ran::Done);
        };
        if r.ended.is_some() || r.logging.as_ref().is_some_and(|l| l.ending.is_some()) {
            return Ok(Ran::Blocked);
        }
        if let Some((deadline, since)) = r.idle {
            let waited = time.mono_ns.saturating_sub(since);
            return Ok(Ran::Idle {
                sleep_ns: deadline.map(|t| t.saturating_mul(MTIME_TICK_NS).saturating_sub(waited)),
            });
        }
        if let Some(logging) = &mut r.logging {
            let max_lag = insns_for_ns(self.config.max_lag_ns, r.insns_per_ms);
            logging.protocol.set_max_lag_insns(max_lag);
            match logging.protocol.pace() {
                Pace::Stall => return Ok(Ran::Blocked),
                Pace::SlowDown => logging.throttled = true,
                Pace::Run => {}
            }
            // Once slowed, the primary waits until the backup has made up
            // half the bound, so that it runs at the backup's pace rather
            // than at its own with short pauses.
            if logging.throttled {
                let (_, lag) = logging.protocol.lag();
                if lag > max_lag / 2 {
                    return Ok(Ran::Throttled);
                }
                logging.throttled = false;
            }
        }
        let held = r.logging.as_ref().is_some_and(|l| l.protocol.held() > 0);
        let slice = if held { SHORT_SLICE } else { SLICE };
        // With output already waiting for the backup, more output is no more
        // urgent: it goes with the short slice's log, in one round trip.
        if r.logging.is_some() {
            r.machine.stop_after_output((!held).then_some(OUTPUT_GRACE));
        }
        let started = (time.mono_ns, r.machine.icount());
        let stop = r.machine.run(r.machine.icount().saturating_add(slice));
        let time = now();
        let (took_ns, executed) = (
            time.mono_ns.saturating_sub(started.0),
            r.machine.icount() - started.1,
        );
        if took_ns >= 200_000 && executed >= 10_000 {
            let speed = executed as f64 / (took_ns as f64 / 1e6);
            r.insns_per_ms += (speed - r.insns_per_ms) / 8.0;
        }
        self.take_outputs(time)?;
        // Out at once, before the work below: the backup's acknowledgement
        // is what the outputs wait for.
        self.send_log(time)?;
        let Mode::Running(r) = &mut self.mode else {
            return Ok(Ran::Done);
        };
        let mut woken = false;
        if let Some(steering) = &mut r.steering {
            let clock = ClockReading {
                icount: r.machine.icount(),
                mtime: r.machine.hart().mtime(),
                insns_per_tick: r.machine.hart().clock().insns_per_tick,
                guest_writes: r.machine.mtime_writes(),
            };
            let corrections =
                steering.poll(time.mono_ns.saturating_sub(r.steering_origin_ns), clock);
            for correction in corrections {
                woken = true;
                self.inject(correction)?;
            }
        }
        let Mode::Running(r) = &mut self.mode else {
            return Ok(Ran::Done);
        };
        if let Some(logging) = &mut r.logging {
            if time.mono_ns.saturating_sub(logging.last_checkpoint_ns)
                >= self.config.checkpoint_interval_ns
                && r.machine.icount() != logging.checkpointed_icount
            {
                logging
                    .log
                    .push(r.machine.icount(), &Event::Checkpoint(r.machine.digest()))?;
                logging.last_entry_icount = r.machine.icount();
                logging.checkpointed_icount = r.machine.icount();
                logging.last_checkpoint_ns = time.mono_ns;
            }
        }
        let ran = match stop {
            Stop::Limit | Stop::Io => Ran::Busy,
            Stop::Idle { .. } if woken => Ran::Busy,
            Stop::Idle { wake_at } => {
                let now = r.machine.hart().mtime();
                // A deadline already passed cannot wake the guest (its timer
                // interrupt is masked); only an input can.
                let deadline = wake_at.filter(|&t| t > now).map(|t| t - now);
                r.idle = Some((deadline, time.mono_ns));
                Ran::Idle {
                    sleep_ns: deadline.map(|t| t.saturating_mul(MTIME_TICK_NS)),
                }
            }
            Stop::PowerOff { code } => {
                self.end(End::PowerOff { code }, time)?;
                Ran::Blocked
            }
            Stop::HtifExit { code } => {
                self.end(End::HtifExit { code }, time)?;
                Ran::Blocked
            }
            Stop::Reset => {
                tracing::info!(icount = r.machine.icount(), "guest requested a reset");
                self.icount_base += r.machine.icount();
                if let Some(logging) = &mut r.logging {
                    logging.log.push(r.machine.icount(), &Event::Reset)?;
                    logging.last_entry_icount = 0;
                    logging.checkpointed_icount = 0;
                }
                r.machine = Machine::new(&r.config)?;
                if r.logging.is_some() {
                    r.machine.stop_after_output(Some(OUTPUT_GRACE));
                }
                r.steering = r.steering.as_ref().map(|_| TimeSteering::default());
                r.steering_origin_ns = time.mono_ns;
                self.inject(Input::WallClock {
                    unix_ns: time.unix_ns,
                })?;
                Ran::Busy
            }
        };
        self.send_log(time)?;
        Ok(ran)
    }

    /// Console output and I/O requests of the last slice: held, performed
    /// or released.
    fn take_outputs(&mut self, time: Time) -> Result<(), NodeError> {
        let Mode::Running(r) = &mut self.mode else {
            return Ok(());
        };
        self.stats.icount = r.machine.icount();
        let console = r.machine.take_console_output();
        let requests = r.machine.take_io_requests();
        let shared = self.config.disk == DiskMode::Shared;
        let mut outputs = Vec::new();
        if !console.is_empty() {
            let offset = self.console_offset;
            self.console_offset += console.len() as u64;
            outputs.push(Held::Console {
                offset,
                bytes: console,
            });
        }
        for request in requests {
            let is_output = match &request {
                IoRequest::BlockWrite { .. } | IoRequest::BlockFlush { .. } => shared,
                IoRequest::NetTransmit { .. } => true,
                _ => false,
            };
            if is_output {
                outputs.push(Held::Io(request));
            } else {
                self.effects.push(Effect::Perform(request));
            }
        }
        if outputs.is_empty() {
            return Ok(());
        }
        match &mut r.logging {
            Some(logging) => {
                let icount = r.machine.icount();
                if logging.last_entry_icount != icount || logging.log.entries() == 0 {
                    logging.log.push(icount, &Event::Output)?;
                    logging.last_entry_icount = icount;
                }
                let entries = logging.log.entries();
                for output in outputs {
                    if let Some((_, held)) =
                        logging.protocol.output(entries, (time.mono_ns, output))
                    {
                        release(&mut self.effects, &mut self.stats, held, 0);
                    }
                }
            }
            None => {
                for output in outputs {
                    release(&mut self.effects, &mut self.stats, output, 0);
                }
            }
        }
        Ok(())
    }

    /// Flush the log and send what is new.
    fn send_log(&mut self, time: Time) -> Result<(), NodeError> {
        let Mode::Running(r) = &mut self.mode else {
            return Ok(());
        };
        let Some(logging) = &mut r.logging else {
            return Ok(());
        };
        logging.log.flush()?;
        let bytes = std::mem::take(logging.log.get_mut());
        if bytes.is_empty() {
            return Ok(());
        }
        logging.protocol.logged(
            logging.log.entries(),
            self.icount_base + logging.last_entry_icount,
        );
        self.stats.log_bytes += bytes.len() as u64;
        for chunk in bytes.chunks(ENTRIES_CHUNK) {
            self.effects.push(Effect::Send(Message::Entries {
                log: chunk.to_vec(),
            }));
        }
        self.detector.sent(time.ms());
        let (entries, insns) = logging.protocol.lag();
        self.stats.lag_entries = entries;
        self.stats.lag_ns = ns_for_insns(insns, r.insns_per_ms);
        self.stats.icount = r.machine.icount();
        Ok(())
    }

    /// The guest powered off, or the user stopped the pair.
    fn end(&mut self, end: End, time: Time) -> Result<(), NodeError> {
        let Mode::Running(r) = &mut self.mode else {
            return Ok(());
        };
        match &mut r.logging {
            Some(logging) => {
                let icount = r.machine.icount();
                logging
                    .log
                    .push(icount, &Event::Checkpoint(r.machine.digest()))?;
                logging.log.push(icount, &Event::End(end))?;
                logging.last_entry_icount = icount;
                logging.ending = Some(end);
                self.send_log(time)?;
            }
            None => r.ended = Some(end),
        }
        self.finish_ending();
        Ok(())
    }

    /// An ending pair is done once nothing is held any more.
    fn finish_ending(&mut self) {
        let Mode::Running(r) = &self.mode else {
            return;
        };
        let end = match &r.logging {
            Some(l) if l.protocol.held() == 0 && l.protocol.lag().0 == 0 => l.ending,
            Some(_) => None,
            None => r.ended,
        };
        if let Some(end) = end {
            tracing::info!(pair = %self.config.pair, ?end, "the pair ended");
            self.status = Status::Ended(end);
            self.mode = Mode::Done;
        }
    }

    fn run_replay(&mut self) -> Result<Ran, NodeError> {
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
                // [`Node::tick`] asks, once the primary can no longer act
                // on an acknowledgement.
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
        let start = replay.machine().icount();
        let icount_before = start;
        let applied = if entry.icount > start.saturating_add(SHORT_SLICE) {
            replay
                .advance(&entry, start + SHORT_SLICE, &mut out)
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
        for device in &config.virtio {
            if let DeviceKind::Net { mac } = device {
                self.effects.push(Effect::Announce { mac: *mac });
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
        self.mode = Mode::Running(Box::new(Running {
            machine,
            config,
            logging: None,
            steering: self.config.steer_time.then(TimeSteering::default),
            steering_origin_ns: time.mono_ns,
            insns_per_ms: NOMINAL_INSNS_PER_MS,
            idle: None,
            ended: None,
        }));
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

fn release(effects: &mut Vec<Effect>, stats: &mut Stats, held: Held, delay_ns: u64) {
    stats.outputs += 1;
    if stats.output_delays_ns.len() == DELAYS_KEPT {
        stats.output_delays_ns.pop_front();
    }
    stats.output_delays_ns.push_back(delay_ns);
    effects.push(match held {
        Held::Console { offset, bytes } => Effect::Console { offset, bytes },
        Held::Io(request) => Effect::Perform(request),
    });
}
