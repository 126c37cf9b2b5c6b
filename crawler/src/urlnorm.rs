//! URL normalisation and a memory-bounded "seen" set.
//!
//! The same page is linked as `HTTP://Example.com:80/a/../b#top` and `http://example.com/b`;
//! without normalisation a crawler fetches it twice. [`normalize`] maps such spellings to one URL,
//! and [`SeenSet`] remembers which ones were already queued using 8 bytes per URL (exact 64-bit
//! hashes) or a fixed-size Bloom filter when the crawl is too large for that.

use url::Url;

/// Normalises a URL so that equivalent spellings compare equal: lower-case scheme and host,
/// default port removed, dot segments resolved, empty path → `/` (all done by [`Url`] parsing),
/// plus fragment removed, an empty `?` removed, and percent-encoding normalised (escapes of
/// unreserved characters decoded, hex digits upper-cased).
pub fn normalize(url: &Url) -> Url {
    let mut u = url.clone();
    u.set_fragment(None);
    let path = normalize_percent(u.path());
    if path != u.path() {
        u.set_path(&path);
    }
    match u.query() {
        Some("") => u.set_query(None),
        Some(q) => {
            let q = normalize_percent(q);
            if Some(q.as_str()) != u.query() {
                u.set_query(Some(&q));
            }
        }
        None => {}
    }
    u
}

/// Parses and normalises a URL string; `None` unless it is an absolute http(s) URL.
pub fn parse_normalized(s: &str) -> Option<Url> {
    let u = Url::parse(s.trim()).ok()?;
    (matches!(u.scheme(), "http" | "https") && u.host().is_some()).then(|| normalize(&u))
}

/// Decodes `%XX` escapes of RFC 3986 unreserved characters and upper-cases the hex digits of the
/// others (RFC 3986 §6.2.2.1–2), leaving everything else as is.
fn normalize_percent(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && is_hex(b[i + 1]) && is_hex(b[i + 2]) {
            let byte = hex_val(b[i + 1]) * 16 + hex_val(b[i + 2]);
            if is_unreserved(byte) {
                out.push(byte as char);
            } else {
                out.push('%');
                out.push(b[i + 1].to_ascii_uppercase() as char);
                out.push(b[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            let ch = s[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// True for ASCII hex digits.
fn is_hex(c: u8) -> bool {
    c.is_ascii_hexdigit()
}

/// The value of an ASCII hex digit.
fn hex_val(c: u8) -> u8 {
    (c as char).to_digit(16).expect("hex digit") as u8
}

/// RFC 3986 unreserved characters: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// A 128-bit hash of a key, split in two 64-bit halves (one for the exact set, both for the
/// Bloom filter's double hashing).
fn hash128(key: &[u8]) -> (u64, u64) {
    let h = blake3::hash(key);
    let b = h.as_bytes();
    let lo = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    (lo, hi)
}

/// Remembers which keys (URLs, or url+alt pairs) were seen, in bounded memory.
///
/// `Exact` keeps one 64-bit hash per key (a collision among 10⁹ keys has probability ~3·10⁻²);
/// `Bloom` uses a fixed number of bits chosen up front, at the cost of a false-positive rate
/// (a new key wrongly reported as seen, so that URL is skipped).
#[derive(Debug)]
pub enum SeenSet {
    /// One 64-bit hash per key.
    Exact(std::collections::HashSet<u64>),
    /// A Bloom filter sized for an expected number of keys.
    Bloom(Bloom),
}

impl SeenSet {
    /// An exact set.
    pub fn exact() -> Self {
        SeenSet::Exact(std::collections::HashSet::new())
    }

    /// A Bloom filter for `expected_items` keys at false-positive rate `fp_rate`.
    pub fn bloom(expected_items: u64, fp_rate: f64) -> Self {
        SeenSet::Bloom(Bloom::new(expected_items, fp_rate))
    }

    /// Records `key`; returns true when it was not seen before.
    pub fn insert(&mut self, key: &[u8]) -> bool {
        let (lo, hi) = hash128(key);
        match self {
            SeenSet::Exact(set) => set.insert(lo),
            SeenSet::Bloom(b) => b.insert_hashes(lo, hi),
        }
    }

    /// Bytes of memory the set's storage takes (for the summary and the memory budget).
    pub fn memory_bytes(&self) -> usize {
        match self {
            SeenSet::Exact(set) => set.capacity() * 9,
            SeenSet::Bloom(b) => b.bits.len() * 8,
        }
    }
}

/// A Bloom filter with `k` hash functions derived by double hashing (Kirsch–Mitzenmacher).
#[derive(Debug)]
pub struct Bloom {
    bits: Vec<u64>,
    nbits: u64,
    k: u32,
}

impl Bloom {
    /// Sizes the filter for `n` items at false-positive rate `p`:
    /// m = −n·ln p / (ln 2)², k = (m/n)·ln 2.
    pub fn new(n: u64, p: f64) -> Self {
        let n = n.max(1) as f64;
        let p = p.clamp(1e-12, 0.5);
        let ln2 = std::f64::consts::LN_2;
        let nbits = ((-n * p.ln()) / (ln2 * ln2)).ceil().max(64.0) as u64;
        let k = ((nbits as f64 / n) * ln2).round().clamp(1.0, 32.0) as u32;
        Bloom {
            bits: vec![0; nbits.div_ceil(64) as usize],
            nbits,
            k,
        }
    }

    /// Sets the key's bits; returns true when at least one was unset (the key is new).
    fn insert_hashes(&mut self, lo: u64, hi: u64) -> bool {
        let mut new = false;
        for i in 0..u64::from(self.k) {
            let bit = lo.wrapping_add(i.wrapping_mul(hi | 1)) % self.nbits;
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            new |= self.bits[word] & mask == 0;
            self.bits[word] |= mask;
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(&Url::parse(s).unwrap()).to_string()
    }

    #[test]
    fn equivalent_spellings_normalise_to_one_url() {
        assert_eq!(
            n("HTTP://Example.COM:80/a/./b/../c#frag"),
            "http://example.com/a/c"
        );
        assert_eq!(n("https://example.com:443"), "https://example.com/");
        assert_eq!(n("http://example.com:8080/x?"), "http://example.com:8080/x");
        assert_eq!(
            n("http://example.com/%7euser/%41%2fb%2F?q=%7e%3d"),
            "http://example.com/~user/A%2Fb%2F?q=~%3D"
        );
        assert_eq!(
            n("http://example.com/caf%C3%A9"),
            "http://example.com/caf%C3%A9"
        );
        assert_eq!(n("http://example.com/café"), "http://example.com/caf%C3%A9");
        assert_eq!(
            n("http://example.com/a?b=1&a=2"),
            "http://example.com/a?b=1&a=2"
        );
        assert_eq!(n("http://example.com/100%"), "http://example.com/100%");
    }

    #[test]
    fn only_http_urls_parse() {
        assert!(parse_normalized("ftp://example.com/").is_none());
        assert!(parse_normalized("not a url").is_none());
        assert_eq!(
            parse_normalized(" http://A.com/x#y ").unwrap().as_str(),
            "http://a.com/x"
        );
    }

    #[test]
    fn exact_set_reports_each_key_once() {
        let mut s = SeenSet::exact();
        assert!(s.insert(b"a"));
        assert!(s.insert(b"b"));
        assert!(!s.insert(b"a"));
    }

    #[test]
    fn bloom_has_no_false_negatives_and_about_the_target_false_positive_rate() {
        let mut s = SeenSet::bloom(10_000, 0.01);
        for i in 0..10_000u32 {
            s.insert(&i.to_le_bytes());
        }
        for i in 0..10_000u32 {
            assert!(!s.insert(&i.to_le_bytes()), "false negative for {i}");
        }
        let false_positives = (10_000..11_000u32)
            .filter(|i| !s.insert(&i.to_le_bytes()))
            .count();
        // Expect ~10 at the 1% target (a little more: these inserts fill the filter too).
        assert!(
            false_positives < 40,
            "{false_positives} false positives out of 1000"
        );
        assert!(s.memory_bytes() < 20_000);
    }
}
