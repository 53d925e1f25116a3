//! Table 4: `ftvm migrate` of either VM as a client of the guest sees it.
//!
//! Each run: `ftvm up --memory 128 --net user,hostfwd=tcp:127.0.0.1:PORT-:7`
//! (with the agent, as a user starts a pair) of the bench's guest, which
//! serves an echo service on port 7 (busybox `nc -ll -p 7 -e cat`) besides
//! filling RAM and ticking. Once it ticks and a protected pair shows, a
//! client on one TCP connection through the forwarded port sends a 64-byte
//! numbered message, waits for its echo (checked byte for byte) and
//! [`INTERVAL`], again and again, timing each round trip. After [`QUIET`]
//! of that: `ftvm migrate --vm backup`, [`QUIET`], `ftvm migrate --vm
//! primary`, [`QUIET`]. For each migration:
//!
//! - the command's total time, from its start until it exited (it waits
//!   until the pair is protected again, and says so), and the hand-over it
//!   prints (`--vm primary`: from the request until the backup runs the
//!   guest);
//! - the pause the client saw: the longest round trip of the requests
//!   under way during the command (sent before it ended, answered after it
//!   began) minus the median round trip of the run's requests outside
//!   every migration; also the longest gap between two replies during the
//!   command, and the median round trip during it;
//! - the guest's pause for the new backup's snapshot (`clone-pause-ms` of
//!   the primary of the next epoch).
//!
//! After each migration the status files must show a protected pair of
//! the next epoch whose primary is the VM expected (the old primary after
//! `--vm backup`, the old backup after `--vm primary`); the client's
//! connection must never end or reset and every echo must match its
//! request, or the bench panics with the pair's diagnosis.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::pairs::{poll_fast, protected, vms};
use crate::support::pair::{Pair, StatusLine, VmState};
use crate::support::{echo, free_port, median, run_limited};
use crate::{BOOT_LIMIT, STEP_LIMIT, TICK_LIMIT, TICKS_BEFORE, append, last_tick, ms};

/// Guest RAM of the migration rows, MiB.
pub const MIGRATE_MIB: u64 = 128;
/// The client's wait between a reply and its next request.
pub const INTERVAL: Duration = Duration::from_millis(2);
/// The client's exchanges before the first migration and after each.
pub const QUIET: Duration = Duration::from_secs(3);
/// A request's echo, across a hand-over (TCP retransmits meanwhile).
const REPLY_LIMIT: Duration = Duration::from_secs(30);
/// Bytes of a request, `\n` included.
pub const MESSAGE: usize = 64;

/// One request and its echo, ms since the client connected.
#[derive(Clone, Copy)]
struct Exchange {
    sent: f64,
    back: f64,
}

impl Exchange {
    fn rtt(&self) -> f64 {
        self.back - self.sent
    }

    /// Whether it was under way at some moment of `window`.
    fn during(&self, window: Window) -> bool {
        self.sent < window.end && self.back > window.start
    }
}

/// A migration command's run, ms since the client connected.
#[derive(Clone, Copy)]
struct Window {
    start: f64,
    end: f64,
}

/// Request `i`: its number, filler, `\n`.
fn message(i: u64) -> Vec<u8> {
    let mut m = format!("{i:08} ").into_bytes();
    m.resize(MESSAGE - 1, b'a' + (i % 26) as u8);
    m.push(b'\n');
    m
}

/// A client of the guest's echo service on one TCP connection, in a thread
/// of its own; see the module's documentation.
struct Client {
    start: Instant,
    log: Arc<Mutex<Vec<Exchange>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64, String>>>,
}

impl Client {
    /// Connect through `port` (again and again until the echo service
    /// answers, at most [`BOOT_LIMIT`]) and start exchanging.
    fn start(port: u16) -> Result<Client, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let begun = Instant::now();
        let mut stream = loop {
            if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                let _ = stream.set_nodelay(true);
                if echo(&mut stream, &message(0), Duration::from_secs(5)).is_ok() {
                    break stream;
                }
            }
            if begun.elapsed() > BOOT_LIMIT {
                return Err(format!("the echo service never answered on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let start = Instant::now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, halt) = (Arc::clone(&log), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut i = 1;
            while !halt.load(Ordering::Relaxed) {
                let sent = ms(start.elapsed());
                echo(&mut stream, &message(i), REPLY_LIMIT)
                    .map_err(|e| format!("request {i} ({} echoed before): {e}", i - 1))?;
                let back = ms(start.elapsed());
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Exchange { sent, back });
                i += 1;
                std::thread::sleep(INTERVAL);
            }
            Ok(i - 1)
        });
        Ok(Client {
            start,
            log,
            stop,
            thread: Some(thread),
        })
    }

    /// ms since the client connected.
    fn now(&self) -> f64 {
        ms(self.start.elapsed())
    }

    fn exchanges(&self) -> Vec<Exchange> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the client stopped by itself (it failed).
    fn failed(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stop; the requests echoed, or what went wrong.
    fn finish(&mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err("the client thread panicked".into()),
            None => Err("the client was finished before".into()),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The protected pair in `dir`: its epoch, primary and backup (exactly two
/// VMs run, a primary and a backup of one epoch).
fn current(dir: &std::path::Path) -> Option<(u64, StatusLine, StatusLine)> {
    let alive: Vec<StatusLine> = vms(dir)
        .into_iter()
        .filter(|(_, alive)| *alive)
        .map(|(line, _)| line)
        .collect();
    let of = |state| alive.iter().find(|l| l.state == state).cloned();
    let (primary, backup) = (of(VmState::Primary)?, of(VmState::Backup)?);
    let epoch = primary.epoch?;
    (alive.len() == 2 && backup.epoch == Some(epoch)).then_some((epoch, primary, backup))
}

/// One `ftvm migrate`, before the client's figures are worked out.
struct Step {
    window: Window,
    hand_over_ms: Option<f64>,
    clone_pause_ms: Option<f64>,
}

/// The number before `unit` in the line of `text` that holds `key`
/// (`ftvm migrate`'s report, for people: absent if its wording changed).
fn reported(text: &str, key: &str, unit: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains(key))?;
    let before = &line[..line.find(unit)?];
    before.split_whitespace().next_back()?.parse().ok()
}

/// Panic saying `what`, with the client's error if it failed, and the
/// pair's diagnosis.
fn fail(pair: &Pair, client: &mut Client, what: &str) -> ! {
    let said = if client.failed() {
        format!("the client: {:?}", client.finish())
    } else {
        "the client was fine".to_string()
    };
    panic!("{what}; {said}\n{}", pair.diag());
}

/// `ftvm migrate --vm VM` of the protected pair, with the client going on.
fn migrate(pair: &Pair, client: &mut Client, vm: &str) -> Step {
    let dir = pair.dir();
    let Some((epoch, primary, backup)) = current(dir) else {
        fail(
            pair,
            client,
            &format!("no protected pair to migrate the {vm} of"),
        );
    };
    let expected = if vm == "primary" {
        backup.name
    } else {
        primary.name
    };
    let mut cmd = pair.ftvm();
    cmd.args(["migrate", "--state-dir"])
        .arg(dir)
        .args(["--vm", vm]);
    let start = client.now();
    let run = run_limited(cmd, STEP_LIMIT);
    let end = client.now();
    let stdout = run.stdout_text();
    if run.code != Some(0) {
        fail(
            pair,
            client,
            &format!(
                "ftvm migrate --vm {vm}: {:?} (timed out: {})\n{stdout}{}",
                run.code, run.timed_out, run.stderr
            ),
        );
    }
    let (line, _) = poll_fast(
        pair,
        Duration::from_secs(10),
        &format!("a protected pair of epoch {} after ftvm migrate", epoch + 1),
        || protected(dir, epoch + 1),
    );
    if line.name != expected {
        fail(
            pair,
            client,
            &format!("after migrating the {vm} the guest runs on {line}, not on {expected:?}"),
        );
    }
    Step {
        window: Window { start, end },
        hand_over_ms: reported(&stdout, "handed the VM over", " ms"),
        clone_pause_ms: line.clone_pause_ms,
    }
}

/// Let the client go on for [`QUIET`]; it must not fail.
fn quiet(pair: &Pair, client: &mut Client) {
    let start = Instant::now();
    while start.elapsed() < QUIET {
        if client.failed() {
            fail(pair, client, "the client failed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One migration, as the client saw it.
pub struct MoveRun {
    /// The command, from its start until it exited.
    pub total_s: f64,
    /// What `--vm primary` reports: from asking the primary to hand over
    /// until the backup runs the guest.
    pub hand_over_ms: Option<f64>,
    /// The guest's pause for the new backup's snapshot.
    pub clone_pause_ms: Option<f64>,
    /// The longest round trip during the command minus the median outside.
    pub pause_ms: f64,
    /// When the longest round trip's request was sent, ms after the
    /// command started (negative: before).
    pub pause_at_ms: f64,
    /// The longest gap between two replies during the command.
    pub gap_ms: f64,
    pub rtt_during_ms: f64,
    /// The median round trip of the run outside every migration.
    pub rtt_outside_ms: f64,
    /// Requests under way during the command.
    pub requests: usize,
}

/// One run's migrations: the backup's, then the primary's.
pub struct Moves {
    pub backup: MoveRun,
    pub primary: MoveRun,
    /// Requests the client exchanged in the run.
    pub exchanges: u64,
}

fn median_or_nan(v: Vec<f64>) -> f64 {
    if v.is_empty() { f64::NAN } else { median(v) }
}

/// The client's view of `step`, given all its exchanges and the median
/// round trip outside every migration.
fn seen(step: &Step, all: &[Exchange], outside: f64) -> MoveRun {
    let w = step.window;
    let under_way: Vec<&Exchange> = all.iter().filter(|e| e.during(w)).collect();
    let during: Vec<f64> = under_way.iter().map(|e| e.rtt()).collect();
    let pause_at_ms = under_way
        .iter()
        .max_by(|a, b| a.rtt().total_cmp(&b.rtt()))
        .map_or(f64::NAN, |e| e.sent - w.start);
    let gap_ms = all
        .windows(2)
        .filter(|p| p[1].back > w.start && p[0].back < w.end)
        .map(|p| p[1].back - p[0].back)
        .fold(0.0, f64::max);
    let longest = during.iter().copied().fold(f64::NAN, f64::max);
    MoveRun {
        total_s: (w.end - w.start) / 1e3,
        hand_over_ms: step.hand_over_ms,
        clone_pause_ms: step.clone_pause_ms,
        pause_ms: longest - outside,
        pause_at_ms,
        gap_ms,
        requests: during.len(),
        rtt_during_ms: median_or_nan(during),
        rtt_outside_ms: outside,
    }
}

/// One run of table 4; see the module's documentation.
pub fn ftvm_migrations(run: usize) -> Moves {
    let port = free_port();
    let mut pair = Pair::new(&format!("clone-bench-migrate-{run}"));
    let memory = MIGRATE_MIB.to_string();
    let net = format!("user,hostfwd=tcp:127.0.0.1:{port}-:7");
    let append = append(MIGRATE_MIB);
    pair.up_restoring(&["--memory", &memory, "--net", &net, "--append", &append]);
    pair.wait_until(
        BOOT_LIMIT,
        &format!("the guest filled a quarter of its RAM and printed tick {TICKS_BEFORE}"),
        || last_tick(&pair.console()).is_some_and(|t| t >= TICKS_BEFORE),
    );
    poll_fast(&pair, STEP_LIMIT, "a protected pair", || {
        current(pair.dir())
    });
    let mut client = Client::start(port).unwrap_or_else(|e| panic!("{e}\n{}", pair.diag()));
    quiet(&pair, &mut client);
    let backup = migrate(&pair, &mut client, "backup");
    quiet(&pair, &mut client);
    let before = last_tick(&pair.console());
    let primary = migrate(&pair, &mut client, "primary");
    quiet(&pair, &mut client);
    let exchanges = client
        .finish()
        .unwrap_or_else(|e| panic!("the client: {e}\n{}", pair.diag()));
    pair.wait_until(TICK_LIMIT, "the guest ticks after the migrations", || {
        last_tick(&pair.console()) > before
    });
    pair.stop();
    let all = client.exchanges();
    let windows = [backup.window, primary.window];
    let outside = median_or_nan(
        all.iter()
            .filter(|e| windows.iter().all(|&w| !e.during(w)))
            .map(Exchange::rtt)
            .collect(),
    );
    let moves = Moves {
        backup: seen(&backup, &all, outside),
        primary: seen(&primary, &all, outside),
        exchanges,
    };
    for (vm, m) in [("backup", &moves.backup), ("primary", &moves.primary)] {
        eprintln!(
            "run {run}: ftvm migrate --vm {vm}: {:.2} s, client pause {:.1} ms at {:.0} ms (longest \
             gap {:.1} ms, round trip {:.2} ms during, {:.2} ms outside, {} requests during), \
             hand-over {:?} ms, snapshot pause {:?} ms",
            m.total_s,
            m.pause_ms,
            m.pause_at_ms,
            m.gap_ms,
            m.rtt_during_ms,
            m.rtt_outside_ms,
            m.requests,
            m.hand_over_ms,
            m.clone_pause_ms
        );
    }
    moves
}
