//! Dice and HD95 per tumour region, with the official BraTS (`brats-evaluation` 0.0.10 /
//! panoptica 2.1.7, "global binary" metrics) conventions.
//!
//! For one region with prediction mask P and reference mask R:
//! - both empty → Dice NaN, HD95 NaN (skipped by [`nan_mean`]);
//! - no overlap (|P ∩ R| = 0) otherwise — one mask empty, or both non-empty but disjoint →
//!   Dice 0, HD95 +∞ (panoptica's zero-TP edge case, not the geometric distance);
//!   `brats-parse-metrics` then reports +∞ as [`BRATS_HD95_INF`] = 373;
//! - else Dice = 2|P ∩ R| / (|P| + |R|), and HD95 = numpy `percentile(·, 95)` (linear
//!   interpolation) of the pooled directed surface distances P→R and R→P, where the
//!   surface of a mask is `mask XOR erosion(mask, 6-connected cross)` (voxels on the array
//!   border count as surface, as scipy's `binary_erosion` with `border_value = 0`), and a
//!   surface voxel's distance is the exact Euclidean distance (with voxel spacing) to the
//!   nearest surface voxel of the other mask.
//!
//! The Euclidean distance transform is the exact separable Felzenszwalb–Huttenlocher one,
//! computed on the bounding box of P ∪ R only (exact: every surface voxel lies inside it).

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::brats::{LabelConvention, Region};
use crate::error::{Result, VolumeError};
use crate::volume::voxel_count;

/// The value `brats-parse-metrics` reports for an infinite HD95 (used by [`mean_metrics`]).
pub const BRATS_HD95_INF: f64 = 373.0;

/// Dice and HD95 of one region, with the volumes they come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegionMetrics {
    /// Dice, NaN when both masks are empty.
    #[serde(with = "json_float")]
    pub dice: f64,
    /// HD95 in the units of the spacing (mm); NaN when both masks are empty, +∞ when they
    /// do not overlap.
    #[serde(with = "json_float")]
    pub hd95: f64,
    /// Voxels in the prediction mask.
    pub volume_pred: usize,
    /// Voxels in the reference mask.
    pub volume_ref: usize,
}

/// Dice of two binary masks (NaN when both are empty, 0 when one is).
///
/// # Shapes
/// `pred, reference: [n]`.
pub fn dice(pred: &[bool], reference: &[bool]) -> f64 {
    let (mut p, mut r, mut both) = (0usize, 0usize, 0usize);
    for (&a, &b) in pred.iter().zip(reference) {
        p += usize::from(a);
        r += usize::from(b);
        both += usize::from(a & b);
    }
    if p + r == 0 {
        f64::NAN
    } else {
        2.0 * both as f64 / (p + r) as f64
    }
}

/// Dice and HD95 of one pair of binary masks on a grid with `dims` (i, j, k) and voxel
/// `spacing` (see the module docs for the conventions).
///
/// # Shapes
/// `pred, reference: [dk, dj, di]` flattened (i fastest).
pub fn region_metrics(
    pred: &[bool],
    reference: &[bool],
    dims: [usize; 3],
    spacing: [f32; 3],
) -> Result<RegionMetrics> {
    let n = voxel_count(dims);
    if pred.len() != n || reference.len() != n {
        return Err(VolumeError::Invalid(format!(
            "masks of {} and {} voxels on a grid {dims:?} of {n}",
            pred.len(),
            reference.len()
        )));
    }
    if spacing
        .iter()
        .any(|&s| s.is_nan() || s <= 0.0 || s.is_infinite())
    {
        return Err(VolumeError::Invalid(format!(
            "voxel spacing {spacing:?} must be positive"
        )));
    }
    let (mut vp, mut vr, mut both) = (0usize, 0usize, 0usize);
    for (&a, &b) in pred.iter().zip(reference) {
        vp += usize::from(a);
        vr += usize::from(b);
        both += usize::from(a & b);
    }
    let (dice, hd95) = if vp + vr == 0 {
        (f64::NAN, f64::NAN)
    } else if both == 0 {
        (0.0, f64::INFINITY)
    } else {
        let d = 2.0 * both as f64 / (vp + vr) as f64;
        (d, hd95(pred, reference, dims, spacing.map(f64::from)))
    };
    Ok(RegionMetrics {
        dice,
        hd95,
        volume_pred: vp,
        volume_ref: vr,
    })
}

/// Dice and HD95 of the three regions of one case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CaseMetrics {
    /// Dice of ET (NaN: both empty).
    #[serde(with = "json_float")]
    pub dice_et: f64,
    /// Dice of TC.
    #[serde(with = "json_float")]
    pub dice_tc: f64,
    /// Dice of WT.
    #[serde(with = "json_float")]
    pub dice_wt: f64,
    /// HD95 of ET in mm (NaN: both empty; +∞: no overlap).
    #[serde(with = "json_float")]
    pub hd95_et: f64,
    /// HD95 of TC in mm.
    #[serde(with = "json_float")]
    pub hd95_tc: f64,
    /// HD95 of WT in mm.
    #[serde(with = "json_float")]
    pub hd95_wt: f64,
}

impl CaseMetrics {
    /// Dice of `region`.
    pub fn dice(&self, region: Region) -> f64 {
        match region {
            Region::Et => self.dice_et,
            Region::Tc => self.dice_tc,
            Region::Wt => self.dice_wt,
        }
    }

    /// HD95 of `region`.
    pub fn hd95(&self, region: Region) -> f64 {
        match region {
            Region::Et => self.hd95_et,
            Region::Tc => self.hd95_tc,
            Region::Wt => self.hd95_wt,
        }
    }
}

/// Evaluates a predicted label map against the reference (both in `convention`) on a grid
/// with `dims` and voxel `spacing`: Dice and HD95 of ET, TC and WT. Labels are not
/// validated here (any non-zero value counts for WT).
///
/// # Shapes
/// `pred, reference: [dk, dj, di]` flattened (i fastest).
pub fn evaluate_case(
    pred: &[u8],
    reference: &[u8],
    dims: [usize; 3],
    spacing: [f32; 3],
    convention: LabelConvention,
) -> Result<CaseMetrics> {
    let n = voxel_count(dims);
    if pred.len() != n || reference.len() != n {
        return Err(VolumeError::Invalid(format!(
            "label maps of {} and {} voxels on a grid {dims:?} of {n}",
            pred.len(),
            reference.len()
        )));
    }
    let per_region: Vec<Result<RegionMetrics>> = Region::ALL
        .par_iter()
        .map(|&r| {
            region_metrics(
                &r.mask(pred, convention),
                &r.mask(reference, convention),
                dims,
                spacing,
            )
        })
        .collect();
    let mut m = Vec::with_capacity(3);
    for r in per_region {
        m.push(r?);
    }
    Ok(CaseMetrics {
        dice_et: m[0].dice,
        dice_tc: m[1].dice,
        dice_wt: m[2].dice,
        hd95_et: m[0].hd95,
        hd95_tc: m[1].hd95,
        hd95_wt: m[2].hd95,
    })
}

/// Mean of the non-NaN values (NaN if there is none). Infinite values are kept (the mean
/// is then infinite); replace them first with [`replace_inf`] for the BraTS convention.
pub fn nan_mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (mut n, mut s) = (0usize, 0.0f64);
    for v in values {
        if !v.is_nan() {
            n += 1;
            s += v;
        }
    }
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// `value`, with +∞ replaced by `with` (e.g. [`BRATS_HD95_INF`]).
pub fn replace_inf(value: f64, with: f64) -> f64 {
    if value == f64::INFINITY { with } else { value }
}

/// Means over cases of one region.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegionMean {
    /// nan-mean of Dice.
    #[serde(rename = "Dice", with = "json_float")]
    pub dice: f64,
    /// nan-mean of HD95 with +∞ counted as [`BRATS_HD95_INF`].
    #[serde(rename = "HD95", with = "json_float")]
    pub hd95: f64,
    /// Cases whose Dice is not NaN (counted in the mean).
    pub n_cases: usize,
}

/// Means over cases: per region and over the three regions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanMetrics {
    /// Enhancing tumour.
    #[serde(rename = "ET")]
    pub et: RegionMean,
    /// Tumour core.
    #[serde(rename = "TC")]
    pub tc: RegionMean,
    /// Whole tumour.
    #[serde(rename = "WT")]
    pub wt: RegionMean,
    /// Mean of the three region Dice means (nan-mean).
    #[serde(with = "json_float")]
    pub dice_mean: f64,
    /// Mean of the three region HD95 means (nan-mean).
    #[serde(with = "json_float")]
    pub hd95_mean: f64,
    /// Number of cases.
    pub n_cases: usize,
}

impl MeanMetrics {
    /// Means of `region`.
    pub fn region(&self, region: Region) -> &RegionMean {
        match region {
            Region::Et => &self.et,
            Region::Tc => &self.tc,
            Region::Wt => &self.wt,
        }
    }
}

/// nan-means over cases (HD95 +∞ counted as [`BRATS_HD95_INF`], as `brats-parse-metrics`).
pub fn mean_metrics(per_case: &[CaseMetrics]) -> MeanMetrics {
    let region = |r: Region| RegionMean {
        dice: nan_mean(per_case.iter().map(|c| c.dice(r))),
        hd95: nan_mean(
            per_case
                .iter()
                .map(|c| replace_inf(c.hd95(r), BRATS_HD95_INF)),
        ),
        n_cases: per_case.iter().filter(|c| !c.dice(r).is_nan()).count(),
    };
    let (et, tc, wt) = (region(Region::Et), region(Region::Tc), region(Region::Wt));
    MeanMetrics {
        dice_mean: nan_mean([et.dice, tc.dice, wt.dice]),
        hd95_mean: nan_mean([et.hd95, tc.hd95, wt.hd95]),
        et,
        tc,
        wt,
        n_cases: per_case.len(),
    }
}

#[derive(Serialize)]
struct SummaryRegion {
    #[serde(rename = "Dice", with = "json_float")]
    dice: f64,
    #[serde(rename = "HD95", with = "json_float")]
    hd95: f64,
}

#[derive(Serialize)]
struct SummaryCaseMetrics {
    #[serde(rename = "ET")]
    et: SummaryRegion,
    #[serde(rename = "TC")]
    tc: SummaryRegion,
    #[serde(rename = "WT")]
    wt: SummaryRegion,
}

#[derive(Serialize)]
struct SummaryCase<'a> {
    case: &'a str,
    metrics: SummaryCaseMetrics,
}

#[derive(Serialize)]
struct Summary<'a> {
    conventions: &'static str,
    metric_per_case: Vec<SummaryCase<'a>>,
    mean: &'a MeanMetrics,
}

/// Writes an nnU-Net-like `summary.json`: `metric_per_case` (case id and ET/TC/WT
/// Dice/HD95) and `mean` ([`MeanMetrics`]). NaN is written as `null`, +∞ as `"inf"` (as in
/// `metric_reference.json`).
pub fn write_summary_json(
    path: impl AsRef<Path>,
    per_case: &[(String, CaseMetrics)],
    means: &MeanMetrics,
) -> Result<()> {
    let path = path.as_ref();
    let summary = Summary {
        conventions: "Dice/HD95 per region as brats-evaluation (panoptica global binary): \
                      null = NaN (both masks empty, skipped by the means); \"inf\" = no \
                      overlap (HD95 means count it as 373); HD95 in mm",
        metric_per_case: per_case
            .iter()
            .map(|(id, m)| SummaryCase {
                case: id,
                metrics: SummaryCaseMetrics {
                    et: SummaryRegion {
                        dice: m.dice_et,
                        hd95: m.hd95_et,
                    },
                    tc: SummaryRegion {
                        dice: m.dice_tc,
                        hd95: m.hd95_tc,
                    },
                    wt: SummaryRegion {
                        dice: m.dice_wt,
                        hd95: m.hd95_wt,
                    },
                },
            })
            .collect(),
        mean: means,
    };
    let text = serde_json::to_string_pretty(&summary).map_err(|e| VolumeError::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    std::fs::write(path, text + "\n").map_err(|e| VolumeError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// serde for `f64` fields in JSON: finite → number, NaN → `null`, ±∞ → `"inf"`/`"-inf"`.
pub(crate) mod json_float {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_nan() {
            s.serialize_none()
        } else if v.is_infinite() {
            s.serialize_str(if *v > 0.0 { "inf" } else { "-inf" })
        } else {
            s.serialize_f64(*v)
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(f64),
        Str(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Option::<NumOrStr>::deserialize(d)? {
            None => Ok(f64::NAN),
            Some(NumOrStr::Num(v)) => Ok(v),
            Some(NumOrStr::Str(s)) => match s.as_str() {
                "inf" | "Infinity" => Ok(f64::INFINITY),
                "-inf" | "-Infinity" => Ok(f64::NEG_INFINITY),
                "nan" | "NaN" => Ok(f64::NAN),
                other => Err(serde::de::Error::custom(format!(
                    "expected a number, null or \"inf\", found \"{other}\""
                ))),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Surfaces, distance transform, HD95.

/// Inclusive bounding box (lo, hi) of the voxels set in either mask, or `None`.
fn bbox_union(a: &[bool], b: &[bool], dims: [usize; 3]) -> Option<([usize; 3], [usize; 3])> {
    let [di, dj, dk] = dims;
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let mut any = false;
    for k in 0..dk {
        for j in 0..dj {
            let row = di * (j + dj * k);
            let (ra, rb) = (&a[row..row + di], &b[row..row + di]);
            let first = ra.iter().zip(rb).position(|(&x, &y)| x | y);
            if let Some(i0) = first {
                let i1 = di - 1 - ra.iter().zip(rb).rev().position(|(&x, &y)| x | y).unwrap();
                any = true;
                lo = [lo[0].min(i0), lo[1].min(j), lo[2].min(k)];
                hi = [hi[0].max(i1), hi[1].max(j), hi[2].max(k)];
            }
        }
    }
    any.then_some((lo, hi))
}

/// Copies the box `lo..=hi` of `mask` into a new buffer.
fn crop_mask(mask: &[bool], dims: [usize; 3], lo: [usize; 3], hi: [usize; 3]) -> Vec<bool> {
    let cd = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
    let mut out = Vec::with_capacity(voxel_count(cd));
    for k in lo[2]..=hi[2] {
        for j in lo[1]..=hi[1] {
            let row = dims[0] * (j + dims[1] * k);
            out.extend_from_slice(&mask[row + lo[0]..=row + hi[0]]);
        }
    }
    out
}

/// Surface voxels: set voxels with at least one 6-neighbour unset or outside the grid.
fn surface(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let [di, dj, dk] = dims;
    let (sj, sk) = (di, di * dj);
    let mut out = vec![false; mask.len()];
    out.par_chunks_mut(sk).enumerate().for_each(|(k, slab)| {
        for j in 0..dj {
            for i in 0..di {
                let idx = i + sj * j + sk * k;
                if !mask[idx] {
                    continue;
                }
                let interior = i > 0
                    && i + 1 < di
                    && j > 0
                    && j + 1 < dj
                    && k > 0
                    && k + 1 < dk
                    && mask[idx - 1]
                    && mask[idx + 1]
                    && mask[idx - sj]
                    && mask[idx + sj]
                    && mask[idx - sk]
                    && mask[idx + sk];
                slab[i + sj * j] = !interior;
            }
        }
    });
    out
}

/// 1-D squared distance transform (Felzenszwalb & Huttenlocher) of `f` sampled at
/// positions `q * spacing`, written to `d`. Infinite entries of `f` are not sites.
fn edt_1d(f: &[f64], d: &mut [f64], spacing: f64, v: &mut [usize], z: &mut [f64]) {
    let n = f.len();
    let Some(first) = f.iter().position(|x| x.is_finite()) else {
        d.iter_mut().for_each(|x| *x = f64::INFINITY);
        return;
    };
    let pos = |q: usize| q as f64 * spacing;
    let mut k = 0usize;
    v[0] = first;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in first + 1..n {
        if !f[q].is_finite() {
            continue;
        }
        let xq = pos(q);
        // Intersection of the parabolas rooted at q and at v[k]; z[0] = -inf ends the loop.
        let cross = |p: usize| {
            let xp = pos(p);
            ((f[q] + xq * xq) - (f[p] + xp * xp)) / (2.0 * (xq - xp))
        };
        let mut s = cross(v[k]);
        while s <= z[k] {
            k -= 1;
            s = cross(v[k]);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    let mut k = 0usize;
    for (q, out) in d.iter_mut().enumerate() {
        let x = pos(q);
        while z[k + 1] < x {
            k += 1;
        }
        let dx = x - pos(v[k]);
        *out = dx * dx + f[v[k]];
    }
}

/// Squared Euclidean distance (with `spacing`) from every voxel to the nearest seed
/// (`seeds[idx]`), exact, separable over the three axes. +∞ when there is no seed.
fn edt_squared(seeds: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let [di, dj, dk] = dims;
    let slab = di * dj;
    let mut g: Vec<f64> = seeds
        .iter()
        .map(|&s| if s { 0.0 } else { f64::INFINITY })
        .collect();
    let scratch = |n: usize| {
        (
            vec![0.0f64; n],
            vec![0.0f64; n],
            vec![0usize; n],
            vec![0.0; n + 1],
        )
    };

    // Axis i: contiguous rows.
    g.par_chunks_mut(di).for_each_init(
        || scratch(di),
        |(f, d, v, z), row| {
            f.copy_from_slice(row);
            edt_1d(f, d, spacing[0], v, z);
            row.copy_from_slice(d);
        },
    );
    // Axis j: within each k-slab.
    g.par_chunks_mut(slab).for_each_init(
        || scratch(dj),
        |(f, d, v, z), s| {
            for i in 0..di {
                for j in 0..dj {
                    f[j] = s[i + di * j];
                }
                edt_1d(f, d, spacing[1], v, z);
                for j in 0..dj {
                    s[i + di * j] = d[j];
                }
            }
        },
    );
    // Axis k: columns across slabs; computed per j-row into a new buffer.
    if dk > 1 {
        let src = &g;
        let rows: Vec<Vec<f64>> = (0..dj)
            .into_par_iter()
            .map_init(
                || scratch(dk),
                |(f, d, v, z), j| {
                    let mut out = vec![0.0f64; di * dk];
                    for i in 0..di {
                        for k in 0..dk {
                            f[k] = src[i + di * j + slab * k];
                        }
                        edt_1d(f, d, spacing[2], v, z);
                        for k in 0..dk {
                            out[i + di * k] = d[k];
                        }
                    }
                    out
                },
            )
            .collect();
        let mut out = vec![0.0f64; g.len()];
        out.par_chunks_mut(slab).enumerate().for_each(|(k, s)| {
            for (j, row) in rows.iter().enumerate() {
                s[di * j..di * (j + 1)].copy_from_slice(&row[di * k..di * (k + 1)]);
            }
        });
        g = out;
    }
    g
}

/// Distances from each surface voxel of `from` to the nearest surface voxel of `to`.
fn directed_surface_distances(
    from_surface: &[bool],
    to_surface: &[bool],
    dims: [usize; 3],
    spacing: [f64; 3],
) -> Vec<f64> {
    let g = edt_squared(to_surface, dims, spacing);
    from_surface
        .iter()
        .zip(&g)
        .filter(|(s, _)| **s)
        .map(|(_, &d2)| d2.sqrt())
        .collect()
}

/// numpy `percentile(values, q)` with the default linear interpolation.
pub(crate) fn percentile_linear(values: &mut [f64], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let pos = q / 100.0 * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let t = pos - lo as f64;
    let (_, &mut a, rest) = values.select_nth_unstable_by(lo, |x, y| x.total_cmp(y));
    if t == 0.0 || rest.is_empty() {
        return a;
    }
    let b = rest.iter().cloned().fold(f64::INFINITY, f64::min);
    // numpy's _lerp: a + (b - a) t, computed from the nearer end.
    if t >= 0.5 {
        b - (b - a) * (1.0 - t)
    } else {
        a + (b - a) * t
    }
}

/// HD95 of two non-empty, overlapping masks.
fn hd95(pred: &[bool], reference: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> f64 {
    let Some((lo, hi)) = bbox_union(pred, reference, dims) else {
        return f64::NAN;
    };
    let cd = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
    // Outside the box both masks are empty, so surfaces computed in the box (box border =
    // background) equal those of the full grid.
    let p = crop_mask(pred, dims, lo, hi);
    let r = crop_mask(reference, dims, lo, hi);
    let (sp, sr) = rayon::join(|| surface(&p, cd), || surface(&r, cd));
    let (mut d1, d2) = rayon::join(
        || directed_surface_distances(&sp, &sr, cd, spacing),
        || directed_surface_distances(&sr, &sp, cd, spacing),
    );
    d1.extend(d2);
    percentile_linear(&mut d1, 95.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti_io::read_labels;
    use crate::nifti_io::test_support::{TempDir, brats_sample_dir};
    use crate::volume::linear_index;
    use serde_json::Value;

    const TOL: f64 = 1e-4;

    /// Expected value from the JSON: number, null → NaN, "inf" → +∞.
    fn expected(v: &Value) -> f64 {
        match v {
            Value::Null => f64::NAN,
            Value::String(s) if s == "inf" => f64::INFINITY,
            v => v.as_f64().expect("number"),
        }
    }

    fn close(got: f64, want: f64) -> bool {
        (got.is_nan() && want.is_nan()) || got == want || (got - want).abs() < TOL
    }

    fn reference_json() -> Value {
        let text =
            std::fs::read_to_string(brats_sample_dir().join("metric_reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The synthetic 32³ reference volume of `metric_reference.json` (BraTS 2018 labels):
    /// label 2 on [8,24)³, 1 on [11,21)³, 4 on [13,19)³ (optional), array axes (a0, a1, a2)
    /// = (i, j, k).
    fn synthetic_reference(with_et: bool) -> Vec<u8> {
        let dims = [32; 3];
        let mut v = vec![0u8; 32 * 32 * 32];
        let mut fill = |lo: usize, hi: usize, l: u8| {
            for k in lo..hi {
                for j in lo..hi {
                    for i in lo..hi {
                        v[linear_index(dims, i, j, k)] = l;
                    }
                }
            }
        };
        fill(8, 24, 2);
        fill(11, 21, 1);
        if with_et {
            fill(13, 19, 4);
        }
        v
    }

    /// `pred[1:] = ref[:-1], pred[0] = 0` along array axis 0 (= i).
    fn shift_axis0(v: &[u8], dims: [usize; 3]) -> Vec<u8> {
        let mut out = vec![0u8; v.len()];
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 1..dims[0] {
                    out[linear_index(dims, i, j, k)] = v[linear_index(dims, i - 1, j, k)];
                }
            }
        }
        out
    }

    fn check(name: &str, got: &CaseMetrics, results: &Value) {
        for r in Region::ALL {
            let key = r.name().to_lowercase();
            let want_d = expected(&results[&key]["global_bin_dsc"]);
            let want_h = expected(&results[&key]["global_bin_hd95"]);
            assert!(
                close(got.dice(r), want_d),
                "{name} {key} dice {} vs {want_d}",
                got.dice(r)
            );
            assert!(
                close(got.hd95(r), want_h),
                "{name} {key} hd95 {} vs {want_h}",
                got.hd95(r)
            );
        }
    }

    #[test]
    fn synthetic_cases_match_metric_reference_json() {
        let json = reference_json();
        let cases = &json["synthetic_cases"];
        let dims = [32; 3];
        let c = LabelConvention::Brats2018;
        let full = synthetic_reference(true);
        let no_et = synthetic_reference(false);
        let shifted = shift_axis0(&full, dims);
        let shifted_no_et = shift_axis0(&no_et, dims);
        let mut disjoint = no_et.clone();
        for k in 2..5 {
            for j in 2..5 {
                for i in 2..5 {
                    disjoint[linear_index(dims, i, j, k)] = 4;
                }
            }
        }
        let runs: [(&str, &[u8], &[u8]); 5] = [
            ("A_shift1", &shifted, &full),
            ("B_pred_no_et", &shifted_no_et, &full),
            ("C_both_no_et", &no_et, &no_et),
            ("D_ref_no_et", &full, &no_et),
            ("E_et_disjoint", &disjoint, &full),
        ];
        for (name, pred, reference) in runs {
            let m = evaluate_case(pred, reference, dims, [1.0; 3], c).unwrap();
            check(name, &m, &cases[name]["results"]);
        }
        // The same through the BraTS 2023 convention (ET = 3), as the official tool saw it.
        let to23 = |v: &[u8]| {
            let mut v = v.to_vec();
            c.convert_to(LabelConvention::Brats2023, &mut v);
            v
        };
        let m = evaluate_case(
            &to23(&shifted),
            &to23(&full),
            dims,
            [1.0; 3],
            LabelConvention::Brats2023,
        )
        .unwrap();
        check("A_shift1 (2023 labels)", &m, &cases["A_shift1"]["results"]);
    }

    #[test]
    fn real_case_shifted_matches_metric_reference_json() {
        let json = reference_json();
        let path = brats_sample_dir()
            .join("Brats18_2013_2_1")
            .join("Brats18_2013_2_1_seg.nii.gz");
        let (labels, dims, h) = read_labels(&path, LabelConvention::Brats2018).unwrap();
        let pred = shift_axis0(&labels, dims);
        let t = std::time::Instant::now();
        let m = evaluate_case(
            &pred,
            &labels,
            dims,
            h.spacing(),
            LabelConvention::Brats2018,
        )
        .unwrap();
        eprintln!("evaluate_case on the real case: {:?}", t.elapsed());
        check("real_case", &m, &json["real_case"]["results"]);
        // Full-grid worst case: a whole-volume prediction against the reference.
        let all = vec![2u8; labels.len()];
        let t = std::time::Instant::now();
        let m = evaluate_case(&all, &labels, dims, [1.0; 3], LabelConvention::Brats2018).unwrap();
        eprintln!("evaluate_case, whole-volume prediction: {:?}", t.elapsed());
        assert_eq!(m.dice_et, 0.0);
        assert_eq!(m.hd95_et, f64::INFINITY);
        assert!((m.dice_wt - 2.0 * 61085.0 / (61085.0 + labels.len() as f64)).abs() < 1e-12);
        assert!(m.hd95_wt.is_finite() && m.hd95_wt > 10.0);
    }

    /// Brute-force HD95 for small masks: all surface pairs.
    fn brute_hd95(p: &[bool], r: &[bool], dims: [usize; 3], sp: [f64; 3]) -> f64 {
        let sp_s = surface(p, dims);
        let sr_s = surface(r, dims);
        let pts = |s: &[bool]| -> Vec<[f64; 3]> {
            s.iter()
                .enumerate()
                .filter(|(_, b)| **b)
                .map(|(idx, _)| {
                    let q = crate::volume::ijk_of(dims, idx);
                    [
                        q[0] as f64 * sp[0],
                        q[1] as f64 * sp[1],
                        q[2] as f64 * sp[2],
                    ]
                })
                .collect()
        };
        let (a, b) = (pts(&sp_s), pts(&sr_s));
        let dir = |x: &[[f64; 3]], y: &[[f64; 3]]| -> Vec<f64> {
            x.iter()
                .map(|u| {
                    y.iter()
                        .map(|w| {
                            ((u[0] - w[0]).powi(2) + (u[1] - w[1]).powi(2) + (u[2] - w[2]).powi(2))
                                .sqrt()
                        })
                        .fold(f64::INFINITY, f64::min)
                })
                .collect()
        };
        let mut d = dir(&a, &b);
        d.extend(dir(&b, &a));
        percentile_linear(&mut d, 95.0)
    }

    #[test]
    fn edt_hd95_equals_brute_force_on_random_blobs_with_anisotropic_spacing() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let dims = [13, 11, 9];
        for trial in 0..20 {
            let sp = [1.0, 0.7 + 0.1 * trial as f64, 2.5];
            let blob = |rng: &mut rand_chacha::ChaCha8Rng| {
                let c = [rng.random_range(3.0..10.0), rng.random_range(3.0..8.0), 4.0];
                let rad = rng.random_range(2.0..4.5f64);
                let mut m = vec![false; voxel_count(dims)];
                for (idx, x) in m.iter_mut().enumerate() {
                    let q = crate::volume::ijk_of(dims, idx);
                    let d2: f64 = (0..3).map(|a| (q[a] as f64 - c[a]).powi(2)).sum();
                    *x = d2 < rad * rad || rng.random_bool(0.02);
                }
                m
            };
            let p = blob(&mut rng);
            let r = blob(&mut rng);
            let got = region_metrics(&p, &r, dims, sp.map(|s| s as f32)).unwrap();
            let sp32 = sp.map(|s| f64::from(s as f32));
            if got.hd95.is_finite() {
                let want = brute_hd95(&p, &r, dims, sp32);
                assert!(
                    (got.hd95 - want).abs() < 1e-9,
                    "trial {trial}: {} vs {want}",
                    got.hd95
                );
            }
        }
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        // np.percentile([1, 2, 3, 4, 10], 95) = 8.8; np.percentile([0, 1], 95) = 0.95.
        assert!((percentile_linear(&mut [10.0, 1.0, 3.0, 2.0, 4.0], 95.0) - 8.8).abs() < 1e-12);
        assert!((percentile_linear(&mut [1.0, 0.0], 95.0) - 0.95).abs() < 1e-12);
        assert_eq!(percentile_linear(&mut [5.0], 95.0), 5.0);
    }

    /// MONAI `tests/metrics/test_compute_meandice.py` (values by hand below). MONAI's
    /// `ignore_empty=True` gives NaN whenever the *reference* is empty; the BraTS
    /// convention here gives NaN only when both are empty (0 when only the reference is).
    #[test]
    fn monai_meandice_cases() {
        let b = |v: &[u8]| v.iter().map(|&x| x == 1).collect::<Vec<bool>>();
        // TEST_CASE_1: pred [[1,0],[0,1]], y [[1,0],[1,1]] → 2·2/(2+3) = 0.8.
        assert!((dice(&b(&[1, 0, 0, 1]), &b(&[1, 0, 1, 1])) - 0.8).abs() < 1e-12);
        // TEST_CASE_2 (no background): expected [[0.5, 0.0], [0.6667, 0.6667]].
        // batch 0, ch1: pred [0,0,1,1], y [1,0,1,0] → 2·1/4 = 0.5
        // batch 0, ch2: pred [1,0,0,0], y [0,1,0,0] → 0
        // batch 1, ch1: pred [1,0,0,0], y [1,1,0,0] → 2/3
        // batch 1, ch2: pred [0,1,1,0], y [0,0,1,0] → 2/3
        let cases = [
            ([0, 0, 1, 1], [1, 0, 1, 0], 0.5),
            ([1, 0, 0, 0], [0, 1, 0, 0], 0.0),
            ([1, 0, 0, 0], [1, 1, 0, 0], 2.0 / 3.0),
            ([0, 1, 1, 0], [0, 0, 1, 0], 2.0 / 3.0),
        ];
        for (p, y, want) in cases {
            assert!((dice(&b(&p), &b(&y)) - want).abs() < 1e-4);
        }
        // TEST_CASE_3, batch 0: ch0 pred empty / y full → 0 (MONAI: 0, not NaN);
        // ch1 both empty → NaN (MONAI: NaN); ch2 pred full / y empty → MONAI NaN, BraTS 0.
        assert_eq!(dice(&b(&[0, 0, 0, 0]), &b(&[1, 1, 1, 1])), 0.0);
        assert!(dice(&b(&[0, 0, 0, 0]), &b(&[0, 0, 0, 0])).is_nan());
        assert_eq!(dice(&b(&[1, 1, 1, 1]), &b(&[0, 0, 0, 0])), 0.0);
        // TEST_CASE_9: all ones → 1; TEST_CASE_12 (ignore_empty=False): y 0, pred 1 → 0.
        assert_eq!(dice(&[true; 9], &[true; 9]), 1.0);
        assert_eq!(dice(&[true; 9], &[false; 9]), 0.0);
        // nan-mean skips NaN (MeanDice reduction "mean" with not-nans).
        assert!((nan_mean([0.5, f64::NAN, 2.0 / 3.0]) - 0.5833333333).abs() < 1e-9);
        assert!(nan_mean([f64::NAN]).is_nan());
    }

    #[test]
    fn summary_json_uses_null_for_nan_and_inf_string_and_373_means() {
        let tmp = TempDir::new("summary");
        let a = CaseMetrics {
            dice_et: f64::NAN,
            dice_tc: 0.9,
            dice_wt: 0.8,
            hd95_et: f64::NAN,
            hd95_tc: 1.0,
            hd95_wt: 3.0,
        };
        let b = CaseMetrics {
            dice_et: 0.0,
            dice_tc: 0.7,
            dice_wt: 0.6,
            hd95_et: f64::INFINITY,
            hd95_tc: 2.0,
            hd95_wt: 5.0,
        };
        let means = mean_metrics(&[a, b]);
        assert_eq!(
            (means.et.dice, means.et.hd95, means.et.n_cases),
            (0.0, 373.0, 1)
        );
        assert!((means.tc.dice - 0.8).abs() < 1e-12 && means.wt.hd95 == 4.0);
        let p = tmp.path().join("summary.json");
        write_summary_json(&p, &[("a".into(), a), ("b".into(), b)], &means).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let pc = &v["metric_per_case"];
        assert_eq!(pc[0]["case"], "a");
        assert!(pc[0]["metrics"]["ET"]["Dice"].is_null());
        assert_eq!(pc[1]["metrics"]["ET"]["HD95"], "inf");
        assert_eq!(v["mean"]["ET"]["HD95"], 373.0);
        // CaseMetrics round-trips through serde with the same conventions.
        let s = serde_json::to_string(&b).unwrap();
        assert!(s.contains("\"hd95_et\":\"inf\""), "{s}");
        let back: CaseMetrics = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert!(back.dice_et.is_nan() && back.dice_tc == 0.9);
    }
}
