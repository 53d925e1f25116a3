//! `ftvm replay`: re-execute a recorded log and check it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use ftvm_replay::{End, Fault, Output, Replayer};

use crate::EngineArg;

#[derive(Args)]
pub struct ReplayArgs {
    /// The log written by `ftvm run --record FILE`.
    #[arg(value_name = "FILE")]
    log: PathBuf,

    /// Write the guest's console output to stdout (byte for byte what the
    /// recorded run printed).
    #[arg(long)]
    console: bool,

    /// How the CPU executes (see `ftvm run --engine`); the replay must
    /// give the same result with either.
    #[arg(long, value_name = "ENGINE", default_value_t = EngineArg::default())]
    engine: EngineArg,

    /// Test hook: flip bit 3 of integer register REG once the replay
    /// reaches ICOUNT, to check that divergence detection catches it.
    #[arg(long, value_name = "ICOUNT:xREG", hide = true)]
    test_flip_register: Option<String>,
}

fn parse_fault(spec: &str) -> Result<Fault> {
    let bad = || format!("--test-flip-register wants ICOUNT:xREG (e.g. 1000:x2), not {spec:?}");
    let (icount, reg) = spec.split_once(':').with_context(bad)?;
    let register: usize = reg
        .strip_prefix('x')
        .and_then(|r| r.parse().ok())
        .filter(|r| (1..32).contains(r))
        .with_context(bad)?;
    Ok(Fault {
        icount: icount.parse().ok().with_context(bad)?,
        register,
        mask: 1 << 3,
    })
}

pub fn replay(args: &ReplayArgs) -> Result<ExitCode> {
    let fault = args
        .test_flip_register
        .as_deref()
        .map(parse_fault)
        .transpose()?;
    let name = args.log.display();
    let file = std::fs::File::open(&args.log).with_context(|| format!("opening the log {name}"))?;
    // How much of the log has been read, on a terminal (hidden elsewhere).
    let progress = crate::progress::bytes(file.metadata().map_or(0, |m| m.len()), "replaying");
    let mut replayer = Replayer::new(
        progress.wrap_read(std::io::BufReader::new(file)),
        args.engine.engine(),
        &ftvm_host::files::HostFiles,
    )
    .with_context(|| format!("log {name}"))?;
    replayer.set_fault(fault);
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let mut out = |output: Output| {
        if let (Output::Console(bytes), true) = (&output, args.console) {
            if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
                write_error.get_or_insert(e);
            }
        }
    };
    let result = replayer.run(&mut out);
    progress.finish_and_clear();
    if let Some(e) = write_error {
        return Err(e).context("writing the guest console to stdout");
    }
    let done = match result {
        Ok(done) => done,
        Err(e) => bail!("log {name}: {e}"),
    };
    let how = match done.end {
        End::PowerOff { code } => format!("the guest powered off (code {code})"),
        End::HtifExit { code } => format!("the guest exited through HTIF (code {code})"),
        End::InsnLimit => "the recording's instruction limit".into(),
        End::Quit => "the user quit the recording".into(),
    };
    eprintln!(
        "ftvm: replayed {} entries to icount {}, where {how}; {} checkpoints matched",
        done.entries, done.icount, done.checkpoints
    );
    eprintln!("icount: {}", done.icount);
    eprintln!("final state digest: {}", done.digest);
    Ok(ExitCode::SUCCESS)
}
