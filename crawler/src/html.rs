//! HTML → (image URL, alt text) pairs and out-links.
//!
//! Pure extraction: bytes in, [`Page`] out, no I/O. Both `wit crawl` (live pages) and `wit warc`
//! (archived responses) call [`extract`], so a page yields the same pairs whichever way it came.
//! The bytes are decoded first (BOM, then the `Content-Type` charset, then `<meta>`, then a UTF-8
//! sniff falling back to windows-1252, as browsers do) so non-UTF-8 alt text survives.

use encoding_rs::{Encoding, UTF_8, WINDOWS_1252};
use scraper::{ElementRef, Html};
use url::Url;

/// Pages larger than this are cut before parsing: real pages with images are far smaller, and an
/// endless or hostile page must not take unbounded memory or time.
pub const DEFAULT_MAX_HTML_BYTES: usize = 8 << 20;

/// How many leading bytes the `<meta charset>` pre-scan looks at (the HTML spec says 1024; real
/// pages often put a long `<head>` first, so look further).
const META_PRESCAN_BYTES: usize = 4096;

/// Lazy-loading attributes that hold the real image URL while `src` holds a placeholder.
const LAZY_SRC_ATTRS: [&str; 4] = ["data-src", "data-original", "data-lazy-src", "data-lazy"];

/// Lazy-loading attributes that hold the real `srcset`.
const LAZY_SRCSET_ATTRS: [&str; 2] = ["data-srcset", "data-lazy-srcset"];

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
    /// The `<title>` text, whitespace collapsed; `None` when missing or empty.
    pub title: Option<String>,
    /// The URL relative references resolve against (`<base href>` or the page URL).
    pub base: Url,
    /// Images in document order, one per `<img>` that resolved to an http(s) URL.
    pub images: Vec<ImagePair>,
    /// `<a href>` / `<area href>` targets resolved against `base`, http(s) only, in document order.
    pub links: Vec<Url>,
    /// Lower-cased directives of `<meta name="robots">` (e.g. `nofollow`, `noimageindex`, `noai`),
    /// so the crawler can honour a page's own opt-out.
    pub robots: Vec<String>,
    /// The character encoding the bytes were decoded with.
    pub encoding: &'static str,
    /// True when the page was longer than the size limit and only its beginning was parsed.
    pub truncated: bool,
}

/// One image of a page with the text that describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePair {
    /// The chosen image URL (largest `srcset` candidate, lazy URL, or `src`), absolute.
    pub url: Url,
    /// The alt text with entities decoded and whitespace collapsed; empty when absent.
    pub alt: String,
    /// Ordinal of the `<img>` element among all `<img>` elements of the page (0-based), so
    /// position stays meaningful when some images are skipped.
    pub position: u32,
    /// The `width` attribute when it is a plain number of pixels.
    pub width: Option<u32>,
    /// The `height` attribute when it is a plain number of pixels.
    pub height: Option<u32>,
}

/// Extracts title, images and links from an HTML page, limited to [`DEFAULT_MAX_HTML_BYTES`].
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
    let truncated = html.len() > max_bytes;
    let bytes = &html[..html.len().min(max_bytes)];
    let (text, encoding) = decode(bytes, content_type);
    let doc = Html::parse_document(&text);
    let base = find_base(&doc, page_url);
    let mut page = Page {
        title: None,
        base,
        images: Vec::new(),
        links: Vec::new(),
        robots: Vec::new(),
        encoding: encoding.name(),
        truncated,
    };
    let mut img_ordinal = 0u32;
    for el in doc.root_element().descendent_elements() {
        match el.value().name() {
            "title" if page.title.is_none() => page.title = non_empty(collapse_ws(&text_of(el))),
            "img" => {
                if let Some(pair) = image_pair(el, &page.base, img_ordinal) {
                    page.images.push(pair);
                }
                img_ordinal += 1;
            }
            "a" | "area" => {
                if let Some(url) = el.attr("href").and_then(|h| resolve(&page.base, h)) {
                    page.links.push(url);
                }
            }
            "meta" => page.robots.extend(meta_robots(el)),
            _ => {}
        }
    }
    page
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

/// The document's base URL: the first `<base href>` resolved against the page URL.
fn find_base(doc: &Html, page_url: &Url) -> Url {
    doc.root_element()
        .descendent_elements()
        .find(|el| el.value().name() == "base" && el.attr("href").is_some())
        .and_then(|el| page_url.join(el.attr("href")?.trim()).ok())
        .filter(is_http)
        .unwrap_or_else(|| page_url.clone())
}

/// The pair for one `<img>`, or `None` when no http(s) URL can be found for it.
fn image_pair(img: ElementRef<'_>, base: &Url, position: u32) -> Option<ImagePair> {
    let url = picture_source(img, base).or_else(|| img_url(img, base))?;
    Some(ImagePair {
        url,
        alt: collapse_ws(img.attr("alt").unwrap_or("")),
        position,
        width: img.attr("width").and_then(parse_pixels),
        height: img.attr("height").and_then(parse_pixels),
    })
}

/// For an `<img>` inside `<picture>`: the largest candidate of the first `<source>` with a
/// decodable type (the one a browser would pick, ignoring media queries).
fn picture_source(img: ElementRef<'_>, base: &Url) -> Option<Url> {
    let picture = img.parent().and_then(ElementRef::wrap)?;
    if picture.value().name() != "picture" {
        return None;
    }
    picture
        .child_elements()
        .filter(|s| s.value().name() == "source")
        .filter(|s| s.attr("type").is_none_or(is_decodable_type))
        .find_map(|s| srcset_of(s, base))
}

/// True when a MIME type names an image format `wit download` decodes.
fn is_decodable_type(mime: &str) -> bool {
    let mime = mime.trim().to_ascii_lowercase();
    DECODABLE_TYPES.contains(&mime.as_str())
}

/// The URL of a plain `<img>`: largest `srcset` candidate, then lazy attributes, then `src`.
fn img_url(img: ElementRef<'_>, base: &Url) -> Option<Url> {
    srcset_of(img, base)
        .or_else(|| {
            LAZY_SRC_ATTRS
                .iter()
                .find_map(|a| img.attr(a).and_then(|v| resolve(base, v)))
        })
        .or_else(|| img.attr("src").and_then(|v| resolve(base, v)))
}

/// The largest usable candidate of an element's lazy or plain `srcset`.
fn srcset_of(el: ElementRef<'_>, base: &Url) -> Option<Url> {
    LAZY_SRCSET_ATTRS
        .iter()
        .chain(std::iter::once(&"srcset"))
        .filter_map(|a| el.attr(a))
        .find_map(|set| largest_candidate(set, base))
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
/// a comma directly after a URL ends the candidate).
pub fn parse_srcset(srcset: &str) -> Vec<Candidate<'_>> {
    let mut out = Vec::new();
    let mut rest = srcset;
    loop {
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
        let (num, unit) = d.split_at(d.len().saturating_sub(1));
        match (unit, num.parse::<f64>()) {
            ("w", Ok(w)) if w > 0.0 => c.width = Some(w),
            ("x", Ok(x)) if x > 0.0 => c.density = x,
            _ => {}
        }
    }
    c
}

/// The largest candidate that resolves to http(s): by width when any candidate has one, else by
/// density. Ties keep the first.
fn largest_candidate(srcset: &str, base: &Url) -> Option<Url> {
    let usable: Vec<(Candidate<'_>, Url)> = parse_srcset(srcset)
        .into_iter()
        .filter_map(|c| resolve(base, c.url).map(|u| (c, u)))
        .collect();
    let by_width = usable.iter().any(|(c, _)| c.width.is_some());
    let size = |c: &Candidate<'_>| {
        if by_width {
            c.width.unwrap_or(0.0)
        } else {
            c.density
        }
    };
    usable
        .into_iter()
        .reduce(|best, next| {
            if size(&next.0) > size(&best.0) {
                next
            } else {
                best
            }
        })
        .map(|(_, u)| u)
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

/// Directives of a `<meta name="robots" content="...">` element.
fn meta_robots(meta: ElementRef<'_>) -> Vec<String> {
    let is_robots = meta
        .attr("name")
        .is_some_and(|n| n.trim().eq_ignore_ascii_case("robots"));
    if !is_robots {
        return Vec::new();
    }
    meta.attr("content")
        .unwrap_or("")
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect()
}

/// All text under an element.
fn text_of(el: ElementRef<'_>) -> String {
    el.text().collect()
}

/// Collapses runs of whitespace into one space and trims the ends.
pub fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `Some(s)` unless `s` is empty.
fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
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
}
