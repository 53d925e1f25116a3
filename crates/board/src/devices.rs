//! The `virt` board's devices as plain state machines: each takes register
//! accesses and reports the interrupt level it drives. None of them reads
//! anything outside itself.

use std::collections::VecDeque;

use ftvm_cpu::GuestClock;
use serde::{Deserialize, Serialize};

/// CLINT: per-hart software interrupt and timer compare. `mtime` itself is
/// guest time, owned by the hart's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clint {
    pub msip: u32,
    pub mtimecmp: u64,
}

/// What a CLINT store asks of the machine besides its own registers.
pub enum ClintEffect {
    None,
    SetMtime(u64),
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

    pub fn load(&self, offset: u64, size: u8, mtime: u64) -> Option<u64> {
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
            o if (Self::MTIME..Self::MTIME + 8).contains(&o) => read64(Self::MTIME, mtime),
            _ => Some(0),
        }
    }

    pub fn store(&mut self, offset: u64, size: u8, value: u64, mtime: u64) -> ClintEffect {
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
                return ClintEffect::SetMtime(write64(mtime));
            }
            _ => {}
        }
        ClintEffect::None
    }

    pub fn timer_pending(&self, mtime: u64) -> bool {
        mtime >= self.mtimecmp
    }

    /// The icount at which the timer interrupt becomes pending.
    pub fn deadline(&self, clock: &GuestClock, icount: u64) -> u64 {
        clock.icount_at(icount, self.mtimecmp)
    }
}

/// PLIC with QEMU `virt`'s layout: 96 sources, two contexts for hart 0
/// (0 = M-mode -> MEIP, 1 = S-mode -> SEIP). Sources are level-triggered:
/// a source is pending while its line is high and it is not being served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plic {
    priority: Vec<u32>,
    level: Vec<bool>,
    claimed: Vec<bool>,
    enable: [[u32; 3]; 2],
    threshold: [u32; 2],
}

impl Plic {
    pub const BASE: u64 = 0x0c00_0000;
    pub const SIZE: u64 = 0x60_0000;
    pub const SOURCES: usize = 96;

    pub fn new() -> Self {
        Plic {
            priority: vec![0; Self::SOURCES],
            level: vec![false; Self::SOURCES],
            claimed: vec![false; Self::SOURCES],
            enable: [[0; 3]; 2],
            threshold: [0; 2],
        }
    }

    pub fn set_level(&mut self, source: usize, high: bool) {
        if (1..Self::SOURCES).contains(&source) {
            self.level[source] = high;
        }
    }

    fn pending(&self, source: usize) -> bool {
        self.level[source] && !self.claimed[source]
    }

    fn enabled(&self, context: usize, source: usize) -> bool {
        self.enable[context][source / 32] & (1 << (source % 32)) != 0
    }

    /// The best source a context would claim now.
    fn best(&self, context: usize) -> Option<usize> {
        let mut best: Option<(u32, usize)> = None;
        for source in 1..Self::SOURCES {
            let prio = self.priority[source];
            if self.pending(source)
                && self.enabled(context, source)
                && prio > self.threshold[context]
                && best.is_none_or(|(p, _)| prio > p)
            {
                best = Some((prio, source));
            }
        }
        best.map(|(_, s)| s)
    }

    /// The interrupt line of a context (MEIP for 0, SEIP for 1).
    pub fn context_pending(&self, context: usize) -> bool {
        self.best(context).is_some()
    }

    pub fn load(&mut self, offset: u64, size: u8) -> Option<u64> {
        if size != 4 {
            return None;
        }
        let word = (offset / 4) as usize;
        Some(u64::from(match offset {
            0..0x1000 => self.priority.get(word).copied().unwrap_or(0),
            0x1000..0x100c => {
                let base = (offset as usize - 0x1000) * 8;
                (0..32).fold(0, |acc, bit| {
                    acc | (u32::from(self.pending(base + bit)) << bit)
                })
            }
            0x2000..0x2100 => {
                let context = (offset as usize - 0x2000) / 0x80;
                let index = (offset as usize % 0x80) / 4;
                self.enable
                    .get(context)
                    .and_then(|c| c.get(index))
                    .copied()
                    .unwrap_or(0)
            }
            0x20_0000..0x20_2000 => {
                let context = (offset as usize - 0x20_0000) / 0x1000;
                match offset % 0x1000 {
                    0 => self.threshold[context],
                    4 => self.claim(context),
                    _ => 0,
                }
            }
            _ => 0,
        }))
    }

    fn claim(&mut self, context: usize) -> u32 {
        match self.best(context) {
            Some(source) => {
                self.claimed[source] = true;
                source as u32
            }
            None => 0,
        }
    }

    pub fn store(&mut self, offset: u64, size: u8, value: u64) -> Option<()> {
        if size != 4 {
            return None;
        }
        let value = value as u32;
        let word = (offset / 4) as usize;
        match offset {
            0..0x1000 if (1..Self::SOURCES).contains(&word) => self.priority[word] = value & 7,
            0x2000..0x2100 => {
                let context = (offset as usize - 0x2000) / 0x80;
                let index = (offset as usize % 0x80) / 4;
                if let Some(slot) = self.enable.get_mut(context).and_then(|c| c.get_mut(index)) {
                    *slot = if index == 0 { value & !1 } else { value };
                }
            }
            0x20_0000..0x20_2000 => {
                let context = (offset as usize - 0x20_0000) / 0x1000;
                match offset % 0x1000 {
                    0 => self.threshold[context] = value & 7,
                    4 => {
                        let source = value as usize;
                        if (1..Self::SOURCES).contains(&source) && self.enabled(context, source) {
                            self.claimed[source] = false;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Some(())
    }
}

/// A 16550A UART as Linux's 8250 driver and OpenSBI use it: FIFOs, the
/// received-data and transmitter-empty interrupts. Transmission completes
/// at once; received bytes come from the machine's input boundary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uart {
    rx: VecDeque<u8>,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    fcr: u8,
    dll: u8,
    dlm: u8,
    /// The transmitter-empty interrupt is latched until IIR reports it or
    /// THR is written, as on the real chip.
    thr_ipending: bool,
}

const IER_RDI: u8 = 1;
const IER_THRI: u8 = 2;
const LCR_DLAB: u8 = 0x80;
const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;

impl Uart {
    pub const BASE: u64 = 0x1000_0000;
    pub const SIZE: u64 = 0x100;
    pub const IRQ: usize = 10;

    pub fn new() -> Self {
        Uart {
            rx: VecDeque::new(),
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            fcr: 0,
            dll: 0,
            dlm: 0,
            thr_ipending: false,
        }
    }

    pub fn receive(&mut self, byte: u8) {
        self.rx.push_back(byte);
    }

    pub fn irq_level(&self) -> bool {
        (self.ier & IER_RDI != 0 && !self.rx.is_empty())
            || (self.ier & IER_THRI != 0 && self.thr_ipending)
    }

    fn iir(&mut self) -> u8 {
        let fifo_bits = if self.fcr & 1 != 0 { 0xc0 } else { 0 };
        let id = if self.ier & IER_RDI != 0 && !self.rx.is_empty() {
            0x04
        } else if self.ier & IER_THRI != 0 && self.thr_ipending {
            self.thr_ipending = false;
            0x02
        } else {
            0x01
        };
        id | fifo_bits
    }

    pub fn load(&mut self, offset: u64) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll,
            0 => self.rx.pop_front().unwrap_or(0),
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => self.iir(),
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_THRE | LSR_TEMT | if self.rx.is_empty() { 0 } else { LSR_DR },
            // Loopback reflects MCR in MSR; otherwise report DCD, DSR, CTS.
            6 if self.mcr & 0x10 != 0 => {
                let m = self.mcr;
                ((m & 1) << 5) | ((m & 2) << 3) | ((m & 4) << 4) | ((m & 8) << 4)
            }
            6 => 0xb0,
            7 => self.scr,
            _ => 0,
        }
    }

    /// Returns a byte to transmit, if the store was one.
    pub fn store(&mut self, offset: u64, value: u8) -> Option<u8> {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll = value,
            0 => {
                // Transmission is instant: THR is empty again at once.
                self.thr_ipending = true;
                return Some(value);
            }
            1 if dlab => self.dlm = value,
            1 => {
                let enabling_thri = value & IER_THRI != 0 && self.ier & IER_THRI == 0;
                self.ier = value & 0x0f;
                if enabling_thri {
                    self.thr_ipending = true;
                }
            }
            2 => {
                self.fcr = value & 0xc9;
                if value & 2 != 0 {
                    self.rx.clear();
                }
            }
            3 => self.lcr = value,
            4 => self.mcr = value & 0x1f,
            7 => self.scr = value,
            _ => {}
        }
        None
    }
}

/// sifive-test: the guest's power-off and reset switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestRequest {
    /// 0x5555 (code 0) or `(code << 16) | 0x3333`.
    PowerOff(u32),
    Reset,
}

pub const SIFIVE_TEST_BASE: u64 = 0x10_0000;
pub const SIFIVE_TEST_SIZE: u64 = 0x1000;

pub fn sifive_test_request(offset: u64, value: u64) -> Option<TestRequest> {
    if offset != 0 {
        return None;
    }
    let value = value as u32;
    match value & 0xffff {
        0x5555 => Some(TestRequest::PowerOff(0)),
        0x3333 => Some(TestRequest::PowerOff(value >> 16)),
        0x7777 => Some(TestRequest::Reset),
        _ => None,
    }
}

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

    pub fn load(&mut self, offset: u64, mtime: u64) -> Option<u64> {
        Some(u64::from(match offset {
            0x00 => {
                let now = self.now(mtime);
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

    pub fn store(&mut self, offset: u64, value: u32, mtime: u64) -> Option<()> {
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

/// The eight virtio-mmio slots of `virt`, all empty for now: each answers
/// with the virtio magic and device ID 0 ("no device"), as QEMU's empty
/// slots do, so a guest probing them finds nothing.
pub const VIRTIO_BASE: u64 = 0x1000_1000;
pub const VIRTIO_SLOT_SIZE: u64 = 0x1000;
pub const VIRTIO_SLOTS: u64 = 8;
/// PLIC source of the first virtio slot.
pub const VIRTIO_FIRST_IRQ: u32 = 1;

pub fn empty_virtio_load(offset: u64) -> u64 {
    match offset {
        0x000 => 0x7472_6976, // "virt"
        0x004 => 2,           // version: modern
        0x00c => 0x554d_4551, // vendor "QEMU"
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plic_claims_highest_priority_and_respects_threshold() {
        let mut plic = Plic::new();
        plic.store(4 * 10, 4, 1);
        plic.store(4 * 11, 4, 3);
        plic.store(0x2000, 4, (1 << 10) | (1 << 11));
        plic.set_level(10, true);
        plic.set_level(11, true);
        assert!(plic.context_pending(0));
        assert!(!plic.context_pending(1), "context 1 enabled nothing");
        assert_eq!(plic.load(0x20_0004, 4), Some(11));
        assert_eq!(plic.load(0x20_0004, 4), Some(10));
        assert_eq!(plic.load(0x20_0004, 4), Some(0), "both in service");
        plic.store(0x20_0004, 4, 11);
        assert!(plic.context_pending(0), "11 is still high after completion");
        plic.store(0x20_0000, 4, 3);
        assert!(!plic.context_pending(0), "threshold 3 masks priority 3");
        assert_eq!(plic.load(0x1000, 4), Some(1 << 11));
    }

    #[test]
    fn uart_receive_interrupt_and_lsr() {
        let mut uart = Uart::new();
        assert_eq!(uart.load(5) & LSR_DR, 0);
        uart.store(1, IER_RDI);
        assert!(!uart.irq_level());
        uart.receive(b'a');
        assert!(uart.irq_level());
        assert_eq!(uart.load(2) & 0x0f, 0x04);
        assert_eq!(uart.load(5) & LSR_DR, LSR_DR);
        assert_eq!(uart.load(0), b'a');
        assert!(!uart.irq_level());
    }

    #[test]
    fn uart_transmit_interrupt_latches_until_iir_read() {
        let mut uart = Uart::new();
        assert_eq!(uart.store(0, b'x'), Some(b'x'));
        uart.store(1, IER_THRI);
        assert!(uart.irq_level());
        assert_eq!(uart.load(2) & 0x0f, 0x02);
        assert!(!uart.irq_level(), "reading IIR acknowledges THRE");
        uart.store(0, b'y');
        assert!(uart.irq_level());
    }

    #[test]
    fn uart_divisor_latch_does_not_transmit() {
        let mut uart = Uart::new();
        uart.store(3, LCR_DLAB);
        assert_eq!(uart.store(0, 3), None);
        assert_eq!(uart.load(0), 3);
        uart.store(3, 3);
        assert_eq!(uart.load(3), 3);
    }

    #[test]
    fn clint_registers_and_deadline() {
        let mut clint = Clint::new();
        let clock = GuestClock {
            insns_per_tick: 10,
            offset: 0,
        };
        clint.store(0x4000, 4, 100, 0);
        clint.store(0x4004, 4, 0, 0);
        assert_eq!(clint.mtimecmp, 100);
        assert_eq!(clint.deadline(&clock, 0), 1000);
        assert!(!clint.timer_pending(99));
        assert!(clint.timer_pending(100));
        assert_eq!(clint.load(0xbff8, 8, 1234), Some(1234));
        assert_eq!(clint.load(0xbffc, 4, 1 << 40), Some(1 << 8));
        clint.store(0, 4, 1, 0);
        assert_eq!(clint.load(0, 4, 0), Some(1));
    }

    #[test]
    fn rtc_runs_with_guest_time_and_fires_its_alarm() {
        let mut rtc = Rtc::default();
        rtc.set_wall_clock(1_700_000_000_000_000_000, 50);
        let low = rtc.load(0x00, 60).expect("TIME_LOW");
        let high = rtc.load(0x04, 1_000_000).expect("TIME_HIGH is latched");
        assert_eq!((high << 32) | low, 1_700_000_000_000_001_000);
        // The guest sets the time: high word first, then the low word.
        rtc.store(0x04, 0, 10).expect("TIME_HIGH");
        rtc.store(0x00, 5_000, 10).expect("TIME_LOW");
        assert_eq!(rtc.now(20), 6_000);
        rtc.store(0x10, 1, 20).expect("IRQ_ENABLED");
        rtc.store(0x0c, 0, 20).expect("ALARM_HIGH");
        rtc.store(0x08, 9_000, 20).expect("ALARM_LOW");
        assert_eq!(rtc.alarm_mtime(), Some(50));
        rtc.poll(49);
        assert!(!rtc.irq_level());
        rtc.poll(50);
        assert!(rtc.irq_level());
        rtc.store(0x1c, 1, 51).expect("CLEAR_INTERRUPT");
        assert!(!rtc.irq_level());
        assert_eq!(rtc.load(0x20, 0), None);
    }

    #[test]
    fn sifive_test_codes() {
        assert_eq!(
            sifive_test_request(0, 0x5555),
            Some(TestRequest::PowerOff(0))
        );
        assert_eq!(
            sifive_test_request(0, (7 << 16) | 0x3333),
            Some(TestRequest::PowerOff(7))
        );
        assert_eq!(sifive_test_request(0, 0x7777), Some(TestRequest::Reset));
        assert_eq!(sifive_test_request(0, 0x1234), None);
    }
}
