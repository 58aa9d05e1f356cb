//! An RGB raster with the few primitives the charts need: rectangles, bitmap text (upright
//! and rotated), and anti-aliased strokes accumulated in a coverage mask.

use crate::font::{self, ADVANCE, GLYPH_H, GLYPH_W};

/// An 8-bit RGB colour.
pub(crate) type Rgb = [u8; 3];

/// Integer pixel rectangle (`x`, `y` top-left; `w`, `h` in pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rect {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

impl Rect {
    /// Whether the pixel (`x`, `y`) lies inside.
    #[cfg(test)]
    pub fn contains(&self, x: i32, y: i32) -> bool {
        x >= self.x && y >= self.y && x < self.x + self.w && y < self.y + self.h
    }
}

/// Row-major RGB pixels.
pub(crate) struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with `bg`.
    pub fn new(width: usize, height: usize, bg: Rgb) -> Self {
        Canvas {
            width,
            height,
            rgb: bg.repeat(width * height),
        }
    }

    fn index(&self, x: i32, y: i32) -> Option<usize> {
        let inside = x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height;
        inside.then(|| (y as usize * self.width + x as usize) * 3)
    }

    /// The colour at (`x`, `y`), `None` outside.
    #[cfg(test)]
    pub fn get(&self, x: i32, y: i32) -> Option<Rgb> {
        self.index(x, y)
            .map(|i| [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]])
    }

    /// Sets one pixel (ignored outside the canvas).
    pub fn set(&mut self, x: i32, y: i32, c: Rgb) {
        if let Some(i) = self.index(x, y) {
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Alpha-blends `c` over one pixel with opacity `a` in `[0, 1]`.
    pub fn blend(&mut self, x: i32, y: i32, c: Rgb, a: f32) {
        if a <= 0.0 {
            return;
        }
        let a = a.min(1.0);
        if let Some(i) = self.index(x, y) {
            for (p, &v) in self.rgb[i..i + 3].iter_mut().zip(&c) {
                let q = f32::from(*p);
                *p = (q + (f32::from(v) - q) * a).round() as u8;
            }
        }
    }

    /// Fills a rectangle (clipped to the canvas).
    pub fn fill(&mut self, r: Rect, c: Rgb) {
        let x0 = r.x.max(0);
        let x1 = (r.x + r.w).min(self.width as i32);
        for y in r.y.max(0)..(r.y + r.h).min(self.height as i32) {
            for x in x0..x1 {
                self.set(x, y, c);
            }
        }
    }

    /// Draws a 1-pixel rectangle outline.
    pub fn outline(&mut self, r: Rect, c: Rgb) {
        self.fill(Rect { h: 1, ..r }, c);
        self.fill(
            Rect {
                y: r.y + r.h - 1,
                h: 1,
                ..r
            },
            c,
        );
        self.fill(Rect { w: 1, ..r }, c);
        self.fill(
            Rect {
                x: r.x + r.w - 1,
                w: 1,
                ..r
            },
            c,
        );
    }

    /// Draws `s` with its top-left corner at (`x`, `y`), each font pixel `scale`×`scale`.
    pub fn text(&mut self, x: i32, y: i32, s: &str, scale: i32, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let cx = x + i as i32 * ADVANCE * scale;
            for col in 0..GLYPH_W {
                for row in 0..GLYPH_H {
                    if font::ink(ch, col, row) {
                        let r = Rect {
                            x: cx + col * scale,
                            y: y + row * scale,
                            w: scale,
                            h: scale,
                        };
                        self.fill(r, c);
                    }
                }
            }
        }
    }

    /// Draws `s` rotated 90° counter-clockwise (reading bottom to top). (`x`, `y`) is the
    /// bottom-left corner of the rotated text box, which is `text_height` wide and
    /// `text_width` tall.
    pub fn text_up(&mut self, x: i32, y: i32, s: &str, scale: i32, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            for col in 0..GLYPH_W {
                for row in 0..GLYPH_H {
                    if font::ink(ch, col, row) {
                        let u = i as i32 * ADVANCE + col;
                        let r = Rect {
                            x: x + row * scale,
                            y: y - (u + 1) * scale,
                            w: scale,
                            h: scale,
                        };
                        self.fill(r, c);
                    }
                }
            }
        }
    }
}

/// Anti-aliased stroke coverage (0..=1 per pixel) over a clip rectangle; strokes take the
/// maximum coverage so overlapping segments of one polyline do not darken their joints.
pub(crate) struct Coverage {
    clip: Rect,
    cov: Vec<f32>,
}

impl Coverage {
    /// An empty mask over `clip`.
    pub fn new(clip: Rect) -> Self {
        let n = (clip.w.max(0) * clip.h.max(0)) as usize;
        Coverage {
            clip,
            cov: vec![0.0; n],
        }
    }

    fn put(&mut self, x: i32, y: i32, c: f32) {
        let k = ((y - self.clip.y) * self.clip.w + (x - self.clip.x)) as usize;
        if c > self.cov[k] {
            self.cov[k] = c;
        }
    }

    /// Adds a segment from `a` to `b` (pixel-centre coordinates) of half-width `half`.
    /// Work is proportional to the segment's visible length, whatever its coordinates.
    pub fn segment(&mut self, a: (f64, f64), b: (f64, f64), half: f64) {
        let (c0, c1) = (self.clip.x as f64, (self.clip.x + self.clip.w - 1) as f64);
        let (r0, r1) = (self.clip.y as f64, (self.clip.y + self.clip.h - 1) as f64);
        let reach = half + 1.0;
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        let ylo = (a.1.min(b.1) - reach).floor().max(r0);
        let yhi = (a.1.max(b.1) + reach).ceil().min(r1);
        if ylo.is_nan() || yhi.is_nan() || ylo > yhi {
            return;
        }
        for y in ylo as i32..=yhi as i32 {
            let py = y as f64;
            // Parameter range of the segment points within `reach` rows of this row.
            let (t0, t1) = if dy.abs() < 1e-12 {
                (0.0, 1.0)
            } else {
                let (ta, tb) = ((py - reach - a.1) / dy, (py + reach - a.1) / dy);
                (ta.min(tb).max(0.0), ta.max(tb).min(1.0))
            };
            if t0 > t1 {
                continue;
            }
            let (xa, xb) = (a.0 + t0 * dx, a.0 + t1 * dx);
            let xlo = (xa.min(xb) - reach).floor().max(c0);
            let xhi = (xa.max(xb) + reach).ceil().min(c1);
            if xlo.is_nan() || xhi.is_nan() || xlo > xhi {
                continue;
            }
            for x in xlo as i32..=xhi as i32 {
                let px = x as f64;
                let t = if len2 > 0.0 {
                    (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let d = (a.0 + t * dx - px).hypot(a.1 + t * dy - py);
                self.put(x, y, (half + 0.5 - d).clamp(0.0, 1.0) as f32);
            }
        }
    }

    /// Adds a filled disc of radius `r` centred at `c`.
    pub fn dot(&mut self, c: (f64, f64), r: f64) {
        self.segment(c, c, r);
    }

    /// Blends `color` onto `canvas` with this coverage as opacity.
    pub fn composite(&self, canvas: &mut Canvas, color: Rgb) {
        for (k, &c) in self.cov.iter().enumerate() {
            if c > 0.0 {
                let k = k as i32;
                let (x, y) = (self.clip.x + k % self.clip.w, self.clip.y + k / self.clip.w);
                canvas.blend(x, y, color, c);
            }
        }
    }

    /// Takes the per-pixel maximum with `other` (same clip).
    pub fn merge(&mut self, other: &Coverage) {
        for (a, &b) in self.cov.iter_mut().zip(&other.cov) {
            *a = a.max(b);
        }
    }

    /// Total coverage inside `r` (used to put the legend where it hides the least ink).
    pub fn sum_in(&self, r: Rect) -> f32 {
        let mut s = 0.0;
        for y in r.y.max(self.clip.y)..(r.y + r.h).min(self.clip.y + self.clip.h) {
            for x in r.x.max(self.clip.x)..(r.x + r.w).min(self.clip.x + self.clip.w) {
                s += self.cov[((y - self.clip.y) * self.clip.w + (x - self.clip.x)) as usize];
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::font::{fit_text, text_height, text_width};

    const BLACK: Rgb = [0, 0, 0];

    /// Bounding box of non-white pixels.
    fn ink_bbox(c: &Canvas) -> Option<Rect> {
        let (mut x0, mut y0, mut x1, mut y1) = (i32::MAX, i32::MAX, -1, -1);
        for y in 0..c.height as i32 {
            for x in 0..c.width as i32 {
                if c.get(x, y) != Some([255; 3]) {
                    (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
                }
            }
        }
        (x1 >= 0).then(|| Rect {
            x: x0,
            y: y0,
            w: x1 - x0 + 1,
            h: y1 - y0 + 1,
        })
    }

    #[test]
    fn text_width_follows_advance_and_scale() {
        assert_eq!(text_width("", 2), 0);
        assert_eq!(text_width("abc", 1), 17);
        assert_eq!(text_width("abc", 2), 34);
        assert_eq!(text_height(3), 24);
        // "HH" inks exactly its nominal box: 2 glyphs of 5 columns + 1 gap, 7 rows tall.
        let mut c = Canvas::new(60, 30, [255; 3]);
        c.text(3, 4, "HH", 2, BLACK);
        let bb = ink_bbox(&c).unwrap();
        assert_eq!(
            bb,
            Rect {
                x: 3,
                y: 4,
                w: text_width("HH", 2),
                h: 14
            }
        );
    }

    #[test]
    fn rotated_text_occupies_the_transposed_box() {
        let mut c = Canvas::new(40, 60, [255; 3]);
        c.text_up(5, 50, "HH", 2, BLACK);
        let bb = ink_bbox(&c).unwrap();
        assert_eq!(
            bb,
            Rect {
                x: 5,
                y: 50 - text_width("HH", 2),
                w: 14,
                h: text_width("HH", 2)
            }
        );
    }

    #[test]
    fn every_printable_glyph_but_space_has_ink() {
        for code in 33u8..=126 {
            let mut c = Canvas::new(8, 10, [255; 3]);
            c.text(0, 0, &(code as char).to_string(), 1, BLACK);
            assert!(ink_bbox(&c).is_some(), "glyph {:?} is blank", code as char);
        }
        // Non-ASCII falls back to '?'.
        let (mut a, mut b) = (Canvas::new(8, 10, [255; 3]), Canvas::new(8, 10, [255; 3]));
        a.text(0, 0, "é", 1, BLACK);
        b.text(0, 0, "?", 1, BLACK);
        assert_eq!(a.rgb, b.rgb);
    }

    #[test]
    fn fit_text_truncates_with_dots() {
        assert_eq!(fit_text("short", 100, 1), "short");
        let t = fit_text("a very long legend entry", 60, 1);
        assert!(t.ends_with("..") && text_width(&t, 1) <= 60, "{t}");
    }

    #[test]
    fn segment_coverage_is_full_on_the_line_and_zero_far_away() {
        let clip = Rect {
            x: 0,
            y: 0,
            w: 50,
            h: 20,
        };
        let mut cov = Coverage::new(clip);
        cov.segment((-1e12, 10.0), (1e12, 10.0), 1.0);
        let mut c = Canvas::new(50, 20, [255; 3]);
        cov.composite(&mut c, BLACK);
        assert_eq!(c.get(25, 10), Some(BLACK));
        assert_eq!(c.get(25, 14), Some([255; 3]));
        // Each column: 1 on the line, 0.5 on the rows either side.
        assert!((cov.sum_in(clip) - 50.0 * 2.0).abs() < 1e-3);
    }
}
