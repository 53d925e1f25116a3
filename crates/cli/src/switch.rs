//! `ftvm switch`: the network of an FT pair as a process of its own
//! (ARCHITECTURE.md, "The pair's network"). It must outlive either VM — it
//! is the pair's physical network — so it runs apart from both, with the
//! user-mode gateway (and so the host's forwarded ports and their TCP
//! connections) on a port of its own. See [`ftvm_net::switch`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ftvm_net::switch::SwitchServer;
use ftvm_net::{NetBackend, UserNet};

use ftvm_host::status::{StatusFile, SwitchStatus, write_atomically};

#[derive(Args)]
pub struct SwitchArgs {
    /// The UDP address VMs attach to (`--net switch:HOST:PORT`); port 0
    /// takes any free port (see `--addr-file`).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Write the address actually listened on to this file.
    #[arg(long, value_name = "FILE")]
    pub addr_file: Option<PathBuf>,

    /// The gateway on the switch: `user[,hostfwd=tcp:HOSTADDR:PORT-:GUESTPORT]...`
    /// as for `ftvm run --net` (the VM is 10.0.2.15, the gateway 10.0.2.2),
    /// or `none` for a switch without one. The gateway takes frames of any
    /// card's MTU (`mtu=` is ignored here: it is the VMs').
    #[arg(long, value_name = "user[,hostfwd=...]|none", default_value = "user")]
    pub gateway: String,

    /// End when the pair in this state directory has ended (no VM of it
    /// runs any more), as `ftvm up` asks.
    #[arg(long, value_name = "DIR")]
    pub pair_dir: Option<PathBuf>,

    /// Keep a one-line status here (`switch pid=N ports=K addr=A moves=M
    /// expired=E refused=R`).
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,

    /// The pair's key file (as `ftvm primary` and `ftvm backup` take it):
    /// every datagram is then authenticated, and those without the key
    /// (or repeated) are dropped. Required to listen beyond loopback.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// Serve the switch's metrics in Prometheus's text format at
    /// `http://HOST:PORT/metrics` (port 0: any free port; the status line
    /// says which). `ftvm up` gives it a free loopback port.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<SocketAddr>,
}

/// The switch's metrics in Prometheus's text format, labelled with the
/// address VMs attach to.
fn render_metrics(server: &SwitchServer, line: &SwitchStatus) -> String {
    use ftvm_host::metrics::{Kind, Text};
    let mut text = Text::new(vec![("switch", line.addr.clone())]);
    text.one(
        "ftvm_switch_vm_ports",
        "VM ports attached (the gateway's not counted).",
        Kind::Gauge,
        line.ports as f64,
    );
    text.one(
        "ftvm_switch_address_moves_total",
        "Times a VM's address moved to another port: a backup that went live announced it.",
        Kind::Counter,
        line.moves as f64,
    );
    text.one(
        "ftvm_switch_ports_expired_total",
        "VM ports detached for their silence (a VM that died or froze).",
        Kind::Counter,
        line.expired as f64,
    );
    text.one(
        "ftvm_switch_datagrams_refused_total",
        "Datagrams dropped as unauthenticated (without the pair's key, or repeated).",
        Kind::Counter,
        line.refused as f64,
    );
    let traffic = server.traffic();
    let labels: Vec<[(&str, &str); 1]> = traffic
        .iter()
        .map(|(port, _)| [("port", port.as_str())])
        .collect();
    let samples = |pick: fn(&ftvm_net::switch::PortTraffic) -> u64| {
        labels
            .iter()
            .zip(&traffic)
            .map(|(labels, (_, t))| (&labels[..], pick(t) as f64))
            .collect::<Vec<_>>()
    };
    text.many(
        "ftvm_switch_frames_received_total",
        "Frames each port sent into the switch (`gateway`, or a VM port's UDP address).",
        Kind::Counter,
        &samples(|t| t.received),
    );
    text.many(
        "ftvm_switch_frames_delivered_total",
        "Frames the switch gave each port.",
        Kind::Counter,
        &samples(|t| t.delivered),
    );
    text.finish()
}

/// How long a switch started for a pair waits for a VM of it to appear.
const PAIR_START_LIMIT: Duration = Duration::from_secs(120);

pub fn switch(args: &SwitchArgs) -> Result<ExitCode> {
    let stop = ftvm_host::stop_flag()?;
    let gateway: Option<Box<dyn NetBackend>> = match args.gateway.as_str() {
        "none" => None,
        // The gateway's stack takes any card's MTU; `mtu=` is the VMs'.
        spec => match ftvm_net::parse_net(spec)?.kind {
            ftvm_net::NetKind::User(forwards) => Some(Box::new(UserNet::new(&forwards)?)),
            _ => bail!("--gateway takes `user[,hostfwd=...]` or `none`, not {spec}"),
        },
    };
    let key = args
        .key_file
        .as_deref()
        .map(ftvm_host::pair::read_key)
        .transpose()?
        .map(|key| ftvm_net::datagram::DatagramKey::from_pair_key(&key));
    if key.is_none() && !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "a switch listening on {} would take frames from anyone who can reach it: give it \
             the pair's --key-file",
            args.listen
        );
    }
    let mut server = SwitchServer::bind(args.listen, gateway, key)?;
    let addr = server.local_addr()?;
    if let Some(path) = &args.addr_file {
        write_atomically(path, format!("{addr}\n").as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(%addr, gateway = %args.gateway, "switch up");
    if args.pair_dir.is_none() {
        use std::io::Write;
        writeln!(
            std::io::stdout(),
            "ftvm switch: VMs attach with --net switch:{addr}"
        )
        .context("writing to stdout")?;
    }
    let status = args.status_file.as_ref().map(StatusFile::new);
    let metrics = args.metrics.map(ftvm_host::metrics::serve).transpose()?;
    let started = Instant::now();
    let mut pair_seen = false;
    while !stop.load(Ordering::Relaxed) {
        server
            .serve_for(Duration::from_millis(250))
            .context("serving the switch")?;
        let line = SwitchStatus {
            pid: std::process::id(),
            ports: server.vm_ports(),
            addr: addr.to_string(),
            moves: server.moves(),
            expired: server.expired(),
            refused: server.refused(),
            metrics: metrics.as_ref().map(|(addr, _)| *addr),
        };
        if let Some((_, exposition)) = &metrics {
            exposition.set(render_metrics(&server, &line));
        }
        if let Some(file) = &status {
            file.write(&line);
        }
        if let Some(dir) = &args.pair_dir {
            match crate::pair::pair_runs(dir) {
                Some(true) => pair_seen = true,
                Some(false) if pair_seen => break,
                _ if !pair_seen && started.elapsed() > PAIR_START_LIMIT => {
                    tracing::error!("no VM of the pair in {} started", dir.display());
                    break;
                }
                _ => {}
            }
        }
    }
    tracing::info!("switch down");
    Ok(ExitCode::SUCCESS)
}
