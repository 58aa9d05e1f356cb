//! `mckd-bench`: times mckd's MCKD training steps (see the library docs).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    mckd_bench::run(mckd_bench::Cli::parse().args)
}
