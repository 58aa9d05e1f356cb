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
//! * [`ckd`]: the pairwise cross-modal distillation loss (Eq. 5) and its batch reduction.
//! * [`task`]: the [`Task`] trait a task (AV-MNIST, BraTS, the synthetic demo)
//!   implements: per-modality encoding, decoding, task loss.
//! * [`method`]: the [`Method`] seam through which MCKD, its Baseline and the
//!   peer methods are trained and evaluated.
//! * [`mckd`]: MCKD as a method — the model wrapper, the level policy, the inner (task) step and
//!   the first-order meta step (Eq. 4), the α = 0 Baseline.
//! * [`rng`]: saving and restoring seeded generators for checkpoints.
//!
//! This crate does no file I/O and knows no dataset.

pub mod ckd;
pub mod fusion;
pub mod iwv;
pub mod mckd;
pub mod method;
pub mod modality;
pub mod rng;
pub mod task;

pub use ckd::{CkdReduction, Distance, ckd_loss};
pub use iwv::{Iwv, IwvConfig, Normalisation};
pub use mckd::{
    IwvOptimConfig, LevelPolicy, Levels, Mckd, MckdConfig, MckdModel, StepStats, scalar,
};
pub use method::{Method, StateError, StateFiles};
pub use modality::{
    ModalitySet, SubsetSampling, all_subsets, mask_tensor, present_names, sample_subset,
};
pub use task::{Encoded, Task};

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
