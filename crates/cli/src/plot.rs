//! `ftvm plot`: a pair's history as a timeline picture (SVG or PNG).
//!
//! Each VM of a pair started by `ftvm up` keeps `NAME.history` in the
//! state directory: a JSON line a second, and one at each change of its
//! story (see `ftvm_host::status::HistoryLine`). The picture stacks, over
//! one time axis: each VM's state as a coloured band, the guest's
//! instructions per second on each VM (a pause is where the VM that runs
//! the guest stops), the backup's lag, the logging channel's rate and the
//! output rule's delay; failovers, suspicions and clones are marked
//! across all of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use ftvm_host::status::{HistoryFile, HistoryLine, VmState};
use plotters::coord::Shift;
use plotters::prelude::*;

#[derive(Args)]
pub struct PlotArgs {
    /// The pair's state directory (`ftvm up --state-dir`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,

    /// The picture to write: `.svg` or `.png`. Its text is laid out with
    /// Debian's DejaVu Sans (fonts-dejavu-core).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Width and height in pixels.
    #[arg(long, value_name = "WxH", default_value = "1200x900")]
    pub size: String,
}

/// The font the text is laid out (and, in a PNG, drawn) with.
const TEXT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn plot(args: &PlotArgs) -> Result<ExitCode> {
    let timeline = timeline(&args.state_dir)?;
    let (width, height) = args
        .size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .filter(|&(w, h): &(u32, u32)| w >= 300 && h >= 300)
        .with_context(|| format!("--size {:?}: WIDTHxHEIGHT, each at least 300", args.size))?;
    match args.out.extension().and_then(|e| e.to_str()) {
        Some("svg") => {
            let root = SVGBackend::new(&args.out, (width, height)).into_drawing_area();
            draw(&root, &timeline)?;
            root.present()
                .map_err(|e| anyhow!("writing the SVG: {e:?}"))?;
        }
        Some("png") => {
            let root = BitMapBackend::new(&args.out, (width, height)).into_drawing_area();
            draw(&root, &timeline)?;
            root.present()
                .map_err(|e| anyhow!("writing the PNG: {e:?}"))?;
        }
        _ => bail!("--out {}: a .svg or .png file", args.out.display()),
    }
    println!(
        "ftvm plot: {} VMs over {:.1} s, {} events -> {}",
        timeline.vms.len(),
        timeline.end,
        timeline.events.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The font plotters lays text out with, registered once a process.
fn register_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let font = std::fs::read(TEXT_FONT).map_err(|e| {
                format!(
                    "the picture's text needs the font {TEXT_FONT} (Debian's \
                     fonts-dejavu-core): {e}"
                )
            })?;
            // Plotters keeps the font for the rest of the process.
            let font: &'static [u8] = Box::leak(font.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, font)
                .map_err(|_| format!("{TEXT_FONT} is not a font plotters can use"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The VMs' histories of the pair in `dir`, ready to draw (the font
/// registered).
fn timeline(dir: &Path) -> Result<Timeline> {
    let histories = read_histories(dir);
    if histories.values().all(Vec::is_empty) {
        bail!(
            "no VM history in {} (VMs started by `ftvm up` keep one)",
            dir.display()
        );
    }
    register_font()?;
    Ok(Timeline::new(&histories))
}

/// The timeline of the pair in `dir` as SVG text (the agent's page).
pub fn svg(dir: &Path, size: (u32, u32)) -> Result<String> {
    let timeline = timeline(dir)?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        draw(&root, &timeline)?;
        root.present().map_err(fail)?;
    }
    Ok(text)
}

/// Every VM's history in `dir` (and in `dir/gone`, where the agent puts
/// the files of VMs that are gone), by VM name.
fn read_histories(dir: &Path) -> BTreeMap<String, Vec<HistoryLine>> {
    let mut histories = BTreeMap::new();
    for dir in [dir.to_path_buf(), dir.join("gone")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|e| e == "history") {
                for line in HistoryFile::read(&path) {
                    histories
                        .entry(line.vm.clone())
                        .or_insert_with(Vec::new)
                        .push(line);
                }
            }
        }
    }
    for lines in histories.values_mut() {
        lines.sort_by_key(|l| l.unix_ms);
    }
    histories
}

/// The most lines of one VM a picture draws: hours of history thinned to
/// this, every change kept, so that a picture stays small and quick (the
/// status page redraws it every few seconds).
const POINTS_MAX: usize = 2000;

/// Every `n`th of `lines`, so that at most about `max` remain, and every
/// line that marks a change (an event or a new state) and the last.
fn thin(lines: &[HistoryLine], max: usize) -> Vec<HistoryLine> {
    let stride = lines.len().div_ceil(max.max(1)).max(1);
    lines
        .iter()
        .enumerate()
        .filter(|&(i, l)| {
            i % stride == 0
                || i + 1 == lines.len()
                || l.event.is_some()
                || lines[i - 1].state != l.state
        })
        .map(|(_, l)| l.clone())
        .collect()
}

/// Each VM's (time, value) points.
type Series = Vec<(String, Vec<(f64, f64)>)>;

/// A change worth a mark across the picture.
struct Event {
    at: f64,
    vm: String,
    what: String,
    kind: EventKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Suspicion,
    Failover,
    Clone,
    Migration,
    Other,
}

/// The histories on one time axis (seconds from the first line).
struct Timeline {
    start_ms: u64,
    end: f64,
    vms: Vec<(String, Vec<HistoryLine>)>,
    events: Vec<Event>,
}

impl Timeline {
    fn new(histories: &BTreeMap<String, Vec<HistoryLine>>) -> Timeline {
        let all = || histories.values().flatten();
        let start_ms = all().map(|l| l.unix_ms).min().unwrap_or(0);
        let end_ms = all().map(|l| l.unix_ms).max().unwrap_or(start_ms);
        let at = |l: &HistoryLine| l.unix_ms.saturating_sub(start_ms) as f64 / 1e3;
        let mut events: Vec<Event> = all()
            .filter_map(|l| {
                let what = l.event.clone()?;
                let kind = if what.contains("hand-over") || what.contains("handed-over") {
                    EventKind::Migration
                } else if what == "backup -> live" {
                    EventKind::Failover
                } else if what.contains("suspects its peer") {
                    EventKind::Suspicion
                } else if what.contains("protects it") || l.clone_pause_ms.is_some() {
                    EventKind::Clone
                } else {
                    EventKind::Other
                };
                let what = match (kind, l.clone_pause_ms) {
                    (EventKind::Clone, Some(ms)) => format!("cloned, pause {ms:.1} ms"),
                    _ => what,
                };
                Some(Event {
                    at: at(l),
                    vm: l.vm.clone(),
                    what,
                    kind,
                })
            })
            .collect();
        events.sort_by(|a, b| a.at.total_cmp(&b.at));
        Timeline {
            start_ms,
            end: (end_ms.saturating_sub(start_ms) as f64 / 1e3).max(1.0),
            vms: histories
                .iter()
                .map(|(vm, lines)| (vm.clone(), thin(lines, POINTS_MAX)))
                .collect(),
            events,
        }
    }

    fn at(&self, line: &HistoryLine) -> f64 {
        line.unix_ms.saturating_sub(self.start_ms) as f64 / 1e3
    }

    /// `value` of each VM's lines, as (time, value) points.
    fn series(&self, value: impl Fn(&HistoryLine) -> f64) -> Series {
        self.vms
            .iter()
            .map(|(vm, lines)| {
                let points = lines.iter().map(|l| (self.at(l), value(l))).collect();
                (vm.clone(), points)
            })
            .collect()
    }

    /// Guest instructions per second on each VM, between consecutive
    /// lines (a reboot's reset of the count reads as no progress).
    fn mips(&self) -> Series {
        self.vms
            .iter()
            .map(|(vm, lines)| {
                let points = lines
                    .windows(2)
                    .filter(|w| w[1].unix_ms > w[0].unix_ms)
                    .map(|w| {
                        let dt = (w[1].unix_ms - w[0].unix_ms) as f64 / 1e3;
                        let done = w[1].measures.icount.saturating_sub(w[0].measures.icount) as f64;
                        (self.at(&w[1]), done / dt / 1e6)
                    })
                    .collect();
                (vm.clone(), points)
            })
            .collect()
    }
}

fn state_color(state: VmState) -> RGBColor {
    match state {
        VmState::Primary => RGBColor(46, 139, 87),
        VmState::Backup => RGBColor(70, 130, 180),
        VmState::Live => RGBColor(230, 126, 34),
        VmState::Cloning => RGBColor(142, 68, 173),
        VmState::Connecting | VmState::Waiting => RGBColor(189, 195, 199),
        VmState::Halted | VmState::Ended | VmState::Dead => RGBColor(127, 140, 141),
    }
}

fn vm_color(index: usize) -> RGBColor {
    const COLORS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(23, 190, 207),
    ];
    COLORS[index % COLORS.len()]
}

fn event_color(kind: EventKind) -> RGBColor {
    match kind {
        EventKind::Failover => RGBColor(192, 57, 43),
        EventKind::Suspicion => RGBColor(241, 196, 15),
        EventKind::Clone => RGBColor(39, 174, 96),
        EventKind::Migration => RGBColor(41, 128, 185),
        EventKind::Other => RGBColor(149, 165, 166),
    }
}

/// Plotters' errors, whatever the backend, as one message.
fn fail<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the picture: {e:?}")
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, timeline: &Timeline) -> Result<()> {
    root.fill(&WHITE).map_err(fail)?;
    let (title, rest) = root.split_vertically(40);
    title
        .draw_text(
            &format!(
                "ftvm pair: {} VMs over {:.0} s; suspicions in yellow, failovers in red, \
                 clones in green, hand-overs in blue",
                timeline.vms.len(),
                timeline.end
            ),
            &("sans-serif", 20).into_font().color(&BLACK),
            (10, 10),
        )
        .map_err(fail)?;
    let (states, charts) = rest.split_vertically(30 + 26 * timeline.vms.len() as u32);
    draw_states(&states, timeline)?;
    let panels = charts.split_evenly((4, 1));
    let lines: [(&str, Series); 4] = [
        ("guest MIPS", timeline.mips()),
        ("lag (ms)", timeline.series(|l| l.measures.lag_ms)),
        ("log (Mbit/s)", timeline.series(|l| l.measures.log_mbit_s)),
        (
            "output delay, median (ms)",
            timeline.series(|l| l.measures.delay_ms),
        ),
    ];
    for (area, (label, series)) in panels.iter().zip(lines) {
        draw_panel(area, timeline, label, &series)?;
    }
    Ok(())
}

/// One lane per VM, coloured by its state over time.
fn draw_states<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, t: &Timeline) -> Result<()> {
    let lanes = t.vms.len().max(1) as f64;
    // The events' labels go in rows under the lanes, as many as keep them
    // apart (a clone right after a failover would write over its label).
    let (width, height) = area.dim_in_pixel();
    let seconds_per_px = t.end / f64::from(width.saturating_sub(120).max(1));
    let rows = label_rows(t, seconds_per_px);
    let row_count = rows.iter().map(|(_, row)| row + 1).max().unwrap_or(1);
    let lane_px = f64::from(height) / (lanes + 0.5 * row_count as f64);
    let row_height = LABEL_PX / lane_px.max(1.0);
    let mut chart = ChartBuilder::on(area)
        .margin_left(10)
        .margin_right(20)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..t.end, -(row_height * row_count as f64)..lanes)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(0)
        .draw()
        .map_err(fail)?;
    for (lane, (vm, lines)) in t.vms.iter().enumerate() {
        let y = lanes - lane as f64 - 1.0;
        let bands = lines.windows(2).map(|w| {
            Rectangle::new(
                [(t.at(&w[0]), y + 0.15), (t.at(&w[1]), y + 0.85)],
                state_color(w[0].state).filled(),
            )
        });
        chart.draw_series(bands).map_err(fail)?;
        chart
            .draw_series(std::iter::once(Text::new(
                vm.clone(),
                (0.0, y + 0.5),
                ("sans-serif", 14).into_font().color(&BLACK),
            )))
            .map_err(fail)?;
        // The state at each change, written on the band.
        let labels = lines.iter().enumerate().filter_map(|(i, l)| {
            let changed = i == 0 || lines[i - 1].state != l.state;
            changed.then(|| {
                Text::new(
                    l.state.as_str().to_string(),
                    (t.at(l), y + 0.3),
                    ("sans-serif", 12).into_font().color(&WHITE),
                )
            })
        });
        chart.draw_series(labels).map_err(fail)?;
    }
    draw_events(&mut chart, t, lanes)?;
    for (event, row) in rows {
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{}: {}", event.vm, event.what),
                (event.at, -(row_height * row as f64)),
                ("sans-serif", 12)
                    .into_font()
                    .color(&event_color(event.kind)),
            )))
            .map_err(fail)?;
    }
    Ok(())
}

/// A label's height, in pixels.
const LABEL_PX: f64 = 15.0;

/// The labelled events, each with its row: the first row where it starts
/// after the label before it ends (a label's width estimated at 7 px a
/// character).
fn label_rows(t: &Timeline, seconds_per_px: f64) -> Vec<(&Event, usize)> {
    let mut row_ends: Vec<f64> = Vec::new();
    let labelled = t
        .events
        .iter()
        .filter(|e| !matches!(e.kind, EventKind::Other | EventKind::Suspicion));
    labelled
        .map(|event| {
            let chars = event.vm.chars().count() + 2 + event.what.chars().count();
            let end = event.at + (chars as f64 * 7.0 + 10.0) * seconds_per_px;
            let row = match row_ends.iter().position(|&e| e <= event.at) {
                Some(row) => row,
                None => {
                    row_ends.push(0.0);
                    row_ends.len() - 1
                }
            };
            row_ends[row] = end;
            (event, row)
        })
        .collect()
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    t: &Timeline,
    label: &str,
    series: &Series,
) -> Result<()> {
    let top = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .margin_left(10)
        .margin_right(20)
        .margin_top(5)
        .x_label_area_size(25)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..t.end, 0f64..top)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .y_desc(label)
        .x_desc("seconds")
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(fail)?;
    for (index, (vm, points)) in series.iter().enumerate() {
        let color = vm_color(index);
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(fail)?
            .label(vm.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    draw_events(&mut chart, t, top)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(fail)
}

/// A vertical line at each marked event.
fn draw_events<DB: DrawingBackend>(
    chart: &mut ChartContext<
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    t: &Timeline,
    top: f64,
) -> Result<()> {
    let marked = t.events.iter().filter(|e| e.kind != EventKind::Other);
    for event in marked {
        let color = event_color(event.kind);
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(event.at, 0.0), (event.at, top)],
                color.stroke_width(2),
            )))
            .map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(vm: &str, at_ms: u64, state: VmState, icount: u64, event: Option<&str>) -> HistoryLine {
        HistoryLine {
            unix_ms: 1_000_000 + at_ms,
            vm: vm.into(),
            state,
            epoch: 1,
            measures: ftvm_host::status::Measures {
                lag_entries: 0,
                lag_ms: 0.5,
                log_mbit_s: 0.01,
                delay_ms: 0.3,
                delay_p99_ms: 1.0,
                outputs: at_ms,
                log_bytes: at_ms,
                icount,
            },
            event: event.map(str::to_string),
            clone_pause_ms: None,
        }
    }

    /// A primary that stops at 2 s, its backup going live at 2.5 s and
    /// cloning a new backup at 4 s.
    fn failover() -> BTreeMap<String, Vec<HistoryLine>> {
        let mut histories = BTreeMap::new();
        histories.insert(
            "primary".into(),
            (0..=2)
                .map(|s| line("primary", s * 1000, VmState::Primary, s * 1_000_000, None))
                .collect(),
        );
        let mut backup: Vec<HistoryLine> = (0..=2)
            .map(|s| line("backup", s * 1000, VmState::Backup, s * 1_000_000, None))
            .collect();
        backup.push(line(
            "backup",
            2400,
            VmState::Backup,
            2_000_000,
            Some("backup: suspects its peer"),
        ));
        backup.push(line(
            "backup",
            2500,
            VmState::Live,
            2_000_000,
            Some("backup -> live"),
        ));
        let mut cloned = line(
            "backup",
            4000,
            VmState::Primary,
            3_500_000,
            Some("cloning -> primary"),
        );
        cloned.clone_pause_ms = Some(12.5);
        backup.push(cloned);
        histories.insert("backup".into(), backup);
        histories
    }

    #[test]
    fn long_histories_are_thinned_keeping_every_change() {
        let lines: Vec<HistoryLine> = (0..10_000)
            .map(|i| {
                let state = if i < 7777 {
                    VmState::Backup
                } else {
                    VmState::Live
                };
                let event = (i == 5000).then_some("backup: suspects its peer");
                line("backup", i * 1000, state, i, event)
            })
            .collect();
        let thinned = thin(&lines, 100);
        assert!(thinned.len() <= 104, "{}", thinned.len());
        assert!(thinned.iter().any(|l| l.event.is_some()));
        assert!(thinned.iter().any(|l| l.unix_ms == lines[7777].unix_ms));
        assert_eq!(
            thinned.last().map(|l| l.unix_ms),
            lines.last().map(|l| l.unix_ms)
        );
    }

    #[test]
    fn events_are_placed_and_classified_on_one_time_axis() {
        let timeline = Timeline::new(&failover());
        assert_eq!(timeline.end, 4.0);
        let kinds: Vec<(f64, EventKind)> = timeline.events.iter().map(|e| (e.at, e.kind)).collect();
        assert!(
            kinds
                == [
                    (2.4, EventKind::Suspicion),
                    (2.5, EventKind::Failover),
                    (4.0, EventKind::Clone),
                ]
        );
        assert_eq!(timeline.events[2].what, "cloned, pause 12.5 ms");
        // The primary ran at 1 MIPS; the backup made no progress while it
        // waited to go live.
        let mips = timeline.mips();
        let of = |name: &str| {
            mips.iter()
                .find(|(vm, _)| vm == name)
                .map(|(_, points)| points)
                .unwrap_or_else(|| panic!("no {name}"))
        };
        let primary = of("primary");
        assert!(
            primary.iter().all(|&(_, v)| (v - 1.0).abs() < 1e-9),
            "{primary:?}"
        );
        let backup = of("backup");
        assert!(
            backup.iter().any(|&(at, v)| at == 2.5 && v == 0.0),
            "{backup:?}"
        );
    }

    #[test]
    fn labels_close_together_go_in_rows_of_their_own() {
        let timeline = Timeline::new(&failover());
        // The failover at 2.5 s and the clone at 4.0 s: 1.5 s apart.
        let rows = |seconds_per_px: f64| -> Vec<usize> {
            label_rows(&timeline, seconds_per_px)
                .iter()
                .map(|(_, row)| *row)
                .collect()
        };
        assert_eq!(rows(0.001), [0, 0], "far apart at 1 ms a pixel");
        assert_eq!(rows(0.05), [0, 1], "on top of each other at 50 ms a pixel");
    }

    #[test]
    fn the_picture_names_the_failover_and_the_clone() {
        let dir = std::env::temp_dir().join(format!("ftvm-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (vm, lines) in failover() {
            let mut file = HistoryFile::new(dir.join(format!("{vm}.history")));
            for l in &lines {
                file.append(l);
            }
        }
        let svg = dir.join("p.svg");
        let png = dir.join("p.png");
        for out in [&svg, &png] {
            let args = PlotArgs {
                state_dir: dir.clone(),
                out: out.clone(),
                size: "800x600".into(),
            };
            plot(&args).expect("plot");
        }
        let text = std::fs::read_to_string(&svg).expect("the SVG");
        assert!(
            text.contains("backup: backup -&gt; live") || text.contains("backup: backup -> live"),
            "no failover label"
        );
        assert!(text.contains("cloned, pause 12.5 ms"), "no clone label");
        let bytes = std::fs::read(&png).expect("the PNG");
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
