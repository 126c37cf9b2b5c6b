//! Shards over http from a server on 127.0.0.1 that fails the first request of each file and
//! drops the connection half-way through the next: the loader must retry, resume with a Range
//! request, and produce exactly the batches of the same shards read locally.

use crate::common::{config, make_shards};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use wit_loader::Loader;

/// Serves files of `root`; per path: request 1 → 500, request 2 → half the body then close,
/// later requests honour `Range: bytes=N-` with 206.
fn serve(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (root, hits) = (root.clone(), hits.clone());
            std::thread::spawn(move || handle(stream, &root, &hits));
        }
    });
    format!("http://{addr}")
}

fn handle(mut stream: TcpStream, root: &std::path::Path, hits: &Mutex<HashMap<String, u32>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    let mut range = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = v.trim().trim_end_matches('-').parse().unwrap();
        }
    }
    let n = {
        let mut m = hits.lock().unwrap();
        let c = m.entry(path.clone()).or_default();
        *c += 1;
        *c
    };
    let Ok(body) = std::fs::read(root.join(&path)) else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let is_tar = path.ends_with(".tar");
    if is_tar && n == 1 {
        let _ = stream
            .write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    if is_tar && n == 2 {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body[..body.len() / 2]);
        return;
    }
    let part = &body[range..];
    let status = if range > 0 {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        part.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(part);
}

/// The default source with the SSRF guard opened for the loopback test server only.
fn loopback_source() -> Arc<dyn wit_loader::ShardSource> {
    let policy = wit_net::NetPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]);
    Arc::new(wit_loader::DefaultSource::new(wit_net::HttpConfig::new(
        policy,
    )))
}

fn keys_of_epoch(shards: Vec<String>) -> (Vec<String>, u64) {
    let mut cfg = config(shards, 4);
    cfg.source = loopback_source();
    let mut l = Loader::new(cfg).unwrap();
    let mut keys = Vec::new();
    while let Some(b) = l.next_batch().unwrap() {
        keys.extend(b.keys);
    }
    (keys, l.stats().skipped())
}

#[test]
fn http_shards_with_failures_equal_local_shards() {
    let dir = tempfile::tempdir().unwrap();
    let local = make_shards(dir.path(), &[9, 6, 11]);
    let index = serde_json::json!({"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "t",
        "shardlist": [{"url": "00000.tar", "nsamples": 9, "filesize": 1},
                      {"url": "00001.tar", "nsamples": 6, "filesize": 1},
                      {"url": "00002.tar", "nsamples": 11, "filesize": 1}]});
    std::fs::write(dir.path().join("shardindex.json"), index.to_string()).unwrap();
    let base = serve(dir.path().to_path_buf());
    let (want, _) = keys_of_epoch(local);
    let (got, skipped) = keys_of_epoch(vec![format!("{base}/shardindex.json")]);
    assert_eq!(
        skipped, 0,
        "retries and Range resumption must recover every sample"
    );
    assert_eq!(got, want);
}

#[test]
fn brace_patterns_expand_over_http_urls() {
    let dir = tempfile::tempdir().unwrap();
    make_shards(dir.path(), &[3, 4]);
    let base = serve(dir.path().to_path_buf());
    let entries = wit_loader::resolve_shards(
        &[format!("{base}/{{00000..00001}}.tar")],
        &wit_loader::DefaultSource::default(),
    )
    .unwrap();
    let urls: Vec<_> = entries.iter().map(|e| e.url.clone()).collect();
    assert_eq!(
        urls,
        vec![format!("{base}/00000.tar"), format!("{base}/00001.tar")]
    );
    let (keys, skipped) = keys_of_epoch(urls);
    assert_eq!(skipped, 0);
    assert_eq!(keys.len(), 4);
}
