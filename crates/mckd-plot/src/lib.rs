//! `mckd-plot`: small, dependency-light PNG charts for the training reports and BraTS
//! overlays.
//!
//! - [`LineChart`]: curves (losses, importance weights) with "nice" ticks, grid, legend;
//!   NaN points break a line.
//! - [`BarChart`]: grouped bars (e.g. accuracy per modality subset, MCKD vs Baseline).
//! - [`overlay_png`]: grayscale slices side by side with BraTS label colours on top.
//! - [`save_rgb_png`]: the low-level writer everything goes through.
//!
//! Text is drawn with an embedded 5×8 bitmap font (no system fonts). Files are written to a
//! temporary file in the destination folder and renamed into place, so a reader never sees
//! a half-written PNG.
//!
//! Why not `plotters`: its bitmap backend draws text through a font backend (`ttf`: font-kit
//! and the system's fontconfig and font files; `ab_glyph`: a font file we would have to ship),
//! and CI machines and clusters often have no fonts, so charts would fail or lose their
//! labels there; it also brings a larger dependency tree where we need line charts, grouped bars and
//! label overlays over one `png` dependency. Ours is about 2,400 lines with its tests, which
//! check the written pixels.

#![warn(missing_docs)]

mod axis;
mod bar;
mod canvas;
mod chart;
mod font;
mod line;
mod overlay;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use bar::BarChart;
pub use line::{LineChart, Series};
pub use overlay::{LABEL_ALPHA, Panel, brats_label_color, overlay_png};

/// Errors from writing a chart or image; every variant names the destination path.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Creating, writing or renaming the file failed (missing folder, permissions, ...).
    #[error("cannot write PNG `{}`: {source}", path.display())]
    Io {
        /// Destination path.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The PNG encoder rejected the image.
    #[error("cannot encode PNG `{}`: {source}", path.display())]
    Encode {
        /// Destination path.
        path: PathBuf,
        /// Underlying encoder error.
        source: png::EncodingError,
    },
    /// A pixel buffer does not have the length its dimensions require.
    #[error(
        "PNG `{}`: buffer has {actual} bytes, expected {expected} for {what}",
        path.display()
    )]
    BufferSize {
        /// Destination path.
        path: PathBuf,
        /// What the buffer describes, e.g. `"640x480 RGB"` or `"panel 2 labels (32x32)"`.
        what: String,
        /// Required length.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// The chart description cannot be drawn (bad size, non-finite range, ...).
    #[error("cannot plot `{}`: {reason}", path.display())]
    InvalidInput {
        /// Destination path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The categorical palette used for series (matplotlib's "tab10"); cycles past 10.
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Colour of series `i` (cycling through [`PALETTE`]).
pub fn palette(i: usize) -> [u8; 3] {
    PALETTE[i % PALETTE.len()]
}

/// Writes an 8-bit RGB image (`rgb` row-major, 3 bytes per pixel) as a PNG at `path`.
///
/// The image goes to a temporary file next to `path` which is then renamed over it.
/// Errors (all naming `path`): zero dimensions, `rgb.len() != width * height * 3`, missing or
/// unwritable folder, encoder failure. Never panics on bad input.
pub fn save_rgb_png(
    path: impl AsRef<Path>,
    width: u32,
    height: u32,
    rgb: &[u8],
) -> Result<(), PlotError> {
    let path = path.as_ref();
    if width == 0 || height == 0 {
        return Err(invalid(
            path,
            format!("image size {width}x{height} is empty"),
        ));
    }
    let expected = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3));
    if expected != Some(rgb.len()) {
        return Err(PlotError::BufferSize {
            path: path.into(),
            what: format!("{width}x{height} RGB"),
            expected: expected.unwrap_or(usize::MAX),
            actual: rgb.len(),
        });
    }
    let Some(name) = path.file_name() else {
        return Err(invalid(path, "path has no file name".into()));
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(
        ".{}.{}-{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_png(path, &tmp, width, height, rgb).and_then(|()| {
        fs::rename(&tmp, path).map_err(|source| PlotError::Io {
            path: path.into(),
            source,
        })
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_png(
    path: &Path,
    tmp: &Path,
    width: u32,
    height: u32,
    rgb: &[u8],
) -> Result<(), PlotError> {
    let io = |source| PlotError::Io {
        path: path.into(),
        source,
    };
    let enc = |source| PlotError::Encode {
        path: path.into(),
        source,
    };
    let file = File::create(tmp).map_err(io)?;
    let mut out = BufWriter::new(file);
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(enc)?;
    writer.write_image_data(rgb).map_err(enc)?;
    writer.finish().map_err(enc)?;
    out.flush().map_err(io)
}

/// An [`PlotError::InvalidInput`] for `path`.
pub(crate) fn invalid(path: &Path, reason: String) -> PlotError {
    PlotError::InvalidInput {
        path: path.into(),
        reason,
    }
}

/// Saves a canvas through [`save_rgb_png`].
pub(crate) fn save_canvas(path: &Path, c: &canvas::Canvas) -> Result<(), PlotError> {
    save_rgb_png(path, c.width as u32, c.height as u32, &c.rgb)
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::{Path, PathBuf};

    /// A fresh, empty, unique scratch folder for one test (tempfile's; kept, as the tests
    /// read the PNGs back after writing them and a failing one is worth looking at).
    pub fn scratch(name: &str) -> PathBuf {
        tempfile::Builder::new()
            .prefix(&format!("mckd-plot-test-{name}-"))
            .tempdir()
            .unwrap()
            .keep()
    }

    /// Decodes an RGB8 PNG: (width, height, pixels).
    pub fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    /// Pixel (`x`, `y`) of a decoded RGB image of width `w`.
    pub fn px(rgb: &[u8], w: u32, x: i32, y: i32) -> [u8; 3] {
        let i = (y as usize * w as usize + x as usize) * 3;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{decode, scratch};
    use super::*;

    #[test]
    fn writes_png_signature_and_ihdr_dims() {
        let dir = scratch("ihdr");
        let path = dir.join("img.png");
        let rgb: Vec<u8> = (0..7 * 5 * 3).map(|i| (i * 7 % 256) as u8).collect();
        save_rgb_png(&path, 7, 5, &rgb).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&bytes[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 7);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 5);
        assert_eq!(bytes[24], 8, "bit depth");
        assert_eq!(bytes[25], 2, "colour type RGB");
        // Round trip, and no temporary file left behind.
        assert_eq!(decode(&path), (7, 5, rgb));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn buffer_length_mismatch_is_an_error_naming_the_path() {
        let path = scratch("buflen").join("bad.png");
        let err = save_rgb_png(&path, 4, 4, &[0; 47]).unwrap_err();
        assert!(
            matches!(
                err,
                PlotError::BufferSize {
                    expected: 48,
                    actual: 47,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("bad.png"), "{err}");
        assert!(!path.exists());
        let err = save_rgb_png(&path, 0, 4, &[]).unwrap_err();
        assert!(
            matches!(err, PlotError::InvalidInput { .. }) && err.to_string().contains("bad.png")
        );
    }

    #[test]
    fn missing_or_unwritable_folder_is_an_error_naming_the_path() {
        let dir = scratch("badpath");
        let missing = dir.join("no-such-folder").join("x.png");
        let err = save_rgb_png(&missing, 1, 1, &[0, 0, 0]).unwrap_err();
        assert!(matches!(err, PlotError::Io { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        // A "folder" that is a regular file cannot be written into, even as root.
        fs::write(dir.join("file"), b"x").unwrap();
        let under_file = dir.join("file").join("x.png");
        let err = save_rgb_png(&under_file, 1, 1, &[0, 0, 0]).unwrap_err();
        assert!(
            err.to_string().contains(&under_file.display().to_string()),
            "{err}"
        );
        // Charts surface the same error.
        let err = LineChart::new("t", "x", "y")
            .series("a", [(0.0, 1.0)])
            .save_png(&missing);
        assert!(matches!(err, Err(PlotError::Io { .. })));
    }
}
