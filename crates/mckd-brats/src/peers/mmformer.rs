//! mmFormer (Zhang et al., MICCAI 2022; `YaoZhang93/mmFormer` `mmformer.py`): a CNN encoder per
//! modality; at the bottleneck an **intra-modal** transformer per modality, then the features of
//! missing modalities are zeroed at every level; an **inter-modal** transformer over the tokens
//! of all four modalities; a fusion decoder with a region-fusion module (RFM) per level over the
//! masked four-modality concatenation; auxiliary predictions at the coarser levels ("prm") and a
//! shared single-modality decoder on each modality's own unmasked features ("sep"), both only in
//! training. Loss `fuse + Σ sep + Σ prm` (PEERS §3).
//!
//! * Transformer layer (pre-norm, depth 1 as the authors): `x ← x + MHSA(LN(x))`,
//!   `x ← x + FFN(LN(x))` with q/k/v without bias, an output projection with bias, FFN
//!   `dim → 4·dim → dim` with GELU; learnable positional embeddings (zero at start) added before
//!   the intra-modal layer and again before the inter-modal one.
//! * RFM_l: pre-norm 1×1 (4C → C), 3³ (C → C), 1×1 (C → C); the bottleneck's RFM reads the
//!   inter-modal output (4 × `8c` channels after a 1×1 projection).
//! * Decoder, from ⅛ up: trilinear ×2 (`align_corners` true, the authors'), a pre-norm 3³
//!   halving the channels, concatenation with the level's RFM output, pre-norm 3³ (2C → C) and
//!   1×1; auxiliary 1×1 heads at ⅛, ¼ and ½, upsampled to full size for their losses.
//!
//! Reduced form (PEERS §3.5): our encoder blocks at `c…8c` (4 levels, not 5; the authors'
//! residual pre-norm blocks replaced by ours), tokens at ⅛ resolution with the bottleneck's
//! `8c` channels as their dimension, 4 heads, no dropout (the authors': 0.1); the inter-modal
//! output is split back into each modality's own grid before the channel concatenation (the
//! authors' reshape mixes the token and channel axes); affine instance norms (the authors' have
//! none). The positional embeddings are learned on the training crop's ⅛ grid and resized
//! trilinearly to other grids (sliding-window tiles). The single-modality decoder runs on
//! **one** modality per step, drawn uniformly, its loss times the number of candidates (an
//! unbiased estimate of the sum over them); it is a U-Net decoder with our blocks (`4c, 2c,
//! c`).

use burn::module::Param;
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::conv::Conv3d;
use burn::nn::{Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use mckd_kernels::cat_channels;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::common::{
    Encoder, Head, NormActConv, Presence, UpDecoder, conv, conv1x1, keep, up2, widths,
};
use super::{MmformerConfig, PeerNet, Term};
use crate::model::{BratsBatch, N_MODALITIES};

/// Leaky slope of mmFormer's pre-norm convolutions.
const MM_SLOPE: f64 = 0.2;

/// A pre-norm transformer encoder layer (see the module docs).
#[derive(Module, Debug)]
pub struct TransformerLayer {
    norm1: LayerNorm,
    attn: MultiHeadAttention,
    norm2: LayerNorm,
    ff1: Linear,
    ff2: Linear,
    act: Gelu,
}

impl TransformerLayer {
    /// A layer of width `dim` with `heads` heads (`dim` a multiple of `heads`).
    pub fn new(dim: usize, heads: usize, device: &Device) -> Self {
        Self {
            norm1: LayerNormConfig::new(dim).init(device),
            attn: MultiHeadAttentionConfig::new(dim, heads)
                .with_dropout(0.0)
                .with_query_bias(false)
                .with_key_bias(false)
                .with_value_bias(false)
                .init(device),
            norm2: LayerNormConfig::new(dim).init(device),
            ff1: LinearConfig::new(dim, 4 * dim).init(device),
            ff2: LinearConfig::new(4 * dim, dim).init(device),
            act: Gelu::new(),
        }
    }

    /// Multi-head self-attention alone: per head h, `softmax(q_h k_hᵀ/√d_h) v_h` with `q = x·W_q`
    /// (likewise k, v), heads concatenated, then `·W_o + b_o`.
    ///
    /// # Shapes
    /// `[batch, tokens, dim]` → `[batch, tokens, dim]`
    pub fn attention(&self, x: Tensor<3>) -> Tensor<3> {
        self.attn.forward(MhaInput::self_attn(x)).context
    }

    /// # Shapes
    /// `[batch, tokens, dim]` → `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attention(self.norm1.forward(x));
        let h = self.norm2.forward(x.clone());
        x + self.ff2.forward(self.act.forward(self.ff1.forward(h)))
    }
}

/// A region-fusion module: pre-norm 1×1 (4C → C), 3³ (C → C), 1×1 (C → C).
#[derive(Module, Debug)]
pub struct Rfm {
    a: NormActConv,
    b: NormActConv,
    c: NormActConv,
}

impl Rfm {
    fn new(c_in: usize, c: usize, device: &Device) -> Self {
        Self {
            a: NormActConv::new(c_in, c, 1, MM_SLOPE, device),
            b: NormActConv::new(c, c, 3, MM_SLOPE, device),
            c: NormActConv::new(c, c, 1, MM_SLOPE, device),
        }
    }

    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        self.c.forward(self.b.forward(self.a.forward(x)))
    }
}

/// `[B, C, D, H, W]` → tokens `[B, D·H·W, C]`.
fn to_tokens(x: Tensor<5>) -> Tensor<3> {
    let [b, c, d, h, w] = x.dims();
    x.reshape([b, c, d * h * w]).swap_dims(1, 2)
}

/// Tokens `[B, D·H·W, C]` → `[B, C, D, H, W]`.
fn from_tokens(t: Tensor<3>, [d, h, w]: [usize; 3]) -> Tensor<5> {
    let [b, _, c] = t.dims();
    t.swap_dims(1, 2).reshape([b, c, d, h, w])
}

/// The mmFormer network.
#[derive(Module, Debug)]
pub struct MmFormer {
    encoders: Vec<Encoder>,
    embed: Vec<Conv3d>,
    pos: Vec<Param<Tensor<5>>>,
    intra: Vec<TransformerLayer>,
    inter: TransformerLayer,
    inter_out: Conv3d,
    rfm: Vec<Rfm>,
    up_conv: Vec<NormActConv>,
    dec_a: Vec<NormActConv>,
    dec_b: Vec<NormActConv>,
    aux: Vec<Conv3d>,
    head: Conv3d,
    sep: UpDecoder,
    #[module(skip)]
    head_kind: Head,
    #[module(skip)]
    cfg: MmformerConfig,
    #[module(skip)]
    base: usize,
}

/// What a forward pass computes.
pub struct Forward {
    /// The fused head's logits `[B, head channels, D, H, W]`.
    pub logits: Tensor<5>,
    /// The auxiliary predictions of ⅛, ¼ and ½, upsampled to `[B, head channels, D, H, W]`.
    pub aux: Vec<Tensor<5>>,
    /// The single-modality decoder's logits, if asked for.
    pub sep: Option<Tensor<5>>,
}

impl MmFormer {
    /// The network at base width `c` for training crops of `spatial` (D, H, W; the grid of
    /// the positional embeddings is `spatial/8`).
    ///
    /// # Panics
    /// If `8c` is not a multiple of `cfg.heads` (checked by the run config's validation).
    pub fn new(
        c: usize,
        spatial: [usize; 3],
        head: Head,
        cfg: MmformerConfig,
        device: &Device,
    ) -> Self {
        let w = widths(c);
        let dim = w[3];
        assert!(
            cfg.heads > 0 && dim.is_multiple_of(cfg.heads),
            "mmFormer: the token dimension must be a multiple of the heads"
        );
        let [d, h, wd] = spatial.map(|s| s / 8);
        let h_out = head.channels();
        Self {
            encoders: (0..N_MODALITIES)
                .map(|_| Encoder::new(c, false, device))
                .collect(),
            embed: (0..N_MODALITIES)
                .map(|_| conv(dim, dim, 1, device))
                .collect(),
            pos: (0..N_MODALITIES)
                .map(|_| Param::from_tensor(Tensor::zeros([1, dim, d, h, wd], device)))
                .collect(),
            intra: (0..N_MODALITIES)
                .map(|_| TransformerLayer::new(dim, cfg.heads, device))
                .collect(),
            inter: TransformerLayer::new(dim, cfg.heads, device),
            inter_out: conv(N_MODALITIES * dim, N_MODALITIES * w[3], 1, device),
            rfm: (0..4)
                .map(|l| Rfm::new(N_MODALITIES * w[l], w[l], device))
                .collect(),
            up_conv: (0..3)
                .map(|l| NormActConv::new(w[l + 1], w[l], 3, MM_SLOPE, device))
                .collect(),
            dec_a: (0..3)
                .map(|l| NormActConv::new(2 * w[l], w[l], 3, MM_SLOPE, device))
                .collect(),
            dec_b: (0..3)
                .map(|l| NormActConv::new(w[l], w[l], 1, MM_SLOPE, device))
                .collect(),
            aux: (1..4).map(|l| conv(w[l], h_out, 1, device)).collect(),
            head: conv(w[0], h_out, 1, device),
            sep: UpDecoder::new(
                w[3],
                [w[2], w[1], w[0]],
                [w[2], w[1], w[0]],
                h_out,
                true,
                device,
            ),
            head_kind: head,
            cfg,
            base: c,
        }
    }

    /// Modality `m`'s positional embedding on `grid`, as tokens `[1, T, dim]`.
    fn pos_tokens(&self, m: usize, grid: [usize; 3]) -> Tensor<3> {
        let p = self.pos[m].val();
        let [_, _, d, h, w] = p.dims();
        let p = if [d, h, w] == grid {
            p
        } else {
            mckd_nn::trilinear(p, grid, false)
        };
        to_tokens(p)
    }

    /// The forward pass; `sep` names the modality whose unmasked features the single-modality
    /// decoder reads (its encoder then sees its real input even where it is dropped: training
    /// only).
    pub fn forward(&self, batch: &BratsBatch, presence: &Presence, sep: Option<usize>) -> Forward {
        let device = batch.images[0].device();
        let feats: Vec<Option<[Tensor<5>; 4]>> = (0..N_MODALITIES)
            .map(|m| {
                let x = batch.images[m].clone();
                if sep == Some(m) {
                    Some(self.encoders[m].forward(x))
                } else {
                    presence
                        .any(m)
                        .then(|| self.encoders[m].forward(keep(x, presence, m)))
                }
            })
            .collect();
        let [b, _, dd, hh, ww] = batch.images[0].dims();
        let level_dims = |l: usize| [dd >> l, hh >> l, ww >> l];
        let w = widths(self.base);
        // Features of level l with the missing modalities zeroed, concatenated.
        let masked = |l: usize| -> Tensor<5> {
            let [d, h, wl] = level_dims(l);
            Tensor::cat(
                (0..N_MODALITIES)
                    .map(|m| match (&feats[m], presence.any(m)) {
                        (Some(f), true) => keep(f[l].clone(), presence, m),
                        _ => Tensor::zeros([b, w[l], d, h, wl], &device),
                    })
                    .collect(),
                1,
            )
        };
        let grid = level_dims(3);
        let tokens = grid.iter().product::<usize>();
        let dim = w[3];
        let inter_in: Vec<Tensor<3>> = (0..N_MODALITIES)
            .map(|m| {
                let pos = self.pos_tokens(m, grid);
                let intra = match (&feats[m], presence.any(m)) {
                    (Some(f), true) => {
                        let t = to_tokens(conv1x1(&self.embed[m], f[3].clone())) + pos.clone();
                        keep(self.intra[m].forward(t), presence, m)
                    }
                    _ => Tensor::zeros([b, tokens, dim], &device),
                };
                intra + pos
            })
            .collect();
        let inter = self.inter.forward(Tensor::cat(inter_in, 1)); // [B, 4T, dim]
        let inter: Tensor<5> = Tensor::cat(
            (0..N_MODALITIES)
                .map(|m| from_tokens(inter.clone().narrow(1, m * tokens, tokens), grid))
                .collect(),
            1,
        );
        let de = self.rfm[3].forward(conv1x1(&self.inter_out, inter));
        let mut aux = vec![conv1x1(&self.aux[2], de.clone())];
        let mut y = self.up_conv[2].forward(up2(de, true));
        for l in (0..3).rev() {
            let d = self.rfm[l].forward(masked(l));
            y = self.dec_b[l].forward(self.dec_a[l].forward(cat_channels(vec![d, y])));
            if l > 0 {
                aux.push(conv1x1(&self.aux[l - 1], y.clone()));
                y = self.up_conv[l - 1].forward(up2(y, true));
            }
        }
        let logits = conv1x1(&self.head, y);
        let aux = aux
            .into_iter()
            .map(|a| mckd_nn::trilinear(a, [dd, hh, ww], true))
            .collect();
        let sep = sep.map(|m| {
            let f = feats[m].as_ref().expect("the sep modality is encoded");
            self.sep
                .forward(f[3].clone(), [f[2].clone(), f[1].clone(), f[0].clone()])
        });
        Forward { logits, aux, sep }
    }
}

impl PeerNet for MmFormer {
    fn term_names(&self) -> Vec<String> {
        vec!["task_loss".into(), "sep".into(), "prm".into()]
    }

    fn train_terms(&self, batch: &BratsBatch, mask: &Tensor<2>, rng: &mut ChaCha8Rng) -> Vec<Term> {
        let presence = Presence::of(mask);
        let candidates: Vec<usize> = if self.cfg.aux_reads_dropped {
            (0..N_MODALITIES).collect()
        } else {
            presence.common()
        };
        let sep =
            (!candidates.is_empty()).then(|| candidates[rng.random_range(0..candidates.len())]);
        let f = self.forward(batch, &presence, sep);
        let targets = batch.targets.clone().expect("a training batch has targets");
        let head = self.head_kind;
        let prm = f
            .aux
            .into_iter()
            .map(|a| head.loss(a, targets.clone()))
            .reduce(|a, b| a + b)
            .expect("3 auxiliary heads");
        let sep = match f.sep {
            Some(s) => Term::new(
                head.loss(s, targets.clone()) * candidates.len() as f64,
                self.cfg.sep_weight,
            ),
            None => Term::new(Tensor::zeros([1], &mask.device()), 0.0),
        };
        vec![
            Term::new(head.loss(f.logits, targets), 1.0),
            sep,
            Term::new(prm, self.cfg.prm_weight),
        ]
    }

    fn predict(&self, batch: &BratsBatch, mask: &Tensor<2>) -> Tensor<5> {
        let f = self.forward(batch, &Presence::of(mask), None);
        self.head_kind.region_logits(f.logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DiceReduction;
    use crate::peers::testing::{check_all_masks, check_training_ignores_missing};

    fn mat(v: &[f64], r: usize, c: usize, device: &Device) -> Tensor<2> {
        let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(f, [r, c]), device)
    }

    #[test]
    fn attention_on_three_tokens_matches_a_hand_computation() {
        let device = Device::flex();
        let (n, dim, heads) = (3, 4, 2);
        let dh = dim / heads;
        let mut layer = TransformerLayer::new(dim, heads, &device);
        // Weights as [d_in, d_out] (y = x·W + b), simple fractions.
        let w = |s: f64| -> Vec<f64> {
            (0..dim * dim)
                .map(|i| ((i * 7 + (s * 10.0) as usize) % 11) as f64 / 10.0 - 0.5)
                .collect()
        };
        let (wq, wk, wv, wo) = (w(1.0), w(2.0), w(3.0), w(4.0));
        let bo = [0.1, -0.2, 0.05, 0.3];
        layer.attn.query.weight = Param::from_tensor(mat(&wq, dim, dim, &device));
        layer.attn.key.weight = Param::from_tensor(mat(&wk, dim, dim, &device));
        layer.attn.value.weight = Param::from_tensor(mat(&wv, dim, dim, &device));
        layer.attn.output.weight = Param::from_tensor(mat(&wo, dim, dim, &device));
        layer.attn.output.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bo.map(|v| v as f32).to_vec(), [dim]),
            &device,
        )));
        assert!(layer.attn.query.bias.is_none() && layer.attn.value.bias.is_none());
        let x = [
            [0.5, -1.0, 0.25, 2.0],
            [1.5, 0.0, -0.5, 1.0],
            [-0.3, 0.8, 1.2, -0.7],
        ];
        let xt = Tensor::<3>::from_data(
            TensorData::new(
                x.iter().flatten().map(|&v| v as f32).collect::<Vec<_>>(),
                [1, n, dim],
            ),
            &device,
        );
        let got = mckd_train::to_vec(layer.attention(xt));
        // By hand: projections, per-head scaled dot products, softmax over keys.
        let proj = |wm: &[f64]| -> Vec<[f64; 4]> {
            x.iter()
                .map(|r| {
                    let mut o = [0.0; 4];
                    for (j, oj) in o.iter_mut().enumerate() {
                        *oj = (0..dim).map(|i| r[i] * wm[i * dim + j]).sum();
                    }
                    o
                })
                .collect()
        };
        let (q, k, v) = (proj(&wq), proj(&wk), proj(&wv));
        let mut ctx = vec![[0.0f64; 4]; n];
        for h in 0..heads {
            let cols = h * dh..(h + 1) * dh;
            for i in 0..n {
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        cols.clone().map(|c| q[i][c] * k[j][c]).sum::<f64>() / (dh as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for c in cols.clone() {
                    ctx[i][c] = (0..n).map(|j| (s[j] - m).exp() / z * v[j][c]).sum();
                }
            }
        }
        for i in 0..n {
            for j in 0..dim {
                let want: f64 = (0..dim).map(|c| ctx[i][c] * wo[c * dim + j]).sum::<f64>() + bo[j];
                let g = f64::from(got[i * dim + j]);
                assert!((g - want).abs() < 1e-5, "token {i} dim {j}: {g} vs {want}");
            }
        }
    }

    fn net(device: &Device, spatial: [usize; 3]) -> MmFormer {
        MmFormer::new(
            2,
            spatial,
            Head::Regions(DiceReduction::PerSample),
            MmformerConfig::default(),
            device,
        )
    }

    #[test]
    fn every_mask_gives_finite_region_logits_without_reading_missing_modalities() {
        let device = Device::flex();
        // Tiles on another grid than the training crop's: the embeddings are resized.
        check_all_masks(&net(&device, [16, 16, 16]), [8, 16, 24], &device);
        let ad = Device::flex().autodiff();
        let strict = MmFormer::new(
            2,
            [8, 8, 8],
            Head::Native(super::super::NativeLoss::MmFormer),
            MmformerConfig {
                aux_reads_dropped: false,
                ..MmformerConfig::default()
            },
            &ad,
        );
        for rows in [
            vec![vec![true, true, false, false]; 2],
            vec![
                vec![true, false, false, true],
                vec![false, false, false, true],
            ],
        ] {
            check_training_ignores_missing(&strict, [8, 8, 8], &rows, &ad);
        }
    }

    /// The single-modality (sep) and auxiliary (prm) terms through the transformers.
    #[test]
    fn term_gradients_match_finite_differences() {
        let ad = Device::flex().autodiff();
        let net = crate::peers::testing::seeded(net(&ad, [16, 16, 8]), 2);
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
    fn auxiliary_outputs_have_full_size() {
        let device = Device::flex();
        let net = net(&device, [8, 16, 8]);
        let b = crate::peers::testing::batch(1, [8, 16, 8], 1, &device);
        let p = Presence::from_rows(vec![vec![false, true, true, false]]);
        let f = net.forward(&b, &p, Some(0));
        assert_eq!(f.logits.dims(), [1, 3, 8, 16, 8]);
        assert_eq!(f.aux.len(), 3);
        for a in &f.aux {
            assert_eq!(a.dims(), [1, 3, 8, 16, 8]);
        }
        assert_eq!(f.sep.unwrap().dims(), [1, 3, 8, 16, 8]);
    }
}
