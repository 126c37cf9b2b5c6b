//! `wit curate`: keep pairs whose caption matches a query list, balanced per query the way
//! CLIP's WIT and MetaCLIP did (see `wit_crawler::curate`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use wit_crawler::curate::{curate, CurateConfig, QuerySet, COUNTS_FILE, SUMMARY_FILE};

use super::image_args::FilterArgs;

/// Flags of `wit curate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pairs parquet files or folders of them (`wit crawl` / `wit warc` output, LAION parquet).
    #[arg(required = true)]
    pub pairs: Vec<PathBuf>,
    /// Output folder: `part-NNNNN.parquet` per input file (input columns + `matched_queries`),
    /// `_query_counts.parquet` (query, count_before, count_after) and `_curate.json`.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Query list, one per line (`wit queries build` makes one); ids are line numbers from 0.
    #[arg(long)]
    pub queries: PathBuf,
    /// T: a query matched by more pairs is sampled down to about T pairs (CLIP used 20,000).
    #[arg(long, default_value_t = 20_000)]
    pub max_per_query: u64,
    /// Seed of the sampling: the same seed and input keep the same pairs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The caption column.
    #[arg(long, default_value = "caption")]
    pub caption_col: String,
    #[command(flatten)]
    pub filters: FilterArgs,
}

/// Runs `wit curate`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let queries = QuerySet::load(&args.queries)
        .with_context(|| format!("reading the query list {}", args.queries.display()))?;
    anyhow::ensure!(
        !queries.is_empty(),
        "the query list {} is empty",
        args.queries.display()
    );
    anyhow::ensure!(args.max_per_query > 0, "--max-per-query must be at least 1");
    let cfg = CurateConfig {
        inputs: args.pairs,
        out_dir: args.output.clone(),
        queries,
        max_per_query: args.max_per_query,
        seed: args.seed,
        caption_col: args.caption_col,
        caption_filter: args.filters.caption_filter()?,
        max_caption_repeats: args.filters.max_caption_repeats,
    };
    let s = curate(&cfg)?;
    println!(
        "curate: {} pairs read, {} matched a query, {} kept ({} of {} queries matched, {} cut to ~{})",
        s.rows, s.matched, s.kept, s.queries_matched, s.queries, s.head_queries, s.max_per_query
    );
    for (reason, n) in &s.filtered {
        println!("  dropped {n}: {reason}");
    }
    println!(
        "wrote {} file(s), {} and {} in {}",
        s.outputs.len(),
        COUNTS_FILE,
        SUMMARY_FILE,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
