//! Shared helpers for wit-shards' integration tests: generated records with real PNG images,
//! shard writing, and the Python interpreter of the interop venv.

#![allow(dead_code)]

use image::{ImageFormat as Fmt, Rgb, RgbImage};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use wit_shards::{
    EncodedImage, ImageFormat, SampleRecord, ShardConfig, ShardStats, ShardWriter, Status,
};

/// A real PNG of `w`×`h` pixels whose content depends on `seed`.
pub fn png(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        let v = (u64::from(x) * 31 + u64::from(y) * 17 + seed * 101) % 256;
        Rgb([v as u8, (v * 3 % 256) as u8, (seed % 256) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, Fmt::Png).expect("encode png");
    out.into_inner()
}

/// The config the tests use: small shards, one kept input column.
pub fn test_config() -> ShardConfig {
    ShardConfig {
        samples_per_shard: 100,
        oom_shard_count: 5,
        extra_columns: vec!["source".into()],
    }
}

/// Caption variants that exercise the edges: empty, none, non-ASCII, newline, quotes.
fn caption_for(row: u64) -> Option<String> {
    match row % 5 {
        0 => Some(format!("a red square number {row}")),
        1 => Some(String::new()),
        2 => None,
        3 => Some(format!("café ☕ «{row}» 写真")),
        _ => Some(format!("line one\nline \"two\" {row}")),
    }
}

/// `n` records for rows `0..n`: mostly successes with PNGs, plus each failure kind.
pub fn records(n: u64) -> Vec<(u64, SampleRecord)> {
    (0..n)
        .map(|row| {
            let mut rec = SampleRecord {
                url: format!("http://127.0.0.1/img/{row}.png"),
                caption: caption_for(row),
                extra: vec![Some(format!("src-{row}")).filter(|_| row % 4 != 3)],
                ..SampleRecord::default()
            };
            match row % 7 {
                3 => {
                    rec.status = Some(Status::FailedToDownload);
                    rec.error_message = Some("HTTP 404".into());
                }
                5 => {
                    rec.status = Some(Status::FailedToResize);
                    rec.error_message = Some("not an image".into());
                    rec.original_bytes = Some(12);
                }
                6 if row % 2 == 0 => {
                    rec.status = Some(Status::Filtered);
                    rec.error_message = Some("image too small".into());
                }
                _ => {
                    let (w, h) = (8 + (row % 5) as u32, 6 + (row % 3) as u32);
                    let bytes = png(w, h, row);
                    rec.status = Some(Status::Success);
                    rec.original_width = Some(w * 2);
                    rec.original_height = Some(h * 2);
                    rec.original_bytes = Some(bytes.len() as u64 * 3);
                    rec.original_format = Some("png".into());
                    rec.mime = Some("image/png".into());
                    rec.sha256 = Some(format!("{row:064x}"));
                    rec.blake3 = Some(format!("{:064x}", row + 1));
                    rec.image = Some(EncodedImage {
                        bytes,
                        format: ImageFormat::Png,
                        width: w,
                        height: h,
                    });
                }
            }
            (row, rec)
        })
        .collect()
}

/// The key img2dataset gives row `row` of shard `shard` with 100 rows per shard, written out
/// independently of `compute_key`.
pub fn expected_key(shard: u64, row: u64) -> String {
    format!("{:07}", shard * 100 + row)
}

/// Writes `rows` (in the given order) as shard `shard_id` of `dir`.
pub fn write_shard(dir: &Path, shard_id: u64, rows: &[(u64, SampleRecord)]) -> ShardStats {
    let mut w = ShardWriter::create(dir, shard_id, &test_config()).expect("create");
    for (row, rec) in rows {
        w.write(*row, rec).expect("write");
    }
    w.finish().expect("finish")
}

/// A deterministic permutation (no RNG crate needed): multiply by a unit modulo n.
pub fn shuffled<T: Clone>(items: &[T], step: usize) -> Vec<T> {
    let n = items.len();
    let mut step = step % n.max(1);
    while n > 1 && gcd(step, n) != 1 {
        step += 1;
    }
    (0..n).map(|i| items[(i * step + 3) % n].clone()).collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The interop venv's Python: `WIT_PYTHON`, else `<repo>/.venv/bin/python`. Missing = failure.
pub fn wit_python() -> PathBuf {
    let path = std::env::var_os("WIT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        path.exists(),
        "Python interop venv not found at {}: run `bash scripts/setup-python.sh` (or set WIT_PYTHON)",
        path.display()
    );
    path
}

/// Runs `script` with the venv's Python and `args`, returning stdout; fails the test on error.
pub fn run_python(script: &str, args: &[&str], envs: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(wit_python());
    cmd.arg("-c")
        .arg(format!("{script}{PYTHON_EXIT}"))
        .args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run python");
    assert!(
        out.status.success(),
        "python failed ({}); if a module is missing run `bash scripts/setup-python.sh`\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}

/// Appended to every snippet: exit straight after flushing, so a C++ library thread torn down at
/// interpreter shutdown (pyarrow, duckdb: "terminate called without an active exception") cannot
/// turn a finished, passing script into a crash. An exception still exits non-zero.
const PYTHON_EXIT: &str =
    "\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_sys.stderr.flush()\n_os._exit(0)\n";
