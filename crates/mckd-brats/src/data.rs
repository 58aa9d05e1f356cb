//! Training and meta-validation crops from loaded cases, as a [`Source`] for the MCKD loop.
//!
//! Sample `i` of a [`CropSource`] is a fresh random crop ([`mckd_volume::random_crop`]: half
//! centred on a tumour voxel, random flips) of case `i mod cases`; the source's length is a
//! number of *virtual* samples, so an "epoch" can be any number of crops. The crop RNG is
//! seeded and advanced in call order, so a run is reproducible for a seed.

use std::sync::{Arc, Mutex};

use burn::prelude::*;
use mckd_train::train::Source;
use mckd_volume::{
    Crop, CropConfig, ForegroundIndex, LabelConvention, LoadedCase, Volume, labels_to_regions,
    random_crop,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::ScaleAugment;
use crate::error::{BratsError, Result};
use crate::model::{BratsBatch, N_MODALITIES, check_spatial};

/// A case ready for cropping: normalised modalities, labels and the tumour-voxel index.
#[derive(Debug)]
pub struct TrainCase {
    /// Case id.
    pub id: String,
    /// Normalised modalities (Flair, T1, T1c, T2).
    pub images: [Volume; 4],
    /// Labels, `[dk, dj, di]` flattened.
    pub labels: Vec<u8>,
    /// Tumour voxels per region.
    pub index: ForegroundIndex,
}

impl TrainCase {
    /// From a loaded case; a case without segmentation is an error naming it.
    pub fn from_loaded(case: LoadedCase, convention: LabelConvention) -> Result<Self> {
        let labels = case.seg.ok_or_else(|| {
            BratsError::Invalid(format!(
                "case {} has no segmentation (<case>_seg.nii.gz) and cannot be used for training",
                case.id
            ))
        })?;
        let index = ForegroundIndex::new(&labels, convention);
        Ok(Self {
            id: case.id,
            images: case.modalities,
            labels,
            index,
        })
    }
}

impl TrainCase {
    /// From a case prepared at another spacing; a case without segmentation is an error.
    pub fn from_prepared(case: mckd_volume::ResampledCase) -> Result<Self> {
        let labels = case.labels.ok_or_else(|| {
            BratsError::Invalid(format!(
                "case {} has no segmentation and cannot be used for training",
                case.id
            ))
        })?;
        let index = ForegroundIndex::new(&labels, case.convention);
        Ok(Self {
            id: case.id,
            images: case.modalities,
            labels,
            index,
        })
    }
}

/// Random crops of a set of cases.
#[derive(Debug)]
pub struct CropSource {
    cases: Vec<Arc<TrainCase>>,
    crop: CropConfig,
    convention: LabelConvention,
    len: usize,
    rng: Mutex<ChaCha8Rng>,
    available: [bool; N_MODALITIES],
    scale: Option<ScaleAugment>,
}

impl CropSource {
    /// A source of `len` virtual samples over `cases` with crops `crop` (size (i, j, k),
    /// multiples of 8), seeded by `seed`.
    pub fn new(
        cases: Vec<Arc<TrainCase>>,
        crop: CropConfig,
        convention: LabelConvention,
        len: usize,
        seed: u64,
    ) -> Result<Self> {
        if cases.is_empty() {
            return Err(BratsError::Invalid(
                "a crop source needs at least one case".into(),
            ));
        }
        check_spatial(dhw(crop.size))?;
        for case in &cases {
            crop.check_fits(case.images[0].dims, Some(&case.id))?;
        }
        Ok(Self {
            cases,
            crop,
            convention,
            len,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            available: [true; N_MODALITIES],
            scale: None,
        })
    }

    /// Scales crops at random: with probability `prob` a crop of `size · s` voxels
    /// (`s` uniform in the range) is resampled to `size` (trilinear for images, nearest for
    /// labels), as the reference's random scaling.
    pub fn with_scale(mut self, scale: Option<ScaleAugment>) -> Self {
        self.scale = scale;
        self
    }

    /// The cases.
    pub fn cases(&self) -> &[Arc<TrainCase>] {
        &self.cases
    }

    /// Spatial size (D, H, W) of the batches.
    pub fn spatial(&self) -> [usize; 3] {
        dhw(self.crop.size)
    }

    /// A batch of crops of the given cases (by index into [`Self::cases`]).
    ///
    /// # Shapes
    /// images `4 × [B, 1, D, H, W]`, targets `[B, 3, D, H, W]`, `(D, H, W) = (sk, sj, si)`.
    pub fn crops(&self, case_indices: &[usize], device: &Device) -> BratsBatch {
        let size = self.crop.size;
        let n = size.iter().product::<usize>();
        let b = case_indices.len();
        let mut images: Vec<Vec<f32>> = (0..N_MODALITIES)
            .map(|_| Vec::with_capacity(b * n))
            .collect();
        let mut targets = Vec::with_capacity(b * 3 * n);
        let mut rng = self.rng.lock().expect("crop RNG lock");
        for &ci in case_indices {
            let case = &self.cases[ci % self.cases.len()];
            let factor = self.scale.and_then(|s| {
                rng.random_bool(s.prob.clamp(0.0, 1.0))
                    .then(|| rng.random_range(s.range[0]..=s.range[1]))
            });
            let dims = case.images[0].dims;
            let cfg = match factor {
                // A scaled crop never exceeds the volume (the crop itself fits, checked in new).
                Some(f) => CropConfig {
                    size: [0, 1, 2].map(|d| {
                        ((size[d] as f64 * f).round() as usize).clamp(1, dims[d].max(size[d]))
                    }),
                    ..self.crop.clone()
                },
                None => self.crop.clone(),
            };
            // Inputs were checked when the cases were loaded and the source was built.
            let mut crop = random_crop(&case.images, &case.labels, &case.index, &cfg, &mut *rng)
                .expect("crop of a validated case");
            if cfg.size != size {
                crop = resize_crop(crop, cfg.size, size, N_MODALITIES);
            }
            for (m, img) in images.iter_mut().enumerate() {
                img.extend_from_slice(&crop.image[m * n..(m + 1) * n]);
            }
            targets.extend(labels_to_regions(&crop.labels, self.convention));
        }
        batch_from_buffers(images, Some(targets), b, dhw(size), device)
    }
}

/// A crop of `from` voxels (i, j, k) resampled to `to`: images trilinearly (sample centres
/// mapped as `(x + 0.5)·from/to − 0.5`, clamped at the edges), labels by the nearest voxel.
pub fn resize_crop(crop: Crop, from: [usize; 3], to: [usize; 3], channels: usize) -> Crop {
    let n_from = from.iter().product::<usize>();
    let n_to = to.iter().product::<usize>();
    // Per axis: for each output index, the two source indices and the weight of the second.
    let taps = |d: usize| -> Vec<(usize, usize, f32)> {
        let ratio = from[d] as f64 / to[d] as f64;
        (0..to[d])
            .map(|x| {
                let c = ((x as f64 + 0.5) * ratio - 0.5).clamp(0.0, (from[d] - 1) as f64);
                let lo = c.floor() as usize;
                let hi = (lo + 1).min(from[d] - 1);
                (lo, hi, (c - lo as f64) as f32)
            })
            .collect()
    };
    let nearest = |d: usize| -> Vec<usize> {
        let ratio = from[d] as f64 / to[d] as f64;
        (0..to[d])
            .map(|x| (((x as f64 + 0.5) * ratio) as usize).min(from[d] - 1))
            .collect()
    };
    let (ti, tj, tk) = (taps(0), taps(1), taps(2));
    let at = |i: usize, j: usize, k: usize| i + from[0] * (j + from[1] * k);
    let mut image = Vec::with_capacity(channels * n_to);
    for c in 0..channels {
        let src = &crop.image[c * n_from..(c + 1) * n_from];
        for &(k0, k1, wk) in &tk {
            for &(j0, j1, wj) in &tj {
                for &(i0, i1, wi) in &ti {
                    let lerp = |a: f32, b: f32, w: f32| a + (b - a) * w;
                    let plane = |k: usize| {
                        lerp(
                            lerp(src[at(i0, j0, k)], src[at(i1, j0, k)], wi),
                            lerp(src[at(i0, j1, k)], src[at(i1, j1, k)], wi),
                            wj,
                        )
                    };
                    image.push(lerp(plane(k0), plane(k1), wk));
                }
            }
        }
    }
    let (ni, nj, nk) = (nearest(0), nearest(1), nearest(2));
    let mut labels = Vec::with_capacity(n_to);
    for &k in &nk {
        for &j in &nj {
            for &i in &ni {
                labels.push(crop.labels[at(i, j, k)]);
            }
        }
    }
    Crop {
        image,
        labels,
        size: to,
        ..crop
    }
}

/// (i, j, k) sizes → (D, H, W) = (k, j, i).
pub fn dhw(ijk: [usize; 3]) -> [usize; 3] {
    [ijk[2], ijk[1], ijk[0]]
}

/// Tensors of a batch from host buffers.
///
/// # Shapes
/// - `images[m]`: `[B, D, H, W]` flattened per modality
/// - `targets`: `[B, 3, D, H, W]` flattened
pub fn batch_from_buffers(
    images: Vec<Vec<f32>>,
    targets: Option<Vec<f32>>,
    b: usize,
    [d, h, w]: [usize; 3],
    device: &Device,
) -> BratsBatch {
    let images = images
        .into_iter()
        .map(|v| Tensor::from_data(TensorData::new(v, [b, 1, d, h, w]), device))
        .collect();
    let targets = targets.map(|t| Tensor::from_data(TensorData::new(t, [b, 3, d, h, w]), device));
    BratsBatch { images, targets }
}

impl Source for CropSource {
    type Batch = BratsBatch;

    fn len(&self) -> usize {
        self.len
    }

    fn available(&self, _i: usize) -> &[bool] {
        &self.available
    }

    fn batch(&self, indices: &[usize], device: &Device) -> BratsBatch {
        self.crops(indices, device)
    }

    fn random_state(&self) -> Vec<u8> {
        let rng = self.rng.lock().expect("crop RNG lock");
        mckd_core::rng::rng_state(&rng).to_vec()
    }

    fn set_random_state(&self, state: &[u8]) -> std::result::Result<(), String> {
        let restored = mckd_core::rng::rng_from_state(state)
            .ok_or_else(|| format!("not a crop generator state ({} bytes)", state.len()))?;
        *self.rng.lock().expect("crop RNG lock") = restored;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mckd_volume::{PhantomConfig, make_phantom};

    pub(crate) fn phantom_case(size: usize, seed: u64) -> TrainCase {
        let p = make_phantom(
            &PhantomConfig {
                size: [size; 3],
                ..Default::default()
            },
            seed,
        )
        .unwrap();
        let images = p
            .modalities
            .map(|v| mckd_volume::normalise_with(&v, mckd_volume::ClipRule::Scaled));
        TrainCase {
            id: format!("p{seed}"),
            index: ForegroundIndex::new(&p.seg, LabelConvention::Brats2018),
            images,
            labels: p.seg,
        }
    }

    #[test]
    fn batches_have_the_documented_shapes_and_are_seeded() {
        let cases = vec![Arc::new(phantom_case(32, 1)), Arc::new(phantom_case(32, 2))];
        let crop = CropConfig {
            size: [24, 16, 8],
            ..Default::default()
        };
        let device = Device::flex();
        let src = CropSource::new(
            cases.clone(),
            crop.clone(),
            LabelConvention::Brats2018,
            10,
            5,
        )
        .unwrap();
        let b = src.batch(&[0, 1, 3], &device);
        assert_eq!(b.images.len(), 4);
        assert_eq!(b.images[2].dims(), [3, 1, 8, 16, 24]);
        assert_eq!(b.targets.as_ref().unwrap().dims(), [3, 3, 8, 16, 24]);
        let again = CropSource::new(cases, crop, LabelConvention::Brats2018, 10, 5).unwrap();
        let b2 = again.batch(&[0, 1, 3], &device);
        assert_eq!(
            mckd_train::to_vec(b.images[2].clone()),
            mckd_train::to_vec(b2.images[2].clone())
        );
        let t = mckd_train::to_vec(b.targets.unwrap());
        assert!(t.iter().all(|&v| v == 0.0 || v == 1.0));
    }

    #[test]
    fn resized_crops_interpolate_a_ramp_and_keep_labels() {
        // A ramp along i (value = i) of 8 voxels resampled to 4: sample centres at
        // (x + 0.5)·2 − 0.5 = 0.5, 2.5, 4.5, 6.5, where the ramp's linear interpolation is
        // exact. Labels take the nearest voxel: floor((x + 0.5)·2) = 1, 3, 5, 7.
        let from = [8, 2, 2];
        let n = 32;
        let image: Vec<f32> = (0..n).map(|v| (v % 8) as f32).collect();
        let labels: Vec<u8> = (0..n).map(|v| (v % 8) as u8).collect();
        let crop = Crop {
            image: image.clone(),
            labels,
            size: from,
            origin: [0; 3],
            flipped: [false; 3],
            centre: None,
        };
        let out = resize_crop(crop, from, [4, 2, 2], 1);
        assert_eq!(&out.image[..4], &[0.5, 2.5, 4.5, 6.5]);
        assert_eq!(&out.labels[..4], &[1, 3, 5, 7]);
        assert_eq!(out.image.len(), 16);
        // Up-sampling 2 → 4: centres at (x + 0.5)/2 − 0.5 = −0.25 (clamped to 0), 0.25, 0.75,
        // 1.25 (clamped to 1): values 0, 0.25, 0.75, 1 of a ramp 0, 1.
        let crop = Crop {
            image: vec![0.0, 1.0],
            labels: vec![0, 4],
            size: [2, 1, 1],
            origin: [0; 3],
            flipped: [false; 3],
            centre: None,
        };
        let out = resize_crop(crop, [2, 1, 1], [4, 1, 1], 1);
        assert_eq!(out.image, vec![0.0, 0.25, 0.75, 1.0]);
        assert_eq!(out.labels, vec![0, 0, 4, 4]);
    }

    #[test]
    fn crop_sizes_must_be_multiples_of_8() {
        let cases = vec![Arc::new(phantom_case(16, 1))];
        let crop = CropConfig {
            size: [12, 16, 16],
            ..Default::default()
        };
        let err = CropSource::new(cases, crop, LabelConvention::Brats2018, 1, 0).unwrap_err();
        assert!(err.to_string().contains("multiples of 8"), "{err}");
    }
}
