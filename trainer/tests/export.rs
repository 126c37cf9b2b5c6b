//! The export is loadable by Hugging Face `CLIPModel`: parameter names and shapes follow its state
//! dict, `config.json` carries its fields, and configs written by open_clip read unchanged.

use candle_core::{DType, Device};
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
