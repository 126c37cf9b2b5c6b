//! `wit testweb`: serve the embedded deterministic test web on 127.0.0.1 until Ctrl-C, so users
//! can try `wit crawl` and `wit download` without the internet.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::testweb::{TestWeb, TestWebConfig};

/// Flags of `wit testweb`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Port to listen on, on 127.0.0.1 only (0 picks a free one). With --faults the same port is
    /// also opened on 127.0.0.2 as the SSRF probe.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Seed of every page, caption and pixel: the same seed serves the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of HTML pages (about 5.5 images each; at least 10).
    #[arg(long, default_value_t = 300)]
    pub pages: usize,
    /// Add the adversarial area under /faults/ (hangs, resets, bombs, redirects, opt-outs...).
    #[arg(long)]
    pub faults: bool,
    /// Render every image before serving (a few seconds), so the first requests are as fast as
    /// the rest — use it for benchmarks.
    #[arg(long)]
    pub prewarm: bool,
    /// Serve the files under this folder instead of the generated site (read into memory at
    /// start, query strings ignored, 404 for anything else): the benchmarks' image server.
    #[arg(long = "static", value_name = "DIR", conflicts_with_all = ["faults", "prewarm"])]
    pub static_dir: Option<std::path::PathBuf>,
}

/// Runs `wit testweb`: prints the base URL on the first line of stdout, then serves until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.static_dir {
        let web = TestWeb::start_static(dir, args.port)?;
        let base = web.base_url();
        let mut out = std::io::stdout().lock();
        writeln!(out, "{base}")?;
        writeln!(
            out,
            "  serving {} files from {} (query strings ignored)",
            web.static_file_count(),
            dir.display()
        )?;
        writeln!(out, "Serving until Ctrl-C.")?;
        out.flush()?;
        drop(out);
        return serve_until_ctrl_c(web);
    }
    let config = TestWebConfig {
        seed: args.seed,
        pages: args.pages,
        faults: args.faults,
    };
    let web = TestWeb::start_on(config, args.port)?;
    if args.prewarm {
        web.prewarm();
    }
    let base = web.base_url();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{base}")?;
    writeln!(
        out,
        "  pages:     {base}/  ({} image pairs)",
        web.manifest().len()
    )?;
    writeln!(
        out,
        "  ground truth: {base}/manifest.parquet   url list: {base}/urls.parquet"
    )?;
    writeln!(out, "  hit counters: {base}/stats")?;
    if let Some(probe) = web.probe_url() {
        writeln!(
            out,
            "  fault area: {base}/faults/index.html   probe: {probe}"
        )?;
    }
    writeln!(out, "  try: curl -sO {base}/urls.parquet && wit download urls.parquet -o out --allow-net 127.0.0.1/32")?;
    writeln!(out, "Serving until Ctrl-C.")?;
    out.flush()?;
    drop(out);
    serve_until_ctrl_c(web)
}

/// Blocks until Ctrl-C, then stops `web`.
fn serve_until_ctrl_c(mut web: TestWeb) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime to wait for Ctrl-C")?
        .block_on(tokio::signal::ctrl_c())
        .context("waiting for Ctrl-C")?;
    web.shutdown();
    Ok(ExitCode::SUCCESS)
}
