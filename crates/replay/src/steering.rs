//! Guest time steered toward the host's wall clock (ARCHITECTURE.md, "The
//! input boundary").
//!
//! Guest time (`mtime`) is a function of icount, so timer interrupts land
//! at exact icounts and cost the log nothing. Left alone it would run as
//! fast as the host executes the guest. [`TimeSteering`] watches both
//! clocks and proposes two kinds of small corrections, which the caller
//! injects (and so logs) like any other input:
//! - [`Input::GuestTimeRate`]: instructions per tick, set from the host's
//!   measured speed while the guest was busy, a little slow on purpose so
//!   that guest time lags rather than leads;
//! - [`Input::GuestTimeStep`]: a forward jump that takes back the lag once
//!   it exceeds a millisecond.
//!
//! A guest running ahead is slowed (down to half speed) until wall time
//! catches up: guest time never goes back. An idle guest's sleeps are
//! already measured in wall time, so it needs next to no corrections.
//!
//! Sans-IO: the caller passes the host time in.

use ftvm_board::Input;

/// Length of one `mtime` tick in ns (10 MHz timebase).
const TICK_NS: u64 = ftvm_board::MTIME_TICK_NS;

/// The machine's clocks as the steering sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockReading {
    pub icount: u64,
    pub mtime: u64,
    pub insns_per_tick: u64,
    /// How often the guest has written `mtime` itself: a change re-pairs
    /// the clocks instead of undoing the guest's write.
    pub guest_writes: u64,
}

#[derive(Clone, Debug)]
pub struct TimeSteering {
    period_ns: u64,
    /// Host ns and guest `mtime` that correspond.
    anchor: Option<(u64, u64)>,
    /// Host ns and icount at the start of the current period.
    last: (u64, u64),
    idle_in_period: bool,
    guest_writes: u64,
}

impl Default for TimeSteering {
    fn default() -> Self {
        TimeSteering::new(20_000_000)
    }
}

impl TimeSteering {
    /// Lag under which no step is logged (1 ms).
    pub const MIN_STEP_TICKS: u64 = 10_000;
    /// Lead or lag beyond which the clocks are re-paired instead of
    /// corrected (the guest set its clock, or the host was suspended).
    pub const REANCHOR_TICKS: u64 = 60 * 10_000_000;
    /// Margin by which the rate runs slow, in thousandths.
    const SLOW_MARGIN: u64 = 30;

    /// Act at most once per `period_ns` of host time.
    pub fn new(period_ns: u64) -> TimeSteering {
        TimeSteering {
            period_ns: period_ns.max(1),
            anchor: None,
            last: (0, 0),
            idle_in_period: false,
            guest_writes: 0,
        }
    }

    /// The guest slept (WFI) in this period: its instruction rate says
    /// nothing about the host's speed.
    pub fn note_idle(&mut self) {
        self.idle_in_period = true;
    }

    /// Corrections due at host time `now_ns` for a machine whose clocks
    /// read `clock`.
    pub fn poll(&mut self, now_ns: u64, clock: ClockReading) -> Vec<Input> {
        let ClockReading {
            icount,
            mtime,
            insns_per_tick,
            guest_writes,
        } = clock;
        let anchor = self.anchor.filter(|_| guest_writes == self.guest_writes);
        let Some((anchor_ns, anchor_mtime)) = anchor else {
            self.guest_writes = guest_writes;
            self.reanchor(now_ns, icount, mtime);
            return Vec::new();
        };
        let elapsed_ns = now_ns.saturating_sub(self.last.0);
        if elapsed_ns < self.period_ns {
            return Vec::new();
        }
        let wall_ticks = now_ns.saturating_sub(anchor_ns) / TICK_NS;
        let Some(guest_ticks) = mtime.checked_sub(anchor_mtime) else {
            self.reanchor(now_ns, icount, mtime);
            return Vec::new();
        };
        let behind = i128::from(wall_ticks) - i128::from(guest_ticks);
        if behind.unsigned_abs() > u128::from(Self::REANCHOR_TICKS) {
            self.reanchor(now_ns, icount, mtime);
            return Vec::new();
        }
        let mut out = Vec::new();
        let insns = icount.saturating_sub(self.last.1);
        let period_ticks = elapsed_ns / TICK_NS;
        // A period much longer than asked for means the host stalled (a
        // flush to disk, descheduling): its speed says nothing then.
        let stalled = elapsed_ns > 2 * self.period_ns;
        if !self.idle_in_period && !stalled && insns > 0 && period_ticks > 0 {
            // Ticks the guest should see in the next period: fewer while
            // it is ahead, but never under half.
            let ahead = u64::try_from((-behind).max(0)).unwrap_or(u64::MAX);
            let want = period_ticks
                .saturating_sub(ahead)
                .max(period_ticks / 2)
                .max(1);
            let rate = u128::from(insns) * u128::from(1000 + Self::SLOW_MARGIN)
                / (u128::from(want) * 1000);
            // At most a factor of 4 per period: one odd period cannot make
            // guest time race or crawl.
            let current = u128::from(insns_per_tick.max(1));
            let rate = rate.clamp((current / 4).max(1), current * 4);
            // Hysteresis: a steady host changes nothing.
            if rate.abs_diff(current) * 100 > current * 2 || (ahead > 0 && rate > current) {
                let rate = u64::try_from(rate).unwrap_or(u64::MAX);
                out.push(Input::GuestTimeRate {
                    insns_per_tick: rate,
                });
            }
        }
        if behind >= i128::from(Self::MIN_STEP_TICKS) {
            out.push(Input::GuestTimeStep {
                ticks: behind as u64,
            });
        }
        self.last = (now_ns, icount);
        self.idle_in_period = false;
        out
    }

    fn reanchor(&mut self, now_ns: u64, icount: u64, mtime: u64) {
        self.anchor = Some((now_ns, mtime));
        self.last = (now_ns, icount);
        self.idle_in_period = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(icount: u64, mtime: u64, insns_per_tick: u64) -> ClockReading {
        ClockReading {
            icount,
            mtime,
            insns_per_tick,
            guest_writes: 0,
        }
    }

    /// A simulated guest executing `mips` million instructions per second
    /// of host time, steered for `seconds`; returns the final lag of guest
    /// time behind host time in ticks (negative: ahead) and the inputs.
    fn simulate(mips: u64, seconds: u64) -> (i128, Vec<Input>) {
        let mut steering = TimeSteering::default();
        let (mut icount, mut ipt, mut offset) = (0u64, 10u64, 0u64);
        let mut log = Vec::new();
        let step_ns = 1_000_000; // the run loop polls every ms
        for ms in 0..seconds * 1000 {
            let now = ms * step_ns;
            let mtime = offset.wrapping_add(icount / ipt);
            for input in steering.poll(now, reading(icount, mtime, ipt)) {
                match input {
                    Input::GuestTimeRate { insns_per_tick } => {
                        offset = mtime.wrapping_sub(icount / insns_per_tick);
                        ipt = insns_per_tick;
                    }
                    Input::GuestTimeStep { ticks } => offset = offset.wrapping_add(ticks),
                    _ => unreachable!(),
                }
                log.push(input);
            }
            icount += mips * 1000;
        }
        let now = seconds * 1000 * step_ns;
        (
            i128::from(now / TICK_NS) - i128::from(offset.wrapping_add(icount / ipt)),
            log,
        )
    }

    #[test]
    fn a_fast_busy_guest_ends_close_to_wall_time_with_few_corrections() {
        let (behind, log) = simulate(2400, 10);
        assert!(behind.abs() < 20 * 10_000, "{behind} ticks off after 10 s");
        assert!(log.len() < 400, "{} corrections in 10 s", log.len());
    }

    #[test]
    fn a_slow_guest_is_stepped_forward() {
        let (behind, log) = simulate(5, 5);
        assert!(behind.abs() < 20 * 10_000, "{behind} ticks off");
        assert!(log.iter().any(|i| matches!(i, Input::GuestTimeStep { .. })));
    }

    #[test]
    fn an_idle_guest_needs_no_rate_changes() {
        let mut steering = TimeSteering::default();
        assert!(steering.poll(0, reading(0, 0, 10)).is_empty());
        for period in 1..100u64 {
            steering.note_idle();
            let now = period * 20_000_000;
            // Sleeps keep guest time exactly on wall time.
            let out = steering.poll(now, reading(period * 1000, now / TICK_NS, 10));
            assert!(out.is_empty(), "{out:?}");
        }
    }

    #[test]
    fn a_guest_that_sets_its_clock_is_reanchored_not_corrected() {
        let mut steering = TimeSteering::default();
        steering.poll(0, reading(0, 0, 10));
        // 30 ms later the guest set its clock back by 20 ms.
        let set_back = ClockReading {
            guest_writes: 1,
            ..reading(300_000, 100_000, 10)
        };
        assert!(steering.poll(30_000_000, set_back).is_empty());
        let later = ClockReading {
            guest_writes: 1,
            ..reading(600_000, 100_000 + 300_000, 10)
        };
        let out = steering.poll(60_000_000, later);
        assert!(
            !out.iter().any(|i| matches!(i, Input::GuestTimeStep { .. })),
            "{out:?}"
        );
    }

    #[test]
    fn a_host_stall_does_not_make_guest_time_race() {
        let mut steering = TimeSteering::default();
        steering.poll(0, reading(0, 0, 250));
        // 20 ms at full speed, then a 2 s stall with few instructions.
        steering.poll(20_000_000, reading(50_000_000, 200_000, 250));
        let out = steering.poll(2_020_000_000, reading(50_100_000, 200_400, 250));
        assert!(
            !out.iter().any(|i| matches!(i, Input::GuestTimeRate { .. })),
            "{out:?}"
        );
        assert!(out.iter().any(|i| matches!(i, Input::GuestTimeStep { .. })));
    }
}
