//! 3-D resampling: trilinear (PyTorch `F.interpolate(.., mode='trilinear')`) and nearest.
//!
//! Trilinear interpolation is separable: linear along W, H and D in turn. On the CPU backend
//! it runs as one op of three such passes with its own backward
//! (`mckd_kernels::trilinear_resize`). Elsewhere: burn 0.22.1's `interpolate` is 2-D
//! (bilinear) with PyTorch's coordinate maps for both `align_corners` settings, so a 3-D
//! resize is one bilinear pass over (H, W) of the `[B, C·D, H, W]` view and one over (D, ·) of
//! the `[B, C, D, H'·W']` view, whose second axis keeps its size (weight 0 on the neighbour:
//! an exact copy). A pass whose axes keep their size is skipped: in both conventions it is the
//! identity.
//!
//! Coordinate maps, per axis with input size `n` and output size `m` (PyTorch's):
//! * `align_corners = false`: `src = max(0, (o + ½)·n/m − ½)`;
//! * `align_corners = true`: `src = o·(n − 1)/(m − 1)` (0 when `m = 1`);
//!
//! then `y = (1 − λ)·x[⌊src⌋] + λ·x[min(⌊src⌋ + 1, n − 1)]`, `λ = src − ⌊src⌋`.

use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

/// Trilinear resize to `size` = (D', H', W').
///
/// `align_corners = false` is PyTorch's default (HVED, ShaSpec, DualNet's final upsampling);
/// `true` is mmFormer's.
///
/// # Shapes
/// - `x`: `[B, C, D, H, W]`
/// - output: `[B, C, D', H', W']`
///
/// # Panics
/// If an input or output spatial size is 0.
pub fn trilinear(x: Tensor<5>, size: [usize; 3], align_corners: bool) -> Tensor<5> {
    // On the CPU backend, one op of separable passes (mckd_kernels::resize, which also checks
    // the sizes); elsewhere two bilinear passes.
    mckd_kernels::trilinear_resize(x.clone(), size, align_corners)
        .unwrap_or_else(|| bilinear_passes(x, size, align_corners))
}

/// [`trilinear`] as two of burn's bilinear passes (see the module docs).
fn bilinear_passes(x: Tensor<5>, size: [usize; 3], align_corners: bool) -> Tensor<5> {
    let [b, c, d, h, w] = x.dims();
    let [od, oh, ow] = size;
    let bilinear = |x: Tensor<4>, out: [usize; 2]| {
        interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(align_corners)
                .with_output_size(out),
        )
    };
    let x = if [oh, ow] == [h, w] {
        x
    } else {
        bilinear(x.reshape([b, c * d, h, w]), [oh, ow]).reshape([b, c, d, oh, ow])
    };
    if od == d {
        return x;
    }
    bilinear(x.reshape([b, c, d, oh * ow]), [od, oh * ow]).reshape([b, c, od, oh, ow])
}

/// Trilinear resize by per-axis scale factors (D, H, W), e.g. `[1.0, 2.0, 2.0]` for DualNet's
/// final ×(1, 2, 2). The output size is `⌊n·f⌋` per axis (PyTorch's). The coordinate map uses
/// `n/⌊n·f⌋`, which equals PyTorch's `1/f` (its `scale_factor` semantics) whenever `n·f` is an
/// integer — every integer factor — and is PyTorch's `recompute_scale_factor=True` otherwise.
///
/// # Shapes
/// - `x`: `[B, C, D, H, W]`
/// - output: `[B, C, ⌊D·f_d⌋, ⌊H·f_h⌋, ⌊W·f_w⌋]`
///
/// # Panics
/// If a factor is not finite and positive, or a size is (or becomes) 0.
pub fn trilinear_scale(x: Tensor<5>, factors: [f64; 3], align_corners: bool) -> Tensor<5> {
    assert!(
        factors.iter().all(|f| f.is_finite() && *f > 0.0),
        "trilinear_scale: factors {factors:?} must be finite and positive"
    );
    let [_, _, d, h, w] = x.dims();
    let size = [d, h, w];
    // As PyTorch: floor of the product in double precision.
    let out = std::array::from_fn(|a| (size[a] as f64 * factors[a]).floor() as usize);
    trilinear(x, out, align_corners)
}

/// Nearest-neighbour upsampling by integer factors (D, H, W): each voxel becomes an
/// `f_d×f_h×f_w` block (PyTorch `F.interpolate(.., scale_factor=f, mode='nearest')` for integer
/// `f`, Keras `UpSampling3D`). A reshape + broadcast + reshape: exact, and its backward sums
/// each block.
///
/// # Shapes
/// - `x`: `[B, C, D, H, W]`
/// - output: `[B, C, f_d·D, f_h·H, f_w·W]`
///
/// # Panics
/// If a factor is 0.
pub fn upsample_nearest3d(x: Tensor<5>, factors: [usize; 3]) -> Tensor<5> {
    assert!(
        factors.iter().all(|&f| f > 0),
        "upsample_nearest3d: factors {factors:?} must be positive"
    );
    if factors == [1, 1, 1] {
        return x;
    }
    let [b, c, d, h, w] = x.dims();
    let [fd, fh, fw] = factors;
    x.reshape([b, c, d, 1, h, 1, w, 1])
        .expand([b, c, d, fd, h, fh, w, fw])
        .reshape([b, c, d * fd, h * fh, w * fw])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Grid, ad, assert_close, values};

    /// PyTorch's source coordinate for output `o` (area_pixel_compute_source_index):
    /// (low index, high index, λ).
    fn taps(o: usize, n: usize, m: usize, align_corners: bool) -> (usize, usize, f64) {
        let src = if align_corners {
            if m > 1 {
                o as f64 * (n as f64 - 1.0) / (m as f64 - 1.0)
            } else {
                0.0
            }
        } else {
            ((o as f64 + 0.5) * n as f64 / m as f64 - 0.5).max(0.0)
        };
        let lo = (src.floor() as usize).min(n - 1);
        let hi = (lo + 1).min(n - 1);
        (lo, hi, src - lo as f64)
    }

    /// Brute-force trilinear: each output is Σ over the 8 corners of the product weights.
    /// Returns the output and, per output, its (input index, weight) taps.
    #[allow(clippy::type_complexity)]
    fn trilinear_ref(
        x: &Grid,
        size: [usize; 3],
        align_corners: bool,
    ) -> (Grid, Vec<Vec<(usize, f64)>>) {
        let [b, c, d, h, w] = x.dims;
        let mut y = Grid::zeros([b, c, size[0], size[1], size[2]]);
        let mut all = vec![Vec::new(); y.data.len()];
        for bi in 0..b {
            for ci in 0..c {
                for od in 0..size[0] {
                    let (d0, d1, ld) = taps(od, d, size[0], align_corners);
                    for oh in 0..size[1] {
                        let (h0, h1, lh) = taps(oh, h, size[1], align_corners);
                        for ow in 0..size[2] {
                            let (w0, w1, lw) = taps(ow, w, size[2], align_corners);
                            let mut t = Vec::new();
                            for (id, wd) in [(d0, 1.0 - ld), (d1, ld)] {
                                for (ih, wh) in [(h0, 1.0 - lh), (h1, lh)] {
                                    for (iw, ww) in [(w0, 1.0 - lw), (w1, lw)] {
                                        t.push((x.idx(bi, ci, id, ih, iw), wd * wh * ww));
                                    }
                                }
                            }
                            let oi = y.idx(bi, ci, od, oh, ow);
                            y.data[oi] = t.iter().map(|&(i, wt)| x.data[i] * wt).sum();
                            all[oi] = t;
                        }
                    }
                }
            }
        }
        (y, all)
    }

    fn check(dims: [usize; 5], size: [usize; 3], align_corners: bool, seed: u64, how: &str) {
        let x = Grid::random(dims, seed);
        let (want, t) = trilinear_ref(&x, size, align_corners);
        let g = Grid::random(want.dims, seed + 1);
        let device = ad();
        let xt = x.tensor(&device).require_grad();
        let y = match how {
            "size" => trilinear(xt.clone(), size, align_corners),
            "bilinear passes" => bilinear_passes(xt.clone(), size, align_corners),
            _ => {
                let f = std::array::from_fn(|a| size[a] as f64 / dims[2 + a] as f64);
                trilinear_scale(xt.clone(), f, align_corners)
            }
        };
        let what = format!("trilinear {dims:?} → {size:?} align_corners {align_corners} ({how})");
        assert_eq!(y.dims(), want.dims, "{what}: shape");
        assert_close(&values(&y), &want.data, 1e-5, &what);
        let grads = (y * g.tensor(&device)).sum().backward();
        let got = values(&xt.grad(&grads).expect("x gradient"));
        let mut want_grad = vec![0.0; x.data.len()];
        for (oi, taps) in t.iter().enumerate() {
            for &(i, wt) in taps {
                want_grad[i] += g.data[oi] * wt;
            }
        }
        assert_close(&got, &want_grad, 1e-5, &format!("{what} gradient"));
    }

    #[test]
    fn trilinear_matches_brute_force_values_and_gradients() {
        for align_corners in [false, true] {
            // DualNet's anisotropic ×(1, 2, 2) on odd sizes.
            check([2, 3, 3, 5, 7], [3, 10, 14], align_corners, 10, "scale");
            // ×2 everywhere (mmFormer, HVED) and a plain resize that shrinks one axis and
            // grows the others by non-integer ratios.
            check([2, 2, 3, 4, 5], [6, 8, 10], align_corners, 20, "scale");
            check([3, 2, 5, 4, 6], [3, 7, 9], align_corners, 30, "size");
            // Only D changes (the second pass alone), and a size-1 axis.
            check([2, 3, 4, 3, 5], [7, 3, 5], align_corners, 40, "size");
            check([2, 2, 1, 3, 4], [3, 3, 4], align_corners, 50, "size");
            // The composition for devices without the CPU op.
            for (dims, size, seed) in [
                ([2, 2, 3, 4, 5], [6, 8, 10], 60),
                ([3, 2, 5, 4, 6], [3, 7, 9], 70),
            ] {
                check(dims, size, align_corners, seed, "bilinear passes");
            }
        }
    }

    #[test]
    fn trilinear_half_pixel_weights_by_hand() {
        // align_corners = false, ×2 along W of [0, 1, 3]: src = (o + ½)/2 − ½ for o = 0..5 is
        // −¼ (clamped to 0), ¼, ¾, 1¼, 1¾, 2¼ → 0, 0.25, 0.75, 1.5, 2.5, 3 (last clamps to x[2]).
        let device = Device::flex();
        let x = Tensor::<5>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 3.0], [1, 1, 1, 1, 3]),
            &device,
        );
        let y = values(&trilinear_scale(x.clone(), [1.0, 1.0, 2.0], false));
        assert_close(&y, &[0.0, 0.25, 0.75, 1.5, 2.5, 3.0], 1e-6, "half-pixel ×2");
        // align_corners = true to 5: src = o·2/4 = 0, ½, 1, 1½, 2 → 0, 0.5, 1, 2, 3.
        let y = values(&trilinear(x, [1, 1, 5], true));
        assert_close(&y, &[0.0, 0.5, 1.0, 2.0, 3.0], 1e-6, "corner-aligned");
    }

    #[test]
    fn upsample_nearest3d_copies_blocks_and_sums_gradients() {
        let x = Grid::random([2, 3, 2, 3, 4], 60);
        let f = [1, 2, 3];
        let device = ad();
        let xt = x.tensor(&device).require_grad();
        let y = upsample_nearest3d(xt.clone(), f);
        assert_eq!(y.dims(), [2, 3, 2, 6, 12]);
        let mut want = Grid::zeros([2, 3, 2, 6, 12]);
        let g = Grid::random(want.dims, 61);
        let mut want_grad = vec![0.0; x.data.len()];
        for b in 0..2 {
            for c in 0..3 {
                for d in 0..2 {
                    for h in 0..6 {
                        for w in 0..12 {
                            let src = x.idx(b, c, d / f[0], h / f[1], w / f[2]);
                            let oi = want.idx(b, c, d, h, w);
                            want.data[oi] = x.data[src];
                            want_grad[src] += g.data[oi];
                        }
                    }
                }
            }
        }
        assert_close(&values(&y), &want.data, 0.0, "nearest");
        let grads = (y * g.tensor(&device)).sum().backward();
        let got = values(&xt.grad(&grads).expect("x gradient"));
        assert_close(&got, &want_grad, 1e-6, "nearest gradient");
    }
}
