//! CLIP written from differentiable candle ops: a ViT image tower (or the ResNet of `resnet`) and a
//! causal text transformer whose parameters carry Hugging Face `CLIPModel` names, so export is a
//! plain save.
//!
//! candle 0.11's fused `LayerNorm`, `layer_norm`, `softmax_last_dim` and `sdpa` have no backward; this
//! module uses none of them. LayerNorm, attention, GELU and biased linear layers come from `fused`,
//! whose CPU kernels carry their own backward passes; the gradient test checks every parameter
//! still learns.

use crate::config::{ClipConfig, PosEmbedInit, VisionLayers};
use crate::fused;
use crate::resnet::{Mode, ResNetTower};
use crate::TrainError;
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};

/// LayerNorm epsilon (PyTorch's and Hugging Face CLIP's default).
pub const LN_EPS: f64 = 1e-5;
/// Initial `logit_scale`: ln(1 / 0.07), as in the CLIP paper.
pub const LOGIT_SCALE_INIT: f64 = 2.659_260_036_932_778;
/// The name of the learnable log temperature among the parameters (HF CLIP's).
pub const LOGIT_SCALE: &str = "logit_scale";
/// Largest `logit_scale`: ln(100); the paper clips the temperature there to keep training stable.
pub const LOGIT_SCALE_MAX: f64 = 4.605_170_185_988_092;

type CResult<T> = candle_core::Result<T>;

/// Casts a master weight to the compute dtype; a no-op when they match, so f32 training pays nothing.
pub(crate) fn cast(t: &Tensor, dtype: DType) -> CResult<Tensor> {
    if t.dtype() == dtype {
        Ok(t.clone())
    } else {
        t.to_dtype(dtype)
    }
}

/// Scale of the sine-cosine start: a quarter keeps a patch's content (about `√width` in norm)
/// dominant over its position code (`√(width/2)` at full scale), so textures stay visible while
/// rows and columns are still linearly readable.
const SIN_COS_SCALE: f64 = 0.25;

/// MAE's 2-D sine-cosine positional table times `scale`, `(grid² + 1) × width` row-major with a zero row first
/// for the class token: the first half of each row encodes the patch's row, the second its column,
/// each as `sin` then `cos` of the position times frequencies `10000^(-i / (width/4))`.
fn sin_cos_2d(grid: usize, width: usize, scale: f64) -> Vec<f64> {
    let quarter = (width / 4).max(1);
    let axis = |pos: usize, out: &mut Vec<f64>| {
        let freqs = (0..quarter).map(|i| 10000f64.powf(-(i as f64) / quarter as f64));
        let angles: Vec<f64> = freqs.map(|f| pos as f64 * f).collect();
        out.extend(angles.iter().map(|a| scale * a.sin()));
        out.extend(angles.iter().map(|a| scale * a.cos()));
    };
    let mut out = vec![0.0; width];
    for r in 0..grid {
        for c in 0..grid {
            let start = out.len();
            axis(r, &mut out);
            axis(c, &mut out);
            out.resize(start + width, 0.0);
        }
    }
    out
}

/// Creates the named parameters with a seeded generator, so two runs with one seed start identical
/// (candle cannot seed its CPU generator).
pub(crate) struct ParamBuilder {
    rng: ChaCha8Rng,
    vars: BTreeMap<String, Var>,
    /// State the forward pass keeps but the optimiser never touches (BatchNorm's running
    /// statistics, in the masters' dtype, and its i64 batch counters). When rebuilding, the
    /// existing ones are reused.
    buffers: BTreeMap<String, Var>,
    dtype: DType,
    device: Device,
    /// When rebuilding a model's layers over tensors it already has: each parameter's tensor by
    /// name, taken instead of a new one.
    reuse: Option<BTreeMap<String, Tensor>>,
}

impl ParamBuilder {
    /// A builder for unit tests of single layers, on the CPU.
    #[cfg(test)]
    pub(crate) fn for_tests(dtype: DType) -> ParamBuilder {
        ParamBuilder {
            rng: ChaCha8Rng::seed_from_u64(0),
            vars: BTreeMap::new(),
            buffers: BTreeMap::new(),
            dtype,
            device: Device::Cpu,
            reuse: None,
        }
    }

    /// The buffer `name` filled with `value` in the masters' dtype, or the existing one when
    /// rebuilding.
    pub(crate) fn buffer(&mut self, name: &str, shape: &[usize], value: f64) -> CResult<Var> {
        self.typed_buffer(name, shape, value, self.dtype)
    }

    /// `buffer` in `dtype` (a counter's i64, as PyTorch keeps it).
    pub(crate) fn typed_buffer(
        &mut self,
        name: &str,
        shape: &[usize],
        value: f64,
        dtype: DType,
    ) -> CResult<Var> {
        if let Some(var) = self.buffers.get(name) {
            return Ok(var.clone());
        }
        let t = Tensor::full(value, shape, &self.device)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        self.buffers.insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// The tensor to reuse for `name`, when rebuilding.
    fn reused(&self, name: &str) -> CResult<Option<Tensor>> {
        let Some(reuse) = &self.reuse else {
            return Ok(None);
        };
        match reuse.get(name) {
            Some(t) => Ok(Some(t.clone())),
            None => Err(candle_core::Error::Msg(format!(
                "no tensor {name} to rebuild with"
            ))),
        }
    }

    pub(crate) fn add(&mut self, name: &str, shape: &[usize], values: Vec<f64>) -> CResult<Tensor> {
        if let Some(t) = self.reused(name)? {
            return Ok(t);
        }
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)?;
        let var = Var::from_tensor(&t)?;
        let tensor = var.as_tensor().clone();
        self.vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    pub(crate) fn randn(&mut self, name: &str, shape: &[usize], std: f64) -> CResult<Tensor> {
        if let Some(t) = self.reused(name)? {
            return Ok(t);
        }
        let n: usize = shape.iter().product();
        let values = (0..n).map(|_| std * self.normal()).collect();
        self.add(name, shape, values)
    }

    pub(crate) fn constant(&mut self, name: &str, shape: &[usize], value: f64) -> CResult<Tensor> {
        let n: usize = shape.iter().product();
        self.add(name, shape, vec![value; n])
    }

    /// A standard normal draw (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub(crate) fn linear(
        &mut self,
        name: &str,
        out: usize,
        inp: usize,
        std: f64,
        bias: bool,
    ) -> CResult<Linear> {
        let w = self.randn(&format!("{name}.weight"), &[out, inp], std)?;
        let b = match bias {
            true => Some(self.constant(&format!("{name}.bias"), &[out], 0.0)?),
            false => None,
        };
        Ok(Linear { w, b })
    }

    fn layer_norm(&mut self, name: &str, width: usize) -> CResult<LayerNorm> {
        Ok(LayerNorm {
            g: self.constant(&format!("{name}.weight"), &[width], 1.0)?,
            b: self.constant(&format!("{name}.bias"), &[width], 0.0)?,
        })
    }
}

/// `y = x Wᵀ + b` over the last dimension of a tensor of any rank.
pub(crate) struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let dims = x.dims().to_vec();
        let inner = dims[dims.len() - 1];
        let rows = x.elem_count() / inner;
        let x = x.reshape((rows, inner))?;
        let y = match &self.b {
            Some(b) => fused::linear(&x, &self.w, b)?,
            None => x.matmul(&self.w.t()?)?,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.w.dim(0)?;
        y.reshape(out)
    }
}

/// LayerNorm with learnable gain and bias; `fused::layer_norm` has a backward (candle's has none).
struct LayerNorm {
    g: Tensor,
    b: Tensor,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        fused::layer_norm(x, &self.g, &self.b, LN_EPS)
    }
}

/// Multi-head self-attention with Hugging Face's separate q/k/v projections.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn forward(&self, x: &Tensor, causal: bool) -> CResult<Tensor> {
        // One matmul for q, k and v (their weights stacked), then split per head.
        let qkv = Linear {
            w: Tensor::cat(&[&self.q.w, &self.k.w, &self.v.w], 0)?,
            b: Some(Tensor::cat(
                &[self.q.b.as_ref(), self.k.b.as_ref(), self.v.b.as_ref()]
                    .map(|b| b.expect("attention projections have biases")),
                0,
            )?),
        }
        .forward(x)?;
        self.out
            .forward(&fused::attention_packed(&qkv, self.heads, causal)?)
    }
}

/// A pre-LN transformer block: `x + attn(ln1 x)`, then `x + mlp(ln2 x)`.
struct Block {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    quick_gelu: bool,
}

impl Block {
    fn build(
        pb: &mut ParamBuilder,
        name: &str,
        width: usize,
        heads: usize,
        mlp: usize,
        layers: usize,
        quick_gelu: bool,
    ) -> CResult<Block> {
        // open_clip's text-tower init, used for both towers.
        let attn_std = (width as f64).powf(-0.5);
        let proj_std = attn_std * ((2 * layers) as f64).powf(-0.5);
        let fc_std = ((2 * width) as f64).powf(-0.5);
        let a = format!("{name}.self_attn");
        Ok(Block {
            ln1: pb.layer_norm(&format!("{name}.layer_norm1"), width)?,
            attn: Attention {
                q: pb.linear(&format!("{a}.q_proj"), width, width, attn_std, true)?,
                k: pb.linear(&format!("{a}.k_proj"), width, width, attn_std, true)?,
                v: pb.linear(&format!("{a}.v_proj"), width, width, attn_std, true)?,
                out: pb.linear(&format!("{a}.out_proj"), width, width, proj_std, true)?,
                heads,
            },
            ln2: pb.layer_norm(&format!("{name}.layer_norm2"), width)?,
            fc1: pb.linear(&format!("{name}.mlp.fc1"), mlp, width, fc_std, true)?,
            fc2: pb.linear(&format!("{name}.mlp.fc2"), width, mlp, proj_std, true)?,
            quick_gelu,
        })
    }

    fn forward(&self, x: &Tensor, causal: bool) -> CResult<Tensor> {
        let x = (x + self.attn.forward(&self.ln1.forward(x)?, causal)?)?;
        let h = self.fc1.forward(&self.ln2.forward(&x)?)?;
        let h = match self.quick_gelu {
            true => (&h * (h.affine(-1.702, 0.0)?.exp()? + 1.0)?.recip()?)?,
            false => fused::gelu(&h)?,
        };
        x + self.fc2.forward(&h)?
    }
}

fn build_blocks(
    pb: &mut ParamBuilder,
    prefix: &str,
    layers: usize,
    width: usize,
    heads: usize,
    mlp: usize,
    quick_gelu: bool,
) -> CResult<Vec<Block>> {
    (0..layers)
        .map(|i| {
            Block::build(
                pb,
                &format!("{prefix}.encoder.layers.{i}"),
                width,
                heads,
                mlp,
                layers,
                quick_gelu,
            )
        })
        .collect()
}

/// How many leading layer groups of a tower a forward pass keeps out of the graph, in open_clip's
/// lock groups (forward order): the stem (embeddings; a ViT's `ln_pre` too), each transformer
/// block but the last, the last block with the final LayerNorm, and the projection — a tower of
/// `L` blocks has `L + 2`. The activation after the frozen groups is detached, so they get no
/// gradient and no backward pass. A ResNet tower is one group: all or nothing, as in open_clip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frozen(pub usize);

impl Frozen {
    /// The whole tower trains.
    pub(crate) const NONE: Frozen = Frozen(0);

    /// `x`, the activation after the first `done` groups, cut from its graph when exactly those
    /// groups are frozen.
    fn cut(self, x: Tensor, done: usize) -> Tensor {
        if self.0 == done {
            x.detach()
        } else {
            x
        }
    }
}

/// Layer groups of a transformer tower of `layers` blocks ([`Frozen`]).
fn transformer_groups(layers: usize) -> usize {
    layers + 2
}

/// The ViT image tower: patches → tokens, class token, positions, `ln_pre`, blocks, `ln_post`, projection.
struct VisionTower {
    patch: Tensor,
    class: Tensor,
    pos: Tensor,
    ln_pre: LayerNorm,
    blocks: Vec<Block>,
    ln_post: LayerNorm,
    proj: Linear,
    patch_size: usize,
    grid: usize,
}

impl VisionTower {
    fn build(pb: &mut ParamBuilder, cfg: &ClipConfig) -> CResult<VisionTower> {
        let v = &cfg.vision_cfg;
        let (VisionLayers::Transformer(layers), Some(patch_size)) = (v.layers, v.patch_size) else {
            return Err(candle_core::Error::Msg(
                "a ViT tower needs vision_cfg.layers as one number and a patch_size".into(),
            ));
        };
        let scale = (v.width as f64).powf(-0.5);
        let p = "vision_model";
        Ok(VisionTower {
            patch: pb.randn(
                &format!("{p}.embeddings.patch_embedding.weight"),
                &[v.width, 3, patch_size, patch_size],
                (3.0 * (patch_size * patch_size) as f64).powf(-0.5),
            )?,
            class: pb.randn(
                &format!("{p}.embeddings.class_embedding"),
                &[v.width],
                scale,
            )?,
            pos: match v.pos_embed_init {
                PosEmbedInit::Random => pb.randn(
                    &format!("{p}.embeddings.position_embedding.weight"),
                    &[v.grid() * v.grid() + 1, v.width],
                    scale,
                )?,
                PosEmbedInit::SinCos2d => pb.add(
                    &format!("{p}.embeddings.position_embedding.weight"),
                    &[v.grid() * v.grid() + 1, v.width],
                    sin_cos_2d(v.grid(), v.width, SIN_COS_SCALE),
                )?,
            },
            ln_pre: pb.layer_norm(&format!("{p}.pre_layrnorm"), v.width)?,
            blocks: build_blocks(
                pb,
                p,
                layers,
                v.width,
                v.num_heads(),
                cfg.vision_mlp(),
                cfg.quick_gelu,
            )?,
            ln_post: pb.layer_norm(&format!("{p}.post_layernorm"), v.width)?,
            proj: pb.linear("visual_projection", cfg.embed_dim, v.width, scale, false)?,
            patch_size,
            grid: v.grid(),
        })
    }

    fn forward(&self, images: &Tensor, dtype: DType, frozen: Frozen) -> CResult<Tensor> {
        let (b, _, _, _) = images.dims4()?;
        let (g, p) = (self.grid, self.patch_size);
        let width = self.class.dim(0)?;
        // Patch embedding as reshape + matmul: the same numbers as a stride-p convolution.
        let x = cast(images, dtype)?
            .reshape((b, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, 3 * p * p))?;
        let w = self.patch.reshape((width, 3 * p * p))?;
        let x = Linear { w, b: None }.forward(&x)?;
        let cls = self
            .class
            .reshape((1, 1, width))?
            .broadcast_as((b, 1, width))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos)?;
        let x = frozen.cut(self.ln_pre.forward(&x)?, 1);
        let x = blocks_forward(&self.blocks, x, false, frozen)?;
        let cls = self.ln_post.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        let cls = frozen.cut(cls, self.blocks.len() + 1);
        Ok(frozen.cut(self.proj.forward(&cls)?, self.blocks.len() + 2))
    }
}

/// Runs `blocks` on `x` (which has passed the stem, group 1), cutting the graph after block `i`
/// when `frozen` ends there (group `i + 2`; the last block's group also holds the final
/// LayerNorm, so the caller cuts after that).
fn blocks_forward(blocks: &[Block], x: Tensor, causal: bool, frozen: Frozen) -> CResult<Tensor> {
    let mut x = x;
    for (i, block) in blocks.iter().enumerate() {
        x = block.forward(&x, causal)?;
        if i + 1 < blocks.len() {
            x = frozen.cut(x, i + 2);
        }
    }
    Ok(x)
}

/// The image tower a config asks for: a ViT, or CLIP's ResNet.
enum ImageTower {
    Vit(VisionTower),
    ResNet(ResNetTower),
}

impl ImageTower {
    fn build(pb: &mut ParamBuilder, cfg: &ClipConfig) -> CResult<ImageTower> {
        Ok(match cfg.vision_cfg.layers {
            VisionLayers::Transformer(_) => ImageTower::Vit(VisionTower::build(pb, cfg)?),
            VisionLayers::ResNet(_) => ImageTower::ResNet(ResNetTower::build(pb, cfg)?),
        })
    }

    fn forward(
        &self,
        images: &Tensor,
        dtype: DType,
        mode: Mode,
        frozen: Frozen,
    ) -> CResult<Tensor> {
        match self {
            ImageTower::Vit(vit) => vit.forward(images, dtype, frozen),
            ImageTower::ResNet(resnet) => Ok(frozen.cut(resnet.forward(images, dtype, mode)?, 1)),
        }
    }

    /// Layer groups that can be frozen ([`Frozen`]).
    fn groups(&self) -> usize {
        match self {
            ImageTower::Vit(vit) => transformer_groups(vit.blocks.len()),
            ImageTower::ResNet(_) => 1,
        }
    }
}

/// The text tower: token + position embeddings, causal blocks, final LayerNorm, features at end-of-text.
struct TextTower {
    token: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    ln_final: LayerNorm,
    proj: Linear,
    context: usize,
    eot: Option<u32>,
}

impl TextTower {
    fn build(pb: &mut ParamBuilder, cfg: &ClipConfig) -> CResult<TextTower> {
        let t = &cfg.text_cfg;
        let p = "text_model";
        Ok(TextTower {
            token: pb.randn(
                &format!("{p}.embeddings.token_embedding.weight"),
                &[t.vocab_size, t.width],
                0.02,
            )?,
            pos: pb.randn(
                &format!("{p}.embeddings.position_embedding.weight"),
                &[t.context_length, t.width],
                0.01,
            )?,
            blocks: build_blocks(
                pb,
                p,
                t.layers,
                t.width,
                t.heads,
                cfg.text_mlp(),
                cfg.quick_gelu,
            )?,
            ln_final: pb.layer_norm(&format!("{p}.final_layer_norm"), t.width)?,
            proj: pb.linear(
                "text_projection",
                cfg.embed_dim,
                t.width,
                (t.width as f64).powf(-0.5),
                false,
            )?,
            context: t.context_length,
            eot: t.eot_token_id,
        })
    }

    /// Position of each row's end-of-text token.
    fn eot_positions(&self, tokens: &[Vec<u32>]) -> Vec<usize> {
        tokens
            .iter()
            .map(|row| match self.eot {
                Some(id) => row.iter().position(|&t| t == id).unwrap_or(row.len() - 1),
                None => (0..row.len()).rev().max_by_key(|&j| row[j]).unwrap_or(0),
            })
            .collect()
    }

    fn forward(&self, tokens: &Tensor, frozen: Frozen) -> CResult<Tensor> {
        let (b, len) = tokens.dims2()?;
        let tokens = tokens
            .narrow(1, 0, len.min(self.context))?
            .to_dtype(DType::U32)?;
        let ends = self.eot_positions(&tokens.to_vec2::<u32>()?);
        // Attention is causal: nothing after the last end-of-text token of the batch reaches any
        // row's feature, so the padding tail is cut (exact; short captions cost short sequences).
        let t = ends.iter().max().map_or(0, |m| m + 1).max(1);
        let tokens = tokens.narrow(1, 0, t)?;
        let device = tokens.device();
        let width = self.token.dim(1)?;
        let x = fused::gather_rows(&self.token, &tokens.flatten_all()?)?
            .reshape((b, t, width))?
            .broadcast_add(&self.pos.narrow(0, 0, t)?)?;
        let x = blocks_forward(&self.blocks, frozen.cut(x, 1), true, frozen)?;
        let x = self.ln_final.forward(&x)?;
        let rows: Vec<u32> = ends
            .iter()
            .enumerate()
            .map(|(i, p)| (i * t + p) as u32)
            .collect();
        let idx = Tensor::new(rows, device)?;
        let x = fused::gather_rows(&x.reshape((b * t, width))?, &idx)?;
        let x = frozen.cut(x, self.blocks.len() + 1);
        Ok(frozen.cut(self.proj.forward(&x)?, self.blocks.len() + 2))
    }
}

/// Scales rows to unit L2 norm, so the image-text dot product is the cosine similarity.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// A trainable CLIP. Parameters are f32 (or f64 for reference checks) master `Var`s. With another
/// compute dtype (bf16 on CUDA) the layers read a copy of each in that dtype (`shadows`), so the
/// graph holds no per-step casts: gradients arrive on the copies, and the optimiser updates the
/// masters and rewrites the copies from them. `logit_scale` is read as the master itself.
pub struct ClipModel {
    cfg: ClipConfig,
    vars: BTreeMap<String, Var>,
    buffers: BTreeMap<String, Var>,
    shadows: BTreeMap<String, Var>,
    vision: ImageTower,
    text: TextTower,
    logit_scale: Tensor,
    compute_dtype: DType,
}

impl ClipModel {
    /// Builds a freshly initialised model (open_clip's init), reproducible from `seed`.
    pub fn new(
        cfg: &ClipConfig,
        seed: u64,
        param_dtype: DType,
        device: &Device,
    ) -> Result<ClipModel, TrainError> {
        cfg.validate()?;
        let mut pb = ParamBuilder {
            rng: ChaCha8Rng::seed_from_u64(seed),
            vars: BTreeMap::new(),
            buffers: BTreeMap::new(),
            dtype: param_dtype,
            device: device.clone(),
            reuse: None,
        };
        let vision = ImageTower::build(&mut pb, cfg)?;
        let text = TextTower::build(&mut pb, cfg)?;
        let logit_scale = pb.add(LOGIT_SCALE, &[], vec![LOGIT_SCALE_INIT])?;
        Ok(ClipModel {
            cfg: cfg.clone(),
            vars: pb.vars,
            buffers: pb.buffers,
            shadows: BTreeMap::new(),
            vision,
            text,
            logit_scale,
            compute_dtype: param_dtype,
        })
    }

    /// Chooses the dtype of the forward pass (e.g. bf16 on CUDA); master weights stay as they are.
    /// Another dtype than the masters' makes a copy of each weight in it for the layers to read.
    pub fn set_compute_dtype(&mut self, dtype: DType) -> Result<(), TrainError> {
        let mut shadows = BTreeMap::new();
        if dtype != self.param_dtype() {
            for (name, var) in self.vars.iter().filter(|(n, _)| *n != LOGIT_SCALE) {
                let copy = Var::from_tensor(&var.as_tensor().to_dtype(dtype)?)?;
                shadows.insert(name.clone(), copy);
            }
        }
        let read = self
            .vars
            .iter()
            .map(|(name, var)| {
                (
                    name.clone(),
                    shadows.get(name).unwrap_or(var).as_tensor().clone(),
                )
            })
            .collect();
        let mut pb = ParamBuilder {
            rng: ChaCha8Rng::seed_from_u64(0),
            vars: BTreeMap::new(),
            buffers: self.buffers.clone(),
            dtype,
            device: self.device().clone(),
            reuse: Some(read),
        };
        self.vision = ImageTower::build(&mut pb, &self.cfg)?;
        self.text = TextTower::build(&mut pb, &self.cfg)?;
        self.shadows = shadows;
        self.compute_dtype = dtype;
        Ok(())
    }

    /// The compute-dtype copies of the weights by name; empty when the forward pass runs in the
    /// masters' dtype.
    pub fn shadows(&self) -> &BTreeMap<String, Var> {
        &self.shadows
    }

    /// The tensor the forward pass reads for parameter `name`: its compute-dtype copy if it has
    /// one, else the master. Its gradient is the parameter's.
    pub fn read_tensor(&self, name: &str) -> Option<&Tensor> {
        match self.shadows.get(name) {
            Some(copy) => Some(copy.as_tensor()),
            None => self.vars.get(name).map(|v| v.as_tensor()),
        }
    }

    /// Rewrites every compute-dtype copy from its master, after the masters changed.
    pub fn refresh_shadows(&self) -> Result<(), TrainError> {
        for (name, copy) in &self.shadows {
            copy.set(&self.vars[name].as_tensor().to_dtype(copy.dtype())?)?;
        }
        Ok(())
    }

    /// The dtype of the master weights.
    pub fn param_dtype(&self) -> DType {
        self.logit_scale.dtype()
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.logit_scale.device()
    }

    /// Every trainable tensor by its Hugging Face CLIP name, sorted by name (a stable order for the
    /// optimiser and for checkpoints).
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// State the forward pass keeps besides the parameters, by name: BatchNorm's running
    /// statistics and batch counters (a ResNet's; a ViT has none). Saved and loaded with the
    /// weights.
    pub fn buffers(&self) -> &BTreeMap<String, Var> {
        &self.buffers
    }

    /// Unnormalised image features `(B, embed_dim)` in the master dtype, for inference (a
    /// ResNet's BatchNorm uses its running statistics). Input `(B, 3, H, W)`.
    pub fn image_features(&self, images: &Tensor) -> Result<Tensor, TrainError> {
        self.image_features_in(images, Mode::Eval, Frozen::NONE)
    }

    /// `image_features` in the given BatchNorm mode (training uses the batch's statistics),
    /// with the `frozen` leading groups out of the graph.
    fn image_features_in(
        &self,
        images: &Tensor,
        mode: Mode,
        frozen: Frozen,
    ) -> Result<Tensor, TrainError> {
        let x = self
            .vision
            .forward(images, self.compute_dtype, mode, frozen)?;
        Ok(cast(&x, self.param_dtype())?)
    }

    /// Unnormalised text features `(B, embed_dim)` in the master dtype. Input `(B, L)` token ids.
    pub fn text_features(&self, tokens: &Tensor) -> Result<Tensor, TrainError> {
        self.text_features_in(tokens, Frozen::NONE)
    }

    fn text_features_in(&self, tokens: &Tensor, frozen: Frozen) -> Result<Tensor, TrainError> {
        let x = self.text.forward(tokens, frozen)?;
        Ok(cast(&x, self.param_dtype())?)
    }

    /// L2-normalised image embeddings `(B, embed_dim)`: what retrieval and the loss compare.
    pub fn encode_image(&self, images: &Tensor) -> Result<Tensor, TrainError> {
        self.encode_image_in(images, Mode::Eval, Frozen::NONE)
    }

    /// `encode_image` in the given BatchNorm mode (training uses the batch's statistics), with
    /// the `frozen` leading groups out of the graph.
    pub(crate) fn encode_image_in(
        &self,
        images: &Tensor,
        mode: Mode,
        frozen: Frozen,
    ) -> Result<Tensor, TrainError> {
        Ok(l2_normalize(
            &self.image_features_in(images, mode, frozen)?,
        )?)
    }

    /// L2-normalised text embeddings `(B, embed_dim)`.
    pub fn encode_text(&self, tokens: &Tensor) -> Result<Tensor, TrainError> {
        self.encode_text_in(tokens, Frozen::NONE)
    }

    /// `encode_text` with the `frozen` leading groups out of the graph.
    pub(crate) fn encode_text_in(
        &self,
        tokens: &Tensor,
        frozen: Frozen,
    ) -> Result<Tensor, TrainError> {
        Ok(l2_normalize(&self.text_features_in(tokens, frozen)?)?)
    }

    /// Layer groups of the image tower ([`Frozen`]): blocks + 2 for a ViT, 1 for a ResNet.
    pub(crate) fn image_groups(&self) -> usize {
        self.vision.groups()
    }

    /// Layer groups of the text tower: blocks + 2.
    pub(crate) fn text_groups(&self) -> usize {
        transformer_groups(self.text.blocks.len())
    }

    /// Whether the image tower is a ResNet.
    pub(crate) fn is_resnet(&self) -> bool {
        matches!(self.vision, ImageTower::ResNet(_))
    }

    /// The learnable log temperature (rank 0).
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// Copies weights and buffers in by name (a checkpoint or an export); every one must be
    /// present with its shape.
    pub fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        for (name, var) in self.vars.iter().chain(&self.buffers) {
            let t = tensors.get(name).ok_or_else(|| {
                TrainError::Checkpoint(format!(
                    "weights lack {name}; the checkpoint was written for another config"
                ))
            })?;
            if t.dims() != var.dims() {
                return Err(TrainError::Checkpoint(format!(
                    "{name} has shape {:?} in the file but {:?} in the config; use the config the checkpoint was trained with",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        self.refresh_shadows()
    }

    /// Saves the weights and buffers under their Hugging Face names (a ResNet's under open_clip's
    /// `visual.*` names) in f32 safetensors; integer buffers (BatchNorm's `num_batches_tracked`)
    /// stay i64, as PyTorch's state dict has them, so open_clip loads the file strictly.
    pub fn save_weights(&self, path: &std::path::Path) -> Result<(), TrainError> {
        let tensors = self
            .master_tensors()
            .map(|(n, t)| Ok((n.clone(), saved_form(t)?)))
            .collect::<Result<HashMap<_, _>, candle_core::Error>>()?;
        crate::checkpoint::save_atomic(&tensors, path)
    }

    /// Every weight and buffer by name, in the dtype training keeps it (a resume restores these
    /// bit for bit; an export converts them with [`saved_form`]).
    pub(crate) fn master_tensors(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.vars
            .iter()
            .chain(&self.buffers)
            .map(|(n, v)| (n, v.as_tensor()))
    }
}

/// How a tensor is saved in every export: f32, or as it is for integer buffers (BatchNorm's
/// `num_batches_tracked`, i64 as PyTorch keeps it).
pub(crate) fn saved_form(t: &Tensor) -> candle_core::Result<Tensor> {
    if t.dtype().is_float() {
        t.to_dtype(DType::F32)
    } else {
        Ok(t.clone())
    }
}

/// The CLIP loss: symmetric cross-entropy over the `B × B` cosine-similarity logits scaled by
/// `exp(logit_scale)`; row i's positive is column i. `negatives` (`N × D` text features) are
/// NegCLIP's hard negatives: extra wrong captions in the image→text direction only (each image
/// must rank its caption above them too); the text→image direction stays `B × B`.
pub fn clip_loss(
    image: &Tensor,
    text: &Tensor,
    negatives: Option<&Tensor>,
    logit_scale: &Tensor,
) -> candle_core::Result<Tensor> {
    let n = image.dim(0)?;
    let scale = logit_scale.exp()?;
    let logits = image.matmul(&text.t()?)?.broadcast_mul(&scale)?;
    let labels = Tensor::arange(0u32, n as u32, image.device())?;
    let image_to_text = match negatives {
        Some(neg) => {
            let neg_logits = image.matmul(&neg.t()?)?.broadcast_mul(&scale)?;
            Tensor::cat(&[&logits, &neg_logits], 1)?
        }
        None => logits.clone(),
    };
    let a = candle_nn::loss::cross_entropy(&image_to_text, &labels)?;
    let b = candle_nn::loss::cross_entropy(&logits.t()?.contiguous()?, &labels)?;
    (a + b)? * 0.5
}

#[cfg(test)]
mod tests {
    use super::sin_cos_2d;

    #[test]
    fn sin_cos_table_gives_each_patch_a_distinct_row_and_the_class_token_zero() {
        let (grid, width) = (8, 128);
        let table = sin_cos_2d(grid, width, 1.0);
        assert_eq!(table.len(), (grid * grid + 1) * width);
        let rows: Vec<&[f64]> = table.chunks(width).collect();
        assert!(rows[0].iter().all(|&v| v == 0.0), "class token row");
        for (i, a) in rows.iter().enumerate().skip(1) {
            let norm = a.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!(
                (norm - (width as f64 / 2.0).sqrt()).abs() < 1e-9,
                "row {i} norm {norm}"
            );
            for b in rows.iter().skip(i + 1) {
                let d: f64 = a.iter().zip(*b).map(|(x, y)| (x - y).abs()).sum();
                assert!(d > 1e-3, "two patches share a position code");
            }
        }
        // Patch (row 0, column 1) and (row 1, column 0) differ only in which half moved.
        let (r0c1, r1c0) = (rows[2], rows[1 + grid]);
        assert_eq!(&r0c1[..width / 2], &rows[1][..width / 2]);
        assert_eq!(&r1c0[width / 2..], &rows[1][width / 2..]);
    }
}
