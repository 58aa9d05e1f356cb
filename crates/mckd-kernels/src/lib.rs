//! # mckd-kernels — faster CPU layers for mckd's networks (issue 5)
//!
//! Drop-in replacements for the most expensive layers of our two training steps on burn's
//! `flex` CPU backend, each tested against burn's own layers (forward and gradients) on random
//! shapes, odd sizes included:
//!
//! * [`batch_norm_relu_pool2d`] / [`batch_norm_relu`]: training-mode batch norm → ReLU
//!   (→ 2×2 max-pool) as **one** fused op with a hand-written backward, added to `flex` and
//!   `Autodiff<flex>` through burn's backend-extension mechanism ([`fused`]). burn composes the
//!   same layers from about ten generic tensor ops plus a pooling op with indices, each a pass
//!   over memory and an allocation. On other devices (CUDA) or dtypes the functions fall back
//!   to burn's own layers, so results never depend on whether the kernel exists. The same op
//!   with given (running) statistics serves inference mode (`fused::batch_norm_relu_eval`,
//!   `fused::batch_norm_relu_pool2d_eval`; [`bn_relu`] and [`bn_relu_maxpool2d`] pick it).
//! * [`conv3d_layer`] / [`conv2d_layer`]: convolutions with GEMM forward and backward
//!   ([`conv3d`]); 3×3×3 layers of stride 1 and 2 run a direct kernel without im2col, and
//!   stride-1 2-D layers with ≥ 8 input channels (the AV-MNIST conv2 layers) another one with
//!   the output channels in the vector lanes (`direct2.rs`: forward, the input gradient for
//!   padding k − 1 − p ≤ 1, the weight gradient for 3- and 5-wide kernels).
//! * [`instance_norm_leaky_relu`]: the UNet blocks' instance norm → leaky ReLU, fused; and
//!   [`leaky_relu`] with PyTorch's derivative at 0 (burn's differs there).
//! * [`conv_transpose3d_k2s2`] and [`conv3d_1x1`]: the UNet's up-sampling and head
//!   convolutions as batched GEMMs built from burn tensor ops (autodiff for free).
//! * [`segmentation_loss`]: the BraTS loss (soft Dice + BCE with logits) as one parallel op
//!   with its own backward ([`segloss`]); burn's composition ran on one thread.
//! * [`cat_channels`]: channel concatenation as a parallel copy whose backward hands each
//!   input a contiguous gradient ([`cat`]; burn's copied on one thread, and its strided
//!   gradients were copied again element by element).
//! * [`trilinear_resize`]: 3-D trilinear resizing (PyTorch's coordinate maps) as separable
//!   passes with its own backward ([`resize`]; burn has only 2-D interpolation).
//! * [`FusedAdam`]: burn's Adam as one pass per parameter tensor (same bits).
//! * [`tune_allocator`]: keeps freed buffers in glibc's heap (Linux/glibc only).
//! * [`select_rows`]: a batch-axis row gather whose backward adds whole rows (burn's
//!   `select` backward is element by element on `flex`).
//! * [`run_on_pool`]: runs a whole job on a worker of rayon's pool, so the kernels' parallel
//!   calls start on the calling thread instead of being handed to a sleeping worker.
//! * [`with_busy_workers`]: the pool's other workers spin through a training loop instead
//!   of sleeping between its parallel calls.
//!
//! Each kernel has a scalar, an AVX2 and an AVX-512 path ([`SimdLevel`]); the best one the
//! CPU has is chosen at run time, and `MCKD_SIMD=scalar|avx2|avx512` ([`SIMD_ENV`]) forces
//! one, e.g. to measure or test the AVX2 path on an AVX-512 machine. Programs call
//! [`simd_level`] first: it refuses a level the CPU lacks with an error.
//!
//! Training numbers change at float-rounding level against burn's layers (different summation
//! order); the tests state the tolerances.

pub mod adam;
pub mod alloc;
pub mod cat;
pub mod conv;
pub mod conv3d;
mod direct2;
mod direct3;
mod flex_buf;
pub mod fused;
pub mod instnorm;
pub mod layers;
pub mod pool;
pub mod resize;
pub mod rows;
pub mod segloss;
pub mod simd;
#[cfg(test)]
pub(crate) mod testing;
mod window;

pub use adam::{FusedAdam, FusedAdamConfig};
pub use alloc::tune_allocator;
pub use cat::cat_channels;
pub use conv::{conv_transpose3d_k2s2, conv3d_1x1};
pub use conv3d::{conv2d_layer, conv3d_layer};
pub use fused::{BnReluOutput, batch_norm_relu, batch_norm_relu_counted, batch_norm_relu_pool2d};
pub use instnorm::{instance_norm_leaky_relu, leaky_relu};
pub use layers::{bn_relu, bn_relu_counted, bn_relu_maxpool2d, bn_relu_maxpool2d_counted};
pub use pool::{run_on_pool, with_busy_workers};
pub use resize::trilinear_resize;
pub use rows::select_rows;
pub use segloss::segmentation_loss;
pub use simd::{SIMD_ENV, SimdError, SimdLevel, active_simd_level, simd_level};
