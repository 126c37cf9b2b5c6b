//! WebDataset shards in img2dataset's layout: `{id}.tar` (image, `.json`, `.txt` per sample),
//! `{id}.parquet` (one row per input row) and `{id}_stats.json` (the completion marker), plus the
//! wids `shardindex.json` and a streaming reader. Knows nothing about HTTP or image decoding.

pub mod config;
pub mod error;
pub mod index;
pub mod metadata;
pub mod reader;
pub mod record;
pub mod sketch;
pub mod summary;
pub mod writer;

pub use config::{compute_key, ShardConfig};
pub use error::ShardError;
pub use index::{completed_shards, shard_is_complete, write_shard_index};
pub use metadata::{read_metadata, MetadataRow};
pub use reader::{Sample, ShardReader};
pub use record::{EncodedImage, ImageFormat, SampleRecord, Status};
pub use writer::{ShardStats, ShardWriter};
