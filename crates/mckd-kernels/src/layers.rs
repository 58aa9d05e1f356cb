//! Module-level entry points: burn's `BatchNorm` (and `MaxPool2d`) modules with the fused op in
//! training, so a model keeps its modules (parameter names, record layout, saved `.bpk` files)
//! and only changes the call in its `forward`.

use burn::nn::BatchNorm;
use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2d;
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::fused::{
    BnReluOutput, batch_norm_relu, batch_norm_relu_counted, batch_norm_relu_eval,
    batch_norm_relu_pool2d, batch_norm_relu_pool2d_eval,
};

/// Whether `bn` runs in training mode on `x`'s device — the same rule as `BatchNorm::forward`
/// (an autodiff device and the layer's training flag set).
pub fn is_training(bn: &BatchNorm, device: &Device) -> bool {
    device.is_autodiff() && bn.training.is_enabled()
}

/// Updates `bn`'s running statistics from a batch's mean and biased variance exactly as
/// `BatchNorm::forward` does in training: `running ← (1 − momentum)·running + momentum·batch`.
pub fn update_running_stats(bn: &BatchNorm, mean: Tensor<1>, variance: Tensor<1>) {
    let device = mean.device();
    let m = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    let running_mean = running_mean
        .mul_scalar(1.0 - m)
        .add(mean.detach().mul_scalar(m));
    let running_var = running_var
        .mul_scalar(1.0 - m)
        .add(variance.detach().mul_scalar(m));
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
}

/// Whether `pool` is the plain 2×2, stride-2, unpadded, floor-mode pooling the fused op does.
pub fn is_plain_2x2(pool: &MaxPool2d) -> bool {
    pool.kernel_size == [2, 2]
        && pool.stride == [2, 2]
        && pool.dilation == [1, 1]
        && !pool.ceil_mode
        && pool.padding == PaddingConfig2d::Valid
}

/// `pool(relu(bn(x)))` with a plain 2×2 pool: in training the fused op and the running
/// statistics' update, in inference the fused op with the running statistics; other pools
/// run burn's three modules.
///
/// # Shapes
/// - `x`: `[batch, channels, H, W]`; output `[batch, channels, ⌊H/2⌋, ⌊W/2⌋]` (2×2 pool)
pub fn bn_relu_maxpool2d(bn: &BatchNorm, pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    if is_training(bn, &x.device()) && is_plain_2x2(pool) {
        with_running_update(
            bn,
            batch_norm_relu_pool2d(x, bn.gamma.val(), bn.beta.val(), bn.epsilon),
        )
    } else if is_plain_2x2(pool) {
        let (mean, var) = running_stats(bn, &x.device());
        batch_norm_relu_pool2d_eval(x, bn.gamma.val(), bn.beta.val(), mean, var, bn.epsilon)
    } else {
        pool.forward(relu(bn.forward(x)))
    }
}

/// [`bn_relu_maxpool2d`] of a counted batch: row `r` of `x` stands for `counts[r]` identical
/// samples (see [`crate::fused::batch_norm_relu_counted`]); the batch statistics and the
/// running statistics' update are those of the expanded batch. In inference every row is
/// normalised on its own, so the counts do not matter.
///
/// # Shapes
/// - `x`: `[rows, channels, H, W]`, `counts`: `rows`; output as [`bn_relu_maxpool2d`]
pub fn bn_relu_maxpool2d_counted(
    bn: &BatchNorm,
    pool: &MaxPool2d,
    x: Tensor<4>,
    counts: &[usize],
) -> Tensor<4> {
    if !is_training(bn, &x.device()) {
        return bn_relu_maxpool2d(bn, pool, x);
    }
    if !is_plain_2x2(pool) {
        let (expand, first) = crate::fused::expand_counts(counts);
        let y = bn_relu_maxpool2d(bn, pool, crate::select_rows(x, &expand));
        return crate::select_rows(y, &first);
    }
    with_running_update(
        bn,
        batch_norm_relu_counted(x, bn.gamma.val(), bn.beta.val(), bn.epsilon, true, counts),
    )
}

/// [`bn_relu`] of a counted batch (see [`bn_relu_maxpool2d_counted`]).
///
/// # Shapes
/// - `x`: `[rows, channels, ...]`, `counts`: `rows`; output the same as `x`
pub fn bn_relu_counted<const D: usize>(
    bn: &BatchNorm,
    x: Tensor<D>,
    counts: &[usize],
) -> Tensor<D> {
    if !is_training(bn, &x.device()) {
        return bn_relu(bn, x);
    }
    with_running_update(
        bn,
        batch_norm_relu_counted(x, bn.gamma.val(), bn.beta.val(), bn.epsilon, false, counts),
    )
}

/// The output of a training-mode op, after feeding its batch statistics to `bn`'s running
/// statistics.
fn with_running_update<const D: usize>(bn: &BatchNorm, r: BnReluOutput<D>) -> Tensor<D> {
    update_running_stats(bn, r.mean, r.variance);
    r.output
}

/// `bn`'s running mean and variance on `device` (as `BatchNorm::forward` reads them in
/// inference).
fn running_stats(bn: &BatchNorm, device: &Device) -> (Tensor<1>, Tensor<1>) {
    (
        bn.running_mean.value().to_device(device),
        bn.running_var.value().to_device(device),
    )
}

/// `relu(bn(x))`: in training the fused op and the running statistics' update, in inference
/// the fused op with the running statistics.
///
/// # Shapes
/// - `x`: `[batch, channels, ...]`, output the same
pub fn bn_relu<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    if is_training(bn, &x.device()) {
        with_running_update(
            bn,
            batch_norm_relu(x, bn.gamma.val(), bn.beta.val(), bn.epsilon),
        )
    } else {
        let (mean, var) = running_stats(bn, &x.device());
        batch_norm_relu_eval(x, bn.gamma.val(), bn.beta.val(), mean, var, bn.epsilon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random, values};
    use burn::module::Module;
    use burn::nn::BatchNormConfig;
    use burn::nn::pool::MaxPool2dConfig;

    /// Two training steps through our layer and through burn's modules: outputs, gradients of
    /// the input and of γ and β, and the running statistics agree; in eval mode both paths are
    /// burn's own and agree exactly.
    /// The counted layers against the expanded batch through the plain layers: outputs and
    /// running statistics, with the fused 2×2 pool, a pool the fused op does not serve (3×3,
    /// stride 1: expand, plain layer, compact) and the unpooled `bn_relu_counted`.
    #[test]
    fn counted_layers_match_the_expanded_batch() {
        crate::testing::for_each_level(|_| counted_layers_match_the_expanded_batch_at_level());
    }

    fn counted_layers_match_the_expanded_batch_at_level() {
        let device = Device::flex().autodiff();
        let counts = [1usize, 3, 2];
        let (expand, first) = crate::fused::expand_counts(&counts);
        let x = random([3, 4, 6, 6], 90, &device).mul_scalar(2.0);
        for pool in [
            MaxPool2dConfig::new([2, 2]).init(),
            MaxPool2dConfig::new([3, 3]).with_strides([1, 1]).init(),
        ] {
            let (a, b) = (
                BatchNormConfig::new(4).init(&device),
                BatchNormConfig::new(4).init(&device),
            );
            let ours = bn_relu_maxpool2d_counted(&a, &pool, x.clone(), &counts);
            let full = bn_relu_maxpool2d(&b, &pool, crate::select_rows(x.clone(), &expand));
            let what = format!("pool {:?}", pool.kernel_size);
            assert_close(&ours, &crate::select_rows(full, &first), 2e-6, &what);
            let run = |bn: &BatchNorm| bn.running_var.value();
            assert_close(&run(&a), &run(&b), 2e-6, &format!("{what} running var"));
        }
        let y = random([3, 5], 91, &device);
        let (a, b) = (
            BatchNormConfig::new(5).init(&device),
            BatchNormConfig::new(5).init(&device),
        );
        let ours = bn_relu_counted(&a, y.clone(), &counts);
        let full = bn_relu(&b, crate::select_rows(y, &expand));
        assert_close(
            &ours,
            &crate::select_rows(full, &first),
            2e-6,
            "bn_relu_counted",
        );
        let run = |bn: &BatchNorm| bn.running_mean.value();
        assert_close(&run(&a), &run(&b), 2e-6, "bn_relu_counted running mean");
    }

    #[test]
    fn layer_matches_burn_modules_in_training_and_eval() {
        crate::testing::for_each_level(|_| {
            layer_matches_burn_modules_in_training_and_eval_at_level()
        });
    }

    fn layer_matches_burn_modules_in_training_and_eval_at_level() {
        let device = Device::flex().autodiff();
        // Two separate layers with the same initial values (γ = 1, β = 0, running 0 / 1).
        let bn_ours = BatchNormConfig::new(6).init(&device);
        let bn_ref = BatchNormConfig::new(6).init(&device);
        let pool = MaxPool2dConfig::new([2, 2]).init();
        assert!(is_plain_2x2(&pool));
        for step in 0..2u64 {
            let x = random([3, 6, 7, 6], 40 + step, &device).mul_scalar(2.0);
            let up = random([3, 6, 3, 3], 50 + step, &device);
            let xa = x.clone().require_grad();
            let xb = x.require_grad();
            let a = bn_relu_maxpool2d(&bn_ours, &pool, xa.clone());
            let b = pool.forward(relu(bn_ref.forward(xb.clone())));
            assert_close(&a, &b, 2e-6, "output");
            let ga = (a * up.clone()).sum().backward();
            let gb = (b * up).sum().backward();
            assert_close(&xa.grad(&ga).unwrap(), &xb.grad(&gb).unwrap(), 2e-6, "dx");
            for (pa, pb, what) in [
                (bn_ours.gamma.val(), bn_ref.gamma.val(), "dgamma"),
                (bn_ours.beta.val(), bn_ref.beta.val(), "dbeta"),
            ] {
                assert_close(&pa.grad(&ga).unwrap(), &pb.grad(&gb).unwrap(), 2e-6, what);
            }
        }
        assert_close(
            &bn_ours.running_mean.value(),
            &bn_ref.running_mean.value(),
            2e-6,
            "running mean",
        );
        assert_close(
            &bn_ours.running_var.value(),
            &bn_ref.running_var.value(),
            2e-6,
            "running var",
        );
        // The running statistics moved away from their initial 0 / 1.
        assert!(
            values(&bn_ours.running_mean.value())
                .iter()
                .any(|&v| v != 0.0)
        );
        // Eval mode: the fused inference op against burn's modules (running statistics
        // equal to rounding).
        let (bn_ours, bn_ref) = (bn_ours.valid(), bn_ref.valid());
        let x = random([2, 6, 4, 4], 60, &device.clone().without_autodiff());
        let a = bn_relu_maxpool2d(&bn_ours, &pool, x.clone());
        let b = pool.forward(relu(bn_ref.forward(x)));
        assert_close(&a, &b, 2e-6, "eval output");
    }

    #[test]
    fn unpooled_layer_matches_burn_modules() {
        crate::testing::for_each_level(|_| unpooled_layer_matches_burn_modules_at_level());
    }

    fn unpooled_layer_matches_burn_modules_at_level() {
        let device = Device::flex().autodiff();
        let bn_ours = BatchNormConfig::new(5).init(&device);
        let bn_ref = BatchNormConfig::new(5).init(&device);
        let x = random([9, 5], 70, &device);
        let xa = x.clone().require_grad();
        let xb = x.require_grad();
        let a = bn_relu(&bn_ours, xa.clone());
        let b = relu(bn_ref.forward(xb.clone()));
        assert_close(&a, &b, 2e-6, "output");
        let up = random([9, 5], 71, &device);
        let ga = (a * up.clone()).sum().backward();
        let gb = (b * up).sum().backward();
        assert_close(&xa.grad(&ga).unwrap(), &xb.grad(&gb).unwrap(), 2e-6, "dx");
        assert_close(
            &bn_ours.running_var.value(),
            &bn_ref.running_var.value(),
            2e-6,
            "running var",
        );
    }
}
