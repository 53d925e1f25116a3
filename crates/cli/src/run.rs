//! `ftvm run`: one VM alone, with the terminal as its console: a
//! [`Node`] running solo in the host's run loop (`ftvm_host::vm`), the
//! same loop and the same node code as a VM of an FT pair.
//!
//! Guest time is steered toward the host's clock (`TimeSteering`, in the
//! node) unless `--clock icount` asks for guest time from the instruction
//! count alone. Disk and entropy requests are answered at the instruction
//! boundary where the guest made them, so that a run without other input
//! is reproducible.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ftvm_host::clock::Clock;
use ftvm_host::io::{Disk, HostIo, NetCard};
use ftvm_host::vm::{ConsoleIn, Stdout, VmHost};
use ftvm_node::{Node, NodeConfig, Status};
use ftvm_replay::End;

use crate::{ClockArg, RunArgs};

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    if !(args.checkpoint_interval.is_finite() && args.checkpoint_interval > 0.0) {
        bail!(
            "--checkpoint-interval must be a positive number of seconds, not {}",
            args.checkpoint_interval
        );
    }
    let net = match &args.net {
        Some(spec) => {
            let spec = ftvm_net::parse_net(spec)?;
            Some(NetCard {
                backend: ftvm_net::open(&spec)?,
                mtu: spec.mtu,
            })
        }
        None => None,
    };
    let io = HostIo {
        disk: args.machine.disk.as_deref().map(Disk::open).transpose()?,
        net,
    };
    let machine = args.machine.machine_config(io.devices())?;
    let mut config = NodeConfig::new("ftvm");
    config.engine = machine.engine;
    config.steer_time = args.clock == ClockArg::Host;
    config.checkpoint_interval_ns = (args.checkpoint_interval.clamp(0.001, 1e9) * 1e9) as u64;
    config.max_insns = args.max_insns;
    let recording = args
        .record
        .as_ref()
        .map(|path| {
            std::fs::File::create(path)
                .map(std::io::BufWriter::new)
                .with_context(|| format!("creating the log {}", path.display()))
        })
        .transpose()?;
    let clock = Clock::new(args.machine.rtc_time);
    let node = Node::solo(config, machine, clock.now(), recording.is_some())?;
    let mut host = VmHost::new(clock, io, ftvm_host::stop_flag()?);
    host.inline_io = true;
    host.console_in = ConsoleIn::Terminal;
    host.stdout = Stdout::Required;
    host.recording = recording.map(|file| Box::new(file) as Box<dyn std::io::Write>);
    let node = ftvm_host::vm::run(node, host)?;

    let Status::Ended(end) = *node.status() else {
        bail!("the run stopped without ending: {:?}", node.status());
    };
    let machine = node
        .machine()
        .context("the machine is gone at the end of the run")?;
    if let Some(path) = &args.record {
        tracing::info!(bytes = node.stats().log_bytes, log = %path.display(), "recording written");
    }
    if args.digest || args.record.is_some() {
        eprintln!("icount: {}", machine.icount());
        eprintln!("pc: {:#x}", machine.hart().pc());
        // A recording's last checkpoint is this very state.
        let digest = node.final_digest().unwrap_or_else(|| machine.digest());
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

/// A guest's failure code as a process exit code: its low byte, but never
/// 0 for a failure.
fn guest_exit_code(code: u64) -> ExitCode {
    match code {
        0 => ExitCode::SUCCESS,
        c if c & 0xff == 0 => ExitCode::FAILURE,
        c => ExitCode::from((c & 0xff) as u8),
    }
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
