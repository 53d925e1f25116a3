//! The FT pair end to end, as processes on this host: `ftvm up`, `ftvm
//! status`, `ftvm stop` and `ftvm console` (the logging channel through a
//! proxy, and `ftvm primary` / `ftvm backup` run by hand, are in
//! `ft_channel.rs`).
//!
//! The guest prints `tick N` every 100 ms; every test checks that the
//! pair's console file reads as one stream across whatever happened (ticks
//! 0..=M with no gap and no duplicate, nothing but text, every line ending
//! in `\r\n`; `support::ticks`), and that at most one VM ever runs the
//! guest alone:
//!
//! - kill -9 of the primary at random moments, while ticking and while the
//!   guest boots: the backup goes live (`took-over`, `verdict=won`), `ftvm
//!   status` says the primary is `dead` (`was=primary`) and the ticks go on
//!   (`FTVM_SOAK=N` runs N moments instead of the default ones, one in
//!   four during boot; `FTVM_SEED` repeats a run's moments; `FTVM_PAIRS`
//!   pairs run at a time, default 2);
//! - kill -9 of the backup: the primary wins the test-and-set and goes on
//!   alone;
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

use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::pair::{Pair, Verdict, Vm, VmState};
use support::ticks::*;
use support::{kill_seed, poll, process_alive as alive, serial, signal, wait_until};

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
