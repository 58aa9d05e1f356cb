//! SMIL: multimodal learning with severely missing modality (Ma et al., AAAI 2021), from its
//! public code (`mengmenm/SMIL@0d0e827`, PEERS.md §7), in the harness ("SMIL-fo"):
//!
//! 1. the pretraining of SMIL's pipeline ([`super::common::pretrain`]): the dominant modality alone,
//!    the scarce one alone on the pairs, then both on the pairs;
//! 2. **modality priors**: the k-means centroids (K = 10, k-means++, 10 restarts) of the scarce
//!    modality's features of every paired training sample (inference mode);
//! 3. **meta-training** by the shared loop (every sample with the modalities it has). Per
//!    iteration, with θ = the dominant encoder and the head, φ = the reconstruction and
//!    regularisation networks, the scarce encoder frozen:
//!    * reconstruction: `ω = softplus(Linear(f_d))`, `ŝ = Σ_k ω_k c_k / Σ_k ω_k` (a convex
//!      combination of the priors);
//!    * regularisation: `x = [f_d, ŝ] + softplus(Linear(f_d) + ε)`, `h = relu(fc1(x)) +
//!      softplus(Linear(x) + ε)`, `ε ~ N(0, 1)` in the inner pass only (0 elsewhere: the learned
//!      offset stays);
//!    * inner step on the loop batch's samples that lack the scarce modality (D_m):
//!      `θ' = θ − α_in ∇_θ CE`, `α_in = 1e-3 · 0.1^⌊it/1000⌋`;
//!    * outer loss: `CE_inner(θ) + CE(D_f through the reconstruction; θ') + 0.01·MSE(x_clean,
//!      x_rec) + 0.01·MSE(h_clean, h_rec)` on a batch of paired samples D_f drawn by the method,
//!      "clean" being D_f with its real scarce features (not detached);
//!    * θ and φ take one step of the task optimiser on the outer gradient.
//!
//! **burn 0.22 has no second-order gradients** (`Tensor::grad` cannot be differentiated
//! again), so the meta-gradient is first-order (FOMAML): θ' is a detached copy of θ after the
//! inner step, the outer D_f terms' gradient with respect to θ' is applied to θ, and the
//! path through θ' from φ is dropped. SMIL's code uses second-order MAML (`create_graph`).
//!
//! Ours, beyond SMIL: a mirrored reconstruction `d̂ = Σ ω'_k c'_k` of the dominant modality from
//! the scarce one (priors c' = k-means of the dominant features of the pairs), so that every
//! subset can be evaluated; it is trained by a CE term on D_f through the current head with its
//! parameters frozen, so its gradient reaches that reconstruction only. SMIL's evaluation
//! selects the best iteration on test accuracy; the harness reports the last.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::softplus;
use mckd_core::{Method, ModalitySet, StateError, StateFiles};
use mckd_train::eval::cross_entropy;
use mckd_train::train::Source;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::backbone::Backbone;
use super::common::{
    Feature, PreRow, PreSetup, PretrainConfig, PretrainRun, Sampler, SamplerState, add_grads,
    all_features, by_pattern, copy_grads, from_json, json_bytes, load_module, load_optim,
    module_bytes, mse, normal_tensor, optim_bytes, plain_batch, pre_log_csv, presence, pretrain,
    rows_where, sub_batch,
};
use super::kmeans::{KMeansError, kmeans};
use super::{AvMethodRun, PeerData, Roles};
use crate::model::{AvBatch, MODALITY_NAMES};

/// The network SMIL builds on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SmilBackbone {
    /// Our encoders and head (as every other method): the mechanism is what differs.
    #[default]
    Ours,
    /// SMIL's LeNet-5 image network, its audio network and its fusion head
    /// ([`super::lenet`]).
    Lenet,
}

/// SMIL's settings (its code's values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmilConfig {
    /// The network.
    pub backbone: SmilBackbone,
    /// The pretraining.
    pub pretrain: PretrainConfig,
    /// Number of modality priors K.
    pub clusters: usize,
    /// k-means restarts (scikit-learn's `n_init`).
    pub kmeans_restarts: usize,
    /// Inner learning rate α_in.
    pub inner_lr: f64,
    /// α_in is divided by 10 every this many iterations.
    pub inner_decay_every: usize,
    /// Weight of MSE(x_clean, x_rec) (the fused features).
    pub mse_fused_weight: f64,
    /// Weight of MSE(h_clean, h_rec) (the head's hidden layer).
    pub mse_hidden_weight: f64,
    /// Weight of the mirrored reconstruction's CE (ours; 0 leaves it untrained).
    pub reverse_weight: f64,
}

impl Default for SmilConfig {
    fn default() -> Self {
        Self {
            backbone: SmilBackbone::Ours,
            pretrain: PretrainConfig::default(),
            clusters: 10,
            kmeans_restarts: 10,
            inner_lr: 1e-3,
            inner_decay_every: 1000,
            mse_fused_weight: 0.01,
            mse_hidden_weight: 0.01,
            reverse_weight: 1.0,
        }
    }
}

/// The SMIL model: the backbone (θ and the frozen scarce encoder), the reconstruction and
/// regularisation networks (φ), the mirrored reconstruction, and the priors.
#[derive(Module, Debug)]
pub struct SmilModel<B: Backbone> {
    /// Encoders and fusion head.
    pub net: B,
    /// Reconstruction weights from the dominant feature: W_d → K.
    pub recon: Linear,
    /// Mirrored reconstruction weights from the scarce feature: W_s → K (ours).
    pub recon_rev: Linear,
    /// Regulariser at the fused features: W_d → W_image + W_audio.
    pub reg_x: Linear,
    /// Regulariser at the hidden layer: W_image + W_audio → H.
    pub reg_h: Linear,
    /// Priors of the scarce modality, `[K, W_s]` (constants).
    pub priors: Param<Tensor<2>>,
    /// Priors of the dominant modality, `[K, W_d]` (constants).
    pub priors_rev: Param<Tensor<2>>,
    /// Which modality is reconstructed.
    #[module(skip)]
    pub roles: Roles,
}

/// A convex combination of `priors` with weights `softplus(recon(feature))` normalised to sum
/// to 1: returns `(weights, reconstruction)`.
///
/// # Shapes
/// - `feature`: `[batch, W_in]`; `priors`: `[K, W_out]`; weights `[batch, K]`, reconstruction
///   `[batch, W_out]`
pub fn reconstruct(
    recon: &Linear,
    priors: Tensor<2>,
    feature: Tensor<2>,
) -> (Tensor<2>, Tensor<2>) {
    let w = softplus(recon.forward(feature), 1.0);
    let w = w.clone() / w.sum_dim(1);
    (w.clone(), w.matmul(priors))
}

/// The fused features `[image | audio]` from the dominant and scarce ones.
fn place(roles: Roles, dominant: Tensor<2>, scarce: Tensor<2>) -> Tensor<2> {
    if roles.dominant == 0 {
        Tensor::cat(vec![dominant, scarce], 1)
    } else {
        Tensor::cat(vec![scarce, dominant], 1)
    }
}

/// The reconstruction path's outputs.
pub struct Reconstructed {
    /// `[batch, 10]`.
    pub logits: Tensor<2>,
    /// The regularised fused features x.
    pub fused: Tensor<2>,
    /// The regularised hidden layer h.
    pub hidden: Tensor<2>,
}

impl<B: Backbone> SmilModel<B> {
    /// SMIL's networks on `net` with K priors, drawn from `seed` (priors zero until k-means).
    pub fn new(net: B, roles: Roles, clusters: usize, seed: u64, device: &Device) -> Self {
        let w = net.widths();
        let (wd, ws) = (w[roles.dominant], w[roles.scarce]);
        let hidden = net.hidden_width();
        crate::model::init_seeded_with(seed ^ 0x5311_0000_0000_0001, device, move || Self {
            recon: LinearConfig::new(wd, clusters).init(device),
            recon_rev: LinearConfig::new(ws, clusters).init(device),
            reg_x: LinearConfig::new(wd, w[0] + w[1]).init(device),
            reg_h: LinearConfig::new(w[0] + w[1], hidden).init(device),
            priors: Param::from_tensor(Tensor::zeros([clusters, ws], device)),
            priors_rev: Param::from_tensor(Tensor::zeros([clusters, wd], device)),
            net,
            roles,
        })
    }

    /// The reconstruction path on `net` (θ or θ'): the dominant modality's feature, the scarce
    /// one reconstructed, the regularisers with noise `eps` (`(ε_x, ε_h)`; `None`: zero).
    ///
    /// # Shapes
    /// - `dominant`: features `[batch, W_d]`; `eps`: `[batch, W_0 + W_1]`, `[batch, H]`
    pub fn reconstructed(
        &self,
        net: &B,
        dominant: &Feature,
        eps: Option<(Tensor<2>, Tensor<2>)>,
    ) -> Reconstructed {
        let (_, s_hat) = reconstruct(
            &self.recon,
            self.priors.val().detach(),
            dominant.det.clone(),
        );
        let mut off_x = self.reg_x.forward(dominant.det.clone());
        if let Some((e, _)) = &eps {
            off_x = off_x + e.clone();
        }
        let x = place(self.roles, dominant.dropped.clone(), s_hat) + softplus(off_x, 1.0);
        let mut off_h = self.reg_h.forward(x.clone());
        if let Some((_, e)) = &eps {
            off_h = off_h + e.clone();
        }
        let h = net.hidden(x.clone()) + softplus(off_h, 1.0);
        Reconstructed {
            logits: net.classify(h.clone()),
            fused: x,
            hidden: h,
        }
    }

    /// The mirrored reconstruction's logits through `net`'s head: the dominant feature
    /// reconstructed from the scarce one (ours).
    ///
    /// # Shapes
    /// - `scarce`: `[batch, W_s]`; output `[batch, 10]`
    pub fn reversed(&self, net: &B, scarce: Tensor<2>) -> Tensor<2> {
        let (_, d_hat) = reconstruct(
            &self.recon_rev,
            self.priors_rev.val().detach(),
            scarce.clone(),
        );
        net.classify(net.hidden(place(self.roles, d_hat, scarce)))
    }

    /// Inference for one presence pattern `[image, audio]`: both present, the plain head; the
    /// dominant alone, the reconstruction path (ε = 0); the scarce alone, the mirrored one.
    pub fn pattern_logits(&self, batch: &AvBatch, pattern: [bool; 2]) -> Tensor<2> {
        let b = batch.labels.dims()[0];
        let all = vec![true; b];
        let (d, s) = (self.roles.dominant, self.roles.scarce);
        if pattern[d] && pattern[s] {
            let fd = self.net.features(batch, d, &all).dropped;
            let fs = self.net.features(batch, s, &all).dropped;
            self.net
                .classify(self.net.hidden(place(self.roles, fd, fs)))
        } else if pattern[d] {
            let fd = self.net.features(batch, d, &all);
            self.reconstructed(&self.net, &fd, None).logits
        } else {
            let fs = self.net.features(batch, s, &all).det;
            self.reversed(&self.net, fs)
        }
    }
}

/// The outer loss's terms on D_f through θ' (values before their weights).
pub struct OuterTerms {
    /// CE of the reconstruction path.
    pub task: Tensor<1>,
    /// MSE(x_clean, x_rec).
    pub mse_fused: Tensor<1>,
    /// MSE(h_clean, h_rec).
    pub mse_hidden: Tensor<1>,
}

/// The outer terms of SMIL on a paired batch: `clean` are `(x, h)` with the real scarce
/// feature, `rec` the reconstruction path.
pub fn outer_terms(
    clean: (Tensor<2>, Tensor<2>),
    rec: &Reconstructed,
    labels: Tensor<1, Int>,
) -> OuterTerms {
    OuterTerms {
        task: cross_entropy(rec.logits.clone(), labels),
        mse_fused: mse(clean.0, rec.fused.clone()),
        mse_hidden: mse(clean.1, rec.hidden.clone()),
    }
}

/// SMIL as a [`Method`].
pub struct Smil<B: Backbone> {
    cfg: SmilConfig,
    model: Option<SmilModel<B>>,
    optim: ModuleOptimizer,
    data: PeerData,
    setup: PreSetup,
    prepared: bool,
    pre_log: Vec<PreRow>,
    pairs: Sampler,
    noise: ChaCha8Rng,
    iteration: usize,
    pair_batch: usize,
    name: &'static str,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SmilState {
    prepared: bool,
    pre_log: Vec<PreRow>,
    pairs: SamplerState,
    noise: Vec<u8>,
    iteration: usize,
}

const MODEL_FILE: &str = "model.bpk";
const OPTIM_FILE: &str = "optim.bpk";
const RNG_FILE: &str = "dropout_rng.bin";
const STATE_FILE: &str = "peer_state.json";

/// The seed of SMIL's pair batches and noise, derived from the run's.
fn stream_seed(seed: u64, k: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (0x5311_0000 + k)
}

impl<B: Backbone> Smil<B> {
    /// SMIL on `net` for the row's `data`; D_f batches of `pair_batch` pairs (the loop's batch
    /// size), the task optimiser `optim`. Fails when the row has fewer pairs than priors.
    pub fn new(
        cfg: SmilConfig,
        net: B,
        data: PeerData,
        setup: PreSetup,
        optim: ModuleOptimizer,
        pair_batch: usize,
        name: &'static str,
    ) -> Result<Self, KMeansError> {
        let n = data.paired.len();
        if cfg.clusters == 0 || cfg.clusters > n {
            return Err(KMeansError::Clusters { k: cfg.clusters, n });
        }
        let model = SmilModel::new(net, data.roles, cfg.clusters, setup.seed, &setup.device);
        Ok(Self {
            pairs: Sampler::new(n, stream_seed(setup.seed, 1)),
            noise: ChaCha8Rng::seed_from_u64(stream_seed(setup.seed, 2)),
            cfg,
            model: Some(model),
            optim,
            data,
            setup,
            prepared: false,
            pre_log: Vec::new(),
            iteration: 0,
            pair_batch,
            name,
        })
    }

    /// The model.
    pub fn model(&self) -> &SmilModel<B> {
        self.model.as_ref().expect("model present between steps")
    }

    /// The inner learning rate at the current iteration.
    pub fn inner_lr(&self) -> f64 {
        let k = self.iteration / self.cfg.inner_decay_every.max(1);
        self.cfg.inner_lr * 0.1f64.powi(k as i32)
    }

    /// The next D_f batch.
    fn pair_batch(&mut self) -> AvBatch {
        let idx = self.pairs.next_batch(self.pair_batch);
        self.data.paired.batch(&idx, &self.setup.device)
    }

    /// The noise of an inner pass over `rows` samples.
    fn draw_noise(&mut self, net: &B, rows: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let w = net.widths();
        (
            normal_tensor(&mut self.noise, rows, w[0] + w[1], device),
            normal_tensor(&mut self.noise, rows, net.hidden_width(), device),
        )
    }

    /// One meta-training step's gradients of θ and φ and the terms' values, for the loop batch
    /// (`batch`, `mask`), the paired batch `df`, the inner pass's noise `eps` (one row per
    /// sample without the scarce modality) and the inner learning rate.
    pub fn meta_gradients(
        &self,
        model: &SmilModel<B>,
        (batch, mask): (&AvBatch, &Tensor<2>),
        df: &AvBatch,
        eps: Option<(Tensor<2>, Tensor<2>)>,
        inner_lr: f64,
    ) -> (GradientsParams, Vec<f32>) {
        let roles = model.roles;
        let (d, s) = (roles.dominant, roles.scarce);
        let p = presence(mask);
        // Inner pass (θ, φ, noise) on the samples without the scarce modality.
        let dm = rows_where(&p[s], false);
        let (inner_value, g1) = match eps {
            Some(eps) if !dm.is_empty() => {
                let sub = sub_batch(batch, &dm);
                let fd = model.net.features(&sub, d, &vec![true; dm.len()]);
                let rec = model.reconstructed(&model.net, &fd, Some(eps));
                let loss = cross_entropy(rec.logits, sub.labels.clone());
                let value = mckd_core::scalar(&loss);
                (value, GradientsParams::from_grads(loss.backward(), model))
            }
            _ => (0.0, GradientsParams::new()),
        };
        // θ': one plain gradient step of θ (a detached copy: first order).
        let theta = if g1.is_empty() || inner_lr == 0.0 {
            model.net.clone()
        } else {
            burn::optim::SgdConfig::new().init().step(
                inner_lr,
                model.net.clone(),
                copy_grads(&model.net, &g1),
            )
        };
        // Outer pass on D_f through θ' and φ.
        let n = df.labels.dims()[0];
        let all = vec![true; n];
        let fd = theta.features(df, d, &all);
        // The scarce encoder is frozen: inference mode, constants.
        let fs = model
            .net
            .valid()
            .features(&plain_batch(df), s, &all)
            .det
            .autodiff();
        let x_clean = place(roles, fd.dropped.clone(), fs.clone());
        let h_clean = theta.hidden(x_clean.clone());
        let rec = model.reconstructed(&theta, &fd, None);
        let terms = outer_terms((x_clean, h_clean), &rec, df.labels.clone());
        // The mirrored reconstruction, through a frozen copy of θ''s head.
        let frozen_head = theta.clone().no_grad();
        let reverse = cross_entropy(model.reversed(&frozen_head, fs), df.labels.clone());
        let values = vec![
            inner_value,
            mckd_core::scalar(&terms.task),
            mckd_core::scalar(&terms.mse_fused),
            mckd_core::scalar(&terms.mse_hidden),
            mckd_core::scalar(&reverse),
        ];
        let outer = terms.task
            + terms.mse_fused * self.cfg.mse_fused_weight
            + terms.mse_hidden * self.cfg.mse_hidden_weight
            + reverse * self.cfg.reverse_weight;
        let mut grads = outer.backward();
        // ∇θ' applied to θ (same parameter ids), φ's own gradients.
        let g_theta = GradientsParams::from_module(&mut grads, &theta);
        let g_phi = GradientsParams::from_module(&mut grads, model);
        let g2 = add_grads(model, g_theta, g_phi);
        (add_grads(model, g1, g2), values)
    }
}

impl<B: Backbone + 'static> Method for Smil<B> {
    type Batch = AvBatch;
    type Output = Tensor<2>;

    fn name(&self) -> &str {
        self.name
    }

    fn modalities(&self) -> &ModalitySet {
        static MODALITIES: std::sync::OnceLock<ModalitySet> = std::sync::OnceLock::new();
        MODALITIES.get_or_init(|| ModalitySet::new(MODALITY_NAMES))
    }

    fn term_names(&self) -> Vec<String> {
        [
            "inner_loss",
            "outer_loss",
            "mse_fused",
            "mse_hidden",
            "reverse_loss",
        ]
        .map(String::from)
        .to_vec()
    }

    fn train_step(&mut self, batch: &AvBatch, mask: &Tensor<2>, lr: f64) -> Vec<f32> {
        let model = self.model.take().expect("model present between steps");
        let p = presence(mask);
        let dm = rows_where(&p[model.roles.scarce], false).len();
        let eps = (dm > 0).then(|| self.draw_noise(&model.net, dm, &batch.labels.device()));
        let df = self.pair_batch();
        let inner_lr = self.inner_lr();
        let (grads, values) = self.meta_gradients(&model, (batch, mask), &df, eps, inner_lr);
        self.model = Some(self.optim.step(lr, model, grads));
        self.iteration += 1;
        values
    }

    fn predict(&self, batch: &AvBatch, mask: &Tensor<2>) -> Tensor<2> {
        let m = self.model().valid();
        by_pattern(batch, mask, &|b, pattern| m.pattern_logits(b, pattern))
    }

    fn save_state(&self) -> Result<StateFiles, StateError> {
        let mut files = StateFiles::new();
        files.insert(MODEL_FILE.into(), self.model_bytes()?);
        files.insert(OPTIM_FILE.into(), optim_bytes(&self.optim, OPTIM_FILE)?);
        files.insert(RNG_FILE.into(), self.model().net.dropout_rng().state());
        files.insert(
            STATE_FILE.into(),
            json_bytes(&SmilState {
                prepared: self.prepared,
                pre_log: self.pre_log.clone(),
                pairs: self.pairs.state(),
                noise: mckd_core::rng::rng_state(&self.noise).to_vec(),
                iteration: self.iteration,
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
        let bad = |what: &str| StateError::Load {
            name: STATE_FILE.into(),
            problem: format!("bad {what}"),
        };
        self.model()
            .net
            .dropout_rng()
            .restore(StateError::get(files, RNG_FILE)?)
            .map_err(|problem| StateError::Load {
                name: RNG_FILE.into(),
                problem,
            })?;
        let s: SmilState = from_json(StateError::get(files, STATE_FILE)?, STATE_FILE)?;
        self.pairs
            .restore(&s.pairs)
            .ok_or_else(|| bad("pair sampler"))?;
        self.noise = mckd_core::rng::rng_from_state(&s.noise).ok_or_else(|| bad("noise"))?;
        self.prepared = s.prepared;
        self.pre_log = s.pre_log;
        self.iteration = s.iteration;
        Ok(())
    }
}

impl<B: Backbone + 'static> AvMethodRun for Smil<B> {
    fn pre_iterations(&self) -> usize {
        self.cfg.pretrain.iterations(&self.data)
    }

    fn prepare(&mut self, tick: &mut dyn FnMut()) {
        if self.prepared {
            return;
        }
        let mut model = self.model.take().expect("model present between steps");
        model.net = pretrain(
            model.net,
            &self.data,
            &self.cfg.pretrain,
            PretrainRun {
                optimizer: &self.setup.optimizer,
                lr: self.setup.lr,
                seed: self.setup.seed,
                device: &self.setup.device,
                tick,
                log: &mut self.pre_log,
            },
        );
        let (d, s) = (model.roles.dominant, model.roles.scarce);
        let priors = |m: usize| -> Tensor<2> {
            let f = all_features(&model.net, &self.data.paired, m, &self.setup.device);
            let [n, w] = f.dims();
            let v: Vec<f64> = f.to_data().iter::<f32>().map(f64::from).collect();
            let c = kmeans(
                &v,
                w,
                self.cfg.clusters,
                self.cfg.kmeans_restarts,
                300,
                stream_seed(self.setup.seed, 3 + m as u64),
            )
            .expect("clusters checked against the pairs at construction");
            let _ = n;
            let c: Vec<f32> = c.centroids.iter().map(|&x| x as f32).collect();
            Tensor::from_data(
                TensorData::new(c, [self.cfg.clusters, w]),
                &self.setup.device,
            )
        };
        let (ps, pd) = (priors(s), priors(d));
        model.priors = model.priors.map(|_| ps);
        model.priors_rev = model.priors_rev.map(|_| pd);
        self.model = Some(model);
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
    use crate::model::{AvmnistNetConfig, IMAGE, init_seeded_with};
    use crate::peers::lenet::LenetNet;
    use crate::peers::test_support::{
        assert_grads_close, poisoned_matches, resume_is_exact, setup, short_pretrain,
        synthetic_row, tiny_batch,
    };
    use crate::peers::tiny::TinyNet;
    use crate::tests_util::{assert_close, values};
    use mckd_core::mask_tensor;

    fn t2(v: &[f32], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [rows, cols]), device)
    }

    fn linear(w: &[f32], b: &[f32], rows: usize, cols: usize, device: &Device) -> Linear {
        let mut l = init_seeded_with(1, device, || LinearConfig::new(rows, cols).init(device));
        l.weight = Param::from_tensor(t2(w, rows, cols, device));
        l.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b.to_vec(), [cols]),
            device,
        )));
        l
    }

    #[test]
    fn the_reconstruction_is_a_convex_combination_of_the_priors() {
        // import numpy as np
        // W = np.array([[0.5, -1.0, 0.2], [0.3, 0.4, -0.6]]); b = np.array([0.1, 0.0, -0.3])
        // C = np.array([[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]])
        // f = np.array([[1.0, 2.0], [-0.5, 0.25]])
        // w = np.log1p(np.exp(f @ W + b)); w = w / w.sum(1, keepdims=True); rec = w @ C
        // w   -> [0.63553837, 0.25978593, 0.1046757, 0.30537422, 0.48270283, 0.21192295]
        // rec -> [0.66075563, -0.82715666, 0.33480268, 0.26637184]
        let device = Device::flex();
        let recon = linear(
            &[0.5, -1.0, 0.2, 0.3, 0.4, -0.6],
            &[0.1, 0.0, -0.3],
            2,
            3,
            &device,
        );
        let priors = t2(&[1.0, -2.0, 0.5, 0.5, -1.0, 3.0], 3, 2, &device);
        let f = t2(&[1.0, 2.0, -0.5, 0.25], 2, 2, &device);
        let (w, rec) = reconstruct(&recon, priors, f);
        let (w, rec) = (values(w), values(rec));
        assert_close(
            &w,
            &[
                0.635_538_4,
                0.259_785_9,
                0.104_675_7,
                0.305_374_2,
                0.482_702_8,
                0.211_923,
            ],
            1e-6,
        );
        assert_close(
            &rec,
            &[0.660_755_6, -0.827_156_7, 0.334_802_7, 0.266_371_8],
            1e-6,
        );
        // Convex: weights ≥ 0 summing to 1 per row, each coordinate within the priors' range.
        for row in w.chunks(3) {
            assert!(row.iter().all(|&x| x >= 0.0));
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        for row in rec.chunks(2) {
            assert!((-1.0..=1.0).contains(&row[0]) && (-2.0..=3.0).contains(&row[1]));
        }
    }

    /// The outer terms on hand-written tensors against numpy.
    #[test]
    fn outer_terms_match_numpy() {
        // import numpy as np
        // logits = np.array([[1.0, -0.5, 0.2], [0.3, 0.8, -1.2]]); y = np.array([2, 1])
        // ls = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        // ce = -ls[np.arange(2), y].mean()                       # 0.934625996231311
        // xc = np.array([[0.5, -1.0, 2.0], [0.0, 0.25, -0.75]])
        // xr = np.array([[0.4, -0.5, 1.0], [0.5, 0.25, 0.25]])
        // ((xc - xr) ** 2).mean()                                 # 0.418333333333333
        // hc = np.array([[1.0, 2.0], [-1.0, 0.5]]); hr = np.array([[0.5, 2.5], [0.0, 0.0]])
        // ((hc - hr) ** 2).mean()                                 # 0.4375
        let device = Device::flex();
        let rec = Reconstructed {
            logits: t2(&[1.0, -0.5, 0.2, 0.3, 0.8, -1.2], 2, 3, &device),
            fused: t2(&[0.4, -0.5, 1.0, 0.5, 0.25, 0.25], 2, 3, &device),
            hidden: t2(&[0.5, 2.5, 0.0, 0.0], 2, 2, &device),
        };
        let clean = (
            t2(&[0.5, -1.0, 2.0, 0.0, 0.25, -0.75], 2, 3, &device),
            t2(&[1.0, 2.0, -1.0, 0.5], 2, 2, &device),
        );
        let labels = Tensor::from_data(TensorData::new(vec![2i64, 1], [2]), &device);
        let t = outer_terms(clean, &rec, labels);
        assert_close(
            &[t.task, t.mse_fused, t.mse_hidden].map(|x| mckd_core::scalar(&x)),
            &[0.934_626, 0.418_333_3, 0.4375],
            1e-6,
        );
    }

    fn tiny_model(device: &Device) -> SmilModel<TinyNet> {
        let roles = Roles::of(crate::config::Missing::Audio);
        let mut m = SmilModel::new(TinyNet::new(3, device), roles, 3, 7, device);
        m.priors = m.priors.map(|p| {
            let v: Vec<f32> = (0..6).map(|i| (i as f32 - 2.5) * 0.4).collect();
            t2(&v, 3, 2, &p.device())
        });
        m.priors_rev = m.priors_rev.map(|p| {
            let v: Vec<f32> = (0..9).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3).collect();
            t2(&v, 3, 3, &p.device())
        });
        m
    }

    /// The outer terms on a paired batch through θ (the image is dominant): CE of the
    /// reconstruction path, MSE(x_clean, x_rec), MSE(h_clean, h_rec).
    fn outer(model: &SmilModel<TinyNet>, df: &AvBatch) -> [Tensor<1>; 3] {
        let n = df.labels.dims()[0];
        let all = vec![true; n];
        let fd = model.net.features(df, IMAGE, &all);
        let fs = model.net.features(df, 1, &all).det.detach();
        let x_c = place(model.roles, fd.dropped.clone(), fs);
        let h_c = model.net.hidden(x_c.clone());
        let rec = model.reconstructed(&model.net, &fd, None);
        let t = outer_terms((x_c, h_c), &rec, df.labels.clone());
        [t.task, t.mse_fused, t.mse_hidden]
    }

    /// Each outer term's gradient with respect to the reconstruction and regularisation
    /// networks against central differences.
    #[test]
    fn outer_terms_gradients_match_finite_differences() {
        let device = Device::flex().autodiff();
        let model = tiny_model(&device);
        let df = tiny_batch(4, 11, &device);
        type Pick = fn(&mut SmilModel<TinyNet>) -> &mut Linear;
        let picks: [(&str, Pick); 3] = [
            ("recon", |m| &mut m.recon),
            ("reg_x", |m| &mut m.reg_x),
            ("reg_h", |m| &mut m.reg_h),
        ];
        for term in 0..3 {
            for (name, pick) in picks {
                let mut m = model.clone();
                let w0 = values(pick(&mut m).weight.val());
                let dims = pick(&mut m).weight.dims();
                let grads = outer(&m, &df)[term].clone().backward();
                // No gradient where the term does not depend on the layer (MSE(x) on reg_h):
                // the differences must then be zero too.
                let g = pick(&mut m)
                    .weight
                    .val()
                    .grad(&grads)
                    .map_or(vec![0.0; w0.len()], values);
                let eval = |w: &[f32]| {
                    let mut m = model.clone();
                    pick(&mut m).weight = Param::from_tensor(t2(w, dims[0], dims[1], &device));
                    values(outer(&m, &df)[term].clone())[0]
                };
                let h = 1e-2;
                for i in [0, w0.len() / 2, w0.len() - 1] {
                    let (mut up, mut down) = (w0.clone(), w0.clone());
                    up[i] += h;
                    down[i] -= h;
                    let fd = (eval(&up) - eval(&down)) / (2.0 * h);
                    assert!(
                        (fd - g[i]).abs() < 2e-3 * (1.0 + fd.abs()),
                        "term {term}, {name}[{i}]: autodiff {} vs fd {fd}",
                        g[i]
                    );
                }
            }
        }
    }

    fn tiny_smil(device: &Device) -> (Smil<TinyNet>, AvBatch, Tensor<2>) {
        let (_, data) = synthetic_row();
        let mut smil = Smil::new(
            SmilConfig {
                clusters: 3,
                ..SmilConfig::default()
            },
            TinyNet::new(3, device),
            data,
            setup(device),
            burn::optim::SgdConfig::new().init(),
            4,
            "smil",
        )
        .unwrap();
        smil.model = Some(tiny_model(device));
        let batch = tiny_batch(6, 5, device);
        let mask = mask_tensor(
            &[
                vec![true, true],
                vec![true, false],
                vec![true, false],
                vec![true, true],
                vec![true, false],
                vec![true, false],
            ],
            device,
        );
        (smil, batch, mask)
    }

    /// With α_in = 0, θ' = θ, so the first-order meta-gradient is the gradient of the summed
    /// loss (inner CE + outer terms + mirrored CE) at θ in one graph: the outer gradient taken
    /// at θ' reaches θ's parameters. With α_in > 0 it differs.
    #[test]
    fn first_order_meta_gradient_with_zero_inner_rate_is_the_summed_gradient() {
        let device = Device::flex().autodiff();
        let (smil, batch, mask) = tiny_smil(&device);
        let model = smil.model().clone();
        let df = tiny_batch(4, 9, &device);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let eps = (
            normal_tensor(&mut rng, 4, 5, &device),
            normal_tensor(&mut rng, 4, 4, &device),
        );
        let (g, vals) = smil.meta_gradients(&model, (&batch, &mask), &df, Some(eps.clone()), 0.0);
        // The reference: everything at θ, one backward.
        let dm = [1, 2, 4, 5];
        let sub = sub_batch(&batch, &dm);
        let fd = model.net.features(&sub, IMAGE, &[true; 4]);
        let inner = cross_entropy(
            model
                .reconstructed(&model.net, &fd, Some(eps.clone()))
                .logits,
            sub.labels.clone(),
        );
        let [task, mx, mh] = outer(&model, &df);
        let fs = model.net.features(&df, 1, &[true; 4]).det.detach();
        let reverse = cross_entropy(
            model.reversed(&model.net.clone().no_grad(), fs),
            df.labels.clone(),
        );
        assert_close(
            &vals,
            &[
                inner.clone(),
                task.clone(),
                mx.clone(),
                mh.clone(),
                reverse.clone(),
            ]
            .map(|t| mckd_core::scalar(&t)),
            1e-6,
        );
        let total = inner + task + mx * 0.01 + mh * 0.01 + reverse;
        let reference = GradientsParams::from_grads(total.backward(), &model);
        assert_grads_close(&model, &g, &reference, 1e-5);
        // A real inner step changes the outer gradient of θ.
        let (g2, _) = smil.meta_gradients(&model, (&batch, &mask), &df, Some(eps), 0.5);
        let w = |g: &GradientsParams| values(g.get::<2>(model.net.fc1.weight.id).unwrap());
        let dev = w(&g)
            .iter()
            .zip(w(&g2))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(dev > 1e-5, "θ' = θ − 0.5 g must change the outer gradient");
    }

    /// After the pretraining, the priors are the k-means centroids of the pairs' features.
    #[test]
    fn priors_are_the_kmeans_centroids_of_the_pairs() {
        let device = Device::flex().autodiff();
        let (_, data) = synthetic_row();
        let cfg = SmilConfig {
            clusters: 4,
            pretrain: short_pretrain(),
            ..SmilConfig::default()
        };
        let net = AvmnistNetConfig::new().init_seeded(2, &device);
        let mut smil = Smil::new(
            cfg,
            net,
            data.clone(),
            setup(&device),
            burn::optim::AdamConfig::new().init(),
            8,
            "smil",
        )
        .unwrap();
        smil.prepare(&mut || {});
        let m = smil.model();
        let f = all_features(&m.net, &data.paired, 1, &device);
        let [_, w] = f.dims();
        let v: Vec<f64> = f.to_data().iter::<f32>().map(f64::from).collect();
        let c = kmeans(&v, w, 4, 10, 300, stream_seed(setup(&device).seed, 4)).unwrap();
        let expect: Vec<f32> = c.centroids.iter().map(|&x| x as f32).collect();
        assert_close(&values(m.priors.val()), &expect, 1e-6);
        assert!(smil.pre_log().unwrap().contains("unimodal_image"));
        let too_many = SmilConfig {
            clusters: 31,
            ..SmilConfig::default()
        };
        let net = AvmnistNetConfig::new().init_seeded(2, &device);
        assert!(
            Smil::new(
                too_many,
                net,
                data,
                setup(&device),
                burn::optim::AdamConfig::new().init(),
                8,
                "smil"
            )
            .is_err()
        );
    }

    #[test]
    fn missing_modalities_are_never_read_and_resume_is_exact() {
        let device = Device::flex().autodiff();
        let (train, data) = synthetic_row();
        let cfg = SmilConfig {
            clusters: 4,
            pretrain: short_pretrain(),
            ..SmilConfig::default()
        };
        let ours = || {
            let net = AvmnistNetConfig::new().init_seeded(2, &device);
            Smil::new(
                cfg.clone(),
                net,
                data.clone(),
                setup(&device),
                burn::optim::AdamConfig::new().init(),
                8,
                "smil",
            )
            .unwrap()
        };
        let lenet = || {
            let net = LenetNet::init_seeded(2, &device);
            Smil::new(
                cfg.clone(),
                net,
                data.clone(),
                setup(&device),
                burn::optim::AdamConfig::new().init(),
                8,
                "smil_lenet",
            )
            .unwrap()
        };
        let mut a = ours();
        a.prepare(&mut || {});
        assert!(poisoned_matches(&a, &device));
        let mut b = lenet();
        b.prepare(&mut || {});
        assert!(poisoned_matches(&b, &device));
        resume_is_exact(&ours, &train, &device);
        resume_is_exact(&lenet, &train, &device);
    }
}
