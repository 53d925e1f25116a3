//! The FT pair end to end, as processes on this host: `ftvm up`, `ftvm
//! status`, `ftvm stop`, `ftvm console`, and `ftvm primary` / `ftvm
//! backup` run directly.
//!
//! The guest prints `tick N` every 100 ms; every test checks that the
//! pair's console file reads as one stream across whatever happened (ticks
//! 0..=M with no gap and no duplicate, nothing but text, every line ending
//! in `\r\n`), and that at most one VM ever runs the guest alone:
//!
//! - kill -9 of the primary at random moments, while ticking and while the
//!   guest boots: the backup goes live (`took-over`, `verdict=won`), `ftvm
//!   status` says the primary is `dead` (`was=primary`) and the ticks go on
//!   (`FTVM_SOAK=N` runs N moments instead of the default ones, one in
//!   four during boot; `FTVM_SEED` repeats a run's moments; `FTVM_PAIRS`
//!   pairs run at a time, default 2);
//! - kill -9 of the backup: the primary wins the test-and-set and goes on
//!   alone;
//! - the logging channel cut, black-holed, corrupted or forged by a proxy
//!   between the two: exactly one VM goes live (`verdict=won`), the other
//!   halts (`halt=lost-test-and-set`, exit code 2); a corrupt frame closes
//!   the backup's channel as `channel=corrupt`, a forged one as
//!   `channel=forged`;
//! - the backup's acknowledgements lost, then the primary killed: the
//!   backup releases the outputs the primary held;
//! - the primary's first frames late: the pair does not wedge;
//! - a primary with the wrong key is refused (one error line about the key)
//!   and the backup waits on for the right one;
//! - a clean power-off and `ftvm stop` end both VMs (`ended`) without
//!   a test-and-set; `ftvm status` and `ftvm status --json` agree;
//! - `ftvm console` types into the primary, and into the backup once it
//!   went live.
//!
//! What the VMs did is read from their status lines, never their logs.
//! The failover tests detect failures in 500 ms, as a quick test should; a
//! loaded host sometimes makes a pair fail over by itself before the test
//! kills anything (a VM says `suspected=yes`). Such a pair must still
//! settle on one live VM with its console intact; the test then tries the
//! moment again on a fresh pair. Every process of a pair is killed when
//! its test ends, pass or fail ([`support::pair::Pair`]).

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::pair::{ChannelClose, HaltCode, Pair, StatusLine, Verdict, Vm, VmState, write_key};
use support::{
    Finished, kill_seed, poll, process_alive as alive, run_limited, serial, signal, wait_until,
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
/// A status line to catch up with what a VM did: it is rewritten every
/// 200 ms, and at a VM's end.
const STATUS_LIMIT: Duration = Duration::from_secs(10);

fn append(cmd: &str) -> String {
    format!("console=ttyS0 ftvm_cmd=\"{cmd}\"")
}

/// The options of a VM running `cmd` with failure detection `detection`.
fn guest(cmd: &str, detection: &[&'static str]) -> Vec<String> {
    let mut args = vec!["--append".to_string(), append(cmd)];
    args.extend(detection.iter().map(|s| s.to_string()));
    args
}

/// `ftvm up` of the tick guest; the pids of the primary and the backup.
fn up_ticking(pair: &mut Pair, cmd: &str, detection: &[&'static str]) -> (u32, u32) {
    pair.up(&guest(cmd, detection))
}

/// `ftvm primary` of the tick guest towards `backup`, by hand.
fn start_ticking_primary(pair: &mut Pair, backup: &str, detection: &[&'static str]) {
    let args = guest(TICK_CMD, detection);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pair.start_primary(backup, &args);
}

/// The console of a pair running the tick guest.
trait TickConsole {
    /// The highest tick the console shows (complete lines only).
    fn max_tick(&self) -> Option<u64>;
    /// Wait until the console shows tick `n`; fail saying `why` after
    /// `limit`.
    fn wait_tick(&self, n: u64, limit: Duration, why: &str);
    /// The console checked (see [`check_console`]): the ticks it holds.
    fn checked_ticks(&self) -> Vec<u64>;
}

impl TickConsole for Pair {
    fn max_tick(&self) -> Option<u64> {
        ticks(&self.console()).into_iter().max()
    }

    fn wait_tick(&self, n: u64, limit: Duration, why: &str) {
        self.wait_until(limit, &format!("{why}: tick {n} on the console"), || {
            self.max_tick().is_some_and(|m| m >= n)
        });
    }

    fn checked_ticks(&self) -> Vec<u64> {
        check_console(&self.console()).unwrap_or_else(|e| panic!("{e}\n{}", self.diag()))
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

/// A VM that suspected the other, by its status line.
fn suspicion(pair: &Pair) -> Option<String> {
    Vm::BOTH.into_iter().find_map(|vm| {
        pair.status(vm)
            .filter(|line| line.suspected)
            .map(|line| format!("{vm}: {line}"))
    })
}

/// Whether `victim`, just killed, had suspected the other VM before it
/// died. Its last status line may be up to 200 ms older than its death, so
/// a suspicion it had no time to write shows in the other VM instead: a
/// lost test-and-set, which only the victim can have won.
fn suspected_before_the_kill(pair: &Pair, victim: Vm) -> Option<String> {
    let other = victim.other();
    if let Some(line) = pair.status(victim).filter(|line| line.suspected) {
        return Some(format!("the {victim} suspected the {other}: {line}"));
    }
    pair.status(other)
        .filter(|line| line.verdict == Some(Verdict::Lost))
        .map(|line| format!("the {other} lost the test-and-set to the {victim}: {line}"))
}

/// After one VM suspected the other without a failure: the pair must
/// settle — one VM live, the other gone or halted — and the console must
/// hold; a pair that stays paired while nothing reaches the console is
/// wedged.
fn settled_after_false_alarm(pair: &Pair, label: &str, alarm: &str) {
    let live = |vm: Vm| pair.state(vm) == Some(VmState::Live) && pair.running(vm);
    let out = |vm: Vm| !pair.running(vm) || pair.state(vm) == Some(VmState::Halted);
    let settled = wait_until(Duration::from_secs(30), || {
        (live(Vm::Primary) && out(Vm::Backup)) || (live(Vm::Backup) && out(Vm::Primary))
    });
    pair.checked_ticks();
    assert!(
        settled,
        "{label}: after a false alarm ({alarm}) the pair did not settle on one live VM \
         within 30 s (wedged?)\n{}",
        pair.diag()
    );
}

/// Start a pair, kill -9 its primary at `moment`, and check the failover:
/// the ticks go on at least 10 past the kill, the console reads as one
/// stream, the backup took over and the primary is dead.
fn kill_primary_at(moment: Moment, label: &str) -> Outcome {
    let started = Instant::now();
    let mut pair = Pair::new("kill-primary");
    let (primary, backup) = up_ticking(&mut pair, TICK_CMD, &FAST);
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
    // The moment itself: the guest runs on until the kill.
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
    let seen = wait_until(FAILOVER_LIMIT, || {
        pair.max_tick().is_some_and(|m| m >= target) || !alive(backup)
    });
    let recovered = killed_at.elapsed();
    // The console first: a gap there is the failure that matters most.
    let ticks = pair.checked_ticks();
    if let Some(alarm) = suspected_before_the_kill(&pair, Vm::Primary) {
        return Outcome::FalseAlarm(format!("{alarm} (just before the kill)"));
    }
    assert!(
        seen && alive(backup),
        "{label}: after the kill at tick {at_kill:?}, no tick {target} within {FAILOVER_LIMIT:?}\n{}",
        pair.diag()
    );
    let status = pair.wait_ftvm_status(
        STATUS_LIMIT,
        &format!("{label}: ftvm status: the primary dead, the backup live"),
        |s| s.is(Vm::Primary, VmState::Dead, primary) && s.is(Vm::Backup, VmState::Live, backup),
    );
    let (dead, live) = (status.vm(Vm::Primary), status.vm(Vm::Backup));
    assert_eq!(
        dead.and_then(|line| line.was),
        Some(VmState::Primary),
        "{label}: the dead primary was not running as the primary: {dead:?}\n{}",
        pair.diag()
    );
    assert!(
        live.is_some_and(|line| line.took_over && line.verdict == Some(Verdict::Won)),
        "{label}: the live backup did not take over by winning the test-and-set: {live:?}\n{}",
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
        let (primary, backup) = up_ticking(&mut pair, TICK_CMD, &FAST);
        pair.wait_tick(3, BOOT_LIMIT, "booting");
        if let Some(alarm) = suspicion(&pair) {
            eprintln!("try {attempt}: the pair failed over by itself before the kill: {alarm}");
            settled_after_false_alarm(&pair, "kill -9 of the backup", &alarm);
            continue;
        }
        signal(backup, libc::SIGKILL);
        let at_kill = pair.max_tick().unwrap_or(0);
        let seen = wait_until(FAILOVER_LIMIT, || {
            pair.max_tick().is_some_and(|m| m >= at_kill + 10) || !alive(primary)
        });
        pair.checked_ticks();
        if let Some(alarm) = suspected_before_the_kill(&pair, Vm::Backup) {
            eprintln!("try {attempt}: a false alarm just before the kill: {alarm}");
            continue;
        }
        assert!(
            seen && alive(primary),
            "after the backup's kill at tick {at_kill}: no tick {} within {FAILOVER_LIMIT:?}\n{}",
            at_kill + 10,
            pair.diag()
        );
        let status = pair.wait_ftvm_status(
            STATUS_LIMIT,
            "ftvm status: the primary live, the backup dead",
            |s| {
                s.is(Vm::Primary, VmState::Live, primary) && s.is(Vm::Backup, VmState::Dead, backup)
            },
        );
        let live = status.vm(Vm::Primary);
        assert!(
            live.is_some_and(|line| line.suspected && line.verdict == Some(Verdict::Won)),
            "the primary went on alone without winning the test-and-set: {live:?}\n{}",
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
/// the backup through a proxy.
struct ProxiedPair {
    pair: Pair,
    proxy: Proxy,
}

impl ProxiedPair {
    /// A pair through a proxy, ticking.
    /// A pair that failed over by itself before the test did anything (a
    /// loaded host) is replaced by a fresh one.
    fn start(tag: &str) -> ProxiedPair {
        for attempt in 1..=TRIES {
            let mut pair = Pair::new(tag);
            let backup = pair.start_backup(&FAST);
            let proxy = Proxy::start(backup);
            start_ticking_primary(&mut pair, &proxy.addr(), &FAST);
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

    /// After the channel fails: exactly one VM loses the test-and-set,
    /// halts and exits with code 2; the other wins it, goes live and ticks
    /// on. Returns the one that went on.
    fn expect_one_survivor(&mut self, what: &str) -> Vm {
        let pair = &mut self.pair;
        let first = poll(Duration::from_secs(60), || {
            Vm::BOTH
                .into_iter()
                .find_map(|vm| pair.exit_status(vm.name()).map(|status| (vm, status)))
        });
        let Some((loser, exit)) = first else {
            panic!("{what}: neither VM halted within 60 s\n{}", pair.diag());
        };
        let winner = loser.other();
        assert_eq!(
            exit.code(),
            Some(2),
            "{what}: the {loser} exited with {exit}, not 2 (halted)\n{}",
            pair.diag()
        );
        // It wrote its last line before it exited.
        let lost = pair.status(loser);
        assert!(
            lost.as_ref()
                .is_some_and(|line| line.state == VmState::Halted
                    && line.halt == Some(HaltCode::LostTestAndSet)
                    && line.verdict == Some(Verdict::Lost)),
            "{what}: the {loser} exited without losing the test-and-set: {lost:?}\n{}",
            pair.diag()
        );
        let won = pair.wait_state(winner, VmState::Live, STATUS_LIMIT);
        assert_eq!(
            won.verdict,
            Some(Verdict::Won),
            "{what}: the {winner} is live without winning the test-and-set\n{}",
            pair.diag()
        );
        // The winner ticks on alone: were it to exit too, the ticks would
        // stop, so no exit shows it went on.
        let now = pair.max_tick().unwrap_or(0);
        pair.wait_until(
            FAILOVER_LIMIT,
            &format!("{what}: the {winner} ticks on alone (tick {})", now + 5),
            || pair.max_tick().is_some_and(|m| m >= now + 5) || !pair.running(winner),
        );
        let ticks = pair.checked_ticks();
        assert!(
            pair.exit_status(winner.name()).is_none(),
            "{what}: the {winner} exited too: exactly one VM must halt\n{}",
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
/// (`mode`), and check that the backup gives up its channel as `close`
/// says, and that one VM goes on.
fn tampered_frame_closes_the_channel(name: &str, mode: u8, close: ChannelClose) {
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
    let closed = p.pair.wait_status(
        Vm::Backup,
        STATUS_LIMIT,
        "the backup gives its channel up",
        |line| line.channel.is_some(),
    );
    assert_eq!(
        closed.channel,
        Some(close),
        "the backup closed the channel for another reason\n{}",
        p.pair.diag()
    );
    p.expect_one_survivor(name);
}

/// A flipped byte in a frame to the backup: the frame's checksum catches
/// it; the backup gives the channel up, then the failure detector and the
/// arbiter leave one VM live.
#[test]
fn a_corrupt_frame_closes_the_channel_and_one_vm_goes_on() {
    tampered_frame_closes_the_channel("flip", FLIP, ChannelClose::Corrupt);
}

/// The same with the checksum made right again: only the frame's MAC
/// tells, and the backup refuses the frame as forged.
#[test]
fn a_forged_frame_fails_authentication_and_one_vm_goes_on() {
    tampered_frame_closes_the_channel("forge", FLIP_FIX_CRC, ChannelClose::Forged);
}

/// The output rule holds outputs until the backup has the log up to
/// them; a backup that goes live has executed those outputs in replay and
/// must release them itself, since the primary may have died holding them
/// (ARCHITECTURE.md, "Invariants", 2; `ftvm_host::console`: "a backup
/// that goes live re-produces bytes the primary may already have
/// written").
/// Here the backup's acknowledgements are dropped for a second, so the
/// primary holds every tick of that second while the backup replays them;
/// then the primary is killed. Every tick must still reach the console,
/// once, in order.
#[test]
fn a_backup_going_live_releases_the_outputs_the_dead_primary_held() {
    let _serial = serial();
    let mut pair = Pair::new("held-outputs");
    let backup = pair.start_backup(&SLACK);
    let proxy = Proxy::start(backup);
    start_ticking_primary(&mut pair, &proxy.addr(), &SLACK);
    pair.wait_tick(3, BOOT_LIMIT, "booting through the proxy");
    proxy.set(DROP_ACKS);
    let dropped_at = pair.max_tick().unwrap_or(0);
    // The test's action: a second of lost acknowledgements (under the
    // 3 s failure timeout).
    std::thread::sleep(Duration::from_millis(1200));
    let held_at = pair.max_tick().unwrap_or(0);
    assert!(
        held_at <= dropped_at + 1,
        "the primary released ticks {dropped_at}..{held_at} the backup never acknowledged\n{}",
        pair.diag()
    );
    assert!(suspicion(&pair).is_none(), "{}", pair.diag());
    let primary = pair.child("primary").id();
    signal(primary, libc::SIGKILL);
    pair.wait_tick(held_at + 20, FAILOVER_LIMIT, "after the kill");
    pair.wait_status(Vm::Backup, STATUS_LIMIT, "the backup took over", |line| {
        line.took_over
    });
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
    let backup = pair.start_backup(&FAST);
    let proxy = Proxy::start_with(backup, HOLD);
    start_ticking_primary(&mut pair, &proxy.addr(), &FAST);
    pair.wait_until(
        Duration::from_secs(60),
        "the primary sends frames after the handshake",
        || proxy.frames.load(Ordering::SeqCst) > 2,
    );
    // The test's action: the frames held back for three timeouts.
    std::thread::sleep(Duration::from_millis(1500));
    proxy.set(FORWARD);
    pair.wait_until(
        Duration::from_secs(45),
        "tick 5 on the console after the late frames (is the pair wedged?)",
        || pair.max_tick().is_some_and(|t| t >= 5),
    );
    pair.checked_ticks();
    let live = Vm::BOTH
        .into_iter()
        .filter(|&vm| pair.state(vm) == Some(VmState::Live) && pair.running(vm))
        .count();
    assert!(live <= 1, "two live VMs\n{}", pair.diag());
    let said = |vm| {
        pair.status(vm)
            .map_or("none".to_string(), |l: StatusLine| l.to_string())
    };
    eprintln!(
        "slow start: primary {}; backup {}",
        said(Vm::Primary),
        said(Vm::Backup)
    );
}

// ---------------------------------------------------------------------
// The key

#[test]
fn a_primary_with_the_wrong_key_is_refused_and_the_backup_waits_on() {
    let _serial = serial();
    let mut pair = Pair::new("wrong-key");
    let wrong = pair.path("wrong-key");
    write_key(&wrong, "somebody else's key ");
    let backup = pair.start_backup(&SLACK);

    let mut intruder = pair.ftvm();
    intruder
        .args(["primary", "--backup", &backup, "--append"])
        .arg(append(TICK_CMD))
        .args(pair.vm_args(Vm::Primary, &wrong))
        .args(SLACK);
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
    eprintln!("the intruder was told: {}", errors[0]);
    assert!(
        pair.exit_status("backup").is_none(),
        "the backup gave up\n{}",
        pair.diag()
    );
    assert_eq!(
        pair.state(Vm::Backup),
        Some(VmState::Waiting),
        "{}",
        pair.diag()
    );
    assert!(pair.console().is_empty(), "{}", pair.diag());

    // The real primary gets in: the backup waited on for it.
    start_ticking_primary(&mut pair, &backup, &SLACK);
    pair.wait_tick(5, BOOT_LIMIT, "the right primary");
    pair.checked_ticks();
    let primary = pair.child("primary").id();
    let backup_pid = pair.child("backup").id();
    pair.wait_ftvm_status(STATUS_LIMIT, "ftvm status: the pair paired", |s| {
        s.is(Vm::Primary, VmState::Primary, primary)
            && s.is(Vm::Backup, VmState::Backup, backup_pid)
    });
}

// ---------------------------------------------------------------------
// Ending the pair

/// Neither VM asked the arbiter, so neither can have gone live.
fn assert_no_go_live(pair: &Pair) {
    for vm in Vm::BOTH {
        let line = pair.status(vm);
        assert!(
            line.as_ref()
                .is_some_and(|line| line.verdict.is_none() && !line.took_over),
            "the {vm} went to the arbiter: {line:?}\n{}",
            pair.diag()
        );
    }
}

/// Wait until both VMs `ended` (their processes gone) and `ftvm status`
/// says so.
fn wait_ended(pair: &Pair, (primary, backup): (u32, u32), limit: Duration, what: &str) {
    pair.wait_until(limit, &format!("{what}: both VMs exit"), || {
        !alive(primary) && !alive(backup)
    });
    pair.wait_ftvm_status(STATUS_LIMIT, &format!("{what}: both VMs ended"), |s| {
        s.is(Vm::Primary, VmState::Ended, primary) && s.is(Vm::Backup, VmState::Ended, backup)
    });
}

#[test]
fn a_clean_power_off_ends_both_without_going_live() {
    let _serial = serial();
    let mut pair = Pair::new("poweroff");
    let pids = up_ticking(&mut pair, "echo hello; echo done", &SLACK);
    wait_ended(&pair, pids, BOOT_LIMIT, "power-off");
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

/// `ftvm stop` ends the pair through the primary; the status it leaves
/// reads the same as text and as JSON; stopping again is harmless.
#[test]
fn ftvm_stop_ends_both_without_going_live() {
    let _serial = serial();
    let mut pair = Pair::new("stop");
    let pids = up_ticking(&mut pair, TICK_CMD, &SLACK);
    pair.wait_tick(5, BOOT_LIMIT, "booting");
    pair.stop();
    wait_ended(&pair, pids, Duration::from_secs(30), "stop");
    assert_no_go_live(&pair);
    pair.checked_ticks();
    assert_eq!(pair.ftvm_status_text(), pair.ftvm_status());
    pair.stop();
}

/// `ftvm console` types into the pair's guest (its shell, without a
/// command): into the primary, and after a failover into the VM that took
/// over; `poweroff` typed there ends the pair and `ftvm console` with it.
/// What `ftvm console` tells its user on stderr is checked as such.
#[test]
fn ftvm_console_types_into_the_guest_across_a_failover() {
    let _serial = serial();
    let mut pair = Pair::new("console");
    let (primary, _backup) = up_ticking(&mut pair, "", &FAST);
    let mut console = pair.ftvm();
    console
        .arg("console")
        .arg("--state-dir")
        .arg(pair.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut console = console.spawn().expect("start ftvm console");
    let mut typing = console.stdin.take().expect("piped stdin");
    let console_said = support::drain(console.stderr.take().expect("piped stderr"));
    pair.adopt("console", console);
    // The guest's shell may not be up yet: say it again until it answers.
    let answered = poll(BOOT_LIMIT, || {
        typing.write_all(b"echo typed-$((6*7))\n").expect("typing");
        console_shows(&pair, "typed-42", Duration::from_secs(1)).then_some(())
    });
    assert!(answered.is_some(), "no answer to typing\n{}", pair.diag());
    signal(primary, libc::SIGKILL);
    pair.wait_state(Vm::Backup, VmState::Live, FAILOVER_LIMIT);
    typing.write_all(b"echo after-$((6*8))\n").expect("typing");
    assert!(
        console_shows(&pair, "after-48", FAILOVER_LIMIT),
        "typing after the failover\n{}",
        pair.diag()
    );
    typing.write_all(b"poweroff\n").expect("typing");
    let (status, killed) = support::wait_or_kill(pair.child("console"), FAILOVER_LIMIT);
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
    assert_eq!(
        pair.state(Vm::Backup),
        Some(VmState::Ended),
        "{}",
        pair.diag()
    );
}

/// Whether the console shows `text` within `limit`.
fn console_shows(pair: &Pair, text: &str, limit: Duration) -> bool {
    let text = text.as_bytes();
    wait_until(limit, || {
        pair.console().windows(text.len()).any(|w| w == text)
    })
}
