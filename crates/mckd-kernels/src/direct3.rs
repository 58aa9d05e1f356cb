//! Direct 3×3×3, stride-1, padding-1 convolution on NCDHW `f32` data, vectorised along W
//! (AVX-512 or AVX2), without im2col: the UNet's same-size convolutions, forward and input
//! gradient.
//!
//! # Why
//! With 8–16 output channels the im2col GEMM of [`crate::conv3d`] writes 27·Cin floats per
//! voxel and multiplies each by only `Cout` weights: copying the columns (`shift_copy`) cost
//! more than the GEMM itself (a quarter of the UNet step). Here each output row of `LB`
//! voxels for a block of `CB` output channels is a register tile: for every input channel and
//! kernel offset one (unaligned) load per vector of the shifted input row and `CB` fused
//! multiply-adds with broadcast weights. AVX-512 (32 registers): `CB` = 8 channels × 16 or 32
//! voxels; AVX2 (16 registers): 4 channels × 8, 16 or 24 voxels (12 accumulators, the input
//! vectors and the broadcast weight fit the register file). The input planes a task needs are first copied into
//! a zero-bordered scratch (`(planes + 2) × (H + 2) × (W + 2)` per channel), so the inner
//! loop has no boundary tests.
//!
//! The input gradient of a same-size 3×3×3 convolution is the same convolution of the output
//! gradient with the kernel flipped in space and `Cin`/`Cout` swapped (no bias).
//!
//! Every output value sums its 27·Cin products in one fixed order (channel, then kd, kh, kw)
//! with fused multiply-adds, whatever the number of threads and at both levels (the forward
//! and input gradient give the same bits with AVX2 and AVX-512; the weight gradient's lane
//! sums group differently). Used when the level ([`crate::simd`]) is AVX2 or AVX-512 and W
//! is a multiple of 16; [`supported`] says so.

use rayon::prelude::*;

use crate::flex_buf::{assume_init_f32, uninit_f32};
use crate::simd::SimdLevel;
#[cfg(target_arch = "x86_64")]
use crate::simd::vec::{Avx2, Avx512, F32s};

/// Output channels per register tile of the forward and the weight gradient (AVX-512).
const CB512: usize = 8;
/// Output channels per register tile (AVX2: half the registers of AVX-512).
const CB256: usize = 4;
/// Output depth planes per task (scratch: `(PLANES + 2)` padded input planes per channel).
const PLANES: usize = 4;

/// Whether the direct kernel runs at the current level for rows of `w` voxels.
pub(crate) fn supported(w: usize) -> bool {
    w.is_multiple_of(16) && crate::simd::level() != SimdLevel::Scalar
}

/// Whether [`conv3x3x3_same_weight_grad`] runs at the current level (rows of `w` voxels,
/// `co` output channels: a multiple of the level's channel block).
pub(crate) fn weight_grad_supported(w: usize, co: usize) -> bool {
    supported(w) && co.is_multiple_of(channel_block(crate::simd::level()))
}

/// Output channels per register tile at `level`.
fn channel_block(level: SimdLevel) -> usize {
    if level == SimdLevel::Avx512 {
        CB512
    } else {
        CB256
    }
}

/// `[batch, Cin, D, H, W]` ∗ `[Cout, Cin, 3, 3, 3]` (+ `bias`), stride 1, padding 1:
/// `[batch, Cout, D, H, W]`.
///
/// # Panics
/// If [`supported`] is false for `dims[4]`, or the slices do not match the sizes.
pub(crate) fn conv3x3x3_same(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    b: usize,
    ci: usize,
    co: usize,
    dims: [usize; 3],
) -> Vec<f32> {
    assert!(
        supported(dims[2]),
        "direct conv: unsupported level or width"
    );
    let level = crate::simd::level();
    let cb = channel_block(level);
    let [d, h, wd] = dims;
    let plane = h * wd;
    let vol = d * plane;
    assert_eq!(x.len(), b * ci * vol);
    assert_eq!(w.len(), co * ci * 27);
    // wt[(c, k)][cpad]: weights of one input channel and offset for all output channels.
    let cpad = co.div_ceil(cb) * cb;
    let mut wt = vec![0.0f32; ci * 27 * cpad];
    for o in 0..co {
        for c in 0..ci {
            for k in 0..27 {
                wt[(c * 27 + k) * cpad + o] = w[(o * ci + c) * 27 + k];
            }
        }
    }
    let mut y = uninit_f32(b * co * vol);
    let out = SendPtr(y.as_mut_ptr().cast::<f32>());
    let tasks: Vec<(usize, usize)> = (0..b)
        .flat_map(|bi| (0..d).step_by(PLANES).map(move |p| (bi, p)))
        .collect();
    tasks.into_par_iter().for_each(|(bi, d0)| {
        let np = PLANES.min(d - d0);
        let lay = Layout::new(ci, np, h, wd, level);
        with_pad_scratch(lay.len, |pad| {
            pad_planes(x, bi, ci, [d, h, wd], d0, np, &lay, pad);
            let geo = Tile { ci, cpad, lay };
            let task = Task {
                bi,
                d0,
                np,
                co,
                dims,
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
    // SAFETY: the tasks partition (batch, depth planes) and each writes every (co, row, w).
    unsafe { assume_init_f32(y) }
}

/// One forward task's place in the output: batch item `bi`, depth planes `d0 .. d0 + np`.
struct Task<'a> {
    bi: usize,
    d0: usize,
    np: usize,
    co: usize,
    dims: [usize; 3],
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
    unsafe { task_rows::<Avx512, CB512, 2>(pad, wt, geo, t) }
}

/// [`task_rows`] with AVX2 + FMA: 4 channels × 8, 16 or 24 voxels.
///
/// # Safety
/// AVX2 and FMA; as [`task_rows`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2(pad: &[f32], wt: &[f32], geo: &Tile, t: &Task) {
    // SAFETY: as the caller guarantees.
    unsafe { task_rows::<Avx2, CB256, 3>(pad, wt, geo, t) }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn task_avx512(_: &[f32], _: &[f32], _: &Tile, _: &Task) {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn task_avx2(_: &[f32], _: &[f32], _: &Tile, _: &Task) {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
}

/// Every output row of one task (planes `d0 ..`, all rows, all channel blocks of `CB`): tiles
/// of up to `VMAX` vectors along W.
///
/// # Safety
/// The CPU must support `S`; `pad` holds the task's `ci` padded channels (`geo`), `wt` the
/// weights packed with `geo.cpad` a multiple of `CB`; `t.out` points to the output, of which
/// this task alone writes its planes; W a multiple of 16 and of `S::LANES`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn task_rows<S: F32s, const CB: usize, const VMAX: usize>(
    pad: &[f32],
    wt: &[f32],
    geo: &Tile,
    t: &Task,
) {
    let [_, h, wd] = t.dims;
    let plane = h * wd;
    let vol = t.dims[0] * plane;
    assert!(wd.is_multiple_of(S::LANES) && VMAX * S::LANES <= JUNK);
    for q in 0..t.np {
        for r in 0..h {
            let mut w0 = 0;
            while w0 < wd {
                let v = ((wd - w0) / S::LANES).min(VMAX);
                for cb in (0..t.co).step_by(CB) {
                    let base = q * geo.lay.plane + r * geo.lay.row + w0;
                    // Output rows y[bi, o, d0 + q, r, w0..] of the block's channels (a junk
                    // row for channels past Cout) and their biases.
                    let mut junk = [0.0f32; JUNK];
                    let mut rows = [junk.as_mut_ptr(); CB];
                    let mut bv = [0.0f32; CB];
                    for o in cb..(cb + CB).min(t.co) {
                        let off = (t.bi * t.co + o) * vol + (t.d0 + q) * plane + r * wd + w0;
                        // SAFETY: within `y` (off + v·LANES ≤ its length).
                        rows[o - cb] = unsafe { t.out.get().add(off) };
                        bv[o - cb] = t.bias.map_or(0.0, |bs| bs[o]);
                    }
                    // SAFETY: the caller's contract; the slices cover every index the kernel
                    // reads (see `tile`); it writes v·LANES floats to each row: this task's
                    // own elements of `y` (tasks partition (batch, depth planes); `y` outlives
                    // the loop) or `junk`.
                    unsafe {
                        match v {
                            1 => tile::<S, CB, 1>(pad, wt, geo, base, cb, rows, bv),
                            2 => tile::<S, CB, 2>(pad, wt, geo, base, cb, rows, bv),
                            _ => tile::<S, CB, 3>(pad, wt, geo, base, cb, rows, bv),
                        }
                    }
                }
                w0 += v * S::LANES;
            }
        }
    }
}

/// Floats of the junk row that takes the tiles' rows past `Cout` (≥ the widest tile).
const JUNK: usize = 32;

/// The input gradient of [`conv3x3x3_same`]: `dx = conv(dy, w')` with
/// `w'[c, o, k] = w[o, c, 26 − k]`.
pub(crate) fn conv3x3x3_same_input_grad(
    dy: &[f32],
    w: &[f32],
    b: usize,
    ci: usize,
    co: usize,
    dims: [usize; 3],
) -> Vec<f32> {
    let mut wf = vec![0.0f32; ci * co * 27];
    for o in 0..co {
        for c in 0..ci {
            for k in 0..27 {
                wf[(c * co + o) * 27 + k] = w[(o * ci + c) * 27 + (26 - k)];
            }
        }
    }
    conv3x3x3_same(dy, &wf, None, b, co, ci, dims)
}

/// Where a task's zero-bordered input lives in its scratch: the value of channel `c`, padded
/// plane `q`, padded row `r`, column `w` (of `W + 2`) at `c·chan + q·plane + r·row + w`.
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
    /// Floats of the whole scratch.
    len: usize,
}

impl Layout {
    /// `ci` channels of `np + 2` planes of `h + 2` rows of `wd + 2` values, for `level`.
    fn new(ci: usize, np: usize, h: usize, wd: usize, level: SimdLevel) -> Self {
        let wp = wd + 2;
        if level != SimdLevel::Avx2 {
            let plane = (h + 2) * wp;
            let chan = (np + 2) * plane;
            return Self {
                chan,
                plane,
                row: wp,
                len: ci * chan,
            };
        }
        let row = ci * wp;
        let plane = (h + 2) * row;
        Self {
            chan: wp,
            plane,
            row,
            len: (np + 2) * plane,
        }
    }
}

/// Zero-bordered copy of the depth planes `d0 − 1 ..= d0 + np` of every channel of batch item
/// `bi` into `pad` (laid out as `lay`).
#[allow(clippy::too_many_arguments)]
fn pad_planes(
    x: &[f32],
    bi: usize,
    ci: usize,
    [d, h, wd]: [usize; 3],
    d0: usize,
    np: usize,
    lay: &Layout,
    pad: &mut [f32],
) {
    let (plane, vol) = (h * wd, d * h * wd);
    let wp = wd + 2;
    assert!(pad.len() >= lay.len);
    for c in 0..ci {
        let xc = &x[(bi * ci + c) * vol..][..vol];
        for q in 0..np + 2 {
            let src_d = (d0 + q) as isize - 1;
            for r in 0..h + 2 {
                let row = &mut pad[c * lay.chan + q * lay.plane + r * lay.row..][..wp];
                if src_d < 0 || src_d >= d as isize || r == 0 || r == h + 1 {
                    row.fill(0.0);
                    continue;
                }
                row[0] = 0.0;
                row[wp - 1] = 0.0;
                row[1..=wd].copy_from_slice(&xc[src_d as usize * plane + (r - 1) * wd..][..wd]);
            }
        }
    }
}

/// The weight gradient of [`conv3x3x3_same`], `[Cout, Cin, 27]`: per task (batch item, 4
/// depth planes) `dW_t[o, c, k] = Σ_voxels dy[o, v] · x[c, v + off(k)]` with `CB` output
/// channels × 3 kw offsets in registers (8 × 3 vectors of 16 lanes with AVX-512, 4 × 3 of 8
/// with AVX2; summed across lanes at the end), sweeping blocks of ~256 voxels (rows) through
/// every input channel and offset so the block's `dy` stays in L1; then the task partials
/// added in task order (independent of the thread count).
///
/// # Panics
/// If [`weight_grad_supported`] is false.
pub(crate) fn conv3x3x3_same_weight_grad(
    x: &[f32],
    dy: &[f32],
    b: usize,
    ci: usize,
    co: usize,
    dims: [usize; 3],
) -> Vec<f32> {
    assert!(
        weight_grad_supported(dims[2], co),
        "direct weight gradient: unsupported"
    );
    let level = crate::simd::level();
    let [d, h, wd] = dims;
    let vol = d * h * wd;
    assert_eq!(x.len(), b * ci * vol);
    assert_eq!(dy.len(), b * co * vol);
    let tasks: Vec<(usize, usize)> = (0..b)
        .flat_map(|bi| (0..d).step_by(PLANES).map(move |p| (bi, p)))
        .collect();
    let partials: Vec<Vec<f32>> = tasks
        .into_par_iter()
        .map(|(bi, d0)| {
            let np = PLANES.min(d - d0);
            let lay = Layout::new(ci, np, h, wd, level);
            let mut dw = vec![0.0f32; co * ci * 27];
            with_pad_scratch(lay.len, |pad| {
                pad_planes(x, bi, ci, dims, d0, np, &lay, pad);
                let dyb = &dy[bi * co * vol..][..co * vol];
                let t = WgradTask {
                    ci,
                    co,
                    dims,
                    d0,
                    np,
                    lay,
                };
                // SAFETY: `weight_grad_supported` checked the level (so the CPU has its
                // features) and that `co` is a multiple of its channel block; sizes as
                // asserted above.
                unsafe {
                    match level {
                        SimdLevel::Avx512 => wgrad_task_avx512(pad, dyb, &t, &mut dw),
                        _ => wgrad_task_avx2(pad, dyb, &t, &mut dw),
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

/// Sizes of one weight-gradient task (batch item, depth planes `d0 .. d0 + np`).
struct WgradTask {
    ci: usize,
    co: usize,
    dims: [usize; 3],
    d0: usize,
    np: usize,
    /// The task's scratch.
    lay: Layout,
}

/// [`wgrad_task`] with AVX-512 (8 channels × 3 offsets × 16 lanes).
///
/// # Safety
/// AVX-512F; as [`wgrad_task`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wgrad_task_avx512(pad: &[f32], dyb: &[f32], t: &WgradTask, dw: &mut [f32]) {
    // SAFETY: as the caller guarantees.
    unsafe { wgrad_task::<Avx512, CB512>(pad, dyb, t, dw) }
}

/// [`wgrad_task`] with AVX2 + FMA (4 channels × 3 offsets × 8 lanes).
///
/// # Safety
/// AVX2 and FMA; as [`wgrad_task`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wgrad_task_avx2(pad: &[f32], dyb: &[f32], t: &WgradTask, dw: &mut [f32]) {
    // SAFETY: as the caller guarantees.
    unsafe { wgrad_task::<Avx2, CB256>(pad, dyb, t, dw) }
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
/// The CPU must support `S`; `pad` holds the task's `ci` padded channels (`t.lay`),
/// `dyb` the batch item's output gradient (`co` channels), `dw` `co·ci·27` floats; `co` a
/// multiple of `CB`, W of 16.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn wgrad_task<S: F32s, const CB: usize>(
    pad: &[f32],
    dyb: &[f32],
    t: &WgradTask,
    dw: &mut [f32],
) {
    let (ci, co, wd, h) = (t.ci, t.co, t.dims[2], t.dims[1]);
    assert!(co.is_multiple_of(CB) && dw.len() == co * ci * 27);
    // Lane accumulators of every (c, output block, kd, kh): CB × 3 vectors each, carried
    // across blocks of rows so that a block's dy rows stay in L1 while every input channel
    // and offset uses them. Each lane still sums its products in (plane, row, column) order.
    let nob = co / CB;
    let slot = CB * 3 * S::LANES;
    let mut accm = vec![0.0f32; ci * nob * 9 * slot];
    let rb = (256 / wd).max(1);
    for q in 0..t.np {
        for r0 in (0..h).step_by(rb) {
            let rows = r0..(r0 + rb).min(h);
            for c in 0..ci {
                // Channel c's rows: the scratch from its first value on.
                let pc = &pad[c * t.lay.chan..t.lay.len];
                for obi in 0..nob {
                    for k2 in 0..9 {
                        let at = ((c * nob + obi) * 9 + k2) * slot;
                        let acc = &mut accm[at..at + slot];
                        let (kd, kh) = (k2 / 3, k2 % 3);
                        // SAFETY: the CPU supports `S`; bounds in the callee's asserts.
                        unsafe {
                            wgrad_rows::<S, CB>(
                                pc,
                                &t.lay,
                                dyb,
                                t.dims,
                                [t.d0, q],
                                rows.clone(),
                                obi * CB,
                                [kd, kh],
                                acc,
                            )
                        };
                    }
                }
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

/// `acc[(o·3 + kw)·LANES + l] += Σ_{r ∈ rows, w ≡ l (mod LANES)} dy[ob + o, d0 + q, r, w] ·
/// pc[q + kd, r + kh, w + kw]` (`pc`: the scratch from one input channel's first value on,
/// laid out as `lay`), lane by lane in row and column order.
///
/// # Safety
/// The CPU must support `S`; `W` a multiple of `S::LANES`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_rows<S: F32s, const CB: usize>(
    pc: &[f32],
    lay: &Layout,
    dyb: &[f32],
    [d, h, wd]: [usize; 3],
    [d0, q]: [usize; 2],
    rows: core::ops::Range<usize>,
    ob: usize,
    [kd, kh]: [usize; 2],
    acc: &mut [f32],
) {
    let lanes = S::LANES;
    let (plane, vol) = (h * wd, d * h * wd);
    assert!(wd.is_multiple_of(lanes) && d0 + q < d && rows.end <= h && acc.len() >= CB * 3 * lanes);
    assert!((ob + CB) * vol <= dyb.len());
    assert!(
        rows.is_empty()
            || (q + kd) * lay.plane + (rows.end - 1 + kh) * lay.row + wd + 2 <= pc.len()
    );
    // SAFETY (all intrinsics and pointer accesses below): the CPU supports `S`; `acc` holds
    // CB·3 vectors (asserted); dy rows of channels ob..ob+CB at plane d0 + q, row r (asserted
    // in range); the padded row (q + kd, r + kh) has W + 2 floats, read at
    // w + kw + LANES ≤ W + 2.
    unsafe {
        let mut a = [[S::zero(); 3]; CB];
        for (o, ao) in a.iter_mut().enumerate() {
            for (kw, v) in ao.iter_mut().enumerate() {
                *v = S::load(acc.as_ptr().add((o * 3 + kw) * lanes));
            }
        }
        for r in rows {
            let xrow = pc.as_ptr().add((q + kd) * lay.plane + (r + kh) * lay.row);
            let yoff = (d0 + q) * plane + r * wd;
            for w in (0..wd).step_by(lanes) {
                let x0 = S::load(xrow.add(w));
                let x1 = S::load(xrow.add(w + 1));
                let x2 = S::load(xrow.add(w + 2));
                for (o, ao) in a.iter_mut().enumerate() {
                    let g = S::load(dyb.as_ptr().add((ob + o) * vol + yoff + w));
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
}

/// `rows[o][l] = bias[o] + Σ_c Σ_k wt[(c, k), cb + o] · pad[c, base + off(k) + l]` for
/// `l < LANES·V`, `o < CB`.
///
/// # Safety
/// The CPU must support `S`. `pad` must hold `geo.ci` channels laid out as `geo.lay` with
/// `base + (ci − 1)·chan + 2·plane + 2·row + 2 + LANES·V ≤ lay.len`; `wt` must hold
/// `ci·27·cpad` floats with
/// `cb + CB ≤ cpad`; every `rows[o]` must be valid for writing `LANES·V` floats that nobody
/// else accesses during the call.
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
                + 2
                + lanes * V
                <= lay.len
    );
    assert!(geo.ci * 27 * geo.cpad <= wt.len() && cb + CB <= geo.cpad);
    // SAFETY (all intrinsics and pointer reads below): the CPU supports `S`; reads within the
    // bounds asserted above, writes as the caller's contract states.
    unsafe {
        let mut a = [[S::zero(); V]; CB];
        for (ao, &bv) in a.iter_mut().zip(&bias) {
            *ao = [S::splat(bv); V];
        }
        for c in 0..geo.ci {
            let pc = pad.as_ptr().add(c * lay.chan + base);
            let wc = wt.as_ptr().add(c * 27 * geo.cpad + cb);
            for kd in 0..3 {
                for kh in 0..3 {
                    let row = pc.add(kd * lay.plane + kh * lay.row);
                    for kw in 0..3 {
                        let mut xs = [S::zero(); V];
                        for (v, x) in xs.iter_mut().enumerate() {
                            *x = S::load(row.add(kw + lanes * v));
                        }
                        let wk = wc.add((kd * 9 + kh * 3 + kw) * geo.cpad);
                        for (o, ao) in a.iter_mut().enumerate() {
                            let wv = S::splat(*wk.add(o));
                            for v in 0..V {
                                ao[v] = S::fmadd(wv, xs[v], ao[v]);
                            }
                        }
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
