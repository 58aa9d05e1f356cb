//! The BraTS network: a 3D UNet with one encoder shared by the four MRI modalities.
//!
//! Each modality is a 1-channel volume encoded by the *same* encoder (DESIGN §1, Eq. 1). The
//! features of the four modalities are fused at every level by channel concatenation in
//! modality order (Flair, T1, T1c, T2; a missing modality's feature is imputed by the core,
//! Eq. 2), and one decoder produces three sigmoid logits (ET, TC, WT; `mckd-volume`'s channel
//! order). The CKD loss distils the bottleneck (level 4; every level with
//! `UNetConfig::distill_skips`).
//!
//! # Layers (base width `c`; default 8 on CPU, 16 is paper-like)
//!
//! `block(in, out, s)` = Conv3d 3×3×3 (stride s, padding 1, bias) → InstanceNorm (affine,
//! ε 1e-5) → LeakyReLU(0.01) → Conv3d 3×3×3 (stride 1, padding 1, bias) → InstanceNorm →
//! LeakyReLU. Parameters: `27·in·out + 27·out² + 6·out`.
//! `up(in, out)` = ConvTranspose3d kernel 2, stride 2, bias: `8·in·out + out`.
//!
//! | layer | operation | output (per modality / fused) | parameters |
//! |---|---|---|---|
//! | e1 | block(1, c, 1) | c @ 1 | 27c² + 33c |
//! | e2 | block(c, 2c, 2) | 2c @ 1/2 | 162c² + 12c |
//! | e3 | block(2c, 4c, 2) | 4c @ 1/4 | 648c² + 24c |
//! | e4 | block(4c, 8c, 2) (bottleneck) | 8c @ 1/8 | 2592c² + 48c |
//! | fusion | concat of 4 modalities per level | 4c, 8c, 16c, 32c | 0 |
//! | up3 | up(32c, 4c) | 4c @ 1/4 | 1024c² + 4c |
//! | d3 | block(4c + 16c, 4c, 1) on concat(up3, fused e3) | 4c @ 1/4 | 2592c² + 24c |
//! | up2 | up(4c, 2c) | 2c @ 1/2 | 64c² + 2c |
//! | d2 | block(2c + 8c, 2c, 1) on concat(up2, fused e2) | 2c @ 1/2 | 648c² + 12c |
//! | up1 | up(2c, c) | c @ 1 | 16c² + c |
//! | d1 | block(c + 4c, c, 1) on concat(up1, fused e1) | c @ 1 | 162c² + 6c |
//! | head | Conv3d 1×1×1 (c → 3), bias | 3 @ 1 | 3c + 3 |
//!
//! Total: `7935·c² + 169·c + 3` — 127,639 at c = 4, **509,195 at c = 8**, **2,034,067 at
//! c = 16** (plus the 4 IWV weights of [`mckd_core::MckdModel`]). Spatial sizes (D, H, W)
//! must be multiples of 8.
//!
//! A PyTorch copy: `nn.Conv3d(in, out, 3, stride=s, padding=1)`, `nn.InstanceNorm3d(out,
//! affine=True)`, `nn.LeakyReLU(0.01)`, `nn.ConvTranspose3d(in, out, 2, stride=2)`,
//! `nn.Conv3d(c, 3, 1)`; the encoder runs once per modality on `x[:, m:m+1]` with the missing
//! modalities' inputs zeroed.
//!
//! # Loss (DESIGN §2.2)
//! [`segmentation_loss`]: mean over the 3 channels of the soft Dice `1 − 2Σpg/(Σp + Σg + 1)`
//! (sums over the batch and all voxels of the channel, p = sigmoid) plus the sum over channels
//! of the BCE-with-logits averaged over the batch and voxels.

use burn::nn::conv::{Conv3d, Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig};
use burn::nn::{InstanceNorm, InstanceNormConfig, LeakyRelu, LeakyReluConfig, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use mckd_core::fusion::zero_missing;
use mckd_core::{Encoded, ModalitySet, Task};
use mckd_kernels::{
    cat_channels, conv_transpose3d_k2s2, conv3d_1x1, conv3d_layer, instance_norm_leaky_relu,
};
use mckd_volume::MODALITIES;

/// Number of output channels (ET, TC, WT).
pub const OUT_CHANNELS: usize = 3;
/// Number of modalities (Flair, T1, T1c, T2).
pub const N_MODALITIES: usize = 4;
/// Spatial sizes must be multiples of this (three stride-2 levels).
pub const SIZE_MULTIPLE: usize = 8;

/// Configuration of [`BratsUNet`].
#[derive(Config, Debug)]
pub struct UNetConfig {
    /// Base width `c` (channels of the first level).
    #[config(default = 8)]
    pub base: usize,
    /// Negative slope of the leaky ReLUs.
    #[config(default = 0.01)]
    pub negative_slope: f64,
    /// Spatial size (D, H, W) the network is built for; change with
    /// [`BratsUNet::with_spatial`]. Multiples of 8.
    #[config(default = "[64, 64, 64]")]
    pub spatial: [usize; 3],
    /// How the soft Dice of the loss is reduced over the batch.
    #[config(default = "DiceReduction::PerSample")]
    pub dice: DiceReduction,
}

/// How the soft Dice term of [`segmentation_loss`] treats the batch.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum DiceReduction {
    /// Dice per sample and channel, then the mean (the reference, DESIGN §2.2).
    #[default]
    PerSample,
    /// One Dice per channel over the whole batch (an earlier reading; kept for the ablation).
    Pooled,
}

/// Conv → InstanceNorm → LeakyReLU, twice; the first convolution may be strided.
#[derive(Module, Debug)]
pub struct ConvBlock {
    conv1: Conv3d,
    norm1: InstanceNorm,
    conv2: Conv3d,
    norm2: InstanceNorm,
    act: LeakyRelu,
}

impl ConvBlock {
    /// A block from `c_in` to `c_out` channels whose first convolution has stride `stride`,
    /// with leaky ReLUs of negative slope `slope` (also the peers' building block,
    /// [`crate::peers`]).
    pub fn new(c_in: usize, c_out: usize, stride: usize, slope: f64, device: &Device) -> Self {
        let conv = |a, b, s| {
            Conv3dConfig::new([a, b], [3, 3, 3])
                .with_stride([s, s, s])
                .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
                .init(device)
        };
        Self {
            conv1: conv(c_in, c_out, stride),
            norm1: InstanceNormConfig::new(c_out).init(device),
            conv2: conv(c_out, c_out, 1),
            norm2: InstanceNormConfig::new(c_out).init(device),
            act: LeakyReluConfig::new().with_negative_slope(slope).init(),
        }
    }

    /// # Shapes
    /// `[batch, c_in, D, H, W]` → `[batch, c_out, D/s, H/s, W/s]`
    ///
    /// The convolutions run through `mckd_kernels::conv3d_layer` (tiled GEMM forward and
    /// backward) and each instance norm + leaky ReLU as one fused op
    /// (`mckd_kernels::instance_norm_leaky_relu`); same weights, numbers equal to burn's
    /// layers to float rounding.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let x = conv3d_layer(&self.conv1, x);
        let x = instance_norm_leaky_relu(&self.norm1, &self.act, x);
        let x = conv3d_layer(&self.conv2, x);
        instance_norm_leaky_relu(&self.norm2, &self.act, x)
    }
}

/// A `ConvTranspose3d(kernel 2, stride 2)` layer as one GEMM + a voxel shuffle
/// (`mckd_kernels`; burn's `flex` runs it as a scalar loop). Same weights and numbers (to
/// float rounding) as `layer.forward(x)`.
fn up(layer: &ConvTranspose3d, x: Tensor<5>) -> Tensor<5> {
    debug_assert!(
        layer.kernel_size == [2, 2, 2]
            && layer.stride == [2, 2, 2]
            && layer.padding == [0, 0, 0]
            && layer.padding_out == [0, 0, 0]
            && layer.dilation == [1, 1, 1]
            && layer.groups == 1
    );
    conv_transpose3d_k2s2(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// The shared-encoder 3D UNet (see the module docs for the layer list).
#[derive(Module, Debug)]
pub struct BratsUNet {
    e1: ConvBlock,
    e2: ConvBlock,
    e3: ConvBlock,
    e4: ConvBlock,
    up3: ConvTranspose3d,
    d3: ConvBlock,
    up2: ConvTranspose3d,
    d2: ConvBlock,
    up1: ConvTranspose3d,
    d1: ConvBlock,
    head: Conv3d,
    #[module(skip)]
    modalities: ModalitySet,
    #[module(skip)]
    base: usize,
    #[module(skip)]
    spatial: [usize; 3],
    #[module(skip)]
    dice: DiceReduction,
}

/// A batch: one 1-channel volume per modality and (for training) the region targets.
#[derive(Debug, Clone)]
pub struct BratsBatch {
    /// Per modality (Flair, T1, T1c, T2), `[batch, 1, D, H, W]`.
    pub images: Vec<Tensor<5>>,
    /// Region targets (ET, TC, WT) as 0/1, `[batch, 3, D, H, W]`; `None` for inference.
    pub targets: Option<Tensor<5>>,
}

impl BratsBatch {
    /// Spatial size (D, H, W) of the batch.
    pub fn spatial(&self) -> [usize; 3] {
        let [_, _, d, h, w] = self.images[0].dims();
        [d, h, w]
    }
}

/// Whether `dhw` is a valid spatial size (every axis a positive multiple of 8).
pub fn check_spatial(dhw: [usize; 3]) -> crate::error::Result<()> {
    if dhw.iter().any(|&s| s == 0 || s % SIZE_MULTIPLE != 0) {
        return Err(crate::error::BratsError::Invalid(format!(
            "the UNet needs spatial sizes that are positive multiples of {SIZE_MULTIPLE} \
             (three stride-2 levels); got (D, H, W) = {dhw:?}"
        )));
    }
    Ok(())
}

impl UNetConfig {
    /// Builds the network on `device` (seed the device first for a reproducible init).
    ///
    /// # Panics
    /// If `spatial` is not a multiple of 8 per axis or `base` is 0 (check user input with
    /// [`check_spatial`] first).
    pub fn init(&self, device: &Device) -> BratsUNet {
        assert!(self.base > 0, "UNet base width must be positive");
        check_spatial(self.spatial).expect("valid spatial size");
        let c = self.base;
        let n = N_MODALITIES;
        let s = self.negative_slope;
        let up = |a, b| {
            ConvTranspose3dConfig::new([a, b], [2, 2, 2])
                .with_stride([2, 2, 2])
                .init(device)
        };
        BratsUNet {
            e1: ConvBlock::new(1, c, 1, s, device),
            e2: ConvBlock::new(c, 2 * c, 2, s, device),
            e3: ConvBlock::new(2 * c, 4 * c, 2, s, device),
            e4: ConvBlock::new(4 * c, 8 * c, 2, s, device),
            up3: up(n * 8 * c, 4 * c),
            d3: ConvBlock::new(4 * c + n * 4 * c, 4 * c, 1, s, device),
            up2: up(4 * c, 2 * c),
            d2: ConvBlock::new(2 * c + n * 2 * c, 2 * c, 1, s, device),
            up1: up(2 * c, c),
            d1: ConvBlock::new(c + n * c, c, 1, s, device),
            head: Conv3dConfig::new([c, OUT_CHANNELS], [1, 1, 1]).init(device),
            modalities: ModalitySet::new(MODALITIES),
            base: c,
            spatial: self.spatial,
            dice: self.dice,
        }
    }
}

/// The network of a BraTS run: the CPU UNet, or the reference DualNet (GPU-sized; a width
/// multiplier shrinks it for tests).
// One network per run, never stored in bulk: the size difference of the variants costs
// nothing, and burn's Module derive has no Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum BratsNet {
    /// [`BratsUNet`].
    Unet(BratsUNet),
    /// [`crate::dualnet::DualTask`].
    Dual(crate::dualnet::DualTask),
}

impl BratsNet {
    /// The same network (shared weights) for inputs of spatial size `dhw` (D, H, W).
    ///
    /// # Panics
    /// If `dhw` does not fit the network ([`check_spatial`]).
    pub fn with_spatial(self, dhw: [usize; 3]) -> Self {
        match self {
            BratsNet::Unet(n) => BratsNet::Unet(n.with_spatial(dhw)),
            BratsNet::Dual(n) => BratsNet::Dual(n.with_spatial(dhw)),
        }
    }

    /// The spatial size multiple the network needs per axis (D, H, W).
    pub fn size_multiple(&self) -> [usize; 3] {
        match self {
            BratsNet::Unet(_) => [SIZE_MULTIPLE; 3],
            BratsNet::Dual(_) => crate::dualnet::SIZE_MULTIPLE,
        }
    }
}

impl Task for BratsNet {
    type Batch = BratsBatch;
    type Output = Tensor<5>;

    fn modalities(&self) -> &ModalitySet {
        match self {
            BratsNet::Unet(n) => n.modalities(),
            BratsNet::Dual(n) => n.modalities(),
        }
    }

    fn encode(&self, batch: &BratsBatch, modality: usize, present: Tensor<1>) -> Encoded {
        match self {
            BratsNet::Unet(n) => n.encode(batch, modality, present),
            BratsNet::Dual(n) => n.encode(batch, modality, present),
        }
    }

    fn bottleneck(&self) -> usize {
        match self {
            BratsNet::Unet(n) => n.bottleneck(),
            BratsNet::Dual(n) => n.bottleneck(),
        }
    }

    fn decode(&self, fused: Vec<Tensor<2>>) -> Tensor<5> {
        match self {
            BratsNet::Unet(n) => n.decode(fused),
            BratsNet::Dual(n) => n.decode(fused),
        }
    }

    fn loss(&self, output: Tensor<5>, batch: &BratsBatch) -> Tensor<1> {
        match self {
            BratsNet::Unet(n) => n.loss(output, batch),
            BratsNet::Dual(n) => n.loss(output, batch),
        }
    }

    fn batch_size(batch: &BratsBatch) -> usize {
        batch.images[0].dims()[0]
    }
}

/// The parameter count of the UNet at base width `c`: `7935·c² + 169·c + 3`.
pub fn parameter_count(c: usize) -> usize {
    7935 * c * c + 169 * c + 3
}

impl BratsUNet {
    /// Base width `c`.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Spatial size (D, H, W) the decoder un-flattens features to.
    pub fn spatial(&self) -> [usize; 3] {
        self.spatial
    }

    /// The same network (shared weights) for inputs of spatial size `dhw` (D, H, W). The
    /// weights do not depend on the size; only the decoder's un-flattening of the fused
    /// features does.
    ///
    /// # Panics
    /// If `dhw` is not a multiple of 8 per axis ([`check_spatial`]).
    pub fn with_spatial(mut self, dhw: [usize; 3]) -> Self {
        check_spatial(dhw).expect("valid spatial size");
        self.spatial = dhw;
        self
    }

    /// Spatial size of level `l` (0 = full resolution).
    fn level_dims(&self, l: usize) -> [usize; 3] {
        self.spatial.map(|s| s >> l)
    }

    /// The encoder on one modality.
    ///
    /// # Shapes
    /// - `x`: `[batch, 1, D, H, W]`
    /// - output: `[batch, c·2^l, D/2^l, H/2^l, W/2^l]` for l = 0..4
    pub fn encoder(&self, x: Tensor<5>) -> [Tensor<5>; 4] {
        let e1 = self.e1.forward(x);
        let e2 = self.e2.forward(e1.clone());
        let e3 = self.e3.forward(e2.clone());
        let e4 = self.e4.forward(e3.clone());
        [e1, e2, e3, e4]
    }

    /// The decoder on fused (concatenated) features.
    ///
    /// # Shapes
    /// - `fused[l]`: `[batch, 4·c·2^l, D/2^l, H/2^l, W/2^l]` for l = 0..4
    /// - output: logits `[batch, 3, D, H, W]`
    pub fn decoder(&self, fused: [Tensor<5>; 4]) -> Tensor<5> {
        let [f1, f2, f3, f4] = fused;
        let x = up(&self.up3, f4); // [b, 4c, D/4, H/4, W/4]
        let x = self.d3.forward(cat_channels(vec![x, f3]));
        let x = up(&self.up2, x); // [b, 2c, D/2, H/2, W/2]
        let x = self.d2.forward(cat_channels(vec![x, f2]));
        let x = up(&self.up1, x); // [b, c, D, H, W]
        let x = self.d1.forward(cat_channels(vec![x, f1]));
        // The 1×1×1 head as a batched GEMM (same weights, no layout copies).
        conv3d_1x1(
            x,
            self.head.weight.val(),
            self.head.bias.as_ref().map(|b| b.val()),
        )
    }
}

impl Task for BratsUNet {
    type Batch = BratsBatch;
    type Output = Tensor<5>;

    fn modalities(&self) -> &ModalitySet {
        &self.modalities
    }

    /// # Shapes
    /// - `batch.images[modality]`: `[batch, 1, D, H, W]` with (D, H, W) = [`Self::spatial`]
    /// - `present`: `[batch]`
    /// - output: 4 levels `[batch, c·2^l · D/2^l · H/2^l · W/2^l]`
    ///
    /// # Panics
    /// If the batch's spatial size is not the network's ([`BratsUNet::with_spatial`]).
    fn encode(&self, batch: &BratsBatch, modality: usize, present: Tensor<1>) -> Encoded {
        let x = batch.images[modality].clone();
        let [b, ch, d, h, w] = x.dims();
        assert_eq!(ch, 1, "each modality is a 1-channel volume");
        assert_eq!(
            [d, h, w],
            self.spatial,
            "batch spatial size differs from the UNet's (call with_spatial)"
        );
        let x = zero_missing(x, present);
        self.encoder(x)
            .into_iter()
            .map(|f| {
                let t: Tensor<2> = f.flatten(1, 4); // [batch, C·D·H·W]
                debug_assert_eq!(t.dims()[0], b);
                t
            })
            .collect::<Vec<_>>()
            .into()
    }

    /// The deepest level (e4).
    fn bottleneck(&self) -> usize {
        3
    }

    /// # Shapes
    /// - `fused[l]`: `[batch, 4 · c·2^l · D/2^l · H/2^l · W/2^l]`, modality-major
    /// - output: logits `[batch, 3, D, H, W]`
    fn decode(&self, fused: Vec<Tensor<2>>) -> Tensor<5> {
        assert_eq!(fused.len(), 4, "the UNet has 4 feature levels");
        let n = self.modalities.len();
        let mut levels = fused.into_iter().enumerate().map(|(l, t)| {
            let [b, f] = t.dims();
            let [d, h, w] = self.level_dims(l);
            let c = n * (self.base << l);
            assert_eq!(f, c * d * h * w, "fused level {l} has the wrong width");
            // Modality-major flattening: this reshape is channel concatenation.
            t.reshape([b, c, d, h, w])
        });
        let fused = [(); 4].map(|_| levels.next().expect("4 levels"));
        self.decoder(fused)
    }

    fn loss(&self, output: Tensor<5>, batch: &BratsBatch) -> Tensor<1> {
        let targets = batch
            .targets
            .clone()
            .expect("a training batch carries targets");
        segmentation_loss(output, targets, self.dice)
    }

    fn batch_size(batch: &BratsBatch) -> usize {
        batch.images[0].dims()[0]
    }
}

/// Soft Dice averaged over channels (and samples) + BCE-with-logits summed over channels
/// (DESIGN §2.2).
///
/// With `p = sigmoid(x)`: `dice = 1 − 2Σ p·g / (Σ p + Σ g + 1)`, the sums over the voxels of one
/// sample and channel ([`DiceReduction::PerSample`], then the mean over samples and channels) or
/// of one channel over the whole batch ([`DiceReduction::Pooled`], then the mean over channels);
/// `bce_c = mean(max(x, 0) − x·g + log(1 + e^−|x|))` over the batch and voxels of channel `c`
/// (BCE with logits, computed stably). Loss = `mean dice + Σ_c bce_c`.
///
/// # Shapes
/// - `logits`, `targets`: `[batch, C, D, H, W]` (targets 0/1)
/// - output: `[1]`
pub fn segmentation_loss(logits: Tensor<5>, targets: Tensor<5>, dice: DiceReduction) -> Tensor<1> {
    assert_eq!(logits.dims(), targets.dims(), "logits and targets differ");
    // On the CPU device as one parallel op with its own backward (mckd-kernels' `segloss`);
    // the tensor-op composition below elsewhere.
    let per_sample = matches!(dice, DiceReduction::PerSample);
    if let Some(loss) = mckd_kernels::segmentation_loss(logits.clone(), targets.clone(), per_sample)
    {
        return loss;
    }
    composed_segmentation_loss(logits, targets, dice)
}

/// [`segmentation_loss`] from tensor ops (any device).
fn composed_segmentation_loss(
    logits: Tensor<5>,
    targets: Tensor<5>,
    dice: DiceReduction,
) -> Tensor<1> {
    let [b, c, d, h, w] = logits.dims();
    let n = b * d * h * w;
    let dice = match dice {
        DiceReduction::PerSample => {
            let v = d * h * w;
            let p: Tensor<2> = sigmoid(logits.clone()).reshape([b * c, v]); // [B·C, voxels]
            let y: Tensor<2> = targets.clone().reshape([b * c, v]);
            let inter = (p.clone() * y.clone()).sum_dim(1); // [B·C, 1]
            let denom = p.sum_dim(1) + y.sum_dim(1) + 1.0;
            (inter * 2.0 / denom).neg() + 1.0
        }
        DiceReduction::Pooled => {
            let p: Tensor<2> = sigmoid(logits.clone()).swap_dims(0, 1).reshape([c, n]);
            let y: Tensor<2> = targets.clone().swap_dims(0, 1).reshape([c, n]);
            let inter = (p.clone() * y.clone()).sum_dim(1); // [C, 1]
            let denom = p.sum_dim(1) + y.sum_dim(1) + 1.0;
            (inter * 2.0 / denom).neg() + 1.0
        }
    };
    let x: Tensor<2> = logits.swap_dims(0, 1).reshape([c, n]); // [C, voxels]
    let y: Tensor<2> = targets.swap_dims(0, 1).reshape([c, n]);
    // −y·log σ(x) − (1 − y)·log σ(−x) = max(x, 0) − x·y + log(1 + e^−|x|); burn's log_sigmoid
    // is the stable log-sum-exp form with an exact backward (the max/abs form has a wrong
    // subgradient at x = 0).
    let bce = (y.clone() * log_sigmoid(x.clone()) + (y.neg() + 1.0) * log_sigmoid(x.neg())).neg();
    let bce = bce.mean_dim(1); // [C, 1]
    dice.mean() + bce.sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mckd_core::{MckdModel, Normalisation};
    use mckd_train::to_vec;

    // Channel-major [3 channels, 2 voxels] values shared by the loss tests.
    const X: [f32; 6] = [0.5, -1.0, 2.0, 0.0, -0.3, 1.5];
    const Y: [f32; 6] = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0];

    const POOLED: DiceReduction = DiceReduction::Pooled;

    fn tensor5(v: &[f32], device: &Device) -> Tensor<5> {
        Tensor::from_data(TensorData::new(v.to_vec(), [1, 3, 1, 1, 2]), device)
    }

    /// The fused CPU loss and the tensor-op composition (the other devices' path) agree in
    /// value and logits gradient, both reductions, on a UNet-shaped batch.
    #[test]
    fn fused_and_composed_losses_agree() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let shape = [2, 3, 4, 5, 6];
        let x = Tensor::<5>::random(shape, burn::tensor::Distribution::Normal(0.0, 3.0), &device);
        let y = Tensor::<5>::random(shape, burn::tensor::Distribution::Default, &device)
            .greater_elem(0.6)
            .float();
        for dice in [DiceReduction::PerSample, DiceReduction::Pooled] {
            let run = |fused: bool| {
                let xg = x.clone().require_grad();
                let loss = if fused {
                    segmentation_loss(xg.clone(), y.clone(), dice)
                } else {
                    composed_segmentation_loss(xg.clone(), y.clone(), dice)
                };
                let v = loss.clone().into_scalar::<f32>();
                (v, to_vec(xg.grad(&loss.backward()).unwrap()))
            };
            let ((lf, gf), (lc, gc)) = (run(true), run(false));
            assert!((lf - lc).abs() < 1e-5, "{dice:?}: loss {lf} vs {lc}");
            for (a, b) in gf.iter().zip(&gc) {
                assert!((a - b).abs() < 1e-6, "{dice:?}: gradient {a} vs {b}");
            }
        }
    }

    #[test]
    fn per_sample_dice_is_the_mean_over_samples() {
        // Two samples, 3 channels, 2 voxels each. Sample 0 as in the pooled test; sample 1:
        // x1 = [[1.0, 2.0], [-2.0, 0.5], [0.0, -1.0]], y1 = [[0, 1], [0, 0], [1, 1]]. The
        // expected values are computed below in f64 with plain loops (the numpy equivalent:
        // per = 1 - 2*(p*y).sum(2)/(p.sum(2)+y.sum(2)+1) over [sample, channel, voxel] arrays,
        // pooled the same with the sums over axes (0, 2)).
        let x1 = [1.0f32, 2.0, -2.0, 0.5, 0.0, -1.0];
        let y1 = [0.0f32, 1.0, 0.0, 0.0, 1.0, 1.0];
        let device = Device::flex();
        let two = |a: &[f32], b: &[f32]| {
            let v: Vec<f32> = a.iter().chain(b).copied().collect();
            Tensor::<5>::from_data(TensorData::new(v, [2, 3, 1, 1, 2]), &device)
        };
        let (x, y) = (two(&X, &x1), two(&Y, &y1));
        // Independent computation in f64.
        let sig = |v: f32| 1.0 / (1.0 + (-f64::from(v)).exp());
        let (xs, ys): (Vec<&[f32]>, Vec<&[f32]>) = (vec![&X, &x1], vec![&Y, &y1]);
        let mut per = 0.0;
        let (mut pi, mut ps, mut pg) = ([0.0f64; 3], [0.0f64; 3], [0.0f64; 3]);
        let mut bce = 0.0;
        for s in 0..2 {
            for c in 0..3 {
                let (mut i, mut sp, mut sg) = (0.0, 0.0, 0.0);
                for k in 0..2 {
                    let (xv, yv) = (xs[s][c * 2 + k], f64::from(ys[s][c * 2 + k]));
                    let p = sig(xv);
                    i += p * yv;
                    sp += p;
                    sg += yv;
                    let xv = f64::from(xv);
                    bce += (xv.max(0.0) - xv * yv + (-xv.abs()).exp().ln_1p()) / 4.0;
                }
                per += (1.0 - 2.0 * i / (sp + sg + 1.0)) / 6.0;
                pi[c] += i;
                ps[c] += sp;
                pg[c] += sg;
            }
        }
        let pooled: f64 = (0..3)
            .map(|c| (1.0 - 2.0 * pi[c] / (ps[c] + pg[c] + 1.0)) / 3.0)
            .sum();
        let got = |r| f64::from(segmentation_loss(x.clone(), y.clone(), r).into_scalar::<f32>());
        assert!((got(DiceReduction::PerSample) - (per + bce)).abs() < 1e-5);
        assert!((got(DiceReduction::Pooled) - (pooled + bce)).abs() < 1e-5);
        assert!(
            (per - pooled).abs() > 1e-3,
            "the reductions must differ here"
        );
    }

    #[test]
    fn loss_matches_hand_computed_values() {
        // import numpy as np
        // x = np.array([[0.5,-1.0],[2.0,0.0],[-0.3,1.5]]); y = np.array([[1.,0.],[1.,1.],[0.,1.]])
        // p = 1/(1+np.exp(-x))
        // dice = 1 - 2*(p*y).sum(1)/(p.sum(1)+y.sum(1)+1)
        //   -> [0.56944098, 0.36961377, 0.49581177]
        // bce = (np.maximum(x,0) - x*y + np.log1p(np.exp(-np.abs(x)))).mean(1)
        //   -> [0.39366934, 0.4100376 , 0.37788426]
        // dice.mean() + bce.sum() -> 1.659880035160203
        let device = Device::flex();
        let loss = segmentation_loss(tensor5(&X, &device), tensor5(&Y, &device), POOLED);
        let v = loss.into_scalar::<f32>();
        assert!((v - 1.659_88).abs() < 1e-5, "{v}");
        // Perfect confident predictions: Dice → 1 − 2g/(2g+1), BCE → 0.
        let big: Vec<f32> = Y
            .iter()
            .map(|&y| if y > 0.5 { 200.0 } else { -200.0 })
            .collect();
        let v = segmentation_loss(tensor5(&big, &device), tensor5(&Y, &device), POOLED)
            .into_scalar::<f32>();
        // channel sums of g: 1, 2, 1 → dice 1/3, 1/5, 1/3
        let expect = (1.0 / 3.0 + 1.0 / 5.0 + 1.0 / 3.0) / 3.0;
        assert!((v - expect).abs() < 1e-5, "{v} vs {expect}");
    }

    #[test]
    fn loss_gradient_matches_the_derivative() {
        // d loss / d x_k (channel c, N voxels) = (1/3)·dDice_c/dp_k·p_k(1−p_k) + (p_k − y_k)/N
        // with dDice_c/dp_k = −2·(g_k·(S+1) − I)/(S+1)², I = Σpg, S = Σp + Σg.
        let device = Device::flex().autodiff();
        let x = tensor5(&X, &device).require_grad();
        let loss = segmentation_loss(x.clone(), tensor5(&Y, &device), POOLED);
        let grads = loss.backward();
        let g = to_vec(x.grad(&grads).expect("gradient"));
        let n = 2;
        for c in 0..3 {
            let xs = &X[c * n..(c + 1) * n];
            let ys = &Y[c * n..(c + 1) * n];
            let p: Vec<f32> = xs.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect();
            let i: f32 = p.iter().zip(ys).map(|(a, b)| a * b).sum();
            let s: f32 = p.iter().sum::<f32>() + ys.iter().sum::<f32>();
            for k in 0..n {
                let ddice = -2.0 * (ys[k] * (s + 1.0) - i) / ((s + 1.0) * (s + 1.0));
                let expect = ddice * p[k] * (1.0 - p[k]) / 3.0 + (p[k] - ys[k]) / n as f32;
                let got = g[c * n + k];
                assert!((got - expect).abs() < 1e-6, "c{c} k{k}: {got} vs {expect}");
            }
        }
    }

    #[test]
    fn shapes_for_non_cubic_sizes_and_parameter_count() {
        let device = Device::flex();
        device.seed(0);
        let spatial = [8, 24, 40];
        let net = UNetConfig::new()
            .with_base(4)
            .with_spatial(spatial)
            .init(&device);
        assert_eq!(net.num_params(), parameter_count(4));
        assert_eq!(parameter_count(4), 127_639);
        assert_eq!(parameter_count(8), 509_195);
        assert_eq!(parameter_count(16), 2_034_067);
        let c8 = UNetConfig::new().init(&device);
        assert_eq!(c8.num_params(), 509_195);
        let b = 2;
        let images = (0..4)
            .map(|_| {
                Tensor::random(
                    [b, 1, 8, 24, 40],
                    burn::tensor::Distribution::Default,
                    &device,
                )
            })
            .collect();
        let batch = BratsBatch {
            images,
            targets: None,
        };
        let model = MckdModel::new(net, Normalisation::Softmax, 0, &device);
        let mask = mckd_core::mask_tensor(
            &[
                vec![true, false, true, false],
                vec![false, false, false, true],
            ],
            &device,
        );
        let fwd = model.forward(&batch, &mask, mckd_core::Levels::Bottleneck);
        assert_eq!(fwd.output.dims(), [b, 3, 8, 24, 40]);
        let dims: Vec<[usize; 3]> = (0..4).map(|l| fwd.distilled(l).dims()).collect();
        assert_eq!(
            dims,
            vec![
                [b, 4, 4 * 8 * 24 * 40],
                [b, 4, 8 * 4 * 12 * 20],
                [b, 4, 16 * 2 * 6 * 10],
                [b, 4, 32 * 3 * 5],
            ]
        );
        assert!(check_spatial([8, 12, 16]).is_err());
    }

    #[test]
    fn distilling_every_level_averages_the_ckd_loss_over_the_levels() {
        // The inner step's CKD value against ckd_loss applied to each level of the features
        // the network computes for the same batch (before the step changes the weights).
        use mckd_core::{CkdReduction, Distance, LevelPolicy, Levels, Mckd, MckdConfig, ckd_loss};
        let device = Device::flex().autodiff();
        let spatial = [8, 8, 16];
        let b = 2;
        let images: Vec<Tensor<5>> = (0..4)
            .map(|m| {
                device.seed(10 + m);
                Tensor::random(
                    [b, 1, 8, 8, 16],
                    burn::tensor::Distribution::Normal(0.0, 1.0),
                    &device,
                )
            })
            .collect();
        let targets = Tensor::random(
            [b, 3, 8, 8, 16],
            burn::tensor::Distribution::Bernoulli(0.3),
            &device,
        );
        let batch = BratsBatch {
            images,
            targets: Some(targets),
        };
        let mask = mckd_core::mask_tensor(&vec![vec![true, false, true, true]; b], &device);
        let step = |distill: Levels| {
            device.seed(0);
            let net = UNetConfig::new()
                .with_base(2)
                .with_spatial(spatial)
                .init(&device);
            let model = MckdModel::new(net, Normalisation::Softmax, 0, &device);
            let w = model.iwv.normalised_detached();
            let per_level: Vec<f32> = (0..4)
                .map(|l| {
                    let enc = model.encode_all(&batch, &mask);
                    let f = Tensor::stack(enc.iter().map(|e| e.distilled(l)).collect(), 1);
                    let v = ckd_loss(
                        f.detach(),
                        mask.clone(),
                        w.clone(),
                        Distance::L1,
                        CkdReduction::BatchMean,
                    );
                    v.into_scalar::<f32>()
                })
                .collect();
            let config = MckdConfig {
                levels: LevelPolicy {
                    distill,
                    ..LevelPolicy::default()
                },
                ..MckdConfig::default()
            };
            let mut trainer = Mckd::new(model, config, task_optimiser());
            let stats = trainer.inner_step(&batch, &mask, 1e-3);
            (stats.ckd_loss, per_level)
        };
        // Each check against the same network's own levels (other tests may draw from the
        // device's generator between seeding and initialisation).
        let (bottleneck, levels) = step(Levels::Bottleneck);
        assert_eq!(levels.len(), 4);
        assert!(levels.iter().all(|&v| v > 0.0));
        let rel = |a: f32, b: f32| (a - b).abs() / b.abs();
        assert!(
            rel(bottleneck, levels[3]) < 1e-4,
            "{bottleneck} vs {levels:?}"
        );
        let (all, levels) = step(Levels::All);
        let mean = levels.iter().sum::<f32>() / 4.0;
        assert!(rel(all, mean) < 1e-4, "{all} vs mean of {levels:?}");
        assert!(
            rel(mean, levels[3]) > 1e-2,
            "the levels must differ for the test to bite"
        );
    }

    fn task_optimiser() -> burn::optim::ModuleOptimizer {
        burn::optim::SgdConfig::new().init()
    }
}
