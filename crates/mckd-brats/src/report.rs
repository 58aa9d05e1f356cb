//! The paper-style comparison of evaluated methods (Table 1's shape): Dice per subset and
//! region, Average rows, the one-tailed paired t-test MCKD > Baseline, and `results.json` with
//! typed rows.

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
    /// Per subset (in [`all_subsets`] order): the mask and the means over test cases.
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

/// Builds the table (rows = subsets, columns = Dice ET/TC/WT per method, Average rows,
/// one-tailed paired t-test MCKD > Baseline across the 15 subsets) and `results.json`.
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
    let base = evals.iter().find(|e| e.name == "baseline");
    if let (Some(m), Some(b)) = (mckd, base) {
        let mut prow = vec!["p-value (MCKD > Baseline)".to_string()];
        let mut tests = Map::new();
        for r in regions {
            let a: Vec<f64> = m.subsets.iter().map(|(_, x)| x.region(r).dice).collect();
            let c: Vec<f64> = b.subsets.iter().map(|(_, x)| x.region(r).dice).collect();
            let t = paired_t_test_greater(&a, &c);
            prow.push(
                t.map(|(_, p)| format!("{p:.4}"))
                    .unwrap_or_else(|| "–".into()),
            );
            tests.insert(
                format!("dice_{}", r.name().to_lowercase()),
                t.map(|(t, p)| json!({"t": json_f64(t), "p": json_f64(p)}))
                    .unwrap_or(Value::Null),
            );
        }
        // Blank the Baseline columns of the p-value row.
        prow.extend(std::iter::repeat_n(String::new(), 3 * (evals.len() - 1)));
        rows.push(prow);
        extra.insert("t_test_mckd_gt_baseline".into(), Value::Object(tests));
        let gain = |f: &dyn Fn(&[bool]) -> bool| {
            let mg = mean_of(regions.iter().map(|&r| avg(m, r, f)));
            let bg = mean_of(regions.iter().map(|&r| avg(b, r, f)));
            json!({"mckd": json_f64(mg), "baseline": json_f64(bg), "difference": json_f64(mg - bg)})
        };
        extra.insert("mean_dice_all_subsets".into(), gain(all));
        extra.insert("mean_dice_subsets_without_t1c".into(), gain(no_t1c));
    }
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
