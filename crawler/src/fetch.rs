//! The HTTP client every network-facing part of wit goes through: polite (robots.txt, per-host
//! limits, `X-Robots-Tag`), safe (SSRF guard on every hop, bounded bodies) and robust (timeouts,
//! retries with backoff and jitter, `Retry-After`).
//!
//! Redirects are followed here rather than by reqwest so that each hop is checked against the
//! net policy, robots.txt and TDMRep before any byte is sent to it. The client itself, the
//! per-hop target check and the retry policy come from `wit-net`, shared with every other
//! HTTP client in wit.

use crate::net::{
    backoff, check_target, client_builder, find_source, redirect_target, retry_after,
    BlockedAddress, HttpConfig, NetError, NetPolicy,
};
use crate::robots::{
    origin_key, tdm_header_reserved, x_robots_opt_out, OriginCache, RobotsRules, TdmRep,
    TDMREP_MAX_BYTES,
};
use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use url::Url;
use wit_shards::Status;

pub use crate::net::MAX_RETRY_AFTER;

/// The largest robots.txt prefix parsed (RFC 9309 asks parsers to read at least 500 KiB).
const ROBOTS_MAX_BYTES: u64 = 512 * 1024;
/// Origins whose robots.txt (and, separately, tdmrep.json) stays cached.
const ROBOTS_CACHE_ORIGINS: usize = 100_000;
/// Bytes of parsed robots.txt rules (and, separately, TDMRep rules) kept cached: one hostile
/// file costs at most its 512 KiB prefix plus a small per-rule overhead, and the whole cache
/// stays under this however many origins or rules a run meets.
const ROBOTS_CACHE_BYTES: usize = 64 << 20;
/// What the status row says when a TDMRep `tdm-reservation: 1` header opted a response out.
pub const TDM_HEADER_OPT_OUT: &str = "TDMRep: tdm-reservation header";
/// What the status row says when the origin's `/.well-known/tdmrep.json` reserves the URL.
pub const TDM_FILE_OPT_OUT: &str = "TDMRep: /.well-known/tdmrep.json";

/// Everything that shapes how wit talks to servers. Built from `--concurrency` and friends.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Requests in flight across all hosts.
    pub concurrency: usize,
    /// Requests in flight to one host (host:port).
    pub per_host_concurrency: usize,
    /// Minimum gap between the starts of two requests to one host.
    pub per_host_delay: Duration,
    /// Limit on establishing a connection (TCP + TLS).
    pub connect_timeout: Duration,
    /// Limit on one attempt, body included.
    pub timeout: Duration,
    /// Extra attempts after a transient failure (connect error, timeout, 5xx, 429).
    pub retries: u32,
    /// Cap on the decoded body size; larger bodies (and gzip/brotli bombs) fail.
    pub max_body_bytes: u64,
    /// Redirect hops followed before giving up.
    pub max_redirects: u32,
    /// The `User-Agent` header sent.
    pub user_agent: String,
    /// The token matched against robots.txt groups and `X-Robots-Tag` prefixes.
    pub user_agent_token: String,
    /// CIDRs the SSRF guard lets through although they are not public.
    pub allow_net: Vec<IpNet>,
    /// Whether robots.txt is fetched and obeyed.
    pub respect_robots: bool,
    /// Whether TDMRep (the `tdm-reservation` header and `/.well-known/tdmrep.json`) is obeyed.
    pub respect_tdmrep: bool,
    /// `X-Robots-Tag` directives that opt a response out (lower case).
    pub disallowed_header_directives: Vec<String>,
}

impl Default for FetchConfig {
    fn default() -> FetchConfig {
        FetchConfig {
            concurrency: 256,
            per_host_concurrency: 16,
            per_host_delay: Duration::ZERO,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            retries: 2,
            max_body_bytes: 32 << 20,
            max_redirects: 5,
            user_agent: user_agent_for("wit"),
            user_agent_token: "wit".into(),
            allow_net: Vec::new(),
            respect_robots: true,
            respect_tdmrep: true,
            disallowed_header_directives: ["noai", "noimageai", "noindex", "noimageindex"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// The `User-Agent` string for a token: identifiable, so site owners can find and block us.
pub fn user_agent_for(token: &str) -> String {
    format!(
        "Mozilla/5.0 (compatible; {token}/{}; image-text dataset builder; respects robots.txt and X-Robots-Tag)",
        env!("CARGO_PKG_VERSION")
    )
}

/// A successful (2xx) response, after redirects, with its whole body.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The URL that answered (after redirects).
    pub final_url: Url,
    /// Its HTTP status (2xx).
    pub status: u16,
    /// The `Content-Type` header, if any (informative only: formats are sniffed from bytes).
    pub content_type: Option<String>,
    /// The decoded body.
    pub body: Bytes,
    /// All `X-Robots-Tag` header values, newline-separated, if any.
    pub x_robots_tag: Option<String>,
}

/// Why a fetch produced no body. Messages are stable per cause (not per attempt) so reruns
/// write identical `error_message` columns.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL does not parse or has no host.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// Not http or https.
    #[error("unsupported URL scheme {0:?}: only http and https are fetched")]
    UnsupportedScheme(String),
    /// The SSRF guard refused the address.
    #[error("{0}")]
    Blocked(String),
    /// robots.txt disallows the URL for our user agent token.
    #[error("disallowed by robots.txt (pass --ignore-robots to override)")]
    DisallowedByRobots,
    /// robots.txt could not be reached, which RFC 9309 §2.3.1.4 reads as complete disallow.
    #[error("disallowed: robots.txt unreachable ({0}), which RFC 9309 reads as complete disallow (pass --ignore-robots to override)")]
    RobotsUnreachable(String),
    /// The site opted the response out: `X-Robots-Tag: <directive>` or TDMRep.
    #[error("opted out by {0}")]
    OptedOut(String),
    /// No complete answer within the timeout.
    #[error("timed out after {0:?} (raise --timeout for slow servers)")]
    Timeout(Duration),
    /// The connection could not be established or broke.
    #[error("connection failed: {0}")]
    Connect(String),
    /// A non-2xx final status.
    #[error("HTTP status {0}")]
    Http(u16),
    /// More redirect hops than allowed (or a loop).
    #[error("more than {0} redirects")]
    TooManyRedirects(u32),
    /// A redirect without a usable `Location`.
    #[error("bad redirect: {0}")]
    BadRedirect(String),
    /// The decoded body exceeded the cap.
    #[error("body larger than {0} bytes (raise --max-body-bytes to allow)")]
    BodyTooLarge(u64),
    /// The body broke off or could not be decoded.
    #[error("reading the body failed (connection closed early or bad content encoding)")]
    Body,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl FetchError {
    /// The status row this failure becomes.
    pub fn status(&self) -> Status {
        match self {
            FetchError::DisallowedByRobots | FetchError::RobotsUnreachable(_) => {
                Status::DisallowedByRobots
            }
            FetchError::OptedOut(_) => Status::OptedOut,
            _ => Status::FailedToDownload,
        }
    }

    /// Whether another attempt may succeed.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::Timeout(_) | FetchError::Connect(_) | FetchError::Body
        )
    }

    fn from_reqwest(err: reqwest::Error, timeout: Duration) -> FetchError {
        tracing::debug!("request error: {err:?}");
        if let Some(blocked) = find_source::<BlockedAddress>(&err) {
            return FetchError::Blocked(blocked.to_string());
        }
        if err.is_timeout() {
            return FetchError::Timeout(timeout);
        }
        if err.is_body() || err.is_decode() {
            return FetchError::Body;
        }
        let reason = match find_source::<std::io::Error>(&err) {
            Some(io) => io.kind().to_string(),
            None if err.is_connect() => "could not connect".to_string(),
            None => "the server broke the exchange".to_string(),
        };
        FetchError::Connect(reason)
    }
}

impl From<NetError> for FetchError {
    fn from(err: NetError) -> FetchError {
        match err {
            NetError::UnsupportedScheme(s) => FetchError::UnsupportedScheme(s),
            NetError::NoHost(u) => FetchError::InvalidUrl(format!("{u} has no host")),
            NetError::Blocked(b) => FetchError::Blocked(b),
            NetError::Redirect(r) => FetchError::BadRedirect(r),
            NetError::Http(s) => FetchError::Http(s),
            NetError::Transport(t) => FetchError::Connect(t),
            NetError::Client(c) => FetchError::Client(c),
        }
    }
}

/// The fetcher: a shared reqwest client plus the politeness and safety state around it.
/// Cheap to clone; clones share limits and caches.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: FetchConfig,
    client: reqwest::Client,
    policy: NetPolicy,
    global: Arc<Semaphore>,
    hosts: HostLimiter,
    robots: OriginCache<RobotsRules>,
    tdmrep: OriginCache<TdmRep>,
}

/// One answered request, before redirect and status handling.
struct Raw {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

/// How much body to read: fail above the cap (images) or keep the prefix (robots.txt).
#[derive(Clone, Copy)]
struct BodyLimit {
    max: u64,
    truncate: bool,
}

impl Fetcher {
    /// Builds the client. Needs a tokio runtime to be running when `fetch` is awaited.
    pub fn new(cfg: FetchConfig) -> Result<Fetcher, FetchError> {
        let policy = NetPolicy::new(cfg.allow_net.clone());
        let http = HttpConfig {
            user_agent: cfg.user_agent.clone(),
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.timeout,
            total_timeout: Some(cfg.timeout),
            retries: cfg.retries,
            max_redirects: cfg.max_redirects,
            ..HttpConfig::new(policy.clone())
        };
        let client = client_builder(&http)
            .gzip(true)
            .brotli(true)
            .pool_max_idle_per_host(cfg.per_host_concurrency.max(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(Fetcher {
            inner: Arc::new(Inner {
                global: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
                hosts: HostLimiter::new(cfg.per_host_concurrency.max(1), cfg.per_host_delay),
                robots: OriginCache::new(ROBOTS_CACHE_ORIGINS, ROBOTS_CACHE_BYTES),
                tdmrep: OriginCache::new(ROBOTS_CACHE_ORIGINS, ROBOTS_CACHE_BYTES),
                policy,
                client,
                cfg,
            }),
        })
    }

    /// The configuration this fetcher was built with.
    pub fn config(&self) -> &FetchConfig {
        &self.inner.cfg
    }

    /// Fetches `url`: robots.txt, TDMRep's tdmrep.json and the SSRF guard on every hop, per-host
    /// limits, retries, body cap, `X-Robots-Tag` and `tdm-reservation` opt-outs. Only a 2xx
    /// answer is `Ok`.
    pub async fn fetch(&self, url: &Url) -> Result<Fetched, FetchError> {
        let cfg = &self.inner.cfg;
        let limit = BodyLimit {
            max: cfg.max_body_bytes,
            truncate: false,
        };
        let mut current = url.clone();
        for _ in 0..=cfg.max_redirects {
            check_target(&current, &self.inner.policy)?;
            if cfg.respect_robots {
                match &*self.robots(&current).await {
                    RobotsRules::Unreachable(why) if !current.path().eq("/robots.txt") => {
                        return Err(FetchError::RobotsUnreachable(why.clone()));
                    }
                    rules if !rules.allowed(&current) => {
                        return Err(FetchError::DisallowedByRobots);
                    }
                    _ => {}
                }
            }
            if cfg.respect_tdmrep && self.tdmrep(&current).await.reserved(&current) {
                return Err(FetchError::OptedOut(TDM_FILE_OPT_OUT.into()));
            }
            let raw = self.get_with_retries(&current, limit).await?;
            if let Some(next) = redirect_target(&current, raw.status, &raw.headers)? {
                current = next;
                continue;
            }
            return self.finish(current, raw);
        }
        Err(FetchError::TooManyRedirects(cfg.max_redirects))
    }

    /// The site's `Crawl-delay` for `url`'s origin (fetching robots.txt if needed), or `None`
    /// when robots.txt is ignored or sets none.
    pub async fn robots_crawl_delay(&self, url: &Url) -> Option<Duration> {
        if !self.inner.cfg.respect_robots {
            return None;
        }
        self.robots(url).await.crawl_delay()
    }

    /// The robots.txt rules for `url`'s origin, fetched once and cached.
    pub async fn robots(&self, url: &Url) -> Arc<RobotsRules> {
        let Some(origin) = origin_key(url) else {
            return Arc::new(RobotsRules::AllowAll);
        };
        let cache = &self.inner.robots;
        let slot = cache.slot(&origin);
        slot.get_or_init(|| async {
            let rules = self.fetch_robots(&origin).await;
            cache.charge(rules.approx_bytes());
            Arc::new(rules)
        })
        .await
        .clone()
    }

    /// Fetches robots.txt per RFC 9309: up to `max_redirects` hops, 2xx parsed (off the async
    /// workers: a 512 KiB file is real CPU), 4xx allow all, 5xx/429 and every failure to get an
    /// answer (timeout, network error) disallow all.
    async fn fetch_robots(&self, origin: &str) -> RobotsRules {
        let token = self.inner.cfg.user_agent_token.clone();
        let limit = BodyLimit {
            max: ROBOTS_MAX_BYTES,
            truncate: true,
        };
        let raw = match self.get_well_known(origin, "/robots.txt", limit).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return RobotsRules::AllowAll,
            // The guard refused the address: nothing was contacted. The origin's own URLs fail
            // as blocked anyway; a robots.txt redirected to a refused address is the site's doing.
            Err(FetchError::Blocked(_)) => return RobotsRules::AllowAll,
            Err(e) => {
                tracing::debug!("robots.txt of {origin} unreachable ({e}): disallowing");
                return RobotsRules::Unreachable(unreachable_reason(&e));
            }
        };
        tokio::task::spawn_blocking(move || {
            RobotsRules::from_response(raw.status, &raw.body, &token)
        })
        .await
        .unwrap_or_else(|e| RobotsRules::Unreachable(format!("parsing failed: {e}")))
    }

    /// The TDMRep policies of `url`'s origin (`/.well-known/tdmrep.json`), fetched once and
    /// cached; no policy when the file is absent, unreachable or unusable (TDMRep §3).
    pub async fn tdmrep(&self, url: &Url) -> Arc<TdmRep> {
        let Some(origin) = origin_key(url) else {
            return Arc::new(TdmRep::default());
        };
        let cache = &self.inner.tdmrep;
        let slot = cache.slot(&origin);
        slot.get_or_init(|| async {
            let limit = BodyLimit {
                max: TDMREP_MAX_BYTES,
                truncate: true,
            };
            let policies = match self
                .get_well_known(&origin, "/.well-known/tdmrep.json", limit)
                .await
            {
                Ok(Some(raw)) if (200..300).contains(&raw.status) => TdmRep::parse(&raw.body),
                _ => TdmRep::default(),
            };
            cache.charge(policies.approx_bytes());
            Arc::new(policies)
        })
        .await
        .clone()
    }

    /// GETs an origin's well-known file, following up to `max_redirects` checked hops. `Ok(None)`
    /// when the redirects run out (RFC 9309 §2.3.1.2: treat as unavailable).
    async fn get_well_known(
        &self,
        origin: &str,
        path: &str,
        limit: BodyLimit,
    ) -> Result<Option<Raw>, FetchError> {
        let mut current = Url::parse(&format!("{origin}{path}"))
            .map_err(|e| FetchError::InvalidUrl(e.to_string()))?;
        for _ in 0..=self.inner.cfg.max_redirects {
            check_target(&current, &self.inner.policy)?;
            let raw = self.get_with_retries(&current, limit).await?;
            match redirect_target(&current, raw.status, &raw.headers)? {
                Some(next) => current = next,
                None => return Ok(Some(raw)),
            }
        }
        Ok(None)
    }

    fn finish(&self, url: Url, raw: Raw) -> Result<Fetched, FetchError> {
        if !(200..300).contains(&raw.status) {
            return Err(FetchError::Http(raw.status));
        }
        let tags: Vec<&str> = raw
            .headers
            .get_all("x-robots-tag")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let cfg = &self.inner.cfg;
        if let Some(directive) = x_robots_opt_out(
            tags.iter().copied(),
            &cfg.user_agent_token,
            &cfg.disallowed_header_directives,
        ) {
            return Err(FetchError::OptedOut(format!("X-Robots-Tag: {directive}")));
        }
        let tdm = raw
            .headers
            .get_all("tdm-reservation")
            .iter()
            .filter_map(|v| v.to_str().ok());
        if cfg.respect_tdmrep && tdm_header_reserved(tdm) {
            return Err(FetchError::OptedOut(TDM_HEADER_OPT_OUT.into()));
        }
        let content_type = raw
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Fetched {
            final_url: url,
            status: raw.status,
            content_type,
            body: raw.body,
            x_robots_tag: (!tags.is_empty()).then(|| tags.join("\n")),
        })
    }

    /// One URL, retried on transient failures, 5xx and 429. A final 5xx/429 is returned as
    /// `Ok(raw)` so the caller reports its status.
    async fn get_with_retries(&self, url: &Url, limit: BodyLimit) -> Result<Raw, FetchError> {
        let retries = self.inner.cfg.retries;
        let mut attempt = 0;
        loop {
            let result = self.get_once(url, limit).await;
            let wait = match &result {
                Ok(raw) if raw.status == 429 || raw.status >= 500 => {
                    retry_after(&raw.headers).unwrap_or_else(|| backoff(attempt))
                }
                Err(e) if e.is_transient() => backoff(attempt),
                _ => return result,
            };
            if attempt >= retries {
                return result;
            }
            tracing::debug!("retrying {url} in {wait:?}");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One attempt under the per-host and global limits, bounded by the total timeout.
    async fn get_once(&self, url: &Url, limit: BodyLimit) -> Result<Raw, FetchError> {
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(0)
        );
        let _host_permit = self.inner.hosts.acquire(&host).await;
        let _global_permit = self.inner.global.clone().acquire_owned().await;
        let timeout = self.inner.cfg.timeout;
        let exchange = async {
            let resp = self
                .inner
                .client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| FetchError::from_reqwest(e, timeout))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = if (200..300).contains(&status) {
                read_body(resp, limit, timeout).await?
            } else {
                Bytes::new()
            };
            Ok(Raw {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }
}

/// Reads the decoded body chunk by chunk, never holding more than the cap (+ one chunk).
async fn read_body(
    mut resp: reqwest::Response,
    limit: BodyLimit,
    timeout: Duration,
) -> Result<Bytes, FetchError> {
    if !limit.truncate && resp.content_length().is_some_and(|n| n > limit.max) {
        return Err(FetchError::BodyTooLarge(limit.max));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| FetchError::from_reqwest(e, timeout))?
    {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > limit.max {
            if limit.truncate {
                body.truncate(limit.max as usize);
                break;
            }
            return Err(FetchError::BodyTooLarge(limit.max));
        }
    }
    Ok(body.freeze())
}

/// The stable words a status row gives for a robots.txt that could not be fetched.
fn unreachable_reason(err: &FetchError) -> String {
    match err {
        FetchError::Timeout(_) => "timed out".into(),
        FetchError::Connect(why) => why.clone(),
        FetchError::Body => "the body broke off".into(),
        other => other.to_string(),
    }
}

/// Per-host concurrency and start spacing. Idle hosts are swept so the map stays small.
struct HostLimiter {
    per_host: usize,
    delay: Duration,
    hosts: Mutex<HostMap>,
}

struct HostMap {
    map: HashMap<String, Arc<HostState>>,
    sweep_at: usize,
}

struct HostState {
    permits: Arc<Semaphore>,
    next_start: tokio::sync::Mutex<Instant>,
}

/// Held for the duration of one request to a host.
struct HostPermit {
    _permit: OwnedSemaphorePermit,
    _state: Arc<HostState>,
}

impl HostLimiter {
    fn new(per_host: usize, delay: Duration) -> HostLimiter {
        HostLimiter {
            per_host,
            delay,
            hosts: Mutex::new(HostMap {
                map: HashMap::new(),
                sweep_at: 1024,
            }),
        }
    }

    async fn acquire(&self, host: &str) -> HostPermit {
        let state = self.state(host);
        let permit = state
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("host semaphores are never closed");
        if !self.delay.is_zero() {
            let mut next = state.next_start.lock().await;
            let now = Instant::now();
            if *next > now {
                tokio::time::sleep_until(*next).await;
            }
            *next = (*next).max(now) + self.delay;
        }
        HostPermit {
            _permit: permit,
            _state: state,
        }
    }

    fn state(&self, host: &str) -> Arc<HostState> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if hosts.map.len() >= hosts.sweep_at {
            let now = Instant::now();
            hosts.map.retain(|_, s| {
                Arc::strong_count(s) > 1 || s.next_start.try_lock().map_or(true, |t| *t > now)
            });
            hosts.sweep_at = (hosts.map.len() * 2).max(1024);
        }
        hosts
            .map
            .entry(host.to_string())
            .or_insert_with(|| {
                Arc::new(HostState {
                    permits: Arc::new(Semaphore::new(self.per_host)),
                    next_start: tokio::sync::Mutex::new(Instant::now()),
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Handler = dyn Fn(&str, usize) -> Vec<u8> + Send + Sync;

    /// A tiny HTTP/1.1 server on a loopback address: one thread per connection, `Connection:
    /// close`, the handler returns the raw response for (path, hit number of that path).
    struct Server {
        base: String,
        hits: Arc<Mutex<Vec<String>>>,
        max_active: Arc<AtomicUsize>,
    }

    impl Server {
        fn start(
            ip: &str,
            handler: impl Fn(&str, usize) -> Vec<u8> + Send + Sync + 'static,
        ) -> Server {
            let listener = TcpListener::bind((ip, 0)).unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let hits = Arc::new(Mutex::new(Vec::new()));
            let active = Arc::new(AtomicUsize::new(0));
            let max_active = Arc::new(AtomicUsize::new(0));
            let handler: Arc<Handler> = Arc::new(handler);
            let (h, a, m) = (hits.clone(), active.clone(), max_active.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (h, a, m, handler) = (h.clone(), a.clone(), m.clone(), handler.clone());
                    std::thread::spawn(move || serve(stream, &h, &a, &m, &*handler));
                }
            });
            Server {
                base,
                hits,
                max_active,
            }
        }

        fn url(&self, path: &str) -> Url {
            Url::parse(&format!("{}{path}", self.base)).unwrap()
        }

        fn hits(&self, path: &str) -> usize {
            self.hits
                .lock()
                .unwrap()
                .iter()
                .filter(|p| *p == path)
                .count()
        }
    }

    fn serve(
        mut stream: TcpStream,
        hits: &Mutex<Vec<String>>,
        active: &AtomicUsize,
        max_active: &AtomicUsize,
        handler: &Handler,
    ) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head);
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
        let n = {
            let mut hits = hits.lock().unwrap();
            hits.push(path.clone());
            hits.iter().filter(|p| **p == path).count()
        };
        let now = active.fetch_add(1, Ordering::SeqCst) + 1;
        max_active.fetch_max(now, Ordering::SeqCst);
        let response = handler(&path, n);
        // Done before the write: once the client holds the answer (and may start its next
        // request) this one no longer counts, or a busy machine would see a phantom third.
        active.fetch_sub(1, Ordering::SeqCst);
        let _ = stream.write_all(&response);
    }

    fn respond(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    fn fetcher(tweak: impl FnOnce(&mut FetchConfig)) -> Fetcher {
        let mut cfg = FetchConfig {
            allow_net: vec!["127.0.0.1/32".parse().unwrap()],
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            ..FetchConfig::default()
        };
        tweak(&mut cfg);
        Fetcher::new(cfg).unwrap()
    }

    fn site() -> Server {
        Server::start("127.0.0.1", |path, n| match path {
            "/robots.txt" => respond("200 OK", &[], b"User-agent: *\nDisallow: /private/\n"),
            "/img" => respond("200 OK", &[("Content-Type", "image/png")], b"pixels"),
            "/private/img" => respond("200 OK", &[], b"secret"),
            "/flaky" if n <= 2 => respond("503 Service Unavailable", &[], b""),
            "/flaky" => respond("200 OK", &[], b"ok"),
            "/busy" if n == 1 => respond("429 Too Many Requests", &[("Retry-After", "1")], b""),
            "/busy" => respond("200 OK", &[], b"ok"),
            "/noai" => respond("200 OK", &[("X-Robots-Tag", "noindex, nofollow")], b"x"),
            "/otherbot" => respond("200 OK", &[("X-Robots-Tag", "otherbot: noai")], b"x"),
            "/ourbot" => respond("200 OK", &[("X-Robots-Tag", "wit: noimageai")], b"x"),
            "/loop" => respond("302 Found", &[("Location", "/loop2")], b""),
            "/loop2" => respond("302 Found", &[("Location", "/loop")], b""),
            "/to-img" => respond("301 Moved", &[("Location", "img")], b""),
            "/to-private" => respond("302 Found", &[("Location", "/private/img")], b""),
            "/missing" => respond("404 Not Found", &[], b""),
            "/hang" => {
                std::thread::sleep(Duration::from_secs(5));
                respond("200 OK", &[], b"late")
            }
            "/slow" => {
                std::thread::sleep(Duration::from_millis(150));
                respond("200 OK", &[], b"ok")
            }
            "/bomb" => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                gz.write_all(&vec![0u8; 8 << 20]).unwrap();
                respond(
                    "200 OK",
                    &[("Content-Encoding", "gzip")],
                    &gz.finish().unwrap(),
                )
            }
            _ => respond("404 Not Found", &[], b""),
        })
    }

    #[tokio::test]
    async fn fetches_and_reports_content_type() {
        let s = site();
        let got = fetcher(|_| {}).fetch(&s.url("/img")).await.unwrap();
        assert_eq!(&got.body[..], b"pixels");
        assert_eq!(got.content_type.as_deref(), Some("image/png"));
        let redirected = fetcher(|_| {}).fetch(&s.url("/to-img")).await.unwrap();
        assert_eq!(redirected.final_url, s.url("/img"));
    }

    #[tokio::test]
    async fn robots_is_fetched_once_and_obeyed_on_every_hop() {
        let s = site();
        let f = fetcher(|_| {});
        for path in ["/private/img", "/to-private", "/private/img"] {
            let err = f.fetch(&s.url(path)).await.unwrap_err();
            assert_eq!(err.status(), Status::DisallowedByRobots, "{path}: {err}");
        }
        f.fetch(&s.url("/img")).await.unwrap();
        assert_eq!(s.hits("/private/img"), 0);
        assert_eq!(s.hits("/robots.txt"), 1);
        let ignoring = fetcher(|c| c.respect_robots = false);
        ignoring.fetch(&s.url("/private/img")).await.unwrap();
    }

    #[tokio::test]
    async fn retries_5xx_and_honours_retry_after() {
        let s = site();
        let f = fetcher(|_| {});
        assert_eq!(&f.fetch(&s.url("/flaky")).await.unwrap().body[..], b"ok");
        assert_eq!(&f.fetch(&s.url("/busy")).await.unwrap().body[..], b"ok");
        let no_retry = fetcher(|c| c.retries = 0);
        let s2 = site();
        let err = no_retry.fetch(&s2.url("/flaky")).await.unwrap_err();
        assert!(matches!(err, FetchError::Http(503)), "{err}");
        let err = f.fetch(&s.url("/missing")).await.unwrap_err();
        assert!(matches!(err, FetchError::Http(404)), "{err}");
        assert_eq!(s.hits("/missing"), 1, "4xx is not retried");
    }

    #[tokio::test]
    async fn x_robots_tag_opts_out_for_us_only() {
        let s = site();
        let f = fetcher(|_| {});
        let err = f.fetch(&s.url("/noai")).await.unwrap_err();
        assert_eq!(err.status(), Status::OptedOut);
        let err = f.fetch(&s.url("/ourbot")).await.unwrap_err();
        assert_eq!(err.status(), Status::OptedOut);
        f.fetch(&s.url("/otherbot")).await.unwrap();
        fetcher(|c| c.disallowed_header_directives.clear())
            .fetch(&s.url("/noai"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn redirect_loops_bombs_and_hangs_end_in_failures() {
        let s = site();
        let f = fetcher(|c| {
            c.max_body_bytes = 1 << 20;
            c.timeout = Duration::from_millis(500);
            c.retries = 1;
        });
        let err = f.fetch(&s.url("/loop")).await.unwrap_err();
        assert!(matches!(err, FetchError::TooManyRedirects(5)), "{err}");
        let err = f.fetch(&s.url("/bomb")).await.unwrap_err();
        assert!(matches!(err, FetchError::BodyTooLarge(_)), "{err}");
        let err = f.fetch(&s.url("/hang")).await.unwrap_err();
        assert!(matches!(err, FetchError::Timeout(_)), "{err}");
        assert_eq!(s.hits("/hang"), 2, "a timeout is retried");
    }

    #[tokio::test]
    async fn ssrf_guard_refuses_other_loopback_addresses_in_every_spelling() {
        let probe = Server::start("127.0.0.2", |_, _| respond("200 OK", &[], b"leak"));
        let port = Url::parse(&probe.base).unwrap().port().unwrap();
        let bouncer = Server::start("127.0.0.1", move |_, _| {
            let to = format!("http://2130706434:{port}/secret");
            respond("302 Found", &[("Location", to.as_str())], b"")
        });
        let f = fetcher(|_| {});
        let err = f.fetch(&bouncer.url("/go")).await.unwrap_err();
        assert!(matches!(err, FetchError::Blocked(_)), "{err}");
        for spelling in [
            "127.0.0.2",
            "2130706434",
            "0x7f000002",
            "0177.0.0.2",
            "127.2",
            "[::ffff:127.0.0.2]",
        ] {
            let url = Url::parse(&format!("http://{spelling}:{port}/x")).unwrap();
            let err = f.fetch(&url).await.unwrap_err();
            assert!(matches!(err, FetchError::Blocked(_)), "{spelling}: {err}");
        }
        let err = f
            .fetch(&Url::parse("ftp://127.0.0.1/x").unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::UnsupportedScheme(_)), "{err}");
        assert!(
            probe.hits.lock().unwrap().is_empty(),
            "the probe was contacted"
        );
    }

    #[tokio::test]
    async fn names_resolving_to_refused_addresses_are_refused() {
        let s = site();
        let port = Url::parse(&s.base).unwrap().port().unwrap();
        let by_name = Url::parse(&format!("http://localhost:{port}/img")).unwrap();
        let err = fetcher(|c| c.allow_net.clear())
            .fetch(&by_name)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Blocked(_)), "{err}");
        assert_eq!(s.hits("/img"), 0);
        let got = fetcher(|_| {}).fetch(&by_name).await.unwrap();
        assert_eq!(&got.body[..], b"pixels");
    }

    #[tokio::test]
    async fn per_host_concurrency_is_a_ceiling() {
        let s = site();
        let f = fetcher(|c| {
            c.per_host_concurrency = 2;
            c.respect_robots = false;
        });
        let url = s.url("/slow");
        let all = (0..8).map(|_| f.fetch(&url));
        for r in futures_util::future::join_all(all).await {
            r.unwrap();
        }
        assert_eq!(s.hits("/slow"), 8);
        assert!(s.max_active.load(Ordering::SeqCst) <= 2);
    }
}
