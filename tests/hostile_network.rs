//! The network layer against hostile servers, through the real `wit` binary: robots.txt per
//! RFC 9309 (unreachable means disallow, a wildcard-heavy file costs its own bytes), opt-outs
//! (`X-Robots-Tag` per Google's grammar, TDMRep header and `tdmrep.json`), and the loader's
//! HTTP (stalls time out, a remote `shardindex.json` is capped and may not name local files or
//! internal addresses, redirects are checked).

use crate::common::hostile::{wit_capped, LoopbackServer, Route};
use crate::common::{scratch, status_rows, wit};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use wit_shards::{MetadataRow, Status};

/// The issue's bar for one process.
const MAX_RSS: u64 = 512 << 20;
/// Address-space cap for capped runs: generous for thread stacks and arenas, far below what a
/// ballooning run would reach.
const ADDRESS_SPACE: u64 = 4 << 30;

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 99]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn routes(list: &[(&str, Route)]) -> HashMap<String, Route> {
    list.iter()
        .map(|(p, r)| (p.to_string(), r.clone()))
        .collect()
}

/// Writes a jsonl URL list and returns its path.
fn url_list(dir: &Path, urls: &[String]) -> String {
    let path = dir.join("urls.jsonl");
    let lines: Vec<String> = urls
        .iter()
        .map(|u| serde_json::json!({"url": u, "caption": "a test image"}).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.to_string_lossy().into_owned()
}

fn download_args(list: &str, out: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "download",
        list,
        "-o",
        out,
        "--caption-col",
        "caption",
        "--allow-net",
        "127.0.0.1/32",
    ]
    .map(String::from)
    .to_vec();
    if !extra.contains(&"--timeout") {
        args.extend(["--timeout".to_string(), "3".to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn download(urls: &[String], extra: &[&str]) -> (Vec<MetadataRow>, tempfile::TempDir) {
    let dir = scratch();
    let list = url_list(dir.path(), urls);
    let out = dir.path().join("out");
    let args = download_args(&list, out.to_str().unwrap(), extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = wit_capped(&args, ADDRESS_SPACE, 120);
    run.assert_bounded(MAX_RSS, Duration::from_secs(90));
    eprintln!(
        "{} URLs: peak RSS {} MiB, {:?}",
        urls.len(),
        run.peak_rss_bytes >> 20,
        run.wall
    );
    let got = status_rows(&out);
    assert_eq!(got.len(), urls.len(), "one status row per input row");
    (got, dir)
}

fn message(row: &MetadataRow) -> &str {
    row.error_message.as_deref().unwrap_or_default()
}

#[test]
fn unreachable_robots_txt_disallows_its_origin_and_4xx_allows() {
    let image = Route::ok("image/png", png());
    let failing = LoopbackServer::start(routes(&[
        ("/robots.txt", Route::status(500)),
        ("/a.png", image.clone()),
        ("/b.png", image.clone()),
    ]));
    let missing = LoopbackServer::start(routes(&[
        ("/robots.txt", Route::status(404)),
        ("/a.png", image.clone()),
    ]));
    let urls = [
        failing.url("/a.png"),
        missing.url("/a.png"),
        failing.url("/b.png"),
    ];
    let (got, _dir) = download(&urls, &["--retries", "1"]);
    for i in [0, 2] {
        assert_eq!(got[i].status, Status::DisallowedByRobots, "{}", got[i].url);
        assert!(
            message(&got[i]).contains("robots.txt unreachable (HTTP 500)"),
            "{}",
            message(&got[i])
        );
    }
    assert_eq!(got[1].status, Status::Success, "{}", message(&got[1]));
    assert_eq!(failing.hits("/a.png") + failing.hits("/b.png"), 0);
    assert_eq!(failing.hits("/robots.txt"), 2, "fetched once, retried once");
}

#[test]
fn a_stalled_robots_txt_disallows_after_the_timeout() {
    let stalled = Route {
        stall_after: Some(5),
        ..Route::ok("text/plain", b"User-agent: *\nAllow: /\n".to_vec())
    };
    let server = LoopbackServer::start(routes(&[
        ("/robots.txt", stalled),
        ("/a.png", Route::ok("image/png", png())),
    ]));
    let (got, _dir) = download(
        &[server.url("/a.png")],
        &["--retries", "0", "--timeout", "1"],
    );
    assert_eq!(got[0].status, Status::DisallowedByRobots);
    assert!(
        message(&got[0]).contains("unreachable (timed out)"),
        "{}",
        message(&got[0])
    );
    assert_eq!(server.hits("/a.png"), 0);
}

/// Ten origins, each with a 5 MiB robots.txt of `$`-anchored wildcard rules: the regex-per-rule
/// parser held ~350 MB per origin for the run's whole life (3.5 GB here).
#[test]
fn wildcard_heavy_robots_txt_on_many_origins_stays_bounded() {
    let mut txt = b"User-agent: *\nDisallow: /private/\n".to_vec();
    let mut n = 0u64;
    while txt.len() < 5 << 20 {
        txt.extend_from_slice(format!("Disallow: /*{n}*q*z$\nAllow: /*x{n}$\n").as_bytes());
        n += 1;
    }
    let image = Route::ok("image/png", png());
    let servers: Vec<LoopbackServer> = (0..10)
        .map(|_| {
            LoopbackServer::start(routes(&[
                ("/robots.txt", Route::ok("text/plain", txt.clone())),
                ("/ok.png", image.clone()),
                ("/private/no.png", image.clone()),
            ]))
        })
        .collect();
    let urls: Vec<String> = servers
        .iter()
        .flat_map(|s| [s.url("/ok.png"), s.url("/private/no.png")])
        .collect();
    let (got, _dir) = download(&urls, &[]);
    for (i, row) in got.iter().enumerate() {
        let want = if i % 2 == 0 {
            Status::Success
        } else {
            Status::DisallowedByRobots
        };
        assert_eq!(row.status, want, "{}: {}", row.url, message(row));
    }
    for s in &servers {
        assert_eq!(s.hits("/private/no.png"), 0);
        assert_eq!(s.hits("/robots.txt"), 1);
    }
}

#[test]
fn x_robots_tag_and_tdmrep_opt_outs_are_honoured_and_named() {
    let image = Route::ok("image/png", png());
    let tdmrep = br#"[{"location": "/reserved/*", "tdm-reservation": 1, "tdm-policy": "https://example.com/policy.json"}]"#;
    let server = LoopbackServer::start(routes(&[
        ("/robots.txt", Route::status(404)),
        (
            "/.well-known/tdmrep.json",
            Route::ok("application/json", tdmrep.to_vec()),
        ),
        (
            "/noai.png",
            image
                .clone()
                .header("X-Robots-Tag", "noai, max-image-preview:large"),
        ),
        ("/tdm.png", image.clone().header("tdm-reservation", "1")),
        ("/reserved/r.png", image.clone()),
        ("/ok.png", image.clone().header("tdm-reservation", "0")),
    ]));
    let urls = ["/noai.png", "/tdm.png", "/reserved/r.png", "/ok.png"].map(|p| server.url(p));
    let (got, _dir) = download(&urls, &[]);
    let expect = [
        (Status::OptedOut, "opted out by X-Robots-Tag: noai"),
        (
            Status::OptedOut,
            "opted out by TDMRep: tdm-reservation header",
        ),
        (
            Status::OptedOut,
            "opted out by TDMRep: /.well-known/tdmrep.json",
        ),
        (Status::Success, ""),
    ];
    for (row, (status, msg)) in got.iter().zip(expect) {
        assert_eq!((row.status, message(row)), (status, msg), "{}", row.url);
    }
    assert_eq!(
        server.hits("/reserved/r.png"),
        0,
        "reserved by the file: never fetched"
    );
    assert_eq!(
        server.hits("/.well-known/tdmrep.json"),
        1,
        "fetched once per origin"
    );

    let (got, _dir) = download(&urls, &["--ignore-tdmrep"]);
    let statuses: Vec<Status> = got.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            Status::OptedOut,
            Status::Success,
            Status::Success,
            Status::Success
        ]
    );
}

/// Runs `wit tokenizer train` on `data` and returns (exit success, stderr, wall time).
fn tokenizer_on(data: &str, extra: &[&str]) -> (bool, String, Duration) {
    let dir = scratch();
    let out = dir.path().join("tok.json");
    let mut args = vec![
        "tokenizer",
        "train",
        "--data",
        data,
        "-o",
        out.to_str().unwrap(),
        "--vocab-size",
        "300",
        "--allow-net",
        "127.0.0.1/32",
    ];
    args.extend_from_slice(extra);
    let start = Instant::now();
    let run = wit(&args);
    (
        run.status.success(),
        String::from_utf8_lossy(&run.stderr).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn a_stalled_shard_or_index_server_fails_in_bounded_time() {
    let stalled = |body: Vec<u8>| Route {
        stall_after: Some(100),
        ..Route::ok("application/octet-stream", body)
    };
    let server = LoopbackServer::start(routes(&[
        ("/00000.tar", stalled(vec![0u8; 1 << 20])),
        ("/shardindex.json", stalled(vec![b' '; 1 << 20])),
    ]));
    let (ok, stderr, wall) = tokenizer_on(&server.url("/00000.tar"), &["--read-timeout", "1"]);
    assert!(!ok, "a stalled shard cannot yield captions");
    assert!(wall < Duration::from_secs(40), "took {wall:?}: {stderr}");
    assert!(
        server.hits("/00000.tar") >= 2,
        "the stalled body was resumed"
    );

    let (ok, stderr, wall) =
        tokenizer_on(&server.url("/shardindex.json"), &["--read-timeout", "1"]);
    assert!(!ok);
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(wall < Duration::from_secs(40), "took {wall:?}: {stderr}");
}

#[test]
fn a_remote_index_may_not_name_local_files_or_internal_addresses() {
    let index = |url: &str| {
        let json = serde_json::json!({
            "__kind__": "wids-shard-index-v1",
            "shardlist": [{"url": url, "nsamples": 1}],
        });
        Route::ok("application/json", json.to_string())
    };
    let mut huge = br#"{"__kind__": "wids-shard-index-v1", "shardlist": []}"#.to_vec();
    huge.resize((wit_loader::MAX_INDEX_BYTES + 1024) as usize, b' ');
    let server = LoopbackServer::start(routes(&[
        ("/file.json", index("file:///etc/passwd")),
        ("/abs.json", index("/etc/passwd")),
        (
            "/meta.json",
            index("http://169.254.169.254/latest/shard.tar"),
        ),
        ("/huge.json", Route::ok("application/json", huge)),
        (
            "/to-meta.tar",
            Route::status(302).header("Location", "http://169.254.169.254/x.tar"),
        ),
    ]));
    for (path, needle) in [
        ("/file.json", "scheme `file`"),
        ("/abs.json", "absolute path"),
        ("/meta.json", "SSRF guard"),
        ("/huge.json", "larger than"),
        ("/to-meta.tar", "SSRF guard"),
    ] {
        let (ok, stderr, _) = tokenizer_on(&server.url(path), &[]);
        assert!(!ok, "{path} was accepted");
        assert!(stderr.contains(needle), "{path}: {stderr}");
    }
}
