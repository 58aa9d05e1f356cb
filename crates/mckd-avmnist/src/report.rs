//! Reports of a reproduction: `results.json`, `table2.md` / `table2.csv`, the IWV series.

use std::collections::BTreeMap;

use mckd_core::present_names;
use mckd_train::report::{PerSeed, Results, Row, csv_table, iwv_map, json_f64, markdown_table};
use mckd_train::run::RunDir;
use mckd_train::stats::{mean_std, paired_t_test_greater};
use serde_json::{Map, Value, json};

use crate::config::{
    AvRunConfig, DataSplit, EvalSet, MethodKind as Method, Missing, PAPER_LOWERB_AUDIO,
    PAPER_LOWERB_IMAGE, PAPER_UPPERB, Setting,
};
use crate::model::MODALITY_NAMES;
use crate::run::{Result, RunOutcome};

/// Outcomes of one (method, setting), ordered by seed.
fn group(outcomes: &[RunOutcome], method: Method, setting: Option<Setting>) -> Vec<&RunOutcome> {
    let mut v: Vec<&RunOutcome> = outcomes
        .iter()
        .filter(|o| o.spec.method == method && o.spec.setting == setting)
        .collect();
    v.sort_by_key(|o| o.spec.seed);
    v
}

/// The paired one-tailed t-test MCKD > Baseline of a row over the seeds both ran:
/// `(mean difference, t, p, pairs)`.
pub fn row_t_test(outcomes: &[RunOutcome], setting: Setting) -> Option<(f64, f64, f64, usize)> {
    let m = group(outcomes, Method::Mckd, Some(setting));
    let b = group(outcomes, Method::Baseline, Some(setting));
    let (mut a, mut c) = (vec![], vec![]);
    for o in &m {
        if let Some(x) = b.iter().find(|x| x.spec.seed == o.spec.seed) {
            a.push(o.accuracy);
            c.push(x.accuracy);
        }
    }
    let diff = mean_std(&a).0 - mean_std(&c).0;
    paired_t_test_greater(&a, &c).map(|(t, p)| (diff, t, p, a.len()))
}

/// `results.json` of a set of runs (schema of `mckd_train::report::Results`, task `avmnist`).
///
/// One row per (method, setting, evaluated subset) with the mean accuracy over seeds in
/// `metrics.accuracy` (fraction), `metrics.accuracy_std`, and the per-seed values in
/// `per_seed.accuracy` (seed order in `per_seed.seed`). `iwv` is the mean final IWV over all
/// `mckd` runs; `iwv_final` (per setting and seed), `t_tests`, `paper` and `config` are extra.
pub fn results(
    outcomes: &[RunOutcome],
    settings: &[Setting],
    cfg: &AvRunConfig,
    wall_seconds: f64,
) -> Results {
    let mut rows = Vec::new();
    let mut keys: Vec<(Method, Option<Setting>)> = Vec::new();
    for m in [Method::LowerbImage, Method::LowerbAudio, Method::Upperb] {
        keys.push((m, None));
    }
    for &s in settings {
        keys.push((Method::Baseline, Some(s)));
        keys.push((Method::Mckd, Some(s)));
    }
    for (method, setting) in keys {
        let g = group(outcomes, method, setting);
        if g.is_empty() {
            continue;
        }
        for (k, sub) in g[0].subsets.iter().enumerate() {
            let mask = &sub.mask;
            let accs: Vec<f64> = g.iter().map(|o| o.subsets[k].accuracy).collect();
            if accs.iter().all(|a| a.is_nan()) {
                continue;
            }
            let (mean, std) = mean_std(&accs);
            let mut row = Row::new(
                method.name(),
                present_names(&MODALITY_NAMES, mask),
                "accuracy",
                mean,
            );
            row.metrics.set("accuracy_std", std);
            row.headline = Some(mask.as_slice() == g[0].spec.target_mask());
            row.setting = setting.map(|s| s.to_string());
            row.per_seed = Some(PerSeed {
                seed: g.iter().map(|o| o.spec.seed).collect(),
                values: [(
                    "accuracy".to_string(),
                    accs.iter().map(|&a| (!a.is_nan()).then_some(a)).collect(),
                )]
                .into(),
            });
            rows.push(row);
        }
    }
    let mckd: Vec<&RunOutcome> = outcomes
        .iter()
        .filter(|o| o.spec.method == Method::Mckd)
        .collect();
    let mean_iwv: Vec<f32> = (0..2)
        .map(|i| {
            let v: Vec<f64> = mckd.iter().map(|o| f64::from(o.iwv[i])).collect();
            mean_std(&v).0 as f32
        })
        .collect();
    let names_all: Vec<String> = MODALITY_NAMES.iter().map(|s| s.to_string()).collect();
    let mut extra = Map::new();
    let mut iwv_final = Map::new();
    let mut tests = Map::new();
    let mut paper = Map::new();
    for &s in settings {
        let per: Map<String, Value> = group(outcomes, Method::Mckd, Some(s))
            .iter()
            .map(|o| {
                (
                    o.spec.seed.to_string(),
                    Value::Object(iwv_map(&names_all, &o.iwv)),
                )
            })
            .collect();
        iwv_final.insert(s.to_string(), Value::Object(per));
        if let Some((diff, t, p, n)) = row_t_test(outcomes, s) {
            tests.insert(
                s.to_string(),
                json!({"mean_difference": json_f64(diff), "t": json_f64(t), "p": json_f64(p), "pairs": n}),
            );
        }
        paper.insert(format!("mckd_{s}"), json_f64(s.paper_mckd() / 100.0));
    }
    paper.insert("upperb".into(), json_f64(PAPER_UPPERB / 100.0));
    paper.insert("lowerb_image".into(), json_f64(PAPER_LOWERB_IMAGE / 100.0));
    paper.insert("lowerb_audio".into(), json_f64(PAPER_LOWERB_AUDIO / 100.0));
    extra.insert("iwv_final".into(), Value::Object(iwv_final));
    extra.insert("t_tests".into(), Value::Object(tests));
    extra.insert("paper".into(), Value::Object(paper));
    extra.insert("evaluation".into(), Value::String(evaluation(cfg).into()));
    extra.insert(
        "percent_mapping".into(),
        Value::String(cfg.task.mapping.describe()),
    );
    extra.insert(
        "config".into(),
        serde_json::to_value(cfg).unwrap_or(Value::Null),
    );
    extra.insert("wall_seconds".into(), json_f64(wall_seconds));
    extra.insert(
        "run_seconds".into(),
        json_f64(outcomes.iter().map(|o| o.seconds).sum()),
    );
    Results {
        task: "avmnist".into(),
        rows,
        iwv: iwv_map(&names_all, &mean_iwv),
        extra,
    }
}

/// What the runs were evaluated on.
fn evaluation(cfg: &AvRunConfig) -> &'static str {
    match cfg.task.evaluate_on {
        EvalSet::Test => "test (the 450 test samples)",
        EvalSet::Validation => "VALIDATION (the 150 meta-validation samples), not test",
    }
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{:.2}", 100.0 * v)
    }
}

fn cell(g: &[&RunOutcome]) -> (f64, f64, String) {
    let accs: Vec<f64> = g.iter().map(|o| o.accuracy).collect();
    let (m, s) = mean_std(&accs);
    let text = if g.is_empty() {
        "–".into()
    } else if g.len() == 1 {
        pct(m)
    } else {
        format!("{} ± {}", pct(m), pct(s))
    };
    (m, s, text)
}

/// `(markdown, csv)` of Table 2: per row the LowerB of the evaluated modality, UpperB,
/// Baseline and MCKD (mean ± std over seeds, %) beside the paper, the MCKD − Baseline
/// difference, the one-tailed paired t-test p-value, and the final IWV of `image`.
pub fn table2(
    outcomes: &[RunOutcome],
    settings: &[Setting],
    cfg: &AvRunConfig,
) -> (String, String) {
    let seeds = {
        let mut s: Vec<u64> = outcomes.iter().map(|o| o.spec.seed).collect();
        s.sort_unstable();
        s.dedup();
        s.len()
    };
    let upper = cell(&group(outcomes, Method::Upperb, None));
    let low_img = cell(&group(outcomes, Method::LowerbImage, None));
    let low_aud = cell(&group(outcomes, Method::LowerbAudio, None));
    let header: Vec<String> = [
        "Setting",
        "pairs/digit",
        "LowerB",
        "LowerB (paper)",
        "UpperB",
        "UpperB (paper)",
        "Baseline",
        "MCKD",
        "MCKD (paper)",
        "MCKD − Baseline",
        "p (paired, one-tailed)",
        "IWV image (MCKD)",
        "seeds IWV image largest",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let csv_header: Vec<String> = [
        "setting",
        "pairs_per_digit",
        "lowerb_mean",
        "lowerb_std",
        "lowerb_paper",
        "upperb_mean",
        "upperb_std",
        "upperb_paper",
        "baseline_mean",
        "baseline_std",
        "mckd_mean",
        "mckd_std",
        "mckd_paper",
        "mckd_minus_baseline",
        "t",
        "p_value",
        "iwv_image_mean",
        "seeds_iwv_image_largest",
        "seeds",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut md_rows = Vec::new();
    let mut csv_rows = Vec::new();
    for &s in settings {
        let (low, low_paper) = match s.missing {
            Missing::Audio => (&low_img, PAPER_LOWERB_IMAGE),
            Missing::Visual => (&low_aud, PAPER_LOWERB_AUDIO),
        };
        let mckd_g = group(outcomes, Method::Mckd, Some(s));
        let base = cell(&group(outcomes, Method::Baseline, Some(s)));
        let mckd = cell(&mckd_g);
        let t = row_t_test(outcomes, s);
        let iwv: Vec<f64> = mckd_g.iter().map(|o| f64::from(o.iwv[0])).collect();
        let img_largest = mckd_g.iter().filter(|o| o.iwv[0] > o.iwv[1]).count();
        let iwv_mean = mean_std(&iwv).0;
        let fmt_opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("–".into(), f);
        md_rows.push(vec![
            s.to_string(),
            cfg.task.mapping.per_digit(s.percent).to_string(),
            low.2.clone(),
            format!("{low_paper:.2}"),
            upper.2.clone(),
            format!("{PAPER_UPPERB:.2}"),
            base.2.clone(),
            mckd.2.clone(),
            format!("{:.2}", s.paper_mckd()),
            if mckd.0.is_nan() || base.0.is_nan() {
                "–".into()
            } else {
                format!("{:+.2}", 100.0 * (mckd.0 - base.0))
            },
            fmt_opt(t.map(|x| x.2), &|p| format!("{p:.3}")),
            if iwv.is_empty() {
                "–".into()
            } else {
                format!("{iwv_mean:.3}")
            },
            format!("{img_largest}/{}", mckd_g.len()),
        ]);
        let f = |v: f64| {
            if v.is_nan() {
                String::new()
            } else {
                format!("{:.4}", 100.0 * v)
            }
        };
        csv_rows.push(vec![
            s.to_string(),
            cfg.task.mapping.per_digit(s.percent).to_string(),
            f(low.0),
            f(low.1),
            format!("{low_paper}"),
            f(upper.0),
            f(upper.1),
            format!("{PAPER_UPPERB}"),
            f(base.0),
            f(base.1),
            f(mckd.0),
            f(mckd.1),
            format!("{}", s.paper_mckd()),
            f(mckd.0 - base.0),
            t.map_or(String::new(), |x| format!("{:.4}", x.1)),
            t.map_or(String::new(), |x| format!("{:.5}", x.2)),
            if iwv.is_empty() {
                String::new()
            } else {
                format!("{iwv_mean:.4}")
            },
            img_largest.to_string(),
            mckd_g.len().to_string(),
        ]);
    }
    let m = cfg.method.mckd();
    let split = match cfg.task.split {
        DataSplit::Paper => {
            "split 900 / 150 / 450 (train / meta-validation with both modalities / test); the \
             row's pairs are drawn from the 900"
        }
        DataSplit::Smil => {
            "SMIL's 1,050-sample training pool; meta steps on the row's paired training samples"
        }
    };
    let (every, steps, stage2) = (
        cfg.loop_.meta.interval,
        cfg.loop_.meta.steps,
        cfg.loop_.meta.interval_stage2,
    );
    let stages = if cfg.loop_.full_fraction > 0.0 {
        format!(
            "two stages: the first {:.1} % of iterations with every available modality, then \
             random dropping",
            100.0 * cfg.loop_.full_fraction
        )
    } else {
        "one stage of random dropping".into()
    };
    let md = format!(
        "## Table 2 — AV-MNIST accuracy (%)\n\n\
         Mean ± std over {seeds} seed(s), accuracy at the last iteration ({:?}); evaluated on \
         {}; {split}. {}. LowerB = same network with the other modality always missing, \
         trained on every training sample of the evaluated modality (the paper's image LowerB \
         was tested on all 10,000 MNIST test images with a smaller network). Baseline = \
         non-dedicated training with α = 0; MCKD: α = {}, {:?} distance ({:?} over the batch), \
         {:?} IWV, {stages}; meta phases every {every} iterations ({stage2} in stage 2) of \
         {steps} IWV step(s). p: one-tailed paired t-test MCKD > Baseline across seeds.\n\n{}\n\n\
         ### Every subset (mean over seeds, %)\n\n{}",
        cfg.loop_.budget,
        evaluation(cfg),
        cfg.task.mapping.describe(),
        m.alpha,
        m.distance,
        m.reduction,
        m.normalisation,
        markdown_table(&header, &md_rows),
        subsets_table(outcomes, settings)
    );
    (md, csv_table(&csv_header, &csv_rows))
}

/// Every subset's accuracy (image, audio, both) of the Baseline and MCKD per row: a distilled
/// modality must not lose its own path (DESIGN §1, expected behaviour).
fn subsets_table(outcomes: &[RunOutcome], settings: &[Setting]) -> String {
    let masks = mckd_core::all_subsets(2);
    let mut header = vec!["Setting".to_string()];
    for m in [Method::Baseline, Method::Mckd] {
        for mask in &masks {
            header.push(format!(
                "{} {}",
                m.name(),
                present_names(&MODALITY_NAMES, mask).join("+")
            ));
        }
    }
    let rows: Vec<Vec<String>> = settings
        .iter()
        .map(|&s| {
            let mut row = vec![s.to_string()];
            for m in [Method::Baseline, Method::Mckd] {
                let g = group(outcomes, m, Some(s));
                for mask in &masks {
                    let v: Vec<f64> = g.iter().map(|o| o.subset(mask)).collect();
                    let (mean, std) = mean_std(&v);
                    row.push(if v.is_empty() || mean.is_nan() {
                        "–".into()
                    } else {
                        format!("{} ± {}", pct(mean), pct(std))
                    });
                }
            }
            row
        })
        .collect();
    markdown_table(&header, &rows)
}

/// `iwv_series.csv`: the normalised IWV after every iteration of every `mckd` run
/// (`setting,seed,iteration,epoch,iwv_image,iwv_audio`), the data of paper Fig. 4b.
pub fn iwv_series_csv(outcomes: &[RunOutcome]) -> String {
    let mut out = String::from("setting,seed,iteration,epoch,iwv_image,iwv_audio\n");
    let mut runs: Vec<&RunOutcome> = outcomes
        .iter()
        .filter(|o| o.spec.method == Method::Mckd)
        .collect();
    runs.sort_by_key(|o| (o.spec.setting.map(|s| s.to_string()), o.spec.seed));
    for o in runs {
        let s = o.spec.setting.map(|s| s.to_string()).unwrap_or_default();
        for r in &o.log {
            out.push_str(&format!(
                "{s},{},{},{},{},{}\n",
                o.spec.seed, r.iteration, r.epoch, r.state[0], r.state[1]
            ));
        }
    }
    out
}

/// Writes the plots of a reproduction into the run folder: `iwv_series.csv` (IWV over
/// iterations per setting and seed) and `iwv.png` (paper Fig. 4b: the normalised weight of
/// `image` over iterations, one line per setting, first seed of each). Returns the files.
pub fn write_plots(run_dir: &RunDir, outcomes: &[RunOutcome]) -> Result<Vec<std::path::PathBuf>> {
    let csv = run_dir.write("iwv_series.csv", iwv_series_csv(outcomes).as_bytes())?;
    let mut runs: Vec<&RunOutcome> = outcomes
        .iter()
        .filter(|o| o.spec.method == Method::Mckd && o.spec.setting.is_some())
        .collect();
    runs.sort_by_key(|o| (o.spec.setting.map(|s| s.to_string()), o.spec.seed));
    runs.dedup_by_key(|o| o.spec.setting.map(|s| s.to_string()));
    let mut chart = mckd_plot::LineChart::new(
        "MCKD importance weight of the image modality",
        "iteration",
        "normalised weight of image",
    )
    .y_range(0.0, 1.0);
    for o in runs {
        let name = format!(
            "{} (seed {})",
            o.spec.setting.map(|s| s.to_string()).unwrap_or_default(),
            o.spec.seed
        );
        chart = chart.series(
            name,
            o.log
                .iter()
                .map(|r| (r.iteration as f64, f64::from(r.state[0]))),
        );
    }
    let png = run_dir.file("iwv.png");
    chart.save_png(&png)?;
    Ok(vec![csv, png])
}

/// Per-run summary (`runs.json`): seed, method, setting, accuracy, IWV, seconds.
pub fn runs_json(outcomes: &[RunOutcome]) -> Value {
    let v: Vec<BTreeMap<&str, Value>> = outcomes
        .iter()
        .map(|o| {
            BTreeMap::from([
                ("method", json!(o.spec.method.name())),
                ("setting", json!(o.spec.setting.map(|s| s.to_string()))),
                ("seed", json!(o.spec.seed)),
                ("accuracy", json_f64(o.accuracy)),
                ("iwv", json!(o.iwv)),
                ("iterations", json!(o.iterations)),
                ("seconds", json_f64(o.seconds)),
            ])
        })
        .collect();
    json!(v)
}
