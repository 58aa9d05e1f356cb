//! mckd-volume
pub mod brats;
pub mod error;
pub mod nifti_io;
pub mod preprocess;
pub mod volume;
