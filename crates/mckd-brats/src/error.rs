//! Errors of the BraTS task: each names the file or the value that is wrong.

use std::path::PathBuf;

/// Errors of `mckd-brats`.
#[derive(Debug, thiserror::Error)]
pub enum BratsError {
    /// Reading or writing a volume, a case folder, splits or a summary failed.
    #[error(transparent)]
    Volume(#[from] mckd_volume::VolumeError),
    /// The run folder cannot be written.
    #[error(transparent)]
    Run(#[from] mckd_train::run::RunError),
    /// A plot cannot be written.
    #[error(transparent)]
    Plot(#[from] mckd_plot::PlotError),
    /// A checkpoint cannot be saved or loaded.
    #[error("checkpoint {}: {problem}", path.display())]
    Checkpoint {
        /// The `.bpk` file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// A run's `config.json` is missing or unreadable.
    #[error("run configuration {}: {problem}", path.display())]
    Config {
        /// The `config.json` file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// A table written by an earlier run (`per_case.csv`) cannot be read back.
    #[error("table {}: {problem}", path.display())]
    Table {
        /// The table file.
        path: PathBuf,
        /// What is wrong (with the line number).
        problem: String,
    },
    /// Input volumes given together do not share a grid.
    #[error(
        "shape mismatch: {} is {:?} (i,j,k) but {} is {:?}",
        path_a.display(), dims_a, path_b.display(), dims_b
    )]
    ShapeMismatch {
        /// First file.
        path_a: PathBuf,
        /// Its dims.
        dims_a: [usize; 3],
        /// Second file.
        path_b: PathBuf,
        /// Its dims.
        dims_b: [usize; 3],
    },
    /// A modality file given on the command line does not exist.
    #[error("missing {modality} input file: {}", path.display())]
    MissingInput {
        /// Modality name.
        modality: String,
        /// The path given.
        path: PathBuf,
    },
    /// An argument or setting is out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A configuration value is invalid or a config file unreadable (names the field / file).
    #[error(transparent)]
    Settings(#[from] mckd_train::config::ConfigError),
    /// The training loop failed (checkpoint, resume).
    #[error(transparent)]
    Loop(#[from] mckd_train::train::LoopError),
    /// Training stopped: diverged, or interrupted (a checkpoint allows `--resume`).
    #[error("{0}")]
    Stopped(String),
}

/// Result type of `mckd-brats`.
pub type Result<T> = std::result::Result<T, BratsError>;
