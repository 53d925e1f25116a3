//! Flow control of an FT pair (ARCHITECTURE.md, "The FT protocol"): a backup
//! slower than its primary (the interpreter against the translator, a CPU-bound
//! guest) must not fall behind by more than the lag bound; the primary is
//! slowed instead. This also runs the two VMs of a pair on different engines,
//! to the guest's clean end (both VMs exit 0, the command's exit status 0 on
//! the console). The lag is the `lag-ms` the primary's status line gives.

mod support;

use std::time::Duration;

use support::pair::{Pair, Vm, VmState};
use support::wait_until;

const MAX_LAG_MS: f64 = 300.0;
/// The whole run, on a loaded host (the interpreter runs the pace).
const RUN_LIMIT: Duration = Duration::from_secs(600);

#[test]
fn a_slow_backup_slows_the_primary_down_to_the_lag_bound() {
    let mut pair = Pair::new("flow");
    let max_lag = MAX_LAG_MS.to_string();
    let backup = pair.start_backup(&["--engine", "interpreter", "--max-lag-ms", &max_lag]);
    pair.start_primary(
        &backup,
        &[
            "--engine",
            "translator",
            "--max-lag-ms",
            &max_lag,
            "--append",
            "console=ttyS0 ftvm_cmd=\"dd if=/dev/zero bs=1M count=48 2>/dev/null | md5sum\"",
        ],
    );
    let mut lags = Vec::new();
    let ended = wait_until(RUN_LIMIT, || {
        let Some(line) = pair.status(Vm::Primary) else {
            return false;
        };
        if line.state == VmState::Primary {
            lags.extend(line.measures.map(|m| m.lag_ms));
        }
        line.state.is_final() || line.state == VmState::Dead
    });
    assert!(ended, "the pair never ended\n{}", pair.diag());
    for vm in Vm::BOTH {
        let exit = pair.wait_exit(vm.name(), Duration::from_secs(60));
        assert!(
            exit.is_some_and(|e| e.success()),
            "the {vm} ended with {exit:?}\n{}",
            pair.diag()
        );
    }
    let console = String::from_utf8_lossy(&pair.console()).into_owned();
    assert!(console.contains("ftvm_cmd exit 0"), "{console}");
    let worst = lags.iter().copied().fold(0.0, f64::max);
    eprintln!("worst lag {worst:.0} ms in {} status lines", lags.len());
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
