//! The BraTS segmentation loss (soft Dice + BCE with logits over the ET/TC/WT sigmoid
//! channels) as one op with its own backward.
//!
//! burn composes it from about twenty tensor ops (sigmoid, products, sums per row, two
//! `log_sigmoid`s, a channel-major transposed copy of logits and targets, …), each a pass, a
//! buffer and an autodiff node, and all of them on one thread: in the 2-thread real-data UNet
//! step the other worker waited through it. Here: one parallel pass forward (per chunk of
//! voxels: the Dice sums and the BCE sum, and `σ(x)` kept for the backward), one backward.
//!
//! Semantics (the composition's, to rounding): with `p = σ(x)`, Dice per group
//! `d = 1 − 2·Σ p·y / (Σ p + Σ y + 1)`, the groups being each (sample, channel) — their mean
//! — or each channel over the batch (pooled); BCE per channel `mean(max(x, 0) − x·y +
//! log(1 + e^−|x|))` over the batch and voxels; loss = mean Dice + Σ_c BCE_c. Gradient:
//! `∂/∂x_i = w·∂d/∂p_i·p_i(1 − p_i) + (p_i − y_i)/(B·V)` with `∂d/∂p_i = −2·(y_i·S − I)/S²`
//! (`I = Σ p·y`, `S = Σ p + Σ y + 1` of `i`'s group, `w` = 1 / the number of groups), times
//! the upstream gradient. The sums run in f64 in a fixed order (chunks of a plane in order),
//! so the numbers do not depend on the thread count.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use rayon::prelude::*;

use crate::flex_buf::{contiguous, flex_tensor, slice};

/// Voxels per parallel chunk (partial sums added in chunk order).
const CHUNK: usize = 1 << 15;

/// Fused segmentation loss, as a backend op.
#[backend_extension(Flex, Autodiff)]
pub trait SegLossOps: Backend {
    /// `logits`, `targets`: `[batch, channels, voxels...]`. Output: `[1]`.
    fn seg_loss(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        per_sample: bool,
    ) -> FloatTensor<Self>;
}

/// Soft Dice (per (sample, channel) if `per_sample`, else per channel over the batch) + BCE
/// with logits per channel (see the module docs), fused on the `flex` device in `f32`; `None`
/// elsewhere (the caller composes it from tensor ops). No gradient flows to `targets`.
///
/// # Shapes
/// - `logits`, `targets`: `[batch, channels, ...]` (rank ≥ 3, the same)
/// - output: `[1]`
pub fn segmentation_loss<const D: usize>(
    logits: Tensor<D>,
    targets: Tensor<D>,
    per_sample: bool,
) -> Option<Tensor<1>> {
    let device = logits.device();
    let fused = D >= 3
        && device.clone().without_autodiff() == Device::flex()
        && targets.device().without_autodiff() == Device::flex()
        && logits.dtype() == DType::F32
        && targets.dtype() == DType::F32
        && logits.dims() == targets.dims()
        && logits.shape().num_elements() > 0;
    if !fused {
        return None;
    }
    // The targets never take a gradient: their values only.
    let targets = targets.detach();
    Some(Tensor::from_dispatch(<Dispatch as SegLossOps>::seg_loss(
        logits.into_dispatch(),
        targets.into_dispatch(),
        per_sample,
    )))
}

/// The layout of the loss's input: `batch × channels` planes of `voxels`.
#[derive(Debug, Clone, Copy)]
struct Planes {
    batch: usize,
    channels: usize,
    voxels: usize,
}

impl Planes {
    fn of(shape: &[usize]) -> Self {
        assert!(
            shape.len() >= 3,
            "segmentation loss needs [batch, channels, voxels...]"
        );
        Self {
            batch: shape[0],
            channels: shape[1],
            voxels: shape[2..].iter().product(),
        }
    }

    /// The Dice group of plane `i` (sample `i / channels`, channel `i % channels`).
    fn group(&self, i: usize, per_sample: bool) -> usize {
        if per_sample { i } else { i % self.channels }
    }

    fn groups(&self, per_sample: bool) -> usize {
        if per_sample {
            self.batch * self.channels
        } else {
            self.channels
        }
    }
}

/// Per Dice group: `(Σ p·y, Σ p + Σ y + 1)`.
type DiceSums = Vec<(f64, f64)>;

/// The loss, `σ(x)` of every voxel, and the Dice groups' sums.
fn forward_kernel(x: &[f32], y: &[f32], p: Planes, per_sample: bool) -> (f32, Vec<f32>, DiceSums) {
    assert_eq!(x.len(), y.len());
    assert_eq!(x.len(), p.batch * p.channels * p.voxels);
    let mut prob = vec![0.0f32; x.len()];
    // Per chunk (chunks never cross planes): Σ p·y, Σ p, Σ y, Σ BCE term.
    let chunks: Vec<(usize, usize)> = (0..p.batch * p.channels)
        .flat_map(|i| (0..p.voxels).step_by(CHUNK).map(move |v| (i, v)))
        .collect();
    let mut outs: Vec<&mut [f32]> = Vec::with_capacity(chunks.len());
    let mut rest = &mut prob[..];
    for &(_, v) in &chunks {
        let n = CHUNK.min(p.voxels - v);
        let (head, tail) = rest.split_at_mut(n);
        outs.push(head);
        rest = tail;
    }
    let partial: Vec<[f64; 4]> = chunks
        .par_iter()
        .zip(outs.into_par_iter())
        .map(|(&(i, v), out)| {
            let at = i * p.voxels + v;
            let (xs, ys) = (&x[at..at + out.len()], &y[at..at + out.len()]);
            let mut s = [0.0f64; 4];
            for ((o, &xv), &yv) in out.iter_mut().zip(xs).zip(ys) {
                let e = (-xv.abs()).exp();
                let pv = if xv >= 0.0 {
                    1.0 / (1.0 + e)
                } else {
                    e / (1.0 + e)
                };
                *o = pv;
                let (pv, yv64) = (f64::from(pv), f64::from(yv));
                s[0] += pv * yv64;
                s[1] += pv;
                s[2] += yv64;
                s[3] += f64::from(xv.max(0.0) - xv * yv + e.ln_1p());
            }
            s
        })
        .collect();
    let groups = p.groups(per_sample);
    let mut dice = vec![[0.0f64; 3]; groups];
    let mut bce = vec![0.0f64; p.channels];
    for (&(i, _), s) in chunks.iter().zip(&partial) {
        let g = &mut dice[p.group(i, per_sample)];
        for k in 0..3 {
            g[k] += s[k];
        }
        bce[i % p.channels] += s[3];
    }
    let sums: DiceSums = dice.iter().map(|g| (g[0], g[1] + g[2] + 1.0)).collect();
    let mean_dice = sums.iter().map(|&(i, s)| 1.0 - 2.0 * i / s).sum::<f64>() / groups as f64;
    let n = (p.batch * p.voxels) as f64;
    let loss = mean_dice + bce.iter().map(|b| b / n).sum::<f64>();
    (loss as f32, prob, sums)
}

/// `∂loss/∂x` times the upstream gradient `up`.
fn backward_kernel(
    prob: &[f32],
    y: &[f32],
    p: Planes,
    per_sample: bool,
    sums: &[(f64, f64)],
    up: f32,
) -> Vec<f32> {
    let w = 1.0 / p.groups(per_sample) as f64;
    let n = (p.batch * p.voxels) as f64;
    let mut dx = vec![0.0f32; prob.len()];
    dx.par_chunks_mut(p.voxels)
        .zip(prob.par_chunks(p.voxels).zip(y.par_chunks(p.voxels)))
        .enumerate()
        .for_each(|(i, (d, (ps, ys)))| {
            let (inter, s) = sums[p.group(i, per_sample)];
            // ∂d/∂p = a·y + b with a = −2/S, b = 2I/S²; BCE's (p − y)/n.
            let (a, b) = ((-2.0 * w / s) as f32, (2.0 * w * inter / (s * s)) as f32);
            let (inv_n, up) = ((1.0 / n) as f32, up);
            for ((d, &pv), &yv) in d.iter_mut().zip(ps).zip(ys) {
                *d = up * ((a * yv + b) * pv * (1.0 - pv) + (pv - yv) * inv_n);
            }
        });
    dx
}

impl SegLossOps for Flex {
    fn seg_loss(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        per_sample: bool,
    ) -> FloatTensor<Self> {
        let (x, y) = (contiguous(&logits), contiguous(&targets));
        let p = Planes::of(&x.shape().to_vec());
        let (loss, _, _) = forward_kernel(slice(&x), slice(&y), p, per_sample);
        flex_tensor(vec![loss], vec![1])
    }
}

#[derive(Debug)]
struct SegLossBackward;

impl Backward<Flex, 1> for SegLossBackward {
    /// `σ(x)`, targets, the input's shape, per-sample Dice, the Dice groups' sums.
    type State = (Vec<f32>, Vec<f32>, Vec<usize>, bool, DiceSums);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let up = slice(&contiguous(&grads.consume::<Flex>(&ops.node)))[0];
        let (prob, y, shape, per_sample, sums) = ops.state;
        if let Some(node) = parent {
            let dx = backward_kernel(&prob, &y, Planes::of(&shape), per_sample, &sums, up);
            grads.register::<Flex>(node.id, flex_tensor(dx, shape));
        }
    }
}

impl<C: CheckpointStrategy> SegLossOps for Autodiff<Flex, C> {
    fn seg_loss(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        per_sample: bool,
    ) -> FloatTensor<Self> {
        let prepared = SegLossBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful();
        let (x, y) = (
            contiguous(logits.primitive()),
            contiguous(targets.primitive()),
        );
        let shape = x.shape().to_vec();
        let p = Planes::of(&shape);
        let (loss, prob, sums) = forward_kernel(slice(&x), slice(&y), p, per_sample);
        let out = flex_tensor(vec![loss], vec![1]);
        match prepared {
            OpsKind::Tracked(prep) => {
                prep.finish((prob, slice(&y).to_vec(), shape, per_sample, sums), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random, values};

    /// The loss in f64 from its definition (module docs), for `[batch, channels, voxels]`
    /// values.
    fn reference(x: &[f64], y: &[f64], [b, c, v]: [usize; 3], per_sample: bool) -> f64 {
        let sig = |t: f64| 1.0 / (1.0 + (-t).exp());
        let groups = if per_sample { b * c } else { c };
        let (mut inter, mut sp, mut sy) = (vec![0.0; groups], vec![0.0; groups], vec![0.0; groups]);
        let mut bce = vec![0.0; c];
        for s in 0..b {
            for (ch, bc) in bce.iter_mut().enumerate() {
                let g = if per_sample { s * c + ch } else { ch };
                for k in 0..v {
                    let i = (s * c + ch) * v + k;
                    let p = sig(x[i]);
                    inter[g] += p * y[i];
                    sp[g] += p;
                    sy[g] += y[i];
                    // −y·log σ(x) − (1 − y)·log σ(−x)
                    *bc -= y[i] * sig(x[i]).ln() + (1.0 - y[i]) * sig(-x[i]).ln();
                }
            }
        }
        let dice: f64 = (0..groups)
            .map(|g| 1.0 - 2.0 * inter[g] / (sp[g] + sy[g] + 1.0))
            .sum::<f64>()
            / groups as f64;
        dice + bce.iter().map(|t| t / (b * v) as f64).sum::<f64>()
    }

    /// Loss and logits gradient against the f64 definition (the gradient by central
    /// differences of it), both Dice reductions, targets 0/1 and fractional, logits up to
    /// ±6 (both branches of the stable σ), an upstream factor of 3.
    #[test]
    fn loss_and_gradient_match_the_definition() {
        let device = Device::flex().autodiff();
        let shape = [2usize, 3, 2, 3, 4];
        let [b, c] = [shape[0], shape[1]];
        let v = shape[2..].iter().product::<usize>();
        let x = random(shape, 11, &device).mul_scalar(6.0);
        let binary = random(shape, 12, &device).greater_elem(0.2).float();
        let fractional = random(shape, 13, &device).add_scalar(1.0).mul_scalar(0.5);
        for y in [binary, fractional] {
            for per_sample in [true, false] {
                let xg = x.clone().require_grad();
                let loss = segmentation_loss(xg.clone(), y.clone(), per_sample).expect("flex");
                let got = f64::from(values(&loss)[0]);
                let grads = (loss * 3.0).backward();
                let dx = values(&xg.grad(&grads).unwrap());
                let (xv, yv): (Vec<f64>, Vec<f64>) = (
                    values(&x).iter().map(|&t| f64::from(t)).collect(),
                    values(&y).iter().map(|&t| f64::from(t)).collect(),
                );
                let want = reference(&xv, &yv, [b, c, v], per_sample);
                assert!(
                    (got - want).abs() < 1e-5 * want.abs().max(1.0),
                    "loss {got} vs {want}"
                );
                let h = 1e-5;
                for (i, &d) in dx.iter().enumerate() {
                    let mut xp = xv.clone();
                    xp[i] += h;
                    let up = reference(&xp, &yv, [b, c, v], per_sample);
                    xp[i] -= 2.0 * h;
                    let down = reference(&xp, &yv, [b, c, v], per_sample);
                    let fd = 3.0 * (up - down) / (2.0 * h);
                    assert!(
                        (f64::from(d) - fd).abs() < 1e-5 + 1e-3 * fd.abs(),
                        "per_sample {per_sample} dx[{i}]: {d} vs finite difference {fd}"
                    );
                }
            }
        }
    }

    /// The same bits on 1 and 2 threads, with planes of several chunks.
    #[test]
    fn same_numbers_on_any_thread_count() {
        let device = Device::flex().autodiff();
        let shape = [2usize, 3, 40, 40, 41]; // 65,600 voxels a plane: 3 chunks
        let x = random(shape, 21, &device).mul_scalar(4.0);
        let y = random(shape, 22, &device).greater_elem(0.0).float();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let xg = x.clone().require_grad();
                let loss = segmentation_loss(xg.clone(), y.clone(), false).unwrap();
                let l = values(&loss)[0];
                let g = values(&xg.grad(&loss.backward()).unwrap());
                (l, g)
            })
        };
        let (l1, g1) = run(1);
        let (l2, g2) = run(2);
        assert_eq!(l1.to_bits(), l2.to_bits());
        assert!(g1.iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// Off the flex device or with different shapes the caller composes the loss itself.
    #[test]
    fn other_shapes_are_declined() {
        let device = Device::flex();
        let x = random([1, 3, 2, 2, 2], 1, &device);
        let y = random([1, 3, 2, 2, 3], 2, &device);
        assert!(segmentation_loss(x, y, true).is_none());
    }
}
