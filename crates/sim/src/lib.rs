//! # ftvm-sim — a deterministic simulator of an FT pair
//!
//! One process, one seed, no real time, no threads: a primary
//! [`ftvm_node::Node`] and a backup `Node` (the very code the daemon runs)
//! execute the guest `guest/build/ftguest.elf` (`make -C guest`) while the
//! simulator plays everything around them (ARCHITECTURE.md, "Sans-IO"),
//! after each failover restores redundancy by cloning the VM that runs
//! alone into a new backup placed on a pool of physical hosts, and
//! migrates either VM as `ftvm migrate` does:
//!
//! - **virtual time**: every event happens at a virtual nanosecond; a run
//!   slice costs its instructions times the host's speed (each host gets
//!   its own), an idle guest sleeps until its timer or an input;
//! - **the logging channel**, both directions, with the real channel code:
//!   the sessions come from the real [`Handshake`] (for the pair and the
//!   pairing's epoch), every message is sealed with [`Session::seal`], cut
//!   by a [`FrameDecoder`] and checked by [`Session::open`]. Faults: delay
//!   and jitter, loss, duplication, reordering and corruption of frames,
//!   partitions (one direction or both; frames held and released later, or
//!   dropped; for a while or forever). As in the daemon, a frame that
//!   fails to decode or authenticate closes the connection for good, both
//!   directions (there are no reconnects); what the closing side sent
//!   before still arrives, then the close reaches its peer
//!   ([`Node::channel_closed`]) unless the network is cut;
//! - **crashes** of a VM at any moment: the `Node` is dropped with
//!   everything in flight to it; either its process died (what it sent
//!   arrives, then its kernel closes the connection) or its host did (what
//!   it sent may still arrive, or be lost with its socket buffers, and the
//!   peer only notices the silence), and then every VM on that host dies
//!   with it. A crashed VM never comes back (a host does, empty, after a
//!   reboot of 0.3 to 1.5 s);
//! - **the cluster** (module `cluster`): three to five physical hosts
//!   (h1, h2, ...), each with room for zero to three of the pair's VMs
//!   (16 MiB each) and zero to three VMs of other pairs, drawn from the
//!   seed; the VMs (A, B, C, ..., one process each; called hosts in the
//!   code, for historical reasons) are placed on them by the agents' own
//!   rule, [`ftvm_cluster::placement::place`], over the registrations of
//!   the live hosts: A on the least loaded, B and every new backup never
//!   on its survivor's host while another has room, else there (the pair
//!   then shares a host, and a crash of it takes both);
//! - **restoring redundancy** (continuous protection, module `clone`): some
//!   virtual time (50-300 ms, from the seed) after a VM is left running
//!   alone (its peer crashed, or halted having lost the test-and-set), it
//!   is cloned for the next epoch into a new VM (C, then D, ...), placed
//!   as above, that takes the other VM's slot, as the daemon does it: a
//!   new connection
//!   whose handshake names the new epoch, [`Node::start_clone`] (again a
//!   millisecond later while I/O is in flight), the snapshot streamed over
//!   that connection through the real [`CloneSender`] and [`CloneReceiver`]
//!   at the seed's link speed (2-40 MB/s: it takes virtual time in
//!   proportion to its bytes, and the channel's faults apply), then
//!   [`Node::clone_sent`] and the log on the same connection; the new
//!   host builds its VM with [`Node::backup_from_clone`] once the snapshot
//!   is whole, gives up if it stops coming for a timeout or the connection
//!   closes (the primary's [`Node::clone_failed`] when the sender's
//!   connection fails), and `Effect::CloseChannel` drops the connection. A
//!   restore is complete once the new backup is told it protects the VM
//!   (`Message::Protected`); the pair is then whole, and later faults of
//!   the plan may strike it again: failure, restore, failure, restore...
//!   Each restore may be struck by a crash of its own: of the survivor or
//!   of the new backup while the snapshot is on its way, while the new
//!   backup catches up, or after it protects the VM. Seeds with private
//!   disks never restore (a clone does not copy a disk here). When no
//!   live host has room, the restore waits for one;
//! - **migrations** (module `migrate`), in three seeds out of ten, at
//!   random times while the pair is whole: of the primary, a planned
//!   hand-over ([`Node::hand_over`]; the backup takes `HandOver`, drains,
//!   wins the test-and-set, goes live and closes the channel; the old
//!   primary loses and halts `handed-over`), maybe struck by a crash of
//!   either VM in the middle; of the backup, ended (`Node::stop`, its
//!   process exits), so the primary runs alone and is cloned at once onto
//!   another host than the one the backup left. A hand-over is followed
//!   by a restore too, away from the host the guest left;
//! - **the arbiter**: one atomic test-and-set per (pair, epoch), so only
//!   the VMs of one pairing compete for each, with periods in which one
//!   host or both cannot reach it;
//! - **the host**: a shared disk image in memory (a write lands when it is
//!   performed or only when it completes; in three seeds out of ten each
//!   VM has its own disk instead, `DiskMode::Private`), entropy from the
//!   seeded RNG, the world's console as an array written at stream
//!   offsets;
//! - **the network**: the guest has a virtio-net card ([`VM_MAC`]); the
//!   real learning switch of `ftvm switch` ([`ftvm_net::switch::Switch`],
//!   driven in virtual time) has a port for each host slot and one for the
//!   world. A frame a host releases
//!   (`Effect::Perform(IoRequest::NetTransmit)`, held by the output rule)
//!   or the announcement it sends for an `Effect::Announce` (the daemon's
//!   RARP broadcast) enters the switch through that host's port and
//!   teaches it that the VM's address is there. What the switch sends to
//!   the world goes up one uplink, delayed but never lost nor reordered;
//!   what it sends to a host's port (the client's requests, the other
//!   host's broadcasts) is delayed, and in some seeds lost or duplicated,
//!   and reaches the host's node as `Input::NetReceive` (a backup ignores
//!   it; the primary or live VM logs it). The world is a client that sends
//!   numbered requests to the VM's address (the switch sends them to the
//!   learnt port, to both hosts while none is known), resends one that got
//!   no answer within 50 ms, and sends the next a little after an answer.
//!   The guest answers request k with a running hash over every request it
//!   accepted (and the tick and time it saw each at), and sends a frame
//!   every tick; every frame carries the next number of one sequence;
//! - **clean ends**: `Node::stop` on the VM that runs the pair.
//!
//! Each seed draws a plan: host speeds, channel latency, maybe frame
//! faults, maybe an arbiter outage, at most one major fault (a crash of
//! either host, a partition, a clean stop; a fifth of them in the first
//! 30 ms, before the first acknowledgements), and sometimes a second one;
//! on a shared disk (nine seeds in ten), up to three restores, each with
//! its delay and maybe its own crash; the cluster and the migrations, from
//! a stream of their own. `Options::restore_faults` (`--restore-faults`)
//! makes every seed fail over early and strikes every restore;
//! `Options::migrations` (`--migrations`) makes every seed migrate early,
//! most migrations struck. The guest runs with 16 MiB of RAM (the board's minimum) so that
//! state digests stay cheap; timeouts are short (heartbeat 20 ms, failure
//! detection 200 ms, a checkpoint every 400 ms of host time).
//!
//! After every event the invariants of ARCHITECTURE.md, "Invariants", are
//! checked:
//! 1. determinism: no VM halts with a divergence or a log it cannot
//!    replay (a clone that halts because its primary failed before it
//!    caught up, `not-caught-up`, is expected), and at the end each
//!    pairing's whole log as its primary sent it replays from where it
//!    starts, with every checkpoint matching: the first from the machine
//!    as built ([`ftvm_replay::Replayer`]), a clone's from its snapshot
//!    ([`ftvm_replay::ReplayMachine::from_snapshot`], the log's header
//!    naming the snapshot's digest);
//! 2. output consistency, across every failover: a console byte written
//!    again at an offset equals the one there, the released stream never
//!    skips ahead (no gap across a failover), and a disk write with a
//!    given request id always has the same sector and data (one execution
//!    wrote the disk). For frames: the world receives the guest's sequence
//!    1, 2, 3, ... with no gap; a frame again only byte for byte, from
//!    another host (a new live VM re-issues the transmits it has no
//!    completion for) and among the last 16; one answer (hash) per
//!    request. When a VM goes live, and at the end for the VM that runs
//!    on, its guest's `ftg_net` (read from RAM) must hold every frame and
//!    answer the world got: it sent at least as many frames, the same last
//!    32, the same answers to the last 16 requests, and expects a request
//!    after every one answered;
//! 3. at most one VM live (or running alone while it clones), for the
//!    whole run: a VM of an older pairing never runs alone (every VM that
//!    does is of the newest epoch); once a VM released an output while
//!    live (or after it won the test-and-set: a VM stopped as it goes live
//!    is never seen live), no other host releases anything again unless it
//!    won the test-and-set of a newer pairing (it took over from it);
//!    `Effect::Announce` comes only from a live VM, with the VM's address,
//!    counts as an output, and a backup that went live (every host but A
//!    started as one) announces before any other output;
//! 4. no acknowledged write lost: the guest never prints `BAD`, and at the
//!    end the disk holds every write whose completion the surviving
//!    execution applied (read from the guest's `ftg_table`);
//!
//! plus the hand-over's own: a primary handing over executes no more
//! (its icount stays where it stopped, also when it sends `HandOver`);
//! the new primary goes live at exactly the icount where the log the old
//! one had sent when it sent `HandOver` ends, and, checked in the final
//! replay of that pairing's log, in the very state that log leads to;
//! and (`Options::strict_hand_over`, on by default) to the letter of
//! issue 13: at the icount where the old primary stopped, with the state
//! digest it had there, re-producing no output at its go-live (no console
//! bytes written again, no transmit or shared-disk write re-issued),
//! `HandOver` naming only entries that were sent; and
//! placement: a new backup never on its survivor's host while another
//! live host had room;
//!
//! plus liveness (after a single failure since the pair was last whole,
//! at the start or when a restore completed, some VM is live or the pair
//! ended within a bound; a restore completes within 300 ms of its first
//! try unless a fault strikes meanwhile; a running VM's console keeps
//! growing; and the client keeps getting answers: within 600 ms while the
//! pair is healthy, within 400 ms once a VM has been live that long, so
//! after a failover the switch must send the client's frames to the new
//! live VM; a failover caused by a partition counts as the first failure)
//! and no panics (a panic fails the seed). A migration counts as the
//! pair's failure, and a crash in the middle of a hand-over (before the
//! backup won the test-and-set) as the same one: liveness is promised
//! across it (allowing the 10 s a primary that sent `HandOver` waits for
//! a backup whose host died in silence).
//!
//! Each violation names the [`Invariant`] it breaks (with the [`Output`]
//! that disagrees, or what stopped making [`Progress`]), so a test of a
//! broken variant can insist on the violation it expects. An [`Outcome`]
//! counts the clones, restores, hand-overs, backup moves and placements,
//! and says what the restores and migrations went through ([`case`]).
//!
//! ## Layout
//!
//! - `plan`: the options, the seed's random stream ([`Rng`]) and the fault
//!   plan drawn from it;
//! - `sim`: the simulation's state (grouped as below) and its event loop;
//! - `host`: the hosts (VMs), two at a time, each a real `Node` at its
//!   own speed, their effects, crashes, the arbiter (the only module that
//!   calls `Node`);
//! - `cluster`: the physical hosts, placement, host crashes;
//! - `clone`: restoring redundancy: the clones, their streams and faults,
//!   each pairing's log, the clone variants' middleboxes;
//! - `migrate`: migrations of either VM, the hand-over's checks and its
//!   variant's middlebox;
//! - `io`: the disks and the world's console that the hosts' I/O reaches;
//! - `channel`: the logging channel, both directions, with its faults;
//! - `world`: the switch, the client and what the world received;
//! - `guest`: the guest program, its frames and its tables in RAM;
//! - `invariants`: the checks after every event and at the end.
//!
//! ## Rerunning a seed
//!
//! `cargo run -p ftvm-sim --release -- --seed 1234` runs one seed and
//! prints its fault plan, its outcome and, with `--verbose`, its event
//! trace; `--seeds 1000 --first 5000` runs a range and counts the seeds by
//! what their restores went through; `--verbose` prints the event trace of
//! a failing seed; `--slow-and-corrupt` gives every seed a slow link and
//! corrupt frames, `--restore-faults` an early failover and struck
//! restores, `--migrations` early migrations (`tests/seeds.rs` runs 300,
//! 60 and 120 such seeds). A failure
//! names its seed, the virtual time and the invariant; the same seed
//! always replays the same run bit for bit. `crates/sim/tests/seeds.rs`
//! runs 1,000 seeds (and insists that each case of a restore happens in
//! enough of them) and shows that deliberately broken variants
//! ([`Broken`]: outputs released without acknowledgements, an arbiter
//! that always grants, a disk that loses writes, a backup that goes live
//! without re-issuing its transmits, a switch that ignores the
//! announcement, a clone told it protects the VM before it does, a clone
//! that misses the log written while its snapshot was on its way, a
//! hand-over whose `HandOver` overtakes the log so the new primary
//! continues from the wrong icount, an agent that places a new backup on
//! its survivor's host; `--broken NAME` in the binary) are caught, each
//! by the invariant it breaks.
//!
//! Not simulated: reconnecting a broken channel (a restore is a new
//! connection to a new host), cloning a VM with a private disk, moving
//! a backup by cloning first and ending the old one after (the node
//! has one backup at a time; the backup is ended first, as `ftvm migrate`
//! does), partitions between hosts and the arbiter that follow the
//! placement, a host's clock drifting, frames lost on
//! their way to the world, a client that sends more than one request at a
//! time, a switch port going silent (no run lasts the switch's port
//! timeout).
//!
//! [`Handshake`]: ftvm_ft::channel::Handshake
//! [`Session::seal`]: ftvm_ft::channel::Session::seal
//! [`Session::open`]: ftvm_ft::channel::Session::open
//! [`FrameDecoder`]: ftvm_ft::channel::FrameDecoder
//! [`Node::channel_closed`]: ftvm_node::Node::channel_closed
//! [`Node::start_clone`]: ftvm_node::Node::start_clone
//! [`Node::clone_sent`]: ftvm_node::Node::clone_sent
//! [`Node::clone_failed`]: ftvm_node::Node::clone_failed
//! [`Node::backup_from_clone`]: ftvm_node::Node::backup_from_clone
//! [`Node::hand_over`]: ftvm_node::Node::hand_over
//! [`CloneSender`]: ftvm_ft::clone::CloneSender
//! [`CloneReceiver`]: ftvm_ft::clone::CloneReceiver

#![forbid(unsafe_code)]

mod channel;
mod clone;
mod cluster;
mod guest;
mod host;
mod invariants;
mod io;
mod migrate;
mod plan;
mod sim;
mod world;

use std::path::PathBuf;

pub use clone::case;
use ftvm_board::Engine;
pub use invariants::{Invariant, Output, Progress};
pub use plan::{Broken, Options, Rng};

const MS: u64 = 1_000_000;

/// The VM's network card.
pub const VM_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x46, 0x54, 0x01];

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{}", violation_text(.seed, .at_ns, .invariant, .what, .plan, .rerun, .trace))]
    Violation {
        seed: u64,
        at_ns: u64,
        invariant: Invariant,
        what: String,
        plan: Vec<String>,
        /// The command that reruns the seed.
        rerun: String,
        trace: Vec<String>,
    },
    #[error("seed {seed}: cannot set the simulation up: {what}")]
    Setup { seed: u64, what: String },
}

impl SimError {
    pub fn seed(&self) -> u64 {
        match self {
            SimError::Violation { seed, .. } | SimError::Setup { seed, .. } => *seed,
        }
    }

    /// The invariant violated (none for a setup error).
    pub fn invariant(&self) -> Option<Invariant> {
        match self {
            SimError::Violation { invariant, .. } => Some(*invariant),
            SimError::Setup { .. } => None,
        }
    }
}

fn violation_text(
    seed: &u64,
    at_ns: &u64,
    invariant: &Invariant,
    what: &str,
    plan: &[String],
    rerun: &str,
    trace: &[String],
) -> String {
    let mut s = format!(
        "seed {seed}: INVARIANT VIOLATED ({invariant}) at {:.3} ms of virtual time: {what}\n  \
         plan: {}\n  \
         rerun: {rerun}",
        *at_ns as f64 / 1e6,
        plan.join("; ")
    );
    for line in trace {
        s.push_str("\n    ");
        s.push_str(line);
    }
    s
}

/// What one seed did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub virtual_ns: u64,
    pub plan: Vec<String>,
    /// The final status of the host in each slot: host A (started as
    /// primary) and B (backup), or the new host a restore put there.
    pub a: String,
    pub b: String,
    /// The hosts in the slots at the end (A, B, or a restore's C, D, ...).
    pub hosts: [&'static str; 2],
    pub console_bytes: u64,
    pub ticks_seen: u64,
    pub takeover: bool,
    pub replayed_entries: u64,
    /// Requests the client got an answer to.
    pub requests_answered: u64,
    /// The guest's frames the world received (duplicates included).
    pub frames_received: u64,
    /// Clones begun (snapshots taken) to restore redundancy.
    pub clones: u64,
    /// Restores completed: a new backup protects the VM.
    pub restores: u64,
    /// The longest a completed restore took, from its first try (the VM
    /// may have had I/O in flight) to the new backup protecting the VM.
    pub longest_restore_ns: u64,
    /// Hand-overs completed (the backup continued where the primary
    /// stopped), and backups moved to another host.
    pub hand_overs: u64,
    pub backup_moves: u64,
    /// New backups placed (the first two VMs included), and those that
    /// went on their survivor's host, no other having room.
    pub placements: u64,
    pub beside_survivor: u64,
    /// What the restores and migrations went through (crashes while the
    /// snapshot was on its way, while the clone caught up, after the
    /// restore, a clone that halted or took over, a hand-over, a crash in
    /// it, a host crash that took both VMs, ...).
    pub clone_cases: Vec<&'static str>,
    /// The event trace (with [`Options::trace`]).
    pub trace: Vec<String>,
}

/// The guest the simulator runs (built by `make -C guest`).
pub fn guest_elf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guest/build/ftguest.elf")
}

/// The command line that reruns `seed` with `options`.
pub fn rerun_command(seed: u64, options: &Options) -> String {
    let mut command = format!("cargo run -p ftvm-sim --release -- --seed {seed} --verbose");
    if !options.faults {
        command.push_str(" --no-faults");
    }
    if options.slow_and_corrupt {
        command.push_str(" --slow-and-corrupt");
    }
    if options.restore_faults {
        command.push_str(" --restore-faults");
    }
    if options.migrations {
        command.push_str(" --migrations");
    }
    if let Some(broken) = options.broken {
        command.push_str(" --broken ");
        command.push_str(broken.name());
    }
    command
}

/// Run one seed. A panic anywhere in the code under test is a failure of
/// the seed, not of the caller.
pub fn run_seed(seed: u64, options: &Options) -> Result<Outcome, SimError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sim::simulate(seed, options)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Err(SimError::Violation {
            seed,
            at_ns: 0,
            invariant: Invariant::Panic,
            what: format!("panicked: {what}"),
            plan: Vec::new(),
            rerun: rerun_command(seed, options),
            trace: Vec::new(),
        })
    })
}
