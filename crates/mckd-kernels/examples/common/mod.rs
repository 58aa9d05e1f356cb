//! Shared by the timing examples.

use std::time::Instant;

/// Minimum wall time in ms of `reps` calls of `f`, after one warm-up call.
pub fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}
