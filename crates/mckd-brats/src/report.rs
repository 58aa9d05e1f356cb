//! The paper-style comparison of evaluated methods (Table 1's shape): Dice per subset and
//! region, Average rows, the one-tailed paired t-tests of MCKD > each other method (Baseline and
//! peers), and `results.json` with typed rows.

use mckd_train::report::{
    Metrics, Results, Row, Subset, csv_table, iwv_map, json_f64, markdown_table,
};
use mckd_train::stats::paired_t_test_greater;
use mckd_volume::{MODALITIES, MeanMetrics, Region};
use serde_json::{Map, Value, json};

use crate::evaluate::subset_name;
use crate::train::T1C;

/// Evaluation results of one method.
#[derive(Debug, Clone)]
pub struct MethodEval {
    /// Method name (`mckd`, `baseline`, ...).
    pub name: String,
    /// Its title in tables (`MCKD`, `Baseline`, ...).
    pub title: String,
    /// Per subset (in [`mckd_core::modality::all_subsets`] order): the mask and the means over
    /// test cases.
    pub subsets: Vec<(Vec<bool>, MeanMetrics)>,
    /// Normalised IWV of the model.
    pub iwv: Vec<f32>,
}

/// The paper-style comparison of the evaluated methods.
#[derive(Debug, Clone)]
pub struct Report {
    /// `table.md` content.
    pub markdown: String,
    /// `table.csv` content.
    pub csv: String,
    /// `results.json` content.
    pub results: Results,
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{:.2}", 100.0 * v)
    }
}

fn mean_of(v: impl IntoIterator<Item = f64>) -> f64 {
    mckd_volume::metrics::nan_mean(v)
}

/// The p-value row of one method against MCKD (see [`mckd_p_value_rows`]).
#[derive(Debug, Clone)]
pub struct PValueRow {
    /// The other method's name.
    pub name: String,
    /// The table row: `p-value (MCKD > <title>)`, the p-values under MCKD's three region
    /// columns, the other cells blank.
    pub row: Vec<String>,
    /// `{"dice_et": {"t", "p"}, ...}` (null where the test is undefined).
    pub tests: Map<String, Value>,
}

/// Table 1's last rows: per method other than MCKD, the one-tailed paired t-test of MCKD >
/// it across the subsets, per region, on `subset_dice(method index, region)` (one mean Dice
/// per subset, in the same subset order for every method). `methods` are `(name, title)` in
/// column order, three region columns each after the row label; none without an `mckd`.
pub fn mckd_p_value_rows(
    methods: &[(&str, &str)],
    subset_dice: impl Fn(usize, Region) -> Vec<f64>,
) -> Vec<PValueRow> {
    let Some(at) = methods.iter().position(|(name, _)| *name == "mckd") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (o, (name, title)) in methods.iter().enumerate().filter(|(o, _)| *o != at) {
        let mut row = vec![String::new(); 1 + 3 * methods.len()];
        row[0] = format!("p-value (MCKD > {title})");
        let mut tests = Map::new();
        for (k, r) in Region::ALL.into_iter().enumerate() {
            let t = paired_t_test_greater(&subset_dice(at, r), &subset_dice(o, r));
            row[1 + 3 * at + k] = t
                .map(|(_, p)| format!("{p:.4}"))
                .unwrap_or_else(|| "–".into());
            tests.insert(
                format!("dice_{}", r.name().to_lowercase()),
                t.map(|(t, p)| json!({"t": json_f64(t), "p": json_f64(p)}))
                    .unwrap_or(Value::Null),
            );
        }
        out.push(PValueRow {
            name: name.to_string(),
            row,
            tests,
        });
    }
    out
}

/// Builds the table (rows = subsets, columns = Dice ET/TC/WT per method, Average rows, and
/// per other method a row with the one-tailed paired t-test of MCKD > it across the 15
/// subsets, in MCKD's columns) and `results.json` (`t_test_mckd_gt_<name>` per method, mean
/// Dice per method over all subsets and over those without t1c).
pub fn make_report(evals: &[MethodEval]) -> Report {
    let regions = Region::ALL;
    let mut header = vec!["Subset".to_string()];
    for e in evals {
        for r in regions {
            header.push(format!("{} {}", e.title, r.name()));
        }
    }
    let mut rows = Vec::new();
    let n_sub = evals.first().map(|e| e.subsets.len()).unwrap_or(0);
    for s in 0..n_sub {
        let mut row = vec![subset_name(&evals[0].subsets[s].0)];
        for e in evals {
            for r in regions {
                row.push(pct(e.subsets[s].1.region(r).dice));
            }
        }
        rows.push(row);
    }
    let avg = |e: &MethodEval, r: Region, filter: &dyn Fn(&[bool]) -> bool| {
        mean_of(
            e.subsets
                .iter()
                .filter(|(m, _)| filter(m))
                .map(|(_, mm)| mm.region(r).dice),
        )
    };
    let all: &dyn Fn(&[bool]) -> bool = &|_| true;
    let no_t1c: &dyn Fn(&[bool]) -> bool = &|m| !m[T1C];
    for (label, f) in [("Average", all), ("Average (no t1c)", no_t1c)] {
        let mut row = vec![label.to_string()];
        for e in evals {
            for r in regions {
                row.push(pct(avg(e, r, f)));
            }
        }
        rows.push(row);
    }
    let mut extra = Map::new();
    let mckd = evals.iter().find(|e| e.name == "mckd");
    let methods: Vec<(&str, &str)> = evals
        .iter()
        .map(|e| (e.name.as_str(), e.title.as_str()))
        .collect();
    let subset_dice = |i: usize, r: Region| -> Vec<f64> {
        evals[i]
            .subsets
            .iter()
            .map(|(_, x)| x.region(r).dice)
            .collect()
    };
    for p in mckd_p_value_rows(&methods, subset_dice) {
        rows.push(p.row);
        extra.insert(format!("t_test_mckd_gt_{}", p.name), Value::Object(p.tests));
    }
    let mean_over = |e: &MethodEval, f: &dyn Fn(&[bool]) -> bool| {
        mean_of(regions.iter().map(|&r| avg(e, r, f)))
    };
    if let (Some(m), Some(b)) = (mckd, evals.iter().find(|e| e.name == "baseline")) {
        let gain = |f: &dyn Fn(&[bool]) -> bool| {
            let (mg, bg) = (mean_over(m, f), mean_over(b, f));
            json!({"mckd": json_f64(mg), "baseline": json_f64(bg), "difference": json_f64(mg - bg)})
        };
        extra.insert("mean_dice_all_subsets".into(), gain(all));
        extra.insert("mean_dice_subsets_without_t1c".into(), gain(no_t1c));
    }
    let per_method = |f: &dyn Fn(&[bool]) -> bool| -> Value {
        Value::Object(
            evals
                .iter()
                .map(|e| (e.name.clone(), json_f64(mean_over(e, f))))
                .collect(),
        )
    };
    extra.insert("mean_dice_per_method_all_subsets".into(), per_method(all));
    extra.insert(
        "mean_dice_per_method_subsets_without_t1c".into(),
        per_method(no_t1c),
    );
    let mut results_rows = Vec::new();
    for e in evals {
        for (mask, mm) in &e.subsets {
            let mut metrics = Metrics::default();
            for r in regions {
                let k = r.name().to_lowercase();
                metrics.set(&format!("dice_{k}"), mm.region(r).dice);
            }
            for r in regions {
                let k = r.name().to_lowercase();
                metrics.set(&format!("hd95_{k}"), mm.region(r).hd95);
            }
            results_rows.push(Row {
                method: e.name.clone(),
                subset: Subset::of(&MODALITIES, mask),
                metrics,
                setting: None,
                headline: None,
                per_seed: None,
            });
        }
    }
    let names: Vec<String> = MODALITIES.iter().map(|s| s.to_string()).collect();
    let iwv = mckd.map(|m| iwv_map(&names, &m.iwv)).unwrap_or_default();
    let markdown = format!(
        "Dice (%) per modality subset on the test cases (rows: present modalities).\n\n{}",
        markdown_table(&header, &rows)
    );
    Report {
        markdown,
        csv: csv_table(&header, &rows),
        results: Results {
            task: "brats".into(),
            rows: results_rows,
            iwv,
            extra,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mckd_volume::metrics::RegionMean;

    fn eval(name: &str, title: &str, dice: impl Fn(usize, usize) -> f64) -> MethodEval {
        let mean = |d: f64| RegionMean {
            dice: d,
            hd95: 1.0,
            n_cases: 1,
        };
        MethodEval {
            name: name.into(),
            title: title.into(),
            subsets: mckd_core::all_subsets(4)
                .into_iter()
                .enumerate()
                .map(|(s, m)| {
                    let mm = MeanMetrics {
                        et: mean(dice(s, 0)),
                        tc: mean(dice(s, 1)),
                        wt: mean(dice(s, 2)),
                        dice_mean: f64::NAN,
                        hd95_mean: 1.0,
                        n_cases: 1,
                    };
                    (m, mm)
                })
                .collect(),
            iwv: Vec::new(),
        }
    }

    #[test]
    fn one_p_value_row_per_other_method_under_the_mckd_columns() {
        // MCKD second in the table: its columns are 4..7.
        let wobble = |s: usize| ((s * 7) % 5) as f64 / 100.0;
        let evals = [
            eval("hved", "U-HVED", |s, r| 0.5 + wobble(s) - 0.01 * r as f64),
            eval("mckd", "MCKD", |s, r| 0.6 + wobble(s + 1) + 0.01 * r as f64),
            eval("baseline", "Baseline", |s, _| 0.55 + wobble(s + 2)),
        ];
        let report = make_report(&evals);
        let rows: Vec<Vec<&str>> = report
            .markdown
            .lines()
            .filter(|l| l.starts_with("| p-value"))
            .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0], "p-value (MCKD > U-HVED)");
        assert_eq!(rows[1][0], "p-value (MCKD > Baseline)");
        for (row, other) in rows.iter().zip([&evals[0], &evals[2]]) {
            for (k, r) in Region::ALL.into_iter().enumerate() {
                let a: Vec<f64> = evals[1]
                    .subsets
                    .iter()
                    .map(|(_, x)| x.region(r).dice)
                    .collect();
                let b: Vec<f64> = other
                    .subsets
                    .iter()
                    .map(|(_, x)| x.region(r).dice)
                    .collect();
                let (_, p) = paired_t_test_greater(&a, &b).unwrap();
                assert_eq!(row[4 + k], format!("{p:.4}"));
            }
            assert!(row[1..4].iter().chain(&row[7..]).all(|c| c.is_empty()));
        }
        let extra = &report.results.extra;
        assert!(extra.contains_key("t_test_mckd_gt_hved"));
        assert!(extra.contains_key("t_test_mckd_gt_baseline"));
        let all = extra["mean_dice_per_method_all_subsets"]
            .as_object()
            .unwrap();
        assert_eq!(all.len(), 3);
        let want = (0..15).map(|s| 0.55 + wobble(s + 2)).sum::<f64>() / 15.0;
        assert!((all["baseline"].as_f64().unwrap() - want).abs() < 1e-12);
        assert!(extra.contains_key("mean_dice_all_subsets"));
    }
}
