//! `ftvm up`, `ftvm status` and `ftvm stop`: an FT pair on this host, kept
//! in a state directory.
//!
//! `up` starts `ftvm backup` and `ftvm primary` as detached processes and
//! returns once the primary logs to the backup. Everything the pair has is
//! in the directory: the pre-shared `key`, the arbiter's `arbiter/`, the
//! `console` file, each VM's `NAME.status` line and `NAME.log` (its
//! stderr), `NAME.console` (the socket `ftvm console` types into) and
//! `backup.addr`. With `--net`, `up` first starts the pair's
//! network, `ftvm switch`, with its `switch.status`, `switch.log` and
//! `switch.addr`; it ends by itself once the pair has ended.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ftvm_host::process::{process_alive, terminate};
use ftvm_host::status::{PairStatus, StatusFile, StatusLine, SwitchStatus, VmState};
use ftvm_net::{NetKind, NetSpec};

use crate::MachineArgs;
use crate::daemon::DiskModeArg;
use crate::restore::Plan;

/// Status files in a state directory that are not a VM's.
const NOT_VMS: [&str; 2] = ["switch", "agent"];

#[derive(Args)]
pub struct UpArgs {
    /// The pair's directory (created if missing; a previous pair's files
    /// in it are replaced).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,

    #[command(flatten)]
    pub machine: MachineArgs,

    /// How the disk is shared (see `ftvm primary --disk-mode`); `private`
    /// gives the backup a copy of the image in the state directory.
    #[arg(long, value_name = "shared|private", default_value = "shared")]
    pub disk_mode: DiskModeArg,

    /// Heartbeat interval of the logging channel.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Failure-detection timeout.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub timeout_ms: u64,

    /// The test-and-set store (default: `arbiter/` in the state directory).
    #[arg(long, value_name = "DIR|etcd:HOST:PORT")]
    pub arbiter: Option<String>,

    /// Do not start the agent that restores redundancy: after a failure
    /// the survivor runs alone until `ftvm protect`.
    #[arg(long)]
    pub no_restore: bool,

    /// Start the VM alone, without a backup: it runs unprotected until
    /// `ftvm protect` clones it into one (from then on the agent keeps it
    /// protected).
    #[arg(long)]
    pub no_backup: bool,

    /// Give the VM a network card. `user[,hostfwd=tcp:HOSTADDR:PORT-:GUESTPORT]...`
    /// (as for `ftvm run`) starts the pair's own network, `ftvm switch`,
    /// a process apart from both VMs with the user-mode gateway and the
    /// forwarded ports, so that clients' connections survive a failover;
    /// `switch:HOST:PORT` attaches both VMs to a switch that runs already.
    /// `,mtu=N` sets the card's MTU (default 65280; see `ftvm run --net`).
    #[arg(long, value_name = "user[,hostfwd=...]|switch:HOST:PORT[,mtu=N]")]
    pub net: Option<String>,
}

#[derive(Args)]
pub struct StateDirArgs {
    /// The pair's directory, as given to `ftvm up`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub dir: StateDirArgs,

    /// Print one JSON object (`{"vms": [...], "switch": ...}`) with every
    /// field of the status lines, for scripts.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,

    /// Redraw a table of the pair's VMs (state, epoch, lag, log rate,
    /// output delay, clones) and the events seen since (state changes,
    /// suspicions, take-overs, clones) every `--every-ms`, until
    /// interrupted or until no VM of the pair runs any more.
    #[arg(long)]
    pub watch: bool,

    /// How often `--watch` looks.
    #[arg(long, value_name = "MS", default_value_t = 500, requires = "watch")]
    pub every_ms: u64,
}

pub fn up(args: &UpArgs) -> Result<ExitCode> {
    let dir = &args.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    if let Some(vm) = read_vms(&dir).into_iter().find(|vm| vm.alive) {
        bail!(
            "a pair is running in {} ({} pid={}): `ftvm stop --state-dir {}` first",
            dir.display(),
            vm.line.state,
            vm.line.pid,
            dir.display()
        );
    }
    // A switch of an earlier pair (it ends by itself soon after the pair,
    // but may not have yet, and may still hold the forwarded ports).
    stop_switch(&dir);
    crate::restore::stop_agent(&dir);
    for entry in std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name == "console"
            || name == crate::restore::PLAN
            || [".addr", ".status", ".console", ".control", ".pid"]
                .iter()
                .any(|end| name.ends_with(end));
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for stale in ["arbiter", crate::restore::GONE] {
        let _ = std::fs::remove_dir_all(dir.join(stale));
    }
    let key: [u8; 32] = ftvm_host::random_bytes()?;
    let hex = hex(&key);
    write_private(&dir.join("key"), hex.as_bytes())?;
    // Fail here, with the user's own flags, rather than in a detached
    // process.
    args.machine
        .machine_config(Vec::new())
        .context("the guest to run")?;

    // The VMs are told their card's MTU, which the user's spec may set.
    let net = match args.net.as_deref().map(ftvm_net::parse_net).transpose()? {
        None => None,
        Some(NetSpec {
            kind: NetKind::Switch(addr),
            mtu,
        }) => Some((format!("switch:{addr},mtu={mtu}"), None)),
        Some(NetSpec {
            kind: NetKind::User(_),
            mtu,
        }) => {
            let spec = args.net.clone().unwrap_or_default();
            let (addr, pid) = start_switch(&dir, &spec)?;
            Some((format!("switch:{addr},mtu={mtu}"), Some(pid)))
        }
        Some(NetSpec {
            kind: NetKind::Tap(_),
            ..
        }) => bail!(
            "the two VMs of a pair need a TAP interface each: start them with `ftvm primary` \
             and `ftvm backup`, each with its own --net tap,ifname=NAME on one bridge"
        ),
    };
    let switch_pid = net.as_ref().and_then(|(_, pid)| *pid);
    let result = start_vms(args, &dir, net.as_ref().map(|(spec, _)| spec.as_str()));
    if result.is_err() {
        if let Some(pid) = switch_pid {
            terminate(pid);
        }
    }
    result
}

/// Start the pair's network: `ftvm switch` with `gateway` (the user's
/// `--net user,...`); its address and pid.
fn start_switch(dir: &Path, gateway: &str) -> Result<(String, u32)> {
    let args: Vec<OsString> = vec![
        "switch".into(),
        "--gateway".into(),
        gateway.into(),
        "--addr-file".into(),
        dir.join("switch.addr").into(),
        "--status-file".into(),
        dir.join("switch.status").into(),
        "--pair-dir".into(),
        dir.into(),
        "--key-file".into(),
        dir.join("key").into(),
        "--metrics".into(),
        "127.0.0.1:0".into(),
    ];
    let pid = spawn(dir, "switch", &args)?;
    let addr = listening_addr(dir, "switch", pid)?;
    Ok((addr, pid))
}

/// The address the process `name` (pid `pid`) writes to `DIR/NAME.addr`
/// once it listens.
pub(crate) fn listening_addr(dir: &Path, name: &str, pid: u32) -> Result<String> {
    let addr_file = dir.join(format!("{name}.addr"));
    let addr = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&addr_file)
            .ok()
            .filter(|s| s.ends_with('\n'))
    })
    .with_context(|| {
        format!(
            "the {name} (pid {pid}) did not start listening; see {}",
            dir.join(format!("{name}.log")).display()
        )
    })?;
    Ok(addr.trim().to_string())
}

fn start_vms(args: &UpArgs, dir: &Path, net: Option<&str>) -> Result<ExitCode> {
    let arbiter = args
        .arbiter
        .clone()
        .unwrap_or_else(|| dir.join("arbiter").to_string_lossy().into_owned());
    let mut common: Vec<String> = net
        .map(|spec| vec!["--net".into(), spec.into()])
        .unwrap_or_default();
    common.extend([
        "--key-file".into(),
        path_arg(&dir.join("key"))?,
        "--arbiter".into(),
        arbiter.clone(),
        "--console-file".into(),
        path_arg(&dir.join("console"))?,
    ]);
    common.extend(timing_args(
        args.heartbeat_ms,
        args.timeout_ms,
        args.disk_mode,
    ));
    let mut plan = Plan {
        common,
        backup: vec!["--engine".into(), args.machine.engine.to_string()],
        not_restorable: None,
        private_disk: None,
    };
    if let Some(disk) = &args.machine.disk {
        match args.disk_mode {
            DiskModeArg::Shared => {
                plan.backup
                    .extend(["--disk".into(), path_arg(&absolute(disk)?)?]);
            }
            // Each backup has its own copy, DIR/NAME-disk.img; a clone
            // fills it with the disk as it was at its snapshot.
            DiskModeArg::Private => {
                let len = std::fs::metadata(disk)
                    .with_context(|| format!("reading {}", disk.display()))?
                    .len();
                plan.private_disk = Some(len);
            }
        }
    }
    plan.write(dir)?;
    let mut primary: Vec<OsString> = vec!["primary".into()];
    let backup_pid = if args.no_backup {
        crate::restore::set_unprotected(dir, true)?;
        None
    } else {
        let backup = plan.backup_args(dir, "backup", 1)?;
        if let (Some(disk), DiskModeArg::Private) = (&args.machine.disk, args.disk_mode) {
            let copy = crate::restore::own_disk(dir, "backup");
            std::fs::copy(disk, &copy)
                .with_context(|| format!("copying {} for the backup's own disk", disk.display()))?;
        }
        let backup_pid = spawn(dir, "backup", &backup)?;
        let addr = listening_addr(dir, "backup", backup_pid)?;
        primary.extend(["--backup".into(), addr.into()]);
        Some(backup_pid)
    };
    primary.extend(plan.vm_args(dir, "primary"));
    primary.extend(args.machine.to_args()?);
    let primary_pid = spawn(dir, "primary", &primary)?;
    let status = dir.join("primary.status");
    wait_for(Duration::from_secs(60), || {
        let vm = read_vm(&status)?;
        (vm.line.state != VmState::Connecting || !vm.alive).then_some(())
    })
    .with_context(|| {
        format!(
            "the primary (pid {primary_pid}) did not connect to the backup; see {}",
            dir.join("primary.log").display()
        )
    })?;
    let primary = read_vm(&status);
    if !primary.as_ref().is_some_and(|vm| vm.alive) {
        bail!(
            "the primary (pid {primary_pid}) exited at start; see {}",
            dir.join("primary.log").display()
        );
    }
    let network = match net {
        Some(spec) => format!("network: {spec}\n"),
        None => String::new(),
    };
    let mut restore = if args.no_restore {
        "redundancy: not restored after a failure (--no-restore; `ftvm protect` restores it)\n"
            .to_string()
    } else if let Some(why) = &plan.not_restorable {
        format!("redundancy: not restored after a failure: {why}\n")
    } else {
        let (pid, page) = crate::restore::start_agent(dir)?;
        let page = page.map_or(String::new(), |url| format!("status page: {url}\n"));
        format!("redundancy: restored after a failure by the agent (pid {pid})\n{page}")
    };
    if args.no_backup {
        restore = format!(
            "redundancy: none until `ftvm protect --state-dir {}`; then {restore}",
            dir.display()
        );
    }
    let (what, backup) = match backup_pid {
        Some(pid) => ("pair up", format!(", backup pid={pid}")),
        None => ("VM up without a backup", String::new()),
    };
    say(&format!(
        "ftvm: {what} in {}: primary pid={primary_pid}{backup}\n\
         console: {} (`ftvm console --state-dir {0}` to type into it)\n{network}{restore}\
         `ftvm status --state-dir {0}` shows it, `ftvm stop --state-dir {0}` ends it",
        dir.display(),
        dir.join("console").display()
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The options every VM of a pair takes alike: its failure detection and
/// how its disk is shared.
pub(crate) fn timing_args(heartbeat_ms: u64, timeout_ms: u64, disk: DiskModeArg) -> Vec<String> {
    vec![
        "--heartbeat-ms".into(),
        heartbeat_ms.to_string(),
        "--timeout-ms".into(),
        timeout_ms.to_string(),
        "--disk-mode".into(),
        disk.as_str().into(),
    ]
}

/// `bytes` in lowercase hex (keys in key files, incarnations).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A line on stdout; a reader that went away (a closed pipe) is an error
/// the caller passes up, and `main` ends quietly on it.
fn say(line: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("writing to stdout")
}

/// A path as an argument of a process `up` starts (and of the plan).
fn path_arg(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Start `ftvm ARGS` detached from this process: its own process group (a
/// Ctrl-C at this terminal is not for it), stderr to `DIR/NAME.log`. Its
/// pid.
pub(crate) fn spawn(dir: &Path, name: &str, args: &[OsString]) -> Result<u32> {
    spawn_child(dir, name, args).map(|child| child.id())
}

/// [`spawn`], keeping the child to reap it (the agent, which outlives
/// the VMs it starts).
pub(crate) fn spawn_child(dir: &Path, name: &str, args: &[OsString]) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the ftvm executable")?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))
        .with_context(|| format!("creating {name}.log"))?;
    let log_format = crate::LOG_FORMAT
        .get()
        .copied()
        .unwrap_or(crate::LogFormat::Text);
    Command::new(exe)
        .args(args)
        .env("FTVM_LOG_FORMAT", log_format.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the {name}"))
}

pub(crate) fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if start.elapsed() > limit {
            bail!("timed out after {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One VM as its status file and the process table show it.
pub(crate) struct Vm {
    pub(crate) name: String,
    pub(crate) line: StatusLine,
    pub(crate) alive: bool,
}

impl Vm {
    /// Whether it is a member of the pair now: its process runs and has
    /// not said it is done (a VM that halted may linger a moment).
    pub(crate) fn running(&self) -> bool {
        self.alive && !self.line.state.is_final()
    }

    /// Its status line, unless the process died without saying so.
    pub(crate) fn describe(&self) -> StatusLine {
        if self.alive || self.line.state.is_final() {
            self.line.clone()
        } else {
            self.line.dead()
        }
    }
}

pub(crate) fn read_vm(path: &Path) -> Option<Vm> {
    let line: StatusLine = StatusFile::read(path)?;
    let name = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    Some(Vm {
        name,
        alive: process_alive(line.pid),
        line,
    })
}

/// The VM named `name` in `dir`, if it has a status file.
pub(crate) fn read_named(dir: &Path, name: &str) -> Option<Vm> {
    read_vm(&dir.join(format!("{name}.status")))
}

/// Whether a VM of the pair in `dir` runs (none if none has started).
pub(crate) fn pair_runs(dir: &Path) -> Option<bool> {
    let vms = read_vms(dir);
    (!vms.is_empty()).then(|| vms.iter().any(|vm| vm.alive))
}

/// Every VM with a status file in `dir`, in the order they were started:
/// `primary`, `backup`, then the clones `vm3`, `vm4`...
pub(crate) fn read_vms(dir: &Path) -> Vec<Vm> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut vms: Vec<Vm> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension().is_some_and(|e| e == "status")
                && path
                    .file_stem()
                    .is_some_and(|stem| !NOT_VMS.iter().any(|n| stem == *n))
        })
        .filter_map(|path| read_vm(&path))
        .collect();
    vms.sort_by_key(|vm| start_order(&vm.name));
    vms
}

/// Where a VM named so comes in the order VMs are started.
pub(crate) fn start_order(name: &str) -> (u64, String) {
    let n = match name {
        "primary" => 1,
        "backup" => 2,
        _ => name
            .strip_prefix("vm")
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX),
    };
    (n, name.to_string())
}

/// The pair's switch, if it runs.
pub(crate) fn read_switch(dir: &Path) -> Option<SwitchStatus> {
    StatusFile::read::<SwitchStatus>(&dir.join("switch.status")).filter(|s| process_alive(s.pid))
}

/// The pair in `dir` as `ftvm status --json` prints it (and the agent's
/// page serves it).
pub(crate) fn pair_status(dir: &Path) -> PairStatus {
    PairStatus {
        vms: read_vms(dir).iter().map(Vm::describe).collect(),
        switch: read_switch(dir),
    }
}

pub fn status(args: &StatusArgs) -> Result<ExitCode> {
    let dir = &args.dir.state_dir;
    let status = pair_status(dir);
    if status.vms.is_empty() {
        bail!("no pair in {}", dir.display());
    }
    if args.watch {
        return crate::watch::watch(dir, Duration::from_millis(args.every_ms.max(50)));
    }
    if args.json {
        say(&serde_json::to_string(&status).context("encoding the status")?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for line in &status.vms {
        say(&line.to_string())?;
    }
    if let Some(switch) = &status.switch {
        say(&switch.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn stop(args: &StateDirArgs) -> Result<ExitCode> {
    // First the agent, or it would restore what is being stopped.
    crate::restore::stop_agent(&args.state_dir);
    let vms: Vec<Vm> = read_vms(&args.state_dir)
        .into_iter()
        .filter(|vm| vm.alive)
        .collect();
    if vms.is_empty() {
        stop_switch(&args.state_dir);
        say(&format!(
            "ftvm: nothing runs in {}",
            args.state_dir.display()
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    // The VM that runs the guest ends the pair with a control entry; a
    // backup then ends by itself, without going live.
    for vm in vms.iter().filter(|vm| vm.line.state.runs_the_guest()) {
        terminate(vm.line.pid);
    }
    let pids: Vec<u32> = vms.iter().map(|vm| vm.line.pid).collect();
    let all_gone = |limit| {
        wait_for(limit, || {
            pids.iter().all(|&pid| !process_alive(pid)).then_some(())
        })
    };
    if all_gone(Duration::from_secs(10)).is_err() {
        for &pid in &pids {
            terminate(pid);
        }
        all_gone(Duration::from_secs(10)).context("the pair did not stop")?;
    }
    stop_switch(&args.state_dir);
    for vm in read_vms(&args.state_dir) {
        say(&vm.describe().to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// End the pair's network (it would end by itself, a moment later).
fn stop_switch(dir: &Path) {
    if let Some(switch) = read_switch(dir) {
        terminate(switch.pid);
        let _ = wait_for(Duration::from_secs(5), || {
            (!process_alive(switch.pid)).then_some(())
        });
    }
}

/// Where `ftvm console` shows the console from: this many bytes before its
/// end (from a line start), then everything as it comes.
const CONSOLE_BACKLOG: u64 = 4096;

/// `ftvm console`: the pair's console on this terminal. Output is the
/// console file as it grows; input goes to the VM that runs the guest,
/// and after a failover to the one that took over (bytes typed while no
/// VM runs the guest wait; bytes the dead VM took but had not logged to
/// its backup are lost, like a keystroke to a host that crashed).
pub fn console(args: &StateDirArgs) -> Result<ExitCode> {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::net::UnixStream;

    use ftvm_host::terminal::{Console, ConsoleEvent, Wait};

    let dir = &args.state_dir;
    if read_vms(dir).is_empty() {
        bail!("no pair in {}", dir.display());
    }
    let path = dir.join("console");
    let mut file = std::fs::File::open(&path)
        .with_context(|| format!("opening the pair's console {}", path.display()))?;
    let len = file.metadata()?.len();
    let mut offset = len.saturating_sub(CONSOLE_BACKLOG);
    if offset > 0 {
        // Start at a line.
        let mut head = Vec::new();
        file.seek(SeekFrom::Start(offset))?;
        Read::by_ref(&mut file)
            .take(CONSOLE_BACKLOG)
            .read_to_end(&mut head)?;
        offset += head
            .iter()
            .position(|&b| b == b'\n')
            .map_or(0, |i| i as u64 + 1);
    }
    let mut input = Console::open()?;
    let say = |line: &str| eprint!("ftvm console: {line}\r\n");
    say("typing goes to the VM that runs the guest; Ctrl-A x quits");
    let mut target: Option<(u32, UnixStream)> = None;
    let mut pending: Vec<u8> = Vec::new();
    let mut stdout = std::io::stdout();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // Output: whatever the file holds past `offset`.
        file.seek(SeekFrom::Start(offset))?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            stdout.write_all(&buf[..n])?;
            offset += n as u64;
        }
        stdout.flush()?;
        let vms = read_vms(dir);
        if vms.iter().all(|vm| !vm.alive) {
            say("the pair has ended");
            return Ok(ExitCode::SUCCESS);
        }
        // Input: to the VM that runs the guest now.
        let runs = vms
            .iter()
            .find(|vm| vm.alive && vm.line.state.runs_the_guest());
        if target.as_ref().map(|(pid, _)| *pid) != runs.map(|vm| vm.line.pid) {
            target = runs.and_then(|vm| {
                let socket = dir.join(format!("{}.console", vm.name));
                let stream = UnixStream::connect(&socket).ok()?;
                let who = if vm.line.state == VmState::Live {
                    "live VM"
                } else {
                    "primary"
                };
                say(&format!("typing to the {who} (pid {})", vm.line.pid));
                Some((vm.line.pid, stream))
            });
        }
        if !pending.is_empty() {
            if let Some((_, stream)) = &mut target {
                match stream.write_all(&pending) {
                    Ok(()) => pending.clear(),
                    Err(_) => target = None,
                }
            }
        }
        match input.wait(Some(Duration::from_millis(20))) {
            Wait::Event(ConsoleEvent::Byte(byte)) => {
                pending.push(byte);
                while let Some(event) = input.poll() {
                    match event {
                        ConsoleEvent::Byte(byte) => pending.push(byte),
                        ConsoleEvent::Quit => return Ok(ExitCode::SUCCESS),
                    }
                }
            }
            Wait::Event(ConsoleEvent::Quit) => return Ok(ExitCode::SUCCESS),
            Wait::TimedOut | Wait::Closed => {}
        }
    }
}
