//! Image processing flags shared by `wit download` and `wit crawl --download`, with
//! img2dataset's flag names and defaults so its users can switch without relearning.

use wit_crawler::filter::{
    CaptionFilter, CaptionFilterConfig, ExactDedup, NearDupIndex, RepeatCap,
};
use wit_crawler::imaging::{ImageOptions, Interpolation, ResizeMode};
use wit_shards::ImageFormat;

/// How stored images are filtered, resized and encoded.
#[derive(clap::Args, Debug, Clone)]
pub struct ImageArgs {
    /// Target side in pixels.
    #[arg(long, default_value_t = 256)]
    pub image_size: u32,
    /// no: keep size; keep_ratio: short side = size; keep_ratio_largest: long side = size;
    /// center_crop: short side = size then centred square; border: long side = size, padded
    /// to a white square.
    #[arg(long, value_enum, default_value = "border")]
    pub resize_mode: ResizeModeArg,
    /// Only downscale: images already within --image-size keep their size.
    #[arg(long)]
    pub resize_only_if_bigger: bool,
    /// Filter for images scaled up (lanczos is sharp; img2dataset's default too).
    #[arg(long, value_enum, default_value = "lanczos")]
    pub upscale_interpolation: InterpolationArg,
    /// Filter for images scaled down (area averages the pixels each output pixel covers: no
    /// aliasing, and a sixth of lanczos's taps per output pixel; img2dataset's default).
    #[arg(long, value_enum, default_value = "area")]
    pub downscale_interpolation: InterpolationArg,
    /// Encoding of the stored images.
    #[arg(long, value_enum, default_value = "jpg")]
    pub encode_format: EncodeFormatArg,
    /// JPEG quality (1-100).
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub encode_quality: u8,
    /// Store the downloaded bytes unchanged when no pixel would change and they are
    /// JPEG/PNG/WebP (the member extension follows the bytes, not --encode-format).
    #[arg(long)]
    pub skip_reencode: bool,
    /// Refuse images with more pixels than this, from the header, before decoding.
    #[arg(long, default_value_t = 89_478_485)]
    pub max_pixels: u64,
    /// Drop images whose short side is under this many pixels (status `filtered`).
    #[arg(long, default_value_t = 0)]
    pub min_image_size: u32,
    /// Drop images with a larger area (width × height) than this.
    #[arg(long)]
    pub max_image_area: Option<u64>,
    /// Drop images whose long side / short side is larger than this.
    #[arg(long)]
    pub max_aspect_ratio: Option<f64>,
    /// Drop downloaded bodies smaller than this many bytes (spacers, tracking pixels).
    #[arg(long, default_value_t = 0)]
    pub min_image_bytes: u64,
}

/// `--resize-mode` values (img2dataset's spelling).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
#[clap(rename_all = "snake_case")]
pub enum ResizeModeArg {
    /// Keep the size.
    No,
    /// Short side = size.
    KeepRatio,
    /// Long side = size.
    KeepRatioLargest,
    /// Short side = size, then the centred square.
    CenterCrop,
    /// Long side = size, padded to a white square.
    Border,
}

/// `--upscale-interpolation` / `--downscale-interpolation` values (img2dataset's spelling).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterpolationArg {
    /// The nearest source pixel.
    Nearest,
    /// Bilinear.
    Linear,
    /// Bicubic (Catmull-Rom).
    Cubic,
    /// Mean of the covered source pixels (OpenCV's INTER_AREA).
    Area,
    /// Lanczos, 3 lobes.
    Lanczos,
}

impl From<InterpolationArg> for Interpolation {
    fn from(arg: InterpolationArg) -> Self {
        match arg {
            InterpolationArg::Nearest => Interpolation::Nearest,
            InterpolationArg::Linear => Interpolation::Linear,
            InterpolationArg::Cubic => Interpolation::Cubic,
            InterpolationArg::Area => Interpolation::Area,
            InterpolationArg::Lanczos => Interpolation::Lanczos,
        }
    }
}

/// `--encode-format` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeFormatArg {
    /// JPEG (SIMD encoder).
    Jpg,
    /// PNG.
    Png,
    /// Lossless WebP.
    Webp,
}

impl ImageArgs {
    /// The library options these flags describe.
    pub fn to_options(&self) -> ImageOptions {
        ImageOptions {
            image_size: self.image_size,
            resize_mode: match self.resize_mode {
                ResizeModeArg::No => ResizeMode::No,
                ResizeModeArg::KeepRatio => ResizeMode::KeepRatio,
                ResizeModeArg::KeepRatioLargest => ResizeMode::KeepRatioLargest,
                ResizeModeArg::CenterCrop => ResizeMode::CenterCrop,
                ResizeModeArg::Border => ResizeMode::Border,
            },
            resize_only_if_bigger: self.resize_only_if_bigger,
            upscale_interpolation: self.upscale_interpolation.into(),
            downscale_interpolation: self.downscale_interpolation.into(),
            encode_format: match self.encode_format {
                EncodeFormatArg::Jpg => ImageFormat::Jpg,
                EncodeFormatArg::Png => ImageFormat::Png,
                EncodeFormatArg::Webp => ImageFormat::Webp,
            },
            encode_quality: self.encode_quality,
            skip_reencode: self.skip_reencode,
            max_pixels: self.max_pixels,
            min_image_size: self.min_image_size,
            max_image_area: self.max_image_area,
            max_aspect_ratio: self.max_aspect_ratio,
            min_bytes: self.min_image_bytes,
        }
    }
}

/// Caption and duplicate filters shared by `wit download`, `wit crawl` and `wit curate`.
#[derive(clap::Args, Debug, Clone)]
pub struct FilterArgs {
    /// Drop captions shorter than this many characters.
    #[arg(long, default_value_t = 0)]
    pub min_caption_chars: usize,
    /// Drop captions longer than this many characters.
    #[arg(long)]
    pub max_caption_chars: Option<usize>,
    /// Drop captions with fewer words.
    #[arg(long, default_value_t = 0)]
    pub min_caption_words: usize,
    /// Drop captions with more words.
    #[arg(long)]
    pub max_caption_words: Option<usize>,
    /// Drop alts that say nothing: file names, URLs, "image", "logo", "icon", "spacer",
    /// "banner", digits only.
    #[arg(long)]
    pub drop_boilerplate_captions: bool,
    /// Keep only captions in these languages (ISO 639-1 codes, comma-separated); the detected
    /// language is recorded per pair.
    #[arg(long, value_delimiter = ',')]
    pub languages: Vec<String>,
    /// Let the same alt text (case and spacing folded) through at most this many times.
    #[arg(long)]
    pub max_caption_repeats: Option<u32>,
}

/// Image duplicate detection flags (`wit download`, `wit crawl --download`).
#[derive(clap::Args, Debug, Clone)]
pub struct DedupArgs {
    /// Image duplicates: none; exact (same bytes, BLAKE3) are dropped; near also records
    /// `dup_of` for images within --near-dup-distance bits of perceptual hash.
    #[arg(long, value_enum, default_value = "none")]
    pub dedup: DedupMode,
    /// Hamming distance (bits of the 64-bit perceptual hash) that counts as a near duplicate.
    #[arg(long, default_value_t = 6)]
    pub near_dup_distance: u32,
}

/// `--dedup` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupMode {
    /// No duplicate detection.
    None,
    /// Drop exact byte duplicates.
    Exact,
    /// Drop exact duplicates and record near duplicates as `dup_of`.
    Near,
}

/// Images remembered by the duplicate indexes (bounded memory: ~100 bytes each).
pub const DEDUP_CAPACITY: usize = 4_000_000;

impl FilterArgs {
    /// The caption filter, or `None` when no caption flag is set.
    pub fn caption_filter(&self) -> anyhow::Result<Option<CaptionFilter>> {
        let config = CaptionFilterConfig {
            min_chars: self.min_caption_chars,
            max_chars: self.max_caption_chars,
            min_words: self.min_caption_words,
            max_words: self.max_caption_words,
            drop_boilerplate: self.drop_boilerplate_captions,
            languages: self.languages.clone(),
            detect_language: false,
        };
        if config == CaptionFilterConfig::default() {
            return Ok(None);
        }
        Ok(Some(CaptionFilter::new(config)?))
    }

    /// The repeated-alt cap, if asked for.
    pub fn repeat_cap(&self) -> Option<RepeatCap> {
        self.max_caption_repeats.map(RepeatCap::new)
    }
}

impl DedupArgs {
    /// The exact-duplicate index (for `--dedup exact` and `near`).
    pub fn exact_dedup(&self) -> Option<ExactDedup> {
        (self.dedup != DedupMode::None).then(|| ExactDedup::new(DEDUP_CAPACITY))
    }

    /// The near-duplicate index (for `--dedup near`).
    pub fn near_dedup(&self) -> Option<NearDupIndex> {
        (self.dedup == DedupMode::Near)
            .then(|| NearDupIndex::new(self.near_dup_distance, DEDUP_CAPACITY))
    }
}
