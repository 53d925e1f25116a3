//! Planned migrations (`ftvm migrate`), as the daemon does them
//! (`crates/cli/src/restore.rs`, `migrate_primary` and `migrate_backup`),
//! at times the seed draws, while the pair is whole:
//!
//! - **the primary**: a planned hand-over. [`Node::hand_over`] stops the
//!   primary; once the backup holds every entry and every output is
//!   released it sends `Message::HandOver`; the backup drains, wins the
//!   test-and-set at once, goes live and closes the channel; the old
//!   primary, asking in turn, loses and halts `handed-over`. Then a clone
//!   restores redundancy (the next restore of `clone`, soon, placed away
//!   from the host the guest left when another host has room). A crash
//!   of either VM may strike in the middle of it (the seed's
//!   [`HandOverFault`]): until the backup has won the test-and-set that is
//!   the hand-over's failure, not a second one, and liveness is still
//!   promised (a primary that sent `HandOver` waits for its backup's
//!   close, or for 10 s of silence when the backup's host died, before it
//!   runs on alone); once the backup has won, the guest lives in it alone
//!   (the old primary can never win that epoch), and its crash is a
//!   failure of its own, as after a failover;
//! - **the backup**: the backup is stopped (its process ends and the
//!   kernel closes its connection), the primary wins the test-and-set and
//!   runs alone, and a clone restores redundancy on another host than
//!   the one the old backup left (a restore that may be struck as any).
//!
//! The invariants of a hand-over, on top of every other: a primary
//! handing over executes no more (its icount stays where it stopped); the
//! new primary goes live at exactly the icount where the log the old one
//! had sent when it sent `HandOver` ends, and in the state that log leads
//! to (checked in the final replay of the pairing's log, `invariants`).
//! With `Options::strict_hand_over` (the default), to the letter of
//! issue 13: at the very icount at which the old primary stopped, with
//! the state digest the old one had when it sent `HandOver`; `HandOver`
//! naming only entries that were sent; and no output re-produced at the
//! go-live (no console bytes to write again, no transmit or shared-disk
//! write to re-issue: everything was released and completed before).
//! `Node::hand_over` failed these until it logged its stop point, waited
//! for the I/O in flight and sent the inputs it took meanwhile; the
//! weaker checks alone are what held before. Outputs lost across a
//! hand-over are the world's checks' (no gap in the console or frames,
//! the new primary's guest holds every frame and answer the world got).
//!
//! [`Node::hand_over`]: ftvm_node::Node::hand_over

use ftvm_board::{Digest, IoRequest};
use ftvm_ft::channel::Message;
use ftvm_node::Effect;
use ftvm_replay::LogDecoder;

use crate::clone::case;
use crate::host::{DiskMode, Status};
use crate::invariants::Invariant;
use crate::plan::{CloneFault, CrashMode, Fault, LIVENESS_BOUND_NS, Noise, Restore};
use crate::sim::{Event, Sim, host_name};
use crate::{Broken, MS, Options, Rng, SimError};

/// How long a primary that sent `HandOver` waits for a silent backup
/// before it asks the arbiter (`ftvm_node`'s patience with a backup that
/// drains in silence).
const HAND_OVER_PATIENCE_NS: u64 = 10_000 * MS;
/// A migration waits for a whole pair this many times, 25 ms apart.
const TRIES: u32 = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MigrationKind {
    Primary,
    Backup,
}

/// A crash in the middle of a hand-over: of the old primary or of the
/// backup, this long after the primary was asked to hand over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HandOverFault {
    pub primary: bool,
    pub after_ns: u64,
}

/// A migration of the plan.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Migration {
    pub kind: MigrationKind,
    pub at: u64,
    pub fault: Option<(HandOverFault, CrashMode)>,
    /// The restore of redundancy that follows (shared disks only).
    pub restore: Restore,
}

/// A crash's mode for a fault of a migration.
fn crash_mode(rng: &mut Rng) -> CrashMode {
    match rng.range(0, 3) {
        0 => CrashMode::Process,
        1 => CrashMode::Host,
        _ => CrashMode::HostAndBuffers,
    }
}

/// The seed's migrations, drawn from the cluster's stream: in three seeds
/// out of ten one, sometimes two, at random times (every seed with
/// `Options::migrations`, early; likewise with
/// [`Broken::MigratedPrimaryWrongIcount`], whose first migration is then
/// the primary's); the backup moves only on a shared disk (its restore
/// is a clone, and a clone does not copy a disk here). `end_ns` is the
/// run's length, which a migration may extend so that liveness is
/// checked after it.
pub(crate) fn draw(
    rng: &mut Rng,
    options: &Options,
    noise: &Noise,
    disk: DiskMode,
    end_ns: &mut u64,
) -> (Vec<Migration>, Option<String>) {
    // The variant that breaks hand-overs needs one in every seed.
    let wrong_icount = options.broken == Some(Broken::MigratedPrimaryWrongIcount);
    let forced = options.migrations || wrong_icount;
    if !options.faults || !(forced || rng.chance(0.3)) {
        return (Vec::new(), None);
    }
    let count = if rng.chance(0.25) { 2 } else { 1 };
    let round_trip = 2 * noise.latency_ns + noise.jitter_ns;
    let mut migrations = Vec::new();
    let mut line = String::from("migrations:");
    for n in 0..count {
        let primary = rng.chance(0.6) || (wrong_icount && n == 0);
        let kind = if disk == DiskMode::Private || primary {
            MigrationKind::Primary
        } else {
            MigrationKind::Backup
        };
        let at = if forced {
            rng.range(30, 400) * MS
        } else {
            rng.range(30, end_ns.saturating_sub(300 * MS) / MS) * MS
        };
        let struck = rng.chance(if forced { 0.6 } else { 0.35 });
        let mut fault = None;
        let mut clone_fault = None;
        match kind {
            MigrationKind::Primary if struck => {
                let after_ns = if rng.chance(0.5) {
                    rng.range(0, round_trip + MS)
                } else {
                    rng.range(0, 30 * MS)
                };
                let primary = rng.chance(0.5);
                fault = Some((HandOverFault { primary, after_ns }, crash_mode(rng)));
            }
            MigrationKind::Backup if struck => {
                let survivor = rng.chance(0.5);
                let f = match rng.range(0, 3) {
                    0 => CloneFault::InTransfer {
                        survivor,
                        at: rng.range(0, 1000),
                    },
                    1 => CloneFault::InCatchUp {
                        survivor,
                        after_ns: rng.range(0, round_trip + MS),
                    },
                    _ => CloneFault::AfterRestore {
                        survivor,
                        after_ns: rng.range(10, 300) * MS,
                    },
                };
                clone_fault = Some((f, crash_mode(rng)));
            }
            _ => {}
        }
        let restore = Restore {
            delay_ns: rng.range(0, 20) * MS,
            fault: clone_fault,
        };
        line.push_str(&format!(" {kind:?} at {:.3} ms", at as f64 / 1e6));
        if let Some((f, mode)) = fault {
            line.push_str(&format!(" ({f:?} {mode:?})"));
        }
        if let Some((f, mode)) = clone_fault {
            line.push_str(&format!(" (restore: {f:?} {mode:?})"));
        }
        // Room for the migration, its restore and a failure after it.
        *end_ns = (*end_ns).max(at + 700 * MS + LIVENESS_BOUND_NS);
        migrations.push(Migration {
            kind,
            at,
            fault,
            restore,
        });
    }
    (migrations, Some(line))
}

/// A hand-over under way.
struct HandOver {
    /// The old primary's slot and incarnation, and the backup's.
    old: (usize, u64),
    new: (usize, u64),
    old_id: usize,
    new_id: usize,
    /// The old primary's icount when it stopped.
    stop_icount: u64,
    /// The old primary's state digest when it sent `HandOver`, and where
    /// the log it had sent then ends.
    sent: Option<(Digest, LogEnd)>,
    /// The backup took `HandOver` (it drains to go live), and where the
    /// log the old primary had sent by then ends: its entries, and the
    /// icount of the last.
    received: Option<LogEnd>,
    /// A crash struck one of the two: it is the hand-over's failure.
    struck: bool,
    /// The backup won the test-and-set: from here the guest lives in it
    /// alone, and its crash is a failure of its own.
    claimed: bool,
    /// The backup's host died in silence, as the hand-over's failure.
    backup_lost_silently: bool,
}

/// Where a log ends: its entries, and the icount of the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogEnd {
    pub entries: u64,
    pub icount: u64,
}

impl LogEnd {
    fn of(log: &[u8]) -> LogEnd {
        let mut decoder = LogDecoder::default();
        decoder.push(log);
        let mut icount = 0;
        while let Ok(Some(entry)) = decoder.next() {
            icount = entry.icount;
        }
        LogEnd {
            entries: decoder.next_seq(),
            icount,
        }
    }
}

/// A hand-over's new primary as it went live, for the final replay of its
/// pairing's log: the state there must be the one it continued from.
pub(crate) struct Continued {
    pub epoch: u64,
    pub entries: u64,
    pub digest: Digest,
    pub vm: usize,
}

#[derive(Default)]
pub(crate) struct Migrating {
    /// The plan's migrations.
    pub plan: Vec<Migration>,
    current: Option<HandOver>,
    /// The host a migration moves away from: the next placement avoids
    /// it when it can.
    pub leaving: Option<usize>,
    /// A backup migration waits for its restore to complete.
    backup_moving: bool,
    pub hand_overs: u64,
    pub backup_moves: u64,
    /// The hand-overs' new primaries, for the final replay.
    pub continued: Vec<Continued>,
}

impl Migrating {
    pub fn new(plan: Vec<Migration>) -> Migrating {
        Migrating {
            plan,
            ..Migrating::default()
        }
    }
}

impl Sim {
    /// The pair is whole (a primary and a backup that protects it, no
    /// failure since), and no migration is under way.
    fn whole(&self) -> bool {
        self.is_pair()
            && !self.restoring.busy()
            && self.checks.failure_free()
            && self.migrating.current.is_none()
            && !self.migrating.backup_moving
    }

    /// Time for migration `index` of the plan (again: the pair was not
    /// whole, or the primary refused).
    pub(crate) fn migrate(&mut self, index: usize, tries: u32) -> Result<(), SimError> {
        let Some(m) = self.migrating.plan.get(index).copied() else {
            return Ok(());
        };
        let p = (0..2).find(|&i| {
            self.hosts.slot[i]
                .as_ref()
                .is_some_and(|h| *h.status() == Status::Primary)
        });
        let again = |sim: &mut Sim, why: &str| {
            if tries < TRIES {
                sim.schedule(
                    sim.now + 25 * MS,
                    Event::Migrate {
                        index,
                        tries: tries + 1,
                    },
                );
            } else {
                let why = why.to_string();
                sim.note(|| format!("the {:?} migration is given up: {why}", m.kind));
            }
        };
        let Some(p) = p.filter(|_| self.whole()) else {
            again(self, "the pair is not whole");
            return Ok(());
        };
        let b = 1 - p;
        let time = self.time();
        let (old_id, new_id) = (self.hosts.id[p], self.hosts.id[b]);
        match m.kind {
            MigrationKind::Primary => {
                let Some(h) = &mut self.hosts.slot[p] else {
                    return Ok(());
                };
                let stop_icount = h.machine().map_or(0, |m| m.icount());
                if let Err(why) = h.hand_over(time) {
                    again(self, why);
                    return Ok(());
                }
                let (old, new) = (host_name(old_id), host_name(new_id));
                self.note(|| {
                    format!("{old} is asked to hand the VM over to {new}: it stops at icount {stop_icount}")
                });
                self.fail_at();
                self.migrating.current = Some(HandOver {
                    old: (p, self.hosts.incarnation[p]),
                    new: (b, self.hosts.incarnation[b]),
                    old_id,
                    new_id,
                    stop_icount,
                    sent: None,
                    received: None,
                    struck: false,
                    claimed: false,
                    backup_lost_silently: false,
                });
                self.migrating.leaving = self.server_of(p);
                if let Some((f, mode)) = m.fault {
                    let id = if f.primary { old_id } else { new_id };
                    self.schedule(
                        self.now + f.after_ns,
                        Event::Fault(Fault::CrashHost { id, mode }),
                    );
                }
                self.effects(p)?;
                if self.options.broken == Some(Broken::MigratedPrimaryWrongIcount) {
                    // The middlebox: `HandOver` overtakes the log in flight.
                    let time = self.time();
                    let now = self.now;
                    if let Some(h) = &mut self.hosts.slot[b] {
                        h.receive(&Message::HandOver { through: 0 }, time);
                        h.run_now(now);
                    }
                    self.hand_over_received(b);
                }
            }
            MigrationKind::Backup => {
                let Some(h) = &mut self.hosts.slot[b] else {
                    return Ok(());
                };
                if let Err(e) = h.stop(time) {
                    return Err(self.violation(Invariant::Error, format!("stop: {e}")));
                }
                let old = host_name(new_id);
                self.note(|| {
                    format!("the backup {old} is ended to move it (ftvm migrate --vm backup)")
                });
                self.fail_at();
                self.effects(b)?;
                // Its process exits: the kernel closes the connection.
                self.drop_connection(b, "the old backup's process exits");
                self.migrating.leaving = self.server_of(b);
                self.migrating.backup_moving = true;
            }
        }
        if self.disks.mode == DiskMode::Shared {
            self.restoring.push_front(m.restore);
        }
        Ok(())
    }

    /// The log the primary in slot `i` (this incarnation) has sent in
    /// the newest pairing, and that pairing's epoch.
    fn sent_log(&self, i: usize) -> Option<(&[u8], u64)> {
        let here = (i, self.hosts.incarnation[i]);
        self.restoring
            .logs
            .last()
            .filter(|p| p.primary == here)
            .map(|p| (&p.log[..], p.epoch))
    }

    /// Host `from` sends `message`: a `HandOver` is checked and noted.
    pub(crate) fn hand_over_sent(
        &mut self,
        from: usize,
        message: &Message,
    ) -> Result<(), SimError> {
        let Message::HandOver { through } = *message else {
            return Ok(());
        };
        let here = (from, self.hosts.incarnation[from]);
        let Some(machine) = self.hosts.slot[from].as_ref().and_then(|h| h.machine()) else {
            return Ok(());
        };
        let (icount, digest) = (machine.icount(), machine.digest());
        let name = self.name(from);
        let end = self.sent_log(from).map_or(
            LogEnd {
                entries: 0,
                icount: 0,
            },
            |(log, _)| LogEnd::of(log),
        );
        let Some(ho) = self.migrating.current.as_mut().filter(|ho| ho.old == here) else {
            return Err(self.violation(
                Invariant::HandOver,
                format!("{name} sends HandOver unasked"),
            ));
        };
        ho.sent = Some((digest, end));
        let stop = ho.stop_icount;
        if ho.backup_lost_silently {
            self.be_patient();
        }
        self.note(|| format!("{name} sends HandOver through entry {through} at icount {icount}"));
        if icount != stop {
            return Err(self.violation(
                Invariant::HandOver,
                format!("{name} sends HandOver at icount {icount}, but it stopped at {stop}"),
            ));
        }
        if self.options.strict_hand_over && through != end.entries {
            return Err(self.violation(
                Invariant::HandOver,
                format!(
                    "{name}'s HandOver names {through} entries, but it sent {}: inputs it took \
                     while handing over never reach the backup",
                    end.entries
                ),
            ));
        }
        Ok(())
    }

    /// Host `to` has taken a `HandOver`: if it drains to go live, the
    /// hand-over's checks apply when it does, against the log its primary
    /// had sent when it sent `HandOver` (what it sends after, a clean
    /// end, the frozen backup no longer takes), or by now if it never
    /// did.
    pub(crate) fn hand_over_received(&mut self, to: usize) {
        let here = (to, self.hosts.incarnation[to]);
        let taking_over = self.hosts.slot[to]
            .as_ref()
            .is_some_and(|h| *h.status() == Status::TakingOver);
        let Some((old, sent)) = self
            .migrating
            .current
            .as_ref()
            .filter(|ho| ho.new == here && ho.received.is_none() && taking_over)
            .map(|ho| (ho.old.0, ho.sent.map(|(_, end)| end)))
        else {
            return;
        };
        let end = sent.or_else(|| self.sent_log(old).map(|(log, _)| LogEnd::of(log)));
        if let Some(ho) = &mut self.migrating.current {
            ho.received = end;
        }
    }

    /// Host `i`'s effects, before they are carried out: a VM going live
    /// by a hand-over re-produces no output (the old primary released
    /// every output and saw it complete before it handed over).
    pub(crate) fn check_hand_over_effects(
        &mut self,
        i: usize,
        effects: &[Effect],
    ) -> Result<(), SimError> {
        let here = (i, self.hosts.incarnation[i]);
        let Some(ho) = self
            .migrating
            .current
            .as_ref()
            .filter(|ho| ho.new == here && ho.received.is_some())
            .filter(|_| self.options.strict_hand_over)
        else {
            return Ok(());
        };
        if !effects.iter().any(|e| matches!(e, Effect::Announce { .. })) {
            return Ok(());
        }
        let shared = self.disks.mode == DiskMode::Shared;
        let again = effects.iter().find_map(|e| match e {
            Effect::Console { offset, bytes } => Some(format!(
                "console bytes {offset}..{}",
                offset + bytes.len() as u64
            )),
            Effect::Perform(IoRequest::NetTransmit { id, .. }) => Some(format!("transmit {id}")),
            Effect::Perform(
                IoRequest::BlockWrite { id, .. } | IoRequest::BlockFlush { id, .. },
            ) if shared => Some(format!("disk request {id}")),
            _ => None,
        });
        if let Some(what) = again {
            let old = host_name(ho.old_id);
            return Err(self.violation(
                Invariant::HandOver,
                format!(
                    "{} goes live by a hand-over and re-produces {what}, an output {old} had \
                     released",
                    self.name(i)
                ),
            ));
        }
        Ok(())
    }

    /// Host `i` went live: after a hand-over it continues from exactly
    /// where the log its old primary sent ends (strictly: where the old
    /// primary stopped, in the state it had there); either way the
    /// hand-over is over.
    pub(crate) fn hand_over_went_live(&mut self, i: usize) -> Result<(), SimError> {
        let here = (i, self.hosts.incarnation[i]);
        let Some(ho) = self.migrating.current.as_ref() else {
            return Ok(());
        };
        if ho.old == here {
            self.restoring.cases.insert(case::HAND_OVER_RAN_ON);
            self.migrating.current = None;
            return Ok(());
        }
        if ho.new != here {
            return Ok(());
        }
        let Some(ho) = self.migrating.current.take() else {
            return Ok(());
        };
        // Without `HandOver` it is a failover (the old primary died first).
        let Some(end) = ho.received else {
            return Ok(());
        };
        let Some(machine) = self.hosts.slot[i].as_ref().and_then(|h| h.machine()) else {
            return Ok(());
        };
        let (icount, digest) = (machine.icount(), machine.digest());
        let (old, new) = (host_name(ho.old_id), host_name(ho.new_id));
        if icount != end.icount {
            return Err(self.violation(
                Invariant::HandOver,
                format!(
                    "{new} goes live by a hand-over at icount {icount}, but the log {old} sent ends \
                     at icount {} (entry {}; {old} stopped at icount {})",
                    end.icount,
                    end.entries,
                    ho.stop_icount
                ),
            ));
        }
        if self.options.strict_hand_over {
            if icount != ho.stop_icount {
                return Err(self.violation(
                    Invariant::HandOver,
                    format!(
                        "{new} goes live by a hand-over at icount {icount}, but {old} stopped at \
                         icount {}: the log does not name the stop point",
                        ho.stop_icount
                    ),
                ));
            }
            if let Some((expected, _)) = ho.sent.filter(|(d, _)| *d != digest) {
                return Err(self.violation(
                    Invariant::HandOver,
                    format!(
                        "{new} goes live by a hand-over at icount {icount} with state digest \
                         {digest}, but {old} stopped there with {expected}"
                    ),
                ));
            }
        }
        self.note(|| {
            format!(
                "{new} continues from icount {icount}, where {old}'s log ends ({old} stopped at {})",
                ho.stop_icount
            )
        });
        if let Some(pairing) = self
            .restoring
            .logs
            .iter()
            .rev()
            .find(|p| p.primary == ho.old)
        {
            self.migrating.continued.push(Continued {
                epoch: pairing.epoch,
                entries: end.entries,
                digest,
                vm: ho.new_id,
            });
        }
        self.migrating.hand_overs += 1;
        self.restoring.cases.insert(case::HANDED_OVER);
        Ok(())
    }

    /// After every event: a primary handing over executes no more; a
    /// hand-over whose two VMs are both gone is over.
    pub(crate) fn check_hand_over(&mut self) -> Result<(), SimError> {
        let Some(ho) = &self.migrating.current else {
            return Ok(());
        };
        let (o, inc) = ho.old;
        let old = self.hosts.slot[o]
            .as_ref()
            .filter(|_| self.hosts.incarnation[o] == inc);
        if let Some(h) = old {
            if matches!(h.status(), Status::Primary | Status::Arbitrating) {
                let icount = h.machine().map_or(ho.stop_icount, |m| m.icount());
                if icount != ho.stop_icount {
                    return Err(self.violation(
                        Invariant::HandOver,
                        format!(
                            "{} executes on to icount {icount} after it stopped at {} to hand \
                             over",
                            host_name(ho.old_id),
                            ho.stop_icount
                        ),
                    ));
                }
            }
        }
        let gone = |sim: &Sim, (slot, inc): (usize, u64)| {
            sim.hosts.incarnation[slot] != inc
                || sim.hosts.slot[slot]
                    .as_ref()
                    .is_none_or(|h| h.status().is_done())
        };
        if gone(self, ho.old) && gone(self, ho.new) {
            self.migrating.current = None;
        }
        Ok(())
    }

    /// The VM in slot `i` crashes: during a hand-over, until the backup
    /// won the test-and-set, that is the hand-over's failure (true: not
    /// counted as another; once the backup has won, the guest lives in it
    /// alone and its crash loses the VM, as after a failover). A primary that
    /// sent `HandOver` waits for a backup whose host died silently for
    /// its patience before it runs on: liveness allows for it.
    pub(crate) fn hand_over_crash(&mut self, i: usize, mode: CrashMode) -> bool {
        let here = (i, self.hosts.incarnation[i]);
        let Some(ho) = self.migrating.current.as_mut() else {
            return false;
        };
        let primary = ho.old == here;
        if !primary && ho.new != here {
            return false;
        }
        self.restoring.cases.insert(if primary {
            case::HAND_OVER_PRIMARY_CRASHED
        } else {
            case::HAND_OVER_BACKUP_CRASHED
        });
        if ho.struck || ho.claimed || self.checks.failures_since_whole() != 1 {
            return false;
        }
        ho.struck = true;
        ho.backup_lost_silently = !primary && mode != CrashMode::Process;
        if ho.backup_lost_silently && ho.sent.is_some() {
            self.be_patient();
        }
        true
    }

    /// A primary that sent `HandOver` to a backup whose host died in
    /// silence waits its patience before it runs on alone: liveness
    /// allows for it, and the run lasts long enough to see it.
    fn be_patient(&mut self) {
        self.checks.patience_ns = HAND_OVER_PATIENCE_NS;
        self.end_ns = self
            .end_ns
            .max(self.now + HAND_OVER_PATIENCE_NS + LIVENESS_BOUND_NS + 1_500 * MS);
    }

    /// The VM in slot `i` won the test-and-set.
    pub(crate) fn hand_over_claimed(&mut self, i: usize) {
        let here = (i, self.hosts.incarnation[i]);
        if let Some(ho) = self.migrating.current.as_mut().filter(|ho| ho.new == here) {
            ho.claimed = true;
        }
    }

    /// A restore completed: a backup migration is done.
    pub(crate) fn migration_restored(&mut self) {
        if std::mem::take(&mut self.migrating.backup_moving) {
            self.migrating.backup_moves += 1;
            self.restoring.cases.insert(case::BACKUP_MOVED);
        }
    }
}
