//! Plots of BraTS runs and evaluations: IWV and losses over iterations (paper Fig. 4), the T1c
//! feature gap (Fig. 5), and segmentation overlays of one slice (Fig. 6), with their data as CSV.

use std::path::{Path, PathBuf};

use mckd_train::run::RunDir;
use mckd_train::train::{LogColumns, LogRow};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Result;
use crate::train::FeatureGap;

/// One slice of a test case for the overlay figure (paper Fig. 6).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceData {
    /// Case id.
    pub case: String,
    /// Axial slice index k.
    pub k: usize,
    /// Slice size (i, j): arrays are row-major `[dj, di]` (i fastest).
    pub size: [usize; 2],
    /// Present modalities of the predictions.
    pub subset: Vec<String>,
    /// Normalised input slices by modality name.
    pub inputs: Map<String, Value>,
    /// Ground-truth labels.
    pub ground_truth: Vec<u8>,
    /// Predicted labels by method name.
    pub predictions: Map<String, Value>,
}

/// Data for the plots of a run or an evaluation.
#[derive(Debug, Default)]
pub struct PlotData<'a> {
    /// Training log rows and their columns (IWV over iterations, Fig. 4a; losses, Fig. 4c).
    pub log: Option<(&'a [LogRow], &'a LogColumns)>,
    /// T1c feature gap over iterations (Fig. 5).
    pub feature_gap: Option<&'a [FeatureGap]>,
    /// One slice of input / ground truth / predictions (Fig. 6).
    pub slice: Option<&'a SliceData>,
}

/// Writes the data the PNG plots need into `run` and returns the files written:
/// - `plot_iwv.csv`: `iteration,iwv_flair,iwv_t1,iwv_t1c,iwv_t2` (normalised IWV);
/// - `plot_loss.csv`: `iteration,task_loss,ckd_loss,meta_loss` (meta empty when no step);
/// - `plot_feature_gap.csv`: `iteration,l1,cosine` (generated vs real T1c bottleneck feature
///   on fixed meta-validation crops);
/// - `plot_slice.json`: [`SliceData`] (arrays row-major `[dj, di]`).
pub fn write_plots(run: &RunDir, data: &PlotData) -> Result<Vec<PathBuf>> {
    let mut written = vec![];
    if let Some((rows, columns)) = data.log {
        let names: Vec<&str> = columns
            .state
            .iter()
            .map(|n| n.strip_prefix("iwv_").unwrap_or(n))
            .collect();
        let mut iwv = String::from("iteration");
        for n in &columns.state {
            iwv.push_str(&format!(",{n}"));
        }
        iwv.push('\n');
        let mut loss = String::from("iteration");
        for t in &columns.terms {
            loss.push_str(&format!(",{t}"));
        }
        loss.push_str(",meta_loss\n");
        for r in rows {
            iwv.push_str(&r.iteration.to_string());
            for w in &r.state {
                iwv.push_str(&format!(",{w}"));
            }
            iwv.push('\n');
            loss.push_str(&r.iteration.to_string());
            for t in &r.terms {
                loss.push_str(&format!(",{t}"));
            }
            loss.push_str(&format!(
                ",{}\n",
                r.meta_loss.map(|v| v.to_string()).unwrap_or_default()
            ));
        }
        written.push(run.write("plot_iwv.csv", iwv.as_bytes())?);
        written.push(run.write("plot_loss.csv", loss.as_bytes())?);
        let mut chart = mckd_plot::LineChart::new(
            "Importance weights during training",
            "iteration",
            "normalised weight",
        )
        .y_range(0.0, 1.0);
        for (m, n) in names.iter().enumerate() {
            chart = chart.series(
                *n,
                rows.iter()
                    .map(|r| (r.iteration as f64, f64::from(r.state[m]))),
            );
        }
        written.push(save_png(run, "iwv.png", |p| chart.save_png(p))?);
        let mut losses = mckd_plot::LineChart::new("Training losses", "iteration", "loss");
        for (t, name) in columns.terms.iter().enumerate() {
            losses = losses.series(
                name.replace('_', " "),
                rows.iter()
                    .map(|r| (r.iteration as f64, f64::from(r.terms[t]))),
            );
        }
        let losses = losses.series(
            "meta loss",
            rows.iter()
                .filter_map(|r| r.meta_loss.map(|m| (r.iteration as f64, f64::from(m)))),
        );
        written.push(save_png(run, "loss.png", |p| losses.save_png(p))?);
    }
    if let Some(gaps) = data.feature_gap {
        let mut s = String::from("iteration,l1,cosine\n");
        for g in gaps {
            s.push_str(&format!("{},{},{}\n", g.iteration, g.l1, g.cosine));
        }
        written.push(run.write("plot_feature_gap.csv", s.as_bytes())?);
        let chart = mckd_plot::LineChart::new(
            "Generated vs real T1c bottleneck feature (meta-validation crops)",
            "iteration",
            "value",
        )
        .series(
            "L1 distance",
            gaps.iter().map(|g| (g.iteration as f64, f64::from(g.l1))),
        )
        .series(
            "cosine similarity",
            gaps.iter()
                .map(|g| (g.iteration as f64, f64::from(g.cosine))),
        );
        written.push(save_png(run, "feature_gap.png", |p| chart.save_png(p))?);
    }
    if let Some(slice) = data.slice {
        written.push(run.write_json("plot_slice.json", slice)?);
        let floats = |v: &Value| -> Vec<f32> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
                        .collect()
                })
                .unwrap_or_default()
        };
        let labels = |v: &Value| -> Vec<u8> {
            v.as_array()
                .map(|a| a.iter().map(|x| x.as_u64().unwrap_or(0) as u8).collect())
                .unwrap_or_default()
        };
        let [w, h] = slice.size;
        let (input_name, input) = slice
            .inputs
            .iter()
            .next()
            .map(|(n, v)| (n.clone(), floats(v)))
            .unwrap_or_default();
        let preds: Vec<(String, Vec<u8>)> = slice
            .predictions
            .iter()
            .map(|(n, v)| (n.clone(), labels(v)))
            .collect();
        if input.len() == w * h {
            let mut panels = vec![
                mckd_plot::Panel::new(format!("{input_name} (k = {})", slice.k), &input, w, h),
                mckd_plot::Panel::new("ground truth", &input, w, h)
                    .with_labels(&slice.ground_truth),
            ];
            for (name, p) in &preds {
                panels.push(
                    mckd_plot::Panel::new(
                        format!("{name} ({})", slice.subset.join("+")),
                        &input,
                        w,
                        h,
                    )
                    .with_labels(p),
                );
            }
            // About 256 pixels per panel whatever the slice size.
            let scale = (256 / w.max(1)).clamp(1, 8) as u32;
            written.push(save_png(run, "overlay.png", |p| {
                mckd_plot::overlay_png(p, &panels, scale)
            })?);
        }
    }
    Ok(written)
}

/// Writes one PNG into the run folder, mapping the plot error to [`BratsError::Plot`].
fn save_png(
    run: &RunDir,
    name: &str,
    draw: impl FnOnce(&Path) -> std::result::Result<(), mckd_plot::PlotError>,
) -> Result<PathBuf> {
    let path = run.file(name);
    draw(&path)?;
    Ok(path)
}
