//! Invariant 5 (ARCHITECTURE.md, "Invariants") for the machine: bad files give
//! one clear line and a non-zero exit; a guest executing garbage only ever
//! traps.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{ftvm_run, guest_elf};

const LIMIT: Duration = Duration::from_secs(60);

/// A file `name` in a scratch directory of its own, removed (with the
/// directory) when the returned guard drops.
fn scratch(name: &str) -> (support::Scratch, PathBuf) {
    let dir = support::Scratch::new(&format!("bad-input-{}", name.replace('.', "-")));
    let path = dir.file(name);
    (dir, path)
}

/// The run must fail with exit code 1 and exactly one line on stderr that
/// names the file and contains `expect`.
fn assert_clean_error(kernel: &Path, extra: &[&str], expect: &str) {
    let run = ftvm_run(kernel, extra, LIMIT);
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one error line, got:\n{}", run.stderr);
    assert!(lines[0].starts_with("ftvm: "), "{}", lines[0]);
    assert!(
        lines[0].contains(&*kernel.to_string_lossy()),
        "the error must name the file: {}",
        lines[0]
    );
    assert!(
        lines[0].contains(expect),
        "want {expect:?} in: {}",
        lines[0]
    );
    assert!(run.stdout.is_empty(), "nothing may run");
}

#[test]
fn missing_kernel_file() {
    assert_clean_error(Path::new("/nonexistent/kernel.elf"), &[], "No such file");
}

#[test]
fn truncated_elf() {
    let elf = std::fs::read(guest_elf("rv64i")).expect("read elf");
    let (_path_dir, path) = scratch("truncated.elf");
    std::fs::write(&path, &elf[..100]).expect("write");
    assert_clean_error(&path, &[], "not a valid ELF");
}

#[test]
fn elf_for_another_architecture() {
    // This test's own executable is an ELF for the host, not RISC-V.
    let host_elf = std::env::current_exe().expect("current exe");
    if std::env::consts::ARCH != "riscv64" {
        assert_clean_error(&host_elf, &[], "not RISC-V");
    }
}

#[test]
fn raw_image_larger_than_ram() {
    let (_path_dir, path) = scratch("huge.img");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(65 * 1024 * 1024).expect("sparse file");
    assert_clean_error(&path, &["--memory", "64"], "does not fit");
}

#[test]
fn garbage_code_only_traps() {
    // Deterministic pseudo-random bytes as a raw kernel: the hart decodes
    // nonsense, traps, jumps to mtvec 0, faults again... never a panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..1 << 16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let (_path_dir, path) = scratch("garbage.img");
    std::fs::write(&path, bytes).expect("write");
    let run = ftvm_run(&path, &["--max-insns", "3000000"], LIMIT);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(run.code, Some(124), "stderr: {}", run.stderr);
}
