//! Axis ranges, "nice" tick steps (1, 2, 5 × 10^k) and tick-label formatting.

/// A numeric axis: its value range and labelled ticks inside it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<f64>,
    pub labels: Vec<String>,
}

impl Axis {
    /// Maps `v` to a pixel coordinate along `[p0, p1]` (`p0` at `lo`).
    pub fn map(&self, v: f64, p0: f64, p1: f64) -> f64 {
        p0 + (v - self.lo) / (self.hi - self.lo) * (p1 - p0)
    }
}

/// The smallest step of the form {1, 2, 5} × 10^k giving at most about `target` intervals.
pub(crate) fn nice_step(span: f64, target: usize) -> f64 {
    let raw = span / target.max(1) as f64;
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * base)
}

/// Multiples of `step` inside `[lo, hi]` (values within rounding of zero snap to 0).
pub(crate) fn ticks_in(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last)
        .map(|i| i as f64 * step)
        .map(|t| if t.abs() < step * 1e-9 { 0.0 } else { t })
        .collect()
}

/// Formats ticks uniformly: fixed decimals enough for `step`, or scientific (`5e-7`,
/// `1.5e7`) when magnitudes are huge (≥ 1e6) or the step is tiny (< 1e-4).
pub(crate) fn format_ticks(ticks: &[f64], step: f64) -> Vec<String> {
    let max_abs = ticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
    let k = (step.log10() + 1e-9).floor() as i32;
    if max_abs < 1e6 && k >= -4 {
        let d = (-k).max(0) as usize;
        return ticks.iter().map(|t| format!("{t:.d$}")).collect();
    }
    // Least precision that represents every tick to 1% of a step.
    let ok = |p: usize| {
        ticks.iter().all(|&t| {
            format!("{t:.p$e}")
                .parse::<f64>()
                .is_ok_and(|v| (v - t).abs() <= step * 0.01)
        })
    };
    let p = (0..=12).find(|&p| ok(p)).unwrap_or(12);
    ticks
        .iter()
        .map(|&t| {
            if t == 0.0 {
                "0".into()
            } else {
                format!("{t:.p$e}")
            }
        })
        .collect()
}

/// `[min, max]` widened by `pad` (a fraction of the span) on both sides; a degenerate range
/// (single value) becomes ±10 % of the value, or ±1 around zero.
pub(crate) fn padded(min: f64, max: f64, pad: f64) -> (f64, f64) {
    let scale = min.abs().max(max.abs());
    if max - min <= scale * 1e-12 {
        let c = 0.5 * (min + max);
        let half = if c == 0.0 { 1.0 } else { c.abs() * 0.1 };
        return (c - half, c + half);
    }
    let p = (max - min) * pad;
    (min - p, max + p)
}

/// Builds an axis over `[lo, hi]` spanning `len_px` pixels, starting from `target` intervals
/// and coarsening until the pixel spacing between ticks is at least `need(labels)`.
pub(crate) fn fit(
    lo: f64,
    hi: f64,
    len_px: f64,
    target: usize,
    need: impl Fn(&[String]) -> f64,
) -> Axis {
    let mut target = target.max(2);
    loop {
        let step = nice_step(hi - lo, target);
        let ticks = ticks_in(lo, hi, step);
        let labels = format_ticks(&ticks, step);
        if target == 2 || step / (hi - lo) * len_px >= need(&labels) {
            return Axis {
                lo,
                hi,
                ticks,
                labels,
            };
        }
        target -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_are_one_two_five_times_a_power_of_ten() {
        assert_eq!(nice_step(10.0, 5), 2.0);
        assert_eq!(nice_step(1.0, 4), 0.5);
        assert_eq!(nice_step(100.0, 10), 10.0);
        assert!((nice_step(0.003, 6) - 0.0005).abs() < 1e-15);
        assert_eq!(nice_step(7e9, 7), 1e9);
    }

    #[test]
    fn ticks_cover_the_range_and_snap_zero() {
        assert_eq!(
            ticks_in(-0.05, 1.05, 0.2),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks_in(-0.3, 0.3, 0.1);
        assert_eq!(t.len(), 7);
        assert_eq!(t[3], 0.0);
    }

    #[test]
    fn labels_use_decimals_or_scientific_by_magnitude() {
        let f = |lo, hi, step| format_ticks(&ticks_in(lo, hi, step), step);
        assert_eq!(f(0.0, 1.0, 0.25 * 2.0), ["0.0", "0.5", "1.0"]);
        assert_eq!(f(0.0, 100.0, 50.0), ["0", "50", "100"]);
        assert_eq!(f(0.0, 0.002, 0.001), ["0.000", "0.001", "0.002"]);
        assert_eq!(f(-1.0, 1.0, 1.0), ["-1", "0", "1"]);
        assert_eq!(f(0.0, 2e-6, 1e-6), ["0", "1e-6", "2e-6"]);
        assert_eq!(
            f(0.0, 3e-6, 5e-7),
            [
                "0", "5.0e-7", "1.0e-6", "1.5e-6", "2.0e-6", "2.5e-6", "3.0e-6"
            ]
        );
        assert_eq!(f(0.0, 2e9, 1e9), ["0", "1e9", "2e9"]);
        assert_eq!(
            f(1e6, 1e6 + 4.0, 2.0),
            ["1.000000e6", "1.000002e6", "1.000004e6"]
        );
    }

    #[test]
    fn padded_handles_degenerate_ranges() {
        assert_eq!(padded(0.0, 0.0, 0.05), (-1.0, 1.0));
        let (a, b) = padded(5.0, 5.0, 0.05);
        assert!((a - 4.5).abs() < 1e-12 && (b - 5.5).abs() < 1e-12);
        assert_eq!(padded(0.0, 10.0, 0.1), (-1.0, 11.0));
        let (a, b) = padded(1e-9, 1e-9, 0.0);
        assert!(a < 1e-9 && b > 1e-9);
    }

    #[test]
    fn fit_coarsens_until_labels_have_room() {
        let ax = fit(0.0, 1000.0, 200.0, 20, |l| {
            l.iter().map(|s| s.len() as f64 * 12.0).fold(0.0, f64::max) + 10.0
        });
        let spacing = (ax.ticks[1] - ax.ticks[0]) / 1000.0 * 200.0;
        assert!(spacing >= 58.0, "{ax:?}");
        assert_eq!(ax.map(500.0, 0.0, 200.0), 100.0);
    }
}
