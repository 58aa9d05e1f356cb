//! Helpers shared by the tests: seeded random tensors and a relative comparison.

use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Uniform values in [-1, 1) from a ChaCha8 generator (independent of burn's generator).
pub fn random<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// The values of a tensor (any device).
pub fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

/// `max |a − b| / max(1, max |b|)`: the error relative to the reference's scale (and absolute
/// for references of magnitude below 1). Shapes must agree.
pub fn max_rel_error<const D: usize>(a: &Tensor<D>, b: &Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(&b).fold(0.0f32, |m, (x, y)| {
        if x.is_nan() != y.is_nan() {
            f32::INFINITY
        } else {
            m.max((x - y).abs())
        }
    });
    diff / scale
}

/// Panics unless [`max_rel_error`] ≤ `tol`.
pub fn assert_close<const D: usize>(a: &Tensor<D>, b: &Tensor<D>, tol: f32, what: &str) {
    let err = max_rel_error(a, b);
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
}
