//! The AV-MNIST network: SMIL-style image and audio encoders and a two-layer classifier head.
//!
//! # Layers (PyTorch-equivalent; parameter counts are trainable weights + biases)
//!
//! Image encoder, input `[B, 1, 28, 28]`:
//!
//! | layer | output | params |
//! |---|---|---|
//! | `Conv2d(1, 20, 5)` (no padding) | `[B, 20, 24, 24]` | 520 |
//! | `BatchNorm2d(20)` → ReLU → `MaxPool2d(2)` | `[B, 20, 12, 12]` | 40 |
//! | `Conv2d(20, 50, 5)` (no padding) | `[B, 50, 8, 8]` | 25,050 |
//! | `BatchNorm2d(50)` → ReLU → `MaxPool2d(2)` | `[B, 50, 4, 4]` | 100 |
//! | flatten → `Linear(800, 128)` | `[B, 128]` | 102,528 |
//! | `BatchNorm1d(128)` → ReLU → `Dropout(0.5)` | `[B, 128]` | 256 |
//!
//! Image encoder total: 128,494.
//!
//! Audio encoder, input `[B, 1, 20, 20]` (MFCC coefficients × frames):
//!
//! | layer | output | params |
//! |---|---|---|
//! | `Conv2d(1, 32, 3, padding=1)` | `[B, 32, 20, 20]` | 320 |
//! | `BatchNorm2d(32)` → ReLU → `MaxPool2d(2)` | `[B, 32, 10, 10]` | 64 |
//! | `Conv2d(32, 64, 3, padding=1)` | `[B, 64, 10, 10]` | 18,496 |
//! | `BatchNorm2d(64)` → ReLU → `MaxPool2d(2)` | `[B, 64, 5, 5]` | 128 |
//! | flatten → `Linear(1600, 128)` | `[B, 128]` | 204,928 |
//! | `BatchNorm1d(128)` → ReLU → `Dropout(0.5)` | `[B, 128]` | 256 |
//!
//! Audio encoder total: 224,192.
//!
//! Head, input the fused `[B, 256]` = `[image 128 | audio 128]`:
//!
//! | layer | output | params |
//! |---|---|---|
//! | `Linear(256, 64)` → ReLU → `Dropout(0.5)` | `[B, 64]` | 16,448 |
//! | `Linear(64, 10)` | `[B, 10]` logits | 650 |
//!
//! Head total: 17,098. Network total: **369,784** trainable parameters (+ 2 for the IWV of
//! the MCKD wrapper). Batch norm: ε = 1e-5, momentum 0.1 (PyTorch defaults); the running
//! statistics are buffers, not parameters (burn's `num_params` counts them too: +396 image,
//! +448 audio, 370,628 in all). Initialisation: burn's defaults, which for `Conv2d`
//! and `Linear` are PyTorch's (Kaiming-uniform with a = √5, uniform bias).
//!
//! # Dropout and determinism
//!
//! burn's `Dropout` draws from the backend's global random generator. [`SeededDropout`] draws
//! its masks from its own ChaCha8 generator seeded per run, so a run's dropout depends on its
//! seed only, and parameter initialisation ([`AvmnistNetConfig::init_seeded`]) seeds the device
//! under a lock. (Even so, two MCKD runs trained in threads of one process were measured not
//! to be reproducible; parallel runs are therefore child processes, see [`crate::cli`].)

use std::sync::{Arc, Mutex};

use burn::module::{Flag, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use mckd_core::fusion::zero_missing;
use mckd_core::{Encoded, ModalitySet, Task};
use mckd_kernels::{
    bn_relu, bn_relu_counted, bn_relu_maxpool2d, bn_relu_maxpool2d_counted, conv2d_layer,
    select_rows,
};
use mckd_train::eval::{Labelled, cross_entropy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Index of the image modality.
pub const IMAGE: usize = 0;
/// Index of the audio modality.
pub const AUDIO: usize = 1;
/// Modality names in fusion order.
pub const MODALITY_NAMES: [&str; 2] = ["image", "audio"];
/// Number of classes (digits).
pub const NUM_CLASSES: usize = 10;

/// A batch of AV-MNIST samples on one device.
///
/// Samples that lack a modality carry zeros in its place (and the encoder zeroes missing inputs
/// again from the presence mask).
#[derive(Debug, Clone)]
pub struct AvBatch {
    /// `[batch, 1, 28, 28]` images in `[-1, 1]`.
    pub image: Tensor<4>,
    /// `[batch, 1, 20, 20]` MFCCs, `[coefficient][frame]`.
    pub audio: Tensor<4>,
    /// `[batch]` digit labels.
    pub labels: Tensor<1, Int>,
}

/// A dropout layer with its own seeded random generator (see the module doc).
#[derive(Module, Debug)]
pub struct SeededDropout {
    /// Drop probability.
    pub prob: f64,
    /// Training flag (cleared by `Module::valid`).
    pub training: Param<Flag>,
    #[module(skip)]
    rng: DropoutRng,
}

/// The shared generator of a network's dropout layers.
#[derive(Debug, Clone)]
pub struct DropoutRng(Arc<Mutex<ChaCha8Rng>>);

impl DropoutRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))))
    }

    /// The generator's exact state ([`mckd_core::rng::rng_state`]), for checkpoints.
    pub fn state(&self) -> Vec<u8> {
        let rng = self.0.lock().unwrap_or_else(|e| e.into_inner());
        mckd_core::rng::rng_state(&rng).to_vec()
    }

    /// Restores [`state`](Self::state); an error says what does not fit.
    pub fn restore(&self, state: &[u8]) -> Result<(), String> {
        let restored = mckd_core::rng::rng_from_state(state)
            .ok_or_else(|| format!("not a dropout generator state ({} bytes)", state.len()))?;
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = restored;
        Ok(())
    }
}

impl SeededDropout {
    /// A dropout layer drawing from `rng`.
    ///
    /// # Panics
    /// If `prob` is not in `[0, 1)` (a configuration bug; configs are checked before).
    pub fn new(prob: f64, rng: DropoutRng) -> Self {
        assert!((0.0..1.0).contains(&prob), "dropout probability {prob}");
        Self {
            prob,
            training: Param::from_bool(true),
            rng,
        }
    }

    /// Zeroes each element with probability `prob` and scales the rest by `1 / (1 − prob)` in
    /// training (autodiff device, flag set); the identity otherwise.
    ///
    /// # Shapes
    /// - input, output: `[batch, features]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        if !self.training.val().is_enabled() || !x.device().is_autodiff() || self.prob == 0.0 {
            return x;
        }
        let [b, f] = x.dims();
        let keep = 1.0 - self.prob;
        let scale = (1.0 / keep) as f32;
        let mask: Vec<f32> = {
            let mut rng = self.rng.0.lock().unwrap_or_else(|e| e.into_inner());
            (0..b * f)
                .map(|_| {
                    if rng.random::<f64>() < keep {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let device = x.device().without_autodiff();
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, f]), &device);
        x * mask.autodiff()
    }
}

/// Which samples an encoder's batch norms normalise over when a modality is missing for some
/// samples of the batch (training; inference uses the running statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BnRows {
    /// Only the samples that have the modality (DESIGN §2.1): the encoder runs on them alone,
    /// and a missing sample's feature is zero (it is imputed from the present modalities).
    #[default]
    Present,
    /// Every sample, the zeroed inputs of missing ones included (an earlier reading: the zero
    /// rows then dominate the statistics; kept for the ablation).
    All,
}

/// Which encoder output the CKD loss distils.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DistilledFeature {
    /// The deterministic output before dropout (DESIGN §1.5); dropout stays on the path to
    /// the head.
    #[default]
    PreDropout,
    /// The output after dropout (an earlier reading; with independent masks on teacher and
    /// student the loss only shrinks the student; kept for the ablation).
    PostDropout,
}

/// Configuration of [`AvmnistNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AvmnistNetConfig {
    /// Feature width of each encoder.
    pub features: usize,
    /// Hidden width of the head.
    pub hidden: usize,
    /// Dropout probability after each encoder and in the head.
    pub dropout: f64,
    /// Batch-norm rows of a partly missing modality.
    pub bn_rows: BnRows,
    /// The feature the CKD loss distils.
    pub distilled: DistilledFeature,
}

impl Default for AvmnistNetConfig {
    fn default() -> Self {
        Self {
            features: 128,
            hidden: 64,
            dropout: 0.5,
            bn_rows: BnRows::Present,
            distilled: DistilledFeature::PreDropout,
        }
    }
}

impl AvmnistNetConfig {
    /// The defaults (DESIGN §2.1).
    pub fn new() -> Self {
        Self::default()
    }
}

impl AvmnistNetConfig {
    /// Initialises the network. Parameters come from burn's device generator (seed the device
    /// first, see [`init_seeded`](Self::init_seeded)); dropout masks from `dropout_seed`.
    pub fn init(&self, dropout_seed: u64, device: &Device) -> AvmnistNet {
        let rng = DropoutRng::new(dropout_seed);
        let f = self.features;
        let image = ConvEncoder::for_modality(
            IMAGE,
            f,
            SeededDropout::new(self.dropout, rng.clone()),
            device,
        );
        let audio = ConvEncoder::for_modality(
            AUDIO,
            f,
            SeededDropout::new(self.dropout, rng.clone()),
            device,
        );
        AvmnistNet {
            image,
            audio,
            fc1: LinearConfig::new(2 * f, self.hidden).init(device),
            head_dropout: SeededDropout::new(self.dropout, rng.clone()),
            fc2: LinearConfig::new(self.hidden, NUM_CLASSES).init(device),
            modalities: ModalitySet::new(MODALITY_NAMES),
            bn_rows: self.bn_rows,
            distilled: self.distilled,
            rng,
        }
    }

    /// Initialises the network deterministically from `seed`: the device generator is seeded
    /// and the parameters drawn while holding a process-wide lock, so runs in parallel threads
    /// do not interleave their draws. Dropout uses a generator derived from the same seed.
    ///
    /// burn initialises parameters lazily (at their first use); this forces every parameter to
    /// be drawn here, in module order, so the values depend on `seed` alone.
    pub fn init_seeded(&self, seed: u64, device: &Device) -> AvmnistNet {
        init_seeded_with(seed, device, || {
            self.init(seed ^ 0x5EED_D409_0A7E_0001, device)
        })
    }
}

/// [`mckd_train::init_seeded`], under the name the AV-MNIST models and peers use.
pub use mckd_train::init_seeded as init_seeded_with;

/// A SMIL-style encoder: two (conv → batch norm → ReLU → 2×2 max-pool) stages, then
/// linear → batch norm → ReLU → dropout. The image and audio encoders are two instances with
/// different shapes (see the module doc for both layer lists).
#[derive(Module, Debug)]
pub struct ConvEncoder {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    pool: MaxPool2d,
    fc: Linear,
    bn_fc: BatchNorm,
    dropout: SeededDropout,
}

/// Shapes of a [`ConvEncoder`].
struct EncoderShape {
    /// Channels: input, after the first and after the second convolution.
    channels: [usize; 3],
    /// Square kernel size of both convolutions.
    kernel: usize,
    /// Zero padding of both convolutions.
    padding: usize,
    /// Flattened size after the second pooling (input of the linear layer).
    flat: usize,
}

impl ConvEncoder {
    /// The encoder of `modality` ([`IMAGE`]: `[B, 1, 28, 28]` inputs, [`AUDIO`]: `[B, 1, 20, 20]`;
    /// the layer lists of the module doc) with `features` outputs, ending in `dropout`.
    ///
    /// # Panics
    /// If `modality` is not [`IMAGE`] or [`AUDIO`] (an internal contract).
    pub fn for_modality(
        modality: usize,
        features: usize,
        dropout: SeededDropout,
        device: &Device,
    ) -> Self {
        let shape = match modality {
            IMAGE => EncoderShape {
                channels: [1, 20, 50],
                kernel: 5,
                padding: 0,
                flat: 800,
            },
            AUDIO => EncoderShape {
                channels: [1, 32, 64],
                kernel: 3,
                padding: 1,
                flat: 1600,
            },
            m => panic!("AV-MNIST has 2 modalities, asked for modality {m}"),
        };
        Self::new(&shape, features, dropout, device)
    }

    /// Width of the encoder's output.
    pub fn feature_width(&self) -> usize {
        self.fc.weight.dims()[1]
    }

    /// The encoder's dropout on features (the last layer of [`forward`](Self::forward)).
    ///
    /// # Shapes
    /// - input, output: `[batch, features]`
    pub fn apply_dropout(&self, x: Tensor<2>) -> Tensor<2> {
        self.dropout.forward(x)
    }

    fn new(shape: &EncoderShape, features: usize, dropout: SeededDropout, device: &Device) -> Self {
        let [c0, c1, c2] = shape.channels;
        let (k, p) = (shape.kernel, shape.padding);
        let conv = |a, b| {
            Conv2dConfig::new([a, b], [k, k])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .init(device)
        };
        Self {
            conv1: conv(c0, c1),
            bn1: BatchNormConfig::new(c1).init(device),
            conv2: conv(c1, c2),
            bn2: BatchNormConfig::new(c2).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc: LinearConfig::new(shape.flat, features).init(device),
            bn_fc: BatchNormConfig::new(features).init(device),
            dropout,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, 1, 28, 28]` (image) or `[batch, 1, 20, 20]` (audio)
    /// - output: `[batch, features]`
    ///
    /// The convolutions run through `mckd_kernels::conv2d_layer` (tiled GEMM forward and
    /// backward), batch norm → ReLU (→ pool) as one fused op in training (eval mode: burn's
    /// layers); same numbers as burn's layers to float rounding.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.dropout.forward(self.features(x)) // [B, F]
    }

    /// The encoder's deterministic output, before dropout.
    ///
    /// # Shapes
    /// - `x`: `[batch, 1, 28, 28]` (image) or `[batch, 1, 20, 20]` (audio)
    /// - output: `[batch, features]`
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        // image: [B, 20, 12, 12], audio: [B, 32, 10, 10]
        let x = bn_relu_maxpool2d(&self.bn1, &self.pool, conv2d_layer(&self.conv1, x));
        // image: [B, 50, 4, 4], audio: [B, 64, 5, 5]
        let x = bn_relu_maxpool2d(&self.bn2, &self.pool, conv2d_layer(&self.conv2, x));
        let x: Tensor<2> = x.flatten(1, 3); // image [B, 800], audio [B, 1600]
        bn_relu(&self.bn_fc, self.fc.forward(x)) // [B, F]
    }

    /// The features of the present samples alone (batch norm over them only), zero for the
    /// missing ones, before dropout; `None` when no sample has the modality.
    ///
    /// # Shapes
    /// - `x`: `[batch, 1, H, W]`; `present`: `batch` flags
    /// - output: `[batch, features]`
    pub fn features_of_present(&self, x: Tensor<4>, present: &[bool]) -> Option<Tensor<2>> {
        let b = x.dims()[0];
        assert_eq!(present.len(), b, "one presence flag per sample");
        let rows: Vec<usize> = (0..b).filter(|&i| present[i]).collect();
        if rows.is_empty() {
            return None;
        }
        if rows.len() == b {
            return Some(self.features(x));
        }
        let f = self.features(select_rows(x, &rows)); // [present, F]
        let [k, nf] = f.dims();
        // Present rows in order, then one zero row that every missing sample points to.
        let zero = Tensor::zeros([1, nf], &f.device());
        let f = Tensor::cat(vec![f, zero], 0);
        Some(select_rows(f, &expand_index(present, k)))
    }

    /// [`forward`](Self::forward) of a batch whose missing samples (`present[i]` false) have
    /// zeroed inputs, computing each layer once for all of them.
    ///
    /// Zeroed samples are identical, so every layer gives them identical values, and batch
    /// norm, the one op that mixes samples, sees `k` equal rows. Every layer runs on the
    /// compact batch (the present samples, then one zero sample); the batch norms count the
    /// zero row `k` times (`mckd_kernels::bn_relu_counted`), so their statistics are the full
    /// batch's, and the output is expanded to the full batch (the zero row repeated) before
    /// dropout. The batch statistics, running statistics, dropout mask and output are those of
    /// [`forward`](Self::forward) (missing rows included); the backward gives the zero row the
    /// sum of the `k` copies' gradients, which is what reaches the per-row layers in the full
    /// batch's backward. Only the float rounding of sums differs (tested against `forward`).
    ///
    /// With the AV-MNIST missing rates most samples lack one modality, so its encoder runs on
    /// a few rows instead of the whole batch.
    ///
    /// # Shapes
    /// - `x`: `[batch, 1, H, W]`, missing samples zeroed; `present`: `batch` flags
    /// - output: `[batch, features]`
    ///
    /// # Panics
    /// If `present` does not have one flag per sample (an internal contract).
    pub fn forward_present(&self, x: Tensor<4>, present: &[bool]) -> Tensor<2> {
        self.forward_present_both(x, present).1
    }

    /// [`forward_present`](Self::forward_present) before its dropout, and after it.
    fn forward_present_both(&self, x: Tensor<4>, present: &[bool]) -> (Tensor<2>, Tensor<2>) {
        let b = x.dims()[0];
        assert_eq!(present.len(), b, "one presence flag per sample");
        let Some(first_missing) = present.iter().position(|&p| !p) else {
            let f = self.features(x);
            return (f.clone(), self.dropout.forward(f));
        };
        let mut rows: Vec<usize> = (0..b).filter(|&i| present[i]).collect();
        let zero_row = rows.len();
        rows.push(first_missing);
        let mut counts = vec![1; rows.len()];
        counts[zero_row] = b - zero_row;
        let expand = expand_index(present, zero_row);
        let x = select_rows(x, &rows);
        let x =
            bn_relu_maxpool2d_counted(&self.bn1, &self.pool, conv2d_layer(&self.conv1, x), &counts);
        let x =
            bn_relu_maxpool2d_counted(&self.bn2, &self.pool, conv2d_layer(&self.conv2, x), &counts);
        let x = bn_relu_counted(&self.bn_fc, self.fc.forward(x.flatten(1, 3)), &counts);
        let f = select_rows(x, &expand);
        (f.clone(), self.dropout.forward(f))
    }
}

/// Rows of the full batch in a compact one (the present samples in order, then one row at
/// `zero_row` that stands for every missing sample).
fn expand_index(present: &[bool], zero_row: usize) -> Vec<usize> {
    let mut next = 0;
    present
        .iter()
        .map(|&p| {
            if p {
                next += 1;
                next - 1
            } else {
                zero_row
            }
        })
        .collect()
}

/// The AV-MNIST network: one encoder per modality (not shared) and a two-layer head over the
/// concatenated features. Modalities: `image` (0), `audio` (1).
#[derive(Module, Debug)]
pub struct AvmnistNet {
    /// Image encoder.
    pub image: ConvEncoder,
    /// Audio encoder.
    pub audio: ConvEncoder,
    fc1: Linear,
    head_dropout: SeededDropout,
    fc2: Linear,
    #[module(skip)]
    modalities: ModalitySet,
    #[module(skip)]
    bn_rows: BnRows,
    #[module(skip)]
    distilled: DistilledFeature,
    #[module(skip)]
    rng: DropoutRng,
}

impl AvmnistNet {
    /// Classifier head.
    ///
    /// # Shapes
    /// - `fused`: `[batch, 2 × features]`
    /// - output: `[batch, 10]` logits
    pub fn head(&self, fused: Tensor<2>) -> Tensor<2> {
        self.classify(self.hidden(fused))
    }

    /// The head's hidden layer before its dropout, `relu(fc1(fused))` (the first half of
    /// [`head`](Self::head)).
    ///
    /// # Shapes
    /// - `fused`: `[batch, 2 × features]`
    /// - output: `[batch, hidden]`
    pub fn hidden(&self, fused: Tensor<2>) -> Tensor<2> {
        relu(self.fc1.forward(fused))
    }

    /// The rest of the head: dropout, then `fc2` (the second half of [`head`](Self::head)).
    ///
    /// # Shapes
    /// - `hidden`: `[batch, hidden]`
    /// - output: `[batch, 10]` logits
    pub fn classify(&self, hidden: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.head_dropout.forward(hidden))
    }

    /// The encoder of modality `m` ([`IMAGE`] or [`AUDIO`]).
    ///
    /// # Panics
    /// If `m` is not a modality (an internal contract).
    pub fn encoder(&self, m: usize) -> &ConvEncoder {
        match m {
            IMAGE => &self.image,
            AUDIO => &self.audio,
            m => panic!("AV-MNIST has 2 modalities, asked for modality {m}"),
        }
    }

    /// Width of each encoder's features.
    pub fn feature_width(&self) -> usize {
        self.image.feature_width()
    }

    /// Width of the head's hidden layer.
    pub fn hidden_units(&self) -> usize {
        self.fc1.weight.dims()[1]
    }

    /// The generator of the network's dropout layers (shared: layers a peer method adds draw
    /// from it too, so that one state covers them in checkpoints).
    pub fn dropout_rng(&self) -> DropoutRng {
        self.rng.clone()
    }
}

impl Task for AvmnistNet {
    type Batch = AvBatch;
    type Output = Tensor<2>;

    fn modalities(&self) -> &ModalitySet {
        &self.modalities
    }

    /// # Shapes
    /// - `present`: `[batch]`; output: one `[batch, features]` level.
    ///
    /// # Panics
    /// If `modality` is not 0 (image) or 1 (audio): an internal contract of the core.
    fn encode(&self, batch: &AvBatch, modality: usize, present: Tensor<1>) -> Encoded {
        let flags: Vec<bool> = present.to_data().iter::<f32>().map(|p| p != 0.0).collect();
        let (encoder, x) = match modality {
            IMAGE => (&self.image, &batch.image),
            AUDIO => (&self.audio, &batch.audio),
            m => panic!("AV-MNIST has 2 modalities, asked for modality {m}"),
        };
        let x = zero_missing(x.clone(), present);
        let (det, dropped) = match self.bn_rows {
            BnRows::All => encoder.forward_present_both(x, &flags),
            BnRows::Present => {
                let b = flags.len();
                let nf = encoder.fc.weight.dims()[1];
                let f = encoder
                    .features_of_present(x.clone(), &flags)
                    .unwrap_or_else(|| Tensor::zeros([b, nf], &x.device()));
                (f.clone(), encoder.dropout.forward(f))
            }
        };
        match self.distilled {
            DistilledFeature::PreDropout => Encoded {
                levels: vec![dropped],
                distilled: Some(vec![det]),
            },
            DistilledFeature::PostDropout => Encoded::new(vec![dropped]),
        }
    }

    fn bottleneck(&self) -> usize {
        0
    }

    /// # Shapes
    /// - `fused`: one level `[batch, 2 × features]`; output `[batch, 10]`.
    fn decode(&self, fused: Vec<Tensor<2>>) -> Tensor<2> {
        let x = fused.into_iter().next().expect("one fused feature level");
        // burn's Linear weight is [d_input, d_output].
        assert_eq!(
            x.dims()[1],
            self.fc1.weight.dims()[0],
            "fused width must be 2 × encoder features"
        );
        self.head(x)
    }

    /// Mean cross-entropy of the logits against the labels.
    fn loss(&self, logits: Tensor<2>, batch: &AvBatch) -> Tensor<1> {
        cross_entropy(logits, batch.labels.clone())
    }

    fn batch_size(batch: &AvBatch) -> usize {
        batch.labels.dims()[0]
    }

    fn random_state(&self) -> Vec<u8> {
        self.rng.state()
    }

    fn set_random_state(&self, state: &[u8]) -> Result<(), String> {
        self.rng.restore(state)
    }
}

impl Labelled for AvBatch {
    fn labels(&self) -> Tensor<1, Int> {
        self.labels.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;

    fn batch(b: usize, device: &Device) -> AvBatch {
        AvBatch {
            image: Tensor::ones([b, 1, 28, 28], device),
            audio: Tensor::ones([b, 1, 20, 20], device) * 0.5,
            labels: Tensor::from_data(
                TensorData::new((0..b as i64).map(|i| i % 10).collect(), [b]),
                device,
            ),
        }
    }

    #[test]
    fn shapes_and_parameter_count() {
        let device = Device::flex();
        let net = AvmnistNetConfig::new().init_seeded(1, &device);
        // burn's num_params also counts batch-norm running mean and variance (2 per channel);
        // PyTorch's sum(p.numel() for p in model.parameters()) does not.
        let buffers = |channels: &[usize]| 2 * channels.iter().sum::<usize>();
        let counts = [
            (
                "image encoder",
                net.image.num_params(),
                128_494,
                buffers(&[20, 50, 128]),
            ),
            (
                "audio encoder",
                net.audio.num_params(),
                224_192,
                buffers(&[32, 64, 128]),
            ),
            (
                "head",
                net.fc1.num_params() + net.fc2.num_params(),
                16_448 + 650,
                0,
            ),
            (
                "total",
                net.num_params(),
                369_784,
                buffers(&[20, 50, 128, 32, 64, 128]),
            ),
        ];
        for (name, got, trainable, buf) in counts {
            println!("{name:>14}: {trainable} trainable parameters (+ {buf} batch-norm buffers)");
            assert_eq!(got, trainable + buf, "{name}");
        }
        let b = batch(3, &device);
        let present = Tensor::<1>::ones([3], &device);
        let fi = net.encode(&b, IMAGE, present.clone()).levels;
        let fa = net.encode(&b, AUDIO, present).levels;
        assert_eq!(fi.len(), 1);
        assert_eq!(fi[0].dims(), [3, 128]);
        assert_eq!(fa[0].dims(), [3, 128]);
        let logits = net.decode(vec![Tensor::cat(vec![fi[0].clone(), fa[0].clone()], 1)]);
        assert_eq!(logits.dims(), [3, 10]);
        let loss = net.loss(logits, &b);
        assert_eq!(loss.dims(), [1]);
        assert!(loss.into_scalar::<f32>().is_finite());
    }

    #[test]
    fn missing_inputs_are_zeroed_and_init_is_seeded() {
        let device = Device::flex();
        let a = AvmnistNetConfig::new().init_seeded(7, &device);
        let b = AvmnistNetConfig::new().init_seeded(7, &device);
        let c = AvmnistNetConfig::new().init_seeded(8, &device);
        let w = |n: &AvmnistNet| mckd_train::to_vec(n.fc1.weight.val());
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
        let bt = batch(2, &device);
        let present = Tensor::<1>::from_floats([1.0f32, 0.0], &device);
        let zeros = AvBatch {
            audio: Tensor::zeros([2, 1, 20, 20], &device),
            ..bt.clone()
        };
        let enc = |n: &AvmnistNet, b: &AvBatch, p: Tensor<1>| {
            mckd_train::to_vec(n.valid().encode(b, AUDIO, p).levels[0].clone())
        };
        // Batch norm over every row (legacy): an absent sample's feature is that of an
        // all-zero input.
        let all_rows = AvmnistNetConfig {
            bn_rows: BnRows::All,
            ..AvmnistNetConfig::new()
        }
        .init_seeded(7, &device);
        let f = enc(&all_rows, &bt, present.clone());
        let z = enc(&all_rows, &zeros, Tensor::ones([2], &device));
        assert_eq!(&f[128..], &z[128..]);
        assert_ne!(&f[..128], &z[..128]);
        // Present rows only (the default): an absent sample's feature is zero (it is imputed),
        // and a present one is what the encoder gives it alone.
        let f = enc(&a, &bt, present);
        assert!(f[128..].iter().all(|&v| v == 0.0));
        let alone = AvBatch {
            image: bt.image.clone().narrow(0, 0, 1),
            audio: bt.audio.clone().narrow(0, 0, 1),
            labels: bt.labels.clone().narrow(0, 0, 1),
        };
        let one = enc(&a, &alone, Tensor::ones([1], &device));
        assert_eq!(&f[..128], &one[..]);
    }

    /// Issue 15, fix 4: in training, a present sample's (deterministic) encoder output does not
    /// change when zero rows of missing samples are added to the batch.
    #[test]
    fn batch_norm_sees_only_the_present_rows() {
        let device = Device::flex().autodiff();
        let net = AvmnistNetConfig::new().init_seeded(3, &device);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        use rand::Rng;
        let k = 4;
        let x: Vec<f32> = (0..k * 400).map(|_| rng.random_range(-1.0..1.0)).collect();
        let present_only = AvBatch {
            image: Tensor::zeros([k, 1, 28, 28], &device),
            audio: Tensor::from_data(TensorData::new(x.clone(), [k, 1, 20, 20]), &device),
            labels: Tensor::zeros([k], &device),
        };
        // The same 4 samples at rows 1, 2, 4, 5 of 7, with zero rows for 3 missing ones.
        let mut padded = vec![0.0f32; 7 * 400];
        let rows = [1, 2, 4, 5];
        for (j, &r) in rows.iter().enumerate() {
            padded[r * 400..(r + 1) * 400].copy_from_slice(&x[j * 400..(j + 1) * 400]);
        }
        let with_missing = AvBatch {
            image: Tensor::zeros([7, 1, 28, 28], &device),
            audio: Tensor::from_data(TensorData::new(padded, [7, 1, 20, 20]), &device),
            labels: Tensor::zeros([7], &device),
        };
        let det = |b: &AvBatch, present: Vec<f32>| {
            let n = present.len();
            let p = Tensor::<1>::from_data(TensorData::new(present, [n]), &device);
            mckd_train::to_vec(net.encode(b, AUDIO, p).distilled(0))
        };
        let a = det(&present_only, vec![1.0; k]);
        let b = det(&with_missing, vec![0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]);
        for (j, &r) in rows.iter().enumerate() {
            let (x, y) = (&a[j * 128..(j + 1) * 128], &b[r * 128..(r + 1) * 128]);
            let dev = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
            assert!(dev < 1e-5, "row {r}: {dev}");
        }
        // Under the legacy rule the zero rows enter the statistics and move the output.
        let legacy = AvmnistNetConfig {
            bn_rows: BnRows::All,
            ..AvmnistNetConfig::new()
        }
        .init_seeded(3, &device);
        let p = Tensor::<1>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0], [7]),
            &device,
        );
        let c = mckd_train::to_vec(legacy.encode(&with_missing, AUDIO, p).levels[0].clone());
        let dev = (0..128)
            .map(|i| (a[i] * 0.0 + c[128 + i] - b[128 + i]).abs())
            .fold(0.0, f32::max);
        assert!(
            dev > 1e-3,
            "the legacy rule must differ for the test to bite"
        );
    }

    /// Issue 15, fix 1: the CKD loss distils the encoder output before dropout, identical
    /// across two training forwards with different dropout draws.
    #[test]
    fn distilled_features_do_not_depend_on_dropout() {
        let device = Device::flex().autodiff();
        let net = AvmnistNetConfig::new().init_seeded(4, &device);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        use rand::Rng;
        let x: Vec<f32> = (0..6 * 784).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b = AvBatch {
            image: Tensor::from_data(TensorData::new(x, [6, 1, 28, 28]), &device),
            ..batch(6, &device)
        };
        let p = Tensor::<1>::ones([6], &device);
        let first = net.encode(&b, IMAGE, p.clone());
        let second = net.encode(&b, IMAGE, p);
        assert_eq!(
            mckd_train::to_vec(first.distilled(0)),
            mckd_train::to_vec(second.distilled(0))
        );
        assert_ne!(
            mckd_train::to_vec(first.levels[0].clone()),
            mckd_train::to_vec(second.levels[0].clone()),
            "the fused features carry two different dropout masks"
        );
    }

    /// `forward_present` against `forward` on the same network state, in training (batch
    /// statistics, dropout) and in inference: same features, same parameter gradients, same
    /// running statistics, for several presence patterns (none, some, all but one, all
    /// missing) and both encoders.
    #[test]
    fn compact_forward_of_missing_samples_equals_the_full_forward() {
        use rand::Rng;
        fn grad<const D: usize>(p: &Param<Tensor<D>>, grads: &burn::tensor::Gradients) -> Vec<f32> {
            mckd_train::to_vec(p.grad(grads).expect("a gradient"))
        }
        let max_diff = |a: &[f32], b: &[f32]| -> f32 {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        };
        let device = Device::flex().autodiff();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let b = 12;
        let patterns: Vec<Vec<bool>> = vec![
            vec![true; b],
            (0..b).map(|i| i % 3 == 1).collect(),
            (0..b).map(|i| i != 5).collect(),
            (0..b).map(|i| i == 7).collect(),
            vec![false; b],
        ];
        for (modality, side) in [(IMAGE, 28), (AUDIO, 20)] {
            for present in &patterns {
                // Two identical networks (init_seeded holds a lock while it seeds the device):
                // running statistics and dropout generators are per network.
                let nets = [0, 1].map(|_| AvmnistNetConfig::new().init_seeded(5, &device));
                let enc = |n: &AvmnistNet| -> ConvEncoder {
                    if modality == IMAGE {
                        n.image.clone()
                    } else {
                        n.audio.clone()
                    }
                };
                let x: Vec<f32> = (0..b * side * side)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                let x = Tensor::<4>::from_data(TensorData::new(x, [b, 1, side, side]), &device);
                let flags: Vec<f32> = present.iter().map(|&p| f32::from(u8::from(p))).collect();
                let mask = Tensor::<1>::from_data(TensorData::new(flags, [b]), &device);
                let x = zero_missing(x, mask);
                let w: Vec<f32> = (0..b * 128).map(|_| rng.random_range(-1.0..1.0)).collect();
                let w = Tensor::<2>::from_data(TensorData::new(w, [b, 128]), &device);
                let full = enc(&nets[0]).forward(x.clone());
                let compact = enc(&nets[1]).forward_present(x.clone(), present);
                let what = format!("modality {modality}, present {present:?}");
                let (vf, vc) = (
                    mckd_train::to_vec(full.clone()),
                    mckd_train::to_vec(compact.clone()),
                );
                let dev = max_diff(&vf, &vc);
                assert!(dev <= 1e-5, "{what}: features differ by {dev}");
                let grads_full = (full * w.clone()).sum().backward();
                let grads_compact = (compact * w).sum().backward();
                let (ef, ec) = (enc(&nets[0]), enc(&nets[1]));
                // Gradients as values (the parameters have different ranks); each must exist
                // in both runs.
                let pairs = [
                    (
                        "conv1",
                        grad(&ef.conv1.weight, &grads_full),
                        grad(&ec.conv1.weight, &grads_compact),
                    ),
                    (
                        "conv2",
                        grad(&ef.conv2.weight, &grads_full),
                        grad(&ec.conv2.weight, &grads_compact),
                    ),
                    (
                        "fc",
                        grad(&ef.fc.weight, &grads_full),
                        grad(&ec.fc.weight, &grads_compact),
                    ),
                    (
                        "bn1 gamma",
                        grad(&ef.bn1.gamma, &grads_full),
                        grad(&ec.bn1.gamma, &grads_compact),
                    ),
                ];
                for (name, gf, gc) in pairs {
                    let scale = gf.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                    let dev = max_diff(&gf, &gc);
                    assert!(
                        dev <= 1e-4 * scale,
                        "{what}: {name} gradient differs by {dev} (scale {scale})"
                    );
                }
                for (name, rf, rc) in [
                    (
                        "bn1",
                        ef.bn1.running_var.value_sync(),
                        ec.bn1.running_var.value_sync(),
                    ),
                    (
                        "bn_fc",
                        ef.bn_fc.running_mean.value_sync(),
                        ec.bn_fc.running_mean.value_sync(),
                    ),
                ] {
                    let (rf, rc) = (mckd_train::to_vec(rf), mckd_train::to_vec(rc));
                    let dev = max_diff(&rf, &rc);
                    assert!(
                        dev <= 1e-5,
                        "{what}: {name} running statistics differ by {dev}"
                    );
                }
                // Inference (running statistics, no dropout): the same features.
                let inf_x = x.inner();
                let full = mckd_train::to_vec(ef.valid().forward(inf_x.clone()));
                let compact = mckd_train::to_vec(ec.valid().forward_present(inf_x, present));
                let dev = max_diff(&full, &compact);
                assert!(dev <= 1e-5, "{what}: inference features differ by {dev}");
            }
        }
    }

    #[test]
    fn seeded_dropout_is_reproducible_and_off_in_inference() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::ones([4, 50], &device);
        let d1 = SeededDropout::new(0.5, DropoutRng::new(3));
        let d2 = SeededDropout::new(0.5, DropoutRng::new(3));
        let a = mckd_train::to_vec(d1.forward(x.clone()));
        let b = mckd_train::to_vec(d2.forward(x.clone()));
        assert_eq!(a, b);
        assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
        let kept = a.iter().filter(|&&v| v > 0.0).count();
        assert!((60..=140).contains(&kept), "kept {kept} of 200");
        let plain = Tensor::<2>::ones([4, 50], &Device::flex());
        let v = mckd_train::to_vec(d1.valid().forward(plain));
        assert!(v.iter().all(|&v| v == 1.0));
    }
}
