//! One AV-MNIST run: its data, its method, training through the shared loop, evaluation of every
//! subset, and what it produced.

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::*;
use indicatif::ProgressBar;
use mckd_core::{Mckd, MckdModel, Method};
use mckd_data::{AvMnist, ValidationCarve};
use mckd_train::eval::accuracy;
use mckd_train::observe::{
    DivergenceGuard, FolderCheckpoints, Progress, StopOnSignal, load_checkpoint,
};
use mckd_train::run::RunDir;
use mckd_train::train::{
    Ended, LogColumns, LogRow, LoopSetup, Observer, Sampling, Source, Timing, total_iterations,
};
use serde::{Deserialize, Serialize};

use crate::config::{
    AvMethod, AvRunConfig, DataSplit, EvalSet, MethodKind, Missing, Setting, validate,
};
use crate::data::AvSource;
use crate::peers::common::PreSetup;
use crate::peers::full2miss::Full2miss;
use crate::peers::impute::{Imputer, ImputerKind};
use crate::peers::lenet::LenetNet;
use crate::peers::shaspec::{Shaspec, ShaspecModel};
use crate::peers::smil::{Smil, SmilBackbone};
use crate::peers::{BoxedMethod, PeerData};

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
    /// An invalid configuration value (names the field).
    #[error(transparent)]
    Config(#[from] mckd_train::config::ConfigError),
    /// The loop failed (checkpoint, resume).
    #[error(transparent)]
    Loop(#[from] mckd_train::train::LoopError),
    /// A setting name is not one of Table 2's.
    #[error(transparent)]
    Setting(#[from] crate::config::UnknownSetting),
    /// The device asked for is not compiled in.
    #[error(transparent)]
    Device(#[from] mckd_train::device::DeviceUnavailable),
    /// Training stopped: diverged, or interrupted (a checkpoint allows `--resume`).
    #[error("{0}")]
    Stopped(String),
    /// A file could not be read, parsed or written.
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

/// The identity of a run in a grid: method, row, seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunSpec {
    /// Method.
    pub method: MethodKind,
    /// Setting (for `baseline` and `mckd`).
    pub setting: Option<Setting>,
    /// Seed.
    pub seed: u64,
}

impl RunSpec {
    /// The spec of a run config.
    pub fn of(cfg: &AvRunConfig) -> Self {
        Self {
            method: cfg.method.kind(),
            setting: cfg.task.setting,
            seed: cfg.seed,
        }
    }

    /// `method[-setting]-seed<k>`, used for folder and file names.
    pub fn label(&self) -> String {
        match self.setting {
            Some(s) => format!("{}-{s}-seed{}", self.method.name(), self.seed),
            None => format!("{}-seed{}", self.method.name(), self.seed),
        }
    }

    /// The modality subset this run's headline accuracy is measured on.
    pub fn target_mask(&self) -> [bool; 2] {
        match (self.method.bound_mask(), self.setting) {
            (Some(m), _) => m,
            (None, Some(s)) => s.test_mask(),
            (None, None) => [true, true],
        }
    }
}

/// What a run produced (`result.json` of its folder).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The run.
    pub spec: RunSpec,
    /// Accuracy (fraction) on the evaluated subset ([`RunSpec::target_mask`]); NaN as `null`.
    #[serde(with = "nan_as_null")]
    pub accuracy: f64,
    /// Accuracy per modality subset `[image]`, `[audio]`, `[image, audio]` (NaN where the
    /// evaluation samples lack the subset).
    pub subsets: Vec<SubsetAccuracy>,
    /// Normalised IWV at the end (`[image, audio]`; empty for the peers).
    pub iwv: Vec<f32>,
    /// Inner iterations run by the shared loop.
    pub iterations: usize,
    /// Network iterations of the method's own stages before the loop (pretraining; 0 for
    /// MCKD, the Baseline, the bounds and ShaSpec).
    #[serde(default)]
    pub pre_iterations: usize,
    /// Wall time of training + evaluation, seconds.
    pub seconds: f64,
    /// Step timing.
    pub timing: Timing,
    /// Per-iteration log (in `train_log.csv`, not in `result.json`).
    #[serde(skip)]
    pub log: Vec<LogRow>,
}

/// The accuracy of one subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsetAccuracy {
    /// Presence mask `[image, audio]`.
    pub mask: Vec<bool>,
    /// Accuracy (fraction); NaN (`null`) when no evaluated sample has the subset.
    #[serde(with = "nan_as_null")]
    pub accuracy: f64,
}

impl RunOutcome {
    /// The accuracy of `mask` (NaN if absent).
    pub fn subset(&self, mask: &[bool]) -> f64 {
        self.subsets
            .iter()
            .find(|s| s.mask == mask)
            .map_or(f64::NAN, |s| s.accuracy)
    }
}

/// NaN ↔ `null` for JSON (which has no NaN).
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_nan() {
            s.serialize_none()
        } else {
            s.serialize_f64(*v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// The data of one run: training and meta sources and the evaluation source.
pub struct Prepared {
    /// Training samples.
    pub train: AvSource,
    /// Meta-validation samples (both modalities), for `mckd`.
    pub meta: Option<AvSource>,
    /// Evaluation samples (test or validation).
    pub eval: AvSource,
}

/// Builds the sources of a run.
pub fn prepare(data: &AvMnist, cfg: &AvRunConfig) -> Result<Prepared> {
    let kind = cfg.method.kind();
    let mut prep = match cfg.task.split {
        DataSplit::Smil => prepare_smil(data, cfg)?,
        DataSplit::Paper => prepare_paper(data, cfg)?,
    };
    if kind != MethodKind::Mckd {
        prep.meta = None;
    }
    if prep.train.is_empty() {
        return Err(AvmnistError::Config(
            mckd_train::config::ConfigError::Invalid {
                field: "task".into(),
                problem: "empty training set".into(),
            },
        ));
    }
    Ok(prep)
}

fn setting_of(cfg: &AvRunConfig) -> Result<Setting> {
    cfg.task.setting.ok_or_else(|| {
        mckd_train::config::ConfigError::Invalid {
            field: "task.setting".into(),
            problem: format!("method {} needs a setting", cfg.method.kind().name()),
        }
        .into()
    })
}

/// SMIL's 1,050-sample pool; the meta set is the row's paired training samples.
fn prepare_smil(data: &AvMnist, cfg: &AvRunConfig) -> Result<Prepared> {
    let test = AvSource::paired(&data.test);
    if let Some(keep) = cfg.method.kind().bound_mask() {
        return Ok(Prepared {
            train: AvSource::restricted(&data.train, keep),
            meta: None,
            eval: test,
        });
    }
    let setting = setting_of(cfg)?;
    let p = cfg.task.mapping.per_digit(setting.percent);
    let train = match setting.missing {
        Missing::Audio => AvSource::missing_audio(&data.missing_audio(p)?),
        Missing::Visual => AvSource::missing_visual(&data.missing_visual(p)?),
    };
    Ok(Prepared {
        train,
        meta: Some(AvSource::paired(&data.paired_train(p)?)),
        eval: test,
    })
}

/// The paper's 900 / 150 / 450 split: training on the 900, the 150 validation samples (both
/// modalities) as the meta set, evaluation on test (or on the validation samples).
fn prepare_paper(data: &AvMnist, cfg: &AvRunConfig) -> Result<Prepared> {
    let carve = ValidationCarve::Paper;
    let validation = AvSource::paired(&data.validation(carve)?);
    let eval = match cfg.task.evaluate_on {
        EvalSet::Test => AvSource::paired(&data.test),
        EvalSet::Validation => validation.clone(),
    };
    if let Some(keep) = cfg.method.kind().bound_mask() {
        let per_class = data.carve_layout(carve)?.train_per_class();
        return Ok(Prepared {
            train: AvSource::restricted(&data.paired_train_carved(per_class, carve)?, keep),
            meta: None,
            eval,
        });
    }
    let setting = setting_of(cfg)?;
    let p = cfg.task.mapping.per_digit(setting.percent);
    let train = match setting.missing {
        Missing::Audio => AvSource::missing_audio(&data.missing_audio_carved(p, carve)?),
        Missing::Visual => AvSource::missing_visual(&data.missing_visual_carved(p, carve)?),
    };
    Ok(Prepared {
        train,
        meta: Some(validation),
        eval,
    })
}

/// The seed of a run's loop generator (shuffles, masks, meta batches), derived from its seed.
pub fn loop_seed(seed: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5
}

/// The config with the run-dependent loop settings resolved: batch norm cannot normalise a
/// batch of one, so the last batch of an epoch is dropped when it would hold one sample.
pub fn resolve(cfg: &AvRunConfig, train_len: usize) -> AvRunConfig {
    let mut cfg = cfg.clone();
    if let Sampling::EpochShuffle { .. } = cfg.loop_.sampling {
        cfg.loop_.sampling = Sampling::EpochShuffle {
            drop_last: train_len % cfg.loop_.batch_size == 1,
        };
    }
    cfg
}

/// The row's training samples as the peers see them (paired, dominant modality).
fn peer_data(cfg: &AvRunConfig, train: &AvSource) -> Result<PeerData> {
    Ok(PeerData::new(train, setting_of(cfg)?.missing))
}

/// The seed of a peer's own stages (pretraining shuffles, translators, noise), derived from
/// the run's seed.
pub fn stage_seed(seed: u64) -> u64 {
    seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x5EED
}

/// The method of a run, freshly initialised from its seed on `device` (the autodiff device to
/// train, the plain one to load a saved model); the peers take what they need of the row's
/// training samples `train`. Every method of one seed starts from the same network.
pub fn build_method(cfg: &AvRunConfig, train: &AvSource, device: &Device) -> Result<BoxedMethod> {
    let net = || cfg.task.net.init_seeded(cfg.seed, device);
    let optim = cfg.optimizer.init();
    let setup = || PreSetup {
        optimizer: cfg.optimizer,
        lr: cfg.schedule.initial(),
        seed: stage_seed(cfg.seed),
        device: device.clone(),
    };
    let boxed: BoxedMethod = match &cfg.method {
        AvMethod::LowerbImage(m)
        | AvMethod::LowerbAudio(m)
        | AvMethod::Upperb(m)
        | AvMethod::Baseline(m)
        | AvMethod::Mckd(m) => {
            let model = MckdModel::new(net(), m.normalisation, cfg.seed, device);
            if cfg.method.kind() == MethodKind::Mckd {
                Box::new(Mckd::new(model, m.clone(), optim))
            } else {
                Box::new(Mckd::baseline(model, m.clone(), optim))
            }
        }
        AvMethod::Shaspec(c) => Box::new(Shaspec::new(
            ShaspecModel::new(net(), stage_seed(cfg.seed), device),
            c.clone(),
            optim,
        )),
        AvMethod::Autoencoder(c) => Box::new(Imputer::new(
            ImputerKind::Autoencoder(c.clone()),
            net(),
            peer_data(cfg, train)?,
            setup(),
            optim,
        )),
        AvMethod::Gan(c) => Box::new(Imputer::new(
            ImputerKind::Gan(c.clone()),
            net(),
            peer_data(cfg, train)?,
            setup(),
            optim,
        )),
        AvMethod::Full2miss(c) => Box::new(Full2miss::new(
            c.clone(),
            net(),
            peer_data(cfg, train)?,
            setup(),
            optim,
        )),
        AvMethod::Smil(c) => {
            let data = peer_data(cfg, train)?;
            let bad = |e: crate::peers::kmeans::KMeansError| {
                AvmnistError::Config(mckd_train::config::ConfigError::Invalid {
                    field: "method.clusters".into(),
                    problem: e.to_string(),
                })
            };
            let bs = cfg.loop_.batch_size;
            match c.backbone {
                SmilBackbone::Ours => Box::new(
                    Smil::new(c.clone(), net(), data, setup(), optim, bs, "smil").map_err(bad)?,
                ),
                SmilBackbone::Lenet => Box::new(
                    Smil::new(
                        c.clone(),
                        LenetNet::init_seeded(cfg.seed, device),
                        data,
                        setup(),
                        optim,
                        bs,
                        "smil_lenet",
                    )
                    .map_err(bad)?,
                ),
            }
        }
    };
    Ok(boxed)
}

/// Inner iterations a run will take (for progress bars): the method's own stages and the
/// shared loop's.
pub fn planned_iterations(data: &AvMnist, cfg: &AvRunConfig) -> Result<usize> {
    let prep = prepare(data, cfg)?;
    let resolved = resolve(cfg, prep.train.len());
    let pre = match cfg.method.pretrain() {
        Some(p) => p.iterations(&peer_data(cfg, &prep.train)?),
        None => 0,
    };
    Ok(pre + total_iterations(&resolved.loop_, prep.train.len()))
}

/// Trains and evaluates one run on `device` (the autodiff wrapper is added here): the
/// method's own stages first (pretraining; not checkpointed: an interrupted run repeats
/// them), then the shared loop. With a run folder, checkpoints go into it (and `resume`
/// continues from its last one). Returns the trained method and the outcome.
pub fn run_one(
    data: &AvMnist,
    cfg: &AvRunConfig,
    device: &Device,
    progress: &ProgressBar,
    run: Option<(&RunDir, bool)>,
) -> Result<(BoxedMethod, RunOutcome)> {
    validate(cfg)?;
    let start = Instant::now();
    let prep = prepare(data, cfg)?;
    let cfg = resolve(cfg, prep.train.len());
    let ad = device.clone().autodiff();
    let mut method = build_method(&cfg, &prep.train, &ad)?;
    let mut resume = None;
    if let Some((dir, true)) = run
        && let Some(c) = load_checkpoint(dir.path()).map_err(|msg| AvmnistError::File {
            path: dir.path().to_path_buf(),
            msg,
        })?
    {
        method
            .load_state(&c.method)
            .map_err(|e| AvmnistError::File {
                path: dir.file("checkpoint"),
                msg: e.to_string(),
            })?;
        progress.inc((method.pre_iterations() + c.state.iteration) as u64);
        resume = Some((c.state, c.log));
    }
    // The processes before a resume count up to their last checkpoint.
    let earlier_wall = resume
        .as_ref()
        .map_or(0.0, |(st, _)| st.timing.wall_seconds);
    method.prepare(&mut || progress.inc(1));
    let mut guard = DivergenceGuard::new(&method);
    let mut bar = Progress::new(progress, RunSpec::of(&cfg).label());
    let mut signal = StopOnSignal::install();
    let mut sink = run.map(|(d, _)| FolderCheckpoints::new(d.path()));
    let mut observers: Vec<&mut dyn Observer<BoxedMethod>> = vec![&mut guard, &mut bar];
    if run.is_some() {
        observers.push(&mut signal);
    }
    let trained = mckd_train::train::train(
        &mut method,
        &prep.train,
        prep.meta.as_ref(),
        LoopSetup {
            cfg: &cfg.loop_,
            schedule: &cfg.schedule,
            seed: loop_seed(cfg.seed),
            device: &ad,
            observers,
            checkpoints: sink
                .as_mut()
                .map(|s| s as &mut dyn mckd_train::train::CheckpointSink),
            resume,
        },
    )?;
    match trained.ended {
        Ended::Finished => {}
        Ended::Stopped => {
            return Err(AvmnistError::Stopped(format!(
                "interrupted at iteration {}; a checkpoint was written: continue with --resume",
                trained.state.iteration
            )));
        }
        Ended::Failed(msg) => return Err(AvmnistError::Stopped(msg)),
    }
    let plain = device.clone().without_autodiff();
    let subsets = evaluate(&method, &prep.eval, &plain);
    let spec = RunSpec::of(&cfg);
    let target = spec.target_mask().to_vec();
    let outcome = RunOutcome {
        spec,
        accuracy: subsets
            .iter()
            .find(|s| s.mask == target)
            .map_or(f64::NAN, |s| s.accuracy),
        subsets,
        iwv: method.iwv(),
        iterations: trained.log.len(),
        pre_iterations: method.pre_iterations(),
        seconds: earlier_wall + start.elapsed().as_secs_f64(),
        timing: trained.state.timing,
        log: trained.log,
    };
    Ok((method, outcome))
}

/// Accuracy of every subset on `source` (inference).
pub fn evaluate<M>(method: &M, source: &AvSource, device: &Device) -> Vec<SubsetAccuracy>
where
    M: Method<Batch = crate::model::AvBatch, Output = Tensor<2>>,
{
    mckd_core::all_subsets(2)
        .into_iter()
        .map(|mask| {
            let (acc, _) = accuracy(method, source, &mask, 256, device);
            SubsetAccuracy {
                mask,
                accuracy: acc,
            }
        })
        .collect()
}

/// The log columns of AV-MNIST runs.
pub fn log_columns(method: &BoxedMethod, cfg: &AvRunConfig) -> LogColumns {
    LogColumns::of(method, &cfg.loop_)
}
