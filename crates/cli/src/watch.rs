//! `ftvm status --watch` and `ftvm cluster status --watch`: VMs as a table
//! redrawn in place, with the events seen between two looks (a VM's state
//! changing, a suspicion, a take-over, a clone), until interrupted or, for
//! a pair, until no VM of it runs any more. On a terminal the screen is
//! redrawn; elsewhere each table is printed after the last, for a log or a
//! test.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ftvm_host::status::{StatusLine, SwitchStatus};

use crate::pair::{read_switch, read_vms};

/// How many recent events the table keeps below it.
const EVENTS_KEPT: usize = 8;

/// One VM in a table: what names it (its name in a pair's directory,
/// `PAIR/NAME` in a cluster), the host it runs on (a cluster's) and its
/// status.
pub struct Row {
    pub key: String,
    pub host: Option<String>,
    pub line: StatusLine,
}

/// What one look saw.
pub struct Look {
    /// The table's first line, before the time.
    pub title: String,
    pub rows: Vec<Row>,
    /// Lines below the VMs (the switch, the hosts).
    pub footer: Vec<String>,
    /// Nothing more will happen: the watch ends after this table.
    pub over: bool,
}

/// `ftvm status --watch` of the pair in `dir`.
pub fn watch(dir: &Path, every: Duration) -> Result<ExitCode> {
    let mut seen_running = false;
    watch_looks(every, || {
        let vms = read_vms(dir);
        let running = vms.iter().any(|vm| vm.running());
        seen_running |= running;
        let rows = pair_rows(&vms);
        Ok(Look {
            title: format!("ftvm pair in {}", dir.display()),
            over: rows.is_empty() || (seen_running && !running),
            footer: read_switch(dir).iter().map(switch_line).collect(),
            rows,
        })
    })
}

/// A pair's VMs as rows, by name.
pub fn pair_rows(vms: &[crate::pair::Vm]) -> Vec<Row> {
    vms.iter()
        .map(|vm| Row {
            key: vm.name.clone(),
            host: None,
            line: vm.describe(),
        })
        .collect()
}

/// Draw what `look` sees every `every`, with the events between looks,
/// until a look says it is over (or `look` fails).
pub fn watch_looks(every: Duration, mut look: impl FnMut() -> Result<Look>) -> Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal();
    let mut before: Vec<Row> = Vec::new();
    let mut events: Vec<String> = Vec::new();
    loop {
        let seen = look()?;
        let stamp = clock();
        for event in changes(&before, &seen.rows) {
            events.push(format!("{stamp} {event}"));
        }
        let excess = events.len().saturating_sub(EVENTS_KEPT);
        events.drain(..excess);
        let mut screen = String::new();
        if terminal {
            // Home and clear: the table replaces the last one.
            screen.push_str("\x1b[H\x1b[2J");
        }
        screen.push_str(&table(&seen, &stamp));
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
        if seen.over {
            return Ok(ExitCode::SUCCESS);
        }
        before = seen.rows;
        std::thread::sleep(every);
    }
}

fn switch_line(s: &SwitchStatus) -> String {
    format!(
        "switch    {:>8} ports={} moves={} expired={} refused={}",
        s.pid, s.ports, s.moves, s.expired, s.refused
    )
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

/// One row per VM (with a HOST column if any VM has a host), then the
/// footer.
fn table(look: &Look, stamp: &str) -> String {
    let mut out = format!("{} at {stamp}\n", look.title);
    let width = look
        .rows
        .iter()
        .map(|r| r.key.len())
        .max()
        .unwrap_or(0)
        .max(9);
    let hosts = look.rows.iter().any(|r| r.host.is_some());
    let host_width = look
        .rows
        .iter()
        .filter_map(|r| r.host.as_ref().map(String::len))
        .max()
        .unwrap_or(0)
        .max(4);
    let host_cell = |host: &str| {
        if hosts {
            format!("{host:<host_width$} ")
        } else {
            String::new()
        }
    };
    out.push_str(&format!(
        "{:<width$} {}{:>8} {:<9} {:>5} {:>7} {:>9} {:>9} {:>10} {:>8} {:>6}\n",
        "VM",
        host_cell("HOST"),
        "PID",
        "STATE",
        "EPOCH",
        "LAG",
        "LAG MS",
        "LOG MBIT",
        "DELAY MS",
        "P99 MS",
        "CLONES"
    ));
    for row in &look.rows {
        let line = &row.line;
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
            "{:<width$} {}{:>8} {:<9} {:>5} {:>7} {:>9} {:>9} {:>10} {:>8} {:>6}\n",
            row.key,
            host_cell(row.host.as_deref().unwrap_or("-")),
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
    for line in &look.footer {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// What changed from `before` to `now`, VM by VM (by key).
fn changes(before: &[Row], now: &[Row]) -> Vec<String> {
    let mut events = Vec::new();
    for row in now {
        let (name, line) = (&row.key, &row.line);
        let Some(was) = before.iter().find(|b| b.key == row.key).map(|b| &b.line) else {
            let on = row
                .host
                .as_ref()
                .map(|h| format!(" on {h}"))
                .unwrap_or_default();
            events.push(format!("{name}: {}{on}", line.state.as_str()));
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

    fn line(name: &str, state: VmState) -> Row {
        Row {
            key: name.into(),
            host: None,
            line: StatusLine {
                name: Some(name.into()),
                epoch: Some(1),
                ..StatusLine::new(state, 7)
            },
        }
    }

    #[test]
    fn a_failover_reads_as_events() {
        let before = [
            line("primary", VmState::Primary),
            line("backup", VmState::Backup),
        ];
        let mut live = line("backup", VmState::Live);
        live.line.suspected = true;
        live.line.took_over = true;
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
        let switch = SwitchStatus {
            pid: 3,
            ports: 2,
            addr: "127.0.0.1:1".into(),
            moves: 1,
            expired: 0,
            refused: 0,
            metrics: None,
        };
        let look = Look {
            title: "ftvm pair in /d".into(),
            rows: vec![line("primary", VmState::Primary)],
            footer: vec![switch_line(&switch)],
            over: false,
        };
        let text = table(&look, "12:00:00Z");
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 4, "{text}");
        assert!(!rows[1].contains("HOST"), "{text}");
        assert!(
            rows[2].starts_with("primary") && rows[2].contains(" primary "),
            "{text}"
        );
        assert!(
            rows[3].starts_with("switch") && rows[3].contains("moves=1"),
            "{text}"
        );
    }

    #[test]
    fn a_cluster_table_names_each_vms_host() {
        let mut row = line("web/vm2", VmState::Backup);
        row.host = Some("h3".into());
        let look = Look {
            title: "ftvm cluster".into(),
            rows: vec![row],
            footer: Vec::new(),
            over: false,
        };
        let text = table(&look, "12:00:00Z");
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[1].contains(" HOST "), "{text}");
        let cells: Vec<&str> = rows[2].split_whitespace().collect();
        assert_eq!(cells[..4], ["web/vm2", "h3", "7", "backup"], "{text}");
        let appeared = changes(&[], &look.rows);
        assert_eq!(appeared, ["web/vm2: backup on h3"]);
    }
}
