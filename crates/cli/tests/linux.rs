//! The default guest (Linux + busybox, built by `scripts/guest-image`,
//! which `scripts/test` runs first) on ftvm: it boots and runs a command,
//! its disk keeps data across boots, its user space prints the same as on
//! QEMU `virt`, and bad disks are refused before anything is written.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    Finished, free_port, ftvm_bin, image_dir, qemu_available, qemu_run_with_bios, run_limited,
    spawn_until,
};
use wait_timeout::ChildExt;

const LIMIT: Duration = Duration::from_secs(300);

/// Boot the default guest (no image flags) with `ftvm_cmd` set to `cmd`.
fn ftvm_boot(cmd: &str, extra: &[&str]) -> Finished {
    let mut command = Command::new(ftvm_bin());
    command
        .env("FTVM_GUEST_IMAGE", image_dir())
        .args(["run", "--append"])
        .arg(format!("console=ttyS0 ftvm_cmd=\"{cmd}\""))
        .args(extra);
    run_limited(command, LIMIT)
}

/// What the command printed: the console between init's "ready" line and
/// the `ftvm_cmd exit` line, which is returned too.
fn command_output(console: &str) -> (String, String) {
    let console = console.replace('\r', "");
    let after = console
        .split_once("ftvm: init ready\n")
        .map_or("", |(_, rest)| rest);
    let (output, rest) = after.split_once("ftvm_cmd exit ").unwrap_or((after, ""));
    let status = rest.lines().next().unwrap_or("").to_string();
    (output.to_string(), status)
}

/// A file `name` in a scratch directory of its own, removed (with the
/// directory) when the returned guard drops.
fn scratch(name: &str) -> (support::Scratch, PathBuf) {
    let dir = support::Scratch::new(&format!("linux-test-{}", name.replace('.', "-")));
    let path = dir.file(name);
    (dir, path)
}

/// A copy of the image recipe's data disk.
fn data_disk(path: &Path) {
    std::fs::copy(image_dir().join("disk.ext4"), path).expect("copy the data disk");
}

#[test]
fn default_guest_boots_runs_a_command_and_powers_off() {
    let run = ftvm_boot("echo hello from $(uname -s); echo $((6 * 7))", &[]);
    let console = run.stdout_text();
    assert_eq!(run.code, Some(0), "ftvm failed:\n{console}\n{}", run.stderr);
    let (output, status) = command_output(&console);
    assert_eq!(output, "hello from Linux\n42\n", "console:\n{console}");
    assert_eq!(status, "0");
    assert!(console.contains("reboot: Power down"), "{console}");
}

#[test]
fn devices_rtc_entropy_and_disk_work_and_data_survives_a_reboot() {
    let (_disk_dir, disk) = scratch("persist.img");
    data_disk(&disk);
    let disk_arg = disk.to_string_lossy().into_owned();
    let first = ftvm_boot(
        "echo kept-across-boots > /mnt/note; sync; \
         date +%Y; head -c 8 /dev/hwrng | wc -c",
        &["--disk", &disk_arg],
    );
    let console = first.stdout_text();
    assert_eq!(first.code, Some(0), "{console}\n{}", first.stderr);
    let (output, status) = command_output(&console);
    assert_eq!(status, "0", "{console}");
    let mut lines = output.lines();
    let year: u32 = lines.next().and_then(|y| y.parse().ok()).unwrap_or(0);
    assert!(
        year >= 2025,
        "the RTC gives the host's date, not {year}:\n{console}"
    );
    assert_eq!(
        lines.next(),
        Some("8"),
        "virtio-rng gives bytes:\n{console}"
    );

    let second = ftvm_boot("cat /mnt/note /mnt/README", &["--disk", &disk_arg]);
    let console = second.stdout_text();
    assert_eq!(second.code, Some(0), "{console}\n{}", second.stderr);
    assert_eq!(
        command_output(&console).0,
        "kept-across-boots\nftvm data disk: files written under /mnt survive reboots\n",
        "{console}"
    );
    let _ = std::fs::remove_file(&disk);
}

#[test]
fn user_space_output_matches_qemu() {
    assert!(
        qemu_available(),
        "qemu-system-riscv64 is needed (scripts/deps)"
    );
    let dir = image_dir();
    let cmd = "uname -srm; echo $((1 << 20)); ls /; busybox | head -n 1; \
               cat /proc/cmdline | wc -w; mount | grep -c proc";
    let append = format!("console=ttyS0 ftvm_cmd=\"{cmd}\"");
    let ours = ftvm_boot(cmd, &[]);
    let initrd = dir.join("initramfs.cpio.gz");
    let theirs = qemu_run_with_bios(
        &dir.join("Image"),
        &dir.join("fw_dynamic.bin").to_string_lossy(),
        &["-initrd", &initrd.to_string_lossy(), "-append", &append],
        LIMIT,
    );
    assert_eq!(ours.code, Some(0), "ftvm: {}", ours.stderr);
    assert_eq!(theirs.code, Some(0), "qemu: {}", theirs.stderr);
    let (ours, ours_status) = command_output(&ours.stdout_text());
    let (theirs, theirs_status) = command_output(&theirs.stdout_text());
    assert!(ours.contains("Linux 6.1"), "{ours}");
    assert_eq!(ours, theirs);
    assert_eq!((ours_status.as_str(), theirs_status.as_str()), ("0", "0"));
}

#[test]
fn bad_disks_are_refused_and_left_untouched() {
    let (_missing_dir, missing) = scratch("does-not-exist.img");
    let run = ftvm_boot("true", &["--disk", &missing.to_string_lossy()]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("cannot open disk image") && run.stderr.lines().count() == 1,
        "{}",
        run.stderr
    );
    assert!(!missing.exists(), "a missing disk must not be created");

    let (_odd_dir, odd) = scratch("odd.img");
    std::fs::write(&odd, vec![0xa5u8; 1000]).expect("write odd disk");
    let run = ftvm_boot("true", &["--disk", &odd.to_string_lossy()]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("not a whole number of 512-byte sectors"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(&odd).expect("read back"), vec![0xa5u8; 1000]);
    let _ = std::fs::remove_file(&odd);
}

#[test]
fn a_corrupt_kernel_image_is_refused() {
    let dir = image_dir();
    let kernel = std::fs::read(dir.join("Image")).expect("kernel");
    // A Linux RISC-V Image whose header claims less memory than the file.
    let mut corrupt = kernel.clone();
    corrupt[0x10..0x18].copy_from_slice(&64u64.to_le_bytes());
    let (_short_dir, short) = scratch("corrupt-Image");
    std::fs::write(&short, &corrupt).expect("write");
    let mut cmd = Command::new(ftvm_bin());
    cmd.args(["run", "--bios"])
        .arg(dir.join("fw_dynamic.bin"))
        .arg("--kernel")
        .arg(&short);
    let run = run_limited(cmd, LIMIT);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("corrupt Linux image header"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn http_through_a_forwarded_port_reaches_busybox_httpd_in_the_guest() {
    use std::io::{Read, Write};
    let port = free_port();
    let done_port = free_port();
    // The guest powers off once the test says it is done (a connection to
    // its port 81), not after a fixed time a loaded machine may overrun.
    let cmd = "mkdir -p /www; echo served-by-the-guest > /www/index.html; \
               httpd -p 80 -h /www; echo httpd-up; nc -l -p 81 > /dev/null";
    let mut ftvm = Command::new(ftvm_bin());
    ftvm.env("FTVM_GUEST_IMAGE", image_dir())
        .args(["run", "--net"])
        .arg(format!(
            "user,hostfwd=tcp:127.0.0.1:{port}-:80,hostfwd=tcp:127.0.0.1:{done_port}-:81"
        ))
        .arg("--append")
        .arg(format!("console=ttyS0 ftvm_cmd=\"{cmd}\""));
    let (mut child, mut console) = spawn_until(ftvm, "httpd-up");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: guest\r\n\r\n")
        .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(
        response.starts_with("HTTP/1.") && response.contains(" 200 "),
        "{response}"
    );
    assert!(response.ends_with("served-by-the-guest\n"), "{response}");
    // The guest starts nc after printing its marker, so a slow guest may
    // not listen yet and reset the first knock: knock until ftvm ends.
    let mut status = None;
    for _ in 0..60 {
        // Refused once ftvm has ended after an earlier knock.
        drop(std::net::TcpStream::connect(("127.0.0.1", done_port)));
        status = child
            .wait_timeout(Duration::from_secs(2))
            .expect("ftvm's status");
        if status.is_some() {
            break;
        }
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let mut rest = String::new();
    let _ = console.read_to_string(&mut rest);
    let status =
        status.unwrap_or_else(|| panic!("the guest never took the knock on port 81: {rest}"));
    assert!(status.success(), "{rest}");
}

#[test]
fn guest_wget_reaches_a_server_on_the_host() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the guest connects");
        let mut request = [0u8; 1024];
        let n = stream.read(&mut request).unwrap_or(0);
        let body = "answer-from-the-host\n";
        let _ = write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        String::from_utf8_lossy(&request[..n]).into_owned()
    });
    let run = ftvm_boot(
        &format!("wget -q -O - http://10.0.2.2:{port}/hello"),
        &["--net", "user"],
    );
    let console = run.stdout_text();
    assert_eq!(run.code, Some(0), "{console}\n{}", run.stderr);
    let (output, status) = command_output(&console);
    assert_eq!(output, "answer-from-the-host\n", "{console}");
    assert_eq!(status, "0");
    let request = server.join().expect("server thread");
    assert!(request.starts_with("GET /hello HTTP/1."), "{request}");
}

/// The network card tells the guest its MTU (65,280 on the user-mode
/// network unless `mtu=` says otherwise), and a megabyte crosses it both
/// ways whole: into the guest in 64 KiB segments whose checksums the card
/// checked, out of it in segments whose checksums the guest left to the
/// card (the gateway's stack drops a segment whose checksum is wrong, so
/// a card that did not finish them would not get one byte through).
#[test]
fn a_card_of_either_mtu_carries_a_megabyte_each_way() {
    use std::io::{Read, Write};
    const LEN: usize = 1 << 20;
    let pattern = |i: usize| b"0123456789abcdef"[i % 16];
    for (net, mtu) in [("user", "65280"), ("user,mtu=1500", "1500")] {
        let download = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let upload = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (down, up) = (
            download.local_addr().expect("addr").port(),
            upload.local_addr().expect("addr").port(),
        );
        let server = std::thread::spawn(move || {
            let (mut stream, _) = download.accept().expect("the guest downloads");
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let body: Vec<u8> = (0..LEN).map(pattern).collect();
            let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {LEN}\r\n\r\n");
            let _ = stream.write_all(&body);
            drop(stream);
            let (mut stream, _) = upload.accept().expect("the guest uploads");
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            while got.len() < LEN {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            // Closing ends the guest's nc.
            got
        });
        let run = ftvm_boot(
            &format!(
                "cat /sys/class/net/eth0/mtu; wget -q -O /tmp/f http://10.0.2.2:{down}/; \
                 wc -c < /tmp/f; tr -d 0-9a-f < /tmp/f | wc -c; \
                 nc 10.0.2.2 {up} < /tmp/f; echo sent"
            ),
            &["--net", net],
        );
        let console = run.stdout_text();
        assert_eq!(run.code, Some(0), "{net}: {console}\n{}", run.stderr);
        let (output, status) = command_output(&console);
        assert_eq!(
            output.lines().map(str::trim).collect::<Vec<_>>(),
            [mtu, "1048576", "0", "sent"],
            "{net}: {console}"
        );
        assert_eq!(status, "0");
        let got = server.join().expect("server thread");
        assert_eq!(got.len(), LEN, "{net}: the upload's length");
        assert!(
            got.iter().enumerate().all(|(i, &b)| b == pattern(i)),
            "{net}: the upload's bytes"
        );
    }
}

/// A network namespace of this test's own with a TAP interface `tap0` at
/// 10.0.2.2/24; deleted on drop. Needs root (or passwordless sudo).
struct TapNamespace(String);

fn privileged(args: &[&str]) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut cmd = if root {
        Command::new(args[0])
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", args[0]]);
        c
    };
    cmd.args(&args[1..]);
    cmd
}

impl TapNamespace {
    fn new() -> TapNamespace {
        let name = format!("ftvm-test-{}", std::process::id());
        for args in [
            vec!["ip", "netns", "add", &name],
            vec![
                "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
            ],
            vec![
                "ip", "netns", "exec", &name, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap",
            ],
            vec![
                "ip",
                "netns",
                "exec",
                &name,
                "ip",
                "addr",
                "add",
                "10.0.2.2/24",
                "dev",
                "tap0",
            ],
            vec![
                "ip", "netns", "exec", &name, "ip", "link", "set", "tap0", "up",
            ],
        ] {
            let status = privileged(&args).status().expect("run ip");
            assert!(
                status.success(),
                "`{}` failed: the TAP test needs root or passwordless sudo and iproute2",
                args.join(" ")
            );
        }
        TapNamespace(name)
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut all = vec!["ip", "netns", "exec", &self.0];
        all.extend_from_slice(args);
        privileged(&all)
    }
}

impl Drop for TapNamespace {
    fn drop(&mut self) {
        let _ = privileged(&["ip", "netns", "del", &self.0]).status();
    }
}

#[test]
fn the_tap_backend_carries_the_guests_traffic() {
    use std::io::Read;
    let ns = TapNamespace::new();
    let image = image_dir();
    let cmd = "mkdir -p /www; echo over-the-tap > /www/index.html; \
               httpd -p 80 -h /www; echo httpd-up; sleep 5";
    let append = format!("console=ttyS0 ftvm_cmd=\"{cmd}\"");
    let ftvm = ftvm_bin();
    let ftvm = ns.exec(&[
        "env",
        &format!("FTVM_GUEST_IMAGE={}", image.display()),
        &ftvm.to_string_lossy(),
        "run",
        "--net",
        "tap,ifname=tap0",
        "--append",
        &append,
    ]);
    let (mut child, mut console) = spawn_until(ftvm, "httpd-up");
    // A client in the namespace, with nothing but bash.
    let client = ns
        .exec(&[
            "timeout",
            "30",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.0.2.15/80; printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
        ])
        .output()
        .expect("run the client");
    let response = String::from_utf8_lossy(&client.stdout);
    assert!(response.contains(" 200 "), "{response}");
    assert!(response.ends_with("over-the-tap\n"), "{response}");
    let mut rest = String::new();
    let _ = console.read_to_string(&mut rest);
    assert!(child.wait().expect("ftvm ends").success(), "{rest}");
}

/// The console as a user has it: a shell prompt, typed commands (pasted
/// at once, as a terminal may send them) and `poweroff`, which ends ftvm
/// with exit code 0.
#[test]
fn the_shell_takes_typed_commands_and_poweroff_ends_ftvm_with_0() {
    use std::io::{Read, Write};
    use std::sync::mpsc;
    let mut child = Command::new(ftvm_bin())
        .env("FTVM_GUEST_IMAGE", image_dir())
        .arg("run")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ftvm");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let wait_for = |needle: &str, seen: &mut String| {
        let deadline = Instant::now() + LIMIT;
        while !seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => panic!("no `{needle}` on the console:\n{seen}"),
            }
        }
    };
    wait_for("~ # ", &mut seen);
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"echo typed-$((2+3))\n")
        .expect("type a command");
    wait_for("typed-5", &mut seen);
    stdin.write_all(b"poweroff\n").expect("type poweroff");
    wait_for("reboot: Power down", &mut seen);
    let status = child.wait().expect("ftvm ends");
    assert_eq!(status.code(), Some(0), "{seen}");
}

/// Guest time follows the host's clock even while the guest keeps the CPU
/// busy (`--clock host`, the default): the guest's uptime advances about as
/// much as the host's clock between two console lines about 2 s apart.
/// Without steering (`--clock icount`) a busy guest's clock runs at the
/// host's instruction rate over 100 MIPS: this loop measured 2.1x real
/// time, and the test fails.
#[test]
fn guest_time_follows_the_host_clock_while_the_guest_is_busy() {
    use std::io::BufRead;
    // Busy for about 2 s of host time (one core spinning in a shell loop),
    // printing the guest's uptime before and after.
    let cmd = "cat /proc/uptime; i=0; while [ $i -lt 45000 ]; do i=$((i+1)); done; \
               cat /proc/uptime";
    let mut ftvm = Command::new(ftvm_bin());
    ftvm.env("FTVM_GUEST_IMAGE", image_dir())
        .args(["run", "--append"])
        .arg(format!("console=ttyS0 ftvm_cmd=\"{cmd}\""));
    let (mut child, console) = spawn_until(ftvm, "ftvm: init ready");
    let mut samples = Vec::new();
    for line in console.lines() {
        let Ok(line) = line else { break };
        let first = line.split_whitespace().next().unwrap_or("");
        if let (Ok(uptime), 2) = (first.parse::<f64>(), line.split_whitespace().count()) {
            samples.push((uptime, Instant::now()));
        }
    }
    assert!(child.wait().expect("ftvm ends").success());
    assert_eq!(samples.len(), 2, "two uptime lines: {samples:?}");
    let guest = samples[1].0 - samples[0].0;
    let host = samples[1].1.duration_since(samples[0].1).as_secs_f64();
    assert!(host > 0.5, "the loop was too short to tell: {host:.2} s");
    let ratio = guest / host;
    assert!(
        (0.6..1.5).contains(&ratio),
        "guest time {guest:.2} s over {host:.2} s of host time (ratio {ratio:.2})"
    );
}
