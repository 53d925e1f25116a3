//! The logging channel's messages, their framing, and the handshake that
//! authenticates the peer with a pre-shared key (ARCHITECTURE.md, "The FT
//! protocol").
//!
//! A message travels as a frame like the log's: length, CRC32C, payload
//! (postcard). [`FrameDecoder`] takes bytes as they arrive, in any pieces,
//! and yields whole messages, so the same code serves a socket and the
//! simulator.
//!
//! The handshake is a mutual challenge-response: each side sends a fresh
//! nonce, then proves it holds the key with a keyed BLAKE3 hash over the
//! pair, the epoch, its role and both nonces. A peer without the key, or
//! one replaying an old proof, fails; nothing else is accepted before.
//! After it, every frame is encrypted and authenticated with
//! ChaCha20-Poly1305 under a key for its direction (derived from the key,
//! the roles and both nonces), the frame counter as its nonce, so frames
//! cannot be read, forged, replayed, reordered or reflected: the log and
//! a clone's snapshot (guest input, disk data, entropy, guest memory)
//! cross the network encrypted. A third party that relays a handshake
//! gains nothing: it cannot seal a frame. The secret must be random (128
//! bits or more): a transcript allows offline guessing of a weak one.

use std::collections::VecDeque;

use ftvm_replay::format::{FRAME_MAX, frame_header};
use serde::{Deserialize, Serialize};

/// Which end of the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Primary,
    Backup,
}

impl Role {
    fn peer(self) -> Role {
        match self {
            Role::Primary => Role::Backup,
            Role::Backup => Role::Primary,
        }
    }
}

/// The version of the logging channel's messages and framing, first in
/// every `Hello`: bump it with any change to [`Message`], the framing or
/// the handshake (the golden-bytes test `crates/ft/tests/golden.rs` fails
/// until you do). 1 was the unversioned format of the first pairs; 3
/// added cloning (`CloneStart`, `Pages`, `DiskPages`, `CloneEnd`,
/// `Protected`); 4: what the messages carry changed, not their form: a
/// clone's machine state (snapshot version 3, with a balloon's state) and
/// the log (version 2, with the balloon's target as a control entry); 5:
/// the same, for snapshot version 5 and log version 4 (a network card's
/// MTU and the frames it holds).
pub const CHANNEL_VERSION: u32 = 5;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The first message of each side. `version` comes first and stays
    /// first in every version, so that a peer of another version is told
    /// so rather than misread.
    Hello {
        version: u32,
        role: Role,
        pair: String,
        epoch: u64,
        nonce: [u8; 16],
    },
    /// Keyed hash over (role, pair, epoch, own nonce, peer's nonce).
    Proof { mac: [u8; 32] },
    /// Log bytes, as `ftvm_replay::LogWriter` writes them (the stream
    /// continues where the last `Entries` stopped; frames carry their own
    /// sequence numbers and checksums).
    ///
    /// Byte payloads go through serde as bytes, not as a sequence of
    /// `u8`: postcard writes both the same way (a length, then the
    /// bytes; the golden tests hold it), but reads a sequence one element
    /// at a time, which was 5% of a backup's time in a bulk transfer and
    /// 10x slower than one copy.
    Entries {
        #[serde(with = "serde_bytes")]
        log: Vec<u8>,
    },
    /// The backup holds every entry before `through` in its buffer,
    /// checked, and has executed to `icount`.
    Ack { through: u64, icount: u64 },
    /// Nothing to say, but still here.
    Heartbeat,
    /// The primary has released the guest's console stream up to this
    /// offset: a backup that goes live must write again what comes after
    /// it (it may never have reached the world), and need keep no more.
    Released { console: u64 },
    /// A clone begins: the new backup restores the snapshot that follows
    /// (see [`crate::clone`]) and replays the log from there.
    CloneStart(Box<crate::clone::CloneStart>),
    /// A chunk of the snapshot's RAM at `offset` (chunks that are all
    /// zeroes are not sent).
    Pages {
        offset: u64,
        encoding: crate::clone::PageEncoding,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A chunk of a private disk as it was at the snapshot, at `offset`
    /// (chunks that are all zeroes are not sent).
    DiskPages {
        offset: u64,
        encoding: crate::clone::PageEncoding,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The snapshot is whole: `chunks` RAM chunks and `disk_chunks` disk
    /// chunks were sent; the snapshot's digest, and the disk's.
    CloneEnd {
        chunks: u64,
        digest: [u8; 32],
        disk_chunks: u64,
        disk_digest: Option<[u8; 32]>,
    },
    /// A cloned backup has caught up: from the entry `through` on, the
    /// primary's outputs wait for its acknowledgements, so it may take
    /// over. A clone that has not received this must never go live (the
    /// primary released outputs without waiting for it).
    Protected { through: u64 },
    /// A planned hand-over (`ftvm migrate`): the primary has stopped
    /// executing for good after the entry `through`, every output it
    /// produced is released, and it will release nothing more. The backup
    /// takes over at once, through the test-and-set, without waiting out
    /// the primary's timeout.
    HandOver { through: u64 },
}

impl Message {
    /// The variant's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Proof { .. } => "Proof",
            Message::Entries { .. } => "Entries",
            Message::Ack { .. } => "Ack",
            Message::Heartbeat => "Heartbeat",
            Message::Released { .. } => "Released",
            Message::CloneStart(_) => "CloneStart",
            Message::Pages { .. } => "Pages",
            Message::DiskPages { .. } => "DiskPages",
            Message::CloneEnd { .. } => "CloneEnd",
            Message::Protected { .. } => "Protected",
            Message::HandOver { .. } => "HandOver",
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("corrupt frame on the logging channel: {0}")]
    Corrupt(String),
    #[error("the peer is not authenticated: {0}")]
    Unauthenticated(String),
    #[error("the peer does not hold the pre-shared key")]
    WrongKey,
    #[error("the peer belongs to {found}, not to {expected}")]
    OtherPair { expected: String, found: String },
    #[error(
        "a frame on the logging channel failed authentication (forged, replayed, reordered or corrupt)"
    )]
    BadMac,
    #[error("a message of {0} bytes is too large for the logging channel")]
    TooLarge(usize),
    #[error(
        "the peer speaks version {theirs} of the logging channel, this VM version {ours}: run \
         the same ftvm on both hosts"
    )]
    Version { ours: u32, theirs: u32 },
}

/// Largest frame once the peer is authenticated: a whole log frame and
/// the message around it.
pub const CHANNEL_FRAME_MAX: u32 = FRAME_MAX + 4096;
/// Largest frame before that: Hello and Proof are small, and a peer that
/// has not proven anything must not make us buffer megabytes.
pub const HANDSHAKE_FRAME_MAX: u32 = 1024;

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&frame_header(payload));
    out.extend_from_slice(payload);
    out
}

/// A handshake message as bytes on the wire (it carries no MAC: the
/// handshake authenticates itself).
pub fn encode(message: &Message) -> Vec<u8> {
    // Serialising plain owned data into a Vec cannot fail.
    framed(&postcard::to_stdvec(message).unwrap_or_default())
}

/// A handshake message from a frame's payload.
pub fn decode(payload: &[u8]) -> Result<Message, ChannelError> {
    match postcard::take_from_bytes::<Message>(payload) {
        Ok((message, [])) => Ok(message),
        Ok(_) => Err(ChannelError::Corrupt("bytes after the message".into())),
        // A `Hello` of another version may not decode as ours: its version
        // field, first of all, says why.
        Err(e) => match hello_version(payload) {
            Some(theirs) if theirs != CHANNEL_VERSION => Err(ChannelError::Version {
                ours: CHANNEL_VERSION,
                theirs,
            }),
            _ => Err(ChannelError::Corrupt(e.to_string())),
        },
    }
}

/// The version a `Hello` payload starts with: the variant index of
/// `Hello` (0), then the version, both postcard varints.
fn hello_version(payload: &[u8]) -> Option<u32> {
    let (variant, rest) = postcard::take_from_bytes::<u32>(payload).ok()?;
    if variant != 0 {
        return None;
    }
    postcard::take_from_bytes::<u32>(rest)
        .ok()
        .map(|(version, _)| version)
}

/// Cuts a byte stream into frame payloads, checking lengths and CRCs.
pub struct FrameDecoder {
    buffer: VecDeque<u8>,
    limit: u32,
    failed: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(HANDSHAKE_FRAME_MAX)
    }
}

impl FrameDecoder {
    pub fn new(limit: u32) -> FrameDecoder {
        FrameDecoder {
            buffer: VecDeque::new(),
            limit,
            failed: false,
        }
    }

    /// Accept frames up to `limit` bytes from now on (raise it once the
    /// peer is authenticated).
    pub fn set_limit(&mut self, limit: u32) {
        self.limit = limit;
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend(bytes);
    }

    /// The next whole frame's payload, `None` until one has arrived. After
    /// an error the stream is unusable: the channel must be closed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        if self.failed {
            return Err(ChannelError::Corrupt("an earlier frame was corrupt".into()));
        }
        let result = self.take();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn take(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        if self.buffer.len() < 8 {
            return Ok(None);
        }
        let head: Vec<u8> = self.buffer.range(..8).copied().collect();
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > self.limit {
            return Err(ChannelError::Corrupt(format!(
                "a frame of {len} bytes, more than the {} allowed now",
                self.limit
            )));
        }
        let end = 8 + len as usize;
        if self.buffer.len() < end {
            return Ok(None);
        }
        self.buffer.drain(..8);
        // Copied by slices: collecting the drain byte by byte was 6% of a
        // backup's time while its guest received bulk data.
        let len = len as usize;
        let (front, back) = self.buffer.as_slices();
        let from_front = front.len().min(len);
        let mut payload = Vec::with_capacity(len);
        payload.extend_from_slice(&front[..from_front]);
        payload.extend_from_slice(&back[..len - from_front]);
        self.buffer.drain(..len);
        if crc32c::crc32c(&payload) != crc {
            return Err(ChannelError::Corrupt("checksum mismatch".into()));
        }
        Ok(Some(payload))
    }
}

/// The channel after a handshake: [`Session::seal`] encrypts and frames a
/// message, [`Session::open`] checks, decrypts and decodes one.
pub struct Session {
    send_key: [u8; 32],
    receive_key: [u8; 32],
    sent: u64,
    received: u64,
}

/// The AEAD tag each sealed frame ends with.
const TAG_LEN: usize = 16;

/// The nonce of frame `counter`: the counter itself (each direction has
/// its own key, and a counter never repeats under one key).
fn frame_nonce(counter: u64) -> chacha20poly1305::Nonce {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&counter.to_le_bytes());
    nonce.into()
}

impl Session {
    /// The message encrypted and authenticated under this direction's
    /// key (ChaCha20-Poly1305, the frame counter as the nonce), framed.
    pub fn seal(&mut self, message: &Message) -> Result<Vec<u8>, ChannelError> {
        use chacha20poly1305::aead::{Aead, KeyInit};
        // Serialising plain owned data into a Vec cannot fail.
        let plain = postcard::to_stdvec(message).unwrap_or_default();
        if plain.len() + TAG_LEN > CHANNEL_FRAME_MAX as usize {
            return Err(ChannelError::TooLarge(plain.len() + TAG_LEN));
        }
        let cipher = chacha20poly1305::ChaCha20Poly1305::new(&self.send_key.into());
        let sealed = cipher
            .encrypt(&frame_nonce(self.sent), plain.as_slice())
            .map_err(|_| ChannelError::TooLarge(plain.len()))?;
        self.sent += 1;
        Ok(framed(&sealed))
    }

    /// Check, decrypt and decode a frame's payload: a frame forged,
    /// replayed, reordered, reflected or changed in any bit fails.
    pub fn open(&mut self, payload: &[u8]) -> Result<Message, ChannelError> {
        use chacha20poly1305::aead::{Aead, KeyInit};
        if payload.len() < TAG_LEN {
            return Err(ChannelError::BadMac);
        }
        let cipher = chacha20poly1305::ChaCha20Poly1305::new(&self.receive_key.into());
        let plain = cipher
            .decrypt(&frame_nonce(self.received), payload)
            .map_err(|_| ChannelError::BadMac)?;
        self.received += 1;
        decode(&plain)
    }
}

/// The key both ends derive from the pre-shared secret.
pub fn channel_key(secret: &[u8]) -> [u8; 32] {
    blake3::derive_key("ftvm logging channel v1 key", secret)
}

/// A keyed hash over what identifies one side of one handshake: `domain`
/// (what the hash is for), the role, the pair, the epoch and two nonces.
fn transcript(
    key: &[u8; 32],
    domain: &[u8],
    role: Role,
    pair: &str,
    epoch: u64,
    first: &[u8; 16],
    second: &[u8; 16],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(domain);
    h.update(match role {
        Role::Primary => b"primary",
        Role::Backup => b"backup\0",
    });
    h.update(&(pair.len() as u64).to_le_bytes());
    h.update(pair.as_bytes());
    h.update(&epoch.to_le_bytes());
    h.update(first);
    h.update(second);
    *h.finalize().as_bytes()
}

/// A side's proof: over its own nonce, then the peer's.
fn proof(
    key: &[u8; 32],
    role: Role,
    pair: &str,
    epoch: u64,
    own: &[u8; 16],
    peer: &[u8; 16],
) -> [u8; 32] {
    transcript(key, b"", role, pair, epoch, own, peer)
}

/// The key of the frames `sender` sends after the handshake.
fn session_key(
    key: &[u8; 32],
    sender: Role,
    pair: &str,
    epoch: u64,
    primary: &[u8; 16],
    backup: &[u8; 16],
) -> [u8; 32] {
    let domain = b"ftvm logging channel v1 session";
    transcript(key, domain, sender, pair, epoch, primary, backup)
}

/// One side's handshake, sans-IO: [`Handshake::start`] gives the first
/// message, [`Handshake::receive`] each reply, until it is established;
/// then [`Handshake::session`] gives the authenticated channel.
pub struct Handshake {
    role: Role,
    pair: String,
    epoch: u64,
    key: [u8; 32],
    nonce: [u8; 16],
    peer_nonce: Option<[u8; 16]>,
    established: bool,
}

/// What the handshake wants sent, and whether it is done.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub send: Option<Message>,
    pub established: bool,
}

impl Handshake {
    /// `nonce` must be fresh (random) for every connection.
    pub fn start(
        role: Role,
        pair: &str,
        epoch: u64,
        key: [u8; 32],
        nonce: [u8; 16],
    ) -> (Handshake, Message) {
        let hello = Message::Hello {
            version: CHANNEL_VERSION,
            role,
            pair: pair.to_string(),
            epoch,
            nonce,
        };
        let handshake = Handshake {
            role,
            pair: pair.to_string(),
            epoch,
            key,
            nonce,
            peer_nonce: None,
            established: false,
        };
        (handshake, hello)
    }

    pub fn is_established(&self) -> bool {
        self.established
    }

    /// The keys for the frames after the handshake, once it is established.
    pub fn session(&self) -> Option<Session> {
        let peer = self.peer_nonce.filter(|_| self.established)?;
        let (primary, backup) = match self.role {
            Role::Primary => (&self.nonce, &peer),
            Role::Backup => (&peer, &self.nonce),
        };
        let key = |sender| session_key(&self.key, sender, &self.pair, self.epoch, primary, backup);
        Some(Session {
            send_key: key(self.role),
            receive_key: key(self.role.peer()),
            sent: 0,
            received: 0,
        })
    }

    pub fn receive(&mut self, message: &Message) -> Result<Step, ChannelError> {
        match (message, self.peer_nonce) {
            (
                Message::Hello {
                    version,
                    role,
                    pair,
                    epoch,
                    nonce,
                },
                None,
            ) => {
                if *version != CHANNEL_VERSION {
                    return Err(ChannelError::Version {
                        ours: CHANNEL_VERSION,
                        theirs: *version,
                    });
                }
                if *pair != self.pair || *epoch != self.epoch {
                    return Err(ChannelError::OtherPair {
                        expected: format!("pair {} epoch {}", self.pair, self.epoch),
                        found: format!("pair {pair} epoch {epoch}"),
                    });
                }
                if *role != self.role.peer() {
                    return Err(ChannelError::Unauthenticated(format!(
                        "the peer says it is the {role:?} too"
                    )));
                }
                if *nonce == self.nonce {
                    return Err(ChannelError::Unauthenticated(
                        "the peer echoed our own nonce".into(),
                    ));
                }
                self.peer_nonce = Some(*nonce);
                let mac = proof(
                    &self.key,
                    self.role,
                    &self.pair,
                    self.epoch,
                    &self.nonce,
                    nonce,
                );
                Ok(Step {
                    send: Some(Message::Proof { mac }),
                    established: false,
                })
            }
            (Message::Proof { mac }, Some(peer_nonce)) if !self.established => {
                let expected = proof(
                    &self.key,
                    self.role.peer(),
                    &self.pair,
                    self.epoch,
                    &peer_nonce,
                    &self.nonce,
                );
                // blake3::Hash compares in constant time.
                if blake3::Hash::from(*mac) != blake3::Hash::from(expected) {
                    return Err(ChannelError::WrongKey);
                }
                self.established = true;
                Ok(Step {
                    send: None,
                    established: true,
                })
            }
            (other, _) => Err(ChannelError::Unauthenticated(format!(
                "unexpected {} during the handshake",
                other.name()
            ))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Run a handshake between two sides; the result of each.
    fn shake(
        primary_secret: &[u8],
        backup_secret: &[u8],
    ) -> (Result<bool, ChannelError>, Result<bool, ChannelError>) {
        let (mut p, p_hello) = Handshake::start(
            Role::Primary,
            "vm1",
            3,
            channel_key(primary_secret),
            [1; 16],
        );
        let (mut b, b_hello) =
            Handshake::start(Role::Backup, "vm1", 3, channel_key(backup_secret), [2; 16]);
        let p_proof = p.receive(&b_hello).map(|s| s.send);
        let b_proof = b.receive(&p_hello).map(|s| s.send);
        let (Ok(Some(p_proof)), Ok(Some(b_proof))) = (p_proof, b_proof) else {
            panic!("hellos are always answered with a proof");
        };
        (
            p.receive(&b_proof).map(|s| s.established),
            b.receive(&p_proof).map(|s| s.established),
        )
    }

    #[test]
    fn the_same_key_establishes_both_sides() {
        assert_eq!(shake(b"secret", b"secret"), (Ok(true), Ok(true)));
    }

    #[test]
    fn a_wrong_key_is_refused_by_both_sides() {
        assert_eq!(
            shake(b"secret", b"guess"),
            (Err(ChannelError::WrongKey), Err(ChannelError::WrongKey))
        );
    }

    #[test]
    fn a_replayed_proof_fails_against_a_fresh_nonce() {
        let key = channel_key(b"secret");
        let (mut p1, _) = Handshake::start(Role::Primary, "vm1", 3, key, [1; 16]);
        let (mut b1, b_hello) = Handshake::start(Role::Backup, "vm1", 3, key, [2; 16]);
        p1.receive(&b_hello).expect("hello");
        let (_, p_hello) = Handshake::start(Role::Primary, "vm1", 3, key, [1; 16]);
        let Some(recorded) = b1.receive(&p_hello).expect("hello").send else {
            panic!("a proof");
        };
        // An attacker replays the backup's Hello and Proof to a primary
        // that chose another nonce.
        let (mut p2, _) = Handshake::start(Role::Primary, "vm1", 3, key, [9; 16]);
        p2.receive(&b_hello).expect("hello");
        assert_eq!(p2.receive(&recorded), Err(ChannelError::WrongKey));
    }

    #[test]
    fn nothing_but_the_handshake_is_accepted_before_it_completes() {
        let (mut p, _) = Handshake::start(Role::Primary, "vm1", 3, channel_key(b"k"), [1; 16]);
        assert!(matches!(
            p.receive(&Message::Ack {
                through: 5,
                icount: 0
            }),
            Err(ChannelError::Unauthenticated(_))
        ));
        let (mut p, _) = Handshake::start(Role::Primary, "vm1", 3, channel_key(b"k"), [1; 16]);
        let other = Message::Hello {
            version: CHANNEL_VERSION,
            role: Role::Backup,
            pair: "vm2".into(),
            epoch: 3,
            nonce: [2; 16],
        };
        assert!(matches!(
            p.receive(&other),
            Err(ChannelError::OtherPair { .. })
        ));
    }

    /// A peer of another version is told apart from a corrupt one, whether
    /// its `Hello` decodes as ours or not.
    #[test]
    fn a_peer_of_another_version_is_named_as_such() {
        let (mut p, _) = Handshake::start(Role::Primary, "vm1", 3, channel_key(b"k"), [1; 16]);
        let newer = Message::Hello {
            version: CHANNEL_VERSION + 1,
            role: Role::Backup,
            pair: "vm1".into(),
            epoch: 3,
            nonce: [2; 16],
        };
        let theirs = CHANNEL_VERSION + 1;
        let ours = CHANNEL_VERSION;
        assert_eq!(
            p.receive(&newer),
            Err(ChannelError::Version { ours, theirs })
        );
        // A future Hello whose other fields changed shape: variant 0, the
        // version, then bytes ours cannot read.
        let mut payload = postcard::to_stdvec(&0u32).expect("variant");
        payload.extend(postcard::to_stdvec(&theirs).expect("version"));
        payload.extend([0xff; 3]);
        assert_eq!(
            decode(&payload),
            Err(ChannelError::Version { ours, theirs })
        );
        assert!(matches!(decode(&[0xff; 3]), Err(ChannelError::Corrupt(_))));
    }

    /// Two established sessions, primary's and backup's.
    pub(crate) fn sessions() -> (Session, Session) {
        let key = channel_key(b"secret");
        let (mut p, p_hello) = Handshake::start(Role::Primary, "vm1", 3, key, [1; 16]);
        let (mut b, b_hello) = Handshake::start(Role::Backup, "vm1", 3, key, [2; 16]);
        let (Ok(Step { send: Some(pp), .. }), Ok(Step { send: Some(bp), .. })) =
            (p.receive(&b_hello), b.receive(&p_hello))
        else {
            panic!("hellos are answered with proofs");
        };
        assert!(p.receive(&bp).expect("proof").established);
        assert!(b.receive(&pp).expect("proof").established);
        (p.session().expect("primary"), b.session().expect("backup"))
    }

    /// What the log carries (guest input, disk data, a clone's memory)
    /// never appears on the wire in clear text, and the same message
    /// sealed twice looks different (the counter is the nonce).
    #[test]
    fn sealed_frames_are_encrypted() {
        let (mut p, mut b) = sessions();
        let secret = b"the guest's secret: hunter2 hunter2 hunter2".to_vec();
        let message = Message::Entries {
            log: secret.clone(),
        };
        let first = p.seal(&message).expect("fits");
        let second = p.seal(&message).expect("fits");
        for sealed in [&first, &second] {
            assert!(
                !sealed.windows(8).any(|w| secret.windows(8).any(|s| s == w)),
                "clear text on the wire"
            );
        }
        assert_ne!(first, second);
        let mut decoder = FrameDecoder::new(CHANNEL_FRAME_MAX);
        decoder.push(&first);
        decoder.push(&second);
        for _ in 0..2 {
            let frame = decoder.next_frame().expect("valid").expect("whole");
            assert_eq!(b.open(&frame).expect("authentic"), message);
        }
    }

    #[test]
    fn messages_survive_any_split_of_the_stream() {
        let messages = vec![
            Message::Entries { log: vec![5; 3000] },
            Message::Ack {
                through: 7,
                icount: 123,
            },
            Message::Heartbeat,
        ];
        for piece in [1, 3, 8, 1000, 100_000] {
            let (mut p, mut b) = sessions();
            let bytes: Vec<u8> = messages
                .iter()
                .flat_map(|m| p.seal(m).expect("fits"))
                .collect();
            let mut decoder = FrameDecoder::new(CHANNEL_FRAME_MAX);
            let mut got = Vec::new();
            for chunk in bytes.chunks(piece) {
                decoder.push(chunk);
                while let Some(frame) = decoder.next_frame().expect("valid") {
                    got.push(b.open(&frame).expect("authentic"));
                }
            }
            assert_eq!(got, messages);
        }
    }

    #[test]
    fn forged_replayed_reordered_and_reflected_frames_are_refused() {
        let (mut p, mut b) = sessions();
        let first = p.seal(&Message::Heartbeat).expect("fits");
        let second = p
            .seal(&Message::Ack {
                through: 1,
                icount: 2,
            })
            .expect("fits");
        // Reordered: the second frame first.
        assert_eq!(b.open(&second[8..]), Err(ChannelError::BadMac));
        let (mut p2, mut b2) = sessions();
        let first2 = p2.seal(&Message::Heartbeat).expect("fits");
        assert_eq!(b2.open(&first2[8..]), Ok(Message::Heartbeat));
        // Replayed.
        assert_eq!(b2.open(&first2[8..]), Err(ChannelError::BadMac));
        // Forged: a changed byte.
        let mut forged = p2
            .seal(&Message::Ack {
                through: 9,
                icount: 0,
            })
            .expect("fits");
        forged[9] ^= 1;
        assert_eq!(b2.open(&forged[8..]), Err(ChannelError::BadMac));
        // Reflected: the backup's own frame sent back to it.
        let (_, mut b3) = sessions();
        let own = b3.seal(&Message::Heartbeat).expect("fits");
        assert_eq!(b3.open(&own[8..]), Err(ChannelError::BadMac));
        let _ = (first, p.seal(&Message::Heartbeat));
    }

    #[test]
    fn an_unauthenticated_peer_cannot_send_large_frames() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&encode(&Message::Entries { log: vec![0; 4096] }));
        assert!(matches!(
            decoder.next_frame(),
            Err(ChannelError::Corrupt(_))
        ));
        assert!(
            Session::seal(
                &mut sessions().0,
                &Message::Entries {
                    log: vec![0; CHANNEL_FRAME_MAX as usize]
                }
            )
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn corrupt_streams_are_errors_not_panics(flip in 0usize..40, junk in prop::collection::vec(any::<u8>(), 0..64)) {
            let (mut p, mut b) = sessions();
            let mut bytes = p.seal(&Message::Ack { through: 1, icount: 2 }).expect("fits");
            let at = flip % bytes.len();
            bytes[at] ^= 0x20;
            bytes.extend(junk);
            let mut decoder = FrameDecoder::new(CHANNEL_FRAME_MAX);
            decoder.push(&bytes);
            // A flipped byte is never taken for a valid message.
            let opened = decoder.next_frame().map(|f| f.map(|f| b.open(&f)));
            prop_assert!(!matches!(opened, Ok(Some(Ok(_)))), "accepted {:?}", opened);
        }
    }
}
