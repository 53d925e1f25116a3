//! The terminal side of the guest console: the only reader of stdin.
//!
//! A thread reads stdin and hands what it read to a sink (the run loop's
//! event channel, or a [`Console`]'s own), so the run loop never blocks on
//! the terminal and can pass the bytes to the machine at an instruction
//! boundary of its choosing. On an interactive terminal, raw mode sends
//! every keystroke to the guest and QEMU's escape applies: Ctrl-A x quits,
//! Ctrl-A Ctrl-A sends one Ctrl-A.

use std::io::{IsTerminal, Read};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::thread;
use std::time::Duration;

const CTRL_A: u8 = 0x01;

/// What the user did at the console.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsoleEvent {
    Byte(u8),
    /// The user asked to quit (Ctrl-A x).
    Quit,
}

/// Result of waiting for console input.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    Event(ConsoleEvent),
    TimedOut,
    /// stdin is closed: no more input will ever arrive.
    Closed,
}

/// The terminal in raw mode while this lives (if stdin is a terminal).
pub struct RawMode {
    enabled: bool,
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.enabled {
            // Nothing sensible can be done if restoring fails at exit.
            let _ = crossterm::terminal::disable_raw_mode();
        }
    }
}

/// Start reading stdin: every [`ConsoleEvent`] goes to `sink` (which says
/// whether anyone still listens), and the reader's end (stdin closed) to
/// `closed`. Puts an interactive terminal in raw mode until the returned
/// guard is dropped.
pub fn read_stdin(
    sink: impl Fn(ConsoleEvent) -> bool + Send + 'static,
    closed: impl FnOnce() + Send + 'static,
) -> std::io::Result<RawMode> {
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        crossterm::terminal::enable_raw_mode()?;
    }
    let guard = RawMode {
        enabled: interactive,
    };
    thread::Builder::new()
        .name("console-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            let mut escape = EscapeDecoder::new(interactive);
            while let Ok(n @ 1..) = stdin.read(&mut buf) {
                for &byte in &buf[..n] {
                    if let Some(event) = escape.feed(byte) {
                        if !sink(event) {
                            return;
                        }
                    }
                }
            }
            closed();
        })?;
    Ok(guard)
}

/// The terminal as a source of console input to poll or wait on
/// (`ftvm console`).
pub struct Console {
    events: Receiver<ConsoleEvent>,
    closed: bool,
    _raw_mode: RawMode,
}

impl Console {
    /// Start reading stdin. Puts an interactive terminal in raw mode until
    /// the console is dropped.
    pub fn open() -> std::io::Result<Console> {
        let (tx, events) = mpsc::channel();
        let raw_mode = read_stdin(move |event| tx.send(event).is_ok(), || {})?;
        Ok(Console {
            events,
            closed: false,
            _raw_mode: raw_mode,
        })
    }

    /// Input that has already arrived, without blocking.
    pub fn poll(&mut self) -> Option<ConsoleEvent> {
        match self.events.try_recv() {
            Ok(event) => Some(event),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.closed = true;
                None
            }
        }
    }

    /// Block until input arrives, `timeout` passes (None: forever) or stdin
    /// closes.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Wait {
        if self.closed {
            if let Some(t) = timeout {
                thread::sleep(t);
                return Wait::TimedOut;
            }
            return Wait::Closed;
        }
        let received = match timeout {
            Some(t) => self.events.recv_timeout(t),
            None => self
                .events
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(event) => Wait::Event(event),
            Err(RecvTimeoutError::Timeout) => Wait::TimedOut,
            Err(RecvTimeoutError::Disconnected) => {
                self.closed = true;
                self.wait(timeout)
            }
        }
    }
}

/// QEMU's console escape, applied only on an interactive terminal (piped
/// input is passed through untouched).
struct EscapeDecoder {
    enabled: bool,
    after_ctrl_a: bool,
}

impl EscapeDecoder {
    fn new(enabled: bool) -> Self {
        EscapeDecoder {
            enabled,
            after_ctrl_a: false,
        }
    }

    fn feed(&mut self, byte: u8) -> Option<ConsoleEvent> {
        if !self.enabled {
            return Some(ConsoleEvent::Byte(byte));
        }
        if !self.after_ctrl_a {
            if byte == CTRL_A {
                self.after_ctrl_a = true;
                return None;
            }
            return Some(ConsoleEvent::Byte(byte));
        }
        self.after_ctrl_a = false;
        match byte {
            b'x' | b'X' => Some(ConsoleEvent::Quit),
            CTRL_A => Some(ConsoleEvent::Byte(CTRL_A)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(enabled: bool, input: &[u8]) -> Vec<ConsoleEvent> {
        let mut decoder = EscapeDecoder::new(enabled);
        input.iter().filter_map(|&b| decoder.feed(b)).collect()
    }

    #[test]
    fn escape_quits_and_doubles_on_a_terminal() {
        use ConsoleEvent::*;
        assert_eq!(
            decode(true, b"a\x01\x01b\x01x"),
            vec![Byte(b'a'), Byte(CTRL_A), Byte(b'b'), Quit]
        );
        assert_eq!(decode(true, b"\x01zq"), vec![Byte(b'q')]);
    }

    #[test]
    fn piped_input_passes_through() {
        use ConsoleEvent::*;
        assert_eq!(decode(false, b"\x01x"), vec![Byte(CTRL_A), Byte(b'x')]);
    }
}
