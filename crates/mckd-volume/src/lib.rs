//! `mckd-volume`: the 3-D medical-volume data layer for BraTS segmentation.
//!
//! Plain Rust, no deep-learning framework: arrays in, arrays out.
//! - [`nifti_io`]: read/write single-file NIfTI-1 (`.nii`, `.nii.gz`) keeping the header;
//! - [`brats`]: label conventions (BraTS 2018 vs 2023+), regions (ET, TC, WT), case folders,
//!   [`brats::load_case`];
//! - [`preprocess`]: the reference per-modality normalisation;
//! - [`crop`]: seeded training crops; [`sliding`]: sliding-window inference;
//! - [`metrics`]: Dice and HD95 with the official BraTS edge cases, `summary.json`;
//! - [`phantom`]: seeded synthetic heads with tumours (the CPU default data set);
//! - [`splits`]: seeded train / meta-val / test splits in `splits.json`;
//! - [`resample`]: brain bounding boxes, crops and linear resampling to another spacing;
//! - [`prepared`]: cases cropped and resampled for the `--spacing MM` pipeline, the way back
//!   for predictions, and an on-disk cache of prepared cases;
//! - [`check`]: every case a command will use checked up front, all problems in one report.
//!
//! # Conventions
//! - Voxel order is NIfTI's, `i` fastest: `index = i + di * (j + dj * k)`; every
//!   `[usize; 3]` (dims, crop sizes, tiles, voxel indices) is (i, j, k). The same buffer is
//!   a row-major tensor `[dk, dj, di]`; multi-channel buffers are `[C, dk, dj, di]`.
//!   The paper's 80×160×160 crops/tiles (D, H, W) are `[160, 160, 80]` here.
//! - Modalities: 0 Flair, 1 T1, 2 T1c, 3 T2 ([`brats::MODALITIES`]).
//! - Region channels: (ET, TC, WT) ([`brats::Region::ALL`]).
//! - Randomness is explicit: functions take a seed or an `&mut impl Rng`.

#![warn(missing_docs)]

pub mod brats;
pub mod check;
pub mod crop;
pub mod error;
pub mod metrics;
pub mod nifti_io;
pub mod phantom;
pub mod prepared;
pub mod preprocess;
pub mod resample;
pub mod sliding;
pub mod splits;
pub mod volume;

#[cfg(test)]
mod fuzz_tests;

pub use brats::{
    Case, FileNaming, LabelConvention, LoadedCase, MODALITIES, MODALITY_SUFFIXES, Region,
    discover_cases, implied_convention, labels_to_regions, load_case, probs_to_labels,
    regions_to_labels,
};
pub use check::{CheckOptions, DataReport, Problem, check_case, check_data};
pub use crop::{Crop, CropConfig, ForegroundIndex, random_crop};
pub use error::{Result, VolumeError, error_chain};
pub use metrics::{CaseMetrics, MeanMetrics, RegionMetrics, evaluate_case, mean_metrics};
pub use nifti_io::{
    StorageType, read_header, read_labels, read_volume, write_labels_like, write_volume_as,
    write_volume_like,
};
pub use phantom::{Phantom, PhantomConfig, make_phantom, write_phantom_dataset};
pub use prepared::{
    CacheOutcome, CaseGrid, PreparedCache, ResampledCase, prepare_case, prepare_loaded,
    restore_labels, restore_probabilities,
};
pub use preprocess::{ClipRule, normalise, normalise_with};
pub use resample::BBox;
pub use sliding::sliding_window;
pub use splits::{SplitFractions, Splits, make_splits};
pub use volume::{Header, Volume};

/// Re-export of the `nifti` crate, whose header type [`Header::nifti`] returns.
pub use nifti;
