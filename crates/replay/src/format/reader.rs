//! Reading a log: [`LogDecoder`] (bytes pushed in as they arrive) and
//! [`LogReader`] (from a byte source).

use std::io::Read;

use super::*;

/// Decodes a log from bytes pushed in as they arrive, in pieces of any
/// size, checking framing, checksums and sequence numbers: the one decoder
/// behind a file replay ([`LogReader`]) and a backup fed by a logging
/// channel.
#[derive(Default)]
pub struct LogDecoder {
    /// Bytes received; those from `start` on are not yet consumed, and
    /// `offset` is the stream offset of `buffer[start]`. Consumed bytes
    /// are dropped in bulk, so many small frames cost linear time.
    buffer: Vec<u8>,
    start: usize,
    offset: u64,
    received_any: bool,
    header: Option<LogHeader>,
    next_seq: u64,
    last_icount: u64,
    /// The frame being taken apart, where it started, and how far.
    frame: Vec<u8>,
    frame_offset: u64,
    pos: usize,
    /// Set by the first error: the position in the stream is lost then.
    stopped: bool,
}

impl LogDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.received_any |= !bytes.is_empty();
        self.buffer.extend_from_slice(bytes);
    }

    /// The header, once its frame has arrived.
    pub fn header(&mut self) -> Result<Option<&LogHeader>, LogError> {
        self.guard(|d| d.decode_header().map(|_| ()))?;
        Ok(self.header.as_ref())
    }

    /// The next entry, `None` until one has arrived whole. After an error
    /// every call fails: a decoder never resumes mid-frame.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Entry>, LogError> {
        self.guard(Self::decode_next)
    }

    /// Sequence number the next entry will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The input has ended: an error if it ended inside the magic, the
    /// header or a frame.
    pub fn finish(&mut self) -> Result<(), LogError> {
        self.guard(|d| {
            if !d.received_any {
                return Err(LogError::Empty);
            }
            d.decode_header()?;
            if d.header.is_none() {
                return Err(LogError::Truncated {
                    at: Position::Header,
                });
            }
            if d.start < d.buffer.len() {
                return Err(LogError::Truncated { at: d.position() });
            }
            Ok(())
        })
    }

    fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        if self.stopped {
            return Err(LogError::Stopped);
        }
        let result = f(self);
        if result.is_err() {
            self.stopped = true;
        }
        result
    }

    fn position(&self) -> Position {
        Position::Entry {
            seq: self.next_seq,
            offset: self.offset,
        }
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.offset += n as u64;
        if self.start >= 64 << 10 && self.start * 2 >= self.buffer.len() {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
    }

    /// Take the next whole frame out of the buffer (checked), if any.
    fn take_frame(&mut self, at: Position) -> Result<Option<Vec<u8>>, LogError> {
        let pending = &self.buffer[self.start..];
        let Some(head) = pending.get(..8) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > FRAME_MAX {
            return Err(LogError::Malformed {
                at,
                reason: format!("frame length {len} is implausible"),
            });
        }
        let end = 8 + len as usize;
        let Some(payload) = pending.get(8..end) else {
            return Ok(None);
        };
        if crc32c::crc32c(payload) != crc {
            return Err(LogError::Checksum { at });
        }
        let payload = payload.to_vec();
        self.consume(end);
        Ok(Some(payload))
    }

    fn decode_header(&mut self) -> Result<(), LogError> {
        if self.header.is_some() {
            return Ok(());
        }
        if self.offset == 0 {
            let pending = &self.buffer[self.start..];
            let n = pending.len().min(8);
            if pending[..n] != MAGIC[..n] {
                return Err(LogError::NotALog);
            }
            let Some(start) = pending.get(..12) else {
                return Ok(());
            };
            let found = u32::from_le_bytes([start[8], start[9], start[10], start[11]]);
            if found != VERSION {
                return Err(LogError::Version { found });
            }
            self.consume(12);
        }
        let Some(frame) = self.take_frame(Position::Header)? else {
            return Ok(());
        };
        self.header = Some(
            postcard::from_bytes(&frame).map_err(|e| LogError::Malformed {
                at: Position::Header,
                reason: e.to_string(),
            })?,
        );
        Ok(())
    }

    fn decode_next(&mut self) -> Result<Option<Entry>, LogError> {
        self.decode_header()?;
        if self.header.is_none() {
            return Ok(None);
        }
        if self.pos >= self.frame.len() {
            let at = self.position();
            let frame_offset = self.offset;
            let Some(frame) = self.take_frame(at)? else {
                return Ok(None);
            };
            let (first, len) = read_varint(&frame).ok_or_else(|| LogError::Malformed {
                at,
                reason: "bad sequence number".into(),
            })?;
            if first != self.next_seq {
                return Err(LogError::Sequence {
                    expected: self.next_seq,
                    found: first,
                    offset: frame_offset,
                });
            }
            if len == frame.len() {
                return Err(LogError::Malformed {
                    at,
                    reason: "a frame without entries".into(),
                });
            }
            self.frame = frame;
            self.frame_offset = frame_offset;
            self.pos = len;
        }
        let at = Position::Entry {
            seq: self.next_seq,
            offset: self.frame_offset,
        };
        let (wire, rest): (Wire, &[u8]) = postcard::take_from_bytes(&self.frame[self.pos..])
            .map_err(|e| LogError::Malformed {
                at,
                reason: e.to_string(),
            })?;
        let consumed = self.frame.len() - self.pos - rest.len();
        let (delta, event) = wire.decode();
        let icount = self
            .last_icount
            .checked_add(delta)
            .ok_or_else(|| LogError::Malformed {
                at,
                reason: "icount overflows".into(),
            })?;
        self.pos += consumed;
        self.last_icount = if event == Event::Reset { 0 } else { icount };
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(Some(Entry { seq, icount, event }))
    }
}

/// Reads a log from a byte source entry by entry (a [`LogDecoder`] fed
/// from `R`).
pub struct LogReader<R: Read> {
    input: R,
    decoder: LogDecoder,
    header: LogHeader,
}

/// Read a chunk from `input` into `decoder`; false at the end of input.
fn feed(input: &mut impl Read, decoder: &mut LogDecoder) -> Result<bool, LogError> {
    let mut chunk = [0u8; 64 << 10];
    loop {
        match input.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                decoder.push(&chunk[..n]);
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

impl<R: Read> LogReader<R> {
    pub fn open(mut input: R) -> Result<LogReader<R>, LogError> {
        let mut decoder = LogDecoder::default();
        let header = loop {
            if let Some(header) = decoder.header()? {
                break header.clone();
            }
            if !feed(&mut input, &mut decoder)? {
                decoder.finish()?;
            }
        };
        Ok(LogReader {
            input,
            decoder,
            header,
        })
    }

    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// The next entry, or `None` at the end of the log. After an error
    /// (an I/O error too), every call fails.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Entry>, LogError> {
        loop {
            if let Some(entry) = self.decoder.next()? {
                return Ok(Some(entry));
            }
            match feed(&mut self.input, &mut self.decoder) {
                Ok(true) => {}
                Ok(false) => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
                Err(e) => {
                    self.decoder.stopped = true;
                    return Err(e);
                }
            }
        }
    }

    /// Sequence number the next entry will have.
    pub fn next_seq(&self) -> u64 {
        self.decoder.next_seq()
    }
}
