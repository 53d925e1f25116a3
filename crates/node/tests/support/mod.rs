//! What the node's tests share: hand-assembled guests, machines, a clock
//! the test moves, and running a node until it is quiet.

#![allow(dead_code)]

use ftvm_board::{DeviceKind, Engine, Firmware, Image, MachineConfig};
use ftvm_ft::channel::Message;
use ftvm_node::{Effect, Node, NodeConfig, Ran, Time};

// A few RV64 encodings, enough for the guests below.
pub const T0: u32 = 5;
pub const T1: u32 = 6;
pub const T2: u32 = 7;
pub const T3: u32 = 28;

pub fn lui(rd: u32, imm20: u32) -> u32 {
    (imm20 << 12) | (rd << 7) | 0x37
}

pub fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (rd << 7) | 0x13
}

pub fn store(funct3: u32, rs2: u32, rs1: u32, offset: u32) -> u32 {
    ((offset >> 5) << 25) | (rs2 << 20) | (rs1 << 15) | (funct3 << 12) | ((offset & 31) << 7) | 0x23
}

/// `jal x0, 0`: spin forever.
pub const SPIN: u32 = 0x0000_006f;

/// Print `text` on the UART, then power off with the pass code.
pub fn printer(text: &[u8]) -> Vec<u32> {
    let mut code = vec![lui(T0, 0x10000)]; // UART at 0x1000_0000
    for &byte in text {
        code.push(addi(T1, 0, i32::from(byte)));
        code.push(store(0, T1, T0, 0)); // sb t1, 0(t0)
    }
    code.extend([
        lui(T2, 0x100), // sifive-test at 0x0010_0000
        lui(T3, 0x5),
        addi(T3, T3, 0x555),
        store(2, T3, T2, 0), // sw t3, 0(t2): pass, power off
        SPIN,
    ]);
    code
}

pub fn image(name: &str, code: &[u32]) -> Image {
    let bytes: Vec<u8> = code.iter().flat_map(|w| w.to_le_bytes()).collect();
    Image::new(format!("/guests/{name}.img"), bytes)
}

pub fn machine(kernel: &Image, virtio: Vec<DeviceKind>) -> MachineConfig {
    MachineConfig {
        memory_mib: 16,
        firmware: Firmware::None,
        kernel: kernel.clone(),
        initrd: None,
        append: String::new(),
        insns_per_tick: MachineConfig::DEFAULT_INSNS_PER_TICK,
        engine: Engine::Interpreter,
        virtio,
    }
}

pub fn config() -> NodeConfig {
    let mut config = NodeConfig::new("test-pair");
    config.steer_time = false;
    config.engine = Engine::Interpreter;
    config
}

/// A clock the test moves.
pub struct Clock(pub u64);

impl Clock {
    pub fn now(&self) -> Time {
        Time {
            mono_ns: self.0,
            unix_ns: 1_700_000_000_000_000_000 + self.0,
        }
    }

    pub fn advance_ms(&mut self, ms: u64) -> Time {
        self.0 += ms * 1_000_000;
        self.now()
    }
}

/// Run `node` until it blocks or ends (at most `limit` calls).
pub fn run_until_quiet(node: &mut Node, clock: &Clock, limit: usize) -> (Ran, Vec<Effect>) {
    let (ran, effects) = run_slices(node, clock, limit);
    assert_ne!(ran, Ran::Busy, "still busy after {limit} calls");
    (ran, effects)
}

/// Run `node` for at most `calls` calls, until it is not busy.
pub fn run_slices(node: &mut Node, clock: &Clock, calls: usize) -> (Ran, Vec<Effect>) {
    let mut effects = Vec::new();
    let mut ran = Ran::Busy;
    for _ in 0..calls {
        let time = clock.now();
        ran = node.run(&mut || time).expect("run");
        effects.extend(node.take_effects());
        if ran != Ran::Busy {
            break;
        }
    }
    (ran, effects)
}

pub fn console_of(effects: &[Effect]) -> Vec<u8> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Console { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

pub fn sent(effects: Vec<Effect>) -> Vec<Message> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}
