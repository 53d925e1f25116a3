//! The client of the FT tests that write to a guest's disk: numbered
//! durable writes on one TCP connection to a guest service that appends
//! each number to a file on its disk, syncs, and only then replies.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::poll;

/// The guest: a service on port 7 that appends each number it reads to
/// `/mnt/log`, syncs, and only then replies `ok N` (`probe` it answers
/// without writing); and a tick a second.
pub const WRITER_CMD: &str = "echo 'while read n; do case $n in probe) ;; *) echo $n >> /mnt/log; \
     sync;; esac; echo ok $n; done' > /tmp/w; nc -ll -p 7 -e sh /tmp/w & i=0; while true; do \
     echo tick $i; i=$((i+1)); sleep 1; done";
/// Booting the guest and the first reply, under load.
pub const BOOT_LIMIT: Duration = Duration::from_secs(150);
/// A reply, across a failover.
pub const REPLY_LIMIT: Duration = Duration::from_secs(60);

/// Numbered durable writes on one TCP connection, in a thread of its own:
/// each number is sent, and counts as acknowledged once `ok N` is back.
pub struct Writer {
    acked: Arc<AtomicU64>,
    /// The longest a write waited for its reply, in µs.
    slowest_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64, String>>>,
}

impl Writer {
    pub fn start(port: u16) -> Writer {
        let acked = Arc::new(AtomicU64::new(0));
        let slowest_us = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (Arc::clone(&acked), Arc::clone(&stop));
        let slowest = Arc::clone(&slowest_us);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            // Until the service listens, a connection is refused or ends
            // at once: a probe (which writes nothing, so that a probe
            // whose reply was only late is not a second write) finds out.
            let (mut stream, mut lines) = loop {
                if halt.load(Ordering::Relaxed) {
                    return Ok(0);
                }
                if start.elapsed() > BOOT_LIMIT {
                    return Err("the guest's service never answered".into());
                }
                if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    let mut lines = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
                    if request(&stream, &mut lines, "probe", Duration::from_secs(5)).is_ok() {
                        break (stream, lines);
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            };
            let mut n = 0;
            while !halt.load(Ordering::Relaxed) {
                let sent = Instant::now();
                write_one(&stream, &mut lines, n, REPLY_LIMIT)
                    .map_err(|e| format!("write {n} (after {n} acknowledged): {e}"))?;
                slowest.fetch_max(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                n += 1;
                count.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = stream.flush();
            Ok(n)
        });
        Writer {
            acked,
            slowest_us,
            stop,
            thread: Some(thread),
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// The longest wait for a reply so far (ms), and start again.
    pub fn take_slowest_ms(&self) -> f64 {
        self.slowest_us.swap(0, Ordering::Relaxed) as f64 / 1e3
    }

    /// Wait until `n` writes are acknowledged; false if not within
    /// `limit`, or if the client failed.
    pub fn wait_for(&self, n: u64, limit: Duration) -> bool {
        poll(limit, || {
            let finished = self.thread.as_ref().is_none_or(|t| t.is_finished());
            (self.acked() >= n || finished).then_some(())
        });
        self.acked() >= n
    }

    /// Stop; the writes acknowledged, or what went wrong.
    pub fn finish(&mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err("the client thread panicked".into()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Send `n` and wait for `ok n`.
pub fn write_one(
    stream: &TcpStream,
    lines: &mut BufReader<TcpStream>,
    n: u64,
    limit: Duration,
) -> Result<(), String> {
    request(stream, lines, &n.to_string(), limit)
}

/// Send the line `word` and wait for `ok WORD`.
pub fn request(
    mut stream: &TcpStream,
    lines: &mut BufReader<TcpStream>,
    word: &str,
    limit: Duration,
) -> Result<(), String> {
    stream
        .set_read_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("{word}\n").as_bytes())
        .map_err(|e| format!("sending: {e}"))?;
    let mut line = String::new();
    match lines.read_line(&mut line) {
        Ok(0) => Err("the connection ended".into()),
        Ok(_) if line.trim_end() == format!("ok {word}") => Ok(()),
        Ok(_) => Err(format!("the reply was {line:?}")),
        Err(e) => Err(format!("no reply: {e}")),
    }
}
