//! Issue 21: a grid planned into run folders, trained one run at a time (`mckd run-one`, as a
//! Slurm array task would), and merged gives the one-machine command's numbers; a run folder is
//! self-contained; missing and failed runs are named by the merge. (The Slurm end-to-end test
//! is `.ci/slurm-test.sh`, which CI runs after the tests.)

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::mckd;

fn kit() -> PathBuf {
    let dir = common::data_dir();
    assert!(
        dir.join("avmnist/mnist").is_dir(),
        "AV-MNIST kit not found at {} (set MCKD_DATA_DIR)",
        dir.display()
    );
    dir
}

fn ok(out: Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what}: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small grid: Baseline and MCKD on audio_10, 2 seeds, 1 epoch each.
fn reproduce(out: &Path, extra: &[&str]) -> Output {
    mckd()
        .args(["avmnist", "reproduce", "--quiet", "--rows", "audio_10"])
        .args([
            "--methods",
            "baseline,mckd",
            "--seeds",
            "2",
            "--epochs",
            "1",
        ])
        .arg("--data-dir")
        .arg(kit())
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap()
}

/// The numbers of a merged `results.json` (wall times and the config's data folder aside).
fn numbers(results: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "rows": results["rows"],
        "iwv": results["iwv"],
        "iwv_final": results["iwv_final"],
        "t_tests": results["t_tests"],
    })
}

fn run_folders(grid: &Path) -> Vec<PathBuf> {
    let plan = json(&grid.join("plan.json"));
    plan["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| grid.join(r["dir"].as_str().unwrap()))
        .collect()
}

#[test]
fn a_planned_grid_trained_run_by_run_and_merged_equals_the_one_machine_run() {
    let tmp = tempfile::Builder::new()
        .prefix("mckd-cluster-")
        .tempdir()
        .unwrap();
    let whole = tmp.path().join("whole");
    ok(reproduce(&whole, &[]), "one-machine reproduce");

    let grid = tmp.path().join("grid");
    let printed = ok(reproduce(&grid, &["--plan", "--slurm"]), "reproduce --plan");
    assert!(
        printed.contains("sbatch") && printed.contains("merge"),
        "{printed}"
    );
    let runs = run_folders(&grid);
    assert_eq!(runs.len(), 4);
    // Nothing trained yet; the Slurm files list every run, one array task each.
    for r in &runs {
        assert!(r.join("config.json").is_file() && !r.join("result.json").exists());
    }
    let list = std::fs::read_to_string(grid.join("runs.txt")).unwrap();
    assert_eq!(list.lines().count(), 4, "{list}");
    let script = std::fs::read_to_string(grid.join("submit.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=0-3"), "{script}");

    // A run folder is self-contained: copied elsewhere and trained there (from another
    // working folder, without MCKD_DATA_DIR), it gives the same result as in the grid.
    let moved = tmp.path().join("elsewhere").join("run");
    std::fs::create_dir_all(&moved).unwrap();
    std::fs::copy(runs[0].join("config.json"), moved.join("config.json")).unwrap();
    ok(
        mckd()
            .env_remove("MCKD_DATA_DIR")
            .current_dir(tmp.path())
            .arg("run-one")
            .arg(&moved)
            .output()
            .unwrap(),
        "run-one of a moved run",
    );

    // Before any run: the merge lists them as missing and fails without --allow-partial.
    let out = mckd()
        .args(["avmnist", "merge", "--grid"])
        .arg(&grid)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a merge with every run missing succeeded"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("missing") && err.contains("baseline-audio_10-seed1"),
        "{err}"
    );

    for r in &runs {
        ok(mckd().arg("run-one").arg(r).output().unwrap(), "run-one");
    }
    // A finished run is not trained again.
    let again = mckd().arg("run-one").arg(&runs[0]).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("finished"));
    assert_eq!(
        json(&moved.join("result.json"))["accuracy"],
        json(&runs[0].join("result.json"))["accuracy"]
    );
    assert_eq!(
        std::fs::read(moved.join("train_log.csv")).unwrap(),
        std::fs::read(runs[0].join("train_log.csv")).unwrap()
    );

    ok(
        mckd()
            .args(["avmnist", "merge", "--grid"])
            .arg(&grid)
            .output()
            .unwrap(),
        "merge",
    );
    assert_eq!(
        numbers(&json(&grid.join("results.json"))),
        numbers(&json(&whole.join("results.json"))),
        "the merged grid's numbers differ from the one-machine run's"
    );

    // A failed run and a missing one: named, non-zero exit; --allow-partial writes the tables.
    let status = runs[1].join("status.json");
    std::fs::write(
        &status,
        r#"{"state": "failed", "message": "killed by the test", "updated": "20261206-000000"}"#,
    )
    .unwrap();
    std::fs::remove_file(runs[2].join("result.json")).unwrap();
    std::fs::write(
        runs[2].join("status.json"),
        r#"{"state": "running", "updated": "20261206-000000"}"#,
    )
    .unwrap();
    let out = mckd()
        .args(["avmnist", "merge", "--grid"])
        .arg(&grid)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a partial merge succeeded");
    assert!(!err.contains("panicked"), "{err}");
    let label = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        err.contains("failed") && err.contains(&label(&runs[1])),
        "{err}"
    );
    assert!(
        err.contains("missing") && err.contains(&label(&runs[2])),
        "{err}"
    );
    ok(
        mckd()
            .args(["avmnist", "merge", "--allow-partial", "--grid"])
            .arg(&grid)
            .output()
            .unwrap(),
        "merge --allow-partial",
    );
    let partial = json(&grid.join("results.json"));
    assert_eq!(partial["failed_runs"], serde_json::json!([label(&runs[1])]));
    assert_eq!(
        partial["missing_runs"],
        serde_json::json!([label(&runs[2])])
    );
}
