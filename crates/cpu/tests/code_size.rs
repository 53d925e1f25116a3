//! The translator's code density: host code bytes per guest instruction
//! for a typical mix (loads, stores, arithmetic, `li`, copies, a branch),
//! which bounds how much host code broad guest code runs through (host
//! instruction fetch is what a kernel's network path is bound by). The
//! differential tests check what the code does; this checks its size does
//! not creep back up.

use ftvm_cpu::{Engine, Exit, Hart};

mod encode;
use encode::{NoDevices, b_type, i_type, new_hart, r_type, s_type};

const BASE: u64 = 0x8000_0000;
const DATA: u64 = BASE + 0x8000;
const WFI: u32 = 0x1050_0073;

fn run(engine: Engine) -> Hart {
    let body = [
        i_type(100, 0, 0, 5, 0x13),   // li x5, 100
        i_type(0, 31, 3, 6, 0x03),    // loop: ld x6, 0(x31)
        i_type(1, 6, 0, 6, 0x13),     // addi x6, x6, 1
        s_type(8, 6, 31, 3),          // sd x6, 8(x31)
        r_type(0, 6, 0, 0, 7, 0x33),  // add x7, x0, x6
        i_type(4, 31, 2, 8, 0x03),    // lw x8, 4(x31)
        r_type(0, 8, 7, 0, 9, 0x3b),  // addw x9, x7, x8
        s_type(16, 9, 31, 2),         // sw x9, 16(x31)
        r_type(0, 0, 9, 0, 10, 0x33), // add x10, x9, x0
        i_type(-1, 5, 0, 5, 0x13),    // addi x5, x5, -1
        b_type(-36, 0, 5, 1),         // bne x5, x0, loop
        WFI,
    ];
    let mut h = new_hart(engine, BASE, 1 << 20);
    let bytes: Vec<u8> = body.iter().flat_map(|w| w.to_le_bytes()).collect();
    h.ram_mut().write(BASE, &bytes).expect("in RAM");
    h.set_xreg(31, DATA);
    assert_eq!(h.run(&mut NoDevices, 10_000), Exit::Wfi);
    h
}

#[test]
fn translated_code_is_dense() {
    let translated = run(Engine::Translator);
    assert_eq!(translated.state(), run(Engine::Interpreter).state());
    let code = translated.translated_code();
    assert!(code.blocks > 0 && code.insns > 0, "{code:?}");
    let per_insn = code.bytes as f64 / code.insns as f64;
    // This program takes 48 (a Linux boot averaged 104 before the shared
    // stubs and short encodings, 50 after).
    assert!(
        per_insn < 55.0,
        "{per_insn:.1} host bytes per instruction: {code:?}"
    );
}
