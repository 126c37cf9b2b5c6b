//! A streaming WebDataset reader over any `Read`: tar members grouped into samples by
//! webdataset's rule, with truncation and corruption reported as errors at their byte offset.

use crate::error::ShardError;
use std::collections::HashSet;
use std::io::{ErrorKind, Read};

const BLOCK: usize = 512;

/// Members larger than this end the stream as corrupt: no shard writer stores a 1 GiB member,
/// so such a size field is garbage, and skipping it would read on into unrelated bytes.
pub const MAX_MEMBER_BYTES: u64 = 1 << 30;

/// Members one sample may hold. img2dataset writes 3 (image, `.json`, `.txt`); extra modalities
/// add a few. A sample with more is skipped (one [`ShardError::SampleSkipped`] item), so a tar of
/// a million tiny members under one key costs one skipped sample, not a million-element sample.
pub const MAX_MEMBERS_PER_SAMPLE: usize = 64;

/// Bytes of member data one sample may hold in memory. A sample over it is skipped, its data
/// read past without being stored: one hostile sample costs one item, never the reader's memory.
pub const MAX_SAMPLE_BYTES: u64 = 128 << 20;

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

/// A kept member's header, its data not read yet.
struct MemberHead {
    key: String,
    ext: String,
    size: u64,
    offset: u64,
    name: String,
}

/// Pending overrides from PAX (`x`) and GNU long-name (`L`) headers for the next member.
#[derive(Default)]
struct Overrides {
    path: Option<String>,
    size: Option<u64>,
}

/// Streams samples out of a tar. Stops after the first error, except a sample over its budget
/// ([`ShardError::SampleSkipped`]), which takes its place as one item; never panics on bad input.
pub struct ShardReader<R> {
    src: R,
    offset: u64,
    /// The header of the next sample's first member, read while finding the end of the previous
    /// sample; the stream sits at its data.
    pending: Option<MemberHead>,
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

    /// Reads past `size` bytes of member data plus padding without storing them.
    fn skip_data(&mut self, size: u64, name: &str) -> Result<(), ShardError> {
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let skipped = std::io::copy(&mut (&mut self.src).take(padded), &mut std::io::sink());
        let skipped = match skipped {
            Ok(n) => n,
            Err(source) => {
                return Err(ShardError::Read {
                    offset: self.offset,
                    source,
                })
            }
        };
        self.offset += skipped;
        if skipped < padded {
            return Err(ShardError::Truncated {
                offset: self.offset,
                member: Some(name.to_string()),
            });
        }
        Ok(())
    }

    /// The header of the next regular file that webdataset would keep, or `None` at the end of
    /// the archive. Members it ignores are read past without storing their data.
    fn next_member(&mut self) -> Result<Option<MemberHead>, ShardError> {
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
            match header.typeflag {
                b'x' => over = parse_pax(&self.read_data(size, &name)?, offset, over)?,
                b'L' => over.path = Some(c_string(&self.read_data(size, &name)?)),
                b'0' | 0 | b'7' if !name.ends_with('/') => match keep(&name) {
                    Some((key, ext)) => {
                        return Ok(Some(MemberHead {
                            key,
                            ext,
                            size,
                            offset,
                            name,
                        }))
                    }
                    None => self.skip_data(size, &name)?,
                },
                _ => self.skip_data(size, &name)?,
            }
        }
        Ok(None)
    }

    /// The next sample. Members are grouped in one pass (a set of extensions, not a scan per
    /// member); a sample over [`MAX_MEMBERS_PER_SAMPLE`] or [`MAX_SAMPLE_BYTES`] has the rest of
    /// its data read past and comes back as [`ShardError::SampleSkipped`].
    fn next_sample(&mut self) -> Result<Option<Sample>, ShardError> {
        let first = match self.pending.take() {
            Some(m) => m,
            None => match self.next_member()? {
                Some(m) => m,
                None => return Ok(None),
            },
        };
        let (key, offset) = (first.key.clone(), first.offset);
        let mut members = Vec::new();
        let mut exts = HashSet::new();
        let mut bytes = 0u64;
        let mut skip: Option<String> = None;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            if m.key != key {
                self.pending = Some(m);
                break;
            }
            if skip.is_none() {
                if !exts.insert(m.ext.clone()) {
                    return Err(ShardError::Corrupt {
                        offset: m.offset,
                        member: Some(m.name),
                        reason: format!("duplicate extension {:?} in sample {:?}", m.ext, key),
                    });
                }
                bytes = bytes.saturating_add(m.size);
                if exts.len() > MAX_MEMBERS_PER_SAMPLE {
                    skip = Some(format!("more than {MAX_MEMBERS_PER_SAMPLE} members"));
                } else if bytes > MAX_SAMPLE_BYTES {
                    skip = Some(format!("more than {MAX_SAMPLE_BYTES} bytes of members"));
                }
            }
            if skip.is_some() {
                exts = HashSet::new();
                members = Vec::new();
                self.skip_data(m.size, &m.name)?;
            } else {
                let data = self.read_data(m.size, &m.name)?;
                members.push((m.ext, data));
            }
            next = self.next_member()?;
        }
        if let Some(reason) = skip {
            return Err(ShardError::SampleSkipped {
                offset,
                key,
                reason,
            });
        }
        Ok(Some(Sample { key, members }))
    }
}

/// The (key, lowercased extension) of a member webdataset keeps.
fn keep(name: &str) -> Option<(String, String)> {
    if is_meta(name) {
        return None;
    }
    let (key, ext) = split_key(name)?;
    Some((key.to_string(), ext.to_lowercase()))
}

impl<R: Read> Iterator for ShardReader<R> {
    type Item = Result<Sample, ShardError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self.next_sample().transpose();
        if !matches!(&result, Some(Ok(_))) && !result.as_ref().is_some_and(ends_sample_only) {
            self.done = true;
        }
        result
    }
}

/// Whether an item is a skipped sample, after which the stream goes on.
fn ends_sample_only(item: &Result<Sample, ShardError>) -> bool {
    item.as_ref().is_err_and(ShardError::is_sample_only)
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

    /// A ustar member `name` holding `data`.
    fn member(out: &mut Vec<u8>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }

    fn keys(items: &[Result<Sample, ShardError>]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Ok(s) => s.key.clone(),
                Err(e) => format!("skipped: {e}"),
            })
            .collect()
    }

    #[test]
    fn a_sample_over_its_member_budget_is_one_skipped_item_and_reading_goes_on() {
        let mut tar = Vec::new();
        member(&mut tar, "a.txt", b"first");
        // Quadratic grouping takes minutes here (100k members took 8.8 s in a release build).
        let n = 50_000;
        for i in 0..n {
            member(&mut tar, &format!("big.{i}"), b"");
        }
        member(&mut tar, "c.txt", b"after");
        tar.extend_from_slice(&[0u8; 1024]);
        let started = std::time::Instant::now();
        let items: Vec<_> = ShardReader::new(&tar[..]).collect();
        let took = started.elapsed();
        eprintln!("grouping {n} members took {took:?}");
        assert!(took < std::time::Duration::from_secs(10), "{took:?}");
        let keys = keys(&items);
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert_eq!((keys[0].as_str(), keys[2].as_str()), ("a", "c"));
        assert!(
            keys[1].contains("\"big\"") && keys[1].contains("more than 64 members"),
            "{}",
            keys[1]
        );
        assert_eq!(items[2].as_ref().unwrap().caption(), Some("after"));
    }

    #[test]
    fn a_sample_over_its_byte_budget_is_skipped_without_storing_it() {
        let mut tar = Vec::new();
        let half = vec![7u8; (MAX_SAMPLE_BYTES / 2 + 1) as usize];
        member(&mut tar, "big.jpg", &half);
        member(&mut tar, "big.png", &half);
        member(&mut tar, "ok.txt", b"fine");
        tar.extend_from_slice(&[0u8; 1024]);
        let keys = keys(&ShardReader::new(&tar[..]).collect::<Vec<_>>());
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys[0].contains("bytes of members"), "{}", keys[0]);
        assert_eq!(keys[1], "ok");
    }

    #[test]
    fn end_marker_alone_is_an_empty_archive() {
        let zeros = vec![0u8; 1024];
        assert!(ShardReader::new(&zeros[..]).next().is_none());
    }
}
