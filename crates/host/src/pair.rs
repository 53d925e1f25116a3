//! A VM of an FT pair as a process: `ftvm primary` connects to its backup
//! and runs the guest; `ftvm backup` waits for its primary and replays.
//! Both then run the one loop of [`vm`](crate::vm).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ftvm_board::MachineConfig;
use ftvm_ft::channel::channel_key;
use ftvm_net::{FrameReceiver, NetSpec};
use ftvm_node::{Node, NodeConfig};

use crate::HostError;
use crate::arbiter::{Arbiter, EtcdArbiter, FileArbiter};
use crate::channel::{Channel, Credentials};
use crate::clock::Clock;
use crate::clone::First;
use crate::console::ConsoleFile;
use crate::files::HostFiles;
use crate::io::{Disk, HostIo, NetCard};
use crate::status::{StatusFile, StatusLine, VmState, write_atomically};
use crate::vm::{ConsoleIn, Stdout, VmHost};

/// The test-and-set store both VMs reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArbiterSpec {
    /// A directory on shared storage.
    Dir(PathBuf),
    /// The etcd members' client addresses (`HOST:PORT[,HOST:PORT...]`),
    /// v3 API over plain HTTP.
    Etcd(String),
}

impl ArbiterSpec {
    /// `DIR` or `etcd:HOST:PORT[,HOST:PORT...]`.
    pub fn parse(spec: &str) -> Result<ArbiterSpec, HostError> {
        match spec.strip_prefix("etcd:") {
            Some(endpoint) => {
                if endpoint.starts_with("https://") {
                    return Err(HostError::Config(
                        "the etcd arbiter speaks plain HTTP only (etcd:HOST:PORT)".into(),
                    ));
                }
                let endpoints: Vec<&str> = endpoint
                    .split(',')
                    .map(|e| e.trim().trim_start_matches("http://").trim_end_matches('/'))
                    .filter(|e| !e.is_empty())
                    .collect();
                if endpoints.is_empty() {
                    return Err(HostError::Config("etcd: names no member".into()));
                }
                Ok(ArbiterSpec::Etcd(endpoints.join(",")))
            }
            None => Ok(ArbiterSpec::Dir(PathBuf::from(spec))),
        }
    }

    /// The store, for the VM named `me`.
    pub fn open(&self, me: &str) -> Result<Box<dyn Arbiter>, HostError> {
        let token = crate::random_bytes()?;
        Ok(match self {
            ArbiterSpec::Etcd(endpoint) => Box::new(EtcdArbiter::new(endpoint, me, token)?),
            ArbiterSpec::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    HostError::io(
                        format!("creating the arbiter directory {}", dir.display()),
                        e,
                    )
                })?;
                Box::new(FileArbiter::new(dir, me, token)?)
            }
        })
    }
}

/// The channel key from the pre-shared secret in `path` (any bytes, at
/// least 16; `ftvm up` writes 32 random ones, hex-encoded).
pub fn read_key(path: &Path) -> Result<[u8; 32], HostError> {
    let secret = std::fs::read(path)
        .map_err(|e| HostError::io(format!("reading the key file {}", path.display()), e))?;
    let secret = secret.trim_ascii();
    if secret.len() < 16 {
        return Err(HostError::Config(format!(
            "the key file {} holds {} bytes; a pre-shared key needs at least 16",
            path.display(),
            secret.len()
        )));
    }
    Ok(channel_key(secret))
}

/// What both VMs of a pair are told alike.
pub struct PairOptions {
    /// This VM's name for the arbiter and the status line.
    pub name: String,
    pub key: [u8; 32],
    pub arbiter: ArbiterSpec,
    /// The pair's console file (written at stream offsets).
    pub console_file: Option<PathBuf>,
    /// Where `ftvm console` types.
    pub console_socket: Option<PathBuf>,
    pub status_file: Option<PathBuf>,
    /// Where `ftvm protect` and the agent ask this VM to clone itself.
    pub control_socket: Option<PathBuf>,
    /// Serve metrics for Prometheus here (port 0: any free port; the
    /// status line says which).
    pub metrics: Option<std::net::SocketAddr>,
    /// Keep the VM's history here (`ftvm plot` draws it).
    pub history_file: Option<PathBuf>,
    /// Set by SIGTERM/SIGINT.
    pub stop: Arc<AtomicBool>,
}

/// A VM's devices on this host: its disk (if any) and its network card
/// (if any), attached to a network outside this process (a switch port
/// seals its datagrams with the pair's `key`). The frames for the guest
/// come through the receiver.
pub fn open_devices(
    disk: Option<&Path>,
    net: Option<&NetSpec>,
    key: &[u8; 32],
) -> Result<(HostIo, Option<Box<dyn FrameReceiver>>), HostError> {
    let (net, frames) = match net {
        Some(spec) => {
            let key = ftvm_net::datagram::DatagramKey::from_pair_key(key);
            let (backend, frames) = ftvm_net::attach(spec, Some(key))
                .map_err(|e| HostError::from(e).context("attaching the VM's network card"))?;
            let card = NetCard {
                backend,
                mtu: spec.mtu,
            };
            (Some(card), Some(frames))
        }
        None => (None, None),
    };
    let io = HostIo {
        disk: disk.map(Disk::open).transpose()?,
        net,
    };
    Ok((io, frames))
}

fn vm_host(
    clock: Clock,
    io: HostIo,
    frames: Option<Box<dyn FrameReceiver>>,
    channel: Option<Channel>,
    options: PairOptions,
    role: &str,
) -> Result<VmHost, HostError> {
    let console_file = options
        .console_file
        .as_deref()
        .map(|path| {
            ConsoleFile::open(path).map_err(|e| {
                HostError::io(format!("opening the console file {}", path.display()), e)
            })
        })
        .transpose()?;
    let mut host = VmHost::new(clock, io, options.stop);
    host.frames = frames;
    host.channel = channel;
    host.arbiter = Some(options.arbiter.open(&options.name)?);
    host.console_in = options
        .console_socket
        .map_or(ConsoleIn::None, ConsoleIn::Socket);
    host.console_file = console_file;
    host.stdout = Stdout::BestEffort;
    host.status_file = options.status_file.map(StatusFile::new);
    host.role = Some(role.to_string());
    host.name = Some(options.name.clone());
    host.key = Some(options.key);
    host.control = options.control_socket;
    host.metrics = options.metrics.map(crate::metrics::serve).transpose()?;
    host.history = options.history_file;
    Ok(host)
}

/// Say `state` in the status file before the run loop does.
fn early_status(path: Option<&Path>, state: VmState, role: &str, name: &str) {
    early_status_with(path, state, role, name, |_| {});
}

/// [`early_status`], with more fields set by `more`.
fn early_status_with(
    path: Option<&Path>,
    state: VmState,
    role: &str,
    name: &str,
    more: impl FnOnce(&mut StatusLine),
) {
    if let Some(path) = path {
        let mut line = StatusLine {
            role: Some(role.to_string()),
            name: Some(name.to_string()),
            ..StatusLine::new(state, std::process::id())
        };
        more(&mut line);
        StatusFile::new(path).write(&line);
    }
}

/// `ftvm primary`: connect to the backup at `backup` and run the guest of
/// `machine` on `io`, logging every input to it.
#[allow(clippy::too_many_arguments)]
pub fn primary(
    config: NodeConfig,
    machine: MachineConfig,
    io: HostIo,
    frames: Option<Box<dyn FrameReceiver>>,
    options: PairOptions,
    backup: &str,
    connect_timeout: Duration,
    clock: Clock,
) -> Result<Node, HostError> {
    early_status(
        options.status_file.as_deref(),
        VmState::Connecting,
        "primary",
        &options.name,
    );
    let credentials = Credentials {
        pair: &config.pair,
        epoch: config.epoch,
        key: options.key,
    };
    let channel = Channel::connect(backup, connect_timeout, &options.stop, &credentials)?;
    let node = Node::primary(config, machine, clock.now())?;
    let host = vm_host(clock, io, frames, Some(channel), options, "primary")?;
    crate::vm::run(node, host)
}

/// `ftvm primary` without a backup: run the guest of `machine` alone,
/// unlogged, until it is asked through its control socket to clone
/// itself into one (`ftvm protect`).
pub fn alone(
    config: NodeConfig,
    machine: MachineConfig,
    io: HostIo,
    frames: Option<Box<dyn FrameReceiver>>,
    options: PairOptions,
    clock: Clock,
) -> Result<Node, HostError> {
    let node = Node::solo(config, machine, clock.now(), false)?;
    let host = vm_host(clock, io, frames, None, options, "primary")?;
    crate::vm::run(node, host)
}

/// `ftvm backup`: wait on `listen` for the primary (the address actually
/// listened on goes to `addr_file`), then replay its log. `None` if asked
/// to stop before the primary came.
pub fn backup(
    config: NodeConfig,
    mut io: HostIo,
    frames: Option<Box<dyn FrameReceiver>>,
    options: PairOptions,
    listen: &str,
    addr_file: Option<&Path>,
    accept_limit: Option<Duration>,
) -> Result<Option<Node>, HostError> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| HostError::io(format!("listening on {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| HostError::io(format!("listening on {listen}"), e))?;
    if let Some(path) = addr_file {
        write_atomically(path, format!("{addr}\n").as_bytes())
            .map_err(|e| HostError::io(format!("writing {}", path.display()), e))?;
    }
    early_status(
        options.status_file.as_deref(),
        VmState::Waiting,
        "backup",
        &options.name,
    );
    tracing::info!(%addr, "waiting for the primary");
    let credentials = Credentials {
        pair: &config.pair,
        epoch: config.epoch,
        key: options.key,
    };
    let Some(mut channel) = Channel::accept(&listener, &options.stop, &credentials, accept_limit)?
    else {
        early_status_with(
            options.status_file.as_deref(),
            VmState::Halted,
            "backup",
            &options.name,
            |line| line.halt = Some(ftvm_node::HaltCode::Stopped),
        );
        return Ok(None);
    };
    drop(listener);
    // The primary's first words: its log from the machine's start, or a
    // clone of its running machine.
    let wait = Duration::from_millis(config.detector.timeout_ms.saturating_mul(5))
        .max(Duration::from_secs(10));
    let first = crate::clone::receive(&mut channel, wait, io.disk.as_mut(), |progress| {
        early_status_with(
            options.status_file.as_deref(),
            VmState::Waiting,
            "backup",
            &options.name,
            |line| {
                line.epoch = Some(config.epoch);
                line.clone = Some(progress);
            },
        );
    })
    .map_err(|e| e.context("taking the primary's first messages"))?;
    let clock = Clock::new(None);
    let node = match first {
        First::Clone(cloned) => {
            tracing::info!(
                icount = cloned.snapshot.icount(),
                "restoring the primary's clone"
            );
            Node::backup_from_clone(config, Box::new(HostFiles), *cloned, clock.now())?
        }
        First::Message(message) => {
            // Building the machine (the guest's images) takes a while:
            // the primary's failure detector hears heartbeats meanwhile.
            let heartbeat = Duration::from_millis(config.detector.heartbeat_ms);
            channel.heartbeat_while(heartbeat, || {
                let mut node = Node::backup(config, Box::new(HostFiles), clock.now());
                node.receive(&message, clock.now());
                node
            })
        }
    };
    let host = vm_host(clock, io, frames, Some(channel), options, "backup")?;
    crate::vm::run(node, host).map(Some)
}
