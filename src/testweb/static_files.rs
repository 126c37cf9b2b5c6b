//! Static mode of the test web (`wit testweb --static DIR`): every file under a folder, read into
//! memory at start and served by the same socket server, so a benchmark's image server costs no
//! disk I/O and never becomes the bottleneck. The query string is ignored, which lets a benchmark
//! ask for one file under many unique URLs (`?n=i`) so no cache can help the client.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context};
use bytes::Bytes;

use super::site::{Resource, Site};
use super::{bind, faults, server, TestWeb};

impl TestWeb {
    /// Serves the files under `dir` (recursively, read now) on `port` of 127.0.0.1 (0 picks a
    /// free one): `/a/b.jpg` answers `dir/a/b.jpg` with a Content-Type from its extension, any
    /// other path 404s.
    pub fn start_static(dir: &Path, port: u16) -> anyhow::Result<TestWeb> {
        let mut routes = HashMap::new();
        load_dir(dir, "", &mut routes)?;
        ensure!(
            !routes.is_empty(),
            "{} holds no files to serve: point --static at a folder with files",
            dir.display()
        );
        let (main, _) = bind(port, false)?;
        let port = main.local_addr()?.port();
        let base_url = format!("http://127.0.0.1:{port}");
        let state = Arc::new(server::State {
            site: Site {
                routes,
                manifest: Vec::new(),
            },
            stats: server::Stats::default(),
            host: format!("127.0.0.1:{port}"),
            fault_assets: faults::FaultAssets::new(0, format!("http://127.0.0.2:{port}")),
        });
        TestWeb::launch(state, main, None, base_url, None)
    }

    /// How many files static mode serves (a file reachable under its raw and its
    /// percent-encoded name shares one body and counts once).
    pub fn static_file_count(&self) -> usize {
        let bodies: std::collections::HashSet<*const u8> = self
            .state
            .site
            .routes
            .values()
            .filter_map(|r| match r {
                Resource::Static { body, .. } => Some(body.as_ptr()),
                _ => None,
            })
            .collect();
        bodies.len()
    }
}

/// Adds every file under `dir` to `routes` as `{prefix}/{name}` (raw and percent-encoded).
fn load_dir(
    dir: &Path,
    prefix: &str,
    routes: &mut HashMap<String, Resource>,
) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}: check the --static folder", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let route = format!("{prefix}/{name}");
        if path.is_dir() {
            load_dir(&path, &route, routes)?;
            continue;
        }
        let body = Bytes::from(
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
        );
        let content_type = content_type(&name);
        let encoded = percent_encode(&route);
        if encoded != route {
            let body = body.clone();
            routes.insert(encoded, Resource::Static { content_type, body });
        }
        routes.insert(route, Resource::Static { content_type, body });
    }
    Ok(())
}

/// The Content-Type for a file name, by its extension (case-insensitive).
fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "svg" => "image/svg+xml",
        "html" | "htm" => "text/html",
        "txt" => "text/plain; charset=utf-8",
        "css" => "text/css",
        "js" => "text/javascript",
        "json" => "application/json",
        "parquet" => "application/vnd.apache.parquet",
        "tar" => "application/x-tar",
        _ => "application/octet-stream",
    }
}

/// Percent-encodes every byte of `path` outside RFC 3986's unreserved set and `/`, the way
/// clients send names with spaces or non-ASCII letters.
fn percent_encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("a.JPG"), "image/jpeg");
        assert_eq!(content_type("dir.v2/page.html"), "text/html");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }

    #[test]
    fn names_are_percent_encoded_like_clients_send_them() {
        assert_eq!(percent_encode("/a b/é.png"), "/a%20b/%C3%A9.png");
        assert_eq!(percent_encode("/plain-name_1.jpg"), "/plain-name_1.jpg");
    }
}
