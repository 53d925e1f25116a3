use serde::{Deserialize, Serialize};

use super::{BusCtx, MmioDevice};

/// Goldfish RTC (as on QEMU `virt`): nanoseconds since the Unix epoch.
///
/// The clock is derived from guest time, so reading it is deterministic:
/// `now = offset + mtime * 100 ns`. The wall-clock time enters once, as
/// [`crate::Input::WallClock`], and the guest can set it; from then on it
/// runs with guest time (which the host keeps close to real time).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rtc {
    /// Unix time in ns at `mtime` 0 (wrapping).
    offset_ns: u64,
    /// TIME_HIGH latched by the last TIME_LOW read.
    read_high: u32,
    /// TIME_HIGH written for the next TIME_LOW write (setting the time).
    write_high: u32,
    alarm_ns: u64,
    alarm_high: u32,
    alarm_armed: bool,
    irq_enabled: bool,
    /// An alarm fired and was not yet cleared.
    irq_pending: bool,
}

impl Rtc {
    pub const BASE: u64 = 0x10_1000;
    pub const SIZE: u64 = 0x1000;
    /// PLIC source, as on QEMU `virt`.
    pub const IRQ: usize = 11;
    const NS_PER_TICK: u64 = crate::MTIME_TICK_NS;

    pub fn set_wall_clock(&mut self, unix_ns: u64, mtime: u64) {
        self.offset_ns = unix_ns.wrapping_sub(mtime.wrapping_mul(Self::NS_PER_TICK));
    }

    pub fn now(&self, mtime: u64) -> u64 {
        self.offset_ns
            .wrapping_add(mtime.wrapping_mul(Self::NS_PER_TICK))
    }

    /// Fire a due alarm.
    pub fn poll(&mut self, mtime: u64) {
        if self.alarm_armed && self.now(mtime) >= self.alarm_ns {
            self.alarm_armed = false;
            self.irq_pending = true;
        }
    }

    pub fn irq_level(&self) -> bool {
        self.irq_pending && self.irq_enabled
    }

    /// The `mtime` at which an armed alarm fires.
    pub fn alarm_mtime(&self) -> Option<u64> {
        self.alarm_armed.then(|| {
            self.alarm_ns
                .wrapping_sub(self.offset_ns)
                .div_ceil(Self::NS_PER_TICK)
        })
    }
}

/// Registers are 32-bit; other sizes and unknown registers fault.
impl MmioDevice for Rtc {
    fn window(&self) -> (u64, u64) {
        (Self::BASE, Self::SIZE)
    }

    fn load(&mut self, offset: u64, size: u8, ctx: &mut BusCtx) -> Option<u64> {
        if size != 4 {
            return None;
        }
        Some(u64::from(match offset {
            0x00 => {
                let now = self.now(ctx.mtime());
                self.read_high = (now >> 32) as u32;
                now as u32
            }
            0x04 => self.read_high,
            0x08 => self.alarm_ns as u32,
            0x0c => (self.alarm_ns >> 32) as u32,
            0x10 => u32::from(self.irq_enabled),
            0x18 => u32::from(self.alarm_armed),
            0x14 | 0x1c => 0,
            _ => return None,
        }))
    }

    fn store(&mut self, offset: u64, size: u8, value: u64, ctx: &mut BusCtx) -> Option<()> {
        if size != 4 {
            return None;
        }
        let value = value as u32;
        let mtime = ctx.mtime();
        match offset {
            0x00 => {
                let unix_ns = (u64::from(self.write_high) << 32) | u64::from(value);
                self.set_wall_clock(unix_ns, mtime);
            }
            0x04 => self.write_high = value,
            0x08 => {
                self.alarm_ns = (u64::from(self.alarm_high) << 32) | u64::from(value);
                self.alarm_armed = true;
            }
            0x0c => self.alarm_high = value,
            0x10 => self.irq_enabled = value & 1 != 0,
            0x14 => self.alarm_armed = false,
            0x1c => self.irq_pending = false,
            _ => return None,
        }
        self.poll(mtime);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtc_runs_with_guest_time_and_fires_its_alarm() {
        let at = BusCtx::at_mtime;
        let mut rtc = Rtc::default();
        rtc.set_wall_clock(1_700_000_000_000_000_000, 50);
        let low = rtc.load(0x00, 4, &mut at(60)).expect("TIME_LOW");
        let high = rtc
            .load(0x04, 4, &mut at(1_000_000))
            .expect("TIME_HIGH is latched");
        assert_eq!((high << 32) | low, 1_700_000_000_000_001_000);
        // The guest sets the time: high word first, then the low word.
        rtc.store(0x04, 4, 0, &mut at(10)).expect("TIME_HIGH");
        rtc.store(0x00, 4, 5_000, &mut at(10)).expect("TIME_LOW");
        assert_eq!(rtc.now(20), 6_000);
        rtc.store(0x10, 4, 1, &mut at(20)).expect("IRQ_ENABLED");
        rtc.store(0x0c, 4, 0, &mut at(20)).expect("ALARM_HIGH");
        rtc.store(0x08, 4, 9_000, &mut at(20)).expect("ALARM_LOW");
        assert_eq!(rtc.alarm_mtime(), Some(50));
        rtc.poll(49);
        assert!(!rtc.irq_level());
        rtc.poll(50);
        assert!(rtc.irq_level());
        rtc.store(0x1c, 4, 1, &mut at(51)).expect("CLEAR_INTERRUPT");
        assert!(!rtc.irq_level());
        assert_eq!(rtc.load(0x20, 4, &mut at(0)), None);
        assert_eq!(rtc.load(0x00, 8, &mut at(0)), None, "registers are 32-bit");
    }
}
