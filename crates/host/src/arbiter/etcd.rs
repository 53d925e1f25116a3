//! The test-and-set on etcd, for clusters that already run one: one
//! transaction per claim, "create the key `ftvm/PAIR/EPOCH` with
//! our claim if it does not exist, else read it", through etcd's v3 JSON
//! gateway over plain HTTP. etcd's consensus makes the claim atomic and
//! durable; an etcd that cannot be reached (or has no quorum) gives
//! [`Verdict::Unreachable`], and the VM waits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use ftvm_ft::golive::Verdict;

use super::{Arbiter, BadName, claimant, settle};

const TIMEOUT: Duration = Duration::from_secs(2);

pub struct EtcdArbiter {
    endpoint: String,
    claimant: String,
}

#[derive(Debug, thiserror::Error)]
enum EtcdError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("etcd answered {0}")]
    Http(String),
    #[error("unexpected answer from etcd: {0}")]
    Answer(String),
}

impl EtcdArbiter {
    /// An arbiter on the etcd at `endpoint` (`HOST:PORT` of a client URL)
    /// for the VM `me`; `token` must be random and fresh per VM process.
    pub fn new(endpoint: &str, me: &str, token: [u8; 16]) -> Result<EtcdArbiter, BadName> {
        Ok(EtcdArbiter {
            endpoint: endpoint.to_string(),
            claimant: claimant(me, token)?,
        })
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let addrs: Vec<SocketAddr> = self.endpoint.to_socket_addrs()?.collect();
        let addr = addrs
            .first()
            .ok_or_else(|| EtcdError::Answer(format!("{} resolves to nothing", self.endpoint)))?;
        let mut stream = TcpStream::connect_timeout(addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let body = body.to_string();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.endpoint,
            body.len()
        )?;
        let mut response = Vec::new();
        stream.take(1 << 20).read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| EtcdError::Answer("no HTTP header".into()))?;
        let status = head.lines().next().unwrap_or_default();
        if !status.contains(" 200 ") {
            return Err(EtcdError::Http(status.to_string()));
        }
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)?
        } else {
            body.to_string()
        };
        serde_json::from_str(&body).map_err(|e| EtcdError::Answer(e.to_string()))
    }

    fn claim(&self, pair: &str, epoch: u64) -> Result<Verdict, EtcdError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let key = b64(&format!("ftvm/{pair}/{epoch}"));
        // create_revision 0 (the default, so left out) means "no such key".
        let txn = json!({
            "compare": [{"key": key, "result": "EQUAL", "target": "CREATE"}],
            "success": [{"request_put": {"key": key, "value": b64(&self.claimant)}}],
            "failure": [{"request_range": {"key": key}}],
        });
        let answer = self.post("/v3/kv/txn", &txn)?;
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(Verdict::Won);
        }
        let holder = answer
            .pointer("/responses/0/response_range/kvs/0/value")
            .and_then(Value::as_str)
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .ok_or_else(|| EtcdError::Answer(answer.to_string()))?;
        Ok(if holder == self.claimant.as_bytes() {
            Verdict::Won
        } else {
            Verdict::Lost
        })
    }
}

/// Undo HTTP/1.1 chunked transfer encoding.
fn dechunk(mut body: &str) -> Result<String, EtcdError> {
    let mut out = String::new();
    loop {
        let (size, rest) = body
            .split_once("\r\n")
            .ok_or_else(|| EtcdError::Answer("bad chunk".into()))?;
        let size = usize::from_str_radix(size.trim(), 16)
            .map_err(|_| EtcdError::Answer("bad chunk size".into()))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| EtcdError::Answer("short chunk".into()))?;
        out.push_str(chunk);
        body = rest.get(size + 2..).unwrap_or_default();
    }
}

impl Arbiter for EtcdArbiter {
    fn test_and_set(&mut self, pair: &str, epoch: u64) -> Verdict {
        settle(pair, &self.endpoint, || self.claim(pair, epoch))
    }
}
