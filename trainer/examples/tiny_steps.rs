//! Measures training steps per second of a built-in config on synthetic data, for comparing with
//! PyTorch on the same model and batch: `cargo run --release -p wit-trainer --example tiny_steps --
//! [config] [batch] [steps]`.

use std::time::Instant;
use wit_trainer::candle::{DType, Tensor};
use wit_trainer::{ClipConfig, MicroBatch, TrainConfig, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    wit_trainer::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map_or("tiny", String::as_str);
    let batch: usize = args.get(2).map_or(Ok(128), |s| s.parse())?;
    let steps: usize = args.get(3).map_or(Ok(10), |s| s.parse())?;
    let mut clip = ClipConfig::named(name).ok_or("unknown config")?;
    // `wit train` sizes the vocabulary to its tokenizer (4096 by default).
    clip.text_cfg.vocab_size = args.get(5).map_or(Ok(4096), |s| s.parse())?;
    let device = wit_trainer::parse_device(args.get(4).map_or("cpu", String::as_str))?;
    let mut trainer = Trainer::new(&clip, TrainConfig::default(), &device)?;
    let side = clip.vision_cfg.image_size;
    let images = Tensor::randn(0f32, 1.0, (batch, 3, side, side), &device)?;
    let tokens = Tensor::rand(
        0f32,
        (clip.text_cfg.vocab_size - 1) as f32,
        (batch, 77),
        &device,
    )?
    .to_dtype(DType::U32)?;
    let micro = [MicroBatch { images, tokens }];
    trainer.step(&micro)?;
    let start = Instant::now();
    for _ in 0..steps {
        trainer.step(&micro)?;
    }
    let s = start.elapsed().as_secs_f64();
    let t = Instant::now();
    trainer.gradients(&micro)?;
    println!("gradients alone: {:.3} s", t.elapsed().as_secs_f64());
    println!(
        "{name} batch {batch}: {:.3} steps/s, {:.1} pairs/s",
        steps as f64 / s,
        (steps * batch) as f64 / s
    );
    Ok(())
}
