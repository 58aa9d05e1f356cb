//! The `mckd avmnist` subcommands: `reproduce` (paper Table 2), `train` and `eval` (single runs).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::Module;
use clap::{Args, Subcommand, ValueEnum};
use mckd_core::{Distance, MckdModel, Normalisation, present_names};
use mckd_data::{AvMnist, SmilSplit};
use mckd_train::device::DeviceChoice;
use mckd_train::eval::accuracy;
use mckd_train::report::{Results, Row, iwv_map};
use mckd_train::run::RunDir;
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use crate::data::AvSource;
use crate::experiment::{
    ALL_SETTINGS, ExperimentConfig, Method, PercentMapping, RunOutcome, RunSpec, Setting, plan,
    planned_iterations, prepare, run_one, run_sequential,
};
use crate::model::MODALITY_NAMES;
use crate::report;

/// `mckd avmnist ...`
#[derive(Debug, Subcommand)]
pub enum AvmnistCommand {
    /// Reproduce paper Table 2 (missing audio and missing visual at 5/10/15/20 %) for every
    /// method and seed; writes results.json, table2.md/csv, logs and the IWV series.
    Reproduce(ReproduceArgs),
    /// Train one run (a method, a setting, a seed) and save the model.
    Train(TrainArgs),
    /// Evaluate a model saved by `train` on every modality subset of the test set.
    Eval(EvalArgs),
}

/// CKD distance (`--distance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DistanceArg {
    /// Mean absolute error (paper default).
    L1,
    /// Mean squared error.
    Mse,
}

/// IWV normalisation (`--normalisation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NormalisationArg {
    /// Softmax (paper default).
    Softmax,
    /// Sigmoid.
    Sigmoid,
    /// ReLU.
    Relu,
}

/// Data, device and hyper-parameters shared by `reproduce` and `train`.
#[derive(Debug, Clone, Args)]
pub struct ExperimentArgs {
    /// Folder that contains `avmnist/` (else $MCKD_DATA_DIR, else a cached or downloaded kit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A split file in smil_split.json format (default: the kit's smil_split.json).
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    pub device: DeviceChoice,
    /// Epochs per run.
    #[arg(long, default_value_t = 60)]
    pub epochs: usize,
    /// Batch size (inner and meta steps).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// A meta step every this many inner iterations (0 = never).
    #[arg(long, default_value_t = crate::experiment::DEFAULT_META_INTERVAL)]
    pub meta_interval: usize,
    /// CKD weight α of the `mckd` method.
    #[arg(long, default_value_t = 0.1)]
    pub alpha: f64,
    /// CKD distance.
    #[arg(long, value_enum, default_value_t = DistanceArg::L1)]
    pub distance: DistanceArg,
    /// IWV normalisation.
    #[arg(long, value_enum, default_value_t = NormalisationArg::Softmax)]
    pub normalisation: NormalisationArg,
    /// IWV Adam learning rate.
    #[arg(long, default_value_t = 1e-2)]
    pub iwv_lr: f64,
    /// IWV Adam weight decay.
    #[arg(long, default_value_t = 1e-2)]
    pub iwv_weight_decay: f64,
    /// Percent → paired samples per digit: total (6/15/21/30) or mce (6/12/15/21).
    #[arg(long, value_enum, default_value_t = PercentMapping::Total)]
    pub mapping: PercentMapping,
    /// Validation mode: hold out this many training samples per digit and evaluate on them
    /// instead of the test set (for tuning; 0 = test).
    #[arg(long, default_value_t = 0)]
    pub validation_per_digit: usize,
    /// No progress bar, no per-run lines.
    #[arg(long)]
    pub quiet: bool,
}

impl ExperimentArgs {
    /// The experiment configuration these flags describe.
    pub fn config(&self) -> ExperimentConfig {
        ExperimentConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            meta_interval: self.meta_interval,
            alpha: self.alpha,
            distance: match self.distance {
                DistanceArg::L1 => Distance::L1,
                DistanceArg::Mse => Distance::Mse,
            },
            normalisation: match self.normalisation {
                NormalisationArg::Softmax => Normalisation::Softmax,
                NormalisationArg::Sigmoid => Normalisation::Sigmoid,
                NormalisationArg::Relu => Normalisation::Relu,
            },
            iwv_lr: self.iwv_lr,
            iwv_weight_decay: self.iwv_weight_decay,
            mapping: self.mapping,
            validation_per_digit: self.validation_per_digit,
            ..ExperimentConfig::default()
        }
    }
}

/// `mckd avmnist reproduce`
#[derive(Debug, Clone, Args)]
pub struct ReproduceArgs {
    /// Shared options.
    #[command(flatten)]
    pub exp: ExperimentArgs,
    /// Output folder (default runs/<timestamp>-avmnist).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Number of seeds.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// First seed (seeds are first_seed, first_seed + 1, ...).
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Rows, comma separated (audio_5 ... audio_20, visual_5 ... visual_20; default all 8).
    #[arg(long, value_delimiter = ',')]
    pub rows: Option<Vec<String>>,
    /// Methods, comma separated (default all five).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub methods: Option<Vec<Method>>,
    /// Runs trained at the same time, as child processes of this binary (every run stays
    /// deterministic for its seed); each gets cores / jobs threads unless RAYON_NUM_THREADS is
    /// set.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
}

/// `mckd avmnist train`
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Shared options.
    #[command(flatten)]
    pub exp: ExperimentArgs,
    /// Method.
    #[arg(long, value_enum, default_value_t = Method::Mckd)]
    pub method: Method,
    /// Setting (needed by baseline and mckd), e.g. audio_10.
    #[arg(long)]
    pub setting: Option<String>,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output folder (default runs/<timestamp>-avmnist-train).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `mckd avmnist eval`
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// A run folder written by `mckd avmnist train` (config.json + model.bpk).
    #[arg(long)]
    pub run: PathBuf,
    /// Folder that contains `avmnist/` (else $MCKD_DATA_DIR, else cache/download).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Evaluate on the test samples of another split file (smil_split.json format).
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    pub device: DeviceChoice,
}

/// Runs a subcommand.
pub fn run(cmd: AvmnistCommand) -> anyhow::Result<()> {
    match cmd {
        AvmnistCommand::Reproduce(a) => reproduce(&a).map(|_| ()),
        AvmnistCommand::Train(a) => train(&a),
        AvmnistCommand::Eval(a) => eval(&a),
    }
}

/// The kit folder: `--data-dir` as given, else `$MCKD_DATA_DIR` or the cache (downloading
/// what is missing, with a clear message offline).
pub fn resolve_data_dir(data_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = data_dir {
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
fn load(
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

/// The `config.json` of a run folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfigFile {
    /// `reproduce` or `train`.
    pub command: String,
    /// Hyper-parameters.
    pub experiment: ExperimentConfig,
    /// Runs of this folder.
    pub runs: Vec<RunSpec>,
    /// Settings (rows), in order.
    pub rows: Vec<Setting>,
    /// Data folder used.
    pub data_dir: PathBuf,
    /// Split file given with `--split`, if any.
    pub split: Option<PathBuf>,
    /// Device.
    pub device: DeviceChoice,
    /// Parallel jobs.
    pub jobs: usize,
}

/// `reproduce`: trains every (method, row, seed), writes the reports; returns the outcomes.
pub fn reproduce(a: &ReproduceArgs) -> anyhow::Result<Vec<RunOutcome>> {
    let cfg = a.exp.config();
    cfg.validate()?;
    if let Some(job) = std::env::var_os(WORKER_ENV) {
        worker(a, &cfg, &job.to_string_lossy())?;
        return Ok(Vec::new());
    }
    if a.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let settings = parse_rows(&a.rows)?;
    let methods = a.methods.clone().unwrap_or_else(|| {
        vec![
            Method::LowerbImage,
            Method::LowerbAudio,
            Method::Upperb,
            Method::Baseline,
            Method::Mckd,
        ]
    });
    let device = a.exp.device.device()?;
    let (dir, data, split_text) = load(a.exp.data_dir.as_deref(), a.exp.split.as_deref())?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| RunDir::default_path("avmnist"));
    let run_dir = RunDir::create(&out)?;
    let specs = plan(&methods, &settings, a.first_seed, a.seeds);
    run_dir.write_json(
        "config.json",
        &RunConfigFile {
            command: "reproduce".into(),
            experiment: cfg.clone(),
            runs: specs.clone(),
            rows: settings.clone(),
            data_dir: dir,
            split: a.exp.split.clone(),
            device: a.exp.device,
            jobs: a.jobs,
        },
    )?;
    run_dir.write("splits.json", split_text.as_bytes())?;
    let mut total = 0usize;
    for s in &specs {
        total += planned_iterations(prepare(&data, s, &cfg)?.train_len(), &cfg);
    }
    let bar = mckd_train::progress_bar(
        total as u64,
        &format!("avmnist {} runs", specs.len()),
        a.exp.quiet,
    );
    let start = Instant::now();
    let done: Mutex<Vec<RunOutcome>> = Mutex::new(Vec::new());
    let on_done = |o: &RunOutcome| {
        if !a.exp.quiet {
            let line = format!(
                "{:<28} acc {:6.2} %  IWV image {:.3}  {:6.1} s",
                o.spec.label(),
                100.0 * o.accuracy,
                o.iwv[0],
                o.seconds
            );
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
        let mut d = done.lock().unwrap_or_else(|e| e.into_inner());
        d.push(o.clone());
        // Partial reports after every run, so a long reproduction can be read while it runs.
        let write = || -> crate::experiment::Result<()> {
            report::write_log(&run_dir, o)?;
            write_reports(&run_dir, &d, &settings, &cfg, start.elapsed().as_secs_f64())
        };
        if let Err(e) = write() {
            bar.println(format!("warning: could not write partial reports: {e}"));
        }
    };
    let results = if a.jobs <= 1 {
        run_sequential(&data, &specs, &cfg, &device, &bar, &on_done)
    } else {
        run_children(&data, &specs, &cfg, a.jobs, &run_dir, &bar, &on_done)?
    };
    bar.finish_and_clear();
    let mut outcomes = Vec::new();
    for (spec, r) in specs.iter().zip(results) {
        outcomes.push(r.with_context(|| format!("run {}", spec.label()))?);
    }
    let wall = start.elapsed().as_secs_f64();
    write_reports(&run_dir, &outcomes, &settings, &cfg, wall)?;
    report::write_plots(&run_dir, &outcomes)?;
    if !a.exp.quiet {
        let (md, _) = report::table2(&outcomes, &settings, &cfg);
        println!("{md}");
        println!(
            "wall time {:.1} min; results in {}",
            wall / 60.0,
            run_dir.path().display()
        );
    }
    Ok(outcomes)
}

fn write_reports(
    run_dir: &RunDir,
    outcomes: &[RunOutcome],
    settings: &[Setting],
    cfg: &ExperimentConfig,
    wall: f64,
) -> crate::experiment::Result<()> {
    run_dir.write_json(
        "results.json",
        &report::results(outcomes, settings, cfg, wall),
    )?;
    let (md, csv) = report::table2(outcomes, settings, cfg);
    run_dir.write("table2.md", md.as_bytes())?;
    run_dir.write("table2.csv", csv.as_bytes())?;
    run_dir.write_json("runs.json", &report::runs_json(outcomes))?;
    Ok(())
}

/// `train`: one run; writes config.json, splits.json, model.bpk, results.json, train_log.csv.
fn train(a: &TrainArgs) -> anyhow::Result<()> {
    let cfg = a.exp.config();
    cfg.validate()?;
    let setting = a
        .setting
        .as_deref()
        .map(str::parse::<Setting>)
        .transpose()?;
    let spec = RunSpec {
        method: a.method,
        setting: if a.method.needs_setting() {
            setting
        } else {
            None
        },
        seed: a.seed,
    };
    if a.method.needs_setting() && spec.setting.is_none() {
        bail!(
            "--method {} needs --setting (e.g. audio_10)",
            a.method.name()
        );
    }
    let device = a.exp.device.device()?;
    let (dir, data, split_text) = load(a.exp.data_dir.as_deref(), a.exp.split.as_deref())?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| RunDir::default_path("avmnist-train"));
    let run_dir = RunDir::create(&out)?;
    run_dir.write_json(
        "config.json",
        &RunConfigFile {
            command: "train".into(),
            experiment: cfg.clone(),
            runs: vec![spec],
            rows: spec.setting.into_iter().collect(),
            data_dir: dir,
            split: a.exp.split.clone(),
            device: a.exp.device,
            jobs: 1,
        },
    )?;
    run_dir.write("splits.json", split_text.as_bytes())?;
    let total = planned_iterations(prepare(&data, &spec, &cfg)?.train_len(), &cfg);
    let bar = mckd_train::progress_bar(total as u64, &spec.label(), a.exp.quiet);
    let start = Instant::now();
    let (model, outcome) = run_one(&data, &spec, &cfg, &device, &bar)?;
    bar.finish_and_clear();
    let model_path = run_dir.file("model.bpk");
    model
        .save_file(&model_path)
        .map_err(|e| anyhow::anyhow!("cannot save {}: {e:?}", model_path.display()))?;
    let names: Vec<String> = MODALITY_NAMES.iter().map(|s| s.to_string()).collect();
    run_dir.write(
        "train_log.csv",
        mckd_train::train::log_csv(&outcome.log, &names).as_bytes(),
    )?;
    let settings: Vec<Setting> = spec.setting.into_iter().collect();
    let outcomes = [outcome];
    write_reports(
        &run_dir,
        &outcomes,
        &settings,
        &cfg,
        start.elapsed().as_secs_f64(),
    )?;
    if !a.exp.quiet {
        println!(
            "{}: accuracy {:.2} % (subsets: {}), IWV image {:.3} / audio {:.3}; {}",
            spec.label(),
            100.0 * outcomes[0].accuracy,
            outcomes[0]
                .subsets
                .iter()
                .map(|(m, a)| format!(
                    "{} {:.2}",
                    present_names(&MODALITY_NAMES, m).join("+"),
                    100.0 * a
                ))
                .collect::<Vec<_>>()
                .join(", "),
            outcomes[0].iwv[0],
            outcomes[0].iwv[1],
            run_dir.path().display()
        );
    }
    Ok(())
}

/// `eval`: loads `config.json` + `model.bpk` of a `train` folder and evaluates every subset
/// of the test set; writes `eval.json` (Results schema) into the run folder.
fn eval(a: &EvalArgs) -> anyhow::Result<()> {
    let cfg_path = a.run.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("cannot read {}", cfg_path.display()))?;
    let file: RunConfigFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an avmnist run config", cfg_path.display()))?;
    let spec = *file
        .runs
        .first()
        .with_context(|| format!("{} lists no run", cfg_path.display()))?;
    let model_path = a.run.join("model.bpk");
    if !model_path.is_file() {
        bail!(
            "{} not found (eval reads folders written by `mckd avmnist train`)",
            model_path.display()
        );
    }
    let device = a.device.device()?;
    let data_dir = a
        .data_dir
        .clone()
        .or(Some(file.data_dir.clone()).filter(|d| d.is_dir()));
    let split = a.split.clone().or(file.split.clone());
    let (_, data, _) = load(data_dir.as_deref(), split.as_deref())?;
    let net = file.experiment.net.init_seeded(spec.seed, &device);
    let model = MckdModel::new(net, file.experiment.normalisation, spec.seed, &device)
        .try_load_file(&model_path)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e:?}", model_path.display()))?;
    let test = AvSource::paired(&data.test);
    let names: Vec<String> = MODALITY_NAMES.iter().map(|s| s.to_string()).collect();
    let mut rows = Vec::new();
    for m in mckd_core::all_subsets(2) {
        let (acc, n) = accuracy(&model, &test, &m, 256, &device);
        println!(
            "{:<12} {:6.2} %  ({n} samples)",
            present_names(&MODALITY_NAMES, &m).join("+"),
            100.0 * acc
        );
        let mut row = Row::new(
            spec.method.name(),
            present_names(&MODALITY_NAMES, &m),
            "accuracy",
            acc,
        );
        row.setting = spec.setting.map(|s| s.to_string());
        rows.push(row);
    }
    let mut extra = Map::new();
    extra.insert("model".into(), json!(model_path));
    extra.insert("split".into(), json!(split));
    extra.insert("test_samples".into(), json!(data.test.len()));
    let results = Results {
        task: "avmnist".into(),
        rows,
        iwv: iwv_map(&names, &model.iwv.normalised_values()),
        extra,
    };
    let run_dir = RunDir::create(&a.run)?;
    let p = run_dir.write_json("eval.json", &results)?;
    println!(
        "IWV {:?}; wrote {}",
        model.iwv.normalised_values(),
        p.display()
    );
    Ok(())
}

/// Environment variable that turns `reproduce` into a worker running one run (set by the parent
/// for its child processes; its value is a JSON [`WorkerJob`]).
pub const WORKER_ENV: &str = "MCKD_AVMNIST_WORKER";

/// One run for a child process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerJob {
    /// The run.
    pub spec: RunSpec,
    /// Where the child writes its [`WorkerOutput`].
    pub output: PathBuf,
    /// The parent's loaded data as a snapshot file (`AvMnist::to_snapshot`), read instead of
    /// loading the data folder again; `None`: load it.
    #[serde(default)]
    pub data: Option<PathBuf>,
}

/// What a child process returns (NaN accuracies as `null`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerOutput {
    spec: RunSpec,
    accuracy: Option<f64>,
    subsets: Vec<(Vec<bool>, Option<f64>)>,
    iwv: Vec<f32>,
    iterations: usize,
    seconds: f64,
    log: Vec<mckd_train::train::LogRow>,
}

fn opt(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

impl From<&RunOutcome> for WorkerOutput {
    fn from(o: &RunOutcome) -> Self {
        Self {
            spec: o.spec,
            accuracy: opt(o.accuracy),
            subsets: o
                .subsets
                .iter()
                .map(|(m, a)| (m.clone(), opt(*a)))
                .collect(),
            iwv: o.iwv.clone(),
            iterations: o.iterations,
            seconds: o.seconds,
            log: o.log.clone(),
        }
    }
}

impl From<WorkerOutput> for RunOutcome {
    fn from(w: WorkerOutput) -> Self {
        Self {
            spec: w.spec,
            accuracy: w.accuracy.unwrap_or(f64::NAN),
            subsets: w
                .subsets
                .into_iter()
                .map(|(m, a)| (m, a.unwrap_or(f64::NAN)))
                .collect(),
            iwv: w.iwv,
            iterations: w.iterations,
            seconds: w.seconds,
            log: w.log,
        }
    }
}

/// The child side: runs the job's spec with the parent's flags and writes the outcome.
fn worker(a: &ReproduceArgs, cfg: &ExperimentConfig, job: &str) -> anyhow::Result<()> {
    let job: WorkerJob =
        serde_json::from_str(job).with_context(|| format!("bad {WORKER_ENV} value: {job}"))?;
    let device = a.exp.device.device()?;
    let data = match &job.data {
        Some(path) => AvMnist::read_snapshot(path)?,
        None => load(a.exp.data_dir.as_deref(), a.exp.split.as_deref())?.1,
    };
    let (_, outcome) = run_one(
        &data,
        &job.spec,
        cfg,
        &device,
        &indicatif::ProgressBar::hidden(),
    )?;
    let text = serde_json::to_vec(&WorkerOutput::from(&outcome))?;
    mckd_train::run::write_atomic(&job.output, &text)?;
    Ok(())
}

/// The parent side: runs every spec as a child process of this binary (same arguments, plus
/// [`WORKER_ENV`], and `RAYON_NUM_THREADS` = cores / `jobs` unless set), `jobs` at a time;
/// child stderr goes to `logs/<run>.stderr`. The progress bar advances by a run's iterations
/// when it finishes.
fn run_children(
    data: &AvMnist,
    specs: &[RunSpec],
    cfg: &ExperimentConfig,
    jobs: usize,
    run_dir: &RunDir,
    bar: &indicatif::ProgressBar,
    on_done: &(dyn Fn(&RunOutcome) + Sync),
) -> anyhow::Result<Vec<crate::experiment::Result<RunOutcome>>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let work = RunDir::create(&run_dir.file("logs"))?;
    // The children read the loaded data from one snapshot instead of loading it each.
    let snapshot = work.file("avmnist-data.snapshot");
    mckd_train::run::write_atomic(&snapshot, &data.to_snapshot())?;
    let mut planned = Vec::new();
    for s in specs {
        planned.push(planned_iterations(prepare(data, s, cfg)?.train_len(), cfg));
    }
    // Longest runs first, so that the last ones to finish are short (the order of the
    // results does not change): relative step costs measured on one thread (MCKD's meta
    // step ≈ 1.45×, UpperB's two full encoders ≈ 1.55× a Baseline iteration).
    let cost = |i: usize| {
        let factor = match specs[i].method {
            Method::Mckd => 1.45,
            Method::Upperb => 1.55,
            _ => 1.0,
        };
        planned[i] as f64 * factor
    };
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by(|&a, &b| cost(b).total_cmp(&cost(a)));
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads_per_child = (cores / jobs.max(1)).max(1);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<crate::experiment::Result<RunOutcome>>>> =
        Mutex::new((0..specs.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(specs.len()) {
            scope.spawn(|| {
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let spec = specs[i];
                    let r = run_child(&exe, &args, &spec, &work, &snapshot, threads_per_child);
                    bar.inc(planned[i] as u64);
                    if let Ok(o) = &r {
                        on_done(o);
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    let _ = std::fs::remove_file(&snapshot);
    Ok(results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every spec ran"))
        .collect())
}

fn run_child(
    exe: &Path,
    args: &[std::ffi::OsString],
    spec: &RunSpec,
    work: &RunDir,
    snapshot: &Path,
    threads_per_child: usize,
) -> crate::experiment::Result<RunOutcome> {
    use crate::experiment::AvmnistError;
    let output = work.file(&format!("{}.outcome.json", spec.label()));
    let stderr_path = work.file(&format!("{}.stderr", spec.label()));
    let job = serde_json::to_string(&WorkerJob {
        spec: *spec,
        output: output.clone(),
        data: Some(snapshot.to_path_buf()),
    })
    .map_err(|e| AvmnistError::Config(e.to_string()))?;
    let stderr = std::fs::File::create(&stderr_path).map_err(|e| AvmnistError::File {
        path: stderr_path.clone(),
        msg: e.to_string(),
    })?;
    let mut command = std::process::Command::new(exe);
    // The children share the cores: unless the user chose, each gets its share of them (with
    // more threads than cores the pools' spinning workers would take turns with the work).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        command.env("RAYON_NUM_THREADS", threads_per_child.to_string());
    }
    let status = command
        .args(args)
        .env(WORKER_ENV, job)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .status()
        .map_err(|e| AvmnistError::File {
            path: exe.to_path_buf(),
            msg: format!("cannot start a worker process: {e}"),
        })?;
    if !status.success() {
        return Err(AvmnistError::File {
            path: stderr_path,
            msg: format!(
                "worker for {} failed ({status}); see this file",
                spec.label()
            ),
        });
    }
    let text = std::fs::read(&output).map_err(|e| AvmnistError::File {
        path: output.clone(),
        msg: e.to_string(),
    })?;
    let w: WorkerOutput = serde_json::from_slice(&text).map_err(|e| AvmnistError::File {
        path: output.clone(),
        msg: format!("bad worker output: {e}"),
    })?;
    let _ = std::fs::remove_file(&output);
    if std::fs::metadata(&stderr_path).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(&stderr_path);
    }
    Ok(w.into())
}
