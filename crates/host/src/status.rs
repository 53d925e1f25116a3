//! The one-line status each process of a pair keeps in its state
//! directory, as one type: written by the run loop ([`StatusFile`]), read
//! by `ftvm status`, `ftvm stop`, `ftvm console`, the switch and the tests
//! ([`StatusLine`]'s `FromStr`), printed for people (`Display`) and for
//! scripts (`ftvm status --json`, through `serde`).
//!
//! ```text
//! primary pid=31804 role=primary epoch=1 lag=0 lag-ms=2.0 log-mbit-s=0.003 delay-ms=4.02 delay-p99-ms=56.72 outputs=89 log-bytes=14172 icount=141144799 balloon=32/32
//! live pid=31803 role=backup epoch=1 ... suspected=yes verdict=won took-over=yes announced=yes channel=peer-closed
//! halted pid=31805 role=primary ... halt=lost-test-and-set
//! switch pid=31802 ports=3 addr=127.0.0.1:40721 moves=1 expired=0
//! ```
//!
//! The first word is the state; the rest are `key=value` fields in any
//! order. Flags (`suspected`, `took-over`, `announced`) appear only once
//! they are true, and stay.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ftvm_ft::golive::Verdict;
use ftvm_node::{HaltCode, Status};
use serde::{Deserialize, Serialize};

/// Where a VM of a pair stands, as its status line's first word says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// A primary connecting to its backup.
    Connecting,
    /// A backup waiting for its primary.
    Waiting,
    /// Running the guest and logging to a backup.
    Primary,
    /// Replaying the primary's log.
    Backup,
    /// Running the guest alone: a primary whose backup failed, or a backup
    /// that went live.
    Live,
    /// Running the guest and cloning a new backup, which does not protect
    /// it yet.
    Cloning,
    /// Stopped for good without ending the pair (see `halt`).
    Halted,
    /// The pair ended cleanly.
    Ended,
    /// The process is gone without saying so (`kill -9`): only `ftvm
    /// status` says this, from the process table.
    Dead,
}

impl VmState {
    pub const ALL: [VmState; 9] = [
        VmState::Connecting,
        VmState::Waiting,
        VmState::Primary,
        VmState::Backup,
        VmState::Live,
        VmState::Cloning,
        VmState::Halted,
        VmState::Ended,
        VmState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Connecting => "connecting",
            VmState::Waiting => "waiting",
            VmState::Primary => "primary",
            VmState::Backup => "backup",
            VmState::Live => "live",
            VmState::Cloning => "cloning",
            VmState::Halted => "halted",
            VmState::Ended => "ended",
            VmState::Dead => "dead",
        }
    }

    /// The state of a node.
    pub fn of(status: &Status) -> VmState {
        match status {
            Status::Primary | Status::Arbitrating => VmState::Primary,
            Status::Backup | Status::TakingOver => VmState::Backup,
            Status::Live => VmState::Live,
            Status::Cloning => VmState::Cloning,
            Status::Halted(_) => VmState::Halted,
            Status::Ended(_) => VmState::Ended,
        }
    }

    /// Whether a VM in this state runs the guest (the one to type into,
    /// and to stop).
    pub fn runs_the_guest(self) -> bool {
        matches!(self, VmState::Primary | VmState::Live | VmState::Cloning)
    }

    /// Whether the process has said it is done.
    pub fn is_final(self) -> bool {
        matches!(self, VmState::Halted | VmState::Ended)
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmState {
    type Err = StatusError;

    fn from_str(s: &str) -> Result<VmState, StatusError> {
        VmState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| StatusError::Field("state", s.to_string()))
    }
}

/// Why the logging channel was given up, as the status line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelClose {
    /// The peer closed its end (its process died, or it gave up).
    PeerClosed,
    /// A frame failed its checksum or could not be decoded.
    Corrupt,
    /// A frame failed authentication (forged, replayed, reordered).
    Forged,
    /// Sending failed (the peer stopped reading, or the connection broke).
    SendFailed,
    /// Reading failed.
    ReadFailed,
}

impl ChannelClose {
    pub const ALL: [ChannelClose; 5] = [
        ChannelClose::PeerClosed,
        ChannelClose::Corrupt,
        ChannelClose::Forged,
        ChannelClose::SendFailed,
        ChannelClose::ReadFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelClose::PeerClosed => "peer-closed",
            ChannelClose::Corrupt => "corrupt",
            ChannelClose::Forged => "forged",
            ChannelClose::SendFailed => "send-failed",
            ChannelClose::ReadFailed => "read-failed",
        }
    }
}

impl FromStr for ChannelClose {
    type Err = StatusError;

    fn from_str(s: &str) -> Result<ChannelClose, StatusError> {
        ChannelClose::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| StatusError::Field("channel", s.to_string()))
    }
}

/// The arbiter's verdict as a status field.
pub(crate) fn verdict_str(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Won => "won",
        Verdict::Lost => "lost",
        Verdict::Unreachable => "unreachable",
    }
}

fn parse_verdict(s: &str) -> Result<Verdict, StatusError> {
    match s {
        "won" => Ok(Verdict::Won),
        "lost" => Ok(Verdict::Lost),
        "unreachable" => Ok(Verdict::Unreachable),
        _ => Err(StatusError::Field("verdict", s.to_string())),
    }
}

/// Where a clone of this VM stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloneStage {
    /// Connecting to the new backup and proving the key.
    Connecting,
    /// Sending the snapshot.
    Sending,
    /// The new backup restores and replays; outputs do not wait for it.
    CatchingUp,
}

impl CloneStage {
    pub const ALL: [CloneStage; 3] = [
        CloneStage::Connecting,
        CloneStage::Sending,
        CloneStage::CatchingUp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloneStage::Connecting => "connecting",
            CloneStage::Sending => "sending",
            CloneStage::CatchingUp => "catching-up",
        }
    }
}

impl FromStr for CloneStage {
    type Err = StatusError;

    fn from_str(s: &str) -> Result<CloneStage, StatusError> {
        CloneStage::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| StatusError::Field("clone", s.to_string()))
    }
}

/// A clone in progress: `clone=sending clone-mib=12.5/128`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloneProgress {
    pub stage: CloneStage,
    /// RAM looked at so far, and in all.
    pub done_mib: f64,
    pub total_mib: f64,
}

/// The memory balloon of a machine that has one, in MiB: `balloon=32/30`
/// (the host's target, then what the guest's driver reports it gave). A
/// backup shows its replayed machine's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BalloonMib {
    pub target: f64,
    pub actual: f64,
}

/// A VM's running numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Measures {
    /// Entries the backup has not acknowledged (primary) or not executed
    /// (backup).
    pub lag_entries: u64,
    /// How long the primary would take to execute what the backup has
    /// still to execute.
    pub lag_ms: f64,
    /// The logging channel's rate over the last second.
    pub log_mbit_s: f64,
    /// Median and 99th percentile of the output rule's delay: from the
    /// start of the run slice that produced an output to its release.
    pub delay_ms: f64,
    pub delay_p99_ms: f64,
    /// Outputs released in all.
    pub outputs: u64,
    pub log_bytes: u64,
    pub icount: u64,
}

/// One VM's status line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusLine {
    pub state: VmState,
    pub pid: u32,
    /// What the VM was started as (`primary`, `backup`).
    pub role: Option<String>,
    /// Its name in the pair's state directory (`primary`, `backup`, then
    /// `vm3`, `vm4`... for the backups cloned later).
    pub name: Option<String>,
    pub epoch: Option<u64>,
    /// For a dead VM: the state its file said last.
    pub was: Option<VmState>,
    /// Why it halted.
    #[serde(with = "halt_serde")]
    pub halt: Option<HaltCode>,
    /// It suspected its peer (silence, or a closed channel).
    pub suspected: bool,
    /// The arbiter's last verdict to it.
    #[serde(with = "verdict_serde")]
    pub verdict: Option<Verdict>,
    /// A backup that went live.
    pub took_over: bool,
    /// It announced the VM's MAC address to the network.
    pub announced: bool,
    /// Why its logging channel was given up.
    pub channel: Option<ChannelClose>,
    /// New backups cloned from it that caught up.
    pub clones: u32,
    /// How long the guest stood still for its last clone's snapshot.
    pub clone_pause_ms: Option<f64>,
    /// Bytes its last clone's snapshot took on the channel.
    pub clone_bytes: Option<u64>,
    /// A clone in progress.
    pub clone: Option<CloneProgress>,
    pub measures: Option<Measures>,
    /// The memory balloon, if the machine has one.
    #[serde(default)]
    pub balloon: Option<BalloonMib>,
    /// Where its metrics are served (`--metrics`), for Prometheus.
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddr>,
}

impl StatusLine {
    /// A line with nothing but a state and a pid.
    pub fn new(state: VmState, pid: u32) -> StatusLine {
        StatusLine {
            state,
            pid,
            role: None,
            name: None,
            epoch: None,
            was: None,
            halt: None,
            suspected: false,
            verdict: None,
            took_over: false,
            announced: false,
            channel: None,
            clones: 0,
            clone_pause_ms: None,
            clone_bytes: None,
            clone: None,
            measures: None,
            balloon: None,
            metrics: None,
        }
    }

    /// What `ftvm status` shows for a VM whose process is gone without a
    /// final word (`kill -9`).
    pub fn dead(&self) -> StatusLine {
        StatusLine {
            state: VmState::Dead,
            was: Some(self.state),
            ..self.clone()
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("an empty status line")]
    Empty,
    #[error("bad {0} in a status line: {1:?}")]
    Field(&'static str, String),
    #[error("a status line without a pid")]
    NoPid,
}

impl fmt::Display for StatusLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pid={}", self.state, self.pid)?;
        if let Some(name) = &self.name {
            write!(f, " name={name}")?;
        }
        if let Some(role) = &self.role {
            write!(f, " role={role}")?;
        }
        if let Some(was) = self.was {
            write!(f, " was={was}")?;
        }
        if let Some(epoch) = self.epoch {
            write!(f, " epoch={epoch}")?;
        }
        if let Some(m) = &self.measures {
            write!(
                f,
                " lag={} lag-ms={:.1} log-mbit-s={:.3} delay-ms={:.2} delay-p99-ms={:.2} \
                 outputs={} log-bytes={} icount={}",
                m.lag_entries,
                m.lag_ms,
                m.log_mbit_s,
                m.delay_ms,
                m.delay_p99_ms,
                m.outputs,
                m.log_bytes,
                m.icount
            )?;
        }
        if let Some(b) = &self.balloon {
            // Shortest round-trip form: `32/31.5`.
            write!(f, " balloon={}/{}", b.target, b.actual)?;
        }
        if let Some(halt) = self.halt {
            write!(f, " halt={halt}")?;
        }
        if self.suspected {
            f.write_str(" suspected=yes")?;
        }
        if let Some(verdict) = self.verdict {
            write!(f, " verdict={}", verdict_str(verdict))?;
        }
        if self.took_over {
            f.write_str(" took-over=yes")?;
        }
        if self.announced {
            f.write_str(" announced=yes")?;
        }
        if let Some(channel) = self.channel {
            write!(f, " channel={}", channel.as_str())?;
        }
        if let Some(clone) = &self.clone {
            write!(
                f,
                " clone={} clone-mib={:.1}/{:.1}",
                clone.stage.as_str(),
                clone.done_mib,
                clone.total_mib
            )?;
        }
        if self.clones > 0 {
            write!(f, " clones={}", self.clones)?;
        }
        if let Some(ms) = self.clone_pause_ms {
            write!(f, " clone-pause-ms={ms:.2}")?;
        }
        if let Some(bytes) = self.clone_bytes {
            write!(f, " clone-bytes={bytes}")?;
        }
        if let Some(addr) = self.metrics {
            write!(f, " metrics={addr}")?;
        }
        Ok(())
    }
}

/// The keys of [`Measures`]' fields.
const MEASURES: [&str; 8] = [
    "lag",
    "lag-ms",
    "log-mbit-s",
    "delay-ms",
    "delay-p99-ms",
    "outputs",
    "log-bytes",
    "icount",
];

fn field<T: FromStr>(key: &'static str, value: &str) -> Result<T, StatusError> {
    value
        .parse()
        .map_err(|_| StatusError::Field(key, value.to_string()))
}

impl FromStr for StatusLine {
    type Err = StatusError;

    fn from_str(line: &str) -> Result<StatusLine, StatusError> {
        let mut words = line.split_whitespace();
        let state: VmState = words.next().ok_or(StatusError::Empty)?.parse()?;
        let mut status = StatusLine::new(state, 0);
        let mut pid = None;
        let mut m = Measures::default();
        let mut measured = false;
        let mut clone_stage = None;
        let mut clone_mib = (0.0, 0.0);
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(StatusError::Field("field", word.to_string()));
            };
            match key {
                "pid" => pid = Some(field("pid", value)?),
                "role" => status.role = Some(value.to_string()),
                "name" => status.name = Some(value.to_string()),
                "was" => status.was = Some(value.parse()?),
                "epoch" => status.epoch = Some(field("epoch", value)?),
                "halt" => {
                    status.halt = Some(
                        value
                            .parse()
                            .map_err(|_| StatusError::Field("halt", value.to_string()))?,
                    )
                }
                "suspected" => status.suspected = value == "yes",
                "verdict" => status.verdict = Some(parse_verdict(value)?),
                "took-over" => status.took_over = value == "yes",
                "announced" => status.announced = value == "yes",
                "channel" => status.channel = Some(value.parse()?),
                "clone" => clone_stage = Some(value.parse()?),
                "clone-mib" => {
                    let (done, total) = value
                        .split_once('/')
                        .ok_or_else(|| StatusError::Field("clone-mib", value.to_string()))?;
                    clone_mib = (field("clone-mib", done)?, field("clone-mib", total)?);
                }
                "clones" => status.clones = field("clones", value)?,
                "clone-pause-ms" => status.clone_pause_ms = Some(field("clone-pause-ms", value)?),
                "clone-bytes" => status.clone_bytes = Some(field("clone-bytes", value)?),
                "metrics" => status.metrics = Some(field("metrics", value)?),
                "lag" => m.lag_entries = field("lag", value)?,
                "lag-ms" => m.lag_ms = field("lag-ms", value)?,
                "log-mbit-s" => m.log_mbit_s = field("log-mbit-s", value)?,
                "delay-ms" => m.delay_ms = field("delay-ms", value)?,
                "delay-p99-ms" => m.delay_p99_ms = field("delay-p99-ms", value)?,
                "outputs" => m.outputs = field("outputs", value)?,
                "log-bytes" => m.log_bytes = field("log-bytes", value)?,
                "icount" => m.icount = field("icount", value)?,
                "balloon" => {
                    let (target, actual) = value
                        .split_once('/')
                        .ok_or_else(|| StatusError::Field("balloon", value.to_string()))?;
                    status.balloon = Some(BalloonMib {
                        target: field("balloon", target)?,
                        actual: field("balloon", actual)?,
                    });
                }
                // A newer writer's field: not an error.
                _ => continue,
            }
            measured |= MEASURES.contains(&key);
        }
        status.pid = pid.ok_or(StatusError::NoPid)?;
        status.clone = clone_stage.map(|stage| CloneProgress {
            stage,
            done_mib: clone_mib.0,
            total_mib: clone_mib.1,
        });
        status.measures = measured.then_some(m);
        Ok(status)
    }
}

mod halt_serde {
    use ftvm_node::HaltCode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(code: &Option<HaltCode>, s: S) -> Result<S::Ok, S::Error> {
        match code {
            Some(code) => s.serialize_some(code.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HaltCode>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod verdict_serde {
    use ftvm_ft::golive::Verdict;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(verdict: &Option<Verdict>, s: S) -> Result<S::Ok, S::Error> {
        match verdict {
            Some(v) => s.serialize_some(super::verdict_str(*v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Verdict>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse_verdict(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The status line of a pair's switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchStatus {
    pub pid: u32,
    /// Ports attached (the gateway's among them).
    pub ports: usize,
    /// The UDP address VMs attach to.
    pub addr: String,
    /// Times a VM's address moved to another port: a backup that went
    /// live announced it.
    pub moves: u64,
    /// VM ports detached because they went silent (a VM that died or
    /// froze).
    pub expired: u64,
    /// Datagrams dropped as unauthenticated (without the pair's key, or
    /// repeated).
    #[serde(default)]
    pub refused: u64,
    /// Where its metrics are served (`--metrics`).
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddr>,
}

impl fmt::Display for SwitchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "switch pid={} ports={} addr={} moves={} expired={} refused={}",
            self.pid, self.ports, self.addr, self.moves, self.expired, self.refused
        )?;
        if let Some(addr) = self.metrics {
            write!(f, " metrics={addr}")?;
        }
        Ok(())
    }
}

impl FromStr for SwitchStatus {
    type Err = StatusError;

    fn from_str(line: &str) -> Result<SwitchStatus, StatusError> {
        let mut words = line.split_whitespace();
        if words.next() != Some("switch") {
            return Err(StatusError::Field("state", line.to_string()));
        }
        // A field an older writer did not write reads as zero.
        let mut status = SwitchStatus {
            pid: 0,
            ports: 0,
            addr: String::new(),
            moves: 0,
            expired: 0,
            refused: 0,
            metrics: None,
        };
        let mut pid = None;
        for word in words {
            match word.split_once('=') {
                Some(("pid", v)) => pid = Some(field("pid", v)?),
                Some(("ports", v)) => status.ports = field("ports", v)?,
                Some(("addr", v)) => status.addr = v.to_string(),
                Some(("moves", v)) => status.moves = field("moves", v)?,
                Some(("expired", v)) => status.expired = field("expired", v)?,
                Some(("refused", v)) => status.refused = field("refused", v)?,
                Some(("metrics", v)) => status.metrics = Some(field("metrics", v)?),
                // A newer writer's field.
                Some(_) => {}
                None => return Err(StatusError::Field("field", word.to_string())),
            }
        }
        status.pid = pid.ok_or(StatusError::NoPid)?;
        Ok(status)
    }
}

/// One line of a VM's history (`NAME.history` in the pair's state
/// directory, JSON a line): its numbers once a second, and at once when
/// its story changes, with what changed (`event`). `ftvm plot` draws it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryLine {
    /// Wall-clock time, ms since the Unix epoch.
    pub unix_ms: u64,
    pub vm: String,
    pub state: VmState,
    pub epoch: u64,
    /// The numbers of its status line, as fields of the line.
    #[serde(flatten)]
    pub measures: Measures,
    /// What changed, if this line is for a change: as the VM's
    /// `ftvm::state` log event says it (`backup -> live`, `primary:
    /// suspects its peer`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// How long the guest stood still for a clone that just finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_pause_ms: Option<f64>,
}

/// A VM's history file, appended to; past [`HISTORY_MAX_BYTES`] it starts
/// again, the old one kept as `NAME.history.old`.
pub struct HistoryFile {
    path: PathBuf,
    written: u64,
}

/// How big a history file grows before it starts again (about nine hours
/// of a line a second).
pub const HISTORY_MAX_BYTES: u64 = 8 << 20;

impl HistoryFile {
    pub fn new(path: impl Into<PathBuf>) -> HistoryFile {
        let path = path.into();
        let written = std::fs::metadata(&path).map_or(0, |m| m.len());
        HistoryFile { path, written }
    }

    /// Append `line`; a history is a convenience, so a failure is only
    /// logged.
    pub fn append(&mut self, line: &HistoryLine) {
        use std::io::Write;
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        if self.written + text.len() as u64 > HISTORY_MAX_BYTES {
            let mut old = self.path.clone().into_os_string();
            old.push(".old");
            let _ = std::fs::rename(&self.path, old);
            self.written = 0;
        }
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut file| file.write_all(text.as_bytes()));
        match appended {
            Ok(()) => self.written += text.len() as u64,
            Err(e) => tracing::debug!(path = %self.path.display(), %e, "history not written"),
        }
    }

    /// Every line of the history at `path` (its `.old` part first), in
    /// order; lines that do not read are skipped.
    pub fn read(path: &Path) -> Vec<HistoryLine> {
        let mut old = path.to_path_buf().into_os_string();
        old.push(".old");
        [PathBuf::from(old), path.to_path_buf()]
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<HistoryLine>>()
            })
            .collect()
    }
}

/// What `ftvm status --json` prints: every VM's line, and the switch's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairStatus {
    pub vms: Vec<StatusLine>,
    pub switch: Option<SwitchStatus>,
}

/// A status file, rewritten whole and atomically (by rename), so a reader
/// never sees half a line.
#[derive(Clone, Debug)]
pub struct StatusFile {
    path: PathBuf,
}

impl StatusFile {
    pub fn new(path: impl Into<PathBuf>) -> StatusFile {
        StatusFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `line`; a failure is logged, not fatal (the status is for
    /// people; the VM must go on).
    pub fn write(&self, line: &impl fmt::Display) {
        if let Err(e) = write_atomically(&self.path, format!("{line}\n").as_bytes()) {
            tracing::warn!(status = %self.path.display(), "writing the status: {e}");
        }
    }

    /// The line the file holds, if it holds one.
    pub fn read<T: FromStr>(path: &Path) -> Option<T> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

/// Replace `path` with `bytes` atomically: written beside it, then renamed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn full() -> StatusLine {
        StatusLine {
            state: VmState::Live,
            pid: 31803,
            role: Some("backup".into()),
            name: Some("vm3".into()),
            epoch: Some(3),
            was: None,
            halt: Some(HaltCode::LostTestAndSet),
            suspected: true,
            verdict: Some(Verdict::Won),
            took_over: true,
            announced: true,
            channel: Some(ChannelClose::Forged),
            clones: 2,
            clone_pause_ms: Some(7.25),
            clone_bytes: Some(12_345_678),
            clone: Some(CloneProgress {
                stage: CloneStage::CatchingUp,
                done_mib: 12.5,
                total_mib: 128.0,
            }),
            measures: Some(Measures {
                lag_entries: 4,
                lag_ms: 2.5,
                log_mbit_s: 0.125,
                delay_ms: 4.25,
                delay_p99_ms: 56.75,
                outputs: 89,
                log_bytes: 14172,
                icount: 141_144_799,
            }),
            balloon: Some(BalloonMib {
                target: 32.0,
                actual: 31.5,
            }),
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 46511))),
        }
    }

    #[test]
    fn a_line_reads_back_as_what_was_written() {
        for line in [
            full(),
            StatusLine::new(VmState::Waiting, 7),
            full().dead(),
            StatusLine {
                measures: Some(Measures::default()),
                ..StatusLine::new(VmState::Primary, 1)
            },
        ] {
            let text = line.to_string();
            assert_eq!(text.parse::<StatusLine>(), Ok(line.clone()), "{text}");
            let json = serde_json::to_string(&line).expect("json");
            let back: StatusLine = serde_json::from_str(&json).expect("json back");
            assert_eq!(back, line, "{json}");
        }
        let switch = SwitchStatus {
            pid: 9,
            ports: 3,
            addr: "127.0.0.1:4000".into(),
            moves: 2,
            expired: 1,
            refused: 4,
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 4001))),
        };
        assert_eq!(
            switch.to_string(),
            "switch pid=9 ports=3 addr=127.0.0.1:4000 moves=2 expired=1 refused=4 \
             metrics=127.0.0.1:4001"
        );
        assert_eq!(
            switch.to_string().parse::<SwitchStatus>(),
            Ok(switch.clone())
        );
        let json = serde_json::to_string(&switch).expect("json");
        assert_eq!(
            serde_json::from_str::<SwitchStatus>(&json).expect("json back"),
            switch
        );
    }

    #[test]
    fn a_switch_line_without_the_counters_reads_them_as_zero() {
        let old: SwitchStatus = "switch pid=9 ports=3 addr=127.0.0.1:4000"
            .parse()
            .expect("a line of an older switch");
        assert_eq!((old.moves, old.expired), (0, 0));
        assert_eq!(old.ports, 3);
        assert!("switch pid=9 moves=x".parse::<SwitchStatus>().is_err());
        assert_eq!(
            "switch ports=3".parse::<SwitchStatus>(),
            Err(StatusError::NoPid)
        );
        let newer: SwitchStatus = "switch pid=9 ports=1 addr=a moves=1 colour=blue"
            .parse()
            .expect("a newer field");
        assert_eq!(newer.moves, 1);
    }

    #[test]
    fn bad_lines_are_errors_and_unknown_fields_are_not() {
        assert_eq!("".parse::<StatusLine>(), Err(StatusError::Empty));
        assert!("sleeping pid=3".parse::<StatusLine>().is_err());
        assert_eq!("live".parse::<StatusLine>(), Err(StatusError::NoPid));
        assert!("live pid=x".parse::<StatusLine>().is_err());
        assert!("live pid=3 halt=tired".parse::<StatusLine>().is_err());
        assert!("live pid=3 balloon=32".parse::<StatusLine>().is_err());
        assert!("live pid=3 balloon=a/1".parse::<StatusLine>().is_err());
        let line: StatusLine = "live pid=3 balloon=64/0".parse().expect("a balloon");
        assert_eq!(
            line.balloon,
            Some(BalloonMib {
                target: 64.0,
                actual: 0.0
            })
        );
        let line: StatusLine = "live pid=3 colour=blue".parse().expect("a newer field");
        assert_eq!(line, StatusLine::new(VmState::Live, 3));
    }
}
