//! The replaying side: re-execute a log with no live input, check every
//! checkpoint, and when one differs, find the first instruction whose
//! state differs.

use std::io::Read;

use ftvm_board::{
    BoardError, Digest, Engine, ImageSource, Input, IoRequest, Machine, MachineConfig, Snapshot,
    Stop,
};

use crate::format::{End, Entry, Event, LogError, LogHeader, LogReader};

/// What the machine produces on replay. The caller decides where it goes
/// (nowhere, by default, in `ftvm replay`; held or dropped by a backup).
#[derive(Debug)]
pub enum Output {
    Console(Vec<u8>),
    /// Every request the guest makes. Disk writes and transmitted frames
    /// are the outputs; reads and entropy requests are answered by the log.
    Io(IoRequest),
}

/// A test hook: flip bits of an integer register once the machine has
/// applied the log's entries at `icount`, before the instruction there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub icount: u64,
    pub register: usize,
    pub mask: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("building the machine: {0}")]
    Machine(#[from] BoardError),
    #[error(
        "the log was recorded from another initial state (digest {logged}, this machine {found}): \
         same files but another machine, e.g. another ftvm version"
    )]
    InitialState { logged: Digest, found: Digest },
    #[error("replay diverged at entry {seq} (icount {icount}): {what}")]
    Mismatch { seq: u64, icount: u64, what: String },
    #[error("{0}")]
    Diverged(Box<Divergence>),
}

/// A checkpoint whose digest differs from the log's.
#[derive(Debug)]
pub struct Divergence {
    pub seq: u64,
    pub icount: u64,
    pub logged: Digest,
    pub found: Digest,
    pub first: FirstDifference,
}

/// The result of narrowing a divergence down.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstDifference {
    /// The state before the instruction at `icount` (at `pc`) is the same
    /// in the replay and in the reference; after it (or after the trap
    /// taken there), it is not.
    Found {
        icount: u64,
        pc: u64,
        what: String,
    },
    /// Applying the log's entry `seq` at `icount` already gives different
    /// states.
    Entry {
        seq: u64,
        icount: u64,
        what: String,
    },
    /// Re-executing from a state that matched the log gives the same
    /// state with the replay's and the recording's engine: the replay's
    /// divergence does not reproduce.
    NotReproduced {
        from_icount: u64,
    },
    Unavailable(String),
}

fn short(d: &Digest) -> String {
    d.to_string()[..16].to_string()
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replay diverged: checkpoint entry {} at icount {} has state digest {}.., the log \
             says {}..; ",
            self.seq,
            self.icount,
            short(&self.found),
            short(&self.logged)
        )?;
        match &self.first {
            FirstDifference::Found { icount, pc, what } => write!(
                f,
                "the state first differs after the instruction at icount {icount}, pc {pc:#x} ({what})"
            ),
            FirstDifference::Entry { seq, icount, what } => write!(
                f,
                "the state first differs after applying entry {seq} at icount {icount} ({what})"
            ),
            FirstDifference::NotReproduced { from_icount } => write!(
                f,
                "re-executing from a state that matched the log (icount {from_icount}) does \
                 not reproduce it, so the difference came from outside the machine"
            ),
            FirstDifference::Unavailable(why) => write!(f, "not narrowed down: {why}"),
        }
    }
}

/// A machine that applies log entries one at a time: the core of replay,
/// shared by a file replay, the narrowing of a divergence and (later) a
/// backup fed from a logging channel.
pub struct ReplayMachine {
    config: MachineConfig,
    machine: Machine,
    fault: Option<Fault>,
    /// How the last run stopped (a power-off is checked by the entry
    /// after the final checkpoint, at the same icount).
    last_stop: Option<Stop>,
}

/// What applying an entry did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Input,
    /// An output marker: the machine ran to its icount.
    Output,
    Reset,
    Checkpoint {
        logged: Digest,
        found: Digest,
    },
    End(End),
}

impl ReplayMachine {
    pub fn new(config: MachineConfig) -> Result<ReplayMachine, BoardError> {
        let machine = Machine::new(&config)?;
        Ok(ReplayMachine {
            config,
            machine,
            fault: None,
            last_stop: None,
        })
    }

    pub fn from_snapshot(
        config: MachineConfig,
        snapshot: &Snapshot,
    ) -> Result<ReplayMachine, BoardError> {
        let mut replay = ReplayMachine::new(config)?;
        replay.machine.restore(snapshot)?;
        Ok(replay)
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Leave replay: the machine, as it stands, to run live.
    pub fn into_machine(self) -> Machine {
        self.machine
    }

    /// Run toward `entry` but stop at `limit` if that comes first, so a
    /// caller that must stay responsive (a backup answering its channel)
    /// can execute a long stretch between entries in pieces. Running to the
    /// entry's own icount is left to [`ReplayMachine::apply`].
    pub fn advance(
        &mut self,
        entry: &Entry,
        limit: u64,
        out: &mut dyn FnMut(Output),
    ) -> Result<(), ReplayError> {
        let target = limit.min(entry.icount);
        self.run_to(target, out)
            .map_err(|what| ReplayError::Mismatch {
                seq: entry.seq,
                icount: entry.icount,
                what,
            })
    }

    pub fn set_fault(&mut self, fault: Option<Fault>) {
        self.fault = fault;
    }

    fn emit(&mut self, out: &mut dyn FnMut(Output)) {
        let console = self.machine.take_console_output();
        if !console.is_empty() {
            out(Output::Console(console));
        }
        for request in self.machine.take_io_requests() {
            out(Output::Io(request));
        }
    }

    /// Run to `target` (applying a fault on the way); the last stop.
    fn run_to(&mut self, target: u64, out: &mut dyn FnMut(Output)) -> Result<(), String> {
        if let Some(fault) = self.fault {
            if fault.icount >= self.machine.icount() && fault.icount < target {
                self.run_plain(fault.icount, out)?;
                let hart = self.machine.hart_mut();
                let value = hart.xreg(fault.register);
                hart.set_xreg(fault.register, value ^ fault.mask);
                self.fault = None;
            }
        }
        self.run_plain(target, out)
    }

    fn run_plain(&mut self, target: u64, out: &mut dyn FnMut(Output)) -> Result<(), String> {
        while self.machine.icount() < target {
            let stop = self.machine.run(target);
            self.emit(out);
            // The recording logs an entry wherever the guest stops or
            // idles, so stopping short of the next entry is a divergence.
            let short = matches!(
                stop,
                Stop::PowerOff { .. } | Stop::HtifExit { .. } | Stop::Reset | Stop::Idle { .. }
            );
            if short && self.machine.icount() < target {
                return Err(format!(
                    "the guest stopped ({stop:?}) at icount {} before reaching it",
                    self.machine.icount()
                ));
            }
            self.last_stop = Some(stop);
        }
        Ok(())
    }

    /// Run to the entry's icount and apply it.
    pub fn apply(
        &mut self,
        entry: &Entry,
        out: &mut dyn FnMut(Output),
    ) -> Result<Applied, ReplayError> {
        let mismatch = |what: String| ReplayError::Mismatch {
            seq: entry.seq,
            icount: entry.icount,
            what,
        };
        self.run_to(entry.icount, out).map_err(mismatch)?;
        let stop = self.last_stop;
        Ok(match &entry.event {
            Event::Input(input) => {
                self.machine.inject(input.clone());
                self.emit(out);
                Applied::Input
            }
            Event::Output => Applied::Output,
            Event::Checkpoint(logged) => Applied::Checkpoint {
                logged: *logged,
                found: self.machine.digest(),
            },
            Event::Reset => {
                if stop != Some(Stop::Reset) {
                    return Err(mismatch(format!(
                        "the log has a guest reset here, the replay stopped with {stop:?}"
                    )));
                }
                self.machine = Machine::new(&self.config)?;
                self.last_stop = None;
                Applied::Reset
            }
            Event::End(end) => {
                let expected = match end {
                    End::PowerOff { code } => Some(Stop::PowerOff { code: *code }),
                    End::HtifExit { code } => Some(Stop::HtifExit { code: *code }),
                    End::InsnLimit | End::Quit => None,
                };
                if expected.is_some() && stop != expected {
                    return Err(mismatch(format!(
                        "the log ends with {end:?} here, the replay stopped with {stop:?}"
                    )));
                }
                Applied::End(*end)
            }
        })
    }
}

/// How a replay ended.
#[derive(Debug)]
pub struct Replayed {
    pub end: End,
    pub icount: u64,
    pub digest: Digest,
    pub entries: u64,
    pub checkpoints: u64,
}

/// A state known to match the recording (at a checkpoint that matched,
/// or the start), and the entries since: what a narrowing re-executes.
/// Copying guest RAM costs more than digesting it, so the snapshot moves
/// on only every [`SNAPSHOT_EVERY`] matching checkpoints, or sooner when
/// the entries kept since hold more than [`WINDOW_MAX_BYTES`] of data.
struct Good {
    icount: u64,
    snapshot: Snapshot,
    window: Vec<Entry>,
    window_bytes: usize,
    checkpoints_since: u32,
}

const SNAPSHOT_EVERY: u32 = 8;
const WINDOW_MAX_BYTES: usize = 64 << 20;

/// The data an entry carries (frames, disk data, entropy).
fn data_len(entry: &Entry) -> usize {
    match &entry.event {
        Event::Input(Input::NetReceive { frame }) => frame.len(),
        Event::Input(Input::IoDone { data, .. }) => data.len(),
        _ => 0,
    }
}

impl Good {
    fn at(machine: &Machine) -> Good {
        Good {
            icount: machine.icount(),
            snapshot: machine.snapshot(),
            window: Vec::new(),
            window_bytes: 0,
            checkpoints_since: 0,
        }
    }
}

/// Replays a whole log.
pub struct Replayer<R: Read> {
    reader: LogReader<R>,
    replay: ReplayMachine,
    good: Good,
}

impl<R: Read> Replayer<R> {
    /// Open a log, rebuild its machine (with `engine`, its images read
    /// from `images`) and check that it starts in the logged state.
    pub fn new(
        input: R,
        engine: Engine,
        images: &dyn ImageSource,
    ) -> Result<Replayer<R>, ReplayError> {
        let reader = LogReader::open(input)?;
        let header = reader.header().clone();
        let replay = ReplayMachine::new(header.machine.config(engine, images)?)?;
        let found = replay.machine.digest();
        if found.0 != header.initial_digest {
            return Err(ReplayError::InitialState {
                logged: Digest(header.initial_digest),
                found,
            });
        }
        let good = Good::at(&replay.machine);
        Ok(Replayer {
            reader,
            replay,
            good,
        })
    }

    pub fn header(&self) -> &LogHeader {
        self.reader.header()
    }

    pub fn set_fault(&mut self, fault: Option<Fault>) {
        self.replay.set_fault(fault);
    }

    /// Replay to the end of the log, checking every checkpoint.
    pub fn run(&mut self, out: &mut dyn FnMut(Output)) -> Result<Replayed, ReplayError> {
        let fault = self.replay.fault;
        let mut checkpoints = 0;
        // The digest of the state right now, if the last entry checked it
        // (a recording ends with a checkpoint, then its end entry).
        let mut checked = None;
        loop {
            let Some(entry) = self.reader.next()? else {
                return Err(LogError::NoEnd {
                    next: self.reader.next_seq(),
                }
                .into());
            };
            let icount_before = self.replay.machine.icount();
            let applied = self.replay.apply(&entry, out)?;
            if self.replay.machine.icount() != icount_before {
                checked = None;
            }
            match applied {
                Applied::Checkpoint { logged, found } if logged == found => {
                    checked = Some(found);
                    checkpoints += 1;
                    self.good.checkpoints_since += 1;
                    if self.good.checkpoints_since >= SNAPSHOT_EVERY
                        || self.good.window_bytes > WINDOW_MAX_BYTES
                    {
                        self.good = Good::at(&self.replay.machine);
                    }
                }
                Applied::Checkpoint { logged, found } => {
                    let first = self.narrow(entry.icount, fault);
                    return Err(ReplayError::Diverged(Box::new(Divergence {
                        seq: entry.seq,
                        icount: entry.icount,
                        logged,
                        found,
                        first,
                    })));
                }
                Applied::End(end) => {
                    return Ok(Replayed {
                        end,
                        icount: self.replay.machine.icount(),
                        digest: checked.unwrap_or_else(|| self.replay.machine.digest()),
                        entries: self.reader.next_seq(),
                        checkpoints,
                    });
                }
                // A machine just built is as good as a snapshot.
                Applied::Reset => {
                    checked = None;
                    self.good = Good::at(&self.replay.machine);
                }
                Applied::Input | Applied::Output => {
                    checked = None;
                    self.good.window_bytes += data_len(&entry);
                    self.good.window.push(entry);
                }
            }
        }
    }

    /// Find the first instruction after the last matching snapshot where this
    /// replay (its engine, its fault) and the reference (the recording's
    /// engine, no fault) part, by bisection over re-executions from
    /// snapshots.
    fn narrow(&self, bad_icount: u64, fault: Option<Fault>) -> FirstDifference {
        let replay = self.replay.config.clone();
        let reference = MachineConfig {
            engine: self.reader.header().engine,
            ..replay.clone()
        };
        let narrowing = Narrowing { replay, reference };
        let fault = fault.filter(|f| f.icount >= self.good.icount);
        narrowing
            .bisect(&self.good, bad_icount, fault)
            .unwrap_or_else(FirstDifference::Unavailable)
    }
}

struct Narrowing {
    replay: MachineConfig,
    reference: MachineConfig,
}

impl Narrowing {
    /// The state at icount `m` from `snapshot` at `from`: every entry
    /// before `m` applied.
    fn state(
        config: &MachineConfig,
        snapshot: &Snapshot,
        window: &[Entry],
        m: u64,
        fault: Option<Fault>,
    ) -> Result<ReplayMachine, String> {
        let fail = |e: &dyn std::fmt::Display| format!("re-executing to icount {m}: {e}");
        let mut replay =
            ReplayMachine::from_snapshot(config.clone(), snapshot).map_err(|e| fail(&e))?;
        replay.set_fault(fault);
        let mut discard = |_: Output| {};
        for entry in window.iter().take_while(|e| e.icount < m) {
            replay.apply(entry, &mut discard).map_err(|e| fail(&e))?;
        }
        replay.run_to(m, &mut discard).map_err(|e| fail(&e))?;
        Ok(replay)
    }

    /// Whether the replay and the reference differ at `m`. The replay
    /// failing on the way (its guest stopping early) is a difference; the
    /// reference failing is an error.
    fn differs(
        &self,
        snapshot: &Snapshot,
        window: &[Entry],
        m: u64,
        fault: Option<Fault>,
    ) -> Result<bool, String> {
        let b = Self::state(&self.reference, snapshot, window, m, None)?;
        Ok(
            match Self::state(&self.replay, snapshot, window, m, fault) {
                Ok(a) => a.machine.digest() != b.machine.digest(),
                Err(_) => true,
            },
        )
    }

    fn bisect(
        &self,
        good: &Good,
        bad: u64,
        mut fault: Option<Fault>,
    ) -> Result<FirstDifference, String> {
        if !self.differs(&good.snapshot, &good.window, bad, fault)? {
            return Ok(FirstDifference::NotReproduced {
                from_icount: good.icount,
            });
        }
        // Invariant: equal at `lo` (the state `snapshot`, before the
        // entries at `lo`), different at `hi`.
        let (mut lo, mut hi) = (good.icount, bad);
        let mut snapshot = good.snapshot.clone();
        let mut window: &[Entry] = &good.window;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.differs(&snapshot, window, mid, fault)? {
                hi = mid;
            } else {
                snapshot = Self::state(&self.reference, &snapshot, window, mid, None)?
                    .machine
                    .snapshot();
                lo = mid;
                let applied = window.iter().take_while(|e| e.icount < mid).count();
                window = &window[applied..];
                fault = fault.filter(|f| f.icount >= mid);
            }
        }
        // The step from `lo` to `hi` applies the entries at `lo`, then runs
        // one instruction (or takes a trap). Tell the two apart.
        let here = window.iter().take_while(|e| e.icount == lo).count();
        let mut a = ReplayMachine::from_snapshot(self.replay.clone(), &snapshot)
            .map_err(|e| e.to_string())?;
        let mut b = ReplayMachine::from_snapshot(self.reference.clone(), &snapshot)
            .map_err(|e| e.to_string())?;
        let pc = a.machine.hart().pc();
        let mut discard = |_: Output| {};
        for entry in &window[..here] {
            a.apply(entry, &mut discard).map_err(|e| e.to_string())?;
            b.apply(entry, &mut discard).map_err(|e| e.to_string())?;
            if a.machine.digest() != b.machine.digest() {
                return Ok(FirstDifference::Entry {
                    seq: entry.seq,
                    icount: lo,
                    what: describe_difference(&a.machine, &b.machine),
                });
            }
        }
        let a = Self::state(&self.replay, &snapshot, window, hi, fault);
        let b = Self::state(&self.reference, &snapshot, window, hi, None)?;
        Ok(FirstDifference::Found {
            icount: lo,
            pc,
            what: match a {
                Ok(a) => describe_difference(&a.machine, &b.machine),
                Err(e) => e,
            },
        })
    }
}

/// The first thing that differs between two machine states, in words.
pub fn describe_difference(replay: &Machine, reference: &Machine) -> String {
    let (a, b) = (replay.hart(), reference.hart());
    if a.pc() != b.pc() {
        return format!("pc is {:#x}, should be {:#x}", a.pc(), b.pc());
    }
    for r in 1..32 {
        if a.xreg(r) != b.xreg(r) {
            return format!("x{r} is {:#x}, should be {:#x}", a.xreg(r), b.xreg(r));
        }
    }
    let (ra, rb) = (a.ram().bytes(), b.ram().bytes());
    if let Some(i) = ra.iter().zip(rb).position(|(x, y)| x != y) {
        return format!(
            "RAM at {:#x} is {:#04x}, should be {:#04x}",
            a.ram().base() + i as u64,
            ra[i],
            rb[i]
        );
    }
    "CSR or device state differs".into()
}
