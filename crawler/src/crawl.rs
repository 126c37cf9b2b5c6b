//! The polite crawler: seed pages → links → more pages, collecting (image URL, alt text) pairs.
//!
//! A frontier of per-host queues is served round-robin so one large site cannot starve the
//! others, each host no faster than `max(--per-host-delay-ms, robots.txt Crawl-delay)` and with
//! at most `--per-host-concurrency` pages in flight. Every fetch goes through the shared
//! [`Fetcher`] (SSRF guard on every hop, robots.txt, body cap), so a page robots.txt disallows is
//! never requested. URLs are normalised before the seen-set check, and the seen set and the
//! frontier are bounded, so memory stays flat however large the web is.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use url::Url;

use crate::fetch::{FetchConfig, FetchError, Fetched, Fetcher};
use crate::html::{self, Page};
use crate::pairs::Pair;
use crate::urlnorm::{normalize, SeenSet};

/// Which links the crawl follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Only the hosts of the seeds (any scheme or port).
    SameHost,
    /// These domains and their subdomains.
    Domains(Vec<String>),
}

/// How the crawler remembers URLs and pairs it has seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dedup {
    /// 8 bytes per key, no false positives.
    Exact,
    /// A Bloom filter for about `expected` keys at `fp_rate` false positives (fixed memory).
    Bloom {
        /// Keys the filter is sized for.
        expected: u64,
        /// Target false-positive rate.
        fp_rate: f64,
    },
}

impl Dedup {
    /// A fresh seen-set of this kind.
    pub fn new_set(self) -> SeenSet {
        match self {
            Dedup::Exact => SeenSet::exact(),
            Dedup::Bloom { expected, fp_rate } => SeenSet::bloom(expected, fp_rate),
        }
    }
}

/// Everything one crawl needs.
#[derive(Debug, Clone)]
pub struct CrawlConfig {
    /// Start pages (depth 0).
    pub seeds: Vec<Url>,
    /// Most pages fetched (attempted), all hosts together.
    pub max_pages: u64,
    /// Most link hops from a seed.
    pub max_depth: u32,
    /// Which links are followed.
    pub scope: Scope,
    /// Keep images whose alt text is empty (pairs with an empty caption).
    pub keep_empty_alt: bool,
    /// Seen-set kind for page URLs and for (url, alt) pairs.
    pub dedup: Dedup,
    /// Most URLs waiting in the frontier; links found beyond it are dropped and counted.
    pub max_frontier: usize,
    /// Fetch settings (concurrency is the number of pages in flight).
    pub fetch: FetchConfig,
}

/// Running counts, passed to the progress callback and returned at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CrawlProgress {
    /// Pages fetched as HTML and parsed.
    pub pages: u64,
    /// Fetches that failed (network, HTTP status, limits).
    pub failed: u64,
    /// Fetches not made because robots.txt disallows them.
    pub disallowed_by_robots: u64,
    /// Pages not used because the server or the page opted out (X-Robots-Tag, meta robots,
    /// TDMRep `<meta name="tdm-reservation" content="1">`).
    pub opted_out: u64,
    /// Pages of which only the beginning was used (over the size or parse-time limit).
    pub pages_cut: u64,
    /// What the per-page caps dropped or cut (long URLs, alts, titles; images and links past
    /// the caps).
    pub capped: html::Capped,
    /// Fetched documents that were not HTML.
    pub not_html: u64,
    /// Pairs passed on (first occurrence of each (url, alt)).
    pub pairs: u64,
    /// Pairs dropped as repeats.
    pub duplicate_pairs: u64,
    /// URLs waiting in the frontier.
    pub queued: u64,
    /// Links not followed: out of scope, too deep, or the frontier was full.
    pub links_dropped: u64,
}

/// Why a crawl could not run.
#[derive(Debug, thiserror::Error)]
pub enum CrawlError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// No seed is an http(s) URL.
    #[error("no usable seed: give http(s) URLs (or @file with one URL per line)")]
    NoSeeds,
    /// The pair sink failed (e.g. the output disk); the message says why.
    #[error("writing pairs failed: {0}")]
    Sink(String),
}

/// Link targets that are certainly not HTML pages: not worth a fetch.
const NON_PAGE_EXTENSIONS: [&str; 16] = [
    ".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".svg", ".ico", ".pdf", ".zip", ".gz",
    ".mp4", ".mp3", ".css", ".js", ".avif",
];

/// One host's queue and pacing.
#[derive(Debug, Default)]
struct HostQueue {
    urls: VecDeque<(Url, u32)>,
    in_flight: usize,
    last_start: Option<Instant>,
    /// `None` until the first fetch of the host finished (robots.txt read by then).
    crawl_delay: Option<Option<Duration>>,
}

impl HostQueue {
    /// When the next fetch may start: the last start plus the larger of the configured delay
    /// and robots.txt's Crawl-delay.
    fn ready_at(&self, delay: Duration) -> Option<Instant> {
        let pace = self.crawl_delay.flatten().unwrap_or_default().max(delay);
        self.last_start.map(|t| t + pace)
    }

    /// Pages allowed in flight: one until robots.txt's Crawl-delay is known, so the delay is
    /// honoured from the second request on.
    fn limit(&self, per_host: usize) -> usize {
        if self.crawl_delay.is_some() {
            per_host
        } else {
            1
        }
    }
}

/// Per-host queues served round-robin.
struct Frontier {
    hosts: HashMap<String, HostQueue>,
    order: VecDeque<String>,
    len: usize,
    max_len: usize,
    per_host: usize,
    delay: Duration,
}

impl Frontier {
    /// An empty frontier.
    fn new(max_len: usize, per_host: usize, delay: Duration) -> Self {
        Frontier {
            hosts: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            max_len,
            per_host: per_host.max(1),
            delay,
        }
    }

    /// Queues a URL; false when the frontier is full.
    fn push(&mut self, url: Url, depth: u32) -> bool {
        if self.len >= self.max_len {
            return false;
        }
        let key = host_key(&url);
        let q = self.hosts.entry(key.clone()).or_insert_with(|| {
            self.order.push_back(key);
            HostQueue::default()
        });
        q.urls.push_back((url, depth));
        self.len += 1;
        true
    }

    /// The next URL of the first host (round-robin) allowed to start at `now`. Idle hosts
    /// whose pacing has run out are forgotten on the way, so the map stays small.
    fn pop_ready(&mut self, now: Instant) -> Option<(Url, u32)> {
        for _ in 0..self.order.len() {
            let key = self.order.pop_front()?;
            let Some(q) = self.hosts.get_mut(&key) else {
                continue;
            };
            let paced = q.ready_at(self.delay).is_some_and(|t| t > now);
            if q.urls.is_empty() && q.in_flight == 0 && !paced {
                self.hosts.remove(&key);
                continue;
            }
            if q.urls.is_empty() || q.in_flight >= q.limit(self.per_host) || paced {
                self.order.push_back(key);
                continue;
            }
            let item = q.urls.pop_front()?;
            q.in_flight += 1;
            q.last_start = Some(now);
            self.len -= 1;
            self.order.push_back(key);
            return Some(item);
        }
        None
    }

    /// Marks a fetch of `url`'s host finished, learning its Crawl-delay.
    fn done(&mut self, url: &Url, crawl_delay: Option<Duration>) {
        if let Some(q) = self.hosts.get_mut(&host_key(url)) {
            q.in_flight = q.in_flight.saturating_sub(1);
            q.crawl_delay = Some(crawl_delay);
        }
    }

    /// The earliest time a paced host with queued URLs may start again (to sleep until).
    fn next_wakeup(&self) -> Option<Instant> {
        self.hosts
            .values()
            .filter(|q| !q.urls.is_empty() && q.in_flight < q.limit(self.per_host))
            .filter_map(|q| q.ready_at(self.delay))
            .min()
    }
}

/// `host:port` — the unit of politeness.
fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// What a fetch task hands back.
struct Visit {
    url: Url,
    depth: u32,
    crawl_delay: Option<Duration>,
    outcome: Result<Option<(Url, Page)>, FetchError>,
}

/// Crawls from the seeds; `on_pair` receives each new pair, `on_progress` the running counts
/// (after every page). Returns the final counts.
pub async fn crawl(
    cfg: CrawlConfig,
    on_pair: &mut (dyn FnMut(Pair) -> Result<(), String> + Send),
    on_progress: &mut (dyn FnMut(&CrawlProgress) + Send),
) -> Result<CrawlProgress, CrawlError> {
    let fetcher = Fetcher::new(cfg.fetch.clone())?;
    let seeds: Vec<Url> = cfg.seeds.iter().map(normalize).collect();
    if seeds.is_empty() {
        return Err(CrawlError::NoSeeds);
    }
    let seed_hosts: Vec<String> = seeds
        .iter()
        .filter_map(|u| u.host_str().map(str::to_ascii_lowercase))
        .collect();
    let mut state = State {
        frontier: Frontier::new(
            cfg.max_frontier,
            cfg.fetch.per_host_concurrency,
            cfg.fetch.per_host_delay,
        ),
        seen_urls: cfg.dedup.new_set(),
        seen_pairs: cfg.dedup.new_set(),
        progress: CrawlProgress::default(),
        seed_hosts,
        cfg: &cfg,
    };
    for seed in seeds {
        if state.seen_urls.insert(seed.as_str().as_bytes()) {
            state.frontier.push(seed, 0);
        }
    }
    let mut tasks: JoinSet<Visit> = JoinSet::new();
    let mut started = 0u64;
    let in_flight_max = cfg.fetch.concurrency.max(1);
    loop {
        let now = Instant::now();
        while tasks.len() < in_flight_max && started < cfg.max_pages {
            let Some((url, depth)) = state.frontier.pop_ready(now) else {
                break;
            };
            started += 1;
            tasks.spawn(visit(fetcher.clone(), url, depth));
        }
        if tasks.is_empty() {
            let Some(wake) = state
                .frontier
                .next_wakeup()
                .filter(|_| started < cfg.max_pages)
            else {
                break;
            };
            tokio::time::sleep_until(wake.into()).await;
            continue;
        }
        let wake = state.frontier.next_wakeup();
        let joined = match wake.filter(|_| started < cfg.max_pages) {
            Some(w) => tokio::select! {
                j = tasks.join_next() => j,
                () = tokio::time::sleep_until(w.into()) => continue,
            },
            None => tasks.join_next().await,
        };
        let Some(Ok(visit)) = joined else {
            continue;
        };
        state.absorb(visit, on_pair)?;
        state.progress.queued = state.frontier.len as u64;
        on_progress(&state.progress);
    }
    Ok(state.progress)
}

/// The crawl's mutable state between fetches.
struct State<'a> {
    frontier: Frontier,
    seen_urls: SeenSet,
    seen_pairs: SeenSet,
    progress: CrawlProgress,
    seed_hosts: Vec<String>,
    cfg: &'a CrawlConfig,
}

impl State<'_> {
    /// Records a finished fetch: counts, pairs out, links into the frontier.
    fn absorb(
        &mut self,
        visit: Visit,
        on_pair: &mut (dyn FnMut(Pair) -> Result<(), String> + Send),
    ) -> Result<(), CrawlError> {
        self.frontier.done(&visit.url, visit.crawl_delay);
        let (final_url, page) = match visit.outcome {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.progress.not_html += 1;
                return Ok(());
            }
            Err(FetchError::DisallowedByRobots | FetchError::RobotsUnreachable(_)) => {
                self.progress.disallowed_by_robots += 1;
                return Ok(());
            }
            Err(FetchError::OptedOut(_)) => {
                self.progress.opted_out += 1;
                return Ok(());
            }
            Err(e) => {
                tracing::debug!("{}: {e}", visit.url);
                self.progress.failed += 1;
                return Ok(());
            }
        };
        self.progress.pages += 1;
        self.progress.pages_cut += u64::from(page.truncated || page.timed_out);
        self.progress.capped.add(&page.capped);
        let opted_out = page.tdm_reserved
            || page
                .robots
                .iter()
                .any(|d| self.cfg.fetch.disallowed_header_directives.contains(d));
        if opted_out {
            self.progress.opted_out += 1;
        } else {
            self.emit_pairs(&final_url, &page, on_pair)?;
        }
        let nofollow = page.robots.iter().any(|d| d == "nofollow" || d == "none");
        if !nofollow {
            self.follow_links(&page.links, visit.depth + 1);
        }
        Ok(())
    }

    /// Passes on the page's new pairs.
    fn emit_pairs(
        &mut self,
        page_url: &Url,
        page: &Page,
        on_pair: &mut (dyn FnMut(Pair) -> Result<(), String> + Send),
    ) -> Result<(), CrawlError> {
        // The page's strings are shared by its pairs, not copied into each.
        let shared_url: Arc<str> = page_url.as_str().into();
        let title: Option<Arc<str>> = page.title.as_deref().map(Into::into);
        for img in &page.images {
            if img.alt.is_empty() && !self.cfg.keep_empty_alt {
                continue;
            }
            let key = [img.url.as_str().as_bytes(), b"\0", img.alt.as_bytes()].concat();
            if !self.seen_pairs.insert(&key) {
                self.progress.duplicate_pairs += 1;
                continue;
            }
            let to_i32 = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
            on_pair(Pair {
                url: img.url.to_string(),
                caption: img.alt.clone(),
                page_url: Arc::clone(&shared_url),
                title: title.clone(),
                position: to_i32(img.position),
                width: img.width.map(to_i32),
                height: img.height.map(to_i32),
            })
            .map_err(CrawlError::Sink)?;
            self.progress.pairs += 1;
        }
        Ok(())
    }

    /// Queues in-scope, not yet seen, likely-HTML links.
    fn follow_links(&mut self, links: &[Url], depth: u32) {
        for link in links {
            let url = normalize(link);
            if depth > self.cfg.max_depth || !self.in_scope(&url) || !looks_like_page(&url) {
                self.progress.links_dropped += 1;
                continue;
            }
            if !self.seen_urls.insert(url.as_str().as_bytes()) {
                continue;
            }
            if !self.frontier.push(url, depth) {
                self.progress.links_dropped += 1;
            }
        }
    }

    /// Whether the crawl's scope covers `url`.
    fn in_scope(&self, url: &Url) -> bool {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
            return false;
        };
        match &self.cfg.scope {
            Scope::SameHost => self.seed_hosts.contains(&host),
            Scope::Domains(domains) => domains.iter().any(|d| {
                let d = d.trim_start_matches('.').to_ascii_lowercase();
                host == d || host.ends_with(&format!(".{d}"))
            }),
        }
    }
}

/// False for links whose path ends in a known non-HTML extension.
fn looks_like_page(url: &Url) -> bool {
    let path = url.path().to_ascii_lowercase();
    !NON_PAGE_EXTENSIONS.iter().any(|ext| path.ends_with(ext))
}

/// Fetches one page and extracts it off the async threads. `Ok(None)` when it is not HTML.
async fn visit(fetcher: Fetcher, url: Url, depth: u32) -> Visit {
    let outcome = fetch_page(&fetcher, &url).await;
    let crawl_delay = fetcher.robots_crawl_delay(&url).await;
    Visit {
        url,
        depth,
        crawl_delay,
        outcome,
    }
}

/// The fetch and parse of [`visit`].
async fn fetch_page(fetcher: &Fetcher, url: &Url) -> Result<Option<(Url, Page)>, FetchError> {
    let fetched: Fetched = fetcher.fetch(url).await?;
    if !is_html(fetched.content_type.as_deref(), &fetched.body) {
        return Ok(None);
    }
    let page = tokio::task::spawn_blocking(move || {
        let page = html::extract(
            &fetched.body,
            fetched.content_type.as_deref(),
            &fetched.final_url,
        );
        (fetched.final_url, page)
    })
    .await
    .map_err(|_| FetchError::Body)?;
    Ok(Some(page))
}

/// HTML by Content-Type, or by a leading `<` when the server sends none.
fn is_html(content_type: Option<&str>, body: &[u8]) -> bool {
    match content_type.map(str::to_ascii_lowercase) {
        Some(ct) => ct.contains("html"),
        None => body.trim_ascii_start().starts_with(b"<"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn frontier_serves_hosts_round_robin_within_their_limits() {
        let mut f = Frontier::new(100, 1, Duration::ZERO);
        for p in ["a1", "a2", "a3"] {
            f.push(u(&format!("http://a.test/{p}")), 0);
        }
        f.push(u("http://b.test/b1"), 0);
        let now = Instant::now();
        let first = f.pop_ready(now).unwrap().0;
        let second = f.pop_ready(now).unwrap().0;
        assert_eq!(
            (first.as_str(), second.as_str()),
            ("http://a.test/a1", "http://b.test/b1")
        );
        assert!(
            f.pop_ready(now).is_none(),
            "a.test already has its one page in flight"
        );
        f.done(&first, None);
        assert_eq!(f.pop_ready(now).unwrap().0.as_str(), "http://a.test/a2");
    }

    #[test]
    fn crawl_delay_paces_a_host() {
        let mut f = Frontier::new(100, 4, Duration::from_millis(10));
        f.push(u("http://a.test/1"), 0);
        f.push(u("http://a.test/2"), 0);
        let now = Instant::now();
        let first = f.pop_ready(now).unwrap().0;
        assert!(
            f.pop_ready(now).is_none(),
            "the per-host delay holds the second page"
        );
        f.done(&first, Some(Duration::from_secs(5)));
        let wake = f.next_wakeup().unwrap();
        assert!(wake >= now + Duration::from_secs(5));
        assert!(f.pop_ready(now + Duration::from_secs(1)).is_none());
        assert!(f.pop_ready(wake).is_some());
    }

    #[test]
    fn a_full_frontier_refuses_more() {
        let mut f = Frontier::new(1, 1, Duration::ZERO);
        assert!(f.push(u("http://a.test/1"), 0));
        assert!(!f.push(u("http://a.test/2"), 0));
    }

    fn state(cfg: &CrawlConfig) -> State<'_> {
        State {
            frontier: Frontier::new(10, 1, Duration::ZERO),
            seen_urls: SeenSet::exact(),
            seen_pairs: SeenSet::exact(),
            progress: CrawlProgress::default(),
            seed_hosts: vec!["site.test".into()],
            cfg,
        }
    }

    fn config(scope: Scope) -> CrawlConfig {
        CrawlConfig {
            seeds: vec![u("http://site.test/")],
            max_pages: 10,
            max_depth: 1,
            scope,
            keep_empty_alt: false,
            dedup: Dedup::Exact,
            max_frontier: 10,
            fetch: FetchConfig::default(),
        }
    }

    #[test]
    fn scope_depth_and_seen_set_decide_what_is_queued() {
        let cfg = config(Scope::SameHost);
        let mut st = state(&cfg);
        assert!(st.in_scope(&u("https://SITE.test:8443/x")));
        assert!(!st.in_scope(&u("http://sub.site.test/")));
        st.follow_links(
            &[
                u("http://site.test/a#x"),
                u("http://site.test/a"),
                u("http://other.test/"),
            ],
            1,
        );
        assert_eq!((st.frontier.len, st.progress.links_dropped), (1, 1));
        st.follow_links(&[u("http://site.test/deep")], 2);
        assert_eq!((st.frontier.len, st.progress.links_dropped), (1, 2));

        let cfg = config(Scope::Domains(vec!["site.test".into()]));
        let st = state(&cfg);
        assert!(st.in_scope(&u("http://img.site.test/")));
        assert!(!st.in_scope(&u("http://notsite.test/")));
    }

    #[test]
    fn non_page_links_are_not_followed() {
        assert!(!looks_like_page(&u("http://a.test/x.JPG")));
        assert!(looks_like_page(&u("http://a.test/x.html")));
        assert!(looks_like_page(&u("http://a.test/dir/")));
    }
}
