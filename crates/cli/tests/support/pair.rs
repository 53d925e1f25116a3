//! One FT pair, as the integration tests and the benchmarks run it: its
//! state directory, every process started for it, its status lines read
//! as types, and its logs for a diagnosis only.
//!
//! A pair starts either with `ftvm up` ([`Pair::up`]) or process by
//! process ([`Pair::start_backup`], [`Pair::start_primary`],
//! [`Pair::start_switch`]), as a test that puts something between the two
//! VMs (a proxy, a bridge) or runs them differently needs. Either way:
//!
//! - dropping the `Pair` kills (-9) every process it started and every
//!   process its status files ever named, pass or fail — a test that
//!   panics leaves nothing running — and removes the state directory,
//!   unless the test failed: then the directory is kept, and named, for a
//!   post-mortem;
//! - what the VMs did is read from their status lines ([`StatusLine`],
//!   [`SwitchStatus`]; `ftvm status --json` through [`Pair::ftvm_status`]),
//!   never from their logs: a log is for people, its wording changes;
//!   [`Pair::diag`] dumps the logs' tails when a test fails;
//! - a test waits for a condition with a deadline ([`Pair::wait_until`],
//!   [`Pair::wait_status`]), never for a fixed time: a loaded host is slow,
//!   an idle one should not wait.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

// The status line's types, for the tests to name (each uses some).
#[allow(unused_imports)]
pub use ftvm_ft::golive::Verdict;
use ftvm_host::status::StatusFile;
#[allow(unused_imports)]
pub use ftvm_host::status::{ChannelClose, StatusLine, SwitchStatus, VmState};
#[allow(unused_imports)]
pub use ftvm_node::HaltCode;

use super::{describe, ftvm_bin, ftvm_with_guest, image_dir, poll, process_alive, run_limited};

/// An `ftvm` command that should return at once (`up`, `status`, `stop`),
/// on a loaded host.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(90);
/// Starting a process until it listens (writes its address file).
const LISTEN_LIMIT: Duration = Duration::from_secs(30);

/// One VM of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vm {
    Primary,
    Backup,
}

impl Vm {
    pub const BOTH: [Vm; 2] = [Vm::Primary, Vm::Backup];

    /// Its name: the `--name`, the status file's `role`, the files'
    /// stem (`primary.status`, `primary.log`).
    pub fn name(self) -> &'static str {
        match self {
            Vm::Primary => "primary",
            Vm::Backup => "backup",
        }
    }

    pub fn other(self) -> Vm {
        match self {
            Vm::Primary => Vm::Backup,
            Vm::Backup => Vm::Primary,
        }
    }
}

impl std::fmt::Display for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What `ftvm status --json` says of a pair.
#[derive(Clone, Debug, PartialEq)]
pub struct PairStatus {
    pub vms: Vec<StatusLine>,
    pub switch: Option<SwitchStatus>,
}

impl PairStatus {
    /// The VMs whose processes run (neither dead nor done).
    pub fn alive(&self) -> Vec<&StatusLine> {
        self.vms
            .iter()
            .filter(|line| line.state != VmState::Dead && !line.state.is_final())
            .collect()
    }

    /// The line of `vm`, found by its role (a VM without a status file has
    /// no line, so the order says nothing).
    pub fn vm(&self, vm: Vm) -> Option<&StatusLine> {
        self.vms
            .iter()
            .find(|line| line.role.as_deref() == Some(vm.name()))
    }

    pub fn state(&self, vm: Vm) -> Option<VmState> {
        self.vm(vm).map(|line| line.state)
    }

    /// The line of the VM named `name` (`primary`, `backup`, `vm3`...).
    pub fn named(&self, name: &str) -> Option<&StatusLine> {
        self.vms
            .iter()
            .find(|line| line.name.as_deref() == Some(name))
    }

    /// A whole pair of `epoch`: a primary and a backup, the backup caught
    /// up, and no third VM.
    pub fn protected(&self, epoch: u64) -> Option<(StatusLine, StatusLine)> {
        let alive = self.alive();
        let of = |state| {
            alive
                .iter()
                .find(|line| line.state == state && line.epoch == Some(epoch))
                .map(|line| (*line).clone())
        };
        let (primary, backup) = (of(VmState::Primary)?, of(VmState::Backup)?);
        (alive.len() == 2).then_some((primary, backup))
    }

    /// Whether `vm` is in `state` with `pid`.
    pub fn is(&self, vm: Vm, state: VmState, pid: u32) -> bool {
        self.vm(vm)
            .is_some_and(|line| line.state == state && line.pid == pid)
    }
}

/// A pair's state directory and every process started for it; see the
/// module's documentation.
pub struct Pair {
    dir: PathBuf,
    /// The command every process started by hand runs under (e.g. `ip
    /// netns exec NAME`), if any.
    wrapper: Vec<OsString>,
    /// Processes this pair started itself, by name.
    children: Vec<(String, Child)>,
    /// Every pid a status file named: `ftvm up`'s processes are not our
    /// children, and a pid is gone from a status file that a test removes.
    seen: Mutex<Vec<u32>>,
    /// How the pair's processes were started, for the diagnosis.
    commands: Vec<String>,
}

impl Pair {
    /// A pair in a fresh state directory named after `tag`.
    pub fn new(tag: &str) -> Pair {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ftvm-pair-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the pair's state directory");
        // `ftvm up` names the directory canonically in its processes'
        // arguments, which is how the cleanup recognises them.
        let dir = dir
            .canonicalize()
            .expect("resolving the pair's state directory");
        Pair {
            dir,
            wrapper: Vec::new(),
            children: Vec::new(),
            seen: Mutex::new(Vec::new()),
            commands: Vec::new(),
        }
    }

    /// Run every process started by hand under `wrapper` (its pid must
    /// become the process's: `ip netns exec` execs it).
    pub fn wrap(&mut self, wrapper: &[&str]) {
        self.wrapper = wrapper.iter().map(OsString::from).collect();
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file in the state directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// An `ftvm` command with the default guest (under the wrapper, if
    /// any).
    pub fn ftvm(&self) -> Command {
        let Some((program, args)) = self.wrapper.split_first() else {
            return ftvm_with_guest();
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .arg(ftvm_bin())
            .env("FTVM_GUEST_IMAGE", image_dir())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        cmd
    }

    // -----------------------------------------------------------------
    // Starting

    /// `ftvm up --state-dir DIR --no-restore ARGS`; the pids of the
    /// primary and the backup. (Both may not run any more: on a loaded
    /// host a pair can fail over by itself at once.) The tests of one
    /// failover look at the survivor running alone, so no agent gives it
    /// a new backup; [`Pair::up_restoring`] starts one.
    pub fn up<S: AsRef<OsStr>>(&mut self, args: &[S]) -> (u32, u32) {
        let mut all: Vec<OsString> = vec!["--no-restore".into()];
        all.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        self.up_restoring(&all)
    }

    /// `ftvm up --state-dir DIR ARGS`, with the agent that restores
    /// redundancy after each failure.
    pub fn up_restoring<S: AsRef<OsStr>>(&mut self, args: &[S]) -> (u32, u32) {
        let mut up = ftvm_with_guest();
        up.arg("up").arg("--state-dir").arg(&self.dir).args(args);
        self.commands.push(describe(&up));
        let run = run_limited(up, COMMAND_LIMIT);
        assert!(
            run.code == Some(0),
            "ftvm up failed ({:?}):\n{}{}\n{}",
            run.code,
            run.stdout_text(),
            run.stderr,
            self.diag()
        );
        // A VM started with `--no-backup` has none: pid 0.
        let backup = self.raw_status("backup.status").map_or(0, |line| line.pid);
        (self.pid(Vm::Primary), backup)
    }

    /// The pre-shared key of the processes started by hand (`DIR/key`),
    /// written the first time it is asked for.
    pub fn key(&self) -> PathBuf {
        let path = self.path("key");
        if !path.exists() {
            write_key(&path, "the pair's key ");
        }
        path
    }

    /// The options that make `vm` a process of this pair, with `key`: the
    /// arbiter, the console file and the status file in the state
    /// directory, and its name.
    pub fn vm_args(&self, vm: Vm, key: &Path) -> Vec<OsString> {
        vec![
            "--key-file".into(),
            key.into(),
            "--arbiter".into(),
            self.path("arbiter").into(),
            "--console-file".into(),
            self.path("console").into(),
            "--status-file".into(),
            self.path(&format!("{vm}.status")).into(),
            "--name".into(),
            vm.name().into(),
        ]
    }

    /// Start `ftvm ARGS` as the process `name`, its stderr to
    /// `DIR/NAME.log`; killed when the pair is dropped.
    pub fn start<S: AsRef<OsStr>>(&mut self, name: &str, args: &[S]) -> &mut Child {
        let log = std::fs::File::create(self.path(&format!("{name}.log")))
            .unwrap_or_else(|e| panic!("creating {name}.log: {e}"));
        let mut cmd = self.ftvm();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.commands.push(describe(&cmd));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {name}: {e}"));
        self.adopt(name, child)
    }

    /// Kill `child` with the pair; it is the process `name`.
    pub fn adopt(&mut self, name: &str, child: Child) -> &mut Child {
        self.children.push((name.to_string(), child));
        &mut self.children.last_mut().expect("just pushed").1
    }

    /// `ftvm backup` of this pair listening on a free loopback port, with
    /// `extra` options; its address, once it listens.
    pub fn start_backup(&mut self, extra: &[&str]) -> String {
        let mut args: Vec<OsString> = ["backup", "--listen", "127.0.0.1:0", "--addr-file"]
            .map(OsString::from)
            .to_vec();
        args.push(self.path("backup.addr").into());
        args.extend(self.vm_args(Vm::Backup, &self.key()));
        args.extend(extra.iter().map(OsString::from));
        self.start("backup", &args);
        self.listening("backup")
    }

    /// `ftvm primary` of this pair towards the backup at `backup`, with
    /// `extra` options (the guest's `--append` among them).
    pub fn start_primary(&mut self, backup: &str, extra: &[&str]) -> &mut Child {
        let mut args: Vec<OsString> = vec!["primary".into(), "--backup".into(), backup.into()];
        args.extend(self.vm_args(Vm::Primary, &self.key()));
        args.extend(extra.iter().map(OsString::from));
        self.start("primary", &args)
    }

    /// `ftvm switch` with its status in `DIR/switch.status` and `extra`
    /// options; the address VMs attach to (`--net switch:ADDR`).
    pub fn start_switch(&mut self, extra: &[&str]) -> String {
        let mut args: Vec<OsString> = vec!["switch".into(), "--addr-file".into()];
        args.push(self.path("switch.addr").into());
        args.push("--status-file".into());
        args.push(self.path("switch.status").into());
        args.push("--key-file".into());
        args.push(self.key().into());
        args.extend(extra.iter().map(OsString::from));
        self.start("switch", &args);
        self.listening("switch")
    }

    /// The address the process `name` writes to `DIR/NAME.addr` once it
    /// listens.
    fn listening(&mut self, name: &str) -> String {
        let path = self.path(&format!("{name}.addr"));
        let addr = poll(LISTEN_LIMIT, || {
            std::fs::read_to_string(&path)
                .ok()
                .filter(|a| a.ends_with('\n'))
        });
        match addr {
            Some(addr) => addr.trim().to_string(),
            None => panic!(
                "the {name} did not listen within {LISTEN_LIMIT:?}\n{}",
                self.diag()
            ),
        }
    }

    // -----------------------------------------------------------------
    // Processes

    /// The process `name` this pair started.
    pub fn child(&mut self, name: &str) -> &mut Child {
        match self.children.iter().position(|(n, _)| n == name) {
            Some(i) => &mut self.children[i].1,
            None => panic!("no process {name} was started"),
        }
    }

    /// How the process `name` this pair started ended, if it has.
    pub fn exit_status(&mut self, name: &str) -> Option<ExitStatus> {
        self.child(name).try_wait().expect("waiting for a child")
    }

    /// Wait at most `limit` for the process `name` to end; how it ended,
    /// or `None` if it still runs.
    pub fn wait_exit(&mut self, name: &str, limit: Duration) -> Option<ExitStatus> {
        use wait_timeout::ChildExt;
        self.child(name)
            .wait_timeout(limit)
            .expect("waiting for a child")
    }

    /// Whether the process `vm`'s status file names runs.
    pub fn running(&self, vm: Vm) -> bool {
        self.raw_status(&format!("{vm}.status"))
            .is_some_and(|line| process_alive(line.pid))
    }

    /// The pid `vm`'s status file names; the test fails without one.
    pub fn pid(&self, vm: Vm) -> u32 {
        match self.raw_status(&format!("{vm}.status")) {
            Some(line) => line.pid,
            None => panic!("no status line for the {vm}\n{}", self.diag()),
        }
    }

    // -----------------------------------------------------------------
    // Status

    fn raw_status(&self, file: &str) -> Option<StatusLine> {
        let line: StatusLine = StatusFile::read(&self.path(file))?;
        self.remember(line.pid);
        Some(line)
    }

    fn remember(&self, pid: u32) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.contains(&pid) {
            seen.push(pid);
        }
    }

    /// `vm`'s status line, as `ftvm status` would show it: `dead`, with
    /// the state it was in, if its process is gone without a final word.
    pub fn status(&self, vm: Vm) -> Option<StatusLine> {
        let line = self.raw_status(&format!("{vm}.status"))?;
        Some(if line.state.is_final() || process_alive(line.pid) {
            line
        } else {
            line.dead()
        })
    }

    /// `vm`'s state (`None`: no status line yet).
    pub fn state(&self, vm: Vm) -> Option<VmState> {
        self.status(vm).map(|line| line.state)
    }

    /// `vm`'s status line with the time it was written (the file's
    /// modification time; a running VM rewrites it every 200 ms).
    pub fn status_written(&self, vm: Vm) -> Option<(StatusLine, SystemTime)> {
        let path = self.path(&format!("{vm}.status"));
        let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        Some((self.status(vm)?, written))
    }

    /// The switch's status line (`DIR/switch.status`).
    pub fn switch_status(&self) -> Option<SwitchStatus> {
        let line: SwitchStatus = StatusFile::read(&self.path("switch.status"))?;
        self.remember(line.pid);
        Some(line)
    }

    /// `ftvm status --json` for this directory.
    pub fn ftvm_status(&self) -> PairStatus {
        let run = self.ftvm_command(&["status", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&run.stdout)
            .unwrap_or_else(|e| panic!("ftvm status --json: {e}: {}", run.stdout_text()));
        let vms: Vec<StatusLine> = serde_json::from_value(json["vms"].clone())
            .unwrap_or_else(|e| panic!("ftvm status --json: vms: {e}: {json}"));
        let switch: Option<SwitchStatus> = serde_json::from_value(json["switch"].clone())
            .unwrap_or_else(|e| panic!("ftvm status --json: switch: {e}: {json}"));
        PairStatus { vms, switch }
    }

    /// `ftvm status` for this directory as people read it, each line
    /// parsed back: the VMs', then the switch's (if it runs).
    pub fn ftvm_status_text(&self) -> PairStatus {
        let run = self.ftvm_command(&["status"]);
        let text = run.stdout_text();
        let mut status = PairStatus {
            vms: Vec::new(),
            switch: None,
        };
        for line in text.lines() {
            if line.starts_with("switch ") {
                status.switch = Some(
                    line.parse()
                        .unwrap_or_else(|e| panic!("ftvm status: {e}: {line:?}")),
                );
            } else {
                status.vms.push(
                    line.parse()
                        .unwrap_or_else(|e| panic!("ftvm status: {e}: {line:?}")),
                );
            }
        }
        status
    }

    /// `ftvm ARGS --state-dir DIR`, which must succeed.
    fn ftvm_command(&self, args: &[&str]) -> super::Finished {
        let mut cmd = ftvm_with_guest();
        cmd.args(args).arg("--state-dir").arg(&self.dir);
        let run = run_limited(cmd, COMMAND_LIMIT);
        assert_eq!(
            run.code,
            Some(0),
            "ftvm {} failed: {}{}\n{}",
            args.join(" "),
            run.stdout_text(),
            run.stderr,
            self.diag()
        );
        run
    }

    /// `ftvm stop` for this directory, which must succeed.
    pub fn stop(&self) {
        self.ftvm_command(&["stop"]);
    }

    // -----------------------------------------------------------------
    // Waiting

    /// Wait until `done` holds; after `limit`, fail the test saying `what`
    /// did not happen, with the diagnosis.
    pub fn wait_until(&self, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
        if !super::wait_until(limit, &mut done) {
            panic!("{what}: not within {limit:?}\n{}", self.diag());
        }
    }

    /// Wait until the pair is whole as any epoch of `epochs` (after
    /// `limit`, fail saying `what` did not happen); its primary and backup.
    pub fn wait_protected(
        &self,
        epochs: std::ops::RangeInclusive<u64>,
        what: &str,
        limit: Duration,
    ) -> (StatusLine, StatusLine) {
        let mut found = None;
        self.wait_until(limit, what, || {
            let status = self.ftvm_status();
            found = epochs.clone().find_map(|epoch| status.protected(epoch));
            found.is_some()
        });
        found.expect("found above")
    }

    /// Wait until `vm`'s status line satisfies `done`, and return it; after
    /// `limit`, fail saying `what` did not happen.
    pub fn wait_status(
        &self,
        vm: Vm,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&StatusLine) -> bool,
    ) -> StatusLine {
        let line = poll(limit, || self.status(vm).filter(|line| done(line)));
        line.unwrap_or_else(|| {
            panic!(
                "{what}: not within {limit:?} (the {vm}'s status: {:?})\n{}",
                self.status(vm).map(|l| l.to_string()),
                self.diag()
            )
        })
    }

    /// Wait until `vm` is in `state`.
    pub fn wait_state(&self, vm: Vm, state: VmState, limit: Duration) -> StatusLine {
        self.wait_status(vm, limit, &format!("the {vm} {state}"), |line| {
            line.state == state
        })
    }

    /// Wait until `ftvm status --json` satisfies `done`, and return it;
    /// after `limit`, fail saying `what` did not happen.
    pub fn wait_ftvm_status(
        &self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&PairStatus) -> bool,
    ) -> PairStatus {
        let mut last = None;
        let status = poll(limit, || {
            let status = self.ftvm_status();
            let ok = done(&status);
            last = Some(status.clone());
            ok.then_some(status)
        });
        status.unwrap_or_else(|| {
            panic!(
                "{what}: not within {limit:?}; ftvm status said last: {last:?}\n{}",
                self.diag()
            )
        })
    }

    // -----------------------------------------------------------------
    // The console and the diagnosis

    /// The pair's console file.
    pub fn console(&self) -> Vec<u8> {
        std::fs::read(self.path("console")).unwrap_or_default()
    }

    /// Everything worth seeing when a test fails: how the pair was started,
    /// the status lines, the tails of the logs and of the console.
    pub fn diag(&self) -> String {
        let mut out = format!("--- state directory {}\n", self.dir.display());
        for command in &self.commands {
            out += &format!("started: {command}\n");
        }
        let names: Vec<String> = ["primary", "backup", "switch"]
            .into_iter()
            .map(String::from)
            .chain(self.children.iter().map(|(name, _)| name.clone()))
            .fold(Vec::new(), |mut names, name| {
                if !names.contains(&name) {
                    names.push(name);
                }
                names
            });
        for name in &names {
            let path = self.path(&format!("{name}.status"));
            if let Ok(line) = std::fs::read_to_string(&path) {
                let pid = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("pid="))
                    .and_then(|p| p.parse().ok());
                let running = match pid {
                    Some(pid) if process_alive(pid) => "running",
                    Some(_) => "gone",
                    None => "no pid",
                };
                out += &format!("{name}.status ({running}): {}\n", line.trim_end());
            }
        }
        for name in &names {
            let Ok(log) = std::fs::read_to_string(self.path(&format!("{name}.log"))) else {
                continue;
            };
            let lines: Vec<&str> = log.lines().collect();
            out += &format!("--- {name}.log (last 30 lines)\n");
            for line in &lines[lines.len().saturating_sub(30)..] {
                out += line;
                out.push('\n');
            }
        }
        let console = self.console();
        let tail = &console[console.len().saturating_sub(400)..];
        out += &format!(
            "--- console ({} bytes), tail:\n{}\n",
            console.len(),
            String::from_utf8_lossy(tail).escape_debug()
        );
        out
    }

    /// Whether `pid` is a process of this pair (its arguments name the
    /// state directory), not a stranger that reused the pid.
    fn ours(&self, pid: u32) -> bool {
        let dir = self.dir.to_string_lossy();
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&*dir))
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // The agent first, or it would start a VM for each one killed.
        if let Some(pid) = std::fs::read_to_string(self.path("agent.pid"))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
        {
            if process_alive(pid) && self.ours(pid) {
                super::signal(pid, libc::SIGKILL);
            }
        }
        let files = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".status") && name != "switch.status");
        for file in files.collect::<Vec<_>>() {
            let _ = self.raw_status(&file);
        }
        let _ = self.switch_status();
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let strays: Vec<u32> = seen
            .into_iter()
            .filter(|&pid| process_alive(pid) && self.ours(pid))
            .collect();
        for &pid in &strays {
            // A frozen (SIGSTOP) process dies of SIGKILL all the same; the
            // SIGCONT lets it go at once.
            super::signal(pid, libc::SIGCONT);
            super::signal(pid, libc::SIGKILL);
        }
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Not our children, so not ours to reap: wait until init has, so
        // that the next test finds their ports free.
        poll(Duration::from_secs(10), || {
            strays.iter().all(|&pid| !process_alive(pid)).then_some(())
        });
        if std::thread::panicking() {
            eprintln!("kept {} for a post-mortem", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Write a key file at `path`: `seed`, then 32 bytes in hex (the seed
/// makes two keys differ).
pub fn write_key(path: &Path, seed: &str) {
    let key: String = (0..32)
        .map(|i| format!("{:02x}", (i * 37 + seed.len() * 11) % 256))
        .collect();
    std::fs::write(path, format!("{seed}{key}\n")).expect("writing a key file");
}
