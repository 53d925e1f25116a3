//! The world outside the pair: the network between the hosts' ports and
//! one client (the real learning [`Switch`] of `ftvm switch`, in virtual
//! time), the client itself, and what the world received.

use std::collections::BTreeMap;
use std::time::Duration;

use ftvm_net::switch::{PortId, Switch, announcement};

use crate::guest::{ETHERTYPE, FRAME_LEN, GuestFrame, MAGIC_ANSWER, MAGIC_REQUEST, WORLD_MAC};
use crate::invariants::{Invariant, Output};
use crate::plan::WorldPlan;
use crate::sim::{Event, Sim, host_name};
use crate::{Broken, MS, Options, Rng, SimError, VM_MAC};

/// The client resends a request it got no answer to after this long.
const RETRANSMIT_NS: u64 = 50 * MS;
/// A frame the world got may arrive again (a new live VM re-issues the
/// transmits it has no completion for) only if it is among the last this
/// many: the guest has 8 transmit descriptors, and a completion is
/// logged within 1.5 ms.
const DUP_WINDOW: u64 = 16;

/// The client: one request at a time, resent until answered.
pub(crate) struct Client {
    /// The current request, and its timer generation.
    pub request: u64,
    pub generation: u64,
    payload: Vec<u8>,
    pub answered_at: u64,
    pub started_at: u64,
    /// Requests sent, retransmissions included.
    pub requests_sent: u64,
}

/// The guest's frames the world received.
#[derive(Default)]
pub(crate) struct Received {
    /// Sequence number -> (the host it came from, by id, the frame).
    frames: BTreeMap<u64, (usize, Vec<u8>)>,
    /// The highest sequence number.
    max: u64,
    /// Duplicates included.
    pub count: u64,
    /// Request -> hash.
    pub answers: BTreeMap<u64, u64>,
}

/// What the hosts released (on the wire, maybe not arrived yet).
#[derive(Default)]
pub(crate) struct Released {
    /// Sequence number -> frame.
    pub frames: BTreeMap<u64, GuestFrame>,
    /// The highest sequence number.
    pub max: u64,
    /// Request -> hash.
    pub answers: BTreeMap<u64, u64>,
}

/// A port of the switch: a host's, or the world's (the client's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Host(usize),
    World,
}

/// The network between the world (one client) and the hosts' ports: the
/// real learning switch, and the client.
pub(crate) struct World {
    rng: Rng,
    /// The faults of frames from one host's port to the other's (the
    /// VM's broadcasts reach the other host too): a stream of their own,
    /// so that they do not shift the client's.
    between_hosts: Rng,
    /// World -> VM: delay, jitter, loss and duplication per frame on the
    /// links from the switch to the hosts' ports; the same delay and
    /// jitter on the uplink to the world.
    links: WorldPlan,
    /// The forwarding logic of `ftvm switch`, its time the virtual time.
    /// No port expires: a run is shorter than the switch's port timeout.
    switch: Switch,
    /// The switch's ports: host A's, host B's, the world's.
    ports: [PortId; 3],
    /// Switch -> world is one FIFO uplink, never lossy: when its last
    /// frame arrives.
    uplink_last: u64,
    pub client: Client,
    pub received: Received,
    pub released: Released,
    /// Each host announced the VM's address.
    pub announced: [bool; 2],
}

impl World {
    /// The world of `seed`, and its line of the plan.
    pub fn new(seed: u64, options: &Options) -> World {
        // Its own stream, so the number of frames does not shift the
        // channel's faults.
        let mut rng = Rng::new(seed ^ 0x6e65_7477_6f72_6b21);
        let links = WorldPlan::draw(&mut rng, options);
        let client = Client {
            request: 1,
            generation: 0,
            payload: rng.bytes(FRAME_LEN - 26),
            answered_at: 0,
            started_at: links.started_at,
            requests_sent: 0,
        };
        let mut switch = Switch::default();
        let ports = [0, 1, 2].map(|_| switch.attach(Duration::ZERO));
        World {
            rng,
            between_hosts: Rng::new(seed ^ 0x686f_7374_2d68_6f73),
            links,
            switch,
            ports,
            uplink_last: 0,
            client,
            received: Received::default(),
            released: Released::default(),
            announced: [false, false],
        }
    }

    pub fn plan_line(&self) -> String {
        self.links.line.clone()
    }

    /// The client's request `k`: to the VM, from the world, then `k` and
    /// random bytes (the same for every retransmission).
    fn request_frame(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(FRAME_LEN);
        f.extend_from_slice(&VM_MAC);
        f.extend_from_slice(&WORLD_MAC);
        f.extend_from_slice(&ETHERTYPE);
        f.extend_from_slice(&MAGIC_REQUEST.to_le_bytes());
        f.extend_from_slice(&self.client.request.to_le_bytes());
        f.extend_from_slice(&self.client.payload);
        f
    }

    fn port_id(&self, port: Port) -> PortId {
        match port {
            Port::Host(i) => self.ports[i],
            Port::World => self.ports[2],
        }
    }

    fn port(&self, id: PortId) -> Option<Port> {
        match self.ports.iter().position(|&p| p == id)? {
            2 => Some(Port::World),
            i => Some(Port::Host(i)),
        }
    }

    /// The host whose port the switch sends the VM's frames to, if it
    /// knows one.
    pub fn vm_host(&self) -> Option<usize> {
        match self.port(self.switch.port_of(&VM_MAC)?)? {
            Port::Host(i) => Some(i),
            Port::World => None,
        }
    }

    /// A frame enters the switch on `from` at virtual time `now`: the
    /// ports it goes out on. The stale switch ([`Broken::StaleSwitch`])
    /// never moves an address it learnt to another port: such a frame's
    /// source is hidden from the real switch's learning (a group address
    /// in its place, which it never learns), and it is forwarded as the
    /// real switch forwards it.
    fn forward(&mut self, from: Port, frame: &[u8], now: u64, broken: Option<Broken>) -> Vec<Port> {
        let id = self.port_id(from);
        let now = Duration::from_nanos(now);
        let moved = frame
            .get(6..12)
            .and_then(|src| self.switch.port_of(src.try_into().ok()?))
            .is_some_and(|p| p != id);
        let out = if broken == Some(Broken::StaleSwitch) && moved {
            let mut masked = frame.to_vec();
            masked[6] |= 1;
            self.switch.forward(id, &masked, now)
        } else {
            self.switch.forward(id, frame, now)
        };
        out.into_iter().filter_map(|p| self.port(p)).collect()
    }
}

/// What a frame on the world's network is, for the trace.
fn describe(frame: &[u8]) -> String {
    if frame.get(14..18) == Some(&MAGIC_REQUEST.to_le_bytes()[..]) {
        if let Some(k) = frame.get(18..26).and_then(|k| k.try_into().ok()) {
            return format!("request {}", u64::from_le_bytes(k));
        }
    }
    if frame == announcement(VM_MAC) {
        return "the announcement".into();
    }
    GuestFrame::parse(frame).map_or_else(|_| "a frame".into(), |f| f.describe())
}

impl Sim {
    /// Host `i` releases a frame: it goes into the switch through the
    /// host's port (which teaches the switch where the VM is), and up the
    /// uplink to the world.
    pub(crate) fn transmit(&mut self, i: usize, frame: &[u8]) -> Result<(), SimError> {
        let f = GuestFrame::parse(frame).map_err(|e| {
            self.violation(
                Invariant::OutputConsistency(Output::Frames),
                format!("host {} releases {e}", self.name(i)),
            )
        })?;
        let r = &mut self.world.released;
        r.frames.insert(f.seq, f);
        r.max = r.max.max(f.seq);
        if f.magic == MAGIC_ANSWER {
            r.answers.entry(f.b).or_insert(f.c);
        }
        let name = self.name(i);
        let icount = self.hosts.slot[i]
            .as_ref()
            .and_then(|h| h.machine())
            .map_or(0, |m| m.icount());
        self.note(|| format!("{name} releases {} at icount {icount}", f.describe()));
        self.switch_frame(Port::Host(i), frame);
        Ok(())
    }

    /// Host `i` announces the VM's address: the announcement a live VM
    /// broadcasts (`ftvm_net::switch::announcement`) goes into the switch
    /// through its port.
    pub(crate) fn announce(&mut self, i: usize) {
        let name = self.name(i);
        self.note(|| format!("{name} announces the VM's address"));
        self.switch_frame(Port::Host(i), &announcement(VM_MAC));
    }

    /// A frame enters the switch on `from`; it leaves on the ports the
    /// switch chooses: toward a host, delayed and maybe lost or
    /// duplicated; toward the world, up the uplink.
    fn switch_frame(&mut self, from: Port, frame: &[u8]) {
        for to in self
            .world
            .forward(from, frame, self.now, self.options.broken)
        {
            match (from, to) {
                (_, Port::Host(host)) => self.toward_host(from, host, frame),
                (Port::Host(slot), Port::World) => {
                    let from = self.hosts.id[slot];
                    let w = &mut self.world;
                    let at = (self.now + w.links.latency_ns + w.rng.range(0, w.links.jitter_ns))
                        .max(w.uplink_last);
                    w.uplink_last = at;
                    self.schedule(
                        at,
                        Event::FrameToWorld {
                            from,
                            frame: frame.to_vec(),
                        },
                    );
                }
                // The switch never sends a frame back where it came from.
                (Port::World, Port::World) => {}
            }
        }
    }

    /// The link from the switch to host `host`'s port, for a frame that
    /// came in on `from`.
    fn toward_host(&mut self, from: Port, host: usize, frame: &[u8]) {
        let w = &mut self.world;
        let rng = match from {
            Port::World => &mut w.rng,
            Port::Host(_) => &mut w.between_hosts,
        };
        if rng.chance(w.links.loss) {
            let name = self.name(host);
            self.note(|| format!("{} to {name} is lost", describe(frame)));
            return;
        }
        let copies = if rng.chance(w.links.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let w = &mut self.world;
            let rng = match from {
                Port::World => &mut w.rng,
                Port::Host(_) => &mut w.between_hosts,
            };
            let at = self.now + w.links.latency_ns + rng.range(0, w.links.jitter_ns);
            self.schedule(
                at,
                Event::FrameToHost {
                    host,
                    frame: frame.to_vec(),
                },
            );
        }
    }

    /// The client's timer: (re)send the current request through the
    /// switch (to the port where the VM's address was last seen, or to
    /// both hosts while it is unknown).
    pub(crate) fn client_send(&mut self, generation: u64) {
        if generation != self.world.client.generation {
            return;
        }
        let frame = self.world.request_frame();
        self.world.client.requests_sent += 1;
        self.switch_frame(Port::World, &frame);
        let generation = self.world.client.generation;
        self.schedule(self.now + RETRANSMIT_NS, Event::Client { generation });
    }

    /// A frame reaches the world. Every guest frame carries the next
    /// number of one sequence, and the uplink neither loses nor reorders:
    /// the world must see 1, 2, 3, ... with no gap, a frame again only as
    /// a new live VM's re-issue (same bytes, from another host, among
    /// the last few), and one answer per request. `from` is the sending
    /// host's id.
    pub(crate) fn world_receives(&mut self, from: usize, frame: Vec<u8>) -> Result<(), SimError> {
        if frame == announcement(VM_MAC) {
            self.note(|| format!("the world sees {}'s announcement", host_name(from)));
            return Ok(());
        }
        let f = GuestFrame::parse(&frame).map_err(|e| {
            self.violation(
                Invariant::OutputConsistency(Output::Frames),
                format!("the world receives {e}"),
            )
        })?;
        let name = host_name(from);
        let r = &mut self.world.received;
        r.count += 1;
        if f.seq > r.max + 1 {
            let max = r.max;
            return Err(self.violation(
                Invariant::OutputConsistency(Output::FrameGap),
                format!(
                    "the world receives {} from host {name} after frame {max}: frames {}..{} were \
                 never sent (a gap in the output)",
                    f.describe(),
                    max + 1,
                    f.seq - 1
                ),
            ));
        }
        if f.seq == r.max + 1 {
            r.max = f.seq;
            r.frames.insert(f.seq, (from, frame));
        } else {
            let max = r.max;
            let Some((first, before)) = r.frames.get(&f.seq) else {
                return Err(self.violation(
                    Invariant::Harness,
                    format!("the world lost track of frame {}", f.seq),
                ));
            };
            let first = *first;
            if *before != frame {
                let was = GuestFrame::parse(before).map_or_else(|e| e, |b| b.describe());
                return Err(self.violation(
                    Invariant::OutputConsistency(Output::Frames),
                    format!(
                        "the world receives {} from host {name}, but it got {was} from host {} \
                     before: two executions sent different frames",
                        f.describe(),
                        host_name(first)
                    ),
                ));
            }
            if first == from {
                return Err(self.violation(
                    Invariant::OutputConsistency(Output::Frames),
                    format!("host {name} sends {} twice", f.describe()),
                ));
            }
            if f.seq + DUP_WINDOW <= max {
                return Err(self.violation(
                    Invariant::OutputConsistency(Output::Frames),
                    format!(
                        "the world receives {} again from host {name} long after (it is at frame \
                     {max})",
                        f.describe()
                    ),
                ));
            }
            self.note(|| format!("the world gets {} again from {name}", f.describe()));
        }
        if f.magic != MAGIC_ANSWER {
            return Ok(());
        }
        let (k, hash) = (f.b, f.c);
        if k > self.world.client.request || k == 0 {
            return Err(self.violation(
                Invariant::OutputConsistency(Output::Frames),
                format!("the world receives an answer to request {k}, which the client never sent"),
            ));
        }
        match self.world.received.answers.get(&k) {
            Some(&h) if h != hash => {
                return Err(self.violation(
                    Invariant::OutputConsistency(Output::Frames),
                    format!(
                        "the world receives {} from host {name}, but request {k} was answered with \
                     hash {h:#x} before: two executions answered differently",
                        f.describe()
                    ),
                ));
            }
            Some(_) => {}
            None => {
                self.world.received.answers.insert(k, hash);
            }
        }
        let w = &mut self.world;
        if k == w.client.request {
            // On to the next request after a little while.
            let c = &mut w.client;
            c.request += 1;
            c.generation += 1;
            c.answered_at = self.now;
            c.payload = w.rng.bytes(FRAME_LEN - 26);
            let at = self.now + w.rng.range(0, 3 * MS);
            let generation = c.generation;
            self.schedule(at, Event::Client { generation });
        }
        Ok(())
    }
}
