//! Rebuilding a shard's [`Summary`] from its parquet (and, with `--deep`, its tar): for shards
//! whose `_stats.json` carries no summary (img2dataset's), and to check the summaries against the
//! data. Streams both files: parquet one record batch at a time, the tar one sample at a time,
//! joined on the key (both are sorted by key).

use super::columns::{ints_any, strings};
use super::schema::Deep;
use anyhow::Context;
use arrow_array::RecordBatch;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use wit_shards::reader::{Sample, ShardReader};
use wit_shards::summary::{Stored, Summary};
use wit_shards::{SampleRecord, Status};

/// The shard's parquet path from its base path (`.../00042`).
fn with_ext(base: &Path, ext: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

/// Rebuilds one shard's summary from its parquet; with `deep`, also reads every tar image and
/// takes the stored sizes and formats from the decoded images.
pub fn from_parquet(base: &Path, deep: Option<&mut Deep>) -> anyhow::Result<Summary> {
    let parquet = with_ext(base, ".parquet");
    let mut summary = Summary::default();
    let mut tar = match deep {
        Some(d) => Some(TarCursor::open(&with_ext(base, ".tar"), d)?),
        None => None,
    };
    for batch in super::columns::batches(&parquet)? {
        let batch = batch?;
        for row in rows(&batch, &parquet)? {
            let stored = match (&mut tar, row.record.effective_status()) {
                (Some(t), Status::Success) => t.stored_for(&row.key)?,
                _ => None,
            };
            let stored = match (stored, row.stored) {
                (Some(t), Some(p)) => Some(StoredOwned {
                    width: t.width.or(p.width),
                    height: t.height.or(p.height),
                    ..t
                }),
                (t, p) => t.or(p),
            };
            let fmt = stored.as_ref().and_then(|s| s.format.clone());
            let parts = stored.map(|s| Stored {
                width: s.width,
                height: s.height,
                bytes: s.bytes,
                format: fmt.as_deref(),
            });
            summary.observe_row(&row.record, parts);
        }
    }
    if let Some(t) = tar {
        t.finish()?;
    }
    Ok(summary)
}

/// A stored image description with an owned format (parquet string or tar extension).
#[derive(Clone, Debug, Default)]
struct StoredOwned {
    width: Option<u32>,
    height: Option<u32>,
    bytes: Option<u64>,
    format: Option<String>,
}

/// One parquet row as the summary wants it.
struct Row {
    key: String,
    record: SampleRecord,
    stored: Option<StoredOwned>,
}

/// The rows of one record batch (bounded: one batch at a time).
fn rows(batch: &RecordBatch, path: &Path) -> anyhow::Result<Vec<Row>> {
    let n = batch.num_rows();
    let s = |name: &str| strings(batch, name).unwrap_or_else(|| vec![None; n]);
    let i = |names: &[&str]| ints_any(batch, names).unwrap_or_else(|| vec![None; n]);
    let status = strings(batch, "status").with_context(|| {
        format!(
            "{} has no `status` column: not a shard parquet",
            path.display()
        )
    })?;
    let url = s("url");
    let (key, caption, err) = (s("key"), s("caption"), s("error_message"));
    let (b3, fmt, ofmt, lang, dup, mime) = (
        s("blake3"),
        s("format"),
        s("original_format"),
        s("language"),
        s("dup_of"),
        s("mime"),
    );
    let (w, h, ow, oh) = (
        i(&["width"]),
        i(&["height"]),
        i(&["original_width"]),
        i(&["original_height"]),
    );
    let (bytes, enc) = (i(&["bytes"]), i(&["encoded_bytes"]));
    let u32_of = |v: Option<i64>| v.and_then(|x| u32::try_from(x).ok());
    let u64_of = |v: Option<i64>| v.and_then(|x| u64::try_from(x).ok());
    let rows = (0..n)
        .map(|r| {
            let st = status[r].as_deref().and_then(Status::parse);
            let stored = (st == Some(Status::Success)).then(|| StoredOwned {
                width: u32_of(w[r]),
                height: u32_of(h[r]),
                bytes: u64_of(enc[r]),
                format: fmt[r].clone(),
            });
            Row {
                key: key[r].clone().unwrap_or_default(),
                stored,
                record: SampleRecord {
                    url: url[r].clone().unwrap_or_default(),
                    caption: caption[r].clone(),
                    status: st,
                    error_message: err[r].clone(),
                    original_width: u32_of(ow[r]),
                    original_height: u32_of(oh[r]),
                    original_bytes: u64_of(bytes[r]),
                    original_format: ofmt[r].clone(),
                    blake3: b3[r].clone(),
                    mime: mime[r].clone(),
                    language: lang[r].clone(),
                    dup_of: dup[r].clone(),
                    ..SampleRecord::default()
                },
            }
        })
        .collect();
    Ok(rows)
}

/// The tar of a shard read alongside its parquet rows (both sorted by key).
struct TarCursor<'a> {
    reader: ShardReader<BufReader<File>>,
    next: Option<Sample>,
    deep: &'a mut Deep,
    path: PathBuf,
}

impl<'a> TarCursor<'a> {
    fn open(path: &Path, deep: &'a mut Deep) -> anyhow::Result<TarCursor<'a>> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut cursor = TarCursor {
            reader: ShardReader::new(BufReader::new(file)),
            next: None,
            deep,
            path: path.to_owned(),
        };
        cursor.advance()?;
        Ok(cursor)
    }

    /// Moves to the next sample; one the reader skipped over its budget counts as undecodable.
    fn advance(&mut self) -> anyhow::Result<()> {
        loop {
            match self.reader.next() {
                Some(Err(e)) if e.is_sample_only() => self.deep.undecodable += 1,
                next => {
                    self.next = next
                        .transpose()
                        .with_context(|| format!("reading {}", self.path.display()))?;
                    return Ok(());
                }
            }
        }
    }

    /// The decoded image of the success row `key`; tar samples before it are orphans.
    fn stored_for(&mut self, key: &str) -> anyhow::Result<Option<StoredOwned>> {
        while self.next.as_ref().is_some_and(|s| s.key.as_str() < key) {
            self.deep.orphan_samples += 1;
            self.advance()?;
        }
        if self.next.as_ref().is_none_or(|s| s.key != key) {
            self.deep.missing_images += 1;
            return Ok(None);
        }
        let sample = self.next.take().expect("checked above");
        self.advance()?;
        let Some((ext, bytes)) = sample.image() else {
            self.deep.missing_images += 1;
            return Ok(None);
        };
        self.deep.images_read += 1;
        let (width, height) = match image::load_from_memory(bytes) {
            Ok(img) => (Some(img.width()), Some(img.height())),
            Err(_) => {
                self.deep.undecodable += 1;
                (None, None)
            }
        };
        Ok(Some(StoredOwned {
            width,
            height,
            bytes: Some(bytes.len() as u64),
            format: Some(ext.to_owned()),
        }))
    }

    /// Counts the tar samples left after the last row as orphans.
    fn finish(mut self) -> anyhow::Result<()> {
        while self.next.is_some() {
            self.deep.orphan_samples += 1;
            self.advance()?;
        }
        Ok(())
    }
}
