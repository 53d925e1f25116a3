//! The interpreter and the block translator are interchangeable: random
//! programs (integer, multiply/divide, loads and stores in and out of RAM,
//! misaligned and page-crossing accesses, stores over the program's own
//! code, forward branches, arbitrary words) end in bit-identical states on
//! both, with or without Sv39 paging (under any ASID), with or without an
//! Sstc timer interrupt falling anywhere in the run, however the run is cut
//! into chunks. Programs on a few registers, looping and leaving their
//! blocks in the middle, and others on every aliasing of operands, check
//! the translator's keeping of guest registers in host registers.

use ftvm_cpu::{Bus, BusFault, Engine, Exit, Hart};
use proptest::prelude::*;

mod encode;
use encode::{b_type, i_type, j_type, new_hart, r_type, s_type};

const BASE: u64 = 0x8000_0000;
/// Where the program under test starts (unless its setup says otherwise);
/// `DATA` is what x31 points to.
const CODE: u64 = BASE + 0x1000;
const DATA: u64 = BASE + 0x8000;
const WFI: u32 = 0x1050_0073;

/// A device that answers loads with a function of the address and
/// remembers stores, so MMIO paths are exercised too.
#[derive(Default, Debug, PartialEq)]
struct Recorder {
    stores: Vec<(u64, u8, u64, u64)>,
}

impl Bus for Recorder {
    fn load(&mut self, paddr: u64, _: u8, _: u64) -> Result<u64, BusFault> {
        if (0x1000_0000..0x1000_1000).contains(&paddr) {
            Ok(paddr.wrapping_mul(0x9e37_79b9))
        } else {
            Err(BusFault { addr: paddr })
        }
    }
    fn store(&mut self, paddr: u64, size: u8, value: u64, icount: u64) -> Result<(), BusFault> {
        if (0x1000_0000..0x1000_1000).contains(&paddr) {
            self.stores.push((paddr, size, value, icount));
            Ok(())
        } else {
            Err(BusFault { addr: paddr })
        }
    }
}

fn csrrw(csr: u32, rs1: u32) -> u32 {
    (csr << 20) | (rs1 << 15) | (1 << 12) | 0x73
}

/// One random instruction at word index `at` of a body of `len` words,
/// writing registers from `rd` and reading any register from `reg`.
/// Destinations never include x26 (the repeat count) or x27..x31 (set up
/// for the prologue; x30/x31 are the code and data pointers).
fn instruction(
    at: usize,
    len: usize,
    rd: BoxedStrategy<u32>,
    reg: BoxedStrategy<u32>,
) -> impl Strategy<Value = u32> {
    let remaining = (len - at) as i32;
    prop_oneof![
        // OP and OP-32, every funct7/funct3 the decoder knows (and some it
        // does not).
        (
            prop::sample::select(vec![0u32, 1, 0x20]),
            reg.clone(),
            reg.clone(),
            0u32..8,
            rd.clone(),
            prop::sample::select(vec![0x33u32, 0x3b])
        )
            .prop_map(|(f7, rs2, rs1, f3, rd, op)| r_type(f7, rs2, rs1, f3, rd, op)),
        // OP-IMM and OP-IMM-32, including shifts with their funct bits.
        (
            any::<i16>(),
            reg.clone(),
            0u32..8,
            rd.clone(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(imm, rs1, f3, rd, wide, arith)| {
                let mut imm = i32::from(imm) & 0xfff;
                if f3 == 1 || f3 == 5 {
                    imm &= if wide { 63 } else { 31 };
                    if arith {
                        imm |= 0x400;
                    }
                }
                i_type(imm, rs1, f3, rd, if wide { 0x13 } else { 0x1b })
            }),
        // Loads and stores around the data pointer (some misaligned, some
        // crossing a page), or the code (stores over the program itself),
        // or through any register (mostly faults, sometimes MMIO).
        (
            // Around DATA, and close to the page boundaries at DATA and
            // DATA + 4096 (where paging makes RAM non-contiguous).
            prop_oneof![-2048i32..2048, -9i32..9, 4087i32..4105],
            prop::sample::select(vec![31u32, 31, 31, 30]),
            0u32..7,
            rd.clone(),
            reg.clone(),
            any::<bool>()
        )
            .prop_map(|(offset, base, f3, rd, rs2, store)| {
                let offset = if base == 30 {
                    offset.rem_euclid(256)
                } else {
                    offset
                };
                if store {
                    s_type(offset, rs2, base, f3 & 3)
                } else {
                    i_type(offset, base, f3, rd, 0x03)
                }
            }),
        (
            -2048i32..2048,
            reg.clone(),
            0u32..7,
            rd.clone(),
            reg.clone(),
            any::<bool>()
        )
            .prop_map(|(offset, base, f3, rd, rs2, store)| if store {
                s_type(offset, rs2, base, f3 & 3)
            } else {
                i_type(offset, base, f3, rd, 0x03)
            }),
        // Forward branches within the body (or just past it).
        (
            1..=remaining.min(8),
            reg.clone(),
            reg.clone(),
            prop::sample::select(vec![0u32, 1, 4, 5, 6, 7])
        )
            .prop_map(|(words, rs1, rs2, f3)| b_type(words * 4, rs2, rs1, f3)),
        // lui, auipc, and forward jal / jalr through a register.
        (any::<u32>(), rd.clone(), 0u32..3).prop_map(|(imm, rd, kind)| match kind {
            0 => (imm & 0xffff_f000) | (rd << 7) | 0x37,
            1 => (imm & 0xffff_f000) | (rd << 7) | 0x17,
            _ => i_type(8, 30, 0, rd, 0x67),
        }),
        // Anything at all.
        any::<u32>(),
    ]
}

fn program() -> impl Strategy<Value = Vec<u32>> {
    (1usize..48).prop_flat_map(|len| {
        (0..len)
            .map(|at| instruction(at, len, (0u32..26).boxed(), (0u32..32).boxed()))
            .collect::<Vec<_>>()
    })
}

/// Integer operations only (and a division or two, which bail), on three
/// registers and x0: every way for a destination to alias a source, or
/// both sources each other, whether the registers are held in host
/// registers or not.
fn aliasing_program() -> impl Strategy<Value = Vec<u32>> {
    const OPS: [(u32, u32, u32); 23] = [
        // (funct7, funct3, opcode)
        (0, 0, 0x33),
        (0x20, 0, 0x33),
        (0, 1, 0x33),
        (0, 2, 0x33),
        (0, 3, 0x33),
        (0, 4, 0x33),
        (0, 5, 0x33),
        (0x20, 5, 0x33),
        (0, 6, 0x33),
        (0, 7, 0x33),
        (1, 0, 0x33),
        (1, 1, 0x33),
        (1, 2, 0x33),
        (1, 3, 0x33),
        (1, 4, 0x33),
        (1, 7, 0x33),
        (0, 0, 0x3b),
        (0x20, 0, 0x3b),
        (0, 1, 0x3b),
        (0, 5, 0x3b),
        (0x20, 5, 0x3b),
        (1, 0, 0x3b),
        (1, 5, 0x3b),
    ];
    let reg = || prop::sample::select(vec![0u32, 5, 6, 7]);
    let rd = || prop::sample::select(vec![5u32, 6, 7]);
    let op = prop_oneof![
        (prop::sample::select(OPS.to_vec()), rd(), reg(), reg())
            .prop_map(|((f7, f3, opcode), rd, rs1, rs2)| r_type(f7, rs2, rs1, f3, rd, opcode)),
        (
            0u32..8,
            any::<bool>(),
            any::<i16>(),
            any::<bool>(),
            rd(),
            reg()
        )
            .prop_map(|(f3, wide, imm, arith, rd, rs1)| {
                let mut imm = i32::from(imm) & 0xfff;
                if f3 == 1 || f3 == 5 {
                    imm &= if wide { 31 } else { 63 };
                    if arith && f3 == 5 {
                        imm |= 0x400;
                    }
                }
                i_type(imm, rs1, f3, rd, if wide { 0x1b } else { 0x13 })
            }),
    ];
    prop::collection::vec(op, 1..40)
}

/// Few registers, used over and over, so that translated code keeps them
/// in host registers across its block; with what makes a block leave in
/// the middle after writing them: divisions and other instructions the
/// interpreter executes, loads and stores that miss the TLB, cross a page,
/// reach MMIO or the program's own code, stores after an LR; and jumps
/// back to the body's start, which loop inside the block.
fn register_heavy_program() -> impl Strategy<Value = Vec<u32>> {
    const HOT: [u32; 6] = [5, 6, 7, 8, 9, 10];
    let rd = || prop::sample::select(HOT.to_vec()).boxed();
    let reg = || prop::sample::select(vec![0u32, 5, 6, 7, 8, 9, 10, 31]).boxed();
    (2usize..40).prop_flat_map(move |len| {
        (0..len)
            .map(|at| {
                let back = -4 * at as i32;
                prop_oneof![
                    6 => instruction(at, len, rd(), reg()),
                    // mul/div/rem (and their word forms) on the hot set.
                    2 => (reg(), reg(), 0u32..8, rd(), any::<bool>()).prop_map(
                        |(rs2, rs1, f3, rd, wide)| {
                            r_type(1, rs2, rs1, f3, rd, if wide { 0x3b } else { 0x33 })
                        }
                    ),
                    // Back to the body's start, from the middle of it.
                    1 => (reg(), reg(), prop::sample::select(vec![0u32, 1, 4, 5, 6, 7]))
                        .prop_map(move |(rs1, rs2, f3)| b_type(back, rs2, rs1, f3)),
                    1 => rd().prop_map(move |rd| j_type(back, rd)),
                    // lr.d / sc.d at the data pointer: a reservation makes
                    // every translated store bail.
                    1 => (rd(), reg(), any::<bool>()).prop_map(|(rd, rs2, sc)| if sc {
                        r_type(0x0c, rs2, 31, 3, rd, 0x2f)
                    } else {
                        r_type(0x08, 0, 31, 3, rd, 0x2f)
                    }),
                ]
            })
            .collect::<Vec<_>>()
    })
}

/// Sv39 tables mapping the first 2 MiB of RAM with 4 KiB pages, identity
/// but for the two pages after `DATA - 4096` swapped (so an access crossing
/// between them is not contiguous in RAM), and the low 1 GiB (MMIO) with a
/// gigapage. Returns satp.
fn page_tables(h: &mut Hart, user: bool) -> u64 {
    let root = BASE + 0x10000;
    let l1 = root + 0x1000;
    let l0 = root + 0x2000;
    let pointer = |table: u64| ((table >> 12) << 10) | 1;
    let leaf_flags = 0xcf | if user { 0x10 } else { 0 }; // V R W X A D (U)
    let mut write = |at: u64, pte: u64| h.ram_mut().write(at, &pte.to_le_bytes()).expect("in RAM");
    write(root, leaf_flags); // VA 0..1 GiB -> PA 0
    write(root + 2 * 8, pointer(l1));
    write(l1, pointer(l0));
    let swapped = ((DATA - BASE) >> 12, (DATA - BASE) >> 12 | 1);
    for page in 0..512u64 {
        let target = match page {
            p if p == swapped.0 => swapped.1,
            p if p == swapped.1 => swapped.0,
            p => p,
        };
        write(l0 + page * 8, (((BASE >> 12) + target) << 10) | leaf_flags);
    }
    (8 << 60) | (root >> 12)
}

/// The machine-level setup a program runs under.
#[derive(Clone, Copy, Debug)]
struct Setup {
    mode: u64,
    paged: bool,
    asid: u64,
    /// `stimecmp`, with Sstc enabled and its interrupt in `mie`.
    sstc_timer: Option<u64>,
    /// Where the body starts: `CODE`, or a little before a code chunk or
    /// page boundary after it.
    code: u64,
}

fn hart(engine: Engine, body: &[u32], regs: &[u64; 30], setup: Setup) -> Hart {
    let Setup {
        mode,
        paged,
        asid,
        sstc_timer,
        code: code_at,
    } = setup;
    let mut h = new_hart(engine, BASE, 1 << 20);
    // Prologue at BASE: menvcfg, stimecmp and mie from x1..x3 (run before
    // the random registers are set), then mtvec = handler (WFI),
    // mepc = the body, mret into `mode` (from x29's MPP bits).
    let handler = code_at + 4 * body.len() as u64 + 64;
    let prologue = [
        csrrw(0x30a, 1),  // menvcfg = x1
        csrrw(0x14d, 2),  // stimecmp = x2
        csrrw(0x304, 3),  // mie = x3
        csrrw(0x180, 27), // satp = x27
        csrrw(0x305, 28), // mtvec = x28
        csrrw(0x341, 30), // mepc = x30
        csrrw(0x300, 29), // mstatus = x29
        0x3020_0073,      // mret
    ];
    let words: Vec<u8> = prologue.iter().flat_map(|w| w.to_le_bytes()).collect();
    h.ram_mut().write(BASE, &words).expect("in RAM");
    let mut code: Vec<u32> = body.to_vec();
    // Run the body three times, so translated code meets TLB entries and
    // cached blocks that earlier passes filled.
    let back = -4 * (body.len() as i32 + 1);
    code.push(i_type(-1, 26, 0, 26, 0x13)); // addi x26, x26, -1
    code.push(b_type(back, 0, 26, 1)); // bne x26, x0, body
    code.extend(std::iter::repeat_n(WFI, 32));
    let bytes: Vec<u8> = code.iter().flat_map(|w| w.to_le_bytes()).collect();
    h.ram_mut().write(code_at, &bytes).expect("in RAM");
    let data: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    h.ram_mut().write(DATA - 4096, &data).expect("in RAM");
    let (menvcfg, stimecmp, mie) = match sstc_timer {
        Some(at) => (1 << 63, at, 1 << 5),
        None => (0, 0, 0),
    };
    h.set_xreg(1, menvcfg);
    h.set_xreg(2, stimecmp);
    h.set_xreg(3, mie);
    assert_eq!(h.run(&mut Recorder::default(), 3), Exit::Limit);
    for (index, value) in regs.iter().enumerate() {
        h.set_xreg(index, *value);
    }
    let satp = if paged {
        page_tables(&mut h, mode == 0) | asid << 44
    } else {
        0
    };
    h.set_xreg(26, 3);
    h.set_xreg(27, satp);
    h.set_xreg(28, handler);
    h.set_xreg(29, mode << 11);
    h.set_xreg(30, code_at);
    h.set_xreg(31, DATA);
    h
}

const LIMIT: u64 = 1000;

/// Run to WFI or `LIMIT` instructions, in runs of the given chunk sizes
/// (then unlimited); returns every exit other than reaching a chunk's end,
/// with the icount it happened at.
fn run_to(h: &mut Hart, bus: &mut Recorder, chunks: &[u64]) -> Vec<(Exit, u64)> {
    let mut exits = Vec::new();
    let mut chunk = chunks.iter().copied();
    loop {
        let end = chunk.next().map_or(LIMIT, |c| (h.icount() + c).min(LIMIT));
        let exit = h.run(bus, end);
        if exit != Exit::Limit {
            exits.push((exit, h.icount()));
        }
        if exit == Exit::Wfi || h.icount() >= LIMIT {
            return exits;
        }
    }
}

/// Run `body` on both engines (the translated run cut into `chunks`) and
/// compare everything the machine did.
fn same_state(
    body: &[u32],
    regs: &[u64; 30],
    setup: Setup,
    chunks: &[u64],
) -> Result<(), TestCaseError> {
    let mut reference = hart(Engine::Interpreter, body, regs, setup);
    let mut translated = hart(Engine::Translator, body, regs, setup);
    // Forget the setup's writes: the run's own are compared below.
    dirty_pages(&reference);
    dirty_pages(&translated);
    let (mut bus_a, mut bus_b) = (Recorder::default(), Recorder::default());
    let exits_a = run_to(&mut reference, &mut bus_a, &[]);
    // The translated run goes in chunks: limits must cut its blocks
    // exactly where the interpreter would be.
    let exits_b = run_to(&mut translated, &mut bus_b, chunks);
    prop_assert_eq!(exits_a, exits_b);
    prop_assert_eq!(reference.state(), translated.state());
    prop_assert!(
        reference.ram().bytes() == translated.ram().bytes(),
        "RAM differs"
    );
    prop_assert_eq!(dirty_pages(&reference), dirty_pages(&translated));
    prop_assert_eq!(bus_a, bus_b);
    Ok(())
}

/// The pages written since the last call (what a digest rehashes).
fn dirty_pages(h: &Hart) -> Vec<usize> {
    let mut pages = Vec::new();
    h.ram().take_dirty_pages(|page| pages.push(page));
    pages
}

fn registers() -> impl Strategy<Value = [u64; 30]> {
    prop::array::uniform30(prop_oneof![
        any::<u64>(),
        (0u64..64),
        Just(u64::MAX),
        Just(1u64 << 63),
        (0x1000_0000u64..0x1000_1000),
    ])
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::sample::select(vec![0u64, 1, 3]),
        any::<bool>(),
        prop::sample::select(vec![0u64, 1, 0x101, 0xffff]),
        // mtime runs at one tick per 10 instructions: up to 120 covers
        // the whole run, the handler's and none at all.
        prop::option::of(0u64..120),
    )
        .prop_map(|(mode, paged, asid, sstc_timer)| Setup {
            mode,
            paged,
            asid,
            sstc_timer,
            code: CODE,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: encode::cases(2000), ..ProptestConfig::default() })]

    #[test]
    fn interpreter_and_translator_reach_the_same_state(
        body in program(),
        regs in registers(),
        setup in setup(),
        chunks in prop::collection::vec(1u64..40, 0..6),
    ) {
        same_state(&body, &regs, setup, &chunks)?;
    }

    /// Aimed at the translator's register cache: a register written in a
    /// block and then left stale in memory at any way out of the block
    /// (a bail, a side exit, the loop's icount check, the end of a chunk)
    /// shows in the state.
    #[test]
    fn registers_kept_in_host_registers_reach_the_same_state(
        body in register_heavy_program(),
        regs in registers(),
        setup in setup(),
        // Blocks also end where a code chunk (1 KiB) or the page does,
        // and leave for the next in the middle of the body.
        code in prop_oneof![
            Just(CODE),
            (1u64..40).prop_map(|words| CODE + 1024 - 4 * words),
            (1u64..40).prop_map(|words| CODE + 4096 - 4 * words),
        ],
        chunks in prop::collection::vec(1u64..80, 0..8),
    ) {
        same_state(&body, &regs, Setup { code, ..setup }, &chunks)?;
    }

    #[test]
    fn operands_aliasing_in_host_registers_reach_the_same_state(
        body in aliasing_program(),
        regs in registers(),
        setup in setup(),
    ) {
        same_state(&body, &regs, setup, &[])?;
    }
}

/// Device DMA writes RAM between runs (`Ram::write`); it retires only the
/// cached and translated code it overlaps, as a guest store does. Both
/// engines must see a host write over code that ran, hot and translated:
/// one write, one spanning two code chunks, and one after more writes
/// than the hart tracks one by one.
#[test]
fn host_writes_over_translated_code_take_effect_on_both_engines() {
    let addi_a0 = |value: i32| i_type(value, 0, 0, 10, 0x13);
    for engine in [Engine::Interpreter, Engine::Translator] {
        let mut h = new_hart(engine, BASE, 1 << 20);
        let mut bus = Recorder::default();
        // The code straddles a 1 KiB chunk boundary: `addi a0` at the last
        // word of one chunk, `addi a1` and WFI in the next.
        let at = CODE + 1024 - 4;
        let program = |a0: i32, a1: i32| -> Vec<u8> {
            [addi_a0(a0), i_type(a1, 0, 0, 11, 0x13), WFI]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect()
        };
        let run = |h: &mut Hart, bus: &mut Recorder| {
            for _ in 0..3 {
                h.set_pc(at);
                assert_eq!(h.run(bus, h.icount() + 100), Exit::Wfi, "{engine:?}");
            }
            (h.xreg(10), h.xreg(11))
        };
        h.ram_mut().write(at, &program(1, 2)).expect("in RAM");
        assert_eq!(run(&mut h, &mut bus), (1, 2), "{engine:?}: first program");
        // Data elsewhere: the code stays valid.
        h.ram_mut().write(DATA, &[0xa5; 64]).expect("in RAM");
        assert_eq!(
            run(&mut h, &mut bus),
            (1, 2),
            "{engine:?}: after a data write"
        );
        // `addi a0, 3` over `addi a1`: a0 ends 3, a1 keeps its 2.
        h.ram_mut()
            .write(at + 4, &program(3, 4)[..4])
            .expect("in RAM");
        assert_eq!(
            run(&mut h, &mut bus),
            (3, 2),
            "{engine:?}: a write over the second chunk's code"
        );
        h.ram_mut().write(at, &program(5, 6)).expect("in RAM");
        assert_eq!(
            run(&mut h, &mut bus),
            (5, 6),
            "{engine:?}: a write across both chunks"
        );
        for i in 0..1000u64 {
            h.ram_mut()
                .write(DATA + 8 * i, &i.to_le_bytes())
                .expect("in RAM");
        }
        h.ram_mut().write(at, &program(7, 8)).expect("in RAM");
        assert_eq!(
            run(&mut h, &mut bus),
            (7, 8),
            "{engine:?}: a write after a flood of writes"
        );
    }
}

/// The memory differential: loads and stores of every size at and around
/// page boundaries, through pages mapped with every combination of
/// permissions (or not at all, or with A or D still clear), through two
/// virtual pages of one physical page (one of them in the same TLB slot),
/// over the program's own code through another mapping of it, and over
/// the page tables themselves (a PTE changed without `sfence.vma` must
/// keep its old translation while the TLB holds it); with `sfence.vma`,
/// SUM/MXR toggles, LR/SC, device writes between runs, and the dirty pages
/// taken (as a digest does) between runs and compared. Faults do not end
/// the run: the handler skips the faulting instruction.
mod memory {
    use super::*;

    /// Bases of the accesses (never written by the program): RAM's end;
    /// a routine the program calls; DATA - 4096 up to DATA + 12288 by
    /// pages; DATA's alias 1 MiB higher (same TLB slot); the code page's
    /// alias; the code (where it starts); the last level page table; MMIO.
    const BASES: [(u32, u64); 12] = [
        (12, BASE + (1 << 20)),
        (13, ROUTINE),
        (16, DATA - 4096),
        (17, DATA),
        (18, DATA + 4096),
        (19, DATA + 8192),
        (20, DATA + 12288),
        (21, ALIAS),
        (22, CODE_ALIAS),
        (23, CODE),
        (24, L0),
        (25, 0x1000_0000),
    ];
    const ALIAS: u64 = DATA + (1 << 20);
    const CODE_ALIAS: u64 = BASE + 0x14000;
    const ROOT: u64 = BASE + 0x10000;
    const L1: u64 = ROOT + 0x1000;
    const L0: u64 = ROOT + 0x2000;
    /// The handlers, M and S: skip the faulting instruction (every one
    /// is 4 bytes).
    const HANDLER: u64 = BASE + 0x800;
    const S_HANDLER: u64 = BASE + 0x840;
    /// The memory faults, delegated to S or not.
    const MEMORY_FAULTS: u64 = 0xb0f3;
    /// A routine the program calls (`jalr x9, 0(x13)`), alone in its page:
    /// `addi x3, x3, 7` (which the program may patch), `jalr x0, 0(x9)`.
    const ROUTINE: u64 = BASE + 0x6000;
    /// sstatus bits the program toggles: SUM and MXR.
    const SUM_MXR: u64 = (1 << 18) | (1 << 19);

    /// Leaf flags: none, R, RW, RW without D, RW without A, X, RX, RWX,
    /// W alone (reserved); all but the first valid.
    const LEAVES: [u64; 9] = [0, 0x43, 0xc7, 0x47, 0x07, 0x49, 0xcb, 0xcf, 0x45];

    /// How the pages the program reaches are mapped.
    #[derive(Clone, Copy, Debug)]
    struct Mapping {
        /// DATA - 4096 .. DATA + 16384, DATA's alias, the code's alias:
        /// an index into `LEAVES`, and the U bit.
        pages: [(usize, bool); 7],
    }

    fn mapping() -> impl Strategy<Value = Mapping> {
        prop::array::uniform7((
            prop_oneof![1 => Just(0usize), 6 => 1usize..LEAVES.len()],
            prop::bool::weighted(0.2),
        ))
        .prop_map(|pages| Mapping { pages })
    }

    /// A load into `rd` or a store of `value`.
    fn access(value: u32, rd: u32) -> impl Strategy<Value = u32> {
        (
            prop::sample::select(BASES.to_vec()),
            prop_oneof![4 => -12i32..12, 1 => -2048i32..2048],
            0u32..7,
            any::<bool>(),
        )
            .prop_map(move |((base, _), offset, f3, store)| {
                if store {
                    s_type(offset, value, base, f3 & 3)
                } else {
                    i_type(offset, base, f3, rd, 0x03)
                }
            })
    }

    /// Instructions the program writes over its own code (x10, x11).
    const PATCHES: [u32; 2] = [0x0010_8093, 0x0551_4113]; // addi x1, x1, 1; xori x2, x2, 0x55

    fn program() -> impl Strategy<Value = Vec<u32>> {
        // x1..x9 are written; x10..x15 hold values, x16..x25 bases.
        let rd = || 1u32..10;
        let op = prop_oneof![
            10 => (1u32..16, rd()).prop_flat_map(|(value, rd)| access(value, rd)),
            // An instruction over one of the program's own, or over the
            // routine's first; a call of the routine.
            1 => (0i32..40, 10u32..12).prop_map(|(word, patch)| s_type(4 * word, patch, 23, 2)),
            1 => (10u32..12).prop_map(|patch| s_type(0, patch, 13, 2)),
            1 => Just(i_type(0, 13, 0, 9, 0x67)),
            // Values to store.
            2 => (any::<i16>(), rd(), rd()).prop_map(|(imm, rd, rs1)| {
                i_type(i32::from(imm) >> 4, rs1, 0, rd, 0x13)
            }),
            // sfence.vma: everything, or one base's page.
            1 => prop::option::of(prop::sample::select(BASES.to_vec()))
                .prop_map(|base| r_type(0x09, 0, base.map_or(0, |(r, _)| r), 0, 0, 0x73)),
            // SUM and MXR on or off (x15 holds them).
            1 => any::<bool>().prop_map(|set| {
                (0x100 << 20) | (15 << 15) | (if set { 2 } else { 3 } << 12) | 0x73
            }),
            // lr.d / sc.d at DATA.
            1 => (rd(), rd(), any::<bool>()).prop_map(|(rd, rs2, sc)| if sc {
                r_type(0x0c, rs2, 17, 3, rd, 0x2f)
            } else {
                r_type(0x08, 0, 17, 3, rd, 0x2f)
            }),
        ];
        prop::collection::vec(op, 1..40)
    }

    fn tables(h: &mut Hart, user: bool, mapping: Mapping) -> u64 {
        let mut write =
            |at: u64, pte: u64| h.ram_mut().write(at, &pte.to_le_bytes()).expect("in RAM");
        let pointer = |table: u64| ((table >> 12) << 10) | 1;
        let leaf = |pa: u64, flags: u64| ((pa >> 12) << 10) | flags;
        let u = if user { 0x10 } else { 0 };
        write(ROOT, 0xcf | u); // VA 0..1 GiB -> PA 0: MMIO
        write(ROOT + 2 * 8, pointer(L1));
        write(L1, pointer(L0));
        // The rest identity, read-write (the code and the tables too).
        for page in 0..512u64 {
            write(L0 + page * 8, leaf(BASE + page * 4096, 0xcf | u));
        }
        // The handlers are S-mode's.
        write(L0, leaf(BASE, 0xcf));
        let targets = [
            DATA - 4096,
            DATA,
            DATA + 4096,
            DATA + 8192,
            DATA + 12288,
            DATA,
            CODE,
        ];
        let vas = [
            DATA - 4096,
            DATA,
            DATA + 4096,
            DATA + 8192,
            DATA + 12288,
            ALIAS,
            CODE_ALIAS,
        ];
        for ((va, pa), (flags, user_bit)) in vas.iter().zip(targets).zip(mapping.pages) {
            let flags = match LEAVES[flags] {
                0 => 0,
                f => f | if user_bit { 0x10 } else { 0 },
            };
            write(L0 + ((va - BASE) >> 12) * 8, leaf(pa, flags));
        }
        (8 << 60) | (ROOT >> 12)
    }

    /// How a program runs: privilege, paging, and where its code is.
    #[derive(Clone, Copy, Debug)]
    struct Placement {
        mode: u64,
        paged: bool,
        mapping: Mapping,
        /// `CODE`, or a little before the end of its first chunk, so that
        /// blocks end there (with a store, say).
        code: u64,
        /// Memory faults go to S-mode's handler (from U or S).
        delegate: bool,
    }

    fn hart(engine: Engine, body: &[u32], placement: Placement) -> Hart {
        let Placement {
            mode,
            paged,
            mapping,
            code: code_at,
            delegate,
        } = placement;
        let mut h = new_hart(engine, BASE, 1 << 20);
        let satp = if paged {
            tables(&mut h, mode == 0, mapping)
        } else {
            0
        };
        let prologue = [
            csrrw(0x180, 1), // satp = x1
            csrrw(0x305, 2), // mtvec = x2
            csrrw(0x341, 3), // mepc = x3
            csrrw(0x300, 4), // mstatus = x4
            csrrw(0x302, 5), // medeleg = x5
            csrrw(0x105, 6), // stvec = x6
            0x3020_0073,     // mret
        ];
        let handler = [
            0x3410_2df3,                // csrr x27, mepc
            i_type(4, 27, 0, 27, 0x13), // addi x27, x27, 4
            csrrw(0x341, 27),           // csrw mepc, x27
            0x3020_0073,                // mret
        ];
        let s_handler = [
            0x1410_2df3,                // csrr x27, sepc
            i_type(4, 27, 0, 27, 0x13), // addi x27, x27, 4
            csrrw(0x141, 27),           // csrw sepc, x27
            0x1020_0073,                // sret
        ];
        let routine = [i_type(7, 3, 0, 3, 0x13), i_type(0, 9, 0, 0, 0x67)];
        let mut code = body.to_vec();
        // Three passes, as in `super::hart`.
        let back = -4 * (body.len() as i32 + 1);
        code.push(i_type(-1, 26, 0, 26, 0x13));
        code.push(b_type(back, 0, 26, 1));
        code.extend(std::iter::repeat_n(WFI, 8));
        let bytes =
            |words: &[u32]| -> Vec<u8> { words.iter().flat_map(|w| w.to_le_bytes()).collect() };
        h.ram_mut().write(BASE, &bytes(&prologue)).expect("in RAM");
        h.ram_mut()
            .write(HANDLER, &bytes(&handler))
            .expect("in RAM");
        h.ram_mut()
            .write(S_HANDLER, &bytes(&s_handler))
            .expect("in RAM");
        h.ram_mut()
            .write(ROUTINE, &bytes(&routine))
            .expect("in RAM");
        h.ram_mut().write(code_at, &bytes(&code)).expect("in RAM");
        let data: Vec<u8> = (0..5 * 4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        h.ram_mut().write(DATA - 4096, &data).expect("in RAM");
        h.set_xreg(1, satp);
        h.set_xreg(2, HANDLER);
        h.set_xreg(3, code_at);
        h.set_xreg(4, mode << 11);
        h.set_xreg(5, if delegate { MEMORY_FAULTS } else { 0 });
        h.set_xreg(6, S_HANDLER);
        assert_eq!(h.run(&mut Recorder::default(), 7), Exit::Limit);
        for r in 1..15 {
            h.set_xreg(r, 0x0123_4567_89ab_cdefu64.rotate_left(r as u32 * 7));
        }
        h.set_xreg(10, u64::from(PATCHES[0]));
        h.set_xreg(11, u64::from(PATCHES[1]));
        h.set_xreg(15, SUM_MXR);
        for (r, base) in BASES {
            h.set_xreg(r as usize, base);
        }
        h.set_xreg(23, code_at);
        h.set_xreg(26, 3);
        h
    }

    /// Between two runs: nothing, or a device's write of 8 bytes at
    /// DATA - 4096 + this offset.
    type Between = Option<u64>;

    fn run(
        h: &mut Hart,
        chunks: &[(u64, Between)],
    ) -> (Vec<(Exit, u64)>, Vec<Vec<usize>>, Recorder) {
        let mut bus = Recorder::default();
        let mut exits = Vec::new();
        // Every page is dirty until the first run ends: the setup wrote
        // them all.
        let mut dirty = Vec::new();
        let mut chunk = chunks.iter().copied();
        loop {
            let (steps, between) = chunk.next().unwrap_or((LIMIT, None));
            let exit = h.run(&mut bus, (h.icount() + steps).min(LIMIT));
            if exit != Exit::Limit {
                exits.push((exit, h.icount()));
            }
            dirty.push(dirty_pages(h));
            if let Some(offset) = between {
                h.dma_write(DATA - 4096 + offset, &offset.to_le_bytes())
                    .expect("in RAM");
            }
            if exit == Exit::Wfi || h.icount() >= LIMIT {
                return (exits, dirty, bus);
            }
        }
    }

    /// A store fault taken in S-mode is followed by translated code in
    /// S-mode (the handler) under the same key: the page must stay out of
    /// the store TLB although the load TLB maps it and it is dirty.
    #[test]
    fn a_read_only_page_stays_read_only_to_translated_stores() {
        let body = [
            i_type(0, 17, 3, 1, 0x03), // ld x1, 0(x17)
            s_type(0, 2, 17, 3),       // sd x2, 0(x17): faults
            s_type(8, 3, 17, 3),       // sd x3, 8(x17): faults
        ];
        let mut pages = [(2, false); 7];
        pages[1] = (1, false); // DATA: read-only
        let placement = Placement {
            mode: 1,
            paged: true,
            mapping: Mapping { pages },
            code: CODE,
            delegate: true,
        };
        let mut reference = hart(Engine::Interpreter, &body, placement);
        let mut translated = hart(Engine::Translator, &body, placement);
        let a = run(&mut reference, &[]);
        let b = run(&mut translated, &[]);
        assert_eq!(a.0, b.0);
        assert_eq!(reference.state(), translated.state());
        assert!(reference.ram().bytes() == translated.ram().bytes());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: encode::cases(2000), ..ProptestConfig::default() })]

        #[test]
        fn memory_accesses_reach_the_same_state(
            body in program(),
            mode in prop::sample::select(vec![0u64, 1, 3]),
            paged in prop::bool::weighted(0.8),
            mapping in mapping(),
            code in prop_oneof![
                Just(CODE),
                (1u64..40).prop_map(|words| CODE + 1024 - 4 * words),
            ],
            delegate in any::<bool>(),
            chunks in prop::collection::vec(
                (
                    prop_oneof![1u64..8, 1u64..60],
                    prop::option::weighted(0.2, 0u64..5 * 4096 - 8),
                ),
                0..24,
            ),
        ) {
            let placement = Placement { mode, paged, mapping, code, delegate };
            let mut reference = hart(Engine::Interpreter, &body, placement);
            let mut translated = hart(Engine::Translator, &body, placement);
            let a = run(&mut reference, &chunks);
            let b = run(&mut translated, &chunks);
            prop_assert_eq!(&a.0, &b.0, "exits");
            prop_assert_eq!(reference.state(), translated.state());
            prop_assert!(reference.ram().bytes() == translated.ram().bytes(), "RAM differs");
            prop_assert_eq!(&a.1, &b.1, "dirty pages, run by run");
            prop_assert_eq!(a.2, b.2);
        }
    }
}
