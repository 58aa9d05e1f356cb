//! SMIL's AV-MNIST file selection and pairing.
//!
//! Source of truth: the kit's `smil_split.json` (derived from mengmenm/SMIL's code), or the
//! same lists rebuilt from the rule with [`smil_split_from_rule`]:
//!
//! * train pool of digit `d`: the first 105 names of Python `sorted("<i>.png")` over the MNIST
//!   *train* indices `i` with label `d` (lexicographic: `"1.png" < "1000.png" < "10005.png"`),
//!   and the 105 FSDD recordings `d_<speaker>_<k>.wav`, `k` in 15..49, speakers jackson,
//!   nicolas, theo (35 each, in index order);
//! * pairing for `per_class_num = p` (a multiple of 3): image `j < p` is paired with element
//!   `j` of `jackson[:p/3] + nicolas[:p/3] + theo[:p/3]`; images `p..105` have no sound. For
//!   `p < 105` this is *not* a prefix of the `p = 105` pairing (see [`smil_sound_position`]);
//! * test of digit `d`: the last 45 (default, [`TestSet::Last45`]) or first 45
//!   ([`TestSet::First45`]) names of `sorted("<i>.png")` over MNIST *test* indices with label
//!   `d`, paired position-wise with the 45 recordings with `k < 15` in Python `sorted()` order
//!   (`jackson_0, jackson_1, jackson_10, ..., jackson_14, jackson_2, ...`).
//!
//! Lists are class-major (digit 0 first).
//!
//! # The paper's 60 / 10 / 30 split ([`ValidationCarve::Paper`])
//!
//! MCKD's Eq. 4 needs a meta-validation set D_v disjoint from the training set D_t, and the
//! paper splits the 1,500 samples 60 / 10 / 30 % = 900 / 150 / 450. SMIL's code has no
//! validation set, so the 150 are carved from the 1,050-sample train pool by a fixed rule
//! (our reading, not the paper's words), chosen so that the training pairs stay SMIL's:
//!
//! * validation (15 per digit, both modalities): the last 15 images of each digit's 105-image
//!   pool (positions 90..105), image `90 + v` paired with element `v` of
//!   `jackson[30..35] + nicolas[30..35] + theo[30..35]`, i.e. each speaker's last 5 training
//!   recordings (FSDD indices 45..49) — SMIL's pairing rule applied to the carved part;
//! * training (90 per digit): images 0..90 and each speaker's recordings 15..44. For a row
//!   with `p` pairs per digit (a multiple of 3, at most 90) the pairs are exactly SMIL's
//!   ([`SmilSplit::pairing_for`]`(d, p)`: image `j` with element `j` of `jackson[:p/3] +
//!   nicolas[:p/3] + theo[:p/3]`, all within indices 15..44); missing-audio rows add images
//!   `p..90` image-only, missing-visual rows add the recordings `speaker[p/3..30]` audio-only,
//!   so every row trains on 900 samples (10 p paired);
//! * test: unchanged, 45 per digit.
//!
//! [`ValidationCarve::None`] is SMIL's protocol (105 per digit for training, no validation).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Number of classes (digits).
pub const NUM_CLASSES: usize = 10;
/// FSDD speakers SMIL uses, in pairing order.
pub const SPEAKERS: [&str; 3] = ["jackson", "nicolas", "theo"];
/// Train images (and train recordings) per digit.
pub const TRAIN_POOL: usize = 105;
/// Train recordings per digit and speaker (FSDD indices 15..49).
pub const TRAIN_PER_SPEAKER: usize = TRAIN_POOL / 3;
/// Test samples per digit.
pub const TEST_PER_CLASS: usize = 45;
/// FSDD recordings with an index below this are test, the others (up to 49) train.
pub const FSDD_FIRST_TRAIN_INDEX: u32 = 15;
/// Recordings per digit and speaker in FSDD v1.0.8.
pub const FSDD_PER_SPEAKER: u32 = 50;
/// Largest split file [`SmilSplit::load`] reads (16 MiB; the kit's is 70,707 bytes).
pub const MAX_SPLIT_BYTES: u64 = 16 << 20;

/// Which 45 MNIST test images per digit form the test set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestSet {
    /// Last 45 sorted names (`SoundMNIST(train=False)`, the set SMIL evaluates on).
    #[default]
    Last45,
    /// First 45 sorted names (`MetaTeSouMNIST`, defined but unused by SMIL).
    First45,
}

/// How the meta-validation set is carved from the train pool (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValidationCarve {
    /// No validation set: the whole pool (105 per digit) is training data, as in SMIL.
    #[default]
    None,
    /// The paper's 60 / 10 / 30 split: per digit the last `pool / 7` images (15 of 105), each
    /// paired with one of every speaker's last `pool / 21` train recordings (FSDD 45..49), are
    /// validation; the other `6 pool / 7` (90) images and recordings are training data.
    Paper,
}

impl ValidationCarve {
    /// The positions the carve implies for a pool of `pool` samples per digit (a multiple of 3;
    /// a multiple of 21 for [`ValidationCarve::Paper`], else [`DataError::InvalidSetting`]).
    pub fn layout(self, pool: usize) -> Result<CarveLayout> {
        if pool == 0 || !pool.is_multiple_of(3) {
            return Err(DataError::invalid(format!(
                "pool of {pool} per digit is not a positive multiple of 3"
            )));
        }
        let val_per_speaker = match self {
            ValidationCarve::None => 0,
            ValidationCarve::Paper if pool.is_multiple_of(21) => pool / 21,
            ValidationCarve::Paper => {
                return Err(DataError::invalid(format!(
                    "the paper's validation carve takes 1/7 of the pool, 1/21 per speaker: a pool \
                     of {pool} per digit is not a multiple of 21"
                )));
            }
        };
        Ok(CarveLayout {
            pool,
            val_per_speaker,
        })
    }
}

/// Where training and validation samples sit in one digit's pool under a
/// [`ValidationCarve`]. Positions index the pool's images (`0..pool`, SMIL order) and its
/// full-pool sound list `jackson + nicolas + theo` (`0..pool`, `pool / 3` per speaker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CarveLayout {
    /// Samples per digit in the pool (105 for SMIL).
    pub pool: usize,
    /// Validation recordings per speaker (5 for the paper's carve of 105, 0 without carve).
    pub val_per_speaker: usize,
}

impl CarveLayout {
    fn per_speaker(&self) -> usize {
        self.pool / 3
    }

    /// Training samples per digit: `pool - 3 val_per_speaker` (90 or 105).
    pub fn train_per_class(&self) -> usize {
        self.pool - self.validation_per_class()
    }

    /// Validation samples per digit: `3 val_per_speaker` (15 or 0).
    pub fn validation_per_class(&self) -> usize {
        3 * self.val_per_speaker
    }

    /// Checks that `p` is a multiple of 3 in `0..=train_per_class`.
    pub fn check_p(&self, p: usize) -> Result<()> {
        check_p(p, self.train_per_class())
    }

    /// Full-pool sound position of training pair `j < p`: SMIL's pairing, element `j` of
    /// `jackson[:p/3] + nicolas[:p/3] + theo[:p/3]`.
    ///
    /// # Panics
    /// If `j >= p` or `p < 3` (callers check `p` with [`CarveLayout::check_p`]).
    pub fn train_sound(&self, j: usize, p: usize) -> usize {
        smil_sound_position(j, p, self.pool)
    }

    /// Full-pool sound positions of the training recordings no pair uses at `p`:
    /// `speaker[p/3 .. per_speaker - val_per_speaker]` for each speaker, in pool order.
    pub fn audio_only_sounds(&self, p: usize) -> Vec<usize> {
        let per = self.per_speaker();
        (0..3)
            .flat_map(|s| (s * per + p / 3)..(s * per + per - self.val_per_speaker))
            .collect()
    }

    /// Image positions of the validation samples: the last `validation_per_class` of the pool.
    pub fn validation_images(&self) -> std::ops::Range<usize> {
        self.train_per_class()..self.pool
    }

    /// Full-pool sound position of validation sample `v` (`0..validation_per_class`):
    /// element `v` of each speaker's last `val_per_speaker` recordings, speaker-major.
    ///
    /// # Panics
    /// If `v >= validation_per_class` (internal contract).
    pub fn validation_sound(&self, v: usize) -> usize {
        assert!(
            v < self.validation_per_class(),
            "validation sample {v} out of range"
        );
        let (s, k) = (v / self.val_per_speaker, v % self.val_per_speaker);
        s * self.per_speaker() + self.per_speaker() - self.val_per_speaker + k
    }
}

/// The selection for one digit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSplit {
    /// 105 MNIST train indices in SMIL order (sorted `"<i>.png"` names).
    pub train_images: Vec<usize>,
    /// Train recordings per speaker ([`SPEAKERS`] order), 35 each, FSDD index order 15..49.
    pub train_sounds: [Vec<String>; 3],
    /// 45 MNIST test indices of [`TestSet::Last45`].
    pub test_last45_images: Vec<usize>,
    /// 45 MNIST test indices of [`TestSet::First45`].
    pub test_first45_images: Vec<usize>,
    /// 45 test recordings (FSDD index < 15) in Python `sorted()` order.
    pub test_sounds: Vec<String>,
}

/// SMIL's split for all 10 digits; `classes[d]` is digit `d`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmilSplit {
    /// Per digit, 10 entries.
    pub classes: Vec<ClassSplit>,
}

/// Position, within the full-pool sound list `jackson[..] + nicolas[..] + theo[..]` (each
/// `pool / 3` long), of the sound SMIL pairs with image `j` when `per_class_num = p`:
/// `(j / (p/3)) * (pool/3) + j % (p/3)`.
///
/// # Panics
/// If `j >= p` or `p < 3` (internal contract; callers validate `p` first).
pub fn smil_sound_position(j: usize, p: usize, pool: usize) -> usize {
    assert!(
        j < p && p >= 3,
        "smil_sound_position: j {j} must be < p {p}, p >= 3"
    );
    let per = p / 3;
    (j / per) * (pool / 3) + j % per
}

/// Check that `p` is a valid per-class paired count for a pool of `pool` per digit.
pub(crate) fn check_p(p: usize, pool: usize) -> Result<()> {
    if !p.is_multiple_of(3) || p > pool {
        return Err(DataError::invalid(format!(
            "per-class paired count p = {p} must be a multiple of 3 in 0..={pool} (SMIL pairs \
             image j with jackson[:p/3] + nicolas[:p/3] + theo[:p/3])"
        )));
    }
    Ok(())
}

/// Parse an FSDD file name `"{digit}_{speaker}_{index}.wav"`.
pub fn parse_fsdd_name(name: &str) -> Option<(u8, &str, u32)> {
    let stem = name.strip_suffix(".wav")?;
    let mut parts = stem.splitn(3, '_');
    let digit: u8 = parts.next()?.parse().ok()?;
    let speaker = parts.next()?;
    let index: u32 = parts.next()?.parse().ok()?;
    (digit < 10 && !speaker.is_empty()).then_some((digit, speaker, index))
}

// ----- JSON form (same keys as the kit's smil_split.json; other keys are ignored) -----

#[derive(Serialize, Deserialize)]
struct RawSplit {
    train_pool: BTreeMap<String, RawPool>,
    test_last45: BTreeMap<String, RawTest>,
    test_first45: BTreeMap<String, RawTest>,
}

#[derive(Serialize, Deserialize)]
struct RawPool {
    mnist_train_index: Vec<usize>,
    fsdd_by_speaker: RawSpeakers,
}

#[derive(Serialize, Deserialize)]
struct RawSpeakers {
    jackson: Vec<String>,
    nicolas: Vec<String>,
    theo: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct RawTest {
    mnist_test_index: Vec<usize>,
    fsdd: Vec<String>,
}

impl SmilSplit {
    /// Read and validate a `smil_split.json` file (at most [`MAX_SPLIT_BYTES`]).
    pub fn load(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path)
            .map_err(|e| DataError::io(path, e))?
            .len();
        if len > MAX_SPLIT_BYTES {
            return Err(DataError::format(
                path,
                format!("{len} bytes; split files above {MAX_SPLIT_BYTES} bytes are not read"),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::from_json_bytes(&bytes, path)
    }

    /// [`SmilSplit::from_json`] on the bytes of a file, which must be UTF-8.
    pub fn from_json_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| DataError::format(path, format!("not UTF-8 text: {e}")))?;
        Self::from_json(text, path)
    }

    /// Parse and validate JSON text; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawSplit = serde_json::from_str(text)
            .map_err(|e| DataError::format(path, format!("not a SMIL split JSON: {e}")))?;
        let mut classes = Vec::with_capacity(NUM_CLASSES);
        for d in 0..NUM_CLASSES {
            let key = d.to_string();
            let missing =
                |what: &str| DataError::format(path, format!("{what} has no class \"{d}\""));
            let pool = raw
                .train_pool
                .get(&key)
                .ok_or_else(|| missing("train_pool"))?;
            let last = raw
                .test_last45
                .get(&key)
                .ok_or_else(|| missing("test_last45"))?;
            let first = raw
                .test_first45
                .get(&key)
                .ok_or_else(|| missing("test_first45"))?;
            if last.fsdd != first.fsdd {
                return Err(DataError::format(
                    path,
                    format!("class {d}: test_last45 and test_first45 list different sounds"),
                ));
            }
            let s = &pool.fsdd_by_speaker;
            classes.push(ClassSplit {
                train_images: pool.mnist_train_index.clone(),
                train_sounds: [s.jackson.clone(), s.nicolas.clone(), s.theo.clone()],
                test_last45_images: last.mnist_test_index.clone(),
                test_first45_images: first.mnist_test_index.clone(),
                test_sounds: last.fsdd.clone(),
            });
        }
        if raw.train_pool.len() != NUM_CLASSES {
            return Err(DataError::format(
                path,
                format!(
                    "train_pool has {} classes, expected 10",
                    raw.train_pool.len()
                ),
            ));
        }
        let split = SmilSplit { classes };
        split.validate(path)?;
        Ok(split)
    }

    /// JSON text with the kit's keys (`train_pool`, `test_last45`, `test_first45`), readable
    /// by [`SmilSplit::from_json`]; for saving the split with a run.
    pub fn to_json(&self) -> String {
        let mut raw = RawSplit {
            train_pool: BTreeMap::new(),
            test_last45: BTreeMap::new(),
            test_first45: BTreeMap::new(),
        };
        for (d, c) in self.classes.iter().enumerate() {
            let [jackson, nicolas, theo] = c.train_sounds.clone();
            raw.train_pool.insert(
                d.to_string(),
                RawPool {
                    mnist_train_index: c.train_images.clone(),
                    fsdd_by_speaker: RawSpeakers {
                        jackson,
                        nicolas,
                        theo,
                    },
                },
            );
            for (map, images) in [
                (&mut raw.test_last45, &c.test_last45_images),
                (&mut raw.test_first45, &c.test_first45_images),
            ] {
                map.insert(
                    d.to_string(),
                    RawTest {
                        mnist_test_index: images.clone(),
                        fsdd: c.test_sounds.clone(),
                    },
                );
            }
        }
        serde_json::to_string_pretty(&raw).expect("split serialises")
    }

    /// Check sizes (10 digits; 105 images, 3x35 sounds, 45+45 test images, 45 test sounds),
    /// that every sound name is `{d}_{speaker}_{k}.wav` of the right digit and speaker, train
    /// sounds have `k >= 15` and test sounds `k < 15`, and no list has duplicates.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let err = |msg: String| Err(DataError::format(path, msg));
        if self.classes.len() != NUM_CLASSES {
            return err(format!(
                "{} classes, expected {NUM_CLASSES}",
                self.classes.len()
            ));
        }
        for (d, c) in self.classes.iter().enumerate() {
            let sizes = [
                ("train images", c.train_images.len(), TRAIN_POOL),
                (
                    "test_last45 images",
                    c.test_last45_images.len(),
                    TEST_PER_CLASS,
                ),
                (
                    "test_first45 images",
                    c.test_first45_images.len(),
                    TEST_PER_CLASS,
                ),
                ("test sounds", c.test_sounds.len(), TEST_PER_CLASS),
            ];
            for (what, got, want) in sizes {
                if got != want {
                    return err(format!("class {d}: {got} {what}, expected {want}"));
                }
            }
            for images in [
                &c.train_images,
                &c.test_last45_images,
                &c.test_first45_images,
            ] {
                if images.iter().collect::<HashSet<_>>().len() != images.len() {
                    return err(format!("class {d}: duplicate MNIST index"));
                }
            }
            let mut seen = HashSet::new();
            for (s, list) in c.train_sounds.iter().enumerate() {
                if list.len() != TRAIN_PER_SPEAKER {
                    return err(format!(
                        "class {d}: {} train sounds of {}, expected {TRAIN_PER_SPEAKER}",
                        list.len(),
                        SPEAKERS[s]
                    ));
                }
                for name in list {
                    match parse_fsdd_name(name) {
                        Some((dd, sp, k))
                            if dd as usize == d
                                && sp == SPEAKERS[s]
                                && (FSDD_FIRST_TRAIN_INDEX..FSDD_PER_SPEAKER).contains(&k) => {}
                        _ => {
                            return err(format!(
                                "class {d}: {name:?} is not a train recording of speaker {} \
                                 and digit {d} (index 15..49)",
                                SPEAKERS[s]
                            ));
                        }
                    }
                    if !seen.insert(name) {
                        return err(format!("class {d}: duplicate sound {name}"));
                    }
                }
            }
            for name in &c.test_sounds {
                match parse_fsdd_name(name) {
                    Some((dd, sp, k))
                        if dd as usize == d
                            && SPEAKERS.contains(&sp)
                            && k < FSDD_FIRST_TRAIN_INDEX => {}
                    _ => {
                        return err(format!(
                            "class {d}: {name:?} is not a test recording of digit {d} (index < 15)"
                        ));
                    }
                }
                if !seen.insert(name) {
                    return err(format!("class {d}: duplicate sound {name}"));
                }
            }
        }
        Ok(())
    }

    fn class(&self, digit: usize) -> Result<&ClassSplit> {
        self.classes
            .get(digit)
            .ok_or_else(|| DataError::invalid(format!("digit {digit} out of range 0..10")))
    }

    /// The 105 train recordings of `digit` in full-pool order `jackson + nicolas + theo`
    /// (= the sounds of [`SmilSplit::pairing_for`] with `p = 105`).
    pub fn train_sounds(&self, digit: usize) -> Result<Vec<String>> {
        Ok(self.class(digit)?.train_sounds.concat())
    }

    /// SMIL's paired train samples of `digit` for `per_class_num = p`: `(MNIST train index,
    /// FSDD name)` for image `j < p` and element `j` of `jackson[:p/3] + nicolas[:p/3] +
    /// theo[:p/3]`. Errors if `digit >= 10` or `p` is not a multiple of 3 in `0..=105`.
    pub fn pairing_for(&self, digit: usize, p: usize) -> Result<Vec<(usize, String)>> {
        let c = self.class(digit)?;
        check_p(p, TRAIN_POOL)?;
        let sounds = c.train_sounds.concat();
        Ok((0..p)
            .map(|j| {
                let s = smil_sound_position(j, p, TRAIN_POOL);
                (c.train_images[j], sounds[s].clone())
            })
            .collect())
    }

    /// MNIST train indices of `digit` that have no sound at `per_class_num = p` (images
    /// `p..105`).
    pub fn image_only_for(&self, digit: usize, p: usize) -> Result<Vec<usize>> {
        check_p(p, TRAIN_POOL)?;
        Ok(self.class(digit)?.train_images[p..].to_vec())
    }

    /// Train recordings of `digit` that SMIL's pairing at `p` leaves unused:
    /// `speaker[p/3..35]` for each speaker, in full-pool order.
    pub fn unpaired_sounds_for(&self, digit: usize, p: usize) -> Result<Vec<String>> {
        check_p(p, TRAIN_POOL)?;
        let c = self.class(digit)?;
        Ok(c.train_sounds
            .iter()
            .flat_map(|l| l[p / 3..].iter().cloned())
            .collect())
    }

    /// The training pairs of `digit` at `p` pairs per digit under `carve`: SMIL's pairs
    /// (equal to [`SmilSplit::pairing_for`]); `p` must be a multiple of 3 up to 105
    /// ([`ValidationCarve::None`]) or 90 ([`ValidationCarve::Paper`]).
    pub fn train_pairs(
        &self,
        digit: usize,
        p: usize,
        carve: ValidationCarve,
    ) -> Result<Vec<(usize, String)>> {
        carve.layout(TRAIN_POOL)?.check_p(p)?;
        self.pairing_for(digit, p)
    }

    /// MNIST train indices of `digit` that train image-only at `p` under `carve` (a
    /// missing-audio row): images `p..105`, or `p..90` with the paper's carve.
    pub fn train_image_only(
        &self,
        digit: usize,
        p: usize,
        carve: ValidationCarve,
    ) -> Result<Vec<usize>> {
        let l = carve.layout(TRAIN_POOL)?;
        l.check_p(p)?;
        Ok(self.class(digit)?.train_images[p..l.train_per_class()].to_vec())
    }

    /// Recordings of `digit` that train audio-only at `p` under `carve` (a missing-visual
    /// row): `speaker[p/3..35]`, or `speaker[p/3..30]` with the paper's carve.
    pub fn train_audio_only(
        &self,
        digit: usize,
        p: usize,
        carve: ValidationCarve,
    ) -> Result<Vec<String>> {
        let l = carve.layout(TRAIN_POOL)?;
        l.check_p(p)?;
        let sounds = self.train_sounds(digit)?;
        Ok(l.audio_only_sounds(p)
            .into_iter()
            .map(|i| sounds[i].clone())
            .collect())
    }

    /// The validation pairs `(MNIST train index, FSDD name)` of `digit` under `carve`: none
    /// without carve; with the paper's carve image `90 + v` with element `v` of
    /// `jackson[30..35] + nicolas[30..35] + theo[30..35]` (FSDD indices 45..49).
    pub fn validation_pairs(
        &self,
        digit: usize,
        carve: ValidationCarve,
    ) -> Result<Vec<(usize, String)>> {
        let l = carve.layout(TRAIN_POOL)?;
        let c = self.class(digit)?;
        let sounds = c.train_sounds.concat();
        Ok(l.validation_images()
            .enumerate()
            .map(|(v, i)| (c.train_images[i], sounds[l.validation_sound(v)].clone()))
            .collect())
    }

    /// The 45 test pairs `(MNIST test index, FSDD name)` of `digit`, position-wise.
    pub fn test_pairs(&self, digit: usize, which: TestSet) -> Result<Vec<(usize, String)>> {
        let c = self.class(digit)?;
        let images = match which {
            TestSet::Last45 => &c.test_last45_images,
            TestSet::First45 => &c.test_first45_images,
        };
        Ok(images
            .iter()
            .copied()
            .zip(c.test_sounds.iter().cloned())
            .collect())
    }
}

/// Indices of `labels == digit`, ordered as Python `sorted()` orders `"<i>.png"`.
fn sorted_names(labels: &[u8], digit: u8) -> Vec<usize> {
    let mut named: Vec<(String, usize)> = labels
        .iter()
        .enumerate()
        .filter(|(_, l)| **l == digit)
        .map(|(i, _)| (format!("{i}.png"), i))
        .collect();
    named.sort();
    named.into_iter().map(|(_, i)| i).collect()
}

/// Rebuild SMIL's split from the MNIST train and test labels with the rule described in the
/// module doc (no randomness). Equals the kit's `smil_split.json`.
///
/// Errors ([`DataError::InvalidSetting`]) if a label is above 9 or a digit has fewer than 105
/// train or 45 test images.
pub fn smil_split_from_rule(train_labels: &[u8], test_labels: &[u8]) -> Result<SmilSplit> {
    for (what, labels) in [("train", train_labels), ("test", test_labels)] {
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l >= 10) {
            return Err(DataError::invalid(format!(
                "{what} label {l} at index {i} is not a digit"
            )));
        }
    }
    let mut classes = Vec::with_capacity(NUM_CLASSES);
    for d in 0..NUM_CLASSES as u8 {
        let train = sorted_names(train_labels, d);
        let test = sorted_names(test_labels, d);
        if train.len() < TRAIN_POOL || test.len() < TEST_PER_CLASS {
            return Err(DataError::invalid(format!(
                "digit {d} has {} train / {} test images; SMIL needs {TRAIN_POOL} / {TEST_PER_CLASS}",
                train.len(),
                test.len()
            )));
        }
        let train_sounds = SPEAKERS.map(|s| {
            (FSDD_FIRST_TRAIN_INDEX..FSDD_PER_SPEAKER)
                .map(|k| format!("{d}_{s}_{k}.wav"))
                .collect::<Vec<_>>()
        });
        let mut test_sounds: Vec<String> = SPEAKERS
            .iter()
            .flat_map(|s| (0..FSDD_FIRST_TRAIN_INDEX).map(move |k| format!("{d}_{s}_{k}.wav")))
            .collect();
        test_sounds.sort();
        classes.push(ClassSplit {
            train_images: train[..TRAIN_POOL].to_vec(),
            train_sounds,
            test_last45_images: test[test.len() - TEST_PER_CLASS..].to_vec(),
            test_first45_images: test[..TEST_PER_CLASS].to_vec(),
            test_sounds,
        });
    }
    Ok(SmilSplit { classes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::read_idx_labels;
    use crate::testutil::{TempDir, data_dir};

    fn kit_split() -> SmilSplit {
        SmilSplit::load(&data_dir().join("avmnist/smil_split.json")).unwrap()
    }

    fn labels() -> (Vec<u8>, Vec<u8>) {
        let m = data_dir().join("avmnist/mnist");
        (
            read_idx_labels(&m.join("train-labels-idx1-ubyte.gz")).unwrap(),
            read_idx_labels(&m.join("t10k-labels-idx1-ubyte.gz")).unwrap(),
        )
    }

    #[test]
    fn sound_positions() {
        // p = 15: images 0..5 -> jackson 0..5, 5..10 -> nicolas 0..5 (= 35..40), 10..15 -> theo.
        let got: Vec<usize> = (0..15).map(|j| smil_sound_position(j, 15, 105)).collect();
        let want: Vec<usize> = (0..5).chain(35..40).chain(70..75).collect();
        assert_eq!(got, want);
        assert!((0..105).all(|j| smil_sound_position(j, 105, 105) == j));
        assert!(check_p(14, 105).is_err() && check_p(108, 105).is_err() && check_p(0, 105).is_ok());
    }

    /// The rule, applied to the MNIST labels, reproduces the kit's smil_split.json exactly,
    /// and is deterministic; the JSON round-trips.
    #[test]
    fn rule_reproduces_kit_json() {
        let (tl, sl) = labels();
        let rule = smil_split_from_rule(&tl, &sl).unwrap();
        assert_eq!(rule, kit_split());
        assert_eq!(rule, smil_split_from_rule(&tl, &sl).unwrap());
        rule.validate(Path::new("rule")).unwrap();
        let again = SmilSplit::from_json(&rule.to_json(), Path::new("roundtrip")).unwrap();
        assert_eq!(again, rule);
        // README: all train pool indices <= 11087; sorted-name order.
        assert_eq!(
            rule.classes.iter().flat_map(|c| &c.train_images).max(),
            Some(&11087)
        );
        assert_eq!(&rule.classes[0].train_images[..4], &[1, 1000, 10005, 10010]);
    }

    /// Labels agree within every pair, train and test are disjoint, and the kit's
    /// example_p15 (digit 0) equals pairing_for(0, 15); counts at p = 15 are 150 / 900 / 450.
    #[test]
    fn pairing_counts_labels_and_disjointness() {
        let s = kit_split();
        let (tl, sl) = labels();
        let text = std::fs::read_to_string(data_dir().join("avmnist/smil_split.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let (mut paired, mut image_only, mut test, mut examples) = (0, 0, 0, 0);
        let mut train_sounds = HashSet::new();
        let mut test_sounds = HashSet::new();
        for d in 0..10 {
            let pairs = s.pairing_for(d, 15).unwrap();
            // The kit spells out p = 15 for digit 0 only.
            if let Some(ex) = json["example_p15"].get(d.to_string()) {
                let img: Vec<usize> =
                    serde_json::from_value(ex["paired_mnist_train_index"].clone()).unwrap();
                let snd: Vec<String> = serde_json::from_value(ex["paired_fsdd"].clone()).unwrap();
                assert_eq!(
                    pairs,
                    img.into_iter().zip(snd).collect::<Vec<_>>(),
                    "digit {d}"
                );
                assert_eq!(ex["image_only_count"], 90);
                examples += 1;
            }
            assert_eq!(s.image_only_for(d, 15).unwrap().len(), 90);
            paired += pairs.len();
            image_only += s.image_only_for(d, 15).unwrap().len();
            for (i, name) in s.pairing_for(d, 105).unwrap() {
                assert_eq!(tl[i] as usize, d);
                assert_eq!(parse_fsdd_name(&name).unwrap().0 as usize, d);
                train_sounds.insert(name);
            }
            for which in [TestSet::Last45, TestSet::First45] {
                for (i, name) in s.test_pairs(d, which).unwrap() {
                    assert_eq!(sl[i] as usize, d);
                    assert_eq!(parse_fsdd_name(&name).unwrap().0 as usize, d);
                    test_sounds.insert(name);
                }
            }
            test += s.test_pairs(d, TestSet::Last45).unwrap().len();
            // Mirror: p paired + unpaired sounds = all 105 recordings.
            let mut all: Vec<String> = s
                .pairing_for(d, 15)
                .unwrap()
                .into_iter()
                .map(|p| p.1)
                .collect();
            all.extend(s.unpaired_sounds_for(d, 15).unwrap());
            all.sort();
            let mut full = s.train_sounds(d).unwrap();
            full.sort();
            assert_eq!(all, full);
        }
        assert_eq!((paired, image_only, test), (150, 900, 450));
        assert!(examples >= 1, "example_p15 has no class");
        assert_eq!((train_sounds.len(), test_sounds.len()), (1050, 450));
        assert!(train_sounds.is_disjoint(&test_sounds));
        assert!(s.pairing_for(10, 15).is_err());
        let e = s.pairing_for(0, 10).unwrap_err().to_string();
        assert!(e.contains("multiple of 3"), "{e}");
    }

    /// The paper's carve on the kit's split, for the pairs per digit of the four rows
    /// (6 / 15 / 21 / 30): 900 training samples per setting, 150 validation, 450 test; no MNIST
    /// image (train or test split) and no FSDD file shared between training (both settings),
    /// validation and test; validation pairs agree in label; training pairs are SMIL's.
    #[test]
    fn paper_carve_is_disjoint_and_paired_by_label() {
        let s = kit_split();
        let (tl, sl) = labels();
        let carve = ValidationCarve::Paper;
        // By hand: digit 0's validation = images 90..105 with jackson/nicolas/theo 45..49.
        let v0 = s.validation_pairs(0, carve).unwrap();
        let names: Vec<&str> = v0.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names[0], "0_jackson_45.wav");
        assert_eq!(names[5], "0_nicolas_45.wav");
        assert_eq!(names[14], "0_theo_49.wav");
        let imgs: Vec<usize> = v0.iter().map(|(i, _)| *i).collect();
        assert_eq!(imgs, s.classes[0].train_images[90..]);
        for p in [6, 15, 21, 30] {
            let mut train_img = HashSet::new();
            let mut train_snd = HashSet::new();
            let (mut val_img, mut val_snd) = (HashSet::new(), HashSet::new());
            let (mut test_img, mut test_snd) = (HashSet::new(), HashSet::new());
            let (mut n_audio_row, mut n_visual_row, mut n_val) = (0, 0, 0);
            for d in 0..10 {
                let pairs = s.train_pairs(d, p, carve).unwrap();
                assert_eq!(pairs, s.pairing_for(d, p).unwrap());
                let io = s.train_image_only(d, p, carve).unwrap();
                let ao = s.train_audio_only(d, p, carve).unwrap();
                assert_eq!((pairs.len(), io.len(), ao.len()), (p, 90 - p, 90 - p));
                n_audio_row += pairs.len() + io.len();
                n_visual_row += pairs.len() + ao.len();
                for (i, n) in &pairs {
                    assert_eq!(
                        (tl[*i] as usize, parse_fsdd_name(n).unwrap().0 as usize),
                        (d, d)
                    );
                    train_img.insert(("train", *i));
                    train_snd.insert(n.clone());
                }
                train_img.extend(io.iter().map(|i| ("train", *i)));
                for n in &ao {
                    assert_eq!(parse_fsdd_name(n).unwrap().0 as usize, d);
                    train_snd.insert(n.clone());
                }
                for (i, n) in s.validation_pairs(d, carve).unwrap() {
                    let (dd, _, k) = parse_fsdd_name(&n).unwrap();
                    assert_eq!((tl[i] as usize, dd as usize), (d, d), "{n}");
                    assert!((45..50).contains(&k), "{n}");
                    val_img.insert(("train", i));
                    val_snd.insert(n);
                    n_val += 1;
                }
                for (i, n) in s.test_pairs(d, TestSet::Last45).unwrap() {
                    assert_eq!(sl[i] as usize, d);
                    test_img.insert(("test", i));
                    test_snd.insert(n);
                }
            }
            assert_eq!(
                (n_audio_row, n_visual_row, n_val),
                (900, 900, 150),
                "p = {p}"
            );
            assert_eq!((test_img.len(), test_snd.len()), (450, 450));
            assert_eq!((val_img.len(), val_snd.len()), (150, 150));
            // Training uses 90 images and 90 recordings per digit across the two rows.
            assert_eq!((train_img.len(), train_snd.len()), (900, 900));
            for (a, b) in [
                (&train_img, &val_img),
                (&train_img, &test_img),
                (&val_img, &test_img),
            ] {
                assert!(a.is_disjoint(b), "p = {p}: an MNIST image is shared");
            }
            for (a, b) in [
                (&train_snd, &val_snd),
                (&train_snd, &test_snd),
                (&val_snd, &test_snd),
            ] {
                assert!(a.is_disjoint(b), "p = {p}: an FSDD file is shared");
            }
            assert!(
                train_snd
                    .iter()
                    .all(|n| (15..45).contains(&parse_fsdd_name(n).unwrap().2))
            );
        }
        // Without carve: SMIL's pool and no validation.
        let none = ValidationCarve::None;
        assert!(s.validation_pairs(3, none).unwrap().is_empty());
        assert_eq!(
            s.train_image_only(3, 15, none).unwrap(),
            s.image_only_for(3, 15).unwrap()
        );
        assert_eq!(
            s.train_audio_only(3, 15, none).unwrap(),
            s.unpaired_sounds_for(3, 15).unwrap()
        );
        let e = s.train_pairs(0, 93, carve).unwrap_err().to_string();
        assert!(e.contains("0..=90"), "{e}");
        assert!(s.train_pairs(0, 93, none).is_ok());
    }

    #[test]
    fn bad_split_files_are_reported() {
        let t = TempDir::new("split_bad");
        let good = smil_split_from_rule(&labels().0, &labels().1).unwrap();
        let mut bad = good.clone();
        bad.classes[3].train_sounds[1][0] = "3_nicolas_2.wav".into();
        let cases = [
            ("garbage.json", "{not json".to_string(), "not a SMIL split"),
            (
                "short.json",
                good.to_json().replace("\"9\"", "\"x\""),
                "no class \"9\"",
            ),
            ("leak.json", bad.to_json(), "3_nicolas_2.wav"),
        ];
        for (name, text, want) in cases {
            let p = t.write(name, text.as_bytes());
            let e = SmilSplit::load(&p).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(want), "{name}: {e}");
        }
        let e = SmilSplit::load(&t.path().join("none.json")).unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }));
        assert!(smil_split_from_rule(&[0, 1, 2], &[0]).is_err());
        assert!(
            smil_split_from_rule(&[11], &[])
                .unwrap_err()
                .to_string()
                .contains("label 11")
        );
    }
}
