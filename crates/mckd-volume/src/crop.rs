//! Seeded random training crops with tumour-centred sampling and flips.
//!
//! Per crop (the RNG is passed in; same RNG state, same crop):
//! 1. with probability `foreground_prob` the crop is centred on a tumour voxel: a region is
//!    drawn uniformly among the non-empty ones of (ET, TC, WT), then a voxel uniformly in
//!    it (the reference draws a class the same way, so small ET is not drowned by WT);
//!    otherwise — or when the case has no tumour — the crop position is uniform;
//! 2. per axis the start is clamped to `[0, n − s]` (size `s`, volume `n`): a crop never
//!    leaves the volume;
//! 3. each axis is flipped independently with probability `flip_prob[axis]`.
//!
//! # Crops larger than the volume
//! Policy: an error ([`VolumeError::CropTooLarge`], naming both sizes and the axis), neither
//! padding nor clamping. At a coarser spacing ([`crate::resample`]) a brain is about
//! 70×85×70 voxels at 2 mm, so a crop size meant for 1 mm would otherwise train silently on
//! crops that are mostly zero padding; clamping would change the batch shape from case to
//! case. [`CropConfig::check_fits`] is the same check for validating every case before
//! training starts. [`extract_crop`] (an explicit box) still zero-pads what lies outside.
//!
//! Sizes are (i, j, k): [`DEFAULT_CROP`] = `[160, 160, 80]` is the paper's 80×160×160
//! (D, H, W). A crop buffer per channel is laid out like a [`Volume`] of dims `size`.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::brats::{LabelConvention, Region};
use crate::error::{Result, VolumeError};
use crate::volume::{Volume, ijk_of, voxel_count};

/// Default crop size (i, j, k): 80 × 160 × 160 as (D, H, W) = (k, j, i).
pub const DEFAULT_CROP: [usize; 3] = [160, 160, 80];

/// How training crops are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CropConfig {
    /// Crop size (i, j, k).
    pub size: [usize; 3],
    /// Probability that a crop is centred on a tumour voxel.
    pub foreground_prob: f64,
    /// Probability of flipping each axis (i, j, k), independently.
    pub flip_prob: [f64; 3],
}

impl Default for CropConfig {
    fn default() -> Self {
        Self {
            size: DEFAULT_CROP,
            foreground_prob: 0.5,
            flip_prob: [0.5; 3],
        }
    }
}

impl CropConfig {
    /// Checks that crops of this size fit a volume of `dims` (i, j, k) on every axis; the
    /// error ([`VolumeError::CropTooLarge`]) names both sizes, the first axis that does not
    /// fit and `what` (e.g. the case id).
    pub fn check_fits(&self, dims: [usize; 3], what: Option<&str>) -> Result<()> {
        match (0..3).find(|&a| self.size[a] > dims[a]) {
            None => Ok(()),
            Some(axis) => Err(VolumeError::CropTooLarge {
                crop: self.size,
                volume: dims,
                axis,
                what: what.map(str::to_string),
            }),
        }
    }
}

/// Tumour voxels of one case per region, computed once and reused for every crop.
#[derive(Debug, Clone, Default)]
pub struct ForegroundIndex {
    /// Linear voxel indices per region in channel order (ET, TC, WT).
    pub voxels: [Vec<usize>; 3],
}

impl ForegroundIndex {
    /// Indexes the tumour voxels of `labels`.
    ///
    /// # Shapes
    /// `labels: [n]`.
    pub fn new(labels: &[u8], convention: LabelConvention) -> Self {
        let mut voxels: [Vec<usize>; 3] = Default::default();
        for (idx, &l) in labels.iter().enumerate() {
            for r in Region::ALL {
                if r.contains(l, convention) {
                    voxels[r.channel()].push(idx);
                }
            }
        }
        Self { voxels }
    }
}

/// One training crop.
#[derive(Debug, Clone, PartialEq)]
pub struct Crop {
    /// Crop of every image channel.
    ///
    /// # Shapes
    /// `[C, sk, sj, si]` flattened (channel-major, i fastest), `size = [si, sj, sk]`.
    pub image: Vec<f32>,
    /// Crop of the labels (0 in padding).
    ///
    /// # Shapes
    /// `[sk, sj, si]` flattened.
    pub labels: Vec<u8>,
    /// Crop size (i, j, k).
    pub size: [usize; 3],
    /// Volume coordinate of the crop's first voxel (before flipping); negative or beyond
    /// the volume where the crop is padded.
    pub origin: [isize; 3],
    /// Axes that were flipped.
    pub flipped: [bool; 3],
    /// The tumour voxel the crop was centred on, if it was a foreground crop.
    pub centre: Option<[usize; 3]>,
}

/// Cuts the box starting at `origin` of size `size` out of `images` and `labels` (zero
/// outside the volume), flipping the axes marked in `flip`.
///
/// # Shapes
/// `images`: C volumes of `dims`; `labels: [dk, dj, di]`; returns
/// `image: [C, sk, sj, si]`, `labels: [sk, sj, si]`.
pub fn extract_crop(
    images: &[Volume],
    labels: &[u8],
    origin: [isize; 3],
    size: [usize; 3],
    flip: [bool; 3],
) -> Result<Crop> {
    let dims = check_inputs(images, labels)?;
    let sn = voxel_count(size);
    let mut image = vec![0.0f32; images.len() * sn];
    let mut out_labels = vec![0u8; sn];
    // Source coordinate of crop coordinate `t` along axis `d` (after the flip), if inside.
    let src = |d: usize, t: usize| -> Option<usize> {
        let t = if flip[d] { size[d] - 1 - t } else { t };
        let x = origin[d] + t as isize;
        (x >= 0 && (x as usize) < dims[d]).then_some(x as usize)
    };
    for k in 0..size[2] {
        let Some(sk) = src(2, k) else { continue };
        for j in 0..size[1] {
            let Some(sj) = src(1, j) else { continue };
            let row_dst = size[0] * (j + size[1] * k);
            let row_src = dims[0] * (sj + dims[1] * sk);
            for i in 0..size[0] {
                let Some(si) = src(0, i) else { continue };
                out_labels[row_dst + i] = labels[row_src + si];
                for (c, vol) in images.iter().enumerate() {
                    image[c * sn + row_dst + i] = vol.data[row_src + si];
                }
            }
        }
    }
    Ok(Crop {
        image,
        labels: out_labels,
        size,
        origin,
        flipped: flip,
        centre: None,
    })
}

fn check_inputs(images: &[Volume], labels: &[u8]) -> Result<[usize; 3]> {
    let Some(first) = images.first() else {
        return Err(VolumeError::Invalid(
            "a crop needs at least one image".into(),
        ));
    };
    let dims = first.dims;
    if let Some(v) = images
        .iter()
        .find(|v| v.dims != dims || v.len() != voxel_count(dims))
    {
        return Err(VolumeError::Invalid(format!(
            "crop images have different dims: {:?} and {:?}",
            dims, v.dims
        )));
    }
    if labels.len() != voxel_count(dims) {
        return Err(VolumeError::Invalid(format!(
            "crop labels have {} voxels, images {dims:?}",
            labels.len()
        )));
    }
    Ok(dims)
}

/// Draws one training crop (see the module docs). A crop larger than the volume on any
/// axis is a [`VolumeError::CropTooLarge`].
///
/// # Shapes
/// `images`: C volumes of `dims` (e.g. the 4 modalities); `labels: [dk, dj, di]`;
/// returns `image: [C, sk, sj, si]`, `labels: [sk, sj, si]` with `cfg.size = [si, sj, sk]`.
pub fn random_crop<R: Rng + ?Sized>(
    images: &[Volume],
    labels: &[u8],
    index: &ForegroundIndex,
    cfg: &CropConfig,
    rng: &mut R,
) -> Result<Crop> {
    let dims = check_inputs(images, labels)?;
    if cfg.size.contains(&0) {
        return Err(VolumeError::Invalid(format!(
            "crop size {:?} is empty",
            cfg.size
        )));
    }
    cfg.check_fits(dims, None)?;
    let size = cfg.size;
    // Allowed start range per axis (the crop fits: n − s >= 0).
    let range = |d: usize| (0isize, dims[d] as isize - size[d] as isize);
    let non_empty: Vec<&Vec<usize>> = index.voxels.iter().filter(|v| !v.is_empty()).collect();
    let mut centre = None;
    if !non_empty.is_empty() && rng.random_bool(cfg.foreground_prob.clamp(0.0, 1.0)) {
        let region = non_empty[rng.random_range(0..non_empty.len())];
        let idx = region[rng.random_range(0..region.len())];
        if idx < labels.len() {
            centre = Some(ijk_of(dims, idx));
        }
    }
    let mut origin = [0isize; 3];
    for (d, o) in origin.iter_mut().enumerate() {
        let (lo, hi) = range(d);
        *o = match centre {
            Some(c) => (c[d] as isize - (size[d] / 2) as isize).clamp(lo, hi),
            None => rng.random_range(lo as i64..=hi as i64) as isize,
        };
    }
    let mut flip = [false; 3];
    for (d, f) in flip.iter_mut().enumerate() {
        *f = rng.random_bool(cfg.flip_prob[d].clamp(0.0, 1.0));
    }
    let mut crop = extract_crop(images, labels, origin, size, flip)?;
    crop.centre = centre;
    Ok(crop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::linear_index;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn coords_volume(dims: [usize; 3]) -> Volume {
        let data = (0..voxel_count(dims)).map(|x| x as f32 + 1.0).collect();
        Volume::new(dims, data).unwrap()
    }

    #[test]
    fn extract_crop_copies_pads_and_flips() {
        let dims = [6, 5, 4];
        let v = coords_volume(dims);
        let labels: Vec<u8> = (0..v.len()).map(|x| (x % 3) as u8).collect();
        let c = extract_crop(
            std::slice::from_ref(&v),
            &labels,
            [-1, 2, 1],
            [3, 4, 2],
            [false; 3],
        )
        .unwrap();
        // Crop voxel (1, 0, 0) = volume (0, 2, 1); crop (0, *, *) is padding (i = -1).
        assert_eq!(c.image[1], v.get(0, 2, 1));
        assert_eq!(c.image[0], 0.0);
        assert_eq!(c.labels[1], labels[linear_index(dims, 0, 2, 1)]);
        // j = 2 + 3 = 5 is outside (dj = 5): padded row.
        let row = 3 * 3; // crop (0, 3, 0)
        assert!(c.image[row..row + 3].iter().all(|&x| x == 0.0));
        // Flipping i reverses rows.
        let f = extract_crop(
            std::slice::from_ref(&v),
            &labels,
            [1, 0, 0],
            [4, 2, 2],
            [true, false, false],
        )
        .unwrap();
        assert_eq!(f.image[0], v.get(4, 0, 0));
        assert_eq!(f.image[3], v.get(1, 0, 0));
        let g = extract_crop(
            std::slice::from_ref(&v),
            &labels,
            [1, 0, 0],
            [4, 2, 2],
            [false, true, true],
        )
        .unwrap();
        assert_eq!(g.image[0], v.get(1, 1, 1));
    }

    #[test]
    fn random_crops_are_seeded_half_centred_on_tumour_and_refused_when_too_large() {
        let dims = [40, 36, 30];
        let v = coords_volume(dims);
        let mut labels = vec![0u8; v.len()];
        for k in 20..24 {
            for j in 5..9 {
                for i in 30..35 {
                    labels[linear_index(dims, i, j, k)] = if i == 32 { 4 } else { 2 };
                }
            }
        }
        let c = LabelConvention::Brats2018;
        let index = ForegroundIndex::new(&labels, c);
        assert_eq!(index.voxels[0].len(), 16);
        let cfg = CropConfig {
            size: [16, 16, 12],
            ..CropConfig::default()
        };
        let images = [v.clone(), v.clone()];
        let draw = |seed: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..200)
                .map(|_| random_crop(&images, &labels, &index, &cfg, &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(3);
        assert_eq!(a, draw(3), "same seed, same crops");
        assert_ne!(a, draw(4));
        let centred = a.iter().filter(|c| c.centre.is_some()).count();
        assert!((70..=130).contains(&centred), "{centred} of 200 centred");
        for c in &a {
            assert_eq!(c.image.len(), 2 * 16 * 16 * 12);
            // Crops that fit never leave the volume.
            for ((&o, &s), &n) in c.origin.iter().zip(&cfg.size).zip(&dims) {
                assert!(o >= 0 && o as usize + s <= n);
            }
            if c.centre.is_some() {
                assert!(c.labels.iter().any(|&l| l > 0), "centred crop holds tumour");
            }
        }
        let flips = a.iter().filter(|c| c.flipped[0]).count();
        assert!((60..=140).contains(&flips), "{flips}");

        // A crop exactly the size of the volume is the whole volume.
        let whole = CropConfig {
            size: dims,
            flip_prob: [0.0; 3],
            ..CropConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..5 {
            let c = random_crop(&images[..1], &labels, &index, &whole, &mut rng).unwrap();
            assert_eq!(
                (c.image.as_slice(), c.origin),
                (v.data.as_slice(), [0, 0, 0])
            );
        }
        // Larger than the volume on one axis (j: 37 > 36): an error naming both sizes and
        // the axis, from random_crop and from the up-front check.
        let big = CropConfig {
            size: [40, 37, 30],
            ..CropConfig::default()
        };
        let err = random_crop(&images[..1], &labels, &index, &big, &mut rng).unwrap_err();
        assert!(
            matches!(err, VolumeError::CropTooLarge { axis: 1, .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("[40, 37, 30]") && msg.contains("[40, 36, 30]") && msg.contains("axis 1"),
            "{msg}"
        );
        let msg = big
            .check_fits(dims, Some("case_7"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("of case_7") && msg.contains("needs 37"),
            "{msg}"
        );
        cfg.check_fits(dims, None).unwrap();
        whole.check_fits(dims, None).unwrap();
        // No tumour at all: still works (uniform crops).
        let empty = ForegroundIndex::new(&vec![0u8; v.len()], c);
        let z = random_crop(&images, &vec![0u8; v.len()], &empty, &cfg, &mut rng).unwrap();
        assert!(z.centre.is_none());
        // Mismatched inputs are errors.
        assert!(random_crop(&images, &labels[1..], &index, &cfg, &mut rng).is_err());
    }
}
