//! Tables and `results.json` of the demo (several seeds: mean ± std and a paired t-test).

use mckd_core::present_names;
use mckd_train::report::{PerSeed, Results, Row, iwv_map, markdown_table, subset_label};
use mckd_train::stats::{mean_std, paired_t_test_greater};
use serde_json::{Map, Value};

use crate::demo::{MODALITIES, MethodResult};

/// Results of MCKD and the Baseline for one seed.
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// MCKD.
    pub mckd: MethodResult,
    /// Baseline (α = 0).
    pub baseline: MethodResult,
}

/// Per-seed accuracies of one method on subset `s`.
fn accs(seeds: &[SeedResult], mckd: bool, s: usize) -> Vec<f64> {
    seeds
        .iter()
        .map(|r| if mckd { &r.mckd } else { &r.baseline }.accuracy[s].1)
        .collect()
}

/// Mean normalised IWV of MCKD over seeds.
pub fn mean_iwv(seeds: &[SeedResult]) -> Vec<f32> {
    (0..MODALITIES.len())
        .map(|m| seeds.iter().map(|r| r.mckd.iwv[m]).sum::<f32>() / seeds.len() as f32)
        .collect()
}

/// `results.json` of a demo run: one row per method and subset, accuracy = mean over seeds,
/// per-seed values and the t-test p-value in `per_seed`.
pub fn results(seeds: &[SeedResult], extra: Map<String, Value>) -> Results {
    let mut rows = Vec::new();
    let subsets = seeds[0].mckd.accuracy.len();
    for (method, is_mckd) in [("mckd", true), ("baseline", false)] {
        for s in 0..subsets {
            let v = accs(seeds, is_mckd, s);
            let (mean, std) = mean_std(&v);
            let mut row = Row::new(
                method,
                present_names(&MODALITIES, &seeds[0].mckd.accuracy[s].0),
                "accuracy",
                mean,
            );
            row.metrics.set("accuracy_std", std);
            row.per_seed = Some(PerSeed {
                seed: seeds.iter().map(|r| r.seed).collect(),
                values: [(
                    "accuracy".to_string(),
                    v.into_iter().map(|a| (!a.is_nan()).then_some(a)).collect(),
                )]
                .into(),
            });
            rows.push(row);
        }
    }
    let modality_names: Vec<String> = MODALITIES.iter().map(|s| s.to_string()).collect();
    Results {
        task: "demo".into(),
        rows,
        iwv: iwv_map(&modality_names, &mean_iwv(seeds)),
        extra,
    }
}

/// The accuracy table (percent, mean ± std over seeds) over every subset, MCKD vs Baseline,
/// with Δ, the one-tailed paired t-test across seeds, and the averages over all subsets and over
/// the subsets that lack `strong`.
pub fn table(seeds: &[SeedResult]) -> String {
    let header: Vec<String> = ["subset", "MCKD", "Baseline", "Δ", "p (MCKD > Baseline)"]
        .map(String::from)
        .to_vec();
    let pm = |v: &[f64]| {
        let (m, s) = mean_std(v);
        format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * s)
    };
    let row = |label: String, m: &[f64], b: &[f64]| {
        let delta = mean_std(m).0 - mean_std(b).0;
        let p = paired_t_test_greater(m, b).map_or("–".to_string(), |(_, p)| format!("{p:.3}"));
        vec![label, pm(m), pm(b), format!("{:+.2}", 100.0 * delta), p]
    };
    let subsets = &seeds[0].mckd.accuracy;
    let mut rows = Vec::new();
    for (s, (mask, _)) in subsets.iter().enumerate() {
        rows.push(row(
            subset_label(&present_names(&MODALITIES, mask)),
            &accs(seeds, true, s),
            &accs(seeds, false, s),
        ));
    }
    let average = |mckd: bool, keep: &dyn Fn(&[bool]) -> bool| -> Vec<f64> {
        seeds
            .iter()
            .map(|r| {
                let acc = &if mckd { &r.mckd } else { &r.baseline }.accuracy;
                let v: Vec<f64> = acc
                    .iter()
                    .filter(|(m, _)| keep(m))
                    .map(|(_, a)| *a)
                    .collect();
                v.iter().sum::<f64>() / v.len() as f64
            })
            .collect()
    };
    let all = |_: &[bool]| true;
    let without = |m: &[bool]| !m[0];
    rows.push(row(
        "**average, all subsets**".into(),
        &average(true, &all),
        &average(false, &all),
    ));
    rows.push(row(
        "**average, without strong**".into(),
        &average(true, &without),
        &average(false, &without),
    ));
    markdown_table(&header, &rows)
}

/// Mean accuracy over the subsets that lack modality 0 (`strong`).
pub fn mean_without_strong(r: &MethodResult) -> f64 {
    let v: Vec<f64> = r
        .accuracy
        .iter()
        .filter(|(m, _)| !m[0])
        .map(|(_, a)| *a)
        .collect();
    v.iter().sum::<f64>() / v.len() as f64
}

/// Writes `iwv.png` (normalised IWV over iterations, paper Fig. 4) and `loss.png` (task and
/// CKD loss of MCKD and the Baseline's task loss, smoothed per epoch) for the first seed.
pub fn plots(
    run: &mckd_train::run::RunDir,
    first: &SeedResult,
) -> Result<(), mckd_plot::PlotError> {
    let log = &first.mckd.log;
    let mut chart = mckd_plot::LineChart::new(
        format!("Importance weights during training (seed {})", first.seed),
        "iteration",
        "normalised weight",
    )
    .y_range(0.0, 1.0);
    for (m, name) in MODALITIES.iter().enumerate() {
        chart = chart.series(
            *name,
            log.iter()
                .map(|r| (r.iteration as f64, f64::from(r.state[m]))),
        );
    }
    chart.save_png(run.file("iwv.png"))?;

    let per_epoch = |rows: &[mckd_train::train::LogRow],
                     f: &dyn Fn(&mckd_train::train::LogRow) -> f32| {
        let epochs = rows.last().map_or(0, |r| r.epoch + 1);
        (0..epochs)
            .map(|e| {
                let v: Vec<f64> = rows
                    .iter()
                    .filter(|r| r.epoch == e)
                    .map(|r| f64::from(f(r)))
                    .collect();
                (
                    (e + 1) as f64,
                    v.iter().sum::<f64>() / v.len().max(1) as f64,
                )
            })
            .collect::<Vec<_>>()
    };
    mckd_plot::LineChart::new(
        format!("Training losses, mean per epoch (seed {})", first.seed),
        "epoch",
        "loss",
    )
    .series("MCKD task loss", per_epoch(log, &|r| r.terms[0]))
    .series("MCKD CKD loss", per_epoch(log, &|r| r.terms[1]))
    .series(
        "Baseline task loss",
        per_epoch(&first.baseline.log, &|r| r.terms[0]),
    )
    .save_png(run.file("loss.png"))
}
