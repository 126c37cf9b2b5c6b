//! End-to-end tests of `wit crawl` and `wit warc` against the embedded test web (real HTTP on
//! 127.0.0.1), with Python's pyarrow reading the pairs table and warcio writing and reading
//! the WARC/WAT files.

use crate::common::{python, scratch, wit, wit_ok};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use webimagetext::testweb::{TestWeb, TestWebConfig};

/// A (url, caption, page_url, position) row of a pairs table, read by pyarrow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    url: String,
    caption: String,
    page_url: String,
    position: i32,
}

/// Reads `pairs.parquet` with pyarrow, checking the column types `wit download` expects.
fn read_pairs(path: &Path) -> Vec<Row> {
    let out = python(
        r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
types = {f.name: str(f.type) for f in t.schema}
assert types == {"url": "string", "caption": "string", "page_url": "string", "title": "string",
                 "position": "int32", "width": "int32", "height": "int32"}, types
for r in t.to_pylist():
    print(json.dumps([r["url"], r["caption"], r["page_url"], r["position"]]))
"#,
        &[path.to_str().unwrap()],
    );
    out.lines()
        .map(|l| {
            let v: (String, String, String, i32) = serde_json::from_str(l).unwrap();
            Row {
                url: v.0,
                caption: v.1,
                page_url: v.2,
                position: v.3,
            }
        })
        .collect()
}

fn manifest_rows(web: &TestWeb) -> Vec<Row> {
    web.manifest()
        .iter()
        .map(|m| Row {
            url: m.url.clone(),
            caption: m.caption.clone(),
            page_url: m.page_url.clone(),
            position: m.position,
        })
        .collect()
}

fn url_alt(rows: &[Row]) -> BTreeSet<(String, String)> {
    rows.iter()
        .map(|r| (r.url.clone(), r.caption.clone()))
        .collect()
}

fn start_web(pages: usize) -> TestWeb {
    TestWeb::start(TestWebConfig {
        seed: 11,
        pages,
        faults: false,
    })
    .expect("test web starts")
}

fn crawl_args<'a>(seed: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "crawl",
        seed,
        "-o",
        out,
        "--allow-net",
        "127.0.0.1/32",
        "--per-host-delay-ms",
        "0",
        "--per-host-concurrency",
        "8",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn crawl_finds_the_manifest_pairs_and_nothing_else_without_touching_robots_areas() {
    let web = start_web(60);
    let out = scratch();
    let out_s = out.path().to_str().unwrap();
    let seed = format!("{}/", web.base_url());
    wit_ok(&crawl_args(
        &seed,
        out_s,
        &[
            "--keep-empty-alt",
            "--max-depth",
            "100",
            "--max-pages",
            "100000",
        ],
    ));
    let got = read_pairs(&out.path().join("pairs.parquet"));
    let manifest = manifest_rows(&web);
    let (want, have) = (url_alt(&manifest), url_alt(&got));

    let found = want.intersection(&have).count();
    let recall = found as f64 / want.len() as f64;
    assert!(
        recall >= 0.99,
        "recall {recall:.4} ({found}/{}); missing e.g. {:?}",
        want.len(),
        want.difference(&have).take(5).collect::<Vec<_>>()
    );
    let extra: Vec<_> = have.difference(&want).collect();
    assert!(
        extra.is_empty(),
        "pairs the pages do not contain: {extra:?}"
    );

    // Provenance: each pair names a page holding it, at the manifest's position.
    let triples: BTreeSet<Row> = manifest.iter().cloned().collect();
    let wrong: Vec<_> = got.iter().filter(|r| !triples.contains(r)).collect();
    assert!(
        wrong.is_empty(),
        "page_url/position disagree with the manifest: {wrong:?}"
    );

    let stats = web.stats();
    assert_eq!(
        stats["disallowed"], 0,
        "robots-disallowed paths were hit: {stats}"
    );
    assert_eq!(
        stats["out_of_scope"], 0,
        "other hosts were contacted: {stats}"
    );
    assert_eq!(
        stats["images"], 0,
        "a crawl without --download fetches no images: {stats}"
    );
    assert!(
        stats["robots_txt"].as_u64().unwrap() >= 1,
        "robots.txt was not read: {stats}"
    );
}

#[test]
fn crawl_limits_pages_and_drops_empty_alts_by_default() {
    let web = start_web(30);
    let out = scratch();
    let out_s = out.path().to_str().unwrap();
    let seed = format!("{}/", web.base_url());
    let stdout = wit_ok(&crawl_args(&seed, out_s, &["--max-pages", "3"])).stdout;
    assert!(String::from_utf8_lossy(&stdout).contains("crawled 3 pages"));
    let got = read_pairs(&out.path().join("pairs.parquet"));
    assert!(!got.is_empty());
    assert!(
        got.iter().all(|r| !r.caption.is_empty()),
        "empty alt kept without --keep-empty-alt"
    );
    let pages: BTreeSet<_> = got.iter().map(|r| r.page_url.clone()).collect();
    assert!(pages.len() <= 3, "more than --max-pages pages: {pages:?}");
    assert_eq!(web.stats()["pages"], 3);
}

#[test]
fn crawl_refuses_loopback_without_allow_net_and_says_so() {
    let web = start_web(10);
    let out = scratch();
    let seed = format!("{}/", web.base_url());
    let run = wit(&["crawl", &seed, "-o", out.path().to_str().unwrap()]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("--allow-net"), "{stderr}");
    assert_eq!(
        web.stats()["requests"],
        0,
        "the SSRF guard let a request through"
    );
}

#[test]
fn crawl_with_download_writes_shards_with_the_manifest_outcomes() {
    let web = start_web(12);
    let out = scratch();
    let out_s = out.path().to_str().unwrap();
    let seed = format!("{}/", web.base_url());
    wit_ok(&crawl_args(
        &seed,
        out_s,
        &["--download", "--max-depth", "100"],
    ));
    let shards = out.path().join("shards");
    let statuses = python(
        r#"
import glob, json, sys
import pyarrow.parquet as pq
for f in sorted(glob.glob(sys.argv[1] + "/[0-9]*.parquet")):
    for r in pq.read_table(f).to_pylist():
        print(json.dumps([r["url"], r["caption"], r["status"]]))
"#,
        &[shards.to_str().unwrap()],
    );
    let got: BTreeSet<(String, String, String)> = statuses
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want: BTreeSet<(String, String, String)> = web
        .manifest()
        .iter()
        .filter(|m| !m.caption.is_empty())
        .map(|m| (m.url.clone(), m.caption.clone(), m.expected.to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(shards.join("shardindex.json").is_file());
    assert_eq!(web.stats()["disallowed"], 0);
}

/// Python: fetch the site's pages, write them as a WARC (response records) and as a WAT
/// (cc2dataset-shaped JSON from html.parser, plus one malformed JSON record) with warcio, then
/// read both back with warcio. Prints the records of each file and the pairs cc2dataset's rule
/// gives from the WAT.
const MAKE_ARCHIVES: &str = r##"
import io, json, sys, urllib.request
from html.parser import HTMLParser
from urllib.parse import urljoin
from warcio.warcwriter import WARCWriter
from warcio.statusandheaders import StatusAndHeaders
from warcio.archiveiterator import ArchiveIterator

pages, warc_path, wat_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

class Links(HTMLParser):
    def __init__(self):
        super().__init__(); self.links, self.base, self.title, self.in_title = [], None, "", False
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img": self.links.append({"path": "IMG@/src", "url": a.get("src") or "", **({"alt": a["alt"]} if "alt" in a else {})})
        if tag == "a" and "href" in a: self.links.append({"path": "A@/href", "url": a["href"]})
        if tag == "base" and self.base is None and "href" in a: self.base = a["href"]
        if tag == "title": self.in_title = True
    def handle_endtag(self, tag):
        if tag == "title": self.in_title = False
    def handle_data(self, d):
        if self.in_title: self.title += d

with open(warc_path, "wb") as wf, open(wat_path, "wb") as tf:
    warc, wat = WARCWriter(wf, gzip=True), WARCWriter(tf, gzip=True)
    for i, url in enumerate(pages):
        resp = opener.open(url)
        body, ctype = resp.read(), resp.headers.get("Content-Type", "text/html")
        headers = StatusAndHeaders("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
        warc.write_record(warc.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))
        charset = ctype.split("charset=")[-1] if "charset=" in ctype else "utf-8"
        p = Links(); p.feed(body.decode(charset, errors="replace"))
        head = {"Title": p.title}
        if p.base: head["Base"] = p.base
        meta = {"Envelope": {"WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": url},
                "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Head": head, "Links": p.links}}}}}
        wat.write_record(wat.create_warc_record(url, "metadata", payload=io.BytesIO(json.dumps(meta).encode()),
                                                warc_content_type="application/json"))
        if i == 1:
            wat.write_record(wat.create_warc_record(url + "#broken", "metadata", payload=io.BytesIO(b'{"Envelope": {"Payload-Metadata": [1, 2'),
                                                    warc_content_type="application/json"))

def listing(path):
    out = []
    with open(path, "rb") as f:
        it = ArchiveIterator(f)
        for rec in it:
            rec.content_stream().read()
            out.append([rec.rec_type, rec.rec_headers.get_header("WARC-Target-URI"), it.get_record_offset(), it.get_record_length()])
    return out

pairs = []
with open(wat_path, "rb") as f:
    for rec in ArchiveIterator(f):
        if rec.rec_type != "metadata": continue
        try: data = json.loads(rec.content_stream().read())
        except ValueError: continue
        env = data["Envelope"]
        html = env["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]
        target = env["WARC-Header-Metadata"]["WARC-Target-URI"]
        # cc2dataset uses Head.Base as is; a relative one (legal HTML) must resolve first.
        base = urljoin(target, html.get("Head", {}).get("Base") or target)
        for l in html.get("Links", []):
            if l.get("path") == "IMG@/src" and l.get("alt"):
                u = urljoin(base, l["url"])
                if u.startswith(("http://", "https://")):
                    pairs.append([u, " ".join(l["alt"].split())])
print(json.dumps({"warc": listing(warc_path), "wat": listing(wat_path), "wat_pairs": pairs}))
"##;

#[derive(serde::Deserialize)]
struct Archives {
    /// (type, target, offset, length) per record, as warcio reads them.
    warc: Vec<(String, Option<String>, u64, u64)>,
    wat: Vec<(String, Option<String>, u64, u64)>,
    wat_pairs: Vec<(String, String)>,
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("warc_summary.json")).unwrap()).unwrap()
}

/// Serves one file over HTTP on 127.0.0.1 for `hits` requests.
fn serve_file(bytes: Vec<u8>, hits: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(hits) {
            let mut s = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bytes.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&bytes);
        }
    });
    format!("http://{addr}/site.wat.gz")
}

#[test]
fn warc_and_wat_match_warcio_and_cc2dataset_and_survive_damage() {
    let web = start_web(12);
    let dir = scratch();
    let pages: BTreeSet<String> = web.manifest().iter().map(|m| m.page_url.clone()).collect();
    let pages: Vec<String> = pages.into_iter().collect();
    let warc_path = dir.path().join("site.warc.gz");
    let wat_path = dir.path().join("site.wat.gz");
    let listing: Archives = serde_json::from_str(&python(
        MAKE_ARCHIVES,
        &[
            &serde_json::to_string(&pages).unwrap(),
            warc_path.to_str().unwrap(),
            wat_path.to_str().unwrap(),
        ],
    ))
    .unwrap();

    // WARC: every record warcio sees, and exactly the manifest's pairs with an alt.
    let out = dir.path().join("warc-out");
    wit_ok(&[
        "warc",
        warc_path.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let s = summary(&out);
    assert_eq!(s["records"], listing.warc.len() as u64);
    assert_eq!(s["pages"], pages.len() as u64);
    assert_eq!(s["skipped"], 0);
    let want: BTreeSet<(String, String)> = web
        .manifest()
        .iter()
        .filter(|m| !m.caption.is_empty())
        .map(|m| (m.url.clone(), m.caption.clone()))
        .collect();
    let from_warc = url_alt(&read_pairs(&out.join("pairs.parquet")));
    assert_eq!(from_warc, want);

    // WAT: cc2dataset's rule applied by Python to the same file; the malformed record counted.
    let out = dir.path().join("wat-out");
    let run = wit(&[
        "warc",
        wat_path.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        run.status.code(),
        Some(3),
        "a skipped record must give exit code 3"
    );
    let s = summary(&out);
    assert_eq!(s["records"], listing.wat.len() as u64);
    assert_eq!(s["skipped_by_reason"]["malformed_wat_json"], 1);
    let cc2dataset: BTreeSet<(String, String)> = listing.wat_pairs.iter().cloned().collect();
    assert_eq!(url_alt(&read_pairs(&out.join("pairs.parquet"))), cc2dataset);

    // A truncated gzip member in the middle costs only its own record.
    let bytes = std::fs::read(&warc_path).unwrap();
    let (victim, offset, length) = listing
        .warc
        .iter()
        .filter(|r| r.0 == "response")
        .nth(2)
        .map(|r| (r.1.clone().unwrap(), r.2 as usize, r.3 as usize))
        .unwrap();
    let mut damaged = bytes[..offset + length / 2].to_vec();
    damaged.extend_from_slice(&bytes[offset + length..]);
    let damaged_path = dir.path().join("damaged.warc.gz");
    std::fs::write(&damaged_path, damaged).unwrap();
    let out = dir.path().join("damaged-out");
    let run = wit(&[
        "warc",
        damaged_path.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&run.stdout).contains("corrupt_gzip_member"));
    let s = summary(&out);
    assert_eq!(s["records"], listing.warc.len() as u64 - 1);
    assert_eq!(s["skipped_by_reason"]["corrupt_gzip_member"], 1);
    let survivors: BTreeSet<(String, String)> = web
        .manifest()
        .iter()
        .filter(|m| !m.caption.is_empty() && m.page_url != victim)
        .map(|m| (m.url.clone(), m.caption.clone()))
        .collect();
    let got = url_alt(&read_pairs(&out.join("pairs.parquet")));
    assert!(
        got.is_superset(&survivors),
        "pairs of intact records were lost"
    );
    assert!(got.is_subset(&want));

    // Streamed over HTTP: the SSRF guard refuses loopback unless allowed.
    let wat_bytes = std::fs::read(&wat_path).unwrap();
    let url = serve_file(wat_bytes, 1);
    let out = dir.path().join("http-refused");
    let run = wit(&["warc", &url, "-o", out.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(3));
    assert_eq!(summary(&out)["skipped_by_reason"]["source_failed"], 1);
    let out = dir.path().join("http-out");
    let run = wit(&[
        "warc",
        &url,
        "-o",
        out.to_str().unwrap(),
        "--allow-net",
        "127.0.0.1/32",
    ]);
    assert_eq!(
        run.status.code(),
        Some(3),
        "the malformed record is still counted"
    );
    assert_eq!(url_alt(&read_pairs(&out.join("pairs.parquet"))), cc2dataset);
}

#[test]
fn crawl_caption_filters_drop_boilerplate_pairs_and_count_them() {
    let web = start_web(12);
    let out = scratch();
    let out_s = out.path().to_str().unwrap();
    let seed = format!("{}/", web.base_url());
    let flags = ["--keep-empty-alt", "--max-depth", "100"];
    wit_ok(&crawl_args(
        &seed,
        out_s,
        &[flags[0], flags[1], flags[2], "--drop-boilerplate-captions"],
    ));
    let got = url_alt(&read_pairs(&out.path().join("pairs.parquet")));
    let (boilerplate, kept): (Vec<_>, Vec<_>) = web.manifest().iter().partition(|m| m.boilerplate);
    let pairs = |rows: &[&webimagetext::testweb::ManifestRow]| -> BTreeSet<(String, String)> {
        rows.iter()
            .map(|m| (m.url.clone(), m.caption.clone()))
            .collect()
    };
    assert_eq!(
        got,
        pairs(&kept),
        "pairs.parquet holds exactly the non-boilerplate pairs"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("crawl_summary.json")).unwrap())
            .unwrap();
    let dropped = &summary["filtered_pairs"];
    let by_reason = dropped
        .as_object()
        .expect("crawl_summary.json has filtered_pairs");
    assert!(
        by_reason
            .keys()
            .all(|k| k.starts_with("caption is boilerplate")),
        "{dropped}"
    );
    let total: u64 = by_reason.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total as usize, pairs(&boilerplate).len(), "{dropped}");
}
