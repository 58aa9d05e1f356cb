//! Shared chart styling and the pieces common to line and bar charts: size checks, title,
//! y axis (grid, ticks, labels) and the rotated y label.

use std::path::Path;

use crate::PlotError;
use crate::axis::{self, Axis};
use crate::canvas::{Canvas, Rect, Rgb};
use crate::font::{CAP_H, fit_text, text_height, text_width};
use crate::invalid;

/// Body text scale (5×8 font doubled: about an 11 pt label).
pub(crate) const S: i32 = 2;
/// Title scale.
pub(crate) const TITLE_S: i32 = 3;
/// Outer margin.
pub(crate) const PAD: i32 = 16;
/// Tick mark length.
pub(crate) const TICK: i32 = 5;
/// Gap between tick marks and their labels.
pub(crate) const GAP: i32 = 6;

pub(crate) const WHITE: Rgb = [255, 255, 255];
pub(crate) const TEXT: Rgb = [34, 34, 34];
pub(crate) const TICK_TEXT: Rgb = [68, 68, 68];
pub(crate) const AXIS: Rgb = [85, 85, 85];
pub(crate) const GRID: Rgb = [228, 228, 228];
pub(crate) const BORDER: Rgb = [190, 190, 190];
pub(crate) const NOTE: Rgb = [150, 150, 150];

/// Rejects chart sizes too small to lay out or absurdly large.
pub(crate) fn check_size(path: &Path, w: u32, h: u32) -> Result<(), PlotError> {
    if !(200..=16384).contains(&w) || !(150..=16384).contains(&h) {
        return Err(invalid(
            path,
            format!("chart size {w}x{h} outside 200x150..=16384x16384"),
        ));
    }
    Ok(())
}

/// Validates a user range: finite; reversed bounds are swapped, equal ones widened.
pub(crate) fn check_range(path: &Path, (a, b): (f64, f64)) -> Result<(f64, f64), PlotError> {
    if !a.is_finite() || !b.is_finite() {
        return Err(invalid(path, format!("y range ({a}, {b}) is not finite")));
    }
    Ok(if a == b {
        axis::padded(a, b, 0.0)
    } else {
        (a.min(b), a.max(b))
    })
}

/// Rejects data ranges whose span overflows.
pub(crate) fn check_span(path: &Path, lo: f64, hi: f64) -> Result<(), PlotError> {
    if (hi - lo).is_finite() && hi > lo {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("data range ({lo}, {hi}) cannot be drawn"),
        ))
    }
}

/// Vertical space taken by the title (0 without one).
pub(crate) fn title_height(title: &str) -> i32 {
    if title.trim().is_empty() {
        0
    } else {
        text_height(TITLE_S) + 12
    }
}

/// Draws the title centred on `cx` at `y`, shrinking then truncating to fit `max_w`.
pub(crate) fn draw_title(c: &mut Canvas, title: &str, cx: i32, y: i32, max_w: i32) {
    let title = title.trim();
    if title.is_empty() {
        return;
    }
    let s = if text_width(title, TITLE_S) <= max_w {
        TITLE_S
    } else {
        S
    };
    let t = fit_text(title, max_w, s);
    let tw = text_width(&t, s);
    // Centred on `cx`, but kept inside the image margins.
    let x = (cx - tw / 2).clamp(PAD, (c.width as i32 - PAD - tw).max(PAD));
    c.text(x, y + (TITLE_S - s) * CAP_H / 2, &t, s, TEXT);
}

/// A y axis over `[lo, hi]` for a plot `plot_h` pixels tall (ticks ≥ 40 px apart).
pub(crate) fn y_axis(lo: f64, hi: f64, plot_h: i32) -> Axis {
    axis::fit(lo, hi, plot_h as f64, (plot_h / 50).max(2) as usize, |_| {
        40.0
    })
}

/// Left margin needed by the y tick labels and (optional) rotated y label.
pub(crate) fn left_margin(axis: &Axis, y_label: &str) -> i32 {
    let ticks = axis
        .labels
        .iter()
        .map(|l| text_width(l, S))
        .max()
        .unwrap_or(0);
    let label = if y_label.trim().is_empty() {
        0
    } else {
        text_height(S) + 12
    };
    PAD + label + ticks + GAP + TICK
}

/// Pixel row of value `v` inside the frame `plot`.
pub(crate) fn row_of(axis: &Axis, v: f64, plot: Rect) -> f64 {
    axis.map(v, (plot.y + plot.h - 1) as f64, plot.y as f64)
}

/// Horizontal grid lines, tick marks and tick labels of the y axis left of `plot`.
pub(crate) fn draw_y_axis(c: &mut Canvas, axis: &Axis, plot: Rect) {
    for (t, label) in axis.ticks.iter().zip(&axis.labels) {
        let y = row_of(axis, *t, plot).round() as i32;
        c.fill(
            Rect {
                x: plot.x + 1,
                y,
                w: plot.w - 2,
                h: 1,
            },
            GRID,
        );
        c.fill(
            Rect {
                x: plot.x - TICK,
                y,
                w: TICK,
                h: 1,
            },
            AXIS,
        );
        let x = plot.x - TICK - GAP - text_width(label, S);
        c.text(x, y - CAP_H * S / 2, label, S, TICK_TEXT);
    }
}

/// The y label, rotated, centred on the plot's height at the left edge.
pub(crate) fn draw_y_label(c: &mut Canvas, label: &str, plot: Rect) {
    let label = fit_text(label.trim(), plot.h, S);
    let y = plot.y + plot.h / 2 + text_width(&label, S) / 2;
    c.text_up(PAD, y, &label, S, TEXT);
}

/// A swatch-and-name legend entry list laid out horizontally, centred on `cx` at `y`.
/// Returns nothing; used by bar charts above the plot.
pub(crate) fn draw_legend_row(c: &mut Canvas, entries: &[(String, Rgb)], cx: i32, y: i32) {
    let sw = text_height(S) - 2;
    let widths: Vec<i32> = entries
        .iter()
        .map(|(n, _)| sw + 8 + text_width(n, S))
        .collect();
    let total: i32 = widths.iter().sum::<i32>() + 24 * (entries.len() as i32 - 1).max(0);
    let mut x = (cx - total / 2).max(4);
    for ((name, col), w) in entries.iter().zip(widths) {
        c.fill(
            Rect {
                x,
                y: y - 1,
                w: sw,
                h: sw,
            },
            *col,
        );
        c.text(x + sw + 8, y, name, S, TEXT);
        x += w + 24;
    }
}
