//! Line charts: curves over a numeric x axis.

use std::path::Path;

use crate::axis;
use crate::canvas::{Canvas, Coverage, Rect, Rgb};
use crate::chart::*;
use crate::font::{CAP_H, fit_text, text_height, text_width};
use crate::{PlotError, invalid, palette, save_canvas};

/// Half-width of series lines in pixels (≈ 2.2 px lines).
const LINE_HALF: f64 = 1.1;
/// Series with at most this many finite points also get a marker at every point.
const MARKER_MAX_POINTS: usize = 25;
/// Marker radius in pixels.
const MARKER_R: f64 = 2.6;

/// One named curve of a [`LineChart`]. Points are joined in the given order; a point with a
/// NaN (or infinite) coordinate breaks the line, and an isolated point is drawn as a dot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry (an empty name is left out of the legend).
    pub name: String,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
}

/// A line chart: white background, framed plot area with light grid, "nice" ticks
/// (1/2/5 × 10^k), one palette colour per series ([`crate::palette`]), a legend placed in
/// the plot corner hiding the least ink, and a title.
///
/// ```no_run
/// mckd_plot::LineChart::new("Training loss", "epoch", "loss")
///     .series("train", [(0.0, 1.2), (1.0, 0.8), (2.0, 0.6)])
///     .series("val", [(0.0, 1.3), (1.0, 0.9), (2.0, f64::NAN)])
///     .save_png("/tmp/loss.png")?;
/// # Ok::<(), mckd_plot::PlotError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Title above the plot (empty: none).
    pub title: String,
    /// Label under the x axis (empty: none).
    pub x_label: String,
    /// Label left of the y axis, rotated (empty: none).
    pub y_label: String,
    /// The curves, drawn in order (later on top).
    pub series: Vec<Series>,
    /// Fixed y range; `None` fits the finite data with a 5 % margin.
    pub y_range: Option<(f64, f64)>,
    /// Image width in pixels (200..=16384).
    pub width: u32,
    /// Image height in pixels (150..=16384).
    pub height: u32,
}

/// Where a rendered chart's parts landed (for tests).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct Layout {
    /// The plot frame (data x maps onto its columns, y onto its rows).
    pub plot: Rect,
    /// The legend box, if drawn.
    pub legend: Option<Rect>,
}

impl LineChart {
    /// Default image width.
    pub const DEFAULT_WIDTH: u32 = 900;
    /// Default image height.
    pub const DEFAULT_HEIGHT: u32 = 560;

    /// An empty chart of the default size.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        LineChart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            y_range: None,
            width: Self::DEFAULT_WIDTH,
            height: Self::DEFAULT_HEIGHT,
        }
    }

    /// Adds a series.
    pub fn series(
        mut self,
        name: impl Into<String>,
        points: impl IntoIterator<Item = (f64, f64)>,
    ) -> Self {
        self.series.push(Series {
            name: name.into(),
            points: points.into_iter().collect(),
        });
        self
    }

    /// Fixes the y range to `[lo, hi]` (swapped if reversed); data outside is clipped.
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
    /// With no finite points the axes are drawn with a "no data" note. Errors name `path`:
    /// size out of range, non-finite `y_range`, I/O failures.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<(), PlotError> {
        let path = path.as_ref();
        let (canvas, _) = self.render(path)?;
        save_canvas(path, &canvas)
    }

    /// Draws the chart; `path` only names errors.
    pub(crate) fn render(&self, path: &Path) -> Result<(Canvas, Layout), PlotError> {
        check_size(path, self.width, self.height)?;
        let (w, h) = (self.width as i32, self.height as i32);
        let ok = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
        let bounds = self
            .series
            .iter()
            .flat_map(|s| &s.points)
            .filter(|p| ok(p))
            .fold(None, |acc: Option<[f64; 4]>, &(x, y)| {
                Some(acc.map_or([x, x, y, y], |[a, b, c, d]| {
                    [a.min(x), b.max(x), c.min(y), d.max(y)]
                }))
            });
        let (xlo, xhi) = bounds.map_or((0.0, 1.0), |[a, b, ..]| axis::padded(a, b, 0.02));
        let (ylo, yhi) = match (self.y_range, bounds) {
            (Some(r), _) => check_range(path, r)?,
            (None, Some([.., c, d])) => axis::padded(c, d, 0.05),
            (None, None) => (0.0, 1.0),
        };
        check_span(path, xlo, xhi)?;
        check_span(path, ylo, yhi)?;

        // Layout: y axis first (its labels set the left margin), then the x axis.
        let has_xl = !self.x_label.trim().is_empty();
        let top = PAD + title_height(&self.title);
        let x_label_h = if has_xl { 10 + text_height(S) } else { 0 };
        let plot_h = h - top - (PAD + TICK + GAP + text_height(S) + x_label_h);
        let yaxis = y_axis(ylo, yhi, plot_h);
        let left = left_margin(&yaxis, &self.y_label);
        let plot_w = w - left - PAD - 12;
        if plot_w < 60 || plot_h < 60 {
            return Err(invalid(
                path,
                format!("{w}x{h} is too small for the labels"),
            ));
        }
        let widest = |l: &[String]| l.iter().map(|s| text_width(s, S)).max().unwrap_or(0);
        let xaxis = axis::fit(
            xlo,
            xhi,
            plot_w as f64,
            (plot_w / 90).max(2) as usize,
            |l| f64::from(widest(l) + 24),
        );
        let plot = Rect {
            x: left,
            y: top,
            w: plot_w + 1,
            h: plot_h + 1,
        };
        let inner = Rect {
            x: plot.x + 1,
            y: plot.y + 1,
            w: plot.w - 2,
            h: plot.h - 2,
        };
        let col_of = |x: f64| xaxis.map(x, plot.x as f64, (plot.x + plot.w - 1) as f64);

        let mut c = Canvas::new(w as usize, h as usize, WHITE);
        draw_y_axis(&mut c, &yaxis, plot);
        let label_y = plot.y + plot.h + TICK + GAP;
        for (t, label) in xaxis.ticks.iter().zip(&xaxis.labels) {
            let x = col_of(*t).round() as i32;
            c.fill(
                Rect {
                    x,
                    y: inner.y,
                    w: 1,
                    h: inner.h,
                },
                GRID,
            );
            c.fill(
                Rect {
                    x,
                    y: plot.y + plot.h,
                    w: 1,
                    h: TICK,
                },
                AXIS,
            );
            let lw = text_width(label, S);
            c.text((x - lw / 2).min(w - lw - 2), label_y, label, S, TICK_TEXT);
        }

        let mut ink = Coverage::new(inner);
        for (i, s) in self.series.iter().enumerate() {
            let mut cov = Coverage::new(inner);
            let markers = s.points.iter().filter(|p| ok(p)).count() <= MARKER_MAX_POINTS;
            for (k, &p) in s.points.iter().enumerate() {
                if !ok(&p) {
                    continue;
                }
                let a = (col_of(p.0), row_of(&yaxis, p.1, plot));
                let next = s.points.get(k + 1).filter(|q| ok(q));
                if let Some(&q) = next {
                    cov.segment(a, (col_of(q.0), row_of(&yaxis, q.1, plot)), LINE_HALF);
                }
                let isolated = next.is_none() && (k == 0 || !ok(&s.points[k - 1]));
                if markers || isolated {
                    cov.dot(a, MARKER_R);
                }
            }
            cov.composite(&mut c, palette(i));
            ink.merge(&cov);
        }
        c.outline(plot, AXIS);

        if bounds.is_none() {
            let note = "no data";
            let x = plot.x + (plot.w - text_width(note, S)) / 2;
            c.text(x, plot.y + (plot.h - CAP_H * S) / 2, note, S, NOTE);
        }
        let legend = self.draw_legend(&mut c, inner, &ink);
        if has_xl {
            let l = fit_text(self.x_label.trim(), plot.w, S);
            let x = plot.x + (plot.w - text_width(&l, S)) / 2;
            c.text(x, label_y + text_height(S) + 10, &l, S, TEXT);
        }
        if !self.y_label.trim().is_empty() {
            draw_y_label(&mut c, &self.y_label, plot);
        }
        draw_title(&mut c, &self.title, plot.x + plot.w / 2, PAD, w - 2 * PAD);
        Ok((c, Layout { plot, legend }))
    }

    /// Draws the legend in the corner of `inner` covering the least series ink.
    fn draw_legend(&self, c: &mut Canvas, inner: Rect, ink: &Coverage) -> Option<Rect> {
        let entries: Vec<(String, Rgb)> = (self.series.iter().enumerate())
            .filter(|(_, s)| !s.name.trim().is_empty())
            .map(|(i, s)| (fit_text(s.name.trim(), inner.w / 2, S), palette(i)))
            .collect();
        if entries.is_empty() {
            return None;
        }
        let (row, swatch, m) = (text_height(S) + 6, 24, 10);
        let text_w = entries
            .iter()
            .map(|(n, _)| text_width(n, S))
            .max()
            .unwrap_or(0);
        let (bw, bh) = (
            10 + swatch + 8 + text_w + 10,
            8 + row * entries.len() as i32 - 6 + 8,
        );
        let (l, r) = (inner.x + m, inner.x + inner.w - m - bw);
        let (t, b) = (inner.y + m, inner.y + inner.h - m - bh);
        let corners = [(r, t), (l, t), (r, b), (l, b)].map(|(x, y)| Rect { x, y, w: bw, h: bh });
        let mut best = corners[0];
        for cand in &corners[1..] {
            if ink.sum_in(*cand) < ink.sum_in(best) * 0.8 {
                best = *cand;
            }
        }
        c.fill(best, WHITE);
        c.outline(best, BORDER);
        for (k, (name, col)) in entries.iter().enumerate() {
            let y = best.y + 8 + k as i32 * row;
            c.fill(
                Rect {
                    x: best.x + 10,
                    y: y + CAP_H * S / 2 - 1,
                    w: swatch,
                    h: 3,
                },
                *col,
            );
            c.text(best.x + 10 + swatch + 8, y, name, S, TEXT);
        }
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{decode, px, scratch};

    fn is_white(p: [u8; 3]) -> bool {
        p == [255; 3]
    }

    #[test]
    fn png_has_requested_dims_and_white_background() {
        let path = scratch("line-dims").join("c.png");
        let chart = LineChart::new("Loss", "epoch", "loss")
            .size(640, 400)
            .series("train", (0..20).map(|i| (i as f64, 1.0 / (1.0 + i as f64))));
        chart.save_png(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&bytes[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 640);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 400);
        let (w, h, rgb) = decode(&path);
        assert_eq!((w, h), (640, 400));
        for (x, y) in [(0, 0), (639, 0), (0, 399), (639, 399), (320, 3)] {
            assert!(is_white(px(&rgb, w, x, y)), "({x},{y})");
        }
    }

    #[test]
    fn horizontal_line_at_half_lands_in_the_middle_row() {
        let path = scratch("line-mid").join("c.png");
        let chart = LineChart::new("Mid", "x", "y")
            .y_range(0.0, 1.0)
            .series("half", (0..=100).map(|i| (i as f64, 0.5)));
        let (_, layout) = chart.render(&path).unwrap();
        chart.save_png(&path).unwrap();
        let (w, _, rgb) = decode(&path);
        let p = layout.plot;
        let mid = p.y + (p.h - 1) / 2;
        // Along the whole plot width (except under the legend) the middle row is the colour.
        for x in (p.x + 20..p.x + p.w - 20).step_by(37) {
            if layout.legend.is_some_and(|l| l.contains(x, mid)) {
                continue;
            }
            assert_eq!(px(&rgb, w, x, mid), palette(0), "x={x} mid={mid}");
            assert!(!is_white(px(&rgb, w, x, mid)));
            // A few rows away it is background or grid, not the series.
            let off = px(&rgb, w, x, mid - 6);
            assert!(off[0] > 200 && off[1] > 200 && off[2] > 200, "{off:?}");
        }
    }

    #[test]
    fn legend_has_text_pixels_and_avoids_the_data() {
        let path = scratch("line-legend").join("c.png");
        // Data fills the top of the plot: the legend should move to a bottom corner.
        let chart = LineChart::new("", "", "")
            .series(
                "rising",
                (0..50).map(|i| (i as f64, 0.85 + 0.001 * i as f64)),
            )
            .series(
                "flat high",
                (0..50).map(|i| (i as f64, 0.95 + 0.0 * i as f64)),
            );
        let (_, layout) = chart.render(&path).unwrap();
        chart.save_png(&path).unwrap();
        let (w, _, rgb) = decode(&path);
        let l = layout.legend.expect("legend drawn");
        assert!(
            l.y > layout.plot.y + layout.plot.h / 2,
            "legend at bottom: {l:?}"
        );
        let dark = (l.y + 2..l.y + l.h - 2)
            .flat_map(|y| (l.x + 2..l.x + l.w - 2).map(move |x| (x, y)))
            .filter(|&(x, y)| px(&rgb, w, x, y).iter().all(|&v| v < 80))
            .count();
        assert!(dark > 100, "legend text pixels: {dark}");
    }

    #[test]
    fn nan_breaks_the_line() {
        let path = scratch("line-nan").join("c.png");
        let pts = (0..=40).map(|i| (i as f64, if i == 20 { f64::NAN } else { 0.5 }));
        let chart = LineChart::new("", "", "").y_range(0.0, 1.0).series("", pts);
        let (c, layout) = chart.render(&path).unwrap();
        let p = layout.plot;
        let mid = p.y + (p.h - 1) / 2;
        let col = |x: f64| (p.x as f64 + x / 40.0 * (p.w - 1) as f64).round() as i32;
        assert_eq!(c.get(col(10.0), mid), Some(palette(0)));
        assert_eq!(c.get(col(30.0), mid), Some(palette(0)));
        for x in [19.6, 20.0, 20.4] {
            let v = c.get(col(x), mid).unwrap();
            assert!(v != palette(0) && v[0] > 200, "gap at x={x}: {v:?}");
        }
    }

    #[test]
    fn edge_cases_render_without_error() {
        let dir = scratch("line-edge");
        let single = LineChart::new("single", "x", "y").series("one", [(3.0, 7.0)]);
        let constant =
            LineChart::new("const", "x", "y").series("c", (0..10).map(|i| (i as f64, 2.0)));
        let empty = LineChart::new("empty", "x", "y").series("none", []);
        let nan_only = LineChart::new("nan", "x", "y").series("nan", [(f64::NAN, 1.0)]);
        let tiny = LineChart::new("tiny", "x", "y")
            .series("t", (0..10).map(|i| (i as f64, i as f64 * 1e-7)));
        let huge = LineChart::new("huge", "step", "y")
            .series("h", (0..10).map(|i| (i as f64 * 1e6, 3e9 + i as f64 * 1e9)));
        for (i, c) in [single, constant, empty, nan_only, tiny, huge]
            .iter()
            .enumerate()
        {
            c.save_png(dir.join(format!("{i}.png"))).unwrap();
        }
        // A single point is a visible dot.
        let (c, l) = LineChart::new("", "", "")
            .series("", [(3.0, 7.0)])
            .render(&dir)
            .unwrap();
        let centre = (l.plot.x + (l.plot.w - 1) / 2, l.plot.y + (l.plot.h - 1) / 2);
        assert_eq!(c.get(centre.0, centre.1), Some(palette(0)));
        // Empty data: the "no data" note is drawn in the middle of the plot.
        let (c, l) = LineChart::new("", "", "").render(&dir).unwrap();
        let p = l.plot;
        let note = (p.y + p.h / 2 - 10..p.y + p.h / 2 + 10)
            .flat_map(|y| (p.x + p.w / 2 - 40..p.x + p.w / 2 + 40).map(move |x| (x, y)))
            .filter(|&(x, y)| c.get(x, y) == Some(NOTE))
            .count();
        assert!(note > 50, "note pixels {note}");
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_path() {
        let path = Path::new("/tmp/never-written.png");
        let bad_range = LineChart::new("", "", "")
            .y_range(0.0, f64::NAN)
            .save_png(path);
        assert!(
            bad_range
                .unwrap_err()
                .to_string()
                .contains("never-written.png")
        );
        let tiny = LineChart::new("", "", "").size(10, 10).save_png(path);
        assert!(matches!(tiny, Err(PlotError::InvalidInput { .. })));
        let overflow = LineChart::new("", "", "").series("", [(0.0, -1e308), (1.0, 1e308)]);
        assert!(matches!(
            overflow.save_png(path),
            Err(PlotError::InvalidInput { .. })
        ));
        assert!(!path.exists());
    }
}
