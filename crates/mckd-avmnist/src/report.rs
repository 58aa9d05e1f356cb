//! Reports of a reproduction: `results.json`, `table2.md` / `table2.csv`, the IWV series.

use std::collections::BTreeMap;

use mckd_core::present_names;
use mckd_train::report::{PerSeed, Results, Row, csv_table, iwv_map, json_f64, markdown_table};
use mckd_train::run::RunDir;
use mckd_train::stats::{mean_std, paired_t_test_greater};
use serde_json::{Map, Value, json};

use crate::config::{
    AvMethod, AvRunConfig, DataSplit, EvalSet, MethodKind as Method, Missing, PAPER_LOWERB_AUDIO,
    PAPER_LOWERB_IMAGE, PAPER_UPPERB, Setting,
};
use crate::model::MODALITY_NAMES;
use crate::run::{Result, RunOutcome};

/// The config of each method of a reproduction (for the budgets and settings it reports).
pub type MethodConfigs = BTreeMap<Method, AvMethod>;

/// Outcomes of one (method, setting), ordered by seed.
fn group(outcomes: &[RunOutcome], method: Method, setting: Option<Setting>) -> Vec<&RunOutcome> {
    let mut v: Vec<&RunOutcome> = outcomes
        .iter()
        .filter(|o| o.spec.method == method && o.spec.setting == setting)
        .collect();
    v.sort_by_key(|o| o.spec.seed);
    v
}

/// The per-setting methods that have outcomes, in table order.
fn columns(outcomes: &[RunOutcome]) -> Vec<Method> {
    Method::COLUMNS
        .into_iter()
        .filter(|&m| outcomes.iter().any(|o| o.spec.method == m))
        .collect()
}

/// The paired one-tailed t-test MCKD > `other` of a row over the seeds both ran:
/// `(mean difference, t, p, pairs)`.
pub fn row_t_test(
    outcomes: &[RunOutcome],
    setting: Setting,
    other: Method,
) -> Option<(f64, f64, f64, usize)> {
    let m = group(outcomes, Method::Mckd, Some(setting));
    let b = group(outcomes, other, Some(setting));
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
/// `mckd` runs. Extra: `iwv_final` (per setting and seed), `t_tests` (per setting, MCKD against
/// every other method: mean difference, t, p, pairs), `paper` (every published number, as
/// fractions), `budgets` (per method: pretraining and loop iterations, seconds per run),
/// `method_configs`, `config` (the described run), `wall_seconds`, `run_seconds`.
pub fn results(
    outcomes: &[RunOutcome],
    settings: &[Setting],
    cfg: &AvRunConfig,
    configs: &MethodConfigs,
    wall_seconds: f64,
) -> Results {
    let mut rows = Vec::new();
    let mut keys: Vec<(Method, Option<Setting>)> = Vec::new();
    for m in [Method::LowerbImage, Method::LowerbAudio, Method::Upperb] {
        keys.push((m, None));
    }
    let cols = columns(outcomes);
    for &s in settings {
        for &m in &cols {
            keys.push((m, Some(s)));
        }
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
        .filter(|o| o.spec.method == Method::Mckd && o.iwv.len() == 2)
        .collect();
    let names_all: Vec<String> = MODALITY_NAMES.iter().map(|s| s.to_string()).collect();
    let iwv = if mckd.is_empty() {
        Map::new()
    } else {
        let mean_iwv: Vec<f32> = (0..2)
            .map(|i| {
                let v: Vec<f64> = mckd.iter().map(|o| f64::from(o.iwv[i])).collect();
                mean_std(&v).0 as f32
            })
            .collect();
        iwv_map(&names_all, &mean_iwv)
    };
    let mut extra = Map::new();
    let mut iwv_final = Map::new();
    let mut tests = Map::new();
    let mut paper = Map::new();
    for &s in settings {
        let per: Map<String, Value> = group(outcomes, Method::Mckd, Some(s))
            .iter()
            .filter(|o| o.iwv.len() == 2)
            .map(|o| {
                (
                    o.spec.seed.to_string(),
                    Value::Object(iwv_map(&names_all, &o.iwv)),
                )
            })
            .collect();
        iwv_final.insert(s.to_string(), Value::Object(per));
        let mut row_tests = Map::new();
        for &other in cols.iter().filter(|&&m| m != Method::Mckd) {
            if let Some((diff, t, p, n)) = row_t_test(outcomes, s, other) {
                row_tests.insert(
                    other.name().into(),
                    json!({"mean_difference": json_f64(diff), "t": json_f64(t), "p": json_f64(p), "pairs": n}),
                );
            }
        }
        tests.insert(s.to_string(), Value::Object(row_tests));
        for m in Method::COLUMNS {
            if let Some(v) = m.paper(s) {
                paper.insert(format!("{}_{s}", m.name()), json_f64(v / 100.0));
            }
        }
    }
    paper.insert("upperb".into(), json_f64(PAPER_UPPERB / 100.0));
    paper.insert("lowerb_image".into(), json_f64(PAPER_LOWERB_IMAGE / 100.0));
    paper.insert("lowerb_audio".into(), json_f64(PAPER_LOWERB_AUDIO / 100.0));
    let mut budgets = Map::new();
    for m in Method::ALL {
        let g: Vec<&RunOutcome> = outcomes.iter().filter(|o| o.spec.method == m).collect();
        if g.is_empty() {
            continue;
        }
        let mean = |f: &dyn Fn(&RunOutcome) -> f64| {
            mean_std(&g.iter().map(|o| f(o)).collect::<Vec<_>>()).0
        };
        budgets.insert(
            m.name().into(),
            json!({
                "pre_iterations": json_f64(mean(&|o| o.pre_iterations as f64)),
                "iterations": json_f64(mean(&|o| o.iterations as f64)),
                "seconds_per_run": json_f64(mean(&|o| o.seconds)),
                "runs": g.len(),
            }),
        );
    }
    extra.insert("iwv_final".into(), Value::Object(iwv_final));
    extra.insert("t_tests".into(), Value::Object(tests));
    extra.insert("paper".into(), Value::Object(paper));
    extra.insert("budgets".into(), Value::Object(budgets));
    extra.insert(
        "method_configs".into(),
        Value::Object(
            configs
                .iter()
                .map(|(k, v)| {
                    (
                        k.name().to_string(),
                        serde_json::to_value(v).unwrap_or(Value::Null),
                    )
                })
                .collect(),
        ),
    );
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
        iwv,
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

fn paper_text(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2}"))
}

/// `(markdown, csv)` of Table 2. The Markdown has the table (per row: the LowerB of the
/// evaluated modality and UpperB, then every method that ran, ours beside the paper's, mean ±
/// std over seeds in %; MCKD − Baseline and its p-value; MCKD's final image IWV), the
/// one-tailed paired t-tests of MCKD against every method per row, the methods' budgets, and
/// every subset of every method. The CSV has one line per (row, method).
pub fn table2(
    outcomes: &[RunOutcome],
    settings: &[Setting],
    cfg: &AvRunConfig,
    configs: &MethodConfigs,
) -> (String, String) {
    let seeds = {
        let mut s: Vec<u64> = outcomes.iter().map(|o| o.spec.seed).collect();
        s.sort_unstable();
        s.dedup();
        s.len()
    };
    let cols = columns(outcomes);
    let upper = cell(&group(outcomes, Method::Upperb, None));
    let low_img = cell(&group(outcomes, Method::LowerbImage, None));
    let low_aud = cell(&group(outcomes, Method::LowerbAudio, None));
    let mut header: Vec<String> = [
        "Setting",
        "pairs/digit",
        "LowerB",
        "LowerB (paper)",
        "UpperB",
        "UpperB (paper)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for m in &cols {
        header.push(m.title().to_string());
        header.push(format!("{} (paper)", m.title()));
    }
    for h in [
        "MCKD − Baseline",
        "p (MCKD > Baseline)",
        "IWV image (MCKD)",
        "seeds IWV image largest",
    ] {
        header.push(h.to_string());
    }
    let csv_header: Vec<String> = [
        "setting",
        "pairs_per_digit",
        "method",
        "mean",
        "std",
        "paper",
        "seeds",
        "mckd_minus_method",
        "t",
        "p_value",
        "pre_iterations",
        "iterations",
        "seconds_per_run",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let f = |v: f64| {
        if v.is_nan() {
            String::new()
        } else {
            format!("{:.4}", 100.0 * v)
        }
    };
    let mut md_rows = Vec::new();
    let mut csv_rows = Vec::new();
    for &s in settings {
        let pairs = cfg.task.mapping.per_digit(s.percent).to_string();
        let (low_kind, low, low_paper) = match s.missing {
            Missing::Audio => (Method::LowerbImage, &low_img, PAPER_LOWERB_IMAGE),
            Missing::Visual => (Method::LowerbAudio, &low_aud, PAPER_LOWERB_AUDIO),
        };
        let mut row = vec![
            s.to_string(),
            pairs.clone(),
            low.2.clone(),
            format!("{low_paper:.2}"),
            upper.2.clone(),
            format!("{PAPER_UPPERB:.2}"),
        ];
        let mut line = |kind: Method, c: &(f64, f64, String), paper: Option<f64>| {
            let g: Vec<&RunOutcome> = group(
                outcomes,
                kind,
                if kind.needs_setting() { Some(s) } else { None },
            );
            let t = (kind != Method::Mckd && kind.needs_setting())
                .then(|| row_t_test(outcomes, s, kind))
                .flatten();
            let mean_of = |f: &dyn Fn(&RunOutcome) -> f64| {
                mean_std(&g.iter().map(|o| f(o)).collect::<Vec<_>>()).0
            };
            csv_rows.push(vec![
                s.to_string(),
                pairs.clone(),
                kind.name().to_string(),
                f(c.0),
                f(c.1),
                paper.map_or(String::new(), |p| format!("{p}")),
                g.len().to_string(),
                t.map_or(String::new(), |x| format!("{:.4}", 100.0 * x.0)),
                t.map_or(String::new(), |x| format!("{:.4}", x.1)),
                t.map_or(String::new(), |x| format!("{:.5}", x.2)),
                format!("{}", mean_of(&|o| o.pre_iterations as f64)),
                format!("{}", mean_of(&|o| o.iterations as f64)),
                format!("{:.1}", mean_of(&|o| o.seconds)),
            ]);
        };
        line(low_kind, low, Some(low_paper));
        line(Method::Upperb, &upper, Some(PAPER_UPPERB));
        for &m in &cols {
            let c = cell(&group(outcomes, m, Some(s)));
            line(m, &c, m.paper(s));
            row.push(c.2.clone());
            row.push(paper_text(m.paper(s)));
        }
        let mckd_g = group(outcomes, Method::Mckd, Some(s));
        let base = cell(&group(outcomes, Method::Baseline, Some(s)));
        let mckd = cell(&mckd_g);
        let t = row_t_test(outcomes, s, Method::Baseline);
        let with_iwv: Vec<&&RunOutcome> = mckd_g.iter().filter(|o| o.iwv.len() == 2).collect();
        let iwv: Vec<f64> = with_iwv.iter().map(|o| f64::from(o.iwv[0])).collect();
        let img_largest = with_iwv.iter().filter(|o| o.iwv[0] > o.iwv[1]).count();
        row.push(if mckd.0.is_nan() || base.0.is_nan() {
            "–".into()
        } else {
            format!("{:+.2}", 100.0 * (mckd.0 - base.0))
        });
        row.push(t.map_or("–".into(), |x| format!("{:.3}", x.2)));
        row.push(if iwv.is_empty() {
            "–".into()
        } else {
            format!("{:.3}", mean_std(&iwv).0)
        });
        row.push(format!("{img_largest}/{}", with_iwv.len()));
        md_rows.push(row);
    }
    let split = match cfg.task.split {
        DataSplit::Paper => {
            "split 900 / 150 / 450 (train / validation with both modalities / test); the \
             row's pairs are drawn from the 900; the 150 are MCKD's meta set"
        }
        DataSplit::Smil => {
            "SMIL's 1,050-sample training pool; meta steps on the row's paired training samples"
        }
    };
    let mckd_text = match cfg.method.mckd() {
        Some(m) => format!(
            "MCKD: α = {}, {:?} distance ({:?} over the batch), {:?} IWV, meta phases every {} \
             iterations ({} in stage 2) of {} IWV step(s)",
            m.alpha,
            m.distance,
            m.reduction,
            m.normalisation,
            cfg.loop_.meta.interval,
            cfg.loop_.meta.interval_stage2,
            cfg.loop_.meta.steps,
        ),
        None => String::new(),
    };
    let md = format!(
        "## Table 2 — AV-MNIST accuracy (%)\n\n\
         Mean ± std over {seeds} seed(s), accuracy at the last iteration ({:?} of the shared \
         loop, batch {}; same split, seeds and test for every method); evaluated on {}; \
         {split}. {}. LowerB = same network with the other modality always missing, trained \
         on every training sample of the evaluated modality (the paper's image LowerB was \
         tested on all 10,000 MNIST test images with a smaller network). Baseline = \
         non-dedicated training with α = 0. {mckd_text}. The peers are ours to the extent \
         `crates/mckd-avmnist/README.md` states; their paper columns are copied by MCKD from \
         ShaSpec and SMIL (the AutoEncoder, GAN and Full2miss have no missing-visual \
         numbers). p: one-tailed paired t-test MCKD > Baseline across seeds.\n\n{}\n\n\
         ### MCKD against every method (one-tailed paired t-test across seeds)\n\n\
         Mean difference MCKD − method in points, and p.\n\n{}\n\n\
         ### Budgets\n\n{}\n\n\
         ### Every subset (mean ± std over seeds, %)\n\n{}",
        cfg.loop_.budget,
        cfg.loop_.batch_size,
        evaluation(cfg),
        cfg.task.mapping.describe(),
        markdown_table(&header, &md_rows),
        tests_table(outcomes, settings, &cols),
        budgets_table(outcomes, configs),
        subsets_table(outcomes, settings, &cols)
    );
    (md, csv_table(&csv_header, &csv_rows))
}

/// Per row, MCKD − method and the p-value of MCKD > method, for every other method.
fn tests_table(outcomes: &[RunOutcome], settings: &[Setting], cols: &[Method]) -> String {
    let others: Vec<Method> = cols
        .iter()
        .copied()
        .filter(|&m| m != Method::Mckd)
        .collect();
    let mut header = vec!["Setting".to_string()];
    for m in &others {
        header.push(format!("vs {}", m.title()));
    }
    let rows: Vec<Vec<String>> = settings
        .iter()
        .map(|&s| {
            let mut row = vec![s.to_string()];
            for &m in &others {
                row.push(match row_t_test(outcomes, s, m) {
                    Some((d, _, p, _)) => format!("{:+.2} (p {p:.3})", 100.0 * d),
                    None => "–".into(),
                });
            }
            row
        })
        .collect();
    markdown_table(&header, &rows)
}

/// What each method trained: its own stages before the loop, the loop, the seconds per run.
fn budgets_table(outcomes: &[RunOutcome], configs: &MethodConfigs) -> String {
    let header: Vec<String> = [
        "Method",
        "pretraining iterations (mean)",
        "loop iterations",
        "other steps",
        "seconds per run (mean)",
        "runs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = Method::ALL
        .iter()
        .filter_map(|&m| {
            let g: Vec<&RunOutcome> = outcomes.iter().filter(|o| o.spec.method == m).collect();
            if g.is_empty() {
                return None;
            }
            let mean = |f: &dyn Fn(&RunOutcome) -> f64| {
                mean_std(&g.iter().map(|o| f(o)).collect::<Vec<_>>()).0
            };
            let other = match configs.get(&m) {
                Some(AvMethod::Autoencoder(c)) => {
                    format!("{} translator steps (MLP on features)", c.iterations)
                }
                Some(AvMethod::Gan(c)) => {
                    format!("{} adversarial steps (MLPs on features)", c.iterations)
                }
                Some(AvMethod::Smil(c)) => format!(
                    "k-means K = {} ({} restarts); each loop iteration: inner + outer pass",
                    c.clusters, c.kmeans_restarts
                ),
                Some(AvMethod::Mckd(_)) => "meta (IWV) steps".into(),
                _ => String::new(),
            };
            Some(vec![
                m.title().to_string(),
                format!("{:.0}", mean(&|o| o.pre_iterations as f64)),
                format!("{:.0}", mean(&|o| o.iterations as f64)),
                other,
                format!("{:.1}", mean(&|o| o.seconds)),
                g.len().to_string(),
            ])
        })
        .collect();
    markdown_table(&header, &rows)
}

/// Every subset's accuracy (image, audio, both) of every per-setting method per row.
fn subsets_table(outcomes: &[RunOutcome], settings: &[Setting], cols: &[Method]) -> String {
    let masks = mckd_core::all_subsets(2);
    let mut header = vec!["Setting".to_string(), "Method".to_string()];
    for mask in &masks {
        header.push(present_names(&MODALITY_NAMES, mask).join("+"));
    }
    let mut rows = Vec::new();
    for &s in settings {
        for &m in cols {
            let g = group(outcomes, m, Some(s));
            if g.is_empty() {
                continue;
            }
            let mut row = vec![s.to_string(), m.title().to_string()];
            for mask in &masks {
                let v: Vec<f64> = g.iter().map(|o| o.subset(mask)).collect();
                let (mean, std) = mean_std(&v);
                row.push(if mean.is_nan() {
                    "–".into()
                } else {
                    format!("{} ± {}", pct(mean), pct(std))
                });
            }
            rows.push(row);
        }
    }
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
                ("pre_iterations", json!(o.pre_iterations)),
                ("seconds", json_f64(o.seconds)),
            ])
        })
        .collect();
    json!(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Preset, preset};
    use crate::run::{RunSpec, SubsetAccuracy};

    /// One outcome with the headline (image-only) accuracy `acc` in %.
    fn outcome(method: Method, setting: Option<Setting>, seed: u64, acc: f64) -> RunOutcome {
        RunOutcome {
            spec: RunSpec {
                method,
                setting,
                seed,
            },
            accuracy: acc / 100.0,
            subsets: mckd_core::all_subsets(2)
                .into_iter()
                .map(|mask| SubsetAccuracy {
                    accuracy: if mask == [true, false] {
                        acc / 100.0
                    } else {
                        0.5
                    },
                    mask,
                })
                .collect(),
            iwv: if method == Method::Mckd {
                vec![0.6, 0.4]
            } else {
                Vec::new()
            },
            iterations: 10,
            pre_iterations: if method.is_peer() { 5 } else { 0 },
            seconds: 1.0,
            timing: Default::default(),
            log: Vec::new(),
        }
    }

    /// Table 2 of a one-row reproduction: every method that ran has its column beside the
    /// paper's, and each row carries the one-tailed paired t-test of MCKD against every method
    /// (values of `mckd_train::stats`'s scipy case).
    #[test]
    fn table2_has_every_column_and_a_t_test_per_method() {
        // scipy: ttest_rel([95.1, 94.2, 96.0, 94.9, 95.5], [94.0, 94.5, 95.1, 94.2, 94.8],
        //                  alternative='greater') -> t = 2.5656, p = 0.031134660731018525;
        // mean difference 95.14 − 94.52 = 0.62 points.
        let s: Setting = "audio_10".parse().unwrap();
        let mckd = [95.1, 94.2, 96.0, 94.9, 95.5];
        let gan = [94.0, 94.5, 95.1, 94.2, 94.8];
        let mut outcomes = Vec::new();
        for (i, seed) in (1..=5).enumerate() {
            outcomes.push(outcome(Method::Mckd, Some(s), seed, mckd[i]));
            outcomes.push(outcome(Method::Gan, Some(s), seed, gan[i]));
            for m in [
                Method::Autoencoder,
                Method::Full2miss,
                Method::Smil,
                Method::Shaspec,
                Method::Baseline,
            ] {
                outcomes.push(outcome(m, Some(s), seed, 93.0 + i as f64 * 0.1));
            }
            outcomes.push(outcome(Method::Upperb, None, seed, 98.0));
            outcomes.push(outcome(Method::LowerbImage, None, seed, 92.0));
        }
        let cfg = preset(Preset::Paper, Method::Mckd, Some(s), 1);
        let configs: MethodConfigs = Method::TABLE
            .iter()
            .map(|&k| (k, preset(Preset::Paper, k, Some(s), 1).method))
            .collect();
        let (md, csv) = table2(&outcomes, &[s], &cfg, &configs);
        for title in [
            "AutoEncoder",
            "GAN",
            "Full2miss",
            "SMIL",
            "ShaSpec",
            "Baseline",
        ] {
            assert!(
                md.contains(&format!("| {title} | {title} (paper) |")),
                "{title}"
            );
            assert!(
                md.contains(&format!("vs {title}")),
                "t-test column for {title}"
            );
        }
        assert!(
            !md.contains("SMIL (LeNet)"),
            "a method that did not run has no column"
        );
        assert!(md.contains("| 95.14 ± "), "MCKD's mean");
        assert!(md.contains("+0.62 (p 0.031)"), "MCKD vs GAN:\n{md}");
        let gan_line = csv
            .lines()
            .find(|l| l.starts_with("audio_10,15,gan,"))
            .expect("a CSV line for the GAN");
        assert!(
            gan_line.contains(",89.78,5,0.6200,2.5656,0.03113,5,10,"),
            "{gan_line}"
        );
        let r = results(&outcomes, &[s], &cfg, &configs, 1.0);
        let t = &r.extra["t_tests"]["audio_10"];
        for m in [
            "autoencoder",
            "gan",
            "full2miss",
            "smil",
            "shaspec",
            "baseline",
        ] {
            assert_eq!(t[m]["pairs"], 5, "{m}");
        }
        let p = t["gan"]["p"].as_f64().unwrap();
        assert!((p - 0.031_134_660_731_018_5).abs() < 1e-5, "{p}");
        // Every subset of every per-row method is a row of results.json (3 subsets each).
        let per_row: Vec<_> = r.rows.iter().filter(|x| x.setting.is_some()).collect();
        assert_eq!(per_row.len(), 7 * 3);
    }
}
