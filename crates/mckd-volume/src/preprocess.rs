//! The MCKD / ShaSpec per-modality intensity normalisation ("truncate").
//!
//! For one raw volume `x` (reference `BraTSDataSet.truncate`):
//! 1. histogram of `x` with `int(max)` equal bins over `[min, max]` (numpy semantics:
//!    half-open bins, the last one closed);
//! 2. `clip` = lower edge of the last bin holding at least [`CLIP_MIN_COUNT`] voxels; the
//!    reference uses the bin *index* as the intensity, which is the same number whenever
//!    `min = 0` and `max` is an integer (every BraTS and phantom volume);
//! 3. every voxel `>= clip` is set to `clip`;
//! 4. background = voxels equal to the (clipped) corner voxel `[0, 0, 0]`;
//! 5. foreground voxels are z-scored with their mean and population standard deviation,
//!    background is set to 0.
//!
//! Edge cases the reference does not handle (it would raise or divide by zero):
//! `int(max) < 1` or no bin with 50 voxels → no clipping; no foreground → all zeros;
//! zero standard deviation → foreground becomes 0.
//!
//! The 50-voxel threshold was made for whole BraTS volumes (240×240×155 = 8,928,000 voxels).
//! On small volumes it clips far more: on a 32³ phantom the last bin (1 intensity unit wide)
//! with 50 voxels sits inside the white-matter peak, so 15–20 % of the brain, and the whole
//! enhancing tumour, are clipped to one value and T1c loses its contrast. [`ClipRule::Scaled`]
//! scales the threshold with the voxel count (`ceil(50 · n / 8,928,000)`, at least 1): exactly
//! 50 on BraTS-sized volumes, the same *fraction* of the volume on any other size. The mckd
//! BraTS pipeline uses it; [`normalise`] keeps the reference's fixed 50.

use rayon::prelude::*;

use crate::volume::Volume;

/// Minimum voxel count of the histogram bin that sets the clipping intensity.
pub const CLIP_MIN_COUNT: usize = 50;

/// Voxels of a whole BraTS volume (240×240×155), for which [`CLIP_MIN_COUNT`] was chosen.
pub const BRATS_VOXELS: usize = 240 * 240 * 155;

/// How many voxels the bin that sets the clipping intensity must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClipRule {
    /// The reference: [`CLIP_MIN_COUNT`] voxels whatever the volume's size.
    Reference,
    /// [`CLIP_MIN_COUNT`] scaled by `voxels / BRATS_VOXELS` (rounded up, at least 1): the
    /// reference on BraTS-sized volumes, the same fraction on others (see the module docs).
    #[default]
    Scaled,
}

impl ClipRule {
    /// Minimum bin count for a volume of `voxels` voxels.
    pub fn min_count(self, voxels: usize) -> usize {
        match self {
            Self::Reference => CLIP_MIN_COUNT,
            Self::Scaled => {
                let scaled =
                    (CLIP_MIN_COUNT as u128 * voxels as u128).div_ceil(BRATS_VOXELS as u128);
                (scaled as usize).max(1)
            }
        }
    }
}

/// What [`normalise_with_stats`] computed (all in raw intensity units).
#[derive(Debug, Clone, PartialEq)]
pub struct NormStats {
    /// Minimum raw value.
    pub raw_min: f64,
    /// Maximum raw value.
    pub raw_max: f64,
    /// Clipping intensity, `None` when no clipping applied.
    pub clip_value: Option<f64>,
    /// Number of voxels `>= clip_value` (set to `clip_value`; the reference's count).
    pub n_clipped: usize,
    /// Clipped value of the corner voxel `[0, 0, 0]` (the background value).
    pub corner: f64,
    /// Number of foreground voxels (different from `corner`).
    pub n_foreground: usize,
    /// Mean of the clipped foreground.
    pub mean: f64,
    /// Population standard deviation of the clipped foreground.
    pub std: f64,
}

/// Normalises one modality (see the module docs).
///
/// # Shapes
/// Same `dims` in and out.
pub fn normalise(volume: &Volume) -> Volume {
    normalise_with_stats(volume).0
}

/// Normalises one modality with the given [`ClipRule`].
///
/// # Shapes
/// Same `dims` in and out.
pub fn normalise_with(volume: &Volume, rule: ClipRule) -> Volume {
    normalise_with_stats_rule(volume, rule).0
}

/// Dense histograms up to this many bins; a sparse count above (float volumes with a huge
/// maximum would otherwise allocate `int(max)` counters, as numpy does).
const DENSE_BINS_MAX: usize = 1 << 24;

/// Integer-valued volumes whose value range is at most this wide take the fast path
/// (one count per distinct value, then a lookup table).
const FAST_RANGE_MAX: f64 = (1u32 << 20) as f64;

/// numpy's equal-width binning of `[min, max]` into `int(max)` bins.
struct Binning {
    min: f64,
    max: f64,
    nbins: usize,
    width: f64,
    norm: f64,
    min_count: usize,
}

impl Binning {
    /// `None` when the reference rule cannot apply (`int(max) < 1` or a constant volume).
    fn new(min: f64, max: f64, min_count: usize) -> Option<Self> {
        if max.is_nan() || max < 1.0 || max <= min {
            return None;
        }
        let nbins = max.trunc() as usize;
        Some(Self {
            min,
            max,
            nbins,
            width: (max - min) / nbins as f64,
            norm: nbins as f64 / (max - min),
            min_count,
        })
    }

    fn edge(&self, i: usize) -> f64 {
        if i == self.nbins {
            self.max
        } else {
            self.min + i as f64 * self.width
        }
    }

    /// Bin of `v`, with numpy's correction for floating-point rounding at the edges.
    #[inline]
    fn bin(&self, v: f64) -> usize {
        let mut idx = (((v - self.min) * self.norm) as usize).min(self.nbins - 1);
        if v < self.edge(idx) {
            idx = idx.saturating_sub(1);
        } else if idx + 1 < self.nbins && v >= self.edge(idx + 1) {
            idx += 1;
        }
        idx
    }

    /// Lower edge of the last bin with at least `min_count` voxels.
    fn clip_from_counts(&self, counts: &[u32]) -> Option<f64> {
        counts
            .iter()
            .rposition(|&c| c as usize >= self.min_count)
            .map(|i| self.edge(i))
    }
}

/// The clipping intensity of the reference histogram rule, if any (general path).
fn clip_value(data: &[f32], min: f64, max: f64, min_count: usize) -> Option<f64> {
    let b = Binning::new(min, max, min_count)?;
    if b.nbins <= DENSE_BINS_MAX {
        let counts = data
            .par_chunks(1 << 16)
            .fold(
                || vec![0u32; b.nbins],
                |mut acc, chunk| {
                    for &v in chunk {
                        acc[b.bin(f64::from(v))] += 1;
                    }
                    acc
                },
            )
            .reduce_with(|mut a, c| {
                a.iter_mut().zip(&c).for_each(|(x, y)| *x += y);
                a
            })
            .unwrap_or_default();
        b.clip_from_counts(&counts)
    } else {
        let mut bins: Vec<usize> = data.par_iter().map(|&v| b.bin(f64::from(v))).collect();
        bins.par_sort_unstable();
        bins.chunk_by(|x, y| x == y)
            .rev()
            .find(|run| run.len() >= min_count)
            .map(|run| b.edge(run[0]))
    }
}

/// Normalises one modality with the reference rule and reports the intermediate values.
///
/// Integer-valued volumes (every raw MRI and phantom) with a value range up to 2^20 take a
/// fast path: one count per distinct value and a lookup table, same results.
///
/// # Shapes
/// Same `dims` in and out.
pub fn normalise_with_stats(volume: &Volume) -> (Volume, NormStats) {
    normalise_with_stats_rule(volume, ClipRule::Reference)
}

/// [`normalise_with_stats`] with the given [`ClipRule`].
pub fn normalise_with_stats_rule(volume: &Volume, rule: ClipRule) -> (Volume, NormStats) {
    let data = &volume.data;
    let min_count = rule.min_count(data.len());
    if data.is_empty() {
        return (
            volume.clone(),
            NormStats {
                raw_min: 0.0,
                raw_max: 0.0,
                clip_value: None,
                n_clipped: 0,
                corner: 0.0,
                n_foreground: 0,
                mean: 0.0,
                std: 0.0,
            },
        );
    }
    let (lo, hi, integral) = data
        .par_iter()
        .fold(
            || (f32::INFINITY, f32::NEG_INFINITY, true),
            |(lo, hi, int), &v| (lo.min(v), hi.max(v), int && (v as i32) as f32 == v),
        )
        .reduce(
            || (f32::INFINITY, f32::NEG_INFINITY, true),
            |a, b| (a.0.min(b.0), a.1.max(b.1), a.2 && b.2),
        );
    let (min, max) = (f64::from(lo), f64::from(hi));
    if integral && max - min <= FAST_RANGE_MAX {
        normalise_integral(volume, min, max, min_count)
    } else {
        normalise_general(volume, min, max, min_count)
    }
}

/// The clipped value, comparing in `f32` (exact for integer intensities).
#[inline]
fn clipped(v: f32, clip: f32) -> f32 {
    if v >= clip { clip } else { v }
}

/// Fast path for integer-valued volumes: counts per distinct value, lookup table.
fn normalise_integral(
    volume: &Volume,
    min: f64,
    max: f64,
    min_count: usize,
) -> (Volume, NormStats) {
    let data = &volume.data;
    let range = (max - min) as usize + 1;
    let min_f32 = min as f32;
    let offset = |v: f32| (v - min_f32) as usize;
    let values = data
        .par_chunks(1 << 16)
        .fold(
            || vec![0u32; range],
            |mut acc, chunk| {
                for &v in chunk {
                    acc[offset(v)] += 1;
                }
                acc
            },
        )
        .reduce_with(|mut a, c| {
            a.iter_mut().zip(&c).for_each(|(x, y)| *x += y);
            a
        })
        .unwrap_or_default();
    let value_of = |r: usize| (min + r as f64) as f32;
    let clip = Binning::new(min, max, min_count).and_then(|b| {
        let mut counts = vec![0u32; b.nbins];
        for (r, &c) in values.iter().enumerate() {
            if c > 0 {
                counts[b.bin(f64::from(value_of(r)))] += c;
            }
        }
        b.clip_from_counts(&counts)
    });
    let clip_f32 = clip.map_or(f32::INFINITY, |c| c as f32);
    let corner = clipped(data[0], clip_f32);
    let (mut n_clipped, mut n, mut sum) = (0usize, 0usize, 0.0f64);
    for (r, &c) in values.iter().enumerate() {
        let v = value_of(r);
        if v >= clip_f32 {
            n_clipped += c as usize;
        }
        let v = clipped(v, clip_f32);
        if c > 0 && v != corner {
            n += c as usize;
            sum += f64::from(c) * f64::from(v);
        }
    }
    let mean = if n > 0 { sum / n as f64 } else { 0.0 };
    let mut ss = 0.0f64;
    for (r, &c) in values.iter().enumerate() {
        let v = clipped(value_of(r), clip_f32);
        if c > 0 && v != corner {
            let d = f64::from(v) - mean;
            ss += f64::from(c) * d * d;
        }
    }
    let std = if n > 0 { (ss / n as f64).sqrt() } else { 0.0 };
    let lut: Vec<f32> = (0..range)
        .map(|r| z_score(clipped(value_of(r), clip_f32), corner, mean, std))
        .collect();
    let out: Vec<f32> = data.par_iter().map(|&v| lut[offset(v)]).collect();
    (
        Volume {
            dims: volume.dims,
            data: out,
        },
        NormStats {
            raw_min: min,
            raw_max: max,
            clip_value: clip,
            n_clipped,
            corner: f64::from(corner),
            n_foreground: n,
            mean,
            std,
        },
    )
}

#[inline]
fn z_score(v: f32, corner: f32, mean: f64, std: f64) -> f32 {
    if v == corner || std == 0.0 {
        0.0
    } else {
        ((f64::from(v) - mean) / std) as f32
    }
}

/// General path (any finite values).
fn normalise_general(volume: &Volume, min: f64, max: f64, min_count: usize) -> (Volume, NormStats) {
    let data = &volume.data;
    let clip = clip_value(data, min, max, min_count);
    let clip_f32 = clip.map_or(f32::INFINITY, |c| c as f32);
    let n_clipped = if clip.is_some() {
        data.par_iter().filter(|&&v| v >= clip_f32).count()
    } else {
        0
    };
    let corner = clipped(data[0], clip_f32);
    let (n, sum) = data
        .par_iter()
        .map(|&v| clipped(v, clip_f32))
        .filter(|&v| v != corner)
        .fold(|| (0usize, 0.0f64), |(n, s), v| (n + 1, s + f64::from(v)))
        .reduce(|| (0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let mean = if n > 0 { sum / n as f64 } else { 0.0 };
    let ss: f64 = data
        .par_iter()
        .map(|&v| clipped(v, clip_f32))
        .filter(|&v| v != corner)
        .map(|v| {
            let d = f64::from(v) - mean;
            d * d
        })
        .sum();
    let std = if n > 0 { (ss / n as f64).sqrt() } else { 0.0 };
    let out: Vec<f32> = data
        .par_iter()
        .map(|&v| z_score(clipped(v, clip_f32), corner, mean, std))
        .collect();
    (
        Volume {
            dims: volume.dims,
            data: out,
        },
        NormStats {
            raw_min: min,
            raw_max: max,
            clip_value: clip,
            n_clipped,
            corner: f64::from(corner),
            n_foreground: n,
            mean,
            std,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti_io::read_volume;
    use crate::nifti_io::test_support::brats_sample_dir;
    use serde_json::Value;

    /// Tolerances: the z-scores are stored as `f32`, so values are compared within 1e-5
    /// (absolute); counts and the clip value exactly; mean and std (computed in f64) within
    /// 1e-9 relative.
    #[test]
    fn matches_preprocess_reference_json() {
        let dir = brats_sample_dir();
        let text = std::fs::read_to_string(dir.join("preprocess_reference.json")).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        let case = &json["cases"]["Brats18_2013_2_1"];
        for suffix in ["flair", "t1", "t1ce", "t2"] {
            let r = &case[suffix];
            let path = dir
                .join("Brats18_2013_2_1")
                .join(format!("Brats18_2013_2_1_{suffix}.nii.gz"));
            let (vol, _) = read_volume(&path).unwrap();
            let t = std::time::Instant::now();
            let (z, s) = normalise_with_stats(&vol);
            eprintln!("normalise {suffix}: {:?}", t.elapsed());
            let f = |k: &str| r[k].as_f64().unwrap();
            assert_eq!(s.raw_max, f("raw_max"), "{suffix} raw_max");
            assert_eq!(s.clip_value, Some(f("clip_value")), "{suffix} clip");
            assert_eq!(s.n_clipped as f64, f("n_clipped"), "{suffix} n_clipped");
            assert_eq!(s.corner, f("corner"), "{suffix} corner");
            assert_eq!(s.n_foreground as f64, f("n_foreground"), "{suffix} n_fg");
            let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
            assert!(
                rel(s.mean, f("fg_mean_after_clip")) < 1e-9,
                "{suffix} mean {}",
                s.mean
            );
            assert!(rel(s.std, f("fg_std")) < 1e-9, "{suffix} std {}", s.std);
            let at = f64::from(z.get(120, 120, 77));
            assert!(
                (at - f("z_at_120_120_77")).abs() < 1e-5,
                "{suffix} z at voxel: {at}"
            );
            let zmin = z.data.iter().cloned().fold(f32::MAX, f32::min);
            let zmax = z.data.iter().cloned().fold(f32::MIN, f32::max);
            assert!(
                (f64::from(zmin) - f("z_min")).abs() < 1e-5,
                "{suffix} z_min {zmin}"
            );
            assert!(
                (f64::from(zmax) - f("z_max")).abs() < 1e-5,
                "{suffix} z_max {zmax}"
            );
            // Background stays exactly 0.
            assert!(
                vol.data
                    .iter()
                    .zip(&z.data)
                    .all(|(&raw, &zv)| raw != 0.0 || zv == 0.0)
            );
        }
    }

    #[test]
    fn fast_integer_path_equals_general_path_and_sparse_histogram_works() {
        let path = brats_sample_dir()
            .join("Brats18_2013_2_1")
            .join("Brats18_2013_2_1_t2.nii.gz");
        let (vol, _) = read_volume(&path).unwrap();
        let (min, max) = (0.0, 1478.0);
        let (zf, sf) = normalise_integral(&vol, min, max, CLIP_MIN_COUNT);
        let (zg, sg) = normalise_general(&vol, min, max, CLIP_MIN_COUNT);
        assert_eq!(
            (sf.clip_value, sf.n_clipped, sf.n_foreground, sf.corner),
            (sg.clip_value, sg.n_clipped, sg.n_foreground, sg.corner)
        );
        assert!((sf.mean - sg.mean).abs() < 1e-9 && (sf.std - sg.std).abs() < 1e-9);
        assert!(
            zf.data
                .iter()
                .zip(&zg.data)
                .all(|(a, b)| (a - b).abs() < 1e-6)
        );
        // Float volume with a huge maximum: sparse histogram (int(max) > 2^24 bins).
        let mut data = vec![0.0f32; 1000];
        data[100..200].iter_mut().for_each(|x| *x = 5.5);
        data[200..260].iter_mut().for_each(|x| *x = 3.0e7);
        data[260] = 3.2e7;
        let (_, s) = normalise_with_stats(&Volume::new([10, 10, 10], data).unwrap());
        // 3.0e7 and 3.2e7 are in different bins; the last with >= 50 voxels holds 3.0e7.
        let clip = s.clip_value.unwrap();
        assert!(clip <= 3.0e7 && clip > 3.0e7 - 2.0, "{clip}");
        assert_eq!(s.n_clipped, 61);
    }

    #[test]
    fn handles_degenerate_volumes_without_nan() {
        // All zeros: no clipping, no foreground.
        let (z, s) = normalise_with_stats(&Volume::zeros([3, 3, 3]));
        assert!(z.data.iter().all(|&v| v == 0.0));
        assert_eq!((s.clip_value, s.n_foreground), (None, 0));
        // Constant foreground: std 0 → zeros, not NaN.
        let mut v = Volume::zeros([4, 4, 4]);
        v.data[1..].iter_mut().for_each(|x| *x = 7.0);
        let z = normalise(&v);
        assert!(z.data.iter().all(|&x| x == 0.0));
        // Small float volume (max < 1): no clipping, still z-scored.
        let v = Volume::new([2, 2, 1], vec![0.0, 0.2, 0.4, 0.6]).unwrap();
        let (z, s) = normalise_with_stats(&v);
        assert_eq!(s.clip_value, None);
        let want = [0.0, -1.2247449, 0.0, 1.2247449];
        for (a, b) in z.data.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn scaled_rule_is_the_reference_on_brats_sized_volumes() {
        assert_eq!(ClipRule::Scaled.min_count(BRATS_VOXELS), 50);
        assert_eq!(ClipRule::Scaled.min_count(BRATS_VOXELS + 1), 51);
        assert_eq!(ClipRule::Scaled.min_count(64 * 64 * 64), 2);
        assert_eq!(ClipRule::Scaled.min_count(32 * 32 * 32), 1);
        assert_eq!(ClipRule::Scaled.min_count(0), 1);
        assert_eq!(ClipRule::Reference.min_count(10), 50);
        // The real case is 240×240×155: both rules give the same volume.
        let path = brats_sample_dir()
            .join("Brats18_2013_2_1")
            .join("Brats18_2013_2_1_t1ce.nii.gz");
        let (vol, _) = read_volume(&path).unwrap();
        assert_eq!(vol.data.len(), BRATS_VOXELS);
        let (a, sa) = normalise_with_stats(&vol);
        let (b, sb) = normalise_with_stats_rule(&vol, ClipRule::Scaled);
        assert_eq!(sa, sb);
        assert_eq!(a, b);
    }

    /// The reason for [`ClipRule::Scaled`]: on a 32³ phantom the fixed 50-voxel rule clips
    /// the enhancing tumour down to white-matter brightness in T1c; the scaled rule keeps
    /// it the brightest tissue.
    #[test]
    fn fixed_threshold_erases_t1c_enhancement_on_small_phantoms_scaled_keeps_it() {
        use crate::phantom::{PhantomConfig, Tissue, make_phantom};
        let p = make_phantom(
            &PhantomConfig {
                size: [32; 3],
                ..Default::default()
            },
            1,
        )
        .unwrap();
        let t1c = &p.modalities[2];
        let mean_of = |z: &Volume, t: Tissue| {
            let v: Vec<f64> = z
                .data
                .iter()
                .zip(&p.tissue)
                .filter(|(_, tt)| **tt == t)
                .map(|(x, _)| f64::from(*x))
                .collect();
            assert!(!v.is_empty(), "{t:?} missing");
            v.iter().sum::<f64>() / v.len() as f64
        };
        let (zr, sr) = normalise_with_stats(t1c);
        let (zs, ss) = normalise_with_stats_rule(t1c, ClipRule::Scaled);
        let fg = sr.n_foreground as f64;
        assert!(
            sr.n_clipped as f64 > 0.05 * fg,
            "reference clipped {}",
            sr.n_clipped
        );
        assert!(
            (ss.n_clipped as f64) < 0.005 * fg,
            "scaled clipped {}",
            ss.n_clipped
        );
        let gap_r = mean_of(&zr, Tissue::Enhancing) - mean_of(&zr, Tissue::WhiteMatter);
        let gap_s = mean_of(&zs, Tissue::Enhancing) - mean_of(&zs, Tissue::WhiteMatter);
        assert!(gap_r < 0.3, "reference ET − WM = {gap_r}");
        assert!(gap_s > 1.5, "scaled ET − WM = {gap_s}");
    }
}
