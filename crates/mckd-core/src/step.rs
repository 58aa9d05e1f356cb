//! The MCKD model wrapper, the inner (task) step and the first-order meta step.

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ckd::{Distance, ckd_loss};
use crate::fusion::{fuse, impute, weight_features};
use crate::iwv::{Iwv, IwvConfig, Normalisation};
use crate::modality::SubsetSampling;
use crate::task::Task;

/// Method hyper-parameters (DESIGN §1). Defaults are the paper's.
#[derive(Config, Debug)]
pub struct MckdConfig {
    /// Weight α of the CKD loss in the inner step; 0 gives the Baseline.
    #[config(default = 0.1)]
    pub alpha: f64,
    /// Distance of the CKD loss.
    #[config(default = "Distance::L1")]
    pub distance: Distance,
    /// Normalisation of the importance weights.
    #[config(default = "Normalisation::Softmax")]
    pub normalisation: Normalisation,
    /// A meta step every this many inner iterations (0 = never).
    #[config(default = 100)]
    pub meta_interval: usize,
    /// Learning rate of the IWV's Adam.
    #[config(default = 1e-2)]
    pub iwv_lr: f64,
    /// Coupled L2 weight decay of the IWV's Adam (paper 5e-5, reference code 5e-4).
    #[config(default = 5e-4)]
    pub iwv_weight_decay: f64,
    /// How the present modalities of each training sample are drawn.
    #[config(default = "SubsetSampling::Reference")]
    pub sampling: SubsetSampling,
}

/// A task together with its importance weight vector.
#[derive(Module, Debug)]
pub struct MckdModel<T: Task> {
    /// The task network (encoders + decoder).
    pub task: T,
    /// The importance weight vector, trained only by the meta step.
    pub iwv: Iwv,
}

/// Losses of one inner step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Task loss.
    pub task_loss: f32,
    /// CKD loss (before α); computed for logging also when α = 0.
    pub ckd_loss: f32,
}

/// Output of a forward pass with the features it was computed from.
pub struct Forward<O> {
    /// Decoder output.
    pub output: O,
    /// Real (not imputed) features per level, `[batch, modalities, features_l]`.
    pub features: Vec<Tensor<3>>,
}

impl<T: Task> MckdModel<T> {
    /// Wraps a task with a freshly initialised IWV (uniform in [0, 1) from `seed`).
    pub fn new(task: T, normalisation: Normalisation, seed: u64, device: &Device) -> Self {
        let n = task.modalities().len();
        let iwv = IwvConfig::new(n)
            .with_normalisation(normalisation)
            .init(seed, device);
        Self { task, iwv }
    }

    /// Real features of every modality, stacked per level.
    ///
    /// # Shapes
    /// - `mask`: `[batch, modalities]`
    /// - output: per level `[batch, modalities, features_l]`
    pub fn encode_all(&self, batch: &T::Batch, mask: &Tensor<2>) -> Vec<Tensor<3>> {
        encode_with(&self.task, batch, mask)
    }

    /// Forward pass with missing modalities: impute (Eq. 2), fuse (Eq. 3), decode.
    pub fn forward(&self, batch: &T::Batch, mask: &Tensor<2>) -> Forward<T::Output> {
        let features = self.encode_all(batch, mask);
        let fused = features
            .iter()
            .enumerate()
            .map(|(l, f)| {
                if self.task.mckd_level(l) {
                    fuse(impute(f.clone(), mask.clone()))
                } else {
                    fuse(f.clone())
                }
            })
            .collect();
        Forward {
            output: self.task.decode(fused),
            features,
        }
    }
}

/// Drives the two optimisers of MCKD: the task optimiser in the inner step and the IWV's own
/// Adam in the meta step.
pub struct MckdTrainer {
    /// Method hyper-parameters.
    pub config: MckdConfig,
    task_optim: ModuleOptimizer,
    iwv_optim: ModuleOptimizer,
}

impl MckdTrainer {
    /// A trainer with the given task optimiser and an Adam (ε = 1e-8 as PyTorch, coupled L2
    /// weight decay) for the IWV.
    pub fn new(config: MckdConfig, task_optim: ModuleOptimizer) -> Self {
        let iwv_optim = AdamConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(Some(WeightDecayConfig::new(config.iwv_weight_decay as f32)))
            .init();
        Self {
            config,
            task_optim,
            iwv_optim,
        }
    }

    /// Whether the meta step runs after inner iteration `iteration` (1-based).
    pub fn is_meta_iteration(&self, iteration: usize) -> bool {
        self.config.meta_interval > 0 && iteration.is_multiple_of(self.config.meta_interval)
    }

    /// The inner step: task loss + α·CKD on a batch with missing modalities; updates the task
    /// network only (the IWV is left untouched).
    ///
    /// # Shapes
    /// - `mask`: `[batch, modalities]`, 1 = present
    pub fn inner_step<T: Task>(
        &mut self,
        model: MckdModel<T>,
        batch: &T::Batch,
        mask: &Tensor<2>,
        lr: f64,
    ) -> (MckdModel<T>, StepStats) {
        let fwd = model.forward(batch, mask);
        let task_loss = model.task.loss(fwd.output, batch);
        let levels = model.task.distill_levels(fwd.features.len());
        assert!(
            !levels.is_empty() && levels.iter().all(|&l| l < fwd.features.len()),
            "distill_levels must name existing feature levels"
        );
        // The ratio is detached in the CKD loss: no graph node for it.
        let weights = model.iwv.normalised_detached();
        let track = self.config.alpha > 0.0;
        let ckd = levels
            .iter()
            .map(|&l| {
                let f = fwd.features[l].clone();
                let f = if track { f } else { f.detach() };
                ckd_loss(f, mask.clone(), weights.clone(), self.config.distance)
            })
            .reduce(|a, b| a + b)
            .expect("at least one distilled level");
        let ckd = if levels.len() > 1 {
            ckd / levels.len() as f64
        } else {
            ckd
        };
        let ckd_value = scalar(&ckd);
        let loss = if track {
            task_loss.clone() + ckd * self.config.alpha
        } else {
            task_loss.clone()
        };
        let stats = StepStats {
            task_loss: scalar(&task_loss),
            ckd_loss: ckd_value,
        };
        let mut grads = loss.backward();
        let task_grads = GradientsParams::from_module(&mut grads, &model.task);
        let MckdModel { task, iwv } = model;
        let task = self.task_optim.step(lr, task, task_grads);
        (MckdModel { task, iwv }, stats)
    }

    /// The first-order meta step on a meta-validation batch with every modality present: each
    /// modality's features (every level the task marks with [`Task::mckd_level`]) are scaled by
    /// its normalised weight, decoded, and the
    /// task loss is backpropagated to the IWV alone, which its own Adam updates.
    ///
    /// The task network runs in inference mode here (running statistics, no dropout) and its
    /// weights are constants: the meta objective is a validation loss, and nothing but the IWV
    /// may change. Returns the meta loss.
    pub fn meta_step<T: Task>(
        &mut self,
        model: MckdModel<T>,
        batch: &T::Batch,
    ) -> (MckdModel<T>, f32) {
        let device = model.iwv.weights.val().device();
        let frozen = model.task.valid();
        let b = T::batch_size(batch);
        let n = frozen.modalities().len();
        let ones = Tensor::<2>::ones([b, n], &device.clone().without_autodiff());
        let features = encode_with(&frozen, batch, &ones);
        let weights = model.iwv.normalised();
        let fused = features
            .into_iter()
            .enumerate()
            .map(|(l, f)| {
                if frozen.mckd_level(l) {
                    fuse(weight_features(f.autodiff(), weights.clone()))
                } else {
                    fuse(f.autodiff())
                }
            })
            .collect();
        let loss = frozen.loss(frozen.decode(fused), batch);
        let value = scalar(&loss);
        let mut grads = loss.backward();
        let iwv_grads = GradientsParams::from_module(&mut grads, &model.iwv);
        let MckdModel { task, iwv } = model;
        let iwv = self.iwv_optim.step(self.config.iwv_lr, iwv, iwv_grads);
        (MckdModel { task, iwv }, value)
    }
}

/// Features of every modality of a task (no imputation), per level.
fn encode_with<T: Task>(task: &T, batch: &T::Batch, mask: &Tensor<2>) -> Vec<Tensor<3>> {
    let [b, n] = mask.dims();
    assert_eq!(n, task.modalities().len(), "mask width ≠ modality count");
    assert_eq!(T::batch_size(batch), b, "mask rows ≠ batch size");
    let per_mod: Vec<Vec<Tensor<2>>> = (0..n)
        .map(|i| task.encode(batch, i, mask.clone().narrow(1, i, 1).reshape([b])))
        .collect();
    (0..per_mod[0].len())
        .map(|l| Tensor::stack(per_mod.iter().map(|v| v[l].clone()).collect(), 1))
        .collect()
}

/// A one-element tensor as `f32`.
pub fn scalar(t: &Tensor<1>) -> f32 {
    t.clone().into_scalar::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fusion::zero_missing;
    use crate::modality::{ModalitySet, mask_tensor};
    use crate::test_util::values;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::SgdConfig;
    use burn::tensor::Int;
    use burn::tensor::activation::log_softmax;

    /// Two modalities, one linear encoder each, a linear decoder.
    #[derive(Module, Debug)]
    struct Toy {
        enc: Vec<Linear>,
        dec: Linear,
        #[module(skip)]
        mods: ModalitySet,
    }

    struct ToyBatch {
        x: Vec<Tensor<2>>,
        y: Tensor<1, Int>,
    }

    impl Task for Toy {
        type Batch = ToyBatch;
        type Output = Tensor<2>;
        fn modalities(&self) -> &ModalitySet {
            &self.mods
        }
        fn encode(&self, batch: &ToyBatch, m: usize, present: Tensor<1>) -> Vec<Tensor<2>> {
            vec![self.enc[m].forward(zero_missing(batch.x[m].clone(), present))]
        }
        fn decode(&self, fused: Vec<Tensor<2>>) -> Tensor<2> {
            self.dec.forward(fused[0].clone())
        }
        fn loss(&self, logits: Tensor<2>, batch: &ToyBatch) -> Tensor<1> {
            let [b, _] = logits.dims();
            let logp = log_softmax(logits, 1);
            logp.gather(1, batch.y.clone().reshape([b, 1])).mean().neg()
        }
        fn batch_size(batch: &ToyBatch) -> usize {
            batch.y.dims()[0]
        }
    }

    fn toy(device: &Device) -> (MckdModel<Toy>, ToyBatch) {
        device.seed(1);
        let task = Toy {
            enc: vec![
                LinearConfig::new(2, 3).init(device),
                LinearConfig::new(2, 3).init(device),
            ],
            dec: LinearConfig::new(6, 2).init(device),
            mods: ModalitySet::new(["a", "b"]),
        };
        let model = MckdModel::new(task, Normalisation::Softmax, 3, device);
        let x0 = Tensor::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0, 0.5, 0.5], [3, 2]),
            device,
        );
        let x1 = Tensor::from_data(
            TensorData::new(vec![0.0f32, 2.0, 1.0, 1.0, -1.0, 0.0], [3, 2]),
            device,
        );
        let y = Tensor::from_data(TensorData::new(vec![0i64, 1, 0], [3]), device);
        (model, ToyBatch { x: vec![x0, x1], y })
    }

    fn task_params(m: &MckdModel<Toy>) -> Vec<Vec<f32>> {
        let mut out = vec![];
        for l in m.task.enc.iter().chain(std::iter::once(&m.task.dec)) {
            out.push(values(l.weight.val()));
            out.push(values(l.bias.as_ref().unwrap().val()));
        }
        out
    }

    #[test]
    fn inner_step_updates_the_task_and_leaves_the_iwv_untouched() {
        let device = Device::flex().autodiff();
        let (model, batch) = toy(&device);
        let iwv_before = model.iwv.raw_values();
        let task_before = task_params(&model);
        let mut trainer = MckdTrainer::new(MckdConfig::new(), SgdConfig::new().init());
        let mask = mask_tensor(
            &[vec![true, true], vec![true, false], vec![false, true]],
            &device,
        );
        let (model, stats) = trainer.inner_step(model, &batch, &mask, 0.5);
        assert_eq!(
            model.iwv.raw_values(),
            iwv_before,
            "inner step moved the IWV"
        );
        let task_after = task_params(&model);
        for (a, b) in task_after.iter().zip(&task_before) {
            assert_ne!(a, b, "every task parameter gets a gradient");
        }
        assert!(stats.task_loss.is_finite() && stats.ckd_loss > 0.0);
    }

    #[test]
    fn meta_step_changes_only_the_iwv() {
        let device = Device::flex().autodiff();
        let (model, batch) = toy(&device);
        let iwv_before = model.iwv.raw_values();
        let task_before = task_params(&model);
        let mut trainer = MckdTrainer::new(MckdConfig::new(), SgdConfig::new().init());
        let (model, loss) = trainer.meta_step(model, &batch);
        assert!(loss.is_finite());
        assert_eq!(
            task_params(&model),
            task_before,
            "meta step moved the task network"
        );
        let after = model.iwv.raw_values();
        for (a, b) in after.iter().zip(&iwv_before) {
            // Adam's first step moves every coordinate with a non-zero gradient by ≈ lr.
            assert!(
                (a - b).abs() > 0.5e-2 && (a - b).abs() < 1.5e-2,
                "{a} vs {b}"
            );
        }
    }

    /// Two feature levels (the input itself and twice the input); level 0 is not an MCKD
    /// level. The decoder returns the fused levels so the test can look at them.
    #[derive(Module, Debug)]
    struct TwoLevels {
        #[module(skip)]
        mods: ModalitySet,
    }

    impl Task for TwoLevels {
        type Batch = ToyBatch;
        type Output = Vec<Tensor<2>>;
        fn modalities(&self) -> &ModalitySet {
            &self.mods
        }
        fn encode(&self, batch: &ToyBatch, m: usize, present: Tensor<1>) -> Vec<Tensor<2>> {
            let x = zero_missing(batch.x[m].clone(), present);
            vec![x.clone(), x * 2.0]
        }
        fn decode(&self, fused: Vec<Tensor<2>>) -> Vec<Tensor<2>> {
            fused
        }
        fn loss(&self, out: Vec<Tensor<2>>, _: &ToyBatch) -> Tensor<1> {
            out.into_iter()
                .map(|t| t.sum())
                .reduce(|a, b| a + b)
                .unwrap()
        }
        fn batch_size(batch: &ToyBatch) -> usize {
            batch.y.dims()[0]
        }
        fn mckd_level(&self, level: usize) -> bool {
            level == 1
        }
    }

    #[test]
    fn only_mckd_levels_are_imputed() {
        let device = Device::flex();
        let (toy_model, batch) = toy(&device);
        let model = MckdModel {
            task: TwoLevels {
                mods: ModalitySet::new(["a", "b"]),
            },
            iwv: toy_model.iwv,
        };
        // Sample 0 misses modality b: level 0 keeps the zeroed input, level 1 takes a's feature.
        let mask = mask_tensor(
            &[vec![true, false], vec![true, true], vec![true, true]],
            &device,
        );
        let out = model.forward(&batch, &mask).output;
        // x0[0] = [1, 0], x1[0] = [0, 2] (missing → zeros).
        assert_eq!(
            values(out[0].clone().narrow(0, 0, 1)),
            vec![1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(
            values(out[1].clone().narrow(0, 0, 1)),
            vec![2.0, 0.0, 2.0, 0.0]
        );
        // Present samples pass through on both levels.
        assert_eq!(
            values(out[0].clone().narrow(0, 1, 1)),
            vec![0.0, 1.0, 1.0, 1.0]
        );
    }

    /// The toy's linear encoders with two feature levels, `h` and `2h`; `all` distils both.
    #[derive(Module, Debug)]
    struct ToyTwoLevels {
        toy: Toy,
        #[module(skip)]
        all: bool,
    }

    impl Task for ToyTwoLevels {
        type Batch = ToyBatch;
        type Output = Tensor<2>;
        fn modalities(&self) -> &ModalitySet {
            &self.toy.mods
        }
        fn encode(&self, batch: &ToyBatch, m: usize, present: Tensor<1>) -> Vec<Tensor<2>> {
            let h = self.toy.encode(batch, m, present).remove(0);
            vec![h.clone(), h * 2.0]
        }
        fn decode(&self, fused: Vec<Tensor<2>>) -> Tensor<2> {
            self.toy.decode(vec![fused[1].clone()])
        }
        fn loss(&self, logits: Tensor<2>, batch: &ToyBatch) -> Tensor<1> {
            self.toy.loss(logits, batch)
        }
        fn batch_size(batch: &ToyBatch) -> usize {
            Toy::batch_size(batch)
        }
        fn distill_levels(&self, levels: usize) -> Vec<usize> {
            if self.all {
                (0..levels).collect()
            } else {
                vec![levels - 1]
            }
        }
    }

    #[test]
    fn ckd_over_several_levels_is_their_mean() {
        // Level 1 is twice level 0, so its L1 distances are twice level 0's: the mean over
        // both levels is 3/4 of level 1's alone.
        let device = Device::flex().autodiff();
        let mask = mask_tensor(
            &[vec![true, true], vec![true, false], vec![true, true]],
            &device,
        );
        // One network for both runs (another test may draw from the device's generator
        // between seeding and initialisation).
        let (model, batch) = toy(&device);
        let run = |all: bool| {
            let model = model.clone();
            let model = MckdModel {
                task: ToyTwoLevels {
                    toy: model.task,
                    all,
                },
                iwv: model.iwv,
            };
            let mut trainer = MckdTrainer::new(MckdConfig::new(), SgdConfig::new().init());
            trainer.inner_step(model, &batch, &mask, 0.1).1
        };
        let last = run(false);
        let both = run(true);
        assert!(last.ckd_loss > 0.0);
        assert_eq!(both.task_loss, last.task_loss);
        assert!(
            (both.ckd_loss - 0.75 * last.ckd_loss).abs() < 1e-6 * last.ckd_loss,
            "{} vs 0.75 × {}",
            both.ckd_loss,
            last.ckd_loss
        );
    }

    #[test]
    fn meta_gradient_matches_finite_differences() {
        // The meta loss L(w) = CE(dec(fuse(f · softmax(w)))): check dL/dw by central differences.
        let device = Device::flex().autodiff();
        let (model, batch) = toy(&device);
        let plain = Device::flex();
        let meta_loss = |raw: &[f32]| -> f32 {
            let iwv = IwvConfig::new(2).init_with(raw, &device);
            let frozen = model.task.valid();
            let ones = Tensor::<2>::ones([3, 2], &plain);
            let feats = encode_with(&frozen, &batch, &ones);
            let fused = feats
                .into_iter()
                .map(|f| fuse(weight_features(f.autodiff(), iwv.normalised())))
                .collect();
            scalar(&frozen.loss(frozen.decode(fused), &batch))
        };
        let raw = model.iwv.raw_values();
        let iwv = IwvConfig::new(2).init_with(&raw, &device);
        let frozen = model.task.valid();
        let feats = encode_with(&frozen, &batch, &Tensor::<2>::ones([3, 2], &plain));
        let fused = feats
            .into_iter()
            .map(|f| fuse(weight_features(f.autodiff(), iwv.normalised())))
            .collect();
        let loss = frozen.loss(frozen.decode(fused), &batch);
        let grads = loss.backward();
        let g = values(iwv.weights.val().grad(&grads).unwrap());
        let h = 1e-2;
        for i in 0..2 {
            let mut up = raw.clone();
            up[i] += h;
            let mut down = raw.clone();
            down[i] -= h;
            let fd = (meta_loss(&up) - meta_loss(&down)) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() < 1e-3,
                "dL/dw{i}: autodiff {} vs fd {fd}",
                g[i]
            );
        }
    }
}
