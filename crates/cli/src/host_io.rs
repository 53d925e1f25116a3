//! The host side of the machine's I/O: what its devices' requests turn
//! into on this host. Disks are raw image files; entropy comes from the
//! host's random source. Every answer goes back to the machine as an input
//! ([`Input::IoDone`]), which is what record/replay will log.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ftvm_board::{DeviceKind, Input, IoRequest, IoStatus};
use ftvm_net::NetBackend;

/// A raw disk image attached as virtio-blk.
pub struct Disk {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Disk {
    /// Open `path` read-write. It must exist and be a whole number of
    /// 512-byte sectors; nothing is written to it here.
    pub fn open(path: &Path) -> Result<Disk> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open disk image {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot read the size of {}", path.display()))?
            .len();
        if len == 0 || len % 512 != 0 {
            bail!(
                "disk image {} is {len} bytes, not a whole number of 512-byte sectors",
                path.display()
            );
        }
        Ok(Disk {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    pub fn device(&self) -> DeviceKind {
        DeviceKind::Block {
            sectors: self.len / 512,
        }
    }

    fn read(&mut self, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
        let mut data = vec![0; len as usize];
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.read_exact(&mut data)?;
        Ok(data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.write_all(data)
    }
}

/// The guest's MAC address (QEMU's default).
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Serves the devices of one machine: its disk (if any, in the first
/// slot, so the guest sees it as /dev/vda), its network card (if any) and
/// the entropy source.
pub struct HostIo {
    pub disk: Option<Disk>,
    pub net: Option<Box<dyn NetBackend>>,
}

impl HostIo {
    /// The machine's virtio devices, in slot order.
    pub fn devices(&self) -> Vec<DeviceKind> {
        let mut kinds: Vec<DeviceKind> = self.disk.iter().map(Disk::device).collect();
        if self.net.is_some() {
            kinds.push(DeviceKind::Net { mac: GUEST_MAC });
        }
        kinds.push(DeviceKind::Entropy);
        kinds
    }

    /// Frames that arrived for the guest.
    pub fn poll_net(&mut self) -> Vec<Input> {
        self.net.as_mut().map_or_else(Vec::new, |net| {
            net.poll()
                .into_iter()
                .map(|frame| Input::NetReceive { frame })
                .collect()
        })
    }

    /// Broadcast that the card with `mac` is here now (a backup that went
    /// live), so the network's switches send the VM's traffic to this port.
    /// (A backup without a network for a VM with a card gives up before
    /// it could go live: see the daemon's `check_net`.)
    pub fn announce(&mut self, mac: [u8; 6]) {
        if let Some(net) = self.net.as_mut() {
            tracing::warn!(mac = %ftvm_net::switch::format_mac(&mac), "announcing the VM's address");
            net.send(&ftvm_net::switch::announcement(mac));
        }
    }

    /// Perform `request` and return its answer.
    pub fn serve(&mut self, request: IoRequest) -> Input {
        let id = request.id();
        let (status, data) = match request {
            IoRequest::BlockRead { offset, len, .. } => match self.disk.as_mut() {
                Some(disk) => match disk.read(offset, len) {
                    Ok(data) => (IoStatus::Ok, data),
                    Err(e) => {
                        tracing::warn!(disk = %disk.path.display(), %e, "disk read failed");
                        (IoStatus::Error, Vec::new())
                    }
                },
                None => (IoStatus::Error, Vec::new()),
            },
            IoRequest::BlockWrite { offset, data, .. } => match self.disk.as_mut() {
                Some(disk) => match disk.write(offset, &data) {
                    Ok(()) => (IoStatus::Ok, Vec::new()),
                    Err(e) => {
                        tracing::warn!(disk = %disk.path.display(), %e, "disk write failed");
                        (IoStatus::Error, Vec::new())
                    }
                },
                None => (IoStatus::Error, Vec::new()),
            },
            IoRequest::BlockFlush { .. } => match self.disk.as_mut().map(|d| d.file.sync_data()) {
                Some(Ok(())) => (IoStatus::Ok, Vec::new()),
                _ => (IoStatus::Error, Vec::new()),
            },
            IoRequest::Entropy { len, .. } => {
                let mut data = vec![0; len as usize];
                match getrandom::fill(&mut data) {
                    Ok(()) => (IoStatus::Ok, data),
                    Err(e) => {
                        tracing::warn!(%e, "no host entropy");
                        (IoStatus::Error, Vec::new())
                    }
                }
            }
            IoRequest::NetTransmit { frame, .. } => match self.net.as_mut() {
                Some(net) => {
                    net.send(&frame);
                    (IoStatus::Ok, Vec::new())
                }
                None => (IoStatus::Error, Vec::new()),
            },
            IoRequest::Unsupported { .. } => (IoStatus::Unsupported, Vec::new()),
        };
        Input::IoDone { id, status, data }
    }
}
