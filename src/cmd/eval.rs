//! `wit eval`: scores a `wit train` checkpoint on held-out shards — image↔text Recall@1/5/10 over
//! pairs with distinct captions (by their words: case, punctuation and spacing aside), the misses
//! behind it, zero-shot accuracy from a label list and prompt templates, and, where captions
//! follow the test web's grammar, minimal-edit accuracy per attribute: how often the image scores
//! its true caption above a caption that differs in exactly one attribute.

use anyhow::{bail, Context};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use wit_loader::{CropMode, Loader, LoaderConfig, TextTokenizer};
use wit_trainer::candle::{Device, Tensor};
use wit_trainer::{ClipModel, Retrieval, TrainError};

use crate::testweb::scene::{caption, minimal_edits, parse_caption};

/// Flags of `wit eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A `wit train --out` folder (model.safetensors, config.json, tokenizer.json), a Hugging
    /// Face ViT CLIP saved by transformers, or open_clip's `local-dir:` layout (pass
    /// `--tokenizer` where the folder has no tokenizer.json).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Held-out shards (paths, brace patterns, folders, shardindex.json, URLs). Repeatable.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<String>,
    #[command(flatten)]
    pub remote: super::fetch_args::DataNetArgs,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Tokenizer (default: the checkpoint's tokenizer.json).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// At most this many pairs (the first ones with distinct captions, in shard order; captions
    /// that differ only in case, punctuation or spacing count as one).
    #[arg(long, default_value_t = 1000)]
    pub max_pairs: usize,
    /// Zero-shot classes, comma-separated; an image's true class is the one label its caption
    /// mentions (images mentioning none or several are left out).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Zero-shot prompt templates with `{}` for the label. Repeatable.
    #[arg(long, default_value = "a photo of a {}.")]
    pub template: Vec<String>,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also list up to this many text→image misses, worst first: each caption whose own image
    /// did not rank first, with the caption of the image that did (`text_to_image_misses` in
    /// the JSON). Shows what a recall number hides: which captions fail, and against what.
    #[arg(long, default_value_t = 0)]
    pub misses: usize,
}

/// The held-out pairs' embeddings and captions.
pub(crate) struct Pairs {
    /// `(N, D)` L2-normalised image embeddings, row `i` pair `i`'s.
    pub images: Tensor,
    /// `(N, D)` L2-normalised caption embeddings.
    pub texts: Tensor,
    /// The `N` captions, in shard order.
    pub captions: Vec<String>,
}

/// What to embed: the held-out shards, how many pairs at most, and how many per forward pass.
pub(crate) struct HeldOut<'a> {
    /// Shard specifications, as `--data` takes them.
    pub data: &'a [String],
    /// Where shard bytes come from (the `--allow-net` policy and read timeout).
    pub source: Arc<dyn wit_loader::ShardSource>,
    /// At most this many pairs.
    pub max_pairs: usize,
    /// Pairs per forward pass.
    pub batch_size: usize,
}

/// Embeds the first `max_pairs` pairs with distinct captions ([`caption_key`]), centre-cropped,
/// batch by batch (memory ∝ embeddings only). `wit eval` and `wit train --val-data` share it, so
/// both score the same pairs.
pub(crate) fn embed_pairs(
    held_out: &HeldOut,
    model: &ClipModel,
    tok: &Arc<TextTokenizer>,
    device: &Device,
) -> anyhow::Result<Pairs> {
    let max_pairs = held_out.max_pairs;
    let mut cfg = LoaderConfig::new(held_out.data.to_vec(), tok.clone());
    cfg.source = held_out.source.clone();
    cfg.batch_size = held_out.batch_size;
    cfg.image_size = model.config().vision_cfg.image_size as u32;
    cfg.crop = CropMode::Center;
    cfg.single_pass = true;
    cfg.device = device.clone();
    let mut loader = Loader::new(cfg)?;
    let (mut imgs, mut txts, mut captions) = (Vec::new(), Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    while captions.len() < max_pairs {
        let Some(b) = loader.next_batch()? else { break };
        let keep: Vec<u32> = (0..b.captions.len() as u32)
            .filter(|&i| seen.insert(caption_key(&b.captions[i as usize])))
            .take(max_pairs - captions.len())
            .collect();
        if keep.is_empty() {
            continue;
        }
        let idx = Tensor::new(keep.as_slice(), device)?;
        imgs.push(
            model
                .encode_image(&b.images.index_select(&idx, 0)?)?
                .detach(),
        );
        txts.push(
            model
                .encode_text(&b.tokens.index_select(&idx, 0)?)?
                .detach(),
        );
        captions.extend(keep.iter().map(|&i| b.captions[i as usize].clone()));
    }
    if captions.is_empty() {
        bail!(
            "no pairs with captions in {}; pass held-out shards written by `wit download`",
            held_out.data.join(" ")
        );
    }
    Ok(Pairs {
        images: Tensor::cat(&imgs, 0)?,
        texts: Tensor::cat(&txts, 0)?,
        captions,
    })
}

/// What makes two captions the same for retrieval: their words, lowercased. "A red star." and
/// "a red star" describe one picture; kept as two pairs, each image would match both captions
/// equally and Recall@1 would count a coin toss against the model.
fn caption_key(caption: &str) -> String {
    let lower = caption.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    words.join(" ")
}

/// Tokenises captions into a `(N, 77)` tensor.
fn tokenize(tok: &TextTokenizer, texts: &[String], device: &Device) -> Result<Tensor, TrainError> {
    let rows = texts
        .iter()
        .map(|t| tok.encode(t).map_err(|e| TrainError::Data(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let width = tok.context_length();
    Ok(Tensor::from_vec(
        rows.concat(),
        (texts.len(), width),
        device,
    )?)
}

/// Per attribute: the fraction of (image, edited caption) pairs where the true caption scores higher.
fn minimal_edit(
    pairs: &Pairs,
    model: &ClipModel,
    tok: &TextTokenizer,
    device: &Device,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut wins: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    for (i, text) in pairs.captions.iter().enumerate() {
        let Some(scene) = parse_caption(text) else {
            continue;
        };
        let edits = minimal_edits(&scene);
        if edits.is_empty() {
            continue;
        }
        let mut texts = vec![text.clone()];
        texts.extend(edits.iter().map(|(_, s)| caption(s)));
        let emb = model.encode_text(&tokenize(tok, &texts, device)?)?;
        let image = pairs.images.narrow(0, i, 1)?;
        let scores = image
            .matmul(&emb.t()?)?
            .flatten_all()?
            .to_dtype(wit_trainer::candle::DType::F64)?
            .to_vec1::<f64>()?;
        for ((attr, _), s) in edits.iter().zip(&scores[1..]) {
            let e = wins.entry(attr.name()).or_default();
            e.0 += usize::from(scores[0] > *s);
            e.1 += 1;
        }
    }
    Ok(wins
        .into_iter()
        .map(|(k, (w, n))| (k.to_string(), w as f64 / n as f64))
        .collect())
}

/// Zero-shot accuracy and the number of images with exactly one label in their caption.
fn zero_shot(
    args: &Args,
    pairs: &Pairs,
    model: &ClipModel,
    tok: &TextTokenizer,
    device: &Device,
) -> anyhow::Result<Option<serde_json::Value>> {
    if args.labels.is_empty() {
        return Ok(None);
    }
    let mentions = |c: &str, l: &str| caption_key(c).split(' ').any(|w| w == l.to_lowercase());
    let (rows, truth): (Vec<u32>, Vec<usize>) = pairs
        .captions
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let hits: Vec<usize> = (0..args.labels.len())
                .filter(|&l| mentions(c, &args.labels[l]))
                .collect();
            (hits.len() == 1).then(|| (i as u32, hits[0]))
        })
        .unzip();
    if rows.is_empty() {
        return Ok(Some(serde_json::json!({ "n": 0, "accuracy": null })));
    }
    let classes = wit_trainer::eval::class_embeddings(model, &args.labels, &args.template, |t| {
        tokenize(tok, t, device)
    })?;
    let images = pairs
        .images
        .index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
    let acc = wit_trainer::zero_shot_accuracy(&images, &classes, &truth)?;
    Ok(Some(
        serde_json::json!({ "n": rows.len(), "accuracy": acc }),
    ))
}

/// The first `args.misses` text→image misses as `{caption, retrieved}` objects (None: not asked).
fn misses(args: &Args, pairs: &Pairs) -> anyhow::Result<Option<serde_json::Value>> {
    if args.misses == 0 {
        return Ok(None);
    }
    let list = wit_trainer::text_to_image_misses(&pairs.images, &pairs.texts)?
        .into_iter()
        .take(args.misses)
        .map(|m| {
            serde_json::json!({
                "caption": pairs.captions[m.query],
                "retrieved": pairs.captions[m.retrieved],
            })
        })
        .collect();
    Ok(Some(serde_json::Value::Array(list)))
}

fn report(
    r: &Retrieval,
    edits: &BTreeMap<String, f64>,
    zs: &Option<serde_json::Value>,
    misses: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "n": r.n,
        "image_to_text": r.image_to_text,
        "text_to_image": r.text_to_image,
        "minimal_edit": edits,
    });
    if let Some(z) = zs {
        v["zero_shot"] = z.clone();
    }
    if let Some(m) = misses {
        v["text_to_image_misses"] = m;
    }
    v
}

/// Runs `wit eval`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    wit_trainer::tune_allocator();
    let device = wit_trainer::parse_device(&args.device)?;
    let model = wit_trainer::load_model(&args.checkpoint, &device)
        .with_context(|| format!("cannot load the model in {}", args.checkpoint.display()))?;
    let tok_path = args
        .tokenizer
        .clone()
        .unwrap_or_else(|| args.checkpoint.join(super::train::TOKENIZER_FILE));
    let tok = Arc::new(TextTokenizer::from_file(&tok_path).with_context(|| {
        format!(
            "no tokenizer for {}: pass --tokenizer (an open_clip folder has none; use the tokenizer.json the model was trained with, CLIP's for OpenAI or LAION weights)",
            args.checkpoint.display()
        )
    })?);
    let held_out = HeldOut {
        data: &args.data,
        source: args.remote.source()?,
        max_pairs: args.max_pairs,
        batch_size: args.batch_size,
    };
    let pairs = embed_pairs(&held_out, &model, &tok, &device)?;
    let retrieval = wit_trainer::retrieval(&pairs.images, &pairs.texts)?;
    let edits = minimal_edit(&pairs, &model, &tok, &device)?;
    let zs = zero_shot(&args, &pairs, &model, &tok, &device)?;
    let json = report(&retrieval, &edits, &zs, misses(&args, &pairs)?);
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
