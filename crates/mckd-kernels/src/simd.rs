//! Instruction-set paths of the kernels, chosen at run time.
//!
//! The workspace builds for baseline x86-64 (SSE2). Every kernel of this crate has a path per
//! [`SimdLevel`]: `scalar` (the portable baseline build, no run-time dispatched SIMD), `avx2`
//! (AVX2 + FMA, 8 lanes) and `avx512` (AVX-512F/BW/VL/DQ, 16 lanes). By default the best level
//! the CPU has runs; the environment variable [`SIMD_ENV`] (`MCKD_SIMD=scalar|avx2|avx512`)
//! forces one, so that every path can be measured and tested on any machine that has it.
//! Programs call [`simd_level`] first and stop with its error when the variable names an
//! unknown level or one the CPU lacks; the kernels themselves never run code the CPU lacks
//! (they fall back to the best level it has, saying so once on stderr).
//!
//! Two mechanisms use the level:
//! * `multiversion!`: an element-wise function compiled three times (AVX-512, AVX2 + FMA,
//!   baseline) and chosen per call. All three run the same floating-point operations in the
//!   same order (Rust never contracts `a·b + c` into an FMA on its own), so the results are
//!   bit-identical.
//! * hand-written kernels (`direct2`, `direct3`, `window`, `fused`, the GEMM calls in
//!   `conv3d`) with a generic-width formulation over `vec::F32s` (16 or 8 lanes) or a
//!   level-specific version; their sums may group differently per level (rounding only;
//!   every test runs under every level the CPU has, `testing::for_each_level`).
//!
//! The GEMMs of `conv3d` follow the level too (the `gemm` crate's AVX-512, FMA or scalar
//! kernels). burn's own operations (its matmul for linear layers, element-wise ops) choose
//! their instruction set by themselves and are not affected.

use std::sync::OnceLock;

/// Environment variable forcing a [`SimdLevel`]: `scalar`, `avx2` or `avx512`.
pub const SIMD_ENV: &str = "MCKD_SIMD";

/// An instruction-set path of the kernels (ordered: a level includes the ones below it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// The portable baseline build (SSE2 on x86-64): no run-time dispatched SIMD.
    Scalar,
    /// AVX2 and FMA: 8-lane kernels.
    Avx2,
    /// AVX-512F/BW/VL/DQ (with AVX2 and FMA): 16-lane kernels.
    Avx512,
}

impl SimdLevel {
    /// Every level, lowest first.
    pub const ALL: [SimdLevel; 3] = [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512];

    /// The name used by [`SIMD_ENV`]: `scalar`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// Floats per vector of the direct convolution kernels at this level: 16 with AVX-512,
    /// else 8 (those kernels run at the AVX2 and AVX-512 levels only).
    pub(crate) fn vector_lanes(self) -> usize {
        if self == SimdLevel::Avx512 { 16 } else { 8 }
    }

    /// The CPU features the level needs (`/proc/cpuinfo` spelling), none for `scalar`.
    pub fn features(self) -> &'static [&'static str] {
        match self {
            SimdLevel::Scalar => &[],
            SimdLevel::Avx2 => &["avx2", "fma"],
            SimdLevel::Avx512 => &["avx512f", "avx512vl", "avx512bw", "avx512dq", "avx2", "fma"],
        }
    }

    /// The features of [`features`](Self::features) that this CPU lacks (empty: supported).
    pub fn missing_features(self) -> Vec<&'static str> {
        self.features()
            .iter()
            .copied()
            .filter(|f| !has_feature(f))
            .collect()
    }

    /// Whether this CPU can run the level.
    pub fn supported(self) -> bool {
        self.missing_features().is_empty()
    }

    /// The best level this CPU supports (checked once).
    pub fn detected() -> SimdLevel {
        static BEST: OnceLock<SimdLevel> = OnceLock::new();
        *BEST.get_or_init(|| {
            SimdLevel::ALL
                .into_iter()
                .rev()
                .find(|l| l.supported())
                .unwrap_or(SimdLevel::Scalar)
        })
    }

    /// The levels this CPU supports, lowest first.
    pub fn available() -> Vec<SimdLevel> {
        SimdLevel::ALL
            .into_iter()
            .filter(|l| l.supported())
            .collect()
    }
}

impl core::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::str::FromStr for SimdLevel {
    type Err = SimdError;

    /// `scalar`, `avx2` or `avx512` (case-insensitive; `avx-512` and `avx512f` too).
    fn from_str(s: &str) -> Result<Self, SimdError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Ok(SimdLevel::Scalar),
            "avx2" => Ok(SimdLevel::Avx2),
            "avx512" | "avx-512" | "avx512f" => Ok(SimdLevel::Avx512),
            _ => Err(SimdError::Unknown {
                value: s.to_string(),
            }),
        }
    }
}

/// Why [`SIMD_ENV`] cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimdError {
    /// The variable names no level.
    #[error("{SIMD_ENV}={value:?}: unknown instruction-set path (expected scalar, avx2 or avx512)")]
    Unknown {
        /// The variable's value.
        value: String,
    },
    /// The CPU lacks a feature of the level.
    #[error(
        "{SIMD_ENV}={level}: this CPU lacks {} (its best path is {best})",
        missing.join(", ")
    )]
    Unsupported {
        /// The level asked for.
        level: SimdLevel,
        /// Its features the CPU lacks.
        missing: Vec<&'static str>,
        /// The best level the CPU has.
        best: SimdLevel,
    },
}

/// The level [`SIMD_ENV`] asks for, or the best one the CPU has when it is unset or empty.
/// Reads the variable on every call; programs call it first and stop with its error.
///
/// # Errors
/// [`SimdError::Unknown`] for a value that names no level, [`SimdError::Unsupported`] for a
/// level this CPU cannot run.
pub fn simd_level() -> Result<SimdLevel, SimdError> {
    let value = std::env::var_os(SIMD_ENV).map(|v| v.to_string_lossy().into_owned());
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(SimdLevel::detected()),
        Some(v) => checked(v.parse()?),
    }
}

/// `level` if this CPU supports it.
///
/// # Errors
/// [`SimdError::Unsupported`] naming the missing features.
pub fn checked(level: SimdLevel) -> Result<SimdLevel, SimdError> {
    let missing = level.missing_features();
    if missing.is_empty() {
        Ok(level)
    } else {
        Err(SimdError::Unsupported {
            level,
            missing,
            best: SimdLevel::detected(),
        })
    }
}

/// The level the kernels run at on this thread: [`simd_level`] read once per process (an
/// error is printed once on stderr and the best supported level used instead), or in this
/// crate's tests the level of the test's thread pool (`testing::for_each_level`).
#[inline]
pub fn active_simd_level() -> SimdLevel {
    #[cfg(test)]
    if let Some(level) = OVERRIDE.with(core::cell::Cell::get) {
        return level;
    }
    process_level()
}

/// Crate-internal short name of [`active_simd_level`].
#[inline]
pub(crate) fn level() -> SimdLevel {
    active_simd_level()
}

fn process_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        simd_level().unwrap_or_else(|e| {
            let best = SimdLevel::detected();
            eprintln!("mckd-kernels: {e}; running the {best} path instead");
            best
        })
    })
}

#[cfg(test)]
thread_local! {
    static OVERRIDE: core::cell::Cell<Option<SimdLevel>> = const { core::cell::Cell::new(None) };
}

/// Sets (or with `None` clears) this thread's level for the tests.
///
/// # Panics
/// If the CPU does not support `level` (a test bug: tests iterate over
/// [`SimdLevel::available`]).
#[cfg(test)]
pub(crate) fn set_thread_level(level: Option<SimdLevel>) {
    if let Some(l) = level {
        assert!(l.supported(), "test asked for unsupported level {l}");
    }
    OVERRIDE.with(|c| c.set(level));
}

fn has_feature(f: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match f {
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
            "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
            "avx512dq" => std::arch::is_x86_feature_detected!("avx512dq"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = f;
        false
    }
}

/// `multiversion! { fn name(args) -> R { body } }`: the body compiled for AVX-512, for AVX2 +
/// FMA and for the baseline, chosen per call by [`level`] (see the module docs).
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast256($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match $crate::simd::level() {
                    // SAFETY: the level is only ever one the CPU supports (`simd::level`).
                    $crate::simd::SimdLevel::Avx512 => return unsafe { fast512($($arg),*) },
                    // SAFETY: as above.
                    $crate::simd::SimdLevel::Avx2 => return unsafe { fast256($($arg),*) },
                    $crate::simd::SimdLevel::Scalar => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Vectors of `f32` of one width behind one interface, so that a kernel written once over
/// [`F32s`](vec::F32s) compiles to 16-lane AVX-512 and 8-lane AVX2 code. The methods are
/// `#[inline(always)]` wrappers of the intrinsics: a kernel calls them from a function with
/// the matching `#[target_feature]`, where they inline into single instructions.
#[cfg(target_arch = "x86_64")]
pub(crate) mod vec {
    use core::arch::x86_64::*;

    /// One vector width of `f32`.
    ///
    /// # Safety (of every method)
    /// The CPU must support the implementor's features ([`Avx512`]: AVX-512F; [`Avx2`]: AVX2
    /// and FMA); pointers must be valid for `LANES` floats (unaligned is fine).
    pub(crate) trait F32s: Copy + Send + Sync + 'static {
        /// The vector type.
        type V: Copy;
        /// Lanes per vector.
        const LANES: usize;
        /// All lanes zero.
        unsafe fn zero() -> Self::V;
        /// All lanes `v`.
        unsafe fn splat(v: f32) -> Self::V;
        /// `LANES` floats from `p`.
        unsafe fn load(p: *const f32) -> Self::V;
        /// Writes `LANES` floats to `p`.
        unsafe fn store(p: *mut f32, v: Self::V);
        /// The first `n` (≤ `LANES`) floats from `p`, zeros after: only those `n` are read
        /// (masked load; `p` need be valid for `n` floats only).
        unsafe fn load_first(p: *const f32, n: usize) -> Self::V;
        /// Writes the first `n` (≤ `LANES`) lanes of `v` to `p`, and nothing else (masked store;
        /// `p` need be valid for `n` floats only).
        unsafe fn store_first(p: *mut f32, v: Self::V, n: usize);
        /// `a·b + c`, rounded once.
        unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        /// `a + b`.
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
        /// The sum of the lanes (in the order of `_mm512_reduce_add_ps` for 16 lanes: halves
        /// added pairwise down to one lane; the same scheme for 8).
        unsafe fn sum(v: Self::V) -> f32;
    }

    /// 16 lanes (AVX-512F).
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx512;

    /// 8 lanes (AVX2 + FMA).
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx2;

    impl F32s for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            // SAFETY: the trait's contract (AVX-512F).
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m512 {
            // SAFETY: as above.
            unsafe { _mm512_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: as above; `p` valid for 16 floats.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> __m512 {
            debug_assert!(n <= 16);
            // SAFETY: as above; masked-off lanes are not accessed.
            unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p) }
        }
        #[inline(always)]
        unsafe fn store_first(p: *mut f32, v: __m512, n: usize) {
            debug_assert!(n <= 16);
            // SAFETY: as above; masked-off lanes are not accessed.
            unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as u16, v) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            // SAFETY: as above.
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            // SAFETY: as above.
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sum(v: __m512) -> f32 {
            // SAFETY: as above.
            unsafe { _mm512_reduce_add_ps(v) }
        }
    }

    /// The AVX2 lane mask of the first `n` lanes (sign bit set in each).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn first_lanes(n: usize) -> __m256i {
        // SAFETY: the caller's contract (AVX2).
        unsafe {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        }
    }

    impl F32s for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            // SAFETY: the trait's contract (AVX2).
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m256 {
            // SAFETY: as above.
            unsafe { _mm256_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: as above; `p` valid for 8 floats.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> __m256 {
            debug_assert!(n <= 8);
            // SAFETY: as above; masked-off lanes are not accessed.
            unsafe { _mm256_maskload_ps(p, first_lanes(n)) }
        }
        #[inline(always)]
        unsafe fn store_first(p: *mut f32, v: __m256, n: usize) {
            debug_assert!(n <= 8);
            // SAFETY: as above; masked-off lanes are not accessed.
            unsafe { _mm256_maskstore_ps(p, first_lanes(n), v) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: as above (FMA).
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            // SAFETY: as above.
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sum(v: __m256) -> f32 {
            // SAFETY: as above.
            unsafe {
                let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let q = _mm_add_ps(h, _mm_movehl_ps(h, h));
                _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_print() {
        for level in SimdLevel::ALL {
            assert_eq!(level.name().parse::<SimdLevel>(), Ok(level));
            assert_eq!(level.to_string(), level.name());
        }
        assert_eq!(" AVX512 ".parse::<SimdLevel>(), Ok(SimdLevel::Avx512));
        let err = "sse9".parse::<SimdLevel>().unwrap_err();
        assert_eq!(
            err,
            SimdError::Unknown {
                value: "sse9".into()
            }
        );
        assert!(err.to_string().contains("MCKD_SIMD=\"sse9\""), "{err}");
        assert!(SimdLevel::Scalar < SimdLevel::Avx2 && SimdLevel::Avx2 < SimdLevel::Avx512);
    }

    /// The detected level is supported, every level above it is refused with the features the
    /// CPU lacks, and scalar always runs.
    #[test]
    fn unsupported_levels_are_refused() {
        let best = SimdLevel::detected();
        assert!(best.supported());
        assert_eq!(checked(SimdLevel::Scalar), Ok(SimdLevel::Scalar));
        assert_eq!(SimdLevel::available().last(), Some(&best));
        for level in SimdLevel::ALL {
            if level <= best {
                assert_eq!(checked(level), Ok(level));
            } else {
                let err = checked(level).unwrap_err();
                let SimdError::Unsupported { missing, .. } = &err else {
                    panic!("{err}")
                };
                assert!(!missing.is_empty());
                assert!(err.to_string().contains(missing[0]), "{err}");
            }
        }
    }

    /// A thread's override changes what `level` returns on that thread only.
    #[test]
    fn the_test_override_is_per_thread() {
        set_thread_level(Some(SimdLevel::Scalar));
        assert_eq!(level(), SimdLevel::Scalar);
        let other = std::thread::spawn(level).join().unwrap();
        assert_eq!(other, process_level());
        set_thread_level(None);
        assert_eq!(level(), process_level());
    }

    /// The 8-lane horizontal sum adds the lanes pairwise: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_lane_sum() {
        use vec::F32s;
        if !SimdLevel::Avx2.supported() {
            return;
        }
        let v = [1.0f32, 1e8, -1.0, 3.0, 0.5, -1e8, 2.0, 0.25];
        #[target_feature(enable = "avx2,fma")]
        unsafe fn sum(v: &[f32; 8]) -> f32 {
            // SAFETY: AVX2 checked by the caller; 8 floats.
            unsafe { vec::Avx2::sum(vec::Avx2::load(v.as_ptr())) }
        }
        // SAFETY: AVX2 checked above.
        let got = unsafe { sum(&v) };
        let want = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
        assert_eq!(got, want);
    }

    /// `load_first` / `store_first` move exactly the first `n` lanes at both levels: the
    /// loaded vector has zeros after them, and the store leaves every other float as it was.
    #[test]
    fn masked_first_lanes_move_exactly_n_floats() {
        use vec::F32s;
        fn check<S: F32s>(copy: unsafe fn(&[f32], &mut [f32], usize)) {
            let src: Vec<f32> = (1..=S::LANES).map(|i| i as f32).collect();
            for n in 0..=S::LANES {
                let mut dst = vec![-1.0f32; S::LANES];
                // SAFETY: the level is supported (checked by the caller); both hold LANES floats.
                unsafe { copy(&src, &mut dst, n) };
                let want: Vec<f32> = (0..S::LANES)
                    .map(|i| if i < n { src[i] } else { -1.0 })
                    .collect();
                assert_eq!(dst, want, "{} lanes, n = {n}", S::LANES);
            }
        }
        /// Loads the first `n`, stores every lane to a scratch (zeros after `n`), then the
        /// first `n` of it to `dst`.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn copy256(src: &[f32], dst: &mut [f32], n: usize) {
            // SAFETY: AVX2 (the caller); 8 floats each.
            unsafe {
                let v = vec::Avx2::load_first(src.as_ptr(), n);
                let mut all = [7.0f32; 8];
                vec::Avx2::store(all.as_mut_ptr(), v);
                assert!(all[n..].iter().all(|&x| x == 0.0));
                vec::Avx2::store_first(dst.as_mut_ptr(), v, n);
            }
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn copy512(src: &[f32], dst: &mut [f32], n: usize) {
            // SAFETY: AVX-512F (the caller); 16 floats each.
            unsafe {
                let v = vec::Avx512::load_first(src.as_ptr(), n);
                let mut all = [7.0f32; 16];
                vec::Avx512::store(all.as_mut_ptr(), v);
                assert!(all[n..].iter().all(|&x| x == 0.0));
                vec::Avx512::store_first(dst.as_mut_ptr(), v, n);
            }
        }
        if SimdLevel::Avx2.supported() {
            check::<vec::Avx2>(copy256);
        }
        if SimdLevel::Avx512.supported() {
            check::<vec::Avx512>(copy512);
        }
    }
}
