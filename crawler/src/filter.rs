//! Quality filters for (image, alt text) pairs: caption rules, a cap on repeated alts, language
//! identification, and exact / near-duplicate image detection.
//!
//! Each filter answers with a human-readable reason, which becomes the row's `error_message`
//! and a `filtered` status, so every drop is counted by reason in `_stats.json`. All state is
//! bounded: the repeat cap is a count-min sketch and the duplicate indexes evict their oldest
//! entries beyond a fixed capacity, so memory stays flat however large the pool grows.

use std::collections::{HashMap, VecDeque};

/// Alt texts that are the whole caption yet say nothing about the image.
const BOILERPLATE_WORDS: &[&str] = &[
    "image",
    "img",
    "picture",
    "pic",
    "photo",
    "logo",
    "icon",
    "spacer",
    "banner",
    "placeholder",
    "thumbnail",
    "thumb",
    "avatar",
    "blank",
    "untitled",
    "null",
    "undefined",
    "none",
    "alt",
];

/// File extensions that mark an alt as a file name.
const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "gif", "webp", "bmp", "svg", "tif", "tiff", "avif", "heic", "ico",
];

/// Camera and screenshot file-name stems (`IMG_1234`, `DSC01234`, ...).
const CAMERA_PREFIXES: &[&str] = &["img", "dsc", "dscn", "dcim", "pxl", "screenshot", "photo"];

/// Settings of [`CaptionFilter`]; `Default` keeps every caption.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptionFilterConfig {
    /// Fewest characters (Unicode scalar values, after trimming).
    pub min_chars: usize,
    /// Most characters.
    pub max_chars: Option<usize>,
    /// Fewest whitespace-separated words.
    pub min_words: usize,
    /// Most words.
    pub max_words: Option<usize>,
    /// Drop file names, URLs, "image", "logo", "icon", "spacer", "banner", all-digit alts.
    pub drop_boilerplate: bool,
    /// Keep only captions identified as one of these languages (ISO 639-1 or 639-3 codes).
    /// Empty: keep every language.
    pub languages: Vec<String>,
    /// Identify (and record) the language even when `languages` is empty.
    pub detect_language: bool,
}

/// Why a filter could not be built from its settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// A `--languages` code whatlang does not know.
    #[error("unknown language code `{0}` in --languages: use ISO 639-1 codes such as en,de,fr")]
    UnknownLanguage(String),
}

/// Decides whether a caption is good enough, and which language it is in.
#[derive(Clone, Debug)]
pub struct CaptionFilter {
    config: CaptionFilterConfig,
    allowed: Vec<whatlang::Lang>,
}

impl CaptionFilter {
    /// Builds the filter, checking the language codes.
    pub fn new(config: CaptionFilterConfig) -> Result<CaptionFilter, FilterError> {
        let allowed = config
            .languages
            .iter()
            .map(|c| parse_lang(c).ok_or_else(|| FilterError::UnknownLanguage(c.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CaptionFilter { config, allowed })
    }

    /// `Ok(language)` when the caption passes (the ISO 639-1 code when language identification
    /// ran and succeeded), `Err(reason)` when it is dropped. Reasons name the flag, not the
    /// measured value, so drops can be counted by reason.
    pub fn check(&self, caption: &str) -> Result<Option<String>, String> {
        let text = caption.trim();
        let c = &self.config;
        let chars = text.chars().count();
        if chars < c.min_chars {
            return Err(format!(
                "caption shorter than --min-caption-chars {}",
                c.min_chars
            ));
        }
        if let Some(max) = c.max_chars.filter(|&m| chars > m) {
            return Err(format!("caption longer than --max-caption-chars {max}"));
        }
        let words = text.split_whitespace().count();
        if words < c.min_words {
            return Err(format!(
                "caption has fewer words than --min-caption-words {}",
                c.min_words
            ));
        }
        if let Some(max) = c.max_words.filter(|&m| words > m) {
            return Err(format!(
                "caption has more words than --max-caption-words {max}"
            ));
        }
        if c.drop_boilerplate {
            if let Some(kind) = boilerplate(text) {
                return Err(format!("caption is boilerplate ({kind})"));
            }
        }
        self.language(text)
    }

    fn language(&self, text: &str) -> Result<Option<String>, String> {
        if self.allowed.is_empty() && !self.config.detect_language {
            return Ok(None);
        }
        let detected = whatlang::detect_lang(text);
        if self.allowed.is_empty() {
            return Ok(detected.map(|l| iso639_1(l).to_string()));
        }
        match detected {
            Some(l) if self.allowed.contains(&l) => Ok(Some(iso639_1(l).to_string())),
            Some(l) => Err(format!(
                "caption language {} is not in --languages {}",
                iso639_1(l),
                self.config.languages.join(",")
            )),
            None => Err("caption language could not be identified (--languages is set)".into()),
        }
    }
}

/// What kind of boilerplate `text` is, if any.
pub fn boilerplate(text: &str) -> Option<&'static str> {
    let lower = text.trim().to_lowercase();
    if lower.is_empty() {
        return Some("empty");
    }
    if lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("www.") {
        return Some("a URL");
    }
    if lower.chars().all(|ch| !ch.is_alphabetic()) {
        return Some("digits and punctuation only");
    }
    if is_file_name(&lower) {
        return Some("a file name");
    }
    let bare = lower.trim_matches(|ch: char| !ch.is_alphanumeric());
    let singular = bare.strip_suffix('s').unwrap_or(bare);
    if BOILERPLATE_WORDS.contains(&bare) || BOILERPLATE_WORDS.contains(&singular) {
        return Some("a generic word");
    }
    None
}

fn is_file_name(lower: &str) -> bool {
    if lower.split_whitespace().count() > 1 {
        return false;
    }
    let has_ext = lower
        .rsplit_once('.')
        .is_some_and(|(stem, ext)| !stem.is_empty() && IMAGE_EXTENSIONS.contains(&ext));
    let camera = CAMERA_PREFIXES.iter().any(|p| {
        lower.strip_prefix(p).is_some_and(|rest| {
            let rest = rest.trim_start_matches(['_', '-', ' ']);
            rest.len() >= 3 && rest.chars().take(3).all(|c| c.is_ascii_digit())
        })
    });
    has_ext || camera
}

fn parse_lang(code: &str) -> Option<whatlang::Lang> {
    let code = code.trim().to_ascii_lowercase();
    whatlang::Lang::all()
        .iter()
        .copied()
        .find(|&l| l.code() == code || iso639_1(l) == code)
}

/// The ISO 639-1 code of a whatlang language (whatlang speaks ISO 639-3).
pub fn iso639_1(lang: whatlang::Lang) -> &'static str {
    #[rustfmt::skip]
    const TABLE: &[(&str, &str)] = &[
        ("afr", "af"), ("aka", "ak"), ("amh", "am"), ("ara", "ar"), ("aze", "az"), ("bel", "be"),
        ("ben", "bn"), ("bul", "bg"), ("cat", "ca"), ("ces", "cs"), ("cmn", "zh"), ("cym", "cy"),
        ("dan", "da"), ("deu", "de"), ("ell", "el"), ("eng", "en"), ("epo", "eo"), ("est", "et"),
        ("fin", "fi"), ("fra", "fr"), ("guj", "gu"), ("heb", "he"), ("hin", "hi"), ("hrv", "hr"),
        ("hun", "hu"), ("hye", "hy"), ("ind", "id"), ("ita", "it"), ("jav", "jv"), ("jpn", "ja"),
        ("kan", "kn"), ("kat", "ka"), ("khm", "km"), ("kor", "ko"), ("lat", "la"), ("lav", "lv"),
        ("lit", "lt"), ("mal", "ml"), ("mar", "mr"), ("mkd", "mk"), ("mya", "my"), ("nep", "ne"),
        ("nld", "nl"), ("nob", "nb"), ("ori", "or"), ("pan", "pa"), ("pes", "fa"), ("pol", "pl"),
        ("por", "pt"), ("ron", "ro"), ("rus", "ru"), ("sin", "si"), ("slk", "sk"), ("slv", "sl"),
        ("sna", "sn"), ("spa", "es"), ("srp", "sr"), ("swe", "sv"), ("tam", "ta"), ("tel", "te"),
        ("tgl", "tl"), ("tha", "th"), ("tuk", "tk"), ("tur", "tr"), ("ukr", "uk"), ("urd", "ur"),
        ("uzb", "uz"), ("vie", "vi"), ("yid", "yi"), ("zul", "zu"),
    ];
    let code = lang.code();
    TABLE
        .iter()
        .find(|(three, _)| *three == code)
        .map_or(code, |(_, two)| two)
}

/// Caps how often the same alt text (case and whitespace folded) may appear in the pool, with a
/// conservative-update count-min sketch: fixed memory, counts never underestimated, so an alt is
/// never let through more than `max` times (a rare collision may stop one a little early).
#[derive(Clone, Debug)]
pub struct RepeatCap {
    max: u32,
    counts: Vec<u32>,
}

const SKETCH_ROWS: usize = 4;
const SKETCH_WIDTH: usize = 1 << 18;

impl RepeatCap {
    /// A cap of `max` occurrences per alt (4 MiB of counters).
    pub fn new(max: u32) -> RepeatCap {
        RepeatCap {
            max,
            counts: vec![0; SKETCH_ROWS * SKETCH_WIDTH],
        }
    }

    /// Counts one more occurrence of `caption`; `Err(reason)` once it has been seen `max` times.
    pub fn admit(&mut self, caption: &str) -> Result<(), String> {
        let folded = caption
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let hash = blake3::hash(folded.as_bytes());
        let slots: Vec<usize> = hash.as_bytes()[..SKETCH_ROWS * 4]
            .chunks_exact(4)
            .enumerate()
            .map(|(row, b)| {
                let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                row * SKETCH_WIDTH + v % SKETCH_WIDTH
            })
            .collect();
        let seen = slots.iter().map(|&s| self.counts[s]).min().unwrap_or(0);
        if seen >= self.max {
            return Err(format!(
                "caption repeated more than --max-caption-repeats {} times",
                self.max
            ));
        }
        for &s in &slots {
            self.counts[s] = self.counts[s].max(seen + 1);
        }
        Ok(())
    }
}

/// Exact duplicates by BLAKE3 of the bytes, remembering the most recent `capacity` images.
#[derive(Clone, Debug)]
pub struct ExactDedup {
    capacity: usize,
    keys: HashMap<[u8; 16], String>,
    order: VecDeque<[u8; 16]>,
}

impl ExactDedup {
    /// An index of at most `capacity` images (about 100 bytes each).
    pub fn new(capacity: usize) -> ExactDedup {
        ExactDedup {
            capacity: capacity.max(1),
            keys: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// `Some(key)` of the earlier sample with the same BLAKE3 hash; otherwise records `key` for
    /// these bytes and returns `None`.
    pub fn check_insert(&mut self, blake3_hash: &[u8; 32], key: &str) -> Option<String> {
        let mut short = [0u8; 16];
        short.copy_from_slice(&blake3_hash[..16]);
        if let Some(first) = self.keys.get(&short) {
            return Some(first.clone());
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        self.order.push_back(short);
        self.keys.insert(short, key.to_string());
        None
    }
}

/// Near-duplicate images by Hamming distance on a 64-bit perceptual hash, with multi-index
/// hashing: the hash is cut into `max_distance + 1` blocks, and two hashes within the distance
/// share at least one block exactly (pigeonhole), so a lookup only compares a few candidates.
#[derive(Clone, Debug)]
pub struct NearDupIndex {
    max_distance: u32,
    capacity: usize,
    blocks: Vec<(u32, u32)>,
    buckets: HashMap<(u8, u64), Vec<u64>>,
    entries: VecDeque<(u64, u64, String)>,
    next_seq: u64,
}

impl NearDupIndex {
    /// An index flagging hashes within `max_distance` bits (≤ 31), remembering the most recent
    /// `capacity` images.
    pub fn new(max_distance: u32, capacity: usize) -> NearDupIndex {
        let n = max_distance.min(31) + 1;
        let blocks = (0..n)
            .map(|i| {
                let start = 64 * i / n;
                (start, 64 * (i + 1) / n - start)
            })
            .collect();
        NearDupIndex {
            max_distance,
            capacity: capacity.max(1),
            blocks,
            buckets: HashMap::new(),
            entries: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// `Some(key)` of the closest remembered image within the distance (the new one is not
    /// added, so the first of a group stays its representative); otherwise remembers `phash`
    /// under `key` and returns `None`.
    pub fn check_insert(&mut self, phash: u64, key: &str) -> Option<String> {
        if let Some(found) = self.nearest(phash) {
            return Some(found);
        }
        if self.entries.len() == self.capacity {
            self.evict_oldest();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        for (i, b) in self.block_keys(phash) {
            self.buckets.entry((i, b)).or_default().push(seq);
        }
        self.entries.push_back((seq, phash, key.to_string()));
        None
    }

    fn nearest(&self, phash: u64) -> Option<String> {
        let first_seq = self.entries.front()?.0;
        let mut best: Option<(u32, u64)> = None;
        for (i, b) in self.block_keys(phash) {
            for &seq in self.buckets.get(&(i, b)).into_iter().flatten() {
                let (_, other, _) = &self.entries[(seq - first_seq) as usize];
                let d = (other ^ phash).count_ones();
                if d <= self.max_distance && best.is_none_or(|(bd, bs)| (d, seq) < (bd, bs)) {
                    best = Some((d, seq));
                }
            }
        }
        best.map(|(_, seq)| self.entries[(seq - first_seq) as usize].2.clone())
    }

    fn evict_oldest(&mut self) {
        if let Some((seq, phash, _)) = self.entries.pop_front() {
            for (i, b) in self.block_keys(phash) {
                if let Some(list) = self.buckets.get_mut(&(i, b)) {
                    list.retain(|&s| s != seq);
                    if list.is_empty() {
                        self.buckets.remove(&(i, b));
                    }
                }
            }
        }
    }

    fn block_keys(&self, phash: u64) -> Vec<(u8, u64)> {
        self.blocks
            .iter()
            .enumerate()
            .map(|(i, &(start, len))| {
                let mask = if len == 64 {
                    u64::MAX
                } else {
                    (1u64 << len) - 1
                };
                (i as u8, (phash >> start) & mask)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::tests::{encoded, picture};
    use crate::imaging::{process, ImageOptions, ResizeMode};
    use image::DynamicImage;

    fn filter(config: CaptionFilterConfig) -> CaptionFilter {
        CaptionFilter::new(config).unwrap()
    }

    #[test]
    fn length_limits_in_chars_and_words() {
        let f = filter(CaptionFilterConfig {
            min_chars: 5,
            max_chars: Some(30),
            min_words: 2,
            max_words: Some(4),
            ..Default::default()
        });
        assert!(f.check("a red bicycle").is_ok());
        assert!(f.check("dog").unwrap_err().contains("--min-caption-chars"));
        assert!(f
            .check("bicycles")
            .unwrap_err()
            .contains("--min-caption-words"));
        assert!(f
            .check("one two three four five")
            .unwrap_err()
            .contains("--max-caption-words"));
        assert!(f
            .check("an extraordinarily long caption here")
            .unwrap_err()
            .contains("--max-caption-chars"));
        // Characters, not bytes: five accented letters are five characters.
        assert!(filter(CaptionFilterConfig {
            max_chars: Some(5),
            ..Default::default()
        })
        .check("ééééé")
        .is_ok());
    }

    #[test]
    fn boilerplate_alts_are_recognised() {
        let f = filter(CaptionFilterConfig {
            drop_boilerplate: true,
            ..Default::default()
        });
        for alt in [
            "IMG_2041.JPG",
            "DSC01234",
            "photo-2023.png",
            "https://example.com/cat.jpg",
            "www.example.com",
            "image",
            "Logo",
            "icons",
            "spacer",
            " banner ",
            "12345",
            "2023-01-05",
            "",
        ] {
            assert!(
                f.check(alt).unwrap_err().contains("boilerplate"),
                "{alt:?} should be boilerplate"
            );
        }
        for alt in [
            "company logo on a blue wall",
            "Image of a cat",
            "a jpg of a dog",
            "route 66",
        ] {
            assert!(f.check(alt).is_ok(), "{alt:?} is a real caption");
        }
    }

    #[test]
    fn languages_are_identified_recorded_and_filtered() {
        let f = filter(CaptionFilterConfig {
            languages: vec!["en".into(), "deu".into()],
            ..Default::default()
        });
        assert_eq!(
            f.check("A small dog is running across the green field")
                .unwrap(),
            Some("en".into())
        );
        assert_eq!(
            f.check("Ein kleiner Hund läuft über die grüne Wiese")
                .unwrap(),
            Some("de".into())
        );
        let err = f
            .check("Un petit chien court à travers le champ vert")
            .unwrap_err();
        assert!(err.contains("fr") && err.contains("--languages"), "{err}");
        let record = filter(CaptionFilterConfig {
            detect_language: true,
            ..Default::default()
        });
        assert_eq!(
            record
                .check("Un petit chien court à travers le champ vert")
                .unwrap(),
            Some("fr".into())
        );
        assert_eq!(
            CaptionFilter::new(CaptionFilterConfig {
                languages: vec!["xx".into()],
                ..Default::default()
            })
            .err(),
            Some(FilterError::UnknownLanguage("xx".into()))
        );
    }

    #[test]
    fn repeat_cap_admits_each_alt_at_most_max_times() {
        let mut cap = RepeatCap::new(3);
        for _ in 0..3 {
            assert!(cap.admit("Click  to enlarge").is_ok());
        }
        assert!(cap
            .admit("click to ENLARGE")
            .unwrap_err()
            .contains("--max-caption-repeats 3"));
        for i in 0..10_000 {
            assert!(cap.admit(&format!("distinct caption {i}")).is_ok());
        }
    }

    #[test]
    fn exact_dedup_is_bounded() {
        let mut d = ExactDedup::new(2);
        let h = |b: &[u8]| *blake3::hash(b).as_bytes();
        assert_eq!(d.check_insert(&h(b"a"), "k1"), None);
        assert_eq!(d.check_insert(&h(b"a"), "k2"), Some("k1".into()));
        assert_eq!(d.check_insert(&h(b"b"), "k3"), None);
        assert_eq!(d.check_insert(&h(b"c"), "k4"), None);
        // "a" was evicted by capacity 2.
        assert_eq!(d.check_insert(&h(b"a"), "k5"), None);
    }

    #[test]
    fn near_dup_index_finds_hashes_within_distance_and_evicts_old_ones() {
        let mut idx = NearDupIndex::new(4, 3);
        let base = 0x0123_4567_89ab_cdefu64;
        assert_eq!(idx.check_insert(base, "a"), None);
        assert_eq!(idx.check_insert(base ^ 0b1011, "b"), Some("a".into()));
        assert_eq!(
            idx.check_insert(base ^ 0b11111, "c"),
            None,
            "5 bits away is not a dup"
        );
        assert_eq!(idx.check_insert(!base, "d"), None);
        assert_eq!(idx.check_insert(0x5555, "e"), None);
        // "a" is evicted (capacity 3), so its exact hash is new again.
        assert_eq!(idx.check_insert(base, "f"), None);
    }

    #[test]
    fn resized_and_reencoded_copies_are_near_dups_distinct_images_are_not() {
        let opts = ImageOptions {
            resize_mode: ResizeMode::No,
            ..ImageOptions::default()
        };
        let hash =
            |img: DynamicImage, format| process(&encoded(&img, format), &opts).unwrap().phash;
        let mut idx = NearDupIndex::new(6, 1000);
        let originals: Vec<image::RgbImage> = (0..20).map(|s| picture(480, 360, s)).collect();
        for (s, img) in originals.iter().enumerate() {
            let h = hash(
                DynamicImage::ImageRgb8(img.clone()),
                image::ImageFormat::Png,
            );
            assert_eq!(
                idx.check_insert(h, &format!("orig{s}")),
                None,
                "distinct image {s} flagged"
            );
        }
        for (s, img) in originals.iter().enumerate() {
            let small =
                image::imageops::resize(img, 200, 150, image::imageops::FilterType::Triangle);
            let copy = hash(DynamicImage::ImageRgb8(small), image::ImageFormat::Jpeg);
            assert_eq!(
                idx.check_insert(copy, "copy"),
                Some(format!("orig{s}")),
                "copy of {s} not found"
            );
        }
    }
}
