//! U-HVED (Dorent et al., MICCAI 2019; `ReubenDo/U-HVED` `extensions/u_hved`): each modality's
//! encoder gives a diagonal Gaussian per level and voxel (the first half of the channels is the
//! mean, the second the log-variance, clipped to [−50, 50]); the present modalities are fused
//! by a product of Gaussians with a standard-normal prior expert; a sample of the fused
//! posterior feeds the segmentation decoder and one image decoder per modality; the KL terms
//! tie the posterior of the drawn subset to those of all 15 subsets and each of those to the
//! prior (PEERS §4).
//!
//! * Product of Gaussians over the present experts i (precision `1/(σ_i² + 1e-7)`) and the
//!   prior: `T = 1 + Σ_i 1/(σ_i² + 1e-7)`, `μ = Σ_i μ_i/(σ_i² + 1e-7) / T`, `σ² = 1/T`.
//! * Loss: `seg + 0.1·KL + 0.1·rec` with, averaged over the 4 levels,
//!   `KL = (1/14)·Σ_S KL(q_drawn ‖ q_S) + (1/15)·Σ_S KL(q_S ‖ N(0, I))` over the 15 subsets S,
//!   each KL the mean over elements of `½(−1 + log σ₂² − log σ₁² + (σ₁² + (μ₁ − μ₂)²)/σ₂²)`;
//!   `rec` = the MSE of a reconstructed modality against its real image.
//! * Training decodes a reparameterised sample `μ + σ·ε` (ε from the method's generator);
//!   prediction decodes the mean (the authors' code samples at test time too; the mean is
//!   deterministic).
//!
//! Reduced form: encoders at our widths (`c…8c`, max pooling as the original, our post-norm
//! blocks), so latents of `c/2, c, 2c, 4c` channels (`c` must be even); decoders with our
//! block widths `4c, 2c, c` after trilinear upsampling and concatenation of the latent of each
//! level; **one** of the four image decoders per step, drawn uniformly, its MSE times 4 (an
//! unbiased estimate of the sum over the four; PEERS §4.5). The authors' Adam at 1e-3 and
//! their L2 of 1e-5 are replaced by the harness's optimiser.
//!
//! | part | parameters |
//! |---|---|
//! | 4 encoders | 4 × (3429c² + 117c) |
//! | segmentation decoder | up, block(4c + 2c → 4c), up, block(4c + c → 2c), up, block(2c + c/2 → c), 1×1: `1552.5c² + 45c + 3` (3 regions) |
//! | 4 image decoders | the same with a 1-channel head: 4 × (1552.5c² + 43c + 1) |

use burn::prelude::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::common::{Encoder, Head, Presence, UpDecoder, keep, normal, widths};
use super::{HvedConfig, PeerNet, Term};
use crate::model::{BratsBatch, N_MODALITIES};

/// ε added to the variances in the product (the authors').
const VAR_EPS: f64 = 1e-7;

/// A diagonal Gaussian per element as mean and precision `T = 1/σ²`.
#[derive(Debug, Clone)]
pub struct Gaussian {
    /// Mean.
    pub mu: Tensor<5>,
    /// Precision `1/σ²`.
    pub precision: Tensor<5>,
}

/// One modality's expert at one level: its precision `1/(σ² + 1e-7)` and precision-weighted
/// mean, from the encoder's output (mean = first half of the channels, log-variance = second
/// half clipped to [−50, 50]).
#[derive(Debug, Clone)]
pub struct Expert {
    /// `1/(σ² + 1e-7)`.
    pub precision: Tensor<5>,
    /// `μ/(σ² + 1e-7)`.
    pub weighted_mu: Tensor<5>,
}

impl Expert {
    /// The expert of an encoder output.
    ///
    /// # Shapes
    /// - `f`: `[B, 2L, D, H, W]` → an expert over `[B, L, D, H, W]`
    pub fn of(f: Tensor<5>) -> Self {
        let [_, c, ..] = f.dims();
        let half = c / 2;
        let mu = f.clone().narrow(1, 0, half);
        let logvar = f.narrow(1, half, half).clamp(-50.0, 50.0);
        let precision = (logvar.exp() + VAR_EPS).recip();
        Self {
            weighted_mu: mu * precision.clone(),
            precision,
        }
    }
}

/// The product of the given experts and a standard-normal prior. Each expert comes with an
/// optional per-sample weight `[B, 1, 1, 1, 1]` (0 drops it for that sample; `None` = 1).
///
/// # Panics
/// If `experts` is empty (the prior alone is never asked for).
pub fn product_of_gaussians(experts: &[(&Expert, Option<Tensor<5>>)]) -> Gaussian {
    let weighted = |t: &Tensor<5>, w: &Option<Tensor<5>>| match w {
        Some(w) => t.clone() * w.clone(),
        None => t.clone(),
    };
    let precision = experts
        .iter()
        .map(|(e, w)| weighted(&e.precision, w))
        .reduce(|a, b| a + b)
        .expect("an expert")
        + 1.0;
    let num = experts
        .iter()
        .map(|(e, w)| weighted(&e.weighted_mu, w))
        .reduce(|a, b| a + b)
        .expect("an expert");
    Gaussian {
        mu: num / precision.clone(),
        precision,
    }
}

fn per_sample_mean(t: Tensor<5>) -> Tensor<1> {
    let [b, c, d, h, w] = t.dims();
    let flat: Tensor<2> = t.reshape([b, c * d * h * w]);
    flat.mean_dim(1).reshape([b])
}

/// `KL(q1 ‖ q2)` per sample, the mean over its elements of
/// `½(−1 + log T1 − log T2 + T2/T1 + T2·(μ1 − μ2)²)` (T = 1/σ²).
///
/// # Shapes
/// - output: `[B]`
pub fn kl(q1: &Gaussian, q2: &Gaussian) -> Tensor<1> {
    let t = q1.precision.clone().log() - q2.precision.clone().log()
        + q2.precision.clone() / q1.precision.clone()
        + q2.precision.clone() * (q1.mu.clone() - q2.mu.clone()).powf_scalar(2.0)
        - 1.0;
    per_sample_mean(t) * 0.5
}

/// `KL(q ‖ N(0, I))` per sample, the mean over its elements of `½(−1 + log T + 1/T + μ²)`.
///
/// # Shapes
/// - output: `[B]`
pub fn kl_prior(q: &Gaussian) -> Tensor<1> {
    let t = q.precision.clone().log() + q.precision.clone().recip() + q.mu.clone().powf_scalar(2.0)
        - 1.0;
    per_sample_mean(t) * 0.5
}

/// The posterior of the present modalities (per-sample presence).
fn posterior(experts: &[Option<Expert>], presence: &Presence, device: &Device) -> Gaussian {
    let chosen: Vec<(&Expert, Option<Tensor<5>>)> = (0..N_MODALITIES)
        .filter(|&m| presence.any(m))
        .map(|m| {
            let e = experts[m].as_ref().expect("present modalities are encoded");
            (e, (!presence.all(m)).then(|| presence.column(m, device)))
        })
        .collect();
    product_of_gaussians(&chosen)
}

/// U-HVED's KL term at one level: with `every_subset`, `(1/14)·Σ_S KL(q ‖ q_S) + (1/15)·Σ_S
/// KL(q_S ‖ N)` over the 15 subsets (every expert must be given), averaged over the batch;
/// otherwise, per sample, the same sums over the subsets of its present modalities divided by
/// their counts (`2^k − 2` and `2^k − 1`; no first sum with one modality).
///
/// # Shapes
/// - output: `[1]`
pub fn kl_level(
    experts: &[Option<Expert>],
    drawn: &Gaussian,
    presence: &Presence,
    every_subset: bool,
    device: &Device,
) -> Tensor<1> {
    let b = presence.batch();
    let mut inter: Option<Tensor<1>> = None;
    let mut prior: Option<Tensor<1>> = None;
    let add = |acc: &mut Option<Tensor<1>>, t: Tensor<1>| {
        *acc = Some(match acc.take() {
            Some(a) => a + t,
            None => t,
        });
    };
    for subset in mckd_core::all_subsets(N_MODALITIES) {
        let members: Vec<usize> = (0..N_MODALITIES).filter(|&m| subset[m]).collect();
        // Per sample: whether the subset counts (all of it present, or every subset).
        let counts: Vec<bool> = (0..b)
            .map(|s| every_subset || members.iter().all(|&m| presence.has(s, m)))
            .collect();
        if !counts.iter().any(|&c| c) {
            continue;
        }
        let parts: Vec<(&Expert, Option<Tensor<5>>)> = members
            .iter()
            .map(|&m| {
                (
                    experts[m].as_ref().expect("subset experts are encoded"),
                    None,
                )
            })
            .collect();
        let q = product_of_gaussians(&parts);
        let (ki, kp) = (kl(drawn, &q), kl_prior(&q));
        if every_subset {
            add(&mut inter, ki);
            add(&mut prior, kp);
        } else {
            let w = Tensor::<1>::from_data(
                TensorData::new(
                    counts
                        .iter()
                        .map(|&c| f32::from(u8::from(c)))
                        .collect::<Vec<f32>>(),
                    [b],
                ),
                device,
            );
            add(&mut inter, ki * w.clone());
            add(&mut prior, kp * w);
        }
    }
    let (inter, prior) = (inter.expect("a subset"), prior.expect("a subset"));
    let (ni, np): (Vec<f32>, Vec<f32>) = (0..b)
        .map(|s| {
            let k = if every_subset {
                N_MODALITIES
            } else {
                presence.count(s)
            };
            let subsets = (1usize << k) - 1;
            (
                1.0 / (subsets.saturating_sub(1).max(1)) as f32,
                1.0 / subsets as f32,
            )
        })
        .unzip();
    let scale = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [b]), device);
    (inter * scale(ni) + prior * scale(np)).mean()
}

/// The U-HVED network.
#[derive(Module, Debug)]
pub struct Hved {
    encoders: Vec<Encoder>,
    seg: UpDecoder,
    recon: Vec<UpDecoder>,
    #[module(skip)]
    head: Head,
    #[module(skip)]
    cfg: HvedConfig,
}

impl Hved {
    /// The network at base width `c` (even) with `head`.
    ///
    /// # Panics
    /// If `c` is odd or 0 (the latents are half the channels; checked by the run config's
    /// validation).
    pub fn new(c: usize, head: Head, cfg: HvedConfig, device: &Device) -> Self {
        assert!(
            c >= 2 && c.is_multiple_of(2),
            "U-HVED needs an even base width"
        );
        let w = widths(c);
        let decoder = |out| {
            UpDecoder::new(
                w[3] / 2,
                [w[2] / 2, w[1] / 2, w[0] / 2],
                [w[2], w[1], w[0]],
                out,
                false,
                device,
            )
        };
        Self {
            encoders: (0..N_MODALITIES)
                .map(|_| Encoder::new(c, true, device))
                .collect(),
            seg: decoder(head.channels()),
            recon: (0..N_MODALITIES).map(|_| decoder(1)).collect(),
            head,
            cfg,
        }
    }

    /// Per level, each modality's expert (`None` when not encoded).
    fn experts(&self, feats: &[Option<[Tensor<5>; 4]>]) -> Vec<Vec<Option<Expert>>> {
        (0..4)
            .map(|l| {
                feats
                    .iter()
                    .map(|f| f.as_ref().map(|f| Expert::of(f[l].clone())))
                    .collect()
            })
            .collect()
    }

    fn decode(decoder: &UpDecoder, z: &[Tensor<5>]) -> Tensor<5> {
        decoder.forward(z[3].clone(), [z[2].clone(), z[1].clone(), z[0].clone()])
    }
}

impl PeerNet for Hved {
    fn term_names(&self) -> Vec<String> {
        vec!["task_loss".into(), "kl".into(), "rec".into()]
    }

    fn train_terms(&self, batch: &BratsBatch, mask: &Tensor<2>, rng: &mut ChaCha8Rng) -> Vec<Term> {
        let presence = Presence::of(mask);
        let device = mask.device();
        let reads = self.cfg.aux_reads_dropped;
        // With `reads`, every encoder sees its real image (the drawn subset only selects the
        // experts of the fused posterior), as the authors train on complete data.
        let feats: Vec<Option<[Tensor<5>; 4]>> = (0..N_MODALITIES)
            .map(|m| {
                let x = batch.images[m].clone();
                if reads {
                    Some(self.encoders[m].forward(x))
                } else {
                    presence
                        .any(m)
                        .then(|| self.encoders[m].forward(keep(x, &presence, m)))
                }
            })
            .collect();
        let experts = self.experts(&feats);
        let drawn: Vec<Gaussian> = experts
            .iter()
            .map(|e| posterior(e, &presence, &device))
            .collect();
        let z: Vec<Tensor<5>> = drawn
            .iter()
            .map(|q| {
                let eps = normal(rng, q.mu.dims(), &device);
                q.mu.clone() + eps / q.precision.clone().sqrt()
            })
            .collect();
        let targets = batch.targets.clone().expect("a training batch has targets");
        let seg = self.head.loss(Self::decode(&self.seg, &z), targets);
        let kl = (0..4)
            .map(|l| kl_level(&experts[l], &drawn[l], &presence, reads, &device))
            .reduce(|a, b| a + b)
            .expect("4 levels")
            / 4.0;
        let candidates: Vec<usize> = if reads {
            (0..N_MODALITIES).collect()
        } else {
            presence.common()
        };
        let rec = if candidates.is_empty() {
            Term::new(Tensor::zeros([1], &device), 0.0)
        } else {
            let r = candidates[rng.random_range(0..candidates.len())];
            let x = Self::decode(&self.recon[r], &z);
            let mse = (x - batch.images[r].clone()).powf_scalar(2.0).mean();
            Term::new(mse * candidates.len() as f64, self.cfg.rec_weight)
        };
        vec![Term::new(seg, 1.0), Term::new(kl, self.cfg.kl_weight), rec]
    }

    fn predict(&self, batch: &BratsBatch, mask: &Tensor<2>) -> Tensor<5> {
        let presence = Presence::of(mask);
        let device = mask.device();
        let feats: Vec<Option<[Tensor<5>; 4]>> = (0..N_MODALITIES)
            .map(|m| {
                presence
                    .any(m)
                    .then(|| self.encoders[m].forward(keep(batch.images[m].clone(), &presence, m)))
            })
            .collect();
        let z: Vec<Tensor<5>> = self
            .experts(&feats)
            .iter()
            .map(|e| posterior(e, &presence, &device).mu)
            .collect();
        self.head.region_logits(Self::decode(&self.seg, &z))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DiceReduction;
    use crate::peers::testing::{check_all_masks, check_training_ignores_missing};

    fn t(v: &[f32], b: usize, device: &Device) -> Tensor<5> {
        let n = v.len() / b;
        Tensor::from_data(TensorData::new(v.to_vec(), [b, 1, 1, 1, n]), device)
    }

    /// An expert from means and log-variances given per element.
    fn expert(mu: &[f32], logvar: &[f32], b: usize, device: &Device) -> Expert {
        Expert::of(Tensor::cat(vec![t(mu, b, device), t(logvar, b, device)], 1))
    }

    /// The f64 product of Gaussians with a N(0, 1) prior, from (μ, log σ²) pairs.
    fn pog64(parts: &[(f64, f64)]) -> (f64, f64) {
        let prec: f64 = 1.0
            + parts
                .iter()
                .map(|(_, lv)| 1.0 / (lv.exp() + 1e-7))
                .sum::<f64>();
        let num: f64 = parts.iter().map(|(m, lv)| m / (lv.exp() + 1e-7)).sum();
        (num / prec, 1.0 / prec)
    }

    /// KL(N(m1, v1) ‖ N(m2, v2)) in its textbook form.
    fn kl64((m1, v1): (f64, f64), (m2, v2): (f64, f64)) -> f64 {
        (v2.sqrt() / v1.sqrt()).ln() + (v1 + (m1 - m2).powi(2)) / (2.0 * v2) - 0.5
    }

    #[test]
    fn product_of_gaussians_in_closed_form() {
        let device = Device::flex();
        let a = expert(&[1.0, -2.0], &[0.0, 1.0], 1, &device);
        let b = expert(&[0.5, 3.0], &[-1.0, 2.0], 1, &device);
        let q = product_of_gaussians(&[(&a, None), (&b, None)]);
        let (mu, prec) = (
            mckd_train::to_vec(q.mu.clone()),
            mckd_train::to_vec(q.precision.clone()),
        );
        for (k, parts) in [[(1.0, 0.0), (0.5, -1.0)], [(-2.0, 1.0), (3.0, 2.0)]]
            .iter()
            .enumerate()
        {
            let (m, v) = pog64(parts);
            assert!(
                (f64::from(mu[k]) - m).abs() < 1e-5,
                "μ {k}: {} vs {m}",
                mu[k]
            );
            assert!((1.0 / f64::from(prec[k]) - v).abs() < 1e-5, "σ² {k}");
        }
        // Equal experts: their precisions add (to the prior's 1).
        let q2 = product_of_gaussians(&[(&a, None), (&a, None)]);
        let p1 = 1.0 / (1.0 + 1e-7);
        assert!((mckd_train::to_vec(q2.precision)[0] - (1.0 + 2.0 * p1) as f32).abs() < 1e-5);
        // An expert with σ² → ∞ (log σ² clipped at 50) leaves the prior.
        let wide = expert(&[7.0], &[80.0], 1, &device);
        let q3 = product_of_gaussians(&[(&wide, None)]);
        assert!(mckd_train::to_vec(q3.mu)[0].abs() < 1e-6);
        assert!((mckd_train::to_vec(q3.precision)[0] - 1.0).abs() < 1e-6);
        // A per-sample weight of 0 drops the expert for that sample only (its NaN unread).
        let p = Presence::from_rows(vec![vec![true, true], vec![true, false]]);
        let a2 = expert(&[1.0, 1.0], &[0.0, 0.0], 2, &device);
        let f = Tensor::cat(
            vec![t(&[-3.0, f32::NAN], 2, &device), t(&[0.0, 0.0], 2, &device)],
            1,
        );
        let b2 = Expert::of(keep(f, &p, 1));
        let q4 = product_of_gaussians(&[(&a2, None), (&b2, Some(p.column(1, &device)))]);
        let mu = mckd_train::to_vec(q4.mu);
        let (m0, _) = pog64(&[(1.0, 0.0), (-3.0, 0.0)]);
        let (m1, _) = pog64(&[(1.0, 0.0)]);
        assert!((f64::from(mu[0]) - m0).abs() < 1e-5 && (f64::from(mu[1]) - m1).abs() < 1e-5);
    }

    #[test]
    fn kl_terms_in_closed_form() {
        let device = Device::flex();
        let q1 = Gaussian {
            mu: t(&[0.3, -1.0], 1, &device),
            precision: t(&[2.0, 0.5], 1, &device),
        };
        let q2 = Gaussian {
            mu: t(&[1.0, 0.5], 1, &device),
            precision: t(&[0.8, 4.0], 1, &device),
        };
        // import numpy as np
        // kl = lambda m1, v1, m2, v2: 0.5*(np.log(v2/v1) + (v1 + (m1-m2)**2)/v2 - 1)
        // np.mean([kl(0.3, 0.5, 1.0, 1.25), kl(-1.0, 2.0, 0.5, 0.25)])  # 3.65721229754858
        // np.mean([kl(0.3, 0.5, 0, 1), kl(-1.0, 2.0, 0, 1)])            # 0.3975
        let want = (kl64((0.3, 0.5), (1.0, 1.25)) + kl64((-1.0, 2.0), (0.5, 0.25))) / 2.0;
        assert!((want - 3.657_212_297_548_58).abs() < 1e-12);
        let got = f64::from(mckd_train::to_vec(kl(&q1, &q2))[0]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert!(mckd_train::to_vec(kl(&q1, &q1))[0].abs() < 1e-7);
        let want = (kl64((0.3, 0.5), (0.0, 1.0)) + kl64((-1.0, 2.0), (0.0, 1.0))) / 2.0;
        assert!((want - 0.3975).abs() < 1e-12);
        let got = f64::from(mckd_train::to_vec(kl_prior(&q1))[0]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    /// The KL term of one level over the 15 subsets, against the f64 closed form: one element
    /// per modality, the drawn subset {flair, t1c}. The same in numpy:
    ///
    /// ```text
    /// import numpy as np, itertools
    /// params = [(0.4, -0.3), (-1.2, 0.5), (2.0, -1.0), (0.1, 0.8)]          # (μ, log σ²)
    /// def pog(ms):
    ///     T = 1 + sum(1/(np.exp(lv) + 1e-7) for _, lv in ms)
    ///     return sum(m/(np.exp(lv) + 1e-7) for m, lv in ms)/T, 1/T
    /// def kl(a, b):
    ///     (m1, v1), (m2, v2) = a, b
    ///     return 0.5*(np.log(v2/v1) + (v1 + (m1 - m2)**2)/v2 - 1)
    /// subs = [s for s in itertools.product([0, 1], repeat=4) if any(s)]
    /// pick = lambda s: [params[m] for m in range(4) if s[m]]
    /// qd = pog(pick((1, 0, 1, 0)))
    /// sum(kl(qd, pog(pick(s))) for s in subs)/14 \
    ///     + sum(kl(pog(pick(s)), (0, 1)) for s in subs)/15                # 1.6618842186869855
    /// ss = [(1, 0, 0, 0), (0, 0, 1, 0), (1, 0, 1, 0)]
    /// sum(kl(qd, pog(pick(s))) for s in ss)/2 \
    ///     + sum(kl(pog(pick(s)), (0, 1)) for s in ss)/3                   # 1.5501378408164221
    /// ```
    #[test]
    fn kl_over_every_subset_in_closed_form() {
        let device = Device::flex();
        let params = [(0.4, -0.3), (-1.2, 0.5), (2.0, -1.0), (0.1, 0.8)];
        let experts: Vec<Option<Expert>> = params
            .iter()
            .map(|&(m, lv)| Some(expert(&[m as f32], &[lv as f32], 1, &device)))
            .collect();
        let drawn_mask = vec![true, false, true, false];
        let presence = Presence::from_rows(vec![drawn_mask.clone()]);
        let drawn = posterior(&experts, &presence, &device);
        let pick = |mask: &[bool]| -> Vec<(f64, f64)> {
            (0..4).filter(|&m| mask[m]).map(|m| params[m]).collect()
        };
        let qd = pog64(&pick(&drawn_mask));
        let subsets = mckd_core::all_subsets(4);
        let mut inter = 0.0;
        let mut prior = 0.0;
        for s in &subsets {
            let q = pog64(&pick(s));
            inter += kl64(qd, q);
            prior += kl64(q, (0.0, 1.0));
        }
        let want = inter / 14.0 + prior / 15.0;
        assert!((want - 1.661_884_218_686_985_5).abs() < 1e-9);
        let got = kl_level(&experts, &drawn, &presence, true, &device).into_scalar::<f32>();
        assert!((f64::from(got) - want).abs() < 1e-5, "{got} vs {want}");
        // Only the present modalities' subsets: {flair}, {t1c}, {flair, t1c}.
        let mut inter = 0.0;
        let mut prior = 0.0;
        for s in [
            [true, false, false, false],
            [false, false, true, false],
            [true, false, true, false],
        ] {
            let q = pog64(&pick(&s));
            inter += kl64(qd, q);
            prior += kl64(q, (0.0, 1.0));
        }
        let want = inter / 2.0 + prior / 3.0;
        assert!((want - 1.550_137_840_816_422_1).abs() < 1e-9);
        let mut only = experts.clone();
        only[1] = None;
        only[3] = None;
        let got = kl_level(&only, &drawn, &presence, false, &device).into_scalar::<f32>();
        assert!((f64::from(got) - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn every_mask_gives_finite_region_logits_without_reading_missing_modalities() {
        let device = Device::flex();
        let net = Hved::new(
            2,
            Head::Regions(DiceReduction::PerSample),
            HvedConfig::default(),
            &device,
        );
        check_all_masks(&net, [8, 16, 8], &device);
        let ad = Device::flex().autodiff();
        let strict = HvedConfig {
            aux_reads_dropped: false,
            ..HvedConfig::default()
        };
        let net = Hved::new(2, Head::Regions(DiceReduction::PerSample), strict, &ad);
        for rows in [
            vec![vec![false, true, true, false]; 2],
            vec![
                vec![true, false, false, true],
                vec![false, false, false, true],
            ],
        ] {
            check_training_ignores_missing(&net, [8, 8, 8], &rows, &ad);
        }
    }

    /// The KL and reconstruction terms (and the segmentation) through the sampled posterior.
    #[test]
    fn term_gradients_match_finite_differences() {
        let ad = Device::flex().autodiff();
        let net = crate::peers::testing::seeded(
            Hved::new(
                2,
                Head::Regions(DiceReduction::PerSample),
                HvedConfig::default(),
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
    fn parameter_count_matches_the_table() {
        let device = Device::flex();
        for c in [2, 8] {
            let net = Hved::new(
                c,
                Head::Regions(DiceReduction::PerSample),
                HvedConfig::default(),
                &device,
            );
            // 4 encoders + the segmentation decoder + 4 image decoders (2·1552.5 = 3105).
            let want = 4 * (3429 * c * c + 117 * c)
                + (3105 * c * c / 2 + 45 * c + 3)
                + 4 * (3105 * c * c / 2 + 43 * c + 1);
            assert_eq!(net.num_params(), want);
        }
    }
}
