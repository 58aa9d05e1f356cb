//! [`Source`] implementations over the AV-MNIST samples of `mckd-data`, with per-sample
//! availability (an image-only sample never presents audio).

use burn::prelude::*;
use mckd_data::{AudioSample, AvSample, ImageSample, MissingAudio, MissingVisual};
use mckd_train::train::Source;

use crate::model::{AUDIO, AvBatch, IMAGE};

/// Image length (`28 × 28`).
pub const IMAGE_LEN: usize = 28 * 28;
/// Audio length (`20 × 20`).
pub const AUDIO_LEN: usize = 20 * 20;

/// Samples held as flat host arrays; a missing modality is stored as zeros and marked
/// unavailable.
#[derive(Debug, Clone, Default)]
pub struct AvSource {
    images: Vec<f32>,
    audio: Vec<f32>,
    labels: Vec<i64>,
    available: Vec<[bool; 2]>,
}

impl AvSource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, image: Option<&[f32]>, audio: Option<&[f32]>, label: u8) {
        match image {
            Some(x) => {
                assert_eq!(x.len(), IMAGE_LEN, "image length");
                self.images.extend_from_slice(x);
            }
            None => self.images.extend(std::iter::repeat_n(0.0, IMAGE_LEN)),
        }
        match audio {
            Some(x) => {
                assert_eq!(x.len(), AUDIO_LEN, "audio length");
                self.audio.extend_from_slice(x);
            }
            None => self.audio.extend(std::iter::repeat_n(0.0, AUDIO_LEN)),
        }
        self.labels.push(i64::from(label));
        self.available.push([image.is_some(), audio.is_some()]);
    }

    /// Adds paired samples, keeping only the modalities in `keep` (`[image, audio]`).
    ///
    /// # Panics
    /// If `keep` is all false, or a sample's vectors have the wrong length (mckd-data checks
    /// them on load).
    pub fn add_paired(&mut self, samples: &[AvSample], keep: [bool; 2]) -> &mut Self {
        assert!(keep[IMAGE] || keep[AUDIO], "a sample needs one modality");
        for s in samples {
            self.push(
                keep[IMAGE].then_some(&s.image[..]),
                keep[AUDIO].then_some(&s.audio[..]),
                s.label,
            );
        }
        self
    }

    /// Adds image-only samples.
    pub fn add_images(&mut self, samples: &[ImageSample]) -> &mut Self {
        for s in samples {
            self.push(Some(&s.image), None, s.label);
        }
        self
    }

    /// Adds audio-only samples.
    pub fn add_audio(&mut self, samples: &[AudioSample]) -> &mut Self {
        for s in samples {
            self.push(None, Some(&s.audio), s.label);
        }
        self
    }

    /// All samples of paired data with both modalities.
    pub fn paired(samples: &[AvSample]) -> Self {
        let mut s = Self::new();
        s.add_paired(samples, [true, true]);
        s
    }

    /// Paired data restricted to the modalities in `keep`.
    pub fn restricted(samples: &[AvSample], keep: [bool; 2]) -> Self {
        let mut s = Self::new();
        s.add_paired(samples, keep);
        s
    }

    /// Training set of a missing-audio setting: the paired samples, then the image-only ones.
    pub fn missing_audio(set: &MissingAudio) -> Self {
        let mut s = Self::paired(&set.paired);
        s.add_images(&set.image_only);
        s
    }

    /// Training set of a missing-visual setting: the paired samples, then the audio-only ones.
    pub fn missing_visual(set: &MissingVisual) -> Self {
        let mut s = Self::paired(&set.paired);
        s.add_audio(&set.audio_only);
        s
    }

    /// The samples `indices` (in that order), keeping only the modalities in `keep` that each
    /// has (`[image, audio]`).
    ///
    /// # Panics
    /// If an index is out of range or a sample would be left with no modality (an internal
    /// contract: callers pick samples by their availability).
    pub fn subset(&self, indices: &[usize], keep: [bool; 2]) -> Self {
        let mut out = Self::new();
        for &i in indices {
            let a = self.available[i];
            let image =
                (a[IMAGE] && keep[IMAGE]).then(|| &self.images[i * IMAGE_LEN..(i + 1) * IMAGE_LEN]);
            let audio =
                (a[AUDIO] && keep[AUDIO]).then(|| &self.audio[i * AUDIO_LEN..(i + 1) * AUDIO_LEN]);
            assert!(
                image.is_some() || audio.is_some(),
                "sample {i} has none of the kept modalities"
            );
            out.push(image, audio, self.labels[i] as u8);
        }
        out
    }

    /// Indices of the samples whose availability is exactly `available` (`[image, audio]`).
    pub fn with_availability(&self, available: [bool; 2]) -> Vec<usize> {
        (0..self.labels.len())
            .filter(|&i| self.available[i] == available)
            .collect()
    }

    /// Indices of the samples that have modality `m`.
    pub fn having(&self, m: usize) -> Vec<usize> {
        (0..self.labels.len())
            .filter(|&i| self.available[i][m])
            .collect()
    }

    /// The label of sample `i`.
    pub fn label(&self, i: usize) -> i64 {
        self.labels[i]
    }

    /// Number of samples with each modality available (`[image, audio]`).
    pub fn counts(&self) -> [usize; 2] {
        let mut c = [0, 0];
        for a in &self.available {
            c[IMAGE] += usize::from(a[IMAGE]);
            c[AUDIO] += usize::from(a[AUDIO]);
        }
        c
    }
}

impl Source for AvSource {
    type Batch = AvBatch;

    fn len(&self) -> usize {
        self.labels.len()
    }

    fn available(&self, i: usize) -> &[bool] {
        &self.available[i]
    }

    /// # Shapes
    /// image `[b, 1, 28, 28]`, audio `[b, 1, 20, 20]`, labels `[b]`.
    fn batch(&self, indices: &[usize], device: &Device) -> AvBatch {
        let b = indices.len();
        let mut image = Vec::with_capacity(b * IMAGE_LEN);
        let mut audio = Vec::with_capacity(b * AUDIO_LEN);
        let mut labels = Vec::with_capacity(b);
        for &i in indices {
            image.extend_from_slice(&self.images[i * IMAGE_LEN..(i + 1) * IMAGE_LEN]);
            audio.extend_from_slice(&self.audio[i * AUDIO_LEN..(i + 1) * AUDIO_LEN]);
            labels.push(self.labels[i]);
        }
        AvBatch {
            image: Tensor::from_data(TensorData::new(image, [b, 1, 28, 28]), device),
            audio: Tensor::from_data(TensorData::new(audio, [b, 1, 20, 20]), device),
            labels: Tensor::from_data(TensorData::new(labels, [b]), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mckd_data::AvMnist;
    use mckd_train::{to_vec, to_vec_int};

    #[test]
    fn batches_carry_the_samples_values_and_availability() {
        let data = AvMnist::synthetic(9, 3, 4).unwrap();
        let set = data.missing_audio(3).unwrap();
        let src = AvSource::missing_audio(&set);
        assert_eq!(src.len(), 90);
        assert_eq!(src.counts(), [90, 30]);
        let device = Device::flex();
        // Sample 1 is paired (digit 0, j = 1); sample 30 + 7 is image-only.
        let idx = [1usize, 37, 29];
        let batch = src.batch(&idx, &device);
        assert_eq!(batch.image.dims(), [3, 1, 28, 28]);
        assert_eq!(batch.audio.dims(), [3, 1, 20, 20]);
        let img = to_vec(batch.image);
        let aud = to_vec(batch.audio);
        let lab = to_vec_int(batch.labels);
        assert_eq!(&img[..IMAGE_LEN], &set.paired[1].image[..]);
        assert_eq!(&aud[..AUDIO_LEN], &set.paired[1].audio[..]);
        assert_eq!(&img[IMAGE_LEN..2 * IMAGE_LEN], &set.image_only[7].image[..]);
        assert!(aud[AUDIO_LEN..2 * AUDIO_LEN].iter().all(|&v| v == 0.0));
        assert_eq!(&img[2 * IMAGE_LEN..], &set.paired[29].image[..]);
        assert_eq!(
            lab,
            vec![
                i64::from(set.paired[1].label),
                i64::from(set.image_only[7].label),
                i64::from(set.paired[29].label)
            ]
        );
        assert_eq!(src.available(1), &[true, true]);
        assert_eq!(src.available(37), &[true, false]);

        let mv = data.missing_visual(3).unwrap();
        let src = AvSource::missing_visual(&mv);
        assert_eq!(src.counts(), [30, 90]);
        assert_eq!(src.available(40), &[false, true]);
        let b = src.batch(&[40], &device);
        assert_eq!(to_vec(b.audio), mv.audio_only[10].audio);
        assert!(to_vec(b.image).iter().all(|&v| v == 0.0));

        let only_audio = AvSource::restricted(&data.test, [false, true]);
        assert_eq!(only_audio.counts(), [0, 30]);
        assert_eq!(only_audio.label(29), 9);
    }
}
