//! `ftvm run`: drive one machine with the terminal as its console.
//!
//! The machine runs in slices of instructions; between slices its console
//! output is written out and pending console input is injected. When the
//! guest idles (WFI) the host really sleeps, until the guest's timer is due
//! or a key arrives, and then tells the machine how much guest time passed.
//! These injected inputs are the only non-determinism the machine sees,
//! and all of them go through a [`Recorder`], which logs them with
//! `--record`.
//!
//! Guest time is steered toward the host's clock ([`TimeSteering`]) unless
//! `--clock icount` asks for guest time from the instruction count alone.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ftvm_board::{Input, Machine, Stop};
use ftvm_replay::{ClockReading, End, MachineId, Recorder, TimeSteering};

use crate::console::{Console, ConsoleEvent, Wait};
use crate::host_io::{Disk, HostIo};
use crate::{ClockArg, RunArgs};
use ftvm_net::NetBackend;

/// Instructions per slice: a few milliseconds of guest execution, short
/// enough that console input and output feel immediate.
const SLICE: u64 = 1 << 20;

/// How often an idle guest's host looks at its network sockets.
const NET_POLL: Duration = Duration::from_millis(1);

/// Length of one `mtime` tick.
const TICK_NS: u64 = ftvm_board::MTIME_TICK_NS;

/// How often a recording's buffered entries are written out.
const LOG_FLUSH: Duration = Duration::from_millis(50);

type LogFile = std::io::BufWriter<std::fs::File>;

/// What the console had for the machine.
#[derive(Debug, PartialEq, Eq)]
enum ConsoleInput {
    Nothing,
    Injected,
    Quit,
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    if !(args.checkpoint_interval.is_finite() && args.checkpoint_interval > 0.0) {
        bail!(
            "--checkpoint-interval must be a positive number of seconds, not {}",
            args.checkpoint_interval
        );
    }
    let net: Option<Box<dyn NetBackend>> = match &args.net {
        Some(spec) => Some(ftvm_net::open(&ftvm_net::parse_net(spec)?)?),
        None => None,
    };
    let mut host_io = HostIo {
        disk: args.machine.disk.as_deref().map(Disk::open).transpose()?,
        net,
    };
    let config = args.machine.machine_config(host_io.devices())?;
    let mut machine = Machine::new(&config)?;
    let mut recorder: Recorder<LogFile> = match &args.record {
        Some(path) => {
            let id = MachineId::of(&config);
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating the log {}", path.display()))?;
            Recorder::new(std::io::BufWriter::new(file), &machine, id, config.engine)
                .with_context(|| format!("writing the log {}", path.display()))?
        }
        None => Recorder::unlogged(),
    };
    recorder.inject(&mut machine, wall_clock(args.machine.rtc_time))?;
    let mut console = Console::open()?;
    let limit = args.max_insns.unwrap_or(u64::MAX);
    let started = Instant::now();
    let mut steering = (args.clock == ClockArg::Host).then(TimeSteering::default);
    let mut upkeep = LogUpkeep::new(args.checkpoint_interval);

    let end = loop {
        let stop = machine.run(machine.icount().saturating_add(SLICE).min(limit));
        flush_console(&mut machine)?;
        // Answer I/O at once, at this instruction boundary. Whatever is
        // injected here may wake an idle guest, which must then not sleep.
        let mut injected = false;
        for request in machine.take_io_requests() {
            let done = host_io.serve(request);
            recorder.inject(&mut machine, done)?;
            injected = true;
        }
        for frame in host_io.poll_net() {
            recorder.inject(&mut machine, frame)?;
            injected = true;
        }
        match inject_pending_input(&mut machine, &mut recorder, &mut console)? {
            ConsoleInput::Quit => break End::Quit,
            ConsoleInput::Injected => injected = true,
            ConsoleInput::Nothing => {}
        }
        if let Some(steering) = &mut steering {
            let now = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let clock = ClockReading {
                icount: machine.icount(),
                mtime: machine.hart().mtime(),
                insns_per_tick: machine.hart().clock().insns_per_tick,
                guest_writes: machine.mtime_writes(),
            };
            for correction in steering.poll(now, clock) {
                tracing::debug!(?correction, ?clock, "guest time");
                recorder.inject(&mut machine, correction)?;
                // A step may pass the timer deadline the idle stop named.
                injected = true;
            }
        }
        upkeep.tick(&mut recorder, &machine, matches!(stop, Stop::Idle { .. }))?;
        match stop {
            Stop::Limit if machine.icount() >= limit => break End::InsnLimit,
            Stop::Limit | Stop::Io => {}
            Stop::Idle { .. } if injected => {}
            Stop::Idle { wake_at } => {
                if let Some(steering) = &mut steering {
                    steering.note_idle();
                }
                // With a network, the host must look at its sockets often.
                let poll = host_io.net.is_some().then_some(NET_POLL);
                if let Some(end) =
                    sleep_while_idle(&mut machine, &mut recorder, &mut console, wake_at, poll)?
                {
                    break end;
                }
            }
            Stop::PowerOff { code } => break End::PowerOff { code },
            Stop::HtifExit { code } => break End::HtifExit { code },
            Stop::Reset => {
                tracing::info!(icount = machine.icount(), "guest requested a reset");
                recorder.reset(&machine)?;
                machine = Machine::new(&config)?;
                recorder.inject(&mut machine, wall_clock(args.machine.rtc_time))?;
                // The files were read again: a replay checks the new
                // machine's state here, not a second later.
                recorder.checkpoint(&machine)?;
                upkeep = LogUpkeep::new(args.checkpoint_interval);
                steering = steering.map(|_| TimeSteering::default());
            }
        }
    };
    drop(console);
    let final_digest = recorder.end(&machine, end)?;
    if let Some(path) = &args.record {
        tracing::info!(bytes = recorder.bytes(), log = %path.display(), "recording written");
    }

    if args.digest || args.record.is_some() {
        eprintln!("icount: {}", machine.icount());
        eprintln!("pc: {:#x}", machine.hart().pc());
        // A recording's last checkpoint is this very state.
        let digest = final_digest.unwrap_or_else(|| machine.digest());
        eprintln!("final state digest: {digest}");
    }
    Ok(match end {
        End::PowerOff { code } => guest_exit_code(u64::from(code)),
        End::HtifExit { code } => guest_exit_code(code),
        End::InsnLimit => {
            eprintln!(
                "ftvm: stopped after {} instructions (--max-insns)",
                machine.icount()
            );
            ExitCode::from(124)
        }
        End::Quit => ExitCode::SUCCESS,
    })
}

/// The time of day for the guest's RTC: `--rtc-time`, or the host's.
fn wall_clock(fixed_seconds: Option<u64>) -> Input {
    let unix_ns = match fixed_seconds {
        Some(seconds) => seconds.saturating_mul(1_000_000_000),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    };
    Input::WallClock { unix_ns }
}

/// When a recording writes a checkpoint (every `interval` of host time,
/// if the guest executed anything since the last) and flushes its
/// entries (every [`LOG_FLUSH`] and before the host sleeps).
struct LogUpkeep {
    every: Duration,
    last_checkpoint: Instant,
    checkpointed_icount: u64,
    last_flush: Instant,
}

impl LogUpkeep {
    fn new(interval_seconds: f64) -> LogUpkeep {
        LogUpkeep {
            every: Duration::from_secs_f64(interval_seconds.clamp(0.001, 1e9)),
            last_checkpoint: Instant::now(),
            checkpointed_icount: 0,
            last_flush: Instant::now(),
        }
    }

    fn tick(
        &mut self,
        recorder: &mut Recorder<LogFile>,
        machine: &Machine,
        idle: bool,
    ) -> Result<()> {
        if !recorder.is_logging() {
            return Ok(());
        }
        if self.last_checkpoint.elapsed() >= self.every
            && machine.icount() != self.checkpointed_icount
        {
            recorder.checkpoint(machine)?;
            self.checkpointed_icount = machine.icount();
            self.last_checkpoint = Instant::now();
        }
        if idle || self.last_flush.elapsed() >= LOG_FLUSH {
            recorder.flush()?;
            self.last_flush = Instant::now();
        }
        Ok(())
    }
}

/// A guest's failure code as a process exit code: its low byte, but never
/// 0 for a failure.
fn guest_exit_code(code: u64) -> ExitCode {
    match code {
        0 => ExitCode::SUCCESS,
        c if c & 0xff == 0 => ExitCode::FAILURE,
        c => ExitCode::from((c & 0xff) as u8),
    }
}

fn flush_console(machine: &mut Machine) -> Result<()> {
    let bytes = machine.take_console_output();
    if !bytes.is_empty() {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&bytes)
            .and_then(|()| stdout.flush())
            .context("writing the guest console to stdout")?;
    }
    Ok(())
}

/// Inject every console byte that has arrived.
fn inject_pending_input(
    machine: &mut Machine,
    recorder: &mut Recorder<LogFile>,
    console: &mut Console,
) -> Result<ConsoleInput> {
    let mut result = ConsoleInput::Nothing;
    while let Some(event) = console.poll() {
        match event {
            ConsoleEvent::Byte(byte) => {
                recorder.inject(machine, Input::ConsoleByte(byte))?;
                result = ConsoleInput::Injected;
            }
            ConsoleEvent::Quit => return Ok(ConsoleInput::Quit),
        }
    }
    Ok(result)
}

/// The guest waits for an interrupt: sleep on the host until its timer is
/// due (`wake_at`, in `mtime` ticks) or console input arrives, then inject
/// the guest time that passed and the input.
fn sleep_while_idle(
    machine: &mut Machine,
    recorder: &mut Recorder<LogFile>,
    console: &mut Console,
    wake_at: Option<u64>,
    poll: Option<Duration>,
) -> Result<Option<End>> {
    let now = machine.hart().mtime();
    // A deadline already passed cannot wake the guest (its timer interrupt
    // is masked); only input can.
    let ticks_to_deadline = wake_at.filter(|&t| t > now).map(|t| t - now);
    let timeout = ticks_to_deadline.map(|t| Duration::from_nanos(t.saturating_mul(TICK_NS)));
    let (timeout, polling) = match (timeout, poll) {
        (Some(t), Some(p)) if p < t => (Some(p), true),
        (None, Some(p)) => (Some(p), true),
        (t, _) => (t, false),
    };
    let started = Instant::now();
    let event = match console.wait(timeout) {
        Wait::Event(event) => Some(event),
        Wait::TimedOut => None,
        Wait::Closed => bail!(
            "the guest is waiting for an interrupt with no timer armed and the console \
             input is closed: it can never wake up"
        ),
    };
    let elapsed =
        u64::try_from(started.elapsed().as_nanos() / u128::from(TICK_NS)).unwrap_or(u64::MAX);
    // Woken by the timer, exactly the ticks to the deadline pass (any
    // oversleep of the host is made up by steering).
    let slept = match (event.is_some() || polling, ticks_to_deadline) {
        (false, Some(ticks)) => ticks,
        (_, deadline) => deadline.map_or(elapsed, |d| elapsed.min(d)),
    };
    recorder.inject(machine, Input::IdleSleep { ticks: slept })?;
    match event {
        Some(ConsoleEvent::Byte(byte)) => recorder.inject(machine, Input::ConsoleByte(byte))?,
        Some(ConsoleEvent::Quit) => return Ok(Some(End::Quit)),
        None => {}
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_codes_never_map_to_success() {
        assert_eq!(guest_exit_code(0), ExitCode::SUCCESS);
        assert_eq!(guest_exit_code(3), ExitCode::from(3));
        assert_eq!(guest_exit_code(0x100), ExitCode::FAILURE);
        assert_eq!(guest_exit_code(0x1ff), ExitCode::from(0xff));
    }
}
