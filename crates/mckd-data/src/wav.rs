//! 16-bit PCM mono WAV reader (the FSDD format), on top of the `hound` crate.
//!
//! `hound` walks the RIFF chunks and parses the `fmt ` chunk (PCM, `WAVE_FORMAT_EXTENSIBLE`
//! with the PCM sub-format); this module checks that the result is what SMIL's MFCC needs and
//! turns every problem into a [`DataError::Format`] naming the file and what was found:
//! stereo, 8/24/32-bit, IEEE float, compressed encodings, empty or truncated data.
//!
//! Limitation inherited from hound 3.5.1: it does not skip the RIFF pad byte after an
//! odd-sized chunk placed before `data` (e.g. a `LIST` chunk of odd length), so such a file is
//! reported as malformed. FSDD files have only `fmt ` and `data`.

use std::fs;
use std::io::Cursor;
use std::path::Path;

use crate::error::{DataError, Result};

/// Largest WAV file [`read_wav`] reads (64 MiB, about 70 minutes of 8 kHz 16-bit mono; FSDD
/// files are under 40 KB). The file is read into memory whole, so this caps the allocation.
pub const MAX_WAV_BYTES: u64 = 64 << 20;

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

/// The format tag of a canonically laid out file (`fmt ` right after the RIFF header), to
/// name the encoding when hound only says "unsupported".
fn canonical_format_tag(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= 22 && &bytes[12..16] == b"fmt ")
        .then(|| u16::from_le_bytes([bytes[20], bytes[21]]))
}

/// Our message for an error hound raised while reading the header.
fn header_error(bytes: &[u8], e: hound::Error) -> String {
    match e {
        // The reader is an in-memory cursor: the only I/O error is running out of bytes.
        hound::Error::IoError(_) => format!(
            "truncated or incomplete: the file ends after {} bytes, before a complete fmt \
             chunk and data chunk header (no data chunk found)",
            bytes.len()
        ),
        hound::Error::Unsupported => match canonical_format_tag(bytes) {
            Some(tag) => format!(
                "format tag {tag} ({}); only 16-bit integer PCM (tag 1) is supported",
                tag_name(tag)
            ),
            None => "unsupported WAV encoding; only 16-bit integer PCM is supported".to_string(),
        },
        hound::Error::FormatError(reason) => format!("malformed WAV header: {reason}"),
        other => format!("cannot read the WAV header: {other}"),
    }
}

/// Parse the bytes of a WAV file; `path` is only used in error messages.
///
/// Allocates at most the decoded samples (4 bytes per 2 data bytes), after checking that the
/// declared data length fits in `bytes`.
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
    let reader =
        hound::WavReader::new(Cursor::new(bytes)).map_err(|e| err(header_error(bytes, e)))?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int {
        return Err(err(format!(
            "IEEE float samples ({}-bit); only 16-bit integer PCM is supported",
            spec.bits_per_sample
        )));
    }
    if spec.channels != 1 {
        return Err(err(format!(
            "{} channels; only mono (1 channel) is supported",
            spec.channels
        )));
    }
    if spec.bits_per_sample != 16 {
        return Err(err(format!(
            "{}-bit samples; only 16-bit PCM is supported",
            spec.bits_per_sample
        )));
    }
    if spec.sample_rate == 0 {
        return Err(err("sample rate 0".to_string()));
    }
    let declared = reader.len() as usize;
    if declared == 0 {
        return Err(err("empty data chunk (0 samples)".to_string()));
    }
    // hound leaves the cursor at the first data byte. The samples are decoded from the slice
    // in one pass (hound's per-sample iterator made the 1,500-file MFCC load ~35 % slower),
    // after checking that the declared length fits, so nothing is allocated for a lie.
    let start = reader.into_inner().position() as usize;
    let available = bytes.len() - start;
    if declared.saturating_mul(2) > available {
        return Err(err(format!(
            "truncated: the data chunk declares {} bytes but only {available} remain",
            declared.saturating_mul(2)
        )));
    }
    let samples = bytes[start..start + 2 * declared]
        .chunks_exact(2)
        .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
        .collect();
    Ok(Wav {
        sample_rate: spec.sample_rate,
        samples,
    })
}

/// Read a 16-bit PCM mono WAV file.
///
/// Errors: [`DataError::Missing`] if absent, [`DataError::Io`] if unreadable,
/// [`DataError::Format`] for anything but non-empty 16-bit integer PCM mono, or a file larger
/// than [`MAX_WAV_BYTES`].
pub fn read_wav(path: &Path) -> Result<Wav> {
    let len = fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    if len > MAX_WAV_BYTES {
        return Err(DataError::format(
            path,
            format!("{len} bytes; WAV files above {MAX_WAV_BYTES} bytes are not read"),
        ));
    }
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
        let with_list = make_wav(1, 1, 16, &data, Some((b"LIST", b"abcd")));
        for bytes in [make_wav(1, 1, 16, &data, None), with_list] {
            let w = parse_wav(&bytes, Path::new("t.wav")).unwrap();
            assert_eq!(w.sample_rate, 8000);
            assert_eq!(w.samples, vec![0.0, 0.5, -1.0, 32767.0 / 32768.0]);
        }
        // WAVE_FORMAT_EXTENSIBLE with the PCM sub-format GUID: the same samples.
        let mut ext = b"WAVEfmt ".to_vec();
        ext.extend(40u32.to_le_bytes());
        ext.extend(0xFFFEu16.to_le_bytes());
        ext.extend(1u16.to_le_bytes());
        ext.extend(8000u32.to_le_bytes());
        ext.extend(16000u32.to_le_bytes());
        ext.extend(2u16.to_le_bytes());
        ext.extend(16u16.to_le_bytes());
        ext.extend(22u16.to_le_bytes());
        ext.extend(16u16.to_le_bytes());
        ext.extend(4u32.to_le_bytes());
        ext.extend([
            1, 0, 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71,
        ]);
        ext.extend(b"data");
        ext.extend((data.len() as u32).to_le_bytes());
        ext.extend(&data);
        let mut bytes = b"RIFF".to_vec();
        bytes.extend((ext.len() as u32).to_le_bytes());
        bytes.extend(ext);
        let w = parse_wav(&bytes, Path::new("ext.wav")).unwrap();
        assert_eq!(w.samples, vec![0.0, 0.5, -1.0, 32767.0 / 32768.0]);
        // hound 3.5.1 does not skip the pad byte of an odd-sized chunk: a clear error, no panic.
        let odd = make_wav(1, 1, 16, &data, Some((b"LIST", b"abc")));
        let e = parse_wav(&odd, Path::new("odd_list.wav"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("odd_list.wav"), "{e}");
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
                "mulaw.wav",
                make_wav(7, 1, 8, &[0; 8], None),
                "format tag 7 (mu-law)",
            ),
            (
                "adpcm.wav",
                make_wav(2, 1, 8, &[0; 8], None),
                "format tag 2 (MS ADPCM)",
            ),
            ("b8.wav", make_wav(1, 1, 8, &[0; 8], None), "8-bit"),
            (
                "huge.wav",
                {
                    let mut w = good.clone();
                    w[40..44].copy_from_slice(&0xFFFF_FFFEu32.to_le_bytes());
                    w
                },
                "truncated",
            ),
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
