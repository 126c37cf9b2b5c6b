//! Shared test fixtures: real tar shards with real JPEG/PNG images, a trained tokenizer, the
//! Python interop interpreter.
#![allow(dead_code)]

use image::{ImageEncoder, RgbImage};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wit_loader::{LoaderConfig, TextTokenizer};

/// A photo-like image (gradients + stripes + noise) so crops and resizes see real structure.
pub fn photo(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let n = (x.wrapping_mul(73856093) ^ y.wrapping_mul(19349663) ^ seed.wrapping_mul(83492791))
            % 31;
        let stripe = if (x / 7 + y / 11 + seed).is_multiple_of(2) {
            60
        } else {
            0
        };
        image::Rgb([
            ((x * 255 / w.max(1)) as u8).wrapping_add(n as u8),
            ((y * 255 / h.max(1)) as u8).wrapping_add(stripe),
            ((seed * 37 + x + y) % 256) as u8,
        ])
    })
}

/// JPEG bytes (quality 90).
pub fn jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&photo(w, h, seed))
        .expect("encode jpeg");
    out
}

/// PNG bytes.
pub fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            photo(w, h, seed).as_raw(),
            w,
            h,
            image::ExtendedColorType::Rgb8,
        )
        .expect("encode png");
    out
}

/// A sample to write: key and `(extension, bytes)` members.
pub type RawSample<'a> = (String, Vec<(&'a str, Vec<u8>)>);

/// Writes a tar shard of samples in order, ustar like ours.
pub fn write_tar(path: &Path, samples: &[RawSample]) {
    let file = std::fs::File::create(path).expect("create tar");
    let mut b = tar::Builder::new(file);
    for (key, members) in samples {
        for (ext, bytes) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o444);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, format!("{key}.{ext}"), bytes.as_slice())
                .expect("append");
        }
    }
    b.finish().expect("finish tar");
}

/// A caption for sample `i`.
pub fn caption(i: u64) -> String {
    const COLOURS: [&str; 5] = ["red", "green", "blue", "yellow", "purple"];
    const SHAPES: [&str; 4] = ["circle", "square", "triangle", "star"];
    format!(
        "a {} {} above a {} {}",
        COLOURS[(i % 5) as usize],
        SHAPES[(i % 4) as usize],
        COLOURS[(i / 5 % 5) as usize],
        SHAPES[(i / 3 % 4) as usize]
    )
}

/// Writes `sizes.len()` shards into `dir`, shard s holding `sizes[s]` JPEG+txt samples of
/// small random sizes; returns their paths. Keys are globally unique.
pub fn make_shards(dir: &Path, sizes: &[u64]) -> Vec<String> {
    let mut paths = Vec::new();
    for (s, &n) in sizes.iter().enumerate() {
        let samples: Vec<_> = (0..n)
            .map(|i| {
                let id = s as u64 * 1000 + i;
                let (w, h) = (48 + (id * 7 % 40) as u32, 40 + (id * 13 % 50) as u32);
                (
                    format!("{id:09}"),
                    vec![
                        ("jpg", jpeg(w, h, id as u32)),
                        ("txt", caption(id).into_bytes()),
                    ],
                )
            })
            .collect();
        let path = dir.join(format!("{s:05}.tar"));
        write_tar(&path, &samples);
        paths.push(path.to_string_lossy().into_owned());
    }
    paths
}

/// A small BPE trained on the test captions.
pub fn tokenizer() -> Arc<TextTokenizer> {
    let caps: Vec<String> = (0..200).map(caption).collect();
    Arc::new(TextTokenizer::train(caps.into_iter(), 300).expect("train tokenizer"))
}

/// A test config: small images, small shuffle buffer, 2 threads.
pub fn config(shards: Vec<String>, batch: usize) -> LoaderConfig {
    let mut cfg = LoaderConfig::new(shards, tokenizer());
    cfg.batch_size = batch;
    cfg.image_size = 32;
    cfg.threads = 2;
    cfg.shuffle_buffer = 20;
    cfg.shuffle_initial = 5;
    cfg.seed = 7;
    cfg
}

/// The Python with PIL/numpy/webdataset: `WIT_PYTHON`, else the repo's `.venv`. Panics (never
/// skips) when missing.
pub fn wit_python() -> PathBuf {
    if let Ok(p) = std::env::var("WIT_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python interop readers at {}: run `bash scripts/setup-python.sh` (or set WIT_PYTHON)",
        venv.display()
    );
    venv
}

/// Runs a Python snippet with `args`, panicking with its stderr on failure; returns stdout.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(wit_python())
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
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Appended to every snippet: exit straight after flushing, so a C++ library thread torn down at
/// interpreter shutdown (pyarrow, duckdb: "terminate called without an active exception") cannot
/// turn a finished, passing script into a crash. An exception still exits non-zero.
const PYTHON_EXIT: &str =
    "\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_sys.stderr.flush()\n_os._exit(0)\n";
