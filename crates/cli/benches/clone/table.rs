//! Printing the tables: medians, maxima and markdown.

use crate::support::median;

pub fn col<T>(rows: &[&T], f: impl Fn(&T) -> f64) -> f64 {
    median(rows.iter().map(|r| f(r)).collect())
}

pub fn max<T>(rows: &[&T], f: impl Fn(&T) -> f64) -> f64 {
    rows.iter().map(|r| f(r)).fold(f64::NAN, f64::max)
}

/// The median (or, with `agg`, the max) of the values present, with
/// `digits` decimals, or `-` if none is.
pub fn cell(v: Vec<Option<f64>>, agg: bool, digits: usize) -> String {
    let v: Vec<f64> = v.into_iter().flatten().collect();
    if v.is_empty() {
        "-".to_string()
    } else if agg {
        format!("{:.digits$}", v.iter().copied().fold(f64::NAN, f64::max))
    } else {
        format!("{:.digits$}", median(v))
    }
}

/// Print a markdown table, every column as wide as its widest cell, the
/// first column left-aligned and the others right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, &w))| {
                if c == 0 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        println!("| {} |", cells.join(" | "));
    };
    line(header.iter().map(|s| s.to_string()).collect());
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(c, &w)| {
            if c == 0 {
                "-".repeat(w + 2)
            } else {
                format!("{}:", "-".repeat(w + 1))
            }
        })
        .collect();
    println!("|{}|", rule.join("|"));
    for row in rows {
        line(row.clone());
    }
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

pub const MB: f64 = 1024.0 * 1024.0;
