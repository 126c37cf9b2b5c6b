//! `wit export`: a model folder rewritten in open_clip's `local-dir:` layout, so open_clip and the
//! tools built on it (CLIP_benchmark) load a wit model, ResNet ones included.

use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use wit_trainer::candle::Device;

/// Flags of `wit export`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A `wit train --out` folder (or a Hugging Face ViT CLIP folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Folder to write `open_clip_model.safetensors`, `open_clip_config.json` and a copy of the
    /// checkpoint's `tokenizer.json` into. Load it with
    /// `open_clip.create_model_and_transforms("local-dir:OUT")`.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `wit export`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let model = wit_trainer::load_model(&args.checkpoint, &Device::Cpu)
        .with_context(|| format!("cannot load a model from {}", args.checkpoint.display()))?;
    let normalisation = (wit_loader::CLIP_MEAN, wit_loader::CLIP_STD);
    wit_trainer::open_clip::export(&model, &args.out, normalisation)?;
    let tokenizer = args.checkpoint.join(super::train::TOKENIZER_FILE);
    if tokenizer.exists() {
        std::fs::copy(&tokenizer, args.out.join(super::train::TOKENIZER_FILE))
            .with_context(|| format!("cannot copy {}", tokenizer.display()))?;
    }
    println!(
        "open_clip form in {0}: open_clip.create_model_and_transforms(\"local-dir:{0}\")",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
