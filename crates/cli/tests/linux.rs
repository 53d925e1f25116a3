//! The default guest (Linux + busybox, built by `scripts/guest-image`,
//! which `scripts/test` runs first) on ftvm: it boots and runs a command,
//! its disk keeps data across boots, its user space prints the same as on
//! QEMU `virt`, and bad disks are refused before anything is written.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{ftvm_bin, qemu_available, repo_root, run_limited, Finished, QEMU_CPU};

const LIMIT: Duration = Duration::from_secs(300);

fn image_dir() -> PathBuf {
    let dir = std::env::var_os("FTVM_GUEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest-image"));
    assert!(
        dir.join("Image").is_file() && dir.join("initramfs.cpio.gz").is_file(),
        "the default guest is not built in {}: run scripts/guest-image",
        dir.display()
    );
    dir
}

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

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ftvm-linux-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

fn ext4_image(path: &Path, mib: u64) {
    let file = std::fs::File::create(path).expect("create disk");
    file.set_len(mib << 20).expect("size disk");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(path)
        .status()
        .expect("mkfs.ext4 (e2fsprogs) runs");
    assert!(status.success(), "mkfs.ext4 failed");
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
    let disk = scratch("persist.img");
    ext4_image(&disk, 16);
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

    let second = ftvm_boot("cat /mnt/note", &["--disk", &disk_arg]);
    let console = second.stdout_text();
    assert_eq!(second.code, Some(0), "{console}\n{}", second.stderr);
    assert_eq!(
        command_output(&console).0,
        "kept-across-boots\n",
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
    let mut qemu = Command::new("qemu-system-riscv64");
    qemu.args([
        "-M",
        "virt",
        "-cpu",
        QEMU_CPU,
        "-m",
        "128",
        "-nographic",
        "-monitor",
        "none",
    ])
    .arg("-bios")
    .arg(dir.join("fw_dynamic.bin"))
    .arg("-kernel")
    .arg(dir.join("Image"))
    .arg("-initrd")
    .arg(dir.join("initramfs.cpio.gz"))
    .args(["-append", &append]);
    let theirs = run_limited(qemu, LIMIT);
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
    let missing = scratch("does-not-exist.img");
    let run = ftvm_boot("true", &["--disk", &missing.to_string_lossy()]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("cannot open disk image") && run.stderr.lines().count() == 1,
        "{}",
        run.stderr
    );
    assert!(!missing.exists(), "a missing disk must not be created");

    let odd = scratch("odd.img");
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
    let short = scratch("corrupt-Image");
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn http_through_a_forwarded_port_reaches_busybox_httpd_in_the_guest() {
    use std::io::{BufRead, BufReader, Read, Write};
    let port = free_port();
    let cmd = "mkdir -p /www; echo served-by-the-guest > /www/index.html; \
               httpd -p 80 -h /www; echo httpd-up; sleep 5";
    let mut child = Command::new(ftvm_bin())
        .env("FTVM_GUEST_IMAGE", image_dir())
        .args(["run", "--net"])
        .arg(format!("user,hostfwd=tcp:127.0.0.1:{port}-:80"))
        .arg("--append")
        .arg(format!("console=ttyS0 ftvm_cmd=\"{cmd}\""))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ftvm");
    let mut console = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("httpd-up") {
        line.clear();
        if console.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&line);
    }
    assert!(
        seen.contains("httpd-up"),
        "the guest did not start httpd:\n{seen}"
    );
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
    let mut rest = String::new();
    let _ = console.read_to_string(&mut rest);
    let status = child.wait().expect("ftvm ends");
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
