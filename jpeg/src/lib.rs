//! JPEG decoding and encoding for the crawler and the loader, through libjpeg-turbo (the copy
//! that mozjpeg-sys vendors and builds from source).
//!
//! Why not a pure-Rust codec: on the benchmarks' 256 px q95 images libjpeg-turbo's SIMD code
//! encodes 2.8× faster than jpeg-encoder and decodes 1.2× faster than zune-jpeg, and it shrinks
//! images by 2, 4 or 8 inside the inverse DCT on one thread (jpeg-decoder, the one Rust decoder
//! that scales, spreads a decode over three threads and was slower than a full decode). JPEG
//! coding is the largest stage of both the download and the loader, so this is where the peers'
//! libjpeg-turbo (OpenCV's, Pillow's) had to be matched.
//!
//! libjpeg reports fatal errors by unwinding out of C (the `mozjpeg` crate's design); every call
//! here is wrapped so that bad bytes come back as a [`JpegError`], never as a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};

use mozjpeg::{ColorSpace, Compress, Decompress};

/// Whether libjpeg-turbo was built with its SIMD kernels. mozjpeg-sys needs `nasm` on PATH at
/// build time for them and silently builds plain C without it, which decoded the benchmark's
/// photos 1.6× and encoded them 4.5× slower here (slower than the pure-Rust codecs).
pub const SIMD: bool = cfg!(jpeg_simd);

/// JPEG's largest side (libjpeg's `JPEG_MAX_DIMENSION`).
pub const MAX_SIDE: u32 = 65_500;

/// The most scans a JPEG may have (zune-jpeg's default cap). A baseline file has one and a
/// progressive one about ten; libjpeg itself has no limit, so a hostile progressive file that
/// repeats its refinement scans thousands of times would otherwise cost a full pass each.
pub const MAX_SCANS: usize = 100;

/// Why a JPEG could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    /// The bytes are not a JPEG libjpeg can read.
    #[error("not a decodable JPEG: {0}")]
    Corrupt(String),
    /// The header declares more pixels than the caller allows.
    #[error("the JPEG is {width}x{height}, over the cap of {limit} pixels")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The caller's cap.
        limit: u64,
    },
    /// CMYK, YCCK and other layouts libjpeg does not turn into RGB: a general decoder must.
    #[error("the JPEG's colour space is {0}; only YCbCr, RGB and greyscale decode to RGB here")]
    Unsupported(String),
    /// The pixels could not be written as a JPEG.
    #[error("cannot encode a JPEG: {0}")]
    Encode(String),
}

/// An RGB image, interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

/// How one image is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// The smallest (width, height) the caller will resize to. The decoder shrinks the image by
    /// 8, 4 or 2 in the DCT domain (the largest that keeps both sides at or above these), which
    /// skips most of the inverse DCT and colour work of a large photo. `None`: full size.
    pub min_size: Option<(u32, u32)>,
    /// Refuse a header that declares more pixels than this, before anything is allocated.
    pub max_pixels: u64,
    /// Refuse a file with more start-of-scan markers than this ([`MAX_SCANS`] is the usual cap).
    pub max_scans: usize,
}

/// Decodes a JPEG to RGB (greyscale expanded, Adobe RGB passed through), reusing `buffer`'s
/// allocation: the previous image's bytes are overwritten, not zeroed first.
///
/// A stream cut short decodes what it has and fills the rest with grey, as libjpeg (so OpenCV
/// and Pillow) do; only an unreadable header or structure is an error.
pub fn decode_rgb(bytes: &[u8], options: DecodeOptions, buffer: Vec<u8>) -> Result<Rgb, JpegError> {
    guarded(JpegError::Corrupt, || {
        decode_unguarded(bytes, options, buffer)
    })
}

fn decode_unguarded(
    bytes: &[u8],
    options: DecodeOptions,
    mut buffer: Vec<u8>,
) -> Result<Rgb, JpegError> {
    let corrupt = |e: std::io::Error| JpegError::Corrupt(e.to_string());
    let scans = count_scans(bytes);
    if scans > options.max_scans {
        return Err(JpegError::Corrupt(format!(
            "{scans} scans, more than the cap of {}",
            options.max_scans
        )));
    }
    let mut decompress = Decompress::new_mem(bytes).map_err(corrupt)?;
    let (width, height) = decompress.size();
    let (width, height) = (width as u32, height as u32);
    let limit = options.max_pixels;
    if u64::from(width) * u64::from(height) > limit {
        return Err(JpegError::TooLarge {
            width,
            height,
            limit,
        });
    }
    match decompress.color_space() {
        ColorSpace::JCS_YCbCr | ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_RGB => {}
        other => return Err(JpegError::Unsupported(format!("{other:?}"))),
    }
    let reduction = reduction(width, height, options.min_size);
    decompress.scale((8 / reduction) as u8);
    let mut started = decompress.rgb().map_err(corrupt)?;
    let (out_width, out_height) = (started.width(), started.height());
    buffer.resize(out_width * out_height * 3, 0);
    started
        .read_scanlines_into(&mut buffer[..])
        .map_err(corrupt)?;
    started.finish().map_err(corrupt)?;
    Ok(Rgb {
        width: out_width as u32,
        height: out_height as u32,
        pixels: buffer,
    })
}

/// Start-of-scan markers (`FF DA`) in the file. Entropy-coded data cannot contain the pair (a
/// data `FF` is followed by `00`), so this counts the scans, plus any the metadata happens to
/// hold, such as an EXIF thumbnail's: an over-count, never an under-count. One SIMD pass over
/// the bytes: 0.9 µs for a 23 KB photo, against 217 µs to decode it.
fn count_scans(bytes: &[u8]) -> usize {
    memchr::memchr_iter(0xFF, bytes)
        .filter(|&at| bytes.get(at + 1) == Some(&0xDA))
        .count()
}

/// The largest of 8, 4 and 2 that keeps both sides of a `width`×`height` image at or above
/// `min_size` when divided (rounding up, as libjpeg does), else 1. These are the reductions
/// libjpeg-turbo has SIMD inverse DCTs for; 3/8, 5/8 and the like run scalar code.
pub fn reduction(width: u32, height: u32, min_size: Option<(u32, u32)>) -> u32 {
    let Some((min_width, min_height)) = min_size else {
        return 1;
    };
    [8, 4, 2]
        .into_iter()
        .find(|&r| width.div_ceil(r) >= min_width.max(1) && height.div_ceil(r) >= min_height.max(1))
        .unwrap_or(1)
}

/// Encodes interleaved RGB as a baseline JPEG at `quality` (1–100) with 4:2:0 chroma
/// subsampling and the standard tables: libjpeg-turbo's defaults, so the same settings as
/// OpenCV's and Pillow's writers (and img2dataset's output) give files of the same size.
pub fn encode_rgb(
    pixels: &[u8],
    width: u32,
    height: u32,
    quality: u8,
) -> Result<Vec<u8>, JpegError> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(JpegError::Encode(format!(
            "{width}x{height} is outside JPEG's 1–{MAX_SIDE} pixels per side; \
             resize it first or write PNG"
        )));
    }
    let expected = width as usize * height as usize * 3;
    if pixels.len() != expected {
        return Err(JpegError::Encode(format!(
            "{} bytes given for a {width}x{height} RGB image, which needs {expected}",
            pixels.len()
        )));
    }
    guarded(JpegError::Encode, || {
        let io = |e: std::io::Error| JpegError::Encode(e.to_string());
        let mut compress = Compress::new(ColorSpace::JCS_RGB);
        compress.set_fastest_defaults();
        compress.set_size(width as usize, height as usize);
        compress.set_quality(f32::from(quality.clamp(1, 100)));
        compress.set_chroma_sampling_pixel_sizes((2, 2), (2, 2));
        let mut started = compress
            .start_compress(Vec::with_capacity(expected / 8))
            .map_err(io)?;
        started.write_scanlines(pixels).map_err(io)?;
        started.finish().map_err(io)
    })
}

/// Runs `work`, turning libjpeg's unwinding error exit into `error(message)`.
fn guarded<T>(
    error: fn(String) -> JpegError,
    work: impl FnOnce() -> Result<T, JpegError>,
) -> Result<T, JpegError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("libjpeg stopped without a message");
        Err(error(
            message
                .trim_start_matches("libjpeg fatal error: ")
                .to_string(),
        ))
    })
}

#[cfg(test)]
mod tests {
    /// The test script installs nasm and sets `WIT_REQUIRE_JPEG_SIMD`, so CI proves that the
    /// build it tests is the fast one (a missing nasm only shows as a cargo warning otherwise).
    #[test]
    fn simd_is_built_where_the_environment_requires_it() {
        let required = std::env::var_os("WIT_REQUIRE_JPEG_SIMD").is_some();
        if required && !super::SIMD {
            panic!("libjpeg-turbo was built without SIMD: install nasm, then `cargo clean -p mozjpeg-sys`");
        }
    }
}
