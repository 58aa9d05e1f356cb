//! # mckd-brats — BraTS brain-tumour segmentation with MCKD
//!
//! The BraTS task of the toolkit (DESIGN §2.2, paper Table 1):
//!
//! * [`model`]: a 3D UNet whose encoder is shared by the four MRI modalities (each fed as a
//!   1-channel volume), fusion by channel concatenation at every level, and the soft-Dice + BCE
//!   loss; it implements [`mckd_core::Task`].
//! * [`peers`]: the peers of Table 1 (U-HeMIS, U-HVED, ShaSpec, mmFormer, Robust-MSeg) as
//!   methods of the same harness, in CPU-sized forms.
//! * [`config`]: the run configuration (method, optimiser, schedule, loop, task) and presets.
//! * [`data`]: training and meta-validation crops as a [`mckd_train::train::Source`].
//! * [`train`]: one training run of any method ([`train::BratsAnyMethod`]) through the shared
//!   loop, with the feature-gap probe.
//! * [`infer`]: sliding-window prediction on any modality subset, label maps, NIfTI output.
//! * [`evaluate`]: prediction and scoring as separate stages on files (nnU-Net's shape).
//! * [`eval`]: the `brats eval` shortcut (predict + score a run's test cases), overlays.
//! * [`report`]: the paper-style table and `results.json`.
//! * [`plots`]: IWV, losses, feature gap and overlay figures.
//! * [`demo`], [`seeds`]: the phantom demo, over one or several seeds.
//! * [`pooled`]: Table 1 pooled over the test cases of every seed.
//! * [`cli`]: the `mckd brats ...` subcommands ([`cli::BratsCommand`], [`cli::run`]).
//!
//! Axis order: volumes are NIfTI (i, j, k) with i fastest (see `mckd-volume`); tensors are
//! `[batch, channels, D, H, W]` with `(D, H, W) = (k, j, i)`.

pub mod cli;
pub mod config;
pub mod data;
pub mod demo;
pub mod dualnet;
pub mod error;
pub mod eval;
pub mod evaluate;
pub mod grid;
pub mod infer;
pub mod model;
pub mod peers;
pub mod plots;
pub mod pooled;
pub mod report;
pub mod seeds;
pub mod train;

pub use cli::{BratsCommand, run};
pub use config::{BratsMethod, BratsRunConfig, BratsTask};
pub use error::BratsError;
pub use model::{BratsBatch, BratsUNet, DiceReduction, UNetConfig, segmentation_loss};
