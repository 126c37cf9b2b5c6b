//! CLIP's ResNet image tower: open_clip's structure and names, gradients on every tensor,
//! BatchNorm's two modes, exact resume, features equal to a NumPy re-implementation of
//! open_clip's `ModifiedResNet`, and learning.

use crate::common;

use crate::common::{batch, cosine, norm};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use wit_trainer::{
    ClipConfig, ClipModel, MicroBatch, PosEmbedInit, TrainConfig, Trainer, VisionConfig,
    VisionLayers,
};

/// A ResNet CLIP small enough for many steps: 32 px images, two blocks in the second stage (one
/// with a projecting shortcut, one without), 256 channels into the attention pool (4 heads).
fn micro_resnet() -> ClipConfig {
    ClipConfig {
        embed_dim: 16,
        vision_cfg: VisionConfig {
            image_size: 32,
            layers: VisionLayers::ResNet([1, 2, 1, 1]),
            width: 8,
            patch_size: None,
            heads: None,
            mlp_ratio: 4.0,
            head_width: 64,
            pos_embed_init: PosEmbedInit::Random,
        },
        text_cfg: common::micro_text(),
        quick_gelu: false,
    }
}

/// The synthetic task's batch with its 16 px images doubled to the ResNet's 32 px.
fn rn_batch(classes: &[usize], rng: &mut ChaCha8Rng, dtype: DType) -> MicroBatch {
    let b = batch(classes, rng, dtype);
    MicroBatch {
        images: b.images.upsample_nearest2d(32, 32).unwrap(),
        ..b
    }
}

fn trainer(dtype: DType, cfg: TrainConfig) -> Trainer {
    Trainer::with_dtype(&micro_resnet(), cfg, &Device::Cpu, dtype).unwrap()
}

fn fast() -> TrainConfig {
    TrainConfig {
        steps: 100,
        lr: 5e-3,
        warmup: 1,
        ..TrainConfig::default()
    }
}

/// Every trainable tensor and every buffer, flattened to f64, by name.
fn snapshot(m: &ClipModel) -> BTreeMap<String, Vec<f64>> {
    m.vars()
        .iter()
        .chain(m.buffers())
        .map(|(n, v)| {
            let values = v.as_tensor().to_dtype(DType::F64).unwrap();
            (n.clone(), values.flatten_all().unwrap().to_vec1().unwrap())
        })
        .collect()
}

#[test]
fn open_clips_resnet_json_reads_unchanged_and_builds_its_parameters() {
    // open_clip's src/open_clip/model_configs/RN50.json.
    let text = r#"{"embed_dim": 1024, "vision_cfg": {"image_size": 224, "layers": [3, 4, 6, 3],
        "width": 64, "patch_size": null}, "text_cfg": {"context_length": 77, "vocab_size": 49408,
        "width": 512, "heads": 8, "layers": 12}}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("RN50.json");
    std::fs::write(&path, text).unwrap();
    let cfg = ClipConfig::resolve(path.to_str().unwrap()).unwrap();
    assert_eq!(cfg, ClipConfig::named("rn50").unwrap());
    assert_eq!(cfg.vision_cfg.num_heads(), 32);
    // open_clip's ModifiedResNet(...).named_parameters() / named_buffers(), counted with
    // open_clip 3.3.0: tensors and elements.
    for (name, params, buffers) in [
        ("rn50", (174, 38_316_896), (165, 53_303)),
        ("tiny-rn", (66, 1_362_200), (57, 4_883)),
    ] {
        let m = ClipModel::new(
            &ClipConfig::named(name).unwrap(),
            0,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let count = |vars: Vec<&candle_core::Var>| {
            (
                vars.len(),
                vars.iter().map(|v| v.elem_count()).sum::<usize>(),
            )
        };
        let visual = m.vars().iter().filter(|(n, _)| n.starts_with("visual."));
        assert_eq!(count(visual.map(|(_, v)| v).collect()), params, "{name}");
        assert_eq!(count(m.buffers().values().collect()), buffers, "{name}");
        assert!(m.vars().keys().all(|n| !n.starts_with("vision_model")));
    }
    let shape = |m: &ClipModel, n: &str| m.vars()[n].dims().to_vec();
    let m = ClipModel::new(&micro_resnet(), 0, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(shape(&m, "visual.conv1.weight"), [4, 3, 3, 3]);
    assert_eq!(
        shape(&m, "visual.layer2.0.downsample.0.weight"),
        [64, 32, 1, 1]
    );
    assert_eq!(shape(&m, "visual.layer2.1.conv2.weight"), [16, 16, 3, 3]);
    assert_eq!(shape(&m, "visual.attnpool.positional_embedding"), [2, 256]);
    assert_eq!(shape(&m, "visual.attnpool.c_proj.weight"), [16, 256]);
    assert!(!m.vars().contains_key("visual.layer2.1.downsample.0.weight"));
    let bad = ClipConfig {
        vision_cfg: VisionConfig {
            image_size: 48,
            ..micro_resnet().vision_cfg
        },
        ..micro_resnet()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("multiple of 32"), "{err}");
}

#[test]
fn every_trainable_tensor_gets_a_gradient_after_one_step() {
    // open_clip starts each block's last BatchNorm gain at zero, which keeps the gradient of the
    // convolution before it at zero until the first update moves the gain.
    let mut t = trainer(DType::F32, fast());
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let b = rn_batch(&[0, 5, 9, 17, 33, 62], &mut rng, DType::F32);
    t.step(std::slice::from_ref(&b)).unwrap();
    let g = t.gradients(std::slice::from_ref(&b)).unwrap();
    common::assert_every_tensor_learns(&t, &g, 61, 1e-7);
}

#[test]
fn gradients_match_finite_differences() {
    let mut t = trainer(DType::F64, fast());
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let b = rn_batch(&[0, 13, 21, 34, 55], &mut rng, DType::F64);
    // One step first, so no block's branch is zeroed by its starting gain.
    t.step(std::slice::from_ref(&b)).unwrap();
    let g = t.gradients(std::slice::from_ref(&b)).unwrap();
    let probes = [
        ("visual.conv1.weight", 7),
        ("visual.bn1.weight", 1),
        ("visual.bn2.bias", 1),
        ("visual.conv2.weight", 1),
        ("visual.conv3.weight", 30),
        ("visual.layer1.0.conv2.weight", 11),
        ("visual.layer1.0.bn3.weight", 5),
        ("visual.layer2.0.downsample.0.weight", 40),
        ("visual.layer2.1.conv1.weight", 3),
        ("visual.layer4.0.downsample.1.weight", 9),
        ("visual.attnpool.positional_embedding", 300),
        ("visual.attnpool.q_proj.weight", 1000),
        ("visual.attnpool.c_proj.bias", 2),
    ];
    // A step this small: a stem weight moves the input of every later ReLU (BatchNorm's batch
    // statistics spread it), so at 1e-5 one of ~10⁵ of them is likely to cross its kink and
    // the difference quotient is off by ~1%; at 1e-7 it agrees to eight digits.
    let h = 1e-7;
    for (name, idx) in probes {
        let var = &t.model().vars()[name];
        let at = |value: f64| {
            let mut v: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            v[idx] = value;
            var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                .unwrap();
            t.gradients(std::slice::from_ref(&b)).unwrap().loss
        };
        let w = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[idx];
        let numeric = (at(w + h) - at(w - h)) / (2.0 * h);
        at(w);
        let analytic = g.grads[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[idx];
        assert!(
            (numeric - analytic).abs() <= 1e-7 + 1e-4 * numeric.abs(),
            "{name}[{idx}]: analytic {analytic} vs finite difference {numeric}"
        );
        assert!(
            analytic.abs() > 1e-9,
            "{name}[{idx}]: a zero probe checks nothing"
        );
    }
}

#[test]
fn inference_uses_running_statistics_that_training_folds_in_once_per_micro_batch() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let parts: Vec<MicroBatch> = (0..2)
        .map(|i| rn_batch(&[i, i + 7, i + 20, i + 41], &mut rng, DType::F64))
        .collect();
    // lr 0 leaves the weights alone, so only the running statistics move.
    let frozen = TrainConfig { lr: 0.0, ..fast() };
    let mut accumulated = trainer(
        DType::F64,
        TrainConfig {
            accum: 2,
            ..frozen.clone()
        },
    );
    accumulated.step(&parts).unwrap();
    let mut one_by_one = trainer(DType::F64, frozen);
    for part in &parts {
        one_by_one.step(std::slice::from_ref(part)).unwrap();
    }
    let (acc, seq) = (snapshot(accumulated.model()), snapshot(one_by_one.model()));
    let fresh = snapshot(&ClipModel::new(&micro_resnet(), 0, DType::F64, &Device::Cpu).unwrap());
    for name in accumulated.model().buffers().keys() {
        let moved = acc[name]
            .iter()
            .zip(&fresh[name])
            .any(|(a, b)| (a - b).abs() > 1e-6);
        assert!(moved, "{name} did not follow the training batches");
        let same = acc[name]
            .iter()
            .zip(&seq[name])
            .all(|(a, b)| (a - b).abs() < 1e-12);
        assert!(
            same,
            "{name}: accumulation folded a micro-batch in more than once"
        );
    }
    // Inference reads those statistics: an image's features do not depend on its batch mates.
    let m = accumulated.model();
    let images = &parts[0].images;
    let together = m.encode_image(images).unwrap().narrow(0, 0, 1).unwrap();
    let alone = m.encode_image(&images.narrow(0, 0, 1).unwrap()).unwrap();
    assert!(norm(&(together - alone).unwrap()) < 1e-12);
}

#[test]
fn resume_continues_identically_with_the_running_statistics() {
    let cfg = TrainConfig {
        steps: 4,
        accum: 2,
        ..fast()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let batches: Vec<MicroBatch> = (0..8)
        .map(|i| rn_batch(&[i, i + 10, i + 20, i + 30], &mut rng, DType::F32))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut a = trainer(DType::F32, cfg);
    for s in 0..2 {
        a.step(&batches[2 * s..2 * s + 2]).unwrap();
    }
    a.save(dir.path(), serde_json::Value::Null).unwrap();
    let (mut b, _) = Trainer::resume(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(snapshot(a.model()), snapshot(b.model()));
    for s in 2..4 {
        let (la, lb) = (
            a.step(&batches[2 * s..2 * s + 2]).unwrap().loss,
            b.step(&batches[2 * s..2 * s + 2]).unwrap().loss,
        );
        assert_eq!(la, lb, "step {s}");
    }
    assert_eq!(snapshot(a.model()), snapshot(b.model()));
}

#[test]
fn exported_features_match_a_numpy_modified_resnet() {
    // Trained a few steps, so the last gains are not zero and the running statistics are not
    // the identity: every part of the tower shows in the features.
    let mut t = trainer(DType::F32, fast());
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for i in 0..4 {
        let b = rn_batch(
            &[i, i + 9, i + 18, i + 27, i + 36, i + 45],
            &mut rng,
            DType::F32,
        );
        t.step(&[b]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    wit_trainer::export(t.model(), dir.path()).unwrap();
    let images = rn_batch(&[3, 14, 15, 59], &mut rng, DType::F32).images;
    let features = t.model().image_features(&images).unwrap();
    let (img_path, feat_path) = (
        dir.path().join("images.f32"),
        dir.path().join("features.f32"),
    );
    common::write_f32(&img_path, &images);
    common::write_f32(&feat_path, &features);
    let report = common::run_reference(
        "modified_resnet.py",
        [
            dir.path(),
            &img_path,
            &feat_path,
            Path::new("4"),
            Path::new("32"),
        ],
    );
    let (diff, scale) = (
        report["max_diff"].as_f64().unwrap(),
        report["max_abs"].as_f64().unwrap(),
    );
    assert!(scale > 1e-3, "features vanished: {report}");
    assert!(
        diff <= 1e-4 * scale,
        "wit and the reference differ: {report}"
    );
    // With a Python that has torch and open_clip (WIT_PYTHON=bench/.work/torch-venv/bin/python
    // after `bash bench/run.sh`), the reference is itself checked against open_clip.
    if let Some(theirs) = report["open_clip_max_diff"].as_f64() {
        assert!(
            theirs <= 1e-9 * scale,
            "NumPy and open_clip differ: {report}"
        );
    }
    // Every BatchNorm counted the four training batches, in the i64 PyTorch keeps.
    let saved =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let counters: Vec<&Tensor> = saved
        .iter()
        .filter(|(n, _)| n.ends_with(".num_batches_tracked"))
        .map(|(_, t)| t)
        .collect();
    assert_eq!(counters.len(), t.model().buffers().len() / 3);
    for c in counters {
        assert_eq!(c.dtype(), DType::I64);
        assert_eq!(c.to_scalar::<i64>().unwrap(), 4);
    }
    // The export reloads to the same features (weights and running statistics both saved).
    let loaded = wit_trainer::load_model(dir.path(), &Device::Cpu).unwrap();
    let again = loaded.image_features(&images).unwrap();
    assert_eq!(norm(&(again - features).unwrap()), 0.0);
}

/// All of `grads`' visual tensors as one f64 vector, in name order.
fn visual_gradient(grads: &BTreeMap<String, Tensor>) -> Tensor {
    let parts: Vec<Tensor> = grads
        .iter()
        .filter(|(n, _)| n.starts_with("visual."))
        .map(|(_, g)| g.to_dtype(DType::F64).unwrap().flatten_all().unwrap())
        .collect();
    Tensor::cat(&parts, 0).unwrap()
}

#[test]
fn bf16_compute_keeps_the_gradient_direction_and_learns() {
    let t32 = trainer(DType::F32, fast());
    let mut tbf = trainer(DType::F32, fast());
    tbf.set_compute_dtype(DType::BF16).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let b = rn_batch(&[1, 9, 17, 25, 33, 41], &mut rng, DType::F32);
    let g32 = t32.gradients(std::slice::from_ref(&b)).unwrap();
    let gbf = tbf.gradients(std::slice::from_ref(&b)).unwrap();
    assert!((g32.loss - gbf.loss).abs() < 0.05 * g32.loss);
    assert!(gbf.grads.values().all(|g| g.dtype() == DType::F32));
    // Per tensor, bf16's 8-bit mantissa is too coarse for BatchNorm's gain gradients (sums of
    // cancelling terms; PyTorch's autocast has the same limit): the tower's gradient as a
    // whole must still point the same way, and bf16 steps must learn.
    let cos = cosine(&visual_gradient(&gbf.grads), &visual_gradient(&g32.grads));
    assert!(cos > 0.9, "bf16 visual gradient cosine {cos}");
    let mut steps = Vec::new();
    for _ in 0..30 {
        steps.push(tbf.step(std::slice::from_ref(&b)).unwrap().loss);
    }
    assert!(
        steps[29] < 0.3 * steps[0],
        "bf16 loss {} -> {}",
        steps[0],
        steps[29]
    );
}

#[test]
fn a_small_resnet_clip_learns_retrieval_far_above_chance() {
    let r = common::learn_and_score(&micro_resnet(), 120, 7, |c, rng| {
        rn_batch(c, rng, DType::F32)
    });
    assert!(
        r.text_to_image.r1 >= 0.5 && r.image_to_text.r1 >= 0.5,
        "{r:?}"
    );
}

#[test]
fn a_locked_resnet_keeps_its_running_statistics_only_when_asked() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let b = rn_batch(&[2, 9, 17, 30], &mut rng, DType::F32);
    for freeze in [false, true] {
        let mut t = trainer(
            DType::F32,
            TrainConfig {
                lock_image: true,
                lock_image_freeze_bn_stats: freeze,
                ..fast()
            },
        );
        let before = snapshot(t.model());
        let stepped = t.step(std::slice::from_ref(&b)).unwrap();
        assert!(stepped.loss.is_finite());
        let after = snapshot(t.model());
        for name in t.model().buffers().keys() {
            assert_eq!(
                before[name] == after[name],
                freeze,
                "{name} (freeze {freeze})"
            );
        }
    }
    // open_clip cannot partly lock a ResNet either.
    let partial = TrainConfig {
        lock_image: true,
        lock_image_unlocked_groups: 1,
        ..fast()
    };
    assert!(Trainer::new(&micro_resnet(), partial, &Device::Cpu).is_err());
}
