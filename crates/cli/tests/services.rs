//! Real services in the FT VM, checked like Jepsen checks databases: the
//! Debian guest (`scripts/guest-image --debian`: Debian's kernel, systemd,
//! Redis and PostgreSQL as Debian packages them) runs as a pair with the
//! agent that restores redundancy, while clients on the host record a
//! history through the pair's forwarded ports and faults hit the pair:
//! kill -9 of the primary, of the backup, and SIGSTOP of the primary (the
//! resumed old primary must halt), each once the pair is whole again.
//!
//! - Redis, with Debian's configuration (no fsync per write: in an FT VM
//!   the memory itself survives): reads, writes and compare-and-set (a Lua
//!   script) on a few keys, checked linearizable key by key.
//! - PostgreSQL: transfers between accounts and reads of every balance in
//!   serializable transactions; every read sees the same total, and the
//!   final balances are the initial ones plus every acknowledged transfer
//!   (and some of the unknown ones).
//!
//! Each test prints a table (operations, faults, failovers, anomalies,
//! longest pause a client saw) on stderr. `FTVM_SOAK=N` runs N faults
//! instead of three; `FTVM_SEED` repeats the clients' choices.

#[path = "support/jepsen.rs"]
mod jepsen;
mod support;

use std::time::{Duration, Instant};

use ftvm_check::{Bank, CheckOptions, CheckResult, Register, check_with};
use jepsen::{
    ACCOUNTS, Clients, Clock, DebianPair, Fault, INITIAL_BALANCE, Nemesis, RunReport, bank_client,
    create_bank, postgres_connect, read_balances, redis_client,
};
use support::{kill_seed, serial};

/// Faults per run: one of each kind, or `FTVM_SOAK`.
fn faults() -> u64 {
    std::env::var("FTVM_SOAK")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

/// The most the linearizability check may take.
const CHECK_LIMIT: Duration = Duration::from_secs(300);

/// The clients' work between two faults.
const BETWEEN_FAULTS: Duration = Duration::from_secs(4);

/// Run the faults against `pair` while the clients work.
fn nemesis(pair: &DebianPair, faults: u64) -> Nemesis {
    let mut nemesis = Nemesis::new();
    std::thread::sleep(BETWEEN_FAULTS);
    for n in 0..faults {
        nemesis.inject(&pair.pair, Fault::CYCLE[(n % 3) as usize]);
        std::thread::sleep(BETWEEN_FAULTS);
    }
    nemesis
}

#[test]
fn redis_stays_linearizable_and_postgres_loses_no_transfer_across_failovers() {
    let _serial = serial();
    let seed = kill_seed();
    let pair = DebianPair::up("services");
    let boot = pair.wait_services();
    eprintln!("Debian booted to Redis and PostgreSQL in {boot:?}");
    create_bank(pair.postgres_port);

    // Both services under load at once, through the same faults.
    let clock = Clock::start();
    let redis = Clients::spawn(5, redis_client(pair.redis_port, 6, seed, clock));
    let bank = Clients::spawn(4, bank_client(pair.postgres_port, seed, clock));
    let faults = faults();
    let nemesis = nemesis(&pair, faults);
    let (redis_history, redis_longest) = redis.finish();
    let (bank_history, bank_longest) = bank.finish();
    let final_balances = {
        let mut client = postgres_connect(pair.postgres_port).expect("connecting at the end");
        read_balances(&mut client).expect("the final read")
    };
    pair.pair.stop();

    // The checker reads no clock: the deadline is ours. Giving up is
    // reported as such, never as linearizable.
    let deadline = Instant::now() + CHECK_LIMIT;
    let past_deadline = || Instant::now() > deadline;
    let options = CheckOptions {
        interrupt: Some(&past_deadline),
        ..CheckOptions::default()
    };
    let linearizable =
        check_with(&Register::default(), &redis_history, &options).expect("a valid history");
    let mut redis_report = RunReport::count("redis", &redis_history, &nemesis, faults);
    redis_report.longest_pause = redis_longest;
    redis_report.anomalies = usize::from(linearizable.is_illegal());
    redis_report.check = match &linearizable {
        CheckResult::Ok => "linearizable per key".into(),
        CheckResult::Illegal { key, .. } => format!("NOT linearizable (key k{key})"),
        CheckResult::Timeout { .. } => "the checker gave up".into(),
    };

    let accounts = Bank::new(vec![INITIAL_BALANCE; ACCOUNTS]).allow_negative(false);
    let totals = accounts
        .check(&bank_history, Some(&final_balances))
        .expect("a valid history");
    let mut bank_report = RunReport::count("postgresql", &bank_history, &nemesis, faults);
    bank_report.longest_pause = bank_longest;
    bank_report.anomalies = totals.anomalies.len();
    bank_report.check = if totals.is_ok() {
        format!(
            "{} reads of total {}; final balances explained",
            totals.reads,
            accounts.total()
        )
    } else {
        "ANOMALIES".into()
    };
    RunReport::print(&[redis_report, bank_report]);

    assert!(linearizable.is_ok(), "Redis: {linearizable}");
    assert!(totals.is_ok(), "PostgreSQL: {totals:?}");
    assert!(
        redis_history.len() > 200 && totals.transfers > 50,
        "too few operations to say anything"
    );
}
