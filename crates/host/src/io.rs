//! The host side of the machine's I/O: what its devices' requests turn
//! into on this host. Disks are raw image files; entropy comes from the
//! host's random source; frames go to the VM's network. Every answer goes
//! back to the machine as an input ([`Input::IoDone`]), which is what the
//! log records.
//!
//! `ftvm run` answers at the instruction boundary where the request was
//! made ([`HostIo::serve`] inline); a VM of a pair performs its disk and
//! entropy requests in a thread of its own ([`IoThread`]), in request
//! order, because a disk write or an `fsync` may take long and the run
//! loop must meanwhile keep answering the channel (acknowledgements,
//! heartbeats), or the peer would think this VM dead. Its frames the loop
//! sends itself (a `HostIo` with only the network): a send never waits,
//! and a hop to the thread cost a wake-up per frame.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

use ftvm_board::{DeviceKind, Input, IoRequest, IoStatus};
use ftvm_net::NetBackend;

use crate::HostError;

/// A raw disk image attached as virtio-blk.
pub struct Disk {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Disk {
    /// Open `path` read-write. It must exist and be a whole number of
    /// 512-byte sectors; nothing is written to it here.
    pub fn open(path: &Path) -> Result<Disk, HostError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| HostError::io(format!("cannot open disk image {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| HostError::io(format!("cannot read the size of {}", path.display()), e))?
            .len();
        if len == 0 || len % 512 != 0 {
            return Err(HostError::Config(format!(
                "disk image {} is {len} bytes, not a whole number of 512-byte sectors",
                path.display()
            )));
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never: a disk has at least one sector.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Write `data` at `offset` (a new backup's disk, filled from a clone).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.write(offset, data)
    }

    /// BLAKE3 of the whole disk, read from the file.
    pub fn digest(&mut self) -> std::io::Result<[u8; 32]> {
        self.file.seek(SeekFrom::Start(0))?;
        let mut hasher = blake3::Hasher::new();
        std::io::copy(&mut (&self.file).take(self.len), &mut hasher)?;
        Ok(*hasher.finalize().as_bytes())
    }

    /// A copy of the disk as it is now at `to` (a clone's new backup gets
    /// it): on file systems that can, the copy shares the blocks.
    fn copy_to(&mut self, to: &Path) -> std::io::Result<()> {
        self.file.flush()?;
        std::fs::copy(&self.path, to).map(|_| ())
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
    pub net: Option<NetCard>,
}

/// A network card: the network its frames go to and come from, and the
/// MTU it tells the guest (the `--net` option's; the network carries
/// frames of any).
pub struct NetCard {
    pub backend: Box<dyn NetBackend>,
    pub mtu: u16,
}

impl HostIo {
    /// The machine's virtio devices, in slot order.
    pub fn devices(&self) -> Vec<DeviceKind> {
        let mut kinds: Vec<DeviceKind> = self.disk.iter().map(Disk::device).collect();
        if let Some(net) = &self.net {
            kinds.push(DeviceKind::Net {
                mac: GUEST_MAC,
                mtu: net.mtu,
            });
        }
        kinds.push(DeviceKind::Entropy);
        kinds
    }

    /// Frames that arrived for the guest.
    pub fn poll_net(&mut self) -> Vec<Input> {
        self.net.as_mut().map_or_else(Vec::new, |net| {
            net.backend
                .poll()
                .into_iter()
                .map(|frame| Input::NetReceive { frame })
                .collect()
        })
    }

    /// Broadcast that the card with `mac` is here now (a backup that went
    /// live), so the network's switches send the VM's traffic to this port.
    /// (A backup without a network for a VM with a card gives up before
    /// it could go live: see the run loop's `check_net`.)
    pub fn announce(&mut self, mac: [u8; 6]) {
        if let Some(net) = self.net.as_mut() {
            tracing::warn!(mac = %ftvm_net::switch::format_mac(&mac), "announcing the VM's address");
            net.backend.send(&ftvm_net::switch::announcement(mac));
        }
    }

    /// Perform `request` and return its answer.
    pub fn serve(&mut self, request: &IoRequest) -> Input {
        let id = request.id();
        let (status, data) = match request {
            IoRequest::BlockRead { offset, len, .. } => match self.disk.as_mut() {
                Some(disk) => match disk.read(*offset, *len) {
                    Ok(data) => (IoStatus::Ok, data),
                    Err(e) => {
                        tracing::warn!(disk = %disk.path.display(), %e, "disk read failed");
                        (IoStatus::Error, Vec::new())
                    }
                },
                None => (IoStatus::Error, Vec::new()),
            },
            IoRequest::BlockWrite { offset, data, .. } => match self.disk.as_mut() {
                Some(disk) => match disk.write(*offset, data) {
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
                let mut data = vec![0; *len as usize];
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
                    net.backend.send(frame);
                    (IoStatus::Ok, Vec::new())
                }
                None => (IoStatus::Error, Vec::new()),
            },
            IoRequest::Unsupported { .. } => (IoStatus::Unsupported, Vec::new()),
        };
        Input::IoDone { id, status, data }
    }
}

/// Work for the I/O thread.
pub enum IoJob {
    /// Perform a request; `answer` it (an input for the machine) or only
    /// perform it (a backup's write to its own disk).
    Request { request: IoRequest, answer: bool },
    /// Copy the disk, as every request queued before left it, to `to`,
    /// and say so on `done` (a clone of a VM with a private disk: the
    /// requests queued after are the ones its new backup replays).
    CopyDisk {
        to: PathBuf,
        done: Sender<Result<PathBuf, String>>,
    },
}

/// The host's I/O in a thread of its own, in request order.
pub struct IoThread {
    jobs: Sender<IoJob>,
}

impl IoThread {
    /// Serve `host`'s devices in a thread; each answer goes to `answers`,
    /// which says whether anyone still listens.
    pub fn spawn(
        mut host: HostIo,
        answers: impl Fn(Input) -> bool + Send + 'static,
    ) -> std::io::Result<IoThread> {
        let (jobs, rx) = std::sync::mpsc::channel::<IoJob>();
        std::thread::Builder::new()
            .name("host-io".into())
            .spawn(move || {
                for job in rx {
                    let (request, answer) = match job {
                        IoJob::Request { request, answer } => (request, answer),
                        IoJob::CopyDisk { to, done } => {
                            let copied = match host.disk.as_mut() {
                                Some(disk) => disk
                                    .copy_to(&to)
                                    .map(|()| to)
                                    .map_err(|e| format!("copying the disk: {e}")),
                                None => Err("this VM has no disk".to_string()),
                            };
                            let _ = done.send(copied);
                            continue;
                        }
                    };
                    let done = host.serve(&request);
                    if answer {
                        if !answers(done) {
                            return;
                        }
                    } else if let Input::IoDone { status, .. } = done {
                        if status != IoStatus::Ok {
                            tracing::warn!(?status, "a write to this VM's own disk failed");
                        }
                    }
                }
            })?;
        Ok(IoThread { jobs })
    }

    /// Queue `job`; false if the thread is gone.
    pub fn send(&self, job: IoJob) -> bool {
        self.jobs.send(job).is_ok()
    }
}
