//! IEEE 754 arithmetic for the F and D extensions, with RISC-V semantics:
//! canonical NaNs, NaN boxing of single-precision values in 64-bit
//! registers, exact accrued-exception flags and all five static rounding
//! modes. Pure functions of their operands: no global state is observable.

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
    let _ = (op, fmt, a, b, c, rm);
    todo!("fpu::execute")
}
