//! The backup's side of the logging channel, sans-IO (ARCHITECTURE.md, "The
//! FT protocol").
//!
//! Log bytes are decoded and checked (framing, checksums, sequence
//! numbers) as they arrive, and the acknowledgement counts only entries
//! that passed: an entry acknowledged is one this backup can execute, so
//! an output the primary releases on that acknowledgement is one the
//! backup would reach after a failover. Entries are acknowledged on
//! receipt, not on execution, and the replay takes them from this buffer,
//! so it never runs past what has arrived.
//!
//! Once the primary is suspected the backup stops taking entries
//! ([`Backup::freeze`]): a primary that was only slow must not see
//! acknowledgements for entries a backup going live has not executed.

use std::collections::VecDeque;

use ftvm_replay::{Entry, LogDecoder, LogError, LogHeader};

use crate::channel::Message;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("unexpected {0} from the primary")]
    Unexpected(&'static str),
    #[error(transparent)]
    Log(#[from] LogError),
}

#[derive(Default)]
pub struct Backup {
    decoder: LogDecoder,
    /// Checked entries not yet taken for execution.
    ready: VecDeque<Entry>,
    /// Entries acknowledged (checked) so far.
    acked: u64,
    icount: u64,
    frozen: bool,
}

impl Backup {
    /// Take a message from the primary; the acknowledgement to send back.
    pub fn receive(&mut self, message: &Message) -> Result<Option<Message>, BackupError> {
        match message {
            Message::Entries { log } if !self.frozen => {
                self.decoder.push(log);
                while let Some(entry) = self.decoder.next()? {
                    self.ready.push_back(entry);
                }
                self.acked = self.decoder.next_seq();
                Ok(Some(Message::Ack {
                    through: self.acked,
                    icount: self.icount,
                }))
            }
            Message::Entries { .. } | Message::Heartbeat | Message::Released { .. } => Ok(None),
            Message::Protected { .. } | Message::HandOver { .. } => Ok(None),
            Message::Ack { .. }
            | Message::CloneStart(_)
            | Message::Pages { .. }
            | Message::DiskPages { .. }
            | Message::CloneEnd { .. } => Err(BackupError::Unexpected(message.name())),
            Message::Hello { .. } | Message::Proof { .. } => {
                Err(BackupError::Unexpected("handshake message"))
            }
        }
    }

    /// Stop taking (and acknowledging) entries: the primary is suspected.
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// The log's header, once it has arrived.
    pub fn header(&mut self) -> Result<Option<&LogHeader>, BackupError> {
        Ok(self.decoder.header()?)
    }

    /// The next entry to execute, if it has arrived.
    pub fn next_entry(&mut self) -> Option<Entry> {
        self.ready.pop_front()
    }

    /// The replay has reached `icount` (reported in the next ack).
    pub fn executed(&mut self, icount: u64) {
        self.icount = self.icount.max(icount);
    }

    /// Entries acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Every acknowledged entry has been taken for execution: once they
    /// are applied, go-live may proceed.
    pub fn drained(&self) -> bool {
        self.ready.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{CHANNEL_FRAME_MAX, FrameDecoder, tests::sessions};
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
        let (mut to_backup, mut to_primary) = (
            FrameDecoder::new(CHANNEL_FRAME_MAX),
            FrameDecoder::new(CHANNEL_FRAME_MAX),
        );
        let (mut primary_end, mut backup_end) = sessions();
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
            assert_eq!(
                primary.output(writer.entries(), round),
                None,
                "held until acknowledged"
            );
            // Send the log bytes written since the last round.
            let bytes = writer.get_ref();
            let entries = Message::Entries {
                log: bytes[sent..].to_vec(),
            };
            to_backup.push(&primary_end.seal(&entries).expect("fits"));
            sent = bytes.len();
            while let Some(frame) = to_backup.next_frame().expect("valid") {
                let m = backup_end.open(&frame).expect("authentic");
                if let Some(ack) = backup.receive(&m).expect("in order") {
                    to_primary.push(&backup_end.seal(&ack).expect("fits"));
                }
            }
            while let Some(entry) = backup.next_entry() {
                assert!(entry.seq < backup.acked());
                replayed.push(entry.seq);
                backup.executed(entry.icount);
            }
            assert!(backup.drained());
            while let Some(frame) = to_primary.next_frame().expect("valid") {
                let Ok(Message::Ack { through, icount }) = primary_end.open(&frame) else {
                    panic!("the backup only acknowledges");
                };
                released.extend(primary.ack(through, icount).expect("valid ack"));
            }
        }
        assert_eq!(released, (0..10).collect::<Vec<_>>());
        assert_eq!(replayed, (0..30).collect::<Vec<_>>());
        assert!(backup.header().expect("header").is_some());
    }

    /// A log frame with a flipped byte is refused before it is
    /// acknowledged, and a frozen backup acknowledges nothing more.
    #[test]
    fn only_checked_entries_are_acknowledged_and_none_after_freezing() {
        let mut writer = LogWriter::new(Vec::new(), &header()).expect("header");
        writer
            .push(1, &Event::Input(Input::ConsoleByte(1)))
            .expect("log");
        writer.flush().expect("flush");
        let good = writer.get_ref().clone();
        writer
            .push(2, &Event::Input(Input::ConsoleByte(2)))
            .expect("log");
        writer.flush().expect("flush");
        let second = writer.get_ref()[good.len()..].to_vec();

        let mut backup = Backup::default();
        let ack = backup.receive(&Message::Entries { log: good.clone() });
        assert!(matches!(ack, Ok(Some(Message::Ack { through: 1, .. }))));
        let mut corrupt = second.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(matches!(
            backup.receive(&Message::Entries { log: corrupt }),
            Err(BackupError::Log(LogError::Checksum { .. }))
        ));
        assert_eq!(backup.acked(), 1);

        let mut backup = Backup::default();
        backup
            .receive(&Message::Entries { log: good })
            .expect("valid");
        backup.freeze();
        assert!(matches!(
            backup.receive(&Message::Entries { log: second }),
            Ok(None)
        ));
        assert_eq!(backup.acked(), 1);
        assert!(backup.next_entry().is_some());
        assert!(backup.drained());
    }

    #[test]
    fn the_primary_never_gets_acks_from_the_backup_stream() {
        let mut backup = Backup::default();
        assert!(matches!(
            backup.receive(&Message::Ack {
                through: 1,
                icount: 1
            }),
            Err(BackupError::Unexpected(_))
        ));
    }
}
