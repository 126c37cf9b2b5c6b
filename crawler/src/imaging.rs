//! Downloaded bytes → the image stored in a shard, with img2dataset's resize semantics.
//!
//! One synchronous, CPU-only entry point, [`process`], so the downloader can run it on a bounded
//! blocking pool. The order of work is chosen so a hostile or oversized file costs as little as
//! possible: magic bytes, then the header (dimensions, EXIF), the pixel limit and the size filters,
//! and only then the decode — a JPEG shrunk by 2, 4 or 8 in the DCT domain when the target leaves
//! room, so a 4000×3000 JPEG bound for 256 px is decoded at 500×375. JPEGs are decoded and
//! encoded by libjpeg-turbo (`wit-jpeg`), the other formats by the `image` crate.

use std::io::Cursor;

use fast_image_resize as fr;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use wit_shards::{EncodedImage, ImageFormat, Status};

/// img2dataset's resize modes; see [`geometry`] for the exact arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Keep the decoded image as it is.
    No,
    /// Scale so the short side equals `image_size`.
    KeepRatio,
    /// Scale so the long side equals `image_size`.
    KeepRatioLargest,
    /// Scale so the short side equals `image_size`, then cut the centred square.
    CenterCrop,
    /// Scale so the long side equals `image_size`, then pad to a white square.
    Border,
}

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
    /// Format of the downloaded bytes by magic: `jpeg`, `png`, `webp`, `gif` or `bmp`.
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

/// The input encodings wit decodes, recognised by magic bytes (never by `Content-Type`).
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
    /// Windows bitmap.
    Bmp,
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
        if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(SourceFormat::Gif)
        } else if bytes.starts_with(b"BM") && bytes.len() >= 26 {
            Some(SourceFormat::Bmp)
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
        }
    }

    fn image_format(self) -> image::ImageFormat {
        match self {
            SourceFormat::Jpeg => image::ImageFormat::Jpeg,
            SourceFormat::Png => image::ImageFormat::Png,
            SourceFormat::Webp => image::ImageFormat::WebP,
            SourceFormat::Gif => image::ImageFormat::Gif,
            SourceFormat::Bmp => image::ImageFormat::Bmp,
        }
    }
}

/// What [`geometry`] decided for one image: scale the whole image to `resize_to`, then optionally
/// cut `crop` (x, y, w, h) out of it or pad it onto a white square.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Size of the whole image after scaling.
    pub resize_to: (u32, u32),
    /// Rectangle kept after scaling (center_crop).
    pub crop: Option<(u32, u32, u32, u32)>,
    /// Square side and the (left, top) offset of the scaled image on it (border).
    pub pad: Option<(u32, u32, u32)>,
}

impl Geometry {
    /// Size of the stored image.
    pub fn output_size(&self) -> (u32, u32) {
        if let Some((_, _, w, h)) = self.crop {
            (w, h)
        } else if let Some((side, _, _)) = self.pad {
            (side, side)
        } else {
            self.resize_to
        }
    }
}

/// img2dataset's geometry for a `w`×`h` image (albumentations `smallest_max_size` /
/// `longest_max_size`, `center_crop`, `pad` with the odd pixel at the bottom/right).
/// `None` means the pixels stay exactly as they are.
pub fn geometry(w: u32, h: u32, opts: &ImageOptions) -> Option<Geometry> {
    let size = opts.image_size.max(1);
    let (short, long) = (w.min(h), w.max(h));
    let by_short = match opts.resize_mode {
        ResizeMode::No => return None,
        ResizeMode::KeepRatio | ResizeMode::CenterCrop => true,
        ResizeMode::KeepRatioLargest | ResizeMode::Border => false,
    };
    let reference = if by_short { short } else { long };
    if opts.resize_only_if_bigger && reference <= size {
        return None;
    }
    let scale = f64::from(size) / f64::from(reference);
    let scaled = |v: u32| ((f64::from(v) * scale).round() as u32).max(1);
    let resize_to = if w == reference {
        (size, scaled(h))
    } else {
        (scaled(w), size)
    };
    let (rw, rh) = resize_to;
    let crop = (opts.resize_mode == ResizeMode::CenterCrop && (rw > size || rh > size))
        .then(|| ((rw - size) / 2, (rh - size) / 2, size, size));
    let pad = (opts.resize_mode == ResizeMode::Border && (rw < size || rh < size))
        .then(|| (size, (size - rw) / 2, (size - rh) / 2));
    let g = Geometry {
        resize_to,
        crop,
        pad,
    };
    (g.resize_to != (w, h) || crop.is_some() || pad.is_some()).then_some(g)
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
            "not a JPEG, PNG, WebP, GIF or BMP image (first bytes {head:02x?})"
        ))
    })?;
    let mut decoder = open_decoder(bytes, source, opts.max_pixels)?;
    let (raw_w, raw_h) = decoder.dimensions();
    check_pixels(raw_w, raw_h, opts.max_pixels)?;
    let exif_raw = decoder.exif_metadata().ok().flatten();
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (w, h) = if swaps_axes(orientation) {
        (raw_h, raw_w)
    } else {
        (raw_w, raw_h)
    };
    check_filters(w, h, opts)?;
    let geom = geometry(w, h, opts);
    let decoded = decode(bytes, source, decoder, orientation, geom, opts.max_pixels)?;
    let changed = geom.is_some() || decoded.had_alpha || orientation != Orientation::NoTransforms;
    let (encoded, phash) = finish(decoded.rgb, geom, opts)?;
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
        exif: exif_raw.as_deref().and_then(exif_json),
        phash,
    })
}

fn failed(what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::FailedToResize(format!("{what}: {e}"))
}

fn open_decoder(
    bytes: &[u8],
    source: SourceFormat,
    max_pixels: u64,
) -> Result<impl ImageDecoder + '_, ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), source.image_format());
    let mut limits = image::Limits::default();
    // Room for 16-bit RGBA at the pixel limit; the pixel count itself is checked by us.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(512 << 20));
    reader.limits(limits);
    reader
        .into_decoder()
        .map_err(|e| failed(&format!("cannot read the {} header", source.name()), e))
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
    // The target is in displayed (oriented) axes; the DCT scales the stored ones.
    let min_size = geom.map(|g| {
        let (w, h) = g.resize_to;
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
fn finish(
    rgb: RgbImage,
    geom: Option<Geometry>,
    opts: &ImageOptions,
) -> Result<(RgbImage, u64), ImageError> {
    let Some(g) = geom else {
        let hash = phash(&rgb);
        return Ok((rgb, hash));
    };
    let scaled = if rgb.dimensions() == g.resize_to {
        rgb
    } else {
        // A DCT-scaled JPEG may arrive smaller than the original, so compare with what was decoded.
        let filter = if g.resize_to.0 < rgb.width() || g.resize_to.1 < rgb.height() {
            opts.downscale_interpolation
        } else {
            opts.upscale_interpolation
        };
        resize_rgb(&rgb, g.resize_to.0, g.resize_to.1, filter.algorithm())?
    };
    let hash = phash(&scaled);
    let out = if let Some((x, y, w, h)) = g.crop {
        image::imageops::crop_imm(&scaled, x, y, w, h).to_image()
    } else if let Some((side, left, top)) = g.pad {
        pad_on_white(&scaled, side, left, top)
    } else {
        scaled
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

fn resize_rgb(
    src: &RgbImage,
    w: u32,
    h: u32,
    algorithm: fr::ResizeAlg,
) -> Result<RgbImage, ImageError> {
    let view =
        fr::images::ImageRef::new(src.width(), src.height(), src.as_raw(), fr::PixelType::U8x3)
            .map_err(|e| failed("resize", e))?;
    let mut dst = fr::images::Image::new(w, h, fr::PixelType::U8x3);
    let options = fr::ResizeOptions::new().resize_alg(algorithm);
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

/// Renders raw EXIF (TIFF structure, optionally after an `Exif\0\0` prefix) as a JSON object of
/// `"<IFD> <Tag>": "<value>"`, the key style of exifread that img2dataset writes.
fn exif_json(raw: &[u8]) -> Option<String> {
    let tiff = raw.strip_prefix(b"Exif\0\0").unwrap_or(raw);
    let exif = exif::Reader::new().read_raw(tiff.to_vec()).ok()?;
    let mut map = serde_json::Map::new();
    for field in exif.fields() {
        if field.tag == exif::Tag::MakerNote {
            continue;
        }
        let group = match field.tag.context() {
            _ if field.ifd_num == exif::In::THUMBNAIL => "Thumbnail",
            exif::Context::Tiff => "Image",
            exif::Context::Exif => "EXIF",
            exif::Context::Gps => "GPS",
            exif::Context::Interop => "Interoperability",
            _ => "Other",
        };
        let value = field.display_value().with_unit(&exif).to_string();
        map.insert(format!("{group} {}", field.tag), value.trim().into());
    }
    serde_json::to_string(&map).ok()
}

#[cfg(test)]
pub(crate) mod tests {
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
        assert_eq!(geometry(400, 200, &opts(ResizeMode::No, 100)), None);
        let g = geometry(400, 200, &opts(ResizeMode::KeepRatio, 100)).unwrap();
        assert_eq!((g.resize_to, g.crop, g.pad), ((200, 100), None, None));
        let g = geometry(400, 200, &opts(ResizeMode::KeepRatioLargest, 100)).unwrap();
        assert_eq!((g.resize_to, g.output_size()), ((100, 50), (100, 50)));
        let g = geometry(400, 200, &opts(ResizeMode::CenterCrop, 100)).unwrap();
        assert_eq!((g.resize_to, g.crop), ((200, 100), Some((50, 0, 100, 100))));
        let g = geometry(200, 400, &opts(ResizeMode::Border, 100)).unwrap();
        assert_eq!((g.resize_to, g.pad), ((50, 100), Some((100, 25, 0))));
        let g = geometry(101, 50, &opts(ResizeMode::Border, 100)).unwrap();
        assert_eq!((g.resize_to, g.pad), ((100, 50), Some((100, 0, 25))));
        // Upscaling happens unless --resize-only-if-bigger.
        let g = geometry(80, 40, &opts(ResizeMode::Border, 100)).unwrap();
        assert_eq!((g.resize_to, g.output_size()), ((100, 50), (100, 100)));
        let only_bigger = ImageOptions {
            resize_only_if_bigger: true,
            ..opts(ResizeMode::Border, 100)
        };
        assert_eq!(geometry(80, 40, &only_bigger), None);
        let only_bigger_crop = ImageOptions {
            resize_mode: ResizeMode::CenterCrop,
            ..only_bigger
        };
        assert_eq!(geometry(300, 90, &only_bigger_crop), None);
        // Already the target: nothing to do.
        assert_eq!(geometry(100, 100, &opts(ResizeMode::Border, 100)), None);
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
        let g = geometry(1024, 768, &o).unwrap();
        let scaled = decode_jpeg(&jpeg, Orientation::NoTransforms, Some(g), 1 << 30).unwrap();
        // A rotated photo is scaled in its stored axes: 1600×400 shown as 400×1600, bound for
        // 40×160, shrinks by 8 (to 200×50), not by 2 as the displayed axes would allow.
        let wide = encoded(&halves(1600, 400), image::ImageFormat::Jpeg);
        let tall = geometry(400, 1600, &opts(ResizeMode::KeepRatioLargest, 160)).unwrap();
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
        let reference =
            image::imageops::resize(&full, 128, 96, image::imageops::FilterType::Lanczos3);
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
                .contains("not a JPEG, PNG, WebP, GIF or BMP"),
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
}
