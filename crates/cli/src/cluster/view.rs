//! The cluster as an operator sees it: the hosts the store has, and every
//! VM as its own agent sees it (state, lag, log rate, output delay, its
//! metrics address), for `ftvm cluster status [--json|--watch]`, the
//! agents' status pages and Prometheus's service discovery.
//!
//! The store holds only a word per VM (its state, epoch and pid); the
//! measures live in the VMs' status files on their hosts, so each agent
//! is asked for its own (`Request::Status`). A VM whose agent does not
//! answer is shown from its record, marked so.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ftvm_cluster::placement::HostInfo;
use ftvm_cluster::request::Request;
use ftvm_cluster::store::{self, VmRecord};
use ftvm_host::etcd::EtcdClient;
use ftvm_host::status::{StatusLine, VmState};
use serde::{Deserialize, Serialize};

use super::{ask_agent, decode_records, hosts};
use crate::watch::{Look, Row};

/// How long a host's agent has to answer before its VMs are shown from
/// the store alone.
const ASK_LIMIT: Duration = Duration::from_secs(2);

/// One VM of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterVm {
    pub pair: String,
    pub host: String,
    /// Whether its agent told its whole status (`agent`), or it is what
    /// the store's record says (`store`: its agent did not answer).
    pub seen: Seen,
    pub vm: StatusLine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seen {
    Agent,
    Store,
}

/// A registered host, and whether its agent answered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostView {
    #[serde(flatten)]
    pub info: HostInfo,
    pub answered: bool,
}

impl HostView {
    /// `host NAME agent=... free-mib=... vms=...`, the name padded to
    /// `width`.
    fn line(&self, width: usize) -> String {
        let h = &self.info;
        let silent = if self.answered {
            ""
        } else {
            " (its agent does not answer)"
        };
        format!(
            "host {:<width$} agent={} free-mib={} vms={}{silent}",
            h.name, h.agent, h.free_mib, h.vms
        )
    }
}

/// What `ftvm cluster status --json` prints and the agents' pages serve.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub hosts: Vec<HostView>,
    pub vms: Vec<ClusterVm>,
}

/// The cluster as an agent's page shows it: looked at once a second at
/// most, by one request at a time, however many browsers and Prometheus
/// servers ask (the others take the last look). A look can take seconds
/// while a host is down, and each asks etcd and every agent: done per
/// request, overlapping requests filled the page's eight connections.
#[derive(Default)]
pub struct SharedLook {
    cache: Mutex<Cache>,
    done: Condvar,
}

#[derive(Default)]
struct Cache {
    at: Option<Instant>,
    last: Option<Result<ClusterStatus, String>>,
    looking: bool,
}

/// How old a look may be and still be shown.
const FRESH: Duration = Duration::from_secs(1);

impl SharedLook {
    /// The last look if it is fresh (or one is under way), else a new one
    /// by `look`.
    pub fn get(
        &self,
        look: impl FnOnce() -> Result<ClusterStatus>,
    ) -> Result<ClusterStatus, String> {
        let poisoned = |_| "the page's look at the cluster failed".to_string();
        let mut cache = self.cache.lock().map_err(poisoned)?;
        loop {
            if let (Some(at), Some(last)) = (cache.at, &cache.last) {
                if at.elapsed() < FRESH || cache.looking {
                    return last.clone();
                }
            }
            if !cache.looking {
                break;
            }
            // The first look of all is under way.
            cache = self.done.wait(cache).map_err(poisoned)?;
        }
        cache.looking = true;
        drop(cache);
        // Ends the look even if `look` panics, so nobody waits for ever.
        struct Looking<'a>(&'a SharedLook, Option<Result<ClusterStatus, String>>);
        impl Drop for Looking<'_> {
            fn drop(&mut self) {
                if let Ok(mut cache) = self.0.cache.lock() {
                    cache.looking = false;
                    cache.at = Some(Instant::now());
                    cache.last = Some(
                        self.1
                            .take()
                            .unwrap_or_else(|| Err("looking at the cluster failed".into())),
                    );
                }
                self.0.done.notify_all();
            }
        }
        let mut looking = Looking(self, None);
        let result = look().map_err(|e| format!("{e:#}"));
        looking.1 = Some(result.clone());
        result
    }
}

/// The VMs `host`'s agent runs (from `local`: its pairs and VMs), as it
/// answers `Request::Status`.
pub(super) fn local_status(host: &str, local: &[(String, crate::pair::Vm)]) -> Vec<ClusterVm> {
    local
        .iter()
        .map(|(pair, vm)| ClusterVm {
            pair: pair.clone(),
            host: host.to_string(),
            seen: Seen::Agent,
            vm: vm.describe(),
        })
        .collect()
}

/// Look at the whole cluster: the store, then every registered host's
/// agent (all at once, each within [`ASK_LIMIT`]).
pub fn cluster_status(etcd: &EtcdClient, key: &[u8; 32]) -> Result<ClusterStatus> {
    let hosts = hosts(etcd)?;
    let records = decode_records(etcd.prefix(store::VMS)?)?;
    let answers: Vec<Option<Vec<ClusterVm>>> = std::thread::scope(|scope| {
        let asks: Vec<_> = hosts
            .iter()
            .map(|host| scope.spawn(move || ask_status(host, key)))
            .collect();
        asks.into_iter()
            .map(|ask| ask.join().ok().flatten())
            .collect()
    });
    Ok(assemble(hosts, &records, answers))
}

/// The VMs `host`'s agent runs, if it answers within [`ASK_LIMIT`].
fn ask_status(host: &HostInfo, key: &[u8; 32]) -> Option<Vec<ClusterVm>> {
    let json = ask_agent(&host.agent, key, &Request::Status, ASK_LIMIT).ok()?;
    let vms: Vec<ClusterVm> = serde_json::from_str(&json).ok()?;
    // An agent speaks for its own host only.
    Some(vms.into_iter().filter(|vm| vm.host == host.name).collect())
}

/// The hosts with what their agents answered (`None`: no answer), and the
/// records of VMs no agent spoke for.
fn assemble(
    hosts: Vec<HostInfo>,
    records: &[VmRecord],
    answers: Vec<Option<Vec<ClusterVm>>>,
) -> ClusterStatus {
    let mut status = ClusterStatus::default();
    for (info, answer) in hosts.into_iter().zip(answers) {
        status.hosts.push(HostView {
            info,
            answered: answer.is_some(),
        });
        status.vms.extend(answer.unwrap_or_default());
    }
    for record in records {
        let answered = status
            .hosts
            .iter()
            .any(|h| h.answered && h.info.name == record.host);
        if !answered {
            status.vms.push(from_record(record));
        }
    }
    status
        .vms
        .sort_by(|a, b| (&a.pair, &a.vm.name, &a.host).cmp(&(&b.pair, &b.vm.name, &b.host)));
    status
}

/// Whether the VM's process runs and has not said it is done (a dead
/// VM's line says `dead`).
fn runs(line: &StatusLine) -> bool {
    line.state != VmState::Dead && !line.state.is_final()
}

fn from_record(record: &VmRecord) -> ClusterVm {
    let state = record.state.parse().unwrap_or(VmState::Dead);
    ClusterVm {
        pair: record.pair.clone(),
        host: record.host.clone(),
        seen: Seen::Store,
        vm: StatusLine {
            name: Some(record.name.clone()),
            epoch: record.epoch,
            ..StatusLine::new(state, record.pid)
        },
    }
}

impl ClusterStatus {
    /// The cluster as one look of `ftvm cluster status --watch`.
    pub fn look(self) -> Look {
        let footer = self.hosts.iter().map(|h| h.line(8)).collect();
        Look {
            title: format!("ftvm cluster: {} hosts", self.hosts.len()),
            rows: self.vms.into_iter().map(ClusterVm::row).collect(),
            footer,
            over: false,
        }
    }

    /// Prometheus's HTTP service discovery: one target group per agent
    /// that serves metrics and per running VM that does.
    pub fn scrape_targets(&self) -> serde_json::Value {
        let group = |addr: &str, host: &str, kind: &str| {
            serde_json::json!({
                "targets": [addr],
                "labels": {"ftvm_host": host, "ftvm_kind": kind},
            })
        };
        let agents = self.hosts.iter().filter_map(|h| {
            h.info
                .http
                .as_deref()
                .map(|addr| group(addr, &h.info.name, "agent"))
        });
        let vms = self.vms.iter().filter_map(|vm| {
            let addr = vm.vm.metrics.filter(|_| runs(&vm.vm))?;
            Some(group(&addr.to_string(), &vm.host, "vm"))
        });
        serde_json::Value::Array(agents.chain(vms).collect())
    }
}

impl ClusterVm {
    /// Its row, keyed by pair and name (so that an agent that misses one
    /// look does not make it a new VM); a host seen in the store only
    /// is marked `*`.
    pub fn row(self) -> Row {
        let name = self.vm.name.as_deref().unwrap_or("?");
        let key = format!("{}/{name}", self.pair);
        let host = match self.seen {
            Seen::Agent => self.host,
            Seen::Store => format!("{}*", self.host),
        };
        Row {
            key,
            host: Some(host),
            line: self.vm,
        }
    }
}

/// The clone `pair`'s guest is making, if any, as its agent tells it: the
/// name of the VM that runs the guest, and how far the clone has come.
pub(super) fn guest_clone(
    etcd: &EtcdClient,
    key: &[u8; 32],
    pair: &str,
) -> Option<(String, ftvm_host::status::CloneProgress)> {
    let records = super::records(etcd, pair).ok()?;
    let guest = records
        .iter()
        .filter(|r| r.runs_guest())
        .max_by_key(|r| r.epoch)?;
    let host = hosts(etcd)
        .ok()?
        .into_iter()
        .find(|h| h.name == guest.host)?;
    let vm = ask_status(&host, key)?
        .into_iter()
        .find(|vm| vm.pair == pair && vm.vm.name.as_deref() == Some(guest.name.as_str()))?;
    Some((format!("{pair}/{}", guest.name), vm.vm.clone?))
}

/// `ftvm cluster status`: once (text or JSON), or watched.
pub(super) fn show(
    etcd: &EtcdClient,
    key: &[u8; 32],
    json: bool,
    watch: Option<Duration>,
) -> Result<std::process::ExitCode> {
    if let Some(every) = watch {
        return crate::watch::watch_looks(every, || {
            // A store that does not answer for a moment is a look with
            // nothing in it, not the end of the watch.
            Ok(match cluster_status(etcd, key) {
                Ok(status) => status.look(),
                Err(e) => Look {
                    title: format!("ftvm cluster: the store does not answer ({e})"),
                    rows: Vec::new(),
                    footer: Vec::new(),
                    over: false,
                },
            })
        });
    }
    let status = cluster_status(etcd, key).context("looking at the cluster")?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&status).context("encoding the status")?
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!("{} hosts", status.hosts.len());
    for h in &status.hosts {
        println!("{}", h.line(0));
    }
    for vm in &status.vms {
        let line = &vm.vm;
        let epoch = line
            .epoch
            .map(|e| format!(" epoch={e}"))
            .unwrap_or_default();
        let state = if runs(line) || vm.seen == Seen::Store {
            line.state.as_str().to_string()
        } else {
            format!("{} (ended)", line.state.as_str())
        };
        let measures = line.measures.as_ref().map_or(String::new(), |m| {
            format!(
                " lag={} lag-ms={:.1} log-mbit={:.3} delay-ms={:.2}",
                m.lag_entries, m.lag_ms, m.log_mbit_s, m.delay_ms
            )
        });
        let seen = if vm.seen == Seen::Store {
            " (from the store: its agent does not answer)"
        } else {
            ""
        };
        println!(
            "vm {}/{} host={} {state}{epoch} pid={}{measures}{seen}",
            vm.pair,
            line.name.as_deref().unwrap_or("?"),
            vm.host,
            line.pid
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> HostInfo {
        HostInfo {
            name: name.into(),
            agent: format!("{name}:7000"),
            vm_addr: "10.0.0.1".into(),
            free_mib: 100,
            vms: 1,
            http: Some(format!("{name}:7100")),
        }
    }

    fn record(name: &str, host: &str, state: &str) -> VmRecord {
        VmRecord {
            pair: "web".into(),
            name: name.into(),
            host: host.into(),
            state: state.into(),
            epoch: Some(3),
            pid: 42,
            running: true,
        }
    }

    #[test]
    fn many_asking_at_once_make_one_look() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let shared = SharedLook::default();
        let looks = AtomicUsize::new(0);
        let slow_look = || {
            looks.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            Ok(ClusterStatus::default())
        };
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| assert!(shared.get(slow_look).is_ok()));
            }
        });
        assert_eq!(looks.load(Ordering::SeqCst), 1, "eight asked within a look");
        let failing = || Err(anyhow::anyhow!("etcd is down"));
        // Fresh: the last look, not a new one.
        assert!(shared.get(failing).is_ok());
    }

    #[test]
    fn a_host_that_does_not_answer_shows_its_vms_from_the_store() {
        let mut told = StatusLine {
            name: Some("vm2".into()),
            metrics: Some("10.0.0.1:9000".parse().expect("addr")),
            ..StatusLine::new(VmState::Primary, 7)
        };
        told.epoch = Some(3);
        let answers = vec![
            Some(vec![ClusterVm {
                pair: "web".into(),
                host: "h1".into(),
                seen: Seen::Agent,
                vm: told,
            }]),
            None,
        ];
        let records = [
            record("vm2", "h1", "primary"),
            record("vm3", "h2", "backup"),
        ];
        let status = assemble(vec![host("h1"), host("h2")], &records, answers);
        assert_eq!(status.vms.len(), 2, "{status:?}");
        assert_eq!(status.vms[0].seen, Seen::Agent);
        assert_eq!(status.vms[1].seen, Seen::Store);
        assert_eq!(status.vms[1].vm.state, VmState::Backup);
        assert!(!status.hosts[1].answered);
        let targets = status.scrape_targets();
        let addrs: Vec<&str> = targets
            .as_array()
            .expect("an array")
            .iter()
            .filter_map(|g| g["targets"][0].as_str())
            .collect();
        assert_eq!(addrs, ["h1:7100", "h2:7100", "10.0.0.1:9000"]);
        let look = status.look();
        assert_eq!(look.rows[1].key, "web/vm3");
        assert_eq!(look.rows[1].host.as_deref(), Some("h2*"));
        assert!(
            look.footer[1].contains("does not answer"),
            "{:?}",
            look.footer
        );
    }
}
