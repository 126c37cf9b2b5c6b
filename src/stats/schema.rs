//! The `stats.json` schema (`"schema": "wit-stats-v1"`): a stable, documented form of a merged
//! [`Summary`], so notebooks and CI scripts can read dataset figures without knowing the sketches.
//!
//! Field names only ever get added within a schema version. Counts are exact unless the field
//! says otherwise; every approximate figure carries its bound (`max_overestimate` for top-k
//! counts, `relative_standard_error` for distinct counts, `relative_error` for quantiles).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wit_shards::sketch::{Histogram, HyperLogLog, QuantileSketch, TopK};
use wit_shards::summary::{Numeric, Summary};
use wit_shards::Status;

/// The schema tag written to `stats.json`.
pub const SCHEMA: &str = "wit-stats-v1";

/// The whole `stats.json` document.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stats {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The folder summarised.
    pub folder: String,
    /// Finalised shards merged (those with a `_stats.json`).
    pub shards: u64,
    /// Shards whose `_stats.json` had no `summary` (img2dataset output, older wit), rebuilt from parquet.
    pub shards_rebuilt_from_parquet: u64,
    /// Rows (input rows, failures included). Exact.
    pub count: u64,
    /// Rows with status `success`. Exact.
    pub successes: u64,
    /// successes / count (0 when empty).
    pub success_rate: f64,
    /// Exact count per status; every known status is present, zeros included.
    pub statuses: BTreeMap<String, u64>,
    /// Rows the server opted out of (X-Robots-Tag). Exact.
    pub opted_out: u64,
    /// Rows robots.txt disallowed. Exact.
    pub disallowed_by_robots: u64,
    /// Most frequent error messages (Space-Saving).
    pub top_errors: Vec<Ranked>,
    /// When the shards were written.
    pub throughput: Throughput,
    /// Image sizes and formats.
    pub images: Images,
    /// Caption lengths and words.
    pub captions: Captions,
    /// Detected caption languages (Space-Saving, exact below 64 languages).
    pub languages: Vec<Ranked>,
    /// Most frequent image hosts (Space-Saving).
    pub domains: Vec<Ranked>,
    /// Duplicate rates.
    pub duplicates: Duplicates,
    /// Query balance, present when the folder holds `wit curate`'s query count table.
    pub queries: Option<super::queries::QueryBalance>,
    /// Result of `--deep`: every tar image read back and decoded.
    pub deep: Option<Deep>,
    /// The samples shown in the report's grid (keys and captions; thumbnails only in the HTML).
    pub samples: Vec<SampleRef>,
    /// The error bounds of the approximate figures, in words and numbers.
    pub error_bounds: ErrorBounds,
}

/// One entry of a top-k list.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ranked {
    /// The item (message, host, word, language).
    pub value: String,
    /// Upper bound of its count.
    pub count: u64,
    /// The true count lies in `[count − max_overestimate, count]`.
    pub max_overestimate: u64,
}

/// Rows written over time, from the shards' `start_time`/`end_time`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Throughput {
    /// Earliest shard start (Unix seconds), if any shard recorded one.
    pub start_time: Option<f64>,
    /// Latest shard end (Unix seconds).
    pub end_time: Option<f64>,
    /// end − start.
    pub wall_seconds: f64,
    /// Sum of the shards' own durations (shards written in parallel overlap).
    pub shard_seconds: f64,
    /// count / wall_seconds.
    pub rows_per_second: f64,
    /// successes / wall_seconds.
    pub successes_per_second: f64,
    /// Fixed time bins over [start, end]; a shard's rows are spread evenly over its own interval.
    pub bins: Vec<TimeBin>,
}

/// One time bin of [`Throughput::bins`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TimeBin {
    /// Bin start (Unix seconds).
    pub start: f64,
    /// Bin end.
    pub end: f64,
    /// Rows attributed to the bin (fractional: spread evenly over each shard's interval).
    pub rows: f64,
    /// Successes attributed to the bin.
    pub successes: f64,
}

/// Original (downloaded) and stored (resized, encoded) images.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Images {
    /// Before resizing.
    pub original: ImageSet,
    /// As stored in the tar.
    pub stored: ImageSet,
}

/// Size distributions of one image population.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageSet {
    /// Width in pixels.
    pub width: Distribution,
    /// Height in pixels.
    pub height: Distribution,
    /// Width / height.
    pub aspect: Distribution,
    /// Size in bytes.
    pub bytes: Distribution,
    /// Formats (exact while fewer than k formats).
    pub formats: Vec<Ranked>,
}

/// A numeric distribution: exact moments and histogram, approximate quantiles.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Distribution {
    /// Number of values. Exact.
    pub count: u64,
    /// Mean. Exact.
    pub mean: Option<f64>,
    /// Minimum. Exact.
    pub min: Option<f64>,
    /// Maximum. Exact.
    pub max: Option<f64>,
    /// Median, within `error_bounds.quantile_relative_error`.
    pub p50: Option<f64>,
    /// 90th percentile, same bound.
    pub p90: Option<f64>,
    /// 99th percentile, same bound.
    pub p99: Option<f64>,
    /// Exact bucket counts; `hi` is null for the open last bucket. Empty buckets included up to
    /// the last non-empty one.
    pub histogram: Vec<Bucket>,
}

/// One histogram bucket `[lo, hi)`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bucket {
    /// Inclusive lower edge.
    pub lo: f64,
    /// Exclusive upper edge; null for the overflow bucket.
    pub hi: Option<f64>,
    /// Values in the bucket. Exact.
    pub count: u64,
}

/// Caption figures, over successes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Captions {
    /// Successes without a caption. Exact.
    pub missing: u64,
    /// Length in characters (Unicode scalar values, like DuckDB's `length`).
    pub chars: Distribution,
    /// Length in whitespace-separated words.
    pub words: Distribution,
    /// Most frequent words (lower-cased, ≥ 3 letters, stopwords left out).
    pub top_words: Vec<Ranked>,
}

/// Duplicate figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Duplicates {
    /// Distinct URLs (HyperLogLog estimate).
    pub distinct_urls: f64,
    /// 1 − distinct_urls / count (approximate, from the estimate).
    pub url_duplicate_rate: f64,
    /// Rows with downloaded bytes (BLAKE3 known). Exact.
    pub with_blake3: u64,
    /// Distinct BLAKE3 hashes (HyperLogLog estimate).
    pub distinct_images: f64,
    /// 1 − distinct_images / with_blake3: the exact-duplicate rate (approximate).
    pub exact_duplicate_rate: f64,
    /// Rows marked `dup_of` (near duplicates by perceptual hash). Exact.
    pub near_duplicates: u64,
    /// near_duplicates / count.
    pub near_duplicate_rate: f64,
}

/// What `--deep` found reading every tar.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Deep {
    /// Image members read from the tars.
    pub images_read: u64,
    /// Images that failed to decode.
    pub undecodable: u64,
    /// Success rows with no image in the tar.
    pub missing_images: u64,
    /// Tar samples with no success row in the parquet.
    pub orphan_samples: u64,
}

/// A sample of the report's grid.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleRef {
    /// Sample key.
    pub key: String,
    /// Its caption.
    pub caption: String,
}

/// Error bounds of the approximate figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBounds {
    /// HyperLogLog relative standard error (distinct counts; 3× this covers 99.7% of runs).
    pub hyperloglog_relative_standard_error: f64,
    /// Quantile relative error (DDSketch).
    pub quantile_relative_error: f64,
    /// Top-k lists: each count overestimates by at most its `max_overestimate` ≤ N/k.
    pub top_k: String,
    /// Histograms, counts, moments: exact.
    pub exact: String,
}

impl ErrorBounds {
    fn current() -> ErrorBounds {
        ErrorBounds {
            hyperloglog_relative_standard_error: HyperLogLog::RELATIVE_STANDARD_ERROR,
            quantile_relative_error: QuantileSketch::RELATIVE_ERROR,
            top_k: "Space-Saving: true count in [count - max_overestimate, count], \
                    max_overestimate <= N/k; unlisted items occur at most N/k times"
                .into(),
            exact: "count, successes, statuses, histograms, min/max/mean, missing captions, \
                    near duplicates"
                .into(),
        }
    }
}

/// Converts a top-k sketch into ranked entries, at most `limit`.
pub fn ranked(t: &TopK, limit: usize) -> Vec<Ranked> {
    t.sorted()
        .into_iter()
        .take(limit)
        .map(|e| Ranked {
            value: e.0,
            count: e.1,
            max_overestimate: e.2,
        })
        .collect()
}

/// Lists a histogram's buckets with their edges.
pub fn buckets(h: &Histogram) -> Vec<Bucket> {
    h.counts
        .iter()
        .enumerate()
        .map(|(i, &count)| {
            let (lo, hi) = h.buckets.range(i);
            Bucket {
                lo,
                hi: hi.is_finite().then_some(hi),
                count,
            }
        })
        .collect()
}

/// Converts a numeric sketch into its documented form.
pub fn distribution(n: &Numeric) -> Distribution {
    let some = |v: f64| (n.count > 0).then_some(v);
    Distribution {
        count: n.count,
        mean: n.mean(),
        min: some(n.min),
        max: some(n.max),
        p50: n.quantile(0.5),
        p90: n.quantile(0.9),
        p99: n.quantile(0.99),
        histogram: buckets(&n.histogram),
    }
}

fn rate(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        (part / whole).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// 1 − distinct/total: the share of rows that repeat an earlier one (0 when empty).
fn dup_rate(distinct: f64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        1.0 - rate(distinct, total as f64)
    }
}

/// Builds everything of [`Stats`] that comes from the merged summary; the caller fills the
/// folder-level parts (shards, throughput, queries, deep, samples).
pub fn from_summary(folder: String, s: &Summary) -> Stats {
    let mut statuses: BTreeMap<String, u64> = Status::ALL
        .iter()
        .map(|st| (st.as_str().to_owned(), 0))
        .collect();
    for (k, v) in &s.status {
        *statuses.entry(k.clone()).or_insert(0) += v;
    }
    let get = |st: Status| statuses.get(st.as_str()).copied().unwrap_or(0);
    let successes = get(Status::Success);
    let distinct_urls = s.distinct_urls.estimate().min(s.rows as f64);
    let distinct_images = s.distinct_blake3.estimate().min(s.with_blake3 as f64);
    Stats {
        schema: SCHEMA.into(),
        folder,
        shards: 0,
        shards_rebuilt_from_parquet: 0,
        count: s.rows,
        successes,
        success_rate: rate(successes as f64, s.rows as f64),
        opted_out: get(Status::OptedOut),
        disallowed_by_robots: get(Status::DisallowedByRobots),
        statuses,
        top_errors: ranked(&s.errors, 20),
        throughput: Throughput::default(),
        images: Images {
            original: ImageSet {
                width: distribution(&s.original_width),
                height: distribution(&s.original_height),
                aspect: distribution(&s.original_aspect),
                bytes: distribution(&s.original_bytes),
                formats: ranked(&s.original_formats, 16),
            },
            stored: ImageSet {
                width: distribution(&s.width),
                height: distribution(&s.height),
                aspect: distribution(&s.aspect),
                bytes: distribution(&s.encoded_bytes),
                formats: ranked(&s.encoded_formats, 8),
            },
        },
        captions: Captions {
            missing: s.captions_missing,
            chars: distribution(&s.caption_chars),
            words: distribution(&s.caption_words),
            top_words: ranked(&s.top_words, 50),
        },
        languages: ranked(&s.languages, 30),
        domains: ranked(&s.domains, 30),
        duplicates: Duplicates {
            distinct_urls,
            url_duplicate_rate: dup_rate(distinct_urls, s.rows),
            with_blake3: s.with_blake3,
            distinct_images,
            exact_duplicate_rate: dup_rate(distinct_images, s.with_blake3),
            near_duplicates: s.near_duplicates,
            near_duplicate_rate: rate(s.near_duplicates as f64, s.rows as f64),
        },
        queries: None,
        deep: None,
        samples: Vec::new(),
        error_bounds: ErrorBounds::current(),
    }
}
