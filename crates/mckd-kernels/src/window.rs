//! AVX-512 kernels of the fused batch norm → ReLU → 2×2 max-pool op ([`crate::fused`]) that
//! address the windows of a plane through a table of their corners and gathers, so that a
//! vector holds 16 windows wherever they lie in the plane.
//!
//! The row-wise forward (`fused::pool_plane_avx512`) fills a vector with the windows of one
//! row of the output: 4 or 5 of 16 lanes on the 8×8 and 10×10 planes of the AV-MNIST encoders'
//! second stage. The backward's two per-plane passes (the sums Σg and Σg·x̂ over the windows'
//! maxima, and `dx`) were scalar loops. Here every pass runs 16 windows per step:
//! `corner[o]` is the input offset of window `o`'s top-left value, and a window's code
//! (0..4, row-major; [`NO_GRAD`](crate::fused::NO_GRAD) when its maximum is not positive)
//! adds `(code & 1) + (code >> 1)·w`.
//!
//! The forward and `dx` do the scalar loops' operations in the same order (bit-identical);
//! the sums of the first backward pass add 16 lanes, then the lanes (a different rounding
//! than one running sum; tested against burn's layers in `fused`).

use crate::fused::Affine;
use core::mem::MaybeUninit;

/// Lanes of one AVX-512 vector of `f32`.
const LANES: usize = 16;

/// Corner offsets (`2·oh·w + 2·ow`) of the `ho × wo` windows of a plane with rows of `w`
/// values, padded with zeros to whole vectors.
pub(crate) fn corners(w: usize, ho: usize, wo: usize) -> Vec<i32> {
    let n = ho * wo;
    let mut c = vec![0i32; n.div_ceil(LANES) * LANES];
    for (o, v) in c.iter_mut().take(n).enumerate() {
        *v = i32::try_from(2 * (o / wo) * w + 2 * (o % wo)).expect("plane fits i32 offsets");
    }
    c
}

/// The forward of one plane: `o[k] = max(window maximum of x·a + b, 0)` and its code, for the
/// `corners.len()` (rounded) windows; the same operations as the row-wise kernel.
///
/// # Safety
/// AVX-512F/BW/VL; `corners` from [`corners`] for this plane's `w` and `o.len() == cd.len()`
/// windows, every window inside `xp`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn pool_plane(
    o: &mut [MaybeUninit<f32>],
    cd: &mut [u8],
    xp: &[f32],
    f: Affine,
    w: usize,
    corners: &[i32],
) {
    use core::arch::x86_64::*;
    let n = o.len();
    assert!(cd.len() == n && corners.len() >= n.div_ceil(LANES) * LANES);
    assert!(windows_inside(corners, n, w, xp.len()));
    let (a, b) = (_mm512_set1_ps(f.a), _mm512_set1_ps(f.b));
    let zero = _mm512_setzero_ps();
    let y = |v| _mm512_add_ps(_mm512_mul_ps(v, a), b);
    let (one, wv) = (_mm512_set1_epi32(1), _mm512_set1_epi32(w as i32));
    for o0 in (0..n).step_by(LANES) {
        let m = tail_mask(n - o0);
        // SAFETY: lanes in `m` are windows o0.. < n, whose four values lie inside `xp`
        // (the caller's contract); `corners` holds whole vectors.
        unsafe {
            let c = _mm512_loadu_si512(corners.as_ptr().add(o0).cast());
            let at = |off: __m512i| {
                _mm512_mask_i32gather_ps::<4>(zero, m, _mm512_add_epi32(c, off), xp.as_ptr().cast())
            };
            let v0 = y(at(_mm512_setzero_si512()));
            let v1 = y(at(one));
            let v2 = y(at(wv));
            let v3 = y(at(_mm512_add_epi32(wv, one)));
            let (out, code) = crate::fused::window_max(v0, v1, v2, v3);
            _mm512_mask_storeu_ps(o.as_mut_ptr().add(o0).cast::<f32>(), m, out);
            _mm_mask_storeu_epi8(
                cd.as_mut_ptr().add(o0).cast::<i8>(),
                m,
                _mm512_cvtepi32_epi8(code),
            );
        }
    }
}

/// Whether the last of `n` windows (the corners increase, so every one) lies inside a plane of
/// `len` values.
#[cfg(target_arch = "x86_64")]
fn windows_inside(corners: &[i32], n: usize, w: usize, len: usize) -> bool {
    n == 0 || corners[n - 1] as usize + w + 1 < len
}

/// Mask of the first `n.min(16)` lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tail_mask(n: usize) -> u16 {
    if n >= LANES {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as u16
    }
}

/// The windows `o0..o0 + 16` that pass a gradient (mask) and the input offset of their maxima.
///
/// # Safety
/// AVX-512F/BW/VL; `codes` and `corners` hold the windows `o0 .. o0 + tail`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn maxima(
    codes: &[u8],
    corners: &[i32],
    w: usize,
    o0: usize,
    tail: u16,
) -> (u16, core::arch::x86_64::__m512i) {
    use core::arch::x86_64::*;
    // SAFETY: masked load of the codes o0.. in `tail`; `corners` holds whole vectors.
    unsafe {
        let k = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(tail, codes.as_ptr().add(o0).cast()));
        let live = _mm512_mask_cmpneq_epi32_mask(
            tail,
            k,
            _mm512_set1_epi32(i32::from(crate::fused::NO_GRAD)),
        );
        let c = _mm512_loadu_si512(corners.as_ptr().add(o0).cast());
        let col = _mm512_and_si512(k, _mm512_set1_epi32(1));
        let row = _mm512_mullo_epi32(_mm512_srli_epi32::<1>(k), _mm512_set1_epi32(w as i32));
        (live, _mm512_add_epi32(c, _mm512_add_epi32(col, row)))
    }
}

/// The first backward pass over one plane: `(Σ g, Σ g·x̂)` over the windows that pass a
/// gradient, `x̂` the normalised input at each window's maximum.
///
/// # Safety
/// AVX-512F/BW/VL; `gp` and `codes` hold the plane's windows, `corners` from [`corners`], the
/// maxima inside `xp`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn grad_sums(
    xp: &[f32],
    gp: &[f32],
    codes: &[u8],
    corners: &[i32],
    f: Affine,
    w: usize,
) -> (f32, f32) {
    use core::arch::x86_64::*;
    let n = gp.len();
    assert!(codes.len() == n && corners.len() >= n.div_ceil(LANES) * LANES);
    assert!(windows_inside(corners, n, w, xp.len()));
    let (mean, inv_std) = (_mm512_set1_ps(f.mean), _mm512_set1_ps(f.inv_std));
    let (mut a, mut ax) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for o0 in (0..n).step_by(LANES) {
        // SAFETY: the lanes of `live` are windows < n whose maxima lie in `xp`.
        unsafe {
            let (live, at) = maxima(codes, corners, w, o0, tail_mask(n - o0));
            let g = _mm512_maskz_loadu_ps(live, gp.as_ptr().add(o0));
            let x =
                _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), live, at, xp.as_ptr().cast());
            let xhat = _mm512_mul_ps(_mm512_sub_ps(x, mean), inv_std);
            a = _mm512_add_ps(a, g);
            ax = _mm512_add_ps(ax, _mm512_mul_ps(g, xhat));
        }
    }
    (_mm512_reduce_add_ps(a), _mm512_reduce_add_ps(ax))
}

/// The input gradient of one plane: `d = −k·(m1 + x̂·m2)` everywhere, plus `k·g` at each
/// window's maximum that passes a gradient (the scalar loop's operations and order).
///
/// # Safety
/// AVX-512F/BW/VL; `d` and `xp` hold the plane, `gp` and `codes` its windows, `corners` from
/// [`corners`], the maxima inside the plane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn plane_dx(
    d: &mut [MaybeUninit<f32>],
    xp: &[f32],
    gp: &[f32],
    codes: &[u8],
    corners: &[i32],
    f: Affine,
    w: usize,
    [k, m1, m2]: [f32; 3],
) {
    use core::arch::x86_64::*;
    let (s, n) = (xp.len(), gp.len());
    assert!(d.len() == s && codes.len() == n && corners.len() >= n.div_ceil(LANES) * LANES);
    assert!(windows_inside(corners, n, w, s));
    let (mean, inv_std) = (_mm512_set1_ps(f.mean), _mm512_set1_ps(f.inv_std));
    let (neg_k, kv) = (_mm512_set1_ps(-k), _mm512_set1_ps(k));
    let (m1, m2) = (_mm512_set1_ps(m1), _mm512_set1_ps(m2));
    let dp = d.as_mut_ptr().cast::<f32>();
    for i0 in (0..s).step_by(LANES) {
        let m = tail_mask(s - i0);
        // SAFETY: lanes in `m` are plane offsets < s.
        unsafe {
            let x = _mm512_maskz_loadu_ps(m, xp.as_ptr().add(i0));
            let xhat = _mm512_mul_ps(_mm512_sub_ps(x, mean), inv_std);
            let v = _mm512_mul_ps(neg_k, _mm512_add_ps(m1, _mm512_mul_ps(xhat, m2)));
            _mm512_mask_storeu_ps(dp.add(i0), m, v);
        }
    }
    for o0 in (0..n).step_by(LANES) {
        // SAFETY: the lanes of `live` are windows < n; their maxima are distinct offsets of
        // the plane (one per window), all written by the loop above.
        unsafe {
            let (live, at) = maxima(codes, corners, w, o0, tail_mask(n - o0));
            let g = _mm512_maskz_loadu_ps(live, gp.as_ptr().add(o0));
            let cur = _mm512_mask_i32gather_ps::<4>(
                _mm512_setzero_ps(),
                live,
                at,
                dp.cast_const().cast(),
            );
            _mm512_mask_i32scatter_ps::<4>(
                dp.cast(),
                live,
                at,
                _mm512_add_ps(cur, _mm512_mul_ps(kv, g)),
            );
        }
    }
}

// Off x86-64 `fused` never builds a corner table (`simd::avx512` is false), so these are
// never called.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn pool_plane(
    _: &mut [MaybeUninit<f32>],
    _: &mut [u8],
    _: &[f32],
    _: Affine,
    _: usize,
    _: &[i32],
) {
    unreachable!("x86-64 only (guarded by simd::avx512)")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn grad_sums(
    _: &[f32],
    _: &[f32],
    _: &[u8],
    _: &[i32],
    _: Affine,
    _: usize,
) -> (f32, f32) {
    unreachable!("x86-64 only (guarded by simd::avx512)")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn plane_dx(
    _: &mut [MaybeUninit<f32>],
    _: &[f32],
    _: &[f32],
    _: &[u8],
    _: &[i32],
    _: Affine,
    _: usize,
    _: [f32; 3],
) {
    unreachable!("x86-64 only (guarded by simd::avx512)")
}
