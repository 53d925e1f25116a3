use super::{BusCtx, MmioDevice};

/// What the guest asks of sifive-test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestRequest {
    /// 0x5555 (code 0) or `(code << 16) | 0x3333`.
    PowerOff(u32),
    Reset,
}

/// sifive-test: the guest's power-off and reset switch. It has no state;
/// a request is an effect of the store for the machine to act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SifiveTest;

impl SifiveTest {
    pub const BASE: u64 = 0x10_0000;
    pub const SIZE: u64 = 0x1000;

    fn request(offset: u64, value: u64) -> Option<TestRequest> {
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
}

/// Any size goes; reads give 0 and writes of other values do nothing.
impl MmioDevice for SifiveTest {
    fn window(&self) -> (u64, u64) {
        (Self::BASE, Self::SIZE)
    }

    fn load(&mut self, _offset: u64, _size: u8, _ctx: &mut BusCtx) -> Option<u64> {
        Some(0)
    }

    fn store(&mut self, offset: u64, _size: u8, value: u64, ctx: &mut BusCtx) -> Option<()> {
        if let Some(request) = Self::request(offset, value) {
            ctx.request(request);
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sifive_test_codes() {
        assert_eq!(
            SifiveTest::request(0, 0x5555),
            Some(TestRequest::PowerOff(0))
        );
        assert_eq!(
            SifiveTest::request(0, (7 << 16) | 0x3333),
            Some(TestRequest::PowerOff(7))
        );
        assert_eq!(SifiveTest::request(0, 0x7777), Some(TestRequest::Reset));
        assert_eq!(SifiveTest::request(0, 0x1234), None);
    }

    #[test]
    fn a_later_unknown_value_keeps_the_request() {
        let ctx = &mut BusCtx::at_mtime(0);
        SifiveTest.store(0, 4, 0x5555, ctx);
        SifiveTest.store(0, 4, 0x1234, ctx);
        assert_eq!(ctx.effects.test_request, Some(TestRequest::PowerOff(0)));
    }
}
