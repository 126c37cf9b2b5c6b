//! `fused`'s ops on CUDA: GELU, LayerNorm, biased linear layers, attention (stacked or packed as
//! the q/k/v layer writes it) and row gathers, forward and backward, plus the optimiser's AdamW
//! update and gradient norm. Elementwise, row and copy work runs in the kernels of `kernels.cu`
//! (PTX from build.rs), matrix products in cuBLAS through candle's storage. Each op is one graph
//! node: through candle's plain ops the same layer is 5–25 nodes, and every node's backward pass
//! adds a zeroed buffer and a sum per input. `fused`'s CPU kernels are the reference the CUDA
//! tests compare these with.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
const MODULE: &str = "wit_kernels";
/// Threads per block; the row kernels give each row one warp, so a block holds `WARPS` rows.
const BLOCK: u32 = 256;
const WARPS: u32 = BLOCK / 32;
/// Grid-stride kernels need no more blocks than this to fill an H100 (132 SMs × 8 blocks).
const MAX_BLOCKS: usize = 1056;

fn error(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

/// The kernel-name suffix of a storage dtype.
fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => Err(error(format!(
            "wit CUDA kernels take f32 or bf16, got {other:?}"
        ))),
    }
}

/// Device address of the first element a contiguous layout describes.
fn address(s: &CudaStorage, l: &Layout) -> Result<u64> {
    let (start, _) = l
        .contiguous_offsets()
        .ok_or_else(|| error("wit CUDA kernels take contiguous tensors".into()))?;
    let stream = s.device.cuda_stream();
    let (base, size) = match &s.slice {
        CudaStorageSlice::F32(x) => (x.device_ptr(&stream).0, 4),
        CudaStorageSlice::BF16(x) => (x.device_ptr(&stream).0, 2),
        CudaStorageSlice::U32(x) => (x.device_ptr(&stream).0, 4),
        _ => {
            return Err(error(format!(
                "wit CUDA kernels take f32 or bf16 (u32 for ids), got {:?}",
                s.dtype()
            )))
        }
    };
    Ok(base + (start * size) as u64)
}

/// Uninitialised storage of `n` elements; every kernel writing it covers all of them.
fn alloc(dev: &CudaDevice, dtype: DType, n: usize) -> Result<(CudaStorage, u64)> {
    // SAFETY: the kernel launched next writes every element before anything reads them.
    let s = unsafe { dev.alloc_uninit(&Shape::from(n), dtype)? };
    let at = address(&s, &Layout::contiguous(n))?;
    Ok((s, at))
}

/// A kernel argument: device addresses, sizes and constants are all these kernels take.
#[derive(Clone, Copy)]
enum Arg {
    Ptr(u64),
    Size(u64),
    I64(i64),
    I32(i32),
    F32(f32),
}

/// Launches kernel `name` of the module (loaded on first use) on the device's stream.
///
/// Addresses go in raw, outside cudarc's per-slice event tracking: sound because candle runs
/// all of a device's work, these kernels included, on that one stream in issue order.
///
/// # Safety
/// `args` must match the kernel's parameters, and every address must hold the elements the
/// kernel reads or writes there.
unsafe fn launch(dev: &CudaDevice, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
    let f = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    let mut b = f.builder();
    for a in args {
        match a {
            Arg::Ptr(x) | Arg::Size(x) => b.arg(x),
            Arg::I64(x) => b.arg(x),
            Arg::I32(x) => b.arg(x),
            Arg::F32(x) => b.arg(x),
        };
    }
    // SAFETY: the caller vouches for the arguments.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// One block per `BLOCK` elements, capped: the elementwise kernels stride over the rest.
fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row.
fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(WARPS as usize).max(1) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Rows and width of a contiguous layout whose last dimension is the row.
fn rows_and_width(l: &Layout) -> (usize, usize) {
    let w = l.dims().last().copied().unwrap_or(1).max(1);
    (l.shape().elem_count() / w, w)
}

/// Exact GELU.
pub fn gelu(x: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let (dev, n) = (&x.device, l.shape().elem_count());
    let (y, y_at) = alloc(dev, x.dtype(), n)?;
    let name = format!("wit_gelu_fwd_{}", suffix(x.dtype())?);
    let args = [
        Arg::Ptr(address(x, l)?),
        Arg::Ptr(y_at),
        Arg::Size(n as u64),
    ];
    // SAFETY: x and y hold `n` elements of the kernel's type.
    unsafe { launch(dev, &name, elementwise(n), &args)? };
    Ok((y, l.shape().clone()))
}

/// GELU's input gradient from its input `x` and output gradient `dy`.
pub fn gelu_grad(
    x: &CudaStorage,
    lx: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (dev, n) = (&x.device, lx.shape().elem_count());
    same_elems(n, ldy, "gelu backward")?;
    same_dtype(&[x, dy], "gelu backward")?;
    let (dx, dx_at) = alloc(dev, x.dtype(), n)?;
    let name = format!("wit_gelu_bwd_{}", suffix(x.dtype())?);
    let args = [
        Arg::Ptr(address(x, lx)?),
        Arg::Ptr(address(dy, ldy)?),
        Arg::Ptr(dx_at),
        Arg::Size(n as u64),
    ];
    // SAFETY: x, dy and dx hold `n` elements of the kernel's type.
    unsafe { launch(dev, &name, elementwise(n), &args)? };
    Ok((dx, lx.shape().clone()))
}

/// Errs unless the operands share one dtype: the kernels read them all as one type.
fn same_dtype(operands: &[&CudaStorage], op: &str) -> Result<()> {
    match operands.windows(2).all(|w| w[0].dtype() == w[1].dtype()) {
        true => Ok(()),
        false => Err(error(format!(
            "{op}: operands differ in dtype ({:?})",
            operands.iter().map(|s| s.dtype()).collect::<Vec<_>>()
        ))),
    }
}

fn same_elems(n: usize, l: &Layout, op: &str) -> Result<()> {
    match l.shape().elem_count() == n {
        true => Ok(()),
        false => Err(error(format!(
            "{op}: operands differ in size ({n} vs {:?})",
            l.dims()
        ))),
    }
}

/// LayerNorm over the last dimension with gain `g` and bias `b` (both of the row's width).
pub fn layer_norm(
    (x, lx): (&CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    (bias, lb): (&CudaStorage, &Layout),
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    let (rows, w) = rows_and_width(lx);
    same_elems(w, lg, "layer_norm gain")?;
    same_elems(w, lb, "layer_norm bias")?;
    same_dtype(&[x, g, bias], "layer_norm")?;
    let (y, y_at) = alloc(&x.device, x.dtype(), rows * w)?;
    let name = format!("wit_ln_fwd_{}", suffix(x.dtype())?);
    let args = [
        Arg::Ptr(address(x, lx)?),
        Arg::Ptr(address(g, lg)?),
        Arg::Ptr(address(bias, lb)?),
        Arg::Ptr(y_at),
        Arg::I64(rows as i64),
        Arg::I32(w as i32),
        Arg::F32(eps as f32),
    ];
    // SAFETY: x and y hold rows·w elements, g and b w, all of the kernel's type.
    unsafe { launch(&x.device, &name, per_row(rows), &args)? };
    Ok((y, lx.shape().clone()))
}

/// Widest LayerNorm row the backward kernel's shared memory (2·w floats) takes.
const MAX_LN_WIDTH: usize = 6144;
/// Blocks of LayerNorm's backward pass: enough to fill the GPU, few enough that summing their
/// partial column sums stays cheap.
const LN_BWD_BLOCKS: usize = 528;

/// LayerNorm's gradients as `rows + 2` rows of `w`: `dx`, then `dg`, then `db` (the layout of
/// the CPU kernel's).
pub fn layer_norm_grad(
    (x, lx): (&CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    let (rows, w) = rows_and_width(lx);
    same_elems(w, lg, "layer_norm backward gain")?;
    same_elems(rows * w, ldy, "layer_norm backward")?;
    same_dtype(&[x, g, dy], "layer_norm backward")?;
    if w > MAX_LN_WIDTH {
        return Err(error(format!(
            "layer_norm backward on CUDA takes rows up to {MAX_LN_WIDTH} wide, got {w}"
        )));
    }
    let dev = &x.device;
    let per_block = rows.div_ceil(LN_BWD_BLOCKS).max(1);
    let blocks = rows.div_ceil(per_block).max(1);
    let (out, out_at) = alloc(dev, x.dtype(), (rows + 2) * w)?;
    let (partial, partial_at) = alloc(dev, DType::F32, blocks * 2 * w)?;
    let s = suffix(x.dtype())?;
    let rows_args = [
        Arg::Ptr(address(x, lx)?),
        Arg::Ptr(address(g, lg)?),
        Arg::Ptr(address(dy, ldy)?),
        Arg::Ptr(out_at),
        Arg::Ptr(partial_at),
        Arg::I64(rows as i64),
        Arg::I32(w as i32),
        Arg::F32(eps as f32),
        Arg::I32(per_block as i32),
    ];
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: (2 * w * 4) as u32,
    };
    // SAFETY: x, dy and out's first `rows` rows hold rows·w elements, g holds w; each of the
    // `blocks` blocks writes its own 2w floats of `partial`.
    unsafe { launch(dev, &format!("wit_ln_bwd_rows_{s}"), cfg, &rows_args)? };
    let sums_at = out_at + (rows * w * x.dtype().size_in_bytes()) as u64;
    let column_args = [
        Arg::Ptr(partial_at),
        Arg::Ptr(sums_at),
        Arg::I32(blocks as i32),
        Arg::I32(w as i32),
    ];
    // SAFETY: out's last two rows hold 2w elements from `sums_at`.
    unsafe {
        launch(
            dev,
            &format!("wit_ln_bwd_columns_{s}"),
            elementwise(2 * w),
            &column_args,
        )?
    };
    // Freed on the stream, after the kernels that read it.
    drop(partial);
    Ok((out, Shape::from((rows + 2, w))))
}

/// Softmax of `scale · x` over the last dimension; with `causal`, the rows are the queries of
/// square score blocks and row `i` of each block sees columns `0..=i`.
fn softmax(x: &CudaStorage, l: &Layout, scale: f64, causal: bool) -> Result<CudaStorage> {
    let (rows, t) = rows_and_width(l);
    let (y, y_at) = alloc(&x.device, x.dtype(), rows * t)?;
    let name = format!("wit_softmax_fwd_{}", suffix(x.dtype())?);
    let args = [
        Arg::Ptr(address(x, l)?),
        Arg::Ptr(y_at),
        Arg::I64(rows as i64),
        Arg::I32(t as i32),
        Arg::F32(scale as f32),
        Arg::I32(causal as i32),
    ];
    // SAFETY: x and y hold rows·t elements of the kernel's type.
    unsafe { launch(&x.device, &name, per_row(rows), &args)? };
    Ok(y)
}

/// The gradient of `softmax(scale · s)` with respect to `s`, from its output `y` and output
/// gradient `dy` (both contiguous, of the same shape).
fn softmax_grad(y: &CudaStorage, dy: &CudaStorage, l: &Layout, scale: f64) -> Result<CudaStorage> {
    let (rows, t) = rows_and_width(l);
    same_dtype(&[y, dy], "softmax backward")?;
    let (dx, dx_at) = alloc(&y.device, y.dtype(), rows * t)?;
    let name = format!("wit_softmax_bwd_{}", suffix(y.dtype())?);
    let args = [
        Arg::Ptr(address(y, l)?),
        Arg::Ptr(address(dy, l)?),
        Arg::Ptr(dx_at),
        Arg::I64(rows as i64),
        Arg::I32(t as i32),
        Arg::F32(scale as f32),
    ];
    // SAFETY: y, dy and dx hold rows·t elements of the kernel's type.
    unsafe { launch(&y.device, &name, per_row(rows), &args)? };
    Ok(dx)
}

/// `y = x Wᵀ + b` for `x` `(rows, in)`, `W` `(out, in)`, `b` `(out)`: one cuBLAS product, then
/// the bias added in place.
pub fn linear(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (&[rows, inputs], &[outputs, w_inputs]) = (lx.dims(), lw.dims()) else {
        return Err(error(format!(
            "linear takes x (rows, in) and W (out, in), got {:?} and {:?}",
            lx.dims(),
            lw.dims()
        )));
    };
    if w_inputs != inputs || lb.shape().elem_count() != outputs {
        return Err(error(format!(
            "linear: x {:?}, W {:?} and b {:?} do not fit",
            lx.dims(),
            lw.dims(),
            lb.dims()
        )));
    }
    same_dtype(&[x, w, b], "linear")?;
    let y = x.matmul(w, (1, rows, outputs, inputs), lx, &lw.transpose(0, 1)?)?;
    let name = format!("wit_add_rows_{}", suffix(x.dtype())?);
    let args = [
        Arg::Ptr(address(&y, &Layout::contiguous(rows * outputs))?),
        Arg::Ptr(address(b, lb)?),
        Arg::I64(rows as i64),
        Arg::I32(outputs as i32),
    ];
    let cfg = LaunchConfig {
        grid_dim: (rows.clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: y holds rows·out elements, b out, of the kernel's type; y is ours alone.
    unsafe { launch(&x.device, &name, cfg, &args)? };
    Ok((y, Shape::from((rows, outputs))))
}

/// Where q, k and v sit in a contiguous `(3, B, H, T, D)` stack, as `(B·H, T, D)` batches.
struct Heads {
    batch: usize,
    t: usize,
    d: usize,
    offset: usize,
}

impl Heads {
    fn of(l: &Layout) -> Result<Heads> {
        let (batch, t, d) = crate::fused::qkv_dims(l)?;
        let offset = l
            .contiguous_offsets()
            .ok_or_else(|| error("attention takes a contiguous stack".into()))?
            .0;
        Ok(Heads {
            batch,
            t,
            d,
            offset,
        })
    }

    fn mat(&self) -> usize {
        self.batch * self.t * self.d
    }

    /// Part `i` (0 q, 1 k, 2 v) as `(B·H, T, D)`.
    fn part(&self, i: usize) -> Layout {
        Layout::contiguous_with_offset((self.batch, self.t, self.d), self.offset + i * self.mat())
    }

    /// Part `i` transposed, `(B·H, D, T)`, without a copy (cuBLAS reads it transposed).
    fn part_t(&self, i: usize) -> Layout {
        let (t, d) = (self.t, self.d);
        Layout::new(
            (self.batch, d, t).into(),
            vec![t * d, 1, d],
            self.offset + i * self.mat(),
        )
    }

    /// A contiguous `(B·H, T, T)` score block.
    fn scores(&self) -> Layout {
        Layout::contiguous((self.batch, self.t, self.t))
    }

    /// A score block transposed, `(B·H, T, T)` read column-major.
    fn scores_t(&self) -> Layout {
        let t = self.t;
        Layout::new((self.batch, t, t).into(), vec![t * t, 1, t], 0)
    }

    fn scale(&self) -> f64 {
        (self.d as f64).powf(-0.5)
    }

    /// `P = softmax(q kᵀ/√d)` (causal: query i sees keys 0..=i).
    fn probabilities(&self, qkv: &CudaStorage, causal: bool) -> Result<CudaStorage> {
        let (b, t, d) = (self.batch, self.t, self.d);
        let s = qkv.matmul(qkv, (b, t, t, d), &self.part(0), &self.part_t(1))?;
        softmax(&s, &self.scores(), self.scale(), causal)
    }

    /// `dq`, `dk` and `dv`, each `(B·H, T, D)` from offset zero, from the stack and the output
    /// gradient (`d_out_l` its `(B·H, T, D)` layout), recomputing `P` rather than keeping it from
    /// the forward pass: `dv = Pᵀ do`, `dP = do vᵀ`, `ds = ∂softmax(dP)`, `dq = ds k`,
    /// `dk = dsᵀ q`.
    fn grads(
        &self,
        qkv: &CudaStorage,
        (d_out, d_out_l): (&CudaStorage, &Layout),
        causal: bool,
    ) -> Result<[CudaStorage; 3]> {
        let (b, t, d) = (self.batch, self.t, self.d);
        let p = self.probabilities(qkv, causal)?;
        let dv = p.matmul(d_out, (b, t, d, t), &self.scores_t(), d_out_l)?;
        let dp = d_out.matmul(qkv, (b, t, t, d), d_out_l, &self.part_t(2))?;
        let ds = softmax_grad(&p, &dp, &self.scores(), self.scale())?;
        let dq = ds.matmul(qkv, (b, t, d, t), &self.scores(), &self.part(1))?;
        let dk = ds.matmul(qkv, (b, t, d, t), &self.scores_t(), &self.part(0))?;
        Ok([dq, dk, dv])
    }
}

/// Attention over a `(3, B, H, T, D)` stack of q, k and v: `softmax(q kᵀ/√d) v` as `(B, H, T, D)`.
pub fn attention(qkv: &CudaStorage, l: &Layout, causal: bool) -> Result<(CudaStorage, Shape)> {
    let heads = Heads::of(l)?;
    let (b, t, d) = (heads.batch, heads.t, heads.d);
    let p = heads.probabilities(qkv, causal)?;
    let out = p.matmul(qkv, (b, t, d, t), &heads.scores(), &heads.part(2))?;
    Ok((out, Shape::from(&l.dims()[1..])))
}

/// Attention's gradient as a `(3, B, H, T, D)` stack (dq, dk, dv) from the stack and the output
/// gradient `d_out`.
pub fn attention_grad(
    (qkv, l): (&CudaStorage, &Layout),
    (d_out, l_out): (&CudaStorage, &Layout),
    causal: bool,
) -> Result<(CudaStorage, Shape)> {
    let heads = Heads::of(l)?;
    let mat = heads.mat();
    same_elems(mat, l_out, "attention backward")?;
    same_dtype(&[qkv, d_out], "attention backward")?;
    let d_out_l = Layout::contiguous_with_offset(
        (heads.batch, heads.t, heads.d),
        l_out
            .contiguous_offsets()
            .ok_or_else(|| error("attention backward takes a contiguous gradient".into()))?
            .0,
    );
    let parts = heads.grads(qkv, (d_out, &d_out_l), causal)?;
    // SAFETY: each of the three copies below writes its own third of `grads` entirely.
    let mut grads = unsafe {
        qkv.device
            .alloc_uninit(&Shape::from(3 * mat), qkv.dtype())?
    };
    for (i, part) in parts.iter().enumerate() {
        part.copy2d(&mut grads, 1, mat, mat, mat, 0, i * mat)?;
    }
    Ok((grads, l.shape().clone()))
}

/// Sizes of the packed `(B, T, P·H·D)` layout a linear layer writes: q, k and v side by side
/// (`P` = 3), or one tensor of heads (`P` = 1).
struct Packed {
    batch: usize,
    t: usize,
    heads: usize,
    d: usize,
}

impl Packed {
    fn rows(&self, parts: usize) -> usize {
        parts * self.batch * self.heads * self.t
    }

    /// The copy kernel for a head's row of `dtype` between addresses `x` and `y`: the widest unit
    /// (16, 8, 4 or 2 bytes) that divides the row and both addresses, and the units per row.
    fn unit(&self, dtype: DType, x: u64, y: u64) -> (usize, usize) {
        let row = self.d * dtype.size_in_bytes();
        let unit = [16, 8, 4]
            .into_iter()
            .find(|&u| row.is_multiple_of(u) && [x, y].iter().all(|a| a.is_multiple_of(u as u64)))
            .unwrap_or(2);
        (unit, row / unit)
    }

    /// The launch over `n` units: the kernels index them in 32 bits.
    fn copy_launch(&self, n: usize) -> Result<LaunchConfig> {
        match i32::try_from(n) {
            Ok(_) => Ok(elementwise(n)),
            Err(_) => Err(error(format!(
                "attention's head copies index {n} units in 32 bits; use a smaller batch"
            ))),
        }
    }

    /// `x`, packed with `parts` parts, as a fresh `(P, B, H, T, D)` stack.
    fn split(&self, (x, lx): (&CudaStorage, &Layout), parts: usize) -> Result<CudaStorage> {
        let n = self.rows(parts) * self.d;
        same_elems(n, lx, "split heads")?;
        let (y, y_at) = alloc(&x.device, x.dtype(), n)?;
        let x_at = address(x, lx)?;
        let (unit, units) = self.unit(x.dtype(), x_at, y_at);
        let args = [
            Arg::Ptr(x_at),
            Arg::Ptr(y_at),
            Arg::I32(self.batch as i32),
            Arg::I32(self.t as i32),
            Arg::I32(parts as i32),
            Arg::I32(self.heads as i32),
            Arg::I32(units as i32),
        ];
        let cfg = self.copy_launch(self.rows(parts) * units)?;
        // SAFETY: x and y hold `n` elements, rows·units units of `unit` bytes, each address a
        // multiple of `unit`; the kernel writes each unit of y once.
        unsafe { launch(&x.device, &format!("wit_split_heads_{unit}"), cfg, &args)? };
        Ok(y)
    }

    /// Writes `x`, a `(B, H, T, D)` tensor from offset zero, into part `part` of `y_at`, a packed
    /// layout of `parts` parts.
    fn merge(&self, x: &CudaStorage, y_at: u64, (parts, part): (usize, usize)) -> Result<()> {
        assert!(part < parts, "merge heads: part {part} of {parts}");
        let x_at = address(x, &Layout::contiguous(self.rows(1) * self.d))?;
        let (unit, units) = self.unit(x.dtype(), x_at, y_at);
        let args = [
            Arg::Ptr(x_at),
            Arg::Ptr(y_at),
            Arg::I32(self.batch as i32),
            Arg::I32(self.t as i32),
            Arg::I32(parts as i32),
            Arg::I32(part as i32),
            Arg::I32(self.heads as i32),
            Arg::I32(units as i32),
        ];
        let cfg = self.copy_launch(self.rows(1) * units)?;
        // SAFETY: x holds B·H·T·D elements and y (the caller's) `parts` times that, both at
        // multiples of `unit` bytes; `part < parts`.
        unsafe { launch(&x.device, &format!("wit_merge_heads_{unit}"), cfg, &args) }
    }

    /// The `(3, B, H, T, D)` stack's layout, and where its heads are.
    fn heads(&self) -> Result<Heads> {
        Heads::of(&Layout::contiguous((
            3, self.batch, self.heads, self.t, self.d,
        )))
    }
}

fn packed(l: &Layout, heads: usize) -> Result<Packed> {
    let (batch, t, c, heads) = crate::fused::packed_dims(l, heads)?;
    Ok(Packed {
        batch,
        t,
        heads,
        d: c / heads,
    })
}

/// Multi-head attention on a linear layer's `(B, T, 3·C)` output, as `(B, T, C)`: the heads are
/// split into the stack the per-head products read and the result merged back by two copy
/// kernels, where candle's strided copies (the permutes around `attention`, forward and backward)
/// were 22% of a ViT-B/32 step on an H200 (Nsight Compute, 2026-11-28).
pub fn packed_attention(
    qkv: &CudaStorage,
    l: &Layout,
    heads: usize,
    causal: bool,
) -> Result<(CudaStorage, Shape)> {
    let p = packed(l, heads)?;
    let stack = p.split((qkv, l), 3)?;
    let stack_l = Layout::contiguous((3, p.batch, p.heads, p.t, p.d));
    let (out, _) = attention(&stack, &stack_l, causal)?;
    let (y, y_at) = alloc(&qkv.device, qkv.dtype(), p.rows(1) * p.d)?;
    p.merge(&out, y_at, (1, 0))?;
    Ok((y, Shape::from((p.batch, p.t, p.heads * p.d))))
}

/// `packed_attention`'s gradient, `(B, T, 3·C)`, from its input and output gradient `(B, T, C)`.
pub fn packed_attention_grad(
    (qkv, l): (&CudaStorage, &Layout),
    (d_out, l_out): (&CudaStorage, &Layout),
    heads: usize,
    causal: bool,
) -> Result<(CudaStorage, Shape)> {
    let p = packed(l, heads)?;
    same_dtype(&[qkv, d_out], "packed attention backward")?;
    let stack = p.split((qkv, l), 3)?;
    let d_stack = p.split((d_out, l_out), 1)?;
    let d_stack_l = Layout::contiguous((p.batch * p.heads, p.t, p.d));
    let parts = p.heads()?.grads(&stack, (&d_stack, &d_stack_l), causal)?;
    let (grads, grads_at) = alloc(&qkv.device, qkv.dtype(), p.rows(3) * p.d)?;
    for (i, part) in parts.iter().enumerate() {
        p.merge(part, grads_at, (3, i))?;
    }
    Ok((grads, l.shape().clone()))
}

/// `gather_rows`' gradient, `(rows, width)`: row `j` of `dy` added into row `ids[j]`, in an f32
/// accumulator (one warp per id, atomics where ids repeat), then rounded once to `dy`'s dtype.
/// Ids past the table add nothing: the forward pass's `index_select` asserts on them, except
/// `u32::MAX`, which it reads as a row of zeros.
pub fn gather_rows_grad(
    (ids, l_ids): (&CudaStorage, &Layout),
    (dy, l_dy): (&CudaStorage, &Layout),
    rows: usize,
) -> Result<(CudaStorage, Shape)> {
    let (n, width) = rows_and_width(l_dy);
    same_elems(n, l_ids, "gather rows backward: ids")?;
    if ids.dtype() != DType::U32 {
        return Err(error(format!(
            "gather rows backward takes u32 ids, got {:?}",
            ids.dtype()
        )));
    }
    let dev = &dy.device;
    let size = rows * width;
    let acc = dev.alloc_zeros::<f32>(size)?;
    let acc_at = acc.device_ptr(&dev.cuda_stream()).0;
    let args = [
        Arg::Ptr(address(ids, l_ids)?),
        Arg::Ptr(address(dy, l_dy)?),
        Arg::Ptr(acc_at),
        Arg::I64(n as i64),
        Arg::I32(width as i32),
        Arg::I64(rows as i64),
    ];
    let name = format!("wit_gather_rows_bwd_{}", suffix(dy.dtype())?);
    // SAFETY: ids holds n u32, dy n·width elements of the kernel's type, acc rows·width f32; the
    // kernel skips ids ≥ rows.
    unsafe { launch(dev, &name, per_row(n), &args)? };
    let shape = Shape::from((rows, width));
    let acc = CudaStorage {
        slice: CudaStorageSlice::F32(acc),
        device: dev.clone(),
    };
    if dy.dtype() == DType::F32 {
        return Ok((acc, shape));
    }
    let (grad, grad_at) = alloc(dev, DType::BF16, size)?;
    let args = [Arg::Ptr(acc_at), Arg::Ptr(grad_at), Arg::Size(size as u64)];
    // SAFETY: acc holds `size` f32 and grad `size` bf16; acc lives until after the launch.
    unsafe { launch(dev, "wit_f32_to_bf16", elementwise(size), &args)? };
    drop(acc);
    Ok((grad, shape))
}

/// The CUDA storage behind a contiguous tensor of `dtype`: its device and address; `None`
/// elsewhere.
fn cuda_storage(t: &Tensor, dtype: DType) -> Option<(CudaDevice, u64)> {
    if t.dtype() != dtype || !t.is_contiguous() {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => Some((s.device.clone(), address(s, layout).ok()?)),
        _ => None,
    }
}

fn cuda_f32(t: &Tensor) -> Option<(CudaDevice, u64)> {
    cuda_storage(t, DType::F32)
}

fn cuda_bf16(t: &Tensor) -> Option<u64> {
    cuda_storage(t, DType::BF16).map(|(_, at)| at)
}

/// AdamW's constants for one update, as the kernel takes them.
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// Moment decays.
    pub betas: (f64, f64),
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Bias corrections `1 − β^t`.
    pub corrections: (f64, f64),
    /// The parameter's multiplier before the step: `1 − lr·wd`, or 1 without decay.
    pub decay: f64,
    /// The gradient's multiplier (clipping).
    pub grad_scale: f64,
}

/// Updates parameter `p` and its moments `m`, `v` in place from gradient `g` (`[p, m, v, g]`),
/// and rewrites `mirror`, the parameter's bf16 copy, from the result: one launch. Returns
/// `false`, touching nothing, unless the four are contiguous f32 CUDA tensors of one size and
/// the mirror a contiguous bf16 CUDA tensor of that size.
pub fn adamw(state: [&Tensor; 4], mirror: Option<&Tensor>, s: &AdamWStep) -> Result<bool> {
    let n = state[0].elem_count();
    if state.iter().any(|t| t.elem_count() != n) {
        return Ok(false);
    }
    let [Some((dev, p_at)), Some((_, m_at)), Some((_, v_at)), Some((_, g_at))] =
        state.map(cuda_f32)
    else {
        return Ok(false);
    };
    let mirror_at = match mirror {
        None => 0,
        Some(t) if t.elem_count() == n => match cuda_bf16(t) {
            Some(at) => at,
            None => return Ok(false),
        },
        Some(_) => return Ok(false),
    };
    let constants = [
        s.lr,
        s.betas.0,
        s.betas.1,
        s.eps,
        s.corrections.0,
        s.corrections.1,
        s.decay,
        s.grad_scale,
    ]
    .map(|x| Arg::F32(x as f32));
    let mut args = vec![
        Arg::Ptr(p_at),
        Arg::Ptr(m_at),
        Arg::Ptr(v_at),
        Arg::Ptr(g_at),
        Arg::Ptr(mirror_at),
        Arg::Size(n as u64),
    ];
    args.extend(constants);
    // SAFETY: the four buffers hold `n` f32 each, the mirror (if not null) `n` bf16. p, m, v and
    // the mirror are written in place, as `Var::set` would write p and the mirror: the optimiser
    // owns m and v, and every launch is on the device's one stream, so nothing reads them meanwhile.
    unsafe { launch(&dev, "wit_adamw_f32", elementwise(n), &args)? };
    Ok(true)
}

/// `Σ g²` over every gradient, accumulated on the GPU and read back once; `None` unless all are
/// contiguous f32 CUDA tensors.
pub fn sum_squares<'a>(grads: impl Iterator<Item = &'a Tensor>) -> Result<Option<f64>> {
    let mut parts = Vec::new();
    for g in grads {
        let Some((dev, at)) = cuda_f32(g) else {
            return Ok(None);
        };
        parts.push((dev, at, g.elem_count()));
    }
    let Some(dev) = parts.first().map(|p| p.0.clone()) else {
        return Ok(Some(0.0));
    };
    let sum = dev.alloc_zeros::<f32>(1)?;
    let sum_at = sum.device_ptr(&dev.cuda_stream()).0;
    for (_, at, n) in parts {
        let args = [Arg::Ptr(at), Arg::Size(n as u64), Arg::Ptr(sum_at)];
        // SAFETY: `at` holds `n` f32, `sum_at` one.
        unsafe { launch(&dev, "wit_sum_squares_f32", elementwise(n), &args)? };
    }
    Ok(Some(dev.clone_dtoh(&sum)?[0] as f64))
}
