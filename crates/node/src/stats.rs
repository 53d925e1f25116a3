//! What a VM tells `ftvm status` and the benchmarks, and the release of
//! outputs, which those numbers count.

use std::collections::VecDeque;

use ftvm_board::IoRequest;
use ftvm_ft::golive::Verdict;

use crate::Effect;

/// How many recent output-rule delays the statistics keep.
const DELAYS_KEPT: usize = 4096;

/// Upper bounds, in seconds, of the buckets the output-rule delays are
/// counted in (for a histogram in Prometheus's sense): from a logging
/// round trip on one host to a second.
pub const DELAY_BUCKETS_S: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Numbers for `ftvm status` and the benchmarks.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Log bytes sent (primary), received (backup) or recorded (a solo
    /// VM with `--record`).
    pub log_bytes: u64,
    /// Entries not yet acknowledged (primary) or not yet executed
    /// (backup).
    pub lag_entries: u64,
    /// How long the primary would take to execute what the backup has
    /// still to execute up to the primary's last entry (at its measured
    /// speed).
    pub lag_ns: u64,
    /// The machine's instruction count.
    pub icount: u64,
    /// Recent output-rule delays (ns from an output's production to its
    /// release).
    pub output_delays_ns: VecDeque<u64>,
    /// Outputs released in all.
    pub outputs: u64,
    /// Every output-rule delay so far.
    pub delay_histogram: Durations,
    /// Log entries sent (primary) or received and checked (backup).
    pub log_entries: u64,
    /// A primary's acknowledgement round trips (from sending a piece of
    /// log to the acknowledgement that covers it).
    pub ack_histogram: Durations,
    pub milestones: Milestones,
}

/// What happened to this VM so far: each stays set once it happened, so
/// a status line (and a test) can tell the story after the fact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Milestones {
    /// It suspected its peer (silence, or a closed channel).
    pub suspected_peer: bool,
    /// The arbiter's last verdict to it.
    pub verdict: Option<Verdict>,
    /// A backup that went live.
    pub took_over: bool,
    /// It announced the VM's MAC address to the network.
    pub announced: bool,
    /// New backups cloned from this VM that caught up and protect it.
    pub clones: u32,
}

impl Stats {
    /// The `q` quantile (0..=1) of the recent output-rule delays, in ns.
    pub fn delay_quantile_ns(&self, q: f64) -> u64 {
        let mut delays: Vec<u64> = self.output_delays_ns.iter().copied().collect();
        delays.sort_unstable();
        delays
            .get(((delays.len() as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize)
            .copied()
            .unwrap_or(0)
    }
}

/// An output produced by the guest: held by the output rule until the
/// backup acknowledges it, or released at once by a VM running alone.
#[derive(Debug)]
pub(crate) enum Held {
    Console { offset: u64, bytes: Vec<u8> },
    Io(IoRequest),
}

/// Count `held` as released after `delay_ns` and hand it to the host.
pub(crate) fn release(effects: &mut Vec<Effect>, stats: &mut Stats, held: Held, delay_ns: u64) {
    count_release(stats, delay_ns);
    effects.push(match held {
        Held::Console { offset, bytes } => Effect::Console { offset, bytes },
        Held::Io(request) => Effect::Perform(request),
    });
}

/// Durations counted in the buckets of [`DELAY_BUCKETS_S`] (each counts
/// those above the bound before it; longer than the last: none), with
/// their sum and number: a histogram in Prometheus's sense.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durations {
    pub buckets: [u64; DELAY_BUCKETS_S.len()],
    pub sum_ns: u64,
    pub count: u64,
}

impl Durations {
    pub(crate) fn observe(&mut self, ns: u64) {
        let seconds = ns as f64 / 1e9;
        if let Some(bucket) = DELAY_BUCKETS_S.iter().position(|&bound| seconds <= bound) {
            self.buckets[bucket] += 1;
        }
        self.sum_ns += ns;
        self.count += 1;
    }
}

pub(crate) fn count_release(stats: &mut Stats, delay_ns: u64) {
    stats.outputs += 1;
    stats.delay_histogram.observe(delay_ns);
    if stats.output_delays_ns.len() == DELAYS_KEPT {
        stats.output_delays_ns.pop_front();
    }
    stats.output_delays_ns.push_back(delay_ns);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_the_kept_delays() {
        let mut stats = Stats::default();
        assert_eq!(stats.delay_quantile_ns(0.5), 0);
        for d in [5, 1, 3, 2, 4] {
            count_release(&mut stats, d);
        }
        assert_eq!(stats.delay_quantile_ns(0.5), 3);
        assert_eq!(stats.delay_quantile_ns(1.0), 5);
        assert_eq!(stats.outputs, 5);
        for _ in 0..DELAYS_KEPT {
            count_release(&mut stats, 9);
        }
        assert_eq!(stats.output_delays_ns.len(), DELAYS_KEPT);
        assert_eq!(
            stats.delay_quantile_ns(0.0),
            9,
            "the oldest delays are dropped"
        );
    }
}
