//! The logging channel between the two hosts, both directions, through
//! the real channel code (handshake, sealing, framing, authentication),
//! with the seed's faults: delay and jitter, loss, duplication,
//! reordering, corruption, partitions.

use ftvm_ft::channel::{
    self, CHANNEL_FRAME_MAX, FrameDecoder, Handshake, Message, Role, Session, channel_key,
};
use ftvm_replay::LogDecoder;

use crate::invariants::Invariant;
use crate::plan::{Noise, Partition};
use crate::sim::{Event, Sim};
use crate::{Broken, Rng, SimError};

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
    /// Each host's sending session, indexed by host.
    sessions: [Session; 2],
    /// Indexed by the receiving host.
    dirs: [Direction; 2],
    noise: Noise,
    /// A partition: its mode, when it heals, which directions it cuts.
    cut: Option<(Partition, u64, [bool; 2])>,
    /// The primary's whole sent log, replayed at the end.
    pub primary_log: Vec<u8>,
    /// Where the forged acknowledgements of [`Broken::AckOnSend`] are.
    sent_decoder: LogDecoder,
}

impl Channel {
    /// The connection after the real handshake, through the real
    /// messages and framing, with a key and nonces from `rng`.
    pub fn connect(rng: &mut Rng) -> Result<Channel, String> {
        let key = channel_key(&rng.bytes(32));
        let nonce = |rng: &mut Rng| -> [u8; 16] {
            let mut n = [0u8; 16];
            n.copy_from_slice(&rng.bytes(16));
            n
        };
        let (mut hp, hello_p) = Handshake::start(Role::Primary, PAIR, 1, key, nonce(rng));
        let (mut hb, hello_b) = Handshake::start(Role::Backup, PAIR, 1, key, nonce(rng));
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
        let sessions = [
            hp.session().ok_or("primary not established")?,
            hb.session().ok_or("backup not established")?,
        ];
        Ok(Channel {
            sessions,
            dirs: [0, 1].map(|_| Direction {
                open: true,
                generation: 0,
                decoder: FrameDecoder::new(CHANNEL_FRAME_MAX),
                last_delivery: 0,
            }),
            noise: Noise::default(),
            cut: None,
            primary_log: Vec::new(),
            sent_decoder: LogDecoder::default(),
        })
    }

    /// The faults of the seed's plan (drawn after the handshake).
    pub fn set_noise(&mut self, noise: Noise) {
        self.noise = noise;
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
        let why = why.to_string();
        self.note(|| format!("connection closed: {why}"));
        self.fail_at();
        for d in &mut self.channel.dirs {
            d.open = false;
        }
        self.channel.dirs[at].generation += 1;
        let now = self.now;
        if let Some(h) = &mut self.hosts.slot[at] {
            h.channel_closed(false, now);
        }
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
        let to = 1 - from;
        if from == 0 {
            if let Message::Entries { log } = message {
                self.channel.primary_log.extend_from_slice(log);
                if self.options.broken == Some(Broken::AckOnSend) {
                    let decoder = &mut self.channel.sent_decoder;
                    decoder.push(log);
                    while let Ok(Some(_)) = decoder.next() {}
                    let through = decoder.next_seq();
                    let time = self.time();
                    if let Some(h) = &mut self.hosts.slot[0] {
                        h.receive(&Message::Ack { through, icount: 0 }, time);
                    }
                }
            }
        }
        if !self.channel.dirs[to].open {
            return Ok(());
        }
        let bytes = self.channel.sessions[from]
            .seal(message)
            .map_err(|e| self.violation(Invariant::Error, format!("sealing a message: {e}")))?;
        let noise = &self.channel.noise;
        let mut deliver = self.now + noise.latency_ns + self.rng.range(0, noise.jitter_ns);
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
    /// node; a bad one closes the connection. False if they were lost on
    /// the way (an older generation, or the host is gone).
    pub(crate) fn deliver(&mut self, to: usize, generation: u64, bytes: &[u8]) -> bool {
        if self.channel.dirs[to].generation != generation || self.hosts.slot[to].is_none() {
            return false;
        }
        self.channel.dirs[to].decoder.push(bytes);
        loop {
            let frame = match self.channel.dirs[to].decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return true,
                Err(e) => {
                    self.close_connection(to, &format!("host {to} got {e}"));
                    return true;
                }
            };
            let message = match self.channel.sessions[to].open(&frame) {
                Ok(m) => m,
                Err(e) => {
                    self.close_connection(to, &format!("host {to} got {e}"));
                    return true;
                }
            };
            let time = self.time();
            if let Some(h) = &mut self.hosts.slot[to] {
                h.receive(&message, time);
                h.run_now(self.now);
            }
        }
    }
}
