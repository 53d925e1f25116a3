//! The recording side: every input goes through [`Recorder::inject`],
//! which logs it at the machine's icount and then applies it, so nothing
//! reaches the machine unlogged. `ftvm run --record` writes the log to a
//! file; an FT primary (`ftvm_node::Node`) records into memory and sends
//! what it wrote to its backup: the same code, the same bytes.

use std::io::Write;

use ftvm_board::{Digest, Engine, Input, Machine};

use crate::format::{End, Event, LogError, LogHeader, LogWriter, MachineId};

pub struct Recorder<W: Write> {
    log: Option<LogWriter<W>>,
}

impl<W: Write> Recorder<W> {
    /// Inject without logging (a run that is not recorded).
    pub fn unlogged() -> Recorder<W> {
        Recorder { log: None }
    }

    /// Start a log on `out` for `machine`, freshly built from `machine_id`
    /// and not yet run.
    pub fn new(
        out: W,
        machine: &Machine,
        machine_id: MachineId,
        engine: Engine,
    ) -> Result<Recorder<W>, LogError> {
        let header = LogHeader {
            machine: machine_id,
            engine,
            initial_digest: machine.digest().0,
        };
        Ok(Recorder {
            log: Some(LogWriter::new(out, &header)?),
        })
    }

    /// Start a log of a machine that continues from a snapshot (a clone's
    /// new backup starts there): inputs are logged from now on, and the
    /// log's bytes wait for [`Recorder::start_from`], which writes the
    /// header once the snapshot's digest is known.
    pub fn continuing(out: W) -> Recorder<W> {
        Recorder {
            log: Some(LogWriter::deferred(out)),
        }
    }

    /// Write the header of a [`Recorder::continuing`] log: the machine,
    /// the engine and the digest of the snapshot it continues from.
    pub fn start_from(
        &mut self,
        machine_id: MachineId,
        engine: Engine,
        digest: Digest,
    ) -> Result<(), LogError> {
        let header = LogHeader {
            machine: machine_id,
            engine,
            initial_digest: digest.0,
        };
        match &mut self.log {
            Some(log) => log.write_header(&header),
            None => Ok(()),
        }
    }

    pub fn is_logging(&self) -> bool {
        self.log.is_some()
    }

    /// Stop logging (an FT primary whose backup is gone runs on alone):
    /// inputs are applied unlogged from now on. What was logged is lost
    /// unless taken before.
    pub fn stop_logging(&mut self) {
        self.log = None;
    }

    /// Entries logged so far (0 when not logging).
    pub fn entries(&self) -> u64 {
        self.log.as_ref().map_or(0, LogWriter::entries)
    }

    /// The icount of the last entry logged, on the current machine (0
    /// before the first entry and right after a reset).
    pub fn last_icount(&self) -> u64 {
        self.log.as_ref().map_or(0, LogWriter::last_icount)
    }

    /// Log that the machine produced output in the instructions up to its
    /// icount (an FT primary's marker, see [`Event::Output`]), unless an
    /// entry at this very icount already marks the place.
    pub fn output(&mut self, machine: &Machine) -> Result<(), LogError> {
        if let Some(log) = &mut self.log {
            if log.entries() == 0 || log.last_icount() != machine.icount() {
                log.push(machine.icount(), &Event::Output)?;
            }
        }
        Ok(())
    }

    /// Log `input` at the machine's icount, then apply it.
    pub fn inject(&mut self, machine: &mut Machine, input: Input) -> Result<(), LogError> {
        let event = Event::Input(input);
        if let Some(log) = &mut self.log {
            log.push(machine.icount(), &event)?;
        }
        if let Event::Input(input) = event {
            machine.inject(input);
        }
        Ok(())
    }

    /// Log the machine's state digest (nothing when not logging).
    pub fn checkpoint(&mut self, machine: &Machine) -> Result<Option<Digest>, LogError> {
        let Some(log) = &mut self.log else {
            return Ok(None);
        };
        let digest = machine.digest();
        log.push(machine.icount(), &Event::Checkpoint(digest))?;
        Ok(Some(digest))
    }

    /// The guest asked for a reset at the machine's icount; the caller then
    /// builds the machine anew.
    pub fn reset(&mut self, machine: &Machine) -> Result<(), LogError> {
        if let Some(log) = &mut self.log {
            log.push(machine.icount(), &Event::Reset)?;
        }
        Ok(())
    }

    /// End the log: a last checkpoint, the end entry, and a flush. The
    /// digest of that checkpoint (when logging).
    pub fn end(&mut self, machine: &Machine, end: End) -> Result<Option<Digest>, LogError> {
        let digest = self.checkpoint(machine)?;
        if let Some(log) = &mut self.log {
            log.push(machine.icount(), &Event::End(end))?;
            log.flush()?;
        }
        Ok(digest)
    }

    pub fn flush(&mut self) -> Result<(), LogError> {
        match &mut self.log {
            Some(log) => log.flush(),
            None => Ok(()),
        }
    }

    /// Bytes of log so far (0 when not logging).
    pub fn bytes(&self) -> u64 {
        self.log.as_ref().map_or(0, LogWriter::bytes)
    }

    pub fn into_inner(mut self) -> Result<Option<W>, LogError> {
        self.log.take().map(LogWriter::into_inner).transpose()
    }
}

impl Recorder<Vec<u8>> {
    /// Frame what was logged since the last call and take its bytes (the
    /// first call's start with the log's magic and header).
    pub fn take_bytes(&mut self) -> Result<Vec<u8>, LogError> {
        match &mut self.log {
            Some(log) => {
                log.flush()?;
                Ok(std::mem::take(log.get_mut()))
            }
            None => Ok(Vec::new()),
        }
    }
}

/// A run that ends on an error still leaves every entry it logged in the
/// log (which then has no end entry, and says so on replay).
impl<W: Write> Drop for Recorder<W> {
    fn drop(&mut self) {
        if let Some(log) = &mut self.log {
            if let Err(e) = log.flush() {
                tracing::warn!("flushing the log: {e}");
            }
        }
    }
}
