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
//!    delayed acknowledgement stalled each of them 40 ms; and 64-byte
//!    messages 20 ms apart (a client with think time: the guest idles
//!    between them, and its host's caches go cold), median;
//! 2. bulk echo: 16 MiB written and read back at once on one connection
//!    (a writer and a reader thread), in MB/s of echoed data, the three
//!    again, and the pair's logging rate meanwhile (growth of the
//!    primary's `log-bytes` between its status lines) and log bytes per
//!    byte the guest received (received frames are logged inputs; sent
//!    frames are outputs), and the host CPU each process used per MB
//!    echoed (the standalone VM, QEMU, the pair's primary, backup and
//!    switch; the standalone VM runs its gateway itself, the pair's
//!    switch runs the pair's): on one 2-core host a pair's bulk is bound
//!    by the cores, and this says what it needs with a core per VM;
//! 3. bulk one way: 16 MiB from the host into the guest (a discard
//!    service, `cat >/dev/null`; done when the guest closed after the
//!    host's end), and 16 MiB from the guest to the host (`cat
//!    /dev/zero`), each direction's MB/s for the three;
//! 4. the pause a client sees at a failover: the longest gap between two
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
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::pair::{Pair, Vm, VmState};
use support::{
    Better, bench_runs, echo, echo_message, ftvm_with_guest as ftvm, median, poll, qemu_available,
    qemu_default_guest, report_solo_and_pair, signal, wait_or_kill,
};

/// Services in the guest: echo on 7, discard on 9, an endless source on
/// 19 (ports as in the old inetd internal services).
const SERVICES_CMD: &str = "nc -ll -p 7 -e cat & nc -ll -p 9 -e sh -c 'cat >/dev/null' & \
     nc -ll -p 19 -e cat /dev/zero & while true; do sleep 10; done";
const LIMIT: Duration = Duration::from_secs(150);
const RTT_MESSAGES: usize = 300;
/// Messages of the paced echo, and the client's think time between them.
const PACED_MESSAGES: usize = 50;
const PACE: Duration = Duration::from_millis(20);
/// Echoed message sizes: one segment, and two and three segments.
const SIZES: [usize; 3] = [64, 2048, 4096];
/// ftvm's default guest memory, given to QEMU too.
const MEMORY_MIB: u64 = 128;
const BULK_BYTES: usize = 16 << 20;
const PAUSE_WARMUP: Duration = Duration::from_secs(2);
const PAUSE_ECHOES_AFTER: usize = 200;

fn append() -> String {
    format!("console=ttyS0 ftvm_cmd=\"{SERVICES_CMD}\"")
}

/// The host ports forwarded to the guest's services.
#[derive(Clone, Copy)]
struct Ports {
    echo: u16,
    discard: u16,
    source: u16,
}

impl Ports {
    /// Three distinct free ports (held together while they are chosen).
    fn free() -> Ports {
        let held: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let [echo, discard, source] =
            [0, 1, 2].map(|k| held[k].local_addr().expect("bound").port());
        Ports {
            echo,
            discard,
            source,
        }
    }

    /// The user-mode network's forwards, in QEMU's syntax (ftvm's too).
    fn forwards(&self) -> String {
        format!(
            "user,hostfwd=tcp:127.0.0.1:{}-:7,hostfwd=tcp:127.0.0.1:{}-:9,hostfwd=tcp:127.0.0.1:{}-:19",
            self.echo, self.discard, self.source
        )
    }
}

/// Connect to the guest's echo service through `port`, again and again
/// until it answers (so its other services are up too).
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

/// Median round trip, in ms, of 64-byte messages [`PACE`] apart.
fn paced_round_trips(stream: &mut TcpStream) -> f64 {
    let mut times: Vec<f64> = (0..PACED_MESSAGES)
        .map(|i| {
            std::thread::sleep(PACE);
            let start = Instant::now();
            echo(stream, &small(i), LIMIT).unwrap_or_else(|e| panic!("paced round trip {i}: {e}"));
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    quantile(&times, 0.5)
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

/// A connection to one of the guest's one-way services.
fn connect_once(port: u16) -> TcpStream {
    let stream = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), LIMIT)
        .expect("connect to a guest service");
    stream.set_read_timeout(Some(LIMIT)).expect("timeout");
    stream
}

/// MB/s of 16 MiB sent into the guest's discard service, until the guest
/// closes after reading the host's end (so it has had every byte).
fn upload(port: u16) -> f64 {
    let mut stream = connect_once(port);
    let chunk = vec![0x5a; 65536];
    let start = Instant::now();
    for _ in 0..BULK_BYTES / chunk.len() {
        stream.write_all(&chunk).expect("sending into the guest");
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("the host's end");
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the guest's close after the data");
    assert!(rest.is_empty(), "the discard service answered {rest:?}");
    BULK_BYTES as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// MB/s of 16 MiB read from the guest's source of zeros.
fn download(port: u16) -> f64 {
    let mut stream = connect_once(port);
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    let start = Instant::now();
    while got < BULK_BYTES {
        let n = stream.read(&mut buf).expect("reading from the guest");
        assert!(n > 0, "the guest's source ended after {got} bytes");
        assert!(buf[..n].iter().all(|&b| b == 0), "a non-zero byte");
        got += n;
    }
    BULK_BYTES as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// A standalone VM with the guest's services behind `ports`.
fn solo(ports: Ports) -> Child {
    ftvm()
        .args(["run", "--net"])
        .arg(ports.forwards())
        .arg("--append")
        .arg(append())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ftvm run")
}

/// QEMU TCG with the same kernel, initramfs and firmware as ftvm's default
/// guest, and the guest's services behind `ports` of its user-mode network.
fn qemu(ports: Ports) -> Child {
    qemu_default_guest(MEMORY_MIB, &append())
        .arg("-netdev")
        .arg(ports.forwards().replacen("user", "user,id=n", 1))
        .args(["-device", "virtio-net-device,netdev=n"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-riscv64")
}

/// Host CPU seconds (user and system, all threads) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's closing parenthesis: state, then utime and stime
    // as the 12th and 13th fields.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |k: usize| {
        fields
            .get(k)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // SAFETY: sysconf reads a configuration value; it has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / per_second
}

/// Milliseconds of host CPU that each of `pids` used per MB echoed
/// during `bulk`, and its MB/s.
fn bulk_with_cpu(stream: &mut TcpStream, pids: &[u32]) -> (f64, Vec<f64>) {
    let before: Vec<f64> = pids.iter().map(|&pid| cpu_seconds(pid)).collect();
    let rate = bulk(stream);
    let mb = BULK_BYTES as f64 / 1e6;
    let cpu = pids
        .iter()
        .zip(before)
        .map(|(&pid, before)| (cpu_seconds(pid) - before) * 1e3 / mb)
        .collect();
    (rate, cpu)
}

/// What one VM (or pair) was measured at.
struct Measured {
    /// Per size of `SIZES`: [median, p99] in ms.
    rtt: Vec<[f64; 2]>,
    /// Median ms of the paced echo.
    paced: f64,
    /// MB/s: the echo, into the guest, out of the guest.
    bulk: f64,
    upload: f64,
    download: f64,
    /// Host CPU ms per MB echoed, of the VM's process.
    cpu_per_mb: f64,
}

/// Round trips and bulk throughputs of the guest behind `ports`, run by
/// process `pid`.
fn measure(ports: Ports, pid: u32) -> Measured {
    let mut stream = connect(ports.echo);
    let rtt = round_trips_by_size(&mut stream);
    let paced = paced_round_trips(&mut stream);
    let (bulk, cpu) = bulk_with_cpu(&mut stream, &[pid]);
    drop(stream);
    Measured {
        rtt,
        paced,
        bulk,
        upload: upload(ports.discard),
        download: download(ports.source),
        cpu_per_mb: cpu[0],
    }
}

/// One standalone VM (ftvm or QEMU), measured and stopped.
fn measure_alone(mut child: Child, ports: Ports) -> Measured {
    let measured = measure(ports, child.id());
    let _ = child.kill();
    let _ = wait_or_kill(&mut child, Duration::from_secs(10));
    measured
}

/// An FT pair with the guest's services behind `ports`.
fn pair_up(name: &str, ports: Ports) -> Pair {
    let mut pair = Pair::new(&format!("ft-net-bench-{name}"));
    pair.up(&["--net", &ports.forwards(), "--append", &append()]);
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
    let ports = Ports::free();
    let pair = pair_up(name, ports);
    let mut stream = connect(ports.echo);
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

/// One measure of a sample, per column.
type Column<'a> = dyn Fn(&Sample) -> [f64; COLUMNS] + 'a;

struct Sample {
    /// Per size of `SIZES`, per column: [median, p99] in ms.
    rtt: Vec<[[f64; 2]; COLUMNS]>,
    paced: [f64; COLUMNS],
    bulk: [f64; COLUMNS],
    upload: [f64; COLUMNS],
    download: [f64; COLUMNS],
    log_mbit_s: f64,
    log_per_byte: f64,
    /// Host CPU ms per MB echoed: the VM's process per column (the pair's
    /// primary in the FT column), and the pair's backup and switch.
    cpu_per_mb: [f64; COLUMNS],
    backup_cpu_per_mb: f64,
    switch_cpu_per_mb: f64,
    kill_pause: f64,
    freeze_pause: f64,
}

fn one_run(run: usize) -> Sample {
    let ports = Ports::free();
    let solo = measure_alone(solo(ports), ports);
    let qemu = if qemu_available() {
        let ports = Ports::free();
        measure_alone(qemu(ports), ports)
    } else {
        Measured {
            rtt: vec![[f64::NAN; 2]; SIZES.len()],
            paced: f64::NAN,
            bulk: f64::NAN,
            upload: f64::NAN,
            download: f64::NAN,
            cpu_per_mb: f64::NAN,
        }
    };

    let ports = Ports::free();
    let pair = pair_up(&format!("pair-{run}"), ports);
    let mut stream = connect(ports.echo);
    let ft_rtt = round_trips_by_size(&mut stream);
    let ft_paced = paced_round_trips(&mut stream);
    let switch = pair.switch_status().map_or(0, |line| line.pid);
    let pids = [pair.pid(Vm::Primary), pair.pid(Vm::Backup), switch];
    let (log0, t0) = log_bytes(&pair);
    let (ft_bulk, ft_cpu) = bulk_with_cpu(&mut stream, &pids);
    let (log1, t1) = log_bytes(&pair);
    drop(stream);
    let ft_upload = upload(ports.discard);
    let ft_download = download(ports.source);
    drop(pair);
    let logged = log1.saturating_sub(log0) as f64;

    Sample {
        rtt: (0..SIZES.len())
            .map(|k| [solo.rtt[k], ft_rtt[k], qemu.rtt[k]])
            .collect(),
        paced: [solo.paced, ft_paced, qemu.paced],
        bulk: [solo.bulk, ft_bulk, qemu.bulk],
        upload: [solo.upload, ft_upload, qemu.upload],
        download: [solo.download, ft_download, qemu.download],
        log_mbit_s: logged * 8.0 / 1e6 / (t1 - t0).as_secs_f64(),
        // Received frames are logged; sent ones are outputs, not logged.
        log_per_byte: logged / BULK_BYTES as f64,
        cpu_per_mb: [solo.cpu_per_mb, ft_cpu[0], qemu.cpu_per_mb],
        backup_cpu_per_mb: ft_cpu[1],
        switch_cpu_per_mb: ft_cpu[2],
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
                "run {run}: rtt (solo/FT/QEMU, by size) {:?} ms, bulk echo/in/out {:.1?} {:.1?} {:.1?} MB/s, pauses {:.0}/{:.0} ms",
                s.rtt
                    .iter()
                    .map(|c| c.map(|[median, _]| (median * 100.0).round() / 100.0))
                    .collect::<Vec<_>>(),
                s.bulk,
                s.upload,
                s.download,
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
    let row = |label: &str, f: &Column<'_>| {
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
    row("echo round trip, 64 B 20 ms apart, median (ms)", &|s| {
        s.paced
    });
    row("bulk echo, 16 MiB (MB/s)", &|s| s.bulk);
    row("bulk host -> guest, 16 MiB (MB/s)", &|s| s.upload);
    row("bulk guest -> host, 16 MiB (MB/s)", &|s| s.download);
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
    let [solo, ft, qemu] = [0, 1, 2].map(|c| col(&|s| s.paced[c]));
    report_solo_and_pair(
        "ft_net",
        "echo round trip 64 B 20 ms apart, median",
        "ms",
        Better::Lower,
        [solo, ft],
        Some(qemu),
    );
    let bulks: [(&str, &Column<'_>); 3] = [
        ("bulk echo 16 MiB", &|s| s.bulk),
        ("bulk host -> guest 16 MiB", &|s| s.upload),
        ("bulk guest -> host 16 MiB", &|s| s.download),
    ];
    for (measure, f) in bulks {
        let [solo, ft, qemu] = [0, 1, 2].map(|c| col(&|s| f(s)[c]));
        report_solo_and_pair(
            "ft_net",
            measure,
            "MB/s",
            Better::Higher,
            [solo, ft],
            Some(qemu),
        );
    }
    println!();
    println!(
        "FT pair during the bulk echo: log {:.1} Mbit/s, {:.2} log bytes per byte the guest received",
        col(&|s| s.log_mbit_s),
        col(&|s| s.log_per_byte)
    );
    println!(
        "host CPU per MB echoed in the bulk echo: standalone {:.1} ms, QEMU {:.1} ms; FT pair: primary {:.1} ms, backup {:.1} ms, switch {:.1} ms",
        col(&|s| s.cpu_per_mb[0]),
        col(&|s| s.cpu_per_mb[2]),
        col(&|s| s.cpu_per_mb[1]),
        col(&|s| s.backup_cpu_per_mb),
        col(&|s| s.switch_cpu_per_mb)
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
