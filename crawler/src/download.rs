//! The `wit download` pipeline: a streamed URL list → fetched, processed images → shards.
//!
//! ```text
//! reader thread ──jobs (bounded)──▶ dispatcher ──▶ ≤ concurrency fetch tasks ──▶ CPU pool (≤ cores)
//!       │                                                                            │
//!       └──── Begin/End/Skipped ─────────▶ writer thread ◀──────── records (bounded) ─┘
//! ```
//!
//! Row `r` of the input belongs to shard `r / samples_per_shard` at position
//! `r % samples_per_shard`, whatever the timing, so keys and bytes are reproducible, a killed run
//! can be redone shard by shard, and partitions (`--part K/N`, shard ids with `id % N == K`) never
//! collide. Every input row of an owned shard produces exactly one record; a shard is finalized
//! when all its rows are in. Memory is bounded by the channel sizes and the concurrency, never by
//! the input size.
//!
//! Filters ([`RowFilters`]): the caption filter and the repeat cap run in the reader, in input
//! order and before any request, so a dropped row costs no fetch. Duplicate decisions run in the
//! writer in row order (completed rows wait until every earlier row of the run is in), and a
//! resumed run first replays the finished shards' parquet into the indexes, so the decisions are
//! the same whether or not the run was interrupted. Dedup is per partition (`--part`): a later
//! global pass can use the `blake3`, `phash` and `dup_of` columns.

use crate::fetch::{FetchConfig, FetchError, Fetcher};
use crate::filter::{CaptionFilter, ExactDedup, NearDupIndex, RepeatCap};
use crate::imaging::{self, ImageOptions};
use crate::input::{self, InputError, InputRow, InputSpec};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use wit_shards::{
    EncodedImage, ImageFormat, SampleRecord, ShardConfig, ShardError, ShardReader, ShardWriter,
    Status,
};

/// Everything one `wit download` run needs.
#[derive(Clone, Debug)]
pub struct DownloadConfig {
    /// The output folder of shards.
    pub output_dir: PathBuf,
    /// Rows per shard, key digits, kept columns.
    pub shards: ShardConfig,
    /// How to talk to servers.
    pub fetch: FetchConfig,
    /// How to turn bytes into stored images.
    pub image: ImageOptions,
    /// Skip shards whose `_stats.json` exists (a finished shard) instead of redoing them.
    pub incremental: bool,
    /// Re-fetch only the `failed_to_download` rows of finished shards, keeping everything else.
    pub retry_failed: bool,
    /// Which partition of the shards this run owns.
    pub part: Part,
    /// Threads for decode/resize/encode and hashing.
    pub cpu_workers: usize,
    /// Caption filters and image duplicate detection (all off by default).
    pub filters: RowFilters,
}

/// The `error_message` of an image dropped as an exact duplicate (a stable string, so drops are
/// counted by reason in `_stats.json`, and replayed from finished shards on resume).
pub const EXACT_DUPLICATE: &str = "exact duplicate image (--dedup exact)";

/// Filters applied to the rows of a download; `Default` keeps every row.
#[derive(Clone, Debug, Default)]
pub struct RowFilters {
    /// Caption rules and language identification, checked before fetching.
    pub caption: Option<CaptionFilter>,
    /// Cap on repeated captions, counted over the whole input in row order.
    pub repeat_cap: Option<RepeatCap>,
    /// Exact duplicates (BLAKE3 of the downloaded bytes) become `filtered` with `dup_of`.
    pub exact: Option<ExactDedup>,
    /// Near duplicates (perceptual hash) keep their image and get `dup_of`.
    pub near: Option<NearDupIndex>,
}

/// One of `count` disjoint partitions: this run owns the shards with `id % count == index`.
///
/// Partitioning by shard id keeps ids globally unique without knowing the input length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// This partition, `0..count`.
    pub index: u64,
    /// How many partitions there are.
    pub count: u64,
}

impl Part {
    /// The whole input.
    pub const ALL: Part = Part { index: 0, count: 1 };

    /// Whether this partition writes shard `shard_id`.
    pub fn owns(&self, shard_id: u64) -> bool {
        shard_id % self.count == self.index
    }
}

/// Live counters, passed to the progress callback after every row and shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Rows that got a status in this run.
    pub rows: u64,
    /// Rows per status, indexed like [`Status::ALL`].
    pub by_status: [u64; 6],
    /// Rows of owned shards skipped because they were already finished (incremental mode).
    pub rows_skipped: u64,
    /// Shards finalized by this run.
    pub shards_written: u64,
    /// Owned shards skipped because they were already finished.
    pub shards_skipped: u64,
}

impl Progress {
    /// Rows that ended with `status`.
    pub fn count(&self, status: Status) -> u64 {
        self.by_status[status_index(status)]
    }

    /// Rows stored as images.
    pub fn successes(&self) -> u64 {
        self.count(Status::Success)
    }

    /// Rows that got any other status.
    pub fn failures(&self) -> u64 {
        self.rows - self.successes()
    }
}

fn status_index(status: Status) -> usize {
    Status::ALL
        .iter()
        .position(|s| *s == status)
        .expect("Status::ALL lists every status")
}

/// What a finished run did.
#[derive(Clone, Debug)]
pub struct DownloadSummary {
    /// The final counters.
    pub progress: Progress,
    /// Wall time of the run.
    pub duration: Duration,
    /// The `shardindex.json` written at the end.
    pub shard_index: PathBuf,
}

/// Why a run stopped. Row-level failures are not errors: they become status rows.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The input could not be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A shard could not be written or read back.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// A pipeline thread died (a bug): the message says where.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A row to fetch.
struct Job {
    shard_id: u64,
    row: u64,
    input: InputRow,
    /// The caption's language, when the caption filter identified it.
    language: Option<String>,
    /// This row's place in the window of fetched-but-unwritten rows.
    window: OwnedSemaphorePermit,
}

/// What the writer thread hears about.
enum WriterMsg {
    /// Open shard `shard_id`; with `reuse`, carry over its previous non-failed rows.
    Begin { shard_id: u64, reuse: bool },
    /// Shard `shard_id` has `rows` input rows in total.
    End { shard_id: u64, rows: u64 },
    /// One row's record, with its window place when it was fetched.
    Record {
        shard_id: u64,
        row: u64,
        record: Box<SampleRecord>,
        window: Option<OwnedSemaphorePermit>,
    },
    /// Owned shard `shard_id` was already finished and has `rows` rows.
    Skipped { shard_id: u64, rows: u64 },
}

/// Rows to download, in the order that assigns them to shards (row `r` goes to shard
/// `r / samples_per_shard`): a file's rows, or rows produced live (`wit crawl --download`).
pub type RowSource = Box<dyn Iterator<Item = Result<InputRow, InputError>> + Send>;

/// Runs the pipeline over the URL list(s) `urls` describes, to completion; `on_progress` is called
/// from the writer thread. The first file is opened before anything is written, so a wrong path
/// or column fails early.
pub async fn download(
    cfg: DownloadConfig,
    urls: &InputSpec,
    on_progress: impl Fn(&Progress) + Send + 'static,
) -> Result<DownloadSummary, DownloadError> {
    validate(&cfg)?;
    let rows = input::read_rows(urls)?;
    pipeline(cfg, Box::new(rows), on_progress).await
}

/// Runs the pipeline over `rows`, so a producer such as a crawl can stream rows in while they
/// are found; a bounded source keeps memory flat. The run ends when the source does. Resume (`incremental`, `retry_failed`) and partitions assume
/// the same rows in the same order on every run: turn them off for a source without a fixed
/// order.
pub async fn download_rows(
    cfg: DownloadConfig,
    rows: RowSource,
    on_progress: impl Fn(&Progress) + Send + 'static,
) -> Result<DownloadSummary, DownloadError> {
    validate(&cfg)?;
    pipeline(cfg, rows, on_progress).await
}

async fn pipeline(
    mut cfg: DownloadConfig,
    rows: RowSource,
    on_progress: impl Fn(&Progress) + Send + 'static,
) -> Result<DownloadSummary, DownloadError> {
    let filters = std::mem::take(&mut cfg.filters);
    let gate = CaptionGate {
        caption: filters.caption,
        repeat_cap: filters.repeat_cap,
    };
    let dedup = Dedup {
        exact: filters.exact,
        near: filters.near,
    };
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.output_dir).map_err(|e| {
        DownloadError::Config(format!(
            "cannot create output folder {}: {e}",
            cfg.output_dir.display()
        ))
    })?;
    let fetcher = Fetcher::new(cfg.fetch.clone())?;
    let depth = cfg.fetch.concurrency.max(16);
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(depth);
    // Rows fetched but not yet written: bounds what waits in the writer for an earlier, slow
    // row when duplicates are decided in row order.
    let window = Arc::new(Semaphore::new(4 * depth));
    let (writer_tx, writer_rx) = mpsc::channel::<WriterMsg>(depth);

    let reader = {
        let (cfg, writer_tx) = (cfg.clone(), writer_tx.clone());
        tokio::task::spawn_blocking(move || {
            read_input(rows, &cfg, gate, &window, &jobs_tx, &writer_tx)
        })
    };
    let writer = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || write_shards(writer_rx, &cfg, dedup, on_progress))
    };
    dispatch(jobs_rx, writer_tx, fetcher, &cfg).await;

    // The reader's error is the root cause when both fail (the writer then sees unfinished shards).
    let read = joined(reader.await, "input reader");
    let written = joined(writer.await, "shard writer");
    read?;
    let written = written?;
    let shard_index = wit_shards::write_shard_index(&cfg.output_dir)?;
    Ok(DownloadSummary {
        progress: written,
        duration: started.elapsed(),
        shard_index,
    })
}

fn validate(cfg: &DownloadConfig) -> Result<(), DownloadError> {
    if cfg.part.count == 0 || cfg.part.index >= cfg.part.count {
        return Err(DownloadError::Config(format!(
            "partition {}/{} does not exist: K must be in 0..N",
            cfg.part.index, cfg.part.count
        )));
    }
    cfg.shards.validate()?;
    Ok(())
}

fn joined<T>(
    result: Result<Result<T, DownloadError>, tokio::task::JoinError>,
    what: &str,
) -> Result<T, DownloadError> {
    result.map_err(|e| DownloadError::Internal(format!("the {what} panicked: {e}")))?
}

/// Streams the input, assigns rows to shards, drops rows whose caption fails (no request is
/// made for them) and tells the writer which shards exist.
fn read_input(
    rows: RowSource,
    cfg: &DownloadConfig,
    mut gate: CaptionGate,
    window: &Arc<Semaphore>,
    jobs: &mpsc::Sender<Job>,
    writer: &mpsc::Sender<WriterMsg>,
) -> Result<(), DownloadError> {
    let sps = cfg.shards.samples_per_shard;
    let mut current: Option<ShardPlan> = None;
    for (index, row) in rows.enumerate() {
        let row = match row {
            Ok(row) => Ok(row),
            Err(e @ InputError::BadLine { .. }) => Err(e.to_string()),
            Err(e) => return Err(e.into()),
        };
        let (shard_id, row_in_shard) = (index as u64 / sps, index as u64 % sps);
        if current.as_ref().map(|c| c.shard_id) != Some(shard_id) {
            if let Some(done) = current.take() {
                done.end(writer);
            }
            current = Some(ShardPlan::start(shard_id, cfg, writer)?);
        }
        let plan = current.as_mut().expect("set just above");
        plan.rows += 1;
        let wanted = plan.wants(row_in_shard);
        let row = match row {
            Ok(row) => row,
            Err(_) if !wanted => continue,
            Err(problem) => {
                let msg = WriterMsg::Record {
                    shard_id,
                    row: row_in_shard,
                    record: Box::new(malformed(problem, cfg.shards.extra_columns.len())),
                    window: None,
                };
                if writer.blocking_send(msg).is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        if !wanted && !gate.judges_all() {
            continue;
        }
        let verdict = gate.judge(row.caption.as_deref());
        if !wanted {
            continue;
        }
        let sent = match verdict {
            Ok(language) => {
                let acquired = window.clone().acquire_owned();
                let Ok(window) = tokio::runtime::Handle::current().block_on(acquired) else {
                    return Ok(()); // never closed
                };
                let job = Job {
                    shard_id,
                    row: row_in_shard,
                    input: row,
                    language,
                    window,
                };
                jobs.blocking_send(job).is_ok()
            }
            Err(reason) => {
                let msg = WriterMsg::Record {
                    shard_id,
                    row: row_in_shard,
                    record: Box::new(filtered(row, reason)),
                    window: None,
                };
                writer.blocking_send(msg).is_ok()
            }
        };
        if !sent {
            return Ok(()); // the writer stopped; it reports its own error
        }
    }
    if let Some(done) = current {
        done.end(writer);
    }
    Ok(())
}

/// The caption half of [`RowFilters`], owned by the reader thread.
struct CaptionGate {
    caption: Option<CaptionFilter>,
    repeat_cap: Option<RepeatCap>,
}

impl CaptionGate {
    /// Whether every input row must be judged: the repeat cap counts the whole input in order,
    /// owned shards or not, so its decisions do not depend on which shards a run redoes.
    fn judges_all(&self) -> bool {
        self.repeat_cap.is_some()
    }

    /// `Ok(language)` for a row to fetch, `Err(reason)` for a row to drop.
    fn judge(&mut self, caption: Option<&str>) -> Result<Option<String>, String> {
        let language = match &self.caption {
            Some(filter) => filter.check(caption.unwrap_or(""))?,
            None => None,
        };
        if let (Some(cap), Some(caption)) = (self.repeat_cap.as_mut(), caption) {
            cap.admit(caption)?;
        }
        Ok(language)
    }
}

/// The record of an input line that could not be parsed: a failed row that names the file and
/// line, so the run loses nothing silently and the user can fix the list.
fn malformed(problem: String, extra_columns: usize) -> SampleRecord {
    SampleRecord {
        extra: vec![None; extra_columns],
        status: Some(Status::FailedToDownload),
        error_message: Some(format!("malformed input line: {problem}")),
        ..SampleRecord::default()
    }
}

/// The record of a row dropped before fetching.
fn filtered(row: InputRow, reason: String) -> SampleRecord {
    SampleRecord {
        url: row.url,
        caption: row.caption,
        page_url: row.page_url,
        extra: row.extra,
        status: Some(Status::Filtered),
        error_message: Some(reason),
        ..SampleRecord::default()
    }
}

/// What the reader does with the rows of one shard.
struct ShardPlan {
    shard_id: u64,
    rows: u64,
    mode: PlanMode,
}

enum PlanMode {
    /// Another partition's shard, or a finished one: rows are only counted.
    Skip { owned: bool },
    /// Fetch every row.
    All,
    /// Fetch only these rows (retry of failed downloads); the writer keeps the rest.
    Only(HashSet<u64>),
}

impl ShardPlan {
    fn start(
        shard_id: u64,
        cfg: &DownloadConfig,
        writer: &mpsc::Sender<WriterMsg>,
    ) -> Result<ShardPlan, DownloadError> {
        let mode = shard_mode(shard_id, cfg)?;
        let reuse = match &mode {
            PlanMode::Skip { .. } => None,
            PlanMode::All => Some(false),
            PlanMode::Only(_) => Some(true),
        };
        if let Some(reuse) = reuse {
            send(writer, WriterMsg::Begin { shard_id, reuse });
        }
        Ok(ShardPlan {
            shard_id,
            rows: 0,
            mode,
        })
    }

    fn wants(&self, row: u64) -> bool {
        match &self.mode {
            PlanMode::Skip { .. } => false,
            PlanMode::All => true,
            PlanMode::Only(rows) => rows.contains(&row),
        }
    }

    fn end(self, writer: &mpsc::Sender<WriterMsg>) {
        let msg = match self.mode {
            PlanMode::Skip { owned: false } => return,
            PlanMode::Skip { owned: true } => WriterMsg::Skipped {
                shard_id: self.shard_id,
                rows: self.rows,
            },
            _ => WriterMsg::End {
                shard_id: self.shard_id,
                rows: self.rows,
            },
        };
        send(writer, msg)
    }
}

/// Tells the writer; a writer that already stopped has reported its own error, so a failed
/// send is not a second one.
fn send(writer: &mpsc::Sender<WriterMsg>, msg: WriterMsg) {
    let _ = writer.blocking_send(msg);
}

/// Decides what to do with an owned or foreign shard from what is on disk.
fn shard_mode(shard_id: u64, cfg: &DownloadConfig) -> Result<PlanMode, DownloadError> {
    if !cfg.part.owns(shard_id) {
        return Ok(PlanMode::Skip { owned: false });
    }
    let finished = wit_shards::shard_is_complete(&cfg.output_dir, shard_id, &cfg.shards);
    if !finished || !(cfg.incremental || cfg.retry_failed) {
        return Ok(PlanMode::All);
    }
    if !cfg.retry_failed {
        return Ok(PlanMode::Skip { owned: true });
    }
    let parquet = cfg.shards.parquet_path(&cfg.output_dir, shard_id);
    let failed: HashSet<u64> = wit_shards::read_metadata(&parquet)?
        .iter()
        .filter(|m| m.status == Status::FailedToDownload)
        .map(|m| row_of_key(&m.key, shard_id, &cfg.shards))
        .collect::<Result<_, _>>()?;
    Ok(if failed.is_empty() {
        PlanMode::Skip { owned: true }
    } else {
        PlanMode::Only(failed)
    })
}

/// The row position encoded in a sample key (inverse of `compute_key`).
fn row_of_key(key: &str, shard_id: u64, cfg: &ShardConfig) -> Result<u64, DownloadError> {
    let scale = 10u64.pow(cfg.row_digits());
    key.parse::<u64>()
        .ok()
        .and_then(|k| k.checked_sub(shard_id * scale))
        .filter(|row| *row < scale)
        .ok_or_else(|| {
            DownloadError::Config(format!(
                "key {key} is not in shard {shard_id}: was the folder written with another --samples-per-shard?"
            ))
        })
}

/// Spawns one task per job, at most `concurrency` at a time.
async fn dispatch(
    mut jobs: mpsc::Receiver<Job>,
    writer: mpsc::Sender<WriterMsg>,
    fetcher: Fetcher,
    cfg: &DownloadConfig,
) {
    let in_flight = Arc::new(Semaphore::new(cfg.fetch.concurrency.max(1)));
    let cpu = Arc::new(Semaphore::new(cfg.cpu_workers.max(1)));
    let image = Arc::new(cfg.image.clone());
    while let Some(job) = jobs.recv().await {
        if writer.is_closed() {
            return; // the writer failed: stop reading so its error surfaces quickly
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (fetcher, cpu, image, writer) =
            (fetcher.clone(), cpu.clone(), image.clone(), writer.clone());
        tokio::spawn(async move {
            let mut record = process_row(&fetcher, &cpu, image, job.input).await;
            record.language = job.language;
            let msg = WriterMsg::Record {
                shard_id: job.shard_id,
                row: job.row,
                record: Box::new(record),
                window: Some(job.window),
            };
            let _ = writer.send(msg).await; // a closed writer has already reported its error
            drop(permit);
        });
    }
}

/// One input row → its record: fetch, then hash and process on the CPU pool.
pub async fn process_row(
    fetcher: &Fetcher,
    cpu: &Arc<Semaphore>,
    image: Arc<ImageOptions>,
    row: InputRow,
) -> SampleRecord {
    let mut record = SampleRecord {
        caption: row.caption,
        page_url: row.page_url,
        extra: row.extra,
        ..SampleRecord::default()
    };
    let url = url::Url::parse(row.url.trim());
    record.url = row.url;
    let fetched = match url {
        Ok(url) => fetcher.fetch(&url).await,
        Err(e) => Err(FetchError::InvalidUrl(e.to_string())),
    };
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            record.status = Some(e.status());
            record.error_message = Some(e.to_string());
            return record;
        }
    };
    record.mime = fetched.content_type;
    record.original_bytes = Some(fetched.body.len() as u64);
    let _permit = cpu.clone().acquire_owned().await;
    let body = fetched.body;
    let work = tokio::task::spawn_blocking(move || {
        let hashes = (
            hex::encode(sha2::Sha256::digest(&body)),
            blake3::hash(&body).to_hex().to_string(),
        );
        (hashes, imaging::process(&body, &image))
    })
    .await;
    match work {
        Ok(((sha256, blake3), processed)) => {
            record.sha256 = Some(sha256);
            record.blake3 = Some(blake3);
            apply_processed(&mut record, processed);
        }
        Err(e) => {
            record.status = Some(Status::FailedToResize);
            record.error_message = Some(format!("image processing crashed: {e}"));
        }
    }
    record
}

fn apply_processed(
    record: &mut SampleRecord,
    processed: Result<imaging::Processed, imaging::ImageError>,
) {
    match processed {
        Ok(p) => {
            record.status = Some(Status::Success);
            record.original_width = Some(p.original_width);
            record.original_height = Some(p.original_height);
            record.original_format = Some(p.original_format.to_string());
            record.exif = p.exif;
            record.phash = Some(format!("{:016x}", p.phash));
            record.image = Some(p.image);
        }
        Err(e) => {
            record.status = Some(e.status());
            record.error_message = Some(e.to_string());
        }
    }
}

/// An open shard: its writer, the rows that are in but not yet written, and how many are.
struct OpenShard {
    writer: ShardWriter,
    /// Row → (record, carried over from a finished shard and so already decided).
    pending: BTreeMap<u64, Pending>,
    written: u64,
    expected: Option<u64>,
}

/// A row that is in but not yet written.
struct Pending {
    record: Box<SampleRecord>,
    /// Carried over from a finished shard, so already decided.
    reused: bool,
    /// Released when the row is written.
    _window: Option<OwnedSemaphorePermit>,
}

/// What the writer decides next, in input order (only when deduplicating).
enum Turn {
    /// A shard being written: its rows are decided in row order.
    Open(u64),
    /// A finished shard: its decisions are replayed into the indexes.
    Finished(u64),
}

/// The duplicate half of [`RowFilters`], owned by the writer thread.
struct Dedup {
    exact: Option<ExactDedup>,
    near: Option<NearDupIndex>,
}

impl Dedup {
    fn active(&self) -> bool {
        self.exact.is_some() || self.near.is_some()
    }

    /// Marks a freshly downloaded image as a duplicate of an earlier one, or remembers it.
    fn decide(&mut self, key: &str, record: &mut SampleRecord) {
        if record.status != Some(Status::Success) {
            return;
        }
        let blake3 = record.blake3.as_deref().and_then(parse_blake3);
        if let (Some(exact), Some(hash)) = (self.exact.as_mut(), blake3) {
            if let Some(first) = exact.check_insert(&hash, key) {
                record.status = Some(Status::Filtered);
                record.error_message = Some(EXACT_DUPLICATE.to_string());
                record.image = None;
                record.dup_of = Some(first);
                return;
            }
        }
        let phash = record.phash.as_deref().and_then(parse_phash);
        if let (Some(near), Some(phash)) = (self.near.as_mut(), phash) {
            record.dup_of = near.check_insert(phash, key);
        }
    }

    /// Repeats the index updates [`Dedup::decide`] made for an already decided row, so a
    /// resumed run continues from the state an uninterrupted run would have.
    fn replay(
        &mut self,
        key: &str,
        status: Status,
        error: Option<&str>,
        blake3: Option<&str>,
        phash: Option<&str>,
    ) {
        let success = status == Status::Success;
        let exact_dup = status == Status::Filtered && error == Some(EXACT_DUPLICATE);
        if let (Some(exact), Some(hash)) = (self.exact.as_mut(), blake3.and_then(parse_blake3)) {
            if success || exact_dup {
                exact.check_insert(&hash, key);
            }
        }
        if let (Some(near), Some(phash)) = (self.near.as_mut(), phash.and_then(parse_phash)) {
            if success {
                near.check_insert(phash, key);
            }
        }
    }
}

fn parse_blake3(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

fn parse_phash(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex, 16).ok()
}

/// Owns every `ShardWriter`; writes rows (in row order when deduplicating, so decisions do not
/// depend on timing) and finalizes a shard as soon as all its rows are written.
struct Writer<'a, F> {
    cfg: &'a DownloadConfig,
    dedup: Dedup,
    open: HashMap<u64, OpenShard>,
    turns: VecDeque<Turn>,
    progress: Progress,
    on_progress: F,
}

fn write_shards(
    mut msgs: mpsc::Receiver<WriterMsg>,
    cfg: &DownloadConfig,
    dedup: Dedup,
    on_progress: impl Fn(&Progress),
) -> Result<Progress, DownloadError> {
    let mut w = Writer {
        cfg,
        dedup,
        open: HashMap::new(),
        turns: VecDeque::new(),
        progress: Progress::default(),
        on_progress,
    };
    while let Some(msg) = msgs.blocking_recv() {
        w.handle(msg)?;
    }
    if let Some(id) = w.open.keys().min() {
        return Err(DownloadError::Internal(format!(
            "shard {id} was left unfinished: the pipeline stopped early"
        )));
    }
    Ok(w.progress)
}

impl<F: Fn(&Progress)> Writer<'_, F> {
    fn handle(&mut self, msg: WriterMsg) -> Result<(), DownloadError> {
        let ordered = self.dedup.active();
        match msg {
            WriterMsg::Begin { shard_id, reuse } => {
                let shard = begin_shard(shard_id, reuse, self.cfg)?;
                self.open.insert(shard_id, shard);
                if ordered {
                    self.turns.push_back(Turn::Open(shard_id));
                }
            }
            WriterMsg::End { shard_id, rows } => {
                shard_mut(&mut self.open, shard_id)?.expected = Some(rows);
            }
            WriterMsg::Record {
                shard_id,
                row,
                record,
                window,
            } => {
                let shard = shard_mut(&mut self.open, shard_id)?;
                let pending = Pending {
                    record,
                    reused: false,
                    _window: window,
                };
                shard.pending.insert(row, pending);
            }
            WriterMsg::Skipped { shard_id, rows } => {
                self.progress.shards_skipped += 1;
                self.progress.rows_skipped += rows;
                (self.on_progress)(&self.progress);
                if ordered {
                    self.turns.push_back(Turn::Finished(shard_id));
                }
            }
        }
        if ordered {
            self.advance_in_order()
        } else {
            let ids: Vec<u64> = self.open.keys().copied().collect();
            ids.into_iter()
                .try_for_each(|id| self.drain(id, false).map(drop))
        }
    }

    /// Decides and writes rows in input order for as long as the next row is in.
    fn advance_in_order(&mut self) -> Result<(), DownloadError> {
        while let Some(turn) = self.turns.front() {
            match *turn {
                Turn::Finished(id) => self.replay_finished(id)?,
                Turn::Open(id) => {
                    if !self.drain(id, true)? {
                        return Ok(());
                    }
                }
            }
            self.turns.pop_front();
        }
        Ok(())
    }

    /// Writes the pending rows of shard `id` (only the contiguous next rows, deciding
    /// duplicates, when `in_order`) and finalizes it when complete; true when finalized.
    fn drain(&mut self, id: u64, in_order: bool) -> Result<bool, DownloadError> {
        let shard = shard_mut(&mut self.open, id)?;
        loop {
            let next = if in_order {
                let row = shard.written;
                shard.pending.remove(&row).map(|entry| (row, entry))
            } else {
                shard.pending.pop_first()
            };
            let Some((
                row,
                Pending {
                    mut record, reused, ..
                },
            )) = next
            else {
                break;
            };
            if in_order {
                let key = wit_shards::compute_key(id, row, &self.cfg.shards);
                if reused {
                    let r = &record;
                    let status = r.effective_status();
                    let (error, blake3, phash) = (
                        r.error_message.as_deref(),
                        r.blake3.as_deref(),
                        r.phash.as_deref(),
                    );
                    self.dedup.replay(&key, status, error, blake3, phash);
                } else {
                    self.dedup.decide(&key, &mut record);
                }
            }
            shard.writer.write(row, &record)?;
            shard.written += 1;
            if !reused {
                self.progress.rows += 1;
                self.progress.by_status[status_index(record.effective_status())] += 1;
                (self.on_progress)(&self.progress);
            }
        }
        if shard.expected != Some(shard.written) {
            return Ok(false);
        }
        let shard = self.open.remove(&id).expect("looked up just above");
        shard.writer.finish()?;
        self.progress.shards_written += 1;
        (self.on_progress)(&self.progress);
        Ok(true)
    }

    /// Feeds a finished shard's recorded decisions to the duplicate indexes.
    fn replay_finished(&mut self, id: u64) -> Result<(), DownloadError> {
        let parquet = self.cfg.shards.parquet_path(&self.cfg.output_dir, id);
        for m in wit_shards::read_metadata(&parquet)? {
            let (error, blake3, phash) = (
                m.error_message.as_deref(),
                m.blake3.as_deref(),
                m.phash.as_deref(),
            );
            self.dedup.replay(&m.key, m.status, error, blake3, phash);
        }
        Ok(())
    }
}

fn shard_mut(open: &mut HashMap<u64, OpenShard>, id: u64) -> Result<&mut OpenShard, DownloadError> {
    open.get_mut(&id)
        .ok_or_else(|| DownloadError::Internal(format!("row for shard {id}, which is not open")))
}

/// Opens a shard; in retry mode, carries over every row of the finished shard that did not fail
/// to download (successes keep their stored bytes) as already decided rows.
fn begin_shard(
    shard_id: u64,
    reuse: bool,
    cfg: &DownloadConfig,
) -> Result<OpenShard, DownloadError> {
    let kept = if reuse {
        previous_records(shard_id, cfg)?
    } else {
        Vec::new()
    };
    let writer = ShardWriter::create(&cfg.output_dir, shard_id, &cfg.shards)?;
    let pending = kept
        .into_iter()
        .map(|(row, record)| {
            let pending = Pending {
                record: Box::new(record),
                reused: true,
                _window: None,
            };
            (row, pending)
        })
        .collect();
    Ok(OpenShard {
        writer,
        pending,
        written: 0,
        expected: None,
    })
}

/// The non-`failed_to_download` rows of a finished shard, rebuilt from its parquet and tar.
fn previous_records(
    shard_id: u64,
    cfg: &DownloadConfig,
) -> Result<Vec<(u64, SampleRecord)>, DownloadError> {
    let dir = &cfg.output_dir;
    let rows = wit_shards::read_metadata(&cfg.shards.parquet_path(dir, shard_id))?;
    let mut images = read_images(&cfg.shards.tar_path(dir, shard_id))?;
    let mut kept = Vec::new();
    for m in rows {
        if m.status == Status::FailedToDownload {
            continue;
        }
        let row = row_of_key(&m.key, shard_id, &cfg.shards)?;
        let image = match (m.status, images.remove(&m.key)) {
            (Status::Success, Some((format, bytes))) => Some(EncodedImage {
                bytes,
                format,
                width: m.width.unwrap_or(0),
                height: m.height.unwrap_or(0),
            }),
            (Status::Success, None) => {
                return Err(DownloadError::Config(format!(
                    "sample {} is a success in the parquet but missing from the tar: rerun without --retry-failed to redo shard {shard_id}",
                    m.key
                )))
            }
            _ => None,
        };
        kept.push((row, record_from_metadata(m, image)));
    }
    Ok(kept)
}

fn record_from_metadata(m: wit_shards::MetadataRow, image: Option<EncodedImage>) -> SampleRecord {
    SampleRecord {
        url: m.url,
        caption: m.caption,
        status: Some(m.status),
        error_message: m.error_message,
        image,
        original_width: m.original_width,
        original_height: m.original_height,
        original_bytes: m.bytes,
        original_format: m.original_format,
        exif: m.exif,
        sha256: m.sha256,
        blake3: m.blake3,
        mime: m.mime,
        page_url: m.page_url,
        language: m.language,
        phash: m.phash,
        dup_of: m.dup_of,
        extra: m.extra.into_iter().map(|(_, v)| v).collect(),
    }
}

/// key → (format, bytes) of every image member of a tar.
fn read_images(path: &Path) -> Result<HashMap<String, (ImageFormat, Vec<u8>)>, DownloadError> {
    let file = std::fs::File::open(path).map_err(|e| {
        DownloadError::Config(format!(
            "cannot open {} to keep its successes: {e}; rerun without --retry-failed",
            path.display()
        ))
    })?;
    let mut images = HashMap::new();
    for sample in ShardReader::new(std::io::BufReader::new(file)) {
        let sample = sample?;
        if let Some((ext, bytes)) = sample.image() {
            let format = match ext {
                "png" => ImageFormat::Png,
                "webp" => ImageFormat::Webp,
                _ => ImageFormat::Jpg,
            };
            images.insert(sample.key.clone(), (format, bytes.to_vec()));
        }
    }
    Ok(images)
}
