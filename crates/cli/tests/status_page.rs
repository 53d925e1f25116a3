//! The agent's status page in a real browser: Debian's headless Chromium
//! (which `scripts/deps` installs) loads the page `ftvm up`'s agent
//! serves, runs its script, and the VMs and states it shows are the ones
//! `ftvm status --json` prints, before and after `kill -9` of the primary
//! (the backup live, then protected again by a clone). The agent's own
//! metrics, at `/metrics` beside the page, pass `promtool check metrics`
//! and count that restore.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::http::{dom, get, page_states, promtool_check};
use support::pair::{Pair, Vm, VmState};
use support::ticks::*;
use support::{poll, signal};

const PAGE_LIMIT: Duration = Duration::from_secs(90);

/// What `ftvm status --json` says: each VM's name and state.
fn status_states(pair: &Pair) -> BTreeMap<String, String> {
    let out = pair
        .ftvm()
        .args(["status", "--json", "--state-dir"])
        .arg(pair.dir())
        .output()
        .expect("ftvm status --json");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    status["vms"]
        .as_array()
        .map(|vms| {
            vms.iter()
                .filter_map(|vm| {
                    Some((
                        vm["name"].as_str()?.to_string(),
                        vm["state"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until the page and `ftvm status --json` agree, and `want` holds
/// of what they say.
fn agreeing(
    pair: &Pair,
    url: &str,
    what: &str,
    want: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let mut last = (BTreeMap::new(), BTreeMap::new());
    let agreed = poll(PAGE_LIMIT, || {
        let dom = dom(url);
        // The table the script drew, not only the server's.
        let redrawn = dom.contains("data-redrawn=");
        let page = page_states(&dom);
        let status = status_states(pair);
        let ok = redrawn && !page.is_empty() && page == status && want(&page);
        last = (page.clone(), status);
        ok.then_some(page)
    });
    agreed.unwrap_or_else(|| {
        panic!(
            "{what}: the page showed {:?}, ftvm status --json {:?}\n{}",
            last.0,
            last.1,
            pair.diag()
        )
    })
}

#[test]
fn the_status_page_shows_what_ftvm_status_says_across_a_failover() {
    let _serial = support::serial();
    let mut pair = Pair::new("page");
    let (primary, _) = pair.up_restoring(&guest(TICK_CMD, &SLACK));
    pair.wait_tick(3, BOOT_LIMIT, "booting");
    let url = std::fs::read_to_string(pair.path("agent.http"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| panic!("no agent.http ({e})\n{}", pair.diag()));
    let before = agreeing(&pair, &url, "before the failover", |s| {
        s.get("primary").map(String::as_str) == Some("primary")
            && s.get("backup").map(String::as_str) == Some("backup")
    });
    assert_eq!(before.len(), 2, "{before:?}");
    let dom = dom(&url);
    assert!(
        dom.contains("<img class=\"plot\" src=\"/plot.svg"),
        "no timeline on the page"
    );

    signal(primary, libc::SIGKILL);
    pair.wait_state(Vm::Backup, VmState::Live, FAILOVER_LIMIT);
    // The backup took over; the agent gives it a new backup.
    let after = agreeing(&pair, &url, "after the failover", |s| {
        s.get("backup").map(String::as_str) == Some("primary")
            && s.values().filter(|state| *state == "backup").count() == 1
    });
    assert!(
        !after.contains_key("primary") || after["primary"] == "dead",
        "{after:?}"
    );

    let agent: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("the page's address");
    let metrics = poll(PAGE_LIMIT, || {
        get(agent, "/metrics").filter(|text| text.contains("ftvm_agent_restores_total{"))
    })
    .expect("no agent metrics");
    if let Err(complaints) = promtool_check(&metrics) {
        panic!("promtool check metrics on the agent's:\n{complaints}\n{metrics}");
    }
    let restores = metrics
        .lines()
        .find(|l| l.starts_with("ftvm_agent_restores_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(restores, Some(1.0), "{metrics}");
}
