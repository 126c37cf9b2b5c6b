//! The open_clip form of a model: `open_clip_model.safetensors` under open_clip's state-dict names
//! plus `open_clip_config.json` (`{"model_cfg", "preprocess_cfg"}`), the folder layout open_clip's
//! `create_model_and_transforms("local-dir:DIR")` loads strictly. It is the only form a ResNet CLIP
//! has outside wit (transformers has no ResNet CLIP), and puts any wit model into open_clip's
//! tooling (CLIP_benchmark, open_clip's own eval).

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

/// open_clip's name for a tensor outside the blocks, and whether it is stored transposed there
/// (open_clip's projections are `x @ proj` matrices, not `Linear` weights).
fn plain_name(name: &str) -> Option<(String, bool)> {
    let renamed = match name {
        "logit_scale" => "logit_scale",
        "visual_projection.weight" => return Some(("visual.proj".into(), true)),
        "text_projection.weight" => return Some(("text_projection".into(), true)),
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
    Some((renamed.to_string(), false))
}

/// The model's weights and buffers under open_clip's state-dict names. Every tensor must have an
/// open_clip name, so a new parameter cannot silently go missing from the export.
pub fn state_dict(model: &ClipModel) -> Result<HashMap<String, Tensor>, TrainError> {
    let mut out = HashMap::new();
    // (open_clip name, part) → tensor, for the q/k/v projections packed as `in_proj_*`.
    let mut packed: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
    for (name, var) in model.vars().iter().chain(model.buffers()) {
        let t = saved_form(var.as_tensor())?;
        let block = ["vision_model", "text_model"].iter().find_map(|tower| {
            let rest = name.strip_prefix(&format!("{tower}.encoder.layers."))?;
            let (layer, rest) = rest.split_once('.')?;
            let prefix = if *tower == "vision_model" {
                "visual."
            } else {
                ""
            };
            Some((prefix, layer.to_string(), rest.to_string()))
        });
        if let Some((prefix, layer, rest)) = block {
            if let Some(n) = block_name(prefix, &layer, &rest) {
                out.insert(n, t);
                continue;
            }
            let qkv = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .position(|p| rest.starts_with(&format!("self_attn.{p}.")));
            if let (Some(i), Some(kind)) = (qkv, rest.rsplit('.').next()) {
                let key = format!("{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}");
                packed.entry(key).or_default()[i] = Some(t);
                continue;
            }
        } else if let Some((n, transposed)) = plain_name(name) {
            let t = if transposed { t.t()?.contiguous()? } else { t };
            out.insert(n, t);
            continue;
        }
        return Err(TrainError::Checkpoint(format!(
            "{name} has no open_clip name; the open_clip export does not know this tensor"
        )));
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
