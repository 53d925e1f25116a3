//! The `virt` board's devices as plain state machines: each takes register
//! accesses and reports the interrupt level it drives. None of them reads
//! anything outside itself: guest time comes with each access in a
//! [`BusCtx`], and what an access asks of the machine besides the device's
//! own state (a console byte, a power-off, a new `mtime`) goes back through
//! it, for the machine to act on when the hart's run returns.

mod clint;
mod plic;
mod rtc;
mod sifive_test;
mod uart;
mod virtio_slots;

use std::ops::Range;

use ftvm_cpu::{Bus, BusFault, GuestClock};

pub use clint::Clint;
pub use plic::Plic;
pub use rtc::Rtc;
pub use sifive_test::{SifiveTest, TestRequest};
pub use uart::Uart;
pub use virtio_slots::VirtioSlots;

/// A device's register window on the bus, with its access rules.
///
/// Offsets are from the window's base. A `None` refuses the access (a size
/// or register the device does not decode): the hart takes an access fault.
pub trait MmioDevice {
    /// Base and size of the window.
    fn window(&self) -> (u64, u64);
    fn load(&mut self, offset: u64, size: u8, ctx: &mut BusCtx) -> Option<u64>;
    fn store(&mut self, offset: u64, size: u8, value: u64, ctx: &mut BusCtx) -> Option<()>;
}

/// A guest write to `mtime`: guest time reads `value` at `icount`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MtimeWrite {
    pub icount: u64,
    pub value: u64,
}

/// What the accesses of a run asked of the machine besides device state.
#[derive(Debug, Default)]
pub struct Effects {
    /// The machine's console, with the bytes transmitted appended.
    pub console: Vec<u8>,
    /// The last power-off or reset request.
    pub test_request: Option<TestRequest>,
    /// The last write to `mtime`.
    pub mtime_write: Option<MtimeWrite>,
}

/// What a device sees of the machine during one access.
#[derive(Debug)]
pub struct BusCtx {
    clock: GuestClock,
    icount: u64,
    pub effects: Effects,
}

impl BusCtx {
    pub fn new(clock: GuestClock, console: Vec<u8>) -> BusCtx {
        BusCtx {
            clock,
            icount: 0,
            effects: Effects {
                console,
                ..Effects::default()
            },
        }
    }

    /// Guest time at the access.
    pub fn mtime(&self) -> u64 {
        self.clock.mtime(self.icount)
    }

    pub fn transmit(&mut self, byte: u8) {
        self.effects.console.push(byte);
    }

    pub fn request(&mut self, request: TestRequest) {
        self.effects.test_request = Some(request);
    }

    pub fn set_mtime(&mut self, value: u64) {
        self.effects.mtime_write = Some(MtimeWrite {
            icount: self.icount,
            value,
        });
    }
}

#[cfg(test)]
impl BusCtx {
    /// A context for driving a device directly, at guest time `mtime`.
    pub fn at_mtime(mtime: u64) -> BusCtx {
        let clock = GuestClock {
            insns_per_tick: 1,
            offset: mtime,
        };
        BusCtx::new(clock, Vec::new())
    }
}

/// A device at its place on the bus.
pub struct Mapping<'a> {
    window: Range<u64>,
    device: &'a mut dyn MmioDevice,
}

impl<'a> Mapping<'a> {
    /// Generic so that the window is read without an indirect call: a
    /// bus is built for every run of the hart.
    pub fn new<D: MmioDevice>(device: &'a mut D) -> Mapping<'a> {
        let (base, size) = device.window();
        Mapping {
            window: base..base + size,
            device,
        }
    }

    #[cfg(test)]
    pub fn window(&self) -> &Range<u64> {
        &self.window
    }
}

/// The bus as the hart sees it during one run: every device's window, and
/// the context their accesses share.
///
/// Dispatch is a scan of a handful of windows and one indirect call, with
/// no allocation. Every MMIO access also ends the hart's run
/// (`Exit::Mmio`), which costs far more.
pub struct MmioBus<'a, const N: usize> {
    mappings: [Mapping<'a>; N],
    ctx: BusCtx,
}

impl<'a, const N: usize> MmioBus<'a, N> {
    /// The windows must not overlap: an address decodes to the first
    /// mapping that holds it.
    pub fn new(mappings: [Mapping<'a>; N], ctx: BusCtx) -> Self {
        MmioBus { mappings, ctx }
    }

    pub fn into_effects(self) -> Effects {
        self.ctx.effects
    }
}

/// The device whose window holds `paddr`, and the offset into it.
fn decode<'d>(
    mappings: &'d mut [Mapping<'_>],
    paddr: u64,
) -> Option<(&'d mut dyn MmioDevice, u64)> {
    let mapping = mappings.iter_mut().find(|m| m.window.contains(&paddr))?;
    Some((&mut *mapping.device, paddr - mapping.window.start))
}

impl<const N: usize> Bus for MmioBus<'_, N> {
    fn load(&mut self, paddr: u64, size: u8, icount: u64) -> Result<u64, BusFault> {
        self.ctx.icount = icount;
        decode(&mut self.mappings, paddr)
            .and_then(|(device, offset)| device.load(offset, size, &mut self.ctx))
            .ok_or(BusFault { addr: paddr })
    }

    fn store(&mut self, paddr: u64, size: u8, value: u64, icount: u64) -> Result<(), BusFault> {
        self.ctx.icount = icount;
        decode(&mut self.mappings, paddr)
            .and_then(|(device, offset)| device.store(offset, size, value, &mut self.ctx))
            .ok_or(BusFault { addr: paddr })
    }
}
