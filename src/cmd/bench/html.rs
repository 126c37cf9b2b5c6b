//! `wit bench html`: HTML extraction speed on saved pages, one thread, for the comparison with a
//! Python extractor (selectolax / lxml) doing the same work in bench/bench.py.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{ensure, Context};
use url::Url;

/// Flags of `wit bench html`.
#[derive(clap::Args, Debug)]
pub struct HtmlBenchArgs {
    /// Folder of saved pages: every `*.html` / `*.htm` file under it (recursively).
    #[arg(long)]
    pub pages: PathBuf,
    /// Each page's URL is this base joined with its path under --pages; relative references
    /// resolve against it (unless the page has a `<base href>`).
    #[arg(long, default_value = "http://127.0.0.1/")]
    pub base_url: Url,
    /// Passes over all pages (the timing covers all of them; pages are read into memory first).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
}

/// Runs `wit_crawler::html::extract` over every page `repeat` times on this thread and prints
/// `pages/s: N` and `MB/s: N`, plus the image and link counts of one pass so the Python
/// extractor's work can be checked to be the same.
pub fn bench_html(args: HtmlBenchArgs) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    collect_pages(&args.pages, &mut files)?;
    files.sort();
    ensure!(
        !files.is_empty(),
        "no .html pages under {}: save some pages there first",
        args.pages.display()
    );
    let pages = files
        .iter()
        .map(|path| load_page(&args.pages, path, &args.base_url))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bytes: usize = pages.iter().map(|(body, _)| body.len()).sum();
    let (mut images, mut links) = (0usize, 0usize);
    let start = Instant::now();
    for pass in 0..args.repeat.max(1) {
        for (body, url) in &pages {
            let page = wit_crawler::html::extract(body, Some("text/html"), url);
            if pass == 0 {
                images += page.images.len();
                links += page.links.len();
            }
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let passes = f64::from(args.repeat.max(1));
    println!(
        "html bench: {} pages, {:.2} MB, {} pass(es)",
        pages.len(),
        bytes as f64 / 1e6,
        args.repeat.max(1)
    );
    println!("images: {images}");
    println!("links: {links}");
    println!("wall: {secs:.3} s");
    println!("pages/s: {:.1}", pages.len() as f64 * passes / secs);
    println!("MB/s: {:.2}", bytes as f64 * passes / secs / 1e6);
    Ok(ExitCode::SUCCESS)
}

/// Adds every HTML file under `dir` to `out`.
fn collect_pages(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}: check --pages", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.is_dir() {
            collect_pages(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a page and gives it the URL `base` + its path under `root`.
fn load_page(root: &Path, path: &Path, base: &Url) -> anyhow::Result<(Vec<u8>, Url)> {
    let body = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let rel = path.strip_prefix(root).unwrap_or(path);
    let rel = rel.to_string_lossy().replace('\\', "/");
    let url = base
        .join(&rel)
        .with_context(|| format!("{rel} does not make a URL under {base}"))?;
    Ok((body, url))
}
