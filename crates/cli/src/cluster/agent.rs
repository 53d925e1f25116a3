//! `ftvm agent --cluster`: the agent of one host of a cluster.
//!
//! It registers the host in the cluster store under a lease that it keeps
//! alive (a host that dies drops out within the lease's time), publishes
//! the VMs it runs, starts and stops VMs when another agent (or `ftvm
//! cluster`) asks, and protects every VM it runs that is left alone: it
//! picks a host for a new backup ([`place`]), has that host's agent start
//! one, and asks the VM to clone itself into it. Every request it takes
//! is signed with the cluster key; the pair keys derive from it.
//!
//! On its host, a pair's files are in `DIR/PAIR/`: `key`, `console`, and
//! per VM `NAME.status`, `NAME.log`, `NAME.control`, `NAME.console`,
//! `NAME.addr` and `NAME.mib` (its RAM, for the host's free memory).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ftvm_cluster::placement::{HostInfo, place};
use ftvm_cluster::request::{self, PairPlan, Reply, Request, Role, StopOnly};
use ftvm_cluster::store::{self, VmRecord};
use ftvm_host::control::{self, Request as VmRequest};
use ftvm_host::etcd::EtcdClient;
use ftvm_host::process::terminate;
use ftvm_host::status::VmState;

use super::view::{self, ClusterStatus};
use super::{AgentConfig, ask_agent, hosts, records};
use crate::page::{self, AgentCounters, Page, escape};
use crate::pair::{Vm, listening_addr, read_vms, spawn_child, wait_for};

/// The registration's lease: a host that stops renewing it is out of the
/// cluster this long after. Renewed every second, so a member that does
/// not answer (0.5 s to connect, 2 s to answer) costs no renewal.
const LEASE_TTL_S: u64 = 5;
/// How often the agent looks at its VMs and renews its lease.
const TURN: Duration = Duration::from_millis(200);
/// How long a VM must have run alone before its agent protects it.
const ALONE_FOR: Duration = Duration::from_millis(300);
/// How long a clone may take, from asking the survivor to the new backup
/// having caught up.
const CLONE_LIMIT: Duration = Duration::from_secs(120);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MOST: Duration = Duration::from_secs(20);

pub(super) struct Agent {
    config: AgentConfig,
    etcd: EtcdClient,
    /// The address it takes requests on.
    addr: String,
    children: Mutex<Vec<Child>>,
    /// Pairs with a restore or migration under way (one at a time each).
    busy: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
    /// Where its page is served (`--http`), as other hosts reach it.
    http: OnceLock<String>,
    counters: AgentCounters,
    /// Whether its host is registered under a live lease.
    registered: AtomicBool,
    /// The cluster as its page shows it.
    look: view::SharedLook,
}

/// Marks a pair busy while it lives.
pub(super) struct Busy(Arc<Mutex<HashSet<String>>>, String);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.0.lock() {
            busy.remove(&self.1);
        }
    }
}

pub(super) fn run(config: AgentConfig) -> Result<std::process::ExitCode> {
    let etcd = EtcdClient::new(&config.store).context("the cluster store")?;
    let listener = TcpListener::bind(&config.listen)
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?.to_string();
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("creating {}", config.dir.display()))?;
    let agent = Arc::new(Agent {
        config,
        etcd,
        addr,
        children: Mutex::new(Vec::new()),
        busy: Arc::new(Mutex::new(HashSet::new())),
        stop: ftvm_host::stop_flag()?,
        http: OnceLock::new(),
        counters: AgentCounters::default(),
        registered: AtomicBool::new(false),
        look: view::SharedLook::default(),
    });
    if let Some(addr) = agent.config.http {
        let server = agent.clone();
        let local = page::listen(addr, move |request| server.answer(request))?;
        // A wildcard address is reached at the host's own; a loopback one
        // only here, so it is not told to the cluster (another host's
        // Prometheus would scrape itself).
        let advertised = if local.ip().is_unspecified() {
            format!("{}:{}", agent.config.vm_ip(), local.port())
        } else {
            local.to_string()
        };
        tracing::info!("agent: the cluster's page is at http://{advertised}/");
        if !local.ip().is_loopback() {
            let _ = agent.http.set(advertised);
        }
    }
    if let Some(file) = &agent.config.addr_file {
        ftvm_host::status::write_atomically(file, format!("{}\n", agent.addr).as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
    }
    tracing::info!(
        target: "ftvm::state",
        host = %agent.config.host,
        "agent: host {} takes requests on {}, store etcd:{}",
        agent.config.host,
        agent.addr,
        agent.etcd.endpoints()
    );
    let server = agent.clone();
    std::thread::Builder::new()
        .name("requests".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let agent = server.clone();
                let _ = std::thread::Builder::new()
                    .name("request".into())
                    .spawn(move || agent.serve(stream));
            }
        })?;
    agent.watch();
    Ok(std::process::ExitCode::SUCCESS)
}

impl Agent {
    pub(super) fn pair_dir(&self, pair: &str) -> PathBuf {
        self.config.dir.join(pair)
    }

    pub(super) fn etcd(&self) -> &EtcdClient {
        &self.etcd
    }

    pub(super) fn key(&self) -> &[u8; 32] {
        &self.config.key
    }

    /// The pair's plan, which must be signed with the cluster key: its
    /// options become a VM's command line here.
    fn plan(&self, pair: &str) -> Result<PairPlan> {
        match self.etcd.get(&store::plan_key(pair))? {
            Some(bytes) => request::open_plan(&self.config.key, pair, &bytes)
                .with_context(|| format!("the plan of {pair} in the cluster store")),
            None => bail!("{pair} has no plan in the cluster store (it was stopped)"),
        }
    }

    pub(super) fn plan_mib(&self, pair: &str) -> Result<u64> {
        self.plan(pair).map(|plan| plan.memory_mib)
    }

    /// The pair's primary, which runs here, and its backup.
    pub(super) fn protected_pair(&self, pair: &str) -> Result<(VmRecord, VmRecord)> {
        let records = records(&self.etcd, pair)?;
        let (p, b) = super::protected(&records)
            .with_context(|| format!("{pair} is not protected now (no primary with a backup)"))?;
        if p.host != self.config.host {
            bail!("{pair}'s primary runs on {}, not here", p.host);
        }
        Ok((p.clone(), b.clone()))
    }

    /// The main loop: the lease, the records, the restores.
    fn watch(self: &Arc<Agent>) {
        let mut lease: Option<i64> = None;
        let mut renewed = Instant::now();
        let mut published: BTreeMap<String, VmRecord> = BTreeMap::new();
        let mut alone_since: HashMap<String, Instant> = HashMap::new();
        let mut retry: HashMap<String, (Instant, Duration)> = HashMap::new();
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(TURN);
            if let Ok(mut children) = self.children.lock() {
                children.retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_))));
            }
            let vms = self.local_vms();
            // The lease, and the host's registration on it.
            if lease.is_none() || renewed.elapsed() >= Duration::from_secs(1) {
                lease = self.renew(lease, &vms);
                renewed = Instant::now();
                if lease.is_none() {
                    // A new lease carries none of the old records.
                    published.clear();
                }
            }
            let Some(id) = lease else { continue };
            self.publish(id, &vms, &mut published);
            // A VM that is protected (or gone) starts its retries afresh;
            // one that is cloning keeps them, so a clone that keeps failing
            // waits longer each time.
            retry.retain(|key, _| {
                vms.iter().any(|(pair, vm)| {
                    format!("{pair}/{}", vm.name) == *key
                        && vm.running()
                        && matches!(vm.line.state, VmState::Live | VmState::Cloning)
                })
            });
            for (pair, vm) in &vms {
                let key = format!("{pair}/{}", vm.name);
                let alone = vm.running() && vm.line.state == VmState::Live;
                if !alone {
                    alone_since.remove(&key);
                    continue;
                }
                let since = *alone_since.entry(key.clone()).or_insert_with(Instant::now);
                let due = retry.get(&key).is_none_or(|(at, _)| Instant::now() >= *at);
                if since.elapsed() < ALONE_FOR || !due {
                    continue;
                }
                let unprotected = self.etcd.get(&store::unprotected_key(pair));
                if !matches!(unprotected, Ok(None)) {
                    continue;
                }
                let Some(busy) = self.try_busy(pair) else {
                    continue;
                };
                let pause = retry.get(&key).map_or(RETRY_FIRST, |(_, p)| *p);
                retry.insert(key, (Instant::now() + pause, (pause * 2).min(RETRY_MOST)));
                let agent = self.clone();
                let (pair, name) = (pair.clone(), vm.name.clone());
                let _ = std::thread::Builder::new()
                    .name("restore".into())
                    .spawn(move || {
                        let _busy = busy;
                        let started = Instant::now();
                        let result = agent.restore(&pair, &name, None);
                        agent.counters.restore(
                            result.as_ref().ok().map(|(_, pause_ms)| *pause_ms),
                            started.elapsed(),
                        );
                        match result {
                            Ok((done, _)) => {
                                let seconds = started.elapsed().as_secs_f64();
                                tracing::info!(
                                    target: "ftvm::state",
                                    %pair,
                                    vm = %name,
                                    backup = %done,
                                    seconds,
                                    "agent: {pair}/{name} protected again by {done} in \
                                     {seconds:.2} s"
                                );
                            }
                            Err(e) => tracing::warn!(
                                %pair,
                                vm = %name,
                                "agent: restoring redundancy of {pair}/{name} failed: {e:#}; \
                                 again in {pause:?}"
                            ),
                        }
                    });
            }
        }
        if let Some(id) = lease {
            let _ = self.etcd.post(
                "/v3/lease/revoke",
                &serde_json::json!({"ID": id.to_string()}),
            );
        }
    }

    /// Mark `pair` busy, unless it is.
    fn try_busy(&self, pair: &str) -> Option<Busy> {
        let mut busy = self.busy.lock().ok()?;
        busy.insert(pair.to_string())
            .then(|| Busy(self.busy.clone(), pair.to_string()))
    }

    /// Keep the lease alive (or take a new one) and write the host's
    /// registration on it.
    fn renew(&self, lease: Option<i64>, vms: &[(String, Vm)]) -> Option<i64> {
        let renewed = self.renew_lease(lease, vms);
        self.registered.store(renewed.is_some(), Ordering::Relaxed);
        renewed
    }

    fn renew_lease(&self, lease: Option<i64>, vms: &[(String, Vm)]) -> Option<i64> {
        let alive = match lease {
            Some(id) => match self.etcd.keep_alive(id) {
                Ok(true) => Some(id),
                Ok(false) => {
                    tracing::warn!("agent: the host's lease expired; registering again");
                    None
                }
                Err(e) => {
                    tracing::debug!("the cluster store does not answer: {e}");
                    // Still ours as far as we know; try again next turn.
                    return Some(id);
                }
            },
            None => None,
        };
        let id = match alive {
            Some(id) => id,
            None => match self.etcd.grant(LEASE_TTL_S) {
                Ok(id) => {
                    tracing::info!(
                        target: "ftvm::state",
                        host = %self.config.host,
                        "agent: host {} registered (lease {id:x})",
                        self.config.host
                    );
                    id
                }
                Err(e) => {
                    tracing::debug!("no lease from the cluster store: {e}");
                    return None;
                }
            },
        };
        let used: u64 = vms
            .iter()
            .filter(|(_, vm)| vm.running())
            .map(|(pair, vm)| self.vm_mib(pair, &vm.name))
            .sum();
        let info = HostInfo {
            name: self.config.host.clone(),
            agent: self.addr.clone(),
            vm_addr: self.config.vm_ip(),
            free_mib: self.config.memory_mib.saturating_sub(used),
            vms: vms.iter().filter(|(_, vm)| vm.running()).count() as u32,
            http: self.http.get().cloned(),
        };
        let value = serde_json::to_vec(&info).unwrap_or_default();
        match self
            .etcd
            .put(&store::host_key(&self.config.host), &value, Some(id))
        {
            Ok(()) => Some(id),
            Err(e) => {
                tracing::warn!("registering the host failed: {e}");
                None
            }
        }
    }

    /// Write the records of VMs that changed; retire the dead.
    fn publish(
        &self,
        lease: i64,
        vms: &[(String, Vm)],
        published: &mut BTreeMap<String, VmRecord>,
    ) {
        let mut seen = HashSet::new();
        for (pair, vm) in vms {
            let key = store::vm_key(pair, &vm.name, &self.config.host);
            seen.insert(key.clone());
            let record = VmRecord {
                pair: pair.clone(),
                name: vm.name.clone(),
                host: self.config.host.clone(),
                state: vm.describe().state.as_str().to_string(),
                epoch: vm.line.epoch,
                pid: vm.line.pid,
                running: vm.running(),
            };
            if published.get(&key) == Some(&record) {
                continue;
            }
            let value = serde_json::to_vec(&record).unwrap_or_default();
            if self.etcd.put(&key, &value, Some(lease)).is_ok() {
                published.insert(key, record);
            }
        }
        // VMs whose status files were retired.
        let stale: Vec<String> = published
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in stale {
            if self.etcd.delete(&key).is_ok() {
                published.remove(&key);
            }
        }
        for (pair, vm) in vms {
            if !vm.alive {
                crate::restore::retire(&self.pair_dir(pair), &vm.name);
            }
        }
    }

    /// Every VM with a status file on this host, with its pair.
    fn local_vms(&self) -> Vec<(String, Vm)> {
        let Ok(entries) = std::fs::read_dir(&self.config.dir) else {
            return Vec::new();
        };
        let mut vms = Vec::new();
        let boot = boot_id();
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                let pair = entry.file_name().to_string_lossy().into_owned();
                vms.extend(read_vms(&entry.path()).into_iter().map(|mut vm| {
                    // A VM of an earlier boot is dead, whatever runs under
                    // its pid now.
                    let booted =
                        std::fs::read_to_string(entry.path().join(format!("{}.boot", vm.name)));
                    if booted.is_ok_and(|b| Some(b.trim()) != boot.as_deref()) {
                        vm.alive = false;
                    }
                    (pair.clone(), vm)
                }));
            }
        }
        vms
    }

    fn vm_mib(&self, pair: &str, name: &str) -> u64 {
        std::fs::read_to_string(self.pair_dir(pair).join(format!("{name}.mib")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Answer one connection: challenge, request, reply.
    fn serve(&self, stream: TcpStream) {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let result = (|| -> Result<()> {
            let challenge: [u8; 32] = ftvm_host::random_bytes()?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut writer = stream.try_clone()?;
            writeln!(writer, "{}", request::hello(&challenge))?;
            let mut line = String::new();
            BufReader::new((&stream).take(1 << 20)).read_line(&mut line)?;
            let reply: Reply =
                match request::open_request(&self.config.key, &challenge, line.trim()) {
                    Ok(request) => {
                        // Looks come every second from each watcher and page.
                        if request == Request::Status {
                            tracing::debug!(%peer, "status request");
                        } else {
                            tracing::info!(%peer, ?request, "request");
                        }
                        self.handle(request).map_err(|e| format!("{e:#}"))
                    }
                    Err(e) => {
                        tracing::warn!(%peer, "agent: refused a request: {e}");
                        Err(e.to_string())
                    }
                };
            writeln!(
                writer,
                "{}",
                request::seal_reply(&self.config.key, &challenge, &reply)
            )?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(%peer, "a request failed: {e:#}");
        }
    }

    fn handle(&self, request: Request) -> Result<String> {
        match request {
            Request::StartVm {
                pair,
                name,
                role,
                plan,
            } => self.start_vm(&pair, &name, &role, &plan),
            Request::StopVm { pair, name, only } => {
                let vm = crate::pair::read_named(&self.pair_dir(&pair), &name)
                    .filter(|vm| vm.running())
                    .ok_or_else(|| anyhow!("{pair}/{name} does not run on {}", self.config.host))?;
                if let Some(why) = refuses_to_stop(only, vm.line.state) {
                    bail!("{pair}/{name} {why} ({}): not ended", vm.line.state);
                }
                terminate(vm.line.pid);
                Ok(format!("{pair}/{name} (pid {}) told to end", vm.line.pid))
            }
            Request::Migrate { pair, backup, to } => {
                let busy = self
                    .try_busy(&pair)
                    .ok_or_else(|| anyhow!("{pair} is being restored or moved already"))?;
                let result = super::migrate::migrate(self, &pair, backup, to.as_deref(), busy);
                self.counters.migration(result.is_ok());
                result
            }
            Request::Status => {
                let vms = view::local_status(&self.config.host, &self.local_vms());
                serde_json::to_string(&vms).context("encoding the status")
            }
        }
    }

    /// Answer a request for the cluster's page (see [`crate::page`]).
    fn answer(&self, request: &ftvm_host::metrics::Request) -> ftvm_host::metrics::Answer {
        use ftvm_host::metrics::Answer;
        let path = request.path.as_str();
        let look = || {
            self.look
                .get(|| view::cluster_status(&self.etcd, &self.config.key))
        };
        let unavailable = |e: String| Answer {
            status: "503 Service Unavailable",
            content_type: "text/plain; charset=utf-8",
            body: format!("the cluster store: {e}\n").into_bytes(),
        };
        match path {
            "/" => Answer::ok("text/html; charset=utf-8", self.page(look())),
            "/status.json" => look().map_or_else(unavailable, |status| page::json(&status)),
            "/sd.json" => {
                look().map_or_else(unavailable, |status| page::json(&status.scrape_targets()))
            }
            "/metrics" => {
                let running = self
                    .local_vms()
                    .iter()
                    .filter(|(_, vm)| vm.running())
                    .count();
                page::metrics_answer(self.counters.metrics(
                    vec![("host", self.config.host.clone())],
                    running,
                    Some(self.registered.load(Ordering::Relaxed)),
                ))
            }
            _ => match path
                .strip_prefix("/pairs/")
                .and_then(|rest| rest.strip_suffix("/plot.svg"))
            {
                Some(pair) if ftvm_host::arbiter::check_name(pair).is_ok() => {
                    page::plot(&self.pair_dir(pair))
                }
                _ => Answer::not_found("not here\n"),
            },
        }
    }

    /// The cluster's page: its VMs, its hosts, and the timelines of the
    /// pairs whose VMs ran on this host.
    fn page(&self, status: Result<ClusterStatus, String>) -> String {
        let (status, trouble) = match status {
            Ok(status) => (status, String::new()),
            Err(e) => (
                ClusterStatus::default(),
                format!(
                    " <strong>The cluster store does not answer: {}</strong>",
                    escape(&e)
                ),
            ),
        };
        let mut hosts = String::from(
            "<h2>Hosts</h2>\n<table id=\"hosts\"><thead><tr><th>host</th><th>agent</th>\
             <th>free MiB</th><th>VMs</th><th>answers</th></tr></thead>\n<tbody>\n",
        );
        for h in &status.hosts {
            hosts.push_str(&format!(
                "<tr data-host=\"{name}\"><td>{name}</td><td>{agent}</td><td>{free}</td>\
                 <td>{vms}</td><td>{answered}</td></tr>\n",
                name = escape(&h.info.name),
                agent = escape(&h.info.agent),
                free = h.info.free_mib,
                vms = h.info.vms,
                answered = if h.answered { "yes" } else { "no" },
            ));
        }
        hosts.push_str("</tbody></table>\n");
        let mut pairs: Vec<String> = std::fs::read_dir(&self.config.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|pair| ftvm_host::arbiter::check_name(pair).is_ok())
                    .collect()
            })
            .unwrap_or_default();
        pairs.sort();
        let plots: Vec<(String, String)> = pairs
            .iter()
            .map(|pair| {
                (
                    format!("{pair}: its VMs on {}", self.config.host),
                    format!("/pairs/{pair}/plot.svg"),
                )
            })
            .collect();
        let rows: Vec<crate::watch::Row> =
            status.vms.into_iter().map(view::ClusterVm::row).collect();
        let title = format!("ftvm cluster, seen from {}", self.config.host);
        let intro = format!(
            "Every VM as its own host's agent sees it (a host marked <code>*</code>: its \
             agent does not answer, its VMs are shown from the store); redrawn every second. \
             <a href=\"/status.json\">status.json</a> is what <code>ftvm cluster status \
             --json</code> prints; <a href=\"/sd.json\">sd.json</a> lists every agent and \
             VM to scrape (Prometheus's <code>http_sd_configs</code>).{trouble}"
        );
        page::html(&Page {
            title: &title,
            intro: &intro,
            vms: &rows,
            hosts_column: true,
            below: &hosts,
            plots: &plots,
        })
    }

    /// Start a VM of `pair` here; the address a backup listens on.
    fn start_vm(&self, pair: &str, name: &str, role: &Role, plan: &PairPlan) -> Result<String> {
        ftvm_host::arbiter::check_name(pair).map_err(|e| anyhow!("{e}"))?;
        ftvm_host::arbiter::check_name(name).map_err(|e| anyhow!("{e}"))?;
        let dir = self.pair_dir(pair);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if crate::pair::read_named(&dir, name).is_some_and(|vm| vm.alive) {
            bail!("{pair}/{name} runs on {} already", self.config.host);
        }
        for stale in ["addr", "status"] {
            let _ = std::fs::remove_file(dir.join(format!("{name}.{stale}")));
        }
        let key = request::pair_key(&self.config.key, pair);
        let hex = crate::pair::hex(&key);
        if std::fs::read(dir.join("key")).ok().as_deref() != Some(hex.as_bytes()) {
            crate::pair::write_private(&dir.join("key"), hex.as_bytes())?;
        }
        if let Some(boot) = boot_id() {
            std::fs::write(dir.join(format!("{name}.boot")), boot)
                .context("writing the VM's boot")?;
        }
        std::fs::write(dir.join(format!("{name}.mib")), plan.memory_mib.to_string())
            .context("writing the VM's size")?;
        let file = |end: &str| -> OsString { dir.join(format!("{name}.{end}")).into() };
        let mut args: Vec<OsString> = match role {
            Role::Alone => vec!["primary".into()],
            Role::Backup { epoch } => vec![
                "backup".into(),
                "--listen".into(),
                format!("{}:0", self.config.vm_ip()).into(),
                "--addr-file".into(),
                file("addr"),
                "--epoch".into(),
                epoch.to_string().into(),
                // The agent that asks for it clones into it at once; if it
                // died first, nobody will.
                "--accept-timeout".into(),
                "60".into(),
            ],
        };
        args.extend([
            "--pair".into(),
            plan.arbiter_name(pair).into(),
            "--name".into(),
            name.into(),
            "--status-file".into(),
            file("status"),
            "--console-socket".into(),
            file("console"),
            "--control-socket".into(),
            file("control"),
            "--history-file".into(),
            file("history"),
            "--key-file".into(),
            dir.join("key").into(),
            "--arbiter".into(),
            format!("etcd:{}", self.etcd.endpoints()).into(),
            "--console-file".into(),
            dir.join("console").into(),
            // On the host's cluster address, for a Prometheus elsewhere.
            "--metrics".into(),
            format!("{}:0", self.config.vm_ip()).into(),
        ]);
        args.extend(plan.common.iter().map(OsString::from));
        match role {
            Role::Alone => args.extend(plan.machine.iter().map(OsString::from)),
            Role::Backup { .. } => {
                args.extend(plan.backup.iter().map(OsString::from));
                if let Some(len) = plan.private_disk {
                    let disk = crate::restore::create_own_disk(&dir, name, len)?;
                    args.extend(["--disk".into(), disk.into()]);
                }
            }
        }
        let child = spawn_child(&dir, name, &args)?;
        let pid = child.id();
        if let Ok(mut children) = self.children.lock() {
            children.push(child);
        }
        tracing::info!(
            target: "ftvm::state",
            %pair,
            vm = %name,
            pid,
            "agent: started {pair}/{name} (pid {pid}) as {role:?}"
        );
        match role {
            Role::Alone => Ok(String::new()),
            Role::Backup { .. } => listening_addr(&dir, name, pid),
        }
    }

    /// Give the VM `name` of `pair`, which runs here alone, a new backup
    /// on `to` (or where placement says); the new backup's name and host,
    /// and how long the guest stood still for its snapshot (ms).
    pub(super) fn restore(
        &self,
        pair: &str,
        name: &str,
        to: Option<&str>,
    ) -> Result<(String, f64)> {
        let plan = self.plan(pair)?;
        let dir = self.pair_dir(pair);
        let survivor = crate::pair::read_named(&dir, name)
            .filter(|vm| vm.running() && vm.line.state == VmState::Live)
            .ok_or_else(|| anyhow!("{pair}/{name} does not run alone here"))?;
        let hosts = hosts(&self.etcd)?;
        let target = match to {
            Some(to) => hosts
                .iter()
                .find(|h| h.name == to)
                .ok_or_else(|| anyhow!("no host {to} is registered"))?,
            None => place(&hosts, &self.config.host, plan.memory_mib)
                .ok_or_else(|| anyhow!("no registered host has {} MiB free", plan.memory_mib))?,
        };
        let epoch = survivor.line.epoch.unwrap_or(1) + 1;
        let backup = format!("vm{epoch}");
        let start = Request::StartVm {
            pair: pair.into(),
            name: backup.clone(),
            role: Role::Backup { epoch },
            plan,
        };
        let stop = |only| {
            let stop = Request::StopVm {
                pair: pair.into(),
                name: backup.clone(),
                only,
            };
            let _ = ask_agent(
                &target.agent,
                &self.config.key,
                &stop,
                Duration::from_secs(5),
            );
        };
        let started = ask_agent(
            &target.agent,
            &self.config.key,
            &start,
            Duration::from_secs(30),
        )
        .with_context(|| format!("asking {} to start {backup}", target.name));
        let addr = match started {
            Ok(addr) => addr,
            Err(e) => {
                // It may have started all the same (a late answer).
                stop(StopOnly::Backup);
                return Err(e);
            }
        };
        // `ftvm cluster unprotect` may have come while the backup started.
        if !matches!(self.etcd.get(&store::unprotected_key(pair)), Ok(None)) {
            stop(StopOnly::Backup);
            bail!("{pair} was unprotected meanwhile");
        }
        let result = self.clone_into(pair, &survivor, &backup, &target.name, &addr, epoch);
        // A clone that failed while the survivor runs is ended. One whose
        // survivor died is left alone once it holds the snapshot: if it
        // had caught up it is the VM's only copy and takes over; if not it
        // halts by itself. One still waiting for the snapshot would wait
        // for ever: it is ended. Its own agent tells which from its status
        // file: the store may say nothing (without a quorum, when the
        // survivor died with a majority of its members) or be 200 ms old,
        // and deciding from the store ended the only copy.
        if result.is_err() {
            let survivor_runs =
                crate::pair::read_named(&dir, &survivor.name).is_some_and(|vm| vm.running());
            stop(if survivor_runs {
                StopOnly::Backup
            } else {
                StopOnly::Waiting
            });
        }
        result.map(|pause_ms| (format!("{backup} on {}", target.name), pause_ms))
    }

    fn clone_into(
        &self,
        pair: &str,
        survivor: &Vm,
        backup: &str,
        host: &str,
        addr: &str,
        epoch: u64,
    ) -> Result<f64> {
        let dir = self.pair_dir(pair);
        let control_socket = dir.join(format!("{}.control", survivor.name));
        let clone = VmRequest::Clone {
            addr: addr.to_string(),
            epoch,
        };
        if let Err(why) = control::ask(&control_socket, &clone)? {
            bail!("{} refused to clone: {why}", survivor.name);
        }
        let started = Instant::now();
        let outcome = wait_for(CLONE_LIMIT, || {
            let Some(old) = crate::pair::read_named(&dir, &survivor.name) else {
                return Some(Err("its status is gone".to_string()));
            };
            if !old.running() {
                return Some(Err(format!("{} ended", survivor.name)));
            }
            let new = records(&self.etcd, pair)
                .ok()?
                .into_iter()
                .find(|r| r.name == backup && r.host == host);
            if new.as_ref().is_some_and(|r| !r.running) {
                return Some(Err(format!("{backup} on {host} ended")));
            }
            let protected = old.line.state == VmState::Primary
                && old.line.epoch == Some(epoch)
                && new.is_some_and(|r| r.state == "backup");
            if protected {
                return Some(Ok(old.line.clone_pause_ms.unwrap_or(0.0)));
            }
            let gave_up = old.line.state == VmState::Live
                && old.line.clone.is_none()
                && started.elapsed() > Duration::from_secs(2);
            gave_up.then(|| Err(format!("{} gave the clone up", survivor.name)))
        })
        .with_context(|| format!("the clone into {backup} on {host} did not finish"))?;
        outcome.map_err(|why| anyhow!("the clone into {backup} on {host} failed: {why}"))
    }
}

/// Why a VM in `state` is not one that a `StopVm` limited to `only` ends,
/// if it is not.
fn refuses_to_stop(only: StopOnly, state: VmState) -> Option<&'static str> {
    match only {
        StopOnly::Any => None,
        StopOnly::Backup => state
            .runs_the_guest()
            .then_some("runs the guest now: it is not a backup to end"),
        StopOnly::Waiting => (state != VmState::Waiting)
            .then_some("holds its primary's clone, perhaps the VM's only copy"),
    }
}

/// This boot of the host (Linux's random boot id), so that a VM of an
/// earlier boot is never taken for alive because its pid came back.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_limited_to_some_vms_ends_only_those() {
        for state in VmState::ALL {
            assert_eq!(refuses_to_stop(StopOnly::Any, state), None, "{state}");
            assert_eq!(
                refuses_to_stop(StopOnly::Backup, state).is_some(),
                state.runs_the_guest(),
                "{state}"
            );
            // A backup whose primary died while it caught up (`backup`) or
            // that took over since (`live`, `primary`, `cloning`) is kept.
            assert_eq!(
                refuses_to_stop(StopOnly::Waiting, state).is_none(),
                state == VmState::Waiting,
                "{state}"
            );
        }
    }
}
