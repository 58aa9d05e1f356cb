//! # mckd-bench — times mckd's MCKD training steps
//!
//! Real [`mckd_core::Mckd`] steps on random data of the right shapes, for the two task networks:
//!
//! * **AV-MNIST** (`mckd_avmnist::model`, 369,784 trainable parameters): the inner step with
//!   CKD (α = 0.1) at batch 64 with every modality present (`inner_all`) and with per-sample
//!   random masks drawn by the reference rule (`inner_random`), and the meta step (`meta`);
//!   Adam (lr 1e-3, ε 1e-8, L2 1e-2) for the task, the IWV's own Adam (lr 1e-2, L2 1e-2).
//! * **BraTS 3D UNet** (`mckd_brats::model`, base width 8 → 509,195 parameters): the inner step
//!   (`inner_random`) on 4 modalities, batch 2, crops 64³, SGD Nesterov momentum 0.99.
//!
//! Warm-up steps are excluded. Output: one JSON line per step kind on stdout (times of every
//! timed step, median, min, max, the process's peak RSS from `/proc/self/status` `VmHWM`,
//! FLOPs from layer shapes — see [`flops`]); a readable summary on stderr. `--model all` runs
//! each model in a fresh child process so that each peak RSS belongs to one model.
//!
//! `--model peak` measures the fp32 peak of the pool's threads with an FMA loop at the
//! kernels' instruction-set level ([`peak`]). The level is `MCKD_SIMD` or the best the CPU has
//! (`mckd_kernels::simd_level`; a level the CPU lacks is an error) and is recorded in every
//! line (`simd`).
//!
//! `bench/run.sh` drives this binary and the PyTorch copies in `bench/torch_mckd.py`.

pub mod flops;
pub mod peak;

/// The glibc allocator setting of `mckd-kernels` (re-exported so the `mckd` binary, which
/// depends on this crate, can call it first thing in `main`).
pub use mckd_kernels::tune_allocator;

use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::{ModuleVisitor, Param};
use burn::optim::SgdConfig;
use burn::optim::momentum::MomentumConfig;
use burn::prelude::*;
use mckd_avmnist::model::{AvBatch, AvmnistNetConfig};
use mckd_brats::data::batch_from_buffers;
use mckd_brats::model::UNetConfig;
use mckd_core::{
    IwvOptimConfig, Mckd, MckdConfig, MckdModel, Normalisation, SubsetSampling, Task, mask_tensor,
    sample_subset,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Which network to time.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// The AV-MNIST CNN: inner step (all present, random masks) and meta step.
    Avmnist,
    /// The BraTS shared-encoder 3D UNet: inner step.
    Unet,
    /// Both, each in a fresh child process (per-model peak RSS).
    All,
    /// The fp32 peak of the threads: an FMA loop at the kernels' level (see [`peak`]).
    Peak,
}

/// `mckd-bench` / `mckd bench`: times our side of the PyTorch comparison (issue 5).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Network to time.
    #[arg(long, value_enum, default_value_t = Model::All)]
    pub model: Model,
    /// Threads for burn's CPU kernels (rayon pool size).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Warm-up steps per step kind (not timed) [default: 3 AV-MNIST, 1 UNet].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Timed steps per step kind [default: 20 AV-MNIST, 3 UNet].
    #[arg(long)]
    pub steps: Option<usize>,
    /// AV-MNIST batch size.
    #[arg(long, default_value_t = 64)]
    pub avmnist_batch: usize,
    /// UNet batch size.
    #[arg(long, default_value_t = 2)]
    pub unet_batch: usize,
    /// UNet crop side (cubic crops; a multiple of 8).
    #[arg(long, default_value_t = 64)]
    pub crop: usize,
    /// UNet base width c.
    #[arg(long, default_value_t = 8)]
    pub base: usize,
    /// Also time the UNet meta step.
    #[arg(long)]
    pub unet_meta: bool,
    /// Seed of parameters, data and masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the kernels' instruction-set level (`MCKD_SIMD`, or the CPU's best) and exit;
    /// an error if the CPU lacks it.
    #[arg(long)]
    pub print_simd: bool,
}

/// Parser for the standalone binary.
#[derive(clap::Parser, Debug)]
#[command(name = "mckd-bench", version, about)]
pub struct Cli {
    /// Options.
    #[command(flatten)]
    pub args: Args,
}

/// Timings of one step kind, printed as one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// Always "mckd" (the PyTorch script writes "torch").
    pub side: &'static str,
    /// "avmnist" or "unet".
    pub model: &'static str,
    /// "inner_all", "inner_random" or "meta".
    pub step: &'static str,
    /// Batch size.
    pub batch: usize,
    /// Thread count.
    pub threads: usize,
    /// Trainable parameters of the task network (without the IWV, without buffers).
    pub params: usize,
    /// Warm-up steps (excluded).
    pub warmup: usize,
    /// Every timed step, milliseconds.
    pub times_ms: Vec<f64>,
    /// Median of `times_ms`.
    pub median_ms: f64,
    /// Minimum of `times_ms`.
    pub min_ms: f64,
    /// Maximum of `times_ms`.
    pub max_ms: f64,
    /// FLOPs of one step ([`flops`]).
    pub flop: u64,
    /// Peak resident set of the process (VmHWM), MiB, read after all steps of the model.
    pub peak_rss_mib: f64,
    /// Extra shape information.
    pub shape: String,
    /// The kernels' instruction-set level (`scalar`, `avx2` or `avx512`).
    pub simd: &'static str,
}

/// The measured peak, printed as one JSON line by `--model peak`.
#[derive(Debug, Clone, Serialize)]
pub struct Peak {
    /// Always "mckd".
    pub side: &'static str,
    /// Always "peak".
    pub model: &'static str,
    /// The level of the FMA loop.
    pub simd: &'static str,
    /// Threads running the loop at once.
    pub threads: usize,
    /// fp32 lanes per FMA.
    pub lanes: usize,
    /// Achieved GFLOP/s, all threads together (best of the repetitions).
    pub gflops: f64,
}

/// Environment variable naming the model of a child process of `--model all`.
const CHILD_MODEL: &str = "MCKD_BENCH_CHILD_MODEL";

/// Runs the benchmark (see the crate docs).
///
/// # Errors
/// If the thread pool cannot be configured, a child process fails, or sizes are invalid.
pub fn run(args: Args) -> anyhow::Result<()> {
    let level = mckd_kernels::simd_level()?;
    if args.print_simd {
        println!("{level}");
        return Ok(());
    }
    let model = match std::env::var(CHILD_MODEL).ok().as_deref() {
        Some("avmnist") => Model::Avmnist,
        Some("unet") => Model::Unet,
        _ => args.model,
    };
    if model == Model::All {
        return run_children();
    }
    if args.threads == 0 {
        bail!("--threads must be positive");
    }
    if model == Model::Peak {
        let gflops =
            mckd_kernels::run_on_pool(Some(args.threads), || peak::fma_peak_gflops(level, 0.3, 5))
                .map_err(anyhow::Error::msg)?;
        eprintln!(
            "mckd peak: {gflops:.1} GFLOP/s fp32 ({} threads, {level} FMA loop)",
            args.threads
        );
        let p = Peak {
            side: "mckd",
            model: "peak",
            simd: level.name(),
            threads: args.threads,
            lanes: peak::lanes(level),
            gflops,
        };
        println!("{}", serde_json::to_string(&p)?);
        return Ok(());
    }
    let series = mckd_kernels::run_on_pool(Some(args.threads), || match model {
        Model::Avmnist => bench_avmnist(&args),
        Model::Unet => bench_unet(&args),
        Model::All | Model::Peak => unreachable!("handled above"),
    })
    .map_err(anyhow::Error::msg)??;
    let rss = peak_rss_mib()?;
    for mut s in series {
        s.peak_rss_mib = rss;
        s.simd = level.name();
        eprintln!(
            "mckd {:>8} {:<12} [{}] median {:>9.2} ms  min {:>9.2}  max {:>9.2}  {:>6.1} GFLOP/s  \
             peak RSS {:.0} MiB",
            s.model,
            s.step,
            s.simd,
            s.median_ms,
            s.min_ms,
            s.max_ms,
            s.flop as f64 / s.median_ms / 1e6,
            s.peak_rss_mib
        );
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}

/// Re-runs this executable once per model with the same arguments.
fn run_children() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the benchmark executable")?;
    for name in ["avmnist", "unet"] {
        let status = std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env(CHILD_MODEL, name)
            .status()
            .with_context(|| format!("running {} for {name}", exe.display()))?;
        if !status.success() {
            bail!("the {name} benchmark failed: {status}");
        }
    }
    Ok(())
}

/// Peak resident set size of this process in MiB (`VmHWM` of `/proc/self/status`).
///
/// # Errors
/// If the file cannot be read or has no `VmHWM` line (not Linux).
pub fn peak_rss_mib() -> anyhow::Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM line in /proc/self/status")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmHWM line")?
        .parse()
        .context("malformed VmHWM value")?;
    Ok(kib / 1024.0)
}

/// Median, minimum and maximum.
fn summary(times: &[f64]) -> (f64, f64, f64) {
    let mut v = times.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    };
    (median, v[0], v[n - 1])
}

/// Trainable parameters: elements of the parameters that require a gradient (batch-norm
/// running statistics are buffers and do not). Needs a module on an autodiff device.
pub fn trainable_params<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            if t.is_require_grad() {
                self.0 += t.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    module.visit(&mut c);
    c.0
}

/// Uniform values in `[lo, hi)`.
fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| lo + (hi - lo) * rng.random::<f32>())
        .collect()
}

/// Per-sample presence masks drawn by the reference rule.
fn random_masks(rng: &mut ChaCha8Rng, batch: usize, n: usize) -> Vec<Vec<bool>> {
    (0..batch)
        .map(|_| sample_subset(SubsetSampling::Reference, n, rng))
        .collect()
}

/// A random AV-MNIST batch: images and MFCCs uniform in [-1, 1], labels `i mod 10`.
pub fn avmnist_batch(rng: &mut ChaCha8Rng, b: usize, device: &Device) -> AvBatch {
    AvBatch {
        image: Tensor::from_data(
            TensorData::new(uniform(rng, b * 28 * 28, -1.0, 1.0), [b, 1, 28, 28]),
            device,
        ),
        audio: Tensor::from_data(
            TensorData::new(uniform(rng, b * 20 * 20, -1.0, 1.0), [b, 1, 20, 20]),
            device,
        ),
        labels: Tensor::from_data(
            TensorData::new((0..b as i64).map(|i| i % 10).collect(), [b]),
            device,
        ),
    }
}

/// The AV-MNIST method as in `mckd avmnist` (Adam ε 1e-8, L2 1e-2; IWV L2 1e-2).
pub fn avmnist_setup(seed: u64, device: &Device) -> Mckd<mckd_avmnist::AvmnistNet> {
    let net = AvmnistNetConfig::new().init_seeded(seed, device);
    let model = MckdModel::new(net, Normalisation::Softmax, seed, device);
    let optim = mckd_kernels::FusedAdamConfig::new(1e-8, Some(1e-2)).init();
    let config = MckdConfig {
        iwv: IwvOptimConfig {
            weight_decay: 1e-2,
            ..IwvOptimConfig::default()
        },
        ..MckdConfig::default()
    };
    Mckd::new(model, config, optim)
}

fn bench_avmnist(args: &Args) -> anyhow::Result<Vec<Series>> {
    let warmup = args.warmup.unwrap_or(3);
    let steps = args.steps.unwrap_or(20).max(1);
    let b = args.avmnist_batch;
    if b < 2 {
        bail!("batch norm needs an AV-MNIST batch of at least 2");
    }
    let device = Device::flex().autodiff();
    let mut trainer = avmnist_setup(args.seed, &device);
    let params = trainable_params(&trainer.model().task);
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0xBE7C);
    let batch = avmnist_batch(&mut rng, b, &device);
    let meta_batch = avmnist_batch(&mut rng, b, &device);
    let all = mask_tensor(&vec![vec![true; 2]; b], &device);
    let mut times = [vec![], vec![], vec![]];
    // As in the AV-MNIST training loop (`mckd_train::train::train`): the other pool workers
    // spin through the steps.
    mckd_kernels::with_busy_workers(|| {
        for i in 0..warmup + steps {
            let t = Instant::now();
            trainer.inner_step(&batch, &all, 1e-3);
            let t_all = t.elapsed();
            let masks = random_masks(&mut rng, b, 2);
            let t = Instant::now();
            let mask = mask_tensor(&masks, &device);
            trainer.inner_step(&batch, &mask, 1e-3);
            let t_rand = t.elapsed();
            let t = Instant::now();
            trainer.meta_step_on(&meta_batch);
            let t_meta = t.elapsed();
            if i >= warmup {
                for (v, d) in times.iter_mut().zip([t_all, t_rand, t_meta]) {
                    v.push(d.as_secs_f64() * 1e3);
                }
            }
        }
    });
    let flop = [
        flops::avmnist_inner_step(b),
        flops::avmnist_inner_step(b),
        flops::avmnist_meta_step(b),
    ];
    let names = ["inner_all", "inner_random", "meta"];
    Ok(names
        .into_iter()
        .zip(times)
        .zip(flop)
        .map(|((step, t), flop)| {
            series(args, "avmnist", step, b, params, warmup, t, flop)
                .with_shape("image [B,1,28,28], audio [B,1,20,20]")
        })
        .collect())
}

fn bench_unet(args: &Args) -> anyhow::Result<Vec<Series>> {
    let warmup = args.warmup.unwrap_or(1);
    let steps = args.steps.unwrap_or(3).max(1);
    let (b, s, c) = (args.unet_batch, args.crop, args.base);
    mckd_brats::model::check_spatial([s, s, s])?;
    let device = Device::flex().autodiff();
    device.seed(args.seed);
    let net = UNetConfig::new()
        .with_base(c)
        .with_spatial([s, s, s])
        .init(&device);
    let model = MckdModel::new(net, Normalisation::Softmax, args.seed, &device);
    let params = trainable_params(&model.task);
    let optim = SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(0.99)
                .with_dampening(0.0)
                .with_nesterov(true),
        ))
        .init();
    let n_mod = model.task.modalities().len();
    let mut trainer = Mckd::new(model, MckdConfig::default(), optim);
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0xB4A75);
    let n = s * s * s;
    let images = (0..4)
        .map(|_| uniform(&mut rng, b * n, -1.0, 1.0))
        .collect();
    let targets = (0..b * 3 * n)
        .map(|_| f32::from(rng.random::<f32>() < 0.1))
        .collect();
    let batch = batch_from_buffers(images, Some(targets), b, [s, s, s], &device);
    let mut inner = vec![];
    let mut meta = vec![];
    for i in 0..warmup + steps {
        let masks = random_masks(&mut rng, b, n_mod);
        let t = Instant::now();
        let mask = mask_tensor(&masks, &device);
        trainer.inner_step(&batch, &mask, 1e-2);
        let t_inner = t.elapsed();
        if i >= warmup {
            inner.push(t_inner.as_secs_f64() * 1e3);
        }
        if args.unet_meta {
            let t = Instant::now();
            trainer.meta_step_on(&batch);
            if i >= warmup {
                meta.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let shape = format!("4 modalities × [B,1,{s},{s},{s}], base {c}");
    let mut out = vec![
        series(
            args,
            "unet",
            "inner_random",
            b,
            params,
            warmup,
            inner,
            flops::unet_inner_step(b, c, s, n_mod),
        )
        .with_shape(&shape),
    ];
    if args.unet_meta {
        // Encoders forward only, decoder forward + backward.
        let enc_only = flops::unet_forward(b, c, s, n_mod) - flops::unet_forward(b, c, s, 0);
        let flop = flops::unet_inner_step(b, c, s, n_mod) - 2 * enc_only;
        out.push(series(args, "unet", "meta", b, params, warmup, meta, flop).with_shape(&shape));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn series(
    args: &Args,
    model: &'static str,
    step: &'static str,
    batch: usize,
    params: usize,
    warmup: usize,
    times_ms: Vec<f64>,
    flop: u64,
) -> Series {
    let (median_ms, min_ms, max_ms) = summary(&times_ms);
    Series {
        side: "mckd",
        model,
        step,
        batch,
        threads: args.threads,
        params,
        warmup,
        times_ms,
        median_ms,
        min_ms,
        max_ms,
        flop,
        peak_rss_mib: 0.0,
        shape: String::new(),
        simd: "",
    }
}

impl Series {
    fn with_shape(mut self, shape: &str) -> Self {
        self.shape = shape.to_string();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avmnist_steps_run_and_parameters_match_the_layer_table() {
        let device = Device::flex().autodiff();
        let mut trainer = avmnist_setup(0, &device);
        assert_eq!(trainable_params(&trainer.model().task), 369_784);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let batch = avmnist_batch(&mut rng, 4, &device);
        let mask = mask_tensor(&random_masks(&mut rng, 4, 2), &device);
        let stats = trainer.inner_step(&batch, &mask, 1e-3);
        assert!(stats.task_loss.is_finite());
        let meta = trainer.meta_step_on(&batch);
        assert!(meta.is_finite());
        let (median, lo, hi) = summary(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((median, lo, hi), (2.5, 1.0, 10.0));
        assert!(peak_rss_mib().unwrap() > 1.0);
    }
}
