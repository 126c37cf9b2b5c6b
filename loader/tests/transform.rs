//! Crop geometry and pixel numerics, the latter against Python PIL + numpy on the same images.

use crate::common::{config, jpeg, photo, png, python, write_tar};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use wit_loader::transform::{
    center_box, clip_box, decode_rgb, normalize_into, rrc_box, Rgb, Transformer,
};
use wit_loader::{CropMode, Loader};

#[test]
fn rrc_boxes_lie_inside_with_open_clip_scale_and_ratio() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let sizes = [
        (224, 224),
        (640, 480),
        (300, 1000),
        (1000, 200),
        (50, 51),
        (3, 700),
    ];
    for (w, h) in sizes {
        for _ in 0..500 {
            let b = rrc_box(w, h, &mut rng);
            assert!(b.left >= 0.0 && b.top >= 0.0 && b.width >= 1.0 && b.height >= 1.0);
            assert!(
                b.left + b.width <= w as f64 && b.top + b.height <= h as f64,
                "{b:?} in {w}x{h}"
            );
            assert_eq!(b.left.fract(), 0.0, "integer box like torchvision");
            let ratio = b.width / b.height;
            let area = b.width * b.height / (w as f64 * h as f64);
            let fallback = b.width == w as f64 || b.height == h as f64;
            if !fallback {
                // Rounding to whole pixels widens the bounds slightly on small images.
                let slack = 2.0 / (w.min(h) as f64);
                assert!(
                    (0.9 - 2.0 * slack..=1.0 + 2.0 * slack).contains(&area),
                    "area {area}"
                );
                assert!(
                    (0.75 - slack..=4.0 / 3.0 + slack).contains(&ratio),
                    "ratio {ratio}"
                );
            }
        }
    }
    // Extreme aspect: 10 tries cannot fit, torchvision's fallback is a centred 4:3 box.
    let b = rrc_box(1000, 100, &mut rng);
    assert_eq!((b.width, b.height), (133.0, 100.0));
    assert_eq!(b.left, ((1000.0 - 133.0) / 2.0f64).floor());
}

#[test]
fn clip_and_center_boxes_are_squares_of_the_resized_image_inside_it() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (w, h) in [(256, 256), (640, 480), (300, 1000), (225, 400)] {
        for _ in 0..200 {
            let b = clip_box(w, h, 224, &mut rng);
            assert!(b.left >= 0.0 && b.top >= 0.0);
            assert!(b.left + b.width <= w as f64 + 1e-9 && b.top + b.height <= h as f64 + 1e-9);
            // A square in the resized image: short side 256 → a 224 square spans 7/8 of it.
            let short = b.width.min(b.height) / (w.min(h) as f64);
            assert!((short - 224.0 / 256.0).abs() < 0.01, "{short}");
        }
        let c = center_box(w, h, 224);
        assert!(c.left >= 0.0 && c.left + c.width <= w as f64 + 1e-9);
        assert!(c.top >= 0.0 && c.top + c.height <= h as f64 + 1e-9);
        assert!(
            (c.width.min(c.height) - w.min(h) as f64).abs() < 1e-9,
            "center keeps the short side"
        );
    }
}

#[test]
fn loader_images_are_target_squares_for_every_crop_mode() {
    let dir = tempfile::tempdir().unwrap();
    let samples: Vec<_> = (0..6u32)
        .map(|i| {
            let (w, h) = [
                (500, 300),
                (64, 200),
                (2000, 1500),
                (40, 40),
                (300, 301),
                (90, 60),
            ][i as usize];
            let img = if i % 2 == 0 {
                jpeg(w, h, i)
            } else {
                png(w, h, i)
            };
            (
                format!("k{i}"),
                vec![("jpg", img), ("txt", b"a red circle".to_vec())],
            )
        })
        .collect();
    let path = dir.path().join("a.tar");
    write_tar(&path, &samples);
    for mode in [CropMode::Rrc, CropMode::Clip, CropMode::Center] {
        let mut cfg = config(vec![path.to_string_lossy().into()], 3);
        cfg.crop = mode;
        cfg.image_size = 48;
        let mut l = Loader::new(cfg).unwrap();
        let b = l.next_batch().unwrap().unwrap();
        assert_eq!(b.images.dims(), &[3, 3, 48, 48]);
        assert_eq!(b.tokens.dims(), &[3, 77]);
        assert_eq!(l.stats().skipped(), 0, "{mode:?}");
    }
    let mut cfg = config(vec![path.to_string_lossy().into()], 2);
    cfg.crop = CropMode::Center;
    cfg.output = wit_loader::ImageOutput::U8;
    cfg.shuffle_buffer = 0;
    cfg.shuffle_shards = false;
    let b = Loader::new(cfg).unwrap().next_batch().unwrap().unwrap();
    assert_eq!(b.images.dtype(), candle_core::DType::U8);
    let first = b
        .images
        .get(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let want = ours(&samples[0].1[0].1, 32);
    let back: Vec<f32> = first
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            (v as f32 / 255.0 - wit_loader::CLIP_MEAN[i / 1024]) / wit_loader::CLIP_STD[i / 1024]
        })
        .collect();
    assert_eq!(back.len(), want.len());
    assert!(
        back.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5),
        "u8 output = unnormalised f32 output"
    );
}

const PIL_REFERENCE: &str = r#"
import sys, numpy as np
from PIL import Image
path, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
img = Image.open(path).convert("RGB")
w, h = img.size
# torchvision Resize(size) on PIL: short side = size, long side int(size * long / short)
if w <= h:
    nw, nh = size, int(size * h / w)
else:
    nw, nh = int(size * w / h), size
if (nw, nh) != (w, h):
    img = img.resize((nw, nh), Image.BICUBIC)
left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
img = img.crop((left, top, left + size, top + size))
mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float64)
std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float64)
x = (np.asarray(img, dtype=np.float64) / 255.0 - mean) / std
x.transpose(2, 0, 1).astype(np.float32).tofile(out)
"#;

fn reference(image_path: &std::path::Path, size: u32) -> Vec<f32> {
    let out = image_path.with_extension("f32");
    python(
        PIL_REFERENCE,
        &[
            &image_path.to_string_lossy(),
            &size.to_string(),
            &out.to_string_lossy(),
        ],
    );
    let bytes = std::fs::read(out).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn ours(bytes: &[u8], size: u32) -> Vec<f32> {
    let mut t = Transformer::new(size, CropMode::Center);
    let img = decode_rgb(bytes, t.min_decode_short_side()).unwrap();
    let b = t.crop_box(img.width, img.height, &mut ChaCha8Rng::seed_from_u64(0));
    let rgb = t.crop_resize(&img, b).unwrap();
    let mut out = Vec::new();
    normalize_into(&rgb, &mut out);
    out
}

#[test]
fn normalisation_of_an_unresized_image_equals_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("same.png");
    let bytes = png(64, 64, 5);
    std::fs::write(&path, &bytes).unwrap();
    let (want, got) = (reference(&path, 64), ours(&bytes, 64));
    assert_eq!(want.len(), got.len());
    let max = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-5, "normalisation differs from numpy by {max}");
}

#[test]
fn center_crop_with_bicubic_resize_matches_pil() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (w, h)) in [(120u32, 90u32), (70, 130), (200, 200)]
        .into_iter()
        .enumerate()
    {
        let path = dir.path().join(format!("img{i}.png"));
        let img = photo(w, h, i as u32);
        img.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (want, got) = (reference(&path, 56), ours(&bytes, 56));
        assert_eq!(want.len(), got.len());
        // One 8-bit level is 1/255/std ≈ 0.015 after normalisation.
        let level = 1.0 / 255.0 / 0.2613;
        let diffs: Vec<f32> = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().cloned().fold(0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        // Same algorithm, same pass order (horizontal first, clipped to u8 between passes):
        // only fixed-point rounding may differ, by at most one 8-bit level.
        assert!(max <= level + 1e-4, "{w}x{h}: max diff {max} (> 1 level)");
        assert!(mean <= 0.1 * level, "{w}x{h}: mean diff {mean}");
    }
}

#[test]
fn dct_scaled_jpeg_decode_shrinks_as_far_as_the_short_side_allows() {
    let bytes = jpeg(1600, 1200, 3);
    for (min_short, want) in [
        (150, (200, 150)),
        (151, (400, 300)),
        (300, (400, 300)),
        (301, (800, 600)),
        (601, (1600, 1200)),
        (10_000, (1600, 1200)),
    ] {
        let img = decode_rgb(&bytes, min_short).unwrap();
        assert_eq!((img.width, img.height), want, "short side ≥ {min_short}");
    }
}

#[test]
fn jpegs_of_every_colour_layout_decode_as_the_general_decoder_does() {
    let (w, h) = (97, 61);
    let mut grey = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut grey, 90)
        .encode_image(&image::DynamicImage::ImageRgb8(photo(w, h, 5)).to_luma8())
        .unwrap();
    let mut cmyk = Vec::new();
    let inks: Vec<u8> = photo(w, h, 6)
        .pixels()
        .flat_map(|p| [p[0], p[1], p[2], 255 - p[0] / 2])
        .collect();
    jpeg_encoder::Encoder::new(&mut cmyk, 90)
        .encode(&inks, w as u16, h as u16, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    // A short side this large keeps every decode at full size (no DCT scaling).
    let full_size = 10_000;
    for (name, bytes) in [("rgb", jpeg(w, h, 4)), ("grey", grey), ("cmyk", cmyk)] {
        let want = image::load_from_memory(&bytes).unwrap().into_rgb8();
        let got = decode_rgb(&bytes, full_size).unwrap();
        assert_eq!((got.width, got.height), want.dimensions(), "{name}");
        // libjpeg-turbo (ours) and zune-jpeg (the `image` crate's) round their inverse DCTs
        // and chroma upsampling differently; CMYK goes through `image` itself.
        let diffs: Vec<u8> = got
            .pixels
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        let max = diffs.iter().copied().max().unwrap_or(0);
        assert!(
            mean < 0.25 && max <= 4,
            "{name}: mean {mean:.2}, max {max} levels apart"
        );
        // The next image decodes into the previous one's buffer: longer and full of garbage.
        let mut t = Transformer::new(48, CropMode::Rrc);
        t.recycle_decoded(Rgb {
            width: 1,
            height: 1,
            pixels: vec![0xAB; (w * h * 3 + 500) as usize],
        });
        assert_eq!(
            t.decode(&bytes).unwrap().pixels,
            got.pixels,
            "{name} reused"
        );
    }
}
