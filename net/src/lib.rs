//! The one network layer every HTTP client in wit goes through: the downloader and crawler
//! (`wit-crawler`'s fetcher), archive URLs (`wit warc`) and shard/index URLs (`wit-loader`).
//!
//! One place holds what makes a connection safe and robust, so no client can forget a part of
//! it: the SSRF guard (`guard`: a hickory resolver that drops refused addresses, IP literals
//! checked before connecting), redirects followed by hand with each hop checked, no proxy (an
//! inherited `HTTP_PROXY` would route around the guard), connect/read/total timeouts, one retry
//! policy (exponential backoff with jitter, `Retry-After` capped), and for long bodies a reader
//! that resumes with `Range` after a dropped or stalled connection, under a byte cap.

mod guard;
mod http;
mod stream;

pub use guard::{is_public_unicast, BlockedAddress, GuardedResolver, NetPolicy};
pub use http::{
    backoff, check_target, client_builder, find_source, redirect_target, retry_after,
    send_following, HttpConfig, NetError, MAX_RETRY_AFTER,
};
pub use ipnet::IpNet;
pub use stream::open_blocking;
