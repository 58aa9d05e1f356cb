//! Concatenation along axis 1 (`[n, c_i, ...]` → `[n, Σ c_i, ...]`: the UNet decoder's skip
//! concatenations, the stacking of modality features in the method core) as one parallel
//! copy, with a backward that hands each input its own contiguous gradient, also copied in
//! parallel.
//!
//! burn's `cat` copies on one thread, and its backward hands each input a strided slice of the
//! output gradient (with a batch of 2 the channels of one input are not one block); the next
//! backward op that needs it contiguous (a reshape) then copies it element by element through
//! a strided iterator. In the real-data UNet step those copies ran on one thread while the
//! other worker waited. Here every (sample, input) block is one contiguous run, split into
//! pieces copied in parallel.
//!
//! [`CatOps`] is a burn backend extension (`#[backend_extension(Flex, Autodiff)]`), like
//! [`crate::rows`], with one op per number of inputs from 2 to 4 (the macro takes tensors one
//! by one, and a backward op has a fixed number of parents); [`cat_channels`] joins more
//! inputs in groups of 4 first, and falls back to burn's `cat` on other devices and dtypes.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use rayon::prelude::*;

use crate::flex_buf::{assume_init_f32, contiguous, flex_tensor, slice, uninit_f32};

/// Floats per parallel piece of a copy (256 KiB): enough to amortise a task, small enough to
/// share one block among the workers.
const PIECE: usize = 1 << 16;

/// Concatenation along axis 1 of 2, 3 or 4 tensors, as backend ops: inputs `[n, c_i, ...]`
/// with the same sizes but in axis 1, output `[n, Σ c_i, ...]`.
#[backend_extension(Flex, Autodiff)]
pub trait CatOps: Backend {
    fn cat2(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
    fn cat3(a: FloatTensor<Self>, b: FloatTensor<Self>, c: FloatTensor<Self>) -> FloatTensor<Self>;
    fn cat4(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// `Tensor::cat(xs, 1)`: per sample, the channels (axis 1) of each input in order.
///
/// # Shapes
/// - `xs[i]`: `[n, c_i, ...]`; output `[n, Σ c_i, ...]`
///
/// # Panics
/// If `xs` is empty, or the shapes differ other than in axis 1, or the rank is below 2
/// (internal contracts of the calling model).
pub fn cat_channels<const D: usize>(xs: Vec<Tensor<D>>) -> Tensor<D> {
    let first = xs.first().expect("cat_channels: no tensors").dims();
    for x in &xs {
        let d = x.dims();
        assert!(
            D >= 2 && d[0] == first[0] && d[2..] == first[2..],
            "cat_channels: shapes {first:?} and {d:?} differ other than in axis 1"
        );
    }
    let device = xs[0].device();
    let on_flex = device.clone().without_autodiff() == Device::flex()
        && xs
            .iter()
            .all(|x| x.device() == device && x.dtype() == DType::F32);
    if !on_flex {
        return Tensor::cat(xs, 1);
    }
    let mut xs: Vec<_> = xs.into_iter().map(Tensor::into_dispatch).collect();
    while xs.len() > 4 {
        // Groups of 4 first (the rest copied once more).
        let mut grouped = Vec::with_capacity(xs.len().div_ceil(4));
        let mut it = xs.into_iter();
        while let Some(a) = it.next() {
            let group: Vec<_> = core::iter::once(a).chain(it.by_ref().take(3)).collect();
            grouped.push(cat_dispatch(group));
        }
        xs = grouped;
    }
    Tensor::from_dispatch(cat_dispatch(xs))
}

/// One op for 1 to 4 dispatch tensors.
fn cat_dispatch(xs: Vec<FloatTensor<Dispatch>>) -> FloatTensor<Dispatch> {
    let mut it = xs.into_iter();
    let mut next = || it.next();
    match (next(), next(), next(), next()) {
        (Some(a), None, None, None) => a,
        (Some(a), Some(b), None, None) => <Dispatch as CatOps>::cat2(a, b),
        (Some(a), Some(b), Some(c), None) => <Dispatch as CatOps>::cat3(a, b, c),
        (Some(a), Some(b), Some(c), Some(d)) => <Dispatch as CatOps>::cat4(a, b, c, d),
        _ => unreachable!("1 to 4 tensors"),
    }
}

/// A run of floats to copy: `src` to `src.len()` floats at `dst`.
struct Piece<'a> {
    dst: *mut f32,
    src: &'a [f32],
}

// SAFETY: a piece is a copy into a range that no other piece writes (see `copy_pieces`); the
// pointer is only written through inside that range.
unsafe impl Send for Piece<'_> {}
unsafe impl Sync for Piece<'_> {}

/// Appends the copy of `src` to `dst` as pieces of at most [`PIECE`] floats (pointers only:
/// [`copy_pieces`] states what they must point to).
fn push_pieces<'a>(pieces: &mut Vec<Piece<'a>>, dst: *mut f32, src: &'a [f32]) {
    for (i, s) in src.chunks(PIECE).enumerate() {
        pieces.push(Piece {
            dst: dst.wrapping_add(i * PIECE),
            src: s,
        });
    }
}

/// Runs the copies in parallel.
///
/// # Safety
/// Every piece's destination must be valid for writes of its length, and no two pieces'
/// destinations may overlap (nor any source).
unsafe fn copy_pieces(pieces: Vec<Piece<'_>>) {
    pieces.into_par_iter().for_each(|p| {
        // SAFETY: as the caller guarantees.
        unsafe { core::ptr::copy_nonoverlapping(p.src.as_ptr(), p.dst, p.src.len()) }
    });
}

/// Samples and, per input, its floats per sample.
fn blocks(shapes: &[Vec<usize>]) -> (usize, Vec<usize>) {
    let n = shapes[0][0];
    let per = shapes
        .iter()
        .map(|s| s[1..].iter().product::<usize>())
        .collect();
    (n, per)
}

fn cat_flex(xs: &[&FlexTensor]) -> FlexTensor {
    let shapes: Vec<Vec<usize>> = xs.iter().map(|x| x.shape().to_vec()).collect();
    let (n, per) = blocks(&shapes);
    let row: usize = per.iter().sum();
    let xs: Vec<FlexTensor> = xs.iter().map(|x| contiguous(x)).collect();
    let mut out = uninit_f32(n * row);
    let base = out.as_mut_ptr().cast::<f32>();
    let mut pieces = Vec::new();
    for i in 0..n {
        let mut at = i * row;
        for (x, &len) in xs.iter().zip(&per) {
            // Sample i's run of this input: the inputs' runs follow each other in its `row`.
            push_pieces(
                &mut pieces,
                base.wrapping_add(at),
                &slice(x)[i * len..][..len],
            );
            at += len;
        }
    }
    // SAFETY: the pieces tile `out` without overlap, and the sources are other buffers.
    unsafe { copy_pieces(pieces) };
    // SAFETY: every float of `out` was written (the pieces tile it).
    let out = unsafe { assume_init_f32(out) };
    let mut shape = shapes[0].clone();
    shape[1] = shapes.iter().map(|s| s[1]).sum();
    flex_tensor(out, shape)
}

impl CatOps for Flex {
    fn cat2(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        cat_flex(&[&a, &b])
    }
    fn cat3(a: FlexTensor, b: FlexTensor, c: FlexTensor) -> FlexTensor {
        cat_flex(&[&a, &b, &c])
    }
    fn cat4(a: FlexTensor, b: FlexTensor, c: FlexTensor, d: FlexTensor) -> FlexTensor {
        cat_flex(&[&a, &b, &c, &d])
    }
}

/// The backward of [`cat_channels`] on `Autodiff<Flex>` for `N` inputs.
#[derive(Debug)]
struct CatBackward<const N: usize>;

impl<const N: usize> Backward<Flex, N> for CatBackward<N> {
    /// The inputs' shapes.
    type State = Vec<Vec<usize>>;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = contiguous(&grads.consume::<Flex>(&ops.node));
        let shapes = ops.state;
        let (n, per) = blocks(&shapes);
        let row: usize = per.iter().sum();
        let g = slice(&grad);
        let mut outs: Vec<_> = ops
            .parents
            .iter()
            .zip(&per)
            .map(|(node, &len)| node.as_ref().map(|_| uninit_f32(n * len)))
            .collect();
        let mut pieces = Vec::new();
        for i in 0..n {
            let mut at = i * row;
            for (out, &len) in outs.iter_mut().zip(&per) {
                if let Some(out) = out {
                    // Sample i's run of this input's gradient.
                    let dst = out.as_mut_ptr().cast::<f32>().wrapping_add(i * len);
                    push_pieces(&mut pieces, dst, &g[at..][..len]);
                }
                at += len;
            }
        }
        // SAFETY: the pieces tile each gradient (sample by sample) without overlap; the source
        // is the output gradient's buffer.
        unsafe { copy_pieces(pieces) };
        for ((node, out), shape) in ops.parents.into_iter().zip(outs).zip(shapes) {
            if let (Some(node), Some(out)) = (node, out) {
                // SAFETY: every float was written (the pieces tile the buffer).
                let values = unsafe { assume_init_f32(out) };
                grads.register::<Flex>(node.id, flex_tensor(values, shape));
            }
        }
    }
}

/// The concatenation of `N` inputs as one tracked op.
fn cat_tracked<C: CheckpointStrategy, const N: usize>(
    xs: [FloatTensor<Autodiff<Flex, C>>; N],
) -> FloatTensor<Autodiff<Flex, C>> {
    let nodes = xs.each_ref().map(|x| x.node());
    let prepared = CatBackward::<N>
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful();
    let primitives: Vec<&FlexTensor> = xs.iter().map(|x| x.primitive()).collect();
    let out = cat_flex(&primitives);
    match prepared {
        OpsKind::Tracked(prep) => {
            prep.finish(primitives.iter().map(|x| x.shape().to_vec()).collect(), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

impl<C: CheckpointStrategy> CatOps for Autodiff<Flex, C> {
    fn cat2(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        cat_tracked::<C, 2>([a, b])
    }
    fn cat3(a: FloatTensor<Self>, b: FloatTensor<Self>, c: FloatTensor<Self>) -> FloatTensor<Self> {
        cat_tracked::<C, 3>([a, b, c])
    }
    fn cat4(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cat_tracked::<C, 4>([a, b, c, d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random};

    /// Forward and every gradient against burn's `cat`: 2 inputs with 1 and 3 samples and
    /// runs longer than a piece, 3 inputs, 4 (the core's stacking of modalities), 9 (groups of
    /// 4 first), a strided input of rank 5, a gradient for only some inputs, and the forward
    /// without autodiff.
    #[test]
    fn matches_burn_cat_forward_and_gradients() {
        let device = Device::flex().autodiff();
        let check = |shapes: Vec<Vec<usize>>, grad: &[bool], seed: u64| {
            let xs: Vec<Tensor<3>> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let x = random([s[0], s[1], s[2]], seed + i as u64, &device);
                    if grad[i] { x.require_grad() } else { x }
                })
                .collect();
            let what = format!("{shapes:?}");
            let ours = cat_channels(xs.clone());
            let theirs = Tensor::cat(xs.clone(), 1);
            assert_close(&ours, &theirs, 0.0, &format!("forward {what}"));
            let up = random(theirs.dims(), seed + 100, &device);
            let g1 = (ours * up.clone()).sum().backward();
            let g2 = (theirs * up).sum().backward();
            for (i, x) in xs.iter().enumerate() {
                match (x.grad(&g1), x.grad(&g2)) {
                    (Some(a), Some(b)) => {
                        assert_close(&a, &b, 0.0, &format!("gradient {i} of {what}"))
                    }
                    (None, None) => assert!(!grad[i]),
                    _ => panic!("gradient {i} of {what}: present on one side only"),
                }
            }
        };
        check(vec![vec![1, 2, 60], vec![1, 3, 60]], &[true, true], 10);
        check(vec![vec![3, 2, 70], vec![3, 4, 70]], &[true, true], 20);
        // 40 × 2048 floats per sample of the first: runs of several pieces.
        check(vec![vec![2, 40, 2048], vec![2, 8, 2048]], &[true, true], 30);
        check(vec![vec![2, 1, 33]; 4], &[true, false, true, true], 40);
        check(
            vec![vec![2, 1, 5], vec![2, 2, 5], vec![2, 3, 5]],
            &[false, true, true],
            45,
        );
        check(vec![vec![2, 1, 5]; 9], &[true; 9], 50);

        // Rank 5 as the decoder has it, the first input a transposed (strided) view.
        let a = random([2, 5, 3, 2, 4], 60, &device)
            .swap_dims(2, 3)
            .require_grad();
        let b = random([2, 3, 2, 3, 4], 61, &device).require_grad();
        let ours = cat_channels(vec![a.clone(), b.clone()]);
        let theirs = Tensor::cat(vec![a.clone(), b.clone()], 1);
        assert_close(&ours, &theirs, 0.0, "rank-5 forward");
        let up = random([2, 8, 2, 3, 4], 62, &device);
        let (g1, g2) = (
            (ours * up.clone()).sum().backward(),
            (theirs * up).sum().backward(),
        );
        for (x, what) in [(&a, "a"), (&b, "b")] {
            let (p, q) = (x.grad(&g1).unwrap(), x.grad(&g2).unwrap());
            assert_close(&p, &q, 0.0, &format!("rank-5 gradient of {what}"));
        }

        let (a, b) = (
            random([2, 3, 4], 63, &Device::flex()),
            random([2, 1, 4], 64, &Device::flex()),
        );
        let plain = cat_channels(vec![a.clone(), b.clone()]);
        assert_close(
            &plain,
            &Tensor::cat(vec![a, b], 1),
            0.0,
            "inference forward",
        );
    }
}
