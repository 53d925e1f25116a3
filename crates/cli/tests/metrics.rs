//! A pair's metrics as an operator's Prometheus sees them: `ftvm up`
//! gives each VM and the pair's switch a metrics endpoint on a free
//! loopback port (named in its status line); each endpoint passes
//! `promtool check metrics`; and a real Prometheus server (Debian's
//! `prometheus`, which `scripts/deps` installs), started here and
//! scraping them every second, answers queries about the pair: the
//! backup's lag, the VMs' states, the switch's frames, and the failover
//! counter and the address's move to the backup's port, before and after
//! the primary is killed.

mod support;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use support::http::{Prometheus, get, promtool_check};
use support::pair::{Pair, Vm, VmState};
use support::signal;
use support::ticks::*;

#[test]
fn prometheus_follows_a_pair_across_a_failover() {
    let _serial = support::serial();
    let mut pair = Pair::new("metrics");
    let forwarded = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut args = guest(TICK_CMD, &SLACK);
    args.extend([
        "--net".to_string(),
        format!("user,hostfwd=tcp:{forwarded}-:7"),
    ]);
    let (primary, _backup) = pair.up(&args);
    pair.wait_tick(3, BOOT_LIMIT, "booting");
    let endpoint = |vm: Vm| {
        pair.status(vm)
            .and_then(|line| line.metrics)
            .unwrap_or_else(|| panic!("the {vm}'s status names no metrics\n{}", pair.diag()))
    };
    let switch = pair
        .switch_status()
        .and_then(|s| s.metrics)
        .unwrap_or_else(|| panic!("the switch's status names no metrics\n{}", pair.diag()));
    let targets = [endpoint(Vm::Primary), endpoint(Vm::Backup), switch];
    for (who, addr) in ["primary", "backup", "switch"].into_iter().zip(targets) {
        let text = get(addr, "/metrics").unwrap_or_else(|| panic!("no metrics from the {who}"));
        if let Err(complaints) = promtool_check(&text) {
            panic!("promtool check metrics on the {who}'s:\n{complaints}\n{text}");
        }
        let expected = if who == "switch" {
            "ftvm_switch_address_moves_total{"
        } else {
            "ftvm_failovers_total{"
        };
        assert!(text.contains(expected), "{text}");
    }
    // A connection to the forwarded port: the gateway's SYN goes to the
    // VM, which has nothing on port 7 and resets it.
    assert!(
        TcpStream::connect_timeout(&forwarded, Duration::from_secs(10))
            .and_then(|mut s| s.read(&mut [0; 1]))
            .map_or(true, |n| n == 0),
        "something answered on the guest's port 7"
    );

    let prometheus = Prometheus::start(pair.dir(), &targets);
    // Everything scraped, and the pair as it is: one primary, one backup,
    // no failover, frames both ways through the switch.
    prometheus.wait_for("up", |r| r.len() == 3 && r.iter().all(|(_, v)| *v == 1.0));
    prometheus.wait_for(
        "ftvm_switch_frames_received_total{port=\"gateway\"} > 0 and on() \
         ftvm_switch_frames_delivered_total{port=\"gateway\"} > 0",
        |r| r.len() == 1,
    );
    let lag = prometheus.wait_for("ftvm_lag_seconds", |r| r.len() == 2);
    for (labels, value) in &lag {
        assert_eq!(labels["pair"], "ftvm", "{labels}");
        assert!(value.is_finite() && *value >= 0.0, "{labels}: {value}");
    }
    prometheus.wait_for(
        "ftvm_vm_state{state=\"primary\",vm=\"primary\"} == 1 or \
         ftvm_vm_state{state=\"backup\",vm=\"backup\"} == 1",
        |r| r.len() == 2,
    );
    // The primary measures its logging round trips.
    prometheus.wait_for(
        "ftvm_ack_round_trip_seconds_count{vm=\"primary\"} > 0",
        |r| r.len() == 1,
    );
    let before = prometheus.query("sum(ftvm_failovers_total)");
    assert_eq!(before.first().map(|(_, v)| *v), Some(0.0), "{before:?}");

    signal(primary, libc::SIGKILL);
    pair.wait_state(Vm::Backup, VmState::Live, FAILOVER_LIMIT);
    let failovers = prometheus.wait_for("ftvm_failovers_total{vm=\"backup\"}", |r| {
        r.len() == 1 && r[0].1 == 1.0
    });
    assert_eq!(failovers[0].0["pair"], "ftvm");
    prometheus.wait_for("ftvm_vm_state{state=\"live\",vm=\"backup\"}", |r| {
        r.len() == 1 && r[0].1 == 1.0
    });
    // The dead primary's target is down; the pair counts one failover,
    // and the switch the move of the VM's address to the backup's port.
    prometheus.wait_for("up{job=\"ftvm\"} == 0", |r| r.len() == 1);
    let total = prometheus.query("sum(ftvm_failovers_total)");
    assert_eq!(total.first().map(|(_, v)| *v), Some(1.0), "{total:?}");
    prometheus.wait_for("ftvm_switch_address_moves_total", |r| {
        r.len() == 1 && r[0].1 == 1.0
    });
    // Its lag as it runs alone: a number, nothing waits for a backup.
    prometheus.wait_for("ftvm_lag_seconds{vm=\"backup\"}", |r| {
        r.len() == 1 && r[0].1.is_finite()
    });
}
