//! The AV-MNIST run configuration: settings (Table 2 rows), methods, the task's own settings, and
//! the presets (`paper`: the protocol of DESIGN §2.1 as the authors train MCKD; `legacy`: this
//! crate's behaviour before the reference audit, kept for the ablation and the refactor check).

use std::path::PathBuf;
use std::str::FromStr;

use mckd_core::{CkdReduction, MckdConfig, SubsetSampling};
use mckd_train::config::{
    Budget, ConfigError, LoopConfig, LrSchedule, MaskGranularity, MetaSchedule, OptimizerConfig,
    RunConfig, Sampling,
};
use serde::{Deserialize, Serialize};

use crate::model::{AvmnistNetConfig, BnRows, DistilledFeature};
use crate::peers::common::PretrainConfig;
use crate::peers::full2miss::Full2missConfig;
use crate::peers::impute::{AutoencoderConfig, GanConfig};
use crate::peers::shaspec::ShaspecConfig;
use crate::peers::smil::{SmilBackbone, SmilConfig};

/// Which modality is missing for most training samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// Missing audio (paper Table 2a): tested on images.
    Audio,
    /// Missing images (paper Table 2b): tested on audio.
    Visual,
}

/// A Table 2 row: which modality is missing and at which rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Setting {
    /// The missing modality.
    pub missing: Missing,
    /// The rate in percent (5, 10, 15 or 20).
    pub percent: u32,
}

/// The eight Table 2 rows in table order.
pub const ALL_SETTINGS: [&str; 8] = [
    "audio_5",
    "audio_10",
    "audio_15",
    "audio_20",
    "visual_5",
    "visual_10",
    "visual_15",
    "visual_20",
];

/// A setting name that is not `audio_<P>` / `visual_<P>` with P in 5, 10, 15, 20.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown setting `{0}`: expected audio_5, audio_10, audio_15, audio_20, visual_5, visual_10, \
     visual_15 or visual_20"
)]
pub struct UnknownSetting(pub String);

impl FromStr for Setting {
    type Err = UnknownSetting;
    fn from_str(s: &str) -> Result<Self, UnknownSetting> {
        let err = || UnknownSetting(s.to_string());
        let (kind, pct) = s.trim().split_once('_').ok_or_else(err)?;
        let missing = match kind {
            "audio" => Missing::Audio,
            "visual" => Missing::Visual,
            _ => return Err(err()),
        };
        let percent: u32 = pct.parse().map_err(|_| err())?;
        if ![5, 10, 15, 20].contains(&percent) {
            return Err(err());
        }
        Ok(Self { missing, percent })
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.missing {
            Missing::Audio => "audio",
            Missing::Visual => "visual",
        };
        write!(f, "{kind}_{}", self.percent)
    }
}

impl Serialize for Setting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Setting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Setting {
    /// The modality the row is evaluated on (`[image, audio]` mask).
    pub fn test_mask(&self) -> [bool; 2] {
        match self.missing {
            Missing::Audio => [true, false],
            Missing::Visual => [false, true],
        }
    }

    /// The paper's MCKD accuracy (%) for this row (DESIGN §2.1).
    pub fn paper_mckd(&self) -> f64 {
        let i = (self.percent / 5 - 1) as usize;
        match self.missing {
            Missing::Audio => [93.56, 94.22, 94.89, 95.11][i],
            Missing::Visual => [84.67, 85.56, 86.89, 88.44][i],
        }
    }
}

/// Paper Table 2: UpperB accuracy (%).
pub const PAPER_UPPERB: f64 = 98.22;
/// Paper Table 2: image LowerB accuracy (%) (tested on all 10,000 MNIST test images by SMIL).
pub const PAPER_LOWERB_IMAGE: f64 = 92.35;
/// Paper Table 2: audio LowerB accuracy (%).
pub const PAPER_LOWERB_AUDIO: f64 = 80.44;

/// How a missing rate in percent maps to paired samples per digit (a multiple of 3; only
/// 10 % = 15 is fixed by SMIL's code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PercentMapping {
    /// Percent of all 1,500 samples, to the nearest multiple of 3 per digit
    /// (75/150/225/300 samples → 5→6, 10→15, 15→21, 20→30 per digit).
    #[default]
    Total,
    /// The mapping of a third-party reuse (MCE, Pattern Recognition 2025):
    /// 5→6, 10→12, 15→15, 20→21 per digit.
    Mce,
}

impl PercentMapping {
    /// Paired samples per digit for a rate.
    pub fn per_digit(self, percent: u32) -> usize {
        let i = (percent / 5 - 1) as usize;
        match self {
            PercentMapping::Total => [6, 15, 21, 30][i],
            PercentMapping::Mce => [6, 12, 15, 21][i],
        }
    }

    /// The mapping as text for table headers.
    pub fn describe(self) -> String {
        let m: Vec<String> = [5, 10, 15, 20]
            .iter()
            .map(|&p| format!("{p}%→{}", self.per_digit(p)))
            .collect();
        let what = match self {
            PercentMapping::Total => "% of all 1,500 samples, nearest multiple of 3 per digit",
            PercentMapping::Mce => "MCE's mapping",
        };
        format!("paired samples per digit: {} ({what})", m.join(", "))
    }
}

/// The methods of Table 2 (kinds, for command lines and plans).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    /// Image only (train and test).
    LowerbImage,
    /// Audio only (train and test).
    LowerbAudio,
    /// All paired data, both modalities.
    Upperb,
    /// Non-dedicated training without CKD (α = 0).
    Baseline,
    /// MCKD.
    Mckd,
    /// The AutoEncoder imputation baseline (ours, PEERS.md §8.1).
    Autoencoder,
    /// The GAN imputation baseline (ours, PEERS.md §8.2).
    Gan,
    /// Full2miss, teacher–student distillation (ours, PEERS.md §8.3).
    Full2miss,
    /// SMIL with first-order meta-learning, on our encoders.
    Smil,
    /// SMIL on its own LeNet-5 networks.
    SmilLenet,
    /// ShaSpec (its AV-MNIST form is ours).
    Shaspec,
}

/// How a method's training loop draws the present modalities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopFamily {
    /// A bound: a fixed set of modalities, one stage.
    Bound,
    /// Non-dedicated: every available modality first, then random dropping (MCKD, Baseline,
    /// ShaSpec).
    Staged,
    /// Every sample with the modalities it has, one stage (SMIL, AutoEncoder, GAN, Full2miss:
    /// PEERS.md §1.2).
    Fixed,
}

impl MethodKind {
    /// The name used in `results.json`.
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::LowerbImage => "lowerb_image",
            MethodKind::LowerbAudio => "lowerb_audio",
            MethodKind::Upperb => "upperb",
            MethodKind::Baseline => "baseline",
            MethodKind::Mckd => "mckd",
            MethodKind::Autoencoder => "autoencoder",
            MethodKind::Gan => "gan",
            MethodKind::Full2miss => "full2miss",
            MethodKind::Smil => "smil",
            MethodKind::SmilLenet => "smil_lenet",
            MethodKind::Shaspec => "shaspec",
        }
    }

    /// The name in tables.
    pub fn title(self) -> &'static str {
        match self {
            MethodKind::LowerbImage => "LowerB (image)",
            MethodKind::LowerbAudio => "LowerB (audio)",
            MethodKind::Upperb => "UpperB",
            MethodKind::Baseline => "Baseline",
            MethodKind::Mckd => "MCKD",
            MethodKind::Autoencoder => "AutoEncoder",
            MethodKind::Gan => "GAN",
            MethodKind::Full2miss => "Full2miss",
            MethodKind::Smil => "SMIL",
            MethodKind::SmilLenet => "SMIL (LeNet)",
            MethodKind::Shaspec => "ShaSpec",
        }
    }

    /// Whether the method is trained per setting.
    pub fn needs_setting(self) -> bool {
        self.bound_mask().is_none()
    }

    /// Whether the method is one of MCKD's peers.
    pub fn is_peer(self) -> bool {
        matches!(
            self,
            MethodKind::Autoencoder
                | MethodKind::Gan
                | MethodKind::Full2miss
                | MethodKind::Smil
                | MethodKind::SmilLenet
                | MethodKind::Shaspec
        )
    }

    /// How its loop draws the present modalities.
    pub fn loop_family(self) -> LoopFamily {
        match self {
            MethodKind::LowerbImage | MethodKind::LowerbAudio | MethodKind::Upperb => {
                LoopFamily::Bound
            }
            MethodKind::Baseline | MethodKind::Mckd | MethodKind::Shaspec => LoopFamily::Staged,
            _ => LoopFamily::Fixed,
        }
    }

    /// The modalities a bound trains and tests with (`None` for per-setting methods).
    pub fn bound_mask(self) -> Option<[bool; 2]> {
        match self {
            MethodKind::LowerbImage => Some([true, false]),
            MethodKind::LowerbAudio => Some([false, true]),
            MethodKind::Upperb => Some([true, true]),
            _ => None,
        }
    }

    /// The paper's accuracy (%) of this method on `setting` (Table 2; the AutoEncoder, GAN and
    /// Full2miss have no missing-visual numbers, SMIL's LeNet form is SMIL's column).
    pub fn paper(self, setting: Setting) -> Option<f64> {
        let i = (setting.percent / 5 - 1) as usize;
        let audio = setting.missing == Missing::Audio;
        let row = match (self, audio) {
            (MethodKind::Mckd, _) => return Some(setting.paper_mckd()),
            (MethodKind::Autoencoder, true) => [89.78, 89.33, 89.78, 88.89],
            (MethodKind::Gan, true) => [89.11, 89.78, 88.67, 89.56],
            (MethodKind::Full2miss, true) => [90.00, 91.11, 92.23, 92.67],
            (MethodKind::Smil | MethodKind::SmilLenet, true) => [92.89, 93.11, 93.33, 94.44],
            (MethodKind::Smil | MethodKind::SmilLenet, false) => [83.33, 84.89, 85.56, 87.78],
            (MethodKind::Shaspec, true) => [93.33, 93.56, 93.78, 94.67],
            (MethodKind::Shaspec, false) => [84.00, 85.11, 86.67, 88.22],
            _ => return None,
        };
        Some(row[i])
    }

    /// Every kind.
    pub const ALL: [MethodKind; 11] = [
        MethodKind::LowerbImage,
        MethodKind::LowerbAudio,
        MethodKind::Upperb,
        MethodKind::Baseline,
        MethodKind::Mckd,
        MethodKind::Autoencoder,
        MethodKind::Gan,
        MethodKind::Full2miss,
        MethodKind::Smil,
        MethodKind::SmilLenet,
        MethodKind::Shaspec,
    ];

    /// The methods of the whole Table 2 (`--methods all`): the bounds, the five peers on our
    /// backbone, the Baseline and MCKD (SMIL's LeNet form on request).
    pub const TABLE: [MethodKind; 10] = [
        MethodKind::LowerbImage,
        MethodKind::LowerbAudio,
        MethodKind::Upperb,
        MethodKind::Autoencoder,
        MethodKind::Gan,
        MethodKind::Full2miss,
        MethodKind::Smil,
        MethodKind::Shaspec,
        MethodKind::Baseline,
        MethodKind::Mckd,
    ];

    /// The per-setting methods in table order (the columns after the bounds).
    pub const COLUMNS: [MethodKind; 8] = [
        MethodKind::Autoencoder,
        MethodKind::Gan,
        MethodKind::Full2miss,
        MethodKind::Smil,
        MethodKind::SmilLenet,
        MethodKind::Shaspec,
        MethodKind::Baseline,
        MethodKind::Mckd,
    ];

    /// Parses `all` or a comma-separated list of names (`_` or `-`), in the given order
    /// without repeats.
    pub fn parse_list(text: &str) -> Result<Vec<MethodKind>, UnknownMethod> {
        let mut out = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let kinds: Vec<MethodKind> = if item == "all" {
                Self::TABLE.to_vec()
            } else {
                let norm = item.replace('-', "_");
                vec![
                    *Self::ALL
                        .iter()
                        .find(|k| k.name() == norm)
                        .ok_or_else(|| UnknownMethod(item.to_string()))?,
                ]
            };
            for k in kinds {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }
}

/// A method name that is none of [`MethodKind::ALL`].
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown method `{0}`: expected all, or some of lowerb_image, lowerb_audio, upperb, \
     baseline, mckd, autoencoder, gan, full2miss, smil, smil_lenet, shaspec"
)]
pub struct UnknownMethod(pub String);

/// The method of a run and its hyper-parameters. The bounds and the Baseline are MCKD's network
/// trained without CKD and meta steps; their `MckdConfig` sets the level policy and the CKD
/// loss that is logged. The peers carry their own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum AvMethod {
    /// Image only.
    LowerbImage(MckdConfig),
    /// Audio only.
    LowerbAudio(MckdConfig),
    /// Both modalities always.
    Upperb(MckdConfig),
    /// The α = 0 Baseline.
    Baseline(MckdConfig),
    /// MCKD.
    Mckd(MckdConfig),
    /// The AutoEncoder baseline.
    Autoencoder(AutoencoderConfig),
    /// The GAN baseline.
    Gan(GanConfig),
    /// Full2miss.
    Full2miss(Full2missConfig),
    /// SMIL (on our backbone or on LeNet-5).
    Smil(SmilConfig),
    /// ShaSpec.
    Shaspec(ShaspecConfig),
}

impl AvMethod {
    /// The method of `kind`: MCKD's family with MCKD's hyper-parameters `mckd`, the peers with
    /// their defaults.
    pub fn of(kind: MethodKind, mckd: MckdConfig) -> Self {
        match kind {
            MethodKind::LowerbImage => AvMethod::LowerbImage(mckd),
            MethodKind::LowerbAudio => AvMethod::LowerbAudio(mckd),
            MethodKind::Upperb => AvMethod::Upperb(mckd),
            MethodKind::Baseline => AvMethod::Baseline(mckd),
            MethodKind::Mckd => AvMethod::Mckd(mckd),
            MethodKind::Autoencoder => AvMethod::Autoencoder(AutoencoderConfig::default()),
            MethodKind::Gan => AvMethod::Gan(GanConfig::default()),
            MethodKind::Full2miss => AvMethod::Full2miss(Full2missConfig::default()),
            MethodKind::Smil => AvMethod::Smil(SmilConfig::default()),
            MethodKind::SmilLenet => AvMethod::Smil(SmilConfig {
                backbone: SmilBackbone::Lenet,
                ..SmilConfig::default()
            }),
            MethodKind::Shaspec => AvMethod::Shaspec(ShaspecConfig::default()),
        }
    }

    /// The method's kind.
    pub fn kind(&self) -> MethodKind {
        match self {
            AvMethod::LowerbImage(_) => MethodKind::LowerbImage,
            AvMethod::LowerbAudio(_) => MethodKind::LowerbAudio,
            AvMethod::Upperb(_) => MethodKind::Upperb,
            AvMethod::Baseline(_) => MethodKind::Baseline,
            AvMethod::Mckd(_) => MethodKind::Mckd,
            AvMethod::Autoencoder(_) => MethodKind::Autoencoder,
            AvMethod::Gan(_) => MethodKind::Gan,
            AvMethod::Full2miss(_) => MethodKind::Full2miss,
            AvMethod::Smil(c) => match c.backbone {
                SmilBackbone::Ours => MethodKind::Smil,
                SmilBackbone::Lenet => MethodKind::SmilLenet,
            },
            AvMethod::Shaspec(_) => MethodKind::Shaspec,
        }
    }

    /// MCKD's hyper-parameters of the run (`None` for the peers).
    pub fn mckd(&self) -> Option<&MckdConfig> {
        match self {
            AvMethod::LowerbImage(c)
            | AvMethod::LowerbAudio(c)
            | AvMethod::Upperb(c)
            | AvMethod::Baseline(c)
            | AvMethod::Mckd(c) => Some(c),
            _ => None,
        }
    }

    /// Mutable access to MCKD's hyper-parameters (`None` for the peers).
    pub fn mckd_mut(&mut self) -> Option<&mut MckdConfig> {
        match self {
            AvMethod::LowerbImage(c)
            | AvMethod::LowerbAudio(c)
            | AvMethod::Upperb(c)
            | AvMethod::Baseline(c)
            | AvMethod::Mckd(c) => Some(c),
            _ => None,
        }
    }

    /// The full-modal pretraining of SMIL, AutoEncoder, GAN and Full2miss.
    pub fn pretrain(&self) -> Option<&PretrainConfig> {
        match self {
            AvMethod::Autoencoder(c) => Some(&c.pretrain),
            AvMethod::Gan(c) => Some(&c.pretrain),
            AvMethod::Full2miss(c) => Some(&c.pretrain),
            AvMethod::Smil(c) => Some(&c.pretrain),
            _ => None,
        }
    }

    /// Mutable access to the pretraining settings.
    pub fn pretrain_mut(&mut self) -> Option<&mut PretrainConfig> {
        match self {
            AvMethod::Autoencoder(c) => Some(&mut c.pretrain),
            AvMethod::Gan(c) => Some(&mut c.pretrain),
            AvMethod::Full2miss(c) => Some(&mut c.pretrain),
            AvMethod::Smil(c) => Some(&mut c.pretrain),
            _ => None,
        }
    }
}

/// Which samples train, which are the meta set D_v, which are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DataSplit {
    /// The paper's 60 / 10 / 30 split (900 / 150 / 450): the 150 validation samples keep both
    /// modalities and are the meta set, disjoint from training (Eq. 4); a row's pairs are drawn
    /// from the 900 (DESIGN §2.1).
    #[default]
    Paper,
    /// SMIL's 1,050-sample pool; the meta set is the row's paired training samples (an earlier
    /// reading that breaks D_t ∩ D_v = ∅; kept for the ablation).
    Smil,
}

/// Which samples a run is evaluated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EvalSet {
    /// The 450 test samples.
    #[default]
    Test,
    /// The 150 validation samples (paper split only): for choosing settings without test.
    Validation,
}

/// AV-MNIST's own settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvTask {
    /// The network.
    pub net: AvmnistNetConfig,
    /// The Table 2 row (`None` for the bounds, which do not depend on it).
    pub setting: Option<Setting>,
    /// Percent → pairs per digit.
    pub mapping: PercentMapping,
    /// Train / meta / test split.
    pub split: DataSplit,
    /// Evaluated samples.
    #[serde(default)]
    pub evaluate_on: EvalSet,
    /// Folder that contains `avmnist/` (`None`: `$MCKD_DATA_DIR` or the download cache).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// A split file in `smil_split.json` format (`None`: the kit's).
    #[serde(default)]
    pub split_file: Option<PathBuf>,
}

/// A whole AV-MNIST run.
pub type AvRunConfig = RunConfig<AvMethod, AvTask>;

/// Named sets of defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// DESIGN §2.1 with MCKD as its authors train it (the reference audit of issue 15).
    #[default]
    Paper,
    /// This crate's behaviour before the audit (CKD on post-dropout features averaged over the
    /// present pairs, batch norm over zero rows, meta step on the training pairs every
    /// iteration, one stage).
    Legacy,
}

/// Fraction of stage 1 (every modality present) in the reference: 80k of 115k iterations.
pub const REFERENCE_FULL_FRACTION: f64 = 80.0 / 115.0;

/// A run of `kind` on `setting` with `seed` under `preset`.
pub fn preset(
    preset: Preset,
    kind: MethodKind,
    setting: Option<Setting>,
    seed: u64,
) -> AvRunConfig {
    let legacy = preset == Preset::Legacy;
    let mckd = MckdConfig {
        reduction: if legacy {
            CkdReduction::PresentMean
        } else {
            CkdReduction::BatchMean
        },
        iwv: mckd_core::IwvOptimConfig {
            lr: 1e-2,
            weight_decay: 1e-2,
            epsilon: 1e-8,
        },
        ..MckdConfig::default()
    };
    let net = AvmnistNetConfig {
        bn_rows: if legacy { BnRows::All } else { BnRows::Present },
        distilled: if legacy {
            DistilledFeature::PostDropout
        } else {
            DistilledFeature::PreDropout
        },
        ..AvmnistNetConfig::default()
    };
    let family = kind.loop_family();
    let meta = if legacy {
        MetaSchedule {
            interval: 1,
            interval_stage2: 1,
            steps: 1,
            batch: 0,
        }
    } else {
        // A phase every 100 iterations, 20 IWV steps, one training-sized meta batch each.
        MetaSchedule {
            interval: 100,
            interval_stage2: 100,
            steps: 20,
            batch: 0,
        }
    };
    RunConfig {
        seed,
        method: AvMethod::of(kind, mckd),
        optimizer: OptimizerConfig::Adam {
            epsilon: 1e-8,
            weight_decay: 1e-2,
        },
        schedule: LrSchedule::Step {
            lr: 1e-3,
            every: 20,
            gamma: 0.9,
        },
        loop_: LoopConfig {
            budget: Budget::Epochs(60),
            batch_size: 64,
            // Set per run from the training set size (`drop_last` when a batch of one
            // would be left).
            sampling: Sampling::EpochShuffle { drop_last: false },
            subsets: match family {
                LoopFamily::Staged => SubsetSampling::Reference,
                LoopFamily::Bound | LoopFamily::Fixed => SubsetSampling::Full,
            },
            granularity: MaskGranularity::Batch,
            full_fraction: if legacy || family != LoopFamily::Staged {
                0.0
            } else {
                REFERENCE_FULL_FRACTION
            },
            meta,
            checkpoint_every: 0,
        },
        task: AvTask {
            net,
            setting: if kind.needs_setting() { setting } else { None },
            mapping: PercentMapping::Total,
            split: if legacy {
                DataSplit::Smil
            } else {
                DataSplit::Paper
            },
            evaluate_on: EvalSet::Test,
            data_dir: None,
            split_file: None,
        },
        device: Default::default(),
    }
}

/// Checks a run config before anything is written; messages name the field.
pub fn validate(cfg: &AvRunConfig) -> Result<(), ConfigError> {
    let bad = |field: &str, problem: String| {
        Err(ConfigError::Invalid {
            field: field.into(),
            problem,
        })
    };
    cfg.loop_.validate()?;
    if cfg.loop_.batch_size < 2 {
        return bad(
            "loop.batch_size",
            format!("{} < 2 (batch norm)", cfg.loop_.batch_size),
        );
    }
    if let Some(m) = cfg.method.mckd() {
        mckd_train::config::validate_mckd(m, "method")?;
    }
    validate_peer(&cfg.method)?;
    mckd_train::config::validate_schedule(&cfg.schedule)?;
    mckd_train::config::validate_optimizer(&cfg.optimizer)?;
    let net = &cfg.task.net;
    if !(0.0..1.0).contains(&net.dropout) {
        return bad(
            "task.net.dropout",
            format!("{} is not in [0, 1)", net.dropout),
        );
    }
    if net.features == 0 || net.hidden == 0 {
        return bad("task.net", "features and hidden must be at least 1".into());
    }
    let kind = cfg.method.kind();
    if kind.needs_setting() && cfg.task.setting.is_none() {
        return bad(
            "task.setting",
            format!("method {} needs a setting (e.g. audio_10)", kind.name()),
        );
    }
    if cfg.task.evaluate_on == EvalSet::Validation && cfg.task.split != DataSplit::Paper {
        return bad(
            "task.evaluate_on",
            "validation samples exist only with the paper split".into(),
        );
    }
    Ok(())
}

/// Checks a peer method's settings; messages name the field.
fn validate_peer(method: &AvMethod) -> Result<(), ConfigError> {
    use mckd_train::config::rules::{at_least_one, in_range, non_negative, positive};
    if let Some(p) = method.pretrain()
        && p.batch_size < 2
    {
        return Err(ConfigError::Invalid {
            field: "method.pretrain.batch_size".into(),
            problem: format!("{} < 2 (batch norm)", p.batch_size),
        });
    }
    match method {
        AvMethod::Autoencoder(c) => {
            at_least_one("method.hidden", c.hidden)?;
            at_least_one("method.iterations", c.iterations)?;
            at_least_one("method.batch_size", c.batch_size)?;
            positive("method.lr", c.lr)
        }
        AvMethod::Gan(c) => {
            at_least_one("method.hidden", c.hidden)?;
            at_least_one("method.iterations", c.iterations)?;
            at_least_one("method.batch_size", c.batch_size)?;
            positive("method.lr", c.lr)?;
            in_range("method.beta1", c.beta1, 0.0, 1.0)?;
            non_negative("method.l1_weight", c.l1_weight)
        }
        AvMethod::Full2miss(c) => non_negative("method.weight", c.weight),
        AvMethod::Smil(c) => {
            at_least_one("method.clusters", c.clusters)?;
            at_least_one("method.kmeans_restarts", c.kmeans_restarts)?;
            at_least_one("method.inner_decay_every", c.inner_decay_every)?;
            non_negative("method.inner_lr", c.inner_lr)?;
            non_negative("method.mse_fused_weight", c.mse_fused_weight)?;
            non_negative("method.mse_hidden_weight", c.mse_hidden_weight)?;
            non_negative("method.reverse_weight", c.reverse_weight)
        }
        AvMethod::Shaspec(c) => {
            non_negative("method.dao_weight", c.dao_weight)?;
            non_negative("method.dco_weight", c.dco_weight)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_map() {
        for name in ALL_SETTINGS {
            let s: Setting = name.parse().unwrap();
            assert_eq!(s.to_string(), name);
        }
        assert!("audio_7".parse::<Setting>().is_err());
        assert!("image_10".parse::<Setting>().is_err());
        let s: Setting = "visual_10".parse().unwrap();
        assert_eq!(s.paper_mckd(), 85.56);
        assert_eq!(s.test_mask(), [false, true]);
        let per: Vec<usize> = [5, 10, 15, 20]
            .iter()
            .map(|&p| PercentMapping::Total.per_digit(p))
            .collect();
        assert_eq!(per, [6, 15, 21, 30]);
        let mce: Vec<usize> = [5, 10, 15, 20]
            .iter()
            .map(|&p| PercentMapping::Mce.per_digit(p))
            .collect();
        assert_eq!(mce, [6, 12, 15, 21]);
    }

    #[test]
    fn presets_round_trip_and_validate() {
        for p in [Preset::Paper, Preset::Legacy] {
            for kind in MethodKind::ALL {
                let cfg = preset(p, kind, Some("audio_10".parse().unwrap()), 3);
                validate(&cfg).unwrap();
                let back: AvRunConfig = serde_json::from_str(&cfg.to_json()).unwrap();
                assert_eq!(back, cfg);
            }
        }
        let mut cfg = preset(Preset::Paper, MethodKind::Mckd, None, 1);
        assert!(
            validate(&cfg)
                .unwrap_err()
                .to_string()
                .contains("task.setting")
        );
        cfg.task.setting = Some("audio_5".parse().unwrap());
        cfg.method.mckd_mut().unwrap().alpha = f64::NAN;
        assert!(validate(&cfg).unwrap_err().to_string().contains("alpha"));
        let mut smil = preset(
            Preset::Paper,
            MethodKind::Smil,
            Some("audio_5".parse().unwrap()),
            1,
        );
        if let AvMethod::Smil(c) = &mut smil.method {
            c.clusters = 0;
        }
        assert!(
            validate(&smil)
                .unwrap_err()
                .to_string()
                .contains("method.clusters")
        );
    }
}
