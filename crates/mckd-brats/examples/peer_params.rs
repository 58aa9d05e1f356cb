//! Prints the trainable parameters of every BraTS method as `brats real`/`demo` build it from a
//! run's `config.json` (its network, widths and crop; only the method is switched).
//!
//! `cargo run --release -p mckd-brats --example peer_params -- <run>/config.json`

use burn::prelude::*;
use mckd_brats::BratsRunConfig;
use mckd_brats::config::Method;
use mckd_brats::train::build_any;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: peer_params <run>/config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cfg: BratsRunConfig =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not a run config: {e}"));
    println!("crop {:?}, {:?}", cfg.task.crop, cfg.task.arch);
    for kind in [
        Method::Mckd,
        Method::Hemis,
        Method::Hved,
        Method::Shaspec,
        Method::Mmformer,
        Method::RobustSeg,
    ] {
        let mut c = cfg.clone();
        c.method = c.method.with_kind(kind);
        let method = build_any(&c, c.task.crop, &Device::flex());
        println!("{kind:?} {}", method.num_params());
    }
}
