use ftvm_cpu::GuestClock;
use serde::{Deserialize, Serialize};

use super::{BusCtx, MmioDevice};

/// CLINT: per-hart software interrupt and timer compare. `mtime` itself is
/// guest time, owned by the hart's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clint {
    pub msip: u32,
    pub mtimecmp: u64,
}

impl Clint {
    pub const BASE: u64 = 0x0200_0000;
    pub const SIZE: u64 = 0x1_0000;
    const MTIMECMP: u64 = 0x4000;
    const MTIME: u64 = 0xbff8;

    pub fn new() -> Self {
        // QEMU resets mtimecmp to 0, so a timer interrupt is pending from reset.
        Clint {
            msip: 0,
            mtimecmp: 0,
        }
    }

    pub fn timer_pending(&self, mtime: u64) -> bool {
        mtime >= self.mtimecmp
    }

    /// The icount at which the timer interrupt becomes pending.
    pub fn deadline(&self, clock: &GuestClock, icount: u64) -> u64 {
        clock.icount_at(icount, self.mtimecmp)
    }
}

impl MmioDevice for Clint {
    fn window(&self) -> (u64, u64) {
        (Self::BASE, Self::SIZE)
    }

    fn load(&mut self, offset: u64, size: u8, ctx: &mut BusCtx) -> Option<u64> {
        let read64 = |reg: u64, value: u64| -> Option<u64> {
            match (offset - reg, size) {
                (0, 8) => Some(value),
                (0, 4) => Some(value & 0xffff_ffff),
                (4, 4) => Some(value >> 32),
                _ => None,
            }
        };
        match offset {
            0 if size == 4 => Some(u64::from(self.msip)),
            o if (Self::MTIMECMP..Self::MTIMECMP + 8).contains(&o) => {
                read64(Self::MTIMECMP, self.mtimecmp)
            }
            o if (Self::MTIME..Self::MTIME + 8).contains(&o) => read64(Self::MTIME, ctx.mtime()),
            _ => Some(0),
        }
    }

    /// Stores never fault; a size that does not fit a register leaves it
    /// as it was.
    fn store(&mut self, offset: u64, size: u8, value: u64, ctx: &mut BusCtx) -> Option<()> {
        let write64 = |old: u64| -> u64 {
            match (offset & 7, size) {
                (0, 8) => value,
                (0, 4) => (old & !0xffff_ffff) | (value & 0xffff_ffff),
                (4, 4) => (old & 0xffff_ffff) | (value << 32),
                _ => old,
            }
        };
        match offset {
            0 if size == 4 => self.msip = (value & 1) as u32,
            o if (Self::MTIMECMP..Self::MTIMECMP + 8).contains(&o) => {
                self.mtimecmp = write64(self.mtimecmp)
            }
            o if (Self::MTIME..Self::MTIME + 8).contains(&o) => {
                let mtime = write64(ctx.mtime());
                ctx.set_mtime(mtime);
            }
            _ => {}
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::MtimeWrite;

    #[test]
    fn clint_registers_and_deadline() {
        let mut clint = Clint::new();
        let clock = GuestClock {
            insns_per_tick: 10,
            offset: 0,
        };
        let mut ctx = BusCtx::at_mtime(0);
        clint.store(0x4000, 4, 100, &mut ctx);
        clint.store(0x4004, 4, 0, &mut ctx);
        assert_eq!(clint.mtimecmp, 100);
        assert_eq!(clint.deadline(&clock, 0), 1000);
        assert!(!clint.timer_pending(99));
        assert!(clint.timer_pending(100));
        assert_eq!(
            clint.load(0xbff8, 8, &mut BusCtx::at_mtime(1234)),
            Some(1234)
        );
        assert_eq!(
            clint.load(0xbffc, 4, &mut BusCtx::at_mtime(1 << 40)),
            Some(1 << 8)
        );
        clint.store(0, 4, 1, &mut ctx);
        assert_eq!(clint.load(0, 4, &mut ctx), Some(1));
        assert_eq!(ctx.effects.mtime_write, None);
    }

    #[test]
    fn a_write_to_mtime_is_an_effect_at_the_access() {
        let mut clint = Clint::new();
        let mut ctx = BusCtx::at_mtime(0x1_0000_0005);
        clint.store(0xbff8, 4, 7, &mut ctx);
        assert_eq!(
            ctx.effects.mtime_write,
            Some(MtimeWrite {
                icount: 0,
                value: 0x1_0000_0007
            }),
            "a 32-bit write keeps the other half"
        );
    }
}
