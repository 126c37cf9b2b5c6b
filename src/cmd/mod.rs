//! The command line: one module per subcommand, each with its clap `Args` and a `run` function.
//! Flags shared by several subcommands live in one struct each (`FetchArgs`, `ImageArgs`, ...)
//! and are flattened where used, so every flag is declared once.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub mod bench;
pub mod crawl;
pub mod curate;
pub mod demo;
pub mod download;
pub mod eval;
pub mod export;
pub mod fetch_args;
pub mod image_args;
pub mod queries;
pub mod stats;
pub mod testweb;
pub mod tokenizer;
pub mod train;
pub mod warc;

/// wit builds WebImageText-style (image, alt-text) corpora from the web, writes them as
/// WebDataset shards that webdataset/open_clip/pyarrow read unchanged, streams them into
/// training, and trains CLIP on them.
///
/// Start with `wit demo`: it runs the whole chain on the embedded test web.
#[derive(Parser, Debug)]
#[command(name = "wit", version, about, long_about)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, in the order data flows: web → pairs → shards → loader → trainer, reports.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the whole chain on the embedded test web: crawl, download, stats, train, eval.
    Demo(demo::Args),
    /// Serve the embedded deterministic test web on 127.0.0.1 (for trying wit offline).
    Testweb(testweb::Args),
    /// Crawl web pages from seed URLs into an (image URL, alt text) pairs table.
    Crawl(crawl::Args),
    /// Extract (image URL, alt text) pairs from Common Crawl WARC or WAT files.
    Warc(warc::Args),
    /// Keep pairs matching a query list, balanced per query the way CLIP's WIT and MetaCLIP did.
    Curate(curate::Args),
    /// Build the query list that `wit curate` balances over.
    #[command(subcommand)]
    Queries(queries::Command),
    /// Download an img2dataset-style URL list into WebDataset shards.
    Download(download::Args),
    /// Summarise an output folder of shards: text summary, stats.json, self-contained HTML report.
    Stats(stats::Args),
    /// Train or inspect the text tokenizer.
    #[command(subcommand)]
    Tokenizer(tokenizer::Command),
    /// Train CLIP on shards.
    Train(train::Args),
    /// Evaluate a CLIP checkpoint: retrieval recall, zero-shot, minimal-edit accuracy.
    Eval(eval::Args),
    /// Write a checkpoint in open_clip's `local-dir:` layout (open_clip state-dict names).
    Export(export::Args),
    /// Micro-benchmarks used by bench/ to compare wit with its Python peers.
    #[command(subcommand)]
    Bench(bench::Command),
}

/// Dispatches a parsed subcommand. Returns the process exit code on success.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let codes_images = matches!(
        command,
        Command::Demo(_) | Command::Download(_) | Command::Train(_) | Command::Bench(_)
    );
    if codes_images && !wit_jpeg::SIMD {
        tracing::warn!(
            "libjpeg-turbo was built without its SIMD code (nasm was not on PATH at build time), \
             so JPEGs decode 1.6x and encode 4.5x slower: install nasm \
             (`bash scripts/setup-debian.sh nasm`), run `cargo clean -p mozjpeg-sys --release` \
             and build again"
        );
    }
    match command {
        Command::Demo(a) => demo::run(a),
        Command::Testweb(a) => testweb::run(a),
        Command::Crawl(a) => crawl::run(a),
        Command::Warc(a) => warc::run(a),
        Command::Curate(a) => curate::run(a),
        Command::Queries(c) => queries::run(c),
        Command::Download(a) => download::run(a),
        Command::Stats(a) => stats::run(a),
        Command::Tokenizer(c) => tokenizer::run(c),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Export(a) => export::run(a),
        Command::Bench(c) => bench::run(c),
    }
}

/// A spinner with the elapsed time and a message, for work whose total is not known up front
/// (crawl, warc).
pub(crate) fn spinner() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Sets up `tracing` to stderr; `RUST_LOG` wins over `-v`.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false)
        .init();
}
