//! # mckd-brats — BraTS brain-tumour segmentation with MCKD
//!
//! The BraTS task of the toolkit (DESIGN §2.2, paper Table 1):
//!
//! * [`model`]: a 3D UNet whose encoder is shared by the four MRI modalities (each fed as a
//!   1-channel volume), fusion by channel concatenation at every level, CKD at the bottleneck,
//!   and the soft-Dice + BCE loss; it implements [`mckd_core::Task`].
//! * [`data`]: training and meta-validation crops as a [`mckd_train::train::Source`].
//! * [`infer`]: sliding-window prediction on any modality subset, label maps, NIfTI output.
//! * [`experiment`]: training runs, evaluation of all 15 subsets, the paper-style table,
//!   plot data, the demo.
//! * [`seeds`]: the demo over several seeds and its summary (mean ± std, paired t-test).
//! * [`cli`]: the `mckd brats ...` subcommands ([`cli::BratsCommand`], [`cli::run`]).
//!
//! Axis order: volumes are NIfTI (i, j, k) with i fastest (see `mckd-volume`); tensors are
//! `[batch, channels, D, H, W]` with `(D, H, W) = (k, j, i)`.

pub mod cli;
pub mod data;
pub mod dualnet;
pub mod error;
pub mod experiment;
pub mod infer;
pub mod model;
pub mod seeds;

pub use cli::{BratsCommand, run};
pub use error::BratsError;
pub use model::{BratsBatch, BratsUNet, UNetConfig, segmentation_loss};
