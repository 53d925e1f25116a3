//! What the hosts' I/O reaches: the disk images (one shared, or each
//! host's own), the world's console, and entropy from the seed.

use std::collections::BTreeMap;

use ftvm_board::{Input, IoRequest, IoStatus};

use crate::guest::{SECTOR, SECTORS};
use crate::host::DiskMode;
use crate::invariants::{Invariant, Output};
use crate::sim::{Event, Sim};
use crate::{Broken, SimError};

pub(crate) struct Disks {
    pub mode: DiskMode,
    /// The disk images: one shared (index 0), or each host's own.
    pub images: [Vec<u8>; 2],
    /// Per disk, request id -> (offset, data) of every write performed.
    pub writes: [BTreeMap<u64, (u64, Vec<u8>)>; 2],
}

impl Disks {
    pub fn new(mode: DiskMode) -> Disks {
        Disks {
            mode,
            images: [0, 1].map(|_| vec![0; SECTORS as usize * SECTOR]),
            writes: [BTreeMap::new(), BTreeMap::new()],
        }
    }

    /// The disk host `i` reaches.
    pub fn of(&self, i: usize) -> usize {
        match self.mode {
            DiskMode::Shared => 0,
            DiskMode::Private => i,
        }
    }

    fn write(&mut self, i: usize, offset: u64, data: &[u8]) {
        let disk = &mut self.images[self.of(i)];
        let start = offset as usize;
        if let Some(end) = start.checked_add(data.len()).filter(|&e| e <= disk.len()) {
            disk[start..end].copy_from_slice(data);
        }
    }
}

/// The world's console: what the VMs released, at stream offsets.
#[derive(Default)]
pub(crate) struct Console {
    pub bytes: Vec<u8>,
    /// Complete lines up to here have been looked at.
    scanned: usize,
    pub grew_at: u64,
}

impl Sim {
    /// Host `i` releases console bytes at stream offset `offset`.
    pub(crate) fn console_write(
        &mut self,
        i: usize,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), SimError> {
        let console = &mut self.console.bytes;
        let len = console.len() as u64;
        if offset > len {
            return Err(self.violation(
                Invariant::OutputConsistency(Output::Console),
                format!(
                    "host {} releases console bytes at offset {offset}, but the world's console \
                 ends at {len}: a gap in the output",
                    self.name(i)
                ),
            ));
        }
        for (k, &b) in bytes.iter().enumerate() {
            let at = offset as usize + k;
            let console = &mut self.console.bytes;
            if at < console.len() {
                if console[at] != b {
                    let from = at.saturating_sub(40);
                    let world =
                        String::from_utf8_lossy(&console[from..(at + 20).min(console.len())])
                            .into_owned();
                    let mine = String::from_utf8_lossy(&bytes[k.saturating_sub(40)..]).into_owned();
                    let seen = console[at] as char;
                    return Err(self.violation(
                        Invariant::OutputConsistency(Output::Console),
                        format!(
                            "host {} writes console byte {at} as {:?}, the world saw {seen:?}: \
                         conflicting output (world: {world:?}; this release: {mine:?})",
                            self.name(i),
                            b as char,
                        ),
                    ));
                }
            } else {
                console.push(b);
                self.console.grew_at = self.now;
            }
        }
        // Look for the guest's lost-write report in complete lines.
        let c = &mut self.console;
        while let Some(nl) = c.bytes[c.scanned..].iter().position(|&b| b == b'\n') {
            let line = &c.bytes[c.scanned..c.scanned + nl];
            if line.starts_with(b"BAD") {
                let line = String::from_utf8_lossy(line).into_owned();
                return Err(self.violation(
                    Invariant::NoLostWrite,
                    format!("the guest reports a lost write: {line}"),
                ));
            }
            c.scanned += nl + 1;
        }
        Ok(())
    }

    /// Host `i` performs an I/O request; it completes a little later.
    pub(crate) fn perform(&mut self, i: usize, mut request: IoRequest) -> Result<(), SimError> {
        let id = request.id();
        let mut write_on_completion = false;
        let mut lost = false;
        if let IoRequest::BlockWrite { offset, data, .. } = &request {
            self.record_write(i, id, *offset, data)?;
            write_on_completion = self.rng.chance(0.5);
            if self.options.broken == Some(Broken::DiskLosesWrites) && self.rng.chance(0.05) {
                self.note(|| format!("the disk loses write {id}"));
                lost = true;
            } else if !write_on_completion {
                self.disks.write(i, *offset, data);
            }
        }
        if lost {
            // Completed as if it were a flush: the data never lands.
            request = IoRequest::BlockFlush { id };
            write_on_completion = false;
        }
        let at = self.now + self.rng.range(20_000, 1_500_000);
        let incarnation = self.hosts.incarnation[i];
        self.schedule(
            at,
            Event::IoDone {
                host: i,
                incarnation,
                request: Box::new(request),
                write_on_completion,
            },
        );
        Ok(())
    }

    /// One execution writes a disk: a request id always carries the same
    /// write.
    pub(crate) fn record_write(
        &mut self,
        i: usize,
        id: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SimError> {
        let disk = self.disks.of(i);
        match self.disks.writes[disk].get(&id) {
            Some((o, d)) if (*o, &d[..]) != (offset, data) => Err(self.violation(
                Invariant::OutputConsistency(Output::Disk),
                format!(
                    "host {} writes request {id} to offset {offset}, but it was written to \
                 offset {o} with other data before: two executions wrote the disk",
                    self.name(i)
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.disks.writes[disk].insert(id, (offset, data.to_vec()));
                Ok(())
            }
        }
    }

    pub(crate) fn disk_write(&mut self, i: usize, offset: u64, data: &[u8]) {
        self.disks.write(i, offset, data);
    }

    /// The completion of host `i`'s request.
    pub(crate) fn completion(
        &mut self,
        i: usize,
        request: &IoRequest,
        write_on_completion: bool,
    ) -> Input {
        let id = request.id();
        let (status, data) = match request {
            IoRequest::BlockRead { offset, len, .. } => {
                let disk = &self.disks.images[self.disks.of(i)];
                let start = *offset as usize;
                match start
                    .checked_add(*len as usize)
                    .filter(|&e| e <= disk.len())
                {
                    Some(end) => (IoStatus::Ok, disk[start..end].to_vec()),
                    None => (IoStatus::Error, Vec::new()),
                }
            }
            IoRequest::BlockWrite { offset, data, .. } => {
                if write_on_completion {
                    self.disks.write(i, *offset, data);
                }
                (IoStatus::Ok, Vec::new())
            }
            IoRequest::Entropy { len, .. } => (IoStatus::Ok, self.rng.bytes(*len as usize)),
            IoRequest::BlockFlush { .. } | IoRequest::NetTransmit { .. } => {
                (IoStatus::Ok, Vec::new())
            }
            IoRequest::Unsupported { .. } => (IoStatus::Unsupported, Vec::new()),
        };
        Input::IoDone { id, status, data }
    }
}
