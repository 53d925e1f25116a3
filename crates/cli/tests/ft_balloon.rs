//! The memory balloon of an FT pair, end to end (ARCHITECTURE.md, "The
//! memory balloon"): `ftvm set --balloon MIB` reaches the VM that runs the
//! guest, which logs the target as a control entry; the backup applies it
//! at the same instruction, so both status lines show the same balloon and
//! the backup stays in lockstep (its checkpoints keep matching) while the
//! guest's driver gives pages to the balloon and takes them back.
//!
//! - A pair of the default guest (which prints its `MemTotal` every
//!   second) with a balloon: a target of 32 MiB takes 32 MiB off the
//!   guest's memory on both VMs; after `kill -9` of the primary the VM
//!   that took over holds the same balloon, and so does the new backup the
//!   agent clones from it (the balloon is in the snapshot); a target of 0
//!   set on the new primary gives the memory back.
//! - Refusals: a target larger than RAM, a machine without a balloon, no
//!   pair: one clear error each, and nothing changed.
//!
//! What the VMs did is read from their status lines and the console,
//! never their logs.

mod support;

use std::time::Duration;

use ftvm_host::status::BalloonMib;
use support::pair::{COMMAND_LIMIT, Pair, Vm, VmState};
use support::ticks::{BOOT_LIMIT, FAILOVER_LIMIT, SLACK, STATUS_LIMIT, append};
use support::{Finished, poll, run_limited, serial, signal};

/// The guest's command: its total memory, every second.
const MEM_CMD: &str = "while true; do grep MemTotal /proc/meminfo; sleep 1; done";

/// Inflating or deflating 32 MiB, and the status lines saying so, under
/// load.
const BALLOON_LIMIT: Duration = Duration::from_secs(120);

/// A failover, the agent's clone and its catching up.
const RESTORE_LIMIT: Duration = Duration::from_secs(120);

fn mib(target: f64, actual: f64) -> Option<BalloonMib> {
    Some(BalloonMib { target, actual })
}

/// The last `MemTotal:  N kB` the console shows (complete lines only), in
/// kB.
fn memtotal_kb(console: &[u8]) -> Option<u64> {
    let end = console.iter().rposition(|&b| b == b'\n')?;
    String::from_utf8_lossy(&console[..end])
        .lines()
        .rev()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("MemTotal:")?;
            rest.trim().strip_suffix("kB")?.trim().parse().ok()
        })
}

/// `ftvm set --state-dir DIR ARGS`.
fn ftvm_set(pair: &Pair, args: &[&str]) -> Finished {
    let mut cmd = pair.ftvm();
    cmd.arg("set").arg("--state-dir").arg(pair.dir()).args(args);
    run_limited(cmd, COMMAND_LIMIT + BALLOON_LIMIT)
}

/// `ftvm set ARGS`, which must succeed; its stdout.
fn ftvm_set_ok(pair: &Pair, args: &[&str]) -> String {
    let run = ftvm_set(pair, args);
    assert_eq!(
        run.code,
        Some(0),
        "ftvm set {}: {}{}\n{}",
        args.join(" "),
        run.stdout_text(),
        run.stderr,
        pair.diag()
    );
    run.stdout_text()
}

/// Wait until the console's last `MemTotal` is `kb`.
fn wait_memtotal(pair: &Pair, kb: u64, what: &str) {
    pair.wait_until(BALLOON_LIMIT, &format!("{what}: MemTotal {kb} kB"), || {
        memtotal_kb(&pair.console()) == Some(kb)
    });
}

/// A backup that has replayed past `icount` and still replays: every
/// checkpoint up to there matched (a mismatch halts it, `diverged`).
fn wait_in_lockstep_past(pair: &Pair, icount: u64, what: &str) {
    let line = pair.wait_status(Vm::Backup, BALLOON_LIMIT, what, |line| {
        line.state != VmState::Backup || line.measures.is_some_and(|m| m.icount > icount)
    });
    assert_eq!(
        line.state,
        VmState::Backup,
        "{what}: {line}\n{}",
        pair.diag()
    );
    assert!(
        line.halt.is_none() && !line.suspected,
        "{what}: {line}\n{}",
        pair.diag()
    );
}

#[test]
fn a_balloon_set_on_the_primary_reaches_the_backup_and_survives_a_failover() {
    let _serial = serial();
    let mut pair = Pair::new("balloon");
    let mut args = vec!["--balloon".to_string(), "--append".into(), append(MEM_CMD)];
    args.extend(SLACK.iter().map(|s| s.to_string()));
    let (primary, _) = pair.up_restoring(&args);

    // Booted: the guest's memory, an empty balloon on both VMs.
    let before = poll(BOOT_LIMIT, || memtotal_kb(&pair.console()))
        .unwrap_or_else(|| panic!("the guest never printed MemTotal\n{}", pair.diag()));
    for vm in Vm::BOTH {
        pair.wait_status(vm, STATUS_LIMIT, "an empty balloon", |line| {
            line.balloon == mib(0.0, 0.0)
        });
    }

    // 32 MiB into the balloon, through the primary.
    let said = ftvm_set_ok(&pair, &["--balloon", "32", "--wait", "120"]);
    assert!(
        said.contains("primary: balloon target 32 MiB (was 0 MiB) at icount "),
        "{said}"
    );
    assert!(
        said.contains("primary (primary): balloon target 32 MiB, the guest holds 32 MiB"),
        "{said}"
    );
    let primary_line = pair
        .status(Vm::Primary)
        .unwrap_or_else(|| panic!("no primary\n{}", pair.diag()));
    assert_eq!(primary_line.balloon, mib(32.0, 32.0), "{primary_line}");
    pair.wait_status(Vm::Backup, BALLOON_LIMIT, "the backup's balloon", |line| {
        line.balloon == mib(32.0, 32.0)
    });
    // The guest has 32 MiB less; its driver takes them out of its total.
    wait_memtotal(&pair, before - 32 * 1024, "inflated");
    // A few more seconds of the guest, checked by the backup's
    // checkpoints (one a second).
    let now = pair
        .status(Vm::Primary)
        .and_then(|line| line.measures)
        .map_or(0, |m| m.icount);
    std::thread::sleep(Duration::from_secs(3));
    wait_in_lockstep_past(&pair, now, "the backup after the balloon");
    assert_eq!(
        pair.state(Vm::Primary),
        Some(VmState::Primary),
        "{}",
        pair.diag()
    );

    // The primary dies: the VM that takes over has the same balloon.
    signal(primary, libc::SIGKILL);
    let live = pair.wait_status(Vm::Backup, FAILOVER_LIMIT, "the take-over", |line| {
        line.took_over && line.state.runs_the_guest()
    });
    assert_eq!(live.balloon, mib(32.0, 32.0), "{live}");
    let console_at_kill = pair.console().len();
    pair.wait_until(FAILOVER_LIMIT, "MemTotal after the take-over", || {
        let console = pair.console();
        console.len() > console_at_kill && memtotal_kb(&console[console_at_kill..]).is_some()
    });
    assert_eq!(
        memtotal_kb(&pair.console()),
        Some(before - 32 * 1024),
        "{}",
        pair.diag()
    );

    // The agent clones it into a new backup: the balloon goes with the
    // snapshot, and the new pair shows it on both VMs.
    let mut whole = None;
    pair.wait_until(RESTORE_LIMIT, "a new backup with the balloon", || {
        let status = pair.ftvm_status();
        let alive = status.alive();
        let new_backup = alive
            .iter()
            .find(|line| line.state == VmState::Backup && line.epoch == Some(2));
        let ok = alive.len() == 2
            && alive.iter().all(|line| line.balloon == mib(32.0, 32.0))
            && new_backup.is_some()
            && status.named("backup").map(|l| l.state) == Some(VmState::Primary);
        if ok {
            whole = new_backup.map(|line| (*line).clone());
        }
        ok
    });
    let new_backup = whole.expect("found above");

    // And back to nothing, set on the new primary (the old backup).
    let said = ftvm_set_ok(&pair, &["--balloon", "0", "--wait", "120"]);
    assert!(
        said.contains("backup: balloon target 0 MiB (was 32 MiB)"),
        "{said}"
    );
    wait_memtotal(&pair, before, "deflated");
    let name = new_backup.name.clone().unwrap_or_default();
    pair.wait_until(BALLOON_LIMIT, "the new backup's balloon empty", || {
        pair.ftvm_status()
            .named(&name)
            .is_some_and(|line| line.balloon == mib(0.0, 0.0) && line.state == VmState::Backup)
    });
    pair.stop();
}

#[test]
fn a_balloon_larger_than_ram_or_without_a_device_is_refused_and_changes_nothing() {
    let _serial = serial();
    let slack: Vec<String> = SLACK.iter().map(|s| s.to_string()).collect();

    // With a balloon, 128 MiB of RAM: 129 MiB is refused.
    let mut pair = Pair::new("balloon-refused");
    let mut args = vec!["--balloon".to_string(), "--memory".into(), "128".into()];
    args.extend(slack.iter().cloned());
    pair.up(&args);
    for vm in Vm::BOTH {
        pair.wait_status(vm, STATUS_LIMIT, "an empty balloon", |line| {
            line.balloon == mib(0.0, 0.0)
        });
    }
    let run = ftvm_set(&pair, &["--balloon", "129"]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout_text(), run.stderr);
    assert!(
        run.stderr
            .contains("primary refused: 129 MiB is more than the guest's 128 MiB of RAM"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout_text());
    // Nothing changed: a status line or two later, both still show an
    // empty balloon, and the pair is whole.
    std::thread::sleep(Duration::from_millis(600));
    for vm in Vm::BOTH {
        let line = pair
            .status(vm)
            .unwrap_or_else(|| panic!("no {vm}\n{}", pair.diag()));
        assert_eq!(line.balloon, mib(0.0, 0.0), "{line}");
        assert!(!line.suspected && line.halt.is_none(), "{line}");
    }
    assert_eq!(pair.state(Vm::Primary), Some(VmState::Primary));
    pair.stop();

    // Without a balloon: refused, saying how to get one.
    let mut plain = Pair::new("balloon-none");
    plain.up(&slack);
    plain.wait_state(Vm::Primary, VmState::Primary, STATUS_LIMIT);
    let run = ftvm_set(&plain, &["--balloon", "8"]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout_text(), run.stderr);
    assert!(
        run.stderr.contains(
            "primary refused: the machine has no balloon device (start the VM with --balloon)"
        ),
        "{}",
        run.stderr
    );
    for vm in Vm::BOTH {
        let line = plain
            .status(vm)
            .unwrap_or_else(|| panic!("no {vm}\n{}", plain.diag()));
        assert_eq!(line.balloon, None, "{line}");
    }
    plain.stop();

    // No pair at all.
    let empty = Pair::new("balloon-empty");
    let run = ftvm_set(&empty, &["--balloon", "8"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("no pair in"), "{}", run.stderr);
}
