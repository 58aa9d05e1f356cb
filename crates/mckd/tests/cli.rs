//! End-to-end tests of the `mckd` binary (the one integration-test file of this crate).

use std::path::PathBuf;
use std::process::Command;

fn mckd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mckd"))
}

fn temp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mckd-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let seeds_dir = temp("seeds0");
    let seeds_out = seeds_dir.to_str().unwrap();
    for args in [
        vec![
            "brats", "demo", "--quick", "--seeds", "0", "--out", seeds_out,
        ],
        vec!["demo", "--alpha", "-1"],
        vec!["demo", "--meta-interval", "0"],
        vec!["demo", "--noise", "1,2"],
        vec!["demo", "--device", "tpu"],
        vec!["frobnicate"],
    ] {
        let out = mckd().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.is_empty() && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&seeds_dir);
}

#[test]
fn unwritable_out_is_a_clear_error() {
    let file = temp("file");
    std::fs::write(&file, b"not a folder").unwrap();
    let out = mckd()
        .args(["demo", "--quick", "--quiet", "--out"])
        .arg(file.join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot write to the output folder"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_file(file).unwrap();
}

#[test]
fn quick_demo_writes_a_complete_run_folder() {
    let dir = temp("demo");
    let out = mckd()
        .args(["demo", "--quick", "--quiet", "--seeds", "2", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| strong+medium+weak |"), "{stdout}");
    assert!(stdout.contains("importance weights"), "{stdout}");

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["task"], "demo");
    let rows = results["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 7, "7 subsets × 2 methods");
    for row in rows {
        let method = row["method"].as_str().unwrap();
        assert!(method == "mckd" || method == "baseline");
        let acc = row["metrics"]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{row}");
        assert!(!row["subset"].as_array().unwrap().is_empty());
    }
    let iwv = results["iwv"].as_object().unwrap();
    let keys: Vec<&String> = iwv.keys().collect();
    assert_eq!(keys, ["strong", "medium", "weak"]);
    let sum: f64 = iwv.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "softmax weights sum to 1: {sum}");

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["method"]["alpha"], 0.1);
    let log = std::fs::read_to_string(dir.join("train_log_seed0.csv")).unwrap();
    let header = log.lines().next().unwrap();
    assert_eq!(
        header,
        "iteration,epoch,lr,task_loss,ckd_loss,meta_loss,iwv_strong,iwv_medium,iwv_weak"
    );
    assert!(log.lines().count() > 100);
    for png in ["iwv.png", "loss.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Phantoms renamed to the BraTS 2023 layout (`<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz`, ET = 3):
/// `brats train` without `--convention` reads them with the 2023 labels; with
/// `--convention brats2018` label 3 is an error naming the segmentation file.
#[test]
fn brats_train_reads_the_2023_layout_and_infers_its_labels() {
    use mckd_volume::LabelConvention;
    use mckd_volume::nifti_io::{read_labels, write_labels_like};

    let dir = temp("brats23");
    let data = dir.join("data");
    let out = mckd()
        .args(["brats", "phantoms", "--cases", "3", "--size", "16", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let renames = [
        ("flair", "t2f"),
        ("t1", "t1n"),
        ("t1ce", "t1c"),
        ("t2", "t2w"),
    ];
    for entry in std::fs::read_dir(&data).unwrap() {
        let case = entry.unwrap().path();
        if !case.is_dir() {
            continue;
        }
        let id = case.file_name().unwrap().to_string_lossy().into_owned();
        for (old, new) in renames {
            std::fs::rename(
                case.join(format!("{id}_{old}.nii.gz")),
                case.join(format!("{id}-{new}.nii.gz")),
            )
            .unwrap();
        }
        let seg = case.join(format!("{id}_seg.nii.gz"));
        let (mut labels, _, header) = read_labels(&seg, LabelConvention::Brats2018).unwrap();
        assert!(labels.contains(&4), "{id} has enhancing tumour");
        LabelConvention::Brats2018.convert_to(LabelConvention::Brats2023, &mut labels);
        write_labels_like(case.join(format!("{id}-seg.nii.gz")), &labels, &header).unwrap();
        std::fs::remove_file(seg).unwrap();
    }
    let train = |run: &str, extra: &[&str]| {
        mckd()
            .args([
                "brats",
                "train",
                "--quiet",
                "--iterations",
                "2",
                "--base",
                "4",
            ])
            .args(["--crop", "16", "16", "16", "--data"])
            .arg(&data)
            .args(extra)
            .arg("--out")
            .arg(dir.join(run))
            .output()
            .unwrap()
    };
    let out = train("inferred", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("BraTS 2023 convention (ET = 3)"), "{err}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("inferred").join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["task"]["convention"], "Brats2023", "{config}");

    let out = train("forced", &["--convention", "brats2018"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("-seg.nii.gz") && err.contains("unknown label value 3"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
