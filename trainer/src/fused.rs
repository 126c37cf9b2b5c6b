//! Fused CPU kernels, each with a hand-written backward pass, for the layers of a small
//! transformer whose candle graphs cost more than their arithmetic: exact-erf GELU, LayerNorm,
//! linear layers with a bias, and (causal) scaled dot-product attention; and the ResNet's im2col,
//! average pooling, training-mode BatchNorm (+ ReLU) and residual join (add + ReLU).
//!
//! candle's own fused versions have no backward (the graph is silently cut), and the same layers
//! spelled out in plain ops take 5–12 passes over memory each way: GELU's backward alone is a dozen
//! elementwise ops over the widest activation, and every graph node's gradient is a fresh zeroed
//! buffer plus an add. Here each layer is one op forward and one backward, parallel over rows or
//! heads. With the `cuda` feature, the first four, attention straight from the q/k/v layer's
//! output, and the embedding's row gather run on CUDA (`crate::cuda`), in f32 or bf16: one graph
//! node each, with cuBLAS for the products and wit's kernels for the rest.
//! Other devices and dtypes take the plain-op graphs, which compute the same function; tests check
//! in f64 that both paths give the same values and the same gradients, and on a GPU that the CUDA
//! kernels agree with the CPU ones.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout,
    Result, Shape, Tensor, D,
};
use multiversion::multiversion;
use num_traits::Float;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

/// Elements per parallel task: large enough that scheduling costs nothing next to the work.
const TASK_ELEMS: usize = 1 << 14;

// The row loops below that carry `#[multiversion]` are compiled three times, for AVX-512, for AVX2
// with FMA and for the build's baseline (SSE2 on x86-64), and each call runs the widest one the
// CPU has: they go 16 or 8 floats wide where a portable build goes 4. Their reductions keep
// `LANES` partial sums, without which they would not vectorise at all.

/// Partial sums a reduction keeps: one running sum is a chain of dependent adds the compiler may
/// not reorder, so it stays scalar; 16 independent ones fill an AVX-512 register.
const LANES: usize = 16;

/// `Σ f(a_i, b_i, c_i)` over three equally long slices, in `LANES` interleaved partial sums.
#[inline(always)]
fn sum_by3<T: Real>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) -> T {
    let mut lanes = [T::zero(); LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let tail = (ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder()))
    .fold(T::zero(), |acc, ((&a, &b), &c)| acc + f(a, b, c));
    for ((a, b), c) in ca.zip(cb).zip(cc) {
        for (((lane, &a), &b), &c) in lanes.iter_mut().zip(a).zip(b).zip(c) {
            *lane += f(a, b, c);
        }
    }
    lanes.iter().fold(tail, |acc, &l| acc + l)
}

/// `Σ f(a_i, b_i)`, as `sum_by3`.
#[inline(always)]
fn sum_by2<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    sum_by3(a, b, b, |a, b, _| f(a, b))
}

/// `Σ f(x_i)`, as `sum_by3`.
#[inline(always)]
fn sum_by<T: Real>(x: &[T], f: impl Fn(T) -> T) -> T {
    sum_by3(x, x, x, |x, _, _| f(x))
}

/// The largest element (`-∞` for none), in `LANES` interleaved partial maxima.
#[inline(always)]
fn max_of<T: Real>(x: &[T]) -> T {
    let mut lanes = [T::neg_infinity(); LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(T::neg_infinity(), Float::max);
    for c in chunks {
        for (lane, &v) in lanes.iter_mut().zip(c) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    lanes.iter().copied().fold(tail, Float::max)
}

/// The float types the kernels run in: f32 for training, f64 for the reference tests.
trait Real:
    Float + num_traits::NumAssign + Send + Sync + std::iter::Sum + candle_core::WithDType
{
    /// `e^x`; the f32 version is branch-free so that loops over it vectorise.
    fn exp_fast(x: Self) -> Self;
    /// The standard normal CDF `Φ(x)` and `e^(-x²/2)` (which `Φ'` needs), sharing one `exp`.
    fn cdf_and_gauss(x: Self) -> (Self, Self);
    /// Wraps a result vector as candle storage.
    fn storage(v: Vec<Self>) -> CpuStorage;
}

impl Real for f32 {
    /// Cephes' `expf`: `x = n ln2 + r` with `|r| ≤ ln2/2`, a degree-6 polynomial for `e^r`, and
    /// `2^n` written into the exponent bits (relative error about 2e-7). libm's `expf` is a call
    /// per element, which keeps the loops scalar.
    #[inline(always)]
    fn exp_fast(x: f32) -> f32 {
        const MAGIC: f32 = 12_582_912.0;
        let x = x.clamp(-87.0, 88.0);
        // Round to nearest by the 1.5·2²³ trick (SSE2 has no vector `round`); the rounded `n`
        // then sits in the low mantissa bits, read as an integer without a (scalar, saturating)
        // float-to-int cast.
        let shifted = x * std::f32::consts::LOG2_E + MAGIC;
        let n = shifted - MAGIC;
        let n_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
        let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let p = 1.987_569_1e-4_f32;
        let p = p * r + 1.398_199_9e-3;
        let p = p * r + 8.333_452e-3;
        let p = p * r + 4.166_579_6e-2;
        let p = p * r + 0.166_666_65;
        let p = p * r + 0.5;
        let er = p * r * r + r + 1.0;
        er * f32::from_bits(n_bits.wrapping_add(127) << 23)
    }

    /// Abramowitz & Stegun 7.1.26 for `erfc(|x|/√2)` (absolute error below 1.5e-7), which keeps
    /// the negative tail's relative precision; libm's `erff` costs 3× more and does not vectorise.
    #[inline(always)]
    fn cdf_and_gauss(x: f32) -> (f32, f32) {
        let a = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * a);
        let poly = t
            * (0.254_829_6
                + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
        let gauss = f32::exp_fast(-a * a);
        let half_erfc = 0.5 * poly * gauss;
        let cdf = if x < 0.0 { half_erfc } else { 1.0 - half_erfc };
        (cdf, gauss)
    }

    fn storage(v: Vec<f32>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}

impl Real for f64 {
    fn exp_fast(x: f64) -> f64 {
        x.exp()
    }

    fn cdf_and_gauss(x: f64) -> (f64, f64) {
        let erf = candle_core::cpu::erf::erf_f64(x * std::f64::consts::FRAC_1_SQRT_2);
        (0.5 * (1.0 + erf), (-0.5 * x * x).exp())
    }

    fn storage(v: Vec<f64>) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

/// Runs a generic kernel on the float type of storage `$first` (f32 or f64) and wraps the vector
/// it returns as storage of that type; any other dtype is an error naming `$op`.
macro_rules! float_kernel {
    ($op:expr, $first:expr, $kernel:ident($($arg:tt)*)) => {
        match $first {
            CpuStorage::F32(_) => f32::storage($kernel::<f32>($($arg)*)),
            CpuStorage::F64(_) => f64::storage($kernel::<f64>($($arg)*)),
            other => return Err(unsupported($op, other)),
        }
    };
}

/// Whether a tensor takes the fused CPU kernels: CPU storage in f32 or f64.
fn fusable(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Whether CUDA tensors take the CUDA kernels (on by default; see `use_cuda_kernels`).
static CUDA_KERNELS: AtomicBool = AtomicBool::new(true);

/// Switches the CUDA versions of GELU, LayerNorm, linear, attention, row gathers and AdamW on
/// or off process-wide, so a benchmark can time the plain-op graphs they replace on the same GPU
/// in the same run.
pub fn use_cuda_kernels(on: bool) {
    CUDA_KERNELS.store(on, Ordering::Relaxed);
}

/// Whether a tensor takes the CUDA kernels: CUDA storage in f32 or bf16, kernels switched on.
pub(crate) fn cuda_kernels(x: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && x.device().is_cuda()
        && matches!(x.dtype(), DType::F32 | DType::BF16)
        && CUDA_KERNELS.load(Ordering::Relaxed)
}

/// The contiguous slice a layout describes; every caller hands in contiguous tensors.
fn slice<'a, T: Real>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op: input must be contiguous".into()))?;
    Ok(&s.as_slice::<T>()?[start..end])
}

/// Rows per parallel task for rows of `width` elements.
fn rows_per_task(width: usize) -> usize {
    (TASK_ELEMS / width.max(1)).max(1)
}

fn unsupported(op: &str, s: &CpuStorage) -> candle_core::Error {
    candle_core::Error::Msg(format!("fused {op}: dtype {:?} is not f32/f64", s.dtype()))
}

/// `GELU(x) = x Φ(x)` with the exact normal CDF, as PyTorch's `nn.GELU()` and open_clip use.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fusable(x) || cuda_kernels(x) {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        x.gelu_erf()
    }
}

struct Gelu;

fn gelu_fwd<T: Real>(x: &[T]) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(TASK_ELEMS)
        .zip(x.par_chunks(TASK_ELEMS))
        .for_each(|(y, x)| gelu_fwd_chunk(y, x));
    // SAFETY: the chunks of `y` and `x` pair up with equal lengths, and `gelu_fwd_chunk` writes
    // every element of each, so all `x.len()` elements are initialised.
    unsafe { y.set_len(x.len()) };
    y
}

/// One task's GELU, written into uninitialised memory: zeroing the widest activation first would
/// be one more pass over it, forward and backward.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn gelu_fwd_chunk<T: Real>(y: &mut [MaybeUninit<T>], x: &[T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        y.write(x * T::cdf_and_gauss(x).0);
    }
}

/// `dx = dy (Φ(x) + x φ(x))`.
fn gelu_bwd<T: Real>(x: &[T], dy: &[T]) -> Vec<T> {
    assert_eq!(x.len(), dy.len());
    let mut dx = Vec::with_capacity(x.len());
    dx.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(TASK_ELEMS)
        .zip(x.par_chunks(TASK_ELEMS).zip(dy.par_chunks(TASK_ELEMS)))
        .for_each(|(dx, (x, dy))| gelu_bwd_chunk(dx, x, dy));
    // SAFETY: as in `gelu_fwd`, with `dy` as long as `x` (asserted).
    unsafe { dx.set_len(x.len()) };
    dx
}

/// One task's GELU gradient, written into uninitialised memory as in `gelu_fwd_chunk`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn gelu_bwd_chunk<T: Real>(dx: &mut [MaybeUninit<T>], x: &[T], dy: &[T]) {
    let inv_sqrt_2pi = T::from(0.398_942_280_401_432_7).unwrap();
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        let (cdf, gauss) = T::cdf_and_gauss(x);
        dx.write(dy * (cdf + x * inv_sqrt_2pi * gauss));
    }
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "wit-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = float_kernel!("gelu", s, gelu_fwd(slice(s, l)?));
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::gelu(s, l)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &GeluGrad)?))
    }
}

struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "wit-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = float_kernel!(
            "gelu backward",
            s1,
            gelu_bwd(slice(s1, l1)?, slice(s2, l2)?)
        );
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::gelu_grad(s1, l1, s2, l2)
    }
}

/// LayerNorm over the last dimension with gain `g` and bias `b`, normalised in at least f32.
pub fn layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if fusable(x) || cuda_kernels(x) {
        let (g, b) = (g.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
        return x
            .contiguous()?
            .apply_op3(&g.contiguous()?, &b.contiguous()?, LayerNorm { eps });
    }
    plain_layer_norm(x, g, b, eps)
}

/// LayerNorm from plain ops, for devices and dtypes the fused kernel does not take.
fn plain_layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let work = match dtype {
        DType::F64 => DType::F64,
        _ => DType::F32,
    };
    let x = x.to_dtype(work)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = xn
        .broadcast_mul(&g.to_dtype(work)?)?
        .broadcast_add(&b.to_dtype(work)?)?;
    y.to_dtype(dtype)
}

struct LayerNorm {
    eps: f64,
}

/// Mean and `1/σ` of one row.
#[inline(always)]
fn row_stats<T: Real>(x: &[T], eps: T) -> (T, T) {
    let n = T::from(x.len()).unwrap();
    let mean = sum_by(x, |v| v) / n;
    let var = sum_by(x, |v| (v - mean) * (v - mean)) / n;
    (mean, (var + eps).sqrt().recip())
}

fn layer_norm_fwd<T: Real>(x: &[T], g: &[T], b: &[T], eps: f64) -> Vec<T> {
    let w = g.len();
    assert!(
        w > 0 && x.len().is_multiple_of(w) && b.len() == w,
        "layer_norm: rows of the gain's width"
    );
    let eps = T::from(eps).unwrap();
    let mut y = Vec::with_capacity(x.len());
    let task = rows_per_task(w) * w;
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .for_each(|(y, x)| layer_norm_fwd_rows(y, x, g, b, eps));
    // SAFETY: the chunks of `y` and `x` pair up with equal lengths, whole rows of `w` each (the
    // op checked that `x` is rows of `w` and `b` has `w`), and `layer_norm_fwd_rows` writes every
    // element of each row.
    unsafe { y.set_len(x.len()) };
    y
}

/// Rows of `layer_norm_fwd`: `(x − μ)/σ · g + b`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn layer_norm_fwd_rows<T: Real>(y: &mut [MaybeUninit<T>], x: &[T], g: &[T], b: &[T], eps: T) {
    let w = g.len();
    for (y, x) in y.chunks_exact_mut(w).zip(x.chunks_exact(w)) {
        let (mean, rstd) = row_stats(x, eps);
        for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(g).zip(b) {
            y.write((x - mean) * rstd * g + b);
        }
    }
}

/// Gradients of LayerNorm, laid out as `rows + 2` rows of `w`: `dx`, then `dg`, then `db`.
/// With `x̂ = (x − μ)/σ` and `ĝ = dy·g`: `dx = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) / σ`,
/// `dg = Σ_rows dy·x̂`, `db = Σ_rows dy`.
fn layer_norm_bwd<T: Real>(x: &[T], g: &[T], dy: &[T], eps: f64) -> Vec<T> {
    let w = g.len();
    let rows = x.len() / w;
    let (eps, n) = (T::from(eps).unwrap(), T::from(w).unwrap());
    let mut out = vec![T::zero(); (rows + 2) * w];
    let (dx, sums) = out.split_at_mut(rows * w);
    let task = rows_per_task(w) * w;
    let partial = dx
        .par_chunks_mut(task)
        .zip(x.par_chunks(task).zip(dy.par_chunks(task)))
        .map(|(dx, (x, dy))| {
            let mut acc = vec![T::zero(); 2 * w];
            let (dg, db) = acc.split_at_mut(w);
            layer_norm_bwd_rows((dx, dg, db), x, dy, g, (eps, n));
            acc
        })
        .reduce(
            || vec![T::zero(); 2 * w],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, &b)| *a += b);
                a
            },
        );
    sums.copy_from_slice(&partial);
    out
}

/// Rows of `layer_norm_bwd`: writes their `dx`, adds their terms to `dg` and `db`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn layer_norm_bwd_rows<T: Real>(
    (dx, dg, db): (&mut [T], &mut [T], &mut [T]),
    x: &[T],
    dy: &[T],
    g: &[T],
    (eps, n): (T, T),
) {
    let w = g.len();
    let rows = dx
        .chunks_exact_mut(w)
        .zip(x.chunks_exact(w))
        .zip(dy.chunks_exact(w));
    for ((dx, x), dy) in rows {
        let (mean, rstd) = row_stats(x, eps);
        let sum_gy = sum_by2(dy, g, |dy, g| dy * g);
        let sum_gy_xhat = sum_by3(dy, g, x, |dy, g, x| dy * g * (x - mean)) * rstd;
        let (mean_gy, mean_gy_xhat) = (sum_gy / n, sum_gy_xhat / n);
        let terms = dx.iter_mut().zip(dg.iter_mut()).zip(db.iter_mut());
        for ((((dx, dg), db), &x), (&dy, &g)) in terms.zip(x).zip(dy.iter().zip(g)) {
            let xhat = (x - mean) * rstd;
            *dg += dy * xhat;
            *db += dy;
            *dx = (dy * g - mean_gy - xhat * mean_gy_xhat) * rstd;
        }
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "wit-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = l1.dims().last().copied().unwrap_or(0);
        if w == 0 || l2.shape().elem_count() != w || l3.shape().elem_count() != w {
            return Err(candle_core::Error::Msg(format!(
                "layer_norm: gain {:?} and bias {:?} must match the last dimension of {:?}",
                l2.dims(),
                l3.dims(),
                l1.dims()
            )));
        }
        let out = float_kernel!(
            "layer_norm",
            s1,
            layer_norm_fwd(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, self.eps)
        );
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::layer_norm((s1, l1), (s2, l2), (s3, l3), self.eps)
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let w = g.elem_count();
        let rows = x.elem_count() / w;
        let all = x.apply_op3_no_bwd(g, &dy.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dg = all.get(rows)?.reshape(g.shape())?;
        let db = all.get(rows + 1)?.reshape(g.shape())?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

struct LayerNormGrad {
    eps: f64,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "wit-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = l2.shape().elem_count();
        let rows = l1.shape().elem_count() / w;
        let out = float_kernel!(
            "layer_norm backward",
            s1,
            layer_norm_bwd(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, self.eps)
        );
        Ok((out, Shape::from((rows + 2, w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::layer_norm_grad((s1, l1), (s2, l2), (s3, l3), self.eps)
    }
}

/// The patches of a square convolution (zero padding `k / 2`, stride `stride`) over `x`, an NHWC
/// batch of `grid = [b, h, w]` stored as `(b·h·w, C)` rows: `(b·Ho·Wo, k·k·C)`, each row the
/// `(ky, kx, c)` window of one output pixel, so a convolution is this times its weight as a
/// `(k·k·C, out)` matrix. The backward sums each window's gradient back onto the pixels it read.
/// The CPU op is one pass each way; the plain-op graph (padding, k² shifted slices, a
/// concatenation, and k² zero-padded gradients summed) takes ~4k² passes.
pub fn im2col(x: &Tensor, grid: [usize; 3], k: usize, stride: usize) -> Result<Tensor> {
    if fusable(x) {
        return x.contiguous()?.apply_op1(Im2Col { grid, k, stride });
    }
    plain_im2col(x, grid, k, stride)
}

/// `im2col` from plain ops, for devices and dtypes the CPU kernel does not take.
fn plain_im2col(x: &Tensor, grid: [usize; 3], k: usize, stride: usize) -> Result<Tensor> {
    let g = Window::of(grid, x.dim(1)?, k, stride)?;
    let s = stride;
    // The far end is padded to cover the last tap's `s * ho` rows (strided: one past the last
    // row read, which the strided pick drops).
    let x = x
        .reshape((g.b, g.h, g.w, g.c))?
        .pad_with_zeros(1, g.pad, (k - 1 + s * g.ho).saturating_sub(g.h + g.pad))?
        .pad_with_zeros(2, g.pad, (k - 1 + s * g.wo).saturating_sub(g.w + g.pad))?;
    let mut taps = Vec::with_capacity(k * k);
    for dy in 0..k {
        for dx in 0..k {
            let tap = x.narrow(1, dy, s * g.ho)?.narrow(2, dx, s * g.wo)?;
            taps.push(match s {
                1 => tap,
                _ => tap
                    .reshape((g.b, g.ho, s, g.wo, s, g.c))?
                    .narrow(4, 0, 1)?
                    .narrow(2, 0, 1)?
                    .reshape((g.b, g.ho, g.wo, g.c))?,
            });
        }
    }
    Tensor::cat(&taps, 3)?.reshape((g.b * g.ho * g.wo, k * k * g.c))
}

/// `n × n` average pooling with stride `n` (PyTorch's `AvgPool2d(n)`) over `x`, an NHWC batch of
/// `grid = [b, h, w]` stored as `(b·h·w, C)` rows, `h` and `w` multiples of `n`. The CPU op is one
/// pass each way; the plain-op graph reshapes, sums twice and scales.
pub fn avg_pool(x: &Tensor, grid: [usize; 3], n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let [_, h, w] = grid;
    if h % n != 0 || w % n != 0 {
        candle_core::bail!("avg_pool: {h}x{w} is not a multiple of {n}")
    }
    if fusable(x) {
        return x.contiguous()?.apply_op1(AvgPool { grid, n });
    }
    plain_avg_pool(x, grid, n)
}

/// `avg_pool` from plain ops, for devices and dtypes the CPU kernel does not take.
fn plain_avg_pool(x: &Tensor, grid: [usize; 3], n: usize) -> Result<Tensor> {
    let [b, h, w] = grid;
    let c = x.dim(1)?;
    x.reshape((b, h / n, n, w / n, n, c))?
        .sum(4)?
        .sum(2)?
        .affine(1.0 / (n * n) as f64, 0.0)?
        .reshape((b * (h / n) * (w / n), c))
}

/// Each output row is the mean of its `n × n` input rows; output rows in parallel blocks.
fn avg_pool_fwd<T: Real>(x: &[T], c: usize, grid: [usize; 3], n: usize) -> Vec<T> {
    let [b, h, w] = grid;
    let (ho, wo) = (h / n, w / n);
    let scale = T::from(n * n).unwrap().recip();
    let block = rows_per_task(c);
    let mut y = vec![T::zero(); b * ho * wo * c];
    y.par_chunks_mut(block * c)
        .enumerate()
        .for_each(|(i, rows)| {
            for (k, row) in rows.chunks_exact_mut(c).enumerate() {
                let r = i * block + k;
                let (image, oy, ox) = (r / (ho * wo), (r / wo) % ho, r % wo);
                for dy in 0..n {
                    for dx in 0..n {
                        let input = (image * h + oy * n + dy) * w + ox * n + dx;
                        for (y, &x) in row.iter_mut().zip(&x[input * c..(input + 1) * c]) {
                            *y += x * scale;
                        }
                    }
                }
            }
        });
    y
}

struct AvgPool {
    grid: [usize; 3],
    n: usize,
}

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        "wit-avg-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let [b, h, w] = self.grid;
        let (_, c) = l.shape().dims2()?;
        let out = float_kernel!(
            "avg_pool",
            s,
            avg_pool_fwd(slice(s, l)?, c, self.grid, self.n)
        );
        Ok((out, Shape::from((b * (h / self.n) * (w / self.n), c))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (grid, n) = (self.grid, self.n);
        Ok(Some(
            dy.contiguous()?
                .apply_op1_no_bwd(&AvgPoolGrad { grid, n })?,
        ))
    }
}

/// The backward of `AvgPool`: every input row gets its output row's gradient over `n²`.
struct AvgPoolGrad {
    grid: [usize; 3],
    n: usize,
}

impl CustomOp1 for AvgPoolGrad {
    fn name(&self) -> &'static str {
        "wit-avg-pool-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let [b, h, w] = self.grid;
        let (_, c) = l.shape().dims2()?;
        let out = float_kernel!(
            "avg_pool backward",
            s,
            avg_pool_bwd(slice(s, l)?, c, self.grid, self.n)
        );
        Ok((out, Shape::from((b * h * w, c))))
    }
}

fn avg_pool_bwd<T: Real>(dy: &[T], c: usize, grid: [usize; 3], n: usize) -> Vec<T> {
    let [b, h, w] = grid;
    let scale = T::from(n * n).unwrap().recip();
    let mut dx = vec![T::zero(); b * h * w * c];
    dx.par_chunks_mut(rows_per_task(c) * c)
        .enumerate()
        .for_each(|(i, rows)| {
            for (k, row) in rows.chunks_exact_mut(c).enumerate() {
                let r = i * rows_per_task(c) + k;
                let (image, iy, ix) = (r / (h * w), (r / w) % h, r % w);
                let out = (image * (h / n) + iy / n) * (w / n) + ix / n;
                for (d, &g) in row.iter_mut().zip(&dy[out * c..(out + 1) * c]) {
                    *d = g * scale;
                }
            }
        });
    dx
}

/// The geometry of a square convolution window over an NHWC batch.
#[derive(Clone, Copy, Debug)]
struct Window {
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Window {
    fn of(grid: [usize; 3], c: usize, k: usize, stride: usize) -> Result<Window> {
        let [b, h, w] = grid;
        let pad = k / 2;
        if k == 0 || stride == 0 || h + 2 * pad < k || w + 2 * pad < k {
            candle_core::bail!("im2col: a {k}x{k} window (stride {stride}) does not fit {h}x{w}")
        }
        let (ho, wo) = (
            (h + 2 * pad - k) / stride + 1,
            (w + 2 * pad - k) / stride + 1,
        );
        Ok(Window {
            b,
            h,
            w,
            c,
            k,
            stride,
            pad,
            ho,
            wo,
        })
    }

    /// The input coordinate tap `t` of output coordinate `o` reads, if inside the image.
    fn input(&self, o: usize, t: usize, size: usize) -> Option<usize> {
        (o * self.stride + t)
            .checked_sub(self.pad)
            .filter(|&i| i < size)
    }

    /// The output coordinate whose tap `t` reads input coordinate `i`, if any.
    fn output(&self, i: usize, t: usize, size: usize) -> Option<usize> {
        let shifted = (i + self.pad).checked_sub(t)?;
        (shifted % self.stride == 0)
            .then_some(shifted / self.stride)
            .filter(|&o| o < size)
    }
}

/// The patches as rows, written into uninitialised memory: each window position copies its
/// pixel's channels or, in the padding, writes zeros, so no zero-fill pass comes first.
fn im2col_fwd<T: Real>(x: &[T], g: Window) -> Vec<T> {
    let (k, c) = (g.k, g.c);
    let row = g.wo * k * k * c;
    let len = g.b * g.ho * row;
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(row)
        .enumerate()
        .for_each(|(r, out)| {
            let (image, oy) = (r / g.ho, r % g.ho);
            for ox in 0..g.wo {
                for ky in 0..k {
                    let iy = g.input(oy, ky, g.h);
                    for kx in 0..k {
                        let dst = ((ox * k + ky) * k + kx) * c;
                        let slot = &mut out[dst..dst + c];
                        match (iy, g.input(ox, kx, g.w)) {
                            (Some(iy), Some(ix)) => {
                                let src = ((image * g.h + iy) * g.w + ix) * c;
                                slot.write_copy_of_slice(&x[src..src + c]);
                            }
                            _ => slot.iter_mut().for_each(|v| {
                                v.write(T::zero());
                            }),
                        }
                    }
                }
            }
        });
    // SAFETY: each chunk is one output row of `wo · k · k` slots of `c`, and the loops above
    // write every slot of it (the pixel's channels, or zeros in the padding); the chunks tile
    // all `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// The backward of `im2col_fwd`, gathered per input row so rows are filled in parallel.
fn col2im<T: Real>(dcols: &[T], g: Window) -> Vec<T> {
    let (k, c) = (g.k, g.c);
    let mut dx = vec![T::zero(); g.b * g.h * g.w * c];
    dx.par_chunks_mut(g.w * c).enumerate().for_each(|(r, dx)| {
        let (image, iy) = (r / g.h, r % g.h);
        for ky in 0..k {
            let Some(oy) = g.output(iy, ky, g.ho) else {
                continue;
            };
            for kx in 0..k {
                for ix in 0..g.w {
                    let Some(ox) = g.output(ix, kx, g.wo) else {
                        continue;
                    };
                    let src = ((((image * g.ho + oy) * g.wo + ox) * k + ky) * k + kx) * c;
                    let dst = &mut dx[ix * c..(ix + 1) * c];
                    dst.iter_mut()
                        .zip(&dcols[src..src + c])
                        .for_each(|(d, &v)| *d += v);
                }
            }
        }
    });
    dx
}

struct Im2Col {
    grid: [usize; 3],
    k: usize,
    stride: usize,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "wit-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c) = l.shape().dims2()?;
        let g = Window::of(self.grid, c, self.k, self.stride)?;
        let out = float_kernel!("im2col", s, im2col_fwd(slice(s, l)?, g));
        Ok((out, Shape::from((g.b * g.ho * g.wo, g.k * g.k * g.c))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let g = Window::of(self.grid, x.dim(1)?, self.k, self.stride)?;
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&Col2Im(g))?))
    }
}

struct Col2Im(Window);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "wit-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out = float_kernel!("im2col backward", s, col2im(slice(s, l)?, g));
        Ok((out, Shape::from((g.b * g.h * g.w, g.c))))
    }
}

/// `ReLU(a + b)`, a residual block's join: one pass each way on the CPU, where the plain ops take
/// two forward and four back (ReLU's mask from a zero tensor, a comparison, a cast, a product).
/// The gradient is zero where the sum is not positive (PyTorch's convention; candle's ReLU, which
/// the plain-op fallback uses, also passes it where the sum is exactly zero).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fusable(a) && b.dtype() == a.dtype() && fusable(b) {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        plain_add_relu(a, b)
    }
}

/// `add_relu` from plain ops, for devices and dtypes the CPU kernel does not take.
fn plain_add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a + b)?.relu()
}

fn add_relu_fwd<T: Real>(a: &[T], b: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); a.len()];
    y.par_chunks_mut(TASK_ELEMS)
        .zip(a.par_chunks(TASK_ELEMS).zip(b.par_chunks(TASK_ELEMS)))
        .for_each(|(y, (a, b))| {
            for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                *y = Float::max(a + b, T::zero());
            }
        });
    y
}

/// `dy` where the output `y` is positive, zero elsewhere: the gradient of both summands.
fn relu_bwd<T: Real>(y: &[T], dy: &[T]) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    dx.par_chunks_mut(TASK_ELEMS)
        .zip(y.par_chunks(TASK_ELEMS).zip(dy.par_chunks(TASK_ELEMS)))
        .for_each(|(dx, (y, dy))| {
            for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                *dx = if y > T::zero() { dy } else { T::zero() };
            }
        });
    dx
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "wit-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: l1.shape().clone(),
                rhs: l2.shape().clone(),
                op: "add_relu",
            });
        }
        let out = float_kernel!("add_relu", s1, add_relu_fwd(slice(s1, l1)?, slice(s2, l2)?));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = y.apply_op2_no_bwd(&dy.contiguous()?, &ReluGrad)?;
        Ok((Some(dx.clone()), Some(dx)))
    }
}

/// The backward of `AddRelu`: `relu_bwd` over its output and the incoming gradient.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "wit-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = float_kernel!(
            "relu backward",
            s1,
            relu_bwd(slice(s1, l1)?, slice(s2, l2)?)
        );
        Ok((out, l1.shape().clone()))
    }
}

/// Training-mode BatchNorm over the last axis of `x` (`rows × C`): each channel normalised by the
/// batch's mean and biased variance, then scaled by `g` and shifted by `b`, then ReLU if `relu`.
/// Returns the output and the batch's mean and variance (for the running statistics). The CPU op
/// is two passes forward and two back, where the plain-op graph takes about eight and fifteen.
pub fn batch_norm(
    x: &Tensor,
    g: &Tensor,
    b: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    if fusable(x) {
        let x = x.contiguous()?;
        let stats = x.apply_op1_no_bwd(&BatchStats)?;
        let gb = Tensor::stack(&[g, b], 0)?
            .to_dtype(x.dtype())?
            .contiguous()?;
        let y = x.apply_op3(&gb, &stats, BatchNorm { eps, relu })?;
        return Ok((y, stats.get(0)?, stats.get(1)?));
    }
    plain_batch_norm(x, g, b, eps, relu)
}

/// `batch_norm` from plain ops, for devices and dtypes the CPU kernel does not take.
fn plain_batch_norm(
    x: &Tensor,
    g: &Tensor,
    b: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let mean = x.mean(0)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean(0)?;
    let scale = (&var + eps)?.sqrt()?.recip()?.mul(g)?;
    let y = centered.broadcast_mul(&scale)?.broadcast_add(b)?;
    let y = if relu { y.relu()? } else { y };
    Ok((y, mean, var))
}

/// Per-channel sums over all rows, `k` accumulators per channel (`acc[i * c + j]`):
/// `per_block(rows, acc)` adds a block of rows into `acc`, blocks in parallel, then summed.
fn channel_sums<T: Real>(
    rows: usize,
    c: usize,
    k: usize,
    per_block: impl Fn(std::ops::Range<usize>, &mut [T]) + Sync,
) -> Vec<T> {
    let block = rows_per_task(c);
    (0..rows.div_ceil(block))
        .into_par_iter()
        .map(|i| {
            let mut acc = vec![T::zero(); k * c];
            per_block(i * block..((i + 1) * block).min(rows), &mut acc);
            acc
        })
        .reduce(
            || vec![T::zero(); k * c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, &b)| *a += b);
                a
            },
        )
}

/// Rows `rows` of a `_ × c` block.
fn row_block<T>(v: &[T], c: usize, rows: std::ops::Range<usize>) -> &[T] {
    &v[rows.start * c..rows.end * c]
}

/// Adds each row of `x` (rows as wide as `acc`) into `acc`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn add_rows<T: Real>(x: &[T], acc: &mut [T]) {
    for row in x.chunks_exact(acc.len()) {
        acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
    }
}

/// Adds each row's squared deviation from `mean` into `acc`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn add_squared_deviations<T: Real>(x: &[T], mean: &[T], acc: &mut [T]) {
    for row in x.chunks_exact(acc.len()) {
        for ((a, &v), &m) in acc.iter_mut().zip(row).zip(mean) {
            *a += (v - m) * (v - m);
        }
    }
}

/// Mean then biased variance of each channel of `rows × c` `x`, as a `2 × c` block (two passes,
/// so the variance does not cancel).
fn batch_stats<T: Real>(x: &[T], c: usize) -> Vec<T> {
    let rows = x.len() / c;
    let n = T::from(rows.max(1)).unwrap();
    let mut mean = channel_sums(rows, c, 1, |r, acc| add_rows(row_block(x, c, r), acc));
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = channel_sums(rows, c, 1, |r, acc| {
        add_squared_deviations(row_block(x, c, r), &mean, acc)
    });
    var.iter_mut().for_each(|v| *v /= n);
    mean.extend(var);
    mean
}

/// `g / sqrt(var + eps)` per channel: what multiplies the centred input.
fn bn_scale<T: Real>(g: &[T], var: &[T], eps: f64) -> Vec<T> {
    let eps = T::from(eps).unwrap();
    g.iter()
        .zip(var)
        .map(|(&g, &v)| g * (v + eps).sqrt().recip())
        .collect()
}

fn batch_norm_fwd<T: Real>(x: &[T], gb: &[T], stats: &[T], eps: f64, relu: bool) -> Vec<T> {
    let c = gb.len() / 2;
    assert!(c > 0 && x.len().is_multiple_of(c) && stats.len() == 2 * c);
    let (g, b) = gb.split_at(c);
    let (mean, var) = stats.split_at(c);
    let scale = bn_scale(g, var, eps);
    let mut y = Vec::with_capacity(x.len());
    let task = rows_per_task(c) * c;
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .for_each(|(y, x)| batch_norm_fwd_rows(y, x, (mean, &scale, b), relu));
    // SAFETY: the chunks of `y` and `x` pair up with equal lengths, whole rows of `c` each
    // (asserted), and `batch_norm_fwd_rows` writes every element of each row: `mean`, `scale`
    // and `b` all have `c` elements.
    unsafe { y.set_len(x.len()) };
    y
}

/// Rows of `batch_norm_fwd`: `(x − mean)·scale + b`, then the ReLU when asked.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn batch_norm_fwd_rows<T: Real>(
    y: &mut [MaybeUninit<T>],
    x: &[T],
    (mean, scale, b): (&[T], &[T], &[T]),
    relu: bool,
) {
    for (y, x) in y
        .chunks_exact_mut(mean.len())
        .zip(x.chunks_exact(mean.len()))
    {
        for ((((y, &x), &m), &s), &b) in y.iter_mut().zip(x).zip(mean).zip(scale).zip(b) {
            let v = (x - m) * s + b;
            y.write(if relu && v < T::zero() { T::zero() } else { v });
        }
    }
}

/// BatchNorm's per-channel parameters as its backward pass reads them, each `c` long.
struct BnBackward<'a, T> {
    g: &'a [T],
    b: &'a [T],
    mean: &'a [T],
    rstd: &'a [T],
    relu: bool,
}

impl<T: Real> BnBackward<'_, T> {
    /// `x̂` and the output gradient where the ReLU passed it, for channel `j` of one row.
    #[inline(always)]
    fn at(&self, x: &[T], dy: &[T], j: usize) -> (T, T) {
        let xhat = (x[j] - self.mean[j]) * self.rstd[j];
        let passed = !self.relu || xhat * self.g[j] + self.b[j] >= T::zero();
        (xhat, if passed { dy[j] } else { T::zero() })
    }
}

/// Adds each row's `d·x̂` and `d` into the two halves of `acc`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn add_bn_grad_sums<T: Real>(x: &[T], dy: &[T], p: &BnBackward<T>, acc: &mut [T]) {
    let c = p.g.len();
    let (sum_dxhat, sum_d) = acc.split_at_mut(c);
    let (sum_dxhat, sum_d) = (&mut sum_dxhat[..c], &mut sum_d[..c]);
    for (x, dy) in x.chunks_exact(c).zip(dy.chunks_exact(c)) {
        let (x, dy) = (&x[..c], &dy[..c]);
        for j in 0..c {
            let (xhat, d) = p.at(x, dy, j);
            sum_dxhat[j] += d * xhat;
            sum_d[j] += d;
        }
    }
}

/// `dx = gain · (d − mean_db − x̂·mean_dg)` row by row.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn batch_norm_bwd_rows<T: Real>(
    dx: &mut [T],
    (x, dy): (&[T], &[T]),
    p: &BnBackward<T>,
    (gain, mean_db, mean_dg): (&[T], &[T], &[T]),
) {
    let c = p.g.len();
    let (gain, mean_db, mean_dg) = (&gain[..c], &mean_db[..c], &mean_dg[..c]);
    let rows = dx
        .chunks_exact_mut(c)
        .zip(x.chunks_exact(c))
        .zip(dy.chunks_exact(c));
    for ((out, x), dy) in rows {
        let (out, x, dy) = (&mut out[..c], &x[..c], &dy[..c]);
        for j in 0..c {
            let (xhat, d) = p.at(x, dy, j);
            out[j] = gain[j] * (d - mean_db[j] - xhat * mean_dg[j]);
        }
    }
}

/// Gradients of training-mode BatchNorm (+ ReLU), as `rows + 2` rows of `c`: `dx`, `dg`, `db`.
/// With `x̂ = (x − μ)/σ`, `d` the output gradient where the ReLU passed it (at zero too, as
/// candle's ReLU does) and `N` rows: `dg = Σ d·x̂`, `db = Σ d`,
/// `dx = g/σ · (d − db/N − x̂·dg/N)`.
fn batch_norm_bwd<T: Real>(x: &[T], params: &[T], dy: &[T], eps: f64, relu: bool) -> Vec<T> {
    let c = params.len() / 4;
    let rows = x.len() / c;
    let (g, rest) = params.split_at(c);
    let (b, stats) = rest.split_at(c);
    let (mean, var) = stats.split_at(c);
    let eps_t = T::from(eps).unwrap();
    let rstd: Vec<T> = var.iter().map(|&v| (v + eps_t).sqrt().recip()).collect();
    let p = BnBackward {
        g: &g[..c],
        b: &b[..c],
        mean: &mean[..c],
        rstd: &rstd[..c],
        relu,
    };
    let sums = channel_sums(rows, c, 2, |r, acc| {
        add_bn_grad_sums(row_block(x, c, r.clone()), row_block(dy, c, r), &p, acc)
    });
    let n = T::from(rows.max(1)).unwrap();
    let mut out = vec![T::zero(); (rows + 2) * c];
    let (dx, tail) = out.split_at_mut(rows * c);
    tail.copy_from_slice(&sums);
    let (dg, db) = sums.split_at(c);
    // dx = g/σ · (d − db/N − x̂·dg/N), with the per-channel factors computed once.
    let gain: Vec<T> = p.g.iter().zip(p.rstd).map(|(&g, &r)| g * r).collect();
    let mean_db: Vec<T> = db.iter().map(|&v| v / n).collect();
    let mean_dg: Vec<T> = dg.iter().map(|&v| v / n).collect();
    let task = rows_per_task(c) * c;
    dx.par_chunks_mut(task)
        .zip(x.par_chunks(task).zip(dy.par_chunks(task)))
        .for_each(|(dx, xy)| batch_norm_bwd_rows(dx, xy, &p, (&gain, &mean_db, &mean_dg)));
    out
}

struct BatchStats;

impl CustomOp1 for BatchStats {
    fn name(&self) -> &'static str {
        "wit-batch-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c) = l.shape().dims2()?;
        let out = float_kernel!("batch_norm statistics", s, batch_stats(slice(s, l)?, c));
        Ok((out, Shape::from((2, c))))
    }
}

struct BatchNorm {
    eps: f64,
    relu: bool,
}

impl CustomOp3 for BatchNorm {
    fn name(&self) -> &'static str {
        "wit-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = float_kernel!(
            "batch_norm",
            s1,
            batch_norm_fwd(
                slice(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
                self.eps,
                self.relu
            )
        );
        Ok((out, l1.shape().clone()))
    }

    /// The statistics come in without a graph (`apply_op1_no_bwd`): their dependence on `x` is
    /// inside `batch_norm_bwd`'s formula.
    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        stats: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rows = x.dim(0)?;
        let params = Tensor::cat(&[gb, stats], 0)?;
        let op = BatchNormGrad {
            eps: self.eps,
            relu: self.relu,
        };
        let all = x.apply_op3_no_bwd(&params, &dy.contiguous()?, &op)?;
        let dx = all.narrow(0, 0, rows)?;
        let dgb = all.narrow(0, rows, 2)?;
        Ok((Some(dx), Some(dgb), None))
    }
}

struct BatchNormGrad {
    eps: f64,
    relu: bool,
}

impl CustomOp3 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "wit-batch-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, c) = l1.shape().dims2()?;
        let out = float_kernel!(
            "batch_norm backward",
            s1,
            batch_norm_bwd(
                slice(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
                self.eps,
                self.relu
            )
        );
        Ok((out, Shape::from((rows + 2, c))))
    }
}

/// Softmax from plain ops, for devices and dtypes the fused kernel does not take.
fn plain_softmax_last(x: &Tensor, causal: bool) -> Result<Tensor> {
    let dtype = x.dtype();
    // bf16 sums lose too much precision over long rows: normalise in f32.
    let x = match dtype {
        DType::BF16 | DType::F16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    };
    let x = match causal {
        true => x.broadcast_add(&causal_mask(x.dim(D::Minus1)?, x.dtype(), x.device())?)?,
        false => x,
    };
    // The max is detached: softmax does not depend on the shift.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)?.to_dtype(dtype)
}

/// `-inf` above the diagonal: token i attends to tokens 0..=i only.
fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (t, t), device)?.to_dtype(dtype)
}

/// `y = x Wᵀ + b` for `x` of shape `(rows, in)`, `W` `(out, in)` and `b` `(out)`.
///
/// On CPU one gemm adds `x Wᵀ` onto the bias rows, and the backward pass is three products
/// (`dx = dy W`, `dW = dyᵀ x`, `db = 1ᵀ dy`). Through candle the same layer is a transpose, a
/// matmul, a broadcast of the bias and an add, each a graph node with its own backward pass and
/// gradient buffers.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (w, b) = (w.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
    if fusable(x) || cuda_kernels(x) {
        return x
            .contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, Linear);
    }
    x.matmul(&w.t()?)? + rows_of(&b, x.dim(0)?)?
}

/// Repeats a vector over `rows` rows as the outer product `ones(rows, 1) · v`, so that the
/// gradient of `v` is a matrix product (fast gemm) rather than candle's slow reduction over the
/// leading dimension that `broadcast_add` backpropagates through.
fn rows_of(v: &Tensor, rows: usize) -> Result<Tensor> {
    let ones = Tensor::ones((rows, 1), v.dtype(), v.device())?;
    ones.matmul(&v.reshape((1, v.elem_count()))?)
}

/// `y = x Wᵀ + b`: `y` starts as copies of `b`, written by all threads into uninitialised memory
/// (one thread filling it was 3.7% of a `tiny` step on 2 cores, `perf`), and the product is
/// accumulated onto it.
fn linear_fwd<T: Real>(x: &[T], w: &[T], b: &[T]) -> Vec<T> {
    let (outputs, inputs) = (b.len(), w.len() / b.len().max(1));
    let rows = x.len() / inputs.max(1);
    let mut y = Vec::with_capacity(rows * outputs);
    if let Some(rows_per_task) = TASK_ELEMS.checked_div(outputs) {
        let rows_per_task = rows_per_task.max(1);
        y.spare_capacity_mut()[..rows * outputs]
            .par_chunks_mut(rows_per_task * outputs)
            .for_each(|chunk| {
                for row in chunk.chunks_exact_mut(outputs) {
                    row.write_copy_of_slice(b);
                }
            });
    }
    // SAFETY: every task's chunk is a whole number of `outputs`-wide rows, each written with a
    // copy of `b`, so all `rows · outputs` elements are initialised.
    unsafe { y.set_len(rows * outputs) };
    let threads = gemm::Parallelism::Rayon(rayon::current_num_threads());
    matmul(
        &mut y,
        (x, false),
        (w, true),
        (rows, outputs, inputs),
        T::one(),
        true,
        threads,
    );
    y
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "wit-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, outputs) = (l1.dims()[0], l3.shape().elem_count());
        if l1.dims().len() != 2 || l2.dims() != [outputs, l1.dims()[1]] {
            return Err(candle_core::Error::Msg(format!(
                "linear takes x (rows, in), W (out, in), b (out), got {:?}, {:?}, {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )));
        }
        let out = float_kernel!(
            "linear",
            s1,
            linear_fwd(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?)
        );
        Ok((out, Shape::from((rows, outputs))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::linear((s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, w, dy) = (x.detach(), w.detach(), dy.detach());
        let ones = Tensor::ones((1, dy.dim(0)?), dy.dtype(), dy.device())?;
        Ok((
            Some(dy.matmul(&w)?),
            Some(dy.t()?.matmul(&x)?),
            Some(ones.matmul(&dy)?.reshape(b.shape())?),
        ))
    }
}

/// Scaled dot-product attention `softmax(q kᵀ/√d) v` over `qkv` stacked as `(3, B, H, T, D)`,
/// giving `(B, H, T, D)`; with `causal`, query `i` sees keys `0..=i` only.
///
/// On CPU it runs as one op parallel over the `B·H` heads, each head's small matrix products
/// serial inside its task: through candle, every head is its own single-threaded gemm call from
/// one thread, the scores and probabilities are graph nodes with their own backward passes, and the
/// second core waits. The backward pass recomputes the probabilities (as flash attention does)
/// instead of keeping `B·H·T²` of them alive.
///
/// The model calls `attention_packed`, which skips this stack on CPU and builds it inside one op
/// on CUDA; the stacked op is the reference the packed op's test compares with, and its CUDA
/// products are the ones the packed op runs.
pub fn attention(qkv: &Tensor, causal: bool) -> Result<Tensor> {
    if fusable(qkv) || cuda_kernels(qkv) {
        return qkv.contiguous()?.apply_op1(Attention { causal });
    }
    let scale = (qkv.dim(D::Minus1)? as f64).powf(-0.5);
    let q = (qkv.get(0)? * scale)?;
    let (k, v) = (qkv.get(1)?, qkv.get(2)?);
    plain_softmax_last(&q.matmul(&k.t()?)?, causal)?.matmul(&v)
}

/// Multi-head attention straight from a linear layer's `(B, T, 3·C)` output (q, k, v side by
/// side, each `H` heads of `C/H`), as `(B, T, C)`, one graph node. On CPU it reads the heads in
/// place and writes them in place, so neither the `(3, B, H, T, D)` stack `attention` takes nor
/// the transpose back is ever copied, forward or backward; on CUDA two copy kernels move the
/// heads to that stack and back inside the op; with neither, it builds the stack from plain ops
/// and calls `attention`.
pub fn attention_packed(qkv: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    let (b, t, c3) = qkv.dims3()?;
    let c = c3 / 3;
    if fusable(qkv) || cuda_kernels(qkv) {
        return qkv
            .contiguous()?
            .apply_op1(PackedAttention { heads, causal });
    }
    let stack = qkv
        .reshape((b, t, 3, heads, c / heads))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    attention(&stack, causal)?
        .transpose(1, 2)?
        .reshape((b, t, c))
}

/// Rows `ids` (a 1-D u32 tensor) of a `(rows, width)` matrix, as `(ids.len(), width)`: candle's
/// `index_select` on dimension 0,
/// for the token embedding and the text tower's end-of-text features. Its backward adds each
/// output row's gradient into row `ids[j]`. On CUDA candle does that with `index_add`, one block
/// of threads walking every id in turn: 2.4 ms of a 57 ms ViT-B/32 step on an H200 (Nsight
/// Compute, 2026-11-28) for the 49,408-row token table; here it is one warp per id adding into an
/// f32 accumulator. On CPU the op runs candle's own `index_select` and `index_add`.
pub fn gather_rows(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if fusable(table) || cuda_kernels(table) {
        return table
            .contiguous()?
            .apply_op2(&ids.contiguous()?, GatherRows);
    }
    table.index_select(ids, 0)
}

struct GatherRows;

impl CustomOp2 for GatherRows {
    fn name(&self) -> &'static str {
        "wit-gather-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        gather(s1, l1, s2, l2)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        gather(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        table: &Tensor,
        ids: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = GatherRowsGrad {
            rows: table.dim(0)?,
        };
        Ok((Some(ids.apply_op2_no_bwd(&dy.contiguous()?, &grad)?), None))
    }
}

/// `GatherRows`' forward pass on any backend: candle's own row gather.
fn gather<S: BackendStorage>(table: &S, l1: &Layout, ids: &S, l2: &Layout) -> Result<(S, Shape)> {
    let (_, width) = l1.shape().dims2()?;
    let rows = table.index_select(ids, l1, l2, 0)?;
    Ok((rows, Shape::from((l2.shape().elem_count(), width))))
}

/// `GatherRows`' table gradient from the ids and the output gradient.
struct GatherRowsGrad {
    rows: usize,
}

impl CustomOp2 for GatherRowsGrad {
    fn name(&self) -> &'static str {
        "wit-gather-rows-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendDevice;
        let shape = Shape::from((self.rows, l2.shape().dims2()?.1));
        let zeros = candle_core::cpu_backend::CpuDevice.zeros_impl(&shape, s2.dtype())?;
        let grad = zeros.index_add(&Layout::contiguous(&shape), s1, l1, s2, l2, 0)?;
        Ok((grad, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::gather_rows_grad((s1, l1), (s2, l2), self.rows)
    }
}

/// `dst = beta · A · B` for `m×k` `A` and `k×n` `B`, each matrix given as a slice and its row and
/// column strides, so heads can be read from and written into wider rows; serial, overwriting.
fn strided_matmul<T: Real>(
    dst: (&mut [T], usize),
    a: (&[T], usize, usize),
    b: (&[T], usize, usize),
    dims: (usize, usize, usize),
    beta: T,
) {
    gemm_strided(dst, a, b, dims, beta, false, gemm::Parallelism::None);
}

/// `dst (m×n) = beta · A · B` (or `dst += …` with `accumulate`) for row-major `A` (`m×k`, or stored
/// `k×m` when `a_t`) and `B` (`k×n`, or stored `n×k` when `b_t`).
fn matmul<T: Real>(
    dst: &mut [T],
    (a, a_t): (&[T], bool),
    (b, b_t): (&[T], bool),
    (m, n, k): (usize, usize, usize),
    beta: T,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let a = if a_t { (a, 1, m) } else { (a, k, 1) };
    let b = if b_t { (b, 1, k) } else { (b, n, 1) };
    gemm_strided((dst, n), a, b, (m, n, k), beta, accumulate, parallelism);
}

/// `gemm` on matrices given as slices with row and column strides (`dst`'s columns adjacent),
/// every index the strides reach checked to lie inside its slice.
fn gemm_strided<T: Real>(
    (dst, dst_rs): (&mut [T], usize),
    (a, a_rs, a_cs): (&[T], usize, usize),
    (b, b_rs, b_cs): (&[T], usize, usize),
    (m, n, k): (usize, usize, usize),
    beta: T,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(m, dst_rs, n, 1) < dst.len());
    assert!(k == 0 || (last(m, a_rs, k, a_cs) < a.len() && last(k, b_rs, n, b_cs) < b.len()));
    // SAFETY: the asserts above keep every index the strides reach inside the three slices (with
    // `k` zero, `a` and `b` are not read), and `dst` is borrowed mutably, so it aliases neither.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::one(),
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// One head's product inside an already parallel loop: serial, overwriting `dst`.
fn head_matmul<T: Real>(
    dst: &mut [T],
    a: (&[T], bool),
    b: (&[T], bool),
    dims: (usize, usize, usize),
    beta: T,
) {
    matmul(dst, a, b, dims, beta, false, gemm::Parallelism::None);
}

/// Softmax of each row of the square `t×t` score block `s`, in place; causal rows see `0..=i`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn softmax_rows<T: Real>(s: &mut [T], t: usize, causal: bool) {
    for (i, row) in s.chunks_exact_mut(t).enumerate() {
        let seen = if causal { i + 1 } else { t };
        let (live, future) = row.split_at_mut(seen);
        let max = max_of(live);
        live.iter_mut().for_each(|x| *x = T::exp_fast(*x - max));
        let inv = sum_by(live, |x| x).recip();
        live.iter_mut().for_each(|x| *x *= inv);
        future.iter_mut().for_each(|x| *x = T::zero());
    }
}

/// `ds = P ∘ (dP − rowsum(dP ∘ P))` in place of `dP`, row by row of `t`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn softmax_bwd_rows<T: Real>(p: &[T], dp: &mut [T], t: usize) {
    for (p, ds) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)) {
        let dot = sum_by2(p, ds, |p, g| p * g);
        ds.iter_mut().zip(p).for_each(|(g, &p)| *g = p * (*g - dot));
    }
}

/// Shape of a `(3, B, H, T, D)` stack: heads `B·H`, `T`, `D`.
pub(crate) fn qkv_dims(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[3, b, h, t, d] => Ok((b * h, t, d)),
        dims => Err(candle_core::Error::Msg(format!(
            "attention takes q, k and v stacked as (3, B, H, T, D), got {dims:?}"
        ))),
    }
}

fn attention_fwd<T: Real>(qkv: &[T], (heads, t, d): (usize, usize, usize), causal: bool) -> Vec<T> {
    let mat = t * d;
    let (q, kv) = qkv.split_at(heads * mat);
    let (k, v) = kv.split_at(heads * mat);
    let scale = T::from(d).unwrap().sqrt().recip();
    let mut out = vec![T::zero(); heads * mat];
    out.par_chunks_mut(mat).enumerate().for_each_init(
        || vec![T::zero(); t * t],
        |p, (i, o)| {
            let head = i * mat..(i + 1) * mat;
            let (q, k, v) = (&q[head.clone()], &k[head.clone()], &v[head]);
            head_matmul(p, (q, false), (k, true), (t, t, d), scale);
            softmax_rows(p, t, causal);
            head_matmul(o, (p, false), (v, false), (t, d, t), T::one());
        },
    );
    out
}

/// Gradients of attention as a `(3, B, H, T, D)` stack, from `P = softmax(s)`, `s = q kᵀ/√d`:
/// `dv = Pᵀ do`, `dP = do vᵀ`, `ds = P ∘ (dP − rowsum(dP ∘ P))`, `dq = ds k/√d`, `dk = dsᵀ q/√d`.
fn attention_bwd<T: Real>(
    qkv: &[T],
    d_out: &[T],
    (heads, t, d): (usize, usize, usize),
    causal: bool,
) -> Vec<T> {
    let mat = t * d;
    let (q, kv) = qkv.split_at(heads * mat);
    let (k, v) = kv.split_at(heads * mat);
    let scale = T::from(d).unwrap().sqrt().recip();
    let mut grads = vec![T::zero(); 3 * heads * mat];
    let (dq, dkv) = grads.split_at_mut(heads * mat);
    let (dk, dv) = dkv.split_at_mut(heads * mat);
    dq.par_chunks_mut(mat)
        .zip(dk.par_chunks_mut(mat).zip(dv.par_chunks_mut(mat)))
        .enumerate()
        .for_each_init(
            || (vec![T::zero(); t * t], vec![T::zero(); t * t]),
            |(p, dp), (i, (dq, (dk, dv)))| {
                let head = i * mat..(i + 1) * mat;
                let (q, k, v) = (&q[head.clone()], &k[head.clone()], &v[head.clone()]);
                let d_out = &d_out[head];
                head_matmul(p, (q, false), (k, true), (t, t, d), scale);
                softmax_rows(p, t, causal);
                head_matmul(dv, (p, true), (d_out, false), (t, d, t), T::one());
                head_matmul(dp, (d_out, false), (v, true), (t, t, d), T::one());
                softmax_bwd_rows(p, dp, t);
                head_matmul(dq, (dp, false), (k, false), (t, d, t), scale);
                head_matmul(dk, (dp, true), (q, false), (t, d, t), scale);
            },
        );
    grads
}

/// Shape of a packed `(B, T, 3·C)` attention input: `(B, T, C, H)`.
pub(crate) fn packed_dims(l: &Layout, heads: usize) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[b, t, c3] if heads > 0 && c3 % (3 * heads) == 0 => Ok((b, t, c3 / 3, heads)),
        dims => Err(candle_core::Error::Msg(format!(
            "packed attention takes (B, T, 3·C) with C a multiple of {heads} heads, got {dims:?}"
        ))),
    }
}

/// `attention_fwd` on the packed layout, one batch item per task: head `h` of q, k and v are the
/// columns `h·D..`, `C + h·D..` and `2C + h·D..` of the item's `(T, 3C)` rows, and its output
/// goes to columns `h·D..` of the item's `(T, C)` rows.
fn packed_attention_fwd<T: Real>(
    qkv: &[T],
    (b, t, c, heads): (usize, usize, usize, usize),
    causal: bool,
) -> Vec<T> {
    let d = c / heads;
    let scale = T::from(d).unwrap().sqrt().recip();
    let mut out = vec![T::zero(); b * t * c];
    out.par_chunks_mut(t * c)
        .zip(qkv.par_chunks(t * 3 * c))
        .for_each_init(
            || vec![T::zero(); t * t],
            |p, (o, x)| {
                for h in 0..heads {
                    let (q, k, v) = (&x[h * d..], &x[c + h * d..], &x[2 * c + h * d..]);
                    let dims = (t, t, d);
                    strided_matmul((p, t), (q, 3 * c, 1), (k, 1, 3 * c), dims, scale);
                    softmax_rows(p, t, causal);
                    let o = (&mut o[h * d..], c);
                    strided_matmul(o, (p, t, 1), (v, 3 * c, 1), (t, d, t), T::one());
                }
            },
        );
    out
}

/// `attention_bwd` on the packed layout: the gradient as `(B, T, 3C)`, dq, dk and dv of head `h`
/// in the columns its q, k and v came from.
fn packed_attention_bwd<T: Real>(
    qkv: &[T],
    d_out: &[T],
    (b, t, c, heads): (usize, usize, usize, usize),
    causal: bool,
) -> Vec<T> {
    let d = c / heads;
    let scale = T::from(d).unwrap().sqrt().recip();
    let mut grads = vec![T::zero(); b * t * 3 * c];
    grads
        .par_chunks_mut(t * 3 * c)
        .zip(qkv.par_chunks(t * 3 * c).zip(d_out.par_chunks(t * c)))
        .for_each_init(
            || (vec![T::zero(); t * t], vec![T::zero(); t * t]),
            |(p, dp), (g, (x, d_out))| {
                let row = 3 * c;
                for h in 0..heads {
                    let (q, k, v) = (&x[h * d..], &x[c + h * d..], &x[2 * c + h * d..]);
                    let d_o = &d_out[h * d..];
                    strided_matmul((p, t), (q, row, 1), (k, 1, row), (t, t, d), scale);
                    softmax_rows(p, t, causal);
                    let dv = (&mut g[2 * c + h * d..], row);
                    strided_matmul(dv, (p, 1, t), (d_o, c, 1), (t, d, t), T::one());
                    strided_matmul((dp, t), (d_o, c, 1), (v, 1, row), (t, t, d), T::one());
                    softmax_bwd_rows(p, dp, t);
                    let dq = (&mut g[h * d..], row);
                    strided_matmul(dq, (dp, t, 1), (k, row, 1), (t, d, t), scale);
                    let dk = (&mut g[c + h * d..], row);
                    strided_matmul(dk, (dp, 1, t), (q, row, 1), (t, d, t), scale);
                }
            },
        );
    grads
}

struct PackedAttention {
    heads: usize,
    causal: bool,
}

impl CustomOp1 for PackedAttention {
    fn name(&self) -> &'static str {
        "wit-packed-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = packed_dims(l, self.heads)?;
        let out = float_kernel!(
            "packed attention",
            s,
            packed_attention_fwd(slice(s, l)?, dims, self.causal)
        );
        let (b, t, c, _) = dims;
        Ok((out, Shape::from((b, t, c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::packed_attention(s, l, self.heads, self.causal)
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, d_out: &Tensor) -> Result<Option<Tensor>> {
        let grad = PackedAttentionGrad {
            heads: self.heads,
            causal: self.causal,
        };
        Ok(Some(qkv.apply_op2_no_bwd(&d_out.contiguous()?, &grad)?))
    }
}

struct PackedAttentionGrad {
    heads: usize,
    causal: bool,
}

impl CustomOp2 for PackedAttentionGrad {
    fn name(&self) -> &'static str {
        "wit-packed-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = packed_dims(l1, self.heads)?;
        let out = float_kernel!(
            "packed attention backward",
            s1,
            packed_attention_bwd(slice(s1, l1)?, slice(s2, l2)?, dims, self.causal)
        );
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::packed_attention_grad((s1, l1), (s2, l2), self.heads, self.causal)
    }
}

struct Attention {
    causal: bool,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "wit-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = qkv_dims(l)?;
        let out = float_kernel!(
            "attention",
            s,
            attention_fwd(slice(s, l)?, dims, self.causal)
        );
        Ok((out, Shape::from(&l.dims()[1..])))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::attention(s, l, self.causal)
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, d_out: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(qkv.apply_op2_no_bwd(
            &d_out.contiguous()?,
            &AttentionGrad {
                causal: self.causal,
            },
        )?))
    }
}

struct AttentionGrad {
    causal: bool,
}

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "wit-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = qkv_dims(l1)?;
        let out = float_kernel!(
            "attention backward",
            s1,
            attention_bwd(slice(s1, l1)?, slice(s2, l2)?, dims, self.causal,)
        );
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::attention_grad((s1, l1), (s2, l2), self.causal)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Var;

    /// A seeded random tensor: values spread over ±3, where GELU and softmax curve most.
    fn random(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-3.0..3.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    /// The largest absolute elementwise difference of two tensors of one shape.
    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Value and gradients (w.r.t. each input) of `Σ f(inputs) · weights` in f64: a random
    /// linear read-out, so every output element's gradient is checked.
    fn value_and_grads(
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
    ) -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&tensors).unwrap();
        let weights = random(y.dims(), 99, y.dtype());
        let grads = (&y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = tensors
            .iter()
            .map(|t| grads.get(t).unwrap().clone())
            .collect();
        (y, g)
    }

    /// The fused op and its plain-op twin agree in value and in every input's gradient (f64, so
    /// only a wrong formula, not rounding, can tell them apart).
    fn assert_matches_plain(
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        plain: impl Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
    ) {
        let (y_fused, g_fused) = value_and_grads(fused, inputs);
        let (y_plain, g_plain) = value_and_grads(plain, inputs);
        assert!(max_abs_diff(&y_fused, &y_plain) < 1e-12, "values differ");
        for (i, (a, b)) in g_fused.iter().zip(&g_plain).enumerate() {
            let diff = max_abs_diff(a, b);
            assert!(diff < 1e-10, "gradient of input {i} differs by {diff}");
        }
    }

    #[test]
    fn gelu_and_its_gradient_match_the_plain_ops() {
        let x = random(&[3, 5, 70], 1, DType::F64);
        // Spelled out through `erf`: candle's own `gelu_erf` backward rounds 1/√(2π) to 0.398942.
        let exact = |t: &[Tensor]| {
            let cdf = ((t[0].affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?.erf()? + 1.0)? * 0.5)?;
            &t[0] * cdf
        };
        assert_matches_plain(|t| gelu(&t[0]), exact, &[x]);
    }

    #[test]
    fn im2col_and_its_gradient_match_the_plain_ops() {
        // Odd and even sides, strides 1 and 2, 1×1 and 3×3 windows: every border case.
        for (h, w, k, stride) in [
            (8, 8, 3, 2),
            (7, 5, 3, 2),
            (6, 9, 3, 1),
            (5, 4, 1, 1),
            (4, 4, 3, 3),
        ] {
            let x = random(&[2 * h * w, 3], 12, DType::F64);
            assert_matches_plain(
                |t| im2col(&t[0], [2, h, w], k, stride),
                |t| plain_im2col(&t[0], [2, h, w], k, stride),
                &[x],
            );
        }
    }

    #[test]
    fn avg_pool_and_its_gradient_match_the_plain_ops() {
        // 6000 output rows of 5 channels span two parallel blocks.
        for (b, h, w, n) in [(2, 4, 6, 2), (1, 9, 3, 3), (3, 80, 100, 2)] {
            let x = random(&[b * h * w, 5], 16, DType::F64);
            assert_matches_plain(
                |t| avg_pool(&t[0], [b, h, w], n),
                |t| plain_avg_pool(&t[0], [b, h, w], n),
                &[x],
            );
        }
    }

    #[test]
    fn add_relu_and_its_gradients_match_the_plain_ops() {
        let (a, b) = (
            random(&[40, 33], 30, DType::F64),
            random(&[40, 33], 31, DType::F64),
        );
        assert_matches_plain(
            |t| add_relu(&t[0], &t[1]),
            |t| plain_add_relu(&t[0], &t[1]),
            &[a, b],
        );
    }

    #[test]
    fn batch_norm_and_its_three_gradients_match_the_plain_ops() {
        // 37 rows fit one parallel block of rows; 3000 rows of 8 channels span two.
        for (rows, relu) in [(37, false), (37, true), (3000, true)] {
            let x = random(&[rows, 8], 13, DType::F64);
            let g = random(&[8], 14, DType::F64);
            let b = random(&[8], 15, DType::F64);
            let inputs = [x, g, b];
            assert_matches_plain(
                |t| Ok(batch_norm(&t[0], &t[1], &t[2], 1e-5, relu)?.0),
                |t| Ok(plain_batch_norm(&t[0], &t[1], &t[2], 1e-5, relu)?.0),
                &inputs,
            );
            let (_, mean, var) =
                batch_norm(&inputs[0], &inputs[1], &inputs[2], 1e-5, relu).unwrap();
            let (_, want_mean, want_var) =
                plain_batch_norm(&inputs[0], &inputs[1], &inputs[2], 1e-5, relu).unwrap();
            assert!(max_abs_diff(&mean, &want_mean) < 1e-12);
            assert!(max_abs_diff(&var, &want_var) < 1e-12);
        }
    }

    #[test]
    fn layer_norm_and_its_three_gradients_match_the_plain_ops() {
        let x = random(&[4, 9, 24], 2, DType::F64);
        let g = random(&[24], 3, DType::F64);
        let b = random(&[24], 4, DType::F64);
        assert_matches_plain(
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-5),
            |t| plain_layer_norm(&t[0], &t[1], &t[2], 1e-5),
            &[x, g, b],
        );
    }

    #[test]
    fn linear_and_its_three_gradients_match_the_plain_ops() {
        let x = random(&[37, 12], 10, DType::F64);
        let w = random(&[9, 12], 11, DType::F64);
        let b = random(&[9], 12, DType::F64);
        assert_matches_plain(
            |t| linear(&t[0], &t[1], &t[2]),
            |t| t[0].matmul(&t[1].t()?)?.broadcast_add(&t[2]),
            &[x, w, b],
        );
    }

    #[test]
    fn attention_and_its_gradient_match_the_plain_ops_with_and_without_the_causal_mask() {
        for causal in [false, true] {
            let qkv = random(&[3, 2, 3, 7, 5], 5, DType::F64);
            assert_matches_plain(
                |t| attention(&t[0], causal),
                |t| {
                    let scale = (t[0].dim(D::Minus1)? as f64).powf(-0.5);
                    let q = (t[0].get(0)? * scale)?;
                    let (k, v) = (t[0].get(1)?, t[0].get(2)?);
                    plain_softmax_last(&q.matmul(&k.t()?)?, causal)?.matmul(&v)
                },
                &[qkv],
            );
        }
    }

    #[test]
    fn packed_attention_and_its_gradient_match_the_stacked_op() {
        for causal in [false, true] {
            let qkv = random(&[2, 7, 3 * 3 * 5], 12, DType::F64);
            assert_matches_plain(
                |t| attention_packed(&t[0], 3, causal),
                |t| {
                    let stack = t[0].reshape((2, 7, 3, 3, 5))?.permute((2, 0, 3, 1, 4))?;
                    attention(&stack.contiguous()?, causal)?
                        .transpose(1, 2)?
                        .reshape((2, 7, 15))
                },
                &[qkv],
            );
        }
    }

    #[test]
    fn gather_rows_and_its_gradient_match_index_select() {
        let table = random(&[40, 70], 31, DType::F64);
        let ids = Tensor::new(&[3u32, 0, 39, 3, 17, 3, 39], &Device::Cpu).unwrap();
        assert_matches_plain(
            |t| gather_rows(&t[0], &ids),
            |t| t[0].index_select(&ids, 0),
            &[table],
        );
    }

    #[test]
    fn causal_attention_never_reads_a_later_key() {
        let qkv = random(&[3, 1, 2, 6, 4], 6, DType::F32);
        let base = attention(&qkv, true).unwrap();
        // Change the last position's key and value: only the last query may see them.
        let mut values = qkv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (heads, t, d) = (2, 6, 4);
        for part in 1..3 {
            for h in 0..heads {
                let at = ((part * heads + h) * t + t - 1) * d;
                values[at..at + d].iter_mut().for_each(|x| *x += 5.0);
            }
        }
        let changed = Tensor::from_vec(values, qkv.shape(), &Device::Cpu).unwrap();
        let after = attention(&changed, true).unwrap();
        let early = |x: &Tensor| x.narrow(2, 0, t - 1).unwrap();
        assert_eq!(max_abs_diff(&early(&base), &early(&after)), 0.0);
        assert!(
            max_abs_diff(&base, &after) > 1e-3,
            "the last query must see it"
        );
    }

    #[test]
    fn fast_f32_exp_is_within_a_few_ulps_of_libm() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (fast, exact) = (f32::exp_fast(x), (x as f64).exp());
            let rel = ((fast as f64 - exact) / exact).abs();
            assert!(rel < 1e-6, "exp({x}) = {fast}, relative error {rel}");
        }
    }

    #[test]
    fn f32_kernels_and_gradients_stay_within_f32_rounding_of_the_f64_ones() {
        // Width 40: two full 16-lane chunks and a tail, so the partial sums' tails are read.
        let x = random(&[96, 40], 7, DType::F64);
        let g = random(&[40], 8, DType::F64);
        let b = random(&[40], 9, DType::F64);
        type Kernel = fn(&[Tensor]) -> Result<Tensor>;
        let cases: [(&str, Kernel, Vec<Tensor>); 3] = [
            ("gelu", |t| gelu(&t[0]), vec![x.clone()]),
            (
                "layer_norm",
                |t| layer_norm(&t[0], &t[1], &t[2], 1e-5),
                vec![x.clone(), g, b],
            ),
            (
                "attention",
                |t| attention(&t[0].reshape((3, 2, 2, 16, 20))?, true),
                vec![x],
            ),
        ];
        for (name, f, inputs) in cases {
            let single: Vec<Tensor> = inputs
                .iter()
                .map(|t| t.to_dtype(DType::F32).unwrap())
                .collect();
            let (y_exact, g_exact) = value_and_grads(f, &inputs);
            let (y_single, g_single) = value_and_grads(f, &single);
            let outputs =
                std::iter::once((&y_exact, &y_single)).chain(g_exact.iter().zip(&g_single));
            for (i, (exact, single)) in outputs.enumerate() {
                let scale = max_abs_diff(exact, &exact.zeros_like().unwrap());
                let diff = max_abs_diff(exact, &single.to_dtype(DType::F64).unwrap()) / scale;
                assert!(
                    diff < 1e-5,
                    "{name}, output {i}: f32 differs from f64 by {diff} of the largest"
                );
            }
        }
    }

    /// On a GPU (feature `cuda`): each CUDA kernel against the CPU kernel in f64 on the same
    /// random inputs, value and every input's gradient, by `‖cuda − cpu‖ / ‖cpu‖`, in f32 and
    /// bf16. Without a GPU it says so and checks nothing.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_kernels_match_the_cpu_kernels_in_value_and_gradient() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("no CUDA device: the CUDA kernels were not checked");
            return;
        };
        type Op = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;
        let cases: Vec<(&str, Op, Vec<Tensor>)> = vec![
            (
                "gelu",
                Box::new(|t| t[0].apply_op1(Gelu)),
                vec![random(&[300, 70], 20, DType::F64)],
            ),
            (
                "layer_norm",
                Box::new(|t| t[0].apply_op3(&t[1], &t[2], LayerNorm { eps: 1e-5 })),
                vec![
                    random(&[1000, 96], 21, DType::F64),
                    random(&[96], 22, DType::F64),
                    random(&[96], 23, DType::F64),
                ],
            ),
            (
                "linear",
                Box::new(|t| t[0].apply_op3(&t[1], &t[2], Linear)),
                vec![
                    random(&[300, 96], 24, DType::F64),
                    random(&[80, 96], 25, DType::F64),
                    random(&[80], 26, DType::F64),
                ],
            ),
            (
                "attention",
                Box::new(|t| t[0].apply_op1(Attention { causal: false })),
                vec![random(&[3, 4, 6, 50, 32], 27, DType::F64)],
            ),
            (
                "causal attention",
                Box::new(|t| t[0].apply_op1(Attention { causal: true })),
                vec![random(&[3, 4, 6, 77, 32], 28, DType::F64)],
            ),
            (
                "packed attention",
                Box::new(|t| attention_packed(&t[0], 6, false)),
                vec![random(&[5, 50, 3 * 6 * 24], 29, DType::F64)],
            ),
            (
                "causal packed attention",
                Box::new(|t| attention_packed(&t[0], 4, true)),
                vec![random(&[3, 77, 3 * 4 * 13], 30, DType::F64)],
            ),
            (
                "gather rows",
                Box::new(|t| {
                    let ids: Vec<u32> = (0..500u32).map(|i| (i * 7919) % 300).collect();
                    gather_rows(&t[0], &Tensor::new(ids, t[0].device())?)
                }),
                vec![random(&[300, 70], 32, DType::F64)],
            ),
        ];
        let relative = |a: &Tensor, b: &Tensor| {
            let a = a
                .to_device(&Device::Cpu)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let norm = |t: &Tensor| {
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
                    .sqrt()
            };
            norm(&(&a - b).unwrap()) / norm(b)
        };
        for (name, op, inputs) in &cases {
            let (y_ref, g_ref) = value_and_grads(op, inputs);
            for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 2e-2)] {
                let on_gpu: Vec<Tensor> = inputs
                    .iter()
                    .map(|t| t.to_dtype(dtype).unwrap().to_device(&gpu).unwrap())
                    .collect();
                let vars: Vec<Var> = on_gpu
                    .iter()
                    .map(|t| Var::from_tensor(t).unwrap())
                    .collect();
                let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
                let y = op(&tensors).unwrap();
                let weights = random(y.dims(), 99, DType::F64)
                    .to_dtype(dtype)
                    .unwrap()
                    .to_device(&gpu)
                    .unwrap();
                let grads = (&y.to_dtype(DType::F32).unwrap()
                    * weights.to_dtype(DType::F32).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
                let err = relative(&y, &y_ref);
                eprintln!("{name} {dtype:?}: value off by {err:.2e}");
                assert!(err < tol, "{name} {dtype:?}: value off by {err}");
                for (i, (t, r)) in tensors.iter().zip(&g_ref).enumerate() {
                    let err = relative(grads.get(t).unwrap(), r);
                    eprintln!("{name} {dtype:?}: gradient {i} off by {err:.2e}");
                    assert!(err < tol, "{name} {dtype:?}: gradient {i} off by {err}");
                }
            }
        }
    }
}
