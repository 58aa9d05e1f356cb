//! Sliding-window prediction on any modality subset, label maps and NIfTI output.
//!
//! The model runs in inference mode; missing modalities are zeroed and their features imputed
//! (the same path as training). Tiles are `[ti, tj, tk]` in (i, j, k) order (default the
//! paper's 80×160×160 = `[160, 160, 80]`), overlap 1/3, sigmoids averaged, threshold 0.5,
//! label map with ET winning ([`mckd_volume::probs_to_labels`]).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use mckd_core::{Levels, Mckd, MckdModel, mask_tensor};
use mckd_volume::sliding::{DEFAULT_OVERLAP, DEFAULT_TILE};
use mckd_volume::{
    ClipRule, Header, LabelConvention, MODALITIES, Volume, normalise_with, probs_to_labels,
    read_volume, sliding_window,
};
use serde::{Deserialize, Serialize};

use crate::data::{batch_from_buffers, dhw};
use crate::error::{BratsError, Result};
use crate::model::{BratsBatch, BratsNet, N_MODALITIES, OUT_CHANNELS, SIZE_MULTIPLE};

/// Whatever predicts the logits of a batch of tiles (a trained method in inference mode).
pub trait TilePredictor {
    /// Logits of `batch` (any spatial size that is a multiple of 8) with presence `mask`.
    ///
    /// # Shapes
    /// - `batch.images`: 4 × `[B, 1, D, H, W]`; `mask`: `[B, 4]`
    /// - output: `[B, 3, D, H, W]`
    fn predict_tile(&self, batch: &BratsBatch, mask: &Tensor<2>) -> Tensor<5>;
}

/// An MCKD (or Baseline) model in inference mode, with the level policy it was trained with.
pub struct MckdPredictor {
    model: MckdModel<BratsNet>,
    impute: Levels,
}

impl MckdPredictor {
    /// The inference copy of a trained method.
    pub fn new(method: &Mckd<BratsNet>) -> Self {
        Self {
            model: method.model().valid(),
            impute: method.config().levels.impute,
        }
    }

    /// A model (on a device without autodiff) imputing at `impute`.
    pub fn from_model(model: MckdModel<BratsNet>, impute: Levels) -> Self {
        Self { model, impute }
    }
}

impl TilePredictor for MckdPredictor {
    fn predict_tile(&self, batch: &BratsBatch, mask: &Tensor<2>) -> Tensor<5> {
        let net = MckdModel {
            task: self.model.task.clone().with_spatial(batch.spatial()),
            iwv: self.model.iwv.clone(),
        };
        net.forward(batch, mask, self.impute).output
    }
}

/// Sliding-window settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InferConfig {
    /// Tile (i, j, k), multiples of 8; clamped per axis to the volume rounded up to 8.
    pub tile: [usize; 3],
    /// Overlap between neighbouring tiles, in [0, 1).
    pub overlap: f32,
    /// A region is on where its averaged probability exceeds this.
    pub threshold: f32,
}

impl Default for InferConfig {
    fn default() -> Self {
        Self {
            tile: DEFAULT_TILE,
            overlap: DEFAULT_OVERLAP,
            threshold: 0.5,
        }
    }
}

impl InferConfig {
    /// The tile actually used on a volume of `dims` (i, j, k): `tile` clamped to the volume
    /// size rounded up to a multiple of 8 (a small volume is one zero-padded tile).
    pub fn effective_tile(&self, dims: [usize; 3]) -> Result<[usize; 3]> {
        if self.tile.iter().any(|&t| t == 0 || t % SIZE_MULTIPLE != 0) {
            return Err(BratsError::Invalid(format!(
                "tile {:?} (i,j,k): every axis must be a positive multiple of {SIZE_MULTIPLE}",
                self.tile
            )));
        }
        if !(0.0..1.0).contains(&self.overlap) {
            return Err(BratsError::Invalid(format!(
                "overlap {} must be in [0, 1)",
                self.overlap
            )));
        }
        Ok([0, 1, 2].map(|a| self.tile[a].min(dims[a].div_ceil(SIZE_MULTIPLE) * SIZE_MULTIPLE)))
    }
}

/// Averaged sigmoid probabilities of the three regions over the whole volume.
///
/// `images` are the four normalised modalities on one grid (the content of absent ones is
/// ignored: they are zeroed).
///
/// # Shapes
/// - `images`: 4 volumes of `dims` (i, j, k)
/// - `present`: `[4]`, at least one `true`
/// - returns `[3, dk, dj, di]` flattened (ET, TC, WT)
pub fn predict_probs(
    model: &dyn TilePredictor,
    images: &[Volume],
    present: &[bool],
    cfg: &InferConfig,
    device: &Device,
) -> Result<Vec<f32>> {
    if images.len() != N_MODALITIES || present.len() != N_MODALITIES {
        return Err(BratsError::Invalid(format!(
            "prediction needs {N_MODALITIES} modality volumes and flags, got {} and {}",
            images.len(),
            present.len()
        )));
    }
    if !present.iter().any(|&p| p) {
        return Err(BratsError::Invalid(
            "prediction needs at least one modality".into(),
        ));
    }
    let dims = images[0].dims;
    if let Some(v) = images.iter().find(|v| v.dims != dims) {
        return Err(BratsError::Invalid(format!(
            "modality volumes have different grids: {dims:?} and {:?}",
            v.dims
        )));
    }
    let tile = cfg.effective_tile(dims)?;
    let n = dims.iter().product::<usize>();
    let mut input = Vec::with_capacity(N_MODALITIES * n);
    for (v, &p) in images.iter().zip(present) {
        if p {
            input.extend_from_slice(&v.data);
        } else {
            input.extend(std::iter::repeat_n(0.0f32, n));
        }
    }
    let tn = tile.iter().product::<usize>();
    let mask = mask_tensor(&[present.to_vec()], device);
    let probs = sliding_window(
        &input,
        N_MODALITIES,
        dims,
        tile,
        cfg.overlap,
        OUT_CHANNELS,
        |buf| {
            let images = (0..N_MODALITIES)
                .map(|m| buf[m * tn..(m + 1) * tn].to_vec())
                .collect();
            let batch = batch_from_buffers(images, None, 1, dhw(tile), device);
            let logits = model.predict_tile(&batch, &mask); // [1, 3, tk, tj, ti]
            mckd_train::to_vec(sigmoid(logits))
        },
    )?;
    Ok(probs)
}

/// Label map of a volume: [`predict_probs`], threshold, ET wins.
///
/// # Shapes
/// returns `[dk, dj, di]` flattened.
pub fn predict_labels(
    model: &dyn TilePredictor,
    images: &[Volume],
    present: &[bool],
    cfg: &InferConfig,
    convention: LabelConvention,
    device: &Device,
) -> Result<Vec<u8>> {
    let probs = predict_probs(model, images, present, cfg, device)?;
    Ok(probs_to_labels(&probs, cfg.threshold, convention)?)
}

/// Reads the given modality files (any subset, in [`MODALITIES`] order; `None` = missing),
/// normalises them, and checks that they share a grid. Returns the four volumes (zeros for
/// the missing ones), the presence flags and the header of the first given file.
///
/// A file that does not exist is a [`BratsError::MissingInput`] naming it; different grids
/// are a [`BratsError::ShapeMismatch`] naming both files.
pub fn read_inputs(files: &[Option<PathBuf>; 4]) -> Result<(Vec<Volume>, Vec<bool>, Header)> {
    for (m, f) in files.iter().enumerate() {
        if let Some(p) = f
            && !p.is_file()
        {
            return Err(BratsError::MissingInput {
                modality: MODALITIES[m].to_string(),
                path: p.clone(),
            });
        }
    }
    let mut first: Option<(PathBuf, [usize; 3], Header)> = None;
    let mut vols: Vec<Option<Volume>> = Vec::with_capacity(4);
    for f in files {
        let Some(p) = f else {
            vols.push(None);
            continue;
        };
        let (v, h) = read_volume(p)?;
        match &first {
            None => first = Some((p.clone(), v.dims, h)),
            Some((p0, d0, _)) if *d0 != v.dims => {
                return Err(BratsError::ShapeMismatch {
                    path_a: p0.clone(),
                    dims_a: *d0,
                    path_b: p.clone(),
                    dims_b: v.dims,
                });
            }
            Some(_) => {}
        }
        vols.push(Some(normalise_with(&v, ClipRule::Scaled)));
    }
    let Some((_, dims, header)) = first else {
        return Err(BratsError::Invalid(
            "give at least one modality file (--flair, --t1, --t1c, --t2)".into(),
        ));
    };
    let present = vols.iter().map(Option::is_some).collect();
    let vols = vols
        .into_iter()
        .map(|v| v.unwrap_or_else(|| Volume::zeros(dims)))
        .collect();
    Ok((vols, present, header))
}

/// Predicts one case from files and writes the label map as NIfTI (uint8) with the header and
/// affine of the first given modality file. With `spacing` ≠ 1 the case is prepared as in
/// training (cropped to the brain, resampled) and the prediction resampled back to the input's
/// grid. Returns the label map.
#[allow(clippy::too_many_arguments)]
pub fn predict_files(
    model: &dyn TilePredictor,
    files: &[Option<PathBuf>; 4],
    out: &Path,
    cfg: &InferConfig,
    convention: LabelConvention,
    spacing: f32,
    device: &Device,
) -> Result<Vec<u8>> {
    let (vols, present, header) = read_inputs(files)?;
    let labels = if spacing == 1.0 {
        predict_labels(model, &vols, &present, cfg, convention, device)?
    } else {
        let dims = vols[0].dims;
        let loaded = mckd_volume::LoadedCase {
            id: out.display().to_string(),
            dims,
            spacing: header.spacing(),
            modalities: vols.try_into().expect("four volumes"),
            seg: None,
            header: header.clone(),
        };
        let prepared = mckd_volume::prepare_loaded(&loaded, spacing, convention)?;
        let probs = predict_probs(model, &prepared.modalities, &present, cfg, device)?;
        mckd_volume::restore_labels(&probs, &prepared.grid, cfg.threshold, convention)?
    };
    crate::evaluate::write_label_file(out, &labels, &header)?;
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UNetConfig;
    use mckd_core::Normalisation;

    fn model(device: &Device) -> MckdPredictor {
        device.seed(3);
        let net = BratsNet::Unet(UNetConfig::new().with_base(4).init(device));
        MckdPredictor::from_model(
            MckdModel::new(net, Normalisation::Softmax, 0, device),
            Levels::Bottleneck,
        )
    }

    fn volume(dims: [usize; 3], m: usize) -> Volume {
        let n = dims.iter().product::<usize>();
        let data = (0..n)
            .map(|i| (((i * (m + 3) * 2654435761) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        Volume::new(dims, data).unwrap()
    }

    /// Direct forward of the model on the sub-box `i0..i0 + ti` (all of j, k).
    fn direct(
        model: &MckdPredictor,
        vols: &[Volume],
        present: &[bool],
        i0: usize,
        tile: [usize; 3],
        device: &Device,
    ) -> Vec<f32> {
        let dims = vols[0].dims;
        let tn = tile.iter().product::<usize>();
        let images = vols
            .iter()
            .zip(present)
            .map(|(v, &p)| {
                let mut out = Vec::with_capacity(tn);
                for k in 0..tile[2] {
                    for j in 0..tile[1] {
                        let s = i0 + dims[0] * (j + dims[1] * k);
                        out.extend(
                            v.data[s..s + tile[0]]
                                .iter()
                                .map(|&x| if p { x } else { 0.0 }),
                        );
                    }
                }
                out
            })
            .collect();
        let batch = batch_from_buffers(images, None, 1, dhw(tile), device);
        let net = MckdModel {
            task: model.model.task.clone().with_spatial(dhw(tile)),
            iwv: model.model.iwv.clone(),
        };
        let mask = mask_tensor(&[present.to_vec()], device);
        mckd_train::to_vec(sigmoid(
            net.forward(&batch, &mask, Levels::Bottleneck).output,
        ))
    }

    #[test]
    fn sliding_window_reproduces_direct_forwards() {
        // Volume 40 × 16 × 8 (i, j, k), tile 32 × 16 × 8, overlap 1/3: tiles start at i = 0
        // and i = 8 (the last is shifted back to end at 40). Voxels with i < 8 see only the
        // first tile, i >= 32 only the second, the rest the mean of both.
        let device = Device::flex();
        let model = model(&device);
        let dims = [40, 16, 8];
        let vols: Vec<Volume> = (0..4).map(|m| volume(dims, m)).collect();
        let present = [true, false, true, true];
        let cfg = InferConfig {
            tile: [32, 16, 8],
            overlap: 1.0 / 3.0,
            threshold: 0.5,
        };
        let probs = predict_probs(&model, &vols, &present, &cfg, &device).unwrap();
        let tile = [32, 16, 8];
        let a = direct(&model, &vols, &present, 0, tile, &device);
        let b = direct(&model, &vols, &present, 8, tile, &device);
        let n = 40 * 16 * 8;
        let tn = 32 * 16 * 8;
        let mut checked = 0;
        for c in 0..3 {
            for k in 0..8 {
                for j in 0..16 {
                    for i in 0..40 {
                        let got = probs[c * n + i + 40 * (j + 16 * k)];
                        let ta = (i < 32).then(|| a[c * tn + i + 32 * (j + 16 * k)]);
                        let tb = (i >= 8).then(|| b[c * tn + (i - 8) + 32 * (j + 16 * k)]);
                        let want = match (ta, tb) {
                            (Some(x), Some(y)) => (f64::from(x) + f64::from(y)) as f32 / 2.0,
                            (Some(x), None) | (None, Some(x)) => x,
                            (None, None) => unreachable!(),
                        };
                        assert!(
                            (got - want).abs() < 1e-6,
                            "c{c} ({i},{j},{k}): {got} vs {want}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 3 * n);
        // Missing modalities are ignored: changing an absent one changes nothing.
        let mut vols2 = vols.clone();
        vols2[1] = volume(dims, 9);
        assert_eq!(
            predict_probs(&model, &vols2, &present, &cfg, &device).unwrap(),
            probs
        );
    }

    #[test]
    fn bad_tiles_are_errors() {
        let cfg = InferConfig {
            tile: [20, 16, 16],
            ..Default::default()
        };
        assert!(cfg.effective_tile([40, 40, 40]).is_err());
        let cfg = InferConfig::default();
        assert_eq!(cfg.effective_tile([64, 64, 60]).unwrap(), [64, 64, 64]);
        assert_eq!(cfg.effective_tile([240, 240, 155]).unwrap(), [160, 160, 80]);
    }
}
