//! U-HeMIS (Havaei et al., MICCAI 2016, in the U-Net form of Dorent et al. 2019,
//! `ReubenDo/U-HVED` `extensions/u_hemis`): each modality has its own encoder; at every level
//! the features of the present modalities are abstracted into their mean and population
//! variance, which one decoder reads.
//!
//! Reduced form (PEERS §5): encoders at our widths `c, 2c, 4c, 8c` (max pooling between levels,
//! as the original; our post-norm blocks instead of its pre-activation ones; the original's
//! second convolution halves the channels, ours does not), the [mean, variance] maps
//! (`2·C_l` channels) instead of the UNet's 4-modality concatenation, and the U-HVED-style
//! decoder (trilinear upsampling, concatenation, our blocks: `4c, 2c, c`).
//!
//! | part | layers | parameters |
//! |---|---|---|
//! | 4 encoders | block(1→c), pool, block(c→2c), pool, block(2c→4c), pool, block(4c→8c) | 4 × (3429c² + 117c) |
//! | decoder | up, block(16c + 8c → 4c), up, block(4c + 4c → 2c), up, block(2c + 2c → c), 1×1 | 3699c² + 45c + 3 |
//!
//! Total with the region head: `17,415c² + 513c + 3` (1,118,667 at c = 8; the UNet: 509,195);
//! the four encoders cost what the UNet's shared encoder costs run four times.
use burn::prelude::*;
use rand_chacha::ChaCha8Rng;

use super::common::{Encoder, Head, Presence, UpDecoder, keep, widths};
use super::{PeerNet, Term};
use crate::model::{BratsBatch, N_MODALITIES};

/// The U-HeMIS network.
#[derive(Module, Debug)]
pub struct Hemis {
    encoders: Vec<Encoder>,
    decoder: UpDecoder,
    #[module(skip)]
    head: Head,
}

impl Hemis {
    /// The network at base width `c` with `head`.
    pub fn new(c: usize, head: Head, device: &Device) -> Self {
        let w = widths(c);
        Self {
            encoders: (0..N_MODALITIES)
                .map(|_| Encoder::new(c, true, device))
                .collect(),
            decoder: UpDecoder::new(
                2 * w[3],
                [2 * w[2], 2 * w[1], 2 * w[0]],
                [w[2], w[1], w[0]],
                head.channels(),
                false,
                device,
            ),
            head,
        }
    }

    /// The head's logits; only the present modalities are encoded.
    ///
    /// # Shapes
    /// - images 4 × `[B, 1, D, H, W]` → `[B, head channels, D, H, W]`
    pub fn forward(&self, batch: &BratsBatch, presence: &Presence) -> Tensor<5> {
        let feats: Vec<Option<[Tensor<5>; 4]>> = (0..N_MODALITIES)
            .map(|m| {
                presence
                    .any(m)
                    .then(|| self.encoders[m].forward(keep(batch.images[m].clone(), presence, m)))
            })
            .collect();
        let mut fused: Vec<Tensor<5>> = (0..4)
            .map(|l| {
                let level: Vec<Option<Tensor<5>>> = feats
                    .iter()
                    .map(|f| f.as_ref().map(|f| f[l].clone()))
                    .collect();
                mean_var_fusion(&level, presence)
            })
            .collect();
        let bottom = fused.pop().expect("4 levels");
        let [f0, f1, f2]: [Tensor<5>; 3] = fused.try_into().expect("3 skips");
        self.decoder.forward(bottom, [f2, f1, f0])
    }
}

/// HeMIS's abstraction layer: per sample, voxel and channel, the mean and the population
/// variance over the present modalities, concatenated on the channel axis. With one modality
/// present the variance is 0 and the mean is that modality's feature.
///
/// `features[m]` is `None` for a modality no sample has; a sample without modality `m` gets
/// weight 0 on it (its feature is not read: a masked fill).
///
/// # Shapes
/// - `features[m]`: `[B, C, D, H, W]`
/// - output: `[B, 2C, D, H, W]` (mean, then variance)
pub fn mean_var_fusion(features: &[Option<Tensor<5>>], presence: &Presence) -> Tensor<5> {
    let present: Vec<(usize, Tensor<5>)> = features
        .iter()
        .enumerate()
        .filter_map(|(m, f)| f.clone().map(|f| (m, keep(f, presence, m))))
        .collect();
    let device = present.first().expect("a present modality").1.device();
    let weight = |m: usize| -> Tensor<5> {
        presence.per_sample(
            |b| {
                if presence.has(b, m) {
                    1.0 / presence.count(b) as f32
                } else {
                    0.0
                }
            },
            &device,
        )
    };
    let mean = present
        .iter()
        .map(|(m, f)| f.clone() * weight(*m))
        .reduce(|a, b| a + b)
        .expect("a present modality");
    let var = present
        .iter()
        .map(|(m, f)| (f.clone() - mean.clone()).powf_scalar(2.0) * weight(*m))
        .reduce(|a, b| a + b)
        .expect("a present modality");
    Tensor::cat(vec![mean, var], 1)
}

impl PeerNet for Hemis {
    fn term_names(&self) -> Vec<String> {
        vec!["task_loss".into()]
    }

    fn train_terms(&self, batch: &BratsBatch, mask: &Tensor<2>, _: &mut ChaCha8Rng) -> Vec<Term> {
        let logits = self.forward(batch, &Presence::of(mask));
        let targets = batch.targets.clone().expect("a training batch has targets");
        vec![Term::new(self.head.loss(logits, targets), 1.0)]
    }

    fn predict(&self, batch: &BratsBatch, mask: &Tensor<2>) -> Tensor<5> {
        self.head
            .region_logits(self.forward(batch, &Presence::of(mask)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DiceReduction;
    use crate::peers::testing::{check_all_masks, check_training_ignores_missing};

    fn t5(v: Vec<f32>, device: &Device) -> Tensor<5> {
        Tensor::from_data(TensorData::new(v, [2, 1, 1, 1, 2]), device)
    }

    #[test]
    fn mean_and_variance_over_the_present_modalities() {
        let device = Device::flex();
        // Two samples × 2 voxels; sample 0 has modalities 0, 1, 3; sample 1 has modality 2
        // alone (its other features are NaN: never read).
        let nan = f32::NAN;
        let f = [
            vec![1.0, 2.0, nan, nan],
            vec![3.0, -2.0, nan, nan],
            vec![nan, nan, 5.0, -1.0],
            vec![2.0, 0.0, nan, nan],
        ];
        let p = Presence::from_rows(vec![
            vec![true, true, false, true],
            vec![false, false, true, false],
        ]);
        let feats: Vec<Option<Tensor<5>>> =
            f.iter().map(|v| Some(t5(v.clone(), &device))).collect();
        let out = mckd_train::to_vec(mean_var_fusion(&feats, &p));
        // import numpy as np
        // f = np.array([[1., 2.], [3, -2], [2, 0]])   # sample 0's present modalities × voxels
        // f.mean(0), f.var(0)                          # [2, 0], [0.6667, 2.6667]
        // Sample 0, voxel 0: {1, 3, 2} → mean 2, var ((1)+(1)+0)/3 = 2/3;
        // voxel 1: {2, −2, 0} → mean 0, var 8/3. Sample 1 (alone): mean = feature, var 0.
        // Layout [b, 2 channels (mean, var), 2 voxels].
        let want = [2.0, 0.0, 2.0 / 3.0, 8.0 / 3.0, 5.0, -1.0, 0.0, 0.0];
        for (g, w) in out.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{out:?} vs {want:?}");
        }
        // A modality no sample has is skipped.
        let mut feats = feats;
        feats[2] = None;
        let p = Presence::from_rows(vec![vec![true, true, false, true]; 2]);
        let out = mckd_train::to_vec(mean_var_fusion(&feats, &p));
        assert_eq!(&out[..4], &[2.0, 0.0, 2.0 / 3.0, 8.0 / 3.0]);
    }

    #[test]
    fn every_mask_gives_finite_region_logits_without_reading_missing_modalities() {
        let device = Device::flex();
        let net = Hemis::new(2, Head::Regions(DiceReduction::PerSample), &device);
        check_all_masks(&net, [8, 8, 16], &device);
        let native = Hemis::new(2, Head::Native(super::super::NativeLoss::NiftyNet), &device);
        check_all_masks(&native, [8, 8, 8], &device);
        let ad = Device::flex().autodiff();
        let net = Hemis::new(2, Head::Regions(DiceReduction::PerSample), &ad);
        check_training_ignores_missing(
            &net,
            [8, 8, 8],
            &[
                vec![true, false, false, true],
                vec![false, false, false, true],
            ],
            &ad,
        );
    }

    #[test]
    fn loss_gradient_matches_finite_differences() {
        let ad = Device::flex().autodiff();
        let net = crate::peers::testing::seeded(
            Hemis::new(2, Head::Regions(DiceReduction::PerSample), &ad),
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
            let net = Hemis::new(c, Head::Regions(DiceReduction::PerSample), &device);
            assert_eq!(net.num_params(), 17_415 * c * c + 513 * c + 3);
        }
    }
}
