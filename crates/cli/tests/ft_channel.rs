//! The FT pair's logging channel under attack and failure, with `ftvm
//! primary` and `ftvm backup` run by hand and joined through a proxy in
//! the test, the guest printing `tick N` every 100 ms (`support::ticks`):
//!
//! - the channel cut, black-holed, corrupted or forged: exactly one VM goes
//!   live (`verdict=won`), the other halts (`halt=lost-test-and-set`, exit
//!   code 2); a corrupt frame closes the backup's channel as
//!   `channel=corrupt`, a forged one as `channel=forged`;
//! - the backup's acknowledgements lost, then the primary killed: the
//!   backup releases the outputs the primary held;
//! - the primary's first frames late: the pair does not wedge;
//! - a primary with the wrong key is refused (one error line about the
//!   key) and the backup waits on for the right one.
//!
//! What the VMs did is read from their status lines, never their logs, and
//! the console must read as one stream throughout. Every process is killed
//! when its test ends, pass or fail ([`support::pair::Pair`]).

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::pair::{ChannelClose, HaltCode, Pair, StatusLine, Verdict, Vm, VmState, write_key};
use support::ticks::*;
use support::{Finished, poll, run_limited, serial, signal};

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

/// A clone target whose survivor never comes (`--accept-timeout`, which
/// the cluster agent gives the backups it starts) gives up with one line
/// instead of waiting for ever; without a connection nothing else
/// happens.
#[test]
fn a_backup_that_no_primary_reaches_gives_up_after_its_accept_timeout() {
    let pair = Pair::new("accept-timeout");
    let mut backup = pair.ftvm();
    backup
        .args(["backup", "--listen", "127.0.0.1:0", "--epoch", "3"])
        .args(["--accept-timeout", "1", "--key-file"])
        .arg(pair.key())
        .arg("--arbiter")
        .arg(pair.path("arbiter"));
    let run: Finished = run_limited(backup, Duration::from_secs(30));
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("no primary came within 1 s"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}
