//! The [`Method`] seam: a missing-modality method as the shared training loop sees it.
//!
//! MCKD and its α = 0 Baseline ([`crate::Mckd`]) implement it first; the peer methods of the
//! paper's tables (SMIL, ShaSpec, U-HeMIS, ...) implement it beside them, so that every method
//! goes through the same loop, evaluation and reports. A method owns its model and its
//! optimisers: a step may update several parameter groups in its own way (MCKD's meta step
//! updates only the IWV; a GAN alternates two optimisers).

use std::collections::BTreeMap;

use burn::prelude::*;

use crate::modality::ModalitySet;

/// A method's training state as named blobs (file names in a checkpoint folder → bytes). The
/// core does no file I/O; the training layer writes them atomically.
pub type StateFiles = BTreeMap<String, Vec<u8>>;

/// A method's state cannot be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Serialising a part of the state failed.
    #[error("cannot save `{name}`: {problem}")]
    Save {
        /// The state file's name.
        name: String,
        /// What went wrong.
        problem: String,
    },
    /// A part of the state is missing.
    #[error("`{name}` is missing from the saved state")]
    Missing {
        /// The state file's name.
        name: String,
    },
    /// A part of the state cannot be restored (of another method or network, or damaged).
    #[error("cannot load `{name}`: {problem}")]
    Load {
        /// The state file's name.
        name: String,
        /// What went wrong.
        problem: String,
    },
}

impl StateError {
    /// The blob `name` of `files`, or [`StateError::Missing`].
    pub fn get<'a>(files: &'a StateFiles, name: &str) -> Result<&'a [u8], StateError> {
        files
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| StateError::Missing { name: name.into() })
    }
}

/// One missing-modality method, trained by the shared loop and evaluated on any presence mask.
///
/// The loop calls [`train_step`](Method::train_step) once per iteration with the batch's
/// presence mask, [`meta_step`](Method::meta_step) in meta phases on meta-validation batches,
/// and [`begin_stage`](Method::begin_stage) when a training stage starts. Evaluation calls
/// [`predict`](Method::predict) with every subset's mask.
pub trait Method {
    /// A batch of inputs and targets.
    type Batch;
    /// The prediction (logits).
    type Output;

    /// Short name used in logs, tables and `results.json` (`mckd`, `baseline`, ...).
    fn name(&self) -> &str;

    /// The modalities in fusion order.
    fn modalities(&self) -> &ModalitySet;

    /// Names of the loss terms [`train_step`](Method::train_step) returns, in order (columns of
    /// the train log, e.g. `task_loss`, `ckd_loss`).
    fn term_names(&self) -> Vec<String>;

    /// One training step on a batch (on the autodiff device) with presence mask `mask`
    /// (`[batch, modalities]`, 1 = present) at learning rate `lr`; returns the values of the
    /// loss terms of [`term_names`](Method::term_names).
    fn train_step(&mut self, batch: &Self::Batch, mask: &Tensor<2>, lr: f64) -> Vec<f32>;

    /// Whether the method has a meta step (the loop draws meta batches only then).
    fn has_meta_step(&self) -> bool {
        false
    }

    /// One meta step on a meta-validation batch with every modality present; returns the meta
    /// loss. Called only when [`has_meta_step`](Method::has_meta_step) is true.
    fn meta_step(&mut self, batch: &Self::Batch) -> f32 {
        let _ = batch;
        unreachable!("meta_step of a method without one")
    }

    /// Names of values the method reports after every iteration (e.g. `iwv_flair`).
    fn state_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// The values of [`state_names`](Method::state_names) now.
    fn state_values(&self) -> Vec<f32> {
        Vec::new()
    }

    /// Called when training stage `stage` (0-based) begins.
    fn begin_stage(&mut self, stage: usize) {
        let _ = stage;
    }

    /// Inference-mode prediction for a batch on the plain (non-autodiff) device.
    ///
    /// # Shapes
    /// - `mask`: `[batch, modalities]`; modalities marked 0 must not be read.
    fn predict(&self, batch: &Self::Batch, mask: &Tensor<2>) -> Self::Output;

    /// The method's whole training state (model, optimisers, random generators), enough to
    /// continue training exactly where it stands.
    fn save_state(&self) -> Result<StateFiles, StateError>;

    /// Restores what [`save_state`](Method::save_state) returned.
    fn load_state(&mut self, files: &StateFiles) -> Result<(), StateError>;
}

/// A boxed method is a method: the loop, its observers and the evaluation take `Box<dyn …>`
/// (a task that builds one of several method types at run time) like any other.
impl<M: Method + ?Sized> Method for Box<M> {
    type Batch = M::Batch;
    type Output = M::Output;

    fn name(&self) -> &str {
        (**self).name()
    }

    fn modalities(&self) -> &ModalitySet {
        (**self).modalities()
    }

    fn term_names(&self) -> Vec<String> {
        (**self).term_names()
    }

    fn train_step(&mut self, batch: &Self::Batch, mask: &Tensor<2>, lr: f64) -> Vec<f32> {
        (**self).train_step(batch, mask, lr)
    }

    fn has_meta_step(&self) -> bool {
        (**self).has_meta_step()
    }

    fn meta_step(&mut self, batch: &Self::Batch) -> f32 {
        (**self).meta_step(batch)
    }

    fn state_names(&self) -> Vec<String> {
        (**self).state_names()
    }

    fn state_values(&self) -> Vec<f32> {
        (**self).state_values()
    }

    fn begin_stage(&mut self, stage: usize) {
        (**self).begin_stage(stage)
    }

    fn predict(&self, batch: &Self::Batch, mask: &Tensor<2>) -> Self::Output {
        (**self).predict(batch, mask)
    }

    fn save_state(&self) -> Result<StateFiles, StateError> {
        (**self).save_state()
    }

    fn load_state(&mut self, files: &StateFiles) -> Result<(), StateError> {
        (**self).load_state(files)
    }
}
