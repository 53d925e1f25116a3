//! The backup's side of the logging channel, sans-IO: log bytes go into a
//! buffer and are acknowledged on receipt, not on execution (DESIGN.md
//! §4); the replay takes entries from that buffer, so it can never run
//! past what has arrived.

use ftvm_replay::{Entry, LogDecoder, LogError, LogHeader};

use crate::channel::Message;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("the primary sent entries before {through} after entries before {received}")]
    Backwards { through: u64, received: u64 },
    #[error("unexpected {0} from the primary")]
    Unexpected(&'static str),
    #[error(transparent)]
    Log(#[from] LogError),
}

#[derive(Default)]
pub struct Backup {
    decoder: LogDecoder,
    received: u64,
    icount: u64,
}

impl Backup {
    /// Take a message from the primary; the acknowledgement to send back.
    pub fn receive(&mut self, message: &Message) -> Result<Option<Message>, BackupError> {
        match message {
            Message::Entries { through, log } => {
                if *through < self.received {
                    return Err(BackupError::Backwards {
                        through: *through,
                        received: self.received,
                    });
                }
                self.decoder.push(log);
                self.received = *through;
                Ok(Some(Message::Ack {
                    through: self.received,
                    icount: self.icount,
                }))
            }
            Message::Heartbeat => Ok(None),
            Message::Ack { .. } => Err(BackupError::Unexpected("Ack")),
            Message::Hello { .. } | Message::Proof { .. } => {
                Err(BackupError::Unexpected("handshake message"))
            }
        }
    }

    /// The log's header, once it has arrived.
    pub fn header(&mut self) -> Result<Option<&LogHeader>, BackupError> {
        Ok(self.decoder.header()?)
    }

    /// The next entry to execute, if it has arrived.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, BackupError> {
        Ok(self.decoder.next()?)
    }

    /// The replay has reached `icount` (reported in the next ack).
    pub fn executed(&mut self, icount: u64) {
        self.icount = self.icount.max(icount);
    }

    /// Entries received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Every received entry has been taken for execution (go-live may
    /// proceed once they are applied).
    pub fn drained(&self) -> bool {
        self.decoder.next_seq() >= self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{encode, FrameDecoder};
    use crate::primary::{FlowLimits, Primary};
    use ftvm_board::virtio::DeviceKind;
    use ftvm_board::{Engine, Input};
    use ftvm_replay::format::{FileId, MachineId};
    use ftvm_replay::{Event, LogHeader, LogWriter};

    fn header() -> LogHeader {
        LogHeader {
            machine: MachineId {
                memory_mib: 16,
                firmware: None,
                kernel: FileId {
                    path: "k".into(),
                    len: 1,
                    blake3: [1; 32],
                },
                initrd: None,
                append: String::new(),
                insns_per_tick: 10,
                virtio: vec![DeviceKind::Entropy],
            },
            engine: Engine::Interpreter,
            initial_digest: [0; 32],
        }
    }

    /// A primary logging inputs and producing outputs, a backup acking
    /// over an encoded channel: outputs leave only after the backup holds
    /// the entries before them, and the backup sees every entry in order
    /// and nothing it has not received.
    #[test]
    fn entries_flow_to_the_backup_and_its_acks_release_outputs() {
        let mut writer = LogWriter::new(Vec::new(), &header()).expect("header");
        let mut primary = Primary::new(FlowLimits {
            max_unacked_entries: 100,
            max_lag_insns: u64::MAX,
        });
        let mut backup = Backup::default();
        let (mut to_backup, mut to_primary) = (FrameDecoder::default(), FrameDecoder::default());
        let mut released = Vec::new();
        let mut replayed = Vec::new();
        let mut sent = 0;
        for round in 0..10u64 {
            for i in 0..3 {
                let icount = round * 100 + i;
                writer
                    .push(icount, &Event::Input(Input::ConsoleByte(i as u8)))
                    .expect("log");
            }
            writer.flush().expect("flush");
            primary.logged(writer.entries(), round * 100 + 2);
            assert_eq!(primary.output(round), None, "held until acknowledged");
            // Send the log bytes written since the last round.
            let bytes = writer.get_ref();
            to_backup.push(&encode(&Message::Entries {
                through: writer.entries(),
                log: bytes[sent..].to_vec(),
            }));
            sent = bytes.len();
            while let Some(m) = to_backup.next_message().expect("valid") {
                if let Some(ack) = backup.receive(&m).expect("in order") {
                    to_primary.push(&encode(&ack));
                }
            }
            while let Some(entry) = backup.next_entry().expect("valid log") {
                assert!(entry.seq < backup.received());
                replayed.push(entry.seq);
                backup.executed(entry.icount);
            }
            assert!(backup.drained());
            while let Some(Message::Ack { through, icount }) =
                to_primary.next_message().expect("valid")
            {
                released.extend(primary.ack(through, icount).expect("valid ack"));
            }
        }
        assert_eq!(released, (0..10).collect::<Vec<_>>());
        assert_eq!(replayed, (0..30).collect::<Vec<_>>());
        assert!(backup.header().expect("header").is_some());
    }

    #[test]
    fn entries_going_backwards_are_refused() {
        let mut backup = Backup::default();
        let entries = |through| Message::Entries {
            through,
            log: Vec::new(),
        };
        backup.receive(&entries(5)).expect("first");
        assert!(matches!(
            backup.receive(&entries(4)),
            Err(BackupError::Backwards { .. })
        ));
        assert!(matches!(
            backup.receive(&Message::Ack {
                through: 1,
                icount: 1
            }),
            Err(BackupError::Unexpected(_))
        ));
    }
}
