//! The pair's logs as a log pipeline reads them: `ftvm up --log-format
//! json` makes every process it starts write one JSON object per line on
//! its log, and each VM's state changes are events of their own (target
//! `ftvm::state`) carrying the pair, the epoch and the VM, so a failover
//! can be followed from the logs alone: the backup suspects its primary,
//! wins the test-and-set and goes live. The switch's and the agent's logs
//! are JSON too, and the agent's tells the restore that follows.

mod support;

use serde_json::Value;
use support::pair::{Pair, Vm, VmState};
use support::process_alive as alive;
use support::signal;
use support::ticks::*;

/// Every line of `log`, each a JSON object with the fields every event
/// has; the state changes among them.
fn events(pair: &Pair, log: &str) -> (Vec<Value>, Vec<Value>) {
    let text = std::fs::read_to_string(pair.path(log)).unwrap_or_default();
    let mut all = Vec::new();
    for line in text.lines() {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "{log}: a line that is not JSON ({e}): {line:?}\n{}",
                pair.diag()
            )
        });
        for field in ["timestamp", "level", "target", "message"] {
            assert!(
                event.get(field).is_some(),
                "{log}: an event without `{field}`: {line}"
            );
        }
        all.push(event);
    }
    let states = all
        .iter()
        .filter(|e| e["target"] == "ftvm::state")
        .cloned()
        .collect();
    (all, states)
}

#[test]
fn json_logs_follow_a_failover_by_its_state_changes() {
    let _serial = support::serial();
    let mut pair = Pair::new("json-logs");
    let mut args = guest(TICK_CMD, &SLACK);
    args.extend([
        "--log-format".to_string(),
        "json".to_string(),
        "--net".to_string(),
        "user".to_string(),
    ]);
    let (primary, backup) = pair.up_restoring(&args);
    pair.wait_tick(3, BOOT_LIMIT, "booting");
    signal(primary, libc::SIGKILL);
    pair.wait_state(Vm::Backup, VmState::Live, FAILOVER_LIMIT);
    assert!(alive(backup), "{}", pair.diag());

    let (_, primary_states) = events(&pair, "primary.log");
    let first = primary_states
        .first()
        .unwrap_or_else(|| panic!("the primary logged no state\n{}", pair.diag()));
    assert_eq!(first["state"], "primary", "{first}");
    assert_eq!(first["vm"], "primary", "{first}");
    assert_eq!(first["epoch"], 1, "{first}");
    let pair_name = first["pair"].as_str().unwrap_or_default().to_string();
    assert!(!pair_name.is_empty(), "no pair in {first}");

    let (all, states) = events(&pair, "backup.log");
    for event in &states {
        assert_eq!(event["pair"], pair_name.as_str(), "{event}");
        assert_eq!(event["epoch"], 1, "{event}");
        assert_eq!(event["vm"], "backup", "{event}");
    }
    let sequence: Vec<String> = states
        .iter()
        .map(|e| format!("{} {}", e["previous"], e["state"]))
        .collect();
    let position = |what: &dyn Fn(&Value) -> bool| states.iter().position(what);
    let replaying = position(&|e| e["state"] == "backup" && e["previous"] == "none");
    let suspected = position(&|e| e["state"] == "backup" && e["suspected"] == true);
    let live = position(&|e| {
        e["previous"] == "backup"
            && e["state"] == "live"
            && e["took_over"] == true
            && e["verdict"] == "won"
    });
    assert!(
        matches!((replaying, suspected, live), (Some(r), Some(s), Some(l)) if r < s && s < l),
        "the backup's state changes do not tell its failover in order: {sequence:?}\n{}",
        pair.diag()
    );
    // The agent restores redundancy, and says so. Its log and the
    // switch's are JSON line by line as well (the guest sent nothing,
    // so the switch may have had nothing to say).
    let restored = support::poll(FAILOVER_LIMIT, || {
        let (_, agent) = events(&pair, "agent.log");
        agent
            .iter()
            .any(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("protected again"))
            })
            .then_some(())
    });
    assert!(
        restored.is_some(),
        "the agent's log tells no restore\n{}",
        pair.diag()
    );
    assert!(pair.path("switch.log").exists(), "no switch log");
    events(&pair, "switch.log");
    // Events are written in the order they happened.
    let stamps: Vec<&str> = all.iter().filter_map(|e| e["timestamp"].as_str()).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "timestamps out of order"
    );
}
