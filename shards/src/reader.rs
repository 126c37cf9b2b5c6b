//! A streaming WebDataset reader over any `Read`: tar members grouped into samples by
//! webdataset's rule, with truncation and corruption reported as errors at their byte offset.

use crate::error::ShardError;
use std::io::{ErrorKind, Read};

const BLOCK: usize = 512;

/// Members larger than this are refused: a garbage size field must not exhaust memory.
pub const MAX_MEMBER_BYTES: u64 = 1 << 30;

/// One WebDataset sample: the members that share a key, in tar order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The key: member name up to the first dot of its file name (directories included).
    pub key: String,
    /// `(extension, bytes)` pairs; the extension is everything after that dot, lowercased.
    pub members: Vec<(String, Vec<u8>)>,
}

impl Sample {
    /// The bytes of the member with extension `ext`, as webdataset's `sample[ext]`.
    pub fn get(&self, ext: &str) -> Option<&[u8]> {
        self.members
            .iter()
            .find(|(e, _)| e == ext)
            .map(|(_, b)| b.as_slice())
    }

    /// The image member, first of `jpg`, `jpeg`, `png`, `webp` (open_clip's choice).
    pub fn image(&self) -> Option<(&str, &[u8])> {
        ["jpg", "jpeg", "png", "webp"]
            .into_iter()
            .find_map(|ext| self.get(ext).map(|b| (ext, b)))
    }

    /// The caption (`txt` member) when present and valid UTF-8.
    pub fn caption(&self) -> Option<&str> {
        self.get("txt").and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// Splits a member name into (key, extension) with webdataset's `base_plus_ext` rule
/// `^((?:.*/|)[^.]+)[.]([^/]*)$`; `None` means webdataset ignores the member.
pub fn split_key(name: &str) -> Option<(&str, &str)> {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = base_start + name[base_start..].find('.')?;
    let after_last_dot = name[..dot].rfind('.').map_or(0, |i| i + 1);
    let starts = std::iter::once(0).chain(name.match_indices('/').map(|(i, _)| i + 1));
    let mut valid = starts.filter(|&j| j >= after_last_dot && j < dot);
    valid.next()?;
    Some((&name[..dot], &name[dot + 1..]))
}

/// webdataset skips `__name__` entries (dataset metadata such as `__index__`).
fn is_meta(name: &str) -> bool {
    let first = name.split('/').next().unwrap_or(name);
    first.len() >= 2 && first.starts_with("__") && first.ends_with("__")
}

struct Member {
    key: String,
    ext: String,
    data: Vec<u8>,
    offset: u64,
    name: String,
}

/// Pending overrides from PAX (`x`) and GNU long-name (`L`) headers for the next member.
#[derive(Default)]
struct Overrides {
    path: Option<String>,
    size: Option<u64>,
}

/// Streams samples out of a tar. Stops after the first error; never panics on bad input.
pub struct ShardReader<R> {
    src: R,
    offset: u64,
    pending: Option<Member>,
    /// The end-of-archive block was seen: nothing after it is read.
    at_end: bool,
    done: bool,
}

impl<R: Read> ShardReader<R> {
    /// Reads samples from `src` (a file, an HTTP body, ...) without seeking.
    pub fn new(src: R) -> Self {
        ShardReader {
            src,
            offset: 0,
            pending: None,
            at_end: false,
            done: false,
        }
    }

    /// Bytes consumed so far (for progress and error context).
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// Fills `buf` completely; `Ok(false)` on a clean EOF before the first byte.
    fn fill(&mut self, buf: &mut [u8], member: Option<&str>) -> Result<bool, ShardError> {
        let mut got = 0;
        while got < buf.len() {
            match self.src.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(ShardError::Truncated {
                        offset: self.offset,
                        member: member.map(str::to_string),
                    })
                }
                Ok(n) => {
                    got += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ShardError::Read {
                        offset: self.offset,
                        source,
                    })
                }
            }
        }
        Ok(true)
    }

    /// Reads `size` bytes of member data plus padding to the next block. The data is read
    /// straight into its own buffer: no zero-filled bounce buffer per member.
    fn read_data(&mut self, size: u64, name: &str) -> Result<Vec<u8>, ShardError> {
        let truncated = |offset| ShardError::Truncated {
            offset,
            member: Some(name.to_string()),
        };
        let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
        let read = (&mut self.src).take(size).read_to_end(&mut data);
        self.offset += data.len() as u64;
        if let Err(source) = read {
            return Err(ShardError::Read {
                offset: self.offset,
                source,
            });
        }
        if (data.len() as u64) < size {
            return Err(truncated(self.offset));
        }
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        let mut padding = [0u8; BLOCK];
        if pad > 0 && !self.fill(&mut padding[..pad], Some(name))? {
            return Err(truncated(self.offset));
        }
        Ok(data)
    }

    /// The next regular file that webdataset would keep, or `None` at the end of the archive.
    fn next_member(&mut self) -> Result<Option<Member>, ShardError> {
        let mut over = Overrides::default();
        while !self.at_end {
            let offset = self.offset;
            let mut block = [0u8; BLOCK];
            if !self.fill(&mut block, None)? {
                return Err(ShardError::Truncated {
                    offset,
                    member: None,
                });
            }
            if block.iter().all(|&b| b == 0) {
                self.at_end = true;
                break;
            }
            let header = Header::parse(&block, offset)?;
            let name = over.path.take().unwrap_or_else(|| header.name.clone());
            let size = over.size.take().unwrap_or(header.size);
            if size > MAX_MEMBER_BYTES {
                return Err(ShardError::Corrupt {
                    offset,
                    member: Some(name),
                    reason: format!(
                        "member claims {size} bytes, more than the {MAX_MEMBER_BYTES}-byte limit"
                    ),
                });
            }
            let data = self.read_data(size, &name)?;
            match header.typeflag {
                b'x' => over = parse_pax(&data, offset, over)?,
                b'L' => over.path = Some(c_string(&data)),
                b'0' | 0 | b'7' if !name.ends_with('/') => {
                    if let Some(member) = keep(name, data, offset) {
                        return Ok(Some(member));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    fn next_sample(&mut self) -> Result<Option<Sample>, ShardError> {
        let first = match self.pending.take() {
            Some(m) => m,
            None => match self.next_member()? {
                Some(m) => m,
                None => return Ok(None),
            },
        };
        let mut sample = Sample {
            key: first.key,
            members: vec![(first.ext, first.data)],
        };
        while let Some(m) = self.next_member()? {
            if m.key != sample.key {
                self.pending = Some(m);
                break;
            }
            if sample.get(&m.ext).is_some() {
                return Err(ShardError::Corrupt {
                    offset: m.offset,
                    member: Some(m.name),
                    reason: format!("duplicate extension {:?} in sample {:?}", m.ext, sample.key),
                });
            }
            sample.members.push((m.ext, m.data));
        }
        Ok(Some(sample))
    }
}

fn keep(name: String, data: Vec<u8>, offset: u64) -> Option<Member> {
    if is_meta(&name) {
        return None;
    }
    let (key, ext) = split_key(&name)?;
    Some(Member {
        key: key.to_string(),
        ext: ext.to_lowercase(),
        data,
        offset,
        name: name.clone(),
    })
}

impl<R: Read> Iterator for ShardReader<R> {
    type Item = Result<Sample, ShardError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self.next_sample().transpose();
        if !matches!(result, Some(Ok(_))) {
            self.done = true;
        }
        result
    }
}

/// The fields of a tar header that grouping needs.
struct Header {
    name: String,
    size: u64,
    typeflag: u8,
}

impl Header {
    fn parse(block: &[u8; BLOCK], offset: u64) -> Result<Header, ShardError> {
        let name = c_string(&block[0..100]);
        let corrupt = |reason: String| ShardError::Corrupt {
            offset,
            member: Some(name.clone()).filter(|n| !n.is_empty()),
            reason,
        };
        let stored = parse_octal(&block[148..156])
            .ok_or_else(|| corrupt("header checksum field is not a number".into()))?;
        let unsigned: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        let signed: i64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(b as i8)
                }
            })
            .sum();
        if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
            return Err(corrupt(format!(
                "header checksum mismatch (stored {stored}, computed {unsigned})"
            )));
        }
        let size = parse_size(&block[124..136])
            .ok_or_else(|| corrupt("header size field is not a number".into()))?;
        let full_name = if &block[257..263] == b"ustar\0" && block[345] != 0 {
            format!("{}/{}", c_string(&block[345..500]), name)
        } else {
            name.clone()
        };
        Ok(Header {
            name: full_name,
            size,
            typeflag: block[156],
        })
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Size fields are octal, or base-256 (GNU) when the high bit of the first byte is set.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 == 0 {
        return parse_octal(field);
    }
    let mut value: u64 = u64::from(field[0] & 0x7f);
    for &b in &field[1..] {
        value = value.checked_mul(256)?.checked_add(u64::from(b))?;
    }
    Some(value)
}

/// PAX records `"<len> <key>=<value>\n"`; `path` and `size` override the next header.
fn parse_pax(data: &[u8], offset: u64, mut over: Overrides) -> Result<Overrides, ShardError> {
    let corrupt = |reason: &str| ShardError::Corrupt {
        offset,
        member: None,
        reason: format!("bad PAX extended header: {reason}"),
    };
    let mut rest = data;
    while !rest.is_empty() && rest[0] != 0 {
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| corrupt("record without length"))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&l| l > space && l <= rest.len())
            .ok_or_else(|| corrupt("bad record length"))?;
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
            match &record[..eq] {
                b"path" => over.path = Some(value),
                b"size" => over.size = Some(value.parse().map_err(|_| corrupt("bad size"))?),
                _ => {}
            }
        }
        rest = &rest[len..];
    }
    Ok(over)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_key_follows_webdataset() {
        assert_eq!(split_key("000010005.jpg"), Some(("000010005", "jpg")));
        assert_eq!(split_key("a/b.c/d.seg.png"), Some(("a/b.c/d", "seg.png")));
        assert_eq!(split_key("dir/x.JSON"), Some(("dir/x", "JSON")));
        assert_eq!(split_key("a/.hidden.jpg"), Some(("a/", "hidden.jpg")));
        assert_eq!(split_key("a.b/.hidden.jpg"), None);
        assert_eq!(split_key(".hidden.jpg"), None);
        assert_eq!(split_key("noext"), None);
        assert_eq!(split_key("dir.d/noext"), None);
    }

    #[test]
    fn meta_members_are_skipped() {
        assert!(is_meta("__index__"));
        assert!(is_meta("__meta__/x.json"));
        assert!(!is_meta("__x/y.json"));
        assert!(!is_meta("a.__b__"));
    }

    #[test]
    fn empty_and_garbage_streams_are_errors() {
        let mut empty = ShardReader::new(&[][..]);
        assert!(matches!(
            empty.next(),
            Some(Err(ShardError::Truncated { offset: 0, .. }))
        ));
        assert!(empty.next().is_none());
        let garbage = vec![b'x'; 2048];
        let mut r = ShardReader::new(&garbage[..]);
        let err = r.next().unwrap().unwrap_err();
        assert!(err.to_string().contains("byte 0"), "{err}");
        assert!(r.next().is_none());
    }

    #[test]
    fn end_marker_alone_is_an_empty_archive() {
        let zeros = vec![0u8; 1024];
        assert!(ShardReader::new(&zeros[..]).next().is_none());
    }
}
