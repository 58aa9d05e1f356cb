//! Cases prepared for the `--spacing MM` pipeline, the way back for predictions, and an
//! on-disk cache of prepared cases.
//!
//! # Preparing a case ([`prepare_case`])
//! 1. each modality is read and normalised on its own grid, exactly as [`crate::brats::load_case`] does
//!    ([`normalise_with`], [`ClipRule::Scaled`], which is the reference rule on 240×240×155
//!    volumes);
//! 2. the case is cropped to the bounding box of the voxels that are non-zero in any
//!    normalised modality or labelled in the segmentation ([`nonzero_bbox`]): every voxel
//!    outside is 0 in every modality, so the crop loses nothing; its offset is kept;
//! 3. modalities are resampled linearly to the target spacing, labels region by region
//!    ([`crate::resample::resample_labels`]) — see [`crate::resample`] for the grid convention. The region
//!    fractions behind the labels are kept as soft training targets
//!    ([`ResampledCase::region_fractions`]): a coarse voxel half covered by a region says
//!    so, which a 0/1 label cannot, and the prediction path back to 1 mm (linear, > 0.5)
//!    recovers the 1 mm regions better from them than from the hard labels.
//!
//! Normalising **before** resampling keeps the reference statistics: the clip rule counts
//! voxels of the 1 mm histogram (50 voxels of 1 mm³), and "background" is the voxels equal to
//! the corner voxel. After interpolation the values are no longer integers (the histogram
//! changes) and the brain border blends into the background, so those partial voxels would
//! count as foreground with near-zero intensities and bias the mean and standard deviation.
//! Normalising first gives, at spacing 1, exactly the volumes of [`crate::brats::load_case`].
//!
//! # The way back ([`restore_probabilities`], [`restore_labels`])
//! The network's per-region probabilities (ET, TC, WT) on the target grid are resampled
//! linearly to the 1 mm crop, thresholded (strictly above 0.5, as
//! [`crate::brats::probs_to_labels`]), turned into labels with ET winning
//! ([`regions_to_labels`]) and put back at their offset in the original grid (zeros outside
//! the box), ready for [`crate::nifti_io::write_labels_like`] with [`ResampledCase::header`]
//! (the Flair header: original dims and affine). Evaluation is then on the original labels.
//!
//! # Cache ([`PreparedCache`])
//! Reading a real case (five gzip NIfTI files) and resampling it takes seconds; a prepared
//! case is stored once per machine in a binary file per case under a cache folder
//! ([`PreparedCache::default_dir`]), named by case id, spacing and a fingerprint of the
//! source files (names, sizes and modification times), the label convention and the
//! preparation rules. Files are written to a temporary name and renamed (atomic), carry an
//! xxh3 checksum, and are recomputed when anything does not match.

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

use crate::brats::{Case, LabelConvention, LoadedCase, Region, check_same_grid, regions_to_labels};
use crate::error::{Result, VolumeError};
use crate::nifti_io::{header_bytes, read_labels, read_volume};
use crate::preprocess::{ClipRule, normalise_with};
use crate::resample::{
    BBox, bbox_where, crop_volume, labels_from_fractions, nonzero_bbox, rebox, resample_buffer,
    resample_channels, resample_linear, resample_region_fractions, target_dims, uncrop,
};
use crate::volume::{ExtensionInfo, Header, Volume, voxel_count};

/// Version of the preparation rules and of the cache file layout; part of every cache key.
pub const PREPARED_FORMAT: u32 = 1;

/// Where a prepared case sits in its original grid and on which grid it was resampled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CaseGrid {
    /// Dims (i, j, k) of the original files.
    pub original_dims: [usize; 3],
    /// Spacing (mm) of the original files.
    pub original_spacing: [f32; 3],
    /// The brain box in the original grid: offset `bbox.lo`, size `bbox.dims()`.
    pub bbox: BBox,
    /// Requested spacing (mm).
    pub target_spacing: [f32; 3],
    /// Dims (i, j, k) of the resampled crop.
    pub target_dims: [usize; 3],
}

impl CaseGrid {
    /// Dims of the crop on the original grid.
    pub fn crop_dims(&self) -> [usize; 3] {
        self.bbox.dims()
    }

    /// Spacing (mm) of the resampled grid: the crop's extent over `target_dims` (within half
    /// a voxel over the crop of [`Self::target_spacing`]; see [`crate::resample`]).
    pub fn spacing(&self) -> [f32; 3] {
        let c = self.crop_dims();
        [0, 1, 2].map(|a| {
            (c[a] as f64 * f64::from(self.original_spacing[a]) / self.target_dims[a] as f64) as f32
        })
    }

    /// Whether the target grid is the crop itself (no resampling).
    pub fn is_identity(&self) -> bool {
        self.target_dims == self.crop_dims()
    }
}

/// A case cropped to the brain, normalised and resampled to the target spacing.
#[derive(Debug, Clone, PartialEq)]
pub struct ResampledCase {
    /// Case id.
    pub id: String,
    /// Normalised modalities on the target grid, in [`crate::brats::MODALITIES`] order.
    ///
    /// # Shapes
    /// each `grid.target_dims`.
    pub modalities: [Volume; 4],
    /// Labels on the target grid (in the convention the case was prepared with), if the case
    /// has a segmentation.
    ///
    /// # Shapes
    /// `[tk, tj, ti]` flattened, `grid.target_dims = [ti, tj, tk]`.
    pub labels: Option<Vec<u8>>,
    /// Fraction of each target voxel covered by each region (ET, TC, WT): the soft version
    /// of `labels` (which are these fractions `>= 0.5`, ET winning). `None` when the case
    /// has no segmentation or was not resampled (the grid is the crop: the fractions would
    /// be the 0/1 masks of `labels`; see [`Self::region_targets`]).
    ///
    /// # Shapes
    /// `[3, tk, tj, ti]` flattened.
    pub region_fractions: Option<Vec<f32>>,
    /// Label convention of `labels`.
    pub convention: LabelConvention,
    /// Original grid, brain box and target grid.
    pub grid: CaseGrid,
    /// Header of the Flair file (original grid): write restored predictions with it.
    pub header: Header,
}

impl ResampledCase {
    /// Dims of the resampled volumes (i, j, k).
    pub fn dims(&self) -> [usize; 3] {
        self.grid.target_dims
    }

    /// Soft training targets (ET, TC, WT): [`Self::region_fractions`] when the case was
    /// resampled, else the 0/1 region masks of the labels; `None` without segmentation.
    ///
    /// # Shapes
    /// `[3, tk, tj, ti]` flattened.
    pub fn region_targets(&self) -> Option<std::borrow::Cow<'_, [f32]>> {
        match (&self.region_fractions, &self.labels) {
            (Some(f), _) => Some(std::borrow::Cow::Borrowed(f)),
            (None, Some(l)) => Some(std::borrow::Cow::Owned(crate::brats::labels_to_regions(
                l,
                self.convention,
            ))),
            (None, None) => None,
        }
    }

    /// The four modalities stacked channel-first.
    ///
    /// # Shapes
    /// `[4, tk, tj, ti]` flattened.
    pub fn stacked(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(4 * voxel_count(self.dims()));
        for m in &self.modalities {
            out.extend_from_slice(&m.data);
        }
        out
    }
}

fn check_spacing(spacing: f32) -> Result<[f32; 3]> {
    if spacing.is_finite() && spacing > 0.0 {
        Ok([spacing; 3])
    } else {
        Err(VolumeError::Invalid(format!(
            "target spacing {spacing} mm must be finite and positive"
        )))
    }
}

/// Crops (already normalised) and resamples: the common end of [`prepare_case`] and
/// [`prepare_loaded`].
#[allow(clippy::too_many_arguments)]
fn finish(
    id: &str,
    crops: [Volume; 4],
    labels: Option<Vec<u8>>,
    original_dims: [usize; 3],
    original_spacing: [f32; 3],
    bbox: BBox,
    target: [f32; 3],
    convention: LabelConvention,
    header: Header,
) -> Result<ResampledCase> {
    let crop_dims = bbox.dims();
    let tdims = target_dims(crop_dims, original_spacing, target)?;
    let mut modalities = Vec::with_capacity(4);
    for v in crops {
        modalities.push(resample_linear(&v, tdims)?);
    }
    let (labels, region_fractions) = match labels {
        Some(l) if tdims != crop_dims => {
            let fractions = resample_region_fractions(&l, crop_dims, tdims, convention)?;
            (
                Some(labels_from_fractions(&fractions, convention)?),
                Some(fractions),
            )
        }
        other => (other, None),
    };
    Ok(ResampledCase {
        id: id.to_string(),
        modalities: modalities.try_into().expect("four modalities"),
        labels,
        region_fractions,
        convention,
        grid: CaseGrid {
            original_dims,
            original_spacing,
            bbox,
            target_spacing: target,
            target_dims: tdims,
        },
        header,
    })
}

fn empty_case(id: &str) -> VolumeError {
    VolumeError::Invalid(format!(
        "case {id}: every voxel of every modality is 0 (after normalisation) and nothing is \
         labelled: there is no brain to crop"
    ))
}

/// Reads, normalises, crops and resamples a case to `spacing` mm (isotropic; see the module
/// docs). Files that disagree on their grid are an error naming both
/// ([`VolumeError::ShapeMismatch`], [`VolumeError::GridMismatch`]); so is a case without
/// any non-zero voxel. Memory: one modality at a time per thread is held at full size (read,
/// normalised, then cut to its own non-zero box).
///
/// # Shapes
/// Every returned volume has `grid.target_dims`.
pub fn prepare_case(
    case: &Case,
    spacing: f32,
    convention: LabelConvention,
) -> Result<ResampledCase> {
    let target = check_spacing(spacing)?;
    type Part = (Option<BBox>, Vec<f32>, Header, [usize; 3]);
    let parts: Vec<Result<Part>> = case
        .modalities
        .par_iter()
        .map(|p| {
            let (raw, h) = read_volume(p)?;
            let norm = normalise_with(&raw, ClipRule::Scaled);
            drop(raw);
            let dims = norm.dims;
            let bbox = bbox_where(dims, |i| norm.data[i] != 0.0);
            let data = match &bbox {
                Some(b) => rebox(&norm.data, &BBox::full(dims), b)?,
                None => Vec::new(),
            };
            Ok((bbox, data, h, dims))
        })
        .collect();
    let parts: Vec<Part> = parts.into_iter().collect::<Result<_>>()?;
    let (dims, header) = (parts[0].3, parts[0].2.clone());
    for (m, part) in parts.iter().enumerate().skip(1) {
        if part.3 != dims {
            return Err(VolumeError::ShapeMismatch {
                path_a: case.modalities[0].clone(),
                dims_a: dims,
                path_b: case.modalities[m].clone(),
                dims_b: part.3,
            });
        }
        check_same_grid(&header, &case.modalities[0], &part.2, &case.modalities[m])?;
    }
    let labels = match &case.seg {
        Some(p) => {
            let (labels, sdims, sh) = read_labels(p, convention)?;
            if sdims != dims {
                return Err(VolumeError::ShapeMismatch {
                    path_a: case.modalities[0].clone(),
                    dims_a: dims,
                    path_b: p.clone(),
                    dims_b: sdims,
                });
            }
            check_same_grid(&header, &case.modalities[0], &sh, p)?;
            Some(labels)
        }
        None => None,
    };
    let label_box = labels
        .as_ref()
        .and_then(|l| bbox_where(dims, |i| l[i] != 0));
    let bbox = parts
        .iter()
        .filter_map(|p| p.0)
        .chain(label_box)
        .reduce(|a, b| a.union(&b))
        .ok_or_else(|| empty_case(&case.id))?;
    let crops: Vec<Volume> = parts
        .into_iter()
        .map(|(own, data, _, _)| {
            Ok(Volume {
                dims: bbox.dims(),
                data: match own {
                    Some(own) => rebox(&data, &own, &bbox)?,
                    None => vec![0.0; voxel_count(bbox.dims())],
                },
            })
        })
        .collect::<Result<_>>()?;
    let labels = labels
        .map(|l| rebox(&l, &BBox::full(dims), &bbox))
        .transpose()?;
    finish(
        &case.id,
        crops.try_into().expect("four modalities"),
        labels,
        dims,
        header.spacing(),
        bbox,
        target,
        convention,
        header,
    )
}

/// [`prepare_case`] for a case already in memory (its modalities normalised, as
/// [`crate::brats::load_case`] returns them; e.g. phantoms). Gives the same result as [`prepare_case`]
/// on the files `case` was loaded from.
///
/// # Shapes
/// Every returned volume has `grid.target_dims`.
pub fn prepare_loaded(
    case: &LoadedCase,
    spacing: f32,
    convention: LabelConvention,
) -> Result<ResampledCase> {
    let target = check_spacing(spacing)?;
    let bbox =
        nonzero_bbox(&case.modalities, case.seg.as_deref())?.ok_or_else(|| empty_case(&case.id))?;
    let crops: Vec<Volume> = case
        .modalities
        .iter()
        .map(|v| crop_volume(v, &bbox))
        .collect::<Result<_>>()?;
    let labels = case
        .seg
        .as_ref()
        .map(|l| rebox(l, &BBox::full(case.dims), &bbox))
        .transpose()?;
    finish(
        &case.id,
        crops.try_into().expect("four modalities"),
        labels,
        case.dims,
        case.spacing,
        bbox,
        target,
        convention,
        case.header.clone(),
    )
}

/// Probabilities on the target grid back on the 1 mm crop (linear, per channel).
///
/// # Shapes
/// `probs: [C, tk, tj, ti]` flattened (`grid.target_dims`) → `[C, ck, cj, ci]`
/// (`grid.crop_dims()`).
pub fn restore_probabilities(probs: &[f32], grid: &CaseGrid) -> Result<Vec<f32>> {
    resample_channels(probs, grid.target_dims, grid.crop_dims())
}

/// Label map on the original grid from region probabilities on the target grid: each region
/// (ET, TC, WT) resampled linearly to the 1 mm crop, on where it is strictly above
/// `threshold`, labels with ET winning ([`regions_to_labels`]), placed at the crop's offset
/// in the original grid with 0 outside. Write it with [`ResampledCase::header`].
///
/// # Shapes
/// `probs: [3, tk, tj, ti]` flattened (ET, TC, WT) → `[dk, dj, di]` of
/// `grid.original_dims`.
pub fn restore_labels(
    probs: &[f32],
    grid: &CaseGrid,
    threshold: f32,
    convention: LabelConvention,
) -> Result<Vec<u8>> {
    let n = voxel_count(grid.target_dims);
    if probs.len() != 3 * n {
        return Err(VolumeError::Invalid(format!(
            "restore_labels needs 3 region channels on {:?} ({} values), got {}",
            grid.target_dims,
            3 * n,
            probs.len()
        )));
    }
    let masks: Vec<Vec<bool>> = Region::ALL
        .iter()
        .map(|r| {
            let c = r.channel();
            resample_buffer(
                &probs[c * n..(c + 1) * n],
                grid.target_dims,
                grid.crop_dims(),
            )
            .map(|p| p.into_par_iter().map(|x| x > threshold).collect())
        })
        .collect::<Result<_>>()?;
    let crop = regions_to_labels(&masks[0], &masks[1], &masks[2], convention)?;
    uncrop(&crop, &grid.bbox, grid.original_dims)
}

/// What [`PreparedCache::load_or_prepare`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Read from the cache.
    Hit,
    /// Not in the cache: prepared and stored.
    Prepared,
    /// A cache file was there but unusable (the reason); prepared again and replaced.
    Replaced(String),
    /// Prepared, but the cache could not be written (the reason); the case is still usable.
    NotStored(String),
}

/// An on-disk cache of prepared cases (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedCache {
    dir: PathBuf,
}

/// First bytes of a cache file.
const MAGIC: &[u8; 8] = b"MCKDPREP";

/// File extension of cache files.
const EXTENSION: &str = "mckdprep";

/// Metadata stored as JSON in a cache file.
#[derive(Debug, Serialize, Deserialize)]
struct CacheMeta {
    id: String,
    fingerprint: String,
    convention: LabelConvention,
    grid: CaseGrid,
    has_labels: bool,
    has_fractions: bool,
    header_source: Option<PathBuf>,
    /// (code, size) of the Flair header's extensions.
    extensions: Vec<(i32, usize)>,
}

impl PreparedCache {
    /// A cache in `dir` (created when the first case is stored).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache folder of this machine: `$MCKD_CACHE_DIR` if set, else
    /// `$XDG_CACHE_HOME/mckd/prepared`, else `$HOME/.cache/mckd/prepared`, else
    /// `<temp>/mckd-cache/prepared`.
    pub fn default_dir() -> PathBuf {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(d) = env("MCKD_CACHE_DIR") {
            PathBuf::from(d)
        } else if let Some(x) = env("XDG_CACHE_HOME") {
            PathBuf::from(x).join("mckd").join("prepared")
        } else if let Some(h) = env("HOME") {
            PathBuf::from(h)
                .join(".cache")
                .join("mckd")
                .join("prepared")
        } else {
            std::env::temp_dir().join("mckd-cache").join("prepared")
        }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fingerprint of a case's source files and of the preparation settings.
    fn fingerprint(case: &Case, spacing: f32, convention: LabelConvention) -> Result<u64> {
        let mut h = Xxh3Default::new();
        h.update(b"mckd-prepared");
        h.update(&PREPARED_FORMAT.to_le_bytes());
        h.update(case.id.as_bytes());
        h.update(&spacing.to_bits().to_le_bytes());
        h.update(convention.name().as_bytes());
        h.update(b"normalise=ClipRule::Scaled;labels=regions>=0.5;images=linear");
        let files = case.modalities.iter().chain(case.seg.as_ref());
        for p in files {
            let meta = std::fs::metadata(p).map_err(|e| VolumeError::io(p, e))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            h.update(p.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b""));
            h.update(&meta.len().to_le_bytes());
            h.update(&mtime.to_le_bytes());
        }
        if case.seg.is_none() {
            h.update(b"no segmentation");
        }
        Ok(h.digest())
    }

    fn tag(spacing: f32) -> String {
        format!("{spacing}mm")
    }

    /// Path of the cache file of `case` at `spacing` with `convention` (it depends on the
    /// source files' sizes and modification times, so the files must exist).
    pub fn entry_path(
        &self,
        case: &Case,
        spacing: f32,
        convention: LabelConvention,
    ) -> Result<PathBuf> {
        let fp = Self::fingerprint(case, spacing, convention)?;
        Ok(self.dir.join(format!(
            "{}__{}__{fp:016x}.{EXTENSION}",
            case.id,
            Self::tag(spacing)
        )))
    }

    /// The prepared case from the cache, or [`prepare_case`] and store it. Errors are those
    /// of [`prepare_case`]; cache problems are not errors but reported in the outcome.
    pub fn load_or_prepare(
        &self,
        case: &Case,
        spacing: f32,
        convention: LabelConvention,
    ) -> Result<(ResampledCase, CacheOutcome)> {
        check_spacing(spacing)?;
        let fp = Self::fingerprint(case, spacing, convention)?;
        let path = self.entry_path(case, spacing, convention)?;
        let mut outcome = CacheOutcome::Prepared;
        if path.exists() {
            match read_entry(&path, &case.id, fp, spacing, convention) {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(reason) => outcome = CacheOutcome::Replaced(reason),
            }
        }
        let prepared = prepare_case(case, spacing, convention)?;
        if let Err(e) = self.store(&path, &prepared, fp, convention) {
            outcome = CacheOutcome::NotStored(e);
        } else {
            self.remove_stale(&case.id, spacing, &path);
        }
        Ok((prepared, outcome))
    }

    fn store(
        &self,
        path: &Path,
        case: &ResampledCase,
        fp: u64,
        convention: LabelConvention,
    ) -> std::result::Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        write_entry(path, case, fp, convention)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Removes the other cache files of the same case and spacing (older fingerprints).
    fn remove_stale(&self, id: &str, spacing: f32, keep: &Path) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let tag = Self::tag(spacing);
        for entry in rd.flatten() {
            let p = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(&format!(".{EXTENSION}")) else {
                continue;
            };
            let mut parts = stem.rsplitn(3, "__");
            let (_fp, t, i) = (parts.next(), parts.next(), parts.next());
            if i == Some(id) && t == Some(tag.as_str()) && p != keep {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// A writer that hashes what it writes.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Xxh3Default,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_entry(
    path: &Path,
    case: &ResampledCase,
    fp: u64,
    convention: LabelConvention,
) -> std::io::Result<()> {
    let meta = CacheMeta {
        id: case.id.clone(),
        fingerprint: format!("{fp:016x}"),
        convention,
        grid: case.grid,
        has_labels: case.labels.is_some(),
        has_fractions: case.region_fractions.is_some(),
        header_source: case.header.source().map(Path::to_path_buf),
        extensions: case
            .header
            .extensions()
            .iter()
            .map(|e| (e.code, e.size))
            .collect(),
    };
    let json = serde_json::to_vec(&meta)?;
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let unique = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}-{unique}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = HashingWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Xxh3Default::new(),
        };
        w.write_all(MAGIC)?;
        w.write_all(&PREPARED_FORMAT.to_le_bytes())?;
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(&json)?;
        w.write_all(&header_bytes(case.header.raw()))?;
        let mut buf = Vec::with_capacity(1 << 16);
        let floats = case
            .modalities
            .iter()
            .map(|m| m.data.as_slice())
            .chain(case.region_fractions.as_deref());
        for values in floats {
            for chunk in values.chunks(1 << 14) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                w.write_all(&buf)?;
            }
        }
        if let Some(l) = &case.labels {
            w.write_all(l)?;
        }
        let digest = w.hasher.digest();
        let mut inner = w.inner;
        inner.write_all(&digest.to_le_bytes())?;
        inner.flush()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Reads and verifies a cache file; any mismatch is an `Err(reason)`.
fn read_entry(
    path: &Path,
    id: &str,
    fp: u64,
    spacing: f32,
    convention: LabelConvention,
) -> std::result::Result<ResampledCase, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let fixed = MAGIC.len() + 4 + 8;
    if bytes.len() < fixed + 348 + 8 {
        return Err(format!("{} bytes is too short", bytes.len()));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 8);
    let stored = u64::from_le_bytes(tail.try_into().expect("8 bytes"));
    if xxh3_64(body) != stored {
        return Err("checksum mismatch (corrupt or truncated file)".to_string());
    }
    if &body[..8] != MAGIC {
        return Err("not a prepared-case file".to_string());
    }
    let format = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    if format != PREPARED_FORMAT {
        return Err(format!("format {format}, expected {PREPARED_FORMAT}"));
    }
    let json_len = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes"));
    let json_end = usize::try_from(json_len)
        .ok()
        .and_then(|l| fixed.checked_add(l))
        .filter(|&e| e + 348 <= body.len())
        .ok_or("metadata length beyond the file")?;
    let meta: CacheMeta =
        serde_json::from_slice(&body[fixed..json_end]).map_err(|e| format!("metadata: {e}"))?;
    let want_fp = format!("{fp:016x}");
    if meta.id != id
        || meta.fingerprint != want_fp
        || meta.convention != convention
        || meta.grid.target_spacing != [spacing; 3]
    {
        return Err(format!(
            "made for case {} fingerprint {} ({}, {:?} mm), wanted {id} {want_fp} ({}, {spacing} mm)",
            meta.id,
            meta.fingerprint,
            meta.convention.name(),
            meta.grid.target_spacing,
            convention.name()
        ));
    }
    let raw = nifti::NiftiHeader::from_reader(&body[json_end..json_end + 348])
        .map_err(|e| format!("header: {e}"))?;
    let header = Header::from_parts(
        raw,
        meta.extensions
            .iter()
            .map(|&(code, size)| ExtensionInfo { code, size })
            .collect(),
        meta.header_source.clone(),
    );
    let data = &body[json_end + 348..];
    let n = voxel_count(meta.grid.target_dims);
    if meta.has_fractions && !meta.has_labels {
        return Err("region fractions without labels".to_string());
    }
    let n_floats = 4 + 3 * usize::from(meta.has_fractions);
    let want = n
        .checked_mul(4 * n_floats + usize::from(meta.has_labels))
        .ok_or("grid too large")?;
    if data.len() != want {
        return Err(format!(
            "{} data bytes, the grid {:?} needs {want}",
            data.len(),
            meta.grid.target_dims
        ));
    }
    let floats = |from: usize, count: usize| -> Vec<f32> {
        data[4 * from..4 * (from + count)]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect()
    };
    let volume = |m: usize| Volume {
        dims: meta.grid.target_dims,
        data: floats(m * n, n),
    };
    let region_fractions = meta.has_fractions.then(|| floats(4 * n, 3 * n));
    let labels = meta.has_labels.then(|| data[4 * n_floats * n..].to_vec());
    if let Some(l) = &labels
        && let Some(&bad) = l.iter().find(|&&x| !convention.is_valid(x))
    {
        return Err(format!("label {bad} is not a {} label", convention.name()));
    }
    Ok(ResampledCase {
        id: meta.id,
        modalities: [volume(0), volume(1), volume(2), volume(3)],
        labels,
        region_fractions,
        convention,
        grid: meta.grid,
        header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brats::{discover_cases, labels_to_regions};
    use crate::metrics::dice;
    use crate::nifti_io::test_support::{TempDir, brats_sample_dir};
    use crate::nifti_io::{read_labels, write_labels_like};
    use crate::volume::ijk_of;

    const C18: LabelConvention = LabelConvention::Brats2018;

    /// The case at its own resolution, the reference for the prepared one.
    fn load_reference(case: &Case) -> LoadedCase {
        crate::brats::load_case(case, C18).expect("sample case loads")
    }

    fn sample_case() -> Case {
        discover_cases(brats_sample_dir()).unwrap().remove(0)
    }

    /// The sample case prepared at 2 mm once for every test that needs it (each
    /// preparation reads five real files).
    fn sample_2mm() -> &'static ResampledCase {
        static CASE: std::sync::OnceLock<ResampledCase> = std::sync::OnceLock::new();
        CASE.get_or_init(|| {
            let t = std::time::Instant::now();
            let p = prepare_case(&sample_case(), 2.0, C18).unwrap();
            eprintln!("prepare_case at 2 mm (no cache): {:?}", t.elapsed());
            p
        })
    }

    /// Dice of ET, TC and WT between two label maps.
    fn region_dice(a: &[u8], b: &[u8]) -> [f64; 3] {
        Region::ALL.map(|r| dice(&r.mask(a, C18), &r.mask(b, C18)))
    }

    /// Labels → 2 mm (prepare_case) → the prediction path back (per-region one-hot at 2 mm,
    /// linear to 1 mm, > 0.5, ET wins, into the 240×240×155 grid) agrees with the original
    /// 1 mm labels. Also prints what nearest-neighbour sampling (computed here) would give.
    #[test]
    fn labels_at_2mm_and_back_agree_with_the_original_on_the_real_case() {
        let case = sample_case();
        let p = sample_2mm();
        let (orig, dims, h) = read_labels(case.seg.as_ref().unwrap(), C18).unwrap();
        let g = p.grid;
        eprintln!(
            "bbox {:?}..{:?} ({:?}), 2 mm grid {:?}, spacing {:?}",
            g.bbox.lo,
            g.bbox.hi,
            g.crop_dims(),
            g.target_dims,
            g.spacing()
        );
        assert_eq!((g.original_dims, g.original_spacing), (dims, [1.0; 3]));
        // The crop holds every labelled voxel.
        for (idx, &l) in orig.iter().enumerate() {
            if l != 0 {
                let q = ijk_of(dims, idx);
                assert!((0..3).all(|a| q[a] >= g.bbox.lo[a] && q[a] < g.bbox.hi[a]));
            }
        }
        // Target dims are round(crop / 2).
        for a in 0..3 {
            assert_eq!(
                g.target_dims[a],
                (g.crop_dims()[a] as f64 / 2.0).round() as usize
            );
        }
        let coarse = p.labels.as_ref().unwrap();
        let onehot = labels_to_regions(coarse, C18);
        let back = restore_labels(&onehot, &g, 0.5, C18).unwrap();
        assert_eq!(back.len(), orig.len());
        let d = region_dice(&back, &orig);
        eprintln!(
            "round trip 1 → 2 → 1 mm, Dice ET {:.4} TC {:.4} WT {:.4}",
            d[0], d[1], d[2]
        );
        assert!(d[0] >= 0.85, "ET Dice {}", d[0]);
        assert!(d[1] >= 0.95 && d[2] >= 0.95, "TC {} WT {}", d[1], d[2]);
        // The soft targets go back better than the hard labels they threshold.
        let fractions = p.region_fractions.as_ref().unwrap();
        assert_eq!(&labels_from_fractions(fractions, C18).unwrap(), coarse);
        let soft = region_dice(&restore_labels(fractions, &g, 0.5, C18).unwrap(), &orig);
        eprintln!(
            "round trip of the region fractions: Dice ET {:.4} TC {:.4} WT {:.4}",
            soft[0], soft[1], soft[2]
        );
        assert!((0..3).all(|r| soft[r] > d[r]), "{soft:?} vs {d:?}");

        // Independent nearest-neighbour reference (coarse voxel u takes fine voxel
        // round((u + 0.5) · n / m − 0.5), ties up), through the same way back.
        let crop = rebox(&orig, &BBox::full(dims), &g.bbox).unwrap();
        let (cd, td) = (g.crop_dims(), g.target_dims);
        let near = |u: usize, a: usize| {
            (((u as f64 + 0.5) * cd[a] as f64 / td[a] as f64 - 0.5).round() as usize).min(cd[a] - 1)
        };
        let nn: Vec<u8> = (0..voxel_count(td))
            .map(|idx| {
                let [a, b, c] = ijk_of(td, idx);
                crop[near(a, 0) + cd[0] * (near(b, 1) + cd[1] * near(c, 2))]
            })
            .collect();
        let back_nn = restore_labels(&labels_to_regions(&nn, C18), &g, 0.5, C18).unwrap();
        let dn = region_dice(&back_nn, &orig);
        eprintln!(
            "nearest-neighbour labels instead: Dice ET {:.4} TC {:.4} WT {:.4}",
            dn[0], dn[1], dn[2]
        );
        assert!(
            d[0] > dn[0],
            "per-region labels should keep ET better than nearest"
        );

        // The restored map is written with the input's header: 240×240×155, same affine.
        let tmp = TempDir::new("restore");
        let out = tmp.path().join("pred.nii.gz");
        write_labels_like(&out, &back, &p.header).unwrap();
        let (again, d2, h2) = read_labels(&out, C18).unwrap();
        assert_eq!((again, d2, h2.affine()), (back, dims, h.affine()));
    }

    /// At the files' own spacing, preparing is cropping only: the volumes are exactly those
    /// of load_case inside the box and 0 outside, and the way back is the identity.
    #[test]
    fn spacing_1_is_the_identity_on_the_real_case() {
        let case = sample_case();
        let reference = load_reference(&case);
        let p = prepare_case(&case, 1.0, C18).unwrap();
        let g = p.grid;
        assert!(g.is_identity());
        assert_eq!(g.spacing(), [1.0; 3]);
        for m in 0..4 {
            let full = uncrop(&p.modalities[m].data, &g.bbox, g.original_dims).unwrap();
            assert!(full == reference.modalities[m].data, "modality {m}");
        }
        let seg = reference.seg.as_ref().unwrap();
        let labels = p.labels.as_ref().unwrap();
        assert_eq!(&uncrop(labels, &g.bbox, g.original_dims).unwrap(), seg);
        assert!(p.region_fractions.is_none());
        let targets = p.region_targets().unwrap();
        assert_eq!(*targets, labels_to_regions(labels, C18));
        let back = restore_labels(&targets, &g, 0.5, C18).unwrap();
        assert_eq!(&back, seg);
        let probs: Vec<f32> = (0..3 * labels.len())
            .map(|x| (x % 97) as f32 / 97.0)
            .collect();
        assert_eq!(restore_probabilities(&probs, &g).unwrap(), probs);
        assert_eq!(p.header, reference.header);
        // The in-memory path gives the same case, at 1 mm and at 2 mm.
        assert_eq!(prepare_loaded(&reference, 1.0, C18).unwrap(), p);
        let a = prepare_loaded(&reference, 2.0, C18).unwrap();
        assert_eq!(&a, sample_2mm());
        assert_eq!(a.stacked().len(), 4 * voxel_count(a.dims()));
        // Bad spacings and wrong probability sizes are errors.
        assert!(prepare_loaded(&reference, 0.0, C18).is_err());
        assert!(prepare_loaded(&reference, f32::NAN, C18).is_err());
        assert!(restore_labels(&probs[1..], &g, 0.5, C18).is_err());
        assert!(restore_probabilities(&probs[1..], &g).is_err());
    }

    /// The real case through the cache: prepared once, then read back identical.
    #[test]
    fn cache_prepares_a_real_case_once() {
        let tmp = TempDir::new("cache-real");
        let case = sample_case();
        let cache = PreparedCache::new(tmp.path().join("cache"));
        let t = std::time::Instant::now();
        let (cold, o) = cache.load_or_prepare(&case, 2.0, C18).unwrap();
        let t_cold = t.elapsed();
        assert_eq!(o, CacheOutcome::Prepared);
        let t = std::time::Instant::now();
        let (warm, o) = cache.load_or_prepare(&case, 2.0, C18).unwrap();
        let t_warm = t.elapsed();
        let path = cache.entry_path(&case, 2.0, C18).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        eprintln!("one real case at 2 mm: cold {t_cold:?}, from cache {t_warm:?} ({size} bytes)");
        assert_eq!(o, CacheOutcome::Hit);
        assert_eq!(warm, cold);
        assert_eq!(warm, *sample_2mm());
    }

    #[test]
    fn cache_detects_changed_sources_corruption_and_unwritable_folders() {
        use crate::phantom::{PhantomConfig, write_phantom_dataset};
        let tmp = TempDir::new("cache");
        let cfg = PhantomConfig {
            size: [24, 20, 16],
            ..Default::default()
        };
        let case = write_phantom_dataset(tmp.path().join("data"), 1, &cfg, 3)
            .unwrap()
            .remove(0);
        let cache = PreparedCache::new(tmp.path().join("cache"));
        let (cold, o) = cache.load_or_prepare(&case, 2.0, C18).unwrap();
        assert_eq!(o, CacheOutcome::Prepared);
        assert!(cold.region_fractions.is_some());
        assert_eq!(cold, prepare_case(&case, 2.0, C18).unwrap());
        let path = cache.entry_path(&case, 2.0, C18).unwrap();
        assert_eq!(
            cache.load_or_prepare(&case, 2.0, C18).unwrap(),
            (cold.clone(), CacheOutcome::Hit)
        );
        // Another spacing is another entry; both stay.
        let (one, o) = cache.load_or_prepare(&case, 1.0, C18).unwrap();
        assert_eq!((o, one.grid.is_identity()), (CacheOutcome::Prepared, true));
        assert_eq!(
            cache.load_or_prepare(&case, 1.0, C18).unwrap(),
            (one, CacheOutcome::Hit)
        );
        // Another label convention is another entry.
        assert_ne!(
            cache
                .entry_path(&case, 2.0, LabelConvention::Brats2023)
                .unwrap(),
            path
        );

        // A flipped byte in the voxel data: checksum mismatch, prepared again.
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let (again, o) = cache.load_or_prepare(&case, 2.0, C18).unwrap();
        assert!(
            matches!(&o, CacheOutcome::Replaced(r) if r.contains("checksum")),
            "{o:?}"
        );
        assert_eq!(again, cold);
        // Truncated, or not a cache file at all: the same.
        for junk in [&bytes[..100], b"MCKDPREP".as_slice()] {
            std::fs::write(&path, junk).unwrap();
            let (c, o) = cache.load_or_prepare(&case, 2.0, C18).unwrap();
            assert!(matches!(o, CacheOutcome::Replaced(_)), "{o:?}");
            assert_eq!(c, cold);
        }
        assert_eq!(
            cache.load_or_prepare(&case, 2.0, C18).unwrap().1,
            CacheOutcome::Hit
        );

        // A source file changes (new modification time): new key, prepared again, the
        // stale 2 mm entry removed; the 1 mm entry (another spacing) stays.
        let f = std::fs::File::options()
            .write(true)
            .open(&case.modalities[1])
            .unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000))
            .unwrap();
        drop(f);
        let new_path = cache.entry_path(&case, 2.0, C18).unwrap();
        assert_ne!(new_path, path);
        let (_, o) = cache.load_or_prepare(&case, 2.0, C18).unwrap();
        assert_eq!(o, CacheOutcome::Prepared);
        assert!(new_path.exists() && !path.exists());
        let names: Vec<String> = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names.iter().all(|n| !n.starts_with('.')),
            "no temporary file left"
        );

        // A cache folder that cannot be created: the case is still prepared.
        std::fs::write(tmp.path().join("blocked"), b"x").unwrap();
        let blocked = PreparedCache::new(tmp.path().join("blocked").join("cache"));
        let (c, o) = blocked.load_or_prepare(&case, 2.0, C18).unwrap();
        assert!(matches!(o, CacheOutcome::NotStored(_)), "{o:?}");
        assert_eq!(c, cold);
    }
}
