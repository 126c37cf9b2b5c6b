//! Where shard bytes come from. Shards are named by strings (local paths, brace patterns, a wids
//! `shardindex.json`, http(s) URLs); a [`ShardSource`] turns one name into a byte stream, so an
//! object store (S3, GCS) plugs in by implementing one method instead of touching the pipeline.

use crate::LoaderError;
use serde::Deserialize;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Opens shard and index locations as streams. Implement it to read from another store; the
/// loader only ever reads sequentially from the start, so a plain GET-style API is enough.
pub trait ShardSource: Send + Sync + std::fmt::Debug {
    /// Opens `url` for sequential reading from its first byte.
    fn open(&self, url: &str) -> Result<Box<dyn Read + Send>, LoaderError>;
}

/// One shard to read, with its sample count when an index told us (saves a counting pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardEntry {
    /// Location passed to [`ShardSource::open`].
    pub url: String,
    /// Samples in the shard, from a wids index; `None` until counted.
    pub nsamples: Option<u64>,
}

/// The default source: local files (plain paths or `file://`) and http(s) URLs with retries.
#[derive(Debug, Clone)]
pub struct DefaultSource {
    http: HttpSource,
}

impl DefaultSource {
    /// A source whose HTTP side retries each request `retries` times with exponential backoff.
    pub fn new(retries: u32) -> Self {
        DefaultSource {
            http: HttpSource::new(retries),
        }
    }
}

impl Default for DefaultSource {
    /// Three retries: enough to ride out a restarting server without hiding a dead one.
    fn default() -> Self {
        DefaultSource::new(3)
    }
}

impl ShardSource for DefaultSource {
    fn open(&self, url: &str) -> Result<Box<dyn Read + Send>, LoaderError> {
        if is_http(url) {
            return self.http.open(url);
        }
        if let Some((scheme, _)) = url.split_once("://") {
            if scheme != "file" {
                return Err(LoaderError::Open {
                    url: url.into(),
                    reason: format!(
                        "no source for scheme `{scheme}` (implement wit_loader::ShardSource for it)"
                    ),
                });
            }
        }
        let path = local_path(url);
        let file = File::open(&path).map_err(|e| LoaderError::Open {
            url: url.into(),
            reason: e.to_string(),
        })?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
    }
}

fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn local_path(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("file://").unwrap_or(url))
}

/// http(s) GETs with retries on connection errors, 429 and 5xx, and a body that reconnects with a
/// `Range` request when the connection drops mid-shard, so one flaky hop does not lose a shard.
#[derive(Debug, Clone)]
pub struct HttpSource {
    client: reqwest::blocking::Client,
    retries: u32,
}

impl HttpSource {
    /// A client that retries each request `retries` times (backoff 100 ms, doubling).
    pub fn new(retries: u32) -> Self {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(None)
            .build()
            .expect("a TLS backend is compiled in");
        HttpSource { client, retries }
    }

    fn get(&self, url: &str, offset: u64) -> Result<reqwest::blocking::Response, String> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 << attempt.min(6)));
            }
            let mut req = self.client.get(url);
            if offset > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
            }
            match req.send() {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    last = format!("HTTP {}", r.status());
                }
                Ok(r) => return Err(format!("HTTP {}", r.status())),
                Err(e) => last = e.to_string(),
            }
            tracing::debug!(url, attempt, error = %last, "retrying shard request");
        }
        Err(last)
    }

    fn open(&self, url: &str) -> Result<Box<dyn Read + Send>, LoaderError> {
        let response = self.get(url, 0).map_err(|reason| LoaderError::Open {
            url: url.into(),
            reason,
        })?;
        Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            ResumingBody {
                source: self.clone(),
                url: url.into(),
                response,
                offset: 0,
                reconnects: 0,
            },
        )))
    }
}

/// An HTTP body that resumes from its byte offset after a dropped connection.
struct ResumingBody {
    source: HttpSource,
    url: String,
    response: reqwest::blocking::Response,
    offset: u64,
    reconnects: u32,
}

impl ResumingBody {
    fn reconnect(&mut self, cause: std::io::Error) -> std::io::Result<()> {
        if self.reconnects >= self.source.retries {
            return Err(cause);
        }
        self.reconnects += 1;
        tracing::debug!(url = %self.url, offset = self.offset, error = %cause, "resuming shard body");
        let mut response = self
            .source
            .get(&self.url, self.offset)
            .map_err(std::io::Error::other)?;
        if response.status().as_u16() != 206 {
            // The server ignored Range: skip what we already have.
            std::io::copy(&mut (&mut response).take(self.offset), &mut std::io::sink())?;
        }
        self.response = response;
        Ok(())
    }
}

impl Read for ResumingBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.response.read(buf) {
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => self.reconnect(e)?,
            }
        }
    }
}

/// Expands shard specifications into shard entries, in order: `a/{00000..00009}.tar` and
/// `{a,b}` brace patterns, a folder (its `*.tar`, sorted), a wids `shardindex.json` (local or
/// http; its urls resolve against the index's location), or a single path/URL.
pub fn resolve_shards(
    specs: &[String],
    source: &dyn ShardSource,
) -> Result<Vec<ShardEntry>, LoaderError> {
    let mut out = Vec::new();
    for spec in specs {
        for name in expand_braces(spec)? {
            if name.ends_with(".json") {
                out.extend(read_index(&name, source)?);
            } else if !is_http(&name) && local_path(&name).is_dir() {
                out.extend(tars_in(&local_path(&name))?);
            } else {
                out.push(ShardEntry {
                    url: name,
                    nsamples: None,
                });
            }
        }
    }
    if out.is_empty() {
        return Err(LoaderError::NoShards(format!(
            "{specs:?} named no shard (give .tar paths, a brace pattern, a folder or a shardindex.json)"
        )));
    }
    Ok(out)
}

fn tars_in(dir: &Path) -> Result<Vec<ShardEntry>, LoaderError> {
    let mut tars: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    tars.sort();
    Ok(tars
        .into_iter()
        .map(|p| ShardEntry {
            url: p.to_string_lossy().into_owned(),
            nsamples: None,
        })
        .collect())
}

#[derive(Deserialize)]
struct WidsIndex {
    #[serde(rename = "__kind__")]
    kind: Option<String>,
    shardlist: Vec<WidsShard>,
}

#[derive(Deserialize)]
struct WidsShard {
    url: String,
    nsamples: Option<u64>,
}

fn read_index(url: &str, source: &dyn ShardSource) -> Result<Vec<ShardEntry>, LoaderError> {
    let mut text = String::new();
    source
        .open(url)?
        .read_to_string(&mut text)
        .map_err(|e| LoaderError::Open {
            url: url.into(),
            reason: e.to_string(),
        })?;
    let bad = |reason: String| LoaderError::Index {
        url: url.into(),
        reason,
    };
    let index: WidsIndex = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if index.kind.as_deref() != Some("wids-shard-index-v1") {
        return Err(bad(format!("__kind__ is {:?}", index.kind)));
    }
    index
        .shardlist
        .into_iter()
        .map(|s| {
            Ok(ShardEntry {
                url: join_location(url, &s.url).map_err(bad)?,
                nsamples: s.nsamples,
            })
        })
        .collect()
}

/// Resolves `rel` against the location of `base` (the index file), as wids does.
fn join_location(base: &str, rel: &str) -> Result<String, String> {
    if is_http(rel) || rel.contains("://") || Path::new(rel).is_absolute() {
        return Ok(rel.into());
    }
    if is_http(base) {
        let base = url::Url::parse(base).map_err(|e| e.to_string())?;
        return base
            .join(rel)
            .map(|u| u.to_string())
            .map_err(|e| e.to_string());
    }
    let dir = local_path(base)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok(dir.join(rel).to_string_lossy().into_owned())
}

/// Expands the first `{...}` group of `spec` (numeric range `a..b` keeping zero padding, or a
/// comma list) and recurses, like webdataset's braceexpand.
pub fn expand_braces(spec: &str) -> Result<Vec<String>, LoaderError> {
    let Some(open) = spec.find('{') else {
        return Ok(vec![spec.to_string()]);
    };
    let close = spec[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| LoaderError::NoShards(format!("unclosed brace in {spec:?}")))?;
    let (head, body, tail) = (&spec[..open], &spec[open + 1..close], &spec[close + 1..]);
    let mut out = Vec::new();
    for alt in brace_alternatives(body, spec)? {
        for rest in expand_braces(tail)? {
            out.push(format!("{head}{alt}{rest}"));
        }
    }
    Ok(out)
}

fn brace_alternatives(body: &str, spec: &str) -> Result<Vec<String>, LoaderError> {
    let Some((a, b)) = body.split_once("..") else {
        return Ok(body.split(',').map(str::to_string).collect());
    };
    let bad = || LoaderError::NoShards(format!("bad range {{{body}}} in {spec:?}"));
    let lo: u64 = a.parse().map_err(|_| bad())?;
    let hi: u64 = b.parse().map_err(|_| bad())?;
    if hi < lo {
        return Err(bad());
    }
    let width = if a.starts_with('0') { a.len() } else { 0 };
    Ok((lo..=hi).map(|i| format!("{i:0width$}")).collect())
}
