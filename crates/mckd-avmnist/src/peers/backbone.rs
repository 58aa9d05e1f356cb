//! The network a peer builds on, seen as two feature extractors and a fusion head, so that a
//! method can run on our encoders ([`AvmnistNet`]) or on SMIL's own LeNet-5
//! ([`super::lenet::LenetNet`]).

use burn::module::{Module, ModuleDisplay};
use burn::prelude::*;

use super::common::{Feature, encode};
use crate::model::{AvBatch, AvmnistNet, DropoutRng};

/// Two per-modality feature extractors and a fusion head `classify(hidden(x))` over the
/// concatenated features `x = [image | audio]`.
pub trait Backbone: Module + ModuleDisplay + Clone + std::fmt::Debug {
    /// Feature widths `[image, audio]`.
    fn widths(&self) -> [usize; 2];

    /// Width of the head's hidden layer.
    fn hidden_width(&self) -> usize;

    /// The features of modality `m`, zero rows where `present` is false; only the present
    /// rows of the input are read (and normalised together).
    ///
    /// # Shapes
    /// - `present`: `batch` flags; output features `[batch, widths()[m]]`
    fn features(&self, batch: &AvBatch, m: usize, present: &[bool]) -> Feature;

    /// The head's hidden layer before its dropout.
    ///
    /// # Shapes
    /// - `fused`: `[batch, widths()[0] + widths()[1]]`; output `[batch, hidden_width()]`
    fn hidden(&self, fused: Tensor<2>) -> Tensor<2>;

    /// The rest of the head (dropout, last layer).
    ///
    /// # Shapes
    /// - `hidden`: `[batch, hidden_width()]`; output `[batch, 10]` logits
    fn classify(&self, hidden: Tensor<2>) -> Tensor<2>;

    /// Logits of modality `m` alone, the model of a unimodal pretraining stage (our network:
    /// the head with the other feature imputed by this one; LeNet: SMIL's unimodal heads).
    ///
    /// # Shapes
    /// - output `[batch, 10]`
    fn unimodal_logits(&self, batch: &AvBatch, m: usize) -> Tensor<2>;

    /// The generator the network's dropout layers draw from (shared with layers a method adds).
    fn dropout_rng(&self) -> DropoutRng;

    /// Logits with both modalities present.
    ///
    /// # Shapes
    /// - output `[batch, 10]`
    fn fused_logits(&self, batch: &AvBatch) -> Tensor<2> {
        let b = batch.labels.dims()[0];
        let all = vec![true; b];
        let x = Tensor::cat(
            vec![
                self.features(batch, 0, &all).dropped,
                self.features(batch, 1, &all).dropped,
            ],
            1,
        );
        self.classify(self.hidden(x))
    }
}

impl Backbone for AvmnistNet {
    fn widths(&self) -> [usize; 2] {
        let f = self.feature_width();
        [f, f]
    }

    fn hidden_width(&self) -> usize {
        self.hidden_units()
    }

    fn features(&self, batch: &AvBatch, m: usize, present: &[bool]) -> Feature {
        let x = if m == crate::model::IMAGE {
            &batch.image
        } else {
            &batch.audio
        };
        encode(self.encoder(m), x, present)
    }

    fn hidden(&self, fused: Tensor<2>) -> Tensor<2> {
        AvmnistNet::hidden(self, fused)
    }

    fn classify(&self, hidden: Tensor<2>) -> Tensor<2> {
        AvmnistNet::classify(self, hidden)
    }

    /// The mean-imputed forward with only `m` present: `head([f_m, f_m])`.
    fn unimodal_logits(&self, batch: &AvBatch, m: usize) -> Tensor<2> {
        let b = batch.labels.dims()[0];
        let f = Backbone::features(self, batch, m, &vec![true; b]).dropped;
        self.head(Tensor::cat(vec![f.clone(), f], 1))
    }

    fn dropout_rng(&self) -> DropoutRng {
        AvmnistNet::dropout_rng(self)
    }
}
