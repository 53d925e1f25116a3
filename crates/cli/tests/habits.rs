//! ftvm keeps the habits of the tools it stands beside.
//! - A Unix tool: a command whose reader goes away (`ftvm status | head
//!   -1`) ends quietly, killed by SIGPIPE as `cat` or `yes` would be, with
//!   nothing on stderr: no error line and no panic backtrace.
//! - Progress shows on a terminal and nowhere else: `ftvm replay` of a
//!   recording draws its bar when stderr is a terminal (under `script`),
//!   and says nothing more than its result when it is not.
//! - QEMU: `ftvm run --kernel Image --initrd F --append ...` boots a Linux
//!   kernel on OpenSBI without being told, and a Linux kernel with `--bios
//!   none` (which would hang in M-mode) is refused with one line.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{ftvm_bin, guest_elf, image_dir, run_limited};

/// Run `ftvm args` with its stdout a pipe whose reader is already gone:
/// its exit status and what it said on stderr.
fn with_reader_gone(args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(ftvm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run ftvm");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_quiet_sigpipe(args: &[&str]) {
    let (status, stderr) = with_reader_gone(args);
    assert_eq!(
        status.signal(),
        Some(libc::SIGPIPE),
        "ftvm {args:?}: {status:?}, stderr: {stderr}"
    );
    assert!(stderr.is_empty(), "ftvm {args:?} said: {stderr}");
}

#[test]
fn a_guest_console_nobody_reads_ends_the_run_quietly() {
    let elf = guest_elf("rv64i");
    let elf = elf.to_string_lossy();
    assert_quiet_sigpipe(&["run", "--kernel", &elf]);
}

#[test]
fn a_status_nobody_reads_ends_quietly() {
    // A pair's state directory as its processes leave it: one status line
    // per VM, here of processes that ended.
    let dir = std::env::temp_dir().join(format!("ftvm-unix-habits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(
        dir.join("primary.status"),
        "ended pid=1 role=primary epoch=1\n",
    )
    .expect("status");
    std::fs::write(
        dir.join("backup.status"),
        "ended pid=1 role=backup epoch=1\n",
    )
    .expect("status");
    let state_dir = dir.to_string_lossy().into_owned();
    assert_quiet_sigpipe(&["status", "--state-dir", &state_dir]);
    assert_quiet_sigpipe(&["status", "--state-dir", &state_dir, "--json"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_nobody_reads_is_not_an_error() {
    let (status, stderr) = with_reader_gone(&["run", "--help"]);
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_linux_kernel_boots_on_opensbi_without_being_told() {
    let dir = image_dir();
    let mut cmd = Command::new(ftvm_bin());
    cmd.arg("run")
        .arg("--kernel")
        .arg(dir.join("Image"))
        .arg("--initrd")
        .arg(dir.join("initramfs.cpio.gz"))
        .args([
            "--append",
            "console=ttyS0 ftvm_cmd=\"echo booted-as-on-qemu\"",
        ]);
    let run = run_limited(cmd, Duration::from_secs(300));
    let console = run.stdout_text();
    assert_eq!(run.code, Some(0), "{console}\n{}", run.stderr);
    assert!(console.contains("OpenSBI"), "no firmware ran:\n{console}");
    assert!(console.contains("booted-as-on-qemu"), "{console}");
}

#[test]
fn a_linux_kernel_with_bios_none_is_refused_in_one_line() {
    let kernel = image_dir().join("Image");
    let mut cmd = Command::new(ftvm_bin());
    cmd.arg("run")
        .arg("--kernel")
        .arg(&kernel)
        .args(["--bios", "none"]);
    let run = run_limited(cmd, Duration::from_secs(60));
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("Linux kernel") && run.stderr.contains("--bios none"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "it ran: {}", run.stdout_text());
}

/// A recording of the default guest printing for a few seconds, then
/// quitting (SIGINT ends `ftvm run` cleanly).
fn recording(dir: &std::path::Path) -> std::path::PathBuf {
    let log = dir.join("ticks.log");
    let mut run = Command::new(ftvm_bin());
    run.env("FTVM_GUEST_IMAGE", image_dir())
        .args(["run", "--record"])
        .arg(&log)
        .args([
            "--append",
            "console=ttyS0 ftvm_cmd=\"i=0; while true; do echo tick $i; i=$((i+1)); \
             usleep 10000; done\"",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = run.spawn().expect("ftvm run --record");
    std::thread::sleep(Duration::from_secs(4));
    support::signal(child.id(), libc::SIGINT);
    let (status, killed) = support::wait_or_kill(&mut child, Duration::from_secs(30));
    assert!(!killed && status.success(), "ftvm run --record: {status:?}");
    log
}

#[test]
fn progress_shows_on_a_terminal_and_nowhere_else() {
    let dir = std::env::temp_dir().join(format!("ftvm-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let log = recording(&dir);
    let replay = format!("{} replay {}", ftvm_bin().display(), log.display());
    // `script` gives the command a terminal and copies what it drew.
    let on_terminal = Command::new("script")
        .args(["-qec", &replay, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    let drawn = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(on_terminal.status.success(), "{drawn}");
    assert!(
        drawn.contains("replaying ["),
        "no progress bar on a terminal: {drawn:?}"
    );
    let piped = Command::new(ftvm_bin())
        .arg("replay")
        .arg(&log)
        .output()
        .expect("ftvm replay");
    let said = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "{said}");
    assert!(
        !said.contains("replaying ["),
        "a progress bar without a terminal: {said:?}"
    );
    assert!(said.contains("final state digest"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}
