//! Error type of the volume layer.
//!
//! Every variant that is about a file carries its path, so a message such as
//! `unknown label value 3 in /data/Brats18_x/Brats18_x_seg.nii.gz (BraTS 2018 labels are
//! 0, 1, 2, 4)` is enough to find and fix the input. Library code never panics on user input;
//! it returns one of these.

use std::path::PathBuf;

/// Errors of `mckd-volume`: reading and writing NIfTI files, case folders, splits and
/// metric summaries, and inconsistent array arguments.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// An I/O operation on `path` failed (other than "not found", see
    /// [`VolumeError::MissingFile`]). The message does not repeat the OS error: it is the
    /// [`source`](std::error::Error::source), which chain printers (`{:#}` of `anyhow`,
    /// [`error_chain`]) append once.
    #[error("I/O error on {}", path.display())]
    Io {
        /// File or folder the operation was about.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A required file does not exist.
    #[error("missing {what}: {}", path.display())]
    MissingFile {
        /// Path that was looked for.
        path: PathBuf,
        /// What the file is (e.g. `"t1ce modality file"`, `"file"`).
        what: String,
    },
    /// A folder (or another non-file) is where a file is expected.
    #[error("{} is a directory, expected {expected}", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
        /// What was expected there (e.g. `"a .nii.gz or .nii file"`).
        expected: String,
    },
    /// A crop is larger than the volume it is cut from (see [`crate::crop`] for the policy).
    #[error(
        "crop {crop:?} (i,j,k) does not fit the volume {volume:?}{}: axis {axis} needs {} \
         voxels but the volume has {}",
        what.as_ref().map(|w| format!(" of {w}")).unwrap_or_default(),
        crop[*axis], volume[*axis]
    )]
    CropTooLarge {
        /// Crop size (i, j, k).
        crop: [usize; 3],
        /// Volume dims (i, j, k).
        volume: [usize; 3],
        /// First axis (0 = i, 1 = j, 2 = k) where the crop is larger.
        axis: usize,
        /// What the volume is (e.g. a case id), if known.
        what: Option<String>,
    },
    /// Checking a data set up front found problems; the report lists every one.
    #[error("{0}")]
    DataCheck(Box<crate::check::DataReport>),
    /// The gzip stream of `path` ends early or is corrupt.
    #[error("truncated or corrupt gzip stream in {}: {problem}", path.display())]
    Gzip {
        /// File being decompressed.
        path: PathBuf,
        /// What the decoder reported.
        problem: String,
    },
    /// `path` has fewer bytes than its header requires.
    #[error(
        "truncated NIfTI file {}: the header needs {expected} bytes (voxel data at offset \
         {vox_offset}), the file has {actual}",
        path.display()
    )]
    Truncated {
        /// File that is too short.
        path: PathBuf,
        /// Bytes required by `vox_offset` + dims × bytes per voxel.
        expected: usize,
        /// Bytes found (after decompression).
        actual: usize,
        /// Offset of the voxel data declared in the header.
        vox_offset: usize,
    },
    /// The header of `path` is not a valid single-file NIfTI-1 header, or declares something
    /// this reader does not support (data type, dimensionality, offsets).
    #[error("invalid NIfTI header in {}: {problem}", path.display())]
    Header {
        /// File whose header is wrong.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// An image voxel is NaN or infinite.
    #[error(
        "non-finite voxel value {value} at (i,j,k) = ({}, {}, {}) in {}",
        ijk[0], ijk[1], ijk[2], path.display()
    )]
    NonFinite {
        /// Image file.
        path: PathBuf,
        /// Voxel index in NIfTI (i, j, k) order.
        ijk: [usize; 3],
        /// The offending value.
        value: f64,
    },
    /// A segmentation voxel holds a value that the label convention does not know.
    #[error(
        "unknown label value {value} at (i,j,k) = ({}, {}, {}) in {} ({convention} labels \
         are {allowed})",
        ijk[0], ijk[1], ijk[2], path.display()
    )]
    UnknownLabel {
        /// Segmentation file.
        path: PathBuf,
        /// The offending value (as stored, after scaling).
        value: f64,
        /// Voxel index in NIfTI (i, j, k) order.
        ijk: [usize; 3],
        /// Name of the convention used to read the file.
        convention: String,
        /// The allowed values, e.g. `"0, 1, 2, 4"`.
        allowed: String,
    },
    /// Two files of one case have different grids.
    #[error(
        "shape mismatch: {} is {:?} but {} is {:?}",
        path_a.display(), dims_a, path_b.display(), dims_b
    )]
    ShapeMismatch {
        /// First file.
        path_a: PathBuf,
        /// Its dims (i, j, k).
        dims_a: [usize; 3],
        /// Second file.
        path_b: PathBuf,
        /// Its dims (i, j, k).
        dims_b: [usize; 3],
    },
    /// Two files of one case have the same dims but different spacings or affines (beyond
    /// the tolerances of [`crate::check`]).
    #[error(
        "grid mismatch: {} is not on the grid of {}: {problem}",
        path_b.display(), path_a.display()
    )]
    GridMismatch {
        /// Reference file (the Flair).
        path_a: PathBuf,
        /// File that differs.
        path_b: PathBuf,
        /// What differs and by how much.
        problem: String,
    },
    /// A value cannot be stored in the requested NIfTI data type.
    #[error("cannot write {}: {problem}", path.display())]
    Unrepresentable {
        /// Output file.
        path: PathBuf,
        /// What does not fit.
        problem: String,
    },
    /// A data folder does not have the expected case layout.
    #[error("wrong case folder layout at {}: {problem}", dir.display())]
    Layout {
        /// Folder that was inspected.
        dir: PathBuf,
        /// What was expected and what was found.
        problem: String,
    },
    /// A JSON file could not be written or parsed (the parser's message is the source, see
    /// [`VolumeError::Io`]).
    #[error("JSON error in {}", path.display())]
    Json {
        /// JSON file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A `splits.json` (or the request to make one) is inconsistent.
    #[error("invalid splits{}: {problem}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Splits {
        /// File, when the splits come from one.
        path: Option<PathBuf>,
        /// What is wrong.
        problem: String,
    },
    /// Array arguments do not agree with each other (lengths, dims, channel counts) or a
    /// configuration value is out of range. Not about a file.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// The message of `error` followed by those of its sources, joined by `": "` (what `anyhow`
/// prints for `{:#}`). Every source is printed once: no variant of [`VolumeError`] repeats
/// its source in its own message.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Result type of `mckd-volume`.
pub type Result<T> = std::result::Result<T, VolumeError>;

impl VolumeError {
    /// Wraps an I/O error on `path`, turning "not found" into [`VolumeError::MissingFile`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            VolumeError::MissingFile {
                path,
                what: "file".to_string(),
            }
        } else {
            VolumeError::Io { path, source }
        }
    }
}
