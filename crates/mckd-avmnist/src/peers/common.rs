//! Pieces the peer methods share: presence flags, features that never read a missing
//! modality, the mean-imputed (Baseline) forward, row selection, gradient arithmetic, seeded
//! sampling, the pretraining stages, and records as bytes.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer, OptimizerRecord};
use burn::prelude::*;
use burn::store::ModuleRecord;
use mckd_core::StateError;
use mckd_core::fusion::{fuse, impute};
use mckd_kernels::select_rows;
use mckd_train::config::OptimizerConfig;
use mckd_train::eval::cross_entropy;
use mckd_train::train::{Source, iterations_per_epoch};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::PeerData;
use super::backbone::Backbone;
use crate::data::AvSource;
use crate::model::{AvBatch, AvmnistNet, ConvEncoder, MODALITY_NAMES};

/// Per modality, which rows of a `[batch, 2]` presence mask have it.
///
/// # Shapes
/// - `mask`: `[batch, 2]`, 1 = present
pub fn presence(mask: &Tensor<2>) -> [Vec<bool>; 2] {
    let [b, n] = mask.dims();
    assert_eq!(n, 2, "an AV-MNIST mask has two columns");
    let v: Vec<f32> = mask.to_data().iter::<f32>().collect();
    [
        (0..b).map(|i| v[i * 2] != 0.0).collect(),
        (0..b).map(|i| v[i * 2 + 1] != 0.0).collect(),
    ]
}

/// The rows whose flag equals `want`.
pub fn rows_where(flags: &[bool], want: bool) -> Vec<usize> {
    (0..flags.len()).filter(|&i| flags[i] == want).collect()
}

/// A modality's features: the deterministic encoder output and the same after the encoder's
/// dropout (identical in inference). Rows of absent samples are zero in both.
#[derive(Debug, Clone)]
pub struct Feature {
    /// Before dropout, `[batch, features]`.
    pub det: Tensor<2>,
    /// After dropout, `[batch, features]`.
    pub dropped: Tensor<2>,
}

/// Encodes the present rows of `x` with `enc` (batch norm over them alone) and leaves the
/// others zero; the absent rows of `x` are never read.
///
/// # Shapes
/// - `x`: `[batch, 1, H, W]`; `present`: `batch` flags; output features `[batch, features]`
pub fn encode(enc: &ConvEncoder, x: &Tensor<4>, present: &[bool]) -> Feature {
    let det = encode_det(enc, x, present);
    let dropped = enc.apply_dropout(det.clone());
    Feature { det, dropped }
}

/// [`encode`] without the dropout: the deterministic features alone (no random draw).
///
/// # Shapes
/// - `x`: `[batch, 1, H, W]`; `present`: `batch` flags; output `[batch, features]`
pub fn encode_det(enc: &ConvEncoder, x: &Tensor<4>, present: &[bool]) -> Tensor<2> {
    let b = present.len();
    enc.features_of_present(x.clone(), present)
        .unwrap_or_else(|| Tensor::zeros([b, enc.feature_width()], &x.device()))
}

/// The input of modality `m` in a batch.
pub fn input(batch: &AvBatch, m: usize) -> &Tensor<4> {
    if m == crate::model::IMAGE {
        &batch.image
    } else {
        &batch.audio
    }
}

/// Column `m` of a `[batch, 2]` mask, `[batch, 1]`.
pub fn column(mask: &Tensor<2>, m: usize) -> Tensor<2> {
    mask.clone().narrow(1, m, 1)
}

/// Binary cross-entropy of logits against an all-`target` label, mean over elements
/// (`softplus(−x)` for 1, `softplus(x)` for 0: stable for any logit).
///
/// # Shapes
/// - `logits`: `[batch, k]`; output `[1]`
pub fn bce_logits(logits: Tensor<2>, target: bool) -> Tensor<1> {
    let x = if target { logits.neg() } else { logits };
    burn::tensor::activation::softplus(x, 1.0).mean()
}

/// Settings of the stages a peer runs before the shared loop, from the run's config.
#[derive(Debug, Clone)]
pub struct PreSetup {
    /// The task optimiser (fresh per stage).
    pub optimizer: OptimizerConfig,
    /// Learning rate of the stages (the schedule's initial rate, constant).
    pub lr: f64,
    /// Seed of the stages' shuffles and draws.
    pub seed: u64,
    /// Device of the batches (autodiff).
    pub device: Device,
}

/// The Baseline's forward (the MCKD network without IWV): each present modality encoded, a
/// missing one's feature imputed by the mean of the present ones (Eq. 2), concatenated, the
/// head. Never reads a missing modality.
///
/// # Shapes
/// - `mask`: `[batch, 2]`; output `[batch, 10]` logits
pub fn baseline_logits(net: &AvmnistNet, batch: &AvBatch, mask: &Tensor<2>) -> Tensor<2> {
    baseline_forward(net, batch, mask).0
}

/// [`baseline_logits`] with the features it was computed from.
///
/// # Shapes
/// - `mask`: `[batch, 2]`; logits `[batch, 10]`
pub fn baseline_forward(
    net: &AvmnistNet,
    batch: &AvBatch,
    mask: &Tensor<2>,
) -> (Tensor<2>, [Feature; 2]) {
    let p = presence(mask);
    let f = [0, 1].map(|m| Backbone::features(net, batch, m, &p[m]));
    let dropped = f.iter().map(|x| x.dropped.clone()).collect();
    let logits = net.head(fuse(impute(Tensor::stack(dropped, 1), mask.clone())));
    (logits, f)
}

/// Rows of `f` (the present samples, in order) spread back into a `[present.len(), F]`
/// tensor with zero rows for the absent samples.
pub fn scatter(f: Tensor<2>, present: &[bool]) -> Tensor<2> {
    let [k, width] = f.dims();
    let zero = Tensor::zeros([1, width], &f.device());
    let mut next = 0;
    let index: Vec<usize> = present
        .iter()
        .map(|&p| {
            if p {
                next += 1;
                next - 1
            } else {
                k
            }
        })
        .collect();
    select_rows(Tensor::cat(vec![f, zero], 0), &index)
}

/// The samples `rows` of a batch (in that order).
pub fn sub_batch(batch: &AvBatch, rows: &[usize]) -> AvBatch {
    let device = batch.labels.device();
    let idx = Tensor::<1, Int>::from_data(
        TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]),
        &device,
    );
    AvBatch {
        image: select_rows(batch.image.clone(), rows),
        audio: select_rows(batch.audio.clone(), rows),
        labels: batch.labels.clone().select(0, idx),
    }
}

/// The batch on the plain (non-autodiff) device.
pub fn plain_batch(batch: &AvBatch) -> AvBatch {
    AvBatch {
        image: batch.image.clone().inner(),
        audio: batch.audio.clone().inner(),
        labels: batch.labels.clone().inner(),
    }
}

/// Logits of a batch whose rows may have different presence patterns: the rows of each
/// pattern (`[image, audio]`) are predicted together by `f`, then put back in batch order.
///
/// # Shapes
/// - `mask`: `[batch, 2]`; output `[batch, classes]`
pub fn by_pattern(
    batch: &AvBatch,
    mask: &Tensor<2>,
    f: &dyn Fn(&AvBatch, [bool; 2]) -> Tensor<2>,
) -> Tensor<2> {
    let p = presence(mask);
    let b = p[0].len();
    let mut parts = Vec::new();
    let mut position = vec![0usize; b];
    let mut next = 0;
    for pattern in [[true, true], [true, false], [false, true]] {
        let rows: Vec<usize> = (0..b).filter(|&i| [p[0][i], p[1][i]] == pattern).collect();
        if rows.is_empty() {
            continue;
        }
        if rows.len() == b {
            return f(batch, pattern);
        }
        for &r in &rows {
            position[r] = next;
            next += 1;
        }
        parts.push(f(&sub_batch(batch, &rows), pattern));
    }
    assert_eq!(next, b, "every sample needs a present modality");
    select_rows(Tensor::cat(parts, 0), &position)
}

/// Mean squared error over all elements.
///
/// # Shapes
/// - `a`, `b`: same shape; output `[1]`
pub fn mse(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    (a - b).square().mean()
}

/// Mean absolute error over all elements.
///
/// # Shapes
/// - `a`, `b`: same shape; output `[1]`
pub fn l1(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    (a - b).abs().mean()
}

/// `n` standard normal samples (Box–Muller) from `rng`.
pub fn normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // u1 in (0, 1]: ln(u1) stays finite.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// A `[rows, cols]` tensor of standard normal samples from `rng`.
pub fn normal_tensor(rng: &mut ChaCha8Rng, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(normal(rng, rows * cols), [rows, cols]),
        device,
    )
}

/// The gradients of `a` and `b` summed per parameter of `module` (a parameter in one of
/// them only keeps its gradient).
pub fn add_grads<M: Module>(
    module: &M,
    mut a: GradientsParams,
    mut b: GradientsParams,
) -> GradientsParams {
    struct Sum<'a> {
        a: &'a mut GradientsParams,
        b: &'a mut GradientsParams,
        out: GradientsParams,
    }
    impl ModuleVisitor for Sum<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let id = param.id;
            let g = match (self.a.remove::<D>(id), self.b.remove::<D>(id)) {
                (Some(x), Some(y)) => Some(x + y),
                (x, y) => x.or(y),
            };
            if let Some(g) = g {
                self.out.register(id, g);
            }
        }
    }
    let mut sum = Sum {
        a: &mut a,
        b: &mut b,
        out: GradientsParams::new(),
    };
    module.visit(&mut sum);
    sum.out
}

/// A copy of the gradients of `module`'s parameters in `g`.
pub fn copy_grads<M: Module>(module: &M, g: &GradientsParams) -> GradientsParams {
    struct Copy<'a> {
        g: &'a GradientsParams,
        out: GradientsParams,
    }
    impl ModuleVisitor for Copy<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(t) = self.g.get::<D>(param.id) {
                self.out.register(param.id, t);
            }
        }
    }
    let mut c = Copy {
        g,
        out: GradientsParams::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Epoch-shuffled batches over `n` items from a seeded generator (a peer's own draws of
/// paired samples); each batch is the next chunk of the order, reshuffled when too few are
/// left.
#[derive(Debug, Clone)]
pub struct Sampler {
    n: usize,
    order: Vec<usize>,
    pos: usize,
    rng: ChaCha8Rng,
}

/// A [`Sampler`]'s state, for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerState {
    order: Vec<usize>,
    pos: usize,
    rng: Vec<u8>,
}

impl Sampler {
    /// A sampler over `n` items.
    pub fn new(n: usize, seed: u64) -> Self {
        Self {
            n,
            order: (0..n).collect(),
            pos: n,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The next `min(size, n)` items.
    pub fn next_batch(&mut self, size: usize) -> Vec<usize> {
        let size = size.min(self.n);
        if self.pos + size > self.order.len() {
            self.order.shuffle(&mut self.rng);
            self.pos = 0;
        }
        let idx = self.order[self.pos..self.pos + size].to_vec();
        self.pos += size;
        idx
    }

    /// The state.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            order: self.order.clone(),
            pos: self.pos,
            rng: mckd_core::rng::rng_state(&self.rng).to_vec(),
        }
    }

    /// Restores a state; `None` when it does not fit this sampler.
    pub fn restore(&mut self, s: &SamplerState) -> Option<()> {
        if s.order.len() != self.n || s.pos > self.n {
            return None;
        }
        self.rng = mckd_core::rng::rng_from_state(&s.rng)?;
        self.order = s.order.clone();
        self.pos = s.pos;
        Some(())
    }
}

/// One line of a pretraining log: a stage's mean loss over one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreRow {
    /// Stage name (`unimodal_image`, `paired`, `translator`, ...).
    pub stage: String,
    /// Epoch (or block of iterations) within the stage, 0-based.
    pub epoch: usize,
    /// Iterations of the stage so far.
    pub iterations: usize,
    /// Mean loss over the epoch.
    pub loss: f32,
}

/// `stage,epoch,iterations,loss` lines.
pub fn pre_log_csv(rows: &[PreRow]) -> String {
    let mut out = String::from("stage,epoch,iterations,loss\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{}\n",
            r.stage, r.epoch, r.iterations, r.loss
        ));
    }
    out
}

/// Iterations of `epochs` passes over `n` samples in batches of `batch_size` (a last batch of
/// one sample is dropped: batch norm cannot normalise it).
pub fn epoch_iterations(n: usize, batch_size: usize, epochs: usize) -> usize {
    if n == 0 || epochs == 0 {
        return 0;
    }
    let bs = batch_size.clamp(1, n);
    iterations_per_epoch(n, bs, n % bs == 1 && n > 1) * epochs
}

/// What a pretraining stage needs besides its model and data.
pub struct Fit<'a> {
    /// The stage's name in the log.
    pub stage: String,
    /// Passes over the source.
    pub epochs: usize,
    /// Samples per batch.
    pub batch_size: usize,
    /// Learning rate (constant).
    pub lr: f64,
    /// Shuffles.
    pub rng: &'a mut ChaCha8Rng,
    /// Device of the batches (autodiff).
    pub device: &'a Device,
    /// Called after every iteration.
    pub tick: &'a mut dyn FnMut(),
    /// Where the epoch means go.
    pub log: &'a mut Vec<PreRow>,
}

/// Trains `model` on `source` for `fit.epochs` shuffled passes with `optim`, minimising `loss`.
pub fn fit<M: Module>(
    mut model: M,
    optim: &mut ModuleOptimizer,
    source: &AvSource,
    fit: Fit<'_>,
    loss: &dyn Fn(&M, &AvBatch) -> Tensor<1>,
) -> M {
    let n = source.len();
    if n == 0 || fit.epochs == 0 {
        return model;
    }
    let bs = fit.batch_size.clamp(1, n);
    let mut done = 0;
    for epoch in 0..fit.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(fit.rng);
        let (mut sum, mut count) = (0.0f64, 0usize);
        for chunk in order.chunks(bs) {
            if chunk.len() == 1 && n > 1 {
                continue;
            }
            let batch = source.batch(chunk, fit.device);
            let l = loss(&model, &batch);
            sum += f64::from(mckd_core::scalar(&l));
            count += 1;
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optim.step(fit.lr, model, grads);
            done += 1;
            (fit.tick)();
        }
        fit.log.push(PreRow {
            stage: fit.stage.clone(),
            epoch,
            iterations: done,
            loss: (sum / count.max(1) as f64) as f32,
        });
    }
    model
}

/// The full-modal pretraining that SMIL, AutoEncoder, GAN and Full2miss start from (SMIL's
/// pipeline, PEERS.md §7.3 steps 1–3, on the row's training samples): the dominant modality
/// alone on every training sample, the scarce one alone on the paired samples, then both on
/// the paired samples. Each stage has its own fresh optimiser at a constant learning rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    /// Epochs of the dominant modality alone over every training sample (SMIL: 50).
    pub dominant_epochs: usize,
    /// Epochs of the scarce modality alone over the paired samples (SMIL: 35).
    pub scarce_epochs: usize,
    /// Epochs of both modalities over the paired samples (SMIL: 60).
    pub paired_epochs: usize,
    /// Samples per batch (SMIL: 64, 4 and 32).
    pub batch_size: usize,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            dominant_epochs: 10,
            scarce_epochs: 20,
            paired_epochs: 30,
            batch_size: 64,
        }
    }
}

impl PretrainConfig {
    /// Network iterations of the three stages on `data`.
    pub fn iterations(&self, data: &PeerData) -> usize {
        epoch_iterations(data.dominant.len(), self.batch_size, self.dominant_epochs)
            + epoch_iterations(data.paired.len(), self.batch_size, self.scarce_epochs)
            + epoch_iterations(data.paired.len(), self.batch_size, self.paired_epochs)
    }
}

/// Where a pretraining runs.
pub struct PretrainRun<'a> {
    /// The task optimiser (a fresh one per stage).
    pub optimizer: &'a OptimizerConfig,
    /// Learning rate (constant).
    pub lr: f64,
    /// Seed of the shuffles.
    pub seed: u64,
    /// Device of the batches (autodiff).
    pub device: &'a Device,
    /// Called after every iteration.
    pub tick: &'a mut dyn FnMut(),
    /// Where the epoch means go.
    pub log: &'a mut Vec<PreRow>,
}

/// Runs [`PretrainConfig`]'s stages on `net`.
pub fn pretrain<B: Backbone>(
    net: B,
    data: &PeerData,
    cfg: &PretrainConfig,
    run: PretrainRun<'_>,
) -> B {
    let PretrainRun {
        optimizer,
        lr,
        seed,
        device,
        tick,
        log,
    } = run;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (d, s) = (data.roles.dominant, data.roles.scarce);
    let mut keep = [false; 2];
    keep[s] = true;
    let all: Vec<usize> = (0..data.paired.len()).collect();
    let scarce_only = data.paired.subset(&all, keep);
    let stages: [(String, &AvSource, usize, Option<usize>); 3] = [
        (
            format!("unimodal_{}", MODALITY_NAMES[d]),
            &data.dominant,
            cfg.dominant_epochs,
            Some(d),
        ),
        (
            format!("unimodal_{}", MODALITY_NAMES[s]),
            &scarce_only,
            cfg.scarce_epochs,
            Some(s),
        ),
        ("paired".to_string(), &data.paired, cfg.paired_epochs, None),
    ];
    let mut net = net;
    for (stage, source, epochs, alone) in stages {
        let mut optim = optimizer.init();
        let loss = move |n: &B, b: &AvBatch| {
            let logits = match alone {
                Some(m) => n.unimodal_logits(b, m),
                None => n.fused_logits(b),
            };
            cross_entropy(logits, b.labels.clone())
        };
        net = fit(
            net,
            &mut optim,
            source,
            Fit {
                stage,
                epochs,
                batch_size: cfg.batch_size,
                lr,
                rng: &mut rng,
                device,
                tick: &mut *tick,
                log: &mut *log,
            },
            &loss,
        );
    }
    net
}

/// Deterministic features of modality `m` of every sample of `source` (inference mode), as a
/// `[samples, features]` tensor on the plain device.
pub fn all_features<B: Backbone>(
    net: &B,
    source: &AvSource,
    m: usize,
    device: &Device,
) -> Tensor<2> {
    let plain = device.clone().without_autodiff();
    let frozen = net.valid();
    let idx: Vec<usize> = (0..source.len()).collect();
    let parts: Vec<Tensor<2>> = idx
        .chunks(256)
        .map(|c| {
            let b = source.batch(c, &plain);
            frozen.features(&b, m, &vec![true; c.len()]).det
        })
        .collect();
    Tensor::cat(parts, 0)
}

/// A module's record as bytes (`name` is the state file it goes to).
///
/// The record is taken from the inference copy: burn keeps a batch norm's latest running
/// statistics per thread until they are synced, and `valid()` syncs them, while `into_record`
/// on the training module reads the value one update behind.
pub fn module_bytes<M: Module>(module: M, name: &str) -> Result<Vec<u8>, StateError> {
    module
        .valid()
        .into_record()
        .into_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| StateError::Save {
            name: name.into(),
            problem: format!("{e:?}"),
        })
}

/// `module` with the parameters of a record written by [`module_bytes`].
pub fn load_module<M: Module>(module: &M, bytes: &[u8], name: &str) -> Result<M, StateError> {
    let err = |e: burn::store::RecordError| StateError::Load {
        name: name.into(),
        problem: format!("{e:?}"),
    };
    let record = ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(err)?;
    module.clone().try_load_record(record).map_err(err)
}

/// An optimiser's state as bytes.
pub fn optim_bytes(optim: &ModuleOptimizer, name: &str) -> Result<Vec<u8>, StateError> {
    optim
        .into_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| StateError::Save {
            name: name.into(),
            problem: format!("{e:?}"),
        })
}

/// Restores an optimiser's state written by [`optim_bytes`].
pub fn load_optim(optim: &mut ModuleOptimizer, bytes: &[u8], name: &str) -> Result<(), StateError> {
    let record = OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| StateError::Load {
        name: name.into(),
        problem: format!("{e:?}"),
    })?;
    let placeholder = burn::optim::SgdConfig::new().init();
    *optim = std::mem::replace(optim, placeholder).load_record(record);
    Ok(())
}

/// A JSON state blob.
pub fn json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("a peer state serialises")
}

/// A JSON state blob read back.
pub fn from_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    name: &str,
) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Load {
        name: name.into(),
        problem: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AvmnistNetConfig;
    use mckd_core::{MckdModel, Normalisation, mask_tensor};

    fn random_batch(b: usize, seed: u64, device: &Device) -> AvBatch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut v =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        AvBatch {
            image: Tensor::from_data(TensorData::new(v(b * 784), [b, 1, 28, 28]), device),
            audio: Tensor::from_data(TensorData::new(v(b * 400), [b, 1, 20, 20]), device),
            labels: Tensor::from_data(
                TensorData::new((0..b as i64).map(|i| i % 10).collect(), [b]),
                device,
            ),
        }
    }

    /// The peers' Baseline forward is the MCKD network's forward (the core's imputation on the
    /// Task's encodings), in training (same dropout draws) and in inference.
    #[test]
    fn baseline_logits_equal_the_mckd_network_forward() {
        let device = Device::flex().autodiff();
        let batch = random_batch(6, 3, &device);
        let mask = mask_tensor(
            &[
                vec![true, true],
                vec![true, false],
                vec![true, false],
                vec![false, true],
                vec![true, true],
                vec![true, false],
            ],
            &device,
        );
        let a = AvmnistNetConfig::new().init_seeded(2, &device);
        // Both forwards draw the same dropout masks: the generator is rewound in between.
        let rng = a.dropout_rng().state();
        let ours = crate::tests_util::values(baseline_logits(&a, &batch, &mask));
        a.dropout_rng().restore(&rng).unwrap();
        let model = crate::model::init_seeded_with(2, &device, || {
            MckdModel::new(a.clone(), Normalisation::Softmax, 2, &device)
        });
        let core = crate::tests_util::values(
            model
                .forward(&batch, &mask, mckd_core::Levels::Bottleneck)
                .output,
        );
        crate::tests_util::assert_close(&ours, &core, 1e-5);
        let plain = Device::flex();
        let pb = plain_batch(&batch);
        let pm = mask.clone().inner();
        let ours = crate::tests_util::values(baseline_logits(&a.valid(), &pb, &pm));
        let core = crate::tests_util::values(
            model
                .valid()
                .forward(&pb, &pm, mckd_core::Levels::Bottleneck)
                .output,
        );
        crate::tests_util::assert_close(&ours, &core, 1e-5);
        let _ = plain;
    }

    #[test]
    fn by_pattern_puts_rows_back_in_order() {
        let device = Device::flex();
        let batch = random_batch(5, 1, &device);
        let mask = mask_tensor(
            &[
                vec![false, true],
                vec![true, true],
                vec![true, false],
                vec![true, true],
                vec![false, true],
            ],
            &device,
        );
        // Each pattern's "logit" is the label plus a pattern code, so the output shows where
        // every row went and which pattern predicted it.
        let out = by_pattern(&batch, &mask, &|b, p| {
            let code = match p {
                [true, true] => 100.0,
                [true, false] => 200.0,
                _ => 300.0,
            };
            b.labels.clone().float().reshape([b.labels.dims()[0], 1]) + code
        });
        assert_eq!(
            crate::tests_util::values(out),
            vec![300.0, 101.0, 202.0, 103.0, 304.0]
        );
    }

    #[test]
    fn gradient_sums_and_copies() {
        let device = Device::flex().autodiff();
        let lin = crate::model::init_seeded_with(1, &device, || {
            burn::nn::LinearConfig::new(2, 1).init(&device)
        });
        let x = Tensor::<2>::from_floats([[1.0, 2.0]], &device);
        let ga = GradientsParams::from_grads(lin.forward(x.clone()).sum().backward(), &lin);
        let gb = GradientsParams::from_grads((lin.forward(x.clone()) * 3.0).sum().backward(), &lin);
        let copy = copy_grads(&lin, &ga);
        let sum = add_grads(&lin, ga, gb);
        // d(w·x + b)/dw = x, db = 1; the second loss is three times the first.
        let w = crate::tests_util::values(sum.get::<2>(lin.weight.id).unwrap());
        assert_eq!(w, vec![4.0, 8.0]);
        let b = crate::tests_util::values(sum.get::<1>(lin.bias.as_ref().unwrap().id).unwrap());
        assert_eq!(b, vec![4.0]);
        let w = crate::tests_util::values(copy.get::<2>(lin.weight.id).unwrap());
        assert_eq!(w, vec![1.0, 2.0]);
    }

    #[test]
    fn normal_samples_have_unit_moments_and_sampler_cycles() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let v = normal(&mut rng, 20_001);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
        let mut s = Sampler::new(5, 1);
        let mut seen = [0; 5];
        for _ in 0..5 {
            for i in s.next_batch(2) {
                seen[i] += 1;
            }
        }
        // Chunks of 2 from shuffled orders of 5: 2 per order, 5 draws = 3 orders (2+2, 2+2, 2).
        assert_eq!(seen.iter().sum::<usize>(), 10);
        let state = s.state();
        let mut t = Sampler::new(5, 99);
        t.restore(&state).unwrap();
        for size in [3, 4, 2, 5, 1] {
            assert_eq!(s.next_batch(size), t.next_batch(size));
        }
        assert_eq!(s.next_batch(9).len(), 5, "a batch holds at most every item");
        assert!(t.restore(&Sampler::new(4, 1).state()).is_none());
    }

    #[test]
    fn epoch_iterations_drop_a_last_batch_of_one() {
        assert_eq!(epoch_iterations(900, 64, 2), 30);
        assert_eq!(epoch_iterations(65, 64, 1), 1);
        assert_eq!(epoch_iterations(60, 64, 3), 3);
        assert_eq!(epoch_iterations(0, 64, 3), 0);
    }
}
