//! Modalities, presence masks, subsets and non-dedicated subset sampling.

use burn::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The ordered modalities of a task. The order fixes the fusion order (Eq. 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModalitySet {
    names: Vec<String>,
}

/// Errors about modality names and subsets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModalityError {
    /// A name that is not one of the task's modalities.
    #[error("unknown modality `{name}`; this task has: {known}")]
    Unknown {
        /// The name given.
        name: String,
        /// The task's modality names, comma separated.
        known: String,
    },
    /// An empty subset: at least one modality must be present.
    #[error("a modality subset must name at least one modality")]
    Empty,
}

impl ModalitySet {
    /// A modality set from names in fusion order.
    ///
    /// # Panics
    /// If `names` is empty, has more than 16 entries, or repeats a name (a task-definition bug,
    /// not user input).
    pub fn new<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        assert!(!names.is_empty() && names.len() <= 16, "1..=16 modalities");
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "duplicate modality name {n}");
        }
        Self { names }
    }

    /// Number of modalities N.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: a modality set has at least one modality.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Names in fusion order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Index of a modality by name.
    pub fn index(&self, name: &str) -> Result<usize, ModalityError> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| ModalityError::Unknown {
                name: name.to_string(),
                known: self.names.join(", "),
            })
    }

    /// A presence mask (`true` = present) from a list of present modality names.
    pub fn mask_from_names<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<bool>, ModalityError> {
        let mut mask = vec![false; self.len()];
        for n in names {
            mask[self.index(n.as_ref())?] = true;
        }
        if !mask.iter().any(|&p| p) {
            return Err(ModalityError::Empty);
        }
        Ok(mask)
    }

    /// Names of the present modalities of a mask, in fusion order.
    pub fn names_of(&self, mask: &[bool]) -> Vec<String> {
        present_names(&self.names, mask)
    }
}

/// Names of the present modalities of a mask, in the order of `names`.
pub fn present_names<S: AsRef<str>>(names: &[S], mask: &[bool]) -> Vec<String> {
    names
        .iter()
        .zip(mask)
        .filter(|(_, p)| **p)
        .map(|(n, _)| n.as_ref().to_string())
        .collect()
}

/// All 2^N − 1 non-empty subsets of N modalities as presence masks, in a stable order: by number
/// of present modalities, then lexicographically by the indices present
/// (N = 3: {0}, {1}, {2}, {0,1}, {0,2}, {1,2}, {0,1,2}).
pub fn all_subsets(n: usize) -> Vec<Vec<bool>> {
    assert!((1..=16).contains(&n), "1..=16 modalities");
    let mut bits: Vec<u32> = (1..(1u32 << n)).collect();
    // Sort by size, then by the sorted index list (lexicographic), which for equal sizes is the
    // order of the bit-reversed value.
    bits.sort_by_key(|&b| {
        let idx: Vec<usize> = (0..n).filter(|i| b & (1 << i) != 0).collect();
        (b.count_ones(), idx)
    });
    bits.into_iter()
        .map(|b| (0..n).map(|i| b & (1 << i) != 0).collect())
        .collect()
}

/// How non-dedicated training draws the present modalities of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SubsetSampling {
    /// The reference code's rule: the number k of present modalities is uniform in 1..=N, then a
    /// uniformly random subset of size k (the paper's "randomly drop 0 to N−1 modalities").
    #[default]
    #[serde(alias = "Reference")]
    Reference,
    /// Uniform over the 2^N − 1 non-empty subsets.
    #[serde(alias = "Uniform")]
    Uniform,
    /// Every modality present (no dropping; the UpperB and dedicated-training setting).
    #[serde(alias = "Full")]
    Full,
}

/// Draws one presence mask of `n` modalities with the given rule.
pub fn sample_subset<R: Rng + ?Sized>(rule: SubsetSampling, n: usize, rng: &mut R) -> Vec<bool> {
    match rule {
        SubsetSampling::Full => vec![true; n],
        SubsetSampling::Uniform => {
            let b: u32 = rng.random_range(1..(1u32 << n));
            (0..n).map(|i| b & (1 << i) != 0).collect()
        }
        SubsetSampling::Reference => {
            let k = rng.random_range(1..=n);
            // Partial Fisher–Yates: the first k of a random permutation.
            let mut idx: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = rng.random_range(i..n);
                idx.swap(i, j);
            }
            let mut mask = vec![false; n];
            for &i in &idx[..k] {
                mask[i] = true;
            }
            mask
        }
    }
}

/// A presence-mask tensor `[batch, modalities]` of 0/1 floats from per-sample masks.
///
/// # Panics
/// If the masks do not all have the same length.
pub fn mask_tensor(masks: &[Vec<bool>], device: &Device) -> Tensor<2> {
    let n = masks.first().map_or(0, Vec::len);
    let data: Vec<f32> = masks
        .iter()
        .flat_map(|m| {
            assert_eq!(m.len(), n, "masks of different lengths");
            m.iter().map(|&p| if p { 1.0 } else { 0.0 })
        })
        .collect();
    Tensor::from_data(TensorData::new(data, [masks.len(), n]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn subsets_are_complete_ordered_and_unique() {
        let s = all_subsets(3);
        let as_idx: Vec<Vec<usize>> = s
            .iter()
            .map(|m| (0..3).filter(|&i| m[i]).collect())
            .collect();
        assert_eq!(
            as_idx,
            vec![
                vec![0],
                vec![1],
                vec![2],
                vec![0, 1],
                vec![0, 2],
                vec![1, 2],
                vec![0, 1, 2]
            ]
        );
        for n in 1..=6 {
            let s = all_subsets(n);
            assert_eq!(s.len(), (1 << n) - 1);
            let mut dedup = s.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(dedup.len(), s.len());
            assert!(s.iter().all(|m| m.iter().any(|&p| p)));
            // Sizes never decrease along the order.
            let sizes: Vec<usize> = s.iter().map(|m| m.iter().filter(|&&p| p).count()).collect();
            assert!(sizes.windows(2).all(|w| w[0] <= w[1]));
        }
        assert_eq!(all_subsets(4).len(), 15);
    }

    #[test]
    fn reference_rule_draws_k_uniformly_then_subsets_uniformly() {
        let n = 4;
        let draws = 40_000;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut k_counts = [0usize; 5];
        let mut subset_counts = std::collections::HashMap::new();
        for _ in 0..draws {
            let m = sample_subset(SubsetSampling::Reference, n, &mut rng);
            let k = m.iter().filter(|&&p| p).count();
            k_counts[k] += 1;
            *subset_counts.entry(m).or_insert(0usize) += 1;
        }
        assert_eq!(k_counts[0], 0, "never all missing");
        for (k, &count) in k_counts.iter().enumerate().skip(1) {
            let frac = count as f64 / draws as f64;
            assert!(
                (frac - 0.25).abs() < 0.01,
                "P(k={k}) = {frac}, expected 0.25"
            );
        }
        // Within k = 1 (4 subsets) each subset has probability 1/16; within k = 2 (6) 1/24.
        for (m, c) in &subset_counts {
            let k = m.iter().filter(|&&p| p).count();
            let binom = [1.0, 4.0, 6.0, 4.0, 1.0][k];
            let expected = 0.25 / binom;
            let frac = *c as f64 / draws as f64;
            assert!(
                (frac - expected).abs() < 0.01,
                "{m:?}: {frac} vs {expected}"
            );
        }
        assert_eq!(subset_counts.len(), 15);
    }

    #[test]
    fn uniform_rule_covers_every_subset_equally() {
        let n = 3;
        let draws = 35_000;
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..draws {
            *counts
                .entry(sample_subset(SubsetSampling::Uniform, n, &mut rng))
                .or_insert(0usize) += 1;
        }
        assert_eq!(counts.len(), 7);
        for c in counts.values() {
            let frac = *c as f64 / draws as f64;
            assert!((frac - 1.0 / 7.0).abs() < 0.01, "{frac}");
        }
    }

    #[test]
    fn sampling_is_stable_under_a_seed() {
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..50)
                .map(|_| sample_subset(SubsetSampling::Reference, 4, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn names_and_masks_round_trip() {
        let set = ModalitySet::new(["flair", "t1", "t1c", "t2"]);
        let mask = set.mask_from_names(&["t2", "flair"]).unwrap();
        assert_eq!(mask, vec![true, false, false, true]);
        assert_eq!(set.names_of(&mask), vec!["flair", "t2"]);
        assert!(matches!(
            set.mask_from_names(&["t1ce"]),
            Err(ModalityError::Unknown { .. })
        ));
        assert_eq!(set.mask_from_names::<&str>(&[]), Err(ModalityError::Empty));
    }

    #[test]
    fn mask_tensor_layout() {
        let device = Device::flex();
        let t = mask_tensor(&[vec![true, false], vec![false, true]], &device);
        assert_eq!(t.dims(), [2, 2]);
        assert_eq!(crate::test_util::values(t), vec![1.0, 0.0, 0.0, 1.0]);
    }
}
