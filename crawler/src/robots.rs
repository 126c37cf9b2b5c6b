//! Site opt-outs: robots.txt (RFC 9309) cached per origin, `X-Robots-Tag` directives (Google's
//! grammar), and the W3C TDM Reservation Protocol (TDMRep).
//!
//! Being polite is a product requirement: a site that disallows our user agent, marks an image
//! `noai`, or reserves its text-and-data-mining rights never gets it stored.
//!
//! robots.txt rules are matched without regular expressions: a pattern is its `*`-separated
//! literal parts, matched left to right, so a rule costs its own bytes and matching is linear in
//! the URL. (A regex per wildcard rule cost ~350 MB for one hostile robots.txt.)

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;
use url::Url;

/// The rules of one origin's robots.txt, already narrowed to our user agent token.
#[derive(Debug)]
pub enum RobotsRules {
    /// No usable robots.txt (4xx, too many redirects): everything is allowed (RFC 9309 §2.3.1.3).
    AllowAll,
    /// robots.txt could not be reached (5xx, 429, network error, timeout):
    /// complete disallow (RFC 9309 §2.3.1.4). Holds why, for the status row's message.
    Unreachable(String),
    /// A parsed robots.txt.
    Parsed(RobotsTxt),
}

impl RobotsRules {
    /// Interprets a robots.txt response. `status` is the final HTTP status after redirects.
    ///
    /// 2xx → parse; 429 and 5xx → unreachable (disallow all, as Google treats 429); other 4xx →
    /// allow all. Anything else (a redirect that was not followed, 1xx) → allow all.
    pub fn from_response(status: u16, body: &[u8], user_agent_token: &str) -> RobotsRules {
        match status {
            200..=299 => RobotsRules::Parsed(RobotsTxt::parse(body, user_agent_token)),
            429 | 500..=599 => RobotsRules::Unreachable(format!("HTTP {status}")),
            _ => RobotsRules::AllowAll,
        }
    }

    /// Whether `url` (on this rules' origin) may be fetched.
    pub fn allowed(&self, url: &Url) -> bool {
        match self {
            RobotsRules::AllowAll => true,
            RobotsRules::Unreachable(_) => url.path() == "/robots.txt",
            RobotsRules::Parsed(robots) => {
                let path = match url.query() {
                    Some(q) => format!("{}?{q}", url.path()),
                    None => url.path().to_string(),
                };
                robots.allowed(&path)
            }
        }
    }

    /// The `Crawl-delay` the site asks for, if any.
    pub fn crawl_delay(&self) -> Option<Duration> {
        match self {
            RobotsRules::Parsed(robots) => robots
                .delay
                .filter(|d| d.is_finite() && *d >= 0.0)
                .map(|d| Duration::from_secs_f64(d.min(3600.0))),
            _ => None,
        }
    }

    /// Heap bytes held, for the cache's byte budget.
    pub fn approx_bytes(&self) -> usize {
        match self {
            RobotsRules::Parsed(robots) => robots.approx_bytes(),
            RobotsRules::Unreachable(reason) => reason.len(),
            RobotsRules::AllowAll => 0,
        }
    }
}

/// One `Allow`/`Disallow` line: its path pattern (`*` any run of bytes, a trailing `$` the end).
#[derive(Debug)]
struct Rule {
    pattern: Box<[u8]>,
    allow: bool,
    /// Bytes the pattern needs at least (its literal parts), to skip rules longer than the path.
    literal_len: usize,
}

/// The rules of a robots.txt that apply to one user agent token, longest pattern first.
#[derive(Debug, Default)]
pub struct RobotsTxt {
    rules: Vec<Rule>,
    delay: Option<f64>,
}

/// One `User-agent` group being read.
#[derive(Default)]
struct Group {
    ours: bool,
    star: bool,
    rules: Vec<Rule>,
    delay: Option<f64>,
}

impl RobotsTxt {
    /// Parses robots.txt per RFC 9309: groups whose user-agent product token equals ours
    /// (case-insensitive) are merged; without one, the `*` groups; a file without any
    /// `User-agent` line applies to everyone. Unknown lines are ignored; nothing fails.
    pub fn parse(body: &[u8], user_agent_token: &str) -> RobotsTxt {
        let mut groups: Vec<Group> = Vec::new();
        let mut loose = Group::default();
        let mut in_agents = false;
        for line in body.split(|&b| b == b'\n' || b == b'\r' || b == 0) {
            let line = match memchr::memchr(b'#', line) {
                Some(hash) => &line[..hash],
                None => line,
            };
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            let key = line[..colon].trim_ascii().to_ascii_lowercase();
            let value = line[colon + 1..].trim_ascii();
            if key == b"user-agent" {
                if !in_agents {
                    groups.push(Group::default());
                    in_agents = true;
                }
                let group = groups.last_mut().expect("pushed above");
                let product = product_token(value);
                group.star |= value == b"*";
                group.ours |= !product.is_empty()
                    && product.eq_ignore_ascii_case(user_agent_token.as_bytes());
                continue;
            }
            let group = groups.last_mut().unwrap_or(&mut loose);
            match key.as_slice() {
                b"allow" | b"disallow" => {
                    in_agents = false;
                    if !value.is_empty() {
                        group.rules.push(Rule::new(value, key == b"allow"));
                    }
                }
                b"crawl-delay" => {
                    in_agents = false;
                    let delay = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                    group.delay = group.delay.or(delay);
                }
                _ => {}
            }
        }
        let pick = |g: &Group| {
            if groups.iter().any(|g| g.ours) {
                g.ours
            } else {
                g.star
            }
        };
        let chosen: Vec<bool> = groups.iter().map(pick).collect();
        let mut robots = RobotsTxt::default();
        if groups.is_empty() {
            robots.rules = loose.rules;
            robots.delay = loose.delay;
        }
        for (group, chosen) in groups.into_iter().zip(chosen) {
            if chosen {
                robots.delay = robots.delay.or(group.delay);
                robots.rules.extend(group.rules);
            }
        }
        // Longest pattern first, Allow before Disallow at equal length (RFC 9309 §2.2.2): the
        // first rule that matches decides.
        robots.rules.sort_by(|a, b| {
            b.pattern
                .len()
                .cmp(&a.pattern.len())
                .then(b.allow.cmp(&a.allow))
        });
        robots.rules.shrink_to_fit();
        robots
    }

    /// Whether `path` (path and query, percent-encoded as the `url` crate writes it) is allowed.
    pub fn allowed(&self, path: &str) -> bool {
        if path == "/robots.txt" {
            return true;
        }
        let path = path.as_bytes();
        self.rules
            .iter()
            .filter(|r| r.literal_len <= path.len())
            .find(|r| pattern_matches(&r.pattern, path))
            .is_none_or(|r| r.allow)
    }

    fn approx_bytes(&self) -> usize {
        std::mem::size_of::<RobotsTxt>()
            + self
                .rules
                .iter()
                .map(|r| std::mem::size_of::<Rule>() + r.pattern.len())
                .sum::<usize>()
    }
}

impl Rule {
    fn new(value: &[u8], allow: bool) -> Rule {
        let pattern = percent_encode_non_ascii(value);
        let literal_len = pattern.iter().filter(|&&b| b != b'*').count()
            - usize::from(pattern.last() == Some(&b'$'));
        Rule {
            pattern: pattern.into_boxed_slice(),
            allow,
            literal_len,
        }
    }
}

/// The leading product token of a `User-agent` value (`wit/1.0` → `wit`).
fn product_token(value: &[u8]) -> &[u8] {
    let end = value
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'))
        .unwrap_or(value.len());
    &value[..end]
}

/// URLs reach the matcher percent-encoded; patterns are written by people, so their non-ASCII
/// bytes are encoded the same way (RFC 9309 §2.2.2).
fn percent_encode_non_ascii(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &b in value {
        if b.is_ascii() && !b.is_ascii_control() && b != b' ' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Matches a robots.txt path pattern: a literal prefix, `*` for any run of bytes, and a final
/// `$` anchoring the end. Greedy leftmost placement of each literal part is exact for this
/// language, so one pass over `path` per part suffices: no backtracking, no allocation.
pub fn pattern_matches(pattern: &[u8], path: &[u8]) -> bool {
    let (pattern, anchored) = match pattern.strip_suffix(b"$") {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let mut parts = pattern.split(|&b| b == b'*').peekable();
    let first = parts.next().unwrap_or_default();
    if !path.starts_with(first) {
        return false;
    }
    let mut pos = first.len();
    if parts.peek().is_none() {
        return !anchored || pos == path.len();
    }
    while let Some(part) = parts.next() {
        if anchored && parts.peek().is_none() {
            return path.len() >= pos + part.len() && path.ends_with(part);
        }
        match memchr::memmem::find(&path[pos..], part) {
            Some(i) => pos += i + part.len(),
            None => return false,
        }
    }
    true
}

/// The cache key of a URL's origin (`scheme://host:port`).
pub fn origin_key(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    Some(format!("{}://{host}:{port}", url.scheme()))
}

/// Per-origin facts (robots.txt rules, TDMRep policies), each fetched at most once while cached.
///
/// Bounded by origins and by the bytes the cached values hold, so memory stays flat over URL
/// lists with millions of hosts and hostile files: when either bound is passed the cache is
/// emptied and refilled on demand (an origin seen again is fetched again).
pub struct OriginCache<T> {
    state: Mutex<CacheState<T>>,
    max_origins: usize,
    max_bytes: usize,
}

struct CacheState<T> {
    entries: HashMap<String, Arc<OnceCell<Arc<T>>>>,
    bytes: usize,
}

impl<T> OriginCache<T> {
    /// An empty cache holding at most `max_origins` origins and about `max_bytes` of values.
    pub fn new(max_origins: usize, max_bytes: usize) -> OriginCache<T> {
        OriginCache {
            state: Mutex::new(CacheState {
                entries: HashMap::new(),
                bytes: 0,
            }),
            max_origins: max_origins.max(1),
            max_bytes,
        }
    }

    /// The slot for `origin`: concurrent callers share one fetch through the `OnceCell`.
    pub fn slot(&self, origin: &str) -> Arc<OnceCell<Arc<T>>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = state.entries.get(origin) {
            return slot.clone();
        }
        if state.entries.len() >= self.max_origins || state.bytes > self.max_bytes {
            state.entries.clear();
            state.bytes = 0;
        }
        let slot = Arc::new(OnceCell::new());
        state.bytes += origin.len() + std::mem::size_of::<Arc<OnceCell<Arc<T>>>>();
        state.entries.insert(origin.to_string(), slot.clone());
        slot
    }

    /// Counts `bytes` of a value just stored against the budget.
    pub fn charge(&self, bytes: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.bytes += bytes;
    }
}

/// Known `X-Robots-Tag` directive names: a `name:` prefix that is one of these is a directive
/// with a value (`max-image-preview: large`), any other is a user agent.
const KNOWN_DIRECTIVES: &[&str] = &[
    "all",
    "noindex",
    "nofollow",
    "none",
    "noarchive",
    "nocache",
    "nosnippet",
    "notranslate",
    "noimageindex",
    "indexifembedded",
    "unavailable_after",
    "max-snippet",
    "max-image-preview",
    "max-video-preview",
    "noai",
    "noimageai",
    "nositelinkssearchbox",
    "noodp",
    "noydir",
];

/// The `X-Robots-Tag` directive that opts this response out, if any.
///
/// Google's grammar: each header value is a comma-separated list of directives; an item
/// `token: directive` whose token is not a known directive names a user agent, and it and the
/// items after it (until the next user agent) apply only to that agent. A known directive with a
/// value (`max-image-preview:large`) is a directive. Several headers combine. `none` counts as
/// `noindex` and `nofollow`. Opts out when a directive for everyone or for our token is in
/// `disallowed` (e.g. `noai`, `noimageai`, `noindex`, `noimageindex`).
pub fn x_robots_opt_out<'a>(
    values: impl IntoIterator<Item = &'a str>,
    user_agent_token: &str,
    disallowed: &[String],
) -> Option<String> {
    let is_disallowed = |d: &str| disallowed.iter().any(|x| x.eq_ignore_ascii_case(d));
    for value in values {
        let mut applies = true;
        for item in value.split(',') {
            let mut directive = item.trim();
            if let Some((head, rest)) = directive.split_once(':') {
                let head = head.trim();
                if !KNOWN_DIRECTIVES
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(head))
                {
                    applies = head.eq_ignore_ascii_case(user_agent_token);
                    directive = rest.trim();
                }
            }
            if !applies {
                continue;
            }
            let name = directive
                .split_once(':')
                .map_or(directive, |(n, _)| n)
                .trim()
                .to_ascii_lowercase();
            let hit = is_disallowed(&name)
                || (name == "none" && (is_disallowed("noindex") || is_disallowed("nofollow")));
            if hit {
                return Some(name);
            }
        }
    }
    None
}

/// The largest `/.well-known/tdmrep.json` prefix read; a longer file does not parse and is
/// ignored (as an absent one).
pub const TDMREP_MAX_BYTES: u64 = 256 * 1024;

/// One origin's TDMRep policies (`/.well-known/tdmrep.json`): which paths reserve TDM rights.
#[derive(Debug, Default)]
pub struct TdmRep {
    rules: Vec<TdmRule>,
}

#[derive(Debug)]
struct TdmRule {
    location: Box<[u8]>,
    reserved: bool,
}

#[derive(Deserialize)]
struct TdmEntry {
    location: String,
    #[serde(rename = "tdm-reservation", default)]
    reservation: serde_json::Value,
}

impl TdmRep {
    /// Parses a `tdmrep.json` body (a JSON array of `{location, tdm-reservation, tdm-policy}`);
    /// anything else means no policy.
    pub fn parse(body: &[u8]) -> TdmRep {
        let entries: Vec<TdmEntry> = match serde_json::from_slice(body) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!("unusable tdmrep.json, treating as absent: {e}");
                return TdmRep::default();
            }
        };
        let mut rules: Vec<TdmRule> = entries
            .into_iter()
            .map(|e| TdmRule {
                location: percent_encode_non_ascii(e.location.trim().as_bytes()).into(),
                reserved: e.reservation == 1 || e.reservation == "1",
            })
            .collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.location.len()));
        TdmRep { rules }
    }

    /// Whether the most specific (longest) location matching `url`'s path reserves TDM rights.
    pub fn reserved(&self, url: &Url) -> bool {
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        self.rules
            .iter()
            .find(|r| pattern_matches(&r.location, path.as_bytes()))
            .is_some_and(|r| r.reserved)
    }

    /// Heap bytes held, for the cache's byte budget.
    pub fn approx_bytes(&self) -> usize {
        self.rules
            .iter()
            .map(|r| std::mem::size_of::<TdmRule>() + r.location.len())
            .sum()
    }
}

/// Whether a response's `tdm-reservation` header reserves TDM rights (value `1`).
pub fn tdm_header_reserved<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    values.into_iter().any(|v| v.trim() == "1")
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
        assert_eq!(opt_out(&["none"]).as_deref(), Some("none"));
        assert_eq!(opt_out(&["nofollow, noarchive"]), None);
        assert_eq!(opt_out(&[]), None);
    }

    #[test]
    fn x_robots_tag_directives_with_values_are_not_user_agents() {
        assert_eq!(
            opt_out(&["noai, max-image-preview:large"]).as_deref(),
            Some("noai")
        );
        assert_eq!(
            opt_out(&["max-image-preview: large, noimageai"]).as_deref(),
            Some("noimageai")
        );
        assert_eq!(
            opt_out(&["max-snippet:-1, unavailable_after: 2030-01-01"]),
            None
        );
    }

    #[test]
    fn x_robots_tag_token_prefix_applies_only_to_our_token() {
        assert_eq!(opt_out(&["wit: noai"]).as_deref(), Some("noai"));
        assert_eq!(
            opt_out(&["WIT:noimageindex,nofollow"]).as_deref(),
            Some("noimageindex")
        );
        assert_eq!(opt_out(&["googlebot: noindex"]), None);
        assert_eq!(opt_out(&["otherbot: noai, noimageai"]), None);
        assert_eq!(
            opt_out(&["googlebot: noindex", "wit: noai"]).as_deref(),
            Some("noai")
        );
        assert_eq!(
            opt_out(&["googlebot: noindex, wit: noai"]).as_deref(),
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
        assert!(!RobotsRules::from_response(429, b"", "wit").allowed(&url));
    }

    #[test]
    fn robots_rules_pick_our_user_agent_group() {
        let txt = b"User-agent: wit\nDisallow: /\n\nUser-agent: *\nAllow: /\n";
        let rules = RobotsRules::from_response(200, txt, "wit");
        assert!(!rules.allowed(&Url::parse("http://h/x.png").unwrap()));
        let other = RobotsRules::from_response(200, txt, "otherbot");
        assert!(other.allowed(&Url::parse("http://h/x.png").unwrap()));
        let versioned = b"User-agent: other\nUser-agent: WIT/2.0\nDisallow: /a\n";
        let rules = RobotsTxt::parse(versioned, "wit");
        assert!(!rules.allowed("/a/b"));
        assert!(rules.allowed("/b"));
    }

    #[test]
    fn robots_query_strings_are_matched() {
        let txt = b"User-agent: *\nDisallow: /*?secret\n";
        let rules = RobotsRules::from_response(200, txt, "wit");
        assert!(!rules.allowed(&Url::parse("http://h/img?secret=1").unwrap()));
        assert!(rules.allowed(&Url::parse("http://h/img?public=1").unwrap()));
    }

    #[test]
    fn robots_longest_match_wins_and_allow_wins_ties() {
        let txt = b"User-agent: *\nDisallow: /a\nAllow: /a/b\nDisallow: /*.gif$\nAllow: /c\nDisallow: /c\n";
        let rules = RobotsTxt::parse(txt, "wit");
        assert!(!rules.allowed("/a/x"));
        assert!(rules.allowed("/a/b/x"));
        assert!(!rules.allowed("/x/y.gif"));
        assert!(rules.allowed("/x/y.gif?z"));
        assert!(rules.allowed("/c/d"));
        assert!(rules.allowed("/robots.txt"));
    }

    #[test]
    fn wildcard_patterns_match_like_rfc_9309() {
        let m = |p: &str, s: &str| pattern_matches(p.as_bytes(), s.as_bytes());
        assert!(m("/", "/anything"));
        assert!(m("/*", "/"));
        assert!(m("/fish*", "/fish.html"));
        assert!(!m("/fish*", "/Fish.asp"));
        assert!(m("/*.php", "/folder/filename.php?parameters"));
        assert!(m("/*.php$", "/filename.php"));
        assert!(!m("/*.php$", "/filename.php?parameters"));
        assert!(!m("/*.php$", "/filename.php5"));
        assert!(m("/fish*.php", "/fish/salmon.php"));
        assert!(!m("/fish*.php", "/Fish.PHP"));
        assert!(m("/a$", "/a"));
        assert!(!m("/a$", "/ab"));
        assert!(m("/*a*a$", "/aa"));
        assert!(!m("/*a*a$", "/a"));
        assert!(m("/**b", "/xxb"));
    }

    #[test]
    fn a_hostile_robots_txt_costs_its_own_bytes() {
        let mut txt = b"User-agent: *\n".to_vec();
        while txt.len() < 512 * 1024 {
            let n = txt.len();
            txt.extend_from_slice(format!("Disallow: /*{n}*x*y*z$\n").as_bytes());
        }
        let rules = RobotsRules::from_response(200, &txt, "wit");
        assert!(
            rules.approx_bytes() < 4 * txt.len(),
            "{}",
            rules.approx_bytes()
        );
        let long = format!("/{}", "x".repeat(4000));
        let start = std::time::Instant::now();
        assert!(rules.allowed(&Url::parse(&format!("http://h{long}")).unwrap()));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn cache_shares_slots_and_stays_bounded_by_origins_and_bytes() {
        let cache: OriginCache<u8> = OriginCache::new(2, 1 << 20);
        let a = cache.slot("http://a:80");
        assert!(Arc::ptr_eq(&a, &cache.slot("http://a:80")));
        cache.slot("http://b:80");
        cache.slot("http://c:80");
        assert!(cache.state.lock().unwrap().entries.len() <= 2);
        let by_bytes: OriginCache<u8> = OriginCache::new(1000, 1000);
        by_bytes.slot("http://a:80");
        by_bytes.charge(5000);
        by_bytes.slot("http://b:80");
        assert_eq!(by_bytes.state.lock().unwrap().entries.len(), 1);
    }

    #[test]
    fn tdmrep_json_reserves_matching_locations() {
        let json = br#"[
            {"location": "/images/*", "tdm-reservation": 1, "tdm-policy": "https://h/policy.json"},
            {"location": "/images/free/*", "tdm-reservation": 0},
            {"location": "/*.png$", "tdm-reservation": "1"}
        ]"#;
        let tdm = TdmRep::parse(json);
        let u = |p: &str| Url::parse(&format!("http://h{p}")).unwrap();
        assert!(tdm.reserved(&u("/images/a.jpg")));
        assert!(!tdm.reserved(&u("/images/free/a.jpg")));
        assert!(tdm.reserved(&u("/other/a.png")));
        assert!(!tdm.reserved(&u("/other/a.jpg")));
        assert!(!TdmRep::parse(b"{not json").reserved(&u("/images/a.jpg")));
        assert!(tdm_header_reserved(["1"]));
        assert!(!tdm_header_reserved(["0"]));
    }
}
