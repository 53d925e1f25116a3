//! CPU speed: the same CPU-bound bare-metal program (`guest/bench`) on
//! ftvm (both engines), on QEMU `virt` with plain TCG, and on QEMU in deterministic record
//! mode (`-icount shift=auto,rr=record`), in one run, as guest MIPS and
//! ratios.
//!
//! Run with `cargo bench -p ftvm --bench cpu`. `FTVM_BENCH_RUNS` sets the
//! number of runs per engine (default 3; the median is reported).
//! `FTVM_BENCH_BASELINE=/path/to/ftvm` adds the same ftvm rows run with
//! that binary (`ftvm baseline (...)`), e.g. a build of the code before a
//! change, to compare the two in one run.
//!
//! Every engine runs as a process from start to power-off. Start-up cost is
//! measured on a trivial program (`guest/empty`) and subtracted, so the
//! figure is execution speed. The instruction count is ftvm's exact icount;
//! QEMU executes the same instruction stream (plus a 5-instruction reset
//! trampoline).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use support::{
    Better, Finished, bench_baseline, bench_runs, ftvm_run, ftvm_run_with, guest_elf, median,
    parse_digest, qemu_available, qemu_run, report,
};

const LIMIT: Duration = Duration::from_secs(600);

struct Engine {
    name: &'static str,
    run: Box<dyn Fn(&Path) -> Finished>,
}

fn timed(engine: &Engine, elf: &Path, runs: usize) -> f64 {
    median(
        (0..runs)
            .map(|_| {
                let finished = (engine.run)(elf);
                assert_eq!(
                    finished.code,
                    Some(0),
                    "{} failed on {}: {}",
                    engine.name,
                    elf.display(),
                    finished.stderr
                );
                finished.elapsed.as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    let Some(runs) = bench_runs() else {
        return;
    };
    let bench = guest_elf("bench");
    let empty = guest_elf("empty");

    let probe = ftvm_run(&bench, &["--digest"], LIMIT);
    assert_eq!(
        probe.code,
        Some(0),
        "ftvm failed on bench: {}",
        probe.stderr
    );
    let (icount, _) = parse_digest(&probe.stderr);
    let checksum = probe.stdout_text();

    let rr_file = std::env::temp_dir().join(format!("ftvm-bench-{}.rr", std::process::id()));
    let rr_arg = format!("shift=auto,rr=record,rrfile={}", rr_file.display());
    let mut engines = vec![
        Engine {
            name: "ftvm (translator)",
            run: Box::new(|elf| ftvm_run(elf, &["--engine", "translator"], LIMIT)),
        },
        Engine {
            name: "ftvm (interpreter)",
            run: Box::new(|elf| ftvm_run(elf, &["--engine", "interpreter"], LIMIT)),
        },
    ];
    if let Some(baseline) = bench_baseline() {
        let out = ftvm_run_with(&baseline, &bench, &[], LIMIT);
        assert_eq!(
            out.stdout_text(),
            checksum,
            "the baseline {} and this ftvm disagree on the bench program's output: {}",
            baseline.display(),
            out.stderr
        );
        for (name, engine) in [
            ("ftvm baseline (translator)", "translator"),
            ("ftvm baseline (interpreter)", "interpreter"),
        ] {
            let baseline = baseline.clone();
            engines.push(Engine {
                name,
                run: Box::new(move |elf| {
                    ftvm_run_with(&baseline, elf, &["--engine", engine], LIMIT)
                }),
            });
        }
    }
    if qemu_available() {
        let qemu_out = qemu_run(&bench, &[], LIMIT);
        assert_eq!(
            qemu_out.stdout_text(),
            checksum,
            "QEMU and ftvm disagree on the bench program's output"
        );
        engines.push(Engine {
            name: "qemu TCG",
            run: Box::new(|elf| qemu_run(elf, &[], LIMIT)),
        });
        engines.push(Engine {
            name: "qemu record (-icount rr=record)",
            run: Box::new(move |elf| qemu_run(elf, &["-icount", &rr_arg], LIMIT)),
        });
    } else {
        eprintln!("qemu-system-riscv64 not found: measuring ftvm only");
    }

    println!("guest program: guest/bench ({icount} instructions), {runs} runs per engine, median");
    println!(
        "{:<34} {:>10} {:>10} {:>12} {:>12}",
        "engine", "total s", "start-up s", "guest MIPS", "ftvm ratio"
    );
    let mut ftvm_mips = None;
    for engine in &engines {
        let total = timed(engine, &bench, runs);
        let startup = timed(engine, &empty, runs);
        let mips = icount as f64 / (total - startup).max(1e-9) / 1e6;
        let base = *ftvm_mips.get_or_insert(mips);
        println!(
            "{:<34} {:>10.3} {:>10.3} {:>12.1} {:>11.2}x",
            engine.name,
            total,
            startup,
            mips,
            base / mips
        );
        let peer = match engine.name {
            "qemu TCG" => Some("QEMU TCG"),
            name if name.starts_with("qemu record") => Some("QEMU record mode"),
            _ => None,
        };
        if let Some(peer) = peer {
            let measure = "guest/bench, CPU-bound (guest MIPS)";
            report("cpu", measure, "MIPS", Better::Higher, base, (peer, mips));
        }
    }
    println!("(ftvm ratio = ftvm translator MIPS / engine MIPS; above 1 means ftvm is faster)");
    let _ = std::fs::remove_file(&rr_file);
}
