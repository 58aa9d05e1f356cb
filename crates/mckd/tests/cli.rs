//! End-to-end tests of the `mckd` binary: bad inputs, resume after a kill, run folders.

use std::path::PathBuf;

mod common;
use common::{first_case, mckd};

/// A fresh path inside a new unique temporary folder (tempfile's); the test removes it when
/// it passes and leaves it for inspection when it fails.
fn temp(name: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(&format!("mckd-cli-{name}-"))
        .tempdir()
        .unwrap()
        .keep();
    dir.join(name)
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

/// A digest of every file under `dir` (path and bytes), to show that a refused command changed
/// nothing.
fn tree_digest(dir: &std::path::Path) -> Vec<(String, u64, u64)> {
    use std::hash::{Hash, Hasher};
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                out.push((p.display().to_string(), bytes.len() as u64, h.finish()));
            }
        }
    }
    out.sort();
    out
}

fn phantoms(dir: &std::path::Path, cases: usize) {
    let out = mckd()
        .args(["brats", "phantoms", "--size", "16", "--cases"])
        .arg(cases.to_string())
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A saved model's bytes without its parameter ids: burn draws a fresh random id for every
/// parameter in each process, so two identical trainings differ only there. The record is
/// CBOR: each id is the text key `param_id` (0x68 + 8 bytes) then a u64 (0x1b + 8 bytes).
fn weights(path: &std::path::Path) -> Vec<u8> {
    let mut b = std::fs::read(path).unwrap();
    let key = b"\x68param_id\x1b";
    let mut i = 0;
    let mut ids = 0;
    while i + key.len() + 8 <= b.len() {
        if &b[i..i + key.len()] == key {
            b[i + key.len()..i + key.len() + 8].fill(0);
            ids += 1;
            i += key.len() + 8;
        } else {
            i += 1;
        }
    }
    assert!(ids > 0, "{}: no parameter ids found", path.display());
    b
}

/// `mckd brats train` of `method` for 12 iterations of a base-2 network on 16³ crops of `data`,
/// a checkpoint every 3 iterations, into `out`; `fault` is injected (`MCKD_FAULT`).
fn tiny_brats_train(
    data: &std::path::Path,
    out: &std::path::Path,
    method: &str,
    fault: Option<&str>,
    resume: bool,
) -> std::process::Output {
    let mut c = mckd();
    c.args(["brats", "train", "--quiet", "--method", method])
        .args(["--iterations", "12", "--base", "2"])
        .args(["--crop", "16", "16", "16", "--tile", "16", "16", "16"])
        .args(["--checkpoint-every", "3"])
        .args(["--meta-interval", "2", "--meta-steps", "2"])
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out);
    if resume {
        c.arg("--resume");
    }
    if let Some(f) = fault {
        c.env("MCKD_FAULT", f);
    }
    c.output().unwrap()
}

/// Trains `method` once without a fault, then once per fault of `faults` (each must stop the
/// run) resumed with `--resume`: every resumed run must end with the uninterrupted run's train
/// log and weights, and be marked finished.
fn check_killed_runs_resume_exactly(dir: &std::path::Path, method: &str, faults: &[&str]) {
    let data = dir.join("data");
    let whole = dir.join(format!("{method}-whole"));
    let out = tiny_brats_train(&data, &whole, method, None, false);
    assert!(
        out.status.success(),
        "{method}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read(whole.join("train_log.csv")).unwrap();
    let model = weights(&whole.join("model.bpk"));
    for fault in faults {
        let run = dir.join(format!("{method}-{}", fault.replace(':', "-")));
        let out = tiny_brats_train(&data, &run, method, Some(fault), false);
        assert!(
            !out.status.success(),
            "{method} {fault}: the fault did not stop the run"
        );
        let status = std::fs::read_to_string(run.join("status.json")).unwrap();
        assert!(status.contains("running"), "{method} {fault}: {status}");
        let out = tiny_brats_train(&data, &run, method, None, true);
        assert!(
            out.status.success(),
            "{method} {fault}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(run.join("train_log.csv")).unwrap(),
            log,
            "{method} {fault}: train log"
        );
        assert!(
            weights(&run.join("model.bpk")) == model,
            "{method} {fault}: the resumed model's weights differ"
        );
        let status = std::fs::read_to_string(run.join("status.json")).unwrap();
        assert!(status.contains("finished"), "{method} {fault}: {status}");
        // The training time covers both processes: the wall time is at least the loop's,
        // which is at least the steps' that the checkpoint carried over.
        let t: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("timing.json")).unwrap()).unwrap();
        let f = |k: &str| t[k].as_f64().unwrap_or(0.0);
        let steps = f("seconds_per_inner_step") * f("iterations")
            + f("seconds_per_meta_step") * f("meta_steps");
        assert!(
            f("wall_seconds") >= f("loop_seconds") && f("loop_seconds") + 1e-9 >= steps,
            "{method} {fault}: {t}"
        );
    }
}

/// Issue 19: a training run killed at any point (SIGKILL-like aborts injected after an
/// iteration, during a checkpoint write, between the checkpoint swap's renames, after the last
/// iteration) and resumed ends with the same train log and the same model as an uninterrupted
/// run.
#[test]
fn a_killed_training_run_resumes_to_the_same_log_and_model() {
    let dir = temp("resume");
    let data = dir.join("data");
    phantoms(&data, 5);
    check_killed_runs_resume_exactly(
        &dir,
        "mckd",
        &[
            "after-iteration:2",
            "after-iteration:7",
            "checkpoint-write:6",
            "checkpoint-swap:9",
            "after-iteration:12",
        ],
    );
    // A non-finite loss stops the run with the iteration and the term, marks it failed, and
    // keeps the last good checkpoint.
    let run = dir.join("diverged");
    let out = mckd()
        .args([
            "brats",
            "train",
            "--quiet",
            "--iterations",
            "12",
            "--base",
            "2",
        ])
        .args([
            "--crop",
            "16",
            "16",
            "16",
            "--checkpoint-every",
            "1",
            "--lr",
            "1e30",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("diverged at iteration") && err.contains("= NaN") || err.contains("= inf"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let status = std::fs::read_to_string(run.join("status.json")).unwrap();
    assert!(
        status.contains("failed") && status.contains("diverged"),
        "{status}"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("checkpoint/loop_state.json")).unwrap())
            .unwrap();
    let at: u64 = err
        .split("diverged at iteration ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap();
    assert_eq!(state["iteration"].as_u64().unwrap(), at - 1, "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Issue 18: the real-data peer grid is trained across sessions from checkpoints, so a peer
/// run stopped mid-way and resumed must end as the uninterrupted one: same log, same weights
/// (U-HVED's sampling and the peers' other draws come from their own generator, which the
/// checkpoint carries with the network and the optimiser).
#[test]
fn a_killed_peer_run_resumes_to_the_same_log_and_model() {
    let dir = temp("resume-peers");
    phantoms(&dir.join("data"), 5);
    for method in ["hemis", "hved", "shaspec", "mmformer", "robustseg"] {
        check_killed_runs_resume_exactly(&dir, method, &["after-iteration:5"]);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Issue 19: a matrix of bad inputs — options, files, folders, checkpoints, configs. Each must
/// exit non-zero without a panic, with a message that names the option or file and the
/// problem, and leave every earlier output (a finished run folder, the data) unchanged.
#[test]
fn bad_inputs_are_refused_clearly_and_change_nothing() {
    let dir = temp("badinputs");
    let data = dir.join("data");
    phantoms(&data, 5);
    let run = dir.join("run");
    let out = mckd()
        .args([
            "brats",
            "train",
            "--quiet",
            "--iterations",
            "2",
            "--base",
            "2",
        ])
        .args(["--crop", "16", "16", "16", "--tile", "16", "16", "16"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad files and folders.
    let d = |p: &str| dir.join(p).display().to_string();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(dir.join("a-file"), b"x").unwrap();
    let broken = dir.join("broken");
    phantoms(&broken, 3);
    let (case, id) = first_case(&broken);
    let t1 = case.join(format!("{id}_t1.nii.gz"));
    let bytes = std::fs::read(&t1).unwrap();
    std::fs::write(&t1, &bytes[..bytes.len() / 2]).unwrap();
    let missing = dir.join("missing-modality");
    phantoms(&missing, 3);
    let (mcase, mid) = first_case(&missing);
    std::fs::remove_file(mcase.join(format!("{mid}_t2.nii.gz"))).unwrap();
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    std::fs::write(
        dir.join("unknown-field.json"),
        config.replacen("\"seed\"", "\"sead\"", 1),
    )
    .unwrap();
    std::fs::write(dir.join("not-json.json"), b"{ this is not json").unwrap();
    let avconfig = r#"{"seed":1,"method":{"name":"mckd"},"optimizer":{"adam":{"epsilon":1e-8,"weight_decay":0.01}},"schedule":{"constant":{"lr":0.001}},"loop":{"budget":{"epochs":1},"batch_size":64,"sampling":"draws","subsets":"reference","granularity":"batch","full_fraction":0.0,"meta":{"interval":1,"interval_stage2":1,"steps":1,"batch":0},"checkpoint_every":0},"task":{"net":{},"setting":"audio_10","mapping":"total","split":"paper"}}"#;
    std::fs::write(dir.join("avmnist-config.json"), avconfig).unwrap();
    let bad_model = dir.join("bad-model");
    std::fs::create_dir_all(&bad_model).unwrap();
    std::fs::copy(run.join("config.json"), bad_model.join("config.json")).unwrap();
    std::fs::copy(run.join("splits.json"), bad_model.join("splits.json")).unwrap();
    std::fs::write(bad_model.join("model.bpk"), b"not a model").unwrap();
    let flair = {
        let (c, id) = first_case(&data);
        c.join(format!("{id}_flair.nii.gz"))
    };
    let flair_s = flair.display().to_string();
    let data_s = data.display().to_string();
    let run_s = run.display().to_string();
    // A short `brats train` whose options in `extra` replace the defaults of the same name.
    let brats_train = |extra: &[&str]| -> Vec<String> {
        let defaults: [(&str, Vec<String>); 5] = [
            ("--iterations", vec!["2".into()]),
            ("--base", vec!["2".into()]),
            ("--crop", ["16", "16", "16"].map(String::from).to_vec()),
            ("--data", vec![data_s.clone()]),
            ("--out", vec![d("new-run")]),
        ];
        let mut v: Vec<String> = ["brats", "train", "--quiet"].map(String::from).to_vec();
        for (flag, values) in defaults {
            if !extra.contains(&flag) {
                v.push(flag.to_string());
                v.extend(values);
            }
        }
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let kit = common::data_dir().display().to_string();
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        // Numbers.
        (s(&["demo", "--alpha", "NaN"]), vec!["alpha"]),
        (s(&["demo", "--alpha", "-1"]), vec!["alpha"]),
        (s(&["demo", "--epochs", "0"]), vec!["epochs"]),
        (s(&["demo", "--train-samples", "0"]), vec!["train-samples"]),
        (s(&["demo", "--meta-interval", "0"]), vec!["meta-interval"]),
        (s(&["demo", "--noise", "1,2"]), vec!["noise"]),
        (brats_train(&["--alpha", "NaN"]), vec!["alpha"]),
        (brats_train(&["--alpha", "-0.5"]), vec!["alpha"]),
        (brats_train(&["--iwv-lr", "NaN"]), vec!["iwv-lr"]),
        (brats_train(&["--iwv-lr", "-5"]), vec!["iwv-lr"]),
        (
            brats_train(&["--iwv-weight-decay", "inf"]),
            vec!["iwv-weight-decay"],
        ),
        (brats_train(&["--lr", "0"]), vec!["lr"]),
        (brats_train(&["--momentum", "1.5"]), vec!["momentum"]),
        (
            brats_train(&["--crop", "12", "16", "16"]),
            vec!["crop", "multiple"],
        ),
        (
            brats_train(&["--crop", "512", "512", "512"]),
            vec!["crop", "512"],
        ),
        (brats_train(&["--batch", "0"]), vec!["batch_size"]),
        (
            brats_train(&["--iterations", "0"]),
            vec!["budget", "0 iterations"],
        ),
        (
            brats_train(&["--full-fraction", "1.5"]),
            vec!["full_fraction", "1.5"],
        ),
        (brats_train(&["--meta-steps", "0"]), vec!["meta.steps"]),
        (
            brats_train(&["--tile", "20", "16", "16"]),
            vec!["tile", "multiple"],
        ),
        (brats_train(&["--spacing", "0"]), vec!["spacing"]),
        (brats_train(&["--device", "cuda"]), vec!["cuda"]),
        (
            s(&[
                "avmnist",
                "train",
                "--alpha",
                "NaN",
                "--setting",
                "audio_10",
                "--data-dir",
                &kit,
            ]),
            vec!["alpha"],
        ),
        (
            s(&[
                "avmnist",
                "train",
                "--batch-size",
                "1",
                "--setting",
                "audio_10",
                "--data-dir",
                &kit,
            ]),
            vec!["batch_size"],
        ),
        (
            s(&["avmnist", "train", "--setting", "audio_7"]),
            vec!["audio_7"],
        ),
        (
            s(&["avmnist", "reproduce", "--seeds", "0"]),
            vec!["--seeds"],
        ),
        (s(&["avmnist", "reproduce", "--rows", "foo"]), vec!["foo"]),
        (s(&["avmnist", "reproduce", "--jobs", "0"]), vec!["--jobs"]),
        // Folders and files.
        (
            s(&["brats", "train", "--data", &d("nowhere"), "--out", &d("x")]),
            vec!["nowhere"],
        ),
        (
            s(&["brats", "train", "--data", &d("a-file"), "--out", &d("x")]),
            vec!["a-file"],
        ),
        (
            s(&["brats", "train", "--data", &d("empty"), "--out", &d("x")]),
            vec!["empty"],
        ),
        (
            s(&[
                "brats",
                "train",
                "--quiet",
                "--crop",
                "16",
                "16",
                "16",
                "--data",
                &missing.display().to_string(),
                "--out",
                &d("x"),
            ]),
            vec!["_t2.nii.gz"],
        ),
        (
            s(&[
                "brats",
                "train",
                "--quiet",
                "--crop",
                "16",
                "16",
                "16",
                "--data",
                &broken.display().to_string(),
                "--out",
                &d("x"),
            ]),
            vec!["_t1.nii.gz"],
        ),
        (
            s(&[
                "brats",
                "train",
                "--config",
                &d("no-such.json"),
                "--out",
                &d("x"),
            ]),
            vec!["no-such.json"],
        ),
        (
            s(&["brats", "train", "--config", &d("empty"), "--out", &d("x")]),
            vec!["empty", "directory"],
        ),
        (
            s(&[
                "brats",
                "train",
                "--config",
                &d("unknown-field.json"),
                "--out",
                &d("x"),
            ]),
            vec!["unknown-field.json", "sead"],
        ),
        (
            s(&[
                "brats",
                "train",
                "--config",
                &d("not-json.json"),
                "--out",
                &d("x"),
            ]),
            vec!["not-json.json"],
        ),
        (
            s(&[
                "brats",
                "train",
                "--config",
                &d("avmnist-config.json"),
                "--out",
                &d("x"),
            ]),
            vec!["avmnist-config.json"],
        ),
        (
            brats_train(&["--out", &run_s]),
            vec!["already exists", "--resume", "--overwrite"],
        ),
        (
            brats_train(&["--resume", "--out", &d("never-made")]),
            vec!["never-made", "resume"],
        ),
        (
            s(&["brats", "eval", "--run", &d("empty")]),
            vec!["config.json"],
        ),
        (
            s(&[
                "brats",
                "eval",
                "--run",
                &bad_model.display().to_string(),
                "--out",
                &d("e"),
            ]),
            vec!["model.bpk"],
        ),
        (
            s(&[
                "brats", "predict", "--run", &run_s, "--flair", &flair_s, "--out", &flair_s,
            ]),
            vec!["refusing", "flair"],
        ),
        (
            s(&[
                "brats",
                "predict",
                "--run",
                &run_s,
                "--flair",
                &d("nope_flair.nii.gz"),
                "--out",
                &d("p.nii.gz"),
            ]),
            vec!["nope_flair.nii.gz"],
        ),
        (
            s(&[
                "brats",
                "evaluate",
                "--pred",
                &d("nowhere"),
                "--ref",
                &data_s,
                "--out",
                &d("ev"),
            ]),
            vec!["nowhere"],
        ),
        (
            s(&[
                "brats",
                "evaluate",
                "--pred",
                &d("empty"),
                "--ref",
                &data_s,
                "--out",
                &d("ev2"),
            ]),
            vec!["subset"],
        ),
        (
            s(&["brats", "phantoms", "--out", &run_s, "--cases", "3"]),
            vec!["already exists"],
        ),
        (
            s(&[
                "avmnist",
                "train",
                "--setting",
                "audio_10",
                "--data-dir",
                &d("nowhere"),
            ]),
            vec!["nowhere"],
        ),
        (
            s(&[
                "avmnist",
                "train",
                "--setting",
                "audio_10",
                "--data-dir",
                &d("empty"),
            ]),
            vec!["empty"],
        ),
        (
            s(&["avmnist", "eval", "--run", &run_s]),
            vec!["config.json"],
        ),
        (
            s(&["avmnist", "merge", "--grid", &run_s]),
            vec!["plan.json"],
        ),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let before = (tree_digest(&run), tree_digest(&data));
    // Every case is run and every failure reported together.
    let mut failures = Vec::new();
    for (args, expect) in &cases {
        let out = mckd().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{args:?} succeeded"));
        }
        if err.contains("panicked") {
            failures.push(format!("{args:?} panicked: {err}"));
        }
        for e in expect {
            if !err.to_lowercase().contains(&e.to_lowercase()) {
                failures.push(format!("{args:?}: the message does not name `{e}`:\n{err}"));
            }
        }
        if (tree_digest(&run), tree_digest(&data)) != before {
            failures.push(format!("{args:?} changed an earlier output"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// `brats demo --resume` with another budget than the folder was started with is refused
/// before the folder is touched: exit 1, the seed's settings file, the setting and both values
/// named, every file as it was (a planned 2-seed folder: its settings without any training).
#[test]
fn resuming_an_experiment_with_other_settings_is_refused_and_changes_nothing() {
    let dir = temp("resume-settings");
    let demo = |iterations: &str, extra: &[&str]| {
        mckd()
            .args(["brats", "demo", "--quick", "--quiet", "--seeds", "2"])
            .args(["--methods", "mckd,baseline", "--iterations", iterations])
            .args(extra)
            .arg("--out")
            .arg(&dir)
            .output()
            .unwrap()
    };
    let planned = demo("8", &["--plan", "--slurm"]);
    assert!(planned.status.success(), "{planned:?}");
    let before = tree_digest(&dir);
    let out = demo("9", &["--resume"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for want in [
        "seed-0",
        "demo_config.json",
        "run.loop.budget.iterations = 8, now 9",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        tree_digest(&dir),
        before,
        "the refused resume changed the folder"
    );
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}
