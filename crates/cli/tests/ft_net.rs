//! An FT pair's network: a client's TCP connection to a service in the
//! guest survives the loss of either VM (DESIGN.md §7, invariant 2: the
//! client notices nothing but a pause).
//!
//! The guest runs an echo service (busybox `nc -ll -p 7 -e cat`); the
//! client sends numbered messages of varied sizes (up to two full frames)
//! and checks that each comes back whole and in order, on one connection,
//! with no reset and no end of stream, before, during and after:
//!
//! - kill -9 of the primary at random moments, through the pair's own
//!   network (`ftvm up --net user,hostfwd=...`: the switch process with
//!   the gateway);
//! - kill -9 of the backup;
//! - a frozen primary (SIGSTOP: its port on the switch stays attached):
//!   the backup goes live and its announcement moves the VM's address, so
//!   the client's traffic reaches it while the old primary is still
//!   frozen; resumed, the old primary halts;
//! - kill -9 of the primary of a pair on TAP interfaces on a Linux bridge
//!   (in a network namespace of the test's own; needs root), where the
//!   client is the namespace's own stack on the bridge.
//!
//! `FTVM_SEED` repeats a run's kill moments; `FTVM_SOAK=N` runs N moments.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{
    echo, echo_message, free_port, ftvm_bin, ftvm_with_guest as ftvm, image_dir, kill_seed, poll,
    process_alive as alive, run_limited, signal, status_value,
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
/// Echoes that show the connection goes on after an event.
const MORE: u64 = 30;

fn append() -> String {
    format!("console=ttyS0 ftvm_cmd=\"{ECHO_CMD}\"")
}

/// One pair-running test at a time: they share two cores.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
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

/// A pair's state directory; every process of it is killed on drop, and
/// the directory kept (and named) if the test failed.
struct Pair {
    dir: PathBuf,
    port: u16,
}

impl Pair {
    fn up(tag: &str) -> Pair {
        let dir = std::env::temp_dir().join(format!("ftvm-ft-net-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("state dir");
        let port = free_port();
        let pair = Pair { dir, port };
        let mut up = ftvm();
        up.arg("up")
            .arg("--state-dir")
            .arg(&pair.dir)
            .arg("--net")
            .arg(format!("user,hostfwd=tcp:127.0.0.1:{port}-:7"))
            .arg("--append")
            .arg(append())
            .args(DETECTION);
        let run = run_limited(up, Duration::from_secs(90));
        assert_eq!(
            run.code,
            Some(0),
            "ftvm up: {}{}",
            run.stdout_text(),
            run.stderr
        );
        assert!(run.stdout_text().contains("network: switch:127.0.0.1:"));
        pair
    }

    fn client(&self) -> Echo {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        Echo::start(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
    }

    fn pid_opt(&self, name: &str) -> Option<u32> {
        status_value(&self.dir.join(format!("{name}.status")), "pid=")
    }

    fn pid(&self, name: &str) -> u32 {
        self.pid_opt(name)
            .unwrap_or_else(|| panic!("no pid in {name}.status\n{}", self.diag()))
    }

    fn word(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.status")))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// Wait until `NAME.status` begins with `word`.
    fn wait_word(&self, name: &str, word: &str, what: &str) {
        let seen = poll(FAILOVER_LIMIT, || (self.word(name) == word).then_some(()));
        assert!(seen.is_some(), "{what}\n{}", self.diag());
    }

    fn status(&self) -> Vec<String> {
        let mut cmd = ftvm();
        cmd.arg("status").arg("--state-dir").arg(&self.dir);
        let run = run_limited(cmd, Duration::from_secs(30));
        run.stdout_text().lines().map(String::from).collect()
    }

    /// Wait until `ftvm status` lines start with `words`.
    fn expect_status(&self, words: &[&str], limit: Duration) {
        let mut last = Vec::new();
        let seen = poll(limit, || {
            last = self.status();
            (last.len() == words.len() && last.iter().zip(words).all(|(l, w)| l.starts_with(w)))
                .then_some(())
        });
        assert!(
            seen.is_some(),
            "ftvm status never showed {words:?}; last:\n{}\n{}",
            last.join("\n"),
            self.diag()
        );
    }

    /// Wait for `n` echoes; panic with `what` and the diagnosis if they
    /// do not come.
    fn expect_echoes(&self, client: &mut Echo, n: u64, limit: Duration, what: &str) {
        if !client.wait_for(n, limit) {
            panic!("{what}: {:?}\n{}", client.finish(), self.diag());
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn diag(&self) -> String {
        let mut out = format!("--- state directory {}\n", self.dir.display());
        for name in ["primary", "backup", "switch"] {
            let status = std::fs::read_to_string(self.dir.join(format!("{name}.status")))
                .unwrap_or_default();
            out += &format!("{name}.status: {}", status.trim_end());
            let log = self.log(name);
            let lines: Vec<&str> = log.lines().collect();
            out += &format!("\n--- {name}.log (last 20 lines)\n");
            for line in &lines[lines.len().saturating_sub(20)..] {
                out += line;
                out.push('\n');
            }
        }
        out
    }

    fn stop(&self) {
        let mut cmd = ftvm();
        cmd.arg("stop").arg("--state-dir").arg(&self.dir);
        let run = run_limited(cmd, Duration::from_secs(60));
        assert_eq!(
            run.code,
            Some(0),
            "ftvm stop: {}\n{}",
            run.stderr,
            self.diag()
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for name in ["primary", "backup", "switch"] {
            if let Some(pid) = self.pid_opt(name).filter(|&pid| alive(pid)) {
                signal(pid, libc::SIGCONT);
                signal(pid, libc::SIGKILL);
            }
        }
        if std::thread::panicking() {
            eprintln!("kept {} for a post-mortem", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A client's connection through the pair's network, and one VM killed
/// `after` the client got going: the connection goes on, the other VM is
/// live, and the switch still runs.
fn kill_during_echo(victim: &str, after: Duration) {
    let pair = Pair::up(&format!("kill-{victim}"));
    let mut client = pair.client();
    pair.expect_echoes(&mut client, 20, BOOT_LIMIT, "no echoes from the guest");
    pair.expect_status(&["primary", "backup", "switch"], Duration::from_secs(10));
    std::thread::sleep(after);
    let before = client.echoed();
    signal(pair.pid(victim), libc::SIGKILL);
    let survivor = if victim == "primary" {
        "backup"
    } else {
        "primary"
    };
    pair.expect_echoes(
        &mut client,
        before + MORE,
        FAILOVER_LIMIT,
        &format!("the connection did not go on after the {victim} was killed"),
    );
    let words: [&str; 3] = if victim == "primary" {
        ["dead", "live", "switch"]
    } else {
        ["live", "dead", "switch"]
    };
    pair.expect_status(&words, Duration::from_secs(10));
    assert_eq!(pair.word(survivor), "live");
    // The VM's address moved once, by the announcement of a backup that
    // went live; a backup's port is dark until then.
    let moves = pair.log("switch").matches("address moved").count();
    assert_eq!(
        moves,
        usize::from(victim == "primary"),
        "the VM's address moved {moves} times\n{}",
        pair.diag()
    );
    let echoed = client
        .finish()
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.diag()));
    assert!(
        echoed >= before + MORE,
        "{echoed} echoed, {before} before the kill"
    );
    pair.stop();
    let switch = pair.pid("switch");
    assert!(
        poll(Duration::from_secs(10), || (!alive(switch)).then_some(())).is_some(),
        "ftvm stop left the pair's switch running"
    );
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
        kill_during_echo("primary", after);
    }
}

#[test]
fn a_client_connection_survives_kill_9_of_the_backup() {
    let _serial = serial();
    kill_during_echo("backup", Duration::from_millis(300));
}

/// The backup goes live while the old primary is frozen, its port still
/// on the switch: only the announcement can move the client's traffic to
/// the new live VM before the switch would forget the old port.
#[test]
fn a_frozen_primarys_traffic_moves_to_the_backup_that_went_live() {
    let _serial = serial();
    let pair = Pair::up("frozen");
    let mut client = pair.client();
    pair.expect_echoes(&mut client, 20, BOOT_LIMIT, "no echoes from the guest");
    let primary = pair.pid("primary");
    signal(primary, libc::SIGSTOP);
    let before = client.echoed();
    pair.wait_word("backup", "live", "the backup did not go live");
    pair.expect_echoes(
        &mut client,
        before + MORE,
        FAILOVER_LIMIT,
        "the connection did not go on while the old primary was frozen",
    );
    let switch_log = pair.log("switch");
    assert!(
        switch_log.contains("address moved to another port"),
        "the switch saw no announcement:\n{switch_log}"
    );
    assert!(
        !switch_log.contains("port gone silent"),
        "the traffic moved only because the frozen primary's port expired:\n{switch_log}"
    );
    signal(primary, libc::SIGCONT);
    pair.wait_word("primary", "halted", "the resumed old primary did not halt");
    let more = client.echoed();
    pair.expect_echoes(
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

#[test]
fn a_pair_refuses_networks_that_would_die_with_a_vm() {
    let dir = std::env::temp_dir().join(format!("ftvm-ft-net-refuse-{}", std::process::id()));
    let mut up = ftvm();
    up.arg("up")
        .arg("--state-dir")
        .arg(&dir)
        .args(["--net", "tap,ifname=tap0"]);
    let run = run_limited(up, Duration::from_secs(30));
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("a TAP interface each"),
        "{}",
        run.stderr
    );

    let key = dir.join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").expect("key");
    let mut backup = ftvm();
    backup
        .args([
            "backup",
            "--listen",
            "127.0.0.1:0",
            "--net",
            "user",
            "--key-file",
        ])
        .arg(&key)
        .arg("--arbiter")
        .arg(dir.join("arbiter"));
    let run = run_limited(backup, Duration::from_secs(30));
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("needs a network that outlives it"),
        "{}",
        run.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A backup started without a network for a VM that has a card gives up
/// as soon as it learns what the primary runs (it would take over with
/// the cable cut), and the primary runs on alone.
#[test]
fn a_backup_without_a_network_for_a_vm_with_a_card_gives_up() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("ftvm-ft-net-nonet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(dir.join("key"), "a pre-shared key of this test's own").expect("key");
    let spawn = |args: &[&str], log: &str| -> Child {
        ftvm()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).expect("log"))
            .spawn()
            .expect("start ftvm")
    };
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let mut switch = spawn(
        &[
            "switch",
            "--gateway",
            "none",
            "--addr-file",
            &path("switch.addr"),
        ],
        "switch.log",
    );
    let mut backup = spawn(
        &[
            "backup",
            "--listen",
            "127.0.0.1:0",
            "--addr-file",
            &path("backup.addr"),
            "--key-file",
            &path("key"),
            "--arbiter",
            &path("arbiter"),
            "--status-file",
            &path("backup.status"),
        ],
        "backup.log",
    );
    let addr = |name: &str| {
        poll(Duration::from_secs(20), || {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .filter(|a| a.ends_with('\n'))
        })
        .unwrap_or_else(|| panic!("no {name}"))
        .trim()
        .to_string()
    };
    let (switch_addr, backup_addr) = (addr("switch.addr"), addr("backup.addr"));
    let append = append();
    let mut primary = spawn(
        &[
            "primary",
            "--backup",
            &backup_addr,
            "--net",
            &format!("switch:{switch_addr}"),
            "--key-file",
            &path("key"),
            "--arbiter",
            &path("arbiter"),
            "--status-file",
            &path("primary.status"),
            "--append",
            &append,
        ],
        "primary.log",
    );
    let (status, killed) = support::wait_or_kill(&mut backup, BOOT_LIMIT);
    let log = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let primary_live = poll(FAILOVER_LIMIT, || {
        log("primary.status").starts_with("live").then_some(())
    });
    for child in [&mut primary, &mut switch] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(!killed, "the backup did not give up\n{}", log("backup.log"));
    assert_eq!(status.code(), Some(2), "{}", log("backup.log"));
    assert!(
        log("backup.log").contains("has a network card, and this VM has no network"),
        "{}",
        log("backup.log")
    );
    assert!(
        primary_live.is_some(),
        "the primary did not run on alone\n{}",
        log("primary.log")
    );
    let _ = std::fs::remove_dir_all(&dir);
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

    /// `ftvm ARGS` in the namespace.
    fn ftvm(&self, args: &[&str], log: &Path) -> Child {
        let log = std::fs::File::create(log).expect("log file");
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .arg(ftvm_bin())
            .args(args)
            .env("FTVM_GUEST_IMAGE", image_dir())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ftvm")
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
    let bridge = Bridge::new();
    let dir = std::env::temp_dir().join(format!("ftvm-ft-net-tap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("state dir");
    std::fs::write(dir.join("key"), "a pre-shared key of this test's own").expect("key");
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let common = |name: &str, tap: &str| -> Vec<String> {
        let mut args: Vec<String> = [
            "--key-file",
            &path("key"),
            "--arbiter",
            &path("arbiter"),
            "--console-file",
            &path("console"),
            "--status-file",
            &path(&format!("{name}.status")),
            "--net",
            &format!("tap,ifname={tap}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(DETECTION.iter().map(|s| s.to_string()));
        args
    };
    let mut backup_args = vec![
        "backup".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--addr-file".into(),
        path("backup.addr"),
    ];
    backup_args.extend(common("backup", "tapb"));
    let backup_args: Vec<&str> = backup_args.iter().map(String::as_str).collect();
    let mut backup = bridge.ftvm(&backup_args, &dir.join("backup.log"));
    let addr = poll(Duration::from_secs(20), || {
        std::fs::read_to_string(dir.join("backup.addr"))
            .ok()
            .filter(|a| a.ends_with('\n'))
    })
    .expect("the backup listens");
    let append = append();
    let mut primary_args = vec![
        "primary".to_string(),
        "--backup".into(),
        addr.trim().to_string(),
        "--append".into(),
        append,
    ];
    primary_args.extend(common("primary", "tapp"));
    let primary_args: Vec<&str> = primary_args.iter().map(String::as_str).collect();
    let mut primary = bridge.ftvm(&primary_args, &dir.join("primary.log"));
    let logs = || {
        ["primary", "backup"]
            .iter()
            .map(|n| {
                format!(
                    "--- {n}.log\n{}",
                    std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default()
                )
            })
            .collect::<String>()
    };

    let name = bridge.0.clone();
    let mut client = Echo::start(move || Bridge::connect(&name, ([10, 0, 2, 15], 7).into()));
    let booted = client.wait_for(20, BOOT_LIMIT);
    if !booted {
        let _ = primary.kill();
        let _ = backup.kill();
        panic!(
            "no echoes over the bridge: {:?}\n{}",
            client.finish(),
            logs()
        );
    }
    std::thread::sleep(Duration::from_millis(400));
    let before = client.echoed();
    let _ = primary.kill();
    let _ = primary.wait();
    let went_on = client.wait_for(before + MORE, FAILOVER_LIMIT);
    let status = std::fs::read_to_string(dir.join("backup.status")).unwrap_or_default();
    let result = client.finish();
    let _ = backup.kill();
    let _ = backup.wait();
    assert!(
        went_on && result.is_ok(),
        "the connection over the bridge did not survive the primary: {result:?}\n{}",
        logs()
    );
    assert!(status.starts_with("live"), "{status}\n{}", logs());
    assert!(
        logs().contains("announcing the VM's address"),
        "the backup did not announce\n{}",
        logs()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
