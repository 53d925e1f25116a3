//! The logging channel's messages, their framing, and the handshake that
//! authenticates the peer with a pre-shared key (DESIGN.md §4).
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

use ftvm_replay::format::{frame_header, FRAME_MAX};
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The first message of each side.
    Hello {
        role: Role,
        pair: String,
        epoch: u64,
        nonce: [u8; 16],
    },
    /// Keyed hash over (role, pair, epoch, own nonce, peer's nonce).
    Proof { mac: [u8; 32] },
    /// Log bytes (whole log frames, as `ftvm_replay::LogWriter` writes
    /// them) holding the entries before `through`.
    Entries { through: u64, log: Vec<u8> },
    /// The backup has received every entry before `through` into its
    /// buffer, and has executed to `icount`.
    Ack { through: u64, icount: u64 },
    /// Nothing to say, but still here.
    Heartbeat,
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
}

/// One message as bytes on the wire.
pub fn encode(message: &Message) -> Vec<u8> {
    // Serialising plain owned data into a Vec cannot fail.
    let payload = postcard::to_stdvec(message).unwrap_or_default();
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&frame_header(&payload));
    out.extend_from_slice(&payload);
    out
}

/// Cuts a byte stream into messages.
#[derive(Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    failed: bool,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message, `None` until one has arrived. After an
    /// error the stream is unusable: the channel must be closed.
    pub fn next_message(&mut self) -> Result<Option<Message>, ChannelError> {
        if self.failed {
            return Err(ChannelError::Corrupt("an earlier frame was corrupt".into()));
        }
        let result = self.decode();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn decode(&mut self) -> Result<Option<Message>, ChannelError> {
        let Some(head) = self.buffer.get(..8) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > FRAME_MAX {
            return Err(ChannelError::Corrupt(format!(
                "frame length {len} is implausible"
            )));
        }
        let end = 8 + len as usize;
        let Some(payload) = self.buffer.get(8..end) else {
            return Ok(None);
        };
        if crc32c::crc32c(payload) != crc {
            return Err(ChannelError::Corrupt("checksum mismatch".into()));
        }
        let message =
            postcard::from_bytes(payload).map_err(|e| ChannelError::Corrupt(e.to_string()))?;
        self.buffer.drain(..end);
        Ok(Some(message))
    }
}

/// The key both ends derive from the pre-shared secret.
pub fn channel_key(secret: &[u8]) -> [u8; 32] {
    blake3::derive_key("ftvm logging channel v1 key", secret)
}

fn proof(
    key: &[u8; 32],
    role: Role,
    pair: &str,
    epoch: u64,
    own: &[u8; 16],
    peer: &[u8; 16],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(match role {
        Role::Primary => b"primary",
        Role::Backup => b"backup\0",
    });
    h.update(&(pair.len() as u64).to_le_bytes());
    h.update(pair.as_bytes());
    h.update(&epoch.to_le_bytes());
    h.update(own);
    h.update(peer);
    *h.finalize().as_bytes()
}

/// One side's handshake, sans-IO: [`Handshake::start`] gives the first
/// message, [`Handshake::receive`] each reply, until it is established.
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

    pub fn receive(&mut self, message: &Message) -> Result<Step, ChannelError> {
        match (message, self.peer_nonce) {
            (
                Message::Hello {
                    role,
                    pair,
                    epoch,
                    nonce,
                },
                None,
            ) => {
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
                kind(other)
            ))),
        }
    }
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "Hello",
        Message::Proof { .. } => "Proof",
        Message::Entries { .. } => "Entries",
        Message::Ack { .. } => "Ack",
        Message::Heartbeat => "Heartbeat",
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn messages_survive_any_split_of_the_stream() {
        let messages = vec![
            Message::Entries {
                through: 7,
                log: vec![5; 3000],
            },
            Message::Ack {
                through: 7,
                icount: 123,
            },
            Message::Heartbeat,
        ];
        let bytes: Vec<u8> = messages.iter().flat_map(encode).collect();
        for piece in [1, 3, 8, 1000, bytes.len()] {
            let mut decoder = FrameDecoder::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(piece) {
                decoder.push(chunk);
                while let Some(m) = decoder.next_message().expect("valid") {
                    got.push(m);
                }
            }
            assert_eq!(got, messages);
        }
    }

    proptest! {
        #[test]
        fn corrupt_streams_are_errors_not_panics(flip in 0usize..40, junk in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = encode(&Message::Ack { through: 1, icount: 2 });
            let at = flip % bytes.len();
            bytes[at] ^= 0x20;
            bytes.extend(junk);
            let mut decoder = FrameDecoder::default();
            decoder.push(&bytes);
            // A flipped byte is never taken for a valid message.
            let decoded = decoder.next_message();
            prop_assert!(!matches!(decoded, Ok(Some(_))), "accepted {:?}", decoded);
        }
    }
}
