//! The cost of a checkpoint's digest: `Machine::digest`, which rehashes
//! only the pages written since the last one, against hashing the whole of
//! RAM (what the digest did before it kept a hash tree), at 128 MiB and
//! 1 GiB, with 0, 100 and 1000 pages written in between.
//!
//! Run with `cargo bench -p ftvm-board --bench digest`; `FTVM_BENCH_RUNS`
//! sets the runs per row (default 5; the median is reported).

// A benchmark is the host measuring the pure crate: it reads the clock and
// writes its result file.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use ftvm_board::{Engine, Firmware, Image, Machine, MachineConfig};

fn machine(memory_mib: u64) -> Machine {
    let config = MachineConfig {
        memory_mib,
        firmware: Firmware::None,
        // j . (the machine never runs here)
        kernel: Image::new("spin.img", 0x0000_006fu32.to_le_bytes().to_vec()),
        initrd: None,
        append: String::new(),
        insns_per_tick: 10,
        engine: Engine::default(),
        virtio: Vec::new(),
    };
    match Machine::new(&config) {
        Ok(machine) => machine,
        Err(e) => panic!("machine of {memory_mib} MiB: {e}"),
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The row for `scripts/bench`'s summary (a JSON line appended to the file
/// `FTVM_BENCH_JSON` names, as the `ftvm` package's benches write them).
fn report(memory_mib: u64, written: u64, digest: Duration, whole: Duration) {
    let Some(path) = std::env::var_os("FTVM_BENCH_JSON") else {
        return;
    };
    let (ms, peer_ms) = (digest.as_secs_f64() * 1e3, whole.as_secs_f64() * 1e3);
    let line = format!(
        "{{\"advantage\":{},\"bench\":\"digest\",\"better\":\"lower\",\"ftvm\":{ms},\
         \"measure\":\"checkpoint digest, {memory_mib} MiB, {written} pages written\",\
         \"peer\":\"BLAKE3 of all RAM\",\"peer_value\":{peer_ms},\"unit\":\"ms\"}}\n",
        peer_ms / ms
    );
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, line.as_bytes()));
    if let Err(e) = appended {
        panic!("FTVM_BENCH_JSON={}: {e}", path.to_string_lossy());
    }
}

fn main() {
    let runs: usize = std::env::var("FTVM_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5)
        .max(1);
    println!("{runs} runs per row, median");
    println!(
        "{:>8} {:>14} {:>16} {:>16} {:>10}",
        "RAM", "pages written", "digest ms", "whole RAM ms", "ratio"
    );
    for memory_mib in [128u64, 1024] {
        let mut m = machine(memory_mib);
        m.digest(); // the first digest hashes every page
        let base = 0x8000_0000u64;
        let pages = memory_mib << 8;
        for written in [0u64, 100, 1000] {
            let mut incremental = Vec::new();
            let mut whole = Vec::new();
            for run in 0..runs as u64 {
                for i in 0..written {
                    // Spread over RAM, a different set each run.
                    let page = (i * 7919 + run * 104_729) % pages;
                    let at = base + page * 4096 + 64;
                    if let Err(e) = m.hart_mut().ram_mut().write(at, &run.to_le_bytes()) {
                        panic!("write at {at:#x}: {e}");
                    }
                }
                let start = Instant::now();
                std::hint::black_box(m.digest());
                incremental.push(start.elapsed());
                let start = Instant::now();
                std::hint::black_box(blake3::hash(m.hart().ram().bytes()));
                whole.push(start.elapsed());
            }
            let (a, b) = (median(incremental), median(whole));
            report(memory_mib, written, a, b);
            println!(
                "{:>5} MiB {:>14} {:>16.3} {:>16.3} {:>9.3}x",
                memory_mib,
                written,
                a.as_secs_f64() * 1e3,
                b.as_secs_f64() * 1e3,
                a.as_secs_f64() / b.as_secs_f64()
            );
        }
    }
    println!("(ratio = digest / whole-RAM hash; below 1 is cheaper)");
}
