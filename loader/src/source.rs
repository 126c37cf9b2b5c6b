//! Where shard bytes come from. Shards are named by strings (local paths, brace patterns, a wids
//! `shardindex.json`, http(s) URLs); a [`ShardSource`] turns one name into a byte stream, so an
//! object store (S3, GCS) plugs in by implementing one method instead of touching the pipeline.

use crate::LoaderError;
use serde::Deserialize;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use url::Url;
use wit_net::{open_blocking, HttpConfig, NetPolicy};

/// The largest `shardindex.json` read: a million entries of ~60 bytes. A larger (or endless)
/// index is refused rather than read into memory.
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

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

/// The default source: local files (plain paths or `file://`) and http(s) URLs through
/// `wit-net` (the SSRF guard, checked redirects, read timeout, retries, `Range` resume).
#[derive(Debug, Clone)]
pub struct DefaultSource {
    http: HttpSource,
}

impl DefaultSource {
    /// A source whose http(s) side talks to servers as `http` says (policy, timeouts, retries).
    pub fn new(http: HttpConfig) -> Self {
        DefaultSource {
            http: HttpSource::new(http),
        }
    }
}

impl Default for DefaultSource {
    /// Public addresses only, `wit-net`'s stream defaults (30 s read timeout, 3 retries).
    fn default() -> Self {
        DefaultSource::new(HttpConfig::new(NetPolicy::default()))
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

/// http(s) GETs through `wit-net`: a stalled server fails after the read timeout instead of
/// hanging training, and a body that breaks mid-shard resumes with `Range`.
#[derive(Debug, Clone)]
pub struct HttpSource {
    cfg: HttpConfig,
}

impl HttpSource {
    /// A source talking to servers as `cfg` says.
    pub fn new(cfg: HttpConfig) -> Self {
        HttpSource { cfg }
    }

    fn open(&self, url: &str) -> Result<Box<dyn Read + Send>, LoaderError> {
        let open = || {
            let parsed = Url::parse(url).map_err(|e| e.to_string())?;
            open_blocking(self.cfg.clone(), parsed, None).map_err(|e| e.to_string())
        };
        let body = open().map_err(|reason| LoaderError::Open {
            url: url.into(),
            reason,
        })?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, body)))
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
        .take(MAX_INDEX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| LoaderError::Open {
            url: url.into(),
            reason: e.to_string(),
        })?;
    let bad = |reason: String| LoaderError::Index {
        url: url.into(),
        reason,
    };
    if text.len() as u64 > MAX_INDEX_BYTES {
        return Err(bad(format!(
            "larger than {MAX_INDEX_BYTES} bytes (wit_loader::MAX_INDEX_BYTES)"
        )));
    }
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

/// Resolves an index entry `rel` against the location of `base` (the index file), as wids does.
///
/// A local index is the user's own file: its entries may be absolute paths or URLs. A remote
/// index is untrusted input: its entries must be relative names (resolved against the index's
/// URL) or http(s) URLs (which the SSRF guard checks when they are opened); absolute paths, `file:` and other schemes would
/// let a server make the loader read local files or internal services, and are refused.
fn join_location(base: &str, rel: &str) -> Result<String, String> {
    if is_http(base) {
        let base = Url::parse(base).map_err(|e| e.to_string())?;
        if rel.starts_with('/') || rel.starts_with('\\') {
            return Err(format!(
                "entry {rel:?} is an absolute path: a remote index may only name shards relative to itself or http(s) URLs"
            ));
        }
        if let Ok(absolute) = Url::parse(rel) {
            if !is_http(absolute.as_str()) {
                return Err(format!(
                    "entry {rel:?} has scheme `{}`: a remote index may only name http(s) shards",
                    absolute.scheme()
                ));
            }
            // The address is checked by the SSRF guard when the shard is opened.
            return Ok(absolute.to_string());
        }
        return base
            .join(rel)
            .map(|u| u.to_string())
            .map_err(|e| e.to_string());
    }
    if is_http(rel) || rel.contains("://") || Path::new(rel).is_absolute() {
        return Ok(rel.into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_index_names_only_relative_shards_or_http_urls() {
        let base = "http://h/data/shardindex.json";
        assert_eq!(
            join_location(base, "00000.tar").unwrap(),
            "http://h/data/00000.tar"
        );
        assert_eq!(
            join_location(base, "../other/1.tar").unwrap(),
            "http://h/other/1.tar"
        );
        assert_eq!(
            join_location(base, "https://cdn/1.tar").unwrap(),
            "https://cdn/1.tar"
        );
        for bad in [
            "/etc/passwd",
            "file:///etc/passwd",
            "//evil/x.tar",
            "s3://b/k.tar",
        ] {
            assert!(join_location(base, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_local_index_may_name_anything() {
        assert_eq!(join_location("/d/i.json", "a.tar").unwrap(), "/d/a.tar");
        assert_eq!(join_location("/d/i.json", "/x/a.tar").unwrap(), "/x/a.tar");
    }

    #[test]
    fn an_oversized_index_is_refused() {
        #[derive(Debug)]
        struct Endless;
        impl ShardSource for Endless {
            fn open(&self, _: &str) -> Result<Box<dyn Read + Send>, LoaderError> {
                Ok(Box::new(std::io::repeat(b' ')))
            }
        }
        let err = read_index("mem://i.json", &Endless).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }
}
