//! The phantom demo over several seeds, and its summary across seeds.
//!
//! One demo on 8 test phantoms moves by several Dice points from seed to seed (phantoms,
//! split, initialisation and subset sampling all follow the seed), so a claim about MCKD vs
//! the Baseline needs several seeds. [`demo_seeds`] runs the demo for seeds `s, s+1, …` into
//! `seed-<s>/` (a seed whose folder already holds the results of the same settings is reused,
//! so an interrupted run resumes), then [`summarise`] reads every `seed-*/results.json` and
//! writes `seeds_summary.md` and `seeds_summary.json`: per seed the mean Dice over the 7
//! subsets without t1c (the regions averaged, as in the demo's table) for both methods, the
//! difference per region, the final IWV; across seeds mean ± std, the one-tailed paired t-test
//! of MCKD > Baseline, and in how many seeds MCKD is ahead and the IWV ends highest on t1c.

use std::path::{Path, PathBuf};

use mckd_train::report::{Results, json_f64, markdown_table};
use mckd_train::run::RunDir;
use mckd_train::stats::{mean_std, paired_t_test_greater};
use mckd_volume::MODALITIES;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::demo::{DemoConfig, demo};
use crate::error::{BratsError, Result};
use crate::pooled::{PooledTable, pooled_table};
use crate::train::T1C;

/// The regions in table order (metric keys `dice_et`, `dice_tc`, `dice_wt`).
const REGIONS: [&str; 3] = ["et", "tc", "wt"];

/// One seed's numbers, read back from its `results.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Mean Dice (fraction) over the subsets without t1c, per region `[ET, TC, WT]`, MCKD.
    pub mckd: [f64; 3],
    /// The same for the Baseline.
    pub baseline: [f64; 3],
    /// Final normalised IWV in modality order (flair, t1, t1c, t2).
    pub iwv: [f64; 4],
    /// Wall time of the seed's demo (s).
    pub wall_seconds: f64,
}

impl SeedResult {
    /// Regions averaged, MCKD.
    pub fn mckd_mean(&self) -> f64 {
        self.mckd.iter().sum::<f64>() / 3.0
    }

    /// Regions averaged, Baseline.
    pub fn baseline_mean(&self) -> f64 {
        self.baseline.iter().sum::<f64>() / 3.0
    }

    /// Index of the modality with the largest final weight.
    pub fn top_modality(&self) -> usize {
        (0..4)
            .max_by(|&a, &b| self.iwv[a].total_cmp(&self.iwv[b]))
            .unwrap_or(0)
    }

    /// Reads a demo's `results.json`.
    pub fn read(path: &Path, seed: u64) -> Result<Self> {
        let bad = |problem: String| BratsError::Config {
            path: path.to_path_buf(),
            problem,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let r: Results =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a results file: {e}")))?;
        let mut sums = [[0.0f64; 3]; 2];
        let mut counts = [[0usize; 3]; 2];
        for row in &r.rows {
            let m = match row.method.as_str() {
                "mckd" => 0,
                "baseline" => 1,
                _ => continue,
            };
            if row.subset.contains(MODALITIES[T1C]) {
                continue;
            }
            for (k, region) in REGIONS.iter().enumerate() {
                // NaN (both masks empty on every case) is stored as null and skipped, as the
                // demo's own averages do.
                let v = row.metrics.get(&format!("dice_{region}"));
                if !v.is_nan() {
                    sums[m][k] += v;
                    counts[m][k] += 1;
                }
            }
        }
        let mean = |m: usize| -> Result<[f64; 3]> {
            let mut out = [0.0; 3];
            for k in 0..3 {
                if counts[m][k] == 0 {
                    return Err(bad(format!(
                        "no {} Dice of the {} method on a subset without t1c",
                        REGIONS[k].to_uppercase(),
                        ["mckd", "baseline"][m]
                    )));
                }
                out[k] = sums[m][k] / counts[m][k] as f64;
            }
            Ok(out)
        };
        let mut iwv = [f64::NAN; 4];
        for (i, name) in MODALITIES.iter().enumerate() {
            iwv[i] = r
                .iwv
                .get(*name)
                .and_then(Value::as_f64)
                .ok_or_else(|| bad(format!("no IWV value for {name}")))?;
        }
        Ok(Self {
            seed,
            mckd: mean(0)?,
            baseline: mean(1)?,
            iwv,
            wall_seconds: r
                .extra
                .get("wall_seconds")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN),
        })
    }
}

/// The summary across seeds.
#[derive(Debug, Clone)]
pub struct SeedsSummary {
    /// Per seed, in seed order.
    pub seeds: Vec<SeedResult>,
    /// `seeds_summary.md` content.
    pub markdown: String,
    /// `seeds_summary.json` content (the pooled table's numbers under `pooled`).
    pub json: Value,
    /// Table 1 pooled over every seed's test cases.
    pub pooled: PooledTable,
}

impl SeedsSummary {
    /// Writes `seeds_summary.md`/`.json` and the pooled Table 1 (`table_seeds.md`/`.csv`,
    /// one bar chart per region `table_seeds_{et,tc,wt}.png`).
    pub fn write(&self, out: &RunDir) -> Result<()> {
        out.write("seeds_summary.md", self.markdown.as_bytes())?;
        out.write_json("seeds_summary.json", &self.json)?;
        out.write("table_seeds.md", self.pooled.markdown.as_bytes())?;
        out.write("table_seeds.csv", self.pooled.csv.as_bytes())?;
        for (file, chart) in &self.pooled.charts {
            chart.save_png(out.file(file))?;
        }
        Ok(())
    }
}

/// The folder of one seed inside a multi-seed demo folder.
pub fn seed_dir(out: &Path, seed: u64) -> PathBuf {
    out.join(format!("seed-{seed}"))
}

/// Whether `dir` holds a finished demo of exactly `cfg` (its `results.json` records the
/// demo settings; compared as this version reads them, so that settings added since, with
/// their defaults, do not make a finished seed run again).
fn finished_with(dir: &Path, cfg: &DemoConfig) -> bool {
    let Ok(bytes) = std::fs::read(dir.join("results.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return false;
    };
    v.get("demo")
        .and_then(|d| DemoConfig::deserialize(d).ok())
        .is_some_and(|stored| stored == *cfg)
}

/// The settings of each seed of a `seeds`-seed experiment, from `cfg.run.seed` on.
fn seed_configs(cfg: &DemoConfig, seeds: u64) -> Vec<(u64, DemoConfig)> {
    (cfg.run.seed..cfg.run.seed + seeds)
        .map(|seed| {
            let mut c = cfg.clone();
            c.run.seed = seed;
            (seed, c)
        })
        .collect()
}

/// Refuses to continue the experiment folder `out` (one seed: the folder itself; more: its
/// `seed-<s>/` folders) with settings other than those it was started with
/// (`demo::check_same_settings`). The CLI calls it before it touches the folder, so a
/// refused `--resume` leaves the folder as it was.
pub fn check_resumed_settings(cfg: &DemoConfig, seeds: u64, out: &Path) -> Result<()> {
    if seeds == 1 {
        return crate::demo::check_same_settings(cfg, out);
    }
    for (seed, c) in seed_configs(cfg, seeds) {
        crate::demo::check_same_settings(&c, &seed_dir(out, seed))?;
    }
    Ok(())
}

/// Runs the demo for `seeds` seeds starting at `cfg.seed`, each into `seed-<s>/` of `out`
/// (finished seeds with the same settings are reused), then writes the summary.
pub fn demo_seeds(
    cfg: &DemoConfig,
    seeds: u64,
    out: &RunDir,
    resume: bool,
) -> Result<SeedsSummary> {
    if seeds == 0 {
        return Err(BratsError::Invalid("--seeds must be at least 1".into()));
    }
    let configs = seed_configs(cfg, seeds);
    // Every seed's folder before any training (not after an hour of the first seed).
    check_resumed_settings(cfg, seeds, out.path())?;
    let mut dirs = Vec::new();
    for (seed, c) in configs {
        let dir = seed_dir(out.path(), seed);
        if finished_with(&dir, &c) {
            log::info!("seed {seed}: reusing {}", dir.display());
        } else {
            log::info!("seed {seed}: running the demo into {}", dir.display());
            demo(&c, &RunDir::create(&dir)?, resume)?;
        }
        dirs.push((seed, dir));
    }
    let summary = summarise(&dirs)?;
    summary.write(out)?;
    Ok(summary)
}

/// Summarises finished demo folders `(seed, folder)`.
pub fn summarise(dirs: &[(u64, PathBuf)]) -> Result<SeedsSummary> {
    let seeds = dirs
        .iter()
        .map(|(s, d)| SeedResult::read(&d.join("results.json"), *s))
        .collect::<Result<Vec<_>>>()?;
    let pct = |v: f64| format!("{:.2}", 100.0 * v);
    let signed = |v: f64| format!("{:+.2}", 100.0 * v);
    let header: Vec<String> = [
        "seed",
        "MCKD",
        "Baseline",
        "MCKD − Baseline",
        "Δ ET",
        "Δ TC",
        "Δ WT",
        "IWV end (flair, t1, t1c, t2)",
        "wall (min)",
    ]
    .map(String::from)
    .to_vec();
    let mut rows = Vec::new();
    for s in &seeds {
        let top = s.top_modality();
        let iwv = (0..4)
            .map(|i| {
                let v = format!("{:.3}", s.iwv[i]);
                if i == top { format!("**{v}**") } else { v }
            })
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(vec![
            s.seed.to_string(),
            pct(s.mckd_mean()),
            pct(s.baseline_mean()),
            signed(s.mckd_mean() - s.baseline_mean()),
            signed(s.mckd[0] - s.baseline[0]),
            signed(s.mckd[1] - s.baseline[1]),
            signed(s.mckd[2] - s.baseline[2]),
            iwv,
            format!("{:.1}", s.wall_seconds / 60.0),
        ]);
    }
    let m: Vec<f64> = seeds.iter().map(SeedResult::mckd_mean).collect();
    let b: Vec<f64> = seeds.iter().map(SeedResult::baseline_mean).collect();
    let d: Vec<f64> = m.iter().zip(&b).map(|(x, y)| x - y).collect();
    let ms = |v: &[f64]| {
        let (mean, sd) = mean_std(v);
        format!("{:.2} ± {:.2}", 100.0 * mean, 100.0 * sd)
    };
    let region_diff = |k: usize| -> Vec<f64> {
        seeds
            .iter()
            .map(|s| s.mckd[k] - s.baseline[k])
            .collect::<Vec<_>>()
    };
    let iwv_mean = (0..4)
        .map(|i| {
            format!(
                "{:.3}",
                mean_std(&seeds.iter().map(|s| s.iwv[i]).collect::<Vec<_>>()).0
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    let walls: Vec<f64> = seeds.iter().map(|s| s.wall_seconds / 60.0).collect();
    rows.push(vec![
        "mean ± std".into(),
        ms(&m),
        ms(&b),
        ms(&d),
        ms(&region_diff(0)),
        ms(&region_diff(1)),
        ms(&region_diff(2)),
        iwv_mean,
        format!("{:.1}", mean_std(&walls).0),
    ]);
    let test = paired_t_test_greater(&m, &b);
    let ahead = d.iter().filter(|&&x| x > 0.0).count();
    let t1c_top = seeds.iter().filter(|s| s.top_modality() == T1C).count();
    let n = seeds.len();
    let mut markdown = String::from(
        "Mean Dice (%) over the 7 subsets without t1c (ET, TC, WT averaged), per seed.\n\n",
    );
    markdown.push_str(&markdown_table(&header, &rows));
    markdown.push('\n');
    markdown.push_str(&match test {
        Some((t, p)) => format!(
            "One-tailed paired t-test across seeds, MCKD > Baseline: t = {t:.2}, p = {p:.3}. "
        ),
        None => "One seed: no test across seeds. ".into(),
    });
    markdown.push_str(&format!(
        "MCKD ahead in {ahead}/{n} seeds; the IWV ends highest on t1c in {t1c_top}/{n} seeds.\n"
    ));
    let pooled = pooled_table(dirs)?;
    markdown
        .push_str(
            "\nTable 1 pooled over the seeds' test cases (mean ± std): `table_seeds.md`; as bar \
             charts per region: `table_seeds_et.png`, `table_seeds_tc.png`, `table_seeds_wt.png`.\n",
        );
    let json = json!({
        "pooled": pooled.json,
        "seeds": seeds.iter().map(|s| json!({
            "seed": s.seed,
            "mckd": {"mean": json_f64(s.mckd_mean()), "dice_et": json_f64(s.mckd[0]),
                     "dice_tc": json_f64(s.mckd[1]), "dice_wt": json_f64(s.mckd[2])},
            "baseline": {"mean": json_f64(s.baseline_mean()), "dice_et": json_f64(s.baseline[0]),
                         "dice_tc": json_f64(s.baseline[1]), "dice_wt": json_f64(s.baseline[2])},
            "iwv": MODALITIES.iter().zip(s.iwv).map(|(k, v)| ((*k).to_string(), json_f64(v)))
                .collect::<Map<String, Value>>(),
            "wall_seconds": json_f64(s.wall_seconds),
        })).collect::<Vec<_>>(),
        "difference_mean": json_f64(mean_std(&d).0),
        "difference_std": json_f64(mean_std(&d).1),
        "t_test_mckd_gt_baseline": test.map(|(t, p)| json!({"t": json_f64(t), "p": json_f64(p)})),
        "seeds_mckd_ahead": ahead,
        "seeds_iwv_top_t1c": t1c_top,
    });
    Ok(SeedsSummary {
        seeds,
        markdown,
        json,
        pooled,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mckd_train::config::Budget;
    use mckd_train::report::Row;

    /// A scratch folder removed on drop.
    pub(crate) struct Scratch(PathBuf);

    impl Scratch {
        pub(crate) fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("mckd-seeds-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A results file with the given per-subset Dice for both methods (the same value in every
    /// region of a subset, except that subsets with t1c get 0.99 so that they must be skipped).
    fn write_results(dir: &Path, mckd: f64, baseline: f64, iwv: [f32; 4]) {
        let mut rows = Vec::new();
        for (method, v) in [("mckd", mckd), ("baseline", baseline)] {
            for mask in mckd_core::all_subsets(4) {
                let subset = mckd_core::present_names(&MODALITIES, &mask);
                let value = if mask[T1C] { 0.99 } else { v };
                let mut row = Row::new(method, subset, "dice_et", value);
                row.metrics.set("dice_tc", value);
                // WT 0.1 higher, and one NaN region that must be skipped.
                let wt = if mask == [true, false, false, false] {
                    f64::NAN
                } else {
                    value + 0.1
                };
                row.metrics.set("dice_wt", wt);
                rows.push(row);
            }
        }
        let names: Vec<String> = MODALITIES.iter().map(|s| s.to_string()).collect();
        let mut extra = Map::new();
        extra.insert("wall_seconds".into(), json_f64(120.0));
        let r = Results {
            task: "brats".into(),
            rows,
            iwv: mckd_train::report::iwv_map(&names, &iwv),
            extra,
        };
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("results.json"), serde_json::to_vec(&r).unwrap()).unwrap();
        // Its per-case scores: one case whose flair-only Dice is the seed's value.
        let csv = format!(
            "method,subset,case,dice_et,dice_tc,dice_wt,hd95_et,hd95_tc,hd95_wt\n\
             mckd,flair,c1,{mckd},{mckd},{mckd},5,5,5\n\
             baseline,flair,c1,{baseline},{baseline},{baseline},inf,5,5\n"
        );
        std::fs::write(dir.join("per_case.csv"), csv).unwrap();
    }

    #[test]
    fn summary_averages_the_subsets_without_t1c_and_tests_across_seeds() {
        let tmp = Scratch::new("summary");
        let cases = [
            (0u64, 0.60, 0.50, [0.1, 0.2, 0.6, 0.1]),
            (1, 0.55, 0.52, [0.4, 0.2, 0.3, 0.1]),
            (2, 0.40, 0.45, [0.1, 0.1, 0.7, 0.1]),
        ];
        let mut dirs = Vec::new();
        for (seed, m, b, w) in cases {
            let d = seed_dir(tmp.path(), seed);
            write_results(&d, m, b, w);
            dirs.push((seed, d));
        }
        let s = summarise(&dirs).unwrap();
        // ET and TC are the subset value, WT the value + 0.1: the t1c subsets (0.99) and the
        // NaN are skipped.
        assert!((s.seeds[0].mckd[0] - 0.60).abs() < 1e-12);
        assert!((s.seeds[0].mckd[2] - 0.70).abs() < 1e-12);
        assert!((s.seeds[0].mckd_mean() - (0.6 + 0.6 + 0.7) / 3.0).abs() < 1e-12);
        assert!((s.seeds[2].baseline_mean() - (0.45 + 0.45 + 0.55) / 3.0).abs() < 1e-12);
        // Differences 0.10, 0.03, −0.05: mean 0.02667, sd 0.07506 → t = 0.6153 (2 dof),
        // one-tailed p = 0.3005 (Student's t with 2 dof: P(T > t) = (1 − t/√(t² + 2)) / 2).
        let json = &s.json;
        let t = json["t_test_mckd_gt_baseline"]["t"].as_f64().unwrap();
        let p = json["t_test_mckd_gt_baseline"]["p"].as_f64().unwrap();
        assert!((t - 0.6153).abs() < 1e-3, "t = {t}");
        assert!((p - 0.3005).abs() < 1e-3, "p = {p}");
        assert_eq!(json["seeds_mckd_ahead"], 2);
        assert_eq!(json["seeds_iwv_top_t1c"], 2);
        assert!(
            s.markdown.contains("| 0 | 63.33 | 53.33 | +10.00 |"),
            "{}",
            s.markdown
        );
        assert!(s.markdown.contains("MCKD ahead in 2/3 seeds"));
        assert!(s.markdown.contains("**0.600**"), "top IWV in bold");
        // The pooled table: flair-only MCKD Dice 0.60, 0.55, 0.40 over the three seeds →
        // 51.67 ± 10.41; the Baseline's empty ET predictions count as 373 mm.
        assert!(
            s.pooled
                .markdown
                .contains("| flair | 51.67 ± 10.41 | 51.67 ± 10.41 | 51.67 ± 10.41 |"),
            "{}",
            s.pooled.markdown
        );
        assert!(
            s.pooled
                .markdown
                .contains("| flair | 5.00 ± 0.00 | 5.00 ± 0.00 | 5.00 ± 0.00 | 373.00 ± 0.00 |")
        );
        assert_eq!(
            json["pooled"]["methods"]["baseline"]["flair"]["et"]["n_empty_prediction"],
            3
        );
    }

    #[test]
    fn a_seeds_folder_is_summarised_again_from_its_finished_seeds() {
        let tmp = Scratch::new("again");
        // Seeds 10 and 2 finished (read in seed order), seed-3 unfinished, one stray folder.
        write_results(&seed_dir(tmp.path(), 10), 0.5, 0.4, [0.1, 0.2, 0.6, 0.1]);
        write_results(&seed_dir(tmp.path(), 2), 0.3, 0.4, [0.4, 0.2, 0.3, 0.1]);
        std::fs::create_dir_all(seed_dir(tmp.path(), 3)).unwrap();
        std::fs::create_dir_all(tmp.path().join("seed-x")).unwrap();
        let out = RunDir::create(tmp.path()).unwrap();
        let s = crate::grid::summarise_seeds_folder(&out).unwrap().unwrap();
        assert_eq!(s.seeds.iter().map(|r| r.seed).collect::<Vec<_>>(), [2, 10]);
        for f in [
            "seeds_summary.md",
            "seeds_summary.json",
            "table_seeds.md",
            "table_seeds.csv",
            "table_seeds_et.png",
            "table_seeds_tc.png",
            "table_seeds_wt.png",
        ] {
            assert!(tmp.path().join(f).is_file(), "{f}");
        }
        // flair-only MCKD Dice 0.3 and 0.5: 40.00 ± 14.14.
        let table = std::fs::read_to_string(tmp.path().join("table_seeds.md")).unwrap();
        assert!(table.contains("| flair | 40.00 ± 14.14 |"), "{table}");
        let empty = Scratch::new("again-empty");
        let out = RunDir::create(empty.path()).unwrap();
        assert!(crate::grid::summarise_seeds_folder(&out).unwrap().is_none());
    }

    #[test]
    fn a_broken_results_file_is_named_in_the_error() {
        let tmp = Scratch::new("broken");
        let d = seed_dir(tmp.path(), 3);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("results.json"), b"{ not json").unwrap();
        let err = summarise(&[(3, d.clone())]).unwrap_err().to_string();
        assert!(
            err.contains("seed-3") && err.contains("results.json"),
            "{err}"
        );
        let missing = summarise(&[(4, seed_dir(tmp.path(), 4))])
            .unwrap_err()
            .to_string();
        assert!(missing.contains("seed-4"), "{missing}");
    }

    #[test]
    fn finished_seeds_are_reused_only_with_the_same_settings() {
        let tmp = Scratch::new("reuse");
        let cfg = DemoConfig::preset(crate::demo::DemoPreset::Reference, true, 0);
        let d = tmp.path().join("s");
        std::fs::create_dir_all(&d).unwrap();
        let mut v = json!({"task": "brats", "rows": [], "iwv": {}});
        v["demo"] = serde_json::to_value(&cfg).unwrap();
        std::fs::write(d.join("results.json"), serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(finished_with(&d, &cfg));
        let mut other = cfg.clone();
        other.run.method.mckd_mut().unwrap().alpha = 0.05;
        assert!(!finished_with(&d, &other));
        assert!(!finished_with(&tmp.path().join("none"), &cfg));
        // Written by a version without a setting that has a default (the peers'): still the
        // same settings, so the seed is not trained again.
        v["demo"].as_object_mut().unwrap().remove("peers").unwrap();
        std::fs::write(d.join("results.json"), serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(finished_with(&d, &cfg));
    }

    /// Resuming an experiment folder with another budget is refused with the file, the
    /// setting and both values; more methods, another data folder or checkpoint interval, and
    /// settings added since (absent from the file, at their defaults) are not differences.
    #[test]
    fn resuming_with_other_settings_is_refused_naming_the_first_difference() {
        use crate::demo::check_same_settings;
        let tmp = Scratch::new("settings");
        let d = tmp.path();
        let cfg = DemoConfig::preset(crate::demo::DemoPreset::Reference, true, 0);
        check_same_settings(&cfg, d).expect("a new folder has nothing to differ from");
        let mut stored = serde_json::to_value(&cfg).unwrap();
        stored.as_object_mut().unwrap().remove("peers").unwrap();
        std::fs::write(d.join("demo_config.json"), stored.to_string()).unwrap();
        check_same_settings(&cfg, d).expect("the same settings");
        let mut fine = cfg.clone();
        fine.methods.push(crate::config::Method::Hemis);
        fine.run.task.data = "/elsewhere/cases".into();
        fine.run.loop_.checkpoint_every += 7;
        check_same_settings(&fine, d).expect("more methods, other data folder and interval");
        let Budget::Iterations(n) = cfg.run.loop_.budget else {
            panic!("the preset counts iterations")
        };
        let mut longer = cfg.clone();
        longer.run.loop_.budget = Budget::Iterations(n + 1000);
        let err = check_same_settings(&longer, d).unwrap_err().to_string();
        let want = [
            "demo_config.json".to_string(),
            "run.loop.budget".into(),
            format!("{n}"),
            format!("{}", n + 1000),
        ];
        for w in &want {
            assert!(err.contains(w.as_str()), "missing {w:?} in: {err}");
        }
        assert!(
            !err.contains("  "),
            "the message is one line of prose: {err}"
        );
        std::fs::write(d.join("demo_config.json"), "{").unwrap();
        let err = check_same_settings(&cfg, d).unwrap_err().to_string();
        assert!(
            err.contains("demo_config.json") && err.contains("cannot read"),
            "{err}"
        );
    }

    /// `demo_seeds` checks every seed's folder before it trains any: a later seed started
    /// with other settings stops it before the first seed's folder is touched.
    #[test]
    fn seeds_are_checked_before_any_training() {
        let tmp = Scratch::new("seedcheck");
        let cfg = DemoConfig::preset(crate::demo::DemoPreset::Reference, true, 0);
        let mut other = cfg.clone();
        other.run.seed = 1;
        other.run.method.mckd_mut().unwrap().alpha = 0.05;
        let s1 = seed_dir(tmp.path(), 1);
        std::fs::create_dir_all(&s1).unwrap();
        std::fs::write(
            s1.join("demo_config.json"),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        let out = RunDir::create(tmp.path()).unwrap();
        let err = demo_seeds(&cfg, 2, &out, true).unwrap_err().to_string();
        assert!(err.contains("seed-1") && err.contains("alpha"), "{err}");
        assert!(!seed_dir(tmp.path(), 0).exists(), "seed 0 was started");
    }
}
