//! Missing-modality handling and fusion: zeroed inputs, mean-imputed features (Eq. 2),
//! concatenation in modality order (Eq. 3), and IWV-weighted features for the meta step.
//!
//! Features of one level are handled as `[batch, modalities, features]` tensors: a task flattens
//! whatever shape its encoder produces (a 128-d vector, a `C×D×H×W` bottleneck) into `features`
//! and reshapes the fused `[batch, modalities × features]` tensor back in its decoder. Since the
//! modality axis sits just before the flattened channel axis, that reshape is exactly
//! channel-wise concatenation in modality order.

use burn::prelude::*;

/// Zeroes the input of the samples whose modality is missing (the reference code feeds zeros).
///
/// # Shapes
/// - `x`: `[batch, ...]`
/// - `present`: `[batch]`, 1 where present, 0 where missing
/// - output: as `x`
pub fn zero_missing<const D: usize>(x: Tensor<D>, present: Tensor<1>) -> Tensor<D> {
    let [batch] = present.dims();
    assert_eq!(x.dims()[0], batch, "zero_missing: batch sizes differ");
    let mut shape = [1usize; D];
    shape[0] = batch;
    x * present.reshape(shape)
}

/// Replaces each missing modality's feature by the mean of the present modalities' features
/// of the same sample (Eq. 2). Present features pass through unchanged.
///
/// # Shapes
/// - `features`: `[batch, modalities, features]`
/// - `mask`: `[batch, modalities]`, 1 = present; every sample needs one present modality
/// - output: `[batch, modalities, features]`
pub fn impute(features: Tensor<3>, mask: Tensor<2>) -> Tensor<3> {
    let [b, n, _] = features.dims();
    assert_eq!(mask.dims(), [b, n], "impute: mask shape");
    let m = mask.unsqueeze_dim::<3>(2); // [batch, modalities, 1]
    let present = features * m.clone();
    let count = m.clone().sum_dim(1).clamp_min(1.0); // [batch, 1, 1]
    let mean = present.clone().sum_dim(1) / count; // [batch, 1, features]
    present + mean * (m.neg() + 1.0)
}

/// Fuses modality features by concatenation in modality order (Eq. 3).
///
/// # Shapes
/// - `features`: `[batch, modalities, features]`
/// - output: `[batch, modalities × features]`, modality `i` at columns `i·F .. (i+1)·F`
pub fn fuse(features: Tensor<3>) -> Tensor<2> {
    let [b, n, f] = features.dims();
    features.reshape([b, n * f])
}

/// Multiplies each modality's feature by its (normalised) importance weight (meta step).
///
/// # Shapes
/// - `features`: `[batch, modalities, features]`
/// - `weights`: `[modalities]`
/// - output: `[batch, modalities, features]`
pub fn weight_features(features: Tensor<3>, weights: Tensor<1>) -> Tensor<3> {
    let [n] = weights.dims();
    assert_eq!(features.dims()[1], n, "weight_features: modality count");
    features * weights.reshape([1, n, 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, values};

    fn feats(device: &Device) -> Tensor<3> {
        // 2 samples × 3 modalities × 2 features.
        Tensor::from_data(
            TensorData::new(
                vec![
                    1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, //
                    -1.0, 0.5, 2.0, -4.0, 10.0, 1.0,
                ],
                [2, 3, 2],
            ),
            device,
        )
    }

    #[test]
    fn imputation_per_sample_matches_hand_computed_values() {
        // import numpy as np
        // f = np.array([[[1,2],[3,4],[5,6]], [[-1,.5],[2,-4],[10,1]]], float)
        // m = np.array([[1,0,1],[0,1,0]], float)[..., None]
        // mean = (f*m).sum(1, keepdims=True) / m.sum(1, keepdims=True)
        // print((f*m + mean*(1-m)).ravel())
        // -> [ 1  2  3  4  5  6   2 -4  2 -4  2 -4]
        let device = Device::flex();
        let mask = Tensor::from_data(
            TensorData::new(vec![1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0], [2, 3]),
            &device,
        );
        let out = impute(feats(&device), mask);
        assert_close(
            &values(out),
            &[1., 2., 3., 4., 5., 6., 2., -4., 2., -4., 2., -4.],
            1e-6,
        );
    }

    #[test]
    fn imputation_with_everything_present_is_identity() {
        let device = Device::flex();
        let mask = Tensor::ones([2, 3], &device);
        assert_eq!(values(impute(feats(&device), mask)), values(feats(&device)));
    }

    #[test]
    fn fusion_concatenates_in_modality_order_and_weights_scale() {
        let device = Device::flex();
        let fused = fuse(feats(&device));
        assert_eq!(fused.dims(), [2, 6]);
        assert_eq!(
            values(fused),
            vec![1., 2., 3., 4., 5., 6., -1., 0.5, 2., -4., 10., 1.]
        );
        let w = Tensor::from_floats([0.5f32, 2.0, 0.0], &device);
        assert_close(
            &values(weight_features(feats(&device), w)),
            &[0.5, 1., 6., 8., 0., 0., -0.5, 0.25, 4., -8., 0., 0.],
            1e-6,
        );
    }

    #[test]
    fn zeroing_missing_inputs() {
        let device = Device::flex();
        let x = Tensor::<4>::ones([3, 1, 2, 2], &device);
        let present = Tensor::from_floats([1.0f32, 0.0, 1.0], &device);
        let v = values(zero_missing(x, present));
        assert_eq!(&v[0..4], &[1.0; 4]);
        assert_eq!(&v[4..8], &[0.0; 4]);
        assert_eq!(&v[8..12], &[1.0; 4]);
    }
}
