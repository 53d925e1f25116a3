//! # ftvm — command line
//!
//! `ftvm run` boots a guest on the deterministic RISC-V machine with its
//! UART on this terminal. The flags mirror `qemu-system-riscv64 -M virt`
//! (`-kernel`, `-bios`, `-initrd`, `-append`, `-m`) so the same guest can be
//! started on either and compared.
//!
//! This crate is argument parsing and process orchestration only (`ftvm
//! up`, `status`, `stop`, `console` start and watch processes); the work
//! is done by `ftvm-host`, whose run loop drives every VM.

#![forbid(unsafe_code)]

mod cluster;
mod daemon;
mod page;
mod pair;
mod plot;
mod progress;
mod replay;
mod restore;
mod run;
mod set;
mod switch;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use ftvm_board::{Engine, Firmware, MachineConfig};

#[derive(Parser)]
#[command(
    name = "ftvm",
    version,
    about = "Fault-tolerant virtual machines on a deterministic RISC-V (RV64GC) machine",
    long_about = "Fault-tolerant virtual machines on a deterministic RISC-V (RV64GC) machine \
                  that mirrors QEMU's `virt` board.\n\nSet RUST_LOG=debug for diagnostics."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How diagnostics are written on stderr (a daemon's: its log file in
    /// the state directory): `text` for people, or `json`, one object per
    /// line for a log pipeline. Every VM's state changes are events of
    /// their own (target `ftvm::state`, with the pair, epoch and VM as
    /// fields), so a failover can be followed across processes and hosts.
    /// The processes a command starts write the same way.
    #[arg(long, global = true, value_enum, env = "FTVM_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The form of the diagnostics on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// This process's [`LogFormat`], passed on to the processes it starts.
pub(crate) static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// What is logged when `RUST_LOG` says nothing: warnings and errors, and
/// every VM's state changes.
const DEFAULT_LOG_FILTER: &str = "warn,ftvm::state=info";

#[derive(Subcommand)]
enum Command {
    /// Run a guest with its console on this terminal.
    ///
    /// The process exits with 0 when the guest powers off with the pass code
    /// (sifive-test 0x5555, or HTIF tohost = 1), with the guest's own code
    /// when it reports failure, and with 1 on a host-side error. Press
    /// Ctrl-A then x to quit from an interactive terminal (Ctrl-A Ctrl-A
    /// sends a Ctrl-A to the guest).
    Run(RunArgs),

    /// Re-execute a log written by `ftvm run --record`, with no live input.
    ///
    /// The machine is rebuilt from the configuration in the log (its files
    /// must be unchanged) and every logged input is applied at its
    /// instruction count. Each checkpoint's state digest is checked; on a
    /// mismatch the replay stops and names the first instruction whose
    /// state differs. The guest's outputs (console, disk writes, frames)
    /// go nowhere unless `--console` is given. Exit code 0 when the replay
    /// reproduced the recording, 1 otherwise.
    Replay(replay::ReplayArgs),

    /// Start a fault-tolerant pair on this host and return: a primary and a
    /// backup VM as two processes, kept in lockstep over a logging channel.
    ///
    /// Kill the primary (`kill -9`) and the backup takes over where it
    /// stopped; kill the backup and the primary runs on alone. The pair's
    /// console is the file `console` in the state directory.
    Up(pair::UpArgs),

    /// One line per VM of the pair: `primary`, `backup`, `live` (running
    /// alone), `halted` or `ended`, with its pid, how far the backup lags,
    /// the logging channel's rate and the output rule's delay.
    Status(pair::StatusArgs),

    /// End the pair cleanly: the primary logs the end, the backup ends with
    /// it without going live, both exit.
    Stop(pair::StateDirArgs),

    /// The pair's console on this terminal: what the guest prints (the
    /// console file as it grows, after its last few KiB), and what you
    /// type goes to the VM that runs the guest — after a failover, to the
    /// one that took over. Ctrl-A x quits (the pair runs on); it ends by
    /// itself when the pair does.
    Console(pair::StateDirArgs),

    /// Run the primary VM of a pair: connect to its backup, log every input
    /// to it, and release outputs once the backup holds the log up to them.
    ///
    /// Exit code 0 when the pair ended (power-off, `ftvm stop`, SIGTERM),
    /// 2 when it halted (it lost the test-and-set), 1 on an error.
    Primary(daemon::PrimaryArgs),

    /// Run the backup VM of a pair: wait for the primary, replay its log,
    /// and take over when it fails (after winning the test-and-set).
    ///
    /// Exit codes as for `ftvm primary`.
    Backup(daemon::BackupArgs),

    /// Give the VM of a pair that runs alone (its peer died) a new backup
    /// on this host: the running VM is cloned into it, pausing the guest
    /// for a moment, and the two run as a pair again (the next epoch).
    Protect(restore::ProtectArgs),

    /// End the backup of a pair: the VM runs on alone, unprotected, and
    /// the agent leaves it so until `ftvm protect`.
    Unprotect(restore::ProtectArgs),

    /// Move either VM of a protected pair to a new process on this host
    /// while the pair keeps running: the primary hands the VM over to its
    /// backup (a planned switch-over, no failure detection involved) and
    /// a new backup is cloned; the backup is replaced by a new clone.
    Migrate(restore::MigrateArgs),

    /// Kill the VM that runs the guest (SIGKILL) and show the backup
    /// taking over and redundancy coming back, with times.
    TestFailover(restore::TestArgs),

    /// Kill the backup (SIGKILL) and show the VM going on alone and
    /// redundancy coming back, with times.
    TestRestartBackup(restore::TestArgs),

    /// Draw the pair's history as a timeline (SVG or PNG): each VM's
    /// state, the guest's instructions per second on each VM, the backup's
    /// lag, the logging channel's rate and the output delay, with
    /// failovers, suspicions and clones marked.
    Plot(plot::PlotArgs),

    /// Reconfigure a pair's running VM: the memory balloon's target
    /// (`--balloon MIB`, for a machine started with `--balloon`). The VM
    /// that runs the guest logs it as a control entry, so its backup
    /// applies it at the same instruction.
    Set(set::SetArgs),

    /// Keep a pair protected (`ftvm up` starts it): whenever the pair is
    /// down to one VM, clone that VM into a new backup on this host.
    /// Ends with the pair.
    Agent(restore::AgentArgs),

    /// FT pairs on a cluster of hosts, each running `ftvm agent
    /// --cluster`: start a pair, list hosts and VMs, move a VM, end a pair.
    Cluster(cluster::ClusterArgs),

    /// Run a pair's network: an Ethernet switch that VMs attach to over
    /// UDP (`--net switch:HOST:PORT`), with the user-mode gateway and its
    /// forwarded host ports on a port of its own. It runs apart from the
    /// VMs so that it outlives either; a backup that goes live announces
    /// the VM's MAC address and the switch sends it the VM's traffic.
    Switch(switch::SwitchArgs),
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub machine: MachineArgs,

    /// Attach a network card: `user` is the user-mode network (no
    /// privileges; the guest is 10.0.2.15, the host is reachable as
    /// 10.0.2.2), with `hostfwd=tcp:HOSTADDR:PORT-:GUESTPORT` rules
    /// forwarding host ports to the guest, as in QEMU, e.g.
    /// `--net user,hostfwd=tcp:127.0.0.1:8080-:80`. `tap,ifname=NAME`
    /// connects it to the host's TAP interface NAME instead (Linux; needs
    /// the right to use /dev/net/tun). `,mtu=N` sets the card's MTU (68 to
    /// 65280): by default 65280 on the user-mode network, whose both ends
    /// are ftvm's (the guest's TCP then sends 64 KiB segments), and 1500 on
    /// TAP.
    #[arg(long, value_name = "user[,hostfwd=...]|tap,ifname=NAME[,mtu=N]")]
    net: Option<String>,

    /// Stop after this many guest instructions (exit code 124, like
    /// timeout(1)); for scripted runs that must end.
    #[arg(long, value_name = "N")]
    max_insns: Option<u64>,

    /// Print the final instruction count, pc and state digest on stderr
    /// when the run ends, as `icount: N`, `pc: 0xX` and
    /// `final state digest: HEX` (always printed with `--record`).
    #[arg(long)]
    digest: bool,

    /// Record every non-deterministic input into this log file, for
    /// `ftvm replay`. The run itself is unchanged (console, disk and
    /// network stay live).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,

    /// Seconds of host time between state digests in the log (checked by
    /// replay; each costs one pass over guest RAM).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    checkpoint_interval: f64,

    /// Guest time: `host` follows the host's clock (it advances with the
    /// instruction count and is corrected toward wall-clock time by small
    /// logged adjustments); `icount` derives it from the instruction count
    /// alone (10 instructions per 100 ns tick), so that two runs of a
    /// program without other input end in the same state. (With `--net`,
    /// an idle guest's sleeps still last what the host waited.)
    #[arg(long, value_name = "host|icount", default_value = "host")]
    clock: ClockArg,
}

/// The machine a guest runs on, shared by `run` and the FT commands.
#[derive(Args, Clone)]
pub struct MachineArgs {
    /// Kernel to boot: an ELF file (loaded at its physical addresses) or a
    /// raw image (loaded at the start of RAM, or after the firmware).
    /// Without it, ftvm boots the default guest built by
    /// `scripts/guest-image` (Linux and a busybox initramfs, on OpenSBI).
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,

    /// Firmware run before the kernel, in M-mode: `none` starts the kernel
    /// itself in M-mode at its entry point (like QEMU's `-bios none`);
    /// otherwise an ELF or raw firmware image (e.g. OpenSBI's fw_dynamic),
    /// which is given the kernel's address like QEMU does. Default: as on
    /// QEMU, OpenSBI for a Linux kernel (Debian's `opensbi` package, or
    /// the default guest's copy), `none` for any other `--kernel`.
    #[arg(long, value_name = "none|FILE")]
    bios: Option<String>,

    /// Initial ramdisk, advertised to the kernel in the device tree
    /// (default guest: its initramfs).
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,

    /// Kernel command line (the device tree's /chosen/bootargs). Default:
    /// empty with `--kernel`, `console=ttyS0` for the default guest.
    #[arg(long, value_name = "ARGS")]
    append: Option<String>,

    /// Attach a raw disk image (a whole number of 512-byte sectors) as a
    /// virtio-blk disk, /dev/vda in the guest. Guest writes go to the file.
    #[arg(long, value_name = "FILE")]
    disk: Option<PathBuf>,

    /// Start the guest's RTC at this time (seconds since the Unix epoch)
    /// instead of the host's time of day, for runs that must be
    /// reproducible.
    #[arg(long, value_name = "UNIX_SECONDS")]
    rtc_time: Option<u64>,

    /// Guest RAM in MiB.
    #[arg(long, value_name = "MIB", default_value_t = MachineConfig::DEFAULT_MEMORY_MIB)]
    memory: u64,

    /// How the CPU executes: `translator` (blocks translated to host code,
    /// the default on x86-64 Unix) or `interpreter` (the reference, and
    /// the default elsewhere). The guest behaves identically with either.
    #[arg(long, value_name = "ENGINE", default_value_t = EngineArg::default())]
    engine: EngineArg,

    /// Attach a memory balloon (virtio-balloon, after the other virtio
    /// devices, as QEMU's `-device virtio-balloon-device` last), whose
    /// target `ftvm set --balloon MIB` sets while the guest runs.
    #[arg(long)]
    balloon: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClockArg {
    Host,
    Icount,
}

/// Where `scripts/guest-image` links the default guest: `FTVM_GUEST_IMAGE`,
/// or `build/guest-image` in the source tree ftvm was built from.
fn default_guest_dir() -> PathBuf {
    std::env::var_os("FTVM_GUEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../build/guest-image")
        })
}

impl MachineArgs {
    /// These options as `ftvm` arguments, for a process started on the
    /// user's behalf (`ftvm up`). Paths are made absolute.
    pub fn to_args(&self) -> Result<Vec<std::ffi::OsString>> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut path = |flag: &str, path: &Option<PathBuf>| -> Result<()> {
            if let Some(path) = path {
                let path = std::path::absolute(path)?;
                args.extend([flag.into(), path.into()]);
            }
            Ok(())
        };
        path("--kernel", &self.kernel)?;
        path("--initrd", &self.initrd)?;
        path("--disk", &self.disk)?;
        if let Some(bios) = &self.bios {
            let bios = match bios.as_str() {
                "none" => bios.into(),
                file => std::path::absolute(file)?.into(),
            };
            args.extend(["--bios".into(), bios]);
        }
        if let Some(append) = &self.append {
            args.extend(["--append".into(), append.into()]);
        }
        if let Some(rtc) = self.rtc_time {
            args.extend(["--rtc-time".into(), rtc.to_string().into()]);
        }
        if self.balloon {
            args.push("--balloon".into());
        }
        args.extend([
            "--memory".into(),
            self.memory.to_string().into(),
            "--engine".into(),
            self.engine.to_string().into(),
        ]);
        Ok(args)
    }

    pub fn machine_config(&self, mut virtio: Vec<ftvm_board::DeviceKind>) -> Result<MachineConfig> {
        if self.balloon {
            virtio.push(ftvm_board::DeviceKind::Balloon);
        }
        let load = |path: &Path| ftvm_host::files::load(path);
        let (kernel, firmware, initrd, append) = match &self.kernel {
            Some(kernel) => {
                let kernel = load(kernel)?;
                let firmware = self.firmware_for(&kernel)?;
                (
                    kernel,
                    firmware,
                    self.initrd.clone(),
                    self.append.clone().unwrap_or_default(),
                )
            }
            None => {
                let dir = default_guest_dir();
                let kernel = dir.join("Image");
                if !kernel.is_file() {
                    bail!(
                        "no --kernel given and the default guest is not built ({} is missing): \
                         run scripts/guest-image",
                        kernel.display()
                    );
                }
                let firmware = match self.bios.as_deref() {
                    Some("none") => Firmware::None,
                    Some(bios) => Firmware::File(load(Path::new(bios))?),
                    None => Firmware::File(load(&dir.join("fw_dynamic.bin"))?),
                };
                (
                    load(&kernel)?,
                    firmware,
                    Some(
                        self.initrd
                            .clone()
                            .unwrap_or_else(|| dir.join("initramfs.cpio.gz")),
                    ),
                    self.append
                        .clone()
                        .unwrap_or_else(|| "console=ttyS0".into()),
                )
            }
        };
        Ok(MachineConfig {
            memory_mib: self.memory,
            firmware,
            kernel,
            initrd: initrd.as_deref().map(load).transpose()?,
            append,
            insns_per_tick: MachineConfig::DEFAULT_INSNS_PER_TICK,
            engine: self.engine.engine(),
            virtio,
        })
    }

    /// The firmware for `kernel`, as QEMU picks it: `--bios` if given;
    /// otherwise OpenSBI for a Linux kernel (which starts in S-mode under
    /// an SBI) and none for anything else (a bare-metal program starts in
    /// M-mode). A Linux kernel with `--bios none` would start in M-mode
    /// and hang without a word: it is refused.
    fn firmware_for(&self, kernel: &ftvm_board::Image) -> Result<Firmware> {
        let linux = ftvm_board::is_linux_kernel(&kernel.bytes);
        match self.bios.as_deref() {
            Some("none") if linux => bail!(
                "{} is a Linux kernel, which starts in S-mode under an SBI firmware: with \
                 --bios none it would start in M-mode and hang (leave --bios out to boot it on \
                 OpenSBI, as QEMU does, or name a firmware with --bios FILE)",
                kernel.path.display()
            ),
            Some("none") => Ok(Firmware::None),
            Some(bios) => Ok(Firmware::File(ftvm_host::files::load(Path::new(bios))?)),
            None if linux => {
                let candidates = [
                    PathBuf::from(PACKAGED_OPENSBI),
                    default_guest_dir().join("fw_dynamic.bin"),
                ];
                let Some(opensbi) = candidates.iter().find(|p| p.is_file()) else {
                    bail!(
                        "{} is a Linux kernel and needs an SBI firmware, but OpenSBI is not at \
                         {PACKAGED_OPENSBI} (Debian's `opensbi` package): install it, or name a \
                         firmware with --bios FILE",
                        kernel.path.display()
                    );
                };
                Ok(Firmware::File(ftvm_host::files::load(opensbi)?))
            }
            None => Ok(Firmware::None),
        }
    }
}

/// Debian's OpenSBI (package `opensbi`), the firmware QEMU's `virt` boots
/// by default.
const PACKAGED_OPENSBI: &str = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin";

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum EngineArg {
    Translator,
    Interpreter,
}

impl EngineArg {
    pub fn engine(self) -> Engine {
        match self {
            EngineArg::Translator => Engine::Translator,
            EngineArg::Interpreter => Engine::Interpreter,
        }
    }
}

impl Default for EngineArg {
    fn default() -> Self {
        match Engine::default() {
            Engine::Translator => EngineArg::Translator,
            Engine::Interpreter => EngineArg::Interpreter,
        }
    }
}

impl std::fmt::Display for EngineArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineArg::Translator => "translator",
            EngineArg::Interpreter => "interpreter",
        })
    }
}

fn main() -> ExitCode {
    // A panic is a bug of ftvm's, whatever the user did: one line that
    // says so, without a backtrace unless RUST_BACKTRACE asks for one.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            default_hook(info);
        } else {
            let what = format!("internal error, a bug in ftvm (please report it): {info}");
            // A log pipeline reads this too.
            if LOG_FORMAT.get() == Some(&LogFormat::Json) {
                tracing::error!("{what}");
            } else {
                eprintln!("ftvm: {what}");
            }
        }
    }));
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Colour codes only for a terminal, not in a daemon's log file.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The event's fields at the top level of its object, beside
        // `timestamp`, `level` and `target`.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) if reader_went_away(&err) => ftvm_host::process::die_of_sigpipe(),
        Err(err) => {
            if LOG_FORMAT.get() == Some(&LogFormat::Json) {
                tracing::error!("{err:#}");
            } else {
                eprintln!("ftvm: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether `err` comes from writing to a pipe nobody reads any more.
fn reader_went_away(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<ftvm_host::HostError>()
                .is_some_and(ftvm_host::HostError::is_broken_pipe)
    })
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Replay(args) => replay::replay(&args),
        Command::Up(args) => pair::up(&args),
        Command::Status(args) => pair::status(&args),
        Command::Stop(args) => pair::stop(&args),
        Command::Console(args) => pair::console(&args),
        Command::Primary(args) => daemon::primary(&args),
        Command::Backup(args) => daemon::backup(&args),
        Command::Switch(args) => switch::switch(&args),
        Command::Protect(args) => restore::protect(&args),
        Command::Agent(args) => restore::agent(&args),
        Command::Cluster(args) => cluster::cluster(&args),
        Command::Unprotect(args) => restore::unprotect(&args),
        Command::Migrate(args) => restore::migrate(&args),
        Command::TestFailover(args) => restore::test_failover(&args),
        Command::TestRestartBackup(args) => restore::test_restart_backup(&args),
        Command::Plot(args) => plot::plot(&args),
        Command::Set(args) => set::set(&args),
    }
}
