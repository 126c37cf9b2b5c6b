//! `wit download` end to end: the real binary against the embedded test web on 127.0.0.1.

use crate::common::{scratch, status_rows, wit, wit_bin, wit_ok};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use webimagetext::testweb::{TestWeb, TestWebConfig};

/// Writes the site's manifest as a jsonl URL list with the expected outcome as an extra column.
fn url_list(web: &TestWeb, dir: &Path) -> PathBuf {
    let path = dir.join("urls.jsonl");
    let lines: Vec<String> = web
        .manifest()
        .iter()
        .map(|r| {
            serde_json::json!({"url": r.url, "caption": r.caption, "expected": r.expected})
                .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn download_args<'a>(list: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "download",
        list,
        "-o",
        out,
        "--caption-col",
        "caption",
        "--save-additional-columns",
        "expected",
        "--allow-net",
        "127.0.0.1/32",
        "--timeout",
        "3",
    ];
    args.extend_from_slice(extra);
    args
}

fn shard_files(out: &Path, ext: &str) -> BTreeMap<String, PathBuf> {
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect()
}

/// name → bytes of every tar and parquet: what "the same output" means.
fn output_bytes(out: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    for ext in ["tar", "parquet"] {
        for (name, path) in shard_files(out, ext) {
            all.insert(name, std::fs::read(path).unwrap());
        }
    }
    all
}

fn assert_same_output(a: &Path, b: &Path, what: &str) {
    let (a, b) = (output_bytes(a), output_bytes(b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: different shard files"
    );
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{what}: {name} differs");
    }
}

#[test]
fn every_status_matches_the_manifest_and_no_guard_is_crossed() {
    let web = TestWeb::start(TestWebConfig {
        seed: 11,
        pages: 12,
        faults: true,
    })
    .unwrap();
    let dir = scratch();
    let list = url_list(&web, dir.path());
    let out = dir.path().join("out");
    let started = Instant::now();
    let mut child = Command::new(wit_bin())
        .args(download_args(
            list.to_str().unwrap(),
            out.to_str().unwrap(),
            &["--samples-per-shard", "40"],
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            child.kill().unwrap();
            panic!("wit download did not finish against hanging servers");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "wit download failed: {status:?}");

    let rows = status_rows(&out);
    assert_eq!(
        rows.len(),
        web.manifest().len(),
        "one status row per input row"
    );
    let mut wrong = Vec::new();
    for row in &rows {
        let expected = row.extra[0].1.as_deref().unwrap();
        if row.status.as_str() != expected {
            wrong.push(format!(
                "{}: got {} ({:?}), expected {expected}",
                row.url,
                row.status.as_str(),
                row.error_message
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "statuses differ from the manifest:\n{}",
        wrong.join("\n")
    );
    for expected in [
        "success",
        "failed_to_download",
        "failed_to_resize",
        "opted_out",
        "disallowed_by_robots",
    ] {
        assert!(
            rows.iter().any(|r| r.status.as_str() == expected),
            "the test web should exercise {expected}"
        );
    }

    let stats = web.stats();
    assert_eq!(
        stats["disallowed"], 0,
        "robots.txt-disallowed paths were fetched: {stats}"
    );
    assert_eq!(
        stats["probe"], 0,
        "the 127.0.0.2 SSRF probe was contacted: {stats}"
    );
    assert_eq!(
        stats["probe_requests"], 0,
        "the SSRF probe got requests: {stats}"
    );
    assert_eq!(
        stats["robots_txt"], 1,
        "robots.txt is fetched once per host: {stats}"
    );

    let successes = rows
        .iter()
        .filter(|r| r.status == wit_shards::Status::Success)
        .count();
    let mut images = 0;
    for tar in shard_files(&out, "tar").into_values() {
        for sample in wit_shards::ShardReader::new(std::fs::File::open(tar).unwrap()) {
            let sample = sample.unwrap();
            let (_, bytes) = sample.image().expect("every sample has an image");
            image::load_from_memory(bytes).expect("stored images decode");
            images += 1;
        }
    }
    assert_eq!(images, successes, "one tar sample per success");
    assert!(out.join("shardindex.json").exists());
}

fn plain_web() -> TestWeb {
    TestWeb::start(TestWebConfig {
        seed: 5,
        pages: 12,
        faults: false,
    })
    .unwrap()
}

#[test]
fn killed_runs_rerun_to_the_same_bytes_and_partitions_add_up() {
    let web = plain_web();
    let dir = scratch();
    let list = url_list(&web, dir.path());
    let list = list.to_str().unwrap();
    let full = dir.path().join("full");
    let sps = ["--samples-per-shard", "8"];
    wit_ok(&download_args(list, full.to_str().unwrap(), &sps));
    assert!(
        shard_files(&full, "tar").len() >= 4,
        "the test needs several shards"
    );

    let killed = dir.path().join("killed");
    let killed_s = killed.to_str().unwrap();
    for _ in 0..2 {
        let mut child = Command::new(wit_bin())
            .args(download_args(list, killed_s, &sps))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let wait = rand::random_range(50..1500);
        std::thread::sleep(Duration::from_millis(wait));
        let _ = child.kill(); // SIGKILL on unix; it may already have finished
        child.wait().unwrap();
    }
    wit_ok(&download_args(list, killed_s, &sps));
    assert_same_output(&full, &killed, "killed and rerun");

    let parts = dir.path().join("parts");
    let parts_s = parts.to_str().unwrap();
    wit_ok(&download_args(
        list,
        parts_s,
        &[sps[0], sps[1], "--part", "1/3"],
    ));
    wit_ok(&download_args(
        list,
        parts_s,
        &[sps[0], sps[1], "--part", "0/3"],
    ));
    let out = Command::new(wit_bin())
        .args(download_args(
            list,
            parts_s,
            &[sps[0], sps[1], "--part-count", "3"],
        ))
        .env("SLURM_ARRAY_TASK_ID", "3")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_output(&full, &parts, "three partitions");
}

#[test]
fn retry_failed_refetches_only_failed_rows() {
    let web = plain_web();
    let dir = scratch();
    let list = url_list(&web, dir.path());
    let list = list.to_str().unwrap();
    let sps = ["--samples-per-shard", "16"];
    let full = dir.path().join("full");
    wit_ok(&download_args(list, full.to_str().unwrap(), &sps));

    let retried = dir.path().join("retried");
    let retried_s = retried.to_str().unwrap();
    wit_ok(&download_args(
        list,
        retried_s,
        &[sps[0], sps[1], "--max-body-bytes", "12000"],
    ));
    let first = status_rows(&retried);
    let too_big = first
        .iter()
        .filter(|r| {
            r.error_message
                .as_deref()
                .is_some_and(|m| m.contains("larger than"))
        })
        .count();
    assert!(too_big > 0, "the body cap should fail some downloads");
    let failed = first
        .iter()
        .filter(|r| r.status == wit_shards::Status::FailedToDownload)
        .count();

    let before = web.stats()["images"].as_u64().unwrap();
    let plain_rerun = wit(&download_args(list, retried_s, &sps));
    assert!(plain_rerun.status.success());
    assert_eq!(
        web.stats()["images"].as_u64().unwrap(),
        before,
        "incremental rerun fetches nothing"
    );

    wit_ok(&download_args(
        list,
        retried_s,
        &[sps[0], sps[1], "--retry-failed"],
    ));
    let fetched = web.stats()["images"].as_u64().unwrap() - before;
    assert!(
        fetched as usize <= failed,
        "--retry-failed fetched {fetched} images but only {failed} rows had failed"
    );
    assert_same_output(&full, &retried, "retried");
}

/// Peak resident memory (VmHWM, KiB) of a `wit download` over `rows` rows with 3 KB captions,
/// all pointing at missing pages of the test web.
fn peak_rss_kib(web: &TestWeb, dir: &Path, rows: usize) -> u64 {
    let list = dir.join(format!("urls-{rows}.jsonl"));
    let caption = "x".repeat(3000);
    let lines: Vec<String> = (0..rows)
        .map(|i| {
            let url = format!("{}/missing/{i}.jpg", web.base_url());
            serde_json::json!({"url": url, "caption": caption, "expected": "failed_to_download"})
                .to_string()
        })
        .collect();
    std::fs::write(&list, lines.join("\n") + "\n").unwrap();
    let out = dir.join(format!("out-{rows}"));
    let args = download_args(
        list.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--samples-per-shard", "500", "--retries", "0"],
    );
    let mut child = Command::new(wit_bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Ok(status) = std::fs::read_to_string(&status_file) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak = peak.max(hwm.unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        status_rows(&out).len(),
        rows,
        "one status row per input row"
    );
    peak
}

#[test]
fn memory_stays_flat_as_the_input_grows() {
    let web = plain_web();
    let dir = scratch();
    let small = peak_rss_kib(&web, dir.path(), 3_000);
    let large = peak_rss_kib(&web, dir.path(), 12_000);
    assert!(small > 0 && large > 0, "could not read /proc/PID/status");
    // Holding the input would add about 27 MB (9,000 more rows × 3 KB); flat streaming adds none.
    assert!(
        large < small + 12 * 1024,
        "peak memory grew from {small} KiB to {large} KiB with 4× the input"
    );
}

/// Writes `rows` of (url, caption, expected) as a jsonl URL list.
fn write_list(path: &Path, rows: &[(String, String, &str)]) {
    let lines: Vec<String> = rows
        .iter()
        .map(|(url, caption, expected)| {
            serde_json::json!({"url": url, "caption": caption, "expected": expected}).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn caption_filter_drops_boilerplate_rows_without_fetching_them() {
    let web = plain_web();
    let dir = scratch();
    let manifest = web.manifest();
    assert!(manifest.iter().any(|r| r.boilerplate) && manifest.iter().any(|r| !r.boilerplate));
    // Boilerplate rows point at a listener that only counts connections: any request for
    // them (robots.txt included) leaves a connection in its backlog.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://{}/boilerplate.jpg", trap.local_addr().unwrap());
    let rows: Vec<_> = manifest
        .iter()
        .map(|r| {
            let url = if r.boilerplate { &trap_url } else { &r.url };
            (url.clone(), r.caption.clone(), r.expected)
        })
        .collect();
    let list = dir.path().join("trapped.jsonl");
    write_list(&list, &rows);
    let out = dir.path().join("out");
    wit_ok(&download_args(
        list.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--drop-boilerplate-captions"],
    ));
    assert!(
        trap.accept().is_err(),
        "a boilerplate row was fetched although its caption fails the filter"
    );

    let got = status_rows(&out);
    assert_eq!(got.len(), manifest.len(), "one status row per input row");
    for (row, m) in got.iter().zip(manifest) {
        assert_eq!(
            row.caption.as_deref(),
            Some(m.caption.as_str()),
            "input order"
        );
        if m.boilerplate {
            assert_eq!(row.status, wit_shards::Status::Filtered, "{:?}", m.caption);
            let reason = row.error_message.as_deref().unwrap_or_default();
            assert!(reason.starts_with("caption is boilerplate"), "{reason}");
        } else {
            assert_eq!(row.url, m.url);
            assert_eq!(row.status.as_str(), m.expected, "{:?}", m.caption);
        }
    }
}

/// `count` rows cycling over `distinct` success images of the test web, each URL made unique
/// by `?n=row`, all with one caption.
fn repeated_images(web: &TestWeb, distinct: usize, count: usize) -> Vec<(String, String, &str)> {
    let images: Vec<&str> = web
        .manifest()
        .iter()
        .filter(|r| r.expected == "success")
        .map(|r| r.url.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .take(distinct)
        .collect();
    assert_eq!(images.len(), distinct, "the test web has too few images");
    (0..count)
        .map(|n| {
            let url = format!("{}?n={n}", images[n % distinct]);
            (url, "the same caption".to_string(), "success")
        })
        .collect()
}

#[test]
fn dedup_and_repeat_cap_are_decided_in_row_order_and_survive_kills() {
    let web = plain_web();
    let dir = scratch();
    let (distinct, count, cap) = (6, 24, 20);
    let list = dir.path().join("repeated.jsonl");
    write_list(&list, &repeated_images(&web, distinct, count));
    let list = list.to_str().unwrap();
    let flags = |mode| {
        let cap = "20"; // `cap` above
        vec![
            "--samples-per-shard",
            "5",
            "--dedup",
            mode,
            "--max-caption-repeats",
            cap,
        ]
    };

    let exact = dir.path().join("exact");
    wit_ok(&download_args(
        list,
        exact.to_str().unwrap(),
        &flags("exact"),
    ));
    let rows = status_rows(&exact);
    assert_eq!(rows.len(), count);
    for (n, row) in rows.iter().enumerate() {
        if n >= cap {
            assert_eq!(row.status, wit_shards::Status::Filtered, "row {n}");
            let reason = row.error_message.as_deref().unwrap_or_default();
            assert!(
                reason.contains("--max-caption-repeats"),
                "row {n}: {reason}"
            );
        } else if n < distinct {
            assert_eq!(row.status, wit_shards::Status::Success, "row {n}");
            assert_eq!(row.dup_of, None, "row {n}");
            assert!(row.phash.is_some(), "row {n} has its perceptual hash");
        } else {
            assert_eq!(row.status, wit_shards::Status::Filtered, "row {n}");
            assert_eq!(
                row.dup_of.as_ref(),
                Some(&rows[n % distinct].key),
                "row {n}"
            );
        }
    }
    let stored: usize = shard_files(&exact, "tar")
        .into_values()
        .map(|t| wit_shards::ShardReader::new(std::fs::File::open(t).unwrap()).count())
        .sum();
    assert_eq!(stored, distinct, "duplicates have no tar member");

    let full = dir.path().join("full");
    wit_ok(&download_args(list, full.to_str().unwrap(), &flags("near")));
    let killed = dir.path().join("killed");
    let killed_s = killed.to_str().unwrap();
    for _ in 0..2 {
        let mut child = Command::new(wit_bin())
            .args(download_args(list, killed_s, &flags("near")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rand::random_range(50..800)));
        let _ = child.kill();
        child.wait().unwrap();
    }
    wit_ok(&download_args(list, killed_s, &flags("near")));
    assert_same_output(&full, &killed, "dedup killed and rerun");
}

#[test]
fn malformed_input_lines_become_failed_rows_and_the_run_goes_on() {
    let web = plain_web();
    let dir = scratch();
    let manifest: Vec<_> = web.manifest().iter().take(6).collect();
    let mut lines: Vec<String> = manifest
        .iter()
        .map(|r| {
            serde_json::json!({"url": r.url, "caption": r.caption, "expected": r.expected})
                .to_string()
        })
        .collect();
    lines.insert(2, "{not json".into());
    lines.insert(4, r#"{"caption": "a line without a url"}"#.into());
    let list = dir.path().join("mixed.jsonl");
    std::fs::write(&list, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    wit_ok(&download_args(
        list.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    ));
    let got = status_rows(&out);
    assert_eq!(got.len(), lines.len(), "one status row per input line");
    for (i, row) in got.iter().enumerate() {
        let line = i + 1;
        if line == 3 || line == 5 {
            assert_eq!(row.status, wit_shards::Status::FailedToDownload);
            let msg = row.error_message.as_deref().unwrap_or_default();
            assert!(
                msg.starts_with("malformed input line") && msg.contains(&format!("line {line}")),
                "{msg}"
            );
        } else {
            let m = &manifest[i - usize::from(line > 3) - usize::from(line > 5)];
            assert_eq!(
                (row.url.as_str(), row.status.as_str()),
                (m.url.as_str(), m.expected)
            );
        }
    }
}
