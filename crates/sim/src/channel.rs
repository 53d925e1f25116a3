//! The logging channel between the two hosts, both directions, through
//! the real channel code (handshake, sealing, framing, authentication),
//! with the seed's faults: delay and jitter, loss, duplication,
//! reordering, corruption, partitions. Each pairing has a connection of
//! its own (a restore's new backup is connected to for the clone, with
//! the pairing's epoch in its handshake); what was in flight on an older
//! one is lost.

use ftvm_ft::channel::{self, CHANNEL_FRAME_MAX, FrameDecoder, Handshake, Message, Role, Session};

use crate::invariants::Invariant;
use crate::plan::{Noise, Partition};
use crate::sim::{Event, Sim};
use crate::{Rng, SimError};

const PAIR: &str = crate::host::PAIR;

/// One direction of the connection, named by the host it goes to.
struct Direction {
    open: bool,
    /// Bumped when what is in flight this way is lost: frames and close
    /// notices of an older generation are dropped on arrival.
    generation: u64,
    decoder: FrameDecoder,
    last_delivery: u64,
}

pub(crate) struct Channel {
    /// The pair's pre-shared key.
    pub key: [u8; 32],
    /// Each host's sending session, indexed by slot.
    sessions: [Session; 2],
    /// Indexed by the receiving host's slot.
    dirs: [Direction; 2],
    noise: Noise,
    /// A partition: its mode, when it heals, which directions it cuts.
    cut: Option<(Partition, u64, [bool; 2])>,
}

impl Channel {
    /// The connection of pairing `epoch` between the primary in slot
    /// `primary` and the backup in the other, after the real handshake,
    /// through the real messages and framing, with nonces from `rng`.
    /// Each direction starts at `generations` (above any older
    /// connection's, whose frames in flight are then lost).
    pub fn connect(
        rng: &mut Rng,
        key: [u8; 32],
        epoch: u64,
        primary: usize,
        generations: [u64; 2],
    ) -> Result<Channel, String> {
        let nonce = |rng: &mut Rng| -> [u8; 16] {
            let mut n = [0u8; 16];
            n.copy_from_slice(&rng.bytes(16));
            n
        };
        let (mut hp, hello_p) = Handshake::start(Role::Primary, PAIR, epoch, key, nonce(rng));
        let (mut hb, hello_b) = Handshake::start(Role::Backup, PAIR, epoch, key, nonce(rng));
        let wire = |m: &Message| -> Result<Message, String> {
            let mut d = FrameDecoder::default();
            d.push(&channel::encode(m));
            let frame = d
                .next_frame()
                .map_err(|e| e.to_string())?
                .ok_or("no frame")?;
            channel::decode(&frame).map_err(|e| e.to_string())
        };
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
        let mut sessions = [
            hp.session().ok_or("primary not established")?,
            hb.session().ok_or("backup not established")?,
        ];
        if primary == 1 {
            sessions.swap(0, 1);
        }
        Ok(Channel {
            key,
            sessions,
            dirs: generations.map(|generation| Direction {
                open: true,
                generation,
                decoder: FrameDecoder::new(CHANNEL_FRAME_MAX),
                last_delivery: 0,
            }),
            noise: Noise::default(),
            cut: None,
        })
    }

    /// The faults of the seed's plan (drawn after the handshake).
    pub fn set_noise(&mut self, noise: Noise) {
        self.noise = noise;
    }

    /// The seed's faults, for a new pairing's connection.
    pub fn noise(&self) -> Noise {
        self.noise.clone()
    }

    /// Generations above every one of this connection's, for the next.
    pub fn next_generations(&self) -> [u64; 2] {
        self.dirs.each_ref().map(|d| d.generation + 1)
    }

    /// Both directions are open.
    pub fn is_open(&self) -> bool {
        self.dirs.iter().all(|d| d.open)
    }

    /// The generation of the direction toward host `to`.
    pub fn generation(&self, to: usize) -> u64 {
        self.dirs[to].generation
    }

    pub fn partition(&mut self, mode: Partition, until: u64, cut: [bool; 2]) {
        self.cut = Some((mode, until, cut));
    }

    /// Host `i` crashed: nothing more goes either way. `open` says whether
    /// the direction toward its peer was open before.
    pub fn crashed(&mut self, i: usize) -> bool {
        let open = self.dirs[1 - i].open;
        self.dirs[i].open = false;
        self.dirs[i].generation += 1;
        self.dirs[1 - i].open = false;
        open
    }

    /// What was in flight toward host `to` is lost (its peer's host died
    /// with its socket buffers).
    pub fn lose_in_flight(&mut self, to: usize) {
        self.dirs[to].generation += 1;
    }
}

impl Sim {
    /// Host `at` closes the connection for good, both directions, as the
    /// daemon does on a bad frame: what was sent to it is gone, nothing
    /// more is sent either way. What it sent before still arrives, and
    /// then the peer learns of the close (unless the network is cut).
    pub(crate) fn close_connection(&mut self, at: usize, why: &str) {
        if !self.channel.dirs.iter().any(|d| d.open) {
            return;
        }
        self.fail_at();
        self.disrupted();
        self.drop_connection(at, why);
        let now = self.now;
        if let Some(h) = &mut self.hosts.slot[at] {
            h.channel_closed(false, now);
        }
        self.clone_connection_closed(at);
    }

    /// Host `at` drops the connection (it failed a check, or the host gave
    /// a clone up): as [`Sim::close_connection`], but its own VM is not
    /// told (the host decided).
    pub(crate) fn drop_connection(&mut self, at: usize, why: &str) {
        if !self.channel.dirs.iter().any(|d| d.open) {
            return;
        }
        let why = why.to_string();
        self.note(|| format!("connection closed: {why}"));
        for d in &mut self.channel.dirs {
            d.open = false;
        }
        self.channel.dirs[at].generation += 1;
        self.notify_close(1 - at);
    }

    /// Tell host `to`, after what is in flight to it, that the connection
    /// closed (a FIN/RST), unless the network toward it is cut.
    pub(crate) fn notify_close(&mut self, to: usize) {
        let c = &self.channel;
        if matches!(c.cut, Some((_, until, cut)) if cut[to] && self.now < until) {
            return;
        }
        let at = self.now.max(c.dirs[to].last_delivery) + c.noise.latency_ns;
        let generation = c.dirs[to].generation;
        let incarnation = self.hosts.incarnation[to];
        self.schedule(
            at,
            Event::Closed {
                host: to,
                incarnation,
                generation,
            },
        );
    }

    /// Host `from` sends `message` to its peer.
    pub(crate) fn send(&mut self, from: usize, message: &Message) -> Result<(), SimError> {
        self.hand_over_sent(from, message)?;
        let Some(message) = self.sent_by(from, message) else {
            return Ok(());
        };
        self.send_at(from, &message, self.now)
    }

    /// Host `from`'s `message` leaves at `at` (a clone's stream is
    /// written at the link's pace).
    pub(crate) fn send_at(
        &mut self,
        from: usize,
        message: &Message,
        at: u64,
    ) -> Result<(), SimError> {
        let to = 1 - from;
        if !self.channel.dirs[to].open {
            return Ok(());
        }
        let bytes = self.channel.sessions[from]
            .seal(message)
            .map_err(|e| self.violation(Invariant::Error, format!("sealing a message: {e}")))?;
        let noise = &self.channel.noise;
        let mut deliver = at + noise.latency_ns + self.rng.range(0, noise.jitter_ns);
        match self.channel.cut {
            Some((_, _, cut)) if !cut[to] => {}
            Some((Partition::Drop, until, _)) if self.now < until => return Ok(()),
            Some((Partition::Hold, until, _)) if self.now < until => {
                deliver = deliver.max(until + self.rng.range(0, 1_000))
            }
            _ => {}
        }
        if self.rng.chance(self.channel.noise.loss) {
            self.note(|| "a frame is lost".into());
            return Ok(());
        }
        let mut bytes = bytes;
        if self.rng.chance(self.channel.noise.corrupt) {
            let at = self.rng.range(0, bytes.len() as u64) as usize;
            bytes[at] ^= 1 << self.rng.range(0, 8);
            self.note(|| "a frame is corrupted".into());
        }
        let generation = self.channel.dirs[to].generation;
        if self.rng.chance(self.channel.noise.reorder) {
            // Overtakes the frames still in flight.
            self.note(|| "a frame overtakes others".into());
            deliver = self.now + 1;
        } else {
            let dir = &mut self.channel.dirs[to];
            deliver = deliver.max(dir.last_delivery);
            dir.last_delivery = deliver;
        }
        if self.rng.chance(self.channel.noise.duplicate) {
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

    /// Frame bytes sent on connection generation `generation` reach host
    /// `to`: they are cut into frames, authenticated and handed to its
    /// node (or, while a new backup's host takes a clone's snapshot, to
    /// it); a bad one closes the connection. False if they were lost on
    /// the way (an older generation, or the host is gone).
    pub(crate) fn deliver(
        &mut self,
        to: usize,
        generation: u64,
        bytes: &[u8],
    ) -> Result<bool, SimError> {
        if self.channel.dirs[to].generation != generation
            || (self.hosts.slot[to].is_none() && !self.clone_receiving(to))
        {
            return Ok(false);
        }
        self.channel.dirs[to].decoder.push(bytes);
        loop {
            let frame = match self.channel.dirs[to].decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(true),
                Err(e) => {
                    let name = self.name(to);
                    self.close_connection(to, &format!("host {name} got {e}"));
                    return Ok(true);
                }
            };
            let message = match self.channel.sessions[to].open(&frame) {
                Ok(m) => m,
                Err(e) => {
                    let name = self.name(to);
                    self.close_connection(to, &format!("host {name} got {e}"));
                    return Ok(true);
                }
            };
            if self.hosts.slot[to].is_none() {
                self.clone_receive(to, message)?;
                continue;
            }
            if self.options.trace {
                let name = self.name(to);
                match &message {
                    Message::Entries { log } => {
                        let len = log.len();
                        let icount = self.hosts.slot[to]
                            .as_ref()
                            .and_then(|h| h.machine())
                            .map_or(0, |m| m.icount());
                        self.note(|| {
                            format!("{name} gets {len} bytes of log (at icount {icount})")
                        });
                    }
                    Message::Ack { through, icount } => {
                        let (through, icount) = (*through, *icount);
                        self.note(|| {
                            format!("{name} gets an ack through {through} (icount {icount})")
                        });
                    }
                    Message::Protected { through } => {
                        let through = *through;
                        self.note(|| {
                            format!("{name} is told it protects the VM (through {through})")
                        });
                    }
                    _ => {}
                }
            }
            let Some(message) = self.received_by(to, message) else {
                continue;
            };
            let time = self.time();
            if let Some(h) = &mut self.hosts.slot[to] {
                h.receive(&message, time);
                h.run_now(self.now);
            }
            if let Message::HandOver { through } = message {
                let name = self.name(to);
                self.note(|| format!("{name} is told to take over (through {through})"));
                self.hand_over_received(to);
            }
        }
    }
}
