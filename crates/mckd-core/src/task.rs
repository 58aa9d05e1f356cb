//! The [`Task`] trait: what a task plugs into the MCKD method core.

use burn::module::ModuleDisplay;
use burn::prelude::*;

use crate::modality::ModalitySet;

/// The features of one modality at every level of a task's encoder.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Per level, the features that are fused and decoded, `[batch, features_l]`.
    pub levels: Vec<Tensor<2>>,
    /// Per level, the deterministic features the CKD loss distils, when they differ from
    /// [`levels`](Self::levels) (an encoder that ends in dropout returns its output before
    /// dropout here: with independent masks on teacher and student, distilling dropped
    /// features only shrinks the student, DESIGN §1.5). `None`: distil `levels`.
    pub distilled: Option<Vec<Tensor<2>>>,
}

impl Encoded {
    /// Features that are fused and distilled alike.
    pub fn new(levels: Vec<Tensor<2>>) -> Self {
        Self {
            levels,
            distilled: None,
        }
    }

    /// The features the CKD loss distils at `level`.
    pub fn distilled(&self, level: usize) -> Tensor<2> {
        self.distilled
            .as_ref()
            .map_or(&self.levels[level], |d| &d[level])
            .clone()
    }
}

impl From<Vec<Tensor<2>>> for Encoded {
    fn from(levels: Vec<Tensor<2>>) -> Self {
        Self::new(levels)
    }
}

/// A multi-modal task: per-modality encoder(s), a decoder over fused features, and a task loss.
///
/// The core calls [`encode`](Task::encode) once per modality, stacks the features of each level
/// into `[batch, modalities, features]`, imputes missing ones (Eq. 2) at the levels the method's
/// [`LevelPolicy`](crate::LevelPolicy) names, concatenates them in modality order (Eq. 3) and
/// calls [`decode`](Task::decode). A shared encoder (BraTS) is one module used for every
/// modality; separate encoders (AV-MNIST) are picked by `modality`.
pub trait Task: Module + ModuleDisplay {
    /// A batch of inputs and targets, on the task's device.
    type Batch;
    /// The decoder's output (logits).
    type Output;

    /// The task's modalities in fusion order.
    fn modalities(&self) -> &ModalitySet;

    /// Encodes modality `modality` of the batch.
    ///
    /// The input of samples where `present` is 0 must be zeroed before encoding
    /// ([`crate::fusion::zero_missing`]).
    ///
    /// # Shapes
    /// - `present`: `[batch]`, 1 = present
    /// - output: one `[batch, features_l]` tensor per feature level `l` (a UNet's skips and
    ///   bottleneck; a single level for a vector encoder). `features_l` must be the same for
    ///   every modality.
    fn encode(&self, batch: &Self::Batch, modality: usize, present: Tensor<1>) -> Encoded;

    /// Index of the bottleneck among the encoder's levels: the level the reference imputes,
    /// distils and weights (DESIGN §1.2, §1.5, §1.7).
    fn bottleneck(&self) -> usize;

    /// Decodes fused features.
    ///
    /// # Shapes
    /// - `fused`: one `[batch, modalities × features_l]` tensor per level, modality-major.
    fn decode(&self, fused: Vec<Tensor<2>>) -> Self::Output;

    /// The task loss of an output against the batch's targets.
    ///
    /// # Shapes
    /// - output: `[1]`
    fn loss(&self, output: Self::Output, batch: &Self::Batch) -> Tensor<1>;

    /// Number of samples in a batch.
    fn batch_size(batch: &Self::Batch) -> usize;

    /// The state of the task's own random generators (e.g. seeded dropout), for checkpoints;
    /// empty when it has none.
    fn random_state(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Restores [`random_state`](Task::random_state); an error says what does not fit.
    fn set_random_state(&self, state: &[u8]) -> Result<(), String> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "this task has no random state, got {} bytes",
                state.len()
            ))
        }
    }
}
