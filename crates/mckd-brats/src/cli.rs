//! `mckd brats ...`: phantoms, train, eval, predict, demo. The lead wires [`BratsCommand`]
//! into the `mckd` binary and calls [`run`].

use std::path::PathBuf;
use std::time::Instant;

use mckd_train::device::DeviceChoice;
use mckd_train::run::RunDir;
use mckd_volume::{
    LabelConvention, PhantomConfig, discover_cases, implied_convention, write_phantom_dataset,
};

use crate::experiment::{DemoConfig, Method, TrainConfig, demo, evaluate, load_model, train_run};
use crate::infer::predict_files;
use crate::seeds::demo_seeds;

/// BraTS subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BratsCommand {
    /// Writes seeded synthetic phantoms (BraTS layout, NIfTI) — the CPU default data set.
    Phantoms(PhantomsArgs),
    /// Trains MCKD or the Baseline on a cases folder; writes a run folder.
    Train(TrainArgs),
    /// Evaluates a run (and optionally a Baseline run) on all 15 modality subsets.
    Eval(EvalArgs),
    /// Predicts one case from any subset of modality files; writes a NIfTI label map.
    Predict(PredictArgs),
    /// Phantoms → MCKD and Baseline → evaluation table (60 phantoms of 32³, 1,200 iterations
    /// per method: about 4 minutes on 2 cores).
    Demo(DemoArgs),
}

/// `mckd brats phantoms`.
#[derive(clap::Args, Debug)]
pub struct PhantomsArgs {
    /// Output folder (one sub-folder per case).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of cases.
    #[arg(long, default_value_t = 40)]
    pub cases: usize,
    /// Size per axis (voxels).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Patchy enhancing rims: ET differs from the rest of the rim only in T1c.
    #[arg(long)]
    pub enhancing_patches: bool,
    /// Flair as T2 with CSF dark: the tumour looks the same in Flair and T2.
    #[arg(long)]
    pub flair_as_t2: bool,
}

/// Label convention flag.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ConventionArg {
    /// BraTS 2017–2021 (ET = 4).
    Brats2018,
    /// BraTS 2023+ (ET = 3).
    Brats2023,
}

impl From<ConventionArg> for LabelConvention {
    fn from(c: ConventionArg) -> Self {
        match c {
            ConventionArg::Brats2018 => LabelConvention::Brats2018,
            ConventionArg::Brats2023 => LabelConvention::Brats2023,
        }
    }
}

/// `mckd brats train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Cases root: BraTS 2018 layout (`HGG|LGG/<case>/`) or a flat folder of case folders;
    /// files `<case>_{flair,t1,t1ce,t2,seg}.nii.gz` or (BraTS 2023+)
    /// `<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz`.
    #[arg(long)]
    pub data: PathBuf,
    /// Run folder [default: runs/<timestamp>-brats].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Method.
    #[arg(long, value_enum, default_value_t = Method::Mckd)]
    pub method: Method,
    /// Inner iterations (overrides --epochs).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Epochs (passes of `batch` crops over the training cases) when --iterations is absent.
    #[arg(long, default_value_t = 50)]
    pub epochs: usize,
    /// Crop size as D H W (the paper: 80 160 160), multiples of 8.
    #[arg(long, num_args = 3, value_names = ["D", "H", "W"], default_values_t = [64, 64, 64])]
    pub crop: Vec<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Initial learning rate (SGD Nesterov, cosine annealing).
    #[arg(long, default_value_t = 1e-2)]
    pub lr: f64,
    /// UNet base width c (8 for CPU, 16 paper-like).
    #[arg(long, default_value_t = 8)]
    pub base: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    pub device: DeviceChoice,
    /// Impute missing modalities in the skip connections too (the reference code imputes
    /// only the bottleneck).
    #[arg(long)]
    pub impute_skips: bool,
    /// Distil every level of the UNet, the skips too, with the CKD loss averaged over the
    /// levels (the reference code distils only the bottleneck).
    #[arg(long)]
    pub distill_skips: bool,
    /// A meta step every this many iterations (MCKD).
    #[arg(long, default_value_t = 100)]
    pub meta_interval: usize,
    /// Weight α of the CKD loss (MCKD).
    #[arg(long, default_value_t = 0.1)]
    pub alpha: f64,
    /// Reuse this splits.json (e.g. the MCKD run's, for its Baseline).
    #[arg(long)]
    pub splits: Option<PathBuf>,
    /// Label convention of the segmentations [default: from the file names: brats2023 when
    /// every case is named `<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz`, else brats2018].
    #[arg(long, value_enum)]
    pub convention: Option<ConventionArg>,
    /// Sliding-window tile for evaluation as D H W [default: 80 160 160].
    #[arg(long, num_args = 3, value_names = ["D", "H", "W"])]
    pub tile: Option<Vec<usize>>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `mckd brats eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The run to evaluate (its test split is used); results are written into it.
    #[arg(long)]
    pub run: PathBuf,
    /// A Baseline run to compare with (same splits).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Cases root, if it moved since training.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `mckd brats predict`.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Training run folder (config.json + model.bpk).
    #[arg(long)]
    pub run: PathBuf,
    /// Flair volume.
    #[arg(long)]
    pub flair: Option<PathBuf>,
    /// T1 volume.
    #[arg(long)]
    pub t1: Option<PathBuf>,
    /// T1c (T1ce) volume.
    #[arg(long)]
    pub t1c: Option<PathBuf>,
    /// T2 volume.
    #[arg(long)]
    pub t2: Option<PathBuf>,
    /// Output label map (.nii.gz), written with the first input's header and affine.
    #[arg(long)]
    pub out: PathBuf,
    /// Tile D H W [default: the run's].
    #[arg(long, num_args = 3, value_names = ["D", "H", "W"])]
    pub tile: Option<Vec<usize>>,
    /// Tile overlap [default: the run's, 1/3].
    #[arg(long)]
    pub overlap: Option<f32>,
}

/// `mckd brats demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Output folder [default: runs/<timestamp>-brats].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A one-minute smoke run.
    #[arg(long)]
    pub quick: bool,
    /// Iterations per method (overrides the preset).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Phantom cases (overrides the preset).
    #[arg(long)]
    pub cases: Option<usize>,
    /// Phantom size per axis, a multiple of 8 (overrides the preset).
    #[arg(long)]
    pub size: Option<usize>,
    /// UNet base width (overrides the preset).
    #[arg(long)]
    pub base: Option<usize>,
    /// Meta interval of MCKD (overrides the preset).
    #[arg(long)]
    pub meta_interval: Option<usize>,
    /// Weight α of the CKD loss of MCKD [default: 0.1].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Learning rate (overrides the preset).
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD momentum (overrides the preset).
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Patchy enhancing rims: ET differs from the rest of the rim only in T1c.
    #[arg(long)]
    pub enhancing_patches: bool,
    /// Flair as T2 with CSF dark: the tumour looks the same in Flair and T2.
    #[arg(long)]
    pub flair_as_t2: bool,
    /// Impute (and, in MCKD's meta step, weight) the skip connections too (`--impute-skips` or
    /// `--impute-skips true|false`; overrides the preset). The reference code does it at the
    /// bottleneck only.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub impute_skips: Option<bool>,
    /// Distil every level of the UNet, the skips too, with the CKD loss averaged over the
    /// levels (`--distill-skips` or `--distill-skips true|false`; overrides the preset). The
    /// reference code distils the bottleneck only.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub distill_skips: Option<bool>,
    /// Learning rate of the IWV's Adam [default: 1e-2].
    #[arg(long)]
    pub iwv_lr: Option<f64>,
    /// Weight decay of the IWV's Adam [default: 0 in the demo; `brats train` uses the reference
    /// code's 5e-4].
    #[arg(long)]
    pub iwv_weight_decay: Option<f64>,
    /// Seed (with `--seeds`, the first seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run the demo for this many seeds (`seed-<s>/` each; finished seeds with the same
    /// settings are reused) and write `seeds_summary.md`/`.json`: mean ± std across seeds and
    /// the paired t-test of MCKD > Baseline.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

fn ijk(dhw: &[usize]) -> [usize; 3] {
    [dhw[2], dhw[1], dhw[0]]
}

/// Runs a BraTS subcommand.
pub fn run(cmd: BratsCommand) -> anyhow::Result<()> {
    match cmd {
        BratsCommand::Phantoms(a) => {
            let cfg = PhantomConfig {
                size: [a.size; 3],
                enhancing_patches: a.enhancing_patches,
                flair_as_t2: a.flair_as_t2,
                ..Default::default()
            };
            let cases = write_phantom_dataset(&a.out, a.cases, &cfg, a.seed)?;
            println!(
                "wrote {} phantoms of {}³ to {}",
                cases.len(),
                a.size,
                a.out.display()
            );
        }
        BratsCommand::Train(a) => {
            a.device.device()?;
            let out = a
                .out
                .clone()
                .unwrap_or_else(|| RunDir::default_path("brats"));
            // Fails early, naming the folder or file, before anything is written.
            let cases = discover_cases(&a.data)?;
            let run = RunDir::create(&out)?;
            let mut cfg = TrainConfig::new(a.data.clone(), a.method);
            cfg.crop = ijk(&a.crop);
            cfg.batch = a.batch;
            cfg.lr = a.lr;
            cfg.base = a.base;
            cfg.seed = a.seed;
            cfg.meta_interval = a.meta_interval;
            cfg.alpha = a.alpha;
            cfg.convention = match a.convention {
                Some(c) => c.into(),
                None => {
                    let c = implied_convention(&cases);
                    eprintln!(
                        "labels: {} convention (ET = {}), from the file names; \
                         --convention overrides",
                        c.name(),
                        c.et()
                    );
                    c
                }
            };
            cfg.device = a.device;
            cfg.impute_skips = a.impute_skips;
            cfg.distill_skips = a.distill_skips;
            if let Some(t) = &a.tile {
                cfg.infer.tile = ijk(t);
            }
            cfg.iterations = match a.iterations {
                Some(n) => n,
                None => {
                    let n_cases = cases.len();
                    let n_train =
                        ((n_cases as f64) * cfg.fractions.train).round().max(1.0) as usize;
                    a.epochs * n_train.div_ceil(a.batch.max(1))
                }
            };
            let t0 = Instant::now();
            let t = train_run(&cfg, &run, a.splits.as_deref(), a.quiet)?;
            println!(
                "trained {} for {} iterations in {:.1} s ({:.3} s/inner step, {:.3} s/meta step); \
                 IWV {:?}; run folder {}",
                cfg.method.name(),
                cfg.iterations,
                t0.elapsed().as_secs_f64(),
                t.seconds_per_inner,
                t.seconds_per_meta,
                t.model.iwv.normalised_values(),
                out.display()
            );
        }
        BratsCommand::Eval(a) => {
            let cfg = TrainConfig::load(&a.run)?;
            let mut runs = vec![(cfg.method, a.run.clone())];
            if let Some(b) = &a.baseline {
                runs.push((Method::Baseline, b.clone()));
            }
            let out = RunDir::create(&a.run)?;
            let (report, _) = evaluate(&runs, a.data.as_deref(), &out, a.quiet)?;
            println!("{}", report.markdown);
            println!("written to {}", out.path().display());
        }
        BratsCommand::Predict(a) => {
            let device = TrainConfig::load(&a.run)?.device.device()?;
            let (cfg, model) = load_model(&a.run, &device)?;
            let mut infer = cfg.infer;
            if let Some(t) = &a.tile {
                infer.tile = ijk(t);
            }
            if let Some(o) = a.overlap {
                infer.overlap = o;
            }
            let files = [a.flair, a.t1, a.t1c, a.t2];
            let labels = predict_files(&model, &files, &a.out, &infer, cfg.convention, &device)?;
            let tumour = labels.iter().filter(|&&l| l != 0).count();
            println!("wrote {} ({tumour} tumour voxels)", a.out.display());
        }
        BratsCommand::Demo(a) => {
            let d = demo_config(&a);
            let out = a
                .out
                .clone()
                .unwrap_or_else(|| RunDir::default_path("brats"));
            let run = RunDir::create(&out)?;
            let t0 = Instant::now();
            if a.seeds != 1 {
                let summary = demo_seeds(&d, a.seeds, &run, a.quiet)?;
                println!("{}", summary.markdown);
                println!(
                    "{} seeds finished in {:.1} min; run folder {}",
                    a.seeds,
                    t0.elapsed().as_secs_f64() / 60.0,
                    out.display()
                );
                return Ok(());
            }
            let report = demo(&d, &run, a.quiet)?;
            println!("{}", report.markdown);
            if let Some(v) = report.results.extra.get("mean_dice_subsets_without_t1c") {
                println!("mean Dice over the subsets without t1c: {v}");
            }
            println!(
                "IWV (MCKD): {}",
                serde_json::Value::Object(report.results.iwv.clone())
            );
            println!(
                "demo finished in {:.1} min; run folder {}",
                t0.elapsed().as_secs_f64() / 60.0,
                out.display()
            );
        }
    }
    Ok(())
}

/// The demo settings: the preset (quick or standard) with the options given on the command line.
fn demo_config(a: &DemoArgs) -> DemoConfig {
    let mut d = DemoConfig::preset(a.quick);
    d.seed = a.seed;
    if let Some(v) = a.iterations {
        d.iterations = v;
    }
    if let Some(v) = a.cases {
        d.cases = v;
    }
    if let Some(v) = a.size {
        d.size = v;
    }
    if let Some(v) = a.base {
        d.base = v;
    }
    if let Some(v) = a.meta_interval {
        d.meta_interval = v;
    }
    if let Some(v) = a.impute_skips {
        d.impute_skips = v;
    }
    if let Some(v) = a.distill_skips {
        d.distill_skips = v;
    }
    if let Some(v) = a.iwv_lr {
        d.iwv_lr = v;
    }
    if let Some(v) = a.iwv_weight_decay {
        d.iwv_weight_decay = v;
    }
    if let Some(v) = a.lr {
        d.lr = v;
    }
    if let Some(v) = a.alpha {
        d.alpha = v;
    }
    if let Some(v) = a.momentum {
        d.momentum = v;
    }
    d.enhancing_patches = a.enhancing_patches;
    d.flair_as_t2 = a.flair_as_t2;
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: BratsCommand,
    }

    fn demo_args(args: &[&str]) -> Result<DemoConfig, clap::Error> {
        let cli = Cli::try_parse_from(["brats", "demo"].iter().chain(args))?;
        match cli.cmd {
            BratsCommand::Demo(a) => Ok(demo_config(&a)),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn skip_options_override_the_preset_both_ways() {
        let preset = DemoConfig::preset(false);
        let d = demo_args(&[]).unwrap();
        assert_eq!(
            (d.impute_skips, d.distill_skips),
            (preset.impute_skips, preset.distill_skips)
        );
        let d = demo_args(&["--impute-skips", "--distill-skips"]).unwrap();
        assert!(d.impute_skips && d.distill_skips);
        let d = demo_args(&["--impute-skips", "false", "--distill-skips=false"]).unwrap();
        assert!(!d.impute_skips && !d.distill_skips);
        let d = demo_args(&["--distill-skips", "--seed", "3"]).unwrap();
        assert!(d.distill_skips && d.seed == 3);
        assert_eq!(d.impute_skips, preset.impute_skips);
        assert!(demo_args(&["--impute-skips", "maybe"]).is_err());
    }
}
