//! img2dataset's resize arithmetic, computed in f64 and in source coordinates, so that no image
//! larger than the stored one is ever allocated: a 1×N strip under `center_crop` scales (in
//! img2dataset) to size × size·N before the square is cut; here only the square's part of the
//! source is resampled, and a mode whose *output* is too large is refused before decoding.

use wit_shards::ImageFormat;

use super::{ImageError, ImageOptions};

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

/// A rectangle of the source image in (fractional) source pixels: left, top, width, height.
pub type SourceRect = (f64, f64, f64, f64);

/// What [`geometry`] decided for one image: resample `crop` of the source (the whole image when
/// `None`) to `resize_to`, then optionally pad it onto a white square.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    /// The part of the source the stored image shows (center_crop): img2dataset's centred square
    /// of the scaled image, mapped back into source pixels.
    pub crop: Option<SourceRect>,
    /// Size of the resampled image (of `crop`, or of the whole image).
    pub resize_to: (u32, u32),
    /// Size the whole image has once scaled (clamped to `u32::MAX`: it is only compared with
    /// decoded sizes, to choose how far a JPEG may shrink in the DCT).
    pub scaled_whole: (u32, u32),
    /// Square side and the (left, top) offset of the scaled image on it (border).
    pub pad: Option<(u32, u32, u32)>,
}

impl Geometry {
    /// Size of the stored image.
    pub fn output_size(&self) -> (u32, u32) {
        match self.pad {
            Some((side, _, _)) => (side, side),
            None => self.resize_to,
        }
    }
}

/// img2dataset's geometry for a `w`×`h` image (albumentations `smallest_max_size` /
/// `longest_max_size`, `center_crop`, `pad` with the odd pixel at the bottom/right).
/// `Ok(None)` means the pixels stay exactly as they are; an error means the stored image would
/// be over `--max-pixels` or too large for the encoder, refused before anything is decoded.
pub fn geometry(w: u32, h: u32, opts: &ImageOptions) -> Result<Option<Geometry>, ImageError> {
    let size = opts.image_size.max(1);
    let by_short = match opts.resize_mode {
        ResizeMode::No => return Ok(None),
        ResizeMode::KeepRatio | ResizeMode::CenterCrop => true,
        ResizeMode::KeepRatioLargest | ResizeMode::Border => false,
    };
    let reference = if by_short { w.min(h) } else { w.max(h) };
    if opts.resize_only_if_bigger && reference <= size {
        return Ok(None);
    }
    // In f64: a 1×N strip scaled by its short side is size·N long, past u32 for large N.
    let side = f64::from(size);
    let scale = side / f64::from(reference);
    let scaled = |v: u32| (f64::from(v) * scale).round().max(1.0);
    let (rw, rh) = if w == reference {
        (side, scaled(h))
    } else {
        (scaled(w), side)
    };
    let scaled_whole = (clamp_u32(rw), clamp_u32(rh));
    if opts.resize_mode == ResizeMode::CenterCrop && (rw > side || rh > side) {
        // img2dataset's offsets in the scaled image (integer halves), mapped back to the source.
        let (x, y) = (((rw - side) / 2.0).floor(), ((rh - side) / 2.0).floor());
        let (fx, fy) = (rw / f64::from(w), rh / f64::from(h));
        check_output(side, side, opts)?;
        return Ok(Some(Geometry {
            crop: Some((x / fx, y / fy, side / fx, side / fy)),
            resize_to: (size, size),
            scaled_whole,
            pad: None,
        }));
    }
    let pad = opts.resize_mode == ResizeMode::Border && (rw < side || rh < side);
    if pad {
        check_output(side, side, opts)?;
    } else {
        check_output(rw, rh, opts)?;
    }
    // Both sides passed `check_output`, so they are within u32 (and the encoder's limit).
    let resize_to = (rw as u32, rh as u32);
    let g = Geometry {
        crop: None,
        resize_to,
        scaled_whole,
        pad: pad.then(|| (size, (size - resize_to.0) / 2, (size - resize_to.1) / 2)),
    };
    Ok((resize_to != (w, h) || g.pad.is_some()).then_some(g))
}

/// `v` as u32, the largest u32 when it is larger.
fn clamp_u32(v: f64) -> u32 {
    if v >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        v as u32
    }
}

/// The largest side each output encoding can store.
fn max_side(format: ImageFormat) -> u32 {
    match format {
        ImageFormat::Jpg => wit_jpeg::MAX_SIDE,
        // The WebP bitstream stores width - 1 and height - 1 in 14 bits.
        ImageFormat::Webp => 16_384,
        ImageFormat::Png => u32::MAX,
    }
}

/// Refuses an output of `w`×`h` pixels over `--max-pixels` or over the encoder's side limit.
fn check_output(w: f64, h: f64, opts: &ImageOptions) -> Result<(), ImageError> {
    let what = |w: f64, h: f64| {
        format!(
            "--resize-mode {} to --image-size {} would make a {w}x{h} image",
            mode_name(opts.resize_mode),
            opts.image_size
        )
    };
    if w * h > opts.max_pixels as f64 {
        return Err(ImageError::FailedToResize(format!(
            "{}, more pixels than --max-pixels {} (an extreme aspect ratio: use --resize-mode \
             center_crop or border, or --max-aspect-ratio to filter such images)",
            what(w, h),
            opts.max_pixels
        )));
    }
    let limit = max_side(opts.encode_format);
    if w > f64::from(limit) || h > f64::from(limit) {
        return Err(ImageError::FailedToResize(format!(
            "{}, larger than {}'s {limit} pixels per side (use --resize-mode center_crop or \
             border, or write PNG with --encode-format png)",
            what(w, h),
            opts.encode_format.ext()
        )));
    }
    Ok(())
}

/// The `--resize-mode` spelling of `mode`, for messages.
fn mode_name(mode: ResizeMode) -> &'static str {
    match mode {
        ResizeMode::No => "no",
        ResizeMode::KeepRatio => "keep_ratio",
        ResizeMode::KeepRatioLargest => "keep_ratio_largest",
        ResizeMode::CenterCrop => "center_crop",
        ResizeMode::Border => "border",
    }
}
