//! Training correctness: gradients reach every tensor (the fused-kernel trap), f32 matches an f64
//! reference and finite differences, accumulation equals one big batch, resume is exact, and a small
//! model learns a synthetic task far above chance.

use crate::common;

use crate::common::{batch, cosine, norm};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use wit_trainer::{
    ClipConfig, MicroBatch, PosEmbedInit, TrainConfig, Trainer, VisionConfig, VisionLayers,
};

/// A CLIP small enough to run many steps in a test: 16 px images in 4 px patches, 8-token captions.
fn micro_config() -> ClipConfig {
    ClipConfig {
        embed_dim: 16,
        vision_cfg: VisionConfig {
            image_size: 16,
            layers: VisionLayers::Transformer(2),
            width: 32,
            patch_size: Some(4),
            heads: Some(2),
            mlp_ratio: 2.0,
            head_width: 64,
            pos_embed_init: PosEmbedInit::SinCos2d,
        },
        text_cfg: common::micro_text(),
        quick_gelu: false,
    }
}

fn trainer(dtype: DType, cfg: TrainConfig) -> Trainer {
    Trainer::with_dtype(&micro_config(), cfg, &Device::Cpu, dtype).unwrap()
}

/// The losses of the first and the last of `steps` steps on one batch.
fn first_and_last_loss(t: &mut Trainer, b: &MicroBatch, steps: usize) -> (f64, f64) {
    let first = t.step(std::slice::from_ref(b)).unwrap().loss;
    let mut last = first;
    for _ in 1..steps {
        last = t.step(std::slice::from_ref(b)).unwrap().loss;
    }
    (first, last)
}

#[test]
fn every_trainable_tensor_gets_a_finite_nonzero_gradient() {
    let t = trainer(DType::F32, TrainConfig::default());
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let g = t
        .gradients(&[batch(&[0, 5, 9, 17, 33, 62], &mut rng, DType::F32)])
        .unwrap();
    common::assert_every_tensor_learns(&t, &g, 41, 1e-6);
}

#[test]
fn loss_falls_on_a_fixed_batch() {
    let cfg = TrainConfig {
        steps: 40,
        lr: 2e-3,
        warmup: 2,
        ..TrainConfig::default()
    };
    let mut t = trainer(DType::F32, cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let b = batch(
        &(0..16).map(|i| i * 4).collect::<Vec<_>>(),
        &mut rng,
        DType::F32,
    );
    let (first, last) = first_and_last_loss(&mut t, &b, 40);
    assert!(last < 0.3 * first, "loss went from {first} to {last}");
}

/// The CLIP loss written out by hand in f64 from the embeddings; `neg` are hard-negative text
/// embeddings that only the image→text rows see.
fn reference_loss(img: &[Vec<f64>], txt: &[Vec<f64>], neg: &[Vec<f64>], scale: f64) -> f64 {
    let n = img.len();
    let dot = |a: &[f64], b: &[f64]| scale.exp() * a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let columns: Vec<&Vec<f64>> = txt.iter().chain(neg).collect();
    let ce = |logits: Vec<f64>, i: usize| {
        let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
        lse - logits[i]
    };
    let rows: f64 = (0..n)
        .map(|i| ce(columns.iter().map(|c| dot(&img[i], c)).collect(), i))
        .sum();
    let cols: f64 = (0..n)
        .map(|i| ce(img.iter().map(|m| dot(m, &txt[i])).collect(), i))
        .sum();
    (rows + cols) / (2.0 * n as f64)
}

/// Embedding rows in f64.
type Rows = Vec<Vec<f64>>;

/// Image, caption and hard-negative embeddings of `b`.
fn embed(t: &Trainer, b: &MicroBatch) -> (Rows, Rows, Rows) {
    let m = t.model();
    let img = m.encode_image(&b.images).unwrap().to_vec2::<f64>().unwrap();
    let txt = m.encode_text(&b.tokens).unwrap().to_vec2::<f64>().unwrap();
    let neg = match &b.negatives {
        Some(n) => m.encode_text(n).unwrap().to_vec2::<f64>().unwrap(),
        None => Vec::new(),
    };
    (img, txt, neg)
}

#[test]
fn loss_matches_a_hand_computed_reference() {
    let t = trainer(DType::F64, TrainConfig::default());
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let b = batch(&[1, 2, 3, 40, 50], &mut rng, DType::F64);
    let (img, txt, neg) = embed(&t, &b);
    let want = reference_loss(&img, &txt, &neg, wit_trainer::model::LOGIT_SCALE_INIT);
    let got = t.gradients(&[b]).unwrap().loss;
    assert!((got - want).abs() < 1e-10, "loss {got} vs reference {want}");
}

/// A batch of `classes` whose hard negatives are the captions of `negative_classes`.
fn batch_with_negatives(classes: &[usize], negative_classes: &[usize], seed: u64) -> MicroBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut b = batch(classes, &mut rng, DType::F64);
    b.negatives = Some(batch(negative_classes, &mut rng, DType::F64).tokens);
    b
}

#[test]
fn hard_negatives_are_extra_image_to_text_columns() {
    let t = trainer(DType::F64, TrainConfig::default());
    let b = batch_with_negatives(&[1, 2, 3, 40, 50], &[5, 6, 7], 9);
    let (img, txt, neg) = embed(&t, &b);
    assert_eq!(neg.len(), 3);
    let scale = wit_trainer::model::LOGIT_SCALE_INIT;
    let want = reference_loss(&img, &txt, &neg, scale);
    let got = t.gradients(std::slice::from_ref(&b)).unwrap().loss;
    assert!((got - want).abs() < 1e-10, "loss {got} vs reference {want}");
    let plain = reference_loss(&img, &txt, &[], scale);
    assert!(
        got > plain,
        "negatives must add wrong answers: {got} vs {plain}"
    );
    let grads = t.gradients(&[b]).unwrap().grads;
    assert!(norm(&grads["text_model.embeddings.token_embedding.weight"]) > 0.0);
}

/// Loss and every gradient of `acc` (accumulated micro-batches) equal those of `one` (one batch).
fn assert_same_gradients(one: &wit_trainer::Gradients, acc: &wit_trainer::Gradients) {
    assert!(
        (one.loss - acc.loss).abs() < 1e-12,
        "loss {} vs {}",
        one.loss,
        acc.loss
    );
    for (name, g) in &one.grads {
        let d = norm(&(&acc.grads[name] - g).unwrap());
        assert!(
            d <= 1e-9 * norm(g) + 1e-14,
            "{name}: accumulated gradient differs by {d}"
        );
    }
}

#[test]
fn accumulated_gradients_with_negatives_equal_one_big_batch() {
    let t = trainer(DType::F64, TrainConfig::default());
    let whole = batch_with_negatives(&[2, 4, 8, 16], &[9, 10, 11, 12], 12);
    let neg = whole.negatives.clone().unwrap();
    let part = |s: usize| MicroBatch {
        images: whole.images.narrow(0, s, 2).unwrap(),
        tokens: whole.tokens.narrow(0, s, 2).unwrap(),
        negatives: Some(neg.narrow(0, s, 2).unwrap()),
    };
    let one = t.gradients(std::slice::from_ref(&whole)).unwrap();
    let acc = t.gradients(&[part(0), part(2)]).unwrap();
    assert_same_gradients(&one, &acc);
}

#[test]
fn f32_loss_and_gradients_match_f64() {
    let t32 = trainer(DType::F32, TrainConfig::default());
    let t64 = trainer(DType::F64, TrainConfig::default());
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let b64 = batch(&[3, 7, 11, 19, 23, 42], &mut rng, DType::F64);
    let b32 = MicroBatch {
        images: b64.images.to_dtype(DType::F32).unwrap(),
        tokens: b64.tokens.clone(),
        negatives: None,
    };
    let g32 = t32.gradients(&[b32]).unwrap();
    let g64 = t64.gradients(&[b64]).unwrap();
    assert!(
        (g32.loss - g64.loss).abs() < 1e-5 * g64.loss.abs().max(1.0),
        "loss {} vs {}",
        g32.loss,
        g64.loss
    );
    for (name, r) in &g64.grads {
        let d = norm(&(g32.grads[name].to_dtype(DType::F64).unwrap() - r).unwrap());
        assert!(
            d <= 1e-3 * norm(r) + 1e-7,
            "{name}: |g32 - g64| = {d}, |g64| = {}",
            norm(r)
        );
    }
}

fn set_element(t: &Trainer, name: &str, idx: usize, value: f64) {
    let var = &t.model().vars()[name];
    let dims = var.dims().to_vec();
    let mut v = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    v[idx] = value;
    var.set(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap())
        .unwrap();
}

fn element(t: &Tensor, idx: usize) -> f64 {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()[idx]
}

#[test]
fn f64_gradients_match_finite_differences() {
    let t = trainer(DType::F64, TrainConfig::default());
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let b = batch(&[0, 13, 21, 34, 55], &mut rng, DType::F64);
    let g = t.gradients(std::slice::from_ref(&b)).unwrap();
    let probes = [
        ("logit_scale", 0),
        ("vision_model.embeddings.patch_embedding.weight", 7),
        ("vision_model.embeddings.class_embedding", 3),
        ("vision_model.pre_layrnorm.weight", 5),
        ("vision_model.encoder.layers.0.self_attn.k_proj.weight", 40),
        ("vision_model.post_layernorm.bias", 1),
        ("text_model.embeddings.token_embedding.weight", 15 * 32 + 2),
        ("text_model.encoder.layers.1.mlp.fc1.weight", 9),
        ("text_model.final_layer_norm.weight", 4),
        ("text_projection.weight", 11),
    ];
    let h = 1e-5;
    for (name, idx) in probes {
        let w = element(t.model().vars()[name].as_tensor(), idx);
        set_element(&t, name, idx, w + h);
        let up = t.gradients(std::slice::from_ref(&b)).unwrap().loss;
        set_element(&t, name, idx, w - h);
        let down = t.gradients(std::slice::from_ref(&b)).unwrap().loss;
        set_element(&t, name, idx, w);
        let numeric = (up - down) / (2.0 * h);
        let analytic = element(&g.grads[name], idx);
        assert!(
            (numeric - analytic).abs() <= 1e-6 + 1e-4 * numeric.abs(),
            "{name}[{idx}]: analytic {analytic} vs finite difference {numeric}"
        );
    }
}

#[test]
fn accumulated_gradients_equal_one_big_batch() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let whole = batch(&[2, 4, 8, 16, 32, 63], &mut rng, DType::F64);
    let part = |s: usize| MicroBatch {
        images: whole.images.narrow(0, s, 2).unwrap(),
        tokens: whole.tokens.narrow(0, s, 2).unwrap(),
        negatives: None,
    };
    // Also with a locked tower, whose second-pass features are the cached first-pass ones.
    for (lock_image, lock_text) in [(false, false), (true, false), (false, true)] {
        let cfg = TrainConfig {
            lock_image,
            lock_text,
            ..TrainConfig::default()
        };
        let t = trainer(DType::F64, cfg);
        let one = t.gradients(std::slice::from_ref(&whole)).unwrap();
        let acc = t.gradients(&[part(0), part(2), part(4)]).unwrap();
        assert_same_gradients(&one, &acc);
        assert!(
            one.grads.keys().eq(acc.grads.keys()),
            "{lock_image} {lock_text}"
        );
    }
}

#[test]
fn weight_decay_skips_one_dimensional_tensors() {
    let t = trainer(DType::F32, TrainConfig::default());
    let opt = t.optimizer();
    for name in [
        "logit_scale",
        "vision_model.embeddings.class_embedding",
        "text_model.final_layer_norm.weight",
        "vision_model.encoder.layers.1.mlp.fc1.bias",
    ] {
        assert_eq!(opt.decays(name), Some(false), "{name}");
    }
    for name in [
        "visual_projection.weight",
        "text_model.embeddings.position_embedding.weight",
        "vision_model.embeddings.patch_embedding.weight",
    ] {
        assert_eq!(opt.decays(name), Some(true), "{name}");
    }
}

fn snapshot(t: &Trainer) -> BTreeMap<String, Vec<f32>> {
    t.model()
        .vars()
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn resume_continues_identically() {
    let cfg = TrainConfig {
        steps: 6,
        lr: 1e-3,
        warmup: 2,
        accum: 2,
        ..TrainConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let batches: Vec<MicroBatch> = (0..12)
        .map(|i| batch(&[i, i + 10, i + 20, i + 30], &mut rng, DType::F32))
        .collect();
    let dir = tempfile::tempdir().unwrap();

    let mut a = trainer(DType::F32, cfg.clone());
    for s in 0..3 {
        a.step(&batches[2 * s..2 * s + 2]).unwrap();
    }
    a.save(dir.path(), serde_json::json!({"loader": {"position": 6}}))
        .unwrap();
    let losses_a: Vec<f64> = (3..6)
        .map(|s| a.step(&batches[2 * s..2 * s + 2]).unwrap().loss)
        .collect();

    let (mut b, extra) = Trainer::resume(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(extra["loader"]["position"], 6);
    assert_eq!(b.step_count(), 3);
    assert_eq!(b.config(), &cfg);
    let losses_b: Vec<f64> = (3..6)
        .map(|s| b.step(&batches[2 * s..2 * s + 2]).unwrap().loss)
        .collect();
    assert_eq!(losses_a, losses_b);
    assert_eq!(snapshot(&a), snapshot(&b));
}

/// The resume files in `dir`.
fn resume_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("resume-"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_save_killed_before_its_state_file_resumes_from_the_save_before() {
    let cfg = TrainConfig {
        lr: 1e-3,
        warmup: 1,
        ..TrainConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let batches: Vec<MicroBatch> = (0..3)
        .map(|i| batch(&[i, i + 4, i + 8], &mut rng, DType::F32))
        .collect();
    let (dir, later) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = trainer(DType::F32, cfg);
    a.step(&batches[..1]).unwrap();
    a.save(dir.path(), serde_json::json!({"at": 1})).unwrap();
    a.step(&batches[1..2]).unwrap();
    a.save(later.path(), serde_json::json!({"at": 2})).unwrap();
    assert_eq!(resume_files(later.path()), ["resume-00000002.safetensors"]);
    // The step-2 save into `dir`, killed after everything but its state file: the export and the
    // new resume file are step 2's, the state file still names step 1's.
    for name in [
        "model.safetensors",
        "config.json",
        "resume-00000002.safetensors",
    ] {
        std::fs::copy(later.path().join(name), dir.path().join(name)).unwrap();
    }
    let (mut b, extra) = Trainer::resume(dir.path(), &Device::Cpu).unwrap();
    assert_eq!((b.step_count(), extra["at"].as_u64()), (1, Some(1)));
    // From step 1's weights and moments, step 2 again lands where the uninterrupted run did.
    b.step(&batches[1..2]).unwrap();
    assert_eq!(snapshot(&a), snapshot(&b));
    let (loss_a, loss_b) = (
        a.step(&batches[2..3]).unwrap().loss,
        b.step(&batches[2..3]).unwrap().loss,
    );
    assert_eq!(loss_a, loss_b);
    // The next save that finishes drops every other resume file, the stray one included.
    b.save(dir.path(), serde_json::Value::Null).unwrap();
    assert_eq!(resume_files(dir.path()), ["resume-00000003.safetensors"]);
}

#[test]
fn a_small_model_learns_retrieval_far_above_chance() {
    let r = common::learn_and_score(&micro_config(), 250, 9, |c, rng| batch(c, rng, DType::F32));
    assert!(
        r.text_to_image.r1 >= 0.5 && r.image_to_text.r1 >= 0.5,
        "{r:?}"
    );
}

#[test]
fn bf16_compute_keeps_f32_master_weights_and_close_gradients() {
    let t32 = trainer(DType::F32, TrainConfig::default());
    let mut tbf = trainer(DType::F32, TrainConfig::default());
    tbf.set_compute_dtype(DType::BF16).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let b = batch(&[1, 9, 17, 25, 33, 41], &mut rng, DType::F32);
    let g32 = t32.gradients(std::slice::from_ref(&b)).unwrap();
    let gbf = tbf.gradients(std::slice::from_ref(&b)).unwrap();
    assert!(
        (g32.loss - gbf.loss).abs() < 0.05 * g32.loss,
        "loss {} vs bf16 {}",
        g32.loss,
        gbf.loss
    );
    for (name, g) in &g32.grads {
        let gb = &gbf.grads[name];
        assert_eq!(
            gb.dtype(),
            DType::F32,
            "{name}: gradients must land on the f32 master weights"
        );
        if name.ends_with("k_proj.bias") {
            continue;
        }
        // bf16 keeps ~3 significant digits: ask for the same direction, not the same digits.
        let cos = cosine(gb, g);
        assert!(cos > 0.98, "{name}: bf16 gradient cosine {cos}");
    }
}

#[test]
fn bf16_weight_copies_follow_the_masters_through_steps_and_loads() {
    let cfg = TrainConfig {
        steps: 3,
        lr: 1e-2,
        warmup: 1,
        ..TrainConfig::default()
    };
    let mut t = trainer(DType::F32, cfg);
    t.set_compute_dtype(DType::BF16).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let b = batch(&[2, 10, 18, 26], &mut rng, DType::F32);
    for _ in 0..3 {
        t.step(std::slice::from_ref(&b)).unwrap();
    }
    // A model loaded from the trained masters must compute exactly what the trained one does:
    // the copies the layers read were rewritten after each update, and again by the load.
    let masters: std::collections::HashMap<String, Tensor> = t
        .model()
        .vars()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let mut fresh =
        wit_trainer::ClipModel::new(&micro_config(), 99, DType::F32, &Device::Cpu).unwrap();
    fresh.set_compute_dtype(DType::BF16).unwrap();
    fresh.load_tensors(&masters).unwrap();
    for (trained, loaded) in [
        (
            t.model().encode_image(&b.images).unwrap(),
            fresh.encode_image(&b.images).unwrap(),
        ),
        (
            t.model().encode_text(&b.tokens).unwrap(),
            fresh.encode_text(&b.tokens).unwrap(),
        ),
    ] {
        assert_eq!(norm(&(trained - loaded).unwrap()), 0.0);
    }
}

#[test]
fn padding_after_the_end_token_never_changes_a_caption_feature() {
    let t = trainer(DType::F64, TrainConfig::default());
    let short = Tensor::new(&[[1u32, 4, 5, 15, 0, 0, 0, 0]], &Device::Cpu).unwrap();
    let long = Tensor::new(
        &[[1u32, 4, 5, 15, 0, 0, 0, 0], [2, 3, 6, 8, 9, 11, 12, 15]],
        &Device::Cpu,
    )
    .unwrap();
    let alone = t
        .model()
        .encode_text(&short)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let beside = t
        .model()
        .encode_text(&long)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let diff = alone[0]
        .iter()
        .zip(&beside[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        diff < 1e-12,
        "a longer neighbour changed the feature by {diff}"
    );
    assert!(beside[1].iter().any(|v| v.abs() > 1e-6));
}

/// On a GPU (feature `cuda`): the CUDA training step against the CPU's f32 step on the same batch
/// and initial weights, with wit's CUDA kernels on and off (the plain-op graphs): the same loss,
/// and every tensor's gradient present and pointing the same way (the fused-kernel trap, on
/// CUDA). Then CUDA steps with the kernels lower the loss. Without a GPU it says so and checks
/// nothing.
#[cfg(feature = "cuda")]
#[test]
fn cuda_training_agrees_with_the_cpu_with_and_without_the_kernels() {
    let Ok(gpu) = wit_trainer::parse_device("cuda") else {
        eprintln!("no CUDA device: CUDA training was not checked");
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let b = batch(&[1, 9, 17, 25, 33, 41, 50, 60], &mut rng, DType::F32);
    let on_gpu = MicroBatch {
        images: b.images.to_device(&gpu).unwrap(),
        tokens: b.tokens.to_device(&gpu).unwrap(),
        negatives: None,
    };
    let cpu = trainer(DType::F32, TrainConfig::default())
        .gradients(std::slice::from_ref(&b))
        .unwrap();
    for kernels in [true, false] {
        wit_trainer::use_cuda_kernels(kernels);
        let t = Trainer::new(&micro_config(), TrainConfig::default(), &gpu).unwrap();
        let g = t.gradients(std::slice::from_ref(&on_gpu)).unwrap();
        let what = if kernels { "kernels" } else { "plain ops" };
        assert!(
            (g.loss - cpu.loss).abs() < 0.05 * cpu.loss,
            "{what}: loss {} vs CPU {}",
            g.loss,
            cpu.loss
        );
        for (name, want) in &cpu.grads {
            let got = g
                .grads
                .get(name)
                .unwrap_or_else(|| panic!("{what}: {name} got no gradient"));
            let got = got.to_device(&Device::Cpu).unwrap();
            assert!(norm(&got).is_finite(), "{what}: {name} gradient not finite");
            if name.ends_with("k_proj.bias") {
                continue;
            }
            let cos = cosine(&got, want);
            eprintln!("{what}: {name} gradient cosine {cos:.5}");
            assert!(
                cos > 0.98,
                "{what}: {name} gradient cosine {cos} against the CPU's"
            );
        }
    }
    wit_trainer::use_cuda_kernels(true);
    let cfg = TrainConfig {
        steps: 40,
        lr: 2e-3,
        warmup: 2,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(&micro_config(), cfg, &gpu).unwrap();
    let (first, last) = first_and_last_loss(&mut t, &on_gpu, 40);
    eprintln!("CUDA loss {first} -> {last}");
    assert!(last < 0.5 * first, "CUDA loss {first} -> {last}");
}

#[test]
fn a_locked_tower_gets_no_gradient_and_stays_while_the_other_learns() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let b = batch(
        &(0..16).map(|i| i * 4).collect::<Vec<_>>(),
        &mut rng,
        DType::F32,
    );
    let image_side = |n: &str| n.starts_with("vision_model") || n.starts_with("visual_projection");
    let text_side = |n: &str| n.starts_with("text_model") || n.starts_with("text_projection");
    for (lock_image, frozen, free) in [
        (
            true,
            &image_side as &dyn Fn(&str) -> bool,
            &text_side as &dyn Fn(&str) -> bool,
        ),
        (false, &text_side, &image_side),
    ] {
        let cfg = TrainConfig {
            steps: 30,
            lr: 2e-3,
            warmup: 2,
            lock_image,
            lock_text: !lock_image,
            ..TrainConfig::default()
        };
        let mut t = trainer(DType::F32, cfg);
        let g = t.gradients(std::slice::from_ref(&b)).unwrap();
        let names: Vec<&String> = t.model().vars().keys().collect();
        assert!(names.iter().any(|n| frozen(n)) && names.iter().any(|n| free(n)));
        for name in names {
            assert_eq!(
                g.grads.contains_key(name),
                !frozen(name),
                "{name} (lock_image {lock_image})"
            );
        }
        let before = snapshot(&t);
        let (first, last) = first_and_last_loss(&mut t, &b, 30);
        let after = snapshot(&t);
        for (name, values) in &before {
            let moved = values != &after[name];
            assert_eq!(moved, !frozen(name), "{name} (lock_image {lock_image})");
        }
        // The free tower alone still fits the fixed batch.
        assert!(
            last < 0.7 * first,
            "lock_image {lock_image}: loss {first} -> {last}"
        );
    }
}

/// open_clip's lock group of a parameter of the micro model (two blocks per tower), in forward
/// order: 1 the stem, 2 block 0, 3 block 1 with the final LayerNorm, 4 the projection. `None`
/// for `logit_scale`, which belongs to no tower.
fn lock_group(name: &str) -> Option<(&'static str, usize)> {
    let tower = match name {
        n if n.starts_with("vision_model") || n.starts_with("visual_projection") => "image",
        n if n.starts_with("text_model") || n.starts_with("text_projection") => "text",
        _ => return None,
    };
    let group = match name {
        n if n.contains("embeddings") || n.contains("pre_layrnorm") => 1,
        n if n.contains("encoder.layers.0.") => 2,
        n if n.contains("encoder.layers.1.") || n.contains("post_layernorm") => 3,
        n if n.contains("final_layer_norm") => 3,
        n if n.ends_with("projection.weight") => 4,
        n => panic!("{n} has no lock group"),
    };
    Some((tower, group))
}

#[test]
fn a_partly_unlocked_tower_trains_exactly_its_last_groups() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let b = batch(&[1, 7, 20, 33, 41, 50], &mut rng, DType::F32);
    for (tower, unlocked) in [
        ("image", 1),
        ("image", 2),
        ("image", 3),
        ("text", 1),
        ("text", 3),
    ] {
        let cfg = TrainConfig {
            lock_image: tower == "image",
            lock_text: tower == "text",
            lock_image_unlocked_groups: if tower == "image" { unlocked } else { 0 },
            lock_text_unlocked_layers: if tower == "text" { unlocked } else { 0 },
            ..TrainConfig::default()
        };
        let t = trainer(DType::F32, cfg);
        let g = t.gradients(std::slice::from_ref(&b)).unwrap();
        for name in t.model().vars().keys() {
            let trains = match lock_group(name) {
                Some((t, group)) if t == tower => group > 4 - unlocked,
                _ => true,
            };
            let grad = g
                .grads
                .get(name)
                .map(|g| g.abs().unwrap().max_all().unwrap());
            let nonzero = grad.is_some_and(|m| m.to_scalar::<f32>().unwrap() > 0.0);
            assert_eq!(
                nonzero, trains,
                "{name}: {tower} tower, {unlocked} groups unlocked"
            );
        }
    }
    // Unlocking every group (or more) trains the whole tower, as if it were not locked.
    let all = TrainConfig {
        lock_image: true,
        lock_image_unlocked_groups: 9,
        ..TrainConfig::default()
    };
    let t = trainer(DType::F32, all);
    let g = t.gradients(std::slice::from_ref(&b)).unwrap();
    assert_eq!(g.grads.len(), t.model().vars().len());
}

#[test]
fn lock_settings_open_clip_would_not_take_are_refused() {
    for cfg in [
        TrainConfig {
            lock_image_unlocked_groups: 1,
            ..TrainConfig::default()
        },
        TrainConfig {
            lock_text_unlocked_layers: 1,
            ..TrainConfig::default()
        },
        TrainConfig {
            lock_image: true,
            lock_image_freeze_bn_stats: true,
            ..TrainConfig::default()
        },
    ] {
        let err = Trainer::new(&micro_config(), cfg.clone(), &Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("accepted {cfg:?}"));
        assert!(err.to_string().contains("lock"), "{err}");
    }
}
