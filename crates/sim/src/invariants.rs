//! The invariants of ARCHITECTURE.md, "Invariants": what is checked after every
//! event, when a VM goes live, and at the end (with liveness). The checks made
//! where an output is released (the console, the world's frames, the disk) live
//! with those outputs and report here.

use ftvm_board::ImageMap;
use ftvm_replay::{LogError, ReplayError, Replayer};

use crate::guest::{ANS_WIN, SECTOR, TX_WIN, record_byte};
use crate::host::{HaltReason, Status, status_text};
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
    /// 3. At most one VM live; once a VM released an output while live,
    ///    the other releases nothing more; only a live VM announces the
    ///    VM's address, and a new live VM does so before its outputs.
    AtMostOneLive,
    /// 4. No acknowledged write lost: the guest reports `BAD`, or the disk
    ///    lacks a write whose completion the surviving execution saw.
    NoLostWrite,
    /// The pair makes progress: after a single failure some VM goes
    /// live, a running VM's console grows, the client gets answers.
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
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invariant::Determinism => f.write_str("determinism"),
            Invariant::OutputConsistency(o) => write!(f, "output consistency: {o}"),
            Invariant::AtMostOneLive => f.write_str("at most one live"),
            Invariant::NoLostWrite => f.write_str("no lost write"),
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
        })
    }
}

/// What the checks remember between events.
#[derive(Default)]
pub(crate) struct Checks {
    /// The host that released an output while live.
    live_releaser: Option<usize>,
    /// Each host won the test-and-set: what it releases from then on is
    /// the live VM's output, even if it is stopped in the same breath and
    /// so is never seen live.
    won: [bool; 2],
    took_over: bool,
    /// The first failure, and how many there were.
    failure_at: Option<u64>,
    failures: u32,
    /// When some VM was first seen live.
    live_since: Option<u64>,
    /// When each host was first seen live.
    live_at: [Option<u64>; 2],
}

impl Sim {
    /// A failure: liveness is measured from the first, and promised after
    /// a single one only.
    pub(crate) fn fail_at(&mut self) {
        self.checks.failures += 1;
        if self.checks.failure_at.is_none() {
            self.checks.failure_at = Some(self.now);
        }
    }

    /// Host `i` won the test-and-set.
    pub(crate) fn won_test_and_set(&mut self, i: usize) {
        self.checks.won[i] = true;
    }

    /// Host `i` releases an output to the world.
    pub(crate) fn released(&mut self, i: usize, status: &Status) -> Result<(), SimError> {
        match self.checks.live_releaser {
            Some(other) if other != i => {
                return Err(self.violation(Invariant::AtMostOneLive, format!(
                    "host {} releases an output ({}) after host {} released outputs as the live VM",
                    host_name(i),
                    status_text(status),
                    host_name(other)
                )));
            }
            _ => {}
        }
        if self.checks.won[i] {
            self.checks.live_releaser = Some(i);
        }
        if *status == Status::Live {
            self.checks.live_releaser = Some(i);
            // A backup that went live announces the VM's address before
            // any output, so the world's traffic reaches it.
            if i == 1 && !self.world.announced[i] {
                return Err(self.violation(
                    Invariant::AtMostOneLive,
                    format!(
                        "host {} releases an output as the live VM before it announced the VM's \
                     address",
                        host_name(i)
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
        let name = host_name(i);
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
        let mut live = 0;
        for i in 0..2 {
            let Some(h) = &self.hosts.slot[i] else {
                continue;
            };
            match h.status() {
                Status::Halted(why) if !why.code().is_expected() => {
                    let why = why.to_string();
                    return Err(self.violation(
                        Invariant::Determinism,
                        format!("host {} halted: {why}", host_name(i)),
                    ));
                }
                Status::Live => {
                    live += 1;
                    if i == 1 {
                        self.checks.took_over = true;
                    }
                }
                _ => {}
            }
        }
        if live > 1 {
            return Err(
                self.violation(Invariant::AtMostOneLive, "both VMs are live at once".into())
            );
        }
        if live == 1 {
            self.checks.live_since.get_or_insert(self.now);
        }
        for i in 0..2 {
            let is_live = self.hosts.slot[i]
                .as_ref()
                .is_some_and(|h| *h.status() == Status::Live);
            if is_live && self.checks.live_at[i].is_none() {
                self.checks.live_at[i] = Some(self.now);
                // A failover with no failure counted yet (a partition):
                // the pair has lost its redundancy all the same, so a
                // crash of this VM is a second failure.
                if self.checks.failures == 0 {
                    self.fail_at();
                }
                self.check_guest_net(i, "when it goes live")?;
            }
            // Liveness of the network: a live VM answers the client (the
            // switch sends the client's frames to it).
            if let Some(since) = self.checks.live_at[i].filter(|_| is_live) {
                let client = &self.world.client;
                let last = since.max(client.answered_at);
                if self.now > last + LIVE_ANSWER_NS {
                    return Err(self.violation(
                        Invariant::Liveness(Progress::Client),
                        format!(
                            "host {} is live since {} ms, but the client's request {} has had no \
                         answer since {} ms (the switch sends the VM's frames to {})",
                            host_name(i),
                            since / MS,
                            client.request,
                            client.answered_at / MS,
                            self.world.vm_host().map_or("both hosts", host_name),
                        ),
                    ));
                }
            }
        }
        let healthy = self.checks.failure_at.is_none()
            && self.channel.is_open()
            && matches!(
                self.hosts.statuses(),
                [Some(Status::Primary), Some(Status::Backup)]
            );
        let client = &self.world.client;
        let last = client.started_at.max(client.answered_at);
        if healthy && self.now > last + HEALTHY_ANSWER_NS {
            return Err(self.violation(Invariant::Liveness(Progress::Client), format!(
                "the pair is healthy, but the client's request {} has had no answer since {} ms",
                client.request,
                client.answered_at / MS
            )));
        }
        Ok(())
    }

    /// Liveness and the end-of-run checks.
    pub(crate) fn finish(&mut self) -> Result<Outcome, SimError> {
        let statuses = self.hosts.statuses();
        let any = |f: &dyn Fn(&Status) -> bool| statuses.iter().flatten().any(f);
        let ended = any(&|s| matches!(s, Status::Ended(_)));
        let live = any(&|s| *s == Status::Live);
        let never_started = any(&|s| matches!(s, Status::Halted(HaltReason::NothingToTakeOver)));
        let healthy = matches!(statuses, [Some(Status::Primary), Some(Status::Backup)])
            && self.channel.is_open();
        let longest_outage = Plan::longest_outage(&self.arbiter.outages);
        let failed_long_ago = self
            .checks
            .failure_at
            .is_some_and(|t| self.now >= t + LIVENESS_BOUND_NS + longest_outage);
        // Liveness is promised after a single failure only.
        let single = self.checks.failures <= 1;
        if single && !ended && !live && !never_started && !healthy && failed_long_ago {
            return Err(self.violation(
                Invariant::Liveness(Progress::Failover),
                format!(
                    "no VM is live {} ms after the failure: A {}, B {}",
                    (self.now - self.checks.failure_at.unwrap_or(0)) / MS,
                    statuses[0].as_ref().map_or("crashed".into(), status_text),
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
        // whose backup never went live) produced every frame the world got.
        let running = [Status::Live, Status::Primary, Status::Arbitrating]
            .iter()
            .find_map(|want| statuses.iter().position(|s| s.as_ref() == Some(want)));
        if let Some(i) = running {
            if statuses[i] == Some(Status::Live) || self.checks.live_at[1 - i].is_none() {
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
        Ok(Outcome {
            seed: self.seed,
            virtual_ns: self.now,
            plan: self.plan.clone(),
            a: statuses[0].as_ref().map_or("crashed".into(), status_text),
            b: statuses[1].as_ref().map_or("crashed".into(), status_text),
            console_bytes: self.console.bytes.len() as u64,
            ticks_seen,
            takeover: self.checks.took_over,
            replayed_entries,
            requests_answered: self.world.received.answers.len() as u64,
            frames_received: self.world.received.count,
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
                        host_name(i)
                    )));
                }
            }
        }
        Ok(())
    }

    /// The primary's whole log replays with every checkpoint matching;
    /// how many entries it has.
    fn check_replay(&self) -> Result<u64, SimError> {
        let log = &self.channel.primary_log;
        match Replayer::new(
            &log[..],
            self.options.engine,
            &ImageMap::of([&self.guest.image]),
        ) {
            Ok(mut replayer) => match replayer.run(&mut |_| {}) {
                Ok(done) => Ok(done.entries),
                Err(ReplayError::Log(LogError::NoEnd { next })) => Ok(next),
                Err(e) => Err(self.violation(
                    Invariant::Determinism,
                    format!("the primary's log does not replay: {e}"),
                )),
            },
            Err(ReplayError::Log(_)) if log.is_empty() => Ok(0),
            Err(e) => Err(self.violation(
                Invariant::Determinism,
                format!("the primary's log does not open: {e}"),
            )),
        }
    }
}
