//! The TAP backend: the guest's frames go to a TAP interface of the host
//! (Linux), which the host bridges or routes like any other interface. It
//! needs the right to open /dev/net/tun and an existing TAP device (or
//! the right to create one), typically root.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::{FrameReceiver, NetBackend, NetError};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags, in a
/// 40-byte structure.
#[repr(C)]
struct InterfaceRequest {
    name: [u8; 16],
    flags: libc::c_short,
    _rest: [u8; 22],
}

pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attach to (or create) the TAP interface `name`.
    pub fn open(name: &str) -> Result<Tap, NetError> {
        let fail = |e: std::io::Error| NetError::Tap(name.to_string(), e);
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(fail(std::io::Error::new(
                ErrorKind::InvalidInput,
                "an interface name is 1 to 15 bytes",
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(fail)?;
        let mut request = InterfaceRequest {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI,
            _rest: [0; 22],
        };
        request.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `file` is an open descriptor of /dev/net/tun for the
        // whole call, and TUNSETIFF reads (and writes back the name into)
        // a `struct ifreq`, which `InterfaceRequest` matches in layout and
        // size (40 bytes, repr(C)) and which lives on this stack frame
        // until the call returns.
        let result = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                TUNSETIFF,
                &mut request as *mut InterfaceRequest,
            )
        };
        if result < 0 {
            return Err(fail(std::io::Error::last_os_error()));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// A second handle on the same interface, for a thread that waits for
    /// frames.
    pub fn receiver(&self) -> std::io::Result<TapReceiver> {
        Ok(TapReceiver {
            file: self.file.try_clone()?,
            buf: vec![0; 65536],
        })
    }
}

/// The frames of a [`Tap`], for a loop that waits on its descriptor.
pub struct TapReceiver {
    file: File,
    buf: Vec<u8>,
}

impl FrameReceiver for TapReceiver {
    fn fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    fn recv_ready(&mut self, frames: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
        read_available(&self.file, &mut self.buf, frames)
    }
}

/// Every frame the TAP device holds, without waiting (it is open
/// non-blocking: `Tap::open`).
fn read_available(
    mut file: &File,
    buf: &mut [u8],
    frames: &mut Vec<Vec<u8>>,
) -> std::io::Result<()> {
    loop {
        match file.read(buf) {
            // The interface went away.
            Ok(0) => return Ok(()),
            Ok(n) => frames.push(buf[..n].to_vec()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl NetBackend for Tap {
    fn send(&mut self, frame: &[u8]) {
        // A full queue drops the frame, as a congested link would.
        if let Err(e) = self.file.write(frame) {
            if e.kind() != ErrorKind::WouldBlock {
                tracing::warn!(tap = %self.name, %e, "TAP write failed");
            }
        }
    }

    fn poll(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        if let Err(e) = read_available(&self.file, &mut buf, &mut frames) {
            tracing::warn!(tap = %self.name, %e, "TAP read failed");
        }
        frames
    }
}
