//! HTML → (image URL, alt text) pairs and out-links.
//!
//! Pure extraction: bytes in, [`Page`] out, no I/O. Both `wit crawl` (live pages) and `wit warc`
//! (archived responses) call [`extract`], so a page yields the same pairs whichever way it came.
//! The bytes are decoded first (BOM, then the `Content-Type` charset, then `<meta>`, then a UTF-8
//! sniff falling back to windows-1252, as browsers do) so non-UTF-8 alt text survives.
//!
//! Extraction reads html5ever's tokenizer, not a tree: the tree builder walks its stack of open
//! elements for many end tags, so deep nesting followed by many `</p>` costs depth × tags (a
//! 720 KB page took 30 s), and a DOM costs many times the page's bytes. The tokenizer is linear
//! in the input and keeps nothing; this module keeps only capped strings, so one page costs at
//! most its bytes plus [`MAX_IMAGES_PER_PAGE`] and [`MAX_LINKS_PER_PAGE`] capped entries, and
//! a page still being tokenized at [`MAX_PARSE_TIME`] keeps what was found so far.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use encoding_rs::{Encoding, UTF_8, WINDOWS_1252};
use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, Tag, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};
use url::Url;

/// Pages larger than this are cut before parsing: real pages with images are far smaller, and an
/// endless or hostile page must not take unbounded memory or time.
pub const DEFAULT_MAX_HTML_BYTES: usize = 8 << 20;

/// Longest URL kept, in bytes (image, link, `<base href>`, page URL, WARC-Target-URI). Longer
/// ones are not usable URLs (servers refuse far shorter ones), so the pair or link is dropped and
/// counted, never truncated.
pub const MAX_URL_BYTES: usize = 4096;

/// Longest alt text kept, in bytes; longer ones are cut at a character boundary (and counted):
/// the beginning of a caption still describes the image.
pub const MAX_ALT_BYTES: usize = 4096;

/// Longest title kept, in bytes; longer ones are cut at a character boundary (and counted). The
/// title is copied into every pair of its page, so it is kept short.
pub const MAX_TITLE_BYTES: usize = 1024;

/// Most images one page contributes; the rest are counted and dropped. Real pages carry tens to
/// hundreds, a generated one could carry millions.
pub const MAX_IMAGES_PER_PAGE: usize = 2048;

/// Most out-links one page contributes; the rest are counted and dropped.
pub const MAX_LINKS_PER_PAGE: usize = 8192;

/// Most `srcset` candidates looked at per attribute (real ones list a handful of sizes).
const MAX_SRCSET_CANDIDATES: usize = 32;

/// A page still being tokenized after this long keeps what was found so far and is marked
/// [`Page::timed_out`]. Tokenizing is linear, so only a slow machine or a page near
/// [`DEFAULT_MAX_HTML_BYTES`] in a debug build comes near it; it bounds what one page can hold
/// up the `wit warc` output behind it.
pub const MAX_PARSE_TIME: Duration = Duration::from_secs(10);

/// Most `<meta name="robots">` directives kept per page (a page repeating the tag cannot grow
/// the list without bound).
const MAX_ROBOTS_DIRECTIVES: usize = 64;

/// Text fed to the tokenizer between two deadline checks.
const FEED_CHUNK_BYTES: usize = 64 << 10;

/// How many leading bytes the `<meta charset>` pre-scan looks at (the HTML spec says 1024; real
/// pages often put a long `<head>` first, so look further).
const META_PRESCAN_BYTES: usize = 4096;

/// Lazy-loading attributes that hold the real image URL while `src` holds a placeholder.
const LAZY_SRC_ATTRS: [&str; 4] = ["data-src", "data-original", "data-lazy-src", "data-lazy"];

/// Lazy-loading attributes that hold the real `srcset`, then the plain one.
const SRCSET_ATTRS: [&str; 3] = ["data-srcset", "data-lazy-srcset", "srcset"];

/// `<source type>` values whose bytes `wit download` can decode; a `<picture>` source of another
/// type (AVIF, JPEG XL, SVG) would only produce failed downloads, so the next source is used.
const DECODABLE_TYPES: [&str; 7] = [
    "image/jpeg",
    "image/jpg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/x-ms-bmp",
];

/// What one HTML page contributes: its image pairs and where to go next.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The `<title>` text, whitespace collapsed, at most [`MAX_TITLE_BYTES`]; `None` when missing
    /// or empty.
    pub title: Option<String>,
    /// The URL relative references resolve against (`<base href>` or the page URL).
    pub base: Url,
    /// Images in document order, one per `<img>` that resolved to an http(s) URL, at most
    /// [`MAX_IMAGES_PER_PAGE`].
    pub images: Vec<ImagePair>,
    /// `<a href>` / `<area href>` targets resolved against `base`, http(s) only, in document order,
    /// at most [`MAX_LINKS_PER_PAGE`].
    pub links: Vec<Url>,
    /// Lower-cased directives of `<meta name="robots">` (e.g. `nofollow`, `noimageindex`, `noai`),
    /// so the crawler can honour a page's own opt-out.
    pub robots: Vec<String>,
    /// True when `<meta name="tdm-reservation" content="1">` reserves text and data mining rights
    /// (W3C TDMRep): the page's pairs must not be used by default.
    pub tdm_reserved: bool,
    /// The character encoding the bytes were decoded with.
    pub encoding: &'static str,
    /// True when the page was longer than the size limit and only its beginning was parsed.
    pub truncated: bool,
    /// True when tokenizing ran past [`MAX_PARSE_TIME`] and only the beginning was used.
    pub timed_out: bool,
    /// What the per-page caps dropped or cut.
    pub capped: Capped,
}

/// Counts of what one page's caps dropped or cut, so summaries can say what was lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Capped {
    /// Image, link and `<base href>` URLs longer than [`MAX_URL_BYTES`], dropped.
    pub long_urls: u64,
    /// Alt texts cut to [`MAX_ALT_BYTES`].
    pub long_alts: u64,
    /// Titles cut to [`MAX_TITLE_BYTES`].
    pub long_titles: u64,
    /// Images past [`MAX_IMAGES_PER_PAGE`], dropped.
    pub extra_images: u64,
    /// Links past [`MAX_LINKS_PER_PAGE`], dropped.
    pub extra_links: u64,
}

impl Capped {
    /// Adds another page's counts.
    pub fn add(&mut self, other: &Capped) {
        self.long_urls += other.long_urls;
        self.long_alts += other.long_alts;
        self.long_titles += other.long_titles;
        self.extra_images += other.extra_images;
        self.extra_links += other.extra_links;
    }
}

/// One image of a page with the text that describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePair {
    /// The chosen image URL (largest `srcset` candidate, lazy URL, or `src`), absolute.
    pub url: Url,
    /// The alt text with entities decoded and whitespace collapsed, at most [`MAX_ALT_BYTES`];
    /// empty when absent.
    pub alt: String,
    /// Ordinal of the `<img>` element among all `<img>` elements of the page (0-based), so
    /// position stays meaningful when some images are skipped.
    pub position: u32,
    /// The `width` attribute when it is a plain number of pixels.
    pub width: Option<u32>,
    /// The `height` attribute when it is a plain number of pixels.
    pub height: Option<u32>,
}

/// Extracts title, images and links from an HTML page, limited to [`DEFAULT_MAX_HTML_BYTES`] and
/// [`MAX_PARSE_TIME`].
///
/// `content_type` is the HTTP `Content-Type` header (its `charset` is honoured); `page_url` is the
/// final URL of the page, used to resolve relative references when there is no `<base href>`.
pub fn extract(html: &[u8], content_type: Option<&str>, page_url: &Url) -> Page {
    extract_limited(html, content_type, page_url, DEFAULT_MAX_HTML_BYTES)
}

/// [`extract`] with an explicit size limit in bytes.
pub fn extract_limited(
    html: &[u8],
    content_type: Option<&str>,
    page_url: &Url,
    max_bytes: usize,
) -> Page {
    extract_within(html, content_type, page_url, max_bytes, MAX_PARSE_TIME)
}

/// [`extract`] with explicit size and time limits.
pub fn extract_within(
    html: &[u8],
    content_type: Option<&str>,
    page_url: &Url,
    max_bytes: usize,
    max_time: Duration,
) -> Page {
    let truncated = html.len() > max_bytes;
    let bytes = &html[..html.len().min(max_bytes)];
    let (text, encoding) = decode(bytes, content_type);
    let collector = Collector {
        state: RefCell::new(Collected::new(page_url)),
    };
    let tokenizer = Tokenizer::new(collector, TokenizerOpts::default());
    let timed_out = feed(&tokenizer, &text, Instant::now() + max_time);
    tokenizer.end();
    let got = tokenizer.sink.state.into_inner();
    let (title, long_title) = got.title();
    let mut capped = got.capped;
    capped.long_titles += u64::from(long_title);
    Page {
        title,
        base: got.base,
        images: got.images,
        links: got.links,
        robots: got.robots,
        tdm_reserved: got.tdm_reserved,
        encoding: encoding.name(),
        truncated,
        timed_out,
        capped,
    }
}

/// Feeds `text` to the tokenizer a chunk at a time; true when `deadline` passed first.
fn feed(tokenizer: &Tokenizer<Collector>, text: &str, deadline: Instant) -> bool {
    let input = BufferQueue::default();
    let mut rest = text;
    while !rest.is_empty() {
        if Instant::now() > deadline {
            return true;
        }
        let mut cut = rest.len().min(FEED_CHUNK_BYTES);
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        input.push_back(StrTendril::from_slice(&rest[..cut]));
        rest = &rest[cut..];
        // The collector never asks for a script to run, so feeding always finishes the chunk.
        let _ = tokenizer.feed(&input);
    }
    false
}

/// The tokenizer's sink: collects what a [`Page`] needs as tags go by.
struct Collector {
    state: RefCell<Collected>,
}

/// What the sink has found so far.
struct Collected {
    base: Url,
    base_seen: bool,
    /// Raw title text while inside the first `<title>`; `None` before it.
    title_raw: Option<String>,
    in_title: bool,
    /// The raw title ran past its bounded prefix.
    title_overflow: bool,
    images: Vec<ImagePair>,
    img_ordinal: u32,
    links: Vec<Url>,
    robots: Vec<String>,
    tdm_reserved: bool,
    /// Inside `<picture>`: the first decodable `<source>` candidate seen so far.
    picture: Option<Option<Url>>,
    /// Inside `<svg>` or `<math>`, where `<title>`, `<style>` and friends are ordinary elements.
    foreign_depth: u32,
    capped: Capped,
}

impl Collected {
    fn new(page_url: &Url) -> Self {
        Collected {
            base: page_url.clone(),
            base_seen: false,
            title_raw: None,
            in_title: false,
            title_overflow: false,
            images: Vec::new(),
            img_ordinal: 0,
            links: Vec::new(),
            robots: Vec::new(),
            tdm_reserved: false,
            picture: None,
            foreign_depth: 0,
            capped: Capped::default(),
        }
    }

    /// The collapsed, capped title and whether it was cut.
    fn title(&self) -> (Option<String>, bool) {
        let Some(raw) = &self.title_raw else {
            return (None, false);
        };
        let mut title = collapse_ws(raw);
        let cut = truncate_at_char(&mut title, MAX_TITLE_BYTES) || self.title_overflow;
        ((!title.is_empty()).then_some(title), cut)
    }

    /// Handles one start or end tag; returns the tokenizer state the element's content needs.
    fn tag(&mut self, tag: &Tag) -> TokenSinkResult<()> {
        let name: &str = &tag.name;
        if tag.kind == TagKind::EndTag {
            match name {
                "title" => self.in_title = false,
                "picture" => self.picture = None,
                "svg" | "math" => self.foreign_depth = self.foreign_depth.saturating_sub(1),
                _ => {}
            }
            return TokenSinkResult::Continue;
        }
        match name {
            "svg" | "math" if !tag.self_closing => self.foreign_depth += 1,
            "base" if !self.base_seen => self.base_href(tag),
            "img" => self.img(tag),
            "source" => self.source(tag),
            "picture" => self.picture = Some(None),
            "a" | "area" => self.link(tag),
            "meta" => self.meta(tag),
            _ => {}
        }
        if self.foreign_depth > 0 {
            return TokenSinkResult::Continue;
        }
        // The content models the tree builder would switch the tokenizer into (scripting on,
        // as browsers and html5ever's default), so markup inside them is text, not elements.
        match name {
            "title" if self.title_raw.is_none() => {
                self.title_raw = Some(String::new());
                self.in_title = true;
                TokenSinkResult::RawData(RawKind::Rcdata)
            }
            "title" | "textarea" => TokenSinkResult::RawData(RawKind::Rcdata),
            "script" => TokenSinkResult::RawData(RawKind::ScriptData),
            "style" | "xmp" | "iframe" | "noembed" | "noframes" | "noscript" => {
                TokenSinkResult::RawData(RawKind::Rawtext)
            }
            "plaintext" => TokenSinkResult::Plaintext,
            _ => TokenSinkResult::Continue,
        }
    }

    /// Appends title text, keeping a bounded raw prefix (collapsing may shorten it a lot).
    fn title_text(&mut self, text: &str) {
        if !self.in_title {
            return;
        }
        if let Some(raw) = &mut self.title_raw {
            let room = (MAX_TITLE_BYTES * 4).saturating_sub(raw.len());
            let part = prefix_at_char(text, room);
            self.title_overflow |= part.len() < text.len();
            raw.push_str(part);
        }
    }

    /// The first `<base href>` sets the base for what follows; an unusable one is ignored.
    fn base_href(&mut self, tag: &Tag) {
        let Some(href) = attr(tag, "href") else {
            return;
        };
        self.base_seen = true;
        if href.len() > MAX_URL_BYTES {
            self.capped.long_urls += 1;
            return;
        }
        if let Some(base) = self.base.join(href.trim()).ok().filter(is_http) {
            if base.as_str().len() <= MAX_URL_BYTES {
                self.base = base;
            } else {
                self.capped.long_urls += 1;
            }
        }
    }

    /// Records one `<img>`: the first decodable `<picture>` source, else its own URL.
    fn img(&mut self, tag: &Tag) {
        let position = self.img_ordinal;
        self.img_ordinal = self.img_ordinal.saturating_add(1);
        if self.images.len() >= MAX_IMAGES_PER_PAGE {
            self.capped.extra_images += 1;
            return;
        }
        let from_picture = self.picture.clone().flatten();
        let Some(url) = from_picture.or_else(|| self.img_url(tag)) else {
            return;
        };
        let mut alt = collapse_ws(attr(tag, "alt").unwrap_or(""));
        if truncate_at_char(&mut alt, MAX_ALT_BYTES) {
            self.capped.long_alts += 1;
        }
        self.images.push(ImagePair {
            url,
            alt,
            position,
            width: attr(tag, "width").and_then(parse_pixels),
            height: attr(tag, "height").and_then(parse_pixels),
        });
    }

    /// The URL of a plain `<img>`: largest `srcset` candidate, then lazy attributes, then `src`.
    fn img_url(&mut self, tag: &Tag) -> Option<Url> {
        self.srcset_of(tag)
            .or_else(|| {
                LAZY_SRC_ATTRS
                    .iter()
                    .find_map(|a| attr(tag, a).and_then(|v| self.resolve(v)))
            })
            .or_else(|| attr(tag, "src").and_then(|v| self.resolve(v)))
    }

    /// Inside `<picture>`, the first `<source>` with a decodable type and a usable candidate is
    /// the one a browser would pick (ignoring media queries).
    fn source(&mut self, tag: &Tag) {
        if !matches!(self.picture, Some(None)) {
            return;
        }
        if attr(tag, "type").is_some_and(|t| !is_decodable_type(t)) {
            return;
        }
        if let Some(url) = self.srcset_of(tag) {
            self.picture = Some(Some(url));
        }
    }

    /// The largest usable candidate of an element's lazy or plain `srcset`.
    fn srcset_of(&mut self, tag: &Tag) -> Option<Url> {
        SRCSET_ATTRS
            .iter()
            .filter_map(|a| attr(tag, a))
            .find_map(|set| self.largest_candidate(set))
    }

    /// The largest candidate that resolves to http(s): by width when any candidate has one, else
    /// by density. Ties keep the first.
    fn largest_candidate(&mut self, srcset: &str) -> Option<Url> {
        let candidates = parse_srcset(srcset);
        let by_width = candidates.iter().any(|c| c.width.is_some());
        let size = |c: &Candidate<'_>| {
            if by_width {
                c.width.unwrap_or(0.0)
            } else {
                c.density
            }
        };
        let mut best: Option<(f64, Url)> = None;
        for c in &candidates {
            if best.as_ref().is_some_and(|(s, _)| size(c) <= *s) {
                continue;
            }
            if let Some(url) = self.resolve(c.url) {
                best = Some((size(c), url));
            }
        }
        best.map(|(_, u)| u)
    }

    /// A link target, while the page's link cap lasts.
    fn link(&mut self, tag: &Tag) {
        let Some(href) = attr(tag, "href") else {
            return;
        };
        if self.links.len() >= MAX_LINKS_PER_PAGE {
            self.capped.extra_links += 1;
            return;
        }
        if let Some(url) = self.resolve(href) {
            self.links.push(url);
        }
    }

    /// `<meta name="robots">` directives and the TDMRep reservation.
    fn meta(&mut self, tag: &Tag) {
        let name = attr(tag, "name").map(str::trim).unwrap_or("");
        let content = attr(tag, "content").unwrap_or("");
        if name.eq_ignore_ascii_case("robots") {
            let directives = content
                .split(',')
                .map(|d| d.trim().to_ascii_lowercase())
                .filter(|d| !d.is_empty() && d.len() <= 64);
            let room = MAX_ROBOTS_DIRECTIVES.saturating_sub(self.robots.len());
            self.robots.extend(directives.take(room));
        } else if name.eq_ignore_ascii_case("tdm-reservation") && content.trim() == "1" {
            self.tdm_reserved = true;
        }
    }

    /// [`resolve`] against the current base, refusing (and counting) URLs over the cap.
    fn resolve(&mut self, reference: &str) -> Option<Url> {
        if reference.len() > MAX_URL_BYTES {
            self.capped.long_urls += 1;
            return None;
        }
        let url = resolve(&self.base, reference)?;
        if url.as_str().len() > MAX_URL_BYTES {
            self.capped.long_urls += 1;
            return None;
        }
        Some(url)
    }
}

impl TokenSink for Collector {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        let mut state = self.state.borrow_mut();
        match token {
            Token::TagToken(tag) => state.tag(&tag),
            Token::CharacterTokens(text) => {
                state.title_text(&text);
                TokenSinkResult::Continue
            }
            _ => TokenSinkResult::Continue,
        }
    }
}

/// The value of a tag's attribute (the tokenizer lower-cases names and drops repeats).
fn attr<'a>(tag: &'a Tag, name: &str) -> Option<&'a str> {
    tag.attrs
        .iter()
        .find(|a| &*a.name.local == name)
        .map(|a| &*a.value)
}

/// Cuts `s` to at most `max` bytes at a character boundary; true when it was cut.
pub fn truncate_at_char(s: &mut String, max: usize) -> bool {
    let keep = prefix_at_char(s, max).len();
    let cut = keep < s.len();
    s.truncate(keep);
    cut
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
pub fn prefix_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// True when a MIME type names an image format `wit download` decodes.
fn is_decodable_type(mime: &str) -> bool {
    let mime = mime.trim().to_ascii_lowercase();
    DECODABLE_TYPES.contains(&mime.as_str())
}

/// Decodes page bytes to text, returning the encoding used.
pub fn decode(bytes: &[u8], content_type: Option<&str>) -> (String, &'static Encoding) {
    let encoding = detect_encoding(bytes, content_type);
    // `decode` strips a BOM and replaces malformed sequences, never failing.
    let (text, used, _had_errors) = encoding.decode(bytes);
    (text.into_owned(), used)
}

/// Picks the encoding the way browsers do: BOM, transport charset, `<meta>` pre-scan, then a
/// sniff (valid UTF-8 → UTF-8, else windows-1252, the web's legacy default).
pub fn detect_encoding(bytes: &[u8], content_type: Option<&str>) -> &'static Encoding {
    if let Some((enc, _)) = Encoding::for_bom(bytes) {
        return enc;
    }
    let declared = content_type
        .and_then(charset_param)
        .or_else(|| meta_charset(&bytes[..bytes.len().min(META_PRESCAN_BYTES)]));
    if let Some(enc) = declared {
        return enc;
    }
    if std::str::from_utf8(bytes).is_ok() || utf8_cut_at_end(bytes) {
        UTF_8
    } else {
        WINDOWS_1252
    }
}

/// True when `bytes` is valid UTF-8 except for a multi-byte sequence cut by truncation.
fn utf8_cut_at_end(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && bytes.len() - e.valid_up_to() < 4,
    }
}

/// The encoding named by a `charset=` parameter (of a header or a meta `content`).
fn charset_param(value: &str) -> Option<&'static Encoding> {
    let lower = value.to_ascii_lowercase();
    let at = lower.find("charset")?;
    let rest = lower[at + "charset".len()..].trim_start();
    let rest = rest.strip_prefix('=')?.trim_start();
    let label: String = rest
        .trim_start_matches(['"', '\''])
        .chars()
        .take_while(|c| !matches!(c, '"' | '\'' | ';' | ',' | '>' | '/') && !c.is_whitespace())
        .collect();
    Encoding::for_label(label.as_bytes()).map(html_compatible)
}

/// The HTML spec maps a declared UTF-16 to UTF-8 when there is no BOM (the bytes are ASCII-
/// compatible, or the meta could not have been read), and `x-user-defined` to windows-1252.
fn html_compatible(enc: &'static Encoding) -> &'static Encoding {
    if enc == encoding_rs::UTF_16LE || enc == encoding_rs::UTF_16BE {
        UTF_8
    } else if enc == encoding_rs::X_USER_DEFINED {
        WINDOWS_1252
    } else {
        enc
    }
}

/// Finds a charset in the `<meta>` tags of the first bytes: both `<meta charset=...>` and
/// `<meta http-equiv="Content-Type" content="...; charset=...">` contain `charset=`.
fn meta_charset(head: &[u8]) -> Option<&'static Encoding> {
    let lower = head.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = find(&lower[from..], b"<meta") {
        let start = from + at;
        let end = find(&lower[start..], b">").map_or(lower.len(), |e| start + e);
        let tag = String::from_utf8_lossy(&lower[start..end]);
        if let Some(enc) = charset_param(&tag) {
            return Some(enc);
        }
        from = end;
    }
    None
}

/// Position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One parsed `srcset` candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    /// The URL as written.
    pub url: &'a str,
    /// The width descriptor (`640w`).
    pub width: Option<f64>,
    /// The pixel-density descriptor (`2x`); 1 when no descriptor is given.
    pub density: f64,
}

/// Parses a `srcset` attribute following the HTML spec's tokenisation (URLs may contain commas;
/// a comma directly after a URL ends the candidate), at most [`MAX_SRCSET_CANDIDATES`] of them.
pub fn parse_srcset(srcset: &str) -> Vec<Candidate<'_>> {
    let mut out = Vec::new();
    let mut rest = srcset;
    while out.len() < MAX_SRCSET_CANDIDATES {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            return out;
        }
        let url_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let raw_url = &rest[..url_end];
        rest = &rest[url_end..];
        let url = raw_url.trim_end_matches(',');
        let descriptors = if url.len() < raw_url.len() {
            ""
        } else {
            let end = descriptor_end(rest);
            let d = &rest[..end];
            rest = &rest[end..];
            d
        };
        out.push(candidate(url, descriptors));
    }
    out
}

/// Index of the comma ending the descriptors (commas inside parentheses do not count).
fn descriptor_end(s: &str) -> usize {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth <= 0 => return i,
            _ => {}
        }
    }
    s.len()
}

/// Builds a candidate from its URL and descriptor text (`640w`, `2x`, `1.5x`).
fn candidate<'a>(url: &'a str, descriptors: &str) -> Candidate<'a> {
    let mut c = Candidate {
        url,
        width: None,
        density: 1.0,
    };
    for d in descriptors.split_whitespace() {
        // Split before the last character, which may be any character in hostile markup.
        let last = d.char_indices().last().map_or(0, |(i, _)| i);
        let (num, unit) = d.split_at(last);
        match (unit, num.parse::<f64>()) {
            ("w", Ok(w)) if w > 0.0 => c.width = Some(w),
            ("x", Ok(x)) if x > 0.0 => c.density = x,
            _ => {}
        }
    }
    c
}

/// Resolves a reference against the base, keeping only http(s) results (drops `data:`,
/// `javascript:`, `mailto:`, and unparsable references).
pub fn resolve(base: &Url, reference: &str) -> Option<Url> {
    let reference = reference.trim();
    if reference.is_empty() {
        return None;
    }
    base.join(reference).ok().filter(is_http)
}

/// True for http and https URLs with a host.
fn is_http(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https") && url.host().is_some()
}

/// Parses `width`/`height` attribute values like `300` or `300px`; percentages are not pixels.
fn parse_pixels(value: &str) -> Option<u32> {
    let v = value.trim();
    let v = v.strip_suffix("px").unwrap_or(v).trim();
    v.parse::<u32>().ok().or_else(|| {
        v.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u32)
    })
}

/// Collapses runs of whitespace into one space and trims the ends.
pub fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_url() -> Url {
        Url::parse("http://example.com/dir/page.html").unwrap()
    }

    fn pairs(html: &str) -> Vec<(String, String)> {
        extract(html.as_bytes(), None, &page_url())
            .images
            .into_iter()
            .map(|p| (p.url.to_string(), p.alt))
            .collect()
    }

    #[test]
    fn relative_and_absolute_src_resolve_against_the_page() {
        let got = pairs(
            r#"<img src="a.jpg" alt="one"><img src="/b.png" alt="two">
               <IMG SRC="https://cdn.example.org/c.webp" ALT="three">"#,
        );
        assert_eq!(
            got,
            vec![
                ("http://example.com/dir/a.jpg".into(), "one".into()),
                ("http://example.com/b.png".into(), "two".into()),
                ("https://cdn.example.org/c.webp".into(), "three".into()),
            ]
        );
    }

    #[test]
    fn base_href_changes_resolution_of_images_and_links() {
        let page = extract(
            br#"<head><base href="https://static.example.net/assets/"></head>
                <img src="x.jpg" alt="x"><a href="next.html">n</a>"#,
            None,
            &page_url(),
        );
        assert_eq!(page.base.as_str(), "https://static.example.net/assets/");
        assert_eq!(
            page.images[0].url.as_str(),
            "https://static.example.net/assets/x.jpg"
        );
        assert_eq!(
            page.links[0].as_str(),
            "https://static.example.net/assets/next.html"
        );
    }

    #[test]
    fn srcset_picks_the_widest_then_the_densest_candidate() {
        let got = pairs(
            r#"<img src="s.jpg" srcset="s.jpg 320w, l.jpg 1280w, m.jpg 640w" alt="w">
               <img src="s.jpg" srcset="s.jpg, d3.jpg 3x, d2.jpg 2x" alt="x">
               <img srcset="img,comma.jpg 2x, other.jpg 1x" alt="comma">"#,
        );
        assert_eq!(got[0].0, "http://example.com/dir/l.jpg");
        assert_eq!(got[1].0, "http://example.com/dir/d3.jpg");
        assert_eq!(got[2].0, "http://example.com/dir/img,comma.jpg");
    }

    #[test]
    fn srcset_parser_follows_the_spec_tokenisation() {
        let c = parse_srcset(" a.jpg 1x,b.jpg 640w , c.jpg,, d.jpg 2x");
        let urls: Vec<_> = c.iter().map(|c| c.url).collect();
        assert_eq!(urls, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]);
        assert_eq!(c[1].width, Some(640.0));
        assert_eq!(c[3].density, 2.0);
    }

    #[test]
    fn a_descriptor_ending_in_a_multibyte_character_is_ignored_not_a_panic() {
        // Found by the fuzz campaign (html, seed 1003): `split_at(len - 1)` cut inside `¡`.
        let c = parse_srcset("\0\u{b}\u{a1} a.jpg 640\u{20ac}, b.jpg 2\u{1F600}");
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.width.is_none() && c.density == 1.0));
    }

    #[test]
    fn lazy_attributes_win_over_a_data_placeholder() {
        let got = pairs(
            r#"<img src="data:image/gif;base64,R0lGOD" data-src="/real.jpg" alt="lazy">
               <img src="data:image/gif;base64,R0lGOD" data-original="orig.png" alt="orig">
               <img src="data:image/gif;base64,R0lGOD" data-lazy-src="lz.webp" alt="lz">
               <img src="data:image/gif;base64,R0lGOD" data-srcset="a.jpg 1x, b.jpg 2x" alt="ls">"#,
        );
        assert_eq!(
            got,
            vec![
                ("http://example.com/real.jpg".into(), "lazy".into()),
                ("http://example.com/dir/orig.png".into(), "orig".into()),
                ("http://example.com/dir/lz.webp".into(), "lz".into()),
                ("http://example.com/dir/b.jpg".into(), "ls".into()),
            ]
        );
    }

    #[test]
    fn data_javascript_and_other_schemes_are_skipped_but_keep_their_position() {
        let page = extract(
            br#"<img src="data:image/png;base64,iVBOR" alt="inline">
                <img src="javascript:void(0)" alt="js">
                <img src="ftp://example.com/x.jpg" alt="ftp">
                <img alt="nothing">
                <img src="ok.jpg" alt="kept">"#,
            None,
            &page_url(),
        );
        assert_eq!(page.images.len(), 1);
        assert_eq!(page.images[0].alt, "kept");
        assert_eq!(page.images[0].position, 4);
    }

    #[test]
    fn picture_uses_the_first_decodable_source_and_the_img_alt() {
        let got = pairs(
            r#"<picture>
                 <source type="image/avif" srcset="p.avif 2x">
                 <source type="image/webp" srcset="p-small.webp 480w, p-big.webp 1200w">
                 <img src="p.jpg" alt="a picture">
               </picture>
               <picture><img src="plain.jpg" alt="no sources"></picture>"#,
        );
        assert_eq!(
            got,
            vec![
                (
                    "http://example.com/dir/p-big.webp".into(),
                    "a picture".into()
                ),
                (
                    "http://example.com/dir/plain.jpg".into(),
                    "no sources".into()
                ),
            ]
        );
    }

    #[test]
    fn alt_entities_are_decoded_and_whitespace_collapsed() {
        let got = pairs(
            "<img src=a.jpg alt=\"  Tom &amp; Jerry&#39;s\n\t&lt;caf&eacute;&gt; &nbsp;  &#x263A; \">",
        );
        assert_eq!(got[0].1, "Tom & Jerry's <café> ☺");
    }

    #[test]
    fn non_utf8_pages_decode_from_header_meta_and_sniffing() {
        // "Café crème" in windows-1252 / ISO-8859-1.
        let latin1 = b"<img src=a.jpg alt=\"Caf\xe9 cr\xe8me\">";
        let from_header = extract(latin1, Some("text/html; charset=ISO-8859-1"), &page_url());
        assert_eq!(from_header.images[0].alt, "Café crème");

        let with_meta = [b"<meta charset=\"windows-1252\">".as_slice(), latin1].concat();
        assert_eq!(
            extract(&with_meta, None, &page_url()).images[0].alt,
            "Café crème"
        );

        let http_equiv = [
            b"<meta http-equiv=\"Content-Type\" content=\"text/html; charset=iso-8859-1\">"
                .as_slice(),
            latin1,
        ]
        .concat();
        assert_eq!(
            extract(&http_equiv, None, &page_url()).images[0].alt,
            "Café crème"
        );

        let sniffed = extract(latin1, None, &page_url());
        assert_eq!(sniffed.images[0].alt, "Café crème");
        assert_eq!(sniffed.encoding, "windows-1252");

        let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode("<img src=a.jpg alt=\"猫の写真\">");
        let page = extract(&sjis, Some("text/html;charset=Shift_JIS"), &page_url());
        assert_eq!(page.images[0].alt, "猫の写真");
    }

    #[test]
    fn bom_wins_over_a_wrong_header() {
        let bytes = [
            b"\xEF\xBB\xBF".as_slice(),
            "<img src=a.jpg alt=\"naïve\">".as_bytes(),
        ]
        .concat();
        let page = extract(&bytes, Some("text/html; charset=iso-8859-1"), &page_url());
        assert_eq!(page.images[0].alt, "naïve");
        assert_eq!(page.encoding, "UTF-8");
    }

    #[test]
    fn title_links_size_attributes_and_meta_robots() {
        let page = extract(
            br#"<html><head><title>  My
                 Page </title><meta name="ROBOTS" content="NoFollow, noimageindex"></head>
                <body><a href="/x#frag">x</a><a href="mailto:a@b">m</a><a href="javascript:go()">j</a>
                <area href="https://other.org/">
                <img src="a.jpg" width="300" height="200px" alt="sized">
                <img src="b.jpg" width="50%" alt="percent"></body></html>"#,
            None,
            &page_url(),
        );
        assert_eq!(page.title.as_deref(), Some("My Page"));
        let links: Vec<_> = page.links.iter().map(Url::as_str).collect();
        assert_eq!(links, ["http://example.com/x#frag", "https://other.org/"]);
        assert_eq!(page.robots, ["nofollow", "noimageindex"]);
        assert_eq!(
            (page.images[0].width, page.images[0].height),
            (Some(300), Some(200))
        );
        assert_eq!((page.images[1].width, page.images[1].height), (None, None));
    }

    #[test]
    fn pages_over_the_size_limit_are_cut() {
        let mut html = String::from("<img src=first.jpg alt=first>");
        html.push_str(&" ".repeat(100));
        html.push_str("<img src=late.jpg alt=late>");
        let page = extract_limited(html.as_bytes(), None, &page_url(), 50);
        assert!(page.truncated);
        let alts: Vec<_> = page.images.iter().map(|p| p.alt.as_str()).collect();
        assert_eq!(alts, ["first"]);
    }

    #[test]
    fn markup_inside_script_style_and_noscript_is_text() {
        let page = extract(
            br#"<script>var s = '<img src="s.jpg" alt="script">';</script>
                <style>/* <img src="c.jpg" alt="css"> */</style>
                <noscript><img src="n.jpg" alt="noscript"></noscript>
                <textarea><a href="/t">t</a></textarea>
                <img src="real.jpg" alt="real">"#,
            None,
            &page_url(),
        );
        let alts: Vec<_> = page.images.iter().map(|p| p.alt.as_str()).collect();
        assert_eq!(alts, ["real"]);
        assert_eq!(page.images[0].position, 0);
        assert!(page.links.is_empty());
    }

    #[test]
    fn svg_title_does_not_swallow_the_page() {
        let page = extract(
            br#"<svg><title>icon</svg><title>Real</title><img src=a.jpg alt=after>"#,
            None,
            &page_url(),
        );
        assert_eq!(page.images.len(), 1);
    }

    #[test]
    fn tdm_reservation_meta_marks_the_page() {
        let reserved = extract(
            br#"<meta name="TDM-Reservation" content=" 1 "><img src=a.jpg alt=a>"#,
            None,
            &page_url(),
        );
        assert!(reserved.tdm_reserved);
        let open = extract(
            br#"<meta name="tdm-reservation" content="0"><img src=a.jpg alt=a>"#,
            None,
            &page_url(),
        );
        assert!(!open.tdm_reserved);
    }

    #[test]
    fn long_strings_are_cut_or_dropped_and_counted() {
        let long = "x".repeat(MAX_URL_BYTES + 1);
        let title = "é".repeat(MAX_TITLE_BYTES * 10);
        let alt = "ü".repeat(MAX_ALT_BYTES);
        let html = format!(
            r#"<title>{title}</title><base href="http://b.test/{long}">
               <img src="{long}.jpg" alt="long url"><img src="ok.jpg" alt="{alt}">
               <img srcset="{long} 2x, small.jpg 1x" alt="set"><a href="/{long}">l</a>"#
        );
        let page = extract(html.as_bytes(), None, &page_url());
        let t = page.title.as_deref().unwrap();
        assert!(t.len() <= MAX_TITLE_BYTES && t.len() > MAX_TITLE_BYTES - 2);
        assert_eq!(page.base, page_url(), "an over-long base is ignored");
        let got: Vec<_> = page.images.iter().map(|i| i.url.as_str()).collect();
        assert_eq!(
            got,
            [
                "http://example.com/dir/ok.jpg",
                "http://example.com/dir/small.jpg"
            ]
        );
        assert!(page.images[0].alt.len() <= MAX_ALT_BYTES);
        assert!(page.links.is_empty());
        let c = page.capped;
        assert_eq!((c.long_titles, c.long_alts), (1, 1));
        assert_eq!(c.long_urls, 4, "base, src, srcset candidate, href");
    }

    #[test]
    fn images_and_links_per_page_are_capped() {
        let html = "<img src=i.jpg alt=i><a href=l>l</a>".repeat(MAX_LINKS_PER_PAGE + 10);
        let page = extract(html.as_bytes(), None, &page_url());
        assert_eq!(page.images.len(), MAX_IMAGES_PER_PAGE);
        assert_eq!(page.links.len(), MAX_LINKS_PER_PAGE);
        let c = page.capped;
        assert_eq!(
            (c.extra_images, c.extra_links),
            ((MAX_LINKS_PER_PAGE + 10 - MAX_IMAGES_PER_PAGE) as u64, 10)
        );
    }

    /// Deep nesting then many `</p>`: a tree builder walks the open elements for each `</p>`
    /// (depth × tags); the tokenizer is linear.
    #[test]
    fn deep_nesting_then_many_end_tags_is_linear() {
        let mut html = "<div>".repeat(100_000);
        html.push_str(&"</p>".repeat(100_000));
        html.push_str("<img src=end.jpg alt=end>");
        let started = Instant::now();
        let page = extract(html.as_bytes(), None, &page_url());
        assert_eq!(page.images.len(), 1);
        assert!(!page.timed_out);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_page_past_the_deadline_keeps_what_was_found() {
        let mut html = "<img src=a.jpg alt=first>".to_string();
        html.push_str(&" ".repeat(FEED_CHUNK_BYTES * 2));
        html.push_str("<img src=b.jpg alt=late>");
        let page = extract_within(
            html.as_bytes(),
            None,
            &page_url(),
            usize::MAX,
            Duration::ZERO,
        );
        assert!(page.timed_out);
        assert!(page.images.len() <= 1);
    }
}
