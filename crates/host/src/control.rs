//! A VM's control socket: a Unix socket in the pair's state directory
//! through which `ftvm protect`, `ftvm set` and the agent ask a running
//! VM to do something (clone itself into a new backup, hand the VM over,
//! set the memory balloon's target). One request per connection, one line
//! each way.
//!
//! ```text
//! clone 127.0.0.1:40123 3      (clone to the backup listening there, pairing epoch 3)
//! ok cloning to 127.0.0.1:40123, epoch 3
//! error it has a backup already
//! balloon 32                   (the balloon's target: 32 MiB)
//! ok balloon target 32 MiB (was 0 MiB) at icount 812345678; the guest holds 0 MiB in it
//! ```
//!
//! The socket is created with the state directory's permissions; whoever
//! can reach it may already kill the VM.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::str::FromStr;
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use crate::HostError;

/// What a VM can be asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Clone into the new backup listening at `addr`, as the pairing
    /// `epoch` (newer than the VM's).
    Clone { addr: String, epoch: u64 },
    /// Hand the VM over to its backup (a planned migration of the
    /// primary): this VM stops, the backup takes over.
    HandOver,
    /// Set the memory balloon's target to `mib` MiB (a control entry in
    /// the log, so the backup applies it at the same instruction).
    Balloon { mib: u64 },
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Clone { addr, epoch } => write!(f, "clone {addr} {epoch}"),
            Request::HandOver => f.write_str("hand-over"),
            Request::Balloon { mib } => write!(f, "balloon {mib}"),
        }
    }
}

impl FromStr for Request {
    type Err = String;

    fn from_str(line: &str) -> Result<Request, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["clone", addr, epoch] => Ok(Request::Clone {
                addr: (*addr).to_string(),
                epoch: epoch.parse().map_err(|_| format!("bad epoch {epoch:?}"))?,
            }),
            ["hand-over"] => Ok(Request::HandOver),
            ["balloon", mib] => Ok(Request::Balloon {
                mib: mib
                    .parse()
                    .map_err(|_| format!("bad balloon size {mib:?} (MiB)"))?,
            }),
            _ => Err(format!("unknown request {line:?}")),
        }
    }
}

/// The VM's answer: done (or begun), or why not.
pub type Reply = Result<String, String>;

/// Listen on `path`; each request goes to `sink` with a sender for its
/// reply, which the connection waits for (a few seconds at most).
pub fn listen(
    path: &Path,
    sink: impl Fn(Request, Sender<Reply>) -> bool + Send + 'static,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if !serve(stream, &sink) {
                    return;
                }
            }
        })?;
    Ok(())
}

/// One connection; whether the loop still listens.
fn serve(stream: UnixStream, sink: &impl Fn(Request, Sender<Reply>) -> bool) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let Ok(mut writer) = stream.try_clone() else {
        return true;
    };
    if BufReader::new(stream).read_line(&mut line).is_err() {
        return true;
    }
    let reply = match line.trim().parse::<Request>() {
        Ok(request) => {
            let (tx, rx) = channel();
            if !sink(request, tx) {
                return false;
            }
            rx.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| Err("the VM did not answer".into()))
        }
        Err(e) => Err(e),
    };
    let text = match reply {
        Ok(what) => format!("ok {what}\n"),
        Err(why) => format!("error {why}\n"),
    };
    let _ = writer.write_all(text.as_bytes());
    true
}

/// Ask the VM whose control socket is `path`; its answer.
pub fn ask(path: &Path, request: &Request) -> Result<Reply, HostError> {
    let what = || format!("asking the VM at {}", path.display());
    let mut stream = UnixStream::connect(path).map_err(|e| HostError::io(what(), e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| HostError::io(what(), e))?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(|e| HostError::io(what(), e))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| HostError::io(what(), e))?;
    let line = line.trim();
    match line.split_once(' ').unwrap_or((line, "")) {
        ("ok", what) => Ok(Ok(what.to_string())),
        ("error", why) => Ok(Err(why.to_string())),
        _ => Err(HostError::Config(format!(
            "the VM at {} answered {line:?}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_and_bad_ones_are_refused() {
        let request = Request::Clone {
            addr: "127.0.0.1:4000".into(),
            epoch: 3,
        };
        assert_eq!(request.to_string().parse::<Request>(), Ok(request));
        assert_eq!("hand-over".parse::<Request>(), Ok(Request::HandOver));
        let balloon = Request::Balloon { mib: 32 };
        assert_eq!(balloon.to_string(), "balloon 32");
        assert_eq!(balloon.to_string().parse::<Request>(), Ok(balloon));
        assert!("balloon".parse::<Request>().is_err());
        assert!("balloon -1".parse::<Request>().is_err());
        assert!("balloon 1.5".parse::<Request>().is_err());
        assert!("clone 127.0.0.1:4000".parse::<Request>().is_err());
        assert!("clone a b".parse::<Request>().is_err());
        assert!("reboot".parse::<Request>().is_err());
    }

    #[test]
    fn a_request_gets_the_loops_answer() {
        let path = std::env::temp_dir().join(format!("ftvm-control-{}.sock", std::process::id()));
        listen(&path, |request, reply| {
            let answer = match request {
                Request::Clone { epoch: 3, .. } => Ok("cloning".to_string()),
                Request::Clone { .. } | Request::HandOver | Request::Balloon { .. } => {
                    Err("wrong epoch".to_string())
                }
            };
            reply.send(answer).is_ok()
        })
        .expect("listen");
        let ask_epoch = |epoch| {
            ask(
                &path,
                &Request::Clone {
                    addr: "x:1".into(),
                    epoch,
                },
            )
            .expect("an answer")
        };
        assert_eq!(ask_epoch(3), Ok("cloning".to_string()));
        assert_eq!(ask_epoch(4), Err("wrong epoch".to_string()));
        let _ = std::fs::remove_file(&path);
    }
}
