//! Downloaded bytes → the image stored in a shard, with img2dataset's resize semantics.
//!
//! One synchronous, CPU-only entry point, [`process`], so the downloader can run it on a bounded
//! blocking pool. The order of work is chosen so a hostile or oversized file costs as little as
//! possible: magic bytes, then the header (dimensions, EXIF), the pixel limit and the size filters,
//! the stored size (computed from the header in source coordinates, refused when over
//! `--max-pixels` or the encoder's side limit), and only then the decode — a JPEG shrunk by 2, 4
//! or 8 in the DCT domain when the target leaves room, so a 4000×3000 JPEG bound for 256 px is
//! decoded at 500×375. JPEGs are decoded and encoded by libjpeg-turbo (`wit-jpeg`), the other
//! formats by the `image` crate. One item's cost is bounded by its pixels: no intermediate image
//! is larger than the decoded or the stored one, and EXIF is read within fixed caps (`metadata`).

mod format;
mod geometry;
mod metadata;

use fast_image_resize as fr;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, RgbImage};
use wit_shards::{EncodedImage, ImageFormat, Status};

pub use format::SourceFormat;
pub use geometry::{geometry, Geometry, ResizeMode, SourceRect};
pub use metadata::{
    MAX_EXIF_BYTES, MAX_EXIF_ENTRIES, MAX_EXIF_JSON_BYTES, MAX_EXIF_VALUE_BYTES,
    MAX_EXIF_VALUE_CHARS,
};

use format::open_decoder;
use metadata::exif_json;

/// How pixels are resampled when an image is scaled; img2dataset's names for OpenCV's filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// The nearest source pixel.
    Nearest,
    /// Bilinear.
    Linear,
    /// Bicubic (Catmull-Rom).
    Cubic,
    /// The mean of the source pixels each output pixel covers (OpenCV's `INTER_AREA`): the
    /// alias-free, cheap choice for downscaling, and img2dataset's default there.
    Area,
    /// Lanczos with 3 lobes (OpenCV's `INTER_LANCZOS4` has 4): img2dataset's default for upscaling.
    Lanczos,
}

impl Interpolation {
    fn algorithm(self) -> fr::ResizeAlg {
        match self {
            Interpolation::Nearest => fr::ResizeAlg::Nearest,
            Interpolation::Linear => fr::ResizeAlg::Convolution(fr::FilterType::Bilinear),
            Interpolation::Cubic => fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom),
            Interpolation::Area => fr::ResizeAlg::Convolution(fr::FilterType::Box),
            Interpolation::Lanczos => fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3),
        }
    }
}

/// Everything [`process`] needs to know; `Default` gives img2dataset's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageOptions {
    /// Target side in pixels (img2dataset `image_size`).
    pub image_size: u32,
    /// How to reach `image_size`.
    pub resize_mode: ResizeMode,
    /// Never upscale: images already within `image_size` keep their size.
    pub resize_only_if_bigger: bool,
    /// Filter for images scaled up.
    pub upscale_interpolation: Interpolation,
    /// Filter for images scaled down.
    pub downscale_interpolation: Interpolation,
    /// Encoding of the stored image.
    pub encode_format: ImageFormat,
    /// JPEG quality 1–100 (ignored for PNG and lossless WebP).
    pub encode_quality: u8,
    /// Store the downloaded bytes unchanged when no pixel changed and they are JPEG/PNG/WebP.
    pub skip_reencode: bool,
    /// Refuse images with more pixels than this, read from the header before decoding
    /// (Pillow's decompression-bomb limit by default).
    pub max_pixels: u64,
    /// Drop images whose short side is smaller than this (0 = no limit).
    pub min_image_size: u32,
    /// Drop images with a larger pixel area than this.
    pub max_image_area: Option<u64>,
    /// Drop images whose long side / short side exceeds this.
    pub max_aspect_ratio: Option<f64>,
    /// Drop bodies smaller than this many bytes (0 = no limit): tracking pixels, spacers.
    pub min_bytes: u64,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            image_size: 256,
            resize_mode: ResizeMode::Border,
            resize_only_if_bigger: false,
            upscale_interpolation: Interpolation::Lanczos,
            downscale_interpolation: Interpolation::Area,
            encode_format: ImageFormat::Jpg,
            encode_quality: 95,
            skip_reencode: false,
            max_pixels: 89_478_485,
            min_image_size: 0,
            max_image_area: None,
            max_aspect_ratio: None,
            min_bytes: 0,
        }
    }
}

/// The result of processing one downloaded image.
#[derive(Clone, Debug, PartialEq)]
pub struct Processed {
    /// The bytes to store, their format and their size after resizing.
    pub image: EncodedImage,
    /// Width before resizing, after EXIF orientation.
    pub original_width: u32,
    /// Height before resizing, after EXIF orientation.
    pub original_height: u32,
    /// Format of the downloaded bytes by magic: `jpeg`, `png`, `webp`, `gif`, `bmp`, `tiff` or
    /// `ico`.
    pub original_format: &'static str,
    /// EXIF tags of the original as a JSON object string (img2dataset's `exif` column).
    pub exif: Option<String>,
    /// 64-bit DCT perceptual hash of the image content, for near-duplicate detection.
    pub phash: u64,
}

/// Why an image was not stored; the message is written to the `error_message` column.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// Not a decodable image, over the pixel limit, or failed to encode.
    #[error("{0}")]
    FailedToResize(String),
    /// A decodable image that a filter (size, area, aspect ratio, bytes) dropped on purpose.
    #[error("{0}")]
    Filtered(String),
}

impl ImageError {
    /// The status the shard row gets for this error.
    pub fn status(&self) -> Status {
        match self {
            ImageError::FailedToResize(_) => Status::FailedToResize,
            ImageError::Filtered(_) => Status::Filtered,
        }
    }
}

/// Turns downloaded bytes into the stored image; see the module docs for the order of checks.
pub fn process(bytes: &[u8], opts: &ImageOptions) -> Result<Processed, ImageError> {
    if (bytes.len() as u64) < opts.min_bytes {
        return Err(ImageError::Filtered(format!(
            "image smaller than --min-image-bytes {}",
            opts.min_bytes
        )));
    }
    let source = SourceFormat::sniff(bytes).ok_or_else(|| {
        let head = &bytes[..bytes.len().min(8)];
        ImageError::FailedToResize(format!(
            "not a {} image (first bytes {head:02x?})",
            format::KNOWN
        ))
    })?;
    let mut decoder = open_decoder(bytes, source, opts.max_pixels)?;
    let (raw_w, raw_h) = decoder.dimensions();
    check_pixels(raw_w, raw_h, opts.max_pixels)?;
    let exif = match source {
        // A TIFF file is itself the structure EXIF borrows: its IFD0 tags are its EXIF, as
        // Pillow's `getexif()` reads them (`image` gives none).
        SourceFormat::Tiff => exif_json(bytes),
        _ => decoder
            .exif_metadata()
            .ok()
            .flatten()
            .as_deref()
            .and_then(exif_json),
    };
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (w, h) = if swaps_axes(orientation) {
        (raw_h, raw_w)
    } else {
        (raw_w, raw_h)
    };
    check_filters(w, h, opts)?;
    let geom = geometry(w, h, opts)?;
    let decoded = decode(bytes, source, decoder, orientation, geom, opts.max_pixels)?;
    let changed = geom.is_some() || decoded.had_alpha || orientation != Orientation::NoTransforms;
    let (encoded, phash) = finish(decoded.rgb, (w, h), geom, opts)?;
    let image = match ImageFormat::from_magic(bytes) {
        Some(format) if opts.skip_reencode && !changed => EncodedImage {
            bytes: bytes.to_vec(),
            format,
            width: w,
            height: h,
        },
        _ => encode(&encoded, opts)?,
    };
    Ok(Processed {
        image,
        original_width: w,
        original_height: h,
        original_format: source.name(),
        exif,
        phash,
    })
}

fn failed(what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::FailedToResize(format!("{what}: {e}"))
}

fn check_pixels(w: u32, h: u32, max_pixels: u64) -> Result<(), ImageError> {
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(ImageError::FailedToResize(format!(
            "image has more pixels than --max-pixels {max_pixels} \
             (decompression-bomb guard; raise --max-pixels to accept it)"
        )));
    }
    if pixels == 0 {
        return Err(ImageError::FailedToResize(format!(
            "image header says {w}x{h}: no pixels"
        )));
    }
    Ok(())
}

fn check_filters(w: u32, h: u32, opts: &ImageOptions) -> Result<(), ImageError> {
    let (short, long) = (w.min(h), w.max(h));
    if short < opts.min_image_size {
        return Err(ImageError::Filtered(format!(
            "image too small (short side under --min-image-size {})",
            opts.min_image_size
        )));
    }
    let area = u64::from(w) * u64::from(h);
    if let Some(max) = opts.max_image_area.filter(|&m| area > m) {
        return Err(ImageError::Filtered(format!(
            "image area too large (over --max-image-area {max})"
        )));
    }
    let ratio = f64::from(long) / f64::from(short);
    if let Some(max) = opts.max_aspect_ratio.filter(|&m| ratio > m) {
        return Err(ImageError::Filtered(format!(
            "aspect ratio too large (over --max-aspect-ratio {max})"
        )));
    }
    Ok(())
}

fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Decoded, oriented RGB pixels; `had_alpha` when transparency was flattened onto white.
struct Decoded {
    rgb: RgbImage,
    had_alpha: bool,
}

fn decode(
    bytes: &[u8],
    source: SourceFormat,
    decoder: impl ImageDecoder,
    orientation: Orientation,
    geom: Option<Geometry>,
    max_pixels: u64,
) -> Result<Decoded, ImageError> {
    let jpeg = match source {
        SourceFormat::Jpeg => match decode_jpeg(bytes, orientation, geom, max_pixels) {
            Ok(rgb) => Some(rgb),
            Err(wit_jpeg::JpegError::Unsupported(_)) => None,
            Err(e) => return Err(failed("cannot decode the JPEG image", e)),
        },
        _ => None,
    };
    let mut img = match jpeg {
        Some(rgb) => DynamicImage::ImageRgb8(rgb),
        None => DynamicImage::from_decoder(decoder)
            .map_err(|e| failed(&format!("cannot decode the {} image", source.name()), e))?,
    };
    img.apply_orientation(orientation);
    Ok(flatten(img))
}

/// Decodes a JPEG with libjpeg-turbo, shrunk by 2, 4 or 8 in the DCT domain when the resize
/// target leaves room (a 4000×3000 photo bound for 256 px decodes at 500×375). CMYK and YCCK
/// come back `Unsupported`, for the general decoder.
fn decode_jpeg(
    bytes: &[u8],
    orientation: Orientation,
    geom: Option<Geometry>,
    max_pixels: u64,
) -> Result<RgbImage, wit_jpeg::JpegError> {
    // The target is in displayed (oriented) axes; the DCT scales the stored ones. A crop keeps
    // its share of the whole image's pixels only if the whole image keeps its scaled size.
    let min_size = geom.map(|g| {
        let (w, h) = g.scaled_whole;
        if swaps_axes(orientation) {
            (h, w)
        } else {
            (w, h)
        }
    });
    let options = wit_jpeg::DecodeOptions {
        min_size,
        max_pixels,
        max_scans: wit_jpeg::MAX_SCANS,
    };
    let rgb = wit_jpeg::decode_rgb(bytes, options, Vec::new())?;
    Ok(RgbImage::from_raw(rgb.width, rgb.height, rgb.pixels).expect("decoder output is w*h RGB"))
}

/// Converts to 8-bit RGB, compositing any transparency onto white as img2dataset does.
///
/// The common 8-bit layouts are converted with direct loops: `image`'s generic conversion goes
/// through f32 per sample and was ~10 % of a download's CPU on greyscale and RGBA photographs.
fn flatten(img: DynamicImage) -> Decoded {
    let (w, h) = (img.width(), img.height());
    let (data, had_alpha) = match img {
        DynamicImage::ImageRgb8(rgb) => {
            return Decoded {
                rgb,
                had_alpha: false,
            }
        }
        DynamicImage::ImageLuma8(grey) => (grey_to_rgb(grey.as_raw()), false),
        DynamicImage::ImageRgba8(rgba) => (composite_on_white::<4>(rgba.as_raw()), true),
        DynamicImage::ImageLumaA8(la) => (composite_on_white::<2>(la.as_raw()), true),
        other if other.color().has_alpha() => {
            (composite_on_white::<4>(other.into_rgba8().as_raw()), true)
        }
        other => {
            return Decoded {
                rgb: other.into_rgb8(),
                had_alpha: false,
            }
        }
    };
    Decoded {
        rgb: RgbImage::from_raw(w, h, data).expect("buffer sized for w*h RGB"),
        had_alpha,
    }
}

/// Grey samples repeated into R, G and B.
fn grey_to_rgb(grey: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; grey.len() * 3];
    for (px, &v) in out.chunks_exact_mut(3).zip(grey) {
        px.copy_from_slice(&[v, v, v]);
    }
    out
}

/// `N`-byte pixels with alpha last (grey+alpha when `N == 2`, RGBA when 4), composited onto
/// white: `(c·a + 255·(255 − a) + 127) / 255` per channel.
fn composite_on_white<const N: usize>(pixels: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; pixels.len() / N * 3];
    for (dst, px) in out.chunks_exact_mut(3).zip(pixels.chunks_exact(N)) {
        let a = u32::from(px[N - 1]);
        let blend = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        if N == 2 {
            dst.fill(blend(px[0]));
        } else {
            dst.copy_from_slice(&[blend(px[0]), blend(px[1]), blend(px[2])]);
        }
    }
    out
}

/// Applies the geometry and returns the final pixels plus the perceptual hash of the whole
/// (uncropped, unpadded) image, so copies stored with different modes still hash alike.
/// `(w, h)` is the oriented header size the geometry was computed for; `rgb` may be smaller
/// (a DCT-scaled JPEG), so the crop is mapped onto what was decoded.
fn finish(
    rgb: RgbImage,
    (w, h): (u32, u32),
    geom: Option<Geometry>,
    opts: &ImageOptions,
) -> Result<(RgbImage, u64), ImageError> {
    let Some(g) = geom else {
        let hash = phash(&rgb);
        return Ok((rgb, hash));
    };
    let (dw, dh) = (f64::from(rgb.width()), f64::from(rgb.height()));
    let (sx, sy) = (dw / f64::from(w), dh / f64::from(h));
    let crop = g
        .crop
        .map(|(l, t, cw, ch)| (l * sx, t * sy, cw * sx, ch * sy));
    let (cw, ch) = crop.map_or((dw, dh), |(_, _, cw, ch)| (cw, ch));
    let (tw, th) = g.resize_to;
    let filter = if f64::from(tw) < cw || f64::from(th) < ch {
        opts.downscale_interpolation
    } else {
        opts.upscale_interpolation
    };
    let (scaled, hash) = match crop {
        // Hash the whole decoded image: the crop shows only part of it.
        Some(crop) => (
            resize_rgb(&rgb, Some(crop), tw, th, filter.algorithm())?,
            phash(&rgb),
        ),
        None if rgb.dimensions() == (tw, th) => {
            let hash = phash(&rgb);
            (rgb, hash)
        }
        None => {
            let scaled = resize_rgb(&rgb, None, tw, th, filter.algorithm())?;
            let hash = phash(&scaled);
            (scaled, hash)
        }
    };
    let out = match g.pad {
        Some((side, left, top)) => pad_on_white(&scaled, side, left, top),
        None => scaled,
    };
    Ok((out, hash))
}

/// `img` placed at (`left`, `top`) on a white `side`×`side` square, copied row by row
/// (`imageops::replace` goes pixel by pixel).
fn pad_on_white(img: &RgbImage, side: u32, left: u32, top: u32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (side, left, top) = (side as usize, left as usize, top as usize);
    let mut canvas = vec![255u8; side * side * 3];
    for (y, row) in img.as_raw().chunks_exact(w * 3).enumerate().take(h) {
        let start = ((top + y) * side + left) * 3;
        canvas[start..start + w * 3].copy_from_slice(row);
    }
    RgbImage::from_raw(side as u32, side as u32, canvas).expect("buffer sized for side² RGB")
}

/// Resamples `crop` of `src` (all of it when `None`) to `w`×`h`. The filter reads source pixels
/// around the crop too, so a crop resampled alone equals the same square cut from the whole
/// image resampled (img2dataset's order), without ever holding the whole scaled image.
fn resize_rgb(
    src: &RgbImage,
    crop: Option<SourceRect>,
    w: u32,
    h: u32,
    algorithm: fr::ResizeAlg,
) -> Result<RgbImage, ImageError> {
    let view =
        fr::images::ImageRef::new(src.width(), src.height(), src.as_raw(), fr::PixelType::U8x3)
            .map_err(|e| failed("resize", e))?;
    let mut dst = fr::images::Image::new(w, h, fr::PixelType::U8x3);
    let mut options = fr::ResizeOptions::new().resize_alg(algorithm);
    if let Some((left, top, cw, ch)) = crop {
        // Rounding may put the far edge a hair past the image, which the resizer refuses.
        let (sw, sh) = (f64::from(src.width()), f64::from(src.height()));
        let (left, top) = (left.clamp(0.0, sw - 1.0), top.clamp(0.0, sh - 1.0));
        options = options.crop(left, top, cw.min(sw - left), ch.min(sh - top));
    }
    fr::Resizer::new()
        .resize(&view, &mut dst, &options)
        .map_err(|e| failed("resize", e))?;
    Ok(RgbImage::from_raw(w, h, dst.into_vec()).expect("resizer output is w*h RGB"))
}

fn encode(rgb: &RgbImage, opts: &ImageOptions) -> Result<EncodedImage, ImageError> {
    let (w, h) = rgb.dimensions();
    let mut bytes = Vec::new();
    match opts.encode_format {
        // wit-jpeg's errors say what to do (an image too large for JPEG: resize it or write PNG).
        ImageFormat::Jpg => {
            bytes = wit_jpeg::encode_rgb(rgb.as_raw(), w, h, opts.encode_quality)
                .map_err(|e| ImageError::FailedToResize(e.to_string()))?
        }
        ImageFormat::Png => {
            use image::ImageEncoder;
            image::codecs::png::PngEncoder::new(&mut bytes)
                .write_image(rgb.as_raw(), w, h, image::ExtendedColorType::Rgb8)
                .map_err(|e| failed("cannot encode PNG", e))?;
        }
        ImageFormat::Webp => {
            image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
                .encode(rgb.as_raw(), w, h, image::ExtendedColorType::Rgb8)
                .map_err(|e| failed("cannot encode WebP", e))?;
        }
    }
    Ok(EncodedImage {
        bytes,
        format: opts.encode_format,
        width: w,
        height: h,
    })
}

/// 64-bit DCT perceptual hash (the classic pHash as in Python's `imagehash.phash`): box-downscale
/// to 32×32, greyscale, 2-D DCT-II, keep the 8×8 lowest frequencies, one bit per coefficient above
/// their median. Re-encoding and rescaling flip few bits; different images differ in ~32.
pub fn phash(rgb: &RgbImage) -> u64 {
    const N: usize = 32;
    const K: usize = 8;
    let small = if rgb.dimensions() == (N as u32, N as u32) {
        rgb.clone()
    } else {
        resize_rgb(
            rgb,
            None,
            N as u32,
            N as u32,
            fr::ResizeAlg::Convolution(fr::FilterType::Box),
        )
        .unwrap_or_else(|_| image::imageops::thumbnail(rgb, N as u32, N as u32))
    };
    let grey: Vec<f64> = small
        .pixels()
        .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
        .collect();
    let cos: Vec<f64> = (0..K * N)
        .map(|i| {
            let (k, n) = (i / N, i % N);
            (std::f64::consts::PI / N as f64 * (n as f64 + 0.5) * k as f64).cos()
        })
        .collect();
    // Rows first (K frequencies per row), then columns (K frequencies per column).
    let mut rows = vec![0.0; N * K];
    for y in 0..N {
        for k in 0..K {
            rows[y * K + k] = (0..N).map(|x| grey[y * N + x] * cos[k * N + x]).sum();
        }
    }
    let mut coeffs = [0.0f64; K * K];
    for ky in 0..K {
        for kx in 0..K {
            coeffs[ky * K + kx] = (0..N).map(|y| rows[y * K + kx] * cos[ky * N + y]).sum();
        }
    }
    let mut sorted = coeffs;
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[K * K / 2 - 1] + sorted[K * K / 2]) / 2.0;
    coeffs.iter().enumerate().fold(
        0u64,
        |acc, (i, &c)| if c > median { acc | 1 << i } else { acc },
    )
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
pub(crate) mod tests;
