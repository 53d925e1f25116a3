//! Metrics in Prometheus's text format (version 0.0.4), served over HTTP
//! at `/metrics` by each long-running process that is given `--metrics
//! HOST:PORT`.
//!
//! The process renders its metrics as text whenever its numbers change
//! enough to matter (a VM: with its status line, five times a second) and
//! the server thread answers every scrape with the last text: a scrape
//! never waits for the run loop, and the run loop never waits for a
//! scrape. One connection at a time: Prometheus scrapes each target from
//! one place, every few seconds.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::HostError;

/// The text the server answers with; the process replaces it.
#[derive(Clone, Default)]
pub struct Exposition(Arc<Mutex<String>>);

impl Exposition {
    pub fn set(&self, text: String) {
        if let Ok(mut current) = self.0.lock() {
            *current = text;
        }
    }

    fn get(&self) -> String {
        self.0.lock().map(|text| text.clone()).unwrap_or_default()
    }
}

/// Serve `/metrics` on `addr` (port 0: any free port) from a thread of its
/// own; the address listened on, and the text to keep up to date.
pub fn serve(addr: SocketAddr) -> Result<(SocketAddr, Exposition), HostError> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| HostError::io(format!("listening for metrics scrapes on {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| HostError::io("the metrics listener's address", e))?;
    let exposition = Exposition::default();
    let text = exposition.clone();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = answer(stream, &text) {
                            tracing::debug!(%e, "a metrics scrape failed");
                        }
                    }
                    Err(e) => tracing::debug!(%e, "accepting a metrics scrape"),
                }
            }
        })
        .map_err(|e| HostError::io("starting the metrics thread", e))?;
    Ok((local, exposition))
}

/// Read one HTTP request and answer it: the metrics for `GET /metrics`,
/// 404 for any other path, 405 for any other method.
fn answer(stream: TcpStream, text: &Exposition) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers, to their blank line; none of them matters here.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut words = request.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", text.get()),
        ("GET" | "HEAD", _) => ("404 Not Found", "try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", String::new()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// A metric family's kind.
#[derive(Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Builds an exposition: families of samples that share `labels`.
pub struct Text {
    out: String,
    labels: Vec<(&'static str, String)>,
}

impl Text {
    /// Every sample will carry `labels` (after its own).
    pub fn new(labels: Vec<(&'static str, String)>) -> Text {
        Text {
            out: String::new(),
            labels,
        }
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, extra: &[(&str, &str)], value: f64) {
        let mut labels = String::new();
        let all = extra
            .iter()
            .map(|(k, v)| (*k, *v))
            .chain(self.labels.iter().map(|(k, v)| (*k, v.as_str())));
        for (i, (key, value)) in all.enumerate() {
            if i > 0 {
                labels.push(',');
            }
            let _ = write!(labels, "{key}=\"{}\"", escape_label(value));
        }
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {}", number(value));
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {}", number(value));
        }
    }

    /// One family of one sample.
    pub fn one(&mut self, name: &str, help: &str, kind: Kind, value: f64) {
        self.many(name, help, kind, &[(&[], value)]);
    }

    /// One family of several samples, each with labels of its own.
    pub fn many(&mut self, name: &str, help: &str, kind: Kind, samples: &[(&[(&str, &str)], f64)]) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        self.header(name, help, kind);
        for (labels, value) in samples {
            self.sample(name, labels, *value);
        }
    }

    /// A histogram: cumulative counts at the `bounds` (seconds), then
    /// `+Inf`, the sum and the count.
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.header(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
            cumulative += count;
            self.sample(&bucket, &[("le", &number(*bound))], cumulative as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], histogram.count as f64);
        self.sample(&format!("{name}_sum"), &[], histogram.sum);
        self.sample(&format!("{name}_count"), &[], histogram.count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Observations counted into fixed buckets, as a Prometheus histogram
/// keeps them: counts per bucket (not yet cumulative), their sum, their
/// number.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&bound| value <= bound) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }
}

/// A sample value as Prometheus writes one.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escapes_follow_the_text_format() {
        let mut text = Text::new(vec![("pair", "a \"b\"\\c".into())]);
        text.one("ftvm_epoch", "The epoch.", Kind::Gauge, 2.0);
        text.many(
            "ftvm_state",
            "One per state.",
            Kind::Gauge,
            &[(&[("state", "live")], 1.0), (&[("state", "backup")], 0.0)],
        );
        let text = text.finish();
        assert_eq!(
            text,
            "# HELP ftvm_epoch The epoch.\n# TYPE ftvm_epoch gauge\n\
             ftvm_epoch{pair=\"a \\\"b\\\"\\\\c\"} 2\n\
             # HELP ftvm_state One per state.\n# TYPE ftvm_state gauge\n\
             ftvm_state{state=\"live\",pair=\"a \\\"b\\\"\\\\c\"} 1\n\
             ftvm_state{state=\"backup\",pair=\"a \\\"b\\\"\\\\c\"} 0\n"
        );
    }

    #[test]
    fn a_histogram_is_cumulative_with_inf_sum_and_count() {
        let mut histogram = Histogram::new(&[0.001, 0.01]);
        for value in [0.0005, 0.002, 0.003, 5.0] {
            histogram.observe(value);
        }
        let mut text = Text::new(vec![]);
        text.histogram("d_seconds", "Delays.", &histogram);
        let text = text.finish();
        assert!(
            text.contains("d_seconds_bucket{le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("d_seconds_bucket{le=\"0.01\"} 3\n"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("d_seconds_sum 5.0055\n"), "{text}");
        assert!(text.contains("d_seconds_count 4\n"), "{text}");
    }

    #[test]
    fn the_server_answers_metrics_and_nothing_else() {
        let (addr, text) = serve("127.0.0.1:0".parse().expect("addr")).expect("serve");
        text.set("x 1\n".into());
        let get = |path: &str| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
            let mut answer = String::new();
            std::io::Read::read_to_string(&mut stream, &mut answer).expect("answer");
            answer
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("version=0.0.4"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nx 1\n"), "{ok}");
        assert!(get("/").starts_with("HTTP/1.1 404"));
    }
}
