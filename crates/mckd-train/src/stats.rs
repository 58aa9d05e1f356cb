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

/// Survival function P(T > t) of Student's t with `dof` degrees of freedom.
pub fn student_t_sf(t: f64, dof: f64) -> f64 {
    let x = dof / (dof + t * t);
    let tail = 0.5 * reg_inc_beta(dof / 2.0, 0.5, x);
    if t >= 0.0 { tail } else { 1.0 - tail }
}

/// Regularised incomplete beta I_x(a, b) (continued fraction, Numerical Recipes §6.4).
fn reg_inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
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
