//! Randomised mutation tests of the file readers (issue 19): the real kit files (MNIST idx
//! plain and gzip, FSDD WAV, `smil_split.json`, `MANIFEST.sha256`) and a snapshot are mutated
//! (truncation, bit flips, byte overwrites, insertions, deletions, huge values in header
//! fields, and for gzip also mutations of the content before compression) and fed to the
//! readers. Each case asserts that the reader does not panic (`catch_unwind`) and that the
//! bytes it allocates on its thread stay within the bound stated for its format
//! ([`Target::bound`]), measured by a counting global allocator.
//!
//! CI runs `MCKD_FUZZ_CASES` cases (default 900, 100 per reader; under a second) from `MCKD_FUZZ_SEED`
//! (default `0x5eed`); a fuzzing job sets e.g. `MCKD_FUZZ_CASES=200000` and a fresh seed:
//!
//! ```text
//! MCKD_FUZZ_CASES=200000 MCKD_FUZZ_SEED=$RANDOM cargo test --release -p mckd-data -- \
//!     fuzz_tests --nocapture
//! ```
//!
//! A failing case is written to the temporary folder and named in the failure message with
//! its seed, case number and mutation, so it can be replayed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::avmnist::AvMnist;
use crate::idx::{IdxKind, MAX_IDX_BYTES, idx_content, idx_images_from, idx_labels_from};
use crate::manifest::Manifest;
use crate::split::SmilSplit;
use crate::testutil::data_dir;
use crate::wav::parse_wav;

// ----- allocation accounting (this test binary only) -----

/// Counts the live heap bytes of each thread (net of frees on that thread) and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // `try_with`: allocations during thread teardown are simply not counted.
    let _ = LIVE.try_with(|live| {
        let v = live.get() + delta;
        live.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Growing may briefly hold old and new blocks; count the larger one in full.
            note(new_size as isize);
            note(-(layout.size() as isize));
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f` and returns its result and the peak of live bytes it added on this thread.
fn peak_bytes<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get) - base;
    (r, peak.max(0) as usize)
}

// ----- targets -----

const KIB: usize = 1024;

/// A reader under test and the seed input it is fuzzed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// `t10k-labels-idx1-ubyte` decompressed (10,008 bytes), read as plain idx1.
    LabelsPlain,
    /// The kit's `t10k-labels-idx1-ubyte.gz`, read as gzip idx1.
    LabelsGz,
    /// The first 50 test images as an idx3 file (39,216 bytes), plain.
    ImagesPlain,
    /// The same, gzipped; mutations hit the compressed bytes.
    ImagesGz,
    /// The same; mutations hit the idx bytes, which are then gzipped (reaches the header
    /// checks behind gzip, e.g. huge counts).
    ImagesGzInner,
    /// FSDD recordings (the shortest, 6_nicolas_7, and 0_jackson_0).
    Wav,
    /// The kit's `smil_split.json`.
    SplitJson,
    /// The first 300 lines of the kit's `MANIFEST.sha256`.
    Manifest,
    /// A snapshot of a small synthetic dataset.
    Snapshot,
}

const TARGETS: [Target; 9] = [
    Target::LabelsPlain,
    Target::LabelsGz,
    Target::ImagesPlain,
    Target::ImagesGz,
    Target::ImagesGzInner,
    Target::Wav,
    Target::SplitJson,
    Target::Manifest,
    Target::Snapshot,
];

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The seed inputs, built once from the kit.
struct Seeds {
    labels: Vec<u8>,
    labels_gz: Vec<u8>,
    images: Vec<u8>,
    images_gz: Vec<u8>,
    wavs: Vec<Vec<u8>>,
    split: Vec<u8>,
    manifest: Vec<u8>,
    snapshot: Vec<u8>,
}

impl Seeds {
    fn load() -> Seeds {
        let kit = data_dir().join("avmnist");
        let read =
            |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let labels_gz = read(kit.join("mnist/t10k-labels-idx1-ubyte.gz"));
        let labels = crate::idx::read_idx_content(
            &kit.join("mnist/t10k-labels-idx1-ubyte.gz"),
            IdxKind::Labels,
        )
        .unwrap();
        let all = crate::read_idx_images(&kit.join("mnist/t10k-images-idx3-ubyte.gz")).unwrap();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 50, 0, 0, 0, 28, 0, 0, 0, 28];
        images.extend_from_slice(&all.pixels[..50 * 784]);
        let images_gz = gzip(&images);
        let wavs = ["6_nicolas_7.wav", "0_jackson_0.wav"]
            .iter()
            .map(|n| read(kit.join("fsdd").join(n)))
            .collect();
        let split = read(kit.join("smil_split.json"));
        let manifest_text = String::from_utf8(read(kit.join("MANIFEST.sha256"))).unwrap();
        let manifest: String = manifest_text
            .lines()
            .take(300)
            .map(|l| format!("{l}\n"))
            .collect();
        let snapshot = AvMnist::synthetic(3, 1, 9).unwrap().to_snapshot();
        Seeds {
            labels,
            labels_gz,
            images,
            images_gz,
            wavs,
            split,
            manifest: manifest.into_bytes(),
            snapshot,
        }
    }
}

impl Target {
    /// The seed input for this target (`pick` chooses among several).
    fn seed(self, s: &Seeds, pick: usize) -> &[u8] {
        match self {
            Target::LabelsPlain => &s.labels,
            Target::LabelsGz => &s.labels_gz,
            Target::ImagesPlain | Target::ImagesGzInner => &s.images,
            Target::ImagesGz => &s.images_gz,
            Target::Wav => &s.wavs[pick % s.wavs.len()],
            Target::SplitJson => &s.split,
            Target::Manifest => &s.manifest,
            Target::Snapshot => &s.snapshot,
        }
    }

    /// The file bytes from the (mutated) seed: gzipped for [`Target::ImagesGzInner`].
    fn finish(self, bytes: Vec<u8>) -> Vec<u8> {
        if self == Target::ImagesGzInner {
            gzip(&bytes)
        } else {
            bytes
        }
    }

    /// Byte offsets of 4-byte header fields worth setting to huge values, and their byte
    /// order (big-endian for idx).
    fn fields(self) -> (&'static [usize], bool) {
        match self {
            Target::LabelsPlain | Target::LabelsGz => (&[0, 4], true),
            Target::ImagesPlain | Target::ImagesGz | Target::ImagesGzInner => {
                (&[0, 4, 8, 12], true)
            }
            // RIFF size, fmt size, rate, byte rate, data size (canonical 44-byte header).
            Target::Wav => (&[4, 16, 24, 28, 40], false),
            Target::Snapshot => (&[8, 12, 17, 21, 25], false),
            Target::SplitJson | Target::Manifest => (&[], false),
        }
    }

    /// Runs the reader on `input` (the bytes of a file); `Ok(())` or its error message.
    fn run(self, input: &[u8]) -> Result<(), String> {
        let path = Path::new("fuzz-input");
        let gz_path = Path::new("fuzz-input.gz");
        let e = |e: crate::DataError| e.to_string();
        match self {
            Target::LabelsPlain => idx_content(input.to_vec(), false, path, IdxKind::Labels)
                .and_then(|b| idx_labels_from(b, path))
                .map(drop)
                .map_err(e),
            Target::LabelsGz => idx_content(input.to_vec(), true, gz_path, IdxKind::Labels)
                .and_then(|b| idx_labels_from(b, gz_path))
                .map(drop)
                .map_err(e),
            Target::ImagesPlain => idx_content(input.to_vec(), false, path, IdxKind::Images)
                .and_then(|b| idx_images_from(b, path))
                .map(drop)
                .map_err(e),
            Target::ImagesGz | Target::ImagesGzInner => {
                idx_content(input.to_vec(), true, gz_path, IdxKind::Images)
                    .and_then(|b| idx_images_from(b, gz_path))
                    .map(drop)
                    .map_err(e)
            }
            Target::Wav => parse_wav(input, path).map(drop).map_err(e),
            Target::SplitJson => SmilSplit::from_json_bytes(input, path).map(drop).map_err(e),
            Target::Manifest => std::str::from_utf8(input)
                .map_err(|err| err.to_string())
                .and_then(|t| Manifest::parse(t, path).map(drop).map_err(e)),
            Target::Snapshot => AvMnist::from_snapshot(input).map(drop),
        }
    }

    /// The stated allocation bound for an input of `n` bytes (the file as read is counted:
    /// the idx targets copy `input` first, as `read_idx_*` reads the file).
    ///
    /// * plain idx: the file, `n`, + 64 KiB (the payload is not copied);
    /// * gzip idx: the file + twice what the header may promise, which is capped at
    ///   `min(1032 n + 1024, MAX_IDX_BYTES)` (`Vec` doubling), + 1 MiB of inflate state;
    /// * WAV: samples as f32 (`2 n`) + 64 KiB;
    /// * split JSON: `24 n` + 1 MiB (numbers become `usize`, names `String`s, each list grows
    ///   by doubling, and the lists are then copied once into `SmilSplit`);
    /// * manifest: `8 n` + 64 KiB; snapshot: `12 n` + 64 KiB (floats `n`, and at most one
    ///   56-byte sample per 13 input bytes, doubled).
    fn bound(self, n: usize) -> usize {
        match self {
            Target::LabelsPlain | Target::ImagesPlain => n + 64 * KIB,
            Target::LabelsGz | Target::ImagesGz | Target::ImagesGzInner => {
                let promise = (1032 * n + 1024).min(MAX_IDX_BYTES as usize);
                n + 2 * promise + 1024 * KIB
            }
            Target::Wav => 2 * n + 64 * KIB,
            Target::SplitJson => 24 * n + 1024 * KIB,
            Target::Manifest => 8 * n + 64 * KIB,
            Target::Snapshot => 12 * n + 64 * KIB,
        }
    }
}

// ----- mutations -----

/// Applies 1-3 random mutations to `bytes`; returns a description.
fn mutate(bytes: &mut Vec<u8>, target: Target, rng: &mut StdRng) -> String {
    let mut what = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        let len = bytes.len();
        let op = rng.random_range(0..8);
        match op {
            0 if len > 0 => {
                let at = rng.random_range(0..len);
                bytes.truncate(at);
                what.push(format!("truncate to {at}"));
            }
            1 if len > 0 => {
                let flips = rng.random_range(1..=8);
                for _ in 0..flips {
                    let at = rng.random_range(0..len);
                    bytes[at] ^= 1 << rng.random_range(0..8);
                }
                what.push(format!("{flips} bit flips"));
            }
            2 if len > 0 => {
                let at = rng.random_range(0..len.min(64));
                let v = [0x00, 0xff, 0x7f, 0x80][rng.random_range(0..4)];
                bytes[at] = v;
                what.push(format!("byte {at} = {v:#x}"));
            }
            3 => {
                let (fields, big_endian) = target.fields();
                if fields.is_empty() {
                    continue;
                }
                let at = fields[rng.random_range(0..fields.len())];
                let v: u32 = [
                    u32::MAX,
                    u32::MAX - 1,
                    0x7fff_ffff,
                    0x1000_0000,
                    0,
                    rng.random(),
                ][rng.random_range(0..6)];
                if at + 4 <= bytes.len() {
                    let b = if big_endian {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    };
                    bytes[at..at + 4].copy_from_slice(&b);
                    what.push(format!("u32 at {at} = {v:#x}"));
                }
            }
            4 => {
                let at = rng.random_range(0..=len);
                let n = rng.random_range(1..64);
                let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                bytes.splice(at..at, junk);
                what.push(format!("insert {n} bytes at {at}"));
            }
            5 if len > 1 => {
                let at = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - at).min(256));
                bytes.drain(at..at + n);
                what.push(format!("delete {n} bytes at {at}"));
            }
            6 if matches!(target, Target::SplitJson | Target::Manifest) => {
                // Text-level: a huge number, a deep nesting, or a cut at a structural char.
                let text = String::from_utf8_lossy(bytes).into_owned();
                let pick = rng.random_range(0..3);
                let new = match pick {
                    0 => text.replacen(
                        char::is_numeric,
                        ["99999999999999999999", "1e308", "-1", "4294967296"]
                            [rng.random_range(0..4)],
                        1 + rng.random_range(0..3),
                    ),
                    1 => format!("{}{}", "[".repeat(rng.random_range(1..5000)), text),
                    _ => {
                        let cut = text
                            .char_indices()
                            .filter(|(_, c)| "{}[],:\"\n ".contains(*c))
                            .map(|(i, _)| i)
                            .nth(rng.random_range(0..2000))
                            .unwrap_or(0);
                        text[..cut].to_string()
                    }
                };
                *bytes = new.into_bytes();
                what.push(format!("text mutation {pick}"));
            }
            _ => {
                let n = rng.random_range(1..4096);
                bytes.extend((0..n).map(|_| rng.random::<u8>()));
                what.push(format!("append {n} random bytes"));
            }
        }
    }
    what.join(", ")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            let v = v.trim();
            v.strip_prefix("0x")
                .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .unwrap_or(default)
}

/// Saves a failing input and returns its path.
fn save_case(target: Target, seed: u64, case: u64, input: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mckd-fuzz-{target:?}-{seed:#x}-{case}.bin"));
    let _ = std::fs::write(&p, input);
    p
}

/// The readers neither panic nor exceed their allocation bound on mutated inputs, and the
/// unmutated seeds all parse (so the mutations start from valid files).
#[test]
fn readers_survive_mutated_inputs() {
    let cases = env_u64("MCKD_FUZZ_CASES", 900);
    let seed = env_u64("MCKD_FUZZ_SEED", 0x5eed);
    let seeds = Seeds::load();
    for t in TARGETS {
        for pick in 0..2 {
            t.run(&t.finish(t.seed(&seeds, pick).to_vec()))
                .unwrap_or_else(|e| panic!("{t:?}: the seed input does not parse: {e}"));
        }
    }
    let start = Instant::now();
    let mut errors = 0;
    let mut worst = [0.0f64; TARGETS.len()];
    for case in 0..cases {
        let mut rng = StdRng::seed_from_u64(seed ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let t_index = (case % TARGETS.len() as u64) as usize;
        let target = TARGETS[t_index];
        let mut input = target.seed(&seeds, rng.random_range(0..2)).to_vec();
        let what = mutate(&mut input, target, &mut rng);
        let input = target.finish(input);
        let (outcome, peak) = peak_bytes(|| catch_unwind(AssertUnwindSafe(|| target.run(&input))));
        let bound = target.bound(input.len());
        let saved = || save_case(target, seed, case, &input).display().to_string();
        match outcome {
            Err(_) => panic!(
                "{target:?} panicked on case {case} (seed {seed:#x}; {what}); input saved to {}",
                saved()
            ),
            Ok(r) => errors += usize::from(r.is_err()),
        }
        assert!(
            peak <= bound,
            "{target:?} allocated {peak} bytes > bound {bound} for {} input bytes on case \
             {case} (seed {seed:#x}; {what}); input saved to {}",
            input.len(),
            saved()
        );
        worst[t_index] = worst[t_index].max(peak as f64 / bound as f64);
    }
    let worst: Vec<String> = TARGETS
        .iter()
        .zip(worst)
        .map(|(t, w)| format!("{t:?} {:.1} %", 100.0 * w))
        .collect();
    eprintln!(
        "fuzz: {cases} cases (seed {seed:#x}) in {:.2} s, {errors} rejected with an error; \
         worst allocation per reader, in % of its bound: {}",
        start.elapsed().as_secs_f64(),
        worst.join(", ")
    );
    assert!(errors > 0 || cases == 0, "no mutation was ever rejected");
}

/// Gzip bombs: 64 MiB of zeros behind a header promising 10 images (7,856 bytes) stops one
/// byte past the promise; a header promising 2^32 - 1 images is refused before inflating.
#[test]
fn gzip_bombs_are_capped_by_the_header() {
    let mut bomb = vec![0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28];
    bomb.resize(64 << 20, 0);
    let gz = gzip(&bomb);
    assert!(gz.len() < 200 * KIB, "{}", gz.len());
    let path = Path::new("bomb-idx3-ubyte.gz");
    let (r, peak) = peak_bytes(|| idx_content(gz.clone(), true, path, IdxKind::Images));
    // (No `unwrap_err`: its message would print the 64 MiB it wrongly accepted.)
    let Err(e) = r else {
        panic!("the gzip bomb was accepted")
    };
    let msg = e.to_string();
    assert!(
        msg.contains("more than the 7856 bytes its idx header promises"),
        "{msg}"
    );
    assert!(peak < 1024 * KIB, "peak {peak}");
    // A count the compressed size cannot hold: refused after the 16 header bytes.
    bomb[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    let gz = gzip(&bomb);
    drop(bomb);
    let (r, peak) = peak_bytes(|| idx_content(gz, true, path, IdxKind::Images));
    let Err(e) = r else {
        panic!("a header promising 2^32 - 1 images was accepted")
    };
    let msg = e.to_string();
    assert!(msg.contains("header is corrupt"), "{msg}");
    assert!(peak < 1024 * KIB, "peak {peak}");
}

/// Files above each reader's size cap are refused from their length alone (sparse files of
/// the cap + 1 byte: nothing is read, almost nothing allocated).
#[test]
fn oversized_files_are_refused_before_reading() {
    let t = crate::testutil::TempDir::new("caps");
    let sparse = |name: &str, len: u64| {
        let p = t.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        p
    };
    let e = |r: crate::Result<()>| r.err().map(|e| e.to_string()).unwrap_or_default();
    type Reader = Box<dyn Fn(&Path) -> String>;
    let cases: Vec<(PathBuf, Reader, &str)> = vec![
        (
            sparse("big-idx1-ubyte", MAX_IDX_BYTES + 1),
            Box::new(move |p| e(crate::read_idx_labels(p).map(drop))),
            "idx files above",
        ),
        (
            sparse("big-idx3-ubyte.gz", MAX_IDX_BYTES + 1),
            Box::new(move |p| e(crate::read_idx_images(p).map(drop))),
            "idx files above",
        ),
        (
            sparse("big.wav", crate::wav::MAX_WAV_BYTES + 1),
            Box::new(move |p| e(crate::read_wav(p).map(drop))),
            "WAV files above",
        ),
        (
            sparse("big.json", crate::split::MAX_SPLIT_BYTES + 1),
            Box::new(move |p| e(SmilSplit::load(p).map(drop))),
            "split files above",
        ),
        (
            sparse("big.sha256", crate::manifest::MAX_MANIFEST_BYTES + 1),
            Box::new(move |p| e(Manifest::load(p).map(drop))),
            "manifests above",
        ),
    ];
    for (path, read, want) in cases {
        let (msg, peak) = peak_bytes(|| read(&path));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(msg.contains(&name) && msg.contains(want), "{msg}");
        assert!(peak < 64 * KIB, "{name}: {peak} bytes allocated");
    }
    // Not UTF-8: a clear error, not a panic.
    let p = t.path().join("latin1.json");
    std::fs::write(&p, b"{\"train_pool\": \"\xe9\"}").unwrap();
    let msg = e(SmilSplit::load(&p).map(drop));
    assert!(
        msg.contains("latin1.json") && msg.contains("not UTF-8"),
        "{msg}"
    );
}
