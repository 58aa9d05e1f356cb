//! Direct 3×3×3, stride-1, padding-1 convolution on NCDHW `f32` data, vectorised along W
//! (AVX-512), without im2col: the UNet's same-size convolutions, forward and input gradient.
//!
//! # Why
//! With 8–16 output channels the im2col GEMM of [`crate::conv3d`] writes 27·Cin floats per
//! voxel and multiplies each by only `Cout` weights: copying the columns (`shift_copy`) cost
//! more than the GEMM itself (a quarter of the UNet step). Here each output row of `LB`
//! voxels (16 or 32) for a block of 8 output channels is a register tile: for every input
//! channel and kernel offset one (unaligned) load of the shifted input row and 8 fused
//! multiply-adds with broadcast weights. The input planes a task needs are first copied into
//! a zero-bordered scratch (`(planes + 2) × (H + 2) × (W + 2)` per channel), so the inner
//! loop has no boundary tests.
//!
//! The input gradient of a same-size 3×3×3 convolution is the same convolution of the output
//! gradient with the kernel flipped in space and `Cin`/`Cout` swapped (no bias).
//!
//! Every output value sums its 27·Cin products in one fixed order (channel, then kd, kh, kw),
//! whatever the number of threads. Used only when the CPU has AVX-512F and W is a multiple
//! of 16; [`supported`] says so.

use rayon::prelude::*;

use crate::flex_buf::{assume_init_f32, uninit_f32};

/// Output channels per register tile.
const CB: usize = 8;
/// Output depth planes per task (scratch: `(PLANES + 2)` padded input planes per channel).
const PLANES: usize = 4;

/// Whether the direct kernel runs on this CPU for rows of `w` voxels (AVX-512 present and
/// not switched off by `MCKD_KERNELS_BASELINE`, see [`crate::simd::avx512`]).
pub(crate) fn supported(w: usize) -> bool {
    w.is_multiple_of(16) && crate::simd::avx512()
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
    assert!(supported(dims[2]), "direct conv: unsupported CPU or width");
    let [d, h, wd] = dims;
    let plane = h * wd;
    let vol = d * plane;
    assert_eq!(x.len(), b * ci * vol);
    assert_eq!(w.len(), co * ci * 27);
    // wt[(c, k)][cpad]: weights of one input channel and offset for all output channels.
    let cpad = co.div_ceil(CB) * CB;
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
    let (hp, wp) = (h + 2, wd + 2);
    tasks.into_par_iter().for_each(|(bi, d0)| {
        let np = PLANES.min(d - d0);
        let pplane = hp * wp;
        let pchan = (np + 2) * pplane;
        with_pad_scratch(ci * pchan, |pad| {
            pad_planes(x, bi, ci, [d, h, wd], d0, np, pad);
            let geo = Tile {
                ci,
                cpad,
                pchan,
                pplane,
                wp,
            };
            for q in 0..np {
                for r in 0..h {
                    let mut w0 = 0;
                    while w0 < wd {
                        let lb = if wd - w0 >= 32 { 32 } else { 16 };
                        for cb in (0..co).step_by(CB) {
                            let base = q * pplane + r * wp + w0;
                            // Output rows y[bi, o, d0 + q, r, w0..w0 + lb] of the block's
                            // channels (a junk row for channels past Cout) and their biases.
                            let mut junk = [0.0f32; 32];
                            let mut rows = [junk.as_mut_ptr(); CB];
                            let mut bv = [0.0f32; CB];
                            for o in cb..(cb + CB).min(co) {
                                let off = (bi * co + o) * vol + (d0 + q) * plane + r * wd + w0;
                                // SAFETY: within `y` (off + lb ≤ its length).
                                rows[o - cb] = unsafe { out.get().add(off) };
                                bv[o - cb] = bias.map_or(0.0, |bs| bs[o]);
                            }
                            // SAFETY: `supported` checked AVX-512F; the slices cover every
                            // index the kernel reads (see `tile`); it writes `lb` floats to
                            // each row: this task's own elements of `y` (tasks partition
                            // (batch, depth planes); `y` outlives the loop) or `junk`.
                            unsafe {
                                if lb == 32 {
                                    tile::<2>(pad, &wt, &geo, base, cb, rows, bv);
                                } else {
                                    tile::<1>(pad, &wt, &geo, base, cb, rows, bv);
                                }
                            }
                        }
                        w0 += lb;
                    }
                }
            }
        });
    });
    // SAFETY: the tasks partition (batch, depth planes) and each writes every (co, row, w).
    unsafe { assume_init_f32(y) }
}

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

/// Zero-bordered copy of the depth planes `d0 − 1 ..= d0 + np` of every channel of batch item
/// `bi` into `pad` (`ci` channels of `(np + 2) × (H + 2) × (W + 2)`).
fn pad_planes(
    x: &[f32],
    bi: usize,
    ci: usize,
    [d, h, wd]: [usize; 3],
    d0: usize,
    np: usize,
    pad: &mut [f32],
) {
    let (plane, vol) = (h * wd, d * h * wd);
    let (hp, wp) = (h + 2, wd + 2);
    let pplane = hp * wp;
    let pchan = (np + 2) * pplane;
    for c in 0..ci {
        let xc = &x[(bi * ci + c) * vol..][..vol];
        let pc = &mut pad[c * pchan..][..pchan];
        for q in 0..np + 2 {
            let pq = &mut pc[q * pplane..][..pplane];
            let src_d = (d0 + q) as isize - 1;
            if src_d < 0 || src_d >= d as isize {
                pq.fill(0.0);
                continue;
            }
            let xs = &xc[src_d as usize * plane..][..plane];
            pq[..wp].fill(0.0);
            pq[(hp - 1) * wp..].fill(0.0);
            for r in 0..h {
                let row = &mut pq[(r + 1) * wp..][..wp];
                row[0] = 0.0;
                row[wp - 1] = 0.0;
                row[1..=wd].copy_from_slice(&xs[r * wd..][..wd]);
            }
        }
    }
}

/// The weight gradient of [`conv3x3x3_same`], `[Cout, Cin, 27]`: per task (batch item, 4
/// depth planes) `dW_t[o, c, k] = Σ_voxels dy[o, v] · x[c, v + off(k)]` with 8 output
/// channels × 3 kw offsets in registers (16 lanes each, summed across lanes at the end),
/// sweeping blocks of ~256 voxels (rows) through every input channel and offset so the
/// block's `dy` stays in L1; then the task partials added in task order (independent of the
/// thread count).
///
/// # Panics
/// If `co` is not a multiple of 8 or [`supported`] is false for `dims[2]`.
pub(crate) fn conv3x3x3_same_weight_grad(
    x: &[f32],
    dy: &[f32],
    b: usize,
    ci: usize,
    co: usize,
    dims: [usize; 3],
) -> Vec<f32> {
    assert!(
        supported(dims[2]) && co.is_multiple_of(CB),
        "direct weight gradient: unsupported"
    );
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
            let (hp, wp) = (h + 2, wd + 2);
            let pchan = (np + 2) * hp * wp;
            let mut dw = vec![0.0f32; co * ci * 27];
            with_pad_scratch(ci * pchan, |pad| {
                pad_planes(x, bi, ci, dims, d0, np, pad);
                let dyb = &dy[bi * co * vol..][..co * vol];
                // Lane accumulators of every (c, output block, kd, kh): 8 × 3 vectors each,
                // carried across blocks of rows so that a block's dy rows stay in L1 while
                // every input channel and offset uses them. Each lane still sums its products
                // in (plane, row, column) order.
                let nob = co / CB;
                let slot = CB * 3 * 16;
                let mut accm = vec![0.0f32; ci * nob * 9 * slot];
                let rb = (256 / wd).max(1);
                for q in 0..np {
                    for r0 in (0..h).step_by(rb) {
                        let rows = r0..(r0 + rb).min(h);
                        for c in 0..ci {
                            let pc = &pad[c * pchan..][..pchan];
                            for obi in 0..nob {
                                for k2 in 0..9 {
                                    let at = ((c * nob + obi) * 9 + k2) * slot;
                                    let acc = &mut accm[at..at + slot];
                                    let (kd, kh) = (k2 / 3, k2 % 3);
                                    // SAFETY: `supported` checked AVX-512F; bounds in the
                                    // callee's asserts.
                                    unsafe {
                                        wgrad_rows(
                                            pc,
                                            dyb,
                                            dims,
                                            [d0, q],
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
                                    let lanes = &accm[at + (o * 3 + kw) * 16..][..16];
                                    let to = ((obi * CB + o) * ci + c) * 27 + k2 * 3 + kw;
                                    // SAFETY: `supported` checked AVX-512F.
                                    dw[to] = unsafe { reduce16(lanes) };
                                }
                            }
                        }
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

/// `acc[(o·3 + kw)·16 + l] += Σ_{r ∈ rows, w ≡ l (mod 16)} dy[ob + o, d0 + q, r, w] ·
/// pc[q + kd, r + kh, w + kw]` (the padded channel `pc` of one input channel), lane by lane
/// in row and column order.
///
/// # Safety
/// The CPU must support AVX-512F; `W` a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_rows(
    pc: &[f32],
    dyb: &[f32],
    [d, h, wd]: [usize; 3],
    [d0, q]: [usize; 2],
    rows: core::ops::Range<usize>,
    ob: usize,
    [kd, kh]: [usize; 2],
    acc: &mut [f32],
) {
    use core::arch::x86_64::*;
    let (plane, vol) = (h * wd, d * h * wd);
    let (wp, pplane) = (wd + 2, (h + 2) * (wd + 2));
    assert!(wd.is_multiple_of(16) && d0 + q < d && rows.end <= h && acc.len() >= CB * 48);
    assert!((ob + CB) * vol <= dyb.len());
    assert!(rows.is_empty() || (q + kd) * pplane + (rows.end - 1 + kh) * wp + wd + 2 <= pc.len());
    let mut a = [[_mm512_setzero_ps(); 3]; CB];
    for (o, ao) in a.iter_mut().enumerate() {
        for (kw, v) in ao.iter_mut().enumerate() {
            // SAFETY: (o·3 + kw)·16 + 16 ≤ 48·CB ≤ acc.len().
            *v = unsafe { _mm512_loadu_ps(acc.as_ptr().add((o * 3 + kw) * 16)) };
        }
    }
    for r in rows {
        // SAFETY (pointer reads below): dy rows of channels ob..ob+8 at plane d0 + q, row r
        // (asserted in range); the padded row (q + kd, r + kh) has W + 2 floats, read at
        // w + kw + 16 ≤ W + 2.
        let xrow = unsafe { pc.as_ptr().add((q + kd) * pplane + (r + kh) * wp) };
        let yoff = (d0 + q) * plane + r * wd;
        for w in (0..wd).step_by(16) {
            let x0 = unsafe { _mm512_loadu_ps(xrow.add(w)) };
            let x1 = unsafe { _mm512_loadu_ps(xrow.add(w + 1)) };
            let x2 = unsafe { _mm512_loadu_ps(xrow.add(w + 2)) };
            for (o, ao) in a.iter_mut().enumerate() {
                let g = unsafe { _mm512_loadu_ps(dyb.as_ptr().add((ob + o) * vol + yoff + w)) };
                ao[0] = _mm512_fmadd_ps(g, x0, ao[0]);
                ao[1] = _mm512_fmadd_ps(g, x1, ao[1]);
                ao[2] = _mm512_fmadd_ps(g, x2, ao[2]);
            }
        }
    }
    for (o, ao) in a.iter().enumerate() {
        for (kw, &v) in ao.iter().enumerate() {
            // SAFETY: as for the loads.
            unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add((o * 3 + kw) * 16), v) };
        }
    }
}

/// The sum of 16 lanes (`_mm512_reduce_add_ps`).
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn reduce16(lanes: &[f32]) -> f32 {
    use core::arch::x86_64::*;
    assert!(lanes.len() >= 16);
    // SAFETY: 16 floats.
    _mm512_reduce_add_ps(unsafe { _mm512_loadu_ps(lanes.as_ptr()) })
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_rows(
    _: &[f32],
    _: &[f32],
    _: [usize; 3],
    _: [usize; 2],
    _: core::ops::Range<usize>,
    _: usize,
    _: [usize; 2],
    _: &mut [f32],
) {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn reduce16(_: &[f32]) -> f32 {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
}

/// Sizes of a task's padded scratch and weights.
struct Tile {
    ci: usize,
    cpad: usize,
    /// Floats per padded channel, per padded plane, per padded row.
    pchan: usize,
    pplane: usize,
    wp: usize,
}

/// `rows[o][l] = bias[o] + Σ_c Σ_k wt[(c, k), cb + o] · pad[c, base + off(k) + l]` for
/// `l < 16·V`, `o < 8`.
///
/// # Safety
/// The CPU must support AVX-512F. `pad` must hold `geo.ci` channels of `geo.pchan` floats
/// with `base + 2·pplane + 2·wp + 2 + 16·V ≤ pchan`; `wt` must hold `ci·27·cpad` floats with
/// `cb + 8 ≤ cpad`; every `rows[o]` must be valid for writing `16·V` floats that nobody
/// else accesses during the call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const V: usize>(
    pad: &[f32],
    wt: &[f32],
    geo: &Tile,
    base: usize,
    cb: usize,
    rows: [*mut f32; CB],
    bias: [f32; CB],
) {
    use core::arch::x86_64::*;
    assert!(
        geo.ci * geo.pchan <= pad.len()
            && base + 2 * geo.pplane + 2 * geo.wp + 2 + 16 * V <= geo.pchan
    );
    assert!(geo.ci * 27 * geo.cpad <= wt.len() && cb + CB <= geo.cpad);
    let mut a = [[_mm512_setzero_ps(); V]; CB];
    for (ao, &bv) in a.iter_mut().zip(&bias) {
        *ao = [_mm512_set1_ps(bv); V];
    }
    for c in 0..geo.ci {
        // SAFETY (all pointer reads below): within the bounds asserted above.
        let pc = unsafe { pad.as_ptr().add(c * geo.pchan + base) };
        let wc = unsafe { wt.as_ptr().add(c * 27 * geo.cpad + cb) };
        for kd in 0..3 {
            for kh in 0..3 {
                let row = unsafe { pc.add(kd * geo.pplane + kh * geo.wp) };
                for kw in 0..3 {
                    let mut xs = [_mm512_setzero_ps(); V];
                    for (v, x) in xs.iter_mut().enumerate() {
                        *x = unsafe { _mm512_loadu_ps(row.add(kw + 16 * v)) };
                    }
                    let wk = unsafe { wc.add((kd * 9 + kh * 3 + kw) * geo.cpad) };
                    for (o, ao) in a.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(unsafe { *wk.add(o) });
                        for v in 0..V {
                            ao[v] = _mm512_fmadd_ps(wv, xs[v], ao[v]);
                        }
                    }
                }
            }
        }
    }
    for (ao, &row) in a.iter().zip(&rows) {
        for (v, &av) in ao.iter().enumerate() {
            // SAFETY: 16·v + 16 ≤ 16·V floats of `row` (the caller's contract).
            unsafe { _mm512_storeu_ps(row.add(16 * v), av) };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const V: usize>(
    _: &[f32],
    _: &[f32],
    _: &Tile,
    _: usize,
    _: usize,
    _: [*mut f32; CB],
    _: [f32; CB],
) {
    unreachable!("the direct kernel is x86-64 only (see `supported`)")
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
