//! Table 1 pooled over seeds: every test case of every seed is one sample.
//!
//! A one-seed table gives each cell as the mean over that seed's few test cases; across seeds
//! the question is also how much a cell moves. [`pooled_table`] reads each finished seed's
//! `per_case.csv` and gives, per method, subset and region, the mean ± sample std of Dice and
//! HD95 over all (seed, test case) pairs, Average rows (each sample's mean over the subsets,
//! then mean ± std over the samples) and, as the one-seed table does, the one-tailed paired
//! t-test of MCKD > each other method across the 15 subsets' pooled mean Dice. HD95 follows the
//! BraTS convention: an empty prediction of a non-empty region counts as
//! [`BRATS_HD95_INF`] mm (the count of such cases is a column of the CSV); a region absent
//! from both masks has no Dice or HD95 and is left out of that cell.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mckd_train::report::{csv_table, json_f64, markdown_table};
use mckd_train::stats::mean_std;
use mckd_volume::Region;
use mckd_volume::metrics::{BRATS_HD95_INF, nan_mean, replace_inf};
use serde_json::{Value, json};

use crate::error::{BratsError, Result};
use crate::evaluate::parse_subset;
use crate::report::mckd_p_value_rows;
use crate::train::T1C;

/// One line of a `per_case.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseRow {
    /// Method name (`mckd`, `baseline`, ...).
    pub method: String,
    /// Subset name (`flair+t1c`).
    pub subset: String,
    /// Its mask in modality order.
    pub mask: Vec<bool>,
    /// Case id.
    pub case: String,
    /// Dice per region (ET, TC, WT); NaN when the region is absent from both masks.
    pub dice: [f64; 3],
    /// HD95 (mm) per region; +∞ for an empty prediction of a non-empty region.
    pub hd95: [f64; 3],
}

/// Reads a `per_case.csv` as written by [`crate::evaluate::per_case_csv`]; an error names the
/// file, the line and the problem.
pub fn read_per_case(path: &Path) -> Result<Vec<CaseRow>> {
    let bad = |problem: String| BratsError::Table {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut lines = text.lines().enumerate();
    const HEADER: &str = "method,subset,case,dice_et,dice_tc,dice_wt,hd95_et,hd95_tc,hd95_wt";
    match lines.next() {
        Some((_, h)) if h.trim() == HEADER => {}
        _ => return Err(bad(format!("the first line must be `{HEADER}`"))),
    }
    let mut rows = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 9 {
            return Err(bad(format!(
                "line {}: {} fields, expected 9",
                i + 1,
                f.len()
            )));
        }
        let mut v = [0.0f64; 6];
        for (k, s) in f[3..].iter().enumerate() {
            v[k] = s
                .trim()
                .parse()
                .map_err(|_| bad(format!("line {}: `{s}` is not a number", i + 1)))?;
        }
        let mask = parse_subset(f[1]).map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
        rows.push(CaseRow {
            method: f[0].to_string(),
            subset: f[1].to_string(),
            mask,
            case: f[2].to_string(),
            dice: [v[0], v[1], v[2]],
            hd95: [v[3], v[4], v[5]],
        });
    }
    Ok(rows)
}

/// The pooled tables.
#[derive(Debug, Clone)]
pub struct PooledTable {
    /// `table_seeds.md`: the Dice table, then the HD95 table.
    pub markdown: String,
    /// `table_seeds.csv`: one line per method, subset and region.
    pub csv: String,
    /// Per method: per subset and region mean and std of Dice and HD95, the sample counts;
    /// the Average rows per method (`averages`: `all` and `no_t1c`, per region); and the
    /// p-values of MCKD > each other method.
    pub json: Value,
    /// Per region, `(file name, chart)`: the pooled mean Dice (%) of every method per subset
    /// and the Average, as bars (`table_seeds_et.png`, `_tc`, `_wt`).
    pub charts: Vec<(String, mckd_plot::BarChart)>,
}

/// One cell's samples.
#[derive(Debug, Default, Clone)]
struct Cell {
    dice: Vec<f64>,
    hd95: Vec<f64>,
    empty: usize,
}

/// One case's scores on one subset: whether t1c is present, Dice and HD95 per region.
type SubsetScore = (bool, [f64; 3], [f64; 3]);

/// One Average cell: (mean, std) over the samples, and their count.
type AverageCell = ((f64, f64), usize);

/// Pools the `per_case.csv` of every `(seed, folder)`; methods and subsets keep the order of
/// the first file.
pub fn pooled_table(dirs: &[(u64, PathBuf)]) -> Result<PooledTable> {
    let mut methods: Vec<String> = Vec::new();
    let mut subsets: Vec<String> = Vec::new();
    // (method, subset, region) → samples; (method, seed, case) → per-subset values, for the
    // Average rows.
    let mut cells: BTreeMap<(String, String, usize), Cell> = BTreeMap::new();
    let mut samples: BTreeMap<(String, u64, String), Vec<SubsetScore>> = BTreeMap::new();
    for (seed, dir) in dirs {
        let path = dir.join("per_case.csv");
        for r in read_per_case(&path)? {
            if !methods.contains(&r.method) {
                methods.push(r.method.clone());
            }
            if !subsets.contains(&r.subset) {
                subsets.push(r.subset.clone());
            }
            let hd: [f64; 3] = r.hd95.map(|h| replace_inf(h, BRATS_HD95_INF));
            for (k, ((&dice, &hd95), &raw)) in r.dice.iter().zip(&hd).zip(&r.hd95).enumerate() {
                let c = cells
                    .entry((r.method.clone(), r.subset.clone(), k))
                    .or_default();
                c.dice.push(dice);
                c.hd95.push(hd95);
                c.empty += usize::from(raw == f64::INFINITY);
            }
            samples
                .entry((r.method.clone(), *seed, r.case.clone()))
                .or_default()
                .push((r.mask[T1C], r.dice, hd));
        }
    }
    if methods.is_empty() {
        return Err(BratsError::Invalid(
            "no per-case scores to pool: every per_case.csv is empty".into(),
        ));
    }
    let cell = |m: &str, s: &str, k: usize| cells.get(&(m.to_string(), s.to_string(), k));
    let fmt = |(mean, sd): (f64, f64), scale: f64| {
        if mean.is_nan() {
            "–".to_string()
        } else {
            format!("{:.2} ± {:.2}", scale * mean, scale * sd)
        }
    };
    // Each sample's mean over the subsets (all, or those without t1c), per region.
    let averages = |m: &str, no_t1c: bool, k: usize, hd: bool| -> Vec<f64> {
        samples
            .iter()
            .filter(|((method, _, _), _)| method == m)
            .map(|(_, v)| {
                nan_mean(
                    v.iter()
                        .filter(|(t1c, _, _)| !(no_t1c && *t1c))
                        .map(|(_, d, h)| if hd { h[k] } else { d[k] }),
                )
            })
            .collect()
    };
    // Every Average cell once, for the tables, the JSON and the charts: per (method, without
    // t1c?), per metric (Dice, HD95) and region, mean ± std over the samples and their count.
    let average_rows: BTreeMap<(&str, bool), [[AverageCell; 3]; 2]> = methods
        .iter()
        .flat_map(|m| [false, true].map(|no_t1c| (m.as_str(), no_t1c)))
        .map(|(m, no_t1c)| {
            let row = [false, true].map(|hd| {
                std::array::from_fn(|k| {
                    let v = averages(m, no_t1c, k, hd);
                    (mean_std(&v), v.len())
                })
            });
            ((m, no_t1c), row)
        })
        .collect();
    let average =
        |m: &str, no_t1c: bool, k: usize, hd: bool| average_rows[&(m, no_t1c)][usize::from(hd)][k];
    let titles: Vec<String> = methods
        .iter()
        .map(|m| crate::config::Method::title_of(m).to_string())
        .collect();
    let mut header = vec!["Subset".to_string()];
    for t in &titles {
        for r in Region::ALL {
            header.push(format!("{t} {}", r.name()));
        }
    }
    let n_samples = dirs.len();
    let mut md = format!(
        "Pooled over {n_samples} seed(s): mean ± std over every (seed, test case) pair.\n\n\
         Dice (%) per modality subset (rows: present modalities).\n\n"
    );
    let mut tables = Vec::new();
    for hd in [false, true] {
        let scale = if hd { 1.0 } else { 100.0 };
        let mut rows = Vec::new();
        for s in &subsets {
            let mut row = vec![s.clone()];
            for m in &methods {
                for k in 0..3 {
                    let v = cell(m, s, k).map(|c| mean_std(if hd { &c.hd95 } else { &c.dice }));
                    row.push(fmt(v.unwrap_or((f64::NAN, f64::NAN)), scale));
                }
            }
            rows.push(row);
        }
        for (label, no_t1c) in [("Average", false), ("Average (no t1c)", true)] {
            let mut row = vec![label.to_string()];
            for m in &methods {
                for k in 0..3 {
                    row.push(fmt(average(m, no_t1c, k, hd).0, scale));
                }
            }
            rows.push(row);
        }
        tables.push(rows);
    }
    // p-values: MCKD > each other method across the subsets' pooled mean Dice (Table 1's row).
    let names: Vec<(&str, &str)> = methods
        .iter()
        .zip(&titles)
        .map(|(m, t)| (m.as_str(), t.as_str()))
        .collect();
    let pooled_mean = |i: usize, r: Region| -> Vec<f64> {
        subsets
            .iter()
            .map(|s| cell(&methods[i], s, r.channel()).map_or(f64::NAN, |c| mean_std(&c.dice).0))
            .collect()
    };
    let mut tests = serde_json::Map::new();
    for p in mckd_p_value_rows(&names, pooled_mean) {
        tables[0].push(p.row);
        tests.insert(p.name, Value::Object(p.tests));
    }
    md.push_str(&markdown_table(&header, &tables[0]));
    md.push_str(&format!(
        "\nHD95 (mm) per modality subset; an empty prediction of a non-empty region counts as \
         {BRATS_HD95_INF} mm (BraTS convention).\n\n"
    ));
    md.push_str(&markdown_table(&header, &tables[1]));

    let csv_header: Vec<String> = [
        "method",
        "subset",
        "region",
        "dice_mean",
        "dice_std",
        "n_dice",
        "hd95_mean",
        "hd95_std",
        "n_hd95",
        "n_empty_prediction",
    ]
    .map(String::from)
    .to_vec();
    let mut csv_rows = Vec::new();
    let mut per_method = serde_json::Map::new();
    for m in &methods {
        let mut per_subset = serde_json::Map::new();
        for s in &subsets {
            let mut per_region = serde_json::Map::new();
            for r in Region::ALL {
                let Some(c) = cell(m, s, r.channel()) else {
                    continue;
                };
                let (dm, ds) = mean_std(&c.dice);
                let (hm, hs) = mean_std(&c.hd95);
                let count = |v: &[f64]| v.iter().filter(|x| !x.is_nan()).count();
                let (nd, nh) = (count(&c.dice), count(&c.hd95));
                csv_rows.push(vec![
                    m.clone(),
                    s.clone(),
                    r.name().to_string(),
                    dm.to_string(),
                    ds.to_string(),
                    nd.to_string(),
                    hm.to_string(),
                    hs.to_string(),
                    nh.to_string(),
                    c.empty.to_string(),
                ]);
                per_region.insert(
                    r.name().to_lowercase(),
                    json!({
                        "dice_mean": json_f64(dm), "dice_std": json_f64(ds), "n_dice": nd,
                        "hd95_mean": json_f64(hm), "hd95_std": json_f64(hs), "n_hd95": nh,
                        "n_empty_prediction": c.empty,
                    }),
                );
            }
            per_subset.insert(s.clone(), Value::Object(per_region));
        }
        per_method.insert(m.clone(), Value::Object(per_subset));
    }
    // The Average rows' numbers, unrounded.
    let mut per_method_averages = serde_json::Map::new();
    for m in &methods {
        let mut rows = serde_json::Map::new();
        for (key, no_t1c) in [("all", false), ("no_t1c", true)] {
            let mut per_region = serde_json::Map::new();
            for r in Region::ALL {
                let ((dm, ds), n) = average(m, no_t1c, r.channel(), false);
                let ((hm, hs), _) = average(m, no_t1c, r.channel(), true);
                per_region.insert(
                    r.name().to_lowercase(),
                    json!({
                        "dice_mean": json_f64(dm), "dice_std": json_f64(ds),
                        "hd95_mean": json_f64(hm), "hd95_std": json_f64(hs),
                        "n_samples": n,
                    }),
                );
            }
            rows.insert(key.into(), Value::Object(per_region));
        }
        per_method_averages.insert(m.clone(), Value::Object(rows));
    }
    // One chart per region: a cluster per subset and the Average, a bar per method.
    let mut groups = subsets.clone();
    groups.push("Average".into());
    let charts = Region::ALL
        .iter()
        .map(|&r| {
            let k = r.channel();
            let chart = methods.iter().zip(&titles).fold(
                mckd_plot::BarChart::new(
                    format!(
                        "{} Dice by available modalities, pooled over {n_samples} seed(s)",
                        r.name()
                    ),
                    "Dice (%)",
                    groups.clone(),
                ),
                |chart, (m, t)| {
                    let cells = subsets
                        .iter()
                        .map(|s| cell(m, s, k).map_or(f64::NAN, |c| 100.0 * mean_std(&c.dice).0));
                    let all = 100.0 * average(m, false, k, false).0.0;
                    chart.series(t.clone(), cells.chain([all]))
                },
            );
            let file = format!("table_seeds_{}.png", r.name().to_lowercase());
            (file, chart.y_range(0.0, 100.0).size(1800, 620))
        })
        .collect();
    Ok(PooledTable {
        charts,
        markdown: md,
        csv: csv_table(&csv_header, &csv_rows),
        json: json!({
            "seeds": dirs.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            "methods": Value::Object(per_method),
            "averages": Value::Object(per_method_averages),
            "t_test_mckd_gt": Value::Object(tests),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds::tests::Scratch;

    fn write(dir: &Path, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("per_case.csv"), text).unwrap();
    }

    const HEADER: &str = "method,subset,case,dice_et,dice_tc,dice_wt,hd95_et,hd95_tc,hd95_wt\n";

    /// The rows both seeds of the pooling test share: MCKD on t1c, the Baseline everywhere.
    const SAME: &str = "mckd,t1c,c1,0.5,0.5,0.5,1,1,1\n\
                        mckd,t1c,c2,0.5,0.5,0.5,1,1,1\n\
                        baseline,flair,c1,0.0,0.1,0.5,10,20,30\n\
                        baseline,flair,c2,0.0,0.1,0.5,10,20,30\n\
                        baseline,t1c,c1,0.4,0.4,0.4,1,1,1\n\
                        baseline,t1c,c2,0.4,0.4,0.4,1,1,1\n";

    #[test]
    fn cells_pool_every_case_of_every_seed() {
        let tmp = Scratch::new("pooled-cells");
        let (a, b) = (tmp.path().join("seed-0"), tmp.path().join("seed-1"));
        // Two seeds × two cases; MCKD's WT on flair is 0.6, 0.8 (seed 0) and 0.7, 0.9
        // (seed 1): mean 0.75, sample std sqrt(((.15²+.05²)·2)/3) = 0.129099...
        write(
            &a,
            &format!(
                "{HEADER}mckd,flair,c1,0.1,0.2,0.6,10,20,30\n\
                 mckd,flair,c2,NaN,0.4,0.8,NaN,inf,50\n{SAME}"
            ),
        );
        write(
            &b,
            &format!(
                "{HEADER}mckd,flair,c1,0.3,0.2,0.7,10,20,30\n\
                 mckd,flair,c2,0.5,0.4,0.9,10,20,30\n{SAME}"
            ),
        );
        let t = pooled_table(&[(0, a), (1, b)]).unwrap();
        let wt = &t.json["methods"]["mckd"]["flair"]["wt"];
        assert!((wt["dice_mean"].as_f64().unwrap() - 0.75).abs() < 1e-12);
        let sd = (((0.15f64).powi(2) + (0.05f64).powi(2)) * 2.0 / 3.0).sqrt();
        assert!((wt["dice_std"].as_f64().unwrap() - sd).abs() < 1e-12);
        // ET: the NaN case (region absent from both masks) is left out: 3 samples.
        let et = &t.json["methods"]["mckd"]["flair"]["et"];
        assert_eq!(et["n_dice"], 3);
        assert!((et["dice_mean"].as_f64().unwrap() - 0.3).abs() < 1e-12);
        // TC HD95: the empty prediction counts as 373 mm.
        let tc = &t.json["methods"]["mckd"]["flair"]["tc"];
        assert_eq!(tc["n_empty_prediction"], 1);
        assert!((tc["hd95_mean"].as_f64().unwrap() - (20.0 * 3.0 + 373.0) / 4.0).abs() < 1e-9);
        // Average (no t1c) of MCKD WT = the flair cell: 75.00 ± 12.91 in the Dice table.
        assert!(
            t.markdown
                .contains("| Average (no t1c) | 30.00 ± 20.00 | 30.00 ± 11.55 | 75.00 ± 12.91 |"),
            "{}",
            t.markdown
        );
        // ET pooled means, MCKD vs Baseline: flair 0.3 vs 0, t1c 0.5 vs 0.4; differences
        // 0.3, 0.1 → t = 2 with 1 degree of freedom (Cauchy): p = 1/2 − atan(2)/π.
        let p = t.json["t_test_mckd_gt"]["baseline"]["dice_et"]["p"]
            .as_f64()
            .unwrap();
        assert!(
            (p - (0.5 - 2f64.atan() / std::f64::consts::PI)).abs() < 1e-9,
            "{p}"
        );
        assert_eq!(t.csv.lines().count(), 1 + 2 * 2 * 3);
        // The same row in the JSON, unrounded: 0.75 ± sqrt(((.15² + .05²)·2)/3).
        let avg = &t.json["averages"]["mckd"]["no_t1c"]["wt"];
        assert!((avg["dice_mean"].as_f64().unwrap() - 0.75).abs() < 1e-12);
        assert!((avg["dice_std"].as_f64().unwrap() - sd).abs() < 1e-12);
        assert_eq!(avg["n_samples"], 4);
        // The WT chart: clusters flair, t1c, Average; MCKD's bars are the pooled cells (75,
        // 50) and the mean over the samples of each one's subset mean: c1 (0.6 + 0.5) / 2 …
        let (file, wt) = &t.charts[2];
        assert_eq!(file, "table_seeds_wt.png");
        assert_eq!(wt.groups, ["flair", "t1c", "Average"]);
        let avg = 100.0 * (0.55 + 0.65 + 0.6 + 0.7) / 4.0;
        let (name, v) = &wt.series[0];
        assert_eq!(name, "MCKD");
        assert!(
            (v[0] - 75.0).abs() < 1e-9 && (v[1] - 50.0).abs() < 1e-9,
            "{v:?}"
        );
        assert!((v[2] - avg).abs() < 1e-9, "{v:?}");
        assert_eq!(wt.series[1].1, [50.0, 40.0, 45.0]);
        let png = tmp.path().join(file);
        wt.save_png(&png).unwrap();
        assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    }

    #[test]
    fn a_bad_line_names_the_file_and_the_line() {
        let tmp = Scratch::new("pooled-bad");
        write(
            tmp.path(),
            &format!("{HEADER}mckd,flair,c1,0.1,x,0.6,10,20,30\n"),
        );
        let err = read_per_case(&tmp.path().join("per_case.csv"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("per_case.csv") && err.contains("line 2"),
            "{err}"
        );
        write(tmp.path(), "method,subset\n");
        let err = read_per_case(&tmp.path().join("per_case.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("first line"), "{err}");
        write(
            tmp.path(),
            &format!("{HEADER}mckd,flair+pd,c1,0.1,0.1,0.6,10,20,30\n"),
        );
        let err = read_per_case(&tmp.path().join("per_case.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
