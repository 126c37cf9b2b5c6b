//! Writing one shard: rows arrive in any order, the files come out byte-deterministic and appear
//! atomically (tar, then parquet, then `_stats.json` as the completion marker).

use crate::config::ShardConfig;
use crate::error::ShardError;
use crate::metadata::{write_parquet, MetadataRow};
use crate::record::{ImageFormat, SampleRecord, Status};
use crate::summary::Summary;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `_stats.json` of one shard: img2dataset's fields first, then wit's.
///
/// Its presence marks the shard complete; its summaries let `wit stats` report without
/// rereading tars or parquet files.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShardStats {
    /// Input rows in the shard.
    pub count: u64,
    /// Rows stored as samples in the tar.
    pub successes: u64,
    /// Rows whose download failed.
    pub failed_to_download: u64,
    /// Rows whose bytes did not decode or resize.
    pub failed_to_resize: u64,
    /// Seconds between `create` and `finish`.
    pub duration: f64,
    /// When the writer was created (seconds since the Unix epoch).
    pub start_time: f64,
    /// When the shard was finalized (seconds since the Unix epoch).
    pub end_time: f64,
    /// How often each outcome happened: `success` or the error message (img2dataset's).
    pub status_dict: BTreeMap<String, u64>,
    /// Rows dropped by a filter.
    #[serde(default)]
    pub filtered: u64,
    /// Rows whose server opted out via `X-Robots-Tag`.
    #[serde(default)]
    pub opted_out: u64,
    /// Rows that robots.txt disallowed.
    #[serde(default)]
    pub disallowed_by_robots: u64,
    /// Mergeable sketches of the shard's records.
    #[serde(default)]
    pub summary: Summary,
}

impl ShardStats {
    /// Reads a `_stats.json` (wit's or img2dataset's).
    pub fn read(path: &Path) -> Result<ShardStats, ShardError> {
        let bytes = fs::read(path).map_err(ShardError::io("read", path))?;
        serde_json::from_slice(&bytes).map_err(|source| ShardError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    fn count(&mut self, meta: &MetadataRow) {
        self.count += 1;
        let counter = match meta.status {
            Status::Success => &mut self.successes,
            Status::FailedToDownload => &mut self.failed_to_download,
            Status::FailedToResize => &mut self.failed_to_resize,
            Status::Filtered => &mut self.filtered,
            Status::OptedOut => &mut self.opted_out,
            Status::DisallowedByRobots => &mut self.disallowed_by_robots,
        };
        *counter += 1;
        let label = match (meta.status, &meta.error_message) {
            (Status::Success, _) | (_, None) => meta.status.as_str().to_string(),
            (_, Some(message)) => message.clone(),
        };
        *self.status_dict.entry(label).or_default() += 1;
    }
}

/// Where a row's image bytes sit in the spool file.
struct Spooled {
    offset: u64,
    len: u64,
    ext: &'static str,
}

struct Entry {
    meta: MetadataRow,
    image: Option<Spooled>,
}

/// Writes one shard. Rows may arrive in any order; `finish` emits them in key order.
///
/// Image bytes go to a spool file as they arrive (memory stays bounded by metadata, not
/// images); `finish` copies them into the tar in key order. Dropping the writer without
/// `finish` removes everything it wrote.
pub struct ShardWriter {
    dir: PathBuf,
    shard_id: u64,
    cfg: ShardConfig,
    spool: Option<BufWriter<File>>,
    spool_len: u64,
    rows: BTreeMap<u64, Entry>,
    summary: Summary,
    start: SystemTime,
    finished: bool,
    /// Final names renamed over so far by `finish` (0 to 3).
    renamed: usize,
}

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn remove_if_exists(path: &Path) -> Result<(), ShardError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ShardError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Flushes a finished temporary file to disk before it is renamed.
fn flush(file: File, path: &Path) -> Result<(), ShardError> {
    file.sync_all().map_err(ShardError::io("fsync", path))
}

/// Makes renames inside `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ShardError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ShardError::io("fsync", dir))?;
    Ok(())
}

impl ShardWriter {
    /// Starts shard `shard_id` in `dir`, removing the dot-prefixed temporaries of a killed run.
    /// An earlier shard under the final names stays whole and readable until `finish` renames
    /// the new files over it: a rewrite (`--retry-failed`) killed at any point leaves the old
    /// shard or the new one, never neither.
    pub fn create(dir: &Path, shard_id: u64, cfg: &ShardConfig) -> Result<ShardWriter, ShardError> {
        cfg.validate()?;
        fs::create_dir_all(dir).map_err(ShardError::io("create folder", dir))?;
        let mut writer = ShardWriter {
            dir: dir.to_path_buf(),
            shard_id,
            cfg: cfg.clone(),
            spool: None,
            spool_len: 0,
            rows: BTreeMap::new(),
            summary: Summary::default(),
            start: SystemTime::now(),
            finished: false,
            renamed: 0,
        };
        for path in writer.temp_paths() {
            remove_if_exists(&path)?;
        }
        let spool_path = writer.temp("spool");
        let spool = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&spool_path)
            .map_err(ShardError::io("create", &spool_path))?;
        writer.spool = Some(BufWriter::new(spool));
        Ok(writer)
    }

    /// The shard's final files in publication order: tar, parquet, `_stats.json`.
    fn final_paths(&self) -> [PathBuf; 3] {
        [
            self.cfg.tar_path(&self.dir, self.shard_id),
            self.cfg.parquet_path(&self.dir, self.shard_id),
            self.cfg.stats_path(&self.dir, self.shard_id),
        ]
    }

    /// A dot-prefixed temporary name; readers and `completed_shards` never look at these.
    fn temp(&self, suffix: &str) -> PathBuf {
        let name = self.cfg.shard_name(self.shard_id);
        self.dir.join(format!(".{name}.{suffix}.tmp"))
    }

    fn temp_paths(&self) -> [PathBuf; 4] {
        ["spool", "tar", "parquet", "stats.json"].map(|s| self.temp(s))
    }

    fn bad(&self, row: u64, reason: String) -> ShardError {
        ShardError::BadRecord {
            shard_id: self.shard_id,
            row,
            reason,
        }
    }

    fn check(&self, row: u64, rec: &SampleRecord) -> Result<(), ShardError> {
        if row >= self.cfg.samples_per_shard {
            return Err(self.bad(
                row,
                format!(
                    "row is outside the shard (samples_per_shard = {}); write it to the next shard",
                    self.cfg.samples_per_shard
                ),
            ));
        }
        if self.rows.contains_key(&row) {
            return Err(self.bad(
                row,
                "row was already written; write each input row once".into(),
            ));
        }
        if rec.extra.len() != self.cfg.extra_columns.len() {
            return Err(self.bad(
                row,
                format!(
                    "record has {} kept column values but the shard keeps {} columns ({:?})",
                    rec.extra.len(),
                    self.cfg.extra_columns.len(),
                    self.cfg.extra_columns
                ),
            ));
        }
        if rec.effective_status() != Status::Success {
            return Ok(());
        }
        let Some(image) = &rec.image else {
            return Err(self.bad(row, "status is success but the record has no image".into()));
        };
        if ImageFormat::from_magic(&image.bytes) != Some(image.format) {
            return Err(self.bad(row, format!(
                "image bytes are not {:?} as the record claims; set `format` from the encoder's output",
                image.format
            )));
        }
        Ok(())
    }

    /// Adds input row `row_in_shard`; failures too (they become parquet rows only).
    ///
    /// A refused record leaves the writer usable; after an I/O error it only reports
    /// [`ShardError::Poisoned`], and dropping it removes its files.
    pub fn write(&mut self, row_in_shard: u64, rec: &SampleRecord) -> Result<(), ShardError> {
        self.check(row_in_shard, rec)?;
        let meta = MetadataRow::from_record(self.shard_id, row_in_shard, rec, &self.cfg);
        let image = match rec
            .image
            .as_ref()
            .filter(|_| meta.status == Status::Success)
        {
            Some(img) => Some(self.spool_image(&img.bytes, img.format.ext())?),
            None => None,
        };
        self.summary.observe(rec);
        self.rows.insert(row_in_shard, Entry { meta, image });
        Ok(())
    }

    fn spool_image(&mut self, bytes: &[u8], ext: &'static str) -> Result<Spooled, ShardError> {
        let path = self.temp("spool");
        let shard_id = self.shard_id;
        let spool = self
            .spool
            .as_mut()
            .ok_or(ShardError::Poisoned { shard_id })?;
        if let Err(e) = spool.write_all(bytes) {
            self.spool = None;
            return Err(ShardError::io("write", path)(e));
        }
        let spooled = Spooled {
            offset: self.spool_len,
            len: bytes.len() as u64,
            ext,
        };
        self.spool_len += spooled.len;
        Ok(spooled)
    }

    /// Rows written so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row was written yet.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the tar, the parquet and `_stats.json` under temporary names and fsyncs them, then
    /// renames each over its final name (`_stats.json` last) and fsyncs the folder, so a crash
    /// never leaves a partial file under a final name, and an earlier shard under those names
    /// stays complete until the new one is.
    pub fn finish(mut self) -> Result<ShardStats, ShardError> {
        let mut stats = ShardStats::default();
        for entry in self.rows.values() {
            stats.count(&entry.meta);
        }
        stats.summary = std::mem::take(&mut self.summary);
        let result = self.publish(&mut stats);
        if result.is_ok() {
            self.finished = true;
            let _ = fs::remove_file(self.temp("spool"));
            tracing::debug!(
                shard = self.shard_id,
                rows = stats.count,
                samples = stats.successes,
                "shard finalized"
            );
        }
        result.map(|()| stats)
    }

    fn publish(&mut self, stats: &mut ShardStats) -> Result<(), ShardError> {
        let spool_path = self.temp("spool");
        let shard_id = self.shard_id;
        let spool = self.spool.take().ok_or(ShardError::Poisoned { shard_id })?;
        let mut spool = spool
            .into_inner()
            .map_err(|e| ShardError::io("write", &spool_path)(e.into_error()))?;

        let tar_tmp = self.temp("tar");
        let tar = self.write_tar(&mut spool, &tar_tmp)?;
        flush(tar, &tar_tmp)?;

        let parquet_tmp = self.temp("parquet");
        let file = File::create(&parquet_tmp).map_err(ShardError::io("create", &parquet_tmp))?;
        let rows: Vec<&MetadataRow> = self.rows.values().map(|e| &e.meta).collect();
        let file = write_parquet(file, &parquet_tmp, &rows, &self.cfg.extra_columns)?;
        flush(file, &parquet_tmp)?;

        let end = SystemTime::now();
        stats.start_time = epoch_seconds(self.start);
        stats.end_time = epoch_seconds(end);
        stats.duration = end
            .duration_since(self.start)
            .map_or(0.0, |d| d.as_secs_f64());
        let stats_tmp = self.temp("stats.json");
        let json = serde_json::to_vec_pretty(stats).map_err(|source| ShardError::Json {
            path: stats_tmp.clone(),
            source,
        })?;
        let mut file = File::create(&stats_tmp).map_err(ShardError::io("create", &stats_tmp))?;
        file.write_all(&json)
            .map_err(ShardError::io("write", &stats_tmp))?;
        flush(file, &stats_tmp)?;

        let temps = [tar_tmp, parquet_tmp, stats_tmp];
        for (tmp, dest) in temps.iter().zip(self.final_paths()) {
            fs::rename(tmp, &dest).map_err(ShardError::io("rename", &dest))?;
            self.renamed += 1;
        }
        sync_dir(&self.dir)
    }

    /// Writes every success's members in key order, then extension order.
    fn write_tar(&self, spool: &mut File, path: &Path) -> Result<File, ShardError> {
        let file = File::create(path).map_err(ShardError::io("create", path))?;
        let mut out = BufWriter::new(file);
        let werr = ShardError::io("write", path);
        let mut write = || -> io::Result<()> {
            for entry in self.rows.values() {
                let Some(image) = &entry.image else { continue };
                let key = &entry.meta.key;
                let json = entry.meta.to_json_member();
                let mut members: Vec<(&str, Member)> = vec![
                    (image.ext, Member::Spooled(image)),
                    ("json", Member::Bytes(&json)),
                ];
                if let Some(caption) = &entry.meta.caption {
                    members.push(("txt", Member::Bytes(caption.as_bytes())));
                }
                members.sort_by(|a, b| a.0.cmp(b.0));
                for (ext, member) in members {
                    append_member(&mut out, &format!("{key}.{ext}"), member, spool)?;
                }
            }
            out.write_all(&[0u8; 1024])?;
            out.flush()
        };
        write().map_err(werr)?;
        out.into_inner()
            .map_err(|e| ShardError::io("write", path)(e.into_error()))
    }
}

/// A tar member's content: bytes in memory, or a range of the spool file.
enum Member<'a> {
    Bytes(&'a [u8]),
    Spooled(&'a Spooled),
}

/// Appends one ustar member with deterministic metadata (mtime 0, mode 0444, uid/gid 0).
fn append_member(
    out: &mut impl Write,
    name: &str,
    member: Member,
    spool: &mut File,
) -> io::Result<()> {
    let len = match member {
        Member::Bytes(b) => b.len() as u64,
        Member::Spooled(s) => s.len,
    };
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(len);
    header.set_mode(0o444);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    out.write_all(header.as_bytes())?;
    match member {
        Member::Bytes(b) => out.write_all(b)?,
        Member::Spooled(s) => {
            spool.seek(SeekFrom::Start(s.offset))?;
            let copied = io::copy(&mut (&mut *spool).take(s.len), out)?;
            if copied != s.len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "spool file is shorter than written",
                ));
            }
        }
    }
    let pad = (512 - (len % 512) as usize) % 512;
    out.write_all(&[0u8; 512][..pad])
}

impl Drop for ShardWriter {
    /// An unfinished shard leaves no temporaries. An earlier shard under the final names stays,
    /// unless a failed rename left it part old, part new: then its files go, marker first, so
    /// the shard reads as unfinished and is written again.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.spool = None;
        let mixed = if (1..3).contains(&self.renamed) {
            self.final_paths().into_iter().rev().collect()
        } else {
            Vec::new()
        };
        for path in self.temp_paths().iter().chain(&mixed) {
            let _ = fs::remove_file(path);
        }
    }
}
