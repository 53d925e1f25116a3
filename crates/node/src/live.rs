//! A machine that runs: alone (`ftvm run`), as a primary logging to its
//! backup, or as a backup that went live. One run loop for all of them.

use ftvm_board::{Input, IoRequest, MTIME_TICK_NS, Machine, MachineConfig, Stop};
use ftvm_ft::channel::Message;
use ftvm_ft::detector::FailureDetector;
use ftvm_ft::golive::Verdict;
use ftvm_ft::primary::{FlowLimits, Pace, Primary};
use ftvm_replay::{ClockReading, End, MachineId, Recorder, TimeSteering};

use crate::stats::{Held, count_release, release};
use crate::{
    DiskMode, Effect, HaltReason, Host, Mode, Node, NodeConfig, NodeError, Ran, SHORT_SLICE, SLICE,
    Status, Time,
};

/// Instructions a primary runs on after the first console byte of a slice
/// before it stops to send the log and hold the output: enough for a line.
pub(crate) const OUTPUT_GRACE: u64 = 20_000;

/// Largest piece of log sent in one message.
const ENTRIES_CHUNK: usize = 8 << 20;

/// How often a recording's entries are written out (and before the host
/// sleeps): a primary sends its log after every slice instead, because
/// its outputs wait for it.
const RECORD_FLUSH_NS: u64 = 50_000_000;

/// Pause before asking an unreachable arbiter again.
pub(crate) const ARBITER_RETRY_NS: u64 = 200_000_000;

/// What the primary assumes of its speed before it has measured it:
/// 100 instructions per microsecond (the board's nominal guest-time rate).
pub(crate) const NOMINAL_INSNS_PER_MS: f64 = 100_000.0;

/// Instructions the primary executes in `ns` of its own execution.
fn insns_for_ns(ns: u64, insns_per_ms: f64) -> u64 {
    (ns as f64 / 1e6 * insns_per_ms) as u64
}

/// Host time `insns` instructions take the primary.
fn ns_for_insns(insns: u64, insns_per_ms: f64) -> u64 {
    (insns as f64 / insns_per_ms.max(1.0) * 1e6) as u64
}

pub(crate) enum Role {
    Solo { record: bool },
    Primary,
}

/// Where a primary stands with its backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A clone's snapshot is on its way: nothing is sent yet (the log's
    /// header waits for the snapshot's digest), outputs do not wait.
    Transferring,
    /// The clone restores the snapshot and replays the log: the log flows,
    /// outputs still do not wait for it, and it may not take over.
    CatchingUp,
    /// Outputs wait for the backup's acknowledgements: it may take over.
    Protected,
}

/// The primary's side of the pair, while it has a backup: the output rule,
/// flow control and arbitration.
pub(crate) struct PairLink {
    pub(crate) phase: Phase,
    pub(crate) protocol: Primary<(u64, Held)>,
    /// The end logged, once the pair is ending.
    pub(crate) ending: Option<End>,
    /// A planned hand-over to the backup: the machine has stopped; once
    /// everything is acknowledged `HandOver` goes out (`handed`).
    pub(crate) handing_over: bool,
    pub(crate) handed: bool,
    pub(crate) arbitrating: bool,
    /// Slowed down: the backup trails by more than the bound.
    throttled: bool,
    /// A clone that is catching up has acknowledged log: it replays, and
    /// from now on the primary keeps to its pace.
    clone_replaying: bool,
    retry_at: Option<u64>,
    /// The log sent and not yet acknowledged: entries through, and when it
    /// went (ns), for the acknowledgement's round trip.
    unacked_sends: std::collections::VecDeque<(u64, u64)>,
}

/// How many sends wait for their acknowledgement's round trip to be
/// measured (older ones are dropped, unmeasured).
const SENDS_TIMED: usize = 1024;

/// When a logged run writes a checkpoint and flushes its entries.
struct Upkeep {
    last_checkpoint_ns: u64,
    checkpointed_icount: u64,
    last_flush_ns: u64,
}

impl PairLink {
    pub(crate) fn new(config: &NodeConfig, phase: Phase) -> PairLink {
        PairLink {
            phase,
            protocol: Primary::new(FlowLimits {
                max_unacked_entries: config.max_unacked_entries,
                max_lag_insns: insns_for_ns(config.max_lag_ns, NOMINAL_INSNS_PER_MS),
            }),
            ending: None,
            handing_over: false,
            handed: false,
            arbitrating: false,
            throttled: false,
            clone_replaying: false,
            retry_at: None,
            unacked_sends: std::collections::VecDeque::new(),
        }
    }

    fn holds_outputs(&self) -> bool {
        self.phase == Phase::Protected
    }

    /// Whether the primary keeps to its backup's pace: a backup that
    /// protects it, and a clone that replays to catch up. A busy guest on
    /// a host whose cores are all taken would otherwise run as fast as its
    /// clone replays, and the clone would never catch up (the paper slows
    /// the primary in the same way). A clone still restoring its snapshot
    /// does not hold the guest back.
    fn paces(&self) -> bool {
        self.holds_outputs() || (self.phase == Phase::CatchingUp && self.clone_replaying)
    }

    /// The pair is ending, or the VM is being handed over: no new input.
    pub(crate) fn is_closing(&self) -> bool {
        self.ending.is_some() || self.handing_over
    }
}

impl Upkeep {
    fn new(now_ns: u64) -> Upkeep {
        Upkeep {
            last_checkpoint_ns: now_ns,
            checkpointed_icount: 0,
            last_flush_ns: now_ns,
        }
    }
}

pub(crate) struct Running {
    pub(crate) machine: Machine,
    pub(crate) config: MachineConfig,
    /// The only way inputs reach the machine: logged when the run is
    /// recorded or has a backup, applied either way.
    pub(crate) recorder: Recorder<Vec<u8>>,
    pub(crate) pair: Option<PairLink>,
    upkeep: Upkeep,
    steering: Option<TimeSteering>,
    steering_origin_ns: u64,
    /// The primary's measured speed (a moving average over its busy
    /// slices): the lag bound is time the backup needs to catch up, and
    /// catching up costs instructions, not guest time (an idle sleep
    /// replays at once).
    pub(crate) insns_per_ms: f64,
    /// The current idle wait: its deadline in `mtime` ticks (none: only
    /// an input wakes the guest) and when it began (host ns).
    idle: Option<(Option<u64>, u64)>,
    /// A VM running alone that is ending (power-off, quit).
    pub(crate) ended: Option<End>,
    /// The machine's identity, once a clone needed it (hashing the images
    /// takes milliseconds, and the guest stands still meanwhile).
    pub(crate) machine_id: Option<MachineId>,
}

impl Running {
    /// A machine taken over from a replay (a backup that went live): alone,
    /// unlogged.
    pub(crate) fn took_over(
        machine: Machine,
        config: MachineConfig,
        node: &NodeConfig,
        time: Time,
    ) -> Running {
        Running {
            machine,
            config,
            recorder: Recorder::unlogged(),
            pair: None,
            upkeep: Upkeep::new(time.mono_ns),
            steering: node.steer_time.then(TimeSteering::default),
            steering_origin_ns: time.mono_ns,
            insns_per_ms: NOMINAL_INSNS_PER_MS,
            idle: None,
            ended: None,
            machine_id: None,
        }
    }

    pub(crate) fn deadline_ms(&self, detector: &FailureDetector) -> u64 {
        let retry_ms = |at: Option<u64>| at.map_or(u64::MAX, |ns| ns / 1_000_000);
        match &self.pair {
            // Alone, or no channel yet: `tick` has nothing to do.
            None => u64::MAX,
            Some(p) if p.phase == Phase::Transferring => u64::MAX,
            // Once the backup is suspected only the arbiter matters (the
            // detector's deadline stays in the past).
            Some(p) if p.arbitrating => retry_ms(p.retry_at).min(detector.next_heartbeat()),
            Some(p) => retry_ms(p.retry_at).min(detector.next_deadline()),
        }
    }
}

pub(crate) fn start(
    config: NodeConfig,
    machine_config: MachineConfig,
    time: Time,
    role: Role,
) -> Result<Node, NodeError> {
    let mut machine = Machine::new(&machine_config)?;
    let logged = match role {
        Role::Solo { record } => record,
        Role::Primary => true,
    };
    let recorder = if logged {
        Recorder::new(
            Vec::new(),
            &machine,
            MachineId::of(&machine_config),
            machine_config.engine,
        )?
    } else {
        Recorder::unlogged()
    };
    let pair = match role {
        Role::Solo { .. } => None,
        Role::Primary => {
            machine.stop_after_output(Some(OUTPUT_GRACE));
            Some(PairLink::new(&config, Phase::Protected))
        }
    };
    let status = if pair.is_some() {
        Status::Primary
    } else {
        Status::Live
    };
    let running = Running {
        machine,
        config: machine_config,
        recorder,
        pair,
        upkeep: Upkeep::new(time.mono_ns),
        steering: config.steer_time.then(TimeSteering::default),
        steering_origin_ns: time.mono_ns,
        insns_per_ms: NOMINAL_INSNS_PER_MS,
        idle: None,
        ended: None,
        machine_id: None,
    };
    let mut node = Node::new(config, Mode::Running(Box::new(running)), status, time);
    node.inject(Input::WallClock {
        unix_ns: time.unix_ns,
    })?;
    node.send_log(time, true)?;
    Ok(node)
}

impl Node {
    /// Log `input` (when the run is logged) and apply it: the one way an
    /// input reaches a running machine.
    pub(crate) fn inject(&mut self, input: Input) -> Result<(), NodeError> {
        if let Mode::Running(r) = &mut self.mode {
            if r.pair.as_ref().is_some_and(|p| p.ending.is_some()) {
                return Ok(());
            }
            r.recorder.inject(&mut r.machine, input)?;
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

    pub(crate) fn run_live(&mut self, host: &mut dyn Host) -> Result<Ran, NodeError> {
        let time = host.now();
        let Mode::Running(r) = &mut self.mode else {
            return Ok(Ran::Done);
        };
        if r.ended.is_some()
            || r.pair
                .as_ref()
                .is_some_and(|p| p.ending.is_some() || p.handing_over)
        {
            return Ok(Ran::Blocked);
        }
        if let Some((deadline, since)) = r.idle {
            let waited = time.mono_ns.saturating_sub(since);
            return Ok(Ran::Idle {
                sleep_ns: deadline.map(|t| t.saturating_mul(MTIME_TICK_NS).saturating_sub(waited)),
            });
        }
        if r.pair
            .as_ref()
            .is_some_and(|p| p.phase == Phase::Transferring)
            && r.recorder.bytes() > crate::clone::LOG_WHILE_SENDING_MAX
        {
            self.clone_failed("the log grew too large while the snapshot was sent");
            return Ok(Ran::Busy);
        }
        let Mode::Running(r) = &mut self.mode else {
            return Ok(Ran::Done);
        };
        if let Some(pair) = r.pair.as_mut().filter(|p| p.paces()) {
            let max_lag = insns_for_ns(self.config.max_lag_ns, r.insns_per_ms);
            pair.protocol.set_max_lag_insns(max_lag);
            match pair.protocol.pace() {
                Pace::Stall if pair.holds_outputs() => return Ok(Ran::Blocked),
                Pace::Stall | Pace::SlowDown => pair.throttled = true,
                Pace::Run => {}
            }
            // Once slowed, the primary waits until the backup has made up
            // half the bound, so that it runs at the backup's pace rather
            // than at its own with short pauses.
            if pair.throttled {
                let (_, lag) = pair.protocol.lag();
                if lag > max_lag / 2 {
                    return Ok(Ran::Throttled);
                }
                pair.throttled = false;
            }
        }
        let held = r.pair.as_ref().is_some_and(|p| p.protocol.held() > 0);
        let slice = if held { SHORT_SLICE } else { SLICE };
        // With output already waiting for the backup, more output is no more
        // urgent: it goes with the short slice's log, in one round trip.
        if r.pair.as_ref().is_some_and(PairLink::holds_outputs) {
            r.machine.stop_after_output((!held).then_some(OUTPUT_GRACE));
        }
        let limit = self.config.max_insns.unwrap_or(u64::MAX);
        let started = (time.mono_ns, r.machine.icount());
        let stop = r
            .machine
            .run(r.machine.icount().saturating_add(slice).min(limit));
        let time = host.now();
        let (took_ns, executed) = (
            time.mono_ns.saturating_sub(started.0),
            r.machine.icount() - started.1,
        );
        if took_ns >= 200_000 && executed >= 10_000 {
            let speed = executed as f64 / (took_ns as f64 / 1e6);
            r.insns_per_ms += (speed - r.insns_per_ms) / 8.0;
        }
        // Answers the host gives at this boundary may wake an idle guest,
        // which must then not sleep.
        let mut woken = self.take_outputs(time, host)?;
        // Out at once, before the work below: the backup's acknowledgement
        // is what the outputs wait for.
        self.send_log(time, false)?;
        let Mode::Running(r) = &mut self.mode else {
            return Ok(Ran::Done);
        };
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
                tracing::debug!(?correction, ?clock, "guest time");
                // A step may pass the timer deadline the idle stop named.
                woken = true;
                self.inject(correction)?;
            }
        }
        let Mode::Running(r) = &mut self.mode else {
            return Ok(Ran::Done);
        };
        if r.recorder.is_logging()
            && time.mono_ns.saturating_sub(r.upkeep.last_checkpoint_ns)
                >= self.config.checkpoint_interval_ns
            && r.machine.icount() != r.upkeep.checkpointed_icount
        {
            r.recorder.checkpoint(&r.machine)?;
            r.upkeep.checkpointed_icount = r.machine.icount();
            r.upkeep.last_checkpoint_ns = time.mono_ns;
        }
        let ran = match stop {
            Stop::Limit if r.machine.icount() >= limit => {
                self.end(End::InsnLimit, time)?;
                Ran::Blocked
            }
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
                self.reset(time)?;
                Ran::Busy
            }
        };
        self.send_log(time, matches!(ran, Ran::Idle { .. }))?;
        Ok(ran)
    }

    /// The guest asked for a reset: the machine is built anew from the
    /// same images, and the log says so.
    fn reset(&mut self, time: Time) -> Result<(), NodeError> {
        let Mode::Running(r) = &mut self.mode else {
            return Ok(());
        };
        tracing::info!(icount = r.machine.icount(), "guest requested a reset");
        // The balloon's target is the host's: it outlives the guest's
        // reboot (as on QEMU), logged again on the new machine.
        let balloon = r.machine.balloon().map(|b| b.target_pages);
        self.icount_base += r.machine.icount();
        r.recorder.reset(&r.machine)?;
        r.machine = Machine::new(&r.config)?;
        if r.pair.as_ref().is_some_and(PairLink::holds_outputs) {
            r.machine.stop_after_output(Some(OUTPUT_GRACE));
        }
        r.steering = r.steering.as_ref().map(|_| TimeSteering::default());
        r.steering_origin_ns = time.mono_ns;
        self.inject(Input::WallClock {
            unix_ns: time.unix_ns,
        })?;
        if let Some(pages) = balloon.filter(|&pages| pages > 0) {
            self.inject(Input::BalloonTarget { pages })?;
        }
        let Mode::Running(r) = &mut self.mode else {
            return Ok(());
        };
        // A replay checks the new machine's state here, not a checkpoint
        // interval later.
        r.recorder.checkpoint(&r.machine)?;
        r.upkeep.checkpointed_icount = 0;
        r.upkeep.last_checkpoint_ns = time.mono_ns;
        Ok(())
    }

    /// Console output and I/O requests of the last slice: held, performed
    /// or released, in the order the guest made them. Whether the host
    /// answered any request at once (an input at this boundary).
    fn take_outputs(&mut self, time: Time, host: &mut dyn Host) -> Result<bool, NodeError> {
        let Mode::Running(r) = &mut self.mode else {
            return Ok(false);
        };
        self.stats.icount = r.machine.icount();
        let console = r.machine.take_console_output();
        let requests = r.machine.take_io_requests();
        let shared = self.config.disk == DiskMode::Shared;
        let mut held = Vec::new();
        if !console.is_empty() {
            let offset = self.console_offset;
            self.console_offset += console.len() as u64;
            held.push(Held::Console {
                offset,
                bytes: console,
            });
        }
        let holding = r.pair.as_ref().is_some_and(PairLink::holds_outputs);
        let mut perform = Vec::new();
        let mut unmarked = false;
        for request in requests {
            let is_output = match &request {
                IoRequest::BlockWrite { .. } | IoRequest::BlockFlush { .. } => shared,
                IoRequest::NetTransmit { .. } => true,
                _ => false,
            };
            match (is_output, holding) {
                (true, true) => held.push(Held::Io(request)),
                // Alone, an output leaves at once.
                (true, false) => {
                    unmarked = true;
                    count_release(&mut self.stats, 0);
                    perform.push(request);
                }
                (false, _) => perform.push(request),
            }
        }
        // A clone that is catching up is not waited for, but the log must
        // still mark where the output was produced: once it protects the
        // VM it holds every entry sent before, markers included, so it
        // reaches every output the world has before it could go live
        // (found by the simulator: a frame released during catch-up, then
        // the primary lost, and the clone live before that frame).
        if unmarked {
            if let Mode::Running(r) = &mut self.mode {
                if r.pair.is_some() {
                    r.recorder.output(&r.machine)?;
                }
            }
        }
        let mut answered = false;
        for request in perform {
            match host.answer_now(&request) {
                Some(answer) => {
                    answered = true;
                    self.inject(answer)?;
                }
                None => self.effects.push(Effect::Perform(request)),
            }
        }
        if held.is_empty() {
            return Ok(answered);
        }
        let Mode::Running(r) = &mut self.mode else {
            return Ok(answered);
        };
        match &mut r.pair {
            Some(pair) if pair.holds_outputs() => {
                r.recorder.output(&r.machine)?;
                let entries = r.recorder.entries();
                for output in held {
                    if let Some((_, output)) = pair.protocol.output(entries, (time.mono_ns, output))
                    {
                        release(&mut self.effects, &mut self.stats, output, 0);
                    }
                }
            }
            // A clone that is catching up: the output leaves at once, and
            // its marker in the log takes the clone to it before it could
            // ever go live.
            Some(_) => {
                r.recorder.output(&r.machine)?;
                for output in held {
                    release(&mut self.effects, &mut self.stats, output, 0);
                }
            }
            None => {
                for output in held {
                    release(&mut self.effects, &mut self.stats, output, 0);
                }
            }
        }
        Ok(answered)
    }

    /// Hand out what the log holds so far, now: a run that stops on an
    /// error still leaves every entry it logged.
    pub fn flush_log(&mut self, time: Time) -> Result<(), NodeError> {
        self.send_log(time, true)
    }

    /// Hand the log written since the last call to where it goes: the
    /// backup after every slice (its acknowledgement is what outputs wait
    /// for), a recording every [`RECORD_FLUSH_NS`] or when `force`d.
    pub(crate) fn send_log(&mut self, time: Time, force: bool) -> Result<(), NodeError> {
        let Mode::Running(r) = &mut self.mode else {
            return Ok(());
        };
        if !r.recorder.is_logging() {
            return Ok(());
        }
        if r.pair
            .as_ref()
            .is_some_and(|p| p.phase == Phase::Transferring)
        {
            return Ok(());
        }
        let Some(pair) = &mut r.pair else {
            if force || time.mono_ns.saturating_sub(r.upkeep.last_flush_ns) >= RECORD_FLUSH_NS {
                r.upkeep.last_flush_ns = time.mono_ns;
                let bytes = r.recorder.take_bytes()?;
                if !bytes.is_empty() {
                    self.stats.log_bytes += bytes.len() as u64;
                    self.effects.push(Effect::Record(bytes));
                }
            }
            return Ok(());
        };
        let bytes = r.recorder.take_bytes()?;
        if bytes.is_empty() {
            return Ok(());
        }
        let entries = r.recorder.entries();
        pair.protocol
            .logged(entries, self.icount_base + r.recorder.last_icount());
        if pair.unacked_sends.len() == SENDS_TIMED {
            pair.unacked_sends.pop_front();
        }
        pair.unacked_sends.push_back((entries, time.mono_ns));
        self.stats.log_bytes += bytes.len() as u64;
        self.stats.log_entries += entries.saturating_sub(self.entries_counted);
        self.entries_counted = entries;
        for chunk in bytes.chunks(ENTRIES_CHUNK) {
            self.effects.push(Effect::Send(Message::Entries {
                log: chunk.to_vec(),
            }));
        }
        self.detector.sent(time.ms());
        let (entries, insns) = pair.protocol.lag();
        self.stats.lag_entries = entries;
        self.stats.lag_ns = ns_for_insns(insns, r.insns_per_ms);
        self.stats.icount = r.machine.icount();
        Ok(())
    }

    /// The guest powered off or exited, the run reached its instruction
    /// limit, or the user stopped it: log the end (a last checkpoint, then
    /// the end entry).
    pub(crate) fn end(&mut self, end: End, time: Time) -> Result<(), NodeError> {
        // A clone that cannot take over yet is given up: the VM ends alone.
        if let Mode::Running(r) = &self.mode {
            if r.pair.as_ref().is_some_and(|p| !p.holds_outputs()) {
                self.clone_failed("the guest's run ended");
            }
        }
        let Mode::Running(r) = &mut self.mode else {
            return Ok(());
        };
        self.final_digest = r.recorder.end(&r.machine, end)?;
        match &mut r.pair {
            Some(pair) => pair.ending = Some(end),
            None => r.ended = Some(end),
        }
        self.send_log(time, true)?;
        self.finish_ending();
        Ok(())
    }

    /// An ending VM is done once nothing is held any more.
    fn finish_ending(&mut self) {
        let Mode::Running(r) = &self.mode else {
            return;
        };
        let end = match &r.pair {
            Some(p) if p.protocol.held() == 0 && p.protocol.lag().0 == 0 => p.ending,
            Some(_) => None,
            None => r.ended,
        };
        let Some(end) = end else {
            return;
        };
        tracing::info!(pair = %self.config.pair, ?end, "the run ended");
        self.status = Status::Ended(end);
        if let Mode::Running(r) = std::mem::replace(&mut self.mode, Mode::Done) {
            self.ended_machine = Some(Box::new(r.machine));
        }
    }

    /// A message from the backup.
    pub(crate) fn primary_receive(&mut self, message: &Message, time: Time) {
        let Mode::Running(r) = &mut self.mode else {
            return;
        };
        let Some(pair) = &mut r.pair else {
            return;
        };
        match message {
            // Once it suspects its backup, the primary must not release
            // anything until it wins the test-and-set: the backup may be
            // live already, and an acknowledgement that was held up in the
            // network would let an old output (a disk write) land after the
            // live VM's.
            Message::Ack { .. } if pair.arbitrating => {}
            Message::Ack { through, icount } => {
                // Each piece of log this acknowledgement covers: its own
                // round trip.
                while let Some(&(entries, sent)) = pair.unacked_sends.front() {
                    if entries > *through {
                        break;
                    }
                    self.stats
                        .ack_histogram
                        .observe(time.mono_ns.saturating_sub(sent));
                    pair.unacked_sends.pop_front();
                }
                match pair.protocol.ack(*through, *icount) {
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
                let (entries, insns) = pair.protocol.lag();
                self.stats.lag_entries = entries;
                self.stats.lag_ns = ns_for_insns(insns, r.insns_per_ms);
                let max_lag = insns_for_ns(self.config.max_lag_ns, r.insns_per_ms);
                if pair.phase == Phase::CatchingUp {
                    pair.clone_replaying = true;
                    if insns <= max_lag / 2 {
                        self.clone_caught_up(time);
                    }
                }
                self.finish_hand_over(time);
                self.finish_ending();
            }
            Message::Heartbeat => {}
            other => tracing::warn!("ignoring an unexpected {other:?} from the backup"),
        }
    }

    /// A primary's heartbeats, its suspicion of the backup, and its
    /// arbiter retries.
    pub(crate) fn primary_tick(&mut self, time: Time) {
        let now = time.ms();
        let suspects = self.detector.suspects(now);
        let heartbeat = self.detector.heartbeat_due(now);
        // How long a backup that nothing waits for (a clone catching up)
        // or that drains in silence (after a hand-over) may be quiet.
        let patience = crate::clone::CATCH_UP_SILENCE_MS.max(self.config.detector.timeout_ms);
        let Mode::Running(r) = &mut self.mode else {
            return;
        };
        let Some(pair) = &mut r.pair else {
            return;
        };
        if pair.phase == Phase::Transferring {
            return;
        }
        if heartbeat {
            self.effects.push(Effect::Send(Message::Heartbeat));
            self.detector.sent(now);
        }
        if pair.phase == Phase::CatchingUp {
            // Nothing waits for a clone that has not caught up, and it
            // may be busy restoring its snapshot: it is given a longer
            // silence before it is dropped (at once if its channel
            // closed). It cannot take over: no arbiter is needed.
            if self.detector.silent_for(now, patience) {
                self.clone_failed("the new backup is silent");
            }
            return;
        }
        // A backup told to take over drains what it holds, saying
        // nothing: its silence is expected. The primary asks the arbiter
        // once the backup closes the channel (it went live) or after a
        // long silence (it died quietly).
        let suspects = suspects && (!pair.handed || self.detector.silent_for(now, patience));
        let retry = pair.retry_at.is_some_and(|at| time.mono_ns >= at);
        if (suspects && !pair.arbitrating) || retry {
            if !pair.arbitrating {
                tracing::warn!(pair = %self.config.pair, "the backup is silent: asking the arbiter");
            }
            pair.arbitrating = true;
            pair.retry_at = None;
            self.stats.milestones.suspected_peer = true;
            self.status = Status::Arbitrating;
            self.effects.push(Effect::TestAndSet);
        }
    }

    /// The arbiter's answer to a primary that suspects its backup.
    pub(crate) fn primary_verdict(&mut self, verdict: Verdict, time: Time) {
        let Mode::Running(r) = &mut self.mode else {
            return;
        };
        let Some(pair) = &mut r.pair else {
            return;
        };
        match verdict {
            Verdict::Won => {
                tracing::warn!(pair = %self.config.pair, "won the test-and-set: running alone");
                for (produced, held) in pair.protocol.go_solo() {
                    release(
                        &mut self.effects,
                        &mut self.stats,
                        held,
                        time.mono_ns.saturating_sub(produced),
                    );
                }
                r.ended = pair.ending;
                r.pair = None;
                r.recorder.stop_logging();
                r.machine.stop_after_output(None);
                self.status = Status::Live;
                self.finish_ending();
            }
            // A primary that handed the VM over loses to the backup that
            // took it: the hand-over is done.
            Verdict::Lost if pair.handed => self.halt(HaltReason::HandedOver),
            Verdict::Lost => self.halt(HaltReason::LostTestAndSet),
            Verdict::Unreachable => pair.retry_at = Some(time.mono_ns + ARBITER_RETRY_NS),
        }
    }
}
