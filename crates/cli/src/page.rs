//! The agent's status page: a small HTML page of the pair (its VMs and
//! switch as `ftvm status` shows them, and the timeline `ftvm plot`
//! draws), served over HTTP by `ftvm agent --http HOST:PORT` and redrawn
//! in the browser every second from `/status.json`.
//!
//! Routes: `/` (the page; its table is rendered here, so it reads right
//! without script too), `/status.json` (what `ftvm status --json` prints),
//! `/plot.svg` (the timeline of the VMs' histories), `/metrics` (the
//! agent's own, in Prometheus's text format).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ftvm_host::metrics::{Answer, Request, serve_http};
use ftvm_host::status::StatusLine;

use crate::pair::{pair_status, read_vms};

/// What the agent has done, for its metrics.
#[derive(Clone, Default)]
pub struct AgentCounters(Arc<Mutex<Counts>>);

#[derive(Clone, Copy, Default)]
struct Counts {
    restores: u64,
    failures: u64,
    last_seconds: f64,
    last_pause_ms: f64,
}

impl AgentCounters {
    /// A restore that took `took`, and how it went.
    pub fn count(&self, result: &Result<crate::restore::Restored>, took: Duration) {
        if let Ok(mut counts) = self.0.lock() {
            match result {
                Ok(restored) => {
                    counts.restores += 1;
                    counts.last_seconds = took.as_secs_f64();
                    counts.last_pause_ms = restored.pause_ms;
                }
                Err(_) => counts.failures += 1,
            }
        }
    }

    fn metrics(&self, dir: &Path) -> String {
        use ftvm_host::metrics::{Kind, Text};
        let counts = self.0.lock().map(|c| *c).unwrap_or_default();
        let vms = read_vms(dir);
        let mut text = Text::new(vec![("pair_dir", dir.display().to_string())]);
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
            "VMs of the pair whose processes run.",
            Kind::Gauge,
            vms.iter().filter(|vm| vm.running()).count() as f64,
        );
        text.finish()
    }
}

/// Serve the page of the pair in `dir` on `addr` (see
/// [`ftvm_host::metrics::serve_http`]), with the agent's `counters` as its
/// metrics; the address listened on.
pub fn serve(addr: SocketAddr, dir: &Path, counters: AgentCounters) -> Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("listening for the page on {addr}"))?;
    let local = listener.local_addr().context("the page's address")?;
    let dir = dir.to_path_buf();
    serve_http(listener, "page", move |request| {
        answer(request, &dir, &counters)
    })
    .context("starting the page's thread")?;
    Ok(local)
}

fn answer(request: &Request, dir: &Path, counters: &AgentCounters) -> Answer {
    match request.path.as_str() {
        "/" => Answer::ok("text/html; charset=utf-8", page(dir)),
        "/status.json" => match serde_json::to_vec(&pair_status(dir)) {
            Ok(json) => Answer::ok("application/json", json),
            Err(e) => Answer::not_found(format!("{e}\n")),
        },
        "/metrics" => Answer::ok(
            "text/plain; version=0.0.4; charset=utf-8",
            counters.metrics(dir),
        ),
        "/plot.svg" => match crate::plot::svg(dir, (1100, 820)) {
            Ok(svg) => Answer::ok("image/svg+xml", svg),
            Err(e) => Answer::not_found(format!("{e:#}\n")),
        },
        _ => Answer::not_found("not here\n"),
    }
}

/// The pair as `ftvm status --json` says it.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One table row per VM; the same as the page's script draws.
fn rows(vms: &[StatusLine]) -> String {
    let mut out = String::new();
    for line in vms {
        let name = escape(line.name.as_deref().unwrap_or("?"));
        let m = line.measures.as_ref();
        let cell = |f: &dyn Fn(&ftvm_host::status::Measures) -> String| m.map_or("-".into(), f);
        out.push_str(&format!(
            "<tr data-vm=\"{name}\" data-state=\"{state}\"><td>{name}</td><td>{pid}</td>\
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
    let title = escape(&dir_name(dir));
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ftvm pair {title}</title>
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
<h1>ftvm pair {title}</h1>
<p>Redrawn every second; <a href="/status.json">status.json</a> is what
<code>ftvm status --json</code> prints.</p>
<table id="vms"><thead><tr><th>VM</th><th>pid</th><th>state</th><th>epoch</th>
<th>lag</th><th>lag ms</th><th>log Mbit/s</th><th>delay ms</th><th>p99 ms</th>
<th>clones</th></tr></thead>
<tbody>
{rows}</tbody></table>
<p id="switch">{switch}</p>
<h2>Timeline</h2>
<img id="plot" src="/plot.svg" alt="the pair's history, as ftvm plot draws it" width="1100">
<script>
const fmt = (v, d) => (v === undefined || v === null) ? "-" : v.toFixed(d);
const esc = s => String(s).replace(/[&<>"]/g, c => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}})[c]);
async function redraw() {{
  try {{
    const status = await (await fetch("/status.json", {{cache: "no-store"}})).json();
    const rows = status.vms.map(v => {{
      const m = v.measures || {{}};
      const name = esc(v.name || "?");
      return `<tr data-vm="${{name}}" data-state="${{v.state}}"><td>${{name}}</td><td>${{v.pid}}</td>` +
        `<td class="state ${{v.state}}">${{v.state}}</td><td>${{v.epoch ?? "-"}}</td>` +
        `<td>${{m.lag_entries ?? "-"}}</td><td>${{fmt(m.lag_ms, 1)}}</td>` +
        `<td>${{fmt(m.log_mbit_s, 3)}}</td><td>${{fmt(m.delay_ms, 2)}}</td>` +
        `<td>${{fmt(m.delay_p99_ms, 2)}}</td><td>${{v.clones}}</td></tr>`;
    }});
    document.querySelector("#vms tbody").innerHTML = rows.join("\n");
    const s = status.switch;
    document.getElementById("switch").innerHTML = s ? `switch pid ${{s.pid}} on ` +
      `${{esc(s.addr)}}: ${{s.ports}} VM ports, ${{s.moves}} address moves, ` +
      `${{s.expired}} expired, ${{s.refused}} refused` : "";
    // Says that the script drew the table (and when), for whoever checks.
    document.getElementById("vms").dataset.redrawn = new Date().toISOString();
  }} catch (e) {{}}
}}
let ticks = 0;
setInterval(() => {{
  redraw();
  if (++ticks % 5 === 0) document.getElementById("plot").src = "/plot.svg?" + ticks;
}}, 1000);
</script>
</body></html>
"##,
        rows = rows(&status.vms),
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
    use ftvm_host::status::VmState;

    #[test]
    fn rows_carry_each_vm_and_its_state_escaped() {
        let line = StatusLine {
            name: Some("a<b".into()),
            epoch: Some(2),
            ..StatusLine::new(VmState::Live, 9)
        };
        let html = rows(&[line]);
        assert!(
            html.starts_with("<tr data-vm=\"a&lt;b\" data-state=\"live\">"),
            "{html}"
        );
        assert!(html.contains("<td>2</td>"), "{html}");
    }
}
