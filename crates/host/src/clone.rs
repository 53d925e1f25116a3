//! Cloning on the host (ARCHITECTURE.md, "Cloning"): the thread that
//! connects to a new backup and streams a running VM's snapshot to it
//! while the guest runs on, and the new backup's side that takes the
//! stream before its run loop starts.
//!
//! The sender's thread first allocates and touches a buffer the size of
//! guest RAM and connects (the guest runs meanwhile), then hands the
//! buffer to the run loop, which captures the machine into it: that copy
//! is the guest's whole pause. The thread then streams the snapshot
//! (zero chunks skipped, the rest LZ4-compressed, see `ftvm_ft::clone`)
//! and hands the connection back to the loop with the snapshot's digest,
//! which starts the log.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use ftvm_board::Digest;
use ftvm_ft::channel::Message;
use ftvm_ft::clone::{CloneReceiver, CloneSender, Cloned, Received};
use ftvm_node::CloneBegun;

use crate::HostError;
use crate::channel::{Channel, Credentials};
use crate::io::Disk;
use crate::status::{CloneProgress, CloneStage};

/// What the clone's thread reports to the run loop.
pub enum CloneEvent {
    /// Connected and authenticated; here is a buffer for the snapshot.
    Ready(Vec<u8>),
    /// The snapshot has been sent: the channel, for the log, and the
    /// snapshot's digest.
    Sent {
        channel: Box<Channel>,
        digest: Digest,
        bytes: u64,
        took: Duration,
    },
    Failed(String),
}

/// Where a clone is, for the status line (shared with its thread).
#[derive(Default)]
pub struct Progress {
    stage: AtomicU8,
    done: AtomicU64,
    total: AtomicU64,
}

impl Progress {
    fn set_stage(&self, stage: CloneStage) {
        let n = CloneStage::ALL
            .iter()
            .position(|s| *s == stage)
            .unwrap_or(0);
        self.stage.store(n as u8, Ordering::Relaxed);
    }

    pub fn get(&self) -> CloneProgress {
        let stage = CloneStage::ALL
            .get(self.stage.load(Ordering::Relaxed) as usize)
            .copied()
            .unwrap_or(CloneStage::Connecting);
        CloneProgress {
            stage,
            done_mib: self.done.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
            total_mib: self.total.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
        }
    }

    pub fn catching_up(&self) {
        self.set_stage(CloneStage::CatchingUp);
    }
}

/// Where a private disk's copy at the snapshot will be, once made.
pub type DiskCopy = Receiver<Result<PathBuf, String>>;

/// The sender's thread, as the loop holds it.
pub struct CloneThread {
    snapshot: Sender<(CloneBegun, Option<DiskCopy>)>,
    pub progress: Arc<Progress>,
}

impl CloneThread {
    /// Hand the captured machine (and the disk's copy, with a private
    /// disk) to the thread; `false` if it is gone.
    pub fn send(&self, begun: CloneBegun, disk: Option<DiskCopy>) -> bool {
        self.snapshot.send((begun, disk)).is_ok()
    }
}

/// Who the clone connects to, and as what.
pub struct CloneTarget {
    pub addr: String,
    pub pair: String,
    pub epoch: u64,
    pub key: [u8; 32],
    /// How long connecting may take, and how long a write may wait.
    pub timeout: Duration,
}

/// Start a clone's thread for a machine with `ram_size` bytes of RAM.
pub fn spawn(
    target: CloneTarget,
    ram_size: u64,
    stop: Arc<AtomicBool>,
    sink: impl Fn(CloneEvent) -> bool + Send + 'static,
) -> Result<CloneThread, HostError> {
    let (tx, rx) = channel();
    let progress = Arc::new(Progress::default());
    progress.total.store(ram_size, Ordering::Relaxed);
    let shared = Arc::clone(&progress);
    std::thread::Builder::new()
        .name("clone-sender".into())
        .spawn(move || {
            let event = match send_clone(&target, ram_size, &stop, &rx, &shared, &sink) {
                Ok(Some(sent)) => sent,
                Ok(None) => return,
                Err(e) => CloneEvent::Failed(e.to_string()),
            };
            sink(event);
        })
        .map_err(|e| HostError::io("starting the clone's thread", e))?;
    Ok(CloneThread {
        snapshot: tx,
        progress,
    })
}

fn send_clone(
    target: &CloneTarget,
    ram_size: u64,
    stop: &AtomicBool,
    snapshots: &Receiver<(CloneBegun, Option<DiskCopy>)>,
    progress: &Progress,
    sink: &impl Fn(CloneEvent) -> bool,
) -> Result<Option<CloneEvent>, HostError> {
    // Touched now, so that the copy in the pause faults in no page.
    let buffer = vec![1u8; usize::try_from(ram_size).unwrap_or(usize::MAX)];
    let credentials = Credentials {
        pair: &target.pair,
        epoch: target.epoch,
        key: target.key,
    };
    let mut channel = Channel::connect(&target.addr, target.timeout, stop, &credentials)
        .map_err(|e| e.context(format!("connecting to the new backup at {}", target.addr)))?;
    channel.set_write_timeout(target.timeout)?;
    if !sink(CloneEvent::Ready(buffer)) {
        return Ok(None);
    }
    // The loop gives up the clone by dropping its end.
    let Ok((begun, disk)) = snapshots.recv() else {
        return Ok(None);
    };
    progress.set_stage(CloneStage::Sending);
    if let Some(size) = begun.start.disk_size {
        progress.total.fetch_add(size, Ordering::Relaxed);
    }
    let started = Instant::now();
    let mut sender = CloneSender::new(begun.snapshot, begun.start);
    let send = |channel: &mut Channel, message: &Message| {
        if stop.load(Ordering::Relaxed) {
            return Err(HostError::Config("asked to stop".into()));
        }
        channel
            .send(message)
            .map_err(|(why, _)| HostError::Config(format!("sending the snapshot: {why}")))
    };
    while let Some(message) = sender.next_message() {
        send(&mut channel, &message)?;
        progress.done.store(sender.progress().0, Ordering::Relaxed);
    }
    if let Some(copied) = disk {
        let path = copied
            .recv()
            .map_err(|_| HostError::Config("the I/O thread is gone".into()))?
            .map_err(HostError::Config)?;
        let sent = send_disk(&mut channel, &mut sender, &path, progress, &send);
        let _ = std::fs::remove_file(&path);
        let disk_digest = sent?;
        send(&mut channel, &sender.end_message(Some(disk_digest)))?;
    }
    let digest = sender.digest();
    tracing::info!(
        bytes = sender.bytes_sent(),
        chunks = sender.chunks_sent(),
        ms = started.elapsed().as_millis() as u64,
        "the snapshot is sent"
    );
    Ok(Some(CloneEvent::Sent {
        channel: Box::new(channel),
        digest,
        bytes: sender.bytes_sent(),
        took: started.elapsed(),
    }))
}

/// What a new backup's channel brought first.
pub enum First {
    /// A clone's snapshot, whole and checked.
    Clone(Box<Cloned>),
    /// The first message of a log from a machine's start.
    Message(Message),
}

/// Send the disk copy at `path` in chunks; its digest.
fn send_disk(
    channel: &mut Channel,
    sender: &mut CloneSender,
    path: &std::path::Path,
    progress: &Progress,
    send: &impl Fn(&mut Channel, &Message) -> Result<(), HostError>,
) -> Result<[u8; 32], HostError> {
    use std::io::Read;
    let io = |e| HostError::io(format!("reading the disk's copy {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0u8; ftvm_ft::clone::CHUNK];
    let mut offset = 0u64;
    loop {
        let mut filled = 0;
        while filled < chunk.len() {
            let n = file.read(&mut chunk[filled..]).map_err(io)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let piece = &chunk[..filled];
        hasher.update(piece);
        if let Some(message) = sender.disk_message(offset, piece) {
            send(channel, &message)?;
        }
        offset += filled as u64;
        progress.done.fetch_add(filled as u64, Ordering::Relaxed);
    }
    Ok(*hasher.finalize().as_bytes())
}

/// A new backup's first messages: a whole clone (reporting progress as
/// it comes, and writing a private disk that comes with it to `disk`), or
/// the first message of a log from the start. Each read may wait
/// `timeout`.
pub fn receive(
    channel: &mut Channel,
    timeout: Duration,
    mut disk: Option<&mut Disk>,
    mut progress: impl FnMut(CloneProgress),
) -> Result<First, HostError> {
    let first = channel.recv_blocking(timeout)?;
    if !matches!(first, Message::CloneStart(_)) {
        return Ok(First::Message(first));
    }
    let mut receiver = CloneReceiver::default();
    let mut message = first;
    let mut said = Instant::now();
    let bad = |e: String| HostError::Config(format!("the clone's snapshot: {e}"));
    loop {
        match receiver.take(message).map_err(|e| bad(e.to_string()))? {
            Received::More => {}
            Received::Disk { offset, bytes } => {
                let Some(disk) = disk.as_deref_mut() else {
                    return Err(bad("it sends a disk, and this VM has none (--disk)".into()));
                };
                disk.write_at(offset, &bytes)
                    .map_err(|e| HostError::io("writing the clone's disk", e))?;
            }
            Received::Done(cloned) => {
                if let Some(expected) = cloned.disk_digest {
                    let Some(disk) = disk.as_deref_mut() else {
                        return Err(bad("it sends a disk, and this VM has none (--disk)".into()));
                    };
                    if cloned.start.disk_size != Some(disk.len()) {
                        return Err(bad(format!(
                            "its disk is {} bytes, this VM's {} is {}",
                            cloned.start.disk_size.unwrap_or(0),
                            disk.path().display(),
                            disk.len()
                        )));
                    }
                    let found = disk
                        .digest()
                        .map_err(|e| HostError::io("reading the clone's disk", e))?;
                    if found != expected {
                        return Err(bad("the disk written differs from the disk sent".into()));
                    }
                }
                return Ok(First::Clone(cloned));
            }
        }
        if said.elapsed() >= Duration::from_millis(200) {
            said = Instant::now();
            let (done, total) = receiver.progress();
            progress(CloneProgress {
                stage: CloneStage::Sending,
                done_mib: done as f64 / (1 << 20) as f64,
                total_mib: total as f64 / (1 << 20) as f64,
            });
        }
        message = channel.recv_blocking(timeout)?;
    }
}
