//! `wit stats` end to end: shards written by `wit_shards::ShardWriter` with known distributions,
//! the report's exact figures checked against DuckDB over the same parquet, the approximate ones
//! against their stated bounds, the HTML opened in headless Chromium, and a 2,000-shard folder
//! merged in bounded memory.

use crate::common;

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use wit_shards::summary::Summary;
use wit_shards::{EncodedImage, ImageFormat, SampleRecord, ShardConfig, ShardWriter, Status};

const SHARDS: u64 = 3;
const ROWS: u64 = 300;

/// A real JPEG whose size and content depend on `c` (same `c`, same bytes).
fn jpeg(c: u64) -> EncodedImage {
    let (w, h) = (40 + (c * 37) % 120, 40 + (c * 53) % 90);
    let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        image::Rgb([
            (x * 255 / w as u32) as u8,
            (y * 255 / h as u32) as u8,
            ((c * 40) % 256) as u8,
        ])
    });
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
        .encode_image(&img)
        .expect("encode");
    EncodedImage {
        bytes,
        format: ImageFormat::Jpg,
        width: w as u32,
        height: h as u32,
    }
}

/// Skewed hosts: img0 ≈ 40%, img1 ≈ 20%, img2 ≈ 10%, 30 more share the rest.
fn host(u: u64) -> String {
    let k = u.wrapping_mul(2_654_435_761) % 100;
    let d = match k {
        0..40 => 0,
        40..60 => 1,
        60..70 => 2,
        _ => 3 + k % 30,
    };
    format!("img{d}.example.org")
}

fn caption(g: u64) -> Option<String> {
    if g % 37 == 5 {
        return None;
    }
    if g.is_multiple_of(13) {
        return Some("ein rotes Quadrat über einem Kreis — schön".into());
    }
    let colours = ["red", "green", "blue", "yellow"];
    let shapes = ["circle", "square", "triangle"];
    let mut c = format!(
        "{} {} {}s on a striped background",
        ["one", "two", "three"][(g % 3) as usize],
        colours[(g % 4) as usize],
        shapes[(g / 4 % 3) as usize]
    );
    for _ in 0..g % 4 {
        c.push_str(" with extra words");
    }
    Some(c)
}

fn record(g: u64) -> SampleRecord {
    let u = if g % 5 == 4 { g - 1 } else { g };
    let url = format!("https://{}/p/{u}.jpg", host(u));
    let (status, err) = match g % 20 {
        0 | 10 if g.is_multiple_of(40) => (Status::FailedToDownload, Some("timeout after 10 s")),
        0 | 10 => (Status::FailedToDownload, Some("connection reset")),
        1 => (Status::FailedToResize, Some("not an image: unknown format")),
        2 => (Status::Filtered, Some("image too small: 20x20 < 64")),
        3 => (Status::OptedOut, Some("X-Robots-Tag: noai")),
        4 => (Status::DisallowedByRobots, Some("robots.txt disallows")),
        _ => (Status::Success, None),
    };
    let mut rec = SampleRecord {
        url,
        caption: caption(g),
        status: Some(status),
        error_message: err.map(str::to_owned),
        language: Some(if g.is_multiple_of(13) { "de" } else { "en" }.into()),
        ..SampleRecord::default()
    };
    if status == Status::Success {
        let img = jpeg(if g.is_multiple_of(7) { 0 } else { g });
        rec.original_width = Some(img.width * 3);
        rec.original_height = Some(img.height * 3);
        rec.original_bytes = Some(img.bytes.len() as u64 * 5);
        rec.original_format = Some(if g.is_multiple_of(3) { "png" } else { "jpeg" }.into());
        rec.blake3 = Some(blake3::hash(&img.bytes).to_hex().to_string());
        rec.dup_of = g.is_multiple_of(11).then(|| "000000000".into());
        rec.image = Some(img);
    } else if status == Status::FailedToResize {
        rec.original_bytes = Some(1234);
    }
    rec
}

fn make_dataset(dir: &Path) {
    let cfg = ShardConfig {
        samples_per_shard: 1000,
        ..ShardConfig::default()
    };
    for shard in 0..SHARDS {
        let mut w = ShardWriter::create(dir, shard, &cfg).expect("create shard");
        for r in 0..ROWS {
            w.write(r, &record(shard * ROWS + r)).expect("write row");
        }
        w.finish().expect("finish shard");
    }
}

fn stats_json(dir: &Path, extra: &[&str]) -> Value {
    let json = dir.join("stats.json");
    let mut args = vec![
        "stats",
        dir.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = common::wit_ok(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("successes"), "text summary printed: {text}");
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

const DUCKDB: &str = r#"
import duckdb, json, sys
con = duckdb.connect()
con.execute(f"create view t as select * from read_parquet('{sys.argv[1]}/*.parquet')")
q = lambda s: con.execute(s).fetchall()
ok = "status = 'success'"
out = {
  "count": q("select count(*) from t")[0][0],
  "statuses": dict(q("select status, count(*) from t group by 1")),
  "near": q("select count(*) from t where dup_of is not null")[0][0],
  "chars": dict(q(f"select least(floor(length(caption) / 10), 40)::int, count(*) from t where {ok} and caption is not null group by 1")),
  "words": dict(q(f"select least(len(string_split_regex(trim(caption), '\\s+')), 64), count(*) from t where {ok} and caption is not null group by 1")),
  "missing": q(f"select count(*) from t where {ok} and caption is null")[0][0],
  "width_log2": dict(q(f"select floor(log2(width))::int + 1, count(*) from t where {ok} group by 1")),
  "orig_bytes": q("select count(bytes), sum(bytes), min(bytes), max(bytes) from t")[0],
  "encoded": q(f"select count(*), sum(encoded_bytes) from t where {ok}")[0],
  "orig_width": q("select min(original_width), max(original_width) from t")[0],
  "widths": [r[0] for r in q(f"select width from t where {ok} order by width")],
  "distinct_url": q("select count(distinct url) from t")[0][0],
  "b3": q("select count(blake3), count(distinct blake3) from t")[0],
  "domains": dict(q("select lower(regexp_extract(url, '://([^/:?#]+)', 1)), count(*) from t group by 1")),
  "languages": dict(q("select language, count(*) from t where language is not null group by 1")),
  "errors": dict(q("select error_message, count(*) from t where error_message is not null group by 1")),
  "formats": dict(q(f"select format, count(*) from t where {ok} group by 1")),
  "orig_formats": dict(q("select original_format, count(*) from t where original_width is not null group by 1")),
}
print(json.dumps(out))
"#;

fn hist_map(buckets: &Value) -> HashMap<String, u64> {
    buckets
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, b)| b["count"].as_u64().unwrap() > 0)
        .map(|(i, b)| (i.to_string(), b["count"].as_u64().unwrap()))
        .collect()
}

fn num_map(v: &Value) -> HashMap<String, u64> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

fn ranked_map(v: &Value) -> HashMap<String, u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["max_overestimate"], 0, "exact below capacity: {r}");
            (
                r["value"].as_str().unwrap().to_owned(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn exact_counts_match_duckdb_and_sketches_stay_within_bounds() {
    let dir = common::scratch();
    make_dataset(dir.path());
    let s = stats_json(dir.path(), &[]);
    let db: Value =
        serde_json::from_str(&common::python(DUCKDB, &[dir.path().to_str().unwrap()])).unwrap();

    assert_eq!(s["schema"], "wit-stats-v1");
    assert_eq!(s["shards"], SHARDS);
    assert_eq!(s["count"], db["count"]);
    assert_eq!(s["count"], SHARDS * ROWS);
    let statuses = num_map(&db["statuses"]);
    assert_eq!(s["successes"], statuses["success"]);
    for (k, v) in num_map(&s["statuses"]) {
        assert_eq!(v, statuses.get(&k).copied().unwrap_or(0), "status {k}");
    }
    assert_eq!(s["opted_out"], statuses["opted_out"]);
    assert_eq!(s["disallowed_by_robots"], statuses["disallowed_by_robots"]);
    assert_eq!(s["duplicates"]["near_duplicates"], db["near"]);
    assert_eq!(s["captions"]["missing"], db["missing"]);
    assert_eq!(
        hist_map(&s["captions"]["chars"]["histogram"]),
        num_map(&db["chars"])
    );
    assert_eq!(
        hist_map(&s["captions"]["words"]["histogram"]),
        num_map(&db["words"])
    );
    assert_eq!(
        hist_map(&s["images"]["stored"]["width"]["histogram"]),
        num_map(&db["width_log2"])
    );
    let ob = &s["images"]["original"]["bytes"];
    assert_eq!(ob["count"], db["orig_bytes"][0]);
    let sum = ob["mean"].as_f64().unwrap() * ob["count"].as_f64().unwrap();
    assert!((sum - db["orig_bytes"][1].as_f64().unwrap()).abs() < 0.5);
    assert_eq!(ob["min"].as_f64(), db["orig_bytes"][2].as_f64());
    assert_eq!(ob["max"].as_f64(), db["orig_bytes"][3].as_f64());
    let eb = &s["images"]["stored"]["bytes"];
    assert_eq!(eb["count"], db["encoded"][0]);
    let sum = eb["mean"].as_f64().unwrap() * eb["count"].as_f64().unwrap();
    assert!((sum - db["encoded"][1].as_f64().unwrap()).abs() < 0.5);
    assert_eq!(
        s["images"]["original"]["width"]["min"].as_f64(),
        db["orig_width"][0].as_f64()
    );
    assert_eq!(
        s["images"]["original"]["width"]["max"].as_f64(),
        db["orig_width"][1].as_f64()
    );
    assert_eq!(ranked_map(&s["languages"]), num_map(&db["languages"]));
    assert_eq!(ranked_map(&s["top_errors"]), num_map(&db["errors"]));
    assert_eq!(
        ranked_map(&s["images"]["stored"]["formats"]),
        num_map(&db["formats"])
    );
    assert_eq!(
        ranked_map(&s["images"]["original"]["formats"]),
        num_map(&db["orig_formats"])
    );

    // Quantiles: within the stated relative error of the true order statistic.
    let rel = s["error_bounds"]["quantile_relative_error"]
        .as_f64()
        .unwrap();
    let widths: Vec<f64> = db["widths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (q, key) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
        let truth = widths[(q * (widths.len() - 1) as f64).floor() as usize];
        let est = s["images"]["stored"]["width"][key].as_f64().unwrap();
        assert!(
            (est - truth).abs() <= rel * truth + 1e-9,
            "{key}: {est} vs {truth}"
        );
    }

    // Distinct counts: within 4 standard errors of DuckDB's exact count distinct.
    let se = s["error_bounds"]["hyperloglog_relative_standard_error"]
        .as_f64()
        .unwrap();
    let urls = db["distinct_url"].as_f64().unwrap();
    let est = s["duplicates"]["distinct_urls"].as_f64().unwrap();
    assert!(
        (est - urls).abs() <= 4.0 * se * urls + 1.0,
        "distinct urls {est} vs {urls}"
    );
    assert!(
        urls < SHARDS as f64 * ROWS as f64,
        "the dataset has repeated URLs"
    );
    assert_eq!(s["duplicates"]["with_blake3"], db["b3"][0]);
    let imgs = db["b3"][1].as_f64().unwrap();
    let est = s["duplicates"]["distinct_images"].as_f64().unwrap();
    assert!(
        (est - imgs).abs() <= 4.0 * se * imgs + 1.0,
        "distinct images {est} vs {imgs}"
    );
    let rate = 1.0 - imgs / db["b3"][0].as_f64().unwrap();
    let got = s["duplicates"]["exact_duplicate_rate"].as_f64().unwrap();
    assert!((got - rate).abs() < 0.05, "exact dup rate {got} vs {rate}");

    // Top domains: every listed count brackets the true one; the heavy hitters come first.
    let domains = num_map(&db["domains"]);
    let listed = s["domains"].as_array().unwrap();
    for d in listed {
        let truth = domains[d["value"].as_str().unwrap()];
        let (c, over) = (
            d["count"].as_u64().unwrap(),
            d["max_overestimate"].as_u64().unwrap(),
        );
        assert!(c >= truth && c - over <= truth, "{d} vs {truth}");
    }
    let firsts: Vec<&str> = listed[..3]
        .iter()
        .map(|d| d["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        firsts,
        ["img0.example.org", "img1.example.org", "img2.example.org"]
    );
    let words: Vec<&str> = s["captions"]["top_words"].as_array().unwrap()[..4]
        .iter()
        .map(|d| d["value"].as_str().unwrap())
        .collect();
    assert_eq!(words, ["extra", "words", "background", "striped"]);
    assert!(s["throughput"]["bins"].as_array().unwrap().len() > 1);
    assert!(s["queries"].is_null());
}

fn strip(mut v: Value, keys: &[&str]) -> Value {
    for k in keys {
        v.as_object_mut().unwrap().remove(*k);
    }
    v
}

#[test]
fn shards_without_summary_and_deep_mode_rebuild_the_same_figures() {
    let dir = common::scratch();
    make_dataset(dir.path());
    let base = stats_json(dir.path(), &[]);
    // img2dataset's _stats.json has no summary: the parquet must give the same figures.
    let path = dir.path().join("00001_stats.json");
    let mut shard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    shard.as_object_mut().unwrap().remove("summary");
    std::fs::write(&path, serde_json::to_vec(&shard).unwrap()).unwrap();
    let rebuilt = stats_json(dir.path(), &[]);
    assert_eq!(rebuilt["shards_rebuilt_from_parquet"], 1);
    let keys = ["shards_rebuilt_from_parquet", "deep"];
    assert_eq!(strip(rebuilt, &keys), strip(base.clone(), &keys));

    let deep = stats_json(dir.path(), &["--deep"]);
    let d = &deep["deep"];
    assert_eq!(d["images_read"], base["successes"]);
    assert_eq!(d["undecodable"], 0);
    assert_eq!(d["missing_images"], 0);
    assert_eq!(d["orphan_samples"], 0);
    assert_eq!(deep["images"], base["images"]);
    assert_eq!(strip(deep, &keys), strip(base, &keys));
}

#[test]
fn query_balance_matches_duckdb() {
    let dir = common::scratch();
    make_dataset(dir.path());
    // The table as `wit curate` writes it, in its own output folder, found through --queries.
    let curated = dir.path().join("curated");
    std::fs::create_dir_all(&curated).unwrap();
    let table = curated.join("_query_counts.parquet");
    common::python(
        "import pyarrow as pa, pyarrow.parquet as pq, sys\n\
         q = [f'query {i}' for i in range(500)]\n\
         before = [max(1, 100000 // (i + 1) ** 2) if i < 480 else 0 for i in range(500)]\n\
         after = [min(b, 200) for b in before]\n\
         pq.write_table(pa.table({'query': q, 'count_before': pa.array(before, pa.uint64()), 'count_after': pa.array(after, pa.uint64())}), sys.argv[1])",
        &[table.to_str().unwrap()],
    );
    assert!(stats_json(dir.path(), &[])["queries"].is_null());
    let s = stats_json(dir.path(), &["--queries", curated.to_str().unwrap()]);
    let by_file = stats_json(dir.path(), &["--queries", table.to_str().unwrap()]);
    assert_eq!(by_file["queries"], s["queries"]);
    let db: Value = serde_json::from_str(&common::python(
        "import duckdb, json, sys\n\
         r = duckdb.connect().execute(f\"select count(*), count(*) filter (where count_after > 0), sum(count_after), max(count_after), \
         sum(count_after::double * count_after) / (sum(count_after)::double * sum(count_after)), sum(count_before) from '{sys.argv[1]}'\").fetchone()\n\
         print(json.dumps(list(r)))",
        &[table.to_str().unwrap()],
    ))
    .unwrap();
    let q = &s["queries"];
    assert_eq!(q["queries"], db[0]);
    assert_eq!(q["matched_after"], db[1]);
    assert_eq!(q["matches_after"], db[2]);
    assert_eq!(q["max_after"], db[3]);
    assert!((q["hhi_after"].as_f64().unwrap() - db[4].as_f64().unwrap()).abs() < 1e-12);
    assert_eq!(q["matches_before"], db[5]);
    assert_eq!(q["top"][0]["after"], 200);
    assert_eq!(q["bottom"][0]["after"], q["bottom"][0]["before"]);
}

fn chromium() -> PathBuf {
    let p = PathBuf::from("/usr/bin/chromium");
    assert!(
        p.exists(),
        "no /usr/bin/chromium: run `bash scripts/setup-debian.sh chromium` (installs Debian's chromium)"
    );
    p
}

/// Opens `html` headless; returns (console/load errors seen on stderr, screenshot).
fn open_in_chromium(html: &Path, work: &Path) -> (Vec<String>, image::RgbImage) {
    let png = work.join(format!(
        "{}.png",
        html.file_stem().unwrap().to_str().unwrap()
    ));
    let profile = work.join("chromium-profile");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,900",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(png.exists(), "chromium wrote no screenshot:\n{stderr}");
    let errors = stderr
        .lines()
        .filter(|l| {
            l.contains(":CONSOLE")
                || l.contains("Failed to load resource")
                || l.contains("Refused to")
        })
        .map(str::to_owned)
        .collect();
    (
        errors,
        image::open(&png).expect("screenshot decodes").to_rgb8(),
    )
}

#[test]
fn html_report_is_self_contained_and_renders_in_chromium() {
    let dir = common::scratch();
    make_dataset(dir.path());
    let html = dir.path().join("report.html");
    let s = stats_json(
        dir.path(),
        &[
            "--html",
            html.to_str().unwrap(),
            "--samples",
            "24",
            "--seed",
            "7",
        ],
    );
    let text = std::fs::read_to_string(&html).unwrap();
    let samples = s["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 24);
    assert_eq!(text.matches("src=\"data:image/jpeg;base64,").count(), 24);
    for forbidden in [
        "<script",
        "<link",
        "@import",
        "url(",
        "src=\"http",
        "href=\"http",
    ] {
        assert!(!text.contains(forbidden), "report references {forbidden}");
    }
    for needle in [
        "img0.example.org",
        "Relative standard",
        "connection reset",
        "striped",
    ] {
        assert!(
            text.to_lowercase().contains(&needle.to_lowercase()),
            "report shows {needle}"
        );
    }
    // Same seed, same grid; another seed, another grid.
    let again = stats_json(dir.path(), &["--samples", "24", "--seed", "7"]);
    assert_eq!(again["samples"], s["samples"]);
    let other = stats_json(dir.path(), &["--samples", "24", "--seed", "8"]);
    assert_ne!(other["samples"], s["samples"]);

    // The detector must be able to fail: a page with a console error is caught.
    let bad = dir.path().join("bad.html");
    std::fs::write(
        &bad,
        "<html><body><script>console.error('boom')</script>x</body></html>",
    )
    .unwrap();
    let (errors, _) = open_in_chromium(&bad, dir.path());
    assert!(
        errors.iter().any(|l| l.contains("boom")),
        "console errors are visible: {errors:?}"
    );

    let (errors, shot) = open_in_chromium(&html, dir.path());
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let (w, h) = shot.dimensions();
    assert!(w >= 1000 && h >= 700, "screenshot {w}x{h}");
    let bg = *shot.get_pixel(2, 2);
    let differing = shot.pixels().filter(|p| **p != bg).count();
    let colours: HashSet<[u8; 3]> = shot.pixels().map(|p| p.0).collect();
    assert!(
        differing * 20 > (w * h) as usize,
        "screenshot is mostly blank"
    );
    assert!(
        colours.len() > 100,
        "only {} colours: no charts or thumbnails",
        colours.len()
    );
}

/// A `_stats.json` whose summary fills its top-k sketches with shard-specific items, so holding
/// all of them would cost memory in proportion to the shard count.
fn synthetic_stats(shard: u64) -> Value {
    let mut summary = Summary::default();
    for j in 0..300u64 {
        summary.observe(&SampleRecord {
            url: format!("https://h{shard}-{j}.example/{j}.jpg"),
            caption: Some(format!("w{shard}x{j} y{j}z{shard} common words")),
            status: Some(if j.is_multiple_of(3) {
                Status::FailedToDownload
            } else {
                Status::Success
            }),
            error_message: j
                .is_multiple_of(3)
                .then(|| format!("error {shard}-{}", j % 90)),
            original_width: Some(100 + j as u32),
            original_height: Some(50 + shard as u32 % 500),
            original_bytes: Some(1000 * j + shard),
            ..SampleRecord::default()
        });
    }
    serde_json::json!({
        "count": 300, "successes": 200, "failed_to_download": 100, "failed_to_resize": 0,
        "start_time": 1.7e9 + shard as f64, "end_time": 1.7e9 + shard as f64 + 30.0,
        "duration": 30.0, "status_dict": {}, "summary": summary,
    })
}

/// Peak RSS (KiB) of `wit stats DIR`, measured by Python's getrusage on the child.
fn stats_peak_rss(dir: &Path) -> u64 {
    let out = common::python(
        "import resource, subprocess, sys\n\
         r = subprocess.run(sys.argv[1:], capture_output=True)\n\
         assert r.returncode == 0, r.stderr.decode()\n\
         print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
        &[
            common::wit_bin().to_str().unwrap(),
            "stats",
            dir.to_str().unwrap(),
        ],
    );
    out.trim().parse().expect("ru_maxrss")
}

#[test]
fn many_shards_merge_in_bounded_memory() {
    let small = common::scratch();
    let big = common::scratch();
    let mut file_bytes = 0;
    for shard in 0..2000u64 {
        let json = serde_json::to_vec(&synthetic_stats(shard)).unwrap();
        if shard < 100 {
            std::fs::write(small.path().join(format!("{shard:05}_stats.json")), &json).unwrap();
        }
        file_bytes += json.len();
        std::fs::write(big.path().join(format!("{shard:05}_stats.json")), json).unwrap();
    }
    let s = stats_json(big.path(), &[]);
    assert_eq!(s["count"], 2000 * 300);
    assert_eq!(s["successes"], 2000 * 200);
    assert_eq!(s["shards"], 2000);
    assert_eq!(s["captions"]["top_words"][0]["value"], "common");
    assert_eq!(s["captions"]["top_words"][0]["count"], 2000 * 200);
    assert_eq!(s["images"]["original"]["width"]["max"], 399.0);
    let (rss_small, rss_big) = (stats_peak_rss(small.path()), stats_peak_rss(big.path()));
    assert!(
        rss_big < rss_small + 24 * 1024,
        "peak RSS grew from {rss_small} KiB (100 shards) to {rss_big} KiB (2,000 shards, {} MiB of _stats.json)",
        file_bytes >> 20
    );
    assert!(rss_big < 256 * 1024, "peak RSS {rss_big} KiB");
}

#[test]
fn a_folder_without_shards_is_a_clear_error() {
    let dir = common::scratch();
    let out = common::wit(&["stats", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("_stats.json") && err.contains("wit download"),
        "{err}"
    );
}
