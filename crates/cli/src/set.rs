//! `ftvm set`: reconfigure a pair's running VM while it runs. The request
//! goes to the VM that runs the guest (the primary, or a VM running
//! alone) through its control socket; that VM logs the change as a
//! control entry at the instruction boundary where it applies it, so its
//! backup applies it at exactly the same instruction (ARCHITECTURE.md,
//! "The memory balloon"). Today: the memory balloon's target.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use ftvm_host::control::{Request, ask};
use ftvm_host::status::BalloonMib;

use crate::pair::{Vm, read_vms, wait_for};

#[derive(Args)]
pub struct SetArgs {
    /// The pair's directory, as given to `ftvm up`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,

    /// The memory balloon's target in MiB: how much of its RAM the guest
    /// is asked to give back (0 gives it all back). The machine must have
    /// been started with `--balloon`, and the target cannot exceed its
    /// RAM.
    #[arg(long, value_name = "MIB")]
    pub balloon: u64,

    /// Then wait until the guest's driver reports the target reached, at
    /// most this many seconds (60 if none is given).
    #[arg(
        long,
        value_name = "SECONDS",
        num_args = 0..=1,
        default_missing_value = "60"
    )]
    pub wait: Option<u64>,
}

pub fn set(args: &SetArgs) -> Result<ExitCode> {
    let dir = &args.state_dir;
    let vms = read_vms(dir);
    if vms.is_empty() {
        bail!("no pair in {}", dir.display());
    }
    let Some(guest) = guest_vm(&vms) else {
        let states: Vec<String> = vms
            .iter()
            .map(|vm| format!("{} {}", vm.name, vm.describe().state))
            .collect();
        bail!(
            "no VM in {} runs the guest now ({})",
            dir.display(),
            states.join(", ")
        );
    };
    let control = dir.join(format!("{}.control", guest.name));
    let request = Request::Balloon { mib: args.balloon };
    match ask(&control, &request).with_context(|| format!("asking {}", guest.name))? {
        Ok(what) => say(&format!("{}: {what}", guest.name))?,
        Err(why) => bail!("{} refused: {why}", guest.name),
    }
    let Some(seconds) = args.wait else {
        return Ok(ExitCode::SUCCESS);
    };
    let target = args.balloon as f64;
    let reached = wait_for(Duration::from_secs(seconds), || {
        let vms = read_vms(dir);
        let balloon = guest_vm(&vms)?.line.balloon?;
        (balloon.target == target && balloon.actual == target).then_some(())
    });
    if reached.is_err() {
        let now = read_vms(dir);
        let holds = guest_vm(&now)
            .and_then(|vm| vm.line.balloon)
            .map_or_else(|| "nothing".to_string(), |b| format!("{} MiB", b.actual));
        bail!(
            "the guest's balloon driver holds {holds} after {seconds} s, not the {} MiB asked \
             (is CONFIG_VIRTIO_BALLOON in its kernel?)",
            args.balloon
        );
    }
    for vm in read_vms(dir).iter().filter(|vm| vm.running()) {
        say(&format!(
            "{} ({}): balloon {}",
            vm.name,
            vm.line.state,
            describe(vm.line.balloon)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The VM of the pair that runs the guest: it takes the request.
fn guest_vm(vms: &[Vm]) -> Option<&Vm> {
    vms.iter()
        .find(|vm| vm.running() && vm.line.state.runs_the_guest())
}

fn describe(balloon: Option<BalloonMib>) -> String {
    match balloon {
        Some(b) => format!("target {} MiB, the guest holds {} MiB", b.target, b.actual),
        None => "not shown yet".into(),
    }
}

fn say(line: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("writing to stdout")
}
