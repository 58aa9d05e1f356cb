//! Checking a data set before a command uses it: every case it will read (train, meta-val
//! and test), every problem in one report.
//!
//! [`check_data`] walks the data folder like [`crate::brats::discover_cases`] but does not
//! stop at the first problem, and also reports what discovery skips silently (an empty case
//! folder). For every case to use, [`check_case`] opens the four modalities and the
//! segmentation and checks:
//! - each path is a readable file (a folder gives "is a directory, expected a .nii.gz or
//!   .nii file"), a valid NIfTI-1 header, and, with [`CheckOptions::read_voxels`], complete
//!   gzip and voxel data, finite values, and a modality that is not entirely 0;
//! - the segmentation exists when [`CheckOptions::require_labels`] is set, and every label
//!   is valid for the convention (the segmentation is always decoded: it is small, and a bad
//!   label is the usual reason a long run dies late);
//! - every file of the case has the grid of the first modality (Flair): same dims, spacing
//!   within [`SPACING_TOLERANCE_MM`], and affines that put every voxel at the same place
//!   within [`WORLD_TOLERANCE_MM`] ([`grid_difference`]); a difference names both files and
//!   says what differs.
//!
//! # Tolerances
//! Spacing: 0.001 mm per axis; affine: 0.01 mm, measured at the eight corners of the grid
//! (the affine is linear, so no voxel moves further than the furthest corner). Both are
//! more than 100 times the float32 rounding of header values for coordinates below a few
//! metres and at most 1 % of a 1 mm voxel: what is reported is a different grid or a
//! misregistration, not rounding.

use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::brats::{Case, FileNaming, LabelConvention, MODALITIES};
use crate::error::{Result, VolumeError, error_chain};
use crate::nifti_io::{read_header, read_labels, read_volume};
use crate::volume::{Affine, Header};

/// Largest spacing difference (mm, per axis) between files of one case.
pub const SPACING_TOLERANCE_MM: f64 = 1e-3;

/// Largest distance (mm) between the world positions the affines of two files of one case
/// give to the same voxel (checked at the grid corners).
pub const WORLD_TOLERANCE_MM: f64 = 1e-2;

/// How [`check_data`] and [`check_case`] read each case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOptions {
    /// Label convention the segmentations must follow.
    pub convention: LabelConvention,
    /// Decode every modality's voxels (complete gzip and data, finite values, not all 0);
    /// otherwise only the modality headers are read (seconds per case faster).
    pub read_voxels: bool,
    /// Every case must have a segmentation (training and evaluation need one).
    pub require_labels: bool,
}

impl Default for CheckOptions {
    /// BraTS 2018 labels, voxels read, segmentation required.
    fn default() -> Self {
        Self {
            convention: LabelConvention::Brats2018,
            read_voxels: true,
            require_labels: true,
        }
    }
}

/// One problem found by the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Case id (the folder name), or `""` for a problem with the data folder itself.
    pub case: String,
    /// File or folder the problem is about.
    pub path: PathBuf,
    /// What is wrong (a full message: it names the file(s)).
    pub problem: String,
}

/// The result of [`check_data`]: every problem of every case checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataReport {
    /// The data folder.
    pub root: PathBuf,
    /// Ids of the cases that were checked (found or not), sorted.
    pub cases: Vec<String>,
    /// Every problem found, grouped by case in id order.
    pub problems: Vec<Problem>,
}

impl DataReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// `Ok(())` when no problem was found, else a [`VolumeError::DataCheck`] holding this
    /// report (its message lists every problem).
    pub fn into_result(self) -> Result<()> {
        if self.is_ok() {
            Ok(())
        } else {
            Err(VolumeError::DataCheck(Box::new(self)))
        }
    }

    /// Number of distinct cases with at least one problem.
    pub fn bad_cases(&self) -> usize {
        let mut ids: Vec<&str> = self.problems.iter().map(|p| p.case.as_str()).collect();
        ids.dedup();
        ids.len()
    }
}

impl fmt::Display for DataReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            return write!(
                f,
                "data check of {}: {} case(s), no problem",
                self.root.display(),
                self.cases.len()
            );
        }
        write!(
            f,
            "data check of {}: {} problem(s) in {} of {} case(s)",
            self.root.display(),
            self.problems.len(),
            self.bad_cases(),
            self.cases.len()
        )?;
        for p in &self.problems {
            if p.case.is_empty() {
                write!(f, "\n  - {}", p.problem)?;
            } else {
                write!(f, "\n  - {}: {}", p.case, p.problem)?;
            }
        }
        Ok(())
    }
}

/// How the grid of `b` differs from that of `a` (dims, spacing beyond
/// [`SPACING_TOLERANCE_MM`], affine beyond [`WORLD_TOLERANCE_MM`]), `None` if it does not.
pub fn grid_difference(a: &Header, b: &Header) -> Option<String> {
    let (da, db) = (a.dims(), b.dims());
    let mut diffs = Vec::new();
    if da != db {
        diffs.push(format!("dims {db:?} vs {da:?}"));
    }
    let (sa, sb) = (a.spacing(), b.spacing());
    if (0..3).any(|d| (f64::from(sa[d]) - f64::from(sb[d])).abs() > SPACING_TOLERANCE_MM) {
        diffs.push(format!(
            "spacing {sb:?} vs {sa:?} mm (tolerance {SPACING_TOLERANCE_MM} mm)"
        ));
    }
    let (aa, ab) = (a.affine(), b.affine());
    // The corner that moves most; a NaN distance (NaN affine entries) counts as infinite.
    let worst = (0..8)
        .map(|corner| {
            let ijk = [0, 1, 2].map(|d| {
                if corner & (1 << d) != 0 {
                    da[d].max(1) - 1
                } else {
                    0
                }
            });
            let (pa, pb) = (world(&aa, ijk), world(&ab, ijk));
            let dist = (0..3).map(|d| (pa[d] - pb[d]).powi(2)).sum::<f64>().sqrt();
            let dist = if dist.is_nan() { f64::INFINITY } else { dist };
            (dist, ijk, pa, pb)
        })
        .max_by(|x, y| x.0.total_cmp(&y.0))
        .expect("eight corners");
    let (dist, ijk, pa, pb) = worst;
    if dist > WORLD_TOLERANCE_MM {
        diffs.push(format!(
            "affine: voxel {ijk:?} is at {} mm but at {} mm in the reference, {dist:.4} mm \
             apart (tolerance {WORLD_TOLERANCE_MM} mm)",
            fmt_point(pb),
            fmt_point(pa)
        ));
    }
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

fn world(m: &Affine, ijk: [usize; 3]) -> [f64; 3] {
    let v = ijk.map(|x| x as f64);
    [0, 1, 2].map(|r| m[r][0] * v[0] + m[r][1] * v[1] + m[r][2] * v[2] + m[r][3])
}

fn fmt_point(p: [f64; 3]) -> String {
    format!("({:.3}, {:.3}, {:.3})", p[0], p[1], p[2])
}

/// A file of a case: its role (`"flair"`, …, `"seg"`) and path.
struct FileRef<'a> {
    role: &'static str,
    path: &'a Path,
}

/// Checks one case (see the module docs) and returns its problems (empty if none).
pub fn check_case(case: &Case, opts: &CheckOptions) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut push = |path: &Path, problem: String| {
        problems.push(Problem {
            case: case.id.clone(),
            path: path.to_path_buf(),
            problem,
        })
    };
    let mut files: Vec<FileRef> = case
        .modalities
        .iter()
        .zip(MODALITIES)
        .map(|(p, role)| FileRef { role, path: p })
        .collect();
    match &case.seg {
        Some(p) => files.push(FileRef {
            role: "seg",
            path: p,
        }),
        None if opts.require_labels => push(
            &case.dir,
            format!(
                "no segmentation: {} is missing (training and evaluation need it)",
                case.dir
                    .join(format!("{}{}seg.nii.gz", case.id, case.naming.separator()))
                    .display()
            ),
        ),
        None => {}
    }
    let mut reference: Option<(&FileRef, Header)> = None;
    for file in &files {
        let chain = |e: VolumeError| error_chain(&e);
        let read: std::result::Result<Header, String> = if file.role == "seg" {
            read_labels(file.path, opts.convention)
                .map(|(_, _, h)| h)
                .map_err(chain)
        } else if opts.read_voxels {
            read_volume(file.path).map_err(chain).and_then(|(v, h)| {
                if v.data.iter().all(|&x| x == 0.0) {
                    Err(format!(
                        "{} modality {} is empty: every voxel is 0",
                        file.role,
                        file.path.display()
                    ))
                } else {
                    Ok(h)
                }
            })
        } else {
            read_header(file.path).map_err(chain)
        };
        let header = match read {
            Ok(h) => h,
            Err(problem) => {
                push(file.path, problem);
                continue;
            }
        };
        match &reference {
            None => reference = Some((file, header)),
            Some((r, rh)) => {
                if let Some(d) = grid_difference(rh, &header) {
                    push(
                        file.path,
                        format!(
                            "{} ({}) is not on the grid of {} ({}): {d}",
                            file.role,
                            file.path.display(),
                            r.role,
                            r.path.display()
                        ),
                    );
                }
            }
        }
    }
    problems
}

/// Whether the folder has no entry at all.
fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut rd| rd.next().is_none())
}

/// Checks the data folder `root` and the cases a command will use: all cases found when
/// `wanted` is `None`, else the ids in `wanted` (e.g. the union of a split's train,
/// meta-val and test ids). Never stops at the first problem: the report lists them all.
///
/// Reported besides the problems of [`check_case`]: a missing or unreadable data folder; an
/// empty case folder ([`crate::brats::discover_cases`] skips it); a case folder without one
/// of its modality files; the same id twice; a wanted id without a case folder. Folders that
/// are not empty and hold no `<name>_*.nii[.gz]` / `<name>-*.nii[.gz]` file (run outputs,
/// notes) are not cases and are skipped, as by discovery. Cases are checked in parallel.
pub fn check_data(root: &Path, wanted: Option<&[String]>, opts: &CheckOptions) -> DataReport {
    let mut report = DataReport {
        root: root.to_path_buf(),
        cases: Vec::new(),
        problems: Vec::new(),
    };
    let root_problem = |problem: String| Problem {
        case: String::new(),
        path: root.to_path_buf(),
        problem,
    };
    if !root.is_dir() {
        let problem = if root.exists() {
            format!("data folder {} is not a folder", root.display())
        } else {
            format!("missing data folder: {}", root.display())
        };
        report.problems.push(root_problem(problem));
        if let Some(w) = wanted {
            report.cases = w.to_vec();
            report.cases.sort();
        }
        return report;
    }
    let is_wanted = |id: &str| wanted.is_none_or(|w| w.iter().any(|x| x == id));
    let groups: Vec<(Option<String>, PathBuf)> = {
        let g: Vec<_> = ["HGG", "LGG"]
            .into_iter()
            .filter(|g| root.join(g).is_dir())
            .map(|g| (Some(g.to_string()), root.join(g)))
            .collect();
        if g.is_empty() {
            vec![(None, root.to_path_buf())]
        } else {
            g
        }
    };
    // (id, folder, case or its problem)
    let mut found: Vec<(String, PathBuf, std::result::Result<Case, String>)> = Vec::new();
    for (group, dir) in &groups {
        let subdirs = match crate::brats::sorted_subdirs(dir) {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(root_problem(error_chain(&e)));
                continue;
            }
        };
        for sub in subdirs {
            let id = sub
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if is_empty_dir(&sub) {
                let f = |n: FileNaming| {
                    format!("{id}{}{}.nii.gz", n.separator(), n.modality_suffixes()[0])
                };
                found.push((
                    id.clone(),
                    sub.clone(),
                    Err(format!(
                        "empty case folder {} (expected {}, ... or {}, ...)",
                        sub.display(),
                        f(FileNaming::Brats2018),
                        f(FileNaming::Brats2023)
                    )),
                ));
            } else if crate::brats::is_case_dir(&sub) {
                let case = Case::from_dir(&sub, group.clone()).map_err(|e| error_chain(&e));
                found.push((id, sub, case));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    for w in found.windows(2) {
        if w[0].0 == w[1].0 && is_wanted(&w[0].0) {
            report.problems.push(Problem {
                case: w[0].0.clone(),
                path: w[1].1.clone(),
                problem: format!(
                    "case id {} appears twice: {} and {}",
                    w[0].0,
                    w[0].1.display(),
                    w[1].1.display()
                ),
            });
        }
    }
    let mut ids: Vec<String> = found
        .iter()
        .map(|f| f.0.clone())
        .filter(|id| is_wanted(id))
        .collect();
    if let Some(w) = wanted {
        for id in w {
            if !found.iter().any(|f| &f.0 == id) {
                report.problems.push(Problem {
                    case: id.clone(),
                    path: root.join(id),
                    problem: format!(
                        "no case folder {id} under {} (the case is in the split)",
                        root.display()
                    ),
                });
                ids.push(id.clone());
            }
        }
    }
    ids.sort();
    ids.dedup();
    report.cases = ids;
    let per_case: Vec<Vec<Problem>> = found
        .par_iter()
        .filter(|f| is_wanted(&f.0))
        .map(|(id, dir, case)| match case {
            Ok(c) => check_case(c, opts),
            Err(problem) => vec![Problem {
                case: id.clone(),
                path: dir.clone(),
                problem: problem.clone(),
            }],
        })
        .collect();
    report.problems.extend(per_case.into_iter().flatten());
    report.problems.sort_by(|a, b| a.case.cmp(&b.case));
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brats::{MODALITY_SUFFIXES, load_case};
    use crate::nifti_io::test_support::TempDir;
    use crate::nifti_io::{StorageType, write_labels_like, write_volume_as};
    use crate::volume::Volume;

    const DIMS: [usize; 3] = [6, 5, 4];

    fn header(spacing: [f32; 3], shift_x: f32) -> Header {
        let h = Header::synthetic(DIMS, spacing).unwrap();
        let mut raw = h.raw().clone();
        raw.srow_x[3] += shift_x;
        raw.quatern_x += shift_x;
        Header::from_parts(raw, Vec::new(), None)
    }

    /// What to break in a synthetic case.
    #[derive(Clone, Copy, PartialEq)]
    enum Break {
        Nothing,
        T1IsADirectory,
        T2Spacing,
        T1cShifted(f32),
        SegDims,
        SegLabel3,
        NoSeg,
        NoT1,
        FlairTruncated,
        T2AllZero,
    }

    fn write_case(root: &Path, id: &str, b: Break) {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let v = Volume::new(DIMS, (0..120).map(|x| (x % 50) as f32 + 1.0).collect()).unwrap();
        for (m, s) in MODALITY_SUFFIXES.iter().enumerate() {
            let p = dir.join(format!("{id}_{s}.nii.gz"));
            match (m, b) {
                (1, Break::T1IsADirectory) => std::fs::create_dir_all(&p).unwrap(),
                (1, Break::NoT1) => {}
                (3, Break::T2Spacing) => {
                    let h = header([1.0, 1.0, 1.2], 0.0);
                    write_volume_as(&p, &v, &h, StorageType::I16).unwrap();
                }
                (2, Break::T1cShifted(dx)) => {
                    write_volume_as(&p, &v, &header([1.0; 3], dx), StorageType::I16).unwrap();
                }
                (3, Break::T2AllZero) => {
                    let z = Volume::zeros(DIMS);
                    write_volume_as(&p, &z, &header([1.0; 3], 0.0), StorageType::I16).unwrap();
                }
                _ => write_volume_as(&p, &v, &header([1.0; 3], 0.0), StorageType::I16).unwrap(),
            }
            if m == 0 && b == Break::FlairTruncated {
                let bytes = std::fs::read(&p).unwrap();
                std::fs::write(&p, &bytes[..bytes.len() - 20]).unwrap();
            }
        }
        let seg_path = dir.join(format!("{id}_seg.nii.gz"));
        let mut seg = vec![0u8; 120];
        seg[7] = 4;
        match b {
            Break::NoSeg => {}
            Break::SegDims => {
                let h = Header::synthetic([6, 5, 3], [1.0; 3]).unwrap();
                write_labels_like(&seg_path, &seg[..90], &h).unwrap();
            }
            Break::SegLabel3 => {
                seg[9] = 3;
                write_labels_like(&seg_path, &seg, &header([1.0; 3], 0.0)).unwrap();
            }
            _ => write_labels_like(&seg_path, &seg, &header([1.0; 3], 0.0)).unwrap(),
        }
    }

    #[test]
    fn one_report_lists_every_bad_case_and_what_is_wrong() {
        let tmp = TempDir::new("check");
        let root = tmp.path().join("data");
        let cases = [
            ("a_good", Break::Nothing),
            ("b_t1_dir", Break::T1IsADirectory),
            ("c_t2_spacing", Break::T2Spacing),
            ("d_t1c_shifted", Break::T1cShifted(2.0)),
            ("d_t1c_rounding", Break::T1cShifted(0.004)),
            ("e_seg_dims", Break::SegDims),
            ("f_seg_label", Break::SegLabel3),
            ("g_no_seg", Break::NoSeg),
            ("h_no_t1", Break::NoT1),
            ("i_flair_cut", Break::FlairTruncated),
            ("j_t2_zero", Break::T2AllZero),
        ];
        for (id, b) in cases {
            write_case(&root, id, b);
        }
        std::fs::create_dir_all(root.join("k_empty")).unwrap();
        std::fs::create_dir_all(root.join("runs").join("x")).unwrap(); // not a case: skipped
        let opts = CheckOptions::default();
        let report = check_data(&root, None, &opts);
        let text = report.to_string();
        eprintln!("{text}");
        let of = |id: &str| -> Vec<&str> {
            report
                .problems
                .iter()
                .filter(|p| p.case == id)
                .map(|p| p.problem.as_str())
                .collect()
        };
        let has = |id: &str, parts: &[&str]| {
            let ps = of(id);
            assert!(
                ps.iter().any(|p| parts.iter().all(|x| p.contains(x))),
                "{id}: {parts:?} not in {ps:?}"
            );
        };
        assert!(of("a_good").is_empty() && of("d_t1c_rounding").is_empty());
        has(
            "b_t1_dir",
            &["b_t1_dir_t1.nii.gz is a directory, expected a .nii.gz"],
        );
        has(
            "c_t2_spacing",
            &[
                "t2 (",
                "c_t2_spacing_t2.nii.gz",
                "flair (",
                "spacing [1.0, 1.0, 1.2] vs [1.0, 1.0, 1.0]",
            ],
        );
        has(
            "d_t1c_shifted",
            &["t1c (", "is not on the grid of flair", "2.0000 mm apart"],
        );
        has("e_seg_dims", &["seg (", "dims [6, 5, 3] vs [6, 5, 4]"]);
        has("f_seg_label", &["f_seg_label_seg.nii.gz", "value 3"]);
        has("g_no_seg", &["no segmentation", "g_no_seg_seg.nii.gz"]);
        has("h_no_t1", &["h_no_t1_t1.nii.gz", "t1 modality"]);
        has("i_flair_cut", &["i_flair_cut_flair.nii.gz", "gzip"]);
        has("j_t2_zero", &["j_t2_zero_t2.nii.gz", "every voxel is 0"]);
        has("k_empty", &["empty case folder", "k_empty_flair.nii.gz"]);
        assert!(of("runs").is_empty() && !report.cases.contains(&"runs".to_string()));
        // One problem per bad case here, all in one report, in id order.
        assert_eq!(report.problems.len(), 10, "{text}");
        assert_eq!(report.bad_cases(), 10);
        assert_eq!(report.cases.len(), 12);
        let ids: Vec<&str> = report.problems.iter().map(|p| p.case.as_str()).collect();
        assert!(ids.windows(2).all(|w| w[0] <= w[1]));
        assert!(text.contains("10 problem(s) in 10 of 12 case(s)"), "{text}");
        let err = report.clone().into_result().unwrap_err();
        assert!(matches!(err, VolumeError::DataCheck(_)));
        assert_eq!(err.to_string(), text);

        // Headers only: the truncated gzip and the zero image go unnoticed, the rest not.
        let quick = check_data(
            &root,
            None,
            &CheckOptions {
                read_voxels: false,
                ..opts
            },
        );
        let bad: Vec<&str> = quick.problems.iter().map(|p| p.case.as_str()).collect();
        assert!(
            !bad.contains(&"i_flair_cut") && !bad.contains(&"j_t2_zero"),
            "{bad:?}"
        );
        assert_eq!(quick.problems.len(), 8, "{quick}");

        // Only the wanted cases; a wanted id without folder is reported; so is an empty
        // folder that is wanted, but not one that is not.
        let wanted: Vec<String> = ["a_good", "g_no_seg", "k_empty", "z_missing"]
            .map(String::from)
            .to_vec();
        let r = check_data(&root, Some(&wanted), &opts);
        let ids: Vec<&str> = r.problems.iter().map(|p| p.case.as_str()).collect();
        assert_eq!(ids, ["g_no_seg", "k_empty", "z_missing"], "{r}");
        assert!(r.problems[2].problem.contains("no case folder z_missing"));
        assert_eq!(r.cases, wanted);
        let r = check_data(
            &root,
            Some(&["a_good".to_string()]),
            &CheckOptions {
                require_labels: false,
                ..opts
            },
        );
        assert!(r.is_ok(), "{r}");
        r.into_result().unwrap();

        // A missing data folder is one problem.
        let r = check_data(&tmp.path().join("nope"), None, &opts);
        assert_eq!(r.problems.len(), 1);
        assert!(r.to_string().contains("missing data folder"), "{r}");

        // load_case refuses what the check reports about grids, naming both files.
        let c = Case::from_dir(root.join("d_t1c_shifted"), None).unwrap();
        let err = load_case(&c, LabelConvention::Brats2018).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, VolumeError::GridMismatch { .. }), "{msg}");
        assert!(
            msg.contains("d_t1c_shifted_t1ce.nii.gz") && msg.contains("d_t1c_shifted_flair.nii.gz"),
            "{msg}"
        );
        let c = Case::from_dir(root.join("d_t1c_rounding"), None).unwrap();
        load_case(&c, LabelConvention::Brats2018).unwrap();
    }

    #[test]
    fn grid_tolerances_are_those_stated() {
        let a = header([1.0; 3], 0.0);
        assert_eq!(grid_difference(&a, &a), None);
        // Spacing: 0.0005 mm passes, 0.002 mm does not.
        assert_eq!(grid_difference(&a, &header([1.0, 1.0, 1.0005], 0.0)), None);
        let d = grid_difference(&a, &header([1.0, 1.002, 1.0], 0.0)).unwrap();
        assert!(d.contains("spacing"), "{d}");
        // Affine: a 0.005 mm shift passes, 0.02 mm does not.
        assert_eq!(grid_difference(&a, &header([1.0; 3], 0.005)), None);
        let d = grid_difference(&a, &header([1.0; 3], 0.02)).unwrap();
        assert!(
            d.contains("0.0200 mm apart") && !d.contains("spacing"),
            "{d}"
        );
        // A rotation by 0.01 rad about k moves the far corner (5, 4, 3) by about
        // |(5, 4)| · 0.01 = 0.064 mm: reported, at that corner.
        let mut raw = a.raw().clone();
        let (c, s) = (0.01f32.cos(), 0.01f32.sin());
        raw.srow_x = [c, -s, 0.0, 0.0];
        raw.srow_y = [s, c, 0.0, 0.0];
        let rot = Header::from_parts(raw, Vec::new(), None);
        let d = grid_difference(&a, &rot).unwrap();
        assert!(d.contains("[5, 4, 0]") || d.contains("[5, 4, 3]"), "{d}");
        assert!(d.contains("0.064"), "{d}");
    }

    /// OS errors appear once in a printed error chain (they are the source, not repeated in
    /// the message), and a folder where a file should be is said so.
    #[test]
    fn os_errors_are_printed_once() {
        let tmp = TempDir::new("oserr");
        let file = tmp.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = read_volume(file.join("t1.nii.gz")).unwrap_err();
        let chain = error_chain(&err);
        assert!(matches!(err, VolumeError::Io { .. }), "{chain}");
        assert_eq!(chain.matches("os error 20").count(), 1, "{chain}");
        assert!(
            chain.starts_with("I/O error on ") && chain.contains("plain/t1.nii.gz"),
            "{chain}"
        );
        let err = read_volume(tmp.path()).unwrap_err();
        assert!(matches!(err, VolumeError::NotAFile { .. }));
        assert_eq!(
            error_chain(&err),
            format!(
                "{} is a directory, expected a .nii.gz or .nii file",
                tmp.path().display()
            )
        );
        // JSON errors: the parser's message once.
        let p = tmp.path().join("splits.json");
        std::fs::write(&p, "{ nope").unwrap();
        let err = crate::splits::Splits::load(&p).unwrap_err();
        let chain = error_chain(&err);
        let inner = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(chain.matches(&inner).count(), 1, "{chain}");
    }
}
