//! The invariants of ARCHITECTURE.md, "Invariants": what is checked after every
//! event, when a VM goes live, and at the end (with liveness). The checks made
//! where an output is released (the console, the world's frames, the disk) live
//! with those outputs and report here.

use std::collections::BTreeMap;

use ftvm_board::{Digest, ImageMap, Snapshot};
use ftvm_replay::{Applied, Event, LogDecoder, ReplayMachine};

use crate::clone::case;
use crate::guest::{ANS_WIN, SECTOR, TX_WIN, record_byte};
use crate::host::{HaltReason, Status, status_text};
use crate::migrate::Continued;
use crate::plan::{LIVENESS_BOUND_NS, Plan};
use crate::sim::{Sim, host_name};
use crate::{MS, Outcome, SimError};

/// A running VM's console must have grown within this much virtual time.
const CONSOLE_STALL_NS: u64 = 600 * MS;
/// A VM live for this long must have answered a new request within the
/// last this long.
const LIVE_ANSWER_NS: u64 = 400 * MS;
/// A healthy pair must have answered a new request within this long.
const HEALTHY_ANSWER_NS: u64 = 600 * MS;

/// The invariant a violation breaks (ARCHITECTURE.md, "Invariants", plus
/// liveness and what a run must not do at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Invariant {
    /// 1. A VM halted with a fault of the pair (a backup diverged, or
    ///    could not replay the primary's log), or the primary's whole sent
    ///    log does not replay at the end.
    Determinism,
    /// 2. What the world saw (console, frames, a shared disk) is the
    ///    output of one execution, the one that survives.
    OutputConsistency(Output),
    /// 3. At most one VM live (or running alone while it clones); once a
    ///    VM released an output while live, no other releases anything
    ///    more unless it won a newer pairing's test-and-set; a VM of an
    ///    older pairing never runs alone; only a live VM announces the
    ///    VM's address, and a new live VM does so before its outputs.
    AtMostOneLive,
    /// 4. No acknowledged write lost: the guest reports `BAD`, or the disk
    ///    lacks a write whose completion the surviving execution saw.
    NoLostWrite,
    /// After a planned hand-over the new primary continues from exactly
    /// where the log the old one sent ends, in the state that log leads
    /// to; a primary handing over executes no more. With
    /// `Options::strict_hand_over`: from the very icount at which the old
    /// primary stopped, with its state digest there, re-producing none of
    /// its outputs, `HandOver` naming only entries that were sent.
    HandOver,
    /// A new backup was placed on its survivor's host while another live
    /// host had room (anti-affinity, `ftvm_cluster::placement`).
    Placement,
    /// The pair makes progress: after a single failure some VM goes
    /// live, a running VM's console grows, the client gets answers, a
    /// restore completes.
    Liveness(Progress),
    /// The code under test panicked.
    Panic,
    /// A `Node` call returned an error, or a message could not be sealed:
    /// where the daemon would have had to give up.
    Error,
    /// The simulator could not check: it cannot read the guest's tables,
    /// or lost track of its own records (a bug of the simulator, or a
    /// guest that does not match it).
    Harness,
}

/// Which output disagrees with the surviving execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// The world's console: a gap in the stream, or a byte released
    /// twice with different values.
    Console,
    /// The world's frames skip sequence numbers: outputs lost across a
    /// failover.
    FrameGap,
    /// The world's frames or answers from two executions differ, or one
    /// comes again from the same host or too late to be a re-issue, or is
    /// malformed.
    Frames,
    /// The world got an output that the execution surviving on a VM
    /// (when it goes live, or at the end) never produced, or produced
    /// differently: an orphan of an execution that did not survive.
    Orphan,
    /// Two executions wrote a shared disk (one request id, two writes),
    /// or a private-disk write reached a shared disk.
    Disk,
}

/// What stopped making progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Progress {
    /// No VM is live within the bound after a single failure.
    Failover,
    /// A running VM's console stopped growing.
    Console,
    /// The client's request has had no answer for too long (from a
    /// healthy pair, or from a VM live for a while).
    Client,
    /// Virtual time stopped advancing.
    Time,
    /// A restore of redundancy did not complete in time (with no fault
    /// since it began).
    Restore,
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invariant::Determinism => f.write_str("determinism"),
            Invariant::OutputConsistency(o) => write!(f, "output consistency: {o}"),
            Invariant::AtMostOneLive => f.write_str("at most one live"),
            Invariant::NoLostWrite => f.write_str("no lost write"),
            Invariant::HandOver => f.write_str("hand-over"),
            Invariant::Placement => f.write_str("placement"),
            Invariant::Liveness(p) => write!(f, "liveness: {p}"),
            Invariant::Panic => f.write_str("panic"),
            Invariant::Error => f.write_str("error"),
            Invariant::Harness => f.write_str("harness"),
        }
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Output::Console => "console",
            Output::FrameGap => "frame gap",
            Output::Frames => "frames",
            Output::Orphan => "orphan output",
            Output::Disk => "disk",
        })
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Progress::Failover => "failover",
            Progress::Console => "console",
            Progress::Client => "client",
            Progress::Time => "virtual time",
            Progress::Restore => "restore",
        })
    }
}

/// What the checks remember between events. Hosts are named by id (0 =
/// A, 1 = B, 2 = C, ...), not by slot: a restore puts a new host in a
/// crashed one's slot.
#[derive(Default)]
pub(crate) struct Checks {
    /// The host that released an output while live, and the newest epoch
    /// it won.
    live_releaser: Option<(usize, u64)>,
    /// The newest epoch whose test-and-set each host won: what it releases
    /// from then on is the live VM's output, even if it is stopped in the
    /// same breath and so is never seen live.
    won: BTreeMap<usize, u64>,
    took_over: bool,
    /// The first failure since the pair was last whole (at the start, or
    /// when a restore completed), and how many there were.
    failure_at: Option<u64>,
    failures: u32,
    /// When some VM was first seen live since then.
    live_since: Option<u64>,
    /// Since when each host that is live (or runs alone while it clones)
    /// has been (a host may go live again: a survivor that was cloned
    /// runs alone again when its new backup fails).
    live_at: BTreeMap<usize, u64>,
    /// The host seen going live last.
    last_live: Option<usize>,
    /// How much longer than the bound a failover may take (a primary
    /// that handed over waits that long for a backup whose host died in
    /// silence).
    pub patience_ns: u64,
    /// When the pair was last made whole (a restore completed).
    whole_since: u64,
}

impl Checks {
    /// No failure since the pair was last whole.
    pub fn failure_free(&self) -> bool {
        self.failure_at.is_none()
    }

    /// Failures since the pair was last whole.
    pub fn failures_since_whole(&self) -> u32 {
        self.failures
    }
}

impl Sim {
    /// A failure: liveness is measured from the first, and promised after
    /// a single one only (since the pair was last whole).
    pub(crate) fn fail_at(&mut self) {
        self.checks.failures += 1;
        if self.checks.failure_at.is_none() {
            self.checks.failure_at = Some(self.now);
        }
    }

    /// A fault struck (a failure, a partition, a stop): a restore under
    /// way need not complete in time.
    pub(crate) fn disrupted(&mut self) {
        self.restoring.deadline = None;
    }

    /// A restore completed: the pair is whole again, and liveness is
    /// promised after its next single failure.
    pub(crate) fn restored(&mut self) {
        self.checks.failures = 0;
        self.checks.failure_at = None;
        self.checks.live_since = None;
        self.checks.patience_ns = 0;
        self.checks.whole_since = self.now;
    }

    /// Host `i` won the test-and-set of pairing `epoch`.
    pub(crate) fn won_test_and_set(&mut self, i: usize, epoch: u64) {
        let id = self.hosts.id[i];
        let won = self.checks.won.entry(id).or_insert(epoch);
        *won = (*won).max(epoch);
    }

    /// Host `i` releases an output to the world.
    pub(crate) fn released(&mut self, i: usize, status: &Status) -> Result<(), SimError> {
        let id = self.hosts.id[i];
        let won = self.checks.won.get(&id).copied();
        match self.checks.live_releaser {
            // Another host released as the live VM: this one may release
            // only as the winner of a newer pairing (it took over from it).
            Some((other, epoch)) if other != id && won.is_none_or(|w| w <= epoch) => {
                return Err(self.violation(Invariant::AtMostOneLive, format!(
                    "host {} releases an output ({}{}) after host {} released outputs as the live \
                     VM of epoch {epoch}",
                    host_name(id),
                    status_text(status),
                    won.map_or(String::new(), |w| format!(", won epoch {w}")),
                    host_name(other)
                )));
            }
            _ => {}
        }
        if let Some(w) = won {
            self.checks.live_releaser = Some((id, w));
        }
        if matches!(status, Status::Live | Status::Cloning) {
            self.checks.live_releaser = Some((id, won.unwrap_or(0)));
            // A backup that went live (every host but A started as one)
            // announces the VM's address before any output, so the
            // world's traffic reaches it.
            if id != 0 && !self.world.announced[i] {
                return Err(self.violation(
                    Invariant::AtMostOneLive,
                    format!(
                        "host {} releases an output as the live VM before it announced the VM's \
                     address",
                        host_name(id)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The guest's network state on host `i` holds every frame and
    /// answer the world got (or will get: they are on the wire): the
    /// execution that continues there produced them, and the same.
    fn check_guest_net(&mut self, i: usize, when: &str) -> Result<(), SimError> {
        let Some(machine) = self.hosts.slot[i].as_ref().and_then(|h| h.machine()) else {
            return Ok(());
        };
        let Some(g) = self.guest.net(machine) else {
            return Err(
                self.violation(Invariant::Harness, "cannot read the guest's ftg_net".into())
            );
        };
        let name = self.name(i);
        let r = &self.world.released;
        if g.sent < r.max {
            let last = r
                .frames
                .get(&r.max)
                .map_or_else(|| format!("frame {}", r.max), |f| f.describe());
            return Err(self.violation(
                Invariant::OutputConsistency(Output::Orphan),
                format!(
                    "{when}, host {name}'s guest has sent {} frames, but the world got {last}: an \
                 output the surviving execution never produced",
                    g.sent,
                ),
            ));
        }
        for seq in g.sent.saturating_sub(TX_WIN - 1).max(1)..=g.sent {
            let Some(seen) = r.frames.get(&seq) else {
                continue;
            };
            let mine = g.frames[(seq % TX_WIN) as usize];
            if mine != *seen {
                return Err(self.violation(
                    Invariant::OutputConsistency(Output::Orphan),
                    format!(
                        "{when}, host {name}'s guest sent {} where the world got {}",
                        mine.describe(),
                        seen.describe()
                    ),
                ));
            }
        }
        if let Some((&k, _)) = r.answers.last_key_value() {
            if g.next_req <= k {
                return Err(self.violation(
                    Invariant::OutputConsistency(Output::Orphan),
                    format!(
                        "{when}, host {name}'s guest expects request {} next, but the world got an \
                     answer to request {k}",
                        g.next_req
                    ),
                ));
            }
        }
        for (&k, &hash) in r.answers.range(g.next_req.saturating_sub(ANS_WIN)..) {
            let (kk, h) = g.answers[(k % ANS_WIN) as usize];
            if (kk, h) != (k, hash) {
                return Err(self.violation(
                    Invariant::OutputConsistency(Output::Orphan),
                    format!(
                        "{when}, host {name}'s guest answered request {k} with hash {h:#x} (its \
                     entry: request {kk}), the world got hash {hash:#x}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The invariants that hold at every step.
    pub(crate) fn check(&mut self) -> Result<(), SimError> {
        let mut alone = 0;
        for i in 0..2 {
            let Some(h) = &self.hosts.slot[i] else {
                continue;
            };
            let id = self.hosts.id[i];
            match h.status() {
                Status::Halted(why) if !why.code().is_expected() => {
                    let why = why.to_string();
                    return Err(self.violation(
                        Invariant::Determinism,
                        format!("host {} halted: {why}", host_name(id)),
                    ));
                }
                Status::Halted(HaltReason::NotCaughtUp) => {
                    self.restoring.cases.insert(case::NOT_CAUGHT_UP);
                }
                status @ (Status::Live | Status::Cloning) => {
                    alone += 1;
                    if id != 0 {
                        self.checks.took_over = true;
                    }
                    let (epoch, newest) = (h.epoch(), self.restoring.epoch);
                    if epoch != newest {
                        let status = status_text(status);
                        return Err(self.violation(
                            Invariant::AtMostOneLive,
                            format!(
                                "host {} runs alone ({status}) as a VM of epoch {epoch}, but the \
                                 pair is at epoch {newest}",
                                host_name(id)
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
        self.check_hand_over()?;
        if alone > 1 {
            return Err(self.violation(
                Invariant::AtMostOneLive,
                "both VMs run alone at once".into(),
            ));
        }
        if alone == 1 {
            self.checks.live_since.get_or_insert(self.now);
        }
        for i in 0..2 {
            let id = self.hosts.id[i];
            let is_live = self.hosts.slot[i]
                .as_ref()
                .is_some_and(|h| matches!(h.status(), Status::Live | Status::Cloning));
            if !is_live {
                self.checks.live_at.remove(&id);
            }
            if is_live && !self.checks.live_at.contains_key(&id) {
                self.checks.live_at.insert(id, self.now);
                self.checks.last_live = Some(id);
                if self.restoring.from_clone.contains(&id) {
                    self.restoring.cases.insert(case::CLONE_TOOK_OVER);
                }
                // A failover with no failure counted yet (a partition):
                // the pair has lost its redundancy all the same, so a
                // crash of this VM is a second failure.
                if self.checks.failures == 0 {
                    self.fail_at();
                }
                self.check_guest_net(i, "when it goes live")?;
                self.hand_over_went_live(i)?;
            }
            // Liveness of the network: a live VM answers the client (the
            // switch sends the client's frames to it).
            if let Some(&since) = self.checks.live_at.get(&id).filter(|_| is_live) {
                let client = &self.world.client;
                let last = since.max(client.answered_at);
                if self.now > last + LIVE_ANSWER_NS {
                    return Err(self.violation(
                        Invariant::Liveness(Progress::Client),
                        format!(
                            "host {} is live since {} ms, but the client's request {} has had no \
                         answer since {} ms (the switch sends the VM's frames to {})",
                            host_name(id),
                            since / MS,
                            client.request,
                            client.answered_at / MS,
                            self.world
                                .vm_host()
                                .map_or("both hosts", |h| host_name(self.hosts.id[h])),
                        ),
                    ));
                }
            }
        }
        let healthy = self.checks.failure_at.is_none() && self.is_pair();
        let client = &self.world.client;
        let last = client
            .started_at
            .max(client.answered_at)
            .max(self.checks.whole_since);
        if healthy && self.now > last + HEALTHY_ANSWER_NS {
            return Err(self.violation(Invariant::Liveness(Progress::Client), format!(
                "the pair is healthy, but the client's request {} has had no answer since {} ms",
                client.request,
                client.answered_at / MS
            )));
        }
        if let Some(deadline) = self.restoring.deadline.filter(|&d| self.now > d) {
            return Err(self.violation(
                Invariant::Liveness(Progress::Restore),
                format!(
                    "a restore began at {} ms and is not complete {} ms later, with no fault since",
                    (deadline - crate::clone::RESTORE_BOUND_NS) / MS,
                    crate::clone::RESTORE_BOUND_NS / MS,
                ),
            ));
        }
        Ok(())
    }

    /// A primary and a backup, connected.
    pub(crate) fn is_pair(&self) -> bool {
        let mut statuses: Vec<Status> = self.hosts.statuses().into_iter().flatten().collect();
        statuses.sort_by_key(Status::word);
        statuses == [Status::Backup, Status::Primary] && self.channel.is_open()
    }

    /// Liveness and the end-of-run checks.
    pub(crate) fn finish(&mut self) -> Result<Outcome, SimError> {
        let statuses = self.hosts.statuses();
        let any = |f: &dyn Fn(&Status) -> bool| statuses.iter().flatten().any(f);
        let ended = any(&|s| matches!(s, Status::Ended(_)));
        let live = any(&|s| matches!(s, Status::Live | Status::Cloning));
        let never_started = any(&|s| matches!(s, Status::Halted(HaltReason::NothingToTakeOver)));
        let healthy = self.is_pair();
        let longest_outage = Plan::longest_outage(&self.arbiter.outages);
        let failed_long_ago = self.checks.failure_at.is_some_and(|t| {
            self.now >= t + LIVENESS_BOUND_NS + longest_outage + self.checks.patience_ns
        });
        // Liveness is promised after a single failure only.
        let single = self.checks.failures <= 1;
        if single && !ended && !live && !never_started && !healthy && failed_long_ago {
            return Err(self.violation(
                Invariant::Liveness(Progress::Failover),
                format!(
                    "no VM is live {} ms after the failure: {} {}, {} {}",
                    (self.now - self.checks.failure_at.unwrap_or(0)) / MS,
                    self.name(0),
                    statuses[0].as_ref().map_or("crashed".into(), status_text),
                    self.name(1),
                    statuses[1].as_ref().map_or("crashed".into(), status_text),
                ),
            ));
        }
        let running_long = (live
            && self
                .checks
                .live_since
                .is_some_and(|t| self.now >= t + 2 * CONSOLE_STALL_NS))
            || (healthy && self.checks.failure_at.is_none());
        if running_long && self.now > self.console.grew_at + CONSOLE_STALL_NS {
            return Err(self.violation(
                Invariant::Liveness(Progress::Console),
                format!(
                    "the console has not grown since {} ms",
                    self.console.grew_at / MS
                ),
            ));
        }
        // The guest of the VM that runs on (the live one, else a primary
        // no other VM went live after) produced every frame the world got.
        let running = crate::host::runs_the_guest(&statuses);
        if let Some(i) = running {
            let alone = matches!(statuses[i], Some(Status::Live | Status::Cloning));
            if alone
                || self
                    .checks
                    .last_live
                    .is_none_or(|id| id == self.hosts.id[i])
            {
                self.check_guest_net(i, "at the end")?;
            }
        }
        self.check_disk()?;
        let replayed_entries = self.check_replay()?;
        let ticks_seen = self
            .console
            .bytes
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"tick "))
            .count() as u64;
        let status = |i: usize| statuses[i].as_ref().map_or("crashed".into(), status_text);
        Ok(Outcome {
            seed: self.seed,
            virtual_ns: self.now,
            plan: self.plan.clone(),
            a: status(0),
            b: status(1),
            hosts: [self.name(0), self.name(1)],
            console_bytes: self.console.bytes.len() as u64,
            ticks_seen,
            takeover: self.checks.took_over,
            replayed_entries,
            requests_answered: self.world.received.answers.len() as u64,
            frames_received: self.world.received.count,
            clones: self.restoring.snapshots,
            restores: self.restoring.completed,
            longest_restore_ns: self.restoring.longest_ns,
            hand_overs: self.migrating.hand_overs,
            backup_moves: self.migrating.backup_moves,
            placements: self.cluster.placements,
            beside_survivor: self.cluster.beside_survivor,
            clone_cases: self.restoring.cases.iter().copied().collect(),
            trace: std::mem::take(&mut self.trace),
        })
    }

    /// Every write the running VM saw complete is on the disk.
    fn check_disk(&self) -> Result<(), SimError> {
        for (i, h) in self.hosts.slot.iter().enumerate() {
            let Some(h) = h else { continue };
            if !h.is_running() {
                continue;
            }
            let Some(machine) = h.machine() else {
                continue;
            };
            let Some(table) = self.guest.table(machine) else {
                return Err(self.violation(
                    Invariant::Harness,
                    "cannot read the guest's ftg_table".into(),
                ));
            };
            for (s, entry) in table.iter().enumerate() {
                let Some((n, hash)) = *entry else {
                    continue;
                };
                let offset = (1 + s) * SECTOR;
                let disk = self.disks.of(i);
                let sector = &self.disks.images[disk][offset..offset + SECTOR];
                let expected = (0..SECTOR).all(|b| sector[b] == record_byte(n, hash, b as u32));
                // A later write to the sector may be on the disk already,
                // its completion not yet seen by the guest.
                let mut later = [0u8; 8];
                later.copy_from_slice(&sector[8..16]);
                let newer = u64::from_le_bytes(later) > n
                    && self.disks.writes[disk]
                        .values()
                        .any(|(o, d)| *o == offset as u64 && d[..] == *sector);
                if !expected && !newer {
                    return Err(self.violation(Invariant::NoLostWrite, format!(
                        "sector {} lacks the write of tick {n} whose completion host {}'s guest \
                         saw: an acknowledged write is lost",
                        1 + s,
                        self.name(i)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Each pairing's whole log, as its primary sent it, replays from
    /// where it starts (the machine as built, or the clone's snapshot)
    /// with every checkpoint matching, and where a hand-over's new
    /// primary went live the replay has its state; how many entries they
    /// have.
    fn check_replay(&self) -> Result<u64, SimError> {
        let mut entries = 0;
        for pairing in &self.restoring.logs {
            let continued = self
                .migrating
                .continued
                .iter()
                .find(|c| c.epoch == pairing.epoch);
            let start = pairing.snapshot.as_ref().map(|(s, d)| (s, *d));
            let replayed = self.replay_pairing(&pairing.log, start, continued);
            entries += replayed.map_err(|(invariant, what)| {
                self.violation(
                    invariant,
                    format!("the log of epoch {}: {what}", pairing.epoch),
                )
            })?;
        }
        Ok(entries)
    }

    /// Replay a pairing's log from the machine as built, or from a
    /// clone's snapshot (the log's header must name its digest), as a
    /// backup replays it; at `continued`'s entry the state must be the
    /// one the hand-over's new primary continued from.
    fn replay_pairing(
        &self,
        log: &[u8],
        start: Option<(&Snapshot, Digest)>,
        continued: Option<&Continued>,
    ) -> Result<u64, (Invariant, String)> {
        let bad = |what: String| (Invariant::Determinism, what);
        let mut decoder = LogDecoder::default();
        decoder.push(log);
        let header = match decoder.header() {
            Ok(Some(header)) => header.clone(),
            // The snapshot never reached the new backup, or the primary
            // died before its first message: no log.
            Ok(None) if log.is_empty() => return Ok(0),
            Ok(None) => return Err(bad("the log has no whole header".into())),
            Err(e) => return Err(bad(format!("the log's header: {e}"))),
        };
        let config = header
            .machine
            .config(self.options.engine, &ImageMap::of([&self.guest.image]))
            .map_err(|e| bad(format!("the log's machine: {e}")))?;
        let mut replay = match start {
            None => ReplayMachine::new(config).map_err(|e| bad(format!("the machine: {e}")))?,
            Some((snapshot, digest)) => {
                if header.initial_digest != digest.0 {
                    return Err(bad(
                        "the log does not start from the clone's snapshot".into()
                    ));
                }
                ReplayMachine::from_snapshot(config, snapshot)
                    .map_err(|e| bad(format!("restoring the snapshot: {e}")))?
            }
        };
        if start.is_none() && replay.machine().digest().0 != header.initial_digest {
            return Err(bad(
                "the machine as built is not the log's first state".into()
            ));
        }
        let probe = |replay: &ReplayMachine, n: u64| -> Result<(), (Invariant, String)> {
            let Some(c) = continued.filter(|c| c.entries == n) else {
                return Ok(());
            };
            let found = replay.machine().digest();
            if found != c.digest {
                return Err((
                    Invariant::HandOver,
                    format!(
                        "{} went live by a hand-over with state digest {}, but the log's first {n} \
                         entries lead to {found}",
                        host_name(c.vm),
                        c.digest
                    ),
                ));
            }
            Ok(())
        };
        probe(&replay, 0)?;
        loop {
            let entry = match decoder.next() {
                Ok(Some(entry)) => entry,
                Ok(None) => return Ok(decoder.next_seq()),
                Err(e) => return Err(bad(format!("the log: {e}"))),
            };
            match replay.apply(&entry, &mut |_| {}) {
                Ok(Applied::Checkpoint { logged, found }) if logged != found => {
                    return Err(bad(format!(
                        "entry {} at icount {}: the state digest is {found}, the log's is {logged}",
                        entry.seq, entry.icount
                    )));
                }
                Ok(_) if matches!(entry.event, Event::End(_)) => return Ok(decoder.next_seq()),
                Ok(_) => {}
                Err(e) => return Err(bad(format!("the log does not replay: {e}"))),
            }
            probe(&replay, decoder.next_seq())?;
        }
    }
}
