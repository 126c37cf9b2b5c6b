//! Atomic finalization: whatever happens (drop, failure, kill -9), no partial file ever appears
//! under a final name, and `_stats.json` exists only when tar and parquet are complete.

use crate::common::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use wit_shards::*;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(dir.path(), 0, &test_config()).unwrap();
    for (row, rec) in records(10) {
        w.write(row, &rec).unwrap();
    }
    assert!(
        !names(dir.path()).is_empty(),
        "the spool exists while writing"
    );
    drop(w);
    assert_eq!(names(dir.path()), Vec::<String>::new());
}

#[test]
fn a_failed_finish_leaves_no_final_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(dir.path(), 0, &test_config()).unwrap();
    for (row, rec) in records(10) {
        w.write(row, &rec).unwrap();
    }
    // The parquet cannot be renamed onto a directory: finish fails after the tar was published.
    fs::create_dir(dir.path().join("00000.parquet")).unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(
        err.contains("00000.parquet") && err.contains("rename"),
        "{err}"
    );
    assert_eq!(
        names(dir.path()),
        vec!["00000.parquet"],
        "tar withdrawn, temporaries removed"
    );
    assert!(!shard_is_complete(dir.path(), 0, &test_config()));
}

#[test]
fn create_cleans_up_after_an_earlier_attempt() {
    let reference = tempfile::tempdir().unwrap();
    write_shard(reference.path(), 0, &records(20));
    let dir = tempfile::tempdir().unwrap();
    for junk in [
        ".00000.tar.tmp",
        ".00000.parquet.tmp",
        ".00000.spool.tmp",
        ".00000.stats.json.tmp",
        "00000.tar",
    ] {
        fs::write(dir.path().join(junk), b"half-written").unwrap();
    }
    fs::write(dir.path().join("00001.tar"), b"another shard").unwrap();
    write_shard(dir.path(), 0, &records(20));
    assert_eq!(
        names(dir.path()),
        vec![
            "00000.parquet",
            "00000.tar",
            "00000_stats.json",
            "00001.tar"
        ]
    );
    for f in ["00000.tar", "00000.parquet"] {
        assert!(
            fs::read(dir.path().join(f)).unwrap() == fs::read(reference.path().join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn a_rewrite_keeps_the_old_shard_until_the_new_one_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(dir.path(), 0, &records(20));
    let finals = ["00000.tar", "00000.parquet", "00000_stats.json"];
    let read_all = || finals.map(|f| fs::read(dir.path().join(f)).unwrap());
    let old = read_all();
    let mut w = ShardWriter::create(dir.path(), 0, &test_config()).unwrap();
    for (row, rec) in records(5) {
        w.write(row, &rec).unwrap();
    }
    assert!(
        read_all() == old,
        "the old shard is intact while the new one is written"
    );
    drop(w);
    assert!(
        read_all() == old,
        "an abandoned rewrite leaves the old shard"
    );
    assert!(shard_is_complete(dir.path(), 0, &test_config()));
    let mut w = ShardWriter::create(dir.path(), 0, &test_config()).unwrap();
    for (row, rec) in records(5) {
        w.write(row, &rec).unwrap();
    }
    assert_eq!(w.finish().unwrap().count, 5);
    let reference = tempfile::tempdir().unwrap();
    write_shard(reference.path(), 0, &records(5));
    for f in ["00000.tar", "00000.parquet"] {
        assert!(
            fs::read(dir.path().join(f)).unwrap() == fs::read(reference.path().join(f)).unwrap(),
            "{f} is the new shard's"
        );
    }
    assert_eq!(
        names(dir.path()),
        ["00000.parquet", "00000.tar", "00000_stats.json"]
    );
}

const CHILD_ENV: &str = "WIT_SHARDS_KILL_TEST_DIR";
const SHARDS: u64 = 3;

/// Records whose images carry 256 KiB of noise after the PNG, so each shard takes long enough
/// to write that kills land inside tar and parquet writes.
fn big_records() -> Vec<(u64, SampleRecord)> {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut noise = move |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect()
    };
    records(40)
        .into_iter()
        .map(|(row, mut rec)| {
            if let Some(image) = rec.image.as_mut() {
                image.bytes.extend(noise(256 * 1024));
            }
            (row, rec)
        })
        .collect()
}

/// The child half of the kill test: rewrite shards `0..SHARDS` forever until killed.
fn child_loop(dir: &Path) -> ! {
    let rows = big_records();
    for i in 0.. {
        write_shard(dir, i % SHARDS, &rows);
    }
    unreachable!("the loop above only ends when the process is killed")
}

#[test]
fn a_killed_writer_never_leaves_a_partial_final_file() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child_loop(Path::new(&dir));
    }
    let rows = big_records();
    let reference = tempfile::tempdir().unwrap();
    for id in 0..SHARDS {
        write_shard(reference.path(), id, &rows);
    }
    let finals: Vec<String> = (0..SHARDS)
        .flat_map(|id| ["tar", "parquet"].map(|ext| format!("{id:05}.{ext}")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // This test's name as the harness lists it: its module path without the crate.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let me = format!("{module}::a_killed_writer_never_leaves_a_partial_final_file");
    let mut child_wrote = false;
    for round in 0..10u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &me, "--nocapture"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(60 + round * 53));
        child.kill().unwrap();
        child.wait().unwrap();
        child_wrote |= !names(dir.path()).is_empty();
        for name in names(dir.path()).iter().filter(|n| !n.starts_with('.')) {
            let path = dir.path().join(name);
            if let Some(id) = name.strip_suffix("_stats.json") {
                ShardStats::read(&path).unwrap();
                for ext in ["tar", "parquet"] {
                    assert!(
                        dir.path().join(format!("{id}.{ext}")).is_file(),
                        "{name} without its {ext}"
                    );
                }
            } else {
                assert!(finals.contains(name), "unexpected final-named file {name}");
                assert!(
                    fs::read(&path).unwrap() == fs::read(reference.path().join(name)).unwrap(),
                    "round {round}: {name} is partial"
                );
            }
        }
    }
    assert!(
        child_wrote,
        "the killed child never wrote a file: does `--exact {me}` name this test?"
    );
    for id in 0..SHARDS {
        write_shard(dir.path(), id, &rows);
    }
    assert!(
        names(dir.path()).iter().all(|n| !n.starts_with('.')),
        "create() removed the killed run's temporaries"
    );
    assert_eq!(completed_shards(dir.path()).unwrap().len(), SHARDS as usize);
}
