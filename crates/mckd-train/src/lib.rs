//! # mckd-train — training, evaluation and reports for MCKD tasks
//!
//! The layer between the method core ([`mckd_core`]) and the command line: the one training
//! loop ([`train`]: iteration budget, sampling policy, stages, meta phases, observers,
//! checkpoints and resume) for every [`mckd_core::Method`], the nested run configuration
//! ([`config`]), the observers every run uses and checkpoint folders ([`observe`]), evaluation
//! over every modality subset ([`eval`]), tables, statistics and `results.json` ([`report`],
//! [`stats`]), run folders that never mix runs ([`run`]) and device choice ([`device`]).
//! Tasks (AV-MNIST, BraTS, the synthetic demo) plug in through [`mckd_core::Task`] and
//! [`train::Source`].

pub mod cluster;
pub mod config;
pub mod device;
pub mod eval;
pub mod fault;
pub mod observe;
pub mod report;
pub mod run;
pub mod stats;
pub mod train;

/// Values of a tensor as `f32` (host copy).
pub fn to_vec<const D: usize>(t: burn::prelude::Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 tensor data")
}

/// Values of an integer tensor as `i64` (host copy).
pub fn to_vec_int<const D: usize>(t: burn::prelude::Tensor<D, burn::prelude::Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("i64 tensor data")
}

/// Library messages go through the `log` facade (info: progress notes, warn: things a user
/// should act on); this is the binary's logger: plain lines on stderr, `--quiet` keeps only
/// warnings and errors, and progress bars follow the same level ([`progress_bar`]).
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match record.level() {
            log::Level::Error => eprintln!("error: {}", record.args()),
            log::Level::Warn => eprintln!("warning: {}", record.args()),
            _ => eprintln!("{}", record.args()),
        }
    }

    fn flush(&self) {}
}

/// Installs the stderr logger (once per process) at `info`, or `warn` when `quiet`.
pub fn init_logging(quiet: bool) {
    static LOGGER: StderrLogger = StderrLogger;
    // A second call (tests, nested commands) keeps the installed logger and only sets the level.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(if quiet {
        log::LevelFilter::Warn
    } else {
        log::LevelFilter::Info
    });
}

/// A progress bar with the house style; hidden when informational output is off (`--quiet`, or
/// no logger installed: a library user sees no bars). When stderr is not a terminal (a Slurm
/// log, `nohup`, a pipe) indicatif draws nothing, so a line of position, elapsed time and ETA is
/// logged instead every [`PROGRESS_LOG_INTERVAL`] while the bar runs.
pub fn progress_bar(len: u64, message: &str) -> indicatif::ProgressBar {
    if !log::log_enabled!(log::Level::Info) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>24} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta} left)",
        )
        .expect("valid template"),
    );
    bar.set_message(message.to_string());
    if bar.is_hidden() {
        log_progress_every(&bar, PROGRESS_LOG_INTERVAL, |line| log::info!("{line}"));
    }
    bar
}

/// How often a progress bar that cannot be drawn logs its state: a line a minute keeps a
/// two-hour run's log short and still answers "is it moving, when will it end".
pub const PROGRESS_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Emits [`progress_line`] of `bar` every `interval` from a background thread until the bar is
/// finished or dropped (the thread holds only a weak reference, and looks at it every 100 ms
/// at most so that it ends soon after the bar).
fn log_progress_every(
    bar: &indicatif::ProgressBar,
    interval: std::time::Duration,
    emit: impl Fn(String) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let weak = bar.downgrade();
    let poll = interval.min(std::time::Duration::from_millis(100));
    std::thread::spawn(move || {
        let mut next = std::time::Instant::now() + interval;
        loop {
            std::thread::sleep(poll);
            let Some(bar) = weak.upgrade() else { return };
            if bar.is_finished() {
                return;
            }
            if std::time::Instant::now() >= next {
                emit(progress_line(
                    &bar.message(),
                    bar.position(),
                    bar.length(),
                    bar.elapsed(),
                    bar.eta(),
                ));
                next += interval;
            }
        }
    })
}

/// One logged progress line: `train mckd: 300/2400 (12 %), 0:04:31 elapsed, ~0:31:40 left`
/// (no ETA before the first step, none without a length).
fn progress_line(
    message: &str,
    position: u64,
    length: Option<u64>,
    elapsed: std::time::Duration,
    eta: std::time::Duration,
) -> String {
    let hms = |d: std::time::Duration| {
        let s = d.as_secs();
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    };
    match length {
        Some(len) if len > 0 => {
            let left = if position > 0 && position < len {
                format!(", ~{} left", hms(eta))
            } else {
                String::new()
            };
            format!(
                "{message}: {position}/{len} ({} %), {} elapsed{left}",
                100 * position / len,
                hms(elapsed)
            )
        }
        _ => format!("{message}: {position}, {} elapsed", hms(elapsed)),
    }
}

/// Serialises seeded work inside one process.
///
/// burn seeds a backend's random generator process-wide (`Device::seed`), and weight
/// initialisation and dropout draw from it. Two trainings on different threads of one process
/// would interleave their draws and lose determinism, so every seeded use holds this guard from
/// `seed` to its last draw: [`init_seeded`] for an initialisation, the whole training where
/// dropout draws from burn's generator (the demo). Independent runs in parallel belong in
/// separate processes. Not reentrant: do not call [`init_seeded`] while holding it.
pub fn rng_guard() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Builds a module with `init` while the device generator is seeded with `seed` (under
/// [`rng_guard`]) and draws every lazily initialised parameter at once, in module order: the
/// values depend on `seed` alone, whatever other threads of the process draw before or after
/// (burn draws a lazy parameter at its first use otherwise).
pub fn init_seeded<M: burn::module::Module>(
    seed: u64,
    device: &burn::prelude::Device,
    init: impl FnOnce() -> M,
) -> M {
    let _guard = rng_guard();
    device.seed(seed);
    let module = init();
    module.visit(&mut Materialise);
    module
}

/// Forces lazily initialised parameters to be drawn.
struct Materialise;

impl burn::module::ModuleVisitor for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::Tensor<D>>) {
        let _ = param.val();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::prelude::*;

    fn weights(l: &Linear) -> Vec<f32> {
        l.weight.val().into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn progress_lines_show_position_elapsed_and_eta() {
        use std::time::Duration;
        let s = Duration::from_secs;
        assert_eq!(
            progress_line("train mckd", 300, Some(2400), s(271), s(1900)),
            "train mckd: 300/2400 (12 %), 0:04:31 elapsed, ~0:31:40 left"
        );
        // No estimate before the first step or after the last; no length, no fraction.
        assert_eq!(
            progress_line("predict", 0, Some(75), s(3), s(0)),
            "predict: 0/75 (0 %), 0:00:03 elapsed"
        );
        assert_eq!(
            progress_line("predict", 75, Some(75), s(3725), s(0)),
            "predict: 75/75 (100 %), 1:02:05 elapsed"
        );
        assert_eq!(
            progress_line("scan", 7, None, s(59), s(0)),
            "scan: 7, 0:00:59 elapsed"
        );
    }

    #[test]
    fn an_undrawn_bar_logs_lines_until_it_finishes() {
        use std::time::Duration;
        let bar = indicatif::ProgressBar::hidden();
        bar.set_length(10);
        bar.set_message("train x");
        let (tx, rx) = std::sync::mpsc::channel();
        let reporter = log_progress_every(&bar, Duration::from_millis(20), move |line| {
            let _ = tx.send(line);
        });
        bar.inc(3);
        let wait = Duration::from_secs(10);
        let line = loop {
            let line = rx.recv_timeout(wait).expect("a progress line");
            if line.starts_with("train x: 3/10 (30 %)") {
                break line;
            }
        };
        assert!(line.contains("elapsed, ~"), "{line}");
        bar.finish();
        reporter.join().unwrap();
        // A dropped bar ends its reporter too.
        let bar = indicatif::ProgressBar::hidden();
        let reporter = log_progress_every(&bar, Duration::from_millis(20), |_| {});
        drop(bar);
        reporter.join().unwrap();
    }

    #[test]
    fn init_seeded_draws_everything_before_others_draw() {
        let device = Device::flex();
        let init = || LinearConfig::new(16, 8).init(&device);
        let a = init_seeded(7, &device, init);
        // Another seeding and draw before the parameters are first read: a lazily drawn
        // parameter would take its values from this stream.
        device.seed(99);
        let _ = Tensor::<1>::random([1000], burn::tensor::Distribution::Default, &device);
        let b = init_seeded(7, &device, init);
        device.seed(99);
        let c = init_seeded(8, &device, init);
        assert_eq!(weights(&a), weights(&b));
        assert_ne!(weights(&a), weights(&c));
    }
}
