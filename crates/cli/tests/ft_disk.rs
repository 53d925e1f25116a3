//! An FT pair with a disk: no acknowledged write is lost across a
//! failover (DESIGN.md §7, invariant 4), with the shared disk (writes are
//! outputs, re-issued by a backup going live) and with private disks (the
//! backup writes its own copy), and the etcd arbiter in a real pair.
//!
//! The guest appends a counter to a file on its disk, syncs, and only then
//! prints `tick N`: a tick on the console is an acknowledged write. After
//! the primary is killed and the survivor stopped cleanly, the file on the
//! survivor's disk must hold every counter up to the last tick, in order,
//! exactly once, and the file system must check clean.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{ftvm_bin, image_dir, status_value};

const APPEND: &str = "console=ttyS0 ftvm_cmd=\"i=0; while true; do echo $i >> /mnt/log; sync; \
                      echo tick $i; i=$((i+1)); usleep 20000; done\"";

struct Pair {
    dir: PathBuf,
}

impl Pair {
    fn up(name: &str, extra: &[&str]) -> Pair {
        let dir = std::env::temp_dir().join(format!("ftvm-ft-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("state dir");
        std::fs::copy(image_dir().join("disk.ext4"), dir.join("disk.img")).expect("copy the disk");
        let pair = Pair { dir };
        let out = Command::new(ftvm_bin())
            .arg("up")
            .arg("--state-dir")
            .arg(&pair.dir)
            .arg("--disk")
            .arg(pair.dir.join("disk.img"))
            .args([
                "--append",
                APPEND,
                "--timeout-ms",
                "400",
                "--heartbeat-ms",
                "50",
            ])
            .args(extra)
            .output()
            .expect("ftvm up");
        assert!(
            out.status.success(),
            "ftvm up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pair
    }

    fn ticks(&self) -> Vec<u64> {
        let console = std::fs::read(self.dir.join("console")).unwrap_or_default();
        String::from_utf8_lossy(&console)
            .lines()
            .filter_map(|l| l.trim_end().strip_prefix("tick "))
            .map(|n| n.parse().expect("a tick line holds its number"))
            .collect()
    }

    fn wait_ticks(&self, n: usize, limit: Duration) {
        let start = Instant::now();
        while self.ticks().len() < n {
            assert!(
                start.elapsed() < limit,
                "only {} ticks after {limit:?}; logs:\n{}",
                self.ticks().len(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self, vm: &str) -> u32 {
        status_value(&self.dir.join(format!("{vm}.status")), "pid=").expect("a pid in the status")
    }

    fn status(&self) -> String {
        let out = Command::new(ftvm_bin())
            .arg("status")
            .arg("--state-dir")
            .arg(&self.dir)
            .output()
            .expect("ftvm status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs(&self) -> String {
        ["primary.log", "backup.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    fn kill(&self, vm: &str) {
        let pid = self.pid(vm);
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }

    fn wait_status(&self, line_starts: &str, limit: Duration) {
        let start = Instant::now();
        while !self.status().lines().any(|l| l.starts_with(line_starts)) {
            assert!(
                start.elapsed() < limit,
                "no `{line_starts}` VM after {limit:?}: {}\n{}",
                self.status(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&self) {
        let out = Command::new(ftvm_bin())
            .arg("stop")
            .arg("--state-dir")
            .arg(&self.dir)
            .output()
            .expect("ftvm stop");
        assert!(out.status.success(), "ftvm stop: {out:?}");
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for vm in ["primary", "backup"] {
            if let Ok(status) = std::fs::read_to_string(self.dir.join(format!("{vm}.status"))) {
                if let Some(pid) = status
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("pid="))
                {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The counters in `/log` of the ext4 image `disk`, read with debugfs.
fn disk_log(disk: &Path) -> Vec<u64> {
    let out = Command::new("debugfs")
        .args(["-R", "cat /log"])
        .arg(disk)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("a counter per line"))
        .collect()
}

fn fsck_clean(disk: &Path) {
    let out = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(disk)
        .output()
        .expect("e2fsck (e2fsprogs)");
    assert!(
        out.status.success(),
        "the file system does not check clean:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Every tick the console showed is a write on the disk, and the disk's
/// counters run 0.. without gap or duplicate.
fn check(pair: &Pair, disk: &Path) {
    let ticks = pair.ticks();
    let expected: Vec<u64> = (0..ticks.len() as u64).collect();
    assert_eq!(
        ticks, expected,
        "the console's ticks have a gap or duplicate"
    );
    let log = disk_log(disk);
    let expected: Vec<u64> = (0..log.len() as u64).collect();
    assert_eq!(log, expected, "the disk's counters have a gap or duplicate");
    assert!(
        log.len() >= ticks.len(),
        "tick {} was printed after its write was synced, but the disk holds only {} counters",
        ticks.len() - 1,
        log.len()
    );
    fsck_clean(disk);
}

fn failover(name: &str, extra: &[&str], survivor_disk: &str) {
    let pair = Pair::up(name, extra);
    pair.wait_ticks(15, Duration::from_secs(120));
    pair.kill("primary");
    let at_kill = pair.ticks().len();
    pair.wait_status("live", Duration::from_secs(30));
    pair.wait_ticks(at_kill + 15, Duration::from_secs(60));
    pair.stop();
    pair.wait_status("ended", Duration::from_secs(30));
    assert!(
        pair.logs().contains("going live"),
        "the backup did not go live:\n{}",
        pair.logs()
    );
    check(&pair, &pair.dir.join(survivor_disk));
}

#[test]
fn a_shared_disk_keeps_every_acknowledged_write_across_a_failover() {
    failover("shared", &[], "disk.img");
}

#[test]
fn a_private_disk_backup_writes_its_own_copy_and_keeps_every_write() {
    failover("private", &["--disk-mode", "private"], "backup-disk.img");
}

fn free_port() -> u16 {
    support::free_port()
}

/// The arbiter of a real pair on a real etcd (Debian's `etcd-server`,
/// installed by `scripts/deps`): the backup takes over through it.
#[test]
fn a_pair_arbitrated_by_etcd_fails_over() {
    let (client, peer) = (free_port(), free_port());
    let data = std::env::temp_dir().join(format!("ftvm-ft-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut etcd = Command::new("etcd")
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", "ftvm-test"])
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("ftvm-test={peer_url}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting etcd (Debian's etcd-server: run scripts/deps)");
    let arbiter = format!("etcd:127.0.0.1:{client}");
    let pair = Pair::up("etcd", &["--arbiter", &arbiter]);
    pair.wait_ticks(5, Duration::from_secs(120));
    pair.kill("primary");
    // The backup goes live once etcd answers (it may still be starting:
    // an unreachable arbiter only delays the takeover).
    pair.wait_status("live", Duration::from_secs(60));
    let at_live = pair.ticks().len();
    pair.wait_ticks(at_live + 5, Duration::from_secs(60));
    pair.stop();
    let _ = etcd.kill();
    let _ = etcd.wait();
    let _ = std::fs::remove_dir_all(&data);
    assert!(pair.logs().contains("verdict=Won"), "{}", pair.logs());
    check(&pair, &pair.dir.join("disk.img"));
}
