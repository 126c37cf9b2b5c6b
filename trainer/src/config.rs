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
    /// Number of transformer blocks.
    pub layers: usize,
    /// Token width.
    pub width: usize,
    /// Side of a square patch in pixels; `image_size` must be a multiple of it.
    pub patch_size: usize,
    /// Attention heads; `width` must be a multiple of it.
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

impl VisionConfig {
    /// Attention heads, derived from `head_width` when the JSON gives none (open_clip's rule).
    pub fn num_heads(&self) -> usize {
        self.heads
            .unwrap_or(self.width / self.head_width.max(1))
            .max(1)
    }

    /// Patches along one side of the image.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// Names of the built-in configurations `ClipConfig::named` knows.
pub const BUILTIN_CONFIGS: [&str; 4] = ["tiny", "vit-s-32", "vit-b-32", "vit-b-16"];

impl ClipConfig {
    /// Resolves a built-in name (`tiny`, `vit-s-32`, `vit-b-32`, `vit-b-16`) or a path to an open_clip
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

    /// The built-in configurations: `tiny` is sized so the demo learns on two CPU cores in minutes;
    /// the others are open_clip's ViT-S/32, ViT-B/32 and ViT-B/16.
    pub fn named(name: &str) -> Option<ClipConfig> {
        let text = |width, heads, layers| TextConfig {
            context_length: 77,
            vocab_size: 49_408,
            width,
            heads,
            layers,
            mlp_ratio: 4.0,
            eot_token_id: None,
        };
        let vision = |image_size, patch_size, width, layers, heads| VisionConfig {
            image_size,
            layers,
            width,
            patch_size,
            heads,
            mlp_ratio: 4.0,
            head_width: 64,
            pos_embed_init: PosEmbedInit::Random,
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
        let problems = [
            (
                v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size),
                "vision_cfg.image_size must be a multiple of vision_cfg.patch_size",
            ),
            (
                !v.width.is_multiple_of(v.num_heads()),
                "vision_cfg.width must be a multiple of vision_cfg.heads",
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
                self.embed_dim == 0 || v.layers == 0 || t.layers == 0,
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

    /// A Hugging Face `CLIPModel` `config.json` for this model, so the exported weights load with
    /// `transformers` (the open_clip form rides along under `"open_clip"`).
    pub fn hf_config_json(&self) -> serde_json::Value {
        let act = if self.quick_gelu {
            "quick_gelu"
        } else {
            "gelu"
        };
        let v = &self.vision_cfg;
        let t = &self.text_cfg;
        serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.embed_dim,
            "logit_scale_init_value": crate::model::LOGIT_SCALE_INIT,
            "text_config": {
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
            },
            "vision_config": {
                "hidden_size": v.width,
                "intermediate_size": self.vision_mlp(),
                "num_attention_heads": v.num_heads(),
                "num_hidden_layers": v.layers,
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

    /// Reads the open_clip form back out of an exported `config.json`.
    pub fn from_hf_config_json(value: &serde_json::Value) -> Result<ClipConfig, TrainError> {
        let inner = value.get("open_clip").ok_or_else(|| {
            TrainError::Config(
                "config.json has no \"open_clip\" entry; was it written by `wit train`?".into(),
            )
        })?;
        let cfg: ClipConfig = serde_json::from_value(inner.clone()).map_err(|e| {
            TrainError::Config(format!("config.json \"open_clip\" entry is malformed: {e}"))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }
}
