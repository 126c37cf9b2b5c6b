//! Mergeable per-shard summaries stored in `_stats.json` (key `summary`), so `wit stats` folds
//! shards one at a time and never rereads the data.
//!
//! Every field has a size bounded independently of the row count (see [`crate::sketch`] for the
//! sketches and their error bounds). Which rows feed which field:
//! - `rows`, `status`, `errors`, `domains`, `distinct_urls`, `languages`, `near_duplicates`: every row.
//! - `original_*`, `original_formats`: rows whose original image was decoded (size known).
//! - `width`, `height`, `aspect`, `encoded_bytes`, `encoded_formats`: successes (stored image).
//! - `caption_chars`, `caption_words`, `top_words`, `captions_missing`: successes (the pairs a
//!   trainer will see).
//! - `distinct_blake3`, `with_blake3`: rows with downloaded bytes (a BLAKE3 hash).

use crate::record::SampleRecord;
use crate::sketch::{Buckets, Histogram, HyperLogLog, QuantileSketch, TopK};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The layout version of [`Summary`]: bucket layouts and field meanings are fixed per version, so
/// summaries merge only with the same version.
pub const SUMMARY_VERSION: u32 = 1;

/// Aspect ratio (width / height) buckets: 0.125 wide from 0 to 5, then ≥ 5.
pub const ASPECT_BUCKETS: Buckets = Buckets::Linear {
    lo: 0.0,
    width: 0.125,
    n: 40,
};
/// Caption length in characters (Unicode scalar values): 10 wide from 0 to 400, then ≥ 400.
pub const CAPTION_CHAR_BUCKETS: Buckets = Buckets::Linear {
    lo: 0.0,
    width: 10.0,
    n: 40,
};
/// Caption length in words: 1 wide from 0 to 64, then ≥ 64.
pub const CAPTION_WORD_BUCKETS: Buckets = Buckets::Linear {
    lo: 0.0,
    width: 1.0,
    n: 64,
};

/// Words too common to say anything about a corpus; left out of `top_words`.
const STOPWORDS: &[&str] = &[
    "the", "and", "for", "with", "from", "this", "that", "are", "was", "you", "your", "our", "its",
    "has", "have", "not", "but", "all", "can", "will", "into", "out", "over", "der", "die", "und",
    "les", "des", "del", "los", "con", "per", "une",
];

/// One numeric quantity: exact count/sum/min/max, an exact fixed-bucket histogram, and a
/// quantile sketch (1% relative error).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Numeric {
    /// Number of values.
    pub count: u64,
    /// Sum of the values (exact for integers below 2⁵³).
    pub sum: f64,
    /// Smallest value (0 when empty).
    pub min: f64,
    /// Largest value (0 when empty).
    pub max: f64,
    /// Exact bucket counts.
    pub histogram: Histogram,
    /// Quantiles within 1% relative error.
    pub quantiles: QuantileSketch,
}

impl Numeric {
    /// An empty quantity with this histogram layout.
    pub fn new(buckets: Buckets) -> Numeric {
        Numeric {
            count: 0,
            sum: 0.0,
            min: 0.0,
            max: 0.0,
            histogram: Histogram::new(buckets),
            quantiles: QuantileSketch::default(),
        }
    }

    /// Counts one value.
    pub fn add(&mut self, v: f64) {
        if self.count == 0 {
            (self.min, self.max) = (v, v);
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += v;
        self.histogram.add(v);
        self.quantiles.add(v);
    }

    /// Folds another quantity in (exact for all parts but the quantile estimates).
    pub fn merge(&mut self, other: &Numeric) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            (self.min, self.max) = (other.min, other.max);
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.count += other.count;
        self.sum += other.sum;
        self.histogram.merge(&other.histogram);
        self.quantiles.merge(&other.quantiles);
    }

    /// The `q`-quantile (within the sketch's relative error), never outside the exact
    /// `[min, max]`: the sketch answers with bucket midpoints, which can overshoot both ends.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.quantiles
            .quantile(q)
            .map(|v| v.clamp(self.min, self.max))
    }

    /// Mean, or `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// What is known about a stored image without its bytes (from parquet columns or a tar member).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stored<'a> {
    /// Stored width.
    pub width: Option<u32>,
    /// Stored height.
    pub height: Option<u32>,
    /// Encoded size in bytes.
    pub bytes: Option<u64>,
    /// Tar extension: `jpg`, `png`, `webp`.
    pub format: Option<&'a str>,
}

/// Fixed-size, mergeable sketches of one shard (or many, after `merge`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// [`SUMMARY_VERSION`] when written.
    pub version: u32,
    /// Rows observed (one per input row).
    pub rows: u64,
    /// Exact count per status (`success`, `failed_to_download`, ...).
    pub status: BTreeMap<String, u64>,
    /// Most frequent `error_message`s (failures and filter reasons), k = 64.
    pub errors: TopK,
    /// Most frequent image hosts (lower-cased host of `url`, port and user info removed), k = 256.
    pub domains: TopK,
    /// Distinct `url`s (HyperLogLog).
    pub distinct_urls: HyperLogLog,
    /// Detected caption languages, k = 64 (exact below 64 languages).
    pub languages: TopK,
    /// Rows with `dup_of` set: near duplicates of an earlier image (exact).
    pub near_duplicates: u64,
    /// Rows with a BLAKE3 of downloaded bytes (exact).
    pub with_blake3: u64,
    /// Distinct BLAKE3 hashes (HyperLogLog): `1 − distinct/with_blake3` is the exact-duplicate rate.
    pub distinct_blake3: HyperLogLog,
    /// Width of the downloaded image, pixels (log2 buckets).
    pub original_width: Numeric,
    /// Height of the downloaded image, pixels (log2 buckets).
    pub original_height: Numeric,
    /// Width/height of the downloaded image (linear buckets, [`ASPECT_BUCKETS`]).
    pub original_aspect: Numeric,
    /// Size of the downloaded body in bytes (log2 buckets).
    pub original_bytes: Numeric,
    /// Formats of the downloaded images (`jpeg`, `png`, ...), k = 16.
    pub original_formats: TopK,
    /// Width of the stored image (log2 buckets).
    pub width: Numeric,
    /// Height of the stored image (log2 buckets).
    pub height: Numeric,
    /// Width/height of the stored image (linear buckets).
    pub aspect: Numeric,
    /// Size of the stored (encoded) image in bytes (log2 buckets).
    pub encoded_bytes: Numeric,
    /// Formats of the stored images (`jpg`, `png`, `webp`), k = 8.
    pub encoded_formats: TopK,
    /// Successes without a caption (exact).
    pub captions_missing: u64,
    /// Caption length in characters ([`CAPTION_CHAR_BUCKETS`]).
    pub caption_chars: Numeric,
    /// Caption length in words ([`CAPTION_WORD_BUCKETS`]).
    pub caption_words: Numeric,
    /// Most frequent caption words (lower-cased, ≥ 3 letters, common stopwords left out), k = 256.
    pub top_words: TopK,
}

impl Default for Summary {
    fn default() -> Summary {
        Summary {
            version: SUMMARY_VERSION,
            rows: 0,
            status: BTreeMap::new(),
            errors: TopK::new(64),
            domains: TopK::new(256),
            distinct_urls: HyperLogLog::default(),
            languages: TopK::new(64),
            near_duplicates: 0,
            with_blake3: 0,
            distinct_blake3: HyperLogLog::default(),
            original_width: Numeric::new(Buckets::Log2),
            original_height: Numeric::new(Buckets::Log2),
            original_aspect: Numeric::new(ASPECT_BUCKETS),
            original_bytes: Numeric::new(Buckets::Log2),
            original_formats: TopK::new(16),
            width: Numeric::new(Buckets::Log2),
            height: Numeric::new(Buckets::Log2),
            aspect: Numeric::new(ASPECT_BUCKETS),
            encoded_bytes: Numeric::new(Buckets::Log2),
            encoded_formats: TopK::new(8),
            captions_missing: 0,
            caption_chars: Numeric::new(CAPTION_CHAR_BUCKETS),
            caption_words: Numeric::new(CAPTION_WORD_BUCKETS),
            top_words: TopK::new(256),
        }
    }
}

impl Summary {
    /// Adds one record.
    pub fn observe(&mut self, record: &SampleRecord) {
        let stored = record.image.as_ref().map(|img| Stored {
            width: Some(img.width),
            height: Some(img.height),
            bytes: Some(img.bytes.len() as u64),
            format: Some(img.format.ext()),
        });
        self.observe_row(record, stored);
    }

    /// Adds one row whose stored image is described rather than held (a row read back from
    /// parquet, where `record.image` is absent); `stored` counts only for successes.
    pub fn observe_row(&mut self, record: &SampleRecord, stored: Option<Stored<'_>>) {
        let status = record.effective_status();
        self.rows += 1;
        *self.status.entry(status.as_str().to_owned()).or_insert(0) += 1;
        if let Some(msg) = record.error_message.as_deref().filter(|m| !m.is_empty()) {
            self.errors.add(msg);
        }
        if let Some(host) = url_host(&record.url) {
            self.domains.add(&host);
        }
        self.distinct_urls.insert(record.url.as_bytes());
        if let Some(lang) = record.language.as_deref() {
            self.languages.add(lang);
        }
        self.near_duplicates += u64::from(record.dup_of.is_some());
        if let Some(b3) = record.blake3.as_deref() {
            self.with_blake3 += 1;
            self.distinct_blake3.insert(b3.as_bytes());
        }
        self.observe_original(record);
        if status == crate::record::Status::Success {
            self.observe_success(record, stored);
        }
    }

    fn observe_original(&mut self, record: &SampleRecord) {
        if let (Some(w), Some(h)) = (record.original_width, record.original_height) {
            self.original_width.add(w as f64);
            self.original_height.add(h as f64);
            if h > 0 {
                self.original_aspect.add(w as f64 / h as f64);
            }
            if let Some(f) = record.original_format.as_deref() {
                self.original_formats.add(f);
            }
        }
        if let Some(b) = record.original_bytes {
            self.original_bytes.add(b as f64);
        }
    }

    fn observe_success(&mut self, record: &SampleRecord, stored: Option<Stored<'_>>) {
        if let Some(img) = stored {
            if let (Some(w), Some(h)) = (img.width, img.height) {
                self.width.add(w as f64);
                self.height.add(h as f64);
                if h > 0 {
                    self.aspect.add(w as f64 / h as f64);
                }
            }
            if let Some(b) = img.bytes {
                self.encoded_bytes.add(b as f64);
            }
            if let Some(f) = img.format {
                self.encoded_formats.add(f);
            }
        }
        match record.caption.as_deref() {
            None => self.captions_missing += 1,
            Some(caption) => self.observe_caption(caption),
        }
    }

    /// Caption length and words, with the same definitions DuckDB's `length()` (characters) and
    /// a whitespace split (words) use, so the exact figures can be checked against SQL.
    pub fn observe_caption(&mut self, caption: &str) {
        self.caption_chars.add(caption.chars().count() as f64);
        self.caption_words
            .add(caption.split_whitespace().count() as f64);
        for word in caption.split(|c: char| !c.is_alphanumeric()) {
            if word.chars().count() < 3 || word.chars().all(|c| c.is_numeric()) {
                continue;
            }
            let word = word.to_lowercase();
            if !STOPWORDS.contains(&word.as_str()) {
                self.top_words.add(&word);
            }
        }
    }

    /// Folds another summary into this one; the result equals observing both inputs (exactly for
    /// counts and histograms, within the sketches' bounds for the rest).
    pub fn merge(&mut self, other: &Summary) {
        self.rows += other.rows;
        for (k, v) in &other.status {
            *self.status.entry(k.clone()).or_insert(0) += v;
        }
        self.errors.merge(&other.errors);
        self.domains.merge(&other.domains);
        self.distinct_urls.merge(&other.distinct_urls);
        self.languages.merge(&other.languages);
        self.near_duplicates += other.near_duplicates;
        self.with_blake3 += other.with_blake3;
        self.distinct_blake3.merge(&other.distinct_blake3);
        self.original_width.merge(&other.original_width);
        self.original_height.merge(&other.original_height);
        self.original_aspect.merge(&other.original_aspect);
        self.original_bytes.merge(&other.original_bytes);
        self.original_formats.merge(&other.original_formats);
        self.width.merge(&other.width);
        self.height.merge(&other.height);
        self.aspect.merge(&other.aspect);
        self.encoded_bytes.merge(&other.encoded_bytes);
        self.encoded_formats.merge(&other.encoded_formats);
        self.captions_missing += other.captions_missing;
        self.caption_chars.merge(&other.caption_chars);
        self.caption_words.merge(&other.caption_words);
        self.top_words.merge(&other.top_words);
    }
}

/// The lower-cased host of an http(s)-style URL, without user info or port; `None` when the
/// string has no `scheme://host` part. Deliberately simple (no IDNA) so it stays cheap per row.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        host_port.split_inclusive(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{EncodedImage, ImageFormat, Status};

    #[test]
    fn quantiles_stay_inside_the_exact_range() {
        let mut n = Numeric::new(Buckets::Log2);
        for _ in 0..100 {
            n.add(80.0);
        }
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(n.quantile(q), Some(80.0), "q = {q}");
        }
    }

    fn record(i: u32) -> SampleRecord {
        let ok = !i.is_multiple_of(4);
        SampleRecord {
            url: format!("https://Site{}.example:8080/img/{i}.jpg", i % 3),
            caption: Some(format!("a red circle number {i}")),
            status: Some(if ok {
                Status::Success
            } else {
                Status::FailedToDownload
            }),
            error_message: (!ok).then(|| "timeout".to_owned()),
            image: ok.then(|| EncodedImage {
                bytes: vec![0; 100 + i as usize],
                format: ImageFormat::Jpg,
                width: 256,
                height: 128,
            }),
            original_width: ok.then_some(1000 + i),
            original_height: ok.then_some(500),
            original_bytes: ok.then_some(5000),
            original_format: ok.then(|| "png".to_owned()),
            blake3: ok.then(|| format!("{:064x}", i % 10)),
            language: Some("en".into()),
            dup_of: (i % 10 == 1).then(|| "000000000".into()),
            ..SampleRecord::default()
        }
    }

    #[test]
    fn observe_counts_and_merge_equals_single_pass() {
        let mut all = Summary::default();
        let mut parts = [Summary::default(), Summary::default()];
        for i in 0..200 {
            all.observe(&record(i));
            parts[(i % 2) as usize].observe(&record(i));
        }
        let [mut a, b] = parts;
        let b: Summary = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        a.merge(&b);
        assert_eq!(a.rows, 200);
        assert_eq!(a.status["success"], 150);
        assert_eq!(a.status["failed_to_download"], 50);
        assert_eq!(a.errors.sorted()[0].count(), 50);
        assert_eq!(a.near_duplicates, 20);
        assert_eq!(a.with_blake3, 150);
        assert!((a.distinct_blake3.estimate() - 10.0).abs() < 1.0);
        assert!((a.distinct_urls.estimate() - 200.0).abs() < 8.0);
        assert_eq!(a.width.count, 150);
        assert_eq!(a.original_aspect.histogram, all.original_aspect.histogram);
        assert_eq!(a.caption_words.histogram, all.caption_words.histogram);
        assert_eq!(a.domains.sorted()[0].item(), "site0.example");
        assert_eq!(a.domains.sorted()[2].count(), 66);
        assert_eq!(a.top_words.sorted().len(), 3);
        assert_eq!(a.top_words.sorted()[0].count(), 150);
        assert_eq!(a.encoded_bytes.sum, all.encoded_bytes.sum);
        assert_eq!(a.languages.sorted()[0].count(), 200);
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            url_host("HTTP://User:pw@Ex.COM:81/a?b").as_deref(),
            Some("ex.com")
        );
        assert_eq!(url_host("https://[::1]:8080/x").as_deref(), Some("[::1]"));
        assert_eq!(url_host("https://a.b#frag").as_deref(), Some("a.b"));
        assert_eq!(url_host("not a url"), None);
        assert_eq!(url_host("http:///path"), None);
    }

    #[test]
    fn empty_summary_is_small() {
        let json = serde_json::to_string(&Summary::default()).unwrap();
        assert!(json.len() < 3000, "{}", json.len());
    }
}
