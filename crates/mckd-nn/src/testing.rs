//! Helpers shared by the tests: seeded tensors, a 5-D `f64` array for the brute-force
//! references, autodiff gradients and finite differences.

use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A dense `[B, C, D, H, W]` array of `f64` (row-major, W fastest) for loop references.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub dims: [usize; 5],
    pub data: Vec<f64>,
}

impl Grid {
    pub fn zeros(dims: [usize; 5]) -> Self {
        Self {
            dims,
            data: vec![0.0; dims.iter().product()],
        }
    }

    /// Uniform values in [-1, 1) from a ChaCha8 generator (independent of burn's generator).
    pub fn random(dims: [usize; 5], seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = dims.iter().product();
        // Round to f32 so the tensor and the reference see the same numbers.
        let data = (0..n)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) as f64)
            .collect();
        Self { dims, data }
    }

    pub fn idx(&self, b: usize, c: usize, d: usize, h: usize, w: usize) -> usize {
        let [_, cn, dn, hn, wn] = self.dims;
        (((b * cn + c) * dn + d) * hn + h) * wn + w
    }

    pub fn at(&self, b: usize, c: usize, d: usize, h: usize, w: usize) -> f64 {
        self.data[self.idx(b, c, d, h, w)]
    }

    pub fn tensor(&self, device: &Device) -> Tensor<5> {
        let v: Vec<f32> = self.data.iter().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(v, self.dims), device)
    }

    /// `Σ self ⊙ other` (same dims).
    pub fn dot(&self, other: &Grid) -> f64 {
        assert_eq!(self.dims, other.dims);
        self.data.iter().zip(&other.data).map(|(a, b)| a * b).sum()
    }
}

/// Uniform values in [-1, 1) as a tensor of any rank, and as `f64`.
pub fn random_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) as f64)
        .collect()
}

pub fn tensor_from<const D: usize>(v: &[f64], dims: [usize; D], device: &Device) -> Tensor<D> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, dims), device)
}

/// The values of a tensor as `f64`.
pub fn values<const D: usize>(t: &Tensor<D>) -> Vec<f64> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Panics unless `max |a − b| ≤ tol · max(1, max |b|)`.
pub fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let e = (x - y).abs();
        if e.is_nan() || e > worst {
            worst = if e.is_nan() { f64::INFINITY } else { e };
            at = i;
        }
    }
    assert!(
        worst <= tol * scale,
        "{what}: error {worst:e} at {at} (got {}, want {}) > {tol:e} × {scale}",
        a[at],
        b[at]
    );
}

/// Central finite differences of `f` at `x` (step `h`), one coordinate at a time.
pub fn finite_differences(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            x[i] = x0 + h;
            let up = f(&x);
            x[i] = x0 - h;
            let down = f(&x);
            x[i] = x0;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// The autodiff device used by the gradient tests.
pub fn ad() -> Device {
    Device::flex().autodiff()
}
