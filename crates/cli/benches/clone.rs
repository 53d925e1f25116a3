//! Restoring redundancy: what cloning the VM that runs alone into a new
//! backup costs (ARCHITECTURE.md, "Cloning"), against QEMU's live
//! migration of the same guest, and `ftvm migrate` of either VM as a
//! client of the guest sees it. Four tables, in one run:
//!
//! 1. `ftvm protect`, for guest RAM of 128, 512 and 1024 MiB: the pause of
//!    the guest for the clone's snapshot (the survivor's `clone_pause_ms`),
//!    the bytes the snapshot took on the logging channel (`clone_bytes`;
//!    zero 64 KiB chunks skipped, the others LZ4), also as a fraction of
//!    RAM, and the time from starting `ftvm protect` until the status files
//!    show a protected pair of the next epoch. Each run: `ftvm up
//!    --no-restore --memory M --timeout-ms 5000` (see
//!    [`DETECTION_PROTECT`]), the guest fills a quarter of its RAM
//!    (incompressible data in tmpfs) and ticks, the primary is killed
//!    (`kill -9`), the backup goes live, then `ftvm protect`; the guest
//!    must go on ticking after it.
//! 2. Time to redundancy with the agent (`ftvm up` without `--no-restore`),
//!    128 MiB, `--timeout-ms 500 --heartbeat-ms 50`: from the kill of the
//!    primary until the status files show a protected pair of the next
//!    epoch, split into detection and take-over (kill to the survivor
//!    running alone), the agent's wait (running alone to cloning), and the
//!    clone (cloning to protected).
//! 3. The peer: QEMU's live migration (TCG) of the same guest (kernel,
//!    initramfs, command line, RAM), from one `qemu-system-riscv64` to
//!    another started with `-incoming tcp:127.0.0.1:PORT`, driven through
//!    QMP (`migrate`, then `query-migrate` until `completed`): its total
//!    time and downtime as QEMU reports them, the bytes it sent, and whether
//!    the guest went on ticking on the destination. Skipped, and said so,
//!    without QEMU.
//! 4. Migration (`ftvm migrate --vm backup`, then `--vm primary`, of a
//!    pair from `ftvm up --net user,hostfwd=...`, 128 MiB) under a client
//!    on one TCP connection to the guest's echo service: the command's
//!    total time and the pause the client saw, next to QEMU's total time
//!    and downtime at 128 MiB from table 3 (see the `migrate` module).
//!
//! The guest (same for all): writes 1 MiB from /dev/urandom to tmpfs,
//! `cat`s it into a file of a quarter of RAM, prints `filled`, starts an
//! echo service on port 7 (busybox `nc -ll -p 7 -e cat`; QEMU's guest has
//! no network card, so only table 4's client uses it), then prints `tick
//! N` every 100 ms. The ftvm pause and QEMU's downtime are the comparable
//! figures of tables 1 and 3: the time the guest stands still; in table 4
//! the client's pause is set against QEMU's downtime.
//!
//! The bench panics, with the pair's diagnosis (status lines, logs,
//! console), when a restore does not happen, the guest stops ticking, or a
//! migration fails. Every process is under a time limit; a pair's
//! processes are killed when it is dropped ([`support::pair::Pair`]), the
//! QEMU processes when their handle is.
//!
//! Run with `cargo bench -p ftvm --bench clone` after `scripts/guest-image`;
//! `FTVM_BENCH_RUNS` sets the runs (default 3; medians). `cargo bench -p
//! ftvm --bench clone -- migration` runs table 4 alone, with its QEMU peer
//! at 128 MiB.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "clone/migrate.rs"]
mod migrate;
#[path = "clone/pairs.rs"]
mod pairs;
#[path = "clone/qemu.rs"]
mod qemu;
#[path = "clone/table.rs"]
mod table;

use std::time::Duration;

use migrate::{INTERVAL, MESSAGE, MIGRATE_MIB, MoveRun, Moves, QUIET, ftvm_migrations};
use pairs::{CloneRun, Restore, ftvm_clone, time_to_redundancy};
use qemu::{Migration, qemu_migration};
use support::{bench_runs, qemu_available};
use table::{MB, cell, col, load_average, max, table};

/// Guest RAM of the clone rows and of QEMU's migrations, MiB.
const SIZES: [u64; 3] = [128, 512, 1024];
/// Guest RAM of the time-to-redundancy row, MiB.
const AGENT_MIB: u64 = 128;
/// Failure detection of the pairs that are cloned by hand (table 1):
/// loose, because on a 2-core host a pair of 512 MiB or more splits by
/// itself while it boots with 500 ms, and with the default 1000 ms at 1 GiB
/// (its VMs' loops stand still while they digest guest RAM for the log's
/// checkpoints, and send no heartbeat meanwhile), leaving nothing to clone.
/// The clone itself does not depend on it.
const DETECTION_PROTECT: [&str; 4] = ["--timeout-ms", "5000", "--heartbeat-ms", "100"];
/// Failure detection of the time-to-redundancy row (table 2).
const DETECTION_AGENT: [&str; 4] = ["--timeout-ms", "500", "--heartbeat-ms", "50"];
/// The tick the guest must have printed before the failure or migration.
const TICKS_BEFORE: u64 = 3;
/// Booting and filling RAM (a pair at the pace of the slower VM).
const BOOT_LIMIT: Duration = Duration::from_secs(300);
/// A failover, a clone, a migration.
const STEP_LIMIT: Duration = Duration::from_secs(180);
/// The guest's next tick after a restore or a migration.
const TICK_LIMIT: Duration = Duration::from_secs(20);
/// How often the status files are read while timing.
const POLL: Duration = Duration::from_millis(2);
/// QEMU's bandwidth limit for the migration, bytes/s: its default (32
/// MiB/s) lifted, as ftvm's stream has none.
const QEMU_MAX_BANDWIDTH: u64 = 100 << 30;

/// The guest's command: a quarter of RAM of incompressible data in tmpfs
/// (1 MiB of random bytes repeated: every 64 KiB chunk differs within
/// itself), an echo service on port 7, then a tick every 100 ms, forever.
fn guest_cmd(memory_mib: u64) -> String {
    let fill = memory_mib / 4;
    format!(
        "dd if=/dev/urandom of=/tmp/r bs=64k count=16 2>/dev/null; i=0; \
         while [ $i -lt {fill} ]; do cat /tmp/r; i=$((i+1)); done > /tmp/fill; echo filled; \
         nc -ll -p 7 -e cat & i=0; while true; do echo tick $i; i=$((i+1)); usleep 100000; done"
    )
}

fn append(memory_mib: u64) -> String {
    format!("console=ttyS0 ftvm_cmd=\"{}\"", guest_cmd(memory_mib))
}

/// The last `tick N` of a console.
fn last_tick(console: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(console)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tick ")?.parse().ok())
        .next_back()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------
// The run

struct Sample {
    /// Per entry of [`SIZES`]; none with `-- migration`.
    clones: Vec<CloneRun>,
    /// QEMU's, per guest RAM (MiB).
    migrations: Vec<(u64, Migration)>,
    restore: Option<Restore>,
    moves: Moves,
}

/// One run of every table, or of table 4 alone (`only_migration`).
fn one_run(run: usize, qemu: bool, only_migration: bool) -> Sample {
    let mut clones = Vec::new();
    let mut migrations = Vec::new();
    let sizes: &[u64] = if only_migration {
        &[MIGRATE_MIB]
    } else {
        &SIZES
    };
    for &m in sizes {
        if !only_migration {
            clones.push(ftvm_clone(m, run));
        }
        if qemu {
            migrations.push((m, qemu_migration(m, run)));
        }
    }
    Sample {
        clones,
        migrations,
        restore: (!only_migration).then(|| time_to_redundancy(run)),
        moves: ftvm_migrations(run),
    }
}

/// QEMU's migrations of `memory_mib` over the runs.
fn qemu_runs(samples: &[Sample], memory_mib: u64) -> Vec<&Migration> {
    samples
        .iter()
        .flat_map(|s| &s.migrations)
        .filter(|(m, _)| *m == memory_mib)
        .map(|(_, migration)| migration)
        .collect()
}

fn main() {
    let Some(runs) = bench_runs() else {
        return;
    };
    let qemu = qemu_available();
    let load_before = load_average();
    let only_migration = std::env::args().skip(1).any(|a| a == "migration");
    let samples: Vec<Sample> = (0..runs)
        .map(|run| one_run(run, qemu, only_migration))
        .collect();

    println!(
        "host: {} CPUs; load average (1 min) {load_before} before, {} after; {runs} runs, \
         medians (max: the largest of the runs)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!(
        "guest: the default Linux guest (same kernel, initramfs and command line on ftvm and \
         QEMU); it fills a quarter of its RAM with incompressible data (1 MiB from /dev/urandom \
         repeated, in tmpfs), starts an echo service (busybox `nc -ll -p 7 -e cat`), then prints \
         `tick N` every 100 ms; killed or migrated after tick {TICKS_BEFORE}"
    );
    println!(
        "pairs: `ftvm up`; the primary, the backup and the new backup on this host, loopback TCP; \
         MB = 2^20 bytes"
    );

    if !only_migration {
        print_clones(&samples);
        print_restore(&samples);
        print_qemu(&samples, qemu);
    }
    print_migration(&samples, qemu);
}

/// Table 1: `ftvm protect` at each guest RAM.
fn print_clones(samples: &[Sample]) {
    println!();
    println!(
        "1. `ftvm protect` after kill -9 of the primary and the backup live; `ftvm up \
         --no-restore {}` (loose: with 500 ms, or the default 1000 ms at 1 GiB, pairs of 512 MiB \
         and more split by themselves while booting on this host)",
        DETECTION_PROTECT.join(" ")
    );
    let rows: Vec<Vec<String>> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let rows: Vec<&CloneRun> = samples.iter().map(|s| &s.clones[i]).collect();
            let bytes = col(&rows, |c| c.bytes);
            let stage = |k: usize| cell(rows.iter().map(|c| c.stages_s[k]).collect(), false, 2);
            vec![
                m.to_string(),
                format!("{:.2}", col(&rows, |c| c.pause_ms)),
                format!("{:.2}", max(&rows, |c| c.pause_ms)),
                format!("{:.1}", bytes / MB),
                format!("{:.1}%", 100.0 * bytes / (m as f64 * MB)),
                stage(0),
                stage(1),
                stage(2),
                format!("{:.2}", col(&rows, |c| c.protect_s)),
                format!("{:.2}", col(&rows, |c| c.exit_s)),
            ]
        })
        .collect();
    table(
        &[
            "RAM MiB",
            "pause ms",
            "pause max",
            "snapshot MB",
            "of RAM",
            "cloning s",
            "sending s",
            "catching up s",
            "protected s",
            "protect exit s",
        ],
        &rows,
    );
    println!(
        "(pause: the survivor's clone-pause, the time the guest stood still while its machine \
         was captured into the pre-touched buffer; snapshot: the survivor's clone-bytes, what the \
         snapshot took on the channel, and that over the guest's RAM; cloning, sending, catching \
         up: seconds from starting `ftvm protect` until the survivor's status line first showed \
         the clone connecting to the new backup, sending the snapshot, the new backup catching up \
         (a stage shows within the 200 ms a status line is rewritten in); protected: until the \
         status files show a primary and a backup of epoch 2, the new backup caught up: the total \
         time of `ftvm protect`; protect exit: until the `ftvm protect` process exited)"
    );
    let splits: Vec<String> = SIZES
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let n: u32 = samples.iter().map(|s| s.clones[i].splits).sum();
            format!("{m} MiB: {n}")
        })
        .collect();
    println!(
        "pairs that split by themselves before the kill (a spurious failover while booting), \
         started again: {}",
        splits.join(", ")
    );
}

/// Table 2: time to redundancy with the agent.
fn print_restore(samples: &[Sample]) {
    println!();
    println!(
        "2. time to redundancy with the agent (`ftvm up` without --no-restore), {AGENT_MIB} MiB, \
         `{}`: ms from kill -9 of the primary, the status files read every {} ms",
        DETECTION_AGENT.join(" "),
        POLL.as_millis()
    );
    let rows: Vec<&Restore> = samples.iter().filter_map(|s| s.restore.as_ref()).collect();
    let restore_rows: Vec<Vec<String>> = [("median", false), ("max", true)]
        .into_iter()
        .map(|(what, agg)| {
            let stat = |f: &dyn Fn(&Restore) -> Option<f64>, digits| {
                cell(rows.iter().map(|r| f(r)).collect(), agg, digits)
            };
            vec![
                what.to_string(),
                stat(&|r| Some(r.live_ms), 0),
                stat(&|r| r.cloning_ms.map(|c| c - r.live_ms), 0),
                stat(&|r| r.cloning_ms.map(|c| r.protected_ms - c), 0),
                stat(&|r| Some(r.protected_ms - r.live_ms), 0),
                stat(&|r| Some(r.protected_ms), 0),
                stat(&|r| Some(r.pause_ms), 2),
                stat(&|r| Some(r.bytes / MB), 1),
            ]
        })
        .collect();
    table(
        &[
            "",
            "detection+take-over ms",
            "agent wait ms",
            "clone ms",
            "restore ms",
            "to redundancy ms",
            "pause ms",
            "snapshot MB",
        ],
        &restore_rows,
    );
    println!(
        "(detection+take-over: from the kill until the backup runs the guest alone (`live`); \
         restore: from then until the status files show a primary and a backup of epoch 2, split \
         into the agent's wait (until the survivor is `cloning`: the agent looks every 50 ms, \
         waits until a VM has run alone 200 ms, starts a new backup and asks the survivor) and \
         the clone (until protected); to redundancy: kill to protected; pause: the guest's pause \
         for the snapshot)"
    );
    println!(
        "pairs that split by themselves before the kill (a spurious failover while booting), \
         started again: {}",
        rows.iter().map(|r| r.splits).sum::<u32>()
    );
}

/// Table 3: QEMU's live migration at each guest RAM, next to the clone.
fn print_qemu(samples: &[Sample], qemu: bool) {
    println!();
    if !qemu {
        println!("3. peer: QEMU live migration: skipped (qemu-system-riscv64 not found)");
        return;
    }
    println!(
        "3. peer: QEMU live migration (TCG) of the same guest to a second qemu-system-riscv64 \
         (-incoming tcp:127.0.0.1:PORT) over loopback, through QMP; {}; max-bandwidth raised to \
         {} GiB/s (QEMU's default: 32 MiB/s), downtime-limit left at its default (300 ms)",
        support::qemu_version(),
        QEMU_MAX_BANDWIDTH >> 30
    );
    let rows: Vec<Vec<String>> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let rows = qemu_runs(samples, m);
            let clones: Vec<&CloneRun> = samples.iter().map(|s| &s.clones[i]).collect();
            let resumed = rows.iter().filter(|r| r.resumed).count();
            vec![
                m.to_string(),
                format!("{:.2}", col(&clones, |c| c.pause_ms)),
                format!("{:.0}", col(&rows, |r| r.downtime_ms)),
                format!("{:.0}", max(&rows, |r| r.downtime_ms)),
                format!("{:.2}", col(&clones, |c| c.protect_s)),
                format!("{:.2}", col(&rows, |r| r.total_ms) / 1e3),
                format!("{:.2}", col(&rows, |r| r.wall_ms) / 1e3),
                format!("{:.1}", col(&clones, |c| c.bytes) / MB),
                format!("{:.1}", col(&rows, |r| r.bytes) / MB),
                format!("{resumed}/{}", rows.len()),
            ]
        })
        .collect();
    table(
        &[
            "RAM MiB",
            "ftvm pause ms",
            "QEMU downtime ms",
            "QEMU downtime max",
            "ftvm protect s",
            "QEMU total s",
            "QEMU wall s",
            "ftvm snapshot MB",
            "QEMU sent MB",
            "QEMU guest resumed",
        ],
        &rows,
    );
    println!(
        "(the guest's pause, the comparable figures: ftvm pause = the survivor's clone-pause \
         (table 1), QEMU downtime = `downtime` of query-migrate, the stop-and-copy phase, in whole \
         ms as QEMU reports it; the whole operation: ftvm protect = table 1's protected, QEMU total \
         = `total-time` of query-migrate, from `migrate` to completion, QEMU wall = the same on \
         the host, from sending `migrate` until query-migrate (asked every 5 ms) said \
         `completed`; bytes: the clone's snapshot (table 1), QEMU's `ram.transferred`; guest \
         resumed: runs in which the destination printed a tick after the last one of the source \
         within {} s)",
        TICK_LIMIT.as_secs()
    );
}

/// Table 4: `ftvm migrate` of either VM under a client, next to QEMU's
/// live migration of the same guest with the same RAM.
fn print_migration(samples: &[Sample], qemu: bool) {
    println!();
    println!(
        "4. migration under a client, {MIGRATE_MIB} MiB: `ftvm up --memory {MIGRATE_MIB} --net \
         user,hostfwd=tcp:127.0.0.1:PORT-:7` (with the agent; default detection), then `ftvm \
         migrate --vm backup`, then `ftvm migrate --vm primary`, {} s apart; a client on one TCP \
         connection to the guest's echo service sends a {MESSAGE}-byte request {} ms after each \
         echo; the peer: QEMU's live migration of the same guest with the same RAM{}",
        QUIET.as_secs(),
        INTERVAL.as_millis(),
        if qemu {
            " (QEMU's runs of table 3)"
        } else {
            ": skipped (qemu-system-riscv64 not found)"
        }
    );
    let mut rows: Vec<Vec<String>> = [
        ("ftvm migrate --vm backup", false),
        ("ftvm migrate --vm primary", true),
    ]
    .into_iter()
    .map(|(label, primary)| {
        let runs: Vec<&MoveRun> = samples
            .iter()
            .map(|s| {
                if primary {
                    &s.moves.primary
                } else {
                    &s.moves.backup
                }
            })
            .collect();
        let stat = |f: &dyn Fn(&MoveRun) -> Option<f64>, agg, digits| {
            cell(runs.iter().map(|r| f(r)).collect(), agg, digits)
        };
        vec![
            label.to_string(),
            stat(&|r| Some(r.total_s), false, 2),
            stat(&|r| Some(r.total_s), true, 2),
            stat(&|r| Some(r.pause_ms), false, 1),
            stat(&|r| Some(r.pause_ms), true, 1),
            stat(&|r| r.hand_over_ms, false, 1),
            stat(&|r| r.clone_pause_ms, false, 2),
            stat(&|r| Some(r.rtt_during_ms), false, 2),
            stat(&|r| Some(r.rtt_outside_ms), false, 2),
            stat(&|r| Some(r.gap_ms), false, 1),
            stat(&|r| Some(r.requests as f64), false, 0),
        ]
    })
    .collect();
    let peer = qemu_runs(samples, MIGRATE_MIB);
    if !peer.is_empty() {
        let dash = || "-".to_string();
        rows.push(vec![
            "QEMU live migration (downtime)".to_string(),
            format!("{:.2}", col(&peer, |r| r.total_ms) / 1e3),
            format!("{:.2}", max(&peer, |r| r.total_ms) / 1e3),
            format!("{:.0}", col(&peer, |r| r.downtime_ms)),
            format!("{:.0}", max(&peer, |r| r.downtime_ms)),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
        ]);
    }
    table(
        &[
            "",
            "total s",
            "total max",
            "pause ms",
            "pause max",
            "hand-over ms",
            "snapshot pause ms",
            "RTT during ms",
            "RTT outside ms",
            "longest gap ms",
            "requests during",
        ],
        &rows,
    );
    let echoed: u64 = samples.iter().map(|s| s.moves.exchanges).sum();
    let resumed = peer.iter().filter(|r| r.resumed).count();
    println!(
        "(ftvm: total = from starting `ftvm migrate` until it exited, which it does once the \
         status files show a protected pair of the next epoch; pause = the pause the client saw: \
         the longest round trip of the requests under way during the command minus the median \
         round trip of the run outside both migrations (RTT outside); RTT during = the median \
         round trip of the requests under way during the command; longest gap = the longest time \
         between two echoes during it (normally a round trip plus {} ms); hand-over = what \
         `--vm primary` reports, from asking the primary until the backup runs the guest; \
         snapshot pause = the guest's pause for the new backup's snapshot, the primary's \
         clone-pause. QEMU: total = `total-time` and pause = `downtime` of query-migrate, as in \
         table 3 (its guest has no network card, so no client); the destination's guest ticked \
         on in {resumed} of {} runs. {echoed} requests echoed in all, every echo equal to its \
         request, the connection never reset; after each migration a protected pair of the next \
         epoch ran the guest on the VM expected)",
        INTERVAL.as_millis(),
        peer.len()
    );
}
