//! The interpreter and the block translator agree on programs made of
//! jumps the translator takes through its jump cache (`jalr`: calls,
//! returns, computed targets; `jal` and branches to another page) while the
//! fetch context changes under them: code on several pages, mapped by Sv39
//! tables at several virtual addresses (4 KiB pages and a gigapage), in two
//! address spaces (with the same or different ASIDs), with user-only and
//! non-executable pages; trap handlers (M, and S for what M delegates) that
//! follow a random script: switch `satp` (or turn paging off), rewrite a
//! code page's PTE, `sfence.vma` (all, one address, one ASID, or not at
//! all), and return in U, S or M to any target; stores and loads over the
//! code, `fence.i`; every run cut at random icount limits. The two engines
//! are compared after every piece of the run.

use ftvm_cpu::{Engine, Exit, Hart};
use proptest::prelude::*;

mod encode;
use encode::{NoDevices, b_type, i_type, j_type, new_hart, r_type, s_type};

const BASE: u64 = 0x8000_0000;
const RAM: u64 = 1 << 20;
/// Physical code pages.
const PAGES: u64 = 4;
const CODE: u64 = BASE + 0x1000;
/// Random words at the start of each code page; the rest are zero (an
/// illegal instruction).
const WORDS: usize = 48;
const M_HANDLER: u64 = BASE + 0x5000;
const S_HANDLER: u64 = BASE + 0x5800;
/// The handlers' script: `STEPS` entries of 64 bytes.
const SCRIPT: u64 = BASE + 0x6000;
const STEPS: usize = 32;
/// A harmless place for a script step's PTE write that changes nothing.
const SCRATCH: u64 = BASE + 0x7000;
/// Where the code pages are mapped: 4 KiB pages `VA .. VA + VPAGES * 4096`.
const VA: u64 = 0x4000_0000;
const VPAGES: u64 = 10;
/// Page tables of the two address spaces.
const TABLES_A: u64 = BASE + 0x10000;
const TABLES_B: u64 = BASE + 0x14000;
const LIMIT: u64 = 3000;

fn jalr(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(imm, rs1, 0, rd, 0x67)
}
const fn csrw(csr: u32, rs1: u32) -> u32 {
    (csr << 20) | (rs1 << 15) | (1 << 12) | 0x73
}
fn csrr(rd: u32, csr: u32) -> u32 {
    (csr << 20) | (2 << 12) | (rd << 7) | 0x73
}
fn sfence_vma(rs1: u32, rs2: u32) -> u32 {
    (0x09 << 25) | (rs2 << 20) | (rs1 << 15) | 0x73
}
fn ld(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(imm, rs1, 3, rd, 0x03)
}
fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(imm, rs1, 0, rd, 0x13)
}

const SATP: u32 = 0x180;
const MSTATUS: u32 = 0x300;
const MEDELEG: u32 = 0x302;
const MTVEC: u32 = 0x305;
const MSCRATCH: u32 = 0x340;
const MEPC: u32 = 0x341;
const SSTATUS: u32 = 0x100;
const STVEC: u32 = 0x105;
const SSCRATCH: u32 = 0x140;
const SEPC: u32 = 0x141;
const MRET: u32 = 0x3020_0073;
const SRET: u32 = 0x1020_0073;

/// A trap handler (x26..x29 are its own; x28 the script's offset) that
/// carries out the script's next step and returns: `satp` = word 0; the
/// doubleword at word 1 = word 2 (a PTE, or scratch); word 3 the fence
/// (0: none, 1: all, 2: the address in word 6, 3: the ASID in word 7);
/// the status register = word 4; return to word 5.
fn handler(scratch: u32, status: u32, epc: u32, ret: u32) -> Vec<u32> {
    vec![
        csrr(29, scratch),
        r_type(0, 28, 29, 0, 29, 0x33), // add x29, x29, x28
        ld(26, 29, 0),
        csrw(SATP, 26),
        ld(26, 29, 8),
        ld(27, 29, 16),
        s_type(0, 27, 26, 3), // sd x27, 0(x26)
        ld(26, 29, 24),
        b_type(12 * 4, 0, 26, 0), // beq x26, x0, done
        addi(26, 26, -1),
        b_type(3 * 4, 0, 26, 1), // bne x26, x0, not1
        sfence_vma(0, 0),
        j_type(8 * 4, 0),        // j done
        addi(26, 26, -1),        // not1:
        b_type(4 * 4, 0, 26, 1), // bne x26, x0, not2
        ld(27, 29, 48),
        sfence_vma(27, 0),
        j_type(3 * 4, 0), // j done
        ld(27, 29, 56),   // not2:
        sfence_vma(0, 27),
        ld(26, 29, 32), // done:
        csrw(status, 26),
        ld(26, 29, 40),
        csrw(epc, 26),
        addi(28, 28, 64),
        i_type(0x7ff, 28, 7, 28, 0x13), // andi x28, x28, 0x7ff
        ret,
    ]
}

/// A place to jump to: a word of a code page through its 4 KiB mappings
/// (some pages unmapped, some not executable or user-only), or through
/// the identity (physical address; under paging, the gigapage), sometimes
/// its second halfword, or anywhere.
fn target() -> impl Strategy<Value = u64> {
    prop_oneof![
        5 => (0..VPAGES, 0..WORDS as u64, prop::bool::weighted(0.1))
            .prop_map(|(page, word, half)| VA + page * 4096 + word * 4 + 2 * half as u64),
        3 => (0..PAGES, 0..WORDS as u64, prop::bool::weighted(0.1))
            .prop_map(|(page, word, half)| CODE + page * 4096 + word * 4 + 2 * half as u64),
        1 => any::<u64>(),
    ]
}

/// A random instruction, aimed at jumps. Destinations: x5..x15 for
/// arithmetic, x1, x5, x6 for links, x16..x23 (the target registers) for
/// computed targets; x24 points into code, x25 holds an instruction to
/// store there; x26..x31 are the handlers'.
fn instruction() -> impl Strategy<Value = u32> {
    let any_reg = || 0u32..26;
    let rd = || 5u32..16;
    let target_reg = || 16u32..24;
    let link = || prop::sample::select(vec![0u32, 1, 1, 5, 6]);
    prop_oneof![
        // Arithmetic.
        4 => (any::<i16>(), any_reg(), prop::sample::select(vec![0u32, 4, 6, 7]), rd())
            .prop_map(|(imm, rs1, f3, rd)| i_type(i32::from(imm), rs1, f3, rd, 0x13)),
        2 => (any_reg(), any_reg(), prop::sample::select(vec![0u32, 4, 6, 7]), rd())
            .prop_map(|(rs2, rs1, f3, rd)| r_type(0, rs2, rs1, f3, rd, 0x33)),
        // Calls through a target register (sometimes the link register
        // itself), with an offset.
        4 => (link(), prop_oneof![target_reg(), Just(1u32), Just(5u32)],
              prop::sample::select(vec![0i32, 0, 0, 4, -4, 8, 2]))
            .prop_map(|(rd, rs1, imm)| jalr(rd, rs1, imm)),
        // Returns.
        3 => prop::sample::select(vec![1u32, 1, 5, 6]).prop_map(|rs1| jalr(0, rs1, 0)),
        // c.jr / c.jalr (then c.nop).
        1 => (prop_oneof![Just(1u32), target_reg()], any::<bool>())
            .prop_map(|(rs1, call)| (if call { 0x9002 } else { 0x8002 }) | (rs1 << 7) | (1 << 16)),
        // jal to other pages, and near.
        3 => (link(), -3i32..=3, -8i32..=8)
            .prop_map(|(rd, pages, words)| j_type(pages * 4096 + words * 4, rd)),
        1 => (link(), -12i32..=12).prop_map(|(rd, words)| j_type(words * 4, rd)),
        // Branches, near or to another page.
        2 => (any_reg(), any_reg(), prop::sample::select(vec![0u32, 1, 4, 5, 6, 7]),
              prop_oneof![-8i32..=8, Just(-4096i32), Just(4092)])
            .prop_map(|(rs1, rs2, f3, words)| {
                let offset = if words.abs() > 8 { words } else { words * 4 };
                b_type(offset, rs2, rs1, f3)
            }),
        // Computed targets: moved, or pc-relative.
        2 => (target_reg(), target_reg(), -6i32..=6)
            .prop_map(|(rd, rs1, words)| addi(rd, rs1, words * 4)),
        1 => (target_reg(), -2i32..=2)
            .prop_map(|(rd, pages)| ((pages << 12) as u32) | (rd << 7) | 0x17),
        // Stores over code (the instruction in x25), at a jump target or
        // near x24, and loads of it.
        1 => (-6i32..=6, prop::sample::select(vec![2u32, 3]))
            .prop_map(|(words, f3)| s_type(words * 4, 25, 24, f3)),
        1 => (target_reg(), prop::sample::select(vec![0i32, 0, 4, -4]))
            .prop_map(|(base, imm)| s_type(imm, 25, base, 2)),
        1 => (-6i32..=6, rd()).prop_map(|(words, rd)| i_type(words * 4, 24, 2, rd, 0x03)),
        // Traps into the script, and fence.i.
        1 => Just(0x0000_0073u32),
        1 => Just(0x0000_100fu32),
        1 => any::<u32>(),
    ]
}

/// One step of the handlers' script.
#[derive(Clone, Copy, Debug)]
struct Step {
    /// 0: address space A, 1: B, 2: bare.
    space: u8,
    /// Rewrite this code PTE (space, page) or nothing.
    pte: Option<(bool, u64)>,
    leaf: Leaf,
    fence: u64,
    fence_page: u64,
    /// MPP (and SPP) to return with.
    privilege: u64,
    ret: u64,
}

/// A code page's leaf PTE: which physical code page, with what flags (or
/// invalid).
#[derive(Clone, Copy, Debug)]
struct Leaf {
    page: u64,
    valid: bool,
    exec: bool,
    write: bool,
    user: bool,
}

fn leaf() -> impl Strategy<Value = Leaf> {
    (
        0..PAGES,
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.8),
        any::<bool>(),
        prop::bool::weighted(0.4),
    )
        .prop_map(|(page, valid, exec, write, user)| Leaf {
            page,
            valid,
            exec,
            write,
            user,
        })
}

impl Leaf {
    fn pte(self) -> u64 {
        if !self.valid {
            return 0;
        }
        let flags = 0xc3 // V R A D
            | if self.exec { 8 } else { 0 }
            | if self.write { 4 } else { 0 }
            | if self.user { 0x10 } else { 0 };
        (((CODE >> 12) + self.page) << 10) | flags
    }
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop::sample::select(vec![0u8, 0, 1, 1, 2]),
        prop::option::weighted(0.6, (any::<bool>(), 0..VPAGES)),
        leaf(),
        0u64..4,
        0..VPAGES,
        prop::sample::select(vec![0u64, 1, 3]),
        target(),
    )
        .prop_map(
            |(space, pte, leaf, fence, fence_page, privilege, ret)| Step {
                space,
                pte,
                leaf,
                fence,
                fence_page,
                privilege,
                ret,
            },
        )
}

#[derive(Clone, Debug)]
struct Setup {
    /// Privilege the program starts in (0, 1, 3) and whether it starts
    /// paged (in space A).
    mode: u64,
    paged: bool,
    /// ASIDs of spaces A and B.
    asids: (u64, u64),
    /// Code page leaves of the two spaces.
    leaves: [Vec<Leaf>; 2],
    medeleg: u64,
    script: Vec<Step>,
    start: u64,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::sample::select(vec![0u64, 1, 1, 3]),
        prop::bool::weighted(0.8),
        prop::sample::select(vec![(0u64, 0u64), (1, 2), (1, 1), (3, 259), (0xffff, 7)]),
        prop::collection::vec(leaf(), VPAGES as usize),
        prop::collection::vec(leaf(), VPAGES as usize),
        // Nothing; ecall from U; and instruction page faults, illegal
        // instructions, misaligned and access faults of fetches.
        prop::sample::select(vec![0u64, 1 << 8, (1 << 8) | (1 << 12) | (1 << 2) | 1 | 2]),
        prop::collection::vec(step(), STEPS),
        target(),
    )
        .prop_map(|(mode, paged, asids, a, b, medeleg, script, start)| Setup {
            mode,
            paged,
            asids,
            leaves: [a, b],
            medeleg,
            script,
            start,
        })
}

fn satp(space: u8, asids: (u64, u64)) -> u64 {
    match space {
        0 => (8 << 60) | (asids.0 << 44) | (TABLES_A >> 12),
        1 => (8 << 60) | (asids.1 << 44) | (TABLES_B >> 12),
        _ => 0,
    }
}

/// The PTE of code page `page` of space `b` (else A).
fn pte_address(b: bool, page: u64) -> u64 {
    let tables = if b { TABLES_B } else { TABLES_A };
    tables + 0x2000 + page * 8
}

fn write(h: &mut Hart, at: u64, bytes: &[u8]) {
    h.ram_mut().write(at, bytes).expect("in RAM");
}

fn write_words(h: &mut Hart, at: u64, words: &[u32]) {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    write(h, at, &bytes);
}

fn write_u64(h: &mut Hart, at: u64, value: u64) {
    write(h, at, &value.to_le_bytes());
}

const PROLOGUE: [u32; 9] = [
    csrw(SATP, 1),
    csrw(MTVEC, 2),
    csrw(STVEC, 3),
    csrw(MSCRATCH, 4),
    csrw(SSCRATCH, 4),
    csrw(MEDELEG, 5),
    csrw(MEPC, 6),
    csrw(MSTATUS, 7),
    MRET,
];

fn hart(engine: Engine, pages: &[Vec<u32>], regs: &[u64; 25], setup: &Setup) -> Hart {
    let mut h = new_hart(engine, BASE, RAM);
    write_words(&mut h, BASE, &PROLOGUE);
    for (i, page) in pages.iter().enumerate() {
        write_words(&mut h, CODE + i as u64 * 4096, page);
    }
    write_words(&mut h, M_HANDLER, &handler(MSCRATCH, MSTATUS, MEPC, MRET));
    write_words(&mut h, S_HANDLER, &handler(SSCRATCH, SSTATUS, SEPC, SRET));
    for (i, s) in setup.script.iter().enumerate() {
        let at = SCRIPT + 64 * i as u64;
        let (pte_at, pte) = match s.pte {
            Some((b, page)) => (pte_address(b, page), s.leaf.pte()),
            None => (SCRATCH, 0),
        };
        let words = [
            satp(s.space, setup.asids),
            pte_at,
            pte,
            s.fence,
            s.privilege << 11 | (s.privilege & 1) << 8,
            s.ret,
            VA + s.fence_page * 4096,
            if s.space == 1 {
                setup.asids.1
            } else {
                setup.asids.0
            },
        ];
        for (j, word) in words.iter().enumerate() {
            write_u64(&mut h, at + 8 * j as u64, *word);
        }
    }
    // Both spaces: VA.. through l1 and l0 to the code pages; a gigapage
    // mapping RAM (and so the code, the handlers and the tables) at its
    // physical address, for S-mode only.
    for (tables, leaves) in [(TABLES_A, &setup.leaves[0]), (TABLES_B, &setup.leaves[1])] {
        let (root, l1, l0) = (tables, tables + 0x1000, tables + 0x2000);
        write_u64(&mut h, root + 8 * (VA >> 30), ((l1 >> 12) << 10) | 1);
        write_u64(&mut h, root + 8 * (BASE >> 30), ((BASE >> 12) << 10) | 0xcf);
        write_u64(&mut h, l1, ((l0 >> 12) << 10) | 1);
        for (page, leaf) in leaves.iter().enumerate() {
            write_u64(&mut h, l0 + 8 * page as u64, leaf.pte());
        }
    }
    let csrs = [
        if setup.paged { satp(0, setup.asids) } else { 0 },
        M_HANDLER,
        S_HANDLER,
        SCRIPT,
        setup.medeleg,
        setup.start,
        setup.mode << 11,
    ];
    for (i, value) in csrs.iter().enumerate() {
        h.set_xreg(i + 1, *value);
    }
    let before_mret = PROLOGUE.len() as u64 - 1;
    assert_eq!(h.run(&mut NoDevices, before_mret), Exit::Limit);
    for (i, value) in regs.iter().enumerate() {
        h.set_xreg(i + 1, *value);
    }
    h.set_xreg(28, 0);
    h
}

/// Registers x1..x25: targets in x1 and x16..x24, an instruction in x25
/// (one that jumps, one that counts, or anything), anything elsewhere.
fn registers() -> impl Strategy<Value = [u64; 25]> {
    (
        target(),
        prop::array::uniform14(prop_oneof![any::<u64>(), 0u64..64, target()]),
        prop::array::uniform9(target()),
        prop_oneof![
            Just(u64::from(jalr(0, 1, 0))),
            Just(u64::from(addi(5, 5, 1))),
            Just(u64::from(jalr(1, 16, 0))),
            any::<u32>().prop_map(u64::from),
        ],
    )
        .prop_map(|(x1, low, targets, insn)| {
            let mut regs = [0; 25];
            regs[0] = x1;
            regs[1..15].copy_from_slice(&low);
            regs[15..24].copy_from_slice(&targets);
            regs[24] = insn;
            regs
        })
}

fn code() -> impl Strategy<Value = Vec<Vec<u32>>> {
    prop::collection::vec(prop::collection::vec(instruction(), WORDS), PAGES as usize)
}

/// What the host does to both machines after a piece of the run.
#[derive(Clone, Copy, Debug)]
enum Event {
    Nothing,
    /// Writes RAM outside the guest (every cached block goes).
    HostWrite,
    /// Restores the machine's own snapshot (caches flushed).
    Restore,
    /// A device writes this word over code (its chunk's blocks retire).
    Dma(u64, u32),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::Nothing),
        1 => Just(Event::HostWrite),
        1 => Just(Event::Restore),
        2 => (0..PAGES, 0..WORDS as u64, instruction())
            .prop_map(|(page, word, insn)| Event::Dma(CODE + page * 4096 + word * 4, insn)),
    ]
}

fn apply(h: &mut Hart, event: Event) {
    match event {
        Event::Nothing => {}
        Event::HostWrite => write(h, SCRATCH + 8, &[1, 2, 3]),
        Event::Restore => {
            let state = h.state();
            h.restore(&state);
        }
        Event::Dma(at, insn) => h.dma_write(at, &insn.to_le_bytes()).expect("in RAM"),
    }
}

/// Run both engines over the same pieces (then to `LIMIT`), comparing the
/// whole machine after each.
fn same_runs(
    pages: &[Vec<u32>],
    regs: &[u64; 25],
    setup: &Setup,
    pieces: &[(u64, Event)],
) -> Result<(), TestCaseError> {
    let mut reference = hart(Engine::Interpreter, pages, regs, setup);
    let mut translated = hart(Engine::Translator, pages, regs, setup);
    let mut pieces = pieces.iter().copied();
    while reference.icount() < LIMIT {
        let (end, event) = pieces.next().map_or((LIMIT, Event::Nothing), |(p, e)| {
            ((reference.icount() + p).min(LIMIT), e)
        });
        apply(&mut reference, event);
        apply(&mut translated, event);
        let exit_a = reference.run(&mut NoDevices, end);
        let exit_b = translated.run(&mut NoDevices, end);
        prop_assert_eq!(exit_a, exit_b);
        prop_assert_eq!(reference.state(), translated.state(), "at icount {}", end);
        prop_assert!(
            reference.ram().bytes() == translated.ram().bytes(),
            "RAM differs at icount {}",
            end
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: encode::cases(1500), ..ProptestConfig::default() })]

    #[test]
    fn jumps_through_changing_mappings_reach_the_same_state(
        pages in code(),
        regs in registers(),
        setup in setup(),
        pieces in prop::collection::vec((1u64..60, event()), 0..40),
    ) {
        same_runs(&pages, &regs, &setup, &pieces)?;
    }
}
