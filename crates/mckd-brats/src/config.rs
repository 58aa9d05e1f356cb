//! The BraTS run configuration: the method, the task's own settings, and the presets
//! (`reference`: the authors' training as DESIGN §2.2 describes it; `legacy`: this crate's
//! behaviour before the reference audit, kept for comparisons and the refactor check).

use std::path::PathBuf;

use mckd_core::{CkdReduction, IwvOptimConfig, LevelPolicy, MckdConfig, SubsetSampling};
use mckd_train::config::{
    Budget, ConfigError, LoopConfig, LrSchedule, MaskGranularity, MetaSchedule, OptimizerConfig,
    RunConfig, Sampling, rules,
};
use mckd_volume::{LabelConvention, SplitFractions};
use serde::{Deserialize, Serialize};

use crate::infer::InferConfig;
use crate::model::{DiceReduction, SIZE_MULTIPLE};

/// The method of a BraTS run and its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum BratsMethod {
    /// MCKD.
    Mckd(MckdConfig),
    /// The α = 0 Baseline (the `MckdConfig` sets the level policy and the logged CKD loss).
    Baseline(MckdConfig),
    /// MCKD with α = 0: its meta steps run and draw the same random stream as MCKD's, so it
    /// differs from MCKD only by the distillation — a placebo for seed-to-seed noise.
    Placebo(MckdConfig),
}

/// The kinds of [`BratsMethod`], for command lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// MCKD: CKD loss (α) and meta-learned IWV.
    Mckd,
    /// The same network without CKD (α = 0) and without meta steps.
    Baseline,
    /// MCKD with α = 0 (meta steps kept): a placebo.
    Placebo,
}

impl Method {
    /// `mckd` or `baseline`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Mckd => "mckd",
            Method::Baseline => "baseline",
            Method::Placebo => "placebo",
        }
    }

    /// The table title of a method name (`mckd` → `MCKD`); unknown names as they are.
    pub fn title_of(name: &str) -> &str {
        match name {
            "mckd" => "MCKD",
            "baseline" => "Baseline",
            "placebo" => "Placebo",
            other => other,
        }
    }

    /// `MCKD` or `Baseline` (table headers).
    pub fn title(self) -> &'static str {
        match self {
            Method::Mckd => "MCKD",
            Method::Baseline => "Baseline",
            Method::Placebo => "Placebo",
        }
    }
}

impl BratsMethod {
    /// The method of `kind` with MCKD's hyper-parameters `mckd`.
    pub fn of(kind: Method, mckd: MckdConfig) -> Self {
        match kind {
            Method::Mckd => BratsMethod::Mckd(mckd),
            Method::Baseline => BratsMethod::Baseline(mckd),
            Method::Placebo => BratsMethod::Placebo(mckd),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> Method {
        match self {
            BratsMethod::Mckd(_) => Method::Mckd,
            BratsMethod::Baseline(_) => Method::Baseline,
            BratsMethod::Placebo(_) => Method::Placebo,
        }
    }

    /// MCKD's hyper-parameters.
    pub fn mckd(&self) -> &MckdConfig {
        match self {
            BratsMethod::Mckd(c) | BratsMethod::Baseline(c) | BratsMethod::Placebo(c) => c,
        }
    }

    /// Mutable access to MCKD's hyper-parameters.
    pub fn mckd_mut(&mut self) -> &mut MckdConfig {
        match self {
            BratsMethod::Mckd(c) | BratsMethod::Baseline(c) | BratsMethod::Placebo(c) => c,
        }
    }
}

/// The network.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Arch {
    /// The CPU-sized 3D UNet with a shared encoder ([`crate::model::BratsUNet`]).
    Unet {
        /// Base width `c`.
        base: usize,
    },
    /// The reference network ([`crate::dualnet::DualNet`]: shared 3-D ResNet-50 encoder, ASPP
    /// bottleneck, 43.7 M parameters at width 1): for users with a GPU; crops must be
    /// multiples of 16 in D and 32 in H and W.
    DualNet {
        /// Width multiplier (1 = the reference).
        width: f64,
    },
}

impl Arch {
    /// The multiple every crop and tile axis (i, j, k) must be.
    pub fn size_multiple_ijk(&self) -> [usize; 3] {
        match self {
            Arch::Unet { .. } => [SIZE_MULTIPLE; 3],
            Arch::DualNet { .. } => {
                let [d, h, w] = crate::dualnet::SIZE_MULTIPLE;
                [w, h, d]
            }
        }
    }
}

/// Random scaling of training crops (the reference: p 0.5, factor in 0.9–1.1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleAugment {
    /// Probability of scaling a crop.
    pub prob: f64,
    /// Range of the scale factor.
    pub range: [f64; 2],
}

/// BraTS's own settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BratsTask {
    /// Cases root (BraTS 2018 `HGG/LGG` layout or a flat folder of cases).
    pub data: PathBuf,
    /// The network.
    pub arch: Arch,
    /// Soft-Dice reduction of the loss.
    pub dice: DiceReduction,
    /// Training crop (i, j, k), multiples of 8 (paper: `[160, 160, 80]`).
    pub crop: [usize; 3],
    /// Probability that a crop is centred on a tumour voxel.
    pub foreground_prob: f64,
    /// Probability of flipping each axis (i, j, k).
    pub flip_prob: [f64; 3],
    /// Random scaling of crops (`None`: none).
    #[serde(default)]
    pub scale: Option<ScaleAugment>,
    /// Label convention of the segmentations.
    pub convention: LabelConvention,
    /// Split fractions (used when the run has no `splits.json` and none is given).
    pub fractions: SplitFractions,
    /// A `splits.json` to use (e.g. the MCKD run's, for its Baseline).
    #[serde(default)]
    pub splits_file: Option<PathBuf>,
    /// Sliding-window settings for evaluation and prediction.
    pub infer: InferConfig,
    /// The T1c feature-gap probe runs every this many iterations (0 = never).
    pub probe_interval: usize,
    /// Voxel spacing (mm, isotropic) the network trains and predicts at. 1: the cases as they
    /// are; otherwise each case is cropped to its brain's box and resampled
    /// (`mckd_volume::prepared`), and predictions are resampled back to the original grid
    /// for evaluation, which is always at the original labels.
    #[serde(default = "one_mm")]
    pub spacing: f32,
    /// Folder of prepared (resampled) cases (`None`: this machine's cache,
    /// `mckd_volume::PreparedCache::default_dir`).
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

fn one_mm() -> f32 {
    1.0
}

impl BratsTask {
    /// The cache of prepared cases this task uses.
    pub fn prepared_cache(&self) -> mckd_volume::PreparedCache {
        mckd_volume::PreparedCache::new(
            self.cache
                .clone()
                .unwrap_or_else(mckd_volume::PreparedCache::default_dir),
        )
    }
}

/// A whole BraTS run.
pub type BratsRunConfig = RunConfig<BratsMethod, BratsTask>;

/// Named sets of defaults for `brats train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The reference's training (DESIGN §2.2) on a CPU-sized UNet and crop.
    #[default]
    Reference,
    /// This crate's training before the reference audit (pooled Dice, cosine schedule,
    /// gradient clipping at 12, one stage, one meta step of a training-sized batch per phase).
    Legacy,
}

/// Fraction of stage 1 (every modality present) in the reference: 80k of 115k iterations.
pub const REFERENCE_FULL_FRACTION: f64 = 80.0 / 115.0;

/// A run of `kind` on the cases in `data` with `seed` under `preset` (CPU sizes: UNet c = 8,
/// 64³ crops, batch 2, 1,000 iterations).
pub fn preset(preset: Preset, kind: Method, data: PathBuf, seed: u64) -> BratsRunConfig {
    let legacy = preset == Preset::Legacy;
    let mckd = MckdConfig {
        alpha: 0.1,
        reduction: CkdReduction::BatchMean,
        levels: LevelPolicy::default(),
        iwv: IwvOptimConfig {
            lr: 1e-2,
            weight_decay: 5e-4,
            epsilon: 1e-8,
        },
        ..MckdConfig::default()
    };
    RunConfig {
        seed,
        method: BratsMethod::of(kind, mckd),
        optimizer: OptimizerConfig::Sgd {
            momentum: 0.99,
            nesterov: true,
            weight_decay: 0.0,
            clip_norm: if legacy { Some(12.0) } else { None },
        },
        schedule: if legacy {
            LrSchedule::Cosine { lr: 1e-2 }
        } else {
            LrSchedule::Poly {
                lr: 1e-2,
                power: 0.9,
            }
        },
        loop_: LoopConfig {
            budget: Budget::Iterations(1000),
            batch_size: 2,
            sampling: Sampling::Draws,
            subsets: SubsetSampling::Reference,
            granularity: MaskGranularity::Batch,
            full_fraction: if legacy { 0.0 } else { REFERENCE_FULL_FRACTION },
            meta: if legacy {
                MetaSchedule {
                    interval: 100,
                    interval_stage2: 100,
                    steps: 1,
                    batch: 0,
                }
            } else {
                MetaSchedule::default()
            },
            checkpoint_every: 0,
        },
        task: BratsTask {
            data,
            arch: Arch::Unet { base: 8 },
            dice: if legacy {
                DiceReduction::Pooled
            } else {
                DiceReduction::PerSample
            },
            crop: [64, 64, 64],
            foreground_prob: if legacy { 0.5 } else { 0.375 },
            flip_prob: [0.5; 3],
            scale: (!legacy).then_some(ScaleAugment {
                prob: 0.5,
                range: [0.9, 1.1],
            }),
            convention: LabelConvention::Brats2018,
            fractions: SplitFractions::default(),
            splits_file: None,
            infer: InferConfig::default(),
            probe_interval: 25,
            spacing: 1.0,
            cache: None,
        },
        device: Default::default(),
    }
}

/// Checks a run config before anything is written; messages name the field.
pub fn validate(cfg: &BratsRunConfig) -> Result<(), ConfigError> {
    let bad = |field: &str, problem: String| {
        Err(ConfigError::Invalid {
            field: field.into(),
            problem,
        })
    };
    cfg.loop_.validate()?;
    mckd_train::config::validate_mckd(cfg.method.mckd(), "method")?;
    mckd_train::config::validate_schedule(&cfg.schedule)?;
    mckd_train::config::validate_optimizer(&cfg.optimizer)?;
    let t = &cfg.task;
    match t.arch {
        Arch::Unet { base } => rules::at_least_one("task.arch.base (--base)", base)?,
        Arch::DualNet { width } => {
            rules::positive("task.arch.width (--width)", width)?;
            // A zeroed (missing) modality through the freshly initialised DualNet overflows
            // the backward (β = 0: zero-variance instance norms, ×316 each; `dualnet`
            // module docs), in PyTorch as here. The reference trains all modalities first,
            // which moves β off 0; one all-modality iteration is enough (measured there).
            let stage1 = match cfg.loop_.budget {
                mckd_train::config::Budget::Iterations(n) => {
                    mckd_train::train::stage1_iterations(&cfg.loop_, n)
                }
                mckd_train::config::Budget::Epochs(_) => usize::from(cfg.loop_.full_fraction > 0.0),
            };
            if stage1 == 0 {
                return bad(
                    "loop.full_fraction (--full-fraction)",
                    format!(
                        "{} gives no all-modality iteration: the DualNet must start with one \
                         (a missing modality's zeroed input through the untrained network \
                         overflows the gradient); use the reference's {:.4}",
                        cfg.loop_.full_fraction, REFERENCE_FULL_FRACTION
                    ),
                );
            }
        }
    }
    let multiple = t.arch.size_multiple_ijk();
    if (0..3).any(|a| t.crop[a] == 0 || !t.crop[a].is_multiple_of(multiple[a])) {
        return bad(
            "task.crop (--crop)",
            format!(
                "{:?} (i, j, k): each axis must be a positive multiple of {multiple:?} for this \
                 network",
                t.crop
            ),
        );
    }
    rules::in_range("task.foreground_prob", t.foreground_prob, 0.0, 1.000_001)?;
    for p in t.flip_prob {
        rules::in_range("task.flip_prob", p, 0.0, 1.000_001)?;
    }
    if let Some(s) = t.scale {
        rules::in_range("task.scale.prob", s.prob, 0.0, 1.000_001)?;
        if !(s.range[0] > 0.0 && s.range[0] <= s.range[1] && s.range[1].is_finite()) {
            return bad(
                "task.scale.range",
                format!("{:?} must be 0 < low ≤ high", s.range),
            );
        }
    }
    rules::positive("task.spacing (--spacing)", f64::from(t.spacing))?;
    t.infer
        .effective_tile([1, 1, 1])
        .map_err(|e| ConfigError::Invalid {
            field: "task.infer (--tile, --overlap)".into(),
            problem: e.to_string(),
        })?;
    Ok(())
}
