//! Renders example charts into `/tmp/mckd-plot-examples/` (or the folder given as the first
//! argument): `cargo run --release -p mckd-plot --example gallery`.

use std::path::PathBuf;

use mckd_plot::{BarChart, LineChart, Panel, PlotError, overlay_png};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or("/tmp/mckd-plot-examples".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let epochs = |n: usize| (0..n).map(|e| e as f64);

    // Losses: a validation curve with a missing (NaN) stretch.
    LineChart::new("Training loss (AV-MNIST)", "epoch", "cross-entropy")
        .series(
            "train",
            epochs(100).map(|e| (e, 2.3 * (-e / 18.0).exp() + 0.08 + 0.02 * (e * 1.7).sin())),
        )
        .series(
            "meta-val",
            epochs(100).map(|e| {
                (
                    e,
                    if (40.0..48.0).contains(&e) {
                        f64::NAN
                    } else {
                        2.2 * (-e / 22.0).exp() + 0.2
                    },
                )
            }),
        )
        .save_png(dir.join("losses.png"))?;

    // Importance weights of four modalities (sum to 1 each epoch).
    let w = |e: f64, k: usize| {
        let raw = [
            1.0 + 0.8 * (e / 30.0).tanh(),
            1.0,
            1.0 - 0.5 * (e / 40.0).tanh(),
            0.7 + 0.01 * e,
        ];
        raw[k] / raw.iter().sum::<f64>()
    };
    let mut chart =
        LineChart::new("Modality importance weights", "epoch", "weight").y_range(0.0, 0.5);
    for (k, name) in ["FLAIR", "T1", "T1c", "T2"].into_iter().enumerate() {
        chart = chart.series(name, epochs(60).map(|e| (e, w(e, k))));
    }
    chart.save_png(dir.join("importance_weights.png"))?;

    // Accuracy per modality subset, two methods.
    BarChart::new(
        "AV-MNIST accuracy by available modalities",
        "accuracy",
        ["audio", "image", "audio+image"],
    )
    .series("MCKD", [0.412, 0.658, 0.721])
    .series("Baseline", [0.331, 0.641, 0.716])
    .y_range(0.0, 1.0)
    .save_png(dir.join("bar_avmnist.png"))?;

    // All 15 BraTS modality subsets: labels must wrap or rotate.
    let names = ["FLAIR", "T1", "T1c", "T2"];
    let subsets: Vec<String> = (1u32..16)
        .map(|m| {
            (0..4)
                .filter(|i| m >> i & 1 == 1)
                .map(|i| names[i])
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    let dice =
        |m: u32, b: f64| b + 0.05 * m.count_ones() as f64 + if m & 4 != 0 { 0.12 } else { 0.0 };
    BarChart::new(
        "BraTS whole-tumour Dice by available modalities",
        "Dice",
        subsets.clone(),
    )
    .series("MCKD", (1u32..16).map(|m| dice(m, 0.62)))
    .series("Baseline", (1u32..16).map(|m| dice(m, 0.55)))
    .series("Teacher (all modalities)", (1u32..16).map(|_| 0.91))
    .y_range(0.0, 1.0)
    .size(1200, 600)
    .save_png(dir.join("bar_brats_subsets.png"))?;
    BarChart::new("Few wide groups", "Dice", subsets[..6].to_vec())
        .series("MCKD", (1u32..7).map(|m| dice(m, 0.62)))
        .series("Baseline", (1u32..7).map(|m| dice(m, -0.3)))
        .save_png(dir.join("bar_wrapped_negative.png"))?;

    // Edge cases.
    LineChart::new("Empty series", "x", "y")
        .series("nothing", [])
        .save_png(dir.join("edge_empty.png"))?;
    LineChart::new("Single point and constant", "x", "y")
        .series("single", [(3.0, 7.3)])
        .series("constant", (0..10).map(|i| (i as f64, 7.0)))
        .save_png(dir.join("edge_single_constant.png"))?;
    LineChart::new("Tiny magnitudes: learning rate", "iteration", "lr")
        .series(
            "cosine",
            (0..200).map(|i| {
                (
                    i as f64 * 500.0,
                    3e-5 * (1.0 + (i as f64 / 199.0 * std::f64::consts::PI).cos()) / 2.0,
                )
            }),
        )
        .save_png(dir.join("edge_tiny.png"))?;
    LineChart::new("Huge magnitudes", "samples", "FLOPs")
        .series(
            "cumulative",
            (0..50).map(|i| (i as f64 * 2e6, i as f64 * i as f64 * 7.3e9)),
        )
        .save_png(dir.join("edge_huge.png"))?;
    let ascii: String = (32u8..127).map(char::from).collect();
    let mut font = LineChart::new(
        "Font sheet: ASCII 32..126 @ x2, title @ x3",
        "x label",
        "y label",
    )
    .size(900, 420);
    for (i, chunk) in ascii.as_bytes().chunks(32).enumerate() {
        font = font.series(
            String::from_utf8_lossy(chunk),
            [(0.0, i as f64), (1.0, i as f64 + 0.5)],
        );
    }
    font.series(
        "gjpqy, (descenders); 0.001 1e-3 -2.5e7",
        [(0.0, 3.0), (1.0, 3.5)],
    )
    .save_png(dir.join("font_sheet.png"))?;

    brats_overlay(&dir)?;
    println!("wrote examples to {}", dir.display());
    Ok(())
}

/// A synthetic head slice with a tumour: four modalities, ground truth and a prediction.
fn brats_overlay(dir: &std::path::Path) -> Result<(), PlotError> {
    let n = 96usize;
    let (mut mods, mut gt, mut pred) = (
        vec![vec![0f32; n * n]; 4],
        vec![0u8; n * n],
        vec![0u8; n * n],
    );
    for y in 0..n {
        for x in 0..n {
            let (u, v) = ((x as f32 - 48.0) / 40.0, (y as f32 - 48.0) / 44.0);
            let head = u * u + v * v < 1.0;
            let d = ((x as f32 - 60.0).powi(2) + (y as f32 - 40.0).powi(2)).sqrt();
            let k = y * n + x;
            let label = if !head {
                0
            } else if d < 5.0 {
                1
            } else if d < 9.0 {
                4
            } else if d < 16.0 {
                2
            } else {
                0
            };
            gt[k] = label;
            let dp = ((x as f32 - 61.0).powi(2) + (y as f32 - 41.0).powi(2)).sqrt();
            pred[k] = if !head {
                0
            } else if dp < 4.0 {
                1
            } else if dp < 10.0 {
                4
            } else if dp < 15.0 {
                2
            } else {
                0
            };
            let tissue = if head {
                0.5 + 0.15 * ((x as f32 / 6.0).sin() * (y as f32 / 7.0).cos())
            } else {
                0.0
            };
            let boost = [
                [0.2, 0.5, 0.3],
                [-0.1, -0.2, 0.0],
                [0.1, 0.6, 0.1],
                [0.3, 0.4, 0.5],
            ];
            for (m, img) in mods.iter_mut().enumerate() {
                let b = match label {
                    1 => boost[m][0],
                    4 => boost[m][1],
                    2 => boost[m][2],
                    _ => 0.0,
                };
                img[k] = if head {
                    tissue + b + 0.05 * m as f32
                } else {
                    f32::NAN
                };
            }
        }
    }
    let panels = [
        Panel::new("FLAIR", &mods[0], n, n),
        Panel::new("T1", &mods[1], n, n),
        Panel::new("T1c", &mods[2], n, n),
        Panel::new("T2", &mods[3], n, n),
        Panel::new("ground truth", &mods[2], n, n).with_labels(&gt),
        Panel::new("MCKD prediction (T1c missing)", &mods[0], n, n).with_labels(&pred),
    ];
    overlay_png(dir.join("overlay_brats.png"), &panels, 2)
}
