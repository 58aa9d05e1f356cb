//! Reading and writing single-file NIfTI-1 volumes (`.nii`, `.nii.gz`).
//!
//! The header is parsed by the `nifti` crate (both byte orders); everything after it is
//! done here so that the offsets are exactly those of the header:
//! - gzip is detected by its magic bytes (not by the file name) and multi-member streams
//!   are accepted; a truncated or corrupt stream is a [`VolumeError::Gzip`] naming the file;
//! - voxel data is read at `vox_offset` (352 is never assumed; `vox_offset = 0`, which some
//!   old writers use, is read as 352 like nibabel does); extensions are listed, not kept;
//! - `scl_slope = 0` (or non-finite) means "no scaling", otherwise
//!   `value = raw * scl_slope + scl_inter`;
//! - data types uint8, int8, int16, uint16, int32, uint32, int64, uint64, float32 and
//!   float64 are accepted; complex and RGB types are an error;
//! - 4-D+ files are accepted only when the extra dimensions are 1;
//! - a folder where a file is expected is a [`VolumeError::NotAFile`];
//! - memory is bounded by what the file holds, never by what its header claims: the
//!   declared size (`vox_offset` + voxels × bytes per voxel) must be at most
//!   [`MAX_NIFTI_BYTES`], a gzip stream is decompressed only up to that size, and the voxel
//!   buffer is allocated only after the data was found to be there (details at
//!   `decode_nifti`; the fuzz tests check it).
//!
//! Writers copy the input's header (dims, pixdim, qform, sform, codes, units, description),
//! set the data type, `scl_slope = 1`, `scl_inter = 0`, `cal_min = cal_max = 0`,
//! `vox_offset = 352` (extensions are not copied), and write little-endian to a temporary
//! file in the same folder which is then renamed over the target.

use std::io::{Read, Write};
use std::path::Path;

use crate::brats::LabelConvention;
use crate::error::{Result, VolumeError};
use crate::volume::{ExtensionInfo, Header, Volume, ijk_of, voxel_count};

/// The NIfTI data type an output file is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    /// `uint8` (code 2): values must be integers in 0..=255.
    U8,
    /// `int16` (code 4): values are rounded to the nearest integer and must fit in i16.
    I16,
    /// `float32` (code 16): values must be finite.
    F32,
}

impl StorageType {
    fn code(self) -> i16 {
        match self {
            StorageType::U8 => 2,
            StorageType::I16 => 4,
            StorageType::F32 => 16,
        }
    }

    fn bytes(self) -> usize {
        match self {
            StorageType::U8 => 1,
            StorageType::I16 => 2,
            StorageType::F32 => 4,
        }
    }
}

/// A decoded file: header, grid and voxel values (scaled) as `f32`.
pub(crate) struct RawVolume {
    pub(crate) header: Header,
    pub(crate) dims: [usize; 3],
    pub(crate) values: Vec<f32>,
}

/// Reads a 3-D image (any supported data type) as `f32`, with scaling applied.
///
/// Errors name the file: missing file, truncated/corrupt gzip, bad header, truncated data,
/// and any NaN/Inf voxel ([`VolumeError::NonFinite`]).
///
/// # Shapes
/// Returns a [`Volume`] with `dims = header.dims()`, `data: [dk, dj, di]` flattened.
pub fn read_volume(path: impl AsRef<Path>) -> Result<(Volume, Header)> {
    let path = path.as_ref();
    let raw = read_raw(path)?;
    if let Some(pos) = raw.values.iter().position(|v| !v.is_finite()) {
        return Err(VolumeError::NonFinite {
            path: path.to_path_buf(),
            ijk: ijk_of(raw.dims, pos),
            value: f64::from(raw.values[pos]),
        });
    }
    Ok((
        Volume {
            dims: raw.dims,
            data: raw.values,
        },
        raw.header,
    ))
}

/// Reads a segmentation and checks every voxel against `convention`
/// (an unknown or non-integer value is a [`VolumeError::UnknownLabel`] naming the file,
/// the value and the voxel). Accepts any integer or float data type.
///
/// # Shapes
/// Returns `(labels: [dk, dj, di] flattened, dims (i, j, k), header)`.
pub fn read_labels(
    path: impl AsRef<Path>,
    convention: LabelConvention,
) -> Result<(Vec<u8>, [usize; 3], Header)> {
    let path = path.as_ref();
    let raw = read_raw(path)?;
    let mut labels = Vec::with_capacity(raw.values.len());
    for (pos, &v) in raw.values.iter().enumerate() {
        let label = ((0.0..=255.0).contains(&v) && v.fract() == 0.0)
            .then_some(v as u8)
            .filter(|&l| convention.is_valid(l));
        match label {
            Some(l) => labels.push(l),
            None => {
                return Err(VolumeError::UnknownLabel {
                    path: path.to_path_buf(),
                    value: f64::from(v),
                    ijk: ijk_of(raw.dims, pos),
                    convention: convention.name().to_string(),
                    allowed: convention.allowed_string(),
                });
            }
        }
    }
    Ok((labels, raw.dims, raw.header))
}

/// Reads only the header (and extension list) of a NIfTI file: the start of the file is
/// read and decompressed, the voxel data is neither read nor checked (a truncated file
/// still gives its header; [`read_volume`] reports it).
pub fn read_header(path: impl AsRef<Path>) -> Result<Header> {
    read_header_only(path.as_ref())
}

/// Writes a label map as `uint8` on the grid of `header` (its affine, qform, sform, pixdim).
///
/// # Shapes
/// `labels: [dk, dj, di]` flattened with `dims = header.dims()`.
pub fn write_labels_like(path: impl AsRef<Path>, labels: &[u8], header: &Header) -> Result<()> {
    let path = path.as_ref();
    let dims = header.dims();
    check_len(path, labels.len(), dims)?;
    write_nifti(path, header, dims, StorageType::U8, labels)
}

/// Writes a volume as `float32` on the grid of `header`.
///
/// # Shapes
/// `volume.dims` must equal `header.dims()`.
pub fn write_volume_like(path: impl AsRef<Path>, volume: &Volume, header: &Header) -> Result<()> {
    write_volume_as(path, volume, header, StorageType::F32)
}

/// Writes a volume as `storage` on the grid of `header` (`I16` rounds to the nearest
/// integer; any value that does not fit is a [`VolumeError::Unrepresentable`]).
///
/// # Shapes
/// `volume.dims` must equal `header.dims()`.
pub fn write_volume_as(
    path: impl AsRef<Path>,
    volume: &Volume,
    header: &Header,
    storage: StorageType,
) -> Result<()> {
    let path = path.as_ref();
    let dims = header.dims();
    if volume.dims != dims {
        return Err(VolumeError::Unrepresentable {
            path: path.to_path_buf(),
            problem: format!(
                "volume dims {:?} differ from the reference header dims {:?}",
                volume.dims, dims
            ),
        });
    }
    check_len(path, volume.data.len(), dims)?;
    let mut bytes = Vec::with_capacity(volume.data.len() * storage.bytes());
    let bad = |pos: usize, v: f32, what: &str| VolumeError::Unrepresentable {
        path: path.to_path_buf(),
        problem: format!("voxel {:?} = {v} does not fit {what}", ijk_of(dims, pos)),
    };
    match storage {
        StorageType::U8 => {
            for (pos, &v) in volume.data.iter().enumerate() {
                if !(0.0..=255.0).contains(&v) || v.fract() != 0.0 {
                    return Err(bad(pos, v, "uint8 (integers 0..=255)"));
                }
                bytes.push(v as u8);
            }
        }
        StorageType::I16 => {
            for (pos, &v) in volume.data.iter().enumerate() {
                let r = v.round();
                if !(f32::from(i16::MIN)..=f32::from(i16::MAX)).contains(&r) {
                    return Err(bad(pos, v, "int16"));
                }
                bytes.extend_from_slice(&(r as i16).to_le_bytes());
            }
        }
        StorageType::F32 => {
            for (pos, &v) in volume.data.iter().enumerate() {
                if !v.is_finite() {
                    return Err(bad(pos, v, "a finite float32"));
                }
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    write_nifti(path, header, dims, storage, &bytes)
}

fn check_len(path: &Path, len: usize, dims: [usize; 3]) -> Result<()> {
    if len != voxel_count(dims) {
        return Err(VolumeError::Unrepresentable {
            path: path.to_path_buf(),
            problem: format!(
                "{len} voxels given but the reference header dims {dims:?} need {}",
                voxel_count(dims)
            ),
        });
    }
    Ok(())
}

/// Builds the output header from `reference` and writes header + little-endian `data`.
fn write_nifti(
    path: &Path,
    reference: &Header,
    dims: [usize; 3],
    storage: StorageType,
    data: &[u8],
) -> Result<()> {
    let mut h = reference.raw().clone();
    let mut dim = [1u16; 8];
    dim[0] = 3;
    for d in 0..3 {
        dim[d + 1] = dims[d] as u16;
    }
    h.dim = dim;
    h.sizeof_hdr = 348;
    h.datatype = storage.code();
    h.bitpix = (storage.bytes() * 8) as i16;
    h.vox_offset = 352.0;
    h.scl_slope = 1.0;
    h.scl_inter = 0.0;
    h.cal_min = 0.0;
    h.cal_max = 0.0;
    h.magic = *b"n+1\0";
    write_nifti_bytes(path, &h, &[], data)
}

/// Serialises a NIfTI-1 header as 348 little-endian bytes.
pub(crate) fn header_bytes(h: &nifti::NiftiHeader) -> Vec<u8> {
    let mut b = Vec::with_capacity(348);
    b.extend_from_slice(&h.sizeof_hdr.to_le_bytes());
    b.extend_from_slice(&h.data_type);
    b.extend_from_slice(&h.db_name);
    b.extend_from_slice(&h.extents.to_le_bytes());
    b.extend_from_slice(&h.session_error.to_le_bytes());
    b.push(h.regular);
    b.push(h.dim_info);
    for d in h.dim {
        b.extend_from_slice(&d.to_le_bytes());
    }
    for f in [h.intent_p1, h.intent_p2, h.intent_p3] {
        b.extend_from_slice(&f.to_le_bytes());
    }
    for s in [h.intent_code, h.datatype, h.bitpix, h.slice_start] {
        b.extend_from_slice(&s.to_le_bytes());
    }
    for f in h.pixdim {
        b.extend_from_slice(&f.to_le_bytes());
    }
    for f in [h.vox_offset, h.scl_slope, h.scl_inter] {
        b.extend_from_slice(&f.to_le_bytes());
    }
    b.extend_from_slice(&h.slice_end.to_le_bytes());
    b.push(h.slice_code);
    b.push(h.xyzt_units);
    for f in [h.cal_max, h.cal_min, h.slice_duration, h.toffset] {
        b.extend_from_slice(&f.to_le_bytes());
    }
    b.extend_from_slice(&h.glmax.to_le_bytes());
    b.extend_from_slice(&h.glmin.to_le_bytes());
    let mut descrip = h.descrip.clone();
    descrip.resize(80, 0);
    b.extend_from_slice(&descrip);
    b.extend_from_slice(&h.aux_file);
    b.extend_from_slice(&h.qform_code.to_le_bytes());
    b.extend_from_slice(&h.sform_code.to_le_bytes());
    for f in [
        h.quatern_b,
        h.quatern_c,
        h.quatern_d,
        h.quatern_x,
        h.quatern_y,
        h.quatern_z,
    ] {
        b.extend_from_slice(&f.to_le_bytes());
    }
    for row in [h.srow_x, h.srow_y, h.srow_z] {
        for f in row {
            b.extend_from_slice(&f.to_le_bytes());
        }
    }
    b.extend_from_slice(&h.intent_name);
    b.extend_from_slice(&h.magic);
    debug_assert_eq!(b.len(), 348);
    b
}

/// Writes `header` (as given, little-endian), the 4-byte extender, `between` (extension
/// bytes or padding, already counted in `header.vox_offset`) and `data`, gzip-compressed
/// when the file name ends in `.gz`, through a temporary file renamed over `path`.
pub(crate) fn write_nifti_bytes(
    path: &Path,
    header: &nifti::NiftiHeader,
    between: &[u8],
    data: &[u8],
) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| VolumeError::Invalid(format!("{} is not a file path", path.display())))?;
    let gz = file_name.ends_with(".gz");
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let unique = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}-{unique}", std::process::id()));
    let mut extender = [0u8; 4];
    extender[0] = u8::from(!between.is_empty() && looks_like_extensions(between));
    let result = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let buf = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut w: Box<dyn Write> = if gz {
            Box::new(flate2::write::GzEncoder::new(
                buf,
                flate2::Compression::fast(),
            ))
        } else {
            Box::new(buf)
        };
        w.write_all(&header_bytes(header))?;
        w.write_all(&extender)?;
        w.write_all(between)?;
        w.write_all(data)?;
        w.flush()?;
        drop(w);
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(VolumeError::Io {
            path: path.to_path_buf(),
            source: e,
        });
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        VolumeError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })
}

/// Whether `bytes` parse as a chain of little-endian NIfTI extensions (esize ≥ 8,
/// multiple of 16 not required) filling the block exactly.
fn looks_like_extensions(bytes: &[u8]) -> bool {
    let mut off = 0usize;
    while off + 8 <= bytes.len() {
        let esize =
            i32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]);
        if esize < 8 {
            return false;
        }
        off += esize as usize;
    }
    off == bytes.len()
}

/// Largest decompressed NIfTI file (header, extensions and voxel data) the readers accept:
/// 2 GiB. A header that declares more is a [`VolumeError::Header`] error before anything is
/// allocated for the voxels (a BraTS volume is 18 MB; 1024³ `uint8` voxels still fit).
pub const MAX_NIFTI_BYTES: usize = 1 << 31;

/// Decompressed bytes after the voxel data that are read (and discarded) so that the gzip
/// checksum of the stream is verified; a stream with more is an error.
const MAX_TRAILING_BYTES: u64 = 64 << 20;

/// The gzip size trailer is trusted as a capacity hint only up to this many times the
/// compressed size (the buffer then grows as data arrives).
const GZIP_HINT_RATIO: usize = 64;

/// Whether `bytes` start with the gzip magic number.
fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Reads a whole file; a folder is a [`VolumeError::NotAFile`].
fn read_file(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| VolumeError::io(path, e))?;
    if meta.is_dir() {
        return Err(VolumeError::NotAFile {
            path: path.to_path_buf(),
            expected: "a .nii.gz or .nii file".to_string(),
        });
    }
    std::fs::read(path).map_err(|e| VolumeError::io(path, e))
}

/// Appends to `buf` what `reader` yields until `buf` holds `limit` bytes or the stream ends.
fn read_up_to(path: &Path, reader: &mut impl Read, buf: &mut Vec<u8>, limit: usize) -> Result<()> {
    let want = limit.saturating_sub(buf.len()) as u64;
    reader
        .take(want)
        .read_to_end(buf)
        .map(|_| ())
        .map_err(|e| VolumeError::Gzip {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })
}

/// What the header says about the voxel data, validated.
struct Layout {
    raw: nifti::NiftiHeader,
    dims: [usize; 3],
    dtype: DType,
    little: bool,
    vox_offset: usize,
    /// `vox_offset` + voxels × bytes per voxel, at most [`MAX_NIFTI_BYTES`].
    expected: usize,
}

/// Parses and validates the 348-byte header at the start of `bytes` (a shorter buffer is a
/// [`VolumeError::Truncated`]): magic, dims, data type, offsets and the declared size.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<Layout> {
    let header_err = |problem: String| VolumeError::Header {
        path: path.to_path_buf(),
        problem,
    };
    if bytes.len() < 348 {
        return Err(VolumeError::Truncated {
            path: path.to_path_buf(),
            expected: 348,
            actual: bytes.len(),
            vox_offset: 352,
        });
    }
    let raw = nifti::NiftiHeader::from_reader(&bytes[..348])
        .map_err(|e| header_err(format!("not a NIfTI-1 header ({e})")))?;
    if raw.sizeof_hdr != 348 {
        return Err(header_err(format!(
            "sizeof_hdr is {} (only NIfTI-1, 348, is supported)",
            raw.sizeof_hdr
        )));
    }
    if &raw.magic != b"n+1\0" {
        return Err(header_err(
            "magic is not \"n+1\": separate .hdr/.img pairs are not supported".to_string(),
        ));
    }
    let little = raw.endianness == nifti::Endianness::Little;

    // Grid.
    let ndim = raw.dim[0] as usize;
    if !(1..=7).contains(&ndim) {
        return Err(header_err(format!(
            "dim[0] = {} is not in 1..=7",
            raw.dim[0]
        )));
    }
    let mut dims = [1usize; 3];
    for d in 1..=ndim {
        let n = raw.dim[d];
        if n == 0 || n > i16::MAX as u16 {
            return Err(header_err(format!(
                "dim[{d}] = {} is not positive",
                n as i16
            )));
        }
        if d <= 3 {
            dims[d - 1] = n as usize;
        } else if n != 1 {
            return Err(header_err(format!(
                "{ndim}-D image with dim = {:?}: only 3-D volumes are supported",
                &raw.dim[1..=ndim]
            )));
        }
    }
    let n = voxel_count(dims);

    // Data type.
    let (dtype, size) = match raw.datatype {
        2 => (DType::U8, 1),
        4 => (DType::I16, 2),
        8 => (DType::I32, 4),
        16 => (DType::F32, 4),
        64 => (DType::F64, 8),
        256 => (DType::I8, 1),
        512 => (DType::U16, 2),
        768 => (DType::U32, 4),
        1024 => (DType::I64, 8),
        1280 => (DType::U64, 8),
        other => {
            return Err(header_err(format!(
                "data type code {other} is not supported (need an integer or real type)"
            )));
        }
    };

    // Offsets: voxel data starts at vox_offset.
    let vox = raw.vox_offset;
    if !vox.is_finite() || vox < 0.0 || vox.fract() != 0.0 {
        return Err(header_err(format!(
            "vox_offset = {vox} is not a byte offset"
        )));
    }
    if f64::from(vox) > MAX_NIFTI_BYTES as f64 {
        return Err(header_err(format!(
            "vox_offset = {vox} is beyond the {MAX_NIFTI_BYTES}-byte limit of this reader"
        )));
    }
    let vox_offset = if vox == 0.0 { 352 } else { vox as usize };
    if vox_offset < 348 {
        return Err(header_err(format!(
            "vox_offset = {vox_offset} points inside the 348-byte header"
        )));
    }
    let expected = n
        .checked_mul(size)
        .and_then(|b| b.checked_add(vox_offset))
        .filter(|&e| e <= MAX_NIFTI_BYTES)
        .ok_or_else(|| {
            header_err(format!(
                "dims {dims:?} of {size}-byte voxels at offset {vox_offset} declare more than \
                 the {MAX_NIFTI_BYTES}-byte limit of this reader"
            ))
        })?;
    Ok(Layout {
        raw,
        dims,
        dtype,
        little,
        vox_offset,
        expected,
    })
}

/// Decodes a whole NIfTI file held in memory (`file` as read from disk, gzip-compressed or
/// not; `path` only names it in errors).
///
/// Memory (the bound the fuzz tests check): an uncompressed file is not copied; a gzip
/// stream is decompressed only up to the size the header declares ([`MAX_NIFTI_BYTES`] at
/// most), into a buffer preallocated to at most `min(declared, gzip size trailer,
/// 64 × file size)` that then grows as data arrives (at most twice the bytes present); the
/// voxel values take 4 bytes per voxel present. No header value alone can make the reader
/// allocate more than that.
pub(crate) fn decode_nifti(path: &Path, file: &[u8]) -> Result<RawVolume> {
    let (layout, bytes): (Layout, std::borrow::Cow<[u8]>) = if is_gzip(file) {
        let mut dec = flate2::read::MultiGzDecoder::new(file);
        let mut buf = Vec::with_capacity(352);
        read_up_to(path, &mut dec, &mut buf, 348)?;
        let layout = parse_header(path, &buf)?;
        let isize_hint = if file.len() >= 18 {
            let n = file.len();
            u32::from_le_bytes([file[n - 4], file[n - 3], file[n - 2], file[n - 1]]) as usize
        } else {
            0
        };
        let hint = layout
            .expected
            .min(isize_hint)
            .min(file.len().saturating_mul(GZIP_HINT_RATIO));
        buf.reserve(hint.saturating_sub(buf.len()));
        read_up_to(path, &mut dec, &mut buf, layout.expected)?;
        if buf.len() < layout.expected {
            return Err(VolumeError::Truncated {
                path: path.to_path_buf(),
                expected: layout.expected,
                actual: buf.len(),
                vox_offset: layout.vox_offset,
            });
        }
        // Read to the end of the stream so that its checksum is verified.
        let trailing = std::io::copy(
            &mut (&mut dec).take(MAX_TRAILING_BYTES + 1),
            &mut std::io::sink(),
        )
        .map_err(|e| VolumeError::Gzip {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
        if trailing > MAX_TRAILING_BYTES {
            return Err(VolumeError::Header {
                path: path.to_path_buf(),
                problem: format!(
                    "more than {MAX_TRAILING_BYTES} bytes follow the {} bytes of header and \
                     voxel data",
                    layout.expected
                ),
            });
        }
        (layout, std::borrow::Cow::Owned(buf))
    } else {
        let layout = parse_header(path, file)?;
        if file.len() < layout.expected {
            return Err(VolumeError::Truncated {
                path: path.to_path_buf(),
                expected: layout.expected,
                actual: file.len(),
                vox_offset: layout.vox_offset,
            });
        }
        let end = layout.expected;
        (layout, std::borrow::Cow::Borrowed(&file[..end]))
    };
    let extensions = parse_extensions(&bytes, layout.vox_offset, layout.little);

    // Values, scaled.
    let mut values = decode(&bytes[layout.vox_offset..], layout.dtype, layout.little);
    drop(bytes);
    let (slope, inter) = (layout.raw.scl_slope, layout.raw.scl_inter);
    if slope != 0.0 && slope.is_finite() && (slope != 1.0 || inter != 0.0) {
        let inter = if inter.is_finite() { inter } else { 0.0 };
        let (s, c) = (f64::from(slope), f64::from(inter));
        for v in &mut values {
            *v = (f64::from(*v) * s + c) as f32;
        }
    }
    Ok(RawVolume {
        header: Header::from_parts(layout.raw, extensions, Some(path.to_path_buf())),
        dims: layout.dims,
        values,
    })
}

/// Parses header, extension list and voxel values of a single-file NIfTI-1 volume.
fn read_raw(path: &Path) -> Result<RawVolume> {
    let file = read_file(path)?;
    decode_nifti(path, &file)
}

/// Extension bytes read by [`read_header`] at most (the AFNI extensions of BraTS files are
/// a few kB).
const MAX_HEADER_EXTENSION_BYTES: usize = 16 << 20;

/// Reads the header and the extensions in front of the voxel data, streaming: only the
/// first bytes of the file are read and decompressed.
fn read_header_only(path: &Path) -> Result<Header> {
    use std::io::BufRead;
    let meta = std::fs::metadata(path).map_err(|e| VolumeError::io(path, e))?;
    if meta.is_dir() {
        return Err(VolumeError::NotAFile {
            path: path.to_path_buf(),
            expected: "a .nii.gz or .nii file".to_string(),
        });
    }
    let file = std::fs::File::open(path).map_err(|e| VolumeError::io(path, e))?;
    let mut input = std::io::BufReader::new(file);
    let start = input.fill_buf().map_err(|e| VolumeError::io(path, e))?;
    let mut reader: Box<dyn Read> = if is_gzip(start) {
        Box::new(flate2::read::MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    };
    let mut buf = Vec::with_capacity(352);
    read_up_to(path, &mut reader, &mut buf, 348)?;
    let layout = parse_header(path, &buf)?;
    let prefix = layout.vox_offset.min(348 + MAX_HEADER_EXTENSION_BYTES);
    read_up_to(path, &mut reader, &mut buf, prefix)?;
    let extensions = parse_extensions(&buf, layout.vox_offset, layout.little);
    Ok(Header::from_parts(
        layout.raw,
        extensions,
        Some(path.to_path_buf()),
    ))
}

/// Lists the extensions between byte 352 and `vox_offset`, within the bytes given (stops at
/// the first malformed one; only informational).
fn parse_extensions(bytes: &[u8], vox_offset: usize, little: bool) -> Vec<ExtensionInfo> {
    let mut out = Vec::new();
    if vox_offset < 352 || bytes.len() < 352 || bytes[348] == 0 {
        return out;
    }
    let end = vox_offset.min(bytes.len());
    let rd = |o: usize| {
        let a = [bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]];
        if little {
            i32::from_le_bytes(a)
        } else {
            i32::from_be_bytes(a)
        }
    };
    let mut off = 352;
    while off + 8 <= end {
        let (esize, ecode) = (rd(off), rd(off + 4));
        if esize < 8 || off + esize as usize > end {
            break;
        }
        out.push(ExtensionInfo {
            code: ecode,
            size: esize as usize,
        });
        off += esize as usize;
    }
    out
}

#[derive(Clone, Copy)]
enum DType {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

/// Decodes raw voxel bytes to `f32` (integers beyond 2^24 lose precision).
fn decode(data: &[u8], dtype: DType, little: bool) -> Vec<f32> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            data.chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().expect("chunk size");
                    (if little {
                        <$t>::from_le_bytes(a)
                    } else {
                        <$t>::from_be_bytes(a)
                    }) as f32
                })
                .collect()
        };
    }
    match dtype {
        DType::U8 => data.iter().map(|&b| f32::from(b)).collect(),
        DType::I8 => data.iter().map(|&b| f32::from(b as i8)).collect(),
        DType::I16 => conv!(i16, 2),
        DType::U16 => conv!(u16, 2),
        DType::I32 => conv!(i32, 4),
        DType::U32 => conv!(u32, 4),
        DType::I64 => conv!(i64, 8),
        DType::U64 => conv!(u64, 8),
        DType::F32 => conv!(f32, 4),
        DType::F64 => conv!(f64, 8),
    }
}

/// Test helpers shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};

    /// Shared data folder: `MCKD_DATA_DIR`, default `<workspace>/../shared/data`.
    pub fn data_dir() -> PathBuf {
        std::env::var_os("MCKD_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
    }

    /// The real BraTS sample case folder; panics with a clear message when it is absent
    /// (the tests that need it must fail, never pass silently).
    pub fn brats_sample_dir() -> PathBuf {
        let dir = data_dir().join("brats-sample");
        assert!(
            dir.join("Brats18_2013_2_1").is_dir(),
            "BraTS sample data not found at {} (set MCKD_DATA_DIR to the folder holding \
             brats-sample/)",
            dir.display()
        );
        dir
    }

    /// A unique temporary folder (tempfile's), removed on drop.
    pub struct TempDir(tempfile::TempDir);

    impl TempDir {
        pub fn new(tag: &str) -> Self {
            let dir = tempfile::Builder::new()
                .prefix(&format!("mckd-volume-{tag}-"))
                .tempdir()
                .expect("create temp dir");
            Self(dir)
        }

        pub fn path(&self) -> &Path {
            self.0.path()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::test_support::*;
    use super::*;
    use crate::brats::LabelConvention;

    fn case_file(suffix: &str) -> PathBuf {
        brats_sample_dir()
            .join("Brats18_2013_2_1")
            .join(format!("Brats18_2013_2_1_{suffix}.nii.gz"))
    }

    const LPS_AFFINE: [[f64; 4]; 4] = [
        [-1.0, 0.0, 0.0, 0.0],
        [0.0, -1.0, 0.0, 239.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];

    #[test]
    fn real_case_images_are_int16_240x240x155_with_readme_sums_and_affine() {
        let sums = [
            ("flair", 502574208.0, 1252.0),
            ("t1", 793278781.0, 1461.0),
            ("t1ce", 500308653.0, 1674.0),
            ("t2", 723114034.0, 1478.0),
        ];
        for (suffix, sum, max) in sums {
            let (vol, h) = read_volume(case_file(suffix)).unwrap();
            assert_eq!(vol.dims, [240, 240, 155], "{suffix}");
            assert_eq!(h.datatype(), 4, "{suffix} is int16");
            assert_eq!(h.vox_offset(), 352.0, "{suffix}");
            assert!(h.extensions().is_empty(), "{suffix}");
            let s: f64 = vol.data.iter().map(|&v| f64::from(v)).sum();
            assert_eq!(s, sum, "{suffix} voxel sum");
            let m = vol.data.iter().cloned().fold(f32::MIN, f32::max);
            assert_eq!(f64::from(m), max, "{suffix} max");
            assert_eq!(vol.get(0, 0, 0), 0.0);
            assert_eq!(h.spacing(), [1.0, 1.0, 1.0]);
            assert_eq!(h.sform_code(), 1);
            assert_eq!(h.qform_code(), 2);
            assert_eq!(h.sform().unwrap(), LPS_AFFINE, "{suffix} sform");
            let q = h.qform().unwrap();
            for r in 0..4 {
                for c in 0..4 {
                    assert!((q[r][c] - LPS_AFFINE[r][c]).abs() < 1e-6, "{suffix} qform");
                }
            }
        }
    }

    #[test]
    fn real_seg_has_extension_offset_above_352_and_readme_label_counts() {
        let (labels, dims, h) = read_labels(case_file("seg"), LabelConvention::Brats2018).unwrap();
        assert_eq!(dims, [240, 240, 155]);
        assert_eq!(h.datatype(), 4, "seg is int16 in this case");
        assert!(h.vox_offset() > 352.0, "vox_offset {}", h.vox_offset());
        assert_eq!(h.scl_slope(), 0.0, "files with extensions have scl_slope 0");
        assert!(h.extensions().iter().any(|e| e.code == 4), "AFNI extension");
        assert_eq!(h.qform_code(), 1);
        assert_eq!(h.affine(), LPS_AFFINE);
        let mut counts = [0usize; 5];
        for &l in &labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts[3], 0);
        assert_eq!([counts[1], counts[2], counts[4]], [4514, 34894, 21677]);
        let sum: usize = labels.iter().map(|&l| l as usize).sum();
        assert_eq!(sum, 161010, "README seg voxel sum");
        assert_eq!(counts[1] + counts[2] + counts[4], 61085, "WT");
        // WT bounding box, inclusive, (i, j, k).
        let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
        for (idx, &l) in labels.iter().enumerate() {
            if l > 0 {
                let p = ijk_of(dims, idx);
                for d in 0..3 {
                    lo[d] = lo[d].min(p[d]);
                    hi[d] = hi[d].max(p[d]);
                }
            }
        }
        assert_eq!((lo, hi), ([80, 80, 69], [142, 175, 126]));
        // The same labels are unknown under the BraTS 2023 convention (4 is not a label).
        let err = read_labels(case_file("seg"), LabelConvention::Brats2023).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("Brats18_2013_2_1_seg.nii.gz") && msg.contains("value 4"),
            "{msg}"
        );
    }

    #[test]
    fn prediction_written_like_input_keeps_affine_qform_sform_dims_and_labels() {
        let tmp = TempDir::new("write");
        let (labels, dims, h) = read_labels(case_file("seg"), LabelConvention::Brats2018).unwrap();
        let out = tmp.path().join("pred.nii.gz");
        write_labels_like(&out, &labels, &h).unwrap();
        let (back, dims2, h2) = read_labels(&out, LabelConvention::Brats2018).unwrap();
        assert_eq!(dims2, dims);
        assert_eq!(back, labels);
        assert_eq!(h2.datatype(), 2, "written as uint8");
        assert_eq!(h2.vox_offset(), 352.0);
        assert_eq!(h2.sform(), h.sform());
        assert_eq!(h2.qform(), h.qform());
        assert_eq!(h2.affine(), LPS_AFFINE);
        assert_eq!(
            (h2.sform_code(), h2.qform_code()),
            (h.sform_code(), h.qform_code())
        );
        assert_eq!(h2.spacing(), h.spacing());
        let (a, b) = (h.nifti(), h2.nifti());
        assert_eq!(
            (
                a.quatern_b,
                a.quatern_c,
                a.quatern_d,
                a.quatern_x,
                a.quatern_y,
                a.quatern_z
            ),
            (
                b.quatern_b,
                b.quatern_c,
                b.quatern_d,
                b.quatern_x,
                b.quatern_y,
                b.quatern_z
            )
        );
        assert_eq!(a.pixdim, b.pixdim);
        assert_eq!(a.xyzt_units, b.xyzt_units);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1);

        // float32 and int16 volumes round-trip too, uncompressed as well.
        let vol = Volume::new(dims, labels.iter().map(|&l| f32::from(l) * 0.5).collect()).unwrap();
        let out = tmp.path().join("prob.nii");
        write_volume_like(&out, &vol, &h).unwrap();
        let (vb, hb) = read_volume(&out).unwrap();
        assert_eq!((vb, hb.datatype()), (vol.clone(), 16));
        let out = tmp.path().join("img.nii.gz");
        write_volume_as(&out, &vol, &h, StorageType::I16).unwrap();
        let (vb, hb) = read_volume(&out).unwrap();
        assert_eq!(hb.datatype(), 4);
        assert_eq!(vb.data[0], 0.0);
        assert!(vb.data.iter().zip(&vol.data).all(|(a, b)| *a == b.round()));
        // Out-of-range values are an error, not a wrap-around.
        let big = Volume::new(dims, vec![40000.0; labels.len()]).unwrap();
        let err = write_volume_as(tmp.path().join("big.nii"), &big, &h, StorageType::I16);
        assert!(err.unwrap_err().to_string().contains("big.nii"));
        // Wrong length is an error naming the file.
        let err = write_labels_like(tmp.path().join("short.nii.gz"), &labels[1..], &h);
        assert!(err.unwrap_err().to_string().contains("short.nii.gz"));
    }

    /// A small header for hand-made files.
    fn small_header(dims: [usize; 3], datatype: i16, bitpix: i16) -> nifti::NiftiHeader {
        let h = Header::synthetic(dims, [1.0, 1.0, 2.0]).unwrap();
        let mut raw = h.raw().clone();
        raw.datatype = datatype;
        raw.bitpix = bitpix;
        raw
    }

    #[test]
    fn uint8_seg_scl_slope_zero_scaling_padding_and_big_endian_are_read_correctly() {
        let tmp = TempDir::new("hdr");
        let dims = [3, 2, 2];
        let labels: Vec<u8> = vec![0, 1, 2, 4, 0, 0, 1, 1, 2, 2, 4, 4];

        // uint8 with scl_slope = 0: no scaling.
        let mut raw = small_header(dims, 2, 8);
        raw.scl_slope = 0.0;
        raw.scl_inter = 7.0;
        let p = tmp.path().join("seg_u8.nii.gz");
        write_nifti_bytes(&p, &raw, &[], &labels).unwrap();
        let (back, d, h) = read_labels(&p, LabelConvention::Brats2018).unwrap();
        assert_eq!(
            (back, d, h.scl_slope(), h.datatype()),
            (labels.clone(), dims, 0.0, 2)
        );

        // int16 with slope 2 and intercept 10: value = raw * 2 + 10.
        let mut raw = small_header(dims, 4, 16);
        raw.scl_slope = 2.0;
        raw.scl_inter = 10.0;
        let data: Vec<u8> = (0..12i16).flat_map(|v| v.to_le_bytes()).collect();
        let p = tmp.path().join("scaled.nii");
        write_nifti_bytes(&p, &raw, &[], &data).unwrap();
        let (v, _) = read_volume(&p).unwrap();
        assert_eq!(
            v.data,
            (0..12).map(|x| (x * 2 + 10) as f32).collect::<Vec<_>>()
        );

        // vox_offset beyond 352 with padding and no extension flag: data read at the offset.
        let mut raw = small_header(dims, 2, 8);
        raw.vox_offset = 352.0 + 64.0;
        let p = tmp.path().join("padded.nii.gz");
        write_nifti_bytes(&p, &raw, &[0xAB; 64], &labels).unwrap();
        let (back, _, h) = read_labels(&p, LabelConvention::Brats2018).unwrap();
        assert_eq!(back, labels);
        assert_eq!(h.vox_offset(), 416.0);

        // A real extension (ecode 6 = comment, esize 32) before the data.
        let mut ext = Vec::new();
        ext.extend_from_slice(&32i32.to_le_bytes());
        ext.extend_from_slice(&6i32.to_le_bytes());
        ext.extend_from_slice(&[b'x'; 24]);
        let mut raw = small_header(dims, 2, 8);
        raw.vox_offset = 352.0 + 32.0;
        let p = tmp.path().join("ext.nii");
        write_nifti_bytes(&p, &raw, &ext, &labels).unwrap();
        let (back, _, h) = read_labels(&p, LabelConvention::Brats2018).unwrap();
        assert_eq!(back, labels);
        assert_eq!(h.extensions(), &[ExtensionInfo { code: 6, size: 32 }]);

        // Big-endian int16 file (header and data), built by byte-swapping.
        let raw = small_header(dims, 4, 16);
        let le = header_bytes(&raw);
        let mut be = Vec::new();
        let swap = |b: &mut Vec<u8>, s: &[u8]| b.extend(s.iter().rev());
        // Re-encode field by field: integer and float fields are swapped, byte arrays kept.
        let layout: &[(usize, usize)] = &[(0, 4), (4, 28), (32, 4), (36, 2), (38, 1), (39, 1)];
        for &(o, n) in layout {
            if n == 28 || n == 1 {
                be.extend_from_slice(&le[o..o + n]);
            } else {
                swap(&mut be, &le[o..o + n]);
            }
        }
        // dim (8 × i16), intent_p (3 × f32), 4 × i16, pixdim (8 × f32), 3 × f32, i16.
        let mut o = 40;
        for n in std::iter::repeat_n(2, 8)
            .chain(std::iter::repeat_n(4, 3))
            .chain(std::iter::repeat_n(2, 4))
            .chain(std::iter::repeat_n(4, 11))
            .chain([2])
        {
            swap(&mut be, &le[o..o + n]);
            o += n;
        }
        be.extend_from_slice(&le[o..o + 2]); // slice_code, xyzt_units
        o += 2;
        for _ in 0..6 {
            swap(&mut be, &le[o..o + 4]); // cal_max .. glmin
            o += 4;
        }
        be.extend_from_slice(&le[o..o + 104]); // descrip, aux_file
        o += 104;
        swap(&mut be, &le[o..o + 2]);
        swap(&mut be, &le[o + 2..o + 4]);
        o += 4;
        for _ in 0..18 {
            swap(&mut be, &le[o..o + 4]);
            o += 4;
        }
        be.extend_from_slice(&le[o..348]);
        be.extend_from_slice(&[0; 4]);
        for v in 0..12i16 {
            be.extend_from_slice(&(v - 6).to_be_bytes());
        }
        let p = tmp.path().join("be.nii");
        std::fs::write(&p, &be).unwrap();
        let (v, h) = read_volume(&p).unwrap();
        assert_eq!(h.dims(), dims);
        assert_eq!(h.nifti().endianness, nifti::Endianness::Big);
        assert_eq!(v.data, (0..12).map(|x| (x - 6) as f32).collect::<Vec<_>>());
    }

    #[test]
    fn bad_files_are_clear_errors_naming_the_file() {
        let tmp = TempDir::new("bad");
        let dims = [2, 2, 2];

        // NaN voxel in a float32 image.
        let raw = small_header(dims, 16, 32);
        let mut vals = [1.0f32; 8];
        vals[5] = f32::NAN;
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = tmp.path().join("nan_t1.nii.gz");
        write_nifti_bytes(&p, &raw, &[], &data).unwrap();
        let msg = read_volume(&p).unwrap_err().to_string();
        assert!(
            msg.contains("nan_t1.nii.gz") && msg.contains("NaN"),
            "{msg}"
        );
        assert!(msg.contains("(1, 0, 1)"), "{msg}");

        // Unknown label value.
        let raw = small_header(dims, 2, 8);
        let p = tmp.path().join("bad_seg.nii.gz");
        write_nifti_bytes(&p, &raw, &[], &[0, 1, 2, 4, 3, 0, 0, 0]).unwrap();
        let msg = read_labels(&p, LabelConvention::Brats2018)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("bad_seg.nii.gz") && msg.contains("value 3"),
            "{msg}"
        );
        // Non-integer label in a float file.
        let raw = small_header(dims, 16, 32);
        let data: Vec<u8> = [0.0f32, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let p = tmp.path().join("frac_seg.nii");
        write_nifti_bytes(&p, &raw, &[], &data).unwrap();
        let msg = read_labels(&p, LabelConvention::Brats2018)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("frac_seg.nii") && msg.contains("1.5"), "{msg}");

        // Truncated .nii.gz (the real flair cut in half).
        let full = std::fs::read(case_file("flair")).unwrap();
        let p = tmp.path().join("cut_flair.nii.gz");
        std::fs::write(&p, &full[..full.len() / 2]).unwrap();
        let err = read_volume(&p).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, VolumeError::Gzip { .. }), "{msg}");
        assert!(
            msg.contains("cut_flair.nii.gz") && msg.contains("truncated"),
            "{msg}"
        );

        // Truncated uncompressed data.
        let raw = small_header(dims, 4, 16);
        let p = tmp.path().join("short.nii");
        write_nifti_bytes(&p, &raw, &[], &[0u8; 10]).unwrap();
        let msg = read_volume(&p).unwrap_err().to_string();
        assert!(
            msg.contains("short.nii") && msg.contains("truncated"),
            "{msg}"
        );

        // Not a NIfTI file at all, and a missing file.
        let p = tmp.path().join("junk.nii");
        std::fs::write(&p, vec![7u8; 400]).unwrap();
        let msg = read_volume(&p).unwrap_err().to_string();
        assert!(msg.contains("junk.nii"), "{msg}");
        let p = tmp.path().join("absent.nii.gz");
        let err = read_volume(&p).unwrap_err();
        assert!(matches!(err, VolumeError::MissingFile { .. }));
        assert!(err.to_string().contains("absent.nii.gz"));

        // Unsupported data type (complex64) and a real 4-D series.
        let raw = small_header(dims, 32, 64);
        let p = tmp.path().join("complex.nii");
        write_nifti_bytes(&p, &raw, &[], &[0u8; 64]).unwrap();
        let msg = read_volume(&p).unwrap_err().to_string();
        assert!(
            msg.contains("complex.nii") && msg.contains("data type code 32"),
            "{msg}"
        );
        let mut raw = small_header(dims, 2, 8);
        raw.dim = [4, 2, 2, 2, 3, 1, 1, 1];
        let p = tmp.path().join("series.nii");
        write_nifti_bytes(&p, &raw, &[], &[0u8; 24]).unwrap();
        let msg = read_volume(&p).unwrap_err().to_string();
        assert!(msg.contains("series.nii") && msg.contains("3-D"), "{msg}");
    }
}
