//! Turning the translator off and on again: the block cache keeps the
//! translations it recorded for the dropped code region, so a new
//! translator must not reuse their epochs (it started at 1 again, and the
//! loop jumped into freed memory).

use ftvm_cpu::{Engine, Exit};

mod encode;
use encode::{NoDevices, new_hart};

#[test]
fn reenabling_the_translator_does_not_run_code_of_the_old_region() {
    const BASE: u64 = 0x8000_0000;
    let mut h = new_hart(Engine::Translator, BASE, 1 << 20);
    // addi x5, x5, 1; wfi
    let code: Vec<u8> = [0x0012_8293u32, 0x1050_0073]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    h.ram_mut().write(BASE + 0x1000, &code).expect("ram");
    for round in 0..3 {
        h.set_pc(BASE + 0x1000);
        assert_eq!(h.run(&mut NoDevices, h.icount() + 10), Exit::Wfi);
        assert_eq!(h.xreg(5), round + 1);
        h.set_engine(Engine::Interpreter).expect("engine");
        h.set_engine(Engine::Translator).expect("engine");
    }
}
