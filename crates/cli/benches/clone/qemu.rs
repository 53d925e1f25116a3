//! The peer: QEMU's live migration of the same guest on TCG, from one
//! `qemu-system-riscv64` to another started with `-incoming`, driven
//! through QMP.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, describe, free_port, image_dir, qemu_virt_args};
use crate::{
    BOOT_LIMIT, QEMU_MAX_BANDWIDTH, STEP_LIMIT, TICK_LIMIT, TICKS_BEFORE, append, last_tick, ms,
};

/// A QMP connection.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect to the QMP socket at `path` (retrying until QEMU listens,
    /// at most `limit`) and leave capabilities negotiation.
    fn connect(path: &Path, limit: Duration) -> Result<Qmp, String> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > limit => {
                    return Err(format!("connecting to {}: {e}", path.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP closed".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}")),
            Err(e) => Err(format!("reading QMP: {e}")),
        }
    }

    /// Run `command`; its `return`, or its error.
    fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, String> {
        let mut message = json!({ "execute": command });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        writeln!(self.writer, "{message}").map_err(|e| format!("writing QMP: {e}"))?;
        loop {
            let reply = self.read()?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            return Err(format!("{command}: {reply}"));
        }
    }
}

/// A `qemu-system-riscv64` of the default guest, killed when dropped; its
/// serial console collected as it comes.
struct Qemu {
    child: Child,
    console: Arc<Mutex<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    command: String,
    qmp: Qmp,
}

impl Qemu {
    fn start(memory_mib: u64, qmp: &Path, extra: &[String]) -> Qemu {
        let dir = image_dir();
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let mut cmd = Command::new("qemu-system-riscv64");
        cmd.args(qemu_virt_args(memory_mib))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(["-bios", &path("fw_dynamic.bin")])
            .args(["-kernel", &path("Image")])
            .args(["-initrd", &path("initramfs.cpio.gz")])
            .arg("-append")
            .arg(append(memory_mib))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command = describe(&cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command}: {e}"));
        let console = support::collect(child.stdout.take().expect("piped stdout"));
        let stderr = Some(support::drain(child.stderr.take().expect("piped stderr")));
        let qmp = match Qmp::connect(qmp, Duration::from_secs(30)) {
            Ok(qmp) => qmp,
            Err(e) => {
                let _ = child.kill();
                panic!("{command}: QMP: {e}");
            }
        };
        Qemu {
            child,
            console,
            stderr,
            command,
            qmp,
        }
    }

    fn last_tick(&self) -> Option<u64> {
        last_tick(&self.console.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Fail the bench saying `what`, with the command, console tail and
    /// stderr.
    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let console = self
            .console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let tail = &console[console.len().saturating_sub(400)..];
        panic!(
            "{what}\ncommand: {}\nconsole tail:\n{}\nstderr:\n{}",
            self.command,
            String::from_utf8_lossy(tail),
            String::from_utf8_lossy(&stderr)
        );
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One QEMU live migration.
pub struct Migration {
    /// As QEMU reports them (`query-migrate`), ms.
    pub total_ms: f64,
    pub downtime_ms: f64,
    /// `ram.transferred`.
    pub bytes: f64,
    /// From `migrate` until `query-migrate` said `completed`, on the host.
    pub wall_ms: f64,
    /// The guest printed a new tick on the destination within
    /// [`TICK_LIMIT`].
    pub resumed: bool,
}

pub fn qemu_migration(memory_mib: u64, run: usize) -> Migration {
    let scratch = support::Scratch::new(&format!("clone-bench-qemu-{memory_mib}-{run}"));
    let mut source = Qemu::start(memory_mib, &scratch.file("source.qmp"), &[]);
    let start = Instant::now();
    while source.last_tick().is_none_or(|t| t < TICKS_BEFORE) {
        if start.elapsed() > BOOT_LIMIT {
            source.fail(&format!("no tick {TICKS_BEFORE} within {BOOT_LIMIT:?}"));
        }
        if let Ok(Some(status)) = source.child.try_wait() {
            source.fail(&format!("QEMU ended: {status}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = free_port();
    // Its QMP answers once QEMU runs its main loop, after it listens for
    // the migration.
    let mut destination = Qemu::start(
        memory_mib,
        &scratch.file("destination.qmp"),
        &["-incoming".to_string(), format!("tcp:127.0.0.1:{port}")],
    );
    if let Err(e) = source.qmp.execute(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": QEMU_MAX_BANDWIDTH })),
    ) {
        source.fail(&e);
    }
    let before = source.last_tick();
    let started = Instant::now();
    if let Err(e) = source.qmp.execute(
        "migrate",
        Some(json!({ "uri": format!("tcp:127.0.0.1:{port}") })),
    ) {
        source.fail(&e);
    }
    let info = loop {
        let info = match source.qmp.execute("query-migrate", None) {
            Ok(info) => info,
            Err(e) => source.fail(&e),
        };
        match info["status"].as_str() {
            Some("completed") => break info,
            Some("failed" | "cancelled") => source.fail(&format!("migration: {info}")),
            _ => {}
        }
        if started.elapsed() > STEP_LIMIT {
            source.fail(&format!(
                "migration not completed within {STEP_LIMIT:?}: {info}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall_ms = ms(started.elapsed());
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let waited = Instant::now();
    let mut resumed = false;
    while waited.elapsed() < TICK_LIMIT {
        if destination.last_tick() > before {
            resumed = true;
            break;
        }
        if let Ok(Some(status)) = destination.child.try_wait() {
            destination.fail(&format!("the destination QEMU ended: {status}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Migration {
        total_ms: number(&info["total-time"]),
        downtime_ms: number(&info["downtime"]),
        bytes: number(&info["ram"]["transferred"]),
        wall_ms,
        resumed,
    }
}
