//! Per-layer timing of the AV-MNIST convolutions (batch 64) and fused norms through
//! mckd-kernels: forward alone (no autodiff) and forward + backward, min of N runs.
//! `RAYON_NUM_THREADS=1 cargo run --release -p mckd-kernels --example avconv [-- reps]`

mod common;

use common::time;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::prelude::*;
use burn::tensor::Distribution;

fn main() {
    mckd_kernels::tune_allocator();
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let ad = Device::flex().autodiff();
    let plain = Device::flex();
    ad.seed(0);
    let b = 64;
    // (name, Cin, Cout, k, pad, H, input needs grad)
    for (name, ci, co, k, p, h, xgrad) in [
        ("image conv1", 1, 20, 5, 0, 28, false),
        ("image conv2", 20, 50, 5, 0, 12, true),
        ("audio conv1", 1, 32, 3, 1, 20, false),
        ("audio conv2", 32, 64, 3, 1, 10, true),
    ] {
        let layer = Conv2dConfig::new([ci, co], [k, k])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .init(&ad);
        let x = Tensor::<4>::random([b, ci, h, h], Distribution::Default, &ad);
        let x = if xgrad { x.require_grad() } else { x };
        let ho = h + 2 * p - k + 1;
        let flop = 2.0 * (b * co * ci * k * k * ho * ho) as f64;
        let fwd = {
            let layer = layer.valid();
            let x = Tensor::<4>::from_data(x.to_data(), &plain);
            time(reps, || {
                let _ = mckd_kernels::conv2d_layer(&layer, x.clone());
            })
        };
        let both = time(reps, || {
            let _ = mckd_kernels::conv2d_layer(&layer, x.clone())
                .sum()
                .backward();
        });
        let passes = if xgrad { 3.0 } else { 2.0 };
        println!(
            "{name}: fwd {fwd:.2} ms ({:.1} GFLOP/s), fwd+bwd {both:.2} ms ({:.1} GFLOP/s)",
            flop / fwd / 1e6,
            passes * flop / both / 1e6
        );
    }
}
