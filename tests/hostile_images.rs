//! Hostile and unusual images through the real `wit download`, served from a loopback server to
//! a run under an address-space and CPU cap: EXIF that amplifies, 1×N strips under every resize
//! mode, and the formats added for img2dataset parity (TIFF, ICO/CUR, a BMP variant). Every URL
//! must end as exactly one status row, the run must succeed, and its peak RSS stay ≤ 512 MB.

use std::collections::HashMap;
use std::io::Cursor;
use std::time::Duration;

use crate::common::hostile::{wit_capped, LoopbackServer, Route};
use crate::common::{scratch, status_rows};
use wit_shards::{MetadataRow, Status};

/// The address-space cap: room for the runtime's thread stacks and allocator arenas, far below
/// what any of these inputs cost before their fixes (4 GB to 3.3 TB).
const ADDRESS_SPACE: u64 = 3 << 30;
/// The bar for peak RSS per process.
const MAX_RSS: u64 = 512 << 20;
const CPU_SECONDS: u64 = 60;
const MAX_WALL: Duration = Duration::from_secs(60);

/// Serves `files` (path → bytes), downloads them all with `extra` flags under the caps, and
/// returns the rows by URL path, asserting exactly one row per URL and a bounded run.
fn download(files: &[(&str, Vec<u8>)], extra: &[&str]) -> HashMap<String, MetadataRow> {
    let routes = files
        .iter()
        .map(|(path, body)| {
            (
                path.to_string(),
                Route::ok("application/octet-stream", body.clone()),
            )
        })
        .collect();
    let server = LoopbackServer::start(routes);
    let dir = scratch();
    let list = dir.path().join("urls.txt");
    let urls: Vec<String> = files.iter().map(|(path, _)| server.url(path)).collect();
    std::fs::write(&list, urls.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let mut args = vec![
        "download",
        list.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--allow-net",
        "127.0.0.1/32",
        "--timeout",
        "10",
    ];
    args.extend_from_slice(extra);
    let run = wit_capped(&args, ADDRESS_SPACE, CPU_SECONDS);
    eprintln!(
        "wit download {extra:?}: peak RSS {} MB, {:?}",
        run.peak_rss_bytes >> 20,
        run.wall
    );
    run.assert_bounded(MAX_RSS, MAX_WALL);
    let rows = status_rows(&out);
    assert_eq!(rows.len(), files.len(), "one row per URL: {rows:#?}");
    let by_path: HashMap<String, MetadataRow> = rows
        .into_iter()
        .map(|r| (r.url.trim_start_matches(&server.base).to_string(), r))
        .collect();
    assert_eq!(by_path.len(), files.len(), "each URL exactly once");
    by_path
}

fn assert_success(row: &MetadataRow, size: (u32, u32), original_format: &str) {
    assert_eq!(
        row.status,
        Status::Success,
        "{}: {:?}",
        row.url,
        row.error_message
    );
    assert_eq!(
        (row.width, row.height),
        (Some(size.0), Some(size.1)),
        "{}",
        row.url
    );
    assert_eq!(
        row.original_format.as_deref(),
        Some(original_format),
        "{}",
        row.url
    );
}

fn assert_failed(row: &MetadataRow, needle: &str) {
    assert_eq!(row.status, Status::FailedToResize, "{}", row.url);
    let msg = row.error_message.as_deref().unwrap_or_default();
    assert!(
        msg.contains(needle),
        "{}: {msg:?} lacks {needle:?}",
        row.url
    );
}

fn encoded(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// `png` with a chunk inserted right after IHDR.
fn with_chunk(png: &[u8], kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    let mut out = png[..33].to_vec();
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(kind);
    out.extend(data);
    out.extend(crc.sum().to_be_bytes());
    out.extend(&png[33..]);
    out
}

/// EXIF (little-endian TIFF) whose IFD0 holds `entries` ASCII entries — Make, Model, Copyright
/// and an unknown tag in turn — that all point at one block of `block` zero bytes.
fn amplified_exif(entries: u16, block: u32) -> Vec<u8> {
    let tags: [u16; 4] = [0x010F, 0x0110, 0x8298, 0xC000];
    let block_at = 8 + 2 + 12 * u32::from(entries) + 4;
    let mut tiff = b"II*\0".to_vec();
    tiff.extend(8u32.to_le_bytes());
    tiff.extend(entries.to_le_bytes());
    for i in 0..entries {
        tiff.extend(tags[usize::from(i) % tags.len()].to_le_bytes());
        tiff.extend(2u16.to_le_bytes());
        tiff.extend(block.to_le_bytes());
        tiff.extend(block_at.to_le_bytes());
    }
    tiff.extend(0u32.to_le_bytes());
    tiff.resize(tiff.len() + block as usize, 0);
    tiff
}

fn small_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
    encoded(img.into(), image::ImageFormat::Png)
}

#[test]
fn amplifying_exif_costs_one_small_exif_column() {
    let png = small_png();
    // 44 KB of EXIF took 1.65 GB and wrote a 240 MB string; 1 MB aborted. Here: the 44 KB
    // shape, and 10.8 MB (65,535 entries at a 10 MB block: every entry rendered is 690 TB).
    let small = with_chunk(&png, b"eXIf", &amplified_exif(3_000, 8 << 10));
    let large = with_chunk(&png, b"eXIf", &amplified_exif(u16::MAX, 10 << 20));
    assert!(large.len() > 10 << 20);
    let rows = download(&[("/exif-44k.png", small), ("/exif-10m.png", large)], &[]);
    for row in rows.values() {
        assert_success(row, (256, 256), "png");
        let exif = row.exif.as_deref().unwrap_or("{}");
        assert!(
            exif.len() <= 4 << 10,
            "{}: {} bytes of exif",
            row.url,
            exif.len()
        );
    }
    let exif = rows["/exif-44k.png"].exif.as_deref().unwrap();
    let exif: serde_json::Map<String, serde_json::Value> = serde_json::from_str(exif).unwrap();
    assert!(exif.contains_key("Image Make"), "{exif:?}");
}

/// A `w`×`h` gradient PNG: a million-pixel strip compresses to a few kilobytes.
fn strip(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
    });
    encoded(img.into(), image::ImageFormat::Png)
}

#[test]
fn strips_under_every_resize_mode_are_stored_or_refused_without_scaling_them_whole() {
    // Before the fix center_crop and keep_ratio scaled the strip whole: 256×256,000,000 RGB,
    // 196 GB (and a saturating cast on the way).
    let n = 1_000_000;
    let files = [("/tall.png", strip(1, n)), ("/wide.png", strip(n, 1))];
    // (mode, the stored sizes of the two strips, or the message naming the flag that refuses them)
    type Expected<'a> = (&'a str, Option<[(u32, u32); 2]>, &'a str);
    let modes: [Expected; 5] = [
        ("center_crop", Some([(256, 256), (256, 256)]), ""),
        ("border", Some([(256, 256), (256, 256)]), ""),
        ("keep_ratio_largest", Some([(1, 256), (256, 1)]), ""),
        ("keep_ratio", None, "--max-pixels"),
        ("no", None, "write PNG"),
    ];
    for (mode, sizes, needle) in modes {
        let rows = download(&files, &["--resize-mode", mode]);
        for (i, path) in ["/tall.png", "/wide.png"].into_iter().enumerate() {
            match sizes {
                Some(sizes) => assert_success(&rows[path], sizes[i], "png"),
                None => assert_failed(&rows[path], needle),
            }
        }
    }
}

/// A 2×2 BMP with 8-bit run-length encoding (a variant Pillow reads): palette red, green, blue,
/// white; bottom row (blue, white) first.
fn rle8_bmp() -> Vec<u8> {
    let palette: [u8; 16] = [0, 0, 255, 0, 0, 255, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0];
    let pixels: [u8; 14] = [1, 2, 1, 3, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1];
    let data_at = 14 + 40 + palette.len() as u32;
    let mut out = b"BM".to_vec();
    out.extend((data_at + pixels.len() as u32).to_le_bytes());
    out.extend([0; 4]);
    out.extend(data_at.to_le_bytes());
    out.extend(40u32.to_le_bytes());
    out.extend(2i32.to_le_bytes());
    out.extend(2i32.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(8u16.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    out.extend([0; 12]);
    out.extend(4u32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(palette);
    out.extend(pixels);
    out
}

#[test]
fn tiff_ico_cur_and_bmp_variants_are_stored_and_a_tiff_bomb_is_refused() {
    let photo =
        image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([x as u8 * 2, y as u8 * 3, 200]));
    let deep = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(96, 64, |x, y| {
        image::Rgb([x as u16 * 600, y as u16 * 900, 40_000])
    }));
    let tiff = encoded(photo.clone().into(), image::ImageFormat::Tiff);
    let tiff16 = encoded(deep, image::ImageFormat::Tiff);
    let icon = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(48, 48, |x, _| {
        image::Rgba([0, x as u8 * 5, 255, 255])
    }));
    let ico = encoded(icon, image::ImageFormat::Ico);
    let mut cur = ico.clone();
    cur[2] = 2;
    // A one-strip TIFF whose width, height and rows per strip say 60,000: 3.6 G pixels from
    // under a kilobyte.
    let tiny = image::RgbImage::from_pixel(16, 16, image::Rgb([9, 9, 9]));
    let mut bomb = encoded(tiny.into(), image::ImageFormat::Tiff);
    let ifd = u32::from_le_bytes(bomb[4..8].try_into().unwrap()) as usize;
    let entries = u16::from_le_bytes([bomb[ifd], bomb[ifd + 1]]) as usize;
    for i in 0..entries {
        let at = ifd + 2 + 12 * i;
        let tag = u16::from_le_bytes([bomb[at], bomb[at + 1]]);
        let typ = u16::from_le_bytes([bomb[at + 2], bomb[at + 3]]);
        if matches!(tag, 256 | 257 | 278) {
            let value = if typ == 3 {
                60_000u16.to_le_bytes().to_vec()
            } else {
                60_000u32.to_le_bytes().to_vec()
            };
            bomb[at + 8..at + 8 + value.len()].copy_from_slice(&value);
        }
    }
    let rows = download(
        &[
            ("/photo.tiff", tiff),
            ("/deep.tiff", tiff16),
            ("/favicon.ico", ico),
            ("/pointer.cur", cur),
            ("/rle8.bmp", rle8_bmp()),
            ("/bomb.tiff", bomb),
        ],
        &["--resize-mode", "keep_ratio_largest", "--image-size", "48"],
    );
    assert_success(&rows["/photo.tiff"], (48, 32), "tiff");
    assert_success(&rows["/deep.tiff"], (48, 32), "tiff");
    assert_success(&rows["/favicon.ico"], (48, 48), "ico");
    assert_success(&rows["/pointer.cur"], (48, 48), "ico");
    assert_success(&rows["/rle8.bmp"], (48, 48), "bmp");
    assert_failed(&rows["/bomb.tiff"], "--max-pixels");
}
