//! Continuous protection on one host: after each failure the survivor is
//! cloned into a new backup (`ftvm up`'s agent, or `ftvm protect`), so a
//! pair survives failure after failure (ARCHITECTURE.md, "Cloning").
//!
//! - Ten failures in a row, alternately of the VM that is primary and of
//!   the backup, each after redundancy came back, while a client on one
//!   TCP connection makes numbered durable writes to the guest's disk
//!   (append, `sync`, reply): the connection never resets, every
//!   acknowledged write is on the disk at the end, exactly once and in
//!   order, the file system checks clean, and `ftvm status` shows a pair
//!   of the next epoch after each restore.
//! - A clone interrupted at a random moment (the new backup killed while
//!   it takes the snapshot or catches up): the survivor runs on, nothing
//!   is lost, and a later clone succeeds. Likewise a migration of the
//!   primary, with either VM killed during it.
//!
//! - A frozen primary (SIGSTOP): the backup takes over, and the agent
//!   protects it again while the old primary's process is still there,
//!   frozen; woken, the old primary halts for the test-and-set it lost.
//!
//! What the VMs did is read from their status lines (`ftvm status
//! --json`), never from their logs. `FTVM_SEED` repeats a run's kill
//! moments; `FTVM_SOAK=N` makes the ten failures N.

mod support;

use std::path::Path;
use std::time::Duration;

use support::pair::{HaltCode, Pair, StatusLine, Verdict, Vm, VmState};
use support::writer::{BOOT_LIMIT, REPLY_LIMIT, WRITER_CMD, Writer};
use support::{
    disk_log, free_port, fsck_clean, image_dir, kill_seed, poll, run_limited, serial, signal,
};

const DETECTION: [&str; 4] = ["--timeout-ms", "500", "--heartbeat-ms", "50"];
/// A failure, the take-over and the restore of redundancy, under load.
const RESTORE_LIMIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------
// The pair

/// `ftvm up` of the writer guest on a copy of the default guest's disk,
/// on the pair's own network, with `extra` options (and the agent when
/// `restoring`); a client writing to it once the first 5 writes are
/// acknowledged.
fn start(pair: &mut Pair, restoring: bool, extra: &[&str]) -> Writer {
    std::fs::copy(image_dir().join("disk.ext4"), pair.path("disk.img")).expect("copy the disk");
    let port = free_port();
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--disk".to_string(),
        pair.path("disk.img").to_string_lossy().into_owned(),
        "--net".to_string(),
        format!("user,hostfwd=tcp:127.0.0.1:{port}-:7"),
        "--append".to_string(),
        format!("console=ttyS0 ftvm_cmd=\"{WRITER_CMD}\""),
    ]);
    args.extend(DETECTION.iter().map(|s| s.to_string()));
    if restoring {
        pair.up_restoring(&args);
    } else {
        pair.up(&args);
    }
    let mut writer = Writer::start(port);
    if !writer.wait_for(5, BOOT_LIMIT) {
        panic!("the first writes: {:?}\n{}", writer.finish(), pair.diag());
    }
    writer
}

/// Wait for 5 more acknowledged writes, after `what`.
fn more_writes(writer: &mut Writer, pair: &Pair, what: &str) {
    let before = writer.acked();
    if !writer.wait_for(before + 5, REPLY_LIMIT) {
        panic!("writes {what}: {:?}\n{}", writer.finish(), pair.diag());
    }
}

/// Stop the client and the pair: every acknowledged write is on `disk`,
/// once and in order, and its file system checks clean.
fn finish(pair: &Pair, mut writer: Writer, disk: &Path) {
    let acked = writer
        .finish()
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.diag()));
    pair.stop();
    let log = disk_log(disk);
    let expected: Vec<u64> = (0..log.len() as u64).collect();
    assert_eq!(log, expected, "the disk's writes have a gap or a duplicate");
    assert!(
        log.len() as u64 >= acked,
        "{acked} writes were acknowledged, the disk holds {}",
        log.len()
    );
    fsck_clean(disk);
}

/// Wait until the pair is whole again as `epoch`.
fn wait_protected(pair: &Pair, epoch: u64, what: &str) -> (StatusLine, StatusLine) {
    pair.wait_protected(epoch..=epoch, what, RESTORE_LIMIT)
}

#[test]
fn ten_failures_in_a_row_each_after_redundancy_came_back_lose_no_acknowledged_write() {
    let _serial = serial();
    let mut pair = Pair::new("restore-ten");
    let mut writer = start(&mut pair, true, &[]);
    let mut epoch = 1;
    let mut pauses = Vec::new();
    // The soak (`FTVM_SOAK=N`): N failures in a row instead of ten.
    let failures: u64 = std::env::var("FTVM_SOAK")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    for failure in 0..failures {
        let (primary, backup) = wait_protected(&pair, epoch, &format!("a pair of epoch {epoch}"));
        // Alternately the VM that runs the guest, and its backup.
        let victim = if failure % 2 == 0 { &primary } else { &backup };
        let before = writer.acked();
        signal(victim.pid, libc::SIGKILL);
        epoch += 1;
        let (primary, _) = wait_protected(
            &pair,
            epoch,
            &format!("redundancy back after failure {failure} (kill -9 of {victim})"),
        );
        pauses.extend(primary.clone_pause_ms);
        assert!(
            primary.clones >= 1,
            "a primary of a new epoch that never cloned: {primary}"
        );
        if !writer.wait_for(before + 5, REPLY_LIMIT) {
            panic!(
                "writes after failure {failure}: {:?}\n{}",
                writer.finish(),
                pair.diag()
            );
        }
    }
    eprintln!(
        "{} writes across {failures} failures; clone pauses (ms): {pauses:?}",
        writer.acked()
    );
    finish(&pair, writer, &pair.path("disk.img"));
}

#[test]
fn a_frozen_primary_does_not_keep_the_survivor_from_a_new_backup() {
    let _serial = serial();
    let mut pair = Pair::new("restore-frozen");
    let mut writer = start(&mut pair, true, &[]);
    let (primary, _) = wait_protected(&pair, 1, "the pair");
    signal(primary.pid, libc::SIGSTOP);
    // The frozen process is a third VM, so not `protected` yet.
    let mut found = None;
    pair.wait_until(
        RESTORE_LIMIT,
        "a new backup while the old primary is frozen",
        || {
            let status = pair.ftvm_status();
            let alive = status.alive();
            let of = |state| {
                alive
                    .iter()
                    .find(|line| line.state == state && line.epoch == Some(2))
                    .map(|line| (*line).clone())
            };
            found = of(VmState::Primary).zip(of(VmState::Backup));
            found.is_some()
        },
    );
    let (survivor, backup) = found.expect("found above");
    assert_eq!(survivor.name.as_deref(), Some("backup"), "{survivor}");
    assert_eq!(backup.name.as_deref(), Some("vm3"), "{backup}");
    let frozen = pair.status(Vm::Primary).expect("the old primary's status");
    assert_eq!(
        frozen.state,
        VmState::Primary,
        "the old primary was not frozen all along: {frozen}\n{}",
        pair.diag()
    );
    more_writes(
        &mut writer,
        &pair,
        "after the frozen primary's backup took over",
    );
    signal(primary.pid, libc::SIGCONT);
    let old = pair.wait_state(Vm::Primary, VmState::Halted, RESTORE_LIMIT);
    assert!(
        old.halt == Some(HaltCode::LostTestAndSet) && old.verdict == Some(Verdict::Lost),
        "the woken old primary halted, but not for the test-and-set it lost: {old}\n{}",
        pair.diag()
    );
    wait_protected(&pair, 2, "the pair, once the old primary halted");
    more_writes(&mut writer, &pair, "after the old primary halted");
    finish(&pair, writer, &pair.path("disk.img"));
}

#[test]
fn a_clone_interrupted_at_a_random_moment_loses_nothing_and_a_later_clone_succeeds() {
    let _serial = serial();
    let seed = kill_seed();
    let mut pair = Pair::new("restore-cut");
    let mut writer = start(&mut pair, false, &[]);
    let primary = pair
        .ftvm_status()
        .named("primary")
        .cloned()
        .expect("the primary's line");
    signal(primary.pid, libc::SIGKILL);
    pair.wait_until(RESTORE_LIMIT, "the backup runs alone", || {
        pair.ftvm_status()
            .named("backup")
            .is_some_and(|line| line.state == VmState::Live)
    });
    // `ftvm protect`, and its new backup killed a moment later: while it
    // waits, takes the snapshot or catches up.
    let protect = || {
        let mut cmd = pair.ftvm();
        cmd.arg("protect").arg("--state-dir").arg(pair.dir());
        cmd
    };
    let delay = Duration::from_millis(seed % 1500);
    let mut cut = protect().spawn().expect("ftvm protect");
    let victim = poll(Duration::from_secs(30), || {
        pair.ftvm_status().named("vm3").map(|line| line.pid)
    })
    .unwrap_or_else(|| panic!("no new backup\n{}", pair.diag()));
    std::thread::sleep(delay);
    signal(victim, libc::SIGKILL);
    let cut = cut.wait().expect("ftvm protect ends");
    let status = pair.ftvm_status();
    let survivor = status.named("backup").expect("the survivor's line");
    assert!(
        survivor.state.runs_the_guest(),
        "the survivor stopped running the guest: {survivor}\n{}",
        pair.diag()
    );
    // The kill may have come after the clone caught up: then the survivor
    // lost its new backup and runs alone again, as after any failure. A
    // kill before the survivor reached the new backup leaves its clone
    // trying to connect until the clone's timeout (5 s): alone again is
    // also no clone in progress, or the later `ftvm protect` is refused as
    // one too many (faster round trips let the writes below finish first).
    pair.wait_until(RESTORE_LIMIT, "the survivor alone again", || {
        pair.ftvm_status()
            .named("backup")
            .is_some_and(|line| line.state == VmState::Live && line.clone.is_none())
    });
    let before = writer.acked();
    if !writer.wait_for(before + 5, REPLY_LIMIT) {
        panic!(
            "writes after the cut clone: {:?}\n{}",
            writer.finish(),
            pair.diag()
        );
    }
    let again = run_limited(protect(), RESTORE_LIMIT);
    assert_eq!(
        again.code,
        Some(0),
        "the later clone (after one that {} with the new backup killed {delay:?} in): {}{}\n{}",
        if cut.success() { "succeeded" } else { "failed" },
        again.stdout_text(),
        again.stderr,
        pair.diag()
    );
    let epoch = pair
        .ftvm_status()
        .named("backup")
        .and_then(|line| line.epoch)
        .expect("an epoch");
    wait_protected(&pair, epoch, "the pair after the later clone");
    let before = writer.acked();
    if !writer.wait_for(before + 5, REPLY_LIMIT) {
        panic!(
            "writes after the later clone: {:?}\n{}",
            writer.finish(),
            pair.diag()
        );
    }
    finish(&pair, writer, &pair.path("disk.img"));
}

/// `ftvm` ARGS `--state-dir DIR`; it must succeed; its stdout.
fn ftvm_ok(pair: &Pair, args: &[&str]) -> String {
    let mut cmd = pair.ftvm();
    cmd.args(args).arg("--state-dir").arg(pair.dir());
    let run = run_limited(cmd, RESTORE_LIMIT);
    assert_eq!(
        run.code,
        Some(0),
        "ftvm {}: {}{}\n{}",
        args.join(" "),
        run.stdout_text(),
        run.stderr,
        pair.diag()
    );
    run.stdout_text()
}

/// A VM started without a backup is protected under a client's load,
/// unprotected, protected again, and then survives `ftvm test-failover`
/// (which kills its primary and reports the take-over and the restore).
#[test]
fn a_vm_is_protected_under_load_unprotected_and_protected_again() {
    let _serial = serial();
    let mut pair = Pair::new("restore-protect");
    let mut writer = start(&mut pair, true, &["--no-backup"]);
    let alone = pair.ftvm_status();
    assert_eq!(
        alone.alive().len(),
        1,
        "started without a backup: {alone:?}"
    );
    assert_eq!(
        alone.named("primary").map(|line| line.state),
        Some(VmState::Live)
    );
    // Nothing restores a VM started alone on its own.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pair.ftvm_status().alive().len(), 1);

    ftvm_ok(&pair, &["protect"]);
    let (primary, backup) = wait_protected(&pair, 2, "protected");
    assert_eq!(primary.name.as_deref(), Some("primary"));
    assert_eq!(backup.name.as_deref(), Some("vm3"));
    more_writes(&mut writer, &pair, "while protected");

    ftvm_ok(&pair, &["unprotect"]);
    pair.wait_until(RESTORE_LIMIT, "the primary alone again", || {
        let status = pair.ftvm_status();
        status.alive().len() == 1
            && status
                .named("primary")
                .is_some_and(|line| line.state == VmState::Live)
    });
    more_writes(&mut writer, &pair, "after unprotect");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        pair.ftvm_status().alive().len(),
        1,
        "the agent restored a VM that was unprotected\n{}",
        pair.diag()
    );

    // Each pairing is the next epoch: the unprotected VM kept the one it
    // won alone (2).
    ftvm_ok(&pair, &["protect"]);
    wait_protected(&pair, 3, "protected again");
    more_writes(&mut writer, &pair, "protected again");
    let report = ftvm_ok(&pair, &["test-failover"]);
    assert!(
        report.contains("took over") && report.contains("protected again"),
        "ftvm test-failover said:\n{report}"
    );
    wait_protected(&pair, 4, "after test-failover");
    more_writes(&mut writer, &pair, "after test-failover");
    let report = ftvm_ok(&pair, &["test-restart-backup"]);
    assert!(report.contains("protected again"), "{report}");
    wait_protected(&pair, 5, "after test-restart-backup");
    more_writes(&mut writer, &pair, "after test-restart-backup");

    finish(&pair, writer, &pair.path("disk.img"));
}

/// The disk a VM of the pair named `name` wrote: the first primary's is
/// the image `ftvm up` was given, every backup's its own copy.
fn own_disk(pair: &Pair, name: &str) -> std::path::PathBuf {
    if name == "primary" {
        pair.path("disk.img")
    } else {
        pair.path(&format!("{name}-disk.img"))
    }
}

/// Private disks: each new backup gets the disk as it was at its clone's
/// snapshot and replays the writes after it, so after failures of the
/// primary and of the backup, the last two VMs' disks are equal byte for
/// byte, and hold every acknowledged write.
#[test]
fn private_disks_are_cloned_and_end_equal_byte_for_byte() {
    let _serial = serial();
    let mut pair = Pair::new("restore-private");
    let mut writer = start(&mut pair, true, &["--disk-mode", "private"]);
    let mut epoch = 1;
    for failure in 0..3 {
        let (primary, backup) = wait_protected(&pair, epoch, &format!("a pair of epoch {epoch}"));
        let victim = if failure == 1 { &backup } else { &primary };
        let before = writer.acked();
        signal(victim.pid, libc::SIGKILL);
        epoch += 1;
        wait_protected(
            &pair,
            epoch,
            &format!("redundancy back after killing {victim}"),
        );
        if !writer.wait_for(before + 5, REPLY_LIMIT) {
            panic!(
                "writes after failure {failure}: {:?}\n{}",
                writer.finish(),
                pair.diag()
            );
        }
    }
    let (primary, backup) = wait_protected(&pair, epoch, "the last pair");
    let names = [primary.name, backup.name].map(|name| name.expect("a VM's name"));
    let disks = names.clone().map(|name| own_disk(&pair, &name));
    finish(&pair, writer, &disks[0]);
    let bytes = disks
        .clone()
        .map(|disk| std::fs::read(&disk).unwrap_or_else(|e| panic!("{}: {e}", disk.display())));
    assert!(
        bytes[0] == bytes[1],
        "the disks of {} and {} differ",
        names[0],
        names[1]
    );
}

/// `ftvm migrate` of the primary (a planned hand-over to the backup,
/// then a new backup) and of the backup (a new clone), under a client's
/// durable writes: nothing lost, no reset, the pair whole after each, and
/// the longest pause the client saw reported.
#[test]
fn migrating_the_primary_and_the_backup_loses_nothing() {
    let _serial = serial();
    let mut pair = Pair::new("restore-migrate");
    let mut writer = start(&mut pair, true, &[]);
    let mut pauses = Vec::new();
    for (round, vm) in ["primary", "backup", "primary"].into_iter().enumerate() {
        let epoch = round as u64 + 1;
        let (primary, backup) = wait_protected(&pair, epoch, &format!("a pair of epoch {epoch}"));
        let before = writer.acked();
        writer.take_slowest_ms();
        let report = ftvm_ok(&pair, &["migrate", "--vm", vm]);
        let (new_primary, _) =
            wait_protected(&pair, epoch + 1, &format!("after migrating the {vm}"));
        let expected = if vm == "primary" { &backup } else { &primary };
        assert_eq!(
            new_primary.name, expected.name,
            "after migrating the {vm} ({report}), the guest runs on {new_primary}"
        );
        if !writer.wait_for(before + 5, REPLY_LIMIT) {
            panic!(
                "writes after migrating the {vm}: {:?}\n{}",
                writer.finish(),
                pair.diag()
            );
        }
        pauses.push((vm, writer.take_slowest_ms()));
        if vm == "primary" {
            let old = pair
                .ftvm_status()
                .vms
                .into_iter()
                .chain(
                    std::fs::read_dir(pair.path("gone"))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                        .filter_map(|text| text.trim().parse::<StatusLine>().ok()),
                )
                .find(|line| line.name == primary.name);
            if let Some(old) = old {
                assert!(
                    old.halt == Some(HaltCode::HandedOver) || old.state == VmState::Dead,
                    "the old primary: {old}"
                );
            }
        }
    }
    eprintln!("longest reply during each migration (ms): {pauses:?}");
    finish(&pair, writer, &pair.path("disk.img"));
}

/// A migration of the primary interrupted at a random moment: one side
/// of what is under way killed. During the hand-over, the primary or its
/// backup (the other runs on); after it, the old primary (already
/// stopped) or the new backup the clone goes to (the VM that took over
/// is then its only copy, as after any failure, and is not a side).
/// Whichever VM survives runs the guest, the agent protects it again,
/// and no acknowledged write is lost.
#[test]
fn a_migration_interrupted_at_a_random_moment_loses_nothing() {
    let _serial = serial();
    let seed = kill_seed();
    let mut pair = Pair::new("restore-cut-migrate");
    let mut writer = start(&mut pair, true, &[]);
    // Under load a pair may split while it boots and be restored: it is
    // whichever epoch it is.
    let (primary, backup) = pair.wait_protected(1..=4, "the pair", RESTORE_LIMIT);
    let epoch = primary.epoch.unwrap_or(1);
    let delay = Duration::from_millis(seed % 700);
    let mut migrate = pair.ftvm();
    migrate
        .args(["migrate", "--vm", "primary", "--state-dir"])
        .arg(pair.dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut migrate = migrate.spawn().expect("ftvm migrate");
    std::thread::sleep(delay);
    let status = pair.ftvm_status();
    let handed_over = status
        .named(primary.name.as_deref().unwrap_or_default())
        .is_none_or(|line| line.state.is_final() || line.state == VmState::Dead);
    let target = status
        .vms
        .iter()
        .find(|line| line.epoch > primary.epoch && line.state == VmState::Backup);
    let victim = match (seed.is_multiple_of(2), handed_over, target) {
        (true, _, _) | (false, true, None) => primary.clone(),
        (false, false, _) => backup.clone(),
        (false, true, Some(target)) => target.clone(),
    };
    signal(victim.pid, libc::SIGKILL);
    let migrated = migrate.wait().expect("ftvm migrate ends");
    let (new_primary, _) =
        pair.wait_protected(epoch + 1..=epoch + 3, "protected again", RESTORE_LIMIT);
    assert!(
        new_primary.name != victim.name,
        "the VM killed {delay:?} into the migration ({}) runs the guest: {new_primary}\n{}",
        if migrated.success() {
            "which succeeded"
        } else {
            "which failed"
        },
        pair.diag()
    );
    more_writes(&mut writer, &pair, "after the interrupted migration");
    eprintln!(
        "{:?} killed {delay:?} into the migration, which {}; {:?} runs the guest",
        victim.name,
        if migrated.success() {
            "succeeded"
        } else {
            "failed"
        },
        new_primary.name
    );
    finish(&pair, writer, &pair.path("disk.img"));
}
