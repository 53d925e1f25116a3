//! The logging channel on the host: a TCP connection, authenticated by the
//! pre-shared-key handshake of `ftvm_ft::channel`, read by the VM's run
//! loop itself: the loop waits in epoll on the stream (and on a waker for
//! its threads' events), so an acknowledgement wakes the thread that acts
//! on it directly. A reader thread in between cost a second wake-up per
//! message, about 40 µs on a 2-core VM, twice in every output's round
//! trip (ARCHITECTURE.md, "The run loop").
//!
//! The backup listens and the primary connects. There is no reconnection:
//! once the channel fails (closed, corrupt, silent), the failure detector
//! and the arbiter decide which VM goes on alone, and the other halts.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ftvm_ft::channel::{
    self, CHANNEL_FRAME_MAX, ChannelError, FrameDecoder, HANDSHAKE_FRAME_MAX, Handshake, Message,
    Role, Session,
};

use crate::HostError;
use crate::status::ChannelClose;

/// What reading the channel found.
pub enum ChannelEvent {
    /// A frame's payload, to open with the session.
    Frame(Vec<u8>),
    /// The stream's last word: why nothing more will come.
    Closed { why: String, close: ChannelClose },
}

/// An established channel: the session that seals and opens frames, the
/// stream, and the decoder holding whatever arrived and is not yet a
/// whole frame.
pub struct Channel {
    session: Session,
    stream: Option<TcpStream>,
    decoder: FrameDecoder,
    buffer: Vec<u8>,
    /// Sealed frames not yet written (see [`Channel::send`]).
    out: Vec<u8>,
}

/// Sealed bytes [`Channel::send`] holds before it writes them without
/// waiting for [`Channel::flush`] (a clone's pages come by the megabyte).
const OUT_BATCH: usize = 256 << 10;

/// Who the peer must prove to be.
pub struct Credentials<'a> {
    pub pair: &'a str,
    pub epoch: u64,
    pub key: [u8; 32],
}

impl Channel {
    /// Connect to the backup at `addr` (retrying until `timeout`, or until
    /// `stop` is set) and authenticate it.
    pub fn connect(
        addr: &str,
        timeout: Duration,
        stop: &AtomicBool,
        credentials: &Credentials<'_>,
    ) -> Result<Channel, HostError> {
        let deadline = Instant::now() + timeout;
        let mut stream = loop {
            match TcpStream::connect(addr) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() < deadline && !stop.load(Ordering::Relaxed) => {
                    tracing::debug!("the backup at {addr} is not there yet: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(HostError::io(
                        format!("connecting to the backup at {addr}"),
                        e,
                    ));
                }
            }
        };
        let (session, decoder) = handshake(&mut stream, Role::Primary, credentials)
            .map_err(|e| e.context(format!("the logging channel to {addr}")))?;
        tracing::info!(backup = %addr, "logging channel established");
        Ok(Channel::established(session, stream, decoder))
    }

    /// Wait on `listener` for the primary; a connection that fails the
    /// handshake is refused (and said so on stderr) and the wait goes on,
    /// until `limit` if given. `None` if `stop` was set first.
    pub fn accept(
        listener: &TcpListener,
        stop: &AtomicBool,
        credentials: &Credentials<'_>,
        limit: Option<Duration>,
    ) -> Result<Option<Channel>, HostError> {
        listener
            .set_nonblocking(true)
            .map_err(|e| HostError::io("listening for the primary", e))?;
        let started = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if let Some(limit) = limit.filter(|limit| started.elapsed() > *limit) {
                return Err(HostError::Config(format!(
                    "no primary came within {} s",
                    limit.as_secs()
                )));
            }
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(HostError::io("accepting the primary's connection", e)),
            };
            let established = stream
                .set_nonblocking(false)
                .map_err(|e| HostError::io("the primary's connection", e))
                .and_then(|()| handshake(&mut stream, Role::Backup, credentials));
            match established {
                Ok((session, decoder)) => {
                    tracing::info!(%peer, "logging channel established");
                    return Ok(Some(Channel::established(session, stream, decoder)));
                }
                // Whoever it was, it is not our primary: keep waiting for it.
                Err(e) => {
                    tracing::error!(%peer, "refused a connection: {e}");
                }
            }
        }
    }

    fn established(session: Session, stream: TcpStream, decoder: FrameDecoder) -> Channel {
        Channel {
            session,
            stream: Some(stream),
            decoder,
            buffer: vec![0; 1 << 16],
            out: Vec::new(),
        }
    }

    /// Hand the channel to a loop that waits in `registry`'s epoll and
    /// then calls [`Channel::read_available`]: readiness is edge-triggered,
    /// and that reads until the stream has nothing more. A peer that stops
    /// reading must not block this VM: past `write_timeout` a write fails,
    /// and the channel is given up.
    pub fn watch(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        write_timeout: Duration,
    ) -> Result<(), HostError> {
        self.set_write_timeout(write_timeout)?;
        let Some(stream) = &self.stream else {
            return Ok(());
        };
        let io = |e| HostError::io("the logging channel", e);
        stream.set_read_timeout(None).map_err(io)?;
        // Closing the stream (its only descriptor) takes it out of epoll.
        registry
            .register(
                &mut mio::unix::SourceFd(&stream.as_raw_fd()),
                token,
                mio::Interest::READABLE,
            )
            .map_err(io)
    }

    /// Every whole frame that has arrived, without waiting; the last
    /// event is `Closed` if the stream ended or failed.
    pub fn read_available(&mut self, events: &mut Vec<ChannelEvent>) {
        let Some(stream) = &self.stream else {
            return;
        };
        loop {
            loop {
                match self.decoder.next_frame() {
                    Ok(Some(frame)) => events.push(ChannelEvent::Frame(frame)),
                    Ok(None) => break,
                    Err(e) => {
                        events.push(ChannelEvent::Closed {
                            why: e.to_string(),
                            close: ChannelClose::Corrupt,
                        });
                        return;
                    }
                }
            }
            // The stream stays blocking for the loop's writes, which wait (up to
            // the write timeout) for room.
            match ftvm_net::nowait::recv(stream, &mut self.buffer) {
                Ok(0) => {
                    events.push(ChannelEvent::Closed {
                        why: "the peer closed the connection".into(),
                        close: ChannelClose::PeerClosed,
                    });
                    return;
                }
                Ok(n) => self.decoder.push(&self.buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let close = if closed_by_peer(&e) {
                        ChannelClose::PeerClosed
                    } else {
                        ChannelClose::ReadFailed
                    };
                    events.push(ChannelEvent::Closed {
                        why: e.to_string(),
                        close,
                    });
                    return;
                }
            }
        }
    }

    /// Fail a write that waits longer than `timeout` (also set by
    /// [`Channel::watch`]): a peer that stops reading must not block a
    /// sender for ever.
    pub fn set_write_timeout(&self, timeout: Duration) -> Result<(), HostError> {
        if let Some(stream) = &self.stream {
            stream
                .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
                .map_err(|e| HostError::io("the logging channel", e))?;
        }
        Ok(())
    }

    /// The next message, read here (before the run loop watches it: a
    /// new backup takes a clone's snapshot so); past `timeout` of silence
    /// the wait fails.
    pub fn recv_blocking(&mut self, timeout: Duration) -> Result<Message, HostError> {
        let Some(stream) = &mut self.stream else {
            return Err(HostError::Config("the logging channel is closed".into()));
        };
        let io = |e| HostError::io("reading the logging channel", e);
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(io)?;
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(self.session.open(&frame)?);
            }
            let n = stream.read(&mut self.buffer).map_err(io)?;
            if n == 0 {
                return Err(HostError::Config(
                    "the primary closed the logging channel".into(),
                ));
            }
            self.decoder.push(&self.buffer[..n]);
        }
    }

    pub fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// Seal `message` and queue it: the queue is written at
    /// [`Channel::flush`], or at once when it passes 256 KiB, so that
    /// what one turn of the loop sends is one write. On failure the
    /// channel is closed and why is returned.
    pub fn send(&mut self, message: &Message) -> Result<(), (String, ChannelClose)> {
        if self.stream.is_none() {
            return Ok(());
        }
        match self.session.seal(message) {
            Ok(bytes) => self.out.extend_from_slice(&bytes),
            // Too large for a frame: a bug on this side, not the peer's.
            Err(e) => return Err((format!("sending: {e}"), ChannelClose::SendFailed)),
        }
        if self.out.len() >= OUT_BATCH {
            return self.flush();
        }
        Ok(())
    }

    /// Run `work` while a thread of its own says [`Message::Heartbeat`]
    /// on this channel at once and every `every` until `work` is done: a
    /// peer that waits on this side (a primary for its new backup, which
    /// builds its machine before it can acknowledge anything: over 500 ms
    /// for a debug build on a loaded host) hears it is alive, and does not
    /// take it for dead after a short failure timeout. A send that fails
    /// ends the heartbeats: the run loop meets the closed channel and
    /// says so.
    pub fn heartbeat_while<T>(&mut self, every: Duration, work: impl FnOnce() -> T) -> T {
        use std::sync::mpsc::{self, RecvTimeoutError};
        std::thread::scope(|scope| {
            // Dropped when `work` is done (or panics): the heartbeats end
            // at once.
            let (done, stopped) = mpsc::channel::<()>();
            let channel = &mut *self;
            scope.spawn(move || {
                while channel
                    .send(&Message::Heartbeat)
                    .and_then(|()| channel.flush())
                    .is_ok()
                    && stopped.recv_timeout(every) == Err(RecvTimeoutError::Timeout)
                {
                }
            });
            let value = work();
            drop(done);
            value
        })
    }

    /// Write what [`Channel::send`] queued.
    pub fn flush(&mut self) -> Result<(), (String, ChannelClose)> {
        let Some(stream) = &mut self.stream else {
            self.out.clear();
            return Ok(());
        };
        if self.out.is_empty() {
            return Ok(());
        }
        let written = stream.write_all(&self.out);
        self.out.clear();
        written.map_err(|e| {
            let close = if closed_by_peer(&e) {
                ChannelClose::PeerClosed
            } else {
                ChannelClose::SendFailed
            };
            (format!("sending: {e}"), close)
        })
    }

    /// Check and decode a frame [`Channel::read_available`] found.
    pub fn open(&mut self, frame: &[u8]) -> Result<Message, (String, ChannelClose)> {
        self.session.open(frame).map_err(|e| {
            let close = match e {
                ChannelError::BadMac => ChannelClose::Forged,
                _ => ChannelClose::Corrupt,
            };
            (e.to_string(), close)
        })
    }

    /// Close both directions; whatever is in flight is lost.
    pub fn close(&mut self) {
        self.out.clear();
        if let Some(stream) = self.stream.take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Authenticate the peer on a fresh connection; the session, and the
/// decoder holding whatever arrived after the handshake.
fn handshake(
    stream: &mut TcpStream,
    role: Role,
    credentials: &Credentials<'_>,
) -> Result<(Session, FrameDecoder), HostError> {
    let io = |e: std::io::Error| HostError::io("the handshake", e);
    stream.set_nodelay(true).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let (mut handshake, hello) = Handshake::start(
        role,
        credentials.pair,
        credentials.epoch,
        credentials.key,
        crate::random_bytes()?,
    );
    stream.write_all(&channel::encode(&hello)).map_err(io)?;
    let mut decoder = FrameDecoder::new(HANDSHAKE_FRAME_MAX);
    let mut buffer = [0u8; 4096];
    while !handshake.is_established() {
        match decoder.next_frame()? {
            Some(payload) => {
                let step = handshake.receive(&channel::decode(&payload)?)?;
                if let Some(reply) = step.send {
                    stream.write_all(&channel::encode(&reply)).map_err(io)?;
                }
            }
            None => {
                let n = stream
                    .read(&mut buffer)
                    .map_err(|e| HostError::io("waiting for the peer's handshake", e))?;
                if n == 0 {
                    return Err(HostError::Config(
                        "the peer closed the connection during the handshake".into(),
                    ));
                }
                decoder.push(&buffer[..n]);
            }
        }
    }
    stream.set_read_timeout(None).map_err(io)?;
    decoder.set_limit(CHANNEL_FRAME_MAX);
    let session = handshake
        .session()
        .ok_or_else(|| HostError::Config("the handshake ended without a session".into()))?;
    Ok((session, decoder))
}

/// Whether a socket error means the peer closed or reset the connection.
fn closed_by_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), BrokenPipe | ConnectionAborted | ConnectionReset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: mio::Token = mio::Token(5);
    /// A bound on a hang, not a timing claim.
    const LIMIT: Duration = Duration::from_secs(10);

    /// A primary and a backup connected over loopback, the backup's side
    /// watched by `poll`.
    fn pair(poll: &mio::Poll) -> (Channel, Channel) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().expect("bound").to_string();
        let credentials = || Credentials {
            pair: "test",
            epoch: 1,
            key: [7; 32],
        };
        let stop = AtomicBool::new(false);
        let backup = std::thread::spawn(move || {
            let stop = AtomicBool::new(false);
            Channel::accept(&listener, &stop, &credentials(), Some(LIMIT))
                .expect("the backup's handshake")
                .expect("not stopped")
        });
        let primary =
            Channel::connect(&addr, LIMIT, &stop, &credentials()).expect("the primary's handshake");
        let mut backup = backup.join().expect("the backup's thread");
        backup
            .watch(poll.registry(), TOKEN, LIMIT)
            .expect("watched");
        (primary, backup)
    }

    fn woken(poll: &mut mio::Poll, timeout: Duration) -> bool {
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(timeout)).expect("epoll");
        events.iter().any(|event| event.token() == TOKEN)
    }

    fn messages(channel: &mut Channel) -> Vec<Message> {
        let mut events = Vec::new();
        channel.read_available(&mut events);
        events
            .into_iter()
            .map(|event| match event {
                ChannelEvent::Frame(frame) => channel.open(&frame).expect("a sealed message"),
                ChannelEvent::Closed { why, .. } => panic!("closed: {why}"),
            })
            .collect()
    }

    /// Readiness is edge-triggered: one read must take everything that
    /// came, or a message could wait for the next arrival.
    #[test]
    fn one_read_takes_every_message_that_arrived_and_epoll_wakes_for_the_next() {
        let mut poll = mio::Poll::new().expect("an epoll");
        let (mut primary, mut backup) = pair(&poll);
        let sent: Vec<Message> = (0..50)
            .map(|i| Message::Ack {
                through: i,
                icount: i * 1000,
            })
            .collect();
        for message in &sent {
            primary.send(message).expect("sent");
        }
        assert!(
            !woken(&mut poll, Duration::from_millis(20)),
            "queued until flushed"
        );
        primary.flush().expect("sent");
        assert!(woken(&mut poll, LIMIT), "woken by the messages");
        let mut got = Vec::new();
        // Loopback may hand the bytes over in more than one piece.
        while got.len() < sent.len() {
            got.extend(messages(&mut backup));
            if got.len() < sent.len() {
                assert!(woken(&mut poll, LIMIT), "woken by the rest");
            }
        }
        assert_eq!(got, sent);
        assert!(messages(&mut backup).is_empty(), "nothing more was sent");
        primary.send(&Message::Heartbeat).expect("sent");
        primary.flush().expect("sent");
        assert!(woken(&mut poll, LIMIT), "woken by the next message");
        assert_eq!(messages(&mut backup), vec![Message::Heartbeat]);
    }

    /// While a backup builds its machine, its primary hears heartbeats,
    /// again and again; they end with the work.
    #[test]
    fn heartbeats_go_out_while_the_work_runs_and_end_with_it() {
        let every = Duration::from_millis(20);
        let mut poll = mio::Poll::new().expect("an epoll");
        let (mut starting, mut waiting) = pair(&poll);
        let heard = starting.heartbeat_while(every, || {
            let mut heard = Vec::new();
            while heard.len() < 3 {
                assert!(woken(&mut poll, LIMIT), "no heartbeat while the work ran");
                heard.extend(messages(&mut waiting));
            }
            heard
        });
        assert!(heard.iter().all(|m| *m == Message::Heartbeat), "{heard:?}");
        // The heartbeats' thread has ended: what it sent before is all.
        while woken(&mut poll, 5 * every) {
            messages(&mut waiting);
        }
        std::thread::sleep(5 * every);
        assert!(
            messages(&mut waiting).is_empty(),
            "a heartbeat after the work"
        );
        starting.send(&Message::Heartbeat).expect("sent");
        starting.flush().expect("the channel still works");
        assert!(woken(&mut poll, LIMIT));
        assert_eq!(messages(&mut waiting), vec![Message::Heartbeat]);
    }

    #[test]
    fn a_peer_that_closes_is_reported_once_it_is_read() {
        let mut poll = mio::Poll::new().expect("an epoll");
        let (mut primary, mut backup) = pair(&poll);
        primary.send(&Message::Heartbeat).expect("sent");
        primary.flush().expect("sent");
        primary.close();
        let mut events = Vec::new();
        while !events
            .iter()
            .any(|event| matches!(event, ChannelEvent::Closed { .. }))
        {
            assert!(woken(&mut poll, LIMIT), "woken by the close");
            backup.read_available(&mut events);
        }
        match events.as_slice() {
            [
                ChannelEvent::Frame(frame),
                ChannelEvent::Closed { close, .. },
            ] => {
                assert_eq!(backup.open(frame).expect("sealed"), Message::Heartbeat);
                assert_eq!(*close, ChannelClose::PeerClosed);
            }
            _ => panic!("expected the heartbeat, then the close"),
        }
    }
}
