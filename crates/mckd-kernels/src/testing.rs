//! Helpers shared by the tests: seeded random tensors, a relative comparison, and running a
//! check under every instruction-set path of the CPU.

use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::simd::SimdLevel;

/// Uniform values in [-1, 1) from a ChaCha8 generator (independent of burn's generator).
pub fn random<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// The values of a tensor (any device).
pub fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

/// `max |a − b| / max(1, max |b|)`: the error relative to the reference's scale (and absolute
/// for references of magnitude below 1). Shapes must agree.
pub fn max_rel_error<const D: usize>(a: &Tensor<D>, b: &Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(&b).fold(0.0f32, |m, (x, y)| {
        if x.is_nan() != y.is_nan() {
            f32::INFINITY
        } else {
            m.max((x - y).abs())
        }
    });
    diff / scale
}

/// Panics unless [`max_rel_error`] ≤ `tol`.
pub fn assert_close<const D: usize>(a: &Tensor<D>, b: &Tensor<D>, tol: f32, what: &str) {
    let err = max_rel_error(a, b);
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
}

/// Runs `check` once per [`SimdLevel`] this CPU supports (scalar included), each time on a
/// fresh 2-thread rayon pool whose workers run the kernels at that level: the level is a
/// thread-local override, so tests running at the same time on other threads keep theirs,
/// and the kernels' parallel tasks (rayon calls inside `check` stay on the pool) all see it.
/// A failure names the level.
///
/// # Panics
/// If `check` panics at some level (re-raised with the level in the message).
pub fn for_each_level(check: impl Fn(SimdLevel) + Sync) {
    for level in SimdLevel::available() {
        let pool = pool_at(level, 2);
        let run = std::panic::AssertUnwindSafe(|| pool.install(|| check(level)));
        if let Err(e) = std::panic::catch_unwind(run) {
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("at MCKD_SIMD={level}: {msg}");
        }
    }
}

/// A rayon pool of `threads` workers that run the kernels at `level` (see [`for_each_level`]).
///
/// # Panics
/// If the CPU lacks `level` or the pool cannot be built.
pub fn pool_at(level: SimdLevel, threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(crate::pool::WORKER_STACK)
        .start_handler(move |_| crate::simd::set_thread_level(Some(level)))
        .build()
        .expect("test thread pool")
}
