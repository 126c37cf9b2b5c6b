//! What one input row became: the unit the downloader hands to the shard writer.
//!
//! These types are the contract between `wit-crawler` (which fills them) and the shard writer
//! (which turns them into tar members, a parquet row and `_stats.json` summaries).

use serde::{Deserialize, Serialize};

/// The outcome of one input row. Every input row ends with exactly one of these.
///
/// The first three are img2dataset's; the rest are wit's finer-grained refusals, so a user can
/// tell "the site said no" from "the download broke".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Image fetched, decoded, resized and written to the tar.
    Success,
    /// Network, HTTP or size-limit failure (or the SSRF guard refused the address).
    FailedToDownload,
    /// Bytes fetched but not a decodable image, or over the pixel limit.
    FailedToResize,
    /// Dropped on purpose by a filter (image size, aspect ratio, caption, duplicate...).
    Filtered,
    /// The server opted out through `X-Robots-Tag` (noai, noimageai, ...).
    OptedOut,
    /// robots.txt disallows the URL for our user agent.
    DisallowedByRobots,
}

impl Status {
    /// Every status, in a fixed order (for tables and reports).
    pub const ALL: [Status; 6] = [
        Status::Success,
        Status::FailedToDownload,
        Status::FailedToResize,
        Status::Filtered,
        Status::OptedOut,
        Status::DisallowedByRobots,
    ];

    /// The string written to parquet's `status` column (img2dataset's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::FailedToDownload => "failed_to_download",
            Status::FailedToResize => "failed_to_resize",
            Status::Filtered => "filtered",
            Status::OptedOut => "opted_out",
            Status::DisallowedByRobots => "disallowed_by_robots",
        }
    }

    /// Parses the `status` column back.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// The encodings a shard's image member can have; the tar extension always matches the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    /// JPEG, extension `jpg`.
    Jpg,
    /// PNG, extension `png`.
    Png,
    /// WebP, extension `webp`.
    Webp,
}

impl ImageFormat {
    /// The tar member extension.
    pub fn ext(self) -> &'static str {
        match self {
            ImageFormat::Jpg => "jpg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
        }
    }

    /// Recognises the format from magic bytes, so the extension never lies about the content.
    pub fn from_magic(bytes: &[u8]) -> Option<ImageFormat> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ImageFormat::Jpg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageFormat::Png)
        } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(ImageFormat::Webp)
        } else {
            None
        }
    }
}

/// An image ready to be stored: encoded bytes plus the pixel size they decode to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedImage {
    /// The encoded file, exactly as it goes into the tar.
    pub bytes: Vec<u8>,
    /// Its encoding (decides the member extension).
    pub format: ImageFormat,
    /// Width after resizing.
    pub width: u32,
    /// Height after resizing.
    pub height: u32,
}

/// Everything known about one input row after processing. Fields that do not apply are `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleRecord {
    /// The image URL from the input.
    pub url: String,
    /// The caption (alt text) from the input; `None` when the input has no caption column.
    pub caption: Option<String>,
    /// The outcome; `None` is not allowed at write time (defaults to `FailedToDownload`).
    pub status: Option<Status>,
    /// Why it failed or was filtered, human-readable.
    pub error_message: Option<String>,
    /// The stored image (successes only).
    pub image: Option<EncodedImage>,
    /// Width of the downloaded image before resizing (after EXIF orientation).
    pub original_width: Option<u32>,
    /// Height of the downloaded image before resizing (after EXIF orientation).
    pub original_height: Option<u32>,
    /// Size in bytes of the downloaded body.
    pub original_bytes: Option<u64>,
    /// The downloaded file's format from its magic bytes: `jpeg`, `png`, `webp`, `gif`, `bmp`.
    pub original_format: Option<String>,
    /// EXIF tags of the original as a JSON object string (img2dataset's `exif` column).
    pub exif: Option<String>,
    /// Hex SHA-256 of the downloaded bytes (img2dataset's `sha256` column).
    pub sha256: Option<String>,
    /// Hex BLAKE3 of the downloaded bytes: wit's exact-duplicate key.
    pub blake3: Option<String>,
    /// The `Content-Type` the server sent.
    pub mime: Option<String>,
    /// The page the pair was found on, when known (crawl / WARC input).
    pub page_url: Option<String>,
    /// Detected caption language (ISO 639-1), when language identification ran.
    pub language: Option<String>,
    /// 64-bit perceptual hash of the image, hex, for near-duplicate detection.
    pub phash: Option<String>,
    /// Key of an earlier sample this one nearly duplicates (Hamming distance on `phash`).
    pub dup_of: Option<String>,
    /// Values of the input columns the user asked to keep, aligned with
    /// [`crate::ShardConfig::extra_columns`].
    pub extra: Vec<Option<String>>,
}

impl SampleRecord {
    /// The status to write: an unset status counts as a download failure, never as success.
    pub fn effective_status(&self) -> Status {
        self.status.unwrap_or(Status::FailedToDownload)
    }
}
