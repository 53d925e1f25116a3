//! The binary off a terminal, as CI runs it: its stderr is a pipe here, so
//! what it prints there must be exactly what a script printed before
//! ftvm-progress was put in its pipe.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn ftvm_progress(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ftvm-progress"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ftvm-progress starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(input)
        .expect("ftvm-progress reads its input");
    drop(stdin);
    child.wait_with_output().expect("ftvm-progress ends")
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("off-terminal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir.join(name)
}

const CONSOLE: &[u8] = b"  guest 10:00:01| stage2: debootstrap --second-stage\n\
                         \x20 guest 10:00:02| I: Unpacking libc6...\n\
                         \x20 guest 10:00:03| \xe2\x94\x80 not ASCII \xff\r\n\
                         \x20 guest 10:00:04| I: Configuring libc6...\n\
                         \x20 guest 10:00:05| stage2: the second stage is done\n";

#[test]
fn pass_writes_every_line_to_stderr_and_the_log_unchanged() {
    let log = scratch("stage2.log");
    let count = scratch("pass-count");
    let output = ftvm_progress(
        &[
            "--what",
            "second stage",
            "--count",
            "I: Unpacking ",
            "--count",
            "I: Configuring ",
            "--total",
            "2",
            "--log",
            log.to_str().unwrap(),
            "--save-count",
            count.to_str().unwrap(),
        ],
        CONSOLE,
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stderr, CONSOLE);
    assert!(output.stdout.is_empty(), "stdout is the calling script's");
    assert_eq!(std::fs::read(&log).unwrap(), CONSOLE);
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "2\n");
}

#[test]
fn quiet_prints_nothing_and_still_counts() {
    let count = scratch("quiet-count");
    let make = b"  SYNC    include/config/auto.conf\n  CC      init/main.o\n  LD      vmlinux\n";
    let output = ftvm_progress(
        &[
            "--off-terminal",
            "quiet",
            "--save-count",
            count.to_str().unwrap(),
        ],
        make,
    );
    assert!(output.status.success(), "{output:?}");
    assert!(
        output.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "3\n");
}

#[test]
fn a_log_that_cannot_be_created_is_an_error_that_names_it() {
    let output = ftvm_progress(&["--log", "/nonexistent/dir/stage2.log"], b"line\n");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("/nonexistent/dir/stage2.log"),
        "{output:?}"
    );
}
