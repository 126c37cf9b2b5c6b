//! The integration-test harness: run the built `wit` binary, find the Python interop readers,
//! make scratch folders. Each test file does `mod common;` and uses what it needs.
#![allow(dead_code)]

pub mod hostile;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `wit` binary cargo built for these tests.
pub fn wit_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wit"))
}

/// Runs `wit` with `args`, returning its output whatever the exit code.
pub fn wit(args: &[&str]) -> Output {
    Command::new(wit_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the wit binary runs")
}

/// Runs `wit` and panics with its stderr unless it exits 0.
pub fn wit_ok(args: &[&str]) -> Output {
    let out = wit(args);
    assert!(
        out.status.success(),
        "wit {args:?} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Python with the interop readers: `WIT_PYTHON`, else the repo's `.venv`. Panics (never
/// skips) when neither exists, saying how to install it.
pub fn wit_python() -> PathBuf {
    if let Ok(p) = std::env::var("WIT_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python interop readers: run `bash scripts/setup-python.sh` (or set WIT_PYTHON)"
    );
    venv
}

/// Runs a Python snippet with `args` (sys.argv[1..]) and returns its stdout; panics with stderr
/// on a non-zero exit so the interop failure is visible.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new(wit_python())
        .arg("-c")
        .arg(format!("{script}{PYTHON_EXIT}"))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}

/// A fresh scratch folder removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Starts the embedded test web on an ephemeral 127.0.0.1 port; it stops when dropped.
pub fn start_testweb(seed: u64, pages: usize, faults: bool) -> webimagetext::testweb::TestWeb {
    webimagetext::testweb::TestWeb::start(webimagetext::testweb::TestWebConfig {
        seed,
        pages,
        faults,
    })
    .expect("the test web starts")
}

/// Appended to every snippet: exit straight after flushing, so a C++ library thread torn down at
/// interpreter shutdown (pyarrow, duckdb: "terminate called without an active exception") cannot
/// turn a finished, passing script into a crash. An exception still exits non-zero.
const PYTHON_EXIT: &str =
    "\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_sys.stderr.flush()\n_os._exit(0)\n";

/// Every status row a download wrote to `out`, shard by shard in shard order.
pub fn status_rows(out: &Path) -> Vec<wit_shards::MetadataRow> {
    let mut parquets: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("output folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parquets.sort();
    parquets
        .iter()
        .flat_map(|p| wit_shards::read_metadata(p).unwrap())
        .collect()
}
