//! Shard naming: img2dataset's sample keys and shard file names, so our folders look like theirs.

use crate::error::ShardError;
use std::path::{Path, PathBuf};

/// How rows map to shards and which input columns travel along.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    /// Input rows per shard (img2dataset's `number_sample_per_shard`); fixes the key's row digits.
    pub samples_per_shard: u64,
    /// Digits of the shard id in file names and keys (img2dataset's `oom_shard_count`).
    pub oom_shard_count: u32,
    /// Input columns kept verbatim (`--save-additional-columns`); they lead the parquet columns.
    pub extra_columns: Vec<String>,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            samples_per_shard: 10_000,
            oom_shard_count: 5,
            extra_columns: Vec::new(),
        }
    }
}

/// Column names wit writes itself; a kept input column may not reuse one.
pub(crate) const BUILTIN_COLUMNS: [&str; 21] = [
    "caption",
    "url",
    "key",
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "exif",
    "sha256",
    "blake3",
    "mime",
    "bytes",
    "encoded_bytes",
    "format",
    "original_format",
    "page_url",
    "language",
    "phash",
    "dup_of",
];

impl ShardConfig {
    /// Rejects configurations that would produce colliding keys or unreadable parquet files.
    pub fn validate(&self) -> Result<(), ShardError> {
        if self.samples_per_shard == 0 {
            return Err(ShardError::Config(
                "samples_per_shard must be at least 1 (img2dataset uses 10000)".into(),
            ));
        }
        if self.oom_shard_count == 0 || self.oom_shard_count > 12 {
            return Err(ShardError::Config(format!(
                "oom_shard_count must be between 1 and 12, got {} (img2dataset uses 5)",
                self.oom_shard_count
            )));
        }
        for (i, name) in self.extra_columns.iter().enumerate() {
            if BUILTIN_COLUMNS.contains(&name.as_str()) {
                return Err(ShardError::Config(format!(
                    "kept input column {name:?} clashes with a column wit writes; rename it in the input"
                )));
            }
            if self.extra_columns[..i].contains(name) {
                return Err(ShardError::Config(format!(
                    "kept input column {name:?} is listed twice; list each column once"
                )));
            }
        }
        Ok(())
    }

    /// Digits reserved for the row in a key: `ceil(log10(samples_per_shard))`.
    pub fn row_digits(&self) -> u32 {
        let mut digits = 0;
        let mut span: u64 = 1;
        while span < self.samples_per_shard {
            span = span.saturating_mul(10);
            digits += 1;
        }
        digits
    }

    /// The shard's base file name, e.g. `00001` (img2dataset's `{shard_id:0{oom_shard_count}d}`).
    pub fn shard_name(&self, shard_id: u64) -> String {
        format!("{shard_id:0width$}", width = self.oom_shard_count as usize)
    }

    /// Path of the shard's tar: `{dir}/{name}.tar`.
    pub fn tar_path(&self, dir: &Path, shard_id: u64) -> PathBuf {
        dir.join(format!("{}.tar", self.shard_name(shard_id)))
    }

    /// Path of the shard's parquet: `{dir}/{name}.parquet`.
    pub fn parquet_path(&self, dir: &Path, shard_id: u64) -> PathBuf {
        dir.join(format!("{}.parquet", self.shard_name(shard_id)))
    }

    /// Path of the shard's completion marker: `{dir}/{name}_stats.json`.
    pub fn stats_path(&self, dir: &Path, shard_id: u64) -> PathBuf {
        dir.join(format!("{}_stats.json", self.shard_name(shard_id)))
    }
}

/// img2dataset's sample key: `shard_id * 10^row_digits + row`, zero-padded to
/// `oom_shard_count + row_digits` digits, so keys sort like (shard, row) and match img2dataset's.
pub fn compute_key(shard_id: u64, row_in_shard: u64, cfg: &ShardConfig) -> String {
    let row_digits = cfg.row_digits();
    let key = u128::from(shard_id) * 10u128.pow(row_digits) + u128::from(row_in_shard);
    format!(
        "{key:0width$}",
        width = (cfg.oom_shard_count + row_digits) as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(sps: u64) -> ShardConfig {
        ShardConfig {
            samples_per_shard: sps,
            ..ShardConfig::default()
        }
    }

    #[test]
    fn keys_match_img2dataset() {
        assert_eq!(compute_key(1, 5, &cfg(10_000)), "000010005");
        assert_eq!(compute_key(0, 0, &cfg(10_000)), "000000000");
        assert_eq!(compute_key(123, 9_999, &cfg(10_000)), "001239999");
        // ceil(log10(1001)) = 4, ceil(log10(1000)) = 3, ceil(log10(1)) = 0
        assert_eq!(compute_key(2, 7, &cfg(1001)), "000020007");
        assert_eq!(compute_key(2, 7, &cfg(1000)), "00002007");
        assert_eq!(compute_key(42, 0, &cfg(1)), "00042");
        assert_eq!(compute_key(0, 3, &cfg(7)), "000003");
    }

    #[test]
    fn names_and_validation() {
        let c = cfg(100);
        assert_eq!(c.shard_name(7), "00007");
        assert!(c.tar_path(Path::new("o"), 7).ends_with("00007.tar"));
        assert!(c
            .stats_path(Path::new("o"), 7)
            .ends_with("00007_stats.json"));
        assert!(cfg(0).validate().is_err());
        let clash = ShardConfig {
            extra_columns: vec!["url".into()],
            ..c.clone()
        };
        assert!(clash
            .validate()
            .unwrap_err()
            .to_string()
            .contains("clashes"));
        let twice = ShardConfig {
            extra_columns: vec!["a".into(), "a".into()],
            ..c
        };
        assert!(twice.validate().is_err());
    }
}
