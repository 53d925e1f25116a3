//! `ftvm primary` and `ftvm backup`: one VM of an FT pair as a process.
//!
//! The protocol lives in [`ftvm_node::Node`], which does no I/O; this is
//! the daemon around it. It owns the TCP logging channel (handshake with
//! the pre-shared key, then authenticated frames read by a thread of their
//! own so that acknowledgements and heartbeats arrive while the machine
//! runs), the host side of the machine's I/O (disk, entropy), the arbiter,
//! the pair's console file and the status file `ftvm status` reads.
//!
//! The backup listens and the primary connects. There is no reconnection:
//! once the channel fails (closed, corrupt, silent), the failure detector
//! and the arbiter decide which VM goes on alone, and the other halts.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use ftvm_board::{Input, IoRequest, IoStatus};
use ftvm_ft::arbiter::{Arbiter, FileArbiter};
use ftvm_ft::channel::{
    self, CHANNEL_FRAME_MAX, FrameDecoder, HANDSHAKE_FRAME_MAX, Handshake, Message, Role, Session,
    channel_key,
};
use ftvm_ft::console::ConsoleFile;
use ftvm_ft::detector::DetectorConfig;
use ftvm_ft::etcd::EtcdArbiter;
use ftvm_net::FrameReceiver;
use ftvm_node::{DiskMode, Effect, HaltReason, Node, NodeConfig, Ran, Status, Time};

use crate::MachineArgs;
use crate::host_io::{Disk, HostIo};

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

    /// This VM's name for the arbiter and the logs (default: its role).
    #[arg(long)]
    pub name: Option<String>,

    /// Give the VM a network card on a network that outlives it (the
    /// primary's card is the pair's; the backup's port carries the VM's
    /// traffic once it goes live): `switch:HOST:PORT`, a port on an
    /// `ftvm switch` (which `ftvm up --net` starts), or `tap,ifname=NAME`,
    /// a TAP interface on a bridge. The backup needs one when the primary
    /// has one.
    #[arg(long, value_name = "switch:HOST:PORT|tap,ifname=NAME")]
    pub net: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskModeArg {
    Shared,
    Private,
}

#[derive(Args)]
pub struct PrimaryArgs {
    #[command(flatten)]
    pub machine: MachineArgs,

    #[command(flatten)]
    pub pair: PairArgs,

    /// The backup's logging-channel address (`ftvm backup --listen`).
    #[arg(long, value_name = "HOST:PORT")]
    pub backup: String,

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

    fn key(&self) -> Result<[u8; 32]> {
        let secret = std::fs::read(&self.key_file)
            .with_context(|| format!("reading the key file {}", self.key_file.display()))?;
        let secret = secret.trim_ascii();
        if secret.len() < 16 {
            bail!(
                "the key file {} holds {} bytes; a pre-shared key needs at least 16",
                self.key_file.display(),
                secret.len()
            );
        }
        Ok(channel_key(secret))
    }

    /// This VM's network card, as a sender (for the I/O thread) and a
    /// receiver (for a thread of its own).
    fn attach_net(&self) -> Result<Option<ftvm_net::Attached>> {
        self.net
            .as_deref()
            .map(|spec| {
                let spec = ftvm_net::parse_net(spec)?;
                ftvm_net::attach(&spec).context("attaching the VM's network card")
            })
            .transpose()
    }

    fn arbiter(&self, me: &str) -> Result<Box<dyn Arbiter>> {
        let token = random_bytes()?;
        Ok(match self.arbiter.strip_prefix("etcd:") {
            Some(endpoint) => {
                if endpoint.starts_with("https://") {
                    bail!("the etcd arbiter speaks plain HTTP only (etcd:HOST:PORT)");
                }
                let endpoint = endpoint.strip_prefix("http://").unwrap_or(endpoint);
                Box::new(EtcdArbiter::new(endpoint.trim_end_matches('/'), me, token)?)
            }
            None => {
                std::fs::create_dir_all(&self.arbiter)
                    .with_context(|| format!("creating the arbiter directory {}", self.arbiter))?;
                Box::new(FileArbiter::new(&self.arbiter, me, token)?)
            }
        })
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| anyhow!("no host randomness: {e}"))?;
    Ok(bytes)
}

/// SIGTERM and SIGINT ask the VM to stop (the primary ends the pair).
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&flag))
            .context("installing the signal handlers")?;
    }
    Ok(flag)
}

pub fn primary(args: &PrimaryArgs) -> Result<ExitCode> {
    let stop = stop_flag()?;
    let me = args.pair.name.clone().unwrap_or_else(|| "primary".into());
    let (net, frames) = args.pair.attach_net()?.unzip();
    let host = HostIo {
        disk: args.machine.disk.as_deref().map(Disk::open).transpose()?,
        net,
    };
    let machine_config = args.machine.machine_config(host.devices())?;
    let config = args.pair.node_config(machine_config.engine)?;
    let key = args.pair.key()?;
    let arbiter = args.pair.arbiter(&me)?;
    let status = StatusFile::new(args.pair.status_file.clone());
    status.write("connecting", None);

    let deadline = Instant::now() + Duration::from_secs(args.connect_timeout);
    let mut stream = loop {
        match TcpStream::connect(&args.backup) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() < deadline && !stop.load(Ordering::Relaxed) => {
                tracing::debug!("the backup at {} is not there yet: {e}", args.backup);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("connecting to the backup at {}", args.backup));
            }
        }
    };
    let (session, decoder) = handshake(&mut stream, Role::Primary, &config, key)
        .with_context(|| format!("the logging channel to {}", args.backup))?;
    tracing::info!(backup = %args.backup, "logging channel established");
    let clock = Clock::new();
    let node = Node::primary(config, machine_config, clock.now())?;
    let daemon = Daemon::new(
        node, session, stream, decoder, host, frames, arbiter, &args.pair, status, clock, stop,
    )?;
    daemon.serve()
}

pub fn backup(args: &BackupArgs) -> Result<ExitCode> {
    let stop = stop_flag()?;
    let me = args.pair.name.clone().unwrap_or_else(|| "backup".into());
    let config = args.pair.node_config(args.engine.engine())?;
    let key = args.pair.key()?;
    let arbiter = args.pair.arbiter(&me)?;
    let (net, frames) = args.pair.attach_net()?.unzip();
    let host = HostIo {
        disk: args.disk.as_deref().map(Disk::open).transpose()?,
        net,
    };
    let status = StatusFile::new(args.pair.status_file.clone());
    let listener =
        TcpListener::bind(&args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if let Some(path) = &args.addr_file {
        write_atomically(path, format!("{addr}\n").as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    status.write("waiting", None);
    tracing::info!(%addr, "waiting for the primary");
    listener.set_nonblocking(true)?;
    let (stream, session, decoder) = loop {
        if stop.load(Ordering::Relaxed) {
            status.write("halted", None);
            return Ok(ExitCode::SUCCESS);
        }
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e).context("accepting the primary's connection"),
        };
        stream.set_nonblocking(false)?;
        match handshake(&mut stream, Role::Backup, &config, key) {
            Ok((session, decoder)) => {
                tracing::info!(%peer, "logging channel established");
                break (stream, session, decoder);
            }
            // Whoever it was, it is not our primary: keep waiting for it.
            Err(e) => {
                tracing::error!(%peer, "refused a connection: {e:#}");
                eprintln!("ftvm: refused a connection from {peer}: {e:#}");
            }
        }
    };
    drop(listener);
    let clock = Clock::new();
    let node = Node::backup(config, Box::new(ftvm_host::files::HostFiles), clock.now());
    let daemon = Daemon::new(
        node, session, stream, decoder, host, frames, arbiter, &args.pair, status, clock, stop,
    )?;
    daemon.serve()
}

/// Authenticate the peer on a fresh connection; the session, and the
/// decoder holding whatever arrived after the handshake.
fn handshake(
    stream: &mut TcpStream,
    role: Role,
    config: &NodeConfig,
    key: [u8; 32],
) -> Result<(Session, FrameDecoder)> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (mut handshake, hello) =
        Handshake::start(role, &config.pair, config.epoch, key, random_bytes()?);
    stream.write_all(&channel::encode(&hello))?;
    let mut decoder = FrameDecoder::new(HANDSHAKE_FRAME_MAX);
    let mut buffer = [0u8; 4096];
    while !handshake.is_established() {
        match decoder.next_frame()? {
            Some(payload) => {
                let step = handshake.receive(&channel::decode(&payload)?)?;
                if let Some(reply) = step.send {
                    stream.write_all(&channel::encode(&reply))?;
                }
            }
            None => {
                let n = stream
                    .read(&mut buffer)
                    .context("waiting for the peer's handshake")?;
                if n == 0 {
                    bail!("the peer closed the connection during the handshake");
                }
                decoder.push(&buffer[..n]);
            }
        }
    }
    stream.set_read_timeout(None)?;
    decoder.set_limit(CHANNEL_FRAME_MAX);
    let session = handshake
        .session()
        .ok_or_else(|| anyhow!("the handshake ended without a session"))?;
    Ok((session, decoder))
}

/// What the daemon's threads report to its main loop.
enum NetEvent {
    /// Bytes typed on the guest's console (`ftvm console`).
    Typed(Vec<u8>),
    /// A frame for the guest, from the VM's network.
    Received(Vec<u8>),
    /// A frame from the channel's reader thread.
    Frame(Vec<u8>),
    /// The reader thread's last word: why, and whether the peer closed
    /// the connection (rather than this VM refusing what came).
    Closed { why: String, by_peer: bool },
    /// The answer of the I/O thread to a request.
    Done(Input),
}

/// The channel's reader thread.
fn spawn_reader(mut stream: TcpStream, mut decoder: FrameDecoder, tx: Sender<NetEvent>) {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        if tx.send(NetEvent::Frame(frame)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let why = e.to_string();
                        let _ = tx.send(NetEvent::Closed {
                            why,
                            by_peer: false,
                        });
                        return;
                    }
                }
            }
            match stream.read(&mut buffer) {
                Ok(0) => {
                    let why = "the peer closed the connection".into();
                    let _ = tx.send(NetEvent::Closed { why, by_peer: true });
                    return;
                }
                Ok(n) => decoder.push(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let by_peer = closed_by_peer(&e);
                    let _ = tx.send(NetEvent::Closed {
                        why: e.to_string(),
                        by_peer,
                    });
                    return;
                }
            }
        }
    });
}

/// Whether a socket error means the peer closed or reset the connection.
fn closed_by_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted)
}

/// Frames from the VM's network, as they arrive, whatever the machine is
/// doing.
fn spawn_receiver(mut frames: Box<dyn FrameReceiver>, tx: Sender<NetEvent>) {
    std::thread::spawn(move || {
        loop {
            match frames.recv() {
                Ok(frame) => {
                    if tx.send(NetEvent::Received(frame)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!("the VM's network card lost its network: {e}");
                    return;
                }
            }
        }
    });
}

/// Console input from `ftvm console`: a listener on `path`, and a reader
/// thread per connection.
fn spawn_console_listener(path: &Path, tx: Sender<NetEvent>) -> Result<()> {
    // A socket file left by an earlier VM at this path.
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("listening for console input on {}", path.display()))?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if tx.send(NetEvent::Typed(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(())
}

/// Work for the I/O thread.
enum IoJob {
    /// Perform a request; `answer` it (an input for the machine) or only
    /// perform it (a backup's write to its own disk).
    Request { request: IoRequest, answer: bool },
    /// Tell the network the VM's card is here now.
    Announce { mac: [u8; 6] },
}

/// The host's I/O in a thread of its own, in request order: a disk write
/// or an fsync may take long, and the main loop must meanwhile keep
/// answering the channel (acks, heartbeats), or the peer would think this
/// VM dead.
fn spawn_io(mut host: HostIo, tx: Sender<NetEvent>) -> Sender<IoJob> {
    let (jobs, rx) = std::sync::mpsc::channel::<IoJob>();
    std::thread::spawn(move || {
        for job in rx {
            let (request, answer) = match job {
                IoJob::Request { request, answer } => (request, answer),
                IoJob::Announce { mac } => {
                    host.announce(mac);
                    continue;
                }
            };
            let done = host.serve(request);
            if answer {
                if tx.send(NetEvent::Done(done)).is_err() {
                    return;
                }
            } else if let Input::IoDone { status, .. } = done {
                if status != IoStatus::Ok {
                    tracing::warn!(?status, "a write to this VM's own disk failed");
                }
            }
        }
    });
    jobs
}

/// The host's clocks as the node sees them.
struct Clock {
    origin: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    fn now(&self) -> Time {
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Time {
            mono_ns: u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX),
            unix_ns,
        }
    }

    fn until_ms(&self, deadline_ms: u64) -> Duration {
        let now_ms = self.now().mono_ns / 1_000_000;
        Duration::from_millis(deadline_ms.saturating_sub(now_ms))
    }
}

/// The one-line status `ftvm status` prints.
struct StatusFile {
    path: Option<PathBuf>,
}

/// Numbers for the status line.
struct Measures {
    lag_entries: u64,
    lag_ms: f64,
    log_mbit_s: f64,
    delay_median_ms: f64,
    delay_p99_ms: f64,
    outputs: u64,
    log_bytes: u64,
    icount: u64,
}

impl StatusFile {
    fn new(path: Option<PathBuf>) -> StatusFile {
        StatusFile { path }
    }

    fn write(&self, word: &str, measures: Option<&Measures>) {
        let Some(path) = &self.path else {
            return;
        };
        let mut line = format!("{word} pid={}", std::process::id());
        if let Some(m) = measures {
            line += &format!(
                " lag={} entries/{:.1} ms log={:.3} Mbit/s output-delay={:.2} ms \
                 (p99 {:.2} ms, {} outputs) log-bytes={} icount={}",
                m.lag_entries,
                m.lag_ms,
                m.log_mbit_s,
                m.delay_median_ms,
                m.delay_p99_ms,
                m.outputs,
                m.log_bytes,
                m.icount
            );
        }
        line.push('\n');
        if let Err(e) = write_atomically(path, line.as_bytes()) {
            tracing::warn!(status = %path.display(), "writing the status: {e}");
        }
    }
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

const STATUS_EVERY: Duration = Duration::from_millis(200);

struct Daemon {
    node: Node,
    session: Session,
    stream: Option<TcpStream>,
    events: Receiver<NetEvent>,
    io: Sender<IoJob>,
    arbiter: Box<dyn Arbiter>,
    pair: String,
    epoch: u64,
    console: Option<ConsoleFile>,
    status: StatusFile,
    status_at: Instant,
    rate_sample: (Instant, u64),
    log_mbit_s: f64,
    clock: Clock,
    stop: Arc<AtomicBool>,
    stopping: bool,
    console_socket: Option<PathBuf>,
    /// Whether this VM has a network (`--net`), and whether that was
    /// checked against the machine the primary runs.
    has_net: bool,
    net_checked: bool,
}

impl Daemon {
    #[allow(clippy::too_many_arguments)]
    fn new(
        node: Node,
        session: Session,
        stream: TcpStream,
        decoder: FrameDecoder,
        host: HostIo,
        frames: Option<Box<dyn FrameReceiver>>,
        arbiter: Box<dyn Arbiter>,
        pair: &PairArgs,
        status: StatusFile,
        clock: Clock,
        stop: Arc<AtomicBool>,
    ) -> Result<Daemon> {
        // A peer that stops reading must not block this VM: past the
        // failure timeout a write fails, and the channel is given up.
        stream.set_write_timeout(Some(Duration::from_millis(pair.timeout_ms.max(1))))?;
        let (tx, events) = std::sync::mpsc::channel();
        spawn_reader(stream.try_clone()?, decoder, tx.clone());
        if let Some(frames) = frames {
            spawn_receiver(frames, tx.clone());
        }
        if let Some(path) = &pair.console_socket {
            spawn_console_listener(path, tx.clone())?;
        }
        let has_net = host.net.is_some();
        let io = spawn_io(host, tx);
        let console = pair
            .console_file
            .as_deref()
            .map(|path| {
                ConsoleFile::open(path)
                    .with_context(|| format!("opening the console file {}", path.display()))
            })
            .transpose()?;
        Ok(Daemon {
            node,
            session,
            stream: Some(stream),
            events,
            io,
            arbiter,
            pair: pair.pair.clone(),
            epoch: pair.epoch,
            console,
            status,
            status_at: Instant::now(),
            rate_sample: (Instant::now(), 0),
            log_mbit_s: 0.0,
            clock,
            stop,
            stopping: false,
            console_socket: pair.console_socket.clone(),
            has_net,
            net_checked: false,
        })
    }

    fn serve(mut self) -> Result<ExitCode> {
        loop {
            if self.stop.load(Ordering::Relaxed) && !self.stopping {
                self.stopping = true;
                tracing::info!("asked to stop");
                self.node.stop(self.clock.now())?;
            }
            while let Ok(event) = self.events.try_recv() {
                self.handle(event)?;
            }
            self.node.tick(self.clock.now());
            self.perform()?;
            let clock = &self.clock;
            let ran = self.node.run(&mut || clock.now())?;
            self.perform()?;
            self.report(false);
            match ran {
                Ran::Busy => {}
                Ran::Done => break,
                Ran::Throttled => self.wait(Duration::from_millis(1))?,
                Ran::Blocked => self.wait(self.clock.until_ms(self.node.deadline_ms()))?,
                Ran::Idle { sleep_ns: Some(0) } => self.node.wake(self.clock.now())?,
                Ran::Idle { sleep_ns } => {
                    let deadline = self.clock.until_ms(self.node.deadline_ms());
                    let wait =
                        sleep_ns.map_or(deadline, |ns| deadline.min(Duration::from_nanos(ns)));
                    self.wait(wait)?;
                }
            }
        }
        self.perform()?;
        self.report(true);
        if let Some(path) = &self.console_socket {
            let _ = std::fs::remove_file(path);
        }
        Ok(match self.node.status() {
            Status::Ended(_) => ExitCode::SUCCESS,
            Status::Halted(why) => {
                eprintln!("ftvm: halted: {why}");
                ExitCode::from(2)
            }
            _ => ExitCode::FAILURE,
        })
    }

    /// Sleep until `timeout`, the next message from the peer or an I/O
    /// answer.
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        let timeout = timeout.clamp(Duration::from_micros(100), Duration::from_millis(50));
        match self.events.recv_timeout(timeout) {
            Ok(event) => self.handle(event)?,
            Err(RecvTimeoutError::Timeout) => {}
            // The I/O thread holds a sender as long as the daemon lives.
            Err(RecvTimeoutError::Disconnected) => bail!("the daemon's threads are gone"),
        }
        Ok(())
    }

    fn handle(&mut self, event: NetEvent) -> Result<()> {
        match event {
            NetEvent::Done(done) => self.node.input(done, self.clock.now())?,
            // The VM's own input while it runs the guest (logged if it has
            // a backup); a backup's port is dark until it goes live: its
            // guest hears the primary's frames through the log.
            NetEvent::Typed(bytes) => {
                if self.runs_the_guest() {
                    for byte in bytes {
                        self.node
                            .input(Input::ConsoleByte(byte), self.clock.now())?;
                    }
                } else {
                    tracing::warn!(
                        bytes = bytes.len(),
                        "console input dropped: this VM does not run the guest"
                    );
                }
            }
            NetEvent::Received(frame) => {
                if self.runs_the_guest() {
                    self.node
                        .input(Input::NetReceive { frame }, self.clock.now())?;
                }
            }
            _ if self.stream.is_none() => {}
            NetEvent::Frame(frame) => match self.session.open(&frame) {
                Ok(message) => {
                    self.node.receive(&message, self.clock.now());
                    self.check_net();
                }
                Err(e) => self.close_channel(&e.to_string(), false),
            },
            NetEvent::Closed { why, by_peer } => self.close_channel(&why, by_peer),
        }
        Ok(())
    }

    /// A backup without a network for a VM that has a network card would
    /// take over with its cable cut: it gives up at once instead, while
    /// the primary can still run on alone.
    fn check_net(&mut self) {
        if self.net_checked {
            return;
        }
        let Some(config) = self.node.machine_config() else {
            return;
        };
        self.net_checked = true;
        let card = config
            .virtio
            .iter()
            .any(|device| matches!(device, ftvm_board::DeviceKind::Net { .. }));
        if card && !self.has_net {
            let why = HaltReason::NoNetwork;
            eprintln!("ftvm: {why}");
            self.node.give_up(why);
        }
    }

    /// Whether this VM's guest takes input from the world: a primary's
    /// (which logs it) or a live VM's. A backup's guest hears the world
    /// only through the log.
    fn runs_the_guest(&self) -> bool {
        matches!(
            self.node.status(),
            Status::Primary | Status::Arbitrating | Status::Live
        )
    }

    /// Give the channel up; the failure detector decides what follows.
    fn close_channel(&mut self, why: &str, by_peer: bool) {
        if let Some(stream) = self.stream.take() {
            tracing::error!("closing the logging channel: {why}");
            eprintln!("ftvm: closing the logging channel: {why}");
            let _ = stream.shutdown(std::net::Shutdown::Both);
            self.node.channel_closed(by_peer);
        }
    }

    fn perform(&mut self) -> Result<()> {
        loop {
            let effects = self.node.take_effects();
            if effects.is_empty() {
                return Ok(());
            }
            for effect in effects {
                match effect {
                    Effect::Send(message) => self.send(&message),
                    Effect::Console { offset, bytes } => self.console(offset, &bytes)?,
                    Effect::Perform(request) => self.perform_io(request, true)?,
                    Effect::PerformOwn(request) => self.perform_io(request, false)?,
                    Effect::Announce { mac } => self
                        .io
                        .send(IoJob::Announce { mac })
                        .map_err(|_| anyhow!("the I/O thread is gone"))?,
                    Effect::TestAndSet => {
                        let verdict = self.arbiter.test_and_set(&self.pair, self.epoch);
                        tracing::warn!(?verdict, pair = %self.pair, epoch = self.epoch, "test-and-set");
                        self.node.verdict(verdict, self.clock.now())?;
                    }
                }
            }
        }
    }

    fn perform_io(&mut self, request: IoRequest, answer: bool) -> Result<()> {
        self.io
            .send(IoJob::Request { request, answer })
            .map_err(|_| anyhow!("the I/O thread is gone"))
    }

    fn send(&mut self, message: &Message) {
        let Some(stream) = &mut self.stream else {
            return;
        };
        let bytes = match self.session.seal(message) {
            Ok(bytes) => bytes,
            // Too large for a frame: a bug on this side, not the peer's.
            Err(e) => return self.close_channel(&format!("sending: {e}"), false),
        };
        if let Err(e) = stream.write_all(&bytes) {
            self.close_channel(&format!("sending: {e}"), closed_by_peer(&e));
        }
    }

    fn console(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        if let Some(file) = &self.console {
            file.write_at(offset, bytes)
                .context("writing the console file")?;
        }
        let mut stdout = std::io::stdout().lock();
        // Nobody may be reading our stdout (a detached daemon): the file
        // is the console of record.
        let _ = stdout.write_all(bytes).and_then(|()| stdout.flush());
        Ok(())
    }

    fn report(&mut self, now: bool) {
        if !now && self.status_at.elapsed() < STATUS_EVERY {
            return;
        }
        self.status_at = Instant::now();
        let stats = self.node.stats();
        let (at, bytes) = self.rate_sample;
        let elapsed = at.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.log_mbit_s = (stats.log_bytes - bytes) as f64 * 8.0 / 1e6 / elapsed.as_secs_f64();
            self.rate_sample = (Instant::now(), stats.log_bytes);
        }
        let mut delays: Vec<u64> = stats.output_delays_ns.iter().copied().collect();
        delays.sort_unstable();
        let quantile = |q: f64| {
            delays
                .get(((delays.len() as f64 - 1.0) * q).round() as usize)
                .map_or(0.0, |&ns| ns as f64 / 1e6)
        };
        let measures = Measures {
            lag_entries: stats.lag_entries,
            lag_ms: stats.lag_ns as f64 / 1e6,
            log_mbit_s: self.log_mbit_s,
            delay_median_ms: quantile(0.5),
            delay_p99_ms: quantile(0.99),
            outputs: stats.outputs,
            log_bytes: stats.log_bytes,
            icount: stats.icount,
        };
        self.status
            .write(self.node.status().word(), Some(&measures));
    }
}
