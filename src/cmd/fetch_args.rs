//! Fetch flags shared by `wit download` and `wit crawl`, declared once and flattened into both.
//!
//! Per-host limits are `Option`s because the right default depends on the command: a URL list
//! spreads over many hosts (16 in flight, no delay), a crawl hammers few (2 in flight, 1 s apart).

use std::sync::Arc;
use std::time::Duration;
use wit_crawler::fetch::{user_agent_for, FetchConfig};
use wit_loader::{DefaultSource, ShardSource};

/// How wit talks to web servers: concurrency, politeness, timeouts, safety.
#[derive(clap::Args, Debug, Clone)]
pub struct FetchArgs {
    /// Requests in flight across all hosts.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Requests in flight to one host [default: 16 for download, 2 for crawl].
    #[arg(long)]
    pub per_host_concurrency: Option<usize>,
    /// Minimum milliseconds between two requests to one host [default: 0 for download, 1000 for crawl].
    #[arg(long)]
    pub per_host_delay_ms: Option<u64>,
    /// Seconds allowed for one attempt, body included (connecting is bounded by the same value).
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Extra attempts after a connect error, timeout, 5xx or 429 (exponential backoff with jitter;
    /// Retry-After honoured up to 30 s).
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Largest decoded body accepted, in bytes (gzip/brotli bombs are cut here).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: u64,
    /// Token identifying wit in the User-Agent, matched against robots.txt groups and
    /// `X-Robots-Tag: token: directive` headers.
    #[arg(long, default_value = "wit")]
    pub user_agent_token: String,
    #[command(flatten)]
    pub net: NetArgs,
    /// Do not fetch or obey robots.txt (only for sites you own or have permission to copy).
    #[arg(long)]
    pub ignore_robots: bool,
    /// Do not obey TDMRep opt-outs (the `tdm-reservation: 1` header and
    /// `/.well-known/tdmrep.json`; only for sites you own or have permission to mine).
    #[arg(long)]
    pub ignore_tdmrep: bool,
    /// X-Robots-Tag directives that opt an image out (comma-separated; empty string disables).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "noai,noimageai,noindex,noimageindex"
    )]
    pub disallowed_header_directives: Vec<String>,
}

/// The SSRF guard's one escape hatch, shared by every command that opens connections.
#[derive(clap::Args, Debug, Clone)]
pub struct NetArgs {
    /// Allow connecting to this non-public CIDR (repeatable). Loopback, private, link-local,
    /// CGNAT, multicast and cloud-metadata addresses are refused otherwise (SSRF guard).
    /// Example: --allow-net 127.0.0.1/32 for a local test server.
    #[arg(long = "allow-net", value_name = "CIDR")]
    pub allow_net: Vec<String>,
}

impl NetArgs {
    /// The `--allow-net` CIDRs, parsed; a bare address means just that address.
    pub fn allow_nets(&self) -> anyhow::Result<Vec<wit_crawler::net::IpNet>> {
        self.allow_net
            .iter()
            .map(|s| {
                s.parse::<wit_crawler::net::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(Into::into))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "--allow-net {s:?} is not a CIDR such as 127.0.0.1/32 or fd00::/8"
                        )
                    })
            })
            .collect()
    }
}

/// How `--data` URLs (shards, `shardindex.json`) are read by train, eval and tokenizer.
#[derive(clap::Args, Debug, Clone)]
pub struct DataNetArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Seconds a shard server may stay silent before the read is resumed with a `Range`
    /// request (3 tries, then the shard fails): a stalled server never hangs the run.
    #[arg(long, default_value_t = 30.0)]
    pub read_timeout: f64,
}

impl DataNetArgs {
    /// The shard source: local files, and http(s) through the SSRF guard with these limits.
    pub fn source(&self) -> anyhow::Result<Arc<dyn ShardSource>> {
        anyhow::ensure!(
            self.read_timeout.is_finite() && self.read_timeout > 0.0,
            "--read-timeout must be a positive number of seconds, got {}",
            self.read_timeout
        );
        let policy = wit_net::NetPolicy::new(self.net.allow_nets()?);
        let http = wit_net::HttpConfig {
            read_timeout: Duration::from_secs_f64(self.read_timeout),
            user_agent: user_agent_for("wit"),
            ..wit_net::HttpConfig::new(policy)
        };
        Ok(Arc::new(DefaultSource::new(http)))
    }
}

impl FetchArgs {
    /// The fetch configuration, filling unset per-host limits with the command's defaults.
    pub fn to_config(
        &self,
        default_per_host: usize,
        default_delay_ms: u64,
    ) -> anyhow::Result<FetchConfig> {
        anyhow::ensure!(
            self.timeout.is_finite() && self.timeout > 0.0,
            "--timeout must be a positive number of seconds, got {}",
            self.timeout
        );
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        let per_host = self.per_host_concurrency.unwrap_or(default_per_host);
        anyhow::ensure!(per_host > 0, "--per-host-concurrency must be at least 1");
        let timeout = Duration::from_secs_f64(self.timeout);
        Ok(FetchConfig {
            concurrency: self.concurrency,
            per_host_concurrency: per_host,
            per_host_delay: Duration::from_millis(
                self.per_host_delay_ms.unwrap_or(default_delay_ms),
            ),
            connect_timeout: timeout,
            timeout,
            retries: self.retries,
            max_body_bytes: self.max_body_bytes,
            max_redirects: 5,
            user_agent: user_agent_for(&self.user_agent_token),
            user_agent_token: self.user_agent_token.clone(),
            allow_net: self.net.allow_nets()?,
            respect_robots: !self.ignore_robots,
            respect_tdmrep: !self.ignore_tdmrep,
            disallowed_header_directives: self
                .disallowed_header_directives
                .iter()
                .map(|d| d.trim().to_ascii_lowercase())
                .filter(|d| !d.is_empty())
                .collect(),
        })
    }
}
