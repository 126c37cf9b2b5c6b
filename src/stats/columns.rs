//! Typed access to parquet columns by name, whatever integer or string encoding a writer chose
//! (ours, img2dataset's pyarrow, DuckDB's), read in bounded record batches.

use anyhow::Context;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int16Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::fs::File;
use std::path::Path;

/// Rows per batch: bounds memory per open file.
const BATCH: usize = 4096;

/// Streams the record batches of a parquet file.
pub fn batches(path: &Path) -> anyhow::Result<impl Iterator<Item = anyhow::Result<RecordBatch>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a readable parquet file", path.display()))?
        .with_batch_size(BATCH)
        .build()?;
    let name = path.display().to_string();
    Ok(reader.map(move |b| b.with_context(|| format!("reading {name}"))))
}

/// A string column of a batch, or `None` when absent or not a string type.
pub fn strings(batch: &RecordBatch, name: &str) -> Option<Vec<Option<String>>> {
    let col = batch.column_by_name(name)?;
    let get = |i: usize| -> Option<String> {
        if col.is_null(i) {
            return None;
        }
        match col.data_type() {
            DataType::Utf8 => Some(col.as_string::<i32>().value(i).to_owned()),
            DataType::LargeUtf8 => Some(col.as_string::<i64>().value(i).to_owned()),
            DataType::Utf8View => Some(col.as_string_view().value(i).to_owned()),
            _ => None,
        }
    };
    matches!(
        col.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
    .then(|| (0..col.len()).map(get).collect())
}

/// An integer column of a batch as i64, or `None` when absent or not an integer type.
pub fn ints(batch: &RecordBatch, name: &str) -> Option<Vec<Option<i64>>> {
    let col = batch.column_by_name(name)?;
    let values: Vec<Option<i64>> = match col.data_type() {
        DataType::Int16 => col
            .as_primitive::<Int16Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        DataType::Int32 => col
            .as_primitive::<Int32Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        DataType::Int64 => col.as_primitive::<Int64Type>().iter().collect(),
        DataType::UInt32 => col
            .as_primitive::<UInt32Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        DataType::UInt64 => col
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| v.map(|x| x as i64))
            .collect(),
        _ => return None,
    };
    Some(values)
}

/// The first of `names` present as an integer column.
pub fn ints_any(batch: &RecordBatch, names: &[&str]) -> Option<Vec<Option<i64>>> {
    names.iter().find_map(|n| ints(batch, n))
}
