//! `wit crawl`: seed pages → a polite crawl → `OUT/pairs.parquet` (the input of `wit
//! download`), optionally straight on to shards with `--download`. The work is
//! `wit_crawler::crawl`; this module parses flags, shows progress and prints the summary.
//! With `--download` the pairs also stream, through a bounded channel, into the download
//! pipeline running alongside the crawl.

use super::fetch_args::FetchArgs;
use super::image_args::{DedupArgs, FilterArgs, ImageArgs};
use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::{Duration, Instant};
use url::Url;
use wit_crawler::crawl::{crawl, CrawlConfig, CrawlProgress, Dedup, Scope};
use wit_crawler::download::{
    download_rows, DownloadConfig, DownloadError, DownloadSummary, Part, Progress, RowFilters,
    RowSource,
};
use wit_crawler::input::InputRow;
use wit_crawler::pairs::{Pair, PairsWriter};
use wit_shards::ShardConfig;

/// Crawl web pages from seed URLs and write every (image URL, alt text) pair found to
/// `OUT/pairs.parquet` (columns url, caption, page_url, title, position, width, height).
/// Polite by default: robots.txt and its Crawl-delay, 2 pages in flight and 1 s between
/// requests per host, same host as the seeds only.
///
/// Example: wit crawl http://127.0.0.1:8080/ -o crawl --allow-net 127.0.0.1/32 --download
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Start URLs, or @FILE naming a file with one URL per line.
    #[arg(value_name = "SEED", required = true)]
    pub seeds: Vec<String>,
    /// Output folder: pairs.parquet, crawl_summary.json, and shards/ with --download.
    #[arg(short = 'o', long)]
    pub output_folder: PathBuf,
    /// Most pages fetched.
    #[arg(long, default_value_t = 10_000)]
    pub max_pages: u64,
    /// Most link hops from a seed (seeds are depth 0).
    #[arg(long, default_value_t = 5)]
    pub max_depth: u32,
    /// Follow links only to the seeds' hosts [default].
    #[arg(long, conflicts_with = "allow_domains")]
    pub same_host: bool,
    /// Follow links to these domains and their subdomains instead (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "DOMAINS")]
    pub allow_domains: Vec<String>,
    /// Also record images whose alt text is empty (caption "").
    #[arg(long)]
    pub keep_empty_alt: bool,
    /// Remember seen URLs and pairs in a Bloom filter sized for N items (fixed memory, 0.1%
    /// false positives) instead of an exact set of 8 bytes per item; for crawls of 100M+ URLs.
    #[arg(long, value_name = "N")]
    pub bloom: Option<u64>,
    /// Most URLs waiting to be fetched; further links are dropped (bounds memory).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_frontier: usize,
    /// Also download the pairs, while they are found, into WebDataset shards under OUT/shards
    /// (image flags apply). Every shard is redone on each run: to resume an interrupted
    /// download, run `wit download OUT/pairs.parquet -o OUT/shards`.
    #[arg(long)]
    pub download: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub dedup: DedupArgs,
}

/// Pairs found but not yet taken by the download (`--download`): when full, the crawl waits,
/// so memory stays flat however far the crawl runs ahead of the downloads.
const STREAM_BUFFER: usize = 1024;

/// Runs `wit crawl`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = config(&args)?;
    std::fs::create_dir_all(&args.output_folder).with_context(|| {
        format!(
            "cannot create output folder {}",
            args.output_folder.display()
        )
    })?;
    let pairs_path = args.output_folder.join("pairs.parquet");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 16),
        )
        .enable_all()
        .build()?;
    let started = Instant::now();
    let bars = MultiProgress::new();
    let bar = bars.add(super::spinner());
    let (rows_tx, stream) = if args.download {
        let (rows, stream) = start_download(&args, &cfg, &runtime, &bars)?;
        (Some(rows), Some(stream))
    } else {
        (None, None)
    };
    let mut writer = PairsWriter::create(&pairs_path)?;
    let mut gate = PairGate::new(&args.filter)?;
    let crawled = {
        let bar = bar.clone();
        let mut on_pair = |p: Pair| match gate.admit(&p) {
            Ok(()) => {
                if let Some(tx) = &rows_tx {
                    tx.send(input_row(&p))
                        .map_err(|_| "the download stopped early (see its error)".to_string())?;
                }
                writer.write(p).map_err(|e| e.to_string())
            }
            Err(()) => Ok(()),
        };
        let mut on_progress = move |p: &CrawlProgress| show(&bar, p, started);
        runtime.block_on(crawl(cfg.clone(), &mut on_pair, &mut on_progress))
    };
    // Closing the channel ends the download's input once it has taken every pair.
    drop(rows_tx);
    let progress = match crawled {
        Ok(progress) => progress,
        Err(e) => {
            // A failed download stops the crawl too, and is then the root cause.
            if let Some(stream) = stream {
                stream.finish(&runtime)?;
            }
            return Err(e.into());
        }
    };
    let rows = writer.finish()?;
    bar.finish_and_clear();
    write_summary(&args.output_folder, &progress, &gate)?;
    bars.suspend(|| {
        println!(
            "{}",
            summary_line(&progress, started.elapsed(), &pairs_path, rows)
        )
    });
    if let Some(stream) = stream {
        stream.finish(&runtime)?;
    }
    anyhow::ensure!(
        progress.pages > 0,
        "no page could be fetched: check the seeds (run with -v for each failure); local or \
         private addresses need --allow-net CIDR, and robots.txt may disallow the seeds"
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `OUT/crawl_summary.json`: the crawl counters and the pairs dropped by filters.
fn write_summary(out: &Path, progress: &CrawlProgress, gate: &PairGate) -> anyhow::Result<()> {
    let path = out.join("crawl_summary.json");
    let mut summary = serde_json::to_value(progress)?;
    summary["filtered_pairs"] = serde_json::to_value(&gate.dropped)?;
    std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The crawl configuration from the flags (crawl politeness defaults: 2 per host, 1 s apart).
fn config(args: &Args) -> anyhow::Result<CrawlConfig> {
    let scope = if args.allow_domains.is_empty() {
        Scope::SameHost
    } else {
        Scope::Domains(args.allow_domains.clone())
    };
    Ok(CrawlConfig {
        seeds: seeds(&args.seeds)?,
        max_pages: args.max_pages,
        max_depth: args.max_depth,
        scope,
        keep_empty_alt: args.keep_empty_alt,
        dedup: args.bloom.map_or(Dedup::Exact, |n| Dedup::Bloom {
            expected: n,
            fp_rate: 0.001,
        }),
        max_frontier: args.max_frontier.max(1),
        fetch: args.fetch.to_config(2, 1000)?,
    })
}

/// Seed URLs from arguments and `@file`s; a line or argument that is not an http(s) URL is an
/// error naming it.
fn seeds(args: &[String]) -> anyhow::Result<Vec<Url>> {
    let mut out = Vec::new();
    for arg in args {
        match arg.strip_prefix('@') {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read seed file {path}"))?;
                for line in text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    out.push(seed(line)?);
                }
            }
            None => out.push(seed(arg)?),
        }
    }
    anyhow::ensure!(!out.is_empty(), "give at least one seed URL (or @file)");
    Ok(out)
}

/// One seed URL.
fn seed(s: &str) -> anyhow::Result<Url> {
    wit_crawler::urlnorm::parse_normalized(s)
        .with_context(|| format!("seed {s:?} is not an http(s) URL such as https://example.com/"))
}

/// The caption filters applied to crawled pairs before they reach `pairs.parquet`, with the
/// drops counted by reason for `crawl_summary.json`.
struct PairGate {
    caption: Option<wit_crawler::filter::CaptionFilter>,
    repeat_cap: Option<wit_crawler::filter::RepeatCap>,
    dropped: BTreeMap<String, u64>,
}

impl PairGate {
    fn new(filter: &FilterArgs) -> anyhow::Result<PairGate> {
        Ok(PairGate {
            caption: filter.caption_filter()?,
            repeat_cap: filter.repeat_cap(),
            dropped: BTreeMap::new(),
        })
    }

    /// `Err` (counted by reason) when the pair's caption fails a filter.
    fn admit(&mut self, pair: &Pair) -> Result<(), ()> {
        let verdict = match &self.caption {
            Some(f) => f.check(&pair.caption).map(drop),
            None => Ok(()),
        };
        let verdict = verdict.and_then(|()| match self.repeat_cap.as_mut() {
            Some(cap) => cap.admit(&pair.caption),
            None => Ok(()),
        });
        verdict.map_err(|reason| *self.dropped.entry(reason).or_default() += 1)
    }
}

/// The download of `--download`, running while the crawl feeds it pairs.
struct Stream {
    shards: PathBuf,
    bar: ProgressBar,
    task: tokio::task::JoinHandle<Result<DownloadSummary, DownloadError>>,
}

/// Starts the `wit download` pipeline on the runtime, writing `OUT/shards` from the rows sent
/// to the returned bounded channel (dropping the sender ends the input). A live crawl has no
/// fixed pair order, so the download cannot resume shard by shard: it redoes every shard (to
/// resume an interrupted run, run `wit download OUT/pairs.parquet -o OUT/shards`).
fn start_download(
    args: &Args,
    crawl: &CrawlConfig,
    runtime: &tokio::runtime::Runtime,
    bars: &MultiProgress,
) -> anyhow::Result<(SyncSender<InputRow>, Stream)> {
    let shards = args.output_folder.join("shards");
    let cpu_workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cfg = DownloadConfig {
        output_dir: shards.clone(),
        shards: ShardConfig::default(),
        fetch: crawl.fetch.clone(),
        image: args.image.to_options(),
        incremental: false,
        retry_failed: false,
        part: Part::ALL,
        cpu_workers,
        // The pairs already passed the caption filters and the repeat cap; the caption filter
        // runs again only to record each pair's language.
        filters: RowFilters {
            caption: args.filter.caption_filter()?,
            repeat_cap: None,
            exact: args.dedup.exact_dedup(),
            near: args.dedup.near_dedup(),
        },
    };
    let (rows, rx) = sync_channel::<InputRow>(STREAM_BUFFER);
    let bar = bars.add(super::spinner());
    let on_progress = {
        let bar = bar.clone();
        move |p: &Progress| {
            bar.set_message(format!(
                "downloading: {} rows, {} ok, {} failed",
                p.rows,
                p.successes(),
                p.failures()
            ));
        }
    };
    let source: RowSource = Box::new(rx.into_iter().map(Ok));
    let task = runtime.spawn(download_rows(cfg, source, on_progress));
    Ok((rows, Stream { shards, bar, task }))
}

impl Stream {
    /// Waits, once the channel is closed, for the download to take the last pair and finish its
    /// shards, then prints its summary.
    fn finish(self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        let Stream { shards, bar, task } = self;
        let summary = runtime
            .block_on(task)
            .context("the download task panicked")??;
        bar.finish_and_clear();
        let p = &summary.progress;
        println!(
            "downloaded {} pairs in {:.1} s: {} ok, {} failed; shards in {} (index {})",
            p.rows,
            summary.duration.as_secs_f64(),
            p.successes(),
            p.failures(),
            shards.display(),
            summary.shard_index.display()
        );
        Ok(())
    }
}

/// A crawled pair as a row of the download.
fn input_row(pair: &Pair) -> InputRow {
    InputRow {
        url: pair.url.clone(),
        caption: Some(pair.caption.clone()),
        page_url: Some(pair.page_url.to_string()),
        extra: Vec::new(),
    }
}

/// Updates the spinner: pages, pairs, rate, queue.
fn show(bar: &ProgressBar, p: &CrawlProgress, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    bar.set_message(format!(
        "{} pages ({:.1}/s), {} pairs, {} queued, {} failed",
        p.pages,
        p.pages as f64 / secs,
        p.pairs,
        p.queued,
        p.failed
    ));
}

/// The final one-line summary.
fn summary_line(p: &CrawlProgress, took: Duration, pairs: &Path, rows: u64) -> String {
    let secs = took.as_secs_f64().max(1e-3);
    format!(
        "crawled {} pages in {:.1} s ({:.1} pages/s): {} pairs to {}; {} failed, {} disallowed by robots.txt, {} opted out, {} not HTML, {} duplicate pairs, {} links not followed",
        p.pages,
        secs,
        p.pages as f64 / secs,
        rows,
        pairs.display(),
        p.failed,
        p.disallowed_by_robots,
        p.opted_out,
        p.not_html,
        p.duplicate_pairs,
        p.links_dropped
    )
}
