//! One BraTS training run through the shared loop.
//!
//! A run folder holds `config.json` ([`BratsRunConfig`]), `splits.json`, `status.json`,
//! `model.bpk` (burn's burnpack record of the [`MckdModel`], IWV included), `train_log.csv`
//! (per iteration: lr, task loss, CKD loss, meta loss, normalised IWV), `timing.json`,
//! `feature_gap.csv` and the plots; `checkpoint/` while it trains.

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;
use mckd_core::{Mckd, MckdConfig, MckdModel, Method};
use mckd_train::observe::{
    DivergenceGuard, FolderCheckpoints, Progress, StopOnSignal, load_checkpoint,
};
use mckd_train::report::{iwv_map, json_f64};
use mckd_train::run::RunDir;
use mckd_train::train::{
    CheckpointSink, Control, Ended, LogColumns, LogRow, LoopSetup, Observer, Timing, log_csv,
    total_iterations,
};
use mckd_volume::{CropConfig, LoadedCase, Splits, discover_cases, load_case, make_splits};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{Arch, BratsMethod, BratsRunConfig, Method as Kind, validate};
use crate::data::{CropSource, TrainCase, dhw};
use crate::dualnet::{DualNetConfig, DualTask};
use crate::error::{BratsError, Result};
use crate::infer::{MckdPredictor, TilePredictor};
use crate::model::{BratsBatch, BratsNet, UNetConfig};
use crate::peers::common::Head;
use crate::peers::{Hemis, Hved, MmFormer, NativeLoss, Peer, RobustSeg, ShaSpec};
use crate::plots::{PlotData, write_plots};

/// Index of T1c, the most informative modality (DESIGN §1).
pub const T1C: usize = 2;

/// MCKD (or its Baseline or placebo) on the BraTS network.
pub type BratsMckd = Mckd<BratsNet>;

/// Any method a BraTS run trains: the MCKD family on the UNet or the DualNet, or one of the
/// peers ([`crate::peers`]). It is a [`Method`] by delegation, so the shared loop, the
/// observers and the evaluation handle every method alike.
// One method per run, built once and never moved in bulk: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum BratsAnyMethod {
    /// MCKD, the Baseline or the placebo.
    Mckd(BratsMckd),
    /// U-HeMIS.
    Hemis(Peer<Hemis>),
    /// U-HVED.
    Hved(Peer<Hved>),
    /// ShaSpec.
    Shaspec(Peer<ShaSpec>),
    /// mmFormer.
    Mmformer(Peer<MmFormer>),
    /// Robust-MSeg.
    RobustSeg(Peer<RobustSeg>),
}

/// `$body` with `$m` bound to the method inside any variant.
macro_rules! each {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            BratsAnyMethod::Mckd($m) => $body,
            BratsAnyMethod::Hemis($m) => $body,
            BratsAnyMethod::Hved($m) => $body,
            BratsAnyMethod::Shaspec($m) => $body,
            BratsAnyMethod::Mmformer($m) => $body,
            BratsAnyMethod::RobustSeg($m) => $body,
        }
    };
}

/// `$body` with `$m` bound to the peer inside a peer variant; `$mckd` for MCKD.
macro_rules! each_peer {
    ($self:expr, $m:ident => $body:expr, $mckd:ident => $other:expr) => {
        match $self {
            BratsAnyMethod::Mckd($mckd) => $other,
            BratsAnyMethod::Hemis($m) => $body,
            BratsAnyMethod::Hved($m) => $body,
            BratsAnyMethod::Shaspec($m) => $body,
            BratsAnyMethod::Mmformer($m) => $body,
            BratsAnyMethod::RobustSeg($m) => $body,
        }
    };
}

impl BratsAnyMethod {
    /// The MCKD-family method, if it is one.
    pub fn as_mckd(&self) -> Option<&BratsMckd> {
        match self {
            BratsAnyMethod::Mckd(m) => Some(m),
            _ => None,
        }
    }

    /// The trained model's record (`model.bpk`).
    pub fn model_bytes(&self) -> std::result::Result<Vec<u8>, mckd_core::StateError> {
        each_peer!(self, p => p.model_bytes(), m => m
        .model()
        .clone()
        .into_record()
        .into_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| mckd_core::StateError::Save {
            name: "model.bpk".into(),
            problem: format!("{e:?}"),
        }))
    }

    /// Replaces the model's parameters by a saved record (`model.bpk`).
    pub fn load_model(&mut self, record: &[u8]) -> std::result::Result<(), mckd_core::StateError> {
        each_peer!(self, p => p.load_model(record), m => m.load_model(record))
    }

    /// The model in inference mode as a tile predictor.
    pub fn predictor(&self) -> Box<dyn TilePredictor> {
        each_peer!(self, p => Box::new(p.predictor()), m => Box::new(MckdPredictor::new(m)))
    }

    /// Number of trainable parameters (the IWV included for MCKD).
    pub fn num_params(&self) -> usize {
        each_peer!(self, p => p.net().num_params(), m => m.model().num_params())
    }
}

impl Method for BratsAnyMethod {
    type Batch = BratsBatch;
    type Output = Tensor<5>;

    fn name(&self) -> &str {
        each!(self, m => m.name())
    }

    fn modalities(&self) -> &mckd_core::ModalitySet {
        each!(self, m => m.modalities())
    }

    fn term_names(&self) -> Vec<String> {
        each!(self, m => m.term_names())
    }

    fn train_step(&mut self, batch: &BratsBatch, mask: &Tensor<2>, lr: f64) -> Vec<f32> {
        each!(self, m => m.train_step(batch, mask, lr))
    }

    fn has_meta_step(&self) -> bool {
        each!(self, m => m.has_meta_step())
    }

    fn meta_step(&mut self, batch: &BratsBatch) -> f32 {
        each!(self, m => m.meta_step(batch))
    }

    fn state_names(&self) -> Vec<String> {
        each!(self, m => m.state_names())
    }

    fn state_values(&self) -> Vec<f32> {
        each!(self, m => m.state_values())
    }

    fn begin_stage(&mut self, stage: usize) {
        each!(self, m => m.begin_stage(stage))
    }

    fn predict(&self, batch: &BratsBatch, mask: &Tensor<2>) -> Tensor<5> {
        each!(self, m => m.predict(batch, mask))
    }

    fn save_state(&self) -> std::result::Result<mckd_core::StateFiles, mckd_core::StateError> {
        each!(self, m => m.save_state())
    }

    fn load_state(
        &mut self,
        files: &mckd_core::StateFiles,
    ) -> std::result::Result<(), mckd_core::StateError> {
        each!(self, m => m.load_state(files))
    }
}

/// The T1c feature gap at one iteration (paper Fig. 5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FeatureGap {
    /// Inner iteration (0 = before training).
    pub iteration: usize,
    /// Mean absolute difference between the generated (mean of Flair, T1, T2) and the real
    /// T1c bottleneck features.
    pub l1: f32,
    /// Cosine similarity between them (per sample, averaged).
    pub cosine: f32,
}

/// The outcome of a training run.
pub struct Trained {
    /// The trained method (model on the autodiff device).
    pub method: BratsAnyMethod,
    /// Per-iteration log.
    pub log: Vec<LogRow>,
    /// Feature-gap probes.
    pub feature_gap: Vec<FeatureGap>,
    /// Step timing.
    pub timing: Timing,
}

impl Trained {
    /// Mean seconds per inner step.
    pub fn seconds_per_inner(&self) -> f64 {
        self.timing.per_inner(self.log.len())
    }

    /// `, 0.123 s/meta step` for a progress line, or nothing for a run without meta steps
    /// (the Baseline, the peers, or a run too short for a phase: the time is NaN there).
    pub fn meta_step_text(&self) -> String {
        let meta = self.timing.per_meta();
        if meta.is_finite() {
            format!(", {meta:.3} s/meta step")
        } else {
            String::new()
        }
    }
}

/// Loads the cases named in `ids` (in order) from `cases`.
pub fn load_named(
    all: &[mckd_volume::Case],
    ids: &[String],
    convention: mckd_volume::LabelConvention,
    what: &str,
) -> Result<Vec<LoadedCase>> {
    let bar = mckd_train::progress_bar(ids.len() as u64, what);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let case = all
            .iter()
            .find(|c| &c.id == id)
            .ok_or_else(|| BratsError::Invalid(format!("case {id} of splits.json not found")))?;
        out.push(load_case(case, convention)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The cases named in `ids` ready for cropping: at the original grid (spacing 1), else
/// prepared at the run's spacing (cropped to the brain and resampled, from the cache).
pub fn training_cases(
    cfg: &BratsRunConfig,
    all: &[mckd_volume::Case],
    ids: &[String],
    what: &str,
) -> Result<Vec<Arc<TrainCase>>> {
    let conv = cfg.task.convention;
    if cfg.task.spacing == 1.0 {
        return load_named(all, ids, conv, what)?
            .into_iter()
            .map(|c| TrainCase::from_loaded(c, conv).map(Arc::new))
            .collect();
    }
    let cache = cfg.task.prepared_cache();
    let bar = mckd_train::progress_bar(ids.len() as u64, what);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let case = all
            .iter()
            .find(|c| &c.id == id)
            .ok_or_else(|| BratsError::Invalid(format!("case {id} of splits.json not found")))?;
        let (prepared, _) = cache.load_or_prepare(case, cfg.task.spacing, conv)?;
        out.push(Arc::new(TrainCase::from_prepared(prepared)?));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Splits for a run: the config's `splits_file` if given, else the run's own `splits.json` if
/// present, else new seeded splits. Always (re)written to `<run>/splits.json`.
pub fn resolve_splits(cfg: &BratsRunConfig, run: &RunDir, ids: &[String]) -> Result<Splits> {
    let own = run.file("splits.json");
    let splits = match &cfg.task.splits_file {
        Some(p) => Splits::load(p)?,
        None if own.is_file() => Splits::load(&own)?,
        None => make_splits(ids, cfg.task.fractions, cfg.seed)?,
    };
    splits.check_cases(ids)?;
    if splits.train.is_empty() || splits.meta_val.is_empty() || splits.test.is_empty() {
        return Err(BratsError::Invalid(format!(
            "splits need at least one train, meta-val and test case; got {} / {} / {} \
             (from {} cases)",
            splits.train.len(),
            splits.meta_val.len(),
            splits.test.len(),
            ids.len()
        )));
    }
    splits.save(&own)?;
    Ok(splits)
}

/// A freshly initialised MCKD model for `cfg` on `device` (seeded), for inputs of spatial
/// size `spatial` (D, H, W).
///
/// # Panics
/// If `cfg`'s method is a peer (see [`build_any`]).
pub fn init_model(
    cfg: &BratsRunConfig,
    spatial: [usize; 3],
    device: &Device,
) -> MckdModel<BratsNet> {
    mckd_train::init_seeded(cfg.seed, device, || init_unseeded(cfg, spatial, device))
}

fn init_unseeded(
    cfg: &BratsRunConfig,
    spatial: [usize; 3],
    device: &Device,
) -> MckdModel<BratsNet> {
    let net = match cfg.task.arch {
        Arch::Unet { base } => BratsNet::Unet(
            UNetConfig::new()
                .with_base(base)
                .with_spatial(spatial)
                .with_dice(cfg.task.dice)
                .init(device),
        ),
        Arch::DualNet { width } => BratsNet::Dual(
            DualTask::new(
                &DualNetConfig::new().with_width(width),
                spatial,
                cfg.task.dice,
                device,
            )
            .expect("a validated crop fits the DualNet"),
        ),
    };
    let mckd = cfg.method.mckd().expect("an MCKD-family method");
    MckdModel::new(net, mckd.normalisation, cfg.seed, device)
}

/// The MCKD-family method of `cfg` (MCKD, Baseline or placebo) around `model`.
///
/// # Panics
/// If `cfg`'s method is a peer (see [`build_any`]).
pub fn build_method(cfg: &BratsRunConfig, model: MckdModel<BratsNet>) -> BratsMckd {
    let mckd = cfg.method.mckd().expect("an MCKD-family method").clone();
    let optim = cfg.optimizer.init();
    match cfg.method.kind() {
        Kind::Mckd => Mckd::new(model, mckd, optim),
        Kind::Baseline => Mckd::baseline(model, mckd, optim),
        Kind::Placebo => {
            Mckd::new(model, MckdConfig { alpha: 0.0, ..mckd }, optim).named("placebo")
        }
        other => unreachable!("{other:?} is not an MCKD-family method"),
    }
}

/// Seed offset of a peer's own generator (sampling, random choices), apart from the loop's
/// and the crops'.
const PEER_RNG_SEED: u64 = 0x5eed_0004;

/// The freshly initialised method of `cfg` (any kind) on `device` (seeded), for training
/// crops of `spatial` (D, H, W).
///
/// # Panics
/// If `cfg` has not been validated ([`validate`]: a peer needs the UNet network, U-HVED an
/// even base width, mmFormer heads that divide `8·base`).
pub fn build_any(cfg: &BratsRunConfig, spatial: [usize; 3], device: &Device) -> BratsAnyMethod {
    build(cfg, spatial, device, true)
}

/// [`build_any`]; unless `seeded`, the parameters stay undrawn (burn draws them at first use):
/// for a model whose weights are loaded next and need not be drawn (43.6 M for the reference
/// DualNet).
fn build(
    cfg: &BratsRunConfig,
    spatial: [usize; 3],
    device: &Device,
    seeded: bool,
) -> BratsAnyMethod {
    if cfg.method.kind().is_mckd_family() {
        let model = seeded_if(seeded, cfg.seed, device, || {
            init_unseeded(cfg, spatial, device)
        });
        return BratsAnyMethod::Mckd(build_method(cfg, model));
    }
    let Arch::Unet { base: c } = cfg.task.arch else {
        panic!("a peer needs the UNet network (validate the config first)");
    };
    let optim = cfg.optimizer.init();
    let seed = cfg.seed ^ PEER_RNG_SEED;
    let dice = cfg.task.dice;
    let head = |native: bool, loss: NativeLoss| {
        if native {
            Head::Native(loss)
        } else {
            Head::Regions(dice)
        }
    };
    let name = cfg.method.kind().name();
    match &cfg.method {
        BratsMethod::Hemis(h) => BratsAnyMethod::Hemis(Peer::new(
            name,
            seeded_if(seeded, cfg.seed, device, || {
                Hemis::new(c, head(h.native_head, NativeLoss::NiftyNet), device)
            }),
            optim,
            seed,
        )),
        BratsMethod::Hved(h) => BratsAnyMethod::Hved(Peer::new(
            name,
            seeded_if(seeded, cfg.seed, device, || {
                Hved::new(
                    c,
                    head(h.native_head, NativeLoss::NiftyNet),
                    h.clone(),
                    device,
                )
            }),
            optim,
            seed,
        )),
        BratsMethod::Shaspec(s) => BratsAnyMethod::Shaspec(Peer::new(
            name,
            seeded_if(seeded, cfg.seed, device, || {
                ShaSpec::new(c, spatial, dice, s.clone(), device)
            }),
            optim,
            seed,
        )),
        BratsMethod::Mmformer(m) => BratsAnyMethod::Mmformer(Peer::new(
            name,
            seeded_if(seeded, cfg.seed, device, || {
                MmFormer::new(
                    c,
                    spatial,
                    head(m.native_head, NativeLoss::MmFormer),
                    m.clone(),
                    device,
                )
            }),
            optim,
            seed,
        )),
        BratsMethod::RobustSeg(r) => BratsAnyMethod::RobustSeg(Peer::new(
            name,
            seeded_if(seeded, cfg.seed, device, || {
                RobustSeg::new(
                    c,
                    head(r.native_head, NativeLoss::RobustSeg),
                    r.clone(),
                    device,
                )
            }),
            optim,
            seed,
        )),
        BratsMethod::Mckd(_) | BratsMethod::Baseline(_) | BratsMethod::Placebo(_) => {
            unreachable!("handled above")
        }
    }
}

/// `init()`, seeded ([`mckd_train::init_seeded`]) if `seeded`.
fn seeded_if<M: burn::module::Module>(
    seeded: bool,
    seed: u64,
    device: &Device,
    init: impl FnOnce() -> M,
) -> M {
    if seeded {
        mckd_train::init_seeded(seed, device, init)
    } else {
        init()
    }
}

/// Loads the model of a training run (`config.json` + `model.bpk`) on `device`.
pub fn load_model(run: &Path, device: &Device) -> Result<(BratsRunConfig, BratsAnyMethod)> {
    let cfg = load_config(run)?;
    // A peer's network is built from its settings: refuse ones it cannot be built with.
    crate::config::validate_method(&cfg.method, &cfg.task.arch)?;
    let path = run.join("model.bpk");
    if !path.is_file() {
        return Err(BratsError::Checkpoint {
            path,
            problem: if run.join("config.json").is_file() {
                "not found (has the run finished training?)".into()
            } else {
                "not found".into()
            },
        });
    }
    let mut method = build(&cfg, dhw(cfg.task.crop), device, false);
    let bytes = std::fs::read(&path).map_err(|e| BratsError::Checkpoint {
        path: path.clone(),
        problem: format!("cannot read it: {e}"),
    })?;
    method
        .load_model(&bytes)
        .map_err(|e| BratsError::Checkpoint {
            path: path.clone(),
            problem: format!("{e} (is it a BraTS model of this run's network?)"),
        })?;
    Ok((cfg, method))
}

/// Reads a run's `config.json`.
pub fn load_config(run: &Path) -> Result<BratsRunConfig> {
    let path = run.join("config.json");
    if !path.is_file() {
        return Err(BratsError::Config {
            path,
            problem: format!(
                "not found; is {} a BraTS training run folder?",
                run.display()
            ),
        });
    }
    BratsRunConfig::load(&path).map_err(|e| BratsError::Config {
        path,
        problem: e.to_string(),
    })
}

/// Generated-vs-real T1c bottleneck features on `probe` (all modalities encoded).
pub fn feature_gap(
    model: &MckdModel<BratsNet>,
    probe: &BratsBatch,
    iteration: usize,
) -> FeatureGap {
    let model = model.valid();
    let device = probe.images[0].device();
    let b = <BratsNet as mckd_core::Task>::batch_size(probe);
    let ones = Tensor::<2>::ones([b, 4], &device);
    let enc = model.encode_all(probe, &ones);
    let bottleneck = <BratsNet as mckd_core::Task>::bottleneck(&model.task);
    let f = Tensor::stack(enc.iter().map(|e| e.distilled(bottleneck)).collect(), 1); // [b, 4, F]
    let [b, n, nf] = f.dims();
    let real: Tensor<2> = f.clone().narrow(1, T1C, 1).reshape([b, nf]);
    let others: Vec<Tensor<3>> = (0..n)
        .filter(|&m| m != T1C)
        .map(|m| f.clone().narrow(1, m, 1))
        .collect();
    let generated: Tensor<2> = Tensor::cat(others, 1).mean_dim(1).reshape([b, nf]);
    let l1 = (generated.clone() - real.clone())
        .abs()
        .mean()
        .into_scalar::<f32>();
    let dot = (generated.clone() * real.clone()).sum_dim(1);
    let norms = (generated.powf_scalar(2.0).sum_dim(1) * real.powf_scalar(2.0).sum_dim(1))
        .sqrt()
        .clamp_min(1e-12);
    let cosine = (dot / norms).mean().into_scalar::<f32>();
    FeatureGap {
        iteration,
        l1,
        cosine,
    }
}

/// Probes the T1c feature gap every `interval` iterations and at the last one; appends each
/// probe to `feature_gap.jsonl` so that a resumed run keeps the earlier ones.
struct GapProbe<'a> {
    probe: &'a BratsBatch,
    interval: usize,
    total: usize,
    gaps: Vec<FeatureGap>,
    file: Option<std::path::PathBuf>,
}

impl Observer<BratsAnyMethod> for GapProbe<'_> {
    fn on_step(&mut self, row: &LogRow, method: &BratsAnyMethod) -> Control {
        let it = row.iteration;
        let Some(method) = method.as_mckd() else {
            return Control::Continue;
        };
        if self.interval > 0 && (it.is_multiple_of(self.interval) || it == self.total) {
            let g = feature_gap(method.model(), self.probe, it);
            if let Some(f) = &self.file {
                append_gap(f, &g);
            }
            self.gaps.push(g);
        }
        Control::Continue
    }
}

fn append_gap(file: &Path, g: &FeatureGap) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    {
        let _ = writeln!(f, "{}", serde_json::to_string(g).unwrap_or_default());
    }
}

fn read_gaps(file: &Path, up_to: usize) -> Vec<FeatureGap> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<FeatureGap>(l).ok())
        .filter(|g| g.iteration <= up_to)
        .collect()
}

/// Trains one method on the cases of `cfg.task.data` and writes the run folder (see the module
/// docs). With `resume`, continues from the folder's last checkpoint.
pub fn train_run(cfg: &BratsRunConfig, run: &RunDir, resume: bool) -> Result<Trained> {
    validate(cfg)?;
    let cases = discover_cases(&cfg.task.data)?;
    let ids: Vec<String> = cases.iter().map(|c| c.id.clone()).collect();
    let splits = resolve_splits(cfg, run, &ids)?;
    let conv = cfg.task.convention;
    let to_train = |v: Vec<LoadedCase>| -> Result<Vec<Arc<TrainCase>>> {
        v.into_iter()
            .map(|c| TrainCase::from_loaded(c, conv).map(Arc::new))
            .collect()
    };
    let train_cases = to_train(load_named(&cases, &splits.train, conv, "loading train")?)?;
    let meta_cases = to_train(load_named(
        &cases,
        &splits.meta_val,
        conv,
        "loading meta-val",
    )?)?;
    let crop = CropConfig {
        size: cfg.task.crop,
        foreground_prob: cfg.task.foreground_prob,
        flip_prob: cfg.task.flip_prob,
    };
    let n_train = train_cases.len();
    let train_src = CropSource::new(train_cases, crop.clone(), conv, n_train, cfg.seed)?
        .with_scale(cfg.task.scale);
    let meta_src = CropSource::new(
        meta_cases.clone(),
        crop.clone(),
        conv,
        meta_cases.len(),
        cfg.seed ^ 0x5eed_0001,
    )?
    .with_scale(cfg.task.scale);
    // Fixed probe crops for the feature-gap curve: tumour-centred, no flips.
    let probe_src = CropSource::new(
        meta_cases,
        CropConfig {
            size: cfg.task.crop,
            foreground_prob: 1.0,
            flip_prob: [0.0; 3],
        },
        conv,
        1,
        cfg.seed ^ 0x5eed_0002,
    )?;
    let plain = cfg
        .device
        .device()
        .map_err(|e| BratsError::Invalid(e.to_string()))?;
    let device = plain.clone().autodiff();
    let probe_idx: Vec<usize> =
        (0..cfg.loop_.batch_size.min(probe_src.cases().len()).max(1)).collect();
    let probe = probe_src.crops(&probe_idx, &plain);

    let started = std::time::Instant::now();
    let mut method = build_any(cfg, train_src.spatial(), &device);
    let total = total_iterations(&cfg.loop_, n_train);
    let gap_file = run.file("feature_gap.jsonl");
    let mut resume_from = None;
    let mut gaps = Vec::new();
    if resume && let Some(c) = load_checkpoint(run.path()).map_err(BratsError::Invalid)? {
        method
            .load_state(&c.method)
            .map_err(|e| BratsError::Checkpoint {
                path: run.file("checkpoint"),
                problem: e.to_string(),
            })?;
        gaps = read_gaps(&gap_file, c.state.iteration);
        resume_from = Some((c.state, c.log));
    }
    // The probe file holds exactly the probes up to where training (re)starts.
    let _ = std::fs::remove_file(&gap_file);
    if resume_from.is_none()
        && cfg.task.probe_interval > 0
        && let Some(m) = method.as_mckd()
    {
        gaps.push(feature_gap(m.model(), &probe, 0));
    }
    for g in &gaps {
        append_gap(&gap_file, g);
    }
    let bar = mckd_train::progress_bar(total as u64, &format!("train {}", method.name()));
    if let Some((st, _)) = &resume_from {
        bar.inc(st.iteration as u64);
    }
    // The processes before a resume count up to their last checkpoint.
    let earlier_wall = resume_from
        .as_ref()
        .map_or(0.0, |(st, _)| st.timing.wall_seconds);
    let mut guard = DivergenceGuard::new(&method);
    let mut progress = Progress::new(&bar, method.name().to_string());
    let mut signal = StopOnSignal::install();
    let mut probe_obs = GapProbe {
        probe: &probe,
        interval: cfg.task.probe_interval,
        total,
        gaps,
        file: Some(gap_file.clone()),
    };
    let mut sink = FolderCheckpoints::new(run.path());
    let trained = mckd_train::train::train(
        &mut method,
        &train_src,
        Some(&meta_src),
        LoopSetup {
            cfg: &cfg.loop_,
            schedule: &cfg.schedule,
            seed: cfg.seed ^ 0x5eed_0003,
            device: &device,
            observers: vec![&mut guard, &mut probe_obs, &mut progress, &mut signal],
            checkpoints: Some(&mut sink as &mut dyn CheckpointSink),
            resume: resume_from,
        },
    )?;
    bar.finish_and_clear();
    match &trained.ended {
        Ended::Finished => {}
        Ended::Stopped => {
            return Err(BratsError::Stopped(format!(
                "interrupted at iteration {}; a checkpoint was written: continue with --resume",
                trained.state.iteration
            )));
        }
        Ended::Failed(msg) => return Err(BratsError::Stopped(msg.clone())),
    }
    let gaps = probe_obs.gaps;
    let ckpt = run.file("model.bpk");
    let bytes = method.model_bytes().map_err(|e| BratsError::Checkpoint {
        path: ckpt.clone(),
        problem: format!("cannot serialise it: {e}"),
    })?;
    run.write("model.bpk", &bytes)?;
    let columns = LogColumns::of(&method, &cfg.loop_);
    run.write("train_log.csv", log_csv(&trained.log, &columns).as_bytes())?;
    let names = method.modalities().names().to_vec();
    let timing = trained.state.timing;
    run.write_json(
        "timing.json",
        &json!({
            "seconds_per_inner_step": timing.per_inner(trained.log.len()),
            "seconds_per_meta_step": json_f64(timing.per_meta()),
            "meta_steps": timing.meta_steps,
            "iterations": trained.log.len(),
            "wall_seconds": earlier_wall + started.elapsed().as_secs_f64(),
            "loop_seconds": timing.wall_seconds,
            "parameters": method.num_params(),
            "final_iwv": iwv_map(&names, &method.state_values()),
        }),
    )?;
    write_plots(
        run,
        &PlotData {
            log: Some((&trained.log, &columns)),
            feature_gap: Some(&gaps),
            slice: None,
        },
    )?;
    Ok(Trained {
        method,
        log: trained.log,
        feature_gap: gaps,
        timing,
    })
}
