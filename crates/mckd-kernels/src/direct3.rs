//! Direct 3×3×3, padding-1 convolution with stride 1 or 2 on NCDHW `f32` data, vectorised
//! along W (AVX-512 or AVX2), without im2col: the UNet's convolutions — forward and weight
//! gradient at both strides, input gradient at stride 1.
//!
//! # Why
//! With 8–16 output channels the im2col GEMM of [`crate::conv3d`] writes 27·Cin floats per
//! voxel and multiplies each by only `Cout` weights: copying the columns (`shift_copy`) cost
//! more than the GEMM itself (a quarter of the UNet step). Here each output row of `LB`
//! voxels for a block of `CB` output channels is a register tile: for every input channel and
//! kernel offset one (unaligned) load per vector of the shifted input row and `CB` fused
//! multiply-adds with broadcast weights. AVX-512 (32 registers): `CB` = 8 channels × 16 or 32
//! voxels; AVX2 (16 registers): 6 or 4 channels × 8 or 16 voxels (up to 12 accumulators, the
//! input vectors and the broadcast weight fit the register file). The input planes a task needs are
//! first copied into a zero-bordered scratch (see [`Layout`]), so the inner loop has no
//! boundary tests.
//!
//! At stride 2 each padded input row is stored as its even values, then its odd values: the
//! inputs `2·w + kw` of a row of outputs `w` are then contiguous for every `kw` (even values
//! from `w` for `kw` = 0, odd ones from `w` for 1, even ones from `w + 1` for 2), so the same
//! tiles run on them.
//!
//! The input gradient of a same-size 3×3×3 convolution is the same convolution of the output
//! gradient with the kernel flipped in space and `Cin`/`Cout` swapped (no bias).
//!
//! Every output value sums its 27·Cin products in one fixed order (channel, then kd, kh, kw)
//! with fused multiply-adds, whatever the number of threads and at both levels (the forward
//! and input gradient give the same bits with AVX2 and AVX-512; the weight gradient's lane
//! sums group differently). Used when the level ([`crate::simd`]) is AVX2 or AVX-512;
//! [`supported`] says so.
//!
//! # Rows that are not a multiple of the vector
//! The real-data UNet at 2 mm has rows of 56, 28, 14 and 7 voxels (and prediction tiles of 40,
//! 20, 10): the last tile of such a row computes whole vectors anyway and keeps only its first
//! lanes. Lanes never mix in the forward, so the extra lanes (which read the next row's
//! values or the scratch's zeroed tail, [`TAIL`]) cannot change the kept ones; the forward's
//! tail tile writes to a local row and copies the kept part. The weight gradient sums across
//! lanes, so there the output gradient's rows are first copied with zeros past their end.

use rayon::prelude::*;

use crate::flex_buf::{assume_init_f32, uninit_f32};
use crate::simd::SimdLevel;
#[cfg(target_arch = "x86_64")]
use crate::simd::vec::{Avx2, Avx512, F32s};

/// Output channels per register tile of the forward (AVX-512).
const CB512: usize = 8;
/// Output channels per register tile with AVX2: 6 × 2 vectors (12 accumulators, the two
/// input vectors and a broadcast weight: 15 of the 16 registers), and tiles of 4 where 6 does
/// not divide `Cout` (see [`channel_blocks`]). Tiles of 4 alone (8 accumulators) left the two
/// FMA units waiting on the 4-cycle FMA latency and loaded 6 values per 8 FMAs (12 per 8).
const CB256: usize = 6;
/// The smaller AVX2 tile.
const CB256_SMALL: usize = 4;
/// Output channels per register tile of the weight gradient at both levels: 4 × 3 vectors
/// (with 8 × 3 and AVX-512, LLVM loaded the 8 output-gradient vectors ahead of their
/// multiply-adds and spilled accumulators to the stack: 40 → 8 channels at 64³ measured
/// 8–10 % slower than with 4).
const WCB: usize = 4;
/// Output depth planes per task (scratch: the padded input planes they need).
const PLANES: usize = 4;

/// Sizes of one direct convolution: 3×3×3, padding 1, stride 1 or 2 along every axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Conv3 {
    /// Batch, input and output channels.
    pub b: usize,
    pub ci: usize,
    pub co: usize,
    /// Input depth, height, width.
    pub dims: [usize; 3],
    /// 1 or 2 (stride 2 needs even sizes).
    pub stride: usize,
}

impl Conv3 {
    /// Output depth, height, width.
    pub fn out(&self) -> [usize; 3] {
        self.dims.map(|n| n / self.stride)
    }
}

/// Whether the direct kernel runs at the current level for this convolution: stride 1, or
/// stride 2 with even sizes; any row length.
pub(crate) fn supported(c: &Conv3) -> bool {
    let shape_ok = match c.stride {
        1 => true,
        2 => c.dims.iter().all(|n| n.is_multiple_of(2)),
        _ => false,
    };
    shape_ok && crate::simd::level() != SimdLevel::Scalar
}

/// Whether [`weight_grad`] runs at the current level (also `Cout` a multiple of its channel
/// block, 4).
pub(crate) fn weight_grad_supported(c: &Conv3) -> bool {
    supported(c) && c.co.is_multiple_of(WCB)
}

/// The output-channel blocks of the forward's tiles at `level`, as (first channel, size):
/// AVX-512 blocks of 8; AVX2 as many blocks of 6 as leave a multiple of 4 (16 = 6 + 6 + 4,
/// 8 = 4 + 4, 40 = 6·6 + 4), else blocks of 6 and a last one of 4 or 6. The blocks may run
/// past `co` (those rows go to a junk row; the packed weights are zero there).
fn channel_blocks(co: usize, level: SimdLevel) -> Vec<(usize, usize)> {
    let sizes: Vec<usize> = if level == SimdLevel::Avx512 {
        vec![CB512; co.div_ceil(CB512)]
    } else {
        let (big, small) = (CB256, CB256_SMALL);
        match (0..=co / big)
            .rev()
            .find(|k| (co - k * big).is_multiple_of(small))
        {
            Some(k) => [vec![big; k], vec![small; (co - k * big) / small]].concat(),
            None => {
                let (k, rem) = (co / big, co % big);
                let last = if rem <= small { small } else { big };
                [vec![big; k], vec![last]].concat()
            }
        }
    };
    let mut at = 0;
    sizes
        .into_iter()
        .map(|n| {
            at += n;
            (at - n, n)
        })
        .collect()
}

/// `[batch, Cin, D, H, W]` ∗ `[Cout, Cin, 3, 3, 3]` (+ `bias`), padding 1, stride `c.stride`:
/// `[batch, Cout, D/s, H/s, W/s]`.
///
/// # Panics
/// If [`supported`] is false, or the slices do not match the sizes.
pub(crate) fn conv3x3x3(x: &[f32], w: &[f32], bias: Option<&[f32]>, c: &Conv3) -> Vec<f32> {
    assert!(
        supported(c),
        "direct conv: unsupported level or shape {c:?}"
    );
    let level = crate::simd::level();
    let (ci, co) = (c.ci, c.co);
    let [d, h, wd] = c.dims;
    let [dout, hout, wout] = c.out();
    let vol_out = dout * hout * wout;
    assert_eq!(x.len(), c.b * ci * d * h * wd);
    assert_eq!(w.len(), co * ci * 27);
    // wt[(c, k)][cpad]: weights of one input channel and offset for all output channels.
    let blocks = channel_blocks(co, level);
    let cpad = blocks.last().map_or(0, |&(b, n)| b + n);
    let mut wt = vec![0.0f32; ci * 27 * cpad];
    for o in 0..co {
        for i in 0..ci {
            for k in 0..27 {
                wt[(i * 27 + k) * cpad + o] = w[(o * ci + i) * 27 + k];
            }
        }
    }
    let mut y = uninit_f32(c.b * co * vol_out);
    let out = SendPtr(y.as_mut_ptr().cast::<f32>());
    tasks(c).into_par_iter().for_each(|(bi, d0)| {
        let np = PLANES.min(dout - d0);
        let lay = Layout::new(ci, c.stride * (np - 1) + 3, [h, wd], c.stride, level);
        with_pad_scratch(lay.len, |pad| {
            pad_planes(x, bi, c, c.stride * d0, &lay, pad);
            let geo = Tile::new(ci, cpad, lay);
            let task = Task {
                bi,
                d0,
                np,
                co,
                blocks: &blocks,
                stride: c.stride,
                out_dims: c.out(),
                bias,
                out,
            };
            // SAFETY: `supported` checked the level (so the CPU has its features); `pad`
            // holds the task's padded planes and `wt` the packed weights (see `task_rows`).
            unsafe {
                match level {
                    SimdLevel::Avx512 => task_avx512(pad, &wt, &geo, &task),
                    _ => task_avx2(pad, &wt, &geo, &task),
                }
            }
        });
    });
    // SAFETY: the tasks partition (batch, output depth planes) and each writes every
    // (co, row, w) of its planes.
    unsafe { assume_init_f32(y) }
}

/// The tasks of `c`: (batch item, first output plane) with up to [`PLANES`] planes each.
fn tasks(c: &Conv3) -> Vec<(usize, usize)> {
    let dout = c.out()[0];
    (0..c.b)
        .flat_map(|bi| (0..dout).step_by(PLANES).map(move |p| (bi, p)))
        .collect()
}

/// One forward task's place in the output: batch item `bi`, output depth planes
/// `d0 .. d0 + np`.
struct Task<'a> {
    bi: usize,
    d0: usize,
    np: usize,
    co: usize,
    /// The output-channel blocks of the tiles ([`channel_blocks`]).
    blocks: &'a [(usize, usize)],
    stride: usize,
    out_dims: [usize; 3],
    bias: Option<&'a [f32]>,
    out: SendPtr,
}

/// [`task_rows`] with AVX-512: 8 channels × 16 or 32 voxels.
///
/// # Safety
/// AVX-512F; as [`task_rows`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn task_avx512(pad: &[f32], wt: &[f32], geo: &Tile, t: &Task) {
    // SAFETY: as the caller guarantees.
    unsafe { task_rows::<Avx512, CB512, 2, CB512, 2>(pad, wt, geo, t) }
}

/// [`task_rows`] with AVX2 + FMA: 6 or 4 channels × 8 or 16 voxels (with 4 × 24 voxels, 12
/// accumulators and 3 input vectors, the 16 registers did not hold the tile, its accumulators
/// went to the stack and it measured 18–20 % slower).
///
/// # Safety
/// AVX2 and FMA; as [`task_rows`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2(pad: &[f32], wt: &[f32], geo: &Tile, t: &Task) {
    // SAFETY: as the caller guarantees.
    unsafe { task_rows::<Avx2, CB256, 2, CB256_SMALL, 2>(pad, wt, geo, t) }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn task_avx512(_: &[f32], _: &[f32], _: &Tile, _: &Task) {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn task_avx2(_: &[f32], _: &[f32], _: &Tile, _: &Task) {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
}

/// Every output row of one task (planes `d0 ..`, all rows, the channel blocks `t.blocks`): tiles
/// of `CB` channels × up to `V` vectors along W, or `CB2` × up to `V2`.
///
/// # Safety
/// The CPU must support `S`; `pad` holds the task's `ci` padded channels (`geo.lay`), `wt` the
/// weights packed with `geo.cpad` ≥ the end of every block; `t.out` points to the output, of
/// which this task alone writes its planes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn task_rows<S: F32s, const CB: usize, const V: usize, const CB2: usize, const V2: usize>(
    pad: &[f32],
    wt: &[f32],
    geo: &Tile,
    t: &Task,
) {
    let [_, h, wd] = t.out_dims;
    for q in 0..t.np {
        for r in 0..h {
            for &(cb, n) in t.blocks {
                let vmax = if n == CB { V } else { V2 };
                let mut w0 = 0;
                while w0 < wd {
                    // The row's last tile may cover past its end (see the module doc).
                    let v = (wd - w0).div_ceil(S::LANES).min(vmax);
                    let at = [q, r, w0, v, cb];
                    // SAFETY: the caller's contract.
                    unsafe {
                        if n == CB {
                            block::<S, CB, V>(pad, wt, geo, t, at);
                        } else {
                            assert_eq!(n, CB2, "channel block of an unexpected size");
                            block::<S, CB2, V2>(pad, wt, geo, t, at);
                        }
                    }
                    w0 += v * S::LANES;
                }
            }
        }
    }
}

/// One tile of [`task_rows`]: `at` = [task plane `q`, row `r`, first column `w0`, vectors `v`
/// (1 ..= `VMAX`), first channel `cb`], `CB` channels. A tile past the row's end (`w0 +
/// v·LANES` > the output width, by less than a vector) writes to local rows, then copies the
/// row's part.
///
/// # Safety
/// As [`task_rows`], with `cb + CB ≤ geo.cpad` and `w0 < ` the output width.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block<S: F32s, const CB: usize, const VMAX: usize>(
    pad: &[f32],
    wt: &[f32],
    geo: &Tile,
    t: &Task,
    [q, r, w0, v, cb]: [usize; 5],
) {
    let [_, h, wd] = t.out_dims;
    let plane = h * wd;
    let vol = t.out_dims[0] * plane;
    let s = t.stride;
    assert!((1..=VMAX).contains(&v) && VMAX <= 3 && VMAX * S::LANES <= JUNK);
    let base = s * q * geo.lay.plane + s * r * geo.lay.row + w0;
    let keep = (wd - w0).min(v * S::LANES);
    let tail = keep < v * S::LANES;
    // Output rows y[bi, o, d0 + q, r, w0..] of the block's channels (a junk row for channels
    // past Cout; local rows for a tail tile) and their biases.
    let mut junk = [0.0f32; JUNK];
    // Written whole by the tile before its first `keep` values are read: not cleared per tile.
    let mut local = core::mem::MaybeUninit::<[[f32; JUNK]; CB]>::uninit();
    let local = local.as_mut_ptr().cast::<f32>();
    let mut rows = [junk.as_mut_ptr(); CB];
    let mut outs = [core::ptr::null_mut(); CB];
    let mut bv = [0.0f32; CB];
    for o in cb..(cb + CB).min(t.co) {
        let off = (t.bi * t.co + o) * vol + (t.d0 + q) * plane + r * wd + w0;
        // SAFETY: within `y` (off + keep ≤ its length).
        outs[o - cb] = unsafe { t.out.get().add(off) };
        rows[o - cb] = if tail {
            // SAFETY: row o − cb of `local` (CB rows of JUNK floats).
            unsafe { local.add((o - cb) * JUNK) }
        } else {
            outs[o - cb]
        };
        bv[o - cb] = t.bias.map_or(0.0, |bs| bs[o]);
    }
    // SAFETY: the caller's contract; the slices cover every index the kernel reads (see
    // `tile`; a tail tile's extra lanes read at most a vector past the row, inside the
    // scratch's `TAIL`); it writes v·LANES floats to each row: this task's own elements of `y`
    // (tasks partition (batch, depth planes); `y` outlives the loop), `junk` or `local`.
    unsafe {
        match v {
            1 => tile::<S, CB, 1>(pad, wt, geo, base, cb, rows, bv),
            2 => tile::<S, CB, 2>(pad, wt, geo, base, cb, rows, bv),
            _ => tile::<S, CB, VMAX>(pad, wt, geo, base, cb, rows, bv),
        }
        if tail {
            for (o, &out) in outs.iter().enumerate().take((cb + CB).min(t.co) - cb) {
                core::ptr::copy_nonoverlapping(local.add(o * JUNK), out, keep);
            }
        }
    }
}

/// Floats of the junk row that takes the tiles' rows past `Cout` (≥ the widest tile).
const JUNK: usize = 32;

/// The input gradient of a stride-1 [`conv3x3x3`]: `dx = conv(dy, w')` with
/// `w'[c, o, k] = w[o, c, 26 − k]`.
///
/// # Panics
/// If `c.stride` is not 1 or [`supported`] is false.
pub(crate) fn input_grad(dy: &[f32], w: &[f32], c: &Conv3) -> Vec<f32> {
    assert_eq!(c.stride, 1, "direct input gradient: stride 1 only");
    let (ci, co) = (c.ci, c.co);
    let mut wf = vec![0.0f32; ci * co * 27];
    for o in 0..co {
        for i in 0..ci {
            for k in 0..27 {
                wf[(i * co + o) * 27 + k] = w[(o * ci + i) * 27 + (26 - k)];
            }
        }
    }
    let t = Conv3 {
        ci: co,
        co: ci,
        ..*c
    };
    conv3x3x3(dy, &wf, None, &t)
}

/// Zeroed floats after a task's padded input in its scratch: the extra lanes of a row's last
/// tile read up to a vector past the last row (see the module doc).
const TAIL: usize = 16;

/// Where a task's zero-bordered input lives in its scratch: the value of channel `c`, padded
/// plane `q`, padded row `r`, position `w` (of `W + 2`) at `c·chan + q·plane + r·row + w`. At
/// stride 2 a row holds its `(W + 2)/2` even values, then its odd values (`odd` is the offset
/// of the odd half; at stride 1 the row is in order).
///
/// With AVX-512 channel-major (`[channel][plane][row][W + 2]`); with AVX2 the channels are
/// interleaved row by row (`[plane][row][channel][W + 2]`), so that the 9 input rows of every
/// channel that an output row needs are 9 contiguous runs: its tiles of 4 output channels
/// sweep those rows twice for 8 channels (AVX-512 once), and the interleaved layout measured
/// faster for them and slower for AVX-512 (40 → 8 channels at 64³, forward).
#[derive(Debug, Clone, Copy)]
struct Layout {
    chan: usize,
    plane: usize,
    row: usize,
    /// Offsets in a row of the inputs of kernel columns kw = 0, 1, 2 for output position 0.
    kw: [usize; 3],
    /// Padded planes held.
    planes: usize,
    /// Floats of the whole scratch: the padded input, then [`TAIL`] zeros.
    len: usize,
}

impl Layout {
    /// `ci` channels of `planes` padded planes of `h + 2` rows of `wd + 2` values, for a
    /// convolution of stride `stride` at `level`.
    fn new(ci: usize, planes: usize, [h, wd]: [usize; 2], stride: usize, level: SimdLevel) -> Self {
        let wp = wd + 2;
        let kw = if stride == 2 {
            [0, wp / 2, 1]
        } else {
            [0, 1, 2]
        };
        if level != SimdLevel::Avx2 {
            let plane = (h + 2) * wp;
            let chan = planes * plane;
            return Self {
                chan,
                plane,
                row: wp,
                kw,
                planes,
                len: ci * chan + TAIL,
            };
        }
        let row = ci * wp;
        let plane = (h + 2) * row;
        Self {
            chan: wp,
            plane,
            row,
            kw,
            planes,
            len: planes * plane + TAIL,
        }
    }
}

/// Zero-bordered copy of the input planes `p0 − 1 ..` (as many as `lay` holds) of every
/// channel of batch item `bi` into `pad` (laid out as `lay`; at stride 2 each row as its even
/// then its odd values).
fn pad_planes(x: &[f32], bi: usize, c: &Conv3, p0: usize, lay: &Layout, pad: &mut [f32]) {
    let [d, h, wd] = c.dims;
    let (plane, vol) = (h * wd, d * h * wd);
    let wp = wd + 2;
    assert!(pad.len() >= lay.len);
    pad[lay.len - TAIL..lay.len].fill(0.0);
    for ch in 0..c.ci {
        let xc = &x[(bi * c.ci + ch) * vol..][..vol];
        for q in 0..lay.planes {
            let src_d = (p0 + q) as isize - 1;
            for r in 0..h + 2 {
                let row = &mut pad[ch * lay.chan + q * lay.plane + r * lay.row..][..wp];
                if src_d < 0 || src_d >= d as isize || r == 0 || r == h + 1 {
                    row.fill(0.0);
                    continue;
                }
                let src = &xc[src_d as usize * plane + (r - 1) * wd..][..wd];
                if c.stride == 2 {
                    // Padded position j = 2m (even half, index m) holds x[2m − 1]; j = 2m + 1
                    // (odd half) holds x[2m]; positions 0 and W + 1 are the zero border.
                    let half = wp / 2;
                    let (even, odd) = row.split_at_mut(half);
                    even[0] = 0.0;
                    odd[half - 1] = 0.0;
                    for m in 0..wd / 2 {
                        even[m + 1] = src[2 * m + 1];
                        odd[m] = src[2 * m];
                    }
                } else {
                    row[0] = 0.0;
                    row[wp - 1] = 0.0;
                    row[1..=wd].copy_from_slice(src);
                }
            }
        }
    }
}

/// The weight gradient of [`conv3x3x3`], `[Cout, Cin, 27]`: per task (batch item, 4 output
/// depth planes) `dW_t[o, c, k] = Σ_outputs dy[o, v] · x[c, s·v + off(k)]` with 4 output
/// channels × 3 kw offsets in registers (vectors of 16 lanes with AVX-512, 8 with AVX2; summed
/// across lanes at the end), sweeping blocks of ~256 outputs (rows) through
/// every input channel and offset so the block's `dy` stays in L1; then the task partials
/// added in task order (independent of the thread count).
///
/// # Panics
/// If [`weight_grad_supported`] is false.
pub(crate) fn weight_grad(x: &[f32], dy: &[f32], c: &Conv3) -> Vec<f32> {
    assert!(
        weight_grad_supported(c),
        "direct weight gradient: unsupported {c:?}"
    );
    let level = crate::simd::level();
    let (ci, co) = (c.ci, c.co);
    let [d, h, wd] = c.dims;
    let [dout, ..] = c.out();
    let vol_out: usize = c.out().iter().product();
    assert_eq!(x.len(), c.b * ci * d * h * wd);
    assert_eq!(dy.len(), c.b * co * vol_out);
    let partials: Vec<Vec<f32>> = tasks(c)
        .into_par_iter()
        .map(|(bi, d0)| {
            let np = PLANES.min(dout - d0);
            let lay = Layout::new(ci, c.stride * (np - 1) + 3, [h, wd], c.stride, level);
            let mut dw = vec![0.0f32; co * ci * 27];
            let dyb = &dy[bi * co * vol_out..][..co * vol_out];
            let [_, hout, wout] = c.out();
            let wpad = wout.next_multiple_of(level.vector_lanes());
            // The output gradient as the task reads it: the batch item's rows where they are
            // whole vectors, else its planes copied into rows of whole vectors, zero past the
            // row (the lane sums take no foreign value).
            let packed: Vec<f32>;
            let (dyv, dy_at): (&[f32], DyRows) = if wpad == wout {
                let plane = hout * wout;
                let at = DyRows {
                    chan: dout * plane,
                    plane,
                    row: wout,
                    d0,
                    wpad,
                };
                (dyb, at)
            } else {
                let plane = hout * wpad;
                let mut rows = vec![0.0f32; co * np * plane];
                for (o, po) in rows.chunks_exact_mut(np * plane).enumerate() {
                    let src = &dyb[(o * dout + d0) * hout * wout..][..np * hout * wout];
                    for (dst, row) in po.chunks_exact_mut(wpad).zip(src.chunks_exact(wout)) {
                        dst[..wout].copy_from_slice(row);
                    }
                }
                packed = rows;
                let at = DyRows {
                    chan: np * plane,
                    plane,
                    row: wpad,
                    d0: 0,
                    wpad,
                };
                (&packed, at)
            };
            with_pad_scratch(lay.len, |pad| {
                pad_planes(x, bi, c, c.stride * d0, &lay, pad);
                let t = WgradTask {
                    ci,
                    co,
                    out_dims: c.out(),
                    stride: c.stride,
                    d0,
                    np,
                    lay,
                    dy: dy_at,
                };
                // SAFETY: `weight_grad_supported` checked the level (so the CPU has its
                // features) and that `co` is a multiple of its channel block; sizes as
                // asserted above and in the callee.
                unsafe {
                    match level {
                        SimdLevel::Avx512 => wgrad_task_avx512(pad, dyv, &t, &mut dw),
                        _ => wgrad_task_avx2(pad, dyv, &t, &mut dw),
                    }
                }
            });
            dw
        })
        .collect();
    let mut dw = vec![0.0f32; co * ci * 27];
    for p in &partials {
        dw.iter_mut().zip(p).for_each(|(a, v)| *a += v);
    }
    dw
}

/// Sizes of one weight-gradient task (batch item, output depth planes `d0 .. d0 + np`).
struct WgradTask {
    ci: usize,
    co: usize,
    out_dims: [usize; 3],
    stride: usize,
    d0: usize,
    np: usize,
    /// The task's scratch.
    lay: Layout,
    /// Where its output gradient's rows are.
    dy: DyRows,
}

/// The output gradient a weight-gradient task reads: channel `o`'s value at task plane `q`,
/// row `r`, column `w` at `o·chan + (d0 + q)·plane + r·row + w`, for `w < wpad` (the output
/// width rounded up to whole vectors; zeros past the width).
#[derive(Debug, Clone, Copy)]
struct DyRows {
    chan: usize,
    plane: usize,
    row: usize,
    d0: usize,
    wpad: usize,
}

/// [`wgrad_task`] with AVX-512 (4 channels × 3 offsets × 16 lanes).
///
/// # Safety
/// AVX-512F; as [`wgrad_task`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wgrad_task_avx512(pad: &[f32], dyb: &[f32], t: &WgradTask, dw: &mut [f32]) {
    // SAFETY: as the caller guarantees.
    unsafe { wgrad_task::<Avx512, WCB>(pad, dyb, t, dw) }
}

/// [`wgrad_task`] with AVX2 + FMA (4 channels × 3 offsets × 8 lanes).
///
/// # Safety
/// AVX2 and FMA; as [`wgrad_task`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wgrad_task_avx2(pad: &[f32], dyb: &[f32], t: &WgradTask, dw: &mut [f32]) {
    // SAFETY: as the caller guarantees.
    unsafe { wgrad_task::<Avx2, WCB>(pad, dyb, t, dw) }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn wgrad_task_avx512(_: &[f32], _: &[f32], _: &WgradTask, _: &mut [f32]) {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn wgrad_task_avx2(_: &[f32], _: &[f32], _: &WgradTask, _: &mut [f32]) {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
}

/// One task's weight gradient into `dw` (`[Cout, Cin, 27]`, overwritten).
///
/// # Safety
/// The CPU must support `S`; `pad` holds the task's `ci` padded channels (`t.lay`), `dyb` the
/// batch item's output gradient (`co` channels, laid out as `t.dy`), `dw` `co·ci·27` floats;
/// `co` a multiple of `CB`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn wgrad_task<S: F32s, const CB: usize>(
    pad: &[f32],
    dyb: &[f32],
    t: &WgradTask,
    dw: &mut [f32],
) {
    let (ci, co, h) = (t.ci, t.co, t.out_dims[1]);
    assert!(co.is_multiple_of(CB) && dw.len() == co * ci * 27);
    // Lane accumulators of every (c, output block, kd, kh): CB × 3 vectors each, carried
    // across blocks of rows so that a block's dy rows stay in L1 while every input channel
    // and offset uses them. Each lane still sums its products in (plane, row, column) order.
    let nob = co / CB;
    let slot = CB * 3 * S::LANES;
    let mut accm = vec![0.0f32; ci * nob * 9 * slot];
    let rb = (256 / t.dy.wpad).max(1);
    for q in 0..t.np {
        for r0 in (0..h).step_by(rb) {
            for c in 0..ci {
                // SAFETY: the CPU supports `S` (the caller's contract); bounds in the callee.
                unsafe { wgrad_block::<S, CB>(pad, dyb, t, &mut accm, c, q, r0..(r0 + rb).min(h)) };
            }
        }
    }
    for c in 0..ci {
        for obi in 0..nob {
            for k2 in 0..9 {
                let at = ((c * nob + obi) * 9 + k2) * slot;
                for o in 0..CB {
                    for kw in 0..3 {
                        let lanes = &accm[at + (o * 3 + kw) * S::LANES..][..S::LANES];
                        let to = ((obi * CB + o) * ci + c) * 27 + k2 * 3 + kw;
                        // SAFETY: the CPU supports `S`; `lanes` holds one vector.
                        dw[to] = unsafe { S::sum(S::load(lanes.as_ptr())) };
                    }
                }
            }
        }
    }
}

/// The accumulators of input channel `c` (every output block and (kd, kh)) over the output
/// rows `rows` of plane `q`. A function rather than a closure so that it inlines into the
/// caller's `#[target_feature]` function (a closure compiled on its own runs the vector
/// helpers as calls: measured 20× slower).
///
/// # Safety
/// The CPU must support `S`; as [`wgrad_task`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_block<S: F32s, const CB: usize>(
    pad: &[f32],
    dyb: &[f32],
    t: &WgradTask,
    accm: &mut [f32],
    c: usize,
    q: usize,
    rows: core::ops::Range<usize>,
) {
    let nob = t.co / CB;
    let slot = CB * 3 * S::LANES;
    // Channel c's rows: the scratch from its first value on.
    let pc = &pad[c * t.lay.chan..t.lay.len];
    for obi in 0..nob {
        for k2 in 0..9 {
            let at = ((c * nob + obi) * 9 + k2) * slot;
            let acc = &mut accm[at..at + slot];
            let (kd, kh) = (k2 / 3, k2 % 3);
            let rows = WgradRows {
                q,
                rows: rows.clone(),
                ob: obi * CB,
                kd,
                kh,
            };
            // SAFETY: the CPU supports `S`; bounds in the callee's asserts.
            unsafe { wgrad_rows::<S, CB>(pc, t, dyb, &rows, acc) };
        }
    }
}

/// The rows of one [`wgrad_rows`] call: output plane `q` of the task, output rows `rows`,
/// output channels `ob ..`, kernel offsets (`kd`, `kh`).
struct WgradRows {
    q: usize,
    rows: core::ops::Range<usize>,
    ob: usize,
    kd: usize,
    kh: usize,
}

/// `acc[(o·3 + kw)·LANES + l] += Σ_{r ∈ rows, w ≡ l (mod LANES)} dy[ob + o, d0 + q, r, w] ·
/// x[s·q + kd, s·r + kh, s·w + kw]` (`pc`: the scratch from one input channel's first value
/// on, laid out as `t.lay`; `dyb` laid out as `t.dy`), lane by lane in row and column order.
///
/// # Safety
/// The CPU must support `S`; `t.dy.wpad` a multiple of `S::LANES`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn wgrad_rows<S: F32s, const CB: usize>(
    pc: &[f32],
    t: &WgradTask,
    dyb: &[f32],
    w: &WgradRows,
    acc: &mut [f32],
) {
    let lanes = S::LANES;
    let [d, h, wd] = t.out_dims;
    let (lay, s, dl) = (&t.lay, t.stride, t.dy);
    let (q, kd, kh, ob) = (w.q, w.kd, w.kh, w.ob);
    let wpad = dl.wpad;
    assert!(wpad.is_multiple_of(lanes) && wpad >= wd && wpad < wd + lanes);
    assert!(t.d0 + q < d && w.rows.end <= h && dl.row >= wpad);
    assert!(
        acc.len() >= CB * 3 * lanes
            && (w.rows.is_empty()
                || (ob + CB - 1) * dl.chan
                    + (dl.d0 + q) * dl.plane
                    + (w.rows.end - 1) * dl.row
                    + wpad
                    <= dyb.len())
    );
    // Past `wd` the input rows run at most a vector on (the next row, or the scratch's tail).
    assert!(
        w.rows.is_empty()
            || (s * q + kd) * lay.plane
                + (s * (w.rows.end - 1) + kh) * lay.row
                + lay.kw[1].max(lay.kw[2])
                + wpad
                <= pc.len()
    );
    // SAFETY (all intrinsics and pointer accesses below): the CPU supports `S`; `acc` holds
    // CB·3 vectors (asserted); dy rows of channels ob..ob+CB at plane d0 + q, row r, `wpad`
    // values each (asserted for the last); the input row (s·q + kd, s·r + kh) holds the
    // inputs of kw at kw-offset + w for w < W', then finite values up to `wpad` (asserted for
    // the last row; earlier rows come before it).
    unsafe {
        let mut a = [[S::zero(); 3]; CB];
        for (o, ao) in a.iter_mut().enumerate() {
            for (kw, v) in ao.iter_mut().enumerate() {
                *v = S::load(acc.as_ptr().add((o * 3 + kw) * lanes));
            }
        }
        for r in w.rows.clone() {
            let xrow = pc
                .as_ptr()
                .add((s * q + kd) * lay.plane + (s * r + kh) * lay.row);
            let yoff = (dl.d0 + q) * dl.plane + r * dl.row;
            for x in (0..wpad).step_by(lanes) {
                let x0 = S::load(xrow.add(lay.kw[0] + x));
                let x1 = S::load(xrow.add(lay.kw[1] + x));
                let x2 = S::load(xrow.add(lay.kw[2] + x));
                for (o, ao) in a.iter_mut().enumerate() {
                    let g = S::load(dyb.as_ptr().add((ob + o) * dl.chan + yoff + x));
                    ao[0] = S::fmadd(g, x0, ao[0]);
                    ao[1] = S::fmadd(g, x1, ao[1]);
                    ao[2] = S::fmadd(g, x2, ao[2]);
                }
            }
        }
        for (o, ao) in a.iter().enumerate() {
            for (kw, &v) in ao.iter().enumerate() {
                S::store(acc.as_mut_ptr().add((o * 3 + kw) * lanes), v);
            }
        }
    }
}

/// Sizes of a task's padded scratch and weights.
struct Tile {
    ci: usize,
    cpad: usize,
    /// The task's padded input.
    lay: Layout,
    /// `roff[c·9 + kd·3 + kh]`: offset of the input row of channel `c` and kernel offsets
    /// (`kd`, `kh`) from a tile's base, in summation order. One flat loop over it keeps a
    /// single row pointer live: with the 27 offsets unrolled per channel, LLVM kept nine row
    /// pointers and hoisted the weight broadcasts, ran out of the 16 AVX2 registers and
    /// spilled both to the stack in the inner loop.
    roff: Vec<usize>,
}

impl Tile {
    fn new(ci: usize, cpad: usize, lay: Layout) -> Self {
        let roff = (0..ci)
            .flat_map(|c| {
                (0..9).map(move |k| c * lay.chan + (k / 3) * lay.plane + (k % 3) * lay.row)
            })
            .collect();
        Self {
            ci,
            cpad,
            lay,
            roff,
        }
    }
}

/// `rows[o][l] = bias[o] + Σ_c Σ_k wt[(c, k), cb + o] · pad[c, base + off(k) + l]` for
/// `l < LANES·V`, `o < CB` (`off(k)`: plane, row and column offsets of the layout).
///
/// # Safety
/// The CPU must support `S`. `pad` must hold `geo.ci` channels laid out as `geo.lay` with
/// `base + (ci − 1)·chan + 2·plane + 2·row + kw[2] + LANES·V ≤ lay.len` (and `kw[1] + LANES·V`
/// inside the row); `wt` must hold `ci·27·cpad` floats with `cb + CB ≤ cpad`; every `rows[o]`
/// must be valid for writing `LANES·V` floats that nobody else accesses during the call.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile<S: F32s, const CB: usize, const V: usize>(
    pad: &[f32],
    wt: &[f32],
    geo: &Tile,
    base: usize,
    cb: usize,
    rows: [*mut f32; CB],
    bias: [f32; CB],
) {
    let lanes = S::LANES;
    let lay = geo.lay;
    assert!(
        lay.len <= pad.len()
            && base
                + geo.ci.saturating_sub(1) * lay.chan
                + 2 * lay.plane
                + 2 * lay.row
                + lay.kw[1].max(lay.kw[2])
                + lanes * V
                <= lay.len
    );
    assert!(geo.ci * 27 * geo.cpad <= wt.len() && cb + CB <= geo.cpad);
    // The row offsets of `Tile::new`: the last one is the largest, bounded above.
    assert!(
        geo.roff.len() == geo.ci * 9
            && geo.roff.last().is_none_or(|&m| {
                m == geo.ci.saturating_sub(1) * lay.chan + 2 * lay.plane + 2 * lay.row
            })
    );
    let cpad = geo.cpad;
    // SAFETY (all intrinsics and pointer reads below): the CPU supports `S`; reads within the
    // bounds asserted above (row offsets ≤ the last; weights: `roff.len()·3 = ci·27` groups
    // of `cpad`), writes as the caller's contract states.
    unsafe {
        let mut a = [[S::zero(); V]; CB];
        for (ao, &bv) in a.iter_mut().zip(&bias) {
            *ao = [S::splat(bv); V];
        }
        // Rows in (c, kd, kh) order, kw innermost: each output's sum keeps its order.
        for (n, &off) in geo.roff.iter().enumerate() {
            let row = pad.as_ptr().add(base + off);
            let wk = wt.as_ptr().add(n * 3 * cpad + cb);
            for kw in 0..3 {
                let mut xs = [S::zero(); V];
                for (v, x) in xs.iter_mut().enumerate() {
                    *x = S::load(row.add(lay.kw[kw] + lanes * v));
                }
                for (o, ao) in a.iter_mut().enumerate() {
                    let wv = S::splat(*wk.add(kw * cpad + o));
                    for v in 0..V {
                        ao[v] = S::fmadd(wv, xs[v], ao[v]);
                    }
                }
            }
        }
        for (ao, &row) in a.iter().zip(&rows) {
            for (v, &av) in ao.iter().enumerate() {
                S::store(row.add(lanes * v), av);
            }
        }
    }
}

/// A raw output pointer for tasks writing disjoint elements.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
impl SendPtr {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: only used by tasks writing pairwise disjoint elements of a live buffer.
unsafe impl Send for SendPtr {}
// SAFETY: as above; never read through.
unsafe impl Sync for SendPtr {}

thread_local! {
    static PAD: core::cell::RefCell<Vec<f32>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's padded-input scratch of `len` floats (contents unspecified).
fn with_pad_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    PAD.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocks tile `0 .. co` in order without gaps, at most one of them runs past `co`
    /// (the last, by less than its size), and with AVX2 their sizes are the expected
    /// decompositions (hand-worked: as many 6s as leave a multiple of 4).
    #[test]
    fn channel_blocks_cover_the_output_channels() {
        for level in [SimdLevel::Avx2, SimdLevel::Avx512] {
            for co in 1..=64 {
                let blocks = channel_blocks(co, level);
                let mut at = 0;
                for &(b, n) in &blocks {
                    assert_eq!(b, at, "{level} co {co}: {blocks:?}");
                    at += n;
                }
                let (lb, ln) = *blocks.last().unwrap();
                assert!(
                    lb < co && at >= co && at - co < ln,
                    "{level} co {co}: {blocks:?}"
                );
            }
        }
        let sizes = |co| -> Vec<usize> {
            channel_blocks(co, SimdLevel::Avx2)
                .iter()
                .map(|b| b.1)
                .collect()
        };
        assert_eq!(sizes(8), [4, 4]);
        assert_eq!(sizes(16), [6, 6, 4]);
        assert_eq!(sizes(32), [6, 6, 6, 6, 4, 4]);
        assert_eq!(sizes(40), [6, 6, 6, 6, 6, 6, 4]);
        assert_eq!(sizes(12), [6, 6]);
        assert_eq!(sizes(7), [6, 4]);
        assert_eq!(sizes(5), [6]);
        assert_eq!(sizes(3), [4]);
        assert_eq!(sizes(1), [4]);
        assert_eq!(channel_blocks(12, SimdLevel::Avx512), [(0, 8), (8, 8)]);
    }
}
