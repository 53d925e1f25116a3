//! A small client of etcd's v3 JSON gateway over plain HTTP, for the
//! arbiter's test-and-set and the cluster's registrations. It knows every
//! member's client address and asks them in turn, starting with the last
//! that answered, so that a cluster that lost a member (but not its
//! quorum) still answers. A cluster without quorum fails every request
//! within the timeout: callers treat that as "unreachable", never as an
//! answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// How long one member may take to answer one request.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for a member to take a connection: members are on the
/// cluster's own network, and one that does not answer (its host down)
/// must not hold up a lease's renewal.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("etcd answered {0}")]
    Http(String),
    #[error("unexpected answer from etcd: {0}")]
    Answer(String),
    #[error("no etcd endpoint given")]
    NoEndpoint,
    #[error("etcd member {0}: {1}")]
    Member(String, Box<EtcdError>),
}

pub struct EtcdClient {
    endpoints: Vec<String>,
    /// The member that answered last.
    current: AtomicUsize,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdClient {
    /// A client of the members at `endpoints`: `HOST:PORT[,HOST:PORT...]`
    /// (their client URLs without `http://`).
    pub fn new(endpoints: &str) -> Result<EtcdClient, EtcdError> {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| e.trim_start_matches("http://").to_string())
            .collect();
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoint);
        }
        Ok(EtcdClient {
            endpoints,
            current: AtomicUsize::new(0),
        })
    }

    /// The members, as given.
    pub fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    /// POST `body` to `path` on the first member that answers.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let first = self.current.load(Ordering::Relaxed);
        let mut last = EtcdError::NoEndpoint;
        for i in 0..self.endpoints.len() {
            let at = (first + i) % self.endpoints.len();
            match post_to(&self.endpoints[at], path, body) {
                Ok(answer) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(e) => {
                    tracing::debug!(endpoint = %self.endpoints[at], "etcd: {e}");
                    last = EtcdError::Member(self.endpoints[at].clone(), Box::new(e));
                }
            }
        }
        Err(last)
    }

    /// Put `key` = `value`, tied to `lease` if given (the key goes when
    /// the lease expires).
    pub fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<(), EtcdError> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if let Some(lease) = lease {
            body["lease"] = json!(lease.to_string());
        }
        self.post("/v3/kv/put", &body).map(drop)
    }

    /// Delete `key`.
    pub fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.post("/v3/kv/deleterange", &json!({"key": b64(key.as_bytes())}))
            .map(drop)
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        let answer = self.post("/v3/kv/range", &json!({"key": b64(key.as_bytes())}))?;
        Ok(kvs(&answer)?.into_iter().next().map(|(_, v)| v))
    }

    /// Every key that starts with `prefix`, with its value, in key order.
    pub fn prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EtcdError> {
        let body = json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
        });
        kvs(&self.post("/v3/kv/range", &body)?)
    }

    /// A new lease that expires `ttl_s` seconds after its last keep-alive.
    pub fn grant(&self, ttl_s: u64) -> Result<i64, EtcdError> {
        let answer = self.post("/v3/lease/grant", &json!({"TTL": ttl_s.to_string()}))?;
        number(&answer, "/ID")
    }

    /// Keep `lease` alive; false if it has expired (its keys are gone).
    pub fn keep_alive(&self, lease: i64) -> Result<bool, EtcdError> {
        let answer = self.post("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))?;
        // A live lease answers with its TTL; an expired one without.
        Ok(number(&answer, "/result/TTL").is_ok_and(|ttl| ttl > 0))
    }

    /// Create `key` = `value` unless it exists; the value it holds after
    /// the transaction (ours if we created it).
    pub fn create_or_read(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, EtcdError> {
        let key = b64(key.as_bytes());
        // create_revision 0 (the default, so left out) means "no such key".
        let txn = json!({
            "compare": [{"key": key, "result": "EQUAL", "target": "CREATE"}],
            "success": [{"request_put": {"key": key, "value": b64(value)}}],
            "failure": [{"request_range": {"key": key}}],
        });
        let answer = self.post("/v3/kv/txn", &txn)?;
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(value.to_vec());
        }
        answer
            .pointer("/responses/0/response_range/kvs/0/value")
            .and_then(Value::as_str)
            .and_then(unb64)
            .ok_or_else(|| EtcdError::Answer(answer.to_string()))
    }
}

/// The keys and values of a range answer.
fn kvs(answer: &Value) -> Result<Vec<(String, Vec<u8>)>, EtcdError> {
    let Some(kvs) = answer.get("kvs").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    kvs.iter()
        .map(|kv| {
            let field = |name: &str| {
                kv.get(name)
                    .and_then(Value::as_str)
                    .and_then(unb64)
                    .ok_or_else(|| EtcdError::Answer(kv.to_string()))
            };
            let key = String::from_utf8_lossy(&field("key")?).into_owned();
            // An empty value is left out of the answer.
            let value = if kv.get("value").is_some() {
                field("value")?
            } else {
                Vec::new()
            };
            Ok((key, value))
        })
        .collect()
}

/// A 64-bit number of the answer (the gateway writes them as strings).
fn number(answer: &Value, pointer: &str) -> Result<i64, EtcdError> {
    let value = answer
        .pointer(pointer)
        .ok_or_else(|| EtcdError::Answer(answer.to_string()))?;
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| EtcdError::Answer(answer.to_string()))
}

fn post_to(endpoint: &str, path: &str, body: &Value) -> Result<Value, EtcdError> {
    let addrs: Vec<SocketAddr> = endpoint.to_socket_addrs()?.collect();
    let addr = addrs
        .first()
        .ok_or_else(|| EtcdError::Answer(format!("{endpoint} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
    let answer: Value =
        serde_json::from_str(body.trim()).map_err(|e| EtcdError::Answer(format!("{e}: {body}")))?;
    // A streaming call (keepalive) that failed answers 200 with an error.
    if let Some(error) = answer.get("error") {
        return Err(EtcdError::Http(error.to_string()));
    }
    Ok(answer)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"ftvm/hosts/"), b"ftvm/hosts0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn endpoints_are_a_list() {
        let client = EtcdClient::new("http://10.0.0.1:2379, 10.0.0.2:2379,").expect("endpoints");
        assert_eq!(client.endpoints(), "10.0.0.1:2379,10.0.0.2:2379");
        assert!(matches!(EtcdClient::new(" , "), Err(EtcdError::NoEndpoint)));
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").expect("chunks"),
            "abcde"
        );
        assert!(dechunk("zz\r\n").is_err());
    }
}
