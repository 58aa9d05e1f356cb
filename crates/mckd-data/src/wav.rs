//! Minimal RIFF/WAVE reader for 16-bit PCM mono files (the FSDD format).
//!
//! Walks the chunk list after the `RIFF....WAVE` header, reads `fmt ` and `data` and skips
//! any other chunk (`LIST`, `fact`, ...; odd-sized chunks are followed by one pad byte, as
//! RIFF requires). Accepts format tag 1 (PCM) and `WAVE_FORMAT_EXTENSIBLE` with the PCM
//! sub-format; everything else (stereo, 8/24/32-bit, IEEE float, compressed, empty or
//! truncated data) is a [`DataError::Format`] naming the file and what was found.

use std::fs;
use std::path::Path;

use crate::error::{DataError, Result};

/// Decoded mono audio.
///
/// # Shapes
/// `samples`: `[n]`, `int16 / 32768` as f32 (exactly librosa's `load(..., sr=None)` values),
/// in `[-1, 1)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Wav {
    /// Sampling rate in Hz as declared in the `fmt ` chunk.
    pub sample_rate: u32,
    /// Samples, `int16 / 32768`.
    pub samples: Vec<f32>,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn tag_name(tag: u16) -> &'static str {
    match tag {
        1 => "PCM",
        2 => "MS ADPCM",
        3 => "IEEE float",
        6 => "A-law",
        7 => "mu-law",
        0x11 => "IMA ADPCM",
        0x55 => "MP3",
        0xFFFE => "extensible",
        _ => "unknown",
    }
}

struct Fmt {
    sample_rate: u32,
}

fn parse_fmt(body: &[u8], path: &Path) -> Result<Fmt> {
    let err = |msg: String| DataError::format(path, msg);
    if body.len() < 16 {
        return Err(err(format!(
            "fmt chunk has {} bytes, need at least 16",
            body.len()
        )));
    }
    let mut tag = le_u16(body, 0);
    let channels = le_u16(body, 2);
    let sample_rate = le_u32(body, 4);
    let block_align = le_u16(body, 12);
    let bits = le_u16(body, 14);
    if tag == 0xFFFE {
        // WAVE_FORMAT_EXTENSIBLE: cbSize(2) validBits(2) channelMask(4) subFormat GUID(16).
        if body.len() < 40 {
            return Err(err(format!(
                "WAVE_FORMAT_EXTENSIBLE fmt chunk has {} bytes, need 40",
                body.len()
            )));
        }
        tag = le_u16(body, 24);
    }
    if tag != 1 {
        return Err(err(format!(
            "format tag {tag} ({}); only 16-bit integer PCM (tag 1) is supported",
            tag_name(tag)
        )));
    }
    if channels != 1 {
        return Err(err(format!(
            "{channels} channels; only mono (1 channel) is supported"
        )));
    }
    if bits != 16 {
        return Err(err(format!(
            "{bits}-bit samples; only 16-bit PCM is supported"
        )));
    }
    if block_align != 2 {
        return Err(err(format!(
            "block align {block_align}, expected 2 for 16-bit mono"
        )));
    }
    if sample_rate == 0 {
        return Err(err("sample rate 0".to_string()));
    }
    Ok(Fmt { sample_rate })
}

/// Parse the bytes of a WAV file; `path` is only used in error messages.
pub fn parse_wav(bytes: &[u8], path: &Path) -> Result<Wav> {
    let err = |msg: String| DataError::format(path, msg);
    if bytes.len() < 12 {
        return Err(err(format!(
            "{} bytes, too short for a RIFF/WAVE header",
            bytes.len()
        )));
    }
    if &bytes[0..4] != b"RIFF" {
        return Err(err(format!(
            "not a RIFF file (starts with {:?}, expected \"RIFF\")",
            String::from_utf8_lossy(&bytes[0..4])
        )));
    }
    if &bytes[8..12] != b"WAVE" {
        return Err(err(format!(
            "RIFF form type {:?}, expected \"WAVE\"",
            String::from_utf8_lossy(&bytes[8..12])
        )));
    }
    let mut fmt: Option<Fmt> = None;
    let mut pos = 12usize;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = le_u32(bytes, pos + 4) as usize;
        let start = pos + 8;
        let available = bytes.len() - start;
        let name = String::from_utf8_lossy(id).into_owned();
        if size > available {
            return Err(err(format!(
                "truncated: chunk {name:?} at byte {pos} declares {size} bytes but only \
                 {available} remain"
            )));
        }
        let body = &bytes[start..start + size];
        match id {
            b"fmt " => fmt = Some(parse_fmt(body, path)?),
            b"data" => {
                let Some(fmt) = fmt else {
                    return Err(err("data chunk comes before the fmt chunk".to_string()));
                };
                if size == 0 {
                    return Err(err("empty data chunk (0 samples)".to_string()));
                }
                if !size.is_multiple_of(2) {
                    return Err(err(format!(
                        "data chunk has {size} bytes, not a multiple of the 2-byte frame"
                    )));
                }
                let samples = body
                    .chunks_exact(2)
                    .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
                    .collect();
                return Ok(Wav {
                    sample_rate: fmt.sample_rate,
                    samples,
                });
            }
            _ => {}
        }
        pos = start + size + (size & 1);
    }
    Err(err(if fmt.is_none() {
        "no fmt chunk found".to_string()
    } else {
        "no data chunk found".to_string()
    }))
}

/// Read a 16-bit PCM mono WAV file.
///
/// Errors: [`DataError::Missing`] if absent, [`DataError::Io`] if unreadable,
/// [`DataError::Format`] for anything but non-empty 16-bit integer PCM mono.
pub fn read_wav(path: &Path) -> Result<Wav> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_wav(&bytes, path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::{TempDir, data_dir};

    /// Build a WAV: `tag`, `channels`, `bits`, raw data bytes, optional extra chunk before data.
    pub(crate) fn make_wav(
        tag: u16,
        channels: u16,
        bits: u16,
        data: &[u8],
        extra: Option<(&[u8; 4], &[u8])>,
    ) -> Vec<u8> {
        let mut fmt = Vec::new();
        let rate = 8000u32;
        let align = channels * bits / 8;
        fmt.extend(tag.to_le_bytes());
        fmt.extend(channels.to_le_bytes());
        fmt.extend(rate.to_le_bytes());
        fmt.extend((rate * align as u32).to_le_bytes());
        fmt.extend(align.to_le_bytes());
        fmt.extend(bits.to_le_bytes());
        let mut body = b"WAVE".to_vec();
        body.extend(b"fmt ");
        body.extend((fmt.len() as u32).to_le_bytes());
        body.extend(&fmt);
        if let Some((id, content)) = extra {
            body.extend(id);
            body.extend((content.len() as u32).to_le_bytes());
            body.extend(content);
            if content.len() % 2 == 1 {
                body.push(0);
            }
        }
        body.extend(b"data");
        body.extend((data.len() as u32).to_le_bytes());
        body.extend(data);
        let mut out = b"RIFF".to_vec();
        out.extend((body.len() as u32).to_le_bytes());
        out.extend(body);
        out
    }

    fn pcm(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn parses_pcm16_mono_and_skips_unknown_chunks() {
        let data = pcm(&[0, 16384, -32768, 32767]);
        let with_list = make_wav(1, 1, 16, &data, Some((b"LIST", b"abc")));
        for bytes in [make_wav(1, 1, 16, &data, None), with_list] {
            let w = parse_wav(&bytes, Path::new("t.wav")).unwrap();
            assert_eq!(w.sample_rate, 8000);
            assert_eq!(w.samples, vec![0.0, 0.5, -1.0, 32767.0 / 32768.0]);
        }
    }

    #[test]
    fn bad_wavs_give_errors_naming_file_and_problem() {
        let t = TempDir::new("wav_bad");
        let good = make_wav(1, 1, 16, &pcm(&[1, 2, 3, 4]), None);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "stereo.wav",
                make_wav(1, 2, 16, &pcm(&[1, 2, 3, 4]), None),
                "2 channels",
            ),
            ("b24.wav", make_wav(1, 1, 24, &[0; 6], None), "24-bit"),
            ("float.wav", make_wav(3, 1, 32, &[0; 8], None), "IEEE float"),
            (
                "empty.wav",
                make_wav(1, 1, 16, &[], None),
                "empty data chunk",
            ),
            ("trunc.wav", good[..good.len() - 3].to_vec(), "truncated"),
            ("header.wav", good[..10].to_vec(), "too short"),
            ("riff.wav", b"RIFX\0\0\0\0WAVEfmt ".to_vec(), "not a RIFF"),
            (
                "odd.wav",
                make_wav(1, 1, 16, &[1, 2, 3], None),
                "not a multiple",
            ),
            ("nodata.wav", good[..36].to_vec(), "no data chunk"),
        ];
        for (name, bytes, want) in cases {
            let p = t.write(name, &bytes);
            let err = read_wav(&p).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
            assert!(err.contains(want), "{name}: expected '{want}' in: {err}");
        }
        let err = read_wav(&t.path().join("gone.wav")).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }) && err.to_string().contains("gone.wav"));
    }

    /// The kit's first reference file: length and first int16 values (reference_mfcc.json).
    #[test]
    fn reads_fsdd_reference_file() {
        let w = read_wav(&data_dir().join("avmnist/fsdd/0_jackson_0.wav")).unwrap();
        assert_eq!((w.sample_rate, w.samples.len()), (8000, 5148));
        let first: Vec<i32> = w.samples[..8]
            .iter()
            .map(|v| (v * 32768.0) as i32)
            .collect();
        assert_eq!(first, vec![-369, -431, -475, -543, -571, -557, -528, -455]);
    }
}
