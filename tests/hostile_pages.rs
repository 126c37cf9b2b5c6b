//! Hostile pages and archives through the real `wit warc` and `wit crawl`, under an address-space
//! cap: strings a page repeats into every pair (title, `<base href>`, target URI), quadratic
//! markup, a whole-file gzip WARC with damaged records, and TDMRep's `<meta>` opt-out. Every
//! input is generated here, sized about 10x past where the old code broke.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::common::hostile::{wit_capped, LoopbackServer, Route};
use crate::common::scratch;

/// The bar: peak RSS per process.
const MAX_RSS: u64 = 512 << 20;

/// Address space allowed (virtual: thread stacks and allocator arenas count), so a run that
/// balloons fails inside wit instead of passing.
const ADDRESS_SPACE: u64 = 4 << 30;

/// CPU seconds allowed: the old quadratic page alone took an hour at this size.
const CPU_SECONDS: u64 = 120;

/// Wall time allowed (debug build).
const MAX_WALL: Duration = Duration::from_secs(120);

/// `wit warc`'s exit code when records were skipped.
const EXIT_SKIPPED: i32 = 3;

/// 10x the 456 KB title that panicked arrow's 32-bit offsets.
const LONG: usize = 4_600_000;

/// One WARC response record for `uri` holding `body` as text/html.
fn response(uri: &str, body: &[u8]) -> Vec<u8> {
    let mut http = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    http.extend_from_slice(body);
    let mut rec = format!(
        "WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {uri}\r\nContent-Type: application/http; msgtype=response\r\nContent-Length: {}\r\n\r\n",
        http.len()
    )
    .into_bytes();
    rec.extend_from_slice(&http);
    rec.extend_from_slice(b"\r\n\r\n");
    rec
}

/// `n` images with distinct URLs and captions.
fn images(n: usize) -> String {
    (0..n)
        .map(|i| format!("<img src=\"/i/{i}.jpg\" alt=\"a photo of item {i}\">"))
        .collect()
}

/// Deep `<div>` nesting then many `</p>` (about 7.7 MB): a tree builder walks the open elements
/// for each `</p>`; 720 KB of this took 30 s. One image at the very end.
fn quadratic_page() -> Vec<u8> {
    let mut page = "<div>".repeat(900_000);
    page.push_str(&"</p>".repeat(800_000));
    page.push_str("<img src=\"/end.jpg\" alt=\"the image after the maze\">");
    page.into_bytes()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("summary written")).expect("summary JSON")
}

/// Rows of the final pairs table, which must be complete (no temporary file left).
fn pairs_rows(out: &Path) -> usize {
    assert!(
        !out.join("pairs.parquet.tmp").exists(),
        "temporary file left"
    );
    let mut rows = 0;
    for pair in
        wit_crawler::pairs::read_pairs(&out.join("pairs.parquet")).expect("pairs.parquet readable")
    {
        pair.expect("pair decodes");
        rows += 1;
    }
    rows
}

#[test]
fn warc_pages_that_amplify_or_nest_cost_one_record_each() {
    let dir = scratch();
    let title = format!("<title>{}</title>", "t".repeat(LONG));
    let base = format!("<base href=\"http://b.test/{}/\">", "b".repeat(LONG));
    let mut warc = Vec::new();
    warc.extend(response(
        "http://title.test/",
        format!("{title}{}", images(20_000)).as_bytes(),
    ));
    warc.extend(response(
        "http://base.test/",
        format!("{base}{}", images(20_000)).as_bytes(),
    ));
    let long_uri = format!("http://uri.test/{}", "u".repeat(60_000));
    warc.extend(response(&long_uri, images(20_000).as_bytes()));
    let huge_uri = format!("http://uri.test/{}", "u".repeat(LONG));
    warc.extend(response(&huge_uri, images(20_000).as_bytes()));
    warc.extend(response("http://maze.test/", &quadratic_page()));
    let reserved = format!(
        "<meta name=\"tdm-reservation\" content=\"1\">{}",
        images(10)
    );
    warc.extend(response("http://tdm.test/", reserved.as_bytes()));
    warc.extend(response("http://fine.test/", images(3).as_bytes()));
    let input = dir.path().join("hostile.warc");
    std::fs::write(&input, &warc).unwrap();
    let out = dir.path().join("out");

    let run = wit_capped(
        &[
            "warc",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--jobs",
            "2",
        ],
        ADDRESS_SPACE,
        CPU_SECONDS,
    );
    assert_eq!(
        run.output.status.code(),
        Some(EXIT_SKIPPED),
        "{}",
        run.stderr()
    );
    assert!(
        run.peak_rss_bytes <= MAX_RSS,
        "peak RSS {} MB",
        run.peak_rss_bytes >> 20
    );
    assert!(run.wall <= MAX_WALL, "took {:?}", run.wall);

    let s = summary(&out.join("warc_summary.json"));
    let cap = wit_crawler::html::MAX_IMAGES_PER_PAGE as u64;
    // title page, base page (base ignored), maze (its one image), fine page (3).
    assert_eq!(s["pairs"], 2 * cap + 1 + 3, "{s:#}");
    assert_eq!(s["opted_out"], 1, "{s:#}");
    assert_eq!(s["skipped_by_reason"]["target_uri_too_long"], 1, "{s:#}");
    assert_eq!(s["skipped_by_reason"]["bad_record_header"], 1, "{s:#}");
    assert_eq!(s["capped"]["long_titles"], 1, "{s:#}");
    assert_eq!(s["capped"]["long_urls"], 1, "the base href: {s:#}");
    assert_eq!(s["capped"]["extra_images"], 2 * (20_000 - cap), "{s:#}");
    assert_eq!(s["pages_cut"], 0, "{s:#}");
    assert_eq!(pairs_rows(&out), (2 * cap + 1 + 3) as usize);
    eprintln!(
        "hostile warc: peak RSS {} MB, {:?}",
        run.peak_rss_bytes >> 20,
        run.wall
    );
}

#[test]
fn a_whole_file_gzip_warc_loses_only_its_damaged_records() {
    let dir = scratch();
    let mut plain = Vec::new();
    for i in 0..11 {
        let rec = response(&format!("http://r{i}.test/"), images(1).as_bytes());
        let rec = if i == 5 {
            // A Content-Length far past the end of the file.
            String::from_utf8(rec)
                .unwrap()
                .replacen("Content-Length: ", "Content-Length: 999999", 1)
                .into_bytes()
        } else {
            rec
        };
        plain.extend(rec);
    }
    let input = dir.path().join("whole.warc.gz");
    std::fs::write(&input, gzip(&plain)).unwrap();
    let out = dir.path().join("out");
    let run = wit_capped(
        &["warc", input.to_str().unwrap(), "-o", out.to_str().unwrap()],
        ADDRESS_SPACE,
        CPU_SECONDS,
    );
    assert_eq!(
        run.output.status.code(),
        Some(EXIT_SKIPPED),
        "{}",
        run.stderr()
    );
    let s = summary(&out.join("warc_summary.json"));
    assert_eq!(
        (s["records"].as_u64(), s["skipped"].as_u64()),
        (Some(10), Some(1)),
        "{s:#}"
    );
    assert_eq!(s["skipped_by_reason"]["bad_record_length"], 1, "{s:#}");
    assert_eq!(pairs_rows(&out), 10);
    assert!(
        run.peak_rss_bytes <= MAX_RSS,
        "peak RSS {} MB",
        run.peak_rss_bytes >> 20
    );
}

#[test]
fn crawl_survives_hostile_pages_and_honours_tdm_reservation() {
    let links = "<a href=\"/maze\">m</a><a href=\"/tdm\">t</a><a href=\"/base\">b</a>";
    let title = format!("<title>{}</title>", "t".repeat(LONG));
    let base = format!("<base href=\"/{}/\">", "b".repeat(LONG));
    let reserved = format!(
        "<meta name=\"tdm-reservation\" content=\"1\">{}",
        images(10)
    );
    let html = |body: String| Route::ok("text/html", body.into_bytes());
    let routes = HashMap::from([
        (
            "/".to_string(),
            html(format!("{title}{links}{}", images(20_000))),
        ),
        ("/base".to_string(), html(format!("{base}{}", images(5)))),
        (
            "/maze".to_string(),
            Route::ok("text/html", quadratic_page()),
        ),
        ("/tdm".to_string(), html(reserved)),
    ]);
    let server = LoopbackServer::start(routes);
    let dir = scratch();
    let out = dir.path().join("out");
    let seed = server.url("/");
    let run = wit_capped(
        &[
            "crawl",
            &seed,
            "-o",
            out.to_str().unwrap(),
            "--allow-net",
            "127.0.0.1/32",
            "--per-host-delay-ms",
            "0",
        ],
        ADDRESS_SPACE,
        CPU_SECONDS,
    );
    run.assert_bounded(MAX_RSS, MAX_WALL);
    assert_eq!(server.hits("/tdm"), 1);
    let s = summary(&out.join("crawl_summary.json"));
    assert_eq!(s["pages"], 4, "{s:#}");
    assert_eq!(s["opted_out"], 1, "{s:#}");
    let cap = wit_crawler::html::MAX_IMAGES_PER_PAGE as u64;
    // The seed's first `cap` images, the maze's one, /base's 5 (resolved against the page:
    // the same /i/N.jpg URLs and captions as the seed's, so duplicates).
    assert_eq!(s["pairs"], cap + 1, "{s:#}");
    assert_eq!(s["capped"]["long_titles"], 1, "{s:#}");
    assert_eq!(s["capped"]["long_urls"], 1, "{s:#}");
    assert_eq!(pairs_rows(&out), (cap + 1) as usize);
    eprintln!(
        "hostile crawl: peak RSS {} MB, {:?}",
        run.peak_rss_bytes >> 20,
        run.wall
    );
}
