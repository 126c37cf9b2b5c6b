//! The embedded test web: a deterministic synthetic site served on 127.0.0.1, so wit can be tried,
//! tested and benchmarked without the internet.
//!
//! [`TestWeb::start`] builds the site from a [`TestWebConfig`] and serves it from its own tokio
//! runtime; the caller stays synchronous. The site publishes its ground truth
//! (`/manifest.parquet`, see [`manifest::ManifestRow`]), an img2dataset URL list
//! (`/urls.parquet`) and hit counters (`/stats`). Image alt texts come from the compositional
//! grammar in [`scene`], which the trainer's evaluation reuses.

pub mod faults;
pub mod images;
pub mod manifest;
pub mod scene;
mod server;
mod site;
mod static_files;

use std::net::{Ipv4Addr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};

pub use manifest::ManifestRow;

/// The fewest pages a site may have (the special pages — non-UTF-8 charsets, `<base href>`,
/// upper-case tags, every alt kind, every embedding form — take the first seven).
pub const MIN_PAGES: usize = 10;

/// What to generate. The same config always gives the same site, bytes and manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestWebConfig {
    /// Seeds every page, scene and pixel.
    pub seed: u64,
    /// Number of HTML pages (at least [`MIN_PAGES`]); about 5.5 images each.
    pub pages: usize,
    /// Adds the adversarial area under `/faults/` and the 127.0.0.2 probe listener.
    pub faults: bool,
}

impl Default for TestWebConfig {
    fn default() -> Self {
        TestWebConfig {
            seed: 0,
            pages: 300,
            faults: false,
        }
    }
}

/// A running test web. Dropping it (or [`TestWeb::shutdown`]) stops the server.
pub struct TestWeb {
    base_url: String,
    probe_url: Option<String>,
    state: Arc<server::State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestWeb {
    /// Starts the site on an ephemeral port of 127.0.0.1 (and the same port of 127.0.0.2 with
    /// faults on).
    pub fn start(config: TestWebConfig) -> anyhow::Result<TestWeb> {
        TestWeb::start_on(config, 0)
    }

    /// Starts the site on `port` of 127.0.0.1 (0 picks a free one), for `wit testweb --port`.
    pub fn start_on(config: TestWebConfig, port: u16) -> anyhow::Result<TestWeb> {
        ensure!(
            config.pages >= MIN_PAGES,
            "the test web needs at least {MIN_PAGES} pages (asked for {}): raise --pages",
            config.pages
        );
        let (main, probe) = bind(port, config.faults)?;
        let port = main.local_addr()?.port();
        let base_url = format!("http://127.0.0.1:{port}");
        let probe_base = format!("http://127.0.0.2:{port}");
        let state = Arc::new(server::State {
            site: site::build(&config, &base_url),
            stats: server::Stats::default(),
            host: format!("127.0.0.1:{port}"),
            fault_assets: faults::FaultAssets::new(config.seed, probe_base.clone()),
        });
        let probe_url = config.faults.then_some(probe_base);
        TestWeb::launch(state, main, probe, base_url, probe_url)
    }

    /// Serves `state` on the bound listeners from a runtime of its own.
    fn launch(
        state: Arc<server::State>,
        main: StdListener,
        probe: Option<StdListener>,
        base_url: String,
        probe_url: Option<String>,
    ) -> anyhow::Result<TestWeb> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wit-testweb")
            .enable_io()
            .enable_time()
            .build()
            .context("starting the test web's tokio runtime")?;
        {
            let _guard = runtime.enter();
            main.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(main)?;
            runtime.spawn(server::serve(listener, state.clone()));
            if let Some(p) = probe {
                p.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(p)?;
                runtime.spawn(server::serve_probe(listener, state.clone()));
            }
        }
        Ok(TestWeb {
            base_url,
            probe_url,
            state,
            runtime: Some(runtime),
        })
    }

    /// The site's root, like `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// `http://127.0.0.2:PORT` when faults are on: the address a safe client never reaches.
    pub fn probe_url(&self) -> Option<String> {
        self.probe_url.clone()
    }

    /// The manifest rows (the same as `/manifest.parquet`).
    pub fn manifest(&self) -> &[ManifestRow] {
        &self.state.site.manifest
    }

    /// The hit counters (the same JSON as `/stats`).
    pub fn stats(&self) -> serde_json::Value {
        self.state.stats.to_json()
    }

    /// Renders every image now, on all cores, so a benchmark never waits for the first render.
    pub fn prewarm(&self) {
        let images: Vec<&Arc<site::LazyImage>> = self
            .state
            .site
            .routes
            .values()
            .filter_map(|r| match r {
                site::Resource::Image(img) => Some(img),
                _ => None,
            })
            .collect();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let chunk = images.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for part in images.chunks(chunk) {
                s.spawn(move || {
                    part.iter().for_each(|img| {
                        img.bytes();
                    })
                });
            }
        });
    }

    /// Stops serving and closes the listeners. Idempotent; also runs on drop.
    pub fn shutdown(&mut self) {
        if let Some(rt) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}

impl Drop for TestWeb {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds 127.0.0.1:`port` and, with `probe`, 127.0.0.2 on the same port (retrying other
/// ephemeral ports when that one is taken there).
fn bind(port: u16, probe: bool) -> anyhow::Result<(StdListener, Option<StdListener>)> {
    for _ in 0..50 {
        let main = StdListener::bind((Ipv4Addr::LOCALHOST, port)).with_context(|| {
            format!("cannot listen on 127.0.0.1:{port}: is another server using it? pick another --port")
        })?;
        if !probe {
            return Ok((main, None));
        }
        let p = main.local_addr()?.port();
        match StdListener::bind((Ipv4Addr::new(127, 0, 0, 2), p)) {
            Ok(l) => return Ok((main, Some(l))),
            Err(_) if port == 0 => continue,
            Err(e) => bail!(
                "cannot listen on 127.0.0.2:{p} ({e}), which --faults needs for the SSRF probe: \
                 pick another --port, or on macOS run `sudo ifconfig lo0 alias 127.0.0.2`"
            ),
        }
    }
    bail!(
        "found no port free on both 127.0.0.1 and 127.0.0.2 for --faults; on macOS run \
         `sudo ifconfig lo0 alias 127.0.0.2`"
    )
}
