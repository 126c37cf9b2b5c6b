//! `wit tokenizer train`: a byte-level BPE trained on the corpus captions, for users without
//! CLIP's own `tokenizer.json` (or a corpus in another language).

use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wit_loader::{read_captions, resolve_shards, ShardSource, TextTokenizer};

/// Subcommands of `wit tokenizer`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Train a byte-level BPE on the captions of shards and write a HF tokenizer.json.
    ///
    /// Example: wit tokenizer train --data 'out/{00000..00009}.tar' -o tokenizer.json
    Train(TrainArgs),
}

/// Flags of `wit tokenizer train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Shards to read captions from: .tar paths, brace patterns (out/{00000..00099}.tar),
    /// a folder, a shardindex.json or http(s) URLs. Repeatable.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<String>,
    /// Where to write the tokenizer (HF tokenizer.json format, loadable by `wit train`).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Vocabulary size including the three special tokens (CLIP uses 49,408).
    #[arg(long, default_value_t = 49_408)]
    pub vocab_size: usize,
    #[command(flatten)]
    pub remote: super::fetch_args::DataNetArgs,
}

/// Runs `wit tokenizer`.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Train(args) => train(args),
    }
}

fn train(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let source: Arc<dyn ShardSource> = args.remote.source()?;
    let entries = resolve_shards(&args.data, source.as_ref())?;
    let shards = entries.len();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let captions = read_captions(entries, source).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let tokenizer = TextTokenizer::train(captions, args.vocab_size)?;
    let n = seen.load(Ordering::Relaxed);
    anyhow::ensure!(
        n > 0,
        "no captions found in {shards} shard(s): check --data points at WebDataset shards with .txt members"
    );
    tokenizer
        .save(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "trained a byte-level BPE on {n} captions from {shards} shard(s): vocab {} → {}",
        tokenizer.vocab_size(),
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
