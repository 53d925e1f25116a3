//! `ftvm status --watch`: the pair's VMs as a table redrawn in place, with
//! the events seen between two looks (a VM's state changing, a suspicion,
//! a take-over, a clone), until interrupted or until no VM of the pair
//! runs any more. On a terminal the screen is redrawn; elsewhere each
//! table is printed after the last, for a log or a test.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ftvm_host::status::{StatusLine, SwitchStatus};

use crate::pair::{read_switch, read_vms};

/// How many recent events the table keeps below it.
const EVENTS_KEPT: usize = 8;

pub fn watch(dir: &Path, every: Duration) -> Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal();
    let mut before: Vec<StatusLine> = Vec::new();
    let mut events: Vec<String> = Vec::new();
    let mut seen_running = false;
    loop {
        let vms = read_vms(dir);
        let lines: Vec<StatusLine> = vms.iter().map(|vm| vm.describe()).collect();
        let stamp = clock();
        for event in changes(&before, &lines) {
            events.push(format!("{stamp} {event}"));
        }
        let excess = events.len().saturating_sub(EVENTS_KEPT);
        events.drain(..excess);
        let running = vms.iter().any(|vm| vm.running());
        seen_running |= running;
        let mut screen = String::new();
        if terminal {
            // Home and clear: the table replaces the last one.
            screen.push_str("\x1b[H\x1b[2J");
        }
        screen.push_str(&table(dir, &lines, read_switch(dir).as_ref(), &stamp));
        for event in &events {
            screen.push_str(&format!("  {event}\n"));
        }
        if !terminal {
            screen.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(screen.as_bytes())
            .and_then(|()| stdout.flush())
            .context("writing to stdout")?;
        drop(stdout);
        before = lines;
        if lines_done(&before, seen_running, running) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(every);
    }
}

/// The pair is over: it ran, and no VM of it runs any more (or there was
/// never anything to watch).
fn lines_done(lines: &[StatusLine], seen_running: bool, running: bool) -> bool {
    lines.is_empty() || (seen_running && !running)
}

/// The time of day, UTC, to the second.
fn clock() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02}Z",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// One row per VM and one for the switch.
fn table(dir: &Path, vms: &[StatusLine], switch: Option<&SwitchStatus>, stamp: &str) -> String {
    let mut out = format!("ftvm pair in {} at {stamp}\n", dir.display());
    out.push_str(&format!(
        "{:<9} {:>8} {:<9} {:>5} {:>7} {:>9} {:>9} {:>10} {:>8} {:>6}\n",
        "VM", "PID", "STATE", "EPOCH", "LAG", "LAG MS", "LOG MBIT", "DELAY MS", "P99 MS", "CLONES"
    ));
    for line in vms {
        let name = line.name.as_deref().unwrap_or("?");
        let (lag, lag_ms, rate, delay, p99) = line.measures.as_ref().map_or(
            ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
            |m| {
                (
                    m.lag_entries.to_string(),
                    format!("{:.1}", m.lag_ms),
                    format!("{:.3}", m.log_mbit_s),
                    format!("{:.2}", m.delay_ms),
                    format!("{:.2}", m.delay_p99_ms),
                )
            },
        );
        out.push_str(&format!(
            "{:<9} {:>8} {:<9} {:>5} {:>7} {:>9} {:>9} {:>10} {:>8} {:>6}\n",
            name,
            line.pid,
            line.state.as_str(),
            line.epoch.map_or("-".into(), |e| e.to_string()),
            lag,
            lag_ms,
            rate,
            delay,
            p99,
            line.clones
        ));
    }
    if let Some(s) = switch {
        out.push_str(&format!(
            "switch    {:>8} ports={} moves={} expired={} refused={}\n",
            s.pid, s.ports, s.moves, s.expired, s.refused
        ));
    }
    out
}

/// What changed from `before` to `now`, VM by VM (by name).
fn changes(before: &[StatusLine], now: &[StatusLine]) -> Vec<String> {
    let mut events = Vec::new();
    for line in now {
        let name = line.name.as_deref().unwrap_or("?");
        let Some(was) = before.iter().find(|b| b.name == line.name) else {
            events.push(format!("{name}: {}", line.state.as_str()));
            continue;
        };
        if was.state != line.state {
            events.push(format!(
                "{name}: {} -> {}",
                was.state.as_str(),
                line.state.as_str()
            ));
        }
        if line.suspected && !was.suspected {
            events.push(format!("{name}: suspects its peer"));
        }
        if line.took_over && !was.took_over {
            events.push(format!("{name}: took over"));
        }
        if line.clones > was.clones {
            events.push(format!("{name}: clone {} protects it", line.clones));
        }
        if line.epoch != was.epoch {
            if let Some(epoch) = line.epoch {
                events.push(format!("{name}: epoch {epoch}"));
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftvm_host::status::VmState;

    fn line(name: &str, state: VmState) -> StatusLine {
        StatusLine {
            name: Some(name.into()),
            epoch: Some(1),
            ..StatusLine::new(state, 7)
        }
    }

    #[test]
    fn a_failover_reads_as_events() {
        let before = [
            line("primary", VmState::Primary),
            line("backup", VmState::Backup),
        ];
        let mut live = line("backup", VmState::Live);
        live.suspected = true;
        live.took_over = true;
        let now = [
            line("primary", VmState::Dead),
            live,
            line("vm3", VmState::Waiting),
        ];
        assert_eq!(
            changes(&before, &now),
            [
                "primary: primary -> dead",
                "backup: backup -> live",
                "backup: suspects its peer",
                "backup: took over",
                "vm3: waiting",
            ]
        );
        assert!(changes(&now, &now).is_empty());
    }

    #[test]
    fn the_table_has_a_row_per_vm_and_the_switch() {
        let vms = [line("primary", VmState::Primary)];
        let switch = SwitchStatus {
            pid: 3,
            ports: 2,
            addr: "127.0.0.1:1".into(),
            moves: 1,
            expired: 0,
            refused: 0,
            metrics: None,
        };
        let text = table(Path::new("/d"), &vms, Some(&switch), "12:00:00Z");
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 4, "{text}");
        assert!(
            rows[2].starts_with("primary") && rows[2].contains(" primary "),
            "{text}"
        );
        assert!(
            rows[3].starts_with("switch") && rows[3].contains("moves=1"),
            "{text}"
        );
    }
}
