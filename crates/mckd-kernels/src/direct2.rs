//! Direct 2-D convolution, stride 1, any square-or-not kernel and padding, with the **output
//! channels** in the vector lanes (16 with AVX-512, 8 with AVX2): the AV-MNIST encoders'
//! layers (5×5 without padding, 3×3 with padding 1; 1 to 64 channels on 8×8 to 24×24
//! pixels).
//!
//! # Why
//! With im2col + GEMM these layers spend as long copying as multiplying: a sample's columns
//! (`Cin·k²` rows of 8–24 floats) are gathered, then packed again by the GEMM, and the
//! matrices are too small for the GEMM to reach its speed (`examples/avconv.rs`: 40–100
//! GFLOP/s on one core). Here a register tile holds `LANES·V` output channels × `NX` output
//! pixels (AVX-512, 32 registers: `V·NX` = 16–20 accumulators; AVX2, 16 registers: 9–12); for
//! every (input channel, tap) it loads `V` weight vectors and broadcasts `NX` input values,
//! with no copy of the input at all (padding: one zero-bordered copy of the sample's planes).
//!
//! # Layout
//! Weights are repacked once per call to `[Cin][kh][kw][Cout padded to whole vectors]` (zeros
//! in the padding lanes), 64-byte aligned (no weight load straddles two cache lines). A tile's pixels are consecutive in the flattened output, so a tile may span
//! output rows: each pixel keeps the offset of its window's corner in the (padded) input
//! plane. Results go to a per-sample `[pixel][Cout padded]` buffer, then transposed into the
//! `[Cout][pixel]` output with the bias.
//!
//! The input gradient of a stride-1 convolution is the same operation on the output gradient
//! padded by `k − 1 − p`, with the kernel flipped and input and output channels swapped
//! ([`pack_weights`] with `flip`).
//!
//! `conv3d.rs` routes here, at the AVX2 and AVX-512 levels, where it measured faster than its
//! GEMM path: the
//! forward of layers with ≥ 8 input channels, the input gradient when `k − 1 − p ≤ 1`, and
//! ([`conv2d_weight_grad`]) the weight gradient of 3- and 5-wide kernels with ≥ 8 input
//! channels (with one input channel the GEMM path measured faster).
//!
//! Sums run over (input channel, ky, kx) in that order for every output, with fused
//! multiply-adds: the forward and input gradient give the same bits at both levels; the
//! weight gradient too (each lane sums over pixels in order). The results differ from the
//! GEMM path in rounding only (tested against burn's layer in `conv3d`).

use core::mem::MaybeUninit;

use rayon::prelude::*;

use crate::flex_buf::{AlignedF32, assume_init_f32, uninit_f32};
use crate::simd::SimdLevel;
#[cfg(target_arch = "x86_64")]
use crate::simd::vec::{Avx2, Avx512, F32s};

/// Sizes of one direct 2-D convolution (stride 1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conv2d {
    /// Batch, input channels, output channels.
    pub b: usize,
    pub ci: usize,
    pub co: usize,
    /// Input height and width (unpadded).
    pub h: usize,
    pub w: usize,
    /// Kernel height and width.
    pub kh: usize,
    pub kw: usize,
    /// Zero padding on each side (rows, columns).
    pub ph: usize,
    pub pw: usize,
}

impl Conv2d {
    fn hp(&self) -> usize {
        self.h + 2 * self.ph
    }
    fn wp(&self) -> usize {
        self.w + 2 * self.pw
    }
    /// Output height and width.
    pub fn out(&self) -> (usize, usize) {
        (self.hp() + 1 - self.kh, self.wp() + 1 - self.kw)
    }
    /// Output channels rounded up to whole vectors of `lanes`.
    fn co_pad(&self, lanes: usize) -> usize {
        self.co.div_ceil(lanes) * lanes
    }
}

/// Whether the direct kernel serves this shape at the current level (AVX2 or AVX-512).
pub(crate) fn supported(c: &Conv2d) -> bool {
    crate::simd::level() != SimdLevel::Scalar
        && c.kh >= 1
        && c.kw >= 1
        && c.hp() >= c.kh
        && c.wp() >= c.kw
        && c.co >= 1
        && c.ci >= 1
}

/// Repacks `w` (`[co][ci][kh][kw]`) to `[ci][kh][kw][co padded to lanes]`; with `flip`, `w`
/// is read as the input gradient's kernel instead: `[ci][co][kh][kw]` →
/// `[co][kh][kw][ci padded]` with both kernel axes reversed (`out` channels = the forward's
/// input channels).
fn pack_weights(w: &[f32], [co, ci, kh, kw]: [usize; 4], flip: bool, lanes: usize) -> AlignedF32 {
    let taps = kh * kw;
    assert_eq!(w.len(), co * ci * taps, "direct conv: weight size");
    // (out channels, in channels) of the packed operation.
    let (n_out, n_in) = if flip { (ci, co) } else { (co, ci) };
    let pad = n_out.div_ceil(lanes) * lanes;
    let mut packed = AlignedF32::zeros(n_in * taps * pad);
    let p = packed.as_mut_slice();
    for o in 0..co {
        for i in 0..ci {
            for y in 0..kh {
                for x in 0..kw {
                    let v = w[((o * ci + i) * kh + y) * kw + x];
                    let dst = if flip {
                        // packed [o][kh-1-y][kw-1-x][i]
                        ((o * kh + (kh - 1 - y)) * kw + (kw - 1 - x)) * pad + i
                    } else {
                        ((i * kh + y) * kw + x) * pad + o
                    };
                    p[dst] = v;
                }
            }
        }
    }
    packed
}

/// The convolution `c` of `x` (`[b][ci][h][w]`) with the kernel `w` plus `bias` (`[co]`),
/// `[b][co][h'][w']`. Without `flip`, `w` is the layer's `[co][ci][kh][kw]`; with `flip`,
/// `c` is an input gradient (its `ci`/`co` the layer's `co`/`ci`) and `w` the layer's kernel
/// `[c.ci][c.co][kh][kw]`, read flipped (see [`pack_weights`]).
///
/// # Panics
/// If the sizes do not match `c` or the kernel is not [`supported`] (internal contracts).
pub(crate) fn conv2d(
    x: &[f32],
    w: &[f32],
    flip: bool,
    bias: Option<&[f32]>,
    c: &Conv2d,
) -> Vec<f32> {
    assert!(
        supported(c),
        "direct 2-D convolution not available for {c:?}"
    );
    assert_eq!(x.len(), c.b * c.ci * c.h * c.w, "direct conv: input size");
    let level = crate::simd::level();
    let layer = if flip {
        [c.ci, c.co, c.kh, c.kw]
    } else {
        [c.co, c.ci, c.kh, c.kw]
    };
    let packed = pack_weights(w, layer, flip, level.vector_lanes());
    let packed = packed.as_slice();
    let taps = tap_offsets(c);
    let taps = taps.as_slice();
    let (ho, wo) = c.out();
    let per_sample = c.co * ho * wo;
    if per_sample == 0 {
        return vec![0.0; c.b * per_sample];
    }
    // Every element is written by the transpose: no zero fill (a serial pass otherwise).
    let mut y = uninit_f32(c.b * per_sample);
    y.par_chunks_mut(per_sample).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(plane_buf, tmp), (b, out)| {
            let input = padded_sample(x, b, c, plane_buf);
            // SAFETY: `supported` checked the level, so the CPU has its features; `packed`
            // was packed for its lanes; `out` is the sample's `co·ho·wo` outputs.
            unsafe {
                match level {
                    SimdLevel::Avx512 => sample_avx512(input, packed, taps, c, tmp, out, bias),
                    _ => sample_avx2(input, packed, taps, c, tmp, out, bias),
                }
            }
        },
    );
    // SAFETY: the samples partition `y` and the transposes wrote all of each.
    unsafe { assume_init_f32(y) }
}

/// `taps[(i·kh + ky)·kw + kx] = i·hp·wp + ky·wp + kx`: the offset of every (input channel,
/// tap) from a pixel's window corner in the padded sample, in the order of the sums. The tile
/// walks this table in one flat loop: with nested (channel, ky, kx) loops, LLVM recomputed
/// the pixels' row pointers per kernel row from spilled values, and in the AVX2 3-vector
/// tile (12 accumulators, 3 weight vectors and a broadcast: all 16 registers) it moved an
/// accumulator through the stack in the inner loop.
fn tap_offsets(c: &Conv2d) -> Vec<usize> {
    let (plane, wp) = (c.hp() * c.wp(), c.wp());
    (0..c.ci)
        .flat_map(|i| {
            (0..c.kh).flat_map(move |ky| (0..c.kw).map(move |kx| i * plane + ky * wp + kx))
        })
        .collect()
}

/// Sample `b` of `x` (`[b][ci][h][w]`) with its zero border (`[ci][hp][wp]`, in `buf`), or
/// the sample itself when there is no padding.
fn padded_sample<'a>(x: &'a [f32], b: usize, c: &Conv2d, buf: &'a mut Vec<f32>) -> &'a [f32] {
    let xs = &x[b * c.ci * c.h * c.w..][..c.ci * c.h * c.w];
    if c.ph == 0 && c.pw == 0 {
        return xs;
    }
    buf.clear();
    buf.resize(c.ci * c.hp() * c.wp(), 0.0);
    pad_planes(xs, c, buf);
    buf
}

/// Copies a sample's planes into the interior of `buf` (`[ci][hp][wp]`, zero-filled by the
/// caller: the border stays zero).
fn pad_planes(xs: &[f32], c: &Conv2d, buf: &mut [f32]) {
    let (hp, wp) = (c.hp(), c.wp());
    for i in 0..c.ci {
        for r in 0..c.h {
            let src = &xs[(i * c.h + r) * c.w..][..c.w];
            buf[(i * hp + r + c.ph) * wp + c.pw..][..c.w].copy_from_slice(src);
        }
    }
}

/// Vectors of output channels in the next tile group, `rem` left: with AVX-512 up to 4; with
/// AVX2 up to `vmax`, and a remainder of `vmax + 1` split in two (4 = 2 + 2) rather than
/// leaving a one-vector tile (which loads a broadcast per multiply-add).
fn group(lanes: usize, rem: usize, vmax: usize) -> usize {
    if lanes == 16 {
        rem.min(4)
    } else if rem <= vmax {
        rem
    } else if rem == vmax + 1 {
        rem.div_ceil(2)
    } else {
        vmax
    }
}

/// Pixels per forward tile for `v` vectors of output channels: 16–20 accumulators with
/// AVX-512 (24 spilled to the stack: measured 2× slower), 9–12 with AVX2, so that the weights,
/// the broadcast value and the pixel offsets stay in registers too (AVX2 3 vectors × 4 pixels
/// needs all 16 registers, and LLVM moved one accumulator through the stack in the inner
/// loop: 3 × 3 instead).
const fn tile_pixels(lanes: usize, v: usize) -> usize {
    match (lanes, v) {
        (16, 4) => 5,
        (16, 3) => 6,
        (16, 2) => 8,
        (16, _) => 16,
        (_, 3) => 3,
        (_, 2) => 6,
        _ => 12,
    }
}

/// The most pixels of a forward tile (the scratch's slack for the last tile).
const MAX_TILE_PIXELS: usize = 16;

/// Most vectors per forward tile with AVX2.
const VMAX_AVX2: usize = 3;

/// One sample with AVX-512: tiles, then the transpose into `out`.
///
/// # Safety
/// AVX-512F; `input` the padded sample, `packed` packed for 16 lanes, `out` `co·ho·wo` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sample_avx512(
    input: &[f32],
    packed: &[f32],
    taps: &[usize],
    c: &Conv2d,
    tmp: &mut Vec<f32>,
    out: &mut [MaybeUninit<f32>],
    bias: Option<&[f32]>,
) {
    // SAFETY: as the caller guarantees.
    unsafe {
        sample::<Avx512>(input, packed, taps, c, tmp);
        transpose_out_avx512(tmp, out, c, bias);
    }
}

/// One sample with AVX2 + FMA.
///
/// # Safety
/// AVX2 and FMA; `input` the padded sample, `packed` packed for 8 lanes, `out` `co·ho·wo`
/// long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sample_avx2(
    input: &[f32],
    packed: &[f32],
    taps: &[usize],
    c: &Conv2d,
    tmp: &mut Vec<f32>,
    out: &mut [MaybeUninit<f32>],
    bias: Option<&[f32]>,
) {
    // SAFETY: as the caller guarantees.
    unsafe {
        sample::<Avx2>(input, packed, taps, c, tmp);
        transpose_out_avx2(tmp, out, c, bias);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn sample_avx512(
    _: &[f32],
    _: &[f32],
    _: &[usize],
    _: &Conv2d,
    _: &mut Vec<f32>,
    _: &mut [MaybeUninit<f32>],
    _: Option<&[f32]>,
) {
    unreachable!("supported() is false off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn sample_avx2(
    _: &[f32],
    _: &[f32],
    _: &[usize],
    _: &Conv2d,
    _: &mut Vec<f32>,
    _: &mut [MaybeUninit<f32>],
    _: Option<&[f32]>,
) {
    unreachable!("supported() is false off x86-64")
}

/// One sample: `tmp[pixel][co_pad]` (pixels rounded up to whole tiles) for every output pixel.
///
/// # Safety
/// The CPU must support `S`; `packed` packed for `S::LANES`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sample<S: F32s>(
    input: &[f32],
    packed: &[f32],
    taps: &[usize],
    c: &Conv2d,
    tmp: &mut Vec<f32>,
) {
    let (ho, wo) = c.out();
    let pixels = ho * wo;
    let lanes = S::LANES;
    let cp = c.co_pad(lanes);
    assert_eq!(
        packed.len(),
        c.ci * c.kh * c.kw * cp,
        "direct conv: packed weights"
    );
    // The offsets of `tap_offsets`: one per weight row, the last (largest) that of the last
    // channel's bottom-right tap, so every window read stays inside the padded sample.
    assert!(
        taps.len() == c.ci * c.kh * c.kw
            && taps.last()
                == Some(&((c.ci - 1) * c.hp() * c.wp() + (c.kh - 1) * c.wp() + c.kw - 1)),
        "direct conv: tap offsets"
    );
    // Every tile writes all its rows: no zero fill.
    if tmp.len() < (pixels + MAX_TILE_PIXELS) * cp {
        tmp.resize((pixels + MAX_TILE_PIXELS) * cp, 0.0);
    }
    let nv = cp / lanes;
    let mut v0 = 0;
    while v0 < nv {
        let v = group(lanes, nv - v0, VMAX_AVX2);
        let nx = tile_pixels(lanes, v);
        let mut p0 = 0;
        while p0 < pixels {
            // SAFETY (all arms): the CPU supports `S`; `tile` reads input offsets
            // base(p) + tap < plane for pixels p < `pixels` (the last pixel's window ends
            // inside the padded plane) and repeats the last pixel for the tile's tail; it
            // writes `tmp` rows p0..p0 + NX < pixels + MAX_TILE_PIXELS, lanes
            // v0·LANES .. (v0 + V)·LANES ≤ cp.
            unsafe {
                match (lanes, v) {
                    (16, 4) => {
                        tile::<S, 4, { tile_pixels(16, 4) }>(input, packed, taps, c, tmp, p0, v0)
                    }
                    (16, 3) => {
                        tile::<S, 3, { tile_pixels(16, 3) }>(input, packed, taps, c, tmp, p0, v0)
                    }
                    (16, 2) => {
                        tile::<S, 2, { tile_pixels(16, 2) }>(input, packed, taps, c, tmp, p0, v0)
                    }
                    (16, _) => {
                        tile::<S, 1, { tile_pixels(16, 1) }>(input, packed, taps, c, tmp, p0, v0)
                    }
                    (_, 3) => {
                        tile::<S, 3, { tile_pixels(8, 3) }>(input, packed, taps, c, tmp, p0, v0)
                    }
                    (_, 2) => {
                        tile::<S, 2, { tile_pixels(8, 2) }>(input, packed, taps, c, tmp, p0, v0)
                    }
                    _ => tile::<S, 1, { tile_pixels(8, 1) }>(input, packed, taps, c, tmp, p0, v0),
                }
            }
            p0 += nx;
        }
        v0 += v;
    }
}

/// `out[o][p] = tmp[p][o] + bias[o]` for the sample's `co` rows of `ho·w'` pixels (every
/// element written): 16 pixels of one channel per gather (stride `co_pad`), masked for the
/// last ones.
///
/// # Safety
/// The CPU must have AVX-512F; `tmp` has at least `ho·wo` rows of `co_pad(16)` floats and
/// `out` is `co·ho·wo` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_out_avx512(
    tmp: &[f32],
    out: &mut [MaybeUninit<f32>],
    c: &Conv2d,
    bias: Option<&[f32]>,
) {
    use core::arch::x86_64::*;
    const LANES: usize = 16;
    let (ho, wo) = c.out();
    let (pixels, cp) = (ho * wo, c.co_pad(LANES));
    assert!(tmp.len() >= pixels * cp && out.len() == c.co * pixels);
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let idx = _mm512_mullo_epi32(lane, _mm512_set1_epi32(cp as i32));
    // SAFETY: reads tmp[(p + l)·cp + o] for p + l < pixels, o < co ≤ cp; writes out[o·pixels
    // + p + l] for the same p + l (masked at the tail).
    unsafe {
        for o in 0..c.co {
            let bv = _mm512_set1_ps(bias.map_or(0.0, |b| b[o]));
            let src = tmp.as_ptr().add(o);
            let dst = out.as_mut_ptr().cast::<f32>().add(o * pixels);
            let mut p = 0;
            while p < pixels {
                let n = (pixels - p).min(LANES);
                let mask: __mmask16 = if n == LANES { 0xFFFF } else { (1u16 << n) - 1 };
                let v = _mm512_mask_i32gather_ps::<4>(
                    _mm512_setzero_ps(),
                    mask,
                    idx,
                    src.add(p * cp).cast(),
                );
                _mm512_mask_storeu_ps(dst.add(p), mask, _mm512_add_ps(v, bv));
                p += LANES;
            }
        }
    }
}

/// [`transpose_out_avx512`] with AVX2: 8 pixels per gather, the last ones one by one (the
/// same addition).
///
/// # Safety
/// The CPU must have AVX2; `tmp` has at least `ho·wo` rows of `co_pad(8)` floats and `out` is
/// `co·ho·wo` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_out_avx2(
    tmp: &[f32],
    out: &mut [MaybeUninit<f32>],
    c: &Conv2d,
    bias: Option<&[f32]>,
) {
    use core::arch::x86_64::*;
    const LANES: usize = 8;
    let (ho, wo) = c.out();
    let (pixels, cp) = (ho * wo, c.co_pad(LANES));
    assert!(tmp.len() >= pixels * cp && out.len() == c.co * pixels);
    let idx = _mm256_mullo_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(cp as i32),
    );
    // SAFETY: reads tmp[(p + l)·cp + o] for p + l < pixels, o < co ≤ cp; writes out[o·pixels
    // + p + l] for the same p + l.
    unsafe {
        for o in 0..c.co {
            let b = bias.map_or(0.0, |b| b[o]);
            let bv = _mm256_set1_ps(b);
            let src = tmp.as_ptr().add(o);
            let dst = out.as_mut_ptr().cast::<f32>().add(o * pixels);
            let mut p = 0;
            while p + LANES <= pixels {
                let v = _mm256_i32gather_ps::<4>(src.add(p * cp), idx);
                _mm256_storeu_ps(dst.add(p), _mm256_add_ps(v, bv));
                p += LANES;
            }
            for q in p..pixels {
                *dst.add(q) = *src.add(q * cp) + b;
            }
        }
    }
}

/// `V` vectors of output channels (from vector `v0`) × `NX` pixels from `p0` (the tail tile
/// repeats the last pixel).
///
/// # Safety
/// The CPU must support `S`; see the caller for the index ranges.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile<S: F32s, const V: usize, const NX: usize>(
    input: &[f32],
    packed: &[f32],
    taps: &[usize],
    c: &Conv2d,
    tmp: &mut [f32],
    p0: usize,
    v0: usize,
) {
    let lanes = S::LANES;
    let (ho, wo) = c.out();
    let last = ho * wo - 1;
    let wp = c.wp();
    let mut bases = [0usize; NX];
    for (j, b) in bases.iter_mut().enumerate() {
        let p = (p0 + j).min(last);
        *b = (p / wo) * wp + p % wo;
    }
    let cp = c.co_pad(lanes);
    // SAFETY: the CPU supports `S`; input offsets bases[j] + taps[t] (i·plane + ky·wp + kx)
    // < ci·plane (see `sample`); weight offsets (t·cp + v0·LANES + v·LANES + LANES − 1) <
    // ci·kh·kw·cp for t < taps.len() = ci·kh·kw, since v0 + V ≤ cp/LANES; `tmp` offsets as
    // the caller states.
    unsafe {
        let mut acc = [[S::zero(); V]; NX];
        let mut wv = [S::zero(); V];
        // Each pixel's window corner, so that a tap is one offset from every corner (a
        // base + index address per broadcast, no address arithmetic per pixel).
        let ip = input.as_ptr();
        let px: [*const f32; NX] = core::array::from_fn(|j| ip.add(bases[j]));
        let mut wrow = packed.as_ptr().add(v0 * lanes);
        // (input channel, ky, kx) in order, one weight row each.
        for &off in taps {
            for (v, w) in wv.iter_mut().enumerate() {
                *w = S::load(wrow.add(v * lanes));
            }
            wrow = wrow.add(cp);
            for j in 0..NX {
                let xv = S::splat(*px[j].add(off));
                for v in 0..V {
                    acc[j][v] = S::fmadd(wv[v], xv, acc[j][v]);
                }
            }
        }
        let out = tmp.as_mut_ptr().add(p0 * cp + v0 * lanes);
        for (j, row) in acc.iter().enumerate() {
            for (v, &a) in row.iter().enumerate() {
                S::store(out.add(j * cp + v * lanes), a);
            }
        }
    }
}

/// The weight gradient `[co][ci][kh][kw]` of the convolution `c` of `x` (`[b][ci][h][w]`) with
/// output gradient `dy` (`[b][co][h'][w']`), for 3- and 5-wide kernels
/// ([`weight_grad_supported`]).
///
/// One task per chunk of [`WGRAD_CHUNK`] samples, and within it one sample at a time, so that
/// the sample's output gradient (a `[pixel][co_pad]` copy) and input stay in L1 while every
/// register tile sweeps them: `LANES·V` output channels × the `kw` taps of one kernel row ×
/// `CT` input channels (AVX-512: 18–24 accumulators; AVX2: 9–12); per output pixel the tile
/// loads `V` vectors of `dy` and broadcasts `CT·kw` inputs. Each weight's sum runs over a
/// sample's pixels in order, the samples of a chunk in order, then the chunks in order: the
/// result does not depend on the thread count (nor on the level).
///
/// # Panics
/// If the sizes do not match `c` or the shape is not supported (internal contracts).
pub(crate) fn conv2d_weight_grad(x: &[f32], dy: &[f32], c: &Conv2d) -> Vec<f32> {
    assert!(
        weight_grad_supported(c),
        "direct weight gradient not available for {c:?}"
    );
    assert_eq!(x.len(), c.b * c.ci * c.h * c.w, "direct conv: input size");
    let level = crate::simd::level();
    let (ho, wo) = c.out();
    let (pixels, cp) = (ho * wo, c.co_pad(level.vector_lanes()));
    assert_eq!(
        dy.len(),
        c.b * c.co * pixels,
        "direct conv: output gradient size"
    );
    let packed_len = c.ci * c.kh * c.kw * cp;
    if c.b == 0 || pixels == 0 {
        return vec![0.0; c.co * c.ci * c.kh * c.kw];
    }
    // dy as [b][pixel][co_pad] (zeros in the padding lanes); buffers are filled per sample in
    // the parallel loops, not zeroed first on one thread.
    let mut dyt = uninit_f32(c.b * pixels * cp);
    dyt.par_chunks_mut(pixels * cp)
        .enumerate()
        .for_each(|(b, t)| {
            for px in t.chunks_exact_mut(cp) {
                for v in &mut px[c.co..] {
                    v.write(0.0);
                }
            }
            for o in 0..c.co {
                for (p, &v) in dy[(b * c.co + o) * pixels..][..pixels].iter().enumerate() {
                    t[p * cp + o].write(v);
                }
            }
        });
    // SAFETY: every pixel's `co` lanes and padding lanes were written above.
    let dyt = unsafe { assume_init_f32(dyt) };
    // Per chunk of samples: [ci][kh][kw][co_pad].
    let partials: Vec<Vec<f32>> = (0..c.b.div_ceil(WGRAD_CHUNK))
        .into_par_iter()
        .map(|k| {
            let (mut part, mut plane_buf) = (vec![0.0f32; packed_len], Vec::new());
            for b in k * WGRAD_CHUNK..((k + 1) * WGRAD_CHUNK).min(c.b) {
                let input = padded_sample(x, b, c, &mut plane_buf);
                let dyt = &dyt[b * pixels * cp..][..pixels * cp];
                // SAFETY: `weight_grad_supported` checked the level, so the CPU has its
                // features; the sizes were checked above (see `wgrad_tile` for the ranges).
                unsafe {
                    match level {
                        SimdLevel::Avx512 => wgrad_sample_avx512(input, dyt, c, &mut part),
                        _ => wgrad_sample_avx2(input, dyt, c, &mut part),
                    }
                }
            }
            part
        })
        .collect();
    // Σ over the chunks in order, element by element (in parallel over the elements).
    let mut sum = partials[0].clone();
    sum.par_chunks_mut(1024).enumerate().for_each(|(k, s)| {
        for part in &partials[1..] {
            for (s, v) in s.iter_mut().zip(&part[k * 1024..]) {
                *s += v;
            }
        }
    });
    let mut dw = vec![0.0f32; c.co * c.ci * c.kh * c.kw];
    for i in 0..c.ci {
        for ky in 0..c.kh {
            for kx in 0..c.kw {
                let row = &sum[((i * c.kh + ky) * c.kw + kx) * cp..][..c.co];
                for (o, &v) in row.iter().enumerate() {
                    dw[((o * c.ci + i) * c.kh + ky) * c.kw + kx] = v;
                }
            }
        }
    }
    dw
}

/// Samples per weight-gradient task (fixed: the order of the sums must not depend on the
/// thread count).
const WGRAD_CHUNK: usize = 4;

/// Whether [`conv2d_weight_grad`] serves this shape at the current level: 3- and 5-wide
/// kernels.
pub(crate) fn weight_grad_supported(c: &Conv2d) -> bool {
    supported(c) && matches!(c.kw, 3 | 5)
}

/// [`wgrad_sample`] with AVX-512.
///
/// # Safety
/// AVX-512F; as [`wgrad_sample`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wgrad_sample_avx512(xp: &[f32], dyt: &[f32], c: &Conv2d, part: &mut [f32]) {
    // SAFETY: as the caller guarantees.
    unsafe { wgrad_sample::<Avx512>(xp, dyt, c, part) }
}

/// [`wgrad_sample`] with AVX2 + FMA.
///
/// # Safety
/// AVX2 and FMA; as [`wgrad_sample`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wgrad_sample_avx2(xp: &[f32], dyt: &[f32], c: &Conv2d, part: &mut [f32]) {
    // SAFETY: as the caller guarantees.
    unsafe { wgrad_sample::<Avx2>(xp, dyt, c, part) }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn wgrad_sample_avx512(_: &[f32], _: &[f32], _: &Conv2d, _: &mut [f32]) {
    unreachable!("supported() is false off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn wgrad_sample_avx2(_: &[f32], _: &[f32], _: &Conv2d, _: &mut [f32]) {
    unreachable!("supported() is false off x86-64")
}

/// One sample's weight gradient added into `part` (`[ci][kh][kw][co_pad]`).
///
/// Tiles per (vectors `V`, kernel width): input channels `CT` with AVX-512 `V·kw·CT` ≤ 24
/// accumulators; with AVX2 ≤ 12 (and at most 2 vectors for 5-wide kernels: 3 × 5 would
/// spill).
///
/// # Safety
/// The CPU must support `S`; `xp` is the sample's padded input `[ci][hp][wp]`, `dyt` its
/// `[pixel][co_pad]` output gradient, `part` `ci·kh·kw·co_pad` long, `c.kw` 3 or 5.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn wgrad_sample<S: F32s>(xp: &[f32], dyt: &[f32], c: &Conv2d, part: &mut [f32]) {
    let lanes = S::LANES;
    let cp = c.co_pad(lanes);
    let vmax = if c.kw == 5 { 2 } else { 3 };
    let mut v0 = 0;
    while v0 < cp / lanes {
        let v = group(lanes, cp / lanes - v0, vmax);
        // The full tiles' CT for (lanes, v, kw) (the table below), the last input channels
        // one at a time.
        let ct = match (lanes, v, c.kw) {
            (16, 4, 3) | (16, 3, 3) => 2,
            (16, 2, 3) => 4,
            (16, 1, 3) => 8,
            (16, 4, 5) | (16, 3, 5) => 1,
            (16, 2, 5) => 2,
            (16, 1, 5) => 4,
            (_, 3, 3) => 1,
            (_, 2, 3) => 2,
            (_, 1, 3) => 4,
            (_, 2, 5) => 1,
            (_, 1, 5) => 2,
            _ => unreachable!("weight_grad_supported: kw is 3 or 5"),
        };
        let mut i0 = 0;
        while i0 < c.ci {
            let n = (c.ci - i0).min(ct);
            for ky in 0..c.kh {
                macro_rules! tiles {
                    ($v:literal, $kw:literal, $ct:literal) => {
                        if n == $ct {
                            wgrad_tile::<S, $v, $ct, $kw>(xp, dyt, c, i0, ky, v0, part)
                        } else {
                            for t in 0..n {
                                wgrad_tile::<S, $v, 1, $kw>(xp, dyt, c, i0 + t, ky, v0, part)
                            }
                        }
                    };
                }
                // SAFETY: as the caller's; v0 + v ≤ cp/LANES, i0 + n ≤ ci, ky < kh.
                unsafe {
                    match (lanes, v, c.kw) {
                        (16, 4, 3) => tiles!(4, 3, 2),
                        (16, 3, 3) => tiles!(3, 3, 2),
                        (16, 2, 3) => tiles!(2, 3, 4),
                        (16, 1, 3) => tiles!(1, 3, 8),
                        (16, 4, 5) => tiles!(4, 5, 1),
                        (16, 3, 5) => tiles!(3, 5, 1),
                        (16, 2, 5) => tiles!(2, 5, 2),
                        (16, 1, 5) => tiles!(1, 5, 4),
                        (_, 3, 3) => tiles!(3, 3, 1),
                        (_, 2, 3) => tiles!(2, 3, 2),
                        (_, 1, 3) => tiles!(1, 3, 4),
                        (_, 2, 5) => tiles!(2, 5, 1),
                        (_, 1, 5) => tiles!(1, 5, 2),
                        _ => unreachable!("weight_grad_supported: kw is 3 or 5"),
                    }
                }
            }
            i0 += n;
        }
        v0 += v;
    }
}

/// One sample: `V` vectors of output channels from vector `v0` × the `KW` taps of kernel row
/// `ky` × input channels `i0 .. i0 + CT`, added into `part`.
///
/// # Safety
/// As [`wgrad_sample`]; `KW == c.kw`, `i0 + CT ≤ c.ci`, `v0 + V ≤ co_pad/LANES`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
// `acc[t][kx][v]` is indexed by the loop counters (a register tile the compiler unrolls).
#[allow(clippy::needless_range_loop)]
unsafe fn wgrad_tile<S: F32s, const V: usize, const CT: usize, const KW: usize>(
    xp: &[f32],
    dyt: &[f32],
    c: &Conv2d,
    i0: usize,
    ky: usize,
    v0: usize,
    part: &mut [f32],
) {
    let lanes = S::LANES;
    let (ho, wo) = c.out();
    let cp = c.co_pad(lanes);
    let wp = c.wp();
    let plane = c.hp() * wp;
    debug_assert!(KW == c.kw && i0 + CT <= c.ci && v0 + V <= cp / lanes);
    // SAFETY: the CPU supports `S`; input offsets (i0 + t)·plane + (y + ky)·wp + x + kx <
    // ci·plane for y < ho, x < wo, kx < kw (the window lies inside the padded plane); dyt
    // offsets p·cp + (v0 + v)·LANES + LANES − 1 < pixels·cp; part offsets
    // (((i0 + t)·kh + ky)·kw + kx)·cp + (v0 + v)·LANES + LANES − 1 < ci·kh·kw·cp.
    unsafe {
        let mut acc = [[[S::zero(); V]; KW]; CT];
        let mut g = [S::zero(); V];
        let xb = xp.as_ptr().add(i0 * plane + ky * wp);
        let db = dyt.as_ptr().add(v0 * lanes);
        for y in 0..ho {
            let xr = xb.add(y * wp);
            let dr = db.add(y * wo * cp);
            for x in 0..wo {
                let dp = dr.add(x * cp);
                for (v, gv) in g.iter_mut().enumerate() {
                    *gv = S::load(dp.add(v * lanes));
                }
                for t in 0..CT {
                    let xs = xr.add(t * plane + x);
                    for kx in 0..KW {
                        let xv = S::splat(*xs.add(kx));
                        for v in 0..V {
                            acc[t][kx][v] = S::fmadd(g[v], xv, acc[t][kx][v]);
                        }
                    }
                }
            }
        }
        for t in 0..CT {
            for kx in 0..KW {
                let o = part
                    .as_mut_ptr()
                    .add((((i0 + t) * c.kh + ky) * KW + kx) * cp + v0 * lanes);
                for v in 0..V {
                    let p = o.add(v * lanes);
                    S::store(p, S::add(S::load(p), acc[t][kx][v]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each tap offset, added to a pixel's window corner in the padded sample, reads the input
    /// value of that (channel, ky, kx) in the window: checked for every output pixel of a
    /// padded, non-square case against `x[i][y + ky − ph][x + kx − pw]` (zero outside),
    /// computed from the unpadded input.
    #[test]
    fn tap_offsets_address_every_window_value() {
        let c = Conv2d {
            b: 2,
            ci: 3,
            co: 1,
            h: 5,
            w: 4,
            kh: 3,
            kw: 2,
            ph: 1,
            pw: 2,
        };
        let x: Vec<f32> = (0..c.b * c.ci * c.h * c.w)
            .map(|v| v as f32 + 1.0)
            .collect();
        let taps = tap_offsets(&c);
        assert_eq!(taps.len(), c.ci * c.kh * c.kw);
        let (ho, wo) = c.out();
        let mut buf = Vec::new();
        for b in 0..c.b {
            let padded = padded_sample(&x, b, &c, &mut buf).to_vec();
            for (py, px) in (0..ho).flat_map(|y| (0..wo).map(move |x| (y, x))) {
                let corner = py * c.wp() + px;
                let mut t = 0;
                for i in 0..c.ci {
                    for ky in 0..c.kh {
                        for kx in 0..c.kw {
                            let (r, col) = ((py + ky) as isize - 1, (px + kx) as isize - 2);
                            let want = if (0..c.h as isize).contains(&r)
                                && (0..c.w as isize).contains(&col)
                            {
                                x[((b * c.ci + i) * c.h + r as usize) * c.w + col as usize]
                            } else {
                                0.0
                            };
                            assert_eq!(padded[corner + taps[t]], want, "tap ({i}, {ky}, {kx})");
                            t += 1;
                        }
                    }
                }
            }
        }
    }
}
