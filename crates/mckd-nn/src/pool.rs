//! 3-D pooling with PyTorch's semantics (floor mode, dilation 1), built from burn's 2-D pools.
//!
//! Max and average pooling over a `kd×kh×kw` box are separable: the box is the product of
//! three 1-D windows, and so is the set of its real (unpadded) voxels. So a 3-D pool is a 2-D
//! pool over (H, W) of the `[B, C·D, H, W]` view, then a `kd×1` 2-D pool over D of the
//! `[B, C, D, H'·W']` view. Both passes run in flex's native pooling kernels (forward with
//! argmax indices, backward a scatter), parallel over planes — no per-voxel host loop, and
//! fewer comparisons than a direct `kd·kh·kw` window.
//!
//! * Max: padding acts as −∞ (PyTorch's `MaxPool3d`): every window holds at least one real
//!   voxel because `padding ≤ kernel/2`. Ties go to the first voxel in scan order, so the
//!   gradient goes to one voxel per window, as in PyTorch.
//! * Average, `count_include_pad = true` (PyTorch's default): the divisor is `kd·kh·kw`;
//!   `false`: the number of real voxels in the window, `Π_axis (real voxels along the axis)` —
//!   both factor over the axes, which is what makes the two passes exact.

use burn::prelude::*;
use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, MaxPoolOptions};

/// Output size of a pooling (or convolution) window along one axis in floor mode:
/// `⌊(n + 2p − k)/s⌋ + 1`, or 0 when the padded input is shorter than the kernel.
pub fn pool_output_size(n: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    let padded = n + 2 * padding;
    if padded < kernel || stride == 0 {
        0
    } else {
        (padded - kernel) / stride + 1
    }
}

/// Checks the window against PyTorch's rules; returns the output size.
fn check_window(
    what: &str,
    dims: [usize; 5],
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) -> [usize; 3] {
    for a in 0..3 {
        let n = dims[2 + a];
        assert!(
            kernel[a] > 0 && stride[a] > 0,
            "{what}: kernel {kernel:?} and stride {stride:?} must be positive"
        );
        assert!(
            2 * padding[a] <= kernel[a],
            "{what}: padding {padding:?} must be at most half the kernel {kernel:?}"
        );
        assert!(
            n > 0 && n + 2 * padding[a] >= kernel[a],
            "{what}: input {dims:?} too small for kernel {kernel:?} with padding {padding:?}"
        );
    }
    std::array::from_fn(|a| pool_output_size(dims[2 + a], kernel[a], stride[a], padding[a]))
}

/// 3-D max pooling (PyTorch `F.max_pool3d(x, kernel, stride, padding)`, floor mode).
///
/// # Shapes
/// - `x`: `[B, C, D, H, W]`
/// - output: `[B, C, D', H', W']`, `D' = ⌊(D + 2p_d − k_d)/s_d⌋ + 1` (see
///   [`pool_output_size`]), likewise H', W'
///
/// # Panics
/// If a kernel or stride is 0, a padding exceeds half its kernel, or an axis is empty or
/// shorter than its kernel after padding (PyTorch's rules; an internal contract of the caller).
pub fn max_pool3d(
    x: Tensor<5>,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Tensor<5> {
    let dims = x.dims();
    let [b, c, d, h, w] = dims;
    let [od, oh, ow] = check_window("max_pool3d", dims, kernel, stride, padding);
    let x = if is_identity([kernel[1], kernel[2]], [stride[1], stride[2]]) {
        x.reshape([b, c, d, h * w])
    } else {
        max_pool2d(
            x.reshape([b, c * d, h, w]),
            MaxPoolOptions::new([kernel[1], kernel[2]])
                .with_stride([stride[1], stride[2]])
                .with_padding([padding[1], padding[2]]),
        )
        .reshape([b, c, d, oh * ow])
    };
    let x = if is_identity([kernel[0], 1], [stride[0], 1]) {
        x
    } else {
        max_pool2d(
            x,
            MaxPoolOptions::new([kernel[0], 1])
                .with_stride([stride[0], 1])
                .with_padding([padding[0], 0]),
        )
    };
    x.reshape([b, c, od, oh, ow])
}

/// 3-D average pooling (PyTorch `F.avg_pool3d(x, kernel, stride, padding,
/// count_include_pad=…)`, floor mode). With `count_include_pad` the divisor is `kd·kh·kw`
/// (padding counts as zeros, PyTorch's default); without it, the number of real voxels in
/// the window.
///
/// # Shapes
/// - `x`: `[B, C, D, H, W]`
/// - output: `[B, C, D', H', W']` as for [`max_pool3d`]
///
/// # Panics
/// As [`max_pool3d`].
pub fn avg_pool3d(
    x: Tensor<5>,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    count_include_pad: bool,
) -> Tensor<5> {
    let dims = x.dims();
    let [b, c, d, h, w] = dims;
    let [od, oh, ow] = check_window("avg_pool3d", dims, kernel, stride, padding);
    let x = if is_identity([kernel[1], kernel[2]], [stride[1], stride[2]]) {
        x.reshape([b, c, d, h * w])
    } else {
        avg_pool2d(
            x.reshape([b, c * d, h, w]),
            AvgPoolOptions::new([kernel[1], kernel[2]])
                .with_stride([stride[1], stride[2]])
                .with_padding([padding[1], padding[2]])
                .with_count_include_pad(count_include_pad),
        )
        .reshape([b, c, d, oh * ow])
    };
    let x = if is_identity([kernel[0], 1], [stride[0], 1]) {
        x
    } else {
        avg_pool2d(
            x,
            AvgPoolOptions::new([kernel[0], 1])
                .with_stride([stride[0], 1])
                .with_padding([padding[0], 0])
                .with_count_include_pad(count_include_pad),
        )
    };
    x.reshape([b, c, od, oh, ow])
}

/// Global average pooling: the mean over D·H·W per sample and channel (PyTorch
/// `x.mean([2, 3, 4], keepdim=True)`, `AdaptiveAvgPool3d(1)`).
///
/// # Shapes
/// - `x`: `[B, C, D, H, W]`
/// - output: `[B, C, 1, 1, 1]`
pub fn global_avg_pool3d(x: Tensor<5>) -> Tensor<5> {
    let [b, c, d, h, w] = x.dims();
    x.reshape([b, c, d * h * w])
        .mean_dim(2)
        .reshape([b, c, 1, 1, 1])
}

/// A pass that leaves the axis alone (window 1, stride 1; padding is then 0) is skipped.
fn is_identity(kernel: [usize; 2], stride: [usize; 2]) -> bool {
    kernel == [1, 1] && stride == [1, 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Grid, ad, assert_close, values};

    /// Brute-force max pool with −∞ padding; also returns, per output, the flat input index
    /// of the first maximum in scan order (d, h, w) — where PyTorch sends the gradient.
    fn max_pool_ref(x: &Grid, k: [usize; 3], s: [usize; 3], p: [usize; 3]) -> (Grid, Vec<usize>) {
        let [b, c, d, h, w] = x.dims;
        let o = |n: usize, a: usize| (n + 2 * p[a] - k[a]) / s[a] + 1;
        let mut y = Grid::zeros([b, c, o(d, 0), o(h, 1), o(w, 2)]);
        let mut arg = vec![0; y.data.len()];
        for bi in 0..b {
            for ci in 0..c {
                for zd in 0..y.dims[2] {
                    for zh in 0..y.dims[3] {
                        for zw in 0..y.dims[4] {
                            let (mut best, mut at) = (f64::NEG_INFINITY, usize::MAX);
                            for i in 0..k[0] {
                                for j in 0..k[1] {
                                    for l in 0..k[2] {
                                        let id = (zd * s[0] + i) as isize - p[0] as isize;
                                        let ih = (zh * s[1] + j) as isize - p[1] as isize;
                                        let iw = (zw * s[2] + l) as isize - p[2] as isize;
                                        let inside = (0..d as isize).contains(&id)
                                            && (0..h as isize).contains(&ih)
                                            && (0..w as isize).contains(&iw);
                                        if !inside {
                                            continue; // −∞ never wins
                                        }
                                        let idx =
                                            x.idx(bi, ci, id as usize, ih as usize, iw as usize);
                                        if x.data[idx] > best {
                                            best = x.data[idx];
                                            at = idx;
                                        }
                                    }
                                }
                            }
                            let oi = y.idx(bi, ci, zd, zh, zw);
                            y.data[oi] = best;
                            arg[oi] = at;
                        }
                    }
                }
            }
        }
        (y, arg)
    }

    /// Brute-force average pool; returns the output and, per output, the (input index,
    /// weight) pairs it averages — the transpose gives the gradient.
    #[allow(clippy::type_complexity)]
    fn avg_pool_ref(
        x: &Grid,
        k: [usize; 3],
        s: [usize; 3],
        p: [usize; 3],
        count_include_pad: bool,
    ) -> (Grid, Vec<Vec<(usize, f64)>>) {
        let [b, c, d, h, w] = x.dims;
        let o = |n: usize, a: usize| (n + 2 * p[a] - k[a]) / s[a] + 1;
        let mut y = Grid::zeros([b, c, o(d, 0), o(h, 1), o(w, 2)]);
        let mut taps = vec![Vec::new(); y.data.len()];
        for bi in 0..b {
            for ci in 0..c {
                for zd in 0..y.dims[2] {
                    for zh in 0..y.dims[3] {
                        for zw in 0..y.dims[4] {
                            let mut real = Vec::new();
                            for i in 0..k[0] {
                                for j in 0..k[1] {
                                    for l in 0..k[2] {
                                        let id = (zd * s[0] + i) as isize - p[0] as isize;
                                        let ih = (zh * s[1] + j) as isize - p[1] as isize;
                                        let iw = (zw * s[2] + l) as isize - p[2] as isize;
                                        if (0..d as isize).contains(&id)
                                            && (0..h as isize).contains(&ih)
                                            && (0..w as isize).contains(&iw)
                                        {
                                            real.push(x.idx(
                                                bi,
                                                ci,
                                                id as usize,
                                                ih as usize,
                                                iw as usize,
                                            ));
                                        }
                                    }
                                }
                            }
                            let divisor = if count_include_pad {
                                (k[0] * k[1] * k[2]) as f64
                            } else {
                                real.len() as f64
                            };
                            let oi = y.idx(bi, ci, zd, zh, zw);
                            y.data[oi] = real.iter().map(|&i| x.data[i]).sum::<f64>() / divisor;
                            taps[oi] = real.iter().map(|&i| (i, 1.0 / divisor)).collect();
                        }
                    }
                }
            }
        }
        (y, taps)
    }

    /// Forward and `∂(Σ g ⊙ pool(x))/∂x` through autodiff.
    fn run(
        x: &Grid,
        g: &Grid,
        f: impl Fn(Tensor<5>) -> Tensor<5>,
    ) -> (Vec<f64>, [usize; 5], Vec<f64>) {
        let device = ad();
        let xt = x.tensor(&device).require_grad();
        let y = f(xt.clone());
        let dims = y.dims();
        let loss = (y.clone() * g.tensor(&device)).sum();
        let grads = loss.backward();
        let gx = xt.grad(&grads).expect("x gradient");
        (values(&y), dims, values(&gx))
    }

    /// Input dims, kernel, stride, padding.
    type Case = ([usize; 5], [usize; 3], [usize; 3], [usize; 3]);

    // DualNet's stem pool 3³/2 padding 1 and the UNet's 2³/2, on odd sizes, plus anisotropic
    // and overlapping windows.
    const CASES: [Case; 5] = [
        ([2, 3, 5, 7, 6], [3, 3, 3], [2, 2, 2], [1, 1, 1]),
        ([2, 3, 6, 4, 8], [2, 2, 2], [2, 2, 2], [0, 0, 0]),
        ([2, 2, 7, 5, 9], [2, 2, 2], [2, 2, 2], [0, 0, 0]),
        ([3, 2, 5, 6, 7], [1, 3, 2], [1, 2, 3], [0, 1, 1]),
        ([1, 4, 9, 5, 4], [3, 1, 3], [1, 1, 2], [1, 0, 0]),
    ];

    #[test]
    fn max_pool3d_matches_brute_force_values_and_gradients() {
        for (seed, &(dims, k, s, p)) in CASES.iter().enumerate() {
            let x = Grid::random(dims, 100 + seed as u64);
            let (want, arg) = max_pool_ref(&x, k, s, p);
            let g = Grid::random(want.dims, 200 + seed as u64);
            let (got, got_dims, got_grad) = run(&x, &g, |t| max_pool3d(t, k, s, p));
            let what = format!("max_pool3d {dims:?} k{k:?} s{s:?} p{p:?}");
            assert_eq!(got_dims, want.dims, "{what}: shape");
            assert_close(&got, &want.data, 0.0, &what);
            // The gradient of Σ g·y goes to each window's (first) maximum.
            let mut want_grad = vec![0.0; x.data.len()];
            for (oi, &i) in arg.iter().enumerate() {
                want_grad[i] += g.data[oi];
            }
            assert_close(&got_grad, &want_grad, 1e-6, &format!("{what} gradient"));
        }
    }

    #[test]
    fn max_pool3d_padding_is_minus_infinity() {
        // All-negative input: zero padding would win at the borders, −∞ padding must not.
        // x = −1 − (index) on [1,1,3,3,3]; a 3³/2 pool with padding 1 gives 2³ outputs whose
        // windows always contain the input corner voxel of smallest index in the window.
        let device = Device::flex();
        let v: Vec<f32> = (0..27).map(|i| -1.0 - i as f32).collect();
        let x = Tensor::<5>::from_data(TensorData::new(v, [1, 1, 3, 3, 3]), &device);
        let y = values(&max_pool3d(x, [3, 3, 3], [2, 2, 2], [1, 1, 1]));
        // Output (a, b, c) covers input indices {2a−1..2a+1} ∩ [0, 2] per axis; the largest
        // value is at the smallest index max(2a−1, 0) per axis: d·9 + h·3 + w.
        let want: Vec<f64> = (0..8)
            .map(|o| {
                let lo = |a: usize| (2 * a).saturating_sub(1);
                let (a, b, c) = (o / 4, (o / 2) % 2, o % 2);
                -1.0 - (lo(a) * 9 + lo(b) * 3 + lo(c)) as f64
            })
            .collect();
        assert_eq!(y, want);
    }

    #[test]
    fn avg_pool3d_matches_brute_force_both_pad_conventions() {
        for count_include_pad in [true, false] {
            for (seed, &(dims, k, s, p)) in CASES.iter().enumerate() {
                let x = Grid::random(dims, 300 + seed as u64);
                let (want, taps) = avg_pool_ref(&x, k, s, p, count_include_pad);
                let g = Grid::random(want.dims, 400 + seed as u64);
                let (got, got_dims, got_grad) =
                    run(&x, &g, |t| avg_pool3d(t, k, s, p, count_include_pad));
                let what = format!(
                    "avg_pool3d {dims:?} k{k:?} s{s:?} p{p:?} include_pad {count_include_pad}"
                );
                assert_eq!(got_dims, want.dims, "{what}: shape");
                assert_close(&got, &want.data, 1e-6, &what);
                let mut want_grad = vec![0.0; x.data.len()];
                for (oi, t) in taps.iter().enumerate() {
                    for &(i, wgt) in t {
                        want_grad[i] += g.data[oi] * wgt;
                    }
                }
                assert_close(&got_grad, &want_grad, 1e-6, &format!("{what} gradient"));
            }
        }
    }

    #[test]
    fn avg_pool3d_pad_conventions_differ_at_the_border() {
        // A constant 1 input: excluding padding keeps 1 everywhere; including it gives
        // (real voxels)/27 at a 3³ window, e.g. the corner window of a 3³ input padded by 1
        // holds 2·2·2 = 8 real voxels → 8/27.
        let device = Device::flex();
        let x = Tensor::<5>::ones([1, 1, 3, 3, 3], &device);
        let excl = values(&avg_pool3d(x.clone(), [3; 3], [2; 3], [1; 3], false));
        let incl = values(&avg_pool3d(x, [3; 3], [2; 3], [1; 3], true));
        assert_close(&excl, &[1.0; 8], 1e-6, "exclude pad");
        assert_close(&incl, &[8.0 / 27.0; 8], 1e-6, "include pad");
    }

    #[test]
    fn global_avg_pool3d_is_the_mean_per_channel() {
        let x = Grid::random([2, 3, 3, 4, 5], 7);
        let got = values(&global_avg_pool3d(x.tensor(&Device::flex())));
        let want: Vec<f64> = (0..6)
            .map(|bc| x.data[bc * 60..(bc + 1) * 60].iter().sum::<f64>() / 60.0)
            .collect();
        assert_close(&got, &want, 1e-6, "global mean");
    }

    #[test]
    fn pool_output_size_follows_the_floor_formula() {
        // DualNet's stem pool on 80 and 160: (80 + 2 − 3)/2 + 1 = 40, (160 + 2 − 3)/2 + 1 = 80.
        assert_eq!(pool_output_size(80, 3, 2, 1), 40);
        assert_eq!(pool_output_size(160, 3, 2, 1), 80);
        assert_eq!(pool_output_size(7, 2, 2, 0), 3);
        assert_eq!(pool_output_size(1, 3, 1, 0), 0);
    }
}
