//! `wit queries build` and `wit curate` end to end through the binary, on generated pools with
//! known query frequencies.

use crate::common;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Int32Array, ListArray, RecordBatch, StringArray, UInt64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

fn write_pool(path: &Path, captions: &[String]) {
    let urls: Vec<String> = (0..captions.len())
        .map(|i| format!("http://img.example/{i}.jpg"))
        .collect();
    let pages: Vec<String> = (0..captions.len())
        .map(|i| format!("http://page.example/{}", i / 5))
        .collect();
    let batch = RecordBatch::try_from_iter([
        (
            "url",
            Arc::new(StringArray::from_iter_values(urls.iter())) as ArrayRef,
        ),
        (
            "caption",
            Arc::new(StringArray::from_iter_values(captions.iter())) as ArrayRef,
        ),
        (
            "page_url",
            Arc::new(StringArray::from_iter_values(pages.iter())) as ArrayRef,
        ),
    ])
    .unwrap();
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn read_batches(path: &Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// (caption, matched query ids) of every kept pair.
fn kept(path: &Path) -> Vec<(String, Vec<i32>)> {
    let mut out = Vec::new();
    for b in read_batches(path) {
        assert!(
            b.column_by_name("page_url").is_some(),
            "input columns are carried through"
        );
        let caps = b
            .column_by_name("caption")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        let lists = b
            .column_by_name("matched_queries")
            .unwrap()
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap()
            .clone();
        for i in 0..b.num_rows() {
            let ids = lists
                .value(i)
                .as_any()
                .downcast_ref::<Int32Array>()
                .unwrap()
                .values()
                .to_vec();
            out.push((caps.value(i).to_string(), ids));
        }
    }
    out
}

/// A pool where "cat" is a head query (3000 pairs), "new york" a mid one (400), ten tail
/// queries have 12 pairs each, and some captions only contain the queries inside other words.
fn pool() -> Vec<String> {
    let mut c = Vec::new();
    c.extend((0..3000).map(|i| format!("A cat sleeping on sofa {i}")));
    c.extend((0..400).map(|i| format!("Skyline of NEW YORK at night {i}")));
    for t in 0..10 {
        c.extend((0..12).map(|i| format!("a tailword{t} in the wild {i}")));
    }
    c.extend((0..300).map(|i| format!("concatenation of newyorker things {i}")));
    c.extend((0..50).map(|i| format!("IMG_{:04}.jpg", 1000 + i)));
    c
}

fn queries_file(dir: &Path) -> std::path::PathBuf {
    let q = dir.join("queries.txt");
    let mut lines = vec!["cat".to_string(), "new york".to_string(), "img".to_string()];
    lines.extend((0..10).map(|t| format!("tailword{t}")));
    std::fs::write(&q, lines.join("\n") + "\n").unwrap();
    q
}

#[test]
fn curate_balances_head_queries_keeps_the_tail_and_is_deterministic() {
    let dir = common::scratch();
    let pairs = dir.path().join("pairs");
    std::fs::create_dir(&pairs).unwrap();
    let captions = pool();
    let (first, second) = captions.split_at(2000);
    write_pool(&pairs.join("a.parquet"), first);
    write_pool(&pairs.join("b.parquet"), second);
    let q = queries_file(dir.path());
    let run = |out: &str, seed: &str| {
        let out = dir.path().join(out);
        let o = out.to_str().unwrap();
        common::wit_ok(&[
            "curate",
            pairs.to_str().unwrap(),
            "-o",
            o,
            "--queries",
            q.to_str().unwrap(),
            "--max-per-query",
            "150",
            "--seed",
            seed,
            "--drop-boilerplate-captions",
        ]);
        let mut all = kept(&out.join("part-00000.parquet"));
        all.extend(kept(&out.join("part-00001.parquet")));
        (out, all)
    };
    let (out, all) = run("out1", "42");
    let count = |id: i32| all.iter().filter(|(_, ids)| ids.contains(&id)).count();
    assert!(
        (100..=200).contains(&count(0)),
        "head query cat cut near T=150: {}",
        count(0)
    );
    assert!(
        (100..=200).contains(&count(1)),
        "new york cut near T=150: {}",
        count(1)
    );
    for t in 0..10 {
        assert_eq!(count(3 + t), 12, "tail query {t} keeps all its pairs");
    }
    assert_eq!(
        count(2),
        0,
        "boilerplate file-name alts were dropped before matching"
    );
    for (caption, ids) in &all {
        assert!(
            !ids.is_empty() && !caption.contains("concatenation"),
            "{caption:?} {ids:?}"
        );
    }

    let table = &read_batches(&out.join("_query_counts.parquet"))[0];
    let col = |name: &str| {
        table
            .column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap()
            .clone()
    };
    let (before, after) = (col("count_before"), col("count_after"));
    assert_eq!(
        (
            before.value(0),
            before.value(1),
            before.value(2),
            before.value(3)
        ),
        (3000, 400, 0, 12)
    );
    assert_eq!(after.value(0) as usize, count(0));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_curate.json")).unwrap()).unwrap();
    assert_eq!(summary["rows"], 3870);
    assert_eq!(summary["kept"].as_u64().unwrap() as usize, all.len());
    assert_eq!(
        summary["filtered"]["caption is boilerplate (a file name)"],
        50
    );

    let (_, again) = run("out2", "42");
    assert_eq!(all, again, "same seed, same pairs");
    let (_, other) = run("out3", "43");
    assert_ne!(all, other, "another seed samples other pairs");
}

#[test]
fn curate_names_the_columns_when_the_caption_column_is_missing() {
    let dir = common::scratch();
    let pool = dir.path().join("p.parquet");
    write_pool(&pool, &["a cat".to_string()]);
    let q = queries_file(dir.path());
    let out = common::wit(&[
        "curate",
        pool.to_str().unwrap(),
        "-o",
        dir.path().join("o").to_str().unwrap(),
        "--queries",
        q.to_str().unwrap(),
        "--caption-col",
        "TEXT",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TEXT") && err.contains("url, caption, page_url"),
        "{err}"
    );
}

#[test]
fn queries_build_then_curate_matches_built_bigrams() {
    let dir = common::scratch();
    let mut text = String::new();
    for i in 0..60 {
        text.push_str(&format!("the golden gate bridge stands over water{i}\n"));
        text.push_str(&format!("a small boat sails on the bay near pier{i}\n"));
    }
    std::fs::write(dir.path().join("wiki.txt"), &text).unwrap();
    std::fs::write(dir.path().join("titles.txt"), "Alcatraz Island\n").unwrap();
    let q = dir.path().join("q.txt");
    common::wit_ok(&[
        "queries",
        "build",
        "--text",
        dir.path().join("wiki.txt").to_str().unwrap(),
        "-o",
        q.to_str().unwrap(),
        "--min-count",
        "50",
        "--min-pmi",
        "10",
        "--titles",
        dir.path().join("titles.txt").to_str().unwrap(),
    ]);
    let queries: Vec<String> = std::fs::read_to_string(&q)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for expected in ["golden gate", "gate bridge", "bridge", "alcatraz island"] {
        assert!(
            queries.iter().any(|x| x == expected),
            "{expected} missing from {queries:?}"
        );
    }
    assert!(
        !queries.iter().any(|x| x.starts_with("water")),
        "words under --min-count are left out"
    );
    assert!(
        !queries.iter().any(|x| x == "the golden"),
        "a bigram with a common word has low PMI"
    );

    let pool = dir.path().join("p.parquet");
    write_pool(
        &pool,
        &[
            "View of the Golden Gate at dusk".to_string(),
            "goldengate".to_string(),
        ],
    );
    let out = dir.path().join("o");
    common::wit_ok(&[
        "curate",
        pool.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--queries",
        q.to_str().unwrap(),
    ]);
    let rows = kept(&out.join("part-00000.parquet"));
    assert_eq!(rows.len(), 1);
    let golden_gate = queries.iter().position(|x| x == "golden gate").unwrap() as i32;
    assert!(rows[0].1.contains(&golden_gate));
}
