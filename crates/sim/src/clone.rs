//! Restoring redundancy (continuous protection): after a failover, some
//! virtual time later, the VM that runs alone is cloned into a new backup
//! on a new host, which takes the crashed (or halted) host's slot, as the
//! daemon does it (`ftvm_host::clone`): a new connection for the next
//! epoch, the snapshot streamed over it at the link's pace through the
//! real [`CloneSender`] and [`CloneReceiver`], the new backup built with
//! `Node::backup_from_clone` once the snapshot is whole, then the log
//! from the snapshot's icount on the same connection. The restore is
//! complete once the new backup is told it protects the VM
//! ([`Message::Protected`]); the pair is then as healthy as the first.
//!
//! Each pairing's log is kept with the state it starts from (the machine
//! as built, or the clone's snapshot), so that every one is replayed at
//! the end. A restore may be struck by a fault of its own (a crash of the
//! survivor or of the new backup while the snapshot is on its way, while
//! the new backup catches up, or after it protects the VM), and the
//! middleboxes of two broken variants sit here.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};

use ftvm_board::{Digest, ImageMap, Snapshot};
use ftvm_ft::channel::Message;
use ftvm_ft::clone::{CloneReceiver, CloneSender};
use ftvm_node::CloneRefused;
use ftvm_replay::{LogDecoder, LogWriter};

use crate::channel::Channel;
use crate::host::{Host, Status, TIMEOUT_MS};
use crate::invariants::Invariant;
use crate::plan::{CloneFault, CrashMode, Fault, Restore};
use crate::sim::{Event, Sim, host_name};
use crate::{Broken, MS, SimError};

/// A restore must be complete (the new backup protects the VM) this long
/// after it began, unless a fault struck meanwhile.
pub(crate) const RESTORE_BOUND_NS: u64 = 300 * MS;

/// What a seed's restores went through, for the outcome (each at most
/// once per seed).
pub mod case {
    pub const RESTORED: &str = "a restore completed";
    pub const RESTORED_TWICE: &str = "two restores completed";
    pub const SURVIVOR_IN_TRANSFER: &str = "the survivor crashed while the snapshot was on its way";
    pub const CLONE_IN_TRANSFER: &str =
        "the new backup's host crashed while the snapshot was on its way";
    pub const SURVIVOR_IN_CATCH_UP: &str = "the survivor crashed while its clone caught up";
    pub const CLONE_IN_CATCH_UP: &str = "the new backup crashed while it caught up";
    pub const PRIMARY_AFTER: &str = "the new pair's primary crashed after the restore";
    pub const BACKUP_AFTER: &str = "the new pair's backup crashed after the restore";
    pub const NOT_CAUGHT_UP: &str = "a clone halted, not caught up";
    pub const CLONE_TOOK_OVER: &str = "a clone took over";
    pub const GIVEN_UP: &str = "a primary gave its clone up";
    pub const HANDED_OVER: &str =
        "a hand-over completed: the backup continued where the primary stopped";
    pub const HAND_OVER_PRIMARY_CRASHED: &str = "the primary crashed during its hand-over";
    pub const HAND_OVER_BACKUP_CRASHED: &str = "the backup crashed during a hand-over";
    pub const HAND_OVER_RAN_ON: &str = "a primary ran on alone after its hand-over failed";
    pub const BACKUP_MOVED: &str = "a backup moved to another host";
    pub const BESIDE_SURVIVOR: &str =
        "a new backup went on its survivor's host (no other host had room)";
    pub const HOST_TOOK_BOTH: &str = "a host crash took both VMs of the pair";
    pub const NO_ROOM: &str = "no live host had room for a new backup";
}

/// One pairing's log, as its primary sent it.
pub(crate) struct PairingLog {
    pub epoch: u64,
    /// The primary's slot and incarnation: the `Entries` it sends are
    /// this log.
    pub primary: (usize, u64),
    /// What the log starts from: the machine as built (the first
    /// pairing), or a clone's snapshot (with its digest, as sent).
    pub snapshot: Option<(Snapshot, Digest)>,
    pub log: Vec<u8>,
    /// Where the forged acknowledgements of [`Broken::AckOnSend`] are.
    sent: LogDecoder,
}

/// A clone in progress, from the snapshot until the new backup protects
/// the VM, or the clone is given up.
pub(crate) struct CloneJob {
    /// Tags its events.
    serial: u64,
    /// When the restore began (it may have waited for I/O in flight).
    began: u64,
    epoch: u64,
    /// The survivor's slot and incarnation, and the new backup's.
    survivor: (usize, u64),
    backup: (usize, u64),
    survivor_id: usize,
    backup_id: usize,
    fault: Option<(CloneFault, CrashMode)>,
    /// The sender's messages not yet written (none once the connection
    /// is handed to the log, or the sender died), and the snapshot's
    /// digest.
    stream: Option<VecDeque<Message>>,
    digest: Digest,
    /// The new backup's host takes the snapshot (none once its VM is
    /// built, or it gave up).
    receiver: Option<CloneReceiver>,
    last_heard: u64,
    speed: u64,
}

/// [`Broken::CloneDropsLogTail`]'s middlebox on a clone's connection.
pub(crate) struct TailCut {
    primary: usize,
    decoder: LogDecoder,
    writer: Option<LogWriter<Vec<u8>>>,
    /// The log's first messages (the entries logged while the snapshot
    /// was on its way) are being cut out.
    cutting: bool,
    dropped: u64,
}

pub(crate) struct Restoring {
    /// The plan's restores not yet begun.
    plan: VecDeque<Restore>,
    ps_per_byte: u64,
    /// An [`Event::Restore`] is coming.
    scheduled: bool,
    /// The restore under way must be complete by then.
    pub deadline: Option<u64>,
    /// When the restore under way began (its first try), and the longest
    /// a restore took from there to the new backup protecting the VM.
    began: Option<u64>,
    pub longest_ns: u64,
    job: Option<CloneJob>,
    serial: u64,
    /// The newest pairing's epoch.
    pub epoch: u64,
    pub logs: Vec<PairingLog>,
    /// The pair of the last restore that completed: (primary, backup).
    restored: Option<(usize, usize)>,
    /// The hosts that started from a clone.
    pub from_clone: BTreeSet<usize>,
    pub snapshots: u64,
    pub completed: u64,
    pub cases: BTreeSet<&'static str>,
    tail: Option<TailCut>,
}

impl Restoring {
    pub fn new(plan: Vec<Restore>, ps_per_byte: u64) -> Restoring {
        Restoring {
            plan: plan.into(),
            ps_per_byte,
            scheduled: false,
            deadline: None,
            began: None,
            longest_ns: 0,
            job: None,
            serial: 0,
            epoch: 1,
            logs: vec![PairingLog {
                epoch: 1,
                primary: (0, 0),
                snapshot: None,
                log: Vec::new(),
                sent: LogDecoder::default(),
            }],
            restored: None,
            from_clone: BTreeSet::new(),
            snapshots: 0,
            completed: 0,
            cases: BTreeSet::new(),
            tail: None,
        }
    }

    /// A clone is under way (from the snapshot until the new backup
    /// protects the VM), or a restore is about to begin.
    pub fn busy(&self) -> bool {
        self.job.is_some() || self.scheduled
    }

    /// A restore to begin before the plan's others (a migration's).
    pub fn push_front(&mut self, restore: Restore) {
        self.plan.push_front(restore);
    }

    /// The clone's link, when the plan has no restores of its own.
    pub fn set_link(&mut self, ps_per_byte: u64) {
        if self.ps_per_byte == 0 {
            self.ps_per_byte = ps_per_byte;
        }
    }
}

/// The bytes a stream's message takes on the link, about.
fn wire_len(message: &Message) -> u64 {
    64 + match message {
        Message::CloneStart(start) => start.state.len() as u64,
        Message::Pages { data, .. } => data.len() as u64,
        _ => 0,
    }
}

impl Sim {
    /// The slot of the one VM that runs alone, if the other slot is empty
    /// or done: a restore can clone it.
    fn alone(&self) -> Option<usize> {
        let live: Vec<usize> = (0..2)
            .filter(|&i| {
                self.hosts.slot[i]
                    .as_ref()
                    .is_some_and(|h| *h.status() == Status::Live)
            })
            .collect();
        let &[s] = live.as_slice() else {
            return None;
        };
        let other = self.hosts.slot[1 - s].as_ref();
        other.is_none_or(|h| h.status().is_done()).then_some(s)
    }

    /// After every event: a clone given up is forgotten, and a VM that
    /// runs alone gets a restore scheduled.
    pub(crate) fn restore_upkeep(&mut self) -> Result<(), SimError> {
        if let Some(job) = &self.restoring.job {
            let (s, inc) = job.survivor;
            let survivor = self.hosts.slot[s]
                .as_ref()
                .filter(|_| self.hosts.incarnation[s] == inc);
            let over = match survivor {
                // The new backup's host may still take the snapshot in
                // flight (and then find no primary).
                None => job.receiver.is_none(),
                Some(h) => *h.status() == Status::Live || h.status().is_done(),
            };
            if over {
                let streaming = survivor.is_some() && job.stream.is_some();
                if survivor.is_some() {
                    self.restoring.cases.insert(case::GIVEN_UP);
                }
                self.restoring.job = None;
                self.note(|| "the clone is given up".into());
                if streaming {
                    self.drop_connection(s, "the clone was given up while its snapshot was sent");
                }
            }
        }
        if self.restoring.scheduled
            || self.restoring.job.is_some()
            || self.restoring.plan.is_empty()
            || !self.options.faults
        {
            return Ok(());
        }
        if self.alone().is_some() {
            let delay = self.restoring.plan.front().map_or(0, |r| r.delay_ns);
            self.restoring.scheduled = true;
            self.schedule(self.now + delay, Event::Restore);
        }
        Ok(())
    }

    /// Time to restore: clone the VM that runs alone into a new backup in
    /// the other slot.
    pub(crate) fn restore(&mut self) -> Result<(), SimError> {
        self.restoring.scheduled = false;
        let Some(s) = self.alone() else {
            self.restoring.began = None;
            return Ok(());
        };
        let d = 1 - s;
        // The new backup's host, by the agents' rule (away from the host a
        // migration leaves when it can); none with room: later.
        let id = self.hosts.next_id;
        let leaving = self.migrating.leaving;
        let Some(server) = self.choose_host(id, Some(s), leaving)? else {
            self.restoring.scheduled = true;
            self.schedule(self.now + 200 * MS, Event::Restore);
            return Ok(());
        };
        let deadline = self.now + RESTORE_BOUND_NS;
        self.restoring.deadline.get_or_insert(deadline);
        self.restoring.began.get_or_insert(self.now);
        let epoch = self.restoring.epoch + 1;
        let time = self.time();
        let Some(h) = &mut self.hosts.slot[s] else {
            return Ok(());
        };
        let begun = match h.start_clone(epoch, time) {
            Ok(begun) => begun,
            // I/O in flight: at a later boundary.
            Err(refused) if refused.is_transient() => {
                self.restoring.scheduled = true;
                self.schedule(self.now + MS, Event::Restore);
                return Ok(());
            }
            Err(refused) => {
                let name = self.name(s);
                self.note(|| format!("{name} cannot be cloned: {refused}"));
                if refused != CloneRefused::Ending {
                    return Err(self.violation(
                        Invariant::Error,
                        format!("{name} runs alone but cannot be cloned: {refused}"),
                    ));
                }
                self.restoring.plan.pop_front();
                self.restoring.deadline = None;
                self.restoring.began = None;
                return Ok(());
            }
        };
        let restore = self.restoring.plan.pop_front();
        let began = self.restoring.began.take().unwrap_or(self.now);
        self.restoring.epoch = epoch;
        self.restoring.snapshots += 1;
        self.restoring.serial += 1;
        // The new VM, in the slot of the one that crashed or halted.
        self.hosts.next_id += 1;
        self.migrating.leaving = None;
        self.hosts.slot[d] = None;
        self.hosts.incarnation[d] += 1;
        self.hosts.id[d] = id;
        self.placed(id, server, Some(s));
        self.world.announced[d] = false;
        let speed = self.rng.range(4, 14);
        // Its connection, for the new epoch; what was in flight on the
        // old one is lost.
        let mut channel = Channel::connect(
            &mut self.rng,
            self.channel.key,
            epoch,
            s,
            self.channel.next_generations(),
        )
        .map_err(|what| self.violation(Invariant::Error, format!("connecting a clone: {what}")))?;
        channel.set_noise(self.channel.noise());
        self.channel = channel;
        // The stream, as the sender's thread writes it.
        let mut sender = CloneSender::new(begun.snapshot, begun.start);
        let mut stream = VecDeque::new();
        let mut digest = Digest([0; 32]);
        while let Some(message) = sender.next_message() {
            if let Message::CloneEnd { digest: d, .. } = &message {
                digest = Digest(*d);
            }
            stream.push_back(message);
        }
        let bytes: u64 = stream.iter().map(wire_len).sum();
        let transfer_ns = bytes * self.restoring.ps_per_byte / 1000;
        let snapshot = sender.into_snapshot();
        let icount = snapshot.icount();
        self.restoring.logs.push(PairingLog {
            epoch,
            primary: (s, self.hosts.incarnation[s]),
            snapshot: Some((snapshot, digest)),
            log: Vec::new(),
            sent: LogDecoder::default(),
        });
        let (survivor, clone) = (self.name(s), host_name(id));
        self.note(|| {
            format!(
                "{survivor} is cloned into {clone} for epoch {epoch}: snapshot at icount {icount}, \
                 {bytes} bytes, {:.3} ms on the link",
                transfer_ns as f64 / 1e6
            )
        });
        let serial = self.restoring.serial;
        let survivor_id = self.hosts.id[s];
        let fault = restore.and_then(|r| r.fault);
        self.restoring.job = Some(CloneJob {
            serial,
            began,
            epoch,
            survivor: (s, self.hosts.incarnation[s]),
            backup: (d, self.hosts.incarnation[d]),
            survivor_id,
            backup_id: id,
            fault,
            stream: Some(stream),
            digest,
            receiver: Some(CloneReceiver::default()),
            last_heard: self.now,
            speed,
        });
        self.restoring.tail = None;
        if let Some((CloneFault::InTransfer { survivor, at }, mode)) = fault {
            let victim = if survivor { survivor_id } else { id };
            let when = self.now + transfer_ns * at / 1000;
            self.schedule(when, Event::Fault(Fault::CrashHost { id: victim, mode }));
        }
        self.schedule(self.now, Event::CloneStream { clone: serial });
        self.schedule(
            self.now + TIMEOUT_MS * MS,
            Event::CloneWait { clone: serial },
        );
        Ok(())
    }

    /// The sender's thread writes the next message of the stream; after
    /// the last, the survivor's log flows on the same connection.
    pub(crate) fn clone_stream(&mut self, serial: u64) -> Result<(), SimError> {
        let Some(job) = self.restoring.job.as_mut().filter(|j| j.serial == serial) else {
            return Ok(());
        };
        let (s, _) = job.survivor;
        let Some(stream) = &mut job.stream else {
            return Ok(());
        };
        if let Some(message) = stream.pop_front() {
            let done = self.now + wire_len(&message) * self.restoring.ps_per_byte / 1000;
            self.send_at(s, &message, done)?;
            self.schedule(done, Event::CloneStream { clone: serial });
            return Ok(());
        }
        job.stream = None;
        let digest = job.digest;
        let time = self.time();
        let Some(h) = &mut self.hosts.slot[s] else {
            return Ok(());
        };
        match h.clone_sent(digest, time) {
            Ok(true) => {}
            Ok(false) => {
                self.drop_connection(s, "the clone was given up");
                return Ok(());
            }
            Err(e) => {
                let name = self.name(s);
                return Err(self.violation(Invariant::Error, format!("{name}: clone_sent: {e}")));
            }
        }
        let name = self.name(s);
        self.note(|| format!("{name} has sent the snapshot: the log flows"));
        if self.options.broken == Some(Broken::CloneDropsLogTail) {
            self.restoring.tail = Some(TailCut {
                primary: s,
                decoder: LogDecoder::default(),
                writer: None,
                cutting: true,
                dropped: 0,
            });
        }
        self.effects(s)?;
        if let Some(tail) = &mut self.restoring.tail {
            tail.cutting = false;
        }
        Ok(())
    }

    /// The new backup's host gives up waiting for a snapshot that stopped
    /// coming (as the daemon's read timeout does).
    pub(crate) fn clone_wait(&mut self, serial: u64) {
        let Some(job) = self.restoring.job.as_mut().filter(|j| j.serial == serial) else {
            return;
        };
        if job.receiver.is_none() {
            return;
        }
        let at = job.last_heard + TIMEOUT_MS * MS;
        if self.now < at {
            self.schedule(at, Event::CloneWait { clone: serial });
            return;
        }
        job.receiver = None;
        let (d, _) = job.backup;
        self.drop_connection(d, "the new backup's host gave up waiting for the snapshot");
    }

    /// Slot `i` holds a new backup's host that takes a snapshot.
    pub(crate) fn clone_receiving(&self, i: usize) -> bool {
        self.restoring
            .job
            .as_ref()
            .is_some_and(|j| j.receiver.is_some() && j.backup == (i, self.hosts.incarnation[i]))
    }

    /// A message of the stream reaches the new backup's host; with the
    /// last, its VM is built from the snapshot.
    pub(crate) fn clone_receive(&mut self, to: usize, message: Message) -> Result<(), SimError> {
        let now = self.now;
        let Some(job) = self.restoring.job.as_mut() else {
            return Ok(());
        };
        let Some(receiver) = &mut job.receiver else {
            return Ok(());
        };
        job.last_heard = now;
        let cloned = match receiver.receive(message) {
            Ok(None) => return Ok(()),
            Ok(Some(cloned)) => cloned,
            Err(e) => {
                let name = self.name(to);
                return Err(self.violation(
                    Invariant::Error,
                    format!("{name} refuses an authenticated clone stream: {e}"),
                ));
            }
        };
        job.receiver = None;
        let (epoch, speed, id) = (job.epoch, job.speed, job.backup_id);
        if let Some((CloneFault::InCatchUp { survivor, after_ns }, mode)) = job.fault {
            let victim = if survivor { job.survivor_id } else { id };
            self.schedule(
                now + after_ns,
                Event::Fault(Fault::CrashHost { id: victim, mode }),
            );
        }
        let mut config = self.node_config();
        config.epoch = epoch;
        let time = self.time();
        let images = ImageMap::of([&self.guest.image]);
        let mut host = Host::from_clone(config, images, cloned, time, speed).map_err(|e| {
            self.violation(
                Invariant::Error,
                format!("{}: backup_from_clone: {e}", host_name(id)),
            )
        })?;
        if self.options.broken == Some(Broken::CloneJoinsEarly) {
            host.receive(&Message::Protected { through: 0 }, time);
        }
        self.hosts.slot[to] = Some(host);
        self.restoring.from_clone.insert(id);
        self.note(|| {
            format!(
                "{} restores the snapshot: a backup of epoch {epoch}",
                host_name(id)
            )
        });
        Ok(())
    }

    /// The connection's close reaches host `i` (or `i` closed it): a new
    /// backup's host that waits for a snapshot gives up; a survivor whose
    /// snapshot is still being written learns that its sender failed.
    pub(crate) fn clone_connection_closed(&mut self, i: usize) {
        let Some(job) = &mut self.restoring.job else {
            return;
        };
        if job.backup == (i, self.hosts.incarnation[i]) {
            job.receiver = None;
        }
        if job.survivor == (i, self.hosts.incarnation[i]) && job.stream.is_some() {
            job.stream = None;
            let now = self.now;
            if let Some(h) = &mut self.hosts.slot[i] {
                h.clone_failed("the connection to the new backup failed", now);
            }
        }
    }

    /// The host in slot `i` crashed: a sender or a receiver dies with it.
    pub(crate) fn clone_host_gone(&mut self, i: usize) {
        let Some(job) = &mut self.restoring.job else {
            return;
        };
        if job.survivor.0 == i {
            job.stream = None;
        }
        if job.backup.0 == i {
            job.receiver = None;
        }
    }

    /// Note what a crash of the host in slot `i` interrupts.
    pub(crate) fn crash_case(&mut self, i: usize) {
        let here = (i, self.hosts.incarnation[i]);
        let id = self.hosts.id[i];
        let case = match (&self.restoring.job, self.restoring.restored) {
            (Some(job), _) if job.survivor == here => {
                if job.stream.is_some() || job.receiver.is_some() {
                    case::SURVIVOR_IN_TRANSFER
                } else {
                    case::SURVIVOR_IN_CATCH_UP
                }
            }
            (Some(job), _) if job.backup == here => {
                if job.receiver.is_some() || self.hosts.slot[i].is_none() {
                    case::CLONE_IN_TRANSFER
                } else {
                    case::CLONE_IN_CATCH_UP
                }
            }
            (_, Some((p, _))) if p == id => case::PRIMARY_AFTER,
            (_, Some((_, b))) if b == id => case::BACKUP_AFTER,
            _ => return,
        };
        self.restoring.cases.insert(case);
    }

    /// The new backup is told it protects the VM: the restore is
    /// complete, and the pair as healthy as the first.
    fn restore_completed(&mut self) {
        let Some(job) = self.restoring.job.take() else {
            return;
        };
        self.restoring.completed += 1;
        self.restoring.longest_ns = self.restoring.longest_ns.max(self.now - job.began);
        self.restoring.cases.insert(case::RESTORED);
        if self.restoring.completed >= 2 {
            self.restoring.cases.insert(case::RESTORED_TWICE);
        }
        self.restoring.restored = Some((job.survivor_id, job.backup_id));
        self.restoring.deadline = None;
        self.restored();
        self.migration_restored();
        let (p, b) = (host_name(job.survivor_id), host_name(job.backup_id));
        self.note(|| format!("{b} protects the VM: {p} and {b} are a pair"));
        if let Some((CloneFault::AfterRestore { survivor, after_ns }, mode)) = job.fault {
            let victim = if survivor {
                job.survivor_id
            } else {
                job.backup_id
            };
            self.schedule(
                self.now + after_ns,
                Event::Fault(Fault::CrashHost { id: victim, mode }),
            );
        }
    }

    /// What host `from` sends, as it goes on the wire: the primary's log
    /// is kept, and the broken middleboxes act; `None` if nothing goes.
    pub(crate) fn sent_by<'a>(
        &mut self,
        from: usize,
        message: &'a Message,
    ) -> Option<Cow<'a, Message>> {
        let Message::Entries { log } = message else {
            return Some(Cow::Borrowed(message));
        };
        let here = (from, self.hosts.incarnation[from]);
        if self.options.trace {
            let (name, len) = (self.name(from), log.len());
            let icount = self.hosts.slot[from]
                .as_ref()
                .and_then(|h| h.machine())
                .map_or(0, |m| m.icount());
            self.note(|| format!("{name} sends {len} bytes of log (at icount {icount})"));
        }
        if let Some(pairing) = self.restoring.logs.last_mut().filter(|p| p.primary == here) {
            pairing.log.extend_from_slice(log);
            if self.options.broken == Some(Broken::AckOnSend) {
                pairing.sent.push(log);
                while let Ok(Some(_)) = pairing.sent.next() {}
                let through = pairing.sent.next_seq();
                let time = self.time();
                if let Some(h) = &mut self.hosts.slot[from] {
                    h.receive(&Message::Ack { through, icount: 0 }, time);
                }
            }
        }
        let Some(tail) = self.restoring.tail.as_mut().filter(|t| t.primary == from) else {
            return Some(Cow::Borrowed(message));
        };
        tail.decoder.push(log);
        if tail.writer.is_none() {
            if let Ok(Some(header)) = tail.decoder.header() {
                tail.writer = LogWriter::new(Vec::new(), &header.clone()).ok();
            }
        }
        let writer = tail.writer.as_mut()?;
        while let Ok(Some(entry)) = tail.decoder.next() {
            if tail.cutting {
                tail.dropped += 1;
            } else if writer.push(entry.icount, &entry.event).is_err() {
                break;
            }
        }
        writer.flush().ok()?;
        let log = std::mem::take(writer.get_mut());
        (!log.is_empty()).then_some(Cow::Owned(Message::Entries { log }))
    }

    /// What reaches host `to`'s VM: the restore is complete when a new
    /// backup is told it protects the VM; a broken middlebox may change
    /// it.
    pub(crate) fn received_by(&mut self, to: usize, message: Message) -> Option<Message> {
        match message {
            Message::Protected { .. }
                if self
                    .restoring
                    .job
                    .as_ref()
                    .is_some_and(|j| j.backup == (to, self.hosts.incarnation[to])) =>
            {
                self.restore_completed();
                Some(message)
            }
            Message::Ack { through, icount } => {
                let dropped = self
                    .restoring
                    .tail
                    .as_ref()
                    .filter(|t| t.primary == to)
                    .map_or(0, |t| t.dropped);
                Some(Message::Ack {
                    through: through + dropped,
                    icount,
                })
            }
            message => Some(message),
        }
    }
}
