//! The logging channel on the host: a TCP connection, authenticated by the
//! pre-shared-key handshake of `ftvm_ft::channel`, read by a thread of its
//! own so that acknowledgements and heartbeats arrive while the machine
//! runs.
//!
//! The backup listens and the primary connects. There is no reconnection:
//! once the channel fails (closed, corrupt, silent), the failure detector
//! and the arbiter decide which VM goes on alone, and the other halts.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ftvm_ft::channel::{
    self, CHANNEL_FRAME_MAX, ChannelError, FrameDecoder, HANDSHAKE_FRAME_MAX, Handshake, Message,
    Role, Session,
};

use crate::HostError;
use crate::status::ChannelClose;

/// What the channel's reader thread reports.
pub enum ChannelEvent {
    /// A frame's payload, to open with the session.
    Frame(Vec<u8>),
    /// The reader's last word: why it stopped.
    Closed { why: String, close: ChannelClose },
}

/// An established channel: the session that seals and opens frames, the
/// stream to write to, and the decoder holding whatever arrived after the
/// handshake (for the reader thread).
pub struct Channel {
    session: Session,
    stream: Option<TcpStream>,
    decoder: Option<FrameDecoder>,
}

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
        Ok(Channel {
            session,
            stream: Some(stream),
            decoder: Some(decoder),
        })
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
                    return Ok(Some(Channel {
                        session,
                        stream: Some(stream),
                        decoder: Some(decoder),
                    }));
                }
                // Whoever it was, it is not our primary: keep waiting for it.
                Err(e) => {
                    tracing::error!(%peer, "refused a connection: {e}");
                    eprintln!("ftvm: refused a connection from {peer}: {e}");
                }
            }
        }
    }

    /// Start the reader thread; every frame and its end go to `sink`,
    /// which says whether anyone still listens. A peer that stops reading
    /// must not block this VM: past `write_timeout` a write fails, and the
    /// channel is given up.
    pub fn start_reader(
        &mut self,
        write_timeout: Duration,
        sink: impl Fn(ChannelEvent) -> bool + Send + 'static,
    ) -> Result<(), HostError> {
        let (Some(stream), Some(decoder)) = (&self.stream, self.decoder.take()) else {
            return Ok(());
        };
        stream
            .set_write_timeout(Some(write_timeout.max(Duration::from_millis(1))))
            .map_err(|e| HostError::io("the logging channel", e))?;
        stream
            .set_read_timeout(None)
            .map_err(|e| HostError::io("the logging channel", e))?;
        let reader = stream
            .try_clone()
            .map_err(|e| HostError::io("the logging channel", e))?;
        std::thread::Builder::new()
            .name("channel-reader".into())
            .spawn(move || read_frames(reader, decoder, sink))
            .map_err(|e| HostError::io("starting the channel's reader", e))?;
        Ok(())
    }

    /// Fail a write that waits longer than `timeout` (before the reader
    /// thread starts, which sets it too): a peer that stops reading must
    /// not block a sender for ever.
    pub fn set_write_timeout(&self, timeout: Duration) -> Result<(), HostError> {
        if let Some(stream) = &self.stream {
            stream
                .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
                .map_err(|e| HostError::io("the logging channel", e))?;
        }
        Ok(())
    }

    /// The next message, read here (before the reader thread starts: a
    /// new backup takes a clone's snapshot so); past `timeout` of silence
    /// the wait fails.
    pub fn recv_blocking(&mut self, timeout: Duration) -> Result<Message, HostError> {
        let (Some(stream), Some(decoder)) = (&mut self.stream, &mut self.decoder) else {
            return Err(HostError::Config("the logging channel is closed".into()));
        };
        let io = |e| HostError::io("reading the logging channel", e);
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(io)?;
        let mut buffer = [0u8; 1 << 16];
        loop {
            if let Some(frame) = decoder.next_frame()? {
                return Ok(self.session.open(&frame)?);
            }
            let n = stream.read(&mut buffer).map_err(io)?;
            if n == 0 {
                return Err(HostError::Config(
                    "the primary closed the logging channel".into(),
                ));
            }
            decoder.push(&buffer[..n]);
        }
    }

    pub fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// Seal and send `message`; on failure the channel is closed and why
    /// is returned.
    pub fn send(&mut self, message: &Message) -> Result<(), (String, ChannelClose)> {
        let Some(stream) = &mut self.stream else {
            return Ok(());
        };
        let bytes = match self.session.seal(message) {
            Ok(bytes) => bytes,
            // Too large for a frame: a bug on this side, not the peer's.
            Err(e) => return Err((format!("sending: {e}"), ChannelClose::SendFailed)),
        };
        stream.write_all(&bytes).map_err(|e| {
            let close = if closed_by_peer(&e) {
                ChannelClose::PeerClosed
            } else {
                ChannelClose::SendFailed
            };
            (format!("sending: {e}"), close)
        })
    }

    /// Check and decode a frame from the reader.
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

/// The reader thread: frames as they arrive, then why it stopped.
fn read_frames(
    mut stream: TcpStream,
    mut decoder: FrameDecoder,
    sink: impl Fn(ChannelEvent) -> bool,
) {
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if !sink(ChannelEvent::Frame(frame)) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    sink(ChannelEvent::Closed {
                        why: e.to_string(),
                        close: ChannelClose::Corrupt,
                    });
                    return;
                }
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) => {
                sink(ChannelEvent::Closed {
                    why: "the peer closed the connection".into(),
                    close: ChannelClose::PeerClosed,
                });
                return;
            }
            Ok(n) => decoder.push(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let close = if closed_by_peer(&e) {
                    ChannelClose::PeerClosed
                } else {
                    ChannelClose::ReadFailed
                };
                sink(ChannelEvent::Closed {
                    why: e.to_string(),
                    close,
                });
                return;
            }
        }
    }
}

/// Whether a socket error means the peer closed or reset the connection.
fn closed_by_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), BrokenPipe | ConnectionAborted | ConnectionReset)
}
