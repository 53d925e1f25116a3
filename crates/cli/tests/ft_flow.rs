//! Flow control of an FT pair (DESIGN.md §4): a backup slower than its
//! primary (the interpreter against the translator, a CPU-bound guest)
//! must not fall behind by more than the lag bound; the primary is slowed
//! instead. This also runs the two VMs of a pair on different engines.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::ftvm_bin;

const MAX_LAG_MS: f64 = 300.0;

/// The lag in ms from a status line (`lag=E entries/L ms`).
fn lag_ms(status: &str) -> Option<f64> {
    let lag = status.split("entries/").nth(1)?;
    lag.split_whitespace().next()?.parse().ok()
}

#[test]
fn a_slow_backup_slows_the_primary_down_to_the_lag_bound() {
    let dir = std::env::temp_dir().join(format!("ftvm-ft-flow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("key"), "0123456789abcdef0123456789abcdef").expect("key");
    let pair: Vec<std::ffi::OsString> = vec![
        "--key-file".into(),
        dir.join("key").into(),
        "--arbiter".into(),
        dir.join("arbiter").into(),
        "--max-lag-ms".into(),
        MAX_LAG_MS.to_string().into(),
    ];
    let mut backup = Command::new(ftvm_bin())
        .args([
            "backup",
            "--listen",
            "127.0.0.1:0",
            "--engine",
            "interpreter",
        ])
        .arg("--addr-file")
        .arg(dir.join("addr"))
        .args(&pair)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ftvm backup");
    let start = Instant::now();
    while !std::fs::read_to_string(dir.join("addr")).is_ok_and(|a| a.ends_with('\n')) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the backup does not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = std::fs::read_to_string(dir.join("addr")).expect("addr");
    let status = dir.join("primary.status");
    let mut primary = Command::new(ftvm_bin())
        .args(["primary", "--backup", addr.trim(), "--engine", "translator"])
        .arg("--status-file")
        .arg(&status)
        .args(&pair)
        .args([
            "--append",
            "console=ttyS0 ftvm_cmd=\"dd if=/dev/zero bs=1M count=48 2>/dev/null | md5sum\"",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ftvm primary");
    let mut lags = Vec::new();
    let start = Instant::now();
    while primary.try_wait().expect("wait").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the pair never ended"
        );
        if let Some(lag) = std::fs::read_to_string(&status)
            .ok()
            .filter(|s| s.starts_with("primary"))
            .and_then(|s| lag_ms(&s))
        {
            lags.push(lag);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let code = primary.wait().expect("primary");
    let backup_code = backup.wait().expect("backup");
    let console = std::io::read_to_string(primary.stdout.take().expect("stdout")).expect("console");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        code.success() && backup_code.success(),
        "{code:?} {backup_code:?}"
    );
    assert!(console.contains("ftvm_cmd exit 0"), "{console}");
    let worst = lags.iter().copied().fold(0.0, f64::max);
    // The bound is checked between slices and learnt from the backup's
    // acknowledgements (at least every heartbeat), and the lag is converted
    // to time at the primary's measured speed, a moving average: it may be
    // passed by some. Without flow control this backup falls seconds behind
    // (6 s measured against a 500 ms bound).
    assert!(
        worst < 3.0 * MAX_LAG_MS,
        "the backup fell {worst} ms behind, the bound is {MAX_LAG_MS} ms; lags seen: {lags:?}"
    );
    assert!(
        worst > MAX_LAG_MS / 2.0,
        "the backup never lagged ({worst} ms): this test no longer tests flow control"
    );
}
