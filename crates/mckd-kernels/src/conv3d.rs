//! 3-D convolution (groups 1, dilation 1, any kernel, stride and symmetric padding) with
//! GEMM-based forward **and backward** on `flex`.
//!
//! # Why
//! burn's `flex` backend computes a convolution's weight gradient as a convolution of the
//! input by the output gradient (burn-backend's generic `conv3d_weight_backward`): an
//! im2col whose "kernel" is the whole output volume, built per input channel — most of the
//! UNet step's time — and its input gradient through `conv_transpose3d`, a scalar loop.
//! Here all three are tiled GEMMs over rows of the output (or input) volume, with the
//! im2col tile built from the NCDHW tensor directly (no NDHWC copy):
//!
//! - forward, per batch item and tile: `Y[Cout, tile] = W[Cout, Cin·k³] × cols[Cin·k³, tile]`;
//! - weight gradient: `dW += dY[Cout, tile] × cols[Cin·k³, tile]ᵀ`, partial sums per fixed
//!   chunk of tiles added in a fixed order (the result does not depend on the thread count);
//! - input gradient, per tile of *input* rows: `dX[Cin, tile] = W'[Cin, Cout·k³] ×
//!   colsᵀ[Cout·k³, tile]` where `colsᵀ` gathers, for every input voxel and kernel offset,
//!   the output-gradient voxel it contributed to (zero where the stride skips it) — a gather,
//!   so tiles write disjoint parts of `dX` and need no atomics;
//! - bias gradient: `Σ dY` per output channel.
//!
//! 3×3×3 convolutions with padding 1 and stride 1 (the UNet's same-size layers) or stride 2
//! with even sizes run without im2col at the AVX2 and AVX-512 levels, at any row length
//! (module `direct3`): forward and input gradient always, the weight gradient when `Cout` is
//! a multiple of 4.
//!
//! The `Autodiff<Flex>` implementation registers this backward for input, weight and bias
//! (computing only the gradients that are needed). Tested against burn's `conv3d` on random
//! shapes: the UNet's k3/s1/p1 and k3/s2/p1, odd and non-cubic sizes, `Cin = 1`, and
//! anisotropic kernels, strides and paddings.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::conv::{Conv2d, Conv3d};
use burn::nn::{PaddingConfig2d, PaddingConfig3d};
use burn::prelude::*;
use rayon::prelude::*;

use crate::flex_buf::{assume_init_f32, contiguous, flex_tensor, slice, uninit_f32};

/// 3-D convolution with a GEMM backward, as a backend op.
#[backend_extension(Flex, Autodiff)]
pub trait Conv3dGemmOps: Backend {
    /// `x`: `[batch, Cin, D, H, W]`, `weight`: `[Cout, Cin, kd, kh, kw]`, `bias`: `[Cout]`;
    /// stride and symmetric zero padding per axis. Output `[batch, Cout, D', H', W']`.
    fn conv3d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> FloatTensor<Self>;
}

/// `Conv3d` with stride and symmetric padding, dilation 1, groups 1, with bias; on the `flex`
/// device in `f32` through the GEMM kernels here, elsewhere through burn's `conv3d`.
///
/// # Shapes
/// - `x`: `[batch, Cin, D, H, W]`, `weight`: `[Cout, Cin, kd, kh, kw]`, `bias`: `[Cout]`
/// - output: `[batch, Cout, (D + 2p − kd)/s + 1, …]`
///
/// # Panics
/// If the shapes do not fit together or the padded input is smaller than the kernel
/// (internal contracts of the calling layer).
pub fn conv3d(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Tensor<1>,
    stride: [usize; 3],
    padding: [usize; 3],
) -> Tensor<5> {
    let geometry = Geometry::new(&x.dims(), &weight.dims(), stride, padding);
    assert_eq!(
        bias.dims(),
        [weight.dims()[0]],
        "conv3d bias must be [Cout]"
    );
    let device = x.device();
    let on_flex = device.clone().without_autodiff() == Device::flex()
        && weight.device() == device
        && bias.device() == device
        && [x.dtype(), weight.dtype(), bias.dtype()]
            .iter()
            .all(|&d| d == DType::F32);
    if !on_flex || geometry.b == 0 || geometry.pout() == 0 {
        return reference(x, weight, bias, stride, padding);
    }
    Tensor::from_dispatch(<Dispatch as Conv3dGemmOps>::conv3d_gemm(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        stride,
        padding,
    ))
}

/// burn's own `conv3d` (the reference in the tests and the fallback).
pub fn reference(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Tensor<1>,
    stride: [usize; 3],
    padding: [usize; 3],
) -> Tensor<5> {
    burn::tensor::module::conv3d(
        x,
        weight,
        Some(bias),
        burn::tensor::ops::ConvOptions::new(stride, padding, [1, 1, 1], 1),
    )
}

/// A burn `Conv3d` layer through [`conv3d`] when it has the supported form (explicit or
/// valid padding, dilation 1, groups 1, a bias); otherwise `layer.forward(x)`.
pub fn conv3d_layer(layer: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    let padding = match layer.padding {
        PaddingConfig3d::Explicit(d, h, w) => Some([d, h, w]),
        PaddingConfig3d::Valid => Some([0, 0, 0]),
        PaddingConfig3d::Same => None,
    };
    match (padding, &layer.bias) {
        (Some(padding), Some(bias)) if layer.dilation == [1, 1, 1] && layer.groups == 1 => {
            conv3d(x, layer.weight.val(), bias.val(), layer.stride, padding)
        }
        _ => layer.forward(x),
    }
}

/// A burn `Conv2d` layer as a depth-1 [`conv3d`] (input `[B, C, 1, H, W]`, kernel
/// `[Co, Ci, 1, kh, kw]`) when it has the supported form (symmetric explicit or valid padding,
/// dilation 1, groups 1, a bias); otherwise `layer.forward(x)`. flex runs 2-D convolutions
/// through its 3-D ones, so the same reasons apply.
///
/// # Shapes
/// - `x`: `[batch, Cin, H, W]`, output `[batch, Cout, H', W']`
pub fn conv2d_layer(layer: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let padding = match layer.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([0, top, left])
        }
        PaddingConfig2d::Valid => Some([0, 0, 0]),
        _ => None,
    };
    match (padding, &layer.bias) {
        (Some(padding), Some(bias)) if layer.dilation == [1, 1] && layer.groups == 1 => {
            let [b, ci, h, w] = x.dims();
            let [co, wci, kh, kw] = layer.weight.dims();
            let y = conv3d(
                x.reshape([b, ci, 1, h, w]),
                layer.weight.val().reshape([co, wci, 1, kh, kw]),
                bias.val(),
                [1, layer.stride[0], layer.stride[1]],
                padding,
            );
            let [b, co, _, ho, wo] = y.dims();
            y.reshape([b, co, ho, wo])
        }
        _ => layer.forward(x),
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry and im2col.

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    b: usize,
    ci: usize,
    co: usize,
    din: [usize; 3],
    dout: [usize; 3],
    k: [usize; 3],
    s: [usize; 3],
    p: [usize; 3],
    /// Floats per im2col tile (sets the tile size; the tests make it small).
    budget: usize,
}

impl Geometry {
    fn new(x: &[usize], w: &[usize], s: [usize; 3], p: [usize; 3]) -> Self {
        assert!(
            x.len() == 5 && w.len() == 5,
            "conv3d wants 5-D input and weight"
        );
        assert_eq!(
            x[1], w[1],
            "conv3d: input channels {} vs weight {}",
            x[1], w[1]
        );
        assert!(s.iter().all(|&v| v > 0), "conv3d stride must be positive");
        let din = [x[2], x[3], x[4]];
        let k = [w[2], w[3], w[4]];
        let dout = core::array::from_fn(|a| {
            assert!(
                din[a] + 2 * p[a] >= k[a] && k[a] > 0,
                "conv3d: padded input smaller than the kernel"
            );
            (din[a] + 2 * p[a] - k[a]) / s[a] + 1
        });
        Self {
            b: x[0],
            ci: x[1],
            co: w[0],
            din,
            dout,
            k,
            s,
            p,
            budget: 131_072,
        }
    }

    fn pin(&self) -> usize {
        self.din.iter().product()
    }

    fn pout(&self) -> usize {
        self.dout.iter().product()
    }

    fn kvol(&self) -> usize {
        self.k.iter().product()
    }

    /// im2col column length of the forward / weight gradient (`Cin·kvol`).
    fn kcol(&self) -> usize {
        self.ci * self.kvol()
    }

    /// Rows (of `width` values) per tile so that a tile's columns take about `budget` floats
    /// (128 Ki floats = 512 KiB by default: L2-sized).
    fn rows_per_tile(&self, width: usize, col_len: usize) -> usize {
        (self.budget / (width * col_len).max(1)).max(1)
    }
}

/// `dst[t] = src[t·step + off]`, zero where that index falls outside `src`.
#[inline]
fn gather_strided(dst: &mut [f32], src: &[f32], step: usize, off: isize) {
    let n = src.len() as isize;
    let step_i = step as isize;
    let lo = if off >= 0 {
        0
    } else {
        (-off + step_i - 1) / step_i
    };
    let hi = if n - off <= 0 {
        0
    } else {
        (n - off + step_i - 1) / step_i
    };
    let hi = (hi as usize).min(dst.len());
    let lo = (lo as usize).min(hi);
    dst[..lo].fill(0.0);
    dst[hi..].fill(0.0);
    if lo == hi {
        return;
    }
    if step == 1 {
        let start = (lo as isize + off) as usize;
        dst[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
    } else {
        for (t, d) in dst[lo..hi].iter_mut().enumerate() {
            *d = src[((lo + t) as isize * step_i + off) as usize];
        }
    }
}

/// `dst[t] = src[(t + off)/step]` where `t + off` is a non-negative multiple of `step` inside
/// `src`, else zero (the transpose of [`gather_strided`]'s index map).
#[inline]
fn gather_transposed(dst: &mut [f32], src: &[f32], step: usize, off: isize) {
    if step == 1 {
        return gather_strided(dst, src, 1, off);
    }
    let step_i = step as isize;
    for (t, d) in dst.iter_mut().enumerate() {
        let num = t as isize + off;
        *d = if num >= 0 && num % step_i == 0 && ((num / step_i) as usize) < src.len() {
            src[(num / step_i) as usize]
        } else {
            0.0
        };
    }
}

/// For a same-size stride-1 convolution: `dst` over the tile rows `rows` (row = d·H + h, all
/// W columns) gets `src[d + shift_d, h + shift_h, w + shift_w]`, zero outside `src`. Copies a
/// whole run of rows of one depth plane at once (one long copy instead of one per row), then
/// zeroes the rows and columns whose source falls outside.
fn shift_copy(
    dst: &mut [f32],
    src: &[f32],
    dims: [usize; 3],
    rows: core::ops::Range<usize>,
    shift: [isize; 3],
) {
    let [dd, hh, ww] = dims;
    let (mut ri, mut r) = (0, rows.start);
    while r < rows.end {
        let d = r / hh;
        let run_end = rows.end.min((d + 1) * hh);
        let n_rows = run_end - r;
        let seg = &mut dst[ri * ww..][..n_rows * ww];
        let sd = d as isize + shift[0];
        if sd < 0 || sd >= dd as isize {
            seg.fill(0.0);
        } else {
            let h0 = (r % hh) as isize;
            let plane = &src[sd as usize * hh * ww..][..hh * ww];
            gather_strided(seg, plane, 1, (h0 + shift[1]) * ww as isize + shift[2]);
            let cut = shift[2].unsigned_abs().min(ww);
            for (k, row) in seg.chunks_exact_mut(ww).enumerate() {
                let sh = h0 + k as isize + shift[1];
                if sh < 0 || sh >= hh as isize {
                    row.fill(0.0);
                } else if shift[2] < 0 {
                    row[..cut].fill(0.0);
                } else if shift[2] > 0 {
                    row[ww - cut..].fill(0.0);
                }
            }
        }
        ri += n_rows;
        r = run_end;
    }
}

impl Geometry {
    /// Stride 1 and output size = input size (the UNet's 3×3×3, padding 1): the im2col is a
    /// set of shifted copies ([`shift_copy`]).
    fn same_size(&self) -> bool {
        self.s == [1, 1, 1] && self.dout == self.din
    }

    /// The direct 2-D kernel's sizes, for depth-1 stride-1 convolutions (`conv2d_layer`)
    /// with padding below the kernel size, at the AVX2 and AVX-512 levels.
    fn direct2d(&self) -> Option<crate::direct2::Conv2d> {
        let c = crate::direct2::Conv2d {
            b: self.b,
            ci: self.ci,
            co: self.co,
            h: self.din[1],
            w: self.din[2],
            kh: self.k[1],
            kw: self.k[2],
            ph: self.p[1],
            pw: self.p[2],
        };
        let ok = self.din[0] == 1
            && self.k[0] == 1
            && self.p[0] == 0
            && self.s == [1, 1, 1]
            && self.p[1] < self.k[1]
            && self.p[2] < self.k[2]
            && crate::direct2::supported(&c);
        ok.then_some(c)
    }

    /// A 3×3×3, padding-1 convolution of stride 1 or 2 that the direct kernel runs at the
    /// current level ([`crate::direct3`]), as its sizes.
    fn direct(&self) -> Option<crate::direct3::Conv3> {
        let stride = match self.s {
            [1, 1, 1] => 1,
            [2, 2, 2] => 2,
            _ => return None,
        };
        let c = crate::direct3::Conv3 {
            b: self.b,
            ci: self.ci,
            co: self.co,
            dims: self.din,
            stride,
        };
        (self.k == [3, 3, 3] && self.p == [1, 1, 1] && crate::direct3::supported(&c)).then_some(c)
    }
}

/// Forward im2col of output rows `rows` (row = od·H' + oh) of one batch item:
/// `cols[(ci, kd, kh, kw)][t]` row-major with `t` over the tile's output voxels.
fn im2col(xb: &[f32], g: &Geometry, rows: core::ops::Range<usize>, cols: &mut [f32]) {
    let [_, hi, wi] = g.din;
    let [_, ho, wo] = g.dout;
    let t = rows.len() * wo;
    let pin = g.pin();
    let mut j = 0;
    for ci in 0..g.ci {
        let xc = &xb[ci * pin..][..pin];
        for kd in 0..g.k[0] {
            for kh in 0..g.k[1] {
                for kw in 0..g.k[2] {
                    let dst = &mut cols[j * t..][..t];
                    j += 1;
                    if g.same_size() {
                        let shift = [kd, kh, kw].map(|k| k as isize);
                        let shift = core::array::from_fn(|a| shift[a] - g.p[a] as isize);
                        shift_copy(dst, xc, g.din, rows.clone(), shift);
                        continue;
                    }
                    for (ri, r) in rows.clone().enumerate() {
                        let seg = &mut dst[ri * wo..][..wo];
                        let id = (r / ho * g.s[0] + kd) as isize - g.p[0] as isize;
                        let ih = (r % ho * g.s[1] + kh) as isize - g.p[1] as isize;
                        if id < 0 || id >= g.din[0] as isize || ih < 0 || ih >= hi as isize {
                            seg.fill(0.0);
                        } else {
                            let src = &xc[(id as usize * hi + ih as usize) * wi..][..wi];
                            gather_strided(seg, src, g.s[2], kw as isize - g.p[2] as isize);
                        }
                    }
                }
            }
        }
    }
}

/// Input-gradient im2col of input rows `rows` (row = id·H + ih) of one batch item:
/// `cols[(co, kd, kh, kw)][t]` = the output-gradient value that input voxel `t` contributed
/// to through kernel offset (kd, kh, kw), or zero.
fn im2col_transposed(dyb: &[f32], g: &Geometry, rows: core::ops::Range<usize>, cols: &mut [f32]) {
    let [_, hi, wi] = g.din;
    let [dout, ho, wo] = g.dout;
    let t = rows.len() * wi;
    let pout = g.pout();
    let mut j = 0;
    // Output index along an axis for input index i and kernel offset k, if any.
    let out_index = |i: usize, k: usize, a: usize, n: usize| -> Option<usize> {
        let num = (i + g.p[a]) as isize - k as isize;
        let s = g.s[a] as isize;
        (num >= 0 && num % s == 0 && ((num / s) as usize) < n).then(|| (num / s) as usize)
    };
    for co in 0..g.co {
        let yc = &dyb[co * pout..][..pout];
        for kd in 0..g.k[0] {
            for kh in 0..g.k[1] {
                for kw in 0..g.k[2] {
                    let dst = &mut cols[j * t..][..t];
                    j += 1;
                    if g.same_size() {
                        let shift = [kd, kh, kw].map(|k| k as isize);
                        let shift = core::array::from_fn(|a| g.p[a] as isize - shift[a]);
                        shift_copy(dst, yc, g.dout, rows.clone(), shift);
                        continue;
                    }
                    for (ri, r) in rows.clone().enumerate() {
                        let seg = &mut dst[ri * wi..][..wi];
                        match (out_index(r / hi, kd, 0, dout), out_index(r % hi, kh, 1, ho)) {
                            (Some(od), Some(oh)) => {
                                let src = &yc[(od * ho + oh) * wo..][..wo];
                                gather_transposed(seg, src, g.s[2], g.p[2] as isize - kw as isize);
                            }
                            _ => seg.fill(0.0),
                        }
                    }
                }
            }
        }
    }
}

thread_local! {
    /// Per-thread im2col scratch: reused across tiles and calls (not zeroed again; every
    /// im2col writes all of its tile).
    static SCRATCH: crate::flex_buf::Scratch = const { core::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch buffer of `len` floats (contents unspecified, fully overwritten by
/// the im2col functions).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    crate::flex_buf::with_scratch(&SCRATCH, len, f)
}

// ---------------------------------------------------------------------------------------------
// GEMM.

/// A row-major-ish matrix view: element (r, c) at `ptr[r·rs + c·cs]`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

/// A raw output pointer that may be sent to rayon tasks writing disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
impl OutPtr {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the pointer is only used by tasks that write pairwise disjoint elements of a
// buffer that outlives the parallel loop (see each use).
unsafe impl Send for OutPtr {}
// SAFETY: as above; tasks never read through it.
unsafe impl Sync for OutPtr {}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` on one thread (`accumulate`: add to `dst`).
///
/// # Safety
/// Every element (r, c) of `dst` (r < m, c < n) must be valid for writes and not accessed by
/// anyone else during the call; every element of `lhs` and `rhs` within their sizes must be
/// valid for reads.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
) {
    if m == 0 || n == 0 {
        return;
    }
    let call = GemmCall {
        m,
        n,
        k,
        dst,
        dst_cs: dst_cs as isize,
        dst_rs: dst_rs as isize,
        accumulate,
        lhs,
        rhs,
    };
    // SAFETY: guaranteed by the caller (see above); gemm reads and writes only within the
    // m×n, m×k and k×n index ranges described by the strides.
    unsafe {
        match crate::simd::level() {
            // The gemm crate's own choice: its AVX-512 kernels (the level implies the CPU has
            // them), or FMA when built without its x86-v4 feature.
            crate::simd::SimdLevel::Avx512 => call.run_dispatched(),
            crate::simd::SimdLevel::Avx2 => call.run_fma(),
            crate::simd::SimdLevel::Scalar => call.run_scalar(),
        }
    }
}

/// The arguments of one [`gemm_f32`] call, in the `gemm` crate's order (column stride first).
struct GemmCall {
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_cs: isize,
    dst_rs: isize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
}

/// `gemm_common::gemm::gemm_basic_generic` with the micro-kernels of one instruction set of
/// `gemm-f32` (module `$k`, `$n` lanes, simd token `$simd`): what `gemm::gemm` runs after its
/// own dispatch, called directly so that the AVX2 and scalar levels run the AVX2 (FMA) and
/// scalar kernels on any CPU. Falls back to `gemm::gemm` if the token is refused (never, as
/// the level is checked).
macro_rules! gemm_with {
    ($call:expr, $simd:ty, $k:path, $n:literal) => {{
        use gemm_common::simd::MixedSimd;
        use $k as k;
        let c = $call;
        match <$simd as MixedSimd<f32, f32, f32, f32>>::try_new() {
            // SAFETY: as `gemm_f32`'s caller guarantees (the same arguments as gemm::gemm
            // passes after normalising them, see `GemmCall::normalised`).
            Some(simd) => unsafe {
                let (m, n, dst, dst_cs, dst_rs, lhs, rhs) = c.normalised();
                gemm_common::gemm::gemm_basic_generic::<
                    _,
                    f32,
                    $n,
                    { k::MR_DIV_N * $n },
                    { k::NR },
                    { k::MR_DIV_N },
                    { k::H_M },
                    { k::H_N },
                >(
                    simd,
                    m,
                    n,
                    c.k,
                    dst,
                    dst_cs,
                    dst_rs,
                    c.accumulate,
                    lhs.ptr,
                    lhs.cs as isize,
                    lhs.rs as isize,
                    rhs.ptr,
                    rhs.cs as isize,
                    rhs.rs as isize,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    |a, b, c| a * b + c,
                    &k::UKR,
                    &k::H_UKR,
                    false,
                    gemm::Parallelism::None,
                )
            },
            // SAFETY: as above.
            None => unsafe { c.run_dispatched() },
        }
    }};
}

impl GemmCall {
    /// `gemm::gemm` (its own choice of instruction set).
    ///
    /// # Safety
    /// As [`gemm_f32`].
    unsafe fn run_dispatched(&self) {
        // SAFETY: as the caller guarantees.
        unsafe {
            gemm::gemm(
                self.m,
                self.n,
                self.k,
                self.dst,
                self.dst_cs,
                self.dst_rs,
                self.accumulate,
                self.lhs.ptr,
                self.lhs.cs as isize,
                self.lhs.rs as isize,
                self.rhs.ptr,
                self.rhs.cs as isize,
                self.rhs.rs as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }

    /// gemm's normalisation before its dispatch (strides here are positive): a destination
    /// with unit column stride is computed as its transpose, `dstᵀ = rhsᵀ·lhsᵀ`.
    fn normalised(&self) -> (usize, usize, *mut f32, isize, isize, Mat, Mat) {
        let t = |a: Mat| Mat {
            ptr: a.ptr,
            rs: a.cs,
            cs: a.rs,
        };
        if self.dst_cs.abs() < self.dst_rs.abs() {
            (
                self.n,
                self.m,
                self.dst,
                self.dst_rs,
                self.dst_cs,
                t(self.rhs),
                t(self.lhs),
            )
        } else {
            (
                self.m,
                self.n,
                self.dst,
                self.dst_cs,
                self.dst_rs,
                self.lhs,
                self.rhs,
            )
        }
    }

    /// The FMA (AVX2) kernels of `gemm-f32`.
    ///
    /// # Safety
    /// As [`gemm_f32`].
    #[inline(never)]
    unsafe fn run_fma(self) {
        #[cfg(target_arch = "x86_64")]
        gemm_with!(
            self,
            gemm_common::simd::V3,
            gemm_f32::microkernel::fma::f32,
            8
        );
        #[cfg(not(target_arch = "x86_64"))]
        // SAFETY: as the caller guarantees.
        unsafe {
            self.run_dispatched()
        };
    }

    /// The scalar kernels of `gemm-f32`.
    ///
    /// # Safety
    /// As [`gemm_f32`].
    #[inline(never)]
    unsafe fn run_scalar(self) {
        gemm_with!(
            self,
            gemm_common::simd::Scalar,
            gemm_f32::microkernel::scalar::f32,
            1
        );
    }
}

/// Tiles of `rows` rows: (batch item, row range).
fn tiles(batch: usize, rows: usize, per_tile: usize) -> Vec<(usize, core::ops::Range<usize>)> {
    (0..batch)
        .flat_map(|b| {
            (0..rows)
                .step_by(per_tile)
                .map(move |r| (b, r..(r + per_tile).min(rows)))
        })
        .collect()
}

fn forward_kernel(x: &[f32], w: &[f32], bias: &[f32], g: &Geometry) -> Vec<f32> {
    let (pin, pout, kcol) = (g.pin(), g.pout(), g.kcol());
    let wo = g.dout[2];
    let mut y = uninit_f32(g.b * g.co * pout);
    let out = OutPtr(y.as_mut_ptr().cast::<f32>());
    let per_tile = g.rows_per_tile(wo, kcol);
    tiles(g.b, g.dout[0] * g.dout[1], per_tile)
        .into_par_iter()
        .for_each(|(b, rows)| {
            let t = rows.len() * wo;
            let col0 = rows.start * wo;
            with_scratch(kcol * t, |cols| {
                im2col(&x[b * g.ci * pin..][..g.ci * pin], g, rows, cols);
                // SAFETY: this task writes y[b, co, col0..col0 + t] for every co — elements no
                // other task writes (tiles partition (b, rows)); `y` outlives the loop and is
                // not otherwise accessed during it. lhs (w: co × kcol) and rhs (cols: kcol × t)
                // are whole slices of exactly those sizes.
                unsafe {
                    let dst = out.get().add(b * g.co * pout + col0);
                    let lhs = Mat {
                        ptr: w.as_ptr(),
                        rs: kcol,
                        cs: 1,
                    };
                    let rhs = Mat {
                        ptr: cols.as_ptr(),
                        rs: t,
                        cs: 1,
                    };
                    gemm_f32(g.co, t, kcol, dst, pout, 1, false, lhs, rhs);
                    for (co, &bv) in bias.iter().enumerate() {
                        let row = core::slice::from_raw_parts_mut(dst.add(co * pout), t);
                        row.iter_mut().for_each(|v| *v += bv);
                    }
                }
            });
        });
    // SAFETY: the tiles partition (batch, output rows); each wrote all Cout rows of its
    // columns with read_dst = false, so every element is written.
    unsafe { assume_init_f32(y) }
}

/// Weight gradient `[Cout, Cin·kvol]`: partial sums per fixed chunk of tiles, added in order.
fn weight_grad_kernel(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (pin, pout, kcol) = (g.pin(), g.pout(), g.kcol());
    let wo = g.dout[2];
    let per_tile = g.rows_per_tile(wo, kcol);
    let all = tiles(g.b, g.dout[0] * g.dout[1], per_tile);
    // The chunking depends on the sizes only, never on the thread count (determinism).
    let chunks = all.len().min(16);
    let per_chunk = all.len().div_ceil(chunks.max(1));
    let partials: Vec<Vec<f32>> = all
        .par_chunks(per_chunk.max(1))
        .map(|chunk| {
            let mut dw = vec![0.0f32; g.co * kcol];
            for (b, rows) in chunk {
                let t = rows.len() * wo;
                let col0 = rows.start * wo;
                let dyb = &dy[b * g.co * pout..][..g.co * pout];
                with_scratch(kcol * t, |cols| {
                    im2col(&x[b * g.ci * pin..][..g.ci * pin], g, rows.clone(), cols);
                    // SAFETY: dst is the local `dw` (co × kcol, row-major), lhs the (co × t)
                    // block of dy[b] starting at column col0 (max index (co−1)·pout + col0 +
                    // t − 1 < co·pout), rhs the transposed view of `cols` (t × kcol; cols has
                    // kcol·t elements).
                    unsafe {
                        let lhs = Mat {
                            ptr: dyb.as_ptr().add(col0),
                            rs: pout,
                            cs: 1,
                        };
                        let rhs = Mat {
                            ptr: cols.as_ptr(),
                            rs: 1,
                            cs: t,
                        };
                        gemm_f32(g.co, kcol, t, dw.as_mut_ptr(), kcol, 1, true, lhs, rhs);
                    }
                });
            }
            dw
        })
        .collect();
    let mut dw = vec![0.0f32; g.co * kcol];
    for p in &partials {
        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    dw
}

fn input_grad_kernel(w: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (pin, pout, kvol) = (g.pin(), g.pout(), g.kvol());
    let wi = g.din[2];
    let kt = g.co * kvol;
    // W'[ci][(co, k)] = W[co][ci][k]
    let mut w2 = vec![0.0f32; g.ci * kt];
    for co in 0..g.co {
        for ci in 0..g.ci {
            for k in 0..kvol {
                w2[ci * kt + co * kvol + k] = w[(co * g.ci + ci) * kvol + k];
            }
        }
    }
    let mut dx = uninit_f32(g.b * g.ci * pin);
    let out = OutPtr(dx.as_mut_ptr().cast::<f32>());
    let per_tile = g.rows_per_tile(wi, kt);
    tiles(g.b, g.din[0] * g.din[1], per_tile)
        .into_par_iter()
        .for_each(|(b, rows)| {
            let t = rows.len() * wi;
            let col0 = rows.start * wi;
            with_scratch(kt * t, |cols| {
                im2col_transposed(&dy[b * g.co * pout..][..g.co * pout], g, rows, cols);
                // SAFETY: this task writes dx[b, ci, col0..col0 + t] for every ci — elements
                // no other task writes (tiles partition (b, rows)); `dx` outlives the loop. lhs
                // (w2: ci × kt) and rhs (cols: kt × t) are whole slices of those sizes.
                unsafe {
                    let dst = out.get().add(b * g.ci * pin + col0);
                    let lhs = Mat {
                        ptr: w2.as_ptr(),
                        rs: kt,
                        cs: 1,
                    };
                    let rhs = Mat {
                        ptr: cols.as_ptr(),
                        rs: t,
                        cs: 1,
                    };
                    gemm_f32(g.ci, t, kt, dst, pin, 1, false, lhs, rhs);
                }
            });
        });
    // SAFETY: the tiles partition (batch, input rows); each wrote all Cin rows of its
    // columns with read_dst = false, so every element is written.
    unsafe { assume_init_f32(dx) }
}

/// Input gradient for strided convolutions (col2im): per tile of whole output depth planes,
/// `dcols[Cin·kvol, tile] = Wᵀ × dY[Cout, tile]`, scattered (added) into `dX`. Tiles that are
/// not neighbours touch disjoint input planes when `kd ≤ 2·sd`, so the even tiles run in
/// parallel, then the odd ones: no races, and a fixed order of additions (deterministic).
fn input_grad_scatter_kernel(w: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    debug_assert!(g.k[0] <= 2 * g.s[0]);
    let (pin, pout, kcol) = (g.pin(), g.pout(), g.kcol());
    let [_, hi, wi] = g.din;
    let [dout, ho, wo] = g.dout;
    let plane = ho * wo;
    let planes_per_tile = g.rows_per_tile(plane, kcol);
    let all = tiles(g.b, dout, planes_per_tile);
    let mut dx = vec![0.0f32; g.b * g.ci * pin];
    let out = OutPtr(dx.as_mut_ptr());
    let short_rows = g.s[2] == 1 && wi <= 16 && wo <= 16;
    let level = crate::simd::level();
    for phase in 0..2 {
        all.par_iter()
            .filter(|(_, planes)| (planes.start / planes_per_tile) % 2 == phase)
            .for_each(|(b, planes)| {
                let t = planes.len() * plane;
                let col0 = planes.start * plane;
                let dyb = &dy[b * g.co * pout..][..g.co * pout];
                with_scratch(kcol * t, |dcols| {
                    // SAFETY: dcols is this thread's scratch (kcol × t, fully written: read_dst
                    // false); lhs is Wᵀ read from `w` (element (j, co) at co·kcol + j < co·kcol);
                    // rhs is the (co × t) block of dy[b] at column col0.
                    unsafe {
                        gemm_f32(
                            kcol,
                            t,
                            g.co,
                            dcols.as_mut_ptr(),
                            t,
                            1,
                            false,
                            Mat {
                                ptr: w.as_ptr(),
                                rs: 1,
                                cs: kcol,
                            },
                            Mat {
                                ptr: dyb.as_ptr().add(col0),
                                rs: pout,
                                cs: 1,
                            },
                        );
                    }
                    let mut j = 0;
                    for ci in 0..g.ci {
                        // SAFETY: this task adds only into dx[b, ci, id, ·, ·] for input planes id
                        // reached from its own output planes; tiles running concurrently (same
                        // phase) are not neighbours, so with kd ≤ 2·sd their input planes are
                        // disjoint, and other batch items are other memory. `dx` outlives the loop.
                        let dxc = unsafe {
                            core::slice::from_raw_parts_mut(
                                out.get().add((b * g.ci + ci) * pin),
                                pin,
                            )
                        };
                        if short_rows {
                            let kvol = g.kvol();
                            let dc = &dcols[j * t..][..kvol * t];
                            j += kvol;
                            let planes = planes.clone();
                            match level {
                                // SAFETY: the level says the CPU has AVX-512F; `short_rows`
                                // checked unit stride along W and rows of ≤ 16 floats.
                                crate::simd::SimdLevel::Avx512 => unsafe {
                                    col2im_short_rows(dxc, dc, t, g, planes)
                                },
                                // SAFETY: the level says the CPU has AVX2; as above.
                                crate::simd::SimdLevel::Avx2 => unsafe {
                                    col2im_short_rows_avx2(dxc, dc, t, g, planes)
                                },
                                crate::simd::SimdLevel::Scalar => {
                                    col2im_short_rows_portable(dxc, dc, t, g, planes)
                                }
                            }
                            continue;
                        }
                        for kd in 0..g.k[0] {
                            for kh in 0..g.k[1] {
                                for kw in 0..g.k[2] {
                                    let src = &dcols[j * t..][..t];
                                    j += 1;
                                    for (pi, od) in planes.clone().enumerate() {
                                        let id = (od * g.s[0] + kd) as isize - g.p[0] as isize;
                                        if id < 0 || id >= g.din[0] as isize {
                                            continue;
                                        }
                                        for oh in 0..ho {
                                            let ih = (oh * g.s[1] + kh) as isize - g.p[1] as isize;
                                            if ih < 0 || ih >= hi as isize {
                                                continue;
                                            }
                                            let row = &mut dxc
                                                [(id as usize * hi + ih as usize) * wi..][..wi];
                                            let seg = &src[(pi * ho + oh) * wo..][..wo];
                                            let off = kw as isize - g.p[2] as isize;
                                            scatter_add_row(row, seg, g.s[2], off);
                                        }
                                    }
                                }
                            }
                        }
                    }
                });
            });
    }
    dx
}

/// [`input_grad_scatter_kernel`]'s scatter of one input channel for rows of ≤ 16 floats and
/// unit stride along W: per destination row, one masked load, the `kw` shifted source rows
/// added in registers, one store. For every element the additions come in the same
/// (kd, kh, kw) order as the general loop, so the same bits.
///
/// # Safety
/// The CPU must support AVX-512F; `g.s[2] == 1`, `W ≤ 16` and `W' ≤ 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn col2im_short_rows(
    dxc: &mut [f32],
    dc: &[f32],
    t: usize,
    g: &Geometry,
    planes: core::ops::Range<usize>,
) {
    use core::arch::x86_64::*;
    let [di, hi, wi] = g.din;
    let [_, ho, wo] = g.dout;
    assert!(g.s[2] == 1 && wi <= 16 && wo <= 16 && dc.len() >= g.kvol() * t);
    assert!(dxc.len() >= di * hi * wi && t >= planes.len() * ho * wo);
    let row_mask: __mmask16 = ((1u32 << wi) - 1) as __mmask16;
    for kd in 0..g.k[0] {
        for kh in 0..g.k[1] {
            for (pi, od) in planes.clone().enumerate() {
                let id = (od * g.s[0] + kd) as isize - g.p[0] as isize;
                if id < 0 || id >= di as isize {
                    continue;
                }
                for oh in 0..ho {
                    let ih = (oh * g.s[1] + kh) as isize - g.p[1] as isize;
                    if ih < 0 || ih >= hi as isize {
                        continue;
                    }
                    let row = dxc[(id as usize * hi + ih as usize) * wi..][..wi].as_mut_ptr();
                    // SAFETY: `row` has wi floats; the mask covers exactly those lanes.
                    let mut acc = unsafe { _mm512_maskz_loadu_ps(row_mask, row) };
                    for kw in 0..g.k[2] {
                        let j = (kd * g.k[1] + kh) * g.k[2] + kw;
                        let seg = dc[j * t + (pi * ho + oh) * wo..][..wo].as_ptr();
                        // Lane iw takes seg[iw − off] for iw − off in 0..W' and iw in 0..W.
                        let off = kw as isize - g.p[2] as isize;
                        let lo = off.max(0) as u32;
                        let hi_l = (wo as isize + off).min(wi as isize).max(0) as u32;
                        if hi_l <= lo {
                            continue;
                        }
                        let mask = (((1u32 << hi_l) - 1) & !((1u32 << lo) - 1)) as __mmask16;
                        // SAFETY: only the masked lanes are read: seg[iw − off] with
                        // iw − off in 0..W' (inside `seg`); the base pointer of the load is
                        // formed with wrapping arithmetic and never dereferenced elsewhere.
                        let v = unsafe { _mm512_maskz_loadu_ps(mask, seg.wrapping_offset(-off)) };
                        acc = _mm512_add_ps(acc, v);
                    }
                    // SAFETY: as for the load.
                    unsafe { _mm512_mask_storeu_ps(row, row_mask, acc) };
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn col2im_short_rows(
    _: &mut [f32],
    _: &[f32],
    _: usize,
    _: &Geometry,
    _: core::ops::Range<usize>,
) {
    unreachable!("x86-64 only (guarded by the AVX-512 level)")
}

/// [`col2im_short_rows`] with AVX2: each destination row as two 8-lane halves, masked loads
/// (which do not touch the lanes outside their mask) and stores; the same additions in the
/// same order.
///
/// # Safety
/// The CPU must support AVX2; `g.s[2] == 1`, `W ≤ 16` and `W' ≤ 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn col2im_short_rows_avx2(
    dxc: &mut [f32],
    dc: &[f32],
    t: usize,
    g: &Geometry,
    planes: core::ops::Range<usize>,
) {
    use core::arch::x86_64::*;
    let [di, hi, wi] = g.din;
    let [_, ho, wo] = g.dout;
    assert!(g.s[2] == 1 && wi <= 16 && wo <= 16 && dc.len() >= g.kvol() * t);
    assert!(dxc.len() >= di * hi * wi && t >= planes.len() * ho * wo);
    let lane = [
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15),
    ];
    // Lanes l of half h with lo ≤ 8·h + l < hi.
    let within = |h: usize, lo: i32, hi: i32| {
        _mm256_and_si256(
            _mm256_cmpgt_epi32(lane[h], _mm256_set1_epi32(lo - 1)),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), lane[h]),
        )
    };
    let row_mask = [within(0, 0, wi as i32), within(1, 0, wi as i32)];
    let halves = wi.div_ceil(8);
    for kd in 0..g.k[0] {
        for kh in 0..g.k[1] {
            for (pi, od) in planes.clone().enumerate() {
                let id = (od * g.s[0] + kd) as isize - g.p[0] as isize;
                if id < 0 || id >= di as isize {
                    continue;
                }
                for oh in 0..ho {
                    let ih = (oh * g.s[1] + kh) as isize - g.p[1] as isize;
                    if ih < 0 || ih >= hi as isize {
                        continue;
                    }
                    let row = dxc[(id as usize * hi + ih as usize) * wi..][..wi].as_mut_ptr();
                    let mut acc = [_mm256_setzero_ps(); 2];
                    for h in 0..halves {
                        // SAFETY: `row` has wi floats; the mask covers lanes 8·h + l < wi.
                        acc[h] = unsafe { _mm256_maskload_ps(row.add(8 * h), row_mask[h]) };
                    }
                    for kw in 0..g.k[2] {
                        let j = (kd * g.k[1] + kh) * g.k[2] + kw;
                        let seg = dc[j * t + (pi * ho + oh) * wo..][..wo].as_ptr();
                        // Lane iw takes seg[iw − off] for iw − off in 0..W' and iw in 0..W.
                        let off = kw as isize - g.p[2] as isize;
                        let lo = off.max(0) as i32;
                        let hi_l = (wo as isize + off).min(wi as isize).max(0) as i32;
                        if hi_l <= lo {
                            continue;
                        }
                        for (h, a) in acc.iter_mut().enumerate().take(halves) {
                            let m = within(h, lo, hi_l);
                            // SAFETY: only the masked lanes are read: seg[iw − off] with
                            // iw − off in 0..W' (inside `seg`); the base pointer is formed with
                            // wrapping arithmetic and never dereferenced elsewhere.
                            let v = unsafe {
                                _mm256_maskload_ps(seg.wrapping_offset(8 * h as isize - off), m)
                            };
                            *a = _mm256_add_ps(*a, v);
                        }
                    }
                    for h in 0..halves {
                        // SAFETY: as for the load.
                        unsafe { _mm256_maskstore_ps(row.add(8 * h), row_mask[h], acc[h]) };
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn col2im_short_rows_avx2(
    _: &mut [f32],
    _: &[f32],
    _: usize,
    _: &Geometry,
    _: core::ops::Range<usize>,
) {
    unreachable!("x86-64 only (guarded by the AVX2 level)")
}

crate::simd::multiversion! {
    /// [`col2im_short_rows`] without masked loads (the scalar level): each
    /// destination row goes through a 16-float buffer that takes the `kw` shifted source rows;
    /// every element gets the same additions in the same order as in the general loop.
    fn col2im_short_rows_portable(
        dxc: &mut [f32],
        dc: &[f32],
        t: usize,
        g: &Geometry,
        planes: core::ops::Range<usize>,
    ) {
        let [di, hi, wi] = g.din;
        let [_, ho, wo] = g.dout;
        assert!(g.s[2] == 1 && wi <= 16 && wo <= 16 && dc.len() >= g.kvol() * t);
        assert!(dxc.len() >= di * hi * wi && t >= planes.len() * ho * wo);
        for kd in 0..g.k[0] {
            for kh in 0..g.k[1] {
                for (pi, od) in planes.clone().enumerate() {
                    let id = (od * g.s[0] + kd) as isize - g.p[0] as isize;
                    if id < 0 || id >= di as isize {
                        continue;
                    }
                    for oh in 0..ho {
                        let ih = (oh * g.s[1] + kh) as isize - g.p[1] as isize;
                        if ih < 0 || ih >= hi as isize {
                            continue;
                        }
                        let row = &mut dxc[(id as usize * hi + ih as usize) * wi..][..wi];
                        let mut acc = [0.0f32; 16];
                        acc[..wi].copy_from_slice(row);
                        for kw in 0..g.k[2] {
                            let j = (kd * g.k[1] + kh) * g.k[2] + kw;
                            let seg = &dc[j * t + (pi * ho + oh) * wo..][..wo];
                            // Element iw takes seg[iw − off] for iw − off in 0..W'.
                            let off = kw as isize - g.p[2] as isize;
                            let lo = off.max(0) as usize;
                            let hi_l = (wo as isize + off).min(wi as isize).max(0) as usize;
                            if hi_l <= lo {
                                continue;
                            }
                            let src = &seg[(lo as isize - off) as usize..][..hi_l - lo];
                            for (a, v) in acc[lo..hi_l].iter_mut().zip(src) {
                                *a += v;
                            }
                        }
                        row.copy_from_slice(&acc[..wi]);
                    }
                }
            }
        }
    }
}

/// `row[ow·step + off] += seg[ow]` for every `ow` whose index falls inside `row` (the
/// transpose of [`gather_strided`]).
#[inline]
fn scatter_add_row(row: &mut [f32], seg: &[f32], step: usize, off: isize) {
    let (n, s) = (row.len() as isize, step as isize);
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let hi = if n - off <= 0 {
        0
    } else {
        (n - off + s - 1) / s
    };
    let hi = (hi as usize).min(seg.len());
    let lo = (lo as usize).min(hi);
    if step == 1 {
        let start = (lo as isize + off) as usize;
        let dst = &mut row[start..start + (hi - lo)];
        dst.iter_mut().zip(&seg[lo..hi]).for_each(|(d, v)| *d += v);
    } else {
        for (i, v) in seg[lo..hi].iter().enumerate() {
            row[((lo + i) as isize * s + off) as usize] += v;
        }
    }
}

fn bias_grad_kernel(dy: &[f32], g: &Geometry) -> Vec<f32> {
    let pout = g.pout();
    (0..g.co)
        .into_par_iter()
        .map(|co| {
            (0..g.b)
                .map(|b| crate::fused::plane_sum(&dy[(b * g.co + co) * pout..][..pout]))
                .sum::<f64>() as f32
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Backend implementations.

impl Conv3dGemmOps for Flex {
    fn conv3d_gemm(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> FlexTensor {
        let g = Geometry::new(
            x.shape().as_slice(),
            weight.shape().as_slice(),
            stride,
            padding,
        );
        let (x, w, b) = (contiguous(&x), contiguous(&weight), contiguous(&bias));
        let y = if let Some(c) = g.direct() {
            crate::direct3::conv3x3x3(slice(&x), slice(&w), Some(slice(&b)), &c)
        } else if let Some(c) = g.direct2d().filter(|c| c.ci >= 8) {
            // With one input channel (the first layers) a sample's tile has only k² taps and
            // the GEMM path was faster (examples/avconv.rs): direct from 8 input channels.
            crate::direct2::conv2d(slice(&x), slice(&w), false, Some(slice(&b)), &c)
        } else {
            forward_kernel(slice(&x), slice(&w), slice(&b), &g)
        };
        let [d, h, wd] = g.dout;
        flex_tensor(y, vec![g.b, g.co, d, h, wd])
    }
}

#[derive(Debug)]
struct Conv3dBackward;

impl Backward<Flex, 3> for Conv3dBackward {
    /// Input, weight, stride, padding.
    type State = (FlexTensor, FlexTensor, [usize; 3], [usize; 3]);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let (x, w, stride, padding) = ops.state;
        let g = Geometry::new(x.shape().as_slice(), w.shape().as_slice(), stride, padding);
        if let Some(node) = node_w {
            let dw = if let Some(c) = g.direct().filter(crate::direct3::weight_grad_supported) {
                crate::direct3::weight_grad(slice(&x), slice(&dy), &c)
            } else if let Some(c) = g
                .direct2d()
                .filter(|c| c.ci >= 8 && crate::direct2::weight_grad_supported(c))
            {
                crate::direct2::conv2d_weight_grad(slice(&x), slice(&dy), &c)
            } else {
                weight_grad_kernel(slice(&x), slice(&dy), &g)
            };
            grads.register::<Flex>(node.id, flex_tensor(dw, w.shape().to_vec()));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(
                node.id,
                flex_tensor(bias_grad_kernel(slice(&dy), &g), vec![g.co]),
            );
        }
        if let Some(node) = node_x {
            // Scatter (col2im) when it is race-free (kd ≤ 2·sd) and strided (the gather
            // would multiply mostly zeros) or its columns are smaller than the gather's
            // (depth-1 kernels: the AV-MNIST convolutions); else gather.
            let scatter = g.k[0] <= 2 * g.s[0] && (g.s[0] > 1 || g.ci * g.pout() <= g.co * g.pin());
            let dx = if let Some(c) = g.direct() {
                crate::direct3::input_grad(slice(&dy), slice(&w), &c)
            } else if let Some(c) = g
                .direct2d()
                .filter(|c| c.kh - c.ph <= 2 && c.kw - c.pw <= 2)
            {
                // dx = dy (padded by k − 1 − p) convolved with the flipped, transposed kernel.
                let (ho, wo) = c.out();
                let t = crate::direct2::Conv2d {
                    ci: c.co,
                    co: c.ci,
                    h: ho,
                    w: wo,
                    ph: c.kh - 1 - c.ph,
                    pw: c.kw - 1 - c.pw,
                    ..c
                };
                crate::direct2::conv2d(slice(&dy), slice(&w), true, None, &t)
            } else if scatter {
                input_grad_scatter_kernel(slice(&w), slice(&dy), &g)
            } else {
                input_grad_kernel(slice(&w), slice(&dy), &g)
            };
            grads.register::<Flex>(node.id, flex_tensor(dx, x.shape().to_vec()));
        }
    }
}

impl<C: CheckpointStrategy> Conv3dGemmOps for Autodiff<Flex, C> {
    fn conv3d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> FloatTensor<Self> {
        let prepared = Conv3dBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        let (xp, wp) = (contiguous(x.primitive()), contiguous(weight.primitive()));
        let y = Flex::conv3d_gemm(
            xp.clone(),
            wp.clone(),
            bias.into_primitive(),
            stride,
            padding,
        );
        match prepared {
            OpsKind::Tracked(prep) => prep.finish((xp, wp, stride, padding), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::SimdLevel;
    use crate::testing::{assert_close, for_each_level, max_rel_error, pool_at, random};

    /// Forward and gradients of input, weight and bias against burn's `conv3d`.
    fn check(x: [usize; 5], co: usize, k: [usize; 3], s: [usize; 3], p: [usize; 3], seed: u64) {
        let device = Device::flex().autodiff();
        let x = random(x, seed, &device);
        let w = random([co, x.dims()[1], k[0], k[1], k[2]], seed + 1, &device).mul_scalar(0.3);
        let b = random([co], seed + 2, &device);
        let run = |ours: bool| {
            let (x, w, b) = (
                x.clone().require_grad(),
                w.clone().require_grad(),
                b.clone().require_grad(),
            );
            let y = if ours {
                conv3d(x.clone(), w.clone(), b.clone(), s, p)
            } else {
                reference(x.clone(), w.clone(), b.clone(), s, p)
            };
            let up = random(y.dims(), seed + 3, &device);
            let grads = (y.clone() * up).sum().backward();
            (
                y,
                x.grad(&grads).unwrap(),
                w.grad(&grads).unwrap(),
                b.grad(&grads).unwrap(),
            )
        };
        let (y, dx, dw, db) = run(true);
        let (ry, rdx, rdw, rdb) = run(false);
        let what = format!("x {:?} co {co} k {k:?} s {s:?} p {p:?}", x.dims());
        assert_eq!(y.dims(), ry.dims(), "{what}");
        let tol = 1e-5;
        assert_close(&y, &ry, tol, &format!("{what} forward"));
        assert_close(&dx, &rdx, tol, &format!("{what} dx"));
        assert_close(&dw, &rdw, tol, &format!("{what} dweight"));
        assert_close(&db, &rdb, tol, &format!("{what} dbias"));
    }

    #[test]
    fn unet_convolutions_match_burn() {
        // The UNet's 3×3×3 convolutions: stride 1 and 2, padding 1, Cin = 1 (first layer),
        // the decoder's wide inputs, odd and non-cubic sizes.
        for_each_level(|_| {
            check([2, 1, 8, 8, 8], 4, [3; 3], [1; 3], [1; 3], 1);
            check([2, 4, 8, 6, 10], 8, [3; 3], [2; 3], [1; 3], 2);
            check([1, 20, 4, 4, 4], 4, [3; 3], [1; 3], [1; 3], 3);
            check([2, 3, 5, 7, 9], 5, [3; 3], [1; 3], [1; 3], 4);
            check([3, 2, 5, 7, 9], 3, [3; 3], [2; 3], [1; 3], 5);
            check([1, 2, 1, 1, 1], 2, [3; 3], [1; 3], [1; 3], 6);
        });
    }

    /// The direct kernel's cases (3×3×3, stride 1, padding 1) at rows of whole vectors: W = 16,
    /// 32, 48, 64 (AVX-512: 32- and 16-wide tiles; AVX2: 16- and 8-wide), Cout below, at
    /// and above a forward channel block (8 with AVX-512; AVX2: blocks of 6 and 4, 7 = a
    /// block of 6 and a part-filled one of 4, 40 = 6·6 + 4 also as an input gradient's
    /// Cout; the direct weight gradient needs a multiple of 4, else the GEMM one runs: Cout
    /// 5, 11, 6 and 7 here), depths that are not a multiple of the task's 4 planes, Cin = 1 and
    /// the decoder's wide inputs.
    /// The direct kernel runs at the AVX2 and AVX-512 levels, the GEMM path at the scalar
    /// level.
    #[test]
    fn direct_convolutions_match_burn() {
        let conv = |w: usize, stride: usize| crate::direct3::Conv3 {
            b: 1,
            ci: 2,
            co: 8,
            dims: [4, 4, w],
            stride,
        };
        for_each_level(|level| {
            assert_eq!(
                crate::direct3::supported(&conv(16, 1)),
                level != SimdLevel::Scalar,
                "the direct kernel runs at the vector levels"
            );
            assert_eq!(
                crate::direct3::supported(&conv(7, 1)),
                level != SimdLevel::Scalar,
                "any row length"
            );
            assert!(
                !crate::direct3::supported(&conv(7, 2)),
                "stride 2 needs even sizes"
            );
            check([2, 1, 5, 3, 16], 8, [3; 3], [1; 3], [1; 3], 40);
            check([1, 3, 6, 5, 32], 5, [3; 3], [1; 3], [1; 3], 41);
            check([2, 4, 3, 2, 48], 11, [3; 3], [1; 3], [1; 3], 42);
            check([1, 20, 2, 4, 16], 8, [3; 3], [1; 3], [1; 3], 43);
            check([1, 8, 9, 1, 64], 16, [3; 3], [1; 3], [1; 3], 44);
            check([2, 40, 3, 3, 16], 8, [3; 3], [1; 3], [1; 3], 45);
            check([1, 5, 3, 4, 32], 12, [3; 3], [1; 3], [1; 3], 46);
            check([1, 2, 2, 3, 16], 6, [3; 3], [1; 3], [1; 3], 47);
            check([1, 3, 2, 3, 64], 7, [3; 3], [1; 3], [1; 3], 48);
            check([1, 2, 2, 2, 32], 40, [3; 3], [1; 3], [1; 3], 49);
        });
    }

    /// Rows that are not a multiple of the vector (the real-data UNet at 2 mm: 56, 28, 14, 7;
    /// prediction tiles 40, 20, 10): the last tile of a row covers past its end. Widths below
    /// one vector (7, 10), between one and two (20, 24 with AVX-512; 10, 14 with AVX2), one
    /// past a multiple (17, 33), and 56 = 32 + 24 (AVX-512) or 7 × 8 (AVX2); the last row of
    /// the last plane of the last channel reads into the scratch's tail. Stride 2: output rows
    /// of 7, 10 and 28. Cout 8 and 12 (direct weight gradient) and 6 (GEMM weight gradient).
    #[test]
    fn direct_convolutions_at_any_row_length_match_burn() {
        for_each_level(|_| {
            for (i, w) in [7usize, 10, 14, 17, 20, 24, 28, 33, 56]
                .into_iter()
                .enumerate()
            {
                let seed = 200 + 4 * i as u64;
                check([2, 3, 5, 3, w], 8, [3; 3], [1; 3], [1; 3], seed);
                check([1, 5, 2, 2, w], 12, [3; 3], [1; 3], [1; 3], seed + 1);
                check([1, 2, 3, 2, w], 6, [3; 3], [1; 3], [1; 3], seed + 2);
            }
            for (i, w) in [14usize, 20, 56].into_iter().enumerate() {
                check([2, 3, 6, 4, w], 8, [3; 3], [2; 3], [1; 3], 260 + i as u64);
                check([1, 4, 2, 6, w], 12, [3; 3], [2; 3], [1; 3], 270 + i as u64);
            }
        });
    }

    /// The direct kernel at stride 2 (forward, weight gradient, and the input gradient by
    /// parity classes): output rows of 16 and 32 voxels (AVX-512: 1 and 2 vectors; AVX2: 2 and 4),
    /// output depths of 5 (tasks of 4 + 1 planes) and 1, Cout 8, 12 and 16 (12: a forward
    /// block of 8 part-filled with AVX-512), Cin 1 and 9.
    #[test]
    fn direct_stride_2_matches_burn() {
        for_each_level(|level| {
            let c = crate::direct3::Conv3 {
                b: 1,
                ci: 3,
                co: 8,
                dims: [4, 6, 32],
                stride: 2,
            };
            assert_eq!(crate::direct3::supported(&c), level != SimdLevel::Scalar);
            check([2, 3, 10, 6, 32], 8, [3; 3], [2; 3], [1; 3], 80);
            check([1, 9, 2, 4, 64], 12, [3; 3], [2; 3], [1; 3], 81);
            check([1, 1, 4, 2, 32], 16, [3; 3], [2; 3], [1; 3], 82);
        });
    }

    /// The direct forward and input gradient sum each output in the same order with FMAs at
    /// both vector levels: the same bits with AVX2 and AVX-512 (the weight gradient's lanes
    /// group differently: rounding only, checked against burn above).
    #[test]
    fn direct_forward_and_input_gradient_same_bits_at_both_vector_levels() {
        let levels: Vec<SimdLevel> = SimdLevel::available()
            .into_iter()
            .filter(|&l| l != SimdLevel::Scalar)
            .collect();
        let run = || {
            let device = Device::flex().autodiff();
            let x = random([2, 6, 5, 3, 64], 90, &device).require_grad();
            let w = random([12, 6, 3, 3, 3], 91, &device).require_grad();
            let b = random([12], 92, &device);
            let y = conv3d(x.clone(), w.clone(), b, [1; 3], [1; 3]);
            let up = random(y.dims(), 93, &device);
            let grads = (y.clone() * up).sum().backward();
            let v = crate::testing::values;
            (v(&y), v(&x.grad(&grads).unwrap()))
        };
        let results: Vec<_> = levels.iter().map(|&l| pool_at(l, 2).install(run)).collect();
        for (l, r) in levels.iter().zip(&results).skip(1) {
            assert!(r.0 == results[0].0, "forward differs at {l}");
            assert!(r.1 == results[0].1, "input gradient differs at {l}");
        }
    }

    #[test]
    fn other_kernels_strides_and_paddings_match_burn() {
        for_each_level(|_| {
            check([2, 3, 6, 5, 7], 4, [3, 1, 2], [1, 2, 3], [0, 1, 2], 7);
            check([1, 2, 9, 4, 5], 3, [2, 2, 2], [2, 2, 2], [0, 0, 0], 8);
            check([2, 5, 3, 3, 3], 2, [1, 1, 1], [1, 1, 1], [0, 0, 0], 9);
            check([1, 2, 7, 8, 6], 2, [5, 3, 3], [3, 1, 2], [2, 0, 1], 10);
        });
    }

    /// The AV-MNIST convolutions (5×5 valid, 3×3 padding 1) and a strided, anisotropic one
    /// through `conv2d_layer`, against burn's `Conv2d` (forward and all gradients).
    #[test]
    fn conv2d_layers_match_burn() {
        let device = Device::flex().autodiff();
        let cases = [
            ([3, 1, 28, 28], 4, [5, 5], [1, 1], PaddingConfig2d::Valid),
            ([3, 6, 12, 12], 5, [5, 5], [1, 1], PaddingConfig2d::Valid),
            (
                [2, 1, 20, 20],
                4,
                [3, 3],
                [1, 1],
                PaddingConfig2d::Explicit(1, 1, 1, 1),
            ),
            (
                [2, 7, 10, 9],
                3,
                [3, 3],
                [1, 1],
                PaddingConfig2d::Explicit(1, 1, 1, 1),
            ),
            (
                [3, 5, 10, 10],
                8,
                [3, 3],
                [1, 1],
                PaddingConfig2d::Explicit(1, 1, 1, 1),
            ),
            (
                [2, 3, 11, 8],
                2,
                [3, 2],
                [2, 3],
                PaddingConfig2d::Explicit(2, 1, 2, 1),
            ),
            // Cin ≥ 8: the direct kernels (direct2.rs) with AVX2 and AVX-512. The two
            // AV-MNIST conv2 layers; 17 and 70 output channels (a part-filled vector; blocks
            // of 4 + 1 vectors; 6 samples: two chunks of the weight gradient); a 2×3 kernel
            // (flipped unevenly in the input gradient, which runs direct when k − p ≤ 2);
            // tiles spanning output rows with a tail.
            ([3, 20, 12, 12], 50, [5, 5], [1, 1], PaddingConfig2d::Valid),
            (
                [2, 32, 10, 10],
                64,
                [3, 3],
                [1, 1],
                PaddingConfig2d::Explicit(1, 1, 1, 1),
            ),
            (
                [6, 9, 7, 11],
                17,
                [3, 3],
                [1, 1],
                PaddingConfig2d::Explicit(1, 1, 1, 1),
            ),
            (
                [2, 8, 6, 5],
                70,
                [2, 3],
                [1, 1],
                PaddingConfig2d::Explicit(1, 1, 1, 1),
            ),
            // A 3×5 kernel, 17 channels: the direct weight gradient of a 5-wide kernel with a
            // part-filled vector and 3 kernel rows.
            ([2, 8, 9, 7], 17, [3, 5], [1, 1], PaddingConfig2d::Valid),
            // 5×5 with padding 2: the padded planes of the direct forward and weight gradient.
            (
                [2, 8, 7, 6],
                9,
                [5, 5],
                [1, 1],
                PaddingConfig2d::Explicit(2, 2, 2, 2),
            ),
        ];
        for_each_level(|level| {
            assert_eq!(
                crate::direct2::supported(&crate::direct2::Conv2d {
                    b: 1,
                    ci: 8,
                    co: 8,
                    h: 5,
                    w: 5,
                    kh: 3,
                    kw: 3,
                    ph: 1,
                    pw: 1
                }),
                level != SimdLevel::Scalar,
                "the direct 2-D kernel runs at the vector levels"
            );
            conv2d_cases(&cases, &device);
        });
    }

    /// Input shape, output channels, kernel, stride, padding.
    type Conv2dCase = ([usize; 4], usize, [usize; 2], [usize; 2], PaddingConfig2d);

    fn conv2d_cases(cases: &[Conv2dCase], device: &Device) {
        use burn::nn::conv::Conv2dConfig;
        for (i, &(xs, co, k, st, ref pad)) in cases.iter().enumerate() {
            let (device, pad) = (device.clone(), pad.clone());
            device.seed(40 + i as u64);
            let layer = Conv2dConfig::new([xs[1], co], k)
                .with_stride(st)
                .with_padding(pad)
                .init(&device);
            let x = random(xs, 50 + i as u64, &device).require_grad();
            let y = conv2d_layer(&layer, x.clone());
            let ry = layer.forward(x.clone());
            let what = format!("conv2d case {i}");
            assert_close(&y, &ry, 1e-5, &format!("{what} forward"));
            let up = random(y.dims(), 60 + i as u64, &device);
            let g = (y * up.clone()).sum().backward();
            let rg = (ry * up).sum().backward();
            assert_close(&x.grad(&g).unwrap(), &x.grad(&rg).unwrap(), 1e-5, &what);
            let w = layer.weight.val();
            assert_close(&w.grad(&g).unwrap(), &w.grad(&rg).unwrap(), 1e-5, &what);
            let b = layer.bias.as_ref().unwrap().val();
            assert_close(&b.grad(&g).unwrap(), &b.grad(&rg).unwrap(), 1e-5, &what);
        }
    }

    /// Many small tiles (both scatter phases, partial sums over several chunks): the kernels
    /// called directly with a tiny tile budget against burn's autodiff.
    #[test]
    fn small_tiles_match_burn() {
        for_each_level(|_| small_tiles_match_burn_at_level());
    }

    fn small_tiles_match_burn_at_level() {
        let device = Device::flex().autodiff();
        for (seed, (xs, co, st)) in [([2, 3, 9, 6, 5], 4, 2), ([3, 2, 7, 5, 6], 3, 1)]
            .into_iter()
            .enumerate()
        {
            let seed = 20 + seed as u64;
            let x = random(xs, seed, &device).require_grad();
            let w = random([co, xs[1], 3, 3, 3], seed + 1, &device).require_grad();
            let b = random([co], seed + 2, &device).require_grad();
            let y = reference(x.clone(), w.clone(), b.clone(), [st; 3], [1; 3]);
            let up = random(y.dims(), seed + 3, &device);
            let grads = (y.clone() * up.clone()).sum().backward();
            let v = |t: &Tensor<5>| crate::testing::values(t);
            let (xv, wv, bv, uv) = (v(&x), v(&w), crate::testing::values(&b), v(&up));
            let mut g = Geometry::new(&xs, &w.dims(), [st; 3], [1; 3]);
            g.budget = 40; // one output (or input) row per tile
            let tensor = |vals: Vec<f32>, shape: [usize; 5]| {
                Tensor::<5>::from_data(TensorData::new(vals, shape), &device)
            };
            let ours_y = tensor(forward_kernel(&xv, &wv, &bv, &g), y.dims());
            assert_close(&ours_y, &y, 1e-5, "small tiles forward");
            let dw = tensor(weight_grad_kernel(&xv, &uv, &g), w.dims());
            assert_close(&dw, &w.grad(&grads).unwrap(), 1e-5, "small tiles dweight");
            let rdx = x.grad(&grads).unwrap();
            let dx = tensor(input_grad_kernel(&wv, &uv, &g), xs);
            assert_close(&dx, &rdx, 1e-5, "small tiles dx (gather)");
            if st > 1 {
                let dx = tensor(input_grad_scatter_kernel(&wv, &uv, &g), xs);
                assert_close(&dx, &rdx, 1e-5, "small tiles dx (scatter)");
            }
        }
    }

    /// The scatter (col2im) input gradient with one output plane per tile (both phases), for
    /// kernels with kd ≤ 2·sd at stride 1 (kd = 1, 2) and 2, against burn's autodiff.
    #[test]
    fn scatter_input_gradient_matches_burn_with_small_tiles() {
        for_each_level(|_| scatter_input_gradient_matches_burn_with_small_tiles_at_level());
    }

    fn scatter_input_gradient_matches_burn_with_small_tiles_at_level() {
        let device = Device::flex().autodiff();
        for (i, (xs, co, k, st, p)) in [
            ([2, 2, 7, 5, 6], 5, [2, 3, 1], [1, 1, 1], [1, 1, 0]),
            ([1, 3, 6, 4, 5], 4, [1, 3, 3], [1, 2, 1], [0, 1, 1]),
            ([2, 2, 9, 5, 4], 3, [3, 2, 3], [2, 1, 2], [1, 0, 1]),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 70 + 4 * i as u64;
            let x = random(xs, seed, &device).require_grad();
            let w = random([co, xs[1], k[0], k[1], k[2]], seed + 1, &device).require_grad();
            let b = random([co], seed + 2, &device);
            let y = reference(x.clone(), w.clone(), b, st, p);
            let up = random(y.dims(), seed + 3, &device);
            let grads = (y * up.clone()).sum().backward();
            let v = crate::testing::values;
            let mut g = Geometry::new(&xs, &w.dims(), st, p);
            g.budget = 1;
            let dx = input_grad_scatter_kernel(&v(&w), &v(&up), &g);
            let dx = Tensor::<5>::from_data(TensorData::new(dx, xs), &device);
            assert_close(
                &dx,
                &x.grad(&grads).unwrap(),
                1e-5,
                &format!("scatter case {i}"),
            );
        }
    }

    /// Same inputs, same bits (forward and all gradients), also on a rayon pool of another size:
    /// the weight-gradient partial sums do not depend on the thread count.
    #[test]
    fn same_numbers_on_any_thread_count() {
        // W = 9: the GEMM kernels; W = 16, Cout = 8: the direct ones (crate::direct3).
        for_each_level(|level| {
            for (xs, co) in [([2, 3, 12, 10, 9], 4), ([2, 3, 9, 5, 16], 8)] {
                same_numbers_for(xs, co, level);
            }
        });
    }

    fn same_numbers_for(xs: [usize; 5], co: usize, level: SimdLevel) {
        let run = || {
            let device = Device::flex().autodiff();
            let x = random(xs, 30, &device).require_grad();
            let w = random([co, xs[1], 3, 3, 3], 31, &device).require_grad();
            let b = random([co], 32, &device).require_grad();
            let y = conv3d(x.clone(), w.clone(), b.clone(), [1; 3], [1; 3]);
            let up = random(y.dims(), 33, &device);
            let grads = (y.clone() * up).sum().backward();
            let v = crate::testing::values;
            [
                v(&y),
                v(&x.grad(&grads).unwrap()),
                v(&w.grad(&grads).unwrap()),
            ]
        };
        let a = run();
        let b = pool_at(level, 3).install(run);
        assert!(a == b, "results differ between runs / thread counts");
    }

    #[test]
    fn gather_helpers_match_their_definitions() {
        let src: Vec<f32> = (1..=7).map(|v| v as f32).collect();
        for step in 1..4 {
            for off in -4..5isize {
                let mut a = vec![-1.0; 6];
                gather_strided(&mut a, &src, step, off);
                let mut b = vec![-1.0; 6];
                gather_transposed(&mut b, &src, step, off);
                for t in 0..6 {
                    let i = t as isize * step as isize + off;
                    let want = if (0..7).contains(&i) {
                        src[i as usize]
                    } else {
                        0.0
                    };
                    assert_eq!(a[t], want, "strided step {step} off {off} t {t}");
                    let num = t as isize + off;
                    let s = step as isize;
                    let want = if num >= 0 && num % s == 0 && num / s < 7 {
                        src[(num / s) as usize]
                    } else {
                        0.0
                    };
                    assert_eq!(b[t], want, "transposed step {step} off {off} t {t}");
                }
            }
        }
    }

    #[test]
    fn a_wrong_padding_is_detected() {
        let device = Device::flex();
        let x = random([1, 2, 5, 5, 5], 11, &device);
        let w = random([2, 2, 3, 3, 3], 12, &device);
        let b = random([2], 13, &device);
        // Same output size, shifted window: must not pass the comparison.
        let ours = conv3d(x.clone(), w.clone(), b.clone(), [1; 3], [1; 3]);
        let shifted = reference(x.pad_like_shift(), w, b, [1; 3], [1; 3]);
        assert!(max_rel_error(&ours, &shifted) > 1e-2);
    }

    trait Shift {
        fn pad_like_shift(self) -> Self;
    }

    impl Shift for Tensor<5> {
        /// The input rolled by one voxel along W.
        fn pad_like_shift(self) -> Self {
            let w = self.dims()[4];
            Tensor::cat(
                vec![self.clone().narrow(4, 1, w - 1), self.narrow(4, 0, 1)],
                4,
            )
        }
    }
}
