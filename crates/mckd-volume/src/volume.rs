//! In-memory 3-D volumes and the NIfTI header kept alongside them.
//!
//! # Axis order
//! A [`Volume`] stores voxels in NIfTI order, `i` (x) fastest:
//! `index = i + dims[0] * (j + dims[1] * k)`, with `dims = [di, dj, dk]` = NIfTI `dim[1..=3]`
//! (nibabel's `img.shape`). Read as a row-major (C-order) tensor the same buffer has shape
//! `[dk, dj, di]` = (D, H, W): this is the shape to give `Tensor::from_data` without copying.
//! Every `[usize; 3]` size in this crate (dims, crop sizes, tiles, voxel indices) is in
//! (i, j, k) order.

use std::path::{Path, PathBuf};

use crate::error::{Result, VolumeError};

/// Number of voxels of a grid (`di * dj * dk`).
pub fn voxel_count(dims: [usize; 3]) -> usize {
    dims[0] * dims[1] * dims[2]
}

/// Linear index of voxel (i, j, k) in a buffer with `dims` (NIfTI order, `i` fastest).
#[inline]
pub fn linear_index(dims: [usize; 3], i: usize, j: usize, k: usize) -> usize {
    i + dims[0] * (j + dims[1] * k)
}

/// Voxel (i, j, k) of linear index `idx` in a buffer with `dims` (inverse of
/// [`linear_index`]).
#[inline]
pub fn ijk_of(dims: [usize; 3], idx: usize) -> [usize; 3] {
    let i = idx % dims[0];
    let rest = idx / dims[0];
    [i, rest % dims[1], rest / dims[1]]
}

/// A single-channel 3-D image of `f32` voxels.
///
/// # Shapes
/// `data.len() == dims[0] * dims[1] * dims[2]`, `i` fastest (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Grid size (i, j, k) = NIfTI `dim[1..=3]`.
    pub dims: [usize; 3],
    /// Voxels, `index = i + dims[0] * (j + dims[1] * k)`.
    pub data: Vec<f32>,
}

impl Volume {
    /// Wraps `data`, checking that its length matches `dims`.
    ///
    /// # Shapes
    /// `data: [dk, dj, di]` flattened (i fastest).
    pub fn new(dims: [usize; 3], data: Vec<f32>) -> Result<Self> {
        if data.len() != voxel_count(dims) {
            return Err(VolumeError::Invalid(format!(
                "volume data has {} voxels but dims {:?} need {}",
                data.len(),
                dims,
                voxel_count(dims)
            )));
        }
        Ok(Self { dims, data })
    }

    /// A volume of zeros.
    ///
    /// # Shapes
    /// `data: [dk, dj, di]` flattened (i fastest).
    pub fn zeros(dims: [usize; 3]) -> Self {
        Self {
            dims,
            data: vec![0.0; voxel_count(dims)],
        }
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the volume has no voxels.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Linear index of (i, j, k).
    #[inline]
    pub fn index(&self, i: usize, j: usize, k: usize) -> usize {
        linear_index(self.dims, i, j, k)
    }

    /// Voxel (i, j, k).
    ///
    /// # Panics
    /// If the index is out of bounds (an internal contract, like slice indexing).
    #[inline]
    pub fn get(&self, i: usize, j: usize, k: usize) -> f32 {
        self.data[self.index(i, j, k)]
    }
}

/// Information about one NIfTI header extension (the bytes are not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionInfo {
    /// `ecode` (e.g. 4 = AFNI XML).
    pub code: i32,
    /// `esize`: bytes on disk, including the 8-byte size/code prefix.
    pub size: usize,
}

/// The NIfTI-1 header of a file, kept so that outputs can be written on the same grid
/// (same dims, pixdim, qform, sform and codes) as their input.
///
/// Built by the readers in [`crate::nifti_io`] or by [`Header::synthetic`].
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    raw: nifti::NiftiHeader,
    extensions: Vec<ExtensionInfo>,
    source: Option<PathBuf>,
}

/// A 4×4 affine (row-major, last row `[0, 0, 0, 1]`) from voxel (i, j, k) to world
/// coordinates in millimetres.
pub type Affine = [[f64; 4]; 4];

impl Header {
    pub(crate) fn from_parts(
        raw: nifti::NiftiHeader,
        extensions: Vec<ExtensionInfo>,
        source: Option<PathBuf>,
    ) -> Self {
        Self {
            raw,
            extensions,
            source,
        }
    }

    /// A header for a synthetic volume: `dims`, voxel `spacing` (mm), a diagonal affine
    /// `diag(spacing)` with zero origin, qform and sform codes 1 (scanner), units mm,
    /// little-endian, `float32` (the writers set the data type they write).
    pub fn synthetic(dims: [usize; 3], spacing: [f32; 3]) -> Result<Self> {
        let mut raw = nifti::NiftiHeader::default();
        let mut dim = [1u16; 8];
        dim[0] = 3;
        for (d, &n) in dims.iter().enumerate() {
            dim[d + 1] = u16::try_from(n)
                .ok()
                .filter(|&n| n > 0 && n <= i16::MAX as u16)
                .ok_or_else(|| {
                    VolumeError::Invalid(format!("dims {dims:?} do not fit a NIfTI-1 header"))
                })?;
        }
        raw.dim = dim;
        raw.pixdim = [1.0, spacing[0], spacing[1], spacing[2], 1.0, 1.0, 1.0, 1.0];
        raw.datatype = 16;
        raw.bitpix = 32;
        raw.scl_slope = 1.0;
        raw.scl_inter = 0.0;
        raw.xyzt_units = 2; // NIFTI_UNITS_MM
        raw.qform_code = 1;
        raw.sform_code = 1;
        raw.quatern_b = 0.0;
        raw.quatern_c = 0.0;
        raw.quatern_d = 0.0;
        raw.srow_x = [spacing[0], 0.0, 0.0, 0.0];
        raw.srow_y = [0.0, spacing[1], 0.0, 0.0];
        raw.srow_z = [0.0, 0.0, spacing[2], 0.0];
        raw.magic = *b"n+1\0";
        raw.endianness = nifti::Endianness::Little;
        let mut descrip = b"mckd-volume synthetic".to_vec();
        descrip.resize(80, 0);
        raw.descrip = descrip;
        Ok(Self::from_parts(raw, Vec::new(), None))
    }

    /// The full parsed NIfTI-1 header.
    pub fn nifti(&self) -> &nifti::NiftiHeader {
        &self.raw
    }

    /// File this header was read from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Grid size (i, j, k) = `dim[1..=3]` (missing dimensions are 1).
    pub fn dims(&self) -> [usize; 3] {
        let n = self.raw.dim[0].clamp(1, 7) as usize;
        let mut out = [1usize; 3];
        for (d, o) in out.iter_mut().enumerate() {
            if d < n {
                *o = self.raw.dim[d + 1] as usize;
            }
        }
        out
    }

    /// Voxel spacing (|pixdim[1..=3]|), in the units of `xyzt_units` (mm for BraTS).
    pub fn spacing(&self) -> [f32; 3] {
        [
            self.raw.pixdim[1].abs(),
            self.raw.pixdim[2].abs(),
            self.raw.pixdim[3].abs(),
        ]
    }

    /// NIfTI data type code of the file (2 uint8, 4 int16, 16 float32, ...).
    pub fn datatype(&self) -> i16 {
        self.raw.datatype
    }

    /// Byte offset of the voxel data in the (decompressed) file.
    pub fn vox_offset(&self) -> f32 {
        self.raw.vox_offset
    }

    /// `scl_slope` as stored (0 means "no scaling").
    pub fn scl_slope(&self) -> f32 {
        self.raw.scl_slope
    }

    /// `scl_inter` as stored.
    pub fn scl_inter(&self) -> f32 {
        self.raw.scl_inter
    }

    /// `qform_code` (0 unknown, 1 scanner, 2 aligned, ...).
    pub fn qform_code(&self) -> i16 {
        self.raw.qform_code
    }

    /// `sform_code` (0 unknown, 1 scanner, 2 aligned, ...).
    pub fn sform_code(&self) -> i16 {
        self.raw.sform_code
    }

    /// Header extensions of the file (codes and sizes).
    pub fn extensions(&self) -> &[ExtensionInfo] {
        &self.extensions
    }

    /// The sform affine (`srow_x/y/z`), if `sform_code > 0`.
    pub fn sform(&self) -> Option<Affine> {
        (self.raw.sform_code > 0).then(|| {
            let r = |row: [f32; 4]| row.map(f64::from);
            [
                r(self.raw.srow_x),
                r(self.raw.srow_y),
                r(self.raw.srow_z),
                [0.0, 0.0, 0.0, 1.0],
            ]
        })
    }

    /// The qform affine (quaternion, pixdim and offsets, NIfTI-1 method 2), if
    /// `qform_code > 0`.
    pub fn qform(&self) -> Option<Affine> {
        if self.raw.qform_code <= 0 {
            return None;
        }
        let h = &self.raw;
        let (b, c, d) = (
            f64::from(h.quatern_b),
            f64::from(h.quatern_c),
            f64::from(h.quatern_d),
        );
        let a2 = 1.0 - (b * b + c * c + d * d);
        let (a, b, c, d) = if a2 < 1e-7 {
            // 180° rotation: a = 0, renormalise (b, c, d) as nifti1_io does.
            let n = (b * b + c * c + d * d).sqrt();
            (0.0, b / n, c / n, d / n)
        } else {
            (a2.sqrt(), b, c, d)
        };
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let (dx, dy, dz) = (
            f64::from(h.pixdim[1]),
            f64::from(h.pixdim[2]),
            qfac * f64::from(h.pixdim[3]),
        );
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let t = [
            f64::from(h.quatern_x),
            f64::from(h.quatern_y),
            f64::from(h.quatern_z),
        ];
        let mut m = [[0.0; 4]; 4];
        for row in 0..3 {
            m[row] = [r[row][0] * dx, r[row][1] * dy, r[row][2] * dz, t[row]];
        }
        m[3] = [0.0, 0.0, 0.0, 1.0];
        Some(m)
    }

    /// The voxel-to-world affine as nibabel's `img.affine`: the sform if `sform_code > 0`,
    /// else the qform if `qform_code > 0`, else `diag(pixdim[1..=3])`.
    pub fn affine(&self) -> Affine {
        self.sform().or_else(|| self.qform()).unwrap_or_else(|| {
            let s = self.spacing().map(f64::from);
            [
                [s[0], 0.0, 0.0, 0.0],
                [0.0, s[1], 0.0, 0.0],
                [0.0, 0.0, s[2], 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ]
        })
    }

    /// The raw header, for crate-internal writers.
    pub(crate) fn raw(&self) -> &nifti::NiftiHeader {
        &self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_index_round_trips_and_is_i_fastest() {
        let dims = [4, 3, 2];
        assert_eq!(linear_index(dims, 1, 0, 0), 1);
        assert_eq!(linear_index(dims, 0, 1, 0), 4);
        assert_eq!(linear_index(dims, 0, 0, 1), 12);
        for idx in 0..voxel_count(dims) {
            let [i, j, k] = ijk_of(dims, idx);
            assert_eq!(linear_index(dims, i, j, k), idx);
        }
        assert!(Volume::new(dims, vec![0.0; 5]).is_err());
    }

    #[test]
    fn synthetic_header_affine_is_diagonal_spacing() {
        let h = Header::synthetic([5, 6, 7], [1.0, 2.0, 3.0]).unwrap();
        assert_eq!(h.dims(), [5, 6, 7]);
        let want = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 2.0, 0.0, 0.0],
            [0.0, 0.0, 3.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(h.sform().unwrap(), want);
        assert_eq!(h.qform().unwrap(), want);
        assert!(Header::synthetic([0, 1, 1], [1.0; 3]).is_err());
    }
}
