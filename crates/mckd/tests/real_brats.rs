//! Issue 16 on real data: a 2 mm run on three of the real BraTS 2018 cases goes end to end
//! through the command line (train → predict → evaluate), and its label maps are on the input's
//! 1 mm grid with the input's header. Three cases and a few iterations keep it to seconds; the
//! cases are read from `$MCKD_DATA_DIR/brats-real` (default `../shared/data/brats-real`).

use std::path::PathBuf;
use std::process::Command;

use mckd_volume::{LabelConvention, read_header, read_labels};

mod common;
use common::mckd;

fn real_cases() -> PathBuf {
    let root = common::data_dir().join("brats-real");
    assert!(
        root.join(CASES[0]).is_dir(),
        "real BraTS cases not found at {} (set MCKD_DATA_DIR to the folder holding brats-real/)",
        root.display()
    );
    root
}

/// Three cases: with the default 70 / 10 / 20 % fractions, one each for train, meta-val and
/// test.
const CASES: [&str; 3] = [
    "Brats18_2013_11_1",
    "Brats18_2013_23_1",
    "Brats18_CBICA_ABM_1",
];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?}: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned() + &err
}

#[test]
fn a_2mm_run_on_real_cases_trains_predicts_on_the_1mm_grid_and_evaluates() {
    let root = real_cases();
    let tmp = tempfile::Builder::new()
        .prefix("mckd-real-brats-")
        .tempdir()
        .unwrap();
    let cases = tmp.path().join("cases");
    std::fs::create_dir_all(&cases).unwrap();
    for c in CASES {
        std::os::unix::fs::symlink(root.join(c), cases.join(c)).unwrap();
    }
    // The prepared (cropped, resampled) cases go to the test's own cache.
    let cache = tmp.path().join("cache");
    let train = tmp.path().join("run");
    run(mckd()
        .env("MCKD_CACHE_DIR", &cache)
        .args([
            "brats",
            "train",
            "--quiet",
            "--spacing",
            "2",
            "--iterations",
            "3",
        ])
        .args([
            "--base", "2", "--crop", "32", "32", "32", "--tile", "32", "32", "32",
        ])
        .arg("--data")
        .arg(&cases)
        .arg("--out")
        .arg(&train));
    let splits: serde_json::Value =
        serde_json::from_slice(&std::fs::read(train.join("splits.json")).unwrap()).unwrap();
    let test: Vec<String> = splits["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(test.len(), 1, "{splits}");
    let case = &test[0];

    let pred = tmp.path().join("pred");
    run(mckd()
        .env("MCKD_CACHE_DIR", &cache)
        .args([
            "brats",
            "predict",
            "--quiet",
            "--subsets",
            "t1,flair+t1+t1c+t2",
        ])
        .arg("--run")
        .arg(&train)
        .arg("--data")
        .arg(&cases)
        .args(["--cases", case])
        .arg("--out")
        .arg(&pred));
    // On the input's 1 mm grid, with its header, labels of the 2018 convention only.
    let flair = cases.join(case).join(format!("{case}_flair.nii.gz"));
    let input = read_header(&flair).unwrap();
    for subset in ["t1", "flair+t1+t1c+t2"] {
        let file = pred.join(subset).join(format!("{case}.nii.gz"));
        let (labels, dims, header) = read_labels(&file, LabelConvention::Brats2018)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(dims, [240, 240, 155], "{}", file.display());
        assert_eq!(header.dims(), input.dims());
        assert_eq!(header.spacing(), input.spacing());
        assert_eq!(header.sform_code(), input.sform_code());
        assert_eq!(header.qform_code(), input.qform_code());
        assert_eq!(header.sform(), input.sform());
        assert_eq!(header.qform(), input.qform());
        assert!(
            labels.iter().all(|l| [0, 1, 2, 4].contains(l)),
            "{}: a label outside {{0, 1, 2, 4}}",
            file.display()
        );
        // A voxel outside the brain's bounding box is background: the crop was undone.
        assert_eq!(labels[0], 0);
    }

    let eval = tmp.path().join("eval");
    let table = run(mckd()
        .args(["brats", "evaluate", "--quiet"])
        .arg("--pred")
        .arg(&pred)
        .arg("--ref")
        .arg(&cases)
        .args(["--cases", case])
        .arg("--out")
        .arg(&eval));
    assert!(
        table.contains("| t1 |") && table.contains("| flair+t1+t1c+t2 |"),
        "{table}"
    );
    let per_case = std::fs::read_to_string(eval.join("per_case.csv")).unwrap();
    assert!(per_case.contains(case.as_str()), "{per_case}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eval.join("results.json")).unwrap()).unwrap();
    // One row per subset, every Dice a number in [0, 1] and every HD95 ≥ 0.
    let rows = results["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{results}");
    for row in rows {
        for region in ["et", "tc", "wt"] {
            let dice = row["metrics"][format!("dice_{region}")].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&dice), "{row}");
            let hd = row["metrics"][format!("hd95_{region}")].as_f64().unwrap();
            assert!(hd >= 0.0, "{row}");
        }
    }
}
