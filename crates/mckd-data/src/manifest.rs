//! sha256 manifests in `sha256sum` format, and the digests of the files the AV-MNIST kit needs.
//!
//! A manifest line is `<64 hex digits><space><space or '*'><relative path>`, as
//! `sha256sum` writes it; a leading `./` of the path is dropped, blank lines and lines starting
//! with `#` are ignored. Two manifests are used:
//!
//! * the kit's own `avmnist/MANIFEST.sha256`, read by [`crate::verify_avmnist`] to check a
//!   local kit;
//! * [`sources`], compiled into the crate from `src/sources.sha256` (1,512 lines copied from
//!   the kit's manifest and README): the expected digests of what [`crate::download`]
//!   fetches, which has no kit manifest to compare with. It lists the 4 MNIST archives as
//!   the kit stores them (`mnist/<name>.gz`), the decompressed idx content
//!   (`mnist/<name>`, the same for every mirror) and the 1,500 recordings (`fsdd/<name>`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{DataError, Result};

/// Largest manifest file [`Manifest::load`] reads (16 MiB; the kit's has 3,007 lines in
/// 268 KB).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// The 4 MNIST archives of the kit, in the order the tools list them.
pub const MNIST_ARCHIVES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// Text of `src/sources.sha256`.
const SOURCES_TEXT: &str = include_str!("sources.sha256");

/// Parsed `sha256sum`-style manifest: relative path → lower-case hex sha256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    entries: BTreeMap<String, String>,
}

impl Manifest {
    /// Read and parse a manifest file (at most [`MAX_MANIFEST_BYTES`]).
    pub fn load(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path)
            .map_err(|e| DataError::io(path, e))?
            .len();
        if len > MAX_MANIFEST_BYTES {
            return Err(DataError::format(
                path,
                format!("{len} bytes; manifests above {MAX_MANIFEST_BYTES} bytes are not read"),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| DataError::format(path, format!("not UTF-8 text: {e}")))?;
        Self::parse(text, path)
    }

    /// Parse manifest text; `path` is only used in error messages. Errors name the line:
    /// a digest that is not 64 hex digits, a missing path, or a path listed twice.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut entries = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |msg: &str| DataError::format(path, format!("line {}: {msg}", i + 1));
            let (hash, rest) = line
                .split_at_checked(64)
                .ok_or_else(|| bad("shorter than a 64-digit sha256 and a path"))?;
            if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("the first 64 characters are not a hex sha256"));
            }
            let file = rest
                .strip_prefix("  ")
                .or_else(|| rest.strip_prefix(" *"))
                .ok_or_else(|| bad("expected two spaces (or ' *') between digest and path"))?;
            let file = file.strip_prefix("./").unwrap_or(file);
            if file.is_empty() {
                return Err(bad("no path after the digest"));
            }
            if entries
                .insert(file.to_string(), hash.to_ascii_lowercase())
                .is_some()
            {
                return Err(bad(&format!("{file} is listed twice")));
            }
        }
        Ok(Manifest { entries })
    }

    /// Expected sha256 (lower-case hex) of `rel` (a path relative to the manifest's folder,
    /// `/`-separated, without `./`).
    pub fn get(&self, rel: &str) -> Option<&str> {
        self.entries.get(rel).map(String::as_str)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the manifest lists no file.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(relative path, sha256)` pairs in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(p, h)| (p.as_str(), h.as_str()))
    }

    /// Absolute paths of the entries under `root`.
    pub fn paths_under<'a>(&'a self, root: &'a Path) -> impl Iterator<Item = PathBuf> + 'a {
        self.entries.keys().map(move |p| root.join(p))
    }
}

/// The compiled-in manifest of the public sources (see the module doc).
///
/// # Panics
/// If `src/sources.sha256` does not parse (a build defect, caught by this module's tests).
pub fn sources() -> &'static Manifest {
    static M: OnceLock<Manifest> = OnceLock::new();
    M.get_or_init(|| {
        Manifest::parse(SOURCES_TEXT, Path::new("mckd-data/src/sources.sha256"))
            .expect("the compiled-in sources.sha256 parses")
    })
}

/// Names (`d_speaker_k.wav`) of the 1,500 FSDD recordings SMIL uses, in name order.
pub fn fsdd_names() -> impl Iterator<Item = &'static str> {
    sources()
        .iter()
        .filter_map(|(p, _)| p.strip_prefix("fsdd/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::data_dir;

    /// The compiled-in manifest: 4 + 4 MNIST lines and 1,500 recordings (500 per SMIL
    /// speaker, 150 per digit), and every line is identical to the kit's MANIFEST.sha256 (the
    /// decompressed MNIST digests are the README's table, checked against the real archives by
    /// `download::tests`).
    #[test]
    fn sources_match_the_kit_manifest() {
        let s = sources();
        assert_eq!(s.len(), 1508);
        let names: Vec<&str> = fsdd_names().collect();
        assert_eq!(names.len(), 1500);
        for sp in ["jackson", "nicolas", "theo"] {
            let n = names.iter().filter(|n| n.contains(sp)).count();
            assert_eq!(n, 500, "{sp}");
        }
        for d in 0..10 {
            let n = names
                .iter()
                .filter(|n| n.starts_with(&format!("{d}_")))
                .count();
            assert_eq!(n, 150, "digit {d}");
        }
        let kit = Manifest::load(&data_dir().join("avmnist/MANIFEST.sha256")).unwrap();
        assert_eq!(kit.len(), 3007);
        for (p, h) in s.iter() {
            if p.starts_with("mnist/") && !p.ends_with(".gz") {
                assert!(kit.get(p).is_none());
                continue;
            }
            assert_eq!(kit.get(p), Some(h), "{p}");
        }
        for a in MNIST_ARCHIVES {
            assert!(s.get(&format!("mnist/{a}")).is_some(), "{a}");
            assert!(
                s.get(&format!("mnist/{}", a.trim_end_matches(".gz")))
                    .is_some()
            );
        }
    }

    #[test]
    fn parse_rules_and_errors() {
        let h = "ab".repeat(32);
        let text = format!(
            "# comment\n\n{h}  ./fsdd/a.wav\n{} *b.bin\r\n",
            h.to_uppercase()
        );
        let m = Manifest::parse(&text, Path::new("m.sha256")).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("fsdd/a.wav"), Some(h.as_str()));
        assert_eq!(m.get("b.bin"), Some(h.as_str()), "upper case is lowered");
        let cases = [
            (format!("{h}  a\n{h}  ./a\n"), "line 2: a is listed twice"),
            ("abc  x\n".to_string(), "line 1: shorter"),
            (format!("{}  x\n", "g".repeat(64)), "not a hex"),
            (format!("{h} x\n"), "two spaces"),
            (format!("{h}  \n"), "no path"),
        ];
        for (text, want) in cases {
            let e = Manifest::parse(&text, Path::new("bad.sha256"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("bad.sha256") && e.contains(want), "{e}");
        }
        // A multi-byte character at the 64-byte boundary is an error, not a panic.
        let e = Manifest::parse(&format!("{}é  x", "a".repeat(63)), Path::new("u.sha256"));
        assert!(e.is_err());
    }
}
