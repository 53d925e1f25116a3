//! Writing a log: [`LogWriter`].

use std::io::Write;

use super::{
    Event, FRAME_MAX, FRAME_TARGET, LogError, LogHeader, MAGIC, VERSION, Wire, frame_header, varint,
};

/// Writes a log: the header at once (or, for a log that continues a
/// snapshot, once its digest is known), entries batched into frames.
pub struct LogWriter<W: Write> {
    out: W,
    /// Frames written before the header: they follow it.
    held: Option<Vec<u8>>,
    next_seq: u64,
    last_icount: u64,
    /// Entries not yet framed.
    pending: Vec<u8>,
    bytes: u64,
}

impl<W: Write> LogWriter<W> {
    pub fn new(out: W, header: &LogHeader) -> Result<LogWriter<W>, LogError> {
        let mut writer = LogWriter::deferred(out);
        writer.write_header(header)?;
        Ok(writer)
    }

    /// A log whose header is written later ([`LogWriter::write_header`]):
    /// entries are taken at once and kept until then. A clone's log starts
    /// at the snapshot, and the snapshot's digest, which the header holds,
    /// is computed after the primary has run on.
    pub fn deferred(out: W) -> LogWriter<W> {
        LogWriter {
            out,
            held: Some(Vec::new()),
            next_seq: 0,
            last_icount: 0,
            pending: Vec::new(),
            bytes: 0,
        }
    }

    /// Write the header, then the frames held until now. Once only.
    pub fn write_header(&mut self, header: &LogHeader) -> Result<(), LogError> {
        let Some(held) = self.held.take() else {
            return Err(LogError::Encode {
                seq: self.next_seq,
                reason: "the header is written already".into(),
            });
        };
        let payload = postcard::to_stdvec(header).map_err(|e| LogError::Encode {
            seq: 0,
            reason: format!("the header: {e}"),
        })?;
        self.out.write_all(MAGIC)?;
        self.out.write_all(&VERSION.to_le_bytes())?;
        self.out.write_all(&frame_header(&payload))?;
        self.out.write_all(&payload)?;
        self.out.write_all(&held)?;
        self.bytes += 12 + 8 + payload.len() as u64;
        Ok(())
    }

    /// Whether the header is written (frames reach the output).
    pub fn has_header(&self) -> bool {
        self.held.is_none()
    }

    /// Append an entry at `icount` (never less than the previous entry's,
    /// except after a `Reset`); returns its sequence number. A refused
    /// entry leaves the log as it was.
    pub fn push(&mut self, icount: u64, event: &Event) -> Result<u64, LogError> {
        let seq = self.next_seq;
        let refuse = |reason: String| LogError::Encode { seq, reason };
        let delta = icount.checked_sub(self.last_icount).ok_or_else(|| {
            refuse(format!(
                "icount {icount} is before the previous entry's {}",
                self.last_icount
            ))
        })?;
        let entry =
            postcard::to_stdvec(&Wire::encode(delta, event)).map_err(|e| refuse(e.to_string()))?;
        if self.pending.len() + entry.len() + 10 > FRAME_MAX as usize {
            self.write_frame()?;
            if entry.len() + 10 > FRAME_MAX as usize {
                return Err(refuse(format!(
                    "{} bytes do not fit in a frame",
                    entry.len()
                )));
            }
        }
        if self.pending.is_empty() {
            varint(seq, &mut self.pending);
        }
        self.pending.extend_from_slice(&entry);
        self.last_icount = if matches!(event, Event::Reset) {
            0
        } else {
            icount
        };
        self.next_seq += 1;
        if self.pending.len() >= FRAME_TARGET {
            self.write_frame()?;
        }
        Ok(seq)
    }

    fn write_frame(&mut self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match &mut self.held {
            Some(held) => {
                held.extend_from_slice(&frame_header(&self.pending));
                held.extend_from_slice(&self.pending);
            }
            None => {
                self.out.write_all(&frame_header(&self.pending))?;
                self.out.write_all(&self.pending)?;
            }
        }
        self.bytes += 8 + self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Frame the entries pushed so far and flush them to the output.
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.write_frame()?;
        self.out.flush()?;
        Ok(())
    }

    /// Bytes of log written so far, including entries not yet framed.
    pub fn bytes(&self) -> u64 {
        self.bytes
            + if self.pending.is_empty() {
                0
            } else {
                8 + self.pending.len() as u64
            }
    }
    /// Entries pushed so far (the next entry's sequence number).
    pub fn entries(&self) -> u64 {
        self.next_seq
    }

    /// The icount of the last entry pushed (0 before the first and after a
    /// `Reset`, where the machine's icounts start again).
    pub fn last_icount(&self) -> u64 {
        self.last_icount
    }

    /// The output, e.g. to send what was written to it.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// The output, e.g. to take what was written to an in-memory buffer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn into_inner(mut self) -> Result<W, LogError> {
        self.flush()?;
        Ok(self.out)
    }
}
