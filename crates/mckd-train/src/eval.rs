//! Evaluation of a classification method over every modality subset.

use burn::prelude::*;
use mckd_core::{Method, all_subsets, mask_tensor};

use crate::train::Source;

/// Mean cross-entropy `−log softmax(logits)[label]`, the task loss of classifiers.
///
/// # Shapes
/// - `logits`: `[batch, classes]`; `labels`: `[batch]`; output `[1]`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [b, _] = logits.dims();
    burn::tensor::activation::log_softmax(logits, 1)
        .gather(1, labels.reshape([b, 1]))
        .mean()
        .neg()
}

/// A batch with integer class labels.
pub trait Labelled {
    /// The labels, `[batch]`.
    fn labels(&self) -> Tensor<1, Int>;
}

/// Accuracy (fraction) of `method` on every sample of `source` with presence `mask` (the same
/// for every sample; modalities a sample lacks are removed, and samples left with none are
/// skipped). Runs in inference mode. Returns `(accuracy, samples counted)`.
pub fn accuracy<M, S>(
    method: &M,
    source: &S,
    mask: &[bool],
    batch_size: usize,
    device: &Device,
) -> (f64, usize)
where
    M: Method<Output = Tensor<2>>,
    M::Batch: Labelled,
    S: Source<Batch = M::Batch>,
{
    let device = device.clone().without_autodiff();
    let (mut correct, mut total) = (0usize, 0usize);
    let usable: Vec<usize> = (0..source.len())
        .filter(|&i| mask.iter().zip(source.available(i)).any(|(m, a)| *m && *a))
        .collect();
    for chunk in usable.chunks(batch_size.max(1)) {
        let masks: Vec<Vec<bool>> = chunk
            .iter()
            .map(|&i| {
                mask.iter()
                    .zip(source.available(i))
                    .map(|(m, a)| *m && *a)
                    .collect()
            })
            .collect();
        let batch = source.batch(chunk, &device);
        let logits = method.predict(&batch, &mask_tensor(&masks, &device));
        let pred = crate::to_vec_int(logits.argmax(1).flatten::<1>(0, 1));
        let labels = crate::to_vec_int(batch.labels());
        correct += pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
        total += chunk.len();
    }
    (
        if total == 0 {
            f64::NAN
        } else {
            correct as f64 / total as f64
        },
        total,
    )
}

/// Accuracy for each of the 2^N − 1 subsets, in [`all_subsets`] order.
pub fn accuracy_all_subsets<M, S>(
    method: &M,
    source: &S,
    batch_size: usize,
    device: &Device,
) -> Vec<(Vec<bool>, f64)>
where
    M: Method<Output = Tensor<2>>,
    M::Batch: Labelled,
    S: Source<Batch = M::Batch>,
{
    let n = method.modalities().len();
    all_subsets(n)
        .into_iter()
        .map(|m| {
            let (acc, _) = accuracy(method, source, &m, batch_size, device);
            (m, acc)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_matches_hand_computed_value() {
        // import torch; torch.nn.functional.cross_entropy(
        //   torch.tensor([[1., 2., 0.5], [0., 0., 3.]]), torch.tensor([1, 0]))
        // -> 1.7796
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 0.5, 0.0, 0.0, 3.0], [2, 3]),
            &device,
        );
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), &device);
        let v = cross_entropy(logits, labels).into_scalar::<f32>();
        // By hand: sample 0: lse(1,2,.5) - 2 = 0.46436; sample 1: lse(0,0,3) - 0 = 3.09492.
        assert!((v - 1.779_64).abs() < 1e-4, "{v}");
    }
}
