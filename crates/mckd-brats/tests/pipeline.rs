//! End-to-end tests of the BraTS task: training steps on real and phantom crops, prediction
//! files, bad inputs, and a tiny train → evaluate smoke run.
//!
//! The real case comes from `$MCKD_DATA_DIR/brats-sample` (default `<workspace>/../shared/data`);
//! the test that needs it fails with a clear message when it is absent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use mckd_brats::BratsError;
use mckd_brats::data::{CropSource, TrainCase};
use mckd_brats::experiment::{
    Method, TrainConfig, evaluate, init_model, load_model, task_optimiser, train_run,
};
use mckd_brats::infer::{InferConfig, predict_files};
use mckd_core::{MckdTrainer, mask_tensor};
use mckd_train::run::RunDir;
use mckd_volume::{
    CropConfig, LabelConvention, PhantomConfig, discover_cases, load_case, read_header,
    read_labels, write_phantom_dataset,
};

fn data_dir() -> PathBuf {
    std::env::var_os("MCKD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mckd-brats-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn small_config(data: PathBuf, method: Method, size: usize) -> TrainConfig {
    let mut cfg = TrainConfig::new(data, method);
    cfg.base = 4;
    cfg.crop = [size; 3];
    cfg.infer.tile = [size; 3];
    cfg
}

/// Runs `steps` inner steps on one fixed batch (all modalities present) and returns the task
/// losses, measured before each update.
fn losses_on_fixed_batch(cases: Vec<Arc<TrainCase>>, steps: usize) -> Vec<f32> {
    let device = Device::flex().autodiff();
    let crop = CropConfig {
        size: [32, 32, 32],
        foreground_prob: 1.0,
        flip_prob: [0.0; 3],
    };
    let src = CropSource::new(cases, crop, LabelConvention::Brats2018, 2, 7).unwrap();
    let batch = src.crops(&[0, 1], &device);
    let cfg = small_config(PathBuf::new(), Method::Mckd, 32);
    let mut model = init_model(&cfg, src.spatial(), &device);
    let mut trainer = MckdTrainer::new(cfg.mckd_config(), task_optimiser(&cfg));
    let mask = mask_tensor(&[vec![true; 4], vec![true; 4]], &device);
    let mut losses = vec![];
    for _ in 0..steps {
        let (m, s) = trainer.inner_step(model, &batch, &mask, cfg.lr);
        model = m;
        losses.push(s.task_loss);
    }
    losses
}

#[test]
fn training_steps_on_real_crops_lower_the_loss() {
    let root = data_dir().join("brats-sample");
    assert!(
        root.join("Brats18_2013_2_1").is_dir(),
        "BraTS sample case not found at {} (set MCKD_DATA_DIR to the folder holding \
         brats-sample/)",
        root.display()
    );
    let cases = discover_cases(&root).unwrap();
    let loaded = load_case(&cases[0], LabelConvention::Brats2018).unwrap();
    let case = Arc::new(TrainCase::from_loaded(loaded, LabelConvention::Brats2018).unwrap());
    let losses = losses_on_fixed_batch(vec![case], 8);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[7] < 0.9 * losses[0], "loss did not fall: {losses:?}");
}

#[test]
fn training_steps_on_phantoms_lower_the_loss() {
    let cfg = PhantomConfig {
        size: [32; 3],
        ..Default::default()
    };
    let cases = (0..2)
        .map(|s| {
            let p = mckd_volume::make_phantom(&cfg, s).unwrap();
            Arc::new(TrainCase {
                id: format!("p{s}"),
                index: mckd_volume::ForegroundIndex::new(&p.seg, LabelConvention::Brats2018),
                images: p.modalities.map(|v| mckd_volume::normalise(&v)),
                labels: p.seg,
            })
        })
        .collect();
    let losses = losses_on_fixed_batch(cases, 8);
    assert!(losses[7] < 0.9 * losses[0], "loss did not fall: {losses:?}");
}

#[test]
fn predictions_keep_the_affine_and_bad_inputs_name_the_file() {
    let tmp = TempDir::new("predict");
    let pcfg = PhantomConfig {
        size: [24, 16, 16],
        spacing: [1.5, 1.0, 2.0],
        ..Default::default()
    };
    let cases = write_phantom_dataset(tmp.0.join("a"), 1, &pcfg, 1).unwrap();
    let other = PhantomConfig {
        size: [16; 3],
        ..Default::default()
    };
    let odd = write_phantom_dataset(tmp.0.join("b"), 1, &other, 2).unwrap();
    let device = Device::flex();
    let cfg = small_config(PathBuf::new(), Method::Mckd, 16);
    let model = init_model(&cfg, [16, 16, 16], &device);
    let infer = InferConfig {
        tile: [16, 16, 16],
        ..Default::default()
    };
    let m = &cases[0].modalities;
    let out = tmp.0.join("out/pred.nii.gz");
    let files = [Some(m[0].clone()), None, Some(m[2].clone()), None];
    let labels = predict_files(
        &model,
        &files,
        &out,
        &infer,
        LabelConvention::Brats2018,
        &device,
    )
    .unwrap();
    let (back, dims, header) = read_labels(&out, LabelConvention::Brats2018).unwrap();
    assert_eq!(back, labels);
    assert_eq!(dims, [24, 16, 16]);
    let input = read_header(&m[0]).unwrap();
    assert_eq!(header.sform(), input.sform());
    assert_eq!(header.qform(), input.qform());
    assert_eq!(header.spacing(), [1.5, 1.0, 2.0]);

    // A missing modality file.
    let missing = tmp.0.join("nope_t1ce.nii.gz");
    let files = [Some(m[0].clone()), None, Some(missing.clone()), None];
    let err = predict_files(
        &model,
        &files,
        &out,
        &infer,
        LabelConvention::Brats2018,
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, BratsError::MissingInput { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("nope_t1ce.nii.gz") && msg.contains("t1c"),
        "{msg}"
    );

    // Modalities on different grids.
    let files = [
        Some(m[0].clone()),
        None,
        None,
        Some(odd[0].modalities[3].clone()),
    ];
    let msg = predict_files(
        &model,
        &files,
        &out,
        &infer,
        LabelConvention::Brats2018,
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("shape mismatch"), "{msg}");
    assert!(msg.contains(&m[0].display().to_string()), "{msg}");
    assert!(
        msg.contains(&odd[0].modalities[3].display().to_string()),
        "{msg}"
    );

    // No modality at all, and a run folder without config.
    let msg = predict_files(
        &model,
        &[None, None, None, None],
        &out,
        &infer,
        LabelConvention::Brats2018,
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("at least one modality"), "{msg}");
    let msg = load_model(&tmp.0, &device).err().unwrap().to_string();
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn tiny_train_and_evaluate_all_subsets() {
    let tmp = TempDir::new("e2e");
    let data = tmp.0.join("data");
    let pcfg = PhantomConfig {
        size: [16; 3],
        ..Default::default()
    };
    write_phantom_dataset(&data, 7, &pcfg, 3).unwrap();
    let mut cfg = small_config(data.clone(), Method::Mckd, 16);
    cfg.iterations = 4;
    cfg.meta_interval = 2;
    cfg.probe_interval = 2;
    let mckd = RunDir::create(&tmp.0.join("mckd")).unwrap();
    let t = train_run(&cfg, &mckd, None, true).unwrap();
    assert_eq!(t.log.len(), 4);
    assert_eq!(t.log.iter().filter(|r| r.meta_loss.is_some()).count(), 2);
    assert_eq!(t.feature_gap.len(), 3);
    let mut bcfg = cfg.clone();
    bcfg.method = Method::Baseline;
    let base = RunDir::create(&tmp.0.join("baseline")).unwrap();
    let b = train_run(&bcfg, &base, Some(&mckd.file("splits.json")), true).unwrap();
    assert!(b.log.iter().all(|r| r.meta_loss.is_none()));
    // The Baseline never moves its IWV.
    assert_eq!(b.log[0].iwv, b.log[3].iwv);
    for f in [
        "config.json",
        "splits.json",
        "model.bpk",
        "train_log.csv",
        "plot_iwv.csv",
        "plot_feature_gap.csv",
        "iwv.png",
        "loss.png",
        "feature_gap.png",
        "timing.json",
    ] {
        assert!(mckd.file(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read(mckd.file("splits.json")).unwrap(),
        std::fs::read(base.file("splits.json")).unwrap()
    );
    // A reloaded checkpoint carries the trained IWV.
    let (_, reloaded) = load_model(mckd.path(), &Device::flex()).unwrap();
    assert_eq!(reloaded.iwv.raw_values(), t.model.iwv.raw_values());

    let (report, evals) = evaluate(
        &[
            (Method::Mckd, mckd.path().to_path_buf()),
            (Method::Baseline, base.path().to_path_buf()),
        ],
        None,
        &mckd,
        true,
    )
    .unwrap();
    assert_eq!(evals.len(), 2);
    assert_eq!(report.results.rows.len(), 30);
    assert_eq!(report.results.task, "brats");
    let keys: Vec<&String> = report.results.rows[0].metrics.keys().collect();
    assert_eq!(
        keys,
        [
            "dice_et", "dice_tc", "dice_wt", "hd95_et", "hd95_tc", "hd95_wt"
        ]
    );
    assert_eq!(
        report.markdown.matches("\n| ").count(),
        1 + 15 + 3,
        "header, subsets, 2 averages, p-values"
    );
    for f in [
        "table.md",
        "table.csv",
        "results.json",
        "plot_slice.json",
        "overlay.png",
        "eval/mckd/flair+t1+t1c+t2/summary.json",
        "eval/baseline/t1c/summary.json",
    ] {
        assert!(mckd.file(f).is_file(), "{f} missing");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mckd.file("plot_slice.json")).unwrap())
            .unwrap();
    assert_eq!(v["ground_truth"].as_array().unwrap().len(), 16 * 16);
    assert!(v["predictions"]["mckd"].is_array() && v["predictions"]["baseline"].is_array());
}
