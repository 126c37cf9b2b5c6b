//! Everything between the web and the shards: URL-list input, fetching with the SSRF guard and
//! robots.txt, image processing, HTML/WARC extraction, crawling, filtering and curation.
pub mod crawl;
pub mod curate;
pub mod download;
pub mod fetch;
pub mod filter;
pub mod html;
pub mod imaging;
pub mod input;
/// The shared network layer (`wit-net`), under the name the crawler's modules always used.
pub use wit_net as net;
pub mod pairs;
pub mod queries;
pub mod robots;
pub mod urlnorm;
pub mod warc;
