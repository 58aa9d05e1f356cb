//! What the meta step sees in a trained BraTS run: per modality, how much the task loss rises
//! when that modality is missing (its feature imputed, Eq. 2), and the gradient of the meta
//! loss with respect to the normalised importance weights (at the run's final IWV and at
//! uniform weights), split into the ET, TC and WT parts of the loss.
//!
//! `cargo run --release -p mckd-brats --example meta_probe -- <run folder>...`
//!
//! Runs from the folder the run's `config.json` `data` path is relative to. Cases: the run's
//! meta-validation and test cases (whole phantoms; `splits.json`).

use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use mckd_brats::data::{CropSource, TrainCase};
use mckd_brats::experiment::load_model;
use mckd_brats::model::{BratsBatch, BratsUNet};
use mckd_core::fusion::{fuse, weight_features};
use mckd_core::{Task, mask_tensor};
use mckd_volume::{CropConfig, MODALITIES, Splits, discover_cases, load_case};
use std::sync::Arc;

/// Per channel (ET, TC, WT): `dice_c / 3 + bce_c`; their sum is `segmentation_loss`.
fn channel_losses(logits: Tensor<5>, targets: Tensor<5>) -> Vec<Tensor<1>> {
    let [b, c, d, h, w] = logits.dims();
    let n = b * d * h * w;
    let x: Tensor<2> = logits.swap_dims(0, 1).reshape([c, n]);
    let y: Tensor<2> = targets.swap_dims(0, 1).reshape([c, n]);
    (0..c)
        .map(|ch| {
            let x = x.clone().narrow(0, ch, 1);
            let y = y.clone().narrow(0, ch, 1);
            let p = sigmoid(x.clone());
            let inter = (p.clone() * y.clone()).sum();
            let denom = p.sum() + y.clone().sum() + 1.0;
            let dice = (inter * 2.0 / denom).neg() + 1.0;
            let bce = (y.clone() * log_sigmoid(x.clone()) + (y.neg() + 1.0) * log_sigmoid(x.neg()))
                .neg()
                .mean();
            dice / c as f64 + bce
        })
        .collect()
}

/// The meta step's forward: every MCKD level of `features` (all modalities present, plain
/// tensors) scaled by the weights `w` (tracked), fused and decoded by the frozen network.
fn weighted_decode(frozen: &BratsUNet, features: &[Tensor<3>], w: &Tensor<1>) -> Tensor<5> {
    let fused = features
        .iter()
        .enumerate()
        .map(|(l, f)| {
            let f = f.clone().autodiff();
            if frozen.mckd_level(l) {
                fuse(weight_features(f, w.clone()))
            } else {
                fuse(f)
            }
        })
        .collect();
    frozen.decode(fused)
}

fn vals(t: Tensor<1>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().expect("f32")
}

fn main() {
    for run in std::env::args().skip(1) {
        probe(Path::new(&run));
    }
}

fn probe(run: &Path) {
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    let (cfg, model) = load_model(run, &device).expect("run folder");
    let splits = Splits::load(run.join("splits.json")).expect("splits.json");
    let all = discover_cases(&cfg.data).expect("cases");
    let ids: Vec<&String> = splits.meta_val.iter().chain(&splits.test).collect();
    let cases: Vec<Arc<TrainCase>> = ids
        .iter()
        .map(|id| {
            let c = all.iter().find(|c| &&c.id == id).expect("case");
            Arc::new(
                TrainCase::from_loaded(load_case(c, cfg.convention).expect("load"), cfg.convention)
                    .expect("case"),
            )
        })
        .collect();
    let n_cases = cases.len();
    let src = CropSource::new(
        cases,
        CropConfig {
            size: cfg.crop,
            foreground_prob: 1.0,
            flip_prob: [0.0; 3],
        },
        cfg.convention,
        1,
        7,
    )
    .expect("crops");
    let iwv_final = model.iwv.normalised_values();
    let frozen = model.task.valid();
    let n = 4;
    // Sums over batches of one case each.
    let mut drop = [[0.0f64; 4]; 5]; // [all, drop m] × [ET, TC, WT, total]
    let mut grad_final = [[0.0f64; 4]; 4]; // [ET, TC, WT, total] × modality
    let mut grad_uniform = [[0.0f64; 4]; 4];
    let mut cached = Vec::with_capacity(n_cases);
    for i in 0..n_cases {
        let batch: BratsBatch = src.crops(&[i], &plain);
        let targets = batch.targets.clone().expect("targets");
        let model_plain = model.valid();
        for (row, missing) in std::iter::once(None).chain((0..n).map(Some)).enumerate() {
            let present: Vec<bool> = (0..n).map(|m| Some(m) != missing).collect();
            let mask = mask_tensor(&[present], &plain);
            let out = model_plain.forward(&batch, &mask).output;
            let parts = channel_losses(out, targets.clone());
            let mut tot = 0.0;
            for (c, p) in parts.into_iter().enumerate() {
                let v = vals(p)[0] as f64;
                drop[row][c] += v;
                tot += v;
            }
            drop[row][3] += tot;
        }
        let ones = Tensor::<2>::ones([1, n], &plain);
        let features = model_plain.encode_all(&batch, &ones);
        cached.push((features.clone(), targets.clone()));
        for (w0, acc) in [
            (iwv_final.clone(), &mut grad_final),
            (vec![0.25f32; 4], &mut grad_uniform),
        ] {
            for c in 0..4 {
                let w = Tensor::<1>::from_data(TensorData::new(w0.clone(), [n]), &device)
                    .require_grad();
                let parts = channel_losses(
                    weighted_decode(&frozen, &features, &w),
                    targets.clone().autodiff(),
                );
                let loss = if c < 3 {
                    parts[c].clone()
                } else {
                    parts.into_iter().reduce(|a, b| a + b).expect("3")
                };
                let grads = loss.backward();
                let g = vals(w.grad(&grads).expect("grad"));
                for m in 0..n {
                    acc[c][m] += g[m] as f64;
                }
            }
        }
    }
    // The meta objective's own optimum for this trained network: full-batch Adam on the raw
    // weights (softmax), from uniform.
    let total_grad = |w0: &[f32]| -> Vec<f64> {
        let mut acc = vec![0.0f64; n];
        for (features, targets) in &cached {
            let w =
                Tensor::<1>::from_data(TensorData::new(w0.to_vec(), [n]), &device).require_grad();
            let loss = channel_losses(
                weighted_decode(&frozen, features, &w),
                targets.clone().autodiff(),
            )
            .into_iter()
            .reduce(|a, b| a + b)
            .expect("3");
            let grads = loss.backward();
            for (a, g) in acc.iter_mut().zip(vals(w.grad(&grads).expect("grad"))) {
                *a += g as f64 / cached.len() as f64;
            }
        }
        acc
    };
    let steps: usize = std::env::var("PROBE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let mut raw = [0.0f64; 4];
    let (mut m1, mut m2) = ([0.0f64; 4], [0.0f64; 4]);
    let softmax = |r: &[f64; 4]| -> Vec<f32> {
        let mx = r.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = r.iter().map(|v| (v - mx).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| (v / s) as f32).collect()
    };
    for t in 1..=steps {
        let w = softmax(&raw);
        let g = total_grad(&w);
        let mean: f64 = (0..n).map(|i| w[i] as f64 * g[i]).sum();
        for j in 0..n {
            let gr = w[j] as f64 * (g[j] - mean);
            m1[j] = 0.9 * m1[j] + 0.1 * gr;
            m2[j] = 0.999 * m2[j] + 0.001 * gr * gr;
            let mh = m1[j] / (1.0 - 0.9f64.powi(t as i32));
            let vh = m2[j] / (1.0 - 0.999f64.powi(t as i32));
            raw[j] -= 0.05 * mh / (vh.sqrt() + 1e-8);
        }
        if t % 25 == 0 || t == steps {
            println!(
                "optimum search step {t}: IWV {:?}",
                softmax(&raw)
                    .iter()
                    .map(|v| format!("{v:.3}"))
                    .collect::<Vec<_>>()
            );
        }
    }
    let k = n_cases as f64;
    println!("== {} ({} cases: meta-val + test)", run.display(), n_cases);
    println!(
        "final IWV {:?}",
        iwv_final
            .iter()
            .map(|v| format!("{v:.3}"))
            .collect::<Vec<_>>()
    );
    println!("loss (ET, TC, WT, total), all present and with one modality missing:");
    for (row, name) in std::iter::once("all").chain(MODALITIES).enumerate() {
        let r = drop[row].map(|v| v / k);
        let d = if row > 0 {
            format!("  rise {:+.4}", r[3] - drop[0][3] / k)
        } else {
            String::new()
        };
        println!(
            "  {name:>6}: {:.4} {:.4} {:.4} {:.4}{d}",
            r[0], r[1], r[2], r[3]
        );
    }
    for (label, g) in [("final IWV", &grad_final), ("uniform", &grad_uniform)] {
        println!("−dL/dw (normalised weights) at the {label}: columns {MODALITIES:?}");
        for (c, part) in ["ET", "TC", "WT", "total"].iter().enumerate() {
            let r = g[c].map(|v| -v / k);
            println!(
                "  {part:>5}: {:+.2e} {:+.2e} {:+.2e} {:+.2e}",
                r[0], r[1], r[2], r[3]
            );
        }
    }
}
