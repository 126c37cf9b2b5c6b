//! The loader: configuration, resumable state, and the pipeline (one producer thread that owns
//! the sample order, N decode threads, the caller assembling batches in order). Order and
//! augmentation randomness depend only on (seed, epoch, rank, world size, position), never on
//! thread timing, so any thread count gives the same batches and a restart resumes exactly.

use crate::fetch::{count_samples, Fetched, OrderStream};
use crate::order::{rng_for, OrderParams, TAG_CROP, TAG_NEGATIVES};
use crate::source::{resolve_shards, DefaultSource, ShardSource};
use crate::stats::{Counters, LoaderStats, SkipReason, Stage};
use crate::transform::{
    normalize_into, planar_into, CropMode, DecodeError, ImageOutput, Transformer,
};
use crate::{LoaderError, TextTokenizer};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use wit_shards::Sample;

/// The default budget of the shuffle buffer: 1 GiB over open_clip's 5000 slots holds samples
/// up to 214 KB each, above img2dataset's 256-512 px JPEGs with their captions; larger samples
/// are read twice instead of growing memory with the data.
pub const SHUFFLE_BUFFER_BYTES: u64 = 1 << 30;

/// Everything that shapes the batches. Build with [`LoaderConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Shard specifications: paths, brace patterns, folders, `shardindex.json`, http(s) URLs.
    pub shards: Vec<String>,
    /// Caption tokenizer (context 77).
    pub tokenizer: Arc<TextTokenizer>,
    /// Samples per batch (per rank).
    pub batch_size: usize,
    /// Output square side in pixels (224).
    pub image_size: u32,
    /// Crop augmentation ([`CropMode::Rrc`] for open_clip training, `Center` for eval).
    pub crop: CropMode,
    /// f32 normalised or u8 images.
    pub output: ImageOutput,
    /// Seed of the shard order, shuffle buffer and crops.
    pub seed: u64,
    /// This process's rank in `0..world_size`.
    pub rank: usize,
    /// Number of ranks reading the same data (DDP processes).
    pub world_size: usize,
    /// Decode threads.
    pub threads: usize,
    /// Decoded batches that may wait ahead of the caller (bounded prefetch).
    pub prefetch_batches: usize,
    /// Shuffle the shard order each epoch.
    pub shuffle_shards: bool,
    /// Sample shuffle buffer size (0 or 1: no sample shuffle). open_clip: 5000.
    pub shuffle_buffer: usize,
    /// Samples buffered before the first one is emitted. open_clip: 1000.
    pub shuffle_initial: usize,
    /// Bytes of sample data the shuffle buffer holds at most: a sample larger than
    /// `shuffle_buffer_bytes / shuffle_buffer` is not held but read again when it leaves the
    /// buffer (same batches, more reading). Default [`SHUFFLE_BUFFER_BYTES`].
    pub shuffle_buffer_bytes: u64,
    /// Samples per epoch over all ranks; `None`: the shards' total.
    pub epoch_samples: Option<u64>,
    /// Draw shards with replacement (webdataset's `ResampledShards`).
    pub resample: bool,
    /// Evaluation: every sample once, in shard order, last batch possibly short; ranks may then
    /// get unequal batch counts. Overrides shuffling and resampling.
    pub single_pass: bool,
    /// Where batches are placed.
    pub device: Device,
    /// Where shard bytes come from (local files and http(s) by default).
    pub source: Arc<dyn ShardSource>,
    /// Hard-negative captions to read with each sample; `None` reads none.
    pub hard_negatives: Option<HardNegatives>,
}

/// Where each sample's hard-negative captions are and how many to use. NegCLIP's recipe
/// (Yuksekgonul et al., 2023): captions that differ from the true one in word order, relation or
/// one attribute, scored against the image as extra wrong answers, so the model must read the
/// whole caption instead of its bag of words. Random batches almost never contain such a caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardNegatives {
    /// Field of the sample's `.json` member holding the captions: a JSON array of strings, or a
    /// string holding one (parquet columns kept with `--save-additional-columns` arrive as strings).
    pub field: String,
    /// At most this many per sample, drawn again each epoch (seeded like the crops).
    pub per_sample: usize,
}

impl LoaderConfig {
    /// open_clip-like defaults: batch 256, 224 px RRC, normalised f32, shuffle 5000/1000,
    /// one rank, all cores, CPU.
    pub fn new(shards: Vec<String>, tokenizer: Arc<TextTokenizer>) -> Self {
        LoaderConfig {
            shards,
            tokenizer,
            batch_size: 256,
            image_size: 224,
            crop: CropMode::Rrc,
            output: ImageOutput::Normalized,
            seed: 0,
            rank: 0,
            world_size: 1,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch_batches: 2,
            shuffle_shards: true,
            shuffle_buffer: 5000,
            shuffle_initial: 1000,
            shuffle_buffer_bytes: SHUFFLE_BUFFER_BYTES,
            epoch_samples: None,
            resample: false,
            single_pass: false,
            device: Device::Cpu,
            source: Arc::new(DefaultSource::default()),
            hard_negatives: None,
        }
    }

    fn validate(&self) -> Result<(), LoaderError> {
        let bad = |m: &str| Err(LoaderError::Config(m.into()));
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if self.world_size == 0 || self.rank >= self.world_size {
            return bad("rank must be in 0..world_size");
        }
        if self.image_size == 0 {
            return bad("image_size must be at least 1");
        }
        Ok(())
    }
}

/// Where a loader is within its data: save it with a checkpoint and pass it to
/// [`Loader::resume`] to get exactly the batches an uninterrupted run would have produced next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Current epoch.
    pub epoch: u64,
    /// Batches already delivered in this epoch.
    pub batch: u64,
    /// Samples of this epoch's order consumed (delivered or skipped as corrupt).
    pub position: u64,
    /// Checked on resume: the order depends on these.
    pub seed: u64,
    /// Checked on resume.
    pub rank: usize,
    /// Checked on resume.
    pub world_size: usize,
    /// Checked on resume.
    pub batch_size: usize,
    /// Checked on resume: the number of shards resolved.
    pub shards: usize,
    /// Checked on resume: drawing shards with replacement gives another order.
    #[serde(default)]
    pub resample: bool,
    /// Checked on resume: the epoch length, when fixed.
    #[serde(default)]
    pub epoch_samples: Option<u64>,
}

/// One batch. Images are `(B, 3, H, W)` f32 (normalised) or u8; tokens `(B, 77)` u32.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(B, 3, H, W)` on the configured device.
    pub images: Tensor,
    /// `(B, 77)` u32 token ids on the configured device.
    pub tokens: Tensor,
    /// Sample keys (the shard's member base names), for tracing a sample back.
    pub keys: Vec<String>,
    /// Raw captions, for logs and evaluation.
    pub captions: Vec<String>,
    /// `(N, 77)` u32 token ids of the samples' hard-negative captions, all samples' in a row;
    /// `None` when no sample of the batch had any (or none were asked for).
    pub negatives: Option<Tensor>,
}

/// Streams batches from shards. See the crate documentation for the guarantees.
pub struct Loader {
    cfg: LoaderConfig,
    urls: Arc<Vec<String>>,
    counts: Arc<Vec<u64>>,
    total: u64,
    state: LoaderState,
    pipe: Option<Pipeline>,
    counters: Arc<Counters>,
    crops: Arc<CropPool>,
}

impl Loader {
    /// Resolves the shards (reading a wids index or counting samples once when none is given)
    /// and positions at the start of epoch 0. Starts no threads until the first batch.
    pub fn new(cfg: LoaderConfig) -> Result<Self, LoaderError> {
        cfg.validate()?;
        let entries = resolve_shards(&cfg.shards, cfg.source.as_ref())?;
        let counts = count_samples(&entries, cfg.source.as_ref(), cfg.threads)
            .map_err(LoaderError::Panicked)?;
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Err(LoaderError::NoShards(format!(
                "{} shard(s) hold no readable sample",
                entries.len()
            )));
        }
        let state = LoaderState {
            epoch: 0,
            batch: 0,
            position: 0,
            seed: cfg.seed,
            rank: cfg.rank,
            world_size: cfg.world_size,
            batch_size: cfg.batch_size,
            shards: entries.len(),
            resample: cfg.resample,
            epoch_samples: cfg.epoch_samples,
        };
        let loader = Loader {
            urls: Arc::new(entries.into_iter().map(|e| e.url).collect()),
            counts: Arc::new(counts),
            total,
            state,
            pipe: None,
            counters: Arc::new(Counters::default()),
            crops: Arc::default(),
            cfg,
        };
        if loader.batches_per_epoch() == 0 {
            return Err(LoaderError::Config(format!(
                "{} samples give no full batch of {} per rank over {} ranks (lower the batch size)",
                loader.epoch_len(),
                loader.cfg.batch_size,
                loader.cfg.world_size
            )));
        }
        Ok(loader)
    }

    /// Like [`Loader::new`], continuing from a saved state.
    pub fn resume(cfg: LoaderConfig, state: LoaderState) -> Result<Self, LoaderError> {
        let mut loader = Loader::new(cfg)?;
        let mine = &loader.state;
        let checks = [
            ("seed", state.seed == mine.seed),
            ("rank", state.rank == mine.rank),
            ("world_size", state.world_size == mine.world_size),
            ("batch_size", state.batch_size == mine.batch_size),
            ("shard count", state.shards == mine.shards),
            ("resampling", state.resample == mine.resample),
            ("epoch length", state.epoch_samples == mine.epoch_samples),
        ];
        if let Some((what, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(LoaderError::StateMismatch(format!("{what} differs")));
        }
        loader.state = state;
        Ok(loader)
    }

    /// The state to save now: the next [`Loader::next_batch`] of a loader resumed from it
    /// equals this loader's next batch.
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// Samples in all shards (from the index or the counting pass).
    pub fn total_samples(&self) -> u64 {
        self.total
    }

    fn epoch_len(&self) -> u64 {
        self.cfg.epoch_samples.unwrap_or(self.total)
    }

    /// Batches this rank yields per epoch: `floor(epoch_samples / world_size / batch_size)`,
    /// the same on every rank (single pass: this rank's share, last batch possibly short).
    pub fn batches_per_epoch(&self) -> u64 {
        if self.cfg.single_pass {
            return self.single_pass_refs().div_ceil(self.cfg.batch_size as u64);
        }
        self.epoch_len() / self.cfg.world_size as u64 / self.cfg.batch_size as u64
    }

    /// Samples of this rank's own shards (single pass reads exactly those).
    fn single_pass_refs(&self) -> u64 {
        let (r, w) = (self.cfg.rank, self.cfg.world_size);
        self.counts.iter().skip(r).step_by(w).sum()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// Jumps to the start of `epoch` (dropping any prefetched samples).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.pipe = None;
        self.state.epoch = epoch;
        self.state.batch = 0;
        self.state.position = 0;
    }

    /// Counters since creation: delivered, skipped by reason, time per stage.
    pub fn stats(&self) -> LoaderStats {
        self.counters.snapshot()
    }

    /// The next batch of the current epoch, or `None` once the epoch is complete (the loader
    /// then moves to the next epoch, so a training loop calls this until `None`, per epoch).
    pub fn next_batch(&mut self) -> Result<Option<Batch>, LoaderError> {
        if self.state.batch >= self.batches_per_epoch() {
            self.set_epoch(self.state.epoch + 1);
            return Ok(None);
        }
        if self.pipe.is_none() {
            self.pipe = Some(self.start_pipeline());
        }
        let limit = self.total + self.cfg.shuffle_buffer as u64 + self.cfg.batch_size as u64;
        let pipe = self.pipe.as_mut().expect("started above");
        let mut items = Vec::with_capacity(self.cfg.batch_size);
        let mut skipped_in_row = 0u64;
        while items.len() < self.cfg.batch_size {
            let next = self
                .counters
                .time(Stage::Wait, || pipe.take(self.state.position))?;
            let Some(done) = next else { break };
            self.state.position += 1;
            match done {
                Ok(item) => {
                    items.push(item);
                    skipped_in_row = 0;
                }
                Err(reason) => {
                    self.counters.skip(reason);
                    skipped_in_row += 1;
                    if skipped_in_row > limit {
                        return Err(LoaderError::NoDecodableSamples {
                            skipped: skipped_in_row,
                        });
                    }
                }
            }
        }
        if items.is_empty() {
            self.set_epoch(self.state.epoch + 1);
            return Ok(None);
        }
        self.state.batch += 1;
        let batch = self.counters.time(Stage::Collate, || self.collate(items))?;
        self.counters.delivered(batch.keys.len() as u64);
        Ok(Some(batch))
    }

    fn collate(&self, items: Vec<Item>) -> Result<Batch, LoaderError> {
        let (b, s) = (items.len(), self.cfg.image_size as usize);
        let ctx = self.cfg.tokenizer.context_length();
        let mut keys = Vec::with_capacity(b);
        let mut captions = Vec::with_capacity(b);
        let mut tokens = Vec::with_capacity(b * ctx);
        let mut negatives = Vec::new();
        // Workers deliver interleaved u8 crops; they become planes here, straight in the batch.
        let per_sample = 3 * s * s;
        let mut f32s = Vec::new();
        let mut u8s = Vec::new();
        match self.cfg.output {
            ImageOutput::Normalized => f32s.reserve_exact(b * per_sample),
            ImageOutput::U8 => u8s.reserve_exact(b * per_sample),
        }
        let mut crops = Vec::with_capacity(b);
        for item in items {
            keys.push(item.key);
            captions.push(item.caption);
            tokens.extend_from_slice(&item.tokens);
            negatives.extend(item.negatives.into_iter().flatten());
            match self.cfg.output {
                ImageOutput::Normalized => normalize_into(&item.rgb, &mut f32s),
                ImageOutput::U8 => planar_into(&item.rgb, &mut u8s),
            }
            crops.push(item.rgb);
        }
        self.crops.give(crops);
        let dev = &self.cfg.device;
        let images = match self.cfg.output {
            ImageOutput::Normalized => Tensor::from_vec(f32s, (b, 3, s, s), dev)?,
            ImageOutput::U8 => Tensor::from_vec(u8s, (b, 3, s, s), dev)?,
        };
        let tokens = Tensor::from_vec(tokens, (b, ctx), dev)?;
        let negatives = match negatives.len() / ctx {
            0 => None,
            n => Some(Tensor::from_vec(negatives, (n, ctx), dev)?),
        };
        Ok(Batch {
            images,
            tokens,
            keys,
            captions,
            negatives,
        })
    }

    fn start_pipeline(&self) -> Pipeline {
        let cfg = &self.cfg;
        let single = cfg.single_pass;
        let params = OrderParams {
            seed: cfg.seed,
            epoch: self.state.epoch,
            rank: cfg.rank,
            world_size: cfg.world_size,
            shuffle_shards: cfg.shuffle_shards && !single,
            resample: cfg.resample && !single,
            buffer_size: if single { 0 } else { cfg.shuffle_buffer },
            buffer_initial: cfg.shuffle_initial,
        };
        let stream = OrderStream::new(
            params,
            self.counts.clone(),
            cfg.source.clone(),
            self.urls.clone(),
            self.counters.clone(),
            single.then(|| self.single_pass_refs()),
            cfg.shuffle_buffer_bytes,
        );
        let ctx = Arc::new(WorkerCtx {
            seed: cfg.seed,
            epoch: self.state.epoch,
            rank: cfg.rank as u64,
            image_size: cfg.image_size,
            crop: cfg.crop,
            tokenizer: cfg.tokenizer.clone(),
            counters: self.counters.clone(),
            hard_negatives: cfg.hard_negatives.clone().filter(|h| h.per_sample > 0),
            crops: self.crops.clone(),
        });
        let window = (cfg.prefetch_batches.max(1) * cfg.batch_size).max(2 * cfg.threads.max(1));
        Pipeline::start(stream, self.state.position, window, cfg.threads.max(1), ctx)
    }
}

/// A decoded sample waiting to be collated.
struct Item {
    key: String,
    caption: String,
    tokens: Vec<u32>,
    /// Token rows of the hard negatives chosen for this sample.
    negatives: Vec<Vec<u32>>,
    /// The cropped image, interleaved HWC u8.
    rgb: Vec<u8>,
}

/// `None` marks the end of a single pass.
type Done = (u64, Option<Result<Item, SkipReason>>);

/// What a pipeline thread hands the caller: finished samples, or why the thread panicked.
type Handover = Result<Vec<Done>, String>;

/// Runs `f`, turning a panic into its message: a pipeline thread that panicked silently would
/// leave the caller waiting forever for a sample that thread held.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        format!("{what}: {message}")
    })
}

/// Results a worker hands over at once. One hand-over per sample woke the caller's thread per
/// sample, 4 context switches a sample in all; a worker still hands over early, before it
/// would wait for a job, so nothing ever waits on a result a worker holds.
const RESULTS_PER_HANDOVER: usize = 16;

/// The running threads of one epoch. Dropping it stops them: the producer waits on credits the
/// caller no longer sends, workers see closed channels.
struct Pipeline {
    results: Receiver<Handover>,
    credits: Sender<usize>,
    /// Credits earned by consumed samples and not yet returned to the producer.
    owed: usize,
    pending: HashMap<u64, Option<Result<Item, SkipReason>>>,
    ended: bool,
}

impl Pipeline {
    /// Credits bound everything in flight (queued, decoding, decoded but out of order) to
    /// `window` samples: the producer spends one per sample, the caller earns one per sample it
    /// consumes and returns them [`RESULTS_PER_HANDOVER`] at a time, or all before it waits.
    fn start(
        mut stream: OrderStream,
        start: u64,
        window: usize,
        threads: usize,
        ctx: Arc<WorkerCtx>,
    ) -> Pipeline {
        let (credit_tx, credit_rx) = channel::<usize>();
        credit_tx.send(window).expect("the receiver is alive");
        let (job_tx, job_rx) = channel::<Job>();
        let (res_tx, res_rx) = channel::<Handover>();
        let producer_res = res_tx.clone();
        std::thread::Builder::new()
            .name("wit-loader-order".into())
            .spawn(move || {
                let ran = guarded("reading shards", || {
                    stream.skip(start);
                    produce(stream, start, credit_rx, job_tx, &producer_res)
                });
                if let Err(message) = ran {
                    let _ = producer_res.send(Err(message));
                }
            })
            .expect("spawn loader producer thread");
        let job_rx = Arc::new(Mutex::new(job_rx));
        for i in 0..threads {
            let (jobs, results, ctx) = (job_rx.clone(), res_tx.clone(), ctx.clone());
            std::thread::Builder::new()
                .name(format!("wit-loader-{i}"))
                .spawn(move || work(&jobs, &results, &ctx))
                .expect("spawn loader worker thread");
        }
        Pipeline {
            results: res_rx,
            credits: credit_tx,
            owed: 0,
            pending: HashMap::new(),
            ended: false,
        }
    }

    /// The result for sequence number `seq`, waiting for it; `None` at the end of a single pass.
    fn take(&mut self, seq: u64) -> Result<Option<Result<Item, SkipReason>>, LoaderError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            if let Some(done) = self.pending.remove(&seq) {
                self.ended = done.is_none();
                self.owed += 1;
                if self.owed >= RESULTS_PER_HANDOVER {
                    self.return_credits();
                }
                return Ok(done);
            }
            self.return_credits();
            let ready = self.results.recv().map_err(|_| LoaderError::WorkersGone)?;
            self.pending.extend(ready.map_err(LoaderError::Panicked)?);
        }
    }

    /// Hands the owed credits to the producer (a stopped producer needs none).
    fn return_credits(&mut self) {
        if self.owed > 0 {
            let _ = self.credits.send(std::mem::take(&mut self.owed));
        }
    }
}

struct Job {
    seq: u64,
    key_hint: (u64, u64),
    data: Fetched,
}

fn produce(
    mut stream: OrderStream,
    start: u64,
    credits: Receiver<usize>,
    jobs: Sender<Job>,
    results: &Sender<Handover>,
) {
    let mut seq = start;
    let mut available = 0usize;
    loop {
        if available == 0 {
            match credits.recv() {
                Ok(n) => available = n,
                Err(_) => return,
            }
        }
        available -= 1;
        let Some((r, data)) = stream.next_sample() else {
            let _ = results.send(Ok(vec![(seq, None)]));
            return;
        };
        let job = Job {
            seq,
            key_hint: (r.segment, r.idx),
            data,
        };
        if jobs.send(job).is_err() {
            return;
        }
        seq += 1;
    }
}

struct WorkerCtx {
    seed: u64,
    epoch: u64,
    rank: u64,
    image_size: u32,
    crop: CropMode,
    tokenizer: Arc<TextTokenizer>,
    counters: Arc<Counters>,
    hard_negatives: Option<HardNegatives>,
    crops: Arc<CropPool>,
}

/// Crop buffers the caller hands back once a batch holds their pixels, for workers to write the
/// next crops into: no fresh zero-filled 150 KB allocation per sample, and no buffer allocated
/// on a worker's heap arena and freed on the caller's thread (which locks that arena).
#[derive(Default)]
struct CropPool(Mutex<Vec<Vec<u8>>>);

impl CropPool {
    /// Buffers kept at most; any more are freed.
    const MAX: usize = 64;

    fn give(&self, buffers: Vec<Vec<u8>>) {
        if let Ok(mut pool) = self.0.lock() {
            let room = Self::MAX.saturating_sub(pool.len());
            pool.extend(buffers.into_iter().take(room));
        }
    }

    fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().ok()?.pop()
    }
}

fn work(jobs: &Mutex<Receiver<Job>>, results: &Sender<Handover>, ctx: &WorkerCtx) {
    let mut transformer = Transformer::new(ctx.image_size, ctx.crop);
    let mut ready = Vec::with_capacity(RESULTS_PER_HANDOVER);
    while let Some(job) = next_job(jobs, &mut ready, results) {
        let (segment, idx) = job.key_hint;
        let what = format!("decoding sample {idx} of segment {segment}");
        let out = guarded(&what, || {
            job.data
                .and_then(|s| process(&s, job.seq, &mut transformer, ctx))
        });
        let out = match out {
            Ok(out) => out,
            Err(message) => {
                let _ = results.send(Err(message));
                return;
            }
        };
        if out.is_err() {
            tracing::debug!(
                seq = job.seq,
                segment = job.key_hint.0,
                idx = job.key_hint.1,
                "skipping sample"
            );
        }
        ready.push((job.seq, Some(out)));
        if ready.len() >= RESULTS_PER_HANDOVER
            && results.send(Ok(std::mem::take(&mut ready))).is_err()
        {
            return;
        }
    }
}

/// The next job, or `None` once the producer or the caller is gone. A worker hands over its
/// `ready` results before anything that may wait (for the queue's lock, which a waiting
/// worker holds, or for a job): a result held while waiting could be the one the caller waits
/// for.
fn next_job(
    jobs: &Mutex<Receiver<Job>>,
    ready: &mut Vec<Done>,
    results: &Sender<Handover>,
) -> Option<Job> {
    if let Ok(rx) = jobs.try_lock() {
        if let Ok(job) = rx.try_recv() {
            return Some(job);
        }
    }
    if !ready.is_empty() {
        results.send(Ok(std::mem::take(ready))).ok()?;
    }
    jobs.lock().ok()?.recv().ok()
}

fn process(
    sample: &Sample,
    seq: u64,
    t: &mut Transformer,
    ctx: &WorkerCtx,
) -> Result<Item, SkipReason> {
    let (_, bytes) = sample.image().ok_or(SkipReason::NoImage)?;
    let caption = sample.caption().ok_or(SkipReason::NoCaption)?;
    let c = &ctx.counters;
    let img = c
        .time(Stage::Decode, || t.decode(bytes))
        .map_err(|e| match e {
            DecodeError::TooLarge => SkipReason::TooLarge,
            DecodeError::Corrupt(_) => SkipReason::CorruptImage,
        })?;
    let mut rng = rng_for(&[ctx.seed, ctx.epoch, ctx.rank, seq, TAG_CROP]);
    let crop = t.crop_box(img.width, img.height, &mut rng);
    if let Some(buffer) = ctx.crops.take() {
        t.recycle(buffer);
    }
    let rgb = c
        .time(Stage::Resize, || t.crop_resize(&img, crop))
        .map_err(|_| SkipReason::CorruptImage)?;
    t.recycle_decoded(img);
    let (tokens, negatives) = c
        .time(Stage::Tokenize, || {
            let negatives = match &ctx.hard_negatives {
                Some(h) => {
                    let mut rng = rng_for(&[ctx.seed, ctx.epoch, ctx.rank, seq, TAG_NEGATIVES]);
                    choose_negatives(sample, h, &mut rng)
                        .iter()
                        .map(|n| ctx.tokenizer.encode(n))
                        .collect::<Result<Vec<_>, _>>()?
                }
                None => Vec::new(),
            };
            Ok::<_, LoaderError>((ctx.tokenizer.encode(caption)?, negatives))
        })
        .map_err(|_| SkipReason::NoCaption)?;
    Ok(Item {
        key: sample.key.clone(),
        caption: caption.to_string(),
        tokens,
        negatives,
        rgb,
    })
}

/// Up to `h.per_sample` distinct hard negatives of `sample`, drawn with `rng`. A missing field or
/// one that is not a list of strings gives none (logged): the sample still trains as a plain pair.
fn choose_negatives(sample: &Sample, h: &HardNegatives, rng: &mut impl rand::Rng) -> Vec<String> {
    let value = sample
        .get("json")
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|mut v| v.get_mut(&h.field).map(serde_json::Value::take));
    let list = match value {
        Some(serde_json::Value::String(s)) => serde_json::from_str::<Vec<String>>(&s).ok(),
        Some(v @ serde_json::Value::Array(_)) => serde_json::from_value::<Vec<String>>(v).ok(),
        _ => None,
    };
    let Some(mut list) = list else {
        tracing::debug!(key = %sample.key, field = %h.field, "no hard-negative list");
        return Vec::new();
    };
    list.retain(|n| !n.trim().is_empty());
    list.sort_unstable();
    list.dedup();
    let k = h.per_sample.min(list.len());
    rand::seq::index::sample(rng, list.len(), k)
        .into_iter()
        .map(|i| std::mem::take(&mut list[i]))
        .collect()
}
