//! The run loop's side of cloning (ARCHITECTURE.md, "Cloning"): the
//! control socket's requests, the clone's thread and what it reports, the
//! snapshot taken at a quiet boundary, and the clone's connection becoming
//! the logging channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvm_node::{DiskMode, Status};

use super::{Event, Io, Vm};
use crate::HostError;
use crate::channel::Channel;
use crate::clone::{CloneEvent, CloneTarget, CloneThread};
use crate::control::{Reply, Request};
use crate::io::IoJob;

/// A clone of this VM in progress.
pub(super) struct CloneJob {
    pub(super) thread: CloneThread,
    epoch: u64,
    /// The buffer for the snapshot, while the machine waits for a
    /// boundary with no I/O in flight.
    buffer: Option<Vec<u8>>,
    /// The snapshot is sent: from here the node decides, and the job is
    /// over as soon as the VM is no longer cloning.
    pub(super) sent: bool,
}

impl Vm {
    /// A request on the control socket (`balloon` is not a clone's, but
    /// one match keeps every request in view).
    pub(super) fn control(&mut self, request: Request) -> Reply {
        match request {
            Request::HandOver => {
                self.node.hand_over(self.clock.now())?;
                Ok("handing the VM over to the backup".into())
            }
            Request::Balloon { mib } => {
                let set = self
                    .node
                    .set_balloon(mib, self.clock.now())
                    .map_err(|e| e.to_string())?;
                Ok(set.to_string())
            }
            Request::Clone { addr, epoch } => {
                if self.clone.is_some() {
                    return Err("a clone is in progress already".into());
                }
                if *self.node.status() != Status::Live {
                    return Err(format!(
                        "it is {}: only a VM that runs alone can be cloned",
                        self.node.status().word()
                    ));
                }
                if epoch <= self.node.config().epoch {
                    return Err(format!(
                        "epoch {epoch} is not newer than this VM's {}",
                        self.node.config().epoch
                    ));
                }
                let (Some(key), Some(to_loop)) = (self.key, self.to_loop.clone()) else {
                    return Err("this VM has no pair key".into());
                };
                let ram_size = self.node.machine().map_or(0, |m| m.hart().ram().size());
                let target = CloneTarget {
                    addr: addr.clone(),
                    pair: self.pair.clone(),
                    epoch,
                    key,
                    timeout: Duration::from_millis(self.node.config().detector.timeout_ms)
                        .max(Duration::from_secs(5)),
                };
                let thread = crate::clone::spawn(target, ram_size, Arc::clone(&self.stop), {
                    move |event| to_loop.send(Event::Clone(event))
                })
                .map_err(|e| e.to_string())?;
                tracing::info!(%addr, epoch, "cloning this VM");
                self.clone = Some(CloneJob {
                    thread,
                    epoch,
                    buffer: None,
                    sent: false,
                });
                Ok(format!("cloning to {addr}, epoch {epoch}"))
            }
        }
    }

    /// What the clone's thread reports.
    pub(super) fn clone_event(&mut self, event: CloneEvent) -> Result<(), HostError> {
        match event {
            CloneEvent::Ready(buffer) => {
                if let Some(job) = &mut self.clone {
                    job.buffer = Some(buffer);
                }
                self.try_start_clone();
            }
            CloneEvent::Sent {
                channel,
                digest,
                bytes,
                took,
            } => {
                let now = self.clock.now();
                if !self.node.clone_sent(digest, now)? {
                    self.clone = None;
                    return Ok(());
                }
                tracing::info!(
                    bytes,
                    ms = took.as_millis() as u64,
                    "the new backup has the snapshot"
                );
                self.clone_bytes = Some(bytes);
                if let Some(job) = &mut self.clone {
                    job.thread.progress.catching_up();
                    job.sent = true;
                }
                self.install_channel(*channel)?;
            }
            CloneEvent::Failed(why) => {
                tracing::warn!("the clone failed: {why}");
                self.node.clone_failed(&why);
                self.clone = None;
            }
        }
        Ok(())
    }

    /// Capture the machine for a clone whose thread is ready, unless I/O
    /// is in flight (then at a later boundary).
    pub(super) fn try_start_clone(&mut self) {
        let Some(job) = &mut self.clone else {
            return;
        };
        let Some(buffer) = &mut job.buffer else {
            return;
        };
        let paused = Instant::now();
        match self.node.start_clone(job.epoch, buffer, self.clock.now()) {
            Ok(mut begun) => {
                let pause = paused.elapsed();
                self.clone_pause_ms = Some(pause.as_secs_f64() * 1e3);
                tracing::info!(
                    pause_us = pause.as_micros() as u64,
                    "snapshot taken for the clone"
                );
                job.buffer = None;
                // A private disk goes with the snapshot, as it is now: the
                // I/O thread copies it before any request made after the
                // snapshot (none is in flight).
                let mut disk = None;
                if let (DiskMode::Private, Some((path, len)), Io::Thread { thread: io, .. }) =
                    (self.node.config().disk, &self.disk, &self.io)
                {
                    let (done, copied) = std::sync::mpsc::channel();
                    let mut to = path.clone().into_os_string();
                    to.push(format!(".clone-{}", std::process::id()));
                    if io.send(IoJob::CopyDisk {
                        to: to.into(),
                        done,
                    }) {
                        begun.start.disk_size = Some(*len);
                        disk = Some(copied);
                    }
                }
                if !job.thread.send(begun, disk) {
                    self.node.clone_failed("the clone's thread is gone");
                    self.clone = None;
                }
            }
            Err(refused) if refused.is_transient() => {}
            Err(refused) => {
                tracing::warn!("cannot clone: {refused}");
                self.clone = None;
            }
        }
    }

    /// A clone's connection becomes the logging channel.
    pub(super) fn install_channel(&mut self, mut channel: Channel) -> Result<(), HostError> {
        if let Some(old) = &mut self.channel {
            old.close();
        }
        let timeout = Duration::from_millis(self.node.config().detector.timeout_ms);
        channel.watch(self.poll.registry(), super::CHANNEL, timeout)?;
        self.channel = Some(channel);
        self.channel_closed = None;
        Ok(())
    }
}
