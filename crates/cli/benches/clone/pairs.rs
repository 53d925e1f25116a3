//! The ftvm side of tables 1 and 2: pairs of the tick guest, their status
//! files read directly (every [`POLL`]), one `ftvm protect` after a
//! failover, and the time to redundancy with the agent.

use std::path::Path;
use std::time::{Duration, Instant};

use ftvm_host::status::{CloneStage, StatusFile};

use crate::support::pair::{Pair, StatusLine, VmState};
use crate::support::{process_alive, signal};
use crate::{
    AGENT_MIB, BOOT_LIMIT, DETECTION_AGENT, DETECTION_PROTECT, POLL, STEP_LIMIT, TICK_LIMIT,
    TICKS_BEFORE, append, last_tick, ms,
};

/// Every VM of the pair in `dir` (its status files, read directly, for
/// polling every few ms), with whether its process runs.
pub fn vms(dir: &Path) -> Vec<(StatusLine, bool)> {
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
pub fn alive_named(dir: &Path, name: &str) -> Option<StatusLine> {
    vms(dir)
        .into_iter()
        .find(|(line, alive)| *alive && line.name.as_deref() == Some(name))
        .map(|(line, _)| line)
}

/// A protected pair of `epoch`: exactly two VMs run, a primary and a
/// backup of that epoch; the primary's line.
pub fn protected(dir: &Path, epoch: u64) -> Option<StatusLine> {
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
pub fn poll_fast<T>(
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
pub struct CloneRun {
    pub pause_ms: f64,
    pub bytes: f64,
    /// From starting `ftvm protect` until a protected pair shows.
    pub protect_s: f64,
    /// From starting `ftvm protect` until the survivor's line first showed
    /// each stage of [`CloneStage::ALL`] (connecting: it is cloning).
    pub stages_s: [Option<f64>; 3],
    /// Until `ftvm protect` exited.
    pub exit_s: f64,
    /// Pairs that split by themselves before this one held.
    pub splits: u32,
}

pub fn ftvm_clone(memory_mib: u64, run: usize) -> CloneRun {
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
pub struct Restore {
    pub live_ms: f64,
    pub cloning_ms: Option<f64>,
    pub protected_ms: f64,
    pub pause_ms: f64,
    pub bytes: f64,
    /// Pairs that split by themselves before this one held.
    pub splits: u32,
}

pub fn time_to_redundancy(run: usize) -> Restore {
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
