//! mckd-data: the AV-MNIST data layer of MCKD, in plain Rust (no tensors, no autodiff).
//!
//! * [`idx`]: MNIST idx readers (gzip or plain);
//! * [`wav`]: 16-bit PCM mono WAV reader (FSDD);
//! * [`mfcc`]: SMIL's 20x20 MFCC (librosa 0.7.0 semantics);
//! * [`split`]: SMIL's file selection and pairing (`smil_split.json` or the rule);
//! * [`avmnist`]: the 1,050 + 450 normalised samples, the missing-modality settings and the
//!   paper's 900 / 150 / 450 split ([`ValidationCarve::Paper`]);
//! * [`download`]: find or fetch the raw kit, verify sha256;
//! * [`manifest`]: `sha256sum`-style manifests (the kit's, and the compiled-in one of the
//!   public sources).
//!
//! Data folder convention: `data_dir` is the folder that *contains* `avmnist/`
//! (`$MCKD_DATA_DIR`), holding `avmnist/mnist/*-idx?-ubyte.gz`, `avmnist/fsdd/*.wav` and
//! optionally `avmnist/smil_split.json`.

#![warn(missing_docs)]

pub mod avmnist;
pub mod download;
pub mod error;
#[cfg(test)]
mod fuzz_tests;
pub mod idx;
pub mod manifest;
pub mod mfcc;
mod snapshot;
pub mod split;
pub mod wav;

pub use avmnist::{
    AudioSample, AvMnist, AvSample, ImageSample, KitPaths, MissingAudio, MissingVisual,
    load_avmnist, load_avmnist_with, normalise_image, normalise_mfcc,
};
pub use download::{
    DATA_DIR_ENV, Sources, check_kit, download_avmnist, ensure_avmnist, ensure_avmnist_with,
    verify_avmnist,
};
pub use error::{DataError, Result};
pub use idx::{IdxImages, read_idx_images, read_idx_labels};
pub use manifest::Manifest;
pub use mfcc::{Mfcc, smil_mfcc};
pub use split::{CarveLayout, SmilSplit, TestSet, ValidationCarve, smil_split_from_rule};
pub use wav::{Wav, read_wav};

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    /// The kit folder for tests: `$MCKD_DATA_DIR`, else `<repo>/../shared/data`. Panics with
    /// a clear message if `avmnist/` is not there: these tests must not pass silently.
    pub fn data_dir() -> PathBuf {
        let dir = std::env::var_os("MCKD_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
        assert!(
            dir.join("avmnist/fsdd").is_dir() && dir.join("avmnist/mnist").is_dir(),
            "AV-MNIST kit not found: {} has no avmnist/mnist and avmnist/fsdd. Set \
             MCKD_DATA_DIR to the folder that contains avmnist/ (the shared data kit).",
            dir.display()
        );
        dir
    }

    /// `avmnist/reference_mfcc.json`, parsed once.
    pub fn reference_json() -> &'static serde_json::Value {
        static REF: OnceLock<serde_json::Value> = OnceLock::new();
        REF.get_or_init(|| {
            let p = data_dir().join("avmnist/reference_mfcc.json");
            let text = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            serde_json::from_str(&text).expect("reference_mfcc.json parses")
        })
    }

    /// A unique temporary folder (tempfile's), removed on drop.
    pub struct TempDir(tempfile::TempDir);

    impl TempDir {
        pub fn new(tag: &str) -> Self {
            let dir = tempfile::Builder::new()
                .prefix(&format!("mckd-data-{tag}-"))
                .tempdir()
                .expect("create temp dir");
            TempDir(dir)
        }

        pub fn path(&self) -> &Path {
            self.0.path()
        }

        /// Write `bytes` to `name` (parents created) and return the full path.
        pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.0.path().join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(&p, bytes).unwrap();
            p
        }
    }
}
