//! The [`Task`] trait: what a task plugs into the MCKD method core.

use burn::module::ModuleDisplay;
use burn::prelude::*;

use crate::modality::ModalitySet;

/// A multi-modal task: per-modality encoder(s), a decoder over fused features, and a task loss.
///
/// The core calls [`encode`](Task::encode) once per modality, stacks the features of each level
/// into `[batch, modalities, features]`, imputes missing ones (Eq. 2), concatenates them in
/// modality order (Eq. 3) and calls [`decode`](Task::decode). A shared encoder (BraTS) is one
/// module used for every modality; separate encoders (AV-MNIST) are picked by `modality`.
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
    fn encode(&self, batch: &Self::Batch, modality: usize, present: Tensor<1>) -> Vec<Tensor<2>>;

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

    /// The feature level distilled by the CKD loss (default: the last, e.g. a bottleneck).
    fn distill_level(&self) -> usize {
        usize::MAX
    }

    /// The feature levels distilled by the CKD loss, among `levels` levels; the inner step
    /// averages the CKD loss over them (so α keeps its scale). Default: [`Task::distill_level`]
    /// alone (clamped to the last level).
    fn distill_levels(&self, levels: usize) -> Vec<usize> {
        vec![self.distill_level().min(levels.saturating_sub(1))]
    }

    /// Whether level `level` takes part in MCKD's fusion: a missing modality's feature is
    /// replaced by the mean of the present ones (Eq. 2), and the meta step scales it by the
    /// modality's weight. A level that does not (e.g. a UNet skip connection in the reference
    /// code, where only the bottleneck is imputed) is fused as encoded, the zeroed input's
    /// feature included. Default: every level.
    fn mckd_level(&self, level: usize) -> bool {
        let _ = level;
        true
    }
}
