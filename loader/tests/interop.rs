//! Shards from Python webdataset's ShardWriter, wids indexes, and damaged shards.

use crate::common;
use crate::common::{config, jpeg, make_shards, python, write_tar};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use wit_loader::{Loader, LoaderError, ShardSource};

const WDS_WRITER: &str = r#"
import io, json, sys
import numpy as np
import webdataset as wds
from PIL import Image
out = sys.argv[1]
rng = np.random.default_rng(0)
formats = [("jpg", "JPEG"), ("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")]
expected = {}
with wds.ShardWriter(out + "/shard-%06d.tar", maxcount=5, verbose=0) as sink:
    for i in range(13):
        ext, fmt = formats[i % 4]
        arr = rng.integers(0, 255, size=(40 + i, 50 + 2 * i, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        key = f"sample{i:04d}"
        caption = f"picture number {i} \u00e9t\u00e9"
        sink.write({"__key__": key, ext: buf.getvalue(), "txt": caption})
        expected[key] = caption
print(json.dumps(expected))
"#;

#[test]
fn reads_every_sample_of_python_webdataset_shards() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_string_lossy().to_string();
    let expected: BTreeMap<String, String> =
        serde_json::from_str(python(WDS_WRITER, &[&out]).lines().last().unwrap()).unwrap();
    assert_eq!(expected.len(), 13);
    let mut cfg = config(vec![format!("{out}/shard-{{000000..000002}}.tar")], 4);
    cfg.single_pass = true;
    let mut l = Loader::new(cfg).unwrap();
    assert_eq!(l.total_samples(), 13);
    let mut got = BTreeMap::new();
    while let Some(b) = l.next_batch().unwrap() {
        got.extend(b.keys.into_iter().zip(b.captions));
    }
    assert_eq!(got, expected);
    assert_eq!(l.stats().skipped(), 0);
}

#[test]
fn wids_index_gives_counts_and_relative_urls() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("data");
    std::fs::create_dir(&sub).unwrap();
    make_shards(&sub, &[5, 8]);
    let index = serde_json::json!({
        "__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "t",
        "shardlist": [{"url": "00000.tar", "nsamples": 5, "filesize": 1},
                      {"url": "00001.tar", "nsamples": 8, "filesize": 1}]});
    let path = sub.join("shardindex.json");
    std::fs::write(&path, index.to_string()).unwrap();
    let l = Loader::new(config(vec![path.to_string_lossy().into()], 2)).unwrap();
    assert_eq!(l.total_samples(), 13);
    assert_eq!(l.batches_per_epoch(), 6);
}

#[test]
fn damaged_shards_are_skipped_and_counted_never_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut samples: Vec<common::RawSample> = (0..8u32)
        .map(|i| {
            (
                format!("good{i}"),
                vec![("jpg", jpeg(60, 50, i)), ("txt", b"a blue star".to_vec())],
            )
        })
        .collect();
    samples.push((
        "badjpeg".into(),
        vec![
            ("jpg", b"\xff\xd8\xffnot really".to_vec()),
            ("txt", b"x".to_vec()),
        ],
    ));
    samples.push(("nocaption".into(), vec![("jpg", jpeg(60, 50, 99))]));
    samples.push((
        "noimage".into(),
        vec![("json", b"{}".to_vec()), ("txt", b"y".to_vec())],
    ));
    let mut trunc = common::png(80, 80, 5);
    trunc.truncate(trunc.len() / 3);
    samples.push((
        "truncpng".into(),
        vec![("png", trunc), ("txt", b"z".to_vec())],
    ));
    write_tar(&d.join("mixed.tar"), &samples);

    let full = d.join("full.tar");
    make_shards(d, &[12]);
    std::fs::rename(d.join("00000.tar"), &full).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(d.join("truncated.tar"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(
        d.join("garbage.tar"),
        b"this is not a tar file at all, just text".repeat(40),
    )
    .unwrap();
    // An index that promises more samples than the shard has.
    let index = serde_json::json!({"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "t",
        "shardlist": [{"url": "full.tar", "nsamples": 20, "filesize": 1}]});
    std::fs::write(d.join("over.json"), index.to_string()).unwrap();

    let specs: Vec<String> = [
        "mixed.tar",
        "truncated.tar",
        "garbage.tar",
        "missing.tar",
        "over.json",
    ]
    .iter()
    .map(|n| d.join(n).to_string_lossy().into_owned())
    .collect();
    let mut cfg = config(specs, 3);
    cfg.single_pass = true;
    let mut l = Loader::new(cfg).unwrap();
    let mut keys = Vec::new();
    while let Some(b) = l.next_batch().unwrap() {
        keys.extend(b.keys);
    }
    let s = l.stats();
    assert!(
        keys.iter().filter(|k| k.starts_with("good")).count() == 8,
        "{keys:?}"
    );
    assert_eq!(s.skipped_corrupt_image, 2, "{s:?}");
    assert_eq!(s.skipped_no_caption, 1, "{s:?}");
    assert_eq!(s.skipped_no_image, 1, "{s:?}");
    assert_eq!(s.skipped_missing, 8, "index said 20, shard has 12: {s:?}");
    assert_eq!(keys.len() as u64, s.samples);
    // The truncated shard contributes the samples before the cut, and the full one all 12.
    assert!(keys.len() > 8 + 12, "{}", keys.len());

    // Training mode over the same damage still yields full, equal-size batches.
    let specs: Vec<String> = ["mixed.tar", "truncated.tar", "garbage.tar"]
        .iter()
        .map(|n| d.join(n).to_string_lossy().into_owned())
        .collect();
    let mut l = Loader::new(config(specs, 3)).unwrap();
    let n = l.batches_per_epoch();
    let mut batches = 0;
    while let Some(b) = l.next_batch().unwrap() {
        assert_eq!(b.keys.len(), 3);
        batches += 1;
    }
    assert_eq!(batches, n);
}

#[test]
fn all_corrupt_data_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let samples: Vec<common::RawSample> = (0..6)
        .map(|i| {
            (
                format!("bad{i}"),
                vec![("jpg", b"garbage".to_vec()), ("txt", b"t".to_vec())],
            )
        })
        .collect();
    let path = dir.path().join("bad.tar");
    write_tar(&path, &samples);
    let mut l = Loader::new(config(vec![path.to_string_lossy().into()], 2)).unwrap();
    let err = l.next_batch().expect_err("no decodable sample");
    assert!(err.to_string().contains("no decodable samples"), "{err}");
}

/// Local files until armed, then a panic on open: a bug in a shard source (or a decoder) on a
/// loader thread.
#[derive(Debug)]
struct PanicsWhenArmed(Arc<AtomicBool>);

impl ShardSource for PanicsWhenArmed {
    fn open(&self, url: &str) -> Result<Box<dyn std::io::Read + Send>, LoaderError> {
        assert!(
            !self.0.load(Ordering::SeqCst),
            "injected failure opening {url}"
        );
        Ok(Box::new(std::fs::File::open(url)?))
    }
}

#[test]
fn a_panicking_loader_thread_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let shards = make_shards(dir.path(), &[6, 6]);
    let armed = Arc::new(AtomicBool::new(false));
    let mut cfg = config(shards, 2);
    cfg.source = Arc::new(PanicsWhenArmed(armed.clone()));
    let mut l = Loader::new(cfg).unwrap();
    armed.store(true, Ordering::SeqCst);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(l.next_batch().map(|_| ()).map_err(|e| e.to_string()));
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the loader answered instead of waiting forever");
    let err = got.expect_err("a panicked thread is an error");
    assert!(
        err.contains("panicked") && err.contains("injected failure"),
        "{err}"
    );
}
