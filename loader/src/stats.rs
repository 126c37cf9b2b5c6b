//! Counters the pipeline threads bump without locks, and the snapshot callers read: how many
//! samples were skipped and why (never silently), and where the time went per stage.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Why a sample was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The shard could not be opened, or its tar is corrupt/truncated at this point.
    ShardError,
    /// The shard holds fewer samples than its index or first count said.
    Missing,
    /// No `jpg`/`jpeg`/`png`/`webp` member.
    NoImage,
    /// No `txt` member (or it is not UTF-8).
    NoCaption,
    /// The image bytes do not decode.
    CorruptImage,
    /// The image exceeds Pillow's decompression-bomb pixel limit.
    TooLarge,
}

/// A snapshot of the loader's counters since it was created.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LoaderStats {
    /// Samples delivered in batches.
    pub samples: u64,
    /// Batches delivered.
    pub batches: u64,
    /// Skipped: shard unreadable or corrupt.
    pub skipped_shard_error: u64,
    /// Skipped: shard shorter than counted.
    pub skipped_missing: u64,
    /// Skipped: no image member.
    pub skipped_no_image: u64,
    /// Skipped: no caption member.
    pub skipped_no_caption: u64,
    /// Skipped: image bytes do not decode.
    pub skipped_corrupt_image: u64,
    /// Skipped: image over the pixel limit.
    pub skipped_too_large: u64,
    /// Seconds reading tar members (producer thread).
    pub read_s: f64,
    /// Seconds decoding images, summed over worker threads.
    pub decode_s: f64,
    /// Seconds cropping and resizing, summed over worker threads.
    pub resize_s: f64,
    /// Seconds tokenizing captions, summed over worker threads.
    pub tokenize_s: f64,
    /// Seconds assembling batch tensors, including the split into planes and normalisation (caller thread).
    pub collate_s: f64,
    /// Seconds the caller waited for decoded samples.
    pub wait_s: f64,
}

impl LoaderStats {
    /// All skipped samples, whatever the reason.
    pub fn skipped(&self) -> u64 {
        self.skipped_shard_error
            + self.skipped_missing
            + self.skipped_no_image
            + self.skipped_no_caption
            + self.skipped_corrupt_image
            + self.skipped_too_large
    }
}

/// Stages timed by [`Counters::time`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    Read,
    Decode,
    Resize,
    Tokenize,
    Collate,
    Wait,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    samples: AtomicU64,
    batches: AtomicU64,
    skips: [AtomicU64; 6],
    stage_ns: [AtomicU64; 6],
}

impl Counters {
    pub fn skip(&self, reason: SkipReason) {
        self.skips[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn delivered(&self, samples: u64) {
        self.samples.fetch_add(samples, Relaxed);
        self.batches.fetch_add(1, Relaxed);
    }

    /// Runs `f`, adding its duration to `stage`.
    pub fn time<T>(&self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.stage_ns[stage as usize].fetch_add(start.elapsed().as_nanos() as u64, Relaxed);
        out
    }

    pub fn snapshot(&self) -> LoaderStats {
        let s = |stage: Stage| self.stage_ns[stage as usize].load(Relaxed) as f64 * 1e-9;
        let k = |r: SkipReason| self.skips[r as usize].load(Relaxed);
        LoaderStats {
            samples: self.samples.load(Relaxed),
            batches: self.batches.load(Relaxed),
            skipped_shard_error: k(SkipReason::ShardError),
            skipped_missing: k(SkipReason::Missing),
            skipped_no_image: k(SkipReason::NoImage),
            skipped_no_caption: k(SkipReason::NoCaption),
            skipped_corrupt_image: k(SkipReason::CorruptImage),
            skipped_too_large: k(SkipReason::TooLarge),
            read_s: s(Stage::Read),
            decode_s: s(Stage::Decode),
            resize_s: s(Stage::Resize),
            tokenize_s: s(Stage::Tokenize),
            collate_s: s(Stage::Collate),
            wait_s: s(Stage::Wait),
        }
    }
}
