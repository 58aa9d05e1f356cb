//! Sliding-window inference over a multi-channel volume, generic over the predictor.
//!
//! Tiling follows the reference `predict_sliding`: per axis, with tile `t`, size `n` and
//! `stride = ceil(t · (1 − overlap))`, there are `max(1, ceil((n − t) / stride) + 1)` tiles
//! starting at `s · stride`; the last ones are shifted back so that they end at `n`
//! (`start = max(min(start + t, n) − t, 0)`). A tile that sticks out of a volume smaller
//! than the tile is zero-padded; only its part inside the volume is used. Overlapping
//! predictions are averaged with uniform weights (sums in `f64`, so averaging identical
//! predictions is exact).
//!
//! Sizes are `[usize; 3]` in (i, j, k) order; a tile buffer is laid out like a [`Volume`]
//! of dims `tile` per channel, i.e. a row-major tensor `[C, tile_k, tile_j, tile_i]`.
//! The default tile [`DEFAULT_TILE`] = `[160, 160, 80]` is the paper's 80×160×160 (D, H, W).
//!
//! [`Volume`]: crate::volume::Volume

use crate::error::{Result, VolumeError};
use crate::volume::voxel_count;

/// Default tile (i, j, k): the paper's 80 × 160 × 160 as (D, H, W) = (k, j, i).
pub const DEFAULT_TILE: [usize; 3] = [160, 160, 80];

/// Default overlap between neighbouring tiles (fraction of the tile).
pub const DEFAULT_OVERLAP: f32 = 1.0 / 3.0;

/// Start offsets of the tiles along one axis of `size` voxels (see the module docs).
pub fn tile_starts(size: usize, tile: usize, overlap: f32) -> Vec<usize> {
    let stride = ((tile as f64) * (1.0 - f64::from(overlap))).ceil().max(1.0) as usize;
    let n = if size > tile {
        (size - tile).div_ceil(stride) + 1
    } else {
        1
    };
    (0..n)
        .map(|s| {
            let end = (s * stride + tile).min(size);
            end.saturating_sub(tile)
        })
        .collect()
}

/// Runs `predict` on every tile of `input` and averages the overlapping outputs.
///
/// `predict` receives one zero-padded tile of all input channels and must return the
/// predictions for the same tile (`c_out` channels); a wrong length is a
/// [`VolumeError::Invalid`].
///
/// # Shapes
/// - `input: [c_in, dk, dj, di]` flattened (channel-major, i fastest), `dims = [di, dj, dk]`
/// - `predict(tile: [c_in, tk, tj, ti]) -> [c_out, tk, tj, ti]`, `tile = [ti, tj, tk]`
/// - returns `[c_out, dk, dj, di]`
pub fn sliding_window<F>(
    input: &[f32],
    c_in: usize,
    dims: [usize; 3],
    tile: [usize; 3],
    overlap: f32,
    c_out: usize,
    mut predict: F,
) -> Result<Vec<f32>>
where
    F: FnMut(&[f32]) -> Vec<f32>,
{
    let n = voxel_count(dims);
    if input.len() != c_in * n {
        return Err(VolumeError::Invalid(format!(
            "sliding window input has {} values, expected {c_in} channels × {dims:?}",
            input.len()
        )));
    }
    if tile.contains(&0) || !(0.0..1.0).contains(&overlap) {
        return Err(VolumeError::Invalid(format!(
            "sliding window needs a non-empty tile and 0 <= overlap < 1, got {tile:?}, \
             {overlap}"
        )));
    }
    let tn = voxel_count(tile);
    let starts: Vec<Vec<usize>> = (0..3)
        .map(|d| tile_starts(dims[d], tile[d], overlap))
        .collect();
    let mut sum = vec![0.0f64; c_out * n];
    let mut count = vec![0u32; n];
    let mut buf = vec![0.0f32; c_in * tn];
    for &k0 in &starts[2] {
        for &j0 in &starts[1] {
            for &i0 in &starts[0] {
                let ext = [
                    tile[0].min(dims[0] - i0),
                    tile[1].min(dims[1] - j0),
                    tile[2].min(dims[2] - k0),
                ];
                buf.iter_mut().for_each(|x| *x = 0.0);
                for c in 0..c_in {
                    for k in 0..ext[2] {
                        for j in 0..ext[1] {
                            let src = c * n + i0 + dims[0] * (j0 + j + dims[1] * (k0 + k));
                            let dst = c * tn + tile[0] * (j + tile[1] * k);
                            buf[dst..dst + ext[0]].copy_from_slice(&input[src..src + ext[0]]);
                        }
                    }
                }
                let out = predict(&buf);
                if out.len() != c_out * tn {
                    return Err(VolumeError::Invalid(format!(
                        "sliding window predictor returned {} values, expected {c_out} \
                         channels × tile {tile:?} = {}",
                        out.len(),
                        c_out * tn
                    )));
                }
                for k in 0..ext[2] {
                    for j in 0..ext[1] {
                        let vox = i0 + dims[0] * (j0 + j + dims[1] * (k0 + k));
                        let src = tile[0] * (j + tile[1] * k);
                        for c in 0..c_out {
                            let s = &mut sum[c * n + vox..c * n + vox + ext[0]];
                            let o = &out[c * tn + src..c * tn + src + ext[0]];
                            s.iter_mut().zip(o).for_each(|(a, &b)| *a += f64::from(b));
                        }
                        count[vox..vox + ext[0]].iter_mut().for_each(|x| *x += 1);
                    }
                }
            }
        }
    }
    Ok(sum
        .iter()
        .enumerate()
        .map(|(idx, &s)| (s / f64::from(count[idx % n])) as f32)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_starts_follow_the_reference_formula() {
        // 240 with tile 160, overlap 1/3: stride 107, 2 tiles, the last shifted to end at 240.
        assert_eq!(tile_starts(240, 160, 1.0 / 3.0), [0, 80]);
        // 155 with tile 80: stride 54, 3 tiles.
        assert_eq!(tile_starts(155, 80, 1.0 / 3.0), [0, 54, 75]);
        assert_eq!(tile_starts(160, 160, 1.0 / 3.0), [0]);
        // Smaller than the tile: one (padded) tile (the reference formula would give 0).
        assert_eq!(tile_starts(10, 160, 1.0 / 3.0), [0]);
        assert_eq!(tile_starts(100, 30, 0.0), [0, 30, 60, 70]);
    }

    fn ramp(c: usize, dims: [usize; 3]) -> Vec<f32> {
        (0..c * voxel_count(dims))
            .map(|x| (x as f32 * 0.37).sin() * 100.0 + x as f32 * 1e-3)
            .collect()
    }

    #[test]
    fn identity_and_constant_shift_reconstruct_exactly_on_non_divisible_volumes() {
        let dims = [37, 29, 23];
        let tile = [16, 12, 10];
        let input = ramp(2, dims);
        let mut calls = 0;
        let out = sliding_window(&input, 2, dims, tile, 1.0 / 3.0, 2, |t| {
            calls += 1;
            t.to_vec()
        })
        .unwrap();
        assert_eq!(out, input);
        assert_eq!(calls, 3 * 4 * 3);
        let out = sliding_window(&input, 2, dims, tile, 0.5, 2, |t| {
            t.iter().map(|&x| x + 0.25).collect()
        })
        .unwrap();
        let want: Vec<f32> = input.iter().map(|&x| x + 0.25).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn volume_smaller_than_tile_is_padded_and_channels_can_change() {
        let dims = [5, 4, 3];
        let tile = [8, 8, 8];
        let input = ramp(1, dims);
        // 1 input channel → 3 output channels (x, 2x, padded-voxel count as a check).
        let out = sliding_window(&input, 1, dims, tile, 1.0 / 3.0, 3, |t| {
            let zeros = t.iter().filter(|&&x| x == 0.0).count() as f32;
            let mut o: Vec<f32> = t.to_vec();
            o.extend(t.iter().map(|&x| 2.0 * x));
            o.extend(std::iter::repeat_n(zeros, t.len()));
            o
        })
        .unwrap();
        let n = input.len();
        assert_eq!(&out[..n], &input[..]);
        assert!(out[n..2 * n].iter().zip(&input).all(|(a, b)| *a == 2.0 * b));
        // Padding: 8³ − 5·4·3 = 452 zero voxels (the ramp has one zero at index 0).
        assert!(out[2 * n..].iter().all(|&z| z == 453.0));
        // Errors, not panics, for a wrong predictor output or input length.
        assert!(sliding_window(&input, 1, dims, tile, 0.3, 2, |t| t.to_vec()).is_err());
        assert!(sliding_window(&input[1..], 1, dims, tile, 0.3, 1, |t| t.to_vec()).is_err());
        assert!(sliding_window(&input, 1, dims, tile, 1.0, 1, |t| t.to_vec()).is_err());
    }
}
