//! # mckd-nn — the 3-D layers burn 0.22.1 lacks, in one place
//!
//! burn 0.22.1 has 3-D convolutions, instance norm and adaptive average pooling, but no 3-D
//! max or average pooling, no 3-D interpolation, no AdaIN, no layer norm over `C×D×H×W` and
//! no weight-standardised convolution (PEERS §1.3, DESIGN §5). The reference network
//! (DualNet) and the peers (ShaSpec, mmFormer, U-HVED, Robust-MSeg) need them; they are
//! written once here, with PyTorch's (or the peer's) semantics stated on each item.
//!
//! * [`pool`]: [`max_pool3d`] (padding acts as −∞), [`avg_pool3d`] (both `count_include_pad`
//!   conventions), [`global_avg_pool3d`] — composed from burn's 2-D pools, one pass over
//!   (H, W) and one over D, so forward and backward run in flex's native pooling kernels.
//! * [`interp`]: [`trilinear`] to an output size or [`trilinear_scale`] by per-axis factors
//!   (anisotropic, e.g. ×(1, 2, 2)), `align_corners` false (PyTorch's default) or true;
//!   [`upsample_nearest3d`] by integer factors — separable passes through burn's bilinear
//!   `interpolate`, or a reshape + expand for nearest.
//! * [`norm`]: [`adain`] (instance statistics, `γ·x̂ + β` with per-sample `γ`, `β`) and
//!   [`LayerNorm3d`] (statistics over `C×D×H×W` per sample, per-channel affine).
//! * [`conv`]: [`WsConv3d`], a bias-free 3-D convolution whose weights are standardised per
//!   output channel before use (`Conv3d_wd` of the ShaSpec/MCKD code base), with stride,
//!   padding and dilation; dilation-1 layers run through `mckd_kernels`' GEMM convolution.
//!
//! Every op is tested against a brute-force loop reference written independently in its test
//! module (`f64`, odd sizes, batch and channels > 1): values, and gradients either against the
//! reference's transpose (linear ops) or central finite differences of the reference
//! (non-linear ops).

pub mod conv;
pub mod interp;
pub mod norm;
pub mod pool;
#[cfg(test)]
pub(crate) mod testing;

pub use conv::{WsConv3d, WsConv3dConfig, standardize_weight, ws_conv3d};
pub use interp::{trilinear, trilinear_scale, upsample_nearest3d};
pub use norm::{LayerNorm3d, LayerNorm3dConfig, adain, layer_norm3d};
pub use pool::{avg_pool3d, global_avg_pool3d, max_pool3d, pool_output_size};

/// Timings of the ops on DualNet-sized tensors (`cargo test --release -p mckd-nn -- --ignored
/// --nocapture timings`); they print, they do not assert.
#[cfg(test)]
mod timings {
    use burn::prelude::*;
    use std::time::Instant;

    fn time(what: &str, reps: usize, f: impl Fn() -> f32) {
        let _ = f(); // warm-up (allocator, thread pool)
        let t = Instant::now();
        let mut s = 0.0;
        for _ in 0..reps {
            s += f();
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!("{what}: {ms:.1} ms per forward + backward (checksum {s:e})");
    }

    #[test]
    #[ignore = "timing; run by hand"]
    fn timings() {
        let device = Device::flex().autodiff();
        device.seed(0);
        let dist = burn::tensor::Distribution::Normal(0.0, 1.0);
        let x = Tensor::<5>::random([1, 3, 40, 80, 80], dist, &device).require_grad();
        time(
            "trilinear ×(1,2,2) align_corners=false [1,3,40,80,80]",
            5,
            || {
                let y = crate::trilinear_scale(x.clone(), [1.0, 2.0, 2.0], false);
                let g = y.sum().backward();
                x.grad(&g).unwrap().sum().into_scalar()
            },
        );
        time("trilinear ×2 align_corners=true [1,3,40,80,80]", 5, || {
            let y = crate::trilinear_scale(x.clone(), [2.0, 2.0, 2.0], true);
            let g = y.sum().backward();
            x.grad(&g).unwrap().sum().into_scalar()
        });
        let x = Tensor::<5>::random([1, 64, 80, 80, 80], dist, &device).require_grad();
        time("max_pool3d 3³/2 pad 1 [1,64,80,80,80]", 3, || {
            let y = crate::max_pool3d(x.clone(), [3; 3], [2; 3], [1; 3]);
            let g = y.sum().backward();
            x.grad(&g).unwrap().sum().into_scalar()
        });
        time("max_pool3d 2³/2 [1,64,80,80,80]", 3, || {
            let y = crate::max_pool3d(x.clone(), [2; 3], [2; 3], [0; 3]);
            let g = y.sum().backward();
            x.grad(&g).unwrap().sum().into_scalar()
        });
        time("avg_pool3d 3³/2 pad 1 [1,64,80,80,80]", 3, || {
            let y = crate::avg_pool3d(x.clone(), [3; 3], [2; 3], [1; 3], true);
            let g = y.sum().backward();
            x.grad(&g).unwrap().sum().into_scalar()
        });
    }
}
