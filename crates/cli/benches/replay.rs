//! Record and replay: what `ftvm run --record` writes and what replaying
//! it costs, on the default Linux guest (Linux + busybox on OpenSBI,
//! 128 MiB), against QEMU's own deterministic record/replay
//! (`-icount shift=auto,rr=record`) for the same kernel, initramfs and
//! command line. Five tables, in one run:
//!
//! 1. log bandwidth of a boot to power-off (`ftvm_cmd="true"`): log bytes,
//!    run seconds, bytes/s and Mbit/s, for ftvm's log and QEMU's rr file;
//! 2. an idle guest: `ftvm_cmd="sleep 10"` minus `ftvm_cmd="true"`, the log
//!    bytes the idle 10 s add, as bit/s (with the VMware FT paper's figure
//!    for idle guests as a reference); for ftvm also the log's growth
//!    measured inside the run, between `ftvm: init ready` and `ftvm_cmd
//!    exit`;
//! 3. network load: the guest downloads 32 MiB from an HTTP server thread of
//!    this bench through the user-mode network (`wget` to 10.0.2.2); log
//!    Mbit/s over the run and during the download (the log file's growth
//!    between two console lines), beside the payload rate;
//! 4. recording overhead: the CPU-bound command of `benches/linux.rs`
//!    (32 MiB from /dev/zero through md5sum) without and with `--record`,
//!    whole process and command alone (checkpoints, a digest of guest RAM
//!    every second, are part of the cost);
//! 5. replay against recording wall time for the logs of 4, 3, 2 and 1 (and
//!    QEMU replaying its rr files of 1 and 2). ftvm's replay skips the
//!    guest's idle sleeps, QEMU's does not.
//!
//! Every ftvm replay must exit 0, end at the recording's icount with its
//! final state digest, and print (`--console`) the recording's console
//! byte for byte; every QEMU replay must print QEMU's recorded console. The
//! bench panics otherwise, keeping the log and naming the commands that
//! reproduce it.
//!
//! Run with `cargo bench -p ftvm --bench replay` after `scripts/guest-image`.
//! `FTVM_BENCH_RUNS` sets the runs per measurement (default 3; medians of
//! each column). QEMU rows are left out when `qemu-system-riscv64` is
//! missing.
//!
//! Times are wall-clock times on the host, of the whole process or between
//! console lines the guest's init prints, measured the same way for ftvm
//! and QEMU.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    Scratch, bench_runs, drain, ftvm_bin, image_dir, median, parse_digest, qemu_available,
    qemu_default_guest, wait_or_kill,
};

/// Longest any one process may take.
const LIMIT: Duration = Duration::from_secs(600);
const MEMORY_MIB: u64 = 128;
/// The CPU-bound command of `benches/linux.rs`.
const WORK: &str = "dd if=/dev/zero bs=1M count=32 2>/dev/null | md5sum";
const IDLE_S: u64 = 10;
const DOWNLOAD_BYTES: usize = 32 << 20;
const READY: &str = "ftvm: init ready";
const EXIT: &str = "ftvm_cmd exit";
const DL_START: &str = "download-start";
const DL_DONE: &str = "download-done";
/// The VMware FT paper (Scales, Nelson, Venkitachalam, 2010), logging
/// bandwidth of idle guests.
const PAPER_IDLE: &str = "VMware FT paper (Scales et al. 2010): idle guests log 0.5-1.5 Mbit/s";

/// A finished process, its console, and when marker lines appeared on it.
struct Timed {
    code: Option<i32>,
    console: Vec<u8>,
    stderr: String,
    wall_s: f64,
    /// For each marker seen: seconds since the start, and the size of the
    /// watched file at that moment (0 without one).
    marks: Vec<(&'static str, f64, u64)>,
}

impl Timed {
    fn mark(&self, marker: &str) -> Option<(f64, u64)> {
        self.marks
            .iter()
            .find(|(m, _, _)| *m == marker)
            .map(|&(_, t, size)| (t, size))
    }

    /// Seconds between two markers.
    fn between(&self, from: &str, to: &str) -> Option<f64> {
        Some(self.mark(to)?.0 - self.mark(from)?.0)
    }

    fn console_text(&self) -> String {
        String::from_utf8_lossy(&self.console).replace('\r', "")
    }
}

fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains([' ', '"', '|', '>', ';']) {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    words.join(" ")
}

/// Run `cmd` to its end (at most [`LIMIT`]), stdin closed, timing the
/// first console line holding each of `markers` and sampling the size of
/// `watch` then.
fn run_timed(mut cmd: Command, markers: &[&'static str], watch: Option<&Path>) -> Timed {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", describe(&cmd)));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr_reader = drain(child.stderr.take().expect("piped stderr"));
    let markers = markers.to_vec();
    let watch = watch.map(Path::to_path_buf);
    let console_reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let (mut console, mut line, mut marks) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                break;
            }
            let at = start.elapsed().as_secs_f64();
            let text = String::from_utf8_lossy(&line);
            for &marker in &markers {
                if text.contains(marker) && !marks.iter().any(|&(m, _, _)| m == marker) {
                    let size = watch
                        .as_deref()
                        .and_then(|w| std::fs::metadata(w).ok())
                        .map_or(0, |m| m.len());
                    marks.push((marker, at, size));
                }
            }
            console.extend_from_slice(&line);
        }
        (console, marks)
    });
    let (status, killed) = wait_or_kill(&mut child, LIMIT);
    let wall_s = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&stderr_reader.join().unwrap_or_default()).into_owned();
    if killed {
        panic!("{} did not end within {LIMIT:?}: {stderr}", describe(&cmd));
    }
    let (console, marks) = console_reader.join().expect("console reader");
    Timed {
        code: status.code(),
        console,
        stderr,
        wall_s,
        marks,
    }
}

fn append(guest_cmd: &str) -> String {
    format!("console=ttyS0 ftvm_cmd=\"{guest_cmd}\"")
}

/// `ftvm run` on the default guest running `guest_cmd`, plus `extra`.
fn ftvm_run(guest_cmd: &str, extra: &[String]) -> Command {
    let mut cmd = Command::new(ftvm_bin());
    cmd.env("FTVM_GUEST_IMAGE", image_dir())
        .args(["run", "--memory", &MEMORY_MIB.to_string(), "--append"])
        .arg(append(guest_cmd))
        .args(extra);
    cmd
}

/// The guest's command ended with status 0 and the process with 0.
fn check_ran(what: &str, timed: &Timed) {
    let console = timed.console_text();
    assert!(
        timed.code == Some(0) && console.contains(&format!("{EXIT} 0\n")),
        "{what} failed (exit {:?}):\n{console}\n{}",
        timed.code,
        timed.stderr
    );
}

/// A recording made by `ftvm run --record`.
struct Recording {
    run: Timed,
    log: PathBuf,
    bytes: u64,
    icount: u64,
    digest: String,
    command: String,
}

fn record(
    scratch: &Scratch,
    name: &str,
    guest_cmd: &str,
    extra: &[String],
    markers: &[&'static str],
) -> Recording {
    let log = scratch.file(&format!("{name}.log"));
    let mut args = extra.to_vec();
    args.extend(["--record".to_string(), log.to_string_lossy().into_owned()]);
    let cmd = ftvm_run(guest_cmd, &args);
    let command = describe(&cmd);
    let run = run_timed(cmd, markers, Some(&log));
    check_ran(&command, &run);
    let (icount, digest) = parse_digest(&run.stderr);
    let bytes = std::fs::metadata(&log)
        .unwrap_or_else(|e| panic!("no log {} after {command}: {e}", log.display()))
        .len();
    Recording {
        run,
        log,
        bytes,
        icount,
        digest,
        command,
    }
}

/// What a replay printed that must match its recording.
fn replay_mismatch(rec: &Recording, replay: &Timed) -> Option<String> {
    if replay.code != Some(0) {
        return Some(format!("exit code {:?}", replay.code));
    }
    let digest = replay
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("final state digest: "))
        .map(str::trim);
    if digest != Some(rec.digest.as_str()) {
        return Some(format!(
            "final state digest {digest:?}, recorded {}",
            rec.digest
        ));
    }
    let icount: Option<u64> = replay
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("ftvm: replayed "))
        .and_then(|l| l.split_once(" to icount "))
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    if icount != Some(rec.icount) {
        return Some(format!(
            "replayed to icount {icount:?}, recorded {}",
            rec.icount
        ));
    }
    if replay.console != rec.run.console {
        return Some(format!(
            "console differs ({} bytes replayed, {} recorded)",
            replay.console.len(),
            rec.run.console.len()
        ));
    }
    None
}

/// `ftvm replay --console` of a recording, checked against it, timing
/// `markers` on its console like [`run_timed`]. On a
/// mismatch the log is kept in the temporary directory and the panic
/// names the commands that reproduce it.
fn replay(rec: &Recording, markers: &[&'static str]) -> Timed {
    let mut cmd = Command::new(ftvm_bin());
    cmd.args(["replay", "--console"]).arg(&rec.log);
    let command = describe(&cmd);
    let timed = run_timed(cmd, markers, None);
    if let Some(problem) = replay_mismatch(rec, &timed) {
        let name = rec.log.file_name().unwrap_or_default().to_string_lossy();
        let kept = std::env::temp_dir().join(format!(
            "ftvm-replay-bench-failed-{}-{name}",
            std::process::id()
        ));
        let kept = match std::fs::copy(&rec.log, &kept) {
            Ok(_) => format!("log kept as {}", kept.display()),
            Err(e) => format!("could not keep the log: {e}"),
        };
        panic!(
            "replay did not reproduce the recording: {problem}\n\
             recorded with: {}\nreplayed with: {command}\n{kept}\n\
             recording stderr:\n{}\nreplay stderr:\n{}",
            rec.command, rec.run.stderr, timed.stderr
        );
    }
    timed
}

/// `qemu-system-riscv64` on the same kernel, initramfs and command line in
/// deterministic record or replay mode (`rr` = `record` or `replay`).
fn qemu_rr(guest_cmd: &str, rr: &str, rr_file: &Path) -> Command {
    let mut cmd = qemu_default_guest(MEMORY_MIB, &append(guest_cmd));
    cmd.args(["-nic", "none"])
        .arg("-icount")
        .arg(format!("shift=auto,rr={rr},rrfile={}", rr_file.display()));
    cmd
}

/// QEMU recording then replaying `guest_cmd`: (rr file bytes, record s,
/// replay s). The replay must print the recorded console.
fn qemu_record_replay(scratch: &Scratch, name: &str, guest_cmd: &str) -> (u64, f64, f64) {
    let rr_file = scratch.file(&format!("{name}.rr"));
    let cmd = qemu_rr(guest_cmd, "record", &rr_file);
    let command = describe(&cmd);
    let recorded = run_timed(cmd, &[], None);
    check_ran(&command, &recorded);
    let bytes = std::fs::metadata(&rr_file)
        .unwrap_or_else(|e| panic!("no rr file after {command}: {e}"))
        .len();
    let cmd = qemu_rr(guest_cmd, "replay", &rr_file);
    let replay_command = describe(&cmd);
    let replayed = run_timed(cmd, &[], None);
    assert!(
        replayed.code == Some(0) && replayed.console == recorded.console,
        "QEMU's replay did not reproduce its recording (exit {:?})\n\
         recorded with: {command}\nreplayed with: {replay_command}\n\
         recorded console:\n{}\nreplayed console:\n{}\n{}",
        replayed.code,
        recorded.console_text(),
        replayed.console_text(),
        replayed.stderr
    );
    let _ = std::fs::remove_file(&rr_file);
    (bytes, recorded.wall_s, replayed.wall_s)
}

/// An HTTP server on the host's loopback answering every request with
/// `size` pseudo-random bytes (incompressible, as real traffic would be);
/// returns its port. Its thread lives as long as the bench.
fn start_server(size: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP server");
    let port = listener.local_addr().expect("server address").port();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let body: Arc<Vec<u8>> = Arc::new(
        (0..size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect(),
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            )
            .and_then(|()| stream.write_all(&body));
        }
    });
    port
}

fn mbit(bytes: f64, seconds: f64) -> f64 {
    bytes * 8.0 / seconds / 1e6
}

fn med(samples: &[f64]) -> f64 {
    median(samples.to_vec())
}

fn col<T>(rows: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(rows.iter().map(f).collect())
}

/// One run of everything.
struct Sample {
    boot_bytes: f64,
    boot_s: f64,
    boot_replay_s: f64,
    idle_bytes: f64,
    idle_s: f64,
    idle_replay_s: f64,
    /// Log growth and seconds between `init ready` and `ftvm_cmd exit` of
    /// the idle run.
    idle_window_bytes: f64,
    idle_window_s: f64,
    /// QEMU: (boot rr bytes, record s, replay s), the same for idle.
    qemu_boot: Option<(f64, f64, f64)>,
    qemu_idle: Option<(f64, f64, f64)>,
    net_bytes: f64,
    net_s: f64,
    net_replay_s: f64,
    net_replay_download_s: f64,
    download_s: f64,
    download_log_bytes: f64,
    plain_s: f64,
    plain_work_s: f64,
    work_bytes: f64,
    work_s: f64,
    work_work_s: f64,
    work_replay_s: f64,
    work_replay_work_s: f64,
}

fn one_run(scratch: &Scratch, port: u16, qemu: bool) -> Sample {
    // 1 and 2: a boot to power-off, and one that idles for IDLE_S first.
    let boot = record(scratch, "boot", "true", &[], &[]);
    let boot_replay = replay(&boot, &[]);
    let idle_cmd = format!("sleep {IDLE_S}");
    let idle = record(scratch, "idle", &idle_cmd, &[], &[READY, EXIT]);
    let idle_replay = replay(&idle, &[]);
    let (ready, exit) = (
        idle.run.mark(READY).expect("idle run: init ready"),
        idle.run.mark(EXIT).expect("idle run: command exit"),
    );
    let (qemu_boot, qemu_idle) = if qemu {
        let as_f64 = |(b, r, p): (u64, f64, f64)| (b as f64, r, p);
        (
            Some(as_f64(qemu_record_replay(scratch, "qemu-boot", "true"))),
            Some(as_f64(qemu_record_replay(scratch, "qemu-idle", &idle_cmd))),
        )
    } else {
        (None, None)
    };

    // 3: a download from the host through the user-mode network.
    // The markers are spelt through a variable: the command itself is on
    // the console too, in the kernel's command line.
    let download = format!(
        "m=download; echo $m-start; wget -q -O /dev/null http://10.0.2.2:{port}/big && echo $m-done"
    );
    let net = record(
        scratch,
        "net",
        &download,
        &["--net".to_string(), "user".to_string()],
        &[DL_START, DL_DONE],
    );
    let net_replay = replay(&net, &[DL_START, DL_DONE]);
    let (dl_start, dl_done) = (
        net.run.mark(DL_START).expect("network run: download start"),
        net.run.mark(DL_DONE).expect("network run: download end"),
    );

    // 4: the CPU-bound command without and with recording.
    let plain_cmd = ftvm_run(WORK, &[]);
    let plain_command = describe(&plain_cmd);
    let plain = run_timed(plain_cmd, &[READY, EXIT], None);
    check_ran(&plain_command, &plain);
    let work = record(scratch, "work", WORK, &[], &[READY, EXIT]);
    let work_replay = replay(&work, &[READY, EXIT]);
    let window = |t: &Timed| t.between(READY, EXIT).expect("init ready and command exit");

    let sample = Sample {
        boot_bytes: boot.bytes as f64,
        boot_s: boot.run.wall_s,
        boot_replay_s: boot_replay.wall_s,
        idle_bytes: idle.bytes as f64,
        idle_s: idle.run.wall_s,
        idle_replay_s: idle_replay.wall_s,
        idle_window_bytes: exit.1.saturating_sub(ready.1) as f64,
        idle_window_s: exit.0 - ready.0,
        qemu_boot,
        qemu_idle,
        net_bytes: net.bytes as f64,
        net_s: net.run.wall_s,
        net_replay_s: net_replay.wall_s,
        net_replay_download_s: net_replay
            .between(DL_START, DL_DONE)
            .expect("network replay: download start and end"),
        download_s: dl_done.0 - dl_start.0,
        download_log_bytes: dl_done.1.saturating_sub(dl_start.1) as f64,
        plain_s: plain.wall_s,
        plain_work_s: window(&plain),
        work_bytes: work.bytes as f64,
        work_s: work.run.wall_s,
        work_work_s: window(&work.run),
        work_replay_s: work_replay.wall_s,
        work_replay_work_s: window(&work_replay),
    };
    for rec in [&boot, &idle, &net, &work] {
        let _ = std::fs::remove_file(&rec.log);
    }
    sample
}

fn main() {
    let Some(runs) = bench_runs() else {
        return;
    };
    let dir = image_dir();
    assert!(
        dir.join("Image").is_file() && dir.join("initramfs.cpio.gz").is_file(),
        "run scripts/guest-image first ({} is missing)",
        dir.join("Image").display()
    );
    let qemu = qemu_available();
    let qemu_version = if qemu {
        support::qemu_version()
    } else {
        "not installed: QEMU rows left out".to_string()
    };
    let scratch = Scratch::new("replay-bench");
    let port = start_server(DOWNLOAD_BYTES);
    let samples: Vec<Sample> = (0..runs).map(|_| one_run(&scratch, port, qemu)).collect();
    let s = &samples;

    println!(
        "guest: default Linux guest, {MEMORY_MIB} MiB, --clock host, checkpoint every 1 s; \
         runs: {runs}, medians"
    );
    println!(
        "qemu: {qemu_version}; -icount shift=auto,rr=record,rrfile=FILE -nic none \
         (replayed with rr=replay)"
    );
    println!("every ftvm replay: exit 0, same icount, final state digest and console as recorded");

    println!();
    println!("1. log bandwidth, boot to power-off (ftvm_cmd=\"true\")");
    println!(
        "{:<14} {:>12} {:>8} {:>12} {:>10}",
        "engine", "log bytes", "run s", "bytes/s", "Mbit/s"
    );
    let row = |name: &str, bytes: f64, secs: f64| {
        println!(
            "{name:<14} {bytes:>12.0} {secs:>8.2} {:>12.0} {:>10.4}",
            bytes / secs,
            mbit(bytes, secs)
        );
    };
    let boot_bytes = col(s, |x| x.boot_bytes);
    row("ftvm", boot_bytes, col(s, |x| x.boot_s));
    let qemu_col = |f: fn(&Sample) -> Option<(f64, f64, f64)>, i: usize| -> Option<f64> {
        let v: Vec<f64> = s.iter().filter_map(f).map(|t| [t.0, t.1, t.2][i]).collect();
        (!v.is_empty()).then(|| med(&v))
    };
    let q_boot = |i| qemu_col(|x| x.qemu_boot, i);
    let q_idle = |i| qemu_col(|x| x.qemu_idle, i);
    if let (Some(bytes), Some(secs)) = (q_boot(0), q_boot(1)) {
        row("qemu rr", bytes, secs);
        println!("QEMU/ftvm log bytes: {:.1}x", bytes / boot_bytes);
    }

    println!();
    println!("2. idle guest: ftvm_cmd=\"sleep {IDLE_S}\" minus ftvm_cmd=\"true\"");
    println!(
        "{:<14} {:>12} {:>12} {:>12} {:>12}",
        "engine", "true bytes", "sleep bytes", "idle bytes", "idle bit/s"
    );
    let idle_row = |name: &str, base: f64, idle: f64| {
        println!(
            "{name:<14} {base:>12.0} {idle:>12.0} {:>12.0} {:>12.0}",
            idle - base,
            (idle - base) * 8.0 / IDLE_S as f64
        );
    };
    idle_row("ftvm", boot_bytes, col(s, |x| x.idle_bytes));
    if let (Some(base), Some(idle)) = (q_boot(0), q_idle(0)) {
        idle_row("qemu rr", base, idle);
    }
    let (window_bytes, window_s) = (col(s, |x| x.idle_window_bytes), col(s, |x| x.idle_window_s));
    println!(
        "ftvm in-run: the log grew {window_bytes:.0} bytes in the {window_s:.2} s between \
         `{READY}` and `{EXIT}` = {:.0} bit/s",
        window_bytes * 8.0 / window_s
    );
    println!("reference: {PAPER_IDLE}");

    println!();
    println!(
        "3. network load: guest wget of {} MiB from a host HTTP server (--net user)",
        DOWNLOAD_BYTES >> 20
    );
    let (net_bytes, net_s) = (col(s, |x| x.net_bytes), col(s, |x| x.net_s));
    let (dl_s, dl_log) = (col(s, |x| x.download_s), col(s, |x| x.download_log_bytes));
    println!(
        "{:<26} {:>12} {:>10} {:>10} {:>10}",
        "", "bytes", "seconds", "MiB/s", "Mbit/s"
    );
    let net_row = |name: &str, bytes: f64, secs: f64| {
        println!(
            "{name:<26} {bytes:>12.0} {secs:>10.2} {:>10.2} {:>10.2}",
            bytes / secs / (1 << 20) as f64,
            mbit(bytes, secs)
        );
    };
    net_row("payload (download)", DOWNLOAD_BYTES as f64, dl_s);
    net_row("log (download)", dl_log, dl_s);
    net_row("log (whole run)", net_bytes, net_s);
    println!(
        "log bytes during the download / payload bytes: {:.3}",
        dl_log / DOWNLOAD_BYTES as f64
    );

    println!();
    println!("4. recording overhead: {WORK}");
    println!(
        "{:<14} {:>10} {:>11} {:>12}",
        "mode", "total s", "command s", "log bytes"
    );
    let (plain_s, plain_work) = (col(s, |x| x.plain_s), col(s, |x| x.plain_work_s));
    let (work_s, work_work) = (col(s, |x| x.work_s), col(s, |x| x.work_work_s));
    println!(
        "{:<14} {plain_s:>10.3} {plain_work:>11.3} {:>12}",
        "plain", "-"
    );
    println!(
        "{:<14} {work_s:>10.3} {work_work:>11.3} {:>12.0}",
        "--record",
        col(s, |x| x.work_bytes)
    );
    println!(
        "{:<14} {:>9.3}x {:>10.3}x",
        "ratio",
        work_s / plain_s,
        work_work / plain_work
    );

    println!();
    println!("5. replay against recording (wall time of the whole process)");
    println!(
        "{:<24} {:>10} {:>10} {:>14}",
        "log", "record s", "replay s", "replay/record"
    );
    let replay_row = |name: &str, rec: f64, rep: f64| {
        println!("{name:<24} {rec:>10.3} {rep:>10.3} {:>13.3}x", rep / rec);
    };
    replay_row("CPU-bound (4)", work_s, col(s, |x| x.work_replay_s));
    replay_row(
        "  its command alone",
        work_work,
        col(s, |x| x.work_replay_work_s),
    );
    replay_row("network (3)", net_s, col(s, |x| x.net_replay_s));
    replay_row(
        "  its download alone",
        dl_s,
        col(s, |x| x.net_replay_download_s),
    );
    replay_row(
        &format!("idle sleep {IDLE_S} (2)"),
        col(s, |x| x.idle_s),
        col(s, |x| x.idle_replay_s),
    );
    replay_row(
        "boot (1)",
        col(s, |x| x.boot_s),
        col(s, |x| x.boot_replay_s),
    );
    if let (Some(rec), Some(rep)) = (q_boot(1), q_boot(2)) {
        replay_row("qemu rr boot (1)", rec, rep);
    }
    if let (Some(rec), Some(rep)) = (q_idle(1), q_idle(2)) {
        replay_row(&format!("qemu rr sleep {IDLE_S} (2)"), rec, rep);
    }
    println!("(ftvm's replay skips the guest's idle sleeps; QEMU's replay waits them out)");
}
