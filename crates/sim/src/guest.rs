//! The guest program (`guest/tests/ftguest.c`) as the simulator sees it:
//! its image and machine, the frames it sends, and the tables the checks
//! read from its RAM.

use ftvm_board::virtio::DeviceKind;
use ftvm_board::{Engine, Firmware, Image, Machine, MachineConfig};

use crate::{SimError, VM_MAC, guest_elf};

pub(crate) const SECTORS: u64 = 64;
pub(crate) const SECTOR: usize = 512;
/// Sectors the guest rotates over (1..=NSEC), as in ftguest.c.
pub(crate) const NSEC: usize = 8;

/// The client's (the world's) address.
pub(crate) const WORLD_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const BROADCAST: [u8; 6] = [0xff; 6];
/// The EtherType of ftguest.c's frames, and their length.
pub(crate) const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
pub(crate) const FRAME_LEN: usize = 60;
pub(crate) const MAGIC_REQUEST: u32 = u32::from_le_bytes(*b"FTGQ");
pub(crate) const MAGIC_ANSWER: u32 = u32::from_le_bytes(*b"FTGA");
const MAGIC_TICK: u32 = u32::from_le_bytes(*b"FTGT");
/// Answers and sent frames the guest keeps in `ftg_net` (ftguest.c).
pub(crate) const ANS_WIN: u64 = 16;
pub(crate) const TX_WIN: u64 = 32;

/// The guest program, as both hosts read it, and where its tables are.
pub(crate) struct Guest {
    pub image: Image,
    /// `ftg_table` in guest RAM: the last write to each sector the guest
    /// saw complete.
    table: u64,
    /// `ftg_net` in guest RAM.
    net_table: u64,
}

impl Guest {
    pub fn load(seed: u64) -> Result<Guest, SimError> {
        let setup = |what: String| SimError::Setup { seed, what };
        let elf = std::fs::read(guest_elf()).map_err(|e| {
            setup(format!(
                "{}: {e} (run `make -C guest`)",
                guest_elf().display()
            ))
        })?;
        let image = Image::new(guest_elf(), elf);
        let table = symbol_address(&image.bytes, "ftg_table").map_err(setup)?;
        let net_table = symbol_address(&image.bytes, "ftg_net").map_err(setup)?;
        Ok(Guest {
            image,
            table,
            net_table,
        })
    }

    pub fn machine_config(&self, engine: Engine) -> MachineConfig {
        MachineConfig {
            memory_mib: 16,
            firmware: Firmware::None,
            kernel: self.image.clone(),
            initrd: None,
            append: String::new(),
            insns_per_tick: MachineConfig::DEFAULT_INSNS_PER_TICK,
            engine,
            virtio: vec![
                DeviceKind::Block { sectors: SECTORS },
                DeviceKind::Entropy,
                DeviceKind::Net {
                    mac: VM_MAC,
                    mtu: 1500,
                },
            ],
        }
    }

    /// The guest's `ftg_net`, read from a machine's RAM.
    pub fn net(&self, machine: &Machine) -> Option<GuestNet> {
        GuestNet::read(machine, self.net_table)
    }

    /// The guest's `ftg_table`, read from a machine's RAM: per sector
    /// 1..=NSEC, the tick and hash of the last write whose completion the
    /// guest saw, if any.
    pub fn table(&self, machine: &Machine) -> Option<[Option<(u64, u64)>; NSEC]> {
        let mut table = [0u8; NSEC * 24];
        machine.hart().ram().read(self.table, &mut table).ok()?;
        Some(std::array::from_fn(|s| {
            let word = |k: usize| {
                let at = s * 24 + k * 8;
                let mut w = [0u8; 8];
                w.copy_from_slice(&table[at..at + 8]);
                u64::from_le_bytes(w)
            };
            (word(0) == 1).then(|| (word(1), word(2)))
        }))
    }
}

/// The guest-physical address of the symbol `name` in the guest's ELF.
fn symbol_address(elf: &[u8], name: &str) -> Result<u64, String> {
    let elf = goblin::elf::Elf::parse(elf).map_err(|e| e.to_string())?;
    elf.syms
        .iter()
        .find(|s| elf.strtab.get_at(s.st_name) == Some(name))
        .map(|s| s.st_value)
        .ok_or_else(|| format!("no {name} symbol"))
}

/// A frame ftguest.c sends: its sequence number, kind and two words
/// (answer: request, hash; tick: tick, hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GuestFrame {
    pub seq: u64,
    pub magic: u32,
    pub b: u64,
    pub c: u64,
}

impl GuestFrame {
    pub fn parse(frame: &[u8]) -> Result<GuestFrame, String> {
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&frame[at..at + 8]);
            u64::from_le_bytes(w)
        };
        if frame.len() != FRAME_LEN || frame[12..14] != ETHERTYPE || frame[6..12] != VM_MAC {
            return Err(format!("a frame ftguest never sends: {frame:02x?}"));
        }
        let magic = u32::from_le_bytes([frame[14], frame[15], frame[16], frame[17]]);
        let to = match magic {
            MAGIC_ANSWER => WORLD_MAC,
            MAGIC_TICK => BROADCAST,
            _ => return Err(format!("a frame of unknown kind: {frame:02x?}")),
        };
        if frame[0..6] != to || frame[42..].iter().any(|&b| b != 0) {
            return Err(format!("a malformed frame: {frame:02x?}"));
        }
        Ok(GuestFrame {
            seq: word(18),
            magic,
            b: word(26),
            c: word(34),
        })
    }

    pub fn describe(&self) -> String {
        match self.magic {
            MAGIC_ANSWER => format!(
                "frame {} (answer to request {}, hash {:#x})",
                self.seq, self.b, self.c
            ),
            _ => format!("frame {} (tick {}, hash {:#x})", self.seq, self.b, self.c),
        }
    }
}

/// The guest's `ftg_net` (ftguest.c), read from a machine's RAM.
pub(crate) struct GuestNet {
    pub sent: u64,
    pub next_req: u64,
    /// `[k % ANS_WIN]` = (k, hash).
    pub answers: Vec<(u64, u64)>,
    /// `[seq % TX_WIN]`.
    pub frames: Vec<GuestFrame>,
}

impl GuestNet {
    const SIZE: usize = 8 * (4 + 2 * ANS_WIN as usize + 4 * TX_WIN as usize);

    fn read(machine: &Machine, at: u64) -> Option<GuestNet> {
        let mut raw = vec![0u8; Self::SIZE];
        machine.hart().ram().read(at, &mut raw).ok()?;
        let word = |k: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&raw[8 * k..8 * k + 8]);
            u64::from_le_bytes(w)
        };
        let answers = (0..ANS_WIN as usize)
            .map(|k| (word(4 + 2 * k), word(5 + 2 * k)))
            .collect();
        let base = 4 + 2 * ANS_WIN as usize;
        let frames = (0..TX_WIN as usize)
            .map(|k| GuestFrame {
                seq: word(base + 4 * k),
                magic: word(base + 4 * k + 1) as u32,
                b: word(base + 4 * k + 2),
                c: word(base + 4 * k + 3),
            })
            .collect();
        Some(GuestNet {
            sent: word(0),
            next_req: word(1),
            answers,
            frames,
        })
    }
}

/// Byte `i` of the guest's record for tick `n` with hash `h` (ftguest.c's
/// `record_byte`).
pub(crate) fn record_byte(n: u64, h: u64, i: u32) -> u8 {
    if i < 8 {
        return (0x4654_4754u64 >> (8 * (i & 3))) as u8;
    }
    if i < 16 {
        return (n >> (8 * (i - 8))) as u8;
    }
    if i < 24 {
        return (h >> (8 * (i - 16))) as u8;
    }
    (h >> (8 * (i & 7))) as u8 ^ i as u8
}
