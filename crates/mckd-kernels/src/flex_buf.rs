//! Buffer helpers shared by the `flex` kernels: contiguous `f32` views in, owned tensors out.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::flex::FlexTensor;
use burn::backend::{DType, Flex};
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

/// A buffer of `len` floats that the caller fully overwrites (through `as_mut_ptr`) before
/// turning it into a `Vec<f32>` with [`assume_init_f32`]: no zero-filling pass.
pub(crate) fn uninit_f32(len: usize) -> Vec<core::mem::MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: capacity is `len`, and `MaybeUninit` elements need no initialisation.
    unsafe { v.set_len(len) };
    v
}

/// The buffer as initialised floats.
///
/// # Safety
/// Every element must have been written.
pub(crate) unsafe fn assume_init_f32(v: Vec<core::mem::MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = core::mem::ManuallyDrop::new(v);
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: same allocation, layout and length (MaybeUninit<f32> has f32's layout); every
    // element is initialised (the caller's contract); `v` is not dropped.
    unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, cap) }
}

/// Registers the gradients of a per-channel norm op whose parents are `[x, γ, β]` (`None`
/// for a parent that needs no gradient): `dx` of `x`'s shape, `dγ` and `dβ` per channel.
pub(crate) fn register_norm_grads(
    grads: &mut Gradients,
    parents: [Option<NodeId>; 3],
    (dx, dgamma, dbeta): (Vec<f32>, Vec<f32>, Vec<f32>),
    x_shape: Vec<usize>,
) {
    let channels = vec![dgamma.len()];
    let [x, gamma, beta] = parents;
    for (node, values, shape) in [
        (x, dx, x_shape),
        (gamma, dgamma, channels.clone()),
        (beta, dbeta, channels),
    ] {
        if let Some(id) = node {
            grads.register::<Flex>(id, flex_tensor(values, shape));
        }
    }
}

/// `f32` values in 64-byte-aligned storage: vector loads at multiples of 16 (AVX-512) or 8
/// (AVX2) floats from the start never straddle two cache lines (the direct 2-D kernel's
/// packed weights; a 64-byte-aligned copy measured 17 % faster than malloc's 16-byte
/// alignment with AVX-512).
pub(crate) struct AlignedF32 {
    lines: Vec<Line>,
    len: usize,
}

/// One cache line of floats.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

impl AlignedF32 {
    /// `len` zeros.
    pub(crate) fn zeros(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    /// The values.
    pub(crate) fn as_slice(&self) -> &[f32] {
        // SAFETY: `Line` is 16 `f32` without padding (size 64 = 16 · 4, `repr(C)`), the
        // vector's lines are contiguous, and `len ≤ 16 · lines.len()`.
        unsafe { core::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }

    /// The values, mutable.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, with the unique borrow of `self`.
        unsafe { core::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

/// A per-thread `f32` scratch buffer (a `thread_local!` of this type; see [`with_scratch`]).
pub(crate) type Scratch = core::cell::RefCell<Vec<f32>>;

/// Runs `f` on this thread's scratch `key`, grown to at least `len` floats, as a slice of
/// `len` (contents unspecified: reused across calls, so not cleared each time). Re-entered on
/// the same thread (not expected), `f` gets a fresh zeroed buffer.
pub(crate) fn with_scratch<R>(
    key: &'static std::thread::LocalKey<Scratch>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}
