//! The SSRF guard: which IP addresses wit may connect to, and a DNS resolver that enforces it.
//!
//! A URL list is untrusted input: a row pointing at `http://169.254.169.254/` or at a name that
//! resolves to `10.0.0.1` must not reach the machine's metadata service or the operator's
//! network. So every address is checked after resolution (DNS names) or after parsing (IP
//! literals, which the `url` crate already normalises from decimal, octal, hex and short forms),
//! on every redirect hop, and only public unicast addresses pass unless an `--allow-net` CIDR
//! covers them.

use hickory_resolver::config::ResolverConfig;
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

/// Decides whether an address may be connected to: public unicast, or inside an allowed CIDR.
///
/// Exists so the policy lives in one place that the resolver, the IP-literal check and the
/// redirect follower all share.
#[derive(Clone, Debug, Default)]
pub struct NetPolicy {
    allow: Vec<IpNet>,
}

impl NetPolicy {
    /// A policy that permits public unicast addresses plus everything inside `allow`
    /// (the user's `--allow-net` CIDRs; tests pass `127.0.0.1/32`).
    pub fn new(allow: Vec<IpNet>) -> NetPolicy {
        NetPolicy { allow }
    }

    /// Whether wit may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let canonical = canonical_ip(ip);
        if self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            return true;
        }
        is_public_unicast(ip)
    }
}

/// IPv4-mapped and IPv4-compatible IPv6 addresses are the IPv4 address on the wire; other
/// addresses are themselves.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

/// True for globally reachable unicast addresses only (IANA special-purpose registries).
pub fn is_public_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// IPv4 blocks that are not globally reachable unicast (RFC 6890 and successors).
const V4_REFUSED: &[(u32, u8)] = &[
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network", unspecified
    (0x0A00_0000, 8),  // 10.0.0.0/8 private
    (0x6440_0000, 10), // 100.64.0.0/10 CGNAT
    (0x7F00_0000, 8),  // 127.0.0.0/8 loopback
    (0xA9FE_0000, 16), // 169.254.0.0/16 link-local (cloud metadata 169.254.169.254)
    (0xAC10_0000, 12), // 172.16.0.0/12 private
    (0xC000_0000, 24), // 192.0.0.0/24 IETF protocol assignments
    (0xC000_0200, 24), // 192.0.2.0/24 TEST-NET-1
    (0xC058_6300, 24), // 192.88.99.0/24 6to4 relay anycast (deprecated)
    (0xC0A8_0000, 16), // 192.168.0.0/16 private
    (0xC612_0000, 15), // 198.18.0.0/15 benchmarking
    (0xC633_6400, 24), // 198.51.100.0/24 TEST-NET-2
    (0xCB00_7100, 24), // 203.0.113.0/24 TEST-NET-3
    (0xE000_0000, 4),  // 224.0.0.0/4 multicast
    (0xF000_0000, 4),  // 240.0.0.0/4 reserved, 255.255.255.255 broadcast
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    !V4_REFUSED.iter().any(|&(net, len)| {
        let mask = u32::MAX << (32 - len);
        bits & mask == net
    })
}

/// IPv6 is public only inside 2000::/3 (global unicast), minus its special blocks; addresses
/// that embed an IPv4 address (mapped, NAT64, 6to4) are judged by the embedded address.
fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let bits = u128::from(ip);
    let in_net = |net: u128, len: u32| bits & (u128::MAX << (128 - len)) == net;
    if in_net(0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96) {
        // NAT64 well-known prefix: the gateway connects to the embedded IPv4 address.
        return is_public_v4(Ipv4Addr::from(bits as u32));
    }
    if in_net(0x2002_0000_0000_0000_0000_0000_0000_0000, 16) {
        // 6to4: the embedded IPv4 address is bits 16..48.
        return is_public_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    let refused: [(u128, u32); 3] = [
        (0x2001_0000_0000_0000_0000_0000_0000_0000, 23), // IETF protocol assignments, Teredo, ORCHID
        (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32), // documentation
        (0x3fff_0000_0000_0000_0000_0000_0000_0000, 20), // documentation (RFC 9637)
    ];
    in_net(0x2000_0000_0000_0000_0000_0000_0000_0000, 3)
        && !refused.iter().any(|&(net, len)| in_net(net, len))
}

/// Why an address was refused: surfaced to the user as a download failure.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to addresses refused by the SSRF guard ({addrs}); pass --allow-net CIDR to allow them")]
pub struct BlockedAddress {
    /// The host name as it appeared in the URL.
    pub host: String,
    /// The refused addresses, comma-separated.
    pub addrs: String,
}

/// A `reqwest` DNS resolver: hickory with an in-process cache, dropping refused addresses.
///
/// Exists so users need no local caching DNS server (img2dataset's most common failure) and so
/// a DNS answer can never route a request to a private address.
#[derive(Clone)]
pub struct GuardedResolver {
    policy: NetPolicy,
    resolver: Arc<OnceLock<TokioResolver>>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`. The system DNS configuration is read on first use, so
    /// runs that only meet IP literals never need one.
    pub fn new(policy: NetPolicy) -> GuardedResolver {
        GuardedResolver {
            policy,
            resolver: Arc::new(OnceLock::new()),
        }
    }

    fn resolver(&self) -> &TokioResolver {
        self.resolver.get_or_init(|| {
            let mut builder = TokioResolver::builder_tokio().unwrap_or_else(|e| {
                tracing::warn!(
                    "cannot read the system DNS configuration (/etc/resolv.conf: {e}); \
                     only localhost and /etc/hosts names will resolve"
                );
                TokioResolver::builder_with_config(
                    ResolverConfig::new(),
                    TokioConnectionProvider::default(),
                )
            });
            builder.options_mut().cache_size = 65_536;
            builder.build()
        })
    }

    /// Resolves `host` and keeps only the addresses the policy permits; an error when none is left.
    pub async fn lookup(
        &self,
        host: &str,
    ) -> Result<Vec<IpAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let resolver = self.resolver();
        let answer = resolver.lookup_ip(host).await?;
        let all: Vec<IpAddr> = answer.iter().collect();
        let permitted: Vec<IpAddr> = all
            .iter()
            .copied()
            .filter(|ip| self.policy.permits(*ip))
            .collect();
        if permitted.is_empty() {
            let addrs = all
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Box::new(BlockedAddress {
                host: host.to_string(),
                addrs,
            }));
        }
        Ok(permitted)
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let ips = this.lookup(&host).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        !NetPolicy::default().permits(s.parse().unwrap())
    }

    #[test]
    fn refuses_every_non_public_ipv4_block() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.0.0.2",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn permits_public_ipv4_and_ipv6() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!refused(ip), "{ip} must be permitted");
        }
    }

    #[test]
    fn refuses_every_non_public_ipv6_form() {
        for ip in [
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2002:c0a8:101::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "2001::1",
            "2001:2::1",
            "100::1",
            "5f00::1",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn url_crate_normalises_ipv4_spellings_to_refused_addresses() {
        for spelling in [
            "http://2130706433/",
            "http://0x7f000001/",
            "http://017700000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0x7f.1/",
            "http://169.254.43518/",
            "http://[::ffff:127.0.0.1]/",
            "http://[0:0:0:0:0:ffff:7f00:1]/",
        ] {
            let url = url::Url::parse(spelling).unwrap();
            let ip = match url.host().unwrap() {
                url::Host::Ipv4(v4) => IpAddr::V4(v4),
                url::Host::Ipv6(v6) => IpAddr::V6(v6),
                url::Host::Domain(d) => panic!("{spelling} parsed as a domain {d}"),
            };
            assert!(
                refused(&ip.to_string()),
                "{spelling} → {ip} must be refused"
            );
        }
    }

    #[test]
    fn allow_net_opens_exactly_its_cidr() {
        let policy = NetPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(policy.permits("127.0.0.1".parse().unwrap()));
        assert!(policy.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!policy.permits("127.0.0.2".parse().unwrap()));
        assert!(!policy.permits("10.0.0.1".parse().unwrap()));
        assert!(policy.permits("8.8.8.8".parse().unwrap()));
    }
}
