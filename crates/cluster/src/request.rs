//! What agents ask each other, and how they know who asks.
//!
//! One request per TCP connection, one JSON line each way, after a
//! challenge: the agent opens with 32 random bytes; the request carries a
//! MAC (keyed BLAKE3 under the cluster key) over that challenge and the
//! request; the reply a MAC over the challenge and the reply. A request
//! without the key, or replayed from another connection, is refused
//! before anything is done; a client knows the reply came from an agent
//! of the cluster.
//!
//! ```text
//! agent:  {"challenge":"9f2c..."}
//! client: {"request":{"Clone":{"pair":"web","vm":"vm1","addr":"10.0.0.2:4000","epoch":3}},"mac":"..."}
//! agent:  {"reply":{"Ok":"cloning"},"mac":"..."}
//! ```

use serde::{Deserialize, Serialize};

/// How a VM an agent starts begins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Alone and unprotected (its agent then protects it).
    Alone,
    /// A backup waiting for the clone of the pairing `epoch`.
    Backup { epoch: u64 },
}

/// How to start a VM of a pair on any host: the options every VM of the
/// pair takes that are the same on every host (the machine, the network,
/// the timeouts). Each agent adds the ones that are its own (files,
/// sockets, the pair key, the arbiter).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairPlan {
    /// Options of every VM (network, timeouts, disk mode).
    pub common: Vec<String>,
    /// Options of a VM that starts the guest (the machine).
    pub machine: Vec<String>,
    /// Options of a backup (engine, shared disk).
    pub backup: Vec<String>,
    /// The guest's RAM, for placement.
    pub memory_mib: u64,
    /// With private disks, their size: each VM has its own copy on its
    /// host, filled by the clone that starts it.
    pub private_disk: Option<u64>,
    /// Random per `ftvm cluster up`: the VMs' name for the arbiter is
    /// `PAIR.INCARNATION`, so a pair started again under an old name
    /// never meets the claims of the old one's epochs.
    pub incarnation: String,
}

impl PairPlan {
    /// The pair's name for the arbiter and the logging channel.
    pub fn arbiter_name(&self, pair: &str) -> String {
        format!("{pair}.{}", self.incarnation)
    }
}

/// Which VMs a [`Request::StopVm`] may end. The asker decided from the
/// store's records, which may be 200 ms old, or unreadable (the store
/// without a quorum); the VM's own agent checks its status file, which is
/// not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopOnly {
    /// Any VM (`ftvm cluster stop`).
    Any,
    /// Not a VM that runs the guest now: the backup the asker meant to end
    /// may have taken over since.
    Backup,
    /// Only a backup still waiting for its primary's clone. One that holds
    /// the clone, whose primary died, may be the VM's only copy.
    Waiting,
}

/// What an agent is asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Start the VM `name` of `pair` on this host. Replies with the
    /// address a backup listens on (empty for a VM alone).
    StartVm {
        pair: String,
        name: String,
        role: Role,
        plan: PairPlan,
    },
    /// End the VM `name` of `pair` (SIGTERM: a primary ends the pair
    /// cleanly, a backup just ends), unless `only` says it is not a VM to
    /// end.
    StopVm {
        pair: String,
        name: String,
        only: StopOnly,
    },
    /// Move a VM of `pair`, whose guest runs on this host: `backup` true
    /// moves the backup, else the VM that runs the guest (a clone at the
    /// target, then a planned hand-over). `to` is a host, or `None` to
    /// let placement choose. Replies once the pair is protected again.
    Migrate {
        pair: String,
        backup: bool,
        to: Option<String>,
    },
    /// The VMs this host runs, each with its whole status (measures
    /// included), as JSON: what `ftvm cluster status` shows beyond the
    /// store's records.
    Status,
}

/// An agent's answer: what was done, or why not.
pub type Reply = Result<String, String>;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not a request of the ftvm agent protocol: {0}")]
    Malformed(String),
    #[error("the request is not signed with this cluster's key (check --cluster-key)")]
    BadMac,
}

#[derive(Serialize, Deserialize)]
pub struct Hello {
    pub challenge: String,
}

#[derive(Serialize, Deserialize)]
struct Signed<T> {
    #[serde(flatten)]
    body: T,
    mac: String,
}

#[derive(Serialize, Deserialize)]
struct RequestBody {
    request: Request,
}

#[derive(Serialize, Deserialize)]
struct ReplyBody {
    reply: Reply,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(key: &[u8; 32], what: &str, challenge: &[u8; 32], body: &str) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(what.as_bytes());
    hasher.update(&[0]);
    hasher.update(challenge);
    hasher.update(body.as_bytes());
    hasher.finalize()
}

fn check_mac(expected: blake3::Hash, mac: &str) -> Result<(), AuthError> {
    let given = blake3::Hash::from_hex(mac).map_err(|_| AuthError::BadMac)?;
    // blake3::Hash compares in constant time.
    if given == expected {
        Ok(())
    } else {
        Err(AuthError::BadMac)
    }
}

/// The agent's first line.
pub fn hello(challenge: &[u8; 32]) -> String {
    serde_json::to_string(&Hello {
        challenge: hex(challenge),
    })
    .unwrap_or_default()
}

/// The challenge of an agent's first line.
pub fn read_hello(line: &str) -> Result<[u8; 32], AuthError> {
    let hello: Hello =
        serde_json::from_str(line).map_err(|e| AuthError::Malformed(e.to_string()))?;
    blake3::Hash::from_hex(&hello.challenge)
        .map(|h| *h.as_bytes())
        .map_err(|e| AuthError::Malformed(e.to_string()))
}

/// A signed body: the body's JSON without the MAC is what is signed; the
/// line holds both.
fn seal<T: Serialize>(key: &[u8; 32], what: &str, challenge: &[u8; 32], body: T) -> String {
    let text = serde_json::to_string(&body).unwrap_or_default();
    let mac = mac(key, what, challenge, &text);
    serde_json::to_string(&Signed {
        body,
        mac: mac.to_hex().to_string(),
    })
    .unwrap_or_default()
}

fn open<T: Serialize + for<'de> Deserialize<'de>>(
    key: &[u8; 32],
    what: &str,
    challenge: &[u8; 32],
    line: &str,
) -> Result<T, AuthError> {
    let signed: Signed<T> =
        serde_json::from_str(line).map_err(|e| AuthError::Malformed(e.to_string()))?;
    // The MAC covers the body as re-encoded: serde_json writes a value
    // the same way every time.
    let text =
        serde_json::to_string(&signed.body).map_err(|e| AuthError::Malformed(e.to_string()))?;
    check_mac(mac(key, what, challenge, &text), &signed.mac)?;
    Ok(signed.body)
}

/// The client's request line for the agent that sent `challenge`.
pub fn seal_request(key: &[u8; 32], challenge: &[u8; 32], request: &Request) -> String {
    seal(
        key,
        "request",
        challenge,
        RequestBody {
            request: request.clone(),
        },
    )
}

/// The request of a client's line, if signed for `challenge`.
pub fn open_request(
    key: &[u8; 32],
    challenge: &[u8; 32],
    line: &str,
) -> Result<Request, AuthError> {
    open::<RequestBody>(key, "request", challenge, line).map(|b| b.request)
}

/// The agent's reply line.
pub fn seal_reply(key: &[u8; 32], challenge: &[u8; 32], reply: &Reply) -> String {
    seal(
        key,
        "reply",
        challenge,
        ReplyBody {
            reply: reply.clone(),
        },
    )
}

/// The reply of an agent's line, if the agent holds the key.
pub fn open_reply(key: &[u8; 32], challenge: &[u8; 32], line: &str) -> Result<Reply, AuthError> {
    open::<ReplyBody>(key, "reply", challenge, line).map(|b| b.reply)
}

#[derive(Serialize, Deserialize)]
struct PlanBody {
    plan: PairPlan,
}

/// A pair's plan as the store keeps it, signed: the options in it become
/// a VM's command line on every host, so only a holder of the cluster
/// key may write them.
pub fn seal_plan(key: &[u8; 32], pair: &str, plan: &PairPlan) -> Vec<u8> {
    let body = PlanBody { plan: plan.clone() };
    seal(key, "plan", blake3::hash(pair.as_bytes()).as_bytes(), body).into_bytes()
}

/// The plan of `pair` from the store, if signed with the cluster key.
pub fn open_plan(key: &[u8; 32], pair: &str, bytes: &[u8]) -> Result<PairPlan, AuthError> {
    let text = std::str::from_utf8(bytes).map_err(|e| AuthError::Malformed(e.to_string()))?;
    open::<PlanBody>(key, "plan", blake3::hash(pair.as_bytes()).as_bytes(), text).map(|b| b.plan)
}

/// The cluster key held in a key file: any bytes (surrounding white space
/// ignored), at least 16 of them, made into a key.
pub fn cluster_key(file: &[u8]) -> Option<[u8; 32]> {
    let text = file.trim_ascii();
    (text.len() >= 16).then(|| blake3::derive_key("ftvm cluster key v1", text))
}

/// The logging-channel key of `pair`, the same on every host that holds
/// the cluster key (so no pair key travels or is stored).
pub fn pair_key(cluster_key: &[u8; 32], pair: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(cluster_key);
    hasher.update(b"ftvm pair key\0");
    hasher.update(pair.as_bytes());
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const CHALLENGE: [u8; 32] = [1; 32];

    fn clone_request() -> Request {
        Request::StopVm {
            pair: "web".into(),
            name: "vm3".into(),
            only: StopOnly::Backup,
        }
    }

    #[test]
    fn a_signed_request_opens_with_the_key_and_challenge() {
        let challenge = read_hello(&hello(&CHALLENGE)).expect("hello");
        let line = seal_request(&KEY, &challenge, &clone_request());
        assert_eq!(open_request(&KEY, &CHALLENGE, &line), Ok(clone_request()));
        let reply: Reply = Ok("done".into());
        let line = seal_reply(&KEY, &CHALLENGE, &reply);
        assert_eq!(open_reply(&KEY, &CHALLENGE, &line), Ok(reply));
    }

    #[test]
    fn a_wrong_key_a_replay_or_a_change_is_refused() {
        let line = seal_request(&KEY, &CHALLENGE, &clone_request());
        assert_eq!(
            open_request(&[8; 32], &CHALLENGE, &line),
            Err(AuthError::BadMac)
        );
        // The same line on another connection (another challenge).
        assert_eq!(open_request(&KEY, &[2; 32], &line), Err(AuthError::BadMac));
        let changed = line.replace("vm3", "vm4");
        assert_eq!(
            open_request(&KEY, &CHALLENGE, &changed),
            Err(AuthError::BadMac)
        );
        // A reply is not a request, even with the same key and challenge.
        let reply = seal_reply(&KEY, &CHALLENGE, &Ok("x".into()));
        assert!(open_request(&KEY, &CHALLENGE, &reply).is_err());
        assert!(matches!(
            open_request(&KEY, &CHALLENGE, "GET / HTTP/1.1"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn a_plan_opens_only_with_the_key_and_for_its_pair() {
        let plan = PairPlan {
            common: vec!["--timeout-ms".into(), "500".into()],
            machine: vec!["--memory".into(), "128".into()],
            backup: vec![],
            memory_mib: 128,
            private_disk: None,
            incarnation: "0a1b2c3d".into(),
        };
        let stored = seal_plan(&KEY, "web", &plan);
        assert_eq!(open_plan(&KEY, "web", &stored), Ok(plan.clone()));
        assert_eq!(open_plan(&[8; 32], "web", &stored), Err(AuthError::BadMac));
        assert_eq!(open_plan(&KEY, "db", &stored), Err(AuthError::BadMac));
        let text = String::from_utf8(stored).expect("utf-8");
        let forged = text.replace("--timeout-ms", "--disk");
        assert_eq!(
            open_plan(&KEY, "web", forged.as_bytes()),
            Err(AuthError::BadMac)
        );
    }

    #[test]
    fn key_files_need_enough_bytes() {
        assert_eq!(cluster_key(b"  short \n"), None);
        let key = cluster_key(b"0123456789abcdef0123\n");
        assert!(key.is_some());
        assert_eq!(key, cluster_key(b"0123456789abcdef0123"));
        assert_ne!(key, cluster_key(b"0123456789abcdef0124"));
    }

    #[test]
    fn pair_keys_differ_per_pair_and_cluster() {
        assert_ne!(pair_key(&KEY, "a"), pair_key(&KEY, "b"));
        assert_ne!(pair_key(&KEY, "a"), pair_key(&[8; 32], "a"));
        assert_eq!(pair_key(&KEY, "a"), pair_key(&KEY, "a"));
    }
}
