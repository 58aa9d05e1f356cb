//! BraTS conventions: label sets, tumour regions, modality files, case folders and loading.
//!
//! # Regions and channel order
//! The three binary targets are always in channel order **(ET, TC, WT)** = [`Region::ALL`]:
//! ET = enhancing tumour; TC = tumour core = NCR ∪ ET; WT = whole tumour = NCR ∪ ED ∪ ET.
//! (The MCKD reference code orders them ET, WT, TC; the order here is the nnU-Net/BraTS
//! one and is used by [`labels_to_regions`], [`probs_to_labels`], the metrics and the crops.)
//!
//! # Modalities
//! Order 0 Flair, 1 T1, 2 T1c, 3 T2 ([`MODALITIES`]). File names ([`FileNaming`]): BraTS
//! 2017–2021 `<case>_{flair,t1,t1ce,t2,seg}.nii.gz` ([`MODALITY_SUFFIXES`]), BraTS 2023+
//! `<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz`; each case folder is read with the naming it uses.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, VolumeError};
use crate::nifti_io::{read_labels, read_volume};
use crate::preprocess::{ClipRule, normalise_with};
use crate::volume::{Header, Volume};

/// Modality names in channel order (0 Flair, 1 T1, 2 T1c, 3 T2).
pub const MODALITIES: [&str; 4] = ["flair", "t1", "t1c", "t2"];

/// File-name suffixes of the modalities, in [`MODALITIES`] order:
/// `<case>_<suffix>.nii.gz`.
pub const MODALITY_SUFFIXES: [&str; 4] = ["flair", "t1", "t1ce", "t2"];

/// File-name suffix of the segmentation: `<case>_seg.nii.gz`.
pub const SEG_SUFFIX: &str = "seg";

/// How the files of a case folder are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum FileNaming {
    /// BraTS 2017–2021: `<case>_{flair,t1,t1ce,t2,seg}.nii.gz`.
    #[default]
    Brats2018,
    /// BraTS 2023+ (GLI and the other 2023 challenges): `<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz`
    /// (t2f = Flair, t1n = native T1, t1c = contrast-enhanced T1, t2w = T2).
    Brats2023,
}

impl FileNaming {
    /// Every naming, in the order [`Case::from_dir`] prefers them on a tie.
    pub const ALL: [FileNaming; 2] = [FileNaming::Brats2018, FileNaming::Brats2023];

    /// Between the case id and the suffix.
    pub fn separator(self) -> char {
        match self {
            FileNaming::Brats2018 => '_',
            FileNaming::Brats2023 => '-',
        }
    }

    /// Modality suffixes in [`MODALITIES`] order.
    pub fn modality_suffixes(self) -> [&'static str; 4] {
        match self {
            FileNaming::Brats2018 => MODALITY_SUFFIXES,
            FileNaming::Brats2023 => ["t2f", "t1n", "t1c", "t2w"],
        }
    }

    /// `<id><separator><suffix>.<ext>`.
    fn file_name(self, id: &str, suffix: &str, ext: &str) -> String {
        format!("{id}{}{suffix}.{ext}", self.separator())
    }

    /// The label convention that datasets with this naming use.
    pub fn label_convention(self) -> LabelConvention {
        match self {
            FileNaming::Brats2018 => LabelConvention::Brats2018,
            FileNaming::Brats2023 => LabelConvention::Brats2023,
        }
    }
}

/// Which integer stands for which tumour sub-region in a segmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum LabelConvention {
    /// BraTS 2017–2021: 0 background, 1 NCR/NET, 2 ED (edema), 4 ET.
    #[default]
    Brats2018,
    /// BraTS 2023+ (GLI): 0 background, 1 NETC (NCR), 2 SNFH (edema), 3 ET.
    /// (Label 4 = resection cavity of BraTS 2024 is not accepted.)
    Brats2023,
}

impl LabelConvention {
    /// Label of the necrotic / non-enhancing core (1 in both conventions).
    pub const fn ncr(self) -> u8 {
        1
    }

    /// Label of the edema (2 in both conventions).
    pub const fn ed(self) -> u8 {
        2
    }

    /// Label of the enhancing tumour (4 in BraTS 2018, 3 in BraTS 2023+).
    pub const fn et(self) -> u8 {
        match self {
            LabelConvention::Brats2018 => 4,
            LabelConvention::Brats2023 => 3,
        }
    }

    /// All valid labels, background first: `[0, ncr, ed, et]`.
    pub const fn labels(self) -> [u8; 4] {
        [0, self.ncr(), self.ed(), self.et()]
    }

    /// Whether `label` is one of [`Self::labels`].
    pub fn is_valid(self, label: u8) -> bool {
        label == 0 || label == self.ncr() || label == self.ed() || label == self.et()
    }

    /// Name used in messages (`"BraTS 2018"`, `"BraTS 2023"`).
    pub fn name(self) -> &'static str {
        match self {
            LabelConvention::Brats2018 => "BraTS 2018",
            LabelConvention::Brats2023 => "BraTS 2023",
        }
    }

    pub(crate) fn allowed_string(self) -> String {
        let l = self.labels();
        format!("{}, {}, {}, {}", l[0], l[1], l[2], l[3])
    }

    /// Rewrites valid labels of this convention into `to` (only ET changes: 4 ↔ 3).
    /// Values that are not valid labels of `self` are left untouched.
    pub fn convert_to(self, to: LabelConvention, labels: &mut [u8]) {
        let (from_et, to_et) = (self.et(), to.et());
        if from_et != to_et {
            for l in labels.iter_mut() {
                if *l == from_et {
                    *l = to_et;
                }
            }
        }
    }
}

/// A tumour region evaluated and predicted as one binary channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Region {
    /// Enhancing tumour: the ET label.
    Et,
    /// Tumour core: NCR ∪ ET.
    Tc,
    /// Whole tumour: every non-zero label.
    Wt,
}

impl Region {
    /// The regions in channel order (ET, TC, WT).
    pub const ALL: [Region; 3] = [Region::Et, Region::Tc, Region::Wt];

    /// Channel index of this region (ET 0, TC 1, WT 2).
    pub const fn channel(self) -> usize {
        match self {
            Region::Et => 0,
            Region::Tc => 1,
            Region::Wt => 2,
        }
    }

    /// Short name: `"ET"`, `"TC"`, `"WT"`.
    pub const fn name(self) -> &'static str {
        match self {
            Region::Et => "ET",
            Region::Tc => "TC",
            Region::Wt => "WT",
        }
    }

    /// Whether a voxel with `label` belongs to this region.
    #[inline]
    pub fn contains(self, label: u8, convention: LabelConvention) -> bool {
        match self {
            Region::Et => label == convention.et(),
            Region::Tc => label == convention.et() || label == convention.ncr(),
            Region::Wt => label != 0,
        }
    }

    /// Binary mask of this region.
    ///
    /// # Shapes
    /// `labels: [n]` → `[n]`.
    pub fn mask(self, labels: &[u8], convention: LabelConvention) -> Vec<bool> {
        labels
            .iter()
            .map(|&l| self.contains(l, convention))
            .collect()
    }
}

/// Training targets: three binary channels (ET, TC, WT) as `0.0` / `1.0`.
///
/// # Shapes
/// `labels: [n]` → `[3, n]` flattened, channel-major (channel `c` at `c * n ..`).
pub fn labels_to_regions(labels: &[u8], convention: LabelConvention) -> Vec<f32> {
    let n = labels.len();
    let mut out = vec![0.0f32; 3 * n];
    for (c, region) in Region::ALL.iter().enumerate() {
        for (o, &l) in out[c * n..(c + 1) * n].iter_mut().zip(labels) {
            *o = if region.contains(l, convention) {
                1.0
            } else {
                0.0
            };
        }
    }
    out
}

/// Label map from three binary region masks, as the reference inference does:
/// start from 0, WT → ED (2), then TC → NCR (1), then ET → ET label (ET wins).
///
/// # Shapes
/// `et, tc, wt: [n]` → `[n]`.
pub fn regions_to_labels(
    et: &[bool],
    tc: &[bool],
    wt: &[bool],
    convention: LabelConvention,
) -> Result<Vec<u8>> {
    if et.len() != tc.len() || tc.len() != wt.len() {
        return Err(VolumeError::Invalid(format!(
            "region masks have different lengths: ET {}, TC {}, WT {}",
            et.len(),
            tc.len(),
            wt.len()
        )));
    }
    Ok(et
        .iter()
        .zip(tc)
        .zip(wt)
        .map(|((&e, &t), &w)| {
            if e {
                convention.et()
            } else if t {
                convention.ncr()
            } else if w {
                convention.ed()
            } else {
                0
            }
        })
        .collect())
}

/// Label map from per-region probabilities: a region is on where `p > threshold`
/// (strictly, like the reference's `np.around` at 0.5), then [`regions_to_labels`].
///
/// # Shapes
/// `probs: [3, n]` flattened in channel order (ET, TC, WT) → `[n]`.
pub fn probs_to_labels(
    probs: &[f32],
    threshold: f32,
    convention: LabelConvention,
) -> Result<Vec<u8>> {
    if !probs.len().is_multiple_of(3) {
        return Err(VolumeError::Invalid(format!(
            "probabilities have {} values, not a multiple of 3 channels",
            probs.len()
        )));
    }
    let n = probs.len() / 3;
    let on = |c: usize| -> Vec<bool> {
        probs[c * n..(c + 1) * n]
            .iter()
            .map(|&p| p > threshold)
            .collect()
    };
    regions_to_labels(&on(0), &on(1), &on(2), convention)
}

/// One case on disk: its four modality files and (for training data) its segmentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    /// Case id = folder name (e.g. `Brats18_2013_2_1`).
    pub id: String,
    /// Grade folder in the BraTS 2018 layout (`HGG` / `LGG`), `None` for a flat folder.
    pub group: Option<String>,
    /// The case folder.
    pub dir: PathBuf,
    /// Modality files in [`MODALITIES`] order.
    pub modalities: [PathBuf; 4],
    /// Segmentation file, if the case has one.
    pub seg: Option<PathBuf>,
    /// How the case's files are named.
    #[serde(default)]
    pub naming: FileNaming,
}

/// `<dir>/<id><sep><suffix>.nii.gz`, or `.nii` if only that exists. A folder with the file's
/// name is returned too, so that reading it says "is a directory" instead of "missing".
fn find_file(dir: &Path, naming: FileNaming, id: &str, suffix: &str) -> Option<PathBuf> {
    let candidates = ["nii.gz", "nii"].map(|ext| dir.join(naming.file_name(id, suffix, ext)));
    candidates
        .iter()
        .find(|p| p.is_file())
        .or_else(|| candidates.iter().find(|p| p.exists()))
        .cloned()
}

impl Case {
    /// The case stored in `dir` (id = folder name): `<dir>/<id>_{flair,t1,t1ce,t2[,seg]}.nii[.gz]`
    /// or `<dir>/<id>-{t2f,t1n,t1c,t2w[,seg]}.nii[.gz]`, whichever naming more of the
    /// modality files use (BraTS 2018's on a tie). A missing modality is a
    /// [`VolumeError::MissingFile`] naming the expected file; the segmentation is optional.
    pub fn from_dir(dir: impl AsRef<Path>, group: Option<String>) -> Result<Case> {
        let dir = dir.as_ref();
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| VolumeError::Layout {
                dir: dir.to_path_buf(),
                problem: "a case folder needs a name".to_string(),
            })?;
        // Each naming's modality files; the naming with the most wins (max_by_key keeps the
        // last maximum: scan in reverse so that 2018 wins a tie).
        let (naming, files) = FileNaming::ALL
            .into_iter()
            .rev()
            .map(|n| (n, n.modality_suffixes().map(|s| find_file(dir, n, &id, s))))
            .max_by_key(|(_, files)| files.iter().flatten().count())
            .expect("FileNaming::ALL is not empty");
        let mut modalities: [PathBuf; 4] = Default::default();
        for (m, (file, suffix)) in files
            .into_iter()
            .zip(naming.modality_suffixes())
            .enumerate()
        {
            modalities[m] = file.ok_or_else(|| VolumeError::MissingFile {
                path: dir.join(naming.file_name(&id, suffix, "nii.gz")),
                what: format!("{} modality file of case {id}", MODALITIES[m]),
            })?;
        }
        Ok(Case {
            seg: find_file(dir, naming, &id, SEG_SUFFIX),
            id,
            group,
            dir: dir.to_path_buf(),
            modalities,
            naming,
        })
    }
}

/// Whether `dir` looks like a case folder: it holds a `<dirname>_*.nii[.gz]` or
/// `<dirname>-*.nii[.gz]` file.
pub(crate) fn is_case_dir(dir: &Path) -> bool {
    let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return false;
    };
    let prefixes = FileNaming::ALL.map(|n| format!("{name}{}", n.separator()));
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                let f = e.file_name().to_string_lossy().into_owned();
                prefixes.iter().any(|p| f.starts_with(p))
                    && (f.ends_with(".nii.gz") || f.ends_with(".nii"))
            })
        })
        .unwrap_or(false)
}

/// The label convention that the file names of `cases` imply: that of their naming
/// ([`FileNaming::label_convention`]) if every case uses the same one, else BraTS 2018's.
pub fn implied_convention(cases: &[Case]) -> LabelConvention {
    match cases.first() {
        Some(c) if cases.iter().all(|d| d.naming == c.naming) => c.naming.label_convention(),
        _ => LabelConvention::Brats2018,
    }
}

pub(crate) fn sorted_subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| VolumeError::io(dir, e))?;
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    Ok(out)
}

/// Finds the cases under `root`, sorted by id.
///
/// Layouts: BraTS 2018 (`<root>/HGG|LGG/<case>/<case>_*.nii.gz`; every sub-folder of
/// `HGG` and `LGG` that holds a `<case>_*.nii[.gz]` file) or a flat folder of case folders
/// (`<root>/<case>/...`). Folders without such files (e.g. run outputs, and empty folders)
/// are skipped; a case folder missing a modality is an error naming the file; no case at
/// all, or the same id twice, is a [`VolumeError::Layout`]. Discovery stops at the first
/// problem and reads no file; [`crate::check::check_data`] reports every problem of the
/// cases a command will use, empty case folders included.
pub fn discover_cases(root: impl AsRef<Path>) -> Result<Vec<Case>> {
    let root = root.as_ref();
    if !root.is_dir() {
        return Err(VolumeError::MissingFile {
            path: root.to_path_buf(),
            what: "data folder".to_string(),
        });
    }
    let groups: Vec<&str> = ["HGG", "LGG"]
        .into_iter()
        .filter(|g| root.join(g).is_dir())
        .collect();
    let mut cases = Vec::new();
    if groups.is_empty() {
        for dir in sorted_subdirs(root)? {
            if is_case_dir(&dir) {
                cases.push(Case::from_dir(&dir, None)?);
            }
        }
    } else {
        for g in groups {
            for dir in sorted_subdirs(&root.join(g))? {
                if is_case_dir(&dir) {
                    cases.push(Case::from_dir(&dir, Some(g.to_string()))?);
                }
            }
        }
    }
    if cases.is_empty() {
        return Err(VolumeError::Layout {
            dir: root.to_path_buf(),
            problem: "no case folders (<case>/<case>_flair.nii.gz ... or \
                      <case>/<case>-t2f.nii.gz ...) found, neither directly nor under HGG/ or LGG/"
                .to_string(),
        });
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(w) = cases.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(VolumeError::Layout {
            dir: root.to_path_buf(),
            problem: format!(
                "case id {} appears twice: {} and {}",
                w[0].id,
                w[0].dir.display(),
                w[1].dir.display()
            ),
        });
    }
    Ok(cases)
}

/// A case in memory, ready for training or inference.
#[derive(Debug, Clone)]
pub struct LoadedCase {
    /// Case id.
    pub id: String,
    /// Grid (i, j, k), the same for every modality and the segmentation.
    pub dims: [usize; 3],
    /// Voxel spacing (mm) from the Flair header.
    pub spacing: [f32; 3],
    /// Normalised modalities ([`load_case`]: [`ClipRule::Scaled`]) in [`MODALITIES`] order.
    pub modalities: [Volume; 4],
    /// Segmentation labels (validated against the convention), if the case has one.
    pub seg: Option<Vec<u8>>,
    /// Header of the Flair file: write predictions with it.
    pub header: Header,
}

impl LoadedCase {
    /// The four modalities stacked channel-first.
    ///
    /// # Shapes
    /// `[4, dk, dj, di]` flattened (channel-major, then i fastest).
    pub fn stacked(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(4 * self.modalities[0].len());
        for m in &self.modalities {
            out.extend_from_slice(&m.data);
        }
        out
    }
}

/// Loads a case: reads the four modalities (in parallel), checks that every file has the
/// same grid (dims: [`VolumeError::ShapeMismatch`]; spacing and affine within the
/// tolerances of [`crate::check`]: [`VolumeError::GridMismatch`]; both name the two files),
/// normalises each modality
/// ([`crate::preprocess::normalise_with`], [`ClipRule::Scaled`]: the reference on BraTS-sized
/// volumes) and reads the segmentation with `convention`.
///
/// # Shapes
/// Every volume has `dims` (i, j, k); `seg: [dk, dj, di]` flattened.
pub fn load_case(case: &Case, convention: LabelConvention) -> Result<LoadedCase> {
    let reads: Vec<Result<(Volume, Header)>> = case
        .modalities
        .par_iter()
        .map(|p| {
            let (v, h) = read_volume(p)?;
            Ok((normalise_with(&v, ClipRule::Scaled), h))
        })
        .collect();
    let mut vols = Vec::with_capacity(4);
    let mut headers = Vec::with_capacity(4);
    for r in reads {
        let (v, h) = r?;
        headers.push(h);
        vols.push(v);
    }
    let header = headers[0].clone();
    let dims = vols[0].dims;
    for (m, v) in vols.iter().enumerate().skip(1) {
        if v.dims != dims {
            return Err(VolumeError::ShapeMismatch {
                path_a: case.modalities[0].clone(),
                dims_a: dims,
                path_b: case.modalities[m].clone(),
                dims_b: v.dims,
            });
        }
    }
    for (m, h) in headers.iter().enumerate().skip(1) {
        check_same_grid(&header, &case.modalities[0], h, &case.modalities[m])?;
    }
    let seg = match &case.seg {
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
    let modalities: [Volume; 4] = vols.try_into().expect("four modalities");
    Ok(LoadedCase {
        id: case.id.clone(),
        dims,
        spacing: header.spacing(),
        modalities,
        seg,
        header,
    })
}

/// [`VolumeError::GridMismatch`] if `b` (file `path_b`) is not on the grid of `a`.
pub(crate) fn check_same_grid(a: &Header, path_a: &Path, b: &Header, path_b: &Path) -> Result<()> {
    match crate::check::grid_difference(a, b) {
        None => Ok(()),
        Some(problem) => Err(VolumeError::GridMismatch {
            path_a: path_a.to_path_buf(),
            path_b: path_b.to_path_buf(),
            problem,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti_io::test_support::{TempDir, brats_sample_dir};
    use crate::nifti_io::{StorageType, write_labels_like, write_volume_as};

    #[test]
    fn regions_and_label_maps_follow_the_conventions() {
        let c18 = LabelConvention::Brats2018;
        let c23 = LabelConvention::Brats2023;
        let labels = [0u8, 1, 2, 4];
        assert_eq!(Region::Et.mask(&labels, c18), [false, false, false, true]);
        assert_eq!(Region::Tc.mask(&labels, c18), [false, true, false, true]);
        assert_eq!(Region::Wt.mask(&labels, c18), [false, true, true, true]);
        assert_eq!(
            labels_to_regions(&labels, c18),
            [0., 0., 0., 1., 0., 1., 0., 1., 0., 1., 1., 1.]
        );
        let l23 = [0u8, 1, 2, 3];
        assert_eq!(
            labels_to_regions(&l23, c23),
            labels_to_regions(&labels, c18)
        );
        // Label map: WT→2, TC→1, ET→4; ET wins even where TC/WT are off.
        let et = [false, false, false, true, true];
        let tc = [false, false, true, true, false];
        let wt = [false, true, true, true, false];
        assert_eq!(
            regions_to_labels(&et, &tc, &wt, c18).unwrap(),
            [0, 2, 1, 4, 4]
        );
        assert_eq!(
            regions_to_labels(&et, &tc, &wt, c23).unwrap(),
            [0, 2, 1, 3, 3]
        );
        assert!(regions_to_labels(&et[..2], &tc, &wt, c18).is_err());
        // Probabilities: strictly above the threshold.
        let probs = [0.5, 0.9, 0.1, 0.2, 0.51, 0.2, 0.7, 0.7, 0.0];
        assert_eq!(probs_to_labels(&probs, 0.5, c18).unwrap(), [2, 4, 0]);
        let mut l = vec![0u8, 4, 2, 1];
        c18.convert_to(c23, &mut l);
        assert_eq!(l, [0, 3, 2, 1]);
        assert!(c18.is_valid(4) && !c18.is_valid(3) && c23.is_valid(3) && !c23.is_valid(4));
    }

    #[test]
    fn discovers_and_loads_the_real_case() {
        let root = brats_sample_dir();
        let cases = discover_cases(&root).unwrap();
        assert_eq!(cases.len(), 1);
        let case = &cases[0];
        assert_eq!(case.id, "Brats18_2013_2_1");
        assert!(case.modalities[2].ends_with("Brats18_2013_2_1_t1ce.nii.gz"));
        let t = std::time::Instant::now();
        let loaded = load_case(case, LabelConvention::Brats2018).unwrap();
        eprintln!("load_case (read 5 files + normalise): {:?}", t.elapsed());
        assert_eq!(loaded.dims, [240, 240, 155]);
        assert_eq!(loaded.spacing, [1.0, 1.0, 1.0]);
        let seg = loaded.seg.as_ref().unwrap();
        assert_eq!(seg.iter().filter(|&&l| l > 0).count(), 61085);
        // Normalised: background 0, foreground z-scored.
        let t1c = &loaded.modalities[2];
        assert_eq!(t1c.get(0, 0, 0), 0.0);
        let v = t1c.get(120, 120, 77);
        assert!((f64::from(v) - -0.049848722269109136).abs() < 1e-5, "{v}");
        assert_eq!(loaded.stacked().len(), 4 * 240 * 240 * 155);
    }

    #[test]
    fn brats2023_file_names_are_read_in_modality_order() {
        let tmp = TempDir::new("cases23");
        let h = Header::synthetic([4, 4, 4], [1.0; 3]).unwrap();
        // Each modality a different ramp so that the order can be checked after loading.
        let write = |dir: &Path, id: &str, suffixes: &[(&str, f32)]| {
            std::fs::create_dir_all(dir).unwrap();
            for &(s, slope) in suffixes {
                let v = Volume::new([4, 4, 4], (0..64).map(|x| 1.0 + slope * x as f32).collect())
                    .unwrap();
                write_volume_as(
                    dir.join(format!("{id}-{s}.nii.gz")),
                    &v,
                    &h,
                    StorageType::F32,
                )
                .unwrap();
            }
        };
        let mut seg = vec![0u8; 64];
        seg[5] = 3; // ET under BraTS 2023
        seg[6] = 2;
        seg[7] = 1;
        let root = tmp.path().join("gli");
        let id = "BraTS-GLI-00001-000";
        let dir = root.join(id);
        // File order on disk differs from the modality order: t2f = Flair, t1n = T1, t2w = T2.
        write(
            &dir,
            id,
            &[("t2w", 4.0), ("t1c", 3.0), ("t1n", 2.0), ("t2f", 1.0)],
        );
        write_labels_like(dir.join(format!("{id}-seg.nii.gz")), &seg, &h).unwrap();
        let cases = discover_cases(&root).unwrap();
        assert_eq!(cases.len(), 1);
        let case = &cases[0];
        assert_eq!(case.naming, FileNaming::Brats2023);
        let names: Vec<String> = case
            .modalities
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "BraTS-GLI-00001-000-t2f.nii.gz",
                "BraTS-GLI-00001-000-t1n.nii.gz",
                "BraTS-GLI-00001-000-t1c.nii.gz",
                "BraTS-GLI-00001-000-t2w.nii.gz"
            ]
        );
        assert!(
            case.seg
                .as_ref()
                .unwrap()
                .ends_with(format!("{id}-seg.nii.gz"))
        );
        let convention = implied_convention(&cases);
        assert_eq!(convention, LabelConvention::Brats2023);
        let loaded = load_case(case, convention).unwrap();
        assert_eq!(loaded.seg.as_ref().unwrap(), &seg);
        // The raw ramps differ only in slope; after the z-score every modality is the same
        // ramp, so check the raw files went to the right slots through their slopes instead.
        for (m, slope) in [1.0f32, 2.0, 3.0, 4.0].into_iter().enumerate() {
            let (raw, _) = read_volume(&case.modalities[m]).unwrap();
            assert_eq!(raw.get(1, 0, 0), 1.0 + slope, "modality {m}");
        }
        // Label 3 is ET in 2023 labels and unknown in 2018 labels (error names the file).
        let msg = load_case(case, LabelConvention::Brats2018)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("-seg.nii.gz") && msg.contains("value 3"),
            "{msg}"
        );

        // A 2023 case without its t1c: the error names the expected 2023 file.
        let root = tmp.path().join("gli-missing");
        let id = "BraTS-GLI-00002-000";
        write(
            &root.join(id),
            id,
            &[("t2f", 1.0), ("t1n", 1.0), ("t2w", 1.0)],
        );
        let msg = discover_cases(&root).unwrap_err().to_string();
        assert!(msg.contains("BraTS-GLI-00002-000-t1c.nii.gz"), "{msg}");

        // Mixed namings across cases imply the 2018 labels; each case keeps its own naming.
        let mixed = [
            Case::from_dir(&dir, None).unwrap(),
            Case {
                naming: FileNaming::Brats2018,
                ..Case::from_dir(&dir, None).unwrap()
            },
        ];
        assert_eq!(implied_convention(&mixed), LabelConvention::Brats2018);
        assert_eq!(implied_convention(&mixed[..1]), LabelConvention::Brats2023);
    }

    #[test]
    fn bad_case_folders_are_errors_naming_the_file() {
        let tmp = TempDir::new("cases");
        let h = Header::synthetic([4, 4, 4], [1.0; 3]).unwrap();
        let v = Volume::new([4, 4, 4], (0..64).map(|x| x as f32).collect()).unwrap();
        let write_case = |root: &Path, id: &str, skip: Option<&str>| {
            let dir = root.join(id);
            std::fs::create_dir_all(&dir).unwrap();
            for s in MODALITY_SUFFIXES {
                if Some(s) != skip {
                    let p = dir.join(format!("{id}_{s}.nii.gz"));
                    write_volume_as(p, &v, &h, StorageType::I16).unwrap();
                }
            }
            let seg = vec![0u8; 64];
            write_labels_like(dir.join(format!("{id}_seg.nii.gz")), &seg, &h).unwrap();
            dir
        };

        // Missing modality file: discovery names it.
        let root = tmp.path().join("missing");
        write_case(&root, "caseA", Some("t1ce"));
        let err = discover_cases(&root).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, VolumeError::MissingFile { .. }), "{msg}");
        assert!(
            msg.contains("caseA_t1ce.nii.gz") && msg.contains("t1c modality"),
            "{msg}"
        );

        // Missing file after discovery: load_case names it.
        let root = tmp.path().join("late");
        let dir = write_case(&root, "caseB", None);
        let case = Case::from_dir(&dir, None).unwrap();
        std::fs::remove_file(dir.join("caseB_t2.nii.gz")).unwrap();
        let msg = load_case(&case, LabelConvention::Brats2018)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("caseB_t2.nii.gz"), "{msg}");

        // Mismatched shapes between modalities: both files named.
        let root = tmp.path().join("shape");
        let dir = write_case(&root, "caseC", None);
        let h5 = Header::synthetic([4, 4, 5], [1.0; 3]).unwrap();
        let v5 = Volume::new([4, 4, 5], vec![1.0; 80]).unwrap();
        write_volume_as(dir.join("caseC_t1.nii.gz"), &v5, &h5, StorageType::I16).unwrap();
        let case = &discover_cases(&root).unwrap()[0];
        let err = load_case(case, LabelConvention::Brats2018).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, VolumeError::ShapeMismatch { .. }), "{msg}");
        assert!(
            msg.contains("caseC_flair.nii.gz") && msg.contains("caseC_t1.nii.gz"),
            "{msg}"
        );

        // Unknown label value in the segmentation.
        let root = tmp.path().join("label");
        let dir = write_case(&root, "caseD", None);
        let mut seg = vec![0u8; 64];
        seg[10] = 3;
        write_labels_like(dir.join("caseD_seg.nii.gz"), &seg, &h).unwrap();
        let case = &discover_cases(&root).unwrap()[0];
        let msg = load_case(case, LabelConvention::Brats2018)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("caseD_seg.nii.gz") && msg.contains("value 3"),
            "{msg}"
        );

        // BraTS 2018 layout with HGG/LGG, sorted by id; empty folder is a layout error.
        let root = tmp.path().join("b18");
        write_case(&root.join("LGG"), "Brats_a", None);
        write_case(&root.join("HGG"), "Brats_b", None);
        std::fs::create_dir_all(root.join("HGG").join("not_a_case")).unwrap();
        let cases = discover_cases(&root).unwrap();
        let ids: Vec<_> = cases
            .iter()
            .map(|c| (c.id.as_str(), c.group.as_deref()))
            .collect();
        assert_eq!(ids, [("Brats_a", Some("LGG")), ("Brats_b", Some("HGG"))]);
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(matches!(
            discover_cases(&empty),
            Err(VolumeError::Layout { .. })
        ));
    }
}
