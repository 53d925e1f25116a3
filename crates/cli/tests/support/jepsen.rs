//! A Jepsen-style harness for the services of the Debian guest: clients on
//! the host drive Redis or PostgreSQL through an FT pair's forwarded ports
//! and record a history of what they asked and learned (invoke, ok, fail,
//! unknown, with times), while faults hit the pair; `ftvm-check` then
//! checks the history (linearizability per Redis key; the bank's totals
//! and transfers for PostgreSQL).
//!
//! An operation whose outcome the client never learned (a timeout, a
//! dropped connection) is recorded as unknown, never as failed: it may
//! have happened. Only what the server refused before doing anything
//! (an error reply, an aborted serializable transaction) is a failure.
//!
//! Only `tests/services.rs` includes it (`#[path]`), so the other test
//! binaries do not link the Redis and PostgreSQL clients.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ftvm_check::{
    BankInput, BankOutput, History, KvOp, OpId, Outcome, ProcessId, RegisterOp, RegisterOutput,
    Transfer,
};

use crate::support::pair::{Pair, StatusLine, VmState};
use crate::support::{DEBIAN_APPEND, free_port, poll, process_alive, repo_root, signal};

/// How long a client waits for one reply before it calls the operation
/// unknown: far beyond a failover's pause, so that an unknown means the
/// connection was lost, not that the pair was slow.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Booting Debian under a pair, to Redis and PostgreSQL answering.
pub const BOOT_LIMIT: Duration = Duration::from_secs(600);
/// A failure, the take-over and the restore of redundancy.
pub const RESTORE_LIMIT: Duration = Duration::from_secs(240);
/// How many epochs past the expected one a pair may have reached.
const EPOCHS_AHEAD: u64 = 50;
/// The Debian guest's memory (MiB): PostgreSQL, Redis and systemd with
/// room for the page cache.
pub const DEBIAN_MEMORY_MIB: &str = "512";

/// The Debian guest built by `scripts/guest-image --debian`.
pub fn debian_image() -> PathBuf {
    let dir = repo_root().join("build/guest-image/debian");
    assert!(
        dir.join("disk.ext4").exists(),
        "the Debian guest is not built in {}: run scripts/guest-image --debian",
        dir.display()
    );
    dir
}

/// Nanoseconds since the run began, shared by every client's history.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// A small deterministic generator per client (`FTVM_SEED` repeats a run's
/// choices, not the pair's timing).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

// ---------------------------------------------------------------------
// The pair

/// The Debian guest as an FT pair with the agent that restores redundancy,
/// Redis and PostgreSQL forwarded to loopback ports.
pub struct DebianPair {
    pub pair: Pair,
    pub redis_port: u16,
    pub postgres_port: u16,
}

impl DebianPair {
    pub fn up(tag: &str) -> DebianPair {
        let image = debian_image();
        let mut pair = Pair::new(tag);
        let disk = pair.path("disk.img");
        let copy = std::process::Command::new("cp")
            .arg("--sparse=always")
            .arg(image.join("disk.ext4"))
            .arg(&disk)
            .status()
            .expect("cp");
        assert!(copy.success(), "copying the Debian disk");
        let (redis_port, postgres_port) = (free_port(), free_port());
        let arg = |p: &Path| p.to_string_lossy().into_owned();
        let args = [
            "--kernel".to_string(),
            arg(&image.join("vmlinux")),
            "--initrd".to_string(),
            arg(&image.join("initrd.img")),
            "--disk".to_string(),
            arg(&disk),
            "--memory".to_string(),
            DEBIAN_MEMORY_MIB.to_string(),
            "--append".to_string(),
            DEBIAN_APPEND.to_string(),
            "--net".to_string(),
            format!(
                "user,hostfwd=tcp:127.0.0.1:{redis_port}-:6379,\
                 hostfwd=tcp:127.0.0.1:{postgres_port}-:5432"
            ),
            // Two busy emulators on a 2-core CI machine can each miss a
            // second of heartbeats without any failure.
            "--timeout-ms".to_string(),
            "2000".to_string(),
            "--heartbeat-ms".to_string(),
            "50".to_string(),
        ];
        pair.up_restoring(&args);
        DebianPair {
            pair,
            redis_port,
            postgres_port,
        }
    }

    /// Wait until Redis and PostgreSQL both answer.
    pub fn wait_services(&self) -> Duration {
        let start = Instant::now();
        let redis = poll(BOOT_LIMIT, || redis_connect(self.redis_port).ok());
        assert!(
            redis.is_some(),
            "Redis never answered\n{}",
            self.pair.diag()
        );
        let left = BOOT_LIMIT.saturating_sub(start.elapsed());
        let pg = poll(left, || postgres_connect(self.postgres_port).ok());
        assert!(
            pg.is_some(),
            "PostgreSQL never answered\n{}",
            self.pair.diag()
        );
        start.elapsed()
    }
}

// ---------------------------------------------------------------------
// Faults

/// What the harness does to the pair.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// kill -9 of the VM that runs the guest.
    KillPrimary,
    /// kill -9 of its backup.
    KillBackup,
    /// SIGSTOP of the primary: the backup takes over while the old primary
    /// is frozen; resumed, it must lose the test-and-set and halt.
    StopPrimary,
}

impl Fault {
    pub const CYCLE: [Fault; 3] = [Fault::KillPrimary, Fault::KillBackup, Fault::StopPrimary];
}

/// Faults, one after another, each once the pair is whole again.
pub struct Nemesis {
    pub epoch: u64,
    pub failovers: u64,
}

impl Nemesis {
    pub fn new() -> Nemesis {
        Nemesis {
            epoch: 1,
            failovers: 0,
        }
    }

    /// Inject `fault` into the whole pair of the current epoch (or a later
    /// one: a loaded host can split a pair by itself), then wait until
    /// redundancy is back (a pair of a later epoch).
    pub fn inject(&mut self, pair: &Pair, fault: Fault) {
        let (primary, backup) = pair.wait_protected(
            self.epoch..=self.epoch + EPOCHS_AHEAD,
            &format!("a whole pair of epoch {} or later", self.epoch),
            RESTORE_LIMIT,
        );
        let epoch = primary.epoch.unwrap_or(self.epoch);
        match fault {
            Fault::KillPrimary => signal(primary.pid, libc::SIGKILL),
            Fault::KillBackup => signal(backup.pid, libc::SIGKILL),
            Fault::StopPrimary => {
                signal(primary.pid, libc::SIGSTOP);
                let took_over = poll(RESTORE_LIMIT, || {
                    let status = pair.ftvm_status();
                    status
                        .alive()
                        .iter()
                        .any(|l| l.pid == backup.pid && l.state == VmState::Live)
                        .then_some(())
                });
                signal(primary.pid, libc::SIGCONT);
                assert!(
                    took_over.is_some(),
                    "the backup never took over from a frozen primary\n{}",
                    pair.diag()
                );
                self.expect_halted(pair, &primary);
            }
        }
        if !matches!(fault, Fault::KillBackup) {
            self.failovers += 1;
        }
        let (primary, _) = pair.wait_protected(
            epoch + 1..=epoch + 1 + EPOCHS_AHEAD,
            &format!("redundancy back after {fault:?}"),
            RESTORE_LIMIT,
        );
        self.epoch = primary.epoch.unwrap_or(epoch + 1);
    }

    /// Epochs the pair went through beyond one per fault: failures no
    /// fault caused (a pair split by an overloaded host).
    pub fn unplanned(&self, faults: u64) -> u64 {
        (self.epoch - 1).saturating_sub(faults)
    }

    /// The resumed old primary lost the test-and-set: it never runs the
    /// guest again and ends.
    fn expect_halted(&self, pair: &Pair, old: &StatusLine) {
        let gone = poll(RESTORE_LIMIT, || {
            let alive = process_alive(old.pid);
            (!alive).then_some(())
        });
        assert!(
            gone.is_some(),
            "the resumed old primary (pid {}) still runs\n{}",
            old.pid,
            pair.diag()
        );
    }
}

// ---------------------------------------------------------------------
// Clients

/// What one client recorded, and the longest it waited for a reply.
pub struct ClientLog<I, O> {
    pub history: History<I, O>,
    pub longest_wait: Duration,
}

impl<I, O> ClientLog<I, O> {
    fn new() -> Self {
        ClientLog {
            history: History::new(),
            longest_wait: Duration::ZERO,
        }
    }

    /// Complete `id` with how its call ended; whether the connection is
    /// lost (an unknown outcome: the client reconnects).
    fn record(&mut self, id: OpId, outcome: Outcome<O>, call: u64, ret: u64) -> bool {
        if matches!(outcome, Outcome::Ok(_)) {
            self.longest_wait = self.longest_wait.max(Duration::from_nanos(ret - call));
        }
        let lost = matches!(outcome, Outcome::Unknown);
        self.history
            .complete(id, outcome, ret)
            .expect("completing a pending operation");
        lost
    }
}

/// Clients running until [`Clients::finish`].
pub struct Clients<I, O> {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ClientLog<I, O>>>,
}

impl<I: Send + 'static, O: Send + 'static> Clients<I, O> {
    pub fn spawn(
        n: u64,
        body: impl Fn(ProcessId, Arc<AtomicBool>) -> ClientLog<I, O> + Send + Sync + Clone + 'static,
    ) -> Clients<I, O> {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|process| {
                let (stop, body) = (Arc::clone(&stop), body.clone());
                std::thread::spawn(move || body(process, stop))
            })
            .collect();
        Clients { stop, threads }
    }

    /// Stop every client after its current operation; their histories
    /// merged, and the longest wait.
    pub fn finish(self) -> (History<I, O>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let mut history = History::new();
        let mut longest = Duration::ZERO;
        for thread in self.threads {
            let mut log = thread.join().expect("a client panicked");
            history.append(&mut log.history);
            longest = longest.max(log.longest_wait);
        }
        (history, longest)
    }
}

// ---------------------------------------------------------------------
// Redis: registers, one per key

/// Compare-and-set as one Lua script: Redis runs a script atomically.
const CAS_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     redis.call('SET', KEYS[1], ARGV[2]) return 1 else return 0 end";

pub fn redis_connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5))?;
    con.set_read_timeout(Some(REPLY_TIMEOUT))?;
    con.set_write_timeout(Some(REPLY_TIMEOUT))?;
    redis::cmd("PING").query::<String>(&mut con)?;
    Ok(con)
}

fn redis_outcome<T>(result: redis::RedisResult<T>) -> Outcome<T> {
    match result {
        Ok(value) => Outcome::Ok(value),
        // An error reply (a code such as LOADING or BUSY): Redis refused
        // the command as a whole.
        Err(e) if e.code().is_some() => Outcome::Fail,
        Err(_) => Outcome::Unknown,
    }
}

/// One Redis client: reads, writes of values unique to the run, and
/// compare-and-sets from a value it read, on `keys` keys, until stopped.
pub fn redis_client(
    port: u16,
    keys: u64,
    seed: u64,
    clock: Clock,
) -> impl Fn(ProcessId, Arc<AtomicBool>) -> ClientLog<KvOp<u64>, RegisterOutput> + Clone {
    move |process, stop| {
        let mut rng = Rng::new(seed ^ ((process + 1) * 7919));
        let mut log = ClientLog::new();
        let script = redis::Script::new(CAS_SCRIPT);
        let mut con = None;
        let mut seen: Vec<Option<i64>> = vec![None; keys as usize];
        let mut next = 0i64;
        while !stop.load(Ordering::Relaxed) {
            let Some(c) = con.as_mut() else {
                match redis_connect(port) {
                    Ok(c) => con = Some(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
                continue;
            };
            let key = rng.below(keys);
            let name = format!("k{key}");
            next += 1;
            let unique = (process as i64 + 1) * 1_000_000_000 + next;
            let op = match (rng.below(10), seen[key as usize]) {
                (0..=3, _) => RegisterOp::Read,
                (4..=6, _) | (_, None) => RegisterOp::Write(unique),
                (_, Some(expected)) => RegisterOp::Cas(expected, unique),
            };
            let call = clock.now();
            let id = log.history.invoke(process, KvOp { key, op }, call);
            let outcome = match op {
                RegisterOp::Read => redis_outcome(
                    redis::cmd("GET")
                        .arg(&name)
                        .query::<Option<i64>>(c)
                        .map(RegisterOutput::Read),
                ),
                RegisterOp::Write(v) => redis_outcome(
                    redis::cmd("SET")
                        .arg(&name)
                        .arg(v)
                        .query::<()>(c)
                        .map(|()| RegisterOutput::Written),
                ),
                RegisterOp::Cas(expected, new) => redis_outcome(
                    script
                        .key(&name)
                        .arg(expected)
                        .arg(new)
                        .invoke::<i64>(c)
                        .map(|swapped| RegisterOutput::Cas(swapped == 1)),
                ),
            };
            let ret = clock.now();
            if let Outcome::Ok(out) = &outcome {
                seen[key as usize] = match *out {
                    RegisterOutput::Read(v) => v,
                    RegisterOutput::Written | RegisterOutput::Cas(true) => Some(unique),
                    RegisterOutput::Cas(false) => seen[key as usize],
                };
            }
            if log.record(id, outcome, call, ret) {
                con = None;
            }
            std::thread::sleep(Duration::from_millis(2 + rng.below(8)));
        }
        log
    }
}

// ---------------------------------------------------------------------
// PostgreSQL: the bank

pub const ACCOUNTS: usize = 5;
pub const INITIAL_BALANCE: i64 = 100;

pub fn postgres_connect(port: u16) -> Result<postgres::Client, postgres::Error> {
    let mut config = postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("ftvm")
        .password("ftvm")
        .dbname("ftvm")
        .connect_timeout(Duration::from_secs(5))
        .tcp_user_timeout(REPLY_TIMEOUT);
    let mut client = config.connect(postgres::NoTls)?;
    client.simple_query("SELECT 1")?;
    Ok(client)
}

/// A fresh bank: `ACCOUNTS` accounts of `INITIAL_BALANCE` each.
pub fn create_bank(port: u16) {
    let mut client = postgres_connect(port).expect("connecting to PostgreSQL");
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS accounts; \
             CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL); \
             INSERT INTO accounts SELECT i, {INITIAL_BALANCE} FROM generate_series(0, {}) i;",
            ACCOUNTS - 1
        ))
        .expect("creating the bank");
}

/// Every balance, in one transaction.
pub fn read_balances(client: &mut postgres::Client) -> Result<Vec<i64>, postgres::Error> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::Serializable)
        .start()?;
    let rows = tx.query("SELECT balance FROM accounts ORDER BY id", &[])?;
    tx.commit()?;
    Ok(rows.iter().map(|row| row.get::<_, i64>(0)).collect())
}

fn transfer(client: &mut postgres::Client, t: Transfer) -> Result<BankOutput, postgres::Error> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::Serializable)
        .start()?;
    let debited = tx.execute(
        "UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance >= $1",
        &[&t.amount, &(t.from as i32)],
    )?;
    if debited == 0 {
        tx.commit()?;
        return Ok(BankOutput::Declined);
    }
    tx.execute(
        "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
        &[&t.amount, &(t.to as i32)],
    )?;
    tx.commit()?;
    Ok(BankOutput::Transferred)
}

fn postgres_outcome<T>(result: Result<T, postgres::Error>) -> Outcome<T> {
    match result {
        Ok(value) => Outcome::Ok(value),
        // The server answered with an error (a serialization failure, a
        // deadlock): the transaction was rolled back.
        Err(e) if e.as_db_error().is_some() => Outcome::Fail,
        Err(_) => Outcome::Unknown,
    }
}

/// One bank client: transfers between random accounts and reads of every
/// balance, in serializable transactions, until stopped.
pub fn bank_client(
    port: u16,
    seed: u64,
    clock: Clock,
) -> impl Fn(ProcessId, Arc<AtomicBool>) -> ClientLog<BankInput, BankOutput> + Clone {
    move |process, stop| {
        let mut rng = Rng::new(seed ^ ((process + 1) * 104_729));
        let mut log = ClientLog::new();
        let mut client = None;
        while !stop.load(Ordering::Relaxed) {
            let Some(c) = client.as_mut() else {
                match postgres_connect(port) {
                    Ok(c) => client = Some(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
                continue;
            };
            let input = if rng.below(10) < 3 {
                BankInput::Read
            } else {
                let from = rng.below(ACCOUNTS as u64) as usize;
                let to = (from + 1 + rng.below(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
                BankInput::Transfer(Transfer {
                    from,
                    to,
                    amount: 1 + rng.below(20) as i64,
                })
            };
            let call = clock.now();
            let id = log.history.invoke(process, input.clone(), call);
            let outcome = match input {
                BankInput::Read => postgres_outcome(read_balances(c).map(BankOutput::Balances)),
                BankInput::Transfer(t) => postgres_outcome(transfer(c, t)),
            };
            let ret = clock.now();
            if log.record(id, outcome, call, ret) {
                client = None;
            }
            std::thread::sleep(Duration::from_millis(2 + rng.below(8)));
        }
        log
    }
}

// ---------------------------------------------------------------------
// The report

/// One line of the results table.
pub struct RunReport {
    pub service: &'static str,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub failovers: u64,
    pub faults: u64,
    /// Failures no fault caused (an overloaded host splitting the pair).
    pub unplanned: u64,
    pub anomalies: usize,
    pub longest_pause: Duration,
    pub check: String,
}

impl RunReport {
    pub fn count<I, O>(
        service: &'static str,
        history: &History<I, O>,
        nemesis: &Nemesis,
        faults: u64,
    ) -> RunReport {
        let count =
            |f: fn(&Outcome<O>) -> bool| history.ops().iter().filter(|op| f(&op.outcome)).count();
        RunReport {
            service,
            ok: count(|o| matches!(o, Outcome::Ok(_))),
            failed: count(|o| matches!(o, Outcome::Fail)),
            unknown: count(|o| matches!(o, Outcome::Unknown)),
            failovers: nemesis.failovers,
            faults,
            unplanned: nemesis.unplanned(faults),
            anomalies: 0,
            longest_pause: Duration::ZERO,
            check: String::new(),
        }
    }

    /// Print the table straight to the test's stderr (not captured by the
    /// test harness), so that CI's log shows it on success too.
    pub fn print(reports: &[RunReport]) {
        let mut table = String::from(
            "\n| service | ok ops | failed | unknown | faults | failovers | unplanned failures \
             | anomalies | longest pause | check |\n|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in reports {
            table += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} s | {} |\n",
                r.service,
                r.ok,
                r.failed,
                r.unknown,
                r.faults,
                r.failovers,
                r.unplanned,
                r.anomalies,
                r.longest_pause.as_secs_f64(),
                r.check,
            );
        }
        let _ = std::io::stderr().write_all(table.as_bytes());
    }
}
