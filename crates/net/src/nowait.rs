//! Receiving without waiting on a socket that stays blocking: the handle
//! that receives shares the socket with one that sends, and only the
//! receive must not wait (a switch port's; the logging channel's, which
//! the run loop writes to as well). `std` has no receive with flags.

use std::os::fd::AsRawFd;

/// One datagram (or bytes of a stream) if there is one, `WouldBlock` if
/// not (`MSG_DONTWAIT`).
pub fn recv(socket: &impl AsRawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `recv` writes at most `buf.len()` bytes into `buf`, a live,
    // exclusively borrowed slice, and reads nothing else of this
    // process's memory; the descriptor belongs to `socket`, which the
    // borrow keeps open for the call.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}
