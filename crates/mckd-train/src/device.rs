//! Picking a compute device among the backends compiled in.

use burn::prelude::Device;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// The compute devices `mckd` knows. Only those whose backend was compiled in can be used;
/// asking for another is an error, never a silent fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// burn's pure-Rust `flex` CPU backend (always available; the default).
    #[default]
    Flex,
    /// burn's CUDA backend, GPU 0 (needs `cargo build --features cuda`).
    Cuda,
}

/// The backend asked for is not compiled into this binary.
#[derive(Debug, thiserror::Error)]
#[error(
    "device `{0}` is not available: this mckd was built without the `{0}` cargo feature \
     (rebuild with `cargo build --release --features {0}`)"
)]
pub struct DeviceUnavailable(pub &'static str);

impl DeviceChoice {
    /// The burn device (without autodiff).
    pub fn device(self) -> Result<Device, DeviceUnavailable> {
        match self {
            DeviceChoice::Flex => Ok(Device::flex()),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda => Ok(Device::cuda(0)),
            #[cfg(not(feature = "cuda"))]
            DeviceChoice::Cuda => Err(DeviceUnavailable("cuda")),
        }
    }
}
