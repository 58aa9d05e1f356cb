//! The glibc allocator setting measured in `bench/README.md` ("Cheap levers"), set from code.
//!
//! Every burn `flex` op returns a fresh, zero-filled buffer. With glibc's defaults, buffers of
//! a few hundred KiB and more are `mmap`ed and returned to the kernel when freed (the dynamic
//! mmap threshold starts at 128 KiB), so the next training step page-faults the same memory
//! in again. Raising the mmap threshold to 32 MiB (glibc's maximum on 64-bit) and the trim
//! threshold keeps those buffers in the heap for reuse; peak RSS is unchanged in our
//! measurements because the buffers are reused, not accumulated. Buffers above 32 MiB would
//! still be mapped afresh each time; `M_MMAP_MAX = 0` sends them to the heap too — but only
//! in glibc's main arena: the kernels run on rayon's worker threads, whose own arenas are
//! heaps of at most 64 MiB that map chunks above that size (a UNet activation of 40 channels
//! at 64³ is 84 MiB) afresh whatever `M_MMAP_MAX` says. `M_ARENA_MAX = 1` makes every thread
//! allocate from the main arena.

/// mmap threshold: allocations below it come from the heap (32 MiB, glibc's maximum).
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// Trim threshold: free memory at the top of the heap kept instead of returned (1 GiB).
pub const TRIM_THRESHOLD: usize = 1 << 30;
/// Extra memory requested from the kernel with every heap extension (64 MiB).
pub const TOP_PAD: usize = 64 << 20;
/// Most allocations served by `mmap` at once: 0, so buffers above the 32 MiB threshold (the
/// UNet's activations) also come from the heap and are reused instead of being mapped,
/// page-faulted and zeroed by the kernel on every step (measured: system time of a UNet
/// step halved, peak RSS 806 → 777 MiB).
pub const MMAP_MAX: usize = 0;
/// Arenas: 1, so the workers' buffers also come from the main arena's reusable heap (see the
/// module docs; measured on the AVX2 UNet step at 1 thread: system time of a 4-step run
/// 1.0–1.2 → 0.35–0.39 s, peak RSS 717 → 689 MiB). The workers then share one lock for the
/// allocations the per-thread caches do not serve: large buffers, a few per operation.
pub const ARENA_MAX: usize = 1;

/// Tunes glibc's `malloc` for a training process (see the module docs). Call it first thing in
/// `main`, before any thread starts. Returns whether every setting was accepted; on other
/// platforms and C libraries it does nothing and returns `false`. An explicit
/// `GLIBC_TUNABLES=glibc.malloc...` in the environment wins: then nothing is changed.
pub fn tune_allocator() -> bool {
    if std::env::var_os("GLIBC_TUNABLES").is_some_and(|v| v.to_string_lossy().contains("malloc")) {
        return false;
    }
    set_glibc_malloc()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_glibc_malloc() -> bool {
    let settings = [
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (libc::M_TOP_PAD, TOP_PAD),
        (libc::M_MMAP_MAX, MMAP_MAX),
        (libc::M_ARENA_MAX, ARENA_MAX),
    ];
    settings.iter().all(|&(param, value)| {
        let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
        // SAFETY: `mallopt` only changes glibc's allocator parameters; it takes two integers,
        // touches no memory of ours and is safe to call at any time (glibc serialises it with
        // the allocator's own lock). A rejected value leaves the setting unchanged (returns 0).
        unsafe { libc::mallopt(param, value) == 1 }
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_glibc_malloc() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        // The thresholds are within glibc's limits (mmap threshold ≤ 32 MiB on 64-bit).
        if std::env::var_os("GLIBC_TUNABLES").is_none() {
            assert!(tune_allocator());
            // Allocation still works afterwards, large and small.
            let v = vec![1u8; 8 << 20];
            assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), 8 << 20);
        }
    }
}
