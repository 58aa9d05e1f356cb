//! Running a whole job on a worker of rayon's global pool.
//!
//! burn's `flex` kernels, `gemm` and our kernels split their work with rayon. Called from a
//! thread outside the pool (a program's main thread), every parallel call is *injected*: the
//! caller queues the job, wakes a worker through a futex and sleeps until the job is done, two
//! context switches per call. A training step makes hundreds of such calls. Run from a worker
//! of the pool, the same calls start on the calling thread and only hand out what other
//! workers steal. Measured (`mckd bench --model avmnist`, AV-MNIST inner step, batch 64):
//! 38.6 → 34.2 ms with 1 thread, 21.7 → 20.8 ms with 2 (bench/README.md).
//!
//! [`with_busy_workers`] keeps the other workers spinning through a compute-dense loop (the
//! training loops use it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Stack of the pool's threads: the job (a whole training run) runs on one of them, and burn's
/// autodiff recurses over its graph; a main thread has 8 MiB, rayon's default is 2 MiB.
pub const WORKER_STACK: usize = 64 << 20;

/// Builds rayon's global pool (`threads` threads, or rayon's default when `None`: the
/// `RAYON_NUM_THREADS` variable, else one per CPU) with [`WORKER_STACK`]-byte stacks, and runs
/// `job` on one of its workers, returning its result.
///
/// If the global pool exists already (someone used rayon first), `job` runs on it as it is,
/// provided its size matches `threads`.
///
/// # Errors
/// If `threads` is `Some(0)`, or the existing pool has another size than `threads`.
pub fn run_on_pool<R: Send>(
    threads: Option<usize>,
    job: impl FnOnce() -> R + Send,
) -> Result<R, String> {
    if threads == Some(0) {
        return Err("the thread count must be positive".into());
    }
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .stack_size(WORKER_STACK)
        .build_global();
    if let (Err(e), Some(n)) = (built, threads)
        && rayon::current_num_threads() != n
    {
        return Err(format!(
            "cannot set {n} threads ({e}); the thread pool already has {}: \
             set RAYON_NUM_THREADS={n} instead",
            rayon::current_num_threads()
        ));
    }
    // `scope` runs its closure on a worker of the global pool (the caller blocks meanwhile).
    Ok(rayon::scope(|_| job()))
}

/// Environment variable: `0` turns [`with_busy_workers`] into a plain call.
pub const SPIN_ENV: &str = "MCKD_POOL_SPIN";

fn spin_enabled() -> bool {
    std::env::var_os(SPIN_ENV).is_none_or(|v| v != "0")
}

/// Runs `f` while the pool's other workers spin on rayon's queues instead of sleeping, for
/// compute-dense loops on a pool worker (training steps; called from outside the pool, with
/// one thread, or with [`SPIN_ENV`] = `0` it just calls `f`).
///
/// A training step alternates short serial stretches (autodiff bookkeeping, small ops) with
/// hundreds of parallel kernels; a sleeping worker has to be woken through the kernel for each
/// of them (≈ 4 % of the job thread's time at 2 threads, `_raw_spin_unlock_irqrestore`), and
/// starts late. Spinning workers take each piece of work as soon as it exists: the AV-MNIST
/// inner step at 2 threads 14.3–14.7 → 12.7–13.4 ms (bench/README.md). The price is a busy
/// core during the serial stretches, as with OpenMP's active wait policy; after `SPIN_FOR`
/// without work a worker only looks every `NAP`.
pub fn with_busy_workers<R>(f: impl FnOnce() -> R) -> R {
    let Some(me) = rayon::current_thread_index() else {
        return f();
    };
    if !spin_enabled() || rayon::current_num_threads() < 2 {
        return f();
    }
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    // Reaches every worker; this one's copy returns at once. The others stop after `f`
    // (within one look for work); nothing waits for them.
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() != me {
            keep_busy(&flag);
        }
    });
    // Set even when `f` panics.
    let _stop = StopOnDrop(done);
    f()
}

/// Runs on every other worker during [`with_busy_workers`]: takes each piece of parallel work
/// as soon as it exists and spins in between; after `SPIN_FOR` without work it looks only
/// every `NAP`.
fn keep_busy(done: &AtomicBool) {
    let mut last_work = Instant::now();
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            last_work = Instant::now();
        } else if last_work.elapsed() < SPIN_FOR {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(NAP);
        }
    }
}

/// How long a worker spins without work before it naps between looks.
const SPIN_FOR: Duration = Duration::from_millis(2);

/// The pause between looks for work once a worker naps.
const NAP: Duration = Duration::from_micros(500);

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the default pool (one thread per CPU: ≥ 2 on CI and here) the other workers spin
    /// through the `with_busy_workers` jobs below.
    #[test]
    fn the_job_runs_on_a_pool_worker_and_returns_its_result() {
        assert!(
            rayon::current_thread_index().is_none(),
            "test thread is outside the pool"
        );
        let (on_worker, value) =
            run_on_pool(None, || (rayon::current_thread_index().is_some(), 6 * 7)).unwrap();
        assert!(on_worker);
        assert_eq!(value, 42);
        // Nested parallel work inside the job completes (no deadlock on a busy worker).
        let sum: u64 = run_on_pool(None, || {
            use rayon::prelude::*;
            (1..=1000u64).into_par_iter().sum()
        })
        .unwrap();
        assert_eq!(sum, 500_500);
        assert!(run_on_pool(Some(0), || ()).is_err());
        // Many short parallel calls with serial work in between (what the other workers spin
        // for), then a job that panics: the panic reaches the caller (the spinning workers
        // stop), and the pool still runs jobs afterwards.
        let sums: Vec<u64> = run_on_pool(None, || {
            with_busy_workers(|| {
                use rayon::prelude::*;
                (0..200u64)
                    .map(|k| (0..64u64).into_par_iter().map(|i| i * k).sum())
                    .collect()
            })
        })
        .unwrap();
        assert!(sums.iter().enumerate().all(|(k, &s)| s == 2016 * k as u64));
        let caught = std::panic::catch_unwind(|| {
            run_on_pool(None, || with_busy_workers(|| panic!("job failed")))
        });
        assert!(caught.is_err(), "the job's panic propagates");
        assert_eq!(run_on_pool(None, || with_busy_workers(|| 1)).unwrap(), 1);
        // Outside the pool it is a plain call.
        assert_eq!(with_busy_workers(|| 2), 2);
        // A size other than the existing pool's is an error that names the fix.
        let other = rayon::current_num_threads() + 1;
        let err = run_on_pool(Some(other), || ()).unwrap_err();
        assert!(err.contains("RAYON_NUM_THREADS"), "{err}");
    }
}
