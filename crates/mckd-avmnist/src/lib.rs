//! # mckd-avmnist — the AV-MNIST task of MCKD (paper Table 2)
//!
//! * [`model`]: SMIL-style image and audio encoders and the classifier head; implements
//!   [`mckd_core::Task`].
//! * [`data`]: [`mckd_train::train::Source`] over the samples of `mckd-data`, with per-sample
//!   availability.
//! * [`config`]: settings (`audio_10`, `visual_5`, ...), methods (`lowerb_image`,
//!   `lowerb_audio`, `upperb`, `baseline`, `mckd`), the run configuration and its presets.
//! * [`run`](mod@run): one run — its data, its method, training through the shared loop, evaluation.
//! * [`grid`]: many runs as plan → run one → merge, one folder per run.
//! * [`peers`]: the peer methods of Table 2 (AutoEncoder, GAN, Full2miss, SMIL, ShaSpec).
//! * [`pool`]: runs of a grid in child processes.
//! * [`report`]: `results.json`, `table2.md` / `table2.csv`, IWV series.
//! * [`cli`]: the `mckd avmnist {reproduce, train, eval, merge}` subcommands.

#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod data;
pub mod grid;
pub mod model;
pub mod peers;
pub mod pool;
pub mod report;
pub mod run;

pub use cli::AvmnistCommand;
pub use cli::run;
pub use config::{AvMethod, AvRunConfig, AvTask, MethodKind, PercentMapping, Preset, Setting};
pub use data::AvSource;
pub use model::{AvBatch, AvmnistNet, AvmnistNetConfig};
pub use run::{AvmnistError, RunOutcome, RunSpec};

#[cfg(test)]
pub(crate) mod tests_util {
    use burn::prelude::*;

    /// Values of a tensor as `f32`.
    pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        mckd_train::to_vec(t)
    }

    /// Asserts element-wise closeness with an absolute tolerance.
    #[track_caller]
    pub fn assert_close(actual: &[f32], expected: &[f32], tol: f32) {
        assert_eq!(actual.len(), expected.len(), "length mismatch");
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!(
                (a - e).abs() <= tol,
                "element {i}: got {a}, expected {e} (tol {tol})"
            );
        }
    }
}
