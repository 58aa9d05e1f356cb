//! Buffer helpers shared by the `flex` kernels: contiguous `f32` views in, owned tensors out.

use burn::backend::DType;
use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;

/// A contiguous `f32` tensor: the same buffer when it already is one, else a contiguous copy.
///
/// # Panics
/// If `t` is not `f32` (the kernels' callers route other dtypes to burn's own layers).
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "mckd-kernels run on f32 tensors");
    if t.as_slice::<f32>().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The values of a tensor made by [`contiguous`].
pub(crate) fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

/// An owned `f32` tensor of `shape` from `values`.
pub(crate) fn flex_tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}
