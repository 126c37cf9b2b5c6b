//! URL-list reading (`wit_crawler::input::read_rows`): txt, csv, tsv and jsonl lists (plain or
//! gzipped) with invalid UTF-8, long lines, stray quotes and separators; parquet lists whose URL
//! and caption columns have any type, nulls and invalid UTF-8.

use crate::run;
use arrow_array::{ArrayRef, BinaryArray, Int64Array, LargeStringArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use flate2::write::GzEncoder;
use flate2::Compression;
use parquet::arrow::ArrowWriter;
use proptest::prelude::*;
use std::io::Write;
use std::sync::Arc;
use wit_crawler::input::{read_rows, InputFormat, InputSpec};

fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => "http://127\\.0\\.0\\.1/[a-z]{0,8}\\.jpg".prop_map(String::into_bytes),
        2 => "[\"{},\t a-z:/]{0,40}".prop_map(String::into_bytes),
        2 => proptest::collection::vec(any::<u8>(), 0..80)
            .prop_map(|mut v| { v.retain(|&b| b != b'\n'); v }),
        1 => (1usize..300_000).prop_map(|n| [b"http://127.0.0.1/".as_slice(), &b"a".repeat(n)].concat()),
        1 => ("[a-z]{1,6}", "[a-z]{1,6}")
            .prop_map(|(u, c)| format!("{{\"url\": \"http://127.0.0.1/{u}\", \"caption\": \"{c}\"}}").into_bytes()),
    ]
}

fn list_file(format: &str, gz: bool, lines: &[Vec<u8>]) -> tempfile::TempPath {
    let mut body = match format {
        "csv" => b"url,caption\n".to_vec(),
        "tsv" => b"url\tcaption\n".to_vec(),
        _ => Vec::new(),
    };
    for l in lines {
        body.extend_from_slice(l);
        body.push(b'\n');
    }
    if gz {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&body).unwrap();
        body = enc.finish().unwrap();
    }
    let suffix = if gz {
        format!(".{format}.gz")
    } else {
        format!(".{format}")
    };
    let mut file = tempfile::Builder::new().suffix(&suffix).tempfile().unwrap();
    file.write_all(&body).unwrap();
    file.into_temp_path()
}

fn spec(path: &std::path::Path, format: Option<InputFormat>) -> InputSpec {
    InputSpec {
        paths: vec![path.to_path_buf()],
        format,
        url_col: "url".into(),
        caption_col: Some("caption".into()),
        extra_cols: Vec::new(),
    }
}

/// Reading a text list never panics or aborts, yields at most one row (or row error) per line,
/// and no row holds more bytes than the file.
pub(crate) fn check(runner: &mut proptest::test_runner::TestRunner) -> Result<(), String> {
    let format = proptest::sample::select(&["txt", "csv", "tsv", "jsonl"][..]);
    let strategy = (
        format,
        any::<bool>(),
        proptest::collection::vec(line(), 0..40),
    );
    run(runner, strategy, |(format, gz, lines)| {
        let path = list_file(format, gz, &lines);
        let size: usize = lines.iter().map(|l| l.len() + 1).sum();
        let Ok(rows) = read_rows(&spec(&path, None)) else {
            return Ok(());
        };
        let mut n = 0usize;
        for row in rows {
            n += 1;
            if let Ok(row) = row {
                let held = row.url.len() + row.caption.as_ref().map_or(0, String::len);
                prop_assert!(
                    held <= size.max(1) * 4,
                    "a row of {held} bytes from {size} list bytes"
                );
            }
            // CSV and TSV also end a record at a bare `\r`.
            let records = lines.len() + lines.iter().flatten().filter(|&&b| b == b'\r').count() + 1;
            prop_assert!(n <= records, "{n} rows from {records} line ends");
        }
        Ok(())
    })
}

#[derive(Debug, Clone)]
enum Column {
    Utf8(Vec<Option<String>>),
    LargeUtf8(Vec<Option<String>>),
    Binary(Vec<Option<Vec<u8>>>),
    Int(Vec<Option<i64>>),
}

fn column(rows: usize) -> impl Strategy<Value = Column> {
    let s = || proptest::option::of(crate::text());
    prop_oneof![
        proptest::collection::vec(s(), rows).prop_map(Column::Utf8),
        proptest::collection::vec(s(), rows).prop_map(Column::LargeUtf8),
        proptest::collection::vec(
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            rows
        )
        .prop_map(Column::Binary),
        proptest::collection::vec(proptest::option::of(any::<i64>()), rows).prop_map(Column::Int),
    ]
}

fn array(c: &Column) -> (DataType, ArrayRef) {
    match c {
        Column::Utf8(v) => (DataType::Utf8, Arc::new(StringArray::from(v.clone()))),
        Column::LargeUtf8(v) => (
            DataType::LargeUtf8,
            Arc::new(LargeStringArray::from(v.clone())),
        ),
        Column::Binary(v) => {
            let refs: Vec<Option<&[u8]>> = v.iter().map(|b| b.as_deref()).collect();
            (DataType::Binary, Arc::new(BinaryArray::from(refs)))
        }
        Column::Int(v) => (DataType::Int64, Arc::new(Int64Array::from(v.clone()))),
    }
}

/// Reading a parquet list with any column types never panics and yields at most its rows.
pub(crate) fn check_parquet(runner: &mut proptest::test_runner::TestRunner) -> Result<(), String> {
    let strategy = (0usize..30).prop_flat_map(|rows| (Just(rows), column(rows), column(rows)));
    run(runner, strategy, |(rows, url, caption)| {
        let (url_type, url_array) = array(&url);
        let (caption_type, caption_array) = array(&caption);
        let schema = Arc::new(Schema::new(vec![
            Field::new("url", url_type, true),
            Field::new("caption", caption_type, true),
        ]));
        let batch = RecordBatch::try_new(schema.clone(), vec![url_array, caption_array]).unwrap();
        let mut file = tempfile::Builder::new()
            .suffix(".parquet")
            .tempfile()
            .unwrap();
        let mut writer = ArrowWriter::try_new(file.as_file_mut(), schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let path = file.into_temp_path();
        let Ok(read) = read_rows(&spec(&path, None)) else {
            return Ok(());
        };
        let n = read.count();
        prop_assert!(n <= rows.max(1), "{n} rows from {rows}");
        Ok(())
    })
}
