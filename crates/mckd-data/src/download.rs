//! Finding the AV-MNIST kit locally, or fetching it from the public sources.
//!
//! [`ensure_avmnist`] never downloads into, or looks past, a folder the user named: a
//! `data_dir` argument (`--data-dir`) or `$MCKD_DATA_DIR` must hold a complete kit, otherwise
//! the error names the folder, how it was named and which files are missing
//! ([`check_kit`]). Only when no folder was named is the `cache` folder used, and the files
//! missing from it are downloaded ([`download_avmnist`], which can also be called directly).
//!
//! A download says what it fetches and reports progress (through a callback; on stderr from
//! [`ensure_avmnist`]), and is bounded in time: `curl` (no TLS in this crate) gets a connect
//! timeout, and the whole download an overall deadline after which curl is killed. The first
//! file is fetched alone, without retries, so that an offline machine (failed DNS lookup,
//! refused connection, unreachable host) stops after one attempt with *one* error that names
//! the URL and the folder to provide instead. Files go to a temporary folder
//! `avmnist/.download-<pid>` first, are verified against the sha256 manifest compiled into
//! this crate ([`crate::manifest::sources`]; MNIST archives by their decompressed content,
//! since mirrors' gzip bytes differ) and only then moved into place. The temporary folder is
//! removed when the download ends, successfully or not, and a folder left by a killed
//! download is removed on the next start once its process is gone. `smil_split.json` is
//! derived data and never downloaded: without it [`crate::load_avmnist`] rebuilds the split
//! from the rule.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::idx::{IdxKind, read_idx_content};
use crate::manifest::{MNIST_ARCHIVES, Manifest, fsdd_names, sources};

/// Environment variable naming the folder that contains `avmnist/`.
pub const DATA_DIR_ENV: &str = "MCKD_DATA_DIR";
/// Public mirror of the MNIST idx archives (file names appended).
pub const MNIST_BASE_URL: &str = "https://ossci-datasets.s3.amazonaws.com/mnist/";
/// FSDD v1.0.8 recordings (file names appended).
pub const FSDD_BASE_URL: &str =
    "https://raw.githubusercontent.com/Jakobovski/free-spoken-digit-dataset/v1.0.8/recordings/";
/// Default limit for establishing one connection (DNS lookup included).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit for a whole download (about 22 MB for a complete kit).
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Files per curl call after the first (one call reuses its connection).
const BATCH: usize = 100;
/// Prefix of the temporary download folders inside `avmnist/`.
const TMP_PREFIX: &str = ".download-";
/// Without `/proc`, a temporary folder older than this is taken as left by a killed download.
const STALE_AGE: Duration = Duration::from_secs(24 * 3600);

/// Where to download from, with which curl and within which time limits (overridable for
/// tests and mirrors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    /// Base URL of the MNIST `*-ubyte.gz` files, ending in `/`.
    pub mnist_base_url: String,
    /// Base URL of the FSDD `*.wav` files, ending in `/`.
    pub fsdd_base_url: String,
    /// curl executable.
    pub curl: PathBuf,
    /// Limit for establishing each connection, DNS lookup included.
    pub connect_timeout: Duration,
    /// Limit for the whole download; curl is killed when it is reached.
    pub total_timeout: Duration,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            mnist_base_url: MNIST_BASE_URL.to_string(),
            fsdd_base_url: FSDD_BASE_URL.to_string(),
            curl: PathBuf::from("curl"),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
        }
    }
}

/// The 1,504 files a kit under `data_dir` needs (4 MNIST archives, then the 1,500 recordings
/// in name order).
pub fn required_files(data_dir: &Path) -> Vec<PathBuf> {
    let root = data_dir.join("avmnist");
    MNIST_ARCHIVES
        .iter()
        .map(|m| root.join("mnist").join(m))
        .chain(fsdd_names().map(|n| root.join("fsdd").join(n)))
        .collect()
}

/// Required files absent under `data_dir`.
pub fn missing_files(data_dir: &Path) -> Vec<PathBuf> {
    required_files(data_dir)
        .into_iter()
        .filter(|p| !p.is_file())
        .collect()
}

/// `Ok` if `dir` holds a complete kit (all [`required_files`]); otherwise a
/// [`DataError::Layout`] naming `dir`, how it was named (`named_by`, e.g. `"--data-dir"` or
/// `"MCKD_DATA_DIR"`) and what is missing: the folder itself, its `avmnist/` subfolder (with a
/// hint when `dir` is the `avmnist` folder itself), or the count and the first missing files.
pub fn check_kit(dir: &Path, named_by: &str) -> Result<()> {
    let missing = missing_files(dir);
    if missing.is_empty() {
        return Ok(());
    }
    let detail = if !dir.is_dir() {
        "the folder does not exist".to_string()
    } else if !dir.join("avmnist").is_dir() {
        if dir.join("mnist").is_dir() && dir.join("fsdd").is_dir() {
            format!(
                "it has no avmnist/ subfolder; it looks like the avmnist folder itself, so name \
                 its parent {} instead",
                dir.parent().unwrap_or(Path::new("..")).display()
            )
        } else {
            "it has no avmnist/ subfolder".to_string()
        }
    } else {
        let total = required_files(dir).len();
        let shown: Vec<String> = missing
            .iter()
            .take(5)
            .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
            .collect();
        let more = missing.len().saturating_sub(shown.len());
        format!(
            "{} of its {total} files are missing: {}{}",
            missing.len(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    };
    Err(DataError::Layout {
        dir: dir.to_path_buf(),
        msg: format!(
            "{named_by} names this folder, but it is not a complete AV-MNIST kit: {detail}. \
             Nothing is downloaded into a folder you name: copy the kit into it \
             (avmnist/mnist/*-ubyte.gz and avmnist/fsdd/*.wav), or name the folder that \
             contains avmnist/"
        ),
    })
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

/// Expected sha256 of an FSDD recording SMIL uses (jackson/nicolas/theo), by file name.
pub fn fsdd_sha256(name: &str) -> Option<&'static str> {
    sources().get(&format!("fsdd/{name}"))
}

/// Verify an MNIST archive by the sha256 of its *decompressed* content, which is the same for
/// every mirror (a file byte-identical to the kit's own gzip copy is accepted without
/// decompressing). The file name must be one of the 4 MNIST `*.gz` names.
pub fn verify_mnist_archive(path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let (Some(kit_gz), Some(raw), Some(kind)) = (
        sources().get(&format!("mnist/{name}")),
        sources().get(&format!("mnist/{}", name.trim_end_matches(".gz"))),
        IdxKind::from_name(name),
    ) else {
        return Err(DataError::format(
            path,
            "not one of the 4 MNIST archive names",
        ));
    };
    if !name.ends_with(".gz") {
        return Err(DataError::format(
            path,
            "not one of the 4 MNIST archive names",
        ));
    }
    if sha256_file(path)? == kit_gz {
        return Ok(());
    }
    let content = read_idx_content(path, kind)?;
    let actual = sha256_hex(&content);
    if actual != raw {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: format!("{raw} (decompressed)"),
            actual: format!("{actual} (decompressed, {} bytes)", content.len()),
        });
    }
    Ok(())
}

/// Verify one required file by name (MNIST archive or FSDD recording) against the compiled-in
/// manifest.
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

/// Full check of the kit under `data_dir`; returns the first problem.
///
/// With the kit's own `avmnist/MANIFEST.sha256`, every file it lists must exist and match,
/// and every [`required_files`] entry must exist (one the manifest does not list is checked
/// against the compiled-in manifest). Without it (e.g. a downloaded cache), the required
/// files are checked against the compiled-in manifest (MNIST by decompressed content).
pub fn verify_avmnist(data_dir: &Path) -> Result<()> {
    let root = data_dir.join("avmnist");
    let kit_manifest = root.join("MANIFEST.sha256");
    let manifest = if kit_manifest.is_file() {
        Some(Manifest::load(&kit_manifest)?)
    } else {
        None
    };
    if let Some(m) = &manifest {
        for (rel, hash) in m.iter() {
            let p = root.join(rel);
            if !p.is_file() {
                return Err(DataError::Missing { path: p });
            }
            verify_sha256(&p, hash)?;
        }
    }
    for p in required_files(data_dir) {
        if !p.is_file() {
            return Err(DataError::Missing { path: p });
        }
        let listed = manifest.as_ref().is_some_and(|m| {
            p.strip_prefix(&root)
                .ok()
                .and_then(|r| r.to_str())
                .is_some_and(|r| m.get(&r.replace('\\', "/")).is_some())
        });
        if !listed {
            verify_by_name(&p)?;
        }
    }
    Ok(())
}

/// Find the kit, or download the missing files into `cache`; returns the folder that contains
/// `avmnist/`. `data_dir` (`--data-dir`) and `$MCKD_DATA_DIR`, when set, must hold a complete
/// kit ([`check_kit`]); only when neither is set is `cache` used and completed by a download
/// with progress on stderr. See the module doc.
pub fn ensure_avmnist(data_dir: Option<&Path>, cache: &Path) -> Result<PathBuf> {
    let env = std::env::var_os(DATA_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    ensure_avmnist_with(data_dir, env.as_deref(), cache, &Sources::default())
}

/// [`ensure_avmnist`] with the environment value and the sources given explicitly.
pub fn ensure_avmnist_with(
    data_dir: Option<&Path>,
    env_dir: Option<&Path>,
    cache: &Path,
    sources: &Sources,
) -> Result<PathBuf> {
    if let Some(dir) = data_dir {
        check_kit(dir, "--data-dir")?;
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = env_dir {
        check_kit(dir, DATA_DIR_ENV).map_err(|e| match e {
            DataError::Layout { dir, msg } => DataError::Layout {
                msg: format!(
                    "{msg}; or unset {DATA_DIR_ENV} to use the download cache {}",
                    cache.display()
                ),
                dir,
            },
            other => other,
        })?;
        return Ok(dir.to_path_buf());
    }
    if missing_files(cache).is_empty() {
        return Ok(cache.to_path_buf());
    }
    download_avmnist(cache, sources, &mut |m| eprintln!("mckd-data: {m}"))?;
    Ok(cache.to_path_buf())
}

/// One file to fetch.
struct Job {
    url: String,
    tmp: PathBuf,
    dest: PathBuf,
}

/// Removes the temporary download folder when dropped (success, error or panic).
struct TempFolder(PathBuf);

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether the process `pid` is running: `Some` where `/proc` tells, `None` elsewhere.
fn process_alive(pid: u32) -> Option<bool> {
    Path::new("/proc/self")
        .is_dir()
        .then(|| Path::new("/proc").join(pid.to_string()).exists())
}

/// Remove `avmnist/.download-<pid>` folders whose process is gone (or, without `/proc`, that
/// are older than a day): they were left by a killed download.
fn remove_stale_temp_folders(root: &Path, log: &mut dyn FnMut(&str)) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TMP_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let stale = process_alive(pid).map_or_else(
            || {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_AGE)
            },
            |alive| !alive,
        );
        if stale && std::fs::remove_dir_all(entry.path()).is_ok() {
            log(&format!(
                "removed {}, left by an interrupted download",
                entry.path().display()
            ));
        }
    }
}

/// Hint appended to every download error: the folder to provide instead.
fn local_copy_hint(root: &Path) -> String {
    format!(
        "to use a local copy instead, copy the kit so that {0}/mnist/*-ubyte.gz and \
         {0}/fsdd/*.wav exist, or pass --data-dir or set {DATA_DIR_ENV} to the folder that \
         contains avmnist/",
        root.display()
    )
}

/// Download every kit file missing under `dest` (the folder that contains `avmnist/`),
/// verified, via a temporary folder; `log` receives what is fetched and the progress. Bounded
/// by `sources.connect_timeout` per connection and `sources.total_timeout` overall; the first
/// failure ends the download with one [`DataError::Network`] naming the URL and the folder to
/// provide instead (or a [`DataError::Checksum`] for a file that arrived but is wrong). See
/// the module doc.
pub fn download_avmnist(dest: &Path, sources: &Sources, log: &mut dyn FnMut(&str)) -> Result<()> {
    let start = Instant::now();
    let root = dest.join("avmnist");
    for sub in ["mnist", "fsdd"] {
        let d = root.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| DataError::io(&d, e))?;
    }
    remove_stale_temp_folders(&root, log);
    let tmp = TempFolder(root.join(format!("{TMP_PREFIX}{}", std::process::id())));
    let mut jobs = Vec::new();
    for (sub, base, names) in [
        ("mnist", &sources.mnist_base_url, MNIST_ARCHIVES.to_vec()),
        ("fsdd", &sources.fsdd_base_url, fsdd_names().collect()),
    ] {
        for name in names {
            let dest = root.join(sub).join(name);
            if !dest.is_file() {
                jobs.push(Job {
                    url: format!("{base}{name}"),
                    tmp: tmp.0.join(sub).join(name),
                    dest,
                });
            }
        }
    }
    if jobs.is_empty() {
        return Ok(());
    }
    for sub in ["mnist", "fsdd"] {
        let d = tmp.0.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| DataError::io(&d, e))?;
    }
    log(&format!(
        "downloading {} missing AV-MNIST files (a whole kit is about 22 MB) into {} from {} and \
         {}; limits: {:.1} s per connection, {:.1} s overall. To use a local copy instead, stop this \
         and pass --data-dir or set {DATA_DIR_ENV} to the folder that contains avmnist/",
        jobs.len(),
        root.display(),
        sources.mnist_base_url,
        sources.fsdd_base_url,
        sources.connect_timeout.as_secs_f64(),
        sources.total_timeout.as_secs_f64()
    ));
    // A limit too large for `Instant` (e.g. `Duration::MAX`) means "a year".
    let deadline = start
        .checked_add(sources.total_timeout)
        .unwrap_or(start + Duration::from_secs(365 * 24 * 3600));
    // The first file alone and without retries: offline, this is the only attempt.
    let (first, rest) = jobs.split_at(1);
    let batches = std::iter::once(first).chain(rest.chunks(BATCH));
    let mut done = 0;
    for (i, batch) in batches.enumerate() {
        fetch_batch(batch, &tmp.0, sources, deadline, i > 0, &root)?;
        done += batch.len();
        log(&format!(
            "{done}/{} files downloaded and verified ({:.1} s)",
            jobs.len(),
            start.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

fn curl_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What a curl exit code means, in words.
fn curl_reason(code: Option<i32>) -> String {
    match code {
        Some(6) => "the host name could not be resolved (no network or no DNS)".into(),
        Some(7) => "could not connect (connection refused or host unreachable)".into(),
        Some(28) => "timed out".into(),
        Some(22) => "the server answered with an HTTP error (file not found there?)".into(),
        Some(35 | 60) => "TLS handshake or certificate failure".into(),
        Some(18 | 52 | 56) => "the connection broke off during the transfer".into(),
        Some(c) => format!("curl exited with code {c}"),
        None => "curl was killed by a signal".into(),
    }
}

/// Fetch `batch` with one curl call (connection reuse), killed at `deadline`; then verify and
/// move each file into place.
fn fetch_batch(
    batch: &[Job],
    tmp_root: &Path,
    sources: &Sources,
    deadline: Instant,
    retry: bool,
    root: &Path,
) -> Result<()> {
    let network = |url: &str, what: String| DataError::Network {
        url: url.to_string(),
        msg: format!("{what}; {}", local_copy_hint(root)),
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(network(
            &batch[0].url,
            format!(
                "the overall limit of {:.1} s is used up",
                sources.total_timeout.as_secs_f64()
            ),
        ));
    }
    let cfg_path = tmp_root.join("curl.cfg");
    let err_path = tmp_root.join("curl.err");
    let mut cfg = String::new();
    for j in batch {
        cfg += &format!(
            "url = {}\noutput = {}\n",
            curl_quote(&j.url),
            curl_quote(&j.tmp.to_string_lossy())
        );
    }
    std::fs::write(&cfg_path, cfg).map_err(|e| DataError::io(&cfg_path, e))?;
    let err_file = std::fs::File::create(&err_path).map_err(|e| DataError::io(&err_path, e))?;
    let mut cmd = Command::new(&sources.curl);
    cmd.args([
        "--silent",
        "--show-error",
        "--fail",
        "--location",
        "--fail-early",
    ])
    .arg("--connect-timeout")
    .arg(format!("{:.3}", sources.connect_timeout.as_secs_f64()))
    .arg("--max-time")
    .arg(format!("{:.3}", remaining.as_secs_f64()));
    if retry {
        // Transient HTTP errors and timeouts only; curl never retries a failed DNS lookup.
        cmd.args(["--retry", "2"]);
    }
    let mut child = cmd
        .arg("--config")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .map_err(|e| {
            network(
                &batch[0].url,
                format!("could not run {}: {e}", sources.curl.display()),
            )
        })?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(DataError::io(&sources.curl, e)),
        }
    };
    let first_err_line = std::fs::read_to_string(&err_path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| format!(" ({l})"))
        .unwrap_or_default();
    let failure = match status {
        Some(s) if s.success() => None,
        Some(s) => Some(format!("{}{first_err_line}", curl_reason(s.code()))),
        None => Some(format!(
            "the overall limit of {:.1} s was reached",
            sources.total_timeout.as_secs_f64()
        )),
    };
    for j in batch {
        let verified = j.tmp.is_file().then(|| verify_by_name(&j.tmp));
        match (verified, &failure) {
            (Some(Ok(())), _) => {
                std::fs::rename(&j.tmp, &j.dest).map_err(|e| DataError::io(&j.dest, e))?;
            }
            // curl failed on this file (absent or partial): its error is the one to report.
            (Some(Err(_)) | None, Some(why)) => return Err(network(&j.url, why.clone())),
            (None, None) => return Err(network(&j.url, "curl wrote no file".to_string())),
            (Some(Err(e)), None) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TempDir, data_dir};
    use std::collections::HashMap;
    use std::io::Write;
    use std::net::TcpListener;

    /// Sources that fail at once if curl were ever run.
    fn no_curl() -> Sources {
        Sources {
            curl: PathBuf::from("/nonexistent/curl-for-mckd-test"),
            ..Sources::default()
        }
    }

    fn local(base: &str) -> Sources {
        Sources {
            mnist_base_url: format!("{base}/mnist/"),
            fsdd_base_url: format!("{base}/fsdd/"),
            curl: PathBuf::from("curl"),
            connect_timeout: Duration::from_secs(3),
            total_timeout: Duration::from_secs(60),
        }
    }

    /// Serve `files` (URL path → body) over HTTP/1.1 on loopback, one request per
    /// connection; other paths get 404. Returns the base URL.
    fn serve(files: HashMap<String, Vec<u8>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (code, body) = match files.get(&path) {
                    Some(b) => ("200 OK", b.clone()),
                    None => ("404 Not Found", b"not found".to_vec()),
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            }
        });
        format!("http://{addr}")
    }

    /// A kit under `t` made of symlinks into the shared kit: `avmnist/mnist/` holds links to
    /// the 4 archives but `skip_mnist`; `avmnist/fsdd` is a link to the shared folder when
    /// `skip_fsdd` is empty (nothing may then be written into it), else a folder of links to
    /// the 1,500 SMIL recordings but `skip_fsdd`.
    #[cfg(unix)]
    fn kit_links(t: &TempDir, skip_mnist: &[&str], skip_fsdd: &[&str]) -> PathBuf {
        use std::os::unix::fs::symlink;
        let real = data_dir().join("avmnist");
        let kit = t.path().join("avmnist");
        std::fs::create_dir_all(kit.join("mnist")).unwrap();
        for m in MNIST_ARCHIVES.iter().filter(|m| !skip_mnist.contains(m)) {
            symlink(real.join("mnist").join(m), kit.join("mnist").join(m)).unwrap();
        }
        if skip_fsdd.is_empty() {
            symlink(real.join("fsdd"), kit.join("fsdd")).unwrap();
        } else {
            std::fs::create_dir_all(kit.join("fsdd")).unwrap();
            for n in fsdd_names().filter(|n| !skip_fsdd.contains(n)) {
                symlink(real.join("fsdd").join(n), kit.join("fsdd").join(n)).unwrap();
            }
        }
        t.path().to_path_buf()
    }

    /// The local kit verifies against its own MANIFEST.sha256 (all 3,007 files), a copy
    /// without the manifest verifies against the compiled-in one, and a wrong line in a kit
    /// manifest is reported for its file.
    #[cfg(unix)]
    #[test]
    fn kit_verifies_with_its_manifest_or_the_compiled_one() {
        let dir = data_dir();
        verify_avmnist(&dir).unwrap();
        assert!(missing_files(&dir).is_empty());
        let t = TempDir::new("verify_nomanifest");
        let copy = kit_links(&t, &[], &[]);
        assert!(!copy.join("avmnist/MANIFEST.sha256").exists());
        verify_avmnist(&copy).unwrap();
        // The kit's manifest with one digest changed.
        let text = std::fs::read_to_string(dir.join("avmnist/MANIFEST.sha256")).unwrap();
        let line = text
            .lines()
            .find(|l| l.ends_with("fsdd/4_theo_33.wav"))
            .unwrap();
        let bad: String = text
            .replace(line, &format!("{}{}", "0".repeat(64), &line[64..]))
            .lines()
            .filter(|l| l.contains("  ./mnist/") || l.contains("  ./fsdd/"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(bad.lines().count(), 3004);
        t.write("avmnist/MANIFEST.sha256", bad.as_bytes());
        let e = verify_avmnist(&copy).unwrap_err();
        assert!(matches!(e, DataError::Checksum { .. }), "{e}");
        assert!(e.to_string().contains("4_theo_33.wav"), "{e}");
        // A file the manifest lists but the kit lacks.
        let extra = format!("{}  ./fsdd/0_nobody_0.wav\n", "0".repeat(64));
        t.write("avmnist/MANIFEST.sha256", extra.as_bytes());
        let e = verify_avmnist(&copy).unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }) && e.to_string().contains("0_nobody_0"));
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
        let gz = |raw: &[u8], level| {
            let mut enc =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
            enc.write_all(raw).unwrap();
            enc.finish().unwrap()
        };
        let p = t.write(
            "t10k-labels-idx1-ubyte.gz",
            &gz(&[0, 0, 8, 1, 0, 0, 0, 0], 1),
        );
        let e = verify_mnist_archive(&p).unwrap_err().to_string();
        assert!(
            e.contains("t10k-labels-idx1-ubyte.gz") && e.contains("sha256"),
            "{e}"
        );
        // A mirror's gzip (other bytes, same content) verifies by its decompressed content.
        let kit = data_dir().join("avmnist/mnist/t10k-labels-idx1-ubyte.gz");
        let raw = crate::idx::read_idx_content(&kit, IdxKind::Labels).unwrap();
        let mirror = gz(&raw, 1);
        assert_ne!(mirror, std::fs::read(&kit).unwrap());
        let p = t.write("t10k-labels-idx1-ubyte.gz", &mirror);
        verify_mnist_archive(&p).unwrap();
        let p = t.write("other.gz", &mirror);
        assert!(verify_mnist_archive(&p).is_err());
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Complete local kits are found (given dir, env dir, cache) and nothing is downloaded.
    #[test]
    fn finds_local_kits_without_network() {
        let real = data_dir();
        let empty = TempDir::new("ensure_empty");
        let got = ensure_avmnist_with(Some(&real), None, empty.path(), &no_curl()).unwrap();
        assert_eq!(got, real);
        let got = ensure_avmnist_with(None, Some(&real), empty.path(), &no_curl()).unwrap();
        assert_eq!(got, real);
        let got = ensure_avmnist_with(None, None, &real, &no_curl()).unwrap();
        assert_eq!(got, real);
    }

    /// A folder named by --data-dir or MCKD_DATA_DIR that is missing or incomplete is an error
    /// naming it, how it was named and what is missing; nothing is downloaded (curl would
    /// fail with "could not run") and the cache is not touched.
    #[cfg(unix)]
    #[test]
    fn named_folders_are_checked_never_downloaded() {
        let real = data_dir();
        let cache = TempDir::new("named_cache");
        let empty = TempDir::new("named_empty");
        let absent = empty.path().join("no-such-folder");
        let t = TempDir::new("named_partial");
        let partial = kit_links(&t, &["t10k-labels-idx1-ubyte.gz"], &[]);
        let avmnist_itself = real.join("avmnist");
        let cases: Vec<(&Path, &str)> = vec![
            (&absent, "the folder does not exist"),
            (empty.path(), "it has no avmnist/ subfolder"),
            (&avmnist_itself, "name its parent"),
            (
                &partial,
                "1 of its 1504 files are missing: avmnist/mnist/t10k-labels-idx1-ubyte.gz.",
            ),
        ];
        for (dir, want) in &cases {
            for named_by_env in [false, true] {
                let (d, env) = if named_by_env {
                    (None, Some(*dir))
                } else {
                    (Some(*dir), None)
                };
                let e = ensure_avmnist_with(d, env, cache.path(), &no_curl()).unwrap_err();
                assert!(matches!(e, DataError::Layout { .. }), "{e}");
                let msg = e.to_string();
                let by = if named_by_env {
                    "MCKD_DATA_DIR"
                } else {
                    "--data-dir"
                };
                assert!(
                    msg.contains(&dir.display().to_string())
                        && msg.contains(by)
                        && msg.contains(want)
                        && msg.contains("Nothing is downloaded"),
                    "{msg}"
                );
                assert_eq!(
                    msg.contains(&format!("download cache {}", cache.path().display())),
                    named_by_env,
                    "{msg}"
                );
                assert!(!msg.contains("could not run"), "{msg}");
            }
        }
        assert!(
            !cache.path().join("avmnist").exists(),
            "the cache was touched"
        );
    }

    /// Offline (refused connection, unresolvable host): one error within seconds, naming the
    /// first URL, the folder to provide and the options; one curl line at most; the temporary
    /// folder of this attempt and a stale one from a killed download are gone.
    #[test]
    fn offline_download_fails_fast_with_one_message() {
        for base in ["http://127.0.0.1:9", "http://mckd-offline-test.invalid"] {
            let t = TempDir::new("offline");
            // pid 4,000,000,000 is above Linux's pid_max: never a live process.
            let stale = t.path().join("avmnist/.download-4000000000");
            std::fs::create_dir_all(stale.join("fsdd")).unwrap();
            std::fs::write(stale.join("fsdd/0_theo_0.wav"), b"partial").unwrap();
            let mut log = Vec::new();
            let start = Instant::now();
            let e = download_avmnist(t.path(), &local(base), &mut |m| log.push(m.to_string()))
                .unwrap_err();
            let elapsed = start.elapsed();
            let msg = e.to_string();
            assert!(elapsed < Duration::from_secs(10), "{base}: {elapsed:?}");
            assert!(matches!(e, DataError::Network { .. }), "{msg}");
            let url = format!("{base}/mnist/train-images-idx3-ubyte.gz");
            assert!(
                msg.starts_with(&format!("download of {url} failed: ")),
                "{msg}"
            );
            let root = t.path().join("avmnist");
            assert!(
                msg.contains(&format!("{}/fsdd/*.wav", root.display()))
                    && msg.contains("--data-dir")
                    && msg.contains("MCKD_DATA_DIR"),
                "{msg}"
            );
            assert!(
                msg.matches("curl:").count() <= 1 && !msg.contains('\n'),
                "{msg}"
            );
            assert!(
                msg.contains("connection refused") || msg.contains("could not be resolved"),
                "{msg}"
            );
            assert!(!stale.exists(), "stale temporary folder kept");
            assert!(
                log.iter().any(|l| l.contains("interrupted download")),
                "{log:?}"
            );
            assert!(
                log.iter().any(|l| l.contains("downloading 1504 missing")),
                "{log:?}"
            );
            let left: Vec<_> = std::fs::read_dir(&root)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n.to_string_lossy().starts_with(TMP_PREFIX))
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }

    /// A server that accepts but never answers: the overall limit ends the download.
    #[test]
    fn stalled_download_hits_the_overall_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(4).collect();
            std::thread::sleep(Duration::from_secs(30));
            drop(held);
        });
        let t = TempDir::new("stalled");
        let sources = Sources {
            total_timeout: Duration::from_millis(1500),
            ..local(&base)
        };
        let start = Instant::now();
        let e = download_avmnist(t.path(), &sources, &mut |_| {}).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{:?}",
            start.elapsed()
        );
        let msg = e.to_string();
        assert!(
            msg.contains("train-images-idx3-ubyte.gz") && msg.contains("--data-dir"),
            "{msg}"
        );
        assert!(
            msg.contains("timed out") || msg.contains("overall limit"),
            "{msg}"
        );
    }

    /// From a local HTTP server: the missing files (one MNIST archive as a mirror's gzip,
    /// 150 recordings) arrive verified with progress; a corrupted file and a file the server
    /// lacks are refused with errors naming them, and nothing of theirs is kept.
    #[cfg(unix)]
    #[test]
    fn downloads_missing_files_from_a_server() {
        let real = data_dir().join("avmnist");
        let missing: Vec<&str> = fsdd_names().skip(600).take(150).collect();
        let mut files = HashMap::new();
        for n in &missing {
            files.insert(
                format!("/fsdd/{n}"),
                std::fs::read(real.join("fsdd").join(n)).unwrap(),
            );
        }
        let labels = real.join("mnist/t10k-labels-idx1-ubyte.gz");
        let raw = crate::idx::read_idx_content(&labels, IdxKind::Labels).unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
        enc.write_all(&raw).unwrap();
        let mirror_gz = enc.finish().unwrap();
        files.insert("/mnist/t10k-labels-idx1-ubyte.gz".into(), mirror_gz.clone());
        let base = serve(files);

        let t = TempDir::new("download_ok");
        let cache = kit_links(&t, &["t10k-labels-idx1-ubyte.gz"], &missing);
        assert_eq!(missing_files(&cache).len(), 151);
        let mut log = Vec::new();
        download_avmnist(&cache, &local(&base), &mut |m| log.push(m.to_string())).unwrap();
        assert!(missing_files(&cache).is_empty());
        for n in &missing {
            verify_sha256(&cache.join("avmnist/fsdd").join(n), fsdd_sha256(n).unwrap()).unwrap();
        }
        verify_mnist_archive(&cache.join("avmnist/mnist/t10k-labels-idx1-ubyte.gz")).unwrap();
        assert!(log[0].contains("downloading 151 missing"), "{log:?}");
        let progress: Vec<&String> = log
            .iter()
            .filter(|l| l.contains("files downloaded"))
            .collect();
        assert_eq!(
            progress.len(),
            3,
            "first file alone, then 100 + 50: {log:?}"
        );
        assert!(progress[2].starts_with("151/151"), "{log:?}");
        assert!(
            !cache
                .join(format!("avmnist/{TMP_PREFIX}{}", std::process::id()))
                .exists()
        );
        // Nothing missing: no request, no log.
        let mut log2 = Vec::new();
        download_avmnist(&cache, &no_curl(), &mut |m| log2.push(m.to_string())).unwrap();
        assert!(log2.is_empty(), "{log2:?}");

        // Wrong content on the server (train-labels holds the test labels), and a file absent
        // from it (t10k-images).
        let base = serve(HashMap::from([(
            "/mnist/train-labels-idx1-ubyte.gz".to_string(),
            mirror_gz,
        )]));
        for (name, want) in [
            ("train-labels-idx1-ubyte.gz", "sha256"),
            ("t10k-images-idx3-ubyte.gz", "HTTP"),
        ] {
            let t = TempDir::new("download_bad");
            let cache = kit_links(&t, &[name], &[]);
            let e = download_avmnist(&cache, &local(&base), &mut |_| {}).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(name) && msg.contains(want), "{msg}");
            assert!(!cache.join("avmnist/mnist").join(name).exists());
            assert!(
                !cache
                    .join(format!("avmnist/{TMP_PREFIX}{}", std::process::id()))
                    .exists()
            );
        }
    }
}
