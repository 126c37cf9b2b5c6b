//! The export is loadable by Hugging Face `CLIPModel`: parameter names and shapes follow its state
//! dict, `config.json` carries its fields, a NumPy re-implementation of `CLIPModel` reading only
//! the export computes wit's embeddings, and configs written by open_clip read unchanged.

use crate::common;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use wit_trainer::{ClipConfig, ClipModel};

#[test]
fn parameters_carry_hugging_face_clip_names_and_shapes() {
    let cfg = ClipConfig::named("tiny").unwrap();
    let m = ClipModel::new(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
    let shape = |n: &str| {
        m.vars()
            .get(n)
            .unwrap_or_else(|| panic!("missing {n}"))
            .dims()
            .to_vec()
    };
    let (w, e) = (cfg.vision_cfg.width, cfg.embed_dim);
    let grid = cfg.vision_cfg.grid();
    assert_eq!(
        shape("vision_model.embeddings.patch_embedding.weight"),
        [w, 3, 8, 8]
    );
    assert_eq!(shape("vision_model.embeddings.class_embedding"), [w]);
    assert_eq!(
        shape("vision_model.embeddings.position_embedding.weight"),
        [grid * grid + 1, w]
    );
    assert_eq!(shape("vision_model.pre_layrnorm.weight"), [w]);
    assert_eq!(shape("vision_model.post_layernorm.bias"), [w]);
    assert_eq!(shape("visual_projection.weight"), [e, w]);
    assert_eq!(
        shape("text_model.embeddings.token_embedding.weight"),
        [49_408, 128]
    );
    assert_eq!(
        shape("text_model.embeddings.position_embedding.weight"),
        [32, 128]
    );
    assert_eq!(shape("text_model.final_layer_norm.weight"), [128]);
    assert_eq!(shape("text_projection.weight"), [e, 128]);
    assert_eq!(shape("logit_scale"), Vec::<usize>::new());
    for tower in ["vision_model", "text_model"] {
        for layer in 0..4 {
            let p = format!("{tower}.encoder.layers.{layer}");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                assert_eq!(shape(&format!("{p}.self_attn.{proj}.weight")), [128, 128]);
                assert_eq!(shape(&format!("{p}.self_attn.{proj}.bias")), [128]);
            }
            assert_eq!(shape(&format!("{p}.mlp.fc1.weight")), [512, 128]);
            assert_eq!(shape(&format!("{p}.mlp.fc2.weight")), [128, 512]);
            assert_eq!(shape(&format!("{p}.layer_norm1.weight")), [128]);
            assert_eq!(shape(&format!("{p}.layer_norm2.bias")), [128]);
        }
    }
    // 2 towers × 4 layers × 16 tensors + 6 vision + 3 text + 2 projections + logit_scale.
    assert_eq!(m.vars().len(), 2 * 4 * 16 + 9 + 4 + 2 + 1 - 2);
}

#[test]
fn export_round_trips_through_files() {
    let cfg = ClipConfig::named("tiny").unwrap();
    let m = ClipModel::new(&cfg, 7, DType::F32, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    wit_trainer::export(&m, dir.path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(json["model_type"], "clip");
    assert_eq!(json["projection_dim"], 128);
    assert_eq!(json["vision_config"]["patch_size"], 8);
    assert_eq!(json["text_config"]["max_position_embeddings"], 32);
    let back = wit_trainer::load_model(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(back.config(), &cfg);
    for (name, var) in m.vars() {
        let a = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = back.vars()[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn a_half_precision_checkpoint_loads_as_its_values_in_f32() {
    // Many Hub checkpoints store f16 (or bf16) weights; loading widens them exactly.
    let cfg = ClipConfig::named("tiny").unwrap();
    let m = ClipModel::new(&cfg, 8, DType::F32, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    wit_trainer::export(&m, dir.path()).unwrap();
    for half in [DType::F16, DType::BF16] {
        let tensors: std::collections::HashMap<String, Tensor> = m
            .vars()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().to_dtype(half).unwrap()))
            .collect();
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        let back = wit_trainer::load_model(dir.path(), &Device::Cpu).unwrap();
        for (name, t) in &tensors {
            let loaded = back.vars()[name].as_tensor();
            assert_eq!(loaded.dtype(), DType::F32, "{name}");
            let want = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            let got = loaded.flatten_all().unwrap();
            assert_eq!(
                got.to_vec1::<f32>().unwrap(),
                want.to_vec1::<f32>().unwrap(),
                "{name} ({half:?})"
            );
        }
    }
}

#[test]
fn open_clip_model_json_reads_unchanged() {
    // open_clip's src/open_clip/model_configs/ViT-B-32.json.
    let text = r#"{"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ViT-B-32.json");
    std::fs::write(&path, text).unwrap();
    let cfg = ClipConfig::resolve(path.to_str().unwrap()).unwrap();
    assert_eq!(cfg.vision_cfg.num_heads(), 12);
    assert_eq!(cfg, ClipConfig::named("vit-b-32").unwrap());
    for name in wit_trainer::config::BUILTIN_CONFIGS {
        ClipConfig::named(name).unwrap().validate().unwrap();
    }
    let err = ClipConfig::resolve("no-such-model")
        .unwrap_err()
        .to_string();
    assert!(err.contains("tiny"), "{err}");
}

/// `n` token rows of `len`: start token, random ids, end-of-text at `ends[i]`, zero padding.
fn captions(ends: &[usize], len: usize, rng: &mut ChaCha8Rng) -> Tensor {
    let (start, eot) = (49_406u32, 49_407u32);
    let rows: Vec<u32> = ends
        .iter()
        .flat_map(|&end| {
            (0..len).map(move |j| match j {
                0 => start,
                j if j == end => eot,
                j if j > end => 0,
                _ => u32::MAX,
            })
        })
        .map(|id| {
            if id == u32::MAX {
                rng.random_range(1..start)
            } else {
                id
            }
        })
        .collect();
    Tensor::from_vec(rows, (ends.len(), len), &Device::Cpu).unwrap()
}

/// A model whose every tensor is moved off its start (gains off one, biases off zero, a
/// ResNet's zero-started gains too), so a swapped or misread name changes a reference's numbers.
fn perturbed(cfg: &ClipConfig, rng: &mut ChaCha8Rng) -> ClipModel {
    let m = ClipModel::new(cfg, 3, DType::F32, &Device::Cpu).unwrap();
    for (name, var) in m.vars().iter().filter(|(n, _)| *n != "logit_scale") {
        let noise: Vec<f32> = (0..var.elem_count())
            .map(|_| rng.random_range(-0.05..0.05))
            .collect();
        let noise = Tensor::from_vec(noise, var.dims(), &Device::Cpu).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    m
}

/// Runs the Python reference `script` (in tests/) on the model folder `dir`, with four random
/// images and captions and wit's embeddings of them; asserts wit and the reference's NumPy agree
/// and, where the reference also ran the peer library (report field `peer`), that NumPy and the
/// peer agree.
fn check_against_reference(
    script: &str,
    dir: &Path,
    m: &ClipModel,
    rng: &mut ChaCha8Rng,
    peer: &str,
) {
    let cfg = m.config();
    let (n, size, len) = (4, cfg.vision_cfg.image_size, cfg.text_cfg.context_length);
    let pixels: Vec<f32> = (0..n * 3 * size * size)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let images = Tensor::from_vec(pixels, (n, 3, size, size), &Device::Cpu).unwrap();
    // The third caption fills the context, so its end-of-text token is the last position.
    let tokens = captions(&[5, 12, len - 1, 20], len, rng);
    let files = ["images", "tokens", "image_embeds", "text_embeds"].map(|f| dir.join(f));
    common::write_f32(&files[0], &images);
    let ids: Vec<u8> = tokens
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(&files[1], ids).unwrap();
    common::write_f32(&files[2], &m.encode_image(&images).unwrap());
    common::write_f32(&files[3], &m.encode_text(&tokens).unwrap());
    let mut args = vec![dir.as_os_str().to_owned()];
    args.extend(files.iter().map(|f| f.as_os_str().to_owned()));
    args.extend([n, size, len].map(|v| v.to_string().into()));
    let report = common::run_reference(script, args);
    // Unit vectors: f32 against f64 agree to about 1e-6.
    for side in ["image_max_diff", "text_max_diff"] {
        let diff = report[side].as_f64().unwrap();
        assert!(diff < 1e-4, "wit and the reference differ: {report}");
    }
    if let Some(theirs) = report[peer].as_f64() {
        assert!(theirs < 1e-9, "NumPy and the peer library differ: {report}");
    }
}

#[test]
fn exported_vit_embeds_like_a_numpy_hugging_face_clip() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let m = perturbed(&ClipConfig::named("tiny").unwrap(), &mut rng);
    let dir = tempfile::tempdir().unwrap();
    wit_trainer::export(&m, dir.path()).unwrap();
    // With a Python that has torch and transformers, the reference is itself checked against
    // `CLIPModel.from_pretrained` on the export folder.
    check_against_reference(
        "hf_clip.py",
        dir.path(),
        &m,
        &mut rng,
        "transformers_max_diff",
    );
}

#[test]
fn the_open_clip_form_embeds_like_open_clips_modules() {
    for (name, tensors, elements) in [("tiny", 110, 7_981_057), ("tiny-rn", 177, 8_505_132)] {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let mut cfg = ClipConfig::named(name).unwrap();
        // A tokenizer's own end token (the eos pooling rule) on one tower, the argmax rule on
        // the other.
        if name == "tiny" {
            cfg.text_cfg.eot_token_id = Some(49_407);
        }
        let m = perturbed(&cfg, &mut rng);
        let dir = tempfile::tempdir().unwrap();
        let normalisation = ([0.48, 0.46, 0.41], [0.27, 0.26, 0.28]);
        wit_trainer::open_clip::export(&m, dir.path(), normalisation).unwrap();
        // open_clip's CLIP(**model_cfg).state_dict() for this config, counted with open_clip
        // 3.3.0: a strict load needs exactly these tensors.
        let saved = candle_core::safetensors::load(
            dir.path()
                .join(wit_trainer::open_clip::OPEN_CLIP_MODEL_FILE),
            &Device::Cpu,
        )
        .unwrap();
        let count: usize = saved.values().map(|t| t.elem_count()).sum();
        assert_eq!((saved.len(), count), (tensors, elements), "{name}");
        // With a Python that has torch and open_clip, the reference is itself checked against
        // `open_clip.create_model_and_transforms("local-dir:DIR")`, which loads strictly.
        check_against_reference(
            "open_clip_form.py",
            dir.path(),
            &m,
            &mut rng,
            "open_clip_max_diff",
        );
    }
}

/// The fields of `openai/clip-vit-base-patch32`'s `config.json` that shape the model, as the
/// Hub serves it (its text tower still carries the legacy `eos_token_id` 2).
const OPENAI_VIT_B_32: &str = r#"{"architectures": ["CLIPModel"], "model_type": "clip",
    "projection_dim": 512, "logit_scale_init_value": 2.6592,
    "text_config": {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        "hidden_act": "quick_gelu", "hidden_size": 512, "intermediate_size": 2048,
        "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
        "num_attention_heads": 8, "num_hidden_layers": 12, "projection_dim": 512,
        "vocab_size": 49408},
    "vision_config": {"hidden_act": "quick_gelu", "hidden_size": 768, "image_size": 224,
        "intermediate_size": 3072, "layer_norm_eps": 1e-05, "model_type": "clip_vision_model",
        "num_attention_heads": 12, "num_hidden_layers": 12, "patch_size": 32,
        "projection_dim": 512}}"#;

#[test]
fn a_transformers_config_json_reads_as_its_model() {
    let openai: serde_json::Value = serde_json::from_str(OPENAI_VIT_B_32).unwrap();
    let cfg = ClipConfig::from_hf_config_json(&openai).unwrap();
    let mut expected = ClipConfig::named("vit-b-32").unwrap();
    expected.vision_cfg.heads = Some(12);
    expected.quick_gelu = true;
    // Legacy id 2: pool at the highest id, open_clip's rule.
    expected.text_cfg.eot_token_id = None;
    expected.text_cfg.sot_token_id = Some(0);
    expected.text_cfg.pad_token_id = Some(1);
    assert_eq!(cfg, expected);
    // transformers' defaults fill what a file leaves out (they are ViT-B/32's too).
    let bare = serde_json::json!({"model_type": "clip"});
    let defaults = ClipConfig::from_hf_config_json(&bare).unwrap();
    assert_eq!(defaults.vision_cfg, cfg.vision_cfg);
    assert_eq!(defaults.text_cfg.eot_token_id, Some(49_407));

    // A wit export read through its transformers fields alone is the same model.
    let tiny = ClipConfig::named("tiny").unwrap();
    let m = ClipModel::new(&tiny, 5, DType::F32, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    wit_trainer::export(&m, dir.path()).unwrap();
    let path = dir.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("open_clip");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let back = wit_trainer::load_model(dir.path(), &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let pixels: Vec<f32> = (0..2 * 3 * 64 * 64)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let images = Tensor::from_vec(pixels, (2, 3, 64, 64), &Device::Cpu).unwrap();
    let tokens = captions(&[4, 9], 32, &mut rng);
    let same = |a: Tensor, b: Tensor| common::norm(&(a - b).unwrap());
    assert_eq!(
        same(
            back.encode_image(&images).unwrap(),
            m.encode_image(&images).unwrap()
        ),
        0.0
    );
    assert_eq!(
        same(
            back.encode_text(&tokens).unwrap(),
            m.encode_text(&tokens).unwrap()
        ),
        0.0
    );

    // What wit's model cannot compute is refused with the reason.
    for (edit, says) in [
        (serde_json::json!({"model_type": "siglip"}), "model_type"),
        (
            serde_json::json!({"model_type": "clip", "vision_config": {"layer_norm_eps": 1e-6}}),
            "layer_norm_eps",
        ),
        (
            serde_json::json!({"model_type": "clip", "text_config": {"hidden_act": "gelu"}}),
            "activation",
        ),
    ] {
        let err = ClipConfig::from_hf_config_json(&edit)
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{edit}: {err}");
    }
}

#[test]
fn the_open_clip_form_reads_back_and_refuses_what_wit_cannot_compute() {
    let normalisation = ([0.48, 0.46, 0.41], [0.27, 0.26, 0.28]);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let images = Tensor::from_vec(
        (0..2 * 3 * 64 * 64)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect(),
        (2, 3, 64, 64),
        &Device::Cpu,
    )
    .unwrap();
    let tokens = captions(&[4, 31], 32, &mut rng);
    for name in ["tiny", "tiny-rn"] {
        let m = perturbed(&ClipConfig::named(name).unwrap(), &mut rng);
        let dir = tempfile::tempdir().unwrap();
        wit_trainer::open_clip::export(&m, dir.path(), normalisation).unwrap();
        // A folder with only open_clip's two files is a model folder.
        let back = wit_trainer::load_model(dir.path(), &Device::Cpu).unwrap();
        let diff = |a: Tensor, b: Tensor| common::norm(&(a - b).unwrap());
        let (i, t) = (&images, &tokens);
        assert_eq!(
            diff(back.encode_image(i).unwrap(), m.encode_image(i).unwrap()),
            0.0,
            "{name}"
        );
        assert_eq!(
            diff(back.encode_text(t).unwrap(), m.encode_text(t).unwrap()),
            0.0,
            "{name}"
        );
    }

    // What wit would silently compute differently is refused, naming the field or tensor.
    let m = perturbed(&ClipConfig::named("tiny").unwrap(), &mut rng);
    let dir = tempfile::tempdir().unwrap();
    wit_trainer::open_clip::export(&m, dir.path(), normalisation).unwrap();
    let config_path = dir
        .path()
        .join(wit_trainer::open_clip::OPEN_CLIP_CONFIG_FILE);
    let original = std::fs::read(&config_path).unwrap();
    for (section, field, value) in [
        ("vision_cfg", "ls_init_value", serde_json::json!(1e-5)),
        ("vision_cfg", "attentional_pool", serde_json::json!(true)),
        ("text_cfg", "pool_type", serde_json::json!("last")),
    ] {
        let mut json: serde_json::Value = serde_json::from_slice(&original).unwrap();
        json["model_cfg"][section][field] = value;
        std::fs::write(&config_path, serde_json::to_vec(&json).unwrap()).unwrap();
        let err = wit_trainer::load_model(dir.path(), &Device::Cpu)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
    std::fs::write(&config_path, &original).unwrap();
    let weights_path = dir
        .path()
        .join(wit_trainer::open_clip::OPEN_CLIP_MODEL_FILE);
    let mut weights = candle_core::safetensors::load(&weights_path, &Device::Cpu).unwrap();
    let extra = "visual.transformer.resblocks.0.ls_1.gamma";
    weights.insert(
        extra.into(),
        Tensor::ones(128, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&weights, &weights_path).unwrap();
    let err = wit_trainer::load_model(dir.path(), &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains(extra), "{err}");
    weights.remove(extra);
    weights.remove("ln_final.bias");
    candle_core::safetensors::save(&weights, &weights_path).unwrap();
    let err = wit_trainer::load_model(dir.path(), &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("ln_final.bias"), "{err}");
}
