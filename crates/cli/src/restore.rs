//! Restoring redundancy on one host: `ftvm protect` and `ftvm agent`.
//!
//! When a VM of a pair dies, the survivor runs alone (`live`). To protect
//! it again, a new backup is started on this host (`ftvm backup`, named
//! `vm3`, `vm4`... in the state directory, with the options `ftvm up` gave
//! the first one, kept in `plan.json`), and the survivor is asked through
//! its control socket to clone itself into it, as the next epoch of the
//! test-and-set. `ftvm protect` does that once; `ftvm agent`, which `ftvm
//! up` starts, does it whenever the pair is down to one VM, retrying with
//! a growing pause when a clone fails. The agent ends with the pair.
//!
//! Once the new backup has caught up, the status files of the VMs that
//! died are moved to `gone/`, so `ftvm status` shows the pair as it is.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ftvm_host::control::{Request, ask};
use ftvm_host::process::{kill, process_alive, terminate};
use ftvm_host::status::VmState;
use serde::{Deserialize, Serialize};

use crate::pair::{
    Vm, listening_addr, read_named, read_vms, spawn, spawn_child, start_order, wait_for,
};

/// The file in the state directory that says how to start a backup.
pub const PLAN: &str = "plan.json";
/// Where the status files of VMs that were replaced go.
pub const GONE: &str = "gone";
/// The agent's pid, for `ftvm stop`.
const AGENT_PID: &str = "agent.pid";
/// While this file exists the agent restores nothing (`ftvm unprotect`,
/// `ftvm up --no-backup`); `ftvm protect` removes it.
const UNPROTECTED: &str = "unprotected";

/// How long a clone may take, from asking the survivor to the new backup
/// having caught up.
const CLONE_LIMIT: Duration = Duration::from_secs(120);

/// What `ftvm up` gave the VMs of the pair, to start the next backup alike.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Options every VM takes (key, arbiter, console, timeouts, network).
    pub common: Vec<String>,
    /// Options a backup takes besides (engine, shared disk).
    pub backup: Vec<String>,
    /// Why redundancy cannot be restored for this pair, if it cannot.
    pub not_restorable: Option<String>,
    /// With private disks: their size. Each backup has its own copy,
    /// [`own_disk`].
    pub private_disk: Option<u64>,
}

/// The private disk of the VM `name` (not the first primary's, which is
/// the user's image).
pub fn own_disk(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}-disk.img"))
}

impl Plan {
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).context("encoding the plan")?;
        std::fs::write(dir.join(PLAN), text)
            .with_context(|| format!("writing {}", dir.join(PLAN).display()))
    }

    pub fn read(dir: &Path) -> Result<Plan> {
        let path = dir.join(PLAN);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (the pair was not started with `ftvm up`)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// The options of the VM named `name`: its files in `dir`, then the
    /// common ones.
    pub fn vm_args(&self, dir: &Path, name: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--name".into(),
            name.into(),
            "--status-file".into(),
            dir.join(format!("{name}.status")).into(),
            "--console-socket".into(),
            dir.join(format!("{name}.console")).into(),
            "--control-socket".into(),
            dir.join(format!("{name}.control")).into(),
            // Metrics on a free loopback port, named in the status line.
            "--metrics".into(),
            "127.0.0.1:0".into(),
            "--history-file".into(),
            dir.join(format!("{name}.history")).into(),
        ];
        args.extend(self.common.iter().map(OsString::from));
        args
    }

    /// `ftvm backup` for the VM `name` of the pairing `epoch`.
    pub fn backup_args(&self, dir: &Path, name: &str, epoch: u64) -> Result<Vec<OsString>> {
        let mut args: Vec<OsString> = vec![
            "backup".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--addr-file".into(),
            dir.join(format!("{name}.addr")).into(),
            "--epoch".into(),
            epoch.to_string().into(),
        ];
        args.extend(self.vm_args(dir, name));
        args.extend(self.backup.iter().map(OsString::from));
        if self.private_disk.is_some() {
            args.extend(["--disk".into(), own_disk(dir, name).into()]);
        }
        Ok(args)
    }
}

#[derive(Args)]
pub struct ProtectArgs {
    /// The pair's directory, as given to `ftvm up`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: std::path::PathBuf,
}

/// `ftvm protect`: give the VM that runs alone a new backup, now.
pub fn protect(args: &ProtectArgs) -> Result<ExitCode> {
    let dir = &args.state_dir;
    let restored = restore(dir, &mut Vec::new())?;
    set_unprotected(dir, false)?;
    println!(
        "ftvm: {} is protected again: {} is its backup (epoch {}); the guest stood still for {:.2} ms",
        restored.survivor, restored.backup, restored.epoch, restored.pause_ms
    );
    Ok(ExitCode::SUCCESS)
}

/// A restore that worked.
pub struct Restored {
    pub survivor: String,
    pub backup: String,
    pub epoch: u64,
    pub pause_ms: f64,
}

/// Start a new backup and clone the VM that runs alone into it; wait
/// until it has caught up. The new backup is a child of this process,
/// put in `children` (to reap it when it ends).
pub fn restore(dir: &Path, children: &mut Vec<std::process::Child>) -> Result<Restored> {
    let plan = Plan::read(dir)?;
    if let Some(why) = &plan.not_restorable {
        bail!("redundancy cannot be restored for this pair: {why}");
    }
    let vms = read_vms(dir);
    let alive: Vec<&Vm> = vms.iter().filter(|vm| vm.running()).collect();
    let survivor = running_alone(&alive).map_err(|why| anyhow::anyhow!("{why}"))?;
    let epoch = survivor.line.epoch.unwrap_or(1) + 1;
    let name = next_name(dir, &vms);
    if let Some(len) = plan.private_disk {
        create_own_disk(dir, &name, len)?;
    }
    let child = spawn_child(dir, &name, &plan.backup_args(dir, &name, epoch)?)?;
    let pid = child.id();
    children.push(child);
    let result = clone_into(dir, survivor, &name, pid, epoch);
    if result.is_err() {
        // A clone that failed while the survivor runs is ended. One whose
        // survivor died is left alone: if it had caught up it is the VM's
        // only copy and takes over; if not it halts by itself.
        let survivor_runs = read_named(dir, &survivor.name).is_some_and(|vm| vm.running());
        if survivor_runs && process_alive(pid) {
            terminate(pid);
            let _ = std::fs::remove_file(own_disk(dir, &name));
        }
    }
    let pause_ms = result?;
    retire_the_dead(dir);
    Ok(Restored {
        survivor: survivor.name.clone(),
        backup: name,
        epoch,
        pause_ms,
    })
}

/// The VM that runs the guest alone, among the VMs whose processes run:
/// the one that is `live`, while no clone is under way. Others may run
/// beside it without protecting it: a frozen old primary or backup
/// (SIGSTOP) keeps its process and its last status until it wakes, finds
/// its peer gone live and halts, and a VM that went live won the
/// test-and-set of its epoch, so no such VM can ever run the guest again.
/// Why there is none otherwise.
fn running_alone<'a>(alive: &[&'a Vm]) -> Result<&'a Vm, String> {
    let live: Vec<&Vm> = alive
        .iter()
        .copied()
        .filter(|vm| vm.line.state == VmState::Live)
        .collect();
    if let Some(cloning) = alive.iter().find(|vm| vm.line.state == VmState::Cloning) {
        return Err(format!("{} is cloning itself already", cloning.name));
    }
    if let Some(waiting) = alive.iter().find(|vm| vm.line.state == VmState::Waiting) {
        return Err(format!("{} waits for a clone already", waiting.name));
    }
    match (live.as_slice(), alive) {
        ([vm], _) => Ok(vm),
        ([], []) => Err("no VM of the pair runs".into()),
        ([], [vm]) => Err(format!(
            "{} is {}: only a VM that runs alone can be given a backup",
            vm.name, vm.line.state
        )),
        ([], _) => Err("the pair has two VMs already".into()),
        (_, _) => Err(format!(
            "{} VMs say they run the guest alone: none is given a backup",
            live.len()
        )),
    }
}

fn clone_into(dir: &Path, survivor: &Vm, name: &str, pid: u32, epoch: u64) -> Result<f64> {
    let addr = listening_addr(dir, name, pid)?;
    let control = dir.join(format!("{}.control", survivor.name));
    let request = Request::Clone { addr, epoch };
    match ask(&control, &request)? {
        Ok(_) => {}
        Err(why) => bail!("{} refused to clone: {why}", survivor.name),
    }
    let started = Instant::now();
    let read = |name: &str| read_named(dir, name);
    // The snapshot's RAM sent so far, on a terminal (hidden elsewhere).
    let progress = crate::progress::bytes(0, &format!("cloning {} into {name}", survivor.name));
    let outcome = wait_for(CLONE_LIMIT, || {
        let (Some(old), Some(new)) = (read(&survivor.name), read(name)) else {
            return None;
        };
        if let Some(clone) = &old.line.clone {
            crate::progress::show_clone(
                &progress,
                &format!("{} into {name}", survivor.name),
                clone,
            );
        }
        if !old.alive || !new.alive {
            return Some(Err(format!(
                "{} is {}, {name} is {}",
                survivor.name,
                if old.alive { "alive" } else { "gone" },
                if new.alive { "alive" } else { "gone" }
            )));
        }
        let protected = old.line.state == VmState::Primary
            && old.line.epoch == Some(epoch)
            && new.line.state == VmState::Backup;
        if protected {
            return Some(Ok(old.line.clone_pause_ms.unwrap_or(0.0)));
        }
        // Given up (the VM runs alone again after trying).
        let gave_up = old.line.state == VmState::Live
            && old.line.clone.is_none()
            && started.elapsed() > Duration::from_secs(2);
        gave_up.then(|| Err(format!("{} gave the clone up", survivor.name)))
    })
    .with_context(|| format!("the clone of {} into {name} did not finish", survivor.name));
    progress.finish_and_clear();
    outcome?.map_err(|why| {
        anyhow::anyhow!(
            "the clone of {} into {name} failed: {why}; see {}",
            survivor.name,
            dir.join(format!("{name}.log")).display()
        )
    })
}

/// The next free name for a VM: `vm3`, `vm4`...
fn next_name(dir: &Path, vms: &[Vm]) -> String {
    let mut taken: Vec<u64> = vms.iter().map(|vm| start_order(&vm.name).0).collect();
    if let Ok(gone) = std::fs::read_dir(dir.join(GONE)) {
        for entry in gone.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".status") {
                taken.push(start_order(stem).0);
            }
        }
    }
    let next = taken
        .into_iter()
        .filter(|&n| n != u64::MAX)
        .max()
        .unwrap_or(2)
        + 1;
    format!("vm{}", next.max(3))
}

/// Move the status files of VMs whose processes are gone to `gone/`, and
/// remove what they left ([`retire`]).
fn retire_the_dead(dir: &Path) {
    for vm in read_vms(dir).into_iter().filter(|vm| !vm.running()) {
        retire(dir, &vm.name);
    }
}

/// Move the status and history files of the dead VM `name` to `gone/` and remove the
/// sockets, address and notes it left (its log stays); on one host and on
/// a cluster's.
pub(crate) fn retire(dir: &Path, name: &str) {
    let gone = dir.join(GONE);
    if std::fs::create_dir_all(&gone).is_err() {
        return;
    }
    // Its story goes with it: `ftvm plot` reads `gone/` too.
    for file in [
        format!("{name}.status"),
        format!("{name}.history"),
        format!("{name}.history.old"),
    ] {
        let _ = std::fs::rename(dir.join(&file), gone.join(&file));
    }
    for left in ["control", "console", "addr", "mib", "boot"] {
        let _ = std::fs::remove_file(dir.join(format!("{name}.{left}")));
    }
    // A dead VM's own disk is of no use to anyone.
    let _ = std::fs::remove_file(own_disk(dir, name));
}

/// The private disk of a new backup, `len` bytes of zeroes (a sparse
/// file): the clone writes what is not.
pub(crate) fn create_own_disk(dir: &Path, name: &str, len: u64) -> Result<std::path::PathBuf> {
    let path = own_disk(dir, name);
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(len)
        .with_context(|| format!("sizing {}", path.display()))?;
    Ok(path)
}

#[derive(Args)]
pub struct AgentArgs {
    /// The pair's directory, as given to `ftvm up`; with `--cluster`, the
    /// directory of this host's VMs.
    #[arg(long, value_name = "DIR")]
    pub state_dir: std::path::PathBuf,

    #[command(flatten)]
    pub cluster: crate::cluster::ClusterAgentArgs,

    /// Serve the pair's status page (its VMs, and the timeline `ftvm plot`
    /// draws, redrawn live) at `http://HOST:PORT/` (port 0: any free port;
    /// the address goes in `DIR/agent.http`). `ftvm up` gives the agent a
    /// free loopback port.
    /// With `--cluster`: the page of the whole cluster, its metrics and
    /// Prometheus's service discovery (`/sd.json`) of every agent and VM.
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<std::net::SocketAddr>,
}

/// How long a VM must have run alone before the agent gives it a backup:
/// long enough that a VM that just took over has settled.
const ALONE_FOR: Duration = Duration::from_millis(200);
/// The pause after a failed restore, doubled each time up to the most.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MOST: Duration = Duration::from_secs(30);

/// `ftvm agent`: keep the pair in `DIR` protected, until it ends.
pub fn agent(args: &AgentArgs) -> Result<ExitCode> {
    let dir = &args.state_dir;
    if args.cluster.cluster.is_some() {
        return crate::cluster::agent(dir, &args.cluster, args.http);
    }
    let stop = ftvm_host::stop_flag()?;
    let counters = crate::page::AgentCounters::default();
    if let Some(addr) = args.http {
        let addr = crate::page::serve(addr, dir, counters.clone())?;
        let file = crate::page::address_file(dir);
        ftvm_host::status::write_atomically(&file, format!("http://{addr}/\n").as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
    }
    let mut alone_since: Option<Instant> = None;
    let mut pause = RETRY_FIRST;
    let mut next_try = Instant::now();
    let mut ever_ran = false;
    let mut children = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        // Reap the backups this agent started that have ended.
        children
            .retain_mut(|child: &mut std::process::Child| !matches!(child.try_wait(), Ok(Some(_))));
        let vms = read_vms(dir);
        let alive: Vec<&Vm> = vms.iter().filter(|vm| vm.running()).collect();
        ever_ran |= !alive.is_empty();
        if alive.is_empty() && ever_ran {
            tracing::info!("the pair has ended: the agent ends");
            return Ok(ExitCode::SUCCESS);
        }
        if running_alone(&alive).is_err() || dir.join(UNPROTECTED).exists() {
            alone_since = None;
            continue;
        }
        let since = *alone_since.get_or_insert_with(Instant::now);
        if since.elapsed() < ALONE_FOR || Instant::now() < next_try {
            continue;
        }
        let started = Instant::now();
        let result = restore(dir, &mut children);
        let took = started.elapsed();
        counters.restore(result.as_ref().ok().map(|r| r.pause_ms), took);
        match result {
            Ok(restored) => {
                let seconds = took.as_secs_f64();
                tracing::info!(
                    target: "ftvm::state",
                    vm = %restored.survivor,
                    backup = %restored.backup,
                    epoch = restored.epoch,
                    seconds,
                    pause_ms = restored.pause_ms,
                    "agent: {} protected again by {} (epoch {}) in {seconds:.2} s; pause {:.2} ms",
                    restored.survivor,
                    restored.backup,
                    restored.epoch,
                    restored.pause_ms
                );
                pause = RETRY_FIRST;
            }
            Err(e) => {
                tracing::warn!("agent: restoring redundancy failed: {e:#}; again in {pause:?}");
                next_try = Instant::now() + pause;
                pause = (pause * 2).min(RETRY_MOST);
            }
        }
        alone_since = None;
    }
    Ok(ExitCode::SUCCESS)
}

/// Start the pair's agent (`ftvm up`), with its status page on a free
/// loopback port; its pid, and the page's address once it serves it.
pub fn start_agent(dir: &Path) -> Result<(u32, Option<String>)> {
    let args: Vec<OsString> = vec![
        "agent".into(),
        "--state-dir".into(),
        dir.into(),
        "--http".into(),
        "127.0.0.1:0".into(),
    ];
    let page = crate::page::address_file(dir);
    let _ = std::fs::remove_file(&page);
    let pid = spawn(dir, "agent", &args)?;
    std::fs::write(dir.join(AGENT_PID), format!("{pid}\n"))
        .with_context(|| format!("writing {}", dir.join(AGENT_PID).display()))?;
    // The page is a convenience: a slow start leaves it unnamed here.
    let url = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&page)
            .ok()
            .filter(|s| s.ends_with('\n'))
    })
    .ok()
    .map(|s| s.trim().to_string());
    Ok((pid, url))
}

/// End the pair's agent, if it runs.
pub fn stop_agent(dir: &Path) {
    let Some(pid) = std::fs::read_to_string(dir.join(AGENT_PID))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
    else {
        return;
    };
    if process_alive(pid) {
        terminate(pid);
        let _ = wait_for(Duration::from_secs(5), || {
            (!process_alive(pid)).then_some(())
        });
    }
    let _ = std::fs::remove_file(dir.join(AGENT_PID));
}

/// Mark the pair in `dir` as not to be protected by its agent (or no
/// longer).
pub fn set_unprotected(dir: &Path, unprotected: bool) -> Result<()> {
    let path = dir.join(UNPROTECTED);
    if unprotected {
        std::fs::write(
            &path,
            "ftvm unprotect: the agent restores nothing until `ftvm protect`\n",
        )
        .with_context(|| format!("writing {}", path.display()))
    } else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

/// The running VMs of the pair in `dir`: the one that runs the guest, and
/// its backup if it has one.
fn running_pair(dir: &Path) -> Result<(Vm, Option<Vm>)> {
    let mut guest = None;
    let mut backup = None;
    for vm in read_vms(dir).into_iter().filter(Vm::running) {
        if vm.line.state.runs_the_guest() {
            guest = Some(vm);
        } else if vm.line.state == VmState::Backup {
            backup = Some(vm);
        }
    }
    let guest = guest.with_context(|| format!("no VM runs the guest in {}", dir.display()))?;
    Ok((guest, backup))
}

/// `ftvm unprotect`: end the backup; the VM runs on alone, and the agent
/// leaves it so until `ftvm protect`.
pub fn unprotect(args: &ProtectArgs) -> Result<ExitCode> {
    let dir = &args.state_dir;
    set_unprotected(dir, true)?;
    let (guest, backup) = running_pair(dir)?;
    let Some(backup) = backup else {
        println!("ftvm: {} runs alone already", guest.name);
        return Ok(ExitCode::SUCCESS);
    };
    // A backup asked to stop halts without going live; its primary sees
    // the channel close and, having won the test-and-set, runs on alone.
    terminate(backup.line.pid);
    let read = || read_named(dir, &guest.name);
    wait_for(CLONE_LIMIT, || {
        read().filter(|vm| !vm.alive || vm.line.state == VmState::Live)
    })
    .with_context(|| format!("{} did not go on alone", guest.name))?;
    retire_the_dead(dir);
    println!(
        "ftvm: {} runs alone, unprotected ({} ended); `ftvm protect` gives it a backup again",
        guest.name, backup.name
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct TestArgs {
    /// The pair's directory, as given to `ftvm up`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: std::path::PathBuf,

    /// How long to wait for each step.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub limit: u64,
}

/// `ftvm test-failover`: kill -9 the VM that runs the guest, and show the
/// backup taking over and (with the agent) redundancy coming back.
pub fn test_failover(args: &TestArgs) -> Result<ExitCode> {
    kill_and_watch(args, true)
}

/// `ftvm test-restart-backup`: kill -9 the backup, and show the VM going
/// on alone and (with the agent) redundancy coming back.
pub fn test_restart_backup(args: &TestArgs) -> Result<ExitCode> {
    kill_and_watch(args, false)
}

fn kill_and_watch(args: &TestArgs, primary: bool) -> Result<ExitCode> {
    let dir = &args.state_dir;
    let limit = Duration::from_secs(args.limit);
    let (guest, backup) = running_pair(dir)?;
    let Some(backup) = backup else {
        bail!(
            "{} runs alone: there is nothing to fail over to",
            guest.name
        );
    };
    let epoch = guest.line.epoch.unwrap_or(1);
    let (victim, survivor) = if primary {
        (&guest, &backup)
    } else {
        (&backup, &guest)
    };
    let started = Instant::now();
    let ms = || started.elapsed().as_secs_f64() * 1e3;
    if !kill(victim.line.pid) {
        bail!("kill -9 {} failed", victim.line.pid);
    }
    println!(
        "{:>9.1} ms  killed {} ({}, pid {}) with SIGKILL",
        0.0, victim.name, victim.line.state, victim.line.pid
    );
    let read = |name: &str| read_named(dir, name);
    let alone = wait_for(limit, || {
        read(&survivor.name)
            .filter(|vm| !vm.alive || vm.line.state.is_final() || vm.line.state == VmState::Live)
    })
    .with_context(|| format!("{} did not go on alone", survivor.name))?;
    if alone.line.state != VmState::Live || !alone.alive {
        bail!("{} did not go on: {}", survivor.name, alone.describe());
    }
    println!(
        "{:>9.1} ms  {} runs the guest alone ({})",
        ms(),
        survivor.name,
        if primary {
            "took over"
        } else {
            "won the test-and-set"
        }
    );
    let agent = std::fs::read_to_string(dir.join(AGENT_PID))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(process_alive);
    if !agent || dir.join(UNPROTECTED).exists() {
        println!("            no agent restores redundancy here: `ftvm protect` does it by hand");
        return Ok(ExitCode::SUCCESS);
    }
    let whole = wait_for(limit, || {
        let vms = read_vms(dir);
        let alive: Vec<&Vm> = vms.iter().filter(|vm| vm.running()).collect();
        let of_next = |state| {
            alive
                .iter()
                .find(|vm| vm.line.state == state && vm.line.epoch > Some(epoch))
                .map(|vm| vm.name.clone())
        };
        match (of_next(VmState::Primary), of_next(VmState::Backup)) {
            (Some(p), Some(b)) if alive.len() == 2 => Some((p, b)),
            _ => None,
        }
    })
    .context("redundancy did not come back")?;
    println!(
        "{:>9.1} ms  protected again: {} is the primary, {} its new backup",
        ms(),
        whole.0,
        whole.1
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WhichVm {
    Primary,
    Backup,
}

#[derive(Args)]
pub struct MigrateArgs {
    /// The pair's directory, as given to `ftvm up`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: std::path::PathBuf,

    /// Which VM moves: the one that runs the guest, or its backup.
    #[arg(long, value_name = "primary|backup")]
    pub vm: WhichVm,

    /// Where to: only this host (across hosts, `ftvm cluster migrate`).
    #[arg(long, value_name = "HOST")]
    pub to: Option<String>,
}

/// `ftvm migrate`: move either VM of a protected pair to a new process
/// on this host while the pair keeps running.
///
/// The primary: it hands the VM over to its backup (it stops executing,
/// waits until the backup holds everything and every output is released,
/// and says so; the backup takes over at once and this VM halts), then a
/// new backup is cloned from the VM's new home. The backup: it ends, and
/// a new backup is cloned at once.
pub fn migrate(args: &MigrateArgs) -> Result<ExitCode> {
    let dir = &args.state_dir;
    if let Some(to) = args.to.as_deref() {
        let here = ["localhost", "127.0.0.1", "this-host"];
        if !here.contains(&to) {
            bail!(
                "this pair runs on this host only: to move VMs between hosts, run them on a \
                 cluster (`ftvm agent --cluster` on each host, `ftvm cluster migrate --to {to}`)"
            );
        }
    }
    let (guest, backup) = running_pair(dir)?;
    let Some(backup) = backup.filter(|_| guest.line.state == VmState::Primary) else {
        bail!(
            "{} has no backup that protects it: `ftvm protect` first",
            guest.name
        );
    };
    // The agent must not restore meanwhile; this command does.
    set_unprotected(dir, true)?;
    let result = match args.vm {
        WhichVm::Primary => migrate_primary(dir, &guest, &backup),
        WhichVm::Backup => migrate_backup(dir, &guest, &backup),
    };
    set_unprotected(dir, false)?;
    result?;
    Ok(ExitCode::SUCCESS)
}

fn migrate_primary(dir: &Path, primary: &Vm, backup: &Vm) -> Result<()> {
    let started = Instant::now();
    let control = dir.join(format!("{}.control", primary.name));
    if let Err(why) = ask(&control, &Request::HandOver)? {
        bail!("{} refused to hand over: {why}", primary.name);
    }
    let read = |name: &str| read_named(dir, name);
    wait_for(CLONE_LIMIT, || {
        read(&backup.name).filter(|vm| !vm.alive || vm.line.state != VmState::Backup)
    })
    .with_context(|| format!("{} did not take over", backup.name))?;
    let live = read(&backup.name).filter(|vm| vm.alive && vm.line.state == VmState::Live);
    if live.is_none() {
        bail!(
            "{} did not take over; see {}",
            backup.name,
            dir.join(format!("{}.log", backup.name)).display()
        );
    }
    let taken_over = started.elapsed();
    println!(
        "ftvm: {} handed the VM over to {} in {:.1} ms",
        primary.name,
        backup.name,
        taken_over.as_secs_f64() * 1e3
    );
    wait_for(CLONE_LIMIT, || {
        read(&primary.name).filter(|vm| !vm.alive || vm.line.state.is_final())
    })
    .with_context(|| format!("{} did not stop", primary.name))?;
    let restored = restore(dir, &mut Vec::new())?;
    println!(
        "ftvm: {} is protected again by {} (epoch {}), {:.1} ms after the hand-over began",
        restored.survivor,
        restored.backup,
        restored.epoch,
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn migrate_backup(dir: &Path, primary: &Vm, backup: &Vm) -> Result<()> {
    let started = Instant::now();
    terminate(backup.line.pid);
    let read = |name: &str| read_named(dir, name);
    wait_for(CLONE_LIMIT, || {
        read(&primary.name).filter(|vm| !vm.alive || vm.line.state == VmState::Live)
    })
    .with_context(|| format!("{} did not go on alone", primary.name))?;
    let restored = restore(dir, &mut Vec::new())?;
    println!(
        "ftvm: {}'s backup moved from {} to {} (epoch {}) in {:.1} ms; it ran unprotected \
         meanwhile; the guest stood still {:.2} ms for the clone",
        restored.survivor,
        backup.name,
        restored.backup,
        restored.epoch,
        started.elapsed().as_secs_f64() * 1e3,
        restored.pause_ms
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftvm_host::status::StatusLine;

    fn vm(name: &str, state: VmState) -> Vm {
        Vm {
            name: name.into(),
            line: StatusLine::new(state, 1),
            alive: true,
        }
    }

    fn alone(vms: &[Vm]) -> Result<String, String> {
        let alive: Vec<&Vm> = vms.iter().collect();
        running_alone(&alive).map(|vm| vm.name.clone())
    }

    #[test]
    fn a_live_vm_beside_a_frozen_old_primary_is_alone() {
        use VmState::*;
        assert_eq!(alone(&[vm("backup", Live)]), Ok("backup".into()));
        // The old primary frozen by SIGSTOP: its file still says primary.
        assert_eq!(
            alone(&[vm("primary", Primary), vm("backup", Live)]),
            Ok("backup".into())
        );
        assert_eq!(
            alone(&[vm("primary", Live), vm("backup", Backup)]),
            Ok("primary".into())
        );
        assert!(alone(&[vm("primary", Primary), vm("backup", Backup)]).is_err());
        assert!(alone(&[vm("backup", Cloning), vm("vm3", Waiting)]).is_err());
        assert!(alone(&[vm("backup", Live), vm("vm3", Waiting)]).is_err());
        assert!(alone(&[vm("primary", Live), vm("backup", Live)]).is_err());
        assert!(alone(&[vm("primary", Primary)]).is_err());
        assert!(alone(&[]).is_err());
    }
}
