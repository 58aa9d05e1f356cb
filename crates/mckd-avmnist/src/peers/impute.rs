//! The AutoEncoder and GAN baselines of paper Table 2 (PEERS.md §8.1–8.2). No code exists for
//! either; the papers cite them only (Baldi 2012 / Tran et al. 2017; Goodfellow 2014). **The
//! protocol is ours**:
//!
//! 1. the full-modal pretraining shared with SMIL and Full2miss ([`super::common::pretrain`]);
//! 2. a feature translator per direction, trained on the paired samples' features of the
//!    frozen pretrained encoders (inference mode, before dropout):
//!    * AutoEncoder: an MLP F → 64 → F (ReLU) fitted with MSE;
//!    * GAN: a conditional generator `G([f_present, z])`, `z ~ N(0, I₁₆)`, MLP (F+16) → 128 → F
//!      (ReLU), against a discriminator `D([f_present, f_missing])`, MLP 2F → 128 → 1
//!      (LeakyReLU 0.2); non-saturating BCE plus λ·L1(G, f) with λ = 10 (pix2pix-style);
//!      Adam 2e-4, β₁ = 0.5;
//! 3. the classifier (encoders and head) trained by the shared loop on every training sample,
//!    each sample with the modalities it has; a missing feature is the translator's output
//!    from the present one (frozen, detached: no gradient reaches the translator or, through
//!    it, the present encoder), through the missing modality's dropout. At test time the same,
//!    the GAN with `z = 0`.
//!
//! Both directions are trained, so every modality subset can be evaluated (the paper's rows
//! test only the dominant modality).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::leaky_relu;
use mckd_core::{Method, ModalitySet, StateError, StateFiles, Task};
use mckd_kernels::select_rows;
use mckd_train::eval::cross_entropy;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::common::{
    PreRow, PreSetup, PretrainConfig, PretrainRun, Sampler, all_features, bce_logits, column,
    encode_det, from_json, input, json_bytes, l1, load_module, load_optim, module_bytes, mse,
    normal_tensor, optim_bytes, pre_log_csv, presence, pretrain,
};
use super::{AvMethodRun, PeerData};
use crate::model::{AUDIO, AvBatch, AvmnistNet, IMAGE, init_seeded_with};

/// The AutoEncoder baseline's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoencoderConfig {
    /// The full-modal pretraining.
    pub pretrain: PretrainConfig,
    /// Hidden width of each translator.
    pub hidden: usize,
    /// Adam steps of the translators (on precomputed features).
    pub iterations: usize,
    /// Their learning rate.
    pub lr: f64,
    /// Pairs per step.
    pub batch_size: usize,
}

impl Default for AutoencoderConfig {
    fn default() -> Self {
        Self {
            pretrain: PretrainConfig::default(),
            hidden: 64,
            iterations: 1000,
            lr: 1e-3,
            batch_size: 64,
        }
    }
}

/// The GAN baseline's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GanConfig {
    /// The full-modal pretraining.
    pub pretrain: PretrainConfig,
    /// Width of the generator's noise `z`.
    pub noise: usize,
    /// Hidden width of generator and discriminator.
    pub hidden: usize,
    /// Adversarial iterations (one discriminator and one generator step each).
    pub iterations: usize,
    /// Adam learning rate of both.
    pub lr: f64,
    /// Adam β₁ of both.
    pub beta1: f64,
    /// Weight λ of the L1 term of the generator (0 = a plain GAN).
    pub l1_weight: f64,
    /// Pairs per step.
    pub batch_size: usize,
}

impl Default for GanConfig {
    fn default() -> Self {
        Self {
            pretrain: PretrainConfig::default(),
            noise: 16,
            hidden: 128,
            iterations: 2000,
            lr: 2e-4,
            beta1: 0.5,
            l1_weight: 10.0,
            batch_size: 64,
        }
    }
}

/// Which imputation baseline.
#[derive(Debug, Clone, PartialEq)]
pub enum ImputerKind {
    /// A feature autoencoder (regression MLP).
    Autoencoder(AutoencoderConfig),
    /// A conditional GAN.
    Gan(GanConfig),
}

impl ImputerKind {
    fn pretrain(&self) -> &PretrainConfig {
        match self {
            ImputerKind::Autoencoder(c) => &c.pretrain,
            ImputerKind::Gan(c) => &c.pretrain,
        }
    }

    /// Width of the generators' noise input (0 for the autoencoder).
    fn noise(&self) -> usize {
        match self {
            ImputerKind::Autoencoder(_) => 0,
            ImputerKind::Gan(c) => c.noise,
        }
    }
}

/// Two linear layers with a (leaky) ReLU between them.
#[derive(Module, Debug)]
pub struct Mlp {
    /// First layer.
    pub fc1: Linear,
    /// Second layer.
    pub fc2: Linear,
    /// Negative slope of the activation (0: ReLU).
    #[module(skip)]
    pub slope: f64,
}

impl Mlp {
    /// `input → hidden → output`.
    pub fn new(input: usize, hidden: usize, output: usize, slope: f64, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(input, hidden).init(device),
            fc2: LinearConfig::new(hidden, output).init(device),
            slope,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, input]`; output `[batch, output]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2
            .forward(leaky_relu(self.fc1.forward(x), self.slope))
    }
}

/// The network and one translator per target modality (`generators[m]`: the other modality's
/// features, and noise for the GAN, → modality `m`'s).
#[derive(Module, Debug)]
pub struct ImputerModel {
    /// Encoders and head.
    pub net: AvmnistNet,
    /// Translators, indexed by the modality they produce.
    pub generators: Vec<Mlp>,
}

impl ImputerModel {
    /// The logits with every missing feature imputed by its translator from the present one
    /// (detached); `noise` gives the GAN's `z` (`None`: zero).
    ///
    /// # Shapes
    /// - `mask`: `[batch, 2]`; output `[batch, 10]`
    pub fn forward(
        &self,
        batch: &AvBatch,
        mask: &Tensor<2>,
        noise_width: usize,
        noise: Option<&mut ChaCha8Rng>,
    ) -> Tensor<2> {
        let p = presence(mask);
        let b = p[IMAGE].len();
        let det = [IMAGE, AUDIO].map(|m| encode_det(self.net.encoder(m), input(batch, m), &p[m]));
        let device = batch.labels.device();
        let z = (noise_width > 0).then(|| match noise {
            Some(rng) => normal_tensor(rng, b, noise_width, &device),
            None => Tensor::zeros([b, noise_width], &device),
        });
        let cols: Vec<Tensor<2>> = [IMAGE, AUDIO]
            .map(|m| {
                let other = det[1 - m].clone();
                let x = match &z {
                    Some(z) => Tensor::cat(vec![other, z.clone()], 1),
                    None => other,
                };
                let imputed = self.generators[m].forward(x).detach();
                let present = column(mask, m);
                let col = det[m].clone() * present.clone() + imputed * (present.neg() + 1.0);
                self.net.encoder(m).apply_dropout(col)
            })
            .to_vec();
        self.net.head(Tensor::cat(cols, 1))
    }
}

/// The translators' regression loss: `Σ_m MSE(A_m(f_other), f_m)` over the batch.
///
/// # Shapes
/// - `features`: `[batch, F]` for image and audio; output `[1]`
pub fn autoencoder_loss(generators: &[Mlp], features: &[Tensor<2>; 2]) -> Tensor<1> {
    (0..2)
        .map(|m| {
            mse(
                generators[m].forward(features[1 - m].clone()),
                features[m].clone(),
            )
        })
        .reduce(|a, b| a + b)
        .expect("two modalities")
}

/// The discriminators' loss: `Σ_m BCE(D_m([f_o, f_m]), 1) + BCE(D_m([f_o, fake_m]), 0)`.
///
/// # Shapes
/// - `features`, `fakes`: `[batch, F]` per modality; output `[1]`
pub fn discriminator_loss(
    discriminators: &[Mlp],
    features: &[Tensor<2>; 2],
    fakes: &[Tensor<2>; 2],
) -> Tensor<1> {
    (0..2)
        .map(|m| {
            let o = features[1 - m].clone();
            let real = Tensor::cat(vec![o.clone(), features[m].clone()], 1);
            let fake = Tensor::cat(vec![o, fakes[m].clone()], 1);
            bce_logits(discriminators[m].forward(real), true)
                + bce_logits(discriminators[m].forward(fake), false)
        })
        .reduce(|a, b| a + b)
        .expect("two modalities")
}

/// The generators' loss: `Σ_m BCE(D_m([f_o, fake_m]), 1) + λ·L1(fake_m, f_m)` (non-saturating).
///
/// # Shapes
/// - `features`, `fakes`: `[batch, F]` per modality; output `[1]`
pub fn generator_loss(
    discriminators: &[Mlp],
    features: &[Tensor<2>; 2],
    fakes: &[Tensor<2>; 2],
    l1_weight: f64,
) -> Tensor<1> {
    (0..2)
        .map(|m| {
            let fake = Tensor::cat(vec![features[1 - m].clone(), fakes[m].clone()], 1);
            bce_logits(discriminators[m].forward(fake), true)
                + l1(fakes[m].clone(), features[m].clone()) * l1_weight
        })
        .reduce(|a, b| a + b)
        .expect("two modalities")
}

/// The AutoEncoder or GAN baseline as a [`Method`].
pub struct Imputer {
    kind: ImputerKind,
    model: Option<ImputerModel>,
    optim: ModuleOptimizer,
    data: PeerData,
    setup: PreSetup,
    prepared: bool,
    pre_log: Vec<PreRow>,
    noise_rng: ChaCha8Rng,
}

/// What a checkpoint keeps beside the records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImputerState {
    prepared: bool,
    pre_log: Vec<PreRow>,
    noise_rng: Vec<u8>,
}

const MODEL_FILE: &str = "model.bpk";
const OPTIM_FILE: &str = "optim.bpk";
const RNG_FILE: &str = "dropout_rng.bin";
const STATE_FILE: &str = "peer_state.json";

impl Imputer {
    /// The baseline `kind` on `net` (its translators drawn from `setup.seed`), trained on
    /// the row's `data` with the task optimiser `optim`.
    pub fn new(
        kind: ImputerKind,
        net: AvmnistNet,
        data: PeerData,
        setup: PreSetup,
        optim: ModuleOptimizer,
    ) -> Self {
        let f = net.feature_width();
        let noise = kind.noise();
        let hidden = match &kind {
            ImputerKind::Autoencoder(c) => c.hidden,
            ImputerKind::Gan(c) => c.hidden,
        };
        let model = init_seeded_with(setup.seed ^ 0x1A9E_0000_0000_0001, &setup.device, || {
            ImputerModel {
                generators: (0..2)
                    .map(|_| Mlp::new(f + noise, hidden, f, 0.0, &setup.device))
                    .collect(),
                net,
            }
        });
        let noise_rng = ChaCha8Rng::seed_from_u64(setup.seed ^ 0x2015_E000_0000_0001);
        Self {
            kind,
            model: Some(model),
            optim,
            data,
            setup,
            prepared: false,
            pre_log: Vec::new(),
            noise_rng,
        }
    }

    /// The model.
    pub fn model(&self) -> &ImputerModel {
        self.model.as_ref().expect("model present between steps")
    }

    /// Trains the translators on the paired features `feats` (plain device).
    fn train_translators(&mut self, generators: Vec<Mlp>, feats: [Tensor<2>; 2]) -> Vec<Mlp> {
        let device = self.setup.device.clone();
        let n = feats[0].dims()[0];
        let seed = self.setup.seed ^ 0x7A45_0000_0000_0001;
        let mut sampler = Sampler::new(n, seed);
        let batch = |idx: &[usize]| -> [Tensor<2>; 2] {
            [0, 1].map(|m| select_rows(feats[m].clone(), idx).autodiff())
        };
        let pre_log = &mut self.pre_log;
        let mut log = |stage: &str, it: usize, sum: &mut f64, count: &mut usize| {
            pre_log.push(PreRow {
                stage: stage.into(),
                epoch: it / 100,
                iterations: it + 1,
                loss: (*sum / (*count).max(1) as f64) as f32,
            });
            *sum = 0.0;
            *count = 0;
        };
        match &self.kind.clone() {
            ImputerKind::Autoencoder(c) => {
                let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
                let mut gens = generators;
                let (mut sum, mut count) = (0.0, 0);
                for it in 0..c.iterations {
                    let f = batch(&sampler.next_batch(c.batch_size));
                    let loss = autoencoder_loss(&gens, &f);
                    sum += f64::from(mckd_core::scalar(&loss));
                    count += 1;
                    let grads = GradientsParams::from_grads(loss.backward(), &gens);
                    gens = optim.step(c.lr, gens, grads);
                    if (it + 1) % 100 == 0 || it + 1 == c.iterations {
                        log("autoencoder_mse", it, &mut sum, &mut count);
                    }
                }
                gens
            }
            ImputerKind::Gan(c) => {
                let c = c.clone();
                let f = feats[0].dims()[1];
                let mut discs: Vec<Mlp> = init_seeded_with(seed, &device, || {
                    (0..2)
                        .map(|_| Mlp::new(2 * f, c.hidden, 1, 0.2, &device))
                        .collect::<Vec<_>>()
                });
                let adam = || {
                    AdamConfig::new()
                        .with_beta_1(c.beta1 as f32)
                        .with_epsilon(1e-8)
                        .init()
                };
                let (mut optim_g, mut optim_d) = (adam(), adam());
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 1);
                let mut gens = generators;
                let (mut sum_d, mut sum_g, mut count_d, mut count_g) = (0.0, 0.0, 0, 0);
                for it in 0..c.iterations {
                    let x = batch(&sampler.next_batch(c.batch_size));
                    let b = x[0].dims()[0];
                    let z = [0, 1].map(|_| normal_tensor(&mut rng, b, c.noise, &device));
                    let fake = |g: &[Mlp], detach: bool| -> [Tensor<2>; 2] {
                        [0, 1].map(|m| {
                            let y =
                                g[m].forward(Tensor::cat(vec![x[1 - m].clone(), z[m].clone()], 1));
                            if detach { y.detach() } else { y }
                        })
                    };
                    let ld = discriminator_loss(&discs, &x, &fake(&gens, true));
                    sum_d += f64::from(mckd_core::scalar(&ld));
                    count_d += 1;
                    let grads = GradientsParams::from_grads(ld.backward(), &discs);
                    discs = optim_d.step(c.lr, discs, grads);
                    let lg = generator_loss(&discs, &x, &fake(&gens, false), c.l1_weight);
                    sum_g += f64::from(mckd_core::scalar(&lg));
                    count_g += 1;
                    let mut grads = lg.backward();
                    let grads = GradientsParams::from_module(&mut grads, &gens);
                    gens = optim_g.step(c.lr, gens, grads);
                    if (it + 1) % 100 == 0 || it + 1 == c.iterations {
                        log("gan_discriminator", it, &mut sum_d, &mut count_d);
                        log("gan_generator", it, &mut sum_g, &mut count_g);
                    }
                }
                gens
            }
        }
    }
}

impl Method for Imputer {
    type Batch = AvBatch;
    type Output = Tensor<2>;

    fn name(&self) -> &str {
        match self.kind {
            ImputerKind::Autoencoder(_) => "autoencoder",
            ImputerKind::Gan(_) => "gan",
        }
    }

    fn modalities(&self) -> &ModalitySet {
        Task::modalities(&self.model().net)
    }

    fn term_names(&self) -> Vec<String> {
        vec!["task_loss".into()]
    }

    fn train_step(&mut self, batch: &AvBatch, mask: &Tensor<2>, lr: f64) -> Vec<f32> {
        let model = self.model.take().expect("model present between steps");
        let logits = model.forward(batch, mask, self.kind.noise(), Some(&mut self.noise_rng));
        let loss = cross_entropy(logits, batch.labels.clone());
        let value = mckd_core::scalar(&loss);
        let grads = GradientsParams::from_grads(loss.backward(), &model.net);
        let ImputerModel { net, generators } = model;
        let net = self.optim.step(lr, net, grads);
        self.model = Some(ImputerModel { net, generators });
        vec![value]
    }

    fn predict(&self, batch: &AvBatch, mask: &Tensor<2>) -> Tensor<2> {
        self.model()
            .valid()
            .forward(batch, mask, self.kind.noise(), None)
    }

    fn save_state(&self) -> Result<StateFiles, StateError> {
        let mut files = StateFiles::new();
        files.insert(MODEL_FILE.into(), self.model_bytes()?);
        files.insert(OPTIM_FILE.into(), optim_bytes(&self.optim, OPTIM_FILE)?);
        files.insert(RNG_FILE.into(), self.model().net.random_state());
        files.insert(
            STATE_FILE.into(),
            json_bytes(&ImputerState {
                prepared: self.prepared,
                pre_log: self.pre_log.clone(),
                noise_rng: mckd_core::rng::rng_state(&self.noise_rng).to_vec(),
            }),
        );
        Ok(files)
    }

    fn load_state(&mut self, files: &StateFiles) -> Result<(), StateError> {
        self.load_model(StateError::get(files, MODEL_FILE)?)?;
        load_optim(
            &mut self.optim,
            StateError::get(files, OPTIM_FILE)?,
            OPTIM_FILE,
        )?;
        self.model()
            .net
            .set_random_state(StateError::get(files, RNG_FILE)?)
            .map_err(|problem| StateError::Load {
                name: RNG_FILE.into(),
                problem,
            })?;
        let s: ImputerState = from_json(StateError::get(files, STATE_FILE)?, STATE_FILE)?;
        self.noise_rng =
            mckd_core::rng::rng_from_state(&s.noise_rng).ok_or_else(|| StateError::Load {
                name: STATE_FILE.into(),
                problem: "bad noise generator state".into(),
            })?;
        self.prepared = s.prepared;
        self.pre_log = s.pre_log;
        Ok(())
    }
}

impl AvMethodRun for Imputer {
    fn pre_iterations(&self) -> usize {
        self.kind.pretrain().iterations(&self.data)
    }

    fn prepare(&mut self, tick: &mut dyn FnMut()) {
        if self.prepared {
            return;
        }
        let ImputerModel { net, generators } =
            self.model.take().expect("model present between steps");
        let net = pretrain(
            net,
            &self.data,
            &self.kind.pretrain().clone(),
            PretrainRun {
                optimizer: &self.setup.optimizer,
                lr: self.setup.lr,
                seed: self.setup.seed,
                device: &self.setup.device,
                tick,
                log: &mut self.pre_log,
            },
        );
        let feats =
            [IMAGE, AUDIO].map(|m| all_features(&net, &self.data.paired, m, &self.setup.device));
        let generators = self.train_translators(generators, feats);
        self.model = Some(ImputerModel { net, generators });
        self.prepared = true;
    }

    fn pre_log(&self) -> Option<String> {
        Some(pre_log_csv(&self.pre_log))
    }

    fn model_bytes(&self) -> Result<Vec<u8>, StateError> {
        module_bytes(self.model().clone(), MODEL_FILE)
    }

    fn load_model(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let m = load_module(self.model(), bytes, MODEL_FILE)?;
        self.model = Some(m);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AvmnistNetConfig;
    use crate::peers::test_support::{
        poisoned_matches, resume_is_exact, setup, short_pretrain, synthetic_row, tiny_batch,
    };
    use crate::tests_util::{assert_close, values};
    use burn::module::Param;
    use mckd_core::mask_tensor;

    fn t2(v: &[f32], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [rows, cols]), device)
    }

    /// An MLP with the given weights (`[w1, b1, w2, b2]`, row-major `[in, out]`).
    fn mlp(p: [&[f32]; 4], dims: [usize; 3], slope: f64, device: &Device) -> Mlp {
        let mut m = init_seeded_with(1, device, || {
            Mlp::new(dims[0], dims[1], dims[2], slope, device)
        });
        m.fc1.weight = Param::from_tensor(t2(p[0], dims[0], dims[1], device));
        m.fc1.bias = Some(Param::from_tensor(
            t2(p[1], 1, dims[1], device).reshape([dims[1]]),
        ));
        m.fc2.weight = Param::from_tensor(t2(p[2], dims[1], dims[2], device));
        m.fc2.bias = Some(Param::from_tensor(
            t2(p[3], 1, dims[2], device).reshape([dims[2]]),
        ));
        m
    }

    fn features(device: &Device) -> [Tensor<2>; 2] {
        [
            t2(&[1.0, 2.0, 0.5, -1.0, 0.0, 0.3], 3, 2, device),
            t2(&[-1.0, 0.5, 2.0, 1.0, 0.2, -0.4], 3, 2, device),
        ]
    }

    fn discriminators(device: &Device) -> Vec<Mlp> {
        vec![
            mlp(
                [
                    &[0.3, -0.2, 0.1, 0.4, -0.5, 0.2, 0.6, 0.1],
                    &[0.05, -0.05],
                    &[0.8, -0.6],
                    &[0.1],
                ],
                [4, 2, 1],
                0.2,
                device,
            ),
            mlp(
                [
                    &[-0.2, 0.5, 0.4, -0.3, 0.1, 0.2, -0.3, 0.7],
                    &[0.0, 0.1],
                    &[-0.5, 0.9],
                    &[-0.2],
                ],
                [4, 2, 1],
                0.2,
                device,
            ),
        ]
    }

    /// The three losses on hand-written features and networks against numpy.
    #[test]
    fn losses_match_numpy() {
        // import numpy as np
        // relu = lambda x: np.maximum(x, 0); leaky = lambda x: np.where(x > 0, x, 0.2 * x)
        // sp = lambda x: np.log1p(np.exp(x))
        // def mlp(x, W1, b1, W2, b2, act): return act(x @ W1 + b1) @ W2 + b2
        // fi = np.array([[1, 2], [0.5, -1], [0, 0.3]]); fa = np.array([[-1, 0.5], [2, 1], [0.2, -0.4]])
        // g0 = ([[0.5, -0.3], [0.2, 0.8]], [0.1, -0.1], [[1.0, 0.5], [-0.5, 0.25]], [0.0, 0.2])
        // g1 = ([[-0.4, 0.6], [0.3, 0.1]], [0.0, 0.05], [[0.7, -0.2], [0.1, 0.9]], [-0.1, 0.0])
        // ae = ((mlp(fa, *g0, relu) - fi)**2).mean() + ((mlp(fi, *g1, relu) - fa)**2).mean()
        //   -> 2.497947
        // d0 = ([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2], [0.6, 0.1]], [0.05, -0.05], [[0.8], [-0.6]], [0.1])
        // d1 = ([[-0.2, 0.5], [0.4, -0.3], [0.1, 0.2], [-0.3, 0.7]], [0.0, 0.1], [[-0.5], [0.9]], [-0.2])
        // ki = np.array([[0.9, 1.5], [0.2, -0.5], [0.1, 0.1]]); ka = np.array([[-0.5, 0.4], [1.5, 0.5], [0.0, -0.2]])
        // for m in 0, 1: o = [fi, fa][1 - m]
        //   real = mlp(hstack([o, [fi, fa][m]]), *d[m], leaky); fake = mlp(hstack([o, [ki, ka][m]]), *d[m], leaky)
        //   disc += sp(-real).mean() + sp(fake).mean()
        //   gen += sp(-fake).mean() + 10 * np.abs([ki, ka][m] - [fi, fa][m]).mean()
        // disc -> 2.860269352603468, gen -> 7.455623972505469
        let device = Device::flex();
        let gens = vec![
            mlp(
                [
                    &[0.5, -0.3, 0.2, 0.8],
                    &[0.1, -0.1],
                    &[1.0, 0.5, -0.5, 0.25],
                    &[0.0, 0.2],
                ],
                [2, 2, 2],
                0.0,
                &device,
            ),
            mlp(
                [
                    &[-0.4, 0.6, 0.3, 0.1],
                    &[0.0, 0.05],
                    &[0.7, -0.2, 0.1, 0.9],
                    &[-0.1, 0.0],
                ],
                [2, 2, 2],
                0.0,
                &device,
            ),
        ];
        let f = features(&device);
        assert_close(&values(autoencoder_loss(&gens, &f)), &[2.497_947], 1e-5);
        let fakes = [
            t2(&[0.9, 1.5, 0.2, -0.5, 0.1, 0.1], 3, 2, &device),
            t2(&[-0.5, 0.4, 1.5, 0.5, 0.0, -0.2], 3, 2, &device),
        ];
        let discs = discriminators(&device);
        assert_close(
            &values(discriminator_loss(&discs, &f, &fakes)),
            &[2.860_269_4],
            1e-5,
        );
        assert_close(
            &values(generator_loss(&discs, &f, &fakes, 10.0)),
            &[7.455_624],
            1e-5,
        );
    }

    /// The generator loss (adversarial + L1) and the autoencoder loss differentiated through
    /// a tiny generator, against central differences.
    #[test]
    fn generator_and_translator_gradients_match_finite_differences() {
        let device = Device::flex().autodiff();
        let f = features(&device);
        let discs = discriminators(&device);
        let z = t2(&[0.3, -1.2, 0.7], 3, 1, &device);
        let w0: Vec<f32> = vec![0.2, -0.4, 0.1, 0.3, 0.5, -0.2];
        let rest = |w: &[f32]| {
            // Biases chosen so that no hidden pre-activation sits at a ReLU kink.
            let g = mlp(
                [w, &[0.03, 0.1], &[0.6, -0.3, 0.2, 0.4], &[0.05, 0.0]],
                [3, 2, 2],
                0.0,
                &device,
            );
            let ae = mlp(
                [&w[..4], &[0.03, 0.1], &[0.6, -0.3, 0.2, 0.4], &[0.05, 0.0]],
                [2, 2, 2],
                0.0,
                &device,
            );
            (g, ae)
        };
        let losses = |w: &[f32]| -> [Tensor<1>; 2] {
            let (g, ae) = rest(w);
            let fakes =
                [0, 1].map(|m| g.forward(Tensor::cat(vec![f[1 - m].clone(), z.clone()], 1)));
            [
                generator_loss(&discs, &f, &fakes, 10.0),
                autoencoder_loss(&[ae.clone(), ae], &f),
            ]
        };
        for term in 0..2 {
            let (g, ae) = rest(&w0);
            let loss = if term == 0 {
                let fakes =
                    [0, 1].map(|m| g.forward(Tensor::cat(vec![f[1 - m].clone(), z.clone()], 1)));
                generator_loss(&discs, &f, &fakes, 10.0)
            } else {
                autoencoder_loss(&[ae.clone(), ae.clone()], &f)
            };
            let grads = loss.backward();
            let layer = if term == 0 { &g.fc1 } else { &ae.fc1 };
            let grad = values(layer.weight.val().grad(&grads).unwrap());
            let n = if term == 0 { 6 } else { 4 };
            let h = 1e-3;
            for i in 0..n {
                let (mut up, mut down) = (w0.clone(), w0.clone());
                up[i] += h;
                down[i] -= h;
                let fd = (values(losses(&up)[term].clone())[0]
                    - values(losses(&down)[term].clone())[0])
                    / (2.0 * h);
                assert!(
                    (fd - grad[i]).abs() < 3e-3 * (1.0 + fd.abs()),
                    "term {term}, w{i}: autodiff {} vs fd {fd}",
                    grad[i]
                );
            }
        }
    }

    fn imputer(kind: ImputerKind, device: &Device) -> Imputer {
        let (_, data) = synthetic_row();
        Imputer::new(
            kind,
            AvmnistNetConfig::new().init_seeded(6, device),
            data,
            setup(device),
            burn::optim::AdamConfig::new().init(),
        )
    }

    fn kinds() -> [ImputerKind; 2] {
        [
            ImputerKind::Autoencoder(AutoencoderConfig {
                pretrain: short_pretrain(),
                iterations: 200,
                batch_size: 16,
                ..AutoencoderConfig::default()
            }),
            ImputerKind::Gan(GanConfig {
                pretrain: short_pretrain(),
                iterations: 30,
                batch_size: 16,
                ..GanConfig::default()
            }),
        ]
    }

    /// A missing feature is its translator's output from the present one (`z = 0` at test).
    #[test]
    fn a_missing_feature_is_translated_from_the_present_one() {
        let device = Device::flex().autodiff();
        for kind in kinds() {
            let noise = kind.noise();
            let m = imputer(kind, &device).model().valid();
            let batch = tiny_batch(4, 3, &Device::flex());
            let mask = mask_tensor(&vec![vec![true, false]; 4], &Device::flex());
            let logits = m.forward(&batch, &mask, noise, None);
            let det = encode_det(&m.net.image, &batch.image, &[true; 4]);
            let input = if noise > 0 {
                Tensor::cat(
                    vec![det.clone(), Tensor::zeros([4, noise], &det.device())],
                    1,
                )
            } else {
                det.clone()
            };
            let expect = m.net.head(Tensor::cat(
                vec![det, m.generators[AUDIO].forward(input)],
                1,
            ));
            assert_close(&values(logits), &values(expect), 1e-5);
        }
    }

    #[test]
    fn preparation_fits_the_translators() {
        let device = Device::flex().autodiff();
        let mut ae = imputer(kinds()[0].clone(), &device);
        let mut ticks = 0;
        ae.prepare(&mut || ticks += 1);
        assert_eq!(ticks, ae.pre_iterations());
        let mse: Vec<f32> = ae
            .pre_log
            .iter()
            .filter(|r| r.stage == "autoencoder_mse")
            .map(|r| r.loss)
            .collect();
        assert_eq!(mse.len(), 2);
        assert!(mse[1] < mse[0], "the translators' error falls: {mse:?}");
        let mut gan = imputer(kinds()[1].clone(), &device);
        gan.prepare(&mut || {});
        assert!(gan.pre_log().unwrap().contains("gan_generator"));
    }

    #[test]
    fn missing_modalities_are_never_read_and_resume_is_exact() {
        let device = Device::flex().autodiff();
        let (train, _) = synthetic_row();
        for kind in kinds() {
            let mut m = imputer(kind.clone(), &device);
            m.prepare(&mut || {});
            assert!(poisoned_matches(&m, &device));
            resume_is_exact(&|| imputer(kind.clone(), &device), &train, &device);
        }
    }
}
