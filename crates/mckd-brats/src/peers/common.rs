//! Pieces the BraTS peers share: the presence mask on the host, NaN-safe masking of missing
//! modalities, the per-modality encoder, the upsampling decoder, pre-norm and post-norm
//! convolutions, Gaussian noise from the method's generator, and the output heads (our three
//! sigmoid regions, or the peers' own softmax over {background, NCR/NET, ED, ET}).

use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{InstanceNorm, InstanceNormConfig, LeakyRelu, LeakyReluConfig, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::Bool;
use burn::tensor::activation::{log_softmax, softmax};
use mckd_kernels::{cat_channels, conv3d_1x1, conv3d_layer, instance_norm_leaky_relu};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::{ConvBlock, DiceReduction, OUT_CHANNELS, segmentation_loss};

/// Negative slope of the leaky ReLUs of our convolution blocks (the UNet's).
pub const SLOPE: f64 = 0.01;

/// Channels of the four encoder levels at base width `c`: `c, 2c, 4c, 8c` at full, ½, ¼ and
/// ⅛ resolution (the CPU UNet's).
pub fn widths(c: usize) -> [usize; 4] {
    [c, 2 * c, 4 * c, 8 * c]
}

/// A batch's presence mask on the host: which samples have which modality. Read once per
/// forward, so that a modality no sample has is never computed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    rows: Vec<Vec<bool>>,
}

impl Presence {
    /// The presence of a `[batch, modalities]` 0/1 mask tensor.
    pub fn of(mask: &Tensor<2>) -> Self {
        let [b, n] = mask.dims();
        let v = mckd_train::to_vec(mask.clone());
        Self {
            rows: (0..b)
                .map(|i| (0..n).map(|m| v[i * n + m] > 0.5).collect())
                .collect(),
        }
    }

    /// From rows of flags (one row per sample).
    ///
    /// # Panics
    /// If `rows` is empty, the rows differ in length, or a sample has no modality (an
    /// internal contract: the loop and the evaluation never ask for the empty subset).
    pub fn from_rows(rows: Vec<Vec<bool>>) -> Self {
        assert!(
            !rows.is_empty() && rows.iter().all(|r| r.iter().any(|&p| p)),
            "every sample needs a present modality"
        );
        assert!(
            rows.iter().all(|r| r.len() == rows[0].len()),
            "every sample needs a flag per modality"
        );
        Self { rows }
    }

    /// Number of modalities (the mask's width).
    pub fn modalities(&self) -> usize {
        self.rows.first().map_or(0, Vec::len)
    }

    /// Number of samples.
    pub fn batch(&self) -> usize {
        self.rows.len()
    }

    /// Whether sample `b` has modality `m`.
    pub fn has(&self, b: usize, m: usize) -> bool {
        self.rows[b][m]
    }

    /// Whether at least one sample has modality `m`.
    pub fn any(&self, m: usize) -> bool {
        self.rows.iter().any(|r| r[m])
    }

    /// Whether every sample has modality `m`.
    pub fn all(&self, m: usize) -> bool {
        self.rows.iter().all(|r| r[m])
    }

    /// Number of modalities sample `b` has.
    pub fn count(&self, b: usize) -> usize {
        self.rows[b].iter().filter(|&&p| p).count()
    }

    /// The modalities every sample has.
    pub fn common(&self) -> Vec<usize> {
        (0..self.modalities()).filter(|&m| self.all(m)).collect()
    }

    /// A per-sample value `f(b)` as a `[batch, 1, …, 1]` tensor of rank `D` (for broadcasting).
    pub fn per_sample<const D: usize>(
        &self,
        f: impl Fn(usize) -> f32,
        device: &Device,
    ) -> Tensor<D> {
        let b = self.batch();
        let mut shape = [1usize; D];
        shape[0] = b;
        Tensor::from_data(
            TensorData::new((0..b).map(f).collect::<Vec<f32>>(), shape),
            device,
        )
    }

    /// 1 where sample `b` has modality `m`, 0 elsewhere, as `[batch, 1, …, 1]`.
    pub fn column<const D: usize>(&self, m: usize, device: &Device) -> Tensor<D> {
        self.per_sample(|b| f32::from(u8::from(self.has(b, m))), device)
    }
}

/// `x` with the samples that lack modality `m` replaced by zeros, without reading them: a
/// masked fill, so that even a NaN in a missing sample cannot reach the result or its gradient
/// (a multiplication by 0 would keep it).
///
/// # Shapes
/// - `x`: `[batch, ...]` → the same
pub fn keep<const D: usize>(x: Tensor<D>, presence: &Presence, m: usize) -> Tensor<D> {
    if presence.all(m) {
        return x;
    }
    let shape = x.shape();
    let b = presence.batch();
    assert_eq!(shape[0], b, "keep: batch sizes differ");
    let missing: Vec<bool> = (0..b).map(|i| !presence.has(i, m)).collect();
    let mut one = [1usize; D];
    one[0] = b;
    let mask = Tensor::<1, Bool>::from_data(TensorData::new(missing, [b]), &x.device())
        .reshape(one)
        .expand(shape);
    x.mask_fill(mask, 0.0)
}

/// Standard-normal noise of `shape` from `rng` (Box–Muller), so that a method's sampling is
/// reproducible and restored with its checkpoint.
pub fn normal<const D: usize>(
    rng: &mut ChaCha8Rng,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let u1: f64 = rng.random();
        let u2: f64 = rng.random();
        let r = (-2.0 * (1.0 - u1).ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        v.push((r * t.cos()) as f32);
        if v.len() < n {
            v.push((r * t.sin()) as f32);
        }
    }
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// One modality's encoder: four levels of our convolution blocks with `c, 2c, 4c, 8c`
/// channels, going down by stride-2 convolutions (the CPU UNet's encoder) or, with `pool`, by
/// 2×2×2 max pooling before stride-1 blocks (U-HeMIS and U-HVED's encoders).
#[derive(Module, Debug)]
pub struct Encoder {
    blocks: Vec<ConvBlock>,
    #[module(skip)]
    pool: bool,
}

impl Encoder {
    /// An encoder at base width `c`.
    pub fn new(c: usize, pool: bool, device: &Device) -> Self {
        let w = widths(c);
        Self {
            blocks: (0..4)
                .map(|l| {
                    let c_in = if l == 0 { 1 } else { w[l - 1] };
                    let stride = if pool || l == 0 { 1 } else { 2 };
                    ConvBlock::new(c_in, w[l], stride, SLOPE, device)
                })
                .collect(),
            pool,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, 1, D, H, W]` (multiples of 8)
    /// - output: level `l` = `[batch, c·2^l, D/2^l, H/2^l, W/2^l]`, l = 0..4
    pub fn forward(&self, x: Tensor<5>) -> [Tensor<5>; 4] {
        let mut h = x;
        let mut out = Vec::with_capacity(4);
        for (l, block) in self.blocks.iter().enumerate() {
            if self.pool && l > 0 {
                h = mckd_nn::max_pool3d(h, [2; 3], [2; 3], [0; 3]);
            }
            h = block.forward(h);
            out.push(h.clone());
        }
        out.try_into().expect("four levels")
    }
}

/// ×2 trilinear upsampling (PyTorch's `align_corners` convention as given).
pub fn up2(x: Tensor<5>, align_corners: bool) -> Tensor<5> {
    let [_, _, d, h, w] = x.dims();
    mckd_nn::trilinear(x, [2 * d, 2 * h, 2 * w], align_corners)
}

/// A U-Net decoder without learned upsampling: per stage, ×2 trilinear upsampling,
/// concatenation with the skip of that level, one of our convolution blocks; then a 1×1×1
/// head (U-HVED's and U-HeMIS's decoders, mmFormer's single-modality decoder).
#[derive(Module, Debug)]
pub struct UpDecoder {
    blocks: Vec<ConvBlock>,
    head: Conv3d,
    #[module(skip)]
    align_corners: bool,
}

impl UpDecoder {
    /// `bottom` channels at ⅛, skips of `skips` channels at ¼, ½ and 1, stage outputs `outs`,
    /// a head to `head_out` channels.
    pub fn new(
        bottom: usize,
        skips: [usize; 3],
        outs: [usize; 3],
        head_out: usize,
        align_corners: bool,
        device: &Device,
    ) -> Self {
        let ins = [bottom, outs[0], outs[1]];
        Self {
            blocks: (0..3)
                .map(|k| ConvBlock::new(ins[k] + skips[k], outs[k], 1, SLOPE, device))
                .collect(),
            head: Conv3dConfig::new([outs[2], head_out], [1, 1, 1]).init(device),
            align_corners,
        }
    }

    /// # Shapes
    /// - `bottom`: `[batch, bottom, D/8, H/8, W/8]`
    /// - `skips`: `[batch, skips[k], D/4, …]`, `[…, D/2, …]`, `[…, D, …]`
    /// - output: `[batch, head_out, D, H, W]`
    pub fn forward(&self, bottom: Tensor<5>, skips: [Tensor<5>; 3]) -> Tensor<5> {
        let mut x = bottom;
        for (block, skip) in self.blocks.iter().zip(skips) {
            x = block.forward(cat_channels(vec![up2(x, self.align_corners), skip]));
        }
        conv1x1(&self.head, x)
    }
}

/// A 1×1×1 convolution as a batched GEMM (`mckd_kernels::conv3d_1x1`).
pub fn conv1x1(layer: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    conv3d_1x1(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// A `k³` convolution with padding `k/2` and a bias.
pub fn conv(c_in: usize, c_out: usize, k: usize, device: &Device) -> Conv3d {
    Conv3dConfig::new([c_in, c_out], [k, k, k])
        .with_padding(PaddingConfig3d::Explicit(k / 2, k / 2, k / 2))
        .init(device)
}

fn run_conv(layer: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    if layer.kernel_size == [1, 1, 1] && layer.stride == [1, 1, 1] && layer.groups == 1 {
        conv1x1(layer, x)
    } else {
        conv3d_layer(layer, x)
    }
}

/// A pre-norm convolution: InstanceNorm (affine) → LeakyReLU → `k³` convolution (mmFormer's
/// `general_conv3d_prenorm`; its norm has no affine parameters).
#[derive(Module, Debug)]
pub struct NormActConv {
    norm: InstanceNorm,
    act: LeakyRelu,
    conv: Conv3d,
}

impl NormActConv {
    /// `c_in` → `c_out` channels, kernel `k`, leaky slope `slope`.
    pub fn new(c_in: usize, c_out: usize, k: usize, slope: f64, device: &Device) -> Self {
        Self {
            norm: InstanceNormConfig::new(c_in).init(device),
            act: LeakyReluConfig::new().with_negative_slope(slope).init(),
            conv: conv(c_in, c_out, k, device),
        }
    }

    /// # Shapes
    /// `[batch, c_in, D, H, W]` → `[batch, c_out, D, H, W]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        run_conv(
            &self.conv,
            instance_norm_leaky_relu(&self.norm, &self.act, x),
        )
    }
}

/// A post-norm convolution: `k³` convolution → InstanceNorm (affine) → LeakyReLU
/// (Robust-MSeg's `general_conv3d`).
#[derive(Module, Debug)]
pub struct ConvNormAct {
    conv: Conv3d,
    norm: InstanceNorm,
    act: LeakyRelu,
}

impl ConvNormAct {
    /// `c_in` → `c_out` channels, kernel `k`, leaky slope `slope`.
    pub fn new(c_in: usize, c_out: usize, k: usize, slope: f64, device: &Device) -> Self {
        Self {
            conv: conv(c_in, c_out, k, device),
            norm: InstanceNormConfig::new(c_out).init(device),
            act: LeakyReluConfig::new().with_negative_slope(slope).init(),
        }
    }

    /// # Shapes
    /// `[batch, c_in, D, H, W]` → `[batch, c_out, D, H, W]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        instance_norm_leaky_relu(&self.norm, &self.act, run_conv(&self.conv, x))
    }
}

/// The loss of a peer's own softmax head over {background, NCR/NET, ED, ET}.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NativeLoss {
    /// NiftyNet's cross-entropy + Dice with a squared denominator (U-HeMIS, U-HVED):
    /// `mean CE + 1 − mean_c 2Σpg / (Σp² + Σg² + 1e-5)`, sums over the batch and voxels.
    NiftyNet,
    /// mmFormer's class-weighted cross-entropy + Dice: `mean_{b,v} −Σ_c w_bc g log max(p,
    /// 0.005)` with `w_bc = 1 − (voxels of c in b)/(voxels of b)`, plus `1 − mean_c 2Σpg /
    /// (Σp + Σg + 1e-7)` (background included).
    MmFormer,
    /// Robust-MSeg's: the same weighted cross-entropy, and Dice `1 − mean_c 2Σpg / (Σp² + Σg +
    /// 1e-7)`.
    RobustSeg,
}

/// A peer's output head: our three sigmoid regions with [`segmentation_loss`] (the default, so
/// that only the missing-modality mechanism differs), or the peer's own softmax over four
/// classes with its own loss (`--native-head`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Head {
    /// ET, TC, WT sigmoids; soft Dice + BCE.
    Regions(DiceReduction),
    /// Softmax over {background, NCR/NET, ED, ET}.
    Native(NativeLoss),
}

/// Number of classes of the native heads.
pub const NATIVE_CLASSES: usize = 4;

impl Head {
    /// Output channels.
    pub fn channels(self) -> usize {
        match self {
            Head::Regions(_) => OUT_CHANNELS,
            Head::Native(_) => NATIVE_CLASSES,
        }
    }

    /// The loss of `logits` against region targets.
    ///
    /// # Shapes
    /// - `logits`: `[batch, channels, D, H, W]`; `targets`: `[batch, 3, D, H, W]` (ET, TC, WT)
    /// - output: `[1]`
    pub fn loss(self, logits: Tensor<5>, targets: Tensor<5>) -> Tensor<1> {
        match self {
            Head::Regions(dice) => segmentation_loss(logits, targets, dice),
            Head::Native(kind) => native_loss(kind, logits, class_targets(targets)),
        }
    }

    /// Region logits (ET, TC, WT) whose sigmoids the evaluation averages and thresholds.
    ///
    /// For the native head, the region probabilities are sums of class probabilities (ET =
    /// p_ET, TC = p_NCR + p_ET, WT = 1 − p_bg), written as exact logits:
    /// `logit(Σ_{c∈R} p_c) = lse_{c∈R} x_c − lse_{c∉R} x_c`.
    ///
    /// # Shapes
    /// `[batch, channels, D, H, W]` → `[batch, 3, D, H, W]`
    pub fn region_logits(self, logits: Tensor<5>) -> Tensor<5> {
        match self {
            Head::Regions(_) => logits,
            Head::Native(_) => {
                let lse = |idx: &[usize]| -> Tensor<5> {
                    let parts: Vec<Tensor<5>> = idx
                        .iter()
                        .map(|&c| logits.clone().narrow(1, c, 1))
                        .collect();
                    let x = Tensor::cat(parts, 1);
                    let m = x.clone().max_dim(1);
                    (x - m.clone()).exp().sum_dim(1).log() + m
                };
                // Classes: 0 background, 1 NCR/NET, 2 ED, 3 ET.
                let et = lse(&[3]) - lse(&[0, 1, 2]);
                let tc = lse(&[1, 3]) - lse(&[0, 2]);
                let wt = lse(&[1, 2, 3]) - lse(&[0]);
                Tensor::cat(vec![et, tc, wt], 1)
            }
        }
    }
}

/// One-hot classes {background, NCR/NET, ED, ET} from nested region targets (ET ⊂ TC ⊂ WT):
/// background = 1 − WT, NCR/NET = TC − ET, ED = WT − TC, ET = ET.
///
/// # Shapes
/// `[batch, 3, D, H, W]` → `[batch, 4, D, H, W]`
pub fn class_targets(targets: Tensor<5>) -> Tensor<5> {
    let et = targets.clone().narrow(1, 0, 1);
    let tc = targets.clone().narrow(1, 1, 1);
    let wt = targets.narrow(1, 2, 1);
    Tensor::cat(
        vec![
            wt.clone().neg() + 1.0,
            (tc.clone() - et.clone()).clamp_min(0.0),
            (wt - tc).clamp_min(0.0),
            et,
        ],
        1,
    )
}

/// The native losses (see [`NativeLoss`]) of 4-class logits against one-hot classes.
///
/// # Shapes
/// - `logits`, `classes`: `[batch, 4, D, H, W]`
/// - output: `[1]`
pub fn native_loss(kind: NativeLoss, logits: Tensor<5>, classes: Tensor<5>) -> Tensor<1> {
    let [b, k, d, h, w] = logits.dims();
    let v = d * h * w;
    let p = softmax(logits.clone(), 1);
    // Per class over the batch and voxels: [k, b·v].
    let per_class = |t: Tensor<5>| -> Tensor<2> { t.swap_dims(0, 1).reshape([k, b * v]) };
    let (pc, gc) = (per_class(p.clone()), per_class(classes.clone()));
    let inter = (pc.clone() * gc.clone()).sum_dim(1); // [k, 1]
    match kind {
        NativeLoss::NiftyNet => {
            let ce = (classes * log_softmax(logits, 1)).sum_dim(1).mean().neg();
            let den = pc.powf_scalar(2.0).sum_dim(1) + gc.powf_scalar(2.0).sum_dim(1) + 1e-5;
            ce + ((inter * 2.0) / den).mean().neg() + 1.0
        }
        NativeLoss::MmFormer | NativeLoss::RobustSeg => {
            let g: Tensor<3> = classes.clone().reshape([b, k, v]);
            let counts = g.clone().sum_dim(2); // [b, k, 1]
            let total = counts.clone().sum_dim(1); // [b, 1, 1]
            let weight = (counts / total).neg() + 1.0;
            let logp = p.reshape([b, k, v]).clamp(0.005, 1.0).log();
            let ce = (g * logp * weight).sum_dim(1).mean().neg();
            let pden = match kind {
                NativeLoss::MmFormer => pc.sum_dim(1),
                _ => pc.powf_scalar(2.0).sum_dim(1),
            };
            let den = pden + gc.sum_dim(1) + 1e-7;
            ce + ((inter * 2.0) / den).mean().neg() + 1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t5(v: &[f32], shape: [usize; 5], device: &Device) -> Tensor<5> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
    }

    #[test]
    fn keep_zeroes_missing_samples_without_reading_them() {
        let device = Device::flex().autodiff();
        let x = t5(
            &[1.0, 2.0, f32::NAN, f32::INFINITY],
            [2, 1, 1, 1, 2],
            &device,
        )
        .require_grad();
        let p = Presence::from_rows(vec![vec![true, true], vec![false, true]]);
        let y = keep(x.clone(), &p, 0);
        assert_eq!(mckd_train::to_vec(y.clone()), vec![1.0, 2.0, 0.0, 0.0]);
        let g = mckd_train::to_vec(x.grad(&(y * 3.0).sum().backward()).unwrap());
        assert_eq!(g, vec![3.0, 3.0, 0.0, 0.0]);
        assert!(p.any(0) && !p.all(0) && p.all(1));
        assert_eq!(p.common(), vec![1]);
    }

    #[test]
    fn class_targets_split_the_nested_regions() {
        let device = Device::flex();
        // Voxels: background, edema, necrosis, enhancing; channels ET, TC, WT.
        let r = t5(
            &[0., 0., 0., 1., 0., 0., 1., 1., 0., 1., 1., 1.],
            [1, 3, 1, 1, 4],
            &device,
        );
        let c = mckd_train::to_vec(class_targets(r));
        // Channel-major [4 classes, 4 voxels].
        assert_eq!(
            c,
            vec![
                1., 0., 0., 0., // background
                0., 0., 1., 0., // NCR/NET
                0., 1., 0., 0., // ED
                0., 0., 0., 1., // ET
            ]
        );
    }

    #[test]
    fn native_losses_match_hand_computed_values() {
        // Two voxels of one sample, 4 classes; logits x (channel-major) and classes bg, ET.
        // import numpy as np
        // x = np.array([[1.0, -0.5], [0.2, 0.0], [-1.0, 0.3], [0.5, 2.0]])
        // g = np.array([[1., 0.], [0., 0.], [0., 0.], [0., 1.]])
        // p = np.exp(x) / np.exp(x).sum(0)
        // ce = -(g * np.log(p)).sum(0).mean()
        // nifty = ce + 1 - (2*(p*g).sum(1) / ((p**2).sum(1) + (g**2).sum(1) + 1e-5)).mean()
        // w = 1 - g.sum(1) / g.sum()          # [0.5, 1, 1, 0.5]
        // wce = -(w[:, None] * g * np.log(np.clip(p, 0.005, 1))).sum(0).mean()
        // mm = wce + 1 - (2*(p*g).sum(1) / (p.sum(1) + g.sum(1) + 1e-7)).mean()
        // rs = wce + 1 - (2*(p*g).sum(1) / ((p**2).sum(1) + g.sum(1) + 1e-7)).mean()
        let x = [1.0f64, -0.5, 0.2, 0.0, -1.0, 0.3, 0.5, 2.0];
        let g = [1.0f64, 0., 0., 0., 0., 0., 0., 1.];
        let mut p = [0.0f64; 8];
        for v in 0..2 {
            let z: f64 = (0..4).map(|c| x[c * 2 + v].exp()).sum();
            for c in 0..4 {
                p[c * 2 + v] = x[c * 2 + v].exp() / z;
            }
        }
        let ce = -(0..8).map(|i| g[i] * p[i].ln()).sum::<f64>() / 2.0;
        let sum = |f: &dyn Fn(usize) -> f64, c: usize| f(c * 2) + f(c * 2 + 1);
        let dice = |den: &dyn Fn(usize) -> f64| {
            (0..4)
                .map(|c| 2.0 * sum(&|i| p[i] * g[i], c) / den(c))
                .sum::<f64>()
                / 4.0
        };
        let nifty =
            ce + 1.0 - dice(&|c| sum(&|i| p[i] * p[i], c) + sum(&|i| g[i] * g[i], c) + 1e-5);
        let w = [0.5, 1.0, 1.0, 0.5];
        let wce = -(0..8)
            .map(|i| w[i / 2] * g[i] * p[i].max(0.005).ln())
            .sum::<f64>()
            / 2.0;
        let mm = wce + 1.0 - dice(&|c| sum(&|i| p[i], c) + sum(&|i| g[i], c) + 1e-7);
        let rs = wce + 1.0 - dice(&|c| sum(&|i| p[i] * p[i], c) + sum(&|i| g[i], c) + 1e-7);
        let device = Device::flex();
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let gf: Vec<f32> = g.iter().map(|&v| v as f32).collect();
        for (kind, want) in [
            (NativeLoss::NiftyNet, nifty),
            (NativeLoss::MmFormer, mm),
            (NativeLoss::RobustSeg, rs),
        ] {
            let got = native_loss(
                kind,
                t5(&xf, [1, 4, 1, 1, 2], &device),
                t5(&gf, [1, 4, 1, 1, 2], &device),
            )
            .into_scalar::<f32>();
            assert!(
                (f64::from(got) - want).abs() < 1e-5,
                "{kind:?}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn native_region_logits_are_the_logits_of_summed_class_probabilities() {
        let device = Device::flex();
        let x = [0.3f32, -1.0, 2.0, 0.5, -0.2, 1.5, 0.1, -2.0];
        let r = mckd_train::to_vec(Head::Native(NativeLoss::NiftyNet).region_logits(t5(
            &x,
            [1, 4, 1, 1, 2],
            &device,
        )));
        for v in 0..2 {
            let e: Vec<f64> = (0..4).map(|c| f64::from(x[c * 2 + v]).exp()).collect();
            let z: f64 = e.iter().sum();
            let want = [e[3] / z, (e[1] + e[3]) / z, 1.0 - e[0] / z];
            for (k, w) in want.iter().enumerate() {
                let got = 1.0 / (1.0 + (-f64::from(r[k * 2 + v])).exp());
                assert!((got - w).abs() < 1e-6, "region {k} voxel {v}: {got} vs {w}");
            }
        }
    }

    #[test]
    fn normal_noise_has_unit_moments_and_follows_the_seed() {
        use rand::SeedableRng;
        let device = Device::flex();
        let mut a = ChaCha8Rng::seed_from_u64(3);
        let mut b = ChaCha8Rng::seed_from_u64(3);
        let x = mckd_train::to_vec(normal::<1>(&mut a, [20_001], &device));
        assert_eq!(
            x,
            mckd_train::to_vec(normal::<1>(&mut b, [20_001], &device))
        );
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn encoders_and_decoder_keep_the_level_shapes() {
        let device = Device::flex();
        let x = Tensor::<5>::zeros([2, 1, 8, 16, 24], &device);
        for pool in [false, true] {
            let e = Encoder::new(2, pool, &device).forward(x.clone());
            let dims: Vec<[usize; 5]> = e.iter().map(|t| t.dims()).collect();
            assert_eq!(
                dims,
                vec![
                    [2, 2, 8, 16, 24],
                    [2, 4, 4, 8, 12],
                    [2, 8, 2, 4, 6],
                    [2, 16, 1, 2, 3]
                ]
            );
            let dec = UpDecoder::new(16, [8, 4, 2], [8, 4, 2], 3, pool, &device);
            let [a, b, c, d] = e;
            assert_eq!(dec.forward(d, [c, b, a]).dims(), [2, 3, 8, 16, 24]);
        }
    }
}
