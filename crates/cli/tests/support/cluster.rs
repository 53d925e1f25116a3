//! A cluster of hosts on this machine, for the tests of `ftvm agent
//! --cluster`: each host is a network namespace with its own agent (and
//! the VMs it starts), each etcd member (Debian's `etcd-server`) a
//! namespace of its own, all on one bridge in the root namespace, where
//! the pair's network (`ftvm switch`) and the test's client run. A host
//! failure is every process of its namespace killed; a partition is its
//! link set down. Everything is removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ftvm_cluster::store::{self, VmRecord};
use ftvm_host::etcd::EtcdClient;
use ftvm_host::status::{StatusFile, StatusLine};

use super::{Scratch, describe, ftvm_bin, image_dir, poll};

/// The port of every agent's page (`--http`), on its host's address.
pub const AGENT_HTTP_PORT: u16 = 7100;

/// Run `ip ARGS`; panics if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this machine can make network namespaces (root, `ip`, etcd).
pub fn available() -> Result<(), String> {
    let ok = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok("ip", "-V") {
        return Err("`ip` (iproute2) is missing".into());
    }
    if !ok("etcd", "--version") {
        return Err("etcd is missing: run scripts/deps (Debian's etcd-server)".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces need root".into());
    }
    Ok(())
}

pub struct Member {
    pub ns: String,
    pub ip: String,
    child: Option<Child>,
}

pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: String,
    /// The root namespace's end of its link.
    link: String,
    agent: Option<Child>,
}

pub struct Cluster {
    /// Prefix of every namespace and link of this cluster.
    tag: String,
    subnet: String,
    bridge: String,
    pub scratch: Scratch,
    pub etcd: Vec<Member>,
    pub hosts: Vec<Host>,
    namespaces: Vec<String>,
    others: Vec<Child>,
    pub key: PathBuf,
}

impl Cluster {
    /// `hosts` hosts and a 3-member etcd, up and registered.
    pub fn start(what: &str, hosts: usize) -> Cluster {
        let pid = std::process::id();
        let tag = format!("f{}{}", pid % 10000, &what[..1]);
        let subnet = format!("10.213.{}", pid % 250);
        let scratch = Scratch::new(&format!("cluster-{what}"));
        let key = scratch.file("cluster.key");
        std::fs::write(&key, "the cluster key of a test cluster\n").expect("key");
        let bridge = format!("{tag}br");
        let mut cluster = Cluster {
            tag,
            subnet,
            bridge: bridge.clone(),
            scratch,
            etcd: Vec::new(),
            hosts: Vec::new(),
            namespaces: Vec::new(),
            others: Vec::new(),
            key,
        };
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", cluster.bridge_ip()),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 1..=3 {
            let (ns, ip_addr, _) = cluster.add_namespace(&format!("e{i}"), 10 + i);
            cluster.etcd.push(Member {
                ns,
                ip: ip_addr,
                child: None,
            });
        }
        for i in 0..3 {
            cluster.start_member(i);
        }
        let client = cluster.client();
        let healthy = poll(Duration::from_secs(60), || {
            client.put("ftvm/test/healthy", b"yes", None).ok()
        });
        assert!(
            healthy.is_some(),
            "etcd did not come up\n{}",
            cluster.diag()
        );
        for i in 1..=hosts {
            let (ns, ip_addr, link) = cluster.add_namespace(&format!("h{i}"), 20 + i);
            cluster.hosts.push(Host {
                name: format!("h{i}"),
                ns,
                ip: ip_addr,
                link,
                agent: None,
            });
            cluster.start_agent(i - 1);
        }
        cluster.wait_registered(hosts);
        cluster
    }

    /// Wait until `n` hosts are registered (a host that comes back, or
    /// rejoins after a partition, registers again within a second or so).
    pub fn wait_registered(&self, n: usize) {
        let client = self.client();
        let registered = poll(Duration::from_secs(30), || {
            (client.prefix(store::HOSTS).ok()?.len() == n).then_some(())
        });
        assert!(
            registered.is_some(),
            "{n} hosts did not register\n{}",
            self.diag()
        );
    }

    pub fn bridge_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// A namespace `NAME` linked to the bridge at `.N`: its name, IP and
    /// the root end of its link.
    fn add_namespace(&mut self, name: &str, n: usize) -> (String, String, String) {
        let ns = format!("{}{name}", self.tag);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        let (outer, inner) = (format!("{ns}a"), format!("{ns}b"));
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &ns]);
        ip(&["link", "set", &outer, "master", &self.bridge, "up"]);
        let addr = format!("{}.{n}", self.subnet);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inner,
        ]);
        ip(&["-n", &ns, "link", "set", &inner, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        (ns, addr, outer)
    }

    /// `PROGRAM ARGS` in namespace `ns`, its stderr (and stdout) to `log`.
    fn spawn_in(&self, ns: &str, program: &Path, args: &[String], log: &str) -> Child {
        let out = std::fs::File::create(self.scratch.file(log)).expect("log file");
        let err = out.try_clone().expect("log file");
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting a process in a namespace")
    }

    pub fn endpoints(&self) -> String {
        self.etcd
            .iter()
            .map(|m| format!("{}:2379", m.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client(&self) -> EtcdClient {
        EtcdClient::new(&self.endpoints()).expect("endpoints")
    }

    /// Start (or restart, on its data) etcd member `i`.
    pub fn start_member(&mut self, i: usize) {
        let initial: Vec<String> = self
            .etcd
            .iter()
            .enumerate()
            .map(|(j, m)| format!("e{j}=http://{}:2380", m.ip))
            .collect();
        let m = &self.etcd[i];
        let url = |port: u16| format!("http://{}:{port}", m.ip);
        let args: Vec<String> = [
            "--name",
            &format!("e{i}"),
            "--data-dir",
            &self.scratch.file(&format!("etcd{i}")).to_string_lossy(),
            "--listen-client-urls",
            &url(2379),
            "--advertise-client-urls",
            &url(2379),
            "--listen-peer-urls",
            &url(2380),
            "--initial-advertise-peer-urls",
            &url(2380),
            "--initial-cluster",
            &initial.join(","),
            "--initial-cluster-token",
            &self.tag,
            "--initial-cluster-state",
            "new",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let child = self.spawn_in(&m.ns, Path::new("etcd"), &args, &format!("etcd{i}.log"));
        self.etcd[i].child = Some(child);
    }

    /// Kill etcd member `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.etcd[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Where host `name`'s agent serves its page and metrics.
    pub fn agent_http(&self, name: &str) -> std::net::SocketAddr {
        let ip = &self.hosts[self.host_index(name)].ip;
        format!("{ip}:{AGENT_HTTP_PORT}")
            .parse()
            .expect("an agent's page address")
    }

    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.scratch.file(host)
    }

    /// Start (or restart) the agent of host `i`.
    pub fn start_agent(&mut self, i: usize) {
        let h = &self.hosts[i];
        let args: Vec<String> = vec![
            "agent".into(),
            "--cluster".into(),
            format!("etcd:{}", self.endpoints()),
            "--cluster-key".into(),
            self.key.to_string_lossy().into_owned(),
            "--host".into(),
            h.name.clone(),
            "--listen".into(),
            format!("{}:7000", h.ip),
            "--state-dir".into(),
            self.host_dir(&h.name).to_string_lossy().into_owned(),
            "--memory-mib".into(),
            "2048".into(),
            "--http".into(),
            format!("{}:{AGENT_HTTP_PORT}", h.ip),
        ];
        let log = format!("{}-agent.log", h.name);
        let child = self.spawn_in(&h.ns.clone(), &ftvm_bin(), &args, &log);
        self.hosts[i].agent = Some(child);
    }

    fn host_index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Every process of host `name` killed at once (SIGKILL), as when the
    /// machine dies.
    pub fn kill_host(&mut self, name: &str) {
        let i = self.host_index(name);
        kill_namespace(&self.hosts[i].ns);
        if let Some(mut agent) = self.hosts[i].agent.take() {
            let _ = agent.wait();
        }
    }

    /// Cut host `name` off the network (or join it again).
    pub fn set_link(&self, name: &str, up: bool) {
        let h = &self.hosts[self.host_index(name)];
        ip(&["link", "set", &h.link, if up { "up" } else { "down" }]);
    }

    /// `ftvm ARGS` in the root namespace, with the cluster options first
    /// for `ftvm cluster ...`.
    pub fn ftvm(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ftvm_bin());
        cmd.args(args).env("NO_COLOR", "1").env_remove("RUST_LOG");
        cmd
    }

    /// The options of `ftvm cluster` for this cluster.
    pub fn store_args(&self) -> Vec<String> {
        vec![
            "--cluster".into(),
            format!("etcd:{}", self.endpoints()),
            "--cluster-key".into(),
            self.key.to_string_lossy().into_owned(),
        ]
    }

    /// `ftvm switch` for `pair` in the root namespace on the bridge, with
    /// `gateway`; its `switch:ADDR`.
    pub fn start_switch(&mut self, pair: &str, gateway: &str) -> String {
        let pair_key = self.scratch.file("pair.key");
        let run = self
            .ftvm(&["cluster", "pair-key", "--pair", pair, "--out"])
            .arg(&pair_key)
            .arg("--cluster-key")
            .arg(&self.key)
            .output()
            .expect("ftvm cluster pair-key");
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let addr_file = self.scratch.file("switch.addr");
        let log = std::fs::File::create(self.scratch.file("switch.log")).expect("log");
        let child = self
            .ftvm(&["switch", "--listen", &format!("{}:0", self.bridge_ip())])
            .arg("--addr-file")
            .arg(&addr_file)
            .args(["--gateway", gateway, "--key-file"])
            .arg(&pair_key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ftvm switch");
        self.others.push(child);
        let addr = poll(Duration::from_secs(20), || {
            std::fs::read_to_string(&addr_file)
                .ok()
                .filter(|s| s.ends_with('\n'))
        })
        .expect("the switch's address");
        format!("switch:{}", addr.trim())
    }

    /// `ftvm cluster up` of `pair` with the default guest and `extra`
    /// options.
    pub fn up(&self, pair: &str, extra: &[String]) -> String {
        let image = image_dir();
        let mut cmd = self.ftvm(&["cluster", "up", "--pair", pair]);
        cmd.args(self.store_args())
            .arg("--kernel")
            .arg(image.join("Image"))
            .arg("--initrd")
            .arg(image.join("initramfs.cpio.gz"))
            .args(extra);
        self.ok(cmd)
    }

    /// Run `cmd`, which must succeed; its stdout.
    pub fn ok(&self, mut cmd: Command) -> String {
        let what = describe(&cmd);
        let out = cmd.output().expect("running ftvm");
        assert!(
            out.status.success(),
            "{what} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.diag()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The VMs of `pair` as the store has them.
    pub fn records(&self, pair: &str) -> Vec<VmRecord> {
        self.client()
            .prefix(&store::vms_of(pair))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// The status line of VM `name` of `pair` on `host`, read from its
    /// file (which the test reaches even when the host is cut off).
    pub fn status(&self, host: &str, pair: &str, name: &str) -> Option<StatusLine> {
        let dir = self.host_dir(host).join(pair);
        StatusFile::read(&dir.join(format!("{name}.status")))
            .or_else(|| StatusFile::read(&dir.join("gone").join(format!("{name}.status"))))
    }

    /// Wait until `pair` is protected (a running primary and backup of one
    /// epoch) and `check` accepts the two.
    pub fn wait_protected(
        &self,
        pair: &str,
        limit: Duration,
        what: &str,
        mut check: impl FnMut(&VmRecord, &VmRecord) -> bool,
    ) -> (VmRecord, VmRecord) {
        let found = poll(limit, || {
            let records = self.records(pair);
            let primary = records.iter().find(|r| r.running && r.state == "primary")?;
            let backup = records
                .iter()
                .find(|r| r.running && r.state == "backup" && r.epoch == primary.epoch)?;
            check(primary, backup).then(|| (primary.clone(), backup.clone()))
        });
        found.unwrap_or_else(|| panic!("{what}: not within {limit:?}\n{}", self.diag()))
    }

    /// What to look at when a test fails: the store's view and the tail
    /// of every log.
    pub fn diag(&self) -> String {
        let mut out = String::new();
        if let Ok(kvs) = self.client().prefix("ftvm/") {
            for (k, v) in kvs {
                out.push_str(&format!("{k} = {}\n", String::from_utf8_lossy(&v)));
            }
        }
        let mut logs = Vec::new();
        collect_logs(&self.scratch.0, &mut logs);
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {}\n", log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

fn collect_logs(dir: &Path, logs: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_logs(&path, logs);
        } else if path.extension().is_some_and(|e| e == "log") {
            logs.push(path);
        }
    }
}

/// SIGKILL every process in namespace `ns`.
fn kill_namespace(ns: &str) {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip netns pids");
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            kill_namespace(ns);
        }
        for child in self
            .others
            .iter_mut()
            .chain(self.hosts.iter_mut().filter_map(|h| h.agent.as_mut()))
            .chain(self.etcd.iter_mut().filter_map(|m| m.child.as_mut()))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Reap what the namespaces held; give the kernel a moment.
        std::thread::sleep(Duration::from_millis(200));
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}
