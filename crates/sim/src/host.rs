//! The hosts, two at a time: each runs a real [`Node`] at its own speed
//! (a VM's process, on a physical host of module `cluster`); the
//! simulator calls it when its time comes (run slices, ticks, wake-ups)
//! and carries out its effects. Crashes and the arbiter are here too. A
//! crashed VM never comes back; a restore puts a new one (the next
//! letter) in its slot.
//!
//! This is the only module that calls [`Node`]: the rest of the simulator
//! goes through [`Host`].

use std::collections::BTreeMap;

use ftvm_board::{Digest, ImageMap, Input, IoRequest, Machine};
use ftvm_ft::channel::Message;
use ftvm_ft::clone::Cloned;
use ftvm_ft::detector::DetectorConfig;
use ftvm_ft::golive::Verdict;
use ftvm_node::{CloneBegun, CloneRefused, Effect, Node, NodeConfig, NodeError, Ran, Time};

use crate::invariants::{Invariant, Output};
use crate::plan::{CrashMode, Fault};
use crate::sim::{Event, Sim};
use crate::{Broken, MS, SimError, VM_MAC};

pub(crate) use ftvm_node::{DiskMode, HaltReason, Status};

pub(crate) const PAIR: &str = "simvm";
/// Wall clock at virtual time 0.
const UNIX_EPOCH_NS: u64 = 1_700_000_000_000_000_000;
const HEARTBEAT_MS: u64 = 20;
pub(crate) const TIMEOUT_MS: u64 = 200;

pub(crate) struct Host {
    node: Node,
    /// Virtual ns per instruction.
    speed: u64,
    next_run: Option<u64>,
    wake_at: Option<u64>,
    last_tick: u64,
}

impl Host {
    /// A new backup's host, from a clone that arrived whole.
    pub fn from_clone(
        config: NodeConfig,
        images: ImageMap,
        cloned: Cloned,
        time: Time,
        speed: u64,
    ) -> Result<Host, NodeError> {
        let node = Node::backup_from_clone(config, Box::new(images), cloned, time)?;
        let mut host = Host::new(node, speed);
        host.next_run = Some(time.mono_ns);
        host.last_tick = time.mono_ns;
        Ok(host)
    }

    fn new(node: Node, speed: u64) -> Host {
        Host {
            node,
            speed,
            next_run: Some(0),
            wake_at: None,
            last_tick: 0,
        }
    }

    /// When to call `tick` next: at the node's deadline, but at most once
    /// a millisecond (a suspected peer's deadline stays in the past, and
    /// the daemon likewise sleeps at least a little).
    fn tick_at(&self) -> u64 {
        self.node
            .deadline_ms()
            .saturating_mul(MS)
            .max(self.last_tick + MS)
    }

    /// The next moment this host wants to be called, if before `t`.
    fn next_time(&self, mut t: u64) -> u64 {
        if self.node.status().is_done() {
            return t;
        }
        if let Some(r) = self.next_run {
            t = t.min(r);
        }
        if let Some(w) = self.wake_at {
            t = t.min(w);
        }
        t.min(self.tick_at())
    }

    pub fn status(&self) -> &Status {
        self.node.status()
    }

    pub fn machine(&self) -> Option<&Machine> {
        self.node.machine()
    }

    /// A message from the channel (without scheduling a run: the caller
    /// decides).
    pub fn receive(&mut self, message: &Message, time: Time) {
        self.node.receive(message, time);
    }

    /// Run the VM again now.
    pub fn run_now(&mut self, now: u64) {
        self.next_run = Some(now);
    }

    pub fn channel_closed(&mut self, by_peer: bool, now: u64) {
        self.node.channel_closed(by_peer);
        self.next_run = Some(now);
    }

    /// The VM runs (it may release outputs, a backup may go live).
    pub fn is_running(&self) -> bool {
        self.node.status().runs_the_guest()
    }

    /// The pairing this VM belongs to (the arbiter's key with the pair).
    pub fn epoch(&self) -> u64 {
        self.node.config().epoch
    }

    /// Capture the machine for a clone into a new backup of pairing
    /// `epoch`.
    pub fn start_clone(&mut self, epoch: u64, time: Time) -> Result<CloneBegun, CloneRefused> {
        self.node.start_clone(epoch, &mut Vec::new(), time)
    }

    /// The snapshot has reached the new backup: the log flows.
    pub fn clone_sent(&mut self, digest: Digest, time: Time) -> Result<bool, NodeError> {
        self.next_run = Some(time.mono_ns);
        self.node.clone_sent(digest, time)
    }

    /// The clone's connection failed while the snapshot was on its way.
    pub fn clone_failed(&mut self, why: &str, now: u64) {
        self.node.clone_failed(why);
        self.next_run = Some(now);
    }

    /// A planned hand-over to the backup (`ftvm migrate --vm primary`).
    pub fn hand_over(&mut self, time: Time) -> Result<(), &'static str> {
        self.next_run = Some(time.mono_ns);
        self.node.hand_over(time)
    }

    /// `ftvm stop`, or SIGTERM: the VM ends cleanly (a backup halts).
    pub fn stop(&mut self, time: Time) -> Result<(), NodeError> {
        self.next_run = Some(time.mono_ns);
        self.node.stop(time)
    }
}

/// The two hosts of the pair; a crashed host's slot is empty (until a
/// restore puts a new host there).
pub(crate) struct Hosts {
    pub slot: [Option<Host>; 2],
    /// Bumped by a crash and by a new host: completions and verdicts for
    /// an earlier incarnation are dropped.
    pub incarnation: [u64; 2],
    /// Which host is in each slot (0 = A, 1 = B, 2 = C, ...).
    pub id: [usize; 2],
    /// The next new host's.
    pub next_id: usize,
}

impl Hosts {
    pub fn statuses(&self) -> [Option<Status>; 2] {
        [0, 1].map(|i| self.slot[i].as_ref().map(|h| h.status().clone()))
    }

    /// Every host still there has finished.
    pub fn all_done(&self) -> bool {
        self.slot.iter().flatten().all(|h| h.status().is_done())
    }

    /// The next moment a host wants to be called, if before `t`.
    pub fn next_time(&self, t: u64) -> u64 {
        self.slot.iter().flatten().fold(t, |t, h| h.next_time(t))
    }
}

/// The arbiter: one atomic test-and-set per (pair, epoch): only the VMs
/// of one pairing claim each.
pub(crate) struct Arbiter {
    /// Epoch -> the host that won it.
    pub winners: BTreeMap<u64, usize>,
    /// (host, from, to): the host cannot reach the arbiter.
    pub outages: Vec<(usize, u64, u64)>,
}

pub(crate) fn status_text(status: &Status) -> String {
    match status {
        Status::Halted(why) => format!("halted ({})", why.code()),
        Status::Ended(end) => format!("ended ({end:?})"),
        other => other.word().to_string() + &format!(" ({other:?})"),
    }
}

impl Sim {
    /// The primary on host A and the backup on host B, at time 0.
    pub(crate) fn start_hosts(&mut self) -> Result<(), SimError> {
        let config = self.node_config();
        let time = self.time();
        let primary = Node::primary(
            config.clone(),
            self.guest.machine_config(self.options.engine),
            time,
        )
        .map_err(|e| SimError::Setup {
            seed: self.seed,
            what: format!("the primary: {e}"),
        })?;
        let backup = Node::backup(config, Box::new(ImageMap::of([&self.guest.image])), time);
        let speed_a = self.rng.range(4, 14);
        let speed_b = self.rng.range(4, 14);
        self.hosts.slot = [
            Some(Host::new(primary, speed_a)),
            Some(Host::new(backup, speed_b)),
        ];
        self.plan
            .push(format!("speeds A {speed_a} ns/insn, B {speed_b} ns/insn"));
        // `ftvm up`: the primary on the least loaded host, its backup
        // placed as any.
        for (id, survivor) in [(0, None), (1, Some(0))] {
            let Some(k) = self.choose_host(id, survivor, None)? else {
                return Err(SimError::Setup {
                    seed: self.seed,
                    what: "no host has room for the pair".into(),
                });
            };
            self.placed(id, k, survivor);
        }
        self.plan.push(format!(
            "A on {}, B on {}",
            self.cluster.host_of(0),
            self.cluster.host_of(1)
        ));
        Ok(())
    }

    pub(crate) fn node_config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(PAIR);
        config.detector = DetectorConfig {
            heartbeat_ms: HEARTBEAT_MS,
            timeout_ms: TIMEOUT_MS,
        };
        config.max_unacked_entries = 1 << 16;
        config.max_lag_ns = 100 * MS;
        config.checkpoint_interval_ns = 400 * MS;
        config.disk = self.disks.mode;
        config.steer_time = true;
        config.engine = self.options.engine;
        config
    }

    pub(crate) fn time(&self) -> Time {
        Time {
            mono_ns: self.now,
            unix_ns: UNIX_EPOCH_NS + self.now,
        }
    }

    /// The VM in slot `i` crashes (`mode`: how, or drawn now); when its
    /// host dies, every VM there dies with it.
    pub(crate) fn crash(&mut self, i: usize, mode: Option<CrashMode>) {
        if self.hosts.slot[i].is_none() && !self.clone_receiving(i) {
            return;
        }
        let mode = mode.unwrap_or_else(|| {
            if self.rng.chance(0.5) {
                CrashMode::Process
            } else if self.rng.chance(0.5) {
                CrashMode::HostAndBuffers
            } else {
                CrashMode::Host
            }
        });
        for victim in self.crash_victims(i, mode) {
            self.crash_vm(victim, mode);
        }
    }

    /// The VM in slot `i` dies.
    fn crash_vm(&mut self, i: usize, mode: CrashMode) {
        if self.hosts.slot[i].is_none() && !self.clone_receiving(i) {
            return;
        }
        self.crash_case(i);
        let handing_over = self.hand_over_crash(i, mode);
        self.hosts.slot[i] = None;
        let name = self.name(i);
        self.note(|| format!("{name} crashes ({mode:?})"));
        self.hosts.incarnation[i] += 1;
        if !handing_over {
            self.fail_at();
        }
        self.clone_host_gone(i);
        let open = self.channel.crashed(i);
        match mode {
            // What it sent arrives, then its kernel closes the connection.
            CrashMode::Process if open => self.notify_close(1 - i),
            CrashMode::Process | CrashMode::Host => {}
            CrashMode::HostAndBuffers => self.channel.lose_in_flight(1 - i),
        }
    }

    fn arbiter(&mut self, host: usize) -> Verdict {
        let now = self.now;
        if self
            .arbiter
            .outages
            .iter()
            .any(|&(h, from, to)| h == host && (from..to).contains(&now))
        {
            return Verdict::Unreachable;
        }
        if self.options.broken == Some(Broken::ArbiterAlwaysWins) {
            return Verdict::Won;
        }
        let Some(epoch) = self.hosts.slot[host].as_ref().map(Host::epoch) else {
            return Verdict::Unreachable;
        };
        let id = self.hosts.id[host];
        match *self.arbiter.winners.entry(epoch).or_insert(id) {
            w if w == id => Verdict::Won,
            _ => Verdict::Lost,
        }
    }

    /// Carry out a host's effects.
    pub(crate) fn effects(&mut self, i: usize) -> Result<(), SimError> {
        let Some(h) = &mut self.hosts.slot[i] else {
            return Ok(());
        };
        let mut effects = h.node.take_effects();
        let status = h.node.status().clone();
        self.check_hand_over_effects(i, &effects)?;
        if self.options.broken == Some(Broken::NoReissue)
            && effects.iter().any(|e| matches!(e, Effect::Announce { .. }))
        {
            // The go-live's effects: the announcement, the console tail,
            // the re-issued requests. The frames among them are forgotten.
            effects.retain(|e| !matches!(e, Effect::Perform(IoRequest::NetTransmit { .. })));
        }
        for effect in effects {
            match effect {
                Effect::Send(message) => self.send(i, &message)?,
                Effect::Console { offset, bytes } => {
                    self.released(i, &status)?;
                    self.console_write(i, offset, &bytes)?;
                }
                Effect::Perform(request) => {
                    let output = match request {
                        IoRequest::BlockWrite { .. } | IoRequest::BlockFlush { .. } => {
                            self.disks.mode == DiskMode::Shared
                        }
                        IoRequest::NetTransmit { .. } => true,
                        _ => false,
                    };
                    if output {
                        self.released(i, &status)?;
                    }
                    if let IoRequest::NetTransmit { frame, .. } = &request {
                        self.transmit(i, frame)?;
                    }
                    self.perform(i, request)?;
                }
                // A clone given up, or a backup live by a hand-over: the
                // host drops its connection.
                Effect::CloseChannel => {
                    let name = self.name(i);
                    let why = if status == Status::Live {
                        format!("{name} is live by a hand-over")
                    } else {
                        format!("{name} gives its clone up")
                    };
                    self.drop_connection(i, &why);
                }
                // A VM of a pair never runs solo, so never records a log of
                // its own.
                Effect::Record(_) => {
                    return Err(self.violation(
                        Invariant::Error,
                        format!("{} records a log of its own", self.name(i)),
                    ));
                }
                Effect::PerformOwn(request) => {
                    if self.disks.mode == DiskMode::Shared {
                        return Err(self.violation(
                            Invariant::OutputConsistency(Output::Disk),
                            format!("a private-disk write on a shared disk: {request:?}"),
                        ));
                    }
                    if let IoRequest::BlockWrite { id, offset, data } = &request {
                        self.record_write(i, *id, *offset, data)?;
                        self.disk_write(i, *offset, data);
                    }
                }
                Effect::Announce { .. } if status != Status::Live => {
                    return Err(self.violation(
                        Invariant::AtMostOneLive,
                        format!(
                            "host {} announces the VM's address while {}",
                            self.name(i),
                            status_text(&status)
                        ),
                    ));
                }
                Effect::Announce { mac } => {
                    if mac != VM_MAC {
                        return Err(self.violation(
                            Invariant::AtMostOneLive,
                            format!(
                                "host {} announces {mac:02x?}, not the VM's address",
                                self.name(i)
                            ),
                        ));
                    }
                    // A frame to the world (a RARP broadcast): an output,
                    // the first a backup that went live may release.
                    self.world.announced[i] = true;
                    self.released(i, &status)?;
                    self.announce(i);
                }
                Effect::TestAndSet => {
                    let verdict = self.arbiter(i);
                    if verdict == Verdict::Won {
                        self.hand_over_claimed(i);
                    }
                    let at = self.now + self.rng.range(50_000, 3_000_000);
                    let name = self.name(i);
                    let epoch = self.hosts.slot[i].as_ref().map_or(0, Host::epoch);
                    self.note(|| format!("{name} asks the arbiter for epoch {epoch}: {verdict:?}"));
                    let incarnation = self.hosts.incarnation[i];
                    self.schedule(
                        at,
                        Event::Verdict {
                            host: i,
                            incarnation,
                            verdict,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Call the first host whose time has come: a tick, a wake-up or a
    /// run slice, whose cost in virtual time is charged afterwards.
    pub(crate) fn step_hosts(&mut self) -> Result<(), SimError> {
        let time = self.time();
        for i in 0..2 {
            let Some(h) = &mut self.hosts.slot[i] else {
                continue;
            };
            if h.node.status().is_done() {
                continue;
            }
            if h.tick_at() <= self.now {
                h.last_tick = self.now;
                h.node.tick(time);
                h.next_run = Some(self.now);
                return self.effects(i);
            }
            if h.wake_at.is_some_and(|w| w <= self.now) {
                h.wake_at = None;
                if let Err(e) = h.node.wake(time) {
                    return Err(
                        self.violation(Invariant::Error, format!("{}: wake: {e}", self.name(i)))
                    );
                }
                h.next_run = Some(self.now);
                return self.effects(i);
            }
            if h.next_run.is_some_and(|r| r <= self.now) {
                let before = h.node.machine().map_or(0, |m| m.icount());
                // The slice's cost is charged afterwards (the next run
                // waits for it), so both readings are the slice's start.
                let ran = match h.node.run(&mut || time) {
                    Ok(ran) => ran,
                    Err(e) => {
                        return Err(
                            self.violation(Invariant::Error, format!("{}: run: {e}", self.name(i)))
                        );
                    }
                };
                let after = h.node.machine().map_or(before, |m| m.icount());
                let cost = after
                    .saturating_sub(before)
                    .saturating_mul(h.speed)
                    .max(1_000);
                match ran {
                    Ran::Busy => h.next_run = Some(self.now + cost),
                    Ran::Throttled => h.next_run = Some(self.now + cost + MS),
                    Ran::Blocked | Ran::Done => h.next_run = None,
                    Ran::Idle { sleep_ns } => {
                        h.next_run = None;
                        h.wake_at = sleep_ns.map(|s| self.now + s.max(1));
                    }
                }
                return self.effects(i);
            }
        }
        Ok(())
    }

    /// The user stops the pair where it runs: the live VM if there is
    /// one, else the primary.
    pub(crate) fn stop_pair(&mut self) -> Result<(), SimError> {
        let time = self.time();
        let statuses = self.hosts.statuses();
        let Some(i) = runs_the_guest(&statuses) else {
            return Ok(());
        };
        let Some(h) = &mut self.hosts.slot[i] else {
            return Ok(());
        };
        if let Err(e) = h.node.stop(time) {
            return Err(self.violation(Invariant::Error, format!("{}: stop: {e}", self.name(i))));
        }
        h.next_run = Some(self.now);
        let name = self.name(i);
        self.note(|| format!("{name} is stopped"));
        self.effects(i)
    }

    /// An I/O request of incarnation `incarnation` of host `host`
    /// completes.
    pub(crate) fn io_done(
        &mut self,
        host: usize,
        incarnation: u64,
        request: &IoRequest,
        write_on_completion: bool,
    ) -> Result<(), SimError> {
        if self.hosts.incarnation[host] != incarnation || self.hosts.slot[host].is_none() {
            return Ok(());
        }
        let input = self.completion(host, request, write_on_completion);
        self.input(host, input)
    }

    /// A frame from the switch reaches host `host`'s port.
    pub(crate) fn frame_to_host(&mut self, host: usize, frame: Vec<u8>) -> Result<(), SimError> {
        // A backup's node ignores input while it replays: only a running
        // VM logs the frame.
        if !self.hosts.slot[host].as_ref().is_some_and(Host::is_running) {
            return Ok(());
        }
        self.input(host, Input::NetReceive { frame })
    }

    fn input(&mut self, host: usize, input: Input) -> Result<(), SimError> {
        let time = self.time();
        if let Some(h) = &mut self.hosts.slot[host] {
            if let Err(e) = h.node.input(input, time) {
                return Err(
                    self.violation(Invariant::Error, format!("{}: input: {e}", self.name(host)))
                );
            }
            h.wake_at = None;
            h.next_run = Some(self.now);
        }
        self.effects(host)
    }

    /// The connection's close reaches `host`.
    pub(crate) fn closed(&mut self, host: usize, incarnation: u64, generation: u64) {
        if self.hosts.incarnation[host] == incarnation
            && self.channel.generation(host) == generation
        {
            let name = self.name(host);
            self.note(|| format!("{name} learns the connection closed"));
            let now = self.now;
            if let Some(h) = &mut self.hosts.slot[host] {
                h.channel_closed(true, now);
            }
            self.clone_connection_closed(host);
        }
    }

    /// The arbiter's answer reaches `host`.
    pub(crate) fn verdict(
        &mut self,
        host: usize,
        incarnation: u64,
        verdict: Verdict,
    ) -> Result<(), SimError> {
        if self.hosts.incarnation[host] != incarnation {
            return Ok(());
        }
        let time = self.time();
        if let Some(h) = &mut self.hosts.slot[host] {
            let epoch = h.epoch();
            if let Err(e) = h.node.verdict(verdict, time) {
                return Err(self.violation(
                    Invariant::Error,
                    format!("{}: verdict: {e}", self.name(host)),
                ));
            }
            h.next_run = Some(self.now);
            if verdict == Verdict::Won {
                self.won_test_and_set(host, epoch);
            }
        }
        self.effects(host)
    }

    /// A fault of the plan strikes.
    pub(crate) fn fault(&mut self, fault: Fault) -> Result<(), SimError> {
        self.disrupted();
        match fault {
            Fault::Crash(i) => self.crash(i, None),
            Fault::CrashHost { id, mode } => {
                if let Some(i) = (0..2).find(|&i| {
                    self.hosts.id[i] == id
                        && (self.hosts.slot[i].is_some() || self.clone_receiving(i))
                }) {
                    self.crash(i, Some(mode));
                }
            }
            Fault::Cut { mode, until, cut } => {
                self.note(|| format!("partition {mode:?} {cut:?} until {until}"));
                self.channel.partition(mode, until, cut);
                if until == u64::MAX {
                    self.fail_at();
                }
            }
            Fault::Stop => self.stop_pair()?,
        }
        Ok(())
    }
}

/// The host whose VM runs the guest: the live one (or one cloning), else
/// a primary.
pub(crate) fn runs_the_guest(statuses: &[Option<Status>]) -> Option<usize> {
    [
        Status::Live,
        Status::Cloning,
        Status::Primary,
        Status::Arbitrating,
    ]
    .iter()
    .find_map(|want| statuses.iter().position(|s| s.as_ref() == Some(want)))
}
