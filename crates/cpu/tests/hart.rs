//! The hart through its public interface, on hand-encoded programs: the
//! properties the guest programs cannot check against QEMU (which does not
//! follow the spec for `minstret` writes) or that need the host's view.

use ftvm_cpu::{Engine, Exit, Hart, HartConfig};
use proptest::prelude::*;

mod encode;
use encode::NoDevices;

const BASE: u64 = 0x8000_0000;

fn hart() -> Hart {
    Hart::new(HartConfig {
        hart_id: 0,
        ram_base: BASE,
        ram_size: 1 << 20,
        insns_per_tick: 10,
    })
}

fn load_program(hart: &mut Hart, words: &[u32]) {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    hart.ram_mut().write(BASE, &bytes).expect("program fits");
}

// A few encoders, enough for these programs.
fn i_type(opcode: u32, rd: u32, f3: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | opcode
}
fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(0x13, rd, 0, rs1, imm)
}
fn csrrw(rd: u32, csr: u32, rs1: u32) -> u32 {
    (csr << 20) | (rs1 << 15) | (1 << 12) | (rd << 7) | 0x73
}
fn csrrs(rd: u32, csr: u32, rs1: u32) -> u32 {
    (csr << 20) | (rs1 << 15) | (2 << 12) | (rd << 7) | 0x73
}
fn sw(rs2: u32, rs1: u32, imm: i32) -> u32 {
    let imm = imm as u32;
    ((imm >> 5) << 25) | (rs2 << 20) | (rs1 << 15) | (2 << 12) | ((imm & 31) << 7) | 0x23
}
fn auipc(rd: u32, imm: u32) -> u32 {
    (imm << 12) | (rd << 7) | 0x17
}
fn jal(rd: u32, offset: i32) -> u32 {
    encode::j_type(offset, rd)
}
const FENCE_I: u32 = 0x0000_100f;
const WFI: u32 = 0x1050_0073;
const MINSTRET: u32 = 0xb02;
const MCYCLE: u32 = 0xb00;

#[test]
fn a_minstret_write_replaces_that_instructions_own_increment() {
    let mut h = hart();
    load_program(
        &mut h,
        &[
            addi(5, 0, 100),
            csrrw(0, MINSTRET, 5),  // minstret = 100
            csrrs(10, MINSTRET, 0), // reads 100: the write was not followed by +1
            csrrs(11, MINSTRET, 0), // 101
            csrrw(0, MCYCLE, 0),
            csrrs(12, MCYCLE, 0), // 0
            WFI,
        ],
    );
    assert_eq!(h.run(&mut NoDevices, 100), Exit::Wfi);
    assert_eq!((h.xreg(10), h.xreg(11), h.xreg(12)), (100, 101, 0));
    assert_eq!(h.icount(), 7, "icount itself is never written by the guest");
}

#[test]
fn run_stops_at_exactly_the_limit_and_resumes() {
    let mut h = hart();
    // An endless loop of increments: addi a0, a0, 1; jal x0, -4
    load_program(&mut h, &[addi(10, 10, 1), jal(0, -4)]);
    assert_eq!(h.run(&mut NoDevices, 1001), Exit::Limit);
    assert_eq!(h.icount(), 1001);
    assert_eq!(h.xreg(10), 501);
    assert_eq!(
        h.run(&mut NoDevices, 1001),
        Exit::Limit,
        "no progress at the limit"
    );
    assert_eq!(h.icount(), 1001);
    assert_eq!(h.run(&mut NoDevices, 2000), Exit::Limit);
    assert_eq!(h.xreg(10), 1000);
}

#[test]
fn state_round_trip_reproduces_execution() {
    let mut a = hart();
    load_program(
        &mut a,
        &[addi(10, 10, 3), csrrs(11, MINSTRET, 0), jal(0, -8)],
    );
    a.run(&mut NoDevices, 777);
    let state = a.state();
    let ram = a.ram().bytes().to_vec();
    let mut b = hart();
    b.ram_mut().restore_bytes(&ram).expect("same size");
    b.restore(&state);
    a.run(&mut NoDevices, 5000);
    b.run(&mut NoDevices, 5000);
    assert_eq!(a.state(), b.state());
    assert_eq!(a.ram().bytes(), b.ram().bytes());
}

/// `lui rd, hi; addi rd, rd, lo` loading `value` (a 32-bit constant).
fn li32(rd: u32, value: u32) -> [u32; 2] {
    let low = ((value & 0xfff) as i32) << 20 >> 20; // sign-extended low 12 bits
    let high = value.wrapping_sub(low as u32) >> 12;
    [(high << 12) | (rd << 7) | 0x37, addi(rd, rd, low)]
}

#[test]
fn stores_over_executed_code_take_effect_after_fence_i() {
    let mut h = hart();
    let patched = addi(10, 0, 42);
    let [lui, addi_low] = li32(6, patched);
    let program = [
        0x0000_0013,    // 0: nop (the first fetch on a page is not cached)
        addi(10, 0, 1), // 4: the slot, first run: a0 = 1, now cached decoded
        WFI,            // 8
        auipc(5, 0),    // 12: t0 = BASE + 12
        lui,            // 16
        addi_low,       // 20: t1 = `addi a0, x0, 42`
        sw(6, 5, -8),   // 24: overwrite the slot
        FENCE_I,        // 28
        jal(0, -28),    // 32: back to the slot
    ];
    load_program(&mut h, &program);
    assert_eq!(h.run(&mut NoDevices, 100), Exit::Wfi);
    assert_eq!(h.xreg(10), 1, "the slot executed once");
    h.set_pc(BASE + 12);
    assert_eq!(h.run(&mut NoDevices, 200), Exit::Wfi);
    assert_eq!(
        h.xreg(10),
        42,
        "the store over executed code must take effect"
    );
    // A host-side write over code (loader, DMA) is seen as well.
    h.ram_mut()
        .write(BASE + 4, &addi(10, 0, 7).to_le_bytes())
        .expect("in RAM");
    h.set_pc(BASE);
    assert_eq!(h.run(&mut NoDevices, 300), Exit::Wfi);
    assert_eq!(h.xreg(10), 7);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Any instruction word, executed in M, S or U mode (with address
    /// translation off), either executes or traps precisely to the handler;
    /// nothing panics.
    #[test]
    fn any_word_executes_or_traps(
        word in any::<u32>(),
        next in any::<u32>(),
        mode in prop::sample::select(vec![0u64, 1, 3]),
    ) {
        let mut h = hart();
        let program = [
            auipc(5, 0),           // 0: t0 = BASE
            addi(6, 5, 64),        // 4
            csrrw(0, 0x305, 6),    // 8: mtvec = handler
            addi(7, 5, 32),        // 12
            csrrw(0, 0x341, 7),    // 16: mepc = the word under test
            csrrw(0, 0x300, 8),    // 20: mstatus = s0 (MPP set by the host)
            0x3020_0073,           // 24: mret
            0x0000_0013,           // 28
            word,                  // 32: under test
            next,                  // 36
            WFI, WFI, WFI, WFI, WFI, WFI,
            WFI, WFI, WFI, WFI,    // 40..80: handler at 64 and a landing pad
        ];
        load_program(&mut h, &program);
        h.set_xreg(8, mode << 11);
        let _ = h.run(&mut NoDevices, 40);
        prop_assert!(h.icount() >= 8, "the prologue ran");
        let mcause = h.csr(0x342).unwrap_or(0);
        prop_assert!(mcause < 16, "only synchronous exceptions can occur: {mcause}");
    }
}

/// Privileged spec (mip): a csrrs on mip reads SEIP as the OR of the
/// software bit and the external line, but must not latch the line into
/// the software bit. OpenSBI's `csr_set(mip, STIP)` racing a virtio
/// interrupt once left SEIP stuck on, and Linux in an interrupt storm.
#[test]
fn csrrs_on_mip_does_not_latch_the_external_seip_line() {
    use ftvm_cpu::irq;
    let mut hart = hart();
    // li t0, STIP; csrrs t1, mip, t0
    load_program(&mut hart, &[addi(5, 0, 0x20), csrrs(6, 0x344, 5)]);
    hart.set_pc(BASE);
    hart.set_irq_lines(irq::BOARD_DRIVEN, irq::SEIP);
    assert_eq!(hart.run(&mut NoDevices, 2), Exit::Limit);
    assert_eq!(hart.xreg(6) & irq::SEIP, irq::SEIP, "csrrs reads the line");
    hart.set_irq_lines(irq::BOARD_DRIVEN, 0);
    let mip = hart.csr(0x344).expect("mip");
    assert_eq!(mip & irq::STIP, irq::STIP, "the written bit is set");
    assert_eq!(mip & irq::SEIP, 0, "the line was not latched");
}

/// Sstc: the supervisor timer interrupt is taken exactly at the icount at
/// which `time` reaches `stimecmp`, whatever engine runs the code and
/// however the host cuts the run into slices; a replayed backup depends on
/// it.
#[test]
fn the_sstc_timer_interrupts_at_exactly_its_deadline() {
    const STIMECMP: u64 = 50; // time = icount / 10: due at icount 500
    let program = [
        csrrw(0, 0x30a, 1), // menvcfg = STCE
        csrrw(0, 0x14d, 2), // stimecmp
        csrrw(0, 0x305, 4), // mtvec = handler
        csrrw(0, 0x304, 3), // mie = STIE
        csrrs(0, 0x300, 6), // mstatus.MIE
        addi(10, 10, 1),    // loop: count
        jal(0, -4),         //       forever
        csrrw(0, 0x304, 0), // handler: mie = 0, so that WFI stops the run
        WFI,
    ];
    for engine in [Engine::Interpreter, Engine::Translator] {
        for slice in [7u64, 64, 1000] {
            let mut h = hart();
            h.set_engine(engine).expect("engine available");
            h.set_translation_threshold(0);
            load_program(&mut h, &program);
            h.set_xreg(1, 1 << 63);
            h.set_xreg(2, STIMECMP);
            h.set_xreg(3, 1 << 5);
            h.set_xreg(4, BASE + 7 * 4);
            h.set_xreg(6, 8);
            let exit = loop {
                match h.run(&mut NoDevices, h.icount() + slice) {
                    Exit::Limit if h.icount() < 10_000 => continue,
                    other => break other,
                }
            };
            let what = format!("{engine:?}, slices of {slice}");
            assert_eq!(exit, Exit::Wfi, "{what}");
            assert_eq!(h.icount(), 500 + 2, "{what}: taken at icount 500");
            assert_eq!(h.csr(0x342), Some(1 << 63 | 5), "{what}: mcause");
            // Icount 500 is the 248th loop's jal: 495 loop instructions ran.
            assert_eq!(h.csr(0x341), Some(BASE + 6 * 4), "{what}: mepc");
            assert_eq!(h.xreg(10), 248, "{what}");
        }
    }
}
