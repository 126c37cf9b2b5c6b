//! The `wit` binary: command-line glue over the wit crates. All printing happens here.

use clap::Parser;

fn main() -> std::process::ExitCode {
    reuse_large_allocations();
    let cli = webimagetext::cmd::Cli::parse();
    webimagetext::cmd::init_logging(cli.verbose);
    match webimagetext::cmd::run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The loader frees and allocates a 150 MB batch buffer every batch (batch 256 at 224 px, f32).
/// glibc serves such sizes with `mmap` and returns them with `munmap`, so the kernel zeroes every
/// page again for the next batch: 15–25% of the loader's CPU time, measured with `perf`. Keeping
/// large blocks on the heap, and the heap's freed top untrimmed up to 1 GiB, lets the next batch
/// reuse the same pages. Only glibc is tuned; other C libraries keep their defaults.
fn reuse_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation policy; it runs before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
