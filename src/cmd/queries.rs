//! `wit queries build`: make the query list `wit curate` balances over, with MetaCLIP's recipe
//! (frequent words, high-PMI bigrams, titles), from text the user has.

use std::path::PathBuf;
use std::process::ExitCode;

use wit_crawler::queries::{build, write_queries, BuildConfig};

/// Subcommands of `wit queries`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Count words and bigrams in text files and write the queries, one per line.
    Build(BuildArgs),
}

/// Flags of `wit queries build`.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Plain-text corpus files (.gz allowed), e.g. a Wikipedia text dump.
    #[arg(long, required = true, num_args = 1..)]
    pub text: Vec<PathBuf>,
    /// Output query file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Keep words (and bigrams) seen at least this many times (MetaCLIP: 100).
    #[arg(long, default_value_t = 100)]
    pub min_count: u64,
    /// Keep bigrams whose PMI ratio p(ab)/(p(a)p(b)) is at least this (MetaCLIP: 30).
    #[arg(long, default_value_t = 30.0)]
    pub min_pmi: f64,
    /// A file of titles (one per line, e.g. Wikipedia article titles) added as queries.
    #[arg(long)]
    pub titles: Option<PathBuf>,
}

/// Runs `wit queries`.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Build(a) => run_build(a),
    }
}

fn run_build(a: BuildArgs) -> anyhow::Result<ExitCode> {
    let cfg = BuildConfig {
        text: a.text,
        titles: a.titles,
        min_count: a.min_count,
        min_pmi: a.min_pmi,
    };
    let (queries, s) = build(&cfg)?;
    write_queries(&a.output, &queries)?;
    println!(
        "queries: {} tokens read; {} words, {} bigrams, {} titles → {} queries in {}",
        s.tokens,
        s.unigrams,
        s.bigrams,
        s.titles,
        s.queries,
        a.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
