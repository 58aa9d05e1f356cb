//! Normalisations of 5-D feature maps that burn 0.22.1 has no layer for: AdaIN and a layer
//! norm over `C×D×H×W` with per-channel affine parameters (Robust-MSeg's decoder).
//!
//! Both use the biased variance (`tf.nn.moments`, PyTorch's instance/layer norms):
//! `x̂ = (x − mean)/√(var + ε)`.

use burn::module::Param;
use burn::nn::Initializer;
use burn::prelude::*;

/// Adaptive instance normalisation (Huang & Belongie 2017; Robust-MSeg's
/// `adaptive_instance_norm`, whose ε is 1e-5): per sample and channel, normalise over
/// D·H·W, then scale by `gamma` and shift by `beta` — per-sample parameters, typically an
/// MLP's output.
///
/// # Shapes
/// - `x`: `[B, C, D, H, W]`; `gamma`, `beta`: `[B, C]`
/// - output: `[B, C, D, H, W]`
///
/// # Panics
/// If `gamma` or `beta` is not `[B, C]` for `x`'s B and C (an internal contract).
pub fn adain(x: Tensor<5>, gamma: Tensor<2>, beta: Tensor<2>, epsilon: f64) -> Tensor<5> {
    let [b, c, d, h, w] = x.dims();
    assert!(
        gamma.dims() == [b, c] && beta.dims() == [b, c],
        "adain: gamma {:?} and beta {:?} must be [B, C] = {:?}",
        gamma.dims(),
        beta.dims(),
        [b, c]
    );
    let x = x.reshape([b, c, d * h * w]);
    let (var, mean) = x.clone().var_mean_bias(2); // [B, C, 1] each
    let x_hat = (x - mean) / (var + epsilon).sqrt();
    (x_hat * gamma.reshape([b, c, 1]) + beta.reshape([b, c, 1])).reshape([b, c, d, h, w])
}

/// Layer normalisation of each sample over all of `C×D×H×W`, then `γ_c·x̂ + β_c` per channel
/// (TF 1.x `tf.contrib.layers.layer_norm` on NDHWC with its defaults `begin_norm_axis=1`,
/// `begin_params_axis=-1`, as Robust-MSeg's decoder uses it).
///
/// # Shapes
/// - `x`: `[B, C, D, H, W]`; `gamma`, `beta`: `[C]`
/// - output: `[B, C, D, H, W]`
///
/// # Panics
/// If `gamma` or `beta` is not `[C]` (an internal contract).
pub fn layer_norm3d(x: Tensor<5>, gamma: Tensor<1>, beta: Tensor<1>, epsilon: f64) -> Tensor<5> {
    let [b, c, d, h, w] = x.dims();
    assert!(
        gamma.dims() == [c] && beta.dims() == [c],
        "layer_norm3d: gamma {:?} and beta {:?} must be [C] = [{c}]",
        gamma.dims(),
        beta.dims()
    );
    let flat = x.reshape([b, c * d * h * w]);
    let (var, mean) = flat.clone().var_mean_bias(1); // [B, 1] each
    let x_hat = ((flat - mean) / (var + epsilon).sqrt()).reshape([b, c, d, h, w]);
    x_hat * gamma.reshape([1, c, 1, 1, 1]) + beta.reshape([1, c, 1, 1, 1])
}

/// Configuration of [`LayerNorm3d`].
#[derive(Config, Debug)]
pub struct LayerNorm3dConfig {
    /// Number of channels `C` (the length of `γ` and `β`).
    pub num_channels: usize,
    /// ε added to the variance; TF 1.x `layer_norm`'s `variance_epsilon` (1e-12 for float32).
    #[config(default = 1e-12)]
    pub epsilon: f64,
}

/// [`layer_norm3d`] with learnable `γ` (initialised to 1) and `β` (initialised to 0).
#[derive(Module, Debug)]
pub struct LayerNorm3d {
    /// Per-channel scale `[C]`.
    pub gamma: Param<Tensor<1>>,
    /// Per-channel shift `[C]`.
    pub beta: Param<Tensor<1>>,
    /// ε added to the variance.
    #[module(skip)]
    pub epsilon: f64,
}

impl LayerNorm3dConfig {
    /// Builds the layer on `device`.
    pub fn init(&self, device: &Device) -> LayerNorm3d {
        LayerNorm3d {
            gamma: Initializer::Ones.init([self.num_channels], device),
            beta: Initializer::Zeros.init([self.num_channels], device),
            epsilon: self.epsilon,
        }
    }
}

impl LayerNorm3d {
    /// # Shapes
    /// - `x`: `[B, C, D, H, W]` → `[B, C, D, H, W]`
    ///
    /// # Panics
    /// If `x` does not have the layer's `C` channels.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        layer_norm3d(x, self.gamma.val(), self.beta.val(), self.epsilon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        Grid, ad, assert_close, finite_differences, random_vec, tensor_from, values,
    };

    /// Brute-force AdaIN in f64.
    fn adain_ref(x: &Grid, gamma: &[f64], beta: &[f64], eps: f64) -> Grid {
        let [b, c, d, h, w] = x.dims;
        let n = d * h * w;
        let mut y = x.clone();
        for bi in 0..b {
            for ci in 0..c {
                let base = (bi * c + ci) * n;
                let plane = &x.data[base..base + n];
                let mean = plane.iter().sum::<f64>() / n as f64;
                let var = plane.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
                let (g, b) = (gamma[bi * c + ci], beta[bi * c + ci]);
                for (dst, &v) in y.data[base..base + n].iter_mut().zip(plane) {
                    *dst = g * (v - mean) / (var + eps).sqrt() + b;
                }
            }
        }
        y
    }

    /// Brute-force layer norm over C·D·H·W with per-channel affine, in f64.
    fn layer_norm_ref(x: &Grid, gamma: &[f64], beta: &[f64], eps: f64) -> Grid {
        let [b, c, d, h, w] = x.dims;
        let n = c * d * h * w;
        let mut y = x.clone();
        for bi in 0..b {
            let s = &x.data[bi * n..(bi + 1) * n];
            let mean = s.iter().sum::<f64>() / n as f64;
            let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            for (i, (dst, &v)) in y.data[bi * n..(bi + 1) * n].iter_mut().zip(s).enumerate() {
                let ci = i / (d * h * w);
                *dst = gamma[ci] * (v - mean) / (var + eps).sqrt() + beta[ci];
            }
        }
        y
    }

    #[test]
    fn adain_matches_brute_force_values_and_finite_difference_gradients() {
        let dims = [2, 3, 3, 4, 5];
        let (b, c) = (2, 3);
        let x = Grid::random(dims, 1);
        let gamma: Vec<f64> = random_vec(b * c, 2).iter().map(|v| 1.0 + v).collect();
        let beta = random_vec(b * c, 3);
        let g = Grid::random(dims, 4);
        let eps = 1e-5;

        let device = ad();
        let xt = x.tensor(&device).require_grad();
        let gt = tensor_from(&gamma, [b, c], &device).require_grad();
        let bt = tensor_from(&beta, [b, c], &device).require_grad();
        let y = adain(xt.clone(), gt.clone(), bt.clone(), eps);
        assert_close(
            &values(&y),
            &adain_ref(&x, &gamma, &beta, eps).data,
            1e-5,
            "adain",
        );

        let grads = (y * g.tensor(&device)).sum().backward();
        let loss = |x: &Grid, gm: &[f64], bt: &[f64]| adain_ref(x, gm, bt, eps).dot(&g);
        let fd_x = finite_differences(&x.data, 1e-5, |v| {
            loss(
                &Grid {
                    dims,
                    data: v.to_vec(),
                },
                &gamma,
                &beta,
            )
        });
        let fd_g = finite_differences(&gamma, 1e-5, |v| loss(&x, v, &beta));
        let fd_b = finite_differences(&beta, 1e-5, |v| loss(&x, &gamma, v));
        assert_close(&values(&xt.grad(&grads).unwrap()), &fd_x, 1e-4, "adain dx");
        assert_close(
            &values(&gt.grad(&grads).unwrap()),
            &fd_g,
            1e-4,
            "adain dgamma",
        );
        assert_close(
            &values(&bt.grad(&grads).unwrap()),
            &fd_b,
            1e-4,
            "adain dbeta",
        );
    }

    #[test]
    fn layer_norm3d_matches_brute_force_values_and_finite_difference_gradients() {
        let dims = [3, 2, 3, 5, 3];
        let x = Grid::random(dims, 11);
        let g = Grid::random(dims, 12);
        // Not the initial γ = 1, β = 0, so that the per-channel broadcast is exercised.
        let gamma: Vec<f64> = random_vec(2, 13).iter().map(|v| 1.0 + v).collect();
        let beta = random_vec(2, 14);
        let eps = 1e-12;

        let device = ad();
        let mut layer = LayerNorm3dConfig::new(2).init(&device);
        assert_eq!(layer.epsilon, eps);
        layer.gamma = Param::from_tensor(tensor_from(&gamma, [2], &device));
        layer.beta = Param::from_tensor(tensor_from(&beta, [2], &device));
        let xt = x.tensor(&device).require_grad();
        let y = layer.forward(xt.clone());
        let want = layer_norm_ref(&x, &gamma, &beta, eps);
        assert_close(&values(&y), &want.data, 1e-5, "layer norm");
        // Each sample is normalised over everything: zero mean, unit variance before affine.
        let plain = layer_norm_ref(&x, &[1.0, 1.0], &[0.0, 0.0], eps);
        let s0 = &plain.data[..90];
        assert!(s0.iter().sum::<f64>().abs() < 1e-9);
        assert!((s0.iter().map(|v| v * v).sum::<f64>() / 90.0 - 1.0).abs() < 1e-9);

        let grads = (y * g.tensor(&device)).sum().backward();
        let loss = |x: &Grid, gm: &[f64], bt: &[f64]| layer_norm_ref(x, gm, bt, eps).dot(&g);
        let fd_x = finite_differences(&x.data, 1e-5, |v| {
            loss(
                &Grid {
                    dims,
                    data: v.to_vec(),
                },
                &gamma,
                &beta,
            )
        });
        let fd_g = finite_differences(&gamma, 1e-5, |v| loss(&x, v, &beta));
        let fd_b = finite_differences(&beta, 1e-5, |v| loss(&x, &gamma, v));
        let gx = values(&xt.grad(&grads).unwrap());
        assert_close(&gx, &fd_x, 1e-4, "layer norm dx");
        let gg = values(&layer.gamma.grad(&grads).unwrap());
        assert_close(&gg, &fd_g, 1e-4, "layer norm dgamma");
        let gb = values(&layer.beta.grad(&grads).unwrap());
        assert_close(&gb, &fd_b, 1e-4, "layer norm dbeta");
    }
}
