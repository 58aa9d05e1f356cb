//! The cross-modal knowledge distillation loss (Eq. 5).
//!
//! For every ordered pair (teacher `i`, student `j`), `i ≠ j`, with both modalities present:
//! `(w_i / w_j) · d(f_i, f_j)`, summed over pairs, where `w` are the normalised importance
//! weights and `d` is the mean absolute error (L1, default) or the mean squared error over the
//! feature elements. The teacher feature and the weight ratio are detached (**\[ref\]**): the
//! loss trains the students' encoders only, and the IWV learns only in the meta step.
//!
//! Batch reduction ([`CkdReduction`]): the mean over all B samples of the batch, a pair absent
//! from a sample contributing 0 for that sample (Eq. 4 sums per-sample losses; the reference
//! takes `.mean()` over the batch). The earlier reading divided each pair's sum by the number of
//! samples where both modalities are present, which multiplies the term by B/count when
//! availability differs per sample (×3.5–×17 on AV-MNIST's 20–5 % rows); it is kept as
//! [`CkdReduction::PresentMean`] for the comparison. Both agree when every sample of a batch has
//! the same mask (as on BraTS).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Feature distance of the distillation loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// Mean absolute error over the feature elements (p = 1, the paper's default).
    #[default]
    #[serde(alias = "L1")]
    L1,
    /// Mean squared error (the paper's ablation).
    #[serde(alias = "Mse")]
    Mse,
}

/// How the per-sample pair distances are reduced over the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum CkdReduction {
    /// The mean over all samples of the batch (Eq. 4, the reference).
    #[default]
    BatchMean,
    /// Each pair's mean over the samples where both modalities are present (an earlier reading;
    /// kept for the ablation).
    PresentMean,
}

/// Smallest student weight used in a ratio (ReLU normalisation can give 0).
const MIN_WEIGHT: f32 = 1e-6;

/// The CKD loss.
///
/// # Shapes
/// - `features`: `[batch, modalities, features]`, the real (not imputed) features
/// - `mask`: `[batch, modalities]`, 1 = present
/// - `weights`: `[modalities]`, normalised importance weights (detached here)
/// - output: `[1]`
pub fn ckd_loss(
    features: Tensor<3>,
    mask: Tensor<2>,
    weights: Tensor<1>,
    distance: Distance,
    reduction: CkdReduction,
) -> Tensor<1> {
    let [b, n, f] = features.dims();
    assert_eq!(mask.dims(), [b, n], "ckd_loss: mask shape");
    assert_eq!(weights.dims(), [n], "ckd_loss: weights shape");
    let device = features.device();

    let teacher = features.clone().detach().reshape([b, n, 1, f]);
    let student = features.reshape([b, 1, n, f]);
    let diff = teacher.expand([b, n, n, f]) - student.expand([b, n, n, f]);
    let elem = match distance {
        Distance::L1 => diff.abs(),
        Distance::Mse => diff.square(),
    };
    let dist = elem.mean_dim(3).reshape([b, n, n]); // [batch, teacher, student]

    let off_diag = Tensor::<2>::ones([n, n], &device) - Tensor::eye(n, &device);
    let pair =
        mask.clone().reshape([b, n, 1]) * mask.reshape([b, 1, n]) * off_diag.reshape([1, n, n]);
    let sum = (dist * pair.clone()).sum_dim(0).reshape([n, n]);
    let per_pair = match reduction {
        CkdReduction::BatchMean => sum / b as f64,
        CkdReduction::PresentMean => {
            let count = pair.sum_dim(0).reshape([n, n]);
            sum / count.clamp_min(1.0)
        }
    };

    let w = weights.detach();
    let ratio = w.clone().reshape([n, 1]) / w.clamp_min(MIN_WEIGHT).reshape([1, n]);
    (per_pair * ratio).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, values};

    fn setup(device: &Device) -> (Tensor<3>, Tensor<2>, Tensor<1>) {
        // 3 samples × 3 modalities × 2 features; sample 0: all present, sample 1: {0, 2},
        // sample 2: {1} only (no pair).
        let f = Tensor::from_data(
            TensorData::new(
                vec![
                    1.0f32, 2.0, 0.0, 0.0, 3.0, -1.0, //
                    0.5, 0.5, 9.0, 9.0, -0.5, 1.5, //
                    4.0, 4.0, 1.0, 2.0, 7.0, 7.0,
                ],
                [3, 3, 2],
            ),
            device,
        );
        let m = Tensor::from_data(
            TensorData::new(vec![1.0f32, 1., 1., 1., 0., 1., 0., 1., 0.], [3, 3]),
            device,
        );
        let w = Tensor::from_floats([0.5f32, 0.3, 0.2], device);
        (f, m, w)
    }

    // import numpy as np
    // f = np.array([[[1,2],[0,0],[3,-1]], [[.5,.5],[9,9],[-.5,1.5]], [[4,4],[1,2],[7,7]]])
    // m = np.array([[1,1,1],[1,0,1],[0,1,0]]); w = np.array([.5,.3,.2])
    // def ckd(d, batch_mean):
    //     tot = 0
    //     for i in range(3):
    //         for j in range(3):
    //             if i == j: continue
    //             ds = [d(f[b,i], f[b,j]) for b in range(3) if m[b,i] and m[b,j]]
    //             if ds: tot += w[i]/w[j] * (sum(ds) / 3 if batch_mean else np.mean(ds))
    //     return tot
    // ckd(lambda a,b: np.abs(a-b).mean(), True)    -> 5.961111111111112
    // ckd(lambda a,b: ((a-b)**2).mean(), True)     -> 12.75
    // ckd(lambda a,b: np.abs(a-b).mean(), False)   -> 12.808333333333334
    // ckd(lambda a,b: ((a-b)**2).mean(), False)    -> 27.375
    #[test]
    fn ckd_l1_and_mse_match_hand_computed_values() {
        let device = Device::flex();
        let (f, m, w) = setup(&device);
        let run = |d, r| values(ckd_loss(f.clone(), m.clone(), w.clone(), d, r));
        // Batch mean (Eq. 4): every pair's sum over the samples is divided by B = 3.
        assert_close(
            &run(Distance::L1, CkdReduction::BatchMean),
            &[5.961_111],
            1e-4,
        );
        assert_close(&run(Distance::Mse, CkdReduction::BatchMean), &[12.75], 1e-4);
        // The earlier reading: each pair averaged over the samples where it is present. It
        // differs here because pair (0, 2) is present in 2 samples and pairs with 1 in one.
        assert_close(
            &run(Distance::L1, CkdReduction::PresentMean),
            &[12.808_333],
            1e-4,
        );
        assert_close(
            &run(Distance::Mse, CkdReduction::PresentMean),
            &[27.375],
            1e-4,
        );
    }

    #[test]
    fn reductions_agree_when_every_sample_has_the_same_mask() {
        let device = Device::flex();
        let (f, _, w) = setup(&device);
        let m = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0., 1., 1., 0., 1., 1., 0., 1.], [3, 3]),
            &device,
        );
        let a = values(ckd_loss(
            f.clone(),
            m.clone(),
            w.clone(),
            Distance::L1,
            CkdReduction::BatchMean,
        ));
        let b = values(ckd_loss(f, m, w, Distance::L1, CkdReduction::PresentMean));
        assert_close(&a, &b, 1e-6);
    }

    #[test]
    fn no_pair_present_gives_zero() {
        let device = Device::flex();
        let (f, _, w) = setup(&device);
        let m = Tensor::from_data(
            TensorData::new(vec![1.0f32, 0., 0., 0., 1., 0., 0., 0., 1.], [3, 3]),
            &device,
        );
        assert_eq!(
            values(ckd_loss(f, m, w, Distance::L1, CkdReduction::BatchMean)),
            vec![0.0]
        );
    }

    #[test]
    fn teacher_and_weights_get_no_gradient() {
        // Two modalities, one sample, L1: loss = (w0/w1)·mean|f0 − f1| + (w1/w0)·mean|f1 − f0|.
        // With f0 detached as teacher in pair (0→1) and f1 detached in pair (1→0):
        //   dL/df1 = (w0/w1)·sign(f1 − f0)/F   (only from pair 0→1, where f1 is the student)
        //   dL/df0 = (w1/w0)·sign(f0 − f1)/F   (only from pair 1→0)
        // Without the detach each would also get the other pair's term.
        let device = Device::flex().autodiff();
        let f = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, -2.0, 0.0, 0.5], [1, 2, 2]),
            &device,
        )
        .require_grad();
        let w = Tensor::<1>::from_floats([0.75f32, 0.25], &device).require_grad();
        let m = Tensor::<2>::ones([1, 2], &device);
        let loss = ckd_loss(
            f.clone(),
            m,
            w.clone(),
            Distance::L1,
            CkdReduction::BatchMean,
        );
        let grads = loss.backward();
        let gf = values(f.grad(&grads).expect("student features get a gradient"));
        // f0 - f1 = [1, -2.5] → sign(f0-f1) = [1, -1]; F = 2.
        // dL/df0 = (0.25/0.75)·[1,-1]/2 = [1/6, -1/6]; dL/df1 = 3·[-1, 1]/2 = [-1.5, 1.5].
        assert_close(&gf, &[1.0 / 6.0, -1.0 / 6.0, -1.5, 1.5], 1e-5);
        let gw = w.grad(&grads);
        assert!(
            gw.is_none() || values(gw.unwrap()).iter().all(|&g| g == 0.0),
            "the ratio must be detached"
        );
    }

    #[test]
    fn isolated_pair_gives_teacher_nothing() {
        // Weights [1, 0]: pair (0→1) has ratio 1/1e-6 and pair (1→0) has ratio 0, so modality 0
        // is only ever a teacher. Its feature must get exactly zero gradient.
        let device = Device::flex().autodiff();
        let teacher = Tensor::<3>::from_data(TensorData::new(vec![2.0f32], [1, 1, 1]), &device)
            .require_grad();
        let student = Tensor::<3>::from_data(TensorData::new(vec![0.0f32], [1, 1, 1]), &device)
            .require_grad();
        let f = Tensor::cat(vec![teacher.clone(), student.clone()], 1);
        let w = Tensor::<1>::from_floats([1.0f32, 0.0], &device);
        let m = Tensor::<2>::ones([1, 2], &device);
        let loss = ckd_loss(f, m, w, Distance::L1, CkdReduction::BatchMean);
        let grads = loss.backward();
        let gt = teacher.grad(&grads).map(values).unwrap_or(vec![0.0]);
        let gs = values(student.grad(&grads).unwrap());
        assert_eq!(gt, vec![0.0], "teacher got a gradient");
        // d/ds (1/1e-6)·|2 − s| at s = 0 → −1e6.
        assert_close(&gs, &[-1.0e6], 1.0);
    }
}
