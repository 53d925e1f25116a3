//! Other processes of this host, as the orchestration commands (`ftvm up`,
//! `stop`, `status`, the switch) see them: alive or not, and asked to end.

/// Whether the process `pid` runs (a zombie waiting to be reaped does
/// not).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Ask `pid` to end (SIGTERM); a VM that runs the guest then ends the pair
/// cleanly.
pub fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) only sends a signal; it touches no memory of ours.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// Kill `pid` (SIGKILL), as a host failure would; whether the signal was
/// sent.
pub fn kill(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) only sends a signal; it touches no memory of ours.
    unsafe { libc::kill(pid, libc::SIGKILL) == 0 }
}

/// End this process the way a Unix tool ends when the reader of its
/// output goes away (`ftvm status | head -1`): killed by SIGPIPE, quietly.
/// Rust ignores SIGPIPE so that a write fails instead; the caller has
/// unwound (and restored the terminal) by the time it calls this.
pub fn die_of_sigpipe() -> ! {
    // SAFETY: signal(2) and raise(3) touch no memory of ours; with the
    // default disposition restored, raise does not return.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Only if the signal is blocked: the status the shell would show.
    std::process::exit(128 + libc::SIGPIPE)
}
