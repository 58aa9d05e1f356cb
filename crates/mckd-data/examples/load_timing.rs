//! Times `load_avmnist` on the kit: `cargo run --release -p mckd-data --example load_timing
//! [DATA_DIR]` (default `$MCKD_DATA_DIR`, else `../shared/data` from the repository root).
//! Prints the wall time of one cold load (first in the process) and of a second one.

use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("MCKD_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    for run in ["cold", "warm"] {
        let t = Instant::now();
        let data = mckd_data::load_avmnist(&dir, None)?;
        println!(
            "load_avmnist ({run}): {:.3} s, {} train + {} test samples",
            t.elapsed().as_secs_f64(),
            data.train.len(),
            data.test.len()
        );
    }
    Ok(())
}
