//! The operator's view of a cluster (support::cluster: three hosts, each a
//! network namespace with its agent serving `--http`, etcd in namespaces
//! of its own), across the loss of the primary's whole host:
//!
//! - `ftvm cluster status --json` shows every host answering and each VM
//!   of the pair with the measures only its own host's agent has (lag,
//!   log rate) and its metrics address; right after the host dies, its
//!   agent is shown not answering and its VM from the store alone;
//! - `ftvm cluster status --watch` draws the VMs with their hosts and
//!   tells the failover as events;
//! - a real Prometheus that finds its targets through one agent's
//!   `/sd.json` (HTTP service discovery) scrapes every agent and VM of the
//!   cluster, and answers which host runs the primary, before and after,
//!   the failover counter, and the restore counted by the survivor's
//!   agent; every agent's `/metrics` passes `promtool check metrics`;
//! - an agent's page, loaded in headless Chromium, shows the VMs with
//!   their hosts and states as `ftvm cluster status --json` does, and the
//!   timeline of the pair's VMs on that host;
//! - `ftvm cluster migrate` draws its clone's progress on a terminal, and
//!   nothing without one.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::cluster::{self, Cluster};
use support::http::{Prometheus, dom, get, page_states, promtool_check};
use support::ticks::{FAST, TICK_CMD, guest};
use support::{poll, serial};

const RESTORE_LIMIT: Duration = Duration::from_secs(90);

fn need_namespaces() {
    if let Err(why) = cluster::available() {
        panic!("this test needs network namespaces: {why}");
    }
}

/// `ftvm cluster status --json`.
fn status_json(cluster: &Cluster) -> Value {
    let mut cmd = cluster.ftvm(&["cluster", "status", "--json"]);
    cmd.args(cluster.store_args());
    let out = cluster.ok(cmd);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Each VM of `status` (`PAIR/NAME`, a `*` if seen in the store only):
/// its host and state.
fn vm_states(status: &Value) -> BTreeMap<String, (String, String)> {
    let mut vms = BTreeMap::new();
    for vm in status["vms"].as_array().into_iter().flatten() {
        let seen = if vm["seen"] == "store" { "*" } else { "" };
        let key = format!(
            "{}/{}{seen}",
            vm["pair"].as_str().unwrap_or("?"),
            vm["vm"]["name"].as_str().unwrap_or("?")
        );
        let host = vm["host"].as_str().unwrap_or("?").to_string();
        let state = vm["vm"]["state"].as_str().unwrap_or("?").to_string();
        vms.insert(key, (host, state));
    }
    vms
}

#[test]
fn an_operator_follows_a_cluster_across_the_loss_of_a_host() {
    let _serial = serial();
    need_namespaces();
    let mut cluster = Cluster::start("view", 3);
    let up = cluster.up("web", &guest(TICK_CMD, &FAST));
    assert!(up.contains("protected"), "{up}");
    let (p, b) = cluster.wait_protected("web", RESTORE_LIMIT, "the pair", |p, b| p.host != b.host);

    // The whole status, each VM's measures from its own host's agent.
    let status = poll(Duration::from_secs(20), || {
        let status = status_json(&cluster);
        let measured = status["vms"].as_array().is_some_and(|vms| {
            vms.len() == 2
                && vms.iter().all(|vm| {
                    vm["seen"] == "agent"
                        && vm["vm"]["measures"]["log_mbit_s"].as_f64() > Some(0.0)
                        && vm["vm"]["metrics"].is_string()
                })
        });
        measured.then_some(status)
    })
    .unwrap_or_else(|| panic!("no measures from the agents: {}", cluster.diag()));
    let hosts = status["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 3, "{status}");
    assert!(hosts.iter().all(|h| h["answered"] == true), "{status}");
    let states = vm_states(&status);
    assert_eq!(
        states.get(&format!("web/{}", p.name)),
        Some(&(p.host.clone(), "primary".to_string())),
        "{status}"
    );
    assert_eq!(
        states.get(&format!("web/{}", b.name)),
        Some(&(b.host.clone(), "backup".to_string())),
        "{status}"
    );

    // A watcher, for the rest of the test.
    let mut watch = cluster.ftvm(&["cluster", "status", "--watch", "--every-ms", "200"]);
    let mut watcher = watch
        .args(cluster.store_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ftvm cluster status --watch");
    let watched = Arc::new(Mutex::new(String::new()));
    let reader = watcher.stdout.take().map(|mut stdout| {
        let watched = watched.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut text) = watched.lock() {
                    text.push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            }
        })
    });

    // Prometheus finds every agent and VM through the backup's agent.
    let sd = cluster.agent_http(&b.host);
    let targets = get(sd, "/sd.json").expect("the agent's /sd.json");
    let groups: Value = serde_json::from_str(&targets).expect("sd.json is JSON");
    assert_eq!(
        groups.as_array().map(Vec::len),
        Some(5),
        "three agents and two VMs: {groups}"
    );
    let prometheus = Prometheus::start_with(
        &cluster.scratch.0,
        &format!(
            "  - job_name: ftvm\n    http_sd_configs:\n      - url: http://{sd}/sd.json\n        \
             refresh_interval: 1s\n"
        ),
    );
    // The one VM in `state`, on `host`.
    let state_on = |state: &str, host: &str| {
        let query = format!("ftvm_vm_state{{state=\"{state}\"}} == 1");
        prometheus.wait_for(&query, |found| {
            found.len() == 1 && found[0].0["ftvm_host"] == host
        });
    };
    state_on("primary", &p.host);
    state_on("backup", &b.host);
    prometheus.wait_for("sum(ftvm_agent_registered)", |found| {
        found.first().is_some_and(|(_, v)| *v == 3.0)
    });
    // The VM was started alone and protected at once by its agent.
    prometheus.wait_for("ftvm_agent_restores_total == 1", |found| {
        found.len() == 1 && found[0].0["ftvm_host"] == p.host.as_str()
    });
    for host in ["h1", "h2", "h3"] {
        let text = get(cluster.agent_http(host), "/metrics").expect("an agent's /metrics");
        if let Err(complaints) = promtool_check(&text) {
            panic!("promtool check metrics on {host}'s agent:\n{complaints}\n{text}");
        }
    }

    // The primary's whole host dies. Until its lease runs out (5 s), the
    // store still lists it: its agent does not answer, its VM is shown
    // from the store.
    cluster.kill_host(&p.host);
    let killed = std::time::Instant::now();
    let status = status_json(&cluster);
    let dead = status["hosts"]
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["name"] == p.host.as_str()));
    match dead {
        Some(dead) => {
            assert_eq!(dead["answered"], false, "{status}");
            let states = vm_states(&status);
            assert!(
                states.contains_key(&format!("web/{}*", p.name)),
                "the dead host's VM from the store: {status}"
            );
        }
        // Only a machine too loaded to ask within the lease's time.
        None => assert!(
            killed.elapsed() > Duration::from_secs(4),
            "the dead host left the store at once: {status}"
        ),
    }
    let (p1, b1) =
        cluster.wait_protected("web", RESTORE_LIMIT, "restored", |np, _| np.epoch > p.epoch);
    assert_eq!(p1.name, b.name, "the backup took over");

    // Prometheus follows: the primary on the survivor's host, one
    // failover, and a restore counted by the survivor's agent.
    state_on("primary", &b.host);
    state_on("backup", &b1.host);
    prometheus.wait_for("sum(ftvm_failovers_total)", |found| {
        found.first().is_some_and(|(_, v)| *v == 1.0)
    });
    prometheus.wait_for("ftvm_agent_restores_total == 1", |found| {
        found
            .iter()
            .any(|(labels, _)| labels["ftvm_host"] == b.host.as_str())
    });

    // The watcher told it, with hosts.
    let told = poll(Duration::from_secs(20), || {
        let text = watched.lock().map(|t| t.clone()).unwrap_or_default();
        let took_over = format!("web/{}: took over", b.name);
        // The new backup first shows up waiting for its snapshot.
        let (new_backup, on) = (format!("web/{}: ", b1.name), format!(" on {}", b1.host));
        let appeared = text
            .lines()
            .any(|line| line.contains(&new_backup) && line.ends_with(&on));
        (text.contains(&took_over) && appeared).then_some(text)
    });
    let _ = watcher.kill();
    let _ = watcher.wait();
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    let text = watched.lock().map(|t| t.clone()).unwrap_or_default();
    let told = told.unwrap_or_else(|| panic!("the watch did not tell the failover:\n{text}"));
    assert!(told.contains(" HOST "), "{told}");

    // The survivor's agent's page, in a browser, against the status.
    let page = cluster.agent_http(&b.host);
    let expected: BTreeMap<String, String> = vm_states(&status_json(&cluster))
        .into_iter()
        .map(|(key, (_, state))| (key, state))
        .collect();
    let page_dom = dom(&format!("http://{page}/"));
    assert!(
        page_dom.contains("src=\"/pairs/web/plot.svg"),
        "no timeline of the pair on the page"
    );
    assert!(
        page_dom.contains("data-redrawn="),
        "the page's script did not run"
    );
    let survivor_row = format!("<td>web/{}</td><td>{}</td>", b.name, b.host);
    assert!(
        page_dom.contains(&survivor_row),
        "the page does not put {} on {}",
        b.name,
        b.host
    );
    for host in ["h1", "h2", "h3"].iter().filter(|h| **h != p.host) {
        assert!(
            page_dom.contains(&format!("<tr data-host=\"{host}\">")),
            "no row for host {host} on the page"
        );
    }
    let shown = page_states(&page_dom);
    assert_eq!(
        shown, expected,
        "the page against ftvm cluster status --json"
    );
    assert!(
        expected.get(&format!("web/{}", b.name)) == Some(&"primary".to_string()),
        "{expected:?}"
    );
    let plot =
        get(page, "/pairs/web/plot.svg").expect("the pair's timeline on the survivor's host");
    assert!(plot.starts_with("<svg"), "{}", &plot[..plot.len().min(200)]);
    drop(prometheus);

    // A migration shows its clone on a terminal (`script` gives it one),
    // as the guest's agent tells how far it has come; tried up to three
    // times, since a clone can be over between two looks.
    let mut migrate = cluster.ftvm(&["cluster", "migrate", "--pair", "web", "--vm", "backup"]);
    migrate.args(cluster.store_args());
    let command = support::describe(&migrate);
    let drew = (0..3).any(|_| {
        let on_terminal = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("script (util-linux)");
        let drawn = String::from_utf8_lossy(&on_terminal.stdout);
        assert!(on_terminal.status.success(), "{drawn}\n{}", cluster.diag());
        drawn.contains("cloning web/")
    });
    assert!(
        drew,
        "no clone's progress on a terminal in three migrations"
    );
    let piped = migrate.output().expect("ftvm cluster migrate");
    let said = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "{said}\n{}", cluster.diag());
    assert!(
        !said.contains("cloning"),
        "a progress bar without a terminal: {said}"
    );
}
