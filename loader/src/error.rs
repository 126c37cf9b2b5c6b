//! One error type for the loader, so callers (the trainer, `wit bench loader`) can tell a
//! configuration mistake from an unreadable source without parsing strings.

use thiserror::Error;

/// Everything that can stop the loader. Corrupt *samples* are not errors: they are skipped and
/// counted in [`crate::LoaderStats`]; only problems that make a whole epoch impossible land here.
#[derive(Debug, Error)]
pub enum LoaderError {
    /// The configuration cannot produce batches (zero batch size, rank outside world size, ...).
    #[error("invalid loader configuration: {0}")]
    Config(String),
    /// A shard specification matched nothing or could not be parsed.
    #[error("no shards: {0}")]
    NoShards(String),
    /// A shard or index could not be opened after all retries.
    #[error("cannot open {url}: {reason} (check the path or URL, and that the server is up)")]
    Open {
        /// The shard or index location that failed.
        url: String,
        /// What went wrong on the last attempt.
        reason: String,
    },
    /// A `shardindex.json` was not a wids-shard-index-v1 document.
    #[error("bad shard index {url}: {reason} (expected wids-shard-index-v1 JSON)")]
    Index {
        /// Where the index was read from.
        url: String,
        /// The parse problem.
        reason: String,
    },
    /// A saved [`crate::LoaderState`] does not belong to this configuration.
    #[error("loader state does not match this configuration: {0} (resume with the same seed, batch size, rank, world size, shards, resampling and epoch length)")]
    StateMismatch(String),
    /// Every sample of a whole pass over the data failed to decode.
    #[error("no decodable samples: {skipped} samples in a row were corrupt or lacked an image/caption (check the shards with `wit stats --deep`)")]
    NoDecodableSamples {
        /// How many consecutive samples were skipped before giving up.
        skipped: u64,
    },
    /// The tokenizer could not be loaded, trained or saved.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Building the batch tensor failed (device out of memory, ...).
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A loader thread panicked (a bug here or in a decoder): the epoch cannot go on in order.
    #[error("a loader thread panicked: {0} (a bug: report it with this message)")]
    Panicked(String),
    /// The decode workers are gone (a worker thread panicked).
    #[error("loader worker threads stopped unexpectedly")]
    WorkersGone,
    /// An I/O error outside a shard (reading a local index, saving a tokenizer).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
