//! The run configuration: one nested, serialisable value per run, saved as `config.json` in its
//! folder, from which any run can be rebuilt (`--config FILE`); command-line flags only override
//! fields of it.
//!
//! The configs follow burn's guide (a training config nests the model and optimiser configs),
//! with plain serde derives instead of `#[derive(Config)]` so that an unknown field is an error
//! (`deny_unknown_fields`) rather than silently ignored.

use std::path::Path;

use mckd_core::SubsetSampling;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;

/// How long a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// A number of inner iterations.
    Iterations(usize),
    /// A number of passes over the training source (with [`Sampling::EpochShuffle`]).
    Epochs(usize),
}

/// How the loop picks the samples of each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// A shuffled pass over the source per epoch, in consecutive batches; meta batches are
    /// consecutive chunks of a shuffled order of the meta source, reshuffled when exhausted.
    EpochShuffle {
        /// Drop the last incomplete batch of an epoch (batch norm cannot normalise one sample).
        drop_last: bool,
    },
    /// Each sample drawn from a shuffled order that is refilled when empty (train and meta).
    Draws,
}

/// Whether one presence mask is drawn per batch (as the reference code) or per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MaskGranularity {
    /// One draw per iteration, shared by the batch (intersected with what each sample has).
    #[default]
    Batch,
    /// One draw per sample.
    Sample,
}

/// When the meta step runs and on what (DESIGN §1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetaSchedule {
    /// A meta phase after every this many iterations of stage 1 (0 = never).
    pub interval: usize,
    /// The same in stage 2 (the reference: 100 in stage 1, 500 in stage 2).
    pub interval_stage2: usize,
    /// Meta (IWV) steps per phase, each on its own meta batch (the reference: 20).
    pub steps: usize,
    /// Samples per meta batch (the reference: 1; 0 = the training batch size).
    pub batch: usize,
}

impl Default for MetaSchedule {
    /// The reference's schedule.
    fn default() -> Self {
        Self {
            interval: 100,
            interval_stage2: 500,
            steps: 20,
            batch: 1,
        }
    }
}

/// Learning-rate schedule of the task optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// A constant rate.
    Constant {
        /// The rate.
        lr: f64,
    },
    /// `lr · gamma^(epoch / every)` (AV-MNIST: ×0.9 every 20 epochs).
    Step {
        /// Initial rate.
        lr: f64,
        /// Epochs between decays.
        every: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// Cosine annealing from `lr` to 0 over the stage, per iteration (the paper's text).
    Cosine {
        /// Initial rate.
        lr: f64,
    },
    /// `lr · (1 − progress)^power` per iteration over the stage (the reference: power 0.9).
    Poly {
        /// Initial rate.
        lr: f64,
        /// Exponent.
        power: f64,
    },
}

impl LrSchedule {
    /// The rate at `epoch` (0-based) and `progress` ∈ [0, 1) of the stage.
    pub fn at(&self, epoch: usize, progress: f64) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::Step { lr, every, gamma } => lr * gamma.powi((epoch / every.max(1)) as i32),
            LrSchedule::Cosine { lr } => 0.5 * lr * (1.0 + (std::f64::consts::PI * progress).cos()),
            LrSchedule::Poly { lr, power } => lr * (1.0 - progress).max(0.0).powf(power),
        }
    }

    /// The initial rate.
    pub fn initial(&self) -> f64 {
        match *self {
            LrSchedule::Constant { lr }
            | LrSchedule::Step { lr, .. }
            | LrSchedule::Cosine { lr }
            | LrSchedule::Poly { lr, .. } => lr,
        }
    }
}

/// Loop settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// How long to train.
    pub budget: Budget,
    /// Samples per inner batch.
    pub batch_size: usize,
    /// How batches are drawn.
    pub sampling: Sampling,
    /// How the present modalities of the random-dropping stage are drawn.
    pub subsets: SubsetSampling,
    /// One mask per batch or per sample.
    pub granularity: MaskGranularity,
    /// Fraction of the iterations trained first with every available modality present (stage
    /// 1); the rest drops modalities with [`subsets`](Self::subsets) (stage 2). The learning
    /// rate schedule restarts at the stage change. The reference: 80k of 115k; 0 = one stage.
    pub full_fraction: f64,
    /// Meta phases.
    pub meta: MetaSchedule,
    /// A checkpoint every this many iterations (0 = only at the end and on a signal).
    pub checkpoint_every: usize,
}

impl LoopConfig {
    /// Checks the settings; the message names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, problem: String| {
            Err(ConfigError::Invalid {
                field: field.into(),
                problem,
            })
        };
        match self.budget {
            Budget::Iterations(0) => return bad("loop.budget", "0 iterations".into()),
            Budget::Epochs(0) => return bad("loop.budget", "0 epochs".into()),
            Budget::Epochs(_) if self.sampling == Sampling::Draws => {
                return bad(
                    "loop.budget",
                    "an epoch budget needs epoch_shuffle sampling; give iterations".into(),
                );
            }
            _ => {}
        }
        if self.batch_size == 0 {
            return bad("loop.batch_size", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.full_fraction) {
            return bad(
                "loop.full_fraction",
                format!("{} is not in [0, 1)", self.full_fraction),
            );
        }
        if self.meta.steps == 0 && (self.meta.interval > 0 || self.meta.interval_stage2 > 0) {
            return bad(
                "loop.meta.steps",
                "meta phases need at least one step".into(),
            );
        }
        Ok(())
    }
}

/// The task optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Adam with coupled L2 weight decay (PyTorch's `Adam(weight_decay=…)`).
    Adam {
        /// ε (PyTorch's 1e-8).
        epsilon: f64,
        /// Coupled L2 weight decay (0 = none).
        weight_decay: f64,
    },
    /// SGD with (Nesterov) momentum, dampening 0 as PyTorch.
    Sgd {
        /// Momentum.
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
        /// Coupled L2 weight decay (0 = none).
        weight_decay: f64,
        /// Per-parameter gradient-norm clipping (`None` = none, the reference).
        clip_norm: Option<f32>,
    },
}

impl OptimizerConfig {
    /// The optimiser: on `flex` the fused kernels' Adam (burn's, bit-identical), else burn's.
    pub fn init(&self) -> burn::optim::ModuleOptimizer {
        use burn::optim::decay::WeightDecayConfig;
        use burn::optim::grad_clipping::GradientClippingConfig;
        use burn::optim::momentum::MomentumConfig;
        match *self {
            OptimizerConfig::Adam {
                epsilon,
                weight_decay,
            } => mckd_kernels::FusedAdamConfig::new(
                epsilon as f32,
                (weight_decay > 0.0).then_some(weight_decay as f32),
            )
            .init(),
            OptimizerConfig::Sgd {
                momentum,
                nesterov,
                weight_decay,
                clip_norm,
            } => {
                let mut sgd = burn::optim::SgdConfig::new().with_momentum(Some(
                    MomentumConfig::new()
                        .with_momentum(momentum)
                        .with_dampening(0.0)
                        .with_nesterov(nesterov),
                ));
                if weight_decay > 0.0 {
                    sgd = sgd.with_weight_decay(Some(WeightDecayConfig::new(weight_decay as f32)));
                }
                if let Some(c) = clip_norm {
                    sgd = sgd.with_gradient_clipping(Some(GradientClippingConfig::Norm(c)));
                }
                sgd.init()
            }
        }
    }
}

/// A whole run: method, optimiser, schedule, loop and task, plus the seed and device.
/// `M` is the task's method config (an enum over the methods it supports), `T` its own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig<M, T> {
    /// Seed of initialisation, sampling and augmentation.
    pub seed: u64,
    /// The method and its hyper-parameters.
    pub method: M,
    /// The task optimiser.
    pub optimizer: OptimizerConfig,
    /// Its learning-rate schedule.
    pub schedule: LrSchedule,
    /// The loop.
    #[serde(rename = "loop")]
    pub loop_: LoopConfig,
    /// The task's settings (network, data, evaluation).
    pub task: T,
    /// Compute device.
    #[serde(default)]
    pub device: DeviceChoice,
}

impl<M: Serialize + DeserializeOwned, T: Serialize + DeserializeOwned> RunConfig<M, T> {
    /// Reads a run config (`config.json`); errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        read_json(path)
    }

    /// As pretty JSON (what `config.json` holds).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a run config serialises")
    }
}

/// A JSON document of type `T` from `path`; errors name the file, the line and the field.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        problem: if path.is_dir() {
            "is a directory, expected a JSON file".into()
        } else {
            e.to_string()
        },
    })?;
    serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })
}

/// Rules every command applies to its options and configs, so that an invalid number is
/// refused the same way everywhere, before anything is written.
pub mod rules {
    use super::ConfigError;

    fn invalid(field: &str, problem: String) -> ConfigError {
        ConfigError::Invalid {
            field: field.into(),
            problem,
        }
    }

    /// A finite number ≥ 0.
    pub fn non_negative(field: &str, v: f64) -> Result<(), ConfigError> {
        if v.is_finite() && v >= 0.0 {
            Ok(())
        } else {
            Err(invalid(field, format!("{v} must be a finite number ≥ 0")))
        }
    }

    /// A finite number > 0.
    pub fn positive(field: &str, v: f64) -> Result<(), ConfigError> {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(invalid(field, format!("{v} must be a finite number > 0")))
        }
    }

    /// A number in `[lo, hi)`.
    pub fn in_range(field: &str, v: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
        if v.is_finite() && v >= lo && v < hi {
            Ok(())
        } else {
            Err(invalid(field, format!("{v} is not in [{lo}, {hi})")))
        }
    }

    /// A count ≥ 1.
    pub fn at_least_one(field: &str, v: usize) -> Result<(), ConfigError> {
        if v >= 1 {
            Ok(())
        } else {
            Err(invalid(field, "must be at least 1".into()))
        }
    }
}

/// Checks MCKD's hyper-parameters (`prefix` names where they sit, e.g. `method`).
pub fn validate_mckd(m: &mckd_core::MckdConfig, prefix: &str) -> Result<(), ConfigError> {
    rules::non_negative(&format!("{prefix}.alpha (--alpha)"), m.alpha)?;
    rules::positive(&format!("{prefix}.iwv.lr (--iwv-lr)"), m.iwv.lr)?;
    rules::non_negative(
        &format!("{prefix}.iwv.weight_decay (--iwv-weight-decay)"),
        m.iwv.weight_decay,
    )?;
    rules::positive(&format!("{prefix}.iwv.epsilon"), m.iwv.epsilon)
}

/// Checks a learning-rate schedule.
pub fn validate_schedule(s: &LrSchedule) -> Result<(), ConfigError> {
    rules::positive("schedule.lr (--lr)", s.initial())?;
    match *s {
        LrSchedule::Step { every, gamma, .. } => {
            rules::at_least_one("schedule.every", every)?;
            rules::positive("schedule.gamma", gamma)
        }
        LrSchedule::Poly { power, .. } => rules::positive("schedule.power", power),
        _ => Ok(()),
    }
}

/// Checks the task optimiser's settings.
pub fn validate_optimizer(o: &OptimizerConfig) -> Result<(), ConfigError> {
    match *o {
        OptimizerConfig::Adam {
            epsilon,
            weight_decay,
        } => {
            rules::positive("optimizer.epsilon", epsilon)?;
            rules::non_negative("optimizer.weight_decay", weight_decay)
        }
        OptimizerConfig::Sgd {
            momentum,
            weight_decay,
            clip_norm,
            ..
        } => {
            rules::in_range("optimizer.momentum (--momentum)", momentum, 0.0, 1.0)?;
            rules::non_negative("optimizer.weight_decay", weight_decay)?;
            if let Some(c) = clip_norm {
                rules::positive("optimizer.clip_norm", f64::from(c))?;
            }
            Ok(())
        }
    }
}

/// Errors of run configs.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {problem}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The file is not a config of this kind (unknown or missing field, wrong type).
    #[error("{path} is not a valid run config: {problem}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// serde's message (names the field and the line).
        problem: String,
    },
    /// A value is out of range.
    #[error("invalid {field}: {problem}")]
    Invalid {
        /// The field, as a dotted path (`loop.batch_size`) or an option name.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let s = LrSchedule::Step {
            lr: 1e-3,
            every: 20,
            gamma: 0.9,
        };
        assert_eq!(s.at(0, 0.0), 1e-3);
        assert!((s.at(19, 0.3) - 1e-3).abs() < 1e-15);
        assert!((s.at(20, 0.3) - 0.9e-3).abs() < 1e-15);
        assert!((s.at(45, 0.8) - 0.81e-3).abs() < 1e-15);
        let c = LrSchedule::Cosine { lr: 1e-2 };
        assert_eq!(c.at(0, 0.0), 1e-2);
        assert!((c.at(0, 0.5) - 0.5e-2).abs() < 1e-12);
        // Poly: 1e-2 · (1 − 0.75)^0.9 = 1e-2 · 0.25^0.9; python: 1e-2*0.25**0.9 = 0.0028717458874925.
        let p = LrSchedule::Poly {
            lr: 1e-2,
            power: 0.9,
        };
        assert_eq!(p.at(0, 0.0), 1e-2);
        assert!((p.at(0, 0.75) - 1e-2 * 0.25f64.powf(0.9)).abs() < 1e-15);
        assert!((p.at(0, 0.75) - 0.002_871_745_887_492_5).abs() < 1e-15);
    }
}
