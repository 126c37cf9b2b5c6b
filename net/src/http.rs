//! The client every wit request is sent with, the per-hop target check, and the retry policy.

use crate::guard::{BlockedAddress, GuardedResolver, NetPolicy};
use reqwest::header::{HeaderMap, CONTENT_RANGE, LOCATION, RANGE, RETRY_AFTER};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use url::{Host, Url};

/// The longest `Retry-After` wit waits for before a retry; longer requests are capped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How one client talks to servers. Every field has a safe default ([`HttpConfig::new`]).
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Which addresses may be connected to (the SSRF guard and `--allow-net`).
    pub policy: NetPolicy,
    /// The `User-Agent` header sent.
    pub user_agent: String,
    /// Limit on establishing a connection (TCP + TLS).
    pub connect_timeout: Duration,
    /// Longest silence allowed while waiting for headers or between two body reads: a stalled
    /// server fails the attempt instead of hanging the run.
    pub read_timeout: Duration,
    /// Limit on one whole attempt, body included; `None` for multi-GB streams (shards, archives)
    /// that rely on the read timeout and resume instead.
    pub total_timeout: Option<Duration>,
    /// Extra attempts after a transient failure (connect error, timeout, 5xx, 429), and for
    /// streams, `Range` resumes after a broken body.
    pub retries: u32,
    /// Redirect hops followed before giving up.
    pub max_redirects: u32,
}

impl HttpConfig {
    /// Defaults for long streams: 10 s to connect, 30 s of silence at most, no total limit,
    /// 3 retries, 5 redirects.
    pub fn new(policy: NetPolicy) -> HttpConfig {
        HttpConfig {
            policy,
            user_agent: concat!("wit/", env!("CARGO_PKG_VERSION")).to_string(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            total_timeout: None,
            retries: 3,
            max_redirects: 5,
        }
    }
}

/// Why a request produced no usable response.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Not http or https.
    #[error("unsupported URL scheme {0:?}: only http and https are fetched")]
    UnsupportedScheme(String),
    /// The URL has no host.
    #[error("invalid URL: {0} has no host")]
    NoHost(String),
    /// The SSRF guard refused the address (IP literal, DNS answer or redirect hop).
    #[error("{0}")]
    Blocked(String),
    /// More redirect hops than allowed, or a redirect without a usable `Location`.
    #[error("redirect: {0}")]
    Redirect(String),
    /// A final status that is neither 2xx nor a followed redirect.
    #[error("HTTP status {0}")]
    Http(u16),
    /// Connecting, waiting or reading failed (after the retries).
    #[error("{0}")]
    Transport(String),
    /// The client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl NetError {
    /// Classifies a reqwest error: the guard's refusal, a timeout, or a broken exchange.
    pub fn from_reqwest(err: &reqwest::Error) -> NetError {
        if let Some(blocked) = find_source::<BlockedAddress>(err) {
            return NetError::Blocked(blocked.to_string());
        }
        let what = if err.is_timeout() {
            "timed out".to_string()
        } else if err.is_connect() {
            "could not connect".to_string()
        } else {
            match find_source::<std::io::Error>(err) {
                Some(io) => io.kind().to_string(),
                None => "the server broke the exchange".to_string(),
            }
        };
        NetError::Transport(what)
    }

    /// Whether another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, NetError::Transport(_))
    }
}

/// The first error of type `T` in `err`'s source chain.
pub fn find_source<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// A reqwest builder with the layer's invariants set: the guarded resolver, no automatic
/// redirects (callers follow them with [`redirect_target`] and [`check_target`]), no proxy, and
/// the config's timeouts. Callers may add pool or compression settings, never remove these.
pub fn client_builder(cfg: &HttpConfig) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver::new(cfg.policy.clone())))
        .no_proxy()
        .user_agent(cfg.user_agent.clone())
        .connect_timeout(cfg.connect_timeout)
        .read_timeout(cfg.read_timeout);
    match cfg.total_timeout {
        Some(total) => builder.timeout(total),
        None => builder,
    }
}

/// Refuses non-http(s) schemes and IP-literal hosts outside the policy before any connection;
/// DNS names are checked by the resolver.
pub fn check_target(url: &Url, policy: &NetPolicy) -> Result<(), NetError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(NetError::UnsupportedScheme(url.scheme().to_string()));
    }
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(Host::Domain(_)) => return Ok(()),
        None => return Err(NetError::NoHost(url.to_string())),
    };
    if policy.permits(ip) {
        return Ok(());
    }
    Err(NetError::Blocked(
        BlockedAddress {
            host: ip.to_string(),
            addrs: ip.to_string(),
        }
        .to_string(),
    ))
}

/// The next hop of a redirect response, `None` when `status` is not a redirect.
pub fn redirect_target(
    current: &Url,
    status: u16,
    headers: &HeaderMap,
) -> Result<Option<Url>, NetError> {
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return Ok(None);
    }
    let location = headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| NetError::Redirect(format!("HTTP {status} without Location")))?;
    current
        .join(location)
        .map(Some)
        .map_err(|e| NetError::Redirect(format!("Location {location:?}: {e}")))
}

/// Exponential backoff with ±50 % jitter: 250 ms, 500 ms, 1 s, ... (capped at [`MAX_RETRY_AFTER`]).
pub fn backoff(attempt: u32) -> Duration {
    let base = 0.25 * 2f64.powi(attempt.min(7) as i32);
    let jitter = 0.5 + rand::random::<f64>();
    Duration::from_secs_f64((base * jitter).min(MAX_RETRY_AFTER.as_secs_f64()))
}

/// `Retry-After` in seconds (the HTTP-date form is treated as the cap), at most [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => MAX_RETRY_AFTER,
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// GETs `url` from byte `offset` on: each redirect hop checked before it is contacted, transient
/// failures, 429 and 5xx retried with the retry policy. Returns the first 2xx response; a
/// resumed request (`offset > 0`) is checked to start where asked (206 with a matching
/// `Content-Range`, or 200 when the server ignores `Range`: the caller skips `offset` bytes).
pub async fn send_following(
    client: &reqwest::Client,
    cfg: &HttpConfig,
    url: &Url,
    offset: u64,
) -> Result<reqwest::Response, NetError> {
    let mut current = url.clone();
    for _ in 0..=cfg.max_redirects {
        check_target(&current, &cfg.policy)?;
        let response = send_with_retries(client, cfg, &current, offset).await?;
        let status = response.status().as_u16();
        if let Some(next) = redirect_target(&current, status, response.headers())? {
            current = next;
            continue;
        }
        if !response.status().is_success() {
            return Err(NetError::Http(status));
        }
        if offset > 0 && status == 206 && !content_range_starts_at(response.headers(), offset) {
            return Err(NetError::Transport(format!(
                "resuming at byte {offset}: the server answered another range"
            )));
        }
        return Ok(response);
    }
    Err(NetError::Redirect(format!(
        "more than {} redirects",
        cfg.max_redirects
    )))
}

/// Whether a 206 starts at `offset`: its `Content-Range` says so, or it has none (some servers
/// omit it; the body then is taken to start where asked).
fn content_range_starts_at(headers: &HeaderMap, offset: u64) -> bool {
    let Some(range) = headers.get(CONTENT_RANGE) else {
        return true;
    };
    range
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split_once('-'))
        .and_then(|(start, _)| start.trim().parse::<u64>().ok())
        == Some(offset)
}

/// One hop, retried on transient errors, 429 and 5xx; a final 429/5xx is returned as is.
async fn send_with_retries(
    client: &reqwest::Client,
    cfg: &HttpConfig,
    url: &Url,
    offset: u64,
) -> Result<reqwest::Response, NetError> {
    let mut attempt = 0;
    loop {
        let mut request = client.get(url.clone());
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let result = request.send().await.map_err(|e| NetError::from_reqwest(&e));
        let wait = match &result {
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                retry_after(r.headers()).unwrap_or_else(|| backoff(attempt))
            }
            Err(e) if e.is_transient() => backoff(attempt),
            _ => return result,
        };
        if attempt >= cfg.retries {
            return result;
        }
        tracing::debug!("retrying {url} in {wait:?}");
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_before_connecting() {
        let policy = NetPolicy::default();
        let check = |u: &str| check_target(&Url::parse(u).unwrap(), &policy);
        assert!(check("http://8.8.8.8/x").is_ok());
        assert!(check("https://example.com/x").is_ok());
        assert!(matches!(
            check("http://169.254.169.254/"),
            Err(NetError::Blocked(_))
        ));
        assert!(matches!(
            check("file:///etc/passwd"),
            Err(NetError::UnsupportedScheme(_))
        ));
    }

    #[test]
    fn retry_after_is_capped() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(5)));
        h.insert(RETRY_AFTER, "86400".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        assert!(backoff(100) <= MAX_RETRY_AFTER);
    }

    #[test]
    fn resumes_must_start_at_the_offset() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_RANGE, "bytes 100-199/200".parse().unwrap());
        assert!(content_range_starts_at(&h, 100));
        assert!(!content_range_starts_at(&h, 0));
        assert!(content_range_starts_at(&HeaderMap::new(), 100));
    }
}
