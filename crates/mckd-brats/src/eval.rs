//! `brats eval`: the shortcut that predicts the test cases of trained runs and scores them, as
//! the two file stages of [`crate::evaluate`] one after the other, then writes the comparison
//! table, `results.json`, `per_case.csv` and the overlay of one test case (paper Fig. 6).

use std::path::{Path, PathBuf};
use std::time::Instant;

use mckd_core::{Method as _, all_subsets};
use mckd_train::report::{Results, json_f64};
use mckd_train::run::RunDir;
use mckd_volume::{
    Case, LabelConvention, LoadedCase, MODALITIES, Splits, discover_cases, load_case, read_labels,
};
use serde_json::{Map, json};

use crate::error::{BratsError, Result};
use crate::evaluate::{evaluate_folder, per_case_csv, predict_cases, prediction_path};
use crate::plots::{PlotData, SliceData, write_plots};
use crate::report::{MethodEval, make_report};
use crate::train::load_model;

/// The report of an evaluation.
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// `table.md` content.
    pub markdown: String,
    /// `table.csv` content.
    pub csv: String,
    /// `results.json` content.
    pub results: Results,
    /// Per method, the means per subset.
    pub evals: Vec<MethodEval>,
}

/// The subset of the overlay figure: T1 alone (paper Fig. 6).
const SLICE_SUBSET: [bool; 4] = [false, true, false, false];

/// The test cases of a run folder's split among the cases of `root`.
pub fn test_cases(run: &Path, root: &Path) -> Result<Vec<Case>> {
    let splits = Splits::load(run.join("splits.json"))?;
    let all = discover_cases(root)?;
    splits
        .test
        .iter()
        .map(|id| {
            all.iter().find(|c| &c.id == id).cloned().ok_or_else(|| {
                BratsError::Invalid(format!(
                    "test case {id} of {} is not in {}",
                    run.join("splits.json").display(),
                    root.display()
                ))
            })
        })
        .collect()
}

/// Evaluates trained runs (their folders; the first run's test split and data, unless `data`
/// overrides the cases root) on every subset: predictions in `out/predictions/<method>/`,
/// scores in `out/eval/<method>/<subset>/summary.json`, then `table.md`, `table.csv`,
/// `per_case.csv`, `results.json` and `overlay.png`.
pub fn evaluate_runs(runs: &[PathBuf], data: Option<&Path>, out: &RunDir) -> Result<EvalReport> {
    let started = Instant::now();
    let first = runs
        .first()
        .ok_or_else(|| BratsError::Invalid("nothing to evaluate".into()))?;
    let cfg0 = crate::train::load_config(first)?;
    let root = data
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cfg0.task.data.clone());
    let cases = test_cases(first, &root)?;
    let subsets = all_subsets(MODALITIES.len());
    let mut evals = Vec::new();
    let mut per_case = Vec::new();
    let mut slice: Option<SliceData> = None;
    for run in runs {
        let plain = cfg0
            .device
            .device()
            .map_err(|e| BratsError::Invalid(e.to_string()))?;
        let (cfg, method) = load_model(run, &plain)?;
        let name = method.name().to_string();
        let pred_dir = out.path().join("predictions").join(&name);
        let predictor = method.predictor();
        predict_cases(
            predictor.as_ref(),
            &cases,
            &subsets,
            &cfg.task.infer,
            cfg.task.convention,
            &crate::evaluate::Grid::of(&cfg.task),
            &pred_dir,
            &plain,
        )?;
        let scores = evaluate_folder(
            &pred_dir,
            &cases,
            &subsets,
            cfg.task.convention,
            Some(&out.path().join("eval").join(&name)),
        )?;
        if let Some(case) = cases.first() {
            let s = match &mut slice {
                Some(s) => s,
                None => slice.insert(slice_of(&load_case(case, cfg.task.convention)?)?),
            };
            let (labels, _, _) = read_labels(
                prediction_path(&pred_dir, &SLICE_SUBSET, &case.id),
                cfg.task.convention,
            )?;
            let plane = s.size[0] * s.size[1];
            s.predictions.insert(
                crate::config::Method::title_of(&name).to_string(),
                json!(labels[s.k * plane..(s.k + 1) * plane].to_vec()),
            );
        }
        evals.push(MethodEval {
            title: crate::config::Method::title_of(&name).to_string(),
            name: name.clone(),
            subsets: scores.iter().map(|s| (s.mask.clone(), s.means)).collect(),
            iwv: method.state_values(),
        });
        per_case.push((name, scores));
    }
    let mut report = make_report(&evals);
    let test_ids: Vec<&String> = cases.iter().map(|c| &c.id).collect();
    report
        .results
        .extra
        .insert("test_cases".into(), json!(test_ids));
    report.results.extra.insert(
        "eval_seconds".into(),
        json_f64(started.elapsed().as_secs_f64()),
    );
    out.write("table.md", report.markdown.as_bytes())?;
    out.write("table.csv", report.csv.as_bytes())?;
    out.write("per_case.csv", per_case_csv(&per_case).as_bytes())?;
    out.write_json("results.json", &report.results)?;
    if let Some(s) = &slice {
        write_plots(
            out,
            &PlotData {
                slice: Some(s),
                ..Default::default()
            },
        )?;
    }
    Ok(EvalReport {
        markdown: report.markdown,
        csv: report.csv,
        results: report.results,
        evals,
    })
}

/// The axial slice with the most tumour voxels of a case: the input of the overlay subset
/// (T1) and the ground truth.
fn slice_of(case: &LoadedCase) -> Result<SliceData> {
    let seg = case
        .seg
        .as_ref()
        .ok_or_else(|| BratsError::Invalid(format!("test case {} has no segmentation", case.id)))?;
    let [di, dj, dk] = case.dims;
    let plane = di * dj;
    let k = (0..dk)
        .max_by_key(|&k| {
            seg[k * plane..(k + 1) * plane]
                .iter()
                .filter(|&&l| l != 0)
                .count()
        })
        .unwrap_or(dk / 2);
    let mut inputs = Map::new();
    for (m, v) in case.modalities.iter().enumerate() {
        if SLICE_SUBSET[m] {
            inputs.insert(
                MODALITIES[m].to_string(),
                json!(v.data[k * plane..(k + 1) * plane].to_vec()),
            );
        }
    }
    Ok(SliceData {
        case: case.id.clone(),
        k,
        size: [di, dj],
        subset: mckd_core::present_names(&MODALITIES, &SLICE_SUBSET),
        inputs,
        ground_truth: seg[k * plane..(k + 1) * plane].to_vec(),
        predictions: Map::new(),
    })
}

/// The label convention a command uses: the given one, else what the case files' naming
/// implies.
pub fn convention_of(given: Option<LabelConvention>, cases: &[Case]) -> LabelConvention {
    given.unwrap_or_else(|| mckd_volume::implied_convention(cases))
}
