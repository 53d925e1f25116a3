//! HTTP as the operator's tools speak it: a plain GET, Prometheus's
//! `promtool check metrics`, a Prometheus server of the test's own, and
//! a page as headless Chromium leaves it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{poll, wait_or_kill};

/// `GET path` on `addr`: the body, if the answer is a 200.
pub fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

/// `promtool check metrics` of `text`: its complaints, if any.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (Debian's prometheus: run scripts/deps)");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("feeding promtool");
    let out = child.wait_with_output().expect("promtool's verdict");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

const PROMETHEUS_LIMIT: Duration = Duration::from_secs(60);

/// A Prometheus server of its own, ended with the test.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    /// Scraping `targets` every second, its data under `dir`.
    pub fn start(dir: &Path, targets: &[SocketAddr]) -> Prometheus {
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        Prometheus::start_with(
            dir,
            &format!(
                "  - job_name: ftvm\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
    }

    /// With `scrape_configs` (YAML, the list's items) as its scrape
    /// configuration.
    pub fn start_with(dir: &Path, scrape_configs: &str) -> Prometheus {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
             scrape_configs:\n{scrape_configs}"
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("writing prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus (Debian's prometheus: run scripts/deps)");
        let prometheus = Prometheus { child, addr };
        let ready = poll(PROMETHEUS_LIMIT, || get(addr, "/-/ready"));
        assert!(
            ready.is_some(),
            "prometheus never became ready; see {}",
            dir.join("prometheus.log").display()
        );
        prometheus
    }

    /// The instant vector `query` evaluates to: (labels, value) each.
    pub fn query(&self, query: &str) -> Vec<(Value, f64)> {
        let body = get(self.addr, &format!("/api/v1/query?query={}", encode(query)))
            .unwrap_or_else(|| panic!("prometheus did not answer {query:?}"));
        let answer: Value = serde_json::from_str(&body).expect("prometheus's JSON");
        assert_eq!(answer["status"], "success", "{query}: {answer}");
        answer["data"]["result"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .map(|r| {
                        let value = r["value"][1]
                            .as_str()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(f64::NAN);
                        (r["metric"].clone(), value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ask `query` again and again until `want` holds of its answer.
    pub fn wait_for(
        &self,
        query: &str,
        want: impl Fn(&[(Value, f64)]) -> bool,
    ) -> Vec<(Value, f64)> {
        let mut last = Vec::new();
        let found = poll(PROMETHEUS_LIMIT, || {
            last = self.query(query);
            want(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| panic!("prometheus's answer to {query:?} never held: {last:?}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encoding for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The page at `url` as Chromium leaves it after its script ran for a
/// (virtual) few seconds; a Chromium that hangs is killed after a minute.
pub fn dom(url: &str) -> String {
    let mut chromium = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running chromium (Debian's chromium: run scripts/deps)");
    let mut out = String::new();
    let reader = chromium.stdout.take().map(|mut stdout| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        })
    });
    let (_, killed) = wait_or_kill(&mut chromium, Duration::from_secs(60));
    if let Some(text) = reader.and_then(|r| r.join().ok()) {
        out = text;
    }
    assert!(!killed, "chromium hung on {url}");
    out
}

/// Each VM row of the page's table: name and state.
pub fn page_states(dom: &str) -> BTreeMap<String, String> {
    let mut states = BTreeMap::new();
    for row in dom.split("<tr data-vm=\"").skip(1) {
        let Some((name, rest)) = row.split_once('"') else {
            continue;
        };
        let Some(state) = rest
            .strip_prefix(" data-state=\"")
            .and_then(|r| r.split_once('"'))
            .map(|(state, _)| state)
        else {
            continue;
        };
        // The script's template literal is in the page too.
        if !name.starts_with('$') {
            states.insert(name.to_string(), state.to_string());
        }
    }
    states
}
