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

use rayon::prelude::*;

use crate::volume::Volume;

/// Minimum voxel count of the histogram bin that sets the clipping intensity.
pub const CLIP_MIN_COUNT: usize = 50;

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

/// Dense histograms up to this many bins; a sparse count above (float volumes with a huge
/// maximum would otherwise allocate `int(max)` counters, as numpy does).
const DENSE_BINS_MAX: usize = 1 << 24;

/// The clipping intensity of the reference histogram rule, if any.
fn clip_value(data: &[f32], min: f64, max: f64) -> Option<f64> {
    if !(max >= 1.0) || max <= min {
        return None;
    }
    let nbins = max.trunc() as usize;
    let width = (max - min) / nbins as f64;
    let edge = |i: usize| {
        if i == nbins {
            max
        } else {
            min + i as f64 * width
        }
    };
    let norm = nbins as f64 / (max - min);
    // Bin of one value, with numpy's correction for rounding at the edges.
    let bin = |v: f32| {
        let v = f64::from(v);
        let mut idx = (((v - min) * norm) as usize).min(nbins - 1);
        if v < edge(idx) {
            idx = idx.saturating_sub(1);
        } else if idx + 1 < nbins && v >= edge(idx + 1) {
            idx += 1;
        }
        idx
    };
    let last = if nbins <= DENSE_BINS_MAX {
        let counts = data
            .par_chunks(1 << 16)
            .fold(
                || vec![0u32; nbins],
                |mut acc, chunk| {
                    for &v in chunk {
                        acc[bin(v)] += 1;
                    }
                    acc
                },
            )
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            })
            .unwrap_or_default();
        counts.iter().rposition(|&c| c as usize >= CLIP_MIN_COUNT)
    } else {
        let mut bins: Vec<usize> = data.par_iter().map(|&v| bin(v)).collect();
        bins.par_sort_unstable();
        bins.chunk_by(|a, b| a == b)
            .rev()
            .find(|run| run.len() >= CLIP_MIN_COUNT)
            .map(|run| run[0])
    };
    last.map(edge)
}

/// Normalises one modality and reports the intermediate values.
///
/// # Shapes
/// Same `dims` in and out.
pub fn normalise_with_stats(volume: &Volume) -> (Volume, NormStats) {
    let data = &volume.data;
    let (min, max) = if data.is_empty() {
        (0.0, 0.0)
    } else {
        let (lo, hi) = data
            .par_iter()
            .fold(
                || (f32::INFINITY, f32::NEG_INFINITY),
                |(lo, hi), &v| (lo.min(v), hi.max(v)),
            )
            .reduce(
                || (f32::INFINITY, f32::NEG_INFINITY),
                |a, b| (a.0.min(b.0), a.1.max(b.1)),
            );
        (f64::from(lo), f64::from(hi))
    };
    let clip = clip_value(data, min, max);
    // Values are f32, so comparing with the f32 clip is exact for every integer intensity.
    let clip_f32 = clip.map_or(f32::INFINITY, |c| c as f32);
    let clipped = |v: f32| if v >= clip_f32 { clip_f32 } else { v };
    let n_clipped = if clip.is_some() {
        data.par_iter().filter(|&&v| v >= clip_f32).count()
    } else {
        0
    };
    let corner = data.first().map_or(0.0, |&v| clipped(v));

    let (n, sum) = data
        .par_iter()
        .map(|&v| clipped(v))
        .filter(|&v| v != corner)
        .fold(|| (0usize, 0.0f64), |(n, s), v| (n + 1, s + f64::from(v)))
        .reduce(|| (0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let mean = if n > 0 { sum / n as f64 } else { 0.0 };
    let ss: f64 = data
        .par_iter()
        .map(|&v| clipped(v))
        .filter(|&v| v != corner)
        .map(|v| {
            let d = f64::from(v) - mean;
            d * d
        })
        .sum();
    let std = if n > 0 { (ss / n as f64).sqrt() } else { 0.0 };
    let out: Vec<f32> = data
        .par_iter()
        .map(|&v| {
            let v = clipped(v);
            if v == corner || std == 0.0 {
                0.0
            } else {
                ((f64::from(v) - mean) / std) as f32
            }
        })
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
}
