//! K-means (Lloyd's algorithm with k-means++ seeding, the best of several seeded restarts):
//! SMIL's modality priors are the k-means centroids of the paired samples' features of the
//! scarce modality (`sklearn.cluster.KMeans(10, random_state=0)` in SMIL's code).
//!
//! Differences from scikit-learn: plain k-means++ (one candidate per centre, not the greedy
//! variant with `2 + ln k` trials), convergence when no assignment changes, and an empty
//! cluster re-seeded at the point farthest from its centroid.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A clustering.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    /// `k` centroids of `dim` values each, row-major.
    pub centroids: Vec<f64>,
    /// The cluster of every point.
    pub labels: Vec<usize>,
    /// Sum of squared distances of the points to their centroids.
    pub inertia: f64,
}

/// Settings of [`kmeans`] that a caller could get wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KMeansError {
    /// `points.len()` is not a multiple of `dim`, or `dim` is 0.
    #[error("k-means: {len} values are not points of dimension {dim}")]
    Shape {
        /// Number of values.
        len: usize,
        /// Dimension asked for.
        dim: usize,
    },
    /// More clusters than points (or none).
    #[error("k-means: {k} clusters for {n} points (need 1 ≤ k ≤ points)")]
    Clusters {
        /// Clusters asked for.
        k: usize,
        /// Points given.
        n: usize,
    },
}

/// Clusters the `n = points.len() / dim` points (row-major) into `k` clusters: `restarts`
/// runs of Lloyd's algorithm (at most `max_iter` iterations each) from k-means++ seeds drawn
/// with `seed`; the run with the lowest inertia is kept (the first on ties).
pub fn kmeans(
    points: &[f64],
    dim: usize,
    k: usize,
    restarts: usize,
    max_iter: usize,
    seed: u64,
) -> Result<Clustering, KMeansError> {
    if dim == 0 || !points.len().is_multiple_of(dim) {
        return Err(KMeansError::Shape {
            len: points.len(),
            dim,
        });
    }
    let n = points.len() / dim;
    if k == 0 || k > n {
        return Err(KMeansError::Clusters { k, n });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut best: Option<Clustering> = None;
    for _ in 0..restarts.max(1) {
        let init = plus_plus(points, dim, k, &mut rng);
        let c = lloyd(points, dim, init, max_iter);
        if best.as_ref().is_none_or(|b| c.inertia < b.inertia) {
            best = Some(c);
        }
    }
    Ok(best.expect("at least one restart"))
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// k-means++ seeding: the first centre uniformly, each next one with probability
/// proportional to the squared distance to the nearest centre chosen so far.
pub fn plus_plus(points: &[f64], dim: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let n = points.len() / dim;
    let p = |i: usize| &points[i * dim..(i + 1) * dim];
    let mut centres = Vec::with_capacity(k * dim);
    centres.extend_from_slice(p(rng.random_range(0..n)));
    let mut d2: Vec<f64> = (0..n).map(|i| dist2(p(i), &centres[..dim])).collect();
    while centres.len() < k * dim {
        let total: f64 = d2.iter().sum();
        let pick = if total > 0.0 {
            let mut r = rng.random::<f64>() * total;
            // Rounding can leave r past the last weight: fall back on the last candidate.
            let mut chosen = d2.iter().rposition(|&w| w > 0.0).expect("total > 0");
            for (i, &w) in d2.iter().enumerate() {
                if r < w {
                    chosen = i;
                    break;
                }
                r -= w;
            }
            chosen
        } else {
            // Every point sits on a centre (duplicates): any point will do.
            rng.random_range(0..n)
        };
        let c = p(pick).to_vec();
        for (i, d) in d2.iter_mut().enumerate() {
            *d = d.min(dist2(p(i), &c));
        }
        centres.extend(c);
    }
    centres
}

/// Lloyd's iterations from `centroids` until no assignment changes (or `max_iter`).
fn lloyd(points: &[f64], dim: usize, mut centroids: Vec<f64>, max_iter: usize) -> Clustering {
    let n = points.len() / dim;
    let k = centroids.len() / dim;
    let p = |i: usize| &points[i * dim..(i + 1) * dim];
    let mut labels = vec![usize::MAX; n];
    for _ in 0..max_iter.max(1) {
        let mut changed = false;
        for (i, label) in labels.iter_mut().enumerate() {
            let nearest = (0..k)
                .map(|c| (c, dist2(p(i), &centroids[c * dim..(c + 1) * dim])))
                .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a })
                .0;
            if *label != nearest {
                *label = nearest;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sums = vec![0.0; k * dim];
        let mut counts = vec![0usize; k];
        for (i, &l) in labels.iter().enumerate() {
            counts[l] += 1;
            for (s, x) in sums[l * dim..(l + 1) * dim].iter_mut().zip(p(i)) {
                *s += x;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for j in 0..dim {
                    centroids[c * dim + j] = sums[c * dim + j] / counts[c] as f64;
                }
            } else {
                // An empty cluster takes the point farthest from its own centroid.
                let far = (0..n)
                    .max_by(|&a, &b| {
                        let da = dist2(p(a), &centroids[labels[a] * dim..(labels[a] + 1) * dim]);
                        let db = dist2(p(b), &centroids[labels[b] * dim..(labels[b] + 1) * dim]);
                        da.total_cmp(&db)
                    })
                    .expect("points");
                centroids[c * dim..(c + 1) * dim].copy_from_slice(p(far));
            }
        }
    }
    let inertia = (0..n)
        .map(|i| dist2(p(i), &centroids[labels[i] * dim..(labels[i] + 1) * dim]))
        .sum();
    Clustering {
        centroids,
        labels,
        inertia,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three tight blobs around (0, 0), (10, 0) and (0, 10): k = 3 recovers them, and the
    /// centroids are the blob means.
    #[test]
    fn recovers_a_known_clustering() {
        let offsets = [(0.3, -0.2), (-0.4, 0.1), (0.1, 0.5), (0.0, -0.4)];
        let centres = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)];
        let mut points = Vec::new();
        for &(cx, cy) in &centres {
            for &(dx, dy) in &offsets {
                points.extend([cx + dx, cy + dy]);
            }
        }
        let c = kmeans(&points, 2, 3, 5, 100, 0).unwrap();
        for (blob, &(cx, cy)) in centres.iter().enumerate() {
            let l = &c.labels[blob * 4..blob * 4 + 4];
            assert!(l.iter().all(|&x| x == l[0]), "blob {blob} split: {l:?}");
            // Mean of the offsets: (0.0, 0.0).
            let got = &c.centroids[l[0] * 2..l[0] * 2 + 2];
            assert!((got[0] - cx).abs() < 1e-12 && (got[1] - cy).abs() < 1e-12);
        }
        let mut distinct = c.labels.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3);
        // Inertia: 3 blobs × Σ offsets² = 3 × (0.13 + 0.17 + 0.26 + 0.16) = 2.16.
        assert!((c.inertia - 2.16).abs() < 1e-12, "{}", c.inertia);
    }

    /// On a small 1-D set the best of the restarts reaches the optimum found by trying every
    /// split into two non-empty groups.
    #[test]
    fn restarts_reach_the_brute_force_optimum() {
        let points = [0.0, 1.0, 1.5, 4.0, 6.0, 6.2, 9.0];
        let n = points.len();
        let mut best = f64::INFINITY;
        for bits in 1u32..(1 << n) - 1 {
            let mut inertia = 0.0;
            for side in [0, 1] {
                let g: Vec<f64> = (0..n)
                    .filter(|&i| (bits >> i & 1) as usize == side)
                    .map(|i| points[i])
                    .collect();
                let m = g.iter().sum::<f64>() / g.len() as f64;
                inertia += g.iter().map(|x| (x - m) * (x - m)).sum::<f64>();
            }
            best = best.min(inertia);
        }
        let c = kmeans(&points, 1, 2, 10, 100, 7).unwrap();
        assert!((c.inertia - best).abs() < 1e-12, "{} vs {best}", c.inertia);
    }

    #[test]
    fn plus_plus_picks_distinct_points_and_same_seed_same_result() {
        let points: Vec<f64> = (0..20).map(|i| f64::from(i * i % 7)).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let init = plus_plus(&points, 2, 4, &mut rng);
        let centres: Vec<&[f64]> = init.chunks(2).collect();
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(centres[i], centres[j], "k-means++ chose a point twice");
            }
        }
        let a = kmeans(&points, 2, 4, 3, 50, 11).unwrap();
        let b = kmeans(&points, 2, 4, 3, 50, 11).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(matches!(
            kmeans(&[1.0, 2.0, 3.0], 2, 1, 1, 10, 0),
            Err(KMeansError::Shape { .. })
        ));
        assert!(matches!(
            kmeans(&[1.0, 2.0], 1, 3, 1, 10, 0),
            Err(KMeansError::Clusters { k: 3, n: 2 })
        ));
    }
}
