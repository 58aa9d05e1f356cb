//! The phantom demo and the real-data experiment as plan → run one → merge (for clusters).
//!
//! Layout of a grid folder (the same seed folders as `demo --seeds`):
//!
//! ```text
//! OUT/plan.json                        the runs: label, seed, method, folder (relative)
//! OUT/seed-<s>/demo_config.json        that seed's experiment settings
//! OUT/seed-<s>/data/                   its phantoms (the demo; written at plan time)
//! OUT/seed-<s>/<method>/config.json    one run's whole config (self-contained, see below)
//! OUT/seed-<s>/<method>/...            status.json, model.bpk, logs, checkpoint/ (run-one)
//! OUT/seed-<s>/results.json, table.md  the seed's evaluation (merge)
//! OUT/seeds_summary.md/.json           across seeds (merge)
//! OUT/table_seeds.md/.csv              Table 1 pooled over every seed's test cases (merge)
//! OUT/table_seeds_{et,tc,wt}.png       the same as bar charts, one per region (merge)
//! ```
//!
//! A planned run's config names no other run: its split is the seeded split every method of
//! the seed draws identically (`make_splits` of the cases and the seed), and a relative data
//! folder (the phantoms, `../data`) is resolved against the run's own folder, so a seed folder
//! can move to another machine. Real cases are named by their absolute path.

use std::path::{Path, PathBuf};
use std::time::Instant;

use mckd_train::run::{RunDir, RunState};
use serde::{Deserialize, Serialize};

use crate::config::{BratsRunConfig, Method};
use crate::demo::{DemoConfig, finish, is_finished, prepare_data, train_in};
use crate::error::{BratsError, Result};
use crate::seeds::{SeedsSummary, seed_dir, summarise};

/// `plan.json` of a BraTS grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BratsPlan {
    /// The seeds, in order.
    pub seeds: Vec<u64>,
    /// The runs, seed by seed.
    pub runs: Vec<PlannedRun>,
}

/// One run of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedRun {
    /// `seed-<s>/<method>`.
    pub label: String,
    /// Its seed.
    pub seed: u64,
    /// Its method.
    pub method: Method,
    /// Its folder, relative to the grid folder.
    pub dir: PathBuf,
}

/// Writes the grid of `cfg` for `seeds` seeds from `cfg.run.seed` into `out`: every seed's
/// settings and phantoms, every run's config, `plan.json`. Trains nothing. Runs already
/// planned identically are kept; a different config in the folder is an error naming it.
pub fn plan(cfg: &DemoConfig, seeds: u64, out: &RunDir) -> Result<BratsPlan> {
    if seeds == 0 {
        return Err(BratsError::Invalid("--seeds must be at least 1".into()));
    }
    let mut plan = BratsPlan {
        seeds: (cfg.run.seed..cfg.run.seed + seeds).collect(),
        runs: Vec::new(),
    };
    for &seed in &plan.seeds {
        let mut c = cfg.clone();
        c.run.seed = seed;
        if c.phantoms.is_none() {
            c.run.task.data = std::path::absolute(&c.run.task.data)
                .map_err(|e| BratsError::Invalid(format!("{}: {e}", c.run.task.data.display())))?;
        }
        let sdir = RunDir::create(&seed_dir(out.path(), seed))?;
        sdir.write_json("demo_config.json", &c)?;
        let data = match c.phantoms {
            // Relative to each run's folder: `seed-<s>/<method>/../data`.
            Some(_) => {
                prepare_data(&c, &sdir)?;
                PathBuf::from("..").join("data")
            }
            None => c.run.task.data.clone(),
        };
        for &method in &c.methods {
            let dir = PathBuf::from(format!("seed-{seed}")).join(method.name());
            let run = RunDir::create(&out.path().join(&dir))?;
            let rc = c.run_config(method, data.clone());
            let path = run.file("config.json");
            if path.is_file() {
                let old: BratsRunConfig = mckd_train::config::read_json(&path)?;
                if old != rc {
                    return Err(BratsError::Config {
                        path,
                        problem: "this run was planned with another config; use another \
                                  --out or --overwrite"
                            .into(),
                    });
                }
            } else {
                run.write("config.json", rc.to_json().as_bytes())?;
            }
            plan.runs.push(PlannedRun {
                label: dir.display().to_string(),
                seed,
                method,
                dir,
            });
        }
    }
    out.write_json("plan.json", &plan)?;
    Ok(plan)
}

/// The config of a planned run, its data folder resolved against the run's folder.
fn planned_config(dir: &Path) -> Result<BratsRunConfig> {
    let mut rc = crate::train::load_config(dir)?;
    if rc.task.data.is_relative() {
        rc.task.data = dir.join(&rc.task.data);
    }
    Ok(rc)
}

/// Whether `dir` holds a BraTS run config (`mckd run-one` serves both tasks).
pub fn is_brats_run(dir: &Path) -> bool {
    std::fs::read(dir.join("config.json"))
        .ok()
        .is_some_and(|b| serde_json::from_slice::<BratsRunConfig>(&b).is_ok())
}

/// Trains one planned run in its folder: a finished run is left as it is, an unfinished one
/// resumes from its checkpoint.
pub fn run_one(dir: &Path) -> Result<()> {
    let run = RunDir::create(dir)?;
    if is_finished(&run) {
        log::info!("{}: already finished, nothing to do", dir.display());
        return Ok(());
    }
    let rc = planned_config(dir)?;
    crate::config::validate(&rc)?;
    train_in(&rc, &run, true)
}

/// Summarises again the finished seeds (`seed-<s>/results.json`) of a one-machine `--seeds`
/// folder, in seed order: `seeds_summary.*` and `table_seeds.*`. `None` if it has none.
pub fn summarise_seeds_folder(out: &RunDir) -> Result<Option<SeedsSummary>> {
    let mut seeds = Vec::new();
    let entries = std::fs::read_dir(out.path())
        .map_err(|e| BratsError::Invalid(format!("{}: {e}", out.path().display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(seed) = name
            .strip_prefix("seed-")
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if entry.path().join("results.json").is_file() {
            seeds.push((seed, entry.path()));
        }
    }
    if seeds.is_empty() {
        return Ok(None);
    }
    seeds.sort();
    let summary = summarise(&seeds)?;
    summary.write(out)?;
    Ok(Some(summary))
}

/// What a merge found.
#[derive(Debug)]
pub struct Merged {
    /// The summary across the seeds whose runs all finished (`None` if there is none).
    pub summary: Option<SeedsSummary>,
    /// Runs not finished (never started, or still running).
    pub missing: Vec<String>,
    /// Failed runs and their messages.
    pub failed: Vec<(String, String)>,
}

/// Evaluates every seed of the grid in `out` whose runs all finished (as the one-machine
/// demo does: `seed-<s>/results.json` and tables), then the summary across them; lists the
/// missing and failed runs.
pub fn merge(out: &RunDir) -> Result<Merged> {
    let plan: BratsPlan = mckd_train::config::read_json(&out.file("plan.json"))?;
    let (mut missing, mut failed, mut complete) = (Vec::new(), Vec::new(), Vec::new());
    for &seed in &plan.seeds {
        let started = Instant::now();
        let runs: Vec<&PlannedRun> = plan.runs.iter().filter(|r| r.seed == seed).collect();
        let mut all = true;
        for r in &runs {
            let dir = RunDir::create(&out.path().join(&r.dir))?;
            if is_finished(&dir) {
                continue;
            }
            all = false;
            match dir.status() {
                Some(s) if s.state == RunState::Failed => {
                    failed.push((r.label.clone(), s.message.unwrap_or_default()))
                }
                _ => missing.push(r.label.clone()),
            }
        }
        if !all {
            continue;
        }
        let sdir = RunDir::create(&seed_dir(out.path(), seed))?;
        let cfg: DemoConfig = mckd_train::config::read_json(&sdir.file("demo_config.json"))?;
        let paths: Vec<PathBuf> = runs.iter().map(|r| out.path().join(&r.dir)).collect();
        let data = planned_config(&paths[0])?.task.data;
        // The runs' own training time (their timing files) plus this evaluation.
        let train: f64 = paths.iter().map(|p| train_seconds(p)).sum();
        finish(&cfg, &paths, Some(&data), &sdir, train, started)?;
        complete.push((seed, sdir.path().to_path_buf()));
    }
    let summary = if complete.is_empty() {
        None
    } else {
        let summary = summarise(&complete)?;
        summary.write(out)?;
        Some(summary)
    };
    Ok(Merged {
        summary,
        missing,
        failed,
    })
}

/// A finished run's training time from its `timing.json`, 0 if absent.
fn train_seconds(run: &Path) -> f64 {
    mckd_train::config::read_json::<serde_json::Value>(&run.join("timing.json"))
        .ok()
        .and_then(|v| crate::demo::train_seconds(&v))
        .map_or(0.0, |(s, _)| s)
}
