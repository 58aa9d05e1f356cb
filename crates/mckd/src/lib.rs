//! The `mckd` command line and the synthetic demo.
//!
//! Tasks live in their own crates (`mckd-avmnist`, `mckd-brats`); this crate holds the embedded
//! default — the [`demo`] — and the report it prints.

pub mod demo;
pub mod demo_report;
