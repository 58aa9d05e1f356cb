//! Small statistics: mean ± std and the one-tailed paired t-test.

/// Mean and sample standard deviation (n − 1); NaNs are skipped. `(NaN, NaN)` when empty.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// One-tailed paired t-test of H1: mean(a − b) > 0. Returns `(t, p)`; pairs with a NaN are
/// dropped; `None` with fewer than two pairs. Identical samples give `t = 0, p = 0.5`;
/// a constant non-zero difference gives `t = ±∞` and `p` 0 or 1.
pub fn paired_t_test_greater(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    let d: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| x - y)
        .filter(|v| !v.is_nan())
        .collect();
    if d.len() < 2 {
        return None;
    }
    let (mean, sd) = mean_std(&d);
    let dof = (d.len() - 1) as f64;
    if sd == 0.0 {
        return Some(if mean > 0.0 {
            (f64::INFINITY, 0.0)
        } else if mean < 0.0 {
            (f64::NEG_INFINITY, 1.0)
        } else {
            (0.0, 0.5)
        });
    }
    let t = mean / (sd / (d.len() as f64).sqrt());
    Some((t, student_t_sf(t, dof)))
}

/// Survival function P(T > t) of Student's t with `dof` degrees of freedom (statrs).
pub fn student_t_sf(t: f64, dof: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    match StudentsT::new(0.0, 1.0, dof) {
        Ok(dist) => dist.sf(t),
        // Only a dof ≤ 0 or NaN gets here; the t-test never passes one.
        Err(_) => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_test_matches_scipy() {
        // from scipy import stats
        // a = [95.1, 94.2, 96.0, 94.9, 95.5]; b = [94.0, 94.5, 95.1, 94.2, 94.8]
        // stats.ttest_rel(a, b, alternative='greater')
        // -> statistic=2.5655782546673547, pvalue=0.031134660731018525
        let a = [95.1, 94.2, 96.0, 94.9, 95.5];
        let b = [94.0, 94.5, 95.1, 94.2, 94.8];
        let (t, p) = paired_t_test_greater(&a, &b).unwrap();
        assert!((t - 2.565_578_254_667_354_7).abs() < 1e-5, "{t}");
        assert!((p - 0.031_134_660_731_018_5).abs() < 1e-5, "{p}");
        let (_, p_rev) = paired_t_test_greater(&b, &a).unwrap();
        assert!((p_rev - (1.0 - 0.031_134_660_731_018_5)).abs() < 1e-5);
    }

    #[test]
    fn t_distribution_reference_points() {
        // scipy.stats.t.sf(1.0, 1) = 0.25 (Cauchy); t.sf(2.0, 10) = 0.036694017385370196
        assert!((student_t_sf(1.0, 1.0) - 0.25).abs() < 1e-10);
        assert!((student_t_sf(2.0, 10.0) - 0.036_694_017_385_370_2).abs() < 1e-9);
        assert!((student_t_sf(0.0, 4.0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(paired_t_test_greater(&[1.0], &[0.0]), None);
        assert_eq!(
            paired_t_test_greater(&[1.0, 2.0], &[1.0, 2.0]),
            Some((0.0, 0.5))
        );
        let (m, s) = mean_std(&[1.0, f64::NAN, 3.0]);
        assert_eq!((m, s), (2.0, std::f64::consts::SQRT_2));
    }
}
