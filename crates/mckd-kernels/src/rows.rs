//! Row gather along the batch axis (`out[i] = x[rows[i]]`, repeats allowed) with a backward
//! that adds each output row's gradient into its source row.
//!
//! burn's `select` does the same, but on `flex` its backward (`select_add`) walks the
//! elements one by one: for the AV-MNIST encoders' expand/compact pattern
//! (`ConvEncoder::forward_present` in mckd-avmnist) it took 18 % of a training step. Here a
//! row is one contiguous block, copied (forward) or added (backward) as a whole.
//!
//! [`RowOps`] is a burn backend extension (`#[backend_extension(Flex, Autodiff)]`), like
//! [`crate::fused`]; [`select_rows`] falls back to burn's `select` on other devices and dtypes.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;

use crate::flex_buf::{contiguous, flex_tensor, slice};

/// Gathering whole rows (the first axis) of a tensor, as a backend op.
#[backend_extension(Flex, Autodiff)]
pub trait RowOps: Backend {
    /// `x`: `[n, ...]`; every entry of `rows` is `< n`. Returns `[rows.len(), ...]` with
    /// `out[i] = x[rows[i]]`.
    fn gather_rows(x: FloatTensor<Self>, rows: Arc<[usize]>) -> FloatTensor<Self>;
}

/// `x.select(0, rows)`: the rows of `x` in the order of `rows`, each as often as it is named.
/// The gradient of a source row is the sum of its copies' gradients.
///
/// # Shapes
/// - `x`: `[n, ...]`; output: `[rows.len(), ...]`
///
/// # Panics
/// If a row index is out of range (an internal contract of the caller).
pub fn select_rows<const D: usize>(x: Tensor<D>, rows: &[usize]) -> Tensor<D> {
    let n = x.dims()[0];
    assert!(
        rows.iter().all(|&r| r < n),
        "select_rows: a row index is out of range for {n} rows"
    );
    let device = x.device();
    if device.clone().without_autodiff() != Device::flex() || x.dtype() != DType::F32 {
        let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [rows.len()]), &device);
        return x.select(0, index);
    }
    Tensor::from_dispatch(<Dispatch as RowOps>::gather_rows(
        x.into_dispatch(),
        rows.into(),
    ))
}

fn gather_flex(x: &FlexTensor, rows: &[usize]) -> FlexTensor {
    let mut shape = x.shape().to_vec();
    let x = contiguous(x);
    let v = slice(&x);
    let row = v.len().checked_div(shape[0]).unwrap_or(0);
    let mut out = Vec::with_capacity(rows.len() * row);
    for &r in rows {
        out.extend_from_slice(&v[r * row..(r + 1) * row]);
    }
    shape[0] = rows.len();
    flex_tensor(out, shape)
}

impl RowOps for Flex {
    fn gather_rows(x: FlexTensor, rows: Arc<[usize]>) -> FlexTensor {
        gather_flex(&x, &rows)
    }
}

/// The backward of [`RowOps::gather_rows`] on `Autodiff<Flex>`.
#[derive(Debug)]
struct GatherRowsBackward;

impl Backward<Flex, 1> for GatherRowsBackward {
    /// The row indices and the input's shape.
    type State = (Arc<[usize]>, Vec<usize>);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = contiguous(&grads.consume::<Flex>(&ops.node));
        let Some(parent) = parent else { return };
        let (rows, shape) = ops.state;
        let g = slice(&grad);
        let n: usize = shape.iter().product();
        let row = n.checked_div(shape[0]).unwrap_or(0);
        let mut dx = vec![0.0f32; n];
        for (i, &r) in rows.iter().enumerate() {
            let dst = &mut dx[r * row..(r + 1) * row];
            for (d, s) in dst.iter_mut().zip(&g[i * row..(i + 1) * row]) {
                *d += s;
            }
        }
        grads.register::<Flex>(parent.id, flex_tensor(dx, shape));
    }
}

impl<C: CheckpointStrategy> RowOps for Autodiff<Flex, C> {
    fn gather_rows(x: FloatTensor<Self>, rows: Arc<[usize]>) -> FloatTensor<Self> {
        let prepared = GatherRowsBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let out = gather_flex(x.primitive(), &rows);
        match prepared {
            OpsKind::Tracked(prep) => prep.finish((rows, x.primitive().shape().to_vec()), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random};

    /// Forward and gradient against burn's `select` (repeated, omitted and reordered rows),
    /// on a 4-D and a 2-D tensor; and the fallback without autodiff.
    #[test]
    fn matches_burn_select_forward_and_gradient() {
        crate::testing::for_each_level(|_| matches_burn_select_forward_and_gradient_at_level());
    }

    fn matches_burn_select_forward_and_gradient_at_level() {
        let device = Device::flex().autodiff();
        let rows = [3usize, 0, 3, 3, 1, 4];
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(rows.iter().map(|&r| r as i64).collect::<Vec<_>>(), [6]),
            &device,
        );
        let x = random([5, 3, 4, 2], 1, &device).require_grad();
        let up = random([6, 3, 4, 2], 2, &device);
        let ours = select_rows(x.clone(), &rows);
        let theirs = x.clone().select(0, index.clone());
        assert_close(&ours, &theirs, 0.0, "forward");
        let g_ours = x.grad(&(ours * up.clone()).sum().backward()).unwrap();
        let g_theirs = x.grad(&(theirs * up).sum().backward()).unwrap();
        // Row 2 is never selected: zero gradient; row 3 three times: the sum of three rows.
        assert_close(&g_ours, &g_theirs, 1e-6, "gradient");
        let g = crate::testing::values(&g_ours);
        assert!(g[48..72].iter().all(|&v| v == 0.0));

        let y = random([5, 7], 3, &device).require_grad();
        let up = random([6, 7], 4, &device);
        let gy = y.grad(
            &(select_rows(y.clone(), &rows) * up.clone())
                .sum()
                .backward(),
        );
        let gt = y.grad(&(y.clone().select(0, index) * up).sum().backward());
        assert_close(&gy.unwrap(), &gt.unwrap(), 1e-6, "2-D gradient");

        let plain = random([5, 7], 3, &Device::flex());
        assert_close(
            &select_rows(plain.clone(), &[4, 4]),
            &Tensor::cat(
                vec![plain.clone().narrow(0, 4, 1), plain.narrow(0, 4, 1)],
                0,
            ),
            0.0,
            "inference forward",
        );
    }
}
