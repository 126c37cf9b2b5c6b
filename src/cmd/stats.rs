//! `wit stats`: the dataset report of an output folder.

use crate::stats;
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `wit stats`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output folder of `wit download` (or img2dataset): merges its `*_stats.json` summaries.
    pub dir: PathBuf,
    /// Also write the figures as JSON (schema `wit-stats-v1`, documented in the README and src/stats/schema.rs).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write a self-contained HTML report (charts, sample grid, error bounds).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Reread every parquet row and decode every tar image instead of trusting the summaries
    /// (slow: reads the whole dataset; checks that stored images decode).
    #[arg(long)]
    pub deep: bool,
    /// Thumbnails in the report's sample grid.
    #[arg(long, default_value_t = 36, value_name = "N")]
    pub samples: usize,
    /// Seed for choosing the sample grid.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The query count table of `wit curate`: its output folder or its `_query_counts.parquet`
    /// [default: `_query_counts.parquet` or `query_counts.parquet` in DIR, when present].
    #[arg(long, value_name = "PATH")]
    pub queries: Option<PathBuf>,
}

/// Runs `wit stats`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = stats::Options {
        dir: args.dir.clone(),
        deep: args.deep,
        grid: args.samples,
        seed: args.seed,
        queries: args.queries.clone(),
    };
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} shards")
            .expect("valid template"),
    );
    bar.set_message("merging");
    let outcome = stats::compute(&opts, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    print!("{}", stats::text::summary(&outcome.stats));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&outcome.stats)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.html {
        let html = stats::html::render(&outcome.stats, &outcome.thumbnails);
        std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
