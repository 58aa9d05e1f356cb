//! Direct 2-D convolution, stride 1, any square-or-not kernel and padding, with the **output
//! channels** in the AVX-512 lanes: the AV-MNIST encoders' layers (5×5 without padding, 3×3
//! with padding 1; 1 to 64 channels on 8×8 to 24×24 pixels).
//!
//! # Why
//! With im2col + GEMM these layers spend as long copying as multiplying: a sample's columns
//! (`Cin·k²` rows of 8–24 floats) are gathered, then packed again by the GEMM, and the
//! matrices are too small for the GEMM to reach its speed (`examples/avconv.rs`: 40–100
//! GFLOP/s on one core). Here a register tile holds `16·V` output channels × `NX` output
//! pixels (`V·NX` = 16–18 accumulators); for every (input channel, tap) it loads `V` weight
//! vectors and broadcasts `NX` input values, with no copy of the input at all (padding: one
//! zero-bordered copy of the sample's planes).
//!
//! # Layout
//! Weights are repacked once per call to `[Cin][kh][kw][Cout padded to 16]` (zeros in the
//! padding lanes). A tile's pixels are consecutive in the flattened output, so a tile may span
//! output rows: each pixel keeps the offset of its window's corner in the (padded) input
//! plane. Results go to a per-sample `[pixel][Cout padded]` buffer, then transposed into the
//! `[Cout][pixel]` output with the bias.
//!
//! The input gradient of a stride-1 convolution is the same operation on the output gradient
//! padded by `k − 1 − p`, with the kernel flipped and input and output channels swapped
//! ([`pack_weights`] with `flip`).
//!
//! `conv3d.rs` routes here, on AVX-512, where it measured faster than its GEMM path: the
//! forward of layers with ≥ 8 input channels, the input gradient when `k − 1 − p ≤ 1`, and
//! ([`conv2d_weight_grad`]) the weight gradient of 3- and 5-wide kernels with ≥ 8 input
//! channels (with one input channel the GEMM path measured faster).
//!
//! Sums run over (input channel, ky, kx) in that order for every output; the results differ
//! from the GEMM path in rounding only (tested against burn's layer in `conv3d`).

use core::mem::MaybeUninit;

use rayon::prelude::*;

use crate::flex_buf::{assume_init_f32, uninit_f32};

/// Lanes of one AVX-512 vector of `f32`.
const LANES: usize = 16;

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
    /// Output channels rounded up to whole vectors.
    fn co_pad(&self) -> usize {
        self.co.div_ceil(LANES) * LANES
    }
}

/// Whether the direct kernel serves this shape on this CPU.
pub(crate) fn supported(c: &Conv2d) -> bool {
    crate::simd::avx512()
        && c.kh >= 1
        && c.kw >= 1
        && c.hp() >= c.kh
        && c.wp() >= c.kw
        && c.co >= 1
        && c.ci >= 1
}

/// Repacks `w` (`[co][ci][kh][kw]`) to `[ci][kh][kw][co_pad]`; with `flip`, `w` is read as
/// the input gradient's kernel instead: `[ci][co][kh][kw]` → `[co][kh][kw][ci_pad]` with both
/// kernel axes reversed (`out` channels = the forward's input channels).
pub(crate) fn pack_weights(
    w: &[f32],
    co: usize,
    ci: usize,
    kh: usize,
    kw: usize,
    flip: bool,
) -> Vec<f32> {
    let taps = kh * kw;
    assert_eq!(w.len(), co * ci * taps, "direct conv: weight size");
    // (out channels, in channels) of the packed operation.
    let (n_out, n_in) = if flip { (ci, co) } else { (co, ci) };
    let pad = n_out.div_ceil(LANES) * LANES;
    let mut p = vec![0.0f32; n_in * taps * pad];
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
    p
}

/// The convolution of `x` (`[b][ci][h][w]`) with packed weights (see [`pack_weights`]) plus
/// `bias` (`[co]`), `[b][co][h'][w']`.
///
/// # Panics
/// If the sizes do not match `c` or the kernel is not [`supported`] (internal contracts).
pub(crate) fn conv2d(x: &[f32], packed: &[f32], bias: Option<&[f32]>, c: &Conv2d) -> Vec<f32> {
    assert!(
        supported(c),
        "direct 2-D convolution not available for {c:?}"
    );
    assert_eq!(x.len(), c.b * c.ci * c.h * c.w, "direct conv: input size");
    assert_eq!(
        packed.len(),
        c.ci * c.kh * c.kw * c.co_pad(),
        "direct conv: packed weights"
    );
    let (ho, wo) = c.out();
    let per_sample = c.co * ho * wo;
    if per_sample == 0 {
        return vec![0.0; c.b * per_sample];
    }
    // Every element is written by `transpose_out`: no zero fill (a serial pass otherwise).
    let mut y = uninit_f32(c.b * per_sample);
    y.par_chunks_mut(per_sample).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(plane_buf, tmp), (b, out)| {
            let input = padded_sample(x, b, c, plane_buf);
            // SAFETY: avx512() was checked by `supported`.
            unsafe { sample(input, packed, c, tmp) };
            // SAFETY: avx512() was checked by `supported`; `tmp` holds ≥ ho·wo rows.
            unsafe { transpose_out(tmp, out, c, bias) };
        },
    );
    // SAFETY: the samples partition `y` and `transpose_out` wrote all of each.
    unsafe { assume_init_f32(y) }
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

/// Pixels per tile for 4, 3, 2 and 1 vectors of output channels: 16–18 accumulators, so that
/// the weights, the broadcast value and the pixel offsets stay in registers too (24
/// accumulators spilled to the stack: measured 2× slower).
const NX4: usize = 5;
const NX3: usize = 6;
const NX2: usize = 8;
const NX1: usize = 16;

/// One sample: `tmp[pixel][co_pad]` (pixels rounded up to whole tiles) for every output pixel.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sample(input: &[f32], packed: &[f32], c: &Conv2d, tmp: &mut Vec<f32>) {
    let (ho, wo) = c.out();
    let pixels = ho * wo;
    let cp = c.co_pad();
    let mut v0 = 0;
    let max_nx = NX1;
    // Every tile writes all its rows: no zero fill.
    if tmp.len() < (pixels + max_nx) * cp {
        tmp.resize((pixels + max_nx) * cp, 0.0);
    }
    while v0 < cp / LANES {
        let v = (cp / LANES - v0).min(4);
        let mut p0 = 0;
        while p0 < pixels {
            // SAFETY (all arms): `tile` reads input offsets base(p) + tap < plane for pixels
            // p < `pixels` (the last pixel's window ends inside the padded plane) and repeats
            // the last pixel for the tile's tail; it writes `tmp` rows p0..p0 + NX < pixels +
            // max_nx, lanes v0·16 .. (v0 + V)·16 ≤ cp.
            unsafe {
                match v {
                    4 => tile::<4, NX4>(input, packed, c, tmp, p0, v0),
                    3 => tile::<3, NX3>(input, packed, c, tmp, p0, v0),
                    2 => tile::<2, NX2>(input, packed, c, tmp, p0, v0),
                    _ => tile::<1, NX1>(input, packed, c, tmp, p0, v0),
                }
            }
            p0 += match v {
                4 => NX4,
                3 => NX3,
                2 => NX2,
                _ => NX1,
            };
        }
        v0 += v;
    }
}

/// `out[o][p] = tmp[p][o] + bias[o]` for the sample's `co` rows of `ho·w'` pixels (every
/// element written): 16 pixels of one channel per gather (stride `co_pad`), masked for the
/// last ones.
///
/// # Safety
/// The CPU must have AVX-512F; `tmp` has at least `ho·wo` rows of `co_pad` floats and `out`
/// is `co·ho·wo` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_out(
    tmp: &[f32],
    out: &mut [MaybeUninit<f32>],
    c: &Conv2d,
    bias: Option<&[f32]>,
) {
    use core::arch::x86_64::*;
    let (ho, wo) = c.out();
    let (pixels, cp) = (ho * wo, c.co_pad());
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

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_out(_: &[f32], _: &mut [MaybeUninit<f32>], _: &Conv2d, _: Option<&[f32]>) {
    unreachable!("supported() is false off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn sample(_: &[f32], _: &[f32], _: &Conv2d, _: &mut Vec<f32>) {
    unreachable!("supported() is false off x86-64")
}

/// `V` vectors of output channels (from vector `v0`) × `NX` pixels from `p0` (the tail tile
/// repeats the last pixel).
///
/// # Safety
/// AVX-512F; see the caller for the index ranges.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const V: usize, const NX: usize>(
    input: &[f32],
    packed: &[f32],
    c: &Conv2d,
    tmp: &mut [f32],
    p0: usize,
    v0: usize,
) {
    use core::arch::x86_64::*;
    let (ho, wo) = c.out();
    let last = ho * wo - 1;
    let (hp, wp) = (c.hp(), c.wp());
    let mut bases = [0usize; NX];
    for (j, b) in bases.iter_mut().enumerate() {
        let p = (p0 + j).min(last);
        *b = (p / wo) * wp + p % wo;
    }
    let plane = hp * wp;
    let cp = c.co_pad();
    let mut acc = [[_mm512_setzero_ps(); V]; NX];
    let mut wv = [_mm512_setzero_ps(); V];
    // SAFETY: input offsets i·plane + bases[j] + ky·wp + kx < ci·plane (see `sample`); weight
    // offsets (tap·cp + v0·16 + v·16 + 15) < ci·kh·kw·cp since v0 + V ≤ cp/16; `tmp` offsets
    // as the caller states.
    unsafe {
        let ip = input.as_ptr();
        let wptr = packed.as_ptr().add(v0 * LANES);
        for i in 0..c.ci {
            let ipl = ip.add(i * plane);
            for ky in 0..c.kh {
                for kx in 0..c.kw {
                    let tap = (i * c.kh + ky) * c.kw + kx;
                    let wrow = wptr.add(tap * cp);
                    for (v, w) in wv.iter_mut().enumerate() {
                        *w = _mm512_loadu_ps(wrow.add(v * LANES));
                    }
                    let row = ipl.add(ky * wp + kx);
                    for j in 0..NX {
                        let xv = _mm512_set1_ps(*row.add(bases[j]));
                        for v in 0..V {
                            acc[j][v] = _mm512_fmadd_ps(wv[v], xv, acc[j][v]);
                        }
                    }
                }
            }
        }
        let out = tmp.as_mut_ptr().add(p0 * cp + v0 * LANES);
        for (j, row) in acc.iter().enumerate() {
            for (v, &a) in row.iter().enumerate() {
                _mm512_storeu_ps(out.add(j * cp + v * LANES), a);
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
/// register tile sweeps them: `16·V` output channels × the `kw` taps of one kernel row × `CT`
/// input channels (18–24 accumulators); per output pixel the tile loads `V` vectors of `dy`
/// and broadcasts `CT·kw` inputs. Each weight's sum runs over a sample's pixels in order, the
/// samples of a chunk in order, then the chunks in order: the result does not depend on the
/// thread count.
///
/// # Panics
/// If the sizes do not match `c` or the shape is not supported (internal contracts).
pub(crate) fn conv2d_weight_grad(x: &[f32], dy: &[f32], c: &Conv2d) -> Vec<f32> {
    assert!(
        weight_grad_supported(c),
        "direct weight gradient not available for {c:?}"
    );
    assert_eq!(x.len(), c.b * c.ci * c.h * c.w, "direct conv: input size");
    let (ho, wo) = c.out();
    let (pixels, cp) = (ho * wo, c.co_pad());
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
                // SAFETY: avx512() was checked by `weight_grad_supported`; the sizes were
                // checked above (see `wgrad_tile` for the index ranges).
                unsafe { wgrad_sample(input, dyt, c, &mut part) };
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

/// Whether [`conv2d_weight_grad`] serves this shape on this CPU: 3- and 5-wide kernels.
pub(crate) fn weight_grad_supported(c: &Conv2d) -> bool {
    supported(c) && matches!(c.kw, 3 | 5)
}

/// Input channels per weight-gradient tile for `v` vectors of output channels and a `kw`-wide
/// kernel: `v·kw·CT` ≤ 24 accumulators.
fn wgrad_channels(v: usize, kw: usize) -> usize {
    (24 / (v * kw)).max(1)
}

/// One sample's weight gradient added into `part` (`[ci][kh][kw][co_pad]`).
///
/// # Safety
/// AVX-512F; `xp` is the sample's padded input `[ci][hp][wp]`, `dyt` its `[pixel][co_pad]`
/// output gradient, `part` `ci·kh·kw·co_pad` long, `c.kw` 3 or 5.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wgrad_sample(xp: &[f32], dyt: &[f32], c: &Conv2d, part: &mut [f32]) {
    let cp = c.co_pad();
    let mut v0 = 0;
    while v0 < cp / LANES {
        let v = (cp / LANES - v0).min(4);
        let ct = wgrad_channels(v, c.kw);
        let mut i0 = 0;
        while i0 < c.ci {
            let n = (c.ci - i0).min(ct);
            for ky in 0..c.kh {
                // The full tiles with CT = `ct` (the table of `wgrad_channels`), the last
                // input channels one at a time.
                macro_rules! tiles {
                    ($v:literal, $kw:literal, $ct:literal) => {
                        if n == $ct {
                            wgrad_tile::<$v, $ct, $kw>(xp, dyt, c, i0, ky, v0, part)
                        } else {
                            for t in 0..n {
                                wgrad_tile::<$v, 1, $kw>(xp, dyt, c, i0 + t, ky, v0, part)
                            }
                        }
                    };
                }
                // SAFETY: as the caller's; v0 + v ≤ cp/16, i0 + n ≤ ci, ky < kh.
                unsafe {
                    match (v, c.kw) {
                        (4, 3) => tiles!(4, 3, 2),
                        (3, 3) => tiles!(3, 3, 2),
                        (2, 3) => tiles!(2, 3, 4),
                        (1, 3) => tiles!(1, 3, 8),
                        (4, 5) => tiles!(4, 5, 1),
                        (3, 5) => tiles!(3, 5, 1),
                        (2, 5) => tiles!(2, 5, 2),
                        (1, 5) => tiles!(1, 5, 4),
                        _ => unreachable!("weight_grad_supported: kw is 3 or 5"),
                    }
                }
            }
            i0 += n;
        }
        v0 += v;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn wgrad_sample(_: &[f32], _: &[f32], _: &Conv2d, _: &mut [f32]) {
    unreachable!("supported() is false off x86-64")
}

/// One sample: `V` vectors of output channels from vector `v0` × the `KW` taps of kernel row
/// `ky` × input channels `i0 .. i0 + CT`, added into `part`.
///
/// # Safety
/// As [`wgrad_sample`]; `KW == c.kw`, `i0 + CT ≤ c.ci`, `v0 + V ≤ co_pad/16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
// `acc[t][kx][v]` is indexed by the loop counters (a register tile the compiler unrolls).
#[allow(clippy::needless_range_loop)]
unsafe fn wgrad_tile<const V: usize, const CT: usize, const KW: usize>(
    xp: &[f32],
    dyt: &[f32],
    c: &Conv2d,
    i0: usize,
    ky: usize,
    v0: usize,
    part: &mut [f32],
) {
    use core::arch::x86_64::*;
    let (ho, wo) = c.out();
    let cp = c.co_pad();
    let wp = c.wp();
    let plane = c.hp() * wp;
    debug_assert!(KW == c.kw && i0 + CT <= c.ci && v0 + V <= cp / LANES);
    let mut acc = [[[_mm512_setzero_ps(); V]; KW]; CT];
    let mut g = [_mm512_setzero_ps(); V];
    // SAFETY: input offsets (i0 + t)·plane + (y + ky)·wp + x + kx < ci·plane for y < ho,
    // x < wo, kx < kw (the window lies inside the padded plane); dyt offsets
    // p·cp + (v0 + v)·16 + 15 < pixels·cp; part offsets
    // (((i0 + t)·kh + ky)·kw + kx)·cp + (v0 + v)·16 + 15 < ci·kh·kw·cp.
    unsafe {
        let xb = xp.as_ptr().add(i0 * plane + ky * wp);
        let db = dyt.as_ptr().add(v0 * LANES);
        for y in 0..ho {
            let xr = xb.add(y * wp);
            let dr = db.add(y * wo * cp);
            for x in 0..wo {
                let dp = dr.add(x * cp);
                for (v, gv) in g.iter_mut().enumerate() {
                    *gv = _mm512_loadu_ps(dp.add(v * LANES));
                }
                for t in 0..CT {
                    let xs = xr.add(t * plane + x);
                    for kx in 0..KW {
                        let xv = _mm512_set1_ps(*xs.add(kx));
                        for v in 0..V {
                            acc[t][kx][v] = _mm512_fmadd_ps(g[v], xv, acc[t][kx][v]);
                        }
                    }
                }
            }
        }
        for t in 0..CT {
            for kx in 0..KW {
                let o = part
                    .as_mut_ptr()
                    .add((((i0 + t) * c.kh + ky) * KW + kx) * cp + v0 * LANES);
                for v in 0..V {
                    let p = o.add(v * LANES);
                    _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), acc[t][kx][v]));
                }
            }
        }
    }
}
