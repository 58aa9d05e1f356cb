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
use crate::peers::{
    HemisConfig, HvedConfig, MmformerConfig, PeersConfig, RobustSegConfig, ShaspecConfig,
};

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
    /// U-HeMIS ([`crate::peers::hemis`]).
    Hemis(HemisConfig),
    /// U-HVED ([`crate::peers::hved`]).
    Hved(HvedConfig),
    /// ShaSpec ([`crate::peers::shaspec`]).
    Shaspec(ShaspecConfig),
    /// mmFormer ([`crate::peers::mmformer`]).
    Mmformer(MmformerConfig),
    /// Robust-MSeg ([`crate::peers::robustseg`]).
    #[serde(rename = "robustseg")]
    RobustSeg(RobustSegConfig),
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
    /// U-HeMIS: per-modality encoders, mean and variance fusion at every level.
    Hemis,
    /// U-HVED: product of Gaussians with a prior, sampling, reconstruction, KL.
    Hved,
    /// ShaSpec: shared and specific encoders, residual fusion, DCO and DAO.
    Shaspec,
    /// mmFormer: intra- and inter-modal transformers, region fusion, auxiliary decoders.
    Mmformer,
    /// Robust-MSeg: content/style disentanglement, gated fusion, AdaIN reconstruction.
    #[value(name = "robustseg", alias = "robust-mseg")]
    RobustSeg,
}

impl Method {
    /// The methods of `--methods all`: MCKD, the Baseline and the five peers (Table 1).
    pub const ALL: [Method; 7] = [
        Method::Mckd,
        Method::Baseline,
        Method::Hemis,
        Method::Hved,
        Method::Shaspec,
        Method::Mmformer,
        Method::RobustSeg,
    ];

    /// The name in run folders, logs and `results.json` (`mckd`, `hved`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Method::Mckd => "mckd",
            Method::Baseline => "baseline",
            Method::Placebo => "placebo",
            Method::Hemis => "hemis",
            Method::Hved => "hved",
            Method::Shaspec => "shaspec",
            Method::Mmformer => "mmformer",
            Method::RobustSeg => "robustseg",
        }
    }

    /// The method of a name ([`Method::name`]).
    pub fn from_name(name: &str) -> Option<Method> {
        [Method::Placebo]
            .into_iter()
            .chain(Method::ALL)
            .find(|m| m.name() == name)
    }

    /// The table title of a method name (`mckd` → `MCKD`); unknown names as they are.
    pub fn title_of(name: &str) -> &str {
        match Method::from_name(name) {
            Some(m) => m.title(),
            None => name,
        }
    }

    /// The title in tables (`MCKD`, `U-HVED`, ...).
    pub fn title(self) -> &'static str {
        match self {
            Method::Mckd => "MCKD",
            Method::Baseline => "Baseline",
            Method::Placebo => "Placebo",
            Method::Hemis => "U-HeMIS",
            Method::Hved => "U-HVED",
            Method::Shaspec => "ShaSpec",
            Method::Mmformer => "mmFormer",
            Method::RobustSeg => "Robust-MSeg",
        }
    }

    /// Whether the method is MCKD or one of its α = 0 variants (the MCKD network and core).
    pub fn is_mckd_family(self) -> bool {
        matches!(self, Method::Mckd | Method::Baseline | Method::Placebo)
    }

    /// A method list from the command line: `all` ([`Method::ALL`]) or names separated by
    /// commas (`mckd,hved,shaspec`); an unknown name is an error listing the known ones.
    pub fn parse_list(list: &str) -> Result<Vec<Method>, String> {
        if list.trim() == "all" {
            return Ok(Method::ALL.to_vec());
        }
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let m = <Method as clap::ValueEnum>::from_str(name, true).map_err(|_| {
                format!(
                    "unknown method `{name}` (use `all` or a list of: mckd, baseline, placebo, \
                     hemis, hved, shaspec, mmformer, robustseg)"
                )
            })?;
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            return Err("no method given (use `all` or e.g. `mckd,hved`)".into());
        }
        Ok(out)
    }
}

/// A method list option (`--methods all|LIST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodList(pub Vec<Method>);

impl std::str::FromStr for MethodList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Method::parse_list(s).map(MethodList)
    }
}

impl BratsMethod {
    /// The method of `kind`: MCKD's hyper-parameters `mckd` for MCKD, the Baseline and the
    /// placebo; the peer's settings from `peers` for a peer.
    pub fn of(kind: Method, mckd: MckdConfig, peers: &PeersConfig) -> Self {
        match kind {
            Method::Mckd => BratsMethod::Mckd(mckd),
            Method::Baseline => BratsMethod::Baseline(mckd),
            Method::Placebo => BratsMethod::Placebo(mckd),
            Method::Hemis => BratsMethod::Hemis(peers.hemis.clone()),
            Method::Hved => BratsMethod::Hved(peers.hved.clone()),
            Method::Shaspec => BratsMethod::Shaspec(peers.shaspec.clone()),
            Method::Mmformer => BratsMethod::Mmformer(peers.mmformer.clone()),
            Method::RobustSeg => BratsMethod::RobustSeg(peers.robustseg.clone()),
        }
    }

    /// The same method as `kind` (its settings kept when it already is that kind; defaults
    /// otherwise, MCKD's hyper-parameters carried over between the MCKD variants).
    pub fn with_kind(&self, kind: Method) -> Self {
        if self.kind() == kind {
            return self.clone();
        }
        let mut peers = PeersConfig::default();
        self.write_peer(&mut peers);
        BratsMethod::of(kind, self.mckd().cloned().unwrap_or_default(), &peers)
    }

    /// Writes this method's settings into `peers` if it is a peer.
    pub fn write_peer(&self, peers: &mut PeersConfig) {
        match self {
            BratsMethod::Hemis(c) => peers.hemis = c.clone(),
            BratsMethod::Hved(c) => peers.hved = c.clone(),
            BratsMethod::Shaspec(c) => peers.shaspec = c.clone(),
            BratsMethod::Mmformer(c) => peers.mmformer = c.clone(),
            BratsMethod::RobustSeg(c) => peers.robustseg = c.clone(),
            _ => {}
        }
    }

    /// Its kind.
    pub fn kind(&self) -> Method {
        match self {
            BratsMethod::Mckd(_) => Method::Mckd,
            BratsMethod::Baseline(_) => Method::Baseline,
            BratsMethod::Placebo(_) => Method::Placebo,
            BratsMethod::Hemis(_) => Method::Hemis,
            BratsMethod::Hved(_) => Method::Hved,
            BratsMethod::Shaspec(_) => Method::Shaspec,
            BratsMethod::Mmformer(_) => Method::Mmformer,
            BratsMethod::RobustSeg(_) => Method::RobustSeg,
        }
    }

    /// MCKD's hyper-parameters (`None` for a peer).
    pub fn mckd(&self) -> Option<&MckdConfig> {
        match self {
            BratsMethod::Mckd(c) | BratsMethod::Baseline(c) | BratsMethod::Placebo(c) => Some(c),
            _ => None,
        }
    }

    /// Mutable access to MCKD's hyper-parameters (`None` for a peer).
    pub fn mckd_mut(&mut self) -> Option<&mut MckdConfig> {
        match self {
            BratsMethod::Mckd(c) | BratsMethod::Baseline(c) | BratsMethod::Placebo(c) => Some(c),
            _ => None,
        }
    }

    /// Switches the native head of a peer that has one (`--native-head`); `false` if the
    /// method has no such option.
    pub fn set_native_head(&mut self, on: bool) -> bool {
        match self {
            BratsMethod::Hemis(c) => c.native_head = on,
            BratsMethod::Hved(c) => c.native_head = on,
            BratsMethod::Mmformer(c) => c.native_head = on,
            BratsMethod::RobustSeg(c) => c.native_head = on,
            _ => return false,
        }
        true
    }

    /// Sets whether a peer's auxiliary losses read dropped modalities; `false` if the method
    /// has no such option.
    pub fn set_aux_reads_dropped(&mut self, on: bool) -> bool {
        match self {
            BratsMethod::Hved(c) => c.aux_reads_dropped = on,
            BratsMethod::Mmformer(c) => c.aux_reads_dropped = on,
            BratsMethod::RobustSeg(c) => c.aux_reads_dropped = on,
            _ => return false,
        }
        true
    }
}

/// Checks a peer's settings for the network `arch`; messages name the field.
pub fn validate_method(method: &BratsMethod, arch: &Arch) -> Result<(), ConfigError> {
    let bad = |field: &str, problem: String| {
        Err(ConfigError::Invalid {
            field: field.into(),
            problem,
        })
    };
    if let Some(m) = method.mckd() {
        return mckd_train::config::validate_mckd(m, "method");
    }
    let Arch::Unet { base } = *arch else {
        return bad(
            "task.arch",
            format!(
                "{} is built at the CPU UNet's widths: use the unet network (--base)",
                method.kind().title()
            ),
        );
    };
    match method {
        BratsMethod::Hved(c) => {
            if base % 2 != 0 {
                return bad(
                    "task.arch.base (--base)",
                    format!("U-HVED's latents are half the channels: {base} must be even"),
                );
            }
            rules::non_negative("method.kl_weight", c.kl_weight)?;
            rules::non_negative("method.rec_weight", c.rec_weight)
        }
        BratsMethod::Shaspec(c) => {
            rules::non_negative("method.dao_weight", c.dao_weight)?;
            rules::non_negative("method.dco_weight", c.dco_weight)
        }
        BratsMethod::Mmformer(c) => {
            rules::at_least_one("method.heads", c.heads)?;
            if (8 * base) % c.heads != 0 {
                return bad(
                    "method.heads",
                    format!(
                        "mmFormer's token dimension 8·base = {} must be a multiple of the {} \
                         heads",
                        8 * base,
                        c.heads
                    ),
                );
            }
            rules::non_negative("method.sep_weight", c.sep_weight)?;
            rules::non_negative("method.prm_weight", c.prm_weight)
        }
        BratsMethod::RobustSeg(c) => {
            rules::at_least_one("method.style_dim", c.style_dim)?;
            rules::non_negative("method.rec_weight", c.rec_weight)?;
            rules::non_negative("method.kl_weight", c.kl_weight)
        }
        _ => Ok(()),
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
    with_method_needs(RunConfig {
        seed,
        method: BratsMethod::of(kind, mckd, &PeersConfig::default()),
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
    })
}

/// Gradient-norm clipping given to Robust-MSeg under SGD when none is set (nnU-Net's 12).
pub const ROBUSTSEG_CLIP_NORM: f32 = 12.0;

/// What a method needs of the harness optimiser: Robust-MSeg's KL of the AdaIN shift,
/// `−log σ²`, has a gradient of `−2/σ` at the small shifts of a fresh network (its KL starts
/// in the hundreds), which plain SGD at the presets' rates (0.01–0.05) turns into overflow
/// within five iterations (the authors train with Adam at 1e-4); under SGD without clipping
/// it gets a gradient-norm clip of [`ROBUSTSEG_CLIP_NORM`]. Every other method, and a clip
/// already set, is left as it is.
pub fn with_method_needs(mut cfg: BratsRunConfig) -> BratsRunConfig {
    if let (BratsMethod::RobustSeg(_), OptimizerConfig::Sgd { clip_norm, .. }) =
        (&cfg.method, &mut cfg.optimizer)
    {
        clip_norm.get_or_insert(ROBUSTSEG_CLIP_NORM);
    }
    cfg
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
    validate_method(&cfg.method, &cfg.task.arch)?;
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
