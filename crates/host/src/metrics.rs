//! Metrics in Prometheus's text format (version 0.0.4), served over HTTP
//! at `/metrics` by each long-running process that is given `--metrics
//! HOST:PORT`.
//!
//! The process renders its metrics as text whenever its numbers change
//! enough to matter (a VM: with its status line, five times a second) and
//! the server thread answers every scrape with the last text: a scrape
//! never waits for the run loop, and the run loop never waits for a
//! scrape. Each connection is answered in a thread of its own, a few at a
//! time ([`serve_http`]), and a request must arrive whole, small and soon:
//! a local process that connects and says nothing, or too much, holds one
//! of those threads for 2 s at most, never the VM's memory or the next
//! scrape.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    serve_http(listener, "metrics", move |request| {
        match request.path.as_str() {
            "/metrics" => Answer::ok("text/plain; version=0.0.4; charset=utf-8", text.get()),
            _ => Answer::not_found("try /metrics\n"),
        }
    })
    .map_err(|e| HostError::io("starting the metrics thread", e))?;
    Ok((local, exposition))
}

/// Connections answered at once; one more is closed unanswered.
const CONNECTIONS_MAX: usize = 8;
/// The most bytes a request (its line and headers) may take.
const REQUEST_MAX: usize = 8 << 10;
/// How long a whole request may take to arrive.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// An HTTP request, as much of it as these servers look at.
pub struct Request {
    pub method: String,
    /// Without its query string.
    pub path: String,
}

/// What to send back.
pub struct Answer {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status: "200 OK",
            content_type,
            body: body.into(),
        }
    }

    pub fn not_found(body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status: "404 Not Found",
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Answer `GET` and `HEAD` requests on `listener` with `handle`, each
/// connection in a thread of its own (named `name`), at most
/// eight at once; the accepting thread runs for ever.
pub fn serve_http(
    listener: TcpListener,
    name: &str,
    handle: impl Fn(&Request) -> Answer + Send + Sync + 'static,
) -> std::io::Result<()> {
    let handle = Arc::new(handle);
    let busy = Arc::new(AtomicUsize::new(0));
    let thread_name = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                // Given back when dropped: by the thread once it answered
                // (or panicked), or here when it is refused or never started.
                let slot = Slot::take(&busy);
                if busy.load(Ordering::Acquire) > CONNECTIONS_MAX {
                    continue;
                }
                let handle = handle.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name(thread_name.clone())
                        .spawn(move || {
                            let _slot = slot;
                            if let Err(e) = answer(stream, &*handle) {
                                tracing::debug!(%e, "an HTTP request failed");
                            }
                        });
                if spawned.is_err() {
                    tracing::debug!("no thread for an HTTP request");
                }
            }
        })
        .map(|_| ())
}

/// One of the [`serve_http`] connections that may be answered at once,
/// held until dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(busy: &Arc<AtomicUsize>) -> Slot {
        busy.fetch_add(1, Ordering::AcqRel);
        Slot(busy.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Read the request on `stream`: all of it within [`REQUEST_DEADLINE`]
/// and [`REQUEST_MAX`] bytes, or an error.
fn read_request(stream: &mut TcpStream) -> std::io::Result<Request> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 1024];
    while !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || bytes.len() > REQUEST_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "an HTTP request too slow or too long",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk)? {
            0 => break,
            n => bytes.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("");
    let path = path.split('?').next().unwrap_or("").to_string();
    Ok(Request { method, path })
}

fn answer(
    mut stream: TcpStream,
    handle: &(impl Fn(&Request) -> Answer + ?Sized),
) -> std::io::Result<()> {
    let request = read_request(&mut stream)?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let answer = match request.method.as_str() {
        "GET" | "HEAD" => handle(&request),
        _ => Answer {
            status: "405 Method Not Allowed",
            content_type: "text/plain; charset=utf-8",
            body: Vec::new(),
        },
    };
    write!(
        stream,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    )?;
    if request.method != "HEAD" {
        stream.write_all(&answer.body)?;
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

/// Observations counted into fixed buckets (the counting is the owner's,
/// e.g. `ftvm_node::Durations`), as a Prometheus histogram keeps them:
/// counts per bucket (not yet cumulative), their sum, their number.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
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
        // 0.0005 s; 0.002 and 0.003 s; 5 s, past the last bound.
        let histogram = Histogram {
            bounds: vec![0.001, 0.01],
            counts: vec![1, 2],
            sum: 5.0055,
            count: 4,
        };
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
            Read::read_to_string(&mut stream, &mut answer).expect("answer");
            answer
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("version=0.0.4"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nx 1\n"), "{ok}");
        assert!(get("/").starts_with("HTTP/1.1 404"));
        // A client that connects and says nothing, and one that says far
        // too much, hold up nobody, and the second gets nothing.
        let _silent = TcpStream::connect(addr).expect("connect");
        let mut flood = TcpStream::connect(addr).expect("connect");
        let _ = flood.write_all(&vec![b'x'; 64 << 10]);
        let started = Instant::now();
        assert!(get("/metrics").starts_with("HTTP/1.1 200 OK"));
        assert!(started.elapsed() < Duration::from_secs(1));
        flood
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut answer = Vec::new();
        let _ = Read::read_to_end(&mut flood, &mut answer);
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }
}
