//! RISC-V instruction encoders, a bus without devices and a hart to run
//! them on, shared by the hart's integration tests (each test binary uses
//! a part of them).
#![allow(dead_code)]

use ftvm_cpu::{Bus, BusFault, Engine, Hart, HartConfig};

/// A hart with `ram_size` bytes of RAM at `ram_base` on `engine`, which
/// translates a block from its first run (so short tests exercise the
/// translator).
pub fn new_hart(engine: Engine, ram_base: u64, ram_size: u64) -> Hart {
    let mut h = Hart::new(HartConfig {
        hart_id: 0,
        ram_base,
        ram_size,
        insns_per_tick: 10,
    });
    h.set_engine(engine).expect("engine available");
    h.set_translation_threshold(0);
    h
}

/// No devices: every MMIO access faults.
pub struct NoDevices;

impl Bus for NoDevices {
    fn load(&mut self, paddr: u64, _: u8, _: u64) -> Result<u64, BusFault> {
        Err(BusFault { addr: paddr })
    }
    fn store(&mut self, paddr: u64, _: u8, _: u64, _: u64) -> Result<(), BusFault> {
        Err(BusFault { addr: paddr })
    }
}

pub fn r_type(f7: u32, rs2: u32, rs1: u32, f3: u32, rd: u32, opcode: u32) -> u32 {
    (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | opcode
}
pub fn i_type(imm: i32, rs1: u32, f3: u32, rd: u32, opcode: u32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | opcode
}
pub fn s_type(imm: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let imm = imm as u32 & 0xfff;
    ((imm >> 5) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 31) << 7) | 0x23
}
pub fn b_type(offset: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let o = offset as u32;
    (((o >> 12) & 1) << 31)
        | (((o >> 5) & 0x3f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | (((o >> 1) & 0xf) << 8)
        | (((o >> 11) & 1) << 7)
        | 0x63
}
pub fn j_type(offset: i32, rd: u32) -> u32 {
    let o = offset as u32;
    (((o >> 20) & 1) << 31)
        | (((o >> 1) & 0x3ff) << 21)
        | (((o >> 11) & 1) << 20)
        | (((o >> 12) & 0xff) << 12)
        | (rd << 7)
        | 0x6f
}

/// `default` proptest cases, or as many as `PROPTEST_CASES` says (a
/// longer run of the differential tests: `PROPTEST_CASES=20000`).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
