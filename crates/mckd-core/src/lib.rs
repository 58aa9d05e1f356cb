//! # mckd-core — the MCKD method, generic over N modalities and over the task
//!
//! Meta-learned Cross-modal Knowledge Distillation (Wang et al.): a multi-modal network that keeps
//! working when modalities are missing.
//!
//! * [`modality`]: modality sets, per-sample presence masks, the 2^N − 1 non-empty subsets, and
//!   the seeded non-dedicated subset sampling rules.
//! * [`fusion`]: zeroing of missing inputs, mean imputation of missing features (Eq. 2), fusion by
//!   concatenation in modality order (Eq. 3), and weighting of features by the IWV.
//! * [`iwv`]: the importance weight vector and its normalisations (Eq. 6; softmax, sigmoid, ReLU).
//! * [`ckd`]: the pairwise cross-modal distillation loss (Eq. 5).
//! * [`task`]: the [`Task`](task::Task) trait a task (AV-MNIST, BraTS, the synthetic demo)
//!   implements: per-modality encoding, decoding, task loss.
//! * [`step`]: the model wrapper, the inner (task) step and the first-order meta step (Eq. 4).
//!
//! This crate does no file I/O and knows no dataset.

pub mod ckd;
pub mod fusion;
pub mod iwv;
pub mod modality;
pub mod step;
pub mod task;

pub use ckd::{Distance, ckd_loss};
pub use iwv::{Iwv, IwvConfig, Normalisation};
pub use modality::{
    ModalitySet, SubsetSampling, all_subsets, mask_tensor, present_names, sample_subset,
};
pub use step::{MckdConfig, MckdModel, MckdTrainer, StepStats};
pub use task::Task;

#[cfg(test)]
pub(crate) mod test_util {
    use burn::prelude::*;

    /// Values of a tensor as `f32`.
    pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().expect("f32 tensor")
    }

    /// Asserts element-wise closeness with an absolute tolerance.
    #[track_caller]
    pub fn assert_close(actual: &[f32], expected: &[f32], tol: f32) {
        assert_eq!(actual.len(), expected.len(), "length mismatch");
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!(
                (a - e).abs() <= tol,
                "element {i}: got {a}, expected {e} (tol {tol})"
            );
        }
    }
}
