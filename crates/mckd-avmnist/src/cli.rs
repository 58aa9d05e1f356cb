//! The `mckd avmnist` subcommands: `reproduce` (paper Table 2), `train` and `eval` (single runs),
//! `merge` (the tables of a grid folder), and the hidden `run-one` of parallel workers.

// The argument docs are clap's --help text, where `<placeholder>` is plain text, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::prelude::Device;
use clap::{Args, Subcommand};
use mckd_core::{CkdReduction, Distance, Normalisation, present_names};
use mckd_data::{AvMnist, SmilSplit};
use mckd_train::config::read_json;
use mckd_train::device::DeviceChoice;
use mckd_train::report::{Results, Row, iwv_map};
use mckd_train::run::{OutPolicy, RunDir, RunState};
use mckd_train::train::{Source, log_csv};
use serde_json::{Map, json};

use crate::config::{
    ALL_SETTINGS, AvRunConfig, DataSplit, EvalSet, LoopFamily, MethodKind, PercentMapping, Preset,
    Setting, preset, validate,
};
use crate::grid::{Plan, merge, plan_configs, run_in_folder, write_plan};
use crate::model::{BnRows, DistilledFeature, MODALITY_NAMES};
use crate::peers::BoxedMethod;
use crate::report;
use crate::run::{AvmnistError, RunOutcome, RunSpec, log_columns, prepare, run_one};

/// `mckd avmnist ...`
#[derive(Debug, Subcommand)]
pub enum AvmnistCommand {
    /// Reproduce paper Table 2 (missing audio and missing visual at 5/10/15/20 %) for every
    /// method and seed; writes one folder per run, then results.json, table2.md/csv and plots.
    Reproduce(ReproduceArgs),
    /// Train one run (a method, a setting, a seed) and save the model.
    Train(TrainArgs),
    /// Evaluate a model saved by `train` on every modality subset (test or validation).
    Eval(EvalArgs),
    /// Write the tables of a grid folder from its finished runs (lists missing and failed ones).
    Merge(MergeArgs),
    /// Train one run folder of a grid (used by `reproduce --jobs`).
    #[command(hide = true)]
    RunOne(RunOneArgs),
}

/// Data and device.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Folder that contains `avmnist/` (else $MCKD_DATA_DIR, else a cached or downloaded kit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A split file in smil_split.json format (default: the kit's smil_split.json).
    #[arg(long)]
    pub split_file: Option<PathBuf>,
    /// Compute device.
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
}

/// Options that override fields of the run config (the preset's or `--config`'s).
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// Epochs per run.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Task learning rate (initial).
    #[arg(long)]
    pub lr: Option<f64>,
    /// CKD weight α.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// CKD distance.
    #[arg(long, value_enum)]
    pub distance: Option<Distance>,
    /// CKD batch reduction.
    #[arg(long, value_enum)]
    pub reduction: Option<CkdReduction>,
    /// IWV normalisation.
    #[arg(long, value_enum)]
    pub normalisation: Option<Normalisation>,
    /// IWV Adam learning rate.
    #[arg(long)]
    pub iwv_lr: Option<f64>,
    /// IWV Adam weight decay.
    #[arg(long)]
    pub iwv_weight_decay: Option<f64>,
    /// A meta phase every this many iterations (both stages; 0 = never).
    #[arg(long)]
    pub meta_interval: Option<usize>,
    /// IWV steps per meta phase.
    #[arg(long)]
    pub meta_steps: Option<usize>,
    /// Samples per meta batch (0 = the batch size).
    #[arg(long)]
    pub meta_batch: Option<usize>,
    /// Fraction of iterations trained with every available modality first (0 = one stage).
    #[arg(long)]
    pub full_fraction: Option<f64>,
    /// Train / meta / test split.
    #[arg(long, value_enum)]
    pub data_split: Option<DataSplit>,
    /// Evaluated samples (validation: the 150 meta samples, for choosing settings).
    #[arg(long, value_enum)]
    pub evaluate_on: Option<EvalSet>,
    /// Batch-norm rows of a partly missing modality.
    #[arg(long, value_enum)]
    pub bn_rows: Option<BnRows>,
    /// The encoder feature the CKD loss distils.
    #[arg(long, value_enum)]
    pub distilled: Option<DistilledFeature>,
    /// Percent → paired samples per digit.
    #[arg(long, value_enum)]
    pub mapping: Option<PercentMapping>,
    /// A checkpoint every this many iterations (0: only on a signal).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Peers with a pretraining (SMIL, AutoEncoder, GAN, Full2miss): epochs of the dominant
    /// modality alone over every training sample.
    #[arg(long)]
    pub pretrain_dominant_epochs: Option<usize>,
    /// The same: epochs of the scarce modality alone over the paired samples.
    #[arg(long)]
    pub pretrain_scarce_epochs: Option<usize>,
    /// The same: epochs of both modalities over the paired samples.
    #[arg(long)]
    pub pretrain_paired_epochs: Option<usize>,
}

impl Overrides {
    /// Applies the given options to `cfg`.
    pub fn apply(&self, cfg: &mut AvRunConfig, data: &DataArgs) {
        use mckd_train::config::{Budget, LrSchedule};
        if let Some(v) = self.epochs {
            cfg.loop_.budget = Budget::Epochs(v);
        }
        if let Some(v) = self.batch_size {
            cfg.loop_.batch_size = v;
        }
        if let Some(v) = self.lr {
            cfg.schedule = match cfg.schedule {
                LrSchedule::Constant { .. } => LrSchedule::Constant { lr: v },
                LrSchedule::Step { every, gamma, .. } => LrSchedule::Step {
                    lr: v,
                    every,
                    gamma,
                },
                LrSchedule::Cosine { .. } => LrSchedule::Cosine { lr: v },
                LrSchedule::Poly { power, .. } => LrSchedule::Poly { lr: v, power },
            };
        }
        if let Some(m) = cfg.method.mckd_mut() {
            if let Some(v) = self.alpha {
                m.alpha = v;
            }
            if let Some(v) = self.distance {
                m.distance = v;
            }
            if let Some(v) = self.reduction {
                m.reduction = v;
            }
            if let Some(v) = self.normalisation {
                m.normalisation = v;
            }
            if let Some(v) = self.iwv_lr {
                m.iwv.lr = v;
            }
            if let Some(v) = self.iwv_weight_decay {
                m.iwv.weight_decay = v;
            }
        }
        if let Some(p) = cfg.method.pretrain_mut() {
            if let Some(v) = self.pretrain_dominant_epochs {
                p.dominant_epochs = v;
            }
            if let Some(v) = self.pretrain_scarce_epochs {
                p.scarce_epochs = v;
            }
            if let Some(v) = self.pretrain_paired_epochs {
                p.paired_epochs = v;
            }
        }
        if let Some(v) = self.meta_interval {
            cfg.loop_.meta.interval = v;
            cfg.loop_.meta.interval_stage2 = v;
        }
        if let Some(v) = self.meta_steps {
            cfg.loop_.meta.steps = v;
        }
        if let Some(v) = self.meta_batch {
            cfg.loop_.meta.batch = v;
        }
        if let Some(v) = self.full_fraction
            && cfg.method.kind().loop_family() == LoopFamily::Staged
        {
            cfg.loop_.full_fraction = v;
        }
        if let Some(v) = self.data_split {
            cfg.task.split = v;
        }
        if let Some(v) = self.evaluate_on {
            cfg.task.evaluate_on = v;
        }
        if let Some(v) = self.bn_rows {
            cfg.task.net.bn_rows = v;
        }
        if let Some(v) = self.distilled {
            cfg.task.net.distilled = v;
        }
        if let Some(v) = self.mapping {
            cfg.task.mapping = v;
        }
        if let Some(v) = self.checkpoint_every {
            cfg.loop_.checkpoint_every = v;
        }
        if let Some(d) = &data.data_dir {
            cfg.task.data_dir = Some(d.clone());
        }
        if let Some(s) = &data.split_file {
            cfg.task.split_file = Some(s.clone());
        }
        if let Some(d) = data.device {
            cfg.device = d;
        }
    }
}

/// Where a run's settings come from.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Start from this preset.
    #[arg(long, value_enum, default_value_t = Preset::Paper)]
    pub preset: Preset,
    /// Start from this run config (a run folder's config.json) instead of a preset; options
    /// given on the command line override its fields.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Field overrides.
    #[command(flatten)]
    pub set: Overrides,
    /// Data and device.
    #[command(flatten)]
    pub data: DataArgs,
}

impl ConfigArgs {
    /// The config of a run of `kind` on `setting` with `seed`: from `--config` (its method kind,
    /// setting and seed replaced) or the preset, then the overrides.
    pub fn config(
        &self,
        base: Option<&AvRunConfig>,
        kind: MethodKind,
        setting: Option<Setting>,
        seed: u64,
    ) -> AvRunConfig {
        let mut cfg = match base {
            Some(b) => derive(b, kind, setting, seed),
            None => preset(self.preset, kind, setting, seed),
        };
        self.set.apply(&mut cfg, &self.data);
        cfg
    }

    /// The `--config` file, if given.
    pub fn base(&self) -> anyhow::Result<Option<AvRunConfig>> {
        self.config
            .as_deref()
            .map(|p| AvRunConfig::load(p).map_err(anyhow::Error::from))
            .transpose()
    }
}

/// A run derived from `base` for another method, setting or seed: bounds train with every
/// available modality in one stage; the other methods keep the base's loop.
pub fn derive(
    base: &AvRunConfig,
    kind: MethodKind,
    setting: Option<Setting>,
    seed: u64,
) -> AvRunConfig {
    let mut cfg = base.clone();
    cfg.seed = seed;
    let reference = preset(Preset::Paper, kind, setting, seed);
    if base.method.kind() != kind {
        cfg.method = match base.method.mckd() {
            Some(m) if !kind.is_peer() => crate::config::AvMethod::of(kind, m.clone()),
            _ => reference.method.clone(),
        };
    }
    cfg.task.setting = if kind.needs_setting() {
        setting.or(base.task.setting)
    } else {
        None
    };
    if kind.loop_family() != base.method.kind().loop_family() {
        cfg.loop_.subsets = reference.loop_.subsets;
        cfg.loop_.full_fraction = reference.loop_.full_fraction;
    }
    cfg
}

/// Output folder options.
#[derive(Debug, Clone, Args)]
pub struct OutArgs {
    /// Output folder (default runs/<timestamp>-<command>). An existing non-empty folder is
    /// refused unless --resume or --overwrite.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run(s) in --out: finished runs are kept, unfinished ones resume from their
    /// last checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Move an existing --out aside (renamed, never deleted) and start again.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar, no per-run lines.
    #[arg(long)]
    pub quiet: bool,
}

impl OutArgs {
    fn open(&self, kind: &str) -> anyhow::Result<(RunDir, bool)> {
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| RunDir::default_path(kind));
        Ok(RunDir::open(
            &out,
            OutPolicy::from_flags(self.resume, self.overwrite),
        )?)
    }
}

/// `mckd avmnist reproduce`
#[derive(Debug, Clone, Args)]
pub struct ReproduceArgs {
    /// Run settings.
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Output.
    #[command(flatten)]
    pub out: OutArgs,
    /// Number of seeds.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// First seed (seeds are first_seed, first_seed + 1, ...).
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Rows, comma separated (audio_5 ... audio_20, visual_5 ... visual_20; default all 8).
    #[arg(long, value_delimiter = ',')]
    pub rows: Option<Vec<String>>,
    /// Methods: `all` (the bounds, autoencoder, gan, full2miss, smil, shaspec, baseline, mckd;
    /// the default) or a comma-separated list of those and smil_lenet.
    #[arg(long, value_parser = parse_methods)]
    pub methods: Option<Methods>,
    /// Runs trained at the same time, as child processes of this binary (every run stays
    /// deterministic for its seed); each gets cores / jobs threads unless RAYON_NUM_THREADS is
    /// set.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Keep each run's trained model (`runs/<run>/model.bpk`).
    #[arg(long)]
    pub save_models: bool,
    /// Planning for a cluster (`runs/<run>` folders; merge with `mckd avmnist merge --grid
    /// OUT`).
    #[command(flatten)]
    pub plan: mckd_train::cluster::PlanArgs,
}

/// A `--methods` list.
#[derive(Debug, Clone, PartialEq)]
pub struct Methods(pub Vec<MethodKind>);

fn parse_methods(text: &str) -> Result<Methods, String> {
    let v = MethodKind::parse_list(text).map_err(|e| e.to_string())?;
    if v.is_empty() {
        return Err("no method given".into());
    }
    Ok(Methods(v))
}

/// `mckd avmnist train`
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Run settings.
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Output.
    #[command(flatten)]
    pub out: OutArgs,
    /// Method [default: the config's, else mckd].
    #[arg(long, value_enum)]
    pub method: Option<MethodKind>,
    /// Setting (needed by baseline and mckd), e.g. audio_10.
    #[arg(long)]
    pub setting: Option<String>,
    /// Seed [default: the config's, else 1].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// `mckd avmnist eval`
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// A run folder written by `mckd avmnist train` (config.json + model.bpk).
    #[arg(long)]
    pub run: PathBuf,
    /// Data and device (defaults: the run's).
    #[command(flatten)]
    pub data: DataArgs,
    /// Evaluated samples [default: the run's].
    #[arg(long, value_enum)]
    pub evaluate_on: Option<EvalSet>,
    /// Output file [default: <run>/eval.json]; an existing file is refused unless --overwrite.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    pub overwrite: bool,
}

/// `mckd avmnist merge`
#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// The grid folder (written by `reproduce`).
    #[arg(long)]
    pub grid: PathBuf,
    /// Write the tables even if some runs are missing or failed (they are listed); without it
    /// the command fails after listing them.
    #[arg(long)]
    pub allow_partial: bool,
}

/// `mckd avmnist run-one` (hidden)
#[derive(Debug, Clone, Args)]
pub struct RunOneArgs {
    /// The run folder (holds config.json).
    #[arg(long)]
    pub run: PathBuf,
    /// The parent's loaded data (else loaded from the config's data folder).
    #[arg(long)]
    pub snapshot: Option<PathBuf>,
    /// Keep the trained model.
    #[arg(long)]
    pub save_model: bool,
}

/// Runs a subcommand.
pub fn run(cmd: AvmnistCommand) -> anyhow::Result<()> {
    // `--quiet` keeps the library's messages to warnings and hides the progress bars; a grid's
    // worker (`run-one`) reports through its parent.
    mckd_train::init_logging(match &cmd {
        AvmnistCommand::Reproduce(a) => a.out.quiet,
        AvmnistCommand::Train(a) => a.out.quiet,
        AvmnistCommand::RunOne(_) => true,
        AvmnistCommand::Eval(_) | AvmnistCommand::Merge(_) => false,
    });
    match cmd {
        AvmnistCommand::Reproduce(a) => reproduce(&a).map(|_| ()),
        AvmnistCommand::Train(a) => train(&a),
        AvmnistCommand::Eval(a) => eval(&a),
        AvmnistCommand::Merge(a) => merge_cmd(&a),
        AvmnistCommand::RunOne(a) => run_one_cmd(&a),
    }
}

/// The kit folder: `--data-dir` as given, else `$MCKD_DATA_DIR` or the cache (downloading
/// what is missing, with a clear message offline).
pub fn resolve_data_dir(data_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = data_dir {
        mckd_data::check_kit(d, "--data-dir")?;
        return Ok(d.to_path_buf());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("mckd");
    mckd_data::ensure_avmnist(None, &cache).with_context(|| {
        format!(
            "no AV-MNIST kit: pass --data-dir or set {} to the folder that contains avmnist/ \
             (download cache: {})",
            mckd_data::DATA_DIR_ENV,
            cache.display()
        )
    })
}

/// Loads the dataset and the text of the split used (for `splits.json`).
pub fn load(
    data_dir: Option<&Path>,
    split: Option<&Path>,
) -> anyhow::Result<(PathBuf, AvMnist, String)> {
    let dir = resolve_data_dir(data_dir)?;
    let data = mckd_data::load_avmnist(&dir, split)
        .with_context(|| format!("loading AV-MNIST from {}", dir.display()))?;
    let kit_split = dir.join("avmnist/smil_split.json");
    let split_path = split
        .map(Path::to_path_buf)
        .or_else(|| kit_split.is_file().then_some(kit_split));
    let split_text = match split_path {
        Some(p) => SmilSplit::load(&p)
            .with_context(|| format!("reading split {}", p.display()))?
            .to_json(),
        None => {
            let m = dir.join("avmnist/mnist");
            mckd_data::smil_split_from_rule(
                &mckd_data::read_idx_labels(&m.join("train-labels-idx1-ubyte.gz"))?,
                &mckd_data::read_idx_labels(&m.join("t10k-labels-idx1-ubyte.gz"))?,
            )?
            .to_json()
        }
    };
    Ok((dir, data, split_text))
}

fn parse_rows(rows: &Option<Vec<String>>) -> anyhow::Result<Vec<Setting>> {
    let names: Vec<String> = match rows {
        Some(r) => r
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => ALL_SETTINGS.iter().map(|s| s.to_string()).collect(),
    };
    if names.is_empty() {
        bail!("--rows is empty");
    }
    let mut out: Vec<Setting> = Vec::new();
    for n in names {
        let s: Setting = n.parse()?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

/// Saves a trained method's model (atomically).
pub fn save_model(method: &BoxedMethod, path: &Path) -> crate::run::Result<()> {
    let bytes = method.model_bytes().map_err(|e| AvmnistError::File {
        path: path.to_path_buf(),
        msg: format!("cannot serialise the model: {e}"),
    })?;
    mckd_train::run::write_atomic(path, &bytes)?;
    Ok(())
}

/// `IWV image 0.961` for MCKD's family, empty for the peers.
fn iwv_text(iwv: &[f32]) -> String {
    iwv.first()
        .map_or(String::new(), |w| format!("  IWV image {w:.3}"))
}

/// `reproduce`: plans every (method, row, seed), trains what is not finished, merges; returns
/// the outcomes.
pub fn reproduce(a: &ReproduceArgs) -> anyhow::Result<Vec<RunOutcome>> {
    if a.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    if a.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let settings = parse_rows(&a.rows)?;
    let methods = a
        .methods
        .clone()
        .map_or_else(|| MethodKind::TABLE.to_vec(), |m| m.0);
    if methods.is_empty() {
        bail!("--methods is empty");
    }
    let base = a.cfg.base()?;
    let mut configs = plan_configs(
        &methods,
        &settings,
        a.first_seed..a.first_seed + a.seeds,
        &|kind, setting, seed| a.cfg.config(base.as_ref(), kind, setting, seed),
    );
    if a.plan.plan {
        // A planned run may train on another machine, from another working folder, without
        // this process's environment: its config names the kit folder, absolute.
        let dir = resolve_data_dir(configs[0].task.data_dir.as_deref())?;
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        for c in &mut configs {
            c.task.data_dir = Some(dir.clone());
        }
    }
    for c in &configs {
        validate(c).with_context(|| format!("run {}", RunSpec::of(c).label()))?;
    }
    let first = &configs[0];
    let device = first.device.device()?;
    let (_, data, split_text) = load(
        first.task.data_dir.as_deref(),
        first.task.split_file.as_deref(),
    )?;
    for c in &configs {
        prepare(&data, c).with_context(|| format!("run {}", RunSpec::of(c).label()))?;
    }
    let (grid, resumed) = a.out.open("avmnist")?;
    if resumed && grid.status().is_some_and(|s| s.state == RunState::Finished) {
        eprintln!(
            "{} is finished; writing its tables again",
            grid.path().display()
        );
    }
    grid.set_status(RunState::Running, None, None)?;
    let plan = write_plan(&grid, &settings, &configs)?;
    grid.write("splits.json", split_text.as_bytes())?;
    if a.plan.plan {
        return write_planned(a, &grid, &plan).map(|()| Vec::new());
    }
    let todo: Vec<usize> = (0..plan.runs.len())
        .filter(|&i| !crate::grid::is_finished(&grid.path().join(&plan.runs[i].dir)))
        .collect();
    let mut total = 0usize;
    for &i in &todo {
        total += crate::run::planned_iterations(&data, &configs[i])?;
    }
    if !a.out.quiet && todo.len() < plan.runs.len() {
        eprintln!(
            "{} of {} runs already finished; training the other {}",
            plan.runs.len() - todo.len(),
            plan.runs.len(),
            todo.len()
        );
    }
    let bar = mckd_train::progress_bar(total as u64, &format!("avmnist {} runs", todo.len()));
    let start = Instant::now();
    let report_line = |label: &str, r: &std::result::Result<RunOutcome, String>| {
        if a.out.quiet {
            return;
        }
        let line = match r {
            Ok(o) => format!(
                "{label:<30} acc {:6.2} %{}  {:6.1} s",
                100.0 * o.accuracy,
                iwv_text(&o.iwv),
                o.seconds
            ),
            Err(e) => format!("{label:<28} FAILED: {e}"),
        };
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let dirs: Vec<PathBuf> = todo
        .iter()
        .map(|&i| grid.path().join(&plan.runs[i].dir))
        .collect();
    if a.jobs <= 1 {
        for (k, dir) in dirs.iter().enumerate() {
            let label = &plan.runs[todo[k]].label;
            let r =
                run_in_folder(&data, dir, &device, &bar, a.save_models).map_err(|e| e.to_string());
            report_line(label, &r);
        }
    } else {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let extra: Vec<String> = if a.save_models {
            vec!["--save-model".into()]
        } else {
            vec![]
        };
        crate::pool::run_children(
            &data,
            &grid,
            &dirs,
            &crate::pool::command_prefix("reproduce"),
            a.jobs,
            (cores / a.jobs).max(1),
            &extra,
            &|k, r| {
                let planned = crate::run::planned_iterations(&data, &configs[todo[k]]).unwrap_or(0);
                bar.inc(planned as u64);
                let label = &plan.runs[todo[k]].label;
                let r = match r {
                    Ok(()) => crate::grid::read_outcome(&dirs[k]).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                report_line(label, &r);
            },
        )?;
    }
    bar.finish_and_clear();
    let outcomes = write_merged(
        &grid,
        false,
        a.out.quiet,
        Some(start.elapsed().as_secs_f64()),
    )?;
    Ok(outcomes)
}

/// `reproduce --plan`: the grid is written; adds the Slurm files with `--slurm` and says what
/// to run next.
fn write_planned(a: &ReproduceArgs, grid: &RunDir, plan: &Plan) -> anyhow::Result<()> {
    let dirs: Vec<PathBuf> = plan.runs.iter().map(|r| r.dir.clone()).collect();
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let next = mckd_train::cluster::write_planned(
        grid,
        &dirs,
        &a.plan,
        &exe,
        "runs/<run>",
        "avmnist merge",
    )?;
    println!("{next}");
    Ok(())
}

/// Merges a grid folder into its tables; with missing or failed runs, lists them and fails
/// unless `allow_partial`.
fn write_merged(
    grid: &RunDir,
    allow_partial: bool,
    quiet: bool,
    wall: Option<f64>,
) -> anyhow::Result<Vec<RunOutcome>> {
    let (plan, merged) = merge(grid.path())?;
    let first = plan.runs.first().context("the grid's plan lists no run")?;
    // The tables describe the settings of the grid's MCKD runs (else its first run).
    let described = plan
        .runs
        .iter()
        .find(|r| r.label.starts_with("mckd-"))
        .unwrap_or(first);
    let describe: AvRunConfig = read_json(&grid.path().join(&described.dir).join("config.json"))?;
    let mut configs = report::MethodConfigs::new();
    for run in &plan.runs {
        let c: AvRunConfig = read_json(&grid.path().join(&run.dir).join("config.json"))?;
        configs.entry(c.method.kind()).or_insert(c.method);
    }
    let Plan { rows, .. } = plan;
    let incomplete = !merged.missing.is_empty() || !merged.failed.is_empty();
    for (label, msg) in &merged.failed {
        eprintln!("failed: {label}: {msg}");
    }
    for label in &merged.missing {
        eprintln!("missing (not finished): {label}");
    }
    let wall = wall.unwrap_or_else(|| merged.outcomes.iter().map(|o| o.seconds).sum());
    let mut results = report::results(&merged.outcomes, &rows, &describe, &configs, wall);
    results
        .extra
        .insert("missing_runs".into(), json!(merged.missing));
    results.extra.insert(
        "failed_runs".into(),
        json!(merged.failed.iter().map(|(l, _)| l).collect::<Vec<_>>()),
    );
    grid.write_json("results.json", &results)?;
    let (md, csv) = report::table2(&merged.outcomes, &rows, &describe, &configs);
    grid.write("table2.md", md.as_bytes())?;
    grid.write("table2.csv", csv.as_bytes())?;
    grid.write_json("runs.json", &report::runs_json(&merged.outcomes))?;
    report::write_plots(grid, &merged.outcomes)?;
    if incomplete {
        grid.set_status(
            RunState::Failed,
            Some(format!(
                "{} runs missing, {} failed",
                merged.missing.len(),
                merged.failed.len()
            )),
            None,
        )?;
        if !allow_partial {
            bail!(
                "{} of the grid's runs are missing and {} failed (listed above); the tables in \
                 {} cover the finished ones. Finish them with --resume, or pass --allow-partial",
                merged.missing.len(),
                merged.failed.len(),
                grid.path().display()
            );
        }
    } else {
        grid.set_status(RunState::Finished, None, None)?;
    }
    if !quiet {
        println!("{md}");
        println!(
            "wall time {:.1} min; results in {}",
            wall / 60.0,
            grid.path().display()
        );
    }
    Ok(merged.outcomes)
}

fn merge_cmd(a: &MergeArgs) -> anyhow::Result<()> {
    let grid = RunDir::create(&a.grid)?;
    if !grid.file("plan.json").is_file() {
        bail!(
            "{} is not a grid folder (no plan.json; grids are written by `mckd avmnist \
             reproduce`)",
            a.grid.display()
        );
    }
    write_merged(&grid, a.allow_partial, false, None).map(|_| ())
}

fn run_one_cmd(a: &RunOneArgs) -> anyhow::Result<()> {
    run_one_folder(&a.run, a.snapshot.as_deref(), a.save_model)
}

/// `mckd run-one RUN` for an AV-MNIST run folder of a planned grid: trains and evaluates it
/// into its own folder (a finished run is not trained again; an unfinished one resumes from
/// its checkpoint).
pub fn run_one_folder(run: &Path, snapshot: Option<&Path>, save_model: bool) -> anyhow::Result<()> {
    // Checked before the data is loaded: a finished run costs nothing.
    if crate::grid::is_finished(run) {
        eprintln!("{} is finished; not training it again", run.display());
        return Ok(());
    }
    let cfg: AvRunConfig = read_json(&run.join("config.json"))?;
    let device = cfg.device.device()?;
    let data = match snapshot {
        Some(path) => AvMnist::read_snapshot(path)?,
        None => load(cfg.task.data_dir.as_deref(), cfg.task.split_file.as_deref())?.1,
    };
    run_in_folder(
        &data,
        run,
        &device,
        &indicatif::ProgressBar::hidden(),
        save_model,
    )?;
    Ok(())
}

/// `train`: one run; writes config.json, splits.json, model.bpk, result.json, results.json,
/// train_log.csv and status.json.
fn train(a: &TrainArgs) -> anyhow::Result<()> {
    let base = a.cfg.base()?;
    let kind = a
        .method
        .or(base.as_ref().map(|b| b.method.kind()))
        .unwrap_or(MethodKind::Mckd);
    let setting = a
        .setting
        .as_deref()
        .map(str::parse::<Setting>)
        .transpose()?
        .or(base.as_ref().and_then(|b| b.task.setting));
    let seed = a.seed.or(base.as_ref().map(|b| b.seed)).unwrap_or(1);
    let cfg = a.cfg.config(base.as_ref(), kind, setting, seed);
    validate(&cfg)?;
    let device = cfg.device.device()?;
    let (_, data, split_text) = load(cfg.task.data_dir.as_deref(), cfg.task.split_file.as_deref())?;
    prepare(&data, &cfg)?;
    let (run, resumed) = a.out.open("avmnist-train")?;
    if resumed {
        let old: AvRunConfig = read_json(&run.file("config.json"))?;
        if old != cfg {
            bail!(
                "{} was started with another config; --resume continues it only with the same \
                 settings (pass none, or --config {})",
                run.path().display(),
                run.file("config.json").display()
            );
        }
        if run.status().is_some_and(|s| s.state == RunState::Finished) {
            println!("{} is finished; nothing to do", run.path().display());
            return Ok(());
        }
    } else {
        run.write("config.json", cfg.to_json().as_bytes())?;
        run.write("splits.json", split_text.as_bytes())?;
    }
    let spec = RunSpec::of(&cfg);
    let total = crate::run::planned_iterations(&data, &cfg)?;
    let bar = mckd_train::progress_bar(total as u64, &spec.label());
    let start = Instant::now();
    let result = run_one(&data, &cfg, &device, &bar, Some((&run, resumed)));
    bar.finish_and_clear();
    let (method, outcome) = match result {
        Ok(r) => r,
        Err(e) => {
            run.set_status(RunState::Failed, Some(e.to_string()), None)?;
            return Err(e.into());
        }
    };
    save_model(&method, &run.file("model.bpk"))?;
    let columns = log_columns(&method, &cfg);
    run.write("train_log.csv", log_csv(&outcome.log, &columns).as_bytes())?;
    if let Some(pre) = method.pre_log() {
        run.write("pretrain_log.csv", pre.as_bytes())?;
    }
    run.write_json("result.json", &outcome)?;
    let settings: Vec<Setting> = spec.setting.into_iter().collect();
    let outcomes = [outcome];
    run.write_json(
        "results.json",
        &report::results(
            &outcomes,
            &settings,
            &cfg,
            &report::MethodConfigs::from([(spec.method, cfg.method.clone())]),
            start.elapsed().as_secs_f64(),
        ),
    )?;
    run.set_status(RunState::Finished, None, Some(outcomes[0].iterations))?;
    if !a.out.quiet {
        let o = &outcomes[0];
        println!(
            "{}: accuracy {:.2} % (subsets: {}){}; {} pretraining + {} loop iterations, \
             {:.1} s; {}",
            spec.label(),
            100.0 * outcomes[0].accuracy,
            outcomes[0]
                .subsets
                .iter()
                .map(|s| format!(
                    "{} {:.2}",
                    present_names(&MODALITY_NAMES, &s.mask).join("+"),
                    100.0 * s.accuracy
                ))
                .collect::<Vec<_>>()
                .join(", "),
            match o.iwv.as_slice() {
                [i, a] => format!(", IWV image {i:.3} / audio {a:.3}"),
                _ => String::new(),
            },
            o.pre_iterations,
            o.iterations,
            o.seconds,
            run.path().display()
        );
    }
    Ok(())
}

/// `eval`: loads `config.json` + `model.bpk` of a `train` folder and evaluates every subset;
/// writes `eval.json` (Results schema).
fn eval(a: &EvalArgs) -> anyhow::Result<()> {
    let cfg_path = a.run.join("config.json");
    let mut cfg: AvRunConfig = read_json(&cfg_path)
        .with_context(|| format!("{} is not an AV-MNIST training run", a.run.display()))?;
    let model_path = a.run.join("model.bpk");
    if !model_path.is_file() {
        bail!(
            "{} not found (eval reads folders written by `mckd avmnist train`)",
            model_path.display()
        );
    }
    Overrides {
        evaluate_on: a.evaluate_on,
        ..Overrides::default()
    }
    .apply(&mut cfg, &a.data);
    if cfg.task.data_dir.as_ref().is_some_and(|d| !d.is_dir()) {
        cfg.task.data_dir = None;
    }
    validate(&cfg)?;
    let out = a.out.clone().unwrap_or_else(|| a.run.join("eval.json"));
    mckd_train::run::check_not_input(&out, &[&model_path, &cfg_path])?;
    if out.exists() && !a.overwrite {
        bail!(
            "{} exists; pass --overwrite to replace it or --out for another file",
            out.display()
        );
    }
    let device: Device = cfg.device.device()?;
    let (_, data, _) = load(cfg.task.data_dir.as_deref(), cfg.task.split_file.as_deref())?;
    let prep = prepare(&data, &cfg)?;
    let mut method = crate::run::build_method(&cfg, &prep.train, &device)?;
    let record = std::fs::read(&model_path)
        .with_context(|| format!("cannot read {}", model_path.display()))?;
    method.load_model(&record).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (is it an AV-MNIST model of this config?)",
            model_path.display()
        )
    })?;
    let names: Vec<String> = MODALITY_NAMES.iter().map(|s| s.to_string()).collect();
    let mut rows = Vec::new();
    for s in crate::run::evaluate(&method, &prep.eval, &device) {
        println!(
            "{:<12} {:6.2} %",
            present_names(&MODALITY_NAMES, &s.mask).join("+"),
            100.0 * s.accuracy
        );
        let mut row = Row::new(
            cfg.method.kind().name(),
            present_names(&MODALITY_NAMES, &s.mask),
            "accuracy",
            s.accuracy,
        );
        row.setting = cfg.task.setting.map(|s| s.to_string());
        rows.push(row);
    }
    let mut extra = Map::new();
    extra.insert("model".into(), json!(model_path));
    extra.insert("evaluated_on".into(), json!(cfg.task.evaluate_on));
    extra.insert("samples".into(), json!(prep.eval.len()));
    let results = Results {
        task: "avmnist".into(),
        rows,
        iwv: iwv_map(&names, &method.iwv()),
        extra,
    };
    mckd_train::run::write_atomic(&out, serde_json::to_string_pretty(&results)?.as_bytes())?;
    println!("{}wrote {}", iwv_text(&method.iwv()), out.display());
    Ok(())
}
