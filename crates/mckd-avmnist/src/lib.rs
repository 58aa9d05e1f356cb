//! # mckd-avmnist — the AV-MNIST task of MCKD (paper Table 2)
//!
//! * [`model`]: SMIL-style image and audio encoders and the classifier head; implements
//!   [`mckd_core::Task`] and [`mckd_train::eval::Classifier`].
//! * [`data`]: [`mckd_train::train::Source`] over the samples of `mckd-data`, with per-sample
//!   availability.
//! * [`experiment`]: settings (`audio_10`, `visual_5`, ...), methods (`lowerb_image`,
//!   `lowerb_audio`, `upperb`, `baseline`, `mckd`), one run, many runs in parallel.
//! * [`report`]: `results.json`, `table2.md` / `table2.csv`, IWV series.
//! * [`cli`]: the `mckd avmnist {reproduce, train, eval}` subcommands.

#![warn(missing_docs)]

pub mod cli;
pub mod data;
pub mod experiment;
pub mod model;
pub mod report;

pub use cli::{AvmnistCommand, run};
pub use data::AvSource;
pub use experiment::{
    AvmnistError, ExperimentConfig, Method, PercentMapping, RunOutcome, RunSpec, Setting,
};
pub use model::{AvBatch, AvmnistNet, AvmnistNetConfig};
