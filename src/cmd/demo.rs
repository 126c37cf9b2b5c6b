//! `wit demo`: the README's main command. Runs the whole chain on the embedded test web — crawl,
//! download, stats, train, eval — by running the same `wit` subcommands a user would type, and
//! prints each command line first so the demo doubles as a tutorial.

use super::Cli;
use crate::testweb::scene::{self, Attribute};
use crate::testweb::{TestWeb, TestWebConfig};
use anyhow::{ensure, Context};
use clap::Parser;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use wit_crawler::pairs::{read_pairs, PairsWriter};

/// Run the whole chain on the embedded test web: start it on 127.0.0.1, crawl it, split the
/// pairs into training pairs and held-out pairs (caption combinations never seen in training),
/// download both into shards, print the dataset statistics, train the `tiny` CLIP on CPU and
/// evaluate it on the held-out pairs (DIR/eval.json).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where everything goes (pairs, shards, report.html, model, eval.json). Reused runs skip
    /// finished shards.
    #[arg(long, default_value = "wit-demo")]
    pub dir: PathBuf,
    /// Pages of the test web (about 5.5 images each).
    #[arg(long, default_value_t = 1000)]
    pub pages: usize,
    /// Seed of the test web and of training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training steps of the tiny CLIP (about 0.7 s each on 2 idle cores with AVX-512, hard
    /// negatives included).
    #[arg(long, default_value_t = 800)]
    pub steps: u64,
    /// Peak learning rate (after 10% warmup, then cosine).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Pairs per training batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Hard-negative captions per training pair (minimal edits of its caption; 0: plain CLIP).
    #[arg(long, default_value_t = 2)]
    pub negatives_per_sample: usize,
}

/// Runs `wit demo`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create demo folder {}", args.dir.display()))?;
    println!("== starting the embedded test web ({} pages)", args.pages);
    let web = TestWeb::start(TestWebConfig {
        seed: args.seed,
        pages: args.pages,
        faults: false,
    })?;
    let base = web.base_url();
    println!("   serving on {base}");
    let dir = |p: &str| args.dir.join(p).display().to_string();

    step(&[
        "crawl",
        &format!("{base}/"),
        "-o",
        &dir("crawl"),
        "--allow-net",
        "127.0.0.1/32",
        "--per-host-concurrency",
        "16",
        "--per-host-delay-ms",
        "0",
        "--max-depth",
        "50",
    ])?;
    let (train, held_out) =
        split_pairs(&args.dir.join("crawl/pairs.parquet"), &args.dir, args.seed)?;
    println!("== split: {train} training pairs, {held_out} held-out pairs (unseen combinations)");
    for part in ["train", "heldout"] {
        step(&[
            "download",
            &dir(&format!("pairs-{part}.parquet")),
            "-o",
            &dir(&format!("shards/{part}")),
            "--caption-col",
            "caption",
            "--allow-net",
            "127.0.0.1/32",
            "--image-size",
            "80",
            "--resize-mode",
            "center_crop",
            "--samples-per-shard",
            "1000",
            "--save-additional-columns",
            "negatives",
        ])?;
    }
    step(&[
        "stats",
        &dir("shards/train"),
        "--json",
        &dir("stats.json"),
        "--html",
        &dir("report.html"),
    ])?;
    step(&[
        "train",
        "--data",
        &dir("shards/train"),
        "--config",
        "tiny",
        "--steps",
        &args.steps.to_string(),
        "--batch-size",
        &args.batch_size.to_string(),
        "--lr",
        &args.lr.to_string(),
        "--warmup",
        &(args.steps / 10).to_string(),
        "--seed",
        &args.seed.to_string(),
        "--hard-negatives",
        "negatives",
        "--negatives-per-sample",
        &args.negatives_per_sample.to_string(),
        "--out",
        &dir("model"),
    ])?;
    step(&[
        "eval",
        "--checkpoint",
        &dir("model"),
        "--data",
        &dir("shards/heldout"),
        "--json",
        &dir("eval.json"),
        "--misses",
        "10",
    ])?;
    drop(web);
    println!(
        "== demo done in {:.0} s: report {}, evaluation {}",
        started.elapsed().as_secs_f64(),
        dir("report.html"),
        dir("eval.json")
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints `$ wit ARGS` and runs it in-process; a failing or non-zero step stops the demo.
fn step(args: &[&str]) -> anyhow::Result<()> {
    println!("\n$ wit {}", args.join(" "));
    let cli = Cli::try_parse_from(std::iter::once("wit").chain(args.iter().copied()))
        .context("the demo built an invalid command line")?;
    let name = args[0];
    let code = super::run(cli.command).with_context(|| format!("demo step `wit {name}` failed"))?;
    ensure!(
        code == ExitCode::SUCCESS,
        "demo step `wit {name}` exited with {code:?}"
    );
    Ok(())
}

/// Splits the crawled pairs into `pairs-train.parquet` and `pairs-heldout.parquet`: a pair whose
/// caption describes a held-out combination of the test web's grammar goes to evaluation only.
/// Captions outside the grammar (decorative alts, file names) stay in training as real-web noise.
/// Both files carry a `negatives` column: for grammar captions, a JSON list of minimal edits (the
/// hard negatives `wit train --hard-negatives negatives` reads), else null.
fn split_pairs(pairs: &Path, dir: &Path, seed: u64) -> anyhow::Result<(u64, u64)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut train =
        PairsWriter::with_extra_columns(&dir.join("pairs-train.parquet"), &["negatives"])?;
    let mut held_out =
        PairsWriter::with_extra_columns(&dir.join("pairs-heldout.parquet"), &["negatives"])?;
    for pair in read_pairs(pairs)? {
        let pair = pair?;
        let scene = scene::parse_caption(&pair.caption);
        let negatives = scene
            .map(|s| scene::hard_negative_captions(&s, negatives_per_attribute, &mut rng))
            .map(|n| serde_json::to_string(&n))
            .transpose()?;
        match scene.is_some_and(|s| scene::is_held_out(&s)) {
            true => held_out.write_with_extra(pair, vec![negatives])?,
            false => train.write_with_extra(pair, vec![negatives])?,
        }
    }
    Ok((train.finish()?, held_out.finish()?))
}

/// Minimal edits kept per attribute as a pair's hard negatives. Relations and swaps are what
/// random batches never test, so they get every edit there is; the other attributes one each,
/// so that attention to objects does not crowd out the background.
fn negatives_per_attribute(attr: Attribute) -> usize {
    match attr {
        Attribute::Position | Attribute::Swap => usize::MAX,
        Attribute::Shape | Attribute::Count | Attribute::Colour | Attribute::Background => 1,
    }
}
