//! Restoring redundancy: what cloning the VM that runs alone into a new
//! backup costs (ARCHITECTURE.md, "Cloning"), against QEMU's live
//! migration of the same guest. Three tables, in one run:
//!
//! 1. `ftvm protect`, for guest RAM of 128, 512 and 1024 MiB: the pause of
//!    the guest for the clone's snapshot (the survivor's `clone_pause_ms`),
//!    the bytes the snapshot took on the logging channel (`clone_bytes`;
//!    zero 64 KiB chunks skipped, the others LZ4), also as a fraction of
//!    RAM, and the time from starting `ftvm protect` until the status files
//!    show a protected pair of the next epoch. Each run: `ftvm up
//!    --no-restore --memory M --timeout-ms 5000` (see
//!    [`DETECTION_PROTECT`]), the guest fills a quarter of its RAM
//!    (incompressible data in tmpfs) and ticks, the primary is killed
//!    (`kill -9`), the backup goes live, then `ftvm protect`; the guest
//!    must go on ticking after it.
//! 2. Time to redundancy with the agent (`ftvm up` without `--no-restore`),
//!    128 MiB, `--timeout-ms 500 --heartbeat-ms 50`: from the kill of the
//!    primary until the status files show a protected pair of the next
//!    epoch, split into detection and take-over (kill to the survivor
//!    running alone), the agent's wait (running alone to cloning), and the
//!    clone (cloning to protected).
//! 3. The peer: QEMU's live migration (TCG) of the same guest (kernel,
//!    initramfs, command line, RAM), from one `qemu-system-riscv64` to
//!    another started with `-incoming tcp:127.0.0.1:PORT`, driven through
//!    QMP (`migrate`, then `query-migrate` until `completed`): its total
//!    time and downtime as QEMU reports them, the bytes it sent, and whether
//!    the guest went on ticking on the destination. Skipped, and said so,
//!    without QEMU.
//!
//! The guest (same for both): writes 1 MiB from /dev/urandom to tmpfs,
//! `cat`s it into a file of a quarter of RAM, prints `filled`, then `tick
//! N` every 100 ms. The ftvm pause and QEMU's downtime are the comparable
//! figures: the time the guest stands still.
//!
//! The bench panics, with the pair's diagnosis (status lines, logs,
//! console), when a restore does not happen, the guest stops ticking, or a
//! migration fails. Every process is under a time limit; a pair's
//! processes are killed when it is dropped ([`support::pair::Pair`]), the
//! QEMU processes when their handle is.
//!
//! Run with `cargo bench -p ftvm --bench clone` after `scripts/guest-image`;
//! `FTVM_BENCH_RUNS` sets the runs (default 3; medians).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftvm_host::status::{CloneStage, StatusFile};
use serde_json::{Value, json};
use support::pair::{Pair, StatusLine, VmState};
use support::{
    bench_runs, describe, free_port, image_dir, median, process_alive, qemu_available,
    qemu_virt_args, signal,
};

/// Guest RAM of the clone and migration rows, MiB.
const SIZES: [u64; 3] = [128, 512, 1024];
/// Guest RAM of the time-to-redundancy row, MiB.
const AGENT_MIB: u64 = 128;
/// Failure detection of the pairs that are cloned by hand (table 1):
/// loose, because on a 2-core host a pair of 512 MiB or more splits by
/// itself while it boots with 500 ms, and with the default 1000 ms at 1 GiB
/// (its VMs' loops stand still while they digest guest RAM for the log's
/// checkpoints, and send no heartbeat meanwhile), leaving nothing to clone.
/// The clone itself does not depend on it.
const DETECTION_PROTECT: [&str; 4] = ["--timeout-ms", "5000", "--heartbeat-ms", "100"];
/// Failure detection of the time-to-redundancy row (table 2).
const DETECTION_AGENT: [&str; 4] = ["--timeout-ms", "500", "--heartbeat-ms", "50"];
/// The tick the guest must have printed before the failure or migration.
const TICKS_BEFORE: u64 = 3;
/// Booting and filling RAM (a pair at the pace of the slower VM).
const BOOT_LIMIT: Duration = Duration::from_secs(300);
/// A failover, a clone, a migration.
const STEP_LIMIT: Duration = Duration::from_secs(180);
/// The guest's next tick after a restore or a migration.
const TICK_LIMIT: Duration = Duration::from_secs(20);
/// How often the status files are read while timing.
const POLL: Duration = Duration::from_millis(2);
/// QEMU's bandwidth limit for the migration, bytes/s: its default (32
/// MiB/s) lifted, as ftvm's stream has none.
const QEMU_MAX_BANDWIDTH: u64 = 100 << 30;

/// The guest's command: a quarter of RAM of incompressible data in tmpfs
/// (1 MiB of random bytes repeated: every 64 KiB chunk differs within
/// itself), then a tick every 100 ms, forever.
fn guest_cmd(memory_mib: u64) -> String {
    let fill = memory_mib / 4;
    format!(
        "dd if=/dev/urandom of=/tmp/r bs=64k count=16 2>/dev/null; i=0; \
         while [ $i -lt {fill} ]; do cat /tmp/r; i=$((i+1)); done > /tmp/fill; echo filled; \
         i=0; while true; do echo tick $i; i=$((i+1)); usleep 100000; done"
    )
}

fn append(memory_mib: u64) -> String {
    format!("console=ttyS0 ftvm_cmd=\"{}\"", guest_cmd(memory_mib))
}

/// The last `tick N` of a console.
fn last_tick(console: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(console)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tick ")?.parse().ok())
        .next_back()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------
// ftvm

/// Every VM of the pair in `dir` (its status files, read directly, for
/// polling every few ms), with whether its process runs.
fn vms(dir: &Path) -> Vec<(StatusLine, bool)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".status") && name != "switch.status")
        .filter_map(|name| StatusFile::read::<StatusLine>(&dir.join(name)))
        .map(|line| {
            let alive = !line.state.is_final() && process_alive(line.pid);
            (line, alive)
        })
        .collect()
}

/// The VM named `name`, if its process runs.
fn alive_named(dir: &Path, name: &str) -> Option<StatusLine> {
    vms(dir)
        .into_iter()
        .find(|(line, alive)| *alive && line.name.as_deref() == Some(name))
        .map(|(line, _)| line)
}

/// A protected pair of `epoch`: exactly two VMs run, a primary and a
/// backup of that epoch; the primary's line.
fn protected(dir: &Path, epoch: u64) -> Option<StatusLine> {
    let alive: Vec<StatusLine> = vms(dir)
        .into_iter()
        .filter(|(_, alive)| *alive)
        .map(|(line, _)| line)
        .collect();
    let of = |state| {
        alive
            .iter()
            .find(|l| l.state == state && l.epoch == Some(epoch))
    };
    let backup = of(VmState::Backup);
    match (alive.len(), of(VmState::Primary), backup) {
        (2, Some(primary), Some(_)) => Some(primary.clone()),
        _ => None,
    }
}

/// Whether the survivor of a failover (the first backup) runs the guest:
/// live, cloning, or already the primary of the next epoch.
fn took_over(line: &StatusLine) -> bool {
    match line.state {
        VmState::Live | VmState::Cloning => true,
        VmState::Primary => line.epoch.is_some_and(|e| e > 1),
        _ => false,
    }
}

/// Poll the pair's status files every [`POLL`] until `probe` gives a value;
/// the value and when it was seen. Fails the bench after `limit`.
fn poll_fast<T>(
    pair: &Pair,
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> (T, Instant) {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return (v, Instant::now());
        }
        if start.elapsed() > limit {
            panic!("{what}: not within {limit:?}\n{}", pair.diag());
        }
        std::thread::sleep(POLL);
    }
}

/// Pairs started again per measurement when one splits by itself.
const ATTEMPTS: u32 = 3;

/// A pair (`ftvm up`, with the agent if `restoring`) of the tick guest with
/// `memory_mib`, whole and ticking: the pair and its primary's pid, and how
/// many pairs before it split by themselves (a spurious failover while
/// booting on a loaded host: then there is no primary to kill, and the
/// pair is started again, at most [`ATTEMPTS`] times in all).
fn ticking_pair(tag: &str, memory_mib: u64, restoring: bool) -> (Pair, u32, u32) {
    for attempt in 0..ATTEMPTS {
        let mut pair = Pair::new(&format!("{tag}-{attempt}"));
        let primary = up_ticking(&mut pair, memory_mib, restoring);
        if whole(pair.dir()) {
            return (pair, primary, attempt);
        }
        if attempt + 1 == ATTEMPTS {
            panic!(
                "{ATTEMPTS} pairs in a row split by themselves before the kill\n{}",
                pair.diag()
            );
        }
        eprintln!(
            "the pair split by itself before the kill; starting another\n{}",
            pair.diag()
        );
    }
    unreachable!("the last attempt returns or panics")
}

/// Whether the pair in `dir` is the one `ftvm up` started, whole: a
/// primary and a backup of epoch 1, and no other VM.
fn whole(dir: &Path) -> bool {
    let alive: Vec<StatusLine> = vms(dir)
        .into_iter()
        .filter(|(_, alive)| *alive)
        .map(|(line, _)| line)
        .collect();
    let is = |name: &str, state| {
        alive
            .iter()
            .any(|l| l.name.as_deref() == Some(name) && l.state == state && l.epoch == Some(1))
    };
    alive.len() == 2 && is("primary", VmState::Primary) && is("backup", VmState::Backup)
}

/// `ftvm up` of the tick guest with `memory_mib`, until it ticks; the
/// primary's pid.
fn up_ticking(pair: &mut Pair, memory_mib: u64, restoring: bool) -> u32 {
    let memory = memory_mib.to_string();
    let append = append(memory_mib);
    let mut args = vec!["--memory", &memory, "--append", &append];
    args.extend(if restoring {
        DETECTION_AGENT
    } else {
        DETECTION_PROTECT
    });
    let (primary, _) = if restoring {
        pair.up_restoring(&args)
    } else {
        pair.up(&args)
    };
    pair.wait_until(
        BOOT_LIMIT,
        &format!("the guest filled a quarter of {memory_mib} MiB and printed tick {TICKS_BEFORE}"),
        || last_tick(&pair.console()).is_some_and(|t| t >= TICKS_BEFORE),
    );
    primary
}

/// The guest prints a tick after `after` within [`TICK_LIMIT`].
fn goes_on_ticking(pair: &Pair, after: Option<u64>, what: &str) {
    pair.wait_until(TICK_LIMIT, what, || {
        last_tick(&pair.console()) > after && alive_named(pair.dir(), "backup").is_some()
    });
}

/// The stage of a clone a VM's line shows, as an index into
/// [`CloneStage::ALL`].
fn clone_stage(line: &StatusLine) -> Option<usize> {
    let stage = line.clone.as_ref()?.stage;
    CloneStage::ALL.iter().position(|s| *s == stage)
}

/// One `ftvm protect` after a failover.
struct CloneRun {
    pause_ms: f64,
    bytes: f64,
    /// From starting `ftvm protect` until a protected pair shows.
    protect_s: f64,
    /// From starting `ftvm protect` until the survivor's line first showed
    /// each stage of [`CloneStage::ALL`] (connecting: it is cloning).
    stages_s: [Option<f64>; 3],
    /// Until `ftvm protect` exited.
    exit_s: f64,
    /// Pairs that split by themselves before this one held.
    splits: u32,
}

fn ftvm_clone(memory_mib: u64, run: usize) -> CloneRun {
    let (mut pair, primary, splits) = ticking_pair(
        &format!("clone-bench-{memory_mib}-{run}"),
        memory_mib,
        false,
    );
    signal(primary, libc::SIGKILL);
    let dir = pair.dir().to_path_buf();
    poll_fast(&pair, STEP_LIMIT, "the backup runs alone", || {
        alive_named(&dir, "backup").filter(|l| l.state == VmState::Live)
    });
    let before = last_tick(&pair.console());
    let started = Instant::now();
    let dir_arg = dir.to_string_lossy().into_owned();
    pair.start("protect", &["protect", "--state-dir", &dir_arg]);
    let mut stages_s = [None; 3];
    let (line, at) = poll_fast(&pair, STEP_LIMIT, "a protected pair of epoch 2", || {
        let stage = alive_named(&dir, "backup").and_then(|l| clone_stage(&l));
        if let Some(seen) = stage.and_then(|i| stages_s.get_mut(i)) {
            seen.get_or_insert(started.elapsed().as_secs_f64());
        }
        protected(&dir, 2)
    });
    let protect_s = at.duration_since(started).as_secs_f64();
    let status = pair.wait_exit("protect", STEP_LIMIT);
    let exit_s = started.elapsed().as_secs_f64();
    if !status.is_some_and(|s| s.success()) {
        panic!("ftvm protect: {status:?}\n{}", pair.diag());
    }
    if line.name.as_deref() != Some("backup") {
        panic!(
            "the primary of epoch 2 is not the survivor: {line}\n{}",
            pair.diag()
        );
    }
    let (Some(pause_ms), Some(bytes)) = (line.clone_pause_ms, line.clone_bytes) else {
        panic!(
            "no clone-pause or clone-bytes in the survivor's line: {line}\n{}",
            pair.diag()
        );
    };
    goes_on_ticking(&pair, before, "the guest ticks after the clone");
    pair.stop();
    CloneRun {
        pause_ms,
        bytes: bytes as f64,
        protect_s,
        stages_s,
        exit_s,
        splits,
    }
}

/// One failure with the agent: ms from the kill.
struct Restore {
    live_ms: f64,
    cloning_ms: Option<f64>,
    protected_ms: f64,
    pause_ms: f64,
    bytes: f64,
    /// Pairs that split by themselves before this one held.
    splits: u32,
}

fn time_to_redundancy(run: usize) -> Restore {
    let (pair, primary, splits) =
        ticking_pair(&format!("clone-bench-agent-{run}"), AGENT_MIB, true);
    let dir = pair.dir().to_path_buf();
    let before = last_tick(&pair.console());
    signal(primary, libc::SIGKILL);
    let killed = Instant::now();
    let (_, live) = poll_fast(&pair, STEP_LIMIT, "the backup takes over", || {
        alive_named(&dir, "backup").filter(took_over)
    });
    let mut cloning = None;
    let (line, done) = poll_fast(
        &pair,
        STEP_LIMIT,
        "the agent restores a pair of epoch 2",
        || {
            if cloning.is_none()
                && alive_named(&dir, "backup").is_some_and(|l| l.state == VmState::Cloning)
            {
                cloning = Some(killed.elapsed());
            }
            protected(&dir, 2)
        },
    );
    let (Some(pause_ms), Some(bytes)) = (line.clone_pause_ms, line.clone_bytes) else {
        panic!(
            "no clone-pause or clone-bytes in the survivor's line: {line}\n{}",
            pair.diag()
        );
    };
    goes_on_ticking(&pair, before, "the guest ticks after the restore");
    pair.stop();
    Restore {
        live_ms: ms(live.duration_since(killed)),
        cloning_ms: cloning.map(ms),
        protected_ms: ms(done.duration_since(killed)),
        pause_ms,
        bytes: bytes as f64,
        splits,
    }
}

// ---------------------------------------------------------------------
// QEMU

/// A QMP connection.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect to the QMP socket at `path` (retrying until QEMU listens,
    /// at most `limit`) and leave capabilities negotiation.
    fn connect(path: &Path, limit: Duration) -> Result<Qmp, String> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > limit => {
                    return Err(format!("connecting to {}: {e}", path.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP closed".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}")),
            Err(e) => Err(format!("reading QMP: {e}")),
        }
    }

    /// Run `command`; its `return`, or its error.
    fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, String> {
        let mut message = json!({ "execute": command });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        writeln!(self.writer, "{message}").map_err(|e| format!("writing QMP: {e}"))?;
        loop {
            let reply = self.read()?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            return Err(format!("{command}: {reply}"));
        }
    }
}

/// A `qemu-system-riscv64` of the default guest, killed when dropped; its
/// serial console collected as it comes.
struct Qemu {
    child: Child,
    console: Arc<Mutex<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    command: String,
    qmp: Qmp,
}

impl Qemu {
    fn start(memory_mib: u64, qmp: &Path, extra: &[String]) -> Qemu {
        let dir = image_dir();
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let mut cmd = Command::new("qemu-system-riscv64");
        cmd.args(qemu_virt_args(memory_mib))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(["-bios", &path("fw_dynamic.bin")])
            .args(["-kernel", &path("Image")])
            .args(["-initrd", &path("initramfs.cpio.gz")])
            .arg("-append")
            .arg(append(memory_mib))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command = describe(&cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command}: {e}"));
        let console = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&console);
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        let stderr = Some(support::drain(child.stderr.take().expect("piped stderr")));
        let qmp = match Qmp::connect(qmp, Duration::from_secs(30)) {
            Ok(qmp) => qmp,
            Err(e) => {
                let _ = child.kill();
                panic!("{command}: QMP: {e}");
            }
        };
        Qemu {
            child,
            console,
            stderr,
            command,
            qmp,
        }
    }

    fn last_tick(&self) -> Option<u64> {
        last_tick(&self.console.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Fail the bench saying `what`, with the command, console tail and
    /// stderr.
    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let console = self
            .console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let tail = &console[console.len().saturating_sub(400)..];
        panic!(
            "{what}\ncommand: {}\nconsole tail:\n{}\nstderr:\n{}",
            self.command,
            String::from_utf8_lossy(tail),
            String::from_utf8_lossy(&stderr)
        );
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One QEMU live migration.
struct Migration {
    /// As QEMU reports them (`query-migrate`), ms.
    total_ms: f64,
    downtime_ms: f64,
    /// `ram.transferred`.
    bytes: f64,
    /// From `migrate` until `query-migrate` said `completed`, on the host.
    wall_ms: f64,
    /// The guest printed a new tick on the destination within
    /// [`TICK_LIMIT`].
    resumed: bool,
}

fn qemu_migration(memory_mib: u64, run: usize) -> Migration {
    let scratch = support::Scratch::new(&format!("clone-bench-qemu-{memory_mib}-{run}"));
    let mut source = Qemu::start(memory_mib, &scratch.file("source.qmp"), &[]);
    let start = Instant::now();
    while source.last_tick().is_none_or(|t| t < TICKS_BEFORE) {
        if start.elapsed() > BOOT_LIMIT {
            source.fail(&format!("no tick {TICKS_BEFORE} within {BOOT_LIMIT:?}"));
        }
        if let Ok(Some(status)) = source.child.try_wait() {
            source.fail(&format!("QEMU ended: {status}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = free_port();
    // Its QMP answers once QEMU runs its main loop, after it listens for
    // the migration.
    let mut destination = Qemu::start(
        memory_mib,
        &scratch.file("destination.qmp"),
        &["-incoming".to_string(), format!("tcp:127.0.0.1:{port}")],
    );
    if let Err(e) = source.qmp.execute(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": QEMU_MAX_BANDWIDTH })),
    ) {
        source.fail(&e);
    }
    let before = source.last_tick();
    let started = Instant::now();
    if let Err(e) = source.qmp.execute(
        "migrate",
        Some(json!({ "uri": format!("tcp:127.0.0.1:{port}") })),
    ) {
        source.fail(&e);
    }
    let info = loop {
        let info = match source.qmp.execute("query-migrate", None) {
            Ok(info) => info,
            Err(e) => source.fail(&e),
        };
        match info["status"].as_str() {
            Some("completed") => break info,
            Some("failed" | "cancelled") => source.fail(&format!("migration: {info}")),
            _ => {}
        }
        if started.elapsed() > STEP_LIMIT {
            source.fail(&format!(
                "migration not completed within {STEP_LIMIT:?}: {info}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall_ms = ms(started.elapsed());
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let waited = Instant::now();
    let mut resumed = false;
    while waited.elapsed() < TICK_LIMIT {
        if destination.last_tick() > before {
            resumed = true;
            break;
        }
        if let Ok(Some(status)) = destination.child.try_wait() {
            destination.fail(&format!("the destination QEMU ended: {status}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Migration {
        total_ms: number(&info["total-time"]),
        downtime_ms: number(&info["downtime"]),
        bytes: number(&info["ram"]["transferred"]),
        wall_ms,
        resumed,
    }
}

// ---------------------------------------------------------------------
// The run

struct Sample {
    /// Per entry of [`SIZES`].
    clones: Vec<CloneRun>,
    migrations: Vec<Migration>,
    restore: Restore,
}

fn one_run(run: usize, qemu: bool) -> Sample {
    let mut clones = Vec::new();
    let mut migrations = Vec::new();
    for &m in &SIZES {
        clones.push(ftvm_clone(m, run));
        if qemu {
            migrations.push(qemu_migration(m, run));
        }
    }
    Sample {
        clones,
        migrations,
        restore: time_to_redundancy(run),
    }
}

fn col<T>(rows: &[&T], f: impl Fn(&T) -> f64) -> f64 {
    median(rows.iter().map(|r| f(r)).collect())
}

fn max<T>(rows: &[&T], f: impl Fn(&T) -> f64) -> f64 {
    rows.iter().map(|r| f(r)).fold(f64::NAN, f64::max)
}

/// The median (or, with `agg`, the max) of the values present, with
/// `digits` decimals, or `-` if none is.
fn cell(v: Vec<Option<f64>>, agg: bool, digits: usize) -> String {
    let v: Vec<f64> = v.into_iter().flatten().collect();
    if v.is_empty() {
        "-".to_string()
    } else if agg {
        format!("{:.digits$}", v.iter().copied().fold(f64::NAN, f64::max))
    } else {
        format!("{:.digits$}", median(v))
    }
}

/// Print a markdown table, every column as wide as its widest cell, the
/// first column left-aligned and the others right-aligned.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, &w))| {
                if c == 0 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        println!("| {} |", cells.join(" | "));
    };
    line(header.iter().map(|s| s.to_string()).collect());
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(c, &w)| {
            if c == 0 {
                "-".repeat(w + 2)
            } else {
                format!("{}:", "-".repeat(w + 1))
            }
        })
        .collect();
    println!("|{}|", rule.join("|"));
    for row in rows {
        line(row.clone());
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

const MB: f64 = 1024.0 * 1024.0;

fn main() {
    let Some(runs) = bench_runs() else {
        return;
    };
    let qemu = qemu_available();
    let load_before = load_average();
    let samples: Vec<Sample> = (0..runs).map(|run| one_run(run, qemu)).collect();

    println!(
        "host: {} CPUs; load average (1 min) {load_before} before, {} after; {runs} runs, \
         medians (max: the largest of the runs)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!(
        "guest: the default Linux guest (same kernel, initramfs and command line on ftvm and \
         QEMU); it fills a quarter of its RAM with incompressible data (1 MiB from /dev/urandom \
         repeated, in tmpfs), then prints `tick N` every 100 ms; killed or migrated after tick \
         {TICKS_BEFORE}"
    );
    println!(
        "pairs: `ftvm up`; the primary, the backup and the new backup on this host, loopback TCP; \
         MB = 2^20 bytes"
    );

    println!();
    println!(
        "1. `ftvm protect` after kill -9 of the primary and the backup live; `ftvm up \
         --no-restore {}` (loose: with 500 ms, or the default 1000 ms at 1 GiB, pairs of 512 MiB \
         and more split by themselves while booting on this host)",
        DETECTION_PROTECT.join(" ")
    );
    let rows: Vec<Vec<String>> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let rows: Vec<&CloneRun> = samples.iter().map(|s| &s.clones[i]).collect();
            let bytes = col(&rows, |c| c.bytes);
            let stage = |k: usize| cell(rows.iter().map(|c| c.stages_s[k]).collect(), false, 2);
            vec![
                m.to_string(),
                format!("{:.2}", col(&rows, |c| c.pause_ms)),
                format!("{:.2}", max(&rows, |c| c.pause_ms)),
                format!("{:.1}", bytes / MB),
                format!("{:.1}%", 100.0 * bytes / (m as f64 * MB)),
                stage(0),
                stage(1),
                stage(2),
                format!("{:.2}", col(&rows, |c| c.protect_s)),
                format!("{:.2}", col(&rows, |c| c.exit_s)),
            ]
        })
        .collect();
    table(
        &[
            "RAM MiB",
            "pause ms",
            "pause max",
            "snapshot MB",
            "of RAM",
            "cloning s",
            "sending s",
            "catching up s",
            "protected s",
            "protect exit s",
        ],
        &rows,
    );
    println!(
        "(pause: the survivor's clone-pause, the time the guest stood still while its machine \
         was captured into the pre-touched buffer; snapshot: the survivor's clone-bytes, what the \
         snapshot took on the channel, and that over the guest's RAM; cloning, sending, catching \
         up: seconds from starting `ftvm protect` until the survivor's status line first showed \
         the clone connecting to the new backup, sending the snapshot, the new backup catching up \
         (a stage shows within the 200 ms a status line is rewritten in); protected: until the \
         status files show a primary and a backup of epoch 2, the new backup caught up: the total \
         time of `ftvm protect`; protect exit: until the `ftvm protect` process exited)"
    );
    let splits: Vec<String> = SIZES
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let n: u32 = samples.iter().map(|s| s.clones[i].splits).sum();
            format!("{m} MiB: {n}")
        })
        .collect();
    println!(
        "pairs that split by themselves before the kill (a spurious failover while booting), \
         started again: {}",
        splits.join(", ")
    );

    println!();
    println!(
        "2. time to redundancy with the agent (`ftvm up` without --no-restore), {AGENT_MIB} MiB, \
         `{}`: ms from kill -9 of the primary, the status files read every {} ms",
        DETECTION_AGENT.join(" "),
        POLL.as_millis()
    );
    let rows: Vec<&Restore> = samples.iter().map(|s| &s.restore).collect();
    let restore_rows: Vec<Vec<String>> = [("median", false), ("max", true)]
        .into_iter()
        .map(|(what, agg)| {
            let stat = |f: &dyn Fn(&Restore) -> Option<f64>, digits| {
                cell(rows.iter().map(|r| f(r)).collect(), agg, digits)
            };
            vec![
                what.to_string(),
                stat(&|r| Some(r.live_ms), 0),
                stat(&|r| r.cloning_ms.map(|c| c - r.live_ms), 0),
                stat(&|r| r.cloning_ms.map(|c| r.protected_ms - c), 0),
                stat(&|r| Some(r.protected_ms - r.live_ms), 0),
                stat(&|r| Some(r.protected_ms), 0),
                stat(&|r| Some(r.pause_ms), 2),
                stat(&|r| Some(r.bytes / MB), 1),
            ]
        })
        .collect();
    table(
        &[
            "",
            "detection+take-over ms",
            "agent wait ms",
            "clone ms",
            "restore ms",
            "to redundancy ms",
            "pause ms",
            "snapshot MB",
        ],
        &restore_rows,
    );
    println!(
        "(detection+take-over: from the kill until the backup runs the guest alone (`live`); \
         restore: from then until the status files show a primary and a backup of epoch 2, split \
         into the agent's wait (until the survivor is `cloning`: the agent looks every 50 ms, \
         waits until a VM has run alone 200 ms, starts a new backup and asks the survivor) and \
         the clone (until protected); to redundancy: kill to protected; pause: the guest's pause \
         for the snapshot)"
    );
    println!(
        "pairs that split by themselves before the kill (a spurious failover while booting), \
         started again: {}",
        rows.iter().map(|r| r.splits).sum::<u32>()
    );

    println!();
    if !qemu {
        println!("3. peer: QEMU live migration: skipped (qemu-system-riscv64 not found)");
        return;
    }
    println!(
        "3. peer: QEMU live migration (TCG) of the same guest to a second qemu-system-riscv64 \
         (-incoming tcp:127.0.0.1:PORT) over loopback, through QMP; {}; max-bandwidth raised to \
         {} GiB/s (QEMU's default: 32 MiB/s), downtime-limit left at its default (300 ms)",
        support::qemu_version(),
        QEMU_MAX_BANDWIDTH >> 30
    );
    let rows: Vec<Vec<String>> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let rows: Vec<&Migration> = samples.iter().map(|s| &s.migrations[i]).collect();
            let clones: Vec<&CloneRun> = samples.iter().map(|s| &s.clones[i]).collect();
            let resumed = rows.iter().filter(|r| r.resumed).count();
            vec![
                m.to_string(),
                format!("{:.2}", col(&clones, |c| c.pause_ms)),
                format!("{:.0}", col(&rows, |r| r.downtime_ms)),
                format!("{:.0}", max(&rows, |r| r.downtime_ms)),
                format!("{:.2}", col(&clones, |c| c.protect_s)),
                format!("{:.2}", col(&rows, |r| r.total_ms) / 1e3),
                format!("{:.2}", col(&rows, |r| r.wall_ms) / 1e3),
                format!("{:.1}", col(&clones, |c| c.bytes) / MB),
                format!("{:.1}", col(&rows, |r| r.bytes) / MB),
                format!("{resumed}/{}", rows.len()),
            ]
        })
        .collect();
    table(
        &[
            "RAM MiB",
            "ftvm pause ms",
            "QEMU downtime ms",
            "QEMU downtime max",
            "ftvm protect s",
            "QEMU total s",
            "QEMU wall s",
            "ftvm snapshot MB",
            "QEMU sent MB",
            "QEMU guest resumed",
        ],
        &rows,
    );
    println!(
        "(the guest's pause, the comparable figures: ftvm pause = the survivor's clone-pause \
         (table 1), QEMU downtime = `downtime` of query-migrate, the stop-and-copy phase, in whole \
         ms as QEMU reports it; the whole operation: ftvm protect = table 1's protected, QEMU total \
         = `total-time` of query-migrate, from `migrate` to completion, QEMU wall = the same on \
         the host, from sending `migrate` until query-migrate (asked every 5 ms) said \
         `completed`; bytes: the clone's snapshot (table 1), QEMU's `ram.transferred`; guest \
         resumed: runs in which the destination printed a tick after the last one of the source \
         within {} s)",
        TICK_LIMIT.as_secs()
    );
}
