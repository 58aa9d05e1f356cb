//! Run-time CPU dispatch for the element-wise kernels: the workspace builds for baseline
//! x86-64 (SSE2), where loops with selects and several accumulators stay scalar. A function
//! declared with [`multiversion!`] is compiled twice — for AVX-512 (plus AVX2/FMA) and for
//! the baseline — and picks the first when the CPU has it. Both versions run the same
//! floating-point operations in the same order (Rust never contracts `a·b + c` into an FMA
//! on its own), so the results are bit-identical.

/// Whether the CPU has AVX-512F/VL/BW/DQ, AVX2 and FMA, and `MCKD_KERNELS_BASELINE` is
/// unset. Setting it runs the baseline build of the [`multiversion!`] functions (same bits)
/// and the general paths instead of the AVX-512-only kernels (the direct 3×3×3 convolution,
/// the short-row col2im, the vectorised pooling), e.g. to test those paths on this machine.
/// Checked once.
#[inline]
pub(crate) fn avx512() -> bool {
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| std::env::var_os("MCKD_KERNELS_BASELINE").is_none() && detect())
}

fn detect() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `multiversion! { fn name(args) -> R { body } }`: the body compiled for AVX-512 and for the
/// baseline, chosen at run time (see the module docs).
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
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::simd::avx512() {
                    // SAFETY: the CPU has every enabled feature (checked at run time).
                    return unsafe { fast($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;
