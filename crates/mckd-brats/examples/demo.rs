//! Runs the BraTS subcommands without the `mckd` binary:
//! `cargo run --release -p mckd-brats --example demo -- demo --quick --out /tmp/x`.

use clap::Parser;
use mckd_brats::BratsCommand;

/// `mckd brats` stand-alone.
#[derive(Parser, Debug)]
#[command(name = "mckd-brats")]
struct Cli {
    #[command(subcommand)]
    command: BratsCommand,
}

fn main() -> anyhow::Result<()> {
    mckd_brats::run(Cli::parse().command)
}
