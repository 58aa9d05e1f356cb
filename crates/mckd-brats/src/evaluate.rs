//! Prediction and evaluation as separate stages on files, as nnU-Net does: [`predict_cases`]
//! writes label maps for any list of subsets and any cases, and [`evaluate_folder`] scores any
//! prediction folder against any reference cases, so that an external prediction can be scored
//! and a metric recomputed without inference.
//!
//! A prediction folder holds one sub-folder per subset, named by its present modalities
//! (`flair+t1c`), with one `<case>.nii.gz` label map per case (labels {0, 1, 2, 4}, or
//! {0, 1, 2, 3} under the 2023 convention), written with the case's header and affine.
//! Scoring writes `<out>/<subset>/summary.json` (per case and mean, nnU-Net's shape).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use mckd_core::all_subsets;
use mckd_volume::metrics::write_summary_json;
use mckd_volume::{
    Case, CaseMetrics, LabelConvention, MODALITIES, MeanMetrics, evaluate_case, load_case,
    mean_metrics, read_labels, restore_labels, write_labels_like,
};

use crate::error::{BratsError, Result};
use crate::infer::{InferConfig, TilePredictor, predict_labels, predict_probs};

/// The folder name of a subset: its present modalities joined by `+` (`flair+t1c`).
pub fn subset_name(mask: &[bool]) -> String {
    mckd_core::present_names(&MODALITIES, mask).join("+")
}

/// The mask of a subset folder name (`flair+t1c`), or an error naming the folder.
pub fn parse_subset(name: &str) -> Result<Vec<bool>> {
    let mut mask = vec![false; MODALITIES.len()];
    for part in name.split('+') {
        let m = MODALITIES.iter().position(|&n| n == part).ok_or_else(|| {
            BratsError::Invalid(format!(
                "`{name}` is not a subset of {}: `{part}` is not a modality (use e.g. \
                 flair+t1c)",
                MODALITIES.join(", ")
            ))
        })?;
        mask[m] = true;
    }
    Ok(mask)
}

/// Subsets from a command-line list: `all` (the 15), or names separated by commas.
pub fn parse_subsets(list: &str) -> Result<Vec<Vec<bool>>> {
    if list.trim() == "all" {
        return Ok(all_subsets(MODALITIES.len()));
    }
    let mut out: Vec<Vec<bool>> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let m = parse_subset(name)?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    if out.is_empty() {
        return Err(BratsError::Invalid(
            "no subset given (use `all` or e.g. `t1,flair+t1c`)".into(),
        ));
    }
    Ok(out)
}

/// The file of case `id`'s prediction for `mask` in a prediction folder.
pub fn prediction_path(folder: &Path, mask: &[bool], id: &str) -> PathBuf {
    folder.join(subset_name(mask)).join(format!("{id}.nii.gz"))
}

/// How a case is fed to the network: at its own grid, or prepared at another spacing (cropped
/// to the brain, resampled; the predictions resampled back to the original grid).
#[derive(Debug, Clone)]
pub enum Grid {
    /// The original grid.
    Original,
    /// Prepared at `spacing` mm from `cache`.
    Spacing {
        /// Target spacing (mm).
        spacing: f32,
        /// Cache of prepared cases.
        cache: mckd_volume::PreparedCache,
    },
}

impl Grid {
    /// The grid of a run's task.
    pub fn of(task: &crate::config::BratsTask) -> Self {
        if task.spacing == 1.0 {
            Grid::Original
        } else {
            Grid::Spacing {
                spacing: task.spacing,
                cache: task.prepared_cache(),
            }
        }
    }
}

/// Predicts every case for every subset and writes the label maps (always on the case's
/// original grid, with its header and affine) into `out` (see the module docs); progress with
/// ETA over cases × subsets. Returns the files written.
#[allow(clippy::too_many_arguments)]
pub fn predict_cases(
    predictor: &dyn TilePredictor,
    cases: &[Case],
    subsets: &[Vec<bool>],
    infer: &InferConfig,
    convention: LabelConvention,
    grid: &Grid,
    out: &Path,
    device: &Device,
) -> Result<Vec<PathBuf>> {
    let bar = mckd_train::progress_bar((cases.len() * subsets.len()) as u64, "predict");
    let mut written = Vec::new();
    for case in cases {
        match grid {
            Grid::Original => {
                let loaded = load_case(case, convention)?;
                for mask in subsets {
                    let labels = predict_labels(
                        predictor,
                        &loaded.modalities,
                        mask,
                        infer,
                        convention,
                        device,
                    )?;
                    let path = prediction_path(out, mask, &case.id);
                    write_label_file(&path, &labels, &loaded.header)?;
                    written.push(path);
                    bar.inc(1);
                }
            }
            Grid::Spacing { spacing, cache } => {
                let (prepared, _) = cache.load_or_prepare(case, *spacing, convention)?;
                for mask in subsets {
                    let probs =
                        predict_probs(predictor, &prepared.modalities, mask, infer, device)?;
                    let labels =
                        restore_labels(&probs, &prepared.grid, infer.threshold, convention)?;
                    let path = prediction_path(out, mask, &case.id);
                    write_label_file(&path, &labels, &prepared.header)?;
                    written.push(path);
                    bar.inc(1);
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(written)
}

/// Writes a label map (atomically: `write_labels_like` writes a temporary file in the same
/// folder and renames it), creating its folder.
pub fn write_label_file(path: &Path, labels: &[u8], header: &mckd_volume::Header) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| {
        BratsError::Invalid(format!("cannot create the folder {}: {e}", dir.display()))
    })?;
    Ok(write_labels_like(path, labels, header)?)
}

/// The scores of one subset.
#[derive(Debug, Clone)]
pub struct SubsetScores {
    /// The subset.
    pub mask: Vec<bool>,
    /// Per case, in the order of the reference cases.
    pub per_case: Vec<(String, CaseMetrics)>,
    /// Means over the cases.
    pub means: MeanMetrics,
}

/// The subsets a prediction folder holds (its sub-folders), in [`all_subsets`] order.
pub fn subsets_in(pred: &Path) -> Result<Vec<Vec<bool>>> {
    let entries = std::fs::read_dir(pred).map_err(|e| {
        BratsError::Invalid(format!(
            "cannot read the prediction folder {}: {e}",
            pred.display()
        ))
    })?;
    let mut found = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() && !name.starts_with('.') {
            found.push(parse_subset(&name).map_err(|_| {
                BratsError::Invalid(format!(
                    "{} is not a subset folder (expected names like flair+t1c)",
                    e.path().display()
                ))
            })?);
        }
    }
    let order = all_subsets(MODALITIES.len());
    found.sort_by_key(|m| order.iter().position(|o| o == m));
    if found.is_empty() {
        return Err(BratsError::Invalid(format!(
            "{} holds no subset folders (flair, t1+t1c, ...)",
            pred.display()
        )));
    }
    Ok(found)
}

/// Scores the predictions in `pred` for `subsets` against the segmentations of `cases`
/// (Dice and HD95 of ET/TC/WT per case; means per subset). Every case must have a prediction in
/// every subset, on its reference's grid: otherwise an error names the case and the file.
/// With `out`, writes `<out>/<subset>/summary.json`.
pub fn evaluate_folder(
    pred: &Path,
    cases: &[Case],
    subsets: &[Vec<bool>],
    convention: LabelConvention,
    out: Option<&Path>,
) -> Result<Vec<SubsetScores>> {
    let bar = mckd_train::progress_bar((cases.len() * subsets.len()) as u64, "evaluate");
    // Every reference first (read once), so that a bad reference is found before scoring.
    let mut refs = Vec::with_capacity(cases.len());
    for case in cases {
        let seg_path = case.seg.as_ref().ok_or_else(|| {
            BratsError::Invalid(format!(
                "case {} has no segmentation in {}: it cannot be a reference",
                case.id,
                case.dir.display()
            ))
        })?;
        let (seg, dims, header) = read_labels(seg_path, convention)?;
        refs.push((case.id.clone(), seg, dims, header.spacing()));
    }
    let mut scores = Vec::with_capacity(subsets.len());
    for mask in subsets {
        let mut per_case = Vec::with_capacity(cases.len());
        for (id, seg, dims, spacing) in &refs {
            let path = prediction_path(pred, mask, id);
            if !path.is_file() {
                return Err(BratsError::Invalid(format!(
                    "case {id}: no prediction for subset {} (expected {})",
                    subset_name(mask),
                    path.display()
                )));
            }
            let (labels, pdims, _) = read_labels(&path, convention)?;
            if pdims != *dims {
                return Err(BratsError::Invalid(format!(
                    "case {id}: the prediction {} is {pdims:?} (i,j,k) but its reference is \
                     {dims:?}",
                    path.display()
                )));
            }
            let m = evaluate_case(&labels, seg, *dims, *spacing, convention)?;
            per_case.push((id.clone(), m));
            bar.inc(1);
        }
        let metrics: Vec<CaseMetrics> = per_case.iter().map(|(_, m)| *m).collect();
        let means = mean_metrics(&metrics);
        if let Some(out) = out {
            let dir = out.join(subset_name(mask));
            std::fs::create_dir_all(&dir).map_err(|e| {
                BratsError::Invalid(format!("cannot create {}: {e}", dir.display()))
            })?;
            write_summary_json(dir.join("summary.json"), &per_case, &means)?;
        }
        scores.push(SubsetScores {
            mask: mask.clone(),
            per_case,
            means,
        });
    }
    bar.finish_and_clear();
    Ok(scores)
}

/// `per_case.csv`: one line per (method, subset, case) with Dice and HD95 of ET/TC/WT.
pub fn per_case_csv(evals: &[(String, Vec<SubsetScores>)]) -> String {
    let mut out =
        String::from("method,subset,case,dice_et,dice_tc,dice_wt,hd95_et,hd95_tc,hd95_wt\n");
    for (method, scores) in evals {
        for s in scores {
            for (id, m) in &s.per_case {
                out.push_str(&format!(
                    "{method},{},{id},{},{},{},{},{},{}\n",
                    subset_name(&s.mask),
                    m.dice_et,
                    m.dice_tc,
                    m.dice_wt,
                    m.hd95_et,
                    m.hd95_tc,
                    m.hd95_wt
                ));
            }
        }
    }
    out
}
