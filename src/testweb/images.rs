//! Image encoders for the test web: the four web formats, JPEGs carrying an EXIF orientation,
//! and the deliberately broken files of the fault area (corrupt, truncated, decompression bomb).

use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{imageops, ExtendedColorType, ImageEncoder, RgbImage};

/// The formats images are served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Baseline JPEG.
    Jpeg,
    /// PNG, fast compression.
    Png,
    /// Lossless WebP (the only WebP the `image` crate writes).
    Webp,
    /// Single-frame GIF with a quantised palette.
    Gif,
}

impl Format {
    /// The file extension used in URLs.
    pub fn ext(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
            Format::Gif => "gif",
        }
    }

    /// The manifest's `format` value.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Webp => "webp",
            Format::Gif => "gif",
        }
    }

    /// The Content-Type the server sends.
    pub fn mime(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Webp => "image/webp",
            Format::Gif => "image/gif",
        }
    }
}

/// Encodes `img` in `format`. Encoding an in-memory RGB buffer cannot fail for these codecs
/// except on a bug, hence the panic message.
pub fn encode(img: &RgbImage, format: Format) -> Vec<u8> {
    let mut out = Vec::new();
    let (w, h) = img.dimensions();
    let res = match format {
        Format::Jpeg => JpegEncoder::new_with_quality(&mut out, 88).write_image(
            img,
            w,
            h,
            ExtendedColorType::Rgb8,
        ),
        Format::Png => {
            PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Sub)
                .write_image(img, w, h, ExtendedColorType::Rgb8)
        }
        Format::Webp => {
            WebPEncoder::new_lossless(&mut out).write_image(img, w, h, ExtendedColorType::Rgb8)
        }
        Format::Gif => {
            let rgba = image::DynamicImage::ImageRgb8(img.clone()).to_rgba8();
            GifEncoder::new_with_speed(&mut out, 30).encode(&rgba, w, h, ExtendedColorType::Rgba8)
        }
    };
    res.expect("encoding an in-memory image");
    out
}

/// Encodes `display` (the picture as it must look) as a JPEG whose stored pixels are transformed
/// and whose EXIF `Orientation` tag (2, 3, 6 or 8) tells a viewer how to undo that, so only a
/// client that applies EXIF orientation sees the scene upright.
pub fn jpeg_with_orientation(display: &RgbImage, orientation: u16) -> Vec<u8> {
    let stored = match orientation {
        2 => imageops::flip_horizontal(display),
        3 => imageops::rotate180(display),
        6 => imageops::rotate270(display),
        8 => imageops::rotate90(display),
        _ => display.clone(),
    };
    let jpeg = encode(&stored, Format::Jpeg);
    insert_app1(&jpeg, &exif_orientation(orientation))
}

/// A minimal big-endian TIFF/EXIF block with one IFD0 entry: Orientation (0x0112, SHORT).
fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut e = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    e.extend_from_slice(&1u16.to_be_bytes());
    e.extend_from_slice(&0x0112u16.to_be_bytes());
    e.extend_from_slice(&3u16.to_be_bytes());
    e.extend_from_slice(&1u32.to_be_bytes());
    e.extend_from_slice(&orientation.to_be_bytes());
    e.extend_from_slice(&[0, 0]);
    e.extend_from_slice(&0u32.to_be_bytes());
    e
}

/// Inserts an APP1 segment after SOI and any APP0 (JFIF) segment.
fn insert_app1(jpeg: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut at = 2;
    if jpeg.get(2..4) == Some(&[0xFF, 0xE0]) {
        at = 4 + usize::from(u16::from_be_bytes([jpeg[4], jpeg[5]]));
    }
    let len = u16::try_from(payload.len() + 2).expect("small EXIF block");
    let mut out = Vec::with_capacity(jpeg.len() + payload.len() + 4);
    out.extend_from_slice(&jpeg[..at]);
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&jpeg[at..]);
    out
}

/// A JPEG signature followed by noise: sniffs as JPEG, never decodes.
pub fn corrupt_jpeg(seed: u64) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    out.extend((0..4000u32).map(|i| (super::scene::hash01(i, 7, seed) * 256.0) as u8));
    out
}

/// The first 40% of a valid PNG: a correct header, then the data stops mid-stream.
pub fn truncated_png(valid_png: &[u8]) -> Vec<u8> {
    valid_png[..valid_png.len() * 2 / 5].to_vec()
}

/// A tiny PNG whose header declares `w`×`h` pixels (a decompression bomb): a safe client refuses
/// it from the header alone, before allocating.
pub fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    use std::io::Write;
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    push_chunk(&mut out, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![0u8; 64 * 1024]).expect("in-memory zlib");
    push_chunk(&mut out, b"IDAT", &z.finish().expect("in-memory zlib"));
    push_chunk(&mut out, b"IEND", &[]);
    out
}

fn push_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let len = u32::try_from(data.len()).expect("small chunk");
    out.extend_from_slice(&len.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageDecoder;

    #[test]
    fn exif_orientation_is_read_back_and_undone() {
        let display = RgbImage::from_fn(40, 20, |x, _| image::Rgb([(x * 6) as u8, 0, 0]));
        let bytes = jpeg_with_orientation(&display, 6);
        let mut dec = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .expect("sniff")
            .into_decoder()
            .expect("decoder");
        assert_eq!(
            dec.orientation().expect("orientation"),
            image::metadata::Orientation::Rotate90
        );
        assert_eq!(dec.dimensions(), (20, 40));
    }

    #[test]
    fn bomb_declares_its_size_and_every_format_decodes() {
        let bomb = png_bomb(50_000, 50_000);
        let dec = image::codecs::png::PngDecoder::new(std::io::Cursor::new(&bomb)).expect("header");
        assert_eq!(dec.dimensions(), (50_000, 50_000));
        let img = RgbImage::from_fn(30, 20, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 90]));
        for f in [Format::Jpeg, Format::Png, Format::Webp, Format::Gif] {
            let d = image::load_from_memory(&encode(&img, f)).expect("decodes");
            assert_eq!((d.width(), d.height()), (30, 20), "{f:?}");
        }
        assert!(image::load_from_memory(&corrupt_jpeg(1)).is_err());
    }
}
