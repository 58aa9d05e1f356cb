//! Direct 3×3×3, padding-1 convolution with stride 1 or 2 on NCDHW `f32` data, vectorised
//! along W (AVX-512 or AVX2), without im2col: the UNet's convolutions — forward, weight
//! gradient and input gradient at both strides (see [`input_grad`] for stride 2).
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
//! tiles run on them (and the rows likewise by parity, see below).
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
//! 20, 10). Swept row by row ([`Sweep::Rows`]), the last tile of such a row computes whole
//! vectors anyway and keeps only its first lanes: with 16 lanes a row of 56 costs 64, one of
//! 7 costs 16. So where it saves lanes the tiles run along the output plane flattened with the
//! scratch's row pitch ([`Sweep::Flat`]): output `(r, w)` is position `p = r·pitch + w`, and
//! its input for kernel offset `(kh, kw)` sits at `p` plus a fixed offset, so a tile of
//! consecutive positions crosses from one row into the next; the positions between rows (the
//! zero border: 2 per row at stride 1, 1 at stride 2) are computed and dropped. Rows of 56
//! then cost 58 lanes. Lanes never mix in the forward, so the extra lanes (which read the next
//! row's values or the scratch's zeroed tail, [`TAIL`]) cannot change the kept ones; a tile
//! that does not fall inside one row writes to a local buffer and copies the kept runs. The
//! weight gradient sums across lanes, so there the output gradient is first copied into the
//! same positions with zeros at the dropped ones (swept by rows, it loads a row's last vector
//! masked instead). Both sweeps sum every output in the same order: the forward gives the same
//! bits either way.
//!
//! At stride 2 the scratch holds each padded plane as four blocks — even rows' even columns,
//! even rows' odd columns, odd rows' even columns, odd rows' odd columns — so the inputs of
//! consecutive outputs are consecutive for every kernel offset, across rows too (pitch
//! `W/2 + 1`).

use rayon::prelude::*;

use crate::flex_buf::{Scratch, assume_init_f32, uninit_f32, with_scratch};
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
/// Output channels per register tile of the weight gradient with AVX2 (4 × 3 vectors: 12
/// accumulators, 3 input vectors, the output gradient's), and the last block with AVX-512
/// where Cout is 4 past a multiple of 8.
const WCB: usize = 4;
/// Output channels per register tile of the weight gradient with AVX-512: 8 × 3 vectors (24
/// accumulators of the 32 registers; 7 loads per 12 multiply-adds with 4, 11 per 24 with 8:
/// the weight gradient of the real-data UNet's layers measured 5–14 % faster).
const WCB512: usize = 8;
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

/// How a task's output positions are cut into tiles (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sweep {
    /// Along each output row; a row's last tile may compute past its end.
    Rows,
    /// Along the output plane flattened with the scratch's row pitch, across row ends.
    Flat,
}

impl Sweep {
    /// [`Sweep::Rows`] where a row is whole tiles of [`TILE_VECTORS`] vectors, else
    /// [`Sweep::Flat`]: it computes fewer lanes where rows end in part of a vector (56: 58
    /// lanes against 64 with AVX-512) and runs whole tiles where rows end in a one-vector tile
    /// (56 with AVX2, 7 tiles of 8: measured 3 % faster on the real-data step, although its
    /// rows have 2 more lanes).
    fn choose(c: &Conv3, level: SimdLevel) -> Self {
        let tile = TILE_VECTORS * level.vector_lanes();
        if c.out()[2].is_multiple_of(tile) {
            Sweep::Rows
        } else {
            Sweep::Flat
        }
    }
}

/// One past the last output position of a plane of `h` rows of `w` at row pitch `pitch`.
fn flat_end(h: usize, w: usize, pitch: usize) -> usize {
    h.saturating_sub(1) * pitch + w
}

/// The forward's tiles of one output plane as (first position, vectors): up to `vmax`
/// vectors of `lanes` each, along rows or across them ([`Sweep`]), positions `r·pitch + w`.
fn forward_tiles(
    [h, w]: [usize; 2],
    pitch: usize,
    sweep: Sweep,
    lanes: usize,
    vmax: usize,
) -> Vec<(usize, usize)> {
    let run = |from: usize, to: usize, out: &mut Vec<(usize, usize)>| {
        let mut p = from;
        while p < to {
            let v = (to - p).div_ceil(lanes).min(vmax);
            out.push((p, v));
            p += v * lanes;
        }
    };
    let mut tiles = Vec::new();
    match sweep {
        Sweep::Rows => (0..h).for_each(|r| run(r * pitch, r * pitch + w, &mut tiles)),
        Sweep::Flat => run(0, flat_end(h, w, pitch), &mut tiles),
    }
    tiles
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
    let level = crate::simd::level();
    forward(x, w, bias, c, Sweep::choose(c, level))
}

/// [`conv3x3x3`] with the given sweep (the same bits with either).
fn forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, c: &Conv3, sweep: Sweep) -> Vec<f32> {
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
    // The weights block by block: the block of channels cb .. cb + n at ci·27·cb, as
    // [(c, k)][n] (zeros for channels past Cout). A tile then reads its block's weights in
    // order (ci·27·n floats, e.g. 27 KiB for 32 → 8), instead of n of every cpad-float row.
    let blocks = channel_blocks(co, level);
    let cpad = blocks.last().map_or(0, |&(b, n)| b + n);
    let mut wt = vec![0.0f32; ci * 27 * cpad];
    for &(cb, n) in &blocks {
        let wb = &mut wt[ci * 27 * cb..][..ci * 27 * n];
        for o in 0..n.min(co - cb) {
            for i in 0..ci {
                for k in 0..27 {
                    wb[(i * 27 + k) * n + o] = w[((cb + o) * ci + i) * 27 + k];
                }
            }
        }
    }
    let pitch = Layout::new(ci, 3, [h, wd], c.stride).pitch;
    let tiles = forward_tiles(
        [hout, wout],
        pitch,
        sweep,
        level.vector_lanes(),
        TILE_VECTORS,
    );
    let mut y = uninit_f32(c.b * co * vol_out);
    let out = SendPtr(y.as_mut_ptr().cast::<f32>());
    tasks(c).into_par_iter().for_each(|(bi, d0)| {
        let np = PLANES.min(dout - d0);
        let lay = Layout::new(ci, c.stride * (np - 1) + 3, [h, wd], c.stride);
        with_pad_scratch(lay.len, |pad| {
            pad_planes(x, bi, c, c.stride * d0, &lay, pad);
            let geo = Tile::dense(ci, cpad, lay);
            let task = Task {
                bi,
                d0,
                np,
                co,
                blocks: &blocks,
                tiles: &tiles,
                stride: c.stride,
                out_dims: c.out(),
                bias,
                out,
                map: OutMap::dense(c.out(), c.b * co),
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
    // (co, row, w) of its planes: the tiles cover every output position of a plane.
    unsafe { assume_init_f32(y) }
}

/// Vectors per forward tile at most (both levels: 2, see [`task_avx512`], [`task_avx2`]; 3
/// with AVX-512, 24 accumulators, measured the same on the real-data UNet step).
const TILE_VECTORS: usize = 2;

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
    /// The tiles of each output plane ([`forward_tiles`]).
    tiles: &'a [(usize, usize)],
    stride: usize,
    /// The output grid the tiles sweep: depth, height, width.
    out_dims: [usize; 3],
    bias: Option<&'a [f32]>,
    out: SendPtr,
    /// Where the outputs go in `out`.
    map: OutMap,
}

/// Where a task's outputs go: output (channel `o` of the batch item's `co`, grid plane `d`,
/// row `r`, column `w`) at `(bi·co + o)·chan + (mul[0]·d + add[0])·plane + (mul[1]·r +
/// add[1])·row + mul[2]·w + add[2]` of an output of `len` floats. The convolution's own
/// output: factors 1, offsets 0; one parity class of a stride-2 input gradient: factors 2,
/// offsets its parities (see [`input_grad`]).
#[derive(Debug, Clone, Copy)]
struct OutMap {
    chan: usize,
    plane: usize,
    row: usize,
    mul: [usize; 3],
    add: [usize; 3],
    len: usize,
}

impl OutMap {
    /// The grid `dims` itself, `channels` of it in all.
    fn dense([d, h, w]: [usize; 3], channels: usize) -> Self {
        Self {
            chan: d * h * w,
            plane: h * w,
            row: w,
            mul: [1; 3],
            add: [0; 3],
            len: channels * d * h * w,
        }
    }
}

/// [`task_rows`] with AVX-512: 8 channels × 16 or 32 voxels.
///
/// # Safety
/// AVX-512F; as [`task_rows`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn task_avx512(pad: &[f32], wt: &[f32], geo: &Tile, t: &Task) {
    // SAFETY: as the caller guarantees.
    unsafe { task_rows::<Avx512, CB512, CB512, TILE_VECTORS>(pad, wt, geo, t) }
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
    unsafe { task_rows::<Avx2, CB256, CB256_SMALL, TILE_VECTORS>(pad, wt, geo, t) }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn task_avx512(_: &[f32], _: &[f32], _: &Tile, _: &Task) {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn task_avx2(_: &[f32], _: &[f32], _: &Tile, _: &Task) {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
}

/// Every output of one task (planes `d0 ..`, the tiles `t.tiles` of each, the channel blocks
/// `t.blocks`): tiles of `CB` or `CB2` channels × up to `V` vectors.
///
/// # Safety
/// The CPU must support `S`; `pad` holds the task's `ci` padded channels (`geo.lay`), `wt` the
/// weights packed with `geo.cpad` ≥ the end of every block; `t.out` points to the output, of
/// which this task alone writes its planes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn task_rows<S: F32s, const CB: usize, const CB2: usize, const V: usize>(
    pad: &[f32],
    wt: &[f32],
    geo: &Tile,
    t: &Task,
) {
    for q in 0..t.np {
        for &(p0, v) in t.tiles {
            for &(cb, n) in t.blocks {
                let at = [q, p0, v, cb];
                // SAFETY: the caller's contract.
                unsafe {
                    if n == CB {
                        block::<S, CB, V>(pad, wt, geo, t, at);
                    } else {
                        assert_eq!(n, CB2, "channel block of an unexpected size");
                        block::<S, CB2, V>(pad, wt, geo, t, at);
                    }
                }
            }
        }
    }
}

/// One tile of [`task_rows`]: `at` = [task plane `q`, first position `p0` (output `(r, w)` is
/// position `r·pitch + w`), vectors `v` (1 ..= `VMAX`), first channel `cb`], `CB` channels. A
/// tile inside one output row writes to it; any other (a row's tail, or across rows) writes to
/// local rows, then copies the runs of positions that are outputs.
///
/// # Safety
/// As [`task_rows`], with `cb + CB ≤ geo.cpad` and `p0` an output position of the plane.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block<S: F32s, const CB: usize, const VMAX: usize>(
    pad: &[f32],
    wt: &[f32],
    geo: &Tile,
    t: &Task,
    [q, p0, v, cb]: [usize; 4],
) {
    let [_, h, wd] = t.out_dims;
    let m = t.map;
    let pitch = geo.lay.pitch;
    let n = v * S::LANES;
    assert!((1..=VMAX).contains(&v) && VMAX <= 3 && VMAX * S::LANES <= JUNK);
    let end = flat_end(h, wd, pitch);
    let (r0, w0) = (p0 / pitch, p0 % pitch);
    assert!(p0 < end && w0 < pitch && cb < t.co);
    let base = t.stride * q * geo.lay.plane + p0;
    let direct = m.mul[2] == 1 && w0 + n <= wd;
    let nch = (cb + CB).min(t.co) - cb;
    // Where plane d0 + q of the block's first channel starts, and how far its last output
    // of the block's last channel is: inside the output.
    let at = (t.bi * t.co + cb) * m.chan + (m.mul[0] * (t.d0 + q) + m.add[0]) * m.plane + m.add[2];
    let row_at = |r: usize| (m.mul[1] * r + m.add[1]) * m.row;
    assert!(at + (nch - 1) * m.chan + row_at(h - 1) + m.mul[2] * (wd - 1) < m.len);
    // Output planes of the block's channels and the rows the tile writes (a junk row for
    // channels past Cout; local rows unless the tile is inside one output row).
    let mut junk = [0.0f32; JUNK];
    // Written whole by the tile before its output positions are read: not cleared per tile.
    let mut local = core::mem::MaybeUninit::<[[f32; JUNK]; CB]>::uninit();
    let local = local.as_mut_ptr().cast::<f32>();
    let mut rows = [junk.as_mut_ptr(); CB];
    let mut outs = [core::ptr::null_mut(); CB];
    let mut bv = [0.0f32; CB];
    for o in 0..nch {
        // SAFETY: within the output (asserted above for the last channel).
        outs[o] = unsafe { t.out.get().add(at + o * m.chan) };
        rows[o] = if direct {
            // SAFETY: outputs (r0, w0 .. w0 + n) of the plane, consecutive (w0 + n ≤ W, r0 <
            // H, column factor 1).
            unsafe { outs[o].add(row_at(r0) + w0) }
        } else {
            // SAFETY: row o of `local` (CB rows of JUNK floats).
            unsafe { local.add(o * JUNK) }
        };
        bv[o] = t.bias.map_or(0.0, |bs| bs[cb + o]);
    }
    // SAFETY: the caller's contract; the slices cover every index the kernel reads (see
    // `tile`; a tile's extra lanes read at most a vector past the plane, inside the scratch's
    // `TAIL`); it writes v·LANES floats to each row: this task's own elements of the output
    // (tasks partition (batch, depth planes), and the output map sends distinct outputs to
    // distinct elements; the output outlives the loop), `junk` or `local`. The copies write
    // outputs (r, w) with r < H, w < W of this task's planes (bounded above).
    unsafe {
        match v {
            1 => tile_any::<S, CB, 1>(pad, wt, geo, base, cb, rows, bv),
            2 => tile_any::<S, CB, 2>(pad, wt, geo, base, cb, rows, bv),
            _ => tile_any::<S, CB, VMAX>(pad, wt, geo, base, cb, rows, bv),
        }
        if !direct {
            let stop = (p0 + n).min(end);
            let mut p = p0;
            while p < stop {
                let (r, w) = (p / pitch, p % pitch);
                if w >= wd {
                    p = (r + 1) * pitch;
                    continue;
                }
                let k = (wd - w).min(stop - p);
                for (o, &out) in outs.iter().enumerate().take(nch) {
                    let (src, dst) = (local.add(o * JUNK + p - p0), out.add(row_at(r)));
                    if m.mul[2] == 1 {
                        // Vectors with a masked last one (a memmove call per run of a few
                        // floats cost 1.7 % of the real-data step).
                        let dst = dst.add(w);
                        for i in (0..k).step_by(S::LANES) {
                            let nl = (k - i).min(S::LANES);
                            S::store_first(dst.add(i), S::load_first(src.add(i), nl), nl);
                        }
                    } else {
                        for i in 0..k {
                            *dst.add(m.mul[2] * (w + i)) = *src.add(i);
                        }
                    }
                }
                p += k;
            }
        }
    }
}

/// Floats of the junk row that takes the tiles' rows past `Cout` (≥ the widest tile).
const JUNK: usize = 32;

/// The input gradient of [`conv3x3x3`], `[batch, Cin, D, H, W]`.
///
/// Stride 1: `dx = conv(dy, w')` with `w'[c, o, k] = w[o, c, 26 − k]`. Stride 2: input `i =
/// 2·m + p` along an axis receives from output `m` through kernel index 1 if `p` = 0, and from
/// outputs `m` and `m + 1` through indices 2 and 0 if `p` = 1. So each of the 8 parity classes
/// of `dx` is a stride-1 window over `dy` (zero past its end) with 1, 2, 4 or 8 of the 27 taps
/// — 27 taps over the 8 classes, the forward's work — swept by the forward's tiles from one
/// padded copy of `dy` per task, each class written to its every other element.
///
/// # Panics
/// If [`supported`] is false.
pub(crate) fn input_grad(dy: &[f32], w: &[f32], c: &Conv3) -> Vec<f32> {
    if c.stride == 2 {
        return input_grad_stride2(dy, w, c);
    }
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

/// The stride-2 case of [`input_grad`].
fn input_grad_stride2(dy: &[f32], w: &[f32], c: &Conv3) -> Vec<f32> {
    assert!(
        c.stride == 2 && supported(c),
        "direct input gradient: unsupported {c:?}"
    );
    let level = crate::simd::level();
    let (ci, co) = (c.ci, c.co);
    let [d, h, wd] = c.dims;
    let grid = c.out();
    assert_eq!(dy.len(), c.b * co * grid.iter().product::<usize>());
    assert_eq!(w.len(), co * ci * 27);
    // dy as the input of stride-1 windows: `co` channels of the output grid, giving `ci`.
    let t = Conv3 {
        b: c.b,
        ci: co,
        co: ci,
        dims: grid,
        stride: 1,
    };
    let sweep = Sweep::choose(&t, level);
    let pitch = Layout::new(co, 3, [grid[1], grid[2]], 1).pitch;
    let tiles = forward_tiles(
        [grid[1], grid[2]],
        pitch,
        sweep,
        level.vector_lanes(),
        TILE_VECTORS,
    );
    let blocks = channel_blocks(ci, level);
    let cpad = blocks.last().map_or(0, |&(b, n)| b + n);
    let classes: Vec<ParityClass> = (0..8)
        .map(|cls| {
            let parity = [cls >> 2 & 1, cls >> 1 & 1, cls & 1];
            let taps = parity.map(|p| {
                if p == 0 {
                    vec![(1, 1)]
                } else {
                    vec![(1, 2), (2, 0)]
                }
            });
            ParityClass { parity, taps }
        })
        .collect();
    // Each class's weights, packed as the forward's for its taps: rows (o, kd', kh'), columns
    // kw'.
    let packed: Vec<Vec<f32>> = classes
        .iter()
        .map(
            |ParityClass {
                 taps: [td, th, tw], ..
             }| {
                let rows: Vec<[usize; 3]> = (0..co)
                    .flat_map(|o| {
                        td.iter()
                            .flat_map(move |a| th.iter().map(move |b| [o, a.1, b.1]))
                    })
                    .collect();
                let taps = rows.len() * tw.len();
                let mut wt = vec![0.0f32; taps * cpad];
                for &(cb, nb) in &blocks {
                    let wb = &mut wt[taps * cb..][..taps * nb];
                    for oo in 0..nb.min(ci - cb) {
                        for (n, &[o, kd, kh]) in rows.iter().enumerate() {
                            for (j, &(_, kw)) in tw.iter().enumerate() {
                                wb[(n * tw.len() + j) * nb + oo] =
                                    w[(o * ci + cb + oo) * 27 + kd * 9 + kh * 3 + kw];
                            }
                        }
                    }
                }
                wt
            },
        )
        .collect();
    let mut dx = uninit_f32(c.b * ci * d * h * wd);
    let out = SendPtr(dx.as_mut_ptr().cast::<f32>());
    tasks(&t).into_par_iter().for_each(|(bi, d0)| {
        let np = PLANES.min(grid[0] - d0);
        let lay = Layout::new(co, np + 2, [grid[1], grid[2]], 1);
        with_pad_scratch(lay.len, |pad| {
            pad_planes(dy, bi, &t, d0, &lay, pad);
            for (class, wt) in classes.iter().zip(&packed) {
                let [td, th, tw] = &class.taps;
                let rows = (0..co)
                    .flat_map(|o| {
                        td.iter().flat_map(move |a| {
                            th.iter()
                                .map(move |b| o * lay.chan + a.0 * lay.plane + lay.kh[b.0])
                        })
                    })
                    .collect();
                let cols = tw.iter().map(|&(k, _)| lay.kw[k]).collect();
                let geo = Tile::with_taps(rows, cols, cpad, lay);
                let task = Task {
                    bi,
                    d0,
                    np,
                    co: ci,
                    blocks: &blocks,
                    tiles: &tiles,
                    stride: 1,
                    out_dims: grid,
                    bias: None,
                    out,
                    map: OutMap {
                        chan: d * h * wd,
                        plane: h * wd,
                        row: wd,
                        mul: [2; 3],
                        add: class.parity,
                        len: c.b * ci * d * h * wd,
                    },
                };
                // SAFETY: `supported` checked the level; `pad` holds the task's padded planes
                // of dy and `wt` the class's packed weights (see `task_rows`).
                unsafe {
                    match level {
                        SimdLevel::Avx512 => task_avx512(pad, wt, &geo, &task),
                        _ => task_avx2(pad, wt, &geo, &task),
                    }
                }
            }
        });
    });
    // SAFETY: the tasks partition (batch, grid planes); in each, every class writes every
    // position of its planes to its own element (2·m + p along every axis), and the 8
    // classes cover every element of dx (even sizes).
    unsafe { assume_init_f32(dx) }
}

/// One parity class of a stride-2 input gradient ([`input_grad`]): the inputs `2·m + parity`
/// along each axis, and per axis its taps as (offset in the stride-1 window over `dy`, kernel
/// index).
struct ParityClass {
    parity: [usize; 3],
    taps: [Vec<(usize, usize)>; 3],
}

/// Zeroed floats after a task's padded input in its scratch: the extra lanes of a row's last
/// tile read up to a vector past the last row (see the module doc).
const TAIL: usize = 16;

/// Where a task's zero-bordered input lives in its scratch: channel `c`, padded plane `q` at
/// `c·chan + q·plane`; within a plane, the input of output position `p` (output `(r, w)` is
/// `p = r·pitch + w`) for kernel offsets `(kh, kw)` at `p + kh[kh] + kw[kw]`.
///
/// At stride 1 the padded rows (`W + 2` values) follow each other at `pitch`. At stride 2 a
/// plane is four blocks (see the module doc): padded row `j`, column `i` at
/// `(j mod 2)·odd_rows + (j / 2)·pitch + (i mod 2)·odd_cols + i / 2`.
///
/// Channel-major (`[channel][plane][rows]`) at both levels: a flat sweep needs the rows of one
/// channel at one pitch (and with AVX2 it measured faster than the row-interleaved scratch its
/// row-by-row tiles once used; bench/README).
#[derive(Debug, Clone, Copy)]
struct Layout {
    chan: usize,
    plane: usize,
    pitch: usize,
    /// Offsets of kernel rows kh = 0, 1, 2 and columns kw = 0, 1, 2 (see above).
    kh: [usize; 3],
    kw: [usize; 3],
    /// Stride 2: where the odd padded rows and the odd columns of a row start.
    odd_rows: usize,
    odd_cols: usize,
    stride: usize,
    /// Padded planes held.
    planes: usize,
    /// Floats of the whole scratch: the padded input, then [`TAIL`] zeros.
    len: usize,
}

impl Layout {
    /// `ci` channels of `planes` padded planes of `h + 2` rows of `wd + 2` values, for a
    /// convolution of stride `stride`.
    fn new(ci: usize, planes: usize, [h, wd]: [usize; 2], stride: usize) -> Self {
        let wp = wd + 2;
        let (pitch, odd_rows, odd_cols, kh, kw, plane) = if stride == 2 {
            // Four blocks of (h + 2)/2 rows of (wd + 2)/2 values.
            let pitch = wp / 2;
            let odd_cols = (h + 2) / 2 * pitch;
            let odd_rows = 2 * odd_cols;
            let kh = [0, odd_rows, pitch];
            (
                pitch,
                odd_rows,
                odd_cols,
                kh,
                [0, odd_cols, 1],
                2 * odd_rows,
            )
        } else {
            (wp, 0, 0, [0, wp, 2 * wp], [0, 1, 2], (h + 2) * wp)
        };
        let chan = planes * plane;
        let len = ci * chan + TAIL;
        Self {
            chan,
            plane,
            pitch,
            kh,
            kw,
            odd_rows,
            odd_cols,
            stride,
            planes,
            len,
        }
    }

    /// Offset of padded row `j` of a plane (its first value, or at stride 2 its first even
    /// value; the odd ones are `odd_cols` on).
    fn row_at(&self, j: usize) -> usize {
        if self.stride == 2 {
            (j % 2) * self.odd_rows + (j / 2) * self.pitch
        } else {
            j * self.pitch
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
            for j in 0..h + 2 {
                let at = ch * lay.chan + q * lay.plane + lay.row_at(j);
                let zero = src_d < 0 || src_d >= d as isize || j == 0 || j == h + 1;
                let src = (!zero).then(|| &xc[src_d as usize * plane + (j - 1) * wd..][..wd]);
                if c.stride == 2 {
                    // Padded position i = 2m (even half, index m) holds x[2m − 1]; i = 2m + 1
                    // (odd half) holds x[2m]; positions 0 and W + 1 are the zero border.
                    let half = wp / 2;
                    let (even, rest) = pad[at..].split_at_mut(lay.odd_cols);
                    let (even, odd) = (&mut even[..half], &mut rest[..half]);
                    match src {
                        None => {
                            even.fill(0.0);
                            odd.fill(0.0);
                        }
                        Some(src) => {
                            even[0] = 0.0;
                            odd[half - 1] = 0.0;
                            // One pass over the row's pairs (the compiler turns it into
                            // vector shuffles; two strided loops over it were not).
                            for ((e, o), pair) in even[1..]
                                .iter_mut()
                                .zip(odd.iter_mut())
                                .zip(src.chunks_exact(2))
                            {
                                *o = pair[0];
                                *e = pair[1];
                            }
                        }
                    }
                } else {
                    let row = &mut pad[at..][..wp];
                    match src {
                        None => row.fill(0.0),
                        Some(src) => {
                            row[0] = 0.0;
                            row[wp - 1] = 0.0;
                            row[1..=wd].copy_from_slice(src);
                        }
                    }
                }
            }
        }
    }
}

/// The weight gradient of [`conv3x3x3`], `[Cout, Cin, 27]`: per task (batch item, 4 output
/// depth planes) `dW_t[o, c, k] = Σ_outputs dy[o, v] · x[c, s·v + off(k)]` with 8 (AVX-512) or
/// 4 (AVX2) output channels × 3 kw offsets in registers (vectors of 16 or 8 lanes; summed
/// across lanes at the end), sweeping groups of up to 1,024 output positions ([`WgradPlan`])
/// through every input channel and offset so the group's `dy` stays in L1; then the task
/// partials added in task order (independent of the thread count).
///
/// Flat from 8 input channels, else by rows: the flat sweep reads a copy of the output
/// gradient, which with 1 or 2 input channels costs more than the products (1 → 8 at 56 ×
/// 72 × 56: 3.5 ms by rows, 4.8 flat), while from 8 its long runs are faster even where rows
/// are whole vectors (40 → 8 at 64³: 127 ms by rows, 103 flat).
///
/// # Panics
/// If [`weight_grad_supported`] is false.
pub(crate) fn weight_grad(x: &[f32], dy: &[f32], c: &Conv3) -> Vec<f32> {
    let sweep = if c.ci < 8 { Sweep::Rows } else { Sweep::Flat };
    weight_grad_swept(x, dy, c, sweep)
}

/// [`weight_grad`] with the given sweep.
fn weight_grad_swept(x: &[f32], dy: &[f32], c: &Conv3, sweep: Sweep) -> Vec<f32> {
    assert!(
        weight_grad_supported(c),
        "direct weight gradient: unsupported {c:?}"
    );
    let level = crate::simd::level();
    let (ci, co) = (c.ci, c.co);
    let [d, h, wd] = c.dims;
    let [dout, hout, wout] = c.out();
    let vol_out = dout * hout * wout;
    assert_eq!(x.len(), c.b * ci * d * h * wd);
    assert_eq!(dy.len(), c.b * co * vol_out);
    let pitch = Layout::new(ci, 3, [h, wd], c.stride).pitch;
    let plan = WgradPlan::new([hout, wout], pitch, sweep, level.vector_lanes());
    let partials: Vec<Vec<f32>> = tasks(c)
        .into_par_iter()
        .map(|(bi, d0)| {
            let np = PLANES.min(dout - d0);
            let lay = Layout::new(ci, c.stride * (np - 1) + 3, [h, wd], c.stride);
            let mut dw = vec![0.0f32; co * ci * 27];
            let dyb = &dy[bi * co * vol_out..][..co * vol_out];
            // The output gradient as the task reads it: the batch item's own planes, or its
            // planes copied to the plan's positions with zeros between the rows.
            let copied: Vec<f32>;
            let (dyv, dy_at) = match plan.copy {
                None => {
                    let plane = hout * wout;
                    let at = DyPlanes {
                        chan: dout * plane,
                        plane,
                        d0,
                    };
                    (dyb, at)
                }
                Some([ypitch, yplane]) => {
                    // Aligned to 64 bytes (planes of whole vectors): its loads never straddle
                    // two cache lines. Written once in order, rows and the zeros between them
                    // (no clearing pass first).
                    let len = co * np * yplane;
                    let mut buf: Vec<f32> = Vec::with_capacity(len + 15);
                    let skip = buf.as_ptr().align_offset(64).min(15);
                    buf.resize(skip, 0.0);
                    for o in 0..co {
                        let src = &dyb[(o * dout + d0) * hout * wout..][..np * hout * wout];
                        for sp in src.chunks_exact(hout * wout) {
                            let start = buf.len();
                            for row in sp.chunks_exact(wout) {
                                buf.extend_from_slice(row);
                                buf.resize(buf.len() + ypitch - wout, 0.0);
                            }
                            buf.resize(start + yplane, 0.0);
                        }
                    }
                    copied = buf;
                    let at = DyPlanes {
                        chan: np * yplane,
                        plane: yplane,
                        d0: 0,
                    };
                    (&copied[skip..][..len], at)
                }
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
                    plan: &plan,
                };
                with_scratch(&ACC, acc_len(ci, co, level), |acc| {
                    // SAFETY: `weight_grad_supported` checked the level (so the CPU has its
                    // features) and that `co` is a multiple of its channel block; sizes as
                    // asserted above and in the callee.
                    unsafe {
                        match level {
                            SimdLevel::Avx512 => wgrad_task_avx512(pad, dyv, &t, acc, &mut dw),
                            _ => wgrad_task_avx2(pad, dyv, &t, acc, &mut dw),
                        }
                    }
                });
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

/// Floats of a weight-gradient task's accumulators at `level`: per input channel, output
/// channel block and (kd, kh), the block's channels × 3 kw offsets × the vector's lanes.
fn acc_len(ci: usize, co: usize, level: SimdLevel) -> usize {
    let cb = if level == SimdLevel::Avx512 {
        WCB512
    } else {
        WCB
    };
    ci * co.div_ceil(cb) * 9 * cb * 3 * level.vector_lanes()
}

/// Output positions a weight-gradient group sweeps at most: long enough that loading and
/// storing a call's accumulators is a small part of it (groups of 256 measured 15 % slower on
/// the 40 → 8 decoder layer), short enough that the `dy` of a block of channels and the nine
/// input rows of a channel stay in L1 and L2.
const GROUP: usize = 1024;

/// A run of output positions of one plane that the weight gradient sweeps: `len` positions
/// from `x` in the scratch's positions ([`Layout`]) and from `y` in the output gradient's plane
/// as the task reads it ([`DyPlanes`]); whole vectors in a flat sweep, a row (its last vector
/// partial) by rows.
#[derive(Debug, Clone, Copy)]
struct Run {
    x: usize,
    y: usize,
    len: usize,
}

/// How a weight gradient sweeps each output plane, the same for every task of a convolution.
/// Rows: a run per output row, read from the output gradient itself; a row's last, partial
/// vector loads it masked (zeros past the row: the lane sums take no foreign value). Flat:
/// runs of [`GROUP`] positions along the plane, read from a copy of the planes at the
/// scratch's pitch with zeros at the border positions.
struct WgradPlan {
    runs: Vec<Run>,
    /// Consecutive runs of up to [`GROUP`] positions in all (at least one run each).
    groups: Vec<core::ops::Range<usize>>,
    /// One past the furthest scratch position and output gradient position of any run.
    x_end: usize,
    y_end: usize,
    /// The copy's row pitch and plane length, if the tasks read a copy.
    copy: Option<[usize; 2]>,
}

impl WgradPlan {
    fn new([h, w]: [usize; 2], pitch: usize, sweep: Sweep, lanes: usize) -> Self {
        let (runs, copy): (Vec<Run>, _) = match sweep {
            Sweep::Rows => {
                let runs = (0..h)
                    .map(|r| Run {
                        x: r * pitch,
                        y: r * w,
                        len: w,
                    })
                    .collect();
                (runs, None)
            }
            Sweep::Flat => {
                let yplane = flat_end(h, w, pitch).next_multiple_of(lanes);
                let group = GROUP / lanes * lanes;
                let runs = (0..yplane)
                    .step_by(group)
                    .map(|p| Run {
                        x: p,
                        y: p,
                        len: group.min(yplane - p),
                    })
                    .collect();
                (runs, Some([pitch, yplane]))
            }
        };
        let mut groups = Vec::new();
        let mut i = 0;
        while i < runs.len() {
            let mut j = i + 1;
            let mut n = runs[i].len;
            while j < runs.len() && n + runs[j].len <= GROUP {
                n += runs[j].len;
                j += 1;
            }
            groups.push(i..j);
            i = j;
        }
        Self {
            x_end: runs
                .iter()
                .map(|r| r.x + r.len.next_multiple_of(lanes))
                .max()
                .unwrap_or(0),
            y_end: runs.iter().map(|r| r.y + r.len).max().unwrap_or(0),
            runs,
            groups,
            copy,
        }
    }
}

/// Sizes of one weight-gradient task (batch item, output depth planes `d0 .. d0 + np`).
struct WgradTask<'a> {
    ci: usize,
    co: usize,
    out_dims: [usize; 3],
    stride: usize,
    d0: usize,
    np: usize,
    /// The task's scratch.
    lay: Layout,
    /// Where its output gradient's planes are.
    dy: DyPlanes,
    plan: &'a WgradPlan,
}

/// The output gradient a weight-gradient task reads: channel `o`'s value at task plane `q`,
/// position `y` (of a [`Run`]) at `o·chan + (d0 + q)·plane + y`.
#[derive(Debug, Clone, Copy)]
struct DyPlanes {
    chan: usize,
    plane: usize,
    d0: usize,
}

/// [`wgrad_task`] with AVX-512 (8 channels × 3 offsets × 16 lanes, a last block of 4).
///
/// # Safety
/// AVX-512F; as [`wgrad_task`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wgrad_task_avx512(
    pad: &[f32],
    dyb: &[f32],
    t: &WgradTask,
    acc: &mut [f32],
    dw: &mut [f32],
) {
    // SAFETY: as the caller guarantees.
    unsafe { wgrad_task::<Avx512, WCB512>(pad, dyb, t, acc, dw) }
}

/// [`wgrad_task`] with AVX2 + FMA (4 channels × 3 offsets × 8 lanes).
///
/// # Safety
/// AVX2 and FMA; as [`wgrad_task`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wgrad_task_avx2(
    pad: &[f32],
    dyb: &[f32],
    t: &WgradTask,
    acc: &mut [f32],
    dw: &mut [f32],
) {
    // SAFETY: as the caller guarantees.
    unsafe { wgrad_task::<Avx2, WCB>(pad, dyb, t, acc, dw) }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn wgrad_task_avx512(_: &[f32], _: &[f32], _: &WgradTask, _: &mut [f32], _: &mut [f32]) {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn wgrad_task_avx2(_: &[f32], _: &[f32], _: &WgradTask, _: &mut [f32], _: &mut [f32]) {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
}

/// One task's weight gradient into `dw` (`[Cout, Cin, 27]`, overwritten), with `accm`
/// ([`acc_len`] floats, any contents) for its accumulators.
///
/// # Safety
/// The CPU must support `S`; `pad` holds the task's `ci` padded channels (`t.lay`), `dyb` the
/// batch item's output gradient (`co` channels, laid out as `t.dy`), `dw` `co·ci·27` floats;
/// `co` a multiple of `CB`, or of `WCB` past one.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn wgrad_task<S: F32s, const CB: usize>(
    pad: &[f32],
    dyb: &[f32],
    t: &WgradTask,
    accm: &mut [f32],
    dw: &mut [f32],
) {
    let (ci, co) = (t.ci, t.co);
    assert!((co % CB).is_multiple_of(WCB) && dw.len() == co * ci * 27);
    // Lane accumulators of every (c, output block, kd, kh): CB × 3 vectors each (blocks of CB
    // channels, then one of WCB if Cout is not a multiple of CB), carried across groups of
    // runs so that a group's dy stays in L1 while every input channel and offset uses it.
    // Each lane still sums its products in position order.
    // The accumulators start at zero in the first group of the first plane (so their
    // scratch is not cleared; zeroing it cost 1.2 % of the real-data step).
    let nob = co.div_ceil(CB);
    let slot = CB * 3 * S::LANES;
    assert_eq!(accm.len(), ci * nob * 9 * slot);
    for q in 0..t.np {
        for (gi, g) in t.plan.groups.iter().enumerate() {
            for c in 0..ci {
                let runs = &t.plan.runs[g.clone()];
                let fresh = q == 0 && gi == 0;
                // SAFETY: the CPU supports `S` (the caller's contract); bounds in the callee.
                unsafe { wgrad_block::<S, CB>(pad, dyb, t, accm, [c, q], runs, fresh) };
            }
        }
    }
    for c in 0..ci {
        for obi in 0..nob {
            for k2 in 0..9 {
                let at = ((c * nob + obi) * 9 + k2) * slot;
                for o in 0..CB.min(co - obi * CB) {
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

/// The accumulators of input channel `c` (every output block and (kd, kh)) over the runs
/// `runs` of plane `q`, from zero if `fresh`, else from `accm`. A function rather than a
/// closure so that it inlines into the caller's `#[target_feature]` function (a closure
/// compiled on its own runs the vector helpers as calls: measured 20× slower).
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
    [c, q]: [usize; 2],
    runs: &[Run],
    fresh: bool,
) {
    let nob = t.co.div_ceil(CB);
    let slot = CB * 3 * S::LANES;
    // Channel c's rows: the scratch from its first value on.
    let pc = &pad[c * t.lay.chan..t.lay.len];
    for obi in 0..nob {
        let whole = (obi + 1) * CB <= t.co;
        for k2 in 0..9 {
            let at = ((c * nob + obi) * 9 + k2) * slot;
            let acc = &mut accm[at..at + slot];
            let (kd, kh) = (k2 / 3, k2 % 3);
            let rows = WgradRows {
                q,
                runs,
                ob: obi * CB,
                kd,
                kh,
                fresh,
            };
            // SAFETY: the CPU supports `S`; bounds in the callee's asserts (the last block
            // has WCB channels when it is not whole, `wgrad_task`).
            unsafe {
                if whole {
                    wgrad_rows::<S, CB>(pc, t, dyb, &rows, acc);
                } else {
                    wgrad_rows::<S, WCB>(pc, t, dyb, &rows, acc);
                }
            }
        }
    }
}

/// The positions of one [`wgrad_rows`] call: output plane `q` of the task, the runs `runs`,
/// output channels `ob ..`, kernel offsets (`kd`, `kh`).
struct WgradRows<'a> {
    q: usize,
    runs: &'a [Run],
    ob: usize,
    kd: usize,
    kh: usize,
    /// Start from zero rather than from `acc` (whose values are then never read).
    fresh: bool,
}

/// `acc[(o·3 + kw)·LANES + l] += Σ_{runs, positions p ≡ l (mod LANES)} dy[ob + o, d0 + q, p] ·
/// x[s·q + kd, p + kh-offset + kw-offset]` (`=` if `w.fresh`; `pc`: the scratch from one input
/// channel's first value on, laid out as `t.lay`; `dyb` laid out as `t.dy`, zero at the
/// positions that are not outputs), lane by lane in position order.
///
/// # Safety
/// The CPU must support `S`; `w.runs` from `t.plan` (positions below its ends).
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
    let (lay, s, dl, plan) = (&t.lay, t.stride, t.dy, t.plan);
    let (q, ob) = (w.q, w.ob);
    let xbase = (s * q + w.kd) * lay.plane + lay.kh[w.kh];
    let ybase = (dl.d0 + q) * dl.plane;
    assert!(t.d0 + q < t.out_dims[0] && acc.len() >= CB * 3 * lanes);
    assert!((ob + CB - 1) * dl.chan + ybase + plan.y_end <= dyb.len());
    // Past the plane the input positions run at most a vector on (into the next plane or
    // channel, or the scratch's zeroed tail): finite values, times a zero output gradient.
    assert!(xbase + plan.x_end + lay.kw.iter().max().unwrap() <= pc.len());
    // SAFETY (all intrinsics and pointer accesses below): the CPU supports `S`; `acc` holds
    // CB·3 vectors (asserted); every run lies below the plan's ends (`WgradPlan::new`: the
    // input end rounded up to whole vectors; a run's partial last vector of dy is loaded
    // masked), so the dy of channels ob..ob+CB and the inputs at every kw offset are inside
    // the slices (asserted for those ends).
    unsafe {
        let mut a = [[S::zero(); 3]; CB];
        if !w.fresh {
            for (o, ao) in a.iter_mut().enumerate() {
                for (kw, v) in ao.iter_mut().enumerate() {
                    *v = S::load(acc.as_ptr().add((o * 3 + kw) * lanes));
                }
            }
        }
        for run in w.runs {
            let xrow = pc.as_ptr().add(xbase + run.x);
            let yoff = ybase + run.y;
            let dys = dyb.as_ptr().add(ob * dl.chan + yoff);
            let full = run.len - run.len % lanes;
            for x in (0..full).step_by(lanes) {
                wgrad_vector::<S, CB>(&mut a, xrow.add(x), lay.kw, dys.add(x), dl.chan, lanes);
            }
            if full < run.len {
                // A row's last, partial vector: its output gradient loaded masked (zeros
                // past the row), so the lane sums take nothing from the next row.
                let n = run.len - full;
                wgrad_vector::<S, CB>(&mut a, xrow.add(full), lay.kw, dys.add(full), dl.chan, n);
            }
        }
        for (o, ao) in a.iter().enumerate() {
            for (kw, &v) in ao.iter().enumerate() {
                S::store(acc.as_mut_ptr().add((o * 3 + kw) * lanes), v);
            }
        }
    }
}

/// One vector step of [`wgrad_rows`]: `a[o][kw] += dy[o·chan + ..n] · x[kw[kw] + ..]` for
/// `o < CB`, the output gradient's first `n` lanes (zeros after; `n` = `LANES` loads whole
/// vectors).
///
/// # Safety
/// The CPU must support `S`; `x` valid for `LANES` floats from each `kw` offset, `dy` for `n`
/// floats from `o·chan` for every `o < CB`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn wgrad_vector<S: F32s, const CB: usize>(
    a: &mut [[S::V; 3]; CB],
    x: *const f32,
    kw: [usize; 3],
    dy: *const f32,
    chan: usize,
    n: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let x0 = S::load(x.add(kw[0]));
        let x1 = S::load(x.add(kw[1]));
        let x2 = S::load(x.add(kw[2]));
        for (o, ao) in a.iter_mut().enumerate() {
            let at = dy.add(o * chan);
            let g = if n == S::LANES {
                S::load(at)
            } else {
                S::load_first(at, n)
            };
            ao[0] = S::fmadd(g, x0, ao[0]);
            ao[1] = S::fmadd(g, x1, ao[1]);
            ao[2] = S::fmadd(g, x2, ao[2]);
        }
    }
}

/// The taps of a task's tiles: where each product's input is, in summation order, and the
/// packed weights' shape. Tap `(n, j)` reads the input at `rows[n] + cols[j]` from a tile's
/// base, with the weights of group `n·NK + j` of each block (see [`forward`]; `NK` =
/// `cols.len()`), in the order of `n`, then `j`.
struct Tile {
    /// Channels of the packed weights (every block's end at most).
    cpad: usize,
    /// The task's padded input.
    lay: Layout,
    /// Offsets of the input rows (channel, kernel plane and row). One flat loop over them
    /// keeps a single row pointer live: with the 27 offsets unrolled per channel, LLVM kept
    /// nine row pointers and hoisted the weight broadcasts, ran out of the 16 AVX2 registers
    /// and spilled both to the stack in the inner loop.
    rows: Vec<usize>,
    /// Offsets of the kernel columns in a row (1 to 3, unrolled: a loop over every tap
    /// measured 25 % slower than rows of 3).
    cols: Vec<usize>,
    /// The largest of `rows` plus the largest of `cols`.
    reach: usize,
}

impl Tile {
    /// Every tap of a 3×3×3 window over `ci` channels, in (channel, kd, kh, kw) order.
    fn dense(ci: usize, cpad: usize, lay: Layout) -> Self {
        let rows = (0..ci * 9)
            .map(|n| (n / 9) * lay.chan + (n / 3 % 3) * lay.plane + lay.kh[n % 3])
            .collect();
        Self::with_taps(rows, lay.kw.to_vec(), cpad, lay)
    }

    fn with_taps(rows: Vec<usize>, cols: Vec<usize>, cpad: usize, lay: Layout) -> Self {
        assert!((1..=3).contains(&cols.len()));
        let reach = rows.iter().max().copied().unwrap_or(0) + cols.iter().max().unwrap();
        Self {
            cpad,
            lay,
            rows,
            cols,
            reach,
        }
    }

    /// Taps in all.
    fn taps(&self) -> usize {
        self.rows.len() * self.cols.len()
    }
}

/// [`tile`] for the tile's number of kernel columns.
///
/// # Safety
/// As [`tile`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_any<S: F32s, const CB: usize, const V: usize>(
    pad: &[f32],
    wt: &[f32],
    geo: &Tile,
    base: usize,
    cb: usize,
    rows: [*mut f32; CB],
    bias: [f32; CB],
) {
    // SAFETY: the caller's contract.
    unsafe {
        match geo.cols.len() {
            3 => tile::<S, CB, V, 3>(pad, wt, geo, base, cb, rows, bias),
            2 => tile::<S, CB, V, 2>(pad, wt, geo, base, cb, rows, bias),
            _ => tile::<S, CB, V, 1>(pad, wt, geo, base, cb, rows, bias),
        }
    }
}

/// `rows[o][l] = bias[o] + Σ_(n, j) wt[T·cb + (n·NK + j)·CB + o] · pad[base + geo.rows[n] +
/// geo.cols[j] + l]` for `l < LANES·V`, `o < CB` (`T` taps in all; the weights packed block by
/// block, see [`forward`]).
///
/// # Safety
/// The CPU must support `S`; `NK` = `geo.cols.len()`. `pad` must hold the input laid out as
/// `geo.lay`; `wt` must hold `T·cpad` floats with `cb + CB ≤ cpad`; every `rows[o]` must be
/// valid for writing `LANES·V` floats that nobody else accesses during the call.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<S: F32s, const CB: usize, const V: usize, const NK: usize>(
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
    let ntaps = geo.taps();
    // Every read is below `base + reach + LANES·V` (`reach` bounds every tap:
    // `Tile::with_taps`, whose fields nobody else sets).
    assert!(lay.len <= pad.len() && base + geo.reach + lanes * V <= lay.len);
    assert!(ntaps * geo.cpad <= wt.len() && cb + CB <= geo.cpad && geo.cols.len() == NK);
    let cols: [usize; NK] = core::array::from_fn(|j| geo.cols[j]);
    // SAFETY (all intrinsics and pointer reads below): the CPU supports `S`; reads within the
    // bounds asserted above (weights: the block's `T·CB` floats from T·cb, inside T·cpad),
    // writes as the caller's contract states.
    unsafe {
        let mut a = [[S::zero(); V]; CB];
        for (ao, &bv) in a.iter_mut().zip(&bias) {
            *ao = [S::splat(bv); V];
        }
        // Taps in order: each output's sum keeps it.
        let wb = wt.as_ptr().add(ntaps * cb);
        for (n, &off) in geo.rows.iter().enumerate() {
            let row = pad.as_ptr().add(base + off);
            let wk = wb.add(n * NK * CB);
            for (j, &col) in cols.iter().enumerate() {
                let mut xs = [S::zero(); V];
                for (v, x) in xs.iter_mut().enumerate() {
                    *x = S::load(row.add(col + lanes * v));
                }
                for (o, ao) in a.iter_mut().enumerate() {
                    let wv = S::splat(*wk.add(j * CB + o));
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
    static PAD: Scratch = const { core::cell::RefCell::new(Vec::new()) };
    static ACC: Scratch = const { core::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's padded-input scratch of `len` floats (contents unspecified).
fn with_pad_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_scratch(&PAD, len, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    }

    /// The convolution, its weight gradient and its input gradient by direct summation in f64
    /// (zero padding by bounds tests): `(y, dw, dx)` for the output gradient `dy`.
    fn reference(x: &[f32], w: &[f32], dy: &[f32], c: &Conv3) -> [Vec<f64>; 3] {
        let [d, h, wd] = c.dims;
        let [od, oh, ow] = c.out();
        let (ci, co, s) = (c.ci, c.co, c.stride as isize);
        let mut y = vec![0.0f64; c.b * co * od * oh * ow];
        let mut dw = vec![0.0f64; co * ci * 27];
        let mut dx = vec![0.0f64; x.len()];
        for b in 0..c.b {
            for o in 0..co {
                for (z, i, j) in
                    (0..od).flat_map(|z| (0..oh).flat_map(move |i| (0..ow).map(move |j| (z, i, j))))
                {
                    let at = (((b * co + o) * od + z) * oh + i) * ow + j;
                    for ch in 0..ci {
                        for k in 0..27 {
                            let src = [z, i, j]
                                .iter()
                                .zip([k / 9, k / 3 % 3, k % 3])
                                .map(|(&v, kk)| v as isize * s + kk as isize - 1)
                                .collect::<Vec<_>>();
                            let inside = src
                                .iter()
                                .zip([d, h, wd])
                                .all(|(&v, n)| v >= 0 && v < n as isize);
                            if !inside {
                                continue;
                            }
                            let xi = (((b * ci + ch) * d + src[0] as usize) * h + src[1] as usize)
                                * wd
                                + src[2] as usize;
                            let wi = (o * ci + ch) * 27 + k;
                            y[at] += f64::from(w[wi]) * f64::from(x[xi]);
                            dw[wi] += f64::from(dy[at]) * f64::from(x[xi]);
                            dx[xi] += f64::from(dy[at]) * f64::from(w[wi]);
                        }
                    }
                }
            }
        }
        [y, dw, dx]
    }

    /// Both sweeps on rows that are and are not whole vectors, at both strides and vector
    /// levels:
    /// the forward gives the same bits with either (same summation order), and it, the weight
    /// gradient (both sweeps) and the input gradient (the stride-2 one by parity classes)
    /// match a direct f64 summation. Depths of 5 (tasks of 4 + 1 planes), one output row (a
    /// flat plane is one row), Cin 1 and 3, Cout 8 and 12.
    #[test]
    fn flat_and_row_sweeps_match_a_direct_summation() {
        let shapes: [(usize, usize, [usize; 3], usize); 9] = [
            (3, 8, [5, 3, 56], 1),
            (1, 12, [2, 4, 7], 1),
            (3, 8, [3, 2, 14], 1),
            (2, 8, [2, 1, 20], 1),
            (3, 8, [4, 3, 64], 1),
            (3, 12, [10, 4, 28], 2),
            (1, 8, [2, 6, 14], 2),
            (2, 8, [4, 2, 56], 2),
            (3, 8, [2, 4, 32], 2),
        ];
        crate::testing::for_each_level(|level| {
            if level == SimdLevel::Scalar {
                return;
            }
            for (i, &(ci, co, dims, stride)) in shapes.iter().enumerate() {
                let c = Conv3 {
                    b: 2,
                    ci,
                    co,
                    dims,
                    stride,
                };
                let seed = 300 + 3 * i as u64;
                let x = values(c.b * ci * dims.iter().product::<usize>(), seed);
                let w = values(co * ci * 27, seed + 1);
                let dy = values(c.b * co * c.out().iter().product::<usize>(), seed + 2);
                let [ry, rdw, rdx] = reference(&x, &w, &dy, &c);
                let rows = forward(&x, &w, None, &c, Sweep::Rows);
                let flat = forward(&x, &w, None, &c, Sweep::Flat);
                let what = format!("{level} {c:?}");
                assert!(
                    rows.iter()
                        .zip(&flat)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}: the two sweeps' forwards differ"
                );
                let close = |got: &[f32], want: &[f64], name: &str| {
                    assert_eq!(got.len(), want.len());
                    for (k, (&g, &r)) in got.iter().zip(want).enumerate() {
                        assert!(
                            (f64::from(g) - r).abs() <= 1e-4 * (1.0 + r.abs()),
                            "{what} {name}[{k}]: {g} against {r}"
                        );
                    }
                };
                close(&rows, &ry, "forward");
                for sweep in [Sweep::Rows, Sweep::Flat] {
                    let dw = weight_grad_swept(&x, &dy, &c, sweep);
                    close(&dw, &rdw, &format!("{sweep:?} weight gradient"));
                }
                close(&input_grad(&dy, &w, &c), &rdx, "input gradient");
            }
        });
    }

    /// The sweep chosen: rows where they are whole tiles of 2 vectors (32 lanes with AVX-512,
    /// 16 with AVX2), flat elsewhere — the real-data UNet's rows of 56, 28, 14, 7 (2 mm, crop
    /// 56 × 72 × 56) at both levels.
    #[test]
    fn flat_sweep_is_chosen_where_rows_are_not_whole_tiles() {
        let conv = |w: usize, stride: usize| Conv3 {
            b: 1,
            ci: 8,
            co: 8,
            dims: [4, 72, w],
            stride,
        };
        let choose = |w, s, l| Sweep::choose(&conv(w, s), l);
        for level in [SimdLevel::Avx2, SimdLevel::Avx512] {
            for w in [56, 28, 14, 7] {
                assert_eq!(choose(w, 1, level), Sweep::Flat, "{level} {w}");
            }
            assert_eq!(choose(64, 1, level), Sweep::Rows, "{level}");
            assert_eq!(choose(56, 2, level), Sweep::Flat, "{level}"); // rows of 28
            assert_eq!(choose(64, 2, level), Sweep::Rows, "{level}"); // rows of 32
        }
        assert_eq!(choose(16, 1, SimdLevel::Avx2), Sweep::Rows);
        assert_eq!(choose(16, 1, SimdLevel::Avx512), Sweep::Flat); // one vector a row
    }

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
