//! The AV-MNIST dataset of SMIL/MCKD: 1,050 train and 450 test (image, sound) samples, and
//! the missing-modality training settings built from them.
//!
//! # Layout and the choice of API
//!
//! [`AvMnist::train`] holds, per digit `d` (class-major), the 105 train-pool images in SMIL
//! order, position `pos = j`, each paired with sound `j` of the *full-pool* list
//! `jackson[15..50] + nicolas[15..50] + theo[15..50]`, i.e. SMIL's pairing for
//! `per_class_num = 105` (the UpperB setting). So `train` contains every train image and every
//! train recording exactly once, and `train[d * 105 + i].audio` is full-pool sound `i`.
//!
//! SMIL's pairing for `p < 105` is *not* a prefix of that list (image `j` is paired with
//! element `j` of `jackson[:p/3] + nicolas[:p/3] + theo[:p/3]`), so callers must not take
//! `pos < p` from `train`; they build a setting with:
//!
//! * (a) [`AvMnist::missing_audio`]`(p)`: per digit the `p` SMIL pairs (both modalities) and
//!   images `p..105` image-only ([`ImageSample`], the audio is not even carried);
//! * (b) [`AvMnist::missing_visual`]`(p)`: the same `p` pairs and the `105 - p` recordings
//!   SMIL leaves unpaired (`speaker[p/3..35]`), audio-only ([`AudioSample`]); all 1,050
//!   train recordings are then present, only `p` images per digit;
//! * (c) [`AvMnist::paired_train`]`(105)` (equal to `train`): the full paired set.
//!
//! The paper's 60 / 10 / 30 split (900 / 150 / 450) takes a meta-validation set out of the
//! pool first ([`ValidationCarve::Paper`], rule in [`crate::split`]'s module doc):
//! [`AvMnist::validation`] gives its 150 paired samples, and
//! [`AvMnist::missing_audio_carved`] / [`AvMnist::missing_visual_carved`] /
//! [`AvMnist::paired_train_carved`] build the settings above from the remaining 90 per digit
//! (the same SMIL pairs; `p` at most 90). The methods without `_carved` are
//! [`ValidationCarve::None`].
//!
//! [`AvMnist::paired_train`]`(p)` gives the `p` SMIL pairs per digit alone. `p` must be a
//! multiple of 3 in `0..=105` (SMIL's lists misalign otherwise). The test set is
//! [`AvMnist::test`], 45 pairs per digit (`TestSet::Last45` unless chosen otherwise); a
//! missing-audio evaluation feeds only its images, a missing-visual one only its audio.
//!
//! # Shapes
//! image: `[784]` = `[28][28]` row-major, `(x / 255 - 0.5) / 0.5` in `[-1, 1]`;
//! audio: `[400]` = `[20 coefficients][20 frames]` row-major, `(m - 0.5) / 0.5` (no other
//! normalisation; values roughly -1190..170).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::idx::{IdxImages, read_idx_images, read_idx_labels};
use crate::mfcc::{MAX_FRAMES, Mfcc, N_MFCC, smil_mfcc, smil_mfcc_frames};
use crate::split::{
    CarveLayout, NUM_CLASSES, SmilSplit, TestSet, ValidationCarve, parse_fsdd_name,
    smil_split_from_rule,
};
use crate::wav::read_wav;

/// Image side in pixels.
pub const IMAGE_SIDE: usize = 28;
/// Image length (`28 * 28`).
pub const IMAGE_LEN: usize = IMAGE_SIDE * IMAGE_SIDE;
/// Audio feature length (`20 * 20`).
pub const AUDIO_LEN: usize = N_MFCC * MAX_FRAMES;
/// Sampling rate FSDD recordings must have.
pub const FSDD_SAMPLE_RATE: u32 = 8000;

/// One sample with both modalities.
#[derive(Clone, Debug, PartialEq)]
pub struct AvSample {
    /// `[784]` image, row-major 28x28, `(x / 255 - 0.5) / 0.5`.
    pub image: Vec<f32>,
    /// `[400]` MFCC, `[coef][frame]` 20x20, `(m - 0.5) / 0.5`.
    pub audio: Vec<f32>,
    /// Digit 0..9.
    pub label: u8,
    /// Image position within its digit's train pool (0..105), or test position (0..45).
    pub pos: usize,
}

/// An image without its sound (missing-audio setting).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSample {
    /// `[784]` normalised image.
    pub image: Vec<f32>,
    /// Digit 0..9.
    pub label: u8,
    /// Image position within its digit's train pool.
    pub pos: usize,
}

/// A sound without its image (missing-visual setting).
#[derive(Clone, Debug, PartialEq)]
pub struct AudioSample {
    /// `[400]` normalised MFCC.
    pub audio: Vec<f32>,
    /// Digit 0..9.
    pub label: u8,
    /// Position in the digit's full-pool sound list `jackson + nicolas + theo` (0..105).
    pub pos: usize,
}

/// Setting (a): audio missing for most training samples.
#[derive(Clone, Debug, PartialEq)]
pub struct MissingAudio {
    /// Paired samples per digit.
    pub p: usize,
    /// `10 * p` SMIL pairs, class-major.
    pub paired: Vec<AvSample>,
    /// `10 * (pool - p)` images without sound, class-major, `pos` p..pool.
    pub image_only: Vec<ImageSample>,
}

/// Setting (b): images missing for most training samples (mirror of [`MissingAudio`]).
#[derive(Clone, Debug, PartialEq)]
pub struct MissingVisual {
    /// Paired samples per digit.
    pub p: usize,
    /// `10 * p` SMIL pairs, class-major (same as [`MissingAudio::paired`]).
    pub paired: Vec<AvSample>,
    /// `10 * (pool - p)` recordings SMIL leaves unpaired at `p`, class-major.
    pub audio_only: Vec<AudioSample>,
}

/// The AV-MNIST dataset; see the module doc for the layout.
#[derive(Clone, Debug, PartialEq)]
pub struct AvMnist {
    /// `10 * pool` samples (1,050 for SMIL), class-major, full-pool pairing, `pos` 0..pool.
    pub train: Vec<AvSample>,
    /// `10 * 45` test pairs, class-major, `pos` 0..45.
    pub test: Vec<AvSample>,
}

/// `(x / 255 - 0.5) / 0.5` for every pixel byte.
pub fn normalise_image(pixels: &[u8]) -> Vec<f32> {
    pixels
        .iter()
        .map(|&x| (f32::from(x) / 255.0 - 0.5) / 0.5)
        .collect()
}

/// `(m - 0.5) / 0.5`, flattened `[coef][frame]` -> `[400]`.
pub fn normalise_mfcc(m: &Mfcc) -> Vec<f32> {
    m.iter().flatten().map(|&v| (v - 0.5) / 0.5).collect()
}

impl AvMnist {
    /// Per-digit pool size of `train`, after checking the documented invariants (class-major,
    /// equal pool per digit, a multiple of 3, `pos` 0..pool, vector lengths).
    pub fn pool_per_class(&self) -> Result<usize> {
        let bad = |msg: String| Err(DataError::invalid(format!("AvMnist.train: {msg}")));
        if self.train.is_empty() || !self.train.len().is_multiple_of(NUM_CLASSES) {
            return bad(format!(
                "{} samples, not a positive multiple of 10",
                self.train.len()
            ));
        }
        let pool = self.train.len() / NUM_CLASSES;
        if !pool.is_multiple_of(3) {
            return bad(format!("{pool} per digit, not a multiple of 3"));
        }
        for (i, s) in self.train.iter().enumerate() {
            if s.label as usize != i / pool || s.pos != i % pool {
                return bad(format!(
                    "sample {i} has label {} pos {}, expected class-major label {} pos {}",
                    s.label,
                    s.pos,
                    i / pool,
                    i % pool
                ));
            }
            if s.image.len() != IMAGE_LEN || s.audio.len() != AUDIO_LEN {
                return bad(format!(
                    "sample {i} has image/audio lengths {}/{}, expected {IMAGE_LEN}/{AUDIO_LEN}",
                    s.image.len(),
                    s.audio.len()
                ));
            }
        }
        Ok(pool)
    }

    /// SMIL's `p` pairs per digit (class-major, `pos` = image position `j < p`): image `j`
    /// with sound `j` of `jackson[:p/3] + nicolas[:p/3] + theo[:p/3]`. `p = pool` gives
    /// `train` itself (setting (c)).
    pub fn paired_train(&self, p: usize) -> Result<Vec<AvSample>> {
        self.paired_train_carved(p, ValidationCarve::None)
    }

    /// Setting (a): [`AvMnist::paired_train`]`(p)` plus images `p..pool` of each digit
    /// without sound.
    pub fn missing_audio(&self, p: usize) -> Result<MissingAudio> {
        self.missing_audio_carved(p, ValidationCarve::None)
    }

    /// Setting (b): [`AvMnist::paired_train`]`(p)` plus, per digit, the `pool - p` recordings
    /// SMIL's pairing leaves unused (`speaker[p/3..pool/3]` for each speaker) without image.
    pub fn missing_visual(&self, p: usize) -> Result<MissingVisual> {
        self.missing_visual_carved(p, ValidationCarve::None)
    }

    /// The carve's positions for this dataset's pool (see [`crate::split`]'s module doc);
    /// the paper's carve needs a pool that is a multiple of 21 (105 for the real data).
    pub fn carve_layout(&self, carve: ValidationCarve) -> Result<CarveLayout> {
        carve.layout(self.pool_per_class()?)
    }

    /// SMIL's `p` training pairs per digit under `carve` (the same pairs with or without the
    /// carve; `p` at most the training samples per digit, 90 of 105 with the paper's carve).
    pub fn paired_train_carved(&self, p: usize, carve: ValidationCarve) -> Result<Vec<AvSample>> {
        let l = self.carve_layout(carve)?;
        l.check_p(p)?;
        let mut out = Vec::with_capacity(NUM_CLASSES * p);
        for d in 0..NUM_CLASSES {
            let base = d * l.pool;
            for j in 0..p {
                let sound = &self.train[base + l.train_sound(j, p)];
                let img = &self.train[base + j];
                out.push(AvSample {
                    image: img.image.clone(),
                    audio: sound.audio.clone(),
                    label: img.label,
                    pos: j,
                });
            }
        }
        Ok(out)
    }

    /// Setting (a) under `carve`: [`AvMnist::paired_train_carved`] plus, per digit, the
    /// training images `p..train_per_class` without sound (`pos` = image position). With the
    /// paper's carve: `10 p` paired + `10 (90 - p)` image-only = 900 training samples.
    pub fn missing_audio_carved(&self, p: usize, carve: ValidationCarve) -> Result<MissingAudio> {
        let paired = self.paired_train_carved(p, carve)?;
        let l = self.carve_layout(carve)?;
        let image_only = self
            .train
            .iter()
            .filter(|s| (p..l.train_per_class()).contains(&s.pos))
            .map(|s| ImageSample {
                image: s.image.clone(),
                label: s.label,
                pos: s.pos,
            })
            .collect::<Vec<_>>();
        debug_assert_eq!(image_only.len(), NUM_CLASSES * (l.train_per_class() - p));
        Ok(MissingAudio {
            p,
            paired,
            image_only,
        })
    }

    /// Setting (b) under `carve`: [`AvMnist::paired_train_carved`] plus, per digit, the
    /// training recordings no pair uses (`speaker[p/3..]` up to the carve) without image
    /// (`pos` = full-pool sound position). With the paper's carve: `10 p` paired +
    /// `10 (90 - p)` audio-only = 900 training samples.
    pub fn missing_visual_carved(&self, p: usize, carve: ValidationCarve) -> Result<MissingVisual> {
        let paired = self.paired_train_carved(p, carve)?;
        let l = self.carve_layout(carve)?;
        let unpaired = l.audio_only_sounds(p);
        let mut audio_only = Vec::with_capacity(NUM_CLASSES * unpaired.len());
        for d in 0..NUM_CLASSES {
            for &i in &unpaired {
                let s = &self.train[d * l.pool + i];
                audio_only.push(AudioSample {
                    audio: s.audio.clone(),
                    label: s.label,
                    pos: s.pos,
                });
            }
        }
        Ok(MissingVisual {
            p,
            paired,
            audio_only,
        })
    }

    /// The meta-validation set D_v under `carve`, both modalities, class-major: empty for
    /// [`ValidationCarve::None`]; with the paper's carve 15 per digit (150): image `90 + v`
    /// (`pos` = 90 + v) with the `v`-th of each speaker's last 5 train recordings
    /// (`jackson[30..35] + nicolas[30..35] + theo[30..35]`). Disjoint from every training
    /// setting built with the same carve and from `test`.
    pub fn validation(&self, carve: ValidationCarve) -> Result<Vec<AvSample>> {
        let l = self.carve_layout(carve)?;
        let mut out = Vec::with_capacity(NUM_CLASSES * l.validation_per_class());
        for d in 0..NUM_CLASSES {
            let base = d * l.pool;
            for (v, i) in l.validation_images().enumerate() {
                let img = &self.train[base + i];
                out.push(AvSample {
                    image: img.image.clone(),
                    audio: self.train[base + l.validation_sound(v)].audio.clone(),
                    label: img.label,
                    pos: i,
                });
            }
        }
        Ok(out)
    }

    /// Deterministic synthetic stand-in with the same layout (for smoke tests without the
    /// kit): `pool_per_class` train and `test_per_class` test samples per digit; each digit
    /// has a fixed random image and audio prototype, samples add noise (values in `[-1, 1]`).
    /// Same `seed`, same data. Errors unless `pool_per_class` is a positive multiple of 3.
    pub fn synthetic(pool_per_class: usize, test_per_class: usize, seed: u64) -> Result<AvMnist> {
        if pool_per_class == 0 || !pool_per_class.is_multiple_of(3) {
            return Err(DataError::invalid(format!(
                "synthetic pool_per_class {pool_per_class} must be a positive multiple of 3"
            )));
        }
        let mut state = seed;
        let mut next = move || {
            // splitmix64 -> uniform [-1, 1)
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let protos: Vec<(Vec<f32>, Vec<f32>)> = (0..NUM_CLASSES)
            .map(|_| {
                let img = (0..IMAGE_LEN).map(|_| next()).collect();
                let aud = (0..AUDIO_LEN).map(|_| next()).collect();
                (img, aud)
            })
            .collect();
        let mut make = |n: usize| {
            let mut v = Vec::with_capacity(NUM_CLASSES * n);
            for (d, (img, aud)) in protos.iter().enumerate() {
                for pos in 0..n {
                    let mut noisy = |p: &Vec<f32>| -> Vec<f32> {
                        p.iter()
                            .map(|&x| (0.7 * x + 0.3 * next()).clamp(-1.0, 1.0))
                            .collect()
                    };
                    v.push(AvSample {
                        image: noisy(img),
                        audio: noisy(aud),
                        label: d as u8,
                        pos,
                    });
                }
            }
            v
        };
        let train = make(pool_per_class);
        let test = make(test_per_class);
        Ok(AvMnist { train, test })
    }
}

/// Paths of the kit under a data folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KitPaths {
    /// `data_dir/avmnist`.
    pub root: PathBuf,
    /// `root/mnist`.
    pub mnist: PathBuf,
    /// `root/fsdd`.
    pub fsdd: PathBuf,
}

impl KitPaths {
    /// Paths under `data_dir` (the folder that contains `avmnist/`), without checking.
    pub fn new(data_dir: &Path) -> Self {
        let root = data_dir.join("avmnist");
        KitPaths {
            mnist: root.join("mnist"),
            fsdd: root.join("fsdd"),
            root,
        }
    }

    /// Paths under `data_dir`, checking that `avmnist/mnist` and `avmnist/fsdd` exist;
    /// [`DataError::Layout`] with a hint otherwise.
    pub fn checked(data_dir: &Path) -> Result<Self> {
        let k = Self::new(data_dir);
        if k.mnist.is_dir() && k.fsdd.is_dir() {
            return Ok(k);
        }
        let hint = if data_dir.join("mnist").is_dir() && data_dir.join("fsdd").is_dir() {
            format!(
                "this looks like the avmnist folder itself; pass its parent {} instead",
                data_dir.parent().unwrap_or(Path::new("..")).display()
            )
        } else {
            "pass --data-dir (or set MCKD_DATA_DIR) to the folder that contains \
             avmnist/mnist/*-ubyte.gz and avmnist/fsdd/*.wav"
                .to_string()
        };
        Err(DataError::Layout {
            dir: data_dir.to_path_buf(),
            msg: format!(
                "no {} and {} folders; {hint}",
                k.mnist.display(),
                k.fsdd.display()
            ),
        })
    }
}

/// Load the dataset from `data_dir` (the folder that contains `avmnist/`, e.g.
/// `$MCKD_DATA_DIR`) with the default test set ([`TestSet::Last45`]).
///
/// The split is read from `split_file` if given, else from `data_dir/avmnist/smil_split.json`
/// if present, else rebuilt from the MNIST labels with [`smil_split_from_rule`] (same lists).
/// Computes the 1,500 MFCCs (multi-threaded).
pub fn load_avmnist(data_dir: &Path, split_file: Option<&Path>) -> Result<AvMnist> {
    let kit = KitPaths::checked(data_dir)?;
    let default_split = kit.root.join("smil_split.json");
    let split = match split_file {
        Some(p) => SmilSplit::load(p)?,
        None if default_split.is_file() => SmilSplit::load(&default_split)?,
        None => smil_split_from_rule(
            &read_idx_labels(&kit.mnist.join("train-labels-idx1-ubyte.gz"))?,
            &read_idx_labels(&kit.mnist.join("t10k-labels-idx1-ubyte.gz"))?,
        )?,
    };
    load_avmnist_with(data_dir, &split, TestSet::Last45)
}

/// Normalised image `index` of `images`, checking its label is `digit`.
fn image_of(
    images: &IdxImages,
    labels: &[u8],
    index: usize,
    digit: usize,
    files: (&Path, &Path),
) -> Result<Vec<f32>> {
    if images.count != labels.len() {
        return Err(DataError::format(
            files.1,
            format!(
                "{} labels but {} has {} images",
                labels.len(),
                files.0.display(),
                images.count
            ),
        ));
    }
    if (images.rows, images.cols) != (IMAGE_SIDE, IMAGE_SIDE) {
        return Err(DataError::format(
            files.0,
            format!("images are {}x{}, expected 28x28", images.rows, images.cols),
        ));
    }
    let Some(px) = images.image(index) else {
        return Err(DataError::format(
            files.0,
            format!(
                "split asks for image {index} but the file has {}",
                images.count
            ),
        ));
    };
    if labels[index] as usize != digit {
        return Err(DataError::format(
            files.1,
            format!(
                "image {index} has label {}, the split puts it in digit {digit}",
                labels[index]
            ),
        ));
    }
    Ok(normalise_image(px))
}

/// Read one recording and compute its SMIL MFCC, checking rate and frame count.
fn mfcc_of(path: &Path) -> Result<Mfcc> {
    let w = read_wav(path)?;
    if w.sample_rate != FSDD_SAMPLE_RATE {
        return Err(DataError::format(
            path,
            format!(
                "sample rate {} Hz, expected {FSDD_SAMPLE_RATE}",
                w.sample_rate
            ),
        ));
    }
    let frames = smil_mfcc_frames(w.samples.len());
    if frames > MAX_FRAMES {
        return Err(DataError::format(
            path,
            format!(
                "{} samples give {frames} MFCC frames, more than SMIL's {MAX_FRAMES}",
                w.samples.len()
            ),
        ));
    }
    Ok(smil_mfcc(&w.samples))
}

/// MFCCs of `paths`, in order, on rayon's thread pool. Each file is computed independently by
/// the same code, so the values are bit-identical to a serial map; the results are gathered in
/// input order and the first failing file *in that order* is reported (rayon's own
/// `Result` collect would return an arbitrary one of several errors).
fn mfccs_parallel(paths: &[PathBuf]) -> Result<Vec<Mfcc>> {
    let each: Vec<Result<Mfcc>> = paths.par_iter().map(|p| mfcc_of(p)).collect();
    each.into_iter().collect()
}

/// Load with an explicit split and test set. See [`load_avmnist`].
///
/// Checks before any decoding that every recording the split names exists, then that each
/// image's MNIST label and each sound's leading digit equal the split's digit. With the
/// environment variable `MCKD_DATA_TIMING` set, prints the load timings to stderr.
pub fn load_avmnist_with(data_dir: &Path, split: &SmilSplit, test_set: TestSet) -> Result<AvMnist> {
    let t0 = Instant::now();
    let kit = KitPaths::checked(data_dir)?;
    split.validate(Path::new("<split given to load_avmnist_with>"))?;
    // Sound list: train (full pool) then test, class-major.
    let mut sounds: Vec<(usize, String)> = Vec::with_capacity(1500);
    for d in 0..NUM_CLASSES {
        sounds.extend(split.train_sounds(d)?.into_iter().map(|s| (d, s)));
    }
    for d in 0..NUM_CLASSES {
        sounds.extend(
            split
                .test_pairs(d, test_set)?
                .into_iter()
                .map(|(_, s)| (d, s)),
        );
    }
    let mut seen = HashSet::new();
    let mut paths = Vec::with_capacity(sounds.len());
    let mut missing = Vec::new();
    for (d, name) in &sounds {
        let path = kit.fsdd.join(name);
        if parse_fsdd_name(name).map(|n| n.0 as usize) != Some(*d) || !seen.insert(name) {
            return Err(DataError::format(
                &path,
                format!("bad or repeated sound for digit {d}"),
            ));
        }
        if !path.is_file() {
            missing.push(name.as_str());
        }
        paths.push(path);
    }
    match missing[..] {
        [] => {}
        [one] => {
            return Err(DataError::Missing {
                path: kit.fsdd.join(one),
            });
        }
        [..] => {
            let more = missing.len().saturating_sub(5);
            return Err(DataError::Layout {
                dir: kit.fsdd.clone(),
                msg: format!(
                    "{} of the {} recordings the split names are missing: {}{}",
                    missing.len(),
                    paths.len(),
                    missing[..missing.len().min(5)].join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ),
            });
        }
    }

    let f = |n: &str| kit.mnist.join(n);
    let (tri, trl) = (
        f("train-images-idx3-ubyte.gz"),
        f("train-labels-idx1-ubyte.gz"),
    );
    let (tei, tel) = (
        f("t10k-images-idx3-ubyte.gz"),
        f("t10k-labels-idx1-ubyte.gz"),
    );
    let train_labels = read_idx_labels(&trl)?;
    let test_labels = read_idx_labels(&tel)?;
    let train_images = read_idx_images(&tri)?;
    let test_images = read_idx_images(&tei)?;
    let t_mnist = t0.elapsed();
    let mfccs = mfccs_parallel(&paths)?;
    let t_mfcc = t0.elapsed();
    let mut audio = mfccs.iter().map(normalise_mfcc);

    let mut train = Vec::with_capacity(sounds.len());
    for d in 0..NUM_CLASSES {
        for (pos, &i) in split.classes[d].train_images.iter().enumerate() {
            train.push(AvSample {
                image: image_of(&train_images, &train_labels, i, d, (&tri, &trl))?,
                audio: audio.next().expect("one MFCC per sound"),
                label: d as u8,
                pos,
            });
        }
    }
    let mut test = Vec::new();
    for d in 0..NUM_CLASSES {
        for (pos, (i, _)) in split.test_pairs(d, test_set)?.into_iter().enumerate() {
            test.push(AvSample {
                image: image_of(&test_images, &test_labels, i, d, (&tei, &tel))?,
                audio: audio.next().expect("one MFCC per sound"),
                label: d as u8,
                pos,
            });
        }
    }
    if std::env::var_os("MCKD_DATA_TIMING").is_some() {
        eprintln!(
            "load_avmnist: MNIST {t_mnist:?}, {} MFCCs {:?}, total {:?}",
            paths.len(),
            t_mfcc - t_mnist,
            t0.elapsed()
        );
    }
    Ok(AvMnist { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TempDir, data_dir, reference_json};
    use std::sync::OnceLock;

    fn loaded() -> &'static AvMnist {
        static DATA: OnceLock<AvMnist> = OnceLock::new();
        DATA.get_or_init(|| {
            let t = Instant::now();
            let d = load_avmnist(&data_dir(), None).unwrap();
            eprintln!("load_avmnist (full, incl. 1,500 MFCCs): {:?}", t.elapsed());
            d
        })
    }

    /// Sizes, class-major order, value ranges, and spot checks against the raw files and the
    /// reference MFCC of 0_jackson_0 (test sample 0 of digit 0).
    #[test]
    fn full_load_layout_and_values() {
        let av = loaded();
        assert_eq!((av.train.len(), av.test.len()), (1050, 450));
        assert_eq!(av.pool_per_class().unwrap(), 105);
        for (i, s) in av.test.iter().enumerate() {
            assert_eq!((s.label as usize, s.pos), (i / 45, i % 45));
        }
        for s in av.train.iter().chain(&av.test) {
            assert_eq!((s.image.len(), s.audio.len()), (784, 400));
            assert!(s.image.iter().all(|v| (-1.0..=1.0).contains(v)));
        }
        // train[0] = MNIST train image 1 (a zero), test[0] = MNIST test image 9621.
        let m = data_dir().join("avmnist/mnist");
        let ti = read_idx_images(&m.join("train-images-idx3-ubyte.gz")).unwrap();
        assert_eq!(av.train[0].image, normalise_image(ti.image(1).unwrap()));
        let si = read_idx_images(&m.join("t10k-images-idx3-ubyte.gz")).unwrap();
        assert_eq!(av.test[0].image, normalise_image(si.image(9621).unwrap()));
        // Sound of train[35] is 0_nicolas_15; test[0] is 0_jackson_0.
        let fsdd = data_dir().join("avmnist/fsdd");
        let nic = normalise_mfcc(&smil_mfcc(
            &read_wav(&fsdd.join("0_nicolas_15.wav")).unwrap().samples,
        ));
        assert_eq!(av.train[35].audio, nic);
        let want = &reference_json()["references"][0];
        assert_eq!(want["file"], "fsdd/0_jackson_0.wav");
        for (k, row) in want["mfcc_librosa070_float32"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            for (t, v) in row.as_array().unwrap().iter().enumerate() {
                let expected = (v.as_f64().unwrap() - 0.5) / 0.5;
                let got = av.test[0].audio[k * 20 + t] as f64;
                assert!(
                    (got - expected).abs() < 2e-3,
                    "[{k}][{t}] {got} vs {expected}"
                );
            }
        }
    }

    /// p = 15: 150 paired + 900 single-modality per setting (+ 450 test); SMIL pairing, not a
    /// prefix of the full pool; p = 105 gives `train`; bad p rejected.
    #[test]
    fn missing_modality_settings() {
        let av = loaded();
        let a = av.missing_audio(15).unwrap();
        assert_eq!(
            (a.paired.len(), a.image_only.len(), av.test.len()),
            (150, 900, 450)
        );
        let b = av.missing_visual(15).unwrap();
        assert_eq!((b.paired.len(), b.audio_only.len()), (150, 900));
        assert_eq!(a.paired, b.paired);
        for (i, s) in a.paired.iter().enumerate() {
            assert_eq!((s.label as usize, s.pos), (i / 15, i % 15));
        }
        // Digit 1, image 5 is paired with 1_nicolas_15 = full-pool position 35.
        assert_eq!(a.paired[15 + 5].audio, av.train[105 + 35].audio);
        assert_eq!(a.paired[15 + 5].image, av.train[105 + 5].image);
        assert!(a.image_only.iter().all(|s| s.pos >= 15 && s.pos < 105));
        // Mirror: every train recording appears exactly once across paired + audio_only.
        let mut all: Vec<&Vec<f32>> = b.paired.iter().map(|s| &s.audio).collect();
        all.extend(b.audio_only.iter().map(|s| &s.audio));
        assert_eq!(all.len(), 1050);
        for t in &av.train {
            assert_eq!(all.iter().filter(|a| ***a == t.audio).count(), 1);
        }
        assert_eq!(av.paired_train(105).unwrap(), av.train);
        assert_eq!(av.missing_audio(0).unwrap().image_only.len(), 1050);
        for p in [1, 16, 108] {
            let e = av.missing_audio(p).unwrap_err().to_string();
            assert!(e.contains("multiple of 3"), "{e}");
        }
    }

    /// The parallel MFCC map equals the serial one bit for bit and in order, and reports the
    /// first bad file in input order.
    #[test]
    fn parallel_mfccs_are_bit_identical_and_ordered() {
        let fsdd = data_dir().join("avmnist/fsdd");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&fsdd)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("_theo_"))
            .collect();
        paths.sort();
        paths.truncate(150);
        let par = mfccs_parallel(&paths).unwrap();
        let bits = |m: &Mfcc| m.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (p, m) in paths.iter().zip(&par) {
            assert_eq!(bits(m), bits(&mfcc_of(p).unwrap()), "{}", p.display());
        }
        let t = TempDir::new("mfcc_par_bad");
        let bad1 = t.write("a_bad.wav", b"not a wav");
        let bad2 = t.write("b_bad.wav", b"RIFX");
        let mut with_bad = paths[..40].to_vec();
        with_bad.insert(30, bad1);
        with_bad.push(bad2);
        let e = mfccs_parallel(&with_bad).unwrap_err().to_string();
        assert!(e.contains("a_bad.wav"), "{e}");
    }

    /// The paper's 60 / 10 / 30 split on the real data, for the pairs per digit of the four
    /// rows (5 / 10 / 15 / 20 % -> 6 / 15 / 21 / 30, mckd-avmnist's `PercentMapping::Total`):
    /// 900 training samples per setting, 150 validation (15 per digit, both modalities, each
    /// image and recording the split names for it, labels agreeing), 450 test; training pairs
    /// are SMIL's; no image or recording of the validation set is in any training setting or in
    /// the test set (compared by content).
    #[test]
    fn paper_carve_900_150_450() {
        let av = loaded();
        let split = SmilSplit::load(&data_dir().join("avmnist/smil_split.json")).unwrap();
        let m = data_dir().join("avmnist/mnist");
        let images = read_idx_images(&m.join("train-images-idx3-ubyte.gz")).unwrap();
        let labels = read_idx_labels(&m.join("train-labels-idx1-ubyte.gz")).unwrap();
        let fsdd = data_dir().join("avmnist/fsdd");
        let val = av.validation(ValidationCarve::Paper).unwrap();
        assert_eq!(val.len(), 150);
        for (k, s) in val.iter().enumerate() {
            let (d, v) = (k / 15, k % 15);
            assert_eq!((s.label as usize, s.pos), (d, 90 + v));
            let (i, name) = &split.validation_pairs(d, ValidationCarve::Paper).unwrap()[v];
            assert_eq!(labels[*i] as usize, d);
            assert_eq!(s.image, normalise_image(images.image(*i).unwrap()));
            let want = normalise_mfcc(&smil_mfcc(&read_wav(&fsdd.join(name)).unwrap().samples));
            assert_eq!(s.audio, want, "{name}");
            assert!(name.starts_with(&format!("{d}_")));
        }
        assert_eq!(av.test.len(), 450);
        let val_images: Vec<&Vec<f32>> = val.iter().map(|s| &s.image).collect();
        let val_audio: Vec<&Vec<f32>> = val.iter().map(|s| &s.audio).collect();
        for t in &av.test {
            assert!(!val_images.contains(&&t.image) && !val_audio.contains(&&t.audio));
        }
        for p in [6, 15, 21, 30] {
            let a = av.missing_audio_carved(p, ValidationCarve::Paper).unwrap();
            let b = av.missing_visual_carved(p, ValidationCarve::Paper).unwrap();
            assert_eq!((a.paired.len(), a.image_only.len()), (10 * p, 900 - 10 * p));
            assert_eq!((b.paired.len(), b.audio_only.len()), (10 * p, 900 - 10 * p));
            assert_eq!(
                a.paired,
                av.paired_train(p).unwrap(),
                "SMIL's pairs at p = {p}"
            );
            assert_eq!(a.paired, b.paired);
            for d in 0..10u8 {
                assert_eq!(a.paired.iter().filter(|s| s.label == d).count(), p);
                assert_eq!(a.image_only.iter().filter(|s| s.label == d).count(), 90 - p);
                assert_eq!(b.audio_only.iter().filter(|s| s.label == d).count(), 90 - p);
            }
            let train_images = a
                .paired
                .iter()
                .map(|s| &s.image)
                .chain(a.image_only.iter().map(|s| &s.image));
            let train_audio = b
                .paired
                .iter()
                .map(|s| &s.audio)
                .chain(b.audio_only.iter().map(|s| &s.audio));
            let mut n = 0;
            for x in train_images {
                assert!(
                    !val_images.contains(&x),
                    "p = {p}: a validation image trains"
                );
                n += 1;
            }
            for x in train_audio {
                assert!(
                    !val_audio.contains(&x),
                    "p = {p}: a validation recording trains"
                );
                n += 1;
            }
            assert_eq!(n, 1800);
        }
        // Without carve: no validation, the settings as before.
        assert!(av.validation(ValidationCarve::None).unwrap().is_empty());
        assert_eq!(
            av.missing_visual_carved(15, ValidationCarve::None).unwrap(),
            av.missing_visual(15).unwrap()
        );
        let e = av
            .missing_audio_carved(93, ValidationCarve::Paper)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0..=90"), "{e}");
    }

    /// The carve on a synthetic pool of 21 per digit (1 validation recording per speaker),
    /// positions checked by hand; pools that are not a multiple of 21 are refused.
    #[test]
    fn paper_carve_on_synthetic_pools() {
        let a = AvMnist::synthetic(21, 2, 3).unwrap();
        let l = a.carve_layout(ValidationCarve::Paper).unwrap();
        assert_eq!((l.train_per_class(), l.validation_per_class()), (18, 3));
        // Speakers hold full-pool sounds 0..7, 7..14, 14..21; the last of each validates.
        assert_eq!(
            (0..3).map(|v| l.validation_sound(v)).collect::<Vec<_>>(),
            [6, 13, 20]
        );
        assert_eq!(
            l.audio_only_sounds(3),
            [1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 15, 16, 17, 18, 19]
        );
        let val = a.validation(ValidationCarve::Paper).unwrap();
        assert_eq!(val.len(), 30);
        // Digit 1, validation sample 2 = image 20 with full-pool sound 20.
        assert_eq!(val[5].image, a.train[21 + 20].image);
        assert_eq!(val[5].audio, a.train[21 + 20].audio);
        assert_eq!(val[4].audio, a.train[21 + 13].audio);
        let b = a.missing_visual_carved(6, ValidationCarve::Paper).unwrap();
        assert_eq!(b.audio_only.len(), 120);
        assert_eq!(
            b.audio_only[..12].iter().map(|s| s.pos).collect::<Vec<_>>(),
            [2, 3, 4, 5, 9, 10, 11, 12, 16, 17, 18, 19]
        );
        let e = AvMnist::synthetic(9, 3, 4)
            .unwrap()
            .validation(ValidationCarve::Paper)
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiple of 21"), "{e}");
    }

    #[test]
    fn synthetic_is_deterministic_and_valid() {
        let a = AvMnist::synthetic(6, 2, 7).unwrap();
        assert_eq!(a, AvMnist::synthetic(6, 2, 7).unwrap());
        assert_ne!(a, AvMnist::synthetic(6, 2, 8).unwrap());
        assert_eq!((a.train.len(), a.test.len()), (60, 20));
        let b = a.missing_visual(3).unwrap();
        assert_eq!((b.paired.len(), b.audio_only.len()), (30, 30));
        assert!(AvMnist::synthetic(4, 1, 0).is_err());
        let mut broken = a.clone();
        broken.train.swap(0, 10);
        assert!(broken.paired_train(3).is_err());
    }

    /// Wrong layouts and bad files inside a data dir: clear errors naming the file.
    #[cfg(unix)]
    #[test]
    fn bad_data_dirs_are_reported() {
        use std::os::unix::fs::symlink;
        let real = data_dir();
        let t = TempDir::new("avmnist_bad");
        // Empty folder, and the avmnist folder passed instead of its parent.
        let e = load_avmnist(t.path(), None).unwrap_err().to_string();
        assert!(
            e.contains(&t.path().display().to_string()) && e.contains("MCKD_DATA_DIR"),
            "{e}"
        );
        let e = load_avmnist(&real.join("avmnist"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pass its parent"), "{e}");
        // A copy of the kit with one recording missing, then replaced by a stereo file.
        let kit = t.path().join("avmnist");
        std::fs::create_dir_all(kit.join("fsdd")).unwrap();
        symlink(real.join("avmnist/mnist"), kit.join("mnist")).unwrap();
        for entry in std::fs::read_dir(real.join("avmnist/fsdd")).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "3_theo_20.wav" {
                symlink(entry.path(), kit.join("fsdd").join(entry.file_name())).unwrap();
            }
        }
        let split = real.join("avmnist/smil_split.json");
        let e = load_avmnist(t.path(), Some(&split)).unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("3_theo_20.wav"), "{e}");
        std::fs::remove_file(kit.join("fsdd/0_jackson_3.wav")).unwrap();
        let e = load_avmnist(t.path(), Some(&split))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "2 of the 1500 recordings the split names are missing: 3_theo_20.wav, \
                 0_jackson_3.wav"
            ),
            "{e}"
        );
        symlink(
            real.join("avmnist/fsdd/0_jackson_3.wav"),
            kit.join("fsdd/0_jackson_3.wav"),
        )
        .unwrap();
        let stereo = crate::wav::tests::make_wav(1, 2, 16, &[0; 8], None);
        t.write("avmnist/fsdd/3_theo_20.wav", &stereo);
        let e = load_avmnist(t.path(), Some(&split))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("3_theo_20.wav") && e.contains("2 channels"),
            "{e}"
        );
        // A split file naming a missing split.
        let e = load_avmnist(t.path(), Some(&t.path().join("nope.json"))).unwrap_err();
        assert!(e.to_string().contains("nope.json"), "{e}");
    }

    /// Truncated MNIST archive in a data dir (no split file: the rule path reads labels first).
    #[cfg(unix)]
    #[test]
    fn truncated_mnist_in_data_dir_is_reported() {
        use std::os::unix::fs::symlink;
        let real = data_dir();
        let t = TempDir::new("avmnist_trunc");
        let kit = t.path().join("avmnist");
        std::fs::create_dir_all(kit.join("mnist")).unwrap();
        symlink(real.join("avmnist/fsdd"), kit.join("fsdd")).unwrap();
        let labels = std::fs::read(real.join("avmnist/mnist/train-labels-idx1-ubyte.gz")).unwrap();
        t.write(
            "avmnist/mnist/train-labels-idx1-ubyte.gz",
            &labels[..labels.len() - 100],
        );
        let e = load_avmnist(t.path(), None).unwrap_err().to_string();
        assert!(
            e.contains("train-labels-idx1-ubyte.gz") && e.contains("truncated"),
            "{e}"
        );
    }
}
