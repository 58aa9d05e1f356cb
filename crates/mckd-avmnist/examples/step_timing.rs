//! Times one inner step, one meta step and one epoch of the AV-MNIST network (batch 64) on the
//! real kit: `cargo run --release -p mckd-avmnist --example step_timing [-- DATA_DIR]`.

use std::path::PathBuf;
use std::time::Instant;

use burn::optim::AdamConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::prelude::*;
use mckd_avmnist::data::AvSource;
use mckd_avmnist::model::AvmnistNetConfig;
use mckd_core::{MckdConfig, MckdModel, MckdTrainer, Normalisation, mask_tensor};
use mckd_train::train::Source;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("MCKD_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/work/shared/data"));
    let t = Instant::now();
    let data = mckd_data::load_avmnist(&dir, None)?;
    println!("load_avmnist: {:.2} s", t.elapsed().as_secs_f64());
    let set = data.missing_audio(15)?;
    let src = AvSource::missing_audio(&set);
    let meta = AvSource::paired(&set.paired);
    let device = Device::flex().autodiff();
    let net = AvmnistNetConfig::new().init_seeded(1, &device);
    let mut model = MckdModel::new(net, Normalisation::Softmax, 1, &device);
    let optim = AdamConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(Some(WeightDecayConfig::new(1e-2)))
        .init();
    let mut trainer = MckdTrainer::new(MckdConfig::new().with_iwv_weight_decay(1e-2), optim);
    let idx: Vec<usize> = (0..64).map(|i| i * 16).collect();
    let batch = src.batch(&idx, &device);
    let masks: Vec<Vec<bool>> = idx.iter().map(|&i| src.available(i).to_vec()).collect();
    let mask = mask_tensor(&masks, &device);
    let mbatch = meta.batch(&(0..64).collect::<Vec<_>>(), &device);
    for _ in 0..3 {
        model = trainer.inner_step(model, &batch, &mask, 1e-3).0;
        model = trainer.meta_step(model, &mbatch).0;
    }
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        model = trainer.inner_step(model, &batch, &mask, 1e-3).0;
    }
    let inner = t.elapsed().as_secs_f64() / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        model = trainer.meta_step(model, &mbatch).0;
    }
    let meta_s = t.elapsed().as_secs_f64() / n as f64;
    let t = Instant::now();
    let b = src.batch(&idx, &device);
    let batch_s = t.elapsed().as_secs_f64();
    drop(b);
    println!("inner step (batch 64): {:.1} ms", inner * 1e3);
    println!("meta step (batch 64): {:.1} ms", meta_s * 1e3);
    println!("batch building: {:.2} ms", batch_s * 1e3);
    println!(
        "epoch of 1,050 samples (17 iterations): {:.2} s without meta steps, {:.2} s with a meta step every iteration",
        17.0 * inner,
        17.0 * (inner + meta_s)
    );
    Ok(())
}
