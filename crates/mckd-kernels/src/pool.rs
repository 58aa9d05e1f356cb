//! Running a whole job on a worker of rayon's global pool.
//!
//! burn's `flex` kernels, `gemm` and our kernels split their work with rayon. Called from a
//! thread outside the pool (a program's main thread), every parallel call is *injected*: the
//! caller queues the job, wakes a worker through a futex and sleeps until the job is done, two
//! context switches per call. A training step makes hundreds of such calls. Run from a worker
//! of the pool, the same calls start on the calling thread and only hand out what other
//! workers steal. Measured (`mckd bench --model avmnist`, AV-MNIST inner step, batch 64):
//! 38.6 → 34.2 ms with 1 thread, 21.7 → 20.8 ms with 2 (bench/README.md).

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

#[cfg(test)]
mod tests {
    use super::*;

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
        // A size other than the existing pool's is an error that names the fix.
        let other = rayon::current_num_threads() + 1;
        let err = run_on_pool(Some(other), || ()).unwrap_err();
        assert!(err.contains("RAYON_NUM_THREADS"), "{err}");
    }
}
