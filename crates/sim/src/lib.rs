//! # ftvm-sim — a deterministic simulator of an FT pair
//!
//! One process, one seed, no real time, no threads: a primary
//! [`ftvm_node::Node`] and a backup `Node` (the very code the daemon
//! runs) execute the guest `guest/build/ftguest.elf` (`make -C guest`)
//! while the simulator plays everything around them (DESIGN.md §6):
//!
//! - **virtual time**: every event happens at a virtual nanosecond; a run
//!   slice costs its instructions times the host's speed (each host gets
//!   its own), an idle guest sleeps until its timer or an input;
//! - **the logging channel**, both directions, with the real channel code:
//!   the sessions come from the real [`Handshake`], every message is sealed
//!   with [`Session::seal`], cut by a [`FrameDecoder`] and checked by
//!   [`Session::open`]. Faults: delay and jitter, loss, duplication,
//!   reordering and corruption of frames, partitions (one direction or
//!   both; frames held and released later, or dropped; for a while or
//!   forever). As in the daemon, a frame that fails to decode or
//!   authenticate closes the connection for good, both directions (there are no reconnects); what the closing side sent
//!   before still arrives, then the close reaches its peer
//!   ([`Node::channel_closed`]) unless the network is cut;
//! - **crashes** of either host at any moment: the `Node` is dropped with
//!   everything in flight to it; either its process died (what it sent
//!   arrives, then its kernel closes the connection) or its host did (what
//!   it had in flight may be lost, and the peer only notices the silence);
//! - **the arbiter**: one atomic test-and-set for the pair, with periods in
//!   which one host or both cannot reach it;
//! - **the host**: a shared disk image in memory (a write lands when it is
//!   performed or only when it completes; in three seeds out of ten each
//!   VM has its own disk instead, `DiskMode::Private`), entropy from the
//!   seeded RNG,
//!   the world's console as an array written at stream offsets;
//! - **the network**: the guest has a virtio-net card ([`VM_MAC`]); a
//!   learning switch joins the two hosts' ports and the world. A frame a
//!   host releases (`Effect::Perform(IoRequest::NetTransmit)`, held by the
//!   output rule) or an `Effect::Announce` teaches the switch that the
//!   VM's address is behind that host's port; the released frame goes up
//!   one uplink to the world, delayed but never lost nor reordered. The
//!   world is a client that sends numbered requests to the VM's address
//!   (to the learnt port, to both while none is known), resends one that
//!   got no answer within 50 ms, and sends the next a little after an
//!   answer; those frames are delayed, and in some seeds lost or
//!   duplicated, and reach a host's node as `Input::NetReceive` (a backup
//!   ignores them; the primary or live VM logs them). The guest answers
//!   request k with a running hash over every request it accepted (and the
//!   tick and time it saw each at), and sends a frame every tick; every
//!   frame carries the next number of one sequence;
//! - **clean ends**: `Node::stop` on the VM that runs the pair.
//!
//! Each seed draws a plan: host speeds, channel latency, maybe frame
//! faults, maybe an arbiter outage, at most one major fault (a crash of
//! either host, a partition, a clean stop; a fifth of them in the first
//! 30 ms, before the first acknowledgements), and sometimes a second one.
//! The guest runs with 16 MiB of RAM (the board's minimum) so that state
//! digests stay cheap; timeouts are short (heartbeat 20 ms, failure
//! detection 200 ms, a checkpoint every 400 ms of host time).
//!
//! After every event the invariants of DESIGN.md §7 are checked:
//! 1. determinism: no backup halts with a divergence, and at the end the
//!    primary's whole sent log replays ([`ftvm_replay::Replayer`]) with
//!    every checkpoint matching;
//! 2. output consistency: a console byte written again at an offset equals
//!    the one there, the released stream never skips ahead (no gap across
//!    a failover), and a disk write with a given request id always has the
//!    same sector and data (one execution wrote the disk). For frames: the
//!    world receives the guest's sequence 1, 2, 3, ... with no gap; a
//!    frame again only byte for byte, from the other host (a new live VM
//!    re-issues the transmits it has no completion for) and among the last
//!    16; one answer (hash) per request. When a VM goes live, and at the
//!    end for the VM that runs on, its guest's `ftg_net` (read from RAM)
//!    must hold every frame and answer the world got: it sent at least as
//!    many frames, the same last 32, the same answers to the last 16
//!    requests, and expects a request after every one answered;
//! 3. at most one VM live, and once a VM released an output while live,
//!    the other never releases anything again; `Effect::Announce` comes
//!    only from a live VM, with the VM's address, counts as an output, and
//!    a backup that went live announces before any other output;
//! 4. no acknowledged write lost: the guest never prints `BAD`, and at the
//!    end the disk holds every write whose completion the surviving
//!    execution applied (read from the guest's `ftg_table`);
//!
//! plus liveness (after a single failure, some VM is live or the pair
//! ended within a bound, a running VM's console keeps growing, and the
//! client keeps getting answers: within 600 ms while the pair is healthy,
//! within 400 ms once a VM has been live that long, so after a failover the
//! switch must send the client's frames to the new live VM; a failover
//! caused by a partition counts as the first failure) and no panics (a
//! panic fails the seed).
//!
//! ## Rerunning a seed
//!
//! `cargo run -p ftvm-sim --release -- --seed 1234` runs one seed and
//! prints its fault plan and outcome; `--seeds 1000 --first 5000` runs a
//! range; `--verbose` prints the event trace of a failing seed;
//! `--slow-and-corrupt` gives every seed a slow link and corrupt frames
//! (`tests/seeds.rs` runs 300 such seeds). A failure
//! names its seed, the virtual time and the invariant; the same seed
//! always replays the same run bit for bit. `crates/sim/tests/seeds.rs`
//! runs 1,000 seeds and shows that deliberately broken variants
//! ([`Broken`]: outputs released without acknowledgements, an arbiter
//! that always grants, a disk that loses writes, a backup that goes live
//! without re-issuing its transmits, a switch that ignores the
//! announcement; `--broken NAME` in the binary) are caught.
//!
//! Not simulated: restoring redundancy with a new backup, reconnecting a
//! broken channel, a host's clock drifting, frames lost on their way to
//! the world, a client that sends more than one request at a time.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use ftvm_board::virtio::DeviceKind;
use ftvm_board::{Engine, Firmware, Image, ImageMap, Input, IoRequest, IoStatus, MachineConfig};
use ftvm_ft::channel::{
    self, CHANNEL_FRAME_MAX, FrameDecoder, Handshake, Message, Role, Session, channel_key,
};
use ftvm_ft::detector::DetectorConfig;
use ftvm_ft::golive::Verdict;
use ftvm_node::{DiskMode, Effect, HaltReason, Node, NodeConfig, Ran, Status, Time};
use ftvm_replay::{LogDecoder, LogError, ReplayError, Replayer};

const MS: u64 = 1_000_000;
const SECTORS: u64 = 64;
const SECTOR: usize = 512;
/// Sectors the guest rotates over (1..=NSEC), as in ftguest.c.
const NSEC: usize = 8;
const PAIR: &str = "simvm";
/// Wall clock at virtual time 0.
const UNIX_EPOCH_NS: u64 = 1_700_000_000_000_000_000;
const HEARTBEAT_MS: u64 = 20;
const TIMEOUT_MS: u64 = 200;
/// How long after a failure some VM must be live (or the pair ended),
/// on top of the longest arbiter outage.
const LIVENESS_BOUND_NS: u64 = 1_000 * MS;
/// A running VM's console must have grown within this much virtual time.
const CONSOLE_STALL_NS: u64 = 600 * MS;

/// The VM's network card.
pub const VM_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x46, 0x54, 0x01];
/// The client's (the world's) address.
const WORLD_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const BROADCAST: [u8; 6] = [0xff; 6];
/// The EtherType of ftguest.c's frames, and their length.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const FRAME_LEN: usize = 60;
const MAGIC_REQUEST: u32 = u32::from_le_bytes(*b"FTGQ");
const MAGIC_ANSWER: u32 = u32::from_le_bytes(*b"FTGA");
const MAGIC_TICK: u32 = u32::from_le_bytes(*b"FTGT");
/// Answers and sent frames the guest keeps in `ftg_net` (ftguest.c).
const ANS_WIN: u64 = 16;
const TX_WIN: u64 = 32;
/// A frame the world got may arrive again (a new live VM re-issues the
/// transmits it has no completion for) only if it is among the last this
/// many: the guest has 8 transmit descriptors, and a completion is
/// logged within 1.5 ms.
const DUP_WINDOW: u64 = 16;
/// The client resends a request it got no answer to after this long.
const RETRANSMIT_NS: u64 = 50 * MS;
/// A VM live for this long must have answered a new request within the
/// last this long.
const LIVE_ANSWER_NS: u64 = 400 * MS;
/// A healthy pair must have answered a new request within this long.
const HEALTHY_ANSWER_NS: u64 = 600 * MS;

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
    /// client's requests go to the dead primary's port.
    StaleSwitch,
}

impl Broken {
    /// Every variant, with its name for `--broken`.
    pub const ALL: [(Broken, &'static str); 5] = [
        (Broken::AckOnSend, "ack-on-send"),
        (Broken::ArbiterAlwaysWins, "arbiter-always-wins"),
        (Broken::DiskLosesWrites, "disk-loses-writes"),
        (Broken::NoReissue, "no-reissue"),
        (Broken::StaleSwitch, "stale-switch"),
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
    pub engine: Engine,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            faults: true,
            broken: None,
            trace: false,
            slow_and_corrupt: false,
            engine: Engine::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{}", violation_text(.seed, .at_ns, .what, .plan, .rerun, .trace))]
    Violation {
        seed: u64,
        at_ns: u64,
        what: String,
        plan: Vec<String>,
        /// The command that reruns the seed.
        rerun: String,
        trace: Vec<String>,
    },
    #[error("seed {seed}: cannot set the simulation up: {what}")]
    Setup { seed: u64, what: String },
}

fn violation_text(
    seed: &u64,
    at_ns: &u64,
    what: &str,
    plan: &[String],
    rerun: &str,
    trace: &[String],
) -> String {
    let mut s = format!(
        "seed {seed}: INVARIANT VIOLATED at {:.3} ms of virtual time: {what}\n  plan: {}\n  \
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
    /// Final status of host A (started as primary) and B (backup).
    pub a: String,
    pub b: String,
    pub console_bytes: u64,
    pub ticks_seen: u64,
    pub takeover: bool,
    pub replayed_entries: u64,
    /// Requests the client got an answer to.
    pub requests_answered: u64,
    /// The guest's frames the world received (duplicates included).
    pub frames_received: u64,
}

/// The guest the simulator runs (built by `make -C guest`).
pub fn guest_elf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guest/build/ftguest.elf")
}

fn machine_config(engine: Engine, guest: &Image) -> MachineConfig {
    MachineConfig {
        memory_mib: 16,
        firmware: Firmware::None,
        kernel: guest.clone(),
        initrd: None,
        append: String::new(),
        insns_per_tick: MachineConfig::DEFAULT_INSNS_PER_TICK,
        engine,
        virtio: vec![
            DeviceKind::Block { sectors: SECTORS },
            DeviceKind::Entropy,
            DeviceKind::Net { mac: VM_MAC },
        ],
    }
}

/// The guest-physical address of the symbol `name` in the guest's ELF.
fn symbol_address(elf: &[u8], name: &str) -> Result<u64, String> {
    let elf = goblin::elf::Elf::parse(elf).map_err(|e| e.to_string())?;
    elf.syms
        .iter()
        .find(|s| elf.strtab.get_at(s.st_name) == Some(name))
        .map(|s| s.st_value)
        .ok_or_else(|| format!("no {name} symbol"))
}

/// A frame ftguest.c sends: its sequence number, kind and two words
/// (answer: request, hash; tick: tick, hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GuestFrame {
    seq: u64,
    magic: u32,
    b: u64,
    c: u64,
}

impl GuestFrame {
    fn parse(frame: &[u8]) -> Result<GuestFrame, String> {
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&frame[at..at + 8]);
            u64::from_le_bytes(w)
        };
        if frame.len() != FRAME_LEN || frame[12..14] != ETHERTYPE || frame[6..12] != VM_MAC {
            return Err(format!("a frame ftguest never sends: {frame:02x?}"));
        }
        let magic = u32::from_le_bytes([frame[14], frame[15], frame[16], frame[17]]);
        let to = match magic {
            MAGIC_ANSWER => WORLD_MAC,
            MAGIC_TICK => BROADCAST,
            _ => return Err(format!("a frame of unknown kind: {frame:02x?}")),
        };
        if frame[0..6] != to || frame[42..].iter().any(|&b| b != 0) {
            return Err(format!("a malformed frame: {frame:02x?}"));
        }
        Ok(GuestFrame {
            seq: word(18),
            magic,
            b: word(26),
            c: word(34),
        })
    }

    fn describe(&self) -> String {
        match self.magic {
            MAGIC_ANSWER => format!(
                "frame {} (answer to request {}, hash {:#x})",
                self.seq, self.b, self.c
            ),
            _ => format!("frame {} (tick {}, hash {:#x})", self.seq, self.b, self.c),
        }
    }
}

/// The guest's `ftg_net` (ftguest.c), read from a machine's RAM.
struct GuestNet {
    sent: u64,
    next_req: u64,
    /// `[k % ANS_WIN]` = (k, hash).
    answers: Vec<(u64, u64)>,
    /// `[seq % TX_WIN]`.
    frames: Vec<GuestFrame>,
}

impl GuestNet {
    const SIZE: usize = 8 * (4 + 2 * ANS_WIN as usize + 4 * TX_WIN as usize);

    fn read(machine: &ftvm_board::Machine, at: u64) -> Option<GuestNet> {
        let mut raw = vec![0u8; Self::SIZE];
        machine.hart().ram().read(at, &mut raw).ok()?;
        let word = |k: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&raw[8 * k..8 * k + 8]);
            u64::from_le_bytes(w)
        };
        let answers = (0..ANS_WIN as usize)
            .map(|k| (word(4 + 2 * k), word(5 + 2 * k)))
            .collect();
        let base = 4 + 2 * ANS_WIN as usize;
        let frames = (0..TX_WIN as usize)
            .map(|k| GuestFrame {
                seq: word(base + 4 * k),
                magic: word(base + 4 * k + 1) as u32,
                b: word(base + 4 * k + 2),
                c: word(base + 4 * k + 3),
            })
            .collect();
        Some(GuestNet {
            sent: word(0),
            next_req: word(1),
            answers,
            frames,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Partition {
    /// Frames wait and arrive when it heals.
    Hold,
    /// Frames are lost (the next one after them fails to authenticate).
    Drop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Fault {
    Crash(usize),
    /// The channel is cut until `until`: toward host A if `cut[0]`,
    /// toward host B if `cut[1]`.
    Cut {
        mode: Partition,
        until: u64,
        cut: [bool; 2],
    },
    Stop,
}

#[derive(Debug)]
enum Event {
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
    /// A frame from the world reaches host `host`'s port of the switch.
    FrameToHost {
        host: usize,
        frame: Vec<u8>,
    },
    /// A frame host `from` released reaches the world.
    FrameToWorld {
        from: usize,
        frame: Vec<u8>,
    },
}

/// The network between the world (one client) and the hosts' ports: a
/// learning switch, and the client.
struct World {
    rng: Rng,
    /// World -> VM: delay, jitter, loss and duplication per frame.
    latency_ns: u64,
    jitter_ns: u64,
    loss: f64,
    duplicate: f64,
    /// The switch's table for the VM's address: the port (host) it was
    /// last seen on as a source (a released frame, an announcement).
    vm_port: Option<usize>,
    /// VM -> world is one FIFO uplink, never lossy: when its last frame
    /// arrives.
    uplink_last: u64,
    /// The client's current request, and its timer generation.
    request: u64,
    generation: u64,
    payload: Vec<u8>,
    answered_at: u64,
    started_at: u64,
    /// Requests sent, retransmissions included.
    requests_sent: u64,
    /// What the world received: sequence number -> (the host it came
    /// from, the frame); the highest sequence number; request -> hash.
    received: BTreeMap<u64, (usize, Vec<u8>)>,
    received_max: u64,
    frames_received: u64,
    answers: BTreeMap<u64, u64>,
    /// What the hosts released (on the wire, maybe not arrived yet):
    /// sequence number -> frame, the highest, request -> hash.
    released: BTreeMap<u64, GuestFrame>,
    released_max: u64,
    released_answers: BTreeMap<u64, u64>,
    /// Each host announced the VM's address.
    announced: [bool; 2],
}

impl World {
    fn new(seed: u64) -> World {
        World {
            // Its own stream, so the number of frames does not shift the
            // channel's faults.
            rng: Rng::new(seed ^ 0x6e65_7477_6f72_6b21),
            latency_ns: 0,
            jitter_ns: 0,
            loss: 0.0,
            duplicate: 0.0,
            vm_port: None,
            uplink_last: 0,
            request: 1,
            generation: 0,
            payload: Vec::new(),
            answered_at: 0,
            started_at: 0,
            requests_sent: 0,
            received: BTreeMap::new(),
            received_max: 0,
            frames_received: 0,
            answers: BTreeMap::new(),
            released: BTreeMap::new(),
            released_max: 0,
            released_answers: BTreeMap::new(),
            announced: [false, false],
        }
    }

    /// The client's request `k`: to the VM, from the world, then `k` and
    /// random bytes (the same for every retransmission).
    fn request_frame(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(FRAME_LEN);
        f.extend_from_slice(&VM_MAC);
        f.extend_from_slice(&WORLD_MAC);
        f.extend_from_slice(&ETHERTYPE);
        f.extend_from_slice(&MAGIC_REQUEST.to_le_bytes());
        f.extend_from_slice(&self.request.to_le_bytes());
        f.extend_from_slice(&self.payload);
        f
    }

    /// The switch learns that the VM's address is behind `port`.
    fn learn(&mut self, port: usize, broken: Option<Broken>) {
        if broken == Some(Broken::StaleSwitch) && self.vm_port.is_some() {
            return;
        }
        self.vm_port = Some(port);
    }
}

struct Host {
    node: Node,
    /// Virtual ns per instruction.
    speed: u64,
    next_run: Option<u64>,
    wake_at: Option<u64>,
    last_tick: u64,
}

impl Host {
    /// When to call `tick` next: at the node's deadline, but at most once
    /// a millisecond (a suspected peer's deadline stays in the past, and
    /// the daemon likewise sleeps at least a little).
    fn tick_at(&self) -> u64 {
        self.node
            .deadline_ms()
            .saturating_mul(MS)
            .max(self.last_tick + MS)
    }
}

struct Direction {
    open: bool,
    generation: u64,
    decoder: FrameDecoder,
    last_delivery: u64,
}

struct Noise {
    latency_ns: u64,
    jitter_ns: u64,
    /// Per frame probabilities.
    loss: f64,
    duplicate: f64,
    reorder: f64,
    corrupt: f64,
}

struct Sim {
    seed: u64,
    options: Options,
    rng: Rng,
    now: u64,
    end_ns: u64,
    queue: BTreeMap<(u64, u64), Event>,
    seq: u64,
    hosts: [Option<Host>; 2],
    incarnation: [u64; 2],
    /// Each host's sending session, indexed by host.
    sessions: [Session; 2],
    /// Indexed by the receiving host.
    dirs: [Direction; 2],
    noise: Noise,
    cut: Option<(Partition, u64, [bool; 2])>,
    arbiter_winner: Option<usize>,
    arbiter_outages: Vec<(usize, u64, u64)>,
    disk_mode: DiskMode,
    /// The disk images: one shared (index 0), or each host's own.
    disks: [Vec<u8>; 2],
    /// Per disk, request id -> (offset, data) of every write performed.
    writes: [BTreeMap<u64, (u64, Vec<u8>)>; 2],
    console: Vec<u8>,
    console_scanned: usize,
    console_grew_at: u64,
    /// The host that released an output while live.
    live_releaser: Option<usize>,
    took_over: bool,
    /// The primary's whole sent log.
    primary_log: Vec<u8>,
    sent_decoder: LogDecoder,
    failure_at: Option<u64>,
    failures: u32,
    live_since: Option<u64>,
    plan: Vec<String>,
    trace: Vec<String>,
    table: u64,
    /// `ftg_net` in guest RAM.
    net_table: u64,
    world: World,
    /// When each host was first seen live.
    live_at: [Option<u64>; 2],
    /// The guest program, as both hosts read it.
    guest: Image,
}

fn status_text(status: &Status) -> String {
    match status {
        Status::Halted(why) => format!("halted ({})", why.code()),
        Status::Ended(end) => format!("ended ({end:?})"),
        other => other.word().to_string() + &format!(" ({other:?})"),
    }
}

impl Sim {
    fn new(seed: u64, options: Options) -> Result<Sim, SimError> {
        let setup = |what: String| SimError::Setup { seed, what };
        let elf = std::fs::read(guest_elf()).map_err(|e| {
            setup(format!(
                "{}: {e} (run `make -C guest`)",
                guest_elf().display()
            ))
        })?;
        let guest = Image::new(guest_elf(), elf);
        let table = symbol_address(&guest.bytes, "ftg_table").map_err(setup)?;
        let net_table = symbol_address(&guest.bytes, "ftg_net").map_err(setup)?;
        let mut rng = Rng::new(seed);
        // The handshake, through the real messages and framing.
        let key = channel_key(&rng.bytes(32));
        let nonce = |rng: &mut Rng| -> [u8; 16] {
            let mut n = [0u8; 16];
            n.copy_from_slice(&rng.bytes(16));
            n
        };
        let (mut hp, hello_p) = Handshake::start(Role::Primary, PAIR, 1, key, nonce(&mut rng));
        let (mut hb, hello_b) = Handshake::start(Role::Backup, PAIR, 1, key, nonce(&mut rng));
        let wire = |m: &Message| -> Result<Message, String> {
            let mut d = FrameDecoder::default();
            d.push(&channel::encode(m));
            let frame = d
                .next_frame()
                .map_err(|e| e.to_string())?
                .ok_or("no frame")?;
            channel::decode(&frame).map_err(|e| e.to_string())
        };
        let mut shake = || -> Result<(Session, Session), String> {
            let proof_p = hp
                .receive(&wire(&hello_b)?)
                .map_err(|e| e.to_string())?
                .send
                .ok_or("no proof")?;
            let proof_b = hb
                .receive(&wire(&hello_p)?)
                .map_err(|e| e.to_string())?
                .send
                .ok_or("no proof")?;
            hp.receive(&wire(&proof_b)?).map_err(|e| e.to_string())?;
            hb.receive(&wire(&proof_p)?).map_err(|e| e.to_string())?;
            Ok((
                hp.session().ok_or("primary not established")?,
                hb.session().ok_or("backup not established")?,
            ))
        };
        let (sp, sb) = shake().map_err(setup)?;

        let mut sim = Sim {
            seed,
            options,
            now: 0,
            end_ns: 0,
            queue: BTreeMap::new(),
            seq: 0,
            hosts: [None, None],
            incarnation: [0, 0],
            sessions: [sp, sb],
            dirs: [0, 1].map(|_| Direction {
                open: true,
                generation: 0,
                decoder: FrameDecoder::new(CHANNEL_FRAME_MAX),
                last_delivery: 0,
            }),
            noise: Noise {
                latency_ns: 0,
                jitter_ns: 0,
                loss: 0.0,
                duplicate: 0.0,
                reorder: 0.0,
                corrupt: 0.0,
            },
            cut: None,
            arbiter_winner: None,
            arbiter_outages: Vec::new(),
            disk_mode: DiskMode::Shared,
            disks: [0, 1].map(|_| vec![0; SECTORS as usize * SECTOR]),
            writes: [BTreeMap::new(), BTreeMap::new()],
            console: Vec::new(),
            console_scanned: 0,
            console_grew_at: 0,
            live_releaser: None,
            took_over: false,
            primary_log: Vec::new(),
            sent_decoder: LogDecoder::default(),
            failure_at: None,
            failures: 0,
            live_since: None,
            plan: Vec::new(),
            trace: Vec::new(),
            table,
            net_table,
            world: World::new(seed),
            live_at: [None, None],
            rng,
            guest,
        };
        sim.plan_faults();
        sim.plan_world();
        let config = sim.node_config();
        let time = sim.time();
        let primary = Node::primary(
            config.clone(),
            machine_config(sim.options.engine, &sim.guest),
            time,
        )
        .map_err(|e| setup(format!("the primary: {e}")))?;
        let backup = Node::backup(config, Box::new(ImageMap::of([&sim.guest])), time);
        let speed_a = sim.rng.range(4, 14);
        let speed_b = sim.rng.range(4, 14);
        sim.hosts = [
            Some(Host {
                node: primary,
                speed: speed_a,
                next_run: Some(0),
                wake_at: None,
                last_tick: 0,
            }),
            Some(Host {
                node: backup,
                speed: speed_b,
                next_run: Some(0),
                wake_at: None,
                last_tick: 0,
            }),
        ];
        sim.plan
            .push(format!("speeds A {speed_a} ns/insn, B {speed_b} ns/insn"));
        Ok(sim)
    }

    fn node_config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(PAIR);
        config.detector = DetectorConfig {
            heartbeat_ms: HEARTBEAT_MS,
            timeout_ms: TIMEOUT_MS,
        };
        config.max_unacked_entries = 1 << 16;
        config.max_lag_ns = 100 * MS;
        config.checkpoint_interval_ns = 400 * MS;
        config.disk = self.disk_mode;
        config.steer_time = true;
        config.engine = self.options.engine;
        config
    }

    fn time(&self) -> Time {
        Time {
            mono_ns: self.now,
            unix_ns: UNIX_EPOCH_NS + self.now,
        }
    }

    fn plan_faults(&mut self) {
        let rng = &mut self.rng;
        let mut duration = rng.range(600, 1_400) * MS;
        if rng.chance(0.3) {
            self.disk_mode = DiskMode::Private;
            self.plan.push("private disks".into());
        }
        // Mostly a LAN; sometimes a slow link (acknowledgements long in flight).
        let stress = self.options.slow_and_corrupt;
        let slow = stress || rng.chance(0.15);
        self.noise.latency_ns = if slow {
            rng.range(5_000_000, 20_000_000)
        } else {
            rng.range(20_000, 2_000_000)
        };
        self.noise.jitter_ns = rng.range(0, self.noise.latency_ns);
        self.plan.push(format!(
            "latency {} us + jitter {} us",
            self.noise.latency_ns / 1000,
            self.noise.jitter_ns / 1000
        ));
        if !self.options.faults {
            self.schedule(duration - 100 * MS, Event::Fault(Fault::Stop));
            self.plan.push("no faults; stop".into());
            self.end_ns = duration;
            return;
        }
        // Frame faults close the connection; on a slow link the backup then
        // goes live while its acknowledgements are still in flight, a known
        // failure (tests/seeds.rs) kept out of the default mix: only
        // `slow_and_corrupt` combines the two.
        if stress || (!slow && rng.chance(0.25)) {
            let p = 1.0 / rng.range(300, 5_000) as f64;
            match if stress { 3 } else { rng.range(0, 4) } {
                0 => self.noise.loss = p,
                1 => self.noise.duplicate = p,
                2 => self.noise.reorder = p,
                _ => self.noise.corrupt = p,
            }
            self.plan.push(format!(
                "frame faults: loss {:.5} dup {:.5} reorder {:.5} corrupt {:.5}",
                self.noise.loss, self.noise.duplicate, self.noise.reorder, self.noise.corrupt
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
                    self.arbiter_outages.push((host, from, from + len));
                }
            }
            self.plan.push(format!(
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
        if let Some(fault) = fault {
            self.plan
                .push(format!("{fault:?} at {:.3} ms", at as f64 / 1e6));
            if !matches!(fault, Fault::Stop) {
                duration = duration.max(at + LIVENESS_BOUND_NS + longest_outage + 300 * MS);
            }
            self.schedule(at, Event::Fault(fault));
        }
        // Sometimes a second fault: only the safety invariants are
        // promised then, not liveness.
        if self.rng.chance(0.15) {
            let at = self.rng.range(0, duration);
            let fault = match self.rng.range(0, 4) {
                0 => Fault::Crash(0),
                1 => Fault::Crash(1),
                2 => Fault::Stop,
                _ => Fault::Cut {
                    mode: Partition::Hold,
                    until: at + self.rng.range(1, 400) * MS,
                    cut: [true, true],
                },
            };
            self.plan
                .push(format!("then {fault:?} at {:.3} ms", at as f64 / 1e6));
            self.schedule(at, Event::Fault(fault));
        }
        self.end_ns = duration;
        self.plan.push(format!("run {} ms", duration / MS));
    }

    /// The world's network: latency, sometimes lost or duplicated frames
    /// toward the VM; the client's first request.
    fn plan_world(&mut self) {
        let w = &mut self.world;
        w.latency_ns = w.rng.range(20_000, 1_000_000);
        w.jitter_ns = w.rng.range(0, w.latency_ns);
        if self.options.faults && w.rng.chance(0.3) {
            w.loss = 1.0 / w.rng.range(5, 50) as f64;
        }
        if self.options.faults && w.rng.chance(0.2) {
            w.duplicate = 1.0 / w.rng.range(5, 50) as f64;
        }
        w.started_at = w.rng.range(MS, 10 * MS);
        w.payload = w.rng.bytes(FRAME_LEN - 26);
        self.plan.push(format!(
            "world network {} us + jitter {} us, loss {:.3} dup {:.3}",
            w.latency_ns / 1000,
            w.jitter_ns / 1000,
            w.loss,
            w.duplicate
        ));
        let (at, generation) = (w.started_at, w.generation);
        self.schedule(at, Event::Client { generation });
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.options.trace {
            let line = format!("{:>10.3} ms  {}", self.now as f64 / 1e6, what());
            self.trace.push(line);
        }
    }

    fn violation(&self, what: String) -> SimError {
        let trace = if self.options.trace {
            self.trace.iter().rev().take(200).rev().cloned().collect()
        } else {
            Vec::new()
        };
        SimError::Violation {
            seed: self.seed,
            at_ns: self.now,
            what,
            plan: self.plan.clone(),
            rerun: rerun_command(self.seed, &self.options),
            trace,
        }
    }

    fn fail_at(&mut self) {
        self.failures += 1;
        if self.failure_at.is_none() {
            self.failure_at = Some(self.now);
        }
    }

    fn host_name(i: usize) -> &'static str {
        ["A", "B"][i]
    }

    /// Close the connection for good, both directions.
    /// Host `at` closes the connection for good, both directions, as the
    /// daemon does on a bad frame: what was sent to it is gone, nothing
    /// more is sent either way. What it sent before still arrives, and
    /// then the peer learns of the close (unless the network is cut).
    fn close_connection(&mut self, at: usize, why: &str) {
        if !self.dirs.iter().any(|d| d.open) {
            return;
        }
        let why = why.to_string();
        self.note(|| format!("connection closed: {why}"));
        self.fail_at();
        for d in &mut self.dirs {
            d.open = false;
        }
        self.dirs[at].generation += 1;
        if let Some(h) = &mut self.hosts[at] {
            h.node.channel_closed(false);
            h.next_run = Some(self.now);
        }
        self.notify_close(1 - at);
    }

    /// Tell host `to`, after what is in flight to it, that the connection
    /// closed (a FIN/RST), unless the network toward it is cut.
    fn notify_close(&mut self, to: usize) {
        if matches!(self.cut, Some((_, until, cut)) if cut[to] && self.now < until) {
            return;
        }
        let at = self.now.max(self.dirs[to].last_delivery) + self.noise.latency_ns;
        let generation = self.dirs[to].generation;
        let incarnation = self.incarnation[to];
        self.schedule(
            at,
            Event::Closed {
                host: to,
                incarnation,
                generation,
            },
        );
    }

    fn crash(&mut self, i: usize) {
        if self.hosts[i].take().is_some() {
            self.note(|| format!("host {} crashes", Self::host_name(i)));
            self.incarnation[i] += 1;
            self.fail_at();
            let open = self.dirs[1 - i].open;
            self.dirs[i].open = false;
            self.dirs[i].generation += 1;
            self.dirs[1 - i].open = false;
            if self.rng.chance(0.5) {
                // The process died, its host lives: what it sent arrives,
                // then its kernel closes the connection.
                if open {
                    self.notify_close(1 - i);
                }
            } else if self.rng.chance(0.5) {
                // The host died with its socket buffers.
                self.dirs[1 - i].generation += 1;
            }
        }
    }

    fn send(&mut self, from: usize, message: &Message) -> Result<(), SimError> {
        let to = 1 - from;
        if from == 0 {
            if let Message::Entries { log } = message {
                self.primary_log.extend_from_slice(log);
                if self.options.broken == Some(Broken::AckOnSend) {
                    self.sent_decoder.push(log);
                    while let Ok(Some(_)) = self.sent_decoder.next() {}
                    let through = self.sent_decoder.next_seq();
                    let time = self.time();
                    if let Some(h) = &mut self.hosts[0] {
                        h.node.receive(&Message::Ack { through, icount: 0 }, time);
                    }
                }
            }
        }
        if !self.dirs[to].open {
            return Ok(());
        }
        let bytes = self.sessions[from]
            .seal(message)
            .map_err(|e| self.violation(format!("sealing a message: {e}")))?;
        let mut deliver =
            self.now + self.noise.latency_ns + self.rng.range(0, self.noise.jitter_ns);
        match self.cut {
            Some((_, _, cut)) if !cut[to] => {}
            Some((Partition::Drop, until, _)) if self.now < until => return Ok(()),
            Some((Partition::Hold, until, _)) if self.now < until => {
                deliver = deliver.max(until + self.rng.range(0, 1_000))
            }
            _ => {}
        }
        if self.rng.chance(self.noise.loss) {
            self.note(|| "a frame is lost".into());
            return Ok(());
        }
        let mut bytes = bytes;
        if self.rng.chance(self.noise.corrupt) {
            let at = self.rng.range(0, bytes.len() as u64) as usize;
            bytes[at] ^= 1 << self.rng.range(0, 8);
            self.note(|| "a frame is corrupted".into());
        }
        let generation = self.dirs[to].generation;
        if self.rng.chance(self.noise.reorder) {
            // Overtakes the frames still in flight.
            self.note(|| "a frame overtakes others".into());
            deliver = self.now + 1;
        } else {
            deliver = deliver.max(self.dirs[to].last_delivery);
            self.dirs[to].last_delivery = deliver;
        }
        if self.rng.chance(self.noise.duplicate) {
            self.note(|| "a frame is duplicated".into());
            self.schedule(
                deliver,
                Event::Deliver {
                    to,
                    generation,
                    bytes: bytes.clone(),
                },
            );
        }
        self.schedule(
            deliver,
            Event::Deliver {
                to,
                generation,
                bytes,
            },
        );
        Ok(())
    }

    fn deliver(&mut self, to: usize, bytes: &[u8]) {
        let dir = &mut self.dirs[to];
        dir.decoder.push(bytes);
        loop {
            let frame = match self.dirs[to].decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => return self.close_connection(to, &format!("host {to} got {e}")),
            };
            let message = match self.sessions[to].open(&frame) {
                Ok(m) => m,
                Err(e) => return self.close_connection(to, &format!("host {to} got {e}")),
            };
            let time = self.time();
            if let Some(h) = &mut self.hosts[to] {
                h.node.receive(&message, time);
                h.next_run = Some(self.now);
            }
        }
    }

    fn arbiter(&mut self, host: usize) -> Verdict {
        let now = self.now;
        if self
            .arbiter_outages
            .iter()
            .any(|&(h, from, to)| h == host && (from..to).contains(&now))
        {
            return Verdict::Unreachable;
        }
        if self.options.broken == Some(Broken::ArbiterAlwaysWins) {
            return Verdict::Won;
        }
        match self.arbiter_winner {
            None => {
                self.arbiter_winner = Some(host);
                Verdict::Won
            }
            Some(w) if w == host => Verdict::Won,
            Some(_) => Verdict::Lost,
        }
    }

    /// Carry out a host's effects.
    fn effects(&mut self, i: usize) -> Result<(), SimError> {
        let Some(h) = &mut self.hosts[i] else {
            return Ok(());
        };
        let mut effects = h.node.take_effects();
        let status = h.node.status().clone();
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
                            self.disk_mode == DiskMode::Shared
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
                Effect::Record(_) => {
                    return Err(self.violation(format!(
                        "host {} records a log of its own: a VM of a pair is never solo",
                        Self::host_name(i)
                    )));
                }
                Effect::PerformOwn(request) => {
                    if self.disk_mode == DiskMode::Shared {
                        return Err(self.violation(format!(
                            "a private-disk write on a shared disk: {request:?}"
                        )));
                    }
                    if let IoRequest::BlockWrite { id, offset, data } = &request {
                        self.record_write(i, *id, *offset, data)?;
                        self.disk_write(i, *offset, data);
                    }
                }
                Effect::Announce { .. } if status != Status::Live => {
                    return Err(self.violation(format!(
                        "host {} announces the VM's address while {}",
                        Self::host_name(i),
                        status_text(&status)
                    )));
                }
                Effect::Announce { mac } => {
                    if mac != VM_MAC {
                        return Err(self.violation(format!(
                            "host {} announces {mac:02x?}, not the VM's address",
                            Self::host_name(i)
                        )));
                    }
                    // A frame to the world (a gratuitous ARP): an output.
                    self.world.announced[i] = true;
                    self.released(i, &status)?;
                    self.note(|| format!("{} announces the VM's address", Self::host_name(i)));
                    self.world.learn(i, self.options.broken);
                }
                Effect::TestAndSet => {
                    let verdict = self.arbiter(i);
                    let at = self.now + self.rng.range(50_000, 3_000_000);
                    self.note(|| format!("{} asks the arbiter: {verdict:?}", Self::host_name(i)));
                    let incarnation = self.incarnation[i];
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

    /// Host `i` releases an output to the world.
    fn released(&mut self, i: usize, status: &Status) -> Result<(), SimError> {
        match self.live_releaser {
            Some(other) if other != i => {
                return Err(self.violation(format!(
                    "host {} releases an output ({}) after host {} released outputs as the live VM",
                    Self::host_name(i),
                    status_text(status),
                    Self::host_name(other)
                )));
            }
            _ => {}
        }
        if *status == Status::Live {
            self.live_releaser = Some(i);
            // A backup that went live announces the VM's address before
            // any output, so the world's traffic reaches it.
            if i == 1 && !self.world.announced[i] {
                return Err(self.violation(format!(
                    "host {} releases an output as the live VM before it announced the VM's \
                     address",
                    Self::host_name(i)
                )));
            }
        }
        Ok(())
    }

    /// Host `i` releases a frame: the switch learns where the VM is, and
    /// the frame goes up the uplink to the world.
    fn transmit(&mut self, i: usize, frame: &[u8]) -> Result<(), SimError> {
        let f = GuestFrame::parse(frame)
            .map_err(|e| self.violation(format!("host {} releases {e}", Self::host_name(i))))?;
        let w = &mut self.world;
        w.learn(i, self.options.broken);
        w.released.insert(f.seq, f);
        w.released_max = w.released_max.max(f.seq);
        if f.magic == MAGIC_ANSWER {
            w.released_answers.entry(f.b).or_insert(f.c);
        }
        let at = (self.now + w.latency_ns + w.rng.range(0, w.jitter_ns)).max(w.uplink_last);
        w.uplink_last = at;
        self.note(|| format!("{} releases {}", Self::host_name(i), f.describe()));
        self.schedule(
            at,
            Event::FrameToWorld {
                from: i,
                frame: frame.to_vec(),
            },
        );
        Ok(())
    }

    /// The client's timer: (re)send the current request through the
    /// switch: to the port where the VM's address was last seen, or to
    /// both while it is unknown.
    fn client_send(&mut self) {
        let frame = self.world.request_frame();
        let request = self.world.request;
        self.world.requests_sent += 1;
        let ports: &[usize] = match self.world.vm_port {
            Some(0) => &[0],
            Some(_) => &[1],
            None => &[0, 1],
        };
        for &port in ports {
            let w = &mut self.world;
            if w.rng.chance(w.loss) {
                self.note(|| format!("request {request} to {} is lost", Self::host_name(port)));
                continue;
            }
            let copies = if w.rng.chance(w.duplicate) { 2 } else { 1 };
            for _ in 0..copies {
                let w = &mut self.world;
                let at = self.now + w.latency_ns + w.rng.range(0, w.jitter_ns);
                self.schedule(
                    at,
                    Event::FrameToHost {
                        host: port,
                        frame: frame.clone(),
                    },
                );
            }
        }
        let generation = self.world.generation;
        self.schedule(self.now + RETRANSMIT_NS, Event::Client { generation });
    }

    /// A frame reaches the world. Every guest frame carries the next
    /// number of one sequence, and the uplink neither loses nor reorders:
    /// the world must see 1, 2, 3, ... with no gap, a frame again only as
    /// a new live VM's re-issue (same bytes, from the other host, among
    /// the last few), and one answer per request.
    fn world_receives(&mut self, from: usize, frame: Vec<u8>) -> Result<(), SimError> {
        let f = GuestFrame::parse(&frame)
            .map_err(|e| self.violation(format!("the world receives {e}")))?;
        let name = Self::host_name(from);
        let w = &mut self.world;
        w.frames_received += 1;
        if f.seq > w.received_max + 1 {
            let max = w.received_max;
            return Err(self.violation(format!(
                "the world receives {} from host {name} after frame {max}: frames {}..{} were \
                 never sent (a gap in the output)",
                f.describe(),
                max + 1,
                f.seq - 1
            )));
        }
        if f.seq == w.received_max + 1 {
            w.received_max = f.seq;
            w.received.insert(f.seq, (from, frame));
        } else {
            let max = w.received_max;
            let Some((first, before)) = w.received.get(&f.seq) else {
                return Err(self.violation(format!("the world lost track of frame {}", f.seq)));
            };
            let first = *first;
            if *before != frame {
                let was = GuestFrame::parse(before).map_or_else(|e| e, |b| b.describe());
                return Err(self.violation(format!(
                    "the world receives {} from host {name}, but it got {was} from host {} \
                     before: two executions sent different frames",
                    f.describe(),
                    Self::host_name(first)
                )));
            }
            if first == from {
                return Err(self.violation(format!("host {name} sends {} twice", f.describe())));
            }
            if f.seq + DUP_WINDOW <= max {
                return Err(self.violation(format!(
                    "the world receives {} again from host {name} long after (it is at frame \
                     {max})",
                    f.describe()
                )));
            }
            self.note(|| format!("the world gets {} again from {name}", f.describe()));
        }
        if f.magic != MAGIC_ANSWER {
            return Ok(());
        }
        let w = &mut self.world;
        let (k, hash) = (f.b, f.c);
        if k > w.request || k == 0 {
            return Err(self.violation(format!(
                "the world receives an answer to request {k}, which the client never sent"
            )));
        }
        match w.answers.get(&k) {
            Some(&h) if h != hash => {
                return Err(self.violation(format!(
                    "the world receives {} from host {name}, but request {k} was answered with \
                     hash {h:#x} before: two executions answered differently",
                    f.describe()
                )));
            }
            Some(_) => {}
            None => {
                w.answers.insert(k, hash);
            }
        }
        if k == w.request {
            // On to the next request after a little while.
            w.request += 1;
            w.generation += 1;
            w.answered_at = self.now;
            w.payload = w.rng.bytes(FRAME_LEN - 26);
            let at = self.now + w.rng.range(0, 3 * MS);
            let generation = w.generation;
            self.schedule(at, Event::Client { generation });
        }
        Ok(())
    }

    /// The guest's network state on host `i` holds every frame and
    /// answer the world got (or will get: they are on the wire): the
    /// execution that continues there produced them, and the same.
    fn check_guest_net(&mut self, i: usize, when: &str) -> Result<(), SimError> {
        let Some(h) = &self.hosts[i] else {
            return Ok(());
        };
        let Some(machine) = h.node.machine() else {
            return Ok(());
        };
        let Some(g) = GuestNet::read(machine, self.net_table) else {
            return Err(self.violation("cannot read the guest's ftg_net".into()));
        };
        let name = Self::host_name(i);
        let w = &self.world;
        if g.sent < w.released_max {
            let f = w.released[&w.released_max];
            return Err(self.violation(format!(
                "{when}, host {name}'s guest has sent {} frames, but the world got {}: an output \
                 the surviving execution never produced",
                g.sent,
                f.describe()
            )));
        }
        for seq in g.sent.saturating_sub(TX_WIN - 1).max(1)..=g.sent {
            let Some(seen) = w.released.get(&seq) else {
                continue;
            };
            let mine = g.frames[(seq % TX_WIN) as usize];
            if mine != *seen {
                return Err(self.violation(format!(
                    "{when}, host {name}'s guest sent {} where the world got {}",
                    mine.describe(),
                    seen.describe()
                )));
            }
        }
        if let Some((&k, _)) = w.released_answers.last_key_value() {
            if g.next_req <= k {
                return Err(self.violation(format!(
                    "{when}, host {name}'s guest expects request {} next, but the world got an \
                     answer to request {k}",
                    g.next_req
                )));
            }
        }
        for (&k, &hash) in w
            .released_answers
            .range(g.next_req.saturating_sub(ANS_WIN)..)
        {
            let (kk, h) = g.answers[(k % ANS_WIN) as usize];
            if (kk, h) != (k, hash) {
                return Err(self.violation(format!(
                    "{when}, host {name}'s guest answered request {k} with hash {h:#x} (its \
                     entry: request {kk}), the world got hash {hash:#x}"
                )));
            }
        }
        Ok(())
    }

    fn console_write(&mut self, i: usize, offset: u64, bytes: &[u8]) -> Result<(), SimError> {
        let len = self.console.len() as u64;
        if offset > len {
            return Err(self.violation(format!(
                "host {} releases console bytes at offset {offset}, but the world's console \
                 ends at {len}: a gap in the output",
                Self::host_name(i)
            )));
        }
        for (k, &b) in bytes.iter().enumerate() {
            let at = offset as usize + k;
            if at < self.console.len() {
                if self.console[at] != b {
                    let from = at.saturating_sub(40);
                    let world = String::from_utf8_lossy(
                        &self.console[from..(at + 20).min(self.console.len())],
                    )
                    .into_owned();
                    let mine = String::from_utf8_lossy(&bytes[k.saturating_sub(40)..]).into_owned();
                    return Err(self.violation(format!(
                        "host {} writes console byte {at} as {:?}, the world saw {:?}: conflicting \
                         output (world: {world:?}; this release: {mine:?})",
                        Self::host_name(i),
                        b as char,
                        self.console[at] as char
                    )));
                }
            } else {
                self.console.push(b);
                self.console_grew_at = self.now;
            }
        }
        // Look for the guest's lost-write report in complete lines.
        while let Some(nl) = self.console[self.console_scanned..]
            .iter()
            .position(|&b| b == b'\n')
        {
            let line = &self.console[self.console_scanned..self.console_scanned + nl];
            if line.starts_with(b"BAD") {
                let line = String::from_utf8_lossy(line).into_owned();
                return Err(self.violation(format!("the guest reports a lost write: {line}")));
            }
            self.console_scanned += nl + 1;
        }
        Ok(())
    }

    fn perform(&mut self, i: usize, mut request: IoRequest) -> Result<(), SimError> {
        let id = request.id();
        let mut write_on_completion = false;
        let mut lost = false;
        if let IoRequest::BlockWrite { offset, data, .. } = &request {
            self.record_write(i, id, *offset, data)?;
            write_on_completion = self.rng.chance(0.5);
            if self.options.broken == Some(Broken::DiskLosesWrites) && self.rng.chance(0.05) {
                self.note(|| format!("the disk loses write {id}"));
                lost = true;
            } else if !write_on_completion {
                self.disk_write(i, *offset, data);
            }
        }
        if lost {
            // Completed as if it were a flush: the data never lands.
            request = IoRequest::BlockFlush { id };
            write_on_completion = false;
        }
        let at = self.now + self.rng.range(20_000, 1_500_000);
        let incarnation = self.incarnation[i];
        self.schedule(
            at,
            Event::IoDone {
                host: i,
                incarnation,
                request: Box::new(request),
                write_on_completion,
            },
        );
        Ok(())
    }

    /// The disk host `i` reaches.
    fn disk_of(&self, i: usize) -> usize {
        match self.disk_mode {
            DiskMode::Shared => 0,
            DiskMode::Private => i,
        }
    }

    /// One execution writes a disk: a request id always carries the same
    /// write.
    fn record_write(
        &mut self,
        i: usize,
        id: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SimError> {
        let disk = self.disk_of(i);
        match self.writes[disk].get(&id) {
            Some((o, d)) if (*o, &d[..]) != (offset, data) => Err(self.violation(format!(
                "host {} writes request {id} to offset {offset}, but it was written to \
                 offset {o} with other data before: two executions wrote the disk",
                Self::host_name(i)
            ))),
            Some(_) => Ok(()),
            None => {
                self.writes[disk].insert(id, (offset, data.to_vec()));
                Ok(())
            }
        }
    }

    fn disk_write(&mut self, i: usize, offset: u64, data: &[u8]) {
        let disk = &mut self.disks[self.disk_of(i)];
        let start = offset as usize;
        if let Some(end) = start.checked_add(data.len()).filter(|&e| e <= disk.len()) {
            disk[start..end].copy_from_slice(data);
        }
    }

    fn completion(&mut self, i: usize, request: &IoRequest, write_on_completion: bool) -> Input {
        let id = request.id();
        let (status, data) = match request {
            IoRequest::BlockRead { offset, len, .. } => {
                let disk = &self.disks[self.disk_of(i)];
                let start = *offset as usize;
                match start
                    .checked_add(*len as usize)
                    .filter(|&e| e <= disk.len())
                {
                    Some(end) => (IoStatus::Ok, disk[start..end].to_vec()),
                    None => (IoStatus::Error, Vec::new()),
                }
            }
            IoRequest::BlockWrite { offset, data, .. } => {
                if write_on_completion {
                    self.disk_write(i, *offset, data);
                }
                (IoStatus::Ok, Vec::new())
            }
            IoRequest::Entropy { len, .. } => (IoStatus::Ok, self.rng.bytes(*len as usize)),
            IoRequest::BlockFlush { .. } | IoRequest::NetTransmit { .. } => {
                (IoStatus::Ok, Vec::new())
            }
            IoRequest::Unsupported { .. } => (IoStatus::Unsupported, Vec::new()),
        };
        Input::IoDone { id, status, data }
    }

    /// The next moment something happens.
    fn next_time(&self) -> u64 {
        let mut t = self.end_ns;
        if let Some((&(at, _), _)) = self.queue.first_key_value() {
            t = t.min(at);
        }
        for h in self.hosts.iter().flatten() {
            if h.node.status().is_done() {
                continue;
            }
            if let Some(r) = h.next_run {
                t = t.min(r);
            }
            if let Some(w) = h.wake_at {
                t = t.min(w);
            }
            t = t.min(h.tick_at());
        }
        t.max(self.now)
    }

    fn step(&mut self) -> Result<bool, SimError> {
        let t = self.next_time();
        self.now = t;
        if self.now >= self.end_ns {
            return Ok(false);
        }
        // Queued events first, in (time, order of scheduling).
        if let Some((&(at, _), _)) = self.queue.first_key_value() {
            if at <= self.now {
                if let Some((_, event)) = self.queue.pop_first() {
                    self.event(event)?;
                }
                return Ok(true);
            }
        }
        let time = self.time();
        for i in 0..2 {
            let Some(h) = &mut self.hosts[i] else {
                continue;
            };
            if h.node.status().is_done() {
                continue;
            }
            if h.tick_at() <= self.now {
                h.last_tick = self.now;
                h.node.tick(time);
                h.next_run = Some(self.now);
                self.effects(i)?;
                return Ok(true);
            }
            if h.wake_at.is_some_and(|w| w <= self.now) {
                h.wake_at = None;
                if let Err(e) = h.node.wake(time) {
                    return Err(self.violation(format!("{}: wake: {e}", Self::host_name(i))));
                }
                h.next_run = Some(self.now);
                self.effects(i)?;
                return Ok(true);
            }
            if h.next_run.is_some_and(|r| r <= self.now) {
                let before = h.node.machine().map_or(0, |m| m.icount());
                // The slice's cost is charged afterwards (the next run
                // waits for it), so both readings are the slice's start.
                let ran = match h.node.run(&mut || time) {
                    Ok(ran) => ran,
                    Err(e) => {
                        return Err(self.violation(format!("{}: run: {e}", Self::host_name(i))));
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
                self.effects(i)?;
                return Ok(true);
            }
        }
        Ok(true)
    }

    fn event(&mut self, event: Event) -> Result<(), SimError> {
        match event {
            Event::Fault(Fault::Crash(i)) => self.crash(i),
            Event::Fault(Fault::Cut { mode, until, cut }) => {
                self.note(|| format!("partition {mode:?} {cut:?} until {until}"));
                self.cut = Some((mode, until, cut));
                if until == u64::MAX {
                    self.fail_at();
                }
            }
            Event::Fault(Fault::Stop) => {
                // The user stops the pair where it runs: the live VM if
                // there is one, else the primary.
                let time = self.time();
                let statuses = self.statuses();
                let target = [Status::Live, Status::Primary, Status::Arbitrating]
                    .iter()
                    .find_map(|want| statuses.iter().position(|s| s.as_ref() == Some(want)));
                if let Some(i) = target {
                    if let Some(h) = &mut self.hosts[i] {
                        if let Err(e) = h.node.stop(time) {
                            return Err(
                                self.violation(format!("{}: stop: {e}", Self::host_name(i)))
                            );
                        }
                        h.next_run = Some(self.now);
                        self.note(|| format!("{} is stopped", Self::host_name(i)));
                        self.effects(i)?;
                    }
                }
            }
            Event::Deliver {
                to,
                generation,
                bytes,
            } => {
                if self.dirs[to].generation == generation && self.hosts[to].is_some() {
                    self.deliver(to, &bytes);
                    self.effects(to)?;
                }
            }
            Event::IoDone {
                host,
                incarnation,
                request,
                write_on_completion,
            } => {
                if self.incarnation[host] != incarnation || self.hosts[host].is_none() {
                    return Ok(());
                }
                let input = self.completion(host, &request, write_on_completion);
                let time = self.time();
                if let Some(h) = &mut self.hosts[host] {
                    if let Err(e) = h.node.input(input, time) {
                        return Err(
                            self.violation(format!("{}: input: {e}", Self::host_name(host)))
                        );
                    }
                    h.wake_at = None;
                    h.next_run = Some(self.now);
                }
                self.effects(host)?;
            }
            Event::Closed {
                host,
                incarnation,
                generation,
            } => {
                if self.incarnation[host] == incarnation && self.dirs[host].generation == generation
                {
                    self.note(|| format!("{} learns the connection closed", Self::host_name(host)));
                    if let Some(h) = &mut self.hosts[host] {
                        h.node.channel_closed(true);
                        h.next_run = Some(self.now);
                    }
                }
            }
            Event::Client { generation } => {
                if generation == self.world.generation {
                    self.client_send();
                }
            }
            Event::FrameToHost { host, frame } => {
                let time = self.time();
                let Some(h) = &mut self.hosts[host] else {
                    return Ok(());
                };
                // A backup's node ignores input while it replays: only a
                // running VM logs the frame.
                if !matches!(
                    h.node.status(),
                    Status::Primary | Status::Live | Status::Arbitrating
                ) {
                    return Ok(());
                }
                if let Err(e) = h.node.input(Input::NetReceive { frame }, time) {
                    return Err(self.violation(format!("{}: input: {e}", Self::host_name(host))));
                }
                h.wake_at = None;
                h.next_run = Some(self.now);
                self.effects(host)?;
            }
            Event::FrameToWorld { from, frame } => self.world_receives(from, frame)?,
            Event::Verdict {
                host,
                incarnation,
                verdict,
            } => {
                if self.incarnation[host] != incarnation {
                    return Ok(());
                }
                let time = self.time();
                if let Some(h) = &mut self.hosts[host] {
                    if let Err(e) = h.node.verdict(verdict, time) {
                        return Err(
                            self.violation(format!("{}: verdict: {e}", Self::host_name(host)))
                        );
                    }
                    h.next_run = Some(self.now);
                }
                self.effects(host)?;
            }
        }
        Ok(())
    }

    /// The invariants that hold at every step.
    fn check(&mut self) -> Result<(), SimError> {
        let mut live = 0;
        for i in 0..2 {
            let Some(h) = &self.hosts[i] else { continue };
            match h.node.status() {
                Status::Halted(why) if !why.code().is_expected() => {
                    return Err(
                        self.violation(format!("host {} halted: {why}", Self::host_name(i)))
                    );
                }
                Status::Live => {
                    live += 1;
                    if i == 1 {
                        self.took_over = true;
                    }
                }
                _ => {}
            }
        }
        if live > 1 {
            return Err(self.violation("both VMs are live at once".into()));
        }
        if live == 1 {
            self.live_since.get_or_insert(self.now);
        }
        for i in 0..2 {
            let is_live = self.hosts[i]
                .as_ref()
                .is_some_and(|h| *h.node.status() == Status::Live);
            if is_live && self.live_at[i].is_none() {
                self.live_at[i] = Some(self.now);
                // A failover with no failure counted yet (a partition):
                // the pair has lost its redundancy all the same, so a
                // crash of this VM is a second failure.
                if self.failures == 0 {
                    self.fail_at();
                }
                self.check_guest_net(i, "when it goes live")?;
            }
            // Liveness of the network: a live VM answers the client (the
            // switch sends the client's frames to it).
            if let Some(since) = self.live_at[i].filter(|_| is_live) {
                let last = since.max(self.world.answered_at);
                if self.now > last + LIVE_ANSWER_NS {
                    return Err(self.violation(format!(
                        "host {} is live since {} ms, but the client's request {} has had no \
                         answer since {} ms (the switch sends the VM's frames to {})",
                        Self::host_name(i),
                        since / MS,
                        self.world.request,
                        self.world.answered_at / MS,
                        self.world.vm_port.map_or("both hosts", Self::host_name),
                    )));
                }
            }
        }
        let healthy = self.failure_at.is_none()
            && self.dirs.iter().all(|d| d.open)
            && matches!(
                self.statuses(),
                [Some(Status::Primary), Some(Status::Backup)]
            );
        let last = self.world.started_at.max(self.world.answered_at);
        if healthy && self.now > last + HEALTHY_ANSWER_NS {
            return Err(self.violation(format!(
                "the pair is healthy, but the client's request {} has had no answer since {} ms",
                self.world.request,
                self.world.answered_at / MS
            )));
        }
        Ok(())
    }

    fn statuses(&self) -> [Option<Status>; 2] {
        [0, 1].map(|i| self.hosts[i].as_ref().map(|h| h.node.status().clone()))
    }

    /// Liveness and the end-of-run checks.
    fn finish(&mut self) -> Result<Outcome, SimError> {
        let statuses = self.statuses();
        let any = |f: &dyn Fn(&Status) -> bool| statuses.iter().flatten().any(f);
        let ended = any(&|s| matches!(s, Status::Ended(_)));
        let live = any(&|s| *s == Status::Live);
        let never_started = any(&|s| matches!(s, Status::Halted(HaltReason::NothingToTakeOver)));
        let healthy = matches!(statuses, [Some(Status::Primary), Some(Status::Backup)])
            && self.dirs.iter().all(|d| d.open);
        let failed_long_ago = self
            .failure_at
            .is_some_and(|t| self.now >= t + LIVENESS_BOUND_NS + self.longest_outage());
        // Liveness is promised after a single failure only.
        let single = self.failures <= 1;
        if single && !ended && !live && !never_started && !healthy && failed_long_ago {
            return Err(self.violation(format!(
                "no VM is live {} ms after the failure: A {}, B {}",
                (self.now - self.failure_at.unwrap_or(0)) / MS,
                statuses[0].as_ref().map_or("crashed".into(), status_text),
                statuses[1].as_ref().map_or("crashed".into(), status_text),
            )));
        }
        let running_long = (live
            && self
                .live_since
                .is_some_and(|t| self.now >= t + 2 * CONSOLE_STALL_NS))
            || (healthy && self.failure_at.is_none());
        if running_long && self.now > self.console_grew_at + CONSOLE_STALL_NS {
            return Err(self.violation(format!(
                "the console has not grown since {} ms",
                self.console_grew_at / MS
            )));
        }
        // The guest of the VM that runs on (the live one, else a primary
        // whose backup never went live) produced every frame the world got.
        let running = [Status::Live, Status::Primary, Status::Arbitrating]
            .iter()
            .find_map(|want| statuses.iter().position(|s| s.as_ref() == Some(want)));
        if let Some(i) = running {
            if statuses[i] == Some(Status::Live) || self.live_at[1 - i].is_none() {
                self.check_guest_net(i, "at the end")?;
            }
        }
        // Every write the running VM saw complete is on the disk.
        for (i, h) in self.hosts.iter().enumerate() {
            let Some(h) = h else { continue };
            if !matches!(
                h.node.status(),
                Status::Live | Status::Primary | Status::Arbitrating
            ) {
                continue;
            }
            let Some(machine) = h.node.machine() else {
                continue;
            };
            let mut table = [0u8; NSEC * 24];
            if machine.hart().ram().read(self.table, &mut table).is_err() {
                return Err(self.violation("cannot read the guest's ftg_table".into()));
            }
            for s in 0..NSEC {
                let word = |k: usize| {
                    let at = s * 24 + k * 8;
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&table[at..at + 8]);
                    u64::from_le_bytes(w)
                };
                if word(0) != 1 {
                    continue;
                }
                let (n, hash) = (word(1), word(2));
                let offset = (1 + s) * SECTOR;
                let disk = self.disk_of(i);
                let sector = &self.disks[disk][offset..offset + SECTOR];
                let expected = (0..SECTOR).all(|b| sector[b] == record_byte(n, hash, b as u32));
                // A later write to the sector may be on the disk already,
                // its completion not yet seen by the guest.
                let mut later = [0u8; 8];
                later.copy_from_slice(&sector[8..16]);
                let newer = u64::from_le_bytes(later) > n
                    && self.writes[disk]
                        .values()
                        .any(|(o, d)| *o == offset as u64 && d[..] == *sector);
                if !expected && !newer {
                    return Err(self.violation(format!(
                        "sector {} lacks the write of tick {n} whose completion host {}'s guest \
                         saw: an acknowledged write is lost",
                        1 + s,
                        Self::host_name(i)
                    )));
                }
            }
        }
        // The primary's whole log replays with every checkpoint matching.
        let mut replayed_entries = 0;
        match Replayer::new(
            &self.primary_log[..],
            self.options.engine,
            &ImageMap::of([&self.guest]),
        ) {
            Ok(mut replayer) => match replayer.run(&mut |_| {}) {
                Ok(done) => replayed_entries = done.entries,
                Err(ReplayError::Log(LogError::NoEnd { next })) => replayed_entries = next,
                Err(e) => {
                    return Err(self.violation(format!("the primary's log does not replay: {e}")));
                }
            },
            Err(ReplayError::Log(_)) if self.primary_log.is_empty() => {}
            Err(e) => return Err(self.violation(format!("the primary's log does not open: {e}"))),
        }
        let ticks_seen = self
            .console
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"tick "))
            .count() as u64;
        Ok(Outcome {
            seed: self.seed,
            virtual_ns: self.now,
            plan: self.plan.clone(),
            a: statuses[0].as_ref().map_or("crashed".into(), status_text),
            b: statuses[1].as_ref().map_or("crashed".into(), status_text),
            console_bytes: self.console.len() as u64,
            ticks_seen,
            takeover: self.took_over,
            replayed_entries,
            requests_answered: self.world.answers.len() as u64,
            frames_received: self.world.frames_received,
        })
    }

    fn longest_outage(&self) -> u64 {
        self.arbiter_outages
            .iter()
            .map(|&(_, from, to)| to - from)
            .max()
            .unwrap_or(0)
    }
}

/// Byte `i` of the guest's record for tick `n` with hash `h` (ftguest.c's
/// `record_byte`).
fn record_byte(n: u64, h: u64, i: u32) -> u8 {
    if i < 8 {
        return (0x4654_4754u64 >> (8 * (i & 3))) as u8;
    }
    if i < 16 {
        return (n >> (8 * (i - 8))) as u8;
    }
    if i < 24 {
        return (h >> (8 * (i - 16))) as u8;
    }
    (h >> (8 * (i & 7))) as u8 ^ i as u8
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
    if let Some(broken) = options.broken {
        command.push_str(" --broken ");
        command.push_str(broken.name());
    }
    command
}

/// Run one seed. A panic anywhere in the code under test is a failure of
/// the seed, not of the caller.
pub fn run_seed(seed: u64, options: &Options) -> Result<Outcome, SimError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| simulate(seed, options)))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Err(SimError::Violation {
                seed,
                at_ns: 0,
                what: format!("panicked: {what}"),
                plan: Vec::new(),
                rerun: rerun_command(seed, options),
                trace: Vec::new(),
            })
        })
}

fn simulate(seed: u64, options: &Options) -> Result<Outcome, SimError> {
    let mut sim = Sim::new(seed, options.clone())?;
    let (mut same, mut last) = (0u64, u64::MAX);
    loop {
        let going = sim.step()?;
        if sim.now == last {
            same += 1;
            if same > 100_000 {
                return Err(
                    sim.violation("the simulation makes no progress in virtual time".into())
                );
            }
        } else {
            (same, last) = (0, sim.now);
        }
        sim.check()?;
        if !going {
            break;
        }
        if sim
            .hosts
            .iter()
            .flatten()
            .all(|h| h.node.status().is_done())
            && sim.queue.is_empty()
        {
            break;
        }
    }
    sim.finish()
}
