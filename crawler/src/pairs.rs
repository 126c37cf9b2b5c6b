//! The pairs table: (image URL, alt text) with where it was found.
//!
//! `wit crawl` and `wit warc` write it; `wit download` reads it (columns `url`, `caption`,
//! `page_url`), so one parquet schema ties web extraction to shard building. Rows are buffered
//! up to a bounded row group (by rows and by bytes) and the file appears under its final name
//! only when complete and durable.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, StringBuilder};
use arrow_array::{Array, ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Rows per parquet row group: bounds the writer's memory whatever the corpus size.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 65_536;

/// Text bytes buffered before a row group is flushed, whatever its row count: arrow's `Utf8`
/// columns have 32-bit offsets (the type img2dataset's parquet uses, so it stays), and one
/// column of a batch past 2 GiB panics; long strings must not make a row group approach that.
pub const ROW_GROUP_BYTES: usize = 64 << 20;

/// Errors reading or writing a pairs table.
#[derive(Debug, thiserror::Error)]
pub enum PairsError {
    /// The file could not be created, written, renamed or opened.
    #[error("pairs file {path}: {source} (check that the folder exists and is writable)")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Parquet encoding or decoding failed.
    #[error("pairs parquet {path}: {source}")]
    Parquet {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: parquet::errors::ParquetError,
    },
    /// The file is parquet but lacks a column the pairs schema needs.
    #[error(
        "pairs parquet {path}: missing or mistyped column `{column}` (is this a wit pairs file?)"
    )]
    Schema {
        /// The file concerned.
        path: PathBuf,
        /// The column that is missing.
        column: &'static str,
    },
}

/// One (image, text) pair with its provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Absolute image URL.
    pub url: String,
    /// The alt text, used as the caption.
    pub caption: String,
    /// The page the image was found on (shared by all pairs of the page, not copied per pair).
    pub page_url: Arc<str>,
    /// The page title, when it had one (shared by all pairs of the page).
    pub title: Option<Arc<str>>,
    /// Ordinal of the `<img>` on its page (WAT links: ordinal among the page's links).
    pub position: i32,
    /// The `width` attribute, when given in pixels.
    pub width: Option<i32>,
    /// The `height` attribute, when given in pixels.
    pub height: Option<i32>,
}

/// The pairs table's arrow schema: `url, caption, page_url, title, position, width, height`.
pub fn schema() -> SchemaRef {
    schema_with(&[])
}

/// The pairs schema followed by nullable text columns `extra`.
fn schema_with(extra: &[String]) -> SchemaRef {
    let mut fields = vec![
        Field::new("url", DataType::Utf8, false),
        Field::new("caption", DataType::Utf8, false),
        Field::new("page_url", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, true),
        Field::new("position", DataType::Int32, false),
        Field::new("width", DataType::Int32, true),
        Field::new("height", DataType::Int32, true),
    ];
    fields.extend(extra.iter().map(|c| Field::new(c, DataType::Utf8, true)));
    Arc::new(Schema::new(fields))
}

/// Streams pairs into one parquet file, written under a temporary name and renamed on
/// [`finish`](PairsWriter::finish), so a killed run never leaves a truncated table behind.
pub struct PairsWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<File>,
    schema: SchemaRef,
    extra: usize,
    buffer: Vec<(Pair, Vec<Option<String>>)>,
    /// Text bytes in `buffer`.
    buffer_bytes: usize,
    row_group_bytes: usize,
    row_group_rows: usize,
    written: u64,
}

impl PairsWriter {
    /// Creates `path` (via `path.tmp`) with the default row-group size.
    pub fn create(path: &Path) -> Result<Self, PairsError> {
        Self::with_row_group_rows(path, DEFAULT_ROW_GROUP_ROWS)
    }

    /// Creates `path` with nullable text columns `extra` after the pairs columns (e.g. data that
    /// `wit download --save-additional-columns` should carry into the shards).
    pub fn with_extra_columns(path: &Path, extra: &[&str]) -> Result<Self, PairsError> {
        let extra: Vec<String> = extra.iter().map(|c| c.to_string()).collect();
        Self::open(path, DEFAULT_ROW_GROUP_ROWS, &extra)
    }

    /// Creates `path` flushing a row group every `row_group_rows` rows.
    pub fn with_row_group_rows(path: &Path, row_group_rows: usize) -> Result<Self, PairsError> {
        Self::open(path, row_group_rows, &[])
    }

    fn open(path: &Path, row_group_rows: usize, extra: &[String]) -> Result<Self, PairsError> {
        Self::open_with_bytes(path, row_group_rows, ROW_GROUP_BYTES, extra)
    }

    fn open_with_bytes(
        path: &Path,
        row_group_rows: usize,
        row_group_bytes: usize,
        extra: &[String],
    ) -> Result<Self, PairsError> {
        let tmp = path.with_extension("parquet.tmp");
        let file = File::create(&tmp).map_err(|source| PairsError::Io {
            path: tmp.clone(),
            source,
        })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_size(row_group_rows.max(1))
            .build();
        let schema = schema_with(extra);
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|source| {
            PairsError::Parquet {
                path: tmp.clone(),
                source,
            }
        })?;
        Ok(PairsWriter {
            path: path.to_path_buf(),
            tmp,
            writer,
            schema,
            extra: extra.len(),
            buffer: Vec::new(),
            buffer_bytes: 0,
            row_group_bytes,
            row_group_rows: row_group_rows.max(1),
            written: 0,
        })
    }

    /// Appends one pair; flushes a row group when the buffer is full.
    pub fn write(&mut self, pair: Pair) -> Result<(), PairsError> {
        let none = vec![None; self.extra];
        self.write_with_extra(pair, none)
    }

    /// Appends one pair with the values of the extra columns, in their order (missing ones null).
    pub fn write_with_extra(
        &mut self,
        pair: Pair,
        mut extra: Vec<Option<String>>,
    ) -> Result<(), PairsError> {
        extra.resize(self.extra, None);
        self.buffer_bytes += text_bytes(&pair, &extra);
        self.buffer.push((pair, extra));
        self.written += 1;
        if self.buffer.len() >= self.row_group_rows || self.buffer_bytes >= self.row_group_bytes {
            self.flush()?;
        }
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.written
    }

    /// Writes the remaining rows, closes the file, fsyncs it, renames it to its final name and
    /// fsyncs the folder, so after a crash the table is either whole under its name or absent.
    pub fn finish(mut self) -> Result<u64, PairsError> {
        self.flush()?;
        let file = self
            .writer
            .into_inner()
            .map_err(|source| PairsError::Parquet {
                path: self.tmp.clone(),
                source,
            })?;
        let io = |source| PairsError::Io {
            path: self.path.clone(),
            source,
        };
        file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &self.path).map_err(io)?;
        sync_parent(&self.path).map_err(io)?;
        Ok(self.written)
    }

    /// Encodes the buffer as one record batch and writes it.
    fn flush(&mut self) -> Result<(), PairsError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let batch = to_batch(&self.buffer, &self.schema);
        self.buffer.clear();
        self.buffer_bytes = 0;
        let parquet = |source| PairsError::Parquet {
            path: self.tmp.clone(),
            source,
        };
        self.writer.write(&batch).map_err(parquet)?;
        self.writer.flush().map_err(parquet)
    }
}

/// The text bytes one row adds to its row group's string columns.
fn text_bytes(pair: &Pair, extra: &[Option<String>]) -> usize {
    let title = pair.title.as_deref().map_or(0, str::len);
    let extra: usize = extra.iter().flatten().map(String::len).sum();
    pair.url.len() + pair.caption.len() + pair.page_url.len() + title + extra
}

/// Fsyncs the folder holding `path`, so a rename into it survives a crash.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Builds a record batch of pairs (and their extra column values) in `schema`.
fn to_batch(rows: &[(Pair, Vec<Option<String>>)], schema: &SchemaRef) -> RecordBatch {
    let mut url = StringBuilder::new();
    let mut caption = StringBuilder::new();
    let mut page_url = StringBuilder::new();
    let mut title = StringBuilder::new();
    let mut position = Int32Builder::new();
    let mut width = Int32Builder::new();
    let mut height = Int32Builder::new();
    for (p, _) in rows {
        url.append_value(&p.url);
        caption.append_value(&p.caption);
        page_url.append_value(&p.page_url);
        title.append_option(p.title.as_deref());
        position.append_value(p.position);
        width.append_option(p.width);
        height.append_option(p.height);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(url.finish()),
        Arc::new(caption.finish()),
        Arc::new(page_url.finish()),
        Arc::new(title.finish()),
        Arc::new(position.finish()),
        Arc::new(width.finish()),
        Arc::new(height.finish()),
    ];
    let extra = schema.fields().len() - columns.len();
    columns.extend((0..extra).map(|i| {
        let values = rows.iter().map(|(_, e)| e[i].as_deref());
        Arc::new(values.collect::<StringArray>()) as ArrayRef
    }));
    RecordBatch::try_new(schema.clone(), columns).expect("columns match the pairs schema")
}

/// Reads a pairs table back, one record batch at a time (memory bounded by the row group).
pub fn read_pairs(
    path: &Path,
) -> Result<impl Iterator<Item = Result<Pair, PairsError>>, PairsError> {
    let file = File::open(path).map_err(|source| PairsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let parquet = |source| PairsError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet)?
        .build()
        .map_err(parquet)?;
    let owned = path.to_path_buf();
    Ok(reader.flat_map(move |batch| {
        let rows = batch
            .map_err(|e| PairsError::Parquet {
                path: owned.clone(),
                source: e.into(),
            })
            .and_then(|b| from_batch(&b, &owned));
        match rows {
            Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        }
    }))
}

/// Converts a record batch in the pairs schema back to pairs.
fn from_batch(b: &RecordBatch, path: &Path) -> Result<Vec<Pair>, PairsError> {
    let missing = |column| PairsError::Schema {
        path: path.to_path_buf(),
        column,
    };
    let s = |name: &'static str| {
        b.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| missing(name))
    };
    let i = |name: &'static str| {
        b.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
            .ok_or_else(|| missing(name))
    };
    let (url, caption, page_url, title) = (s("url")?, s("caption")?, s("page_url")?, s("title")?);
    let (position, width, height) = (i("position")?, i("width")?, i("height")?);
    let opt_i = |a: &Int32Array, r: usize| (!a.is_null(r)).then(|| a.value(r));
    Ok((0..b.num_rows())
        .map(|r| Pair {
            url: url.value(r).to_string(),
            caption: caption.value(r).to_string(),
            page_url: page_url.value(r).into(),
            title: (!title.is_null(r)).then(|| title.value(r).into()),
            position: position.value(r),
            width: opt_i(width, r),
            height: opt_i(height, r),
        })
        .collect())
}

/// The first record batch of a parquet file, for tests that read back what a writer wrote.
#[cfg(test)]
pub(crate) fn first_record_batch(path: &Path) -> RecordBatch {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("parquet file opens"))
        .expect("parquet footer reads")
        .build()
        .expect("reader builds")
        .next()
        .expect("at least one record batch")
        .expect("record batch decodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(i: i32) -> Pair {
        Pair {
            url: format!("http://example.com/{i}.jpg"),
            caption: format!("caption {i} ünïcode"),
            page_url: "http://example.com/".into(),
            title: (i % 2 == 0).then(|| format!("title {i}").into()),
            position: i,
            width: (i % 3 == 0).then_some(i * 10),
            height: None,
        }
    }

    #[test]
    fn pairs_round_trip_through_bounded_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.parquet");
        let mut w = PairsWriter::with_row_group_rows(&path, 7).unwrap();
        let expected: Vec<Pair> = (0..50).map(pair).collect();
        for p in &expected {
            w.write(p.clone()).unwrap();
        }
        assert!(!path.exists(), "the final name appears only on finish");
        assert_eq!(w.finish().unwrap(), 50);
        let meta = parquet::file::reader::SerializedFileReader::new(File::open(&path).unwrap())
            .map(|r| parquet::file::reader::FileReader::metadata(&r).num_row_groups())
            .unwrap();
        assert_eq!(meta, 8);
        let got: Vec<Pair> = read_pairs(&path).unwrap().map(Result::unwrap).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn row_groups_are_flushed_by_bytes_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.parquet");
        let mut w = PairsWriter::open_with_bytes(&path, 1000, 10_000, &[]).unwrap();
        let long = Pair {
            caption: "c".repeat(3000),
            ..pair(0)
        };
        for _ in 0..10 {
            w.write(long.clone()).unwrap();
        }
        w.finish().unwrap();
        assert!(!dir.path().join("pairs.parquet.tmp").exists());
        let groups = parquet::file::reader::SerializedFileReader::new(File::open(&path).unwrap())
            .map(|r| parquet::file::reader::FileReader::metadata(&r).num_row_groups())
            .unwrap();
        assert_eq!(
            groups, 3,
            "a group every 4 rows of 3,000+ bytes (10,000-byte budget)"
        );
        assert_eq!(read_pairs(&path).unwrap().count(), 10);
    }

    #[test]
    fn extra_columns_follow_the_pairs_columns_and_pairs_still_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.parquet");
        let mut w = PairsWriter::with_extra_columns(&path, &["negatives"]).unwrap();
        w.write_with_extra(pair(1), vec![Some("[\"a\"]".into())])
            .unwrap();
        w.write(pair(2)).unwrap();
        w.finish().unwrap();
        let got: Vec<Pair> = read_pairs(&path).unwrap().map(Result::unwrap).collect();
        assert_eq!(got, vec![pair(1), pair(2)]);
        let batch = first_record_batch(&path);
        let col = batch.column_by_name("negatives").expect("the extra column");
        let col = col.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((col.value(0), col.is_null(1)), ("[\"a\"]", true));
    }

    #[test]
    fn a_parquet_without_pairs_columns_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int32Array::from(vec![1])) as ArrayRef],
        )
        .unwrap();
        let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let err = read_pairs(&path).unwrap().next().unwrap().unwrap_err();
        assert!(
            err.to_string().contains("missing or mistyped column `url`"),
            "{err}"
        );
    }
}
