use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{BusCtx, MmioDevice};

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

    fn read(&mut self, offset: u64) -> u8 {
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
    fn write(&mut self, offset: u64, value: u8) -> Option<u8> {
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

/// Byte registers only (the device tree gives no `reg-io-width`): wider
/// accesses fault.
impl MmioDevice for Uart {
    fn window(&self) -> (u64, u64) {
        (Self::BASE, Self::SIZE)
    }

    fn load(&mut self, offset: u64, size: u8, _ctx: &mut BusCtx) -> Option<u64> {
        (size == 1).then(|| u64::from(self.read(offset)))
    }

    fn store(&mut self, offset: u64, size: u8, value: u64, ctx: &mut BusCtx) -> Option<()> {
        if size != 1 {
            return None;
        }
        if let Some(byte) = self.write(offset, value as u8) {
            ctx.transmit(byte);
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uart_receive_interrupt_and_lsr() {
        let mut uart = Uart::new();
        assert_eq!(uart.read(5) & LSR_DR, 0);
        uart.write(1, IER_RDI);
        assert!(!uart.irq_level());
        uart.receive(b'a');
        assert!(uart.irq_level());
        assert_eq!(uart.read(2) & 0x0f, 0x04);
        assert_eq!(uart.read(5) & LSR_DR, LSR_DR);
        assert_eq!(uart.read(0), b'a');
        assert!(!uart.irq_level());
    }

    #[test]
    fn uart_transmit_interrupt_latches_until_iir_read() {
        let mut uart = Uart::new();
        assert_eq!(uart.write(0, b'x'), Some(b'x'));
        uart.write(1, IER_THRI);
        assert!(uart.irq_level());
        assert_eq!(uart.read(2) & 0x0f, 0x02);
        assert!(!uart.irq_level(), "reading IIR acknowledges THRE");
        uart.write(0, b'y');
        assert!(uart.irq_level());
    }

    #[test]
    fn uart_divisor_latch_does_not_transmit() {
        let mut uart = Uart::new();
        uart.write(3, LCR_DLAB);
        assert_eq!(uart.write(0, 3), None);
        assert_eq!(uart.read(0), 3);
        uart.write(3, 3);
        assert_eq!(uart.read(3), 3);
    }

    #[test]
    fn bytes_stored_to_thr_reach_the_console_and_wide_accesses_fault() {
        let mut uart = Uart::new();
        let ctx = &mut BusCtx::at_mtime(0);
        assert_eq!(uart.store(0, 1, u64::from(b'o'), ctx), Some(()));
        assert_eq!(uart.store(0, 1, u64::from(b'k'), ctx), Some(()));
        assert_eq!(ctx.effects.console, b"ok");
        assert_eq!(uart.store(0, 4, u64::from(b'!'), ctx), None);
        assert_eq!(uart.load(5, 2, ctx), None);
        assert_eq!(ctx.effects.console, b"ok");
    }
}
