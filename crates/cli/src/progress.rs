//! Progress of long work on a terminal (`indicatif`): drawn on stderr when
//! it is a terminal, and nothing at all otherwise (a daemon's log, a
//! script, a test), so the output that is the result stays as it was.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` bytes (0: not known yet; set it later) of the work
/// named `what`.
pub fn bytes(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// Show how far `vm`'s clone has come on `bar` (from [`bytes`]).
pub fn show_clone(bar: &ProgressBar, vm: &str, clone: &ftvm_host::status::CloneProgress) {
    const MIB: f64 = (1 << 20) as f64;
    bar.set_length((clone.total_mib * MIB) as u64);
    bar.set_position((clone.done_mib * MIB) as u64);
    bar.set_message(format!("cloning {vm}: {}", clone.stage.as_str()));
}
