//! Run folders: every run writes its config, splits, logs, metrics and plots into one folder.
//!
//! A run folder is never mixed with another run: an existing non-empty `--out` is refused unless
//! the run resumes it ([`OutPolicy::Resume`]) or replaces it ([`OutPolicy::Overwrite`]: the old
//! folder is moved aside, never deleted or merged). Every file is written atomically (temporary
//! file, then rename), and `status.json` says whether the run is `running`, `finished` or
//! `failed`, so that a reader never mistakes a half-written run for a result.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// The output folder holds another run, and neither resuming nor overwriting was asked.
    #[error(
        "the output folder {path} already exists and is not empty; pass --resume to continue \
         the run in it, --overwrite to move it aside and start again, or another --out"
    )]
    Exists {
        /// The folder.
        path: PathBuf,
    },
    /// `--resume` of a folder that holds no resumable run.
    #[error("cannot resume {path}: {problem}")]
    NotResumable {
        /// The folder.
        path: PathBuf,
        /// Why.
        problem: String,
    },
    /// An output path is one of the command's inputs.
    #[error("refusing to write {output}: it is an input of this command ({input})")]
    WouldOverwriteInput {
        /// The output path.
        output: PathBuf,
        /// The input it coincides with or contains.
        input: PathBuf,
    },
}

/// What to do with an existing non-empty output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutPolicy {
    /// Refuse it (the default).
    #[default]
    Refuse,
    /// Continue the run in it (from its last checkpoint).
    Resume,
    /// Move it aside (`<name>.replaced-<timestamp>`) and start a new run.
    Overwrite,
}

impl OutPolicy {
    /// The policy of the `--resume` / `--overwrite` flags (clap makes them exclusive).
    pub fn from_flags(resume: bool, overwrite: bool) -> Self {
        match (resume, overwrite) {
            (true, _) => OutPolicy::Resume,
            (_, true) => OutPolicy::Overwrite,
            _ => OutPolicy::Refuse,
        }
    }
}

/// The state of a run folder (`status.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Being written (or killed while being written: see the checkpoint).
    Running,
    /// Complete: its results can be read.
    Finished,
    /// Stopped by an error; `status.json` says which.
    Failed,
}

/// `status.json` of a run folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The state.
    pub state: RunState,
    /// Why it failed, or what it is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Iterations done when written (training runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<usize>,
    /// UTC time `YYYYMMDD-HHMMSS`.
    pub updated: String,
    /// The code that wrote it ([`CODE_VERSION`]; a run resumed by another build shows the
    /// latest). Absent in folders written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// This build's version and git commit (`0.1.0+git.<commit>`; `unknown` when it was not built
/// from a git checkout).
pub const CODE_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+git.", env!("MCKD_GIT_COMMIT"));

/// Whether `dir` exists and holds anything.
fn non_empty(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Refuses an output that is one of the inputs, or an output folder that contains an input
/// (replacing or moving it aside would take the input with it).
pub fn check_not_input(output: &Path, inputs: &[&Path]) -> Result<(), RunError> {
    let canon = |p: &Path| -> PathBuf {
        // The output may not exist yet: canonicalise its parent.
        fs::canonicalize(p).unwrap_or_else(|_| match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => fs::canonicalize(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            })
            .map(|d| d.join(name))
            .unwrap_or_else(|_| p.to_path_buf()),
            _ => p.to_path_buf(),
        })
    };
    let out = canon(output);
    for input in inputs {
        let inp = canon(input);
        if out == inp || inp.starts_with(&out) {
            return Err(RunError::WouldOverwriteInput {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// An output folder that has been created and checked writable.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Opens `path` as the folder of a new run under `policy`; returns the folder and whether
    /// the run resumes one already in it. A new run's folder is created and marked `running`.
    pub fn open(path: &Path, policy: OutPolicy) -> Result<(Self, bool), RunError> {
        let exists = non_empty(path);
        match policy {
            OutPolicy::Refuse if exists => {
                return Err(RunError::Exists {
                    path: path.to_path_buf(),
                });
            }
            OutPolicy::Resume => {
                if !exists {
                    return Err(RunError::NotResumable {
                        path: path.to_path_buf(),
                        problem: "it does not exist or is empty".into(),
                    });
                }
                let dir = Self::create(path)?;
                if dir.status().is_some_and(|s| s.state == RunState::Finished) {
                    return Ok((dir, true));
                }
                dir.set_status(RunState::Running, Some("resumed".into()), None)?;
                return Ok((dir, true));
            }
            OutPolicy::Overwrite if exists => {
                let stamp = utc_stamp(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                );
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "run".into());
                let mut aside = path.with_file_name(format!("{name}.replaced-{stamp}"));
                let mut k = 1;
                while aside.exists() {
                    aside = path.with_file_name(format!("{name}.replaced-{stamp}-{k}"));
                    k += 1;
                }
                fs::rename(path, &aside).map_err(|source| RunError::Unwritable {
                    path: path.to_path_buf(),
                    source,
                })?;
                eprintln!(
                    "moved the old {} aside to {}",
                    path.display(),
                    aside.display()
                );
            }
            _ => {}
        }
        let dir = Self::create(path)?;
        dir.set_status(RunState::Running, None, None)?;
        Ok((dir, false))
    }

    /// The folder's `status.json`, if it has a readable one.
    pub fn status(&self) -> Option<Status> {
        let text = fs::read(self.file("status.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes `status.json`.
    pub fn set_status(
        &self,
        state: RunState,
        message: Option<String>,
        iteration: Option<usize>,
    ) -> Result<(), RunError> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.write_json(
            "status.json",
            &Status {
                state,
                message,
                iteration,
                updated: utc_stamp(secs),
                code: Some(CODE_VERSION.into()),
            },
        )?;
        Ok(())
    }

    /// Creates (or reuses) `path` and checks that a file can be written in it. Commands that
    /// start a run use [`RunDir::open`], which refuses to mix runs.
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
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.tmp{}", std::process::id()));
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
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let run = RunDir::create(&dir).unwrap();
        run.write("a.txt", b"one").unwrap();
        run.write("a.txt", b"two").unwrap();
        assert_eq!(fs::read(run.file("a.txt")).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    /// status.json names the code that wrote it: this checkout's commit (asked of git here,
    /// independently of the build script) or "unknown" without git; folders written before
    /// the field existed still parse.
    #[test]
    fn status_records_the_code_version() {
        let tmp = tempfile::tempdir().unwrap();
        let (run, resumed) = RunDir::open(&tmp.path().join("run"), OutPolicy::Refuse).unwrap();
        assert!(!resumed);
        let status = run.status().expect("status.json");
        assert_eq!(status.code.as_deref(), Some(CODE_VERSION));
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        let expected = commit.unwrap_or_else(|| "unknown".into());
        assert_eq!(
            CODE_VERSION,
            format!("{}+git.{expected}", env!("CARGO_PKG_VERSION"))
        );
        let old: Status =
            serde_json::from_str(r#"{"state": "finished", "updated": "20261127-101019"}"#).unwrap();
        assert_eq!(old.code, None);
    }

    #[test]
    fn unwritable_folder_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("mckd-not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = RunDir::create(&file.join("sub")).unwrap_err().to_string();
        assert!(err.contains("cannot write to the output folder"), "{err}");
        assert!(err.contains("mckd-not-a-dir"), "{err}");
    }
}
