//! # ftvm-progress — the guest image builds' progress on a terminal
//!
//! `scripts/guest-image` builds ftvm's guests: a Linux kernel (minutes of
//! `make`) and, with `--debian`, a Debian image whose second stage runs
//! inside ftvm (minutes more). Their output is long and slow:
//! thousands of `  CC      path.o` lines, or a guest console where one line
//! can take minutes. This command sits at the end of such a pipe and reads
//! it line by line:
//!
//! ```sh
//! make ... Image | ftvm-progress --what "building the kernel" \
//!     --total 1429 --save-count steps --off-terminal quiet
//! ftvm run ... | ... | ftvm-progress --what "second stage" --unit "dpkg steps" \
//!     --count "I: Unpacking " --count "I: Configuring " --total 334 --log stage2.log
//! ```
//!
//! **On a terminal** (stderr is one) it draws a single line: a bar of the
//! steps counted against `--total`, or a spinner and the count when no total
//! is known, the time elapsed, and the latest line of the input. A step is
//! a line that contains one of the `--count` texts, or any line without
//! them.
//!
//! **Off a terminal** (CI, a log file, `scripts/test` building the Debian
//! guest in the background) there is nothing to redraw and the output is
//! read afterwards, so it stays what it was without this command: every
//! line passes through to stderr byte for byte (`--off-terminal pass`), or
//! nothing is printed (`quiet`: the kernel's compile lines, which `make -s`
//! kept out of the logs before).
//!
//! Either way `--log FILE` gets every line as it arrives, and
//! `--save-count FILE` gets the number of steps once the input ends, so a
//! script can keep it as the next build's `--total`. stdout is never
//! written: `scripts/guest-image --print-dir` prints its answer there.
//!
//! ## Why a crate of its own
//!
//! The guest images are built before ftvm, and independently of it (the
//! kernel's build needs no ftvm at all), so this must build in seconds on
//! a fresh checkout: it depends on nothing of the workspace, and on
//! `indicatif`, `clap` and `anyhow` only. It lives in the workspace for its
//! lints, its lock file and its place in `scripts/test`.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "ftvm-progress",
    version,
    about = "Reads a build's output on stdin: on a terminal, draws its progress on stderr; \
             otherwise passes it through to stderr unchanged"
)]
struct Cli {
    /// What the work is, at the start of the progress line.
    #[arg(long, value_name = "TEXT", default_value = "working")]
    what: String,
    /// A line that contains TEXT is one step (repeatable: a line that
    /// contains any of them). Without it, every line is a step.
    #[arg(long = "count", value_name = "TEXT")]
    step_markers: Vec<String>,
    /// The steps expected: a bar up to N. Without it (or 0), a spinner and
    /// the count.
    #[arg(long, value_name = "N")]
    total: Option<u64>,
    /// What the steps are called on the progress line.
    #[arg(long, value_name = "NAME", default_value = "steps")]
    unit: String,
    /// Every line also goes to FILE (created or truncated), each as it
    /// arrives, terminal or not.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// When the input ends, write the number of steps counted to FILE.
    #[arg(long, value_name = "FILE")]
    save_count: Option<PathBuf>,
    /// What goes to stderr when it is not a terminal.
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = OffTerminal::Pass)]
    off_terminal: OffTerminal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OffTerminal {
    /// Every line, byte for byte, as if this command were not in the pipe.
    Pass,
    /// Nothing.
    Quiet,
}

/// Which lines of the input are steps.
struct StepMatcher {
    markers: Vec<String>,
}

impl StepMatcher {
    fn new(markers: Vec<String>) -> StepMatcher {
        StepMatcher { markers }
    }

    fn is_step(&self, line: &str) -> bool {
        self.markers.is_empty()
            || self
                .markers
                .iter()
                .any(|marker| line.contains(marker.as_str()))
    }
}

/// Where the input's lines are shown.
enum Display<W: Write> {
    Bar(ProgressBar),
    Pass(W),
    Quiet,
}

/// A copy of every line, named for its errors.
struct Log<W: Write> {
    path: PathBuf,
    out: W,
}

/// Reads `input` to its end, showing and logging each line; returns the
/// number of steps. Lines are bytes, not text: a guest console or a
/// compiler can print anything, and what passes through must be exactly
/// what came in (a last line without a newline stays without one).
fn follow<W: Write, L: Write>(
    mut input: impl BufRead,
    steps: &StepMatcher,
    display: &mut Display<W>,
    mut log: Option<&mut Log<L>>,
) -> Result<u64> {
    let mut line = Vec::new();
    let mut count = 0;
    loop {
        line.clear();
        if input
            .read_until(b'\n', &mut line)
            .context("reading stdin")?
            == 0
        {
            return Ok(count);
        }
        // Written before anything else, line by line as tee does: a build
        // that is killed still leaves every line it printed (the Debian
        // build's resume looks for one in its log).
        if let Some(log) = log.as_mut() {
            log.out
                .write_all(&line)
                .with_context(|| format!("writing {}", log.path.display()))?;
        }
        let text = String::from_utf8_lossy(&line);
        let is_step = steps.is_step(&text);
        if is_step {
            count += 1;
        }
        match display {
            Display::Bar(bar) => {
                if is_step {
                    bar.inc(1);
                }
                let shown = shown(&text);
                // A blank line would blank the message until the next one.
                if !shown.is_empty() {
                    bar.set_message(shown);
                }
            }
            Display::Pass(out) => out.write_all(&line).context("writing stderr")?,
            Display::Quiet => {}
        }
    }
}

/// A line as the bar's message: one line of plain text, since a carriage
/// return, a tab or an escape sequence would break the bar's drawing.
fn shown(line: &str) -> String {
    line.trim()
        .chars()
        .filter_map(|c| match c {
            c if c.is_control() && c.is_whitespace() => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// The progress line's look: a bar if the total is known, else a spinner,
/// in the style of `ftvm`'s own (`crates/cli/src/progress.rs`). No ETA:
/// steps are not alike (one dpkg step of the Debian build takes a minute,
/// its neighbours a second), and an estimate that swings from seconds to
/// ten minutes says less than the count and the time elapsed.
fn style(unit: &str, with_total: bool) -> Result<ProgressStyle> {
    // The unit becomes part of the template, where braces are keys.
    let unit = unit.replace('{', "{{").replace('}', "}}");
    let template = if with_total {
        format!("{{prefix}} [{{bar:32}}] {{pos}}/{{len}} {unit}, {{elapsed_precise}}  {{wide_msg}}")
    } else {
        format!("{{spinner}} {{prefix}}: {{pos}} {unit}, {{elapsed_precise}}  {{wide_msg}}")
    };
    let style = ProgressStyle::with_template(&template)
        .with_context(|| format!("the progress template {template:?}"))?;
    Ok(style.progress_chars("=> "))
}

/// The progress line, drawn on stderr.
fn progress_bar(what: &str, unit: &str, total: Option<u64>) -> Result<ProgressBar> {
    let total = total.filter(|&total| total > 0);
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    bar.set_style(style(unit, total.is_some())?);
    bar.set_prefix(what.to_string());
    // The elapsed time and the spinner move while the input is silent: a
    // guest's lines can be minutes apart.
    bar.enable_steady_tick(Duration::from_millis(200));
    Ok(bar)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let steps = StepMatcher::new(cli.step_markers);
    let mut log = match cli.log {
        Some(path) => {
            let out =
                File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            Some(Log { path, out })
        }
        None => None,
    };
    let stderr = io::stderr();
    let mut display = if stderr.is_terminal() {
        Display::Bar(progress_bar(&cli.what, &cli.unit, cli.total)?)
    } else {
        match cli.off_terminal {
            OffTerminal::Pass => Display::Pass(stderr.lock()),
            OffTerminal::Quiet => Display::Quiet,
        }
    };
    let count = follow(io::stdin().lock(), &steps, &mut display, log.as_mut())?;
    if let Display::Bar(bar) = &display {
        // Left as it stands: `finish` would move the count to the total,
        // a number of steps that never happened.
        bar.abandon();
    }
    if let Some(path) = cli.save_count {
        std::fs::write(&path, format!("{count}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], markers: &[&str], log: bool) -> (Vec<u8>, u64, Option<Vec<u8>>) {
        let steps = StepMatcher::new(markers.iter().map(|marker| marker.to_string()).collect());
        let mut display = Display::Pass(Vec::new());
        let mut log = log.then(|| Log {
            path: PathBuf::from("test.log"),
            out: Vec::new(),
        });
        let count = follow(input, &steps, &mut display, log.as_mut()).unwrap();
        let Display::Pass(passed) = display else {
            unreachable!("the display stays what it was")
        };
        (passed, count, log.map(|log| log.out))
    }

    #[test]
    fn without_markers_every_line_is_a_step() {
        let (_, count, _) = run(
            b"  CC      init/main.o\n  LD      vmlinux\n\nmake: done\n",
            &[],
            false,
        );
        assert_eq!(count, 4);
    }

    #[test]
    fn with_markers_only_lines_containing_one_are_steps() {
        let console = b"  guest 10:00:01| I: Installing core packages...\n\
                        \x20 guest 10:00:02| I: Unpacking libc6...\n\
                        \x20 guest 10:00:03| [   12.3] random: crng init done\n\
                        \x20 guest 10:00:04| I: Configuring libc6...\n\
                        \x20 guest 10:00:05| stage2: the second stage is done\n";
        let (_, count, _) = run(console, &["I: Unpacking ", "I: Configuring "], false);
        assert_eq!(count, 2);
    }

    #[test]
    fn a_line_matching_two_markers_is_one_step() {
        let (_, count, _) = run(
            b"I: Unpacking I: Configuring\n",
            &["I: Unpacking", "I: Configuring"],
            false,
        );
        assert_eq!(count, 1);
    }

    #[test]
    fn lines_pass_through_and_into_the_log_byte_for_byte() {
        // Not UTF-8, a carriage return, an empty line, and a last line
        // without its newline.
        let input = b"one\r\n\xff\xfe bytes\n\nlast";
        let (passed, count, log) = run(input, &[], true);
        assert_eq!(passed, input);
        assert_eq!(log.as_deref(), Some(&input[..]));
        assert_eq!(count, 4);
    }

    #[test]
    fn quiet_shows_nothing_but_counts_and_logs() {
        let steps = StepMatcher::new(Vec::new());
        let mut display: Display<Vec<u8>> = Display::Quiet;
        let mut log = Log {
            path: PathBuf::from("test.log"),
            out: Vec::new(),
        };
        let count = follow(&b"a\nb\n"[..], &steps, &mut display, Some(&mut log)).unwrap();
        assert_eq!(count, 2);
        assert_eq!(log.out, b"a\nb\n");
    }

    #[test]
    fn the_message_is_one_line_of_plain_text() {
        assert_eq!(
            shown("  guest 10:00:01| I: Unpacking\tlibc6...\r\n"),
            "guest 10:00:01| I: Unpacking libc6..."
        );
        assert_eq!(shown("\x1b[1mbold\x1b[0m\n"), "[1mbold[0m");
    }

    #[test]
    fn both_styles_are_valid_templates_whatever_the_unit() {
        for unit in ["steps", "dpkg steps", "{pos}", "}", "{"] {
            for with_total in [true, false] {
                assert!(style(unit, with_total).is_ok(), "{unit:?} {with_total}");
            }
        }
    }
}
