//! The synthetic demo: three modalities (`strong`, `medium`, `weak`) that carry the label
//! with decreasing reliability, MCKD vs the α = 0 Baseline, evaluated on every subset.
//!
//! Data: the modalities are noisy views of one latent cause. A sample has a latent
//! `z ~ N(0, I_k)`; its class is `argmax_c (P z)_c` for a fixed random `P ∈ R^{classes×k}`; modality
//! `m` observes `x_m = A_m z + σ_m · ε` with a fixed random `A_m ∈ R^{d×k}` and `ε ~ N(0, I_d)`,
//! the noise `σ` growing from `strong` to `weak`. Everything is drawn from one seed.

use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use mckd_core::fusion::zero_missing;
use mckd_core::{Encoded, Mckd, MckdConfig, MckdModel, Method, ModalitySet, SubsetSampling, Task};
use mckd_train::eval::{Labelled, accuracy_all_subsets, cross_entropy};
use mckd_train::train::{
    Budget, LogColumns, LogRow, LoopConfig, LoopSetup, LrSchedule, MaskGranularity, MetaSchedule,
    Sampling, Source, train,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr_free::normal;
use serde::{Deserialize, Serialize};

/// The demo's data and model settings.
#[derive(Config, Debug)]
pub struct DemoConfig {
    /// Number of classes.
    #[config(default = 10)]
    pub classes: usize,
    /// Input dimension of every modality.
    #[config(default = 16)]
    pub dim: usize,
    /// Dimension of the shared latent.
    #[config(default = 8)]
    pub latent: usize,
    /// Noise σ of `strong`, `medium`, `weak`.
    #[config(default = "[0.1, 0.7, 1.5]")]
    pub noise: [f32; 3],
    /// Training samples (inner steps).
    #[config(default = 600)]
    pub train: usize,
    /// Meta-validation samples (meta steps only).
    #[config(default = 300)]
    pub meta: usize,
    /// Test samples.
    #[config(default = 3000)]
    pub test: usize,
    /// Hidden width of encoders and head.
    #[config(default = 64)]
    pub hidden: usize,
    /// Feature width of each encoder.
    #[config(default = 32)]
    pub features: usize,
    /// Training epochs.
    #[config(default = 60)]
    pub epochs: usize,
    /// Batch size.
    #[config(default = 64)]
    pub batch_size: usize,
    /// Adam learning rate of the task network.
    #[config(default = 1e-3)]
    pub lr: f64,
    /// Method settings (α, distance, normalisation, ...). The Baseline trains the same network
    /// with α = 0 and no meta step.
    pub method: MckdConfig,
    /// A meta step every this many iterations (MCKD).
    #[config(default = 5)]
    pub meta_interval: usize,
    /// Seed of data, initialisation and sampling.
    #[config(default = 0)]
    pub seed: u64,
}

impl DemoConfig {
    /// The default demo (under 3 minutes on 2 cores).
    pub fn standard() -> Self {
        Self::new(MckdConfig::default())
    }

    /// `--quick`: fewer epochs and test samples (a few seconds).
    pub fn quick() -> Self {
        Self::standard().with_test(2000).with_epochs(30)
    }
}

/// Modality names of the demo.
pub const MODALITIES: [&str; 3] = ["strong", "medium", "weak"];

/// Features of one split: `x[m]` is `[len × dim]` row-major.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoSplit {
    /// Per-modality inputs.
    pub x: Vec<Vec<f32>>,
    /// Labels.
    pub y: Vec<i64>,
    /// Input dimension.
    pub dim: usize,
    #[serde(skip)]
    all: Vec<bool>,
}

/// Train, meta-validation and test splits drawn from one seed.
pub struct DemoData {
    /// Inner-step data.
    pub train: DemoSplit,
    /// Meta-step data (disjoint from train).
    pub meta: DemoSplit,
    /// Test data.
    pub test: DemoSplit,
}

/// Standard normal samples without an extra crate (Box–Muller).
mod rand_distr_free {
    use rand::Rng;
    /// One N(0, 1) sample.
    pub fn normal<R: Rng>(rng: &mut R) -> f32 {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

impl DemoData {
    /// Draws the three splits.
    pub fn generate(cfg: &DemoConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let (k, d) = (cfg.latent, cfg.dim);
        let gaussian = |len: usize, rng: &mut ChaCha8Rng| -> Vec<f32> {
            (0..len).map(|_| normal(rng)).collect()
        };
        let classifier = gaussian(cfg.classes * k, &mut rng);
        let views: Vec<Vec<f32>> = (0..3).map(|_| gaussian(d * k, &mut rng)).collect();
        let scale = 1.0 / (k as f32).sqrt();
        let mut split = |len: usize| {
            let mut y = Vec::with_capacity(len);
            let mut x: Vec<Vec<f32>> = (0..3).map(|_| Vec::with_capacity(len * d)).collect();
            for _ in 0..len {
                let z = gaussian(k, &mut rng);
                let score =
                    |c: usize| -> f32 { (0..k).map(|j| classifier[c * k + j] * z[j]).sum() };
                let label = (0..cfg.classes)
                    .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                    .unwrap_or(0);
                y.push(label as i64);
                for (m, xm) in x.iter_mut().enumerate() {
                    for r in 0..d {
                        let clean: f32 = (0..k).map(|j| views[m][r * k + j] * z[j]).sum::<f32>();
                        xm.push(clean * scale + cfg.noise[m] * normal(&mut rng));
                    }
                }
            }
            DemoSplit {
                x,
                y,
                dim: d,
                all: vec![true; 3],
            }
        };
        let train = split(cfg.train);
        let meta = split(cfg.meta);
        let test = split(cfg.test);
        Self { train, meta, test }
    }
}

/// A batch: per-modality inputs `[batch, dim]` and labels `[batch]`.
pub struct DemoBatch {
    inputs: Vec<Tensor<2>>,
    labels: Tensor<1, Int>,
}

impl Source for DemoSplit {
    type Batch = DemoBatch;
    fn len(&self) -> usize {
        self.y.len()
    }
    fn available(&self, _i: usize) -> &[bool] {
        &self.all
    }
    fn batch(&self, idx: &[usize], device: &Device) -> DemoBatch {
        let d = self.dim;
        let inputs = self
            .x
            .iter()
            .map(|x| {
                let v: Vec<f32> = idx
                    .iter()
                    .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                    .collect();
                Tensor::from_data(TensorData::new(v, [idx.len(), d]), device)
            })
            .collect();
        let y: Vec<i64> = idx.iter().map(|&i| self.y[i]).collect();
        DemoBatch {
            inputs,
            labels: Tensor::from_data(TensorData::new(y, [idx.len()]), device),
        }
    }
}

/// A two-layer MLP encoder.
#[derive(Module, Debug)]
pub struct Mlp {
    l1: Linear,
    l2: Linear,
}

impl Mlp {
    /// # Shapes
    /// `[batch, in]` → `[batch, out]`
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.l2.forward(relu(self.l1.forward(x)))
    }
}

/// The demo network: one MLP encoder per modality and an MLP head over the fused features.
#[derive(Module, Debug)]
pub struct DemoNet {
    encoders: Vec<Mlp>,
    head1: Linear,
    head2: Linear,
    dropout: Dropout,
    #[module(skip)]
    modalities: ModalitySet,
}

impl DemoNet {
    /// A network for `cfg` on `device` (weights from burn's seeded initialisers).
    pub fn new(cfg: &DemoConfig, device: &Device) -> Self {
        let n = MODALITIES.len();
        Self {
            encoders: (0..n)
                .map(|_| Mlp {
                    l1: LinearConfig::new(cfg.dim, cfg.hidden).init(device),
                    l2: LinearConfig::new(cfg.hidden, cfg.features).init(device),
                })
                .collect(),
            head1: LinearConfig::new(n * cfg.features, cfg.hidden).init(device),
            head2: LinearConfig::new(cfg.hidden, cfg.classes).init(device),
            dropout: DropoutConfig::new(0.2).init(),
            modalities: ModalitySet::new(MODALITIES),
        }
    }
}

impl Task for DemoNet {
    type Batch = DemoBatch;
    type Output = Tensor<2>;

    fn modalities(&self) -> &ModalitySet {
        &self.modalities
    }

    fn encode(&self, batch: &DemoBatch, modality: usize, present: Tensor<1>) -> Encoded {
        let x = zero_missing(batch.inputs[modality].clone(), present);
        vec![self.encoders[modality].forward(x)].into()
    }

    fn bottleneck(&self) -> usize {
        0
    }

    fn decode(&self, fused: Vec<Tensor<2>>) -> Tensor<2> {
        let h = self
            .dropout
            .forward(relu(self.head1.forward(fused[0].clone())));
        self.head2.forward(h)
    }

    fn loss(&self, logits: Tensor<2>, batch: &DemoBatch) -> Tensor<1> {
        cross_entropy(logits, batch.labels.clone())
    }

    fn batch_size(batch: &DemoBatch) -> usize {
        batch.labels.dims()[0]
    }
}

impl Labelled for DemoBatch {
    fn labels(&self) -> Tensor<1, Int> {
        self.labels.clone()
    }
}

/// The outcome of training one method.
pub struct MethodResult {
    /// Accuracy per subset, in `all_subsets` order.
    pub accuracy: Vec<(Vec<bool>, f64)>,
    /// Final normalised IWV.
    pub iwv: Vec<f32>,
    /// Per-iteration log.
    pub log: Vec<LogRow>,
    /// Its columns.
    pub columns: LogColumns,
}

/// The two methods of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoMethod {
    /// MCKD with the config's α and meta steps.
    Mckd,
    /// The same network with α = 0 and no meta step.
    Baseline,
}

/// The loop settings of the demo.
pub fn loop_config(cfg: &DemoConfig) -> LoopConfig {
    LoopConfig {
        budget: Budget::Epochs(cfg.epochs),
        batch_size: cfg.batch_size,
        sampling: Sampling::EpochShuffle { drop_last: false },
        subsets: SubsetSampling::Reference,
        granularity: MaskGranularity::Sample,
        full_fraction: 0.0,
        meta: MetaSchedule {
            interval: cfg.meta_interval,
            interval_stage2: cfg.meta_interval,
            steps: 1,
            batch: 0,
        },
        checkpoint_every: 0,
    }
}

/// Trains one method and evaluates it on every subset.
pub fn run_method(
    cfg: &DemoConfig,
    data: &DemoData,
    which: DemoMethod,
    device: &Device,
    progress: &indicatif::ProgressBar,
) -> MethodResult {
    // burn's Dropout draws from the device's process-wide generator.
    let _guard = mckd_train::rng_guard();
    let ad = device.clone().autodiff();
    ad.seed(cfg.seed);
    let net = DemoNet::new(cfg, &ad);
    let model = MckdModel::new(net, cfg.method.normalisation, cfg.seed, &ad);
    let optim = mckd_kernels::FusedAdamConfig::new(1e-8, Some(1e-4)).init();
    let mut method = match which {
        DemoMethod::Mckd => Mckd::new(model, cfg.method.clone(), optim),
        DemoMethod::Baseline => Mckd::baseline(model, cfg.method.clone(), optim),
    };
    let loop_cfg = loop_config(cfg);
    let mut bar = mckd_train::observe::Progress::new(progress, method.name().to_string());
    let trained = train(
        &mut method,
        &data.train,
        Some(&data.meta),
        LoopSetup {
            cfg: &loop_cfg,
            schedule: &LrSchedule::Constant { lr: cfg.lr },
            seed: cfg.seed,
            device: &ad,
            observers: vec![&mut bar],
            checkpoints: None,
            resume: None,
        },
    )
    .expect("the demo's loop settings are valid");
    let accuracy = accuracy_all_subsets(&method, &data.test, 512, device);
    MethodResult {
        accuracy,
        iwv: method.state_values(),
        columns: LogColumns::of(&method, &loop_cfg),
        log: trained.log,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo_report::mean_without_strong;

    #[test]
    fn data_is_seeded_and_modalities_are_ordered_by_noise() {
        let cfg = DemoConfig::standard()
            .with_train(50)
            .with_meta(10)
            .with_test(10);
        let a = DemoData::generate(&cfg);
        let b = DemoData::generate(&cfg);
        assert_eq!(a.train.x, b.train.x);
        assert_eq!(a.test.y, b.test.y);
        let c = DemoData::generate(&cfg.clone().with_seed(1));
        assert_ne!(a.train.x, c.train.x);
        assert_eq!(a.train.x[0].len(), 50 * cfg.dim);
        assert!(
            a.train
                .y
                .iter()
                .all(|&y| (0..cfg.classes as i64).contains(&y))
        );
    }

    /// The behaviour MCKD promises, on the demo's data (5 seeds, the standard settings):
    /// the meta-learned weight of `strong` ends the largest in every seed, and MCKD beats the
    /// α = 0 Baseline on average over the subsets that lack `strong` (same seeds, same data).
    #[test]
    fn iwv_finds_the_informative_modality_and_mckd_beats_baseline_without_it() {
        let device = Device::flex();
        let bar = indicatif::ProgressBar::hidden();
        let (mut gain, seeds) = (0.0, 5);
        for seed in 0..seeds {
            let cfg = DemoConfig::standard().with_seed(seed);
            let data = DemoData::generate(&cfg);
            let mckd = run_method(&cfg, &data, DemoMethod::Mckd, &device, &bar);
            let base = run_method(&cfg, &data, DemoMethod::Baseline, &device, &bar);
            let w = &mckd.iwv;
            assert!(w[0] > w[1] && w[0] > w[2], "seed {seed}: IWV {w:?}");
            // Strong alone is far better than chance (10 classes).
            assert!(
                mckd.accuracy[0].1 > 0.6,
                "seed {seed}: {:?}",
                mckd.accuracy[0]
            );
            gain += mean_without_strong(&mckd) - mean_without_strong(&base);
        }
        gain /= seeds as f64;
        assert!(gain > 0.002, "mean gain without strong {gain}");
    }

    #[test]
    fn same_seed_same_numbers() {
        let device = Device::flex();
        let bar = indicatif::ProgressBar::hidden();
        let cfg = DemoConfig::quick().with_epochs(3).with_test(300);
        let data = DemoData::generate(&cfg);
        let a = run_method(&cfg, &data, DemoMethod::Mckd, &device, &bar);
        let b = run_method(&cfg, &data, DemoMethod::Mckd, &device, &bar);
        assert_eq!(a.accuracy, b.accuracy);
        assert_eq!(a.iwv, b.iwv);
        assert_eq!(a.log, b.log);
    }
}
