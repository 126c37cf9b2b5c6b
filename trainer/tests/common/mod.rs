//! What the trainer's test files share: a synthetic image-caption task whose classes are told
//! apart by image regions and caption tokens, and tensor comparisons.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use wit_trainer::{ClipConfig, Gradients, MicroBatch, Retrieval, TextConfig, TrainConfig, Trainer};

/// The text tower of the test models: the synthetic task's 16-token vocabulary, 8-token
/// captions, two small blocks.
pub fn micro_text() -> TextConfig {
    TextConfig {
        context_length: 8,
        vocab_size: 16,
        width: 32,
        heads: 2,
        layers: 2,
        mlp_ratio: 2.0,
        eot_token_id: None,
        sot_token_id: None,
        pad_token_id: None,
    }
}

/// The synthetic task: class `c` has 6 bits; bit i brightens one of 6 image regions (plus noise) and
/// writes token `1 + 2i + bit` into the caption, which ends with the end-of-text token 15 (the
/// highest id). Captions of different classes differ, so retrieval can be scored exactly.
pub fn pair(c: usize, rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<u32>) {
    let mut img = vec![0f32; 3 * 16 * 16];
    for (k, px) in img.iter_mut().enumerate() {
        let (ch, y, x) = (k / 256, (k / 16) % 16, k % 16);
        let region = (y / 8) * 3 + x * 3 / 16;
        let bit = (c >> region) & 1;
        let signal = if bit == 1 { 1.0 } else { -1.0 } * if ch == region % 3 { 1.0 } else { 0.5 };
        *px = signal + 0.3 * (rng.random::<f32>() - 0.5);
    }
    let mut tokens: Vec<u32> = (0..6)
        .map(|i| 1 + 2 * i as u32 + ((c >> i) & 1) as u32)
        .collect();
    tokens.push(15);
    tokens.push(0);
    (img, tokens)
}

/// A micro-batch of the synthetic task's pairs for `classes`, 16 px images in `dtype`.
pub fn batch(classes: &[usize], rng: &mut ChaCha8Rng, dtype: DType) -> MicroBatch {
    let (imgs, toks): (Vec<_>, Vec<_>) = classes.iter().map(|&c| pair(c, rng)).unzip();
    let b = classes.len();
    MicroBatch {
        images: Tensor::from_vec(imgs.concat(), (b, 3, 16, 16), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
        tokens: Tensor::from_vec(toks.concat(), (b, 8), &Device::Cpu).unwrap(),
        negatives: None,
    }
}

/// The Frobenius norm of a tensor, in f64.
pub fn norm(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .sqrt()
}

/// Cosine of the angle between two tensors of one shape (on any devices).
pub fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let a = a
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let b = b
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let dot = (&a * &b)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    dot / (norm(&a) * norm(&b))
}

/// Trains `clip` for `steps` steps on random 32-class batches of the synthetic task (made by
/// `make`), then scores retrieval among all 64 classes' held-out pairs (chance: 1/64).
pub fn learn_and_score(
    clip: &ClipConfig,
    steps: u64,
    seed: u64,
    make: impl Fn(&[usize], &mut ChaCha8Rng) -> MicroBatch,
) -> Retrieval {
    let cfg = TrainConfig {
        steps,
        lr: 2e-3,
        warmup: (steps / 12).max(1),
        ..TrainConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let train_batches: Vec<Result<MicroBatch, wit_trainer::TrainError>> = (0..steps)
        .map(|_| {
            let classes: Vec<usize> = rand::seq::index::sample(&mut rng, 64, 32).into_vec();
            Ok(make(&classes, &mut rng))
        })
        .collect();
    let t = wit_trainer::train(clip, cfg, &Device::Cpu, train_batches, |_, _| Ok(true)).unwrap();
    let all: Vec<usize> = (0..64).collect();
    let held_out = make(&all, &mut ChaCha8Rng::seed_from_u64(99));
    let (img, txt) = wit_trainer::embed(t.model(), [Ok(held_out)]).unwrap();
    let r = wit_trainer::retrieval(&img, &txt).unwrap();
    assert_eq!(r.n, 64);
    r
}

/// Every trainable tensor of `t`'s model (at least `min_tensors` of them) has a gradient in `g`
/// with a finite norm above `floor`: the graph reaches it (the fused-kernel trap). Key biases
/// only need to be present and finite: shifting every key of a query equally moves nothing
/// softmax sees, so their true gradient is zero.
pub fn assert_every_tensor_learns(t: &Trainer, g: &Gradients, min_tensors: usize, floor: f64) {
    let vars = t.model().vars();
    assert!(
        vars.len() >= min_tensors,
        "expected the full parameter set, got {}",
        vars.len()
    );
    for name in vars.keys() {
        let grad = g
            .grads
            .get(name)
            .unwrap_or_else(|| panic!("{name} got no gradient: the graph is cut"));
        let n = norm(grad);
        let learns = n > floor || name.ends_with("k_proj.bias");
        assert!(n.is_finite() && learns, "{name} gradient norm {n}");
    }
}

/// Writes a tensor's values as raw little-endian f32, the form the Python references read.
pub fn write_f32(path: &Path, t: &Tensor) {
    let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// `WIT_PYTHON`, else the repo's `.venv` (`scripts/setup-python.sh`): NumPy is all the
/// references need; with torch and open_clip or transformers there, they check themselves
/// against those too.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("WIT_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python at {}: run `bash scripts/setup-python.sh` (or set WIT_PYTHON)",
        venv.display()
    );
    venv
}

/// Runs the Python reference `script` (a file in tests/) with `args` and returns the JSON report it
/// prints; a failing script fails the test with its stderr.
pub fn run_reference<I, S>(script: &str, args: I) -> serde_json::Value
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = std::process::Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{script}: {report}");
    report
}
