//! Training-mode batch norm → ReLU (→ 2×2 max-pool, stride 2) as one op with its own backward.
//!
//! # Why
//! In the AV-MNIST encoders these three layers cost about a third of a training step on burn's
//! `flex` backend (bench/README.md): burn composes training batch norm from ~10 generic tensor
//! ops (each a pass over memory and a fresh zeroed buffer), ReLU is two more passes, and `flex`
//! runs 2-D max-pooling through its 3-D pooling with an index tensor. Here the forward is two
//! passes over the input (per-channel statistics; normalise, activate and pool into the output)
//! and the backward two more (per-channel gradient sums; the input gradient). Instead of an
//! index tensor the forward keeps one byte per pooled output (the window position of the
//! first maximum, or "no gradient" where ReLU cuts it) for the backward.
//!
//! # How
//! [`FusedNormOps`] is a burn backend extension (`#[backend_extension(Flex, Autodiff)]`):
//! the `Flex` implementation runs the kernels below on the tensors' `f32` storage (rayon over
//! channels or planes); the `Autodiff<Flex>` implementation registers a hand-written backward
//! step (`BnReluPoolBackward`) for the input, `gamma` and `beta`. The public functions check
//! that the tensors live on the `flex` device in `f32`, and otherwise run burn's own layers
//! (`batch_norm_train` → `relu` → `max_pool2d`), so the result never depends on the device
//! having the kernel.
//!
//! # Semantics (identical to burn's layers, to rounding)
//! - statistics over batch and space per channel; variance biased (as burn's
//!   `batch_norm_train`, which is what the running variance is fed with);
//! - `y = (x − mean) / √(var + ε) · γ + β`, output `max(y, 0)`, then the maximum of each 2×2
//!   window at stride 2 (floor mode: an odd last row or column is dropped, as `MaxPool2d`);
//! - gradient: the output gradient goes to the first maximum of its window (row-major scan)
//!   when that maximum is positive (ReLU's derivative is 0 at 0), then through batch norm:
//!   `dx = γ/σ · (g − mean(g) − x̂ · mean(g·x̂))`, `dγ = Σ g·x̂`, `dβ = Σ g`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::nn::pool::MaxPool2dConfig;
use burn::prelude::*;
use burn::tensor::activation::relu;
use rayon::prelude::*;
use std::sync::Arc;

use crate::flex_buf::{
    assume_init_f32, contiguous, flex_tensor, register_norm_grads, slice, uninit_f32,
};
use crate::simd::SimdLevel;
use crate::window;

/// Fused batch norm (training statistics) → ReLU → optional 2×2 max-pool, as a backend op.
#[backend_extension(Flex, Autodiff)]
pub trait FusedNormOps: Backend {
    /// `x`: `[batch, channels, ...]` (with `pool`: `[batch, channels, H, W]`, H, W ≥ 2);
    /// `gamma`, `beta`: `[channels]`. Returns the output (`[batch, channels, ⌊H/2⌋, ⌊W/2⌋]`
    /// with `pool`, else `x`'s shape), and the batch mean and biased variance `[channels]`
    /// (constants for autodiff).
    ///
    /// With `counts`, row `r` of the batch stands for `counts[r]` identical samples (see
    /// [`batch_norm_relu_counted`]); `None` is a count of 1 for every row.
    fn bn_relu_pool_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        pool: bool,
        counts: Option<Arc<[f32]>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Inference-mode batch norm (the given running `mean` and `var`, `[channels]`, treated as
    /// constants) → ReLU → optional 2×2 max-pool; same shapes as
    /// [`bn_relu_pool_train`](Self::bn_relu_pool_train). Differentiable in `x`, `gamma`, `beta`.
    fn bn_relu_pool_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        pool: bool,
    ) -> FloatTensor<Self>;
}

/// Output of [`batch_norm_relu_pool2d`] and [`batch_norm_relu`].
#[derive(Debug, Clone)]
pub struct BnReluOutput<const D: usize> {
    /// The activated (and pooled) output.
    pub output: Tensor<D>,
    /// Batch mean per channel (detached), `[channels]`.
    pub mean: Tensor<1>,
    /// Biased batch variance per channel (detached), `[channels]`.
    pub variance: Tensor<1>,
}

/// Training-mode batch norm → ReLU → `MaxPool2d(2)` (stride 2, floor mode), fused on `flex`.
///
/// # Shapes
/// - `x`: `[batch, channels, H, W]`; `gamma`, `beta`: `[channels]`
/// - output: `[batch, channels, ⌊H/2⌋, ⌊W/2⌋]`
///
/// # Panics
/// If `gamma` or `beta` is not `[channels]` (an internal contract of the calling layer).
pub fn batch_norm_relu_pool2d(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> BnReluOutput<4> {
    check_params(&x.dims(), &gamma, &beta);
    let [_, _, h, w] = x.dims();
    if h < 2 || w < 2 || !fused_available(&x, &gamma, &beta) {
        return reference(x, gamma, beta, epsilon, true);
    }
    fused(x, gamma, beta, epsilon, true, None)
}

/// Training-mode batch norm → ReLU, fused on `flex` (any rank ≥ 2; statistics per channel =
/// axis 1, over the batch and every further axis).
///
/// # Panics
/// If `D < 2` or `gamma`/`beta` is not `[channels]` (internal contracts).
pub fn batch_norm_relu<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> BnReluOutput<D> {
    assert!(D >= 2, "batch norm needs [batch, channels, ...]");
    check_params(&x.dims(), &gamma, &beta);
    if !fused_available(&x, &gamma, &beta) {
        return reference(x, gamma, beta, epsilon, false);
    }
    fused(x, gamma, beta, epsilon, false, None)
}

/// Training-mode batch norm → ReLU (→ `MaxPool2d(2)` with `pool`) of a **counted** batch: row
/// `r` of `x` stands for `counts[r]` identical samples.
///
/// The result is that of expanding the batch (row `r` repeated `counts[r]` times), running
/// [`batch_norm_relu_pool2d`] / [`batch_norm_relu`] and keeping one row per group: the same
/// batch statistics, each row's output, and as each row's gradient the sum of its copies'
/// gradients — without the copies' work. Used where a batch holds many identical samples (the
/// zeroed inputs of a missing modality).
///
/// # Shapes
/// - `x`: `[rows, channels, ...]` (with `pool`: `[rows, channels, H, W]`); `counts`: `rows`
/// - output: `x`'s shape (with `pool`: `[rows, channels, ⌊H/2⌋, ⌊W/2⌋]`)
///
/// # Panics
/// If `counts` does not hold one count ≥ 1 per row, or a parameter is not `[channels]`
/// (internal contracts).
pub fn batch_norm_relu_counted<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    pool: bool,
    counts: &[usize],
) -> BnReluOutput<D> {
    assert!(D >= 2, "batch norm needs [batch, channels, ...]");
    check_params(&x.dims(), &gamma, &beta);
    assert!(
        counts.len() == x.dims()[0] && counts.iter().all(|&c| c >= 1),
        "batch norm: one count ≥ 1 per row"
    );
    let small = pool && (D != 4 || x.dims()[2] < 2 || x.dims()[3] < 2);
    if small || !fused_available(&x, &gamma, &beta) {
        // Expand, run the plain op, keep each group's first row.
        let (expand, first) = expand_counts(counts);
        let r = reference::<D, D>(crate::select_rows(x, &expand), gamma, beta, epsilon, pool);
        return BnReluOutput {
            output: crate::select_rows(r.output, &first),
            ..r
        };
    }
    let counts: Arc<[f32]> = counts.iter().map(|&c| c as f32).collect();
    fused(x, gamma, beta, epsilon, pool, Some(counts))
}

/// For counts per row: the rows of the expanded batch (row `r` repeated `counts[r]` times) and
/// the position of each row's first copy in it.
pub(crate) fn expand_counts(counts: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut expand = Vec::with_capacity(counts.iter().sum());
    let mut first = Vec::with_capacity(counts.len());
    for (r, &c) in counts.iter().enumerate() {
        first.push(expand.len());
        expand.extend(std::iter::repeat_n(r, c));
    }
    (expand, first)
}

/// Inference-mode batch norm with the given (running) statistics → ReLU → `MaxPool2d(2)`
/// (stride 2, floor mode), fused on `flex`; `mean` and `var` are constants (no gradient).
///
/// # Shapes
/// - `x`: `[batch, channels, H, W]`; `gamma`, `beta`, `mean`, `var`: `[channels]`
/// - output: `[batch, channels, ⌊H/2⌋, ⌊W/2⌋]`
///
/// # Panics
/// If a parameter is not `[channels]` (an internal contract of the calling layer).
pub fn batch_norm_relu_pool2d_eval(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    mean: Tensor<1>,
    var: Tensor<1>,
    epsilon: f64,
) -> Tensor<4> {
    check_params(&x.dims(), &gamma, &beta);
    check_params(&x.dims(), &mean, &var);
    let [_, _, h, w] = x.dims();
    if h < 2 || w < 2 || !eval_available(&x, [&gamma, &beta, &mean, &var]) {
        return reference_eval(x, gamma, beta, mean, var, epsilon, true);
    }
    fused_eval(x, gamma, beta, mean, var, epsilon, true)
}

/// Inference-mode batch norm with the given (running) statistics → ReLU, fused on `flex` (any
/// rank ≥ 2; channel axis 1); `mean` and `var` are constants.
///
/// # Panics
/// If `D < 2` or a parameter is not `[channels]` (internal contracts).
pub fn batch_norm_relu_eval<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    mean: Tensor<1>,
    var: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    assert!(D >= 2, "batch norm needs [batch, channels, ...]");
    check_params(&x.dims(), &gamma, &beta);
    check_params(&x.dims(), &mean, &var);
    if !eval_available(&x, [&gamma, &beta, &mean, &var]) {
        return reference_eval(x, gamma, beta, mean, var, epsilon, false);
    }
    fused_eval(x, gamma, beta, mean, var, epsilon, false)
}

fn eval_available<const D: usize>(x: &Tensor<D>, params: [&Tensor<1>; 4]) -> bool {
    fused_available(x, params[0], params[1])
        && params[2..]
            .iter()
            .all(|p| p.device() == x.device() && p.dtype() == DType::F32)
}

fn fused_eval<const D: usize, const E: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    mean: Tensor<1>,
    var: Tensor<1>,
    epsilon: f64,
    pool: bool,
) -> Tensor<E> {
    Tensor::from_dispatch(<Dispatch as FusedNormOps>::bn_relu_pool_eval(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        mean.detach().into_dispatch(),
        var.detach().into_dispatch(),
        epsilon,
        pool,
    ))
}

/// burn's own layers in inference mode (`batch_norm` with the given statistics → `relu` →
/// `max_pool2d`): the reference of the eval op's tests and its fallback.
pub fn reference_eval<const D: usize, const E: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    mean: Tensor<1>,
    var: Tensor<1>,
    epsilon: f64,
    pool: bool,
) -> Tensor<E> {
    let y = relu(burn::tensor::module::batch_norm(
        x, gamma, beta, mean, var, epsilon,
    ));
    if pool {
        let dims = to4(y.dims());
        let y: Tensor<4> = y.reshape(dims);
        let p = MaxPool2dConfig::new([2, 2]).init().forward(y);
        let dims = p.dims();
        p.reshape(rank::<4, E>(dims))
    } else {
        let dims = y.dims();
        y.reshape(rank::<D, E>(dims))
    }
}

fn check_params(dims: &[usize], gamma: &Tensor<1>, beta: &Tensor<1>) {
    assert_eq!(
        gamma.dims(),
        [dims[1]],
        "batch norm gamma must be [channels]"
    );
    assert_eq!(beta.dims(), [dims[1]], "batch norm beta must be [channels]");
}

/// The fused kernel exists for `f32` tensors on the `flex` device (with or without autodiff),
/// and needs a non-empty input.
fn fused_available<const D: usize>(x: &Tensor<D>, gamma: &Tensor<1>, beta: &Tensor<1>) -> bool {
    let device = x.device();
    device.clone().without_autodiff() == Device::flex()
        && gamma.device() == device
        && beta.device() == device
        && [x.dtype(), gamma.dtype(), beta.dtype()]
            .iter()
            .all(|&d| d == DType::F32)
        && x.shape().num_elements() > 0
}

fn fused<const D: usize, const E: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    pool: bool,
    counts: Option<Arc<[f32]>>,
) -> BnReluOutput<E> {
    let (output, mean, variance) = <Dispatch as FusedNormOps>::bn_relu_pool_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        pool,
        counts,
    );
    BnReluOutput {
        output: Tensor::from_dispatch(output),
        mean: Tensor::from_dispatch(mean),
        variance: Tensor::from_dispatch(variance),
    }
}

/// burn's own layers, the reference the fused op is tested against (and the fallback).
/// `E` is the output rank (= `D`; the pooled case is only reached with `D = 4`).
pub fn reference<const D: usize, const E: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    pool: bool,
) -> BnReluOutput<E> {
    let r = burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
    let y = relu(r.output);
    let output: Tensor<E> = if pool {
        let dims = to4(y.dims());
        let y: Tensor<4> = y.reshape(dims);
        let p = MaxPool2dConfig::new([2, 2]).init().forward(y);
        let dims = p.dims();
        p.reshape(rank::<4, E>(dims))
    } else {
        let dims = y.dims();
        y.reshape(rank::<D, E>(dims))
    };
    BnReluOutput {
        output,
        mean: r.mean,
        variance: r.variance,
    }
}

/// The same dimensions at a rank known to be equal (`D = E`).
fn rank<const D: usize, const E: usize>(dims: [usize; D]) -> [usize; E] {
    assert_eq!(D, E, "output rank");
    core::array::from_fn(|i| dims[i])
}

fn to4<const D: usize>(dims: [usize; D]) -> [usize; 4] {
    assert_eq!(D, 4, "2-D pooling needs a [batch, channels, H, W] input");
    [dims[0], dims[1], dims[2], dims[3]]
}

// ---------------------------------------------------------------------------------------------
// Flex kernels.

/// Layout of the op's input: `batch` × `channels` planes of `h × w` values (without pooling,
/// `h` is the product of the spatial axes and `w` = 1).
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    pool: bool,
}

impl Geometry {
    fn of(shape: &[usize], pool: bool) -> Self {
        assert!(shape.len() >= 2, "batch norm needs [batch, channels, ...]");
        let spatial: usize = shape[2..].iter().product();
        if pool {
            assert_eq!(shape.len(), 4, "2-D pooling needs [batch, channels, H, W]");
            assert!(shape[2] >= 2 && shape[3] >= 2, "2×2 pooling needs H, W ≥ 2");
            Self {
                batch: shape[0],
                channels: shape[1],
                h: shape[2],
                w: shape[3],
                pool,
            }
        } else {
            Self {
                batch: shape[0],
                channels: shape[1],
                h: spatial,
                w: 1,
                pool,
            }
        }
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    fn out_dims(&self) -> (usize, usize) {
        if self.pool {
            (self.h / 2, self.w / 2)
        } else {
            (self.h, self.w)
        }
    }

    fn out_plane(&self) -> usize {
        let (ho, wo) = self.out_dims();
        ho * wo
    }

    /// Values per channel (the statistics' count), rows weighted by `counts`.
    fn count(&self, counts: Option<&[f32]>) -> f64 {
        let rows = counts.map_or(self.batch as f64, |w| w.iter().map(|&v| f64::from(v)).sum());
        rows * self.plane() as f64
    }

    /// The planes of channel `c`.
    fn channel_planes<'a>(&self, data: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> {
        let (s, ch) = (self.plane(), self.channels);
        (0..self.batch).map(move |b| &data[(b * ch + c) * s..][..s])
    }
}

/// Per-channel affine map `y = x·a + b` of batch norm, computed once per channel so the
/// forward and the backward see bit-identical `y` (and therefore the same arg-max).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Affine {
    pub(crate) mean: f32,
    pub(crate) inv_std: f32,
    pub(crate) a: f32,
    pub(crate) b: f32,
}

impl Affine {
    fn new(mean: f32, var: f32, gamma: f32, beta: f32, epsilon: f64) -> Self {
        let inv_std = 1.0 / (var + epsilon as f32).sqrt();
        let a = gamma * inv_std;
        Self {
            mean,
            inv_std,
            a,
            b: beta - mean * a,
        }
    }

    #[inline(always)]
    pub(crate) fn y(&self, x: f32) -> f32 {
        x * self.a + self.b
    }

    #[inline(always)]
    pub(crate) fn xhat(&self, x: f32) -> f32 {
        (x - self.mean) * self.inv_std
    }
}

/// Index (0..4, row-major) and value of the first maximum of a 2×2 window (branch-free:
/// the first maximum of each row, then of the two; ties keep the earlier index).
#[inline(always)]
fn argmax4(v: [f32; 4]) -> (usize, f32) {
    let (i01, v01) = if v[1] > v[0] { (1, v[1]) } else { (0, v[0]) };
    let (i23, v23) = if v[3] > v[2] { (3, v[3]) } else { (2, v[2]) };
    if v23 > v01 { (i23, v23) } else { (i01, v01) }
}

/// Sum with 16 independent f32 accumulators (vectorisable); the caller adds planes in f64.
fn sum16(values: impl ExactSizeIterator<Item = f32>) -> f64 {
    let mut acc = [0.0f32; 16];
    for (i, v) in values.enumerate() {
        acc[i % 16] += v;
    }
    acc.iter().map(|&a| f64::from(a)).sum()
}

crate::simd::multiversion! {
    /// Sum of a plane: 16 f32 lanes (element `k` into lane `k mod 16` for the whole chunks),
    /// added in f64, plus the tail.
    pub(crate) fn plane_sum(p: &[f32]) -> f64 {
        let mut acc = [0.0f32; 16];
        let chunks = p.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        acc.iter().map(|&a| f64::from(a)).sum::<f64>() + sum16(rest.iter().copied())
    }
}

crate::simd::multiversion! {
    /// `Σ (v − mean)²` of a plane, in the lanes of [`plane_sum`].
    pub(crate) fn plane_sq_dev(p: &[f32], mean: f32) -> f64 {
        let mut acc = [0.0f32; 16];
        let chunks = p.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                let d = v - mean;
                *a += d * d;
            }
        }
        acc.iter().map(|&a| f64::from(a)).sum::<f64>()
            + sum16(rest.iter().map(|v| (v - mean) * (v - mean)))
    }
}

/// Per-channel mean and biased variance (two passes, f32 lanes summed in f64); with `counts`,
/// row `b` weighs `counts[b]`.
fn channel_stats(x: &[f32], g: Geometry, counts: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let n = g.count(counts);
    let weight = |b: usize| counts.map_or(1.0, |w| f64::from(w[b]));
    let stats: Vec<(f32, f32)> = (0..g.channels)
        .into_par_iter()
        .map(|c| {
            let sum = g.channel_planes(x, c).enumerate();
            let mean = (sum.map(|(b, p)| weight(b) * plane_sum(p)).sum::<f64>() / n) as f32;
            let var = g
                .channel_planes(x, c)
                .enumerate()
                .map(|(b, p)| weight(b) * plane_sq_dev(p, mean))
                .sum::<f64>()
                / n;
            (mean, var as f32)
        })
        .collect();
    stats.into_iter().unzip()
}

fn affines(mean: &[f32], var: &[f32], gamma: &[f32], beta: &[f32], epsilon: f64) -> Vec<Affine> {
    (0..mean.len())
        .map(|c| Affine::new(mean[c], var[c], gamma[c], beta[c], epsilon))
        .collect()
}

/// Forward: `(output, window codes, mean, variance)` (codes: see [`apply_kernel`]).
fn forward_kernel(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    g: Geometry,
    counts: Option<&[f32]>,
) -> (Vec<f32>, Vec<u8>, Vec<f32>, Vec<f32>) {
    let (mean, var) = channel_stats(x, g, counts);
    let aff = affines(&mean, &var, gamma, beta, epsilon);
    let (out, codes) = apply_kernel(x, &aff, g);
    (out, codes, mean, var)
}

/// `max(x·a + b, 0)` per channel (then the 2×2 window maxima with pooling). With pooling also
/// returns each window's code for the backward: the position (0..4, row-major) of its first
/// maximum when that maximum is positive, else [`NO_GRAD`]; without pooling no codes.
fn apply_kernel(x: &[f32], aff: &[Affine], g: Geometry) -> (Vec<f32>, Vec<u8>) {
    let (s, so) = (g.plane(), g.out_plane());
    let n_out = g.batch * g.channels * so;
    let mut out = uninit_f32(n_out);
    let mut codes = vec![0u8; if g.pool { n_out } else { 0 }];
    if g.pool {
        let (ho, wo) = g.out_dims();
        let level = crate::simd::level();
        // Rows of fewer than 8 windows fill a vector by gathers instead (`window.rs`).
        let corners =
            (level != SimdLevel::Scalar && wo < GATHER_BELOW).then(|| window::corners(g.w, ho, wo));
        out.par_chunks_mut(so)
            .zip(codes.par_chunks_mut(so))
            .enumerate()
            .for_each(|(p, (o, cd))| {
                let f = aff[p % g.channels];
                let xp = &x[p * s..][..s];
                if let Some(corners) = &corners {
                    // SAFETY: the level says the CPU has AVX-512F/BW/VL or AVX2; the corners
                    // are this plane's, `o` and `cd` hold its windows.
                    unsafe {
                        if level == SimdLevel::Avx512 {
                            window::pool_plane(o, cd, xp, f, g.w, corners);
                        } else {
                            window::pool_plane_avx2(o, cd, xp, f, g.w, corners);
                        }
                    }
                    return;
                }
                match level {
                    // SAFETY: the level says the CPU has AVX-512F/BW/VL; sizes as
                    // `pool_plane_avx512` asks.
                    SimdLevel::Avx512 => unsafe { pool_plane_avx512(o, cd, xp, f, g.w, ho, wo) },
                    // SAFETY: the level says the CPU has AVX2; as above.
                    SimdLevel::Avx2 => unsafe { pool_plane_avx2(o, cd, xp, f, g.w, ho, wo) },
                    SimdLevel::Scalar => pool_plane_scalar(o, cd, xp, f, g.w, ho, wo),
                }
            });
    } else {
        out.par_chunks_mut(s).enumerate().for_each(|(p, o)| {
            let f = aff[p % g.channels];
            relu_plane(o, &x[p * s..][..s], f);
        });
    }
    // SAFETY: the planes partition `out` and each loop wrote every element of its plane.
    (unsafe { assume_init_f32(out) }, codes)
}

/// The pooled forward of one plane, scalar (the reference order of operations of the vector
/// versions: `x·a + b` rounded twice, the first maximum in row-major order).
fn pool_plane_scalar(
    o: &mut [core::mem::MaybeUninit<f32>],
    cd: &mut [u8],
    xp: &[f32],
    f: Affine,
    w: usize,
    ho: usize,
    wo: usize,
) {
    for oh in 0..ho {
        let r0 = &xp[2 * oh * w..][..w];
        let r1 = &xp[(2 * oh + 1) * w..][..w];
        let o = &mut o[oh * wo..][..wo];
        let cd = &mut cd[oh * wo..][..wo];
        for ow in 0..wo {
            let i = 2 * ow;
            let v = [f.y(r0[i]), f.y(r0[i + 1]), f.y(r1[i]), f.y(r1[i + 1])];
            let (k, m) = argmax4(v);
            o[ow].write(m.max(0.0));
            cd[ow] = if m > 0.0 { k as u8 } else { NO_GRAD };
        }
    }
}

crate::simd::multiversion! {
    /// `o = max(x·a + b, 0)` over a plane (the unpooled forward).
    fn relu_plane(o: &mut [core::mem::MaybeUninit<f32>], xs: &[f32], f: Affine) {
        for (o, &v) in o.iter_mut().zip(xs) {
            o.write(f.y(v).max(0.0));
        }
    }
}

/// The pooled forward of one plane with AVX-512 (16 windows at a time; the same operations
/// as the scalar loop: `x·a + b` rounded twice, the first maximum in row-major order, codes).
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL; `xp` holds the plane (rows of `w` ≥ 2·`wo` floats,
/// ≥ 2·`ho` rows), `o` and `cd` hold `ho·wo` outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pool_plane_avx512(
    o: &mut [core::mem::MaybeUninit<f32>],
    cd: &mut [u8],
    xp: &[f32],
    f: Affine,
    w: usize,
    ho: usize,
    wo: usize,
) {
    use core::arch::x86_64::*;
    assert!(o.len() >= ho * wo && cd.len() >= ho * wo && w >= 2 * wo && xp.len() >= 2 * ho * w);
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let (a, b) = (_mm512_set1_ps(f.a), _mm512_set1_ps(f.b));
    let y = |v| _mm512_add_ps(_mm512_mul_ps(v, a), b);
    for oh in 0..ho {
        let r0 = xp[2 * oh * w..][..2 * wo].as_ptr();
        let r1 = xp[(2 * oh + 1) * w..][..2 * wo].as_ptr();
        for c0 in (0..wo).step_by(16) {
            let n = (wo - c0).min(16);
            let m_out: __mmask16 = ((1u32 << n) - 1) as __mmask16;
            // Inputs 2·c0 .. 2·(c0 + n) of both rows, as two 16-lane halves each.
            let m_lo: __mmask16 = ((1u32 << (2 * n).min(16)) - 1) as __mmask16;
            let m_hi: __mmask16 = ((1u32 << (2 * n).saturating_sub(16)) - 1) as __mmask16;
            // SAFETY: the masks cover inputs 2·c0 .. 2·(c0 + n) ≤ 2·wo of each row, and
            // outputs c0 .. c0 + n of the row.
            unsafe {
                let load = |r: *const f32| {
                    let lo = _mm512_maskz_loadu_ps(m_lo, r.add(2 * c0));
                    let hi = _mm512_maskz_loadu_ps(m_hi, r.add(2 * c0 + 16));
                    (
                        _mm512_permutex2var_ps(lo, even, hi),
                        _mm512_permutex2var_ps(lo, odd, hi),
                    )
                };
                let (x0, x1) = load(r0);
                let (x2, x3) = load(r1);
                let (out, code) = window_max(y(x0), y(x1), y(x2), y(x3));
                let at = oh * wo + c0;
                _mm512_mask_storeu_ps(o.as_mut_ptr().add(at).cast::<f32>(), m_out, out);
                _mm_mask_storeu_epi8(
                    cd.as_mut_ptr().add(at).cast::<i8>(),
                    m_out,
                    _mm512_cvtepi32_epi8(code),
                );
            }
        }
    }
}

/// The window maxima of four vectors of `y` values (the windows' positions 0..4, row-major):
/// `(max(maximum, 0), code)` with the first maximum's position as the code, or [`NO_GRAD`]
/// when the maximum is not positive.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub(crate) fn window_max(
    v0: core::arch::x86_64::__m512,
    v1: core::arch::x86_64::__m512,
    v2: core::arch::x86_64::__m512,
    v3: core::arch::x86_64::__m512,
) -> (core::arch::x86_64::__m512, core::arch::x86_64::__m512i) {
    use core::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    let g01 = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v1, v0);
    let g23 = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v3, v2);
    let v01 = _mm512_mask_blend_ps(g01, v0, v1);
    let v23 = _mm512_mask_blend_ps(g23, v2, v3);
    let g = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v23, v01);
    let m = _mm512_mask_blend_ps(g, v01, v23);
    let i01 = _mm512_maskz_mov_epi32(g01, _mm512_set1_epi32(1));
    let i23 = _mm512_mask_blend_epi32(g23, _mm512_set1_epi32(2), _mm512_set1_epi32(3));
    let k = _mm512_mask_blend_epi32(g, i01, i23);
    let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, zero);
    let code = _mm512_mask_blend_epi32(pos, _mm512_set1_epi32(i32::from(NO_GRAD)), k);
    let out = _mm512_mask_blend_ps(pos, zero, m);
    (out, code)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pool_plane_avx512(
    _: &mut [core::mem::MaybeUninit<f32>],
    _: &mut [u8],
    _: &[f32],
    _: Affine,
    _: usize,
    _: usize,
    _: usize,
) {
    unreachable!("x86-64 only (guarded by the AVX-512 level)")
}

/// The pooled forward of one plane with AVX2 (8 windows per vector along a row, the last
/// windows of a row by the scalar loop; the same operations as the scalar loop, so the same
/// bits and codes).
///
/// # Safety
/// The CPU must support AVX2; `xp` holds the plane (rows of `w` ≥ 2·`wo` floats, ≥ 2·`ho`
/// rows), `o` and `cd` hold `ho·wo` outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pool_plane_avx2(
    o: &mut [core::mem::MaybeUninit<f32>],
    cd: &mut [u8],
    xp: &[f32],
    f: Affine,
    w: usize,
    ho: usize,
    wo: usize,
) {
    use core::arch::x86_64::*;
    assert!(o.len() >= ho * wo && cd.len() >= ho * wo && w >= 2 * wo && xp.len() >= 2 * ho * w);
    let (a, b) = (_mm256_set1_ps(f.a), _mm256_set1_ps(f.b));
    let y = |v| _mm256_add_ps(_mm256_mul_ps(v, a), b);
    // Even and odd values of 16 consecutive inputs: in-lane shuffles, then the 64-bit
    // quarters put in order (0, 2, 1, 3).
    let split = |lo: __m256, hi: __m256| {
        let order =
            |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(v)));
        (
            order(_mm256_shuffle_ps::<0x88>(lo, hi)),
            order(_mm256_shuffle_ps::<0xDD>(lo, hi)),
        )
    };
    for oh in 0..ho {
        let r0 = &xp[2 * oh * w..][..2 * wo];
        let r1 = &xp[(2 * oh + 1) * w..][..2 * wo];
        let mut c0 = 0;
        while c0 + 8 <= wo {
            // SAFETY: inputs 2·c0 .. 2·c0 + 16 ≤ 2·wo of each row; outputs c0 .. c0 + 8 ≤ wo.
            unsafe {
                let (x0, x1) = split(
                    _mm256_loadu_ps(r0.as_ptr().add(2 * c0)),
                    _mm256_loadu_ps(r0.as_ptr().add(2 * c0 + 8)),
                );
                let (x2, x3) = split(
                    _mm256_loadu_ps(r1.as_ptr().add(2 * c0)),
                    _mm256_loadu_ps(r1.as_ptr().add(2 * c0 + 8)),
                );
                let (out, code) = window_max8(y(x0), y(x1), y(x2), y(x3));
                let at = oh * wo + c0;
                _mm256_storeu_ps(o.as_mut_ptr().add(at).cast::<f32>(), out);
                store_codes8(cd.as_mut_ptr().add(at), code);
            }
            c0 += 8;
        }
        for ow in c0..wo {
            let i = 2 * ow;
            let v = [f.y(r0[i]), f.y(r0[i + 1]), f.y(r1[i]), f.y(r1[i + 1])];
            let (k, m) = argmax4(v);
            o[oh * wo + ow].write(m.max(0.0));
            cd[oh * wo + ow] = if m > 0.0 { k as u8 } else { NO_GRAD };
        }
    }
}

/// [`window_max`] for 8 windows with AVX2: `(max(maximum, 0), code)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) fn window_max8(
    v0: core::arch::x86_64::__m256,
    v1: core::arch::x86_64::__m256,
    v2: core::arch::x86_64::__m256,
    v3: core::arch::x86_64::__m256,
) -> (core::arch::x86_64::__m256, core::arch::x86_64::__m256i) {
    use core::arch::x86_64::*;
    let int = _mm256_castps_si256;
    let g01 = _mm256_cmp_ps::<_CMP_GT_OQ>(v1, v0);
    let g23 = _mm256_cmp_ps::<_CMP_GT_OQ>(v3, v2);
    let v01 = _mm256_blendv_ps(v0, v1, g01);
    let v23 = _mm256_blendv_ps(v2, v3, g23);
    let g = _mm256_cmp_ps::<_CMP_GT_OQ>(v23, v01);
    let m = _mm256_blendv_ps(v01, v23, g);
    let i01 = _mm256_and_si256(int(g01), _mm256_set1_epi32(1));
    let i23 = _mm256_blendv_epi8(_mm256_set1_epi32(2), _mm256_set1_epi32(3), int(g23));
    let k = _mm256_blendv_epi8(i01, i23, int(g));
    let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(m, _mm256_setzero_ps());
    let code = _mm256_blendv_epi8(_mm256_set1_epi32(i32::from(NO_GRAD)), k, int(pos));
    (_mm256_and_ps(m, pos), code)
}

/// Stores the low bytes of 8 codes (values 0..=4) at `p`.
///
/// # Safety
/// AVX2; `p` valid for writing 8 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn store_codes8(p: *mut u8, code: core::arch::x86_64::__m256i) {
    use core::arch::x86_64::*;
    let words = _mm_packs_epi32(
        _mm256_castsi256_si128(code),
        _mm256_extracti128_si256::<1>(code),
    );
    // SAFETY: 8 bytes at `p` (the caller's contract).
    unsafe { _mm_storel_epi64(p.cast(), _mm_packus_epi16(words, words)) };
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pool_plane_avx2(
    _: &mut [core::mem::MaybeUninit<f32>],
    _: &mut [u8],
    _: &[f32],
    _: Affine,
    _: usize,
    _: usize,
    _: usize,
) {
    unreachable!("x86-64 only (guarded by the AVX2 level)")
}

/// Narrowest rows (in windows) that the row-wise pooled forward serves with AVX-512 or AVX2;
/// narrower ones go through [`window::pool_plane`] (gathers).
const GATHER_BELOW: usize = 8;

/// Window code of an output that passes no gradient (its maximum is ≤ 0: ReLU's zero side).
pub(crate) const NO_GRAD: u8 = 4;

/// Offset in the input plane (row width `w`) of window code `k` (0..4) from the window's
/// top-left corner.
#[inline(always)]
fn code_offset(k: u8, w: usize) -> usize {
    (k as usize & 1) + (k as usize >> 1) * w
}

/// Backward: `(dx, dgamma, dbeta)` given the saved input, statistics and (with pooling) the
/// forward's window codes.
///
/// With `counts` (training), row `b` stands for `counts[b]` identical samples and its incoming
/// gradient is already the sum of theirs; its `dx` is the sum of theirs:
/// `γ/σ · (g_b − counts[b]·(Σg/N + x̂·Σg·x̂/N))` with `N` the weighted count.
#[allow(clippy::too_many_arguments)]
fn backward_kernel(
    x: &[f32],
    codes: &[u8],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    epsilon: f64,
    grad: &[f32],
    g: Geometry,
    train: bool,
    counts: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let aff = affines(mean, var, gamma, beta, epsilon);
    let (s, so) = (g.plane(), g.out_plane());
    let (ho, wo) = g.out_dims();
    assert_eq!(codes.len(), if g.pool { grad.len() } else { 0 });
    let level = crate::simd::level();
    let corners = (g.pool && level != SimdLevel::Scalar).then(|| window::corners(g.w, ho, wo));
    // Pass 1, per plane: Σ g and Σ g·x̂ over the positions that receive a gradient (f32),
    // then per channel over the batch in order (f64).
    let per_plane: Vec<(f32, f32)> = (0..g.batch * g.channels)
        .into_par_iter()
        .map(|p| {
            let f = aff[p % g.channels];
            let xp = &x[p * s..][..s];
            let gp = &grad[p * so..][..so];
            let (mut a, mut ax) = (0.0f32, 0.0f32);
            if let Some(corners) = &corners {
                let cp = &codes[p * so..][..so];
                // SAFETY: `corners` exists at the AVX2 and AVX-512 levels only (the CPU has
                // their features); the plane's windows and corners.
                return unsafe {
                    if level == SimdLevel::Avx512 {
                        window::grad_sums(xp, gp, cp, corners, f, g.w)
                    } else {
                        window::grad_sums_avx2(xp, gp, cp, corners, f, g.w)
                    }
                };
            } else if g.pool {
                let cp = &codes[p * so..][..so];
                for oh in 0..ho {
                    for ow in 0..wo {
                        let o = oh * wo + ow;
                        if cp[o] != NO_GRAD {
                            let i = 2 * oh * g.w + 2 * ow + code_offset(cp[o], g.w);
                            a += gp[o];
                            ax += gp[o] * f.xhat(xp[i]);
                        }
                    }
                }
            } else {
                for (&xv, &gv) in xp.iter().zip(gp) {
                    if f.y(xv) > 0.0 {
                        a += gv;
                        ax += gv * f.xhat(xv);
                    }
                }
            }
            (a, ax)
        })
        .collect();
    let sums: Vec<(f64, f64)> = (0..g.channels)
        .map(|c| {
            (0..g.batch).fold((0.0f64, 0.0f64), |(sg, sgx), b| {
                let (a, ax) = per_plane[b * g.channels + c];
                (sg + f64::from(a), sgx + f64::from(ax))
            })
        })
        .collect();
    let n = g.count(counts);
    // Pass 2, per plane: dx = γ/σ · (g − Σg/N − x̂ · Σg·x̂/N) in training; with fixed
    // (running) statistics only γ/σ · g.
    let mut dx = uninit_f32(x.len());
    dx.par_chunks_mut(s).enumerate().for_each(|(p, d)| {
        let c = p % g.channels;
        let f = aff[c];
        let k = gamma[c] * f.inv_std;
        let (m1, m2) = if train {
            let w = counts.map_or(1.0, |w| f64::from(w[p / g.channels]));
            ((w * sums[c].0 / n) as f32, (w * sums[c].1 / n) as f32)
        } else {
            (0.0, 0.0)
        };
        let xp = &x[p * s..][..s];
        let gp = &grad[p * so..][..so];
        if let Some(corners) = &corners {
            let cp = &codes[p * so..][..so];
            // SAFETY: `corners` exists at the AVX2 and AVX-512 levels only (the CPU has their
            // features); the plane, its windows and corners.
            unsafe {
                if level == SimdLevel::Avx512 {
                    window::plane_dx(d, xp, gp, cp, corners, f, g.w, [k, m1, m2]);
                } else {
                    window::plane_dx_avx2(d, xp, gp, cp, corners, f, g.w, [k, m1, m2]);
                }
            }
        } else if g.pool {
            for (dv, &xv) in d.iter_mut().zip(xp) {
                dv.write(-k * (m1 + f.xhat(xv) * m2));
            }
            // SAFETY: every element was written just above.
            let d = unsafe { &mut *(d as *mut [core::mem::MaybeUninit<f32>] as *mut [f32]) };
            let cp = &codes[p * so..][..so];
            for oh in 0..ho {
                for ow in 0..wo {
                    let o = oh * wo + ow;
                    if cp[o] != NO_GRAD {
                        d[2 * oh * g.w + 2 * ow + code_offset(cp[o], g.w)] += k * gp[o];
                    }
                }
            }
        } else {
            for ((dv, &xv), &gv) in d.iter_mut().zip(xp).zip(gp) {
                let gy = if f.y(xv) > 0.0 { gv } else { 0.0 };
                dv.write(k * (gy - m1 - f.xhat(xv) * m2));
            }
        }
    });
    // SAFETY: the planes partition `dx` and each wrote every element of its plane.
    let dx = unsafe { assume_init_f32(dx) };
    let dgamma = sums.iter().map(|s| s.1 as f32).collect();
    let dbeta = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dgamma, dbeta)
}

fn output_shape(shape: &[usize], g: Geometry) -> Vec<usize> {
    if g.pool {
        let (ho, wo) = g.out_dims();
        vec![g.batch, g.channels, ho, wo]
    } else {
        shape.to_vec()
    }
}

/// The training forward on flex tensors: output, window codes, batch mean and variance.
fn train_flex(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
    pool: bool,
    counts: Option<&[f32]>,
) -> (FlexTensor, Vec<u8>, FlexTensor, FlexTensor) {
    let shape = x.shape().to_vec();
    let g = Geometry::of(&shape, pool);
    if let Some(w) = counts {
        assert_eq!(w.len(), g.batch, "batch norm: one count per row");
    }
    let [x, gamma, beta] = [x, gamma, beta].map(contiguous);
    let (out, codes, mean, var) =
        forward_kernel(slice(&x), slice(&gamma), slice(&beta), epsilon, g, counts);
    (
        flex_tensor(out, output_shape(&shape, g)),
        codes,
        flex_tensor(mean, vec![g.channels]),
        flex_tensor(var, vec![g.channels]),
    )
}

/// The inference forward on flex tensors: output and window codes.
fn eval_flex(
    [x, gamma, beta, mean, var]: [&FlexTensor; 5],
    epsilon: f64,
    pool: bool,
) -> (FlexTensor, Vec<u8>) {
    let shape = x.shape().to_vec();
    let g = Geometry::of(&shape, pool);
    let [x, gamma, beta, mean, var] = [x, gamma, beta, mean, var].map(contiguous);
    let aff = affines(
        slice(&mean),
        slice(&var),
        slice(&gamma),
        slice(&beta),
        epsilon,
    );
    let (out, codes) = apply_kernel(slice(&x), &aff, g);
    (flex_tensor(out, output_shape(&shape, g)), codes)
}

impl FusedNormOps for Flex {
    fn bn_relu_pool_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        pool: bool,
        counts: Option<Arc<[f32]>>,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (out, _, mean, var) = train_flex(&x, &gamma, &beta, epsilon, pool, counts.as_deref());
        (out, mean, var)
    }

    fn bn_relu_pool_eval(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
        pool: bool,
    ) -> FlexTensor {
        eval_flex([&x, &gamma, &beta, &mean, &var], epsilon, pool).0
    }
}

/// The backward step of the fused op on `Autodiff<Flex>`: parents `[x, gamma, beta]`.
#[derive(Debug)]
struct BnReluPoolBackward;

/// Saved for the backward.
#[derive(Debug, Clone)]
struct SavedState {
    /// Input, γ, β (contiguous).
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    /// Mean and biased variance: of the batch in training, the running ones in inference.
    mean: FlexTensor,
    var: FlexTensor,
    /// The forward's window codes (pooling only; see [`apply_kernel`]).
    codes: Arc<[u8]>,
    epsilon: f64,
    pool: bool,
    train: bool,
    /// Row counts of a counted batch (training only).
    counts: Option<Arc<[f32]>>,
}

impl Backward<Flex, 3> for BnReluPoolBackward {
    type State = SavedState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let parents = ops.parents.map(|n| n.map(|n| n.id));
        let grad = contiguous(&grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let shape = st.x.shape().to_vec();
        let g = Geometry::of(&shape, st.pool);
        let (dx, dgamma, dbeta) = backward_kernel(
            slice(&st.x),
            &st.codes,
            slice(&st.gamma),
            slice(&st.beta),
            slice(&st.mean),
            slice(&st.var),
            st.epsilon,
            slice(&grad),
            g,
            st.train,
            st.counts.as_deref(),
        );
        register_norm_grads(grads, parents, (dx, dgamma, dbeta), shape);
    }
}

impl<C: CheckpointStrategy> FusedNormOps for Autodiff<Flex, C> {
    fn bn_relu_pool_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        pool: bool,
        counts: Option<Arc<[f32]>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let prepared = BnReluPoolBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let [xp, gp, bp] = [&x, &gamma, &beta].map(|t| contiguous(t.primitive()));
        let (out, codes, mean, var) = train_flex(&xp, &gp, &bp, epsilon, pool, counts.as_deref());
        let out = match prepared {
            OpsKind::Tracked(prep) => {
                let state = SavedState {
                    x: xp,
                    gamma: gp,
                    beta: bp,
                    mean: mean.clone(),
                    var: var.clone(),
                    codes: codes.into(),
                    epsilon,
                    pool,
                    train: true,
                    counts,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (out, Self::from_inner(mean), Self::from_inner(var))
    }

    fn bn_relu_pool_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        pool: bool,
    ) -> FloatTensor<Self> {
        // The statistics are constants: only x, γ and β are parents.
        let prepared = BnReluPoolBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let [xp, gp, bp, mp, vp] =
            [&x, &gamma, &beta, &mean, &var].map(|t| contiguous(t.primitive()));
        let (out, codes) = eval_flex([&xp, &gp, &bp, &mp, &vp], epsilon, pool);
        match prepared {
            OpsKind::Tracked(prep) => {
                let state = SavedState {
                    x: xp,
                    gamma: gp,
                    beta: bp,
                    mean: mp,
                    var: vp,
                    codes: codes.into(),
                    epsilon,
                    pool,
                    train: false,
                    counts: None,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, max_rel_error, random, values};

    /// An op's output with the gradients of x, γ and β.
    type Run<const D: usize> = (BnReluOutput<D>, Tensor<D>, Tensor<1>, Tensor<1>);

    /// Runs `op` on a random x (`scale`·U(−1, 1) + `shift`), γ (×1.5) and β (×0.5), all
    /// tracked, with a random upstream gradient (seeds `seed` … `seed + 3`).
    fn run_op<const D: usize>(
        shape: [usize; D],
        seed: u64,
        (scale, shift): (f32, f32),
        op: impl Fn(Tensor<D>, Tensor<1>, Tensor<1>) -> BnReluOutput<D>,
    ) -> Run<D> {
        let device = Device::flex().autodiff();
        let c = shape[1];
        let x = random(shape, seed, &device)
            .mul_scalar(scale)
            .add_scalar(shift);
        let x = x.require_grad();
        let gamma = random([c], seed + 1, &device)
            .mul_scalar(1.5)
            .require_grad();
        let beta = random([c], seed + 2, &device)
            .mul_scalar(0.5)
            .require_grad();
        let r = op(x.clone(), gamma.clone(), beta.clone());
        let up = random(r.output.dims(), seed + 3, &device);
        let grads = (r.output.clone() * up).sum().backward();
        (
            r,
            x.grad(&grads).expect("dx"),
            gamma.grad(&grads).expect("dgamma"),
            beta.grad(&grads).expect("dbeta"),
        )
    }

    /// Output and statistics within `tol_values`, the three gradients within `tol_grads`.
    fn assert_runs_close<const D: usize>(
        (ours, dx, dg, db): Run<D>,
        (theirs, rdx, rdg, rdb): Run<D>,
        (tol_values, tol_grads): (f32, f32),
        what: &str,
    ) {
        assert_eq!(ours.output.dims(), theirs.output.dims(), "{what}");
        let t = tol_values;
        assert_close(&ours.output, &theirs.output, t, &format!("{what} output"));
        assert_close(&ours.mean, &theirs.mean, t, &format!("{what} mean"));
        assert_close(&ours.variance, &theirs.variance, t, &format!("{what} var"));
        assert_close(&dx, &rdx, tol_grads, &format!("{what} dx"));
        assert_close(&dg, &rdg, tol_grads, &format!("{what} dgamma"));
        assert_close(&db, &rdb, tol_grads, &format!("{what} dbeta"));
    }

    /// Forward, statistics and gradients (input, γ, β) of the fused op against burn's layers,
    /// with a random upstream gradient and random γ, β (negative ones included, which flip the
    /// pooling's arg-max from the input's maximum to its minimum).
    fn check<const D: usize>(shape: [usize; D], pool: bool, seed: u64) {
        let run = |fused_op: bool| {
            run_op(shape, seed, (3.0, 0.5), |x, gamma, beta| {
                match (fused_op, pool) {
                    (true, true) => {
                        let o = batch_norm_relu_pool2d(x.reshape(to4(shape)), gamma, beta, 1e-5);
                        let dims = o.output.dims();
                        BnReluOutput {
                            output: o.output.reshape(rank::<4, D>(dims)),
                            mean: o.mean,
                            variance: o.variance,
                        }
                    }
                    (true, false) => batch_norm_relu(x, gamma, beta, 1e-5),
                    (false, _) => reference(x, gamma, beta, 1e-5, pool),
                }
            })
        };
        // Measured: ≤ 3e-7 everywhere (a few ulps; summation order differs).
        let what = format!("{shape:?} pool {pool}");
        assert_runs_close(run(true), run(false), (2e-6, 2e-6), &what);
    }

    /// A counted batch against the expanded one: row r repeated counts[r] times through
    /// burn's layers, the output's first copy of each row kept (so the sum of the copies'
    /// upstream gradients reaches that copy, as in `ConvEncoder::forward_present`). Output,
    /// statistics and the gradients of x (summed over copies), γ and β agree; pooled and
    /// unpooled. (The expanded path is also the counted op's fallback off `flex`.)
    fn check_counted<const D: usize>(shape: [usize; D], counts: &[usize], pool: bool, seed: u64) {
        let run = |counted: bool| {
            run_op(shape, seed, (2.0, 0.3), |x, gamma, beta| {
                if counted {
                    batch_norm_relu_counted(x, gamma, beta, 1e-5, pool, counts)
                } else {
                    let (expand, first) = expand_counts(counts);
                    let xe = crate::select_rows(x, &expand);
                    let r = reference::<D, D>(xe, gamma, beta, 1e-5, pool);
                    BnReluOutput {
                        output: crate::select_rows(r.output, &first),
                        ..r
                    }
                }
            })
        };
        let what = format!("counted {shape:?} {counts:?} pool {pool}");
        assert_runs_close(run(true), run(false), (2e-6, 2e-5), &what);
    }

    #[test]
    fn counted_batch_matches_the_expanded_batch() {
        crate::testing::for_each_level(|_| counted_batch_matches_the_expanded_batch_at_level());
    }

    fn counted_batch_matches_the_expanded_batch_at_level() {
        check_counted([4, 3, 6, 5], &[1, 3, 1, 2], true, 70);
        check_counted([3, 5, 9, 8], &[1, 1, 7], true, 71);
        check_counted([5, 4, 7], &[2, 1, 1, 4, 1], false, 72);
        check_counted([2, 6], &[1, 9], false, 73);
        check_counted([1, 2, 4, 4], &[6], true, 74);
        check_counted([3, 2, 1, 6], &[2, 2, 1], false, 75);
    }

    #[test]
    fn pooled_matches_burn_on_our_shapes_and_odd_sizes() {
        crate::testing::for_each_level(|_| {
            pooled_matches_burn_on_our_shapes_and_odd_sizes_at_level()
        });
    }

    fn pooled_matches_burn_on_our_shapes_and_odd_sizes_at_level() {
        // The AV-MNIST encoders' shapes (small batch), then odd sizes (floor mode drops the
        // last row / column), a single 2×2 window, batch 1, one channel.
        for (i, shape) in [
            [4, 20, 24, 24],
            [3, 50, 8, 8],
            [4, 32, 20, 20],
            [2, 64, 10, 10],
            [3, 5, 7, 9],
            [2, 3, 2, 2],
            [1, 4, 5, 4],
            [5, 1, 3, 6],
        ]
        .into_iter()
        .enumerate()
        {
            check(shape, true, 10 * i as u64);
        }
    }

    /// The pooled and unpooled forwards do the scalar loop's operations at every level: the
    /// same bits (rows of 11 windows: a vector of 8 and a scalar tail with AVX2, 16 with a
    /// masked tail with AVX-512; rows of 3–5 windows: gathers, with a partial last vector).
    #[test]
    fn forward_same_bits_at_every_level() {
        let device = Device::flex();
        for (i, shape) in [[2, 3, 20, 22], [3, 2, 8, 8], [2, 3, 10, 11], [1, 2, 7, 6]]
            .into_iter()
            .enumerate()
        {
            let x = random(shape, 300 + i as u64, &device).mul_scalar(2.0);
            let gamma = random([shape[1]], 310 + i as u64, &device);
            let beta = random([shape[1]], 320 + i as u64, &device);
            let run = || {
                let pooled = batch_norm_relu_pool2d(x.clone(), gamma.clone(), beta.clone(), 1e-5);
                let plain = batch_norm_relu(x.clone(), gamma.clone(), beta.clone(), 1e-5);
                (values(&pooled.output), values(&plain.output))
            };
            let all: Vec<_> = SimdLevel::available()
                .into_iter()
                .map(|l| (l, crate::testing::pool_at(l, 2).install(run)))
                .collect();
            for (l, r) in &all[1..] {
                assert!(
                    r.0 == all[0].1.0,
                    "{shape:?}: pooled forward differs at {l}"
                );
                assert!(
                    r.1 == all[0].1.1,
                    "{shape:?}: unpooled forward differs at {l}"
                );
            }
        }
    }

    #[test]
    fn unpooled_matches_burn_for_ranks_2_to_5() {
        crate::testing::for_each_level(|_| unpooled_matches_burn_for_ranks_2_to_5_at_level());
    }

    fn unpooled_matches_burn_for_ranks_2_to_5_at_level() {
        check([16, 128], false, 1);
        check([5, 7], false, 2);
        check([3, 4, 11], false, 3);
        check([2, 6, 5, 3], false, 4);
        check([2, 3, 3, 2, 5], false, 5);
    }

    /// The inference op (given statistics) against burn's `batch_norm` → `relu` (→ pool):
    /// forward and the gradients of input, γ and β.
    fn check_eval<const D: usize>(shape: [usize; D], pool: bool, seed: u64) {
        let device = Device::flex().autodiff();
        let c = shape[1];
        let x = random(shape, seed, &device).mul_scalar(3.0).add_scalar(0.5);
        let gamma = random([c], seed + 1, &device).mul_scalar(1.5);
        let beta = random([c], seed + 2, &device).mul_scalar(0.5);
        let mean = random([c], seed + 4, &device);
        let var = random([c], seed + 5, &device).abs().add_scalar(0.05);
        let run = |fused_op: bool| {
            let (x, gamma, beta) = (
                x.clone().require_grad(),
                gamma.clone().require_grad(),
                beta.clone().require_grad(),
            );
            let (m, v) = (mean.clone(), var.clone());
            let out: Tensor<D> = match (fused_op, pool) {
                (true, true) => {
                    let o = batch_norm_relu_pool2d_eval(
                        x.clone().reshape(to4(shape)),
                        gamma.clone(),
                        beta.clone(),
                        m,
                        v,
                        1e-5,
                    );
                    let dims = o.dims();
                    o.reshape(rank::<4, D>(dims))
                }
                (true, false) => {
                    batch_norm_relu_eval(x.clone(), gamma.clone(), beta.clone(), m, v, 1e-5)
                }
                (false, _) => {
                    reference_eval(x.clone(), gamma.clone(), beta.clone(), m, v, 1e-5, pool)
                }
            };
            let up = random(out.dims(), seed + 3, &device);
            let grads = (out.clone() * up).sum().backward();
            (
                out,
                x.grad(&grads).expect("dx"),
                gamma.grad(&grads).expect("dgamma"),
                beta.grad(&grads).expect("dbeta"),
            )
        };
        let (out, dx, dg, db) = run(true);
        let (rout, rdx, rdg, rdb) = run(false);
        let what = format!("eval {shape:?} pool {pool}");
        let tol = 2e-6;
        assert_close(&out, &rout, tol, &format!("{what} output"));
        assert_close(&dx, &rdx, tol, &format!("{what} dx"));
        assert_close(&dg, &rdg, tol, &format!("{what} dgamma"));
        assert_close(&db, &rdb, tol, &format!("{what} dbeta"));
        // Without autodiff (the meta step's encoders): the same forward.
        let plain = Device::flex();
        let to = |t: &Tensor<1>| Tensor::<1>::from_data(t.to_data(), &plain);
        let xp = Tensor::<D>::from_data(x.to_data(), &plain);
        let o: Tensor<D> = if pool {
            let o = batch_norm_relu_pool2d_eval(
                xp.reshape(to4(shape)),
                to(&gamma),
                to(&beta),
                to(&mean),
                to(&var),
                1e-5,
            );
            let dims = o.dims();
            o.reshape(rank::<4, D>(dims))
        } else {
            batch_norm_relu_eval(xp, to(&gamma), to(&beta), to(&mean), to(&var), 1e-5)
        };
        assert_eq!(
            values(&o),
            values(&out),
            "{what}: autodiff and plain differ"
        );
    }

    #[test]
    fn eval_matches_burn_on_our_shapes_and_odd_sizes() {
        crate::testing::for_each_level(|_| {
            eval_matches_burn_on_our_shapes_and_odd_sizes_at_level()
        });
    }

    fn eval_matches_burn_on_our_shapes_and_odd_sizes_at_level() {
        for (i, shape) in [
            [4, 20, 24, 24],
            [3, 50, 8, 8],
            [2, 64, 10, 10],
            [3, 5, 7, 9],
            [2, 3, 2, 2],
            [5, 1, 3, 6],
        ]
        .into_iter()
        .enumerate()
        {
            check_eval(shape, true, 100 + 10 * i as u64);
        }
        check_eval([16, 128], false, 200);
        check_eval([3, 4, 11], false, 210);
        check_eval([2, 3, 3, 2, 5], false, 220);
    }

    #[test]
    fn mean_and_variance_match_numbers_by_hand() {
        crate::testing::for_each_level(|_| mean_and_variance_match_numbers_by_hand_at_level());
    }

    fn mean_and_variance_match_numbers_by_hand_at_level() {
        // Channel 0 holds 1, 2, 3, 4 (mean 2.5, biased variance 1.25); channel 1 holds −1 × 4.
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new(
                vec![1.0f32, 2.0, 3.0, 4.0, -1.0, -1.0, -1.0, -1.0],
                [1, 2, 2, 2],
            ),
            &device,
        );
        let ones = Tensor::<1>::ones([2], &device);
        let zeros = Tensor::<1>::zeros([2], &device);
        let r = batch_norm_relu_pool2d(x, ones, zeros, 1e-5);
        assert_eq!(values(&r.mean), vec![2.5, -1.0]);
        assert_eq!(values(&r.variance), vec![1.25, 0.0]);
        // Window max of (x − 2.5)/√1.25 is (4 − 2.5)/√(1.25 + 1e-5); channel 1 is all 0.
        let out = values(&r.output);
        assert!(
            (out[0] - 1.5 / (1.25f32 + 1e-5).sqrt()).abs() < 1e-6,
            "{out:?}"
        );
        assert_eq!(out[1], 0.0);
    }

    #[test]
    fn the_comparison_can_fail() {
        // A wrong ε changes the output beyond the tolerance: the check is not vacuous.
        let device = Device::flex();
        let x = random([2, 3, 4, 4], 7, &device);
        let (g, b) = (Tensor::ones([3], &device), Tensor::zeros([3], &device));
        let ours = batch_norm_relu_pool2d(x.clone(), g.clone(), b.clone(), 1e-1);
        let reference: BnReluOutput<4> = reference(x, g, b, 1e-5, true);
        assert!(max_rel_error(&ours.output, &reference.output) > 1e-3);
    }

    #[test]
    fn no_gradient_without_autodiff_and_same_numbers_twice() {
        crate::testing::for_each_level(|_| {
            no_gradient_without_autodiff_and_same_numbers_twice_at_level()
        });
    }

    fn no_gradient_without_autodiff_and_same_numbers_twice_at_level() {
        let d = Device::flex().autodiff();
        let t = random([2, 3, 4, 4], 1, &d);
        assert!(fused_available(
            &t,
            &Tensor::ones([3], &d),
            &Tensor::ones([3], &d)
        ));
        let device = Device::flex();
        let x = random([3, 4, 6, 6], 3, &device);
        let (g, b) = (Tensor::ones([4], &device), Tensor::zeros([4], &device));
        let a = batch_norm_relu_pool2d(x.clone(), g.clone(), b.clone(), 1e-5);
        let c = batch_norm_relu_pool2d(x, g, b, 1e-5);
        assert_eq!(values(&a.output), values(&c.output), "deterministic");
    }
}
