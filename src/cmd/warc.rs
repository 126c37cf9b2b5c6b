//! `wit warc`: Common Crawl WARC/WAT files (local or http(s), streamed) → `OUT/pairs.parquet`,
//! the same pairs table `wit crawl` writes. Damaged records are skipped and counted; the exit
//! code says whether anything was skipped. The work is `wit_crawler::warc`.

use anyhow::Context;
use indicatif::ProgressBar;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wit_crawler::fetch::user_agent_for;
use wit_crawler::net::NetPolicy;
use wit_crawler::pairs::PairsWriter;
use wit_crawler::urlnorm::SeenSet;
use wit_crawler::warc::{extract_sources, open_source, Source, WarcOptions, WarcSummary};

/// Exit code when the run finished but records were skipped (corrupt gzip members, truncated
/// records, malformed WAT JSON, unreadable sources): the pairs of everything else are written.
pub const EXIT_SKIPPED: u8 = 3;

/// Extract (image URL, alt text) pairs from WARC files (HTML responses, parsed like `wit crawl`
/// pages) and WAT files (the `IMG@/src` links with an alt, as cc2dataset reads them), plain or
/// gzipped per record, into `OUT/pairs.parquet`, deduplicated by (url, alt). Bad or truncated
/// records are skipped and counted; the exit code is 3 when any were.
///
/// Example: wit warc CC-MAIN-...-00000.warc.wat.gz -o pairs
#[derive(clap::Args, Debug)]
pub struct Args {
    /// WARC or WAT files, or http(s) URLs of them (streamed, through the SSRF guard).
    #[arg(value_name = "FILE", required = true)]
    pub inputs: Vec<String>,
    /// Output folder: pairs.parquet and warc_summary.json.
    #[arg(short = 'o', long)]
    pub output_folder: PathBuf,
    /// Extraction threads [default: the number of cores].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Deduplicate (url, alt) with a Bloom filter sized for N pairs (fixed memory, 0.1% false
    /// positives) instead of an exact set of 8 bytes per pair.
    #[arg(long, value_name = "N")]
    pub bloom: Option<u64>,
    #[command(flatten)]
    pub net: super::fetch_args::NetArgs,
}

/// Runs `wit warc`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let sources: Vec<Source> = args.inputs.iter().map(|s| Source::parse(s)).collect();
    for s in &sources {
        if let Source::Path(p) = s {
            anyhow::ensure!(
                p.is_file(),
                "{} is not a file: give WARC/WAT files or http(s) URLs",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(&args.output_folder).with_context(|| {
        format!(
            "cannot create output folder {}",
            args.output_folder.display()
        )
    })?;
    let pairs_path = args.output_folder.join("pairs.parquet");
    let mut writer = PairsWriter::create(&pairs_path)?;
    let policy = NetPolicy::new(args.net.allow_nets()?);
    let user_agent = user_agent_for("wit");
    let open = |s: &Source| open_source(s, &policy, &user_agent);
    let mut seen = args
        .bloom
        .map_or_else(SeenSet::exact, |n| SeenSet::bloom(n, 0.001));
    let opts = WarcOptions {
        jobs: args.jobs.unwrap_or(WarcOptions::default().jobs).max(1),
        ..WarcOptions::default()
    };
    let started = Instant::now();
    let bar = super::spinner();
    let summary = extract_sources(
        &sources,
        &opts,
        &open,
        &mut |p| seen.insert(&[p.url.as_bytes(), b"\0", p.caption.as_bytes()].concat()),
        &mut |p| writer.write(p),
        &mut |s| show(&bar, s, started),
    )?;
    writer.finish()?;
    bar.finish_and_clear();
    let summary_path = args.output_folder.join("warc_summary.json");
    std::fs::write(&summary_path, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    println!("{}", summary_line(&summary, started.elapsed(), &pairs_path));
    Ok(if summary.skipped > 0 {
        ExitCode::from(EXIT_SKIPPED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Updates the spinner.
fn show(bar: &ProgressBar, s: &WarcSummary, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    bar.set_message(format!(
        "{} records ({:.0}/s), {} pages, {} pairs, {} skipped",
        s.records,
        s.records as f64 / secs,
        s.pages,
        s.pairs,
        s.skipped
    ));
}

/// The final summary, naming each kind of skip.
fn summary_line(s: &WarcSummary, took: Duration, pairs: &std::path::Path) -> String {
    let skipped = if s.skipped == 0 {
        "nothing skipped".to_string()
    } else {
        let kinds: Vec<String> = s
            .skipped_by_reason
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        format!("SKIPPED {} ({})", s.skipped, kinds.join(", "))
    };
    format!(
        "read {} records from {} sources in {:.1} s: {} pages, {} pairs to {} ({} duplicates dropped); {skipped}",
        s.records,
        s.sources,
        took.as_secs_f64(),
        s.pages,
        s.pairs,
        pairs.display(),
        s.duplicates
    )
}
