//! `ftvm run --record` and `ftvm replay` end to end: a Linux boot that
//! uses the disk, the network, the RTC and entropy replays to the same
//! console and state, with and without load on the host; an injected
//! divergence is caught at the next checkpoint and traced to its
//! instruction; bad logs fail with one line.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ftvm_board::Input;
use ftvm_replay::{Event, LogReader};
use support::{
    Finished, free_port, ftvm_bin, guest_elf, image_dir, parse_digest, run_limited, spawn_until,
};

const LIMIT: Duration = Duration::from_secs(300);

/// A file of this run in the temporary directory; each test removes its
/// own, so a passing run leaves nothing behind (a folder per run would
/// stay, as no test knows it is the last).
fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ftvm-replay-test-{}-{name}", std::process::id()))
}

fn replay(log: &Path, extra: &[&str]) -> Finished {
    let mut cmd = Command::new(ftvm_bin());
    cmd.arg("replay").arg(log).args(extra);
    run_limited(cmd, LIMIT)
}

/// Busy threads on every core while alive.
struct HostLoad(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl HostLoad {
    fn start() -> HostLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        HostLoad(stop, threads)
    }
}

impl Drop for HostLoad {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

/// How many entries of each kind a log holds.
#[derive(Debug, Default)]
struct Census {
    frames: usize,
    completions_with_data: usize,
    wall_clock: usize,
    checkpoints: usize,
    time_corrections: usize,
}

fn census(log: &Path) -> Census {
    let file = std::fs::File::open(log).expect("log");
    let mut reader = LogReader::open(std::io::BufReader::new(file)).expect("a valid log");
    let mut c = Census::default();
    while let Some(entry) = reader.next().expect("a valid log") {
        match entry.event {
            Event::Input(Input::NetReceive { .. }) => c.frames += 1,
            Event::Input(Input::IoDone { data, .. }) if !data.is_empty() => {
                c.completions_with_data += 1
            }
            Event::Input(Input::WallClock { .. }) => c.wall_clock += 1,
            Event::Input(Input::GuestTimeRate { .. } | Input::GuestTimeStep { .. }) => {
                c.time_corrections += 1
            }
            Event::Checkpoint(_) => c.checkpoints += 1,
            _ => {}
        }
    }
    c
}

/// Record a boot of the default guest that reads the RTC and entropy,
/// reads and writes its disk and serves HTTP requests from the host, then
/// replay it: the same console, byte for byte, and the same final state.
fn record_and_replay_linux(tag: &str) {
    let (log, disk) = (
        scratch(&format!("{tag}.log")),
        scratch(&format!("{tag}.ext4")),
    );
    std::fs::copy(image_dir().join("disk.ext4"), &disk).expect("copy the data disk");
    let port = free_port();
    let cmd = "date; head -c 32 /dev/hwrng | md5sum; ls /mnt; echo written > /mnt/replay.txt; \
               sync; cat /mnt/replay.txt; mkdir -p /www; echo from-the-guest > /www/index.html; \
               httpd -p 80 -h /www; echo httpd-up; sleep 3";
    let mut ftvm = Command::new(ftvm_bin());
    ftvm.env("FTVM_GUEST_IMAGE", image_dir())
        .arg("run")
        .arg("--record")
        .arg(&log)
        .args(["--checkpoint-interval", "0.25", "--disk"])
        .arg(&disk)
        .arg("--net")
        .arg(format!("user,hostfwd=tcp:127.0.0.1:{port}-:80"))
        .arg("--append")
        .arg(format!("console=ttyS0 ftvm_cmd=\"{cmd}\""));
    let (mut child, mut console) = spawn_until(ftvm, "httpd-up");
    // httpd listens before it goes to the background, so before the marker.
    for _ in 0..3 {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream
            .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("the answer");
        assert!(response.ends_with("from-the-guest\n"), "{response}");
    }
    let mut rest = String::new();
    console.read_to_string(&mut rest).expect("console");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr).expect("stderr");
    }
    let status = child.wait().expect("ftvm ends");
    assert!(status.success(), "{status}: {stderr}\n{rest}");
    let (_, recorded_digest) = parse_digest(&stderr);
    assert!(rest.contains("ftvm_cmd exit 0"), "{rest}");

    let c = census(&log);
    assert!(c.frames > 10, "{c:?}");
    assert!(
        c.completions_with_data > 10,
        "disk reads and entropy: {c:?}"
    );
    assert!(c.wall_clock >= 1 && c.checkpoints >= 4, "{c:?}");

    // The recorded console: replay writes from the first byte, so compare
    // with the whole recording (what spawn_until consumed included).
    let replayed = replay(&log, &["--console"]);
    assert_eq!(replayed.code, Some(0), "{}", replayed.stderr);
    let (_, replay_digest) = parse_digest(&replayed.stderr);
    assert_eq!(replay_digest, recorded_digest);
    let text = replayed.stdout_text();
    assert!(
        text.ends_with(&rest),
        "the replayed console ends differently:\n{text}\n---- recorded tail:\n{rest}"
    );
    assert!(text.contains("httpd-up") && text.contains("Linux version"));

    // Again with the other engine: the same.
    let other = replay(&log, &["--console", "--engine", "interpreter"]);
    assert_eq!(other.code, Some(0), "{}", other.stderr);
    assert_eq!(parse_digest(&other.stderr).1, recorded_digest);
    assert_eq!(other.stdout, replayed.stdout);
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(disk);
}

#[test]
fn a_linux_boot_using_disk_network_rtc_and_entropy_replays_identically() {
    record_and_replay_linux("idle-host");
}

#[test]
fn the_same_holds_with_the_host_under_load() {
    let _load = HostLoad::start();
    record_and_replay_linux("loaded-host");
}

/// `ftvm replay` of bench.elf with a register flipped at `flip`.
fn checkpoints_of(log: &Path) -> Vec<u64> {
    let file = std::fs::File::open(log).expect("log");
    let mut reader = LogReader::open(std::io::BufReader::new(file)).expect("log");
    let mut out = Vec::new();
    while let Some(e) = reader.next().expect("valid") {
        if let Event::Checkpoint(_) = e.event {
            out.push(e.icount);
        }
    }
    out
}

#[test]
fn a_flipped_register_is_caught_at_the_next_checkpoint_and_traced_to_its_instruction() {
    let elf = guest_elf("bench");
    let log = scratch("bench.log");
    let mut record = Command::new(ftvm_bin());
    record
        .args([
            "run",
            "--bios",
            "none",
            "--clock",
            "icount",
            "--max-insns",
            "300000000",
        ])
        .args(["--checkpoint-interval", "0.01", "--record"])
        .arg(&log)
        .arg("--kernel")
        .arg(&elf);
    let recorded = run_limited(record, LIMIT);
    assert_eq!(recorded.code, Some(124), "{}", recorded.stderr);
    let checkpoints = checkpoints_of(&log);
    assert!(checkpoints.len() >= 3, "{checkpoints:?}");

    for flip in [checkpoints[0] + 12_345, checkpoints[1] + 1] {
        // The pc at `flip`, from a plain run stopped there.
        let mut plain = Command::new(ftvm_bin());
        plain
            .args(["run", "--bios", "none", "--clock", "icount", "--digest"])
            .arg("--max-insns")
            .arg(flip.to_string())
            .arg("--kernel")
            .arg(&elf);
        let plain = run_limited(plain, LIMIT);
        let pc = plain
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("pc: "))
            .expect("pc line")
            .to_string();

        let diverged = replay(&log, &["--test-flip-register", &format!("{flip}:x2")]);
        assert_eq!(diverged.code, Some(1), "{}", diverged.stderr);
        let lines: Vec<&str> = diverged.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {}", diverged.stderr);
        let next = checkpoints
            .iter()
            .find(|&&c| c > flip)
            .expect("a later checkpoint");
        assert!(
            lines[0].contains(&format!(" at icount {next} has state digest")),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains(&format!(
                "the state first differs after the instruction at icount {flip}, pc {pc} (x2 is "
            )),
            "{}",
            lines[0]
        );
    }
    // Without the hook the same log replays cleanly.
    let clean = replay(&log, &[]);
    assert_eq!(clean.code, Some(0), "{}", clean.stderr);
    assert_eq!(
        parse_digest(&clean.stderr).1,
        parse_digest(&recorded.stderr).1
    );
    let _ = std::fs::remove_file(log);
}

/// Replay `bytes` as a log file: it must fail with exactly one line on
/// stderr, which is returned.
fn one_line_failure(name: &str, bytes: &[u8]) -> String {
    let path = scratch(name);
    std::fs::write(&path, bytes).expect("write log");
    let out = replay(&path, &[]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.code, Some(1), "{name}: {}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{name}: {}", out.stderr);
    assert!(
        lines[0].starts_with(&format!("ftvm: log {}: ", path.display())),
        "{}",
        lines[0]
    );
    lines[0].to_string()
}

#[test]
fn bad_logs_fail_with_one_line_naming_the_problem() {
    // A recording of a bare-metal program from a kernel file of our own.
    let kernel = scratch("echo.elf");
    std::fs::copy(guest_elf("echo"), &kernel).expect("copy");
    let log = scratch("echo.log");
    let mut record = Command::new(ftvm_bin());
    record
        .args([
            "run",
            "--bios",
            "none",
            "--max-insns",
            "3000000",
            "--record",
        ])
        .arg(&log)
        .arg("--kernel")
        .arg(&kernel);
    let recorded = support::run_with_input(record, Some(b"typed input".to_vec()), LIMIT);
    assert_eq!(recorded.code, Some(124), "{}", recorded.stderr);
    let good = std::fs::read(&log).expect("log");
    assert_eq!(replay(&log, &[]).code, Some(0));

    let empty = one_line_failure("empty.log", &[]);
    assert!(
        empty.ends_with("the file is empty: not an ftvm log"),
        "{empty}"
    );

    let mut flipped = good.clone();
    let last = flipped.len() - 2;
    flipped[last] ^= 0x10;
    let line = one_line_failure("flipped.log", &flipped);
    assert!(
        line.contains("checksum mismatch in entry ") && line.contains("(frame at byte "),
        "{line}"
    );

    let line = one_line_failure("truncated.log", &good[..good.len() - 5]);
    assert!(line.contains("the log is truncated in entry "), "{line}");

    let mut header = good.clone();
    header[30] ^= 0x01;
    let line = one_line_failure("header.log", &header);
    assert!(line.contains("checksum mismatch in the header"), "{line}");

    // The kernel the log names has changed since.
    let mut changed = std::fs::read(&kernel).expect("kernel");
    let at = changed.len() / 2;
    changed[at] ^= 0xff;
    std::fs::write(&kernel, changed).expect("rewrite kernel");
    let line = one_line_failure("other-machine.log", &good);
    assert!(
        line.contains(&format!(
            "kernel {} changed since the log was recorded (same size, different content)",
            kernel.display()
        )),
        "{line}"
    );
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(kernel);
}

#[test]
fn a_guest_reboot_is_logged_and_replayed() {
    let (log, disk) = (scratch("reboot.log"), scratch("reboot.ext4"));
    std::fs::copy(image_dir().join("disk.ext4"), &disk).expect("copy the data disk");
    // The first boot leaves a mark on the disk and reboots; the second
    // sees it and powers off.
    let cmd = "if [ -f /mnt/once ]; then echo second-boot; else touch /mnt/once; sync; \
               reboot -f; fi";
    let mut record = Command::new(ftvm_bin());
    record
        .env("FTVM_GUEST_IMAGE", image_dir())
        .args(["run", "--record"])
        .arg(&log)
        .arg("--disk")
        .arg(&disk)
        .arg("--append")
        .arg(format!("console=ttyS0 ftvm_cmd=\"{cmd}\""));
    let recorded = run_limited(record, LIMIT);
    assert_eq!(recorded.code, Some(0), "{}", recorded.stderr);
    let console = recorded.stdout_text();
    assert_eq!(console.matches("Linux version").count(), 2, "{console}");
    assert!(console.contains("second-boot"), "{console}");

    let replayed = replay(&log, &["--console"]);
    assert_eq!(replayed.code, Some(0), "{}", replayed.stderr);
    assert_eq!(
        parse_digest(&replayed.stderr),
        parse_digest(&recorded.stderr)
    );
    assert_eq!(replayed.stdout, recorded.stdout);
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(disk);
}

/// A log with an entry taken out (re-framed, so every checksum is right):
/// the guest idles where the missing sleep was, and replay stops there,
/// naming the next entry, instead of running on.
#[test]
fn a_log_missing_an_idle_sleep_stops_where_the_guest_idles() {
    let log = scratch("interrupts.log");
    let mut record = Command::new(ftvm_bin());
    record
        .args(["run", "--bios", "none", "--clock", "icount", "--record"])
        .arg(&log)
        .arg("--kernel")
        .arg(guest_elf("interrupts"));
    let recorded = run_limited(record, LIMIT);
    assert_eq!(recorded.code, Some(0), "{}", recorded.stderr);

    let file = std::fs::File::open(&log).expect("log");
    let mut reader = LogReader::open(std::io::BufReader::new(file)).expect("log");
    let mut writer = ftvm_replay::LogWriter::new(Vec::new(), reader.header()).expect("header");
    let mut dropped = None;
    while let Some(entry) = reader.next().expect("valid") {
        if dropped.is_none() && matches!(entry.event, Event::Input(Input::IdleSleep { .. })) {
            dropped = Some(entry);
            continue;
        }
        writer.push(entry.icount, &entry.event).expect("push");
    }
    let dropped = dropped.expect("the interrupts program sleeps in WFI");
    let tampered = writer.into_inner().expect("flush");
    let line = one_line_failure("missing-sleep.log", &tampered);
    // The entries after the dropped one moved down by one.
    assert!(
        line.contains(&format!(
            "replay diverged at entry {} (icount ",
            dropped.seq
        )) && line.contains("the guest stopped (Idle { wake_at: Some(")
            && line.contains(&format!("at icount {} before reaching it", dropped.icount)),
        "{line}"
    );
    let _ = std::fs::remove_file(log);
}
