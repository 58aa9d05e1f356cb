//! Per-layer timing of the UNet's 3×3×3 convolutions (batch 2, base width 8, 64³ crops) and a
//! fused instance norm through mckd-kernels: forward alone (no autodiff) and forward +
//! backward, min of N runs, at the level of `MCKD_SIMD` (default: the CPU's best).
//! `MCKD_SIMD=avx2 RAYON_NUM_THREADS=1 cargo run --release -p mckd-kernels --example unetconv [-- reps [D H W]]`
//! (`D H W`: the first level's crop instead of 64³, e.g. `56 72 56` for the real data at 2 mm).

mod common;

use common::time;

use burn::nn::conv::Conv3dConfig;
use burn::nn::{InstanceNormConfig, LeakyReluConfig, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::Distribution;

fn main() {
    mckd_kernels::tune_allocator();
    let level = match mckd_kernels::simd_level() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let ad = Device::flex().autodiff();
    let plain = Device::flex();
    ad.seed(0);
    let args: Vec<usize> = std::env::args()
        .skip(2)
        .filter_map(|s| s.parse().ok())
        .collect();
    let top: [usize; 3] = args.as_slice().try_into().unwrap_or([64; 3]);
    println!("level {level}, first level {top:?}");
    // (name, Cin, Cout, side, stride): e1.conv1 (Cin 1), e1.conv2, e2.conv1 (stride 2), the
    // decoder's first level (40 → 8) and a layer of the shape of its input gradient (8 → 40),
    // e3.conv2 at 16³.
    for (name, ci, co, scale, stride) in [
        ("e1.conv1", 1, 8, 1, 1),
        ("e1.conv2", 8, 8, 1, 1),
        ("e2.conv1", 8, 16, 1, 2),
        ("d1.conv1", 40, 8, 1, 1),
        ("d1.conv1-dx", 8, 40, 1, 1),
        ("e3.conv2", 32, 32, 4, 1),
    ] {
        let dims = top.map(|n| n / scale);
        let layer = Conv3dConfig::new([ci, co], [3, 3, 3])
            .with_stride([stride; 3])
            .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
            .init(&ad);
        let [d, h, w] = dims;
        let x = Tensor::<5>::random([2, ci, d, h, w], Distribution::Default, &ad).require_grad();
        let out: usize = dims.iter().map(|n| n / stride).product();
        let flop = 2.0 * (2 * co * ci * 27 * out) as f64;
        let fwd = {
            let layer = layer.valid();
            let x = Tensor::<5>::from_data(x.to_data(), &plain);
            time(reps, || {
                let _ = mckd_kernels::conv3d_layer(&layer, x.clone());
            })
        };
        let both = time(reps, || {
            let _ = mckd_kernels::conv3d_layer(&layer, x.clone())
                .sum()
                .backward();
        });
        // Without the input's gradient: forward + weight (and bias) gradient.
        let xd = x.clone().detach();
        let fwd_wgrad = time(reps, || {
            let _ = mckd_kernels::conv3d_layer(&layer, xd.clone())
                .sum()
                .backward();
        });
        println!(
            "{name} {ci}->{co} @ {dims:?} s{stride}: fwd {fwd:.1} ms ({:.1} GFLOP/s), fwd+bwd {both:.1} ms ({:.1} GFLOP/s), fwd+wgrad {fwd_wgrad:.1} ms",
            flop / fwd / 1e6,
            3.0 * flop / both / 1e6
        );
    }
    let norm = InstanceNormConfig::new(8).with_affine(true).init(&ad);
    let act = LeakyReluConfig::new().init();
    let x = Tensor::<5>::random([2, 8, 64, 64, 64], Distribution::Default, &ad).require_grad();
    let both = time(reps, || {
        let _ = mckd_kernels::instance_norm_leaky_relu(&norm, &act, x.clone())
            .sum()
            .backward();
    });
    println!("instance norm + leaky relu [2, 8, 64^3] fwd+bwd {both:.1} ms");
}
