//! Micro-benchmark of the layers in this crate against burn's: forward + backward of one layer
//! at the shapes of our networks, min of N runs.
//! `cargo run --release -p mckd-kernels --example micro [-- reps]`

mod common;

use common::time;

use burn::nn::BatchNormConfig;
use burn::nn::conv::{Conv3dConfig, ConvTranspose3dConfig};
use burn::nn::pool::MaxPool2dConfig;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::relu;

fn main() {
    mckd_kernels::tune_allocator();
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let device = Device::flex().autodiff();
    device.seed(0);
    // UNet up1 at 64³ crops, c = 8: [2, 16, 32³] → [2, 8, 64³]; up3: [2, 256, 8³] → [2, 32, 16³].
    for (ci, co, s) in [(16, 8, 32), (256, 32, 8)] {
        let layer = ConvTranspose3dConfig::new([ci, co], [2, 2, 2])
            .with_stride([2, 2, 2])
            .init(&device);
        let x =
            Tensor::<5>::random([2, ci, s, s, s], Distribution::Default, &device).require_grad();
        let burn_ms = time(reps, || {
            let _ = layer.forward(x.clone()).sum().backward();
        });
        let ours_ms = time(reps, || {
            let y = mckd_kernels::conv_transpose3d_k2s2(
                x.clone(),
                layer.weight.val(),
                layer.bias.as_ref().map(|b| b.val()),
            );
            let _ = y.sum().backward();
        });
        println!(
            "conv_transpose3d k2s2 {ci}->{co} @ {s}^3: burn {burn_ms:.1} ms, ours {ours_ms:.1} ms"
        );
    }
    // UNet 3×3×3 convolutions at 64³ crops, c = 8 (batch 2): e1.conv2, e2.conv1 (stride 2),
    // d1.conv1 (40 → 8 channels), e3.conv2 at 16³.
    for (ci, co, s, stride) in [
        (8, 8, 64, 1),
        (8, 16, 64, 2),
        (40, 8, 64, 1),
        (32, 32, 16, 1),
    ] {
        let layer = Conv3dConfig::new([ci, co], [3, 3, 3])
            .with_stride([stride; 3])
            .with_padding(burn::nn::PaddingConfig3d::Explicit(1, 1, 1))
            .init(&device);
        let x =
            Tensor::<5>::random([2, ci, s, s, s], Distribution::Default, &device).require_grad();
        let burn_ms = time(reps, || {
            let _ = layer.forward(x.clone()).sum().backward();
        });
        let ours_ms = time(reps, || {
            let _ = mckd_kernels::conv3d_layer(&layer, x.clone())
                .sum()
                .backward();
        });
        let burn_fwd = time(reps, || {
            let _ = layer.forward(x.clone().detach());
        });
        let ours_fwd = time(reps, || {
            let _ = mckd_kernels::conv3d_layer(&layer, x.clone().detach());
        });
        println!(
            "conv3d k3 s{stride} {ci}->{co} @ {s}^3 fwd+bwd: burn {burn_ms:.0} ms, ours {ours_ms:.0} ms \
             (forward only: burn {burn_fwd:.0}, ours {ours_fwd:.0})"
        );
    }
    let head = Conv3dConfig::new([8, 3], [1, 1, 1]).init(&device);
    let x = Tensor::<5>::random([2, 8, 64, 64, 64], Distribution::Default, &device).require_grad();
    let burn_ms = time(reps, || {
        let _ = head.forward(x.clone()).sum().backward();
    });
    let ours_ms = time(reps, || {
        let y = mckd_kernels::conv3d_1x1(
            x.clone(),
            head.weight.val(),
            head.bias.as_ref().map(|b| b.val()),
        );
        let _ = y.sum().backward();
    });
    println!("conv3d 1x1x1 8->3 @ 64^3: burn {burn_ms:.1} ms, ours {ours_ms:.1} ms");
    // AV-MNIST image encoder, first stage: [64, 20, 24, 24].
    for (c, h) in [(20, 24), (32, 20), (50, 8), (64, 10)] {
        let bn = BatchNormConfig::new(c).init(&device);
        let pool = MaxPool2dConfig::new([2, 2]).init();
        let x = Tensor::<4>::random([64, c, h, h], Distribution::Default, &device).require_grad();
        let burn_ms = time(reps, || {
            let _ = pool.forward(relu(bn.forward(x.clone()))).sum().backward();
        });
        let ours_ms = time(reps, || {
            let _ = mckd_kernels::bn_relu_maxpool2d(&bn, &pool, x.clone())
                .sum()
                .backward();
        });
        println!(
            "batch norm + relu + pool [64, {c}, {h}, {h}]: burn {burn_ms:.2} ms, ours {ours_ms:.2} ms"
        );
    }
}
