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
    CropConfig, ForegroundIndex, LabelConvention, LoadedCase, Volume, labels_to_regions,
    random_crop,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

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

/// Random crops of a set of cases.
#[derive(Debug)]
pub struct CropSource {
    cases: Vec<Arc<TrainCase>>,
    crop: CropConfig,
    convention: LabelConvention,
    len: usize,
    rng: Mutex<ChaCha8Rng>,
    available: [bool; N_MODALITIES],
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
        Ok(Self {
            cases,
            crop,
            convention,
            len,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            available: [true; N_MODALITIES],
        })
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
            // Inputs were checked when the cases were loaded and the source was built.
            let crop = random_crop(
                &case.images,
                &case.labels,
                &case.index,
                &self.crop,
                &mut *rng,
            )
            .expect("crop of a validated case");
            for (m, img) in images.iter_mut().enumerate() {
                img.extend_from_slice(&crop.image[m * n..(m + 1) * n]);
            }
            targets.extend(labels_to_regions(&crop.labels, self.convention));
        }
        batch_from_buffers(images, Some(targets), b, dhw(size), device)
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
