//! DualNet: the reference network of MCKD (and ShaSpec) — DESIGN §2.2, PEERS §2.2.
//!
//! Written from the layer list of the reference code base (`billhhh/MCKD@b0466a5`, files
//! `Res50.py` and `DualNet.py`; ShaSpec shares them). One encoder is shared by the modalities:
//! each modality is a 1-channel volume encoded separately. The decoder takes the modalities'
//! features concatenated on channels (modality order Flair, T1, T1c, T2).
//!
//! # Layers (width multiplier `w`; every channel count `c` below becomes `max(1, round(c·w))`)
//!
//! Conventions: every convolution except the transposed ones and the head is a
//! weight-standardised, bias-free [`WsConv3d`] (`Conv3d_wd`, weight std over each output
//! channel, unbiased variance + 1e-12); `IN` = affine instance norm (ε 1e-5, γ = 1, β = 0 at
//! init); `act` = LeakyReLU(0.01), with PyTorch's derivative 0.01 at 0 (see "A missing
//! modality" below). Stride and padding are per axis (D, H, W).
//!
//! Encoder, per modality (input `[B, 1, D, H, W]`):
//!
//! | layer | operation | output for 80×160×160 |
//! |---|---|---|
//! | stem | conv 7³, stride (1,2,2), pad 3, 1 → 64; IN, act | **skip 0**: 64 @ 80×80×80 |
//! | pool | max-pool 3³, stride 2, pad 1 (−∞) | 64 @ 40³ |
//! | layer1 | 3 bottlenecks, planes 64, stride 1 | **skip 1**: 256 @ 40³ |
//! | layer2 | 4 bottlenecks, planes 128, stride 2 | **skip 2**: 512 @ 20³ |
//! | layer3 | 6 bottlenecks, planes 256, stride 2 | **skip 3**: 1024 @ 10³ |
//! | layer4 | 3 bottlenecks, planes 320, stride 2 | 1280 @ 5³ |
//! | reduce | conv 1×1 1280 → 256; IN, act | 256 @ 5³ |
//! | ASPP | 5 branches, concatenated, conv 1×1 5·256 → 256; IN, act | **bottleneck** 256 @ 5³ |
//!
//! * Bottleneck(in, p, stride): conv 1×1 in → p, IN, act; conv 3³ stride s pad 1 p → p, IN,
//!   act; conv 1×1 p → 4p, IN; plus the shortcut; act. The first block of every layer has a
//!   projection shortcut (conv 1×1 stride s in → 4p, IN) — the reference builds one even for
//!   layer1's stride 1 (its test `stride != 1` compares a tuple with an int) — the others
//!   the identity. No dilation anywhere in the backbone; the stride sits on the 3³ conv.
//! * ASPP(256 → 256): conv 1×1; conv 3³ dilation 2 (pad 2); dilation 4 (pad 4); dilation 8
//!   (pad 8) — each then IN, act; and a global-pool branch: mean over D·H·W, conv 1×1, IN
//!   (see [`DualNetConfig::pool_branch_norm`]), act, broadcast back to D×H×W.
//!
//! Decoder, on the modalities' maps concatenated (N = 4 modalities), four stages, deep to
//! shallow, with decoder widths 256, 128, 64, 32:
//!
//! | stage | up: ConvTranspose3d k2 s2, no bias | skip: conv 1×1 of N·(skip l), IN, act | add, then BasicBlock | output |
//! |---|---|---|---|---|
//! | 3 | N·256 → 256 | N·1024 → 256 (skip 3) | BasicBlock(256) | 256 @ 10³ |
//! | 2 | 256 → 128 | N·512 → 128 (skip 2) | BasicBlock(128) | 128 @ 20³ |
//! | 1 | 128 → 64 | N·256 → 64 (skip 1) | BasicBlock(64) | 64 @ 40³ |
//! | 0 | 64 → 32 | N·64 → 32 (skip 0) | BasicBlock(32) | 32 @ 80×80×80 |
//! | head | conv 1×1 32 → 3, no bias, **not** standardised; trilinear ×(1, 2, 2), align_corners false | | | 3 @ 80×160×160 |
//!
//! BasicBlock(c): conv 3³ pad 1, IN, act; conv 3³ pad 1, IN; plus the input; act.
//!
//! The skips are added (not concatenated). The encoder's layer4 output feeds only the reduce
//! conv. Spatial sizes: D must be a multiple of 16 and H, W of 32 ([`DualNetConfig::shapes`]).
//!
//! # Parameters
//! [`DualNetConfig::parameter_count`] derives the count from this list: **43,656,672** at
//! full width (29,029,440 backbone + 328,192 reduce + 5,770,240 ASPP + 8,528,800 decoder and
//! head), 512 fewer without the pool-branch norm. The test `full_width_parameter_count`
//! spells out the arithmetic.
//!
//! # Initialisation (the reference's)
//! Convolutions and transposed convolutions: `kaiming_normal_(mode='fan_out')`, i.e. normal
//! with std `√(2/fan_out)`, where PyTorch's fan_out is `Cout·k³` for a convolution and
//! `Cin·k³` for a transposed one (dimension 0 of its `[Cin, Cout, k, k, k]` weight). Norms:
//! γ = 1, β = 0.
//!
//! # The ASPP's global-pool branch does nothing
//! The branch adds, per sample, a spatially constant vector to the output of the ASPP's 1×1
//! projection conv; the instance norm right after it subtracts each channel's spatial mean
//! and so removes that vector exactly. The branch changes neither the output nor any
//! gradient, and its own parameters receive no gradient (0 up to rounding) — in the
//! reference as here. (The reference also instance-normalises the pooled `[B, 256, 1, 1, 1]`
//! map, patching PyTorch to allow a single voxel, which makes the branch the constant
//! `act(β)` before it even reaches the projection.) It is kept, norm included, so that the
//! parameters and checkpoints match the reference's; `pool_branch_norm = false` drops the
//! norm (PEERS §2.4's suggestion, which does not revive the branch). Tests check both facts.
//!
//! # A missing modality
//! A missing modality's input is zeroed and still encoded: its skips reach the decoder (only
//! the bottleneck is imputed, DESIGN §1.2), so the backward runs through its encoder pass.
//! With bias-free convolutions and β = 0 (the initialisation), every activation of that pass
//! is exactly 0, every instance norm sees a zero-variance plane and multiplies the gradient by
//! γ/√ε ≈ 316, and every leaky ReLU sits exactly at its kink. Through the ~50 norms of the
//! encoder that overflows f32: measured at width 1/16, the zero pass's input-gradient gain is
//! 1e64.8 with PyTorch's leaky ReLU (derivative `slope` at 0) and 1e164.8 with burn's
//! (derivative 1), and the parameter gradients turn ±inf / NaN. PyTorch would do the same;
//! the reference never meets it because stage 1 trains with every modality, which moves β off
//! 0, and then the gradients are finite (β ~ N(0, 1e-3) is already enough). So a DualNet run
//! must start with all-modality iterations (`config::validate`), and every leaky ReLU here is
//! PyTorch's (`mckd_kernels::leaky_relu`, and the fused norm kernel's backward), the
//! reference's arithmetic. Skipping the encoder on absent rows would not be equivalent: after
//! training a zero volume no longer encodes to 0, and its skips are part of the reference's
//! forward.

use burn::nn::conv::{Conv3d, Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig};
use burn::nn::{Initializer, InstanceNorm, InstanceNormConfig, LeakyRelu, LeakyReluConfig};
use burn::prelude::*;
// PyTorch's leaky ReLU (derivative `slope` at 0), not burn's: a missing modality's zero
// volume puts every activation of its encoder pass at exactly 0 (see `mckd_kernels::instnorm`).
use mckd_kernels::{conv_transpose3d_k2s2, conv3d_1x1, instance_norm_leaky_relu, leaky_relu};
use mckd_nn::{WsConv3d, WsConv3dConfig, global_avg_pool3d, max_pool3d, pool_output_size};

/// Errors of a [`DualNetConfig`] or an input size.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DualNetError {
    /// The width multiplier is not a positive finite number.
    #[error("DualNet width multiplier must be positive and finite, got {0}")]
    Width(f64),
    /// No modalities or no output channels.
    #[error("DualNet needs at least one {what}, got 0")]
    Empty {
        /// `"modality"` or `"output channel"`.
        what: &'static str,
    },
    /// The decoder cannot undo the encoder's strides exactly for this input size.
    #[error(
        "DualNet input size (D, H, W) = {spatial:?}: D must be a positive multiple of 16 and \
         H, W of 32 (the decoder doubles {got:?} to {doubled:?} but the skip is {skip:?})"
    )]
    Spatial {
        /// The input size.
        spatial: [usize; 3],
        /// The decoder's input size at the failing stage.
        got: [usize; 3],
        /// After the ×2 transposed convolution.
        doubled: [usize; 3],
        /// The skip it must match.
        skip: [usize; 3],
    },
}

/// Configuration of [`DualNet`].
#[derive(Config, Debug)]
pub struct DualNetConfig {
    /// Width multiplier: 1.0 is the reference; every channel count `c` becomes
    /// `max(1, round(c·width))`.
    #[config(default = 1.0)]
    pub width: f64,
    /// Number of modalities whose features the decoder takes concatenated.
    #[config(default = 4)]
    pub modalities: usize,
    /// Output channels (the 3 sigmoid regions).
    #[config(default = 3)]
    pub out_channels: usize,
    /// Negative slope of the leaky ReLUs.
    #[config(default = 0.01)]
    pub negative_slope: f64,
    /// Instance-normalise the ASPP's pooled 1×1×1 map as the reference does. The branch is
    /// inert either way (see the module docs); this only changes the parameter list (2·256w).
    #[config(default = true)]
    pub pool_branch_norm: bool,
}

/// Channel counts of a [`DualNet`] at a given width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DualWidths {
    /// Stem output (64 at full width).
    pub stem: usize,
    /// Bottleneck planes of layer1..layer4 (64, 128, 256, 320); each layer outputs 4×.
    pub planes: [usize; 4],
    /// The distilled bottleneck (reduce conv and ASPP; 256).
    pub bottleneck: usize,
    /// Decoder stage widths, deep to shallow (256, 128, 64, 32).
    pub decoder: [usize; 4],
}

impl DualWidths {
    /// Per-modality channels of the four skips, shallow to deep (64, 256, 512, 1024).
    pub fn skips(&self) -> [usize; 4] {
        [
            self.stem,
            4 * self.planes[0],
            4 * self.planes[1],
            4 * self.planes[2],
        ]
    }
}

/// Shapes of [`DualNet`]'s features for one input size (see [`DualNetConfig::shapes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DualShapes {
    /// Per-modality skips `[B, C, D, H, W]`, shallow to deep.
    pub skips: Vec<[usize; 5]>,
    /// Per-modality bottleneck.
    pub bottleneck: [usize; 5],
    /// Logits.
    pub logits: [usize; 5],
}

/// Residual blocks per layer (ResNet-50).
const BLOCKS: [usize; 4] = [3, 4, 6, 3];
/// Stride of each layer's first block.
const LAYER_STRIDE: [usize; 4] = [1, 2, 2, 2];
/// ASPP dilations of the three 3³ branches.
const DILATIONS: [usize; 3] = [2, 4, 8];

fn scaled(c: usize, width: f64) -> usize {
    ((c as f64 * width).round() as usize).max(1)
}

impl DualNetConfig {
    /// Checks the width, the modality count and the output channels.
    pub fn validate(&self) -> Result<(), DualNetError> {
        if !(self.width.is_finite() && self.width > 0.0) {
            return Err(DualNetError::Width(self.width));
        }
        if self.modalities == 0 {
            return Err(DualNetError::Empty { what: "modality" });
        }
        if self.out_channels == 0 {
            return Err(DualNetError::Empty {
                what: "output channel",
            });
        }
        Ok(())
    }

    /// The channel counts at this width.
    pub fn widths(&self) -> DualWidths {
        let s = |c| scaled(c, self.width);
        DualWidths {
            stem: s(64),
            planes: [s(64), s(128), s(256), s(320)],
            bottleneck: s(256),
            decoder: [s(256), s(128), s(64), s(32)],
        }
    }

    /// The parameter count, derived from the layer list (module docs) rather than from a
    /// built network: convolutions `Cout·Cin·k³` (no biases), instance norms `2·C`.
    pub fn parameter_count(&self) -> usize {
        let wd = self.widths();
        let n = self.modalities;
        let b = wd.bottleneck;
        let norm = |c: usize| 2 * c;
        let bottleneck_block = |inp: usize, p: usize, projection: bool| {
            inp * p
                + norm(p)
                + 27 * p * p
                + norm(p)
                + 4 * p * p
                + norm(4 * p)
                + if projection {
                    inp * 4 * p + norm(4 * p)
                } else {
                    0
                }
        };
        let mut total = 343 * wd.stem + norm(wd.stem);
        let mut inp = wd.stem;
        for (l, &p) in wd.planes.iter().enumerate() {
            for i in 0..BLOCKS[l] {
                total += bottleneck_block(inp, p, i == 0);
                inp = 4 * p;
            }
        }
        total += inp * b + norm(b); // reduce
        total += b * b + norm(b); // ASPP 1×1 branch
        total += 3 * (27 * b * b + norm(b)); // dilated branches
        total += b * b + if self.pool_branch_norm { norm(b) } else { 0 }; // pool branch
        total += 5 * b * b + norm(b); // projection
        let skips = wd.skips();
        let mut c_in = n * b;
        for (j, &dc) in wd.decoder.iter().enumerate() {
            total += c_in * dc * 8; // transposed conv
            total += n * skips[3 - j] * dc + norm(dc); // skip conv
            total += 2 * (27 * dc * dc + norm(dc)); // basic block
            c_in = dc;
        }
        total + c_in * self.out_channels // head
    }

    /// Propagates a batch size and an input size (D, H, W) through the layer list (the
    /// convolution and pooling size formulas, layer by layer), without building the network.
    /// Fails if the configuration is invalid or the decoder's ×2 stages do not land on the
    /// skips' sizes (D not a multiple of 16, or H, W not of 32).
    pub fn shapes(&self, batch: usize, spatial: [usize; 3]) -> Result<DualShapes, DualNetError> {
        self.validate()?;
        let wd = self.widths();
        let conv = |n: [usize; 3], k: usize, s: [usize; 3], p: usize| -> [usize; 3] {
            std::array::from_fn(|a| pool_output_size(n[a], k, s[a], p))
        };
        let stem = conv(spatial, 7, [1, 2, 2], 3);
        let mut sizes = vec![stem];
        let mut x = conv(stem, 3, [2, 2, 2], 1); // max-pool
        for (l, &s) in LAYER_STRIDE.iter().enumerate() {
            x = conv(x, 3, [s; 3], 1); // the first block's strided 3³ conv
            if l < 3 {
                sizes.push(x);
            }
        }
        // The ASPP keeps the size: every dilated 3³ branch pads by its dilation.
        let bottleneck = x;
        let mut dec = bottleneck;
        for skip in sizes.iter().rev() {
            let doubled = dec.map(|v| 2 * v);
            if doubled != *skip || skip.contains(&0) {
                return Err(DualNetError::Spatial {
                    spatial,
                    got: dec,
                    doubled,
                    skip: *skip,
                });
            }
            dec = doubled;
        }
        let c = wd.skips();
        let with = |ch: usize, s: [usize; 3]| [batch, ch, s[0], s[1], s[2]];
        Ok(DualShapes {
            skips: (0..4).map(|l| with(c[l], sizes[l])).collect(),
            bottleneck: with(wd.bottleneck, bottleneck),
            logits: with(self.out_channels, [dec[0], 2 * dec[1], 2 * dec[2]]),
        })
    }

    /// Builds the network on `device` (seed the device first for a reproducible init).
    ///
    /// # Panics
    /// If [`DualNetConfig::validate`] fails (check user input with it first).
    pub fn init(&self, device: &Device) -> DualNet {
        if let Err(e) = self.validate() {
            panic!("invalid DualNetConfig: {e}");
        }
        let wd = self.widths();
        let slope = self.negative_slope;
        let mut inp = wd.stem;
        let mut layers = Vec::with_capacity(4);
        for (l, &p) in wd.planes.iter().enumerate() {
            let blocks = (0..BLOCKS[l])
                .map(|i| {
                    let stride = if i == 0 { LAYER_STRIDE[l] } else { 1 };
                    let block = Bottleneck::new(inp, p, stride, i == 0, slope, device);
                    inp = 4 * p;
                    block
                })
                .collect();
            layers.push(blocks);
        }
        let [layer1, layer2, layer3, layer4]: [Vec<Bottleneck>; 4] =
            layers.try_into().expect("four layers");
        let b = wd.bottleneck;
        let encoder = DualEncoder {
            stem: ConvNorm::new(1, wd.stem, 7, [1, 2, 2], 3, 1, device),
            layer1,
            layer2,
            layer3,
            layer4,
            reduce: ConvNorm::new(inp, b, 1, [1; 3], 0, 1, device),
            aspp: Aspp {
                branch1: ConvNorm::new(b, b, 1, [1; 3], 0, 1, device),
                dilated: DILATIONS
                    .iter()
                    .map(|&d| ConvNorm::new(b, b, 3, [1; 3], d, d, device))
                    .collect(),
                pool_conv: WsConv3dConfig::new([b, b], [1, 1, 1]).init(device),
                pool_norm: self
                    .pool_branch_norm
                    .then(|| InstanceNormConfig::new(b).init(device)),
                project: ConvNorm::new(5 * b, b, 1, [1; 3], 0, 1, device),
                act: act(slope),
            },
            act: act(slope),
        };
        let skips = wd.skips();
        let mut c_in = self.modalities * b;
        let stages = wd
            .decoder
            .iter()
            .enumerate()
            .map(|(j, &dc)| {
                // PyTorch's fan_out of a transposed conv weight [Cin, Cout, 2, 2, 2] is Cin·8.
                let std = (2.0 / (c_in * 8) as f64).sqrt();
                let stage = DecoderStage {
                    up: ConvTranspose3dConfig::new([c_in, dc], [2, 2, 2])
                        .with_stride([2, 2, 2])
                        .with_bias(false)
                        .with_initializer(Initializer::Normal { mean: 0.0, std })
                        .init(device),
                    skip: ConvNorm::new(
                        self.modalities * skips[3 - j],
                        dc,
                        1,
                        [1; 3],
                        0,
                        1,
                        device,
                    ),
                    block: BasicBlock::new(dc, slope, device),
                    act: act(slope),
                };
                c_in = dc;
                stage
            })
            .collect();
        let decoder = DualDecoder {
            stages,
            head: Conv3dConfig::new([c_in, self.out_channels], [1, 1, 1])
                .with_bias(false)
                .with_initializer(Initializer::KaimingNormal {
                    gain: std::f64::consts::SQRT_2,
                    fan_out_only: true,
                })
                .init(device),
        };
        DualNet {
            encoder,
            decoder,
            modalities: self.modalities,
            widths: wd,
        }
    }
}

/// The parameter count of the reference configuration (4 modalities, 3 outputs, the
/// pool-branch norm) at width `width`: `DualNetConfig::new().with_width(width)
/// .parameter_count()` — 43,656,672 at width 1.
pub fn parameter_count(width: f64) -> usize {
    DualNetConfig::new().with_width(width).parameter_count()
}

fn act(slope: f64) -> LeakyRelu {
    LeakyReluConfig::new().with_negative_slope(slope).init()
}

/// The identity as a leaky ReLU of slope 1, so that an instance norm without activation
/// also runs through the fused `instance_norm_leaky_relu` kernel.
fn no_act() -> LeakyRelu {
    LeakyReluConfig::new().with_negative_slope(1.0).init()
}

/// Weight-standardised conv → instance norm (→ leaky ReLU).
#[derive(Module, Debug)]
pub struct ConvNorm {
    conv: WsConv3d,
    norm: InstanceNorm,
}

impl ConvNorm {
    fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: [usize; 3],
        padding: usize,
        dilation: usize,
        device: &Device,
    ) -> Self {
        Self {
            conv: WsConv3dConfig::new([c_in, c_out], [k; 3])
                .with_stride(stride)
                .with_padding([padding; 3])
                .with_dilation([dilation; 3])
                .init(device),
            norm: InstanceNormConfig::new(c_out).init(device),
        }
    }

    /// `act(IN(conv(x)))`; pass the slope-1 [`no_act`] for `IN(conv(x))`.
    fn forward(&self, x: Tensor<5>, act: &LeakyRelu) -> Tensor<5> {
        instance_norm_leaky_relu(&self.norm, act, self.conv.forward(x))
    }
}

/// ResNet bottleneck block (expansion 4).
#[derive(Module, Debug)]
pub struct Bottleneck {
    reduce: ConvNorm,
    spatial: ConvNorm,
    expand: ConvNorm,
    shortcut: Option<ConvNorm>,
    act: LeakyRelu,
    no_act: LeakyRelu,
}

impl Bottleneck {
    fn new(
        inp: usize,
        planes: usize,
        stride: usize,
        projection: bool,
        slope: f64,
        device: &Device,
    ) -> Self {
        Self {
            reduce: ConvNorm::new(inp, planes, 1, [1; 3], 0, 1, device),
            spatial: ConvNorm::new(planes, planes, 3, [stride; 3], 1, 1, device),
            expand: ConvNorm::new(planes, 4 * planes, 1, [1; 3], 0, 1, device),
            shortcut: projection
                .then(|| ConvNorm::new(inp, 4 * planes, 1, [stride; 3], 0, 1, device)),
            act: act(slope),
            no_act: no_act(),
        }
    }

    /// # Shapes
    /// `[B, in, D, H, W]` → `[B, 4·planes, ⌈D/s⌉, ⌈H/s⌉, ⌈W/s⌉]`
    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let out = self.reduce.forward(x.clone(), &self.act);
        let out = self.spatial.forward(out, &self.act);
        let out = self.expand.forward(out, &self.no_act);
        let residual = match &self.shortcut {
            Some(s) => s.forward(x, &self.no_act),
            None => x,
        };
        leaky_relu(out + residual, self.act.negative_slope)
    }
}

/// ResNet basic block (two 3³ convs, identity shortcut) of the decoder.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: ConvNorm,
    conv2: ConvNorm,
    act: LeakyRelu,
    no_act: LeakyRelu,
}

impl BasicBlock {
    fn new(c: usize, slope: f64, device: &Device) -> Self {
        Self {
            conv1: ConvNorm::new(c, c, 3, [1; 3], 1, 1, device),
            conv2: ConvNorm::new(c, c, 3, [1; 3], 1, 1, device),
            act: act(slope),
            no_act: no_act(),
        }
    }

    /// # Shapes
    /// `[B, c, D, H, W]` → the same
    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let out = self.conv1.forward(x.clone(), &self.act);
        let out = self.conv2.forward(out, &self.no_act);
        leaky_relu(out + x, self.act.negative_slope)
    }
}

/// Atrous spatial pyramid pooling over the reduced layer4 map.
#[derive(Module, Debug)]
pub struct Aspp {
    branch1: ConvNorm,
    dilated: Vec<ConvNorm>,
    pool_conv: WsConv3d,
    pool_norm: Option<InstanceNorm>,
    project: ConvNorm,
    act: LeakyRelu,
}

impl Aspp {
    /// # Shapes
    /// `[B, C, D, H, W]` → the same
    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, _, d, h, w] = x.dims();
        let mut branches = vec![self.branch1.forward(x.clone(), &self.act)];
        branches.extend(
            self.dilated
                .iter()
                .map(|br| br.forward(x.clone(), &self.act)),
        );
        let g = self.pool_conv.forward(global_avg_pool3d(x)); // [B, C, 1, 1, 1]
        let g = match &self.pool_norm {
            Some(norm) => instance_norm_leaky_relu(norm, &self.act, g),
            None => leaky_relu(g, self.act.negative_slope),
        };
        let c = g.dims()[1];
        // The reference's trilinear resize of a 1×1×1 map (align_corners=True) is a broadcast.
        branches.push(g.expand([b, c, d, h, w]));
        self.project.forward(Tensor::cat(branches, 1), &self.act)
    }
}

/// The shared encoder: 3-D ResNet-50 backbone, reduce conv and ASPP.
#[derive(Module, Debug)]
pub struct DualEncoder {
    stem: ConvNorm,
    layer1: Vec<Bottleneck>,
    layer2: Vec<Bottleneck>,
    layer3: Vec<Bottleneck>,
    layer4: Vec<Bottleneck>,
    reduce: ConvNorm,
    aspp: Aspp,
    act: LeakyRelu,
}

/// What the encoder gives for one modality.
#[derive(Debug, Clone)]
pub struct DualFeatures {
    /// The four skips, shallow to deep: stem, layer1, layer2, layer3 outputs
    /// (64w @ D×H/2×W/2, 256w @ /2×/4×/4, 512w @ /4×/8×/8, 1024w @ /8×/16×/16).
    pub skips: Vec<Tensor<5>>,
    /// The distilled bottleneck, `[B, 256w, D/16, H/32, W/32]`.
    pub bottleneck: Tensor<5>,
}

impl DualEncoder {
    /// # Shapes
    /// - `x`: `[B, 1, D, H, W]`
    /// - output: see [`DualFeatures`] and [`DualNetConfig::shapes`]
    pub fn forward(&self, x: Tensor<5>) -> DualFeatures {
        let s0 = self.stem.forward(x, &self.act);
        let x = max_pool3d(s0.clone(), [3; 3], [2; 3], [1; 3]);
        let run = |layer: &[Bottleneck], x| layer.iter().fold(x, |x, blk| blk.forward(x));
        let s1 = run(&self.layer1, x);
        let s2 = run(&self.layer2, s1.clone());
        let s3 = run(&self.layer3, s2.clone());
        let x = run(&self.layer4, s3.clone());
        let x = self.reduce.forward(x, &self.act);
        DualFeatures {
            skips: vec![s0, s1, s2, s3],
            bottleneck: self.aspp.forward(x),
        }
    }
}

/// One decoder stage: ×2 transposed conv, plus the 1×1-convolved skip, then a basic block.
#[derive(Module, Debug)]
pub struct DecoderStage {
    up: ConvTranspose3d,
    skip: ConvNorm,
    block: BasicBlock,
    act: LeakyRelu,
}

/// The decoder (four stages and the head).
#[derive(Module, Debug)]
pub struct DualDecoder {
    stages: Vec<DecoderStage>,
    head: Conv3d,
}

impl DualDecoder {
    /// # Shapes
    /// - `skips[l]`: `[B, N·C_l, …]`, shallow to deep (the modalities' skips concatenated)
    /// - `bottleneck`: `[B, N·256w, D/16, H/32, W/32]`
    /// - output: logits `[B, out_channels, D, H, W]`
    ///
    /// # Panics
    /// If there are not 4 skips or a stage's ×2 map and its skip differ in size (an input
    /// size [`DualNetConfig::shapes`] rejects).
    pub fn forward(&self, skips: Vec<Tensor<5>>, bottleneck: Tensor<5>) -> Tensor<5> {
        assert_eq!(
            skips.len(),
            4,
            "DualNet decoder takes 4 skips, got {}",
            skips.len()
        );
        let mut x = bottleneck;
        for (stage, skip) in self.stages.iter().zip(skips.into_iter().rev()) {
            // The ×2 transposed conv as one GEMM + voxel shuffle (mckd_kernels).
            let up = conv_transpose3d_k2s2(x, stage.up.weight.val(), None);
            let skip = stage.skip.forward(skip, &stage.act);
            assert_eq!(
                up.dims()[2..],
                skip.dims()[2..],
                "DualNet decoder: upsampled map and skip differ in size"
            );
            x = stage.block.forward(up + skip);
        }
        let logits = conv3d_1x1(x, self.head.weight.val(), None);
        mckd_nn::trilinear_scale(logits, [1.0, 2.0, 2.0], false)
    }
}

/// The reference network (see the module docs).
#[derive(Module, Debug)]
pub struct DualNet {
    encoder: DualEncoder,
    decoder: DualDecoder,
    #[module(skip)]
    modalities: usize,
    #[module(skip)]
    widths: DualWidths,
}

impl DualNet {
    /// The shared encoder on one modality (or a batch of modalities).
    ///
    /// # Shapes
    /// - `x`: `[B, 1, D, H, W]`
    /// - output: skips (shallow → deep) and bottleneck `[B, 256w, D/16, H/32, W/32]`; see
    ///   [`DualNetConfig::shapes`]
    pub fn encode(&self, x: Tensor<5>) -> DualFeatures {
        self.encoder.forward(x)
    }

    /// The decoder on the modalities' features concatenated on channels in modality order
    /// (see [`fuse_modalities`]).
    ///
    /// # Shapes
    /// - `skips[l]`: `[B, N·C_l, …]` shallow to deep; `bottleneck`: `[B, N·256w, …]`
    /// - output: logits `[B, out_channels, D, H, W]`
    ///
    /// # Panics
    /// As [`DualDecoder::forward`].
    pub fn decode(&self, skips: Vec<Tensor<5>>, bottleneck: Tensor<5>) -> Tensor<5> {
        self.decoder.forward(skips, bottleneck)
    }

    /// The reference's plain forward: every modality through the encoder (as one batch of
    /// `B·N` volumes), features concatenated in modality order, decoded. No imputation: a
    /// missing modality is whatever its (e.g. zeroed) input encodes to.
    ///
    /// # Shapes
    /// - `x`: `[B, N, D, H, W]` (N = the configured modalities)
    /// - output: logits `[B, out_channels, D, H, W]`
    ///
    /// # Panics
    /// If `x` does not have N channels, or as [`DualDecoder::forward`].
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, n, d, h, w] = x.dims();
        assert_eq!(
            n, self.modalities,
            "DualNet expects {} modalities",
            self.modalities
        );
        let f = self.encode(x.reshape([b * n, 1, d, h, w]));
        let skips = f.skips.into_iter().map(|s| fuse_modalities(s, n)).collect();
        self.decode(skips, fuse_modalities(f.bottleneck, n))
    }

    /// Number of modalities the decoder expects.
    pub fn modalities(&self) -> usize {
        self.modalities
    }

    /// The channel counts.
    pub fn widths(&self) -> DualWidths {
        self.widths
    }

    /// The shared encoder.
    pub fn encoder(&self) -> &DualEncoder {
        &self.encoder
    }

    /// The decoder.
    pub fn decoder(&self) -> &DualDecoder {
        &self.decoder
    }
}

/// Per-modality maps stacked on the batch axis (sample-major: row `b·N + m` is sample `b`,
/// modality `m`) → the modalities concatenated on channels in modality order: a reshape
/// (the reference's `view(N, C·ch, …)`).
///
/// # Shapes
/// - `x`: `[B·N, C, D, H, W]` → `[B, N·C, D, H, W]`
///
/// # Panics
/// If the batch is not a multiple of `n`.
pub fn fuse_modalities(x: Tensor<5>, n: usize) -> Tensor<5> {
    let [bn, c, d, h, w] = x.dims();
    assert!(
        n > 0 && bn % n == 0,
        "fuse_modalities: batch {bn} is not a multiple of {n} modalities"
    );
    x.reshape([bn / n, n * c, d, h, w])
}

/// Spatial sizes (D, H, W) must be multiples of these (four stride-2 stages in H and W, the
/// stem keeping D).
pub const SIZE_MULTIPLE: [usize; 3] = [16, 32, 32];

/// [`DualNet`] as an MCKD task: each modality (a 1-channel volume) through the shared encoder;
/// the four skips and the distilled bottleneck are the feature levels (the bottleneck is the
/// last, level 4); the decoder takes every level concatenated in modality order.
#[derive(Module, Debug)]
pub struct DualTask {
    net: DualNet,
    #[module(skip)]
    config: DualTaskShapes,
    #[module(skip)]
    modalities: mckd_core::ModalitySet,
    #[module(skip)]
    dice: crate::model::DiceReduction,
}

/// The shapes a [`DualTask`] un-flattens fused features to.
#[derive(Debug, Clone)]
pub struct DualTaskShapes {
    config: DualNetConfig,
    spatial: [usize; 3],
    shapes: DualShapes,
}

impl DualTask {
    /// A DualNet task for inputs of `spatial` (D, H, W), multiples of [`SIZE_MULTIPLE`].
    pub fn new(
        config: &DualNetConfig,
        spatial: [usize; 3],
        dice: crate::model::DiceReduction,
        device: &Device,
    ) -> Result<Self, DualNetError> {
        let shapes = config.shapes(1, spatial)?;
        Ok(Self {
            net: config.init(device),
            config: DualTaskShapes {
                config: config.clone(),
                spatial,
                shapes,
            },
            modalities: mckd_core::ModalitySet::new(mckd_volume::MODALITIES),
            dice,
        })
    }

    /// The same network for inputs of spatial size `dhw`.
    ///
    /// # Panics
    /// If `dhw` does not fit the network (checked by [`DualNetConfig::shapes`]).
    pub fn with_spatial(mut self, dhw: [usize; 3]) -> Self {
        self.config.shapes = self
            .config
            .config
            .shapes(1, dhw)
            .expect("a spatial size the DualNet takes");
        self.config.spatial = dhw;
        self
    }

    /// The network.
    pub fn net(&self) -> &DualNet {
        &self.net
    }
}

impl mckd_core::Task for DualTask {
    type Batch = crate::model::BratsBatch;
    type Output = Tensor<5>;

    fn modalities(&self) -> &mckd_core::ModalitySet {
        &self.modalities
    }

    /// # Shapes
    /// - `batch.images[modality]`: `[B, 1, D, H, W]`
    /// - output: 5 levels (4 skips, the bottleneck), each `[B, C·D·H·W]` of that level
    fn encode(
        &self,
        batch: &crate::model::BratsBatch,
        modality: usize,
        present: Tensor<1>,
    ) -> mckd_core::Encoded {
        let x = mckd_core::fusion::zero_missing(batch.images[modality].clone(), present);
        let f = self.net.encode(x);
        f.skips
            .into_iter()
            .chain(std::iter::once(f.bottleneck))
            .map(|t| t.flatten::<2>(1, 4))
            .collect::<Vec<_>>()
            .into()
    }

    fn bottleneck(&self) -> usize {
        4
    }

    fn decode(&self, fused: Vec<Tensor<2>>) -> Tensor<5> {
        let n = self.modalities.len();
        let s = &self.config.shapes;
        let mut levels: Vec<Tensor<5>> = fused
            .into_iter()
            .zip(s.skips.iter().chain(std::iter::once(&s.bottleneck)))
            .map(|(t, &[_, c, d, h, w])| {
                let b = t.dims()[0];
                t.reshape([b, n * c, d, h, w])
            })
            .collect();
        let bottleneck = levels.pop().expect("five levels");
        self.net.decode(levels, bottleneck)
    }

    fn loss(&self, output: Tensor<5>, batch: &crate::model::BratsBatch) -> Tensor<1> {
        let targets = batch
            .targets
            .clone()
            .expect("a training batch carries targets");
        crate::model::segmentation_loss(output, targets, self.dice)
    }

    fn batch_size(batch: &crate::model::BratsBatch) -> usize {
        batch.images[0].dims()[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
    use burn::tensor::{DType, Distribution};
    use std::time::Instant;

    fn random(shape: [usize; 5], seed: u64, device: &Device) -> Tensor<5> {
        device.seed(seed);
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    fn values(t: Tensor<5>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn full_width_parameter_count() {
        // By hand from the layer list (convs Cout·Cin·k³, no bias; IN 2·C):
        // stem: 343·64 + 128                                            =     22,080
        // Bottleneck(in, p, projection): in·p + 2p + 27p² + 2p + 4p² + 8p (+ in·4p + 8p)
        // layer1 (p 64):  148,736 (in 64, projection) + 2 × 144,128 (in 256)     =    436,992
        // layer2 (p 128): in 256: 32,768 + 256 + 442,368 + 256 + 65,536 + 1,024
        //                 + 131,072 + 1,024 = 674,304; 3 × (65,536 + 256 + 442,368 + 256
        //                 + 65,536 + 1,024 = 574,976) = 1,724,928            =  2,399,232
        // layer3 (p 256): in 512: 2,696,192; 5 × 2,296,064 = 11,480,320      = 14,176,256
        // layer4 (p 320): in 1024: 327,680 + 640 + 2,764,800 + 640 + 409,600 + 2,560
        //                 + 1,310,720 + 2,560 = 4,819,200; 2 × (409,600 + 640 + 2,764,800
        //                 + 640 + 409,600 + 2,560 = 3,587,840) = 7,175,680  = 11,994,880
        //   backbone = 22,080 + 436,992 + 2,399,232 + 14,176,256 + 11,994,880 = 29,029,440
        // reduce: 1280·256 + 512                                         =    328,192
        // ASPP: 1×1 65,536 + 512; 3 × (27·65,536 + 512) = 5,309,952; pool conv 65,536;
        //       project 5·65,536 + 512 = 328,192                          =  5,769,728
        // decoder (up Cin·Cout·8, skip 4·C_skip·C + 2C, basic 2·(27C² + 2C)):
        //   stage 3: 1024·256·8 = 2,097,152; 4096·256 + 512 = 1,049,088;
        //            2·(1,769,472 + 512) = 3,539,968                     =  6,686,208
        //   stage 2: 256·128·8 = 262,144; 2048·128 + 256 = 262,400;
        //            2·(442,368 + 256) = 885,248                          =  1,409,792
        //   stage 1: 128·64·8 = 65,536; 1024·64 + 128 = 65,664; 2·(110,592 + 128) = 221,440
        //                                                                 =    352,640
        //   stage 0: 64·32·8 = 16,384; 256·32 + 64 = 8,256; 2·(27,648 + 64) = 55,424
        //                                                                 =     80,064
        //   head: 32·3                                                    =         96
        //   + the pool branch's instance norm 2·256                       =        512
        // total = 29,029,440 + 328,192 + 5,769,728 + 512 + 8,528,800 = 43,656,672.
        let config = DualNetConfig::new();
        assert_eq!(config.parameter_count(), 43_656_672);
        assert_eq!(parameter_count(1.0), 43_656_672);
        assert_eq!(
            config
                .clone()
                .with_pool_branch_norm(false)
                .parameter_count(),
            43_656_160
        );
        // The built network has exactly these parameters (InstanceNorm has no buffers).
        let net = config.init(&Device::flex());
        assert_eq!(net.num_params(), 43_656_672);
    }

    #[test]
    fn parameter_count_matches_built_networks_at_small_widths() {
        let device = Device::flex();
        for (width, pool_norm, n) in [(0.125, false, 4), (1.0 / 16.0, true, 4), (0.3, false, 2)] {
            let config = DualNetConfig::new()
                .with_width(width)
                .with_pool_branch_norm(pool_norm)
                .with_modalities(n);
            let net = config.init(&device);
            assert_eq!(
                net.num_params(),
                config.parameter_count(),
                "width {width}, pool norm {pool_norm}, {n} modalities"
            );
        }
    }

    #[test]
    fn shapes_for_an_80x160x160_crop_at_full_width() {
        let s = DualNetConfig::new().shapes(2, [80, 160, 160]).unwrap();
        assert_eq!(
            s.skips,
            vec![
                [2, 64, 80, 80, 80],
                [2, 256, 40, 40, 40],
                [2, 512, 20, 20, 20],
                [2, 1024, 10, 10, 10],
            ]
        );
        assert_eq!(s.bottleneck, [2, 256, 5, 5, 5]);
        assert_eq!(s.logits, [2, 3, 80, 160, 160]);
        // D must be a multiple of 16, H and W of 32.
        for bad in [
            [72, 160, 160],
            [80, 144, 160],
            [80, 160, 176],
            [0, 160, 160],
        ] {
            assert!(
                matches!(
                    DualNetConfig::new().shapes(1, bad),
                    Err(DualNetError::Spatial { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(DualNetConfig::new().shapes(1, [16, 32, 32]).is_ok());
        assert_eq!(
            DualNetConfig::new().with_width(0.0).shapes(1, [16, 32, 32]),
            Err(DualNetError::Width(0.0))
        );
    }

    #[test]
    fn shapes_match_a_real_forward_at_tiny_width() {
        let config = DualNetConfig::new().with_width(1.0 / 16.0);
        let device = Device::flex();
        device.seed(1);
        let net = config.init(&device);
        let [b, d, h, w] = [2, 32, 32, 64];
        let want = config.shapes(b, [d, h, w]).unwrap();
        let f = net.encode(random([b, 1, d, h, w], 2, &device));
        let got: Vec<[usize; 5]> = f.skips.iter().map(|s| s.dims()).collect();
        assert_eq!(got, want.skips);
        assert_eq!(f.bottleneck.dims(), want.bottleneck);
        // Decode: the same features stand in for all 4 modalities.
        let four = |t: &Tensor<5>| Tensor::cat(vec![t.clone(); 4], 1);
        let logits = net.decode(f.skips.iter().map(four).collect(), four(&f.bottleneck));
        assert_eq!(logits.dims(), want.logits);
        assert!(values(logits).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn tiny_width_forward_on_an_80x160x160_crop() {
        // The real shapes of the paper's crop, at width 1/16 (stem 4 channels, bottleneck 16).
        let config = DualNetConfig::new().with_width(1.0 / 16.0);
        let device = Device::flex();
        device.seed(3);
        let net = config.init(&device);
        let want = config.shapes(1, [80, 160, 160]).unwrap();
        let f = net.encode(random([1, 1, 80, 160, 160], 4, &device));
        assert_eq!(f.bottleneck.dims(), [1, 16, 5, 5, 5]);
        assert_eq!(want.bottleneck, [1, 16, 5, 5, 5]);
        let got: Vec<[usize; 5]> = f.skips.iter().map(|s| s.dims()).collect();
        assert_eq!(got, want.skips);
        let four = |t: &Tensor<5>| Tensor::cat(vec![t.clone(); 4], 1);
        let logits = net.decode(f.skips.iter().map(four).collect(), four(&f.bottleneck));
        assert_eq!(logits.dims(), [1, 3, 80, 160, 160]);
    }

    #[test]
    fn forward_fuses_modalities_in_order() {
        // forward(x) = decode of the per-modality encodings concatenated in modality order.
        let config = DualNetConfig::new().with_width(1.0 / 16.0);
        let device = Device::flex();
        device.seed(5);
        let net = config.init(&device);
        let x = random([2, 4, 16, 32, 32], 6, &device);
        let per: Vec<DualFeatures> = (0..4)
            .map(|m| net.encode(x.clone().narrow(1, m, 1)))
            .collect();
        let cat =
            |f: &dyn Fn(&DualFeatures) -> Tensor<5>| Tensor::cat(per.iter().map(f).collect(), 1);
        let skips = (0..4).map(|l| cat(&|f| f.skips[l].clone())).collect();
        let want = values(net.decode(skips, cat(&|f| f.bottleneck.clone())));
        let got = values(net.forward(x));
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-4, "forward vs per-modality encode: {err}");
    }

    /// Every parameter's id, size and gradient norm.
    struct GradNorms<'a> {
        grads: &'a burn::tensor::Gradients,
        norms: Vec<(ParamId, usize, f64)>,
    }

    impl ModuleVisitor for GradNorms<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let n = param
                .val()
                .grad(self.grads)
                .map_or(0.0, |g| g.square().sum().into_scalar::<f64>().sqrt());
            self.norms
                .push((param.id, param.val().shape().num_elements(), n));
        }
    }

    #[test]
    fn forward_backward_at_tiny_width_reaches_every_parameter() {
        let device = Device::flex().autodiff();
        for pool_norm in [false, true] {
            device.seed(7);
            let config = DualNetConfig::new()
                .with_width(1.0 / 16.0)
                .with_pool_branch_norm(pool_norm);
            let net = config.init(&device);
            let x = random([1, 4, 32, 64, 64], 8, &device);
            let logits = net.forward(x);
            assert_eq!(logits.dims(), [1, 3, 32, 64, 64]);
            let g = random([1, 3, 32, 64, 64], 9, &device);
            let grads = (logits * g).sum().backward();
            let mut v = GradNorms {
                grads: &grads,
                norms: Vec::new(),
            };
            net.visit(&mut v);
            assert_eq!(
                v.norms.iter().map(|p| p.1).sum::<usize>(),
                config.parameter_count()
            );
            assert!(v.norms.iter().all(|p| p.2.is_finite()));
            // Every parameter gets a gradient but the ASPP pool branch's (conv, and norm γ, β
            // if any), which is 0 up to rounding: the projection's instance norm removes the
            // branch (module docs).
            let aspp = &net.encoder.aspp;
            let mut pool_ids = vec![aspp.pool_conv.weight.id];
            if let Some(norm) = &aspp.pool_norm {
                pool_ids.extend([&norm.gamma, &norm.beta].map(|p| p.as_ref().unwrap().id));
            }
            let largest = v.norms.iter().fold(0.0f64, |m, p| m.max(p.2));
            for &(id, _, norm) in &v.norms {
                if pool_ids.contains(&id) {
                    assert!(
                        norm <= 1e-6 * largest,
                        "pool branch gradient {norm} vs {largest}"
                    );
                } else {
                    assert!(
                        norm > 1e-6 * largest,
                        "parameter {id} got no gradient: {norm}"
                    );
                }
            }
        }
    }

    #[test]
    fn aspp_pool_branch_does_not_change_the_output() {
        let device = Device::flex();
        device.seed(17);
        let mut net = DualNetConfig::new()
            .with_width(1.0 / 16.0)
            .with_pool_branch_norm(false)
            .init(&device);
        let x = chacha([1, 4, 32, 64, 64], 18, &device);
        let before = values(net.forward(x.clone()));
        // Other pool-branch weights (scaled up, so the branch is far from negligible).
        let w = net.encoder.aspp.pool_conv.weight.val();
        net.encoder.aspp.pool_conv.weight =
            Param::from_tensor(chacha(w.dims(), 19, &device) * 10.0);
        let after = values(net.forward(x));
        let scale = before.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = before
            .iter()
            .zip(&after)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-5 * scale,
            "the pool branch changed the output by {diff}"
        );
        // …while the other ASPP branches do change it.
        let w = net.encoder.aspp.branch1.conv.weight.val();
        net.encoder.aspp.branch1.conv.weight = Param::from_tensor(chacha(w.dims(), 20, &device));
        let other = values(net.forward(chacha([1, 4, 32, 64, 64], 18, &device)));
        let diff = before
            .iter()
            .zip(&other)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff > 1e-3 * scale, "branch 1 did not change the output");
    }

    /// Casts every parameter to f64: the f64 network runs burn's generic ops (the
    /// `mckd_kernels` fast paths are f32-only), a reference for the f32 network's kernels.
    struct ToF64;

    impl ModuleMapper for ToF64 {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.map(|t| t.cast(DType::F64).detach().require_grad())
        }
    }

    /// Normal(0, 1) values from ChaCha8 (not burn's global generator, which tests running
    /// in parallel share).
    fn chacha<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
        use rand::SeedableRng;
        use rand::distr::Distribution as _;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let uniform = rand::distr::StandardUniform;
        let n = shape.iter().product();
        // Box–Muller from uniform pairs.
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2): (f64, f64) = (uniform.sample(&mut rng), uniform.sample(&mut rng));
                ((-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    /// Redraws every convolution weight as He-normal values from ChaCha8 (seeds `seed + 1`,
    /// `seed + 2`, … in visiting order), keeps the rest (the instance norms' constant γ = 1,
    /// β = 0), and casts all to `dtype`: a network that is the same whatever other tests drew
    /// from burn's shared generator meanwhile (tests run in parallel in one process).
    struct Redraw(u64, DType);

    impl ModuleMapper for Redraw {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.map(|t| {
                let dims = t.dims();
                let t = if D >= 2 {
                    self.0 += 1;
                    let fan_in: usize = dims[1..].iter().product();
                    chacha(dims, self.0, &t.device()) * (2.0 / fan_in as f64).sqrt()
                } else {
                    t
                };
                t.cast(self.1).detach().require_grad()
            })
        }
    }

    #[test]
    fn whole_network_input_gradient_matches_finite_differences() {
        // ⟨∇ₓL, v⟩ by autodiff vs (L(x + h·v) − L(x − h·v))/2h, L = Σ g ⊙ logits, on the f64
        // network: checks the wiring of the whole graph (skips, concatenations, the ASPP
        // broadcast, the final upsampling). A randomly initialised 50-layer network with
        // instance norms over few voxels is very curved (on one draw the derivative moved by
        // ~10 % over h = 1e-6), hence f64 and tiny steps.
        let ad = Device::flex().autodiff();
        let net = DualNetConfig::new()
            .with_width(1.0 / 16.0)
            .init(&ad)
            .map(&mut Redraw(100, DType::F64));
        let shape = [1, 4, 32, 64, 64];
        let f64_of = |t: Tensor<5>| t.cast(DType::F64);
        let x = f64_of(chacha(shape, 1, &ad)).require_grad();
        let g = f64_of(chacha([1, 3, 32, 64, 64], 2, &ad));
        let v = f64_of(chacha(shape, 3, &ad)).inner();
        let grads = (net.forward(x.clone()) * g.clone()).sum().backward();
        let analytic = (x.grad(&grads).unwrap() * v.clone())
            .sum()
            .into_scalar::<f64>();
        let inference = net.valid();
        let (x, g) = (x.inner(), g.inner());
        let loss = |x: Tensor<5>| {
            (inference.forward(x) * g.clone())
                .sum()
                .into_scalar::<f64>()
        };
        // A kink (a leaky ReLU at 0, a max-pool tie) within h of the path spoils one
        // difference quotient; with ~10⁷ units that happens at h ~ 1e-8. The median of three
        // small steps is robust to one such hit; at these steps rounding limits the
        // agreement to ~1e-4 (measured ≤ 1e-5 over seven draws of this network's weights; the
        // weights burn drew from its shared generator once gave 4e-4 under parallel tests,
        // hence the redrawn, fixed network).
        let mut fd: Vec<f64> = [1e-9, 3e-10, 1e-10]
            .iter()
            .map(|&h| {
                (loss(x.clone() + v.clone() * h) - loss(x.clone() - v.clone() * h)) / (2.0 * h)
            })
            .collect();
        fd.sort_by(f64::total_cmp);
        assert!(
            (fd[1] - analytic).abs() <= 3e-4 * analytic.abs(),
            "directional derivative: autodiff {analytic} vs finite differences {fd:?}"
        );
    }

    /// Every float parameter's values, in visiting order.
    struct Collect<'a>(Option<&'a burn::tensor::Gradients>, Vec<Vec<f64>>);

    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = match self.0 {
                Some(grads) => param.val().grad(grads).map(|g| g.cast(DType::F64)),
                None => Some(param.val().inner().cast(DType::F64)),
            };
            let v = t.map_or(Vec::new(), |t| t.into_data().try_to_vec::<f64>().unwrap());
            self.1.push(v);
        }
    }

    fn max_abs(a: &[f64]) -> f64 {
        a.iter().fold(0.0f64, |m, v| m.max(v.abs()))
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
    }

    /// `max |a − b| / max |b|`.
    fn max_rel(a: &[f64], b: &[f64]) -> f64 {
        max_abs_diff(a, b) / max_abs(b).max(1e-300)
    }

    /// `‖a − b‖₂ / ‖b‖₂`.
    fn l2_rel(a: &[f64], b: &[f64]) -> f64 {
        let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
        (d / b.iter().map(|y| y * y).sum::<f64>().max(1e-300)).sqrt()
    }

    /// Output, input gradient and parameter gradients of `Σ g ⊙ f(m, x)` for the f32 module
    /// and its f64 copy. Outputs must agree to 1e-4 of their largest entry; gradients to
    /// `grad_max` of their largest entry and to `l2_max` in relative L2 norm. A parameter
    /// gradient is compared against at least 1e-2 of the module's largest: some are 0 in f64
    /// and rounding noise in f32 (the inert pool branch; with slope 1, a β whose
    /// per-channel constant the next 1×1 conv + instance norm removes).
    fn f32_matches_f64<M: Module + Clone>(
        what: &str,
        m: &M,
        x: Tensor<5>,
        f: &dyn Fn(&M, Tensor<5>) -> Tensor<5>,
        (grad_max, l2_max): (f64, f64),
    ) {
        let run = |m: &M, x: Tensor<5>, dtype: DType| {
            let x = x.cast(dtype).require_grad();
            let y = f(m, x.clone());
            let g = chacha(y.dims(), 7, &y.device()).cast(dtype);
            let grads = (y.clone() * g).sum().backward();
            let mut params = Collect(Some(&grads), Vec::new());
            m.visit(&mut params);
            let dx = x.grad(&grads).unwrap().cast(DType::F64);
            let y = y
                .inner()
                .cast(DType::F64)
                .into_data()
                .try_to_vec::<f64>()
                .unwrap();
            (y, dx.into_data().try_to_vec::<f64>().unwrap(), params.1)
        };
        let (y32, dx32, p32) = run(m, x.clone(), DType::F32);
        let (y64, dx64, p64) = run(&m.clone().map(&mut ToF64), x, DType::F64);
        let e = max_rel(&y32, &y64);
        assert!(e <= 1e-4, "{what}: output differs by {e:e}");
        let (e, l2) = (max_rel(&dx32, &dx64), l2_rel(&dx32, &dx64));
        assert!(
            e <= grad_max && l2 <= l2_max,
            "{what}: input gradient differs by {e:e} (L2 {l2:e})"
        );
        assert_eq!(p32.len(), p64.len());
        let largest = p64.iter().map(|v| max_abs(v)).fold(0.0f64, f64::max);
        for (i, (a, b)) in p32.iter().zip(&p64).enumerate() {
            assert!(!a.is_empty(), "{what}: parameter {i} got no gradient");
            let e = max_abs_diff(a, b) / max_abs(b).max(1e-2 * largest);
            let l2 = if max_abs(b) > 1e-2 * largest {
                l2_rel(a, b)
            } else {
                0.0
            };
            assert!(
                e <= grad_max && l2 <= l2_max,
                "{what}: parameter {i} gradient differs by {e:e} (L2 {l2:e})"
            );
        }
    }

    #[test]
    fn every_layer_f32_kernels_match_the_f64_reference() {
        // Layer by layer, on the activations of a real forward pass, the f32 network (GEMM
        // convolutions, fused instance norm + leaky ReLU, the transposed-conv GEMM) against
        // its f64 copy (burn's generic ops, whose wiring the finite-difference test checks).
        // Layer by layer, because errors of ~1e-7 grow with depth in a network this curved.
        // With slope 1 the network is smooth and everything must agree to 1e-4. With the
        // real slope 0.01, a pre-activation within rounding of 0 can take the other slope in
        // f32 than in f64 (a handful of ~10⁶ units), which moves a few gradient entries by
        // percents: there only the outputs are compared entry by entry, the gradients in L2
        // to 5 %. Measured with the scalar kernels: the decoder's parameter gradients differ by
        // 0.2–0.6 % in L2, a last-stage γ of 2 entries (gradient 60× smaller than the
        // largest) by 2.3 %; a wrong slope in a backward scales the gradient through about
        // half the units by 100.
        for (slope, tol) in [(1.0, (1e-4, 1e-2)), (0.01, (f64::INFINITY, 5e-2))] {
            let ad = Device::flex().autodiff();
            let config = DualNetConfig::new()
                .with_width(1.0 / 16.0)
                .with_negative_slope(slope);
            let net = config.init(&ad).map(&mut Redraw(200, DType::F32));
            let e = &net.encoder;
            let x = chacha([2, 1, 32, 64, 64], 32, &ad);
            let stem = |m: &ConvNorm, x| m.forward(x, &act(slope));
            f32_matches_f64("stem", &e.stem, x.clone(), &stem, tol);
            let s0 = e.stem.forward(x.clone(), &e.act);
            let mut h = max_pool3d(s0, [3; 3], [2; 3], [1; 3]).detach();
            let layers = [&e.layer1, &e.layer2, &e.layer3, &e.layer4];
            for (l, layer) in layers.into_iter().enumerate() {
                for (i, block) in layer.iter().enumerate() {
                    let what = format!("slope {slope}: layer{} block {i}", l + 1);
                    f32_matches_f64(&what, block, h.clone(), &|m, x| m.forward(x), tol);
                    h = block.forward(h).detach();
                }
            }
            f32_matches_f64("reduce", &e.reduce, h.clone(), &stem, tol);
            let r = e.reduce.forward(h, &e.act).detach();
            f32_matches_f64("aspp", &e.aspp, r, &|m, x| m.forward(x), tol);
            // The decoder as a whole (four stages, much less curved than the encoder), on
            // the encoder's skips (one modality standing in for all four).
            let skips: Vec<Tensor<5>> = net
                .encode(x)
                .skips
                .into_iter()
                .map(|s| Tensor::cat(vec![s; 4], 1).detach())
                .collect();
            let b = chacha([2, 4 * net.widths.bottleneck, 2, 2, 2], 33, &ad);
            let dec = |m: &DualDecoder, x: Tensor<5>| {
                let dtype = x.dtype();
                m.forward(skips.iter().map(|s| s.clone().cast(dtype)).collect(), x)
            };
            f32_matches_f64("decoder", &net.decoder, b, &dec, tol);
        }
    }

    #[test]
    fn forward_is_deterministic() {
        // The same network on the same input twice gives the same bits (the kernels' sums
        // run in a fixed order whatever the thread count).
        let device = Device::flex();
        device.seed(21);
        let net = DualNetConfig::new().with_width(1.0 / 16.0).init(&device);
        let x = chacha([1, 4, 16, 32, 32], 22, &device);
        assert_eq!(values(net.forward(x.clone())), values(net.forward(x)));
    }

    /// Peak resident memory of this process (Linux `VmHWM`), in MiB.
    fn peak_rss_mib() -> Option<f64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    #[test]
    #[ignore = "timing; run alone: cargo test --release -p mckd-brats dualnet_timing -- --ignored --nocapture"]
    fn dualnet_timing() {
        let device = Device::flex().autodiff();
        device.seed(0);
        let config = DualNetConfig::new().with_width(0.125);
        let net = config.init(&device);
        println!("width 1/8: {} parameters", config.parameter_count());
        let x = random([1, 4, 32, 64, 64], 1, &device);
        let g = random([1, 3, 32, 64, 64], 2, &device);
        let step = |x: &Tensor<5>, g: &Tensor<5>, what: &str| {
            let t = Instant::now();
            let logits = net.forward(x.clone());
            let loss = (logits * g.clone()).sum();
            let t_fwd = t.elapsed();
            let grads = loss.backward();
            let t_all = t.elapsed();
            drop(grads);
            println!(
                "{what}: forward {:.0} ms, forward + backward {:.0} ms, peak RSS so far {:.0} MiB",
                t_fwd.as_secs_f64() * 1e3,
                t_all.as_secs_f64() * 1e3,
                peak_rss_mib().unwrap_or(f64::NAN)
            );
        };
        for rep in 0..3 {
            step(&x, &g, &format!("[1, 4, 32, 64, 64] rep {rep}"));
        }
        // The paper's crop at the same width, once.
        let x = random([1, 4, 80, 160, 160], 3, &device);
        let g = random([1, 3, 80, 160, 160], 4, &device);
        step(&x, &g, "[1, 4, 80, 160, 160]");
    }

    /// Crops of the width-1/16 test task: a bottleneck of 2³ voxels (at 1³ the instance
    /// norms make it constant).
    const TINY_SPATIAL: [usize; 3] = [32, 64, 64];

    /// The DualNet task at width 1/16 on [`TINY_SPATIAL`] crops, per-sample Dice.
    fn tiny_task(device: &Device) -> DualTask {
        DualTask::new(
            &DualNetConfig::new().with_width(1.0 / 16.0),
            TINY_SPATIAL,
            crate::model::DiceReduction::PerSample,
            device,
        )
        .unwrap()
    }

    /// The DualNet as an MCKD task (`--arch dual_net`): an inner step with a missing modality
    /// and a meta step at tiny width, and the fused decode equals the plain forward when every
    /// modality is present (imputation is then the identity).
    #[test]
    fn dualnet_trains_as_an_mckd_task() {
        use mckd_core::{Levels, Mckd, MckdConfig, MckdModel, Method, Normalisation, mask_tensor};
        let device = Device::flex().autodiff();
        device.seed(2);
        let task = tiny_task(&device);
        let images: Vec<Tensor<5>> = (0..4)
            .map(|_| {
                Tensor::random(
                    [1, 1, 32, 64, 64],
                    burn::tensor::Distribution::Normal(0.0, 1.0),
                    &device,
                )
            })
            .collect();
        let targets = Tensor::random(
            [1, 3, 32, 64, 64],
            burn::tensor::Distribution::Bernoulli(0.3),
            &device,
        );
        let batch = crate::model::BratsBatch {
            images: images.clone(),
            targets: Some(targets),
        };
        let model = MckdModel::new(task, Normalisation::Softmax, 0, &device);
        // Every modality present: MCKD's forward is the reference's plain forward.
        let all = mask_tensor(&[vec![true; 4]], &device);
        let fused = model.valid().forward(
            &crate::model::BratsBatch {
                images: images.iter().map(|t| t.clone().inner()).collect(),
                targets: None,
            },
            &all.clone().inner(),
            Levels::Bottleneck,
        );
        let x = Tensor::cat(images.iter().map(|t| t.clone().inner()).collect(), 1);
        let plain = model.task.valid().net().forward(x);
        let (a, b) = (mckd_train_values(fused.output), mckd_train_values(plain));
        let dev = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(dev < 1e-5, "fused vs plain forward: {dev}");
        let mut m = Mckd::new(
            model,
            MckdConfig::default(),
            burn::optim::SgdConfig::new().init(),
        );
        // Every modality present, as in stage 1 (missing ones:
        // `a_missing_modality_trains_once_all_modalities_have_been_seen`).
        let terms = m.train_step(&batch, &all, 1e-3);
        assert!(
            terms.iter().all(|v| v.is_finite()) && terms[1] > 0.0,
            "{terms:?}"
        );
        let before = m.model().iwv.raw_values();
        assert!(m.meta_step(&batch).is_finite());
        assert_ne!(m.model().iwv.raw_values(), before);
    }

    /// Every float parameter's values, in visiting order.
    fn params_of<M: Module>(m: &M) -> Vec<Vec<f64>> {
        let mut c = Collect(None, Vec::new());
        m.visit(&mut c);
        c.1
    }

    #[test]
    fn a_missing_modality_trains_once_all_modalities_have_been_seen() {
        // A missing modality's zeroed volume stays exactly 0 through the freshly initialised
        // encoder (bias-free convolutions, β = 0), so every instance norm on it sees a
        // zero-variance plane and multiplies the gradient by γ/√ε ≈ 316. The gradient does
        // reach that pass: the missing modality's skips go to the decoder as encoded (only
        // the bottleneck is imputed). Measured at this size: 36 of 221 parameter gradients
        // non-finite at β = 0 (PyTorch's leaky ReLU rule; burn's overflows sooner), none with
        // every β drawn from N(0, 1e-3), N(0, 1e-2) (largest norm 21 and 17). The reference
        // trains all modalities first (stage 1), which moves β off 0; `config::validate`
        // requires that stage for the DualNet. Here: one all-modality step, then steps with
        // T1c missing in one sample and only T1 + T1c in the other, at width 1/16.
        use mckd_core::{
            Levels, Mckd, MckdConfig, MckdModel, Method, Normalisation, Task, mask_tensor,
        };
        let device = Device::flex().autodiff();
        device.seed(41);
        let task = tiny_task(&device);
        let batch = crate::model::BratsBatch {
            images: (0..4)
                .map(|m| chacha([2, 1, 32, 64, 64], 50 + m, &device))
                .collect(),
            targets: Some(
                chacha([2, 3, 32, 64, 64], 60, &device)
                    .greater_elem(0.5)
                    .float(),
            ),
        };
        let missing = mask_tensor(
            &[
                vec![true, true, false, true],
                vec![false, true, true, false],
            ],
            &device,
        );
        let all = mask_tensor(&[vec![true; 4], vec![true; 4]], &device);
        let model = MckdModel::new(task, Normalisation::Softmax, 0, &device);
        let non_finite_grads = |model: &MckdModel<DualTask>| {
            let fwd = model.forward(&batch, &missing, Levels::Bottleneck);
            let grads = model.task.loss(fwd.output, &batch).backward();
            let mut norms = GradNorms {
                grads: &grads,
                norms: Vec::new(),
            };
            model.task.visit(&mut norms);
            assert!(norms.norms.iter().any(|p| p.2.is_finite() && p.2 > 0.0));
            norms.norms.iter().filter(|p| !p.2.is_finite()).count()
        };
        // At initialisation: the overflow the stage-1 requirement avoids.
        assert!(non_finite_grads(&model) > 0);

        // Stage 1: one step with every modality (the reference's lr).
        let mut m = Mckd::new(
            model,
            MckdConfig::default(),
            burn::optim::SgdConfig::new().init(),
        );
        let terms = m.train_step(&batch, &all, 1e-2);
        assert!(terms.iter().all(|v| v.is_finite()), "{terms:?}");
        assert_eq!(non_finite_grads(m.model()), 0);

        // Stage 2: inner steps (task loss + α·CKD, SGD) and a meta step with missing ones.
        let before = params_of(&m.model().task);
        let terms = m.train_step(&batch, &missing, 1e-2);
        assert!(
            terms.iter().all(|v| v.is_finite()) && terms[1] > 0.0,
            "{terms:?}"
        );
        let after = params_of(&m.model().task);
        for (i, p) in after.iter().enumerate() {
            assert!(p.iter().all(|v| v.is_finite()), "parameter {i} not finite");
        }
        let moved = after.iter().zip(&before).filter(|(a, b)| a != b).count();
        // All but the inert ASPP pool branch (conv, γ, β; module docs) move.
        assert!(moved + 3 >= after.len(), "{moved} of {} moved", after.len());
        let iwv = m.model().iwv.raw_values();
        assert!(m.meta_step(&batch).is_finite());
        let iwv_after = m.model().iwv.raw_values();
        assert!(iwv_after.iter().all(|v| v.is_finite()) && iwv_after != iwv);
        let terms = m.train_step(&batch, &missing, 1e-2);
        assert!(terms.iter().all(|v| v.is_finite()), "{terms:?}");
        assert!(
            params_of(&m.model().task)
                .iter()
                .all(|p| p.iter().all(|v| v.is_finite()))
        );
    }

    #[test]
    fn a_dualnet_run_must_start_with_all_modalities() {
        use crate::config::{Method, Preset, preset, validate};
        use mckd_train::config::Budget;
        let mut cfg = preset(Preset::Reference, Method::Mckd, "data".into(), 0);
        cfg.task.arch = crate::config::Arch::DualNet { width: 1.0 / 16.0 };
        cfg.task.crop = cfg.task.arch.size_multiple_ijk().map(|m| 2 * m);
        cfg.loop_.budget = Budget::Iterations(100);
        validate(&cfg).unwrap();
        for (fraction, iterations) in [(0.0, 100), (0.005, 100)] {
            cfg.loop_.full_fraction = fraction;
            cfg.loop_.budget = Budget::Iterations(iterations);
            let err = validate(&cfg).unwrap_err().to_string();
            assert!(
                err.contains("full_fraction") && err.contains("no all-modality iteration"),
                "{err}"
            );
        }
        // 0.5 % of 1,000 iterations is 5 all-modality iterations: enough.
        cfg.loop_.budget = Budget::Iterations(1000);
        validate(&cfg).unwrap();
        // The UNet has biases and no such constraint.
        cfg.task.arch = crate::config::Arch::Unet { base: 4 };
        cfg.task.crop = [16; 3];
        cfg.loop_.full_fraction = 0.0;
        validate(&cfg).unwrap();
    }

    fn mckd_train_values(t: Tensor<5>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }
}
