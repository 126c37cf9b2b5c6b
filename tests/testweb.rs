//! The embedded test web against independent readers: a Python crawler/extractor (html.parser,
//! urllib.robotparser, pyarrow) must find exactly the manifest's pairs; a small reference client
//! written here (plain std sockets) must reach every row's `expected` outcome, fault area
//! included; the same seed must serve the same bytes.

use crate::common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use arrow_array::{Array, BooleanArray, Int32Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use url::Url;
use webimagetext::testweb::scene::{is_held_out, parse_caption};

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The declared Content-Length arrived (or EOF without one).
    Complete,
    /// EOF before the declared Content-Length.
    Short,
    /// The peer reset the connection.
    Reset,
    /// Nothing arrived for a read timeout, or the deadline passed.
    Timeout,
    /// The body passed the cap.
    Capped,
}

struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    end: End,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

const CAP: usize = 32 << 20;

/// A minimal HTTP/1.1 GET over std sockets, only to 127.0.0.1 / 127.0.0.2.
fn http_get(url: &str, host_header: Option<&str>, deadline: Duration) -> Got {
    let u = Url::parse(url).expect("absolute URL");
    let host = u.host_str().expect("host").to_string();
    assert!(
        host == "127.0.0.1" || host == "127.0.0.2",
        "test traffic stays on loopback: {url}"
    );
    let port = u.port().expect("explicit port");
    let mut s = TcpStream::connect((host.as_str(), port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let target = &u[url::Position::BeforePath..url::Position::AfterQuery];
    let host_value = host_header.map_or(format!("{host}:{port}"), str::to_string);
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {host_value}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut head: Option<Head> = None;
    let mut tmp = vec![0u8; 64 * 1024];
    let end = loop {
        if let Some((_, _, at)) = &head {
            let declared = declared_len(&head.as_ref().expect("head").1);
            let got = buf.len() - at;
            if declared.is_some_and(|n| got >= n) {
                break End::Complete;
            }
            if got > CAP {
                break End::Capped;
            }
        }
        if start.elapsed() > deadline {
            break End::Timeout;
        }
        match s.read(&mut tmp) {
            Ok(0) => {
                let short = head
                    .as_ref()
                    .and_then(|h| declared_len(&h.1).map(|n| buf.len() - h.2 < n));
                break if short.unwrap_or(head.is_none()) {
                    End::Short
                } else {
                    End::Complete
                };
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break End::Reset,
            Err(_) => break End::Timeout,
        }
        if head.is_none() {
            head = parse_head(&buf);
        }
    };
    let (status, headers, at) = head.unwrap_or((0, Vec::new(), buf.len()));
    Got {
        status,
        headers,
        body: buf[at..].to_vec(),
        end,
    }
}

fn declared_len(headers: &[(String, String)]) -> Option<usize> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
}

/// Status, headers, and where the body starts.
type Head = (u16, Vec<(String, String)>, usize);

fn parse_head(buf: &[u8]) -> Option<Head> {
    let pos = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&buf[..pos]).expect("ASCII head");
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some((status, headers, pos + 4))
}

fn get_ok(url: &str) -> Vec<u8> {
    let got = http_get(url, None, Duration::from_secs(20));
    assert_eq!((got.status, got.end), (200, End::Complete), "{url}");
    got.body
}

/// robots.txt rules for `*`, longest match wins (RFC 9309).
struct Robots(Vec<(bool, String)>);

impl Robots {
    fn parse(text: &str) -> Robots {
        let mut rules = Vec::new();
        let mut for_us = false;
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "user-agent" => for_us = v.trim() == "*",
                "allow" if for_us => rules.push((true, v.trim().to_string())),
                "disallow" if for_us => rules.push((false, v.trim().to_string())),
                _ => {}
            }
        }
        Robots(rules)
    }

    fn allows(&self, path: &str) -> bool {
        self.0
            .iter()
            .filter(|(_, p)| !p.is_empty() && path.starts_with(p.as_str()))
            .max_by_key(|(allow, p)| (p.len(), *allow))
            .is_none_or(|(allow, _)| *allow)
    }
}

/// What the reference client saw for one URL.
struct Outcome {
    status: &'static str,
    reason: String,
    body: Vec<u8>,
}

fn outcome(status: &'static str, reason: impl Into<String>) -> Outcome {
    Outcome {
        status,
        reason: reason.into(),
        body: Vec::new(),
    }
}

/// The outcome `wit download` with default flags must reach, computed independently: allow-list
/// 127.0.0.1/32, robots, 2 retries honouring Retry-After, 5 redirects, 32 MiB cap on raw and
/// inflated bodies, X-Robots-Tag with img2dataset's semantics, Pillow's pixel limit.
fn reference(url: &str, robots: &Robots, requests: &mut HashMap<String, u64>) -> Outcome {
    let mut url = Url::parse(url).expect("URL");
    for _hop in 0..=5 {
        if url.host_str() != Some("127.0.0.1") {
            return outcome("failed_to_download", "address outside allow-list");
        }
        if !robots.allows(url.path()) {
            return outcome("disallowed_by_robots", "robots");
        }
        let mut got = None;
        for attempt in 0..=2 {
            *requests.entry(url.path().to_string()).or_default() += 1;
            let g = http_get(url.as_str(), None, Duration::from_secs(4));
            let retry = matches!(g.status, 429 | 500 | 503) && attempt < 2;
            if retry {
                let secs = g
                    .header("Retry-After")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                std::thread::sleep(Duration::from_millis(200 + 1000 * secs));
                continue;
            }
            got = Some(g);
            break;
        }
        let g = got.expect("a final attempt");
        match g.end {
            End::Complete => {}
            End::Short => return outcome("failed_to_download", "short body"),
            End::Reset => return outcome("failed_to_download", "reset"),
            End::Timeout => return outcome("failed_to_download", "timeout"),
            End::Capped => return outcome("failed_to_download", "body over cap"),
        }
        if (300..400).contains(&g.status) {
            url = url
                .join(g.header("Location").expect("Location"))
                .expect("redirect URL");
            continue;
        }
        return judge_body(g);
    }
    outcome("failed_to_download", "too many redirects")
}

fn judge_body(g: Got) -> Outcome {
    if g.status != 200 {
        return outcome("failed_to_download", format!("status {}", g.status));
    }
    if let Some(tag) = g.header("X-Robots-Tag") {
        let (ua, directives) = match tag.split_once(':') {
            Some((ua, d)) => (Some(ua.trim().to_lowercase()), d),
            None => (None, tag),
        };
        let banned = ["noai", "noimageai", "noindex", "noimageindex"];
        if ua.is_none() && directives.split(',').any(|d| banned.contains(&d.trim())) {
            return outcome("opted_out", "X-Robots-Tag");
        }
    }
    let body = if g.header("Content-Encoding") == Some("gzip") {
        let mut out = Vec::new();
        let d = flate2::read::GzDecoder::new(g.body.as_slice());
        d.take(CAP as u64 + 1)
            .read_to_end(&mut out)
            .expect("inflate");
        if out.len() > CAP {
            return outcome("failed_to_download", "inflated body over cap");
        }
        out
    } else {
        g.body
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(&body))
        .with_guessed_format()
        .expect("in-memory");
    match reader.into_dimensions() {
        Ok((w, h)) if u64::from(w) * u64::from(h) > 89_478_485 => {
            return outcome("failed_to_resize", "over the pixel limit")
        }
        Ok(_) => {}
        Err(e) => return outcome("failed_to_resize", e.to_string()),
    }
    match image::load_from_memory(&body) {
        Ok(_) => Outcome {
            status: "success",
            reason: String::new(),
            body,
        },
        Err(e) => outcome("failed_to_resize", e.to_string()),
    }
}

/// The manifest columns the tests read, one map per row.
#[derive(Debug, Clone, PartialEq)]
struct Row(HashMap<String, Option<String>>);

impl Row {
    fn s(&self, k: &str) -> &str {
        self.0[k].as_deref().unwrap_or("")
    }
    fn opt(&self, k: &str) -> Option<&str> {
        self.0[k].as_deref()
    }
}

fn read_parquet(bytes: Vec<u8>) -> Vec<Row> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .expect("parquet")
        .build()
        .expect("reader");
    let mut rows = Vec::new();
    for batch in reader {
        let batch: RecordBatch = batch.expect("batch");
        for i in 0..batch.num_rows() {
            let mut m = HashMap::new();
            for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
                let v = if col.is_null(i) {
                    None
                } else if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                    Some(a.value(i).to_string())
                } else if let Some(a) = col.as_any().downcast_ref::<Int32Array>() {
                    Some(a.value(i).to_string())
                } else if let Some(a) = col.as_any().downcast_ref::<BooleanArray>() {
                    Some(a.value(i).to_string())
                } else {
                    panic!("unexpected column type {}", f.data_type())
                };
                m.insert(f.name().clone(), v);
            }
            rows.push(Row(m));
        }
    }
    rows
}

fn stats(base: &str) -> serde_json::Value {
    serde_json::from_slice(&get_ok(&format!("{base}/stats"))).expect("stats JSON")
}

#[test]
fn every_row_reaches_its_expected_outcome_with_an_independent_client() {
    let web = common::start_testweb(3, 24, true);
    let base = web.base_url();
    let rows = read_parquet(get_ok(&format!("{base}/manifest.parquet")));
    let urls = read_parquet(get_ok(&format!("{base}/urls.parquet")));
    assert_eq!(urls.len(), rows.len());
    for (u, r) in urls.iter().zip(&rows) {
        assert_eq!((u.s("url"), u.s("caption")), (r.s("url"), r.s("caption")));
    }
    let robots =
        Robots::parse(std::str::from_utf8(&get_ok(&format!("{base}/robots.txt"))).expect("text"));
    let mut requests = HashMap::new();
    let mut seen = HashMap::<&str, usize>::new();
    for row in &rows {
        let got = reference(row.s("url"), &robots, &mut requests);
        assert_eq!(
            got.status,
            row.s("expected"),
            "{} ({}): {}",
            row.s("url"),
            row.s("form"),
            got.reason
        );
        *seen.entry(row.s("expected")).or_default() += 1;
        if let Some(fault) = row.opt("fault") {
            let want = match fault {
                "slow_drip" | "hang" => "timeout",
                "reset" => "reset",
                "truncated_body" => "short body",
                "endless_body" => "body over cap",
                "gzip_bomb" => "inflated body over cap",
                "redirect_loop" => "too many redirects",
                "redirect_outside" => "address outside allow-list",
                _ => got.reason.as_str(),
            };
            assert_eq!(got.reason, want, "fault {fault}");
        }
        if got.status == "success" {
            check_success(row, &got.body);
        }
    }
    for status in [
        "success",
        "failed_to_download",
        "failed_to_resize",
        "opted_out",
        "disallowed_by_robots",
    ] {
        assert!(
            seen.get(status).is_some_and(|n| *n > 0),
            "no {status} row: {seen:?}"
        );
    }
    let st = stats(&base);
    assert_eq!(
        st["probe"], 0,
        "the reference client never leaves 127.0.0.1"
    );
    assert_eq!(st["disallowed"], 0, "nor enters /private/");
    for path in [
        "/faults/retry-after.jpg",
        "/faults/error-twice.jpg",
        "/faults/hang.jpg",
    ] {
        let name = path
            .trim_start_matches("/faults/")
            .trim_end_matches(".jpg")
            .replace('-', "_");
        let name = if name == "error_twice" {
            "server_error_twice".to_string()
        } else {
            name
        };
        assert_eq!(st["faults"][&name], requests[path], "{name} hits counted");
    }
    let loop_hits = requests["/faults/loop-a.jpg"] + requests["/faults/loop-b.jpg"];
    assert_eq!(st["faults"]["redirect_loop"], loop_hits);
}

fn check_success(row: &Row, body: &[u8]) {
    let url = row.s("url");
    let reader = image::ImageReader::new(std::io::Cursor::new(body))
        .with_guessed_format()
        .expect("in-memory");
    let format = format!("{:?}", reader.format().expect("sniffed")).to_lowercase();
    assert_eq!(format, row.s("format"), "{url}");
    let mut decoder = reader.into_decoder().expect("decoder");
    use image::ImageDecoder;
    let orientation = decoder.orientation().expect("orientation");
    let mut img = image::DynamicImage::from_decoder(decoder).expect("decodes");
    img.apply_orientation(orientation);
    let dims = (img.width().to_string(), img.height().to_string());
    assert_eq!(
        (dims.0.as_str(), dims.1.as_str()),
        (row.s("width"), row.s("height")),
        "{url}"
    );
    let exif = image::metadata::Orientation::from_exif(row.s("orientation").parse().expect("int"));
    assert_eq!(Some(orientation), exif, "{url}");
    let short = img.width().min(img.height());
    let long = img.width().max(img.height());
    assert!(
        long <= 2048 && short >= 32 && long <= short * 5 + 1,
        "{url}: {long}x{short}"
    );
    match row.opt("scene") {
        Some(scene) => {
            let parsed = parse_caption(scene).expect("the scene column is a grammar caption");
            let split = if is_held_out(&parsed) {
                "heldout"
            } else {
                "train"
            };
            assert_eq!(row.s("split"), split);
            if matches!(row.s("alt_kind"), "scene" | "entity" | "whitespace") {
                assert_eq!(parse_caption(row.s("caption")), Some(parsed), "{url}");
            } else {
                assert!(parse_caption(row.s("caption")).is_none(), "{url}");
                assert_eq!(
                    split, "train",
                    "held-out scenes only under parseable alts: {url}"
                );
            }
        }
        None => {
            assert_eq!(row.s("split"), "none");
            assert!(parse_caption(row.s("caption")).is_none());
        }
    }
}

/// A crawler written with Python's standard library: BFS from `/`, same host, robots.txt,
/// charset from the header or `<meta>`, `<base href>`, srcset/data-src/<picture> rules; prints
/// the pairs it found and the manifest rows it did not, as JSON.
const PY_CRAWL: &str = r#"
import sys, json, re, io, urllib.request, urllib.robotparser, urllib.error
from collections import deque
from html.parser import HTMLParser
from urllib.parse import urljoin, urldefrag, urlsplit
import pyarrow.parquet as pq

base = sys.argv[1]
netloc = urlsplit(base).netloc
rp = urllib.robotparser.RobotFileParser(base + "/robots.txt")
rp.read()

def largest(srcset):
    best, best_v = None, -1.0
    for cand in srcset.split(","):
        parts = cand.split()
        if not parts:
            continue
        d = parts[1] if len(parts) > 1 else "1x"
        v = float(d[:-1])
        if v > best_v:
            best, best_v = parts[0], v
    return best

class Page(HTMLParser):
    def __init__(self, url):
        super().__init__(convert_charrefs=True)
        self.base, self.pairs, self.links, self.title = url, [], [], ""
        self.in_title = self.in_picture = False
        self.source = None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "base" and a.get("href"):
            self.base = urljoin(self.base, a["href"])
        elif tag == "title":
            self.in_title = True
        elif tag == "a" and a.get("href"):
            self.links.append(urljoin(self.base, a["href"]))
        elif tag == "picture":
            self.in_picture, self.source = True, None
        elif tag == "source" and self.in_picture and a.get("srcset"):
            self.source = largest(a["srcset"])
        elif tag == "img":
            src = a.get("data-src") or a.get("data-original")
            if not src and a.get("srcset"):
                src = largest(a["srcset"])
            if not src:
                src = a.get("src")
            if (not src or src.startswith("data:")) and self.in_picture:
                src = self.source
            if not src or src.startswith("data:") or "alt" not in a:
                return
            self.pairs.append((urljoin(self.base, src), " ".join((a["alt"] or "").split())))
    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        elif tag == "picture":
            self.in_picture = False
    def handle_data(self, data):
        if self.in_title:
            self.title += data

found, depth = [], {base + "/": 0}
queue = deque([base + "/"])
while queue:
    url = queue.popleft()
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            body, cs = r.read(), r.headers.get_content_charset()
    except urllib.error.HTTPError:
        continue
    if not cs:
        m = re.search(rb"<meta[^>]+charset=[\"']?([A-Za-z0-9_-]+)", body[:1024], re.I)
        cs = m.group(1).decode() if m else "utf-8"
    p = Page(url)
    p.feed(body.decode(cs))
    for pos, (img, alt) in enumerate(p.pairs):
        found.append([url, p.title, depth[url], pos, img, alt])
    for link in p.links:
        link = urldefrag(link)[0]
        s = urlsplit(link)
        if s.scheme == "http" and s.netloc == netloc and link not in depth and rp.can_fetch("*", link):
            depth[link] = depth[url] + 1
            queue.append(link)

with urllib.request.urlopen(base + "/manifest.parquet") as r:
    rows = pq.read_table(io.BytesIO(r.read())).to_pylist()
want = [[r["page_url"], r["title"], r["depth"], r["position"], r["url"], r["caption"]] for r in rows]
print(json.dumps({"pages": len(depth), "found": len(found),
                  "missing": [w for w in want if w not in found],
                  "extra": [f for f in found if f not in want]}))
"#;

#[test]
fn a_python_crawler_finds_exactly_the_manifest_pairs() {
    let web = common::start_testweb(5, 40, true);
    let base = web.base_url();
    let out = common::python(PY_CRAWL, &[&base]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON from the crawler");
    assert_eq!(
        report["missing"],
        serde_json::json!([]),
        "pairs the crawler missed"
    );
    assert_eq!(
        report["extra"],
        serde_json::json!([]),
        "pairs not in the manifest"
    );
    assert_eq!(report["found"].as_u64(), Some(web.manifest().len() as u64));
    let st = stats(&base);
    assert_eq!(
        st["disallowed"], 0,
        "a robots-respecting crawler never enters /private/"
    );
    assert_eq!(st["out_of_scope"], 0);
    assert!(st["pages"].as_u64().expect("count") >= 40);
    assert!(
        st["not_found"].as_u64().expect("count") > 0,
        "the 404 links were followed"
    );
}

#[test]
fn stats_count_the_areas_a_polite_and_safe_client_avoids() {
    let web = common::start_testweb(1, 12, true);
    let base = web.base_url();
    let probe = web.probe_url().expect("faults on: a probe");
    assert!(!get_ok(&format!("{base}/private/0.html")).is_empty());
    let port = base.rsplit(':').next().expect("port");
    let other = http_get(
        &format!("{base}/"),
        Some(&format!("localhost:{port}")),
        Duration::from_secs(20),
    );
    assert_eq!(other.status, 200);
    let p = http_get(&format!("{probe}/probe.jpg"), None, Duration::from_secs(20));
    assert_eq!(p.status, 200);
    let st = stats(&base);
    assert_eq!(
        (st["disallowed"].clone(), st["out_of_scope"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(
        (st["probe"].clone(), st["probe_requests"].clone()),
        (1.into(), 1.into())
    );
}

#[test]
fn the_same_seed_serves_the_same_site() {
    let a = common::start_testweb(11, 16, false);
    let b = common::start_testweb(11, 16, false);
    let c = common::start_testweb(12, 16, false);
    let strip = |web: &webimagetext::testweb::TestWeb, s: String| {
        let port = web.base_url().rsplit(':').next().expect("port").to_string();
        s.replace(&format!(":{port}"), ":PORT")
    };
    let rows = |web: &webimagetext::testweb::TestWeb| {
        let rows = read_parquet(get_ok(&format!("{}/manifest.parquet", web.base_url())));
        rows.into_iter()
            .map(|r| {
                let mut v: Vec<(String, String)> =
                    r.0.into_iter()
                        .map(|(k, v)| (k, strip(web, v.unwrap_or_default())))
                        .collect();
                v.sort();
                v
            })
            .collect::<Vec<_>>()
    };
    let (ra, rb, rc) = (rows(&a), rows(&b), rows(&c));
    assert_eq!(ra, rb);
    assert_ne!(ra, rc, "another seed gives another site");
    let pages: std::collections::BTreeSet<String> =
        a.manifest().iter().map(|r| r.page_url.clone()).collect();
    for page in pages {
        let other = page.replace(&a.base_url(), &b.base_url());
        let body = |web, url: &str| strip(web, String::from_utf8_lossy(&get_ok(url)).into_owned());
        assert_eq!(body(&a, &page), body(&b, &other), "{page}");
    }
    for row in a.manifest().iter().filter(|r| r.expected == "success") {
        let other = row.url.replace(&a.base_url(), &b.base_url());
        assert_eq!(get_ok(&row.url), get_ok(&other), "{}", row.url);
    }
}

#[test]
fn wit_testweb_serves_until_killed() {
    let mut child = std::process::Command::new(common::wit_bin())
        .args(["testweb", "--port", "0", "--pages", "12", "--seed", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wit testweb starts");
    let mut line = String::new();
    // Kept open until the end: closing it early would make the child's later prints fail.
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("a line");
    let base = line.trim().to_string();
    assert!(
        base.starts_with("http://127.0.0.1:"),
        "first line is the base URL: {base:?}"
    );
    let robots = String::from_utf8(get_ok(&format!("{base}/robots.txt"))).expect("text");
    let manifest = read_parquet(get_ok(&format!("{base}/manifest.parquet")));
    child.kill().expect("kill our child");
    child.wait().expect("reaped");
    drop(stdout);
    assert!(robots.contains("Disallow: /private/"));
    assert!(
        manifest.len() > 40,
        "12 pages carry more than 40 pairs: {}",
        manifest.len()
    );
}

#[test]
fn shutdown_closes_the_port() {
    let mut web = common::start_testweb(2, 10, false);
    let base = web.base_url();
    assert!(!get_ok(&format!("{base}/")).is_empty());
    let port: u16 = base
        .rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("number");
    web.shutdown();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens after shutdown"
    );
    web.shutdown();
}

#[test]
fn static_mode_serves_exact_bytes_and_404s_the_rest() {
    let dir = common::scratch();
    std::fs::create_dir(dir.path().join("photos")).expect("mkdir");
    // Every byte value, longer than one socket write, so truncation or re-encoding shows.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let photo: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect();
    std::fs::write(dir.path().join("photos/big cat.JPG"), &photo).expect("write");
    std::fs::write(dir.path().join("page.html"), b"<html>hi</html>").expect("write");
    let mut child = std::process::Command::new(common::wit_bin())
        .args(["testweb", "--port", "0", "--static"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wit testweb --static starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("a line");
    let base = line.trim().to_string();
    let deadline = Duration::from_secs(20);
    let got = http_get(&format!("{base}/photos/big%20cat.JPG?n=17"), None, deadline);
    let page = http_get(&format!("{base}/page.html"), None, deadline);
    let missing = http_get(&format!("{base}/photos/missing.jpg?n=1"), None, deadline);
    let dir_itself = http_get(&format!("{base}/photos"), None, deadline);
    child.kill().expect("kill our child");
    child.wait().expect("reaped");
    drop(stdout);
    assert_eq!((got.status, got.end), (200, End::Complete));
    assert_eq!(got.header("content-type"), Some("image/jpeg"));
    assert!(got.body == photo, "the served bytes differ from the file");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html"));
    assert_eq!(page.body, b"<html>hi</html>");
    assert_eq!(missing.status, 404);
    assert_eq!(dir_itself.status, 404);
}
