//! `wit-loader`: WebDataset shards in, shuffled, rank-split, cropped candle batches out.
//!
//! Guarantees, because they are what the Python loaders lack:
//! - **Equal batch counts per rank**: every rank yields `floor(epoch_samples / world_size /
//!   batch_size)` batches per epoch whatever the shard sizes; a rank that runs out of its own
//!   shards wraps into further shuffled shards, so DDP never hangs on an uneven last step.
//! - **Determinism**: batches depend only on (seed, epoch, rank, world size) and the data —
//!   not on the number of decode threads or their timing.
//! - **Exact resume**: [`LoaderState`] saved after k batches gives, on [`Loader::resume`], the
//!   same remaining batches bit for bit; the order is replayed symbolically and only the samples
//!   still in the shuffle buffer are re-read.
//! - **No panic on bad data**: corrupt tars, truncated shards, undecodable images, missing
//!   captions are skipped and counted in [`LoaderStats`].
//! - **Read-only**: the loader never writes anywhere.
//!
//! Every batch is a fresh buffer the tensor owns (about 150 MB at batch 256, 224 px, f32). With
//! glibc's defaults such blocks are `mmap`ed and unmapped each batch, and the kernel zeroes their
//! pages again every time; a program on glibc keeps them on the heap with
//! `mallopt(M_MMAP_MAX, 0)` and a large `M_TRIM_THRESHOLD`, as the `wit` binary does.

mod error;
mod fetch;
mod loader;
mod order;
pub mod source;
mod stats;
mod tokenizer;
pub mod transform;

pub use error::LoaderError;
pub use fetch::read_captions;
pub use loader::{Batch, HardNegatives, Loader, LoaderConfig, LoaderState, SHUFFLE_BUFFER_BYTES};
pub use source::{
    resolve_shards, DefaultSource, HttpSource, ShardEntry, ShardSource, MAX_INDEX_BYTES,
};
pub use stats::{LoaderStats, SkipReason};
pub use tokenizer::{TextTokenizer, CONTEXT_LENGTH};
pub use transform::{CropMode, ImageOutput, CLIP_MEAN, CLIP_STD};
