//! Linux on ftvm against QEMU `virt` (plain TCG), same kernel, initramfs
//! and command line, in one run: time from process start to the guest's
//! init, time of a CPU-bound command in the guest (32 MiB from /dev/zero
//! through md5sum), time of a process-heavy one (a shell loop starting 600
//! short programs, as package installs and service starts do: much code,
//! each run briefly), and the peak RSS of the process beyond guest RAM.
//!
//! Run with `cargo bench -p ftvm --bench linux` after `scripts/guest-image`.
//! `FTVM_BENCH_RUNS` sets the runs per engine (default 3; medians).
//! `FTVM_BENCH_BASELINE=/path/to/ftvm` adds the same ftvm rows run with
//! that binary (`ftvm baseline (...)`), e.g. a build of the code before a
//! change, to compare the two in one run.
//!
//! Times are taken on the host, from the console lines the guest's init
//! prints (`ftvm: init ready`, `ftvm_cmd exit`), the same way for ftvm and
//! QEMU.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use support::{
    Better, bench_baseline, bench_runs, ftvm_bin, image_dir, median, qemu_available,
    qemu_virt_args, report,
};

const MEMORY_MIB: u64 = 128;
const WORK: &str = "dd if=/dev/zero bs=1M count=32 2>/dev/null | md5sum";
/// Printed between the two commands. The kernel echoes its command line,
/// which holds this too, so only a line after the init's counts.
const SPLIT: &str = "ftvm-bench-split";
const PROCESSES: &str = "i=0; while [ $i -lt 300 ]; do ls -l /bin > /dev/null; \
                         grep -c hart /proc/cpuinfo > /dev/null; i=$((i+1)); done";

struct Sample {
    boot_s: f64,
    work_s: f64,
    processes_s: f64,
    peak_rss_kib: Option<u64>,
}

/// Run `argv` under GNU time (for the peak RSS, when it is installed) and
/// time the init and command lines on its console.
fn sample(argv: &[String]) -> Sample {
    let gnu_time = std::path::Path::new("/usr/bin/time").is_file();
    let mut cmd = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "peak-rss-kib %M"]).args(argv);
        c
    } else {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the engine");
    let stdout = child.stdout.take().expect("piped stdout");
    let (mut ready, mut split, mut done) = (None, None, None);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.contains("ftvm: init ready") {
            ready = Some(start.elapsed());
        }
        if ready.is_some() && line.contains(SPLIT) {
            split = Some(start.elapsed());
        }
        if line.contains("ftvm_cmd exit") {
            done = Some(start.elapsed());
        }
    }
    let out = child.wait_with_output().expect("engine ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (Some(ready), Some(split), Some(done)) = (ready, split, done) else {
        panic!("{} did not reach init and finish: {stderr}", argv[0]);
    };
    Sample {
        boot_s: ready.as_secs_f64(),
        work_s: (split - ready).as_secs_f64(),
        processes_s: (done - split).as_secs_f64(),
        peak_rss_kib: stderr
            .lines()
            .find_map(|l| l.strip_prefix("peak-rss-kib "))
            .and_then(|v| v.trim().parse().ok()),
    }
}

fn main() {
    let Some(runs) = bench_runs() else {
        return;
    };
    let dir = image_dir();
    assert!(
        dir.join("Image").is_file(),
        "run scripts/guest-image first ({} is missing)",
        dir.join("Image").display()
    );
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let append = format!("console=ttyS0 ftvm_cmd=\"{WORK}; echo {SPLIT}; {PROCESSES}\"");
    let ftvm = |ftvm: &std::path::Path, engine: &str| -> Vec<String> {
        [
            ftvm.to_string_lossy().as_ref(),
            "run",
            "--engine",
            engine,
            "--memory",
            &MEMORY_MIB.to_string(),
            "--bios",
            &path("fw_dynamic.bin"),
            "--kernel",
            &path("Image"),
            "--initrd",
            &path("initramfs.cpio.gz"),
            "--append",
            &append,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut engines: Vec<(&str, Vec<String>)> = vec![
        ("ftvm (translator)", ftvm(&ftvm_bin(), "translator")),
        ("ftvm (interpreter)", ftvm(&ftvm_bin(), "interpreter")),
    ];
    if let Some(baseline) = bench_baseline() {
        engines.push(("ftvm baseline (translator)", ftvm(&baseline, "translator")));
        engines.push((
            "ftvm baseline (interpreter)",
            ftvm(&baseline, "interpreter"),
        ));
    }
    if qemu_available() {
        let mut qemu = vec!["qemu-system-riscv64".to_string()];
        qemu.extend(qemu_virt_args(MEMORY_MIB));
        qemu.extend([
            "-bios".to_string(),
            path("fw_dynamic.bin"),
            "-kernel".to_string(),
            path("Image"),
            "-initrd".to_string(),
            path("initramfs.cpio.gz"),
            "-append".to_string(),
            append,
        ]);
        engines.push(("qemu TCG", qemu));
    }

    println!(
        "guest: default Linux guest, {MEMORY_MIB} MiB; command: {WORK}; processes: {PROCESSES}; \
         {runs} runs, median"
    );
    println!(
        "{:<28} {:>10} {:>8} {:>10} {:>8} {:>12} {:>8} {:>12}",
        "engine", "boot s", "ratio", "command s", "ratio", "processes s", "ratio", "RSS-RAM MiB"
    );
    let mut base: Option<(f64, f64, f64)> = None;
    for (name, argv) in &engines {
        let samples: Vec<Sample> = (0..runs).map(|_| sample(argv)).collect();
        let boot = median(samples.iter().map(|s| s.boot_s).collect());
        let work = median(samples.iter().map(|s| s.work_s).collect());
        let processes = median(samples.iter().map(|s| s.processes_s).collect());
        let rss = samples.iter().filter_map(|s| s.peak_rss_kib).max();
        let (b0, w0, p0) = *base.get_or_insert((boot, work, processes));
        let beyond = rss.map_or("-".to_string(), |kib| {
            format!("{:.1}", kib as f64 / 1024.0 - MEMORY_MIB as f64)
        });
        println!(
            "{:<28} {:>10.3} {:>7.2}x {:>10.3} {:>7.2}x {:>12.3} {:>7.2}x {:>12}",
            name,
            boot,
            boot / b0,
            work,
            work / w0,
            processes,
            processes / p0,
            beyond
        );
        if *name == "qemu TCG" {
            let peer = |value| ("QEMU TCG", value);
            report("linux", "boot to init", "s", Better::Lower, b0, peer(boot));
            report(
                "linux",
                "dd | md5sum 32 MiB",
                "s",
                Better::Lower,
                w0,
                peer(work),
            );
            report(
                "linux",
                "600 short processes",
                "s",
                Better::Lower,
                p0,
                peer(processes),
            );
        }
    }
    println!("(ratio = engine time / ftvm translator time; RSS-RAM = peak RSS minus guest RAM,");
    println!(" negative when the guest leaves part of its RAM untouched)");
}
