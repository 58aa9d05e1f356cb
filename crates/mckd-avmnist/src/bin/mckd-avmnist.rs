//! Runs the `mckd avmnist` subcommands without the `mckd` binary:
//! `cargo run --release -p mckd-avmnist --bin mckd-avmnist -- reproduce --seeds 1`
//! (also `train ...` and `eval ...`).

use clap::Parser;
use mckd_avmnist::AvmnistCommand;

/// AV-MNIST (paper Table 2) with MCKD.
#[derive(Debug, Parser)]
#[command(name = "avmnist")]
struct Cli {
    #[command(subcommand)]
    cmd: AvmnistCommand,
}

fn main() -> anyhow::Result<()> {
    // Keep freed buffers in the heap (glibc only; see mckd_kernels::alloc).
    mckd_kernels::tune_allocator();
    let cmd = Cli::parse().cmd;
    // MCKD_SIMD may force the kernels' instruction-set path; refuse one the CPU lacks.
    mckd_kernels::simd_level()?;
    // The whole job on a worker of the kernels' thread pool (see mckd_kernels::pool).
    mckd_kernels::run_on_pool(None, || mckd_avmnist::run(cmd)).map_err(anyhow::Error::msg)?
}
