//! AVX-512 and AVX2 kernels of the fused batch norm → ReLU → 2×2 max-pool op
//! ([`crate::fused`]) that address the windows of a plane through a table of their corners and
//! gathers, so that a vector holds 16 (8) windows wherever they lie in the plane.
//!
//! The row-wise forward (`fused::pool_plane_avx512`) fills a vector with the windows of one
//! row of the output: 4 or 5 of 16 lanes on the 8×8 and 10×10 planes of the AV-MNIST encoders'
//! second stage. The backward's two per-plane passes (the sums Σg and Σg·x̂ over the windows'
//! maxima, and `dx`) were scalar loops. Here every pass runs a vector of windows per step:
//! `corner[o]` is the input offset of window `o`'s top-left value, and a window's code
//! (0..4, row-major; [`NO_GRAD`](crate::fused::NO_GRAD) when its maximum is not positive)
//! adds `(code & 1) + (code >> 1)·w`.
//!
//! The forward and `dx` do the scalar loops' operations in the same order (bit-identical);
//! the sums of the first backward pass add 16 (8) lanes, then the lanes (a different rounding
//! than one running sum; tested against burn's layers in `fused`). AVX2 has no scatter: its
//! `dx` adds the maxima's `k·g` one window at a time.

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

// Off x86-64 `fused` never builds a corner table (the level is scalar), so these are never
// called.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn pool_plane(
    _: &mut [MaybeUninit<f32>],
    _: &mut [u8],
    _: &[f32],
    _: Affine,
    _: usize,
    _: &[i32],
) {
    unreachable!("x86-64 only (guarded by the AVX-512 level)")
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
    unreachable!("x86-64 only (guarded by the AVX-512 level)")
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
    unreachable!("x86-64 only (guarded by the AVX-512 level)")
}

/// [`pool_plane`] with AVX2: 8 windows per vector by gathers; the last, partial vector through
/// a masked gather and a copy of its lanes (the same operations, so the same bits and codes).
///
/// # Safety
/// AVX2; as [`pool_plane`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn pool_plane_avx2(
    o: &mut [MaybeUninit<f32>],
    cd: &mut [u8],
    xp: &[f32],
    f: Affine,
    w: usize,
    corners: &[i32],
) {
    use core::arch::x86_64::*;
    let n = o.len();
    assert!(cd.len() == n && corners.len() >= n.div_ceil(8) * 8);
    assert!(windows_inside(corners, n, w, xp.len()));
    let (a, b) = (_mm256_set1_ps(f.a), _mm256_set1_ps(f.b));
    let y = |v| _mm256_add_ps(_mm256_mul_ps(v, a), b);
    let (one, wv) = (_mm256_set1_epi32(1), _mm256_set1_epi32(w as i32));
    for o0 in (0..n).step_by(8) {
        let live = (n - o0).min(8);
        let m = lane_mask8(live);
        // SAFETY: the lanes of `m` are windows o0.. < n, whose four values lie inside `xp`
        // (the caller's contract); `corners` holds whole vectors of 8; a full vector's outputs
        // are o0 .. o0 + 8 ≤ n.
        unsafe {
            let c = _mm256_loadu_si256(corners.as_ptr().add(o0).cast());
            let at = |off: __m256i| {
                _mm256_mask_i32gather_ps::<4>(
                    _mm256_setzero_ps(),
                    xp.as_ptr(),
                    _mm256_add_epi32(c, off),
                    _mm256_castsi256_ps(m),
                )
            };
            let v0 = y(at(_mm256_setzero_si256()));
            let v1 = y(at(one));
            let v2 = y(at(wv));
            let v3 = y(at(_mm256_add_epi32(wv, one)));
            let (out, code) = crate::fused::window_max8(v0, v1, v2, v3);
            if live == 8 {
                _mm256_storeu_ps(o.as_mut_ptr().add(o0).cast::<f32>(), out);
                crate::fused::store_codes8(cd.as_mut_ptr().add(o0), code);
            } else {
                let (mut ov, mut cv) = ([0.0f32; 8], [0u8; 8]);
                _mm256_storeu_ps(ov.as_mut_ptr(), out);
                crate::fused::store_codes8(cv.as_mut_ptr(), code);
                for l in 0..live {
                    o[o0 + l].write(ov[l]);
                    cd[o0 + l] = cv[l];
                }
            }
        }
    }
}

/// All-ones in the first `n` (≤ 8) 32-bit lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn lane_mask8(n: usize) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::*;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes)
}

/// Codes, gradients and the input offsets of the maxima of windows `o0 .. o0 + 8` (a partial
/// last vector padded with [`NO_GRAD`] and zero gradients): `(live lanes, g, offsets)`.
///
/// # Safety
/// AVX2; `codes`, `gp` hold the windows `o0 ..` (at least one), `corners` whole vectors of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn maxima8(
    codes: &[u8],
    gp: &[f32],
    corners: &[i32],
    w: usize,
    o0: usize,
) -> (
    core::arch::x86_64::__m256i,
    core::arch::x86_64::__m256,
    core::arch::x86_64::__m256i,
) {
    use core::arch::x86_64::*;
    let n = (codes.len() - o0).min(8);
    let (mut kc, mut gv) = ([crate::fused::NO_GRAD; 8], [0.0f32; 8]);
    kc[..n].copy_from_slice(&codes[o0..o0 + n]);
    gv[..n].copy_from_slice(&gp[o0..o0 + n]);
    // SAFETY: the local copies hold 8 codes and gradients; `corners` holds whole vectors.
    unsafe {
        let k = _mm256_cvtepu8_epi32(_mm_loadl_epi64(kc.as_ptr().cast()));
        let dead = _mm256_cmpeq_epi32(k, _mm256_set1_epi32(i32::from(crate::fused::NO_GRAD)));
        let live = _mm256_xor_si256(dead, _mm256_set1_epi32(-1));
        let c = _mm256_loadu_si256(corners.as_ptr().add(o0).cast());
        let col = _mm256_and_si256(k, _mm256_set1_epi32(1));
        let row = _mm256_mullo_epi32(_mm256_srli_epi32::<1>(k), _mm256_set1_epi32(w as i32));
        let g = _mm256_and_ps(_mm256_loadu_ps(gv.as_ptr()), _mm256_castsi256_ps(live));
        (live, g, _mm256_add_epi32(c, _mm256_add_epi32(col, row)))
    }
}

/// [`grad_sums`] with AVX2 (8 lanes, then the lanes added pairwise).
///
/// # Safety
/// AVX2; as [`grad_sums`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn grad_sums_avx2(
    xp: &[f32],
    gp: &[f32],
    codes: &[u8],
    corners: &[i32],
    f: Affine,
    w: usize,
) -> (f32, f32) {
    use crate::simd::vec::{Avx2, F32s};
    use core::arch::x86_64::*;
    let n = gp.len();
    assert!(codes.len() == n && corners.len() >= n.div_ceil(8) * 8);
    assert!(windows_inside(corners, n, w, xp.len()));
    let (mean, inv_std) = (_mm256_set1_ps(f.mean), _mm256_set1_ps(f.inv_std));
    let (mut a, mut ax) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for o0 in (0..n).step_by(8) {
        // SAFETY: the live lanes are windows < n whose maxima lie in `xp`.
        unsafe {
            let (live, g, at) = maxima8(codes, gp, corners, w, o0);
            let x = _mm256_mask_i32gather_ps::<4>(
                _mm256_setzero_ps(),
                xp.as_ptr(),
                at,
                _mm256_castsi256_ps(live),
            );
            let xhat = _mm256_mul_ps(_mm256_sub_ps(x, mean), inv_std);
            a = _mm256_add_ps(a, g);
            ax = _mm256_add_ps(ax, _mm256_mul_ps(g, xhat));
        }
    }
    // SAFETY: AVX2 (this function's features).
    unsafe { (Avx2::sum(a), Avx2::sum(ax)) }
}

/// [`plane_dx`] with AVX2: the dense part 8 lanes at a time (scalar tail), then `k·g` added at
/// each live window's maximum one by one (the scalar loop's operations and order).
///
/// # Safety
/// AVX2; as [`plane_dx`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn plane_dx_avx2(
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
    assert!(d.len() == s && codes.len() == n && corners.len() >= n);
    assert!(windows_inside(corners, n, w, s));
    let (mean, inv_std) = (_mm256_set1_ps(f.mean), _mm256_set1_ps(f.inv_std));
    let (neg_k, m1v, m2v) = (_mm256_set1_ps(-k), _mm256_set1_ps(m1), _mm256_set1_ps(m2));
    let dp = d.as_mut_ptr().cast::<f32>();
    let mut i0 = 0;
    while i0 + 8 <= s {
        // SAFETY: plane offsets i0 .. i0 + 8 ≤ s.
        unsafe {
            let x = _mm256_loadu_ps(xp.as_ptr().add(i0));
            let xhat = _mm256_mul_ps(_mm256_sub_ps(x, mean), inv_std);
            let v = _mm256_mul_ps(neg_k, _mm256_add_ps(m1v, _mm256_mul_ps(xhat, m2v)));
            _mm256_storeu_ps(dp.add(i0), v);
        }
        i0 += 8;
    }
    for i in i0..s {
        d[i].write(-k * (m1 + f.xhat(xp[i]) * m2));
    }
    // SAFETY: every element was written just above.
    let d = unsafe { &mut *(d as *mut [MaybeUninit<f32>] as *mut [f32]) };
    for o in 0..n {
        let c = codes[o];
        if c != crate::fused::NO_GRAD {
            let at = corners[o] as usize + (c as usize & 1) + (c as usize >> 1) * w;
            d[at] += k * gp[o];
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn pool_plane_avx2(
    _: &mut [MaybeUninit<f32>],
    _: &mut [u8],
    _: &[f32],
    _: Affine,
    _: usize,
    _: &[i32],
) {
    unreachable!("x86-64 only (guarded by the AVX2 level)")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn grad_sums_avx2(
    _: &[f32],
    _: &[f32],
    _: &[u8],
    _: &[i32],
    _: Affine,
    _: usize,
) -> (f32, f32) {
    unreachable!("x86-64 only (guarded by the AVX2 level)")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn plane_dx_avx2(
    _: &mut [MaybeUninit<f32>],
    _: &[f32],
    _: &[f32],
    _: &[u8],
    _: &[i32],
    _: Affine,
    _: usize,
    _: [f32; 3],
) {
    unreachable!("x86-64 only (guarded by the AVX2 level)")
}
