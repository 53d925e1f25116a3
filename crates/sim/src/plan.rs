//! What a seed decides before the run starts: the options a caller
//! chooses, the random stream, and the fault plan drawn from the seed.

use crate::host::DiskMode;
use crate::{Engine, MS};

/// How long after a failure some VM must be live (or the pair ended),
/// on top of the longest arbiter outage.
pub(crate) const LIVENESS_BOUND_NS: u64 = 1_000 * MS;

/// A tiny deterministic PRNG (xorshift64*, seeded through splitmix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi` (`lo` if the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Deliberately broken variants, to show that the checks can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// A middlebox acknowledges every log message to the primary the
    /// moment it is sent, so outputs leave before the backup holds the
    /// entries they depend on (the output rule is defeated).
    AckOnSend,
    /// The arbiter is not atomic: every test-and-set wins.
    ArbiterAlwaysWins,
    /// The disk acknowledges one write in twenty without performing it.
    DiskLosesWrites,
    /// A backup that goes live forgets to re-issue the transmits that
    /// have no completion in the log (the frames the old primary may not
    /// have sent): the world's stream of the guest's frames has a gap.
    NoReissue,
    /// The switch never moves the VM's address to another port once it
    /// learnt one (it ignores announcements): after a failover the
    /// client's requests go to the dead primary's port. The real switch
    /// runs; only its learning is kept from seeing an address move.
    StaleSwitch,
    /// A new backup is told it protects the VM ([`Message::Protected`]
    /// delivered to it by a middlebox) right after the snapshot, before
    /// its primary holds outputs for it: when the primary dies while the
    /// clone catches up, the clone takes over although outputs it never
    /// had the log of reached the world.
    ///
    /// [`Message::Protected`]: ftvm_ft::channel::Message::Protected
    CloneJoinsEarly,
    /// A clone misses the log its primary wrote while the snapshot was on
    /// its way: the entries of the log's first message (those logged
    /// between the snapshot and the end of the transfer) are cut out by a
    /// middlebox that renumbers the rest, and the new backup's
    /// acknowledgements, so that no sequence check notices.
    CloneDropsLogTail,
    /// A migrated primary continues from the wrong icount: when the
    /// primary is asked to hand over, a middlebox delivers `HandOver` to
    /// the backup at once, ahead of the log the primary still had in
    /// flight and of the entries it flushes as it stops. The backup
    /// freezes short of the point where the primary stopped, drains what
    /// it holds and goes live there. Every seed migrates with it (its
    /// first migration the primary's), as with `Options::migrations`.
    MigratedPrimaryWrongIcount,
    /// The agent places a new backup on its survivor's host whenever
    /// that host has room: it asks [`place`] with its own registration
    /// only, not the cluster's.
    ///
    /// [`place`]: ftvm_cluster::placement::place
    SameHostBackup,
}

impl Broken {
    /// Every variant, with its name for `--broken`.
    pub const ALL: [(Broken, &'static str); 9] = [
        (Broken::AckOnSend, "ack-on-send"),
        (Broken::ArbiterAlwaysWins, "arbiter-always-wins"),
        (Broken::DiskLosesWrites, "disk-loses-writes"),
        (Broken::NoReissue, "no-reissue"),
        (Broken::StaleSwitch, "stale-switch"),
        (Broken::CloneJoinsEarly, "clone-joins-early"),
        (Broken::CloneDropsLogTail, "clone-drops-log-tail"),
        (
            Broken::MigratedPrimaryWrongIcount,
            "migrated-primary-wrong-icount",
        ),
        (Broken::SameHostBackup, "same-host-backup"),
    ];

    pub fn name(self) -> &'static str {
        Broken::ALL
            .iter()
            .find(|(b, _)| *b == self)
            .map_or("?", |(_, name)| name)
    }

    pub fn from_name(name: &str) -> Option<Broken> {
        Broken::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(b, _)| *b)
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Inject faults (off: a healthy pair that is stopped at the end).
    pub faults: bool,
    pub broken: Option<Broken>,
    /// Record an event trace (shown with a failure).
    pub trace: bool,
    /// Every seed gets a slow link (5-20 ms) and corrupt frames, so that
    /// connections close while acknowledgements are still in flight.
    pub slow_and_corrupt: bool,
    /// Every seed fails over early (a crash, on a shared disk) and every
    /// restore of redundancy is struck (the survivor or the new backup
    /// crashes while the snapshot is on its way, while the clone catches
    /// up, or after it protects the VM).
    pub restore_faults: bool,
    /// Every seed migrates the primary or the backup early (once or
    /// twice), most migrations struck by a crash in the middle.
    pub migrations: bool,
    /// Hold hand-overs to the letter of issue 13: the new primary
    /// continues from the very icount at which the old one stopped, and
    /// re-issues no output (I/O quiesced at the switch-over); `HandOver`
    /// names only entries that were sent. On by default; off, only the
    /// weaker checks hold (the new primary goes live where the log the old
    /// one sent ends), as before `Node::hand_over` logged its stop point
    /// and waited for I/O in flight.
    pub strict_hand_over: bool,
    pub engine: Engine,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            faults: true,
            broken: None,
            trace: false,
            slow_and_corrupt: false,
            restore_faults: false,
            migrations: false,
            strict_hand_over: true,
            engine: Engine::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Partition {
    /// Frames wait and arrive when it heals.
    Hold,
    /// Frames are lost (the next one after them fails to authenticate).
    Drop,
}

/// How a host dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CrashMode {
    /// The process died, its host lives: what it sent arrives, then its
    /// kernel closes the connection.
    Process,
    /// The host died, with every VM on it (module `cluster`): what it
    /// sent may still arrive, the peer only notices the silence.
    Host,
    /// The host died with its socket buffers (and every VM on it): what
    /// it had in flight is lost too.
    HostAndBuffers,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The VM in this slot crashes, or its host (how: drawn when it
    /// strikes).
    Crash(usize),
    /// VM `id` (0 = A, 1 = B, 2 = C, ...) crashes, or its host, if it is
    /// still there: a fault of a restore or a migration, aimed at a VM of
    /// that pairing.
    CrashHost {
        id: usize,
        mode: CrashMode,
    },
    /// The channel is cut until `until`: toward host A if `cut[0]`,
    /// toward host B if `cut[1]`.
    Cut {
        mode: Partition,
        until: u64,
        cut: [bool; 2],
    },
    Stop,
}

/// What strikes a restore, and when: a crash of the survivor (the
/// clone's primary) or of the new backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloneFault {
    /// While the snapshot is on its way: at a point of the transfer
    /// (`at` in thousandths of its length).
    InTransfer { survivor: bool, at: u64 },
    /// While the new backup catches up: this long after it restored the
    /// snapshot (a catch-up takes about a round trip: the new backup's
    /// first acknowledgement shows it within the lag bound).
    InCatchUp { survivor: bool, after_ns: u64 },
    /// Once the new backup protects the VM: this long after.
    AfterRestore { survivor: bool, after_ns: u64 },
}

/// A restore of redundancy after a failover.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Restore {
    /// From the moment a VM runs alone to the clone.
    pub delay_ns: u64,
    pub fault: Option<(CloneFault, CrashMode)>,
}

/// The logging channel's faults, per direction.
#[derive(Clone, Default)]
pub(crate) struct Noise {
    pub latency_ns: u64,
    pub jitter_ns: u64,
    /// Per frame probabilities.
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub corrupt: f64,
}

/// The fault plan of a seed, drawn from its main stream.
pub(crate) struct Plan {
    /// One line per decision, shown with the outcome or a violation.
    pub lines: Vec<String>,
    pub disk_mode: DiskMode,
    pub noise: Noise,
    /// (host, from, to): the host cannot reach the arbiter.
    pub arbiter_outages: Vec<(usize, u64, u64)>,
    /// The faults, in the order they are to be scheduled.
    pub faults: Vec<(u64, Fault)>,
    /// Restores of redundancy, in order: after each failover the VM that
    /// runs alone is cloned into a new backup (none with private disks:
    /// a clone does not copy a disk).
    pub restores: Vec<Restore>,
    /// How long the clone's link takes to carry a byte of the snapshot.
    pub clone_ps_per_byte: u64,
    pub end_ns: u64,
}

impl Plan {
    pub fn draw(rng: &mut Rng, options: &Options) -> Plan {
        let mut plan = Plan {
            lines: Vec::new(),
            disk_mode: DiskMode::Shared,
            noise: Noise::default(),
            arbiter_outages: Vec::new(),
            faults: Vec::new(),
            restores: Vec::new(),
            clone_ps_per_byte: 0,
            end_ns: 0,
        };
        let mut duration = rng.range(600, 1_400) * MS;
        if rng.chance(0.3) && !options.restore_faults {
            plan.disk_mode = DiskMode::Private;
            plan.lines.push("private disks".into());
        }
        // Mostly a LAN; sometimes a slow link (acknowledgements long in flight).
        let stress = options.slow_and_corrupt;
        let slow = stress || rng.chance(0.15);
        let noise = &mut plan.noise;
        noise.latency_ns = if slow {
            rng.range(5_000_000, 20_000_000)
        } else {
            rng.range(20_000, 2_000_000)
        };
        noise.jitter_ns = rng.range(0, noise.latency_ns);
        plan.lines.push(format!(
            "latency {} us + jitter {} us",
            noise.latency_ns / 1000,
            noise.jitter_ns / 1000
        ));
        if !options.faults {
            plan.faults.push((duration - 100 * MS, Fault::Stop));
            plan.lines.push("no faults; stop".into());
            plan.end_ns = duration;
            return plan;
        }
        // Frame faults close the connection; on a slow link the backup then
        // goes live while its acknowledgements are still in flight, a known
        // failure (tests/seeds.rs) kept out of the default mix: only
        // `slow_and_corrupt` combines the two.
        if stress || (!slow && rng.chance(0.25)) {
            let p = 1.0 / rng.range(300, 5_000) as f64;
            match if stress { 3 } else { rng.range(0, 4) } {
                0 => noise.loss = p,
                1 => noise.duplicate = p,
                2 => noise.reorder = p,
                _ => noise.corrupt = p,
            }
            plan.lines.push(format!(
                "frame faults: loss {:.5} dup {:.5} reorder {:.5} corrupt {:.5}",
                noise.loss, noise.duplicate, noise.reorder, noise.corrupt
            ));
        }
        let mut longest_outage = 0;
        if rng.chance(0.3) {
            let who = rng.range(0, 3) as usize; // 2: both
            let from = rng.range(0, duration);
            let len = rng.range(50, 800) * MS;
            longest_outage = len;
            for host in 0..2 {
                if who == 2 || who == host {
                    plan.arbiter_outages.push((host, from, from + len));
                }
            }
            plan.lines.push(format!(
                "arbiter unreachable for {} from {} ms for {} ms",
                ["A", "B", "both"][who],
                from / MS,
                len / MS
            ));
        }
        // Early faults matter most (before the header, the first acks, ...).
        let at = if rng.chance(0.2) {
            rng.range(0, 30 * MS)
        } else {
            rng.range(0, duration - 100 * MS)
        };
        let fault = match rng.range(0, 100) {
            0..=14 => None,
            15..=39 => Some(Fault::Crash(0)),
            40..=54 => Some(Fault::Crash(1)),
            55..=69 => {
                let len = rng.range(1, 600) * MS;
                let mode = if rng.chance(0.5) {
                    Partition::Hold
                } else {
                    Partition::Drop
                };
                let cut = match rng.range(0, 4) {
                    0 => [true, false],
                    1 => [false, true],
                    _ => [true, true],
                };
                Some(Fault::Cut {
                    mode,
                    until: at + len,
                    cut,
                })
            }
            70..=79 => Some(Fault::Cut {
                mode: Partition::Drop,
                until: u64::MAX,
                cut: [true, true],
            }),
            _ => Some(Fault::Stop),
        };
        let (at, fault) = if options.restore_faults {
            let at = rng.range(0, 200 * MS);
            (at, Some(Fault::Crash(rng.range(0, 2) as usize)))
        } else {
            (at, fault)
        };
        if let Some(fault) = fault {
            plan.lines
                .push(format!("{fault:?} at {:.3} ms", at as f64 / 1e6));
            if !matches!(fault, Fault::Stop) {
                duration = duration.max(at + LIVENESS_BOUND_NS + longest_outage + 300 * MS);
            }
            plan.faults.push((at, fault));
        }
        // Restores of redundancy, each maybe struck by a fault of its own.
        if plan.disk_mode == DiskMode::Shared && (rng.chance(0.9) || options.restore_faults) {
            // 2 to 40 MB/s: a snapshot of the guest takes milliseconds.
            plan.clone_ps_per_byte = rng.range(25_000, 500_000);
            let mut line = format!(
                "restores over a {:.1} MB/s link:",
                1e6 / plan.clone_ps_per_byte as f64
            );
            for _ in 0..3 {
                let delay_ns = rng.range(50, 300) * MS;
                let survivor = rng.chance(0.5);
                let kind = match rng.range(0, 100) {
                    k if options.restore_faults => 30 + k * 70 / 100,
                    k => k,
                };
                let round_trip = 2 * plan.noise.latency_ns + plan.noise.jitter_ns;
                let fault = match kind {
                    0..=29 => None,
                    30..=49 => Some(CloneFault::InTransfer {
                        survivor,
                        at: rng.range(0, 1000),
                    }),
                    50..=79 => Some(CloneFault::InCatchUp {
                        survivor,
                        after_ns: rng.range(0, round_trip + MS),
                    }),
                    _ => Some(CloneFault::AfterRestore {
                        survivor,
                        after_ns: rng.range(10, 300) * MS,
                    }),
                };
                // With restore faults, mostly the crash that loses what was
                // in flight: the one a clone must not take over from.
                let mode = match rng.range(0, 6) {
                    0 => CrashMode::Process,
                    1 => CrashMode::Host,
                    2 | 3 if !options.restore_faults => CrashMode::Process,
                    4 if !options.restore_faults => CrashMode::Host,
                    _ => CrashMode::HostAndBuffers,
                };
                line.push_str(&format!(" after {} ms", delay_ns / MS));
                if let Some(fault) = fault {
                    line.push_str(&format!(" ({fault:?} {mode:?})"));
                }
                plan.restores.push(Restore {
                    delay_ns,
                    fault: fault.map(|f| (f, mode)),
                });
            }
            plan.lines.push(line);
            if options.restore_faults {
                duration = duration.max(plan.faults.first().map_or(0, |f| f.0) + 2_000 * MS);
            }
            // A restore struck after it completed is followed by another
            // failover, which liveness covers too: the run lasts for it.
            if let (
                Some((at, fault)),
                Some(Restore {
                    delay_ns,
                    fault: Some((CloneFault::AfterRestore { after_ns, .. }, _)),
                }),
            ) = (plan.faults.first(), plan.restores.first())
            {
                if !matches!(fault, Fault::Stop) {
                    duration = duration.max(
                        at + 700 * MS
                            + delay_ns
                            + 200 * MS
                            + after_ns
                            + LIVENESS_BOUND_NS
                            + longest_outage,
                    );
                }
            }
        }
        // Sometimes a second fault: only the safety invariants are
        // promised then, not liveness.
        if rng.chance(0.15) {
            let at = rng.range(0, duration);
            let fault = match rng.range(0, 4) {
                0 => Fault::Crash(0),
                1 => Fault::Crash(1),
                2 => Fault::Stop,
                _ => Fault::Cut {
                    mode: Partition::Hold,
                    until: at + rng.range(1, 400) * MS,
                    cut: [true, true],
                },
            };
            plan.lines
                .push(format!("then {fault:?} at {:.3} ms", at as f64 / 1e6));
            plan.faults.push((at, fault));
        }
        plan.end_ns = duration;
        plan.lines.push(format!("run {} ms", duration / MS));
        plan
    }

    /// The longest time a host cannot reach the arbiter.
    pub fn longest_outage(outages: &[(usize, u64, u64)]) -> u64 {
        outages
            .iter()
            .map(|&(_, from, to)| to - from)
            .max()
            .unwrap_or(0)
    }
}

/// The world's network, drawn from the world's own stream: the links
/// toward the VM's hosts have latency and sometimes lose or duplicate
/// frames; the client starts a little after the pair.
pub(crate) struct WorldPlan {
    pub latency_ns: u64,
    pub jitter_ns: u64,
    pub loss: f64,
    pub duplicate: f64,
    pub started_at: u64,
    pub line: String,
}

impl WorldPlan {
    pub fn draw(rng: &mut Rng, options: &Options) -> WorldPlan {
        let latency_ns = rng.range(20_000, 1_000_000);
        let jitter_ns = rng.range(0, latency_ns);
        let mut loss = 0.0;
        let mut duplicate = 0.0;
        if options.faults && rng.chance(0.3) {
            loss = 1.0 / rng.range(5, 50) as f64;
        }
        if options.faults && rng.chance(0.2) {
            duplicate = 1.0 / rng.range(5, 50) as f64;
        }
        let started_at = rng.range(MS, 10 * MS);
        let line = format!(
            "world network {} us + jitter {} us, loss {:.3} dup {:.3}",
            latency_ns / 1000,
            jitter_ns / 1000,
            loss,
            duplicate
        );
        WorldPlan {
            latency_ns,
            jitter_ns,
            loss,
            duplicate,
            started_at,
            line,
        }
    }
}
