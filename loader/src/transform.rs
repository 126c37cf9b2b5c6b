//! Decode → crop → resize → normalise for one sample. Crops are computed in source pixels and
//! resized straight to the target square in one convolution pass (fast_image_resize, Catmull-Rom
//! = PIL's BICUBIC), and large JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain when
//! the crop still has enough pixels.

use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// CLIP's per-channel mean (RGB), for normalisation.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation (RGB), for normalisation.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Pillow's default decompression-bomb limit: refuse larger images before decoding them.
const MAX_PIXELS: u64 = 89_478_485;

/// The largest decode buffer a [`Transformer`] keeps for the next image (a 2,048² RGB photo).
const MAX_KEPT_DECODE: usize = 2048 * 2048 * 3;

/// Evaluation crops resize the whole image and then cut the square, as torchvision does, only
/// while each intermediate image has at most this many target squares' pixels (or no more
/// pixels than the decoded image). Past that — a 1×N strip scales to target × target·N — the
/// square is resampled straight from its part of the source, the way training crops are.
const MAX_CENTER_RESIZE_SQUARES: u64 = 16;

/// How a training (or eval) square is cut from an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CropMode {
    /// The CLIP paper's augmentation: resize the short side to 8/7 of the target, take a random
    /// target-sized square.
    Clip,
    /// open_clip's RandomResizedCrop(scale 0.9–1.0, ratio 3/4–4/3, bicubic), with torchvision's
    /// center-crop fallback after 10 tries.
    #[default]
    Rrc,
    /// Evaluation: resize the short side to the target (bicubic), center crop.
    Center,
}

impl CropMode {
    /// Short side (in source pixels) the crop needs before it would be upsampled: a JPEG may be
    /// DCT-downscaled as long as its short side stays at or above this.
    fn needed_short_side(self, target: u32) -> u32 {
        let t = target as f64;
        let need = match self {
            CropMode::Center => t,
            CropMode::Clip => t * 8.0 / 7.0,
            // The smallest RRC crop side is sqrt(0.9 * 3/4) of the short side.
            CropMode::Rrc => t / (0.9f64 * 0.75).sqrt(),
        };
        need.ceil() as u32
    }
}

/// What the loader hands to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ImageOutput {
    /// f32, normalised with CLIP's mean/std on the CPU.
    #[default]
    Normalized,
    /// Raw u8 RGB: 4× fewer bytes to the device; normalise there.
    U8,
}

/// A crop rectangle in source pixels (may be fractional: resize-then-crop expressed as one pass).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    /// Left edge, source pixels.
    pub left: f64,
    /// Top edge, source pixels.
    pub top: f64,
    /// Width, source pixels.
    pub width: f64,
    /// Height, source pixels.
    pub height: f64,
    /// Whether resampling must stay inside the box (torchvision crops then resizes) rather than
    /// use neighbouring pixels (resize then crop).
    pub clamp_to_box: bool,
}

/// torchvision's `RandomResizedCrop.get_params` (scale 0.9–1.0, ratio 3/4–4/3), integer box.
pub fn rrc_box(width: u32, height: u32, rng: &mut impl Rng) -> CropBox {
    let (w, h) = (width as f64, height as f64);
    let area = w * h;
    let (lr0, lr1) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target_area = area * rng.random_range(0.9..=1.0);
        let aspect = rng.random_range(lr0..=lr1).exp();
        let cw = (target_area * aspect).sqrt().round();
        let ch = (target_area / aspect).sqrt().round();
        if cw > 0.0 && cw <= w && ch > 0.0 && ch <= h {
            let top = rng.random_range(0..=(height - ch as u32)) as f64;
            let left = rng.random_range(0..=(width - cw as u32)) as f64;
            return int_box(left, top, cw, ch);
        }
    }
    let ratio = w / h;
    let (cw, ch) = if ratio < 3.0 / 4.0 {
        (w, (w / (3.0 / 4.0)).round())
    } else if ratio > 4.0 / 3.0 {
        ((h * 4.0 / 3.0).round(), h)
    } else {
        (w, h)
    };
    int_box(((w - cw) / 2.0).floor(), ((h - ch) / 2.0).floor(), cw, ch)
}

fn int_box(left: f64, top: f64, width: f64, height: f64) -> CropBox {
    CropBox {
        left,
        top,
        width,
        height,
        clamp_to_box: true,
    }
}

/// The CLIP paper's crop: short side resized to 8/7·target, then a random target square.
pub fn clip_box(width: u32, height: u32, target: u32, rng: &mut impl Rng) -> CropBox {
    let short = width.min(height) as f64;
    let resized_short = (target as f64 * 8.0 / 7.0).ceil();
    let f = resized_short / short;
    // In u64: a 1×N strip's long side is N·target·8/7 once resized, past u32.
    let resized = |v: u32| ((v as f64 * f).round() as u64).max(u64::from(target));
    let (rw, rh) = (resized(width), resized(height));
    let x = rng.random_range(0..=(rw - u64::from(target))) as f64;
    let y = rng.random_range(0..=(rh - u64::from(target))) as f64;
    let (fx, fy) = (rw as f64 / width as f64, rh as f64 / height as f64);
    CropBox {
        left: x / fx,
        top: y / fy,
        width: target as f64 / fx,
        height: target as f64 / fy,
        clamp_to_box: false,
    }
}

/// torchvision's `Resize(target)` size: short side to target, long side truncated. In f64: the
/// long side of a 1×N strip is target·N, past u32.
fn center_resized(width: u32, height: u32, target: u32) -> (f64, f64) {
    let (w, h, t) = (width as f64, height as f64, target as f64);
    if width <= height {
        (t, (t * h / w).floor())
    } else {
        ((t * w / h).floor(), t)
    }
}

/// torchvision's `Resize(target)` followed by `CenterCrop(target)`, as a box in source pixels.
pub fn center_box(width: u32, height: u32, target: u32) -> CropBox {
    let (nw, nh) = center_resized(width, height, target);
    let t = target as f64;
    let off_x = ((nw - t) / 2.0).round();
    let off_y = ((nh - t) / 2.0).round();
    let (fx, fy) = (nw / width as f64, nh / height as f64);
    CropBox {
        left: off_x / fx,
        top: off_y / fy,
        width: t / fx,
        height: t / fy,
        clamp_to_box: false,
    }
}

/// Why a sample produced no image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not a decodable JPEG/PNG/WebP.
    Corrupt(String),
    /// More pixels than Pillow's decompression-bomb limit.
    TooLarge,
}

/// An RGB image, interleaved: the JPEG decoder's type, so its output needs no conversion.
pub use wit_jpeg::Rgb;

/// Decodes `bytes` to RGB. JPEGs go to libjpeg-turbo (`wit-jpeg`), shrunk by 8, 4 or 2 in the
/// DCT domain while the short side stays at least `min_short`; CMYK and YCCK JPEGs and the other
/// formats go to the `image` crate. Either way an image over [`MAX_PIXELS`] is refused from its
/// header, before anything is allocated for its pixels.
pub fn decode_rgb(bytes: &[u8], min_short: u32) -> Result<Rgb, DecodeError> {
    decode_rgb_into(bytes, min_short, Vec::new())
}

/// [`decode_rgb`], writing a JPEG's pixels into `buffer` (an earlier image's, whatever its
/// length: bytes it already has are overwritten, not zeroed first).
fn decode_rgb_into(bytes: &[u8], min_short: u32, buffer: Vec<u8>) -> Result<Rgb, DecodeError> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let options = wit_jpeg::DecodeOptions {
            min_size: Some((min_short, min_short)),
            max_pixels: MAX_PIXELS,
            max_scans: wit_jpeg::MAX_SCANS,
        };
        match wit_jpeg::decode_rgb(bytes, options, buffer) {
            Ok(rgb) => return Ok(rgb),
            Err(wit_jpeg::JpegError::Unsupported(_)) => {}
            Err(wit_jpeg::JpegError::TooLarge { .. }) => return Err(DecodeError::TooLarge),
            Err(e) => return Err(DecodeError::Corrupt(e.to_string())),
        }
    }
    let img = decode_other(bytes)?;
    let (width, height) = (img.width(), img.height());
    // Direct loops for the common 8-bit layouts: `image`'s generic conversion goes through f32
    // per sample and cost as much as a third of the JPEG decode on greyscale images. Alpha is
    // dropped, as Pillow's `convert("RGB")` does.
    let pixels = match img {
        image::DynamicImage::ImageRgb8(rgb) => rgb.into_raw(),
        image::DynamicImage::ImageLuma8(grey) => grey_to_rgb(grey.as_raw()),
        image::DynamicImage::ImageRgba8(rgba) => drop_alpha(rgba.as_raw()),
        other => other.into_rgb8().into_raw(),
    };
    Ok(Rgb {
        width,
        height,
        pixels,
    })
}

/// Decodes a non-JPEG (or a JPEG libjpeg-turbo leaves to `image`): the header first, so a file
/// over [`MAX_PIXELS`] costs nothing, then the pixels under `image`'s allocation limit.
fn decode_other(bytes: &[u8]) -> Result<image::DynamicImage, DecodeError> {
    use image::ImageDecoder;
    let corrupt = |e: image::ImageError| DecodeError::Corrupt(e.to_string());
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let mut limits = image::Limits::default();
    // Room for 16-bit RGBA at the pixel limit; the pixel count itself is checked below.
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(DecodeError::TooLarge);
    }
    image::DynamicImage::from_decoder(decoder).map_err(corrupt)
}

/// Grey samples repeated into R, G and B.
fn grey_to_rgb(grey: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; grey.len() * 3];
    for (px, &v) in out.chunks_exact_mut(3).zip(grey) {
        px.copy_from_slice(&[v, v, v]);
    }
    out
}

/// RGBA with the alpha channel removed.
fn drop_alpha(rgba: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; rgba.len() / 4 * 3];
    for (dst, px) in out.chunks_exact_mut(3).zip(rgba.chunks_exact(4)) {
        dst.copy_from_slice(&px[..3]);
    }
    out
}

/// Per-thread transform state: the resizer keeps its scratch buffers between samples.
pub struct Transformer {
    resizer: Resizer,
    target: u32,
    mode: CropMode,
    /// A finished crop's buffer, given back for the next crop to write into.
    spare: Option<Vec<u8>>,
    /// A cropped image's pixels, given back for the next JPEG to decode into.
    decoded: Vec<u8>,
}

impl Transformer {
    /// A transform to `target`×`target` squares with `mode` crops.
    pub fn new(target: u32, mode: CropMode) -> Self {
        Transformer {
            resizer: Resizer::new(),
            target,
            mode,
            spare: None,
            decoded: Vec::new(),
        }
    }

    /// Decodes `bytes` ([`decode_rgb`]) into the buffer of the image last given back with
    /// [`Transformer::recycle_decoded`]: no fresh, zero-filled allocation per sample.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Rgb, DecodeError> {
        let buffer = std::mem::take(&mut self.decoded);
        decode_rgb_into(bytes, self.min_decode_short_side(), buffer)
    }

    /// Gives back a decoded image once its crop is cut. A buffer over [`MAX_KEPT_DECODE`] bytes
    /// is freed instead, so one huge image does not pin its memory in every worker.
    pub fn recycle_decoded(&mut self, img: Rgb) {
        if img.pixels.capacity() <= MAX_KEPT_DECODE {
            self.decoded = img.pixels;
        }
    }

    /// Gives back the buffer of an earlier [`Transformer::crop_resize`] result once its pixels
    /// are copied out: the next crop, whatever its mode, is written into it instead of a fresh,
    /// zero-filled allocation.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        self.spare = Some(buffer);
    }

    /// The short side a decoder should keep (see [`decode_rgb`]).
    pub fn min_decode_short_side(&self) -> u32 {
        self.mode.needed_short_side(self.target)
    }

    /// The crop box for an image of this size, drawing randomness from `rng`.
    pub fn crop_box(&self, width: u32, height: u32, rng: &mut impl Rng) -> CropBox {
        match self.mode {
            CropMode::Rrc => rrc_box(width, height, rng),
            CropMode::Clip => clip_box(width, height, self.target, rng),
            CropMode::Center => center_box(width, height, self.target),
        }
    }

    /// Crops and resizes `img` to the target square, interleaved RGB u8.
    pub fn crop_resize(&mut self, img: &Rgb, b: CropBox) -> Result<Vec<u8>, DecodeError> {
        let t = self.target;
        let identity = b.left == 0.0
            && b.top == 0.0
            && b.width == t as f64
            && b.height == t as f64
            && img.width == t
            && img.height == t;
        if identity {
            let mut out = self.spare.take().unwrap_or_default();
            out.clear();
            out.extend_from_slice(&img.pixels);
            return Ok(out);
        }
        let err = |e: &dyn std::fmt::Display| DecodeError::Corrupt(e.to_string());
        let src = ImageRef::new(img.width, img.height, &img.pixels, PixelType::U8x3)
            .map_err(|e| err(&e))?;
        if self.mode == CropMode::Center && self.center_fits(img) {
            return self.resize_then_center(&src, img);
        }
        // A recycled buffer already has the length: every byte is overwritten, none zeroed.
        let mut buffer = self.spare.take().unwrap_or_default();
        buffer.resize(t as usize * t as usize * 3, 0);
        let mut dst = Image::from_vec_u8(t, t, buffer, PixelType::U8x3).map_err(|e| err(&e))?;
        let alg = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
        if b.clamp_to_box {
            let view = CroppedImage::new(
                &src,
                b.left as u32,
                b.top as u32,
                b.width as u32,
                b.height as u32,
            )
            .map_err(|e| err(&e))?;
            self.resizer
                .resize(&view, &mut dst, &alg)
                .map_err(|e| err(&e))?;
        } else {
            // Rounding may put the far edge a hair past the image, which the resizer refuses.
            let (w, h) = (img.width as f64, img.height as f64);
            let (left, top) = (b.left.clamp(0.0, w - 1.0), b.top.clamp(0.0, h - 1.0));
            let opts = alg.crop(left, top, b.width.min(w - left), b.height.min(h - top));
            self.resizer
                .resize(&src, &mut dst, &opts)
                .map_err(|e| err(&e))?;
        }
        Ok(dst.into_vec())
    }

    /// Whether [`Transformer::resize_then_center`]'s intermediate images (`nw`×`h`, then
    /// `nw`×`nh`) stay within [`MAX_CENTER_RESIZE_SQUARES`] target squares or the decoded size.
    fn center_fits(&self, img: &Rgb) -> bool {
        let (nw, nh) = center_resized(img.width, img.height, self.target);
        let t = self.target as f64;
        let budget =
            (MAX_CENTER_RESIZE_SQUARES as f64 * t * t).max(img.width as f64 * img.height as f64);
        nw * img.height as f64 <= budget && nw * nh <= budget
    }

    /// Evaluation crops resize the whole image, then cut the square, exactly as torchvision on
    /// PIL does (a single cropped pass differs at the square's edges); only called when
    /// [`Transformer::center_fits`], so both sizes fit u32.
    fn resize_then_center(&mut self, src: &ImageRef, img: &Rgb) -> Result<Vec<u8>, DecodeError> {
        let t = self.target;
        let (nw, nh) = center_resized(img.width, img.height, t);
        let (nw, nh) = (nw as u32, nh as u32);
        // Pillow resamples horizontally first and clips to u8 between passes; do the same.
        let mut resized = img.pixels.clone();
        if nw != img.width {
            resized = self.resize_to(src, nw, img.height)?;
        }
        if nh != img.height {
            let mid = ImageRef::new(nw, img.height, &resized, PixelType::U8x3)
                .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
            resized = self.resize_to(&mid, nw, nh)?;
        }
        let off_x = ((nw - t) as f64 / 2.0).round() as usize;
        let off_y = ((nh - t) as f64 / 2.0).round() as usize;
        let (row, t) = (nw as usize * 3, t as usize);
        let mut out = self.spare.take().unwrap_or_default();
        out.clear();
        out.reserve(t * t * 3);
        for y in off_y..off_y + t {
            out.extend_from_slice(&resized[y * row + off_x * 3..y * row + (off_x + t) * 3]);
        }
        Ok(out)
    }

    fn resize_to(&mut self, src: &ImageRef, w: u32, h: u32) -> Result<Vec<u8>, DecodeError> {
        let mut dst = Image::new(w, h, PixelType::U8x3);
        let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
        self.resizer
            .resize(src, &mut dst, &opts)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        Ok(dst.into_vec())
    }
}

/// Interleaved RGB u8 → planar CHW f32, `(v/255 - mean) / std` per channel, appended to `out`.
///
/// Workers hand over the resized crop as it is (interleaved u8, a quarter of the bytes of f32)
/// and this runs once per sample while the batch is assembled, writing straight into the batch
/// buffer: one pass from crop to tensor, no per-sample planar or f32 buffer. The formula is
/// folded into one multiply and one add per value (within 1e-6 of the two divisions).
pub fn normalize_into(rgb: &[u8], out: &mut Vec<f32>) {
    let scale = CLIP_STD.map(|std| 1.0 / (255.0 * std));
    let offset = [0, 1, 2].map(|c| -CLIP_MEAN[c] / CLIP_STD[c]);
    deinterleave(rgb, out, |c, v| f32::from(v) * scale[c] + offset[c]);
}

/// Interleaved RGB u8 → planar CHW u8, appended to `out` (the loader's u8 output).
pub fn planar_into(rgb: &[u8], out: &mut Vec<u8>) {
    deinterleave(rgb, out, |_, v| v);
}

/// [`deinterleave_into`], compiled for AVX2 where the CPU has it: the default x86-64 target has
/// only SSE2, whose lack of byte shuffles keeps LLVM from vectorising the three-channel split.
fn deinterleave<T>(rgb: &[u8], out: &mut Vec<T>, map: impl Fn(usize, u8) -> T) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { deinterleave_avx2(rgb, out, map) };
    }
    deinterleave_into(rgb, out, map);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn deinterleave_avx2<T>(rgb: &[u8], out: &mut Vec<T>, map: impl Fn(usize, u8) -> T) {
    deinterleave_into(rgb, out, map);
}

/// Splits interleaved RGB into three planes, mapping each value by its channel, appended to
/// `out` without zero-filling it first.
#[inline(always)]
fn deinterleave_into<T>(rgb: &[u8], out: &mut Vec<T>, map: impl Fn(usize, u8) -> T) {
    let (n, plane) = (rgb.len() / 3 * 3, rgb.len() / 3);
    out.reserve(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    let (r, gb) = spare.split_at_mut(plane);
    let (g, b) = gb.split_at_mut(plane);
    for (((px, r), g), b) in rgb.chunks_exact(3).zip(r).zip(g).zip(b) {
        r.write(map(0, px[0]));
        g.write(map(1, px[1]));
        b.write(map(2, px[2]));
    }
    let len = out.len() + n;
    // SAFETY: the loop wrote all `n` values after the old length (`plane` pixels per plane).
    unsafe { out.set_len(len) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_recycled_buffer_is_overwritten_whole() {
        // 48×48 under a center crop to 48 takes the unresized path.
        for (w, h) in [(97u32, 61u32), (48, 48)] {
            let pixels = (0..w * h * 3).map(|i| (i * 31 % 251) as u8).collect();
            let img = Rgb {
                width: w,
                height: h,
                pixels,
            };
            for mode in [CropMode::Rrc, CropMode::Clip, CropMode::Center] {
                let mut fresh = Transformer::new(48, mode);
                let b = fresh.crop_box(w, h, &mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
                let want = fresh.crop_resize(&img, b).unwrap();
                let mut reused = Transformer::new(48, mode);
                reused.recycle(vec![0xAB; 48 * 48 * 3 + 100]);
                let got = reused.crop_resize(&img, b).unwrap();
                assert_eq!(got, want, "{w}x{h} {mode:?}");
            }
        }
    }

    #[test]
    fn strips_are_cropped_from_their_source_in_every_mode() {
        // torchvision's Resize(224) makes a 1×200,000 strip 224×44,800,000 (30 GB of RGB).
        for (w, h) in [(1u32, 200_000u32), (200_000, 1)] {
            let pixels = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
            let img = Rgb {
                width: w,
                height: h,
                pixels,
            };
            for mode in [CropMode::Rrc, CropMode::Clip, CropMode::Center] {
                let mut t = Transformer::new(224, mode);
                let b = t.crop_box(w, h, &mut rand_chacha::ChaCha8Rng::seed_from_u64(5));
                assert!(
                    b.left >= 0.0 && b.left + b.width <= w as f64 + 1e-6,
                    "{b:?}"
                );
                assert!(b.top >= 0.0 && b.top + b.height <= h as f64 + 1e-6, "{b:?}");
                let out = t.crop_resize(&img, b).unwrap();
                assert_eq!(out.len(), 224 * 224 * 3, "{w}x{h} {mode:?}");
            }
        }
    }

    #[test]
    fn a_header_over_the_pixel_cap_is_refused_before_decoding() {
        // A PNG header saying 50,000×50,000 (7.5 GB of RGB) over a few bytes of data.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
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
        chunk(b"IHDR", &ihdr);
        chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        chunk(b"IEND", &[]);
        assert_eq!(decode_rgb(&png, 224).unwrap_err(), DecodeError::TooLarge);
    }

    #[test]
    fn planes_are_split_and_appended_alike_with_and_without_avx2() {
        let rgb: Vec<u8> = (0..3 * 37).map(|i| (i * 7 % 256) as u8).collect();
        let mut dispatched = vec![9u8];
        planar_into(&rgb, &mut dispatched);
        let mut portable = vec![9u8];
        deinterleave_into(&rgb, &mut portable, |_, v| v);
        assert_eq!(dispatched, portable);
        let reds: Vec<u8> = rgb.iter().step_by(3).copied().collect();
        let blues: Vec<u8> = rgb.iter().skip(2).step_by(3).copied().collect();
        assert_eq!(portable[1..38], reds[..]);
        assert_eq!(portable[75..], blues[..]);

        let mut normalised = vec![0.5f32];
        normalize_into(&rgb, &mut normalised);
        let want: Vec<f32> = [0.5]
            .into_iter()
            .chain((0..rgb.len()).map(|i| {
                let c = i / 37;
                (portable[1 + i] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
            }))
            .collect();
        assert_eq!(normalised.len(), want.len());
        for (got, want) in normalised.iter().zip(&want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
