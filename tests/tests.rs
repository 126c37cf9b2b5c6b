//! The workspace's end-to-end tests: the `wit` binary driven against the embedded test web, one binary (one link, one copy of the dependencies on disk) with a module per
//! concern.

mod common;

mod bench_smoke;
mod crawl;
mod curate;
mod download;
mod hostile_images;
mod hostile_network;
mod hostile_pages;
mod hostile_rows;
mod stats;
mod testweb;
mod train;
