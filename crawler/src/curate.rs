//! WIT/MetaCLIP-style query balancing of a pairs pool.
//!
//! CLIP's WebImageText kept pairs whose text contains one of 500,000 queries, at most 20,000
//! per query, so the corpus covers concepts evenly instead of mirroring the head of the web.
//! MetaCLIP published the algorithm, done here in two streaming passes over pairs parquet:
//! pass 1 counts, per query, the pairs whose caption matches it; pass 2 keeps a pair with
//! probability `1 − Π_q (1 − min(1, T / count(q)))` over its matched queries, drawn from a
//! hash of (seed, row), so the result is deterministic. Head queries end near `T`, tail queries
//! keep all their pairs, pairs matching no query are dropped. Memory: the automaton plus one
//! counter per query, whatever the pool size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use arrow_array::builder::{Int32Builder, ListBuilder};
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchReader, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use serde::Serialize;

use crate::filter::{CaptionFilter, RepeatCap};
use crate::input::{as_strings, expand_paths, InputFormat};

/// Rows per record batch read from the pool.
const BATCH_ROWS: usize = 8192;

/// The column added to kept pairs: ids (line order in the query file) of the matched queries.
pub const MATCHED_COLUMN: &str = "matched_queries";

/// The per-query table written next to the kept pairs.
pub const COUNTS_FILE: &str = "_query_counts.parquet";

/// The run summary written next to the kept pairs.
pub const SUMMARY_FILE: &str = "_curate.json";

/// Why curation failed.
#[derive(Debug, thiserror::Error)]
pub enum CurateError {
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The query list could not be turned into a matcher.
    #[error("cannot build the query matcher: {0}")]
    Queries(String),
    /// The input could not be listed.
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> CurateError {
    CurateError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Case folding and whitespace collapsing applied to queries and captions alike.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// A query list compiled for matching on word boundaries.
pub struct QuerySet {
    queries: Vec<String>,
    /// Query id of each automaton pattern (blank lines have no pattern).
    ids: Vec<u32>,
    automaton: AhoCorasick,
}

impl QuerySet {
    /// Compiles `queries` (one query per item, id = position); blank ones never match but keep
    /// their id, so ids stay equal to line numbers.
    pub fn new(queries: Vec<String>) -> Result<QuerySet, CurateError> {
        let queries: Vec<String> = queries.iter().map(|q| normalize(q)).collect();
        let ids: Vec<u32> = (0..queries.len() as u32)
            .filter(|&i| !queries[i as usize].is_empty())
            .collect();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(ids.iter().map(|&i| &queries[i as usize]))
            .map_err(|e| CurateError::Queries(e.to_string()))?;
        Ok(QuerySet {
            queries,
            ids,
            automaton,
        })
    }

    /// Reads a query file: one query per line, id = 0-based line number.
    pub fn load(path: &Path) -> Result<QuerySet, CurateError> {
        let file = File::open(path).map_err(|e| file_err(path, e))?;
        let lines = BufReader::new(file)
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(path, e))?;
        Self::new(lines)
    }

    /// Number of queries (ids are `0..len`).
    pub fn len(&self) -> usize {
        self.queries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    /// The normalised text of query `id`.
    pub fn query(&self, id: u32) -> &str {
        &self.queries[id as usize]
    }

    /// The distinct ids of the queries occurring in `caption` as whole words (sorted).
    pub fn matches(&self, caption: &str, out: &mut Vec<u32>) {
        out.clear();
        let text = normalize(caption);
        for m in self.automaton.find_overlapping_iter(&text) {
            if on_boundaries(&text, m.start(), m.end()) {
                out.push(self.ids[m.pattern().as_usize()]);
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// A match counts only if it does not continue a word on either side: "cat" matches in
/// "a cat." but not in "concatenate". Sides where the query itself starts or ends with a
/// non-word character ("c++") need no boundary.
fn on_boundaries(text: &str, start: usize, end: usize) -> bool {
    let word = |c: char| c.is_alphanumeric();
    let matched = &text[start..end];
    let first_is_word = matched.chars().next().is_some_and(word);
    let last_is_word = matched.chars().next_back().is_some_and(word);
    let before_ok = !first_is_word || !text[..start].chars().next_back().is_some_and(word);
    let after_ok = !last_is_word || !text[end..].chars().next().is_some_and(word);
    before_ok && after_ok
}

/// The keep probability of a pair whose matched queries have these pool counts.
pub fn keep_probability(counts: impl IntoIterator<Item = u64>, max_per_query: u64) -> f64 {
    let drop_all: f64 = counts
        .into_iter()
        .map(|c| 1.0 - (max_per_query as f64 / c.max(1) as f64).min(1.0))
        .product();
    1.0 - drop_all
}

/// A uniform draw in [0, 1) that depends only on (seed, row): reruns keep the same pairs.
pub fn draw(seed: u64, row: u64) -> f64 {
    let mut z = seed ^ row.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for _ in 0..2 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// What `wit curate` does.
pub struct CurateConfig {
    /// Pairs parquet files or folders of them (`wit crawl` / `wit warc` output, LAION parquet).
    pub inputs: Vec<PathBuf>,
    /// Output folder: one kept-pairs parquet per input file, plus the count table and summary.
    pub out_dir: PathBuf,
    /// The compiled query list.
    pub queries: QuerySet,
    /// `T`: the number of pairs a head query ends near.
    pub max_per_query: u64,
    /// Seed of the keep draws.
    pub seed: u64,
    /// The caption column.
    pub caption_col: String,
    /// Caption quality filter applied before matching (dropped pairs count for no query).
    pub caption_filter: Option<CaptionFilter>,
    /// Cap on repeats of the same caption, applied before matching.
    pub max_caption_repeats: Option<u32>,
}

/// Counts of one curation run (written as `_curate.json`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CurateSummary {
    /// Rows read.
    pub rows: u64,
    /// Rows whose caption passed the filters and matched at least one query.
    pub matched: u64,
    /// Rows kept.
    pub kept: u64,
    /// Rows dropped by a caption filter, by reason (no caption counts as `no caption`).
    pub filtered: BTreeMap<String, u64>,
    /// Queries in the list.
    pub queries: u64,
    /// Queries matched by at least one pair.
    pub queries_matched: u64,
    /// Queries with more than `max_per_query` pairs (the ones balancing cuts).
    pub head_queries: u64,
    /// `T`.
    pub max_per_query: u64,
    /// The seed used.
    pub seed: u64,
    /// The kept-pairs files written, in input order.
    pub outputs: Vec<PathBuf>,
}

/// The pass-1 state and the per-row decision shared by both passes.
struct Matcher<'a> {
    cfg: &'a CurateConfig,
    repeats: Option<RepeatCap>,
    ids: Vec<u32>,
}

impl<'a> Matcher<'a> {
    fn new(cfg: &'a CurateConfig) -> Matcher<'a> {
        Matcher {
            cfg,
            repeats: cfg.max_caption_repeats.map(RepeatCap::new),
            ids: Vec::new(),
        }
    }

    /// Fills `self.ids` with the row's matched queries, or returns the filter reason.
    fn row(&mut self, caption: Option<&str>) -> Result<(), String> {
        self.ids.clear();
        let caption = caption.ok_or_else(|| "no caption".to_string())?;
        if let Some(f) = &self.cfg.caption_filter {
            f.check(caption)?;
        }
        if let Some(cap) = &mut self.repeats {
            cap.admit(caption)?;
        }
        self.cfg.queries.matches(caption, &mut self.ids);
        Ok(())
    }
}

/// Runs both passes; returns the summary (also written to `_curate.json`).
pub fn curate(cfg: &CurateConfig) -> Result<CurateSummary, CurateError> {
    let files = expand_paths(&cfg.inputs, Some(InputFormat::Parquet))?;
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| file_err(&cfg.out_dir, e))?;
    let mut summary = CurateSummary {
        queries: cfg.queries.len() as u64,
        max_per_query: cfg.max_per_query,
        seed: cfg.seed,
        ..CurateSummary::default()
    };
    let counts = count_pass(cfg, &files, &mut summary)?;
    tracing::info!(
        rows = summary.rows,
        matched = summary.matched,
        "curate: pass 1 done"
    );
    let mut after = vec![0u64; counts.len()];
    let mut row = 0u64;
    for (i, path) in files.iter().enumerate() {
        let out = cfg.out_dir.join(format!("part-{i:05}.parquet"));
        summary.kept += keep_pass(cfg, path, &out, &counts, &mut after, &mut row)?;
        summary.outputs.push(out);
    }
    summary.queries_matched = counts.iter().filter(|&&c| c > 0).count() as u64;
    summary.head_queries = counts
        .iter()
        .filter(|&&c| u64::from(c) > cfg.max_per_query)
        .count() as u64;
    write_counts(cfg, &counts, &after)?;
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| file_err(&cfg.out_dir, e))?;
    let path = cfg.out_dir.join(SUMMARY_FILE);
    std::fs::write(&path, json).map_err(|e| file_err(&path, e))?;
    Ok(summary)
}

/// Opens a pairs parquet for batch reading, optionally only the caption column.
fn open_batches(
    path: &Path,
    caption_col: &str,
    caption_only: bool,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, CurateError> {
    let file = File::open(path).map_err(|e| file_err(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| file_err(path, e))?;
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let Some(index) = names.iter().position(|n| n == caption_col) else {
        return Err(file_err(
            path,
            format!(
                "no column `{caption_col}`; its columns are: {} (choose one with --caption-col)",
                names.join(", ")
            ),
        ));
    };
    let builder = if caption_only {
        let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
        builder.with_projection(mask)
    } else {
        builder
    };
    builder
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| file_err(path, e))
}

fn captions(
    batch: &RecordBatch,
    path: &Path,
    col: &str,
) -> Result<arrow_array::StringArray, CurateError> {
    let array = batch
        .column_by_name(col)
        .ok_or_else(|| file_err(path, format!("no column `{col}`")))?;
    as_strings(array.as_ref()).map_err(|e| file_err(path, e))
}

fn count_pass(
    cfg: &CurateConfig,
    files: &[PathBuf],
    summary: &mut CurateSummary,
) -> Result<Vec<u32>, CurateError> {
    let mut counts = vec![0u32; cfg.queries.len()];
    let mut matcher = Matcher::new(cfg);
    for path in files {
        for batch in open_batches(path, &cfg.caption_col, true)? {
            let batch = batch.map_err(|e| file_err(path, e))?;
            let caps = captions(&batch, path, &cfg.caption_col)?;
            for i in 0..caps.len() {
                summary.rows += 1;
                let caption = caps.is_valid(i).then(|| caps.value(i));
                if let Err(reason) = matcher.row(caption) {
                    *summary.filtered.entry(reason).or_default() += 1;
                    continue;
                }
                if !matcher.ids.is_empty() {
                    summary.matched += 1;
                }
                for &id in &matcher.ids {
                    counts[id as usize] = counts[id as usize].saturating_add(1);
                }
            }
        }
    }
    Ok(counts)
}

fn keep_pass(
    cfg: &CurateConfig,
    path: &Path,
    out: &Path,
    counts: &[u32],
    after: &mut [u64],
    row: &mut u64,
) -> Result<u64, CurateError> {
    let batches = open_batches(path, &cfg.caption_col, false)?;
    let list_field = Field::new(
        MATCHED_COLUMN,
        DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true))),
        false,
    );
    let mut fields: Vec<Arc<Field>> = batches.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(list_field));
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        batches.schema().metadata().clone(),
    ));
    let tmp = out.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(|e| file_err(&tmp, e))?;
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), None).map_err(|e| file_err(&tmp, e))?;
    let mut matcher = Matcher::new(cfg);
    let mut kept_total = 0;
    for batch in batches {
        let batch = batch.map_err(|e| file_err(path, e))?;
        let caps = captions(&batch, path, &cfg.caption_col)?;
        let mut keep = Vec::with_capacity(caps.len());
        let mut lists = ListBuilder::new(Int32Builder::new());
        for i in 0..caps.len() {
            let caption = caps.is_valid(i).then(|| caps.value(i));
            let this_row = *row;
            *row += 1;
            let matched = matcher.row(caption).is_ok() && !matcher.ids.is_empty();
            let p = keep_probability(
                matcher.ids.iter().map(|&id| u64::from(counts[id as usize])),
                cfg.max_per_query,
            );
            let kept = matched && draw(cfg.seed, this_row) < p;
            keep.push(kept);
            if kept {
                for &id in &matcher.ids {
                    after[id as usize] += 1;
                    lists.values().append_value(id as i32);
                }
                lists.append(true);
            }
        }
        let mask = BooleanArray::from(keep);
        let filtered = arrow_select::filter::filter_record_batch(&batch, &mask)
            .map_err(|e| file_err(path, e))?;
        kept_total += filtered.num_rows() as u64;
        let mut columns: Vec<ArrayRef> = filtered.columns().to_vec();
        columns.push(Arc::new(lists.finish()));
        let out_batch =
            RecordBatch::try_new(schema.clone(), columns).map_err(|e| file_err(out, e))?;
        writer.write(&out_batch).map_err(|e| file_err(&tmp, e))?;
    }
    writer.close().map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| file_err(out, e))?;
    Ok(kept_total)
}

fn write_counts(cfg: &CurateConfig, before: &[u32], after: &[u64]) -> Result<(), CurateError> {
    let path = cfg.out_dir.join(COUNTS_FILE);
    let ids: Vec<i32> = (0..before.len() as i32).collect();
    let texts: Vec<&str> = (0..before.len() as u32)
        .map(|i| cfg.queries.query(i))
        .collect();
    let batch = RecordBatch::try_from_iter([
        (
            "query_id",
            Arc::new(arrow_array::Int32Array::from(ids)) as ArrayRef,
        ),
        (
            "query",
            Arc::new(arrow_array::StringArray::from(texts)) as ArrayRef,
        ),
        (
            "count_before",
            Arc::new(UInt64Array::from_iter_values(
                before.iter().map(|&c| u64::from(c)),
            )) as ArrayRef,
        ),
        (
            "count_after",
            Arc::new(UInt64Array::from(after.to_vec())) as ArrayRef,
        ),
    ])
    .map_err(|e| file_err(&path, e))?;
    let file = File::create(&path).map_err(|e| file_err(&path, e))?;
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), None).map_err(|e| file_err(&path, e))?;
    writer.write(&batch).map_err(|e| file_err(&path, e))?;
    writer.close().map_err(|e| file_err(&path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, ListArray, StringArray};

    fn set(qs: &[&str]) -> QuerySet {
        QuerySet::new(qs.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    fn ids(q: &QuerySet, caption: &str) -> Vec<u32> {
        let mut out = Vec::new();
        q.matches(caption, &mut out);
        out
    }

    #[test]
    fn matching_is_case_insensitive_on_word_boundaries_and_overlapping() {
        let q = set(&["cat", "new york", "york", "c++", "sea lion", "lion", ""]);
        assert_eq!(ids(&q, "A CAT on a mat"), [0]);
        assert_eq!(ids(&q, "concatenate cats"), Vec::<u32>::new());
        assert_eq!(ids(&q, "New   York skyline"), [1, 2]);
        assert_eq!(ids(&q, "newyork"), Vec::<u32>::new());
        assert_eq!(ids(&q, "learn C++ today"), [3]);
        assert_eq!(ids(&q, "a sea lion, a lion"), [4, 5]);
        assert_eq!(ids(&q, "Ünïcode cat!"), [0]);
    }

    #[test]
    fn keep_probability_is_metaclips_formula() {
        assert_eq!(keep_probability([10], 20), 1.0);
        assert!((keep_probability([100], 20) - 0.2).abs() < 1e-12);
        assert!((keep_probability([100, 40], 20) - (1.0 - 0.8 * 0.5)).abs() < 1e-12);
        let mean = (0..100_000).map(|r| draw(7, r)).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.01, "draws are uniform: mean {mean}");
    }

    fn write_pool(path: &Path, captions: &[String]) {
        let urls: Vec<String> = (0..captions.len())
            .map(|i| format!("http://img/{i}.jpg"))
            .collect();
        let batch = RecordBatch::try_from_iter([
            (
                "url",
                Arc::new(StringArray::from_iter_values(urls.iter())) as ArrayRef,
            ),
            (
                "caption",
                Arc::new(StringArray::from_iter_values(captions.iter())) as ArrayRef,
            ),
        ])
        .unwrap();
        let mut w =
            ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    fn read_kept(path: &Path) -> Vec<(String, Vec<i32>)> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            let urls = batch
                .column_by_name("url")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            let lists = batch
                .column_by_name(MATCHED_COLUMN)
                .unwrap()
                .as_any()
                .downcast_ref::<ListArray>()
                .unwrap()
                .clone();
            for i in 0..batch.num_rows() {
                let l = lists.value(i);
                let ids = l
                    .as_any()
                    .downcast_ref::<Int32Array>()
                    .unwrap()
                    .values()
                    .to_vec();
                out.push((urls.value(i).to_string(), ids));
            }
        }
        out
    }

    #[test]
    fn head_queries_end_near_t_tail_kept_whole_unmatched_dropped_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let mut captions = Vec::new();
        captions.extend((0..4000).map(|i| format!("a photo of a cat number {i}")));
        captions.extend((0..1000).map(|i| format!("Dog in the park {i}")));
        for t in 0..10 {
            captions.extend((0..15).map(|i| format!("the rare{t} bird {i}")));
        }
        captions.extend((0..500).map(|i| format!("concatenated dogma {i}")));
        let pool = dir.path().join("pool.parquet");
        write_pool(&pool, &captions);
        let queries: Vec<String> = ["cat", "dog"]
            .iter()
            .map(|s| s.to_string())
            .chain((0..10).map(|t| format!("rare{t}")))
            .collect();
        let run = |seed: u64, out: &str| {
            let cfg = CurateConfig {
                inputs: vec![pool.clone()],
                out_dir: dir.path().join(out),
                queries: QuerySet::new(queries.clone()).unwrap(),
                max_per_query: 200,
                seed,
                caption_col: "caption".into(),
                caption_filter: None,
                max_caption_repeats: None,
            };
            let summary = curate(&cfg).unwrap();
            (summary, read_kept(&cfg.out_dir.join("part-00000.parquet")))
        };
        let (summary, kept) = run(1, "a");
        assert_eq!(summary.rows, 5650);
        assert_eq!(summary.matched, 5150);
        assert_eq!(summary.head_queries, 2);
        assert_eq!(summary.kept as usize, kept.len());
        let per_query = |q: i32| kept.iter().filter(|(_, ids)| ids.contains(&q)).count();
        let (cat, dog) = (per_query(0), per_query(1));
        assert!((140..=260).contains(&cat), "cat kept {cat}, T = 200");
        assert!((140..=260).contains(&dog), "dog kept {dog}, T = 200");
        for t in 0..10 {
            assert_eq!(per_query(2 + t), 15, "tail query rare{t} keeps every pair");
        }
        assert!(
            kept.iter().all(|(_, ids)| !ids.is_empty()),
            "unmatched pairs are dropped"
        );
        let (_, again) = run(1, "b");
        assert_eq!(kept, again, "same seed, same pairs");
        let (_, other) = run(2, "c");
        assert_ne!(kept, other, "another seed draws other pairs");
        let counts = crate::pairs::first_record_batch(&dir.path().join("a").join(COUNTS_FILE));
        let before = counts
            .column_by_name("count_before")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        let after = counts
            .column_by_name("count_after")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        assert_eq!(
            (before.value(0), before.value(1), before.value(2)),
            (4000, 1000, 15)
        );
        assert_eq!((after.value(0) as usize, after.value(2)), (cat, 15));
    }
}
