//! Measures the inner-step and meta-step time of the BraTS UNet on random crops.
//!
//! `cargo run --release -p mckd-brats --example step_time -- <base> <D> <H> <W> [batch] [reps]`

use std::time::Instant;

use burn::optim::SgdConfig;
use burn::optim::momentum::MomentumConfig;
use burn::prelude::*;
use mckd_brats::data::batch_from_buffers;
use mckd_brats::model::UNetConfig;
use mckd_core::{Mckd, MckdConfig, MckdModel, Normalisation, mask_tensor};

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("number"))
        .collect();
    let (c, d, h, w) = (a[0], a[1], a[2], a[3]);
    let b = a.get(4).copied().unwrap_or(2);
    let reps = a.get(5).copied().unwrap_or(3);
    let device = Device::flex().autodiff();
    device.seed(0);
    let net = UNetConfig::new()
        .with_base(c)
        .with_spatial([d, h, w])
        .init(&device);
    let model = MckdModel::new(net, Normalisation::Softmax, 0, &device);
    let optim = SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(0.99)
                .with_dampening(0.0)
                .with_nesterov(true),
        ))
        .init();
    let mut trainer = Mckd::new(model, MckdConfig::default(), optim);
    let n = d * h * w;
    let mk = || {
        let images = (0..4)
            .map(|m| {
                (0..b * n)
                    .map(|i| ((i * 7 + m) % 13) as f32 / 13.0)
                    .collect()
            })
            .collect();
        let targets = (0..b * 3 * n).map(|i| ((i / 97) % 2) as f32).collect();
        batch_from_buffers(images, Some(targets), b, [d, h, w], &device)
    };
    let batch = mk();
    let mask = mask_tensor(&vec![vec![true, false, true, true]; b], &device);
    for r in 0..reps {
        let t = Instant::now();
        let s = trainer.inner_step(&batch, &mask, 1e-2);
        let ti = t.elapsed().as_secs_f64();
        let t = Instant::now();
        trainer.meta_step_on(&batch);
        let tm = t.elapsed().as_secs_f64();
        println!(
            "c={c} {d}x{h}x{w} b={b} rep {r}: inner {ti:.3} s (loss {:.4}), meta {tm:.3} s",
            s.task_loss
        );
    }
}
