//! Linux on ftvm against QEMU `virt` (plain TCG), same kernel, initramfs
//! and command line, in one run: time from process start to the guest's
//! init, time of a CPU-bound command in the guest (32 MiB from /dev/zero
//! through md5sum), time of a process-heavy one (a shell loop starting 600
//! short programs, as package installs and service starts do: much code,
//! each run briefly), and the process's own memory beyond guest RAM.
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
    /// The process's own memory once the commands ran: see [`own_memory`].
    own: Option<OwnMemory>,
}

/// Memory of an engine's process beyond its guest's RAM: everything
/// resident (RSS; the translator's code region, mapped twice, counts
/// twice) and its proportional share (PSS; counted once), minus the
/// mapping that holds guest RAM.
#[derive(Clone, Copy)]
struct OwnMemory {
    rss_mib: f64,
    pss_mib: f64,
}

/// Read from `/proc/PID/smaps`. Guest RAM is the largest anonymous mapping
/// of at least the guest's memory size (ftvm's is a heap allocation of
/// exactly that plus a page, QEMU's an aligned mapping of it).
fn own_memory(pid: u32) -> Option<OwnMemory> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut ram) = ((0u64, 0u64), None::<(u64, u64, u64)>);
    let mut mapping: Option<(u64, bool)> = None; // (size KiB, anonymous)
    let (mut rss, mut pss) = (0u64, 0u64);
    let mut finish = |mapping: Option<(u64, bool)>, rss: u64, pss: u64| {
        total = (total.0 + rss, total.1 + pss);
        if let Some((size, true)) = mapping {
            if size >= MEMORY_MIB << 10 && ram.is_none_or(|(s, _, _)| size > s) {
                ram = Some((size, rss, pss));
            }
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            finish(mapping, rss, pss);
            (rss, pss) = (0, 0);
            let (start, end) = first.split_once('-')?;
            let size = u64::from_str_radix(end, 16).ok()? - u64::from_str_radix(start, 16).ok()?;
            // No path after the inode: anonymous (a [heap] counts too).
            let path = fields.nth(4);
            mapping = Some((size >> 10, path.is_none_or(|p| p == "[heap]")));
        } else if first == "Rss:" {
            rss = fields.next()?.parse().ok()?;
        } else if first == "Pss:" {
            pss = fields.next()?.parse().ok()?;
        }
    }
    finish(mapping, rss, pss);
    let (_, ram_rss, ram_pss) = ram?;
    Some(OwnMemory {
        rss_mib: (total.0 - ram_rss) as f64 / 1024.0,
        pss_mib: (total.1 - ram_pss) as f64 / 1024.0,
    })
}

/// Run `argv`, time the init and command lines on its console, and read
/// its own memory once the commands are done.
fn sample(argv: &[String]) -> Sample {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the engine");
    let stdout = child.stdout.take().expect("piped stdout");
    let (mut ready, mut split, mut done) = (None, None, None);
    let mut own = None;
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
            own = own_memory(child.id());
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
        own,
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
        "{:<28} {:>10} {:>8} {:>10} {:>8} {:>12} {:>8} {:>12} {:>12}",
        "engine",
        "boot s",
        "ratio",
        "command s",
        "ratio",
        "processes s",
        "ratio",
        "own RSS MiB",
        "own PSS MiB"
    );
    let mut base: Option<(f64, f64, f64)> = None;
    let mut ftvm_own = None;
    for (name, argv) in &engines {
        let samples: Vec<Sample> = (0..runs).map(|_| sample(argv)).collect();
        let boot = median(samples.iter().map(|s| s.boot_s).collect());
        let work = median(samples.iter().map(|s| s.work_s).collect());
        let processes = median(samples.iter().map(|s| s.processes_s).collect());
        let own: Vec<OwnMemory> = samples.iter().filter_map(|s| s.own).collect();
        let (own_rss, own_pss) = if own.is_empty() {
            (None, None)
        } else {
            let rss = median(own.iter().map(|o| o.rss_mib).collect());
            (
                Some(rss),
                Some(median(own.iter().map(|o| o.pss_mib).collect())),
            )
        };
        let (b0, w0, p0) = *base.get_or_insert((boot, work, processes));
        let mib = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "{:<28} {:>10.3} {:>7.2}x {:>10.3} {:>7.2}x {:>12.3} {:>7.2}x {:>12} {:>12}",
            name,
            boot,
            boot / b0,
            work,
            work / w0,
            processes,
            processes / p0,
            mib(own_rss),
            mib(own_pss)
        );
        if *name == "ftvm (translator)" {
            ftvm_own = own_rss.zip(own_pss);
        }
        if let (true, Some((rss, pss)), Some(q_rss), Some(q_pss)) =
            (*name == "qemu TCG", ftvm_own, own_rss, own_pss)
        {
            report(
                "linux",
                "own memory beyond guest RAM (RSS)",
                "MiB",
                Better::Lower,
                rss,
                ("QEMU TCG", q_rss),
            );
            report(
                "linux",
                "own memory beyond guest RAM (PSS)",
                "MiB",
                Better::Lower,
                pss,
                ("QEMU TCG", q_pss),
            );
        }
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
    println!("(ratio = engine time / ftvm translator time; own RSS, PSS = the process's memory");
    println!(" beyond the mapping of guest RAM once the commands ran; PSS counts the translator's");
    println!(" code region, mapped twice, once)");
}
