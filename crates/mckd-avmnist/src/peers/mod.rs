//! The peer methods of paper Table 2, each a [`Method`] of the shared loop, built on the same
//! encoders and head as the MCKD network (`crate::model`) so that the missing-modality
//! mechanism is what differs (`../shared/PEERS.md` describes every method and marks what is
//! ours):
//!
//! * [`shaspec`]: shared + specific encoders, residual fusion, domain classification and
//!   distribution alignment (ShaSpec, CVPR 2023; its AV-MNIST form is ours).
//! * [`smil`]: SMIL (AAAI 2021) with first-order meta-learning: k-means priors of the missing
//!   modality's features, the reconstruction and regularisation networks, an inner and an
//!   outer step. On our backbone or on SMIL's own LeNet-5 ([`lenet`]).
//! * [`impute`]: the AutoEncoder and GAN baselines, a frozen feature translator (an MLP, or
//!   a conditional generator trained adversarially) that imputes the missing modality's
//!   feature from the present one. Reconstructed by us.
//! * [`full2miss`]: teacher–student distillation from the full-modal model (reconstructed by
//!   us).
//!
//! SMIL, AutoEncoder, GAN and Full2miss first train a full-modal model on the paired samples
//! ([`common::pretrain`]); they run these stages in [`AvMethodRun::prepare`], before the shared
//! loop, and report their iterations apart from the loop's.

use burn::prelude::*;
use mckd_core::{Mckd, Method, StateError};

use crate::config::Missing;
use crate::data::AvSource;
use crate::model::{AUDIO, AvBatch, AvmnistNet, IMAGE};

pub mod backbone;
pub mod common;
pub mod full2miss;
pub mod impute;
pub mod kmeans;
pub mod lenet;
pub mod shaspec;
pub mod smil;

/// An AV-MNIST method as a run drives it: the shared loop's [`Method`], the stages some peers
/// run before the loop, and the model as one record (for `model.bpk` and `eval`).
pub trait AvMethodRun: Method<Batch = AvBatch, Output = Tensor<2>> {
    /// Network iterations of the stages run before the shared loop (0 for none).
    fn pre_iterations(&self) -> usize {
        0
    }

    /// Runs the stages before the shared loop, calling `tick` after each network iteration;
    /// a no-op once they have run (also when the state was restored from a checkpoint).
    fn prepare(&mut self, tick: &mut dyn FnMut()) {
        let _ = tick;
    }

    /// The log of those stages as CSV (`stage,epoch,iterations,loss`), `None` without any.
    fn pre_log(&self) -> Option<String> {
        None
    }

    /// Everything prediction needs, as one burn record.
    fn model_bytes(&self) -> Result<Vec<u8>, StateError>;

    /// Restores what [`model_bytes`](AvMethodRun::model_bytes) returned.
    fn load_model(&mut self, bytes: &[u8]) -> Result<(), StateError>;

    /// The normalised importance weights (MCKD and its Baseline), empty for the peers.
    fn iwv(&self) -> Vec<f32> {
        Vec::new()
    }
}

/// A run's method, whichever it is.
pub type BoxedMethod = Box<dyn AvMethodRun>;

impl AvMethodRun for Mckd<AvmnistNet> {
    fn model_bytes(&self) -> Result<Vec<u8>, StateError> {
        common::module_bytes(self.model().clone(), "model.bpk")
    }

    fn load_model(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        Mckd::load_model(self, bytes)
    }

    fn iwv(&self) -> Vec<f32> {
        self.state_values()
    }
}

/// The modalities of a Table 2 row: the dominant one (present in every training sample) and
/// the scarce one (present only in the paired samples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// The modality every training sample has.
    pub dominant: usize,
    /// The modality only the paired samples have.
    pub scarce: usize,
}

impl Roles {
    /// The roles of a row that misses `missing`.
    pub fn of(missing: Missing) -> Self {
        match missing {
            Missing::Audio => Self {
                dominant: IMAGE,
                scarce: AUDIO,
            },
            Missing::Visual => Self {
                dominant: AUDIO,
                scarce: IMAGE,
            },
        }
    }
}

/// The training samples of a row as the peers' own stages use them.
#[derive(Debug, Clone)]
pub struct PeerData {
    /// Which modality is dominant and which scarce.
    pub roles: Roles,
    /// The paired samples (both modalities).
    pub paired: AvSource,
    /// Every sample that has the dominant modality, with that modality only.
    pub dominant: AvSource,
}

impl PeerData {
    /// Splits a row's training source.
    pub fn new(train: &AvSource, missing: Missing) -> Self {
        let roles = Roles::of(missing);
        let paired = train.subset(&train.with_availability([true, true]), [true, true]);
        let mut keep = [false; 2];
        keep[roles.dominant] = true;
        let dominant = train.subset(&train.having(roles.dominant), keep);
        Self {
            roles,
            paired,
            dominant,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::optim::GradientsParams;
    use burn::prelude::*;
    use mckd_core::{Method, mask_tensor};
    use mckd_train::config::OptimizerConfig;
    use mckd_train::train::Source;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::common::{PreSetup, PretrainConfig};
    use super::{AvMethodRun, PeerData};
    use crate::config::Missing;
    use crate::data::AvSource;
    use crate::model::AvBatch;

    /// `b` samples of uniform noise in [-1, 1) with labels `i % 10`, on `device`.
    pub fn tiny_batch(b: usize, seed: u64, device: &Device) -> AvBatch {
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

    /// The batch on the plain device.
    pub fn batch_of(batch: &AvBatch) -> AvBatch {
        super::common::plain_batch(batch)
    }

    /// A synthetic missing-audio row (`mckd-data`'s stand-in: 9 samples per digit, 3 of them
    /// paired) and its peer data.
    pub fn synthetic_row() -> (AvSource, PeerData) {
        let data = mckd_data::AvMnist::synthetic(9, 3, 4).expect("synthetic kit");
        let train = AvSource::missing_audio(&data.missing_audio(3).expect("3 pairs per digit"));
        let peer = PeerData::new(&train, Missing::Audio);
        (train, peer)
    }

    /// The pre-stage settings of the tests (Adam, no weight decay).
    pub fn setup(device: &Device) -> PreSetup {
        PreSetup {
            optimizer: OptimizerConfig::Adam {
                epsilon: 1e-8,
                weight_decay: 0.0,
            },
            lr: 1e-3,
            seed: 5,
            device: device.clone(),
        }
    }

    /// A pretraining of one epoch per stage.
    pub fn short_pretrain() -> PretrainConfig {
        PretrainConfig {
            dominant_epochs: 1,
            scarce_epochs: 1,
            paired_epochs: 1,
            batch_size: 16,
        }
    }

    /// The first `b` training samples as a batch with the masks of their availability.
    pub fn train_batch(train: &AvSource, rows: &[usize], device: &Device) -> (AvBatch, Tensor<2>) {
        let masks: Vec<Vec<bool>> = rows.iter().map(|&i| train.available(i).to_vec()).collect();
        (train.batch(rows, device), mask_tensor(&masks, device))
    }

    /// A method prepared, stepped once, saved, restored into a fresh one (which must not run
    /// its stages again) continues with the same losses and predictions.
    pub fn resume_is_exact<M: AvMethodRun>(
        make: &dyn Fn() -> M,
        train: &AvSource,
        device: &Device,
    ) {
        let mut a = make();
        let mut ticks = 0;
        a.prepare(&mut || ticks += 1);
        assert_eq!(
            ticks,
            a.pre_iterations(),
            "{}: one tick per iteration",
            a.name()
        );
        let rows: Vec<usize> = (0..train.len()).step_by(7).take(10).collect();
        let (batch, mask) = train_batch(train, &rows, device);
        a.train_step(&batch, &mask, 1e-3);
        let state = a.save_state().expect("state saves");
        let mut b = make();
        b.load_state(&state).expect("state loads");
        let mut again = 0;
        b.prepare(&mut || again += 1);
        assert_eq!(
            again,
            0,
            "{}: a restored method ran its stages again",
            a.name()
        );
        for _ in 0..2 {
            assert_eq!(
                a.train_step(&batch, &mask, 1e-3),
                b.train_step(&batch, &mask, 1e-3),
                "{}",
                a.name()
            );
        }
        let plain = batch_of(&batch);
        let pm = mask.inner();
        assert_eq!(
            mckd_train::to_vec(a.predict(&plain, &pm)),
            mckd_train::to_vec(b.predict(&plain, &pm)),
            "{}",
            a.name()
        );
        let mut broken = state;
        broken.insert("model.bpk".into(), vec![1, 2, 3]);
        let err = make().load_state(&broken).unwrap_err().to_string();
        assert!(err.contains("model.bpk"), "{err}");
    }

    /// Asserts that two sets of gradients agree on every parameter of `module` (both present or
    /// both absent, values within `tol` relative to the largest).
    pub fn assert_grads_close<M: Module>(
        module: &M,
        a: &GradientsParams,
        b: &GradientsParams,
        tol: f32,
    ) {
        struct Cmp<'a> {
            a: &'a GradientsParams,
            b: &'a GradientsParams,
            tol: f32,
            compared: usize,
        }
        impl ModuleVisitor for Cmp<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                match (self.a.get::<D>(p.id), self.b.get::<D>(p.id)) {
                    (None, None) => {}
                    (Some(x), Some(y)) => {
                        let (x, y) = (mckd_train::to_vec(x), mckd_train::to_vec(y));
                        let scale = x.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                        let dev = x
                            .iter()
                            .zip(&y)
                            .map(|(p, q)| (p - q).abs())
                            .fold(0.0, f32::max);
                        assert!(
                            dev <= self.tol * scale,
                            "{:?}: differs by {dev} (scale {scale})",
                            p.id
                        );
                        self.compared += 1;
                    }
                    (x, y) => panic!(
                        "{:?}: gradient in one set only ({} / {})",
                        p.id,
                        x.is_some(),
                        y.is_some()
                    ),
                }
            }
        }
        let mut c = Cmp {
            a,
            b,
            tol,
            compared: 0,
        };
        module.visit(&mut c);
        assert!(c.compared > 0, "no gradient compared");
    }

    /// Predicts every presence pattern (each subset for the whole batch, and a batch mixing
    /// them) twice: with the inputs, and with every absent modality's values replaced by NaN.
    /// The method must give finite logits, identical in both, so it never reads an absent
    /// modality. Returns true when it holds (asserts with a message otherwise).
    pub fn poisoned_matches<M>(method: &M, _device: &Device) -> bool
    where
        M: Method<Batch = AvBatch, Output = Tensor<2>>,
    {
        let plain = Device::flex();
        let b = 6;
        let clean = tiny_batch(b, 77, &plain);
        let mixed: Vec<Vec<bool>> = (0..b)
            .map(|i| match i % 3 {
                0 => vec![true, true],
                1 => vec![true, false],
                _ => vec![false, true],
            })
            .collect();
        let mut patterns: Vec<Vec<Vec<bool>>> = mckd_core::all_subsets(2)
            .into_iter()
            .map(|m| vec![m; b])
            .collect();
        patterns.push(mixed);
        for masks in patterns {
            let poison = |x: &Tensor<4>, m: usize| {
                let [n, c, h, w] = x.dims();
                let mut v: Vec<f32> = x.to_data().iter::<f32>().collect();
                let per = c * h * w;
                for (i, row) in masks.iter().enumerate().take(n) {
                    if !row[m] {
                        v[i * per..(i + 1) * per].fill(f32::NAN);
                    }
                }
                Tensor::<4>::from_data(TensorData::new(v, [n, c, h, w]), &plain)
            };
            let poisoned = AvBatch {
                image: poison(&clean.image, 0),
                audio: poison(&clean.audio, 1),
                labels: clean.labels.clone(),
            };
            let mask = mask_tensor(&masks, &plain);
            let a = mckd_train::to_vec(method.predict(&clean, &mask));
            let p = mckd_train::to_vec(method.predict(&poisoned, &mask));
            assert!(
                a.iter().all(|v| v.is_finite()),
                "{}: non-finite logits for {masks:?}",
                method.name()
            );
            assert_eq!(
                a,
                p,
                "{}: an absent modality was read for {masks:?}",
                method.name()
            );
        }
        true
    }
}

#[cfg(test)]
pub(crate) mod tiny {
    //! A tiny backbone for gradient checks: one linear layer per modality on the flattened
    //! input (tanh), a two-layer head, no dropout and no batch norm.

    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::prelude::*;
    use burn::tensor::activation::{relu, tanh};
    use mckd_kernels::select_rows;

    use super::backbone::Backbone;
    use super::common::{Feature, input, scatter};
    use crate::model::{AvBatch, DropoutRng, init_seeded_with};

    /// Image 784 → 3, audio 400 → 2, head 5 → 4 → 10.
    #[derive(Module, Debug)]
    pub struct TinyNet {
        pub img: Linear,
        pub aud: Linear,
        pub fc1: Linear,
        pub fc2: Linear,
        #[module(skip)]
        rng: DropoutRng,
    }

    impl TinyNet {
        pub fn new(seed: u64, device: &Device) -> Self {
            init_seeded_with(seed, device, || Self {
                img: LinearConfig::new(784, 3).init(device),
                aud: LinearConfig::new(400, 2).init(device),
                fc1: LinearConfig::new(5, 4).init(device),
                fc2: LinearConfig::new(4, 10).init(device),
                rng: DropoutRng::new(seed),
            })
        }
    }

    impl Backbone for TinyNet {
        fn widths(&self) -> [usize; 2] {
            [3, 2]
        }
        fn hidden_width(&self) -> usize {
            4
        }
        fn features(&self, batch: &AvBatch, m: usize, present: &[bool]) -> Feature {
            let rows: Vec<usize> = (0..present.len()).filter(|&i| present[i]).collect();
            let width = self.widths()[m];
            let f = if rows.is_empty() {
                Tensor::zeros([present.len(), width], &batch.labels.device())
            } else {
                let x: Tensor<2> = select_rows(input(batch, m).clone(), &rows).flatten(1, 3);
                let lin = if m == 0 { &self.img } else { &self.aud };
                scatter(tanh(lin.forward(x)), present)
            };
            Feature {
                det: f.clone(),
                dropped: f,
            }
        }
        fn hidden(&self, fused: Tensor<2>) -> Tensor<2> {
            relu(self.fc1.forward(fused))
        }
        fn classify(&self, hidden: Tensor<2>) -> Tensor<2> {
            self.fc2.forward(hidden)
        }
        fn unimodal_logits(&self, batch: &AvBatch, m: usize) -> Tensor<2> {
            let b = batch.labels.dims()[0];
            let f = self.features(batch, m, &vec![true; b]).det;
            let other = Tensor::zeros([b, self.widths()[1 - m]], &f.device());
            let x = if m == 0 {
                Tensor::cat(vec![f, other], 1)
            } else {
                Tensor::cat(vec![other, f], 1)
            };
            self.classify(self.hidden(x))
        }
        fn dropout_rng(&self) -> DropoutRng {
            self.rng.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;
    use mckd_core::{Mckd, MckdConfig, MckdModel, Normalisation};

    use super::test_support::{poisoned_matches, resume_is_exact, synthetic_row};
    use crate::model::AvmnistNetConfig;

    /// MCKD's network in the same checks as the peers: it never reads an absent modality (batch
    /// norm over the present rows), and a checkpoint (the core's `save_state`) continues it
    /// exactly, batch-norm running statistics included.
    #[test]
    fn mckd_never_reads_absent_modalities_and_resumes_exactly() {
        let device = Device::flex().autodiff();
        let (train, _) = synthetic_row();
        let make = || {
            let net = AvmnistNetConfig::new().init_seeded(3, &device);
            let model = MckdModel::new(net, Normalisation::Softmax, 3, &device);
            Mckd::new(
                model,
                MckdConfig::default(),
                burn::optim::AdamConfig::new().init(),
            )
        };
        assert!(poisoned_matches(&make(), &device));
        resume_is_exact(&make, &train, &device);
    }
}
