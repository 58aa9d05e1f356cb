//! Grouped bar charts (e.g. accuracy per modality subset, one bar per method).

use std::path::Path;

use crate::axis;
use crate::canvas::{Canvas, Rect, Rgb};
use crate::chart::*;
use crate::font::{CAP_H, fit_text, text_height, text_width, wrap};
use crate::{PlotError, invalid, palette, save_canvas};

/// A grouped bar chart: one cluster per group, one bar per series in palette colours
/// ([`crate::palette`]), value labels on bars when they fit, a legend row under the title.
///
/// Group labels that do not fit under their cluster are wrapped at `+ / , - _` or spaces
/// (up to 3 lines), and otherwise drawn rotated (reading upwards), truncated with `..`.
///
/// ```no_run
/// mckd_plot::BarChart::new("Accuracy", "accuracy", ["A", "V", "A+V"])
///     .series("MCKD", [0.61, 0.58, 0.72])
///     .series("Baseline", [0.52, 0.55, 0.70])
///     .y_range(0.0, 1.0)
///     .save_png("/tmp/acc.png")?;
/// # Ok::<(), mckd_plot::PlotError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    /// Title above the plot (empty: none).
    pub title: String,
    /// Label left of the y axis, rotated (empty: none).
    pub y_label: String,
    /// Group (cluster) names along the x axis.
    pub groups: Vec<String>,
    /// `(name, values)` per series; `values[i]` belongs to `groups[i]` (NaN: no bar).
    pub series: Vec<(String, Vec<f64>)>,
    /// Fixed y range; `None` spans 0 and the data, rounded to nice ticks.
    pub y_range: Option<(f64, f64)>,
    /// Image width in pixels (200..=16384).
    pub width: u32,
    /// Image height in pixels (150..=16384).
    pub height: u32,
}

/// How group labels are drawn.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GroupLabels {
    /// Horizontal, one or more (wrapped) lines per group, at a text scale.
    Lines(Vec<Vec<String>>, i32),
    /// Rotated 90° (reading upwards), at a text scale.
    Vertical(Vec<String>, i32),
}

impl GroupLabels {
    /// Lays out `groups` for clusters `avail` pixels wide; vertical labels are at most
    /// `max_len` pixels long.
    pub fn new(groups: &[String], avail: i32, max_len: i32) -> Self {
        let wrapped: Option<Vec<Vec<String>>> =
            groups.iter().map(|g| wrap(g, avail, S, 3)).collect();
        match wrapped {
            Some(lines) => GroupLabels::Lines(lines, S),
            None => {
                let s = if avail >= text_height(S) { S } else { 1 };
                GroupLabels::Vertical(groups.iter().map(|g| fit_text(g, max_len, s)).collect(), s)
            }
        }
    }

    /// Pixel height of the label block.
    fn height(&self) -> i32 {
        match self {
            GroupLabels::Lines(l, s) => {
                l.iter().map(Vec::len).max().unwrap_or(1) as i32 * (text_height(*s) + 2)
            }
            GroupLabels::Vertical(l, s) => l.iter().map(|g| text_width(g, *s)).max().unwrap_or(0),
        }
    }
}

/// A value label with 3 significant digits, trailing zeros dropped (`0.67`, `87.3`, `2.5e-5`).
fn fmt_value(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.2e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        format!("{}e{e}", trim(m.to_string()))
    } else {
        let d = (2 - a.log10().floor() as i32).clamp(0, 4) as usize;
        trim(format!("{v:.d$}"))
    }
}

impl BarChart {
    /// Default image width.
    pub const DEFAULT_WIDTH: u32 = 900;
    /// Default image height.
    pub const DEFAULT_HEIGHT: u32 = 560;

    /// An empty chart over `groups`, default size.
    pub fn new(
        title: impl Into<String>,
        y_label: impl Into<String>,
        groups: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        BarChart {
            title: title.into(),
            y_label: y_label.into(),
            groups: groups.into_iter().map(Into::into).collect(),
            series: Vec::new(),
            y_range: None,
            width: Self::DEFAULT_WIDTH,
            height: Self::DEFAULT_HEIGHT,
        }
    }

    /// Adds a series with one value per group.
    pub fn series(
        mut self,
        name: impl Into<String>,
        values: impl IntoIterator<Item = f64>,
    ) -> Self {
        self.series
            .push((name.into(), values.into_iter().collect()));
        self
    }

    /// Fixes the y range to `[lo, hi]` (swapped if reversed); bars are clipped to it.
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    /// Sets the image size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        (self.width, self.height) = (width, height);
        self
    }

    /// Renders the chart and writes it as a PNG (via a temporary file renamed into place).
    ///
    /// Errors name `path`: a series whose length differs from the number of groups, size out
    /// of range, non-finite `y_range`, I/O failures.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<(), PlotError> {
        let path = path.as_ref();
        let (canvas, ..) = self.render(path)?;
        save_canvas(path, &canvas)
    }

    /// Draws the chart; `path` only names errors. Returns the canvas, the plot frame and
    /// the group-label layout.
    pub(crate) fn render(&self, path: &Path) -> Result<(Canvas, Rect, GroupLabels), PlotError> {
        check_size(path, self.width, self.height)?;
        for (name, v) in &self.series {
            if v.len() != self.groups.len() {
                let n = self.groups.len();
                let reason = format!("series {name:?} has {} values for {n} groups", v.len());
                return Err(invalid(path, reason));
            }
        }
        let (w, h) = (self.width as i32, self.height as i32);
        let finite = self
            .series
            .iter()
            .flat_map(|(_, v)| v)
            .filter(|v| v.is_finite());
        let (vmin, vmax) = finite.fold((0.0f64, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
        let (ylo, yhi) = match self.y_range {
            Some(r) => check_range(path, r)?,
            None if vmax - vmin <= 0.0 => (0.0, 1.0),
            None => {
                let pad = (vmax - vmin) * 0.08;
                let (lo, hi) = (if vmin < 0.0 { vmin - pad } else { 0.0 }, vmax + pad);
                let step = axis::nice_step(hi - lo, 5);
                ((lo / step).floor() * step, (hi / step).ceil() * step)
            }
        };
        check_span(path, ylo, yhi)?;

        let legend_h = if self.series.is_empty() {
            0
        } else {
            text_height(S) + 14
        };
        let top = PAD + title_height(&self.title) + legend_h;
        let n = self.groups.len().max(1) as i32;
        let mut bottom = PAD + 8 + text_height(S) + 2;
        let mut layout = None;
        for _ in 0..3 {
            let plot_h = h - top - bottom;
            if plot_h < 60 {
                break;
            }
            let yaxis = y_axis(ylo, yhi, plot_h);
            let left = left_margin(&yaxis, &self.y_label);
            let plot_w = w - left - PAD - 4;
            let labels = GroupLabels::new(&self.groups, plot_w / n - 6, h / 3);
            let needed = PAD + 8 + labels.height();
            let done = needed == bottom;
            bottom = needed;
            layout = Some((
                yaxis,
                Rect {
                    x: left,
                    y: top,
                    w: plot_w + 1,
                    h: plot_h + 1,
                },
                labels,
            ));
            if done {
                break;
            }
        }
        let Some((yaxis, plot, labels)) = layout.filter(|(_, p, _)| p.w > 60 && p.y + p.h < h)
        else {
            return Err(invalid(
                path,
                format!("{w}x{h} is too small for the labels"),
            ));
        };

        let mut c = Canvas::new(w as usize, h as usize, WHITE);
        draw_y_axis(&mut c, &yaxis, plot);
        let group_w = (plot.w - 2) as f64 / n as f64;
        let label_scale = self.value_label_scale(group_w);
        let ns = self.series.len().max(1) as f64;
        let base = row_of(&yaxis, 0.0f64.clamp(ylo, yhi), plot);
        for gi in 0..self.groups.len() {
            for (si, (_, values)) in self.series.iter().enumerate() {
                let v = values[gi];
                if !v.is_finite() {
                    continue;
                }
                let bw = group_w * 0.8 / ns;
                let x0 = plot.x as f64 + 1.0 + gi as f64 * group_w + group_w * 0.1 + si as f64 * bw;
                let gap = if bw >= 6.0 { 1 } else { 0 };
                let (xa, xb) = (x0.round() as i32, (x0 + bw).round() as i32 - gap);
                let yv = row_of(&yaxis, v.clamp(ylo, yhi), plot);
                let (ya, yb) = (yv.min(base).round() as i32, yv.max(base).round() as i32);
                let rect = Rect {
                    x: xa,
                    y: ya,
                    w: (xb - xa).max(1),
                    h: (yb - ya).max(1),
                };
                c.fill(rect, palette(si));
                if let Some(ls) = label_scale {
                    value_label(&mut c, v, rect, plot, ls);
                }
            }
        }
        if ylo < 0.0 && yhi > 0.0 {
            c.fill(
                Rect {
                    x: plot.x,
                    y: base.round() as i32,
                    w: plot.w,
                    h: 1,
                },
                AXIS,
            );
        }
        c.outline(plot, AXIS);
        let label_top = plot.y + plot.h + 8;
        for (gi, _) in self.groups.iter().enumerate() {
            let cx = plot.x + 1 + ((gi as f64 + 0.5) * group_w).round() as i32;
            c.fill(
                Rect {
                    x: cx,
                    y: plot.y + plot.h,
                    w: 1,
                    h: TICK,
                },
                AXIS,
            );
            match &labels {
                GroupLabels::Lines(lines, s) => {
                    for (li, line) in lines[gi].iter().enumerate() {
                        let y = label_top + li as i32 * (text_height(*s) + 2);
                        c.text(cx - text_width(line, *s) / 2, y, line, *s, TICK_TEXT);
                    }
                }
                GroupLabels::Vertical(l, s) => {
                    let y = label_top + text_width(&l[gi], *s);
                    c.text_up(cx - CAP_H * s / 2, y, &l[gi], *s, TICK_TEXT);
                }
            }
        }
        if self.groups.is_empty() || self.series.is_empty() {
            let note = "no data";
            let x = plot.x + (plot.w - text_width(note, S)) / 2;
            c.text(x, plot.y + (plot.h - CAP_H * S) / 2, note, S, NOTE);
        }
        if !self.y_label.trim().is_empty() {
            draw_y_label(&mut c, &self.y_label, plot);
        }
        let entries: Vec<(String, Rgb)> = (self.series.iter().enumerate())
            .map(|(i, (name, _))| (fit_text(name, plot.w / 3, S), palette(i)))
            .collect();
        draw_legend_row(&mut c, &entries, plot.x + plot.w / 2, top - legend_h + 4);
        draw_title(&mut c, &self.title, plot.x + plot.w / 2, PAD, w - 2 * PAD);
        Ok((c, plot, labels))
    }

    /// One text scale for all value labels: the largest at which every label fits its bar
    /// (bars are `group_w * 0.8 / n_series` wide), `None` if even scale 1 does not fit.
    fn value_label_scale(&self, group_w: f64) -> Option<i32> {
        let bar_w = (group_w * 0.8 / self.series.len().max(1) as f64).floor() as i32 - 1;
        let widest = (self.series.iter().flat_map(|(_, v)| v))
            .filter(|v| v.is_finite())
            .map(|&v| fmt_value(v))
            .max_by_key(|t| t.chars().count())?;
        [S, 1]
            .into_iter()
            .find(|&s| text_width(&widest, s) <= bar_w + 2)
    }
}

/// Writes `v` at text scale `s` above (below, for negative values) its bar, or inside the bar
/// near the plot edge.
fn value_label(c: &mut Canvas, v: f64, bar: Rect, plot: Rect, s: i32) {
    let text = fmt_value(v);
    let (tw, th) = (text_width(&text, s), CAP_H * s);
    let x = bar.x + (bar.w - tw) / 2;
    let (outside, inside) = if v >= 0.0 {
        (bar.y - 4 - th, bar.y + 4)
    } else {
        (bar.y + bar.h + 4, bar.y + bar.h - 4 - th)
    };
    if outside > plot.y + 2 && outside + th < plot.y + plot.h - 2 {
        c.text(x, outside, &text, s, TEXT);
    } else if bar.h > th + 8 {
        c.text(x, inside, &text, s, WHITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{decode, px, scratch};

    #[test]
    fn bars_are_drawn_in_series_colours_at_their_height() {
        let path = scratch("bar-colours").join("b.png");
        let chart = BarChart::new("Acc", "accuracy", ["A", "B"])
            .series("MCKD", [0.5, 0.8])
            .series("Baseline", [0.5, f64::NAN])
            .y_range(0.0, 1.0)
            .size(600, 400);
        let (_, plot, _) = chart.render(&path).unwrap();
        chart.save_png(&path).unwrap();
        let (w, h, rgb) = decode(&path);
        assert_eq!((w, h), (600, 400));
        assert_eq!(px(&rgb, w, 0, 0), WHITE);
        let gw = (plot.w - 2) as f64 / 2.0;
        let row = |v: f64| plot.y + ((1.0 - v) * (plot.h - 1) as f64).round() as i32;
        let col = |g: f64, frac: f64| plot.x + 1 + ((g + 0.1 + 0.8 * frac) * gw) as i32;
        // Group A: MCKD bar in the left half, Baseline in the right half, both to 0.5.
        assert_eq!(px(&rgb, w, col(0.0, 0.25), row(0.25)), palette(0));
        assert_eq!(px(&rgb, w, col(0.0, 0.75), row(0.25)), palette(1));
        assert_ne!(
            px(&rgb, w, col(0.0, 0.25), row(0.6)),
            palette(0),
            "bar stops at 0.5"
        );
        // Group B: MCKD reaches 0.8; the NaN Baseline bar is absent.
        assert_eq!(px(&rgb, w, col(1.0, 0.25), row(0.75)), palette(0));
        assert_ne!(px(&rgb, w, col(1.0, 0.75), row(0.25)), palette(1));
    }

    #[test]
    fn long_group_labels_wrap_then_rotate() {
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            GroupLabels::new(&g(&["A", "V"]), 100, 200),
            GroupLabels::Lines(vec![g(&["A"]), g(&["V"])], S)
        );
        let wrapped = GroupLabels::new(&g(&["FLAIR+T1+T1c+T2"]), 90, 200);
        assert_eq!(
            wrapped,
            GroupLabels::Lines(vec![g(&["FLAIR+", "T1+T1c+", "T2"])], S)
        );
        let GroupLabels::Vertical(v, s) = GroupLabels::new(&g(&["FLAIR+T1+T1c+T2", "T2"]), 40, 100)
        else {
            panic!("expected rotated labels")
        };
        assert_eq!(s, S);
        assert!(v.iter().all(|l| text_width(l, S) <= 100), "{v:?}");
        // Rendering with many long labels works and keeps the requested size.
        let groups: Vec<String> = (0..15)
            .map(|i| format!("FLAIR+T1c+T2 subset {i}"))
            .collect();
        let chart =
            BarChart::new("Dice", "Dice", groups).series("MCKD", (0..15).map(|i| i as f64 / 15.0));
        let (c, _, labels) = chart.render(Path::new("x.png")).unwrap();
        assert!(matches!(labels, GroupLabels::Vertical(..)));
        assert_eq!((c.width, c.height), (900, 560));
    }

    #[test]
    fn value_labels_use_three_significant_digits() {
        assert_eq!(fmt_value(0.8734), "0.873");
        assert_eq!(fmt_value(0.67), "0.67");
        assert_eq!(fmt_value(87.34), "87.3");
        assert_eq!(fmt_value(120.0), "120");
        assert_eq!(fmt_value(0.0), "0");
        assert_eq!(fmt_value(-0.5), "-0.5");
        assert_eq!(fmt_value(2.5e-5), "2.5e-5");
        assert_eq!(fmt_value(1e6), "1e6");
    }

    #[test]
    fn mismatched_series_length_is_an_error_naming_the_path() {
        let err = BarChart::new("", "", ["a", "b"])
            .series("s", [1.0])
            .save_png("/tmp/mismatch.png");
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.contains("mismatch.png") && msg.contains("\"s\""),
            "{msg}"
        );
    }
}
