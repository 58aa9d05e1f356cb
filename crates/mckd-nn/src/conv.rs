//! Weight-standardised 3-D convolution (Qiao et al. 2019), as `Conv3d_wd` of the ShaSpec /
//! MCKD code base (`DualNet.py`, `Res50.py`): before every convolution, each output channel's
//! weights are standardised over their `Cin·kd·kh·kw` entries,
//!
//! ```text
//! ŵ = (w − mean(w)) / √(var(w) + ε),   var = Σ(w − mean)² / (n − 1)   (unbiased, torch.var),
//! ```
//!
//! with ε = 1e-12 inside the square root, no bias. The standardisation is part of the
//! autodiff graph, so the gradient reaches the raw weights through it (differentiable and
//! cheap: one pass over the weights).
//!
//! The convolution itself runs through `mckd_kernels`' GEMM kernels on flex (`conv3d_1x1` for
//! 1×1×1 stride-1 layers, the im2col GEMM `conv3d` for other dilation-1 layers) and through
//! burn's `conv3d` for dilated layers (ASPP), which `mckd_kernels` does not cover.

use burn::module::Param;
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::module::conv3d;
use burn::tensor::ops::ConvOptions;

/// Standardises each output channel's weights: `(w − mean)/√(var_unbiased + ε)` over the
/// `Cin·kd·kh·kw` entries of the channel.
///
/// # Shapes
/// - `weight`: `[Cout, Cin, kd, kh, kw]` → the same
///
/// # Panics
/// If a channel has fewer than 2 entries (`Cin·kd·kh·kw < 2`): the unbiased variance is then
/// undefined (PyTorch returns NaN).
pub fn standardize_weight(weight: Tensor<5>, epsilon: f64) -> Tensor<5> {
    let dims = weight.dims();
    let [co, ci, kd, kh, kw] = dims;
    let n = ci * kd * kh * kw;
    assert!(
        n >= 2,
        "standardize_weight: each output channel needs ≥ 2 weights, got {dims:?}"
    );
    let w = weight.reshape([co, n]);
    let centred = w.clone() - w.mean_dim(1);
    let var = centred.clone().square().sum_dim(1) / (n - 1) as f64; // [Cout, 1]
    (centred / (var + epsilon).sqrt()).reshape(dims)
}

/// A bias-free convolution with standardised weights (see the module docs).
///
/// # Shapes
/// - `x`: `[B, Cin, D, H, W]`, `weight`: `[Cout, Cin, kd, kh, kw]`
/// - output: `[B, Cout, D', H', W']`, `D' = ⌊(D + 2p − dil·(k − 1) − 1)/s⌋ + 1` per axis
///
/// # Panics
/// As [`standardize_weight`], or if the shapes do not fit together or the padded input is
/// smaller than the dilated kernel (internal contracts of the calling layer).
pub fn ws_conv3d(
    x: Tensor<5>,
    weight: Tensor<5>,
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
    epsilon: f64,
) -> Tensor<5> {
    let w = standardize_weight(weight, epsilon);
    let [co, _, kd, kh, kw] = w.dims();
    if dilation != [1, 1, 1] {
        return conv3d(x, w, None, ConvOptions::new(stride, padding, dilation, 1));
    }
    if [kd, kh, kw] == [1, 1, 1] && stride == [1, 1, 1] && padding == [0, 0, 0] {
        return mckd_kernels::conv3d_1x1(x, w, None);
    }
    // mckd_kernels' GEMM convolution always adds a bias: a zero one (not tracked by autodiff).
    let zeros = Tensor::zeros([co], (&w.device(), w.dtype()));
    mckd_kernels::conv3d::conv3d(x, w, zeros, stride, padding)
}

/// Configuration of [`WsConv3d`].
#[derive(Config, Debug)]
pub struct WsConv3dConfig {
    /// `[Cin, Cout]`.
    pub channels: [usize; 2],
    /// `[kd, kh, kw]`.
    pub kernel_size: [usize; 3],
    /// Stride per axis.
    #[config(default = "[1, 1, 1]")]
    pub stride: [usize; 3],
    /// Symmetric zero padding per axis.
    #[config(default = "[0, 0, 0]")]
    pub padding: [usize; 3],
    /// Dilation per axis (ASPP's 2, 4, 8).
    #[config(default = "[1, 1, 1]")]
    pub dilation: [usize; 3],
    /// ε inside the square root of the standardisation (the reference's 1e-12).
    #[config(default = 1e-12)]
    pub epsilon: f64,
    /// Initial weights. Default: the reference's `kaiming_normal_(mode='fan_out')`, i.e. a
    /// normal with std `√2/√(Cout·kd·kh·kw)`.
    #[config(
        default = "Initializer::KaimingNormal { gain: std::f64::consts::SQRT_2, fan_out_only: true }"
    )]
    pub initializer: Initializer,
}

/// Weight-standardised, bias-free 3-D convolution (see the module docs).
#[derive(Module, Debug)]
pub struct WsConv3d {
    /// Raw weights `[Cout, Cin, kd, kh, kw]` (standardised in every forward pass).
    pub weight: Param<Tensor<5>>,
    /// Stride per axis.
    #[module(skip)]
    pub stride: [usize; 3],
    /// Symmetric zero padding per axis.
    #[module(skip)]
    pub padding: [usize; 3],
    /// Dilation per axis.
    #[module(skip)]
    pub dilation: [usize; 3],
    /// ε of the standardisation.
    #[module(skip)]
    pub epsilon: f64,
}

impl WsConv3dConfig {
    /// Builds the layer on `device` (seed the device first for a reproducible init).
    ///
    /// # Panics
    /// If a size, stride or dilation is 0, or a channel would have fewer than 2 weights
    /// (`Cin·kd·kh·kw < 2`, see [`standardize_weight`]).
    pub fn init(&self, device: &Device) -> WsConv3d {
        let [ci, co] = self.channels;
        let k = self.kernel_size;
        assert!(
            ci > 0 && co > 0 && k.iter().all(|&v| v > 0),
            "WsConv3d: channels {:?} and kernel {k:?} must be positive",
            self.channels
        );
        assert!(
            self.stride.iter().chain(&self.dilation).all(|&v| v > 0),
            "WsConv3d: stride {:?} and dilation {:?} must be positive",
            self.stride,
            self.dilation
        );
        let n = ci * k.iter().product::<usize>();
        assert!(
            n >= 2,
            "WsConv3d: each output channel needs ≥ 2 weights (Cin·k³ = {n})"
        );
        let fan_out = co * k.iter().product::<usize>();
        WsConv3d {
            weight: self.initializer.init_with(
                [co, ci, k[0], k[1], k[2]],
                Some(n),
                Some(fan_out),
                device,
            ),
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            epsilon: self.epsilon,
        }
    }
}

impl WsConv3d {
    /// # Shapes
    /// - `x`: `[B, Cin, D, H, W]` → `[B, Cout, D', H', W']` (see [`ws_conv3d`])
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        ws_conv3d(
            x,
            self.weight.val(),
            self.stride,
            self.padding,
            self.dilation,
            self.epsilon,
        )
    }

    /// The standardised weights the forward pass uses.
    pub fn standardized_weight(&self) -> Tensor<5> {
        standardize_weight(self.weight.val(), self.epsilon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Grid, ad, assert_close, finite_differences, values};

    /// Brute-force weight standardisation + direct convolution, in f64.
    fn ws_conv_ref(
        x: &Grid,
        w: &Grid,
        s: [usize; 3],
        p: [usize; 3],
        dil: [usize; 3],
        eps: f64,
    ) -> Grid {
        let [b, ci, d, h, wd] = x.dims;
        let [co, wci, k0, k1, k2] = w.dims;
        assert_eq!(ci, wci);
        let n = ci * k0 * k1 * k2;
        // Standardise each output channel's n weights (unbiased variance, as torch.var).
        let mut ws = w.clone();
        for o in 0..co {
            let ch = &w.data[o * n..(o + 1) * n];
            let mean = ch.iter().sum::<f64>() / n as f64;
            let var = ch.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            for (dst, &v) in ws.data[o * n..(o + 1) * n].iter_mut().zip(ch) {
                *dst = (v - mean) / (var + eps).sqrt();
            }
        }
        let out =
            |len: usize, a: usize, k: usize| (len + 2 * p[a] - dil[a] * (k - 1) - 1) / s[a] + 1;
        let mut y = Grid::zeros([b, co, out(d, 0, k0), out(h, 1, k1), out(wd, 2, k2)]);
        for bi in 0..b {
            for o in 0..co {
                for zd in 0..y.dims[2] {
                    for zh in 0..y.dims[3] {
                        for zw in 0..y.dims[4] {
                            let mut acc = 0.0;
                            for c in 0..ci {
                                for i in 0..k0 {
                                    for j in 0..k1 {
                                        for l in 0..k2 {
                                            let id =
                                                (zd * s[0] + i * dil[0]) as isize - p[0] as isize;
                                            let ih =
                                                (zh * s[1] + j * dil[1]) as isize - p[1] as isize;
                                            let iw =
                                                (zw * s[2] + l * dil[2]) as isize - p[2] as isize;
                                            if (0..d as isize).contains(&id)
                                                && (0..h as isize).contains(&ih)
                                                && (0..wd as isize).contains(&iw)
                                            {
                                                acc += ws.at(o, c, i, j, l)
                                                    * x.at(
                                                        bi,
                                                        c,
                                                        id as usize,
                                                        ih as usize,
                                                        iw as usize,
                                                    );
                                            }
                                        }
                                    }
                                }
                            }
                            let oi = y.idx(bi, o, zd, zh, zw);
                            y.data[oi] = acc;
                        }
                    }
                }
            }
        }
        y
    }

    /// Values and gradients (x and raw weights) of one layer against the reference.
    fn check(
        x_dims: [usize; 5],
        cout: usize,
        k: [usize; 3],
        s: [usize; 3],
        p: [usize; 3],
        dil: [usize; 3],
        seed: u64,
    ) {
        let device = ad();
        device.seed(seed);
        let layer = WsConv3dConfig::new([x_dims[1], cout], k)
            .with_stride(s)
            .with_padding(p)
            .with_dilation(dil)
            .init(&device);
        let w = Grid {
            dims: layer.weight.dims(),
            data: values(&layer.weight.val()),
        };
        let x = Grid::random(x_dims, seed);
        let eps = layer.epsilon;
        let want = ws_conv_ref(&x, &w, s, p, dil, eps);
        let xt = x.tensor(&device).require_grad();
        let y = layer.forward(xt.clone());
        let what = format!("ws_conv3d x{x_dims:?} cout {cout} k{k:?} s{s:?} p{p:?} dil{dil:?}");
        assert_eq!(y.dims(), want.dims, "{what}: shape");
        assert_close(&values(&y), &want.data, 1e-5, &what);

        let g = Grid::random(want.dims, seed + 1);
        let grads = (y * g.tensor(&device)).sum().backward();
        let loss = |x: &Grid, w: &Grid| ws_conv_ref(x, w, s, p, dil, eps).dot(&g);
        let fd_x = finite_differences(&x.data, 1e-5, |v| {
            loss(
                &Grid {
                    dims: x.dims,
                    data: v.to_vec(),
                },
                &w,
            )
        });
        let fd_w = finite_differences(&w.data, 1e-5, |v| {
            loss(
                &x,
                &Grid {
                    dims: w.dims,
                    data: v.to_vec(),
                },
            )
        });
        let gx = values(&xt.grad(&grads).expect("x gradient"));
        let gw = values(&layer.weight.val().grad(&grads).expect("weight gradient"));
        assert_close(&gx, &fd_x, 1e-4, &format!("{what} dx"));
        assert_close(&gw, &fd_w, 1e-4, &format!("{what} dweight"));
    }

    #[test]
    fn ws_conv3d_matches_brute_force_values_and_finite_difference_gradients() {
        // DualNet's forms at small size: 3³ padding 1 (stride 1 and 2), the stem's
        // anisotropic stride (1, 2, 2) (a 3³ kernel here to keep the check small), 1×1×1
        // stride 1 (the GEMM path) and stride 2 (downsample), ASPP's dilated 3³.
        check(
            [2, 3, 5, 6, 7],
            4,
            [3, 3, 3],
            [1, 1, 1],
            [1, 1, 1],
            [1, 1, 1],
            1,
        );
        check(
            [2, 2, 5, 7, 6],
            3,
            [3, 3, 3],
            [2, 2, 2],
            [1, 1, 1],
            [1, 1, 1],
            2,
        );
        check(
            [2, 2, 5, 6, 7],
            3,
            [3, 3, 3],
            [1, 2, 2],
            [1, 1, 1],
            [1, 1, 1],
            3,
        );
        check(
            [2, 3, 3, 4, 5],
            4,
            [1, 1, 1],
            [1, 1, 1],
            [0, 0, 0],
            [1, 1, 1],
            4,
        );
        check(
            [2, 3, 5, 4, 7],
            2,
            [1, 1, 1],
            [2, 2, 2],
            [0, 0, 0],
            [1, 1, 1],
            5,
        );
        check(
            [2, 2, 5, 6, 7],
            3,
            [3, 3, 3],
            [1, 1, 1],
            [2, 2, 2],
            [2, 2, 2],
            6,
        );
    }

    #[test]
    fn standardized_weight_has_zero_mean_and_unit_unbiased_variance() {
        // w = [1, 2, 3, 4] for one channel: mean 2.5, unbiased var = (2.25+0.25+0.25+2.25)/3
        // = 5/3, so ŵ = (w − 2.5)/√(5/3) = [−1.1619, −0.3873, 0.3873, 1.1619].
        let device = Device::flex();
        let w = Tensor::<5>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 4, 1, 1, 1]),
            &device,
        );
        let got = values(&standardize_weight(w, 1e-12));
        let s = (5.0f64 / 3.0).sqrt();
        assert_close(
            &got,
            &[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s],
            1e-6,
            "standardised",
        );
    }

    #[test]
    fn default_init_is_kaiming_normal_fan_out() {
        // std √2/√(Cout·k³) = √2/√(64·27) ≈ 0.0340 for a 32 → 64 3³ layer; 55,296 draws give
        // the sample std to within ~1 %.
        let device = Device::flex();
        device.seed(0);
        let layer = WsConv3dConfig::new([32, 64], [3, 3, 3]).init(&device);
        let v = values(&layer.weight.val());
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        let want = 2f64.sqrt() / (64.0f64 * 27.0).sqrt();
        assert!((std / want - 1.0).abs() < 0.02, "std {std} vs {want}");
        assert!(mean.abs() < 0.01 * want * 10.0, "mean {mean}");
    }
}
