//! Which shards of a folder are finished, and the wids `shardindex.json` that lists them.

use crate::config::ShardConfig;
use crate::error::ShardError;
use crate::writer::{sync_dir, ShardStats};
use serde::Serialize;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Whether shard `shard_id` was finalized: its `_stats.json` completion marker exists.
pub fn shard_is_complete(dir: &Path, shard_id: u64, cfg: &ShardConfig) -> bool {
    cfg.stats_path(dir, shard_id).is_file()
}

/// Base names (`00003`) of the finalized shards in `dir` (marker and tar present), in id order.
pub fn completed_shards(dir: &Path) -> Result<Vec<String>, ShardError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(ShardError::io("list", dir))? {
        let entry = entry.map_err(ShardError::io("list", dir))?;
        let file_name = entry.file_name();
        let Some(name) = file_name
            .to_str()
            .and_then(|n| n.strip_suffix("_stats.json"))
        else {
            continue;
        };
        if !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_digit())
            && dir.join(format!("{name}.tar")).is_file()
        {
            names.push(name.to_string());
        }
    }
    names.sort_by(|a, b| {
        (a.trim_start_matches('0').len(), a).cmp(&(b.trim_start_matches('0').len(), b))
    });
    Ok(names)
}

#[derive(Serialize)]
struct IndexEntry {
    url: String,
    nsamples: u64,
    filesize: u64,
}

#[derive(Serialize)]
struct ShardIndex {
    #[serde(rename = "__kind__")]
    kind: &'static str,
    wids_version: u32,
    name: String,
    shardlist: Vec<IndexEntry>,
}

/// Writes `dir/shardindex.json` (wids-shard-index-v1) listing the finalized shards with their
/// sample counts, so `wids.ShardListDataset` can index the folder without scanning tars.
pub fn write_shard_index(dir: &Path) -> Result<PathBuf, ShardError> {
    let mut shardlist = Vec::new();
    for name in completed_shards(dir)? {
        let stats = ShardStats::read(&dir.join(format!("{name}_stats.json")))?;
        let tar = dir.join(format!("{name}.tar"));
        let filesize = fs::metadata(&tar)
            .map_err(ShardError::io("stat", &tar))?
            .len();
        shardlist.push(IndexEntry {
            url: format!("{name}.tar"),
            nsamples: stats.successes,
            filesize,
        });
    }
    let index = ShardIndex {
        kind: "wids-shard-index-v1",
        wids_version: 1,
        name: dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "wit".to_string()),
        shardlist,
    };
    let path = dir.join("shardindex.json");
    let tmp = dir.join(".shardindex.json.tmp");
    let json = serde_json::to_vec_pretty(&index).map_err(|source| ShardError::Json {
        path: path.clone(),
        source,
    })?;
    let mut file = File::create(&tmp).map_err(ShardError::io("create", &tmp))?;
    file.write_all(&json)
        .map_err(ShardError::io("write", &tmp))?;
    file.sync_all().map_err(ShardError::io("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(ShardError::io("rename", &path))?;
    sync_dir(dir)?;
    Ok(path)
}
