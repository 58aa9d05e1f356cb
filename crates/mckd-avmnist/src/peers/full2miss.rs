//! Full2miss (Shen & Gao, IPMI 2019) as PEERS.md §8.3 reconstructs it; the paper's code is not
//! public and its exact loss could not be read. **The protocol is ours**:
//!
//! * teacher T: the full-modal model of the shared pretraining ([`super::common::pretrain`]), frozen
//!   (inference mode);
//! * student S: the same network initialised from T, trained by the shared loop on every
//!   training sample with the Baseline's forward (a missing feature is the mean of the present
//!   ones, Eq. 2);
//! * loss = CE + λ·MSE(h_S, h_T) on the paired samples of the batch, where h_T is T's fused
//!   feature with both modalities and h_S the student's with the dominant modality alone (the
//!   scarce one imputed); both before dropout. `level` picks h: the fused encoder features
//!   (2F, default) or the head's hidden layer. λ = 1.
//!
//! The optional adversarial feature discriminator of §8.3 is not built.

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use mckd_core::{Method, ModalitySet, StateError, StateFiles, Task};
use mckd_kernels::select_rows;
use mckd_train::eval::cross_entropy;
use serde::{Deserialize, Serialize};

use super::backbone::Backbone;
use super::common::{
    PreRow, PreSetup, PretrainConfig, PretrainRun, baseline_forward, baseline_logits, from_json,
    json_bytes, load_module, load_optim, module_bytes, mse, optim_bytes, plain_batch, pre_log_csv,
    presence, pretrain, sub_batch,
};
use super::{AvMethodRun, PeerData, Roles};
use crate::model::{AUDIO, AvBatch, AvmnistNet, IMAGE};

/// The representation the distillation compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DistilLevel {
    /// The fused encoder features `[f_image | f_audio]`.
    #[default]
    Fused,
    /// The head's hidden layer (after its ReLU, before dropout).
    Hidden,
}

/// Full2miss's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Full2missConfig {
    /// The full-modal pretraining (the teacher).
    pub pretrain: PretrainConfig,
    /// Weight λ of the feature distillation.
    pub weight: f64,
    /// What is distilled.
    pub level: DistilLevel,
}

impl Default for Full2missConfig {
    fn default() -> Self {
        Self {
            pretrain: PretrainConfig::default(),
            weight: 1.0,
            level: DistilLevel::Fused,
        }
    }
}

/// The feature-distillation term: `MSE(h_S, h_T)`, the student's representation of the
/// dominant modality alone against the teacher's of both, over every element.
///
/// `student_dominant` is the student's deterministic feature of the dominant modality of the
/// paired samples; the scarce modality's feature is imputed by it (the mean of the present
/// ones). `teacher` is `[t_image | t_audio]`. With [`DistilLevel::Hidden`] both go through their
/// network's hidden layer first.
///
/// # Shapes
/// - `student_dominant`: `[pairs, F]`; `teacher`: `[pairs, 2F]`; output `[1]`
pub fn distillation_loss(
    student_dominant: Tensor<2>,
    teacher: Tensor<2>,
    level: DistilLevel,
    student_hidden: &dyn Fn(Tensor<2>) -> Tensor<2>,
    teacher_hidden: &dyn Fn(Tensor<2>) -> Tensor<2>,
) -> Tensor<1> {
    let h_s = Tensor::cat(vec![student_dominant.clone(), student_dominant], 1);
    match level {
        DistilLevel::Fused => mse(h_s, teacher),
        DistilLevel::Hidden => mse(student_hidden(h_s), teacher_hidden(teacher)),
    }
}

/// Full2miss as a [`Method`].
pub struct Full2miss {
    cfg: Full2missConfig,
    student: Option<AvmnistNet>,
    /// The frozen teacher, on the plain device (after the pretraining).
    teacher: Option<AvmnistNet>,
    optim: ModuleOptimizer,
    data: PeerData,
    setup: PreSetup,
    pre_log: Vec<PreRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Full2missState {
    prepared: bool,
    pre_log: Vec<PreRow>,
}

const MODEL_FILE: &str = "model.bpk";
const TEACHER_FILE: &str = "teacher.bpk";
const OPTIM_FILE: &str = "optim.bpk";
const RNG_FILE: &str = "dropout_rng.bin";
const STATE_FILE: &str = "peer_state.json";

impl Full2miss {
    /// Full2miss on `net`, trained on the row's `data` with the task optimiser `optim`.
    pub fn new(
        cfg: Full2missConfig,
        net: AvmnistNet,
        data: PeerData,
        setup: PreSetup,
        optim: ModuleOptimizer,
    ) -> Self {
        Self {
            cfg,
            student: Some(net),
            teacher: None,
            optim,
            data,
            setup,
            pre_log: Vec::new(),
        }
    }

    /// The student.
    pub fn student(&self) -> &AvmnistNet {
        self.student
            .as_ref()
            .expect("student present between steps")
    }

    fn roles(&self) -> Roles {
        self.data.roles
    }
}

impl Method for Full2miss {
    type Batch = AvBatch;
    type Output = Tensor<2>;

    fn name(&self) -> &str {
        "full2miss"
    }

    fn modalities(&self) -> &ModalitySet {
        Task::modalities(self.student())
    }

    fn term_names(&self) -> Vec<String> {
        vec!["task_loss".into(), "distill_loss".into()]
    }

    fn train_step(&mut self, batch: &AvBatch, mask: &Tensor<2>, lr: f64) -> Vec<f32> {
        let net = self.student.take().expect("student present between steps");
        let teacher = self
            .teacher
            .as_ref()
            .expect("Full2miss trains after its preparation (the teacher)");
        let p = presence(mask);
        let d = self.roles().dominant;
        // The Baseline's forward and loss.
        let (logits, features) = baseline_forward(&net, batch, mask);
        let task = cross_entropy(logits, batch.labels.clone());
        // The distillation on the samples that have both modalities in this batch.
        let pairs: Vec<usize> = (0..p[IMAGE].len())
            .filter(|&i| p[IMAGE][i] && p[AUDIO][i])
            .collect();
        let distill = if pairs.is_empty() {
            Tensor::zeros([1], &batch.labels.device())
        } else {
            let f_d = select_rows(features[d].det.clone(), &pairs);
            let sub = sub_batch(&plain_batch(batch), &pairs);
            let all = vec![true; pairs.len()];
            let t = Tensor::cat(
                vec![
                    teacher.features(&sub, IMAGE, &all).det,
                    teacher.features(&sub, AUDIO, &all).det,
                ],
                1,
            )
            .autodiff();
            let teacher_hidden = |x: Tensor<2>| teacher.hidden(x.inner()).autodiff();
            distillation_loss(
                f_d,
                t,
                self.cfg.level,
                &|x| AvmnistNet::hidden(&net, x),
                &teacher_hidden,
            )
        };
        let terms = vec![mckd_core::scalar(&task), mckd_core::scalar(&distill)];
        let loss = task + distill * self.cfg.weight;
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        self.student = Some(self.optim.step(lr, net, grads));
        terms
    }

    fn predict(&self, batch: &AvBatch, mask: &Tensor<2>) -> Tensor<2> {
        baseline_logits(&self.student().valid(), batch, mask)
    }

    fn save_state(&self) -> Result<StateFiles, StateError> {
        let mut files = StateFiles::new();
        files.insert(MODEL_FILE.into(), self.model_bytes()?);
        if let Some(t) = &self.teacher {
            files.insert(TEACHER_FILE.into(), module_bytes(t.clone(), TEACHER_FILE)?);
        }
        files.insert(OPTIM_FILE.into(), optim_bytes(&self.optim, OPTIM_FILE)?);
        files.insert(RNG_FILE.into(), self.student().random_state());
        files.insert(
            STATE_FILE.into(),
            json_bytes(&Full2missState {
                prepared: self.teacher.is_some(),
                pre_log: self.pre_log.clone(),
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
        self.student()
            .set_random_state(StateError::get(files, RNG_FILE)?)
            .map_err(|problem| StateError::Load {
                name: RNG_FILE.into(),
                problem,
            })?;
        let s: Full2missState = from_json(StateError::get(files, STATE_FILE)?, STATE_FILE)?;
        self.teacher = if s.prepared {
            let t = load_module(
                &self.student().valid(),
                StateError::get(files, TEACHER_FILE)?,
                TEACHER_FILE,
            )?;
            Some(t.valid())
        } else {
            None
        };
        self.pre_log = s.pre_log;
        Ok(())
    }
}

impl AvMethodRun for Full2miss {
    fn pre_iterations(&self) -> usize {
        self.cfg.pretrain.iterations(&self.data)
    }

    fn prepare(&mut self, tick: &mut dyn FnMut()) {
        if self.teacher.is_some() {
            return;
        }
        let net = self.student.take().expect("student present between steps");
        let net = pretrain(
            net,
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
        self.teacher = Some(net.valid());
        self.student = Some(net);
    }

    fn pre_log(&self) -> Option<String> {
        Some(pre_log_csv(&self.pre_log))
    }

    fn model_bytes(&self) -> Result<Vec<u8>, StateError> {
        module_bytes(self.student().clone(), MODEL_FILE)
    }

    fn load_model(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let m = load_module(self.student(), bytes, MODEL_FILE)?;
        self.student = Some(m);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AvmnistNetConfig;
    use crate::peers::test_support::{
        poisoned_matches, resume_is_exact, setup, short_pretrain, synthetic_row, train_batch,
    };
    use crate::tests_util::{assert_close, values};
    use burn::tensor::activation::relu;

    fn t2(v: &[f32], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [rows, cols]), device)
    }

    const A: [f32; 12] = [
        0.2, -0.1, 0.4, 0.3, 0.5, -0.2, -0.6, 0.1, 0.3, 0.2, 0.2, 0.2,
    ];
    const B: [f32; 12] = [
        0.1, 0.3, -0.2, 0.4, -0.1, 0.2, 0.0, 0.5, 0.1, -0.3, 0.2, 0.6,
    ];

    #[test]
    fn distillation_matches_numpy() {
        // import numpy as np; relu = lambda x: np.maximum(x, 0)
        // s = np.array([[1.0, -0.5], [0.25, 2.0]]); t = np.array([[0.5, 0, 1, -1], [0, 1.5, 2, 0.5]])
        // hs = np.hstack([s, s]); ((hs - t)**2).mean() -> 0.796875
        // A = np.array(A).reshape(4, 3); B = np.array(B).reshape(4, 3)
        // ((relu(hs @ A) - relu(t @ B))**2).mean() -> 0.2684375
        let device = Device::flex();
        let s = t2(&[1.0, -0.5, 0.25, 2.0], 2, 2, &device);
        let t = t2(&[0.5, 0.0, 1.0, -1.0, 0.0, 1.5, 2.0, 0.5], 2, 4, &device);
        let a = t2(&A, 4, 3, &device);
        let b = t2(&B, 4, 3, &device);
        let sh = |x: Tensor<2>| relu(x.matmul(a.clone()));
        let th = |x: Tensor<2>| relu(x.matmul(b.clone()));
        let fused = distillation_loss(s.clone(), t.clone(), DistilLevel::Fused, &sh, &th);
        assert_close(&values(fused), &[0.796_875], 1e-6);
        let hidden = distillation_loss(s, t, DistilLevel::Hidden, &sh, &th);
        assert_close(&values(hidden), &[0.268_437_5], 1e-6);
    }

    /// The distillation's gradient with respect to a linear layer that produces the student's
    /// feature, at both levels, against central differences.
    #[test]
    fn distillation_gradient_matches_finite_differences() {
        let device = Device::flex().autodiff();
        let x = t2(&[1.0, 0.5, -0.5, 2.0, 0.0, 1.0], 3, 2, &device);
        let t = t2(
            &[0.2, 0.1, -0.3, 0.8, 1.0, 0.0, 0.5, 0.5, -1.0, 0.3, 0.2, 0.0],
            3,
            4,
            &device,
        );
        let a = t2(&A, 4, 3, &device);
        let b = t2(&B, 4, 3, &device);
        let w0 = [0.7f32, -0.2, 0.4, 0.9];
        for level in [DistilLevel::Fused, DistilLevel::Hidden] {
            let loss = |w: Tensor<2>| {
                distillation_loss(
                    x.clone().matmul(w),
                    t.clone(),
                    level,
                    &|h| relu(h.matmul(a.clone())),
                    &|h| relu(h.matmul(b.clone())),
                )
            };
            let w = t2(&w0, 2, 2, &device).require_grad();
            let grads = loss(w.clone()).backward();
            let g = values(w.grad(&grads).unwrap());
            let h = 1e-3;
            for i in 0..4 {
                let (mut up, mut down) = (w0, w0);
                up[i] += h;
                down[i] -= h;
                let fd = (values(loss(t2(&up, 2, 2, &device)))[0]
                    - values(loss(t2(&down, 2, 2, &device)))[0])
                    / (2.0 * h);
                assert!((fd - g[i]).abs() < 2e-3, "{level:?} w{i}: {} vs {fd}", g[i]);
            }
        }
    }

    fn method(device: &Device) -> Full2miss {
        let (_, data) = synthetic_row();
        Full2miss::new(
            Full2missConfig {
                pretrain: short_pretrain(),
                ..Full2missConfig::default()
            },
            AvmnistNetConfig::new().init_seeded(8, device),
            data,
            setup(device),
            burn::optim::AdamConfig::new().init(),
        )
    }

    /// What the network computes on a few samples (its encoders' features and its logits):
    /// equal networks give equal values.
    fn params(net: &AvmnistNet) -> Vec<f32> {
        let plain = Device::flex();
        let pairs = synthetic_row().1.paired;
        let mut v = Vec::new();
        for m in [IMAGE, AUDIO] {
            v.extend(values(
                crate::peers::common::all_features(net, &pairs, m, &plain).narrow(0, 0, 2),
            ));
        }
        let batch = crate::peers::test_support::tiny_batch(3, 1, &plain);
        let mask = mckd_core::mask_tensor(&vec![vec![true, true]; 3], &plain);
        v.extend(values(baseline_logits(&net.valid(), &batch, &mask)));
        v
    }

    /// The student starts as the teacher; training moves the student, never the teacher.
    #[test]
    fn the_teacher_is_the_pretrained_student_and_stays_frozen() {
        let device = Device::flex().autodiff();
        let (train, _) = synthetic_row();
        let mut m = method(&device);
        m.prepare(&mut || {});
        let teacher = m.teacher.clone().unwrap();
        assert_eq!(params(&teacher), params(m.student()));
        let rows: Vec<usize> = (0..20).collect();
        let (batch, mask) = train_batch(&train, &rows, &device);
        let terms = m.train_step(&batch, &mask, 1e-2);
        assert!(
            terms[1] > 0.0,
            "the paired rows of the batch are distilled: {terms:?}"
        );
        assert_eq!(params(m.teacher.as_ref().unwrap()), params(&teacher));
        assert_ne!(params(m.student()), params(&teacher));
    }

    #[test]
    fn missing_modalities_are_never_read_and_resume_is_exact() {
        let device = Device::flex().autodiff();
        let (train, _) = synthetic_row();
        let mut m = method(&device);
        m.prepare(&mut || {});
        assert!(poisoned_matches(&m, &device));
        resume_is_exact(&|| method(&device), &train, &device);
    }
}
