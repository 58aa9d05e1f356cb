//! ShaSpec (Wang et al., CVPR 2023) on AV-MNIST, PEERS.md §2.5. ShaSpec's authors released
//! BraTS code only; **this AV-MNIST form is ours**:
//!
//! * a shared encoder `E_r` (our image encoder's shape) reads both modalities, the 20×20 MFCC
//!   zero-padded to 28×28, giving `r_i`; it normalises the present image and audio rows of a
//!   batch together (one shared batch norm);
//! * the specific encoders are our image and audio encoders, giving `s_i`;
//! * residual fusion `f_i = r_i + P([r_i, s_i])` with `P = Linear(256 → 128)`, one for both;
//! * a missing modality's `f` is the mean of the present modalities' `r` (the paper's Eq. 4;
//!   with two modalities, the present one's `r`);
//! * our head 256 → 64 → 10 on `[f_image, f_audio]`, after each encoder's dropout;
//! * domain classification objective (DCO): `Linear(128 → 2)` on the specific features of the
//!   present modalities, cross-entropy against the modality; weight 0.02;
//! * distribution alignment objective (DAO): L1 between `r_image` and `r_audio` on the samples
//!   that have both (the paper masks missing modalities out of both terms); weight 0.1.
//!
//! `r` and `s` are the encoders' deterministic outputs (before dropout), as MCKD distils.
//! Training follows the harness's non-dedicated schedule (every available modality first,
//! then random dropping), which is ShaSpec's released `run.sh` (a full-modality warm-up, then
//! `--mode random`).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use mckd_core::fusion::impute;
use mckd_core::{Method, ModalitySet, StateError, StateFiles, Task};
use mckd_train::eval::cross_entropy;
use serde::{Deserialize, Serialize};

use super::AvMethodRun;
use super::common::{encode, load_module, load_optim, module_bytes, optim_bytes, presence};
use crate::model::{
    AUDIO, AvBatch, AvmnistNet, ConvEncoder, IMAGE, SeededDropout, init_seeded_with,
};

/// ShaSpec's hyper-parameters (the BraTS values; nothing else is published).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShaspecConfig {
    /// Weight α of the distribution alignment objective.
    pub dao_weight: f64,
    /// Weight β of the domain classification objective.
    pub dco_weight: f64,
}

impl Default for ShaspecConfig {
    fn default() -> Self {
        Self {
            dao_weight: 0.1,
            dco_weight: 0.02,
        }
    }
}

/// The ShaSpec network: our network's specific encoders and head, a shared encoder, the
/// residual projection and the domain classifier.
#[derive(Module, Debug)]
pub struct ShaspecModel {
    /// Specific encoders (`image`, `audio`) and head.
    pub net: AvmnistNet,
    /// The shared encoder (image-shaped; audio padded to 28×28).
    pub shared: ConvEncoder,
    /// `P`: `[r_i | s_i]` (2F) → F.
    pub proj: Linear,
    /// The domain classifier: F → 2 modalities.
    pub domain: Linear,
}

/// A forward pass with the features its losses need.
pub struct ShaspecForward {
    /// `[batch, 10]`.
    pub logits: Tensor<2>,
    /// Shared features `r_image`, `r_audio` (`[batch, F]`, zero where absent).
    pub shared: [Tensor<2>; 2],
    /// Specific features `s_image`, `s_audio` (`[batch, F]`, zero where absent).
    pub specific: [Tensor<2>; 2],
}

impl ShaspecModel {
    /// Adds the shared encoder, the projection and the domain classifier to `net`, drawn from
    /// `seed` (the network itself is kept as given).
    pub fn new(net: AvmnistNet, seed: u64, device: &Device) -> Self {
        let f = net.feature_width();
        let rng = net.dropout_rng();
        init_seeded_with(seed ^ 0x5AA5_EC00_0000_0001, device, move || Self {
            shared: ConvEncoder::for_modality(IMAGE, f, SeededDropout::new(0.0, rng), device),
            proj: LinearConfig::new(2 * f, f).init(device),
            domain: LinearConfig::new(f, 2).init(device),
            net,
        })
    }

    /// The forward pass; absent modalities are never read.
    ///
    /// # Shapes
    /// - `mask`: `[batch, 2]`; logits `[batch, 10]`
    pub fn forward(&self, batch: &AvBatch, mask: &Tensor<2>) -> ShaspecForward {
        let p = presence(mask);
        let b = p[IMAGE].len();
        let specific = [IMAGE, AUDIO].map(|m| {
            let x = if m == IMAGE {
                &batch.image
            } else {
                &batch.audio
            };
            encode(self.net.encoder(m), x, &p[m]).det
        });
        // One pass of the shared encoder over the present rows of both modalities.
        let x = Tensor::cat(
            vec![
                batch.image.clone(),
                batch.audio.clone().pad([(4, 4), (4, 4)], 0.0),
            ],
            0,
        ); // [2B, 1, 28, 28]
        let flags: Vec<bool> = p[IMAGE].iter().chain(&p[AUDIO]).copied().collect();
        let r_all = encode(&self.shared, &x, &flags).det; // [2B, F]
        let shared = [r_all.clone().narrow(0, 0, b), r_all.narrow(0, b, b)];
        let r = Tensor::stack(shared.to_vec(), 1); // [B, 2, F]
        let residual: Vec<Tensor<2>> = (0..2)
            .map(|m| {
                self.proj
                    .forward(Tensor::cat(vec![shared[m].clone(), specific[m].clone()], 1))
            })
            .collect();
        let present = mask.clone().unsqueeze_dim::<3>(2); // [B, 2, 1]
        // Present: r_i + P([r_i, s_i]); missing: the mean of the present r.
        let fused = impute(r, mask.clone()) + Tensor::stack(residual, 1) * present; // [B, 2, F]
        let [_, _, f] = fused.dims();
        let dropped: Vec<Tensor<2>> = (0..2)
            .map(|m| {
                self.net
                    .encoder(m)
                    .apply_dropout(fused.clone().narrow(1, m, 1).reshape([b, f]))
            })
            .collect();
        ShaspecForward {
            logits: self.net.head(Tensor::cat(dropped, 1)),
            shared,
            specific,
        }
    }
}

/// The domain classification objective: the mean cross-entropy of `domain` on the specific
/// features of every present (sample, modality), the class being the modality.
///
/// # Shapes
/// - `specific`: two `[batch, F]`; `mask`: `[batch, 2]`; output `[1]`
pub fn dco_loss(domain: &Linear, specific: &[Tensor<2>; 2], mask: &Tensor<2>) -> Tensor<1> {
    let correct: Vec<Tensor<2>> = (0..2)
        .map(|m| log_softmax(domain.forward(specific[m].clone()), 1).narrow(1, m, 1))
        .collect();
    let correct = Tensor::cat(correct, 1); // [B, 2]: log p(modality m | s_m)
    -(correct * mask.clone()).sum() / mask.clone().sum().clamp_min(1.0)
}

/// The distribution alignment objective: the mean absolute difference between the two
/// modalities' shared features over the samples that have both (0 when none has).
///
/// # Shapes
/// - `shared`: two `[batch, F]`; `mask`: `[batch, 2]`; output `[1]`
pub fn dao_loss(shared: &[Tensor<2>; 2], mask: &Tensor<2>) -> Tensor<1> {
    let [_, f] = shared[0].dims();
    let both = mask.clone().narrow(1, 0, 1) * mask.clone().narrow(1, 1, 1); // [B, 1]
    let diff = (shared[0].clone() - shared[1].clone()).abs() * both.clone();
    diff.sum() / (both.sum() * f as f64).clamp_min(1.0)
}

/// ShaSpec as a [`Method`].
pub struct Shaspec {
    cfg: ShaspecConfig,
    model: Option<ShaspecModel>,
    optim: ModuleOptimizer,
}

const MODEL_FILE: &str = "model.bpk";
const OPTIM_FILE: &str = "optim.bpk";
const RNG_FILE: &str = "dropout_rng.bin";

impl Shaspec {
    /// ShaSpec on `model` with the task optimiser `optim`.
    pub fn new(model: ShaspecModel, cfg: ShaspecConfig, optim: ModuleOptimizer) -> Self {
        Self {
            cfg,
            model: Some(model),
            optim,
        }
    }

    /// The model.
    pub fn model(&self) -> &ShaspecModel {
        self.model.as_ref().expect("model present between steps")
    }
}

impl Method for Shaspec {
    type Batch = AvBatch;
    type Output = Tensor<2>;

    fn name(&self) -> &str {
        "shaspec"
    }

    fn modalities(&self) -> &ModalitySet {
        Task::modalities(&self.model().net)
    }

    fn term_names(&self) -> Vec<String> {
        vec!["task_loss".into(), "dao_loss".into(), "dco_loss".into()]
    }

    fn train_step(&mut self, batch: &AvBatch, mask: &Tensor<2>, lr: f64) -> Vec<f32> {
        let model = self.model.take().expect("model present between steps");
        let fwd = model.forward(batch, mask);
        let task = cross_entropy(fwd.logits, batch.labels.clone());
        let dao = dao_loss(&fwd.shared, mask);
        let dco = dco_loss(&model.domain, &fwd.specific, mask);
        let terms = [&task, &dao, &dco].map(mckd_core::scalar).to_vec();
        let loss = task + dao * self.cfg.dao_weight + dco * self.cfg.dco_weight;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optim.step(lr, model, grads));
        terms
    }

    fn predict(&self, batch: &AvBatch, mask: &Tensor<2>) -> Tensor<2> {
        self.model().valid().forward(batch, mask).logits
    }

    fn save_state(&self) -> Result<StateFiles, StateError> {
        let mut files = StateFiles::new();
        files.insert(
            MODEL_FILE.into(),
            module_bytes(self.model().clone(), MODEL_FILE)?,
        );
        files.insert(OPTIM_FILE.into(), optim_bytes(&self.optim, OPTIM_FILE)?);
        files.insert(RNG_FILE.into(), self.model().net.random_state());
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
            })
    }
}

impl AvMethodRun for Shaspec {
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
    use crate::peers::test_support::{batch_of, poisoned_matches, tiny_batch};
    use crate::tests_util::{assert_close, values};
    use mckd_core::mask_tensor;

    fn t2(v: &[f32], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [rows, cols]), device)
    }

    /// DCO and DAO on hand-written features against numpy.
    #[test]
    fn auxiliary_losses_match_numpy() {
        // import numpy as np
        // W = np.array([[0.5, -1.0], [0.25, 0.75], [-0.5, 0.5]]); bias = np.array([0.1, -0.2])
        // s0 = np.array([[1., 2., 0.], [0., -1., 1.], [0., 0., 0.]])
        // s1 = np.array([[0.5, 0., 1.], [0., 0., 0.], [2., 1., -1.]])
        // mask = np.array([[1., 1.], [1., 0.], [0., 1.]])
        // def lsm(z): return z - np.log(np.exp(z).sum(1, keepdims=True))
        // c0 = lsm(s0 @ W + bias)[:, 0]; c1 = lsm(s1 @ W + bias)[:, 1]
        // dco = -((c0 * mask[:, 0]).sum() + (c1 * mask[:, 1]).sum()) / mask.sum()
        //   -> 1.427455849949384
        // r0 = np.array([[1., 2., 3.], [0., 1., 0.], [0., 0., 0.]])
        // r1 = np.array([[0., 2.5, 1.], [0., 0., 0.], [4., 4., 4.]])
        // both = mask[:, 0] * mask[:, 1]
        // dao = (np.abs(r0 - r1) * both[:, None]).sum() / (both.sum() * 3)  -> 1.1666667
        let device = Device::flex();
        let mut domain = init_seeded_with(1, &device, || LinearConfig::new(3, 2).init(&device));
        domain.weight = burn::module::Param::from_tensor(t2(
            &[0.5, -1.0, 0.25, 0.75, -0.5, 0.5],
            3,
            2,
            &device,
        ));
        domain.bias = Some(burn::module::Param::from_tensor(Tensor::from_floats(
            [0.1, -0.2],
            &device,
        )));
        let s = [
            t2(&[1., 2., 0., 0., -1., 1., 0., 0., 0.], 3, 3, &device),
            t2(&[0.5, 0., 1., 0., 0., 0., 2., 1., -1.], 3, 3, &device),
        ];
        let mask = mask_tensor(
            &[vec![true, true], vec![true, false], vec![false, true]],
            &device,
        );
        let dco = values(dco_loss(&domain, &s, &mask));
        assert_close(&dco, &[1.427_455_8], 1e-6);
        let r = [
            t2(&[1., 2., 3., 0., 1., 0., 0., 0., 0.], 3, 3, &device),
            t2(&[0., 2.5, 1., 0., 0., 0., 4., 4., 4.], 3, 3, &device),
        ];
        assert_close(&values(dao_loss(&r, &mask)), &[1.166_666_7], 1e-6);
        // Identical shared features: no alignment loss; no paired sample: 0, not NaN.
        let same = [r[0].clone(), r[0].clone()];
        assert_eq!(values(dao_loss(&same, &mask)), vec![0.0]);
        let single = mask_tensor(&[vec![true, false], vec![false, true]], &device);
        let two = [r[0].clone().narrow(0, 0, 2), r[1].clone().narrow(0, 0, 2)];
        assert_eq!(values(dao_loss(&two, &single)), vec![0.0]);
    }

    /// Finite differences of both auxiliary terms with respect to the parameters of a tiny
    /// linear layer that produces the features.
    #[test]
    fn auxiliary_gradients_match_finite_differences() {
        let device = Device::flex().autodiff();
        let input = t2(&[1.0, -0.5, 0.25, 2.0, 0.0, 1.5], 3, 2, &device);
        let other = t2(&[0.3, 0.1, -0.2, 0.4, 0.6, -0.1], 3, 2, &device);
        let mask = mask_tensor(
            &[vec![true, true], vec![true, true], vec![false, true]],
            &device,
        );
        let domain = init_seeded_with(2, &device, || LinearConfig::new(2, 2).init(&device));
        let terms = |w: &[f32]| -> [f32; 2] {
            let a = input.clone().matmul(t2(w, 2, 2, &device));
            [
                values(dco_loss(&domain, &[a.clone(), other.clone()], &mask))[0],
                values(dao_loss(&[a, other.clone()], &mask))[0],
            ]
        };
        let w0 = [0.7f32, -0.3, 0.2, 0.9];
        for term in 0..2 {
            let w = t2(&w0, 2, 2, &device).require_grad();
            let a = input.clone().matmul(w.clone());
            let loss = if term == 0 {
                dco_loss(&domain, &[a, other.clone()], &mask)
            } else {
                dao_loss(&[a, other.clone()], &mask)
            };
            let grads = loss.backward();
            let g = values(w.grad(&grads).unwrap());
            let h = 1e-3;
            for i in 0..4 {
                let mut up = w0;
                up[i] += h;
                let mut down = w0;
                down[i] -= h;
                let fd = (terms(&up)[term] - terms(&down)[term]) / (2.0 * h);
                assert!(
                    (fd - g[i]).abs() < 2e-3,
                    "term {term}, w{i}: autodiff {} vs fd {fd}",
                    g[i]
                );
            }
        }
    }

    fn method(seed: u64, device: &Device) -> Shaspec {
        let net = AvmnistNetConfig::new().init_seeded(seed, device);
        Shaspec::new(
            ShaspecModel::new(net, seed, device),
            ShaspecConfig::default(),
            burn::optim::AdamConfig::new().init(),
        )
    }

    /// The domain classifier sees only the specific features: its loss does not change with
    /// the shared encoder, and its gradient reaches the specific encoders, not the shared one.
    #[test]
    fn the_domain_classifier_sees_only_the_specific_features() {
        let device = Device::flex().autodiff();
        let batch = tiny_batch(6, 5, &device);
        let mask = mask_tensor(
            &[
                vec![true, true],
                vec![true, false],
                vec![false, true],
                vec![true, true],
                vec![true, false],
                vec![true, true],
            ],
            &device,
        );
        let a = method(1, &device);
        let mut other = method(1, &device).model.unwrap();
        other.shared = method(9, &device).model.unwrap().shared;
        let fa = a
            .model()
            .valid()
            .forward(&batch_of(&batch), &mask.clone().inner());
        let fb = other
            .valid()
            .forward(&batch_of(&batch), &mask.clone().inner());
        let dco = |m: &ShaspecModel, f: &ShaspecForward| {
            values(dco_loss(
                &m.domain.valid(),
                &f.specific,
                &mask.clone().inner(),
            ))
        };
        assert_eq!(dco(a.model(), &fa), dco(&other, &fb));
        assert_ne!(
            values(dao_loss(&fa.shared, &mask.clone().inner())),
            values(dao_loss(&fb.shared, &mask.clone().inner())),
            "another shared encoder must change the alignment term for the test to bite"
        );
        let model = a.model();
        let fwd = model.forward(&batch, &mask);
        let mut grads = dco_loss(&model.domain, &fwd.specific, &mask).backward();
        assert_eq!(
            GradientsParams::from_module(&mut grads, &model.shared).len(),
            0,
            "the DCO reached the shared encoder"
        );
        assert_eq!(
            GradientsParams::from_module(&mut grads, &model.proj).len(),
            0
        );
        assert!(!GradientsParams::from_module(&mut grads, &model.net.image).is_empty());
        assert!(!GradientsParams::from_module(&mut grads, &model.net.audio).is_empty());
    }

    /// A missing modality's fused feature is the present one's shared feature.
    #[test]
    fn a_missing_feature_is_the_present_shared_feature() {
        let device = Device::flex();
        let m = method(3, &device.clone().autodiff()).model.unwrap().valid();
        let batch = tiny_batch(4, 2, &device);
        let mask = mask_tensor(&vec![vec![true, false]; 4], &device);
        let fwd = m.forward(&batch, &mask);
        // Recompute the head input by hand: f_image = r + P([r, s]), f_audio = r.
        let r = fwd.shared[0].clone();
        let f_img = r.clone()
            + m.proj
                .forward(Tensor::cat(vec![r.clone(), fwd.specific[0].clone()], 1));
        let expect = m.net.head(Tensor::cat(vec![f_img, r], 1));
        assert_close(&values(fwd.logits), &values(expect), 1e-5);
        assert!(values(fwd.shared[1].clone()).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn missing_modalities_are_never_read_and_resume_is_exact() {
        let device = Device::flex().autodiff();
        let m = method(4, &device);
        assert!(poisoned_matches(&m, &device));
        let (train, _) = crate::peers::test_support::synthetic_row();
        crate::peers::test_support::resume_is_exact(&|| method(4, &device), &train, &device);
    }
}
