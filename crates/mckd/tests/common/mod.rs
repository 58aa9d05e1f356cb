//! Helpers shared by the command-line tests (each test file is its own crate and uses a part).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `mckd` binary under test.
pub fn mckd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mckd"))
}

/// The data kits: `$MCKD_DATA_DIR`, else `../shared/data` beside the checkout.
pub fn data_dir() -> PathBuf {
    std::env::var_os("MCKD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
}

/// The first case folder under `root` and its id.
pub fn first_case(root: &Path) -> (PathBuf, String) {
    let case = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no case folder in {}", root.display()));
    let id = case.file_name().unwrap().to_string_lossy().into_owned();
    (case, id)
}
