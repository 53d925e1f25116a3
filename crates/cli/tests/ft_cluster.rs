//! FT pairs on a cluster of hosts (`ftvm agent --cluster`), each host a
//! network namespace of its own with its agent, etcd three members in
//! namespaces of their own (support::cluster):
//!
//! - Under a client's numbered durable writes over one TCP connection: a
//!   whole host killed (redundancy comes back on another host, never the
//!   survivor's), a host cut off by a partition (exactly one VM runs the
//!   guest; the isolated one halts once it can ask the arbiter again; the
//!   new backup goes to a reachable host), then both VMs migrated to
//!   other hosts. No write acknowledged is lost, the connection never
//!   resets, the disk checks clean. A request signed with another key is
//!   refused with one clear error and starts nothing.
//! - `FTVM_SOAK=N` kills N more hosts in a row in the first test.
//! - `ftvm cluster unprotect` and `protect` turn FT off and on for a
//!   running VM.
//! - etcd: with one member lost a failover and a restore still work;
//!   with a majority lost a backup whose primary dies does not go live
//!   (and does not halt) until the store answers again. A pair ended and
//!   started again under its old name still fails over.

mod support;

use std::time::Duration;

use support::cluster::{self, Cluster};
use support::writer::{BOOT_LIMIT, REPLY_LIMIT, WRITER_CMD, Writer};
use support::{disk_log, free_port, fsck_clean, image_dir, poll, serial, signal};

const DETECTION: [&str; 4] = ["--timeout-ms", "500", "--heartbeat-ms", "50"];
/// A failure, the take-over and the restore, under load.
const RESTORE_LIMIT: Duration = Duration::from_secs(90);

/// The tests need root, `ip` and etcd (scripts/deps installs etcd-server),
/// as the other namespace tests do; they fail, not skip, without them.
fn need_namespaces() {
    if let Err(why) = cluster::available() {
        panic!("this test needs network namespaces: {why}");
    }
}

fn more_writes(writer: &mut Writer, cluster: &Cluster, what: &str) {
    let before = writer.acked();
    if !writer.wait_for(before + 5, REPLY_LIMIT) {
        panic!("writes {what}: {:?}\n{}", writer.finish(), cluster.diag());
    }
}

#[test]
fn a_pair_survives_a_host_loss_a_partition_and_migrations_across_hosts() {
    let _serial = serial();
    need_namespaces();
    let mut cluster = Cluster::start("hosts", 3);
    let port = free_port();
    let net = cluster.start_switch("web", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:7"));
    let disk = cluster.scratch.file("disk.img");
    std::fs::copy(image_dir().join("disk.ext4"), &disk).expect("copy the disk");
    let mut extra: Vec<String> = vec![
        "--disk".into(),
        disk.to_string_lossy().into_owned(),
        "--net".into(),
        net,
        "--append".into(),
        format!("console=ttyS0 ftvm_cmd=\"{WRITER_CMD}\""),
    ];
    extra.extend(DETECTION.iter().map(|s| s.to_string()));
    let up = cluster.up("web", &extra);
    assert!(up.contains("protected"), "{up}");
    let mut writer = Writer::start(port);
    if !writer.wait_for(5, BOOT_LIMIT) {
        panic!(
            "the first writes: {:?}\n{}",
            writer.finish(),
            cluster.diag()
        );
    }
    let (p, b) = cluster.wait_protected("web", RESTORE_LIMIT, "the pair", |p, b| p.host != b.host);

    // A request signed with another key: refused, nothing started.
    let bad_key = cluster.scratch.file("bad.key");
    std::fs::write(&bad_key, "not the key of this cluster").expect("key");
    let mut migrate = cluster.ftvm(&["cluster", "migrate", "--pair", "web", "--vm", "backup"]);
    migrate
        .args(["--cluster", &format!("etcd:{}", cluster.endpoints())])
        .arg("--cluster-key")
        .arg(&bad_key);
    let out = migrate.output().expect("ftvm cluster migrate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a request with a wrong key worked");
    assert!(
        stderr.contains("does not hold this cluster key"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one error: {stderr}");
    let agent_log = std::fs::read_to_string(cluster.scratch.file(&format!("{}-agent.log", p.host)))
        .unwrap_or_default();
    assert!(agent_log.contains("refused a request"), "{agent_log}");
    let records = cluster.records("web");
    assert_eq!(records.len(), 2, "something was started: {records:?}");

    // 1. The primary's whole host dies: the backup takes over, and its
    // new backup goes to the third host (never the survivor's).
    cluster.kill_host(&p.host);
    let (p1, b1) = cluster.wait_protected(
        "web",
        RESTORE_LIMIT,
        "restored after a host died",
        |np, _| np.epoch > p.epoch,
    );
    assert_eq!(
        (&*p1.name, &*p1.host),
        (&*b.name, &*b.host),
        "the backup took over"
    );
    assert!(
        b1.host != p1.host && b1.host != p.host,
        "the new backup is on {}",
        b1.host
    );
    more_writes(&mut writer, &cluster, "after a host died");
    // The host comes back, empty.
    let dead = cluster
        .hosts
        .iter()
        .position(|h| h.name == p.host)
        .expect("host");
    cluster.start_agent(dead);
    cluster.wait_registered(3);
    // The soak (`FTVM_SOAK=N`): N more hosts killed, alternately the
    // primary's and the backup's, each after redundancy came back, each
    // coming back empty.
    let soak: usize = std::env::var("FTVM_SOAK")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let (mut p1, mut b1) = (p1, b1);
    for round in 0..soak {
        let (old_p, old_b) = (p1.clone(), b1.clone());
        let host = if round % 2 == 0 {
            &old_p.host
        } else {
            &old_b.host
        };
        cluster.kill_host(host);
        (p1, b1) =
            cluster.wait_protected("web", RESTORE_LIMIT, "restored in the soak", |np, nb| {
                np.epoch > old_p.epoch && np.host != *host && nb.host != *host
            });
        more_writes(
            &mut writer,
            &cluster,
            &format!("after host {host} died (soak {round})"),
        );
        let i = cluster
            .hosts
            .iter()
            .position(|h| h.name == *host)
            .expect("host");
        cluster.start_agent(i);
        cluster.wait_registered(3);
    }

    // 2. The primary's host is cut off: the backup takes over, the new
    // backup goes to a host it can reach, and the isolated VM never runs
    // the guest on; it halts once it can ask the arbiter again.
    cluster.set_link(&p1.host, false);
    let (p2, b2) = cluster.wait_protected(
        "web",
        RESTORE_LIMIT,
        "restored after a partition",
        |np, _| np.epoch > p1.epoch,
    );
    assert_eq!(p2.name, b1.name, "the backup took over");
    assert!(
        b2.host != p1.host && b2.host != p2.host,
        "the new backup is on {}",
        b2.host
    );
    let isolated = cluster
        .status(&p1.host, "web", &p1.name)
        .expect("the isolated VM's status");
    assert!(
        !matches!(isolated.state.as_str(), "live" | "cloning"),
        "the isolated VM runs the guest alone: {isolated}"
    );
    more_writes(&mut writer, &cluster, "after a partition");
    cluster.set_link(&p1.host, true);
    let halted = poll(RESTORE_LIMIT, || {
        let line = cluster.status(&p1.host, "web", &p1.name)?;
        line.state.is_final().then_some(line)
    });
    let halted =
        halted.unwrap_or_else(|| panic!("the isolated VM did not halt\n{}", cluster.diag()));
    assert_eq!(halted.state.as_str(), "halted", "{halted}");

    // 3. Both VMs move while the client writes.
    let third = cluster
        .hosts
        .iter()
        .map(|h| h.name.clone())
        .find(|h| *h != p2.host && *h != b2.host)
        .expect("a third host");
    // The host back from the partition is a candidate once registered.
    cluster.wait_registered(3);
    let mut migrate = cluster.ftvm(&["cluster", "migrate", "--pair", "web", "--vm", "backup"]);
    migrate.args(cluster.store_args());
    let said = cluster.ok(migrate);
    eprintln!("{said}");
    let (p3, b3) = cluster.wait_protected("web", RESTORE_LIMIT, "the backup moved", |np, nb| {
        np.name == p2.name && nb.name != b2.name
    });
    assert_eq!(
        b3.host, third,
        "placement moves the backup off its host and the primary's"
    );
    more_writes(&mut writer, &cluster, "after the backup moved");
    let mut migrate = cluster.ftvm(&["cluster", "migrate", "--pair", "web", "--vm", "primary"]);
    migrate.args(cluster.store_args()).args(["--to", &b2.host]);
    let said = cluster.ok(migrate);
    eprintln!("{said}");
    let (p4, _) = cluster.wait_protected("web", RESTORE_LIMIT, "the primary moved", |np, _| {
        np.epoch > p3.epoch && np.host == b2.host
    });
    assert_ne!(p4.name, p3.name);
    more_writes(&mut writer, &cluster, "after the primary moved");

    let acked = writer
        .finish()
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diag()));
    let mut stop = cluster.ftvm(&["cluster", "stop", "--pair", "web"]);
    stop.args(cluster.store_args());
    cluster.ok(stop);
    let log = disk_log(&disk);
    let expected: Vec<u64> = (0..log.len() as u64).collect();
    assert_eq!(log, expected, "the disk's writes have a gap or a duplicate");
    assert!(
        log.len() as u64 >= acked,
        "{acked} acknowledged, {} on the disk",
        log.len()
    );
    fsck_clean(&disk);
}

#[test]
fn a_lost_etcd_member_changes_nothing_and_a_lost_majority_makes_vms_wait() {
    let _serial = serial();
    need_namespaces();
    let mut cluster = Cluster::start("etcd", 2);
    let mut extra: Vec<String> = vec!["--append".into(), "console=ttyS0".into()];
    extra.extend(DETECTION.iter().map(|s| s.to_string()));
    cluster.up("quiet", &extra);
    let (p0, _) =
        cluster.wait_protected("quiet", RESTORE_LIMIT, "the pair", |p, b| p.host != b.host);

    // A second pair of the same name is refused, and changes nothing.
    let image = image_dir();
    let mut again = cluster.ftvm(&["cluster", "up", "--pair", "quiet"]);
    again
        .args(cluster.store_args())
        .arg("--kernel")
        .arg(image.join("Image"))
        .arg("--initrd")
        .arg(image.join("initramfs.cpio.gz"));
    let out = again.output().expect("ftvm cluster up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second pair named quiet started");
    assert!(stderr.contains("a pair named quiet"), "{stderr}");

    // FT off: the backup ends and no agent gives the VM a new one; on
    // again: a clone protects it, as the next epoch.
    let mut unprotect = cluster.ftvm(&["cluster", "unprotect", "--pair", "quiet"]);
    unprotect.args(cluster.store_args());
    cluster.ok(unprotect);
    std::thread::sleep(Duration::from_secs(2));
    let running: Vec<_> = cluster
        .records("quiet")
        .into_iter()
        .filter(|r| r.running)
        .collect();
    assert!(
        matches!(running.as_slice(), [vm] if vm.state == "live" && vm.name == p0.name),
        "unprotected, the VM runs alone: {running:?}"
    );
    let mut protect = cluster.ftvm(&["cluster", "protect", "--pair", "quiet"]);
    protect.args(cluster.store_args());
    cluster.ok(protect);
    let (p, _) = cluster.wait_protected("quiet", RESTORE_LIMIT, "protected again", |np, nb| {
        np.name == p0.name && np.epoch > p0.epoch && nb.host != np.host
    });

    // One member lost: a failover and a restore work as before.
    cluster.kill_member(0);
    signal(p.pid, libc::SIGKILL);
    let (p1, b1) = cluster.wait_protected(
        "quiet",
        RESTORE_LIMIT,
        "restored with a member lost",
        |np, _| np.epoch > p.epoch,
    );
    assert_ne!(p1.host, b1.host);

    // A majority lost: the primary dies, and its backup waits for the
    // arbiter: it neither goes live nor halts.
    cluster.kill_member(1);
    signal(p1.pid, libc::SIGKILL);
    let waited = poll(Duration::from_secs(8), || {
        let line = cluster.status(&b1.host, "quiet", &b1.name)?;
        (line.state.runs_the_guest() || line.state.is_final()).then_some(line)
    });
    assert!(
        waited.is_none(),
        "with no etcd quorum the backup became {:?}\n{}",
        waited.map(|l| l.to_string()),
        cluster.diag()
    );
    // The store answers again: the backup wins and is protected again.
    cluster.start_member(0);
    cluster.start_member(1);
    let (p2, b2) = cluster.wait_protected(
        "quiet",
        RESTORE_LIMIT,
        "restored after etcd came back",
        |np, _| np.epoch > p1.epoch,
    );
    assert_eq!((&*p2.name, &*p2.host), (&*b1.name, &*b1.host));
    assert_ne!(b2.host, p2.host);

    // Ended, and started again under the same name: its epochs are new
    // claims, so a failover still goes to the backup.
    let mut stop = cluster.ftvm(&["cluster", "stop", "--pair", "quiet"]);
    stop.args(cluster.store_args());
    cluster.ok(stop);
    cluster.up("quiet", &extra);
    let (q, qb) = cluster.wait_protected("quiet", RESTORE_LIMIT, "started again", |p, b| {
        p.host != b.host
    });
    signal(q.pid, libc::SIGKILL);
    let (q1, _) = cluster.wait_protected(
        "quiet",
        RESTORE_LIMIT,
        "the pair started again fails over",
        |np, _| np.epoch > q.epoch,
    );
    assert_eq!(q1.name, qb.name, "its backup took over");
}
