//! RAM at a base that is not page-aligned (`HartConfig` takes any): a
//! guest page then spans two of RAM's dirty pages and straddles code
//! chunks differently, and translated stores must still mark every page
//! they write and retire the code they overwrite, as the interpreter does.
//! The translator's own TLBs, keyed by guest page, first got both wrong.

use ftvm_cpu::{Engine, Exit, Hart};

mod encode;
use encode::{NoDevices, b_type, i_type, new_hart, s_type};

fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(imm, rs1, 0, rd, 0x13)
}
fn sd(rs2: u32, imm: i32, rs1: u32) -> u32 {
    s_type(imm, rs2, rs1, 3)
}
fn sw(rs2: u32, imm: i32, rs1: u32) -> u32 {
    s_type(imm, rs2, rs1, 2)
}
fn jalr(rd: u32, rs1: u32) -> u32 {
    i_type(0, rs1, 0, rd, 0x67)
}
const WFI: u32 = 0x1050_0073;

fn bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn dirty_pages(h: &Hart) -> Vec<usize> {
    let mut pages = Vec::new();
    h.ram().take_dirty_pages(|page| pages.push(page));
    pages
}

/// A guest page spans two of RAM's dirty pages. A store TLB entry filled
/// because the dirty page of the guest page's first byte was marked let a
/// translated store to the page's upper part write a RAM page that was
/// not, and a digest missed it.
#[test]
fn unaligned_ram_base_translated_store_marks_every_page_it_writes() {
    const BASE: u64 = 0x8000_0800;
    const CODE: u64 = 0x8000_1000;
    const PAGE: u64 = 0x8000_8000; // RAM offsets 0x7800..0x8800: pages 7 and 8
    let program = [
        sd(0, 0, 31),     // RAM offset 0x7800 (page 7): miss, interpreter
        sd(0, 0x100, 30), // PAGE + 0x900, RAM offset 0x8100 (page 8): hit
        WFI,
    ];
    let mut results = Vec::new();
    for engine in [Engine::Interpreter, Engine::Translator] {
        let mut h = new_hart(engine, BASE, 1 << 20);
        h.ram_mut().write(CODE, &bytes(&program)).expect("ram");
        h.set_pc(CODE);
        h.set_xreg(31, PAGE);
        h.set_xreg(30, PAGE + 0x800);
        dirty_pages(&h);
        assert_eq!(h.run(&mut NoDevices, 100), Exit::Wfi);
        results.push((h.state(), dirty_pages(&h)));
    }
    assert_eq!(results[0].0, results[1].0);
    assert_eq!(
        results[0].1, results[1].1,
        "dirty pages (interpreter, translator)"
    );
}

/// Code cached in a chunk of the guest page's second RAM page did not
/// drop the page's store entry (compared by RAM page, `off >> 12`), so a
/// translated store rewrote that code without retiring it, and the old
/// code ran again.
#[test]
fn unaligned_ram_base_translated_store_over_code_retires_it() {
    store_over_code_cached_after_the_entry(0x8000_0800);
}

/// The same with RAM page-aligned, where entries do stand for whole pages.
#[test]
fn store_over_code_cached_after_the_entry_was_filled_is_seen() {
    store_over_code_cached_after_the_entry(0x8000_0000);
}

fn store_over_code_cached_after_the_entry(base: u64) {
    #[allow(non_snake_case)]
    let BASE: u64 = base;
    const CODE: u64 = 0x8000_1000;
    const PAGE: u64 = 0x8000_8000;
    const ROUTINE: u64 = PAGE + 0x800; // RAM offset 0x8000: chunk 0x20, page 8
    let program = [
        sd(0, 0, 31), // page's first RAM page dirty; the entry is filled
        jalr(1, 30),  // the routine: cached (and translated)
        sw(6, 0, 30), // patch the routine's first instruction: a hit
        jalr(1, 30),  // the routine again
        WFI,
    ];
    let routine = [addi(5, 5, 1), jalr(0, 1)];
    let patch = addi(5, 5, 100);
    let mut results = Vec::new();
    for engine in [Engine::Interpreter, Engine::Translator] {
        let mut h = new_hart(engine, BASE, 1 << 20);
        h.ram_mut().write(CODE, &bytes(&program)).expect("ram");
        h.ram_mut().write(ROUTINE, &bytes(&routine)).expect("ram");
        h.set_pc(CODE);
        h.set_xreg(31, PAGE);
        h.set_xreg(30, ROUTINE);
        h.set_xreg(6, u64::from(patch));
        assert_eq!(h.run(&mut NoDevices, 100), Exit::Wfi);
        results.push(h.xreg(5));
    }
    assert_eq!(results[0], 101, "interpreter");
    assert_eq!(results[1], 101, "translator");
}

fn csr(number: u32, rs1: u32, f3: u32) -> u32 {
    (number << 20) | (rs1 << 15) | (f3 << 12) | 0x73
}

/// M-mode with MPRV: stores and loads of the same virtual address first
/// without translation (MPRV clear: the direct key), then with MPP = S
/// under Sv39, where that address maps elsewhere: the translator's entry
/// of the first must not serve the second.
#[test]
fn mprv_switches_m_mode_accesses_to_the_supervisor_mapping() {
    const BASE: u64 = 0x8000_0000;
    const CODE: u64 = BASE + 0x1000;
    const X: u64 = BASE + 0x20000;
    const Y: u64 = BASE + 0x30000;
    const ROOT: u64 = BASE + 0x10000;
    let body = |rd: u32| {
        [
            sd(6, 0, 31),
            i_type(0, 31, 3, rd, 0x03),
            addi(6, 6, 1),
            addi(26, 26, -1),
            b_type(-16, 0, 26, 1),
        ]
    };
    let mut program = vec![csr(0x180, 27, 1)]; // csrw satp, x27
    program.extend(body(7));
    program.push(csr(0x300, 9, 2)); // csrs mstatus, x9
    program.push(addi(26, 0, 3));
    program.extend(body(8));
    program.push(WFI);
    let mut results = Vec::new();
    for engine in [Engine::Interpreter, Engine::Translator] {
        let mut h = new_hart(engine, BASE, 1 << 20);
        let mut write = |at: u64, v: u64| h.ram_mut().write(at, &v.to_le_bytes()).expect("ram");
        let pointer = |t: u64| ((t >> 12) << 10) | 1;
        write(ROOT + 2 * 8, pointer(ROOT + 0x1000));
        write(ROOT + 0x1000, pointer(ROOT + 0x2000));
        for page in 0..512u64 {
            write(
                ROOT + 0x2000 + page * 8,
                (((BASE >> 12) + page) << 10) | 0xcf,
            );
        }
        write(ROOT + 0x2000 + 0x20 * 8, ((Y >> 12) << 10) | 0xc7);
        h.ram_mut().write(CODE, &bytes(&program)).expect("ram");
        h.set_pc(CODE);
        h.set_xreg(27, (8 << 60) | (ROOT >> 12));
        h.set_xreg(31, X);
        h.set_xreg(6, 0x100);
        h.set_xreg(26, 3);
        h.set_xreg(9, (1 << 17) | (1 << 11)); // MPRV, MPP = S
        assert_eq!(h.run(&mut NoDevices, 200), Exit::Wfi);
        let mut x = [0; 8];
        let mut y = [0; 8];
        h.ram().read(X, &mut x).expect("ram");
        h.ram().read(Y, &mut y).expect("ram");
        results.push((h.state(), u64::from_le_bytes(x), u64::from_le_bytes(y)));
    }
    assert_eq!(results[0].1, 0x102);
    assert_eq!(results[0].2, 0x105);
    assert_eq!(results[0], results[1]);
}
