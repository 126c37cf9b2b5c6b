//! `wit stats`: folds an output folder's per-shard `_stats.json` summaries into one dataset
//! report (`stats.json`, `report.html`, a text summary).
//!
//! Memory does not grow with the row count: shards are merged one `_stats.json` at a time into
//! fixed-size sketches ([`wit_shards::summary::Summary`]); parquet is read only for shards whose
//! `_stats.json` has no summary (img2dataset output) or with `--deep`, one record batch at a
//! time; tar images only for the seeded sample grid, or all of them (streamed) with `--deep`.
//! The only per-shard state kept is the sorted list of `_stats.json` paths.

pub mod columns;
pub mod html;
pub mod queries;
pub mod rebuild;
pub mod sample;
pub mod schema;
pub mod text;

use anyhow::Context;
use schema::{Deep, Stats, TimeBin};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use wit_shards::summary::{Summary, SUMMARY_VERSION};

/// Number of time bins of the throughput chart.
const TIME_BINS: usize = 60;

/// What to compute.
#[derive(Clone, Debug)]
pub struct Options {
    /// The output folder of `wit download` (or img2dataset).
    pub dir: PathBuf,
    /// Reread every parquet row and tar image instead of trusting the summaries.
    pub deep: bool,
    /// Thumbnails in the sample grid.
    pub grid: usize,
    /// Seed of the sample grid's choice.
    pub seed: u64,
    /// Where the query count table is (a `wit curate` output folder or the file itself);
    /// `None` looks in `dir`.
    pub queries: Option<PathBuf>,
}

/// The result: the documented figures, the merged sketches and the grid's thumbnails.
pub struct Outcome {
    /// `stats.json`'s content.
    pub stats: Stats,
    /// The merged sketches.
    pub summary: Summary,
    /// The sample grid.
    pub thumbnails: Vec<sample::Thumbnail>,
}

/// The part of a `_stats.json` the report reads; unknown fields are ignored, so img2dataset's
/// files work too.
#[derive(Deserialize)]
struct ShardFile {
    count: Option<u64>,
    successes: Option<u64>,
    start_time: Option<f64>,
    end_time: Option<f64>,
    duration: Option<f64>,
    summary: Option<serde_json::Value>,
}

/// The `_stats.json` files of a folder, sorted by name (so merges are deterministic).
pub fn stats_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let is_stats = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("_stats.json"));
        if is_stats {
            files.push(path);
        }
    }
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "no `*_stats.json` in {}: point `wit stats` at a `wit download` (or img2dataset) output \
         folder; a shard gets its _stats.json when it is finalised",
        dir.display()
    );
    Ok(files)
}

/// The shard's base path (`.../00042`) from its `_stats.json` path.
pub fn shard_base(stats_path: &Path) -> PathBuf {
    let name = stats_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    stats_path.with_file_name(name.trim_end_matches("_stats.json"))
}

fn read_shard_file(path: &Path) -> anyhow::Result<ShardFile> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    serde_json::from_reader(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not a shard stats file", path.display()))
}

/// Computes the report. `progress(done, total)` is called after each shard.
pub fn compute(opts: &Options, progress: &dyn Fn(u64, u64)) -> anyhow::Result<Outcome> {
    let files = stats_files(&opts.dir)?;
    let span = time_span(&files)?;
    let mut summary = Summary::default();
    let mut bins = span.map(empty_bins).unwrap_or_default();
    let mut deep = opts.deep.then(Deep::default);
    let mut rebuilt = 0u64;
    let mut shard_seconds = 0.0;
    for (i, path) in files.iter().enumerate() {
        let file = read_shard_file(path)?;
        let shard = match (file.summary.as_ref(), deep.as_mut()) {
            (Some(value), None) => match parse_summary(value, path)? {
                Some(s) => s,
                None => {
                    rebuilt += 1;
                    rebuild::from_parquet(&shard_base(path), None)?
                }
            },
            (_, deep) => {
                rebuilt += u64::from(file.summary.is_none());
                rebuild::from_parquet(&shard_base(path), deep)?
            }
        };
        shard_seconds += file.duration.unwrap_or(0.0);
        let rows = file.count.unwrap_or(shard.rows) as f64;
        let ok = file
            .successes
            .unwrap_or_else(|| shard.status.get("success").copied().unwrap_or(0));
        if let (Some(s), Some(e)) = (file.start_time, file.end_time) {
            spread(&mut bins, s, e, rows, ok as f64);
        }
        summary.merge(&shard);
        progress(i as u64 + 1, files.len() as u64);
    }
    let mut stats = schema::from_summary(opts.dir.display().to_string(), &summary);
    stats.shards = files.len() as u64;
    stats.shards_rebuilt_from_parquet = rebuilt;
    stats.throughput = throughput(span, bins, shard_seconds, &stats);
    stats.deep = deep;
    let table = match &opts.queries {
        Some(path) => Some(queries::locate(path)?),
        None => queries::find_table(&opts.dir),
    };
    if let Some(table) = table {
        stats.queries = Some(queries::balance(&table)?);
    }
    let thumbnails = sample::grid(&files, opts.grid, opts.seed)?;
    stats.samples = thumbnails.iter().map(|t| t.sample.clone()).collect();
    Ok(Outcome {
        stats,
        summary,
        thumbnails,
    })
}

/// The summary of a `_stats.json`, or `None` when it was written by another summary version
/// (then the shard is rebuilt from parquet instead of mixing incompatible buckets).
fn parse_summary(value: &serde_json::Value, path: &Path) -> anyhow::Result<Option<Summary>> {
    let version = value.get("version").and_then(|v| v.as_u64());
    if version != Some(SUMMARY_VERSION as u64) {
        tracing::warn!(
            "{}: summary version {version:?} is not {SUMMARY_VERSION}; rebuilding from parquet",
            path.display()
        );
        return Ok(None);
    }
    Summary::deserialize(value)
        .map(Some)
        .with_context(|| format!("{}: malformed `summary`", path.display()))
}

/// First pass: the earliest start and latest end over all shards (small reads: the summaries
/// are skipped by the parser without being built).
fn time_span(files: &[PathBuf]) -> anyhow::Result<Option<(f64, f64)>> {
    #[derive(Deserialize)]
    struct Times {
        start_time: Option<f64>,
        end_time: Option<f64>,
    }
    let mut span: Option<(f64, f64)> = None;
    for path in files {
        let file = std::fs::File::open(path)?;
        let t: Times = serde_json::from_reader(std::io::BufReader::new(file))
            .with_context(|| format!("{} is not a shard stats file", path.display()))?;
        if let (Some(s), Some(e)) = (t.start_time, t.end_time) {
            span = Some(span.map_or((s, e), |(a, b)| (a.min(s), b.max(e))));
        }
    }
    Ok(span)
}

fn empty_bins((start, end): (f64, f64)) -> Vec<TimeBin> {
    let width = ((end - start) / TIME_BINS as f64).max(1e-9);
    (0..TIME_BINS)
        .map(|i| TimeBin {
            start: start + i as f64 * width,
            end: start + (i + 1) as f64 * width,
            rows: 0.0,
            successes: 0.0,
        })
        .collect()
}

/// Spreads a shard's rows evenly over its [start, end] interval (an instant shard goes whole into
/// the bin holding its time).
fn spread(bins: &mut [TimeBin], start: f64, end: f64, rows: f64, ok: f64) {
    let len = end - start;
    if len <= 0.0 {
        let i = bins
            .partition_point(|b| b.end <= start)
            .min(bins.len().saturating_sub(1));
        if let Some(bin) = bins.get_mut(i) {
            bin.rows += rows;
            bin.successes += ok;
        }
        return;
    }
    for bin in bins.iter_mut() {
        let share = (end.min(bin.end) - start.max(bin.start)).max(0.0) / len;
        bin.rows += rows * share;
        bin.successes += ok * share;
    }
}

fn throughput(
    span: Option<(f64, f64)>,
    bins: Vec<TimeBin>,
    shard_seconds: f64,
    stats: &Stats,
) -> schema::Throughput {
    let wall = span.map_or(0.0, |(s, e)| (e - s).max(0.0));
    let per_second = |n: u64| if wall > 0.0 { n as f64 / wall } else { 0.0 };
    schema::Throughput {
        start_time: span.map(|s| s.0),
        end_time: span.map(|s| s.1),
        wall_seconds: wall,
        shard_seconds,
        rows_per_second: per_second(stats.count),
        successes_per_second: per_second(stats.successes),
        bins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreading_conserves_rows() {
        let mut bins = empty_bins((100.0, 160.0));
        spread(&mut bins, 100.0, 130.0, 300.0, 150.0);
        spread(&mut bins, 159.5, 159.5, 10.0, 10.0);
        let rows: f64 = bins.iter().map(|b| b.rows).sum();
        assert!((rows - 310.0).abs() < 1e-6);
        assert!((bins[0].rows - 10.0).abs() < 1e-6);
        assert_eq!(bins[40].rows, 0.0);
        assert!((bins[59].successes - 10.0).abs() < 1e-6);
    }

    #[test]
    fn shard_base_strips_the_suffix() {
        assert_eq!(
            shard_base(Path::new("/o/00042_stats.json")),
            PathBuf::from("/o/00042")
        );
    }
}
