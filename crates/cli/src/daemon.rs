//! `ftvm primary` and `ftvm backup`: the options of one VM of an FT pair,
//! turned into a run of `ftvm_host::pair` and an exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use ftvm_ft::detector::DetectorConfig;
use ftvm_host::clock::Clock;
use ftvm_host::pair::{ArbiterSpec, PairOptions};
use ftvm_node::{DiskMode, Node, NodeConfig, Status};

use crate::MachineArgs;

/// What both VMs of a pair are told alike.
#[derive(Args, Clone)]
pub struct PairArgs {
    /// The pair's name: the arbiter's key, and what each side checks the
    /// other belongs to.
    #[arg(long, default_value = "ftvm")]
    pub pair: String,

    /// The pair's epoch (each new pairing of a VM takes a new one).
    #[arg(long, default_value_t = 1)]
    pub epoch: u64,

    /// The file holding the pre-shared key of the logging channel (any
    /// bytes; `ftvm up` writes 32 random ones, hex-encoded).
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,

    /// The test-and-set store both VMs reach: a directory on shared
    /// storage, or `etcd:HOST:PORT` for an etcd member's client address
    /// (v3 API over plain HTTP).
    #[arg(long, value_name = "DIR|etcd:HOST:PORT")]
    pub arbiter: String,

    /// Send a heartbeat after this long without other traffic.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Suspect the peer after this long without hearing from it.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub timeout_ms: u64,

    /// Slow the primary down when the backup trails it by more than this
    /// much guest execution.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub max_lag_ms: u64,

    /// How the disk is shared: `shared` (both VMs name the same image;
    /// only the live VM writes, and writes are outputs) or `private` (each
    /// VM has its own copy, and the backup writes to its copy too).
    #[arg(long, value_name = "shared|private", default_value = "shared")]
    pub disk_mode: DiskModeArg,

    /// The pair's console as a file: the live VM writes every released
    /// byte at its offset in the guest's console stream, so the file reads
    /// as one stream across a failover. Released bytes also go to stdout.
    #[arg(long, value_name = "FILE")]
    pub console_file: Option<PathBuf>,

    /// Take console input on this Unix socket (`ftvm console` connects to
    /// it): bytes written to it are typed on the guest's console while
    /// this VM runs the guest (a primary logs them), and dropped while it
    /// is a backup.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,

    /// Keep a one-line status here (for `ftvm status`), rewritten a few
    /// times a second.
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,

    /// Take requests on this Unix socket (`ftvm protect` and the agent
    /// use it): a VM that runs alone can be asked to clone itself into a
    /// new backup there.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// This VM's name for the arbiter and the logs (default: its role).
    #[arg(long)]
    pub name: Option<String>,

    /// Serve this VM's metrics in Prometheus's text format at
    /// `http://HOST:PORT/metrics` (port 0: any free port; the status line
    /// says which, as `metrics=HOST:PORT`). `ftvm up` gives each VM a free
    /// loopback port.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Keep this VM's history here: a JSON line a second (state, epoch,
    /// lag, log rate, output delay, instructions) and one at each change
    /// of its state, which `ftvm plot` draws.
    #[arg(long, value_name = "FILE")]
    pub history_file: Option<PathBuf>,

    /// Give the VM a network card on a network that outlives it (the
    /// primary's card is the pair's; the backup's port carries the VM's
    /// traffic once it goes live): `switch:HOST:PORT`, a port on an
    /// `ftvm switch` (which `ftvm up --net` starts), or `tap,ifname=NAME`,
    /// a TAP interface on a bridge. The backup needs one when the primary
    /// has one. `,mtu=N` sets the card's MTU (the primary's is the VM's):
    /// by default 65280 on a switch, 1500 on TAP (see `ftvm run --net`).
    #[arg(long, value_name = "switch:HOST:PORT|tap,ifname=NAME[,mtu=N]")]
    pub net: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskModeArg {
    Shared,
    Private,
}

impl DiskModeArg {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskModeArg::Shared => "shared",
            DiskModeArg::Private => "private",
        }
    }
}

#[derive(Args)]
pub struct PrimaryArgs {
    #[command(flatten)]
    pub machine: MachineArgs,

    #[command(flatten)]
    pub pair: PairArgs,

    /// The backup's logging-channel address (`ftvm backup --listen`).
    /// Without it the VM runs alone, unprotected, until `ftvm protect`
    /// clones it into a backup (through `--control-socket`).
    #[arg(long, value_name = "HOST:PORT")]
    pub backup: Option<String>,

    /// Keep trying to reach the backup for this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub connect_timeout: u64,
}

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub pair: PairArgs,

    /// Where to wait for the primary (port 0: any free port).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: String,

    /// Write the address actually listened on to this file.
    #[arg(long, value_name = "FILE")]
    pub addr_file: Option<PathBuf>,

    /// Give up (exit 1) if no primary has connected after this long (a
    /// clone target whose survivor, or the agent that asked for it, died
    /// before the clone began). Default: wait for ever.
    #[arg(long, value_name = "SECONDS")]
    pub accept_timeout: Option<u64>,

    /// This VM's disk image: the primary's image itself (shared) or this
    /// VM's own copy (private). Needed when the primary has a disk.
    #[arg(long, value_name = "FILE")]
    pub disk: Option<PathBuf>,

    /// How this VM's CPU executes (see `ftvm run --engine`).
    #[arg(long, value_name = "ENGINE", default_value_t = crate::EngineArg::default())]
    pub engine: crate::EngineArg,
}

impl PairArgs {
    fn node_config(&self, engine: ftvm_board::Engine) -> Result<NodeConfig> {
        if self.heartbeat_ms == 0 || self.timeout_ms <= self.heartbeat_ms {
            bail!(
                "--timeout-ms ({}) must be longer than --heartbeat-ms ({}), which must be positive",
                self.timeout_ms,
                self.heartbeat_ms
            );
        }
        let mut config = NodeConfig::new(&self.pair);
        config.epoch = self.epoch;
        config.detector = DetectorConfig {
            heartbeat_ms: self.heartbeat_ms,
            timeout_ms: self.timeout_ms,
        };
        config.max_lag_ns = self.max_lag_ms.saturating_mul(1_000_000);
        config.disk = match self.disk_mode {
            DiskModeArg::Shared => DiskMode::Shared,
            DiskModeArg::Private => DiskMode::Private,
        };
        config.engine = engine;
        Ok(config)
    }

    fn net(&self) -> Result<Option<ftvm_net::NetSpec>> {
        Ok(self.net.as_deref().map(ftvm_net::parse_net).transpose()?)
    }

    fn options(
        &self,
        role: &str,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<PairOptions> {
        Ok(PairOptions {
            name: self.name.clone().unwrap_or_else(|| role.into()),
            key: ftvm_host::pair::read_key(&self.key_file)?,
            arbiter: ArbiterSpec::parse(&self.arbiter)?,
            console_file: self.console_file.clone(),
            console_socket: self.console_socket.clone(),
            status_file: self.status_file.clone(),
            control_socket: self.control_socket.clone(),
            metrics: self.metrics,
            history_file: self.history_file.clone(),
            stop,
        })
    }
}

pub fn primary(args: &PrimaryArgs) -> Result<ExitCode> {
    let stop = ftvm_host::stop_flag()?;
    let net = args.pair.net()?;
    let options = args.pair.options("primary", stop)?;
    let (io, frames) =
        ftvm_host::pair::open_devices(args.machine.disk.as_deref(), net.as_ref(), &options.key)?;
    let machine = args.machine.machine_config(io.devices())?;
    let config = args.pair.node_config(machine.engine)?;
    let clock = Clock::new(args.machine.rtc_time);
    let node = match &args.backup {
        Some(backup) => ftvm_host::pair::primary(
            config,
            machine,
            io,
            frames,
            options,
            backup,
            Duration::from_secs(args.connect_timeout),
            clock,
        )?,
        None => {
            if options.control_socket.is_none() {
                bail!(
                    "a primary without --backup runs alone until it is cloned: give it a \
                     --control-socket to be asked through"
                );
            }
            ftvm_host::pair::alone(config, machine, io, frames, options, clock)?
        }
    };
    Ok(exit_code(&node))
}

pub fn backup(args: &BackupArgs) -> Result<ExitCode> {
    let stop = ftvm_host::stop_flag()?;
    let net = args.pair.net()?;
    let config = args.pair.node_config(args.engine.engine())?;
    let options = args.pair.options("backup", stop)?;
    let (io, frames) =
        ftvm_host::pair::open_devices(args.disk.as_deref(), net.as_ref(), &options.key)?;
    let node = ftvm_host::pair::backup(
        config,
        io,
        frames,
        options,
        &args.listen,
        args.addr_file.as_deref(),
        args.accept_timeout.map(Duration::from_secs),
    )
    .with_context(|| format!("the backup on {}", args.listen))?;
    Ok(node.as_ref().map_or(ExitCode::SUCCESS, exit_code))
}

/// 0 when the pair ended, 2 when this VM halted (said on stderr), 1
/// otherwise.
fn exit_code(node: &Node) -> ExitCode {
    match node.status() {
        // A planned hand-over (`ftvm migrate`) is this VM's success.
        Status::Ended(_) | Status::Halted(ftvm_node::HaltReason::HandedOver) => ExitCode::SUCCESS,
        Status::Halted(why) => {
            tracing::error!("halted: {why}");
            ExitCode::from(2)
        }
        _ => ExitCode::FAILURE,
    }
}
