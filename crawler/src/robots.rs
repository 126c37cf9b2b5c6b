//! Site opt-outs: robots.txt rules (RFC 9309) cached per origin, and `X-Robots-Tag` directives
//! with img2dataset's semantics.
//!
//! Being polite is a product requirement: a site that disallows our user agent, or marks an
//! image `noai`, never gets it stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use texting_robots::Robot;
use tokio::sync::OnceCell;
use url::Url;

/// The rules of one origin's robots.txt, already narrowed to our user agent token.
pub enum RobotsRules {
    /// No usable robots.txt (4xx, unreachable): everything is allowed (RFC 9309 §2.3.1.3).
    AllowAll,
    /// The server failed (5xx): RFC 9309 §2.3.1.4 says to assume complete disallow.
    DisallowAll,
    /// A parsed robots.txt.
    Parsed(Box<Robot>),
}

impl RobotsRules {
    /// Interprets a robots.txt response. `status` is the final HTTP status after redirects.
    ///
    /// 2xx → parse; 4xx → allow all; 5xx → disallow all. Anything else (a redirect that was not
    /// followed, 1xx) counts as unavailable → allow all.
    pub fn from_response(status: u16, body: &[u8], user_agent_token: &str) -> RobotsRules {
        match status {
            200..=299 => match Robot::new(user_agent_token, body) {
                Ok(robot) => RobotsRules::Parsed(Box::new(robot)),
                Err(e) => {
                    tracing::debug!("unparseable robots.txt, treating as allow-all: {e}");
                    RobotsRules::AllowAll
                }
            },
            500..=599 => RobotsRules::DisallowAll,
            _ => RobotsRules::AllowAll,
        }
    }

    /// Whether `url` (on this rules' origin) may be fetched.
    pub fn allowed(&self, url: &Url) -> bool {
        match self {
            RobotsRules::AllowAll => true,
            RobotsRules::DisallowAll => url.path() == "/robots.txt",
            RobotsRules::Parsed(robot) => {
                let path = match url.query() {
                    Some(q) => format!("{}?{q}", url.path()),
                    None => url.path().to_string(),
                };
                robot.allowed(&path)
            }
        }
    }

    /// The `Crawl-delay` the site asks for, if any.
    pub fn crawl_delay(&self) -> Option<Duration> {
        match self {
            RobotsRules::Parsed(robot) => robot
                .delay
                .filter(|d| d.is_finite() && *d >= 0.0)
                .map(|d| Duration::from_secs_f32(d.min(3600.0))),
            _ => None,
        }
    }
}

/// The cache key of a URL's robots.txt: its origin (`scheme://host:port`).
pub fn origin_key(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    Some(format!("{}://{host}:{port}", url.scheme()))
}

/// robots.txt rules per origin, each fetched at most once while cached.
///
/// Bounded so memory stays flat over URL lists with millions of hosts: when full, the cache is
/// emptied and refilled on demand (a host seen again is fetched again).
pub struct RobotsCache {
    entries: Mutex<HashMap<String, Arc<OnceCell<Arc<RobotsRules>>>>>,
    capacity: usize,
}

impl RobotsCache {
    /// An empty cache holding at most `capacity` origins.
    pub fn new(capacity: usize) -> RobotsCache {
        RobotsCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The slot for `origin`: concurrent callers share one fetch through the `OnceCell`.
    pub fn slot(&self, origin: &str) -> Arc<OnceCell<Arc<RobotsRules>>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = entries.get(origin) {
            return slot.clone();
        }
        if entries.len() >= self.capacity {
            entries.clear();
        }
        let slot = Arc::new(OnceCell::new());
        entries.insert(origin.to_string(), slot.clone());
        slot
    }
}

/// The `X-Robots-Tag` directive that opts this response out, if any (img2dataset's rule).
///
/// Each header value is `[token:] directive, directive, ...`; it applies when it has no token or
/// the token equals our user agent token (case-insensitive), and opts out when one of its
/// directives is in `disallowed` (e.g. `noai`, `noimageai`, `noindex`, `noimageindex`).
pub fn x_robots_opt_out<'a>(
    values: impl IntoIterator<Item = &'a str>,
    user_agent_token: &str,
    disallowed: &[String],
) -> Option<String> {
    let token = user_agent_token.to_ascii_lowercase();
    for value in values {
        let (ua, directives) = match value.split_once(':') {
            Some((ua, rest)) => (Some(ua.trim().to_ascii_lowercase()), rest),
            None => (None, value),
        };
        if ua.as_deref().is_some_and(|ua| ua != token) {
            continue;
        }
        let hit = directives
            .split(',')
            .map(|d| d.trim().to_ascii_lowercase())
            .find(|d| disallowed.iter().any(|x| x.eq_ignore_ascii_case(d)));
        if hit.is_some() {
            return hit;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<String> {
        ["noai", "noimageai", "noindex", "noimageindex"]
            .map(String::from)
            .to_vec()
    }

    fn opt_out(values: &[&str]) -> Option<String> {
        x_robots_opt_out(values.iter().copied(), "wit", &defaults())
    }

    #[test]
    fn x_robots_tag_plain_directives() {
        assert_eq!(opt_out(&["noai"]).as_deref(), Some("noai"));
        assert_eq!(
            opt_out(&["nofollow, NoImageAI"]).as_deref(),
            Some("noimageai")
        );
        assert_eq!(
            opt_out(&["nofollow", "noindex"]).as_deref(),
            Some("noindex")
        );
        assert_eq!(opt_out(&["nofollow, noarchive"]), None);
        assert_eq!(opt_out(&[]), None);
    }

    #[test]
    fn x_robots_tag_token_prefix_applies_only_to_our_token() {
        assert_eq!(opt_out(&["wit: noai"]).as_deref(), Some("noai"));
        assert_eq!(
            opt_out(&["WIT:noimageindex,nofollow"]).as_deref(),
            Some("noimageindex")
        );
        assert_eq!(opt_out(&["googlebot: noindex"]), None);
        assert_eq!(
            opt_out(&["googlebot: noindex", "wit: noai"]).as_deref(),
            Some("noai")
        );
    }

    #[test]
    fn x_robots_tag_empty_directive_list_disables_the_check() {
        assert_eq!(x_robots_opt_out(["noai"], "wit", &[]), None);
    }

    #[test]
    fn robots_rules_follow_rfc_9309_status_handling() {
        let url = Url::parse("http://h/private/a.jpg").unwrap();
        let txt = b"User-agent: *\nDisallow: /private/\nCrawl-delay: 2\n";
        let parsed = RobotsRules::from_response(200, txt, "wit");
        assert!(!parsed.allowed(&url));
        assert!(parsed.allowed(&Url::parse("http://h/public/a.jpg").unwrap()));
        assert_eq!(parsed.crawl_delay(), Some(Duration::from_secs(2)));
        assert!(RobotsRules::from_response(404, b"", "wit").allowed(&url));
        assert!(!RobotsRules::from_response(503, b"", "wit").allowed(&url));
    }

    #[test]
    fn robots_rules_pick_our_user_agent_group() {
        let txt = b"User-agent: wit\nDisallow: /\n\nUser-agent: *\nAllow: /\n";
        let rules = RobotsRules::from_response(200, txt, "wit");
        assert!(!rules.allowed(&Url::parse("http://h/x.png").unwrap()));
        let other = RobotsRules::from_response(200, txt, "otherbot");
        assert!(other.allowed(&Url::parse("http://h/x.png").unwrap()));
    }

    #[test]
    fn robots_query_strings_are_matched() {
        let txt = b"User-agent: *\nDisallow: /*?secret\n";
        let rules = RobotsRules::from_response(200, txt, "wit");
        assert!(!rules.allowed(&Url::parse("http://h/img?secret=1").unwrap()));
        assert!(rules.allowed(&Url::parse("http://h/img?public=1").unwrap()));
    }

    #[test]
    fn cache_shares_slots_and_stays_bounded() {
        let cache = RobotsCache::new(2);
        let a = cache.slot("http://a:80");
        assert!(Arc::ptr_eq(&a, &cache.slot("http://a:80")));
        cache.slot("http://b:80");
        cache.slot("http://c:80");
        assert!(cache.entries.lock().unwrap().len() <= 2);
    }
}
