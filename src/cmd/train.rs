//! `wit train`: streams shards through `wit-loader` into `wit-trainer`'s CLIP, logs every step to
//! `OUT/log.jsonl`, shows a progress bar, and checkpoints (model + optimiser + loader position)
//! into `OUT` so `--resume` continues exactly where it stopped.

use anyhow::{bail, Context};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use wit_loader::{CropMode, HardNegatives, Loader, LoaderConfig, LoaderState, TextTokenizer};
use wit_trainer::candle::Device;
use wit_trainer::{AdamWConfig, ClipConfig, MicroBatch, Recall, TrainConfig, Trainer};

use super::eval::{embed_pairs, HeldOut};

/// Tokenizer file kept next to the checkpoint, so eval and resume tokenise as training did.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Per-step JSON lines: step, loss, lr, logit_scale, grad_norm, samples, samples_per_s.
pub const LOG_FILE: &str = "log.jsonl";
/// Per-validation JSON lines ([`Validation`]), with `--val-data`.
pub const VAL_FILE: &str = "val.jsonl";

/// Flags of `wit train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Training shards: tar paths, brace patterns (`out/{00000..00009}.tar`), folders, a
    /// `shardindex.json`, or http(s) URLs. Repeatable.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<String>,
    #[command(flatten)]
    pub remote: super::fetch_args::DataNetArgs,
    /// Model: `tiny`, `tiny-rn`, `vit-s-32`, `vit-b-32`, `vit-b-16`, `rn50` (ResNet-50), or an
    /// open_clip model JSON file (a list of four `layers` makes a ResNet image tower).
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Start from the weights of a model folder instead of a random init (open_clip's
    /// `--pretrained`): a `wit train --out` folder, a Hugging Face ViT CLIP saved by transformers
    /// (`model.safetensors` + `config.json`, e.g. OpenAI's), or open_clip's `local-dir:` layout
    /// (`open_clip_model.safetensors` + `open_clip_config.json`, e.g. a LAION model from the Hub).
    /// Its config replaces `--config`, its `tokenizer.json` is used unless `--tokenizer` is given;
    /// the optimiser starts fresh.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "resume"])]
    pub init: Option<PathBuf>,
    /// A Hugging Face `tokenizer.json`; without it (and without `--init`) a byte-level BPE is
    /// trained on the shards' captions.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary of the tokenizer trained when `--tokenizer` is absent.
    #[arg(long, default_value_t = 4096)]
    pub vocab_size: usize,
    /// Optimiser steps.
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Pairs per micro-batch; the contrastive batch is `batch-size × accum`.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Linear warmup steps before the cosine decay.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Micro-batches per step (open_clip's accum_freq); features are cached so the loss spans all.
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Clip the global gradient norm to this (0 disables clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// AdamW weight decay on matrices (vectors are never decayed).
    #[arg(long, default_value_t = 0.2)]
    pub weight_decay: f64,
    /// AdamW's first-moment decay (open_clip's `--beta1`).
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    /// AdamW's second-moment decay (`--beta2`): CLIP's 0.98 steadies large-batch training;
    /// fine-tuning recipes often use 0.999.
    #[arg(long, default_value_t = 0.98)]
    pub beta2: f64,
    /// Added to the root of AdamW's second moment (`--eps`).
    #[arg(long, default_value_t = 1e-6)]
    pub eps: f64,
    /// Freeze the image tower (open_clip's `--lock-image`): with `--init` from a pretrained model
    /// this is LiT, a text tower taught to read a fixed image embedding. The frozen tower runs no
    /// backward pass, so steps are cheaper.
    #[arg(long)]
    pub lock_image: bool,
    /// Freeze the text tower (open_clip's `--lock-text`).
    #[arg(long)]
    pub lock_text: bool,
    /// With `--lock-image`, leave this many of the ViT's last layer groups trainable (open_clip's
    /// `--lock-image-unlocked-groups`): 1 the projection, 2 also the last block and `ln_post`,
    /// each more one block further down. Frozen groups run no backward pass.
    #[arg(long, default_value_t = 0, requires = "lock_image")]
    pub lock_image_unlocked_groups: usize,
    /// With `--lock-text`, leave this many of the text tower's last layer groups trainable
    /// (open_clip's `--lock-text-unlocked-layers`), counted as for the image tower.
    #[arg(long, default_value_t = 0, requires = "lock_text")]
    pub lock_text_unlocked_layers: usize,
    /// With `--lock-image` on a ResNet, BatchNorm keeps its running statistics and uses them
    /// (open_clip's `--lock-image-freeze-bn-stats`).
    #[arg(long, requires = "lock_image")]
    pub lock_image_freeze_bn_stats: bool,
    /// Draw shards with replacement (open_clip's `--dataset-resampled`, webdataset's
    /// `ResampledShards`): no epoch boundary where every sample was seen once, but no ordering
    /// bias from a long shard list either.
    #[arg(long)]
    pub dataset_resampled: bool,
    /// Samples per epoch (open_clip's `--train-num-samples`); by default the shards' total.
    /// Epochs only set when the shard order is reshuffled: the run lasts `--steps`.
    #[arg(long, value_name = "N")]
    pub train_num_samples: Option<u64>,
    /// Seed of the weights, shard order, shuffle and crops.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N` (CUDA computes in bf16 with f32 master weights).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Crop augmentation: `rrc` (open_clip), `clip` (the paper's random square), `center` (none).
    #[arg(long, default_value = "rrc", value_parser = parse_crop)]
    pub crop: CropMode,
    /// Loader decode threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// NegCLIP's hard negatives: the field of each sample's `.json` member that lists captions
    /// which are wrong for its image (a JSON array, or a string holding one — e.g. a column kept by
    /// `wit download --save-additional-columns`). Each image must rank its caption above them,
    /// which teaches word order, relations and attribute binding that random batches never test.
    #[arg(long, value_name = "FIELD")]
    pub hard_negatives: Option<String>,
    /// Hard negatives drawn per sample and epoch from `--hard-negatives` (each costs one more
    /// caption through the text tower).
    #[arg(long, default_value_t = 1, requires = "hard_negatives")]
    pub negatives_per_sample: usize,
    /// Save a checkpoint every this many steps (and always at the end).
    #[arg(long, default_value_t = 500)]
    pub save_every: u64,
    /// Held-out shards to score while training (open_clip's `--val-data`): before the first
    /// step, every `--val-every` steps and after the last, Recall@1/5/10 both ways and open_clip's `clip_val_loss` over the
    /// first `--val-max-pairs` pairs with distinct captions go to `OUT/val.jsonl` and the log.
    /// The pairs and recalls are `wit eval`'s, so a curve ends where `wit eval` starts.
    #[arg(long, num_args = 1..)]
    pub val_data: Vec<String>,
    /// Steps between validations (with `--val-data`).
    #[arg(long, default_value_t = 500)]
    pub val_every: u64,
    /// Held-out pairs scored per validation (the first ones with distinct captions).
    #[arg(long, default_value_t = 1000)]
    pub val_max_pairs: usize,
    /// Output folder: checkpoint, Hugging Face export, tokenizer.json, log.jsonl, val.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the checkpoint in `--out` exactly where it stopped: its model and training
    /// settings win over the flags; pass the same --data, --batch-size, --dataset-resampled and
    /// --train-num-samples as the first run (the loader checks them).
    #[arg(long)]
    pub resume: bool,
    /// No progress bar (log lines only).
    #[arg(long)]
    pub quiet: bool,
}

/// Parses `--crop`.
pub fn parse_crop(s: &str) -> Result<CropMode, String> {
    match s {
        "rrc" => Ok(CropMode::Rrc),
        "clip" => Ok(CropMode::Clip),
        "center" => Ok(CropMode::Center),
        _ => Err(format!("unknown crop {s:?}; use rrc, clip or center")),
    }
}

/// A loader batch as the trainer's micro-batch.
pub fn micro_batch(b: wit_loader::Batch) -> MicroBatch {
    MicroBatch {
        images: b.images,
        tokens: b.tokens,
        negatives: b.negatives,
    }
}

/// Loads `--tokenizer` or the `--init` folder's, or trains a BPE on the shards' captions.
fn tokenizer(args: &Args) -> anyhow::Result<TextTokenizer> {
    if let Some(path) = &args.tokenizer {
        return Ok(TextTokenizer::from_file(path)?);
    }
    if let Some(dir) = &args.init {
        let path = dir.join(TOKENIZER_FILE);
        return TextTokenizer::from_file(&path).with_context(|| {
            format!(
                "--init {} has no usable {TOKENIZER_FILE}: pass the model's tokenizer with --tokenizer",
                dir.display()
            )
        });
    }
    let source = args.remote.source()?;
    let entries = wit_loader::resolve_shards(&args.data, source.as_ref())?;
    tracing::info!(
        shards = entries.len(),
        vocab = args.vocab_size,
        "training a tokenizer on the captions"
    );
    Ok(TextTokenizer::train(
        wit_loader::read_captions(entries, source),
        args.vocab_size,
    )?)
}

/// The model config: `--init`'s, whose embedding must hold the tokenizer's ids, or `--config`'s
/// with the text tower's vocabulary sized to the tokenizer; the special ids are the tokenizer's.
fn model_config(args: &Args, tok: &TextTokenizer) -> anyhow::Result<ClipConfig> {
    let mut cfg = match &args.init {
        Some(dir) => wit_trainer::checkpoint::read_config(dir)
            .with_context(|| format!("--init {} is not a model folder", dir.display()))?,
        None => ClipConfig::resolve(&args.config)?,
    };
    if args.init.is_none() {
        cfg.text_cfg.vocab_size = tok.vocab_size();
    } else if tok.vocab_size() > cfg.text_cfg.vocab_size {
        bail!(
            "the tokenizer has {} ids but the --init model embeds only {}: use the model's own tokenizer.json",
            tok.vocab_size(),
            cfg.text_cfg.vocab_size
        );
    }
    cfg.text_cfg.eot_token_id = Some(tok.eot_id());
    cfg.text_cfg.sot_token_id = Some(tok.sot_id());
    cfg.text_cfg.pad_token_id = Some(tok.pad_id());
    if tok.eot_id() == 2 {
        tracing::warn!(
            "the tokenizer's end token has id 2, which transformers' CLIPModel reads as its legacy rule \
             (pool the text at the highest id), so the Hugging Face export will pool the wrong token \
             there (wit itself is unaffected); a tokenizer from `wit tokenizer train` puts it last"
        );
    }
    cfg.validate()?;
    Ok(cfg)
}

fn train_config(args: &Args) -> TrainConfig {
    TrainConfig {
        steps: args.steps,
        lr: args.lr,
        warmup: args.warmup,
        accum: args.accum,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        adamw: AdamWConfig {
            beta1: args.beta1,
            beta2: args.beta2,
            eps: args.eps,
            weight_decay: args.weight_decay,
        },
        seed: args.seed,
        lock_image: args.lock_image,
        lock_text: args.lock_text,
        lock_image_unlocked_groups: args.lock_image_unlocked_groups,
        lock_text_unlocked_layers: args.lock_text_unlocked_layers,
        lock_image_freeze_bn_stats: args.lock_image_freeze_bn_stats,
    }
}

/// A fresh trainer and tokenizer, or both read back from `--out` with the loader position.
fn start(
    args: &Args,
    device: &Device,
) -> anyhow::Result<(Trainer, TextTokenizer, Option<LoaderState>)> {
    if args.resume {
        let (trainer, extra) = Trainer::resume(&args.out, device).with_context(|| {
            format!(
                "cannot resume from {}; drop --resume to start over",
                args.out.display()
            )
        })?;
        let tok = TextTokenizer::from_file(&args.out.join(TOKENIZER_FILE))?;
        let state = serde_json::from_value(extra["loader"].clone())
            .context("the checkpoint has no loader state; it was not written by `wit train`")?;
        return Ok((trainer, tok, Some(state)));
    }
    if args.out.join(wit_trainer::checkpoint::STATE_FILE).exists() {
        bail!(
            "{} already holds a checkpoint: pass --resume to continue it or choose another --out",
            args.out.display()
        );
    }
    let tok = tokenizer(args)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    tok.save(&args.out.join(TOKENIZER_FILE))?;
    let clip = model_config(args, &tok)?;
    let trainer = Trainer::new(&clip, train_config(args), device)?;
    if let Some(dir) = &args.init {
        wit_trainer::checkpoint::load_weights(trainer.model(), dir)
            .with_context(|| format!("cannot start from the weights in {}", dir.display()))?;
    }
    Ok((trainer, tok, None))
}

fn loader(
    args: &Args,
    trainer: &Trainer,
    tok: Arc<TextTokenizer>,
    state: Option<LoaderState>,
    device: &Device,
) -> anyhow::Result<Loader> {
    let mut cfg = LoaderConfig::new(args.data.clone(), tok);
    cfg.source = args.remote.source()?;
    cfg.batch_size = args.batch_size;
    cfg.image_size = trainer.model().config().vision_cfg.image_size as u32;
    cfg.crop = args.crop;
    cfg.seed = trainer.config().seed;
    cfg.resample = args.dataset_resampled;
    cfg.epoch_samples = args.train_num_samples;
    cfg.device = device.clone();
    cfg.hard_negatives = args.hard_negatives.clone().map(|field| HardNegatives {
        field,
        per_sample: args.negatives_per_sample,
    });
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    Ok(match state {
        Some(s) => Loader::resume(cfg, s)?,
        None => Loader::new(cfg)?,
    })
}

/// The next batch, rolling into the next epoch when one ends.
fn next_batch(loader: &mut Loader) -> anyhow::Result<MicroBatch> {
    for _ in 0..2 {
        if let Some(b) = loader.next_batch()? {
            return Ok(micro_batch(b));
        }
    }
    bail!("the shards yielded no batch: check --data and that --batch-size is at most the number of samples")
}

/// Opens the JSON-lines file `name` in `out` for appending, first dropping lines of steps after
/// `step` (the checkpoint a resume starts from), so the file lists every step once.
fn open_log(out: &Path, name: &str, step: u64) -> anyhow::Result<std::fs::File> {
    let path = out.join(name);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let step_of = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64();
        let kept: String = text
            .lines()
            .filter(|l| step_of(l).is_some_and(|s| s <= step))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept)
            .with_context(|| format!("cannot rewrite {}", path.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
}

fn log_line(log: &mut std::fs::File, line: &impl serde::Serialize) -> anyhow::Result<()> {
    writeln!(log, "{}", serde_json::to_string(line)?).context("cannot append to a log file")
}

/// One line of `val.jsonl`: the model after `step` scored on the held-out pairs.
#[derive(serde::Serialize)]
pub struct Validation {
    /// Optimiser steps taken.
    pub step: u64,
    /// Held-out pairs scored.
    pub n: usize,
    /// Images as queries.
    pub image_to_text: Recall,
    /// Captions as queries.
    pub text_to_image: Recall,
    /// open_clip's `clip_val_loss`, over chunks of `--batch-size` pairs.
    pub loss: f64,
}

/// Appends `v` to `val.jsonl` and logs it.
fn log_validation(val_log: &mut std::fs::File, v: &Validation) -> anyhow::Result<()> {
    tracing::info!(
        step = v.step,
        pairs = v.n,
        text_to_image_r1 = v.text_to_image.r1,
        image_to_text_r1 = v.image_to_text.r1,
        loss = v.loss,
        "validation"
    );
    log_line(val_log, v)
}

/// Scores the model on `--val-data` (the pairs `wit eval` would take).
fn validate(
    args: &Args,
    trainer: &Trainer,
    tok: &Arc<TextTokenizer>,
) -> anyhow::Result<Validation> {
    let model = trainer.model();
    let held_out = HeldOut {
        data: &args.val_data,
        source: args.remote.source()?,
        max_pairs: args.val_max_pairs,
        batch_size: args.batch_size,
    };
    let pairs =
        embed_pairs(&held_out, model, tok, model.device()).context("cannot score --val-data")?;
    let r = wit_trainer::retrieval(&pairs.images, &pairs.texts)?;
    let loss = wit_trainer::validation_loss(
        &pairs.images,
        &pairs.texts,
        model.logit_scale(),
        args.batch_size,
    )?;
    Ok(Validation {
        step: trainer.step_count(),
        n: r.n,
        image_to_text: r.image_to_text,
        text_to_image: r.text_to_image,
        loss,
    })
}

fn progress(total: u64, done: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total).with_position(done);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("valid template"),
    );
    bar
}

fn save(trainer: &Trainer, loader: &Loader, out: &Path) -> anyhow::Result<()> {
    let extra = serde_json::json!({ "loader": loader.state(), "tokenizer": TOKENIZER_FILE });
    trainer
        .save(out, extra)
        .with_context(|| format!("cannot checkpoint into {}", out.display()))
}

/// Runs `wit train`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    wit_trainer::tune_allocator();
    let device = wit_trainer::parse_device(&args.device)?;
    let (mut trainer, tok, state) = start(&args, &device)?;
    let tok = Arc::new(tok);
    let mut loader = loader(&args, &trainer, tok.clone(), state, &device)?;
    let mut log = open_log(&args.out, LOG_FILE, trainer.step_count())?;
    let mut val_log = match args.val_data.is_empty() {
        true => None,
        false => Some(open_log(&args.out, VAL_FILE, trainer.step_count())?),
    };
    // A fresh run scores the model it starts from (with --init, the pretrained one), which also
    // finds unusable --val-data now rather than after the first --val-every steps.
    if let (Some(val_log), 0) = (val_log.as_mut(), trainer.step_count()) {
        log_validation(val_log, &validate(&args, &trainer, &tok)?)?;
    }
    let steps = trainer.config().steps;
    let bar = progress(steps, trainer.step_count(), args.quiet);
    while trainer.step_count() < steps {
        let micro = (0..trainer.config().accum)
            .map(|_| next_batch(&mut loader))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let s = trainer.step(&micro)?;
        log_line(&mut log, &s)?;
        bar.set_position(s.step);
        bar.set_message(format!(
            "loss {:.4} lr {:.2e} scale {:.2} {:.0} pairs/s",
            s.loss,
            s.lr,
            s.logit_scale.exp(),
            s.samples_per_s
        ));
        if let Some(val_log) = val_log.as_mut() {
            if s.step % args.val_every.max(1) == 0 || s.step == steps {
                let v = validate(&args, &trainer, &tok)?;
                bar.suspend(|| log_validation(val_log, &v))?;
            }
        }
        if s.step % args.save_every.max(1) == 0 || s.step == steps {
            save(&trainer, &loader, &args.out)?;
        }
    }
    bar.finish();
    println!(
        "trained {} steps; checkpoint and Hugging Face export in {}",
        trainer.step_count(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
