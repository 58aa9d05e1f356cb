//! End-to-end on the real AV-MNIST kit ($MCKD_DATA_DIR, else `<repo>/../shared/data`): a short
//! `reproduce` run beats chance by a wide margin, writes a valid `results.json`, and the same
//! seed gives the same numbers (also with parallel child processes). Fails, never skips, when
//! the kit is absent.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use clap::Parser;
use mckd_avmnist::AvmnistCommand;
use mckd_avmnist::cli::{ReproduceArgs, reproduce};
use mckd_avmnist::data::AvSource;
use mckd_train::report::Results;
use mckd_train::train::Source;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: AvmnistCommand,
}

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("MCKD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(
        dir.join("avmnist/mnist").is_dir() && dir.join("avmnist/fsdd").is_dir(),
        "AV-MNIST kit not found under {}: set MCKD_DATA_DIR to the folder that contains \
         avmnist/ (this test must not pass without the real data)",
        dir.display()
    );
    dir
}

fn args(extra: &[&str], out: &Path) -> ReproduceArgs {
    let dir = data_dir();
    let mut argv = vec![
        "avmnist".to_string(),
        "reproduce".into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--quiet".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    match Cli::try_parse_from(argv).expect("valid arguments").cmd {
        AvmnistCommand::Reproduce(a) => a,
        _ => unreachable!(),
    }
}

fn temp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mckd-avmnist-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

#[test]
fn real_data_batches_match_the_data_layer() {
    let data = mckd_data::load_avmnist(&data_dir(), None).expect("kit loads");
    let set = data.missing_audio(15).unwrap();
    let src = AvSource::missing_audio(&set);
    assert_eq!(src.len(), 1050);
    assert_eq!(src.counts(), [1050, 150]);
    let b = src.batch(&[0, 149, 150, 1049], &Device::flex());
    let img = mckd_train::to_vec(b.image);
    let aud = mckd_train::to_vec(b.audio);
    assert_eq!(&img[..784], &set.paired[0].image[..]);
    assert_eq!(&aud[400..800], &set.paired[149].audio[..]);
    assert_eq!(&img[784 * 2..784 * 3], &set.image_only[0].image[..]);
    assert_eq!(&img[784 * 3..], &set.image_only[899].image[..]);
    assert!(aud[800..].iter().all(|&v| v == 0.0));
    assert_eq!(
        mckd_train::to_vec_int(b.labels),
        vec![0, 9, 0, 9],
        "class-major paired then image-only"
    );
}

#[test]
fn short_real_run_beats_chance_writes_results_and_is_deterministic() {
    let out = temp("run");
    let common = [
        "--seeds",
        "1",
        "--epochs",
        "3",
        "--rows",
        "audio_10",
        "--methods",
        "baseline,mckd",
    ];
    let outcomes = reproduce(&args(&common, &out)).expect("reproduce runs");
    assert_eq!(outcomes.len(), 2);
    for o in &outcomes {
        assert!(
            o.accuracy > 0.6,
            "{}: accuracy {} not far above chance (0.1)",
            o.spec.label(),
            o.accuracy
        );
    }
    // results.json parses back into the shared schema with the documented names.
    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    let r: Results = serde_json::from_str(&text).expect("results.json schema");
    assert_eq!(r.task, "avmnist");
    assert_eq!(r.iwv.keys().collect::<Vec<_>>(), ["image", "audio"]);
    let w: f64 = r.iwv.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((w - 1.0).abs() < 1e-5, "softmax IWV sums to 1");
    let headline: Vec<_> = r
        .rows
        .iter()
        .filter(|row| row.metrics["headline"] == serde_json::Value::Bool(true))
        .collect();
    assert_eq!(headline.len(), 2);
    for row in &headline {
        assert!(["baseline", "mckd"].contains(&row.method.as_str()));
        assert_eq!(row.setting.as_deref(), Some("audio_10"));
        assert_eq!(row.subset, ["image"]);
        let acc = row.metrics["accuracy"].as_f64().unwrap();
        assert!((0.6..=1.0).contains(&acc), "accuracy is a fraction: {acc}");
        let per = row.per_seed.as_ref().unwrap();
        assert_eq!(per["accuracy"][0].as_f64().unwrap(), acc);
        assert_eq!(per["seed"][0], 1);
    }
    for f in [
        "config.json",
        "splits.json",
        "table2.md",
        "table2.csv",
        "iwv_series.csv",
    ] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    assert!(out.join("logs/mckd-audio_10-seed1.csv").is_file());
    let md = std::fs::read_to_string(out.join("table2.md")).unwrap();
    assert!(md.contains("| audio_10 | 15 |") && md.contains("94.22"));

    // Same seed, same numbers — here through the binary with two child processes.
    let out2 = temp("run2");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mckd-avmnist"))
        .args(["reproduce", "--quiet", "--jobs", "2", "--data-dir"])
        .arg(data_dir())
        .arg("--out")
        .arg(&out2)
        .args(common)
        .status()
        .expect("binary starts");
    assert!(status.success());
    assert!(
        !out2.join("logs/avmnist-data.snapshot").exists(),
        "the children's data snapshot is removed"
    );
    let runs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("runs.json")).unwrap()).unwrap();
    for o in &outcomes {
        let r = runs
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["method"] == o.spec.method.name())
            .expect("run present");
        assert_eq!(
            r["accuracy"].as_f64().unwrap(),
            o.accuracy,
            "{}",
            o.spec.label()
        );
        let iwv: Vec<f32> = serde_json::from_value(r["iwv"].clone()).unwrap();
        assert_eq!(iwv, o.iwv, "{}", o.spec.label());
    }
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&out2);
}
