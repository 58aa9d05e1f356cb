//! SMIL's own AV-MNIST networks (`mengmenm/SMIL`, `models/lenet5.py`, `models/snet.py`;
//! PEERS.md §7.2), offered as SMIL's backbone beside ours:
//!
//! | part | layers | output |
//! |---|---|---|
//! | image extractor (LeNet-5, no batch norm) | Conv 1→5 5×5, MaxPool 2, ReLU; Conv 5→10 5×5, Dropout 0.5, MaxPool 2, ReLU; flatten | 160 |
//! | image unimodal head (pretraining only) | Linear 160→32, ReLU, Linear 32→10 | 10 |
//! | audio extractor ("SNetPluse", MFCC 20×20) | Conv 1→32 2×2, BN, ReLU; Conv 32→48 2×2, BN, ReLU; Conv 48→20 2×2, BN, ReLU; MaxPool k2 s4; Dropout 0.25; flatten | 320 |
//! | audio unimodal head (pretraining only) | Linear 320→160, ReLU, Linear 160→32, ReLU, Linear 32→10 | 10 |
//! | fusion head | Linear 480→64, ReLU, Dropout 0.5, Linear 64→10 | 10 |
//!
//! Dropout is element-wise (SMIL's code uses `F.dropout`). The extractors' deterministic
//! features skip their dropout; the dropped ones are what the fusion head sees in training.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use mckd_kernels::{bn_relu, conv2d_layer, select_rows};

use super::backbone::Backbone;
use super::common::{Feature, scatter};
use crate::model::{AvBatch, DropoutRng, IMAGE, SeededDropout, init_seeded_with};

/// SMIL's LeNet-5 image network, audio network and fusion head.
#[derive(Module, Debug)]
pub struct LenetNet {
    img_conv1: Conv2d,
    img_conv2: Conv2d,
    img_pool: MaxPool2d,
    img_drop: SeededDropout,
    img_fc1: Linear,
    img_fc2: Linear,
    aud_conv1: Conv2d,
    aud_bn1: BatchNorm,
    aud_conv2: Conv2d,
    aud_bn2: BatchNorm,
    aud_conv3: Conv2d,
    aud_bn3: BatchNorm,
    aud_pool: MaxPool2d,
    aud_drop: SeededDropout,
    aud_fc1: Linear,
    aud_fc2: Linear,
    aud_fc3: Linear,
    fc1: Linear,
    head_drop: SeededDropout,
    fc2: Linear,
    #[module(skip)]
    rng: DropoutRng,
}

/// Image feature width.
pub const IMAGE_FEATURES: usize = 160;
/// Audio feature width.
pub const AUDIO_FEATURES: usize = 320;
/// Hidden width of the fusion head.
pub const HIDDEN: usize = 64;

impl LenetNet {
    /// SMIL's networks, parameters drawn from `seed` (dropout from a generator derived from it).
    pub fn init_seeded(seed: u64, device: &Device) -> Self {
        init_seeded_with(seed, device, || {
            let rng = DropoutRng::new(seed ^ 0x1E4E_7000_0000_0001);
            let conv = |a, b, k| Conv2dConfig::new([a, b], [k, k]).init(device);
            let lin = |a, b| LinearConfig::new(a, b).init(device);
            Self {
                img_conv1: conv(1, 5, 5),
                img_conv2: conv(5, 10, 5),
                img_pool: MaxPool2dConfig::new([2, 2]).init(),
                img_drop: SeededDropout::new(0.5, rng.clone()),
                img_fc1: lin(IMAGE_FEATURES, 32),
                img_fc2: lin(32, 10),
                aud_conv1: conv(1, 32, 2),
                aud_bn1: BatchNormConfig::new(32).init(device),
                aud_conv2: conv(32, 48, 2),
                aud_bn2: BatchNormConfig::new(48).init(device),
                aud_conv3: conv(48, 20, 2),
                aud_bn3: BatchNormConfig::new(20).init(device),
                aud_pool: MaxPool2dConfig::new([2, 2]).with_strides([4, 4]).init(),
                aud_drop: SeededDropout::new(0.25, rng.clone()),
                aud_fc1: lin(AUDIO_FEATURES, 160),
                aud_fc2: lin(160, 32),
                aud_fc3: lin(32, 10),
                fc1: lin(IMAGE_FEATURES + AUDIO_FEATURES, HIDDEN),
                head_drop: SeededDropout::new(0.5, rng.clone()),
                fc2: lin(HIDDEN, 10),
                rng,
            }
        })
    }

    /// # Shapes
    /// - `x`: `[batch, 1, 28, 28]`; outputs `[batch, 160]` (without, with dropout)
    fn image(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let x = relu(self.img_pool.forward(conv2d_layer(&self.img_conv1, x))); // [B, 5, 12, 12]
        let y = conv2d_layer(&self.img_conv2, x); // [B, 10, 8, 8]
        let [b, c, h, w] = y.dims();
        let dropped = self
            .img_drop
            .forward(y.clone().reshape([b, c * h * w]))
            .reshape([b, c, h, w]);
        let tail = |t: Tensor<4>| -> Tensor<2> { relu(self.img_pool.forward(t)).flatten(1, 3) };
        (tail(y), tail(dropped))
    }

    /// # Shapes
    /// - `x`: `[batch, 1, 20, 20]`; outputs `[batch, 320]` (without, with dropout)
    fn audio(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let x = bn_relu(&self.aud_bn1, conv2d_layer(&self.aud_conv1, x)); // [B, 32, 19, 19]
        let x = bn_relu(&self.aud_bn2, conv2d_layer(&self.aud_conv2, x)); // [B, 48, 18, 18]
        let x = bn_relu(&self.aud_bn3, conv2d_layer(&self.aud_conv3, x)); // [B, 20, 17, 17]
        let det: Tensor<2> = self.aud_pool.forward(x).flatten(1, 3); // [B, 320]
        (det.clone(), self.aud_drop.forward(det))
    }
}

impl Backbone for LenetNet {
    fn widths(&self) -> [usize; 2] {
        [IMAGE_FEATURES, AUDIO_FEATURES]
    }

    fn hidden_width(&self) -> usize {
        HIDDEN
    }

    fn features(&self, batch: &AvBatch, m: usize, present: &[bool]) -> Feature {
        let b = present.len();
        let width = self.widths()[m];
        let rows: Vec<usize> = (0..b).filter(|&i| present[i]).collect();
        let device = batch.labels.device();
        if rows.is_empty() {
            let z = Tensor::zeros([b, width], &device);
            return Feature {
                det: z.clone(),
                dropped: z,
            };
        }
        let x = if m == IMAGE {
            &batch.image
        } else {
            &batch.audio
        };
        let x = if rows.len() == b {
            x.clone()
        } else {
            select_rows(x.clone(), &rows)
        };
        let (det, dropped) = if m == IMAGE {
            self.image(x)
        } else {
            self.audio(x)
        };
        if rows.len() == b {
            Feature { det, dropped }
        } else {
            Feature {
                det: scatter(det, present),
                dropped: scatter(dropped, present),
            }
        }
    }

    fn hidden(&self, fused: Tensor<2>) -> Tensor<2> {
        relu(self.fc1.forward(fused))
    }

    fn classify(&self, hidden: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.head_drop.forward(hidden))
    }

    fn unimodal_logits(&self, batch: &AvBatch, m: usize) -> Tensor<2> {
        let b = batch.labels.dims()[0];
        let f = self.features(batch, m, &vec![true; b]).dropped;
        if m == IMAGE {
            self.img_fc2.forward(relu(self.img_fc1.forward(f)))
        } else {
            let h = relu(self.aud_fc1.forward(f));
            self.aud_fc3.forward(relu(self.aud_fc2.forward(h)))
        }
    }

    fn dropout_rng(&self) -> DropoutRng {
        self.rng.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::test_support::tiny_batch;

    #[test]
    fn shapes_parameter_count_and_absent_rows() {
        let device = Device::flex();
        let net = LenetNet::init_seeded(1, &device);
        // PyTorch parameter counts of SMIL's layers (weights + biases):
        // image: 1*5*25+5 + 5*10*25+10 + 160*32+32 + 32*10+10 = 130 + 1260 + 5152 + 330
        // audio: 1*32*4+32 + 32*48*4+48 + 48*20*4+20 + 3 BN (2·(32+48+20))
        //        + 320*160+160 + 160*32+32 + 32*10+10
        // head: 480*64+64 + 64*10+10
        let image = 130 + 1260 + 5152 + 330;
        let audio = 160 + 6192 + 3860 + 200 + 51_360 + 5152 + 330;
        let head = 30_784 + 650;
        // burn also counts batch norm's running mean and variance (2 per channel).
        assert_eq!(net.num_params(), image + audio + head + 200);
        let batch = tiny_batch(3, 1, &device);
        let present = [true, false, true];
        let fi = net.features(&batch, 0, &present);
        let fa = net.features(&batch, 1, &present);
        assert_eq!(fi.det.dims(), [3, 160]);
        assert_eq!(fa.det.dims(), [3, 320]);
        let row1: Vec<f32> = mckd_train::to_vec(fa.det.narrow(0, 1, 1));
        assert!(row1.iter().all(|&v| v == 0.0));
        let logits = net.fused_logits(&batch);
        assert_eq!(logits.dims(), [3, 10]);
        assert_eq!(net.unimodal_logits(&batch, 1).dims(), [3, 10]);
    }
}
