//! ShaSpec (Wang et al., CVPR 2023; `billhhh/ShaSpec` `DualNet_SS.py`): every modality passes
//! through one **shared** encoder (`r_i`) and its own **specific** encoder (`s_i`); at the
//! bottleneck they are fused by residual learning, `f_i = r_i + P([r_i, s_i])`; a missing
//! modality's feature is the mean of the present modalities' shared features (the paper's
//! Eq. 4). Two auxiliary objectives shape the features: the **domain classification objective**
//! (DCO: a linear classifier must tell the modality from the global average of `s_i`) and the
//! **distribution alignment objective** (DAO: the L1 distance between the shared features of
//! modality pairs). Loss `seg + 0.1·DAO + 0.02·DCO` (PEERS §2).
//!
//! Reduced form (PEERS §2.7): the shared branch is our UNet ([`crate::model::BratsUNet`]:
//! shared encoder e1..e4, decoder on the concatenated levels, three sigmoid regions — ShaSpec's
//! own head and loss); four specific encoders at the same widths; fusion at the bottleneck only
//! by a bias-free 3³ convolution `16c → 8c`; the skips are the shared encoder's maps of the
//! four modalities concatenated (a missing one encoded from zeros, as the original). DAO and
//! DCO leave out missing modalities (the paper's rule; the code includes them). No ASPP, no
//! ResNet-50, no weight standardisation.
//!
//! Parameters: UNet `7935c² + 169c + 3` + specific encoders `4 × (3429c² + 117c)` + projection
//! `3456c²` + classifier `32c + 4` = `25,107c² + 669c + 7` (1,612,207 at c = 8).

use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rand_chacha::ChaCha8Rng;

use super::common::{Encoder, Presence, keep, widths};
use super::{PeerNet, ShaspecConfig, Term};
use crate::model::segmentation_loss;
use crate::model::{BratsBatch, BratsUNet, DiceReduction, N_MODALITIES, UNetConfig};

/// The ShaSpec network.
#[derive(Module, Debug)]
pub struct ShaSpec {
    shared: BratsUNet,
    specific: Vec<Encoder>,
    proj: Conv3d,
    dco: Linear,
    #[module(skip)]
    cfg: ShaspecConfig,
    #[module(skip)]
    dice: DiceReduction,
}

/// What a forward pass computes.
pub struct Forward {
    /// Region logits `[B, 3, D, H, W]`.
    pub logits: Tensor<5>,
    /// Per modality, the shared bottleneck `r_i` `[B, 8c, D/8, H/8, W/8]`.
    pub shared: Vec<Tensor<5>>,
    /// Per modality some sample has, the DCO logits of its specific features `[B, 4]`.
    pub dco_logits: Vec<Option<Tensor<2>>>,
    /// Per modality, the fused bottleneck the decoder reads.
    pub fused: Vec<Tensor<5>>,
}

impl ShaSpec {
    /// The network at base width `c`, for crops of `spatial` (D, H, W) (the shared UNet's
    /// nominal size; any multiple of 8 works).
    pub fn new(
        c: usize,
        spatial: [usize; 3],
        dice: DiceReduction,
        cfg: ShaspecConfig,
        device: &Device,
    ) -> Self {
        let w = widths(c);
        Self {
            shared: UNetConfig::new()
                .with_base(c)
                .with_spatial(spatial)
                .with_dice(dice)
                .init(device),
            specific: (0..N_MODALITIES)
                .map(|_| Encoder::new(c, false, device))
                .collect(),
            proj: Conv3dConfig::new([2 * w[3], w[3]], [3, 3, 3])
                .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
                .with_bias(false)
                .init(device),
            dco: LinearConfig::new(w[3], N_MODALITIES).init(device),
            cfg,
            dice,
        }
    }

    /// The forward pass (see [`Forward`]).
    pub fn forward(&self, batch: &BratsBatch, presence: &Presence) -> Forward {
        let device = batch.images[0].device();
        // Every modality through the shared encoder (the skips concatenate all four; a
        // missing one's input is zeros).
        let r: Vec<[Tensor<5>; 4]> = (0..N_MODALITIES)
            .map(|m| {
                self.shared
                    .encoder(keep(batch.images[m].clone(), presence, m))
            })
            .collect();
        let s: Vec<Option<Tensor<5>>> = (0..N_MODALITIES)
            .map(|m| {
                presence.any(m).then(|| {
                    let [_, _, _, s4] =
                        self.specific[m].forward(keep(batch.images[m].clone(), presence, m));
                    s4
                })
            })
            .collect();
        let mean_r = (0..N_MODALITIES)
            .filter(|&m| presence.any(m))
            .map(|m| {
                let w = presence.per_sample(
                    |b| {
                        if presence.has(b, m) {
                            1.0 / presence.count(b) as f32
                        } else {
                            0.0
                        }
                    },
                    &device,
                );
                r[m][3].clone() * w
            })
            .reduce(|a, b| a + b)
            .expect("a present modality");
        let fused: Vec<Tensor<5>> = (0..N_MODALITIES)
            .map(|m| match &s[m] {
                Some(s4) => {
                    let r4 = r[m][3].clone();
                    let f = r4.clone()
                        + mckd_kernels::conv3d_layer(
                            &self.proj,
                            Tensor::cat(vec![r4, s4.clone()], 1),
                        );
                    if presence.all(m) {
                        f
                    } else {
                        let col: Tensor<5> = presence.column(m, &device);
                        f * col.clone() + mean_r.clone() * (col.neg() + 1.0)
                    }
                }
                None => mean_r.clone(),
            })
            .collect();
        let level = |l: usize| Tensor::cat(r.iter().map(|f| f[l].clone()).collect(), 1);
        let logits =
            self.shared
                .decoder([level(0), level(1), level(2), Tensor::cat(fused.clone(), 1)]);
        let dco_logits = s
            .iter()
            .map(|s4| {
                s4.as_ref().map(|s4| {
                    let [b, c, ..] = s4.dims();
                    let g: Tensor<2> = mckd_nn::global_avg_pool3d(s4.clone()).reshape([b, c]);
                    self.dco.forward(g)
                })
            })
            .collect();
        Forward {
            logits,
            shared: r.into_iter().map(|[_, _, _, r4]| r4).collect(),
            dco_logits,
            fused,
        }
    }
}

/// The distribution alignment objective: over the cyclic modality pairs (flair, t1), (t1, t1c),
/// (t1c, t2), (t2, flair), the mean absolute difference of the shared bottlenecks, averaged
/// over the samples that have both modalities of the pair, summed over the pairs (a pair no
/// sample has adds nothing).
///
/// # Shapes
/// - `shared[m]`: `[B, C, D, H, W]`; output `[1]`
pub fn dao_loss(shared: &[Tensor<5>], presence: &Presence) -> Tensor<1> {
    let device = shared[0].device();
    let b = presence.batch();
    let mut total = Tensor::<1>::zeros([1], &device);
    for (i, j) in [(0, 1), (1, 2), (2, 3), (3, 0)] {
        let both: Vec<f32> = (0..b)
            .map(|s| f32::from(u8::from(presence.has(s, i) && presence.has(s, j))))
            .collect();
        let n: f32 = both.iter().sum();
        if n == 0.0 {
            continue;
        }
        let [_, c, d, h, w] = shared[i].dims();
        let diff: Tensor<2> = (shared[i].clone() - shared[j].clone())
            .abs()
            .reshape([b, c * d * h * w]);
        let per_sample = diff.mean_dim(1).reshape([b]);
        let weights = Tensor::<1>::from_data(TensorData::new(both, [b]), &device);
        total = total + (per_sample * weights).sum() / f64::from(n);
    }
    total
}

/// The domain classification objective: the cross-entropy of modality `m`'s classifier logits
/// against the label `m`, averaged over the (sample, modality) pairs present.
///
/// # Shapes
/// - `logits[m]`: `[B, 4]` (`None`: no sample has `m`); output `[1]`
pub fn dco_loss(logits: &[Option<Tensor<2>>], presence: &Presence) -> Tensor<1> {
    let mut total: Option<Tensor<1>> = None;
    let mut rows = 0usize;
    for (m, l) in logits.iter().enumerate() {
        let Some(l) = l else { continue };
        let device = l.device();
        let [b, _] = l.dims();
        let nll: Tensor<2> = log_softmax(l.clone(), 1).narrow(1, m, 1).neg(); // [B, 1]
        let col: Tensor<2> = presence.column(m, &device);
        let t = (nll * col).sum();
        rows += (0..b).filter(|&s| presence.has(s, m)).count();
        total = Some(match total {
            Some(a) => a + t,
            None => t,
        });
    }
    total.expect("a present modality") / rows.max(1) as f64
}

impl PeerNet for ShaSpec {
    fn term_names(&self) -> Vec<String> {
        vec!["task_loss".into(), "dao".into(), "dco".into()]
    }

    fn train_terms(&self, batch: &BratsBatch, mask: &Tensor<2>, _: &mut ChaCha8Rng) -> Vec<Term> {
        let presence = Presence::of(mask);
        let f = self.forward(batch, &presence);
        let targets = batch.targets.clone().expect("a training batch has targets");
        vec![
            Term::new(segmentation_loss(f.logits, targets, self.dice), 1.0),
            Term::new(dao_loss(&f.shared, &presence), self.cfg.dao_weight),
            Term::new(dco_loss(&f.dco_logits, &presence), self.cfg.dco_weight),
        ]
    }

    fn predict(&self, batch: &BratsBatch, mask: &Tensor<2>) -> Tensor<5> {
        self.forward(batch, &Presence::of(mask)).logits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::testing::{batch, check_all_masks, check_training_ignores_missing};

    fn t5(v: &[f32], b: usize, device: &Device) -> Tensor<5> {
        Tensor::from_data(
            TensorData::new(v.to_vec(), [b, 1, 1, 1, v.len() / b]),
            device,
        )
    }

    #[test]
    fn dao_is_the_l1_between_present_pairs() {
        let device = Device::flex();
        // Two samples × 2 elements per modality.
        let r = [
            t5(&[1.0, 2.0, 0.0, 0.0], 2, &device),
            t5(&[0.0, 4.0, 1.0, 1.0], 2, &device),
            t5(&[3.0, 3.0, -1.0, 2.0], 2, &device),
            t5(&[1.0, 1.0, 5.0, 5.0], 2, &device),
        ];
        let all = Presence::from_rows(vec![vec![true; 4]; 2]);
        // import numpy as np
        // r = np.array([[[1, 2], [0, 0]], [[0, 4], [1, 1]], [[3, 3], [-1, 2]], [[1, 1], [5, 5]]],
        //              float)                                   # [modality, sample, element]
        // def dao(r, pres):
        //     tot = 0
        //     for i, j in [(0, 1), (1, 2), (2, 3), (3, 0)]:
        //         both = pres[:, i] & pres[:, j]
        //         if both.any(): tot += np.abs(r[i] - r[j]).mean(1)[both].mean()
        //     return tot
        // dao(r, np.ones((2, 4), bool))                                      # 9.0
        // dao(r, np.array([[1, 1, 1, 1], [1, 0, 1, 1]], bool))               # 9.5
        // By hand: pairs (0,1): s0 (1+2)/2, s1 (1+1)/2 → mean 1.25; (1,2): s0 (3+1)/2 = 2, s1 (2+1)/2 =
        // 1.5 → 1.75; (2,3): s0 (2+2)/2 = 2, s1 (6+3)/2 = 4.5 → 3.25; (3,0): s0 (0+1)/2 = 0.5,
        // s1 5 → 2.75. Sum 9.0.
        let got = dao_loss(&r, &all).into_scalar::<f32>();
        assert!((got - 9.0).abs() < 1e-6, "{got}");
        // Sample 1 lacks t1 (1): pairs (0,1) and (1,2) count sample 0 only: 1.5 + 2 + 3.25 +
        // 2.75 = 9.5.
        let some = Presence::from_rows(vec![vec![true; 4], vec![true, false, true, true]]);
        let got = dao_loss(&r, &some).into_scalar::<f32>();
        assert!((got - 9.5).abs() < 1e-6, "{got}");
        // One modality alone: no pair.
        let one = Presence::from_rows(vec![vec![false, false, true, false]; 2]);
        assert_eq!(dao_loss(&r, &one).into_scalar::<f32>(), 0.0);
    }

    #[test]
    fn dco_is_the_cross_entropy_of_the_modality_label() {
        let device = Device::flex();
        let l = |v: [f32; 8]| {
            Some(Tensor::<2>::from_data(
                TensorData::new(v.to_vec(), [2, 4]),
                &device,
            ))
        };
        let logits = vec![
            l([2.0, 0.0, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0]),
            None,
            l([0.1, 0.2, 3.0, -0.5, 1.0, 1.0, 1.0, 1.0]),
            None,
        ];
        // Sample 1 lacks flair: rows (s0, flair), (s0, t1c), (s1, t1c).
        let p = Presence::from_rows(vec![
            vec![true, false, true, false],
            vec![false, false, true, false],
        ]);
        // import numpy as np
        // lsm = lambda x: np.array(x) - np.log(np.exp(x).sum())
        // -(lsm([2., 0, -1, .5])[0] + lsm([.1, .2, 3, -.5])[2] + lsm([1., 1, 1, 1])[2])/3
        //                                                          # 0.6216494402324143
        let nll = |row: [f64; 4], k: usize| {
            let z: f64 = row.iter().map(|v| v.exp()).sum();
            -(row[k].exp() / z).ln()
        };
        let want = (nll([2.0, 0.0, -1.0, 0.5], 0)
            + nll([0.1, 0.2, 3.0, -0.5], 2)
            + nll([1.0, 1.0, 1.0, 1.0], 2))
            / 3.0;
        assert!((want - 0.621_649_440_232_414_3).abs() < 1e-12);
        let got = f64::from(dco_loss(&logits, &p).into_scalar::<f32>());
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    fn net(device: &Device) -> ShaSpec {
        ShaSpec::new(
            2,
            [8, 8, 8],
            DiceReduction::PerSample,
            ShaspecConfig::default(),
            device,
        )
    }

    #[test]
    fn a_missing_modality_takes_the_mean_of_the_present_shared_features() {
        let device = Device::flex();
        let net = net(&device);
        let b = batch(2, [8, 8, 8], 5, &device);
        let p = Presence::from_rows(vec![
            vec![true, false, true, true],
            vec![false, true, false, false],
        ]);
        let f = net.forward(&b, &p);
        let v = |t: Tensor<5>| mckd_train::to_vec(t);
        let n = f.fused[0].dims().iter().product::<usize>() / 2;
        let fused1 = v(f.fused[1].clone());
        let r: Vec<Vec<f32>> = f.shared.iter().map(|t| v(t.clone())).collect();
        for k in 0..n {
            let want = (r[0][k] + r[2][k] + r[3][k]) / 3.0;
            assert!((fused1[k] - want).abs() < 1e-5, "sample 0 element {k}");
        }
        // Sample 1 has t1 alone: every missing modality is its r.
        let fused0 = v(f.fused[0].clone());
        for k in n..2 * n {
            assert!((fused0[k] - r[1][k]).abs() < 1e-6);
        }
    }

    #[test]
    fn every_mask_gives_finite_region_logits_without_reading_missing_modalities() {
        let device = Device::flex();
        check_all_masks(&net(&device), [8, 8, 16], &device);
        let ad = Device::flex().autodiff();
        check_training_ignores_missing(
            &net(&ad),
            [8, 8, 8],
            &[
                vec![true, false, false, true],
                vec![false, true, false, true],
            ],
            &ad,
        );
    }

    /// DAO and DCO (and the segmentation) through the shared and specific encoders.
    #[test]
    fn term_gradients_match_finite_differences() {
        let ad = Device::flex().autodiff();
        let net = crate::peers::testing::seeded(
            ShaSpec::new(
                2,
                [16, 16, 8],
                DiceReduction::PerSample,
                ShaspecConfig::default(),
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
    fn parameter_count_matches_the_docs() {
        let device = Device::flex();
        for c in [2, 8] {
            let n = ShaSpec::new(
                c,
                [8, 8, 8],
                DiceReduction::PerSample,
                ShaspecConfig::default(),
                &device,
            );
            assert_eq!(n.num_params(), 25_107 * c * c + 669 * c + 7);
        }
    }
}
