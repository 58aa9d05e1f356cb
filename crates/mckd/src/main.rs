//! `mckd` — multi-modal learning that stays accurate when modalities are missing.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use mckd::demo::{DemoConfig, DemoData, DemoMethod, MODALITIES, run_method};
use mckd::demo_report::{self, SeedResult};
use mckd_core::{Distance, Normalisation};
use mckd_train::device::DeviceChoice;
use mckd_train::run::{OutPolicy, RunDir, RunState};
use mckd_train::train::{iterations_per_epoch, log_csv};

/// MCKD: meta-learned cross-modal knowledge distillation for missing modalities.
#[derive(Parser, Debug)]
#[command(name = "mckd", version = mckd_train::run::CODE_VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Synthetic three-modality demo: trains MCKD and the α = 0 Baseline, prints accuracy on
    /// every modality subset and the learned importance weights. Needs no data.
    Demo(DemoArgs),
    /// AV-MNIST classification with missing audio or images (paper Table 2).
    #[command(subcommand)]
    Avmnist(mckd_avmnist::cli::AvmnistCommand),
    /// BraTS 3D brain-tumour segmentation with missing MRI modalities (paper Table 1).
    #[command(subcommand)]
    Brats(mckd_brats::cli::BratsCommand),
    /// Trains one run of a planned grid (`mckd avmnist reproduce --plan`, `mckd brats demo
    /// --plan`, `mckd brats real --plan`) into its own folder (AV-MNIST runs are also evaluated
    /// there; BraTS runs at the merge): a finished run is not trained again, an unfinished one
    /// resumes from its checkpoint. This is what each task of a Slurm job array runs.
    RunOne(RunOneArgs),
    /// Times our AV-MNIST and 3D-UNet MCKD training steps (median, min–max, peak RSS); the
    /// side-by-side comparison with PyTorch is `bench/run.sh`.
    Bench(mckd_bench::Args),
}

#[derive(clap::Args, Debug)]
struct RunOneArgs {
    /// The run folder (holds the run's config.json), e.g. GRID/runs/mckd-audio_10-seed1 or
    /// GRID/seed-0/mckd.
    run: PathBuf,
    /// Keep the trained model (model.bpk) in the run folder.
    #[arg(long)]
    save_model: bool,
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// Smaller data and fewer epochs (under a minute).
    #[arg(long)]
    quick: bool,
    /// Output folder [default: runs/<timestamp>-demo]; an existing non-empty one is refused
    /// unless --overwrite.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Move an existing --out aside (renamed, never deleted) and start again.
    #[arg(long)]
    overwrite: bool,
    /// First seed of data, initialisation and sampling; seeds `seed .. seed + seeds`.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of seeds (mean ± std and a paired t-test over them) [default: 5, quick: 3].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100))]
    seeds: Option<u64>,
    /// Training epochs (overrides the preset).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    epochs: Option<u64>,
    /// Training samples (overrides the preset).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    train_samples: Option<u64>,
    /// Noise σ of strong, medium and weak, comma separated (overrides the preset).
    #[arg(long, value_delimiter = ',')]
    noise: Option<Vec<f32>>,
    /// Weight α of the distillation loss for MCKD.
    #[arg(long, default_value_t = 0.1, value_parser = non_negative)]
    alpha: f64,
    /// A meta step every this many iterations.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    meta_interval: u64,
    /// Distance of the distillation loss.
    #[arg(long, value_enum, default_value_t = Distance::L1)]
    distance: Distance,
    /// Normalisation of the importance weights.
    #[arg(long, value_enum, default_value_t = Normalisation::Softmax)]
    normalisation: Normalisation,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    device: DeviceChoice,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a finite number ≥ 0, got {s}"))
    }
}

/// Parses the command line with negative numbers accepted as option values on every
/// subcommand, so that `--alpha -1` reaches our range checks (which name the option) instead of
/// clap's "unexpected argument '-1'".
fn parse_cli() -> Cli {
    fn negatives(cmd: clap::Command) -> clap::Command {
        cmd.allow_negative_numbers(true).mut_subcommands(negatives)
    }
    let matches = negatives(<Cli as clap::CommandFactory>::command()).get_matches();
    <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() {
    // Keep freed buffers in the heap (glibc only; see mckd_kernels::alloc).
    mckd_kernels::tune_allocator();
    let cli = parse_cli();
    // MCKD_SIMD may force the kernels' instruction-set path; refuse one the CPU lacks.
    if let Err(e) = mckd_kernels::simd_level() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    // Each job runs on a worker of the kernels' thread pool (see mckd_kernels::pool); the
    // benchmark sizes its pool itself (`--threads`).
    let on_pool = |job: Box<dyn FnOnce() -> anyhow::Result<()> + Send>| {
        mckd_kernels::run_on_pool(None, job).map_err(anyhow::Error::msg)?
    };
    let result = match cli.command {
        Command::Demo(args) => on_pool(Box::new(|| demo(args))),
        Command::Avmnist(cmd) => on_pool(Box::new(|| mckd_avmnist::cli::run(cmd))),
        Command::Brats(cmd) => on_pool(Box::new(|| mckd_brats::cli::run(cmd))),
        Command::RunOne(args) => on_pool(Box::new(move || {
            mckd_train::init_logging(false);
            if mckd_brats::grid::is_brats_run(&args.run) {
                return Ok(mckd_brats::grid::run_one(&args.run)?);
            }
            mckd_avmnist::cli::run_one_folder(&args.run, None, args.save_model)
        })),
        Command::Bench(args) => mckd_bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    mckd_train::init_logging(args.quiet);
    let start = Instant::now();
    let device = args.device.device()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| RunDir::default_path("demo"));
    let mut cfg = if args.quick {
        DemoConfig::quick()
    } else {
        DemoConfig::standard()
    };
    cfg.seed = args.seed;
    if let Some(e) = args.epochs {
        cfg.epochs = e as usize;
    }
    if let Some(n) = args.train_samples {
        cfg.train = n as usize;
    }
    if let Some(n) = &args.noise {
        match n[..] {
            [a, b, c] if n.iter().all(|v| v.is_finite() && *v >= 0.0) => cfg.noise = [a, b, c],
            _ => anyhow::bail!("--noise needs three numbers ≥ 0 (strong,medium,weak), got {n:?}"),
        }
    }
    cfg.method.alpha = args.alpha;
    cfg.meta_interval = args.meta_interval as usize;
    cfg.method.distance = args.distance;
    cfg.method.normalisation = args.normalisation;
    let (run, _) = RunDir::open(&out, OutPolicy::from_flags(false, args.overwrite))?;
    run.write_json("config.json", &cfg)?;

    let n_seeds = args.seeds.unwrap_or(if args.quick { 3 } else { 5 });
    let per_run = iterations_per_epoch(cfg.train, cfg.batch_size, false) * cfg.epochs;
    let bar = mckd_train::progress_bar(2 * n_seeds * per_run as u64, "demo: MCKD + Baseline");
    let names: Vec<String> = MODALITIES.iter().map(|s| s.to_string()).collect();
    let mut seeds = Vec::new();
    for seed in args.seed..args.seed + n_seeds {
        let cfg = cfg.clone().with_seed(seed);
        let data = DemoData::generate(&cfg);
        let mckd = run_method(&cfg, &data, DemoMethod::Mckd, &device, &bar);
        let baseline = run_method(&cfg, &data, DemoMethod::Baseline, &device, &bar);
        run.write(
            &format!("train_log_seed{seed}.csv"),
            log_csv(&mckd.log, &mckd.columns).as_bytes(),
        )?;
        run.write(
            &format!("train_log_baseline_seed{seed}.csv"),
            log_csv(&baseline.log, &baseline.columns).as_bytes(),
        )?;
        seeds.push(SeedResult {
            seed,
            mckd,
            baseline,
        });
    }
    bar.finish_and_clear();

    let secs = start.elapsed().as_secs_f64();
    let mut extra = serde_json::Map::new();
    extra.insert("wall_seconds".into(), serde_json::json!(secs));
    extra.insert("seeds".into(), serde_json::json!(n_seeds));
    let results = demo_report::results(&seeds, extra);
    run.write_json("results.json", &results)?;
    let table = demo_report::table(&seeds);
    run.write("table.md", table.as_bytes())?;
    let iwv_mean = demo_report::mean_iwv(&seeds);
    demo_report::plots(&run, &seeds[0])?;

    println!(
        "Accuracy (%) on {} test samples, every modality subset, mean ± std over {n_seeds} seeds:\n",
        cfg.test
    );
    println!("{table}");
    let iwv: Vec<String> = names
        .iter()
        .zip(&iwv_mean)
        .map(|(n, w)| format!("{n} {w:.3}"))
        .collect();
    println!(
        "MCKD's learned importance weights (normalised, mean over seeds): {}",
        iwv.join(", ")
    );
    println!("Wall time {secs:.1} s; run folder {}", run.path().display());
    run.set_status(RunState::Finished, None, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
