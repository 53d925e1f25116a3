//! Real services in the Debian guest (`scripts/guest-image --debian`:
//! Debian 13 riscv64 with systemd, Redis and PostgreSQL 17 as Debian
//! packages them) on three machines, in one run: ftvm standalone (`ftvm
//! run`), the FT pair (`ftvm up --no-restore`: primary, backup and switch,
//! the default detection settings, a shared disk) and QEMU `virt` (TCG,
//! its CPU restricted to ftvm's RV64GC, the same OpenSBI, plus
//! virtio-rng as ftvm has). All three boot the same kernel, initramfs and
//! command line, with 512 MiB of RAM, each on a fresh sparse copy of the
//! same disk image, the guest's ports 6379 and 5432 forwarded to this
//! host's loopback by the user-mode network. Measured, on the host:
//!
//! 1. boot: from starting the process (`ftvm run`, `ftvm up`,
//!    `qemu-system-riscv64`) until Redis answers `PING` with `PONG`
//!    through the forwarded port, and until `pg_isready` says PostgreSQL
//!    accepts connections;
//! 2. `redis-benchmark -t set,get -c 10` (Debian's redis-tools), after a
//!    warm-up run: SET and GET requests/s and their median latency, with
//!    [`REDIS_REQUESTS`] requests per test on every machine;
//! 3. `pgbench` (postgresql-client): `pgbench -i -s 1` (its time is a
//!    row: loading 100,000 rows, vacuum, keys), then the default TPC-B-like
//!    script with 4 clients on 2 threads for [`PGBENCH_SECONDS`]: TPS
//!    (without the initial connection time) and the median transaction
//!    latency from pgbench's per-transaction log.
//!
//! Run with `cargo bench -p ftvm --bench services` after `scripts/guest-image
//! --debian` (`FTVM_DEBIAN_IMAGE=DIR` names another build of it);
//! `FTVM_BENCH_RUNS` sets the runs (default 3; medians). Columns: the
//! median of each machine, then `pair/solo` (FT pair over standalone) and
//! `ftvm/QEMU` (standalone over QEMU). For throughput a ratio above 1 is
//! better, for times and latencies below 1. The results are also written
//! as JSON to `target/bench-services.json`. Without
//! `qemu-system-riscv64` the QEMU column is skipped, and said so.
//!
//! The clients run on the same host as the VMs: a standalone VM takes one
//! host CPU, the pair two and its switch a little, and the clients compete
//! with them. The numbers depend on the machine and its load: read them as
//! ratios. The pair is checked to be still whole (a primary and a backup)
//! after its boot and after its measurements; a pair that split is flagged
//! in the table and the JSON, its status lines and logs on stderr, since it
//! measured a VM running alone.
//!
//! Every VM is stopped when its guard is dropped, a panic included, and its
//! disk copy and state directory are removed; a guest that does not boot
//! fails the bench with its console's tail.

#[path = "../tests/support/mod.rs"]
mod support;
// The clone bench's markdown table; its other helpers are not used here.
#[allow(dead_code)]
#[path = "clone/table.rs"]
mod table;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use support::pair::{Pair, StatusLine, Vm, VmState};
use support::{
    Better, DEBIAN_APPEND, Finished, OPENSBI_FW_DYNAMIC, Scratch, bench_runs, collect, describe,
    free_port, ftvm_with_guest, median, qemu_available, qemu_version, qemu_virt_args, repo_root,
    report_solo_and_pair, run_limited,
};

const MEMORY_MIB: u64 = 512;
/// Booting Debian with systemd to Redis and PostgreSQL, emulated, on a
/// loaded 2-core host.
const BOOT_LIMIT: Duration = Duration::from_secs(900);
/// Requests per test of redis-benchmark's warm-up run.
const REDIS_WARMUP_REQUESTS: u64 = 2000;
/// Requests per measured test: 10-20 s on ftvm on a 2-core host; the same
/// for every machine, so that each does the same work.
const REDIS_REQUESTS: u64 = 12_000;
const REDIS_CLIENTS: &str = "10";
const PGBENCH_SCALE: &str = "1";
const PGBENCH_CLIENTS: &str = "4";
const PGBENCH_THREADS: &str = "2";
const PGBENCH_SECONDS: u64 = 20;
/// A client command against a guest that is up (`redis-benchmark`,
/// `pgbench -i`): generous, but a hung guest must not hang the bench.
const CLIENT_LIMIT: Duration = Duration::from_secs(900);

// ---------------------------------------------------------------------
// The machines

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Solo,
    Pair,
    Qemu,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Solo => "ftvm standalone",
            Kind::Pair => "ftvm FT pair",
            Kind::Qemu => "QEMU TCG",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Kind::Solo => "standalone",
            Kind::Pair => "pair",
            Kind::Qemu => "qemu",
        }
    }
}

/// The Debian guest's files.
struct Image {
    kernel: PathBuf,
    initrd: PathBuf,
    disk: PathBuf,
    kernel_version: String,
}

impl Image {
    fn find() -> Image {
        let dir = std::env::var_os("FTVM_DEBIAN_IMAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("build/guest-image/debian"));
        let image = Image {
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd.img"),
            disk: dir.join("disk.ext4"),
            kernel_version: std::fs::read_to_string(dir.join("kernel-version"))
                .map(|v| v.trim().to_string())
                .unwrap_or_default(),
        };
        for file in [&image.kernel, &image.initrd, &image.disk] {
            assert!(
                file.is_file(),
                "the Debian guest is not built ({} is missing): run scripts/guest-image --debian",
                file.display()
            );
        }
        image
    }
}

/// A process whose stdout (the guest's console) and stderr are collected
/// as they come.
struct Process {
    child: Child,
    command: String,
    console: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

fn tail(bytes: &[u8], n: usize) -> String {
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(n)..]).into_owned()
}

/// One VM of one kind and its forwarded ports: the guard that stops it
/// (and removes its state directory and disk copy) when dropped.
struct Guest {
    kind: Kind,
    redis_port: u16,
    pg_port: u16,
    started: Instant,
    process: Option<Process>,
    pair: Option<Pair>,
    /// The disk copy and pgbench's logs; a field after the VM's, so that
    /// it goes once the VM is gone.
    scratch: Scratch,
}

impl Guest {
    fn start(kind: Kind, image: &Image, run: usize) -> Guest {
        let scratch = Scratch::new(&format!("services-{}-{run}", kind.key()));
        let redis_port = free_port();
        let pg_port = loop {
            let port = free_port();
            if port != redis_port {
                break port;
            }
        };
        let mut guest = Guest {
            kind,
            redis_port,
            pg_port,
            started: Instant::now(),
            process: None,
            pair: (kind == Kind::Pair).then(|| Pair::new(&format!("services-bench-{run}"))),
            scratch,
        };
        let disk = guest.scratch.file("disk.ext4");
        // Never the original: a boot writes to it. Sparse, as most of its
        // 3 GiB is holes.
        let copied = Command::new("cp")
            .arg("--sparse=always")
            .arg(&image.disk)
            .arg(&disk)
            .status()
            .expect("running cp");
        assert!(copied.success(), "copying {}", image.disk.display());

        let net = format!(
            "user,hostfwd=tcp:127.0.0.1:{redis_port}-:6379,hostfwd=tcp:127.0.0.1:{pg_port}-:5432"
        );
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let machine: Vec<String> = [
            "--kernel",
            &path(&image.kernel),
            "--initrd",
            &path(&image.initrd),
            "--disk",
            &path(&disk),
            "--memory",
            &MEMORY_MIB.to_string(),
            "--append",
            DEBIAN_APPEND,
            "--net",
            &net,
        ]
        .map(String::from)
        .to_vec();
        match kind {
            Kind::Solo => {
                let mut cmd = ftvm_with_guest();
                cmd.arg("run").args(&machine);
                guest.spawn(cmd);
            }
            Kind::Pair => {
                guest.started = Instant::now();
                guest.pair.as_mut().expect("a pair").up(&machine);
            }
            Kind::Qemu => {
                // The firmware ftvm boots a Linux kernel on; QEMU's own copy
                // is another build.
                let bios = if Path::new(OPENSBI_FW_DYNAMIC).is_file() {
                    OPENSBI_FW_DYNAMIC
                } else {
                    "default"
                };
                let mut cmd = Command::new("qemu-system-riscv64");
                cmd.args(qemu_virt_args(MEMORY_MIB))
                    .args(["-bios", bios, "-kernel"])
                    .arg(&image.kernel)
                    .arg("-initrd")
                    .arg(&image.initrd)
                    .args(["-append", DEBIAN_APPEND, "-drive"])
                    .arg(format!("file={},format=raw,if=none,id=hd", disk.display()))
                    .args(["-device", "virtio-blk-device,drive=hd", "-netdev"])
                    .arg(format!(
                        "user,id=n,hostfwd=tcp:127.0.0.1:{redis_port}-:6379,\
                         hostfwd=tcp:127.0.0.1:{pg_port}-:5432"
                    ))
                    .args(["-device", "virtio-net-device,netdev=n"])
                    .args(["-device", "virtio-rng-device"]);
                guest.spawn(cmd);
            }
        }
        guest
    }

    fn spawn(&mut self, mut cmd: Command) {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command = describe(&cmd);
        self.started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command}: {e}"));
        let console = collect(child.stdout.take().expect("piped stdout"));
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        self.process = Some(Process {
            child,
            command,
            console,
            stderr,
        });
    }

    /// Whether the VM still runs (for the pair: either of its VMs).
    fn alive(&mut self) -> bool {
        if let Some(p) = &mut self.process {
            return p.child.try_wait().ok().flatten().is_none();
        }
        self.pair
            .as_ref()
            .is_some_and(|pair| Vm::BOTH.iter().any(|&vm| pair.running(vm)))
    }

    /// How it was started, what its console and logs say last.
    fn diag(&self) -> String {
        if let Some(p) = &self.process {
            let lock =
                |b: &Arc<Mutex<Vec<u8>>>| b.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return format!(
                "command: {}\n--- console, tail:\n{}\n--- stderr, tail:\n{}",
                p.command,
                tail(&lock(&p.console), 4000),
                tail(&lock(&p.stderr), 2000)
            );
        }
        let Some(pair) = &self.pair else {
            return String::new();
        };
        format!(
            "{}--- console, longer tail:\n{}",
            pair.diag(),
            tail(&pair.console(), 4000)
        )
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{} after {:.0} s: {what}\n{}",
            self.kind.label(),
            self.started.elapsed().as_secs_f64(),
            self.diag()
        );
    }

    /// Wait until `ready` holds, looking every 200 ms; the seconds since
    /// the VM was started. Fails the bench if the VM ends or the boot
    /// takes more than [`BOOT_LIMIT`].
    fn wait_for(&mut self, what: &str, mut ready: impl FnMut(&Guest) -> bool) -> f64 {
        loop {
            if ready(self) {
                return self.started.elapsed().as_secs_f64();
            }
            if !self.alive() {
                self.fail(&format!("the VM ended before {what}"));
            }
            if self.started.elapsed() > BOOT_LIMIT {
                self.fail(&format!("{what}: not within {BOOT_LIMIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `pgbench ARGS` against the guest's database, as user `ftvm`.
    fn pgbench(&self, args: &[&str], limit: Duration) -> Finished {
        let mut cmd = Command::new("pgbench");
        cmd.args(args)
            .args(["-h", "127.0.0.1", "-p", &self.pg_port.to_string()])
            .args(["-U", "ftvm", "ftvm"])
            .env("PGPASSWORD", "ftvm")
            .current_dir(&self.scratch.0);
        let run = run_limited(cmd, limit);
        if run.code != Some(0) {
            self.fail(&format!(
                "pgbench {} failed ({:?}{}):\n{}{}",
                args.join(" "),
                run.code,
                if run.timed_out { ", timed out" } else { "" },
                run.stdout_text(),
                run.stderr
            ));
        }
        run
    }

    /// `redis-benchmark -t set,get` with `requests` requests per test.
    fn redis_benchmark(&self, requests: u64) -> Redis {
        let mut cmd = Command::new("redis-benchmark");
        cmd.args(["-h", "127.0.0.1", "-p", &self.redis_port.to_string()])
            .args(["-t", "set,get", "-c", REDIS_CLIENTS, "--csv", "-n"])
            .arg(requests.to_string());
        let run = run_limited(cmd, CLIENT_LIMIT);
        let out = run.stdout_text();
        match (run.code, parse_redis_csv(&out)) {
            (Some(0), Some(redis)) => redis,
            _ => self.fail(&format!(
                "redis-benchmark -n {requests} failed ({:?}{}):\n{out}{}",
                run.code,
                if run.timed_out { ", timed out" } else { "" },
                run.stderr
            )),
        }
    }

    /// Stop the VM the way its user would; the drop makes sure.
    fn stop(mut self) {
        if let Some(pair) = &self.pair {
            pair.stop();
            let stopped = support::wait_until(Duration::from_secs(60), || {
                !Vm::BOTH.iter().any(|&vm| pair.running(vm))
            });
            if !stopped {
                eprintln!("  the pair did not end within 60 s of `ftvm stop`: killed");
            }
        }
        if let Some(p) = &mut self.process {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if let Some(pair) = self.pair.take() {
            // The pair keeps its directory after a panic; a bench run leaves
            // nothing behind, and the panic message has the diagnosis.
            let dir = pair.dir().to_path_buf();
            drop(pair);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// ---------------------------------------------------------------------
// The clients

/// `PING` through a fresh connection answered by `+PONG`.
fn redis_ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let mut answer = [0; 7];
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| stream.write_all(b"PING\r\n"))
        .and_then(|()| stream.read_exact(&mut answer))
        .is_ok_and(|()| &answer == b"+PONG\r\n")
}

/// `pg_isready`: PostgreSQL accepts connections.
fn pg_ready(port: u16) -> bool {
    let mut cmd = Command::new("pg_isready");
    cmd.args(["-q", "-h", "127.0.0.1", "-t", "5", "-p", &port.to_string()]);
    run_limited(cmd, Duration::from_secs(30)).code == Some(0)
}

struct Redis {
    set_rps: f64,
    get_rps: f64,
    set_p50_ms: f64,
    get_p50_ms: f64,
}

/// redis-benchmark's `--csv` output: a header line, then a line per test.
fn parse_redis_csv(out: &str) -> Option<Redis> {
    let rows: Vec<Vec<String>> = out
        .lines()
        .map(|l| {
            l.split(',')
                .map(|f| f.trim().trim_matches('"').to_string())
                .collect()
        })
        .collect();
    let header = rows
        .iter()
        .find(|r| r.first().is_some_and(|f| f == "test"))?;
    let column = |name: &str| header.iter().position(|f| f == name);
    let (rps, p50) = (column("rps")?, column("p50_latency_ms")?);
    let value = |test: &str, c: usize| -> Option<f64> {
        rows.iter()
            .find(|r| r.first().is_some_and(|f| f == test))?
            .get(c)?
            .parse()
            .ok()
    };
    Some(Redis {
        set_rps: value("SET", rps)?,
        get_rps: value("GET", rps)?,
        set_p50_ms: value("SET", p50)?,
        get_p50_ms: value("GET", p50)?,
    })
}

/// pgbench's `tps = N (without initial connection time)`.
fn parse_tps(out: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        let rest = l.strip_prefix("tps = ")?;
        rest.contains("without initial connection time")
            .then(|| rest.split_whitespace().next()?.parse().ok())?
    })
}

/// The median latency, ms, of the transactions in pgbench's logs (`-l`,
/// one file per thread, `client transaction latency_us ...` a line;
/// failed ones say `failed` instead of a latency).
fn pgbench_log_median(dir: &Path) -> Option<f64> {
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("pgbench_log")
        {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).ok()?;
        latencies.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok())
                .map(|us| us / 1e3),
        );
    }
    (!latencies.is_empty()).then(|| median(latencies))
}

// ---------------------------------------------------------------------
// A run

/// The primary's log bytes if the pair is still a primary and a backup;
/// otherwise what its status lines say, also printed with the pair's
/// diagnosis (the logs say why it split).
fn split_or_log(pair: &Pair, during: &str) -> Result<u64, String> {
    let (primary, backup) = (pair.status(Vm::Primary), pair.status(Vm::Backup));
    let state = |line: &Option<StatusLine>| line.as_ref().map(|l| l.state);
    if state(&primary) == Some(VmState::Primary) && state(&backup) == Some(VmState::Backup) {
        let measures = primary.and_then(|line| line.measures);
        return Ok(measures.map_or(0, |m| m.log_bytes));
    }
    let line = |l: Option<StatusLine>| l.map_or("none".to_string(), |l| l.to_string());
    let why = format!(
        "split during {during}: primary `{}`, backup `{}`",
        line(primary),
        line(backup)
    );
    eprintln!(
        "  the pair {why}; its numbers are a VM running alone\n{}",
        pair.diag()
    );
    Err(why)
}

/// One machine's measurements.
struct Sample {
    boot_redis_s: f64,
    boot_pg_s: f64,
    redis: Redis,
    pg_init_s: f64,
    tps: f64,
    pg_latency_ms: f64,
    /// The pair only: `Some(why)` if it was no longer a primary and a
    /// backup after the boot or after the measurements.
    split: Option<Option<String>>,
    /// The pair only, if it stayed whole: the primary's log bytes during
    /// the measurements.
    log_bytes: Option<u64>,
}

fn measure(kind: Kind, image: &Image, run: usize) -> Sample {
    eprintln!("run {run}: {}: booting", kind.label());
    let mut guest = Guest::start(kind, image, run);
    let redis_port = guest.redis_port;
    let pg_port = guest.pg_port;
    let boot_redis_s = guest.wait_for("Redis answered PING", |_| redis_ping(redis_port));
    let boot_pg_s = guest.wait_for("PostgreSQL accepted connections", |_| pg_ready(pg_port));
    eprintln!("  Redis after {boot_redis_s:.1} s, PostgreSQL after {boot_pg_s:.1} s");

    let log_at_boot = guest
        .pair
        .as_ref()
        .map(|pair| split_or_log(pair, "booting"));

    // The warm-up gets Redis and its connections going.
    guest.redis_benchmark(REDIS_WARMUP_REQUESTS);
    let redis = guest.redis_benchmark(REDIS_REQUESTS);
    eprintln!(
        "  redis-benchmark -n {REDIS_REQUESTS}: SET {:.0}/s, GET {:.0}/s",
        redis.set_rps, redis.get_rps
    );

    let start = Instant::now();
    guest.pgbench(&["-i", "-q", "-s", PGBENCH_SCALE], CLIENT_LIMIT);
    let pg_init_s = start.elapsed().as_secs_f64();
    let seconds = PGBENCH_SECONDS.to_string();
    let run_out = guest.pgbench(
        &[
            "-c",
            PGBENCH_CLIENTS,
            "-j",
            PGBENCH_THREADS,
            "-T",
            &seconds,
            "-l",
            "--log-prefix=pgbench_log",
        ],
        CLIENT_LIMIT,
    );
    let out = run_out.stdout_text();
    let Some(tps) = parse_tps(&out) else {
        guest.fail(&format!("no tps line in pgbench's output:\n{out}"));
    };
    let Some(pg_latency_ms) = pgbench_log_median(&guest.scratch.0) else {
        guest.fail("pgbench -l wrote no transaction log");
    };
    eprintln!("  pgbench -i {pg_init_s:.1} s; {tps:.1} TPS, median latency {pg_latency_ms:.1} ms");

    let (split, log_bytes) = match (&guest.pair, log_at_boot) {
        (Some(pair), Some(at_boot)) => {
            match at_boot.and_then(|before| Ok((before, split_or_log(pair, "the measurements")?))) {
                Ok((before, after)) => (Some(None), Some(after.saturating_sub(before))),
                Err(why) => (Some(Some(why)), None),
            }
        }
        _ => (None, None),
    };
    guest.stop();
    Sample {
        boot_redis_s,
        boot_pg_s,
        redis,
        pg_init_s,
        tps,
        pg_latency_ms,
        split,
        log_bytes,
    }
}

// ---------------------------------------------------------------------
// The report

/// A row of the table: its JSON key, label, value and decimals.
struct Metric {
    key: &'static str,
    label: &'static str,
    value: fn(&Sample) -> f64,
    digits: usize,
}

const METRICS: [Metric; 9] = [
    Metric {
        key: "boot_to_redis_s",
        label: "boot to Redis PONG (s)",
        value: |s| s.boot_redis_s,
        digits: 1,
    },
    Metric {
        key: "boot_to_postgres_s",
        label: "boot to PostgreSQL ready (s)",
        value: |s| s.boot_pg_s,
        digits: 1,
    },
    Metric {
        key: "redis_set_rps",
        label: "Redis SET (requests/s)",
        value: |s| s.redis.set_rps,
        digits: 0,
    },
    Metric {
        key: "redis_get_rps",
        label: "Redis GET (requests/s)",
        value: |s| s.redis.get_rps,
        digits: 0,
    },
    Metric {
        key: "redis_set_p50_ms",
        label: "Redis SET median latency (ms)",
        value: |s| s.redis.set_p50_ms,
        digits: 2,
    },
    Metric {
        key: "redis_get_p50_ms",
        label: "Redis GET median latency (ms)",
        value: |s| s.redis.get_p50_ms,
        digits: 2,
    },
    Metric {
        key: "pgbench_init_s",
        label: "pgbench -i -s 1 (s)",
        value: |s| s.pg_init_s,
        digits: 1,
    },
    Metric {
        key: "pgbench_tps",
        label: "pgbench TPS",
        value: |s| s.tps,
        digits: 1,
    },
    Metric {
        key: "pgbench_latency_p50_ms",
        label: "pgbench median latency (ms)",
        value: |s| s.pg_latency_ms,
        digits: 1,
    },
];

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

fn main() {
    let Some(runs) = bench_runs() else {
        return;
    };
    let image = Image::find();
    let qemu = qemu_available();
    let mut kinds = vec![Kind::Solo, Kind::Pair];
    if qemu {
        kinds.push(Kind::Qemu);
    } else {
        eprintln!("qemu-system-riscv64 is not installed: the QEMU column is skipped");
    }
    let load_before = load_average();
    let mut samples: Vec<(Kind, Vec<Sample>)> = kinds.iter().map(|&k| (k, Vec::new())).collect();
    for run in 0..runs {
        // Interleaved, so that a change in the host's load touches every
        // machine alike.
        for (kind, got) in &mut samples {
            got.push(measure(*kind, &image, run));
        }
    }
    let load_after = load_average();

    let medians: Vec<(Kind, Vec<f64>)> = samples
        .iter()
        .map(|(kind, got)| {
            let values = METRICS
                .iter()
                .map(|m| median(got.iter().map(m.value).collect()))
                .collect();
            (*kind, values)
        })
        .collect();
    let of = |kind: Kind| medians.iter().find(|(k, _)| *k == kind).map(|(_, v)| v);
    let solo = of(Kind::Solo).expect("standalone measured");
    let pair = of(Kind::Pair).expect("pair measured");
    let qemu_values = of(Kind::Qemu);
    let splits: Vec<(usize, &str)> = samples
        .iter()
        .flat_map(|(_, got)| got.iter().enumerate())
        .filter_map(|(run, s)| Some((run, s.split.as_ref()?.as_deref()?)))
        .collect();
    let split_runs: Vec<usize> = splits.iter().map(|&(run, _)| run).collect();

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let qemu_line = if qemu {
        qemu_version()
    } else {
        "not installed: column skipped".to_string()
    };
    println!();
    println!(
        "host: {cpus} CPUs; load average (1 min) {load_before} before, {load_after} after; \
         {runs} runs, medians"
    );
    println!(
        "guest: Debian 13 riscv64, kernel {}, {MEMORY_MIB} MiB, `{DEBIAN_APPEND}`; QEMU: {qemu_line}",
        image.kernel_version
    );
    println!(
        "clients on this host through forwarded ports: redis-benchmark -t set,get -c \
         {REDIS_CLIENTS} -n {REDIS_REQUESTS}; pgbench -s {PGBENCH_SCALE} -c \
         {PGBENCH_CLIENTS} -j {PGBENCH_THREADS} -T {PGBENCH_SECONDS} (TPC-B-like)"
    );
    println!();
    let mut header: Vec<String> = ["", "standalone", "FT pair"].map(String::from).to_vec();
    if qemu {
        header.push("QEMU TCG".into());
    }
    header.push("pair/solo".into());
    if qemu {
        header.push("ftvm/QEMU".into());
    }
    let rows: Vec<Vec<String>> = METRICS
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let d = m.digits;
            let mut row = vec![
                m.label.to_string(),
                format!("{:.d$}", solo[i]),
                format!("{:.d$}", pair[i]),
            ];
            if let Some(q) = qemu_values {
                row.push(format!("{:.d$}", q[i]));
            }
            row.push(format!("{:.2}", pair[i] / solo[i]));
            if let Some(q) = qemu_values {
                row.push(format!("{:.2}", solo[i] / q[i]));
            }
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table::table(&header, &rows);
    for (i, m) in METRICS.iter().enumerate() {
        let better = if m.key.ends_with("_s") || m.key.ends_with("_ms") {
            Better::Lower
        } else {
            Better::Higher
        };
        let unit = m.key.rsplit('_').next().unwrap_or("");
        let values = [solo[i], pair[i]];
        let qemu = qemu_values.map(|q| q[i]);
        report_solo_and_pair("services", m.label, unit, better, values, qemu);
    }
    println!();
    println!(
        "pair/solo: FT pair over standalone; ftvm/QEMU: standalone over QEMU. Above 1 is better \
         for throughput, below 1 for times and latencies. Results depend on the machine and its \
         load: read them as ratios."
    );
    for (run, why) in &splits {
        println!("WARNING: run {run}: the pair {why}; its numbers are of a VM running alone");
    }
    let pair_samples = &samples
        .iter()
        .find(|(k, _)| *k == Kind::Pair)
        .expect("pair measured")
        .1;
    let log_bytes: Vec<f64> = pair_samples
        .iter()
        .filter_map(|s| s.log_bytes.map(|b| b as f64))
        .collect();
    if !log_bytes.is_empty() {
        println!(
            "FT pair: the primary logged {:.1} MB during the Redis and pgbench runs (median)",
            median(log_bytes) / 1e6
        );
    }

    // The same as JSON, for scripts and for comparing runs.
    let values = |v: &[f64]| -> Value {
        Value::Object(
            METRICS
                .iter()
                .zip(v)
                .map(|(m, &x)| (m.key.to_string(), json!(x)))
                .collect::<Map<_, _>>(),
        )
    };
    let ratios =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
    let per_run: Map<String, Value> = samples
        .iter()
        .map(|(kind, got)| {
            let list: Vec<Value> = got
                .iter()
                .map(|s| {
                    let mut v = values(&METRICS.iter().map(|m| (m.value)(s)).collect::<Vec<_>>());
                    if let Some(split) = &s.split {
                        v["pair_split"] = json!(split);
                    }
                    if let Some(bytes) = s.log_bytes {
                        v["log_bytes"] = json!(bytes);
                    }
                    v
                })
                .collect();
            (kind.key().to_string(), Value::Array(list))
        })
        .collect();
    let report = json!({
        "bench": "services",
        "host": {
            "cpus": cpus,
            "load_before": load_before,
            "load_after": load_after,
            "qemu": qemu.then(qemu_version),
        },
        "guest": {
            "kernel_version": image.kernel_version,
            "memory_mib": MEMORY_MIB,
            "append": DEBIAN_APPEND,
        },
        "runs": runs,
        "medians": {
            "standalone": values(solo),
            "pair": values(pair),
            "qemu": qemu_values.map(|q| values(q)),
        },
        "ratios": {
            "pair_over_standalone": values(&ratios(pair, solo)),
            "ftvm_over_qemu": qemu_values.map(|q| values(&ratios(solo, q))),
        },
        "pair_split_runs": split_runs,
        "samples": per_run,
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    std::fs::create_dir_all(&target).expect("creating the target directory");
    let path = target
        .canonicalize()
        .unwrap_or(target)
        .join("bench-services.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("JSON") + "\n",
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    println!("written to {}", path.display());
}
