//! The machine's fp32 peak, measured: every thread of the pool runs a loop of independent
//! fused multiply-adds at the kernels' instruction-set level ([`SimdLevel`]), and the
//! achieved rate is the peak the step timings are compared against (instead of an assumed
//! clock × FLOP/cycle).
//!
//! Each thread keeps 12 vector accumulators (enough to cover the FMA latency of 4 cycles on
//! two ports: 8 chains in flight, with room to spare) and runs `a = a·m + c` on all of them;
//! 2 FLOP per lane per FMA. The best of a few repetitions of all threads at once is taken. At
//! the scalar level (baseline x86-64 has no FMA instruction) the loop multiplies and adds.

use std::time::Instant;

use mckd_kernels::SimdLevel;

/// Accumulators per thread.
const CHAINS: usize = 12;

/// FLOP/s (in GFLOP/s) of `threads` threads of the current rayon pool running FMA loops at
/// `level` for about `seconds` each, best of `reps` repetitions.
///
/// # Panics
/// If the CPU lacks `level` (callers pass a level from [`mckd_kernels::simd_level`]).
pub fn fma_peak_gflops(level: SimdLevel, seconds: f64, reps: usize) -> f64 {
    assert!(level.supported(), "the CPU lacks {level}");
    // Calibrate the iteration count on one thread.
    let mut iters = 1u64 << 16;
    loop {
        let t = Instant::now();
        std::hint::black_box(run(level, iters));
        let dt = t.elapsed().as_secs_f64();
        if dt > 0.02 || iters > 1 << 34 {
            iters = ((iters as f64) * seconds / dt.max(1e-9)).max(1.0) as u64;
            break;
        }
        iters *= 4;
    }
    let flop_per_thread = (iters * CHAINS as u64 * lanes(level) as u64 * 2) as f64;
    let threads = rayon::current_num_threads();
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            let sums = rayon::broadcast(|_| run(level, iters));
            let dt = t.elapsed().as_secs_f64();
            std::hint::black_box(sums);
            flop_per_thread * threads as f64 / dt / 1e9
        })
        .fold(0.0, f64::max)
}

/// f32 lanes per FMA at `level` (1 for scalar code).
pub fn lanes(level: SimdLevel) -> usize {
    match level {
        SimdLevel::Avx512 => 16,
        SimdLevel::Avx2 => 8,
        SimdLevel::Scalar => 1,
    }
}

/// `iters` rounds of FMAs on [`CHAINS`] accumulators; returns their sum (so the loop is kept).
fn run(level: SimdLevel, iters: u64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: `fma_peak_gflops` checked that the CPU supports the level.
        SimdLevel::Avx512 => return unsafe { fma512(iters) },
        // SAFETY: as above.
        SimdLevel::Avx2 => return unsafe { fma256(iters) },
        SimdLevel::Scalar => {}
    }
    let mut a = [1.0f32; CHAINS];
    let (m, c) = std::hint::black_box((0.999_999f32, 1e-7f32));
    for _ in 0..iters {
        for v in &mut a {
            *v = *v * m + c;
        }
    }
    a.iter().sum()
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (m, c) = std::hint::black_box((0.999_999f32, 1e-7f32));
    let (m, c) = (_mm512_set1_ps(m), _mm512_set1_ps(c));
    let mut a = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for v in &mut a {
            *v = _mm512_fmadd_ps(*v, m, c);
        }
    }
    a.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma256(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (m, c) = std::hint::black_box((0.999_999f32, 1e-7f32));
    let (m, c) = (_mm256_set1_ps(m), _mm256_set1_ps(c));
    let mut a = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for v in &mut a {
            *v = _mm256_fmadd_ps(*v, m, c);
        }
    }
    let mut out = [0.0f32; 8];
    a.iter()
        .map(|&v| {
            // SAFETY: 8 floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
            out.iter().sum::<f32>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loops compute what they claim: `CHAINS` chains of `a = a·m + c` from 1, summed, at
    /// every level (checked against the scalar recurrence in f64), and the rate is positive.
    #[test]
    fn fma_loops_compute_the_recurrence_and_a_rate() {
        let (m, c) = (0.999_999f64, 1e-7f64);
        let mut a = 1.0f64;
        for _ in 0..1000 {
            a = a * m + c;
        }
        for level in SimdLevel::available() {
            let got = f64::from(run(level, 1000));
            let want = a * (CHAINS * lanes(level)) as f64;
            assert!((got - want).abs() < 1e-3 * want, "{level}: {got} vs {want}");
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let g = pool.install(|| fma_peak_gflops(SimdLevel::Scalar, 0.01, 1));
        assert!(g > 0.0 && g.is_finite());
    }
}
