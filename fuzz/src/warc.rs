//! WARC and WAT reading (`wit_crawler::warc::read_archive`, `record_pairs`): archives of valid
//! records with damage between them, framed plain, gzip per record, or as one gzip member for the
//! whole file (as some tools write them), and records with long target URIs and many images.

use crate::{run, text};
use flate2::write::GzEncoder;
use flate2::Compression;
use proptest::prelude::*;
use std::io::Write;
use wit_crawler::html::{MAX_ALT_BYTES, MAX_IMAGES_PER_PAGE, MAX_URL_BYTES};
use wit_crawler::warc::{read_archive, record_pairs, Event};

#[derive(Debug, Clone)]
enum Item {
    /// A well-formed HTML response record: target URI, image count, alt text.
    Response(String, usize, String),
    /// A WAT metadata record with a JSON block (possibly not JSON).
    Wat(String),
    /// Bytes that are not a record (never containing `WARC/`).
    Garbage(Vec<u8>),
    /// A record whose Content-Length claims more bytes than follow.
    Overlong(usize),
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Plain,
    GzipPerRecord,
    GzipWhole,
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        6 => ("http://127\\.0\\.0\\.1/[a-z]{0,8}", 0usize..40, "[a-z ]{1,12}")
            .prop_map(|(u, n, a)| Item::Response(u, n, a)),
        1 => (1usize..200_000, 0usize..2000, "[a-z ]{1,12}").prop_map(|(long, n, a)| {
            Item::Response(format!("http://127.0.0.1/{}", "a".repeat(long)), n, a)
        }),
        1 => text().prop_map(Item::Wat),
        2 => proptest::collection::vec(any::<u8>(), 1..300)
            .prop_filter("garbage must not look like a record", |g| {
                !g.windows(5).any(|w| w == b"WARC/")
            })
            .prop_map(|mut g| {
                g.extend_from_slice(b"\r\n");
                Item::Garbage(g)
            }),
        1 => (1usize..100_000).prop_map(Item::Overlong),
    ]
}

fn record(kind: &str, uri: &str, content_type: &str, block: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Target-URI: {uri}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        block.len()
    )
    .into_bytes();
    r.extend_from_slice(block);
    r.extend_from_slice(b"\r\n\r\n");
    r
}

fn bytes_of(item: &Item) -> Vec<u8> {
    match item {
        Item::Response(uri, n, alt) => {
            let mut body = String::from("<html><title>T</title>");
            for i in 0..*n {
                body.push_str(&format!("<img src=\"i/{i}.jpg\" alt=\"{alt}\">"));
            }
            let http = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            record(
                "response",
                uri,
                "application/http; msgtype=response",
                http.as_bytes(),
            )
        }
        Item::Wat(json) => record(
            "metadata",
            "http://127.0.0.1/",
            "application/json",
            json.as_bytes(),
        ),
        Item::Garbage(g) => g.clone(),
        Item::Overlong(extra) => {
            let mut r = record(
                "response",
                "http://127.0.0.1/x",
                "application/http",
                b"HTTP/1.1 200 OK\r\n\r\n",
            );
            let claimed = format!("Content-Length: {}", 19 + extra);
            let text = String::from_utf8(r)
                .unwrap()
                .replacen("Content-Length: 19", &claimed, 1);
            r = text.into_bytes();
            r
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn archive(items: &[Item], framing: Framing) -> Vec<u8> {
    match framing {
        Framing::Plain => items.iter().flat_map(bytes_of).collect(),
        Framing::GzipPerRecord => items.iter().flat_map(|i| gzip(&bytes_of(i))).collect(),
        Framing::GzipWhole => gzip(&items.iter().flat_map(bytes_of).collect::<Vec<_>>()),
    }
}

/// Reading never fails or panics on damage; with only garbage as damage every well-formed
/// response is recovered in every framing; what a record yields is bounded by its size.
pub(crate) fn check(runner: &mut proptest::test_runner::TestRunner) -> Result<(), String> {
    let framing = prop_oneof![
        Just(Framing::Plain),
        Just(Framing::GzipPerRecord),
        Just(Framing::GzipWhole)
    ];
    let cut = proptest::option::weighted(0.2, any::<prop::sample::Index>());
    let strategy = (proptest::collection::vec(item(), 0..24), framing, cut);
    run(runner, strategy, |(items, framing, cut)| {
        let mut bytes = archive(&items, framing);
        if let Some(at) = cut {
            let len = bytes.len().max(1);
            bytes.truncate(at.index(len));
        }
        let mut responses = 0usize;
        let mut worst = None;
        let mut emit = |e: Event| {
            if let Event::Record(rec) = e {
                responses += usize::from(rec.warc_type == "response" && !rec.cut);
                if let Ok(found) = record_pairs(&rec) {
                    // A page's URL and title are shared by its pairs (one copy per record);
                    // each pair's own strings are capped, so a record yields at most the
                    // per-page image cap times the per-pair caps, whatever its size.
                    let shared = found.pairs.first().map_or(0, |p| {
                        p.page_url.len() + p.title.as_deref().map_or(0, str::len)
                    });
                    let own: usize = found
                        .pairs
                        .iter()
                        .map(|p| p.url.len() + p.caption.len())
                        .sum();
                    let cap = MAX_IMAGES_PER_PAGE * (MAX_URL_BYTES + MAX_ALT_BYTES);
                    if shared + own > 64 * rec.content.len() + cap {
                        worst = Some((shared + own, rec.content.len()));
                    }
                }
            }
        };
        let read = read_archive(&bytes[..], 1 << 20, &mut emit);
        prop_assert!(read.is_ok(), "read_archive failed: {read:?}");
        if let Some((out, len)) = worst {
            prop_assert!(false, "{out} pair bytes from a {len}-byte record");
        }
        let only_garbage = items.iter().all(|i| !matches!(i, Item::Overlong(_)));
        if only_garbage && cut.is_none() {
            // A reader may refuse a record whose target URI is over its cap; every other
            // response must come through, whatever damage lies between them.
            let all = items
                .iter()
                .filter(|i| matches!(i, Item::Response(..)))
                .count();
            let short = items
                .iter()
                .filter(|i| matches!(i, Item::Response(u, ..) if u.len() <= 2048))
                .count();
            prop_assert!(
                (short..=all).contains(&responses),
                "{responses} responses recovered, expected {short}..={all} ({framing:?})"
            );
        }
        Ok(())
    })
}
