//! The machine: the hart, the devices on its bus, and the run loop that
//! connects them at instruction boundaries.

use std::sync::Mutex;

use ftvm_cpu::{Exit, Hart, HartConfig, HartState, irq};
use serde::{Deserialize, Serialize};

use crate::devices::{
    BusCtx, Clint, Mapping, MmioBus, Plic, Rtc, SifiveTest, TestRequest, Uart, VirtioSlots,
};
use crate::virtio::{BalloonInfo, IoRequest};
use crate::{BoardError, Digest, Firmware, Input, MachineConfig, Stop, fdt, loader};

const RAM_BASE: u64 = 0x8000_0000;
const TIMEBASE_HZ: u32 = (1_000_000_000 / crate::MTIME_TICK_NS) as u32;

/// Everything on the bus except RAM. Its state is part of snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Devices {
    clint: Clint,
    plic: Plic,
    uart: Uart,
    rtc: Rtc,
    /// The virtio-mmio slots (slot 7 first, as QEMU fills them).
    virtio: VirtioSlots,
    /// Requests for the host not yet taken, and the next request's id.
    io_requests: Vec<IoRequest>,
    next_io_id: u64,
    /// HTIF mailbox addresses (from the kernel ELF's symbols).
    tohost: Option<u64>,
    /// Stateless, so not in snapshots or digests: a field only so that
    /// the bus can borrow it like the other devices.
    #[serde(skip)]
    sifive_test: SifiveTest,
}

impl Devices {
    /// The devices with registers on the bus, in address order.
    fn mmio(&mut self) -> [Mapping<'_>; 6] {
        [
            Mapping::new(&mut self.sifive_test),
            Mapping::new(&mut self.rtc),
            Mapping::new(&mut self.clint),
            Mapping::new(&mut self.plic),
            Mapping::new(&mut self.uart),
            Mapping::new(&mut self.virtio),
        ]
    }
}

pub struct Machine {
    hart: Hart,
    devices: Devices,
    console: Vec<u8>,
    ram_size: u64,
    /// Guest writes to `mtime` so far: host-side bookkeeping for guest-time
    /// steering, not machine state (not in snapshots or digests).
    mtime_writes: u64,
    /// Host-side too: end a run this many instructions after the console's
    /// first byte (see [`Machine::stop_after_output`]).
    output_grace: Option<u64>,
    /// The hash tree of RAM as of the last digest. Behind a lock only so
    /// that `digest` can take `&self`; the machine is used by one thread.
    ram_digest: Mutex<RamDigest>,
}

/// A whole-machine snapshot: hart, devices and RAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    ram_size: u64,
    hart: HartState,
    devices: Devices,
    ram: Vec<u8>,
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"FTVMSNAP";
const SNAPSHOT_VERSION: u32 = 5;

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    ram_size: u64,
    hart: HartState,
    devices: Devices,
}

impl Snapshot {
    /// `FTVMSNAP`, a version, the length of the header, the header
    /// (postcard: RAM size, hart and devices), then RAM raw.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = SnapshotHeader {
            ram_size: self.ram_size,
            hart: self.hart.clone(),
            devices: self.devices.clone(),
        };
        // Serialising plain owned data into a Vec cannot fail.
        let header = postcard::to_stdvec(&header).unwrap_or_default();
        let mut out = Vec::with_capacity(16 + header.len() + self.ram.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.ram);
        out
    }

    /// The snapshot without its RAM (postcard: RAM size, hart, devices),
    /// as a clone sends it ahead of the pages.
    pub fn state_bytes(&self) -> Vec<u8> {
        let header = SnapshotHeader {
            ram_size: self.ram_size,
            hart: self.hart.clone(),
            devices: self.devices.clone(),
        };
        // Serialising plain owned data into a Vec cannot fail.
        postcard::to_stdvec(&header).unwrap_or_default()
    }

    /// A snapshot from [`Snapshot::state_bytes`] and its RAM.
    pub fn from_parts(state: &[u8], ram: Vec<u8>) -> Result<Snapshot, BoardError> {
        let bad = |what: String| BoardError::Snapshot(what);
        let header: SnapshotHeader =
            postcard::from_bytes(state).map_err(|e| bad(format!("corrupt state: {e}")))?;
        if ram.len() as u64 != header.ram_size {
            return Err(bad(format!(
                "{} bytes of RAM for a machine of {} MiB",
                ram.len(),
                header.ram_size >> 20
            )));
        }
        Ok(Snapshot {
            ram_size: header.ram_size,
            hart: header.hart,
            devices: header.devices,
            ram,
        })
    }

    /// The machine's RAM as captured.
    pub fn ram(&self) -> &[u8] {
        &self.ram
    }

    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// The icount the snapshot was taken at.
    pub fn icount(&self) -> u64 {
        self.hart.icount
    }

    /// The digest of the machine this snapshot restores, the same as
    /// [`Machine::digest`] of it, computed without a machine (a clone's
    /// sender computes it off the run loop).
    pub fn digest(&self) -> Digest {
        digest_of(&self.hart, &self.devices, ram_root(&self.ram))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Snapshot, BoardError> {
        let bad = |what: &str| BoardError::Snapshot(what.to_string());
        if bytes.len() < 16 || &bytes[..8] != SNAPSHOT_MAGIC {
            return Err(bad("not an ftvm snapshot"));
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != SNAPSHOT_VERSION {
            return Err(bad(&format!("unsupported snapshot version {version}")));
        }
        let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        let header_bytes = bytes
            .get(16..16 + len)
            .ok_or_else(|| bad("truncated header"))?;
        let header: SnapshotHeader =
            postcard::from_bytes(header_bytes).map_err(|e| bad(&format!("corrupt header: {e}")))?;
        let ram = &bytes[16 + len..];
        if ram.len() as u64 != header.ram_size {
            return Err(bad("RAM image has the wrong size"));
        }
        Ok(Snapshot {
            ram_size: header.ram_size,
            hart: header.hart,
            devices: header.devices,
            ram: ram.to_vec(),
        })
    }
}

impl Machine {
    /// Build the machine: load firmware, kernel and initrd, generate the
    /// device tree, set the reset state.
    pub fn new(config: &MachineConfig) -> Result<Machine, BoardError> {
        let ram_size = config
            .memory_mib
            .checked_mul(1 << 20)
            .filter(|&s| (16 << 20..=(64u64 << 30)).contains(&s))
            .ok_or_else(|| {
                BoardError::Config(format!(
                    "memory must be between 16 MiB and 64 GiB, not {} MiB",
                    config.memory_mib
                ))
            })?;
        if config.insns_per_tick == 0 {
            return Err(BoardError::Config(
                "insns_per_tick must be at least 1".into(),
            ));
        }
        let mut hart = Hart::new(HartConfig {
            hart_id: 0,
            ram_base: RAM_BASE,
            ram_size,
            insns_per_tick: config.insns_per_tick,
        });
        hart.set_engine(config.engine)
            .map_err(|e| BoardError::Config(e.to_string()))?;
        let ram = hart.ram_mut();

        let kernel_image = &config.kernel;
        let (start_pc, kernel, fw_dynamic) = match &config.firmware {
            Firmware::None => {
                let kernel =
                    loader::load_image(ram, &kernel_image.path, &kernel_image.bytes, RAM_BASE)?;
                (kernel.entry, kernel, false)
            }
            Firmware::File(fw_image) => {
                let fw = loader::load_image(ram, &fw_image.path, &fw_image.bytes, RAM_BASE)?;
                let kernel_base = loader::kernel_start_after(fw.end);
                let kernel =
                    loader::load_image(ram, &kernel_image.path, &kernel_image.bytes, kernel_base)?;
                if kernel.start < fw.end {
                    return Err(BoardError::TooLarge {
                        path: kernel_image.path.clone(),
                        what: format!("it overlaps the firmware, which ends at {:#x}", fw.end),
                    });
                }
                (fw.entry, kernel, true)
            }
        };
        let initrd = match &config.initrd {
            Some(image) => Some(loader::load_initrd(
                ram,
                &image.path,
                &image.bytes,
                kernel.entry,
            )?),
            None => None,
        };

        let blob = fdt::build(&fdt::FdtParams {
            ram_base: RAM_BASE,
            ram_size,
            bootargs: &config.append,
            initrd,
            timebase_frequency: TIMEBASE_HZ,
        })
        .map_err(|e| BoardError::Config(format!("building the device tree: {e}")))?;
        let fdt_addr = loader::fdt_address(ram, blob.len() as u64);
        let overlaps = |(s, e): (u64, u64)| s < fdt_addr + blob.len() as u64 && fdt_addr < e;
        if overlaps((kernel.start, kernel.end)) || initrd.is_some_and(overlaps) {
            return Err(BoardError::Config(format!(
                "the kernel or initrd overlaps the device tree at {fdt_addr:#x}: give the guest more memory"
            )));
        }
        ram.write(fdt_addr, &blob)
            .map_err(|e| BoardError::Config(format!("placing the device tree: {e}")))?;
        // fw_dynamic_info lives in RAM just below the device tree (QEMU puts
        // it in its reset ROM, which this board does not have).
        let info_addr = fdt_addr - 0x1000;
        if fw_dynamic {
            ram.write(info_addr, &loader::fw_dynamic_info(kernel.start))
                .map_err(|e| BoardError::Config(format!("placing fw_dynamic_info: {e}")))?;
        }

        hart.set_pc(start_pc);
        hart.set_xreg(10, 0); // a0: hart id
        hart.set_xreg(11, fdt_addr); // a1: device tree
        if fw_dynamic {
            hart.set_xreg(12, info_addr); // a2: fw_dynamic_info
        }
        let tohost = kernel.tohost;
        if let Some(addr) = tohost {
            hart.watch_store(addr);
        }
        Ok(Machine {
            hart,
            devices: Devices {
                clint: Clint::new(),
                plic: Plic::new(),
                uart: Uart::new(),
                rtc: Rtc::default(),
                virtio: VirtioSlots::new(&config.virtio)?,
                io_requests: Vec::new(),
                next_io_id: 0,
                tohost,
                sifive_test: SifiveTest,
            },
            console: Vec::new(),
            ram_size,
            mtime_writes: 0,
            output_grace: None,
            ram_digest: Mutex::new(RamDigest::new(ram_size)),
        })
    }

    /// Propagate device state to the hart's interrupt lines.
    fn update_irq_lines(&mut self) {
        let d = &mut self.devices;
        let mtime = self.hart.mtime();
        d.rtc.poll(mtime);
        d.plic.set_level(Uart::IRQ, d.uart.irq_level());
        d.plic.set_level(Rtc::IRQ, d.rtc.irq_level());
        for (source, level) in d.virtio.irq_levels() {
            d.plic.set_level(source, level);
        }
        let mut lines = 0;
        if d.clint.msip & 1 != 0 {
            lines |= irq::MSIP;
        }
        if d.clint.timer_pending(mtime) {
            lines |= irq::MTIP;
        }
        if d.plic.context_pending(0) {
            lines |= irq::MEIP;
        }
        if d.plic.context_pending(1) {
            lines |= irq::SEIP;
        }
        self.hart.set_irq_lines(irq::BOARD_DRIVEN, lines);
    }

    /// Run until `icount` reaches `icount_limit` or a [`Stop`] condition.
    pub fn run(&mut self, mut icount_limit: u64) -> Stop {
        let mut output_seen = !self.console.is_empty();
        loop {
            self.update_irq_lines();
            let icount = self.hart.icount();
            if icount >= icount_limit {
                return Stop::Limit;
            }
            // Stop at the timer deadline so MTIP rises at its exact icount.
            // A timer already pending has none: MTIP changes again only
            // through a CLINT write, which ends the run anyway.
            let clint = &self.devices.clint;
            let mut limit = if clint.timer_pending(self.hart.mtime()) {
                icount_limit
            } else {
                icount_limit.min(clint.deadline(self.hart.clock(), icount))
            };
            // Likewise for an armed RTC alarm.
            if let Some(alarm) = self.devices.rtc.alarm_mtime() {
                limit = limit.min(self.hart.clock().icount_at(icount, alarm).max(icount + 1));
            }
            // The bus holds the console for the run (moved, not copied)
            // so that transmitted bytes land in it directly.
            let console = std::mem::take(&mut self.console);
            let ctx = BusCtx::new(*self.hart.clock(), console);
            let mut bus = MmioBus::new(self.devices.mmio(), ctx);
            let exit = self.hart.run(&mut bus, limit);
            let effects = bus.into_effects();
            self.console = effects.console;
            if let Some(write) = effects.mtime_write {
                self.mtime_writes += 1;
                self.hart.clock_mut().set_mtime(write.icount, write.value);
            }
            match effects.test_request {
                Some(TestRequest::PowerOff(code)) => return Stop::PowerOff { code },
                Some(TestRequest::Reset) => return Stop::Reset,
                None => {}
            }
            if exit == Exit::Mmio && self.process_virtio() {
                return Stop::Io;
            }
            if let Some(grace) = self.output_grace {
                if !output_seen && exit == Exit::Mmio && !self.console.is_empty() {
                    output_seen = true;
                    icount_limit = icount_limit.min(self.hart.icount().saturating_add(grace));
                }
            }
            match exit {
                Exit::Limit | Exit::Mmio => {}
                Exit::Wfi => {
                    self.update_irq_lines();
                    if !self.hart.wfi_wakeup_pending() {
                        return Stop::Idle {
                            wake_at: self.timer_wake(),
                        };
                    }
                }
                Exit::StoreWatch(addr) => {
                    if let Some(stop) = self.htif(addr) {
                        return stop;
                    }
                }
            }
        }
    }

    /// The `mtime` at which a timer (the CLINT's, or the hart's Sstc
    /// timer) would wake an idle hart, if one can.
    fn timer_wake(&self) -> Option<u64> {
        let mie = self.hart.csr(0x304).unwrap_or(0);
        let cmp = self.devices.clint.mtimecmp;
        let clint =
            (mie & irq::MTIP != 0 && cmp > self.hart.mtime() && cmp != u64::MAX).then_some(cmp);
        match (clint, self.hart.supervisor_timer_wake()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Spike's HTIF: `tohost = (code << 1) | 1` exits; device 1 command 1
    /// prints a character. Other requests (the syscall proxy of riscv-tests'
    /// printf) are acknowledged and ignored.
    fn htif(&mut self, addr: u64) -> Option<Stop> {
        let mut buf = [0u8; 8];
        self.hart.ram().read(addr, &mut buf).ok()?;
        let value = u64::from_le_bytes(buf);
        if value == 0 {
            return None;
        }
        let device = value >> 56;
        let command = (value >> 48) & 0xff;
        if device == 0 && command == 0 && value & 1 != 0 {
            return Some(Stop::HtifExit {
                code: (value & ((1 << 48) - 1)) >> 1,
            });
        }
        if device == 1 && command == 1 {
            self.console.push(value as u8);
        }
        // Acknowledge: clear tohost and answer in fromhost (the next word).
        // A device's write, like DMA: it retires only code it overwrites.
        let _ = self.hart.dma_write(addr, &0u64.to_le_bytes());
        let _ = self
            .hart
            .dma_write(addr + 8, &((device << 56) | (command << 48)).to_le_bytes());
        None
    }

    /// Apply one input at the current icount.
    pub fn inject(&mut self, input: Input) {
        match input {
            Input::ConsoleByte(byte) => self.devices.uart.receive(byte),
            Input::IdleSleep { ticks } | Input::GuestTimeStep { ticks } => {
                self.hart.clock_mut().advance(ticks)
            }
            Input::GuestTimeRate { insns_per_tick } => {
                let icount = self.hart.icount();
                self.hart.clock_mut().set_rate(icount, insns_per_tick);
            }
            Input::WallClock { unix_ns } => {
                let mtime = self.hart.mtime();
                self.devices.rtc.set_wall_clock(unix_ns, mtime);
            }
            Input::NetReceive { frame } => {
                let hart = &mut self.hart;
                let taken = self
                    .devices
                    .virtio
                    .devices_mut()
                    .any(|dev| dev.receive(hart, &frame));
                if !taken {
                    tracing::debug!(len = frame.len(), "frame dropped: no receive buffer");
                }
            }
            Input::IoDone { id, status, data } => {
                let hart = &mut self.hart;
                let done = self
                    .devices
                    .virtio
                    .devices_mut()
                    .any(|dev| dev.complete(hart, id, status, &data));
                if !done {
                    tracing::debug!(id, "completion for a request no device waits for");
                }
            }
            Input::BalloonTarget { pages } => {
                let set = self
                    .devices
                    .virtio
                    .devices_mut()
                    .any(|dev| dev.set_balloon_target(pages));
                if !set {
                    tracing::debug!(pages, "a balloon target for a machine without a balloon");
                }
            }
        }
        self.update_irq_lines();
    }

    /// Take the requests of notified virtio queues; true if there are new
    /// ones for the host.
    fn process_virtio(&mut self) -> bool {
        let d = &mut self.devices;
        let before = d.io_requests.len();
        for dev in d.virtio.devices_mut() {
            dev.process(&mut self.hart, &mut d.next_io_id, &mut d.io_requests);
        }
        d.io_requests.len() > before
    }

    /// The I/O the devices ask of the host (after [`Stop::Io`], or any
    /// time). Each must be answered with [`Input::IoDone`].
    pub fn take_io_requests(&mut self) -> Vec<IoRequest> {
        std::mem::take(&mut self.devices.io_requests)
    }

    /// The memory balloon's target and what it holds, if the machine has
    /// one.
    pub fn balloon(&self) -> Option<BalloonInfo> {
        self.devices.virtio.devices().find_map(|dev| dev.balloon())
    }

    /// Console bytes the guest wrote since the last call (UART and HTIF).
    pub fn take_console_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.console)
    }
    pub fn icount(&self) -> u64 {
        self.hart.icount()
    }
    /// End each [`Machine::run`] at most `grace` instructions after the
    /// guest wrote its first console byte of the run, so that a host
    /// holding output (an FT primary) sees it promptly rather than at the
    /// end of a long slice. Where a run stops does not change what the
    /// guest does; the grace lets a whole line out in one piece.
    pub fn stop_after_output(&mut self, grace: Option<u64>) {
        self.output_grace = grace;
    }

    /// How often the guest has written `mtime` (CLINT) in this process.
    pub fn mtime_writes(&self) -> u64 {
        self.mtime_writes
    }
    pub fn hart(&self) -> &Hart {
        &self.hart
    }
    pub fn hart_mut(&mut self) -> &mut Hart {
        &mut self.hart
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_into(Vec::new())
    }

    /// A snapshot whose RAM is copied into `buffer` (resized to fit): a
    /// buffer allocated and touched beforehand makes the copy a plain
    /// `memcpy`, the whole of a clone's pause.
    pub fn snapshot_into(&self, mut buffer: Vec<u8>) -> Snapshot {
        let ram = self.hart.ram().bytes();
        if buffer.len() == ram.len() {
            buffer.copy_from_slice(ram);
        } else {
            // One pass: zero-filling a fresh buffer first would write RAM's
            // size twice (`Machine::snapshot`, every replay snapshot).
            buffer.clear();
            buffer.extend_from_slice(ram);
        }
        Snapshot {
            ram_size: self.ram_size,
            hart: self.hart.state(),
            devices: self.devices.clone(),
            ram: buffer,
        }
    }

    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<(), BoardError> {
        if snapshot.ram_size != self.ram_size {
            return Err(BoardError::Snapshot(format!(
                "it has {} MiB of RAM, this machine {} MiB",
                snapshot.ram_size >> 20,
                self.ram_size >> 20
            )));
        }
        self.hart
            .ram_mut()
            .restore_bytes(&snapshot.ram)
            .map_err(|_| BoardError::Snapshot("RAM image has the wrong size".into()))?;
        self.hart.restore(&snapshot.hart);
        self.devices = snapshot.devices.clone();
        self.update_irq_lines();
        Ok(())
    }

    /// BLAKE3 of the hart's and devices' state and the root of RAM's hash
    /// tree, which costs only the pages written since the last digest.
    pub fn digest(&self) -> Digest {
        let ram_root = self
            .ram_digest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .root(self.hart.ram());
        digest_of(&self.hart.state(), &self.devices, ram_root)
    }
}

fn digest_of(hart: &HartState, devices: &Devices, ram_root: [u8; 32]) -> Digest {
    let mut hasher = blake3::Hasher::new();
    // Serialising plain owned data into a Vec cannot fail.
    hasher.update(&postcard::to_stdvec(hart).unwrap_or_default());
    hasher.update(&postcard::to_stdvec(devices).unwrap_or_default());
    hasher.update(&ram_root);
    Digest(*hasher.finalize().as_bytes())
}

mod ram_digest;
use ram_digest::{RamDigest, ram_root};

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::DeviceKind;
    use proptest::prelude::*;

    /// A raw image that counts in a0 forever, on 16 MiB, no devices.
    fn counting_config() -> MachineConfig {
        // addi a0, a0, 1; j -4
        let code: Vec<u8> = [0x0015_0513u32, 0xffdf_f06f]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        MachineConfig {
            memory_mib: 16,
            firmware: Firmware::None,
            kernel: crate::Image::new("count.img", code),
            initrd: None,
            append: String::new(),
            insns_per_tick: 10,
            engine: crate::Engine::default(),
            virtio: Vec::new(),
        }
    }

    /// A machine running a raw image that counts in a0 forever.
    fn machine() -> Machine {
        Machine::new(&counting_config()).expect("machine")
    }

    #[test]
    fn snapshot_round_trip_and_digest_sensitivity() {
        let mut m = machine();
        assert_eq!(m.run(1001), Stop::Limit);
        let snap = Snapshot::from_bytes(&m.snapshot().to_bytes()).expect("decodes");
        let digest = m.digest();
        let mut other = machine();
        other.restore(&snap).expect("restore");
        assert_eq!(other.digest(), digest);
        other
            .hart_mut()
            .ram_mut()
            .write(0x8010_0000, &[1])
            .expect("ram");
        assert_ne!(
            other.digest(),
            digest,
            "one RAM byte must change the digest"
        );
    }

    /// A machine's digest rehashes only the pages written since its last
    /// one: after guest stores on either engine (translated code marks its
    /// stores' pages itself) and a device's DMA it must still equal the
    /// digest of the same state computed from nothing.
    #[test]
    fn an_incremental_digest_equals_one_computed_from_nothing() {
        let i_type = |imm: i32, rs1: u32, f3: u32, rd: u32, op: u32| {
            ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
        };
        let r_type = |f7: u32, rs2: u32, rs1: u32, f3: u32, rd: u32| {
            (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x33
        };
        let (t0, t2, t3, t4, t5, t6) = (5, 7, 28, 29, 30, 31);
        // Stores of an LCG's values to 8-byte slots all over RAM past the
        // first page: t3 = t3 * 1103515245 + 1; [t0 + (t3 & 0xfefff8)] = t3.
        let program = [
            0x17 | (t0 << 7),                           // auipc t0, 0
            0x37 | (t6 << 7) | (1 << 12),               // lui t6, 1
            r_type(0, t6, t0, 0, t0),                   // add t0, t0, t6
            0x37 | (t4 << 7) | (0x41c65 << 12),         // lui t4, 0x41c65
            i_type(-0x193, t4, 0, t4, 0x13),            // addi t4, t4, -0x193
            0x37 | (t5 << 7) | (0xff0 << 12),           // lui t5, 0xff0
            i_type(-4, t5, 0, t5, 0x13),                // addi t5, t5, -4
            r_type(1, t4, t3, 0, t3),                   // loop: mul t3, t3, t4
            i_type(1, t3, 0, t3, 0x13),                 // addi t3, t3, 1
            r_type(0, t5, t3, 7, t2),                   // and t2, t3, t5
            r_type(0, t0, t2, 0, t2),                   // add t2, t2, t0
            (t3 << 20) | (t2 << 15) | (3 << 12) | 0x23, // sd t3, 0(t2)
            0xfedf_f06f,                                // j loop (-20)
        ];
        for engine in [crate::Engine::Interpreter, crate::Engine::Translator] {
            let mut config = counting_config();
            config.engine = engine;
            config.kernel = crate::Image::new(
                "stores.img",
                program
                    .iter()
                    .flat_map(|w: &u32| w.to_le_bytes())
                    .collect::<Vec<u8>>(),
            );
            let mut m = Machine::new(&config).expect("machine");
            let mut seen = Vec::new();
            for round in 1..=4u64 {
                assert_eq!(m.run(round * 30_000), Stop::Limit);
                if round == 3 {
                    m.hart_mut()
                        .dma_write(0x8080_0000, &[0x5a; 5000])
                        .expect("in RAM");
                }
                let digest = m.digest();
                assert_eq!(digest, m.snapshot().digest(), "{engine:?}, round {round}");
                assert!(!seen.contains(&digest), "{engine:?}: stores change it");
                seen.push(digest);
            }
        }
    }

    /// A clone sends the state and the RAM apart and computes the digest
    /// from the snapshot alone: all three must agree with the machine.
    #[test]
    fn snapshot_parts_and_digest_agree_with_the_machine() {
        let mut m = machine();
        assert_eq!(m.run(777), Stop::Limit);
        let snap = m.snapshot_into(vec![0xAA; 3]);
        assert_eq!(snap.digest(), m.digest());
        assert_eq!(snap.icount(), m.icount());
        let parts = Snapshot::from_parts(&snap.state_bytes(), snap.ram().to_vec()).expect("parts");
        assert_eq!(parts, snap);
        let mut other = machine();
        other.restore(&parts).expect("restore");
        assert_eq!(other.digest(), m.digest());
        assert!(Snapshot::from_parts(&snap.state_bytes(), vec![0; 4096]).is_err());
        assert!(Snapshot::from_parts(&[0xFF; 7], snap.ram().to_vec()).is_err());
    }

    /// The balloon's target is machine state: in snapshots and digests,
    /// and restored with them.
    #[test]
    fn a_balloon_target_is_in_snapshots_and_digests() {
        let with_balloon = || {
            let mut config = counting_config();
            config.virtio = vec![DeviceKind::Balloon];
            Machine::new(&config).expect("machine")
        };
        let mut m = with_balloon();
        assert_eq!(m.run(500), Stop::Limit);
        let before = m.digest();
        m.inject(Input::BalloonTarget { pages: 1024 });
        assert_ne!(m.digest(), before, "the target changes the digest");
        let info = m.balloon().expect("a balloon");
        assert_eq!((info.target_pages, info.actual_pages), (1024, 0));
        let snap = Snapshot::from_bytes(&m.snapshot().to_bytes()).expect("decodes");
        let mut other = with_balloon();
        assert_eq!(other.balloon().map(|b| b.target_pages), Some(0));
        other.restore(&snap).expect("restore");
        assert_eq!(other.balloon(), Some(info));
        assert_eq!(other.digest(), m.digest());
        // Without a balloon the input changes nothing.
        let mut plain = machine();
        assert_eq!(plain.run(100), Stop::Limit);
        let digest = plain.digest();
        plain.inject(Input::BalloonTarget { pages: 1 });
        assert_eq!((plain.balloon(), plain.digest()), (None, digest));
    }

    #[test]
    fn device_windows_do_not_overlap() {
        let mut devices = machine().devices;
        let mut windows: Vec<_> = devices.mmio().iter().map(|m| m.window().clone()).collect();
        windows.sort_unstable_by_key(|w| w.start);
        for pair in windows.windows(2) {
            assert!(pair[0].end <= pair[1].start, "{pair:x?} overlap");
        }
        assert!(windows.iter().all(|w| w.end <= RAM_BASE));
    }

    #[test]
    fn snapshot_of_another_size_is_refused() {
        let mut small = machine();
        let mut snap = small.snapshot();
        snap.ram_size *= 2;
        snap.ram.resize(snap.ram_size as usize, 0);
        assert!(matches!(small.restore(&snap), Err(BoardError::Snapshot(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn corrupt_snapshots_are_errors_not_panics(
            flips in prop::collection::vec((0usize..400, any::<u8>()), 1..8),
            cut in prop::option::of(0usize..400),
        ) {
            let mut bytes = machine().snapshot().to_bytes();
            for (at, value) in flips {
                bytes[at] = value;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            let _ = Snapshot::from_bytes(&bytes);
        }
    }
}
