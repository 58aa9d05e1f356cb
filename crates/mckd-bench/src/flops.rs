//! Floating-point operation counts of the benchmarked steps, from layer shapes.
//!
//! Only convolutions, transposed convolutions and linear layers are counted (one multiply-add =
//! 2 FLOP); norms, activations, pooling, losses and optimiser updates are a few per element
//! and are left out. A training step (forward + backward: the gradients with respect to inputs
//! and to weights each cost about one forward) is counted as 3 × forward, the usual convention.

/// FLOPs of a convolution (any dimension): `2 · out_voxels · c_out · c_in · kernel_voxels`.
///
/// `out_voxels` is the number of output positions per sample (e.g. `24 · 24`).
pub fn conv(batch: usize, out_voxels: usize, c_in: usize, c_out: usize, kernel: usize) -> u64 {
    2 * (batch * out_voxels * c_out * c_in * kernel) as u64
}

/// FLOPs of a transposed convolution: `2 · in_voxels · c_in · c_out · kernel_voxels` (each input
/// position scatters a `c_out × kernel` block).
pub fn conv_transpose(
    batch: usize,
    in_voxels: usize,
    c_in: usize,
    c_out: usize,
    kernel: usize,
) -> u64 {
    2 * (batch * in_voxels * c_in * c_out * kernel) as u64
}

/// FLOPs of a linear layer: `2 · batch · d_in · d_out`.
pub fn linear(batch: usize, d_in: usize, d_out: usize) -> u64 {
    2 * (batch * d_in * d_out) as u64
}

/// Forward FLOPs of the AV-MNIST network (`mckd_avmnist::model`, both encoders + head).
pub fn avmnist_forward(batch: usize) -> u64 {
    avmnist_encoders(batch) + avmnist_head(batch)
}

/// Forward FLOPs of the two AV-MNIST encoders.
pub fn avmnist_encoders(batch: usize) -> u64 {
    let b = batch;
    // Image: Conv2d(1,20,5) → 24², Conv2d(20,50,5) → 8², Linear(800,128).
    let image = conv(b, 24 * 24, 1, 20, 25) + conv(b, 8 * 8, 20, 50, 25) + linear(b, 800, 128);
    // Audio: Conv2d(1,32,3,p1) → 20², Conv2d(32,64,3,p1) → 10², Linear(1600,128).
    let audio = conv(b, 20 * 20, 1, 32, 9) + conv(b, 10 * 10, 32, 64, 9) + linear(b, 1600, 128);
    image + audio
}

/// Forward FLOPs of the AV-MNIST head: Linear(256,64), Linear(64,10).
pub fn avmnist_head(batch: usize) -> u64 {
    linear(batch, 256, 64) + linear(batch, 64, 10)
}

/// FLOPs of one AV-MNIST inner step (forward + backward of everything).
pub fn avmnist_inner_step(batch: usize) -> u64 {
    3 * avmnist_forward(batch)
}

/// FLOPs of one AV-MNIST meta step: the encoders run forward only (frozen, no gradient), the
/// head forward + backward (gradient flows to the IWV through the head's inputs).
pub fn avmnist_meta_step(batch: usize) -> u64 {
    avmnist_encoders(batch) + 3 * avmnist_head(batch)
}

/// Forward FLOPs of the shared-encoder 3D UNet (`mckd_brats::model`) with base width `c`,
/// `modalities` encoder passes, inputs of spatial size `dhw` = (D, H, W) (each a multiple of
/// 8; level `l` has `(D >> l)·(H >> l)·(W >> l)` voxels).
pub fn unet_forward(batch: usize, c: usize, dhw: [usize; 3], modalities: usize) -> u64 {
    let b = batch;
    let v = |l: usize| dhw.iter().map(|&s| s >> l).product::<usize>(); // voxels at level l
    let k = 27;
    // block(in, out, stride) at output level l: conv(in→out) + conv(out→out).
    let block = |l: usize, cin: usize, cout: usize| {
        conv(b, v(l), cin, cout, k) + conv(b, v(l), cout, cout, k)
    };
    let encoder =
        block(0, 1, c) + block(1, c, 2 * c) + block(2, 2 * c, 4 * c) + block(3, 4 * c, 8 * c);
    let n = modalities;
    let decoder = conv_transpose(b, v(3), n * 8 * c, 4 * c, 8)
        + block(2, 4 * c + n * 4 * c, 4 * c)
        + conv_transpose(b, v(2), 4 * c, 2 * c, 8)
        + block(1, 2 * c + n * 2 * c, 2 * c)
        + conv_transpose(b, v(1), 2 * c, c, 8)
        + block(0, c + n * c, c)
        + conv(b, v(0), c, 3, 1);
    n as u64 * encoder + decoder
}

/// FLOPs of one UNet inner step (forward + backward) on crops of `dhw` = (D, H, W).
pub fn unet_inner_step(batch: usize, c: usize, dhw: [usize; 3], modalities: usize) -> u64 {
    3 * unet_forward(batch, c, dhw, modalities)
}

/// FLOPs of a sliding-window prediction: `tiles` forward passes of one tile of `tile_dhw`
/// (D, H, W) with all `modalities` encoders (absent modalities are zeroed, not skipped).
pub fn unet_predict(c: usize, tile_dhw: [usize; 3], tiles: usize, modalities: usize) -> u64 {
    tiles as u64 * unet_forward(1, c, tile_dhw, modalities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_conv_layer_by_hand() {
        // Image conv2: Conv2d(20, 50, 5) on [64, 20, 12, 12] → [64, 50, 8, 8]. Each output
        // element is a dot product of 20·5·5 = 500 products and 500 sums:
        // 64 · 50 · 64 outputs × 1000 FLOP = 204,800,000.
        assert_eq!(conv(64, 8 * 8, 20, 50, 25), 204_800_000);
        // UNet e1 conv1, c = 8, 64³, batch 2: 2 · 262144 · 8 · 27 · 2 = 226,492,416.
        assert_eq!(conv(2, 64 * 64 * 64, 1, 8, 27), 226_492_416);
        // ConvTranspose3d(256, 32, 2, stride 2) on 8³: 512 · 256 · 32 · 8 · 2 = 67,108,864.
        assert_eq!(conv_transpose(1, 512, 256, 32, 8), 67_108_864);
    }

    #[test]
    fn avmnist_totals() {
        // Per sample: 576,000 + 3,200,000 + 204,800 + 230,400 + 3,686,400 + 409,600 + 34,048.
        assert_eq!(avmnist_forward(1), 8_341_248);
        assert_eq!(avmnist_inner_step(64), 3 * 64 * 8_341_248);
    }

    #[test]
    fn non_cubic_unet_by_hand() {
        // c = 1, one modality, batch 1, (D, H, W) = (8, 16, 24). Voxels per level:
        // 8·16·24 = 3072, 4·8·12 = 384, 2·4·6 = 48, 1·2·3 = 6. Each 3×3×3 conv: 2 · voxels ·
        // c_out · c_in · 27.
        let e1 = 2 * 3072 * 27 + 2 * 3072 * 27; // 1→1, 1→1: 331,776
        let e2 = 2 * 384 * 2 * 27 + 2 * 384 * 4 * 27; // 1→2, 2→2: 124,416
        let e3 = 2 * 48 * 8 * 27 + 2 * 48 * 16 * 27; // 2→4, 4→4: 62,208
        let e4 = 2 * 6 * 32 * 27 + 2 * 6 * 64 * 27; // 4→8, 8→8: 31,104
        let up3 = 2 * 6 * 8 * 4 * 8; // ConvTranspose 8→4 from the 6 bottleneck voxels: 3,072
        let d3 = 2 * 48 * 4 * 8 * 27 + 2 * 48 * 16 * 27; // (4 + 4)→4, 4→4: 124,416
        let up2 = 2 * 48 * 4 * 2 * 8; // 4→2: 6,144
        let d2 = 2 * 384 * 2 * 4 * 27 + 2 * 384 * 4 * 27; // (2 + 2)→2, 2→2: 248,832
        let up1 = 2 * 384 * 2 * 8; // 2→1: 12,288
        let d1 = 2 * 3072 * 2 * 27 + 2 * 3072 * 27; // (1 + 1)→1, 1→1: 497,664
        let head = 2 * 3072 * 3; // 1×1×1, 1→3: 18,432
        let hand: u64 = e1 + e2 + e3 + e4 + up3 + d3 + up2 + d2 + up1 + d1 + head;
        assert_eq!(hand, 1_460_352);
        assert_eq!(unet_forward(1, 1, [8, 16, 24], 1), hand);
        // The axis order does not change the count; batch and steps scale it.
        assert_eq!(unet_forward(1, 1, [24, 8, 16], 1), hand);
        assert_eq!(unet_inner_step(2, 1, [8, 16, 24], 1), 6 * hand);
        assert_eq!(unet_predict(1, [8, 16, 24], 5, 1), 5 * hand);
        // The cubic 64³ step of the earlier rounds (c = 8, batch 2, 4 modalities).
        assert_eq!(unet_forward(2, 8, [64; 3], 4), 37_052_481_536);
    }
}
