//! The Table 2 harness: settings, methods, one training run, and many runs in parallel.
//!
//! # Methods
//!
//! * `lowerb_image` / `lowerb_audio`: the same network trained and tested with the other
//!   modality always missing (its input zeroed, its feature imputed by the present one, Eq. 2),
//!   on all 1,050 training samples of that modality; α = 0, no meta step. With the missing
//!   feature imputed by the present one the head computes `(W_image + W_audio)·f`, so this is
//!   exactly a single-encoder network with a 128 → 64 → 10 head. Setting-independent.
//! * `upperb`: all 1,050 paired samples, both modalities always present
//!   ([`SubsetSampling::Full`]), α = 0, no meta step; tested with both.
//! * `baseline`: MCKD's non-dedicated training with α = 0 (no CKD) and no meta step (with
//!   α = 0 the IWV has no effect on training, so the meta step is skipped).
//! * `mckd`: α (default 0.1) and a meta step every `meta_interval` iterations on the paired
//!   samples (SMIL's "meta-val" set, which is also part of the training set), never on test.
//!
//! # Settings
//!
//! `audio_P` (missing audio): per digit `p(P)` SMIL pairs + the other images image-only;
//! evaluated on the 450 test images alone. `visual_P` mirrors it (evaluated on the 450 test
//! recordings alone). The percent → pairs-per-digit mapping is a [`PercentMapping`].
//!
//! # Validation mode
//!
//! With `validation_per_digit = k > 0` the last `k` per digit of the samples that carry only the
//! evaluated modality (for `lowerb`/`upperb`: the last `k` train-pool positions) are held out of
//! training and the run is evaluated on them instead of on the test set. Used to choose
//! hyper-parameters (the meta interval) without looking at test accuracy.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use indicatif::ProgressBar;
use mckd_core::{Distance, MckdConfig, MckdModel, MckdTrainer, Normalisation, SubsetSampling};
use mckd_data::{AvMnist, AvSample};
use mckd_kernels::FusedAdamConfig;
use mckd_train::eval::accuracy;
use mckd_train::train::{
    LogRow, LoopConfig, LrSchedule, MaskGranularity, Source, iterations_per_epoch,
};
use serde::{Deserialize, Serialize};

use crate::data::AvSource;
use crate::model::{AvmnistNet, AvmnistNetConfig};

/// Errors of the AV-MNIST harness; each names what and where.
#[derive(Debug, thiserror::Error)]
pub enum AvmnistError {
    /// The data layer failed (names the file).
    #[error(transparent)]
    Data(#[from] mckd_data::DataError),
    /// The run folder failed (names the path).
    #[error(transparent)]
    Run(#[from] mckd_train::run::RunError),
    /// A plot cannot be written.
    #[error(transparent)]
    Plot(#[from] mckd_plot::PlotError),
    /// A setting name that is not `audio_<P>` / `visual_<P>` with P in 5, 10, 15, 20.
    #[error(
        "unknown setting `{0}`: expected audio_5, audio_10, audio_15, audio_20, visual_5, \
         visual_10, visual_15 or visual_20"
    )]
    UnknownSetting(String),
    /// A method that needs a setting was given none.
    #[error("method `{0}` needs a setting (e.g. --setting audio_10)")]
    MissingSetting(String),
    /// An invalid configuration value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file could not be read or parsed.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, AvmnistError>;

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

impl FromStr for Setting {
    type Err = AvmnistError;
    fn from_str(s: &str) -> Result<Self> {
        let err = || AvmnistError::UnknownSetting(s.to_string());
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
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Setting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
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

/// The methods of Table 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
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
}

impl Method {
    /// The name used in `results.json`.
    pub fn name(self) -> &'static str {
        match self {
            Method::LowerbImage => "lowerb_image",
            Method::LowerbAudio => "lowerb_audio",
            Method::Upperb => "upperb",
            Method::Baseline => "baseline",
            Method::Mckd => "mckd",
        }
    }

    /// Whether the method is trained per setting.
    pub fn needs_setting(self) -> bool {
        matches!(self, Method::Baseline | Method::Mckd)
    }
}

/// Every hyper-parameter of a run (saved as `config.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// Network.
    pub net: AvmnistNetConfig,
    /// Epochs.
    pub epochs: usize,
    /// Batch size (inner and meta).
    pub batch_size: usize,
    /// Task Adam learning rate.
    pub lr: f64,
    /// Epochs between learning-rate decays.
    pub lr_every: usize,
    /// Learning-rate decay factor.
    pub lr_gamma: f64,
    /// Task Adam coupled L2 weight decay.
    pub weight_decay: f64,
    /// Adam ε (PyTorch's 1e-8).
    pub adam_epsilon: f64,
    /// CKD weight α of the `mckd` method.
    pub alpha: f64,
    /// CKD distance.
    pub distance: Distance,
    /// IWV normalisation.
    pub normalisation: Normalisation,
    /// Meta step every this many inner iterations (0 = never).
    pub meta_interval: usize,
    /// IWV Adam learning rate.
    pub iwv_lr: f64,
    /// IWV Adam weight decay.
    pub iwv_weight_decay: f64,
    /// Subset sampling of non-dedicated training.
    pub sampling: SubsetSampling,
    /// Mask drawn per batch or per sample.
    pub granularity: MaskGranularity,
    /// Percent → pairs-per-digit mapping.
    pub mapping: PercentMapping,
    /// Held-out samples per digit for validation mode (0 = evaluate on test).
    pub validation_per_digit: usize,
}

impl Default for ExperimentConfig {
    /// The paper's protocol (DESIGN §2.1) with this crate's measured meta interval.
    fn default() -> Self {
        Self {
            net: AvmnistNetConfig::new(),
            epochs: 60,
            batch_size: 64,
            lr: 1e-3,
            lr_every: 20,
            lr_gamma: 0.9,
            weight_decay: 1e-2,
            adam_epsilon: 1e-8,
            alpha: 0.1,
            distance: Distance::L1,
            normalisation: Normalisation::Softmax,
            meta_interval: DEFAULT_META_INTERVAL,
            iwv_lr: 1e-2,
            iwv_weight_decay: 1e-2,
            sampling: SubsetSampling::Reference,
            granularity: MaskGranularity::Batch,
            mapping: PercentMapping::Total,
            validation_per_digit: 0,
        }
    }
}

/// Default meta interval (see the crate README / report for the validation measurement).
pub const DEFAULT_META_INTERVAL: usize = 1;

impl ExperimentConfig {
    /// Checks value ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(AvmnistError::Config(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad(format!("batch size {} < 2 (batch norm)", self.batch_size));
        }
        if !(0.0..1.0).contains(&self.net.dropout) {
            return bad(format!("dropout {} not in [0, 1)", self.net.dropout));
        }
        if !(self.alpha >= 0.0 && self.alpha.is_finite()) {
            return bad(format!("alpha {} must be ≥ 0", self.alpha));
        }
        if self.validation_per_digit >= 45 {
            return bad(format!(
                "validation_per_digit {} too large (at most 44)",
                self.validation_per_digit
            ));
        }
        Ok(())
    }
}

/// One training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Method.
    pub method: Method,
    /// Setting (for `baseline` and `mckd`).
    pub setting: Option<Setting>,
    /// Seed (network init, dropout, shuffling, masks, IWV init).
    pub seed: u64,
}

impl RunSpec {
    /// `method[-setting]-seed<k>`, used for log file names.
    pub fn label(&self) -> String {
        match self.setting {
            Some(s) => format!("{}-{s}-seed{}", self.method.name(), self.seed),
            None => format!("{}-seed{}", self.method.name(), self.seed),
        }
    }

    /// The modality subset this run's headline accuracy is measured on.
    pub fn target_mask(&self) -> [bool; 2] {
        match (self.method, self.setting) {
            (Method::LowerbImage, _) => [true, false],
            (Method::LowerbAudio, _) => [false, true],
            (Method::Upperb, _) => [true, true],
            (_, Some(s)) => s.test_mask(),
            (_, None) => [true, true],
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The run.
    pub spec: RunSpec,
    /// Accuracy (fraction) on the evaluated subset ([`RunSpec::target_mask`]).
    pub accuracy: f64,
    /// Accuracy per modality subset `[image]`, `[audio]`, `[image, audio]` (NaN where the
    /// evaluation samples lack the subset).
    pub subsets: Vec<(Vec<bool>, f64)>,
    /// Normalised IWV at the end (`[image, audio]`).
    pub iwv: Vec<f32>,
    /// Inner iterations run.
    pub iterations: usize,
    /// Wall time of training + evaluation, seconds.
    pub seconds: f64,
    /// Per-iteration log.
    #[serde(skip)]
    pub log: Vec<LogRow>,
}

/// The data of one run: training and meta sources and the evaluation source.
pub struct Prepared {
    /// Training samples.
    pub train: AvSource,
    /// Meta-validation samples (paired), for `mckd`.
    pub meta: Option<AvSource>,
    /// Evaluation samples (test, or the held-out validation part).
    pub eval: AvSource,
    /// α of the run.
    pub alpha: f64,
    /// Subset sampling of the run.
    pub sampling: SubsetSampling,
}

impl Prepared {
    /// Number of training samples.
    pub fn train_len(&self) -> usize {
        self.train.len()
    }
}

/// Splits a class-major list into (kept, held out): the last `k` of each label are held out.
fn hold_out<T: Clone>(items: &[T], label: impl Fn(&T) -> u8, k: usize) -> (Vec<T>, Vec<T>) {
    let mut kept = Vec::new();
    let mut held = Vec::new();
    for d in 0..10u8 {
        let of: Vec<&T> = items.iter().filter(|x| label(x) == d).collect();
        let cut = of.len().saturating_sub(k);
        kept.extend(of[..cut].iter().map(|x| (*x).clone()));
        held.extend(of[cut..].iter().map(|x| (*x).clone()));
    }
    (kept, held)
}

/// Builds the sources of a run.
pub fn prepare(data: &AvMnist, spec: &RunSpec, cfg: &ExperimentConfig) -> Result<Prepared> {
    let k = cfg.validation_per_digit;
    let test = || AvSource::paired(&data.test);
    let full = |keep: [bool; 2]| -> (AvSource, AvSource) {
        if k == 0 {
            (AvSource::restricted(&data.train, keep), test())
        } else {
            let (kept, held) = hold_out(&data.train, |s: &AvSample| s.label, k);
            (
                AvSource::restricted(&kept, keep),
                AvSource::restricted(&held, keep),
            )
        }
    };
    let single = |keep| {
        let (train, eval) = full(keep);
        Prepared {
            train,
            meta: None,
            eval,
            alpha: 0.0,
            sampling: SubsetSampling::Full,
        }
    };
    Ok(match spec.method {
        Method::LowerbImage => single([true, false]),
        Method::LowerbAudio => single([false, true]),
        Method::Upperb => single([true, true]),
        Method::Baseline | Method::Mckd => {
            let setting = spec
                .setting
                .ok_or_else(|| AvmnistError::MissingSetting(spec.method.name().into()))?;
            let p = cfg.mapping.per_digit(setting.percent);
            let (train, eval) = match setting.missing {
                Missing::Audio => {
                    let set = data.missing_audio(p)?;
                    let (kept, held) = hold_out(&set.image_only, |s| s.label, k);
                    let mut t = AvSource::paired(&set.paired);
                    t.add_images(&kept);
                    let mut e = AvSource::new();
                    e.add_images(&held);
                    (t, e)
                }
                Missing::Visual => {
                    let set = data.missing_visual(p)?;
                    let (kept, held) = hold_out(&set.audio_only, |s| s.label, k);
                    let mut t = AvSource::paired(&set.paired);
                    t.add_audio(&kept);
                    let mut e = AvSource::new();
                    e.add_audio(&held);
                    (t, e)
                }
            };
            let eval = if k == 0 { test() } else { eval };
            let paired = data.paired_train(p)?;
            let is_mckd = spec.method == Method::Mckd;
            if train.is_empty() {
                return Err(AvmnistError::Config("empty training set".into()));
            }
            Prepared {
                train,
                meta: is_mckd.then(|| AvSource::paired(&paired)),
                eval,
                alpha: if is_mckd { cfg.alpha } else { 0.0 },
                sampling: cfg.sampling,
            }
        }
    })
}

/// Inner iterations a run will take (for progress bars).
pub fn planned_iterations(train_len: usize, cfg: &ExperimentConfig) -> usize {
    let drop_last = train_len % cfg.batch_size == 1;
    iterations_per_epoch(train_len, cfg.batch_size, drop_last) * cfg.epochs
}

/// Trains and evaluates one run on `device` (the autodiff wrapper is added here). Returns the
/// trained model (inference copy) and the outcome.
pub fn run_one(
    data: &AvMnist,
    spec: &RunSpec,
    cfg: &ExperimentConfig,
    device: &Device,
    progress: &ProgressBar,
) -> Result<(MckdModel<AvmnistNet>, RunOutcome)> {
    cfg.validate()?;
    let start = Instant::now();
    let prep = prepare(data, spec, cfg)?;
    let ad = device.clone().autodiff();
    let net = cfg.net.init_seeded(spec.seed, &ad);
    let model = MckdModel::new(net, cfg.normalisation, spec.seed, &ad);
    let mckd_cfg = MckdConfig::new()
        .with_alpha(prep.alpha)
        .with_distance(cfg.distance)
        .with_normalisation(cfg.normalisation)
        .with_meta_interval(if prep.meta.is_some() {
            cfg.meta_interval
        } else {
            0
        })
        .with_iwv_lr(cfg.iwv_lr)
        .with_iwv_weight_decay(cfg.iwv_weight_decay)
        .with_sampling(prep.sampling);
    // burn's Adam, one pass per parameter (same bits; mckd_kernels::adam).
    let optim = FusedAdamConfig::new(cfg.adam_epsilon as f32, Some(cfg.weight_decay as f32)).init();
    let mut trainer = MckdTrainer::new(mckd_cfg, optim);
    let loop_cfg = LoopConfig {
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        seed: spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5,
        lr: LrSchedule::Step {
            lr: cfg.lr,
            every: cfg.lr_every,
            gamma: cfg.lr_gamma,
        },
        granularity: cfg.granularity,
        // Batch norm cannot normalise a batch of one.
        drop_last: prep.train.len() % cfg.batch_size == 1,
    };
    let mut log = Vec::new();
    let model = mckd_train::train::train(
        model,
        &mut trainer,
        &prep.train,
        prep.meta.as_ref(),
        &loop_cfg,
        &ad,
        progress,
        |row| log.push(row.clone()),
    );
    let model = model.valid();
    let plain = device.clone().without_autodiff();
    let subsets: Vec<(Vec<bool>, f64)> = mckd_core::all_subsets(2)
        .into_iter()
        .map(|m| {
            let (acc, _) = accuracy(&model, &prep.eval, &m, 256, &plain);
            (m, acc)
        })
        .collect();
    let target = spec.target_mask().to_vec();
    let acc = subsets
        .iter()
        .find(|(m, _)| *m == target)
        .map_or(f64::NAN, |(_, a)| *a);
    let outcome = RunOutcome {
        spec: *spec,
        accuracy: acc,
        subsets,
        iwv: model.iwv.normalised_values(),
        iterations: log.len(),
        seconds: start.elapsed().as_secs_f64(),
        log,
    };
    Ok((model, outcome))
}

/// Runs every spec one after the other in this process; results in spec order. `on_done`
/// sees each finished run. (Parallel runs are child processes, see [`crate::cli`]: two MCKD
/// runs trained in threads of one process were measured not to be reproducible.)
pub fn run_sequential(
    data: &AvMnist,
    specs: &[RunSpec],
    cfg: &ExperimentConfig,
    device: &Device,
    progress: &ProgressBar,
    on_done: &dyn Fn(&RunOutcome),
) -> Vec<Result<RunOutcome>> {
    specs
        .iter()
        .map(|spec| {
            let r = run_one(data, spec, cfg, device, progress).map(|(_, o)| o);
            if let Ok(o) = &r {
                on_done(o);
            }
            r
        })
        .collect()
}

/// The runs of a reproduction: setting-independent methods once per seed, `baseline` and
/// `mckd` per setting and seed. Seeds are `first_seed .. first_seed + seeds`.
pub fn plan(methods: &[Method], settings: &[Setting], first_seed: u64, seeds: u64) -> Vec<RunSpec> {
    let mut out = Vec::new();
    for seed in first_seed..first_seed + seeds {
        for &method in methods {
            if method.needs_setting() {
                for &s in settings {
                    out.push(RunSpec {
                        method,
                        setting: Some(s),
                        seed,
                    });
                }
            } else {
                out.push(RunSpec {
                    method,
                    setting: None,
                    seed,
                });
            }
        }
    }
    // Seed by seed (partial reports complete one seed at a time); within a seed the longest
    // runs (MCKD) first keeps parallel workers busy to the end.
    out.sort_by_key(|s| (s.seed, std::cmp::Reverse(matches!(s.method, Method::Mckd))));
    out
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
        assert!(per.iter().all(|p| p % 3 == 0));
        let mce: Vec<usize> = [5, 10, 15, 20]
            .iter()
            .map(|&p| PercentMapping::Mce.per_digit(p))
            .collect();
        assert_eq!(mce, [6, 12, 15, 21]);
    }

    #[test]
    fn prepared_sources_follow_the_protocol() {
        // Synthetic data with SMIL's sizes: 105 per digit, 45 test per digit.
        let data = AvMnist::synthetic(105, 45, 2).unwrap();
        let cfg = ExperimentConfig::default();
        let spec = |method, setting: &str| RunSpec {
            method,
            setting: Some(setting.parse().unwrap()),
            seed: 1,
        };
        let p = prepare(&data, &spec(Method::Mckd, "audio_10"), &cfg).unwrap();
        assert_eq!(p.train.len(), 1050);
        assert_eq!(p.train.counts(), [1050, 150]);
        assert_eq!(p.meta.as_ref().unwrap().counts(), [150, 150]);
        assert_eq!(p.eval.len(), 450);
        assert_eq!(p.alpha, 0.1);
        let p = prepare(&data, &spec(Method::Baseline, "visual_20"), &cfg).unwrap();
        assert_eq!(p.train.counts(), [300, 1050]);
        assert!(p.meta.is_none());
        assert_eq!(p.alpha, 0.0);
        let p = prepare(
            &data,
            &RunSpec {
                method: Method::LowerbAudio,
                setting: None,
                seed: 1,
            },
            &cfg,
        )
        .unwrap();
        assert_eq!(p.train.counts(), [0, 1050]);
        assert_eq!(p.sampling, SubsetSampling::Full);
        // Validation mode: held-out samples never in training, no test samples used.
        let vcfg = ExperimentConfig {
            validation_per_digit: 15,
            ..ExperimentConfig::default()
        };
        let p = prepare(&data, &spec(Method::Mckd, "audio_10"), &vcfg).unwrap();
        assert_eq!(p.train.counts(), [900, 150]);
        assert_eq!(p.eval.counts(), [150, 0]);
        assert!(
            prepare(
                &data,
                &RunSpec {
                    method: Method::Mckd,
                    setting: None,
                    seed: 1
                },
                &cfg
            )
            .is_err()
        );
    }

    #[test]
    fn plan_counts_runs() {
        let settings: Vec<Setting> = ALL_SETTINGS.iter().map(|s| s.parse().unwrap()).collect();
        let all = [
            Method::LowerbImage,
            Method::LowerbAudio,
            Method::Upperb,
            Method::Baseline,
            Method::Mckd,
        ];
        let p = plan(&all, &settings, 1, 5);
        assert_eq!(p.len(), 5 * (3 + 16));
        assert_eq!(p[0].method, Method::Mckd);
        assert!(p.windows(2).all(|w| w[0].seed <= w[1].seed));
    }
}
