//! Error type of the data layer.
//!
//! Every variant names the file (or URL) and the problem, so a message such as
//! `format error in /data/avmnist/fsdd/0_jackson_0.wav: 2 channels; only mono is supported`
//! is enough to find and fix the input. Library code never panics on user input; it
//! returns one of these.

use std::path::PathBuf;

/// Errors of `mckd-data`: reading, parsing, verifying and downloading AV-MNIST files.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O operation on `path` failed (other than "not found", see [`DataError::Missing`]).
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// File or folder the operation was about.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The content of `path` is not what the format requires.
    #[error("format error in {}: {msg}", path.display())]
    Format {
        /// File whose content is wrong.
        path: PathBuf,
        /// What was expected and what was found.
        msg: String,
    },
    /// A required file does not exist.
    #[error("missing file {}", path.display())]
    Missing {
        /// Path that was looked for.
        path: PathBuf,
    },
    /// A data folder does not have the expected layout.
    #[error("wrong data folder layout at {}: {msg}", dir.display())]
    Layout {
        /// Folder that was inspected.
        dir: PathBuf,
        /// What is missing and how to point the tools at a correct folder.
        msg: String,
    },
    /// The sha256 of `path` differs from the expected one.
    #[error("sha256 mismatch for {}: expected {expected}, got {actual}", path.display())]
    Checksum {
        /// File that was hashed.
        path: PathBuf,
        /// Expected hex digest (lower case).
        expected: String,
        /// Actual hex digest (lower case).
        actual: String,
    },
    /// A download failed (no network, HTTP error, curl missing, ...).
    #[error("download of {url} failed: {msg}")]
    Network {
        /// URL that could not be fetched.
        url: String,
        /// What went wrong and how to use a local copy instead.
        msg: String,
    },
    /// A caller asked for an impossible setting (e.g. a digit >= 10, or a per-class count
    /// `p` that is not a multiple of 3 or exceeds the pool).
    #[error("invalid setting: {msg}")]
    InvalidSetting {
        /// What is wrong with the request.
        msg: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    /// Map an `io::Error` on `path`: `NotFound` becomes [`DataError::Missing`], anything else
    /// [`DataError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing { path }
        } else {
            DataError::Io { path, source }
        }
    }

    /// Shorthand for [`DataError::Format`].
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// Shorthand for [`DataError::InvalidSetting`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        DataError::InvalidSetting { msg: msg.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file() {
        let e = DataError::io(
            "/x/y.wav",
            std::io::Error::new(std::io::ErrorKind::NotFound, "nope"),
        );
        assert!(matches!(e, DataError::Missing { .. }));
        assert_eq!(e.to_string(), "missing file /x/y.wav");
        let e = DataError::format("/x/a.gz", "bad magic");
        assert_eq!(e.to_string(), "format error in /x/a.gz: bad magic");
        let e = DataError::io(
            "/x/b",
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"),
        );
        assert!(e.to_string().contains("/x/b"), "{e}");
    }
}
