//! Trilinear resizing (PyTorch's `F.interpolate(.., mode='trilinear')`, both `align_corners`
//! conventions) as one op with its own backward: three separable linear passes (W, H, D) per
//! (sample, channel) volume, the volumes in parallel.
//!
//! burn 0.22.1 has only 2-D interpolation, so `mckd_nn::trilinear` composed a 3-D resize from
//! two bilinear passes, the second over a `[D, H'·W']` view whose wide axis keeps its size (an
//! interpolation with weight 0 on the neighbour, computed element by element); in the U-HVED
//! training step at 2 × 32³ that forward and its backward were about a fifth of the time.
//! Here each pass has its taps computed once per axis: along W per element, along H and D as
//! whole rows and planes combined with two weights (vectorised by the compiler).
//!
//! Coordinates (per axis, input size `n`, output size `m`; PyTorch's): `align_corners = false`:
//! `src = max(0, (o + ½)·n/m − ½)`; `true`: `src = o·(n − 1)/(m − 1)` (0 when `m = 1`); then
//! `y = (1 − λ)·x[⌊src⌋] + λ·x[min(⌊src⌋ + 1, n − 1)]`, `λ = src − ⌊src⌋`. The backward adds
//! each output's gradient into its two taps per axis, the passes in reverse order. Every
//! volume is summed in one fixed order: the numbers do not depend on the thread count.
//!
//! [`ResizeOps`] is a burn backend extension (`#[backend_extension(Flex, Autodiff)]`);
//! [`trilinear_resize`] returns `None` on other devices and dtypes.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use rayon::prelude::*;

use crate::flex_buf::{contiguous, flex_tensor, slice};

/// Trilinear resizing, as a backend op.
#[backend_extension(Flex, Autodiff)]
pub trait ResizeOps: Backend {
    /// `x`: `[B, C, D, H, W]` → `[B, C, D', H', W']` with `size` = (D', H', W').
    fn trilinear_resize(
        x: FloatTensor<Self>,
        size: [usize; 3],
        align_corners: bool,
    ) -> FloatTensor<Self>;
}

/// Trilinear resize of `x` to `size` = (D', H', W') on the `flex` device in `f32` (see the
/// module docs); `None` elsewhere, for the caller to compose it from burn's ops.
///
/// # Shapes
/// - `x`: `[B, C, D, H, W]`; output `[B, C, D', H', W']`
///
/// # Panics
/// If an input or output spatial size is 0.
pub fn trilinear_resize(x: Tensor<5>, size: [usize; 3], align_corners: bool) -> Option<Tensor<5>> {
    let [_, _, d, h, w] = x.dims();
    assert!(
        d * h * w > 0 && size.iter().product::<usize>() > 0,
        "trilinear: empty spatial size (input {:?}, output {size:?})",
        [d, h, w]
    );
    if x.device().without_autodiff() != Device::flex() || x.dtype() != DType::F32 {
        return None;
    }
    Some(Tensor::from_dispatch(
        <Dispatch as ResizeOps>::trilinear_resize(x.into_dispatch(), size, align_corners),
    ))
}

/// One output index's taps along an axis: (low, high, λ).
type Tap = (usize, usize, f32);

/// The taps of the `m` outputs of an axis of `n` inputs (PyTorch's coordinate maps, in f64).
fn taps(n: usize, m: usize, align_corners: bool) -> Vec<Tap> {
    (0..m)
        .map(|o| {
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
            (lo, (lo + 1).min(n - 1), (src - lo as f64) as f32)
        })
        .collect()
}

/// The three axes' taps and sizes of one resize.
struct Plan {
    /// Input (D, H, W) and output (D', H', W').
    din: [usize; 3],
    dout: [usize; 3],
    td: Vec<Tap>,
    th: Vec<Tap>,
    tw: Vec<Tap>,
}

impl Plan {
    fn new(din: [usize; 3], dout: [usize; 3], align_corners: bool) -> Self {
        Self {
            din,
            dout,
            td: taps(din[0], dout[0], align_corners),
            th: taps(din[1], dout[1], align_corners),
            tw: taps(din[2], dout[2], align_corners),
        }
    }

    /// One volume `x` (D·H·W) resized into `y` (D'·H'·W').
    fn forward(&self, x: &[f32], y: &mut [f32]) {
        let [d, h, w] = self.din;
        let [od, oh, ow] = self.dout;
        // Along W: every row of x to W' values.
        let mut t1 = vec![0.0f32; d * h * ow];
        for (row, out) in x.chunks_exact(w).zip(t1.chunks_exact_mut(ow)) {
            for (o, &(lo, hi, l)) in out.iter_mut().zip(&self.tw) {
                *o = (1.0 - l) * row[lo] + l * row[hi];
            }
        }
        // Along H: rows of W' values, per plane.
        let mut t2 = vec![0.0f32; d * oh * ow];
        for (plane, out) in t1.chunks_exact(h * ow).zip(t2.chunks_exact_mut(oh * ow)) {
            for (orow, &(lo, hi, l)) in out.chunks_exact_mut(ow).zip(&self.th) {
                lerp(orow, &plane[lo * ow..][..ow], &plane[hi * ow..][..ow], l);
            }
        }
        // Along D: whole planes.
        let p = oh * ow;
        for (oplane, &(lo, hi, l)) in y.chunks_exact_mut(p).zip(&self.td) {
            lerp(oplane, &t2[lo * p..][..p], &t2[hi * p..][..p], l);
        }
        debug_assert_eq!(y.len(), od * p);
    }

    /// The gradient of one volume's input added into `dx` (D·H·W, zeros) from its output's
    /// (`dy`, D'·H'·W').
    fn backward(&self, dy: &[f32], dx: &mut [f32]) {
        let [d, h, w] = self.din;
        let [_, oh, ow] = self.dout;
        let p = oh * ow;
        let mut g2 = vec![0.0f32; d * p];
        for (gplane, &(lo, hi, l)) in dy.chunks_exact(p).zip(&self.td) {
            axpy(&mut g2[lo * p..][..p], gplane, 1.0 - l);
            axpy(&mut g2[hi * p..][..p], gplane, l);
        }
        let mut g1 = vec![0.0f32; d * h * ow];
        for (gplane, plane) in g2.chunks_exact(p).zip(g1.chunks_exact_mut(h * ow)) {
            for (grow, &(lo, hi, l)) in gplane.chunks_exact(ow).zip(&self.th) {
                axpy(&mut plane[lo * ow..][..ow], grow, 1.0 - l);
                axpy(&mut plane[hi * ow..][..ow], grow, l);
            }
        }
        for (grow, row) in g1.chunks_exact(ow).zip(dx.chunks_exact_mut(w)) {
            for (&g, &(lo, hi, l)) in grow.iter().zip(&self.tw) {
                row[lo] += (1.0 - l) * g;
                row[hi] += l * g;
            }
        }
    }
}

/// `out = (1 − l)·a + l·b`.
fn lerp(out: &mut [f32], a: &[f32], b: &[f32], l: f32) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = (1.0 - l) * a + l * b;
    }
}

/// `acc += s·g`.
fn axpy(acc: &mut [f32], g: &[f32], s: f32) {
    for (a, &g) in acc.iter_mut().zip(g) {
        *a += s * g;
    }
}

fn resize_flex(x: &FlexTensor, size: [usize; 3], align_corners: bool) -> FlexTensor {
    let shape = x.shape().to_vec();
    let [b, c, d, h, w] = [shape[0], shape[1], shape[2], shape[3], shape[4]];
    let plan = Plan::new([d, h, w], size, align_corners);
    let x = contiguous(x);
    let vol_out: usize = size.iter().product();
    let mut y = vec![0.0f32; b * c * vol_out];
    y.par_chunks_mut(vol_out)
        .zip(slice(&x).par_chunks(d * h * w))
        .for_each(|(y, x)| plan.forward(x, y));
    flex_tensor(y, vec![b, c, size[0], size[1], size[2]])
}

impl ResizeOps for Flex {
    fn trilinear_resize(x: FlexTensor, size: [usize; 3], align_corners: bool) -> FlexTensor {
        resize_flex(&x, size, align_corners)
    }
}

/// The backward of [`ResizeOps::trilinear_resize`] on `Autodiff<Flex>`.
#[derive(Debug)]
struct ResizeBackward;

impl Backward<Flex, 1> for ResizeBackward {
    /// The input's shape, the output size, `align_corners`.
    type State = (Vec<usize>, [usize; 3], bool);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = contiguous(&grads.consume::<Flex>(&ops.node));
        let Some(parent) = parent else { return };
        let (shape, size, align_corners) = ops.state;
        let vol_in: usize = shape[2..].iter().product();
        let plan = Plan::new([shape[2], shape[3], shape[4]], size, align_corners);
        let mut dx = vec![0.0f32; shape[0] * shape[1] * vol_in];
        dx.par_chunks_mut(vol_in)
            .zip(slice(&grad).par_chunks(size.iter().product()))
            .for_each(|(dx, dy)| plan.backward(dy, dx));
        grads.register::<Flex>(parent.id, flex_tensor(dx, shape));
    }
}

impl<C: CheckpointStrategy> ResizeOps for Autodiff<Flex, C> {
    fn trilinear_resize(
        x: FloatTensor<Self>,
        size: [usize; 3],
        align_corners: bool,
    ) -> FloatTensor<Self> {
        let prepared = ResizeBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let y = resize_flex(x.primitive(), size, align_corners);
        match prepared {
            OpsKind::Tracked(prep) => {
                prep.finish((x.primitive().shape().to_vec(), size, align_corners), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
