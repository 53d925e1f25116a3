//! An FT pair's network: a client's TCP connection to a service in the guest
//! survives the loss of either VM (ARCHITECTURE.md, "Invariants", 2: the client
//! notices nothing but a pause).
//!
//! The guest runs an echo service (busybox `nc -ll -p 7 -e cat`); the
//! client sends numbered messages of varied sizes (up to two full frames)
//! and checks that each comes back whole and in order, on one connection,
//! with no reset and no end of stream, before, during and after:
//!
//! - kill -9 of the primary at random moments, through the pair's own
//!   network (`ftvm up --net user,hostfwd=...`: the switch process with
//!   the gateway): the backup goes live and announces the VM's address
//!   (`announced=yes`), which moves once on the switch (`moves=1` on its
//!   status line); `ftvm stop` then ends the switch too;
//! - kill -9 of the backup: the primary goes on, and the VM's address
//!   never moves;
//! - a frozen primary (SIGSTOP: its port on the switch stays attached):
//!   the backup goes live and its announcement moves the VM's address, so
//!   the client's traffic reaches it while the old primary is still
//!   frozen — not because the switch expired the old port (`expired=0`);
//!   resumed, the old primary loses the test-and-set and halts;
//! - a backup without a network for a VM with a card gives up
//!   (`halt=no-network`) and the primary runs on alone;
//! - `ftvm up` with a TAP interface, and a backup on a network that dies
//!   with it, are refused with one error line;
//! - kill -9 of the primary of a pair on TAP interfaces on a Linux bridge
//!   (in a network namespace of the test's own; needs root), where the
//!   client is the namespace's own stack on the bridge.
//!
//! What the VMs and the switch did is read from their status lines, never
//! their logs. `FTVM_SEED` repeats a run's kill moments; `FTVM_SOAK=N`
//! runs N moments.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::pair::{HaltCode, Pair, Verdict, Vm, VmState};
use support::{
    echo, echo_message, free_port, kill_seed, poll, process_alive as alive, run_limited, serial,
    signal,
};

/// The guest: the echo service, then a tick a second (so the console
/// shows the guest runs).
const ECHO_CMD: &str =
    "nc -ll -p 7 -e cat & i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done";
const DETECTION: [&str; 4] = ["--timeout-ms", "500", "--heartbeat-ms", "50"];
/// Booting the guest and the first echo, under load.
const BOOT_LIMIT: Duration = Duration::from_secs(150);
/// A failover and some more echoes.
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);
/// A status line to catch up with what a process did (the VMs rewrite
/// theirs every 200 ms, the switch every 250 ms).
const STATUS_LIMIT: Duration = Duration::from_secs(10);
/// Echoes that show the connection goes on after an event.
const MORE: u64 = 30;

fn append() -> String {
    format!("console=ttyS0 ftvm_cmd=\"{ECHO_CMD}\"")
}

// ---------------------------------------------------------------------
// The client

/// An echo client on one TCP connection, in a thread of its own.
struct Echo {
    echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64, String>>>,
}

impl Echo {
    /// Connect with `connect` (again and again until the guest's service
    /// answers a first message), then echo until stopped.
    fn start(connect: impl Fn() -> std::io::Result<TcpStream> + Send + 'static) -> Echo {
        let echoed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (Arc::clone(&echoed), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut stream = loop {
                if halt.load(Ordering::Relaxed) {
                    return Ok(0);
                }
                if start.elapsed() > BOOT_LIMIT {
                    return Err("the guest's echo service never answered".into());
                }
                // Until the service listens, a connection is refused or
                // ends at once.
                if let Ok(mut stream) = connect() {
                    if echo(&mut stream, &echo_message(0), Duration::from_secs(5)).is_ok() {
                        break stream;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            count.store(1, Ordering::Relaxed);
            let mut i = 1;
            while !halt.load(Ordering::Relaxed) {
                echo(&mut stream, &echo_message(i), FAILOVER_LIMIT)
                    .map_err(|e| format!("message {i} (after {i} echoed): {e}"))?;
                i += 1;
                count.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(i)
        });
        Echo {
            echoed,
            stop,
            thread: Some(thread),
        }
    }

    fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// Whether `n` messages have come back within `limit` (false early if
    /// the client failed).
    fn wait_for(&self, n: u64, limit: Duration) -> bool {
        poll(limit, || {
            let finished = self.thread.as_ref().is_none_or(|t| t.is_finished());
            (self.echoed() >= n || finished).then_some(())
        });
        self.echoed() >= n
    }

    /// Stop; the number of messages echoed, or what went wrong.
    fn finish(&mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err("the client thread panicked".into()),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------
// A pair with `ftvm up --net`

/// `ftvm up` of the echo guest on the pair's own network, the echo service
/// forwarded from a free host port; the port.
fn up_with_net(pair: &mut Pair) -> u16 {
    let port = free_port();
    let mut args = vec![
        "--net".to_string(),
        format!("user,hostfwd=tcp:127.0.0.1:{port}-:7"),
        "--append".to_string(),
        append(),
    ];
    args.extend(DETECTION.iter().map(|s| s.to_string()));
    pair.up(&args);
    pair.wait_until(STATUS_LIMIT, "the pair's switch on loopback", || {
        pair.switch_status()
            .is_some_and(|s| s.addr.starts_with("127.0.0.1:"))
    });
    port
}

/// An echo client through the forwarded `port`.
fn client(port: u16) -> Echo {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Echo::start(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
}

/// `ftvm up` of the echo guest on the pair's own network, and a client
/// that has had 20 echoes.
fn echoing(pair: &mut Pair) -> Echo {
    let port = up_with_net(pair);
    let mut client = client(port);
    expect_echoes(
        pair,
        &mut client,
        20,
        BOOT_LIMIT,
        "no echoes from the guest",
    );
    client
}

/// Wait for `n` echoes; fail with `what` and the diagnosis if they do not
/// come.
fn expect_echoes(pair: &Pair, client: &mut Echo, n: u64, limit: Duration, what: &str) {
    if !client.wait_for(n, limit) {
        panic!("{what}: {:?}\n{}", client.finish(), pair.diag());
    }
}

/// Wait until the switch has counted `moves` address moves, and check it
/// counted no more.
fn expect_moves(pair: &Pair, moves: u64) {
    pair.wait_until(
        STATUS_LIMIT,
        &format!("{moves} moves on the switch"),
        || pair.switch_status().is_some_and(|s| s.moves >= moves),
    );
    let switch = pair.switch_status().expect("the switch's status");
    assert_eq!(
        switch.moves,
        moves,
        "the VM's address moved {} times\n{}",
        switch.moves,
        pair.diag()
    );
}

/// A client's connection through the pair's network, and `victim` killed
/// `after` the client got going: the connection goes on, the other VM is
/// live, and the switch still runs.
fn kill_during_echo(victim: Vm, after: Duration) {
    let mut pair = Pair::new(&format!("net-kill-{victim}"));
    let mut client = echoing(&mut pair);
    pair.wait_ftvm_status(STATUS_LIMIT, "the pair and its switch up", |s| {
        s.state(Vm::Primary) == Some(VmState::Primary)
            && s.state(Vm::Backup) == Some(VmState::Backup)
            && s.switch.is_some()
    });
    // The moment: the client echoes on until the kill.
    std::thread::sleep(after);
    let before = client.echoed();
    signal(pair.pid(victim), libc::SIGKILL);
    let survivor = victim.other();
    expect_echoes(
        &pair,
        &mut client,
        before + MORE,
        FAILOVER_LIMIT,
        &format!("the connection did not go on after the {victim} was killed"),
    );
    let status = pair.wait_ftvm_status(
        STATUS_LIMIT,
        &format!("the {victim} dead, the {survivor} live, the switch up"),
        |s| {
            s.state(victim) == Some(VmState::Dead)
                && s.state(survivor) == Some(VmState::Live)
                && s.switch.is_some()
        },
    );
    // The VM's address moves once, by the announcement of a backup that
    // went live; a backup's port is dark until then.
    if victim == Vm::Primary {
        let live = status.vm(survivor);
        assert!(
            live.is_some_and(|line| line.took_over && line.announced),
            "the backup went live without announcing the VM's address: {live:?}\n{}",
            pair.diag()
        );
    }
    expect_moves(&pair, u64::from(victim == Vm::Primary));
    let echoed = client
        .finish()
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.diag()));
    assert!(
        echoed >= before + MORE,
        "{echoed} echoed, {before} before the kill"
    );
    let switch = pair.switch_status().expect("the switch's status").pid;
    pair.stop();
    pair.wait_until(STATUS_LIMIT, "ftvm stop ends the pair's switch", || {
        !alive(switch)
    });
}

#[test]
fn a_client_connection_survives_kill_9_of_the_primary() {
    let _serial = serial();
    let moments: usize = std::env::var("FTVM_SOAK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let mut state = kill_seed();
    for _ in 0..moments {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let after = Duration::from_millis(state % 1500);
        eprintln!("kill -9 of the primary {after:?} into the echoing");
        kill_during_echo(Vm::Primary, after);
    }
}

#[test]
fn a_client_connection_survives_kill_9_of_the_backup() {
    let _serial = serial();
    kill_during_echo(Vm::Backup, Duration::from_millis(300));
}

/// The backup goes live while the old primary is frozen, its port still
/// on the switch: only the announcement can move the client's traffic to
/// the new live VM before the switch would forget the old port.
#[test]
fn a_frozen_primarys_traffic_moves_to_the_backup_that_went_live() {
    let _serial = serial();
    let mut pair = Pair::new("net-frozen");
    let mut client = echoing(&mut pair);
    let primary = pair.pid(Vm::Primary);
    signal(primary, libc::SIGSTOP);
    let before = client.echoed();
    let live = pair.wait_state(Vm::Backup, VmState::Live, FAILOVER_LIMIT);
    assert!(
        live.announced,
        "the backup did not announce\n{}",
        pair.diag()
    );
    expect_echoes(
        &pair,
        &mut client,
        before + MORE,
        FAILOVER_LIMIT,
        "the connection did not go on while the old primary was frozen",
    );
    expect_moves(&pair, 1);
    let switch = pair.switch_status().expect("the switch's status");
    assert_eq!(
        switch.expired,
        0,
        "the traffic moved only because the frozen primary's port expired\n{}",
        pair.diag()
    );
    signal(primary, libc::SIGCONT);
    let old = pair.wait_state(Vm::Primary, VmState::Halted, FAILOVER_LIMIT);
    assert!(
        old.halt == Some(HaltCode::LostTestAndSet) && old.verdict == Some(Verdict::Lost),
        "the resumed old primary halted, but not for losing the test-and-set: {old}\n{}",
        pair.diag()
    );
    let more = client.echoed();
    expect_echoes(
        &pair,
        &mut client,
        more + MORE,
        FAILOVER_LIMIT,
        "the connection stalled once the old primary resumed",
    );
    client
        .finish()
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.diag()));
    pair.stop();
}

/// The one error line a refused command prints.
fn refused(cmd: Command) -> String {
    let run = run_limited(cmd, Duration::from_secs(30));
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one error line:\n{}", run.stderr);
    lines[0].to_string()
}

#[test]
fn a_pair_refuses_networks_that_would_die_with_a_vm() {
    let pair = Pair::new("net-refuse");
    let mut up = pair.ftvm();
    up.arg("up")
        .arg("--state-dir")
        .arg(pair.dir())
        .args(["--net", "tap,ifname=tap0"]);
    let error = refused(up);
    assert!(error.contains("a TAP interface each"), "{error}");

    let mut backup = pair.ftvm();
    backup
        .args(["backup", "--listen", "127.0.0.1:0", "--net", "user"])
        .args(pair.vm_args(Vm::Backup, &pair.key()));
    let error = refused(backup);
    assert!(
        error.contains("needs a network that outlives it"),
        "{error}"
    );
}

/// A backup started without a network for a VM that has a card gives up
/// as soon as it learns what the primary runs (it would take over with
/// the cable cut), and the primary runs on alone.
#[test]
fn a_backup_without_a_network_for_a_vm_with_a_card_gives_up() {
    let _serial = serial();
    let mut pair = Pair::new("net-none");
    let switch = pair.start_switch(&["--gateway", "none"]);
    let backup = pair.start_backup(&[]);
    let append = append();
    pair.start_primary(
        &backup,
        &["--net", &format!("switch:{switch}"), "--append", &append],
    );
    let Some(exit) = pair.wait_exit("backup", BOOT_LIMIT) else {
        panic!("the backup did not give up\n{}", pair.diag());
    };
    assert_eq!(exit.code(), Some(2), "{}", pair.diag());
    let gave_up = pair.status(Vm::Backup);
    assert!(
        gave_up.as_ref().is_some_and(
            |line| line.state == VmState::Halted && line.halt == Some(HaltCode::NoNetwork)
        ),
        "the backup exited, but not for having no network: {gave_up:?}\n{}",
        pair.diag()
    );
    pair.wait_state(Vm::Primary, VmState::Live, FAILOVER_LIMIT);
}

// ---------------------------------------------------------------------
// A pair on TAP interfaces on a bridge

/// A network namespace with a bridge `br0` at 10.0.2.2/24 (the guest's
/// gateway address) and two TAP interfaces on it, `tapp` for the primary
/// and `tapb` for the backup; deleted on drop. Needs root.
struct Bridge(String);

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "`ip {}` failed", args.join(" "));
}

impl Bridge {
    fn new() -> Bridge {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        assert!(
            root,
            "the TAP pair test needs root (network namespaces, TAP)"
        );
        let name = format!("ftvm-net-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let bridge = Bridge(name);
        let ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &bridge.0, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        ns(&["link", "set", "lo", "up"]);
        ns(&["link", "add", "br0", "type", "bridge"]);
        for tap in ["tapp", "tapb"] {
            ns(&["tuntap", "add", "dev", tap, "mode", "tap"]);
            ns(&["link", "set", tap, "master", "br0"]);
            ns(&["link", "set", tap, "up"]);
        }
        ns(&["addr", "add", "10.0.2.2/24", "dev", "br0"]);
        ns(&["link", "set", "br0", "up"]);
        bridge
    }

    /// A TCP connection from the namespace's own stack.
    fn connect(name: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
        use std::os::fd::AsRawFd;
        let netns = std::fs::File::open(format!("/var/run/netns/{name}"))?;
        // SAFETY: setns(2) with an open namespace descriptor moves only
        // this thread (the client's own) into the namespace.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        TcpStream::connect_timeout(&to, Duration::from_secs(5))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_tap_pair_on_a_bridge_keeps_a_client_connection_across_failover() {
    let _serial = serial();
    // Dropped after the pair, whose processes use its interfaces.
    let bridge = Bridge::new();
    let mut pair = Pair::new("net-tap");
    pair.wrap(&["ip", "netns", "exec", &bridge.0]);
    let tap = |name: &str| format!("tap,ifname={name}");
    let backup_net = tap("tapb");
    let mut backup_args = vec!["--net", &backup_net];
    backup_args.extend(DETECTION);
    let backup = pair.start_backup(&backup_args);
    let (primary_net, append) = (tap("tapp"), append());
    let mut primary_args = vec!["--net", &primary_net, "--append", &append];
    primary_args.extend(DETECTION);
    pair.start_primary(&backup, &primary_args);

    let name = bridge.0.clone();
    let mut client = Echo::start(move || Bridge::connect(&name, ([10, 0, 2, 15], 7).into()));
    expect_echoes(
        &pair,
        &mut client,
        20,
        BOOT_LIMIT,
        "no echoes over the bridge",
    );
    // The moment: the client echoes on until the kill.
    std::thread::sleep(Duration::from_millis(400));
    let before = client.echoed();
    let primary = pair.child("primary");
    let _ = primary.kill();
    let _ = primary.wait();
    expect_echoes(
        &pair,
        &mut client,
        before + MORE,
        FAILOVER_LIMIT,
        "the connection over the bridge did not survive the primary",
    );
    client
        .finish()
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.diag()));
    let live = pair.wait_state(Vm::Backup, VmState::Live, STATUS_LIMIT);
    assert!(
        live.took_over && live.announced,
        "the backup did not announce the VM's address: {live}\n{}",
        pair.diag()
    );
}
