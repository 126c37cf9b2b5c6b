//! One error type for everything the shard layer can hit, with messages that say what to do.

use std::path::PathBuf;
use thiserror::Error;

/// Why a shard could not be written, indexed or read.
///
/// Each message names the file (or the byte offset in a tar stream) and the likely fix, because
/// these errors reach users of `wit download`, `wit stats` and the loader verbatim.
#[derive(Debug, Error)]
pub enum ShardError {
    /// A filesystem operation failed.
    #[error("could not {op} {path}: {source} (check that the folder exists, is writable and has free space)")]
    Io {
        /// What we were doing ("create", "rename", ...).
        op: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The shard configuration cannot produce valid shards.
    #[error("invalid shard configuration: {0}")]
    Config(String),
    /// A record does not fit the shard it was written to.
    #[error("row {row} of shard {shard_id}: {reason}")]
    BadRecord {
        /// Shard being written.
        shard_id: u64,
        /// Row within the shard.
        row: u64,
        /// What is wrong and what to change.
        reason: String,
    },
    /// An earlier write to this shard failed, so its spool can no longer be trusted.
    #[error("the writer of shard {shard_id} failed earlier: drop it and write the shard again from the start")]
    Poisoned {
        /// Shard whose writer failed.
        shard_id: u64,
    },
    /// Writing or reading the parquet file failed.
    #[error("parquet file {path}: {source} (delete the shard's files and rerun to regenerate it)")]
    Parquet {
        /// The parquet file.
        path: PathBuf,
        /// The parquet library's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A parquet file does not have the columns a shard's metadata needs.
    #[error("parquet file {path}: {reason}")]
    Metadata {
        /// The parquet file.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// A JSON file (`_stats.json`, `shardindex.json`) could not be encoded or decoded.
    #[error("JSON file {path}: {source} (delete it and rerun the command that writes it)")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// The tar stream ended in the middle of a header, a member, or before its end-of-archive marker.
    #[error("tar stream truncated at byte {offset}{}: the shard was cut short (interrupted download or copy); fetch or regenerate it", member_suffix(.member))]
    Truncated {
        /// Bytes read before the stream ended.
        offset: u64,
        /// The member being read, when inside one.
        member: Option<String>,
    },
    /// The tar stream holds something that is not a valid tar header or member.
    #[error("corrupt tar at byte {offset}{}: {reason}; the file is not a tar shard or is damaged, regenerate it", member_suffix(.member))]
    Corrupt {
        /// Offset of the offending header.
        offset: u64,
        /// The member concerned, when its name is known.
        member: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// One sample was over its budget (members or bytes) and was read past: the stream goes
    /// on with the next sample.
    #[error("sample {key:?} at byte {offset} skipped: {reason} (the reader's per-sample limit)")]
    SampleSkipped {
        /// Offset of the sample's first member header.
        offset: u64,
        /// The sample's key.
        key: String,
        /// Which budget it exceeded.
        reason: String,
    },
    /// Reading the underlying stream failed.
    #[error(
        "reading tar stream at byte {offset}: {source} (check the file or connection and retry)"
    )]
    Read {
        /// Bytes read before the failure.
        offset: u64,
        /// The reader's error.
        #[source]
        source: std::io::Error,
    },
}

fn member_suffix(member: &Option<String>) -> String {
    member
        .as_ref()
        .map(|m| format!(" (member {m:?})"))
        .unwrap_or_default()
}

impl ShardError {
    /// Whether this error cost one sample only: a reader goes on after it.
    pub fn is_sample_only(&self) -> bool {
        matches!(self, ShardError::SampleSkipped { .. })
    }

    /// Wraps an I/O error with the operation and path, so messages point at the file.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ShardError {
        let path = path.into();
        move |source| ShardError::Io { op, path, source }
    }
}
