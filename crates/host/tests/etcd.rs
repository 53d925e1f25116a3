//! The etcd test-and-set against a real etcd (Debian's `etcd-server`,
//! installed by `scripts/deps`), started here on free loopback ports.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ftvm_ft::golive::Verdict;
use ftvm_host::arbiter::{Arbiter, EtcdArbiter};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
    endpoint: String,
}

impl Etcd {
    fn start() -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("ftvm-etcd-{}-{client}", std::process::id()));
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--name", "ftvm-test"])
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("ftvm-test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd (Debian's etcd-server: run scripts/deps)");
        let etcd = Etcd {
            child,
            dir,
            endpoint: format!("127.0.0.1:{client}"),
        };
        // Ready once a claim gets an answer.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut probe = EtcdArbiter::new(&etcd.endpoint, "probe", [0; 16]).expect("name");
        while probe.test_and_set("ready", 0) == Verdict::Unreachable {
            assert!(Instant::now() < deadline, "etcd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_real_etcd_gives_exactly_one_winner_per_pair_and_epoch() {
    let etcd = Etcd::start();
    for epoch in 0..5 {
        let verdicts: Vec<Verdict> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u8)
                .map(|i| {
                    let endpoint = etcd.endpoint.clone();
                    s.spawn(move || {
                        EtcdArbiter::new(&endpoint, &format!("vm{}", i % 3), [i; 16])
                            .expect("name")
                            .test_and_set("pair", epoch)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Won).count(),
            1,
            "epoch {epoch}: {verdicts:?}"
        );
        assert!(!verdicts.contains(&Verdict::Unreachable), "{verdicts:?}");
    }
    let mut backup = EtcdArbiter::new(&etcd.endpoint, "backup", [7; 16]).expect("name");
    let mut primary = EtcdArbiter::new(&etcd.endpoint, "primary", [8; 16]).expect("name");
    assert_eq!(backup.test_and_set("other", 1), Verdict::Won);
    assert_eq!(
        backup.test_and_set("other", 1),
        Verdict::Won,
        "asking again wins again"
    );
    assert_eq!(primary.test_and_set("other", 1), Verdict::Lost);
    assert_eq!(primary.test_and_set("other", 2), Verdict::Won);
}

#[test]
fn an_etcd_that_is_gone_is_unreachable_never_a_win() {
    let etcd = Etcd::start();
    let endpoint = etcd.endpoint.clone();
    drop(etcd);
    let mut vm = EtcdArbiter::new(&endpoint, "vm", [1; 16]).expect("name");
    assert_eq!(vm.test_and_set("pair", 1), Verdict::Unreachable);
}
