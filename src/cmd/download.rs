//! `wit download`: an img2dataset-style URL list → WebDataset shards, with img2dataset's flag
//! names, a live progress bar and a final summary. The work is `wit_crawler::download`.

use super::fetch_args::FetchArgs;
use super::image_args::{DedupArgs, FilterArgs, ImageArgs};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wit_crawler::download::{
    download, DownloadConfig, DownloadSummary, Part, Progress, RowFilters,
};
use wit_crawler::input::{InputFormat, InputSpec};
use wit_shards::{ShardConfig, Status};

/// Download the images of a URL list (txt/csv/tsv/jsonl/parquet, optionally .gz, or a folder of
/// them) into WebDataset shards: `{id:05}.tar` + `.parquet` (one row per input row, failures
/// included) + `_stats.json`, and `shardindex.json` for wids.
///
/// Example: wit download urls.parquet -o shards --caption-col caption --allow-net 127.0.0.1/32
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The URL list: a file or a folder of list files.
    #[arg(value_name = "URL_LIST", required = true)]
    pub url_list: Vec<PathBuf>,
    /// Where the shards go.
    #[arg(short = 'o', long)]
    pub output_folder: PathBuf,
    /// Input format; inferred from the file extension when absent.
    #[arg(long)]
    pub input_format: Option<InputFormat>,
    /// Column holding the image URL.
    #[arg(long, default_value = "url")]
    pub url_col: String,
    /// Column holding the caption (alt text); captions are stored as `{key}.txt`.
    #[arg(long)]
    pub caption_col: Option<String>,
    /// Input columns copied into the shard parquet and `{key}.json` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub save_additional_columns: Vec<String>,
    /// Input rows per shard: row r goes to shard r / N.
    #[arg(long, default_value_t = 10_000)]
    pub samples_per_shard: u64,
    /// Skip shards that are already finished (their _stats.json exists) and redo the rest, so a
    /// killed run can simply be rerun [default].
    #[arg(long, overrides_with = "no_incremental")]
    pub incremental: bool,
    /// Redo every shard, overwriting finished ones.
    #[arg(long)]
    pub no_incremental: bool,
    /// Re-fetch only the rows of finished shards whose status is failed_to_download, keeping
    /// every other row (and the stored images) as it is.
    #[arg(long)]
    pub retry_failed: bool,
    /// Run partition K of N (0-based) of the shards: partition K writes shards with id % N == K,
    /// so N machines writing into one folder build one corpus. With only --part-count, K comes
    /// from SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) or JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "K/N")]
    pub part: Option<String>,
    /// Number of partitions when K is read from the job scheduler's environment.
    #[arg(long, value_name = "N", conflicts_with = "part")]
    pub part_count: Option<u64>,
    /// Threads for decoding, resizing and encoding [default: the number of cores].
    #[arg(long)]
    pub cpu_workers: Option<usize>,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub dedup: DedupArgs,
}

/// Runs `wit download`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = config(&args)?;
    let input = input_spec(&args);
    let cores = cfg.cpu_workers;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.clamp(2, 16))
        .enable_all()
        .build()?;
    let bar = progress_bar();
    count_rows_in_background(&input, &cfg, bar.clone());
    let summary = {
        let bar = bar.clone();
        runtime.block_on(download(cfg, &input, move |p| show(&bar, p)))?
    };
    bar.finish_and_clear();
    println!("{}", summary_line(&summary));
    Ok(ExitCode::SUCCESS)
}

/// The URL list(s) and the columns to read from them.
fn input_spec(args: &Args) -> InputSpec {
    InputSpec {
        paths: args.url_list.clone(),
        format: args.input_format,
        url_col: args.url_col.clone(),
        caption_col: args.caption_col.clone(),
        extra_cols: args.save_additional_columns.clone(),
    }
}

fn config(args: &Args) -> anyhow::Result<DownloadConfig> {
    let cpu_workers = args
        .cpu_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    Ok(DownloadConfig {
        output_dir: args.output_folder.clone(),
        shards: ShardConfig {
            samples_per_shard: args.samples_per_shard,
            extra_columns: args.save_additional_columns.clone(),
            ..ShardConfig::default()
        },
        fetch: args.fetch.to_config(16, 0)?,
        image: args.image.to_options(),
        incremental: !args.no_incremental,
        retry_failed: args.retry_failed,
        part: part(args.part.as_deref(), args.part_count)?,
        cpu_workers: cpu_workers.max(1),
        filters: row_filters(&args.filter, &args.dedup)?,
    })
}

/// The caption filters and duplicate indexes the flags ask for (shared with `wit crawl`).
fn row_filters(filter: &FilterArgs, dedup: &DedupArgs) -> anyhow::Result<RowFilters> {
    Ok(RowFilters {
        caption: filter.caption_filter()?,
        repeat_cap: filter.repeat_cap(),
        exact: dedup.exact_dedup(),
        near: dedup.near_dedup(),
    })
}

/// `--part K/N`, or K from the scheduler with `--part-count N`, or the whole input.
fn part(flag: Option<&str>, count: Option<u64>) -> anyhow::Result<Part> {
    let (index, count) = match (flag, count) {
        (Some(spec), _) => {
            let (k, n) = spec
                .split_once('/')
                .ok_or_else(|| anyhow::anyhow!("--part {spec:?}: write it as K/N, e.g. 0/4"))?;
            (k.trim().parse::<u64>()?, n.trim().parse::<u64>()?)
        }
        (None, Some(n)) => (scheduler_index()?, n),
        (None, None) => return Ok(Part::ALL),
    };
    anyhow::ensure!(
        count > 0 && index < count,
        "partition {index}/{count} does not exist: K must be in 0..N"
    );
    Ok(Part { index, count })
}

/// K from a Slurm array task or a Kubernetes Indexed Job.
fn scheduler_index() -> anyhow::Result<u64> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(id) = var("SLURM_ARRAY_TASK_ID") {
        let min = var("SLURM_ARRAY_TASK_MIN").unwrap_or(0);
        return Ok(id.saturating_sub(min));
    }
    var("JOB_COMPLETION_INDEX").ok_or_else(|| {
        anyhow::anyhow!(
            "--part-count needs SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX in the environment; otherwise pass --part K/N"
        )
    })
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {pos} rows ({per_sec}) {msg}")
            .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Counts the input rows on a side thread so the bar can show a total and an ETA without
/// delaying the start (a second streaming pass; memory stays flat). Not for a pipe: the count
/// would consume the rows the download reads.
fn count_rows_in_background(input: &InputSpec, cfg: &DownloadConfig, bar: ProgressBar) {
    if !wit_crawler::input::rereadable(input) {
        return;
    }
    let (spec, sps, part) = (input.clone(), cfg.shards.samples_per_shard, cfg.part);
    std::thread::spawn(move || {
        let Ok(rows) = wit_crawler::input::read_rows(&spec) else {
            return;
        };
        let total = owned_rows(rows.count() as u64, sps, part);
        bar.set_length(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} {wide_bar} {pos}/{len} rows ({per_sec}, ETA {eta}) {msg}",
            )
            .expect("the template is valid"),
        );
    });
}

/// How many of `n` input rows fall in the shards `part` owns.
fn owned_rows(n: u64, sps: u64, part: Part) -> u64 {
    (0..n.div_ceil(sps))
        .filter(|s| part.owns(*s))
        .map(|s| sps.min(n - s * sps))
        .sum()
}

fn show(bar: &ProgressBar, p: &Progress) {
    bar.set_position(p.rows + p.rows_skipped);
    bar.set_message(format!(
        "{} ok, {} failed, {} shards written, {} skipped",
        p.successes(),
        p.failures(),
        p.shards_written,
        p.shards_skipped
    ));
}

fn summary_line(s: &DownloadSummary) -> String {
    let p = &s.progress;
    let secs = s.duration.as_secs_f64();
    let statuses: Vec<String> = Status::ALL
        .iter()
        .filter(|st| p.count(**st) > 0)
        .map(|st| format!("{} {}", p.count(*st), st.as_str()))
        .collect();
    format!(
        "downloaded {} rows in {:.1} s ({:.0} rows/s): {}; {} shards written, {} already done ({} rows); index {}",
        p.rows,
        secs,
        p.rows as f64 / secs.max(1e-9),
        if statuses.is_empty() { "nothing to do".to_string() } else { statuses.join(", ") },
        p.shards_written,
        p.shards_skipped,
        p.rows_skipped,
        s.shard_index.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_flag_parses_and_rejects_bad_partitions() {
        assert_eq!(
            part(Some("2/4"), None).unwrap(),
            Part { index: 2, count: 4 }
        );
        assert_eq!(part(None, None).unwrap(), Part::ALL);
        assert!(part(Some("4/4"), None).is_err());
        assert!(part(Some("1"), None).is_err());
        assert!(part(Some("0/0"), None).is_err());
    }

    #[test]
    fn owned_rows_sum_over_partitions_to_the_input() {
        let n = 103;
        let total: u64 = (0..3)
            .map(|k| owned_rows(n, 10, Part { index: k, count: 3 }))
            .sum();
        assert_eq!(total, n);
        assert_eq!(owned_rows(n, 10, Part { index: 0, count: 3 }), 40);
        assert_eq!(owned_rows(n, 10, Part { index: 1, count: 3 }), 33);
    }
}
