//! `ftvm agent --cluster` and `ftvm cluster`: FT pairs on a cluster of
//! hosts, each running an agent, with etcd as the cluster store and the
//! arbiter ([`ftvm_cluster`] says what they keep there and how they
//! place VMs).
//!
//! `ftvm cluster up` writes the pair's plan to the store and asks one
//! agent to start the VM alone; that agent protects it at once, as it
//! does after every failure: a backup on another host, cloned from the
//! running VM. `status` lists hosts and VMs from the store; `migrate`
//! asks the agent of the VM that runs the guest to move either VM;
//! `stop` ends the pair.

mod agent;
mod migrate;
pub mod view;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use ftvm_cluster::placement::{HostInfo, place};
use ftvm_cluster::request::{self, PairPlan, Request, Role, StopOnly};
use ftvm_cluster::store::{self, VmRecord};
use ftvm_host::etcd::EtcdClient;

use crate::MachineArgs;
use crate::daemon::DiskModeArg;
use crate::pair::wait_for;
use crate::restore::WhichVm;

/// How a host's agent runs (`ftvm agent --cluster ...`).
pub(crate) struct AgentConfig {
    pub store: String,
    pub host: String,
    pub listen: String,
    pub key: [u8; 32],
    pub dir: PathBuf,
    pub memory_mib: u64,
    pub addr_file: Option<PathBuf>,
    /// Where to serve the cluster's page, metrics and scrape targets.
    pub http: Option<std::net::SocketAddr>,
}

impl AgentConfig {
    /// The address VMs on this host listen on: the agent's (never a
    /// wildcard: [`agent()`] refuses one).
    pub fn vm_ip(&self) -> String {
        match self.listen.rsplit_once(':') {
            Some((ip, _)) => ip.to_string(),
            None => self.listen.clone(),
        }
    }
}

/// The options of `ftvm agent` for a host of a cluster.
#[derive(Args, Clone, Default)]
pub struct ClusterAgentArgs {
    /// Serve a cluster: the store (`etcd:HOST:PORT[,HOST:PORT...]`)
    /// where hosts register and VMs are arbitrated. Without it the agent
    /// keeps one pair on this host protected (`--state-dir` of `ftvm up`).
    #[arg(long, value_name = "etcd:ENDPOINTS")]
    pub cluster: Option<String>,
    /// The file holding the cluster key (any 16 bytes or more, the same
    /// on every host).
    #[arg(long, value_name = "FILE")]
    pub cluster_key: Option<PathBuf>,
    /// This host's name in the cluster (default: the system's host name).
    #[arg(long)]
    pub host: Option<String>,
    /// Where to take requests from other agents (`IP:PORT`); the VMs of
    /// this host listen on the same IP.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// Memory this host gives VMs (default: what is available now).
    #[arg(long, value_name = "MIB")]
    pub memory_mib: Option<u64>,
    /// Write the address actually listened on to this file.
    #[arg(long, value_name = "FILE")]
    pub addr_file: Option<PathBuf>,
}

/// `ftvm agent --cluster ...`.
pub fn agent(
    dir: &std::path::Path,
    args: &ClusterAgentArgs,
    http: Option<std::net::SocketAddr>,
) -> Result<ExitCode> {
    let store = store_endpoints(args.cluster.as_deref().unwrap_or_default())?;
    let key = read_cluster_key(
        args.cluster_key
            .as_deref()
            .context("--cluster needs --cluster-key")?,
    )?;
    let host = match &args.host {
        Some(host) => host.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name (or give --host)")?
            .trim()
            .to_string(),
    };
    ftvm_host::arbiter::check_name(&host).map_err(|e| anyhow!("--host: {e}"))?;
    let memory_mib = match args.memory_mib {
        Some(mib) => mib,
        None => available_mib().context("reading /proc/meminfo (or give --memory-mib)")?,
    };
    agent::run(AgentConfig {
        store,
        host,
        listen: {
            let listen = args
                .listen
                .clone()
                .context("--cluster needs --listen IP:PORT")?;
            let addr: std::net::SocketAddr = listen
                .parse()
                .with_context(|| format!("--listen {listen}: not an IP:PORT"))?;
            if addr.ip().is_unspecified() {
                bail!(
                    "--listen {listen}: other hosts reach this agent and its VMs at this \
                     address, so it must be this host's own address on the cluster's network"
                );
            }
            listen
        },
        key,
        dir: dir.to_path_buf(),
        memory_mib,
        addr_file: args.addr_file.clone(),
        http,
    })
}

fn available_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// `etcd:A,B,C` → `A,B,C`.
fn store_endpoints(spec: &str) -> Result<String> {
    let endpoints = spec
        .strip_prefix("etcd:")
        .with_context(|| format!("the cluster store is etcd:HOST:PORT[,...], not {spec:?}"))?;
    Ok(EtcdClient::new(endpoints)?.endpoints())
}

fn read_cluster_key(path: &std::path::Path) -> Result<[u8; 32]> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    request::cluster_key(&bytes)
        .with_context(|| format!("{} holds fewer than 16 bytes", path.display()))
}

/// Ask the agent at `addr`, all within `limit`; its answer, or its
/// refusal as an error.
pub(crate) fn ask_agent(
    addr: &str,
    key: &[u8; 32],
    request: &Request,
    limit: Duration,
) -> Result<String> {
    let deadline = Instant::now() + limit;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let target = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))?;
    let stream = TcpStream::connect_timeout(&target, left().min(Duration::from_secs(3)))
        .with_context(|| format!("connecting to the agent at {addr}"))?;
    stream.set_read_timeout(Some(left()))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let challenge = request::read_hello(line.trim())?;
    let mut writer = stream;
    writeln!(
        writer,
        "{}",
        request::seal_request(key, &challenge, request)
    )?;
    line.clear();
    reader.get_ref().set_read_timeout(Some(left()))?;
    reader
        .read_line(&mut line)
        .with_context(|| format!("waiting for the agent at {addr}"))?;
    match request::open_reply(key, &challenge, line.trim()).with_context(|| {
        format!("the agent at {addr} does not hold this cluster key, or refused a request signed with it")
    })?
    {
        Ok(done) => Ok(done),
        Err(why) => bail!("the agent at {addr} refused: {why}"),
    }
}

/// The registered hosts.
pub(crate) fn hosts(etcd: &EtcdClient) -> Result<Vec<HostInfo>> {
    let mut hosts = Vec::new();
    for (key, value) in etcd.prefix(store::HOSTS)? {
        match serde_json::from_slice(&value) {
            Ok(host) => hosts.push(host),
            Err(e) => tracing::warn!(%key, "not a host registration: {e}"),
        }
    }
    Ok(hosts)
}

/// The VMs of `pair` as their agents published them.
pub(crate) fn records(etcd: &EtcdClient, pair: &str) -> Result<Vec<VmRecord>> {
    decode_records(etcd.prefix(&store::vms_of(pair))?)
}

fn decode_records(kvs: Vec<(String, Vec<u8>)>) -> Result<Vec<VmRecord>> {
    Ok(kvs
        .into_iter()
        .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
        .collect())
}

/// Whether the records show `pair` protected: a primary and a running
/// backup of the same epoch. The two, if so.
pub(crate) fn protected(records: &[VmRecord]) -> Option<(&VmRecord, &VmRecord)> {
    // The newest epoch: an old primary back from a partition may show for
    // a moment until it halts.
    let primary = records
        .iter()
        .filter(|r| r.running && r.state == "primary")
        .max_by_key(|r| r.epoch)?;
    let backup = records
        .iter()
        .find(|r| r.running && r.state == "backup" && r.epoch == primary.epoch)?;
    Some((primary, backup))
}

#[derive(Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Args)]
struct StoreArgs {
    /// The cluster store (`etcd:HOST:PORT[,HOST:PORT...]`).
    #[arg(long, value_name = "etcd:ENDPOINTS")]
    cluster: String,
    /// The file holding the cluster key.
    #[arg(long, value_name = "FILE")]
    cluster_key: PathBuf,
}

impl StoreArgs {
    fn open(&self) -> Result<(EtcdClient, [u8; 32])> {
        Ok((
            EtcdClient::new(&store_endpoints(&self.cluster)?)?,
            read_cluster_key(&self.cluster_key)?,
        ))
    }
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start a pair on the cluster: the VM on one host (`--on`, or the
    /// least loaded), its backup cloned onto another; returns once the
    /// pair is protected.
    Up(UpArgs),
    /// The hosts of the cluster and the VMs of every pair, each with its
    /// lag, log rate and output delay as its own host's agent tells them.
    Status(StatusArgs),
    /// Move either VM of a pair to another host while it runs.
    Migrate(MigrateArgs),
    /// End a pair: its VM ends cleanly, its backup with it.
    Stop(PairArgs),
    /// Turn FT off for a pair: its backup ends, the VM runs on alone and
    /// no agent gives it a new one until `protect`.
    Unprotect(PairArgs),
    /// Turn FT on again for a pair whose VM runs alone: its agent clones
    /// it onto another host; returns once the pair is protected.
    Protect(PairArgs),
    /// Write a pair's logging-channel key (derived from the cluster key)
    /// to a file, for an `ftvm switch --key-file` of the pair's network.
    PairKey(PairKeyArgs),
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The pair's name, unique in the cluster.
    #[arg(long)]
    pair: String,
    /// The host to start the VM on (default: placement's choice).
    #[arg(long, value_name = "HOST")]
    on: Option<String>,
    #[command(flatten)]
    machine: MachineArgs,
    /// How the disk is shared: `shared` (one image every host reaches) or
    /// `private` (each VM has its own copy, filled by its clone).
    #[arg(long, value_name = "shared|private", default_value = "shared")]
    disk_mode: DiskModeArg,
    #[arg(long, value_name = "MS", default_value_t = 100)]
    heartbeat_ms: u64,
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    timeout_ms: u64,
    /// The pair's network: `switch:HOST:PORT` of an `ftvm switch` that
    /// every host reaches (its --key-file: `ftvm cluster pair-key`).
    #[arg(long, value_name = "switch:HOST:PORT")]
    net: Option<String>,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print the status as one JSON object (`hosts`, `vms`), for scripts.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Redraw the cluster's VMs as a table, with the events seen between
    /// two looks, until interrupted.
    #[arg(long)]
    watch: bool,
    /// How often `--watch` looks.
    #[arg(long, value_name = "MS", default_value_t = 1000, requires = "watch")]
    every_ms: u64,
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long)]
    pair: String,
    /// Which VM moves.
    #[arg(long, value_name = "primary|backup")]
    vm: WhichVm,
    /// The host to move it to (default: placement's choice).
    #[arg(long, value_name = "HOST")]
    to: Option<String>,
}

#[derive(Args)]
struct PairArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long)]
    pair: String,
}

#[derive(Args)]
struct PairKeyArgs {
    /// The file holding the cluster key.
    #[arg(long, value_name = "FILE")]
    cluster_key: PathBuf,
    #[arg(long)]
    pair: String,
    /// Where to write the pair key.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn cluster(args: &ClusterArgs) -> Result<ExitCode> {
    match &args.command {
        ClusterCommand::Up(args) => up(args),
        ClusterCommand::Status(args) => {
            let (etcd, key) = args.store.open()?;
            let every = args
                .watch
                .then(|| Duration::from_millis(args.every_ms.max(100)));
            view::show(&etcd, &key, args.json, every)
        }
        ClusterCommand::Migrate(args) => migrate_command(args),
        ClusterCommand::Stop(args) => stop(args),
        ClusterCommand::Unprotect(args) => unprotect(args),
        ClusterCommand::Protect(args) => protect(args),
        ClusterCommand::PairKey(args) => {
            let key = request::pair_key(&read_cluster_key(&args.cluster_key)?, &args.pair);
            let hex = crate::pair::hex(&key);
            crate::pair::write_private(&args.out, hex.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How long `up` waits for the pair to be protected.
const UP_LIMIT: Duration = Duration::from_secs(120);

fn up(args: &UpArgs) -> Result<ExitCode> {
    let (etcd, key) = args.store.open()?;
    ftvm_host::arbiter::check_name(&args.pair).map_err(|e| anyhow!("--pair: {e}"))?;
    args.machine
        .machine_config(Vec::new())
        .context("the guest to run")?;
    if records(&etcd, &args.pair)?.iter().any(|r| r.running) {
        bail!("a pair named {} runs in the cluster already", args.pair);
    }
    let mut common: Vec<String> = args
        .net
        .iter()
        .flat_map(|net| ["--net".to_string(), net.clone()])
        .collect();
    common.extend(crate::pair::timing_args(
        args.heartbeat_ms,
        args.timeout_ms,
        args.disk_mode,
    ));
    let text = |args: Vec<std::ffi::OsString>| -> Result<Vec<String>> {
        args.into_iter()
            .map(|a| a.into_string().map_err(|a| anyhow!("{a:?} is not UTF-8")))
            .collect()
    };
    let mut backup = vec!["--engine".to_string(), args.machine.engine.to_string()];
    let mut private_disk = None;
    if let Some(disk) = &args.machine.disk {
        match args.disk_mode {
            DiskModeArg::Shared => backup.extend([
                "--disk".into(),
                crate::pair::absolute(disk)?.to_string_lossy().into_owned(),
            ]),
            DiskModeArg::Private => {
                private_disk = Some(
                    std::fs::metadata(disk)
                        .with_context(|| format!("reading {}", disk.display()))?
                        .len(),
                );
            }
        }
    }
    let plan = PairPlan {
        common,
        machine: text(args.machine.to_args()?)?,
        backup,
        memory_mib: args.machine.memory,
        private_disk,
        incarnation: {
            let id: [u8; 4] = ftvm_host::random_bytes()?;
            crate::pair::hex(&id)
        },
    };
    // Created only if there is none: a pair of that name whose VMs are
    // out of sight (a host cut off, its records gone with its lease) is
    // still a pair.
    let sealed = request::seal_plan(&key, &args.pair, &plan);
    if etcd.create_or_read(&store::plan_key(&args.pair), &sealed)? != sealed {
        bail!(
            "a pair named {0} exists in the cluster (its plan is in the store): \
             `ftvm cluster stop --pair {0}` first, or choose another name",
            args.pair
        );
    }
    let hosts = hosts(&etcd)?;
    let host = match &args.on {
        Some(on) => hosts
            .iter()
            .find(|h| &h.name == on)
            .with_context(|| format!("no host {on} is registered"))?,
        None => place(&hosts, "", plan.memory_mib)
            .with_context(|| format!("no registered host has {} MiB free", plan.memory_mib))?,
    };
    let started = Instant::now();
    let start = Request::StartVm {
        pair: args.pair.clone(),
        name: "vm1".into(),
        role: Role::Alone,
        plan,
    };
    ask_agent(&host.agent, &key, &start, Duration::from_secs(30))?;
    println!("ftvm: {}/vm1 started on {}", args.pair, host.name);
    say_protected(&etcd, &key, &args.pair, started)?;
    Ok(ExitCode::SUCCESS)
}

/// The agent of the VM that runs `pair`'s guest.
fn guest_agent(etcd: &EtcdClient, pair: &str) -> Result<(VmRecord, HostInfo)> {
    let records = records(etcd, pair)?;
    // The newest epoch: an old primary cut off by a partition may show
    // for a moment once it is back, until it halts.
    let guest = records
        .iter()
        .filter(|r| r.runs_guest())
        .max_by_key(|r| r.epoch)
        .with_context(|| format!("no VM of {pair} runs in the cluster"))?;
    let host = hosts(etcd)?
        .into_iter()
        .find(|h| h.name == guest.host)
        .with_context(|| format!("{}'s host {} is not registered", guest.name, guest.host))?;
    Ok((guest.clone(), host))
}

fn migrate_command(args: &MigrateArgs) -> Result<ExitCode> {
    let (etcd, key) = args.store.open()?;
    let (_, host) = guest_agent(&etcd, &args.pair)?;
    let request = Request::Migrate {
        pair: args.pair.clone(),
        backup: args.vm == WhichVm::Backup,
        to: args.to.clone(),
    };
    let done = std::thread::scope(|scope| {
        let asked =
            scope.spawn(|| ask_agent(&host.agent, &key, &request, Duration::from_secs(300)));
        let mut bar = CloneBar::new(&etcd, &key, &args.pair);
        while !asked.is_finished() {
            bar.look();
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(bar);
        asked
            .join()
            .map_err(|_| anyhow!("asking the agent failed"))?
    })?;
    println!("ftvm: {done}");
    Ok(ExitCode::SUCCESS)
}

fn stop(args: &PairArgs) -> Result<ExitCode> {
    let (etcd, key) = args.store.open()?;
    let guest = guest_agent(&etcd, &args.pair);
    // No agent restores a pair without a plan.
    etcd.delete(&store::plan_key(&args.pair))?;
    etcd.delete(&store::unprotected_key(&args.pair))?;
    let Ok((guest, host)) = guest else {
        println!(
            "ftvm: no VM of {} runs in the cluster; its plan is removed",
            args.pair
        );
        return Ok(ExitCode::SUCCESS);
    };
    let stop = Request::StopVm {
        pair: args.pair.clone(),
        name: guest.name.clone(),
        only: StopOnly::Any,
    };
    ask_agent(&host.agent, &key, &stop, Duration::from_secs(10))?;
    wait_for(Duration::from_secs(30), || {
        let records = records(&etcd, &args.pair).ok()?;
        records.iter().all(|r| !r.running).then_some(())
    })
    .with_context(|| format!("{} did not end", args.pair))?;
    println!("ftvm: {} ended", args.pair);
    Ok(ExitCode::SUCCESS)
}

fn unprotect(args: &PairArgs) -> Result<ExitCode> {
    let (etcd, key) = args.store.open()?;
    etcd.put(&store::unprotected_key(&args.pair), b"yes", None)?;
    let vms = records(&etcd, &args.pair)?;
    let hosts = hosts(&etcd)?;
    for backup in vms.iter().filter(|r| r.running && r.state == "backup") {
        let host = hosts
            .iter()
            .find(|h| h.name == backup.host)
            .with_context(|| format!("{}'s host {} is not registered", backup.name, backup.host))?;
        let stop = Request::StopVm {
            pair: args.pair.clone(),
            name: backup.name.clone(),
            only: StopOnly::Backup,
        };
        ask_agent(&host.agent, &key, &stop, Duration::from_secs(10))?;
    }
    let guest = wait_for(Duration::from_secs(30), || {
        let records = records(&etcd, &args.pair).ok()?;
        let alone = !records.iter().any(|r| r.running && r.state == "backup");
        records
            .into_iter()
            .find(|r| r.running && r.state == "live")
            .filter(|_| alone)
    })
    .with_context(|| format!("{} did not go on alone", args.pair))?;
    println!(
        "ftvm: {} runs alone, unprotected: {} on {} (`ftvm cluster protect` protects it again)",
        args.pair, guest.name, guest.host
    );
    Ok(ExitCode::SUCCESS)
}

fn protect(args: &PairArgs) -> Result<ExitCode> {
    let (etcd, key) = args.store.open()?;
    if etcd.get(&store::plan_key(&args.pair))?.is_none() {
        bail!("no pair {} was started in this cluster", args.pair);
    }
    etcd.delete(&store::unprotected_key(&args.pair))?;
    let started = Instant::now();
    say_protected(&etcd, &key, &args.pair, started)?;
    Ok(ExitCode::SUCCESS)
}

/// On a terminal, a bar of the clone `pair`'s guest is making, as its
/// agent tells how far it has come; nothing elsewhere.
struct CloneBar<'a> {
    etcd: &'a EtcdClient,
    key: &'a [u8; 32],
    pair: &'a str,
    terminal: bool,
    bar: Option<indicatif::ProgressBar>,
    /// A look costs etcd reads and a request to the agent: four a second.
    looked: Option<Instant>,
}

impl<'a> CloneBar<'a> {
    fn new(etcd: &'a EtcdClient, key: &'a [u8; 32], pair: &'a str) -> CloneBar<'a> {
        use std::io::IsTerminal;
        CloneBar {
            etcd,
            key,
            pair,
            terminal: std::io::stderr().is_terminal(),
            bar: None,
            looked: None,
        }
    }

    fn look(&mut self) {
        let recent = self
            .looked
            .is_some_and(|at| at.elapsed() < Duration::from_millis(250));
        if !self.terminal || recent {
            return;
        }
        self.looked = Some(Instant::now());
        if let Some((vm, clone)) = view::guest_clone(self.etcd, self.key, self.pair) {
            let bar = self
                .bar
                .get_or_insert_with(|| crate::progress::bytes(0, "cloning"));
            crate::progress::show_clone(bar, &vm, &clone);
        }
    }
}

impl Drop for CloneBar<'_> {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Wait until `pair` is protected (on a terminal, with a bar of its
/// clone), and say where its VMs run.
fn say_protected(etcd: &EtcdClient, key: &[u8; 32], pair: &str, started: Instant) -> Result<()> {
    let mut bar = CloneBar::new(etcd, key, pair);
    let found = wait_for(UP_LIMIT, || {
        bar.look();
        let records = records(etcd, pair).ok()?;
        protected(&records).map(|(p, b)| (p.clone(), b.clone()))
    });
    drop(bar);
    let (primary, backup) = found.with_context(|| {
        format!(
            "{pair} was not protected within {} s: see the agents' logs",
            UP_LIMIT.as_secs()
        )
    })?;
    println!(
        "ftvm: {pair} protected in {:.1} s: {} on {} is the primary, {} on {} its backup (epoch {})",
        started.elapsed().as_secs_f64(),
        primary.name,
        primary.host,
        backup.name,
        backup.host,
        primary.epoch.unwrap_or(0)
    );
    Ok(())
}
