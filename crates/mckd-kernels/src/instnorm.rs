//! Instance norm (affine) → leaky ReLU as one op with its own backward, for the UNet blocks.
//!
//! burn composes `InstanceNorm` from group-norm tensor ops (mean, subtract, square, mean,
//! add, sqrt, divide, multiply, add — each a pass and a buffer, each recorded by autodiff)
//! and `LeakyRelu` from a comparison and a masked select whose backward (`mask_where`) was
//! one of the largest costs left in the UNet step. Here: forward two passes over the input
//! per (batch, channel) plane (statistics; normalise + activate), backward two passes
//! (gradient sums; input gradient), on `flex` via `#[backend_extension(Flex, Autodiff)]`.
//!
//! Semantics (burn's layers, to rounding): per plane `mean`, biased `var`;
//! `y = (x − mean)/√(var + ε)·γ_c + β_c`; output `y` if `y ≥ 0` else `slope·y`. Gradient:
//! `g_y = g·(1 if y ≥ 0 else slope)`, `dx = γ/σ·(g_y − mean(g_y) − x̂·mean(g_y·x̂))` per
//! plane, `dγ_c = Σ_b Σ g_y·x̂`, `dβ_c = Σ_b Σ g_y` (summed over the batch in order).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::{InstanceNorm, LeakyRelu};
use burn::prelude::*;
use rayon::prelude::*;

use crate::flex_buf::{
    assume_init_f32, contiguous, flex_tensor, register_norm_grads, slice, uninit_f32,
};

use crate::fused::{plane_sq_dev, plane_sum};

/// Fused instance norm → leaky ReLU, as a backend op.
#[backend_extension(Flex, Autodiff)]
pub trait InstanceNormActOps: Backend {
    /// `x`: `[batch, channels, ...]`; `gamma`, `beta`: `[channels]`. Output: `x`'s shape.
    fn instance_norm_leaky_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        slope: f64,
    ) -> FloatTensor<Self>;
}

/// `act(norm(x))` for an affine `InstanceNorm` and a `LeakyRelu`: fused on the `flex`
/// device in `f32`, burn's two modules otherwise (or for a non-affine norm).
///
/// # Shapes
/// - `x`: `[batch, channels, ...]` (rank ≥ 3), output the same
pub fn instance_norm_leaky_relu<const D: usize>(
    norm: &InstanceNorm,
    act: &LeakyRelu,
    x: Tensor<D>,
) -> Tensor<D> {
    let (Some(gamma), Some(beta)) = (&norm.gamma, &norm.beta) else {
        return act.forward(norm.forward(x));
    };
    let (gamma, beta) = (gamma.val(), beta.val());
    let device = x.device();
    let fused = D >= 3
        && device.clone().without_autodiff() == Device::flex()
        && gamma.device() == device
        && beta.device() == device
        && [x.dtype(), gamma.dtype(), beta.dtype()]
            .iter()
            .all(|&d| d == DType::F32)
        && x.shape().num_elements() > 0
        && x.dims()[1] == norm.num_channels
        && gamma.dims() == [norm.num_channels];
    if !fused {
        return act.forward(norm.forward(x));
    }
    Tensor::from_dispatch(<Dispatch as InstanceNormActOps>::instance_norm_leaky_relu(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        norm.epsilon,
        act.negative_slope,
    ))
}

#[derive(Debug, Clone, Copy)]
struct Planes {
    channels: usize,
    size: usize,
}

impl Planes {
    fn of(shape: &[usize]) -> Self {
        assert!(
            shape.len() >= 3,
            "instance norm needs [batch, channels, spatial...]"
        );
        Self {
            channels: shape[1],
            size: shape[2..].iter().product(),
        }
    }
}

/// Per-plane mean and 1/σ (two passes, f32 lanes summed in f64).
fn plane_stats(x: &[f32], p: Planes, epsilon: f64) -> Vec<(f32, f32)> {
    x.par_chunks(p.size)
        .map(|plane| {
            let n = plane.len() as f64;
            let mean = (plane_sum(plane) / n) as f32;
            let var = (plane_sq_dev(plane, mean) / n) as f32;
            (mean, 1.0 / (var + epsilon as f32).sqrt())
        })
        .collect()
}

/// `y = x·a + b` with `a = γ/σ`, `b = β − mean·a`: the same bits in forward and backward.
#[inline(always)]
fn affine(stats: (f32, f32), gamma: f32, beta: f32) -> (f32, f32) {
    let a = gamma * stats.1;
    (a, beta - stats.0 * a)
}

crate::simd::multiversion! {
    /// Normalise and activate one plane: `y = x·a + b`, output `y` or `slope·y` below 0.
    fn apply_plane(o: &mut [core::mem::MaybeUninit<f32>], xs: &[f32], a: f32, b: f32, slope: f32) {
        for (o, &v) in o.iter_mut().zip(xs) {
            let y = v * a + b;
            o.write(if y >= 0.0 { y } else { slope * y });
        }
    }
}

crate::simd::multiversion! {
    /// One plane's `Σ g_y` and `Σ g_y·x̂` in 8 lanes (element `k` into lane `k mod 8`).
    fn grad_sums_plane(
        xs: &[f32],
        gs: &[f32],
        a: f32,
        b: f32,
        mean: f32,
        inv_std: f32,
        slope: f32,
    ) -> ([f32; 8], [f32; 8]) {
        let (mut sg, mut sgx) = ([0.0f32; 8], [0.0f32; 8]);
        let term = |v: f32, g: f32| {
            let gy = if v * a + b >= 0.0 { g } else { slope * g };
            (gy, gy * ((v - mean) * inv_std))
        };
        let (xc, gc) = (xs.chunks_exact(8), gs.chunks_exact(8));
        let (xr, gr) = (xc.remainder(), gc.remainder());
        for (x8, g8) in xc.zip(gc) {
            for l in 0..8 {
                let (t1, t2) = term(x8[l], g8[l]);
                sg[l] += t1;
                sgx[l] += t2;
            }
        }
        for (l, (&v, &g)) in xr.iter().zip(gr).enumerate() {
            let (t1, t2) = term(v, g);
            sg[l] += t1;
            sgx[l] += t2;
        }
        (sg, sgx)
    }
}

crate::simd::multiversion! {
    /// One plane's input gradient `k·(g_y − m1 − x̂·m2)`; `c` = [a, b, mean, 1/σ, slope, k,
    /// m1, m2].
    fn dx_plane(d: &mut [core::mem::MaybeUninit<f32>], xs: &[f32], gs: &[f32], c: [f32; 8]) {
        let [a, b, mean, inv_std, slope, k, m1, m2] = c;
        for ((d, &v), &g) in d.iter_mut().zip(xs).zip(gs) {
            let gy = if v * a + b >= 0.0 { g } else { slope * g };
            d.write(k * (gy - m1 - (v - mean) * inv_std * m2));
        }
    }
}

fn forward_kernel(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    slope: f32,
    p: Planes,
) -> (Vec<f32>, Vec<(f32, f32)>) {
    let stats = plane_stats(x, p, epsilon);
    let mut out = uninit_f32(x.len());
    out.par_chunks_mut(p.size)
        .zip(x.par_chunks(p.size))
        .enumerate()
        .for_each(|(i, (o, xs))| {
            let c = i % p.channels;
            let (a, b) = affine(stats[i], gamma[c], beta[c]);
            apply_plane(o, xs, a, b, slope);
        });
    // SAFETY: the planes partition `out` and each wrote all of its elements.
    (unsafe { assume_init_f32(out) }, stats)
}

fn backward_kernel(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[(f32, f32)],
    slope: f32,
    grad: &[f32],
    p: Planes,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    // Pass 1 per plane: Σ g_y and Σ g_y·x̂.
    let sums: Vec<(f64, f64)> = x
        .par_chunks(p.size)
        .zip(grad.par_chunks(p.size))
        .enumerate()
        .map(|(i, (xs, gs))| {
            let c = i % p.channels;
            let (a, b) = affine(stats[i], gamma[c], beta[c]);
            let (mean, inv_std) = stats[i];
            let (sg, sgx) = grad_sums_plane(xs, gs, a, b, mean, inv_std, slope);
            let f = |s: [f32; 8]| s.iter().map(|&v| f64::from(v)).sum::<f64>();
            (f(sg), f(sgx))
        })
        .collect();
    let n = p.size as f64;
    let mut dx = uninit_f32(x.len());
    dx.par_chunks_mut(p.size)
        .zip(x.par_chunks(p.size).zip(grad.par_chunks(p.size)))
        .enumerate()
        .for_each(|(i, (d, (xs, gs)))| {
            let c = i % p.channels;
            let (a, b) = affine(stats[i], gamma[c], beta[c]);
            let (mean, inv_std) = stats[i];
            let k = gamma[c] * inv_std;
            let (m1, m2) = ((sums[i].0 / n) as f32, (sums[i].1 / n) as f32);
            dx_plane(d, xs, gs, [a, b, mean, inv_std, slope, k, m1, m2]);
        });
    // SAFETY: the planes partition `dx` and each wrote all of its elements.
    let dx = unsafe { assume_init_f32(dx) };
    let mut dgamma = vec![0.0f64; p.channels];
    let mut dbeta = vec![0.0f64; p.channels];
    for (i, &(sg, sgx)) in sums.iter().enumerate() {
        dgamma[i % p.channels] += sgx;
        dbeta[i % p.channels] += sg;
    }
    let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (dx, to32(dgamma), to32(dbeta))
}

/// The forward on contiguous tensors, with the per-plane statistics for the backward.
fn forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
    slope: f64,
) -> (FlexTensor, Vec<(f32, f32)>) {
    let shape = x.shape().to_vec();
    let p = Planes::of(&shape);
    let (out, stats) = forward_kernel(
        slice(x),
        slice(gamma),
        slice(beta),
        epsilon,
        slope as f32,
        p,
    );
    (flex_tensor(out, shape), stats)
}

impl InstanceNormActOps for Flex {
    fn instance_norm_leaky_relu(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        slope: f64,
    ) -> FlexTensor {
        let (x, gamma, beta) = (contiguous(&x), contiguous(&gamma), contiguous(&beta));
        forward(&x, &gamma, &beta, epsilon, slope).0
    }
}

#[derive(Debug)]
struct InstanceNormActBackward;

impl Backward<Flex, 3> for InstanceNormActBackward {
    /// Input, γ, β, per-plane (mean, 1/σ), slope.
    type State = (FlexTensor, FlexTensor, FlexTensor, Vec<(f32, f32)>, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let parents = ops.parents.map(|n| n.map(|n| n.id));
        let grad = contiguous(&grads.consume::<Flex>(&ops.node));
        let (x, gamma, beta, stats, slope) = ops.state;
        let shape = x.shape().to_vec();
        let p = Planes::of(&shape);
        let (dx, dgamma, dbeta) = backward_kernel(
            slice(&x),
            slice(&gamma),
            slice(&beta),
            &stats,
            slope as f32,
            slice(&grad),
            p,
        );
        register_norm_grads(grads, parents, (dx, dgamma, dbeta), shape);
    }
}

impl<C: CheckpointStrategy> InstanceNormActOps for Autodiff<Flex, C> {
    fn instance_norm_leaky_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        slope: f64,
    ) -> FloatTensor<Self> {
        let prepared = InstanceNormActBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (xp, gp, bp) = (
            contiguous(x.primitive()),
            contiguous(gamma.primitive()),
            contiguous(beta.primitive()),
        );
        let (out, stats) = forward(&xp, &gp, &bp, epsilon, slope);
        match prepared {
            OpsKind::Tracked(prep) => prep.finish((xp, gp, bp, stats, slope), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, max_rel_error, random};
    use burn::nn::{InstanceNormConfig, LeakyReluConfig};
    use burn::tensor::Distribution;

    /// Forward and gradients (input, γ, β) against burn's `InstanceNorm` + `LeakyRelu`.
    fn check<const D: usize>(shape: [usize; D], slope: f64, seed: u64) -> f32 {
        let device = Device::flex().autodiff();
        device.seed(seed);
        let c = shape[1];
        let mut norm = InstanceNormConfig::new(c).init(&device);
        // Non-trivial affine parameters (negative γ included).
        norm.gamma = Some(burn::module::Param::from_tensor(Tensor::random(
            [c],
            Distribution::Uniform(-1.5, 1.5),
            &device,
        )));
        norm.beta = Some(burn::module::Param::from_tensor(Tensor::random(
            [c],
            Distribution::Uniform(-0.5, 0.5),
            &device,
        )));
        let act = LeakyReluConfig::new().with_negative_slope(slope).init();
        let x = random(shape, seed + 1, &device)
            .mul_scalar(2.0)
            .add_scalar(0.3);
        let up = random(shape, seed + 2, &device);
        let run = |ours: bool| {
            let x = x.clone().require_grad();
            let y = if ours {
                instance_norm_leaky_relu(&norm, &act, x.clone())
            } else {
                act.forward(norm.forward(x.clone()))
            };
            let g = (y.clone() * up.clone()).sum().backward();
            let gamma = norm.gamma.as_ref().unwrap().val();
            let beta = norm.beta.as_ref().unwrap().val();
            (
                y,
                x.grad(&g).unwrap(),
                gamma.grad(&g).unwrap(),
                beta.grad(&g).unwrap(),
            )
        };
        let (y, dx, dg, db) = run(true);
        let (ry, rdx, rdg, rdb) = run(false);
        let what = format!("{shape:?} slope {slope}");
        let tol = 2e-5;
        assert_close(&y, &ry, tol, &format!("{what} forward"));
        assert_close(&dx, &rdx, tol, &format!("{what} dx"));
        assert_close(&dg, &rdg, tol, &format!("{what} dgamma"));
        assert_close(&db, &rdb, tol, &format!("{what} dbeta"));
        max_rel_error(&dx, &rdx)
    }

    #[test]
    fn matches_burn_on_unet_and_odd_shapes() {
        crate::testing::for_each_level(|_| matches_burn_on_unet_and_odd_shapes_at_level());
    }

    fn matches_burn_on_unet_and_odd_shapes_at_level() {
        check([2, 8, 8, 8, 8], 0.01, 1);
        check([2, 3, 5, 7, 3], 0.01, 2);
        check([1, 1, 2, 1, 3], 0.2, 3);
        check([3, 5, 4, 6], 0.0, 4);
        check([2, 4, 9], 0.3, 5);
    }

    #[test]
    fn the_comparison_can_fail() {
        // A different slope must be detected.
        let device = Device::flex();
        let norm = InstanceNormConfig::new(3).init(&device);
        let x = random([2, 3, 4, 4, 4], 9, &device);
        let a = instance_norm_leaky_relu(&norm, &LeakyReluConfig::new().init(), x.clone());
        let b = LeakyReluConfig::new()
            .with_negative_slope(0.1)
            .init()
            .forward(norm.forward(x));
        assert!(max_rel_error(&a, &b) > 1e-3);
    }
}
