//! GEMM forms of two UNet layers, built from burn tensor ops (so autodiff comes for free).
//!
//! * A transposed 3-D convolution with kernel 2, stride 2 and no padding writes each input
//!   voxel's `Cin` values, times the `[Cin, Cout·8]` weight matrix, into its own 2×2×2 output
//!   block: one GEMM `[Cout·8, Cin] × [Cin, voxels]` per batch item, then a pixel shuffle.
//!   burn's `flex` backend runs the layer as a scalar loop instead.
//! * A 1×1×1 convolution is one GEMM `[Cout, Cin] × [Cin, voxels]` per batch item, with no
//!   layout change at all (flex goes through NCDHW → NDHWC copies and im2col).

use burn::prelude::*;

/// `ConvTranspose3d(kernel 2, stride 2, padding 0, dilation 1, groups 1)` as a GEMM + shuffle.
///
/// `weight` is burn's (and PyTorch's) layout `[Cin, Cout, 2, 2, 2]`; `bias` is `[Cout]`.
///
/// # Shapes
/// - `x`: `[batch, Cin, D, H, W]`
/// - output: `[batch, Cout, 2D, 2H, 2W]`
///
/// # Panics
/// If `weight` is not `[Cin, Cout, 2, 2, 2]` with the input's `Cin`, or `bias` is not `[Cout]`
/// (internal contracts of the caller's module).
pub fn conv_transpose3d_k2s2(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
) -> Tensor<5> {
    let [b, ci, d, h, w] = x.dims();
    let [wci, co, k1, k2, k3] = weight.dims();
    assert_eq!(
        (wci, k1, k2, k3),
        (ci, 2, 2, 2),
        "conv_transpose3d_k2s2 wants a [Cin, Cout, 2, 2, 2] weight for Cin = {ci}"
    );
    // [Cout·8, Cin]: row (o, i, j, k) of the GEMM is output channel o at block offset (i, j, k).
    let wt: Tensor<2> = weight.reshape([ci, co * 8]).transpose();
    let x: Tensor<3> = x.reshape([b, ci, d * h * w]);
    let y = wt.unsqueeze::<3>().matmul(x); // [B, Cout·8, DHW]
    let y: Tensor<8> = y.reshape([b, co, 2, 2, 2, d, h, w]);
    // [B, Cout, D, 2, H, 2, W, 2] → [B, Cout, 2D, 2H, 2W]
    let y: Tensor<5> = y
        .permute([0, 1, 5, 2, 6, 3, 7, 4])
        .reshape([b, co, 2 * d, 2 * h, 2 * w]);
    add_channel_bias(y, bias)
}

/// `Conv3d(kernel 1, stride 1, padding 0)` as a batched GEMM.
///
/// `weight` is `[Cout, Cin, 1, 1, 1]`, `bias` `[Cout]`.
///
/// # Shapes
/// - `x`: `[batch, Cin, D, H, W]`
/// - output: `[batch, Cout, D, H, W]`
///
/// # Panics
/// If `weight` is not `[Cout, Cin, 1, 1, 1]` with the input's `Cin` (an internal contract).
pub fn conv3d_1x1(x: Tensor<5>, weight: Tensor<5>, bias: Option<Tensor<1>>) -> Tensor<5> {
    let [b, ci, d, h, w] = x.dims();
    let [co, wci, k1, k2, k3] = weight.dims();
    assert_eq!(
        (wci, k1, k2, k3),
        (ci, 1, 1, 1),
        "conv3d_1x1 wants a [Cout, Cin, 1, 1, 1] weight for Cin = {ci}"
    );
    let wm: Tensor<3> = weight.reshape([1, co, ci]);
    let y = wm.matmul(x.reshape([b, ci, d * h * w])); // [B, Cout, DHW]
    add_channel_bias(y.reshape([b, co, d, h, w]), bias)
}

fn add_channel_bias(y: Tensor<5>, bias: Option<Tensor<1>>) -> Tensor<5> {
    match bias {
        Some(bias) => {
            let [co] = bias.dims();
            y + bias.reshape([1, co, 1, 1, 1])
        }
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random};
    use burn::nn::PaddingConfig3d;
    use burn::nn::conv::{Conv3dConfig, ConvTranspose3dConfig};

    /// Input, weight and bias gradients of `ours` and `reference` (tolerance 1e-5) under one
    /// random upstream gradient (seeded by `upstream_seed`), so every output position matters.
    fn assert_gradients_match(
        ours: Tensor<5>,
        reference: Tensor<5>,
        upstream_seed: u64,
        x: &Tensor<5>,
        weight: &Tensor<5>,
        bias: &Tensor<1>,
    ) {
        let g = random(ours.dims(), upstream_seed, &ours.device());
        let gr = (reference * g.clone()).sum().backward();
        let go = (ours * g).sum().backward();
        assert_close(&x.grad(&go).unwrap(), &x.grad(&gr).unwrap(), 1e-5, "dx");
        assert_close(
            &weight.grad(&go).unwrap(),
            &weight.grad(&gr).unwrap(),
            1e-5,
            "dweight",
        );
        assert_close(
            &bias.grad(&go).unwrap(),
            &bias.grad(&gr).unwrap(),
            1e-5,
            "dbias",
        );
    }

    /// Forward and the gradients of input, weight and bias against burn's layer.
    #[test]
    fn transposed_conv_matches_burn_forward_and_gradients() {
        crate::testing::for_each_level(|_| {
            transposed_conv_matches_burn_forward_and_gradients_at_level()
        });
    }

    fn transposed_conv_matches_burn_forward_and_gradients_at_level() {
        let device = Device::flex().autodiff();
        // (batch, Cin, Cout, D, H, W): odd and non-cubic sizes, Cin = 1, our UNet's widths.
        for (seed, &(b, ci, co, d, h, w)) in [
            (1, 3, 5, 3, 2, 5),
            (2, 1, 1, 1, 1, 1),
            (1, 32, 4, 2, 3, 1),
            (2, 16, 8, 4, 4, 4),
            (3, 7, 3, 5, 1, 3),
        ]
        .iter()
        .enumerate()
        {
            device.seed(seed as u64);
            let layer = ConvTranspose3dConfig::new([ci, co], [2, 2, 2])
                .with_stride([2, 2, 2])
                .init(&device);
            let x = random([b, ci, d, h, w], seed as u64 + 100, &device).require_grad();
            let reference = layer.forward(x.clone());
            let ours = conv_transpose3d_k2s2(
                x.clone(),
                layer.weight.val(),
                layer.bias.as_ref().map(|p| p.val()),
            );
            assert_eq!(ours.dims(), [b, co, 2 * d, 2 * h, 2 * w]);
            assert_close(&ours, &reference, 1e-5, "forward");
            let bias = layer.bias.as_ref().unwrap().val();
            assert_gradients_match(
                ours,
                reference,
                seed as u64 + 200,
                &x,
                &layer.weight.val(),
                &bias,
            );
        }
    }

    #[test]
    fn pointwise_conv_matches_burn_forward_and_gradients() {
        crate::testing::for_each_level(|_| {
            pointwise_conv_matches_burn_forward_and_gradients_at_level()
        });
    }

    fn pointwise_conv_matches_burn_forward_and_gradients_at_level() {
        let device = Device::flex().autodiff();
        for (seed, &(b, ci, co, d, h, w)) in
            [(1, 8, 3, 4, 6, 8), (2, 5, 1, 3, 1, 7), (1, 1, 2, 1, 1, 1)]
                .iter()
                .enumerate()
        {
            device.seed(seed as u64);
            let layer = Conv3dConfig::new([ci, co], [1, 1, 1])
                .with_padding(PaddingConfig3d::Valid)
                .init(&device);
            let x = random([b, ci, d, h, w], seed as u64 + 300, &device).require_grad();
            let reference = layer.forward(x.clone());
            let ours = conv3d_1x1(
                x.clone(),
                layer.weight.val(),
                layer.bias.as_ref().map(|p| p.val()),
            );
            assert_close(&ours, &reference, 1e-5, "forward");
            let bias = layer.bias.as_ref().unwrap().val();
            assert_gradients_match(
                ours,
                reference,
                seed as u64 + 400,
                &x,
                &layer.weight.val(),
                &bias,
            );
        }
    }

    /// The comparison helper itself must be able to fail: a wrong weight layout (Cout and Cin
    /// swapped in the GEMM) is caught.
    #[test]
    fn a_wrong_layout_is_detected() {
        let device = Device::flex();
        device.seed(9);
        let layer = ConvTranspose3dConfig::new([4, 4], [2, 2, 2])
            .with_stride([2, 2, 2])
            .init(&device);
        let x = random([1, 4, 2, 2, 2], 9, &device);
        let reference = layer.forward(x.clone());
        let wrong = conv_transpose3d_k2s2(
            x,
            layer.weight.val().swap_dims(0, 1),
            layer.bias.map(|p| p.val()),
        );
        let err = crate::testing::max_rel_error(&wrong, &reference);
        assert!(err > 1e-2, "a transposed weight went unnoticed ({err})");
    }
}
