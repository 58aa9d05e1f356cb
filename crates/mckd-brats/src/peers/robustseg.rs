//! Robust-MSeg (Chen et al., MICCAI 2019; `cchen-cc/Robust-Mseg` `model.py`): each modality is
//! disentangled into **content** (a per-modality U-Net encoder, dropped modalities' maps zeroed
//! at every level) and **style** (a small encoder to an 8-d code); the content maps are fused by
//! **gated fusion** at every level (a 3³ convolution of the four masked maps gives one sigmoid
//! gate per modality, the gated maps are concatenated and reduced by a 1×1 convolution); a U-Net
//! decoder segments the fused maps; in training, one image decoder per modality reconstructs
//! the modality from the fused bottleneck and its style code through AdaIN residual blocks.
//! Loss `seg + 0.1·Σ_m mean|x_m − x̂_m| + 0.1·Σ_m KL` with the KL of the AdaIN parameter
//! vectors, `½Σ_k(μ_k² + σ_k² − 1 − log σ_k²)` averaged over the batch, μ the scale and σ the
//! shift of AdaIN (the authors' code: "μ multiplies, σ is added") (PEERS §6).
//!
//! Reduced form (PEERS §6.4): content encoders = our encoder at `c…8c`; decoder stages =
//! nearest ×2, a 3³ convolution to the level's width, concatenation with the fused map, a 3³
//! and a 1×1 convolution (post-norm, leaky slope 0.2, zero padding instead of reflection);
//! style encoders = four 3³ stride-2 convolutions (`1 → c → 2c → 4c → 4c`, ReLU, no norm; the
//! authors': 7³ at full resolution then 4³ stride 2), global average, a linear map to the code;
//! image decoders = an MLP (`8 → 8c → 8c`, then scale and shift heads), **two** AdaIN residual
//! blocks at `8c` (the authors': four), two stages of nearest ×2 + 3³ convolution + layer norm
//! over C×D×H×W + ReLU, and a 3³ output convolution: the reconstruction is at **half**
//! resolution and compared with the 2×2×2-averaged image. `log σ²` gets an ε of 1e-8.

use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{InstanceNorm, InstanceNormConfig, Linear, LinearConfig, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use mckd_kernels::{cat_channels, conv3d_layer};
use mckd_nn::{LayerNorm3d, LayerNorm3dConfig, adain, upsample_nearest3d};
use rand_chacha::ChaCha8Rng;

use super::common::{ConvNormAct, Encoder, Head, Presence, conv, conv1x1, keep, widths};
use super::{PeerNet, RobustSegConfig, Term};
use crate::model::{BratsBatch, N_MODALITIES};

/// Leaky slope of Robust-MSeg's convolutions.
const RS_SLOPE: f64 = 0.2;
/// ε of AdaIN's instance statistics (the authors').
const ADAIN_EPS: f64 = 1e-5;

/// Gated fusion of one level (see the module docs).
#[derive(Module, Debug)]
pub struct GatedFusion {
    gate: Conv3d,
    gate_norm: InstanceNorm,
    fuse: ConvNormAct,
}

impl GatedFusion {
    fn new(c: usize, device: &Device) -> Self {
        Self {
            gate: conv(N_MODALITIES * c, N_MODALITIES, 3, device),
            gate_norm: InstanceNormConfig::new(N_MODALITIES).init(device),
            fuse: ConvNormAct::new(N_MODALITIES * c, c, 1, RS_SLOPE, device),
        }
    }

    /// # Shapes
    /// - `contents`: 4 × `[B, C, D, H, W]` (missing modalities zeroed)
    /// - output: `[B, C, D, H, W]`
    pub fn forward(&self, contents: Vec<Tensor<5>>) -> Tensor<5> {
        let x = Tensor::cat(contents.clone(), 1);
        let gates = sigmoid(self.gate_norm.forward(conv3d_layer(&self.gate, x))); // [B, 4, …]
        let gated = contents
            .into_iter()
            .enumerate()
            .map(|(m, f)| f * gates.clone().narrow(1, m, 1))
            .collect();
        self.fuse.forward(Tensor::cat(gated, 1))
    }
}

/// A style encoder: four 3³ stride-2 convolutions with ReLU, global average, linear map.
#[derive(Module, Debug)]
pub struct StyleEncoder {
    convs: Vec<Conv3d>,
    out: Linear,
}

impl StyleEncoder {
    fn new(c: usize, style_dim: usize, device: &Device) -> Self {
        let ch = [1, c, 2 * c, 4 * c, 4 * c];
        Self {
            convs: (0..4)
                .map(|k| {
                    Conv3dConfig::new([ch[k], ch[k + 1]], [3, 3, 3])
                        .with_stride([2, 2, 2])
                        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
                        .init(device)
                })
                .collect(),
            out: LinearConfig::new(4 * c, style_dim).init(device),
        }
    }

    /// # Shapes
    /// `[B, 1, D, H, W]` → `[B, style_dim]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<2> {
        let mut h = x;
        for c in &self.convs {
            h = relu(conv3d_layer(c, h));
        }
        let [b, c, ..] = h.dims();
        self.out
            .forward(mckd_nn::global_avg_pool3d(h).reshape([b, c]))
    }
}

/// An image decoder: AdaIN residual blocks on the fused bottleneck, then upsampling to half
/// resolution.
#[derive(Module, Debug)]
pub struct ImageDecoder {
    mlp1: Linear,
    mlp2: Linear,
    scale: Linear,
    shift: Linear,
    res_a: Vec<Conv3d>,
    res_b: Vec<Conv3d>,
    up: Vec<Conv3d>,
    norms: Vec<LayerNorm3d>,
    out: Conv3d,
}

impl ImageDecoder {
    fn new(c: usize, style_dim: usize, device: &Device) -> Self {
        let w = widths(c);
        let lin = |a, b| LinearConfig::new(a, b).init(device);
        Self {
            mlp1: lin(style_dim, w[3]),
            mlp2: lin(w[3], w[3]),
            scale: lin(w[3], w[3]),
            shift: lin(w[3], w[3]),
            res_a: (0..2).map(|_| conv(w[3], w[3], 3, device)).collect(),
            res_b: (0..2).map(|_| conv(w[3], w[3], 3, device)).collect(),
            up: vec![conv(w[3], w[2], 3, device), conv(w[2], w[1], 3, device)],
            norms: vec![
                LayerNorm3dConfig::new(w[2]).init(device),
                LayerNorm3dConfig::new(w[1]).init(device),
            ],
            out: conv(w[1], 1, 3, device),
        }
    }

    /// AdaIN's scale (the authors' μ) and shift (σ) from a style code.
    ///
    /// # Shapes
    /// `[B, style_dim]` → (`[B, 8c]`, `[B, 8c]`)
    pub fn adain_params(&self, style: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let h = relu(self.mlp2.forward(relu(self.mlp1.forward(style))));
        (self.scale.forward(h.clone()), self.shift.forward(h))
    }

    /// The reconstruction at half resolution, with AdaIN's scale and shift.
    ///
    /// # Shapes
    /// - `content`: `[B, 8c, D/8, H/8, W/8]`; `style`: `[B, style_dim]`
    /// - output: `[B, 1, D/2, H/2, W/2]`
    pub fn forward(
        &self,
        content: Tensor<5>,
        style: Tensor<2>,
    ) -> (Tensor<5>, Tensor<2>, Tensor<2>) {
        let (scale, shift) = self.adain_params(style);
        let norm = |x: Tensor<5>| adain(x, scale.clone(), shift.clone(), ADAIN_EPS);
        let mut x = content;
        for (a, b) in self.res_a.iter().zip(&self.res_b) {
            let h = relu(norm(conv3d_layer(a, x.clone())));
            x = x + norm(conv3d_layer(b, h));
        }
        for (c, n) in self.up.iter().zip(&self.norms) {
            x = relu(n.forward(conv3d_layer(c, upsample_nearest3d(x, [2; 3]))));
        }
        (conv3d_layer(&self.out, x), scale, shift)
    }
}

/// The KL of the AdaIN parameters: `½ Σ_k (scale_k² + shift_k² − 1 − log(shift_k² + 1e-8))`
/// per sample, averaged over the batch.
///
/// # Shapes
/// - `scale`, `shift`: `[B, K]`; output `[1]`
pub fn adain_kl(scale: Tensor<2>, shift: Tensor<2>) -> Tensor<1> {
    let s2 = shift.powf_scalar(2.0);
    let t = scale.powf_scalar(2.0) + s2.clone() - 1.0 - (s2 + 1e-8).log();
    t.sum_dim(1).mean() * 0.5
}

/// The Robust-MSeg network.
#[derive(Module, Debug)]
pub struct RobustSeg {
    content: Vec<Encoder>,
    style: Vec<StyleEncoder>,
    gates: Vec<GatedFusion>,
    up_conv: Vec<ConvNormAct>,
    dec_a: Vec<ConvNormAct>,
    dec_b: Vec<ConvNormAct>,
    head: Conv3d,
    recon: Vec<ImageDecoder>,
    #[module(skip)]
    head_kind: Head,
    #[module(skip)]
    cfg: RobustSegConfig,
}

impl RobustSeg {
    /// The network at base width `c` with `head`.
    pub fn new(c: usize, head: Head, cfg: RobustSegConfig, device: &Device) -> Self {
        let w = widths(c);
        Self {
            content: (0..N_MODALITIES)
                .map(|_| Encoder::new(c, false, device))
                .collect(),
            style: (0..N_MODALITIES)
                .map(|_| StyleEncoder::new(c, cfg.style_dim, device))
                .collect(),
            gates: (0..4).map(|l| GatedFusion::new(w[l], device)).collect(),
            up_conv: (0..3)
                .map(|l| ConvNormAct::new(w[l + 1], w[l], 3, RS_SLOPE, device))
                .collect(),
            dec_a: (0..3)
                .map(|l| ConvNormAct::new(2 * w[l], w[l], 3, RS_SLOPE, device))
                .collect(),
            dec_b: (0..3)
                .map(|l| ConvNormAct::new(w[l], w[l], 1, RS_SLOPE, device))
                .collect(),
            head: conv(w[0], head.channels(), 1, device),
            recon: (0..N_MODALITIES)
                .map(|_| ImageDecoder::new(c, cfg.style_dim, device))
                .collect(),
            head_kind: head,
            cfg,
        }
    }

    /// The fused content maps of the four levels and the head's logits.
    ///
    /// # Shapes
    /// - fused level l: `[B, c·2^l, D/2^l, …]`; logits `[B, head channels, D, H, W]`
    pub fn forward(&self, batch: &BratsBatch, presence: &Presence) -> (Vec<Tensor<5>>, Tensor<5>) {
        let device = batch.images[0].device();
        let feats: Vec<Option<[Tensor<5>; 4]>> = (0..N_MODALITIES)
            .map(|m| {
                presence
                    .any(m)
                    .then(|| self.content[m].forward(keep(batch.images[m].clone(), presence, m)))
            })
            .collect();
        let fused: Vec<Tensor<5>> = (0..4)
            .map(|l| {
                let like = feats.iter().flatten().next().expect("a present modality")[l].dims();
                let contents = (0..N_MODALITIES)
                    .map(|m| match &feats[m] {
                        Some(f) => keep(f[l].clone(), presence, m),
                        None => Tensor::zeros(like, &device),
                    })
                    .collect();
                self.gates[l].forward(contents)
            })
            .collect();
        let mut y = fused[3].clone();
        for l in (0..3).rev() {
            y = self.up_conv[l].forward(upsample_nearest3d(y, [2; 3]));
            y = self.dec_b[l]
                .forward(self.dec_a[l].forward(cat_channels(vec![y, fused[l].clone()])));
        }
        let logits = conv1x1(&self.head, y);
        (fused, logits)
    }
}

impl PeerNet for RobustSeg {
    fn term_names(&self) -> Vec<String> {
        vec!["task_loss".into(), "rec".into(), "kl".into()]
    }

    fn train_terms(&self, batch: &BratsBatch, mask: &Tensor<2>, _: &mut ChaCha8Rng) -> Vec<Term> {
        let presence = Presence::of(mask);
        let device = mask.device();
        let (fused, logits) = self.forward(batch, &presence);
        let targets = batch.targets.clone().expect("a training batch has targets");
        let seg = self.head_kind.loss(logits, targets);
        let candidates: Vec<usize> = if self.cfg.aux_reads_dropped {
            (0..N_MODALITIES).collect()
        } else {
            presence.common()
        };
        let mut rec: Option<Tensor<1>> = None;
        let mut kl: Option<Tensor<1>> = None;
        for &m in &candidates {
            let x = batch.images[m].clone();
            let style = self.style[m].forward(x.clone());
            let (x_hat, scale, shift) = self.recon[m].forward(fused[3].clone(), style);
            let target = mckd_nn::avg_pool3d(x, [2; 3], [2; 3], [0; 3], true);
            let r = (x_hat - target).abs().mean();
            let k = adain_kl(scale, shift);
            rec = Some(rec.map_or(r.clone(), |a| a + r));
            kl = Some(kl.map_or(k.clone(), |a| a + k));
        }
        let term = |t: Option<Tensor<1>>, w: f64| match t {
            Some(t) => Term::new(t, w),
            None => Term::new(Tensor::zeros([1], &device), 0.0),
        };
        vec![
            Term::new(seg, 1.0),
            term(rec, self.cfg.rec_weight),
            term(kl, self.cfg.kl_weight),
        ]
    }

    fn predict(&self, batch: &BratsBatch, mask: &Tensor<2>) -> Tensor<5> {
        let (_, logits) = self.forward(batch, &Presence::of(mask));
        self.head_kind.region_logits(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DiceReduction;
    use crate::peers::testing::{check_all_masks, check_training_ignores_missing};

    fn host(t: Tensor<2>) -> Vec<f64> {
        mckd_train::to_vec(t).into_iter().map(f64::from).collect()
    }

    /// `relu?(x·W + b)` on the host from a linear layer's parameters.
    fn linear64(l: &Linear, x: &[f64], rows: usize, relu: bool) -> Vec<f64> {
        let w = host(l.weight.val());
        let b: Vec<f64> = mckd_train::to_vec(l.bias.as_ref().unwrap().val())
            .into_iter()
            .map(f64::from)
            .collect();
        let [din, dout] = l.weight.val().dims();
        let mut out = vec![0.0; rows * dout];
        for r in 0..rows {
            for j in 0..dout {
                let v: f64 = (0..din)
                    .map(|i| x[r * din + i] * w[i * dout + j])
                    .sum::<f64>()
                    + b[j];
                out[r * dout + j] = if relu { v.max(0.0) } else { v };
            }
        }
        out
    }

    #[test]
    fn adain_statistics_and_kl_from_the_style_code() {
        let device = Device::flex();
        let dec = ImageDecoder::new(2, 8, &device);
        let style_v: Vec<f32> = (0..16).map(|i| ((i * 5) % 7) as f32 / 3.0 - 1.0).collect();
        let style = Tensor::<2>::from_data(TensorData::new(style_v.clone(), [2, 8]), &device);
        let (scale, shift) = dec.adain_params(style);
        // The MLP on the host: relu(relu(s·W1 + b1)·W2 + b2), then the two heads.
        let s: Vec<f64> = style_v.iter().map(|&v| f64::from(v)).collect();
        let h = linear64(&dec.mlp2, &linear64(&dec.mlp1, &s, 2, true), 2, true);
        let (want_scale, want_shift) = (
            linear64(&dec.scale, &h, 2, false),
            linear64(&dec.shift, &h, 2, false),
        );
        let (sc, sh) = (host(scale.clone()), host(shift.clone()));
        for k in 0..sc.len() {
            assert!((sc[k] - want_scale[k]).abs() < 1e-5 && (sh[k] - want_shift[k]).abs() < 1e-5);
        }
        // After AdaIN, every (sample, channel) has mean = shift and std = |scale|.
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
        let x = super::super::common::normal(&mut rng, [2, 16, 4, 4, 4], &device) * 0.7 + 0.1;
        let y = adain(x, scale.clone(), shift.clone(), ADAIN_EPS);
        let yv = mckd_train::to_vec(y);
        let n = 64;
        for bc in 0..32 {
            let v = &yv[bc * n..(bc + 1) * n];
            let mean = v.iter().map(|&a| f64::from(a)).sum::<f64>() / n as f64;
            let var = v
                .iter()
                .map(|&a| (f64::from(a) - mean).powi(2))
                .sum::<f64>()
                / n as f64;
            assert!(
                (mean - sh[bc]).abs() < 1e-4,
                "mean {bc}: {mean} vs {}",
                sh[bc]
            );
            assert!(
                (var.sqrt() - sc[bc].abs()).abs() < 1e-3 * (1.0 + sc[bc].abs()),
                "std {bc}: {} vs {}",
                var.sqrt(),
                sc[bc].abs()
            );
        }
        // KL = ½ Σ_k (μ² + σ² − 1 − log(σ² + 1e-8)), mean over the 2 samples.
        let k = sc.len() / 2;
        let want: f64 = (0..2)
            .map(|b| {
                (0..k)
                    .map(|i| {
                        let (m, s) = (sc[b * k + i], sh[b * k + i]);
                        0.5 * (m * m + s * s - 1.0 - (s * s + 1e-8).ln())
                    })
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 2.0;
        let got = f64::from(adain_kl(scale, shift).into_scalar::<f32>());
        assert!(
            (got - want).abs() < 1e-4 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }

    #[test]
    fn adain_kl_by_hand() {
        // import numpy as np
        // mu = np.array([[1.0, -0.5], [0.2, 2.0]])    # AdaIN scale (the authors' μ)
        // s = np.array([[0.5, 1.0], [-1.5, 0.1]])     # AdaIN shift (the authors' σ)
        // (0.5*(mu**2 + s**2 - 1 - np.log(s**2 + 1e-8))).sum(1).mean()   # 2.4951333191119276
        let device = Device::flex();
        let m = |v: [f32; 4]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [2, 2]), &device);
        let got = adain_kl(m([1.0, -0.5, 0.2, 2.0]), m([0.5, 1.0, -1.5, 0.1])).into_scalar::<f32>();
        assert!(
            (f64::from(got) - 2.495_133_319_111_927_6).abs() < 1e-5,
            "{got}"
        );
    }

    #[test]
    fn every_mask_gives_finite_region_logits_without_reading_missing_modalities() {
        let device = Device::flex();
        let net = RobustSeg::new(
            2,
            Head::Regions(DiceReduction::PerSample),
            RobustSegConfig::default(),
            &device,
        );
        check_all_masks(&net, [16, 8, 8], &device);
        let ad = Device::flex().autodiff();
        let strict = RobustSeg::new(
            2,
            Head::Native(super::super::NativeLoss::RobustSeg),
            RobustSegConfig {
                aux_reads_dropped: false,
                ..RobustSegConfig::default()
            },
            &ad,
        );
        for rows in [
            vec![vec![true, false, true, false]; 2],
            vec![
                vec![true, false, false, true],
                vec![false, false, false, true],
            ],
        ] {
            check_training_ignores_missing(&strict, [8, 8, 8], &rows, &ad);
        }
    }

    /// The reconstruction and AdaIN-KL terms through the style encoders and AdaIN.
    #[test]
    fn term_gradients_match_finite_differences() {
        let ad = Device::flex().autodiff();
        let net = crate::peers::testing::seeded(
            RobustSeg::new(
                2,
                Head::Regions(DiceReduction::PerSample),
                RobustSegConfig::default(),
                &ad,
            ),
            2,
        );
        crate::peers::testing::check_term_gradients(
            &net,
            [16, 16, 8],
            &[
                vec![true, false, true, true],
                vec![true, true, false, false],
            ],
            0,
            &ad,
        );
    }

    #[test]
    fn reconstructions_are_at_half_resolution() {
        let device = Device::flex();
        let dec = ImageDecoder::new(2, 8, &device);
        let content = Tensor::<5>::ones([1, 16, 1, 2, 3], &device);
        let (x, s, t) = dec.forward(content, Tensor::zeros([1, 8], &device));
        assert_eq!(x.dims(), [1, 1, 4, 8, 12]);
        assert_eq!((s.dims(), t.dims()), ([1, 16], [1, 16]));
    }
}
