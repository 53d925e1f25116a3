//! Shared by the integration tests and the benchmarks: building the guest
//! programs under `guest/`, running ftvm or QEMU on one with a time limit,
//! waiting on a condition with a deadline, and an FT pair ([`pair`]).
#![allow(dead_code)] // each test binary uses a different part of this

pub mod cluster;
pub mod http;
pub mod pair;
pub mod ticks;
pub mod writer;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

/// The Debian guest's kernel command line. Under a slow boot (emulated,
/// and slower again as a pair) udev's coldplug can outlast systemd's 90 s
/// wait for the console's device, and then no login prompt comes: the
/// wait is made long enough for any boot that finishes.
pub const DEBIAN_APPEND: &str =
    "root=/dev/vda rw console=ttyS0 quiet systemd.default_device_timeout_sec=1800";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build every guest program (once per test binary) and return the
/// directory holding the ELFs. The cross compiler is a hard requirement:
/// `.ci/run` installs it.
pub fn guest_build_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let guest = repo_root().join("guest");
            let output = Command::new("make")
                .arg("-s")
                .arg("-C")
                .arg(&guest)
                .output()
                .expect("running make (is it installed?)");
            assert!(
                output.status.success(),
                "building the guest programs failed (is gcc-riscv64-linux-gnu installed?):\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            guest.join("build")
        })
        .clone()
}

pub fn guest_elf(name: &str) -> PathBuf {
    let path = guest_build_dir().join(format!("{name}.elf"));
    assert!(
        path.exists(),
        "guest program {} was not built",
        path.display()
    );
    path
}

pub fn ftvm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ftvm"))
}

/// What a finished (or killed) process left behind.
#[derive(Debug)]
pub struct Finished {
    /// `None` if it was killed at the time limit or by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl Finished {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Run `cmd` with stdin closed, capturing its output, killing it after
/// `limit`.
pub fn run_limited(cmd: Command, limit: Duration) -> Finished {
    run_with_input(cmd, None, limit)
}

/// Like [`run_limited`], feeding `input` (if any) on stdin and then closing it.
pub fn run_with_input(mut cmd: Command, input: Option<Vec<u8>>, limit: Duration) -> Finished {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
    }
    let out_reader = drain(child.stdout.take().expect("piped stdout"));
    let err_reader = drain(child.stderr.take().expect("piped stderr"));
    let (status, timed_out) = wait_or_kill(&mut child, limit);
    let elapsed = started.elapsed();
    Finished {
        code: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
        elapsed,
        timed_out,
    }
}

/// Read all of `pipe` in a thread of its own, so that a child never blocks
/// on a full pipe while it is waited for.
pub fn drain<R: Read + Send + 'static>(mut pipe: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Read `pipe` in a thread of its own into a buffer that can be looked at
/// while the child runs (a console followed as it comes).
pub fn collect<R: Read + Send + 'static>(mut pipe: R) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&buf);
    std::thread::spawn(move || {
        let mut chunk = [0; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

/// Wait for `child` at most `limit`, then kill and reap it: its status,
/// and whether it had to be killed.
pub fn wait_or_kill(
    child: &mut std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, bool) {
    match child.wait_timeout(limit).expect("waiting for the child") {
        Some(status) => (status, false),
        None => {
            let _ = child.kill();
            (child.wait().expect("reaping the killed child"), true)
        }
    }
}

/// Debian's OpenSBI (package `opensbi`), the firmware QEMU `virt` boots by
/// default.
pub const OPENSBI_FW_DYNAMIC: &str = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin";

/// `ftvm run --bios none --kernel ELF` plus `extra` arguments.
pub fn ftvm_run(elf: &Path, extra: &[&str], limit: Duration) -> Finished {
    ftvm_run_with(&ftvm_bin(), elf, extra, limit)
}

/// [`ftvm_run`] with the ftvm binary `ftvm` (a baseline's, say).
pub fn ftvm_run_with(ftvm: &Path, elf: &Path, extra: &[&str], limit: Duration) -> Finished {
    let mut cmd = Command::new(ftvm);
    cmd.args(["run", "--bios", "none", "--kernel"])
        .arg(elf)
        .args(extra);
    run_limited(cmd, limit)
}

pub fn qemu_available() -> bool {
    Command::new("qemu-system-riscv64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// QEMU's `rv64` CPU restricted to what ftvm implements (RV64GC, Zicsr,
/// Zifencei, Sstc): its default adds H, bitmanip and more, which would show
/// in `misa`, the device tree and the instructions that work.
pub const QEMU_CPU: &str = "rv64,h=false,zba=false,zbb=false,zbc=false,zbs=false,\
                            Zihintpause=false,svinval=false,svnapot=false,svpbmt=false";

/// `qemu-system-riscv64 -M virt -cpu QEMU_CPU -bios none -kernel ELF` plus
/// `extra`.
/// The first line of `qemu-system-riscv64 --version` (empty without it).
pub fn qemu_version() -> String {
    Command::new("qemu-system-riscv64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

pub fn qemu_run(elf: &Path, extra: &[&str], limit: Duration) -> Finished {
    qemu_run_with_bios(elf, "none", extra, limit)
}

/// The arguments of `qemu-system-riscv64` for a `virt` board restricted to
/// RV64GC with `memory_mib` of RAM, its console on stdio and no monitor.
pub fn qemu_virt_args(memory_mib: u64) -> Vec<String> {
    let memory = memory_mib.to_string();
    [
        "-M",
        "virt",
        "-cpu",
        QEMU_CPU,
        "-m",
        &memory,
        "-nographic",
        "-monitor",
        "none",
    ]
    .map(String::from)
    .to_vec()
}

/// `qemu-system-riscv64` booting ftvm's default guest (its firmware,
/// kernel and initramfs from [`image_dir`]) with `memory_mib` and the
/// kernel command line `append`; callers add devices and options.
pub fn qemu_default_guest(memory_mib: u64, append: &str) -> Command {
    let dir = image_dir();
    let mut cmd = Command::new("qemu-system-riscv64");
    cmd.args(qemu_virt_args(memory_mib))
        .arg("-bios")
        .arg(dir.join("fw_dynamic.bin"))
        .arg("-kernel")
        .arg(dir.join("Image"))
        .arg("-initrd")
        .arg(dir.join("initramfs.cpio.gz"))
        .arg("-append")
        .arg(append);
    cmd
}

/// QEMU `virt` with the given `-bios` (a path, or `none`).
pub fn qemu_run_with_bios(elf: &Path, bios: &str, extra: &[&str], limit: Duration) -> Finished {
    let mut cmd = Command::new("qemu-system-riscv64");
    cmd.args(qemu_virt_args(128))
        .args(["-bios", bios, "-kernel"])
        .arg(elf)
        .args(extra);
    run_limited(cmd, limit)
}

/// Parse the `icount: N` and `final state digest: HEX` lines of
/// `ftvm run --digest`.
pub fn parse_digest(stderr: &str) -> (u64, String) {
    let icount = stderr
        .lines()
        .find_map(|l| l.strip_prefix("icount: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no icount line in:\n{stderr}"));
    let digest = stderr
        .lines()
        .find_map(|l| l.strip_prefix("final state digest: "))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no digest line in:\n{stderr}"));
    (icount, digest)
}

/// Benchmarks: runs per engine (`FTVM_BENCH_RUNS`, default 3), or `None`
/// when the binary was not started with `--bench` (a plain `cargo test
/// --benches` run, which should stay quick).
pub fn bench_runs() -> Option<usize> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    Some(
        std::env::var("FTVM_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3)
            .max(1),
    )
}

/// Benchmarks: another ftvm binary to run the same rows with
/// (`FTVM_BENCH_BASELINE=/path/to/ftvm`, e.g. a build of the code before a
/// change), so that one run compares the two.
pub fn bench_baseline() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("FTVM_BENCH_BASELINE")?);
    assert!(
        path.is_file(),
        "FTVM_BENCH_BASELINE={} is not a file",
        path.display()
    );
    Some(path)
}

/// Which way a measure is good.
#[derive(Clone, Copy)]
pub enum Better {
    Lower,
    Higher,
}

/// One comparison of a bench for `scripts/bench`'s summary: ftvm's value of
/// a measure and its peer's (QEMU, or standalone ftvm for a pair) from the
/// same run. Appended as one JSON line to the file `FTVM_BENCH_JSON` names,
/// if it is set; nothing otherwise.
pub fn report(
    bench: &str,
    measure: &str,
    unit: &str,
    better: Better,
    ftvm: f64,
    (peer, peer_value): (&str, f64),
) {
    let Some(path) = std::env::var_os("FTVM_BENCH_JSON") else {
        return;
    };
    // How many times better ftvm is: above 1, ftvm wins.
    let advantage = match better {
        Better::Lower => peer_value / ftvm,
        Better::Higher => ftvm / peer_value,
    };
    let line = serde_json::json!({
        "bench": bench,
        "measure": measure,
        "unit": unit,
        "better": match better { Better::Lower => "lower", Better::Higher => "higher" },
        "ftvm": ftvm,
        "peer": peer,
        "peer_value": peer_value,
        "advantage": advantage,
    });
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| writeln!(file, "{line}"));
    if let Err(e) = written {
        panic!("FTVM_BENCH_JSON={}: {e}", path.to_string_lossy());
    }
}

/// The two comparisons of a measure taken standalone, in an FT pair and
/// (if it ran) on QEMU: standalone against QEMU, and the pair against
/// standalone (its measure prefixed `FT pair: `). See [`report`].
pub fn report_solo_and_pair(
    bench: &str,
    measure: &str,
    unit: &str,
    better: Better,
    [solo, pair]: [f64; 2],
    qemu: Option<f64>,
) {
    if let Some(qemu) = qemu {
        report(bench, measure, unit, better, solo, ("QEMU TCG", qemu));
    }
    let pair_measure = format!("FT pair: {measure}");
    report(
        bench,
        &pair_measure,
        unit,
        better,
        pair,
        ("standalone", solo),
    );
}

/// The median of a non-empty sample.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The default guest's image directory (`FTVM_GUEST_IMAGE`, or
/// `build/guest-image`), which `scripts/test` builds first.
pub fn image_dir() -> PathBuf {
    let dir = std::env::var_os("FTVM_GUEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest-image"));
    assert!(
        dir.join("Image").is_file() && dir.join("initramfs.cpio.gz").is_file(),
        "the default guest is not built in {}: run scripts/guest-image",
        dir.display()
    );
    dir
}

/// A child process killed and reaped when dropped, so a failing test
/// leaves no VM running.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Start `cmd` with its console piped and read the console until a line
/// holding `marker`; returns the child and the rest of its console. The
/// kernel's echoes of its command line ("Kernel command line: ...",
/// "Unknown kernel command line parameters ...") do not count: a marker a
/// guest command prints is in them long before the command runs.
pub fn spawn_until(
    mut cmd: Command,
    marker: &str,
) -> (Reaped, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ftvm");
    let mut console = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let child = Reaped(child);
    let mut seen = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if console.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("no `{marker}` on the console:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains(marker) && !line.contains("command line") {
            return (child, console);
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A scratch directory named `ftvm-WHAT-PID` in the temporary directory,
/// removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ftvm-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch(dir)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Message `i` of an echo conversation with a guest's echo service: its
/// number, then filler, `\n`-terminated; 10 to 2,910 bytes (some take
/// two frames), and every tenth 40 to 41 KB, so that many frames are in
/// flight both ways.
pub fn echo_message(i: u64) -> Vec<u8> {
    let mut m = format!("{i:08} ").into_bytes();
    let filler = if i % 10 == 9 {
        40_000 + i % 1000
    } else {
        i * 7919 % 2900
    };
    m.resize(9 + filler as usize, b'a' + (i % 26) as u8);
    m.push(b'\n');
    m
}

/// Send `message` and read it back, whole, within `limit`.
pub fn echo(
    stream: &mut std::net::TcpStream,
    message: &[u8],
    limit: Duration,
) -> Result<(), String> {
    use std::io::{ErrorKind, Write};
    stream
        .set_read_timeout(Some(limit))
        .and_then(|()| stream.write_all(message))
        .map_err(|e| format!("sending: {e}"))?;
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => "the connection ended".to_string(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!("no echo within {limit:?}"),
        _ => format!("reading: {e}"),
    })?;
    if back != message {
        let at = back
            .iter()
            .zip(message)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "the echo differs at byte {at} of {}: {:?}",
            message.len(),
            String::from_utf8_lossy(&back[at.saturating_sub(10)..(at + 20).min(back.len())])
        ));
    }
    Ok(())
}

/// `ftvm` with the default guest's image and plain (uncoloured) logs, as
/// the FT tests and benchmarks start it.
pub fn ftvm_with_guest() -> Command {
    let mut cmd = Command::new(ftvm_bin());
    cmd.env("FTVM_GUEST_IMAGE", image_dir())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    cmd
}

/// Whether `pid` runs (a zombie does not): what `ftvm status` asks.
pub use ftvm_host::process::process_alive;

/// Send `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) only sends a signal; it touches no memory of ours.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Poll `probe` every 50 ms until it gives a value or `limit` passes.
pub fn poll<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The seed of a test's random kill moments: `FTVM_SEED`, or the clock's
/// (always odd, as xorshift wants); printed so that a run can be repeated.
pub fn kill_seed() -> u64 {
    let seed = std::env::var("FTVM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    eprintln!("kill moments from seed {seed} (FTVM_SEED={seed} repeats them)");
    seed
}

/// Wait until `done` holds, looking every 50 ms; whether it did within
/// `limit`.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    poll(limit, || done().then_some(())).is_some()
}

/// The tests that run VMs share two cores: one of them at a time in a
/// test binary, whatever `--test-threads` says.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `cmd` as a shell command line (its environment first), to repeat it by
/// hand.
pub fn describe(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    words.push(cmd.get_program().to_string_lossy().into_owned());
    words.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains([' ', '"', '|', '>', ';', '$', '(', ')']) {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    words.join(" ")
}

/// The counters in `/log` of the ext4 image `disk` (one per line, as the
/// disk tests' guests append them), read with debugfs.
pub fn disk_log(disk: &Path) -> Vec<u64> {
    let out = Command::new("debugfs")
        .args(["-R", "cat /log"])
        .arg(disk)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("a counter per line"))
        .collect()
}

/// The ext4 image `disk` checks clean (`e2fsck -f -n`).
pub fn fsck_clean(disk: &Path) {
    let out = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(disk)
        .output()
        .expect("e2fsck (e2fsprogs)");
    assert!(
        out.status.success(),
        "the file system does not check clean:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
