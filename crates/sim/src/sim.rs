//! The simulation: its state, grouped by the part of the world it models,
//! and the event loop in virtual time.

use std::collections::BTreeMap;

use ftvm_board::IoRequest;
use ftvm_ft::channel::channel_key;
use ftvm_ft::golive::Verdict;

use crate::channel::Channel;
use crate::clone::Restoring;
use crate::cluster::Cluster;
use crate::guest::Guest;
use crate::host::{Arbiter, Hosts};
use crate::invariants::Checks;
use crate::invariants::{Invariant, Progress};
use crate::io::{Console, Disks};
use crate::migrate::Migrating;
use crate::plan::{Fault, Plan};
use crate::world::World;
use crate::{MS, Options, Outcome, Rng, SimError, rerun_command};

#[derive(Debug)]
pub(crate) enum Event {
    Fault(Fault),
    /// Frame bytes for host `to`, sent on connection generation `generation`.
    Deliver {
        to: usize,
        generation: u64,
        bytes: Vec<u8>,
    },
    IoDone {
        host: usize,
        incarnation: u64,
        request: Box<IoRequest>,
        write_on_completion: bool,
    },
    Verdict {
        host: usize,
        incarnation: u64,
        verdict: Verdict,
    },
    /// The connection's close reaches `host`.
    Closed {
        host: usize,
        incarnation: u64,
        generation: u64,
    },
    /// The client's timer: send (again) its current request, if this
    /// timer is still the current one.
    Client {
        generation: u64,
    },
    /// A frame from the switch reaches host `host`'s port.
    FrameToHost {
        host: usize,
        frame: Vec<u8>,
    },
    /// A frame that came into the switch through the port of host `from`
    /// (its id, not its slot) reaches the world.
    FrameToWorld {
        from: usize,
        frame: Vec<u8>,
    },
    /// Time to restore redundancy: clone the VM that runs alone (again, if
    /// it was busy with I/O).
    Restore,
    /// The clone's sender has written its last message: it writes the
    /// next (or, after the last, hands the connection to the log).
    CloneStream {
        clone: u64,
    },
    /// The new backup's host checks that the snapshot still comes.
    CloneWait {
        clone: u64,
    },
    /// Time for migration `index` of the plan (try `tries`: it waits for
    /// a whole pair).
    Migrate {
        index: usize,
        tries: u32,
    },
}

/// Events in (virtual time, order of scheduling).
#[derive(Default)]
pub(crate) struct Queue {
    events: BTreeMap<(u64, u64), Event>,
    scheduled: u64,
}

pub(crate) struct Sim {
    pub seed: u64,
    pub options: Options,
    /// The main stream: the plan, the channel's faults, crashes, the
    /// disk's timing, entropy. (The world has its own.)
    pub rng: Rng,
    pub now: u64,
    pub end_ns: u64,
    pub queue: Queue,
    pub hosts: Hosts,
    pub channel: Channel,
    pub arbiter: Arbiter,
    pub disks: Disks,
    pub console: Console,
    pub world: World,
    pub checks: Checks,
    pub guest: Guest,
    /// Restoring redundancy: clones, and each pairing's log.
    pub restoring: Restoring,
    /// The physical hosts and where each VM runs.
    pub cluster: Cluster,
    /// Planned migrations of either VM.
    pub migrating: Migrating,
    /// The seed's plan, one line per decision.
    pub plan: Vec<String>,
    /// The event trace (with `Options::trace`).
    pub trace: Vec<String>,
}

/// The name of host `id` (0 = A, the first primary; 1 = B, its backup;
/// then each new backup of a restore, in order).
pub(crate) fn host_name(id: usize) -> &'static str {
    const NAMES: [&str; 26] = [
        "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P", "Q", "R",
        "S", "T", "U", "V", "W", "X", "Y", "Z",
    ];
    NAMES.get(id).copied().unwrap_or("?")
}

impl Sim {
    fn new(seed: u64, options: Options) -> Result<Sim, SimError> {
        let guest = Guest::load(seed)?;
        let mut rng = Rng::new(seed);
        let key = channel_key(&rng.bytes(32));
        let channel = Channel::connect(&mut rng, key, 1, 0, [0, 0])
            .map_err(|what| SimError::Setup { seed, what })?;
        let mut plan = Plan::draw(&mut rng, &options);
        let world = World::new(seed, &options);
        // The cluster and the migrations have a stream of their own, so
        // that they do not shift the plan's other faults.
        let mut cluster_rng = Rng::new(seed ^ 0x636c_7573_7465_7221);
        let cluster = Cluster::draw(&mut cluster_rng);
        let end_ns = plan.end_ns;
        let (migrations, line) = crate::migrate::draw(
            &mut cluster_rng,
            &options,
            &plan.noise,
            plan.disk_mode,
            &mut plan.end_ns,
        );
        let mut restoring = Restoring::new(plan.restores, plan.clone_ps_per_byte);
        restoring.set_link(cluster_rng.range(25_000, 500_000));
        plan.lines.push(cluster.line());
        plan.lines.extend(line);
        if plan.end_ns != end_ns {
            plan.lines.push(format!("run {} ms", plan.end_ns / MS));
        }
        let mut sim = Sim {
            seed,
            now: 0,
            end_ns: plan.end_ns,
            queue: Queue::default(),
            hosts: Hosts {
                slot: [None, None],
                incarnation: [0, 0],
                id: [0, 1],
                next_id: 2,
            },
            channel,
            arbiter: Arbiter {
                winners: BTreeMap::new(),
                outages: plan.arbiter_outages,
            },
            restoring,
            cluster,
            migrating: Migrating::new(migrations),
            disks: Disks::new(plan.disk_mode),
            console: Console::default(),
            checks: Checks::default(),
            plan: plan.lines,
            trace: Vec::new(),
            guest,
            rng,
            options,
            world,
        };
        sim.channel.set_noise(plan.noise);
        for (at, fault) in plan.faults {
            sim.schedule(at, Event::Fault(fault));
        }
        for index in 0..sim.migrating.plan.len() {
            let at = sim.migrating.plan[index].at;
            sim.schedule(at, Event::Migrate { index, tries: 0 });
        }
        sim.plan.push(sim.world.plan_line());
        let generation = sim.world.client.generation;
        sim.schedule(sim.world.client.started_at, Event::Client { generation });
        sim.start_hosts()?;
        Ok(sim)
    }

    pub(crate) fn schedule(&mut self, at: u64, event: Event) {
        let q = &mut self.queue;
        q.scheduled += 1;
        q.events.insert((at, q.scheduled), event);
    }

    /// The name of the host in slot `i`.
    pub(crate) fn name(&self, i: usize) -> &'static str {
        host_name(self.hosts.id[i])
    }

    pub(crate) fn note(&mut self, what: impl FnOnce() -> String) {
        if self.options.trace {
            let line = format!("{:>10.3} ms  {}", self.now as f64 / 1e6, what());
            self.trace.push(line);
        }
    }

    pub(crate) fn violation(&self, invariant: Invariant, what: String) -> SimError {
        let trace = if self.options.trace {
            self.trace.iter().rev().take(400).rev().cloned().collect()
        } else {
            Vec::new()
        };
        SimError::Violation {
            seed: self.seed,
            at_ns: self.now,
            invariant,
            what,
            plan: self.plan.clone(),
            rerun: rerun_command(self.seed, &self.options),
            trace,
        }
    }

    /// The next moment something happens.
    fn next_time(&self) -> u64 {
        let mut t = self.end_ns;
        if let Some((&(at, _), _)) = self.queue.events.first_key_value() {
            t = t.min(at);
        }
        self.hosts.next_time(t).max(self.now)
    }

    /// Advance to the next moment and handle one thing there: a queued
    /// event, else a host's turn. False once the run's time is up.
    fn step(&mut self) -> Result<bool, SimError> {
        self.now = self.next_time();
        if self.now >= self.end_ns {
            return Ok(false);
        }
        if let Some((&(at, _), _)) = self.queue.events.first_key_value() {
            if at <= self.now {
                if let Some((_, event)) = self.queue.events.pop_first() {
                    self.event(event)?;
                }
                return Ok(true);
            }
        }
        self.step_hosts()?;
        Ok(true)
    }

    fn event(&mut self, event: Event) -> Result<(), SimError> {
        match event {
            Event::Fault(fault) => self.fault(fault)?,
            Event::Deliver {
                to,
                generation,
                bytes,
            } => {
                if self.deliver(to, generation, &bytes)? {
                    self.effects(to)?;
                }
            }
            Event::IoDone {
                host,
                incarnation,
                request,
                write_on_completion,
            } => self.io_done(host, incarnation, &request, write_on_completion)?,
            Event::Closed {
                host,
                incarnation,
                generation,
            } => self.closed(host, incarnation, generation),
            Event::Client { generation } => self.client_send(generation),
            Event::FrameToHost { host, frame } => self.frame_to_host(host, frame)?,
            Event::FrameToWorld { from, frame } => self.world_receives(from, frame)?,
            Event::Verdict {
                host,
                incarnation,
                verdict,
            } => self.verdict(host, incarnation, verdict)?,
            Event::Restore => self.restore()?,
            Event::CloneStream { clone } => self.clone_stream(clone)?,
            Event::CloneWait { clone } => self.clone_wait(clone),
            Event::Migrate { index, tries } => self.migrate(index, tries)?,
        }
        Ok(())
    }
}

/// Run one seed to its end, checking the invariants after every event.
pub(crate) fn simulate(seed: u64, options: &Options) -> Result<Outcome, SimError> {
    let mut sim = Sim::new(seed, options.clone())?;
    let (mut same, mut last) = (0u64, u64::MAX);
    loop {
        let going = sim.step()?;
        if sim.now == last {
            same += 1;
            if same > 100_000 {
                return Err(sim.violation(
                    Invariant::Liveness(Progress::Time),
                    "the simulation makes no progress in virtual time".into(),
                ));
            }
        } else {
            (same, last) = (0, sim.now);
        }
        sim.check()?;
        sim.restore_upkeep()?;
        if !going {
            break;
        }
        if sim.hosts.all_done() && sim.queue.events.is_empty() {
            break;
        }
    }
    sim.finish()
}
