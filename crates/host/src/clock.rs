//! The host's clocks, as the node sees them ([`Time`]).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ftvm_node::Time;

/// Monotonic time since the clock was made, and the wall clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    /// `--rtc-time`: the guest's RTC starts at this instant (ns since the
    /// Unix epoch) instead of the host's time of day, for reproducible
    /// runs.
    fixed_wall_ns: Option<u64>,
}

impl Clock {
    pub fn new(fixed_wall_seconds: Option<u64>) -> Clock {
        Clock {
            origin: Instant::now(),
            fixed_wall_ns: fixed_wall_seconds.map(|s| s.saturating_mul(1_000_000_000)),
        }
    }

    pub fn now(&self) -> Time {
        let unix_ns = self.fixed_wall_ns.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        });
        Time {
            mono_ns: u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX),
            unix_ns,
        }
    }

    /// How long from now until `deadline_ms` on this clock's monotonic
    /// scale (zero once it has passed).
    pub fn until_ms(&self, deadline_ms: u64) -> std::time::Duration {
        let now_ms = self.now().mono_ns / 1_000_000;
        std::time::Duration::from_millis(deadline_ms.saturating_sub(now_ms))
    }
}
