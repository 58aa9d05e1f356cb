//! A grid of runs (the Table 2 reproduction) as plan → run one → merge.
//!
//! Layout of a grid folder:
//!
//! ```text
//! OUT/plan.json                 the runs: label → run folder (relative)
//! OUT/splits.json               the split used (smil_split.json format)
//! OUT/runs/<label>/config.json  each run's whole config (self-contained)
//! OUT/runs/<label>/status.json  running / finished / failed
//! OUT/runs/<label>/result.json  its outcome (when finished), train_log.csv, checkpoint/,
//!                               pretrain_log.csv (peers with a pretraining)
//! OUT/results.json, table2.md, table2.csv, runs.json, iwv_series.csv, iwv.png   (merge)
//! ```
//!
//! One machine runs the plan in this process or in child processes (`--jobs`); a finished run is
//! never trained again, an unfinished one resumes from its checkpoint.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use mckd_data::AvMnist;
use mckd_train::run::{RunDir, RunState};
use mckd_train::train::log_csv;
use serde::{Deserialize, Serialize};

use crate::config::{AvRunConfig, MethodKind, Setting};
use crate::run::{AvmnistError, Result, RunOutcome, RunSpec, log_columns, run_one};

/// `plan.json`: the runs of a grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The settings (rows) of the table, in order.
    pub rows: Vec<Setting>,
    /// The runs, longest first.
    pub runs: Vec<PlannedRun>,
}

/// One run of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedRun {
    /// `method[-setting]-seed<k>`.
    pub label: String,
    /// Its folder, relative to the grid folder.
    pub dir: PathBuf,
}

/// The run configs of a reproduction: setting-independent methods once per seed, the others per
/// setting and seed, each derived from `base(kind, setting, seed)`.
pub fn plan_configs(
    methods: &[MethodKind],
    settings: &[Setting],
    seeds: impl IntoIterator<Item = u64>,
    base: &dyn Fn(MethodKind, Option<Setting>, u64) -> AvRunConfig,
) -> Vec<AvRunConfig> {
    let mut out = Vec::new();
    for seed in seeds {
        for &m in methods {
            if m.needs_setting() {
                for &s in settings {
                    out.push(base(m, Some(s), seed));
                }
            } else {
                out.push(base(m, None, seed));
            }
        }
    }
    // Seed by seed; within a seed the longest runs first keeps parallel workers busy to the
    // end.
    out.sort_by_key(|c| (c.seed, cost_rank(c.method.kind())));
    out
}

/// The order of a seed's runs, longest first (measured: SMIL ≈ 2 Baseline runs, the
/// pretrained peers ≈ 1.5, ShaSpec and MCKD ≈ 1.2).
fn cost_rank(kind: MethodKind) -> u8 {
    match kind {
        MethodKind::Smil | MethodKind::SmilLenet => 0,
        MethodKind::Gan | MethodKind::Autoencoder | MethodKind::Full2miss => 1,
        MethodKind::Shaspec => 2,
        MethodKind::Mckd => 3,
        MethodKind::Upperb => 4,
        _ => 5,
    }
}

/// Writes a grid: `plan.json` and every run's `config.json` (runs already planned identically
/// are kept; a different plan in the folder is an error naming it).
pub fn write_plan(out: &RunDir, rows: &[Setting], configs: &[AvRunConfig]) -> Result<Plan> {
    let plan = Plan {
        rows: rows.to_vec(),
        runs: configs
            .iter()
            .map(|c| {
                let label = RunSpec::of(c).label();
                PlannedRun {
                    dir: PathBuf::from("runs").join(&label),
                    label,
                }
            })
            .collect(),
    };
    let plan_path = out.file("plan.json");
    if plan_path.is_file() {
        let old: Plan = mckd_train::config::read_json(&plan_path)?;
        if old != plan {
            return Err(AvmnistError::File {
                path: plan_path,
                msg: "the folder holds another grid (different runs); use another --out or \
                      --overwrite"
                    .into(),
            });
        }
    }
    for (run, cfg) in plan.runs.iter().zip(configs) {
        let dir = RunDir::create(&out.path().join(&run.dir))?;
        let path = dir.file("config.json");
        if path.is_file() {
            let old: AvRunConfig = mckd_train::config::read_json(&path)?;
            if &old != cfg {
                return Err(AvmnistError::File {
                    path,
                    msg: "this run was planned with another config; use another --out or \
                          --overwrite"
                        .into(),
                });
            }
        } else {
            dir.write("config.json", cfg.to_json().as_bytes())?;
        }
    }
    out.write_json("plan.json", &plan)?;
    Ok(plan)
}

/// Whether the run in `dir` has finished (its result can be read).
pub fn is_finished(dir: &Path) -> bool {
    RunDir::create(dir)
        .ok()
        .and_then(|d| d.status())
        .is_some_and(|s| s.state == RunState::Finished)
        && dir.join("result.json").is_file()
}

/// Trains the run whose folder is `dir` (it holds `config.json`), resuming from its checkpoint
/// if it has one; writes `train_log.csv`, `result.json` and `status.json`. A finished run is
/// not trained again: its outcome is read back.
pub fn run_in_folder(
    data: &AvMnist,
    dir: &Path,
    device: &Device,
    progress: &indicatif::ProgressBar,
    save_model: bool,
) -> Result<RunOutcome> {
    let run = RunDir::create(dir)?;
    if is_finished(dir) {
        return read_outcome(dir);
    }
    let cfg: AvRunConfig = mckd_train::config::read_json(&run.file("config.json"))?;
    let resume = dir.join(mckd_train::observe::CHECKPOINT_DIR).is_dir()
        || dir.join(".checkpoint.old").is_dir();
    run.set_status(RunState::Running, None, None)?;
    match run_one(data, &cfg, device, progress, Some((&run, resume))) {
        Ok((method, outcome)) => {
            let columns = log_columns(&method, &cfg);
            run.write("train_log.csv", log_csv(&outcome.log, &columns).as_bytes())?;
            if let Some(pre) = method.pre_log() {
                run.write("pretrain_log.csv", pre.as_bytes())?;
            }
            if save_model {
                crate::cli::save_model(&method, &run.file("model.bpk"))?;
            }
            run.write_json("result.json", &outcome)?;
            run.set_status(RunState::Finished, None, Some(outcome.iterations))?;
            Ok(outcome)
        }
        Err(e) => {
            let _ = run.set_status(RunState::Failed, Some(e.to_string()), None);
            Err(e)
        }
    }
}

/// Reads a finished run's outcome (`result.json` + `train_log.csv`).
pub fn read_outcome(dir: &Path) -> Result<RunOutcome> {
    let mut o: RunOutcome = mckd_train::config::read_json(&dir.join("result.json"))?;
    let log_path = dir.join("train_log.csv");
    let text = std::fs::read_to_string(&log_path).map_err(|e| AvmnistError::File {
        path: log_path.clone(),
        msg: e.to_string(),
    })?;
    o.log = mckd_train::train::parse_log_csv(&text)
        .map_err(|msg| AvmnistError::File {
            path: log_path,
            msg,
        })?
        .1;
    Ok(o)
}

/// What a merge found.
pub struct Merged {
    /// Outcomes of the finished runs, in plan order.
    pub outcomes: Vec<RunOutcome>,
    /// Labels of runs that have not finished (never started, running or killed).
    pub missing: Vec<String>,
    /// Labels and messages of failed runs.
    pub failed: Vec<(String, String)>,
}

/// Reads every run of a grid folder.
pub fn merge(out: &Path) -> Result<(Plan, Merged)> {
    let plan: Plan = mckd_train::config::read_json(&out.join("plan.json"))?;
    let mut merged = Merged {
        outcomes: Vec::new(),
        missing: Vec::new(),
        failed: Vec::new(),
    };
    for run in &plan.runs {
        let dir = out.join(&run.dir);
        if is_finished(&dir) {
            merged.outcomes.push(read_outcome(&dir)?);
            continue;
        }
        match RunDir::create(&dir).ok().and_then(|d| d.status()) {
            Some(s) if s.state == RunState::Failed => merged
                .failed
                .push((run.label.clone(), s.message.unwrap_or_default())),
            _ => merged.missing.push(run.label.clone()),
        }
    }
    Ok((plan, merged))
}
