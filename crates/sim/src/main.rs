//! `ftvm-sim`: run simulator seeds (see the `ftvm_sim` crate docs).

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use ftvm_sim::{Broken, Options, run_seed};

#[derive(Parser)]
#[command(about = "Deterministic simulation of an ftvm FT pair under faults")]
struct Args {
    /// Run this many seeds.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of the range.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Run only this seed, and print its plan and outcome.
    #[arg(long)]
    seed: Option<u64>,
    /// Keep an event trace and print it with a failure.
    #[arg(long)]
    verbose: bool,
    /// A healthy pair: no faults.
    #[arg(long)]
    no_faults: bool,
    /// Every seed gets a slow link and corrupt frames (connections close
    /// while acknowledgements are in flight).
    #[arg(long)]
    slow_and_corrupt: bool,
    /// Every seed fails over early and every restore of redundancy is
    /// struck by a crash (while the snapshot is on its way, while the
    /// clone catches up, or after).
    #[arg(long)]
    restore_faults: bool,
    /// Every seed migrates the primary (a hand-over) or the backup early,
    /// once or twice, most migrations struck by a crash in the middle.
    #[arg(long)]
    migrations: bool,
    /// Run a deliberately broken variant: `ack-on-send`, `arbiter-always-wins`,
    /// `disk-loses-writes`, `no-reissue`, `stale-switch`, `clone-joins-early`,
    /// `clone-drops-log-tail`, `migrated-primary-wrong-icount` or
    /// `same-host-backup`.
    #[arg(long)]
    broken: Option<String>,
    /// Run seeds on this many threads (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let broken = match args.broken.as_deref() {
        None => None,
        Some(name) => match Broken::from_name(name) {
            Some(broken) => Some(broken),
            None => {
                eprintln!("ftvm-sim: unknown broken variant {name:?}");
                return ExitCode::from(2);
            }
        },
    };
    let options = Options {
        faults: !args.no_faults,
        broken,
        trace: args.verbose,
        slow_and_corrupt: args.slow_and_corrupt,
        restore_faults: args.restore_faults,
        migrations: args.migrations,
        strict_hand_over: true,
        ..Options::default()
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first..args.first.saturating_add(args.seeds)).collect(),
    };
    let started = Instant::now();
    let mut failed = 0u64;
    // Seeds that cloned, that completed a restore, and by what their
    // restores went through.
    let (mut cloned, mut restored, mut longest) = (0u64, 0u64, 0u64);
    // Seeds that handed over and that moved a backup.
    let (mut handed, mut moved) = (0u64, 0u64);
    let mut cases: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for (seed, result) in run_seeds(&seeds, &options, args.jobs) {
        match result {
            Ok(outcome) => {
                cloned += u64::from(outcome.clones > 0);
                restored += u64::from(outcome.restores > 0);
                longest = longest.max(outcome.longest_restore_ns);
                handed += u64::from(outcome.hand_overs > 0);
                moved += u64::from(outcome.backup_moves > 0);
                for case in &outcome.clone_cases {
                    *cases.entry(case).or_default() += 1;
                }
                if args.seed.is_some() || args.verbose {
                    println!(
                        "seed {seed}: ok, {:.0} ms virtual, {} {}, {} {}, {} console bytes, {} \
                         ticks, {} requests answered, {} frames received, takeover {}, {} clones, \
                         {} restores, {} hand-overs, {} backups moved, {} placements ({} beside \
                         the survivor), {} log entries replayed\n  plan: {}",
                        outcome.virtual_ns as f64 / 1e6,
                        outcome.hosts[0],
                        outcome.a,
                        outcome.hosts[1],
                        outcome.b,
                        outcome.console_bytes,
                        outcome.ticks_seen,
                        outcome.requests_answered,
                        outcome.frames_received,
                        outcome.takeover,
                        outcome.clones,
                        outcome.restores,
                        outcome.hand_overs,
                        outcome.backup_moves,
                        outcome.placements,
                        outcome.beside_survivor,
                        outcome.replayed_entries,
                        outcome.plan.join("; ")
                    );
                    for case in &outcome.clone_cases {
                        println!("  {case}");
                    }
                    if args.seed.is_some() {
                        for line in &outcome.trace {
                            println!("    {line}");
                        }
                    }
                }
            }
            Err(e) => {
                failed += 1;
                println!("{e}");
            }
        }
    }
    if seeds.len() > 1 {
        println!(
            "{cloned} seeds cloned a VM, {restored} completed a restore (the longest took {:.1} ms), \
             {handed} handed the primary over, {moved} moved the backup; seeds in which:",
            longest as f64 / 1e6
        );
        for (case, n) in cases {
            println!("  {n:>5}  {case}");
        }
    }
    println!(
        "{} seeds, {} failed, {:.1} s",
        seeds.len(),
        failed,
        started.elapsed().as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Run `seeds` on `jobs` threads (default: one per core); the results in
/// seed order. Each seed is a run of its own, so how they are spread over
/// threads changes nothing in any of them.
fn run_seeds(
    seeds: &[u64],
    options: &Options,
    jobs: Option<usize>,
) -> Vec<(u64, Result<ftvm_sim::Outcome, ftvm_sim::SimError>)> {
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, seeds.len().max(1));
    let mut results: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs)
            .map(|job| {
                scope.spawn(move || {
                    seeds
                        .iter()
                        .skip(job)
                        .step_by(jobs)
                        .map(|&seed| (seed, run_seed(seed, options)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    results.sort_by_key(|(seed, _)| *seed);
    results
}
