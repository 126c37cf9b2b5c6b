//! Writing shards and reading them back: contents, key order, determinism, stats and the index.

use crate::common::*;
use std::fs;
use wit_shards::*;

/// The downloader moves writers and readers across threads.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<ShardWriter>();
    send::<ShardReader<fs::File>>();
};

fn read_all(path: &std::path::Path) -> Vec<Sample> {
    let file = fs::File::open(path).unwrap();
    ShardReader::new(std::io::BufReader::new(file))
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn round_trip_keeps_every_sample_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let rows = records(40);
    let stats = write_shard(dir.path(), 3, &shuffled(&rows, 11));

    let samples = read_all(&dir.path().join("00003.tar"));
    let successes: Vec<_> = rows
        .iter()
        .filter(|(_, r)| r.status == Some(Status::Success))
        .collect();
    assert_eq!(samples.len(), successes.len());
    for (sample, (row, rec)) in samples.iter().zip(&successes) {
        assert_eq!(sample.key, expected_key(3, *row));
        let exts: Vec<&str> = sample.members.iter().map(|(e, _)| e.as_str()).collect();
        let want: &[&str] = if rec.caption.is_some() {
            &["json", "png", "txt"]
        } else {
            &["json", "png"]
        };
        assert_eq!(exts, want, "members in sorted-extension order");
        assert_eq!(
            sample.image().unwrap(),
            ("png", rec.image.as_ref().unwrap().bytes.as_slice())
        );
        assert_eq!(sample.caption(), rec.caption.as_deref());
        let json: serde_json::Value = serde_json::from_slice(sample.get("json").unwrap()).unwrap();
        assert_eq!(json["key"], expected_key(3, *row).as_str());
        assert_eq!(json["url"], rec.url.as_str());
        assert_eq!(json["status"], "success");
        assert_eq!(json["width"], rec.image.as_ref().unwrap().width);
        assert_eq!(json["source"], serde_json::json!(rec.extra[0]));
        assert_eq!(json["caption"], serde_json::json!(rec.caption));
    }

    let meta = read_metadata(&dir.path().join("00003.parquet")).unwrap();
    assert_eq!(
        meta.len(),
        rows.len(),
        "one parquet row per input row, failures included"
    );
    for (m, (row, rec)) in meta.iter().zip(&rows) {
        assert_eq!(m.key, expected_key(3, *row), "parquet rows sorted by key");
        assert_eq!(m.url, rec.url);
        assert_eq!(m.caption, rec.caption);
        assert_eq!(Some(m.status), rec.status);
        assert_eq!(m.error_message, rec.error_message);
        assert_eq!(m.extra, vec![("source".to_string(), rec.extra[0].clone())]);
        assert_eq!(m.width, rec.image.as_ref().map(|i| i.width));
        assert_eq!(m.original_width, rec.original_width);
        assert_eq!(m.bytes, rec.original_bytes);
        assert_eq!(
            m.encoded_bytes,
            rec.image.as_ref().map(|i| i.bytes.len() as u64)
        );
        assert_eq!(m.sha256, rec.sha256);
        assert_eq!(m.format.as_deref(), rec.image.as_ref().map(|_| "png"));
    }

    let on_disk = ShardStats::read(&dir.path().join("00003_stats.json")).unwrap();
    let count = |s: Status| rows.iter().filter(|(_, r)| r.status == Some(s)).count() as u64;
    assert_eq!(on_disk.count, 40);
    assert_eq!(on_disk.successes, count(Status::Success));
    assert_eq!(on_disk.failed_to_download, count(Status::FailedToDownload));
    assert_eq!(on_disk.failed_to_resize, count(Status::FailedToResize));
    assert_eq!(on_disk.filtered, count(Status::Filtered));
    assert_eq!(on_disk.status_dict["success"], count(Status::Success));
    assert_eq!(
        on_disk.status_dict["HTTP 404"],
        count(Status::FailedToDownload)
    );
    assert_eq!(stats.successes, on_disk.successes);
    assert!(on_disk.end_time >= on_disk.start_time && on_disk.start_time > 1.6e9);
}

#[test]
fn stats_json_has_img2dataset_fields() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(dir.path(), 0, &records(10));
    let text = fs::read_to_string(dir.path().join("00000_stats.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for field in [
        "count",
        "successes",
        "failed_to_download",
        "failed_to_resize",
        "duration",
        "start_time",
        "end_time",
        "status_dict",
        "filtered",
        "opted_out",
        "disallowed_by_robots",
        "summary",
    ] {
        assert!(v.get(field).is_some(), "_stats.json lacks {field}: {text}");
    }
    assert!(v["start_time"].is_f64() && v["status_dict"].is_object());
}

#[test]
fn arrival_order_does_not_change_the_bytes() {
    let rows = records(60);
    let orders = [
        rows.clone(),
        rows.iter().rev().cloned().collect(),
        shuffled(&rows, 7),
        shuffled(&rows, 23),
    ];
    let mut outputs = Vec::new();
    for order in &orders {
        let dir = tempfile::tempdir().unwrap();
        write_shard(dir.path(), 12, order);
        let tar = fs::read(dir.path().join("00012.tar")).unwrap();
        let parquet = fs::read(dir.path().join("00012.parquet")).unwrap();
        outputs.push((tar, parquet, dir));
    }
    for (tar, parquet, _) in &outputs[1..] {
        assert!(tar == &outputs[0].0, "tar bytes depend on arrival order");
        assert!(
            parquet == &outputs[0].1,
            "parquet bytes depend on arrival order"
        );
    }
    assert_eq!(outputs[0].0.len() % 512, 0);
}

#[test]
fn tar_headers_are_deterministic_ustar() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(dir.path(), 1, &records(8));
    let tar = fs::read(dir.path().join("00001.tar")).unwrap();
    let first = &tar[..512];
    assert_eq!(&first[257..263], b"ustar\0", "POSIX ustar magic");
    assert_eq!(&first[263..265], b"00", "ustar version");
    let field = |r: std::ops::Range<usize>| {
        String::from_utf8_lossy(&first[r])
            .trim_end_matches(['\0', ' '])
            .to_string()
    };
    assert_eq!(field(0..100), format!("{}.json", expected_key(1, 0)));
    assert_eq!(field(100..108), "0000444", "mode 0444");
    assert_eq!(
        u64::from_str_radix(&field(136..148), 8).unwrap(),
        0,
        "mtime 0"
    );
    assert_eq!(
        u64::from_str_radix(&field(108..116), 8).unwrap(),
        0,
        "uid 0"
    );
    assert_eq!(first[156], b'0', "regular file");
    assert!(
        tar[tar.len() - 1024..].iter().all(|&b| b == 0),
        "end-of-archive marker"
    );
}

#[test]
fn shard_index_lists_only_finalized_shards() {
    let dir = tempfile::tempdir().unwrap();
    let rows = records(30);
    write_shard(dir.path(), 0, &rows);
    write_shard(dir.path(), 2, &rows[..10]);
    let mut unfinished = ShardWriter::create(dir.path(), 1, &test_config()).unwrap();
    unfinished.write(0, &rows[0].1).unwrap();
    fs::write(
        dir.path().join("00003.tar"),
        b"a tar without its _stats.json marker",
    )
    .unwrap();

    let cfg = test_config();
    assert!(shard_is_complete(dir.path(), 0, &cfg));
    assert!(!shard_is_complete(dir.path(), 1, &cfg));
    assert!(!shard_is_complete(dir.path(), 3, &cfg));
    assert_eq!(
        completed_shards(dir.path()).unwrap(),
        vec!["00000", "00002"]
    );

    let path = write_shard_index(dir.path()).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(index["__kind__"], "wids-shard-index-v1");
    assert_eq!(index["wids_version"], 1);
    assert!(index["name"].is_string());
    let list = index["shardlist"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    for (entry, (name, n)) in list
        .iter()
        .zip([("00000", &rows[..]), ("00002", &rows[..10])])
    {
        let tar = dir.path().join(format!("{name}.tar"));
        assert_eq!(entry["url"], format!("{name}.tar"));
        assert_eq!(entry["nsamples"], read_all(&tar).len() as u64);
        assert_eq!(
            entry["nsamples"],
            n.iter()
                .filter(|(_, r)| r.status == Some(Status::Success))
                .count() as u64
        );
        assert_eq!(entry["filesize"], fs::metadata(&tar).unwrap().len());
    }
    drop(unfinished);
}

#[test]
fn bad_records_are_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let rows = records(3);
    let mut w = ShardWriter::create(dir.path(), 0, &test_config()).unwrap();
    w.write(0, &rows[0].1).unwrap();
    let dup = w.write(0, &rows[0].1).unwrap_err().to_string();
    assert!(dup.contains("already written"), "{dup}");
    let out = w.write(100, &rows[1].1).unwrap_err().to_string();
    assert!(out.contains("next shard"), "{out}");
    let mut lying = rows[0].1.clone();
    lying.image.as_mut().unwrap().format = ImageFormat::Jpg;
    assert!(w
        .write(1, &lying)
        .unwrap_err()
        .to_string()
        .contains("not Jpg"));
    let mut no_image = rows[0].1.clone();
    no_image.image = None;
    assert!(w.write(1, &no_image).is_err());
    let mut wrong_extra = rows[0].1.clone();
    wrong_extra.extra.clear();
    assert!(w
        .write(1, &wrong_extra)
        .unwrap_err()
        .to_string()
        .contains("kept column"));
    let unset = SampleRecord {
        url: "u".into(),
        extra: vec![None],
        ..SampleRecord::default()
    };
    w.write(2, &unset).unwrap();
    assert_eq!(w.len(), 2);
    w.finish().unwrap();
    let meta = read_metadata(&dir.path().join("00000.parquet")).unwrap();
    assert_eq!(
        meta[1].status,
        Status::FailedToDownload,
        "unset status is a failure, never success"
    );
}
