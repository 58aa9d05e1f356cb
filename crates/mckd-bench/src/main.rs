//! `mckd-bench`: times mckd's MCKD training steps (see the library docs).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    // Keep freed buffers in the heap (glibc only; see mckd_kernels::alloc).
    mckd_bench::tune_allocator();
    mckd_bench::run(mckd_bench::Cli::parse().args)
}
