//! Unit tests of [`super::process`] and its stages, and the test images other modules reuse.

use std::io::Cursor;

use super::*;

/// A deterministic picture with structure at several scales: a seeded background gradient
/// and a few coloured rectangles, so different seeds give clearly different images.
pub(crate) fn picture(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let base = [next() % 256, next() % 256, next() % 256];
    let mut img = RgbImage::from_fn(w, h, |x, y| {
        let t = (x * 255 / w.max(1)) as i32 - (y * 255 / h.max(1)) as i32;
        image::Rgb(base.map(|b| (b as i32 + t / 2).clamp(0, 255) as u8))
    });
    for _ in 0..6 {
        let (rw, rh) = (
            w / 8 + next() % (w / 3).max(1),
            h / 8 + next() % (h / 3).max(1),
        );
        let (x0, y0) = (
            next() % w.saturating_sub(rw).max(1),
            next() % h.saturating_sub(rh).max(1),
        );
        let colour = image::Rgb([next() as u8, next() as u8, next() as u8]);
        for y in y0..(y0 + rh).min(h) {
            for x in x0..(x0 + rw).min(w) {
                img.put_pixel(x, y, colour);
            }
        }
    }
    img
}

pub(crate) fn encoded(img: &DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode test image");
    out.into_inner()
}

#[test]
fn downscaling_averages_by_default_and_each_direction_has_its_own_filter() {
    // A one-pixel checkerboard: averaging turns it grey, the nearest pixel keeps it pure.
    let board = RgbImage::from_fn(200, 200, |x, y| {
        image::Rgb([if (x + y) % 2 == 0 { 0 } else { 255 }; 3])
    });
    let board = encoded(&board.into(), image::ImageFormat::Png);
    let lossless = |o: ImageOptions| ImageOptions {
        encode_format: ImageFormat::Png,
        ..o
    };
    let down = opts(ResizeMode::KeepRatio, 50);
    let area = decode_output(&process(&board, &lossless(down.clone())).unwrap());
    assert!(area.pixels().all(|p| (120..=135).contains(&p.0[0])));
    let nearest = ImageOptions {
        downscale_interpolation: Interpolation::Nearest,
        ..lossless(down)
    };
    let nearest = decode_output(&process(&board, &nearest).unwrap());
    assert!(nearest.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    // Averaging never leaves the range of the source pixels; Lanczos rings at a step edge.
    let step = RgbImage::from_fn(203, 100, |x, _| {
        image::Rgb([if x < 101 { 64 } else { 192 }; 3])
    });
    let step = encoded(&step.into(), image::ImageFormat::Png);
    let range = |o: &ImageOptions| {
        let out = decode_output(&process(&step, o).unwrap());
        let v: Vec<u8> = out.pixels().map(|p| p.0[0]).collect();
        (*v.iter().min().unwrap(), *v.iter().max().unwrap())
    };
    let down = lossless(opts(ResizeMode::KeepRatio, 25));
    assert_eq!(range(&down), (64, 192));
    let lanczos = ImageOptions {
        downscale_interpolation: Interpolation::Lanczos,
        ..down
    };
    let (low, high) = range(&lanczos);
    assert!(low < 64 || high > 192, "Lanczos overshoots at the edge");
    // Scaling up takes the upscale filter: nearest keeps exactly the two source colours.
    let halves = encoded(&halves(20, 10), image::ImageFormat::Png);
    let up = ImageOptions {
        upscale_interpolation: Interpolation::Nearest,
        ..lossless(opts(ResizeMode::KeepRatio, 40))
    };
    let up = decode_output(&process(&halves, &up).unwrap());
    assert_eq!(up.dimensions(), (80, 40));
    let colours: std::collections::BTreeSet<[u8; 3]> = up.pixels().map(|p| p.0).collect();
    assert_eq!(colours.len(), 2, "nearest upscaling invents no colours");
}

fn opts(mode: ResizeMode, size: u32) -> ImageOptions {
    ImageOptions {
        image_size: size,
        resize_mode: mode,
        ..ImageOptions::default()
    }
}

/// [`geometry`] for sizes every mode accepts.
fn geom(w: u32, h: u32, o: &ImageOptions) -> Option<Geometry> {
    geometry(w, h, o).expect("an output within the limits")
}

fn decode_output(p: &Processed) -> RgbImage {
    image::load_from_memory(&p.image.bytes)
        .expect("output decodes")
        .into_rgb8()
}

/// A two-colour image: left half red, right half blue.
fn halves(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, _| {
        if x < w / 2 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    }))
}

/// Inserts an APP1 EXIF segment with the given orientation right after the SOI marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend(8u32.to_le_bytes());
    tiff.extend(1u16.to_le_bytes());
    tiff.extend(0x0112u16.to_le_bytes());
    tiff.extend(3u16.to_le_bytes());
    tiff.extend(1u32.to_le_bytes());
    tiff.extend(orientation.to_le_bytes());
    tiff.extend([0, 0]);
    tiff.extend(0u32.to_le_bytes());
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend(&jpeg[2..]);
    out
}

fn is_red(p: &image::Rgb<u8>) -> bool {
    p[0] > 180 && p[2] < 80
}

fn is_blue(p: &image::Rgb<u8>) -> bool {
    p[2] > 180 && p[0] < 80
}

#[test]
fn geometry_follows_img2dataset_for_each_mode() {
    assert_eq!(geom(400, 200, &opts(ResizeMode::No, 100)), None);
    let g = geom(400, 200, &opts(ResizeMode::KeepRatio, 100)).unwrap();
    assert_eq!((g.resize_to, g.crop, g.pad), ((200, 100), None, None));
    let g = geom(400, 200, &opts(ResizeMode::KeepRatioLargest, 100)).unwrap();
    assert_eq!((g.resize_to, g.output_size()), ((100, 50), (100, 50)));
    let g = geom(400, 200, &opts(ResizeMode::CenterCrop, 100)).unwrap();
    // The centred square of the 200×100 scaled image, in source pixels.
    assert_eq!(
        (g.resize_to, g.crop),
        ((100, 100), Some((100.0, 0.0, 200.0, 200.0)))
    );
    let g = geom(200, 400, &opts(ResizeMode::Border, 100)).unwrap();
    assert_eq!((g.resize_to, g.pad), ((50, 100), Some((100, 25, 0))));
    let g = geom(101, 50, &opts(ResizeMode::Border, 100)).unwrap();
    assert_eq!((g.resize_to, g.pad), ((100, 50), Some((100, 0, 25))));
    // Upscaling happens unless --resize-only-if-bigger.
    let g = geom(80, 40, &opts(ResizeMode::Border, 100)).unwrap();
    assert_eq!((g.resize_to, g.output_size()), ((100, 50), (100, 100)));
    let only_bigger = ImageOptions {
        resize_only_if_bigger: true,
        ..opts(ResizeMode::Border, 100)
    };
    assert_eq!(geom(80, 40, &only_bigger), None);
    let only_bigger_crop = ImageOptions {
        resize_mode: ResizeMode::CenterCrop,
        ..only_bigger
    };
    assert_eq!(geom(300, 90, &only_bigger_crop), None);
    // Already the target: nothing to do.
    assert_eq!(geom(100, 100, &opts(ResizeMode::Border, 100)), None);
}

#[test]
fn border_pads_with_white_and_center_crop_keeps_the_middle() {
    let png = encoded(&halves(400, 200), image::ImageFormat::Png);
    let p = process(&png, &opts(ResizeMode::Border, 100)).unwrap();
    assert_eq!((p.image.width, p.image.height), (100, 100));
    assert_eq!((p.original_width, p.original_height), (400, 200));
    assert_eq!(p.image.format, ImageFormat::Jpg);
    assert_eq!(
        ImageFormat::from_magic(&p.image.bytes),
        Some(ImageFormat::Jpg)
    );
    let out = decode_output(&p);
    assert!(
        out.get_pixel(50, 5).0.iter().all(|&c| c > 240),
        "top band is white padding"
    );
    assert!(is_red(out.get_pixel(10, 50)) && is_blue(out.get_pixel(90, 50)));

    let p = process(&png, &opts(ResizeMode::CenterCrop, 100)).unwrap();
    let out = decode_output(&p);
    assert_eq!(out.dimensions(), (100, 100));
    assert!(is_red(out.get_pixel(20, 50)) && is_blue(out.get_pixel(80, 50)));

    let p = process(&png, &opts(ResizeMode::KeepRatio, 100)).unwrap();
    assert_eq!((p.image.width, p.image.height), (200, 100));
    let p = process(&png, &opts(ResizeMode::No, 100)).unwrap();
    assert_eq!((p.image.width, p.image.height), (400, 200));
}

#[test]
fn exif_orientation_is_applied_on_full_and_dct_scaled_decodes() {
    // Orientation 6: the stored image must be turned 90° clockwise to display, so the
    // stored left (red) ends up on top.
    for (w, h, mode, size) in [
        (300, 100, ResizeMode::No, 256),
        (1600, 400, ResizeMode::KeepRatioLargest, 160),
    ] {
        let jpeg = encoded(&halves(w, h), image::ImageFormat::Jpeg);
        let rotated = with_exif_orientation(&jpeg, 6);
        let o = ImageOptions {
            encode_format: ImageFormat::Png,
            ..opts(mode, size)
        };
        let p = process(&rotated, &o).unwrap();
        assert_eq!((p.original_width, p.original_height), (h, w));
        let out = decode_output(&p);
        let (ow, oh) = out.dimensions();
        assert!(oh > ow, "portrait after rotation: {ow}x{oh}");
        assert!(is_red(out.get_pixel(ow / 2, oh / 8)), "top is red");
        assert!(is_blue(out.get_pixel(ow / 2, oh * 7 / 8)), "bottom is blue");
        let exif: serde_json::Value = serde_json::from_str(p.exif.as_deref().unwrap()).unwrap();
        assert!(
            exif.get("Image Orientation").is_some(),
            "exif column: {exif}"
        );
    }
}

#[test]
fn dct_scaled_decode_matches_full_decode() {
    let jpeg = encoded(
        &DynamicImage::ImageRgb8(picture(1024, 768, 3)),
        image::ImageFormat::Jpeg,
    );
    let o = opts(ResizeMode::KeepRatioLargest, 128);
    let g = geom(1024, 768, &o).unwrap();
    let scaled = decode_jpeg(&jpeg, Orientation::NoTransforms, Some(g), 1 << 30).unwrap();
    // A rotated photo is scaled in its stored axes: 1600×400 shown as 400×1600, bound for
    // 40×160, shrinks by 8 (to 200×50), not by 2 as the displayed axes would allow.
    let wide = encoded(&halves(1600, 400), image::ImageFormat::Jpeg);
    let tall = geom(400, 1600, &opts(ResizeMode::KeepRatioLargest, 160)).unwrap();
    let stored = decode_jpeg(&wide, Orientation::Rotate90, Some(tall), 1 << 30).unwrap();
    assert_eq!(stored.dimensions(), (200, 50));
    assert_eq!(
        (scaled.width(), scaled.height()),
        (128, 96),
        "1/8 scale covers 128x96"
    );
    let p = process(&jpeg, &o).unwrap();
    assert_eq!((p.image.width, p.image.height), (128, 96));
    let full = image::load_from_memory(&jpeg).unwrap().into_rgb8();
    let reference = image::imageops::resize(&full, 128, 96, image::imageops::FilterType::Lanczos3);
    let out = decode_output(&p);
    let diff: f64 = out
        .as_raw()
        .iter()
        .zip(reference.as_raw())
        .map(|(a, b)| f64::from((i16::from(*a) - i16::from(*b)).abs()))
        .sum::<f64>()
        / out.as_raw().len() as f64;
    assert!(diff < 6.0, "mean abs difference {diff}");
}

#[test]
fn decompression_bomb_is_refused_from_the_header() {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let chunk = |png: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        png.extend(kind);
        png.extend(data);
        png.extend(crc.sum().to_be_bytes());
    };
    let mut ihdr = 50_000u32.to_be_bytes().to_vec();
    ihdr.extend(50_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    let err = process(&png, &ImageOptions::default()).unwrap_err();
    assert_eq!(err.status(), Status::FailedToResize);
    assert!(
        err.to_string().contains("more pixels than --max-pixels"),
        "{err}"
    );
}

#[test]
fn corrupt_and_truncated_bytes_fail_to_resize() {
    let png = encoded(
        &DynamicImage::ImageRgb8(picture(200, 150, 1)),
        image::ImageFormat::Png,
    );
    let jpeg = encoded(
        &DynamicImage::ImageRgb8(picture(200, 150, 1)),
        image::ImageFormat::Jpeg,
    );
    let mut garbage = jpeg[..4].to_vec();
    garbage.extend([0x13; 500]);
    for bytes in [
        &png[..png.len() / 2],
        &jpeg[..40],
        &garbage[..],
        b"<html>not an image</html>",
    ] {
        let err = process(bytes, &ImageOptions::default()).unwrap_err();
        assert_eq!(err.status(), Status::FailedToResize, "{err}");
    }
    let err = process(b"<html></html>", &ImageOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a JPEG, PNG, WebP, GIF, BMP, TIFF or ICO/CUR"),
        "{err}"
    );
}

#[test]
fn size_filters_drop_with_filtered_status() {
    let png = encoded(
        &DynamicImage::ImageRgb8(picture(300, 100, 2)),
        image::ImageFormat::Png,
    );
    let cases = [
        (
            ImageOptions {
                min_image_size: 101,
                ..ImageOptions::default()
            },
            "too small",
        ),
        (
            ImageOptions {
                max_image_area: Some(29_999),
                ..ImageOptions::default()
            },
            "area too large",
        ),
        (
            ImageOptions {
                max_aspect_ratio: Some(2.5),
                ..ImageOptions::default()
            },
            "aspect ratio",
        ),
        (
            ImageOptions {
                min_bytes: png.len() as u64 + 1,
                ..ImageOptions::default()
            },
            "--min-image-bytes",
        ),
    ];
    for (o, needle) in cases {
        let err = process(&png, &o).unwrap_err();
        assert_eq!(err.status(), Status::Filtered);
        assert!(err.to_string().contains(needle), "{err}");
    }
    let pass = ImageOptions {
        min_image_size: 100,
        max_image_area: Some(30_000),
        max_aspect_ratio: Some(3.0),
        min_bytes: png.len() as u64,
        ..ImageOptions::default()
    };
    assert!(process(&png, &pass).is_ok());
}

#[test]
fn skip_reencode_keeps_unchanged_bytes_with_their_own_extension() {
    let png = encoded(
        &DynamicImage::ImageRgb8(picture(256, 256, 4)),
        image::ImageFormat::Png,
    );
    let keep = ImageOptions {
        skip_reencode: true,
        ..ImageOptions::default()
    };
    let p = process(&png, &keep).unwrap();
    assert_eq!(p.image.bytes, png);
    assert_eq!(p.image.format, ImageFormat::Png);
    // A resize changes pixels, so the bytes are re-encoded in the requested format.
    let big = encoded(
        &DynamicImage::ImageRgb8(picture(300, 300, 4)),
        image::ImageFormat::Png,
    );
    let p = process(&big, &keep).unwrap();
    assert_eq!(p.image.format, ImageFormat::Jpg);
    assert_eq!(
        ImageFormat::from_magic(&p.image.bytes),
        Some(ImageFormat::Jpg)
    );
    // Without the flag, an unchanged PNG is still encoded as JPEG.
    let p = process(&png, &ImageOptions::default()).unwrap();
    assert_eq!(
        ImageFormat::from_magic(&p.image.bytes),
        Some(ImageFormat::Jpg)
    );
}

#[test]
fn decodes_gif_first_frame_bmp_webp_and_flattens_alpha_on_white() {
    use image::codecs::gif::GifEncoder;
    let red = image::RgbaImage::from_pixel(40, 30, image::Rgba([255, 0, 0, 255]));
    let blue = image::RgbaImage::from_pixel(40, 30, image::Rgba([0, 0, 255, 255]));
    let mut gif = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut gif);
        enc.encode_frames([image::Frame::new(red), image::Frame::new(blue)])
            .unwrap();
    }
    let o = ImageOptions {
        encode_format: ImageFormat::Png,
        ..opts(ResizeMode::No, 256)
    };
    let p = process(&gif, &o).unwrap();
    assert_eq!(p.original_format, "gif");
    assert!(is_red(decode_output(&p).get_pixel(20, 15)));

    let pic = DynamicImage::ImageRgb8(picture(64, 48, 5));
    for (format, name) in [
        (image::ImageFormat::Bmp, "bmp"),
        (image::ImageFormat::WebP, "webp"),
    ] {
        let p = process(&encoded(&pic, format), &o).unwrap();
        assert_eq!(p.original_format, name);
        assert_eq!(
            decode_output(&p).as_raw(),
            pic.to_rgb8().as_raw(),
            "{name} lossless round trip"
        );
    }

    let clear = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
        32,
        32,
        image::Rgba([0, 0, 0, 0]),
    ));
    let p = process(&encoded(&clear, image::ImageFormat::Png), &o).unwrap();
    assert!(decode_output(&p).pixels().all(|px| px.0 == [255, 255, 255]));
}

#[test]
fn encodes_png_and_lossless_webp() {
    let pic = DynamicImage::ImageRgb8(picture(64, 64, 6));
    let png = encoded(&pic, image::ImageFormat::Png);
    for format in [ImageFormat::Png, ImageFormat::Webp] {
        let o = ImageOptions {
            encode_format: format,
            ..opts(ResizeMode::No, 64)
        };
        let p = process(&png, &o).unwrap();
        assert_eq!(ImageFormat::from_magic(&p.image.bytes), Some(format));
        assert_eq!(decode_output(&p).as_raw(), pic.to_rgb8().as_raw());
    }
}

#[test]
fn an_image_too_wide_for_jpeg_fails_with_what_to_do() {
    let wide = encoded(
        &DynamicImage::ImageRgb8(picture(70_000, 2, 7)),
        image::ImageFormat::Png,
    );
    let err = process(&wide, &opts(ResizeMode::No, 256)).unwrap_err();
    assert_eq!(err.status(), Status::FailedToResize);
    assert!(
        err.to_string().contains("resize it first or write PNG"),
        "{err}"
    );
}
