//! The FT pair end to end, as processes on this host: `ftvm up`, `ftvm
//! status`, `ftvm stop`, and `ftvm primary` / `ftvm backup` run directly.
//!
//! The guest prints `tick N` every 100 ms; every test checks that the
//! pair's console file reads as one stream across whatever happened (ticks
//! 0..=M with no gap and no duplicate, nothing but text, every line ending
//! in `\r\n`), and that at most one VM ever runs the guest alone:
//!
//! - kill -9 of the primary at random moments, while ticking and while the
//!   guest boots: the backup goes live and the ticks go on
//!   (`FTVM_SOAK=N` runs N moments instead of the default ones, one in four
//!   during boot; `FTVM_SEED` repeats a run's moments; `FTVM_PAIRS` pairs
//!   run at a time, default 2);
//! - kill -9 of the backup: the primary goes on alone;
//! - the logging channel cut, black-holed, corrupted or forged by a proxy
//!   between the two: exactly one VM goes live, the other halts with exit
//!   code 2;
//! - the backup's acknowledgements lost, then the primary killed: the
//!   backup releases the outputs the primary held;
//! - the primary's first frames late: the pair does not wedge;
//! - a primary with the wrong key is refused and the backup waits on;
//! - a clean power-off and `ftvm stop` end both VMs without a go-live.
//!
//! The failover tests detect failures in 500 ms, as a quick test should; a
//! loaded host sometimes makes a pair fail over by itself before the test
//! kills anything. Such a pair must still settle on one live VM with its
//! console intact; the test then tries the moment again on a fresh pair.
//!
//! The pair's processes are not this test's children after `ftvm up`: a
//! guard kills whatever is left of them when a test ends, pass or fail.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use support::{
    Finished, ftvm_with_guest as ftvm, kill_seed, poll, process_alive as alive, run_limited,
    signal, status_value,
};

/// The guest's command: `tick N` every 100 ms, forever.
const TICK_CMD: &str = "i=0; while true; do echo tick $i; i=$((i+1)); usleep 100000; done";

/// Failure detection for the failover tests: quick, as the brief of the
/// tests asks (a 2-core host copes).
const FAST: [&str; 4] = ["--timeout-ms", "500", "--heartbeat-ms", "50"];
/// Failure detection for tests that must see no failover at all: slack
/// enough that a loaded host never makes one up.
const SLACK: [&str; 4] = ["--timeout-ms", "3000", "--heartbeat-ms", "100"];

/// Booting to the first tick, under load.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// A failover and a few more ticks.
const FAILOVER_LIMIT: Duration = Duration::from_secs(90);
/// One ftvm command that should return at once (`up`, `status`, `stop`).
const COMMAND_LIMIT: Duration = Duration::from_secs(90);

fn append(cmd: &str) -> String {
    format!("console=ttyS0 ftvm_cmd=\"{cmd}\"")
}

/// The tests share two cores: one pair-running test at a time, whatever
/// `--test-threads` says.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------
// Processes

/// Whether `pid` is an ftvm process (so a recycled pid is left alone).
fn is_ftvm(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("ftvm"))
}

fn unique_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ftvm-pair-test-{}-{tag}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// A pair's state directory and every process started for it. Dropping it
/// kills (-9) whatever still runs — the VMs named by the status files and
/// the ones the test started itself — and removes the directory unless the
/// test failed (then it is kept, and named, for a post-mortem).
struct Pair {
    dir: PathBuf,
    pids: Vec<u32>,
    children: Vec<Child>,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        Pair {
            dir: unique_dir(tag),
            pids: Vec::new(),
            children: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `ftvm up` with the default guest running `cmd` and `options`; the
    /// pids of both VMs.
    fn up(&mut self, cmd: &str, options: &[&str]) -> (u32, u32) {
        let mut up = ftvm();
        up.arg("up")
            .arg("--state-dir")
            .arg(&self.dir)
            .arg("--append")
            .arg(append(cmd))
            .args(options);
        let run = run_limited(up, COMMAND_LIMIT);
        self.track();
        assert!(
            run.code == Some(0),
            "ftvm up failed ({:?}):\n{}{}\n{}",
            run.code,
            run.stdout_text(),
            run.stderr,
            self.diag()
        );
        // (Both may not run any more: on a loaded host a pair can fail over
        // by itself at once. The tests look for that.)
        let (primary, backup) = (self.status_pid("primary"), self.status_pid("backup"));
        (primary, backup)
    }

    /// Note the pids the status files name (for the cleanup).
    fn track(&mut self) {
        for name in ["primary", "backup"] {
            if let Some(pid) = self.status_pid_opt(name) {
                if !self.pids.contains(&pid) {
                    self.pids.push(pid);
                }
            }
        }
    }

    fn status_line(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.status"))).unwrap_or_default()
    }

    fn status_pid_opt(&self, name: &str) -> Option<u32> {
        status_value(&self.path(&format!("{name}.status")), "pid=")
    }

    fn status_pid(&self, name: &str) -> u32 {
        self.status_pid_opt(name)
            .unwrap_or_else(|| panic!("no pid in {name}.status\n{}", self.diag()))
    }

    /// The first word of `NAME.status`.
    fn word(&self, name: &str) -> String {
        self.status_line(name)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    fn console(&self) -> Vec<u8> {
        std::fs::read(self.path("console")).unwrap_or_default()
    }

    /// The highest tick the console shows (complete lines only).
    fn max_tick(&self) -> Option<u64> {
        ticks(&self.console()).into_iter().max()
    }

    /// `ftvm status` for this directory, line by line.
    fn status(&self) -> Vec<String> {
        let mut cmd = ftvm();
        cmd.arg("status").arg("--state-dir").arg(&self.dir);
        let run = run_limited(cmd, COMMAND_LIMIT);
        assert_eq!(
            run.code,
            Some(0),
            "ftvm status failed: {}\n{}",
            run.stderr,
            self.diag()
        );
        run.stdout_text().lines().map(String::from).collect()
    }

    /// Wait until `ftvm status` prints lines starting with `prefixes`
    /// (primary first), then return them.
    fn expect_status(&self, prefixes: &[String], limit: Duration) -> Vec<String> {
        let mut last = Vec::new();
        let found = poll(limit, || {
            last = self.status();
            (last.len() == prefixes.len()
                && last.iter().zip(prefixes).all(|(l, p)| l.starts_with(p)))
            .then_some(())
        });
        assert!(
            found.is_some(),
            "ftvm status never showed {prefixes:?}; last:\n{}\n{}",
            last.join("\n"),
            self.diag()
        );
        last
    }

    /// Wait until the console shows tick `n`; panics with the diagnosis
    /// after `limit`.
    fn wait_tick(&self, n: u64, limit: Duration, why: &str) {
        let seen = poll(limit, || self.max_tick().filter(|&m| m >= n));
        assert!(
            seen.is_some(),
            "{why}: no tick {n} on the console within {limit:?}\n{}",
            self.diag()
        );
    }

    /// The console checked (see [`check_console`]): the ticks it holds.
    fn checked_ticks(&self) -> Vec<u64> {
        check_console(&self.console()).unwrap_or_else(|e| panic!("{e}\n{}", self.diag()))
    }

    /// Everything worth seeing when a test fails.
    fn diag(&self) -> String {
        let mut out = format!("--- state directory {}\n", self.dir.display());
        for name in ["primary", "backup"] {
            let line = self.status_line(name);
            let state = self
                .status_pid_opt(name)
                .map_or("no pid", |pid| if alive(pid) { "running" } else { "gone" });
            out += &format!("{name}.status ({state}): {}", line.trim_end());
            out.push('\n');
        }
        for name in ["primary", "backup"] {
            let log = self.log(name);
            let lines: Vec<&str> = log.lines().collect();
            out += &format!("--- {name}.log (last 30 lines)\n");
            for line in &lines[lines.len().saturating_sub(30)..] {
                out += line;
                out.push('\n');
            }
        }
        let console = self.console();
        let tail = &console[console.len().saturating_sub(400)..];
        out += &format!(
            "--- console ({} bytes), tail:\n{}\n",
            console.len(),
            String::from_utf8_lossy(tail).escape_debug()
        );
        out
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.track();
        for &pid in &self.pids {
            if alive(pid) && is_ftvm(pid) {
                signal(pid, libc::SIGKILL);
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("kept {} for a post-mortem", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------
// The console

/// The `tick N` lines among the complete lines of `console`.
fn ticks(console: &[u8]) -> Vec<u64> {
    let complete = match console.iter().rposition(|&b| b == b'\n') {
        Some(end) => &console[..end],
        None => return Vec::new(),
    };
    complete
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let n = line.strip_prefix(b"tick ")?;
            if n.is_empty() || !n.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(n).ok()?.parse().ok()
        })
        .collect()
}

/// The console must read as one stream: nothing but printable ASCII, tabs
/// and line ends (a hole left by a write past the end reads as NULs, a
/// write at a wrong offset tears a line), every complete line ending in
/// `\r\n`, and the ticks counting 0, 1, 2, ... with no gap or duplicate.
/// Returns the ticks.
fn check_console(console: &[u8]) -> Result<Vec<u64>, String> {
    let context = |at: usize| {
        let from = at.saturating_sub(120);
        let to = (at + 120).min(console.len());
        String::from_utf8_lossy(&console[from..to])
            .escape_debug()
            .to_string()
    };
    if let Some(at) = console
        .iter()
        .position(|&b| !(b == b'\r' || b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b)))
    {
        return Err(format!(
            "console byte {at} is {:#04x}, not text (of {} bytes); around it: {}",
            console[at],
            console.len(),
            context(at)
        ));
    }
    let mut at = 0;
    for line in console.split_inclusive(|&b| b == b'\n') {
        if line.ends_with(b"\n") && !line.ends_with(b"\r\n") {
            return Err(format!(
                "the console line at byte {at} does not end in \\r\\n: {}",
                context(at)
            ));
        }
        at += line.len();
    }
    let ticks = ticks(console);
    for (i, &t) in ticks.iter().enumerate() {
        if t != i as u64 {
            let around: Vec<u64> = ticks[i.saturating_sub(5)..(i + 5).min(ticks.len())].to_vec();
            return Err(format!(
                "tick line #{i} says tick {t} (a gap or a duplicate): ... {around:?} ..."
            ));
        }
    }
    Ok(ticks)
}

#[test]
fn the_console_checker_catches_holes_gaps_duplicates_and_torn_lines() {
    let good = b"boot\r\ntick 0\r\nmsg\r\ntick 1\r\ntick 2\r\ntick 3";
    assert_eq!(check_console(good), Ok(vec![0, 1, 2]));
    assert!(check_console(b"tick 0\r\n\0\0\0tick 1\r\n").is_err());
    assert!(check_console(b"tick 0\r\ntick 2\r\n").is_err());
    assert!(check_console(b"tick 0\r\ntick 1\r\ntick 1\r\n").is_err());
    assert!(check_console(b"tick 0\r\ntitick 1\r\nck 1\n").is_err());
    assert!(check_console(b"tick 1\r\n").is_err());
}

// ---------------------------------------------------------------------
// kill -9 of the primary

/// A small PRNG for the kill moments (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn millis(&mut self, below: u64) -> Duration {
        Duration::from_millis(self.next() % below)
    }
}

#[derive(Clone, Copy, Debug)]
enum Moment {
    /// This long after `ftvm up` returned, whatever the guest does then
    /// (it boots for the first second or two).
    Boot(Duration),
    /// This long after the first tick.
    Ticking(Duration),
}

/// How a kill moment went.
enum Outcome {
    /// The backup took over.
    FailedOver,
    /// Before the kill, one VM had already suspected the other (a loaded
    /// host, the 500 ms timeout): not the moment meant. The console was
    /// checked all the same.
    FalseAlarm(String),
}

/// The first log line of either VM suspecting the other.
fn suspicion(pair: &Pair) -> Option<String> {
    ["primary", "backup"].iter().find_map(|name| {
        pair.log(name)
            .lines()
            .find(|l| l.contains(" is silent"))
            .map(|l| format!("{name}: {l}"))
    })
}

/// After one VM suspected the other without a failure: the pair must
/// settle — one VM live, the other gone or halted — and the console must
/// hold; a pair that stays "paired" while nothing reaches the console is
/// wedged.
fn settled_after_false_alarm(pair: &Pair, label: &str, alarm: &str) {
    let settled = poll(Duration::from_secs(30), || {
        let state = |name: &str| {
            let up = pair.status_pid_opt(name).is_some_and(alive);
            (pair.word(name), up)
        };
        let (p, b) = (state("primary"), state("backup"));
        let live = |s: &(String, bool)| s.0 == "live" && s.1;
        let out = |s: &(String, bool)| !s.1 || s.0 == "halted";
        ((live(&p) && out(&b)) || (live(&b) && out(&p))).then_some(())
    });
    pair.checked_ticks();
    assert!(
        settled.is_some(),
        "{label}: after a false alarm ({alarm}) the pair did not settle on one live VM \
         within 30 s (wedged?)\n{}",
        pair.diag()
    );
}

/// Start a pair, kill -9 its primary at `moment`, and check the failover:
/// the ticks go on at least 10 past the kill, the console reads as one
/// stream, the backup is live and the primary dead.
fn kill_primary_at(moment: Moment, label: &str) -> Outcome {
    let started = Instant::now();
    let mut pair = Pair::new("kill-primary");
    let (primary, backup) = pair.up(TICK_CMD, &FAST);
    let wait = match moment {
        Moment::Boot(after) => after,
        Moment::Ticking(after) => {
            let booted = poll(BOOT_LIMIT, || {
                if pair.max_tick().is_some() {
                    Some(true)
                } else {
                    suspicion(&pair).map(|_| false)
                }
            });
            assert!(
                booted.is_some(),
                "{label}: booting: no tick 0 within {BOOT_LIMIT:?}\n{}",
                pair.diag()
            );
            // A pair that failed over by itself while booting is not
            // worth waiting on.
            if booted == Some(true) {
                after
            } else {
                Duration::ZERO
            }
        }
    };
    std::thread::sleep(wait);
    if let Some(alarm) = suspicion(&pair) {
        let alarm = format!(
            "{alarm} (seen {:.1} s after ftvm up, at tick {:?})",
            started.elapsed().as_secs_f64(),
            pair.max_tick()
        );
        settled_after_false_alarm(&pair, label, &alarm);
        return Outcome::FalseAlarm(alarm);
    }
    signal(primary, libc::SIGKILL);
    let killed_at = Instant::now();
    let at_kill = pair.max_tick();
    let target = at_kill.map_or(9, |m| m + 10);
    let seen = poll(FAILOVER_LIMIT, || {
        (pair.max_tick().is_some_and(|m| m >= target) || !alive(backup)).then_some(())
    });
    let recovered = killed_at.elapsed();
    // The console first: a gap there is the failure that matters most.
    let ticks = pair.checked_ticks();
    // The primary can only have suspected the backup before it was
    // killed: a false alarm just before the kill.
    if let Some(alarm) = pair
        .log("primary")
        .lines()
        .find(|l| l.contains("the backup is silent"))
    {
        return Outcome::FalseAlarm(format!("primary: {alarm} (just before the kill)"));
    }
    assert!(
        seen.is_some() && alive(backup),
        "{label}: after the kill at tick {at_kill:?}, no tick {target} within {FAILOVER_LIMIT:?}\n{}",
        pair.diag()
    );
    let status = pair.expect_status(
        &[
            format!("dead pid={primary} "),
            format!("live pid={backup} "),
        ],
        Duration::from_secs(10),
    );
    assert!(
        pair.log("backup").contains("going live"),
        "{label}: the backup is live but did not log going live\n{}",
        pair.diag()
    );
    assert!(
        status[0].contains("was primary"),
        "{label}: {status:?}\n{}",
        pair.diag()
    );
    eprintln!(
        "{label}: killed at tick {at_kill:?}; tick {target} {:.1} s later; console 0..={} ok; {:.1} s in all",
        recovered.as_secs_f64(),
        ticks.last().copied().unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    Outcome::FailedOver
}

/// Run `moments` on `workers` pairs at a time. A moment whose pair failed
/// over by itself before the kill (and settled) is tried again with a
/// fresh pair, up to [`TRIES`] times.
fn kill_primary_at_moments(moments: Vec<Moment>, workers: usize) {
    let total = moments.len();
    let queue = Arc::new(Mutex::new(
        moments.into_iter().enumerate().rev().collect::<Vec<_>>(),
    ));
    let failed = Arc::new(AtomicBool::new(false));
    let alarms = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let queue = Arc::clone(&queue);
            let failed = Arc::clone(&failed);
            let alarms = Arc::clone(&alarms);
            std::thread::spawn(move || loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let Some((i, moment)) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop()
                else {
                    return;
                };
                for attempt in 0..TRIES {
                    let label =
                        format!("moment {}/{total} ({moment:?}, try {})", i + 1, attempt + 1);
                    let result = std::panic::catch_unwind(|| kill_primary_at(moment, &label));
                    match result {
                        Ok(Outcome::FailedOver) => break,
                        Ok(Outcome::FalseAlarm(alarm)) => {
                            eprintln!(
                                "{label}: the pair failed over by itself before the kill: {alarm}"
                            );
                            alarms.lock().unwrap_or_else(|e| e.into_inner()).push(alarm);
                            if attempt + 1 == TRIES {
                                failed.store(true, Ordering::Relaxed);
                                panic!("{label}: {TRIES} pairs in a row failed over by themselves");
                            }
                        }
                        Err(panic) => {
                            failed.store(true, Ordering::Relaxed);
                            std::panic::resume_unwind(panic);
                        }
                    }
                }
            })
        })
        .collect();
    let mut first_panic = None;
    for thread in threads {
        if let Err(panic) = thread.join() {
            first_panic.get_or_insert(panic);
        }
    }
    if let Some(panic) = first_panic {
        std::panic::resume_unwind(panic);
    }
    let alarms = alarms.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "{total} kill moments; {} pairs failed over by themselves before their kill",
        alarms.len()
    );
}

/// Pairs tried per kill moment, when they fail over by themselves first.
const TRIES: usize = 4;

/// kill -9 of the primary at random moments while the guest ticks (10 by
/// default; `FTVM_SOAK=N`: N moments, one in four during boot): the backup
/// takes over with every tick, once.
#[test]
fn kill_9_of_the_primary_while_ticking_fails_over_without_gap() {
    let _serial = serial();
    let mut rng = Rng(kill_seed());
    let moments: Vec<Moment> = match std::env::var("FTVM_SOAK").ok().and_then(|n| n.parse().ok()) {
        Some(n) => (0..n)
            .map(|i| {
                if i % 4 == 3 {
                    Moment::Boot(rng.millis(2500))
                } else {
                    Moment::Ticking(rng.millis(3000))
                }
            })
            .collect(),
        None => (0..10).map(|_| Moment::Ticking(rng.millis(3000))).collect(),
    };
    kill_primary_at_moments(moments, workers());
}

/// Pairs run at a time by the kill tests: `FTVM_PAIRS`, default 2.
fn workers() -> usize {
    std::env::var("FTVM_PAIRS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2)
        .max(1)
}

/// kill -9 of the primary while the guest boots (right after `ftvm up`
/// returns, and at random moments of the boot): the backup finishes the
/// boot and the ticks start.
#[test]
fn kill_9_of_the_primary_during_boot_fails_over_without_gap() {
    let _serial = serial();
    let mut rng = Rng(kill_seed());
    let mut moments = vec![Moment::Boot(Duration::ZERO)];
    moments.extend((0..3).map(|_| Moment::Boot(rng.millis(1500))));
    kill_primary_at_moments(moments, workers());
}

// ---------------------------------------------------------------------
// kill -9 of the backup

#[test]
fn kill_9_of_the_backup_leaves_the_primary_live_without_gap() {
    let _serial = serial();
    for attempt in 1..=TRIES {
        let mut pair = Pair::new("kill-backup");
        let (primary, backup) = pair.up(TICK_CMD, &FAST);
        pair.wait_tick(3, BOOT_LIMIT, "booting");
        if let Some(alarm) = suspicion(&pair) {
            eprintln!("try {attempt}: the pair failed over by itself before the kill: {alarm}");
            settled_after_false_alarm(&pair, "kill -9 of the backup", &alarm);
            continue;
        }
        signal(backup, libc::SIGKILL);
        let at_kill = pair.max_tick().unwrap_or(0);
        let seen = poll(FAILOVER_LIMIT, || {
            (pair.max_tick().is_some_and(|m| m >= at_kill + 10) || !alive(primary)).then_some(())
        });
        pair.checked_ticks();
        // The backup can only have suspected the primary before it was
        // killed: a false alarm just before the kill.
        if let Some(alarm) = pair
            .log("backup")
            .lines()
            .find(|l| l.contains("the primary is silent"))
        {
            eprintln!("try {attempt}: a false alarm just before the kill: {alarm}");
            continue;
        }
        assert!(
            seen.is_some() && alive(primary),
            "after the backup's kill at tick {at_kill}: no tick {} within {FAILOVER_LIMIT:?}\n{}",
            at_kill + 10,
            pair.diag()
        );
        pair.expect_status(
            &[
                format!("live pid={primary} "),
                format!("dead pid={backup} "),
            ],
            Duration::from_secs(10),
        );
        assert!(
            pair.log("primary").contains("won the test-and-set"),
            "{}",
            pair.diag()
        );
        // Still ticking alone, a while later.
        let now = pair.max_tick().unwrap_or(0);
        pair.wait_tick(now + 5, FAILOVER_LIMIT, "running alone");
        pair.checked_ticks();
        return;
    }
    panic!("{TRIES} pairs in a row failed over by themselves");
}

// ---------------------------------------------------------------------
// The logging channel through a proxy

/// What the proxy does to the traffic.
const FORWARD: u8 = 0;
/// Read and drop everything, both ways, keeping the connections open.
const BLACKHOLE: u8 = 1;
/// Flip a payload byte of the next primary -> backup frame.
const FLIP: u8 = 2;
/// Same, with the frame's checksum made right again (only the MAC can
/// tell).
const FLIP_FIX_CRC: u8 = 3;
/// Drop everything backup -> primary (acknowledgements, heartbeats), and
/// forward primary -> backup: the backup has every entry, the primary
/// hears nothing back and holds its outputs.
const DROP_ACKS: u8 = 4;
/// Hold back (queue) the primary's frames after its two handshake frames,
/// to forward them all once the mode changes: a primary slow to start.
const HOLD: u8 = 5;

/// CRC-32C (Castagnoli), the frames' checksum.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A TCP proxy for one connection, primary -> proxy -> backup. Frames
/// primary -> backup are forwarded whole (length u32 LE, CRC-32C u32 LE,
/// payload), so one can be altered.
struct Proxy {
    port: u16,
    mode: Arc<AtomicU8>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    /// Frames seen primary -> backup, and whether our CRC agreed with
    /// theirs on each.
    frames: Arc<AtomicUsize>,
    crc_agreed: Arc<AtomicBool>,
    /// The frame altered (payload length), once done.
    flipped: Arc<Mutex<Option<usize>>>,
}

impl Proxy {
    fn start(backup: String) -> Proxy {
        Proxy::start_with(backup, FORWARD)
    }

    fn start_with(backup: String, mode: u8) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        let port = listener.local_addr().expect("the proxy's address").port();
        let proxy = Proxy {
            port,
            mode: Arc::new(AtomicU8::new(mode)),
            sockets: Arc::new(Mutex::new(Vec::new())),
            frames: Arc::new(AtomicUsize::new(0)),
            crc_agreed: Arc::new(AtomicBool::new(true)),
            flipped: Arc::new(Mutex::new(None)),
        };
        let (mode, sockets, frames, agreed, flipped) = (
            Arc::clone(&proxy.mode),
            Arc::clone(&proxy.sockets),
            Arc::clone(&proxy.frames),
            Arc::clone(&proxy.crc_agreed),
            Arc::clone(&proxy.flipped),
        );
        std::thread::spawn(move || {
            let Ok((primary, _)) = listener.accept() else {
                return;
            };
            let Ok(backup) = TcpStream::connect(&backup) else {
                return;
            };
            let _ = primary.set_nodelay(true);
            let _ = backup.set_nodelay(true);
            {
                let mut s = sockets.lock().expect("lock");
                s.push(primary.try_clone().expect("clone the socket"));
                s.push(backup.try_clone().expect("clone the socket"));
            }
            let (p2, b2) = (
                primary.try_clone().expect("clone the socket"),
                backup.try_clone().expect("clone the socket"),
            );
            let m2 = Arc::clone(&mode);
            std::thread::spawn(move || pump_frames(p2, b2, &mode, &frames, &agreed, &flipped));
            std::thread::spawn(move || pump_bytes(backup, primary, &m2));
        });
        proxy
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Close both connections.
    fn cut(&self) {
        for socket in self.sockets.lock().expect("lock").iter() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// backup -> primary: bytes as they come (dropped when black-holing); an
/// end of stream is passed on.
fn pump_bytes(mut from: TcpStream, mut to: TcpStream, mode: &AtomicU8) {
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if matches!(mode.load(Ordering::SeqCst), BLACKHOLE | DROP_ACKS) {
                    continue;
                }
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// primary -> backup: whole frames, one of them altered on demand.
fn pump_frames(
    mut from: TcpStream,
    mut to: TcpStream,
    mode: &AtomicU8,
    frames: &AtomicUsize,
    agreed: &AtomicBool,
    flipped: &Mutex<Option<usize>>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    'outer: loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => pending.extend_from_slice(&buffer[..n]),
        }
        while pending.len() >= 8 {
            let len = u32::from_le_bytes(pending[..4].try_into().expect("four bytes")) as usize;
            if pending.len() < 8 + len {
                break;
            }
            let mut frame: Vec<u8> = pending.drain(..8 + len).collect();
            let index = frames.fetch_add(1, Ordering::SeqCst);
            let crc = u32::from_le_bytes(frame[4..8].try_into().expect("four bytes"));
            if crc32c(&frame[8..]) != crc {
                agreed.store(false, Ordering::SeqCst);
            }
            let what = mode.load(Ordering::SeqCst);
            if what == BLACKHOLE {
                continue;
            }
            if what == HOLD && index >= 2 {
                held.push(frame);
                continue;
            }
            for frame in held.drain(..) {
                if to.write_all(&frame).is_err() {
                    break 'outer;
                }
            }
            if (what == FLIP || what == FLIP_FIX_CRC) && len > 0 {
                frame[8 + len / 2] ^= 0x20;
                if what == FLIP_FIX_CRC {
                    let crc = crc32c(&frame[8..]);
                    frame[4..8].copy_from_slice(&crc.to_le_bytes());
                }
                mode.store(FORWARD, Ordering::SeqCst);
                *flipped.lock().expect("lock") = Some(len);
            }
            if to.write_all(&frame).is_err() {
                break 'outer;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// `ftvm backup` and `ftvm primary` run by the test, the primary reaching
/// the backup through a proxy, both writing `DIR/NAME.status`, `NAME.log`
/// and the shared console.
struct ProxiedPair {
    pair: Pair,
    proxy: Proxy,
}

/// The pair options of `ftvm primary` / `ftvm backup` for VM `name`, with
/// `detection` (heartbeat and timeout).
fn pair_args_with(
    pair: &Pair,
    name: &str,
    key: &Path,
    detection: &[&str],
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["--key-file".into(), key.into()];
    args.extend([
        "--arbiter".into(),
        pair.path("arbiter").into(),
        "--console-file".into(),
        pair.path("console").into(),
        "--status-file".into(),
        pair.path(&format!("{name}.status")).into(),
        "--name".into(),
        name.into(),
    ]);
    args.extend(detection.iter().map(Into::into));
    args
}

fn write_key(path: &Path, seed: &str) {
    let key: String = (0..32)
        .map(|i| format!("{:02x}", (i * 37 + seed.len() * 11) % 256))
        .collect();
    std::fs::write(path, format!("{seed}{key}\n")).expect("a key file");
}

/// Start `ftvm backup` listening on a free port; its address.
fn start_backup(pair: &mut Pair, key: &Path) -> String {
    start_backup_with(pair, key, &FAST)
}

fn start_backup_with(pair: &mut Pair, key: &Path, detection: &[&str]) -> String {
    let log = std::fs::File::create(pair.path("backup.log")).expect("backup.log");
    let child = ftvm()
        .args(["backup", "--listen", "127.0.0.1:0", "--addr-file"])
        .arg(pair.path("backup.addr"))
        .args(pair_args_with(pair, "backup", key, detection))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ftvm backup");
    pair.pids.push(child.id());
    pair.children.push(child);
    let addr = poll(Duration::from_secs(30), || {
        std::fs::read_to_string(pair.path("backup.addr"))
            .ok()
            .filter(|a| a.ends_with('\n'))
    });
    addr.unwrap_or_else(|| panic!("the backup did not listen\n{}", pair.diag()))
        .trim()
        .to_string()
}

/// Start `ftvm primary` (the tick guest) towards `backup`; its stderr goes
/// to `DIR/LOG`.
fn start_primary(pair: &mut Pair, backup: &str, key: &Path, log: &str) -> usize {
    start_primary_with(pair, backup, key, log, &FAST)
}

fn start_primary_with(
    pair: &mut Pair,
    backup: &str,
    key: &Path,
    log: &str,
    detection: &[&str],
) -> usize {
    let log = std::fs::File::create(pair.path(log)).expect("primary.log");
    let child = ftvm()
        .args(["primary", "--backup", backup, "--append"])
        .arg(append(TICK_CMD))
        .args(pair_args_with(pair, "primary", key, detection))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ftvm primary");
    pair.pids.push(child.id());
    pair.children.push(child);
    pair.children.len() - 1
}

impl ProxiedPair {
    /// A pair through a proxy, ticking.
    /// A pair that failed over by itself before the test did anything (a
    /// loaded host) is replaced by a fresh one.
    fn start(tag: &str) -> ProxiedPair {
        for attempt in 1..=TRIES {
            let mut pair = Pair::new(tag);
            let key = pair.path("key");
            write_key(&key, "the pair's key ");
            let backup = start_backup(&mut pair, &key);
            let proxy = Proxy::start(backup);
            start_primary(&mut pair, &proxy.addr(), &key, "primary.log");
            pair.wait_tick(3, BOOT_LIMIT, "booting through the proxy");
            match suspicion(&pair) {
                None => return ProxiedPair { pair, proxy },
                Some(alarm) => {
                    eprintln!("{tag}, try {attempt}: the pair failed over by itself: {alarm}");
                    settled_after_false_alarm(&pair, tag, &alarm);
                }
            }
        }
        panic!("{tag}: {TRIES} pairs in a row failed over by themselves");
    }

    /// After the channel fails: exactly one VM exits with code 2 and says
    /// `halted`; the other stays `live` and ticks on. Returns the name of
    /// the one that went on.
    fn expect_one_survivor(&mut self, what: &str) -> &'static str {
        let pair = &mut self.pair;
        let names = ["backup", "primary"];
        let exited = poll(Duration::from_secs(60), || {
            let mut codes = Vec::new();
            for (i, child) in pair.children.iter_mut().enumerate() {
                if let Ok(Some(status)) = child.try_wait() {
                    codes.push((names[i], status.code()));
                }
            }
            (!codes.is_empty()).then_some(codes)
        })
        .unwrap_or_else(|| panic!("{what}: neither VM halted within 60 s\n{}", pair.diag()));
        // Give a wrong second exit a moment to show.
        std::thread::sleep(Duration::from_millis(1500));
        let mut exits = Vec::new();
        for (i, child) in pair.children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                exits.push((names[i], status.code()));
            }
        }
        assert_eq!(
            exits.len(),
            1,
            "{what}: exactly one VM must halt, the other go on; exits {exits:?} (first seen {exited:?})\n{}",
            pair.diag()
        );
        let (loser, code) = exits[0];
        let winner = if loser == "backup" {
            "primary"
        } else {
            "backup"
        };
        assert_eq!(
            code,
            Some(2),
            "{what}: the {loser} exited with {code:?}, not 2 (halted)\n{}",
            pair.diag()
        );
        assert_eq!(pair.word(loser), "halted", "{what}\n{}", pair.diag());
        assert!(
            pair.log(loser).contains("halted"),
            "{what}: the {loser} did not say it halted\n{}",
            pair.diag()
        );
        let live = poll(Duration::from_secs(10), || {
            (pair.word(winner) == "live").then_some(())
        });
        assert!(
            live.is_some(),
            "{what}: the {winner} went on but is not live\n{}",
            pair.diag()
        );
        let now = pair.max_tick().unwrap_or(0);
        pair.wait_tick(
            now + 5,
            FAILOVER_LIMIT,
            &format!("{what}: the {winner} alone"),
        );
        let ticks = pair.checked_ticks();
        let survivor = &mut pair.children[if winner == "backup" { 0 } else { 1 }];
        assert!(
            matches!(survivor.try_wait(), Ok(None)),
            "{what}: the {winner} stopped\n{}",
            pair.diag()
        );
        eprintln!(
            "{what}: the {winner} went live, the {loser} halted; console 0..={} ok",
            ticks.last().copied().unwrap_or(0)
        );
        winner
    }
}

#[test]
fn a_cut_channel_leaves_exactly_one_vm_live() {
    let _serial = serial();
    let mut p = ProxiedPair::start("cut");
    p.proxy.cut();
    p.expect_one_survivor("channel cut");
}

#[test]
fn a_silent_channel_leaves_exactly_one_vm_live() {
    let _serial = serial();
    let mut p = ProxiedPair::start("blackhole");
    p.proxy.set(BLACKHOLE);
    p.expect_one_survivor("channel black-holed");
}

/// Start a proxied pair whose proxy tampers with a frame to the backup
/// (`mode`), and check that the backup closes the channel for a reason
/// holding each of `reasons`, and that one VM goes on.
fn tampered_frame_closes_the_channel(name: &str, mode: u8, reasons: &[&str]) {
    let _serial = serial();
    let mut p = ProxiedPair::start(name);
    p.proxy.set(mode);
    let flipped = poll(Duration::from_secs(10), || {
        *p.proxy.flipped.lock().expect("lock")
    });
    assert!(
        flipped.is_some(),
        "no frame went by to tamper with\n{}",
        p.pair.diag()
    );
    if mode == FLIP_FIX_CRC {
        assert!(
            p.proxy.crc_agreed.load(Ordering::SeqCst),
            "the test's CRC-32C disagrees with the frames' ({} frames)",
            p.proxy.frames.load(Ordering::SeqCst)
        );
    }
    let logged = poll(Duration::from_secs(10), || {
        p.pair
            .log("backup")
            .lines()
            .find(|l| l.contains("ftvm: closing the logging channel"))
            .map(String::from)
    })
    .unwrap_or_else(|| panic!("the backup did not close the channel\n{}", p.pair.diag()));
    assert!(
        reasons.iter().all(|r| logged.contains(r)),
        "unexpected reason: {logged}"
    );
    p.expect_one_survivor(name);
}

/// A flipped byte in a frame to the backup: the frame's checksum catches
/// it; the backup gives the channel up, then the failure detector and the
/// arbiter leave one VM live.
#[test]
fn a_corrupt_frame_closes_the_channel_and_one_vm_goes_on() {
    tampered_frame_closes_the_channel("flip", FLIP, &["corrupt frame", "checksum mismatch"]);
}

/// The same with the checksum made right again: only the frame's MAC
/// tells, and the backup refuses the frame as failing authentication.
#[test]
fn a_forged_frame_fails_authentication_and_one_vm_goes_on() {
    tampered_frame_closes_the_channel("forge", FLIP_FIX_CRC, &["failed authentication"]);
}

/// The output rule holds outputs until the backup has the log up to
/// them; a backup that goes live has executed those outputs in replay and
/// must release them itself, since the primary may have died holding them
/// (DESIGN.md §4, invariant 2; crates/ft/src/console.rs: "a backup that
/// goes live re-produces bytes the primary may already have written").
/// Here the backup's acknowledgements are dropped for a second, so the
/// primary holds every tick of that second while the backup replays them;
/// then the primary is killed. Every tick must still reach the console,
/// once, in order.
#[test]
fn a_backup_going_live_releases_the_outputs_the_dead_primary_held() {
    let _serial = serial();
    let mut pair = Pair::new("held-outputs");
    let key = pair.path("key");
    write_key(&key, "the pair's key ");
    let detection = ["--timeout-ms", "3000", "--heartbeat-ms", "100"];
    let backup = start_backup_with(&mut pair, &key, &detection);
    let proxy = Proxy::start(backup);
    start_primary_with(&mut pair, &proxy.addr(), &key, "primary.log", &detection);
    pair.wait_tick(3, BOOT_LIMIT, "booting through the proxy");
    proxy.set(DROP_ACKS);
    let dropped_at = pair.max_tick().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(1200));
    let held_at = pair.max_tick().unwrap_or(0);
    assert!(
        held_at <= dropped_at + 1,
        "the primary released ticks {dropped_at}..{held_at} the backup never acknowledged\n{}",
        pair.diag()
    );
    assert!(suspicion(&pair).is_none(), "{}", pair.diag());
    let primary = pair.children[1].id();
    signal(primary, libc::SIGKILL);
    pair.wait_tick(held_at + 20, FAILOVER_LIMIT, "after the kill");
    assert!(pair.log("backup").contains("going live"), "{}", pair.diag());
    pair.checked_ticks();
}

/// The primary's first frames after the handshake arrive 1.5 s late
/// (three failure timeouts): a primary slow to build its machine on a
/// loaded host, or a network hiccup. The backup may suspect the primary
/// meanwhile, but the pair must not wedge: the guest's output reaches the
/// console (from whichever VM runs it) and at most one VM is live.
#[test]
fn a_primary_slow_to_start_does_not_wedge_the_pair() {
    let _serial = serial();
    let mut pair = Pair::new("slow-start");
    let key = pair.path("key");
    write_key(&key, "the pair's key ");
    let backup = start_backup(&mut pair, &key);
    let proxy = Proxy::start_with(backup, HOLD);
    start_primary(&mut pair, &proxy.addr(), &key, "primary.log");
    let first = poll(Duration::from_secs(60), || {
        (proxy.frames.load(Ordering::SeqCst) > 2).then_some(())
    });
    assert!(
        first.is_some(),
        "the primary sent nothing after the handshake\n{}",
        pair.diag()
    );
    std::thread::sleep(Duration::from_millis(1500));
    proxy.set(FORWARD);
    let progress = poll(Duration::from_secs(45), || {
        pair.max_tick().filter(|&t| t >= 5)
    });
    assert!(
        progress.is_some(),
        "no tick reached the console within 45 s of the late frames: the pair is wedged \
         (words: primary={:?}, backup={:?})\n{}",
        pair.word("primary"),
        pair.word("backup"),
        pair.diag()
    );
    pair.checked_ticks();
    let live = ["primary", "backup"]
        .iter()
        .filter(|name| pair.word(name) == "live" && pair.status_pid_opt(name).is_some_and(alive))
        .count();
    assert!(live <= 1, "two live VMs\n{}", pair.diag());
    eprintln!(
        "slow start: primary {}, backup {}; the backup said:\n{}",
        pair.word("primary"),
        pair.word("backup"),
        pair.log("backup")
    );
}

// ---------------------------------------------------------------------
// The key

#[test]
fn a_primary_with_the_wrong_key_is_refused_and_the_backup_waits_on() {
    let _serial = serial();
    let mut pair = Pair::new("wrong-key");
    let (key, wrong) = (pair.path("key"), pair.path("wrong-key"));
    write_key(&key, "the pair's key ");
    write_key(&wrong, "somebody else's key ");
    let backup = start_backup_with(&mut pair, &key, &SLACK);

    let mut intruder = ftvm();
    intruder
        .args(["primary", "--backup", &backup, "--append"])
        .arg(append(TICK_CMD))
        .args(pair_args_with(&pair, "primary", &wrong, &SLACK));
    let run: Finished = run_limited(intruder, Duration::from_secs(60));
    assert!(
        !run.timed_out && run.code.is_some_and(|c| c != 0),
        "the primary with the wrong key did not fail: {run:?}\n{}",
        pair.diag()
    );
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("ftvm: "))
        .collect();
    assert!(
        errors.len() == 1 && errors[0].contains("key"),
        "not one clear error line about the key:\n{}",
        run.stderr
    );
    let refused = poll(Duration::from_secs(10), || {
        pair.log("backup")
            .lines()
            .find(|l| l.starts_with("ftvm: refused a connection from 127.0.0.1:"))
            .map(String::from)
    });
    assert!(
        refused.is_some(),
        "the backup did not say it refused the connection\n{}",
        pair.diag()
    );
    eprintln!("primary: {}\nbackup: {}", errors[0], refused.unwrap());
    assert!(
        matches!(pair.children[0].try_wait(), Ok(None)),
        "the backup gave up\n{}",
        pair.diag()
    );
    assert_eq!(pair.word("backup"), "waiting", "{}", pair.diag());
    assert!(pair.console().is_empty(), "{}", pair.diag());

    // The real primary gets in.
    start_primary_with(&mut pair, &backup, &key, "primary.log", &SLACK);
    pair.wait_tick(5, BOOT_LIMIT, "the right primary");
    pair.checked_ticks();
    let primary = pair.children[1].id();
    let backup_pid = pair.children[0].id();
    pair.expect_status(
        &[
            format!("primary pid={primary} "),
            format!("backup pid={backup_pid} "),
        ],
        Duration::from_secs(10),
    );
}

// ---------------------------------------------------------------------
// Ending the pair

fn wait_gone(pair: &Pair, pids: &[u32], limit: Duration, what: &str) {
    let gone = poll(limit, || pids.iter().all(|&pid| !alive(pid)).then_some(()));
    assert!(
        gone.is_some(),
        "{what}: the pair still runs after {limit:?}\n{}",
        pair.diag()
    );
}

fn assert_no_go_live(pair: &Pair) {
    for name in ["primary", "backup"] {
        assert!(
            !pair.log(name).contains("going live"),
            "the {name} went live\n{}",
            pair.diag()
        );
    }
}

#[test]
fn a_clean_power_off_ends_both_without_going_live() {
    let _serial = serial();
    let mut pair = Pair::new("poweroff");
    let (primary, backup) = pair.up("echo hello; echo done", &SLACK);
    wait_gone(&pair, &[primary, backup], BOOT_LIMIT, "power-off");
    pair.expect_status(
        &[
            format!("ended pid={primary} "),
            format!("ended pid={backup} "),
        ],
        Duration::from_secs(5),
    );
    assert_no_go_live(&pair);
    let console = pair.console();
    check_console(&console).unwrap_or_else(|e| panic!("{e}\n{}", pair.diag()));
    let text = String::from_utf8_lossy(&console);
    assert!(
        text.contains("\nhello\r\n") && text.contains("\ndone\r\n"),
        "{}",
        pair.diag()
    );
    assert!(text.contains("ftvm_cmd exit 0"), "{}", pair.diag());
}

#[test]
fn ftvm_stop_ends_both_without_going_live() {
    let _serial = serial();
    let mut pair = Pair::new("stop");
    let (primary, backup) = pair.up(TICK_CMD, &SLACK);
    pair.wait_tick(5, BOOT_LIMIT, "booting");
    let mut stop = ftvm();
    stop.arg("stop").arg("--state-dir").arg(&pair.dir);
    let run = run_limited(stop, COMMAND_LIMIT);
    assert_eq!(
        run.code,
        Some(0),
        "ftvm stop failed: {}{}\n{}",
        run.stdout_text(),
        run.stderr,
        pair.diag()
    );
    wait_gone(&pair, &[primary, backup], Duration::from_secs(30), "stop");
    pair.expect_status(
        &[
            format!("ended pid={primary} "),
            format!("ended pid={backup} "),
        ],
        Duration::from_secs(5),
    );
    assert_no_go_live(&pair);
    pair.checked_ticks();
    // Stopping again is harmless.
    let mut again = ftvm();
    again.arg("stop").arg("--state-dir").arg(&pair.dir);
    let run = run_limited(again, COMMAND_LIMIT);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

/// `ftvm console` types into the pair's guest (its shell, without a
/// command): into the primary, and after a failover into the VM that took
/// over; `poweroff` typed there ends the pair and `ftvm console` with it.
#[test]
fn ftvm_console_types_into_the_guest_across_a_failover() {
    let _serial = serial();
    let mut pair = Pair::new("console");
    let (primary, _backup) = pair.up("", &FAST);
    let mut console = ftvm();
    console
        .arg("console")
        .arg("--state-dir")
        .arg(&pair.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut console = console.spawn().expect("start ftvm console");
    let mut typing = console.stdin.take().expect("piped stdin");
    let console_said = support::drain(console.stderr.take().expect("piped stderr"));
    pair.children.push(console);
    // The guest's shell may not be up yet: say it again until it answers.
    let answered = poll(BOOT_LIMIT, || {
        typing.write_all(b"echo typed-$((6*7))\n").expect("typing");
        console_shows(&pair, "typed-42", Duration::from_secs(1)).then_some(())
    });
    assert!(answered.is_some(), "no answer to typing\n{}", pair.diag());
    signal(primary, libc::SIGKILL);
    let live = poll(FAILOVER_LIMIT, || {
        (pair.word("backup") == "live").then_some(())
    });
    assert!(
        live.is_some(),
        "the backup did not go live\n{}",
        pair.diag()
    );
    typing.write_all(b"echo after-$((6*8))\n").expect("typing");
    assert!(
        console_shows(&pair, "after-48", FAILOVER_LIMIT),
        "typing after the failover\n{}",
        pair.diag()
    );
    typing.write_all(b"poweroff\n").expect("typing");
    let console = pair.children.last_mut().expect("the console");
    let (status, killed) = support::wait_or_kill(console, FAILOVER_LIMIT);
    assert!(
        !killed,
        "ftvm console did not end with the pair\n{}",
        pair.diag()
    );
    let said = String::from_utf8_lossy(&console_said.join().unwrap_or_default()).into_owned();
    assert!(status.success(), "{said}");
    assert!(said.contains("typing to the primary"), "{said}");
    assert!(said.contains("typing to the live VM"), "{said}");
    assert!(said.contains("the pair has ended"), "{said}");
    assert_eq!(pair.word("backup"), "ended", "{}", pair.diag());
}

/// Whether the console shows `text` within `limit`.
fn console_shows(pair: &Pair, text: &str, limit: Duration) -> bool {
    let text = text.as_bytes();
    poll(limit, || {
        pair.console()
            .windows(text.len())
            .any(|w| w == text)
            .then_some(())
    })
    .is_some()
}
