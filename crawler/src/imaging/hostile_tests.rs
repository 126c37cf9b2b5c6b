//! Unit tests of the per-item budgets (EXIF caps, geometry computed before allocating) and of
//! the formats beyond JPEG/PNG/WebP/GIF (TIFF, ICO/CUR, BMP variants), on inputs built here.

use super::metadata::{exif_json, write_tiff, Entry};
use super::tests::{encoded, picture};
use super::*;

fn opts(mode: ResizeMode, size: u32) -> ImageOptions {
    ImageOptions {
        image_size: size,
        resize_mode: mode,
        encode_format: ImageFormat::Png,
        ..ImageOptions::default()
    }
}

fn decode_output(p: &Processed) -> RgbImage {
    image::load_from_memory(&p.image.bytes)
        .expect("output decodes")
        .into_rgb8()
}

fn max_abs_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// A `w`×`h` gradient PNG (a long strip compresses to a few kilobytes).
fn strip_png(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    encoded(&DynamicImage::ImageRgb8(img), image::ImageFormat::Png)
}

#[test]
fn center_crop_resamples_only_the_square_as_scaling_the_whole_then_cutting_would() {
    let pic = picture(400, 200, 8);
    let png = encoded(
        &DynamicImage::ImageRgb8(pic.clone()),
        image::ImageFormat::Png,
    );
    for (size, filter) in [(100, Interpolation::Area), (500, Interpolation::Lanczos)] {
        let out = decode_output(&process(&png, &opts(ResizeMode::CenterCrop, size)).unwrap());
        // img2dataset's order: the whole image scaled, then the centred square cut.
        let whole = resize_rgb(&pic, None, size * 2, size, filter.algorithm()).unwrap();
        let want = image::imageops::crop_imm(&whole, size / 2, 0, size, size).to_image();
        let diff = max_abs_diff(&out, &want);
        assert!(diff <= 1, "size {size}: max difference {diff}");
    }
}

#[test]
fn strips_are_never_scaled_whole_and_oversized_outputs_are_refused_before_decoding() {
    // img2dataset's arithmetic scales a 1×200,000 strip to 256×51,200,000 before cutting the
    // square: 39 GB of RGB.
    let n = 200_000;
    let png = strip_png(1, n);
    for (w, h) in [(1, n), (n, 1)] {
        let g = geometry(w, h, &opts(ResizeMode::CenterCrop, 256))
            .unwrap()
            .unwrap();
        assert_eq!(g.output_size(), (256, 256));
        let (_, _, cw, ch) = g.crop.unwrap();
        assert!(
            cw <= 1.0 + 1e-9 && ch <= 1.0 + 1e-9,
            "{cw}x{ch} source pixels"
        );
        let g = geometry(w, h, &opts(ResizeMode::KeepRatioLargest, 256))
            .unwrap()
            .unwrap();
        assert_eq!(g.output_size(), if w == 1 { (1, 256) } else { (256, 1) });
        let g = geometry(w, h, &opts(ResizeMode::Border, 256))
            .unwrap()
            .unwrap();
        assert_eq!(g.output_size(), (256, 256));
        let err = geometry(w, h, &opts(ResizeMode::KeepRatio, 256)).unwrap_err();
        assert_eq!(err.status(), Status::FailedToResize);
        let msg = err.to_string();
        assert!(
            msg.contains("--max-pixels") && msg.contains("center_crop"),
            "{msg}"
        );
    }
    // The extremes of u32 neither overflow nor panic.
    assert!(geometry(1, u32::MAX, &opts(ResizeMode::KeepRatio, 256)).is_err());
    assert!(geometry(u32::MAX, 1, &opts(ResizeMode::CenterCrop, 256)).is_ok());
    // A huge --image-size is refused by arithmetic, not by the allocator.
    let err = geometry(100, 100, &opts(ResizeMode::Border, 100_000)).unwrap_err();
    assert!(err.to_string().contains("--max-pixels"), "{err}");
    // JPEG's side limit is known before decoding; PNG has none.
    let jpeg = ImageOptions {
        encode_format: ImageFormat::Jpg,
        ..opts(ResizeMode::KeepRatio, 256)
    };
    let err = geometry(10, 3_000, &jpeg).unwrap_err();
    assert!(err.to_string().contains("--encode-format png"), "{err}");
    assert!(geometry(10, 3_000, &opts(ResizeMode::KeepRatio, 256)).is_ok());

    // End to end on the 1×200,000 strip: each mode stores what it says, or refuses.
    for (mode, size) in [
        (ResizeMode::CenterCrop, Some((256, 256))),
        (ResizeMode::KeepRatioLargest, Some((1, 256))),
        (ResizeMode::Border, Some((256, 256))),
        (ResizeMode::KeepRatio, None),
    ] {
        let got = process(&png, &opts(mode, 256));
        match size {
            Some(size) => {
                let p = got.unwrap();
                assert_eq!((p.image.width, p.image.height), size, "{mode:?}");
                assert_eq!((p.original_width, p.original_height), (1, n));
            }
            None => assert_eq!(got.unwrap_err().status(), Status::FailedToResize),
        }
    }
}

/// A little-endian TIFF whose IFD0 has `entries` ASCII entries — allowed tags and unknown ones
/// in turn — that all point at one block of `block` zero bytes.
fn amplified_exif(entries: u16, block: u32) -> Vec<u8> {
    let tags: [u16; 6] = [0x010F, 0x0110, 0x8298, 0x013B, 0x0131, 0xC000];
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

fn exif_map(json: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(json).expect("exif is a JSON object")
}

#[test]
fn exif_keeps_a_few_allowed_tags_within_its_caps_whatever_the_entries_point_at() {
    // 5,000 entries at one 40 KB block of zeros: rendering every entry is 200 MB of text.
    // 65,535 entries at 1 MB: the IFD alone is past MAX_EXIF_BYTES.
    for (entries, block) in [(5_000, 40 << 10), (65_535, 1 << 20)] {
        let raw = amplified_exif(entries, block);
        let started = std::time::Instant::now();
        let json = exif_json(&raw).unwrap_or_default();
        assert!(started.elapsed().as_secs() < 2, "{:?}", started.elapsed());
        assert!(json.len() <= MAX_EXIF_JSON_BYTES, "{} bytes", json.len());
        for (key, value) in exif_map(&json) {
            assert!(key.starts_with("Image "), "{key}");
            assert!(value.as_str().unwrap().chars().count() <= MAX_EXIF_VALUE_CHARS);
        }
    }
    // A long value is cut, not dropped; a maker note is left out.
    let copyright = Entry {
        tag: 0x8298,
        typ: 2,
        count: 2_000,
        value: vec![b'c'; 2_000],
    };
    let entry = |tag, typ, value: &[u8]| Entry {
        tag,
        typ,
        count: (value.len() / if typ == 5 { 8 } else { 1 }) as u32,
        value: value.to_vec(),
    };
    let rational = |n: u32, d: u32| [n.to_le_bytes(), d.to_le_bytes()].concat();
    let raw = write_tiff(
        true,
        vec![entry(0x010F, 2, b"Canon\0"), copyright],
        vec![
            entry(0x829A, 5, &rational(1, 100)),
            entry(0x927C, 7, &[7; 600]),
        ],
        vec![entry(0x0001, 2, b"N\0")],
    );
    let with_prefix = [b"Exif\0\0".as_slice(), &raw].concat();
    let map = exif_map(&exif_json(&with_prefix).unwrap());
    assert!(
        map["Image Make"].as_str().unwrap().contains("Canon"),
        "{map:?}"
    );
    assert!(
        map["EXIF ExposureTime"].as_str().unwrap().contains("1/100"),
        "{map:?}"
    );
    assert!(map.contains_key("GPS GPSLatitudeRef"), "{map:?}");
    let cut = map["Image Copyright"].as_str().unwrap();
    assert!(cut.contains("ccc") && cut.chars().count() <= MAX_EXIF_VALUE_CHARS);
    assert!(!map.keys().any(|k| k.contains("MakerNote")), "{map:?}");
}

/// `png` with a chunk of `kind` inserted right after IHDR.
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

#[test]
fn a_png_with_amplifying_exif_is_stored_with_a_small_exif() {
    let png = encoded(
        &DynamicImage::ImageRgb8(picture(64, 48, 9)),
        image::ImageFormat::Png,
    );
    let hostile = with_chunk(&png, b"eXIf", &amplified_exif(5_000, 40 << 10));
    let p = process(&hostile, &opts(ResizeMode::No, 64)).unwrap();
    let exif = p.exif.expect("the allowed tags survive");
    assert!(exif.len() <= MAX_EXIF_JSON_BYTES, "{}", exif.len());
}

/// One TIFF page: RGB `pixels` stored with `bits` per sample, chunky or planar, optionally
/// deflated.
struct Page<'a> {
    pixels: &'a RgbImage,
    bits: u16,
    planar: bool,
    deflate: bool,
}

/// A little-endian multi-page TIFF of `pages`, one strip per plane, built by hand so every
/// layout is covered (image's encoder writes only chunky, uncompressed or its own choices).
fn tiff_file(pages: &[Page]) -> Vec<u8> {
    let mut out = b"II*\0".to_vec();
    out.extend(0u32.to_le_bytes());
    let mut next_pointer_at = 4;
    for page in pages {
        let (w, h) = page.pixels.dimensions();
        let sample = |v: u8| -> Vec<u8> {
            if page.bits == 16 {
                (u16::from(v) * 257).to_le_bytes().to_vec()
            } else {
                vec![v]
            }
        };
        let raw = page.pixels.as_raw();
        let planes: Vec<Vec<u8>> = if page.planar {
            (0..3)
                .map(|c| {
                    raw.iter()
                        .skip(c)
                        .step_by(3)
                        .flat_map(|&v| sample(v))
                        .collect()
                })
                .collect()
        } else {
            vec![raw.iter().flat_map(|&v| sample(v)).collect()]
        };
        let mut offsets = Vec::new();
        let mut counts = Vec::new();
        for plane in planes {
            let bytes = if page.deflate {
                use std::io::Write;
                let mut z =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(&plane).unwrap();
                z.finish().unwrap()
            } else {
                plane
            };
            offsets.push(out.len() as u32);
            counts.push(bytes.len() as u32);
            out.extend(bytes);
        }
        if out.len() % 2 == 1 {
            out.push(0);
        }
        let array_at = out.len() as u32;
        // BitsPerSample (3 shorts), StripOffsets and StripByteCounts (3 longs each when planar).
        let bits_at = array_at;
        out.extend([page.bits; 3].iter().flat_map(|b| b.to_le_bytes()));
        let offsets_at = out.len() as u32;
        out.extend(offsets.iter().flat_map(|o| o.to_le_bytes()));
        let counts_at = out.len() as u32;
        out.extend(counts.iter().flat_map(|c| c.to_le_bytes()));
        let ifd_at = out.len() as u32;
        out.splice(next_pointer_at..next_pointer_at + 4, ifd_at.to_le_bytes());
        let strips = offsets.len() as u32;
        let long_or_at = |values: &[u32], at: u32| if values.len() == 1 { values[0] } else { at };
        let entries: [(u16, u16, u32, u32); 10] = [
            (256, 4, 1, w),
            (257, 4, 1, h),
            (258, 3, 3, bits_at),
            (259, 3, 1, if page.deflate { 8 } else { 1 }),
            (262, 3, 1, 2),
            (273, 4, strips, long_or_at(&offsets, offsets_at)),
            (277, 3, 1, 3),
            (278, 4, 1, h),
            (279, 4, strips, long_or_at(&counts, counts_at)),
            (284, 3, 1, if page.planar { 2 } else { 1 }),
        ];
        out.extend((entries.len() as u16).to_le_bytes());
        for (tag, typ, count, value) in entries {
            out.extend(tag.to_le_bytes());
            out.extend(typ.to_le_bytes());
            out.extend(count.to_le_bytes());
            if typ == 3 && count == 1 {
                out.extend((value as u16).to_le_bytes());
                out.extend([0, 0]);
            } else {
                out.extend(value.to_le_bytes());
            }
        }
        next_pointer_at = out.len();
        out.extend(0u32.to_le_bytes());
    }
    out
}

#[test]
fn tiff_pages_decode_first_page_in_every_common_layout() {
    let first = picture(48, 32, 10);
    let second = picture(48, 32, 11);
    for (bits, planar, deflate) in [
        (8, false, false),
        (16, false, false),
        (8, true, false),
        (8, false, true),
        (16, true, true),
    ] {
        let page = |pixels| Page {
            pixels,
            bits,
            planar,
            deflate,
        };
        let tiff = tiff_file(&[page(&first), page(&second)]);
        let what = format!("{bits}-bit planar={planar} deflate={deflate}");
        let p = process(&tiff, &opts(ResizeMode::No, 48)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(p.original_format, "tiff");
        assert_eq!(decode_output(&p), first, "{what}: the first page, exactly");
    }
    // A TIFF header claiming more pixels than --max-pixels is refused before any strip is read.
    let mut bomb = tiff_file(&[Page {
        pixels: &first,
        bits: 8,
        planar: false,
        deflate: true,
    }]);
    let ifd = u32::from_le_bytes(bomb[4..8].try_into().unwrap()) as usize;
    // Width, height and rows per strip (entries 0, 1 and 7), so the strip layout stays
    // consistent and only the pixel count is wrong.
    for (i, side) in [(0, 60_000u32), (1, 60_000), (7, 60_000)] {
        let at = ifd + 2 + 12 * i + 8;
        bomb[at..at + 4].copy_from_slice(&side.to_le_bytes());
    }
    let err = process(&bomb, &opts(ResizeMode::No, 48)).unwrap_err();
    assert!(err.to_string().contains("--max-pixels"), "{err}");
}

#[test]
fn icons_and_cursors_decode_their_largest_entry() {
    use image::codecs::ico::{IcoEncoder, IcoFrame};
    let small = image::RgbaImage::from_pixel(16, 16, image::Rgba([255, 0, 0, 255]));
    let large = image::RgbaImage::from_fn(48, 32, |x, _| {
        image::Rgba(if x < 24 {
            [0, 0, 255, 255]
        } else {
            [0, 255, 0, 255]
        })
    });
    let frame = |img: &image::RgbaImage| {
        IcoFrame::as_png(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgba8,
        )
        .unwrap()
    };
    let mut ico = Vec::new();
    IcoEncoder::new(&mut ico)
        .encode_images(&[frame(&small), frame(&large)])
        .unwrap();
    let mut cur = ico.clone();
    cur[2] = 2;
    for (bytes, what) in [(ico, "ico"), (cur, "cur")] {
        assert_eq!(
            SourceFormat::sniff(&bytes),
            Some(SourceFormat::Ico),
            "{what}"
        );
        let p =
            process(&bytes, &opts(ResizeMode::No, 48)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!((p.image.width, p.image.height), (48, 32), "{what}");
        assert_eq!(p.original_format, "ico");
        let out = decode_output(&p);
        assert_eq!(out.get_pixel(4, 4).0, [0, 0, 255], "{what}");
        assert_eq!(out.get_pixel(40, 4).0, [0, 255, 0], "{what}");
    }
    // Four zero-ish bytes alone are not an icon.
    assert_eq!(SourceFormat::sniff(&[0, 0, 1, 0, 0, 0]), None);
}

/// A BMP file: `header` is the DIB header from its size field on, `palette` follows it, then
/// `pixels` (rows as the header says).
fn bmp_file(header: &[u8], palette: &[u8], pixels: &[u8]) -> Vec<u8> {
    let data_at = 14 + header.len() + palette.len();
    let mut out = b"BM".to_vec();
    out.extend(((data_at + pixels.len()) as u32).to_le_bytes());
    out.extend([0; 4]);
    out.extend((data_at as u32).to_le_bytes());
    out.extend(header);
    out.extend(palette);
    out.extend(pixels);
    out
}

/// A BITMAPINFOHEADER (40 bytes) or, with `v5`, a BITMAPV5HEADER (124 bytes).
fn info_header(
    w: i32,
    h: i32,
    bpp: u16,
    compression: u32,
    masks: Option<[u32; 4]>,
    colours: u32,
) -> Vec<u8> {
    let size: u32 = if masks.is_some() { 124 } else { 40 };
    let mut out = size.to_le_bytes().to_vec();
    out.extend(w.to_le_bytes());
    out.extend(h.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(bpp.to_le_bytes());
    out.extend(compression.to_le_bytes());
    out.extend([0; 12]);
    out.extend(colours.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    if let Some(masks) = masks {
        out.extend(masks.iter().flat_map(|m| m.to_le_bytes()));
        out.extend(b"BGRs");
        out.resize(124, 0);
    }
    out
}

#[test]
fn bmp_variants_decode() {
    // 2×2: red, green on the top row; blue, white below.
    let want =
        RgbImage::from_raw(2, 2, vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]).unwrap();
    let bgr = |p: [u8; 3]| [p[2], p[1], p[0]];
    let (red, green, blue, white) = ([255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]);
    // 24-bit top-down (negative height): rows of 6 bytes padded to 8.
    let top_down: Vec<u8> = [[red, green], [blue, white]]
        .iter()
        .flat_map(|row| {
            row.iter()
                .flat_map(|&p| bgr(p))
                .chain([0, 0])
                .collect::<Vec<_>>()
        })
        .collect();
    // 16-bit 5-6-5 bit fields, bottom-up.
    let rgb565 = |p: [u8; 3]| {
        ((u16::from(p[0]) >> 3) << 11 | (u16::from(p[1]) >> 2) << 5 | u16::from(p[2]) >> 3)
            .to_le_bytes()
    };
    let bits565: Vec<u8> = [[blue, white], [red, green]]
        .iter()
        .flat_map(|row| row.iter().flat_map(|&p| rgb565(p)).collect::<Vec<_>>())
        .collect();
    // 32-bit BGRA with a V5 header and an alpha mask (opaque).
    let bgra: Vec<u8> = [[blue, white], [red, green]]
        .iter()
        .flat_map(|row| {
            row.iter()
                .flat_map(|&p| [p[2], p[1], p[0], 255])
                .collect::<Vec<_>>()
        })
        .collect();
    // 8-bit RLE, palette red, green, blue, white: bottom row (blue, white) first.
    let palette: Vec<u8> = [red, green, blue, white]
        .iter()
        .flat_map(|&p| [p[2], p[1], p[0], 0])
        .collect();
    let rle8 = [1, 2, 1, 3, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1];
    // OS/2 1.x core header (12 bytes), 24-bit bottom-up.
    let mut core = 12u32.to_le_bytes().to_vec();
    core.extend(2u16.to_le_bytes());
    core.extend(2u16.to_le_bytes());
    core.extend(1u16.to_le_bytes());
    core.extend(24u16.to_le_bytes());
    let bottom_up: Vec<u8> = [[blue, white], [red, green]]
        .iter()
        .flat_map(|row| {
            row.iter()
                .flat_map(|&p| bgr(p))
                .chain([0, 0])
                .collect::<Vec<_>>()
        })
        .collect();
    let masks565 = Some([0xF800, 0x07E0, 0x001F, 0]);
    let masks_argb = Some([0x00FF_0000, 0x0000_FF00, 0x0000_00FF, 0xFF00_0000]);
    for (what, file) in [
        (
            "top-down 24-bit",
            bmp_file(&info_header(2, -2, 24, 0, None, 0), &[], &top_down),
        ),
        (
            "5-6-5 bit fields",
            bmp_file(&info_header(2, 2, 16, 3, masks565, 0), &[], &bits565),
        ),
        (
            "V5 32-bit alpha",
            bmp_file(&info_header(2, 2, 32, 3, masks_argb, 0), &[], &bgra),
        ),
        (
            "RLE8",
            bmp_file(&info_header(2, 2, 8, 1, None, 4), &palette, &rle8),
        ),
        ("OS/2 core", bmp_file(&core, &[], &bottom_up)),
    ] {
        let p = process(&file, &opts(ResizeMode::No, 2)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(p.original_format, "bmp");
        assert_eq!(decode_output(&p), want, "{what}");
    }
}
