//! `wit bench train`: optimiser steps per second of a model config on synthetic pairs, the number
//! `bench/` compares with the same model and batch in PyTorch (`bench/torch_clip.py`).

use anyhow::Context;
use rand::{Rng, SeedableRng};
use std::process::ExitCode;
use std::time::Instant;
use wit_trainer::candle::{Device, Tensor};
use wit_trainer::{ClipConfig, MicroBatch, TrainConfig, Trainer};

/// Flags of `wit bench train`.
#[derive(clap::Args, Debug)]
pub struct TrainBenchArgs {
    /// Model: `tiny`, `tiny-rn`, `vit-s-32`, `vit-b-32`, `vit-b-16`, `rn50` (ResNet-50), or an
    /// open_clip model JSON file (a list of four `layers` makes a ResNet image tower).
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Pairs per step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Timed steps (after `--warmup-steps` untimed ones).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed steps first (allocator and thread pools settle).
    #[arg(long, default_value_t = 2)]
    pub warmup_steps: usize,
    /// Tokens per caption between the start and end tokens (the demo's captions have 12–20).
    #[arg(long, default_value_t = 16)]
    pub caption_tokens: usize,
    /// Vocabulary (`wit train`'s default tokenizer has 4096).
    #[arg(long, default_value_t = 4096)]
    pub vocab_size: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// On CUDA, time candle's plain-op graphs instead of wit's CUDA ops (GELU, LayerNorm,
    /// linear, attention, AdamW): what those buy, measured on the same GPU.
    #[arg(long)]
    pub no_cuda_kernels: bool,
}

/// Runs `wit bench train`: prints `steps/s: N`, `samples/s: N`, then milliseconds per step of the
/// forward pass alone and with the backward pass (each timed on its own), beside the whole step.
pub fn bench_train(args: TrainBenchArgs) -> anyhow::Result<ExitCode> {
    wit_trainer::tune_allocator();
    let mut clip = ClipConfig::resolve(&args.config)?;
    clip.text_cfg.vocab_size = args.vocab_size;
    let device = wit_trainer::parse_device(&args.device)?;
    wit_trainer::use_cuda_kernels(!args.no_cuda_kernels);
    let mut trainer = Trainer::new(&clip, TrainConfig::default(), &device)?;
    let micro = [synthetic_batch(&clip, &args, &device)?];
    for _ in 0..args.warmup_steps {
        trainer.step(&micro)?;
    }
    let step_ms = time_ms(&device, args.steps, || {
        trainer.step(&micro).context("training step failed")?;
        Ok(())
    })?;
    let secs = (step_ms * args.steps as f64 / 1e3).max(1e-9);
    println!("config: {} batch {}", args.config, args.batch_size);
    println!("steps/s: {:.4}", args.steps as f64 / secs);
    println!(
        "samples/s: {:.1}",
        (args.steps * args.batch_size) as f64 / secs
    );
    let batch = &micro[0];
    let forward = time_ms(&device, args.steps, || {
        let image = trainer.model().encode_image(&batch.images)?;
        let text = trainer.model().encode_text(&batch.tokens)?;
        wit_trainer::clip_loss(&image, &text, None, trainer.model().logit_scale())?;
        Ok(())
    })?;
    let gradients = time_ms(&device, args.steps, || {
        trainer.gradients(&micro)?;
        Ok(())
    })?;
    println!(
        "ms per step: forward {forward:.1}, forward + backward {gradients:.1}, whole step {step_ms:.1}"
    );
    Ok(ExitCode::SUCCESS)
}

/// Mean milliseconds of `f` over `runs` runs, the device drained before and after.
fn time_ms(
    device: &Device,
    runs: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..runs {
        f()?;
    }
    device.synchronize()?;
    Ok(1e3 * start.elapsed().as_secs_f64() / runs.max(1) as f64)
}

/// Gaussian images and captions of `caption_tokens` random ids framed by start (`vocab - 2`) and
/// end (`vocab - 1`, the highest id, as CLIP's BPE has it), zero-padded to 77 like the loader's.
fn synthetic_batch(
    clip: &ClipConfig,
    args: &TrainBenchArgs,
    device: &Device,
) -> anyhow::Result<MicroBatch> {
    let (b, side, vocab) = (
        args.batch_size,
        clip.vision_cfg.image_size,
        args.vocab_size as u32,
    );
    anyhow::ensure!(
        vocab > 3 && args.caption_tokens + 2 <= 77,
        "--vocab-size must exceed 3 and --caption-tokens be at most 75"
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut tokens = Vec::with_capacity(b * 77);
    for _ in 0..b {
        tokens.push(vocab - 2);
        tokens.extend((0..args.caption_tokens).map(|_| rng.random_range(1..vocab - 2)));
        tokens.push(vocab - 1);
        tokens.resize(tokens.len().next_multiple_of(77), 0);
    }
    Ok(MicroBatch {
        images: Tensor::randn(0f32, 1.0, (b, 3, side, side), device)?,
        tokens: Tensor::from_vec(tokens, (b, 77), device)?,
        negatives: None,
    })
}
