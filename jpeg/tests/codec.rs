//! wit-jpeg against independent codecs: its files read back through the `image` crate
//! (zune-jpeg), other encoders' files read through it, scaled decodes against box-downscaled
//! full decodes, and bad bytes turned into errors.

use wit_jpeg::{decode_rgb, encode_rgb, reduction, DecodeOptions, JpegError, Rgb};

/// Smooth gradients, a hard-edged disc and fine stripes: the content a photo's blocks hold.
fn scene(width: u32, height: u32) -> Vec<u8> {
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
            let disc = (fx - 0.6).powi(2) + (fy - 0.4).powi(2) < 0.04;
            let stripe = (x / 3) % 2 == 0 && fy > 0.8;
            let r = if disc { 230.0 } else { 40.0 + 180.0 * fx };
            let g = if stripe { 250.0 } else { 30.0 + 200.0 * fy };
            let b = 128.0 + 100.0 * ((fx * 9.0).sin() * (fy * 7.0).cos());
            pixels.extend([r as u8, g as u8, b as u8]);
        }
    }
    pixels
}

fn full_size() -> DecodeOptions {
    DecodeOptions {
        min_size: None,
        max_pixels: 1 << 30,
        max_scans: wit_jpeg::MAX_SCANS,
    }
}

/// Peak signal-to-noise ratio in dB between two equal-length byte images.
fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64.powi(2) / mse.max(1e-12)).log10()
}

#[test]
fn its_files_read_back_through_another_decoder_close_to_the_original() {
    let (w, h) = (203, 157);
    let original = scene(w, h);
    let bytes = encode_rgb(&original, w, h, 95).unwrap();
    let theirs = image::load_from_memory(&bytes).unwrap().into_rgb8();
    assert_eq!(theirs.dimensions(), (w, h));
    let quality = psnr(&original, theirs.as_raw());
    assert!(quality > 33.0, "PSNR {quality:.1} dB at q95");
    let ours = decode_rgb(&bytes, full_size(), Vec::new()).unwrap();
    assert!(
        psnr(&ours.pixels, theirs.as_raw()) > 45.0,
        "two decoders of one file disagree"
    );
}

#[test]
fn quality_trades_size_for_fidelity_and_chroma_is_subsampled() {
    let (w, h) = (160, 160);
    let original = scene(w, h);
    let low = encode_rgb(&original, w, h, 40).unwrap();
    let high = encode_rgb(&original, w, h, 95).unwrap();
    assert!(
        low.len() * 2 < high.len(),
        "{} vs {} bytes",
        low.len(),
        high.len()
    );
    let decoded = |b: &[u8]| decode_rgb(b, full_size(), Vec::new()).unwrap().pixels;
    assert!(psnr(&original, &decoded(&high)) > psnr(&original, &decoded(&low)) + 3.0);
    // A 4:2:0 file's start-of-frame gives luma 2×2 sampling (0x22) and chroma 1×1 (0x11).
    let sof = high
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("baseline SOF0");
    let components = &high[sof + 10..sof + 19];
    assert_eq!(
        [components[1], components[4], components[7]],
        [0x22, 0x11, 0x11]
    );
}

#[test]
fn other_encoders_files_decode_like_the_image_crate_decodes_them() {
    let (w, h) = (97, 61);
    let original = scene(w, h);
    let mut theirs = Vec::new();
    jpeg_encoder::Encoder::new(&mut theirs, 90)
        .encode(&original, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    let grey_src: Vec<u8> = original.chunks_exact(3).map(|p| p[1]).collect();
    let mut grey = Vec::new();
    jpeg_encoder::Encoder::new(&mut grey, 90)
        .encode(&grey_src, w as u16, h as u16, jpeg_encoder::ColorType::Luma)
        .unwrap();
    for (name, bytes) in [("ycbcr", theirs), ("grey", grey)] {
        let want = image::load_from_memory(&bytes).unwrap().into_rgb8();
        let got = decode_rgb(&bytes, full_size(), Vec::new()).unwrap();
        assert_eq!((got.width, got.height), want.dimensions(), "{name}");
        assert!(psnr(&got.pixels, want.as_raw()) > 40.0, "{name}");
        if name == "grey" {
            assert!(got
                .pixels
                .chunks_exact(3)
                .all(|p| p[0] == p[1] && p[1] == p[2]));
        }
    }
}

#[test]
fn a_reused_buffer_is_resized_to_the_new_image_whatever_it_held() {
    let (w, h) = (64, 48);
    let bytes = encode_rgb(&scene(w, h), w, h, 90).unwrap();
    let fresh = decode_rgb(&bytes, full_size(), Vec::new()).unwrap();
    for garbage in [vec![0xAB; 10], vec![0xCD; (w * h * 3 + 999) as usize]] {
        let reused = decode_rgb(&bytes, full_size(), garbage).unwrap();
        assert_eq!(reused, fresh);
    }
}

#[test]
fn scaled_decodes_keep_the_minimum_size_and_match_a_downscaled_full_decode() {
    let (w, h) = (801, 603);
    let bytes = encode_rgb(&scene(w, h), w, h, 92).unwrap();
    let full = decode_rgb(&bytes, full_size(), Vec::new()).unwrap();
    for (min, want_reduction) in [
        ((100, 75), 8),
        ((102, 60), 4),
        ((300, 300), 2),
        ((402, 10), 1),
    ] {
        let r = reduction(w, h, Some(min));
        assert_eq!(r, want_reduction, "{min:?}");
        let options = DecodeOptions {
            min_size: Some(min),
            ..full_size()
        };
        let scaled = decode_rgb(&bytes, options, Vec::new()).unwrap();
        assert_eq!(
            (scaled.width, scaled.height),
            (w.div_ceil(r), h.div_ceil(r))
        );
        assert!(scaled.width >= min.0 && scaled.height >= min.1);
        let boxed = box_downscale(&full, r);
        let inner = crop(&scaled, boxed.width, boxed.height);
        let agreement = psnr(&inner, &boxed.pixels);
        assert!(
            agreement > 25.0,
            "1/{r}: {agreement:.1} dB against a box filter"
        );
    }
}

/// Averages `r`×`r` blocks (whole blocks only).
fn box_downscale(img: &Rgb, r: u32) -> Rgb {
    let (w, h) = (img.width / r, img.height / r);
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut sum = 0u32;
                for dy in 0..r {
                    for dx in 0..r {
                        let i = (((y * r + dy) * img.width + x * r + dx) * 3 + c) as usize;
                        sum += u32::from(img.pixels[i]);
                    }
                }
                pixels.push((sum / (r * r)) as u8);
            }
        }
    }
    Rgb {
        width: w,
        height: h,
        pixels,
    }
}

/// The top-left `w`×`h` of `img`.
fn crop(img: &Rgb, w: u32, h: u32) -> Vec<u8> {
    (0..h)
        .flat_map(|y| {
            let start = ((y * img.width) * 3) as usize;
            img.pixels[start..start + (w * 3) as usize].to_vec()
        })
        .collect()
}

#[test]
fn bad_bytes_are_errors_and_a_cut_stream_decodes_what_it_has() {
    let (w, h) = (120, 90);
    let bytes = encode_rgb(&scene(w, h), w, h, 90).unwrap();
    for junk in [
        &b""[..],
        b"not a jpeg at all",
        &[0xFF, 0xD8, 0xFF, 0xE0, 0, 2],
        &bytes[..200],
    ] {
        match decode_rgb(junk, full_size(), Vec::new()) {
            Err(JpegError::Corrupt(message)) => assert!(!message.is_empty()),
            other => panic!("{} bytes gave {other:?}", junk.len()),
        }
    }
    let cut = decode_rgb(&bytes[..bytes.len() * 2 / 3], full_size(), Vec::new()).unwrap();
    assert_eq!((cut.width, cut.height), (w, h));
    let whole = decode_rgb(&bytes, full_size(), Vec::new()).unwrap();
    let top = (w * 3 * 20) as usize;
    assert_eq!(
        cut.pixels[..top],
        whole.pixels[..top],
        "the rows before the cut"
    );
}

#[test]
fn a_header_over_the_pixel_cap_is_refused_before_decoding() {
    let bytes = encode_rgb(&scene(64, 64), 64, 64, 90).unwrap();
    let sof = bytes.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
    let mut huge = bytes.clone();
    huge[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]); // 60000×60000
    let options = DecodeOptions {
        max_pixels: 89_478_485,
        ..full_size()
    };
    assert_eq!(
        decode_rgb(&huge, options, Vec::new()),
        Err(JpegError::TooLarge {
            width: 60_000,
            height: 60_000,
            limit: 89_478_485
        })
    );
}

#[test]
fn cmyk_is_left_to_a_general_decoder() {
    let (w, h) = (40, 30);
    let inks: Vec<u8> = scene(w, h)
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255 - p[0] / 2])
        .collect();
    let mut cmyk = Vec::new();
    jpeg_encoder::Encoder::new(&mut cmyk, 90)
        .encode(&inks, w as u16, h as u16, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    assert!(matches!(
        decode_rgb(&cmyk, full_size(), Vec::new()),
        Err(JpegError::Unsupported(_))
    ));
}

#[test]
fn sizes_jpeg_cannot_hold_and_short_buffers_are_encode_errors() {
    assert!(matches!(
        encode_rgb(&[], 0, 10, 90),
        Err(JpegError::Encode(_))
    ));
    assert!(matches!(
        encode_rgb(&[0; 9], 70_000, 1, 90),
        Err(JpegError::Encode(_))
    ));
    assert!(matches!(
        encode_rgb(&[0; 9], 2, 2, 90),
        Err(JpegError::Encode(_))
    ));
}

#[test]
fn a_progressive_file_that_repeats_its_scans_is_refused_past_the_cap() {
    let (w, h) = (96, 64);
    let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    compress.set_size(w, h);
    compress.set_quality(90.0);
    compress.set_progressive_mode();
    let mut started = compress.start_compress(Vec::new()).unwrap();
    started.write_scanlines(&scene(w as u32, h as u32)).unwrap();
    let progressive = started.finish().unwrap();
    let sos = |b: &[u8]| b.windows(2).filter(|m| m == &[0xFF, 0xDA]).count();
    assert!((2..=wit_jpeg::MAX_SCANS).contains(&sos(&progressive)));
    assert!(decode_rgb(&progressive, full_size(), Vec::new()).is_ok());
    // The last scan (a refinement) repeated 150 times before the end-of-image marker: libjpeg
    // decodes every repetition, which is the denial of service the cap exists for.
    let end = progressive.len() - 2;
    let last = progressive
        .windows(2)
        .rposition(|m| m == [0xFF, 0xDA])
        .unwrap();
    let mut hostile = progressive[..end].to_vec();
    for _ in 0..150 {
        hostile.extend_from_slice(&progressive[last..end]);
    }
    hostile.extend_from_slice(&[0xFF, 0xD9]);
    let uncapped = DecodeOptions {
        max_scans: 1_000,
        ..full_size()
    };
    let decoded = decode_rgb(&hostile, uncapped, Vec::new()).unwrap();
    assert_eq!((decoded.width, decoded.height), (w as u32, h as u32));
    match decode_rgb(&hostile, full_size(), Vec::new()) {
        Err(JpegError::Corrupt(message)) => assert!(message.contains("scans"), "{message}"),
        other => panic!("{other:?}"),
    }
}
