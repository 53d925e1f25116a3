//! The FT pair's network against a standalone VM's, in one run: a client
//! on this host talks to busybox `nc -ll -p 7 -e cat` (an echo service)
//! in the default Linux guest, through a forwarded host port of the
//! user-mode gateway — in `ftvm run --net user,hostfwd=...` for the
//! standalone VM, in the pair's switch process (`ftvm up --net
//! user,hostfwd=...`) for the pair, where every frame the guest sends is
//! an output held until the backup has the log up to it, and every frame
//! it receives is logged. Measured:
//!
//! 1. echo round trip of messages of 64 bytes, 2 KiB and 4 KiB (300 of
//!    each, back to back): median and p99, standalone, FT and QEMU TCG
//!    (same kernel and initramfs, `-netdev user` with the same forward),
//!    and the ratios. The longer ones span several TCP segments: a relay
//!    that held a message's short last segment back until the guest's
//!    delayed acknowledgement stalled each of them 40 ms;
//! 2. bulk echo: 16 MiB written and read back at once on one connection
//!    (a writer and a reader thread), in MB/s of echoed data, the three
//!    again, and the pair's logging rate meanwhile (growth of the
//!    primary's `log-bytes` between its status lines) and log bytes per
//!    byte the guest received (received frames are logged inputs; sent
//!    frames are outputs);
//! 3. the pause a client sees at a failover: the longest gap between two
//!    consecutive echoes of a client exchanging 64-byte messages every
//!    2 ms, when the primary is killed (`kill -9`: its logging channel
//!    closes, so the backup knows at once) and when it freezes (SIGSTOP:
//!    detected by the default 1000 ms timeout), with the default
//!    detection settings of `ftvm up`.
//!
//! Every echo is checked byte for byte; a connection that resets or ends
//! panics the bench. Run with `cargo bench -p ftvm --bench ft_net` after
//! `scripts/guest-image`; `FTVM_BENCH_RUNS` sets the runs (default 3;
//! medians, and the max for pauses). The standalone VM uses one host CPU,
//! the pair two (primary and backup) and its switch a little. A pair's
//! processes are killed when it is dropped, a panic included
//! ([`support::pair::Pair`]).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::pair::{Pair, Vm, VmState};
use support::{
    Better, bench_runs, echo, echo_message, free_port, ftvm_with_guest as ftvm, median, poll,
    qemu_available, qemu_default_guest, report_solo_and_pair, signal, wait_or_kill,
};

const ECHO_CMD: &str = "nc -ll -p 7 -e cat & while true; do sleep 10; done";
const LIMIT: Duration = Duration::from_secs(150);
const RTT_MESSAGES: usize = 300;
/// Echoed message sizes: one segment, and two and three segments.
const SIZES: [usize; 3] = [64, 2048, 4096];
/// ftvm's default guest memory, given to QEMU too.
const MEMORY_MIB: u64 = 128;
const BULK_BYTES: usize = 16 << 20;
const PAUSE_WARMUP: Duration = Duration::from_secs(2);
const PAUSE_ECHOES_AFTER: usize = 200;

fn append() -> String {
    format!("console=ttyS0 ftvm_cmd=\"{ECHO_CMD}\"")
}

/// Connect to the guest's echo service through `port`, again and again
/// until it answers.
fn connect(port: u16) -> TcpStream {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    loop {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            if echo(&mut stream, &echo_message(0), Duration::from_secs(5)).is_ok() {
                stream.set_nodelay(true).expect("TCP_NODELAY");
                return stream;
            }
        }
        assert!(
            start.elapsed() < LIMIT,
            "the guest's echo service never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Message `i` of `size` bytes: its number, filler, a newline.
fn message(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!("{i:08}").into_bytes();
    m.resize(size - 1, b'a' + (i % 26) as u8);
    m.push(b'\n');
    m
}

fn small(i: usize) -> Vec<u8> {
    message(i, 64)
}

/// Round trips of `size`-byte messages, in ms, sorted.
fn round_trips(stream: &mut TcpStream, size: usize) -> Vec<f64> {
    let mut times: Vec<f64> = (0..RTT_MESSAGES)
        .map(|i| {
            let start = Instant::now();
            echo(stream, &message(i, size), LIMIT)
                .unwrap_or_else(|e| panic!("round trip {i} of {size} bytes: {e}"));
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// Median and p99 round trip, in ms, per size of `SIZES`.
fn round_trips_by_size(stream: &mut TcpStream) -> Vec<[f64; 2]> {
    SIZES
        .iter()
        .map(|&size| {
            let times = round_trips(stream, size);
            [quantile(&times, 0.5), quantile(&times, 0.99)]
        })
        .collect()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// MB/s of 16 MiB echoed while being written.
fn bulk(stream: &mut TcpStream) -> f64 {
    let pattern = |at: usize| (at % 251) as u8;
    let mut writer = stream.try_clone().expect("a second handle");
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..65536).map(pattern).collect();
        let mut sent = 0;
        while sent < BULK_BYTES {
            // 65536 is a multiple of nothing in 251: keep the pattern's
            // phase by sending whole chunks and checking by offset.
            writer.write_all(&chunk).expect("sending the bulk data");
            sent += chunk.len();
        }
    });
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    stream.set_read_timeout(Some(LIMIT)).expect("timeout");
    while got < BULK_BYTES {
        let n = stream.read(&mut buf).expect("reading the bulk echo");
        assert!(n > 0, "the connection ended after {got} bytes");
        for (k, &b) in buf[..n].iter().enumerate() {
            let at = (got + k) % 65536;
            assert_eq!(b, pattern(at), "bulk echo byte {} differs", got + k);
        }
        got += n;
    }
    sender.join().expect("the writer");
    BULK_BYTES as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// A standalone VM with the echo service behind `port`.
fn solo(port: u16) -> Child {
    ftvm()
        .args(["run", "--net"])
        .arg(format!("user,hostfwd=tcp:127.0.0.1:{port}-:7"))
        .arg("--append")
        .arg(append())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ftvm run")
}

/// QEMU TCG with the same kernel, initramfs and firmware as ftvm's default
/// guest, and the echo service behind `port` of its user-mode network.
fn qemu(port: u16) -> Child {
    qemu_default_guest(MEMORY_MIB, &append())
        .arg("-netdev")
        .arg(format!("user,id=n,hostfwd=tcp:127.0.0.1:{port}-:7"))
        .args(["-device", "virtio-net-device,netdev=n"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-riscv64")
}

/// Round trips and bulk throughput of one standalone VM (ftvm or QEMU).
fn measure_alone(mut child: Child, port: u16) -> (Vec<[f64; 2]>, f64) {
    let mut stream = connect(port);
    let rtt = round_trips_by_size(&mut stream);
    let bulk = bulk(&mut stream);
    drop(stream);
    let _ = child.kill();
    let _ = wait_or_kill(&mut child, Duration::from_secs(10));
    (rtt, bulk)
}

/// An FT pair with the echo service behind `port`.
fn pair_up(name: &str, port: u16) -> Pair {
    let mut pair = Pair::new(&format!("ft-net-bench-{name}"));
    pair.up(&[
        "--net",
        &format!("user,hostfwd=tcp:127.0.0.1:{port}-:7"),
        "--append",
        &append(),
    ]);
    pair
}

/// The primary's log bytes and the time its status line said so.
fn log_bytes(pair: &Pair) -> (u64, Instant) {
    // The line is rewritten every 200 ms: wait for a fresh one.
    let old = pair.status_written(Vm::Primary).map(|(_, written)| written);
    let fresh = poll(Duration::from_secs(2), || {
        pair.status_written(Vm::Primary)
            .filter(|&(_, written)| Some(written) != old)
    });
    let at = Instant::now();
    let bytes = fresh
        .and_then(|(line, _)| line.measures)
        .map_or(0, |m| m.log_bytes);
    (bytes, at)
}

/// The longest gap, in ms, between consecutive echoes of a client
/// exchanging 64-byte messages every 2 ms, across `event` done to the
/// primary of a fresh pair.
fn pause(name: &str, event: libc::c_int) -> f64 {
    let port = free_port();
    let pair = pair_up(name, port);
    let mut stream = connect(port);
    let start = Instant::now();
    let mut done = Vec::new();
    let mut fired = None;
    let mut i = 0;
    loop {
        echo(&mut stream, &small(i), LIMIT)
            .unwrap_or_else(|e| panic!("{name}: echo {i}: {e}\n{}", pair.diag()));
        done.push(Instant::now());
        i += 1;
        if fired.is_none() && start.elapsed() > PAUSE_WARMUP {
            signal(pair.pid(Vm::Primary), event);
            fired = Some(done.len());
        }
        if fired.is_some_and(|at| done.len() > at + PAUSE_ECHOES_AFTER) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    pair.wait_state(Vm::Backup, VmState::Live, Duration::from_secs(10));
    done.windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .fold(0.0, f64::max)
}

/// Columns of a sample: standalone ftvm, the FT pair, QEMU TCG (NaN
/// without QEMU).
const COLUMNS: usize = 3;

struct Sample {
    /// Per size of `SIZES`, per column: [median, p99] in ms.
    rtt: Vec<[[f64; 2]; COLUMNS]>,
    bulk: [f64; COLUMNS],
    log_mbit_s: f64,
    log_per_byte: f64,
    kill_pause: f64,
    freeze_pause: f64,
}

fn one_run(run: usize) -> Sample {
    let port = free_port();
    let (solo_rtt, solo_bulk) = measure_alone(solo(port), port);
    let (qemu_rtt, qemu_bulk) = if qemu_available() {
        let port = free_port();
        measure_alone(qemu(port), port)
    } else {
        (vec![[f64::NAN; 2]; SIZES.len()], f64::NAN)
    };

    let port = free_port();
    let pair = pair_up(&format!("pair-{run}"), port);
    let mut stream = connect(port);
    let ft_rtt = round_trips_by_size(&mut stream);
    let (log0, t0) = log_bytes(&pair);
    let ft_bulk = bulk(&mut stream);
    let (log1, t1) = log_bytes(&pair);
    drop(stream);
    drop(pair);
    let logged = log1.saturating_sub(log0) as f64;

    Sample {
        rtt: (0..SIZES.len())
            .map(|k| [solo_rtt[k], ft_rtt[k], qemu_rtt[k]])
            .collect(),
        bulk: [solo_bulk, ft_bulk, qemu_bulk],
        log_mbit_s: logged * 8.0 / 1e6 / (t1 - t0).as_secs_f64(),
        // Received frames are logged; sent ones are outputs, not logged.
        log_per_byte: logged / BULK_BYTES as f64,
        kill_pause: pause(&format!("kill-{run}"), libc::SIGKILL),
        freeze_pause: pause(&format!("freeze-{run}"), libc::SIGSTOP),
    }
}

fn main() {
    let Some(runs) = bench_runs() else {
        return;
    };
    println!(
        "ft_net bench: echo service (busybox nc + cat) in the default guest, client on host loopback through a forwarded port; {runs} runs"
    );
    let samples: Vec<Sample> = (0..runs)
        .map(|run| {
            let s = one_run(run);
            eprintln!(
                "run {run}: rtt (solo/FT/QEMU, by size) {:?} ms, bulk {:.1?} MB/s, pauses {:.0}/{:.0} ms",
                s.rtt
                    .iter()
                    .map(|c| c.map(|[median, _]| (median * 100.0).round() / 100.0))
                    .collect::<Vec<_>>(),
                s.bulk,
                s.kill_pause,
                s.freeze_pause
            );
            s
        })
        .collect();
    let col = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    let max = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).fold(0.0, f64::max);
    println!();
    println!(
        "{:<40} {:>11} {:>10} {:>9} {:>8} {:>11}",
        "", "standalone", "FT pair", "QEMU TCG", "FT/solo", "solo/QEMU"
    );
    let row = |label: &str, f: &dyn Fn(&Sample) -> [f64; COLUMNS]| {
        let [solo, ft, qemu] = [0, 1, 2].map(|c| col(&|s| f(s)[c]));
        println!(
            "{label:<40} {solo:>11.2} {ft:>10.2} {qemu:>9.2} {:>7.2}x {:>10.2}x",
            ft / solo,
            solo / qemu
        );
    };
    for (k, size) in SIZES.iter().enumerate() {
        for (q, name) in ["median", "p99"].iter().enumerate() {
            row(&format!("echo round trip, {size} B, {name} (ms)"), &|s| {
                s.rtt[k].map(|c| c[q])
            });
        }
    }
    row("bulk echo, 16 MiB (MB/s)", &|s| s.bulk);
    for (k, size) in SIZES.iter().enumerate() {
        let [solo, ft, qemu] = [0, 1, 2].map(|c| col(&|s| s.rtt[k][c][0]));
        let measure = format!("echo round trip {size} B, median");
        report_solo_and_pair(
            "ft_net",
            &measure,
            "ms",
            Better::Lower,
            [solo, ft],
            Some(qemu),
        );
    }
    let [solo, ft, qemu] = [0, 1, 2].map(|c| col(&|s| s.bulk[c]));
    let bulk = "bulk echo 16 MiB";
    report_solo_and_pair(
        "ft_net",
        bulk,
        "MB/s",
        Better::Higher,
        [solo, ft],
        Some(qemu),
    );
    println!();
    println!(
        "FT pair during the bulk echo: log {:.1} Mbit/s, {:.2} log bytes per byte the guest received",
        col(&|s| s.log_mbit_s),
        col(&|s| s.log_per_byte)
    );
    println!(
        "client-visible pause at a failover (longest gap between echoes, every 2 ms):\n  \
         primary killed (kill -9; its channel closes): median {:.0} ms, max {:.0} ms\n  \
         primary frozen (SIGSTOP; 1000 ms detection timeout): median {:.0} ms, max {:.0} ms",
        col(&|s| s.kill_pause),
        max(&|s| s.kill_pause),
        col(&|s| s.freeze_pause),
        max(&|s| s.freeze_pause)
    );
}
