//! A small HTTP/1.1 server over tokio sockets: GET and HEAD, keep-alive, Content-Length bodies.
//! It is hand-written rather than hyper so the fault area can misbehave at the socket level
//! (drip, reset, truncate, never end), which a conforming server library does not allow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::faults::{self, Fault, FaultAssets, Reply};
use super::site::{Resource, Site};

/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// How long an idle keep-alive connection (or a slow request head) is kept.
const IDLE: Duration = Duration::from_secs(30);
/// Hard limit on one request's handling, faults included, even against a client that stops
/// reading: every handler ends by itself within a minute.
const HANDLER_LIMIT: Duration = Duration::from_secs(58);

/// Everything the connection tasks share.
pub(crate) struct State {
    pub site: Site,
    pub stats: Stats,
    /// `127.0.0.1:PORT`: requests naming any other Host are counted as out of scope.
    pub host: String,
    pub fault_assets: FaultAssets,
}

/// Hit counters per area, served as `/stats`.
#[derive(Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    pages: AtomicU64,
    images: AtomicU64,
    robots_txt: AtomicU64,
    data_files: AtomicU64,
    not_found: AtomicU64,
    disallowed: AtomicU64,
    out_of_scope: AtomicU64,
    probe_connections: AtomicU64,
    probe_requests: AtomicU64,
    faults: [AtomicU64; Fault::ALL.len()],
}

fn bump(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::Relaxed) + 1
}

impl Stats {
    /// The counters as JSON (the body of `/stats`).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let faults: serde_json::Map<String, serde_json::Value> = Fault::ALL
            .iter()
            .zip(&self.faults)
            .map(|(f, c)| (f.name().to_string(), get(c).into()))
            .collect();
        serde_json::json!({
            "requests": get(&self.requests),
            "pages": get(&self.pages),
            "images": get(&self.images),
            "robots_txt": get(&self.robots_txt),
            "data_files": get(&self.data_files),
            "not_found": get(&self.not_found),
            "disallowed": get(&self.disallowed),
            "out_of_scope": get(&self.out_of_scope),
            "probe": get(&self.probe_connections),
            "probe_requests": get(&self.probe_requests),
            "faults": faults,
        })
    }
}

/// A complete response with a known length.
pub(crate) struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

impl Response {
    /// 200 with `body`.
    pub(crate) fn ok(content_type: &'static str, body: Bytes) -> Response {
        Response {
            status: 200,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// A plain-text response with `status`.
    pub(crate) fn status(status: u16, text: &'static str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: Bytes::from_static(text.as_bytes()),
        }
    }

    /// 302 to `location`.
    pub(crate) fn redirect(location: String) -> Response {
        Response::status(302, "moved\n").header("Location", location)
    }

    /// Adds a header.
    pub(crate) fn header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// The parts of a request the server uses.
struct Request {
    head_only: bool,
    get: bool,
    path: String,
    host: Option<String>,
    keep_alive: bool,
}

fn parse_request(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    let mut keep_alive = version == "HTTP/1.1";
    let mut host = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "host" => host = Some(value.to_string()),
            "connection" if value.eq_ignore_ascii_case("close") => keep_alive = false,
            "connection" if value.eq_ignore_ascii_case("keep-alive") => keep_alive = true,
            "content-length" if value != "0" => keep_alive = false,
            "transfer-encoding" => keep_alive = false,
            _ => {}
        }
    }
    let target = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
    Some(Request {
        head_only: method == "HEAD",
        get: method == "GET" || method == "HEAD",
        path,
        host,
        keep_alive,
    })
}

/// Reads one request head into a buffer that keeps any pipelined bytes. `None` at EOF or when
/// the head is too long.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(buf.drain(..pos + 4).collect());
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let mut tmp = [0u8; 4096];
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

async fn write_response(
    stream: &mut TcpStream,
    resp: &Response,
    head_only: bool,
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nServer: wit-testweb\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (name, value) in &resp.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    if head_only {
        return stream.write_all(head.as_bytes()).await;
    }
    if resp.body.len() <= 8192 {
        let mut all = head.into_bytes();
        all.extend_from_slice(&resp.body);
        return stream.write_all(&all).await;
    }
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&resp.body).await
}

/// Accepts connections on the main listener until the runtime shuts down.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(connection(stream, state.clone()));
    }
}

async fn connection(mut stream: TcpStream, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Ok(Some(head)) = tokio::time::timeout(IDLE, read_head(&mut stream, &mut buf)).await
        else {
            return;
        };
        let Some(req) = parse_request(&head) else {
            let resp = Response::status(400, "bad request\n");
            let _ = write_response(&mut stream, &resp, false, false).await;
            return;
        };
        let resp = match tokio::time::timeout(HANDLER_LIMIT, route(&state, &req, &mut stream)).await
        {
            Ok(Reply::Full(resp)) => resp,
            Ok(Reply::Done) | Err(_) => return,
        };
        let write = write_response(&mut stream, &resp, req.head_only, req.keep_alive);
        let written = tokio::time::timeout(IDLE, write).await;
        if !matches!(written, Ok(Ok(()))) || !req.keep_alive {
            return;
        }
    }
}

async fn route(state: &State, req: &Request, stream: &mut TcpStream) -> Reply {
    let stats = &state.stats;
    bump(&stats.requests);
    if req.host.as_deref() != Some(state.host.as_str()) {
        bump(&stats.out_of_scope);
    }
    if req.path.starts_with("/private/") && !req.path.starts_with("/private/open/") {
        bump(&stats.disallowed);
    }
    if !req.get {
        return Reply::Full(Response::status(405, "only GET and HEAD\n"));
    }
    if req.path == "/stats" {
        let body = Bytes::from(stats.to_json().to_string());
        return Reply::Full(Response::ok("application/json", body));
    }
    let Some(resource) = state.site.routes.get(&req.path) else {
        bump(&stats.not_found);
        return Reply::Full(Response::status(404, "not found\n"));
    };
    match resource {
        Resource::Static { content_type, body } => {
            let counter = match *content_type {
                ct if ct.starts_with("text/html") => &stats.pages,
                ct if ct.starts_with("text/plain") => &stats.robots_txt,
                _ => &stats.data_files,
            };
            bump(counter);
            Reply::Full(Response::ok(content_type, body.clone()))
        }
        Resource::Image(img) => {
            bump(&stats.images);
            let bytes = match img.ready() {
                Some(b) => b,
                None => {
                    let img = img.clone();
                    match tokio::task::spawn_blocking(move || img.bytes()).await {
                        Ok(b) => b,
                        Err(_) => return Reply::Full(Response::status(500, "render failed\n")),
                    }
                }
            };
            Reply::Full(Response::ok(img.mime(), bytes))
        }
        Resource::Fault(fault) => {
            let idx = Fault::ALL.iter().position(|f| f == fault).unwrap_or(0);
            let hit = bump(&stats.faults[idx]);
            faults::respond(*fault, &req.path, hit, state, stream).await
        }
    }
}

/// Accepts connections on 127.0.0.2, the address outside the client's allow-list: every
/// connection is a safety violation and is counted; a request gets a valid JPEG so an unsafe
/// client visibly records a success.
pub(crate) async fn serve_probe(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        bump(&state.stats.probe_connections);
        let state = state.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let read = tokio::time::timeout(IDLE, read_head(&mut stream, &mut buf)).await;
            if let Ok(Some(_)) = read {
                bump(&state.stats.probe_requests);
                let resp = Response::ok("image/jpeg", state.fault_assets.probe_jpeg());
                let write = write_response(&mut stream, &resp, false, false);
                let _ = tokio::time::timeout(IDLE, write).await;
            }
        });
    }
}
