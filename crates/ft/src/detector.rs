//! Failure detection: heartbeats plus silence on the logging channel
//! (ARCHITECTURE.md, "The FT protocol"), sans-IO. Any message from the peer
//! counts as a sign of life; the peer is suspected once nothing has arrived
//! for `timeout`, or at once when the channel is known to be closed (a
//! process killed on the other side closes its connections at once: nothing
//! more can arrive, and waiting out the timeout would only delay the
//! failover). Either way a suspicion only leads to the arbiter, never
//! straight to going live.

/// Times are milliseconds on a clock the caller chooses (monotonic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Send a heartbeat when nothing else was sent for this long.
    pub heartbeat_ms: u64,
    /// Suspect the peer after this long without hearing from it.
    pub timeout_ms: u64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            heartbeat_ms: 100,
            timeout_ms: 1000,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FailureDetector {
    config: DetectorConfig,
    last_heard: u64,
    last_sent: u64,
    closed: bool,
}

impl FailureDetector {
    /// Start watching at `now` (the peer gets a full timeout to speak).
    pub fn new(config: DetectorConfig, now: u64) -> FailureDetector {
        FailureDetector {
            config,
            last_heard: now,
            last_sent: now,
            closed: false,
        }
    }

    /// Something arrived from the peer.
    pub fn heard(&mut self, now: u64) {
        self.last_heard = self.last_heard.max(now);
    }

    /// Something was sent to the peer.
    pub fn sent(&mut self, now: u64) {
        self.last_sent = self.last_sent.max(now);
    }

    /// The channel to the peer is closed: nothing more will arrive.
    pub fn closed(&mut self) {
        self.closed = true;
    }

    /// Whether the peer has been silent for `ms` (or the channel closed):
    /// a longer patience than the timeout, for a peer nothing depends on
    /// yet.
    pub fn silent_for(&self, now: u64, ms: u64) -> bool {
        self.closed || now.saturating_sub(self.last_heard) >= ms
    }

    /// When something was last sent to the peer.
    pub fn last_sent(&self) -> u64 {
        self.last_sent
    }

    /// When the next heartbeat is due.
    pub fn next_heartbeat(&self) -> u64 {
        self.last_sent + self.config.heartbeat_ms
    }

    pub fn heartbeat_due(&self, now: u64) -> bool {
        now.saturating_sub(self.last_sent) >= self.config.heartbeat_ms
    }

    pub fn suspects(&self, now: u64) -> bool {
        self.closed || now.saturating_sub(self.last_heard) >= self.config.timeout_ms
    }

    /// When the caller should look again (the next heartbeat or timeout).
    pub fn next_deadline(&self) -> u64 {
        (self.last_sent + self.config.heartbeat_ms).min(self.last_heard + self.config.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_past_the_timeout_is_suspected_and_any_message_clears_it() {
        let mut d = FailureDetector::new(DetectorConfig::default(), 1000);
        assert!(!d.suspects(1999));
        assert!(d.suspects(2000));
        d.heard(1900);
        assert!(!d.suspects(2000));
        assert_eq!(d.next_deadline(), 1100);
        assert!(d.heartbeat_due(1100));
        d.sent(1100);
        assert!(!d.heartbeat_due(1150));
        assert_eq!(d.next_deadline(), 1200);
        d.closed();
        assert!(d.suspects(1150), "a closed channel is suspected at once");
    }
}
