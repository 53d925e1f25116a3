//! The project's own ISA and privilege test programs (`guest/`), run on
//! ftvm: each must pass by its own checks, and where QEMU is installed its
//! console output must equal QEMU `virt`'s byte for byte (differential
//! test against the reference machine).

mod support;

use std::time::Duration;

use std::process::Command;

use support::{
    OPENSBI_FW_DYNAMIC, ftvm_bin, ftvm_run, guest_elf, qemu_available, qemu_run,
    qemu_run_with_bios, run_with_input,
};

const LIMIT: Duration = Duration::from_secs(120);

fn check_program(name: &str) {
    let elf = guest_elf(name);
    let ours = ftvm_run(&elf, &["--max-insns", "2000000000"], LIMIT);
    let text = ours.stdout_text();
    assert!(
        !ours.stderr.contains("panicked"),
        "{name}: ftvm panicked:\n{}",
        ours.stderr
    );
    assert_eq!(
        ours.code,
        Some(0),
        "{name} failed on ftvm (exit {:?}):\n{text}\n{}",
        ours.code,
        ours.stderr
    );
    assert!(
        text.contains("ok ") && !text.contains("FAIL"),
        "{name}: unexpected output on ftvm:\n{text}"
    );
    if qemu_available() {
        let reference = qemu_run(&elf, &[], LIMIT);
        assert_eq!(
            reference.code,
            Some(0),
            "{name} failed on QEMU: {}",
            reference.stderr
        );
        let theirs = reference.stdout_text();
        if text != theirs {
            let first = text
                .lines()
                .zip(theirs.lines())
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("first difference:\n  ftvm: {a}\n  qemu: {b}"))
                .unwrap_or_else(|| "one output is a prefix of the other".into());
            panic!(
                "{name}: ftvm and QEMU disagree; {first}\n--- ftvm ---\n{text}\n--- qemu ---\n{theirs}"
            );
        }
    } else {
        eprintln!("qemu-system-riscv64 not installed: {name} checked on ftvm only");
    }
}

macro_rules! guest_tests {
    ($($test:ident => $program:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_program($program);
            }
        )*
    };
}

guest_tests! {
    rv64i => "rv64i",
    rv64m => "rv64m",
    rv64a => "rv64a",
    rv64c => "rv64c",
    rv64f => "rv64f",
    rv64d => "rv64d",
    zicsr => "zicsr",
    traps => "traps",
    interrupts => "interrupts",
    sv39 => "sv39",
    counters => "counters",
    sstc => "sstc",
}

#[test]
fn htif_tohost_pass_ends_the_run_with_code_zero() {
    let run = ftvm_run(&guest_elf("htif"), &[], LIMIT);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout_text(),
        "htif: exiting with code 0 via tohost\nhtif putchar\n",
        "UART output, then HTIF console putchar output"
    );
}

#[test]
fn htif_tohost_failure_code_becomes_the_exit_code() {
    let run = ftvm_run(&guest_elf("htif-fail"), &[], LIMIT);
    assert_eq!(run.code, Some(3), "{}", run.stderr);
}

#[test]
fn bench_program_agrees_with_qemu() {
    let elf = guest_elf("bench");
    let ours = ftvm_run(&elf, &[], LIMIT);
    assert_eq!(ours.code, Some(0), "{}", ours.stderr);
    if qemu_available() {
        assert_eq!(ours.stdout_text(), qemu_run(&elf, &[], LIMIT).stdout_text());
    }
}

#[test]
fn console_input_reaches_the_guest() {
    let mut cmd = Command::new(ftvm_bin());
    cmd.args(["run", "--kernel"]).arg(guest_elf("echo"));
    let run = run_with_input(cmd, Some(b"hello ftvm\nq\n".to_vec()), LIMIT);
    let text = run.stdout_text();
    assert_eq!(run.code, Some(0), "{text}\n{}", run.stderr);
    assert!(text.contains("you typed: hello ftvm"), "{text}");
    assert!(text.ends_with("bye\r\n"), "{text}");
}

#[test]
fn opensbi_boots_an_s_mode_payload_like_on_qemu() {
    let payload = guest_elf("sbi-payload");
    let mut cmd = Command::new(ftvm_bin());
    cmd.args(["run", "--bios", OPENSBI_FW_DYNAMIC, "--kernel"])
        .arg(&payload);
    let ours = support::run_limited(cmd, LIMIT);
    let text = ours.stdout_text();
    assert_eq!(ours.code, Some(0), "{text}\n{}", ours.stderr);
    assert!(text.contains("OpenSBI"), "{text}");
    assert!(
        text.contains("Domain0 Next Mode         : S-mode"),
        "{text}"
    );
    assert!(
        text.contains("payload: hello from S-mode via SBI"),
        "{text}"
    );
    if qemu_available() {
        let theirs = qemu_run_with_bios(&payload, OPENSBI_FW_DYNAMIC, &[], LIMIT);
        assert_eq!(
            text,
            theirs.stdout_text(),
            "OpenSBI's console differs from QEMU's"
        );
    }
}
