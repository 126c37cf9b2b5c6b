//! Model configurations in open_clip's JSON form (`embed_dim`, `vision_cfg`, `text_cfg`), so a config
//! written for open_clip reads here unchanged and the built-in names match open_clip's model names.

use crate::TrainError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The image tower's shape, named as open_clip names it so its JSON files read unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// A number: a ViT with that many transformer blocks. Four numbers: open_clip's
    /// `ModifiedResNet` with that many bottleneck blocks per stage (RN50: `[3, 4, 6, 3]`).
    pub layers: VisionLayers,
    /// ViT: token width. ResNet: channels after the stem (the stages run at 4, 8, 16 and 32
    /// times this; the attention pool at 32 times).
    pub width: usize,
    /// ViT: side of a square patch in pixels; `image_size` must be a multiple of it. `null` for a
    /// ResNet, as in open_clip's `RN50.json`.
    #[serde(default)]
    pub patch_size: Option<usize>,
    /// Attention heads (ViT blocks, or the ResNet's attention pool); `width` must be a multiple
    /// of it.
    #[serde(default)]
    pub heads: Option<usize>,
    /// Hidden width of the MLP as a multiple of `width` (open_clip: 4.0).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// open_clip's `head_width` (64): used to derive `heads` when the JSON gives none.
    #[serde(default = "default_head_width")]
    pub head_width: usize,
    /// How the (learnable) positional embedding starts.
    #[serde(default)]
    pub pos_embed_init: PosEmbedInit,
}

/// Which image tower a config describes, told apart the way open_clip tells them apart: by
/// whether `vision_cfg.layers` is a number or a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VisionLayers {
    /// A ViT with this many pre-LN transformer blocks.
    Transformer(usize),
    /// A `ModifiedResNet` (CLIP's ResNet: three-convolution stem, anti-aliased strided
    /// bottlenecks, attention pooling) with this many bottleneck blocks in each of four stages.
    ResNet([usize; 4]),
}

/// The positional embedding's starting values. It is trained either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosEmbedInit {
    /// open_clip's default: Gaussian with std `width^-0.5`, about a tenth of a patch's scale, so
    /// the tower starts nearly blind to where a patch is.
    #[default]
    Random,
    /// MAE's 2-D sine-cosine table (class token at zero): every patch knows its row and column
    /// from the first step, which short runs need to learn spatial relations ("above").
    SinCos2d,
}

/// The text tower's shape, named as open_clip names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Tokens the model reads; longer token rows are cut to this many.
    pub context_length: usize,
    /// Token ids are `0..vocab_size`.
    pub vocab_size: usize,
    /// Token width.
    pub width: usize,
    /// Attention heads; `width` must be a multiple of it.
    pub heads: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Hidden width of the MLP as a multiple of `width`.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Id of the end-of-text token whose features represent the caption. `None` follows open_clip and
    /// CLIP: the end-of-text token is the highest id, so its position is the argmax of the row.
    #[serde(default)]
    pub eot_token_id: Option<u32>,
    /// Id of the start-of-text token, for the export's `bos_token_id`. `None`: CLIP's, the
    /// second-highest id.
    #[serde(default)]
    pub sot_token_id: Option<u32>,
    /// Id that fills a row after its end-of-text token, for the export's `pad_token_id`. `None`:
    /// open_clip's 0.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

/// A whole CLIP: both towers and the shared embedding width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// Width of the joint image-text embedding.
    pub embed_dim: usize,
    /// The image tower.
    pub vision_cfg: VisionConfig,
    /// The text tower.
    pub text_cfg: TextConfig,
    /// OpenAI's `x * sigmoid(1.702 x)` instead of the exact GELU (open_clip's `quick_gelu`).
    #[serde(default)]
    pub quick_gelu: bool,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

fn default_head_width() -> usize {
    64
}

/// How many times a `ModifiedResNet` halves the image's side before attention pooling.
pub const RESNET_REDUCTION: usize = 32;

impl VisionConfig {
    /// Width of the tokens attention reads: the ViT's width, or the ResNet's last stage
    /// (`32 × width`, what its attention pool reads).
    pub fn attention_width(&self) -> usize {
        match self.layers {
            VisionLayers::Transformer(_) => self.width,
            VisionLayers::ResNet(_) => self.width * RESNET_REDUCTION,
        }
    }

    /// Attention heads, derived from `head_width` when the JSON gives none (open_clip's rule).
    pub fn num_heads(&self) -> usize {
        self.heads
            .unwrap_or(self.attention_width() / self.head_width.max(1))
            .max(1)
    }

    /// Positions along one side of the grid attention reads: patches for a ViT, the last
    /// stage's cells for a ResNet.
    pub fn grid(&self) -> usize {
        match self.layers {
            VisionLayers::Transformer(_) => self.image_size / self.patch_size.unwrap_or(1).max(1),
            VisionLayers::ResNet(_) => self.image_size / RESNET_REDUCTION,
        }
    }
}

/// Names of the built-in configurations `ClipConfig::named` knows.
pub const BUILTIN_CONFIGS: [&str; 6] = [
    "tiny", "tiny-rn", "vit-s-32", "vit-b-32", "vit-b-16", "rn50",
];

impl ClipConfig {
    /// Resolves a built-in name (`BUILTIN_CONFIGS`) or a path to an open_clip
    /// style JSON file, so the command line takes either.
    pub fn resolve(name_or_path: &str) -> Result<ClipConfig, TrainError> {
        match ClipConfig::named(name_or_path) {
            Some(cfg) => Ok(cfg),
            None => ClipConfig::from_json_file(Path::new(name_or_path)),
        }
    }

    /// Reads an open_clip style model JSON and checks it.
    pub fn from_json_file(path: &Path) -> Result<ClipConfig, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            TrainError::Config(format!(
                "cannot read model config {}: {e}; pass one of {BUILTIN_CONFIGS:?} or a path to an open_clip model JSON",
                path.display()
            ))
        })?;
        let cfg: ClipConfig = serde_json::from_str(&text).map_err(|e| {
            TrainError::Config(format!(
                "{} is not an open_clip model JSON: {e}",
                path.display()
            ))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The built-in configurations: `tiny` is sized so the demo learns on two CPU cores in minutes,
    /// `tiny-rn` is its ResNet counterpart; the others are open_clip's ViT-S/32, ViT-B/32,
    /// ViT-B/16 and RN50.
    pub fn named(name: &str) -> Option<ClipConfig> {
        let text = |width, heads, layers| TextConfig {
            context_length: 77,
            vocab_size: 49_408,
            width,
            heads,
            layers,
            mlp_ratio: 4.0,
            eot_token_id: None,
            sot_token_id: None,
            pad_token_id: None,
        };
        let vision = |image_size, patch_size, width, layers, heads| VisionConfig {
            image_size,
            layers: VisionLayers::Transformer(layers),
            width,
            patch_size: Some(patch_size),
            heads,
            mlp_ratio: 4.0,
            head_width: 64,
            pos_embed_init: PosEmbedInit::Random,
        };
        let resnet = |image_size, stages, width| VisionConfig {
            layers: VisionLayers::ResNet(stages),
            patch_size: None,
            heads: None,
            ..vision(image_size, 1, width, 0, None)
        };
        let cfg = match name {
            "tiny" => ClipConfig {
                embed_dim: 128,
                vision_cfg: VisionConfig {
                    pos_embed_init: PosEmbedInit::SinCos2d,
                    ..vision(64, 8, 128, 4, Some(4))
                },
                text_cfg: TextConfig {
                    context_length: 32,
                    ..text(128, 4, 4)
                },
                quick_gelu: false,
            },
            "tiny-rn" => ClipConfig {
                embed_dim: 128,
                vision_cfg: resnet(64, [1, 1, 1, 1], 16),
                text_cfg: TextConfig {
                    context_length: 32,
                    ..text(128, 4, 4)
                },
                quick_gelu: false,
            },
            "rn50" => ClipConfig {
                embed_dim: 1024,
                vision_cfg: resnet(224, [3, 4, 6, 3], 64),
                text_cfg: text(512, 8, 12),
                quick_gelu: false,
            },
            "vit-s-32" => ClipConfig {
                embed_dim: 384,
                vision_cfg: vision(224, 32, 384, 12, None),
                text_cfg: text(384, 6, 12),
                quick_gelu: false,
            },
            "vit-b-32" => ClipConfig {
                embed_dim: 512,
                vision_cfg: vision(224, 32, 768, 12, None),
                text_cfg: text(512, 8, 12),
                quick_gelu: false,
            },
            "vit-b-16" => ClipConfig {
                embed_dim: 512,
                vision_cfg: vision(224, 16, 768, 12, None),
                text_cfg: text(512, 8, 12),
                quick_gelu: false,
            },
            _ => return None,
        };
        Some(cfg)
    }

    /// Checks the divisibility rules the model relies on, with a message saying what to change.
    pub fn validate(&self) -> Result<(), TrainError> {
        let v = &self.vision_cfg;
        let t = &self.text_cfg;
        let (vit, resnet) = match v.layers {
            VisionLayers::Transformer(layers) => (Some(layers), None),
            VisionLayers::ResNet(stages) => (None, Some(stages)),
        };
        let patch_ok = |p: usize| p > 0 && v.image_size.is_multiple_of(p);
        let problems = [
            (
                vit.is_some() && !v.patch_size.is_some_and(patch_ok),
                "vision_cfg.patch_size must be given and divide vision_cfg.image_size (a ViT)",
            ),
            (
                resnet.is_some()
                    && (v.image_size == 0 || !v.image_size.is_multiple_of(RESNET_REDUCTION)),
                "vision_cfg.image_size must be a positive multiple of 32 (a ResNet halves it five times)",
            ),
            (
                resnet.is_some_and(|s| {
                    s.contains(&0) || v.width < 2 || !v.width.is_multiple_of(2)
                }),
                "a ResNet needs at least one block per stage and an even vision_cfg.width",
            ),
            (
                !v.attention_width().is_multiple_of(v.num_heads()),
                "vision_cfg.width (times 32 for a ResNet) must be a multiple of vision_cfg.heads",
            ),
            (
                t.heads == 0 || !t.width.is_multiple_of(t.heads),
                "text_cfg.width must be a multiple of text_cfg.heads",
            ),
            (
                t.context_length == 0 || t.vocab_size == 0,
                "text_cfg.context_length and vocab_size must be positive",
            ),
            (
                self.embed_dim == 0 || vit == Some(0) || t.layers == 0,
                "embed_dim and layer counts must be positive",
            ),
        ];
        match problems.iter().find(|(bad, _)| *bad) {
            Some((_, msg)) => Err(TrainError::Config((*msg).to_string())),
            None => Ok(()),
        }
    }

    /// Hidden width of the image tower's MLP.
    pub fn vision_mlp(&self) -> usize {
        (self.vision_cfg.width as f64 * self.vision_cfg.mlp_ratio) as usize
    }

    /// Hidden width of the text tower's MLP.
    pub fn text_mlp(&self) -> usize {
        (self.text_cfg.width as f64 * self.text_cfg.mlp_ratio) as usize
    }

    /// A Hugging Face `CLIPModel` `config.json` for this model, so exported ViT weights load with
    /// `transformers` (the open_clip form rides along under `"open_clip"`). transformers has no
    /// ResNet CLIP: a ResNet's file has no `architectures` or `vision_config`, only the open_clip
    /// form and the text tower's part.
    pub fn hf_config_json(&self) -> serde_json::Value {
        let act = if self.quick_gelu {
            "quick_gelu"
        } else {
            "gelu"
        };
        let v = &self.vision_cfg;
        let t = &self.text_cfg;
        let text_config = serde_json::json!({
            "hidden_size": t.width,
            "intermediate_size": self.text_mlp(),
            "num_attention_heads": t.heads,
            "num_hidden_layers": t.layers,
            "max_position_embeddings": t.context_length,
            "vocab_size": t.vocab_size,
            "hidden_act": act,
            "layer_norm_eps": crate::model::LN_EPS,
            "projection_dim": self.embed_dim,
            "eos_token_id": t.eot_token_id.unwrap_or(t.vocab_size.saturating_sub(1) as u32),
            "bos_token_id": t.sot_token_id.unwrap_or(t.vocab_size.saturating_sub(2) as u32),
            "pad_token_id": t.pad_token_id.unwrap_or(0),
        });
        let VisionLayers::Transformer(layers) = v.layers else {
            return serde_json::json!({
                "projection_dim": self.embed_dim,
                "logit_scale_init_value": crate::model::LOGIT_SCALE_INIT,
                "text_config": text_config,
                "open_clip": self,
            });
        };
        serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.embed_dim,
            "logit_scale_init_value": crate::model::LOGIT_SCALE_INIT,
            "text_config": text_config,
            "vision_config": {
                "hidden_size": v.width,
                "intermediate_size": self.vision_mlp(),
                "num_attention_heads": v.num_heads(),
                "num_hidden_layers": layers,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "num_channels": 3,
                "hidden_act": act,
                "layer_norm_eps": crate::model::LN_EPS,
                "projection_dim": self.embed_dim,
            },
            "open_clip": self,
        })
    }

    /// Reads a model folder's `config.json`: the open_clip form wit writes under `"open_clip"`,
    /// or else a Hugging Face `CLIPConfig` (a ViT CLIP saved by transformers, such as OpenAI's),
    /// whose missing fields take transformers' defaults.
    pub fn from_hf_config_json(value: &serde_json::Value) -> Result<ClipConfig, TrainError> {
        let Some(inner) = value.get("open_clip") else {
            let cfg = Self::from_transformers_config(value)?;
            cfg.validate()?;
            return Ok(cfg);
        };
        let cfg: ClipConfig = serde_json::from_value(inner.clone()).map_err(|e| {
            TrainError::Config(format!("config.json \"open_clip\" entry is malformed: {e}"))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The ViT CLIP a transformers `CLIPConfig` describes. Fields wit's model cannot honour (another
    /// LayerNorm epsilon, two activations, other than three channels) are refused, not ignored.
    fn from_transformers_config(value: &serde_json::Value) -> Result<ClipConfig, TrainError> {
        if value.get("model_type").and_then(|t| t.as_str()) != Some("clip") {
            return Err(TrainError::Config(
                "config.json is neither a `wit train` export (no \"open_clip\" entry) nor a Hugging Face CLIP (`model_type` is not \"clip\")".into(),
            ));
        }
        let empty = serde_json::json!({});
        let text = value.get("text_config").unwrap_or(&empty);
        let vision = value.get("vision_config").unwrap_or(&empty);
        let quick_gelu = hf_quick_gelu(text, vision)?;
        hf_check_layer_norm_eps(text, vision)?;
        if hf_int(vision, "num_channels", 3)? != 3 {
            return Err(TrainError::Config(
                "config.json: wit's image tower reads RGB (num_channels 3)".into(),
            ));
        }
        let (t_width, v_width) = (
            hf_int(text, "hidden_size", 512)?,
            hf_int(vision, "hidden_size", 768)?,
        );
        let (t_mlp, v_mlp) = (
            hf_int(text, "intermediate_size", 2048)?,
            hf_int(vision, "intermediate_size", 3072)?,
        );
        let eos = hf_int(text, "eos_token_id", 49_407)? as u32;
        let cfg = ClipConfig {
            embed_dim: hf_int(value, "projection_dim", 512)?,
            vision_cfg: VisionConfig {
                image_size: hf_int(vision, "image_size", 224)?,
                layers: VisionLayers::Transformer(hf_int(vision, "num_hidden_layers", 12)?),
                width: v_width,
                patch_size: Some(hf_int(vision, "patch_size", 32)?),
                heads: Some(hf_int(vision, "num_attention_heads", 12)?),
                mlp_ratio: v_mlp as f64 / v_width as f64,
                head_width: 64,
                pos_embed_init: PosEmbedInit::Random,
            },
            text_cfg: TextConfig {
                context_length: hf_int(text, "max_position_embeddings", 77)?,
                vocab_size: hf_int(text, "vocab_size", 49_408)?,
                width: t_width,
                heads: hf_int(text, "num_attention_heads", 8)?,
                layers: hf_int(text, "num_hidden_layers", 12)?,
                mlp_ratio: t_mlp as f64 / t_width as f64,
                // transformers reads eos_token_id 2 as "pool at the highest id", as `None` does.
                eot_token_id: (eos != 2).then_some(eos),
                sot_token_id: Some(hf_int(text, "bos_token_id", 49_406)? as u32),
                pad_token_id: Some(hf_int(text, "pad_token_id", 1)? as u32),
            },
            quick_gelu,
        };
        if (cfg.vision_mlp(), cfg.text_mlp()) != (v_mlp, t_mlp) {
            return Err(TrainError::Config(format!(
                "config.json: intermediate sizes {v_mlp} and {t_mlp} are not a ratio of the widths wit can represent"
            )));
        }
        Ok(cfg)
    }
}

/// A whole-number field of a transformers config section, or transformers' default when absent.
fn hf_int(part: &serde_json::Value, name: &str, default: u64) -> Result<usize, TrainError> {
    match part.get(name) {
        None | Some(serde_json::Value::Null) => Ok(default as usize),
        Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| {
            TrainError::Config(format!(
                "config.json: {name} must be a whole number, not {v}"
            ))
        }),
    }
}

/// Whether a transformers CLIP uses QuickGELU (its default) or the exact GELU; wit runs one
/// of the two in both towers.
fn hf_quick_gelu(text: &serde_json::Value, vision: &serde_json::Value) -> Result<bool, TrainError> {
    let act = |part: &serde_json::Value| {
        part.get("hidden_act")
            .and_then(|a| a.as_str())
            .unwrap_or("quick_gelu")
            .to_string()
    };
    let (text_act, vision_act) = (act(text), act(vision));
    if text_act != vision_act || !["gelu", "quick_gelu"].contains(&text_act.as_str()) {
        return Err(TrainError::Config(format!(
            "config.json: wit runs one activation, gelu or quick_gelu, in both towers; this model has {text_act} (text) and {vision_act} (vision)"
        )));
    }
    Ok(text_act == "quick_gelu")
}

/// Refuses a LayerNorm epsilon other than wit's (transformers' default is the same 1e-5).
fn hf_check_layer_norm_eps(
    text: &serde_json::Value,
    vision: &serde_json::Value,
) -> Result<(), TrainError> {
    for (tower, part) in [("text", text), ("vision", vision)] {
        let eps = part
            .get("layer_norm_eps")
            .and_then(|e| e.as_f64())
            .unwrap_or(crate::model::LN_EPS);
        if (eps - crate::model::LN_EPS).abs() > 1e-12 {
            return Err(TrainError::Config(format!(
                "config.json: the {tower} tower's layer_norm_eps is {eps}; wit's LayerNorm uses {}",
                crate::model::LN_EPS
            )));
        }
    }
    Ok(())
}
