//! Finding the AV-MNIST kit locally, or fetching it from the public sources.
//!
//! [`ensure_avmnist`] looks for a complete kit in, in order, the given `data_dir`,
//! `$MCKD_DATA_DIR` and the `cache` folder (each is a folder that *contains* `avmnist/`).
//! The first complete one is returned unchanged (only presence is checked there, see
//! [`verify_avmnist`] for a full sha256 check). If none is complete, the files missing from
//! `cache` are downloaded there with `curl -fsSL` (no TLS in this crate): the 4 MNIST archives
//! from [`MNIST_BASE_URL`] and the 1,500 jackson/nicolas/theo recordings of FSDD v1.0.8 from
//! [`FSDD_BASE_URL`]. Each file goes to a temporary folder first, is verified against the
//! sha256 table compiled into this crate (FSDD: file sha256 from the kit manifest; MNIST: the
//! sha256 of the *decompressed* idx, since mirrors' gzip bytes differ) and only then renamed
//! into place. `smil_split.json` is derived data and never downloaded: without it
//! [`crate::load_avmnist`] rebuilds the split from the rule.
//!
//! Without network, the error is [`DataError::Network`] naming the URL and saying how to use
//! a local copy.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::hashes::{FSDD_SHA256, MNIST, MnistEntry};
use crate::idx::read_maybe_gz;

/// Environment variable naming the folder that contains `avmnist/`.
pub const DATA_DIR_ENV: &str = "MCKD_DATA_DIR";
/// Public mirror of the MNIST idx archives (file names appended).
pub const MNIST_BASE_URL: &str = "https://ossci-datasets.s3.amazonaws.com/mnist/";
/// FSDD v1.0.8 recordings (file names appended).
pub const FSDD_BASE_URL: &str =
    "https://raw.githubusercontent.com/Jakobovski/free-spoken-digit-dataset/v1.0.8/recordings/";

const OFFLINE_HINT: &str = "without network, copy the AV-MNIST kit (avmnist/mnist/*-ubyte.gz \
    and avmnist/fsdd/*.wav) to a local folder and pass the folder that contains avmnist/ with \
    --data-dir or the MCKD_DATA_DIR environment variable";

/// Where to download from, and with which curl (overridable for tests and mirrors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    /// Base URL of the MNIST `*-ubyte.gz` files, ending in `/`.
    pub mnist_base_url: String,
    /// Base URL of the FSDD `*.wav` files, ending in `/`.
    pub fsdd_base_url: String,
    /// curl executable.
    pub curl: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            mnist_base_url: MNIST_BASE_URL.to_string(),
            fsdd_base_url: FSDD_BASE_URL.to_string(),
            curl: PathBuf::from("curl"),
        }
    }
}

/// The 1,504 files a kit under `data_dir` needs (4 MNIST archives, then 1,500 recordings).
pub fn required_files(data_dir: &Path) -> Vec<PathBuf> {
    let root = data_dir.join("avmnist");
    MNIST
        .iter()
        .map(|m| root.join("mnist").join(m.name))
        .chain(FSDD_SHA256.iter().map(|(n, _)| root.join("fsdd").join(n)))
        .collect()
}

/// Required files absent under `data_dir`.
pub fn missing_files(data_dir: &Path) -> Vec<PathBuf> {
    required_files(data_dir)
        .into_iter()
        .filter(|p| !p.is_file())
        .collect()
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Lower-case hex sha256 of the file at `path`.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// [`DataError::Checksum`] unless the file's sha256 is `expected`.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual != expected {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

fn fsdd_table() -> &'static HashMap<&'static str, &'static str> {
    static T: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    T.get_or_init(|| FSDD_SHA256.iter().copied().collect())
}

/// Expected sha256 of an FSDD recording SMIL uses (jackson/nicolas/theo), by file name.
pub fn fsdd_sha256(name: &str) -> Option<&'static str> {
    fsdd_table().get(name).copied()
}

fn mnist_entry(name: &str) -> Option<&'static MnistEntry> {
    MNIST.iter().find(|m| m.name == name)
}

/// Verify an MNIST archive by the sha256 (and length) of its *decompressed* content, which
/// is the same for every mirror (a file byte-identical to the kit's own gzip copy is accepted
/// without decompressing). The file name must be one of the 4 MNIST `*.gz` names.
pub fn verify_mnist_archive(path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let Some(entry) = mnist_entry(name) else {
        return Err(DataError::format(
            path,
            "not one of the 4 MNIST archive names",
        ));
    };
    if sha256_file(path)? == entry.kit_gz_sha256 {
        return Ok(());
    }
    let raw = read_maybe_gz(path)?;
    let actual = sha256_hex(&raw);
    if actual != entry.raw_sha256 {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: format!(
                "{} (decompressed, {} bytes)",
                entry.raw_sha256, entry.raw_len
            ),
            actual: format!("{actual} (decompressed, {} bytes)", raw.len()),
        });
    }
    Ok(())
}

/// Verify one required file by name (MNIST archive or FSDD recording).
fn verify_by_name(path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if let Some(expected) = fsdd_sha256(name) {
        verify_sha256(path, expected)
    } else {
        verify_mnist_archive(path)
    }
}

/// Full check of the kit under `data_dir`: all 1,504 files present with the expected sha256
/// (decompressed sha256 for MNIST). Returns the first problem.
pub fn verify_avmnist(data_dir: &Path) -> Result<()> {
    for p in required_files(data_dir) {
        if !p.is_file() {
            return Err(DataError::Missing { path: p });
        }
        verify_by_name(&p)?;
    }
    Ok(())
}

/// Find a complete kit, or download the missing files into `cache`; returns the folder that
/// contains `avmnist/`. See the module doc. Uses `$MCKD_DATA_DIR` and the default sources.
pub fn ensure_avmnist(data_dir: Option<&Path>, cache: &Path) -> Result<PathBuf> {
    let env = std::env::var_os(DATA_DIR_ENV).map(PathBuf::from);
    ensure_avmnist_with(data_dir, env.as_deref(), cache, &Sources::default())
}

/// [`ensure_avmnist`] with the environment value and the sources given explicitly.
pub fn ensure_avmnist_with(
    data_dir: Option<&Path>,
    env_dir: Option<&Path>,
    cache: &Path,
    sources: &Sources,
) -> Result<PathBuf> {
    for dir in [data_dir, env_dir, Some(cache)].into_iter().flatten() {
        if missing_files(dir).is_empty() {
            return Ok(dir.to_path_buf());
        }
    }
    download_missing(cache, sources)?;
    Ok(cache.to_path_buf())
}

/// One file to fetch.
struct Job {
    url: String,
    tmp: PathBuf,
    dest: PathBuf,
}

fn curl_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Download every missing file of the kit under `cache`, verified, via a temporary folder.
fn download_missing(cache: &Path, sources: &Sources) -> Result<()> {
    let root = cache.join("avmnist");
    let tmp_root = root.join(format!(".download-{}", std::process::id()));
    for sub in ["mnist", "fsdd"] {
        for d in [root.join(sub), tmp_root.join(sub)] {
            std::fs::create_dir_all(&d).map_err(|e| DataError::io(&d, e))?;
        }
    }
    let mut jobs = Vec::new();
    for m in &MNIST {
        let dest = root.join("mnist").join(m.name);
        if !dest.is_file() {
            jobs.push(Job {
                url: format!("{}{}", sources.mnist_base_url, m.name),
                tmp: tmp_root.join("mnist").join(m.name),
                dest,
            });
        }
    }
    for (name, _) in &FSDD_SHA256 {
        let dest = root.join("fsdd").join(name);
        if !dest.is_file() {
            jobs.push(Job {
                url: format!("{}{}", sources.fsdd_base_url, name),
                tmp: tmp_root.join("fsdd").join(name),
                dest,
            });
        }
    }
    let result = jobs
        .chunks(250)
        .try_for_each(|batch| fetch_batch(batch, &tmp_root, sources));
    let _ = std::fs::remove_dir_all(&tmp_root);
    result
}

/// Fetch `batch` with one curl call (connection reuse), verify, move into place.
fn fetch_batch(batch: &[Job], tmp_root: &Path, sources: &Sources) -> Result<()> {
    let cfg_path = tmp_root.join("curl.cfg");
    let mut cfg = String::new();
    for j in batch {
        let out = j.tmp.to_string_lossy();
        cfg += &format!(
            "url = {}\noutput = {}\n",
            curl_quote(&j.url),
            curl_quote(&out)
        );
    }
    std::fs::write(&cfg_path, cfg).map_err(|e| DataError::io(&cfg_path, e))?;
    let output = Command::new(&sources.curl)
        .args([
            "-fsSL",
            "--retry",
            "2",
            "--connect-timeout",
            "20",
            "--max-time",
            "1800",
        ])
        .arg("--config")
        .arg(&cfg_path)
        .output()
        .map_err(|e| DataError::Network {
            url: batch[0].url.clone(),
            msg: format!(
                "could not run {}: {e}; {OFFLINE_HINT}",
                sources.curl.display()
            ),
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    for j in batch {
        let size = std::fs::metadata(&j.tmp).map(|m| m.len()).unwrap_or(0);
        if size == 0 {
            return Err(DataError::Network {
                url: j.url.clone(),
                msg: format!(
                    "curl exited with {} ({stderr}); {OFFLINE_HINT}",
                    output.status
                ),
            });
        }
        if let Err(e) = verify_by_name(&j.tmp) {
            let _ = std::fs::remove_file(&j.tmp);
            return Err(e);
        }
        std::fs::rename(&j.tmp, &j.dest).map_err(|e| DataError::io(&j.dest, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TempDir, data_dir};
    use std::io::Write;

    /// The compiled table equals the kit's MANIFEST.sha256 for the 1,500 recordings and the
    /// 4 archives; the whole local kit verifies (decompressed MNIST sha256 included).
    #[test]
    fn table_matches_manifest_and_kit_verifies() {
        let dir = data_dir();
        let text = std::fs::read_to_string(dir.join("avmnist/MANIFEST.sha256")).unwrap();
        let manifest: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(h, p)| (p.trim_start_matches("./"), h))
            .collect();
        for (name, h) in &FSDD_SHA256 {
            assert_eq!(
                manifest.get(format!("fsdd/{name}").as_str()),
                Some(h),
                "{name}"
            );
        }
        for m in &MNIST {
            let key = format!("mnist/{}", m.name);
            assert_eq!(
                manifest.get(key.as_str()),
                Some(&m.kit_gz_sha256),
                "{}",
                m.name
            );
        }
        let n_smil = manifest
            .keys()
            .filter(|k| ["jackson", "nicolas", "theo"].iter().any(|s| k.contains(s)))
            .count();
        assert_eq!(n_smil, 1500);
        verify_avmnist(&dir).unwrap();
        assert!(missing_files(&dir).is_empty());
    }

    #[test]
    fn corrupted_files_fail_verification() {
        let t = TempDir::new("sha_bad");
        let real = data_dir().join("avmnist/fsdd/0_jackson_0.wav");
        let mut bytes = std::fs::read(&real).unwrap();
        bytes[100] ^= 1;
        let p = t.write("0_jackson_0.wav", &bytes);
        let e = verify_by_name(&p).unwrap_err();
        assert!(matches!(e, DataError::Checksum { .. }), "{e}");
        assert!(e.to_string().contains("0_jackson_0.wav"), "{e}");
        verify_by_name(&real).unwrap();
        // A well-formed gzip whose content is not MNIST: decompressed sha256 mismatch.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&[0, 0, 8, 1, 0, 0, 0, 0]).unwrap();
        let p = t.write("t10k-labels-idx1-ubyte.gz", &enc.finish().unwrap());
        let e = verify_mnist_archive(&p).unwrap_err().to_string();
        assert!(
            e.contains("t10k-labels-idx1-ubyte.gz") && e.contains("sha256"),
            "{e}"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Local folders are found in order given dir, env dir, cache; nothing is downloaded.
    #[test]
    fn finds_local_kits_without_network() {
        let real = data_dir();
        let empty = TempDir::new("ensure_empty");
        let offline = Sources {
            curl: PathBuf::from("/nonexistent/curl-for-mckd-test"),
            ..Sources::default()
        };
        let got = ensure_avmnist_with(Some(&real), None, empty.path(), &offline).unwrap();
        assert_eq!(got, real);
        let got = ensure_avmnist_with(Some(empty.path()), Some(&real), empty.path(), &offline);
        assert_eq!(got.unwrap(), real);
        let got = ensure_avmnist_with(None, None, &real, &offline).unwrap();
        assert_eq!(got, real);
    }

    /// No network (unreachable URL) or no curl: a Network error naming the URL and the
    /// local-copy hint; only files missing from the cache are fetched.
    #[cfg(unix)]
    #[test]
    fn offline_download_fails_clearly() {
        use std::os::unix::fs::symlink;
        let t = TempDir::new("ensure_offline");
        let unreachable = Sources {
            mnist_base_url: "http://127.0.0.1:9/mnist/".into(),
            fsdd_base_url: "http://127.0.0.1:9/fsdd/".into(),
            curl: PathBuf::from("curl"),
        };
        let e = ensure_avmnist_with(None, None, t.path(), &unreachable).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DataError::Network { .. }), "{msg}");
        assert!(
            msg.contains("http://127.0.0.1:9/mnist/train-images-idx3-ubyte.gz"),
            "{msg}"
        );
        assert!(
            msg.contains("MCKD_DATA_DIR") && msg.contains("--data-dir"),
            "{msg}"
        );
        // Cache holding everything but one recording: only that one is requested.
        let real = data_dir().join("avmnist");
        let cache = TempDir::new("ensure_partial");
        let kit = cache.path().join("avmnist");
        std::fs::create_dir_all(kit.join("fsdd")).unwrap();
        symlink(real.join("mnist"), kit.join("mnist")).unwrap();
        for (name, _) in &FSDD_SHA256 {
            if *name != "7_theo_49.wav" {
                symlink(real.join("fsdd").join(name), kit.join("fsdd").join(name)).unwrap();
            }
        }
        let e = ensure_avmnist_with(None, None, cache.path(), &unreachable).unwrap_err();
        assert!(
            e.to_string()
                .contains("http://127.0.0.1:9/fsdd/7_theo_49.wav"),
            "{e}"
        );
        let no_curl = Sources {
            curl: PathBuf::from("/nonexistent/curl-for-mckd-test"),
            ..unreachable
        };
        let e = ensure_avmnist_with(None, None, cache.path(), &no_curl).unwrap_err();
        assert!(
            e.to_string()
                .contains("could not run /nonexistent/curl-for-mckd-test"),
            "{e}"
        );
        assert!(
            !kit.join(format!(".download-{}", std::process::id()))
                .exists()
        );
    }
}
