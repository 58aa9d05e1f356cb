//! Segmentation overlays: grayscale slices side by side with BraTS label colours on top.

use std::path::Path;

use crate::canvas::{Canvas, Rect, Rgb};
use crate::chart::{S, TEXT, WHITE};
use crate::font::{fit_text, text_height, text_width, wrap};
use crate::{PlotError, invalid, save_canvas};

/// Opacity of label colours over the grayscale image.
pub const LABEL_ALPHA: f32 = 0.5;

/// Outer margin and gap between panels.
const M: i32 = 12;

/// Overlay colour of a BraTS label: 1 necrotic core = red, 2 edema = green, 4 enhancing
/// tumour = yellow (3 is the enhancing label in the BraTS 2023 convention and is drawn the
/// same), 0 = background (transparent, `None`); any other value is magenta so stray labels
/// stay visible.
pub fn brats_label_color(label: u8) -> Option<[u8; 3]> {
    match label {
        0 => None,
        1 => Some([255, 0, 0]),
        2 => Some([0, 220, 0]),
        3 | 4 => Some([255, 230, 0]),
        _ => Some([255, 0, 255]),
    }
}

/// Legend text per colour, in legend order.
const LEGEND: [(u8, &str); 4] = [(1, "1 NCR"), (2, "2 ED"), (4, "3/4 ET"), (5, "other")];

/// One image of an overlay figure: a row-major grayscale slice (`gray[y * width + x]`, row 0
/// at the top) with an optional label map of the same size.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel<'a> {
    /// Title drawn above the panel (shrunk or truncated to the panel width).
    pub title: String,
    /// Intensities; min–max normalised over the finite values (NaN: black; constant: black).
    pub gray: &'a [f32],
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Optional labels (`labels[y * width + x]`), coloured by [`brats_label_color`].
    pub labels: Option<&'a [u8]>,
}

impl<'a> Panel<'a> {
    /// A panel without labels.
    pub fn new(title: impl Into<String>, gray: &'a [f32], width: usize, height: usize) -> Self {
        Panel {
            title: title.into(),
            gray,
            width,
            height,
            labels: None,
        }
    }

    /// Adds a label map.
    pub fn with_labels(mut self, labels: &'a [u8]) -> Self {
        self.labels = Some(labels);
        self
    }
}

/// Draws `panels` side by side (each upscaled `scale`× by nearest neighbour, titles above,
/// a colour legend below when any labels are drawn) and writes the PNG at `path`.
///
/// Errors name `path`: no panels, `scale` outside 1..=64, an empty panel, a `gray` or
/// `labels` length different from `width * height` ([`PlotError::BufferSize`]), an image
/// larger than 16384 pixels a side, I/O failures.
pub fn overlay_png(
    path: impl AsRef<Path>,
    panels: &[Panel<'_>],
    scale: u32,
) -> Result<(), PlotError> {
    let path = path.as_ref();
    let (canvas, _) = render(path, panels, scale)?;
    save_canvas(path, &canvas)
}

/// Draws the figure; returns it with each panel's image rectangle.
pub(crate) fn render(
    path: &Path,
    panels: &[Panel<'_>],
    scale: u32,
) -> Result<(Canvas, Vec<Rect>), PlotError> {
    if panels.is_empty() {
        return Err(invalid(path, "no panels to draw".into()));
    }
    if !(1..=64).contains(&scale) {
        return Err(invalid(path, format!("scale {scale} outside 1..=64")));
    }
    for (i, p) in panels.iter().enumerate() {
        let n = p
            .width
            .checked_mul(p.height)
            .filter(|&n| n > 0 && p.width <= 16384);
        let Some(n) = n.filter(|_| p.height <= 16384) else {
            return Err(invalid(
                path,
                format!("panel {i} has size {}x{}", p.width, p.height),
            ));
        };
        let lens = [
            ("gray", Some(p.gray.len())),
            ("labels", p.labels.map(<[u8]>::len)),
        ];
        for (what, len) in lens {
            if let Some(actual) = len.filter(|&l| l != n) {
                let what = format!("panel {i} {what} ({}x{})", p.width, p.height);
                return Err(PlotError::BufferSize {
                    path: path.into(),
                    what,
                    expected: n,
                    actual,
                });
            }
        }
    }
    let s = scale as usize;
    let total_w = panels
        .iter()
        .map(|p| p.width * s + M as usize)
        .sum::<usize>()
        + M as usize;
    let max_h = panels.iter().map(|p| p.height * s).max().unwrap_or(0);
    let present: Vec<(Rgb, &str)> = LEGEND
        .iter()
        .filter(|(l, _)| {
            let col = brats_label_color(*l);
            panels
                .iter()
                .filter_map(|p| p.labels)
                .any(|ls| ls.iter().any(|&v| brats_label_color(v) == col))
        })
        .filter_map(|(l, name)| brats_label_color(*l).map(|c| (c, *name)))
        .collect();
    let th = text_height(S);
    let titles: Vec<(Vec<String>, i32)> = panels.iter().map(|p| panel_title(p, s)).collect();
    let title_h = titles
        .iter()
        .filter(|(l, _)| l.iter().any(|t| !t.is_empty()))
        .map(|(l, ts)| l.len() as i32 * (text_height(*ts) + 2) + 6)
        .max()
        .unwrap_or(0);
    let legend_h = if present.is_empty() { 0 } else { th + 12 };
    let legend_w: i32 = present
        .iter()
        .map(|(_, n)| th + 6 + text_width(n, S) + 18)
        .sum();
    let width = total_w.max((legend_w + 2 * M) as usize);
    let height = M as usize + title_h as usize + max_h + legend_h as usize + M as usize;
    if width > 16384 || height > 16384 {
        return Err(invalid(
            path,
            format!("overlay image {width}x{height} is too large"),
        ));
    }

    let mut c = Canvas::new(width, height, WHITE);
    let mut rects = Vec::with_capacity(panels.len());
    let mut x0 = M;
    for (p, (lines, ts)) in panels.iter().zip(&titles) {
        let (w, h) = ((p.width * s) as i32, (p.height * s) as i32);
        let rect = Rect {
            x: x0,
            y: M + title_h,
            w,
            h,
        };
        // Title lines sit just above the image.
        let line_h = text_height(*ts) + 2;
        let mut y = rect.y - 6 - lines.len() as i32 * line_h;
        for line in lines {
            c.text(
                rect.x + (rect.w - text_width(line, *ts)) / 2,
                y,
                line,
                *ts,
                TEXT,
            );
            y += line_h;
        }
        draw_panel(&mut c, p, rect, scale as i32);
        rects.push(rect);
        x0 += rect.w + M;
    }
    let mut x = M;
    let y = M + title_h + max_h as i32 + 8;
    for (col, name) in present {
        c.fill(
            Rect {
                x,
                y,
                w: th - 2,
                h: th - 2,
            },
            col,
        );
        c.text(x + th + 4, y, name, S, TEXT);
        x += th + 6 + text_width(name, S) + 18;
    }
    Ok((c, rects))
}

/// A panel's title as lines and a text scale: one line, else wrapped on two lines, else one
/// small (or truncated) line.
fn panel_title(p: &Panel<'_>, scale: usize) -> (Vec<String>, i32) {
    let w = (p.width * scale) as i32;
    match wrap(&p.title, w, S, 2) {
        Some(lines) => (lines, S),
        None => (vec![fit_text(p.title.trim(), w, 1)], 1),
    }
}

/// Paints one normalised, labelled, upscaled slice into `rect`.
fn draw_panel(c: &mut Canvas, p: &Panel<'_>, rect: Rect, scale: i32) {
    let (lo, hi) = p
        .gray
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = hi - lo;
    for y in 0..p.height {
        for x in 0..p.width {
            let k = y * p.width + x;
            let v = p.gray[k];
            let g = if v.is_finite() && span > 0.0 {
                ((v - lo) / span * 255.0).round() as u8
            } else {
                0
            };
            let mut px = [g; 3];
            if let Some(col) = p.labels.and_then(|l| brats_label_color(l[k])) {
                for (o, cv) in px.iter_mut().zip(col) {
                    *o = (f32::from(*o) * (1.0 - LABEL_ALPHA) + f32::from(cv) * LABEL_ALPHA).round()
                        as u8;
                }
            }
            let r = Rect {
                x: rect.x + x as i32 * scale,
                y: rect.y + y as i32 * scale,
                w: scale,
                h: scale,
            };
            c.fill(r, px);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{decode, px, scratch};

    #[test]
    fn label_one_is_red_where_set_and_gray_elsewhere() {
        let path = scratch("overlay-red").join("o.png");
        let (w, h) = (8usize, 6usize);
        let gray: Vec<f32> = (0..w * h).map(|i| (i % w) as f32 * 10.0 + 5.0).collect();
        let mut labels = vec![0u8; w * h];
        for y in 2..4 {
            for x in 3..6 {
                labels[y * w + x] = 1;
            }
        }
        let panels = [
            Panel::new("T1c", &gray, w, h),
            Panel::new("T1c + labels", &gray, w, h).with_labels(&labels),
        ];
        let (_, rects) = render(&path, &panels, 4).unwrap();
        overlay_png(&path, &panels, 4).unwrap();
        let (iw, ih, rgb) = decode(&path);
        let r = rects[1];
        assert_eq!((r.w, r.h), (32, 24));
        // Width: two panels (or the legend, if wider); height: titles, panels, legend row.
        assert!(iw as i32 >= M + 32 + M + 32 + M);
        assert_eq!(ih as i32, r.y + 24 + text_height(S) + 12 + M);
        for y in 0..h {
            for x in 0..w {
                let p = px(&rgb, iw, r.x + x as i32 * 4 + 1, r.y + y as i32 * 4 + 2);
                if labels[y * w + x] == 1 {
                    assert!(
                        p[0] > p[1] + 60 && p[0] > p[2] + 60,
                        "red at ({x},{y}): {p:?}"
                    );
                } else {
                    assert!(p[0] == p[1] && p[1] == p[2], "gray at ({x},{y}): {p:?}");
                }
            }
        }
        // Min–max normalisation: first column black, last column white (left panel).
        let l = rects[0];
        assert_eq!(px(&rgb, iw, l.x, l.y), [0; 3]);
        assert_eq!(px(&rgb, iw, l.x + l.w - 1, l.y), [255; 3]);
        // Titles drawn above the panels.
        let title_ink = (M..l.y - 2).any(|y| (l.x..l.x + l.w).any(|x| px(&rgb, iw, x, y)[0] < 100));
        assert!(title_ink);
    }

    #[test]
    fn brats_colours_follow_the_convention() {
        assert_eq!(brats_label_color(0), None);
        assert_eq!(brats_label_color(1), Some([255, 0, 0]));
        assert!(brats_label_color(2).is_some_and(|c| c[1] > 200 && c[0] == 0));
        assert_eq!(brats_label_color(3), brats_label_color(4));
    }

    #[test]
    fn nan_and_constant_slices_render() {
        let gray = [f32::NAN, 1.0, 2.0, f32::NAN];
        let flat = [3.0f32; 4];
        let panels = [
            Panel::new("nan", &gray, 2, 2),
            Panel::new("flat", &flat, 2, 2),
        ];
        let (c, rects) = render(Path::new("x.png"), &panels, 3).unwrap();
        assert_eq!(c.get(rects[0].x, rects[0].y), Some([0; 3]));
        assert_eq!(c.get(rects[0].x + 3, rects[0].y), Some([0; 3]));
        assert_eq!(c.get(rects[0].x, rects[0].y + 3), Some([255; 3]));
        assert_eq!(c.get(rects[1].x, rects[1].y), Some([0; 3]));
    }

    #[test]
    fn bad_panels_are_errors_naming_the_path() {
        let gray = [0.0f32; 6];
        let path = Path::new("/tmp/ov-bad.png");
        let short = overlay_png(path, &[Panel::new("", &gray, 4, 2)], 2).unwrap_err();
        assert!(matches!(
            short,
            PlotError::BufferSize {
                expected: 8,
                actual: 6,
                ..
            }
        ));
        assert!(short.to_string().contains("ov-bad.png"));
        let lab = [0u8; 5];
        let bad_labels = overlay_png(path, &[Panel::new("", &gray, 3, 2).with_labels(&lab)], 2);
        assert!(bad_labels.unwrap_err().to_string().contains("labels"));
        assert!(overlay_png(path, &[], 2).is_err());
        assert!(overlay_png(path, &[Panel::new("", &gray, 3, 2)], 0).is_err());
        let missing = overlay_png("/nonexistent-dir/o.png", &[Panel::new("", &gray, 3, 2)], 2);
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("/nonexistent-dir/o.png")
        );
        assert!(!path.exists());
    }
}
