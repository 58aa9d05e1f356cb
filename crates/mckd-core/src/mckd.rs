//! MCKD as a [`Method`]: the model wrapper, the inner (task) step and the first-order meta step
//! (Eq. 4), and the α = 0 Baseline.

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, OptimizerRecord};
use burn::prelude::*;
use burn::store::ModuleRecord;
use serde::{Deserialize, Serialize};

use crate::ckd::{CkdReduction, Distance, ckd_loss};
use crate::fusion::{fuse, impute, weight_features};
use crate::iwv::{Iwv, IwvConfig, Normalisation};
use crate::method::{Method, StateError, StateFiles};
use crate::modality::ModalitySet;
use crate::task::{Encoded, Task};

/// Which feature levels a part of the method acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Levels {
    /// The bottleneck alone (the reference).
    #[default]
    Bottleneck,
    /// Every level (a UNet's skips too).
    All,
}

impl Levels {
    /// Whether `level` is included, for a task whose bottleneck is level `bottleneck`.
    pub fn includes(self, level: usize, bottleneck: usize) -> bool {
        match self {
            Levels::Bottleneck => level == bottleneck,
            Levels::All => true,
        }
    }
}

/// The levels MCKD imputes (Eq. 2), distils (Eq. 5) and weights in the meta step (Eq. 4).
/// Levels that are not imputed are fused as encoded, the zeroed inputs' features included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LevelPolicy {
    /// Levels where a missing modality's feature is the mean of the present ones.
    pub impute: Levels,
    /// Levels the CKD loss distils (averaged over them, so that α keeps its scale).
    pub distill: Levels,
    /// Levels the meta step scales by the normalised IWV.
    pub weight: Levels,
}

/// The IWV's own Adam (DESIGN §1.7).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IwvOptimConfig {
    /// Learning rate (constant).
    pub lr: f64,
    /// Coupled L2 weight decay (PyTorch style; the reference 5e-4, the paper 5e-5).
    pub weight_decay: f64,
    /// Adam ε (PyTorch's 1e-8; burn's default is 1e-5).
    pub epsilon: f64,
}

impl Default for IwvOptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            weight_decay: 5e-4,
            epsilon: 1e-8,
        }
    }
}

/// Method hyper-parameters (DESIGN §1). Defaults are the reference's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MckdConfig {
    /// Weight α of the CKD loss in the inner step; 0 with meta steps is a placebo.
    pub alpha: f64,
    /// Distance of the CKD loss.
    pub distance: Distance,
    /// Batch reduction of the CKD loss.
    pub reduction: CkdReduction,
    /// Normalisation of the importance weights.
    pub normalisation: Normalisation,
    /// Levels imputed, distilled and weighted.
    pub levels: LevelPolicy,
    /// The IWV's optimiser.
    pub iwv: IwvOptimConfig,
}

impl Default for MckdConfig {
    fn default() -> Self {
        Self {
            alpha: 0.1,
            distance: Distance::L1,
            reduction: CkdReduction::BatchMean,
            normalisation: Normalisation::Softmax,
            levels: LevelPolicy::default(),
            iwv: IwvOptimConfig::default(),
        }
    }
}

/// A task together with its importance weight vector.
#[derive(Module, Debug)]
pub struct MckdModel<T: Task> {
    /// The task network (encoders + decoder).
    pub task: T,
    /// The importance weight vector, trained only by the meta step.
    pub iwv: Iwv,
}

/// Output of a forward pass with the features it was computed from.
pub struct Forward<O> {
    /// Decoder output.
    pub output: O,
    /// Per modality, the encoder's features (not imputed).
    pub encoded: Vec<Encoded>,
}

impl<O> Forward<O> {
    /// The distilled features of `level`, stacked: `[batch, modalities, features]`.
    pub fn distilled(&self, level: usize) -> Tensor<3> {
        fwd_distilled(&self.encoded, level)
    }
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

    /// Every modality's encoder output.
    ///
    /// # Shapes
    /// - `mask`: `[batch, modalities]`
    pub fn encode_all(&self, batch: &T::Batch, mask: &Tensor<2>) -> Vec<Encoded> {
        encode_with(&self.task, batch, mask)
    }

    /// Forward pass with missing modalities: impute (Eq. 2) at the levels `impute` names,
    /// fuse (Eq. 3), decode.
    pub fn forward(
        &self,
        batch: &T::Batch,
        mask: &Tensor<2>,
        impute_at: Levels,
    ) -> Forward<T::Output> {
        let encoded = self.encode_all(batch, mask);
        let bottleneck = self.task.bottleneck();
        let fused = (0..encoded[0].levels.len())
            .map(|l| {
                let f = stack_level(&encoded, l);
                if impute_at.includes(l, bottleneck) {
                    fuse(impute(f, mask.clone()))
                } else {
                    fuse(f)
                }
            })
            .collect();
        Forward {
            output: self.task.decode(fused),
            encoded,
        }
    }
}

/// The features of level `l` of every modality: `[batch, modalities, features_l]`.
fn stack_level(encoded: &[Encoded], l: usize) -> Tensor<3> {
    stack_features(encoded.iter().map(|e| e.levels[l].clone()).collect())
}

/// `Tensor::stack(features, 1)`: `[batch, F]` each → `[batch, modalities, F]`. On the CPU
/// backend as one parallel copy whose backward gives each modality a contiguous gradient
/// (`mckd_kernels::cat_channels`; burn's stack copied on one thread, and its strided
/// gradients were copied again element by element before the encoders' backward).
fn stack_features(features: Vec<Tensor<2>>) -> Tensor<3> {
    mckd_kernels::cat_channels(features.into_iter().map(|f| f.unsqueeze_dim(1)).collect())
}

/// Every modality's encoding (no imputation).
fn encode_with<T: Task>(task: &T, batch: &T::Batch, mask: &Tensor<2>) -> Vec<Encoded> {
    let [b, n] = mask.dims();
    assert_eq!(n, task.modalities().len(), "mask width ≠ modality count");
    assert_eq!(T::batch_size(batch), b, "mask rows ≠ batch size");
    let encoded: Vec<Encoded> = (0..n)
        .map(|i| task.encode(batch, i, mask.clone().narrow(1, i, 1).reshape([b])))
        .collect();
    let levels = encoded[0].levels.len();
    assert!(
        task.bottleneck() < levels && encoded.iter().all(|e| e.levels.len() == levels),
        "every modality must give the same levels, the bottleneck among them"
    );
    encoded
}

/// MCKD (α > 0, meta steps) or its Baseline (α = 0, no meta step) as a trainable [`Method`].
///
/// Owns the model and the two optimisers of MCKD: the task optimiser in the inner step and the
/// IWV's own Adam in the meta step.
pub struct Mckd<T: Task> {
    config: MckdConfig,
    model: Option<MckdModel<T>>,
    task_optim: ModuleOptimizer,
    iwv_optim: ModuleOptimizer,
    baseline: bool,
    name: &'static str,
}

/// Losses of one inner step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Task loss.
    pub task_loss: f32,
    /// CKD loss (before α); computed for logging also when α = 0.
    pub ckd_loss: f32,
}

impl<T: Task> Mckd<T> {
    /// MCKD with the given task optimiser and an Adam for the IWV ([`IwvOptimConfig`]).
    pub fn new(model: MckdModel<T>, config: MckdConfig, task_optim: ModuleOptimizer) -> Self {
        let iwv_optim = AdamConfig::new()
            .with_epsilon(config.iwv.epsilon as f32)
            .with_weight_decay(Some(WeightDecayConfig::new(config.iwv.weight_decay as f32)))
            .init();
        Self {
            config,
            model: Some(model),
            task_optim,
            iwv_optim,
            baseline: false,
            name: "mckd",
        }
    }

    /// The same method under another name in logs and tables (e.g. `placebo` for MCKD with
    /// α = 0, whose meta steps draw the same random stream as MCKD's).
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// The α = 0 Baseline: the same network and non-dedicated training without CKD and without
    /// meta steps (the CKD loss is still computed on detached features, for the log).
    pub fn baseline(model: MckdModel<T>, config: MckdConfig, task_optim: ModuleOptimizer) -> Self {
        let mut m = Self::new(
            model,
            MckdConfig {
                alpha: 0.0,
                ..config
            },
            task_optim,
        );
        m.baseline = true;
        m.name = "baseline";
        m
    }

    /// The method's hyper-parameters.
    pub fn config(&self) -> &MckdConfig {
        &self.config
    }

    /// The model.
    pub fn model(&self) -> &MckdModel<T> {
        self.model.as_ref().expect("model present between steps")
    }

    /// Replaces the model's parameters (IWV included) by those of a saved model record
    /// (`model.bpk`); the optimisers are left as they are.
    pub fn load_model(&mut self, record: &[u8]) -> Result<(), StateError> {
        let err = |e: burn::store::RecordError| StateError::Load {
            name: MODEL_FILE.into(),
            problem: format!("{e:?}"),
        };
        let record = ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(record.to_vec()))
            .map_err(err)?;
        let current = self.model.take().expect("model present between steps");
        match current.clone().try_load_record(record) {
            Ok(m) => {
                self.model = Some(m);
                Ok(())
            }
            Err(e) => {
                self.model = Some(current);
                Err(err(e))
            }
        }
    }

    /// The model, consuming the method.
    pub fn into_model(self) -> MckdModel<T> {
        self.model.expect("model present between steps")
    }

    /// The inner step: task loss + α·CKD on a batch with missing modalities; updates the task
    /// network only (the IWV is left untouched).
    ///
    /// # Shapes
    /// - `mask`: `[batch, modalities]`, 1 = present
    pub fn inner_step(&mut self, batch: &T::Batch, mask: &Tensor<2>, lr: f64) -> StepStats {
        let model = self.model.take().expect("model present between steps");
        let levels = self.config.levels;
        let fwd = model.forward(batch, mask, levels.impute);
        let task_loss = model.task.loss(fwd.output, batch);
        let bottleneck = model.task.bottleneck();
        let distilled: Vec<usize> = (0..fwd.encoded[0].levels.len())
            .filter(|&l| levels.distill.includes(l, bottleneck))
            .collect();
        // The ratio is detached in the CKD loss: no graph node for it.
        let weights = model.iwv.normalised_detached();
        let track = self.config.alpha > 0.0;
        let ckd = distilled
            .iter()
            .map(|&l| {
                let f = fwd_distilled(&fwd.encoded, l);
                let f = if track { f } else { f.detach() };
                ckd_loss(
                    f,
                    mask.clone(),
                    weights.clone(),
                    self.config.distance,
                    self.config.reduction,
                )
            })
            .reduce(|a, b| a + b)
            .expect("at least one distilled level");
        let ckd = if distilled.len() > 1 {
            ckd / distilled.len() as f64
        } else {
            ckd
        };
        let stats = StepStats {
            task_loss: scalar(&task_loss),
            ckd_loss: scalar(&ckd),
        };
        let loss = if track {
            task_loss + ckd * self.config.alpha
        } else {
            task_loss
        };
        let mut grads = loss.backward();
        let task_grads = GradientsParams::from_module(&mut grads, &model.task);
        let MckdModel { task, iwv } = model;
        let task = self.task_optim.step(lr, task, task_grads);
        self.model = Some(MckdModel { task, iwv });
        stats
    }

    /// The first-order meta step on a meta-validation batch with every modality present: each
    /// modality's features at the levels `weight` names are scaled by its normalised weight,
    /// decoded, and the task loss is backpropagated to the IWV alone, which its own Adam
    /// updates.
    ///
    /// The task network runs in inference mode here (running statistics, no dropout) and its
    /// weights are constants: the meta objective is a validation loss, and nothing but the IWV
    /// may change. Returns the meta loss.
    pub fn meta_step_on(&mut self, batch: &T::Batch) -> f32 {
        let model = self.model.take().expect("model present between steps");
        let device = model.iwv.weights.val().device();
        let frozen = model.task.valid();
        let b = T::batch_size(batch);
        let n = frozen.modalities().len();
        let ones = Tensor::<2>::ones([b, n], &device.clone().without_autodiff());
        let encoded = encode_with(&frozen, batch, &ones);
        let weights = model.iwv.normalised();
        let bottleneck = frozen.bottleneck();
        let weight_at = self.config.levels.weight;
        let fused = (0..encoded[0].levels.len())
            .map(|l| {
                let f = stack_level(&encoded, l).autodiff();
                if weight_at.includes(l, bottleneck) {
                    fuse(weight_features(f, weights.clone()))
                } else {
                    fuse(f)
                }
            })
            .collect();
        let loss = frozen.loss(frozen.decode(fused), batch);
        let value = scalar(&loss);
        let mut grads = loss.backward();
        let iwv_grads = GradientsParams::from_module(&mut grads, &model.iwv);
        let MckdModel { task, iwv } = model;
        let iwv = self.iwv_optim.step(self.config.iwv.lr, iwv, iwv_grads);
        self.model = Some(MckdModel { task, iwv });
        value
    }
}

/// Distilled features of level `l`: `[batch, modalities, features]`.
fn fwd_distilled(encoded: &[Encoded], l: usize) -> Tensor<3> {
    stack_features(encoded.iter().map(|e| e.distilled(l)).collect())
}

const MODEL_FILE: &str = "model.bpk";
const TASK_OPTIM_FILE: &str = "optim_task.bpk";
const IWV_OPTIM_FILE: &str = "optim_iwv.bpk";
const TASK_RNG_FILE: &str = "task_rng.bin";

impl<T: Task> Method for Mckd<T> {
    type Batch = T::Batch;
    type Output = T::Output;

    fn name(&self) -> &str {
        self.name
    }

    fn modalities(&self) -> &ModalitySet {
        self.model().task.modalities()
    }

    fn term_names(&self) -> Vec<String> {
        vec!["task_loss".into(), "ckd_loss".into()]
    }

    fn train_step(&mut self, batch: &T::Batch, mask: &Tensor<2>, lr: f64) -> Vec<f32> {
        let s = self.inner_step(batch, mask, lr);
        vec![s.task_loss, s.ckd_loss]
    }

    fn has_meta_step(&self) -> bool {
        !self.baseline
    }

    fn meta_step(&mut self, batch: &T::Batch) -> f32 {
        self.meta_step_on(batch)
    }

    fn state_names(&self) -> Vec<String> {
        self.modalities()
            .names()
            .iter()
            .map(|n| format!("iwv_{n}"))
            .collect()
    }

    fn state_values(&self) -> Vec<f32> {
        self.model().iwv.normalised_values()
    }

    fn predict(&self, batch: &T::Batch, mask: &Tensor<2>) -> T::Output {
        self.model()
            .valid()
            .forward(batch, mask, self.config.levels.impute)
            .output
    }

    fn save_state(&self) -> Result<StateFiles, StateError> {
        let save = |name: &str, r: Result<burn::tensor::Bytes, burn::store::RecordError>| {
            r.map(|b| (name.to_string(), b.to_vec()))
                .map_err(|e| StateError::Save {
                    name: name.into(),
                    problem: format!("{e:?}"),
                })
        };
        let mut files = StateFiles::new();
        // From the inference copy: burn keeps a batch norm's latest running statistics per
        // thread until they are synced, and `valid()` syncs them, while `into_record` on the
        // training module reads them one update behind (a resumed run would then diverge).
        let (k, v) = save(MODEL_FILE, self.model().valid().into_record().into_bytes())?;
        files.insert(k, v);
        let (k, v) = save(TASK_OPTIM_FILE, self.task_optim.into_bytes())?;
        files.insert(k, v);
        let (k, v) = save(IWV_OPTIM_FILE, self.iwv_optim.into_bytes())?;
        files.insert(k, v);
        files.insert(TASK_RNG_FILE.into(), self.model().task.random_state());
        Ok(files)
    }

    fn load_state(&mut self, files: &StateFiles) -> Result<(), StateError> {
        let load_err = |name: &str| {
            let name = name.to_string();
            move |e: burn::store::RecordError| StateError::Load {
                name: name.clone(),
                problem: format!("{e:?}"),
            }
        };
        let bytes = |name: &str| -> Result<burn::tensor::Bytes, StateError> {
            Ok(burn::tensor::Bytes::from_bytes_vec(
                StateError::get(files, name)?.to_vec(),
            ))
        };
        self.load_model(StateError::get(files, MODEL_FILE)?)?;
        let opt = |name: &str| -> Result<OptimizerRecord, StateError> {
            OptimizerRecord::from_bytes(bytes(name)?).map_err(load_err(name))
        };
        let task_rec = opt(TASK_OPTIM_FILE)?;
        let iwv_rec = opt(IWV_OPTIM_FILE)?;
        self.task_optim =
            std::mem::replace(&mut self.task_optim, AdamConfig::new().init()).load_record(task_rec);
        self.iwv_optim =
            std::mem::replace(&mut self.iwv_optim, AdamConfig::new().init()).load_record(iwv_rec);
        self.model()
            .task
            .set_random_state(StateError::get(files, TASK_RNG_FILE)?)
            .map_err(|problem| StateError::Load {
                name: TASK_RNG_FILE.into(),
                problem,
            })
    }
}

/// A one-element tensor as `f32`.
pub fn scalar(t: &Tensor<1>) -> f32 {
    t.clone().into_scalar::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fusion::zero_missing;
    use crate::modality::mask_tensor;
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
        fn encode(&self, batch: &ToyBatch, m: usize, present: Tensor<1>) -> Encoded {
            vec![self.enc[m].forward(zero_missing(batch.x[m].clone(), present))].into()
        }
        fn bottleneck(&self) -> usize {
            0
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
        let mut trainer = Mckd::new(model, MckdConfig::default(), SgdConfig::new().init());
        let mask = mask_tensor(
            &[vec![true, true], vec![true, false], vec![false, true]],
            &device,
        );
        let stats = trainer.inner_step(&batch, &mask, 0.5);
        let model = trainer.model();
        assert_eq!(
            model.iwv.raw_values(),
            iwv_before,
            "inner step moved the IWV"
        );
        let task_after = task_params(model);
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
        let mut trainer = Mckd::new(model, MckdConfig::default(), SgdConfig::new().init());
        let loss = trainer.meta_step(&batch);
        let model = trainer.model();
        assert!(loss.is_finite());
        assert_eq!(
            task_params(model),
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
        fn encode(&self, batch: &ToyBatch, m: usize, present: Tensor<1>) -> Encoded {
            let x = zero_missing(batch.x[m].clone(), present);
            vec![x.clone(), x * 2.0].into()
        }
        fn bottleneck(&self) -> usize {
            1
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
        let out = model.forward(&batch, &mask, Levels::Bottleneck).output;
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

    /// The toy's linear encoders with two feature levels, `h` and `2h` (the bottleneck).
    #[derive(Module, Debug)]
    struct ToyTwoLevels {
        toy: Toy,
    }

    impl Task for ToyTwoLevels {
        type Batch = ToyBatch;
        type Output = Tensor<2>;
        fn modalities(&self) -> &ModalitySet {
            &self.toy.mods
        }
        fn encode(&self, batch: &ToyBatch, m: usize, present: Tensor<1>) -> Encoded {
            let h = self.toy.encode(batch, m, present).levels.remove(0);
            vec![h.clone(), h * 2.0].into()
        }
        fn bottleneck(&self) -> usize {
            1
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
        let run = |distill: Levels| {
            let model = model.clone();
            let model = MckdModel {
                task: ToyTwoLevels { toy: model.task },
                iwv: model.iwv,
            };
            let config = MckdConfig {
                levels: LevelPolicy {
                    distill,
                    ..LevelPolicy::default()
                },
                ..MckdConfig::default()
            };
            let mut trainer = Mckd::new(model, config, SgdConfig::new().init());
            trainer.inner_step(&batch, &mask, 0.1)
        };
        let last = run(Levels::Bottleneck);
        let both = run(Levels::All);
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
            let enc = encode_with(&frozen, &batch, &ones);
            let fused = vec![fuse(weight_features(
                stack_level(&enc, 0).autodiff(),
                iwv.normalised(),
            ))];
            scalar(&frozen.loss(frozen.decode(fused), &batch))
        };
        let raw = model.iwv.raw_values();
        let iwv = IwvConfig::new(2).init_with(&raw, &device);
        let frozen = model.task.valid();
        let enc = encode_with(&frozen, &batch, &Tensor::<2>::ones([3, 2], &plain));
        let fused = vec![fuse(weight_features(
            stack_level(&enc, 0).autodiff(),
            iwv.normalised(),
        ))];
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

    /// The toy with noise added to the fused features only: a stand-in for an encoder that ends
    /// in dropout, whose distilled features are its deterministic output.
    #[derive(Module, Debug)]
    struct NoisyToy {
        toy: Toy,
        #[module(skip)]
        noise: f32,
    }

    impl Task for NoisyToy {
        type Batch = ToyBatch;
        type Output = Tensor<2>;
        fn modalities(&self) -> &ModalitySet {
            &self.toy.mods
        }
        fn encode(&self, batch: &ToyBatch, m: usize, present: Tensor<1>) -> Encoded {
            let h = self.toy.encode(batch, m, present).levels.remove(0);
            Encoded {
                levels: vec![h.clone() + self.noise * (m as f32 + 1.0)],
                distilled: Some(vec![h]),
            }
        }
        fn bottleneck(&self) -> usize {
            0
        }
        fn decode(&self, fused: Vec<Tensor<2>>) -> Tensor<2> {
            self.toy.decode(fused)
        }
        fn loss(&self, logits: Tensor<2>, batch: &ToyBatch) -> Tensor<1> {
            self.toy.loss(logits, batch)
        }
        fn batch_size(batch: &ToyBatch) -> usize {
            Toy::batch_size(batch)
        }
    }

    #[test]
    fn ckd_distils_the_deterministic_features() {
        let device = Device::flex().autodiff();
        let (model, batch) = toy(&device);
        let mask = mask_tensor(&vec![vec![true, true]; 3], &device);
        let ckd = |noise: f32| {
            let model = MckdModel {
                task: NoisyToy {
                    toy: model.task.clone(),
                    noise,
                },
                iwv: model.iwv.clone(),
            };
            let mut m = Mckd::new(model, MckdConfig::default(), SgdConfig::new().init());
            m.inner_step(&batch, &mask, 0.1)
        };
        let (a, b) = (ckd(0.0), ckd(3.0));
        assert_eq!(
            a.ckd_loss, b.ckd_loss,
            "noise on the fused path reached the CKD loss"
        );
        assert_ne!(a.task_loss, b.task_loss, "the fused path carries the noise");
    }

    #[test]
    fn baseline_has_no_meta_step_and_no_ckd_gradient() {
        let device = Device::flex().autodiff();
        let (model, batch) = toy(&device);
        let mask = mask_tensor(
            &[vec![true, true], vec![true, false], vec![false, true]],
            &device,
        );
        let mut mckd0 = Mckd::new(
            model.clone(),
            MckdConfig {
                alpha: 0.0,
                ..MckdConfig::default()
            },
            SgdConfig::new().init(),
        );
        let mut base = Mckd::baseline(model, MckdConfig::default(), SgdConfig::new().init());
        assert!(!base.has_meta_step() && mckd0.has_meta_step());
        assert_eq!(base.name(), "baseline");
        assert_eq!(base.config().alpha, 0.0);
        // α = 0: the same update as MCKD with α = 0 (the CKD loss is only logged).
        let s0 = mckd0.inner_step(&batch, &mask, 0.5);
        let s1 = base.inner_step(&batch, &mask, 0.5);
        assert_eq!(s0, s1);
        assert_eq!(task_params(mckd0.model()), task_params(base.model()));
    }

    /// A boxed method (a trait object, as a task that picks its method at run time holds it)
    /// trains and predicts as the method itself.
    #[test]
    fn a_boxed_method_is_the_method() {
        let device = Device::flex().autodiff();
        let (model, batch) = toy(&device);
        let mask = mask_tensor(
            &[vec![true, true], vec![true, false], vec![false, true]],
            &device,
        );
        let mut plain = Mckd::new(
            model.clone(),
            MckdConfig::default(),
            SgdConfig::new().init(),
        );
        let mut boxed: Box<dyn Method<Batch = ToyBatch, Output = Tensor<2>>> = Box::new(Mckd::new(
            model,
            MckdConfig::default(),
            SgdConfig::new().init(),
        ));
        assert_eq!(boxed.name(), "mckd");
        assert!(boxed.has_meta_step());
        assert_eq!(boxed.term_names(), plain.term_names());
        assert_eq!(boxed.state_names(), plain.state_names());
        for _ in 0..2 {
            assert_eq!(
                boxed.train_step(&batch, &mask, 0.5),
                plain.train_step(&batch, &mask, 0.5)
            );
            assert_eq!(boxed.meta_step(&batch), plain.meta_step(&batch));
        }
        assert_eq!(boxed.state_values(), plain.state_values());
        let plain_device = Device::flex();
        let pb = ToyBatch {
            x: batch.x.iter().map(|t| t.clone().inner()).collect(),
            y: batch.y.clone().inner(),
        };
        let pm = mask.inner();
        assert_eq!(
            values(boxed.predict(&pb, &pm)),
            values(plain.predict(&pb, &pm))
        );
        let _ = plain_device;
        assert!(boxed.save_state().unwrap().contains_key("model.bpk"));
    }

    #[test]
    fn saved_state_continues_training_identically() {
        let device = Device::flex().autodiff();
        let (model, batch) = toy(&device);
        let mask = mask_tensor(
            &[vec![true, true], vec![true, false], vec![false, true]],
            &device,
        );
        let adam = || burn::optim::AdamConfig::new().init();
        let mut a = Mckd::new(model.clone(), MckdConfig::default(), adam());
        a.train_step(&batch, &mask, 0.1);
        a.meta_step(&batch);
        let state = a.save_state().unwrap();
        // A fresh method from another initialisation, restored from the state.
        let (other, _) = toy(&device);
        let other = MckdModel {
            iwv: IwvConfig::new(2).init(99, &device),
            ..other
        };
        let mut b = Mckd::new(other, MckdConfig::default(), adam());
        b.load_state(&state).unwrap();
        for _ in 0..3 {
            assert_eq!(
                a.train_step(&batch, &mask, 0.1),
                b.train_step(&batch, &mask, 0.1)
            );
            assert_eq!(a.meta_step(&batch), b.meta_step(&batch));
        }
        assert_eq!(task_params(a.model()), task_params(b.model()));
        assert_eq!(a.model().iwv.raw_values(), b.model().iwv.raw_values());
        let mut missing = state.clone();
        missing.remove("optim_iwv.bpk");
        let err = b.load_state(&missing).unwrap_err().to_string();
        assert!(
            err.contains("optim_iwv.bpk") && err.contains("missing"),
            "{err}"
        );
        let mut broken = state;
        broken.insert("model.bpk".into(), vec![1, 2, 3]);
        let err = b.load_state(&broken).unwrap_err().to_string();
        assert!(err.contains("model.bpk"), "{err}");
    }
}
