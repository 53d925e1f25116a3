//! The tick guest of the FT pair tests: its command (`tick N` every 100
//! ms), failure-detection settings, starting it, and reading its console,
//! which must read as one stream across whatever happened to the pair.

use std::time::Duration;

use super::pair::{Pair, Vm, VmState};
use super::wait_until;

/// The guest's command: `tick N` every 100 ms, forever.
pub const TICK_CMD: &str = "i=0; while true; do echo tick $i; i=$((i+1)); usleep 100000; done";

/// Failure detection for the failover tests: quick, as the brief of the
/// tests asks (a 2-core host copes).
pub const FAST: [&str; 4] = ["--timeout-ms", "500", "--heartbeat-ms", "50"];
/// Failure detection for tests that must see no failover at all: slack
/// enough that a loaded host never makes one up.
pub const SLACK: [&str; 4] = ["--timeout-ms", "3000", "--heartbeat-ms", "100"];

/// Booting to the first tick, under load.
pub const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// A failover and a few more ticks.
pub const FAILOVER_LIMIT: Duration = Duration::from_secs(90);
/// A status line to catch up with what a VM did: it is rewritten every
/// 200 ms, and at a VM's end.
pub const STATUS_LIMIT: Duration = Duration::from_secs(10);

pub fn append(cmd: &str) -> String {
    format!("console=ttyS0 ftvm_cmd=\"{cmd}\"")
}

/// The options of a VM running `cmd` with failure detection `detection`.
pub fn guest(cmd: &str, detection: &[&'static str]) -> Vec<String> {
    let mut args = vec!["--append".to_string(), append(cmd)];
    args.extend(detection.iter().map(|s| s.to_string()));
    args
}

/// `ftvm up` of the tick guest; the pids of the primary and the backup.
pub fn up_ticking(pair: &mut Pair, cmd: &str, detection: &[&'static str]) -> (u32, u32) {
    pair.up(&guest(cmd, detection))
}

/// `ftvm primary` of the tick guest towards `backup`, by hand.
pub fn start_ticking_primary(pair: &mut Pair, backup: &str, detection: &[&'static str]) {
    let args = guest(TICK_CMD, detection);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pair.start_primary(backup, &args);
}

/// The console of a pair running the tick guest.
pub trait TickConsole {
    /// The highest tick the console shows (complete lines only).
    fn max_tick(&self) -> Option<u64>;
    /// Wait until the console shows tick `n`; fail saying `why` after
    /// `limit`.
    fn wait_tick(&self, n: u64, limit: Duration, why: &str);
    /// The console checked (see [`check_console`]): the ticks it holds.
    fn checked_ticks(&self) -> Vec<u64>;
}

impl TickConsole for Pair {
    fn max_tick(&self) -> Option<u64> {
        ticks(&self.console()).into_iter().max()
    }

    fn wait_tick(&self, n: u64, limit: Duration, why: &str) {
        self.wait_until(limit, &format!("{why}: tick {n} on the console"), || {
            self.max_tick().is_some_and(|m| m >= n)
        });
    }

    fn checked_ticks(&self) -> Vec<u64> {
        check_console(&self.console()).unwrap_or_else(|e| panic!("{e}\n{}", self.diag()))
    }
}

// ---------------------------------------------------------------------
// The console

/// The `tick N` lines among the complete lines of `console`.
pub fn ticks(console: &[u8]) -> Vec<u64> {
    let complete = match console.iter().rposition(|&b| b == b'\n') {
        Some(end) => &console[..end],
        None => return Vec::new(),
    };
    complete
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let n = line.strip_prefix(b"tick ")?;
            if n.is_empty() || !n.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(n).ok()?.parse().ok()
        })
        .collect()
}

/// The console must read as one stream: nothing but printable ASCII, tabs
/// and line ends (a hole left by a write past the end reads as NULs, a
/// write at a wrong offset tears a line), every complete line ending in
/// `\r\n`, and the ticks counting 0, 1, 2, ... with no gap or duplicate.
/// Returns the ticks.
pub fn check_console(console: &[u8]) -> Result<Vec<u64>, String> {
    let context = |at: usize| {
        let from = at.saturating_sub(120);
        let to = (at + 120).min(console.len());
        String::from_utf8_lossy(&console[from..to])
            .escape_debug()
            .to_string()
    };
    if let Some(at) = console
        .iter()
        .position(|&b| !(b == b'\r' || b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b)))
    {
        return Err(format!(
            "console byte {at} is {:#04x}, not text (of {} bytes); around it: {}",
            console[at],
            console.len(),
            context(at)
        ));
    }
    let mut at = 0;
    for line in console.split_inclusive(|&b| b == b'\n') {
        if line.ends_with(b"\n") && !line.ends_with(b"\r\n") {
            return Err(format!(
                "the console line at byte {at} does not end in \\r\\n: {}",
                context(at)
            ));
        }
        at += line.len();
    }
    let ticks = ticks(console);
    for (i, &t) in ticks.iter().enumerate() {
        if t != i as u64 {
            let around: Vec<u64> = ticks[i.saturating_sub(5)..(i + 5).min(ticks.len())].to_vec();
            return Err(format!(
                "tick line #{i} says tick {t} (a gap or a duplicate): ... {around:?} ..."
            ));
        }
    }
    Ok(ticks)
}

/// Pairs tried per test moment, when they fail over by themselves first
/// (see `ft_pair.rs`).
pub const TRIES: usize = 4;

/// A VM that suspected the other, by its status line.
pub fn suspicion(pair: &Pair) -> Option<String> {
    Vm::BOTH.into_iter().find_map(|vm| {
        pair.status(vm)
            .filter(|line| line.suspected)
            .map(|line| format!("{vm}: {line}"))
    })
}

/// After one VM suspected the other without a failure: the pair must
/// settle — one VM live, the other gone or halted — and the console must
/// hold; a pair that stays paired while nothing reaches the console is
/// wedged.
pub fn settled_after_false_alarm(pair: &Pair, label: &str, alarm: &str) {
    let live = |vm: Vm| pair.state(vm) == Some(VmState::Live) && pair.running(vm);
    let out = |vm: Vm| !pair.running(vm) || pair.state(vm) == Some(VmState::Halted);
    let settled = wait_until(Duration::from_secs(30), || {
        (live(Vm::Primary) && out(Vm::Backup)) || (live(Vm::Backup) && out(Vm::Primary))
    });
    pair.checked_ticks();
    assert!(
        settled,
        "{label}: after a false alarm ({alarm}) the pair did not settle on one live VM \
         within 30 s (wedged?)\n{}",
        pair.diag()
    );
}
