//! Image processing (`wit_crawler::imaging::process`): small valid images in every format wit
//! reads, then damaged (flipped bytes, a cut tail) or lying (a PNG header claiming other
//! dimensions, with a valid CRC), processed under every resize mode and size.

use crate::run;
use flate2::Crc;
use image::{DynamicImage, ImageFormat as Codec, RgbImage};
use proptest::prelude::*;
use std::io::Cursor;
use wit_crawler::imaging::{process, ImageOptions, ResizeMode};
use wit_shards::ImageFormat;

const CODECS: &[Codec] = &[
    Codec::Png,
    Codec::Jpeg,
    Codec::Gif,
    Codec::Bmp,
    Codec::WebP,
    Codec::Tiff,
    Codec::Ico,
];
const MODES: &[ResizeMode] = &[
    ResizeMode::No,
    ResizeMode::KeepRatio,
    ResizeMode::KeepRatioLargest,
    ResizeMode::CenterCrop,
    ResizeMode::Border,
];

#[derive(Debug, Clone)]
enum Damage {
    None,
    Flip(Vec<(prop::sample::Index, u8)>),
    Cut(prop::sample::Index),
    /// PNG only: the header's width and height replaced (CRC recomputed).
    Lie(u32, u32),
}

fn encoded(w: u32, h: u32, codec: Codec) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 13) as u8, (x ^ y) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, codec)
        .unwrap();
    out.into_inner()
}

fn damaged(mut bytes: Vec<u8>, damage: &Damage, codec: Codec) -> Vec<u8> {
    match damage {
        Damage::None => {}
        Damage::Flip(flips) => {
            for (at, b) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= b;
            }
        }
        Damage::Cut(at) => bytes.truncate(at.index(bytes.len())),
        Damage::Lie(w, h) if codec == Codec::Png => {
            // IHDR data starts at byte 16: width, height, then 5 bytes; its CRC covers the type.
            bytes[16..20].copy_from_slice(&w.to_be_bytes());
            bytes[20..24].copy_from_slice(&h.to_be_bytes());
            let mut crc = Crc::new();
            crc.update(&bytes[12..29]);
            bytes[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        }
        Damage::Lie(..) => {}
    }
    bytes
}

/// Processing never panics, and a stored image never has more pixels than the larger of the
/// pixel cap and the target square: no input makes wit allocate past its budget.
pub(crate) fn check(runner: &mut proptest::test_runner::TestRunner) -> Result<(), String> {
    let side = prop_oneof![3 => 1u32..48, 1 => 1u32..4];
    let damage = prop_oneof![
        2 => Just(Damage::None),
        2 => proptest::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..6).prop_map(Damage::Flip),
        1 => any::<prop::sample::Index>().prop_map(Damage::Cut),
        2 => (prop_oneof![1u32..4, 1u32..100_000_000], prop_oneof![1u32..4, 1u32..100_000_000])
            .prop_map(|(w, h)| Damage::Lie(w, h)),
    ];
    let options = (
        proptest::sample::select(MODES),
        prop_oneof![1u32..64, 64u32..1024],
        any::<bool>(),
        proptest::sample::select(&[1u64 << 12, 1 << 20, 89_478_485][..]),
        any::<bool>(),
        proptest::sample::select(&[ImageFormat::Jpg, ImageFormat::Png, ImageFormat::Webp][..]),
    );
    let strategy = (
        side.clone(),
        side,
        proptest::sample::select(CODECS),
        damage,
        options,
    );
    run(runner, strategy, |(w, h, codec, damage, opts)| {
        let (
            resize_mode,
            image_size,
            resize_only_if_bigger,
            max_pixels,
            skip_reencode,
            encode_format,
        ) = opts;
        let bytes = damaged(encoded(w, h, codec), &damage, codec);
        let opts = ImageOptions {
            resize_mode,
            image_size,
            resize_only_if_bigger,
            max_pixels,
            skip_reencode,
            encode_format,
            ..ImageOptions::default()
        };
        if let Ok(p) = process(&bytes, &opts) {
            let pixels = u64::from(p.image.width) * u64::from(p.image.height);
            let budget = max_pixels.max(u64::from(image_size).pow(2));
            prop_assert!(
                pixels <= budget,
                "stored {}x{} over the budget {budget}",
                p.image.width,
                p.image.height
            );
            prop_assert!(p.exif.as_ref().is_none_or(|e| e.len() <= 1 << 20));
        }
        Ok(())
    })
}
