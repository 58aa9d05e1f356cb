//! Seeded train / meta-validation / test splits of case ids, saved once as `splits.json`
//! and reused on resume and evaluation (nnU-Net's `do_split` habit).
//!
//! The ids are sorted, shuffled with `ChaCha8Rng::seed_from_u64(seed)`, and cut into
//! test, meta-val and train in that order; each subset is then sorted. Subset sizes use the
//! largest-remainder rule (they add up to the number of cases) and every subset with a
//! positive fraction gets at least one case when there are enough cases.

use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, VolumeError};

/// Fractions of the cases in each subset (must be ≥ 0 and add up to 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitFractions {
    /// Training (inner step).
    pub train: f64,
    /// Meta-validation (meta step), disjoint from training.
    pub meta_val: f64,
    /// Test.
    pub test: f64,
}

impl Default for SplitFractions {
    /// 70 / 10 / 20 (about the 199 / 29 / 57 of the BraTS 2018 protocol).
    fn default() -> Self {
        Self {
            train: 0.7,
            meta_val: 0.1,
            test: 0.2,
        }
    }
}

/// A saved split of case ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    /// Seed the split was made with.
    pub seed: u64,
    /// Fractions it was made with.
    pub fractions: SplitFractions,
    /// Training case ids (sorted).
    pub train: Vec<String>,
    /// Meta-validation case ids (sorted).
    pub meta_val: Vec<String>,
    /// Test case ids (sorted).
    pub test: Vec<String>,
}

fn check_fractions(f: &SplitFractions) -> std::result::Result<(), String> {
    let all = [f.train, f.meta_val, f.test];
    if all.iter().any(|x| !x.is_finite() || *x < 0.0)
        || (all.iter().sum::<f64>() - 1.0).abs() > 1e-6
    {
        return Err(format!(
            "fractions train {}, meta_val {}, test {} must be >= 0 and add up to 1",
            f.train, f.meta_val, f.test
        ));
    }
    Ok(())
}

/// Subset sizes for `n` cases (largest remainder; at least one per positive fraction when
/// `n` allows). Order: train, meta_val, test.
fn subset_sizes(n: usize, f: &SplitFractions) -> [usize; 3] {
    let fr = [f.train, f.meta_val, f.test];
    let exact = fr.map(|x| x * n as f64);
    let mut sizes = exact.map(|x| x.floor() as usize);
    let mut order = [0usize, 1, 2];
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let mut left = n - sizes.iter().sum::<usize>();
    for &i in order.iter().cycle().take(3 * n.max(1)) {
        if left == 0 {
            break;
        }
        if fr[i] > 0.0 {
            sizes[i] += 1;
            left -= 1;
        }
    }
    let positive = fr.iter().filter(|&&x| x > 0.0).count();
    if n >= positive {
        for i in 0..3 {
            if fr[i] > 0.0 && sizes[i] == 0 {
                let largest = (0..3).max_by_key(|&j| sizes[j]).expect("three subsets");
                sizes[largest] -= 1;
                sizes[i] += 1;
            }
        }
    }
    sizes
}

/// Splits `case_ids` with `fractions` and `seed` (see the module docs). Duplicate ids or
/// bad fractions are a [`VolumeError::Splits`].
pub fn make_splits(case_ids: &[String], fractions: SplitFractions, seed: u64) -> Result<Splits> {
    let err = |problem: String| VolumeError::Splits {
        path: None,
        problem,
    };
    check_fractions(&fractions).map_err(err)?;
    let mut ids = case_ids.to_vec();
    ids.sort();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(err(format!("case id {} appears twice", w[0])));
    }
    ids.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let [n_train, n_meta, n_test] = subset_sizes(ids.len(), &fractions);
    let mut test = ids[..n_test].to_vec();
    let mut meta_val = ids[n_test..n_test + n_meta].to_vec();
    let mut train = ids[n_test + n_meta..n_test + n_meta + n_train].to_vec();
    test.sort();
    meta_val.sort();
    train.sort();
    Ok(Splits {
        seed,
        fractions,
        train,
        meta_val,
        test,
    })
}

impl Splits {
    /// Checks that the subsets are disjoint and have no duplicates.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_fractions(&self.fractions)?;
        let mut all: Vec<&String> = self
            .train
            .iter()
            .chain(&self.meta_val)
            .chain(&self.test)
            .collect();
        all.sort();
        if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("case id {} is listed twice", w[0]));
        }
        Ok(())
    }

    /// Checks that every id of the split is one of `available` (e.g. the discovered cases).
    pub fn check_cases(&self, available: &[String]) -> Result<()> {
        let missing: Vec<&String> = self
            .train
            .iter()
            .chain(&self.meta_val)
            .chain(&self.test)
            .filter(|id| !available.contains(id))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(VolumeError::Splits {
                path: None,
                problem: format!("{} split case(s) not found: {:?}", missing.len(), missing),
            })
        }
    }

    /// Writes `splits.json` (pretty JSON).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = serde_json::to_string_pretty(self).map_err(|e| VolumeError::Json {
            path: path.to_path_buf(),
            source: e,
        })?;
        std::fs::write(path, text + "\n").map_err(|e| VolumeError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    }

    /// Reads and validates a `splits.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<Splits> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| VolumeError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses and validates the text of a `splits.json` (`path` names it in errors).
    pub(crate) fn from_json(text: &str, path: &Path) -> Result<Splits> {
        let s: Splits = serde_json::from_str(text).map_err(|e| VolumeError::Json {
            path: path.to_path_buf(),
            source: e,
        })?;
        s.validate().map_err(|problem| VolumeError::Splits {
            path: Some(path.to_path_buf()),
            problem,
        })?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti_io::test_support::TempDir;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("case_{i:03}")).collect()
    }

    #[test]
    fn splits_are_seeded_disjoint_complete_and_round_trip() {
        let all = ids(285);
        let s = make_splits(&all, SplitFractions::default(), 1).unwrap();
        assert_eq!(
            (s.train.len(), s.meta_val.len(), s.test.len()),
            (200, 28, 57),
            "largest remainder of 199.5 / 28.5 / 57"
        );
        s.validate().unwrap();
        let mut union: Vec<_> = s
            .train
            .iter()
            .chain(&s.meta_val)
            .chain(&s.test)
            .cloned()
            .collect();
        union.sort();
        assert_eq!(union, all);
        // Same seed (any input order), same split; another seed differs.
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(make_splits(&rev, SplitFractions::default(), 1).unwrap(), s);
        assert_ne!(make_splits(&all, SplitFractions::default(), 2).unwrap(), s);
        // Small data sets still get a case in each positive subset.
        let small = make_splits(&ids(4), SplitFractions::default(), 0).unwrap();
        assert_eq!(
            (small.train.len(), small.meta_val.len(), small.test.len()),
            (2, 1, 1)
        );
        let tmp = TempDir::new("splits");
        let p = tmp.path().join("splits.json");
        s.save(&p).unwrap();
        assert_eq!(Splits::load(&p).unwrap(), s);
        s.check_cases(&all).unwrap();
        assert!(s.check_cases(&all[1..]).is_err());
    }

    #[test]
    fn bad_splits_are_errors() {
        let f = SplitFractions {
            train: 0.5,
            meta_val: 0.1,
            test: 0.1,
        };
        assert!(make_splits(&ids(10), f, 0).is_err());
        let dup = vec!["a".to_string(), "a".to_string()];
        assert!(make_splits(&dup, SplitFractions::default(), 0).is_err());
        let tmp = TempDir::new("badsplits");
        let p = tmp.path().join("splits.json");
        let mut s = make_splits(&ids(10), SplitFractions::default(), 0).unwrap();
        s.test.push(s.train[0].clone());
        s.save(&p).unwrap();
        let msg = Splits::load(&p).unwrap_err().to_string();
        assert!(
            msg.contains("splits.json") && msg.contains("twice"),
            "{msg}"
        );
        std::fs::write(&p, "{ not json").unwrap();
        let msg = Splits::load(&p).unwrap_err().to_string();
        assert!(msg.contains("splits.json"), "{msg}");
    }
}
