//! The importance weight vector (IWV): one learnable weight per modality (Eq. 6).

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How the raw weights are normalised (paper Table 3 ablation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Normalisation {
    /// `softmax(w)` (the paper's default).
    #[default]
    #[serde(alias = "Softmax")]
    Softmax,
    /// `sigmoid(w)` element-wise.
    #[serde(alias = "Sigmoid")]
    Sigmoid,
    /// `relu(w)` element-wise.
    #[serde(alias = "Relu")]
    Relu,
}

/// Configuration of the [`Iwv`].
#[derive(Config, Debug)]
pub struct IwvConfig {
    /// Number of modalities.
    pub modalities: usize,
    /// Normalisation of the raw weights.
    #[config(default = "Normalisation::Softmax")]
    pub normalisation: Normalisation,
}

impl IwvConfig {
    /// Raw weights drawn uniformly in `[0, 1)` from `seed` (as the reference code).
    pub fn init(&self, seed: u64, device: &Device) -> Iwv {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let raw: Vec<f32> = (0..self.modalities).map(|_| rng.random::<f32>()).collect();
        self.init_with(&raw, device)
    }

    /// Raw weights given explicitly.
    ///
    /// # Panics
    /// If `raw.len()` differs from the modality count.
    pub fn init_with(&self, raw: &[f32], device: &Device) -> Iwv {
        assert_eq!(raw.len(), self.modalities, "IWV length");
        Iwv {
            weights: Param::from_tensor(Tensor::from_data(
                TensorData::new(raw.to_vec(), [raw.len()]),
                device,
            )),
            normalisation: self.normalisation,
        }
    }
}

/// The importance weight vector: raw weights `w ∈ R^N` and their normalisation.
#[derive(Module, Debug)]
pub struct Iwv {
    /// Raw weights `[modalities]`.
    pub weights: Param<Tensor<1>>,
    /// Normalisation applied by [`Iwv::normalised`].
    #[module(skip)]
    pub normalisation: Normalisation,
}

impl Iwv {
    /// Normalised weights `[modalities]` (differentiable in the raw weights).
    pub fn normalised(&self) -> Tensor<1> {
        self.normalise(self.weights.val())
    }

    /// Normalised weights outside the autodiff graph, for uses that take no gradient (the
    /// detached ratio of the CKD loss, logs). [`Iwv::normalised`] would record a node that no
    /// backward pass reaches in steps without a meta step; burn's autodiff keeps such orphans
    /// and re-scans them on every backward, which was measured to triple the time of a
    /// 60-epoch AV-MNIST Baseline run.
    pub fn normalised_detached(&self) -> Tensor<1> {
        self.normalise(self.weights.val().detach())
    }

    fn normalise(&self, w: Tensor<1>) -> Tensor<1> {
        match self.normalisation {
            Normalisation::Softmax => activation::softmax(w, 0),
            Normalisation::Sigmoid => activation::sigmoid(w),
            Normalisation::Relu => activation::relu(w),
        }
    }

    /// Normalised weights as plain numbers.
    pub fn normalised_values(&self) -> Vec<f32> {
        self.normalised_detached()
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 tensor")
    }

    /// Raw weights as plain numbers.
    pub fn raw_values(&self) -> Vec<f32> {
        self.weights
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 tensor")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_close;

    #[test]
    fn normalisations_match_hand_computed_values() {
        // import numpy as np; w = np.array([0.2, -1.0, 1.5])
        // np.exp(w)/np.exp(w).sum() -> [0.20118737, 0.06059647, 0.73821616]
        // 1/(1+np.exp(-w))          -> [0.54983, 0.26894, 0.81757]
        // np.maximum(w, 0)          -> [0.2, 0.0, 1.5]
        let device = Device::flex();
        let raw = [0.2f32, -1.0, 1.5];
        let expect = [
            (
                Normalisation::Softmax,
                [0.201_187_4, 0.060_596_5, 0.738_216_2],
            ),
            (Normalisation::Sigmoid, [0.549_834, 0.268_941, 0.817_574]),
            (Normalisation::Relu, [0.2, 0.0, 1.5]),
        ];
        for (norm, e) in expect {
            let iwv = IwvConfig::new(3)
                .with_normalisation(norm)
                .init_with(&raw, &device);
            assert_close(&iwv.normalised_values(), &e, 1e-5);
        }
    }

    #[test]
    fn detached_normalisation_has_the_same_values_and_no_gradient() {
        let device = Device::flex().autodiff();
        let iwv = IwvConfig::new(3).init_with(&[0.2, -1.0, 1.5], &device);
        assert_eq!(
            iwv.normalised_detached()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            iwv.normalised().into_data().try_to_vec::<f32>().unwrap()
        );
        // A loss through the tracked weights reaches the raw weights, through the detached
        // ones it does not. (The `0 · Σ w` term keeps both losses backpropagatable.)
        // import numpy as np; w = np.array([0.2, -1.0, 1.5]); c = np.array([1., 2, 3])
        // s = np.exp(w) / np.exp(w).sum(); s * (c - c @ s) -> [-0.30923, -0.03254, 0.34177]
        let c = Tensor::<1>::from_floats([1.0f32, 2.0, 3.0], &device);
        let grad = |loss: Tensor<1>| -> Vec<f32> {
            let g = iwv.weights.grad(&loss.backward()).expect("a gradient");
            g.to_data().try_to_vec().unwrap()
        };
        let zero = || iwv.weights.val().sum() * 0.0;
        let g_with = grad((iwv.normalised() * c.clone()).sum() + zero());
        let g_without = grad((iwv.normalised_detached() * c).sum() + zero());
        assert_close(&g_with, &[-0.30923, -0.03254, 0.34177], 1e-5);
        assert_eq!(g_without, [0.0, 0.0, 0.0]);
    }

    #[test]
    fn init_is_uniform_in_unit_interval_and_seeded() {
        let device = Device::flex();
        let a = IwvConfig::new(4).init(5, &device).raw_values();
        let b = IwvConfig::new(4).init(5, &device).raw_values();
        let c = IwvConfig::new(4).init(6, &device).raw_values();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| (0.0..1.0).contains(v)));
    }
}
