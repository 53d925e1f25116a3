//! The run loop: one VM process on this host, driving its
//! `Node`. `ftvm run` (a node alone), `ftvm primary`
//! and `ftvm backup` all run this loop; what differs is what is plugged
//! into it ([`VmHost`]):
//!
//! - I/O: `ftvm run` answers at the instruction boundary where the guest
//!   asked ([`Host::answer_now`]), so a run without other input is
//!   reproducible; a VM of a pair performs its I/O in a thread, so a slow
//!   `fsync` never stalls its heartbeats.
//! - The network: a backend in this process is polled (the user-mode
//!   gateway of `ftvm run`, looked at every millisecond while the guest
//!   idles); a network outside it (a pair's switch, a TAP interface) is
//!   read by the loop when epoll says it has frames, and written by the
//!   loop itself (not the I/O thread): every hop between threads is a
//!   wake-up, tens of microseconds on every frame.
//! - The console: the terminal (`ftvm run`), or a socket for `ftvm
//!   console` and a file written at stream offsets (a pair).
//! - The logging channel and the arbiter, for a VM of a pair (the channel
//!   read by the loop itself when epoll says it has something: see
//!   `crate::channel`); a recording file for `ftvm run --record`.
//!
//! Threads (the console, the I/O thread, the arbiter, a clone's sender)
//! only report to the loop through one event channel, and ring its
//! waker; the loop waits in epoll for the waker, the logging channel or
//! the network. The node is only ever touched here.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use ftvm_board::{DeviceKind, Input, IoRequest};
use ftvm_ft::golive::Verdict;
use ftvm_net::FrameReceiver;
use ftvm_node::{Effect, HaltReason, Host, Node, Ran, Status, Time};

use crate::HostError;
use crate::arbiter::{Arbiter, ArbiterThread};
use crate::channel::{Channel, ChannelEvent};
use crate::clock::Clock;
use crate::clone::CloneEvent;
use crate::console::ConsoleFile;
use crate::control::{Reply, Request};
use crate::io::{HostIo, IoJob, IoThread};
use crate::metrics::{Exposition, Histogram, Kind, Text};
use crate::status::{
    BalloonMib, ChannelClose, HistoryFile, HistoryLine, Measures, StatusFile, StatusLine, VmState,
};
use crate::terminal::{ConsoleEvent, RawMode};

mod cloning;

use cloning::CloneJob;

/// How often an idle guest's host looks at a polled network backend.
const NET_POLL: Duration = Duration::from_millis(1);

/// The loop's epoll tokens: a thread's event, the logging channel, the
/// frames of a network outside the process.
const WAKER: mio::Token = mio::Token(0);
const CHANNEL: mio::Token = mio::Token(1);
const NETWORK: mio::Token = mio::Token(2);
/// Host input for the network backend the loop polls.
const NET_INPUT: mio::Token = mio::Token(3);

/// How often the status file is rewritten.
const STATUS_EVERY: Duration = Duration::from_millis(200);
/// How often a line of the VM's history is written, between changes.
const HISTORY_EVERY: Duration = Duration::from_secs(1);

/// Where the guest's console input comes from.
pub enum ConsoleIn {
    None,
    /// The terminal (stdin): Ctrl-A x quits.
    Terminal,
    /// A Unix socket that `ftvm console` types into.
    Socket(PathBuf),
}

/// Where the guest's console output goes, besides the console file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdout {
    /// The console is the point of the run (`ftvm run`): a failed write
    /// (a closed pipe) ends it.
    Required,
    /// Nobody may be reading (a detached daemon): the console file is the
    /// console of record, and a failed write is ignored.
    BestEffort,
    /// Stdout is /dev/null (a daemon's): not written at all, which saves
    /// a system call on every release of console output.
    Discarded,
}

impl Stdout {
    /// [`Stdout::Discarded`] in place of `BestEffort` when stdout is
    /// /dev/null.
    fn resolve(self) -> Stdout {
        use std::os::fd::AsFd;
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let rdev = |file: std::io::Result<std::fs::File>| {
            file.and_then(|f| f.metadata())
                .ok()
                .filter(|m| m.file_type().is_char_device())
                .map(|m| m.rdev())
        };
        let stdout = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(std::fs::File::from);
        let null = std::fs::File::open("/dev/null");
        match (self, rdev(stdout), rdev(null)) {
            (Stdout::BestEffort, Some(out), Some(null)) if out == null => Stdout::Discarded,
            (stdout, ..) => stdout,
        }
    }
}

/// What a VM process has on this host besides its node.
pub struct VmHost {
    pub clock: Clock,
    pub io: HostIo,
    /// Answer I/O at the boundary where the guest asked (`ftvm run`)
    /// rather than in an I/O thread.
    pub inline_io: bool,
    /// Frames from a network outside this process, read by the loop.
    pub frames: Option<Box<dyn FrameReceiver>>,
    pub channel: Option<Channel>,
    pub arbiter: Option<Box<dyn Arbiter>>,
    pub console_in: ConsoleIn,
    pub console_file: Option<ConsoleFile>,
    pub stdout: Stdout,
    /// `ftvm run --record`: where the log goes.
    pub recording: Option<Box<dyn Write>>,
    pub status_file: Option<StatusFile>,
    /// What this VM was started as, and its name, for its status line.
    pub role: Option<String>,
    pub name: Option<String>,
    /// Set by SIGTERM/SIGINT: end cleanly.
    pub stop: Arc<AtomicBool>,
    /// The pair's channel key, to clone this VM into a new backup.
    pub key: Option<[u8; 32]>,
    /// Where `ftvm protect` and the agent ask this VM (see [`crate::control`]).
    pub control: Option<PathBuf>,
    /// Where this VM's metrics are served, and their text
    /// ([`crate::metrics::serve`]).
    pub metrics: Option<(std::net::SocketAddr, Exposition)>,
    /// Where this VM keeps its history (see [`HistoryLine`]).
    pub history: Option<PathBuf>,
}

impl VmHost {
    /// A host with nothing plugged in but its clock and devices.
    pub fn new(clock: Clock, io: HostIo, stop: Arc<AtomicBool>) -> VmHost {
        VmHost {
            clock,
            io,
            inline_io: false,
            frames: None,
            channel: None,
            arbiter: None,
            console_in: ConsoleIn::None,
            console_file: None,
            stdout: Stdout::BestEffort,
            recording: None,
            status_file: None,
            role: None,
            name: None,
            stop,
            key: None,
            control: None,
            metrics: None,
            history: None,
        }
    }
}

/// What the threads report to the loop.
enum Event {
    /// Bytes typed on the guest's console (`ftvm console`).
    Typed(Vec<u8>),
    /// A key at the terminal.
    Key(ConsoleEvent),
    /// The terminal's input is closed: no more keys will come.
    InputClosed,
    Control(Request, Sender<Reply>),
    Clone(CloneEvent),
    /// The I/O thread's answer to a request.
    Done(Input),
    Verdict(Verdict),
}

/// A thread's way to the loop: the event, then a ring of the loop's
/// waker, so a loop waiting in epoll wakes for it.
#[derive(Clone)]
struct LoopSender {
    events: Sender<Event>,
    waker: Arc<mio::Waker>,
}

impl LoopSender {
    /// Whether the loop still listens.
    fn send(&self, event: Event) -> bool {
        if self.events.send(event).is_err() {
            return false;
        }
        // A failed ring (never seen) leaves the event for the loop's next
        // turn, at most its longest wait (50 ms) later.
        if let Err(e) = self.waker.wake() {
            tracing::warn!(%e, "cannot wake the run loop");
        }
        true
    }
}

/// How the loop performs I/O.
enum Io {
    Inline(HostIo),
    /// The disk and entropy in the thread; the network (`net` alone) in
    /// the loop: a frame's send never waits for a disk.
    Thread {
        thread: IoThread,
        net: HostIo,
    },
}

/// The node's view of the host while a slice runs.
struct SliceHost<'a> {
    clock: &'a Clock,
    io: Option<&'a mut HostIo>,
    /// Whether the guest transmitted a frame in this slice.
    sent_frames: bool,
}

impl Host for SliceHost<'_> {
    fn now(&mut self) -> Time {
        self.clock.now()
    }

    fn answer_now(&mut self, request: &IoRequest) -> Option<Input> {
        self.sent_frames |= matches!(request, IoRequest::NetTransmit { .. });
        self.io.as_mut().map(|io| io.serve(request))
    }
}

struct Vm {
    node: Node,
    clock: Clock,
    events: Receiver<Event>,
    io: Io,
    /// A network backend in this process, polled by the loop.
    polled_net: bool,
    /// A network outside it: the frames for the guest.
    frames: Option<Box<dyn FrameReceiver>>,
    received: Vec<Vec<u8>>,
    /// The loop gave the node an I/O completion since the last slice.
    answered: bool,
    /// Whether `epoll_pwait2` works here (see [`wait_precisely`]).
    precise_wait: bool,
    channel: Option<Channel>,
    arbiter: Option<ArbiterThread>,
    pair: String,
    /// Where the loop waits: its waker, the logging channel, the network.
    poll: mio::Poll,
    poll_events: mio::Events,
    /// What reading the channel found, reused from turn to turn.
    channel_events: Vec<ChannelEvent>,
    /// A sender for the threads the loop starts later (a clone's).
    to_loop: Option<LoopSender>,
    key: Option<[u8; 32]>,
    clone: Option<CloneJob>,
    /// The VM's disk and its size: a clone with a private disk sends it.
    disk: Option<(PathBuf, u64)>,
    clone_pause_ms: Option<f64>,
    clone_bytes: Option<u64>,
    console_file: Option<ConsoleFile>,
    stdout: Stdout,
    recording: Option<Box<dyn Write>>,
    status_file: Option<StatusFile>,
    role: Option<String>,
    name: Option<String>,
    status_at: Instant,
    /// What the status line said last of the VM's story (its state, its
    /// milestones, its channel, whether it clones): a change is written
    /// at once.
    story: Option<Story>,
    rate_sample: (Instant, u64),
    log_mbit_s: f64,
    channel_closed: Option<ChannelClose>,
    /// The balloon as last seen: a VM that ended or halted no longer has
    /// its machine, and its last line still says it.
    balloon: Option<BalloonMib>,
    stop: Arc<AtomicBool>,
    stopping: bool,
    /// The terminal's input ended (stdin closed), or there is none.
    input_closed: bool,
    /// Whether this VM has a network, and whether that was checked
    /// against the machine the primary runs.
    has_net: bool,
    net_checked: bool,
    console_socket: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    metrics: Option<(std::net::SocketAddr, Exposition)>,
    /// Take-overs by this process so far: a counter for the metrics (the
    /// node's milestones start again with each epoch).
    failovers: u64,
    /// Planned hand-overs this VM took (`ftvm migrate`), likewise.
    handovers: u64,
    /// When this VM began to suspect its peer, and how long its last
    /// take-over took from there (detection to running the guest).
    suspected_at: Option<Instant>,
    last_failover: Option<Duration>,
    history: Option<HistoryFile>,
    history_at: Instant,
    _raw_mode: Option<RawMode>,
}

/// Run `node` on `host` until it is done; the node as it ended.
pub fn run(node: Node, host: VmHost) -> Result<Node, HostError> {
    let (events_tx, events) = std::sync::mpsc::channel::<Event>();
    let poll = mio::Poll::new().map_err(|e| HostError::io("creating the run loop's epoll", e))?;
    let waker = mio::Waker::new(poll.registry(), WAKER)
        .map_err(|e| HostError::io("creating the run loop's waker", e))?;
    let tx = LoopSender {
        events: events_tx,
        waker: Arc::new(waker),
    };
    let sink = |tx: &LoopSender| {
        let tx = tx.clone();
        move |event| tx.send(event)
    };
    let VmHost {
        clock,
        mut io,
        inline_io,
        frames,
        mut channel,
        arbiter,
        console_in,
        console_file,
        stdout,
        recording,
        status_file,
        role,
        name,
        stop,
        key,
        control,
        metrics,
        history,
    } = host;
    let has_net = io.net.is_some();
    let disk = io.disk.as_ref().map(|d| (d.path().to_path_buf(), d.len()));
    let polled_net = has_net && frames.is_none();
    if let Some(net) = io.net.as_mut().filter(|_| polled_net) {
        net.backend
            .watch_input(poll.registry(), NET_INPUT)
            .map_err(|e| HostError::io("watching the network's host sockets", e))?;
    }
    if let Some(channel) = &mut channel {
        let timeout = Duration::from_millis(node.config().detector.timeout_ms);
        channel.watch(poll.registry(), CHANNEL, timeout)?;
    }
    if let Some(path) = &control {
        let to_loop = tx.clone();
        crate::control::listen(path, move |request, reply| {
            to_loop.send(Event::Control(request, reply))
        })
        .map_err(|e| HostError::io(format!("listening on {}", path.display()), e))?;
    }
    if let Some(frames) = &frames {
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&frames.fd()),
                NETWORK,
                mio::Interest::READABLE,
            )
            .map_err(|e| HostError::io("watching the VM's network", e))?;
    }
    let mut console_socket = None;
    let mut raw_mode = None;
    let mut input_closed = true;
    match console_in {
        ConsoleIn::None => {}
        ConsoleIn::Terminal => {
            let to_loop = sink(&tx);
            let closed = tx.clone();
            raw_mode = Some(
                crate::terminal::read_stdin(
                    move |key| to_loop(Event::Key(key)),
                    move || {
                        closed.send(Event::InputClosed);
                    },
                )
                .map_err(|e| HostError::io("putting the terminal in raw mode", e))?,
            );
            input_closed = false;
        }
        ConsoleIn::Socket(path) => {
            let to_loop = sink(&tx);
            crate::console::listen_for_typing(&path, move |bytes| to_loop(Event::Typed(bytes)))
                .map_err(|e| {
                    HostError::io(
                        format!("listening for console input on {}", path.display()),
                        e,
                    )
                })?;
            console_socket = Some(path);
        }
    }
    let arbiter = arbiter
        .map(|arbiter| {
            let to_loop = sink(&tx);
            ArbiterThread::spawn(arbiter, move |v| to_loop(Event::Verdict(v)))
                .map_err(|e| HostError::io("starting the arbiter's thread", e))
        })
        .transpose()?;
    let io = if inline_io {
        Io::Inline(io)
    } else {
        let to_loop = sink(&tx);
        let net = HostIo {
            disk: None,
            net: io.net.take(),
        };
        let thread = IoThread::spawn(io, move |done| to_loop(Event::Done(done)))
            .map_err(|e| HostError::io("starting the I/O thread", e))?;
        Io::Thread { thread, net }
    };
    // The loop keeps a sender of its own only when it may start threads
    // later (a clone's); otherwise, when the threads are all gone,
    // waiting would be forever.
    let to_loop = control.is_some().then(|| tx.clone());
    drop(tx);
    let pair = node.config().pair.clone();
    let vm = Vm {
        node,
        clock,
        events,
        io,
        polled_net,
        frames,
        received: Vec::new(),
        answered: false,
        precise_wait: true,
        channel,
        arbiter,
        pair,
        poll,
        poll_events: mio::Events::with_capacity(16),
        channel_events: Vec::new(),
        to_loop,
        key,
        clone: None,
        disk,
        clone_pause_ms: None,
        clone_bytes: None,
        console_file,
        stdout: stdout.resolve(),
        recording,
        status_file,
        role,
        name,
        status_at: Instant::now(),
        story: None,
        rate_sample: (Instant::now(), 0),
        log_mbit_s: 0.0,
        channel_closed: None,
        balloon: None,
        stop,
        stopping: false,
        input_closed,
        has_net,
        net_checked: false,
        console_socket,
        control_socket: control,
        metrics,
        failovers: 0,
        handovers: 0,
        suspected_at: None,
        last_failover: None,
        history: history.map(HistoryFile::new),
        history_at: Instant::now(),
        _raw_mode: raw_mode,
    };
    vm.serve()
}

impl Vm {
    fn serve(mut self) -> Result<Node, HostError> {
        let result = self.serve_until_done();
        if result.is_err() {
            // A run that stops on an error still leaves every entry it
            // logged.
            let _ = self.node.flush_log(self.clock.now());
        }
        // Whatever happened, what the node decided last is said.
        let flushed = self.perform();
        self.report(true);
        for path in [&self.console_socket, &self.control_socket]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_file(path);
        }
        if let Some(recording) = &mut self.recording {
            recording
                .flush()
                .map_err(|e| HostError::io("writing the recording", e))?;
        }
        result.and(flushed)?;
        Ok(self.node)
    }

    fn serve_until_done(&mut self) -> Result<(), HostError> {
        loop {
            if self.stop.load(Ordering::Relaxed) && !self.stopping {
                self.stopping = true;
                tracing::info!("asked to stop");
                self.node.stop(self.clock.now())?;
            }
            while let Ok(event) = self.events.try_recv() {
                self.handle(event)?;
            }
            self.read_channel();
            self.read_frames()?;
            self.poll_net()?;
            self.try_start_clone();
            self.node.tick(self.clock.now());
            self.perform()?;
            let (ran, sent_frames) = {
                let io = match &mut self.io {
                    Io::Inline(io) => Some(io),
                    Io::Thread { .. } => None,
                };
                let mut host = SliceHost {
                    clock: &self.clock,
                    io,
                    sent_frames: false,
                };
                (self.node.run(&mut host)?, host.sent_frames)
            };
            self.answered = false;
            self.perform()?;
            // Once the snapshot is sent the node decides: the clone is over
            // when the VM no longer clones (caught up, given up, or
            // caught up and then lost, all maybe within one turn).
            let over = self.clone.as_ref().is_some_and(|job| {
                !self.node.status().runs_the_guest()
                    || (job.sent && *self.node.status() != Status::Cloning)
            });
            if over {
                self.clone = None;
            }
            self.report(false);
            match ran {
                Ran::Busy => {}
                Ran::Done => return Ok(()),
                Ran::Throttled => self.wait(Duration::from_millis(1))?,
                Ran::Blocked => self.wait(self.clock.until_ms(self.node.deadline_ms()))?,
                Ran::Idle { sleep_ns: Some(0) } => self.node.wake(self.clock.now())?,
                // What the guest sent before it went idle reaches the
                // host now (the loop's next turn polls the network), not
                // after the wait.
                Ran::Idle { .. } if sent_frames && self.polled_net => {}
                // Likewise a completion the loop gave the node after the
                // slice (a sent frame's): the guest takes its interrupt now.
                Ran::Idle { .. } if self.answered => {}
                Ran::Idle { sleep_ns } => {
                    if sleep_ns.is_none() && self.nothing_can_wake_the_guest() {
                        return Err(HostError::Config(
                            "the guest is waiting for an interrupt with no timer armed and the \
                             console input is closed: it can never wake up"
                                .into(),
                        ));
                    }
                    let mut wait = self.clock.until_ms(self.node.deadline_ms());
                    if let Some(ns) = sleep_ns {
                        wait = wait.min(Duration::from_nanos(ns));
                    }
                    if self.polled_net {
                        wait = wait.min(NET_POLL);
                    }
                    self.wait(wait)?;
                }
            }
        }
    }

    /// Whether no event can ever come: no terminal, no network, no channel,
    /// no I/O in flight (only `ftvm run` can get here).
    fn nothing_can_wake_the_guest(&self) -> bool {
        self.input_closed
            && !self.has_net
            && self.channel.is_none()
            && self.console_socket.is_none()
            && matches!(self.io, Io::Inline(_))
    }

    /// Sleep until `timeout`, a thread's event or the logging channel's
    /// input; the loop's next turn takes what came.
    fn wait(&mut self, timeout: Duration) -> Result<(), HostError> {
        let timeout = timeout.clamp(Duration::from_micros(100), Duration::from_millis(50));
        if let Ok(event) = self.events.try_recv() {
            return self.handle(event);
        }
        let waited = if self.precise_wait {
            match wait_precisely(&self.poll, timeout) {
                // A kernel before 5.11, or a sandbox that forbids the
                // call: waits to the millisecond from now on.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                    tracing::info!(%e, "epoll_pwait2 unavailable: waits are rounded up to 1 ms");
                    self.precise_wait = false;
                    self.poll.poll(&mut self.poll_events, Some(timeout))
                }
                waited => waited,
            }
        } else {
            self.poll.poll(&mut self.poll_events, Some(timeout))
        };
        match waited {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(HostError::io("waiting for events", e)),
        }
    }

    /// The frames that came from a network outside the process: the
    /// guest's input if this VM runs the guest (a backup's port is dark).
    fn read_frames(&mut self) -> Result<(), HostError> {
        let Some(frames) = &mut self.frames else {
            return Ok(());
        };
        if let Err(e) = frames.recv_ready(&mut self.received) {
            tracing::error!("the VM's network card lost its network: {e}");
            // The sending half keeps the socket open, and with it the
            // registration.
            let _ = self
                .poll
                .registry()
                .deregister(&mut mio::unix::SourceFd(&frames.fd()));
            self.frames = None;
        }
        let runs_the_guest = self.node.status().runs_the_guest();
        for frame in std::mem::take(&mut self.received) {
            if runs_the_guest {
                self.node
                    .input(Input::NetReceive { frame }, self.clock.now())?;
            }
        }
        Ok(())
    }

    /// Whatever the logging channel holds now, to the node.
    fn read_channel(&mut self) {
        let Some(channel) = &mut self.channel else {
            return;
        };
        if !channel.is_open() {
            return;
        }
        let mut events = std::mem::take(&mut self.channel_events);
        channel.read_available(&mut events);
        for event in events.drain(..) {
            self.channel_event(event);
        }
        self.channel_events = events;
    }

    fn channel_event(&mut self, event: ChannelEvent) {
        let now = self.clock.now();
        match event {
            ChannelEvent::Frame(frame) => {
                let Some(channel) = &mut self.channel else {
                    return;
                };
                if !channel.is_open() {
                    return;
                }
                match channel.open(&frame) {
                    Ok(message) => {
                        self.node.receive(&message, now);
                        self.check_net();
                    }
                    Err((why, close)) => self.close_channel(&why, close),
                }
            }
            ChannelEvent::Closed { why, close } => self.close_channel(&why, close),
        }
    }

    /// Frames a backend in this process has for the guest.
    fn poll_net(&mut self) -> Result<(), HostError> {
        if !self.polled_net {
            return Ok(());
        }
        let Io::Inline(io) = &mut self.io else {
            return Ok(());
        };
        let frames = io.poll_net();
        if frames.is_empty() || !self.node.status().runs_the_guest() {
            return Ok(());
        }
        for frame in frames {
            self.node.input(frame, self.clock.now())?;
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), HostError> {
        let now = self.clock.now();
        match event {
            Event::Done(done) => self.node.input(done, now)?,
            Event::Verdict(verdict) => self.node.verdict(verdict, now)?,
            // The VM's own input while it runs the guest (logged if it has
            // a backup); a backup's guest hears the world only through the
            // log.
            Event::Typed(bytes) => self.type_in(&bytes)?,
            Event::Key(ConsoleEvent::Byte(byte)) => self.type_in(&[byte])?,
            Event::Key(ConsoleEvent::Quit) => {
                if !self.stopping {
                    self.stopping = true;
                    self.node.stop(now)?;
                }
            }
            Event::InputClosed => self.input_closed = true,
            Event::Control(request, reply) => {
                let _ = reply.send(self.control(request));
            }
            Event::Clone(event) => self.clone_event(event)?,
        }
        Ok(())
    }

    fn type_in(&mut self, bytes: &[u8]) -> Result<(), HostError> {
        if !self.node.status().runs_the_guest() {
            tracing::warn!(
                bytes = bytes.len(),
                "console input dropped: this VM does not run the guest"
            );
            return Ok(());
        }
        for &byte in bytes {
            self.node
                .input(Input::ConsoleByte(byte), self.clock.now())?;
        }
        Ok(())
    }

    /// A backup without a network for a VM that has a network card would
    /// take over with its cable cut: it gives up at once instead, while
    /// the primary can still run on alone.
    fn check_net(&mut self) {
        if self.net_checked {
            return;
        }
        let Some(config) = self.node.machine_config() else {
            return;
        };
        self.net_checked = true;
        let card = config
            .virtio
            .iter()
            .any(|device| matches!(device, DeviceKind::Net { .. }));
        if card && !self.has_net {
            let why = HaltReason::NoNetwork;
            tracing::error!("{why}");
            self.node.give_up(why);
        }
    }

    /// Give the channel up; the failure detector decides what follows.
    fn close_channel(&mut self, why: &str, close: ChannelClose) {
        let Some(channel) = &mut self.channel else {
            return;
        };
        if !channel.is_open() {
            return;
        }
        tracing::error!("closing the logging channel: {why}");
        channel.close();
        self.channel_closed = Some(close);
        self.node.channel_closed(close == ChannelClose::PeerClosed);
    }

    /// Carry out what the node decided; what it sends to its peer goes
    /// out in one write at the end (a message each was a system call each,
    /// and a read each on the other side).
    fn perform(&mut self) -> Result<(), HostError> {
        loop {
            let effects = self.node.take_effects();
            if effects.is_empty() {
                if let Some(channel) = &mut self.channel {
                    if let Err((why, close)) = channel.flush() {
                        self.close_channel(&why, close);
                    }
                }
                return Ok(());
            }
            for effect in effects {
                match effect {
                    Effect::Send(message) => {
                        if let Some(channel) = &mut self.channel {
                            if let Err((why, close)) = channel.send(&message) {
                                self.close_channel(&why, close);
                            }
                        }
                    }
                    Effect::Record(bytes) => {
                        if let Some(recording) = &mut self.recording {
                            recording
                                .write_all(&bytes)
                                .map_err(|e| HostError::io("writing the recording", e))?;
                        }
                    }
                    Effect::Console { offset, bytes } => self.console(offset, &bytes)?,
                    Effect::Perform(request) => self.perform_io(request, true)?,
                    Effect::PerformOwn(request) => self.perform_io(request, false)?,
                    Effect::Announce { mac } => match &mut self.io {
                        Io::Inline(io) | Io::Thread { net: io, .. } => io.announce(mac),
                    },
                    Effect::CloseChannel => {
                        if let Some(channel) = &mut self.channel {
                            channel.close();
                        }
                        self.channel = None;
                        self.clone = None;
                    }
                    Effect::TestAndSet => match &self.arbiter {
                        Some(arbiter) if arbiter.ask(&self.pair, self.node.config().epoch) => {}
                        Some(_) => return Err(threads_gone("the arbiter's thread")),
                        None => {
                            return Err(HostError::Config(
                                "a test-and-set without an arbiter".into(),
                            ));
                        }
                    },
                }
            }
        }
    }

    fn perform_io(&mut self, request: IoRequest, answer: bool) -> Result<(), HostError> {
        let io = match &mut self.io {
            Io::Inline(io) => io,
            Io::Thread { net, .. } if matches!(request, IoRequest::NetTransmit { .. }) => net,
            Io::Thread { thread, .. } => {
                if !thread.send(IoJob::Request { request, answer }) {
                    return Err(threads_gone("the I/O thread"));
                }
                return Ok(());
            }
        };
        let done = io.serve(&request);
        if answer {
            self.node.input(done, self.clock.now())?;
            self.answered = true;
        }
        Ok(())
    }

    fn console(&mut self, offset: u64, bytes: &[u8]) -> Result<(), HostError> {
        if let Some(file) = &self.console_file {
            file.write_at(offset, bytes)
                .map_err(|e| HostError::io("writing the console file", e))?;
        }
        if self.stdout == Stdout::Discarded {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        let written = stdout.write_all(bytes).and_then(|()| stdout.flush());
        match (written, self.stdout) {
            (Err(e), Stdout::Required) => {
                Err(HostError::io("writing the guest console to stdout", e))
            }
            _ => Ok(()),
        }
    }

    /// Rewrite the status file every [`STATUS_EVERY`], at once when the
    /// VM's story changed (a failover is read from it), or when `now`;
    /// log each change of the story as an event.
    fn report(&mut self, now: bool) {
        let story = Story {
            state: VmState::of(self.node.status()),
            milestones: self.node.stats().milestones,
            channel: self.channel_closed,
            cloning: self.clone.is_some(),
        };
        let changed = self.story != Some(story);
        // A VM of a pair (`ftvm run`'s stderr is the guest's terminal).
        let event = (changed && self.role.is_some()).then(|| self.log_story(story));
        if event.is_some() || self.history_at.elapsed() >= HISTORY_EVERY {
            self.remember(story, event);
        }
        let before = self.story.map(|s| s.milestones);
        if story.milestones.suspected_peer && !before.is_some_and(|m| m.suspected_peer) {
            self.suspected_at = Some(Instant::now());
        }
        if story.milestones.took_over && !before.is_some_and(|m| m.took_over) {
            // A take-over without a suspicion is a planned hand-over.
            if story.milestones.suspected_peer {
                self.failovers += 1;
                self.last_failover = self.suspected_at.map(|at| at.elapsed());
            } else {
                self.handovers += 1;
            }
        }
        if self.status_file.is_none() && self.metrics.is_none() {
            self.story = Some(story);
            return;
        }
        if !now && !changed && self.status_at.elapsed() < STATUS_EVERY {
            return;
        }
        self.story = Some(story);
        self.status_at = Instant::now();
        if let Some(b) = self.node.machine().and_then(|m| m.balloon()) {
            self.balloon = Some(BalloonMib {
                target: ftvm_node::pages_to_mib(b.target_pages),
                actual: ftvm_node::pages_to_mib(b.actual_pages),
            });
        }
        let stats = self.node.stats();
        let (at, bytes) = self.rate_sample;
        let elapsed = at.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.log_mbit_s = (stats.log_bytes - bytes) as f64 * 8.0 / 1e6 / elapsed.as_secs_f64();
            self.rate_sample = (Instant::now(), stats.log_bytes);
        }
        let status = self.node.status();
        let milestones = stats.milestones;
        let line = StatusLine {
            state: VmState::of(status),
            pid: std::process::id(),
            role: self.role.clone(),
            name: self.name.clone(),
            epoch: Some(self.node.config().epoch),
            was: None,
            halt: match status {
                Status::Halted(why) => Some(why.code()),
                _ => None,
            },
            suspected: milestones.suspected_peer,
            verdict: milestones.verdict,
            took_over: milestones.took_over,
            announced: milestones.announced,
            channel: self.channel_closed,
            clones: milestones.clones,
            clone_pause_ms: self.clone_pause_ms,
            clone_bytes: self.clone_bytes,
            clone: self.clone.as_ref().map(|job| job.thread.progress.get()),
            measures: Some(self.measures()),
            balloon: self.balloon,
            metrics: self.metrics.as_ref().map(|(addr, _)| *addr),
        };
        if let Some((_, exposition)) = &self.metrics {
            exposition.set(self.render_metrics(&line));
        }
        if let Some(file) = &self.status_file {
            file.write(&line);
        }
    }

    /// This VM's metrics as of its status `line`, in Prometheus's text
    /// format, every sample labelled with the pair and the VM's name.
    fn render_metrics(&self, line: &StatusLine) -> String {
        let stats = self.node.stats();
        let mut text = Text::new(vec![
            ("pair", self.pair.clone()),
            ("vm", self.name.clone().unwrap_or_else(|| "vm".into())),
        ]);
        let state_labels: Vec<[(&str, &str); 1]> = VmState::ALL
            .iter()
            .filter(|s| **s != VmState::Dead)
            .map(|s| [("state", s.as_str())])
            .collect();
        let samples: Vec<(&[(&str, &str)], f64)> = state_labels
            .iter()
            .map(|labels| {
                let current = labels[0].1 == line.state.as_str();
                (&labels[..], if current { 1.0 } else { 0.0 })
            })
            .collect();
        text.many(
            "ftvm_vm_state",
            "The VM's state: 1 for the state it is in, 0 for the others.",
            Kind::Gauge,
            &samples,
        );
        let role = [("role", self.role.as_deref().unwrap_or("solo"))];
        text.many(
            "ftvm_vm_info",
            "What the VM was started as.",
            Kind::Gauge,
            &[(&role, 1.0)],
        );
        text.one(
            "ftvm_epoch",
            "The pair's epoch as this VM knows it: one more with each new backup.",
            Kind::Gauge,
            line.epoch.unwrap_or(0) as f64,
        );
        text.one(
            "ftvm_lag_entries",
            "Log entries the backup has not acknowledged (primary) or not executed (backup).",
            Kind::Gauge,
            stats.lag_entries as f64,
        );
        text.one(
            "ftvm_lag_seconds",
            "How long the primary would take to execute what its backup has still to \
             execute: about what a failover now would need to catch up.",
            Kind::Gauge,
            stats.lag_ns as f64 / 1e9,
        );
        text.one(
            "ftvm_log_bytes_total",
            "Log bytes sent to the backup (primary) or received from the primary (backup).",
            Kind::Counter,
            stats.log_bytes as f64,
        );
        text.one(
            "ftvm_log_entries_total",
            "Log entries sent (primary) or received and checked (backup).",
            Kind::Counter,
            stats.log_entries as f64,
        );
        text.one(
            "ftvm_outputs_released_total",
            "Outputs (console bytes, frames, disk writes) released to the world.",
            Kind::Counter,
            stats.outputs as f64,
        );
        let in_seconds = |d: &ftvm_node::Durations| Histogram {
            bounds: ftvm_node::DELAY_BUCKETS_S.to_vec(),
            counts: d.buckets.to_vec(),
            sum: d.sum_ns as f64 / 1e9,
            count: d.count,
        };
        text.histogram(
            "ftvm_output_delay_seconds",
            "The output rule's delay: from an output's production to its release, once the \
             backup holds the log up to it.",
            &in_seconds(&stats.delay_histogram),
        );
        text.histogram(
            "ftvm_ack_round_trip_seconds",
            "A primary's logging round trip: from sending a piece of the log to the backup's \
             acknowledgement that covers it.",
            &in_seconds(&stats.ack_histogram),
        );
        text.one(
            "ftvm_failovers_total",
            "Times this VM took over the guest from a failed peer.",
            Kind::Counter,
            self.failovers as f64,
        );
        text.one(
            "ftvm_last_failover_seconds",
            "How long this VM's last take-over took, from suspecting its primary to running \
             the guest (0: none yet).",
            Kind::Gauge,
            self.last_failover.map_or(0.0, |d| d.as_secs_f64()),
        );
        text.one(
            "ftvm_handovers_total",
            "Planned hand-overs (`ftvm migrate`) this VM took the guest over by.",
            Kind::Counter,
            self.handovers as f64,
        );
        text.one(
            "ftvm_clones_total",
            "New backups cloned from this VM that caught up and protect it.",
            Kind::Counter,
            f64::from(line.clones),
        );
        text.one(
            "ftvm_clone_pause_seconds",
            "How long the guest stood still for the last clone's snapshot.",
            Kind::Gauge,
            line.clone_pause_ms.unwrap_or(0.0) / 1e3,
        );
        text.one(
            "ftvm_clone_sent_bytes",
            "Bytes the last finished clone's snapshot took on the channel.",
            Kind::Gauge,
            line.clone_bytes.unwrap_or(0) as f64,
        );
        text.one(
            "ftvm_clone_progress_ratio",
            "How far a clone in progress is through the VM's RAM (0 to 1; 0 when none).",
            Kind::Gauge,
            line.clone
                .map_or(0.0, |c| c.done_mib / c.total_mib.max(f64::MIN_POSITIVE)),
        );
        text.one(
            "ftvm_guest_instructions_total",
            "Guest instructions executed (the machine's instruction count; a guest reboot \
             starts it again).",
            Kind::Counter,
            stats.icount as f64,
        );
        text.one(
            "ftvm_io_in_flight",
            "Host I/O requests (disk, entropy) the guest waits for.",
            Kind::Gauge,
            self.node.io_in_flight() as f64,
        );
        text.finish()
    }
}

impl Vm {
    /// One event (target `ftvm::state`, info) for a change of the VM's
    /// story, with the pair, the epoch and the VM as fields: what a log
    /// pipeline follows a failover by, across processes and hosts.
    fn log_story(&self, story: Story) -> String {
        let before = self.story;
        let m = story.milestones;
        let what = match before {
            None => story.state.as_str().to_string(),
            Some(b) if b.state != story.state => {
                let how = match (story.state, self.node.status()) {
                    (VmState::Live, _) if m.took_over && !m.suspected_peer => {
                        " (hand-over)".to_string()
                    }
                    (_, Status::Halted(why)) => format!(" ({})", why.code().as_str()),
                    _ => String::new(),
                };
                format!("{} -> {}{how}", b.state.as_str(), story.state.as_str())
            }
            Some(b) => {
                let was = b.milestones;
                let mut changes = Vec::new();
                if m.suspected_peer && !was.suspected_peer {
                    changes.push("suspects its peer".to_string());
                }
                if m.verdict != was.verdict {
                    let verdict = m.verdict.map_or("none", crate::status::verdict_str);
                    changes.push(format!("test-and-set: {verdict}"));
                }
                if m.took_over && !was.took_over {
                    changes.push("took over".to_string());
                }
                if m.announced && !was.announced {
                    changes.push("announced the VM's address".to_string());
                }
                if m.clones != was.clones {
                    changes.push(format!("clone {} protects it", m.clones));
                }
                if story.channel != b.channel {
                    let why = story.channel.map_or("open", ChannelClose::as_str);
                    changes.push(format!("logging channel: {why}"));
                }
                if story.cloning != b.cloning {
                    let stage = if story.cloning { "began" } else { "over" };
                    changes.push(format!("cloning {stage}"));
                }
                format!("{}: {}", story.state.as_str(), changes.join(", "))
            }
        };
        let halt = match self.node.status() {
            Status::Halted(why) => why.code().as_str(),
            _ => "none",
        };
        tracing::info!(
            target: "ftvm::state",
            pair = %self.pair,
            epoch = self.node.config().epoch,
            vm = self.name.as_deref().unwrap_or("vm"),
            role = self.role.as_deref().unwrap_or_default(),
            pid = std::process::id(),
            state = story.state.as_str(),
            previous = before.map_or("none", |b| b.state.as_str()),
            suspected = m.suspected_peer,
            verdict = m.verdict.map_or("none", crate::status::verdict_str),
            took_over = m.took_over,
            announced = m.announced,
            channel = story.channel.map_or("open", ChannelClose::as_str),
            cloning = story.cloning,
            clones = m.clones,
            halt,
            "{what}"
        );
        what
    }

    /// The VM's numbers now, as its status line and history give them.
    fn measures(&self) -> Measures {
        let stats = self.node.stats();
        Measures {
            lag_entries: stats.lag_entries,
            lag_ms: stats.lag_ns as f64 / 1e6,
            log_mbit_s: self.log_mbit_s,
            delay_ms: stats.delay_quantile_ns(0.5) as f64 / 1e6,
            delay_p99_ms: stats.delay_quantile_ns(0.99) as f64 / 1e6,
            outputs: stats.outputs,
            log_bytes: stats.log_bytes,
            icount: stats.icount,
        }
    }

    /// A line of this VM's history: its numbers now, and `event` if the
    /// line is for a change of its story.
    fn remember(&mut self, story: Story, event: Option<String>) {
        self.history_at = Instant::now();
        if self.history.is_none() {
            return;
        }
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let line = HistoryLine {
            unix_ms,
            vm: self.name.clone().unwrap_or_else(|| "vm".into()),
            state: story.state,
            epoch: self.node.config().epoch,
            measures: self.measures(),
            clone_pause_ms: event
                .as_ref()
                .filter(|_| {
                    self.story
                        .is_some_and(|b| story.milestones.clones > b.milestones.clones)
                })
                .and(self.clone_pause_ms),
            event,
        };
        if let Some(history) = &mut self.history {
            history.append(&line);
        }
    }
}

/// The part of a status line that tells what happened, rather than
/// measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Story {
    state: VmState,
    milestones: ftvm_node::Milestones,
    channel: Option<ChannelClose>,
    /// A clone began or ended: whoever waits to clone again reads it.
    cloning: bool,
}

/// Wait in `poll`'s epoll for up to `timeout`, to the microsecond:
/// `mio` rounds a wait up to a whole millisecond (`epoll_wait`), which
/// made a guest whose timer was due sooner sleep past it, and then do that
/// timer's work late, in front of the next frame (echo p99 from 0.7 to
/// 1.5 ms). What woke it does not matter: the loop looks at everything
/// every turn. `ENOSYS` on kernels before 5.11, `EPERM` where a seccomp
/// filter predates the call.
fn wait_precisely(poll: &mio::Poll, timeout: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: the descriptor is `poll`'s epoll, open while it is
    // borrowed; the kernel writes at most `events.len()` entries into
    // `events`, a live array on this stack frame, and only reads
    // `timeout`; a null signal mask leaves the mask alone.
    let ready = unsafe {
        libc::epoll_pwait2(
            poll.as_raw_fd(),
            events.as_mut_ptr(),
            events.len() as libc::c_int,
            &timeout,
            std::ptr::null(),
        )
    };
    if ready < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn threads_gone(which: &str) -> HostError {
    HostError::Config(format!("{which} is gone"))
}
