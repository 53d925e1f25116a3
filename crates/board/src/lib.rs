//! # ftvm-board — a QEMU `virt`-compatible machine around one hart
//!
//! The memory map and devices mirror QEMU's `virt` board (ARCHITECTURE.md,
//! "The machine") so the same firmware, kernels and bare-metal programs run
//! on both:
//!
//! | device | base | |
//! |---|---|---|
//! | sifive-test (power-off / reboot) | `0x0010_0000` | |
//! | goldfish RTC | `0x0010_1000` | IRQ 11; wall-clock time that runs with guest time |
//! | CLINT | `0x0200_0000` | `mtime` is guest time derived from icount |
//! | PLIC | `0x0c00_0000` | 96 sources; contexts 0 and 1 are hart 0's M and S modes |
//! | 16550 UART | `0x1000_0000` | IRQ 10 |
//! | virtio-mmio | `0x1000_1000` | 8 slots of `0x1000`, slot `n` at IRQ `n + 1`; devices (block, network, entropy, balloon) fill slots 7, 6, … as QEMU does, empty slots report device ID 0 |
//! | RAM | `0x8000_0000` | size set by the user |
//!
//! ## The input boundary (ARCHITECTURE.md, "The input boundary")
//! A [`Machine`] is a pure function of its initial state and of the ordered
//! [`Input`]s given to [`Machine::inject`], each applied at the icount the
//! machine has reached. Nothing in here reads the host clock, a file (after
//! loading), the network or randomness. Outputs (console bytes) are queued
//! and taken by the host with [`Machine::take_console_output`], so that a
//! later layer can hold them (the output rule) or drop them (a backup).

#![forbid(unsafe_code)]

mod devices;
mod fdt;
mod loader;
mod machine;
pub mod virtio;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use ftvm_cpu::{Engine, Exit, Hart, HartConfig};
pub use loader::is_linux_kernel;
pub use machine::{Machine, Snapshot};
pub use virtio::{BALLOON_PAGE_SIZE, BalloonInfo, DeviceKind, IoRequest, IoStatus};

/// Errors building a machine. Each names the offending file and problem in
/// one line.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    // The cause is in the message, not a `#[source]`: the message is the
    // whole story in one line, and a chain printer would say it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a valid ELF file: {reason}")]
    BadElf { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("{path}: ELF is for machine {machine:#x}, not RISC-V 64-bit")]
    NotRiscv64 { path: PathBuf, machine: u16 },
    #[error("{path}: does not fit in guest RAM ({what})")]
    TooLarge { path: PathBuf, what: String },
    #[error("invalid machine configuration: {0}")]
    Config(String),
    #[error("snapshot does not match this machine: {0}")]
    Snapshot(String),
}

/// A file a machine is built from (firmware, kernel, initrd), already read
/// by the host: the board never opens a file itself, so building a machine
/// twice from one configuration gives the same machine.
#[derive(Clone, PartialEq, Eq)]
pub struct Image {
    /// Where it was read from: it names the image in errors and in a log's
    /// header.
    pub path: PathBuf,
    pub bytes: Arc<[u8]>,
}

impl Image {
    pub fn new(path: impl Into<PathBuf>, bytes: impl Into<Arc<[u8]>>) -> Image {
        Image {
            path: path.into(),
            bytes: bytes.into(),
        }
    }

    /// Read `path` from `source`.
    pub fn load(path: &Path, source: &dyn ImageSource) -> Result<Image, BoardError> {
        let bytes = source.read(path).map_err(|error| BoardError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(Image::new(path, bytes))
    }
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Image({}, {} bytes)",
            self.path.display(),
            self.bytes.len()
        )
    }
}

/// Where images come from: the host's file system in the daemon, an
/// in-memory copy in the simulator. The one way file contents enter the
/// machine.
pub trait ImageSource {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

/// Images held in memory, by path: the simulator's source, and the tests'.
#[derive(Clone, Debug, Default)]
pub struct ImageMap {
    images: std::collections::BTreeMap<PathBuf, Arc<[u8]>>,
}

impl ImageMap {
    /// A source serving exactly `images`.
    pub fn of<'a>(images: impl IntoIterator<Item = &'a Image>) -> ImageMap {
        let mut map = ImageMap::default();
        for image in images {
            map.insert(image);
        }
        map
    }

    /// Serve `image` (replacing what was at its path).
    pub fn insert(&mut self, image: &Image) {
        self.images
            .insert(image.path.clone(), Arc::clone(&image.bytes));
    }
}

impl ImageSource for ImageMap {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.images
            .get(path)
            .map(|bytes| bytes.to_vec())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

/// What runs before the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// `--bios none`: the kernel starts at its entry in M-mode.
    None,
    /// A firmware image (ELF or raw) loaded at the start of RAM, entered in
    /// M-mode with a0 = hart id, a1 = device tree address, a2 = address of
    /// a `fw_dynamic_info` describing the kernel (as QEMU does).
    File(Image),
}

/// Everything needed to build a machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    pub memory_mib: u64,
    pub firmware: Firmware,
    /// ELF or raw image.
    pub kernel: Image,
    pub initrd: Option<Image>,
    /// Kernel command line (`/chosen/bootargs`).
    pub append: String,
    /// Guest-time rate: instructions per 10 MHz `mtime` tick.
    pub insns_per_tick: u64,
    /// How the hart executes; the machine behaves identically with either.
    pub engine: Engine,
    /// virtio devices, placed in slots 7, 6, ... as QEMU does.
    pub virtio: Vec<DeviceKind>,
}

impl MachineConfig {
    pub const DEFAULT_MEMORY_MIB: u64 = 128;
    /// 10 instructions per 100 ns tick: guest time runs at wall-clock speed
    /// when the hart runs at 100 MIPS.
    pub const DEFAULT_INSNS_PER_TICK: u64 = 10;
}

/// Length of one `mtime` tick in ns: the timebase is 10 MHz, as on QEMU
/// `virt`.
pub const MTIME_TICK_NS: u64 = 100;

/// A non-deterministic input, applied at the machine's current icount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A byte typed on the console (UART receive).
    ConsoleByte(u8),
    /// The hart was idle (WFI) and the host let this many `mtime` ticks
    /// pass before resuming it.
    IdleSleep { ticks: u64 },
    /// A correction of guest time toward the host's wall clock: `mtime`
    /// jumps forward by this many ticks (guest time never goes back).
    GuestTimeStep { ticks: u64 },
    /// A correction of the guest-time rate toward the host's speed: from
    /// now on `mtime` advances by one tick every `insns_per_tick`
    /// instructions (at least 1), continuing from its current value.
    GuestTimeRate { insns_per_tick: u64 },
    /// The host's wall-clock time (ns since the Unix epoch), read by the
    /// RTC from now on as this value plus the guest time that passes.
    WallClock { unix_ns: u64 },
    /// An Ethernet frame arrives at the network card.
    NetReceive { frame: Vec<u8> },
    /// The host's answer to an [`IoRequest`]: its status and the data it
    /// brings (disk data read, entropy).
    IoDone {
        id: u64,
        status: IoStatus,
        data: Vec<u8>,
    },
    /// A control input, from the operator rather than the world
    /// (`ftvm set --balloon`): the memory balloon's target, in 4 KiB
    /// pages, becomes `pages` (its `num_pages`), and a running driver gets
    /// the configuration-change interrupt. Ignored by a machine without a
    /// balloon.
    BalloonTarget { pages: u32 },
}

/// Why [`Machine::run`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The icount limit was reached.
    Limit,
    /// The hart is in WFI with nothing pending. It will wake when an input
    /// raises an interrupt or, if `wake_at` is set, when guest time
    /// (`mtime`) reaches it: the host decides how long to sleep and then
    /// injects [`Input::IdleSleep`].
    Idle { wake_at: Option<u64> },
    /// The guest asked to power off (sifive-test). `code` 0 is the pass
    /// code (0x5555); a fail write `(code << 16) | 0x3333` gives `code`.
    PowerOff { code: u32 },
    /// The guest asked to reset (sifive-test 0x7777).
    Reset,
    /// An HTIF `tohost` exit: `tohost = (code << 1) | 1`.
    HtifExit { code: u64 },
    /// A device has requests for the host ([`Machine::take_io_requests`]).
    Io,
}

/// A state digest (BLAKE3 over hart state, device state and RAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
