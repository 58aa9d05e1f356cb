//! A loaded [`AvMnist`] as one binary file, bit-exact, so that worker processes skip the
//! loading (the MNIST archives are inflated and ~1,500 recordings turned into MFCCs again:
//! about half a second per process, measured; a snapshot reads in milliseconds).
//!
//! Layout (little-endian): the magic `MCKDAVM1`; the train and test sample counts (`u32`
//! each); then every sample, train first: label (`u8`), position (`u32`), image length and
//! audio length (`u32` each), the image and the audio as `f32`.

use std::path::Path;

use crate::avmnist::{AvMnist, AvSample};
use crate::error::{DataError, Result};

const MAGIC: &[u8; 8] = b"MCKDAVM1";

impl AvMnist {
    /// The snapshot bytes of this dataset (see the module docs).
    pub fn to_snapshot(&self) -> Vec<u8> {
        let floats: usize = self
            .train
            .iter()
            .chain(&self.test)
            .map(|s| s.image.len() + s.audio.len())
            .sum();
        let mut out =
            Vec::with_capacity(16 + 13 * (self.train.len() + self.test.len()) + 4 * floats);
        out.extend_from_slice(MAGIC);
        for n in [self.train.len(), self.test.len()] {
            out.extend_from_slice(&to_u32(n).to_le_bytes());
        }
        for s in self.train.iter().chain(&self.test) {
            out.push(s.label);
            for n in [s.pos, s.image.len(), s.audio.len()] {
                out.extend_from_slice(&to_u32(n).to_le_bytes());
            }
            for v in s.image.iter().chain(&s.audio) {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Reads a snapshot written from [`AvMnist::to_snapshot`]; errors name `path`.
    pub fn read_snapshot(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::from_snapshot(&bytes).map_err(|msg| DataError::format(path, msg))
    }

    /// Parses snapshot bytes; the error says what is wrong.
    pub fn from_snapshot(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err("not an AV-MNIST snapshot (bad magic)".into());
        }
        let (n_train, n_test) = (r.u32()? as usize, r.u32()? as usize);
        let mut samples = Vec::new();
        for _ in 0..n_train + n_test {
            let label = r.take(1)?[0];
            if usize::from(label) >= crate::split::NUM_CLASSES {
                return Err(format!("label {label} at byte {} is not a digit", r.at - 1));
            }
            let pos = r.u32()? as usize;
            let (image_len, audio_len) = (r.u32()? as usize, r.u32()? as usize);
            samples.push(AvSample {
                image: r.floats(image_len)?,
                audio: r.floats(audio_len)?,
                label,
                pos,
            });
        }
        if r.at != bytes.len() {
            return Err(format!(
                "{} bytes after the last sample",
                bytes.len() - r.at
            ));
        }
        let test = samples.split_off(n_train);
        Ok(Self {
            train: samples,
            test,
        })
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).expect("AV-MNIST sizes fit u32")
}

/// A cursor over the snapshot bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| {
            format!(
                "truncated: {n} bytes needed at byte {} of {}",
                self.at,
                self.bytes.len()
            )
        })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn floats(&mut self, n: usize) -> std::result::Result<Vec<f32>, String> {
        let b = self.take(n.checked_mul(4).ok_or("length overflows")?)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(label: u8, pos: usize, seed: f32) -> AvSample {
        AvSample {
            image: (0..6).map(|i| seed + i as f32 * 0.25).collect(),
            audio: vec![-1190.5, f32::MIN_POSITIVE, seed, -0.0],
            label,
            pos,
        }
    }

    fn small() -> AvMnist {
        AvMnist {
            train: vec![sample(3, 0, 1.5), sample(9, 104, -2.0)],
            test: vec![sample(0, 44, 7.0)],
        }
    }

    /// Written and read back: the same samples, every float bit-identical (−0.0 and a
    /// subnormal-edge value included), train and test kept apart.
    #[test]
    fn round_trip_is_exact() {
        let d = small();
        let back = AvMnist::from_snapshot(&d.to_snapshot()).unwrap();
        assert_eq!(back, d);
        let bits = |s: &AvSample| s.audio.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.train[0]), bits(&d.train[0]));
        assert_eq!(back.test.len(), 1);
    }

    /// Truncation, trailing bytes, a wrong magic and a label ≥ 10 are errors that say so;
    /// the file reader names the file.
    #[test]
    fn bad_snapshots_are_clear_errors() {
        let bytes = small().to_snapshot();
        let err = AvMnist::from_snapshot(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let mut longer = bytes.clone();
        longer.push(0);
        let err = AvMnist::from_snapshot(&longer).unwrap_err();
        assert!(err.contains("1 bytes after"), "{err}");
        let err = AvMnist::from_snapshot(b"NOTASNAPSHOT").unwrap_err();
        assert!(err.contains("magic"), "{err}");
        let mut bad_label = bytes.clone();
        bad_label[16] = 10;
        let err = AvMnist::from_snapshot(&bad_label).unwrap_err();
        assert!(err.contains("label 10"), "{err}");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("data.bin");
        std::fs::write(&path, &bytes[..20]).unwrap();
        let err = AvMnist::read_snapshot(&path).unwrap_err().to_string();
        assert!(
            err.contains("data.bin") && err.contains("truncated"),
            "{err}"
        );
    }
}
