//! `mckd brats ...`: phantoms, train, predict, evaluate, eval (predict + evaluate), demo.

// The argument docs are clap's --help text, where `<placeholder>` is plain text, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use mckd_core::{CkdReduction, Distance, Levels, Method as _, Normalisation};
use mckd_train::cluster::PlanArgs;
use mckd_train::config::{Budget, LrSchedule, OptimizerConfig};
use mckd_train::device::DeviceChoice;
use mckd_train::run::{OutPolicy, RunDir, RunState, check_not_input};
use mckd_volume::{
    Case, LabelConvention, PhantomConfig, discover_cases, implied_convention, write_phantom_dataset,
};

use crate::config::{BratsRunConfig, Method, MethodList, Preset, preset, validate};
use crate::demo::{DemoConfig, DemoPreset, demo};
use crate::eval::evaluate_runs;
use crate::evaluate::{evaluate_folder, parse_subsets, per_case_csv, predict_cases};
use crate::infer::predict_files;
use crate::peers::PeersConfig;
use crate::report::{MethodEval, make_report};
use crate::seeds::demo_seeds;
use crate::train::{load_config, load_model, train_run};

/// BraTS subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BratsCommand {
    /// Writes seeded synthetic phantoms (BraTS layout, NIfTI) — the CPU default data set.
    Phantoms(PhantomsArgs),
    /// Trains one method (MCKD, the Baseline, the placebo or a Table 1 peer: --method) on a
    /// cases folder; writes a run folder.
    Train(TrainArgs),
    /// Writes label maps of a trained run for any subsets of any cases (or of one case's files).
    Predict(PredictArgs),
    /// Scores a prediction folder against reference cases (Dice, HD95; per case and subset).
    Evaluate(EvaluateArgs),
    /// Predicts and scores a run's test cases on all 15 subsets (with other runs beside it).
    Eval(EvalArgs),
    /// Phantoms → MCKD and Baseline (or --methods all: the five peers too) → evaluation table
    /// (60 phantoms of 32³, 1,200 iterations per method: a few minutes on 2 cores for the two).
    Demo(DemoArgs),
    /// The real-data experiment: the cases of a folder (default $MCKD_DATA_DIR/brats-real) at
    /// 2 mm, a seeded 13 / 2 / 5 split, MCKD and Baseline (--methods: the peers too), all 15
    /// subsets scored at the original 1 mm labels; with --seeds N, a summary across seeds.
    Real(RealArgs),
    /// Prepares (crops to the brain and resamples) every case of a folder at a spacing into
    /// the cache, checking every file; prints each case's grid.
    Prepare(PrepareArgs),
    /// Merges a planned grid (`demo --plan`, `real --plan`) whose runs were trained by
    /// `mckd run-one`: each complete seed's evaluation and tables, the summary across seeds;
    /// missing and failed runs listed (non-zero exit unless --allow-partial).
    Merge(MergeArgs),
}

/// `mckd brats real`.
#[derive(clap::Args, Debug)]
pub struct RealArgs {
    /// Cases root [default: $MCKD_DATA_DIR/brats-real].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder [default: runs/<timestamp>-brats-real]; refused if non-empty unless
    /// --resume or --overwrite.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue an experiment in --out (finished methods and seeds are kept; unfinished runs
    /// resume from their checkpoints).
    #[arg(long, conflicts_with_all = ["overwrite", "plan"])]
    pub resume: bool,
    /// Move an existing --out aside and start again.
    #[arg(long)]
    pub overwrite: bool,
    /// A smoke run (20 iterations per method).
    #[arg(long)]
    pub quick: bool,
    /// Methods: `all` (MCKD, Baseline, U-HeMIS, U-HVED, ShaSpec, mmFormer, Robust-MSeg) or a
    /// comma-separated list of mckd, baseline, placebo, hemis, hved, shaspec, mmformer,
    /// robustseg [default: mckd,baseline].
    #[arg(long, value_name = "all|LIST")]
    pub methods: Option<MethodList>,
    /// Field overrides of every method's run.
    #[command(flatten)]
    pub set: Overrides,
    /// Seed (with --seeds, the first seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of seeds (`seed-<s>/` each, then a summary).
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Planning for a cluster (`seed-<s>/<method>` folders, each seed's settings and
    /// phantoms written too; merge with `mckd brats merge --grid OUT`).
    #[command(flatten)]
    pub plan: PlanArgs,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `mckd brats prepare`.
#[derive(clap::Args, Debug)]
pub struct PrepareArgs {
    /// Cases root.
    #[arg(long)]
    pub data: PathBuf,
    /// Target spacing (mm, isotropic).
    #[arg(long, default_value_t = 2.0)]
    pub spacing: f32,
    /// Cache folder [default: this machine's, $MCKD_CACHE_DIR or ~/.cache/mckd/prepared].
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Label convention [default: from the file names].
    #[arg(long, value_enum)]
    pub convention: Option<ConventionArg>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `mckd brats phantoms`.
#[derive(clap::Args, Debug)]
pub struct PhantomsArgs {
    /// Output folder (one sub-folder per case); must not exist or be empty.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of cases.
    #[arg(long, default_value_t = 40)]
    pub cases: usize,
    /// Size per axis (voxels).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Patchy enhancing rims: ET differs from the rest of the rim only in T1c.
    #[arg(long)]
    pub enhancing_patches: bool,
    /// Flair as T2 with CSF dark: the tumour looks the same in Flair and T2.
    #[arg(long)]
    pub flair_as_t2: bool,
    /// Move an existing non-empty --out aside first.
    #[arg(long)]
    pub overwrite: bool,
}

/// Label convention flag.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ConventionArg {
    /// BraTS 2017–2021 (ET = 4).
    Brats2018,
    /// BraTS 2023+ (ET = 3).
    Brats2023,
}

impl From<ConventionArg> for LabelConvention {
    fn from(c: ConventionArg) -> Self {
        match c {
            ConventionArg::Brats2018 => LabelConvention::Brats2018,
            ConventionArg::Brats2023 => LabelConvention::Brats2023,
        }
    }
}

/// Options that override fields of a run config (the preset's or `--config`'s).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Overrides {
    /// Inner iterations.
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Crop size as D H W (the paper: 80 160 160), multiples of 8.
    #[arg(long, num_args = 3, value_names = ["D", "H", "W"])]
    pub crop: Option<Vec<usize>>,
    /// Batch size.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Initial learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD momentum.
    #[arg(long)]
    pub momentum: Option<f64>,
    /// UNet base width c (8 for CPU, 16 paper-like).
    #[arg(long, conflicts_with = "width")]
    pub base: Option<usize>,
    /// The network: `unet` (the CPU default) or `dual-net` (the reference DualNet: 3-D
    /// ResNet-50 encoder + ASPP, 43.7 M parameters at width 1; a GPU model; crops multiples of
    /// 16 in D and 32 in H and W).
    #[arg(long, value_enum)]
    pub arch: Option<ArchName>,
    /// DualNet width multiplier (1 = the reference; e.g. 0.0625 for a CPU smoke run).
    #[arg(long)]
    pub width: Option<f64>,
    /// Weight α of the CKD loss.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// CKD distance.
    #[arg(long, value_enum)]
    pub distance: Option<Distance>,
    /// CKD batch reduction.
    #[arg(long, value_enum)]
    pub reduction: Option<CkdReduction>,
    /// IWV normalisation (paper Table 3).
    #[arg(long, value_enum)]
    pub normalisation: Option<Normalisation>,
    /// Levels imputed and weighted in the meta step (the reference: the bottleneck).
    #[arg(long, value_enum)]
    pub impute_levels: Option<Levels>,
    /// Levels distilled (the reference: the bottleneck).
    #[arg(long, value_enum)]
    pub distill_levels: Option<Levels>,
    /// A meta phase every this many iterations in stage 1 (and stage 2 unless
    /// --meta-interval-stage2).
    #[arg(long)]
    pub meta_interval: Option<usize>,
    /// A meta phase every this many iterations in stage 2.
    #[arg(long)]
    pub meta_interval_stage2: Option<usize>,
    /// IWV steps per meta phase.
    #[arg(long)]
    pub meta_steps: Option<usize>,
    /// Crops per meta batch (0 = the batch size).
    #[arg(long)]
    pub meta_batch: Option<usize>,
    /// Learning rate of the IWV's Adam.
    #[arg(long)]
    pub iwv_lr: Option<f64>,
    /// Weight decay of the IWV's Adam.
    #[arg(long)]
    pub iwv_weight_decay: Option<f64>,
    /// Fraction of iterations with every modality present first (0 = one stage; the DualNet
    /// needs at least one such iteration).
    #[arg(long)]
    pub full_fraction: Option<f64>,
    /// A checkpoint every this many iterations (0: only on a signal).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Label convention [default: from the file names].
    #[arg(long, value_enum)]
    pub convention: Option<ConventionArg>,
    /// Sliding-window tile for evaluation as D H W [default: 80 160 160].
    #[arg(long, num_args = 3, value_names = ["D", "H", "W"])]
    pub tile: Option<Vec<usize>>,
    /// Compute device.
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
    /// Voxel spacing (mm, isotropic) to train and predict at (1: the cases as they are).
    #[arg(long)]
    pub spacing: Option<f32>,
    /// Peers: their own softmax head over {background, NCR/NET, ED, ET} with their own loss
    /// (U-HeMIS, U-HVED, mmFormer, Robust-MSeg; ShaSpec's own head is ours), instead of our
    /// three sigmoid regions.
    #[arg(long)]
    pub native_head: bool,
    /// Peers: the auxiliary losses read only the present modalities (U-HVED's KL and
    /// reconstruction, mmFormer's single-modality decoder, Robust-MSeg's styles and
    /// reconstructions); by default they also read dropped ones, as their authors' code does
    /// on complete training data.
    #[arg(long)]
    pub aux_present_only: bool,
}

impl Overrides {
    /// Applies the peers' options to the settings of every peer (experiments).
    pub fn apply_peers(&self, peers: &mut PeersConfig) {
        if self.native_head {
            peers.set_native_head(true);
        }
        if self.aux_present_only {
            peers.set_aux_reads_dropped(false);
        }
    }

    /// The first option given that sets MCKD's hyper-parameters, if any.
    pub fn mckd_option(&self) -> Option<&'static str> {
        [
            (self.alpha.is_some(), "--alpha"),
            (self.distance.is_some(), "--distance"),
            (self.reduction.is_some(), "--reduction"),
            (self.normalisation.is_some(), "--normalisation"),
            (self.impute_levels.is_some(), "--impute-levels"),
            (self.distill_levels.is_some(), "--distill-levels"),
            (self.iwv_lr.is_some(), "--iwv-lr"),
            (self.iwv_weight_decay.is_some(), "--iwv-weight-decay"),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }

    /// Refuses options that do not apply to `method`, naming them.
    pub fn check_applies_to(&self, method: &crate::config::BratsMethod) -> anyhow::Result<()> {
        let kind = method.kind();
        if !kind.is_mckd_family()
            && let Some(opt) = self.mckd_option()
        {
            bail!(
                "{opt} sets MCKD's hyper-parameters; it does not apply to {}",
                kind.title()
            );
        }
        if self.native_head && !method.clone().set_native_head(true) {
            bail!(
                "--native-head applies to U-HeMIS, U-HVED, mmFormer and Robust-MSeg, not to {} \
                 (whose head is the three sigmoid regions)",
                kind.title()
            );
        }
        if self.aux_present_only && !method.clone().set_aux_reads_dropped(false) {
            bail!(
                "--aux-present-only applies to U-HVED, mmFormer and Robust-MSeg, not to {}",
                kind.title()
            );
        }
        Ok(())
    }
}

fn ijk(dhw: &[usize]) -> [usize; 3] {
    [dhw[2], dhw[1], dhw[0]]
}

impl Overrides {
    /// Applies the given options to `cfg`.
    pub fn apply(&self, cfg: &mut BratsRunConfig) -> anyhow::Result<()> {
        if let Some(v) = self.iterations {
            cfg.loop_.budget = Budget::Iterations(v);
        }
        if let Some(v) = &self.crop {
            cfg.task.crop = ijk(v);
        }
        if let Some(v) = self.batch {
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
        if let (Some(v), OptimizerConfig::Sgd { momentum, .. }) =
            (self.momentum, &mut cfg.optimizer)
        {
            *momentum = v;
        }
        use crate::config::Arch;
        match (self.arch, cfg.task.arch) {
            (Some(ArchName::DualNet), Arch::Unet { .. }) => {
                cfg.task.arch = Arch::DualNet { width: 1.0 }
            }
            (Some(ArchName::Unet), Arch::DualNet { .. }) => cfg.task.arch = Arch::Unet { base: 8 },
            _ => {}
        }
        match (&mut cfg.task.arch, self.base, self.width) {
            (Arch::Unet { base }, Some(v), _) => *base = v,
            (Arch::DualNet { width }, _, Some(v)) => *width = v,
            (Arch::Unet { .. }, None, Some(_)) => {
                anyhow::bail!("--width is the DualNet's: pass --arch dual-net with it")
            }
            (Arch::DualNet { .. }, Some(_), None) => {
                anyhow::bail!("--base is the UNet's: pass --arch unet with it")
            }
            _ => {}
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
            if let Some(v) = self.impute_levels {
                m.levels.impute = v;
                m.levels.weight = v;
            }
            if let Some(v) = self.distill_levels {
                m.levels.distill = v;
            }
            if let Some(v) = self.iwv_lr {
                m.iwv.lr = v;
            }
            if let Some(v) = self.iwv_weight_decay {
                m.iwv.weight_decay = v;
            }
        }
        if self.native_head {
            cfg.method.set_native_head(true);
        }
        if self.aux_present_only {
            cfg.method.set_aux_reads_dropped(false);
        }
        if let Some(v) = self.meta_interval {
            cfg.loop_.meta.interval = v;
            if self.meta_interval_stage2.is_none() {
                cfg.loop_.meta.interval_stage2 = v;
            }
        }
        if let Some(v) = self.meta_interval_stage2 {
            cfg.loop_.meta.interval_stage2 = v;
        }
        if let Some(v) = self.meta_steps {
            cfg.loop_.meta.steps = v;
        }
        if let Some(v) = self.meta_batch {
            cfg.loop_.meta.batch = v;
        }
        if let Some(v) = self.full_fraction {
            cfg.loop_.full_fraction = v;
        }
        if let Some(v) = self.checkpoint_every {
            cfg.loop_.checkpoint_every = v;
        }
        if let Some(c) = self.convention {
            cfg.task.convention = c.into();
        }
        if let Some(t) = &self.tile {
            cfg.task.infer.tile = ijk(t);
        }
        if let Some(d) = self.device {
            cfg.device = d;
        }
        if let Some(s) = self.spacing {
            cfg.task.spacing = s;
        }
        Ok(())
    }
}

/// `--arch`: the network of a BraTS run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchName {
    /// The CPU-sized 3D UNet with a shared encoder (`--base` sets its width).
    Unet,
    /// The reference DualNet (`--width` sets its width multiplier).
    DualNet,
}

/// `mckd brats train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Cases root: BraTS 2018 layout (`HGG|LGG/<case>/`) or a flat folder of case folders;
    /// files `<case>_{flair,t1,t1ce,t2,seg}.nii.gz` or (BraTS 2023+)
    /// `<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz` [default: the --config's].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run folder [default: runs/<timestamp>-brats]; an existing non-empty one is refused
    /// unless --resume or --overwrite.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Move an existing --out aside and start again.
    #[arg(long)]
    pub overwrite: bool,
    /// Start from this preset.
    #[arg(long, value_enum, default_value_t = Preset::Reference)]
    pub preset: Preset,
    /// Start from this run config (a run folder's config.json); options override its fields.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Method [default: the config's, else mckd].
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// Seed [default: the config's, else 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Reuse this splits.json (e.g. the MCKD run's, for its Baseline).
    #[arg(long)]
    pub splits: Option<PathBuf>,
    /// Field overrides.
    #[command(flatten)]
    pub set: Overrides,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `mckd brats eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The run to evaluate (its test split is used).
    #[arg(long)]
    pub run: PathBuf,
    /// Other runs to compare with on the same test cases (e.g. the Baseline).
    #[arg(long)]
    pub baseline: Vec<PathBuf>,
    /// Cases root, if it moved since training.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder [default: <run>/eval]; an existing one is refused unless --overwrite.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Move an existing output folder aside first.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `mckd brats predict`.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Training run folder (config.json + model.bpk).
    #[arg(long)]
    pub run: PathBuf,
    /// Folder mode: a cases root; predicts every case (or --cases) for every --subsets into
    /// --out/<subset>/<case>.nii.gz.
    #[arg(long, conflicts_with_all = ["flair", "t1", "t1c", "t2"])]
    pub data: Option<PathBuf>,
    /// Folder mode: only these case ids (comma separated) [default: every case].
    #[arg(long, value_delimiter = ',', requires = "data")]
    pub cases: Option<Vec<String>>,
    /// Folder mode: `all` (the 15) or subsets like `t1,flair+t1c`.
    #[arg(long, default_value = "all", requires = "data")]
    pub subsets: String,
    /// One-case mode: Flair volume.
    #[arg(long)]
    pub flair: Option<PathBuf>,
    /// One-case mode: T1 volume.
    #[arg(long)]
    pub t1: Option<PathBuf>,
    /// One-case mode: T1c (T1ce) volume.
    #[arg(long)]
    pub t1c: Option<PathBuf>,
    /// One-case mode: T2 volume.
    #[arg(long)]
    pub t2: Option<PathBuf>,
    /// One-case mode: the output label map (.nii.gz), with the first input's header and
    /// affine. Folder mode: the prediction folder (must not exist or be empty, unless
    /// --overwrite).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing output.
    #[arg(long)]
    pub overwrite: bool,
    /// Tile D H W [default: the run's].
    #[arg(long, num_args = 3, value_names = ["D", "H", "W"])]
    pub tile: Option<Vec<usize>>,
    /// Tile overlap [default: the run's, 1/3].
    #[arg(long)]
    pub overlap: Option<f32>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `mckd brats evaluate`.
#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// Prediction folder: `<subset>/<case>.nii.gz` (as `brats predict` writes).
    #[arg(long)]
    pub pred: PathBuf,
    /// Reference cases root (case folders with `_seg` files).
    #[arg(long = "ref")]
    pub reference: PathBuf,
    /// Only these case ids (comma separated) [default: every reference case].
    #[arg(long, value_delimiter = ',')]
    pub cases: Option<Vec<String>>,
    /// `all` or a list like `t1,flair+t1c` [default: every subset folder in --pred].
    #[arg(long)]
    pub subsets: Option<String>,
    /// Output folder for summary.json per subset, table.md, per_case.csv, results.json;
    /// refused if non-empty unless --overwrite.
    #[arg(long)]
    pub out: PathBuf,
    /// Move an existing output folder aside first.
    #[arg(long)]
    pub overwrite: bool,
    /// Name of the predictions' method in the table.
    #[arg(long, default_value = "prediction")]
    pub name: String,
    /// Label convention [default: from the reference file names].
    #[arg(long, value_enum)]
    pub convention: Option<ConventionArg>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `mckd brats demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Output folder [default: runs/<timestamp>-brats-demo]; refused if non-empty unless
    /// --resume or --overwrite.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue a demo in --out (finished methods and seeds are kept).
    #[arg(long, conflicts_with_all = ["overwrite", "plan"])]
    pub resume: bool,
    /// Move an existing --out aside and start again.
    #[arg(long)]
    pub overwrite: bool,
    /// A one-minute smoke run.
    #[arg(long)]
    pub quick: bool,
    /// Training preset of every method.
    #[arg(long, value_enum, default_value_t = DemoPreset::Reference)]
    pub preset: DemoPreset,
    /// Methods: `all` (MCKD, Baseline, U-HeMIS, U-HVED, ShaSpec, mmFormer, Robust-MSeg) or a
    /// comma-separated list of mckd, baseline, placebo, hemis, hved, shaspec, mmformer,
    /// robustseg [default: mckd,baseline].
    #[arg(long, value_name = "all|LIST")]
    pub methods: Option<MethodList>,
    /// Phantom cases (overrides the preset).
    #[arg(long)]
    pub cases: Option<usize>,
    /// Phantom size per axis, a multiple of 8 (overrides the preset).
    #[arg(long)]
    pub size: Option<usize>,
    /// Patchy enhancing rims: ET differs from the rest of the rim only in T1c.
    #[arg(long)]
    pub enhancing_patches: bool,
    /// Flair as T2 with CSF dark: the tumour looks the same in Flair and T2.
    #[arg(long)]
    pub flair_as_t2: bool,
    /// Field overrides of every method's run.
    #[command(flatten)]
    pub set: Overrides,
    /// Seed (with `--seeds`, the first seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run the demo for this many seeds (`seed-<s>/` each; finished seeds are reused) and
    /// write `seeds_summary.md`/`.json`: mean ± std across seeds and the paired t-test of
    /// MCKD > Baseline.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Planning for a cluster (`seed-<s>/<method>` folders, each seed's settings and
    /// phantoms written too; merge with `mckd brats merge --grid OUT`).
    #[command(flatten)]
    pub plan: PlanArgs,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `mckd brats merge`.
#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The grid folder (`--plan` of `brats demo` or `brats real`). A folder of `brats demo|real
    /// --seeds N` without a plan is summarised again from its finished seeds (their
    /// `results.json` and `per_case.csv`; nothing is re-evaluated).
    #[arg(long)]
    pub grid: PathBuf,
    /// Write the tables of the seeds whose runs all finished and exit 0 even when runs are
    /// missing or failed (they are listed either way).
    #[arg(long)]
    pub allow_partial: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs a BraTS subcommand.
pub fn run(cmd: BratsCommand) -> anyhow::Result<()> {
    // `--quiet` keeps the library's messages to warnings and hides the progress bars.
    mckd_train::init_logging(match &cmd {
        BratsCommand::Phantoms(_) => false,
        BratsCommand::Train(a) => a.quiet,
        BratsCommand::Predict(a) => a.quiet,
        BratsCommand::Evaluate(a) => a.quiet,
        BratsCommand::Eval(a) => a.quiet,
        BratsCommand::Demo(a) => a.quiet,
        BratsCommand::Prepare(a) => a.quiet,
        BratsCommand::Real(a) => a.quiet,
        BratsCommand::Merge(a) => a.quiet,
    });
    match cmd {
        BratsCommand::Phantoms(a) => phantoms(&a),
        BratsCommand::Train(a) => train(&a),
        BratsCommand::Predict(a) => predict(&a),
        BratsCommand::Evaluate(a) => evaluate(&a),
        BratsCommand::Eval(a) => eval(&a),
        BratsCommand::Demo(a) => demo_cmd(&a),
        BratsCommand::Prepare(a) => prepare(&a),
        BratsCommand::Real(a) => real(&a),
        BratsCommand::Merge(a) => merge_cmd(&a),
    }
}

fn real(a: &RealArgs) -> anyhow::Result<()> {
    let root = match &a.data {
        Some(d) => d.clone(),
        None => std::env::var_os("MCKD_DATA_DIR")
            .map(|d| PathBuf::from(d).join("brats-real"))
            .context("give the cases folder with --data (or set MCKD_DATA_DIR)")?,
    };
    let mut d = DemoConfig::real(root, a.quick, a.seed);
    if let Some(m) = &a.methods {
        d.methods = m.0.clone();
    }
    a.set.apply(&mut d.run)?;
    a.set.apply_peers(&mut d.peers);
    if a.set.iterations.is_some() {
        let Budget::Iterations(n) = d.run.loop_.budget else {
            unreachable!("the experiment's budget is in iterations")
        };
        d.run.task.probe_interval = (n / 20).max(1);
    }
    run_experiment(
        &d,
        a.seeds,
        a.out.as_deref(),
        "brats-real",
        (a.resume, a.overwrite),
        a.plan.plan.then_some(&a.plan),
    )
}

fn prepare(a: &PrepareArgs) -> anyhow::Result<()> {
    mckd_train::config::rules::positive("--spacing", f64::from(a.spacing))?;
    let cases = discover_cases(&a.data)?;
    let convention = crate::eval::convention_of(a.convention.map(Into::into), &cases);
    let cache = mckd_volume::PreparedCache::new(
        a.cache
            .clone()
            .unwrap_or_else(mckd_volume::PreparedCache::default_dir),
    );
    let bar = mckd_train::progress_bar(cases.len() as u64, "prepare");
    let mut problems = Vec::new();
    let mut rows = Vec::new();
    for case in &cases {
        match cache.load_or_prepare(case, a.spacing, convention) {
            Ok((p, outcome)) => rows.push(format!(
                "{}: {:?} at {} mm from {:?} (box {:?}..{:?}); {outcome:?}",
                case.id,
                p.dims(),
                a.spacing,
                p.grid.original_dims,
                p.grid.bbox.lo,
                p.grid.bbox.hi
            )),
            Err(e) => problems.push(format!("{}: {e}", case.id)),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for r in &rows {
        println!("{r}");
    }
    println!("cache: {}", cache.dir().display());
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!(
            "{} of {} cases could not be prepared",
            problems.len(),
            cases.len()
        );
    }
    Ok(())
}

fn phantoms(a: &PhantomsArgs) -> anyhow::Result<()> {
    if a.size == 0 || a.cases == 0 {
        bail!("--size and --cases must be at least 1");
    }
    let (_, _) = RunDir::open(&a.out, OutPolicy::from_flags(false, a.overwrite))?;
    let cfg = PhantomConfig {
        size: [a.size; 3],
        enhancing_patches: a.enhancing_patches,
        flair_as_t2: a.flair_as_t2,
        ..Default::default()
    };
    let cases = write_phantom_dataset(&a.out, a.cases, &cfg, a.seed)?;
    // A data folder, not a run: no run status in it.
    let _ = std::fs::remove_file(a.out.join("status.json"));
    println!(
        "wrote {} phantoms of {}³ to {}",
        cases.len(),
        a.size,
        a.out.display()
    );
    Ok(())
}

fn train(a: &TrainArgs) -> anyhow::Result<()> {
    let base = a.config.as_deref().map(BratsRunConfig::load).transpose()?;
    let kind = a
        .method
        .or(base.as_ref().map(|b| b.method.kind()))
        .unwrap_or(Method::Mckd);
    let seed = a.seed.or(base.as_ref().map(|b| b.seed)).unwrap_or(0);
    let data = a
        .data
        .clone()
        .or(base.as_ref().map(|b| b.task.data.clone()))
        .context("give the cases folder with --data")?;
    let mut cfg = match &base {
        Some(b) => {
            let mut c = b.clone();
            c.seed = seed;
            c.method = b.method.with_kind(kind);
            c.task.data = data.clone();
            // A config file's own optimiser stands for its own method (`clip_norm: null`
            // included); switching to another method gets that method's needs.
            if b.method.kind() == kind {
                c
            } else {
                crate::config::with_method_needs(c)
            }
        }
        None => preset(a.preset, kind, data.clone(), seed),
    };
    a.set.check_applies_to(&cfg.method)?;
    a.set.apply(&mut cfg)?;
    if let Some(s) = &a.splits {
        cfg.task.splits_file = Some(s.clone());
    }
    validate(&cfg)?;
    cfg.device.device()?;
    // Fails early, naming the folder or file, before anything is written.
    let cases = discover_cases(&cfg.task.data)?;
    if a.set.convention.is_none() && base.is_none() {
        let c = implied_convention(&cases);
        if c != cfg.task.convention {
            eprintln!(
                "labels: {} convention (ET = {}), from the file names; --convention overrides",
                c.name(),
                c.et()
            );
        }
        cfg.task.convention = c;
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| RunDir::default_path("brats"));
    let mut inputs: Vec<&Path> = vec![&cfg.task.data];
    if let Some(s) = &cfg.task.splits_file {
        inputs.push(s);
    }
    check_not_input(&out, &inputs)?;
    let (run, resumed) = RunDir::open(&out, OutPolicy::from_flags(a.resume, a.overwrite))?;
    if resumed {
        let old = load_config(run.path())?;
        if old != cfg {
            bail!(
                "{} was started with another config; --resume continues it only with the same \
                 settings (give --config {} and nothing else)",
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
    }
    let t0 = Instant::now();
    match train_run(&cfg, &run, resumed) {
        Ok(t) => {
            run.set_status(RunState::Finished, None, Some(t.log.len()))?;
            println!(
                "trained {} for {} iterations in {:.1} s ({:.3} s/inner step{}); IWV {:?}; \
                 run folder {}",
                t.method.name(),
                t.log.len(),
                t0.elapsed().as_secs_f64(),
                t.seconds_per_inner(),
                t.meta_step_text(),
                t.method.state_values(),
                out.display()
            );
            Ok(())
        }
        Err(e) => {
            run.set_status(RunState::Failed, Some(e.to_string()), None)?;
            Err(e.into())
        }
    }
}

fn eval(a: &EvalArgs) -> anyhow::Result<()> {
    let mut runs = vec![a.run.clone()];
    runs.extend(a.baseline.iter().cloned());
    for r in &runs {
        load_config(r)?;
    }
    let out_path = a.out.clone().unwrap_or_else(|| a.run.join("eval"));
    let (out, _) = RunDir::open(&out_path, OutPolicy::from_flags(false, a.overwrite))?;
    match evaluate_runs(&runs, a.data.as_deref(), &out) {
        Ok(report) => {
            out.set_status(RunState::Finished, None, None)?;
            println!("{}", report.markdown);
            println!("written to {}", out.path().display());
            Ok(())
        }
        Err(e) => {
            out.set_status(RunState::Failed, Some(e.to_string()), None)?;
            Err(e.into())
        }
    }
}

fn select_cases(root: &Path, ids: Option<&[String]>) -> anyhow::Result<Vec<Case>> {
    let all = discover_cases(root)?;
    let Some(ids) = ids else {
        return Ok(all);
    };
    ids.iter()
        .map(|id| {
            all.iter()
                .find(|c| &c.id == id)
                .cloned()
                .with_context(|| format!("case {id} is not in {}", root.display()))
        })
        .collect()
}

fn predict(a: &PredictArgs) -> anyhow::Result<()> {
    let cfg = load_config(&a.run)?;
    let device = cfg.device.device()?;
    let (cfg, method) = load_model(&a.run, &device)?;
    let mut infer = cfg.task.infer;
    if let Some(t) = &a.tile {
        infer.tile = ijk(t);
    }
    if let Some(o) = a.overlap {
        infer.overlap = o;
    }
    infer.effective_tile([1, 1, 1])?;
    let predictor = method.predictor();
    let predictor = predictor.as_ref();
    let model_file = a.run.join("model.bpk");
    match &a.data {
        Some(root) => {
            let cases = select_cases(root, a.cases.as_deref())?;
            let subsets = parse_subsets(&a.subsets)?;
            check_not_input(&a.out, &[root, &a.run])?;
            let (out, _) = RunDir::open(&a.out, OutPolicy::from_flags(false, a.overwrite))?;
            let t0 = Instant::now();
            let files = predict_cases(
                predictor,
                &cases,
                &subsets,
                &infer,
                cfg.task.convention,
                &crate::evaluate::Grid::of(&cfg.task),
                out.path(),
                &device,
            );
            match files {
                Ok(files) => {
                    out.set_status(RunState::Finished, None, None)?;
                    println!(
                        "wrote {} label maps ({} cases × {} subsets) to {} in {:.1} s",
                        files.len(),
                        cases.len(),
                        subsets.len(),
                        out.path().display(),
                        t0.elapsed().as_secs_f64()
                    );
                    Ok(())
                }
                Err(e) => {
                    out.set_status(RunState::Failed, Some(e.to_string()), None)?;
                    Err(e.into())
                }
            }
        }
        None => {
            let files = [a.flair.clone(), a.t1.clone(), a.t1c.clone(), a.t2.clone()];
            let inputs: Vec<&Path> = files
                .iter()
                .flatten()
                .map(PathBuf::as_path)
                .chain([model_file.as_path()])
                .collect();
            check_not_input(&a.out, &inputs)?;
            if a.out.exists() && !a.overwrite {
                bail!(
                    "{} exists; pass --overwrite to replace it or another --out",
                    a.out.display()
                );
            }
            let labels = predict_files(
                predictor,
                &files,
                &a.out,
                &infer,
                cfg.task.convention,
                cfg.task.spacing,
                &device,
            )?;
            let tumour = labels.iter().filter(|&&l| l != 0).count();
            println!("wrote {} ({tumour} tumour voxels)", a.out.display());
            Ok(())
        }
    }
}

fn evaluate(a: &EvaluateArgs) -> anyhow::Result<()> {
    let cases = select_cases(&a.reference, a.cases.as_deref())?;
    if cases.is_empty() {
        bail!("no reference cases in {}", a.reference.display());
    }
    let convention = crate::eval::convention_of(a.convention.map(Into::into), &cases);
    let subsets = match &a.subsets {
        Some(list) => parse_subsets(list)?,
        None => crate::evaluate::subsets_in(&a.pred)?,
    };
    check_not_input(&a.out, &[&a.pred, &a.reference])?;
    let (out, _) = RunDir::open(&a.out, OutPolicy::from_flags(false, a.overwrite))?;
    let scores = evaluate_folder(&a.pred, &cases, &subsets, convention, Some(out.path()));
    let scores = match scores {
        Ok(s) => s,
        Err(e) => {
            out.set_status(RunState::Failed, Some(e.to_string()), None)?;
            return Err(e.into());
        }
    };
    let evals = vec![MethodEval {
        name: a.name.clone(),
        title: a.name.clone(),
        subsets: scores.iter().map(|s| (s.mask.clone(), s.means)).collect(),
        iwv: Vec::new(),
    }];
    let report = make_report(&evals);
    out.write("table.md", report.markdown.as_bytes())?;
    out.write("table.csv", report.csv.as_bytes())?;
    out.write(
        "per_case.csv",
        per_case_csv(&[(a.name.clone(), scores)]).as_bytes(),
    )?;
    out.write_json("results.json", &report.results)?;
    out.set_status(RunState::Finished, None, None)?;
    println!("{}", report.markdown);
    println!("written to {}", out.path().display());
    Ok(())
}

/// The demo settings: the preset with the options given on the command line.
fn demo_config(a: &DemoArgs) -> anyhow::Result<DemoConfig> {
    let mut d = DemoConfig::preset(a.preset, a.quick, a.seed);
    if let Some(ph) = &mut d.phantoms {
        if let Some(v) = a.cases {
            ph.cases = v;
        }
        if let Some(v) = a.size {
            ph.size = v;
            d.run.task.crop = [v; 3];
            d.run.task.infer.tile = [v.div_ceil(8) * 8; 3];
        }
        ph.enhancing_patches = a.enhancing_patches;
        ph.flair_as_t2 = a.flair_as_t2;
    }
    if let Some(m) = &a.methods {
        d.methods = m.0.clone();
    }
    a.set.apply(&mut d.run)?;
    a.set.apply_peers(&mut d.peers);
    if a.set.iterations.is_some() {
        let Budget::Iterations(n) = d.run.loop_.budget else {
            unreachable!("the demo budget is in iterations")
        };
        d.run.task.probe_interval = (n / 20).max(1);
    }
    Ok(d)
}

fn demo_cmd(a: &DemoArgs) -> anyhow::Result<()> {
    let d = demo_config(a)?;
    if d.phantoms.as_ref().is_some_and(|p| p.cases < 3) {
        bail!("--cases must be at least 3 (train, meta-val and test need one each)");
    }
    run_experiment(
        &d,
        a.seeds,
        a.out.as_deref(),
        "brats-demo",
        (a.resume, a.overwrite),
        a.plan.plan.then_some(&a.plan),
    )
}

/// Runs an experiment (one seed, or `seeds` seeds and their summary) into `out`, or with
/// `plan` only writes its grid.
fn run_experiment(
    d: &DemoConfig,
    seeds: u64,
    out: Option<&Path>,
    kind: &str,
    (resume, overwrite): (bool, bool),
    plan: Option<&PlanArgs>,
) -> anyhow::Result<()> {
    if d.methods.is_empty() {
        bail!("--methods is empty");
    }
    if seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    for &m in &d.methods {
        validate(&d.run_config(m, d.run.task.data.clone()))
            .with_context(|| format!("the run of {}", m.title()))?;
    }
    if d.phantoms.is_none() {
        // Every case is opened and checked before anything is written.
        discover_cases(&d.run.task.data)?;
    }
    let out_path = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| RunDir::default_path(kind));
    if d.phantoms.is_none() {
        check_not_input(&out_path, &[&d.run.task.data])?;
    }
    if resume && plan.is_none() {
        // Before the folder's status is touched: a refused resume leaves it as it was.
        crate::seeds::check_resumed_settings(d, seeds, &out_path)?;
    }
    let (run, resumed) = RunDir::open(&out_path, OutPolicy::from_flags(resume, overwrite))?;
    if let Some(args) = plan {
        return write_planned(d, seeds, &run, args);
    }
    let t0 = Instant::now();
    let result = if seeds != 1 {
        demo_seeds(d, seeds, &run, resumed).map(|summary| {
            println!("{}", summary.markdown);
            println!(
                "{seeds} seeds finished in {:.1} min; run folder {}",
                t0.elapsed().as_secs_f64() / 60.0,
                run.path().display()
            );
        })
    } else {
        demo(d, &run, resumed).map(|report| {
            println!("{}", report.markdown);
            if let Some(v) = report.results.extra.get("mean_dice_subsets_without_t1c") {
                println!("mean Dice over the subsets without t1c: {v}");
            }
            println!(
                "IWV (MCKD): {}",
                serde_json::Value::Object(report.results.iwv.clone())
            );
            println!(
                "finished in {:.1} min; run folder {}",
                t0.elapsed().as_secs_f64() / 60.0,
                run.path().display()
            );
        })
    };
    match result {
        Ok(()) => {
            run.set_status(RunState::Finished, None, None)?;
            Ok(())
        }
        Err(e) => {
            run.set_status(RunState::Failed, Some(e.to_string()), None)?;
            Err(e.into())
        }
    }
}

/// `--plan`: writes the grid, with `--slurm` the Slurm files, and says what to run next.
fn write_planned(d: &DemoConfig, seeds: u64, grid: &RunDir, args: &PlanArgs) -> anyhow::Result<()> {
    let planned = crate::grid::plan(d, seeds, grid)?;
    let dirs: Vec<PathBuf> = planned.runs.into_iter().map(|r| r.dir).collect();
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let next = mckd_train::cluster::write_planned(
        grid,
        &dirs,
        args,
        &exe,
        "seed-<s>/<method>",
        "brats merge",
    )?;
    println!("{next}");
    Ok(())
}

/// `mckd brats merge`.
fn merge_cmd(a: &MergeArgs) -> anyhow::Result<()> {
    let (grid, _) = RunDir::open(&a.grid, OutPolicy::Resume)?;
    if !grid.file("plan.json").is_file() {
        // A one-machine `--seeds` folder: its finished seeds' tables summarised again.
        let Some(summary) = crate::grid::summarise_seeds_folder(&grid)? else {
            bail!(
                "{}: no plan.json and no seed-<s>/results.json; is it a grid written by \
                 `brats demo --plan` or `brats real --plan`, or a `--seeds` folder?",
                a.grid.display()
            );
        };
        println!("{}", summary.markdown);
        return Ok(());
    }
    let merged = crate::grid::merge(&grid)?;
    for (label, msg) in &merged.failed {
        eprintln!("failed: {label}: {msg}");
    }
    for label in &merged.missing {
        eprintln!("missing (not finished): {label}");
    }
    if let Some(summary) = &merged.summary {
        println!("{}", summary.markdown);
    }
    let (missing, failed) = (merged.missing.len(), merged.failed.len());
    if missing + failed == 0 {
        grid.set_status(RunState::Finished, None, None)?;
        return Ok(());
    }
    let msg = format!("{missing} runs missing, {failed} failed");
    grid.set_status(RunState::Failed, Some(msg.clone()), None)?;
    if a.allow_partial {
        eprintln!("{msg}; the tables cover the seeds whose runs all finished (--allow-partial)");
        Ok(())
    } else {
        bail!("{msg} (listed above); merge the finished seeds with --allow-partial")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: BratsCommand,
    }

    fn demo_args(args: &[&str]) -> Result<DemoConfig, clap::Error> {
        let cli = Cli::try_parse_from(["brats", "demo"].iter().chain(args))?;
        match cli.cmd {
            BratsCommand::Demo(a) => Ok(demo_config(&a).expect("a valid demo config")),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn level_options_override_the_preset() {
        let preset = DemoConfig::preset(DemoPreset::Reference, false, 0);
        let d = demo_args(&[]).unwrap();
        assert_eq!(d, preset);
        let d = demo_args(&["--impute-levels", "all", "--distill-levels", "all"]).unwrap();
        let l = d.run.method.mckd().unwrap().levels;
        assert_eq!(
            (l.impute, l.weight, l.distill),
            (Levels::All, Levels::All, Levels::All)
        );
        let d = demo_args(&["--distill-levels", "all", "--seed", "3"]).unwrap();
        assert_eq!(d.run.seed, 3);
        assert_eq!(
            d.run.method.mckd().unwrap().levels.impute,
            Levels::Bottleneck
        );
        assert!(demo_args(&["--impute-levels", "maybe"]).is_err());
        let d = demo_args(&["--preset", "legacy", "--iterations", "100"]).unwrap();
        assert_eq!(d.methods, vec![Method::Mckd, Method::Baseline]);
        assert_eq!(d.run.loop_.budget, Budget::Iterations(100));
        assert_eq!(d.run.task.probe_interval, 5);
    }

    #[test]
    fn method_lists_and_peer_options() {
        use crate::config::BratsMethod;
        use crate::peers::HvedConfig;
        let d = demo_args(&["--methods", "all", "--native-head", "--aux-present-only"]).unwrap();
        assert_eq!(d.methods, Method::ALL.to_vec());
        assert!(d.peers.hemis.native_head && d.peers.mmformer.native_head);
        assert!(!d.peers.robustseg.aux_reads_dropped);
        assert_eq!(
            d.run_config(Method::Hved, "x".into()).method,
            BratsMethod::Hved(HvedConfig {
                native_head: true,
                aux_reads_dropped: false,
                ..HvedConfig::default()
            })
        );
        // The MCKD runs of the same experiment keep MCKD's settings.
        assert_eq!(
            d.run_config(Method::Mckd, "x".into()).method,
            BratsMethod::Mckd(mckd_core::MckdConfig::default())
        );
        let d = demo_args(&["--methods", "mckd, hved,robust-mseg,hved"]).unwrap();
        assert_eq!(
            d.methods,
            vec![Method::Mckd, Method::Hved, Method::RobustSeg]
        );
        let e = demo_args(&["--methods", "mckd,unet"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown method `unet`"), "{e}");
        // Options that do not apply to a method are refused, naming it.
        let alpha = Overrides {
            alpha: Some(0.2),
            ..Overrides::default()
        };
        let e = alpha
            .check_applies_to(&BratsMethod::Hved(HvedConfig::default()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--alpha") && e.contains("U-HVED"), "{e}");
        assert!(
            alpha
                .check_applies_to(&BratsMethod::Baseline(Default::default()))
                .is_ok()
        );
        let native = Overrides {
            native_head: true,
            ..Overrides::default()
        };
        let e = native
            .check_applies_to(&BratsMethod::Shaspec(Default::default()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ShaSpec"), "{e}");
        let mut cfg = preset(Preset::Reference, Method::Hemis, "x".into(), 0);
        native.apply(&mut cfg).unwrap();
        assert_eq!(
            cfg.method,
            BratsMethod::Hemis(crate::peers::HemisConfig { native_head: true })
        );
    }
}
