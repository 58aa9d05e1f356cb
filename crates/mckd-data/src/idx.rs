//! MNIST idx reader (gzip or plain).
//!
//! Format (big-endian): images `u32 magic = 0x00000803, u32 count, u32 rows, u32 cols`, then
//! `count * rows * cols` bytes (row-major, one byte per pixel); labels `u32 magic =
//! 0x00000801, u32 count`, then `count` bytes. A file whose name ends in `.gz` is
//! decompressed with flate2 first; any other name is read as plain idx. The payload length
//! must equal the header's count exactly (no trailing or missing bytes).

use std::fs;
use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

/// Magic number of an idx3 (u8 images) file.
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an idx1 (u8 labels) file.
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Images of an idx3-ubyte file.
///
/// # Shapes
/// `pixels` is `[count, rows, cols]` row-major: image `i` is
/// `pixels[i * rows * cols..(i + 1) * rows * cols]`, raw bytes 0..=255.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image (28 for MNIST).
    pub rows: usize,
    /// Columns per image (28 for MNIST).
    pub cols: usize,
    /// `[count, rows, cols]` pixel bytes.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// Pixels of image `i` (`rows * cols` bytes, row-major), or `None` if `i >= count`.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let n = self.rows * self.cols;
        (i < self.count).then(|| &self.pixels[i * n..(i + 1) * n])
    }
}

/// Largest idx content (header + payload, after decompression) and largest file the readers
/// accept: 256 MiB. MNIST's largest file has 47,040,016 bytes.
pub const MAX_IDX_BYTES: u64 = 256 << 20;

/// deflate cannot expand data by more than 1032:1, so a gzip file of `n` bytes cannot hold
/// more than about `1032 n` bytes; a header that promises more is corrupt.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// The two idx file kinds MNIST uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdxKind {
    /// idx3-ubyte: `magic, count, rows, cols`, then `count * rows * cols` bytes.
    Images,
    /// idx1-ubyte: `magic, count`, then `count` bytes.
    Labels,
}

impl IdxKind {
    fn header_len(self) -> usize {
        match self {
            IdxKind::Images => 16,
            IdxKind::Labels => 8,
        }
    }

    fn magic(self) -> u32 {
        match self {
            IdxKind::Images => IDX_IMAGES_MAGIC,
            IdxKind::Labels => IDX_LABELS_MAGIC,
        }
    }

    fn name(self) -> &'static str {
        match self {
            IdxKind::Images => "idx3 (images)",
            IdxKind::Labels => "idx1 (labels)",
        }
    }

    /// The kind a file name implies (`*idx3*` images, `*idx1*` labels).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        if name.contains("idx3") {
            Some(IdxKind::Images)
        } else if name.contains("idx1") {
            Some(IdxKind::Labels)
        } else {
            None
        }
    }

    /// Total file length (header + payload) a checked header promises, if it fits in u64.
    fn promised_len(self, header: &[u8]) -> Option<u64> {
        let n = |at| u64::from(be_u32(header, at));
        let payload = match self {
            IdxKind::Images => n(4).checked_mul(n(8))?.checked_mul(n(12))?,
            IdxKind::Labels => n(4),
        };
        payload.checked_add(self.header_len() as u64)
    }
}

fn is_gz_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".gz"))
}

/// Read a file of at most [`MAX_IDX_BYTES`] into memory.
fn read_capped(path: &Path) -> Result<Vec<u8>> {
    let len = fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    if len > MAX_IDX_BYTES {
        return Err(DataError::format(
            path,
            format!("{len} bytes; idx files above {MAX_IDX_BYTES} bytes are not read"),
        ));
    }
    fs::read(path).map_err(|e| DataError::io(path, e))
}

/// The idx bytes (header + payload) of a file's content: `raw` itself, or its gunzipped
/// content when `gz`. For gzip the header is read first and decompression stops one byte past
/// what it promises, so a gzip bomb allocates no more than the header states, and the header
/// may promise at most [`MAX_IDX_BYTES`] and what `raw.len()` bytes of deflate can hold.
/// Checks the magic number and header length; the payload length is checked by the parsers.
pub(crate) fn idx_content(raw: Vec<u8>, gz: bool, path: &Path, kind: IdxKind) -> Result<Vec<u8>> {
    if !gz {
        check_header(&raw, path, kind.magic(), kind.header_len(), kind.name())?;
        return Ok(raw);
    }
    if raw.len() < 2 || raw[0] != 0x1f || raw[1] != 0x8b {
        return Err(DataError::format(
            path,
            format!(
                "name ends in .gz but the file is not gzip (first bytes {:02x?}, expected 1f 8b)",
                &raw[..raw.len().min(4)]
            ),
        ));
    }
    let corrupt = |at: usize, e: std::io::Error| {
        DataError::format(
            path,
            format!("corrupt or truncated gzip stream after {at} output bytes: {e}"),
        )
    };
    let mut decoder = flate2::read::MultiGzDecoder::new(&raw[..]);
    let mut out = Vec::with_capacity(kind.header_len());
    (&mut decoder)
        .take(kind.header_len() as u64)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(0, e))?;
    check_header(&out, path, kind.magic(), kind.header_len(), kind.name())?;
    let limit = (raw.len() as u64)
        .saturating_mul(MAX_DEFLATE_RATIO)
        .saturating_add(1024)
        .min(MAX_IDX_BYTES);
    let promised = match kind.promised_len(&out) {
        Some(p) if p <= limit => p,
        p => {
            return Err(DataError::format(
                path,
                format!(
                    "idx header promises {} bytes, more than this {}-byte gzip file can hold \
                     or the {MAX_IDX_BYTES}-byte limit: the header is corrupt",
                    p.map_or("over 2^64".to_string(), |p| p.to_string()),
                    raw.len()
                ),
            ));
        }
    };
    let rest = promised - kind.header_len() as u64;
    decoder
        .take(rest + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(out.len(), e))?;
    if out.len() as u64 > promised {
        return Err(DataError::format(
            path,
            format!("the gzip stream holds more than the {promised} bytes its idx header promises"),
        ));
    }
    Ok(out)
}

/// The validated idx bytes (header + payload) of the file at `path` (`*.gz` is gunzipped).
pub(crate) fn read_idx_content(path: &Path, kind: IdxKind) -> Result<Vec<u8>> {
    let bytes = idx_content(read_capped(path)?, is_gz_name(path), path, kind)?;
    match kind {
        IdxKind::Images => check_images(&bytes, path).map(|_| ())?,
        IdxKind::Labels => check_labels(&bytes, path)?,
    }
    Ok(bytes)
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn gzip_hint(path: &Path, magic: u32) -> &'static str {
    let plain = !path.to_string_lossy().ends_with(".gz");
    if plain && (magic >> 16) == 0x1f8b {
        " (this looks like gzip data: name the file *.gz)"
    } else {
        ""
    }
}

/// Check the magic number first (the most telling error), then the header length.
fn check_header(bytes: &[u8], path: &Path, magic: u32, header: usize, kind: &str) -> Result<()> {
    let short = || {
        DataError::format(
            path,
            format!(
                "{} bytes, too short for the {header}-byte {kind} header",
                bytes.len()
            ),
        )
    };
    if bytes.len() < 4 {
        return Err(short());
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(DataError::format(
            path,
            format!(
                "wrong idx magic 0x{found:08x}, expected 0x{magic:08x} for {kind}{}",
                gzip_hint(path, found)
            ),
        ));
    }
    if bytes.len() < header {
        return Err(short());
    }
    Ok(())
}

/// Header checks of idx3 bytes; `(count, rows, cols)`.
fn check_images(bytes: &[u8], path: &Path) -> Result<(usize, usize, usize)> {
    check_header(bytes, path, IDX_IMAGES_MAGIC, 16, "idx3 (images)")?;
    let (count, rows, cols) = (
        be_u32(bytes, 4) as usize,
        be_u32(bytes, 8) as usize,
        be_u32(bytes, 12) as usize,
    );
    let expected = count.checked_mul(rows).and_then(|v| v.checked_mul(cols));
    let payload = bytes.len() - 16;
    if expected != Some(payload) {
        return Err(DataError::format(
            path,
            format!(
                "header says {count} images of {rows}x{cols} = {} bytes, payload has {payload} bytes",
                expected.map_or("overflowing".to_string(), |v| v.to_string())
            ),
        ));
    }
    Ok((count, rows, cols))
}

fn check_labels(bytes: &[u8], path: &Path) -> Result<()> {
    check_header(bytes, path, IDX_LABELS_MAGIC, 8, "idx1 (labels)")?;
    let count = be_u32(bytes, 4) as usize;
    let payload = bytes.len() - 8;
    if payload != count {
        return Err(DataError::format(
            path,
            format!("header says {count} labels, payload has {payload} bytes"),
        ));
    }
    Ok(())
}

/// Parse idx3-ubyte image bytes; `path` is only used in error messages.
pub fn parse_idx_images(bytes: &[u8], path: &Path) -> Result<IdxImages> {
    let (count, rows, cols) = check_images(bytes, path)?;
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: bytes[16..].to_vec(),
    })
}

/// Parse idx1-ubyte label bytes; `path` is only used in error messages.
pub fn parse_idx_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    check_labels(bytes, path)?;
    Ok(bytes[8..].to_vec())
}

/// [`parse_idx_images`] on owned bytes, without copying the payload.
pub(crate) fn idx_images_from(mut bytes: Vec<u8>, path: &Path) -> Result<IdxImages> {
    let (count, rows, cols) = check_images(&bytes, path)?;
    bytes.drain(..16);
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: bytes,
    })
}

/// [`parse_idx_labels`] on owned bytes, without copying the payload.
pub(crate) fn idx_labels_from(mut bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    check_labels(&bytes, path)?;
    bytes.drain(..8);
    Ok(bytes)
}

/// Read an idx3-ubyte image file (`*.gz` is gunzipped).
///
/// Errors: [`DataError::Missing`] if absent, [`DataError::Format`] for a corrupt or truncated
/// gzip stream, a wrong magic number, a short header, a payload length that differs from
/// `count * rows * cols`, or more than [`MAX_IDX_BYTES`] (file or decompressed content).
/// Memory: the file, plus for gzip at most what its header promises (checked first).
pub fn read_idx_images(path: &Path) -> Result<IdxImages> {
    let bytes = idx_content(read_capped(path)?, is_gz_name(path), path, IdxKind::Images)?;
    idx_images_from(bytes, path)
}

/// Read an idx1-ubyte label file (`*.gz` is gunzipped). Errors as [`read_idx_images`].
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = idx_content(read_capped(path)?, is_gz_name(path), path, IdxKind::Labels)?;
    idx_labels_from(bytes, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TempDir, data_dir};
    use std::io::Write;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn tiny_images() -> Vec<u8> {
        let mut b = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend(0u8..12);
        b
    }

    #[test]
    fn parses_tiny_plain_and_gz() {
        let t = TempDir::new("idx_tiny");
        let plain = t.write("imgs-idx3-ubyte", &tiny_images());
        let zipped = t.write("imgs-idx3-ubyte.gz", &gz(&tiny_images()));
        for p in [plain, zipped] {
            let im = read_idx_images(&p).unwrap();
            assert_eq!((im.count, im.rows, im.cols), (2, 2, 3));
            assert_eq!(im.image(1).unwrap(), &[6, 7, 8, 9, 10, 11]);
            assert!(im.image(2).is_none());
        }
        let labels = t.write("l-idx1-ubyte.gz", &gz(&[0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]));
        assert_eq!(read_idx_labels(&labels).unwrap(), vec![7, 8, 9]);
    }

    #[test]
    fn bad_idx_inputs_give_errors_naming_the_file() {
        let t = TempDir::new("idx_bad");
        let full = gz(&tiny_images());
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "trunc-gz.gz",
                full[..full.len() / 2].to_vec(),
                "truncated gzip",
            ),
            ("notgz.gz", tiny_images(), "not gzip"),
            (
                "magic.gz",
                gz(&[0, 0, 8, 1, 0, 0, 0, 0]),
                "wrong idx magic 0x00000801",
            ),
            ("short.gz", gz(&[0, 0, 8]), "too short"),
            (
                "payload.gz",
                gz(&tiny_images()[..20]),
                "payload has 4 bytes",
            ),
            ("plain-but-gz", full.clone(), "looks like gzip"),
        ];
        for (name, bytes, want) in cases {
            let p = t.write(name, &bytes);
            let err = read_idx_images(&p).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
            assert!(err.contains(want), "{name}: expected '{want}' in: {err}");
        }
        let p = t.write("lab.gz", &gz(&[0, 0, 8, 1, 0, 0, 0, 5, 1, 2]));
        let err = read_idx_labels(&p).unwrap_err().to_string();
        assert!(err.contains("lab.gz") && err.contains("5 labels"), "{err}");
        let p = t.path().join("absent-idx1-ubyte.gz");
        let err = read_idx_labels(&p).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("absent-idx1-ubyte.gz"));
    }

    /// Counts, histograms, first labels and pixel mean/std from the kit README.
    #[test]
    fn mnist_matches_readme() {
        let m = data_dir().join("avmnist/mnist");
        let tl = read_idx_labels(&m.join("train-labels-idx1-ubyte.gz")).unwrap();
        let sl = read_idx_labels(&m.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        assert_eq!((tl.len(), sl.len()), (60000, 10000));
        let hist = |l: &[u8]| {
            let mut h = [0usize; 10];
            l.iter().for_each(|&v| h[v as usize] += 1);
            h
        };
        assert_eq!(
            hist(&tl),
            [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
        );
        assert_eq!(
            hist(&sl),
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
        );
        assert_eq!(&tl[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
        let ti = read_idx_images(&m.join("train-images-idx3-ubyte.gz")).unwrap();
        assert_eq!((ti.count, ti.rows, ti.cols), (60000, 28, 28));
        let si = read_idx_images(&m.join("t10k-images-idx3-ubyte.gz")).unwrap();
        assert_eq!((si.count, si.rows, si.cols), (10000, 28, 28));
        let n = ti.pixels.len() as f64;
        let sum: u64 = ti.pixels.iter().map(|&v| v as u64).sum();
        let sq: u64 = ti.pixels.iter().map(|&v| (v as u64) * (v as u64)).sum();
        let mean = sum as f64 / n / 255.0;
        let std = (sq as f64 / n / 65025.0 - mean * mean).sqrt();
        assert!((mean - 0.1306604762738429).abs() < 1e-12, "mean {mean}");
        assert!((std - 0.3081078038564626).abs() < 1e-9, "std {std}");
    }
}
