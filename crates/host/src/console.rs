//! The console of an FT pair: a file that survives failover, and a
//! socket that takes what `ftvm console` types.
//!
//! The guest's console is a deterministic byte stream, so the live VM
//! writes each released byte at its offset in that stream
//! ([`ConsoleFile`]). A backup that goes live re-produces bytes the
//! primary may already have written; they land on the same offsets with
//! the same values, so the file reads as one uninterrupted stream, with no
//! gap and no duplicate.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

pub struct ConsoleFile {
    file: File,
}

impl ConsoleFile {
    /// Open (or create) the pair's console file; it is never truncated.
    pub fn open(path: &Path) -> std::io::Result<ConsoleFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(ConsoleFile { file })
    }

    /// Write `bytes`, which start at `offset` in the guest's console stream.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }

    /// Bytes of the stream the file holds.
    pub fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Take console input on a Unix socket at `path` (`ftvm console` connects
/// to it): every read goes to `sink`, which says whether anyone still
/// listens. A socket file left at `path` by an earlier VM is replaced.
pub fn listen_for_typing(
    path: &Path,
    sink: impl Fn(Vec<u8>) -> bool + Clone + Send + 'static,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("console-socket".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let sink = sink.clone();
                let reader = std::thread::Builder::new()
                    .name("console-typing".into())
                    .spawn(move || {
                        let mut buf = [0u8; 1024];
                        while let Ok(n @ 1..) = stream.read(&mut buf) {
                            if !sink(buf[..n].to_vec()) {
                                return;
                            }
                        }
                    });
                if let Err(e) = reader {
                    tracing::warn!("cannot read a console connection: {e}");
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The primary writes a prefix of the stream and dies; the backup,
    /// opening the same file, re-produces part of that prefix and goes on.
    #[test]
    fn a_takeover_continues_the_stream_without_gap_or_duplicate() {
        let path = std::env::temp_dir().join(format!("ftvm-console-{}.txt", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let stream: Vec<u8> = (0..200)
            .map(|i| format!("tick {i}\n"))
            .collect::<String>()
            .into_bytes();
        let primary = ConsoleFile::open(&path).expect("open");
        primary.write_at(0, &stream[..700]).expect("write");
        primary.write_at(700, &stream[700..1003]).expect("write");
        drop(primary);
        // The backup's released outputs start before where the primary's
        // stopped (it cannot know what was written).
        let backup = ConsoleFile::open(&path).expect("open");
        assert_eq!(backup.len().expect("len"), 1003);
        backup.write_at(650, &stream[650..]).expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), stream);
        let _ = std::fs::remove_file(&path);
    }
}
