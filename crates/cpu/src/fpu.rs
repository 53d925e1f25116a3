//! IEEE 754 arithmetic for the F and D extensions, with RISC-V semantics:
//! canonical NaNs, NaN boxing of single-precision values in 64-bit
//! registers, exact accrued-exception flags and all five static rounding
//! modes. Pure functions of their operands: no global state is observable.
//!
//! Rounding and the IEEE exception flags come from `rustc_apfloat` (the
//! Rust port of LLVM's APFloat); what is RISC-V's own is done here: NaN
//! boxing, canonical NaNs, min/max, classification, and the results of
//! invalid conversions. Square root uses the host's correctly rounded sqrt
//! with an exact fused-multiply-add residual for the inexact flag and the
//! directed rounding modes.

use rustc_apfloat::ieee::{Double, Quad, Single};
use rustc_apfloat::{Float, FloatConvert, Round, Status, StatusAnd};

/// Operand/result format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fmt {
    S,
    D,
}

/// A resolved rounding mode (the CPU resolves `dyn` from `frm` and raises
/// illegal-instruction for the reserved encodings before calling in here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rm {
    Rne = 0,
    Rtz = 1,
    Rdn = 2,
    Rup = 3,
    Rmm = 4,
}

/// Bits of `fflags`.
pub mod flags {
    pub const NX: u8 = 0x01;
    pub const UF: u8 = 0x02;
    pub const OF: u8 = 0x04;
    pub const DZ: u8 = 0x08;
    pub const NV: u8 = 0x10;
}

/// Every F/D operation other than loads and stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FpOp {
    Add,
    Sub,
    Mul,
    Div,
    Sqrt,
    Min,
    Max,
    /// fmadd: a*b + c
    MAdd,
    /// fmsub: a*b - c
    MSub,
    /// fnmsub: -(a*b) + c
    NMSub,
    /// fnmadd: -(a*b) - c
    NMAdd,
    SgnJ,
    SgnJN,
    SgnJX,
    /// feq/flt/fle/fclass: result goes to an x register.
    Eq,
    Lt,
    Le,
    Class,
    /// fcvt.w/wu/l/lu.{s,d}: `a` is the FP operand, result to an x register
    /// (32-bit results sign-extended).
    CvtToW,
    CvtToWU,
    CvtToL,
    CvtToLU,
    /// fcvt.{s,d}.w/wu/l/lu: `a` is the x-register value.
    CvtFromW,
    CvtFromWU,
    CvtFromL,
    CvtFromLU,
    /// fcvt.s.d (fmt = S) and fcvt.d.s (fmt = D): `a` is in the other format.
    CvtFromOther,
    /// fmv.x.w / fmv.x.d: raw bits to an x register (w: sign-extended).
    MvToX,
    /// fmv.w.x / fmv.d.x: raw bits from an x register (w: NaN-boxed).
    MvFromX,
}

impl FpOp {
    /// True if the result is written to an integer register.
    pub fn writes_xreg(self) -> bool {
        matches!(
            self,
            FpOp::Eq
                | FpOp::Lt
                | FpOp::Le
                | FpOp::Class
                | FpOp::CvtToW
                | FpOp::CvtToWU
                | FpOp::CvtToL
                | FpOp::CvtToLU
                | FpOp::MvToX
        )
    }
}

/// Result of an operation: the 64-bit register value to write and the
/// exception flags to OR into `fflags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FpResult {
    pub value: u64,
    pub flags: u8,
}

/// Execute `op` in format `fmt`.
///
/// Operands are raw 64-bit register values: f-register bits for FP operands
/// (a single-precision operand that is not properly NaN-boxed reads as the
/// canonical NaN), x-register values for integer operands. Unused operands
/// are ignored. The result is the register value to write: NaN-boxed for
/// single-precision results in f registers, sign-extended for 32-bit
/// integer results in x registers.
pub fn execute(op: FpOp, fmt: Fmt, a: u64, b: u64, c: u64, rm: Rm) -> FpResult {
    match op {
        FpOp::MvToX => FpResult {
            value: match fmt {
                Fmt::S => a as u32 as i32 as i64 as u64,
                Fmt::D => a,
            },
            flags: 0,
        },
        FpOp::MvFromX => FpResult {
            value: match fmt {
                Fmt::S => box_s(a as u32),
                Fmt::D => a,
            },
            flags: 0,
        },
        FpOp::CvtFromOther => match fmt {
            Fmt::S => convert::<Double, Single>(a, rm, box_s_bits),
            Fmt::D => convert::<Single, Double>(u64::from(unbox_s(a)), rm, |v| v as u64),
        },
        _ => match fmt {
            Fmt::S => {
                let r = exec::<Single>(
                    op,
                    u128::from(unbox_s(a)),
                    u128::from(unbox_s(b)),
                    u128::from(unbox_s(c)),
                    a,
                    rm,
                );
                FpResult {
                    value: if r.float_result {
                        box_s(r.bits as u32)
                    } else {
                        r.bits as u64
                    },
                    flags: r.flags,
                }
            }
            Fmt::D => {
                let r = exec::<Double>(op, u128::from(a), u128::from(b), u128::from(c), a, rm);
                FpResult {
                    value: r.bits as u64,
                    flags: r.flags,
                }
            }
        },
    }
}

const CANONICAL_NAN_S: u32 = 0x7fc0_0000;

fn box_s(bits: u32) -> u64 {
    0xffff_ffff_0000_0000 | u64::from(bits)
}

fn box_s_bits(bits: u128) -> u64 {
    box_s(bits as u32)
}

/// A single-precision operand: the canonical NaN unless properly boxed.
fn unbox_s(reg: u64) -> u32 {
    if reg >> 32 == 0xffff_ffff {
        reg as u32
    } else {
        CANONICAL_NAN_S
    }
}

fn round(rm: Rm) -> Round {
    match rm {
        Rm::Rne => Round::NearestTiesToEven,
        Rm::Rtz => Round::TowardZero,
        Rm::Rdn => Round::TowardNegative,
        Rm::Rup => Round::TowardPositive,
        Rm::Rmm => Round::NearestTiesToAway,
    }
}

fn status_flags(status: Status) -> u8 {
    let mut flags = 0;
    if status.contains(Status::INVALID_OP) {
        flags |= flags::NV;
    }
    if status.contains(Status::DIV_BY_ZERO) {
        flags |= flags::DZ;
    }
    if status.contains(Status::OVERFLOW) {
        flags |= flags::OF;
    }
    if status.contains(Status::UNDERFLOW) {
        flags |= flags::UF;
    }
    if status.contains(Status::INEXACT) {
        flags |= flags::NX;
    }
    flags
}

struct Raw {
    bits: u128,
    flags: u8,
    /// The result is a float (to box) rather than an integer.
    float_result: bool,
}

/// The canonical NaN of a format.
fn canonical_nan<F: Float>() -> F {
    F::qnan(None)
}

fn float_out<F: Float>(r: StatusAnd<F>, extra: u8) -> Raw {
    let value = if r.value.is_nan() {
        canonical_nan::<F>()
    } else {
        r.value
    };
    Raw {
        bits: value.to_bits(),
        flags: status_flags(r.status) | extra,
        float_result: true,
    }
}

fn int_out(value: u64, flags: u8) -> Raw {
    Raw {
        bits: u128::from(value),
        flags,
        float_result: false,
    }
}

fn snan_flag<F: Float>(values: &[F]) -> u8 {
    if values.iter().any(|v| v.is_signaling()) {
        flags::NV
    } else {
        0
    }
}

fn exec<F: Float + FloatConvert<Quad>>(
    op: FpOp,
    a: u128,
    b: u128,
    c: u128,
    raw_a: u64,
    rm: Rm,
) -> Raw {
    let (x, y, z) = (F::from_bits(a), F::from_bits(b), F::from_bits(c));
    let r = round(rm);
    let wide = |v: F| -> Quad {
        let mut loses = false;
        v.convert(&mut loses).value
    };
    let sign_bit = 1u128 << (F::BITS - 1);
    match op {
        FpOp::Add => saturated_overflow(x.add_r(y, r), || {
            wide(x).add_r(wide(y), Round::TowardZero).value
        }),
        FpOp::Sub => saturated_overflow(x.sub_r(y, r), || {
            wide(x).sub_r(wide(y), Round::TowardZero).value
        }),
        FpOp::Mul => saturated_overflow(x.mul_r(y, r), || {
            wide(x).mul_r(wide(y), Round::TowardZero).value
        }),
        FpOp::Div => saturated_overflow(x.div_r(y, r), || {
            wide(x).div_r(wide(y), Round::TowardZero).value
        }),
        FpOp::Sqrt => sqrt::<F>(a, rm),
        FpOp::MAdd | FpOp::MSub | FpOp::NMSub | FpOp::NMAdd => {
            let (x, z) = match op {
                FpOp::MAdd => (x, z),
                FpOp::MSub => (x, -z),
                FpOp::NMSub => (-x, z),
                _ => (-x, -z),
            };
            // inf * 0 is invalid even when the addend is a quiet NaN.
            let inf_times_zero =
                (x.is_infinite() && y.is_zero()) || (x.is_zero() && y.is_infinite());
            let extra = if inf_times_zero { flags::NV } else { 0 } | snan_flag(&[x, y, z]);
            let exact = || wide(x).mul_add_r(wide(y), wide(z), Round::TowardZero).value;
            let mut out = saturated_overflow(x.mul_add_r(y, z, r), exact);
            out.flags |= extra;
            out
        }
        FpOp::SgnJ | FpOp::SgnJN | FpOp::SgnJX => {
            let sign = match op {
                FpOp::SgnJ => b & sign_bit,
                FpOp::SgnJN => !b & sign_bit,
                _ => (a ^ b) & sign_bit,
            };
            Raw {
                bits: (a & !sign_bit) | sign,
                flags: 0,
                float_result: true,
            }
        }
        FpOp::Min | FpOp::Max => {
            let flags = snan_flag(&[x, y]);
            let bits = match (x.is_nan(), y.is_nan()) {
                (true, true) => canonical_nan::<F>().to_bits(),
                (true, false) => b,
                (false, true) => a,
                _ => {
                    // -0 orders below +0.
                    let x_lt_y = x < y || (x.is_zero() && y.is_zero() && x.is_negative());
                    let pick_x = if op == FpOp::Min { x_lt_y } else { !x_lt_y };
                    if pick_x || x.bitwise_eq(y) { a } else { b }
                }
            };
            Raw {
                bits,
                flags,
                float_result: true,
            }
        }
        FpOp::Eq => int_out(u64::from(x == y), snan_flag(&[x, y])),
        FpOp::Lt | FpOp::Le => {
            let flags = if x.is_nan() || y.is_nan() {
                flags::NV
            } else {
                0
            };
            let result = if op == FpOp::Lt { x < y } else { x <= y };
            int_out(u64::from(result), flags)
        }
        FpOp::Class => int_out(classify(x), 0),
        FpOp::CvtToW | FpOp::CvtToWU | FpOp::CvtToL | FpOp::CvtToLU => to_int(op, x, r),
        FpOp::CvtFromW => float_out(F::from_i128_r(i128::from(raw_a as i32), r), 0),
        FpOp::CvtFromWU => float_out(F::from_u128_r(u128::from(raw_a as u32), r), 0),
        FpOp::CvtFromL => float_out(F::from_i128_r(i128::from(raw_a as i64), r), 0),
        FpOp::CvtFromLU => float_out(F::from_u128_r(u128::from(raw_a), r), 0),
        FpOp::CvtFromOther | FpOp::MvToX | FpOp::MvFromX => {
            unreachable!("handled before dispatch on the format")
        }
    }
}

/// APFloat reports only "inexact" when an overflowing result is rounded
/// to the largest finite number (directed rounding); IEEE 754 and RISC-V
/// also raise overflow. That case is a result of largest magnitude that is
/// inexact: then `exact` recomputes the operation in binary128 rounding
/// toward zero (which cannot overflow there) to see whether the exact value
/// reaches 2^(emax+1), the overflow threshold when rounding toward zero.
fn saturated_overflow<F: Float + FloatConvert<Quad>>(
    r: StatusAnd<F>,
    exact: impl FnOnce() -> Quad,
) -> Raw {
    let mut out = float_out(r, 0);
    if r.status.contains(Status::INEXACT)
        && !r.status.contains(Status::OVERFLOW)
        && r.value.abs().bitwise_eq(F::largest())
    {
        let threshold = Quad::from_u128(1).value.scalbn(F::MAX_EXP + 1);
        if exact().abs() >= threshold {
            out.flags |= flags::OF;
        }
    }
    out
}

/// fclass: one bit of ten.
fn classify<F: Float>(x: F) -> u64 {
    let neg = x.is_negative();
    let bit = if x.is_nan() {
        if x.is_signaling() { 8 } else { 9 }
    } else if x.is_infinite() {
        if neg { 0 } else { 7 }
    } else if x.is_zero() {
        if neg { 3 } else { 4 }
    } else if x.is_denormal() {
        if neg { 2 } else { 5 }
    } else if neg {
        1
    } else {
        6
    };
    1 << bit
}

/// fcvt to an integer, with RISC-V's results for NaN and out-of-range
/// values (the largest value of the sign, NaN counting as positive).
fn to_int<F: Float>(op: FpOp, x: F, r: Round) -> Raw {
    let (width, signed) = match op {
        FpOp::CvtToW => (32, true),
        FpOp::CvtToWU => (32, false),
        FpOp::CvtToL => (64, true),
        _ => (64, false),
    };
    let saturate = |negative: bool| -> u64 {
        match (width, signed, negative) {
            (32, true, false) => i32::MAX as i64 as u64,
            (32, true, true) => i32::MIN as i64 as u64,
            (64, true, false) => i64::MAX as u64,
            (64, true, true) => i64::MIN as u64,
            (32, false, false) => u64::MAX, // 0xffff_ffff sign-extended
            (_, false, false) => u64::MAX,
            (_, false, true) => 0,
            _ => 0,
        }
    };
    if x.is_nan() {
        return int_out(saturate(false), flags::NV);
    }
    let mut exact = false;
    let (value, status) = if signed {
        let res = x.to_i128_r(width, r, &mut exact);
        (res.value as u64, res.status)
    } else {
        let res = x.to_u128_r(width, r, &mut exact);
        (res.value as u64, res.status)
    };
    if status.contains(Status::INVALID_OP) {
        return int_out(saturate(x.is_negative()), flags::NV);
    }
    let value = if width == 32 {
        value as u32 as i32 as i64 as u64
    } else {
        value
    };
    int_out(value, status_flags(status))
}

/// fcvt between formats; `pack` turns the result bits into a register.
fn convert<S, D>(a: u64, rm: Rm, pack: fn(u128) -> u64) -> FpResult
where
    S: Float + FloatConvert<D> + FloatConvert<Quad>,
    D: Float + FloatConvert<Quad>,
{
    let x = S::from_bits(u128::from(a));
    let mut loses_info = false;
    let r: StatusAnd<D> = x.convert_r(round(rm), &mut loses_info);
    let exact = || -> Quad {
        let mut loses = false;
        x.convert(&mut loses).value
    };
    let mut raw = saturated_overflow(r, exact);
    raw.flags |= snan_flag(&[x]);
    FpResult {
        value: pack(raw.bits),
        flags: raw.flags,
    }
}

/// Square root, correctly rounded in every mode.
fn sqrt<F: Float>(a: u128, rm: Rm) -> Raw {
    let x = F::from_bits(a);
    if x.is_nan() {
        return float_out(
            StatusAnd {
                status: Status::OK,
                value: x,
            },
            snan_flag(&[x]),
        );
    }
    if x.is_negative() && !x.is_zero() {
        return float_out(
            StatusAnd {
                status: Status::INVALID_OP,
                value: canonical_nan::<F>(),
            },
            0,
        );
    }
    if x.is_zero() || x.is_infinite() {
        return Raw {
            bits: a,
            flags: 0,
            float_result: true,
        };
    }
    // Host sqrt is correctly rounded to nearest; the sign of the exact
    // residual r*r - x tells which side of the true root r lies on.
    let (root, residual_sign) = if F::BITS == 32 {
        let v = f32::from_bits(a as u32);
        let r = v.sqrt();
        let rr = f64::from(r) * f64::from(r) - f64::from(v); // exact in f64
        (u128::from(r.to_bits()), rr.partial_cmp(&0.0))
    } else {
        let v = f64::from_bits(a as u64);
        let r = v.sqrt();
        let rr = r.mul_add(r, -v);
        (u128::from(r.to_bits()), rr.partial_cmp(&0.0))
    };
    use std::cmp::Ordering::*;
    let Some(order) = residual_sign else {
        return float_out(
            StatusAnd {
                status: Status::INVALID_OP,
                value: canonical_nan::<F>(),
            },
            0,
        );
    };
    if order == Equal {
        return Raw {
            bits: root,
            flags: 0,
            float_result: true,
        };
    }
    // r*r > x: the true root is below r; r*r < x: above. Roots of positive
    // numbers are positive and never halfway between two floats, so the
    // nearest modes agree with the host.
    let bits = match (rm, order) {
        (Rm::Rtz | Rm::Rdn, Greater) => root - 1,
        (Rm::Rup, Less) => root + 1,
        _ => root,
    };
    Raw {
        bits,
        flags: flags::NX,
        float_result: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(v: f32) -> u64 {
        box_s(v.to_bits())
    }

    #[test]
    fn flags_of_basic_operations() {
        let r = execute(
            FpOp::Div,
            Fmt::D,
            1f64.to_bits(),
            0f64.to_bits(),
            0,
            Rm::Rne,
        );
        assert_eq!((r.value, r.flags), (f64::INFINITY.to_bits(), flags::DZ));
        let r = execute(FpOp::Add, Fmt::S, s(1.0), s(1e-10), 0, Rm::Rne);
        assert_eq!((r.value, r.flags), (s(1.0), flags::NX));
        let r = execute(FpOp::Mul, Fmt::S, s(f32::MAX), s(2.0), 0, Rm::Rtz);
        assert_eq!((r.value, r.flags), (s(f32::MAX), flags::OF | flags::NX));
        let r = execute(
            FpOp::Sub,
            Fmt::D,
            f64::INFINITY.to_bits(),
            f64::INFINITY.to_bits(),
            0,
            Rm::Rne,
        );
        assert_eq!((r.value, r.flags), (0x7ff8_0000_0000_0000, flags::NV));
        let r = execute(FpOp::Mul, Fmt::S, s(1.5e-38), s(0.25), 0, Rm::Rne);
        assert_eq!(r.flags, flags::UF | flags::NX);
    }

    #[test]
    fn nan_boxing() {
        // An improperly boxed single is the canonical NaN; results are boxed.
        let r = execute(FpOp::Add, Fmt::S, 0x3f80_0000, s(1.0), 0, Rm::Rne);
        assert_eq!((r.value, r.flags), (box_s(CANONICAL_NAN_S), 0));
        let r = execute(FpOp::SgnJ, Fmt::S, 0x3f80_0000, s(1.0), 0, Rm::Rne);
        assert_eq!(r.value, box_s(CANONICAL_NAN_S));
        let r = execute(FpOp::MvToX, Fmt::S, 0x1234_5678_bf80_0000, 0, 0, Rm::Rne);
        assert_eq!(r.value, 0xffff_ffff_bf80_0000);
    }

    #[test]
    fn min_max_zero_and_nan() {
        let (pz, nz) = (0f64.to_bits(), (-0f64).to_bits());
        assert_eq!(execute(FpOp::Min, Fmt::D, pz, nz, 0, Rm::Rne).value, nz);
        assert_eq!(execute(FpOp::Max, Fmt::D, nz, pz, 0, Rm::Rne).value, pz);
        let snan = 0x7ff0_0000_0000_0001;
        let r = execute(FpOp::Min, Fmt::D, snan, 2f64.to_bits(), 0, Rm::Rne);
        assert_eq!((r.value, r.flags), (2f64.to_bits(), flags::NV));
        let r = execute(FpOp::Max, Fmt::D, snan, snan, 0, Rm::Rne);
        assert_eq!(r.value, 0x7ff8_0000_0000_0000);
    }

    #[test]
    fn conversions_saturate_like_riscv() {
        let nan = f64::NAN.to_bits();
        assert_eq!(
            execute(FpOp::CvtToW, Fmt::D, nan, 0, 0, Rm::Rne).value,
            0x7fff_ffff
        );
        assert_eq!(
            execute(FpOp::CvtToWU, Fmt::D, (-1f64).to_bits(), 0, 0, Rm::Rne),
            FpResult {
                value: 0,
                flags: flags::NV
            }
        );
        assert_eq!(
            execute(FpOp::CvtToWU, Fmt::D, 4e9f64.to_bits(), 0, 0, Rm::Rne).value,
            0xffff_ffff_ee6b_2800
        );
        assert_eq!(
            execute(FpOp::CvtToL, Fmt::D, (-1e300f64).to_bits(), 0, 0, Rm::Rne),
            FpResult {
                value: i64::MIN as u64,
                flags: flags::NV
            }
        );
        let r = execute(FpOp::CvtToW, Fmt::D, 2.5f64.to_bits(), 0, 0, Rm::Rmm);
        assert_eq!((r.value, r.flags), (3, flags::NX));
        let r = execute(FpOp::CvtToW, Fmt::D, 2.5f64.to_bits(), 0, 0, Rm::Rne);
        assert_eq!(r.value, 2);
        let r = execute(FpOp::CvtToWU, Fmt::S, s(-0.5), 0, 0, Rm::Rtz);
        assert_eq!((r.value, r.flags), (0, flags::NX));
    }

    #[test]
    fn classes() {
        let cases: [(f64, u64); 8] = [
            (f64::NEG_INFINITY, 1 << 0),
            (-1.0, 1 << 1),
            (-5e-324, 1 << 2),
            (-0.0, 1 << 3),
            (0.0, 1 << 4),
            (5e-324, 1 << 5),
            (1.0, 1 << 6),
            (f64::INFINITY, 1 << 7),
        ];
        for (v, class) in cases {
            assert_eq!(
                execute(FpOp::Class, Fmt::D, v.to_bits(), 0, 0, Rm::Rne).value,
                class,
                "{v}"
            );
        }
        assert_eq!(
            execute(FpOp::Class, Fmt::D, 0x7ff0_0000_0000_0001, 0, 0, Rm::Rne).value,
            1 << 8
        );
        assert_eq!(
            execute(FpOp::Class, Fmt::D, f64::NAN.to_bits(), 0, 0, Rm::Rne).value,
            1 << 9
        );
    }

    #[test]
    fn narrowing_overflow_raises_overflow_in_every_mode() {
        let big = 1e300f64.to_bits();
        let r = execute(FpOp::CvtFromOther, Fmt::S, big, 0, 0, Rm::Rtz);
        assert_eq!((r.value, r.flags), (s(f32::MAX), flags::OF | flags::NX));
        let r = execute(FpOp::CvtFromOther, Fmt::S, big, 0, 0, Rm::Rne);
        assert_eq!(
            (r.value, r.flags),
            (s(f32::INFINITY), flags::OF | flags::NX)
        );
        // Just above f32::MAX but below 2^128: rounding toward zero gives
        // MAX without overflow.
        let just_above = (f64::from(f32::MAX) * (1.0 + 2f64.powi(-30))).to_bits();
        let r = execute(FpOp::CvtFromOther, Fmt::S, just_above, 0, 0, Rm::Rtz);
        assert_eq!((r.value, r.flags), (s(f32::MAX), flags::NX));
    }

    #[test]
    fn fma_invalid_with_quiet_nan_addend() {
        let r = execute(
            FpOp::MAdd,
            Fmt::D,
            f64::INFINITY.to_bits(),
            0f64.to_bits(),
            f64::NAN.to_bits(),
            Rm::Rne,
        );
        assert_eq!((r.value, r.flags), (0x7ff8_0000_0000_0000, flags::NV));
    }

    fn exact_or_nan(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    proptest! {
        #[test]
        fn round_to_nearest_matches_the_host(a in any::<u64>(), b in any::<u64>(), c in any::<u64>()) {
            let (x, y, z) = (f64::from_bits(a), f64::from_bits(b), f64::from_bits(c));
            let cases = [
                (FpOp::Add, x + y), (FpOp::Sub, x - y), (FpOp::Mul, x * y),
                (FpOp::Div, x / y), (FpOp::MAdd, x.mul_add(y, z)), (FpOp::Sqrt, x.sqrt()),
            ];
            for (op, want) in cases {
                let got = f64::from_bits(execute(op, Fmt::D, a, b, c, Rm::Rne).value);
                prop_assert!(exact_or_nan(got, want), "{op:?} {x:e} {y:e} {z:e}: {got:e} != {want:e}");
            }
            let (x, y) = (f32::from_bits(a as u32), f32::from_bits(b as u32));
            let got = execute(FpOp::Mul, Fmt::S, box_s(a as u32), box_s(b as u32), 0, Rm::Rne).value;
            let want = x * y;
            prop_assert!(got as u32 == want.to_bits() || (want.is_nan() && got as u32 == CANONICAL_NAN_S));
        }

        #[test]
        fn directed_sqrt_brackets_the_root(a in 1u64..0x7ff0_0000_0000_0000) {
            let down = execute(FpOp::Sqrt, Fmt::D, a, 0, 0, Rm::Rdn);
            let up = execute(FpOp::Sqrt, Fmt::D, a, 0, 0, Rm::Rup);
            let near = execute(FpOp::Sqrt, Fmt::D, a, 0, 0, Rm::Rne);
            if near.flags == 0 {
                prop_assert_eq!(down.value, up.value);
            } else {
                prop_assert_eq!(up.value, down.value + 1);
                prop_assert!(near.value == up.value || near.value == down.value);
            }
        }
    }
}
