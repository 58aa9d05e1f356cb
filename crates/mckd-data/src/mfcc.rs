//! SMIL's MFCC features (mengmenm/SMIL `utils/wav2mfcc.py`, librosa 0.7.0), in plain f64.
//!
//! Pipeline, exactly as spelled out in the kit's `reference_mfcc.json`:
//!
//! 1. input: 8 kHz samples as `int16 / 32768`;
//! 2. decimate `wave[::3]` (no filter, from sample 0; length `L = ceil(N / 3)`), while the
//!    sampling rate is still *declared* 8000 Hz for everything below;
//! 3. centred STFT: reflect-pad 1024 samples each side with numpy `np.pad(mode="reflect")`
//!    semantics, which for a pad longer than the signal repeats the mirror: the padded signal
//!    is the even periodic extension of `y` with period `2 (L - 1)` (edges not repeated);
//!    frames of 2048 samples every 512 (`1 + L / 512` frames), periodic Hann window
//!    `0.5 - 0.5 cos(2 pi n / 2048)`, power spectrum `|rfft|^2` (1025 bins);
//! 4. 128 mel bands, Slaney scale (linear 200/3 Hz per mel below 1 kHz, log step
//!    `ln(6.4) / 27` above), 0..4000 Hz, triangular filters with Slaney area normalisation
//!    `2 / (f[i + 2] - f[i])`;
//! 5. `power_to_db`: `10 log10(max(1e-10, S))` (ref 1.0), then clipped below at
//!    `max(whole 128 x frames matrix) - 80`;
//! 6. orthonormal DCT-II over the 128 mel values of each frame, first 20 coefficients, no
//!    lifter;
//! 7. right-pad with zero columns to 20 frames.
//!
//! The FFT is an in-crate iterative radix-2 complex FFT of size 2048. All arithmetic is f64;
//! the kit reports that such an implementation matches librosa 0.7.0 (float32) to 5.6e-5
//! absolute on all 1,500 files (values range from about -593 to +83).
//!
//! # Shapes
//! [`Mfcc`] is `[coefficient k][frame t]` = `[20][20]`; columns `t >= smil_mfcc_frames(N)` are
//! zero.

use std::f64::consts::PI;
use std::sync::OnceLock;

/// Number of MFCC coefficients kept (rows).
pub const N_MFCC: usize = 20;
/// Number of frames after zero padding (columns).
pub const MAX_FRAMES: usize = 20;
/// FFT size (= window length).
pub const N_FFT: usize = 2048;
/// Hop between frames, in decimated samples.
pub const HOP: usize = 512;
/// Number of mel bands.
pub const N_MELS: usize = 128;
/// Sampling rate declared to the mel filterbank (the decimation is not accounted for).
pub const DECLARED_SR: f64 = 8000.0;
/// Decimation step applied to the 8 kHz samples.
pub const DECIMATION: usize = 3;

const N_BINS: usize = N_FFT / 2 + 1;
const AMIN: f64 = 1e-10;
const TOP_DB: f64 = 80.0;

/// MFCC matrix, `m[k][t]`: coefficient row `k` (0..20), frame column `t` (0..20).
pub type Mfcc = [[f32; MAX_FRAMES]; N_MFCC];

/// Number of unpadded frames SMIL's MFCC has for a recording of `n_samples_8khz` samples:
/// `1 + ceil(n / 3) / 512`, or 0 for an empty recording. SMIL's padding step fails above 20.
pub fn smil_mfcc_frames(n_samples_8khz: usize) -> usize {
    if n_samples_8khz == 0 {
        0
    } else {
        1 + n_samples_8khz.div_ceil(DECIMATION) / HOP
    }
}

/// Slaney mel of a frequency in Hz (librosa `hz_to_mel(htk=False)`).
fn hz_to_mel(f: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    if f >= 1000.0 {
        1000.0 / f_sp + (f / 1000.0).ln() / (6.4f64.ln() / 27.0)
    } else {
        f / f_sp
    }
}

/// Frequency in Hz of a Slaney mel (librosa `mel_to_hz(htk=False)`).
fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_mel = 1000.0 / f_sp;
    if m >= min_log_mel {
        1000.0 * ((6.4f64.ln() / 27.0) * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// The 130 mel band edges in Hz (librosa `mel_frequencies(130, 0, 4000)`): `numpy.linspace`
/// in mel between `mel(0)` and `mel(4000)`, mapped back to Hz.
pub fn mel_band_edges_hz() -> Vec<f64> {
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(DECLARED_SR / 2.0));
    let n = N_MELS + 2;
    let step = (hi - lo) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            let m = if i == n - 1 { hi } else { lo + i as f64 * step };
            mel_to_hz(m)
        })
        .collect()
}

/// The Slaney-normalised mel filterbank, `[128][1025]` (librosa `filters.mel(8000, 2048)`).
pub fn mel_filterbank() -> Vec<Vec<f64>> {
    let edges = mel_band_edges_hz();
    let fft_freq = |k: usize| k as f64 * (DECLARED_SR / 2.0) / (N_BINS - 1) as f64;
    (0..N_MELS)
        .map(|i| {
            let (f0, f1, f2) = (edges[i], edges[i + 1], edges[i + 2]);
            let enorm = 2.0 / (f2 - f0);
            (0..N_BINS)
                .map(|k| {
                    let f = fft_freq(k);
                    let lower = (f - f0) / (f1 - f0);
                    let upper = (f2 - f) / (f2 - f1);
                    lower.min(upper).max(0.0) * enorm
                })
                .collect()
        })
        .collect()
}

/// Precomputed tables shared by all calls.
struct Plan {
    window: Vec<f64>,
    /// `exp(-2 pi i k / N_FFT)` for `k < N_FFT / 2`.
    twiddle: Vec<(f64, f64)>,
    bitrev: Vec<usize>,
    /// Per mel band: first non-zero bin and the non-zero weights from there.
    mel: Vec<(usize, Vec<f64>)>,
    /// `[N_MFCC][N_MELS]` orthonormal DCT-II rows.
    dct: Vec<[f64; N_MELS]>,
}

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let window = (0..N_FFT)
            .map(|n| 0.5 - 0.5 * (2.0 * PI * n as f64 / N_FFT as f64).cos())
            .collect();
        let twiddle = (0..N_FFT / 2)
            .map(|k| {
                let a = -2.0 * PI * k as f64 / N_FFT as f64;
                (a.cos(), a.sin())
            })
            .collect();
        let bits = N_FFT.trailing_zeros();
        let bitrev = (0..N_FFT)
            .map(|i| i.reverse_bits() >> (usize::BITS - bits))
            .collect();
        let mel = mel_filterbank()
            .into_iter()
            .map(|row| {
                let first = row.iter().position(|&w| w > 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w > 0.0).map_or(first, |l| l + 1);
                (first, row[first..last].to_vec())
            })
            .collect();
        let dct = (0..N_MFCC)
            .map(|k| {
                let scale = if k == 0 {
                    (1.0 / N_MELS as f64).sqrt()
                } else {
                    (2.0 / N_MELS as f64).sqrt()
                };
                let mut row = [0.0; N_MELS];
                for (m, r) in row.iter_mut().enumerate() {
                    *r = scale * (PI * k as f64 * (2 * m + 1) as f64 / (2 * N_MELS) as f64).cos();
                }
                row
            })
            .collect();
        Plan {
            window,
            twiddle,
            bitrev,
            mel,
            dct,
        }
    })
}

/// In-place iterative radix-2 FFT of size `N_FFT` on split real/imaginary buffers.
fn fft(plan: &Plan, re: &mut [f64], im: &mut [f64]) {
    let n = re.len();
    debug_assert_eq!(n, N_FFT);
    for i in 0..n {
        let j = plan.bitrev[i];
        if j > i {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let half = len / 2;
        let stride = n / len;
        for start in (0..n).step_by(len) {
            for k in 0..half {
                let (wr, wi) = plan.twiddle[k * stride];
                let (a, b) = (start + k, start + k + half);
                let xr = re[b] * wr - im[b] * wi;
                let xi = re[b] * wi + im[b] * wr;
                re[b] = re[a] - xr;
                im[b] = im[a] - xi;
                re[a] += xr;
                im[a] += xi;
            }
        }
        len *= 2;
    }
}

/// Index into `y` (length `len >= 1`) of position `i` of numpy's reflect padding, i.e. the
/// even periodic extension with period `2 (len - 1)`.
fn reflect_index(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let r = i.rem_euclid(period);
    if r < len as isize {
        r as usize
    } else {
        (period - r) as usize
    }
}

/// Mel power spectrogram `[frames][128]` of the decimated signal `y` (non-empty).
fn mel_power(y: &[f64]) -> Vec<[f64; N_MELS]> {
    let plan = plan();
    let n_frames = 1 + y.len() / HOP;
    let pad = (N_FFT / 2) as isize;
    let mut re = vec![0.0; N_FFT];
    let mut im = vec![0.0; N_FFT];
    let mut power = vec![0.0; N_BINS];
    (0..n_frames)
        .map(|t| {
            let offset = (t * HOP) as isize - pad;
            for n in 0..N_FFT {
                re[n] = y[reflect_index(offset + n as isize, y.len())] * plan.window[n];
                im[n] = 0.0;
            }
            fft(plan, &mut re, &mut im);
            for (k, p) in power.iter_mut().enumerate() {
                *p = re[k] * re[k] + im[k] * im[k];
            }
            let mut mel = [0.0; N_MELS];
            for (m, (first, w)) in mel.iter_mut().zip(&plan.mel) {
                *m = w.iter().zip(&power[*first..]).map(|(a, b)| a * b).sum();
            }
            mel
        })
        .collect()
}

/// Log-mel matrix `[frames][128]` in dB after the top-80-dB clip (librosa `power_to_db`).
/// Empty input gives no frames.
pub(crate) fn log_mel_db(samples_8khz: &[f32]) -> Vec<[f64; N_MELS]> {
    let y: Vec<f64> = samples_8khz
        .iter()
        .step_by(DECIMATION)
        .map(|&v| f64::from(v))
        .collect();
    if y.is_empty() {
        return Vec::new();
    }
    let mut db = mel_power(&y);
    let mut max = f64::NEG_INFINITY;
    for v in db.iter_mut().flatten() {
        *v = 10.0 * v.max(AMIN).log10();
        max = max.max(*v);
    }
    for v in db.iter_mut().flatten() {
        *v = v.max(max - TOP_DB);
    }
    db
}

/// SMIL's 20x20 MFCC of one FSDD recording given as 8 kHz samples (`int16 / 32768`).
///
/// See the module doc for the pipeline. Columns beyond the recording's
/// [`smil_mfcc_frames`] are zero. An empty input gives the all-zero matrix. Recordings with
/// more than 20 frames (over ~30,700 samples; SMIL would raise) keep their first 20 frames;
/// the top-80-dB clip still uses all frames, as librosa does before the padding step.
///
/// # Shapes
/// input `[n]` at 8 kHz -> output `[20 coefficients][20 frames]`.
pub fn smil_mfcc(samples_8khz: &[f32]) -> Mfcc {
    let plan = plan();
    let db = log_mel_db(samples_8khz);
    let mut out = [[0.0f32; MAX_FRAMES]; N_MFCC];
    for (t, frame) in db.iter().take(MAX_FRAMES).enumerate() {
        for (k, row) in plan.dct.iter().enumerate() {
            out[k][t] = row.iter().zip(frame).map(|(a, b)| a * b).sum::<f64>() as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{data_dir, reference_json};
    use crate::wav::read_wav;
    use serde_json::Value;
    use std::time::Instant;

    fn f64s(v: &Value) -> Vec<f64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect()
    }

    #[test]
    fn reflect_padding_is_numpy_reflect() {
        // np.pad([0,1,2,3], 6, mode="reflect") = [0 1 2 3 2 1 | 0 1 2 3 | 2 1 0 1 2 3]
        let got: Vec<usize> = (-6..10).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3]);
        assert_eq!(reflect_index(-5, 1), 0);
    }

    #[test]
    fn fft_matches_naive_dft() {
        let plan = plan();
        let x: Vec<f64> = (0..N_FFT)
            .map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0)
            .collect();
        let (mut re, mut im) = (x.clone(), vec![0.0; N_FFT]);
        fft(plan, &mut re, &mut im);
        for k in [0usize, 1, 5, 511, 1024, 2047] {
            let (mut sr, mut si) = (0.0, 0.0);
            for (n, v) in x.iter().enumerate() {
                let a = -2.0 * PI * (k * n % N_FFT) as f64 / N_FFT as f64;
                sr += v * a.cos();
                si += v * a.sin();
            }
            assert!(
                (re[k] - sr).abs() < 1e-9 && (im[k] - si).abs() < 1e-9,
                "bin {k}"
            );
        }
    }

    #[test]
    fn frame_counts() {
        assert_eq!(smil_mfcc_frames(0), 0);
        assert_eq!(smil_mfcc_frames(1149), 1);
        assert_eq!(smil_mfcc_frames(5148), 4);
        assert_eq!(smil_mfcc_frames(18262), 12);
        assert_eq!(smil_mfcc(&[]), [[0.0; MAX_FRAMES]; N_MFCC]);
    }

    /// Mel band edges, filterbank row 0 / row 127 and log-mel intermediates of 0_jackson_0.
    #[test]
    fn intermediates_match_reference() {
        let r = reference_json();
        let im = &r["intermediates_0_jackson_0"];
        let edges = mel_band_edges_hz();
        let want = f64s(&im["mel_band_edges_hz"]);
        assert_eq!(edges.len(), want.len());
        for (a, b) in edges.iter().zip(&want) {
            assert!((a - b).abs() < 1e-9 * b.max(1.0), "edge {a} vs {b}");
        }
        let fb = mel_filterbank();
        assert_eq!((fb.len(), fb[0].len()), (128, 1025));
        let row0 = im["melbank_row0_nonzero"].as_object().unwrap();
        let nz: Vec<usize> = (0..1025).filter(|&k| fb[0][k] != 0.0).collect();
        assert_eq!(nz.len(), row0.len());
        for (k, v) in row0 {
            let k: usize = k.parse().unwrap();
            let v = v.as_f64().unwrap();
            assert!((fb[0][k] - v).abs() < 1e-6 * v.abs().max(1e-3), "row0[{k}]");
        }
        let nz127: Vec<usize> = (0..1025).filter(|&k| fb[127][k] != 0.0).collect();
        assert_eq!(
            nz127.len() as u64,
            im["melbank_row127_nonzero_count"].as_u64().unwrap()
        );
        let first = f64s(&im["melbank_row127_first_nonzero"]);
        assert_eq!(nz127[0], first[0] as usize);
        assert!((fb[127][nz127[0]] - first[1]).abs() < 1e-9);
        assert!(
            fb.iter().all(|row| row.iter().any(|&w| w > 0.0)),
            "empty mel row"
        );

        let w = read_wav(&data_dir().join("avmnist/fsdd/0_jackson_0.wav")).unwrap();
        let y: Vec<f64> = w.samples.iter().step_by(3).map(|&v| v as f64).collect();
        assert_eq!(y.len() as u64, im["decimated_len"].as_u64().unwrap());
        let p = mel_power(&y);
        assert_eq!(p.len(), 4);
        for (a, b) in p[0].iter().zip(f64s(&im["mel_power_frame0_first8"])) {
            assert!(
                (a - b).abs() < 1e-5 * b.abs().max(1e-3),
                "mel power {a} vs {b}"
            );
        }
        let db = log_mel_db(&w.samples);
        let max = db.iter().flatten().cloned().fold(f64::MIN, f64::max);
        let min = db.iter().flatten().cloned().fold(f64::MAX, f64::min);
        assert!(
            (max - im["log_mel_db_max"].as_f64().unwrap()).abs() < 1e-3,
            "max {max}"
        );
        assert!(
            (min - im["log_mel_db_min"].as_f64().unwrap()).abs() < 1e-3,
            "min {min}"
        );
        for (a, b) in db[0].iter().zip(f64s(&im["log_mel_db_frame0"])) {
            assert!((a - b).abs() < 1e-3, "log mel {a} vs {b}");
        }
    }

    /// The 3 reference matrices (incl. the 1-frame file shorter than the reflect pad), all
    /// 400 entries, against librosa 0.7.0 (tolerance 1e-3) and the float64 reference (1e-5 + 1e-7 |v|, i.e. f32 output rounding).
    #[test]
    fn reference_matrices_match() {
        let r = reference_json();
        for rf in r["references"].as_array().unwrap() {
            let file = rf["file"].as_str().unwrap();
            let w = read_wav(&data_dir().join("avmnist").join(file)).unwrap();
            assert_eq!(
                w.samples.len() as u64,
                rf["num_samples_8khz"].as_u64().unwrap()
            );
            let n = rf["n_frames_unpadded"].as_u64().unwrap() as usize;
            assert_eq!(smil_mfcc_frames(w.samples.len()), n, "{file}");
            let m = smil_mfcc(&w.samples);
            for (key, tol) in [
                ("mfcc_librosa070_float32", 1e-3),
                ("mfcc_float64_independent", 1e-5),
            ] {
                let want = rf[key].as_array().unwrap();
                assert_eq!(want.len(), N_MFCC);
                let mut worst = 0.0f64;
                for (k, row) in want.iter().enumerate() {
                    let row = f64s(row);
                    assert_eq!(row.len(), MAX_FRAMES);
                    for (t, v) in row.iter().enumerate() {
                        // Beyond `tol`, allow the f32 rounding of the output (~6e-8 |v|).
                        worst = worst.max((m[k][t] as f64 - v).abs() - 1e-7 * v.abs());
                        if t >= n {
                            assert_eq!(m[k][t], 0.0, "{file} padding [{k}][{t}]");
                        }
                    }
                }
                assert!(worst < tol, "{file} vs {key}: max abs diff {worst}");
            }
        }
    }

    /// Per-file summary (frames, sum, max |v|, m[0][0]) for all 1,500 SMIL recordings.
    #[test]
    fn all_1500_files_match_summary() {
        let r = reference_json();
        let summary = r["summary_all_1500"].as_object().unwrap();
        assert_eq!(summary.len(), 1500);
        let dir = data_dir().join("avmnist/fsdd");
        let wavs: Vec<(String, Vec<f32>)> = summary
            .keys()
            .map(|name| (name.clone(), read_wav(&dir.join(name)).unwrap().samples))
            .collect();
        let t0 = Instant::now();
        let mfccs: Vec<Mfcc> = wavs.iter().map(|(_, s)| smil_mfcc(s)).collect();
        eprintln!(
            "MFCC of {} files: {:?} (1 thread)",
            mfccs.len(),
            t0.elapsed()
        );
        let (mut worst_sum, mut worst_max, mut worst_00) = (0.0f64, 0.0f64, 0.0f64);
        for ((name, s), m) in wavs.iter().zip(&mfccs) {
            let want = &summary[name];
            let n = want["n_frames_unpadded"].as_u64().unwrap() as usize;
            assert_eq!(smil_mfcc_frames(s.len()), n, "{name}");
            let sum: f64 = m.iter().flatten().map(|&v| v as f64).sum();
            let max = m
                .iter()
                .flatten()
                .map(|&v| (v as f64).abs())
                .fold(0.0, f64::max);
            let nonzero_cols = (0..MAX_FRAMES)
                .filter(|&t| m.iter().any(|r| r[t] != 0.0))
                .count();
            assert_eq!(nonzero_cols, n, "{name}: non-zero columns");
            worst_sum = worst_sum.max((sum - want["sum"].as_f64().unwrap()).abs());
            worst_max = worst_max.max((max - want["max_abs"].as_f64().unwrap()).abs());
            worst_00 = worst_00.max((m[0][0] as f64 - want["row0_col0"].as_f64().unwrap()).abs());
        }
        eprintln!("worst |d sum| {worst_sum:e}, |d max_abs| {worst_max:e}, |d m00| {worst_00:e}");
        assert!(worst_sum < 1e-2, "sum differs by {worst_sum}");
        assert!(worst_max < 1e-3, "max_abs differs by {worst_max}");
        assert!(worst_00 < 1e-3, "row0_col0 differs by {worst_00}");
    }
}
