//! The input encodings wit decodes, recognised by magic bytes (never by `Content-Type`), and
//! their header decoders, opened under `image`'s allocation limits.

use std::io::Cursor;

use image::{ImageDecoder, ImageReader};
use wit_shards::ImageFormat;

use super::{failed, ImageError};

/// The formats named in the message for bytes that are none of them.
pub(crate) const KNOWN: &str = "JPEG, PNG, WebP, GIF, BMP, TIFF or ICO/CUR";

/// The input encodings wit decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
    /// WebP (lossy or lossless).
    Webp,
    /// GIF (first frame only).
    Gif,
    /// Windows bitmap (the header variants `image` reads: core, info, V4, V5; RLE, bit fields).
    Bmp,
    /// TIFF and BigTIFF (first page only; 8/16-bit, chunky or planar, the common compressions).
    Tiff,
    /// Windows icon or cursor (the largest, deepest entry; BMP or PNG inside).
    Ico,
}

impl SourceFormat {
    /// Recognises the encoding from the first bytes of the file.
    pub fn sniff(bytes: &[u8]) -> Option<SourceFormat> {
        if let Some(f) = ImageFormat::from_magic(bytes) {
            return Some(match f {
                ImageFormat::Jpg => SourceFormat::Jpeg,
                ImageFormat::Png => SourceFormat::Png,
                ImageFormat::Webp => SourceFormat::Webp,
            });
        }
        let head = |n: usize| bytes.get(..n).unwrap_or_default();
        if head(6) == b"GIF87a" || head(6) == b"GIF89a" {
            Some(SourceFormat::Gif)
        } else if head(2) == b"BM" && bytes.len() >= 26 {
            Some(SourceFormat::Bmp)
        } else if matches!(head(4), b"II*\0" | b"MM\0*" | b"II+\0" | b"MM\0+") {
            // Classic TIFF (42) and BigTIFF (43), either byte order.
            Some(SourceFormat::Tiff)
        } else if is_ico(bytes) {
            Some(SourceFormat::Ico)
        } else {
            None
        }
    }

    /// The name written to the `original_format` column.
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Jpeg => "jpeg",
            SourceFormat::Png => "png",
            SourceFormat::Webp => "webp",
            SourceFormat::Gif => "gif",
            SourceFormat::Bmp => "bmp",
            SourceFormat::Tiff => "tiff",
            SourceFormat::Ico => "ico",
        }
    }

    fn image_format(self) -> image::ImageFormat {
        match self {
            SourceFormat::Jpeg => image::ImageFormat::Jpeg,
            SourceFormat::Png => image::ImageFormat::Png,
            SourceFormat::Webp => image::ImageFormat::WebP,
            SourceFormat::Gif => image::ImageFormat::Gif,
            SourceFormat::Bmp => image::ImageFormat::Bmp,
            SourceFormat::Tiff => image::ImageFormat::Tiff,
            // `image`'s ICO decoder ignores the type field, so it reads cursors (type 2) too.
            SourceFormat::Ico => image::ImageFormat::Ico,
        }
    }
}

/// An ICO (type 1) or CUR (type 2) directory: reserved 0, the type, a non-zero entry count and
/// room for the first 16-byte entry. Four bytes alone would match too much (`00 00 01 00`).
fn is_ico(bytes: &[u8]) -> bool {
    bytes.len() >= 22
        && bytes[..2] == [0, 0]
        && matches!(bytes[2..4], [1, 0] | [2, 0])
        && u16::from_le_bytes([bytes[4], bytes[5]]) != 0
        // An entry's reserved byte is 0 (some writers put 255) and its planes/hotspot field fits.
        && matches!(bytes[9], 0 | 255)
}

/// Opens `bytes` as `source`, reading only its header, with `image`'s allocation limit set so
/// no decoder (TIFF's strip and tag buffers included) allocates past 8 bytes per allowed pixel.
pub(crate) fn open_decoder(
    bytes: &[u8],
    source: SourceFormat,
    max_pixels: u64,
) -> Result<impl ImageDecoder + '_, ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), source.image_format());
    let mut limits = image::Limits::default();
    // Room for 16-bit RGBA at the pixel limit; the pixel count itself is checked by the caller.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(512 << 20));
    reader.limits(limits);
    reader
        .into_decoder()
        .map_err(|e| failed(&format!("cannot read the {} header", source.name()), e))
}
