//! `ftvm status --watch` on a pair: its table shows both VMs, a failover
//! shows as events (the backup suspects its peer and takes over), and it
//! ends by itself once the pair has ended. And `ftvm plot` of the same
//! pair's history: a picture that names the failover.

mod support;

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use support::pair::{Pair, Vm, VmState};
use support::ticks::*;
use support::{poll, signal, wait_or_kill};

#[test]
fn the_watch_shows_a_failover_and_ends_with_the_pair() {
    let _serial = support::serial();
    let mut pair = Pair::new("watch");
    let (primary, _) = pair.up(&guest(TICK_CMD, &SLACK));
    pair.wait_tick(3, BOOT_LIMIT, "booting");
    let output = pair.path("watch.out");
    let mut watch = pair
        .ftvm()
        .args(["status", "--watch", "--every-ms", "100", "--state-dir"])
        .arg(pair.dir())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).expect("watch.out"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("ftvm status --watch");
    let read = || std::fs::read_to_string(&output).unwrap_or_default();
    let table = poll(STATUS_LIMIT, || {
        let text = read();
        text.lines()
            .any(|l| l.starts_with("primary ") && l.contains(" primary "))
            .then_some(text)
    });
    assert!(
        table
            .as_deref()
            .is_some_and(|t| t.contains("STATE") && t.contains("\nbackup ")),
        "no table of both VMs: {table:?}"
    );
    signal(primary, libc::SIGKILL);
    pair.wait_state(Vm::Backup, VmState::Live, FAILOVER_LIMIT);
    let seen = poll(STATUS_LIMIT, || {
        let text = read();
        (text.contains("backup: suspects its peer") && text.contains("backup: took over"))
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "the failover is not in the events:\n{}",
        read()
    );
    // The history has the failover, and the picture says so.
    let picture = pair.path("pair.svg");
    let plotted = pair
        .ftvm()
        .args(["plot", "--state-dir"])
        .arg(pair.dir())
        .arg("--out")
        .arg(&picture)
        .output()
        .expect("ftvm plot");
    assert!(
        plotted.status.success(),
        "ftvm plot failed: {}",
        String::from_utf8_lossy(&plotted.stderr)
    );
    let svg = std::fs::read_to_string(&picture).unwrap_or_default();
    assert!(
        svg.contains("backup: backup -&gt; live"),
        "the picture does not name the failover"
    );
    let stopped = pair
        .ftvm()
        .arg("stop")
        .arg("--state-dir")
        .arg(pair.dir())
        .status();
    assert!(stopped.is_ok_and(|s| s.success()), "ftvm stop failed");
    let (exit, killed) = wait_or_kill(&mut watch, STATUS_LIMIT + Duration::from_secs(10));
    let mut stderr = String::new();
    if let Some(mut err) = watch.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    assert!(
        !killed && exit.success(),
        "the watch did not end with the pair ({exit:?}, killed: {killed}): {stderr}\n{}",
        read()
    );
}
