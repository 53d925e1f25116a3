//! The agents' status pages: small HTML pages of their VMs (as `ftvm
//! status` shows them, and the timelines `ftvm plot` draws), served over
//! HTTP by `ftvm agent --http HOST:PORT` and redrawn in the browser every
//! second from `/status.json`. An agent of one pair shows the pair; an
//! agent of a cluster (`--cluster`) shows the whole cluster (see
//! [`crate::cluster::view`]) and the timelines of the pairs whose VMs ran
//! on its host.
//!
//! Routes: `/` (the page; its tables are rendered here, so it reads right
//! without script too), `/status.json` (what `ftvm status --json`, or
//! `ftvm cluster status --json`, prints), `/plot.svg` (a pair's timeline;
//! on a cluster `/pairs/PAIR/plot.svg`), `/metrics` (the agent's own, in
//! Prometheus's text format); on a cluster also `/sd.json`, the scrape
//! targets of every agent and VM for Prometheus's HTTP service discovery.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ftvm_host::metrics::{Answer, Request, serve_http};

use crate::pair::{pair_status, read_vms};
use crate::watch::Row;

/// What the agent has done, for its metrics.
#[derive(Clone, Default)]
pub struct AgentCounters(Arc<Mutex<Counts>>);

#[derive(Clone, Copy, Default)]
struct Counts {
    restores: u64,
    failures: u64,
    last_seconds: f64,
    last_pause_ms: f64,
    migrations: u64,
    migration_failures: u64,
}

impl AgentCounters {
    /// A restore that took `took`: `pause_ms`, the guest's pause for its
    /// snapshot, if it protected the VM; `None` if it failed.
    pub fn restore(&self, pause_ms: Option<f64>, took: Duration) {
        if let Ok(mut counts) = self.0.lock() {
            match pause_ms {
                Some(pause_ms) => {
                    counts.restores += 1;
                    counts.last_seconds = took.as_secs_f64();
                    counts.last_pause_ms = pause_ms;
                }
                None => counts.failures += 1,
            }
        }
    }

    /// A migration this agent drove, and whether it worked.
    pub fn migration(&self, worked: bool) {
        if let Ok(mut counts) = self.0.lock() {
            if worked {
                counts.migrations += 1;
            } else {
                counts.migration_failures += 1;
            }
        }
    }

    /// The agent's metrics, labelled with `labels`: `vms_running` on its
    /// host; for a cluster's agent, whether its host is `registered` in
    /// the store.
    pub fn metrics(
        &self,
        labels: Vec<(&'static str, String)>,
        vms_running: usize,
        registered: Option<bool>,
    ) -> String {
        use ftvm_host::metrics::{Kind, Text};
        let counts = self.0.lock().map(|c| *c).unwrap_or_default();
        let mut text = Text::new(labels);
        text.one(
            "ftvm_agent_restores_total",
            "Times the agent gave a VM running alone a new backup that protects it.",
            Kind::Counter,
            counts.restores as f64,
        );
        text.one(
            "ftvm_agent_restore_failures_total",
            "Restores that failed (each is tried again later).",
            Kind::Counter,
            counts.failures as f64,
        );
        text.one(
            "ftvm_agent_last_restore_seconds",
            "How long the last restore took, from starting the new backup to its protecting the VM.",
            Kind::Gauge,
            counts.last_seconds,
        );
        text.one(
            "ftvm_agent_last_clone_pause_seconds",
            "How long the guest stood still for the last restore's snapshot.",
            Kind::Gauge,
            counts.last_pause_ms / 1e3,
        );
        text.one(
            "ftvm_agent_vms_running",
            "VMs whose processes run on the agent's host (for the agent of one pair: the pair's).",
            Kind::Gauge,
            vms_running as f64,
        );
        if let Some(registered) = registered {
            text.one(
                "ftvm_agent_migrations_total",
                "Migrations of a pair's VM that the agent drove to the end.",
                Kind::Counter,
                counts.migrations as f64,
            );
            text.one(
                "ftvm_agent_migration_failures_total",
                "Migrations the agent drove that failed.",
                Kind::Counter,
                counts.migration_failures as f64,
            );
            text.one(
                "ftvm_agent_registered",
                "1 while the host is registered in the cluster store under a live lease.",
                Kind::Gauge,
                if registered { 1.0 } else { 0.0 },
            );
        }
        text.finish()
    }
}

/// Serve `handle` on `addr` (see [`serve_http`]); the address listened
/// on.
pub fn listen(
    addr: SocketAddr,
    handle: impl Fn(&Request) -> Answer + Send + Sync + 'static,
) -> Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("listening for the page on {addr}"))?;
    let local = listener.local_addr().context("the page's address")?;
    serve_http(listener, "page", handle).context("starting the page's thread")?;
    Ok(local)
}

/// Serve the page of the pair in `dir` on `addr`, with the agent's
/// `counters` as its metrics; the address listened on.
pub fn serve(addr: SocketAddr, dir: &Path, counters: AgentCounters) -> Result<SocketAddr> {
    let dir = dir.to_path_buf();
    listen(addr, move |request| answer(request, &dir, &counters))
}

fn answer(request: &Request, dir: &Path, counters: &AgentCounters) -> Answer {
    match request.path.as_str() {
        "/" => Answer::ok("text/html; charset=utf-8", page(dir)),
        "/status.json" => json(&pair_status(dir)),
        "/metrics" => {
            let running = read_vms(dir).iter().filter(|vm| vm.running()).count();
            metrics_answer(counters.metrics(
                vec![("pair_dir", dir.display().to_string())],
                running,
                None,
            ))
        }
        "/plot.svg" => plot(dir),
        _ => Answer::not_found("not here\n"),
    }
}

pub fn json(value: &impl serde::Serialize) -> Answer {
    match serde_json::to_vec(value) {
        Ok(json) => Answer::ok("application/json", json),
        Err(e) => Answer::not_found(format!("{e}\n")),
    }
}

pub fn metrics_answer(text: String) -> Answer {
    Answer::ok("text/plain; version=0.0.4; charset=utf-8", text)
}

/// The timeline of the VMs whose histories are in `dir`.
pub fn plot(dir: &Path) -> Answer {
    match crate::plot::svg(dir, (1100, 820)) {
        Ok(svg) => Answer::ok("image/svg+xml", svg),
        Err(e) => Answer::not_found(format!("{e:#}\n")),
    }
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One table row per VM (with its host's cell if it has one); the same as
/// the page's script draws.
fn rows(vms: &[Row]) -> String {
    let mut out = String::new();
    for row in vms {
        let line = &row.line;
        let name = escape(&row.key);
        let host = row
            .host
            .as_deref()
            .map_or(String::new(), |h| format!("<td>{}</td>", escape(h)));
        let m = line.measures.as_ref();
        let cell = |f: &dyn Fn(&ftvm_host::status::Measures) -> String| m.map_or("-".into(), f);
        out.push_str(&format!(
            "<tr data-vm=\"{name}\" data-state=\"{state}\"><td>{name}</td>{host}<td>{pid}</td>\
             <td class=\"state {state}\">{state}</td><td>{epoch}</td><td>{lag}</td>\
             <td>{lag_ms}</td><td>{rate}</td><td>{delay}</td><td>{p99}</td><td>{clones}</td></tr>\n",
            state = line.state.as_str(),
            pid = line.pid,
            epoch = line.epoch.map_or("-".into(), |e| e.to_string()),
            lag = cell(&|m| m.lag_entries.to_string()),
            lag_ms = cell(&|m| format!("{:.1}", m.lag_ms)),
            rate = cell(&|m| format!("{:.3}", m.log_mbit_s)),
            delay = cell(&|m| format!("{:.2}", m.delay_ms)),
            p99 = cell(&|m| format!("{:.2}", m.delay_p99_ms)),
            clones = line.clones,
        ));
    }
    out
}

/// What a page shows.
pub struct Page<'a> {
    pub title: &'a str,
    /// A sentence under the title (HTML).
    pub intro: &'a str,
    pub vms: &'a [Row],
    /// Whether the VMs' table has a host column.
    pub hosts_column: bool,
    /// HTML under the VMs' table (the switch, the hosts).
    pub below: &'a str,
    /// The timelines: (heading, image address).
    pub plots: &'a [(String, String)],
}

fn page(dir: &Path) -> String {
    let status = pair_status(dir);
    let switch = status.switch.as_ref().map_or(String::new(), |s| {
        format!(
            "switch pid {} on {}: {} VM ports, {} address moves, {} expired, {} refused",
            s.pid,
            escape(&s.addr),
            s.ports,
            s.moves,
            s.expired,
            s.refused
        )
    });
    let vms = crate::watch::pair_rows(&read_vms(dir));
    let title = format!("ftvm pair {}", dir_name(dir));
    html(&Page {
        title: &title,
        intro: "Redrawn every second; <a href=\"/status.json\">status.json</a> is what \
                <code>ftvm status --json</code> prints.",
        vms: &vms,
        hosts_column: false,
        below: &format!("<p id=\"switch\">{switch}</p>"),
        plots: &[("Timeline".into(), "/plot.svg".into())],
    })
}

/// The page, with the script that redraws its tables every second from
/// `/status.json` (a pair's or a cluster's) and its timelines every five.
pub fn html(page: &Page) -> String {
    let title = escape(page.title);
    let host_head = if page.hosts_column {
        "<th>host</th>"
    } else {
        ""
    };
    let plots: String = page
        .plots
        .iter()
        .map(|(heading, src)| {
            format!(
                "<h2>{}</h2>\n<img class=\"plot\" src=\"{src}\" data-src=\"{src}\" \
                 alt=\"the history of the VMs, as ftvm plot draws it\" width=\"1100\">\n",
                escape(heading),
                src = escape(src),
            )
        })
        .collect();
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }}
th:first-child, td:first-child, td.state {{ text-align: left; }}
td.primary {{ color: #2e8b57; }} td.backup {{ color: #4682b4; }}
td.live {{ color: #e67e22; }} td.cloning {{ color: #8e44ad; }}
td.dead, td.halted, td.ended {{ color: #7f8c8d; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{intro}</p>
<table id="vms"><thead><tr><th>VM</th>{host_head}<th>pid</th><th>state</th><th>epoch</th>
<th>lag</th><th>lag ms</th><th>log Mbit/s</th><th>delay ms</th><th>p99 ms</th>
<th>clones</th></tr></thead>
<tbody>
{rows}</tbody></table>
{below}
{plots}<script>
const fmt = (v, d) => (v === undefined || v === null) ? "-" : v.toFixed(d);
const esc = s => String(s).replace(/[&<>"]/g, c => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}})[c]);
// A pair's status lists status lines; a cluster's lists VMs with their
// pair and host around the line.
const row = v => v.vm
  ? {{key: `${{v.pair}}/${{v.vm.name || "?"}}`, host: v.host + (v.seen === "store" ? "*" : ""), line: v.vm}}
  : {{key: v.name || "?", host: null, line: v}};
async function redraw() {{
  try {{
    const status = await (await fetch("/status.json", {{cache: "no-store"}})).json();
    const rows = status.vms.map(row).map(({{key, host, line: v}}) => {{
      const m = v.measures || {{}};
      const name = esc(key);
      const hostCell = host === null ? "" : `<td>${{esc(host)}}</td>`;
      return `<tr data-vm="${{name}}" data-state="${{v.state}}"><td>${{name}}</td>${{hostCell}}<td>${{v.pid}}</td>` +
        `<td class="state ${{v.state}}">${{v.state}}</td><td>${{v.epoch ?? "-"}}</td>` +
        `<td>${{m.lag_entries ?? "-"}}</td><td>${{fmt(m.lag_ms, 1)}}</td>` +
        `<td>${{fmt(m.log_mbit_s, 3)}}</td><td>${{fmt(m.delay_ms, 2)}}</td>` +
        `<td>${{fmt(m.delay_p99_ms, 2)}}</td><td>${{v.clones}}</td></tr>`;
    }});
    document.querySelector("#vms tbody").innerHTML = rows.join("\n");
    const switchText = document.getElementById("switch");
    if (switchText) {{
      const s = status.switch;
      switchText.innerHTML = s ? `switch pid ${{s.pid}} on ` +
        `${{esc(s.addr)}}: ${{s.ports}} VM ports, ${{s.moves}} address moves, ` +
        `${{s.expired}} expired, ${{s.refused}} refused` : "";
    }}
    const hosts = document.querySelector("#hosts tbody");
    if (hosts && status.hosts) {{
      hosts.innerHTML = status.hosts.map(h =>
        `<tr data-host="${{esc(h.name)}}"><td>${{esc(h.name)}}</td><td>${{esc(h.agent)}}</td>` +
        `<td>${{h.free_mib}}</td><td>${{h.vms}}</td><td>${{h.answered ? "yes" : "no"}}</td></tr>`).join("\n");
    }}
    // Says that the script drew the table (and when), for whoever checks.
    document.getElementById("vms").dataset.redrawn = new Date().toISOString();
  }} catch (e) {{}}
}}
// The next look a second after the last one ended: a slow answer (a
// host down) is never asked for twice at once.
let ticks = 0;
async function again() {{
  await redraw();
  if (++ticks % 5 === 0) {{
    for (const img of document.querySelectorAll("img.plot")) img.src = img.dataset.src + "?" + ticks;
  }}
  setTimeout(again, 1000);
}}
setTimeout(again, 1000);
</script>
</body></html>
"##,
        intro = page.intro,
        rows = rows(page.vms),
        below = page.below,
    )
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Where the agent of the pair in `dir` says its page is.
pub fn address_file(dir: &Path) -> PathBuf {
    dir.join("agent.http")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftvm_host::status::{StatusLine, VmState};

    #[test]
    fn rows_carry_each_vm_and_its_state_escaped() {
        let line = StatusLine {
            name: Some("a<b".into()),
            epoch: Some(2),
            ..StatusLine::new(VmState::Live, 9)
        };
        let row = Row {
            key: "a<b".into(),
            host: None,
            line,
        };
        let html = rows(&[row]);
        assert!(
            html.starts_with(
                "<tr data-vm=\"a&lt;b\" data-state=\"live\"><td>a&lt;b</td><td>9</td>"
            ),
            "{html}"
        );
        assert!(html.contains("<td>2</td>"), "{html}");
    }

    #[test]
    fn a_cluster_row_has_its_hosts_cell() {
        let row = Row {
            key: "web/vm2".into(),
            host: Some("h2".into()),
            line: StatusLine::new(VmState::Backup, 9),
        };
        let html = rows(&[row]);
        assert!(
            html.contains("<td>web/vm2</td><td>h2</td><td>9</td>"),
            "{html}"
        );
    }
}
