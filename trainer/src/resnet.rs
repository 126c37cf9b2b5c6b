//! CLIP's ResNet image tower (open_clip's `ModifiedResNet`): a three-convolution stem with an
//! average pool, bottleneck stages whose strided steps average-pool instead of striding (the
//! paper's anti-aliasing), and attention pooling in place of the global average pool. Parameters
//! carry open_clip's `visual.*` names, so its state dict loads them.
//!
//! Activations are NHWC, kept as `(b·h·w, C)` rows (`Grid`) so no reshape sits between layers.
//! Convolutions are `fused::im2col` and one matrix product, so the
//! arithmetic is a GEMM both ways on every device and in bf16; candle's own CPU
//! `conv_transpose2d` (its convolution's backward) is a direct loop without a matrix kernel.
//! Training-mode BatchNorm (with the ReLU after it) is `fused::batch_norm`, pooling
//! `fused::avg_pool`.

use crate::config::{ClipConfig, VisionLayers, RESNET_REDUCTION};
use crate::fused;
use crate::model::{cast, Linear, ParamBuilder};
use candle_core::{DType, Tensor, Var, D};

type CResult<T> = candle_core::Result<T>;

/// Whether BatchNorm normalises with the batch's statistics (training) or the running ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Inference: running statistics; one image's features never depend on its batch mates.
    Eval,
    /// Training: batch statistics. `update_stats` folds them into the running ones; off for
    /// the recomputed pass of gradient accumulation, so each micro-batch counts once.
    Train {
        /// Fold this batch's statistics into the running ones.
        update_stats: bool,
    },
}

/// BatchNorm's epsilon and running-average momentum (PyTorch's defaults, which CLIP used).
const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// A bias-free square convolution on NHWC activations with PyTorch's `(out, in, k, k)` weight.
struct Conv {
    w: Tensor,
    k: usize,
    stride: usize,
}

impl Conv {
    fn build(
        pb: &mut ParamBuilder,
        name: &str,
        out: usize,
        inp: usize,
        k: usize,
        stride: usize,
    ) -> CResult<Conv> {
        // PyTorch's default (Kaiming-uniform with a = √5) has this standard deviation.
        let std = ((3 * inp * k * k) as f64).powf(-0.5);
        Ok(Conv {
            w: pb.randn(&format!("{name}.weight"), &[out, inp, k, k], std)?,
            k,
            stride,
        })
    }

    /// Zero padding `k / 2` on each side, so a stride-1 convolution keeps the size.
    fn forward(&self, x: &Grid) -> CResult<Grid> {
        let c = x.rows.dim(1)?;
        let out = self.w.dim(0)?;
        let (k, s) = (self.k, self.stride);
        let cols = match k == 1 && s == 1 {
            true => x.rows.clone(),
            false => fused::im2col(&x.rows, x.shape(), k, s)?,
        };
        // Column order (ky, kx, in) matches the weight permuted to (out, ky, kx, in).
        let w = self
            .w
            .permute((0, 2, 3, 1))?
            .reshape((out, k * k * c))?
            .t()?;
        let side = |n: usize| (n + 2 * (k / 2) - k) / s + 1;
        Ok(Grid {
            rows: cols.matmul(&w)?,
            b: x.b,
            h: side(x.h),
            w: side(x.w),
        })
    }
}

/// An NHWC batch of activations kept as `(b·h·w, C)` rows, with the grid they form. Every layer
/// reads and writes this form, so no reshape sits between layers: in candle each one costs the
/// backward pass a zeroed buffer and an add over the whole activation.
struct Grid {
    rows: Tensor,
    b: usize,
    h: usize,
    w: usize,
}

impl Grid {
    /// `[b, h, w]`, what the fused ops take to read the rows as images.
    fn shape(&self) -> [usize; 3] {
        [self.b, self.h, self.w]
    }

    /// The same rows as another tensor of this grid (a layer's output that keeps the size).
    fn with(&self, rows: Tensor) -> Grid {
        Grid {
            rows,
            b: self.b,
            h: self.h,
            w: self.w,
        }
    }

    /// `n × n` average pooling with stride `n` (PyTorch's `AvgPool2d(n)`).
    fn avg_pool(&self, n: usize) -> CResult<Grid> {
        Ok(Grid {
            rows: fused::avg_pool(&self.rows, self.shape(), n)?,
            b: self.b,
            h: self.h / n,
            w: self.w / n,
        })
    }
}

/// BatchNorm over the channels (last axis) with learnable gain and bias and running statistics.
struct BatchNorm {
    g: Tensor,
    b: Tensor,
    mean: Var,
    var: Var,
    /// How many batches were folded into the running statistics (PyTorch's
    /// `num_batches_tracked`, i64): part of open_clip's state dict, so a strict load needs it.
    folded: Var,
}

impl BatchNorm {
    fn build(pb: &mut ParamBuilder, name: &str, width: usize, gain: f64) -> CResult<BatchNorm> {
        Ok(BatchNorm {
            g: pb.constant(&format!("{name}.weight"), &[width], gain)?,
            b: pb.constant(&format!("{name}.bias"), &[width], 0.0)?,
            mean: pb.buffer(&format!("{name}.running_mean"), &[width], 0.0)?,
            var: pb.buffer(&format!("{name}.running_var"), &[width], 1.0)?,
            folded: pb.typed_buffer(
                &format!("{name}.num_batches_tracked"),
                &[],
                0.0,
                DType::I64,
            )?,
        })
    }

    /// BatchNorm of `(rows, C)` `x`, then ReLU if `relu` (fused with it on the CPU). Statistics are taken in f32
    /// or wider (bf16 sums lose the mean), as PyTorch's autocast does.
    fn forward(&self, x: &Tensor, mode: Mode, relu: bool) -> CResult<Tensor> {
        let rows = x.dim(0)?;
        let stat_dtype = match x.dtype() {
            DType::BF16 | DType::F16 => DType::F32,
            other => other,
        };
        let x32 = cast(x, stat_dtype)?;
        let (g, b) = (cast(&self.g, stat_dtype)?, cast(&self.b, stat_dtype)?);
        let y = match mode {
            Mode::Eval => {
                let mean = cast(self.mean.as_tensor(), stat_dtype)?;
                let var = cast(self.var.as_tensor(), stat_dtype)?;
                let scale = (var + BN_EPS)?.sqrt()?.recip()?.mul(&g)?;
                let y = x32
                    .broadcast_sub(&mean)?
                    .broadcast_mul(&scale)?
                    .broadcast_add(&b)?;
                if relu {
                    y.relu()?
                } else {
                    y
                }
            }
            Mode::Train { update_stats } => {
                let (y, mean, var) = fused::batch_norm(&x32, &g, &b, BN_EPS, relu)?;
                if update_stats {
                    let unbiased = rows as f64 / (rows.max(2) - 1) as f64;
                    self.fold(&self.mean, &mean, 1.0)?;
                    self.fold(&self.var, &var, unbiased)?;
                    self.folded
                        .set(&self.folded.as_tensor().affine(1.0, 1.0)?)?;
                }
                y
            }
        };
        cast(&y, x.dtype())
    }

    /// `running ← (1 − m) running + m · factor · batch`, outside the graph.
    fn fold(&self, running: &Var, batch: &Tensor, factor: f64) -> CResult<()> {
        let batch = batch.detach().to_dtype(running.dtype())?;
        let next = ((running.as_tensor() * (1.0 - BN_MOMENTUM))?
            + batch.affine(BN_MOMENTUM * factor, 0.0)?)?;
        running.set(&next)
    }
}

/// Convolution then BatchNorm, the unit every ResNet layer is made of.
struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn build(
        pb: &mut ParamBuilder,
        conv: &str,
        bn: &str,
        out: usize,
        inp: usize,
        k: usize,
        stride: usize,
        gain: f64,
    ) -> CResult<ConvBn> {
        Ok(ConvBn {
            conv: Conv::build(pb, conv, out, inp, k, stride)?,
            bn: BatchNorm::build(pb, bn, out, gain)?,
        })
    }

    fn forward(&self, x: &Grid, mode: Mode, relu: bool) -> CResult<Grid> {
        let y = self.conv.forward(x)?;
        Ok(y.with(self.bn.forward(&y.rows, mode, relu)?))
    }
}

/// Channels out of a bottleneck: four times its inner width.
const EXPANSION: usize = 4;

/// 1×1 in, 3×3, average pool when strided, 1×1 out (×4 channels), plus a shortcut that
/// average-pools and projects when the shape changes.
struct Bottleneck {
    reduce: ConvBn,
    spatial: ConvBn,
    expand: ConvBn,
    shortcut: Option<ConvBn>,
    stride: usize,
}

impl Bottleneck {
    fn build(
        pb: &mut ParamBuilder,
        name: &str,
        inp: usize,
        planes: usize,
        stride: usize,
    ) -> CResult<Bottleneck> {
        let out = planes * EXPANSION;
        let unit = |pb: &mut ParamBuilder, i: usize, out, inp, k, gain| {
            ConvBn::build(
                pb,
                &format!("{name}.conv{i}"),
                &format!("{name}.bn{i}"),
                out,
                inp,
                k,
                1,
                gain,
            )
        };
        Ok(Bottleneck {
            reduce: unit(pb, 1, planes, inp, 1, 1.0)?,
            spatial: unit(pb, 2, planes, planes, 3, 1.0)?,
            // open_clip starts each residual branch at zero (bn3's gain), so every block
            // begins as the identity.
            expand: unit(pb, 3, out, planes, 1, 0.0)?,
            shortcut: match stride > 1 || inp != out {
                true => Some(ConvBn::build(
                    pb,
                    &format!("{name}.downsample.0"),
                    &format!("{name}.downsample.1"),
                    out,
                    inp,
                    1,
                    1,
                    1.0,
                )?),
                false => None,
            },
            stride,
        })
    }

    fn forward(&self, x: &Grid, mode: Mode) -> CResult<Grid> {
        let h = self.reduce.forward(x, mode, true)?;
        let h = self.spatial.forward(&h, mode, true)?;
        let h = self
            .expand
            .forward(&h.avg_pool(self.stride)?, mode, false)?;
        let identity = match &self.shortcut {
            Some(unit) => unit.forward(&x.avg_pool(self.stride)?, mode, false)?.rows,
            None => x.rows.clone(),
        };
        Ok(h.with(fused::add_relu(&h.rows, &identity)?))
    }
}

/// Multi-head attention of one query (the mean of the grid) over the grid and itself, plus a
/// learned position per cell; its output projection is the tower's projection.
struct AttentionPool {
    pos: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl AttentionPool {
    fn build(
        pb: &mut ParamBuilder,
        cells: usize,
        width: usize,
        heads: usize,
        out: usize,
    ) -> CResult<AttentionPool> {
        let std = (width as f64).powf(-0.5);
        let p = "visual.attnpool";
        let proj = |pb: &mut ParamBuilder, name: &str, out| {
            pb.linear(&format!("{p}.{name}"), out, width, std, true)
        };
        Ok(AttentionPool {
            pos: pb.randn(
                &format!("{p}.positional_embedding"),
                &[cells + 1, width],
                std,
            )?,
            q: proj(pb, "q_proj", width)?,
            k: proj(pb, "k_proj", width)?,
            v: proj(pb, "v_proj", width)?,
            out: proj(pb, "c_proj", out)?,
            heads,
        })
    }

    /// The last stage's grid in, `(B, out)` features out. Only the pooled query's row is
    /// computed: the grid's own queries (open_clip computes and drops them) change nothing.
    fn forward(&self, x: &Grid) -> CResult<Tensor> {
        let (b, c) = (x.b, x.rows.dim(1)?);
        let t = x.h * x.w + 1;
        let hd = c / self.heads;
        let grid = x.rows.reshape((b, x.h * x.w, c))?;
        let tokens = Tensor::cat(&[&grid.mean_keepdim(1)?, &grid], 1)?.broadcast_add(&self.pos)?;
        let q = self
            .q
            .forward(&tokens.narrow(1, 0, 1)?)?
            .reshape((b, self.heads, 1, hd))?;
        let split = |lin: &Linear| -> CResult<Tensor> {
            lin.forward(&tokens)?
                .reshape((b, t, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (k, v) = (split(&self.k)?, split(&self.v)?);
        let scores = q
            .matmul(&k.transpose(2, 3)?)?
            .affine((hd as f64).powf(-0.5), 0.0)?;
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let pooled = weights.matmul(&v)?.reshape((b, c))?;
        self.out.forward(&pooled)
    }
}

/// The whole tower: stem, four stages, attention pool.
pub(crate) struct ResNetTower {
    stem: [ConvBn; 3],
    stages: Vec<Bottleneck>,
    pool: AttentionPool,
}

impl ResNetTower {
    pub(crate) fn build(pb: &mut ParamBuilder, cfg: &ClipConfig) -> CResult<ResNetTower> {
        let v = &cfg.vision_cfg;
        let VisionLayers::ResNet(blocks) = v.layers else {
            return Err(candle_core::Error::Msg(
                "a ResNet tower needs vision_cfg.layers as four numbers".into(),
            ));
        };
        let half = v.width / 2;
        let stem = |pb: &mut ParamBuilder, i: usize, out, inp, stride| {
            let (conv, bn) = (format!("visual.conv{i}"), format!("visual.bn{i}"));
            ConvBn::build(pb, &conv, &bn, out, inp, 3, stride, 1.0)
        };
        let stem = [
            stem(pb, 1, half, 3, 2)?,
            stem(pb, 2, half, half, 1)?,
            stem(pb, 3, v.width, half, 1)?,
        ];
        let mut stages = Vec::new();
        let mut inp = v.width;
        for (s, &count) in blocks.iter().enumerate() {
            let planes = v.width << s;
            for j in 0..count {
                let stride = if s > 0 && j == 0 { 2 } else { 1 };
                let name = format!("visual.layer{}.{j}", s + 1);
                stages.push(Bottleneck::build(pb, &name, inp, planes, stride)?);
                inp = planes * EXPANSION;
            }
        }
        let cells = v.grid() * v.grid();
        let pool = AttentionPool::build(pb, cells, inp, v.num_heads(), cfg.embed_dim)?;
        Ok(ResNetTower { stem, stages, pool })
    }

    /// `(B, 3, H, W)` images in, `(B, embed_dim)` features out.
    pub(crate) fn forward(&self, images: &Tensor, dtype: DType, mode: Mode) -> CResult<Tensor> {
        let (b, _, h, w) = images.dims4()?;
        let mut x = Grid {
            rows: cast(images, dtype)?
                .permute((0, 2, 3, 1))?
                .contiguous()?
                .reshape((b * h * w, 3))?,
            b,
            h,
            w,
        };
        for unit in &self.stem {
            x = unit.forward(&x, mode, true)?;
        }
        x = x.avg_pool(2)?;
        for block in &self.stages {
            x = block.forward(&x, mode)?;
        }
        debug_assert_eq!(x.h, h / RESNET_REDUCTION);
        self.pool.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests::max_abs_diff;
    use candle_core::Device;

    fn ramp(shape: &[usize], seed: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| ((i as f64 + seed) * 0.37).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// An NCHW tensor as the tower's `(b·h·w, C)` rows.
    fn rows(x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.dims4().unwrap();
        let nhwc = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        nhwc.reshape((b * h * w, c)).unwrap()
    }

    fn grid(x: &Tensor) -> Grid {
        let (b, _, h, w) = x.dims4().unwrap();
        Grid {
            rows: rows(x),
            b,
            h,
            w,
        }
    }

    #[test]
    fn im2col_convolution_equals_candles_conv2d() {
        // Odd and even sizes, 1×1 and 3×3 kernels, strides 1 and 2 (the stem's first layer).
        for (h, w, k, stride) in [(8, 8, 3, 2), (7, 5, 3, 2), (6, 9, 3, 1), (5, 4, 1, 1)] {
            let x = ramp(&[2, 3, h, w], 1.0);
            let weight = ramp(&[4, 3, k, k], 2.0);
            let want = x.conv2d(&weight, k / 2, stride, 1, 1).unwrap();
            let conv = Conv {
                w: weight,
                k,
                stride,
            };
            let got = conv.forward(&grid(&x)).unwrap();
            assert_eq!((got.h, got.w), (want.dim(2).unwrap(), want.dim(3).unwrap()));
            let d = max_abs_diff(&got.rows, &rows(&want));
            assert!(d < 1e-12, "{h}x{w} k{k} s{stride}: differs by {d}");
        }
    }

    #[test]
    fn im2col_convolution_gradients_equal_candles_conv2d() {
        for (h, w, k, stride) in [(8, 8, 3, 2), (7, 5, 3, 2), (6, 9, 3, 1), (5, 4, 1, 1)] {
            let x = Var::from_tensor(&ramp(&[2, 3, h, w], 1.0)).unwrap();
            let weight = Var::from_tensor(&ramp(&[4, 3, k, k], 2.0)).unwrap();
            let want_y = x.conv2d(&weight, k / 2, stride, 1, 1).unwrap();
            let r = ramp(want_y.dims(), 4.0);
            let want = (&want_y * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let conv = Conv {
                w: weight.as_tensor().clone(),
                k,
                stride,
            };
            let y = conv.forward(&grid(&x)).unwrap().rows;
            let got = (y * rows(&r))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (what, t) in [("input", x.as_tensor()), ("weight", weight.as_tensor())] {
                let d = max_abs_diff(got.get(t).unwrap(), want.get(t).unwrap());
                assert!(
                    d < 1e-12,
                    "{h}x{w} k{k} s{stride}: {what} gradient differs by {d}"
                );
            }
        }
    }

    #[test]
    fn batch_norm_training_gradients_match_finite_differences() {
        let mut pb = ParamBuilder::for_tests(DType::F64);
        let bn = BatchNorm::build(&mut pb, "bn", 3, 1.0).unwrap();
        let base: Vec<f64> = ramp(&[60], 7.0).to_vec1().unwrap();
        let r = ramp(&[20, 3], 8.0);
        let loss = |v: &[f64]| {
            let x = Tensor::from_vec(v.to_vec(), (20, 3), &Device::Cpu).unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let y = bn
                .forward(
                    &x,
                    Mode::Train {
                        update_stats: false,
                    },
                    true,
                )
                .unwrap();
            let l = (y * &r).unwrap().sum_all().unwrap();
            let g = l.backward().unwrap().get(x.as_tensor()).unwrap().clone();
            (
                l.to_scalar::<f64>().unwrap(),
                g.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            )
        };
        let (_, analytic) = loss(&base);
        for i in [0, 7, 31, 59] {
            let h = 1e-6;
            let mut up = base.clone();
            up[i] += h;
            let mut down = base.clone();
            down[i] -= h;
            let numeric = (loss(&up).0 - loss(&down).0) / (2.0 * h);
            assert!(
                (numeric - analytic[i]).abs() < 1e-6,
                "x[{i}]: {} vs {numeric}",
                analytic[i]
            );
        }
    }

    #[test]
    fn average_pool_equals_candles() {
        let x = ramp(&[2, 3, 8, 4], 3.0);
        let want = x.avg_pool2d(2).unwrap();
        let got = grid(&x).avg_pool(2).unwrap();
        assert_eq!((got.h, got.w), (4, 2));
        assert!(max_abs_diff(&got.rows, &rows(&want)) < 1e-12);
    }

    #[test]
    fn batch_norm_trains_on_batch_statistics_and_infers_on_running_ones() {
        let mut pb = ParamBuilder::for_tests(DType::F64);
        let bn = BatchNorm::build(&mut pb, "bn", 3, 1.0).unwrap();
        let x = ramp(&[16, 3], 5.0).affine(2.0, 3.0).unwrap();
        let y = bn
            .forward(&x, Mode::Train { update_stats: true }, false)
            .unwrap();
        // Normalised per channel: mean 0, (biased) variance 1 − ε-ish.
        let mean = y.mean(0).unwrap().to_vec1::<f64>().unwrap();
        let var = y.sqr().unwrap().mean(0).unwrap().to_vec1::<f64>().unwrap();
        for c in 0..3 {
            assert!(mean[c].abs() < 1e-12, "channel {c} mean {}", mean[c]);
            assert!(
                (var[c] - 1.0).abs() < 1e-4,
                "channel {c} variance {}",
                var[c]
            );
        }
        // Running mean moved a tenth of the way from 0 to the batch mean (PyTorch's momentum).
        let batch_mean = x.mean(0).unwrap();
        let running = bn.mean.as_tensor();
        assert!(max_abs_diff(running, &batch_mean.affine(0.1, 0.0).unwrap()) < 1e-12);
        // Eval reads the running statistics: with them set to the batch's, eval equals train.
        bn.mean.set(&batch_mean).unwrap();
        let centered = x.broadcast_sub(&batch_mean).unwrap();
        bn.var
            .set(&centered.sqr().unwrap().mean(0).unwrap())
            .unwrap();
        let eval = bn.forward(&x, Mode::Eval, false).unwrap();
        assert!(max_abs_diff(&eval, &y) < 1e-12);
    }
}
