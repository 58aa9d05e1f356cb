//! The peers of the paper's Table 1 as methods of the harness: U-HeMIS, U-HVED, ShaSpec,
//! mmFormer and Robust-MSeg, each in a CPU-sized form built from the same blocks and widths as
//! our UNet (base `c`; PEERS §1.4), trained by the shared loop on the same crops, budget and
//! subset sampling, and evaluated on the 15 subsets like MCKD.
//!
//! * [`hemis`]: per-modality encoders, mean and variance over the present modalities at every
//!   level.
//! * [`hved`]: per-modality Gaussian encoders, a product of Gaussians with a standard-normal
//!   prior at every level, sampling, the KL terms over all 15 subsets, image reconstruction.
//! * [`shaspec`]: a shared and four specific encoders, residual fusion, the domain
//!   classification (DCO) and distribution alignment (DAO) objectives.
//! * [`mmformer`]: per-modality encoders, intra- and inter-modal transformers, region fusion at
//!   every level, auxiliary decoders.
//! * [`robustseg`]: content and style encoders, gated fusion, reconstruction through AdaIN.
//!
//! Every peer gets our three sigmoid regions and [`crate::model::segmentation_loss`] by default,
//! so that only the missing-modality mechanism differs; `native_head` switches the peers whose
//! own head is a softmax (all but ShaSpec) to it, with their own loss ([`common::Head`]).
//!
//! A modality missing at prediction is never read: its input is replaced by zeros with a
//! masked fill (never a multiplication, which would keep a NaN), and a modality no sample of
//! the batch has is not computed at all. In training, the auxiliary losses of U-HVED, mmFormer
//! and Robust-MSeg read the dropped modalities as their authors' code does on complete training
//! data (reconstruction targets, the KL over every subset, the single-modality decoders, style
//! codes); `aux_reads_dropped: false` restricts them to the present ones.
//!
//! [`Peer`] wraps any [`PeerNet`] as a [`mckd_core::Method`] (one optimiser, its own seeded
//! generator for sampling, checkpoints as named blobs), and [`PeerPredictor`] as a
//! [`crate::infer::TilePredictor`].

pub mod common;
pub mod hemis;
pub mod hved;
pub mod mmformer;
pub mod robustseg;
pub mod shaspec;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, OptimizerRecord};
use burn::prelude::*;
use burn::store::ModuleRecord;
use mckd_core::rng::{rng_from_state, rng_state};
use mckd_core::{Method, ModalitySet, StateError, StateFiles, scalar};
use mckd_volume::MODALITIES;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::infer::TilePredictor;
use crate::model::BratsBatch;

pub use common::{Head, NativeLoss, Presence};
pub use hemis::Hemis;
pub use hved::Hved;
pub use mmformer::MmFormer;
pub use robustseg::RobustSeg;
pub use shaspec::ShaSpec;

/// One weighted loss term of a training forward.
pub struct Term {
    /// Its value (logged).
    pub value: Tensor<1>,
    /// Its weight in the optimised sum (0: logged only).
    pub weight: f64,
}

impl Term {
    /// A term of weight `weight`.
    pub fn new(value: Tensor<1>, weight: f64) -> Self {
        Self { value, weight }
    }
}

/// A peer network: its training forward with named loss terms, and its prediction.
pub trait PeerNet: Module {
    /// Names of the terms [`train_terms`](PeerNet::train_terms) returns, in order; the
    /// segmentation term first, named `task_loss` as MCKD's.
    fn term_names(&self) -> Vec<String>;

    /// One training forward on a batch with presence `mask`; the step minimises the weighted
    /// sum of the terms. `rng` is the method's own generator (sampling, random choices).
    ///
    /// # Shapes
    /// - `mask`: `[batch, 4]`, 1 = present
    fn train_terms(&self, batch: &BratsBatch, mask: &Tensor<2>, rng: &mut ChaCha8Rng) -> Vec<Term>;

    /// Region logits (ET, TC, WT) for presence `mask`, deterministic; a modality marked 0 is
    /// not read.
    ///
    /// # Shapes
    /// - `batch.images`: 4 × `[B, 1, D, H, W]` (multiples of 8); `mask`: `[B, 4]`
    /// - output: `[B, 3, D, H, W]`
    fn predict(&self, batch: &BratsBatch, mask: &Tensor<2>) -> Tensor<5>;
}

const MODEL_FILE: &str = "model.bpk";
const OPTIM_FILE: &str = "optim_task.bpk";
const RNG_FILE: &str = "peer_rng.bin";

/// A peer network as a trainable [`Method`]: the network, its optimiser, and its generator.
pub struct Peer<N: PeerNet> {
    name: &'static str,
    net: Option<N>,
    optim: ModuleOptimizer,
    rng: ChaCha8Rng,
    modalities: ModalitySet,
}

impl<N: PeerNet> Peer<N> {
    /// The method `name` training `net` with `optim`; its generator is seeded with `seed`.
    pub fn new(name: &'static str, net: N, optim: ModuleOptimizer, seed: u64) -> Self {
        Self {
            name,
            net: Some(net),
            optim,
            rng: ChaCha8Rng::seed_from_u64(seed),
            modalities: ModalitySet::new(MODALITIES),
        }
    }

    /// The network.
    pub fn net(&self) -> &N {
        self.net.as_ref().expect("network present between steps")
    }

    /// The network's record as bytes (`model.bpk`).
    pub fn model_bytes(&self) -> Result<Vec<u8>, StateError> {
        self.net()
            .clone()
            .into_record()
            .into_bytes()
            .map(|b| b.to_vec())
            .map_err(|e| StateError::Save {
                name: MODEL_FILE.into(),
                problem: format!("{e:?}"),
            })
    }

    /// Replaces the network's parameters by those of a saved record (`model.bpk`).
    pub fn load_model(&mut self, record: &[u8]) -> Result<(), StateError> {
        let err = |e: burn::store::RecordError| StateError::Load {
            name: MODEL_FILE.into(),
            problem: format!("{e:?}"),
        };
        let record = ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(record.to_vec()))
            .map_err(err)?;
        let current = self.net.take().expect("network present between steps");
        match current.clone().try_load_record(record) {
            Ok(n) => {
                self.net = Some(n);
                Ok(())
            }
            Err(e) => {
                self.net = Some(current);
                Err(err(e))
            }
        }
    }

    /// The inference copy of the network as a tile predictor.
    pub fn predictor(&self) -> PeerPredictor<N> {
        PeerPredictor {
            net: self.net().valid(),
        }
    }
}

impl<N: PeerNet> Method for Peer<N> {
    type Batch = BratsBatch;
    type Output = Tensor<5>;

    fn name(&self) -> &str {
        self.name
    }

    fn modalities(&self) -> &ModalitySet {
        &self.modalities
    }

    fn term_names(&self) -> Vec<String> {
        self.net().term_names()
    }

    fn train_step(&mut self, batch: &BratsBatch, mask: &Tensor<2>, lr: f64) -> Vec<f32> {
        let net = self.net.take().expect("network present between steps");
        let terms = net.train_terms(batch, mask, &mut self.rng);
        debug_assert_eq!(terms.len(), net.term_names().len());
        let values = terms.iter().map(|t| scalar(&t.value)).collect();
        let loss = terms
            .into_iter()
            .filter(|t| t.weight != 0.0)
            .map(|t| t.value * t.weight)
            .reduce(|a, b| a + b)
            .expect("a segmentation term");
        let mut grads = loss.backward();
        let grads = GradientsParams::from_module(&mut grads, &net);
        self.net = Some(self.optim.step(lr, net, grads));
        values
    }

    fn predict(&self, batch: &BratsBatch, mask: &Tensor<2>) -> Tensor<5> {
        self.net().valid().predict(batch, mask)
    }

    fn save_state(&self) -> Result<StateFiles, StateError> {
        let mut files = StateFiles::new();
        files.insert(MODEL_FILE.into(), self.model_bytes()?);
        let optim = self
            .optim
            .into_bytes()
            .map_err(|e| StateError::Save {
                name: OPTIM_FILE.into(),
                problem: format!("{e:?}"),
            })?
            .to_vec();
        files.insert(OPTIM_FILE.into(), optim);
        files.insert(RNG_FILE.into(), rng_state(&self.rng).to_vec());
        Ok(files)
    }

    fn load_state(&mut self, files: &StateFiles) -> Result<(), StateError> {
        self.load_model(StateError::get(files, MODEL_FILE)?)?;
        let bytes = StateError::get(files, OPTIM_FILE)?.to_vec();
        let record = OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| StateError::Load {
                name: OPTIM_FILE.into(),
                problem: format!("{e:?}"),
            })?;
        self.optim =
            std::mem::replace(&mut self.optim, AdamConfig::new().init()).load_record(record);
        self.rng =
            rng_from_state(StateError::get(files, RNG_FILE)?).ok_or_else(|| StateError::Load {
                name: RNG_FILE.into(),
                problem: "not a generator state".into(),
            })?;
        Ok(())
    }
}

/// A peer network in inference mode, as a tile predictor.
pub struct PeerPredictor<N: PeerNet> {
    net: N,
}

impl<N: PeerNet> PeerPredictor<N> {
    /// A network on a device without autodiff (its `valid()` copy).
    pub fn from_net(net: N) -> Self {
        Self { net }
    }
}

impl<N: PeerNet> TilePredictor for PeerPredictor<N> {
    fn predict_tile(&self, batch: &BratsBatch, mask: &Tensor<2>) -> Tensor<5> {
        self.net.predict(batch, mask)
    }
}

/// U-HeMIS's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HemisConfig {
    /// Softmax over {background, NCR/NET, ED, ET} with NiftyNet's CE + Dice instead of our
    /// region head.
    pub native_head: bool,
}

/// U-HVED's settings (the authors' weights: 0.1 KL, 0.1 reconstruction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HvedConfig {
    /// Softmax head with NiftyNet's CE + Dice.
    pub native_head: bool,
    /// Weight of the KL terms.
    pub kl_weight: f64,
    /// Weight of the reconstruction MSE (summed over the reconstructed modalities).
    pub rec_weight: f64,
    /// The KL over all 15 subsets and the reconstruction of any modality, dropped ones
    /// included (the authors' recipe on complete training data); false: only the subsets of
    /// the present modalities and their reconstructions.
    pub aux_reads_dropped: bool,
}

impl Default for HvedConfig {
    fn default() -> Self {
        Self {
            native_head: false,
            kl_weight: 0.1,
            rec_weight: 0.1,
            aux_reads_dropped: true,
        }
    }
}

/// ShaSpec's settings (the authors' α = 0.1 for DAO, β = 0.02 for DCO). Its own head is our
/// three sigmoid regions with Dice + BCE, so it has no native-head option.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShaspecConfig {
    /// Weight of the distribution alignment objective (L1 between shared features).
    pub dao_weight: f64,
    /// Weight of the domain classification objective (CE of the modality from specific
    /// features).
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

/// mmFormer's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MmformerConfig {
    /// Softmax head with mmFormer's weighted CE + Dice.
    pub native_head: bool,
    /// Attention heads (the token dimension is the bottleneck's `8c` channels).
    pub heads: usize,
    /// Weight of the single-modality decoders' loss (the authors': 1).
    pub sep_weight: f64,
    /// Weight of the auxiliary fusion predictions' loss (the authors': 1).
    pub prm_weight: f64,
    /// The single-modality decoder may be trained on a dropped modality (the authors' code
    /// trains it on all four); false: only on modalities every sample has.
    pub aux_reads_dropped: bool,
}

impl Default for MmformerConfig {
    fn default() -> Self {
        Self {
            native_head: false,
            heads: 4,
            sep_weight: 1.0,
            prm_weight: 1.0,
            aux_reads_dropped: true,
        }
    }
}

/// Robust-MSeg's settings (the authors' 0.1 reconstruction, 0.1 KL, 8-d style codes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RobustSegConfig {
    /// Softmax head with Robust-MSeg's weighted CE + Dice.
    pub native_head: bool,
    /// Weight of the L1 reconstruction (summed over the reconstructed modalities).
    pub rec_weight: f64,
    /// Weight of the KL of the AdaIN parameters (summed over the modalities).
    pub kl_weight: f64,
    /// Length of the style codes.
    pub style_dim: usize,
    /// Style codes and reconstructions of every modality, dropped ones included (the
    /// authors' code); false: only of modalities every sample has.
    pub aux_reads_dropped: bool,
}

impl Default for RobustSegConfig {
    fn default() -> Self {
        Self {
            native_head: false,
            rec_weight: 0.1,
            kl_weight: 0.1,
            style_dim: 8,
            aux_reads_dropped: true,
        }
    }
}

/// The settings of every peer (an experiment trains each with its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PeersConfig {
    /// U-HeMIS.
    pub hemis: HemisConfig,
    /// U-HVED.
    pub hved: HvedConfig,
    /// ShaSpec.
    pub shaspec: ShaspecConfig,
    /// mmFormer.
    pub mmformer: MmformerConfig,
    /// Robust-MSeg.
    pub robustseg: RobustSegConfig,
}

impl PeersConfig {
    /// Every peer with a native head uses it (`--native-head`).
    pub fn set_native_head(&mut self, on: bool) {
        self.hemis.native_head = on;
        self.hved.native_head = on;
        self.mmformer.native_head = on;
        self.robustseg.native_head = on;
    }

    /// Every peer's auxiliary losses read only the present modalities (`--aux-present-only`).
    pub fn set_aux_reads_dropped(&mut self, on: bool) {
        self.hved.aux_reads_dropped = on;
        self.mmformer.aux_reads_dropped = on;
        self.robustseg.aux_reads_dropped = on;
    }
}

/// The test helpers every peer's tests share: random batches, poisoned inputs, the 15 masks.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A batch of `b` random crops of `dhw` with random region targets (nested), seeded.
    pub fn batch(b: usize, dhw: [usize; 3], seed: u64, device: &Device) -> BratsBatch {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n: usize = dhw.iter().product();
        let [d, h, w] = dhw;
        let images = (0..4)
            .map(|_| {
                let v: Vec<f32> = (0..b * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                Tensor::from_data(TensorData::new(v, [b, 1, d, h, w]), device)
            })
            .collect();
        let mut t = Vec::with_capacity(b * 3 * n);
        for _ in 0..b {
            let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..4u8)).collect();
            // 0 background, 1 NCR, 2 ED, 3 ET → ET, TC, WT.
            t.extend(labels.iter().map(|&l| f32::from(u8::from(l == 3))));
            t.extend(
                labels
                    .iter()
                    .map(|&l| f32::from(u8::from(l == 1 || l == 3))),
            );
            t.extend(labels.iter().map(|&l| f32::from(u8::from(l != 0))));
        }
        BratsBatch {
            images,
            targets: Some(Tensor::from_data(
                TensorData::new(t, [b, 3, d, h, w]),
                device,
            )),
        }
    }

    /// `batch` with NaN in every modality sample `mask` marks missing.
    pub fn poisoned(batch: &BratsBatch, rows: &[Vec<bool>]) -> BratsBatch {
        let images = batch
            .images
            .iter()
            .enumerate()
            .map(|(m, x)| {
                let [b, ..] = x.dims();
                let missing: Vec<bool> = (0..b).map(|i| !rows[i][m]).collect();
                let mask = Tensor::<1, burn::tensor::Bool>::from_data(
                    TensorData::new(missing, [b]),
                    &x.device(),
                )
                .reshape([b, 1, 1, 1, 1])
                .expand(x.shape());
                x.clone().mask_fill(mask, f32::NAN)
            })
            .collect();
        BratsBatch {
            images,
            targets: batch.targets.clone(),
        }
    }

    /// Whether every value is finite.
    pub fn finite<const D: usize>(t: Tensor<D>) -> bool {
        mckd_train::to_vec(t).iter().all(|v| v.is_finite())
    }

    /// For each of the 15 subsets (batch-level) and one per-sample mixed mask: the prediction
    /// on a poisoned batch has the right shape and is finite, and equals the prediction on the
    /// clean batch (nothing of a missing modality is read).
    pub fn check_all_masks<N: PeerNet>(net: &N, dhw: [usize; 3], device: &Device) {
        let b = 2;
        let clean = batch(b, dhw, 11, device);
        let [d, h, w] = dhw;
        let mut masks: Vec<Vec<Vec<bool>>> = mckd_core::all_subsets(4)
            .into_iter()
            .map(|m| vec![m; b])
            .collect();
        masks.push(vec![
            vec![true, false, true, false],
            vec![false, true, false, true],
        ]);
        for rows in masks {
            let mask = mckd_core::mask_tensor(&rows, device);
            let bad = poisoned(&clean, &rows);
            let out = net.predict(&bad, &mask);
            assert_eq!(out.dims(), [b, 3, d, h, w], "mask {rows:?}");
            let (got, want) = (
                mckd_train::to_vec(out),
                mckd_train::to_vec(net.predict(&clean, &mask)),
            );
            assert!(
                got.iter().all(|v| v.is_finite()),
                "mask {rows:?}: NaN leaked"
            );
            assert_eq!(
                got, want,
                "mask {rows:?}: a missing modality changed the output"
            );
        }
    }

    /// One training forward on a poisoned batch with presence `rows` gives finite terms and
    /// finite gradients (the auxiliary losses read only present modalities).
    pub fn check_training_ignores_missing<N: PeerNet>(
        net: &N,
        dhw: [usize; 3],
        rows: &[Vec<bool>],
        device: &Device,
    ) {
        let clean = batch(rows.len(), dhw, 12, device);
        let bad = poisoned(&clean, rows);
        let mask = mckd_core::mask_tensor(rows, device);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let terms = net.train_terms(&bad, &mask, &mut rng);
        assert_eq!(terms.len(), net.term_names().len());
        let loss = terms
            .into_iter()
            .map(|t| {
                assert!(finite(t.value.clone()), "a term is not finite");
                t.value * t.weight
            })
            .reduce(|a, b| a + b)
            .unwrap();
        let mut grads = loss.backward();
        let grads = GradientsParams::from_module(&mut grads, net);
        let mut visitor = FiniteGrads {
            grads: &grads,
            checked: 0,
            bad: 0,
        };
        net.visit(&mut visitor);
        assert!(visitor.checked > 0, "no gradient");
        assert_eq!(visitor.bad, 0, "{} non-finite gradients", visitor.bad);
    }

    /// Finite-difference check of every training term's gradient with respect to the image of
    /// modality `m` (present in `rows`), through the whole network: along the unit direction
    /// `v = g/|g|` of the autodiff gradient `g`, the central difference `(f(x + hv) − f(x −
    /// hv))/2h` must converge to `|g|` (a wrong direction or scale of `g` makes it converge
    /// elsewhere). The method's generator is reseeded for every evaluation, so sampled noise
    /// and random choices are the same.
    ///
    /// The forwards are f32 and these small networks are strongly curved along `v` (instance
    /// norms over planes of a few voxels at ⅛): measured on every peer, the difference at
    /// h = 1e-2 is up to 95 % off `|g|` and settles on it at 1e-3…1e-4, while the rounding
    /// of a loss value `f` costs about `ε|f|/h` and dominates below that. So the difference
    /// is taken on a ladder h = 1e-1, 3e-2, …, 1e-4, and the check passes when two
    /// consecutive steps both agree with `|g|` to 3 % plus `2ε|f|/h`, i.e. the difference has
    /// converged there.
    pub fn check_term_gradients<N: PeerNet>(
        net: &N,
        dhw: [usize; 3],
        rows: &[Vec<bool>],
        m: usize,
        device: &Device,
    ) {
        assert!(rows.iter().all(|r| r[m]), "modality {m} must be present");
        let clean = batch(rows.len(), dhw, 21, device);
        let mask = mckd_core::mask_tensor(rows, device);
        let names = net.term_names();
        let eval = |x: Tensor<5>, k: usize| -> Tensor<1> {
            let mut b = clean.clone();
            b.images[m] = x;
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            net.train_terms(&b, &mask, &mut rng).swap_remove(k).value
        };
        let x0 = clean.images[m].clone();
        for (k, name) in names.iter().enumerate() {
            let x = x0.clone().detach().require_grad();
            let grads = eval(x.clone(), k).backward();
            let Some(g) = x.grad(&grads) else {
                panic!("term `{name}` has no gradient with respect to modality {m}");
            };
            // Back on the autodiff device (the gradient lives on the inner one).
            let g = Tensor::<5>::from_data(g.into_data(), device);
            let norm = f64::from(g.clone().powf_scalar(2.0).sum().sqrt().into_scalar::<f32>());
            if norm == 0.0 {
                // A term that does not depend on this input (e.g. a reconstruction drawn
                // for another modality): its finite difference must vanish too.
                let h = 1e-2;
                let v = Tensor::<5>::ones(x0.dims(), device);
                let up = f64::from(eval(x0.clone() + v.clone() * h, k).into_scalar::<f32>());
                let down = f64::from(eval(x0.clone() - v * h, k).into_scalar::<f32>());
                assert!(
                    (up - down).abs() < 1e-6,
                    "term `{name}`: zero gradient, moving value"
                );
                continue;
            }
            let v = g / norm;
            let f0 = f64::from(eval(x0.clone(), k).into_scalar::<f32>()).abs();
            let ladder = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4];
            let fds: Vec<f64> = ladder
                .iter()
                .map(|&h| {
                    let up = f64::from(eval(x0.clone() + v.clone() * h, k).into_scalar::<f32>());
                    let down = f64::from(eval(x0.clone() - v.clone() * h, k).into_scalar::<f32>());
                    (up - down) / (2.0 * h)
                })
                .collect();
            let agree: Vec<bool> = ladder
                .iter()
                .zip(&fds)
                .map(|(&h, fd)| {
                    (fd - norm).abs() <= 0.03 * norm + 2.0 * f64::from(f32::EPSILON) * f0 / h
                })
                .collect();
            assert!(
                agree.windows(2).any(|w| w[0] && w[1]),
                "term `{name}`: finite differences {fds:?} at steps {ladder:?} never settle \
                 on autodiff |g| {norm:e}"
            );
        }
    }

    /// `net` with every randomly initialised parameter redrawn from a ChaCha8 generator
    /// seeded with `seed`. burn's initialisers draw from one process-wide generator, seeded
    /// from entropy unless a test seeds it, shared by the tests running in parallel and
    /// drawn from lazily (at a parameter's first use), so a network built in a test differs
    /// from run to run. Weights get burn's default bound `U(±1/√fan_in)` with `fan_in` from
    /// the shape (`[out, in, k, k, k]` convolutions, `[in, out]` linear maps), biases
    /// `U(±1/√len)`; constant parameters (norm scales and shifts, zero-initialised
    /// embeddings) are kept.
    pub fn seeded<N: Module>(net: N, seed: u64) -> N {
        net.map(&mut Reseed(ChaCha8Rng::seed_from_u64(seed)))
    }

    struct Reseed(ChaCha8Rng);

    impl burn::module::ModuleMapper for Reseed {
        fn map_float<const D: usize>(
            &mut self,
            p: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            use rand::Rng;
            p.map(|t| {
                let v = mckd_train::to_vec(t.clone());
                if v.iter().all(|&x| x == v[0]) {
                    return t;
                }
                let dims = t.dims();
                let fan_in: usize = match D {
                    1 | 2 => dims[0],
                    _ => dims[1..].iter().product(),
                };
                let bound = 1.0 / (fan_in as f32).sqrt();
                let new: Vec<f32> = (0..v.len())
                    .map(|_| self.0.random_range(-bound..bound))
                    .collect();
                let grad = t.is_require_grad();
                let x = Tensor::from_data(TensorData::new(new, dims), &t.device());
                if grad { x.require_grad() } else { x }
            })
        }
    }

    struct FiniteGrads<'a> {
        grads: &'a GradientsParams,
        checked: usize,
        bad: usize,
    }

    impl burn::module::ModuleVisitor for FiniteGrads<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.checked += 1;
                if !finite(g) {
                    self.bad += 1;
                }
            }
        }
    }
}
