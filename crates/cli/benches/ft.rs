//! Fault tolerance: what running the default Linux guest (Linux + busybox
//! on OpenSBI, 128 MiB) as an FT pair (`ftvm up`: a primary and a backup,
//! two processes on this host, logging over loopback TCP) costs, against
//! the same guest run standalone (`ftvm run`). Four tables, in one run:
//!
//! 1. FT overhead: boot to power-off and the guest's command alone (the
//!    time between `ftvm: init ready` and `ftvm_cmd exit` on the console),
//!    standalone and as the pair's primary, for a boot only
//!    (`ftvm_cmd="true"`), the CPU-bound command of `benches/linux.rs` (32
//!    MiB from /dev/zero through md5sum), the same for 1000 MiB (several
//!    seconds: longer than `--max-lag-ms`, so a backup slower than its
//!    primary would show, the pair held to its pace) and a guest printing
//!    20000 lines;
//!    the ratio FT/standalone (the VMware FT paper: under 10%); and the
//!    host CPU seconds (/proc utime+stime) the standalone process, the
//!    primary and the backup used in the command's window (the pair runs
//!    at the pace of the slower of its two VMs);
//! 2. failover: a guest printing `tick N` every 100 ms, its primary killed
//!    (`kill -9`) right after a tick; the time from the kill to the first
//!    console byte past what the file held at the kill (the backup, live,
//!    first re-writes bytes at offsets the primary wrote) and to the next
//!    complete `tick` line, with the default failure-detection timeout
//!    (1000 ms, heartbeat 100 ms) and with `--timeout-ms 300 --heartbeat-ms
//!    50`, median and max over the kills; broken down by the backup's
//!    status line: when it first showed its channel closed (`channel=`),
//!    the primary suspected (`suspected=yes`), the arbiter's answer
//!    (`verdict=`) and the takeover (`took-over=yes`) — the line is
//!    written at once when one of these changes, so its file's time is
//!    when it happened (within the poll of this bench, every few ms);
//! 3. output-rule delay: median and p99 the primary's status line gives
//!    (over its last 4096 outputs, from the start of the run slice that
//!    produced an output to its release), for the tick guest just before
//!    the kill and for the printing, CPU-bound and idle guests just before
//!    their command ends;
//! 4. logging bandwidth: the growth of the primary's `log-bytes` between
//!    two of its status lines (their files' modification times), from
//!    `init ready` to `ftvm_cmd exit` (tick guest: to the kill), for an
//!    idle guest (`ftvm_cmd="sleep 10"`), the tick guest, the printing
//!    guest and the CPU-bound command, and over the whole run, with the
//!    VMware FT paper's figure for idle guests as a reference.
//!
//! Every pair must come up, its console must show the command ending with
//! status 0 (the CPU-bound command's digest and the printed lines as
//! standalone), both VMs must end (`ended` in both status lines) when the
//! guest powers off, and after a failover the console must go on with the
//! next tick, every tick once and in order. The bench panics otherwise,
//! keeping the pair's directory (console, status files, logs) and naming
//! the command that reproduces it. Every pair is stopped at the end; its
//! processes still alive when it is dropped (a panic) are killed
//! ([`support::pair::Pair`]).
//!
//! Run with `cargo bench -p ftvm --bench ft` after `scripts/guest-image`.
//! `FTVM_BENCH_RUNS` sets the runs per measurement and the kills per
//! failover configuration (default 3; medians of each column).
//!
//! Times are wall-clock times on the host, of the whole process (the pair:
//! from starting `ftvm up` until both VMs have exited) or between console
//! lines the guest's init prints: read from the pipe of `ftvm run`, and by
//! polling the pair's console file every millisecond. The pair's primary
//! and backup each take a host CPU.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ftvm_host::status::Measures;
use support::pair::{Pair, StatusLine, Vm, VmState};
use support::{
    Better, bench_runs, describe, drain, ftvm_bin, image_dir, median, process_alive as alive,
    report, wait_or_kill,
};

/// Longest any one process or pair may take.
const LIMIT: Duration = Duration::from_secs(600);
const MEMORY_MIB: u64 = 128;
/// The CPU-bound command of `benches/linux.rs`.
const WORK: &str = "dd if=/dev/zero bs=1M count=32 2>/dev/null | md5sum";
/// md5sum of 32 MiB of zeros.
const WORK_DIGEST: &str = "58f06dd588d8ffb3beb46ada6309436b";
/// The same work for several seconds: longer than `--max-lag-ms` (1 s) of
/// a backup that replays slower than its primary runs, so the pair shows
/// the pace of the slower of its two VMs, not the primary's alone.
const SUSTAINED: &str = "dd if=/dev/zero bs=1M count=1000 2>/dev/null | md5sum";
/// md5sum of 1000 MiB of zeros.
const SUSTAINED_DIGEST: &str = "e5c834fbdaa6bfd8eac5eb9404eefdd4";
/// A line every 100 ms, forever.
const TICK: &str = "i=0; while true; do echo tick $i; i=$((i+1)); usleep 100000; done";
/// Lines the printing guest prints.
const PRINT_LINES: u64 = 20000;
const IDLE_S: u64 = 10;
/// The tick after which the primary is killed (3 s of ticks to measure
/// the output delay and the log over).
const KILL_AFTER_TICK: u64 = 30;
/// Ticks the live backup must print after the failover.
const TICKS_AFTER: u64 = 5;
const READY: &str = "ftvm: init ready";
const EXIT: &str = "ftvm_cmd exit";
/// Whether a status line shows a stage of a failover.
type Shows = fn(&StatusLine) -> bool;
/// The stages of a failover as the backup's status line shows them, in
/// the order they come: the field, and the column's name.
const STAGES: [(Shows, &str); 4] = [
    (|line| line.channel.is_some(), "closed"),
    (|line| line.suspected, "suspected"),
    (|line| line.verdict.is_some(), "verdict"),
    (|line| line.took_over, "took over"),
];
/// The VMware FT paper (Scales, Nelson, Venkitachalam, 2010), logging
/// bandwidth of idle guests.
const PAPER_IDLE: &str = "VMware FT paper (Scales et al. 2010): idle guests log 0.5-1.5 Mbit/s";
/// The same paper's Table 1: FT/non-FT performance of four server
/// workloads.
const PAPER_OVERHEAD: &str =
    "VMware FT paper (Scales et al. 2010), Table 1: FT/non-FT performance 0.94-0.99 (under 10%)";
/// The same paper's failure detection.
const PAPER_FAILOVER: &str = "VMware FT paper (Scales et al. 2010): a failure is declared when \
     heartbeats and logging traffic stop for a timeout \"on the order of a few seconds\"";

fn append(guest_cmd: &str) -> String {
    format!("console=ttyS0 ftvm_cmd=\"{guest_cmd}\"")
}

/// Console lines, each with the second (since the start) it was seen.
type Lines = Vec<(f64, String)>;

fn first_line(lines: &Lines, marker: &str) -> Option<f64> {
    lines
        .iter()
        .find(|(_, line)| line.contains(marker))
        .map(|&(t, _)| t)
}

/// The guest's command ended with status 0.
fn exited_ok(lines: &Lines) -> bool {
    lines.iter().any(|(_, l)| l.trim() == format!("{EXIT} 0"))
}

/// The numbers `n` of lines `{prefix} n`, in console order.
fn numbered(lines: &Lines, prefix: &str) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|(_, l)| {
            l.trim()
                .strip_prefix(prefix)?
                .strip_prefix(' ')?
                .parse()
                .ok()
        })
        .collect()
}

/// What the console of `guest_cmd` must show besides the exit status, if
/// anything: `None` when it does.
fn console_problem(guest_cmd: &str, lines: &Lines) -> Option<String> {
    if !exited_ok(lines) {
        return Some(format!("no `{EXIT} 0` line"));
    }
    for (cmd, digest) in [(WORK, WORK_DIGEST), (SUSTAINED, SUSTAINED_DIGEST)] {
        if guest_cmd == cmd && !lines.iter().any(|(_, l)| l.starts_with(digest)) {
            return Some(format!("no md5sum line {digest}"));
        }
    }
    if guest_cmd == print_cmd() {
        let seen = numbered(lines, "line");
        if !seen.iter().copied().eq(0..PRINT_LINES) {
            return Some(format!(
                "the lines printed are not `line 0` to `line {}` once each, in order ({} lines)",
                PRINT_LINES - 1,
                seen.len()
            ));
        }
    }
    None
}

fn print_cmd() -> String {
    format!("i=0; while [ $i -lt {PRINT_LINES} ]; do echo line $i; i=$((i+1)); done")
}

/// `ftvm run` of the default guest running `guest_cmd`, to its end.
struct Solo {
    lines: Lines,
    wall_s: f64,
    /// Host CPU seconds of the process when `init ready` and `ftvm_cmd
    /// exit` were read.
    cpu: Vec<(&'static str, f64)>,
}

impl Solo {
    /// Seconds between `init ready` and `ftvm_cmd exit`.
    fn window(&self) -> f64 {
        first_line(&self.lines, EXIT).unwrap_or(f64::NAN)
            - first_line(&self.lines, READY).unwrap_or(f64::NAN)
    }

    /// Host CPU seconds the process used in the window.
    fn window_cpu(&self) -> f64 {
        let at = |m: &str| {
            self.cpu
                .iter()
                .find(|(marker, _)| *marker == m)
                .map_or(f64::NAN, |&(_, cpu)| cpu)
        };
        at(EXIT) - at(READY)
    }
}

/// Host CPU seconds (user and system) `pid` has used, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    // After the command: state (field 3), ..., utime (14), stime (15).
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf(3) only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / hz.max(1) as f64)
}

fn solo(guest_cmd: &str) -> Solo {
    let mut cmd = Command::new(ftvm_bin());
    cmd.env("FTVM_GUEST_IMAGE", image_dir())
        .args(["run", "--memory", &MEMORY_MIB.to_string(), "--append"])
        .arg(append(guest_cmd));
    let command = describe(&cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr_reader = drain(child.stderr.take().expect("piped stderr"));
    let pid = child.id();
    let console_reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let (mut lines, mut line, mut cpu) = (Lines::new(), Vec::new(), Vec::new());
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                break;
            }
            let at = start.elapsed().as_secs_f64();
            let text = String::from_utf8_lossy(&line).replace('\r', "");
            for marker in [READY, EXIT] {
                if text.contains(marker) && !cpu.iter().any(|&(m, _)| m == marker) {
                    cpu.push((marker, cpu_seconds(pid).unwrap_or(f64::NAN)));
                }
            }
            lines.push((at, text.trim_end_matches('\n').to_string()));
        }
        (lines, cpu)
    });
    let (status, killed) = wait_or_kill(&mut child, LIMIT);
    if killed {
        panic!("{command} did not end within {LIMIT:?}");
    }
    let wall_s = start.elapsed().as_secs_f64();
    let (lines, cpu) = console_reader.join().expect("console reader");
    let stderr = String::from_utf8_lossy(&stderr_reader.join().unwrap_or_default()).into_owned();
    let problem = if status.code() != Some(0) {
        Some(format!("exit status {status}"))
    } else {
        console_problem(guest_cmd, &lines)
    };
    if let Some(problem) = problem {
        let console: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        panic!(
            "standalone run failed: {problem}\nreproduce with: {command}\n\
             console:\n{}\nstderr:\n{stderr}",
            console.join("\n")
        );
    }
    Solo { lines, wall_s, cpu }
}

/// One status line of the primary, as it changed.
#[derive(Clone, Debug)]
struct Sampled {
    /// Seconds since the pair's start at which the line was written (the
    /// file's modification time).
    at: f64,
    state: VmState,
    measures: Measures,
}

/// Seconds from `from` to `to`, negative if `to` comes first.
fn seconds_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// An FT pair started by `ftvm up`, watched through its state directory:
/// its console lines as they come, the primary's status lines as they
/// change, the host CPU its two VMs use.
struct Watch {
    pair: Pair,
    start: Instant,
    start_wall: SystemTime,
    /// Primary, backup.
    pids: [u32; 2],
    console: Vec<u8>,
    scanned: usize,
    lines: Lines,
    /// The primary's status lines, as they changed.
    samples: Vec<Sampled>,
    status_mtime: Option<SystemTime>,
    /// Host CPU seconds of the primary and the backup when `init ready`
    /// and `ftvm_cmd exit` were read.
    cpu: Vec<(&'static str, [f64; 2])>,
}

impl Watch {
    fn up(name: &str, guest_cmd: &str, extra: &[&str]) -> Watch {
        let mut pair = Pair::new(&format!("ft-bench-{name}"));
        let memory = MEMORY_MIB.to_string();
        let append = append(guest_cmd);
        let mut args = vec!["--memory", &memory, "--append", &append];
        args.extend(extra);
        let (start, start_wall) = (Instant::now(), SystemTime::now());
        let (primary, backup) = pair.up(&args);
        Watch {
            pair,
            start,
            start_wall,
            pids: [primary, backup],
            console: Vec::new(),
            scanned: 0,
            lines: Lines::new(),
            samples: Vec::new(),
            status_mtime: None,
            cpu: Vec::new(),
        }
    }

    /// Read what the console file and the primary's status file gained.
    fn poll(&mut self) {
        if let Ok(mut file) = File::open(self.pair.path("console")) {
            let len = file.metadata().map_or(0, |m| m.len());
            let known = self.console.len() as u64;
            if len > known && file.seek(SeekFrom::Start(known)).is_ok() {
                let _ = file.take(len - known).read_to_end(&mut self.console);
            }
        }
        let now = self.start.elapsed().as_secs_f64();
        while let Some(end) = self.console[self.scanned..]
            .iter()
            .position(|&b| b == b'\n')
        {
            let line = String::from_utf8_lossy(&self.console[self.scanned..self.scanned + end])
                .replace('\r', "");
            for marker in [READY, EXIT] {
                if line.contains(marker) && !self.cpu.iter().any(|&(m, _)| m == marker) {
                    let cpu = |i: usize| cpu_seconds(self.pids[i]).unwrap_or(f64::NAN);
                    self.cpu.push((marker, [cpu(0), cpu(1)]));
                }
            }
            self.lines.push((now, line));
            self.scanned += end + 1;
        }
        let Some((line, written)) = self.pair.status_written(Vm::Primary) else {
            return;
        };
        if self.status_mtime == Some(written) {
            return;
        }
        if let Some(measures) = line.measures {
            self.samples.push(Sampled {
                at: seconds_between(self.start_wall, written),
                state: line.state,
                measures,
            });
            self.status_mtime = Some(written);
        }
    }

    /// Poll every millisecond until `done`, failing after `limit`.
    fn watch_until(&mut self, what: &str, limit: Duration, mut done: impl FnMut(&Watch) -> bool) {
        let from = Instant::now();
        loop {
            self.poll();
            if done(self) {
                return;
            }
            if from.elapsed() > limit {
                self.fail(&format!("{what}: not within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn line_time(&self, marker: &str) -> Option<f64> {
        first_line(&self.lines, marker)
    }

    fn running(&self) -> bool {
        self.pids.iter().any(|&pid| alive(pid))
    }

    /// Wait until both VMs have exited by themselves (the guest powered
    /// off), check that both ended and the console; seconds since the
    /// start.
    fn finish(&mut self, guest_cmd: &str) -> f64 {
        self.watch_until("both VMs exit after the guest's power-off", LIMIT, |w| {
            !w.running()
        });
        let end = self.start.elapsed().as_secs_f64();
        self.poll();
        for vm in Vm::BOTH {
            let line = self.pair.status(vm);
            if line.as_ref().is_none_or(|l| l.state != VmState::Ended) {
                self.fail(&format!("the {vm} did not end: its status is {line:?}"));
            }
        }
        if let Some(problem) = console_problem(guest_cmd, &self.lines) {
            self.fail(&problem);
        }
        end
    }

    /// `ftvm stop`, then wait until nothing of the pair runs.
    fn stop(&mut self) {
        self.pair.stop();
        self.watch_until(
            "the pair ends after `ftvm stop`",
            Duration::from_secs(30),
            |w| !w.running(),
        );
    }

    /// The last status line of the primary written before `t` (seconds
    /// since the start) while it was the primary.
    fn status_before(&self, t: f64) -> Option<&Sampled> {
        self.samples
            .iter()
            .rev()
            .find(|s| s.at <= t && s.state == VmState::Primary)
    }

    /// Log bytes and seconds between the first status line written at or
    /// after `from` and the last one before `to` (none: fewer than two).
    fn log_between(&self, from: f64, to: f64) -> Option<(f64, f64)> {
        let first = self.samples.iter().find(|s| s.at >= from)?;
        let last = self.samples.iter().rev().find(|s| s.at <= to)?;
        (last.at > first.at).then(|| {
            (
                last.measures
                    .log_bytes
                    .saturating_sub(first.measures.log_bytes) as f64,
                last.at - first.at,
            )
        })
    }

    /// Fail with the pair's diagnosis (its directory is kept, and the
    /// command that started it named).
    fn fail(&self, problem: &str) -> ! {
        panic!("FT pair failed: {problem}\n{}", self.pair.diag());
    }
}

/// A guest run as an FT pair to its power-off.
struct FtRun {
    whole_s: f64,
    window_s: f64,
    /// Log bytes and seconds between status lines inside the window (none
    /// for a window too short for two).
    window_log: Option<(f64, f64)>,
    total_log_bytes: f64,
    /// The primary's last status line before `ftvm_cmd exit`.
    before_exit: Measures,
    /// Host CPU seconds the primary and the backup used in the window.
    window_cpu: [f64; 2],
    /// The most the backup trailed the primary in the window, by the
    /// primary's status lines (ms of the primary's execution).
    window_max_lag_ms: f64,
}

fn ft_run(name: &str, guest_cmd: &str) -> FtRun {
    let mut watch = Watch::up(name, guest_cmd, &[]);
    let whole_s = watch.finish(guest_cmd);
    let (Some(ready), Some(exit)) = (watch.line_time(READY), watch.line_time(EXIT)) else {
        watch.fail("no `init ready` or `ftvm_cmd exit` line");
    };
    let Some(before_exit) = watch.status_before(exit).map(|s| s.measures) else {
        watch.fail("no status line of the primary before the command's exit");
    };
    let total_log_bytes = watch
        .pair
        .status(Vm::Primary)
        .and_then(|line| line.measures)
        .map_or(f64::NAN, |m| m.log_bytes as f64);
    let window_log = watch.log_between(ready, exit);
    let at = |m: &str| {
        watch
            .cpu
            .iter()
            .find(|(marker, _)| *marker == m)
            .map_or([f64::NAN; 2], |&(_, cpu)| cpu)
    };
    let (from, to) = (at(READY), at(EXIT));
    let window_max_lag_ms = watch
        .samples
        .iter()
        .filter(|s| (ready..=exit).contains(&s.at))
        .map(|s| s.measures.lag_ms)
        .fold(0.0, f64::max);
    FtRun {
        window_cpu: [to[0] - from[0], to[1] - from[1]],
        window_max_lag_ms,
        whole_s,
        window_s: exit - ready,
        window_log,
        total_log_bytes,
        before_exit,
    }
}

/// One failover: milliseconds from the kill.
struct Failover {
    /// When the backup's status line first showed each of [`STAGES`]
    /// (None: it never did).
    stages: Vec<Option<f64>>,
    first_byte_ms: f64,
    tick_ms: f64,
    /// The primary's last status line before the kill.
    before_kill: Measures,
    /// Log bytes and seconds between `init ready` and the kill.
    log: (f64, f64),
}

fn failover(name: &str, extra: &[&str]) -> Failover {
    let mut watch = Watch::up(name, TICK, extra);
    watch.watch_until(
        &format!("tick {KILL_AFTER_TICK} on the console"),
        Duration::from_secs(120),
        |w| numbered(&w.lines, "tick").contains(&KILL_AFTER_TICK),
    );
    // Kill right after a tick line: the guest prints nothing for 100 ms.
    let last_tick = numbered(&watch.lines, "tick").last().copied().unwrap_or(0);
    let size = std::fs::metadata(watch.pair.path("console")).map_or(0, |m| m.len());
    support::signal(watch.pids[0], libc::SIGKILL);
    let killed = Instant::now();
    let killed_wall = SystemTime::now();
    let kill_at = watch.start.elapsed().as_secs_f64();
    let ms = |t: Instant| t.duration_since(killed).as_secs_f64() * 1e3;
    let limit = Duration::from_secs(60);
    let mut first_byte = None;
    let mut stages: Vec<Option<f64>> = vec![None; STAGES.len()];
    let mut backup_written = None;
    // The backup's stages, as its status line shows them (checked on
    // every poll while waiting for the ticks).
    let mut stage = |w: &Watch| {
        let Some((line, written)) = w.pair.status_written(Vm::Backup) else {
            return;
        };
        if backup_written == Some(written) {
            return;
        }
        backup_written = Some(written);
        for (seen, (shows, _)) in stages.iter_mut().zip(STAGES) {
            if seen.is_none() && shows(&line) {
                *seen = Some(seconds_between(killed_wall, written) * 1e3);
            }
        }
    };
    watch.watch_until("the backup prints the next tick", limit, |w| {
        stage(w);
        if first_byte.is_none() && w.console.len() as u64 > size {
            first_byte = Some(Instant::now());
        }
        numbered(&w.lines, "tick")
            .last()
            .is_some_and(|&n| n > last_tick)
    });
    let tick_ms = ms(Instant::now());
    let first_byte_ms = first_byte.map_or(tick_ms, ms);
    watch.watch_until("the live backup goes on ticking", limit, |w| {
        stage(w);
        numbered(&w.lines, "tick")
            .last()
            .is_some_and(|&n| n >= last_tick + TICKS_AFTER)
    });
    if alive(watch.pids[0]) {
        watch.fail("the primary survived kill -9");
    }
    let Some(before_kill) = watch.status_before(kill_at).map(|s| s.measures) else {
        watch.fail("no status line of the primary before the kill");
    };
    let Some(ready) = watch.line_time(READY) else {
        watch.fail("no `init ready` line");
    };
    let Some(log) = watch.log_between(ready, kill_at) else {
        watch.fail("no two status lines of the primary between `init ready` and the kill");
    };
    watch.stop();
    // The whole console, as the backup left it: every tick once, in order.
    watch.console.clear();
    watch.scanned = 0;
    watch.lines.clear();
    watch.poll();
    let ticks = numbered(&watch.lines, "tick");
    if !ticks.iter().copied().eq(0..ticks.len() as u64) || ticks.len() as u64 <= last_tick + 1 {
        watch.fail(&format!(
            "after the failover at tick {last_tick} the console's ticks are not 0, 1, 2, ...: {:?}",
            &ticks[ticks.len().saturating_sub(2 * TICKS_AFTER as usize + 4)..]
        ));
    }
    Failover {
        stages,
        first_byte_ms,
        tick_ms,
        before_kill,
        log,
    }
}

/// The failure-detection settings measured.
const CONFIGS: [(&str, &[&str]); 2] = [
    ("timeout 1000 ms, heartbeat 100 ms", &[]),
    (
        "timeout 300 ms, heartbeat 50 ms",
        &["--timeout-ms", "300", "--heartbeat-ms", "50"],
    ),
];

/// One run of everything.
struct Sample {
    solo_boot: Solo,
    solo_work: Solo,
    solo_sustained: Solo,
    solo_print: Solo,
    ft_boot: FtRun,
    ft_work: FtRun,
    ft_sustained: FtRun,
    ft_print: FtRun,
    ft_idle: FtRun,
    /// Per entry of [`CONFIGS`].
    failovers: Vec<Failover>,
}

fn one_run(run: usize) -> Sample {
    let print = print_cmd();
    let idle = format!("sleep {IDLE_S}");
    Sample {
        solo_boot: solo("true"),
        ft_boot: ft_run(&format!("boot-{run}"), "true"),
        solo_work: solo(WORK),
        ft_work: ft_run(&format!("work-{run}"), WORK),
        solo_sustained: solo(SUSTAINED),
        ft_sustained: ft_run(&format!("sustained-{run}"), SUSTAINED),
        solo_print: solo(&print),
        ft_print: ft_run(&format!("print-{run}"), &print),
        ft_idle: ft_run(&format!("idle-{run}"), &idle),
        failovers: CONFIGS
            .iter()
            .enumerate()
            .map(|(i, (_, extra))| failover(&format!("failover-{i}-{run}"), extra))
            .collect(),
    }
}

/// The host's 1-minute load average, as /proc/loadavg gives it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

fn col<T>(rows: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(rows.iter().map(f).collect())
}

fn max<T>(rows: &[T], f: impl Fn(&T) -> f64) -> f64 {
    rows.iter().map(f).fold(f64::NAN, f64::max)
}

fn main() {
    let Some(runs) = bench_runs() else {
        return;
    };
    let load_before = load_average();
    let samples: Vec<Sample> = (0..runs).map(one_run).collect();
    let s = &samples;
    println!(
        "host: {} CPUs; load average (1 min) {load_before} before, {} after \
         (other processes share the CPUs the pair's two VMs run on)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );

    println!(
        "guest: default Linux guest, {MEMORY_MIB} MiB; FT pair: `ftvm up` (primary and backup \
         on this host, loopback TCP); runs: {runs}, medians"
    );
    println!(
        "every pair: console as standalone, `{EXIT} 0`, both VMs `ended`; every failover: \
         ticks go on once each, in order"
    );

    println!();
    println!("1. FT overhead: standalone `ftvm run` against the FT pair's primary");
    println!(
        "{:<22} {:>9} {:>9} {:>7} {:>11} {:>11} {:>7}",
        "guest command", "solo s", "FT s", "FT/solo", "solo cmd s", "FT cmd s", "FT/solo"
    );
    let overhead_row = |name: &str,
                        solo: &dyn Fn(&Sample) -> &Solo,
                        ft: &dyn Fn(&Sample) -> &FtRun| {
        let (solo_s, ft_s) = (col(s, |x| solo(x).wall_s), col(s, |x| ft(x).whole_s));
        let (solo_w, ft_w) = (col(s, |x| solo(x).window()), col(s, |x| ft(x).window_s));
        println!(
            "{name:<22} {solo_s:>9.3} {ft_s:>9.3} {:>6.3}x {solo_w:>11.3} {ft_w:>11.3} {:>6.3}x",
            ft_s / solo_s,
            ft_w / solo_w
        );
        (solo_w, ft_w)
    };
    overhead_row("true (boot only)", &|x| &x.solo_boot, &|x| &x.ft_boot);
    let (solo_w, ft_w) = overhead_row("dd 32 MiB | md5sum", &|x| &x.solo_work, &|x| &x.ft_work);
    let work = "FT pair: CPU-bound command (dd 32 MiB | md5sum)";
    report(
        "ft",
        work,
        "s",
        Better::Lower,
        ft_w,
        ("standalone ftvm", solo_w),
    );
    let (solo_w, ft_w) = overhead_row("dd 1000 MiB | md5sum", &|x| &x.solo_sustained, &|x| {
        &x.ft_sustained
    });
    report(
        "ft",
        "FT pair: sustained CPU-bound command (dd 1000 MiB | md5sum)",
        "s",
        Better::Lower,
        ft_w,
        ("standalone ftvm", solo_w),
    );
    let (solo_w, ft_w) = overhead_row(
        &format!("print {PRINT_LINES} lines"),
        &|x| &x.solo_print,
        &|x| &x.ft_print,
    );
    let print = format!("FT pair: guest printing {PRINT_LINES} lines");
    report(
        "ft",
        &print,
        "s",
        Better::Lower,
        ft_w,
        ("standalone ftvm", solo_w),
    );
    println!(
        "(s: boot to power-off, FT: from starting `ftvm up` until both VMs exit; cmd s: `{READY}` to `{EXIT}`)"
    );
    println!("reference: {PAPER_OVERHEAD}");
    println!("host CPU seconds (utime+stime) in the command window, and the wall seconds it took:");
    println!(
        "{:<22} {:>9} {:>11} {:>10} {:>9} {:>9}",
        "guest command", "solo CPU", "primary CPU", "backup CPU", "solo s", "FT s"
    );
    let cpu_row = |name: &str, solo: &dyn Fn(&Sample) -> &Solo, ft: &dyn Fn(&Sample) -> &FtRun| {
        println!(
            "{name:<22} {:>9.2} {:>11.2} {:>10.2} {:>9.3} {:>9.3}",
            col(s, |x| solo(x).window_cpu()),
            col(s, |x| ft(x).window_cpu[0]),
            col(s, |x| ft(x).window_cpu[1]),
            col(s, |x| solo(x).window()),
            col(s, |x| ft(x).window_s),
        );
    };
    cpu_row("dd 32 MiB | md5sum", &|x| &x.solo_work, &|x| &x.ft_work);
    cpu_row("dd 1000 MiB | md5sum", &|x| &x.solo_sustained, &|x| {
        &x.ft_sustained
    });
    println!(
        "the backup's largest lag behind the primary in the window of dd 1000 MiB: {:.0} ms \
         (median of the runs' largest; at --max-lag-ms, 1000 by default, the primary is slowed \
         to the backup's pace)",
        col(s, |x| x.ft_sustained.window_max_lag_ms)
    );
    cpu_row(
        &format!("print {PRINT_LINES} lines"),
        &|x| &x.solo_print,
        &|x| &x.ft_print,
    );

    println!();
    println!(
        "2. failover: tick guest (a line every 100 ms), kill -9 of the primary right after \
         `tick {KILL_AFTER_TICK}`; ms from the kill, {runs} kills each"
    );
    println!(
        "{:<34} {:<6} {:>8} {:>9} {:>8} {:>9} {:>10} {:>9}",
        "detection",
        "",
        STAGES[0].1,
        STAGES[1].1,
        STAGES[2].1,
        STAGES[3].1,
        "first byte",
        "next tick"
    );
    for (i, (name, _)) in CONFIGS.iter().enumerate() {
        let fo: Vec<&Failover> = s.iter().map(|x| &x.failovers[i]).collect();
        for (what, agg) in [("median", false), ("max", true)] {
            let stat = |f: &dyn Fn(&&Failover) -> f64| {
                if agg { max(&fo, f) } else { col(&fo, f) }
            };
            let stage = |k: usize| {
                let v: Vec<f64> = fo.iter().filter_map(|f| f.stages[k]).collect();
                if v.is_empty() {
                    "-".to_string()
                } else if agg {
                    format!("{:.0}", max(&v, |&x| x))
                } else {
                    format!("{:.0}", median(v))
                }
            };
            println!(
                "{:<34} {what:<6} {:>8} {:>9} {:>8} {:>9} {:>10.0} {:>9.0}",
                if agg { "" } else { name },
                stage(0),
                stage(1),
                stage(2),
                stage(3),
                stat(&|f| f.first_byte_ms),
                stat(&|f| f.tick_ms)
            );
        }
    }
    println!(
        "(closed/suspected/verdict/took over: the first status line of the backup with \
         channel=, suspected=yes, verdict=, took-over=yes, by its file's time, written when it \
         happens; first byte: the console file grows past its size at the kill)"
    );
    println!("reference: {PAPER_FAILOVER}");

    println!();
    println!(
        "3. output-rule delay: the primary's status line (its last 4096 outputs: from the start \
         of the run slice that produced an output to its release)"
    );
    println!(
        "{:<40} {:>10} {:>10} {:>9}",
        "guest", "median ms", "p99 ms", "outputs"
    );
    let delay_row = |name: &str, f: &dyn Fn(&Sample) -> &Measures| {
        println!(
            "{name:<40} {:>10.2} {:>10.2} {:>9.0}",
            col(s, |x| f(x).delay_ms),
            col(s, |x| f(x).delay_p99_ms),
            col(s, |x| f(x).outputs as f64)
        );
    };
    for (i, (name, _)) in CONFIGS.iter().enumerate() {
        delay_row(
            &format!(
                "tick, before the kill ({})",
                name.split(',').next().unwrap_or(name)
            ),
            &|x| &x.failovers[i].before_kill,
        );
    }
    delay_row(
        &format!("print {PRINT_LINES} lines, before its exit"),
        &|x| &x.ft_print.before_exit,
    );
    delay_row("dd 32 MiB | md5sum, before its exit", &|x| {
        &x.ft_work.before_exit
    });
    delay_row(&format!("sleep {IDLE_S}, before its exit"), &|x| {
        &x.ft_idle.before_exit
    });

    println!();
    println!(
        "4. logging bandwidth: growth of the primary's log-bytes between its status lines \
         (init ready to exit; tick: to the kill)"
    );
    println!(
        "{:<24} {:>9} {:>11} {:>10} {:>9} {:>12} {:>9}",
        "guest", "window s", "log bytes", "bit/s", "Mbit/s", "whole bytes", "whole s"
    );
    let bw_row = |name: &str,
                  log: &dyn Fn(&Sample) -> Option<(f64, f64)>,
                  whole: &dyn Fn(&Sample) -> Option<(f64, f64)>| {
        let cell = |f: &dyn Fn(&Sample) -> Option<f64>, width: usize, digits: usize| {
            let v: Vec<f64> = s.iter().filter_map(f).collect();
            if v.is_empty() {
                format!("{:>width$}", "-")
            } else {
                format!("{:>width$.digits$}", median(v))
            }
        };
        let rate = |x: &Sample| log(x).map(|(bytes, secs)| bytes * 8.0 / secs);
        println!(
            "{name:<24} {} {} {} {} {} {}",
            cell(&|x| log(x).map(|l| l.1), 9, 2),
            cell(&|x| log(x).map(|l| l.0), 11, 0),
            cell(&rate, 10, 0),
            cell(&|x| rate(x).map(|r| r / 1e6), 9, 4),
            cell(&|x| whole(x).map(|w| w.0), 12, 0),
            cell(&|x| whole(x).map(|w| w.1), 9, 2),
        );
    };
    let whole = |r: &FtRun| Some((r.total_log_bytes, r.whole_s));
    bw_row(
        &format!("idle (sleep {IDLE_S})"),
        &|x| x.ft_idle.window_log,
        &|x| whole(&x.ft_idle),
    );
    for (i, (name, _)) in CONFIGS.iter().enumerate() {
        bw_row(
            &format!("tick ({})", name.split(',').next().unwrap_or(name)),
            &|x| Some(x.failovers[i].log),
            &|_| None,
        );
    }
    bw_row(
        &format!("print {PRINT_LINES} lines"),
        &|x| x.ft_print.window_log,
        &|x| whole(&x.ft_print),
    );
    bw_row("dd 32 MiB | md5sum", &|x| x.ft_work.window_log, &|x| {
        whole(&x.ft_work)
    });
    bw_row("true (boot only)", &|x| x.ft_boot.window_log, &|x| {
        whole(&x.ft_boot)
    });
    println!(
        "(bit/s: median of each run's rate; whole: the final log-bytes over boot to power-off)"
    );
    println!("reference: {PAPER_IDLE}");
}
