//! Hostile rows, samples and files through the real `wit` binary: each bad input costs one row or
//! one sample, never the run, and memory stays bounded (issue #24, items 9, 11, 12, 13).

use crate::common::hostile::{wit_capped, wit_capped_fed, Feed, LoopbackServer, Route};
use crate::common::{scratch, wit_bin};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wit_shards::{EncodedImage, ImageFormat, SampleRecord, ShardConfig, ShardWriter, Status};

/// The bar: peak RSS per process.
const MAX_RSS: u64 = 512 << 20;
/// Address space for a capped run: tokio's and the allocator's reservations are virtual, so
/// this sits above the RSS bar, while a run that held a 1 GiB line would still blow it.
const ADDRESS_SPACE: u64 = 3 << 30;

fn png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(24, 16, |x, y| {
        image::Rgb([x as u8 * 9, y as u8 * 13, seed.wrapping_mul(37)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn download_args<'a>(list: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "download",
        list,
        "-o",
        out,
        "--samples-per-shard",
        "100",
        "--allow-net",
        "127.0.0.1/32",
        "--ignore-robots",
        "--retries",
        "0",
    ];
    args.extend_from_slice(extra);
    args
}

/// (status, error message) of every row of shard 0, in row order.
fn outcomes(out: &Path) -> Vec<(Status, Option<String>)> {
    let mut rows = wit_shards::read_metadata(&out.join("00000.parquet")).unwrap();
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    rows.into_iter()
        .map(|m| (m.status, m.error_message))
        .collect()
}

fn shard_files(out: &Path) -> [Vec<u8>; 3] {
    ["00000.tar", "00000.parquet", "00000_stats.json"].map(|f| std::fs::read(out.join(f)).unwrap())
}

/// Item 9: a `--retry-failed` run killed while it waits on stalled images leaves the finished
/// shard byte for byte, and a later retry completes it.
#[test]
fn an_interrupted_retry_keeps_the_finished_shard() {
    let dir = scratch();
    let (list, out) = (dir.path().join("list.txt"), dir.path().join("out"));
    let (list_s, out_s) = (list.to_str().unwrap(), out.to_str().unwrap());
    let images: Vec<Vec<u8>> = (0..6).map(png).collect();
    let serve = |broken: Option<Route>| {
        let routes = (0..6)
            .map(|i| {
                let route = match &broken {
                    Some(r) if i >= 4 => r.clone(),
                    _ => Route::ok("image/png", images[i].clone()),
                };
                (format!("/img/{i}.png"), route)
            })
            .collect();
        let server = LoopbackServer::start(routes);
        let urls: Vec<String> = (0..6)
            .map(|i| server.url(&format!("/img/{i}.png")))
            .collect();
        std::fs::write(&list, urls.join("\n") + "\n").unwrap();
        server
    };

    let first = serve(Some(Route::status(500)));
    let run = wit_capped(
        &download_args(list_s, out_s, &["--timeout", "5"]),
        ADDRESS_SPACE,
        120,
    );
    run.assert_bounded(MAX_RSS, Duration::from_secs(60));
    drop(first);
    let failed = outcomes(&out)
        .iter()
        .filter(|(s, _)| *s == Status::FailedToDownload)
        .count();
    assert_eq!(failed, 2);
    let before = shard_files(&out);

    let mut stall = Route::ok("image/png", images[4].clone());
    stall.stall_after = Some(10);
    let stalled = serve(Some(stall));
    let retry = download_args(list_s, out_s, &["--retry-failed", "--timeout", "60"]);
    let mut child = Command::new(wit_bin())
        .args(&retry)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stalled.hits("/img/4.png") + stalled.hits("/img/5.png") < 2 {
        assert!(
            Instant::now() < deadline,
            "the retry never asked for the failed rows"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: plain FFI on the child we started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(!status.success(), "the retry was interrupted: {status:?}");
    assert!(
        shard_files(&out) == before,
        "an interrupted retry left the finished shard as it was"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("00000")
                && !n.ends_with(".tar")
                && !n.ends_with(".parquet")
                && !n.ends_with("_stats.json")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(stalled);

    let fixed = serve(None);
    let run = wit_capped(
        &download_args(list_s, out_s, &["--retry-failed"]),
        ADDRESS_SPACE,
        120,
    );
    run.assert_bounded(MAX_RSS, Duration::from_secs(60));
    assert!(
        outcomes(&out).iter().all(|(s, _)| *s == Status::Success),
        "{:?}",
        outcomes(&out)
    );
    assert_eq!(
        fixed.hits("/img/0.png"),
        0,
        "successes are kept, not fetched again"
    );
}

/// Item 11: a list read from a pipe (`/dev/stdin`), with a 1 GiB line and a line that is not
/// UTF-8, gives one status row per line, in order, in bounded memory.
#[test]
fn a_piped_list_with_a_huge_line_and_bad_bytes_gives_one_row_per_line() {
    let dir = scratch();
    let out = dir.path().join("out");
    let server = LoopbackServer::start(HashMap::from([
        ("/a.png".to_string(), Route::ok("image/png", png(1))),
        ("/b.png".to_string(), Route::ok("image/png", png(2))),
    ]));
    let (a, b) = (server.url("/a.png"), server.url("/b.png"));
    let args = download_args(
        "/dev/stdin",
        out.to_str().unwrap(),
        &["--input-format", "txt", "--timeout", "5"],
    );
    let feed: Feed = Box::new(move |w| {
        let _ = writeln!(w, "{a}");
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..1024 {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = w.write_all(b"\nhttp://127.0.0.1/\xff\xfe.png\n");
        let _ = writeln!(w, "{b}");
    });
    let run = wit_capped_fed(&args, ADDRESS_SPACE, 120, Some(feed));
    run.assert_bounded(MAX_RSS, Duration::from_secs(120));
    let rows = outcomes(&out);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(
        (rows[0].0, rows[3].0),
        (Status::Success, Status::Success),
        "{rows:?}"
    );
    let message = |i: usize| rows[i].1.clone().unwrap_or_default();
    assert_eq!(rows[1].0, Status::FailedToDownload);
    assert!(message(1).contains("limit"), "{}", message(1));
    assert_eq!(rows[2].0, Status::FailedToDownload);
    assert!(message(2).contains("UTF-8"), "{}", message(2));
}

/// Shard `shard_id` of `dir`, holding one row: `rec`.
fn write_one(dir: &Path, shard_id: u64, rec: &SampleRecord) {
    let cfg = ShardConfig {
        samples_per_shard: 100,
        oom_shard_count: 5,
        extra_columns: Vec::new(),
    };
    let mut w = ShardWriter::create(dir, shard_id, &cfg).unwrap();
    w.write(0, rec).unwrap();
    w.finish().unwrap();
}

fn success(url: &str, caption: &str) -> SampleRecord {
    let bytes = png(3);
    SampleRecord {
        url: url.into(),
        caption: Some(caption.into()),
        status: Some(Status::Success),
        image: Some(EncodedImage {
            bytes,
            format: ImageFormat::Png,
            width: 24,
            height: 16,
        }),
        ..SampleRecord::default()
    }
}

/// The ustar header of an empty regular file `name` (no data blocks follow).
fn empty_member(name: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000444\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(b"00000000000\0");
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Item 12: a tar whose first sample has a million members: `wit stats` (which reads tars for
/// its sample grid) skips that one sample in linear time and shows the good one.
#[test]
fn a_sample_of_a_million_members_costs_one_sample() {
    let dir = scratch();
    let shards = dir.path().join("shards");
    write_one(
        &shards,
        0,
        &success("http://good.example/a.png", "a good sample"),
    );
    let tar_path = shards.join("00000.tar");
    let good = std::fs::read(&tar_path).unwrap();
    let mut tar = std::io::BufWriter::new(std::fs::File::create(&tar_path).unwrap());
    for i in 0..1_000_000u32 {
        tar.write_all(&empty_member(&format!("evil.m{i}"))).unwrap();
    }
    tar.write_all(&good).unwrap();
    tar.into_inner().unwrap().sync_all().unwrap();
    let html = dir.path().join("report.html");
    let run = wit_capped(
        &[
            "stats",
            shards.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
        ADDRESS_SPACE,
        60,
    );
    run.assert_bounded(MAX_RSS, Duration::from_secs(60));
    let report = std::fs::read_to_string(&html).unwrap();
    assert!(
        report.contains("a good sample"),
        "the good sample is in the grid"
    );
}

/// Item 13: hostnames, errors, captions and languages holding terminal escapes reach the
/// terminal escaped.
#[test]
fn stats_never_prints_terminal_escapes_from_the_data() {
    let dir = scratch();
    let shards = dir.path().join("shards");
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\u{202e}";
    let mut rec = success(
        &format!("http://a{evil}b.example/x.png"),
        &format!("word{evil} again <script>alert(1)</script>"),
    );
    rec.language = Some(format!("en{evil}"));
    write_one(&shards, 0, &rec);
    let mut bad = SampleRecord {
        url: format!("http://c{evil}.example/y.png"),
        status: Some(Status::FailedToDownload),
        error_message: Some(format!("HTTP 500 {evil}")),
        ..SampleRecord::default()
    };
    bad.caption = Some(evil.into());
    write_one(&shards, 1, &bad);
    let html = dir.path().join("report.html");
    let run = wit_capped(
        &[
            "stats",
            shards.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
        ADDRESS_SPACE,
        60,
    );
    run.assert_bounded(MAX_RSS, Duration::from_secs(60));
    let stdout = String::from_utf8(run.output.stdout.clone()).unwrap();
    assert!(
        stdout.contains("\\u{1b}"),
        "the escape is shown, escaped:\n{stdout}"
    );
    for text in [stdout.as_str(), run.stderr().as_str()] {
        assert!(
            !text
                .chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "raw control characters reached the terminal: {text:?}"
        );
    }
    let report = std::fs::read_to_string(&html).unwrap();
    assert!(
        !report.contains("<script>alert"),
        "the report escapes data as HTML"
    );
}
