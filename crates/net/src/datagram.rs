//! Authenticated datagrams on a pair's switch (ARCHITECTURE.md, "The
//! pair's network").
//!
//! A switch that listens beyond loopback must not take frames from anyone
//! who can send it a datagram: with the pair's key, every datagram (a
//! frame, or an empty "still here") carries a MAC, and the switch and the
//! VMs' ports drop what fails it, or repeats a datagram already seen.
//!
//! ```text
//! datagram = "FTVMSW1\0" frame sender:u64le counter:u64le tag:16
//! tag      = keyed BLAKE3 (key derived from the pair's key) over sender, counter, frame
//! ```
//!
//! `sender` is random per sending handle, `counter` counts its datagrams;
//! a receiver keeps, per sender, the highest counter and a window of the
//! 64 below it, so a replayed datagram is refused while one that UDP
//! reordered is not. The magic makes a mismatch loud: a switch without a
//! key refuses sealed datagrams, one with a key refuses bare ones, and
//! both count them.

use std::collections::HashMap;

/// What a sealed datagram starts with.
const MAGIC: &[u8; 8] = b"FTVMSW1\0";
const TRAILER: usize = 8 + 8 + 16;
/// The most senders a receiver remembers (a pair has a few ports).
const SENDERS_KEPT: usize = 256;

/// The key of a pair's switch, derived from the pair's channel key.
#[derive(Clone)]
pub struct DatagramKey([u8; 32]);

impl DatagramKey {
    /// From the pair's key (the logging channel's, itself derived from the
    /// pre-shared secret).
    pub fn from_pair_key(key: &[u8; 32]) -> DatagramKey {
        DatagramKey(blake3::derive_key("ftvm switch datagram v1", key))
    }

    fn tag(&self, sender: u64, counter: u64, frame: &[u8]) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(&sender.to_le_bytes());
        h.update(&counter.to_le_bytes());
        h.update(frame);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&h.finalize().as_bytes()[..16]);
        tag
    }
}

/// Whether `datagram` is a sealed one (whoever sealed it).
pub fn is_sealed(datagram: &[u8]) -> bool {
    datagram.len() >= MAGIC.len() + TRAILER && datagram.starts_with(MAGIC)
}

/// Seals what one handle sends.
pub struct Sealer {
    key: DatagramKey,
    sender: u64,
    counter: u64,
}

impl Sealer {
    /// `sender` must be random (it tells this handle's counter apart).
    pub fn new(key: DatagramKey, sender: u64) -> Sealer {
        Sealer {
            key,
            sender,
            counter: 0,
        }
    }

    pub fn seal(&mut self, frame: &[u8]) -> Vec<u8> {
        let counter = self.counter;
        self.counter += 1;
        let mut out = Vec::with_capacity(MAGIC.len() + frame.len() + TRAILER);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(frame);
        out.extend_from_slice(&self.sender.to_le_bytes());
        out.extend_from_slice(&counter.to_le_bytes());
        out.extend_from_slice(&self.key.tag(self.sender, counter, frame));
        out
    }
}

/// Checks what one handle receives.
pub struct Opener {
    key: DatagramKey,
    /// Per sender: the highest counter seen, and which of the 64 below it
    /// were (bit i: counter highest - 1 - i).
    seen: HashMap<u64, (u64, u64)>,
}

impl Opener {
    pub fn new(key: DatagramKey) -> Opener {
        Opener {
            key,
            seen: HashMap::new(),
        }
    }

    /// The frame in `datagram`, if it is sealed under the key and not seen
    /// before.
    pub fn open<'a>(&mut self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        if !is_sealed(datagram) {
            return None;
        }
        let body = &datagram[MAGIC.len()..];
        let (frame, trailer) = body.split_at(body.len() - TRAILER);
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&trailer[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let (sender, counter) = (word(0), word(8));
        let expected = self.key.tag(sender, counter, frame);
        // Compared without an early exit, so the time says nothing of
        // where a forged tag first differs.
        let difference = expected
            .iter()
            .zip(&trailer[16..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return None;
        }
        if !self.fresh(sender, counter) {
            return None;
        }
        Some(frame)
    }

    /// Record `counter` from `sender`; false if it was seen, or is too
    /// old to tell.
    fn fresh(&mut self, sender: u64, counter: u64) -> bool {
        if !self.seen.contains_key(&sender) && self.seen.len() >= SENDERS_KEPT {
            // A pair has a few ports: forget the one heard from least
            // recently counted (any will do; a forgotten sender's old
            // datagrams could be replayed once, into a VM's network only).
            if let Some(&oldest) = self.seen.keys().next() {
                self.seen.remove(&oldest);
            }
        }
        let (highest, window) = self.seen.entry(sender).or_insert((u64::MAX, 0));
        if *highest == u64::MAX {
            *highest = counter;
            return true;
        }
        if counter > *highest {
            let shift = counter - *highest;
            *window = if shift >= 64 {
                0
            } else {
                (*window << shift) | (1 << (shift - 1))
            };
            *highest = counter;
            return true;
        }
        let back = *highest - counter;
        if back == 0 || back > 64 {
            return false;
        }
        let bit = 1u64 << (back - 1);
        if *window & bit != 0 {
            return false;
        }
        *window |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> DatagramKey {
        DatagramKey::from_pair_key(&[seed; 32])
    }

    #[test]
    fn sealed_frames_open_once_under_the_right_key_only() {
        let mut sealer = Sealer::new(key(1), 77);
        let mut opener = Opener::new(key(1));
        let frame = b"an ethernet frame".to_vec();
        let sealed = sealer.seal(&frame);
        assert!(is_sealed(&sealed));
        assert_eq!(opener.open(&sealed), Some(&frame[..]));
        assert_eq!(opener.open(&sealed), None, "a replay is refused");
        let keepalive = sealer.seal(&[]);
        assert_eq!(opener.open(&keepalive), Some(&[][..]));
        // Another key, a flipped bit, a bare frame: refused.
        let mut other = Opener::new(key(2));
        assert_eq!(other.open(&sealer.seal(&frame)), None);
        let mut flipped = sealer.seal(&frame);
        flipped[10] ^= 1;
        assert_eq!(opener.open(&flipped), None);
        assert_eq!(opener.open(&frame), None);
        assert_eq!(opener.open(&[]), None);
    }

    #[test]
    fn reordered_datagrams_pass_and_replays_within_the_window_do_not() {
        let mut sealer = Sealer::new(key(1), 5);
        let mut opener = Opener::new(key(1));
        let sealed: Vec<Vec<u8>> = (0..100u8).map(|i| sealer.seal(&[i; 20])).collect();
        // Out of order within the window: all once.
        for i in [3usize, 1, 2, 0, 10, 4, 9, 5, 8, 6, 7] {
            assert!(opener.open(&sealed[i]).is_some(), "datagram {i}");
        }
        for i in [0usize, 3, 7, 10] {
            assert!(opener.open(&sealed[i]).is_none(), "replay of {i}");
        }
        // Far ahead, then one too old to tell: refused.
        assert!(opener.open(&sealed[99]).is_some());
        assert!(opener.open(&sealed[20]).is_none());
        assert!(opener.open(&sealed[40]).is_some(), "within 64 of 99");
        assert!(opener.open(&sealed[40]).is_none());
        // Another sender's counters are its own.
        let mut second = Sealer::new(key(1), 6);
        assert!(opener.open(&second.seal(&[1])).is_some());
    }
}
