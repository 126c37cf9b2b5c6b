//! The per-row metadata: one parquet row per input row and the `.json` member of each success,
//! in img2dataset's column order with wit's columns appended.

use crate::config::{compute_key, ShardConfig, BUILTIN_COLUMNS};
use crate::error::ShardError;
use crate::record::{SampleRecord, Status};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// One input row as stored in the shard's parquet (and, for successes, in `{key}.json`).
///
/// Reading it back lets `wit download` resume failed rows and `wit stats` count without tars.
#[derive(Clone, Debug, PartialEq)]
pub struct MetadataRow {
    /// Kept input columns (name, value), in configuration order.
    pub extra: Vec<(String, Option<String>)>,
    /// The caption from the input.
    pub caption: Option<String>,
    /// The image URL from the input.
    pub url: String,
    /// img2dataset's sample key (see [`crate::compute_key`]).
    pub key: String,
    /// What happened to the row.
    pub status: Status,
    /// Why it failed or was filtered.
    pub error_message: Option<String>,
    /// Stored image width.
    pub width: Option<u32>,
    /// Stored image height.
    pub height: Option<u32>,
    /// Downloaded image width.
    pub original_width: Option<u32>,
    /// Downloaded image height.
    pub original_height: Option<u32>,
    /// EXIF tags as a JSON object string.
    pub exif: Option<String>,
    /// Hex SHA-256 of the downloaded bytes.
    pub sha256: Option<String>,
    /// Hex BLAKE3 of the downloaded bytes.
    pub blake3: Option<String>,
    /// The server's `Content-Type`.
    pub mime: Option<String>,
    /// Size of the downloaded body.
    pub bytes: Option<u64>,
    /// Size of the stored (encoded) image.
    pub encoded_bytes: Option<u64>,
    /// Stored encoding: `jpg`, `png` or `webp`.
    pub format: Option<String>,
    /// Downloaded encoding: `jpeg`, `png`, `webp`, `gif`, `bmp`.
    pub original_format: Option<String>,
    /// Page the pair was found on.
    pub page_url: Option<String>,
    /// Caption language (ISO 639-1).
    pub language: Option<String>,
    /// Perceptual hash, hex.
    pub phash: Option<String>,
    /// Key of the sample this one nearly duplicates.
    pub dup_of: Option<String>,
}

impl MetadataRow {
    /// Builds the stored row of `rec`, written as row `row` of shard `shard_id`.
    pub fn from_record(shard_id: u64, row: u64, rec: &SampleRecord, cfg: &ShardConfig) -> Self {
        let status = rec.effective_status();
        let image = rec.image.as_ref().filter(|_| status == Status::Success);
        MetadataRow {
            extra: cfg
                .extra_columns
                .iter()
                .cloned()
                .zip(rec.extra.iter().cloned())
                .collect(),
            caption: rec.caption.clone(),
            url: rec.url.clone(),
            key: compute_key(shard_id, row, cfg),
            status,
            error_message: rec.error_message.clone(),
            width: image.map(|i| i.width),
            height: image.map(|i| i.height),
            original_width: rec.original_width,
            original_height: rec.original_height,
            exif: rec.exif.clone(),
            sha256: rec.sha256.clone(),
            blake3: rec.blake3.clone(),
            mime: rec.mime.clone(),
            bytes: rec.original_bytes,
            encoded_bytes: image.map(|i| i.bytes.len() as u64),
            format: image.map(|i| i.format.ext().to_string()),
            original_format: rec.original_format.clone(),
            page_url: rec.page_url.clone(),
            language: rec.language.clone(),
            phash: rec.phash.clone(),
            dup_of: rec.dup_of.clone(),
        }
    }

    /// The `{key}.json` member: every column, in parquet order, indented by 4 like img2dataset.
    pub fn to_json_member(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        self.serialize(&mut ser)
            .expect("serialising strings and integers to memory cannot fail");
        out
    }

    fn optional_strings(&self) -> [(&'static str, &Option<String>); 4] {
        [
            ("exif", &self.exif),
            ("sha256", &self.sha256),
            ("blake3", &self.blake3),
            ("mime", &self.mime),
        ]
    }

    fn wit_strings(&self) -> [(&'static str, &Option<String>); 6] {
        [
            ("format", &self.format),
            ("original_format", &self.original_format),
            ("page_url", &self.page_url),
            ("language", &self.language),
            ("phash", &self.phash),
            ("dup_of", &self.dup_of),
        ]
    }
}

impl Serialize for MetadataRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (name, value) in &self.extra {
            m.serialize_entry(name, value)?;
        }
        m.serialize_entry("caption", &self.caption)?;
        m.serialize_entry("url", &self.url)?;
        m.serialize_entry("key", &self.key)?;
        m.serialize_entry("status", self.status.as_str())?;
        m.serialize_entry("error_message", &self.error_message)?;
        m.serialize_entry("width", &self.width)?;
        m.serialize_entry("height", &self.height)?;
        m.serialize_entry("original_width", &self.original_width)?;
        m.serialize_entry("original_height", &self.original_height)?;
        for (name, value) in self.optional_strings() {
            m.serialize_entry(name, value)?;
        }
        m.serialize_entry("bytes", &self.bytes)?;
        m.serialize_entry("encoded_bytes", &self.encoded_bytes)?;
        for (name, value) in self.wit_strings() {
            m.serialize_entry(name, value)?;
        }
        m.end()
    }
}

/// The parquet schema: kept columns, then img2dataset's, then wit's.
fn schema(extra_columns: &[String]) -> Schema {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let mut fields: Vec<Field> = extra_columns.iter().map(|c| text(c, true)).collect();
    fields.push(text("caption", true));
    fields.push(text("url", false));
    fields.push(text("key", false));
    fields.push(text("status", false));
    fields.push(text("error_message", true));
    for name in ["width", "height", "original_width", "original_height"] {
        fields.push(Field::new(name, DataType::Int32, true));
    }
    for name in ["exif", "sha256", "blake3", "mime"] {
        fields.push(text(name, true));
    }
    fields.push(Field::new("bytes", DataType::Int64, true));
    fields.push(Field::new("encoded_bytes", DataType::Int64, true));
    for name in BUILTIN_COLUMNS[15..].iter() {
        fields.push(text(name, true));
    }
    Schema::new(fields)
}

fn string_col<'a>(
    rows: &[&'a MetadataRow],
    f: impl Fn(&'a MetadataRow) -> Option<&'a str>,
) -> ArrayRef {
    Arc::new(rows.iter().map(|r| f(r)).collect::<StringArray>())
}

fn int32_col(rows: &[&MetadataRow], f: impl Fn(&MetadataRow) -> Option<u32>) -> ArrayRef {
    let values: Int32Array = rows
        .iter()
        .map(|r| f(r).and_then(|v| i32::try_from(v).ok()))
        .collect();
    Arc::new(values)
}

fn int64_col(rows: &[&MetadataRow], f: impl Fn(&MetadataRow) -> Option<u64>) -> ArrayRef {
    let values: Int64Array = rows
        .iter()
        .map(|r| f(r).and_then(|v| i64::try_from(v).ok()))
        .collect();
    Arc::new(values)
}

fn columns(rows: &[&MetadataRow], extra_columns: &[String]) -> Vec<ArrayRef> {
    let mut cols: Vec<ArrayRef> = (0..extra_columns.len())
        .map(|i| string_col(rows, |r| r.extra.get(i).and_then(|(_, v)| v.as_deref())))
        .collect();
    cols.push(string_col(rows, |r| r.caption.as_deref()));
    cols.push(string_col(rows, |r| Some(r.url.as_str())));
    cols.push(string_col(rows, |r| Some(r.key.as_str())));
    cols.push(string_col(rows, |r| Some(r.status.as_str())));
    cols.push(string_col(rows, |r| r.error_message.as_deref()));
    cols.push(int32_col(rows, |r| r.width));
    cols.push(int32_col(rows, |r| r.height));
    cols.push(int32_col(rows, |r| r.original_width));
    cols.push(int32_col(rows, |r| r.original_height));
    for i in 0..4 {
        cols.push(string_col(rows, move |r| {
            r.optional_strings()[i].1.as_deref()
        }));
    }
    cols.push(int64_col(rows, |r| r.bytes));
    cols.push(int64_col(rows, |r| r.encoded_bytes));
    for i in 0..6 {
        cols.push(string_col(rows, move |r| r.wit_strings()[i].1.as_deref()));
    }
    cols
}

/// Text bytes per record batch handed to the parquet writer: arrow's `Utf8` columns (the type
/// img2dataset's parquet uses, so it stays) have 32-bit offsets, and one column of a batch past
/// 2 GiB panics, so a shard of long captions or URLs is encoded a slice at a time.
const BATCH_TEXT_BYTES: usize = 64 << 20;

/// The text bytes one row adds to its batch's string columns.
fn text_bytes(r: &MetadataRow) -> usize {
    let opt = |v: &Option<String>| v.as_deref().map_or(0, str::len);
    let extra: usize = r.extra.iter().map(|(_, v)| opt(v)).sum();
    let named: usize = r
        .optional_strings()
        .iter()
        .map(|(_, v)| opt(v))
        .sum::<usize>()
        + r.wit_strings().iter().map(|(_, v)| opt(v)).sum::<usize>();
    extra
        + named
        + opt(&r.caption)
        + opt(&r.error_message)
        + r.url.len()
        + r.key.len()
        + r.status.as_str().len()
}

/// Splits `rows` into consecutive slices of at most `max_bytes` text bytes (a row larger than
/// that is a slice of its own).
fn byte_bounded_slices<'r, 'a>(
    rows: &'r [&'a MetadataRow],
    max_bytes: usize,
) -> impl Iterator<Item = &'r [&'a MetadataRow]> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= rows.len() {
            return None;
        }
        let mut end = start;
        let mut bytes = 0;
        while end < rows.len() && (end == start || bytes + text_bytes(rows[end]) <= max_bytes) {
            bytes += text_bytes(rows[end]);
            end += 1;
        }
        let slice = &rows[start..end];
        start = end;
        Some(slice)
    })
}

/// Writes `rows` (already in key order) as a snappy parquet file to `file`, a batch of at most
/// [`BATCH_TEXT_BYTES`] text bytes at a time.
pub(crate) fn write_parquet(
    file: File,
    path: &Path,
    rows: &[&MetadataRow],
    extra_columns: &[String],
) -> Result<File, ShardError> {
    let perr = |source| ShardError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let schema = Arc::new(schema(extra_columns));
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(perr)?;
    let empty: &[&MetadataRow] = &[];
    let mut slices = byte_bounded_slices(rows, BATCH_TEXT_BYTES).peekable();
    // An empty shard still gets its schema and one (empty) batch, as before.
    let first = slices.peek().is_none().then_some(empty);
    for slice in first.into_iter().chain(slices) {
        let batch = RecordBatch::try_new(schema.clone(), columns(slice, extra_columns))
            .map_err(|e| perr(e.into()))?;
        writer.write(&batch).map_err(perr)?;
    }
    writer.into_inner().map_err(perr)
}

/// Reads a shard's parquet back, in file order. Works on img2dataset's files too: wit's own
/// columns are optional, and any other text column is returned in [`MetadataRow::extra`].
pub fn read_metadata(path: &Path) -> Result<Vec<MetadataRow>, ShardError> {
    let file = File::open(path).map_err(ShardError::io("open", path))?;
    let perr = |source| ShardError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(perr)?
        .build()
        .map_err(perr)?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| perr(e.into()))?;
        rows.extend(rows_of(&batch).map_err(|reason| ShardError::Metadata {
            path: path.to_path_buf(),
            reason,
        })?);
    }
    Ok(rows)
}

type Column<T> = Vec<Option<T>>;

fn strings(batch: &RecordBatch, name: &str) -> Result<Option<Column<String>>, String> {
    let Some(col) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let collect =
        |it: &mut dyn Iterator<Item = Option<&str>>| it.map(|v| v.map(str::to_string)).collect();
    let values = if let Some(a) = col.as_string_opt::<i32>() {
        collect(&mut a.iter())
    } else if let Some(a) = col.as_string_opt::<i64>() {
        collect(&mut a.iter())
    } else if let Some(a) = col.as_string_view_opt() {
        collect(&mut a.iter())
    } else if col.logical_null_count() == col.len() {
        vec![None; col.len()]
    } else {
        return Err(format!(
            "column {name:?} has type {}, expected text; this is not a wit or img2dataset metadata file",
            col.data_type()
        ));
    };
    Ok(Some(values))
}

fn ints(batch: &RecordBatch, name: &str) -> Result<Column<i64>, String> {
    let Some(col) = batch.column_by_name(name) else {
        return Ok(vec![None; batch.num_rows()]);
    };
    let values = if let Some(a) = col.as_primitive_opt::<Int32Type>() {
        a.iter().map(|v| v.map(i64::from)).collect()
    } else if let Some(a) = col.as_primitive_opt::<Int64Type>() {
        a.iter().collect()
    } else if let Some(a) = col.as_primitive_opt::<UInt32Type>() {
        a.iter().map(|v| v.map(i64::from)).collect()
    } else if let Some(a) = col.as_primitive_opt::<UInt64Type>() {
        a.iter()
            .map(|v| v.and_then(|v| i64::try_from(v).ok()))
            .collect()
    } else if col.logical_null_count() == col.len() {
        vec![None; col.len()]
    } else {
        return Err(format!(
            "column {name:?} has type {}, expected an integer",
            col.data_type()
        ));
    };
    Ok(values)
}

fn required(batch: &RecordBatch, name: &str) -> Result<Column<String>, String> {
    strings(batch, name)?.ok_or_else(|| {
        format!("missing column {name:?}; this is not a wit or img2dataset metadata file")
    })
}

fn optional(batch: &RecordBatch, name: &str) -> Result<Column<String>, String> {
    Ok(strings(batch, name)?.unwrap_or_else(|| vec![None; batch.num_rows()]))
}

fn rows_of(batch: &RecordBatch) -> Result<Vec<MetadataRow>, String> {
    let n = batch.num_rows();
    let extra_names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|name| !BUILTIN_COLUMNS.contains(&name.as_str()))
        .filter(|name| matches!(strings(batch, name), Ok(Some(_))))
        .collect();
    let extras: Vec<Column<String>> = extra_names
        .iter()
        .map(|name| optional(batch, name))
        .collect::<Result<_, _>>()?;
    let mut text: Vec<Column<String>> = Vec::new();
    for name in BUILTIN_COLUMNS {
        text.push(match name {
            "url" | "key" | "status" => required(batch, name)?,
            "width" | "height" | "original_width" | "original_height" | "bytes"
            | "encoded_bytes" => vec![None; n],
            _ => optional(batch, name)?,
        });
    }
    let width = ints(batch, "width")?;
    let height = ints(batch, "height")?;
    let ow = ints(batch, "original_width")?;
    let oh = ints(batch, "original_height")?;
    let bytes = ints(batch, "bytes")?;
    let encoded = ints(batch, "encoded_bytes")?;
    let u32_of = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let u64_of = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    (0..n)
        .map(|i| {
            let mut t = |name: &str| {
                let idx = BUILTIN_COLUMNS
                    .iter()
                    .position(|c| *c == name)
                    .expect("known column");
                text[idx][i].take()
            };
            let status_text = t("status").unwrap_or_default();
            let status = Status::parse(&status_text)
                .ok_or_else(|| format!("row {i}: unknown status {status_text:?}"))?;
            Ok(MetadataRow {
                extra: extra_names
                    .iter()
                    .zip(&extras)
                    .map(|(name, col)| (name.clone(), col[i].clone()))
                    .collect(),
                caption: t("caption"),
                url: t("url").ok_or_else(|| format!("row {i}: url is null"))?,
                key: t("key").ok_or_else(|| format!("row {i}: key is null"))?,
                status,
                error_message: t("error_message"),
                width: u32_of(width[i]),
                height: u32_of(height[i]),
                original_width: u32_of(ow[i]),
                original_height: u32_of(oh[i]),
                exif: t("exif"),
                sha256: t("sha256"),
                blake3: t("blake3"),
                mime: t("mime"),
                bytes: u64_of(bytes[i]),
                encoded_bytes: u64_of(encoded[i]),
                format: t("format"),
                original_format: t("original_format"),
                page_url: t("page_url"),
                language: t("language"),
                phash: t("phash"),
                dup_of: t("dup_of"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{EncodedImage, ImageFormat};

    #[test]
    fn batches_are_bounded_by_text_bytes() {
        let row = |caption: &str| MetadataRow {
            caption: Some(caption.to_string()),
            ..MetadataRow::from_record(0, 0, &SampleRecord::default(), &ShardConfig::default())
        };
        let long = row(&"c".repeat(1000));
        let short = row("");
        let rows = [&long, &short, &long, &long, &short];
        let lens: Vec<usize> = byte_bounded_slices(&rows, 2100).map(<[_]>::len).collect();
        assert_eq!(lens, [3, 2], "every row kept, no slice past the budget");
        let lens: Vec<usize> = byte_bounded_slices(&rows, 10).map(<[_]>::len).collect();
        assert_eq!(
            lens,
            [1, 1, 1, 1, 1],
            "a row over the budget is a slice of its own"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.parquet");
        write_parquet(File::create(&path).unwrap(), &path, &rows, &[]).unwrap();
        assert_eq!(read_metadata(&path).unwrap().len(), 5);
    }

    #[test]
    fn json_member_is_indented_and_in_column_order() {
        let cfg = ShardConfig {
            extra_columns: vec!["source".into()],
            ..ShardConfig::default()
        };
        let rec = SampleRecord {
            url: "http://127.0.0.1/a.png".into(),
            caption: Some("a \"cat\"".into()),
            status: Some(Status::Success),
            image: Some(EncodedImage {
                bytes: b"\x89PNG\r\n\x1a\n".to_vec(),
                format: ImageFormat::Png,
                width: 4,
                height: 3,
            }),
            extra: vec![Some("web".into())],
            ..SampleRecord::default()
        };
        let json =
            String::from_utf8(MetadataRow::from_record(1, 5, &rec, &cfg).to_json_member()).unwrap();
        assert!(
            json.starts_with("{\n    \"source\": \"web\",\n    \"caption\": \"a \\\"cat\\\"\","),
            "{json}"
        );
        let order: Vec<usize> = [
            "\"url\"",
            "\"key\": \"000010005\"",
            "\"status\": \"success\"",
            "\"width\": 4",
            "\"exif\": null",
            "\"encoded_bytes\": 8",
            "\"format\": \"png\"",
            "\"dup_of\"",
        ]
        .iter()
        .map(|k| {
            json.find(k)
                .unwrap_or_else(|| panic!("{k} missing in {json}"))
        })
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{json}");
    }
}
