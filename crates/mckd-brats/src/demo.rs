//! The phantom demo: seeded synthetic phantoms → every method trained on the same split → the
//! 15-subset evaluation table. Layout under the output folder: `data/` (phantoms), one folder
//! per method (`mckd/`, `baseline/`, ...), `predictions/`, and the evaluation files.

use std::path::PathBuf;
use std::time::Instant;

use mckd_train::config::{Budget, LrSchedule, MetaSchedule, OptimizerConfig};
use mckd_train::report::json_f64;
use mckd_train::run::{RunDir, RunState};
use mckd_volume::{PhantomConfig, discover_cases, write_phantom_dataset};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Arch, BratsRunConfig, Method, Preset, preset};
use crate::error::Result;
use crate::eval::{EvalReport, evaluate_runs};
use crate::peers::PeersConfig;
use crate::train::train_run;

/// The phantoms of a demo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhantomSet {
    /// Phantom cases.
    pub cases: usize,
    /// Phantom size per axis (the crop is the whole phantom).
    pub size: usize,
    /// Range of the phantoms' whole-tumour radius (fraction of the brain's semi-axis).
    pub tumour_radius: [f32; 2],
    /// Patchy enhancing rims (see `PhantomConfig::enhancing_patches`).
    #[serde(default)]
    pub enhancing_patches: bool,
    /// Flair as T2 with CSF dark (see `PhantomConfig::flair_as_t2`).
    #[serde(default)]
    pub flair_as_t2: bool,
}

/// Settings of an experiment — the phantom demo or the real-data one: the data (phantoms to
/// generate, or the cases folder of the run config), the methods, and the run config every
/// method shares (its method field is replaced per method).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// The phantoms to generate into `<out>/data`; `None`: the cases in `run.task.data`.
    pub phantoms: Option<PhantomSet>,
    /// The methods, trained in this order on the same split.
    pub methods: Vec<Method>,
    /// The run config of every method (seed, optimiser, schedule, loop, task); its method
    /// field holds MCKD's hyper-parameters for the MCKD-family methods.
    pub run: BratsRunConfig,
    /// The peers' settings.
    #[serde(default)]
    pub peers: PeersConfig,
}

/// Presets of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DemoPreset {
    /// The reference's training (two stages, poly schedule, per-sample Dice, 37.5 % tumour
    /// crops, scaling, 20 IWV steps of one crop per meta phase) at phantom size.
    #[default]
    Reference,
    /// The demo before the reference audit (one stage, cosine, pooled Dice, one meta step of
    /// two crops every 5 iterations, no IWV weight decay).
    Legacy,
}

impl DemoConfig {
    /// The demo (60 phantoms of 32³, UNet c = 4, 1,200 iterations per method) or the quick one
    /// (10 phantoms, 40 iterations).
    pub fn preset(which: DemoPreset, quick: bool, seed: u64) -> Self {
        let legacy = which == DemoPreset::Legacy;
        let size = 32;
        let mut run = preset(
            if legacy {
                Preset::Legacy
            } else {
                Preset::Reference
            },
            Method::Mckd,
            PathBuf::from("data"),
            seed,
        );
        run.task.arch = Arch::Unet { base: 4 };
        run.task.crop = [size; 3];
        run.task.infer.tile = [size.div_ceil(8) * 8; 3];
        // A short CPU budget: momentum 0.9 with a larger rate learns faster here than the
        // paper's 0.99 / 1e-2 (measured on phantoms; crate README).
        let clip = if legacy { Some(12.0) } else { None };
        run.optimizer = OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
            clip_norm: clip,
        };
        run.schedule = if legacy {
            LrSchedule::Cosine { lr: 0.05 }
        } else {
            LrSchedule::Poly {
                lr: 0.05,
                power: 0.9,
            }
        };
        let iterations = if quick { 40 } else { 1200 };
        run.loop_.budget = Budget::Iterations(iterations);
        run.task.probe_interval = (iterations / 20).max(1);
        if legacy {
            run.loop_.meta = MetaSchedule {
                interval: 5,
                interval_stage2: 5,
                steps: 1,
                batch: 0,
            };
            // No IWV weight decay: the reference's 5e-4 outweighed the bottleneck-only meta
            // gradient here and held the IWV at its start (crate README).
            run.method
                .mckd_mut()
                .expect("the demo's run config holds MCKD's settings")
                .iwv
                .weight_decay = 0.0;
        } else {
            // The reference's phases (every 100 iterations, 20 steps of one crop); its stage-2
            // interval of 500 would give the 366 iterations of stage 2 no phase at all.
            run.loop_.meta = MetaSchedule {
                interval: if quick { 10 } else { 100 },
                interval_stage2: if quick { 10 } else { 300 },
                steps: 20,
                batch: 1,
            };
        }
        Self {
            phantoms: Some(PhantomSet {
                cases: if quick { 10 } else { 60 },
                size,
                // Larger tumours than the generator's default: less class imbalance.
                tumour_radius: [0.45, 0.7],
                enhancing_patches: false,
                flair_as_t2: false,
            }),
            methods: vec![Method::Mckd, Method::Baseline],
            run,
            peers: PeersConfig::default(),
        }
    }

    /// The real-data experiment (issue 16) on the cases in `root` (the 20 BraTS 2018 cases of
    /// `brats-real`): 2 mm, a seeded split 13 / 2 / 5 (train / meta-val / test), the CPU UNet
    /// (c = 8) on 56×72×56 crops (the smallest brain box at 2 mm is 63×79×65), 3,000
    /// iterations with the reference's two stages and meta phases, each test case predicted
    /// in one tile and evaluated at its original 1 mm labels. `quick`: 20 iterations.
    pub fn real(root: PathBuf, quick: bool, seed: u64) -> Self {
        let mut run = preset(Preset::Reference, Method::Mckd, root, seed);
        run.task.spacing = 2.0;
        run.task.fractions = mckd_volume::SplitFractions {
            train: 0.65,
            meta_val: 0.10,
            test: 0.25,
        };
        run.task.arch = Arch::Unet { base: 8 };
        run.task.crop = [56, 72, 56];
        // Clamped per case to its box rounded up to 8: one tile per case.
        run.task.infer.tile = [80, 96, 80];
        // The demo's short-budget optimiser (momentum 0.9, lr 0.05; measured on phantoms).
        run.optimizer = OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
            clip_norm: None,
        };
        run.schedule = LrSchedule::Poly {
            lr: 0.05,
            power: 0.9,
        };
        let iterations = if quick { 20 } else { 3000 };
        run.loop_.budget = Budget::Iterations(iterations);
        run.loop_.checkpoint_every = if quick { 0 } else { 250 };
        run.task.probe_interval = (iterations / 20).max(1);
        if quick {
            run.loop_.meta.interval = 5;
            run.loop_.meta.interval_stage2 = 5;
            run.loop_.meta.steps = 2;
        }
        Self {
            phantoms: None,
            methods: vec![Method::Mckd, Method::Baseline],
            run,
            peers: PeersConfig::default(),
        }
    }

    /// The phantom generator's settings (`None` for real cases).
    pub fn phantom_config(&self) -> Option<PhantomConfig> {
        self.phantoms.as_ref().map(|p| PhantomConfig {
            size: [p.size; 3],
            tumour_radius: p.tumour_radius,
            enhancing_patches: p.enhancing_patches,
            flair_as_t2: p.flair_as_t2,
            ..Default::default()
        })
    }

    /// The run config of `method` with the cases in `data`: the shared run config with the
    /// method's settings (MCKD's hyper-parameters from `run`, a peer's from `peers`).
    pub fn run_config(&self, method: Method, data: PathBuf) -> BratsRunConfig {
        let mut c = self.run.clone();
        let mckd = self.run.method.mckd().cloned().unwrap_or_default();
        c.method = crate::config::BratsMethod::of(method, mckd, &self.peers);
        c.task.data = data;
        crate::config::with_method_needs(c)
    }
}

/// Phantoms → every method → evaluation; returns the report. Methods already finished in `out`
/// (a resumed demo) are not trained again.
pub fn demo(cfg: &DemoConfig, out: &RunDir, resume: bool) -> Result<EvalReport> {
    let started = Instant::now();
    check_same_settings(cfg, out.path())?;
    out.write_json("demo_config.json", cfg)?;
    let data = prepare_data(cfg, out)?;
    let mut runs = Vec::new();
    let mut splits: Option<PathBuf> = None;
    for &method in &cfg.methods {
        let dir = RunDir::create(&out.path().join(method.name()))?;
        let mut rc = cfg.run_config(method, data.clone());
        rc.task.splits_file = splits.clone();
        if !is_finished(&dir) {
            dir.write("config.json", rc.to_json().as_bytes())?;
            train_in(&rc, &dir, resume)?;
        }
        splits.get_or_insert_with(|| dir.file("splits.json"));
        runs.push(dir.path().to_path_buf());
    }
    finish(cfg, &runs, None, out, 0.0, started)
}

/// Settings that may change when a folder is resumed: the list of methods (with more, only
/// the new ones train), where the cases and the resampling cache are (another machine) and
/// how often checkpoints are written.
const RESUMABLE_CHANGES: [&[&str]; 4] = [
    &["methods"],
    &["run", "task", "data"],
    &["run", "task", "cache"],
    &["run", "loop", "checkpoint_every"],
];

/// Refuses to continue the experiment folder `dir` with settings other than those it was
/// started with (its `demo_config.json`, if any), up to [`RESUMABLE_CHANGES`]: a resumed run
/// with another budget, split or hyper-parameter would put runs of two settings in one table.
/// The error names the file and the first setting that differs. Both sides are compared as
/// this version reads them, so settings added since (with their defaults) do not count.
pub(crate) fn check_same_settings(cfg: &DemoConfig, dir: &std::path::Path) -> Result<()> {
    let path = dir.join("demo_config.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(());
    };
    let problem = |problem: String| crate::error::BratsError::Config {
        path: path.clone(),
        problem,
    };
    let stored: DemoConfig = serde_json::from_slice(&bytes).map_err(|e| {
        problem(format!(
            "cannot read the settings this folder was started with ({e}); continue it with \
             the mckd version that started it, or use another --out"
        ))
    })?;
    let comparable = |c: &DemoConfig| {
        let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
        for keys in RESUMABLE_CHANGES {
            let (last, parents) = keys.split_last().expect("non-empty key path");
            let parent = parents.iter().try_fold(&mut v, |v, k| v.get_mut(*k));
            if let Some(Value::Object(m)) = parent {
                m.remove(*last);
            }
        }
        v
    };
    match first_difference(&comparable(&stored), &comparable(cfg)) {
        None => Ok(()),
        Some((key, was, now)) => Err(problem(format!(
            "this folder was started with {key} = {was}, now {now}; --resume continues it only \
             with the same settings (more methods, or another data or cache folder, are \
             fine): use another --out, or --overwrite to move it aside"
        ))),
    }
}

/// The first place where `a` and `b` differ, as (dotted path, value in `a`, value in `b`),
/// objects by key in order, arrays by index (a missing entry shows as `(none)`).
fn first_difference(a: &Value, b: &Value) -> Option<(String, String, String)> {
    fn walk(a: Option<&Value>, b: Option<&Value>, at: String) -> Option<(String, String, String)> {
        let show = |v: Option<&Value>| v.map_or("(none)".to_string(), Value::to_string);
        let child = |k: &str| {
            if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            }
        };
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                keys.into_iter()
                    .find_map(|k| walk(x.get(k), y.get(k), child(k)))
            }
            (Some(Value::Array(x)), Some(Value::Array(y))) if x.len() == y.len() => x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (p, q))| walk(Some(p), Some(q), format!("{at}[{i}]"))),
            _ if a == b => None,
            _ => Some((at, show(a), show(b))),
        }
    }
    walk(Some(a), Some(b), String::new())
}

/// Whether a run folder holds a finished run (its status and its model).
pub(crate) fn is_finished(dir: &RunDir) -> bool {
    dir.status().is_some_and(|s| s.state == RunState::Finished) && dir.file("model.bpk").is_file()
}

/// Trains `rc` into `dir` with its status kept (running, finished or failed); resumes from
/// the folder's checkpoint when `resume` and there is one.
pub(crate) fn train_in(rc: &BratsRunConfig, dir: &RunDir, resume: bool) -> Result<()> {
    dir.set_status(RunState::Running, None, None)?;
    let has_checkpoint =
        resume && (dir.file("checkpoint").is_dir() || dir.file(".checkpoint.old").is_dir());
    match train_run(rc, dir, has_checkpoint) {
        Ok(t) => {
            dir.set_status(RunState::Finished, None, Some(t.log.len()))?;
            log::info!(
                "{}: {:.3} s/inner step{}, {} parameters",
                rc.method.kind().title(),
                t.seconds_per_inner(),
                t.meta_step_text(),
                t.method.num_params(),
            );
            Ok(())
        }
        Err(e) => {
            dir.set_status(RunState::Failed, Some(e.to_string()), None)?;
            Err(e)
        }
    }
}

/// The evaluation of a demo's trained runs (on the cases of `data`, else of the first run's
/// config) into `out`: the tables and `results.json` with the settings and the wall time,
/// `earlier_seconds` (time spent elsewhere) plus the time since `started`.
pub(crate) fn finish(
    cfg: &DemoConfig,
    runs: &[PathBuf],
    data: Option<&std::path::Path>,
    out: &RunDir,
    earlier_seconds: f64,
    started: Instant,
) -> Result<EvalReport> {
    let mut report = evaluate_runs(runs, data, out)?;
    let timing = timing_table(runs)?;
    out.write("timing.csv", timing.csv.as_bytes())?;
    out.write("timing.md", timing.markdown.as_bytes())?;
    report.results.extra.insert("timing".into(), timing.json);
    report.markdown.push_str(&format!("\n{}", timing.markdown));
    report.results.extra.insert(
        "wall_seconds".into(),
        json_f64(earlier_seconds + started.elapsed().as_secs_f64()),
    );
    report.results.extra.insert(
        "demo".into(),
        serde_json::to_value(cfg).unwrap_or(Value::Null),
    );
    out.write_json("results.json", &report.results)?;
    Ok(report)
}

/// The cases of a demo: its phantoms, written into `<out>/data` unless already there with the
/// same settings, or the cases folder of its run config.
pub(crate) fn prepare_data(cfg: &DemoConfig, out: &RunDir) -> Result<PathBuf> {
    Ok(match (&cfg.phantoms, cfg.phantom_config()) {
        (Some(ph), Some(pcfg)) => {
            let data = out.path().join("data");
            // Reuse phantoms already in `out` only if they were made with the same settings.
            let stamp = data.join("phantom_config.json");
            let same = std::fs::read(&stamp)
                .ok()
                .and_then(|b| serde_json::from_slice::<(PhantomConfig, u64)>(&b).ok())
                .is_some_and(|(c, s)| c == pcfg && s == cfg.run.seed);
            if !same || discover_cases(&data).map(|c| c.len()).unwrap_or(0) != ph.cases {
                log::info!(
                    "writing {} phantoms of {}³ to {}",
                    ph.cases,
                    ph.size,
                    data.display()
                );
                write_phantom_dataset(&data, ph.cases, &pcfg, cfg.run.seed)?;
                RunDir::create(&data)?.write_json("phantom_config.json", &(&pcfg, cfg.run.seed))?;
            }
            data
        }
        _ => cfg.run.task.data.clone(),
    })
}

/// A run's training time from its `timing.json`: the wall time over every process of a resumed
/// run (`true`), or, in a file of a build before the loop kept its wall time across resumes
/// (no `loop_seconds`; its `wall_seconds` counts the last process only), the time of the
/// inner and meta steps, which the checkpoints always carried (`false`).
pub fn train_seconds(t: &Value) -> Option<(f64, bool)> {
    let num = |k: &str| t.get(k).and_then(Value::as_f64);
    if num("loop_seconds").is_some() {
        return num("wall_seconds").map(|w| (w, true));
    }
    let inner = num("seconds_per_inner_step")? * num("iterations")?;
    let meta = match (num("seconds_per_meta_step"), num("meta_steps")) {
        (Some(per), Some(n)) if n > 0.0 => per * n,
        _ => 0.0,
    };
    Some((inner + meta, false))
}

/// The training cost of each run of an experiment, from its `timing.json`.
pub struct TimingTable {
    /// `timing.csv`: `method,parameters,iterations,seconds_per_inner_step,
    /// seconds_per_meta_step,meta_steps,train_seconds,train_seconds_of` (`wall`, or `steps`
    /// for an older run's file: see [`train_seconds`]).
    pub csv: String,
    /// `timing.md`: the same as a Markdown table.
    pub markdown: String,
    /// Per method name, the same values.
    pub json: Value,
}

/// Reads the `timing.json` of each run folder (a value it lacks is empty / null).
pub fn timing_table(runs: &[PathBuf]) -> Result<TimingTable> {
    let mut csv = String::from(
        "method,parameters,iterations,seconds_per_inner_step,seconds_per_meta_step,meta_steps,\
         train_seconds,train_seconds_of\n",
    );
    let header: Vec<String> = [
        "Method",
        "Parameters",
        "Iterations",
        "s / step",
        "s / meta step",
        "Training (min)",
    ]
    .map(String::from)
    .to_vec();
    let mut rows = Vec::new();
    let mut json = serde_json::Map::new();
    let mut steps_only = false;
    for run in runs {
        let cfg = crate::train::load_config(run)?;
        let name = cfg.method.kind().name();
        let path = run.join("timing.json");
        let t: Value = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let num = |k: &str| t.get(k).and_then(Value::as_f64);
        let cell = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_default();
        let (params, iters) = (num("parameters"), num("iterations"));
        let (inner, meta) = (num("seconds_per_inner_step"), num("seconds_per_meta_step"));
        let metas = num("meta_steps");
        let train = train_seconds(&t);
        steps_only |= train.is_some_and(|(_, wall)| !wall);
        csv.push_str(&format!(
            "{name},{},{},{},{},{},{},{}\n",
            cell(params, &|v| format!("{v}")),
            cell(iters, &|v| format!("{v}")),
            cell(inner, &|v| format!("{v}")),
            cell(meta, &|v| format!("{v}")),
            cell(metas, &|v| format!("{v}")),
            train.map(|(v, _)| v.to_string()).unwrap_or_default(),
            train
                .map(|(_, wall)| if wall { "wall" } else { "steps" })
                .unwrap_or_default(),
        ));
        rows.push(vec![
            Method::title_of(name).to_string(),
            cell(params, &|v| format!("{v:.0}")),
            cell(iters, &|v| format!("{v:.0}")),
            cell(inner, &|v| format!("{v:.3}")),
            cell(meta.filter(|v| v.is_finite()), &|v| format!("{v:.3}")),
            train
                .map(|(v, wall)| format!("{:.1}{}", v / 60.0, if wall { "" } else { " †" }))
                .unwrap_or_default(),
        ]);
        json.insert(name.to_string(), t);
    }
    let mut markdown = format!(
        "Training cost per method (same iteration budget; seconds per inner step; training \
         minutes over every process of a resumed run).\n\n{}",
        mckd_train::report::markdown_table(&header, &rows)
    );
    if steps_only {
        markdown.push_str(
            "\n† The inner and meta steps' time only: the run's `timing.json` is from a build \
             whose wall time counted only the last process of a resumed run.\n",
        );
    }
    Ok(TimingTable {
        csv,
        markdown,
        json: Value::Object(json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn training_time_is_the_wall_time_across_resumes_else_the_steps_time() {
        // A file of the current build: its wall time already spans the resumed processes.
        let new = json!({"seconds_per_inner_step": 2.0, "iterations": 100, "meta_steps": 0,
            "seconds_per_meta_step": null, "wall_seconds": 250.0, "loop_seconds": 240.0});
        assert_eq!(train_seconds(&new), Some((250.0, true)));
        // The seed-0 U-HVED run of results/brats-real-2mm-7methods, resumed once by a build
        // without `loop_seconds`: 77.3 min of wall time in its last process, 103.6 min of steps.
        let hved = json!({"seconds_per_inner_step": 2.589456205676254,
            "seconds_per_meta_step": null, "meta_steps": 0, "iterations": 2400,
            "wall_seconds": 4640.030444071});
        let (s, wall) = train_seconds(&hved).unwrap();
        assert!(!wall);
        assert!((s - 6214.694893623).abs() < 1e-6, "{s}");
        // Meta steps count too.
        let meta = json!({"seconds_per_inner_step": 1.0, "iterations": 100,
            "seconds_per_meta_step": 2.0, "meta_steps": 10, "wall_seconds": 50.0});
        assert_eq!(train_seconds(&meta), Some((120.0, false)));
        assert_eq!(train_seconds(&json!({"wall_seconds": 5.0})), None);
    }
}
