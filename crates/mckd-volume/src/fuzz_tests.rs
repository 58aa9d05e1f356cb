//! Randomised mutation tests ("fuzzing") of the two readers that take files from users: the
//! NIfTI reader ([`crate::nifti_io`]) and the `splits.json` reader ([`crate::splits`]).
//!
//! Inputs are the real sample case's files, mutated: bit flips and random bytes, truncations
//! and appended data, header fields set to extreme values (dims, data type, bitpix,
//! `vox_offset`, scaling, `sizeof_hdr`, magic, extension flags), and gzip-level damage
//! (truncated or bit-flipped streams, a lying size trailer, extra members or garbage). The
//! readers must never panic (checked with `catch_unwind`) and the NIfTI reader must never make
//! a single allocation larger than
//! `max(64 × file size, 4 × bytes the gzip stream really holds) + 1 MiB`
//! (the bound documented at `nifti_io::decode_nifti`; checked with a counting global
//! allocator), whatever the header claims.
//!
//! CI runs a bounded, seeded number of cases. As a fuzzing job:
//! `MCKD_FUZZ_CASES=100000 MCKD_FUZZ_SEED=7 cargo test --release -p mckd-volume -j 1 fuzz_ -- --nocapture`
//! (defaults: 200 cases, seed 0). A failing case prints its seed and index and is saved
//! under the temporary folder for replay.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::brats::LabelConvention;
use crate::nifti_io::test_support::{TempDir, brats_sample_dir};
use crate::nifti_io::{decode_nifti, read_header, read_labels, read_volume};
use crate::splits::{SplitFractions, Splits, make_splits};
use crate::volume::voxel_count;

// ---------------------------------------------------------------------------------------
// Allocation tracking: the largest single allocation made by the current thread while
// tracking is on. Thread-local, so tests running in parallel do not mix.

struct Tracking;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let on = TRACK.try_with(Cell::get).unwrap_or(false);
    if on {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; `note` only reads and
// writes two thread-local `Cell`s with const initialisers (no allocation, no destructor).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Runs `f` and returns its result (or the panic) and the largest single allocation it made.
fn tracked<T>(f: impl FnOnce() -> T) -> (std::thread::Result<T>, usize) {
    LARGEST.with(|l| l.set(0));
    TRACK.with(|t| t.set(true));
    let out = catch_unwind(AssertUnwindSafe(f));
    TRACK.with(|t| t.set(false));
    (out, LARGEST.with(Cell::get))
}

// ---------------------------------------------------------------------------------------

fn fuzz_cases() -> usize {
    std::env::var("MCKD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn fuzz_seed() -> u64 {
    std::env::var("MCKD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("sample file decompresses");
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("in-memory gzip");
    e.finish().expect("in-memory gzip")
}

/// Bytes a gzip stream yields before it ends or fails, counted up to `limit` (the
/// independent measure of what the reader could possibly hold).
fn gzip_yield(bytes: &[u8], limit: u64) -> u64 {
    let mut dec = flate2::read::MultiGzDecoder::new(bytes).take(limit);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        match dec.read(&mut buf) {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n as u64,
        }
    }
}

/// A real file cut down to `slices` k-slices from `k0` (header and extensions kept), so that
/// each fuzz case is cheap but has a real header.
fn shrink(raw: &[u8], k0: usize, slices: usize) -> Vec<u8> {
    let vox = f32::from_le_bytes(raw[108..112].try_into().unwrap()) as usize;
    let dim = |d: usize| u16::from_le_bytes(raw[40 + 2 * d..42 + 2 * d].try_into().unwrap());
    let bpv = (i16::from_le_bytes(raw[72..74].try_into().unwrap()) / 8) as usize;
    let plane = dim(1) as usize * dim(2) as usize * bpv;
    let mut out = raw[..vox].to_vec();
    out[46..48].copy_from_slice(&(slices as u16).to_le_bytes());
    out.extend_from_slice(&raw[vox + k0 * plane..vox + (k0 + slices) * plane]);
    out
}

struct Bases {
    /// Shrunk uncompressed files (flair: int16 at 352; seg: int16 with an AFNI extension).
    small: Vec<(&'static str, Vec<u8>)>,
    /// The real `.nii.gz` files as on disk.
    full_gz: Vec<(&'static str, Vec<u8>)>,
}

fn bases() -> Bases {
    let dir = brats_sample_dir().join("Brats18_2013_2_1");
    let mut small = Vec::new();
    let mut full_gz = Vec::new();
    for (name, k0) in [("flair", 70), ("seg", 75)] {
        let gz = std::fs::read(dir.join(format!("Brats18_2013_2_1_{name}.nii.gz"))).unwrap();
        let raw = gunzip(&gz);
        small.push((name, shrink(&raw, k0, 2)));
        full_gz.push((name, gz));
    }
    Bases { small, full_gz }
}

/// Interesting values for 16-bit header fields.
const U16S: [u16; 12] = [0, 1, 2, 3, 7, 8, 255, 256, 32767, 32768, 65535, 4];

fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    if at + value.len() <= bytes.len() {
        bytes[at..at + value.len()].copy_from_slice(value);
    }
}

/// One mutation of an uncompressed NIfTI file; returns its description.
fn mutate_raw(b: &mut Vec<u8>, rng: &mut ChaCha8Rng) -> String {
    let len = b.len().max(1);
    match rng.random_range(0..16) {
        0 | 1 => {
            let at = rng.random_range(0..352.min(len));
            let bit = rng.random_range(0..8);
            if at < b.len() {
                b[at] ^= 1 << bit;
            }
            format!("flip header bit {at}.{bit}")
        }
        2 => {
            let at = rng.random_range(0..len);
            if at < b.len() {
                b[at] ^= 1 << rng.random_range(0..8);
            }
            format!("flip bit at {at}")
        }
        3 => {
            let at = rng.random_range(0..len);
            let v = rng.random::<u8>();
            if at < b.len() {
                b[at] = v;
            }
            format!("byte {at} = {v}")
        }
        4 => {
            let cut = if rng.random_bool(0.5) {
                rng.random_range(0..400.min(len))
            } else {
                rng.random_range(0..len)
            };
            b.truncate(cut);
            format!("truncate to {cut}")
        }
        5 => {
            let n = rng.random_range(0..1000);
            b.extend((0..n).map(|_| rng.random::<u8>()));
            format!("append {n} random bytes")
        }
        6 | 7 => {
            let d = rng.random_range(0..8);
            let v = if rng.random_bool(0.7) {
                U16S[rng.random_range(0..U16S.len())]
            } else {
                rng.random()
            };
            put(b, 40 + 2 * d, &v.to_le_bytes());
            format!("dim[{d}] = {v}")
        }
        8 => {
            let codes = [
                0i16, 1, 2, 4, 8, 16, 32, 64, 128, 256, 511, 512, 768, 1024, 1280, 1536, 1792,
                2048, 2304, -1,
            ];
            let v = if rng.random_bool(0.8) {
                codes[rng.random_range(0..codes.len())]
            } else {
                rng.random()
            };
            put(b, 70, &v.to_le_bytes());
            format!("datatype = {v}")
        }
        9 => {
            let v: i16 = [0, 1, 8, 16, 32, 64, -8, rng.random()][rng.random_range(0..8)];
            put(b, 72, &v.to_le_bytes());
            format!("bitpix = {v}")
        }
        10 => {
            let v = [
                0.0f32,
                348.0,
                351.0,
                352.0,
                353.0,
                352.5,
                -1.0,
                1e9,
                3e9,
                f32::NAN,
                f32::INFINITY,
                f32::MAX,
                rng.random_range(0.0..1e6),
            ][rng.random_range(0..13)];
            put(b, 108, &v.to_le_bytes());
            format!("vox_offset = {v}")
        }
        11 => {
            let at = [112, 116][rng.random_range(0..2)];
            let v = [
                f32::NAN,
                f32::INFINITY,
                0.0,
                -0.0,
                1e38,
                -1e38,
                rng.random(),
            ][rng.random_range(0..7)];
            put(b, at, &v.to_le_bytes());
            format!("scl at {at} = {v}")
        }
        12 => {
            let v = [348i32, 348i32.swap_bytes(), 0, 540, -1, rng.random()][rng.random_range(0..6)];
            put(b, 0, &v.to_le_bytes());
            format!("sizeof_hdr = {v}")
        }
        13 => {
            let m: [u8; 4] =
                [*b"n+1\0", *b"ni1\0", *b"n+2\0", rng.random()][rng.random_range(0..4)];
            put(b, 344, &m);
            format!("magic = {m:?}")
        }
        14 => {
            let d = rng.random_range(1..8);
            let v = [f32::NAN, f32::INFINITY, 0.0, -1.0, 1e-30, 1e30][rng.random_range(0..6)];
            put(b, 76 + 4 * d, &v.to_le_bytes());
            format!("pixdim[{d}] = {v}")
        }
        _ => {
            // Extension flag on, with a random first esize.
            put(b, 348, &[1, 0, 0, 0]);
            let esize: i32 = [0, 7, 8, 16, -8, i32::MAX, rng.random()][rng.random_range(0..7)];
            put(b, 352, &esize.to_le_bytes());
            format!("extension esize = {esize}")
        }
    }
}

/// One mutation of a gzip-compressed file; returns its description.
fn mutate_gz(b: &mut Vec<u8>, rng: &mut ChaCha8Rng) -> String {
    let len = b.len().max(1);
    match rng.random_range(0..6) {
        0 => {
            let cut = rng.random_range(0..len);
            b.truncate(cut);
            format!("gz truncate to {cut}")
        }
        1 => {
            let at = rng.random_range(0..len);
            if at < b.len() {
                b[at] ^= 1 << rng.random_range(0..8);
            }
            format!("gz flip bit at {at}")
        }
        2 => {
            let v: u32 = [0, 1, u32::MAX, 1 << 31, rng.random()][rng.random_range(0..5)];
            let n = b.len();
            if n >= 4 {
                b[n - 4..].copy_from_slice(&v.to_le_bytes());
            }
            format!("gz size trailer = {v}")
        }
        3 => {
            let extra = gzip(
                &(0..rng.random_range(0..5000))
                    .map(|_| rng.random::<u8>())
                    .collect::<Vec<_>>(),
            );
            b.extend_from_slice(&extra);
            "gz extra member".to_string()
        }
        4 => {
            let n = rng.random_range(1..64);
            b.extend((0..n).map(|_| rng.random::<u8>()));
            format!("gz append {n} garbage bytes")
        }
        _ => {
            let flags = rng.random::<u8>();
            put(b, 3, &[flags]);
            format!("gz flags = {flags:#x}")
        }
    }
}

/// Saves a failing input for replay and returns where.
fn save_failure(tag: &str, seed: u64, case: usize, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mckd-fuzz-{tag}-seed{seed}-case{case}.bin"));
    let _ = std::fs::write(&p, bytes);
    p
}

/// Every mutated NIfTI file gives `Ok` or an error, never a panic, and no allocation beyond
/// the documented bound.
#[test]
fn fuzz_nifti_reader_never_panics_and_allocates_within_the_bound() {
    let (n_cases, seed) = (fuzz_cases(), fuzz_seed());
    let bases = bases();
    let tmp = TempDir::new("fuzz-nifti");
    let (mut ok, mut errors, mut on_disk) = (0usize, 0usize, 0usize);
    let mut worst_ratio = 0.0f64;
    for case in 0..n_cases {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ case as u64);
        let mut log = Vec::new();
        let full = rng.random_bool(0.03);
        let bytes = if full {
            let (name, gz) = &bases.full_gz[rng.random_range(0..bases.full_gz.len())];
            log.push(format!("full {name}.nii.gz"));
            let mut b = gz.clone();
            for _ in 0..rng.random_range(1..3) {
                log.push(mutate_gz(&mut b, &mut rng));
            }
            b
        } else {
            let (name, raw) = &bases.small[rng.random_range(0..bases.small.len())];
            log.push(format!("small {name}"));
            let mut b = raw.clone();
            for _ in 0..rng.random_range(1..5) {
                log.push(mutate_raw(&mut b, &mut rng));
            }
            if rng.random_bool(0.5) {
                b = gzip(&b);
                log.push("gzip".to_string());
                if rng.random_bool(0.5) {
                    log.push(mutate_gz(&mut b, &mut rng));
                }
            }
            b
        };
        let file = bytes.len() as u64;
        let holds = if bytes.starts_with(&[0x1f, 0x8b]) {
            gzip_yield(&bytes, 256 << 20)
        } else {
            file
        };
        let bound = (64 * file).max(4 * holds) + (1 << 20);
        let path = Path::new("fuzz.nii.gz");
        let (result, largest) =
            tracked(|| decode_nifti(path, &bytes).map(|r| (r.dims, r.values.len())));
        let fail = |what: &str| {
            let saved = save_failure("nifti", seed, case, &bytes);
            panic!(
                "case {case} (seed {seed}, {}): {what}; input saved to {}",
                log.join(", "),
                saved.display()
            )
        };
        match result {
            Err(_) => fail("the reader panicked"),
            Ok(Ok((dims, n))) => {
                if n != voxel_count(dims) {
                    fail(&format!("{n} values for dims {dims:?}"));
                }
                ok += 1;
            }
            Ok(Err(e)) => {
                if !e.to_string().contains("fuzz.nii.gz") {
                    fail(&format!("error does not name the file: {e}"));
                }
                errors += 1;
            }
        }
        if largest as u64 > bound {
            fail(&format!(
                "largest allocation {largest} bytes > bound {bound} (file {file}, stream holds {holds})"
            ));
        }
        worst_ratio = worst_ratio.max(largest as f64 / bound as f64);
        // Every tenth case also through the public readers on disk.
        if case % 10 == 0 {
            on_disk += 1;
            let p = tmp.path().join(format!("case{case}.nii"));
            std::fs::write(&p, &bytes).unwrap();
            let (r, largest) = tracked(|| {
                let _ = read_volume(&p);
                let _ = read_labels(&p, LabelConvention::Brats2018);
                let _ = read_header(&p);
            });
            if r.is_err() {
                fail("a public reader panicked");
            }
            // read_labels adds one byte per voxel to read_volume's buffers.
            if largest as u64 > bound {
                fail(&format!("public readers allocated {largest} > {bound}"));
            }
            std::fs::remove_file(&p).unwrap();
        }
    }
    eprintln!(
        "NIfTI fuzz: {n_cases} cases (seed {seed}): {ok} read, {errors} errors, {on_disk} also \
         on disk; largest allocation at most {:.1} % of the bound",
        100.0 * worst_ratio
    );
    // The mutations must reach both outcomes, else the test checks little.
    assert!(
        errors > 0 && (n_cases < 50 || ok > 0),
        "{ok} read, {errors} errors"
    );
}

/// The bound holds for headers that claim far more than the file has, and the reader
/// refuses what is beyond its limit without allocating it.
#[test]
fn huge_declared_sizes_are_refused_before_allocating() {
    let bases = bases();
    let raw = &bases.small[0].1;
    for (dims, datatype, bitpix, what) in [
        ([32767u16, 32767, 32767], 64i16, 64i16, "limit"),
        ([2048, 2048, 1024], 2, 8, "limit"),
        ([1024, 1024, 1024], 2, 8, "truncated"),
        ([32767, 16000, 2], 4, 16, "truncated"),
    ] {
        let mut b = raw.clone();
        for (d, &n) in dims.iter().enumerate() {
            put(&mut b, 42 + 2 * d, &n.to_le_bytes());
        }
        put(&mut b, 70, &datatype.to_le_bytes());
        put(&mut b, 72, &bitpix.to_le_bytes());
        for bytes in [b.clone(), gzip(&b)] {
            let (r, largest) = tracked(|| decode_nifti(Path::new("big.nii"), &bytes).map(|_| ()));
            let msg = r.expect("no panic").unwrap_err().to_string();
            assert!(
                msg.contains("big.nii") && msg.contains(what),
                "{dims:?}: {msg}"
            );
            assert!(
                largest < 4 * raw.len() + (1 << 20),
                "{dims:?}: allocated {largest}"
            );
        }
    }
    // A gzip size trailer claiming 4 GiB does not preallocate it.
    let mut gz = gzip(raw);
    let n = gz.len();
    gz[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
    let (r, largest) = tracked(|| decode_nifti(Path::new("trailer.nii.gz"), &gz).map(|_| ()));
    let msg = r.expect("no panic").unwrap_err().to_string();
    assert!(msg.contains("trailer.nii.gz"), "{msg}");
    assert!(largest < 4 * raw.len() + (1 << 20), "allocated {largest}");
}

/// One mutation of a JSON text.
fn mutate_json(t: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    let len = t.len().max(1);
    let at = rng.random_range(0..len).min(t.len());
    match rng.random_range(0..7) {
        0 => {
            if at < t.len() {
                t[at] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => t.truncate(at),
        2 => {
            let end = (at + rng.random_range(0..40)).min(t.len());
            t.drain(at..end);
        }
        3 => {
            let end = (at + rng.random_range(0..200)).min(t.len());
            let copy = t[at..end].to_vec();
            t.splice(at..at, copy);
        }
        4 => {
            let depth = [10, 127, 129, 100_000][rng.random_range(0..4)];
            let nest = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            t.splice(at..at, nest.into_bytes());
        }
        _ => {
            let tokens = [
                "[",
                "]",
                "{",
                "}",
                ",",
                ":",
                "\"",
                "1e400",
                "-1",
                "null",
                "true",
                "NaN",
                "\\u0000",
                "\"\\ud800\"",
                "18446744073709551616",
                "0.7",
                "\"train\":",
                "\"seed\": 1,",
                "\"case_000\"",
                "\u{feff}",
            ];
            let tok = tokens[rng.random_range(0..tokens.len())];
            t.splice(at..at, tok.bytes());
        }
    }
}

/// Every mutated `splits.json` gives valid splits or an error naming the file, never a
/// panic.
#[test]
fn fuzz_splits_reader_never_panics() {
    let (n_cases, seed) = (fuzz_cases(), fuzz_seed());
    let ids: Vec<String> = (0..20).map(|i| format!("case_{i:03}")).collect();
    let base =
        serde_json::to_string_pretty(&make_splits(&ids, SplitFractions::default(), 3).unwrap())
            .unwrap()
            .into_bytes();
    let tmp = TempDir::new("fuzz-splits");
    let path = tmp.path().join("splits.json");
    let (mut ok, mut errors) = (0usize, 0usize);
    for case in 0..n_cases {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0xA076_1D64_78BD_642F) ^ case as u64);
        let mut t = base.clone();
        for _ in 0..rng.random_range(1..4) {
            mutate_json(&mut t, &mut rng);
        }
        let on_disk = case % 10 == 0;
        let result = catch_unwind(AssertUnwindSafe(|| {
            if on_disk {
                std::fs::write(&path, &t).unwrap();
                Splits::load(&path)
            } else {
                let text = String::from_utf8_lossy(&t);
                Splits::from_json(&text, &path)
            }
        }));
        match result {
            Err(_) => {
                let saved = save_failure("splits", seed, case, &t);
                panic!(
                    "case {case} (seed {seed}): the splits reader panicked; input saved to {}",
                    saved.display()
                );
            }
            Ok(Ok(s)) => {
                s.validate().unwrap();
                ok += 1;
            }
            Ok(Err(e)) => {
                let msg = crate::error::error_chain(&e);
                assert!(msg.contains("splits.json"), "case {case}: {msg}");
                errors += 1;
            }
        }
    }
    eprintln!("splits fuzz: {n_cases} cases (seed {seed}): {ok} valid, {errors} errors");
    assert!(errors > 0, "no mutation was rejected");
}
