//! Run folders: every run writes its config, splits, logs, metrics and plots into one folder.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// An error about the run folder, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The folder cannot be created or written.
    #[error("cannot write to the output folder {path}: {source}")]
    Unwritable {
        /// The folder or file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A value cannot be serialised.
    #[error("cannot serialise {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The serde error.
        source: serde_json::Error,
    },
}

/// An output folder that has been created and checked writable.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates (or reuses) `path` and checks that a file can be written in it.
    pub fn create(path: &Path) -> Result<Self, RunError> {
        let err = |source| RunError::Unwritable {
            path: path.to_path_buf(),
            source,
        };
        fs::create_dir_all(path).map_err(err)?;
        let probe = path.join(".mckd-write-test");
        fs::write(&probe, b"").map_err(err)?;
        let _ = fs::remove_file(&probe);
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// The default folder `runs/<timestamp>-<kind>`.
    pub fn default_path(kind: &str) -> PathBuf {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from("runs").join(format!("{}-{kind}", utc_stamp(secs)))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `bytes` to `name` atomically (temporary file, then rename).
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, RunError> {
        let target = self.file(name);
        write_atomic(&target, bytes)?;
        Ok(target)
    }

    /// Writes a value as pretty JSON, atomically.
    pub fn write_json<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<PathBuf, RunError> {
        let target = self.file(name);
        let text = serde_json::to_string_pretty(value).map_err(|source| RunError::Json {
            path: target.clone(),
            source,
        })?;
        self.write(name, text.as_bytes())
    }
}

/// Writes `bytes` to `target` through a temporary file in the same folder and a rename, so a
/// crash never leaves a half-written file in place of a good one.
pub fn write_atomic(target: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let err = |source| RunError::Unwritable {
        path: target.to_path_buf(),
        source,
    };
    let tmp = target.with_extension(format!(
        "{}.tmp{}",
        target.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, target).map_err(err)
}

/// `YYYYMMDD-HHMMSS` in UTC for a Unix time.
pub fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamp_known_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        // date -u -d @1795774219 +%Y%m%d-%H%M%S -> 20261127-101019
        assert_eq!(utc_stamp(1_795_774_219), "20261127-101019");
        // date -u -d @951782400 -> 2000-02-29 00:00:00 (leap day)
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("mckd-run-test-{}", std::process::id()));
        let run = RunDir::create(&dir).unwrap();
        run.write("a.txt", b"one").unwrap();
        run.write("a.txt", b"two").unwrap();
        assert_eq!(fs::read(run.file("a.txt")).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_folder_is_a_clear_error() {
        let file = std::env::temp_dir().join(format!("mckd-not-a-dir-{}", std::process::id()));
        fs::write(&file, b"x").unwrap();
        let err = RunDir::create(&file.join("sub")).unwrap_err().to_string();
        assert!(err.contains("cannot write to the output folder"), "{err}");
        assert!(err.contains("mckd-not-a-dir"), "{err}");
        fs::remove_file(&file).unwrap();
    }
}
