//! The open_clip form of a model: `open_clip_model.safetensors` under open_clip's state-dict names
//! plus `open_clip_config.json` (`{"model_cfg", "preprocess_cfg"}`), the folder layout open_clip's
//! `create_model_and_transforms("local-dir:DIR")` loads strictly. It is the only form a ResNet CLIP
//! has outside wit (transformers has no ResNet CLIP), and puts any wit model into open_clip's
//! tooling (CLIP_benchmark, open_clip's own eval). Read back, it brings open_clip's models (LAION's
//! on the Hub) into wit, refusing any feature wit would compute differently.

use crate::checkpoint::save_atomic;
use crate::config::{ClipConfig, VisionLayers};
use crate::model::{saved_form, ClipModel};
use crate::TrainError;
use candle_core::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// open_clip's weights file name in a `local-dir:` folder.
pub const OPEN_CLIP_MODEL_FILE: &str = "open_clip_model.safetensors";
/// open_clip's config file name in a `local-dir:` folder.
pub const OPEN_CLIP_CONFIG_FILE: &str = "open_clip_config.json";

/// open_clip's `model_cfg` for `cfg`: only fields its `CLIPVisionCfg`/`CLIPTextCfg` dataclasses
/// know (they refuse others). Heads become `head_width`; the text tower pools at the first
/// end-of-text token (`pool_type: "eos"`) when the tokenizer names one, else at the highest id.
pub fn model_cfg(cfg: &ClipConfig) -> serde_json::Value {
    let v = &cfg.vision_cfg;
    let t = &cfg.text_cfg;
    let vision = match v.layers {
        VisionLayers::Transformer(layers) => serde_json::json!({
            "image_size": v.image_size,
            "layers": layers,
            "width": v.width,
            "head_width": v.width / v.num_heads(),
            "mlp_ratio": v.mlp_ratio,
            "patch_size": v.patch_size,
        }),
        VisionLayers::ResNet(stages) => serde_json::json!({
            "image_size": v.image_size,
            "layers": stages,
            "width": v.width,
            "head_width": v.attention_width() / v.num_heads(),
            "patch_size": null,
        }),
    };
    let mut text = serde_json::json!({
        "context_length": t.context_length,
        "vocab_size": t.vocab_size,
        "width": t.width,
        "heads": t.heads,
        "layers": t.layers,
        "mlp_ratio": t.mlp_ratio,
        "pad_id": t.pad_token_id.unwrap_or(0),
    });
    if let Some(eot) = t.eot_token_id {
        text["pool_type"] = "eos".into();
        text["eos_id"] = eot.into();
    }
    serde_json::json!({
        "embed_dim": cfg.embed_dim,
        "quick_gelu": cfg.quick_gelu,
        "vision_cfg": vision,
        "text_cfg": text,
    })
}

/// Fields of open_clip's `model_cfg` wit reads, per section; any other field must be absent or
/// at open_clip's default (a feature wit does not implement otherwise changes the model).
const TOP_FIELDS: [&str; 4] = ["embed_dim", "quick_gelu", "vision_cfg", "text_cfg"];
const VISION_FIELDS: [&str; 6] = [
    "image_size",
    "layers",
    "width",
    "head_width",
    "mlp_ratio",
    "patch_size",
];
const TEXT_FIELDS: [&str; 8] = [
    "context_length",
    "vocab_size",
    "width",
    "heads",
    "layers",
    "mlp_ratio",
    "pad_id",
    "eos_id",
];
/// Fields that do not change the computed model (or only how open_clip trains or tokenises), with
/// the values they may take (`*`: any).
const NEUTRAL: [(&str, &str); 9] = [
    ("hf_tokenizer_name", "*"),
    ("tokenizer_kwargs", "*"),
    ("tokenizer_mode", "*"),
    ("cast_dtype", "*"),
    ("init_logit_scale", "*"),
    ("patch_dropout", "*"),
    ("pos_embed_type", "learnable"),
    ("proj_type", "linear"),
    ("block_type", "default"),
];

/// Whether `value` is one of `allowed` (`|`-separated; `*`: anything).
fn allowed_value(allowed: &str, value: &serde_json::Value) -> bool {
    allowed == "*"
        || value
            .as_str()
            .is_some_and(|s| allowed.split('|').any(|a| a == s))
}

/// Refuses a field of a `model_cfg` section that wit cannot honour. `pool_types`: the pooling
/// rules wit computes for the section (`|`-separated).
fn check_fields(
    section: &str,
    value: &serde_json::Value,
    known: &[&str],
    pool_types: &str,
) -> Result<(), TrainError> {
    let Some(fields) = value.as_object() else {
        return Err(TrainError::Config(format!(
            "open_clip_config.json: {section} is not an object"
        )));
    };
    for (key, v) in fields {
        let neutral = NEUTRAL
            .iter()
            .chain([&("pool_type", pool_types)])
            .any(|(k, allowed)| k == key && allowed_value(allowed, v));
        let default = v.is_null() || *v == serde_json::Value::Bool(false);
        if !(known.contains(&key.as_str()) || neutral || default) {
            return Err(TrainError::Config(format!(
                "open_clip_config.json: {section}.{key} = {v} is an open_clip feature wit does not implement"
            )));
        }
    }
    Ok(())
}

/// The model an open_clip `model_cfg` (from `open_clip_config.json`) describes: a ViT or ResNet
/// image tower and open_clip's text tower. Pooling at `eos_id` becomes the end-of-text id.
pub fn read_model_cfg(model_cfg: &serde_json::Value) -> Result<ClipConfig, TrainError> {
    let empty = serde_json::json!({});
    let vision = model_cfg.get("vision_cfg").unwrap_or(&empty);
    let text = model_cfg.get("text_cfg").unwrap_or(&empty);
    check_fields("model_cfg", model_cfg, &TOP_FIELDS, "")?;
    check_fields("vision_cfg", vision, &VISION_FIELDS, "tok")?;
    check_fields("text_cfg", text, &TEXT_FIELDS, "argmax|eos")?;
    let mut text_cfg = text.clone();
    let eos = text.get("pool_type").and_then(|p| p.as_str()) == Some("eos");
    text_cfg["eot_token_id"] = if eos {
        text.get("eos_id").cloned().unwrap_or(2.into())
    } else {
        serde_json::Value::Null
    };
    text_cfg["pad_token_id"] = text.get("pad_id").cloned().unwrap_or(0.into());
    let cfg = serde_json::json!({
        "embed_dim": model_cfg.get("embed_dim"),
        "quick_gelu": model_cfg.get("quick_gelu").cloned().unwrap_or(false.into()),
        "vision_cfg": vision,
        "text_cfg": text_cfg,
    });
    let cfg: ClipConfig = serde_json::from_value(cfg).map_err(|e| {
        TrainError::Config(format!(
            "open_clip_config.json: model_cfg is malformed: {e}"
        ))
    })?;
    cfg.validate()?;
    Ok(cfg)
}

/// The open_clip name of a ViT's or text tower's transformer-block tensor (`{tower}.encoder.
/// layers.{i}.{rest}`), `None` for q/k/v projections, which open_clip packs into one.
fn block_name(prefix: &str, layer: &str, rest: &str) -> Option<String> {
    let part = match rest {
        "layer_norm1.weight" => "ln_1.weight",
        "layer_norm1.bias" => "ln_1.bias",
        "layer_norm2.weight" => "ln_2.weight",
        "layer_norm2.bias" => "ln_2.bias",
        "mlp.fc1.weight" => "mlp.c_fc.weight",
        "mlp.fc1.bias" => "mlp.c_fc.bias",
        "mlp.fc2.weight" => "mlp.c_proj.weight",
        "mlp.fc2.bias" => "mlp.c_proj.bias",
        "self_attn.out_proj.weight" => "attn.out_proj.weight",
        "self_attn.out_proj.bias" => "attn.out_proj.bias",
        _ => return None,
    };
    Some(format!("{prefix}transformer.resblocks.{layer}.{part}"))
}

/// Where one of wit's tensors sits in open_clip's state dict.
enum Place {
    /// Under this name, as it is.
    Same(String),
    /// Under this name, transposed (open_clip's projections are `x @ proj` matrices, not `Linear`
    /// weights).
    Transposed(String),
    /// Part `i` (q, k, v) of the rows of this packed `in_proj_*` tensor.
    Packed(String, usize),
}

/// open_clip's place for a tensor outside the transformer blocks.
fn plain_place(name: &str) -> Option<Place> {
    let renamed = match name {
        "logit_scale" => "logit_scale",
        "visual_projection.weight" => return Some(Place::Transposed("visual.proj".into())),
        "text_projection.weight" => return Some(Place::Transposed("text_projection".into())),
        "vision_model.embeddings.patch_embedding.weight" => "visual.conv1.weight",
        "vision_model.embeddings.class_embedding" => "visual.class_embedding",
        "vision_model.embeddings.position_embedding.weight" => "visual.positional_embedding",
        "vision_model.pre_layrnorm.weight" => "visual.ln_pre.weight",
        "vision_model.pre_layrnorm.bias" => "visual.ln_pre.bias",
        "vision_model.post_layernorm.weight" => "visual.ln_post.weight",
        "vision_model.post_layernorm.bias" => "visual.ln_post.bias",
        "text_model.embeddings.token_embedding.weight" => "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight" => "positional_embedding",
        "text_model.final_layer_norm.weight" => "ln_final.weight",
        "text_model.final_layer_norm.bias" => "ln_final.bias",
        n if n.starts_with("visual.") => n,
        _ => return None,
    };
    Some(Place::Same(renamed.to_string()))
}

/// open_clip's place for wit's tensor `name`; `None` when open_clip's layout has none for it.
fn place(name: &str) -> Option<Place> {
    let Some((prefix, layer, rest)) = ["vision_model", "text_model"].iter().find_map(|tower| {
        let rest = name.strip_prefix(&format!("{tower}.encoder.layers."))?;
        let (layer, rest) = rest.split_once('.')?;
        let prefix = if *tower == "vision_model" {
            "visual."
        } else {
            ""
        };
        Some((prefix, layer, rest))
    }) else {
        return plain_place(name);
    };
    if let Some(n) = block_name(prefix, layer, rest) {
        return Some(Place::Same(n));
    }
    let (proj, kind) = rest.strip_prefix("self_attn.")?.split_once('.')?;
    let i = ["q_proj", "k_proj", "v_proj"]
        .iter()
        .position(|p| *p == proj)?;
    let packed = format!("{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}");
    Some(Place::Packed(packed, i))
}

fn no_place(name: &str) -> TrainError {
    TrainError::Checkpoint(format!(
        "{name} has no open_clip name; the open_clip form does not know this tensor"
    ))
}

/// The model's weights and buffers under open_clip's state-dict names. Every tensor must have an
/// open_clip name, so a new parameter cannot silently go missing from the export.
pub fn state_dict(model: &ClipModel) -> Result<HashMap<String, Tensor>, TrainError> {
    let mut out = HashMap::new();
    // The q/k/v projections, gathered per packed `in_proj_*` tensor.
    let mut packed: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
    for (name, var) in model.vars().iter().chain(model.buffers()) {
        let t = saved_form(var.as_tensor())?;
        match place(name).ok_or_else(|| no_place(name))? {
            Place::Same(n) => {
                out.insert(n, t);
            }
            Place::Transposed(n) => {
                out.insert(n, t.t()?.contiguous()?);
            }
            Place::Packed(n, i) => packed.entry(n).or_default()[i] = Some(t),
        }
    }
    for (name, parts) in packed {
        let parts: Vec<Tensor> = parts
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| TrainError::Checkpoint(format!("{name} lacks one of q, k and v")))?;
        out.insert(name, Tensor::cat(&parts, 0)?);
    }
    Ok(out)
}

/// open_clip state-dict tensors under wit's names for `model` (whose config must be the file's):
/// the inverse of [`state_dict`]. A file tensor wit has no place for (layer scale, an attentional
/// pooler, ...) is an error: dropping it would load a different model than the file holds.
pub fn wit_tensors(
    file: &HashMap<String, Tensor>,
    model: &ClipModel,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let mut used = std::collections::HashSet::new();
    let mut out = HashMap::new();
    for name in model.vars().keys().chain(model.buffers().keys()) {
        let place = place(name).ok_or_else(|| no_place(name))?;
        let source = match &place {
            Place::Same(n) | Place::Transposed(n) | Place::Packed(n, _) => n,
        };
        let t = file.get(source).ok_or_else(|| {
            TrainError::Checkpoint(format!(
                "the open_clip weights lack {source}; they were saved for another model config"
            ))
        })?;
        used.insert(source.clone());
        let t = match place {
            Place::Same(_) => t.clone(),
            Place::Transposed(_) => t.t()?.contiguous()?,
            Place::Packed(_, i) => {
                let rows = t.dim(0)? / 3;
                t.narrow(0, i * rows, rows)?.contiguous()?
            }
        };
        out.insert(name.clone(), t);
    }
    if let Some(extra) = file.keys().filter(|n| !used.contains(*n)).min() {
        return Err(TrainError::Checkpoint(format!(
            "the open_clip weights hold {extra}, which wit's model has no place for (an open_clip feature wit does not implement)"
        )));
    }
    Ok(out)
}

/// Writes `dir/open_clip_model.safetensors` and `dir/open_clip_config.json` for `model`.
/// `(mean, std_dev)` is the per-channel normalisation the model was trained with (the loader's),
/// written into `preprocess_cfg` so open_clip's transforms match it whatever its defaults become.
pub fn export(
    model: &ClipModel,
    dir: &Path,
    (mean, std_dev): ([f32; 3], [f32; 3]),
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| TrainError::Checkpoint(format!("cannot create {}: {e}", dir.display())))?;
    save_atomic(&state_dict(model)?, &dir.join(OPEN_CLIP_MODEL_FILE))?;
    let config = serde_json::json!({
        "model_cfg": model_cfg(model.config()),
        "preprocess_cfg": {"mean": mean, "std": std_dev},
    });
    let json =
        serde_json::to_vec_pretty(&config).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    crate::checkpoint::write_atomic(&json, &dir.join(OPEN_CLIP_CONFIG_FILE))
}
