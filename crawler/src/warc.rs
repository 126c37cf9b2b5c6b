//! WARC and WAT archives → (image URL, alt text) pairs, streamed.
//!
//! Common Crawl publishes WARC files (raw HTTP responses) and WAT files (JSON metadata per page,
//! links with their alt text). Both are sequences of records, each usually its own gzip member.
//! Archives are large and sometimes damaged, so reading never loads a file whole, and a corrupt
//! or truncated gzip member costs only its own records: the reader re-synchronises on the next
//! member and counts what it skipped. Decompression and parsing run on one thread per source;
//! HTML and JSON extraction run on a worker pool; output order is the archive order.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use url::Url;

use crate::html;
use crate::net::{open_blocking, HttpConfig, NetPolicy};
use crate::pairs::Pair;

/// Records larger than this keep only their first bytes (an HTML page is cut anyway; a WAT
/// record this large is malformed), so one record cannot take unbounded memory.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 << 20;

/// Records per batch handed to the extraction workers.
const BATCH_RECORDS: usize = 64;

/// Record bytes per batch: with the bounded number of batches in flight this caps memory at
/// about `jobs × 4 × 8 MiB` plus one record, whatever the record sizes.
const BATCH_BYTES: usize = 8 << 20;

/// A compressed member is replayed from memory when it turns out to be corrupt, so the next
/// member can be found; members larger than this are not kept and the scan goes on from where
/// decoding stopped.
const MAX_REPLAY_BYTES: usize = 64 << 20;

/// Longest WARC or HTTP header line accepted.
const MAX_HEADER_LINE: u64 = 64 << 10;

/// Most header lines accepted in one record.
const MAX_HEADER_LINES: usize = 1024;

/// Where a WARC or WAT file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local file.
    Path(PathBuf),
    /// An http(s) URL, streamed.
    Url(Url),
}

impl Source {
    /// `http://` and `https://` arguments are URLs; anything else is a path.
    pub fn parse(arg: &str) -> Source {
        match Url::parse(arg) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Source::Url(u),
            _ => Source::Path(PathBuf::from(arg)),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Path(p) => write!(f, "{}", p.display()),
            Source::Url(u) => write!(f, "{u}"),
        }
    }
}

/// Why a record (or a stretch of a file) was skipped; the summary counts each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// A gzip member failed to decompress (corrupt or truncated); its records are lost.
    CorruptGzip,
    /// Bytes between records that are not a record (resynchronised past them).
    Garbage,
    /// A record header without `WARC/` version line or a valid `Content-Length`.
    BadHeader,
    /// The file ended inside a record.
    TruncatedRecord,
    /// A WAT metadata record whose JSON does not parse.
    MalformedJson,
    /// A WARC response whose HTTP head does not parse.
    BadHttp,
    /// A record whose `Content-Length` does not match its block (the records it overran are
    /// read again from where the next one starts).
    BadLength,
    /// A record whose `WARC-Target-URI` is longer than [`html::MAX_URL_BYTES`].
    LongTargetUri,
    /// The source could not be opened or read.
    SourceFailed,
}

impl SkipReason {
    /// A stable snake_case name for summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::CorruptGzip => "corrupt_gzip_member",
            SkipReason::Garbage => "garbage_between_records",
            SkipReason::BadHeader => "bad_record_header",
            SkipReason::TruncatedRecord => "truncated_record",
            SkipReason::MalformedJson => "malformed_wat_json",
            SkipReason::BadHttp => "bad_http_response",
            SkipReason::BadLength => "bad_record_length",
            SkipReason::LongTargetUri => "target_uri_too_long",
            SkipReason::SourceFailed => "source_failed",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One WARC record: its named headers and (possibly cut) content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `WARC-Type` (`response`, `metadata`, `request`, `warcinfo`, ...).
    pub warc_type: String,
    /// `WARC-Target-URI`, when present.
    pub target_uri: Option<String>,
    /// The record's `Content-Type` (`application/http; msgtype=response`, `application/json`).
    pub content_type: Option<String>,
    /// `WARC-Identified-Payload-Type`, Common Crawl's sniffed payload MIME type.
    pub payload_type: Option<String>,
    /// The record block, at most the reader's record limit.
    pub content: Vec<u8>,
    /// True when the block was longer than the limit and was cut.
    pub cut: bool,
}

/// What the archive reader reports, in file order.
#[derive(Debug)]
pub enum Event {
    /// A complete record.
    Record(Record),
    /// Something that could not be read and was skipped.
    Skipped(SkipReason),
}

/// Reads a WARC stream (plain, one gzip member per record, or one gzip member for the whole
/// file), calling `emit` for each record and each skipped stretch. Returns an error only when
/// the underlying reader fails; damage inside the file becomes [`Event::Skipped`].
pub fn read_archive<R: Read>(
    reader: R,
    max_record_bytes: usize,
    emit: &mut dyn FnMut(Event),
) -> io::Result<()> {
    let mut stream = MarkReader::new(reader);
    let is_gzip = stream.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    if is_gzip {
        read_gzip_members(&mut stream, max_record_bytes, emit)
    } else {
        read_plain(&mut stream, max_record_bytes, emit)
    }
}

/// Reads uncompressed records, resynchronising on the next `WARC/` line after damage.
fn read_plain<B: BufRead>(r: &mut B, max: usize, emit: &mut dyn FnMut(Event)) -> io::Result<()> {
    let r = &mut Unread::new(r);
    loop {
        match read_record(r, max) {
            Ok(Some(rec)) => emit(Event::Record(rec)),
            Ok(None) => return Ok(()),
            Err(RecordError::Io(e)) => return Err(e),
            Err(RecordError::Skip(reason)) => {
                emit(Event::Skipped(reason));
                if reason == SkipReason::TruncatedRecord {
                    return Ok(());
                }
                skip_to_warc_line(r)?;
            }
        }
    }
}

/// Consumes lines until the next one starting with `WARC/` (left unconsumed) or the end.
fn skip_to_warc_line<B: BufRead>(r: &mut B) -> io::Result<()> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() || buf.starts_with(b"WARC/") {
            return Ok(());
        }
        let mut line = Vec::new();
        r.by_ref()
            .take(MAX_HEADER_LINE)
            .read_until(b'\n', &mut line)?;
    }
}

/// Reads gzip members one by one. A member that fails to decode is skipped; the scan for the
/// next member restarts one byte after the failed member's start, so a truncated member does not
/// swallow the member that follows it.
fn read_gzip_members<R: Read>(
    stream: &mut MarkReader<R>,
    max: usize,
    emit: &mut dyn FnMut(Event),
) -> io::Result<()> {
    let mut resyncing = false;
    loop {
        let Some(skipped) = skip_to_gzip_magic(stream)? else {
            return Ok(());
        };
        if skipped > 0 && !resyncing {
            emit(Event::Skipped(SkipReason::Garbage));
        }
        stream.mark();
        match read_member(stream, max, emit) {
            Ok(_) => {
                stream.unmark();
                resyncing = false;
            }
            Err((records, reason)) => {
                // A false gzip magic found while resynchronising fails before any record:
                // not a new loss, only the tail of the one already counted.
                if !resyncing || records > 0 {
                    emit(Event::Skipped(reason));
                }
                stream.rewind_past_mark();
                resyncing = true;
            }
        }
    }
}

/// Decodes one gzip member and emits its records. The last record of a member is held back
/// until the member's CRC has been checked, so a damaged member never yields a damaged record.
/// On failure returns how many records were emitted and why it failed.
fn read_member<R: Read>(
    stream: &mut MarkReader<R>,
    max: usize,
    emit: &mut dyn FnMut(Event),
) -> Result<u64, (u64, SkipReason)> {
    let decoder = flate2::bufread::GzDecoder::new(&mut *stream);
    let mut r = Unread::new(BufReader::with_capacity(64 << 10, decoder));
    let mut pending: Option<Record> = None;
    // Bad records inside the member, counted once it decodes to its end (a member that turns
    // out corrupt is counted as that alone).
    let mut bad: Vec<SkipReason> = Vec::new();
    let mut emitted = 0u64;
    loop {
        match read_record(&mut r, max) {
            Ok(Some(rec)) => {
                if let Some(done) = pending.replace(rec) {
                    emit(Event::Record(done));
                    emitted += 1;
                }
            }
            Ok(None) => {
                if let Some(done) = pending.take() {
                    emit(Event::Record(done));
                    emitted += 1;
                }
                bad.into_iter().for_each(|b| emit(Event::Skipped(b)));
                return Ok(emitted);
            }
            Err(RecordError::Io(_)) => return Err((emitted, SkipReason::CorruptGzip)),
            // A bad record inside a member that holds several (a whole-file gzip WARC) costs
            // that record only: read on from the next record start.
            Err(RecordError::Skip(reason)) if reason != SkipReason::TruncatedRecord => {
                bad.push(reason);
                if skip_to_warc_line(&mut r).is_err() {
                    return Err((emitted, SkipReason::CorruptGzip));
                }
            }
            Err(RecordError::Skip(reason)) => {
                // The member ended inside a record (or its gzip stream is cut): drain it so
                // the next member starts cleanly, and only count the bad record.
                return match io::copy(&mut r, &mut io::sink()) {
                    Ok(_) => {
                        if let Some(done) = pending.take() {
                            emit(Event::Record(done));
                            emitted += 1;
                        }
                        bad.push(reason);
                        bad.into_iter().for_each(|b| emit(Event::Skipped(b)));
                        Ok(emitted)
                    }
                    Err(_) => Err((emitted, SkipReason::CorruptGzip)),
                };
            }
        }
    }
}

/// Advances to the next gzip magic (`1f 8b 08`). Returns the number of bytes skipped, or
/// `None` at the end of the stream.
fn skip_to_gzip_magic<R: Read>(stream: &mut MarkReader<R>) -> io::Result<Option<u64>> {
    let mut skipped = 0u64;
    loop {
        let buf = stream.fill_buf_min(3)?;
        if buf.is_empty() {
            return Ok(None);
        }
        if buf.len() < 3 {
            // A tail too short to be a member.
            let n = buf.len();
            stream.consume(n);
            return Ok(None);
        }
        match buf.windows(3).position(|w| w == [0x1f, 0x8b, 0x08]) {
            Some(0) => return Ok(Some(skipped)),
            Some(i) => {
                stream.consume(i);
                skipped += i as u64;
            }
            None => {
                let n = buf.len() - 2;
                stream.consume(n);
                skipped += n as u64;
            }
        }
    }
}

/// Why a record could not be read: the stream failed, or the record is skipped.
#[derive(Debug)]
enum RecordError {
    Io(io::Error),
    Skip(SkipReason),
}

impl From<io::Error> for RecordError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            RecordError::Skip(SkipReason::TruncatedRecord)
        } else {
            RecordError::Io(e)
        }
    }
}

/// Reads one record; `Ok(None)` at a clean end of stream. When the record is damaged but the
/// bytes it took hold the start of the next record, those bytes are put back first.
fn read_record<B: BufRead>(r: &mut Unread<B>, max: usize) -> Result<Option<Record>, RecordError> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if read_line(r, &mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim_ascii().is_empty() {
            break;
        }
    }
    if !line.starts_with(b"WARC/") {
        return Err(RecordError::Skip(SkipReason::BadHeader));
    }
    let headers = read_headers(r)?;
    let length: u64 = header(&headers, "content-length")
        .and_then(|v| v.trim().parse().ok())
        .ok_or(RecordError::Skip(SkipReason::BadHeader))?;
    let keep = length.min(max as u64);
    let mut content = Vec::with_capacity(keep as usize);
    r.by_ref().take(keep).read_to_end(&mut content)?;
    let dropped = io::copy(&mut r.by_ref().take(length - keep), &mut io::sink())?;
    let complete = content.len() as u64 + dropped == length;
    if !complete || read_trailer(r).is_err() {
        // A wrong length: a too-long one swallowed the records after it (give them back), a
        // too-short one left the rest of the block in the stream (skipped by the caller).
        return Err(match record_start(&content) {
            Some(at) => {
                r.unread(&content[at..]);
                RecordError::Skip(SkipReason::BadLength)
            }
            None if !complete => RecordError::Skip(SkipReason::TruncatedRecord),
            None => RecordError::Skip(SkipReason::BadLength),
        });
    }
    let get = |name| header(&headers, name).map(str::to_string);
    Ok(Some(Record {
        warc_type: get("warc-type").unwrap_or_default(),
        target_uri: get("warc-target-uri").map(|u| u.trim_matches(['<', '>']).to_string()),
        content_type: get("content-type"),
        payload_type: get("warc-identified-payload-type"),
        content,
        cut: keep < length,
    }))
}

/// Reads a line of at most [`MAX_HEADER_LINE`] bytes; returns the bytes read.
fn read_line<B: BufRead>(r: &mut B, line: &mut Vec<u8>) -> io::Result<usize> {
    r.by_ref().take(MAX_HEADER_LINE).read_until(b'\n', line)
}

/// Where the first record starting inside `block` begins (a `WARC/1.` line), if any.
fn record_start(block: &[u8]) -> Option<usize> {
    memchr::memmem::find(block, b"\nWARC/1.").map(|i| i + 1)
}

/// Reads `Name: value` lines up to the blank line (continuation lines are folded in). A version
/// line there means this header was cut short: it is put back as the next record's start.
fn read_headers<B: BufRead>(r: &mut Unread<B>) -> Result<Vec<(String, String)>, RecordError> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if read_line(r, &mut line)? == 0 {
            return Err(RecordError::Skip(SkipReason::TruncatedRecord));
        }
        if line.trim_ascii().is_empty() {
            return Ok(headers);
        }
        if line.starts_with(b"WARC/") {
            r.unread(&line);
            return Err(RecordError::Skip(SkipReason::BadHeader));
        }
        if headers.len() >= MAX_HEADER_LINES {
            return Err(RecordError::Skip(SkipReason::BadHeader));
        }
        let text = String::from_utf8_lossy(&line);
        if text.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(text.trim());
            }
            continue;
        }
        let (name, value) = text
            .split_once(':')
            .ok_or(RecordError::Skip(SkipReason::BadHeader))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
}

/// The first value of a (lower-case) header name.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Consumes the `\r\n\r\n` after a record block. Anything else there but the next record means
/// the block length was wrong (or the bytes are garbage from a broken member).
fn read_trailer<B: BufRead>(r: &mut B) -> Result<(), RecordError> {
    let mut consumed = 0;
    while consumed < 4 {
        match r.fill_buf()?.first() {
            Some(b'\r' | b'\n') => {
                r.consume(1);
                consumed += 1;
            }
            Some(b'W') | None => return Ok(()),
            Some(_) => return Err(RecordError::Skip(SkipReason::BadHeader)),
        }
    }
    Ok(())
}

/// A buffered reader that can take bytes back: a record whose length was wrong gives back the
/// records it swallowed, so one bad record in a stream costs only itself.
struct Unread<B> {
    inner: B,
    front: Vec<u8>,
    pos: usize,
}

impl<B: BufRead> Unread<B> {
    /// Wraps `inner`.
    fn new(inner: B) -> Self {
        Unread {
            inner,
            front: Vec::new(),
            pos: 0,
        }
    }

    /// Puts `bytes` back in front of what has not been read yet.
    fn unread(&mut self, bytes: &[u8]) {
        let mut front = bytes.to_vec();
        front.extend_from_slice(&self.front[self.pos..]);
        self.front = front;
        self.pos = 0;
    }
}

impl<B: BufRead> Read for Unread<B> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let avail = self.fill_buf()?;
            let n = avail.len().min(out.len());
            out[..n].copy_from_slice(&avail[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<B: BufRead> BufRead for Unread<B> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos < self.front.len() {
            return Ok(&self.front[self.pos..]);
        }
        if !self.front.is_empty() {
            self.front = Vec::new();
            self.pos = 0;
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if self.pos < self.front.len() {
            self.pos = (self.pos + amt).min(self.front.len());
        } else {
            self.inner.consume(amt);
        }
    }
}

/// A buffered reader that can remember a position and go back to just after it: the bytes of
/// a gzip member are kept while it is decoded so that, if it is corrupt, the search for the
/// next member can restart inside it (its decoder may have read past its true end).
struct MarkReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    mark: Option<usize>,
    eof: bool,
}

impl<R: Read> MarkReader<R> {
    /// Wraps `inner`.
    fn new(inner: R) -> Self {
        MarkReader {
            inner,
            buf: Vec::with_capacity(256 << 10),
            pos: 0,
            mark: None,
            eof: false,
        }
    }

    /// Remembers the current position (and keeps the bytes from here on).
    fn mark(&mut self) {
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.mark = Some(0);
    }

    /// Forgets the mark.
    fn unmark(&mut self) {
        self.mark = None;
    }

    /// Goes back to one byte after the mark, if the bytes are still kept; otherwise stays.
    fn rewind_past_mark(&mut self) {
        if let Some(m) = self.mark.take() {
            self.pos = (m + 1).min(self.buf.len());
        }
    }

    /// Makes at least `n` bytes available unless the stream ends first.
    fn fill_buf_min(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.buf.len() - self.pos < n && !self.eof {
            self.read_more()?;
        }
        Ok(&self.buf[self.pos..])
    }

    /// Appends up to 64 KiB from the inner reader, discarding consumed bytes that no mark needs.
    fn read_more(&mut self) -> io::Result<()> {
        match self.mark {
            Some(m) if self.buf.len() - m > MAX_REPLAY_BYTES => {
                self.mark = None;
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            Some(_) => {}
            None => {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
        }
        let old = self.buf.len();
        self.buf.resize(old + (64 << 10), 0);
        let n = loop {
            match self.inner.read(&mut self.buf[old..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = n.inspect_err(|_| self.buf.truncate(old))?;
        self.buf.truncate(old + n);
        self.eof = n == 0;
        Ok(())
    }
}

impl<R: Read> Read for MarkReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let avail = self.fill_buf()?;
            let n = avail.len().min(out.len());
            out[..n].copy_from_slice(&avail[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for MarkReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.buf.len() && !self.eof {
            self.read_more()?;
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.buf.len());
    }
}

/// What one record contributed.
#[derive(Debug, Default)]
pub struct RecordPairs {
    /// Pairs found (alt non-empty, http(s) URL), before deduplication.
    pub pairs: Vec<Pair>,
    /// True when the record was an HTML response or a WAT page with HTML metadata.
    pub page: bool,
    /// True when the page reserved text and data mining (TDMRep `<meta>`): no pairs taken.
    pub opted_out: bool,
    /// True when only the beginning of the page was used (size or time limit).
    pub cut: bool,
    /// What the per-page caps dropped or cut.
    pub capped: html::Capped,
}

/// Extracts pairs from one record: HTML `response` records through [`html::extract`], WAT
/// `metadata` records from their JSON `Links`. Other records yield nothing.
pub fn record_pairs(rec: &Record) -> Result<RecordPairs, SkipReason> {
    match rec.warc_type.as_str() {
        "response" => response_pairs(rec),
        "metadata" if is_json(rec) => wat_pairs(rec),
        _ => Ok(RecordPairs::default()),
    }
}

/// True for WAT metadata records (JSON blocks).
fn is_json(rec: &Record) -> bool {
    rec.content_type
        .as_deref()
        .is_some_and(|c| c.to_ascii_lowercase().contains("json"))
}

/// Pairs of an HTML response record.
fn response_pairs(rec: &Record) -> Result<RecordPairs, SkipReason> {
    let is_http = rec
        .content_type
        .as_deref()
        .is_none_or(|c| c.to_ascii_lowercase().starts_with("application/http"));
    let Some(page_url) = target_url(rec.target_uri.as_deref())? else {
        return Ok(RecordPairs::default());
    };
    if !is_http {
        return Ok(RecordPairs::default());
    }
    let resp = parse_http(&rec.content).ok_or(SkipReason::BadHttp)?;
    let mime = resp
        .content_type
        .as_deref()
        .or(rec.payload_type.as_deref())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !(mime.contains("text/html") || mime.contains("xhtml")) {
        return Ok(RecordPairs::default());
    }
    let body = decode_body(&resp)?;
    let page = html::extract(&body, resp.content_type.as_deref(), &page_url);
    let found = RecordPairs {
        pairs: Vec::new(),
        page: true,
        opted_out: page.tdm_reserved,
        cut: page.truncated || page.timed_out,
        capped: page.capped,
    };
    if page.tdm_reserved {
        return Ok(found);
    }
    // The page's strings are shared by its pairs, not copied into each.
    let shared_url: Arc<str> = page_url.as_str().into();
    let title: Option<Arc<str>> = page.title.as_deref().map(Into::into);
    let pairs = page
        .images
        .into_iter()
        .filter(|img| !img.alt.is_empty())
        .map(|img| Pair {
            url: img.url.into(),
            caption: img.alt,
            page_url: Arc::clone(&shared_url),
            title: title.clone(),
            position: clamp_i32(img.position),
            width: img.width.map(clamp_i32),
            height: img.height.map(clamp_i32),
        })
        .collect();
    Ok(RecordPairs { pairs, ..found })
}

/// The record's page URL: `None` when absent or unparsable (the record yields nothing), an
/// error when longer than [`html::MAX_URL_BYTES`] (the record is skipped and counted).
fn target_url(target: Option<&str>) -> Result<Option<Url>, SkipReason> {
    match target {
        Some(t) if t.len() > html::MAX_URL_BYTES => Err(SkipReason::LongTargetUri),
        Some(t) => Ok(Url::parse(t).ok()),
        None => Ok(None),
    }
}

/// A `u32` as parquet's int32, saturating.
fn clamp_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// The parts of an archived HTTP response the extraction needs.
struct HttpResponse<'a> {
    content_type: Option<String>,
    transfer_encoding: Option<String>,
    content_encoding: Option<String>,
    body: &'a [u8],
}

/// Splits an archived HTTP response into head and body.
fn parse_http(block: &[u8]) -> Option<HttpResponse<'_>> {
    if !block.starts_with(b"HTTP/") {
        return None;
    }
    let (head_len, sep) = find_bytes(block, b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| find_bytes(block, b"\n\n").map(|i| (i, 2)))?;
    let head = String::from_utf8_lossy(&block[..head_len]);
    let mut fields: HashMap<String, String> = HashMap::new();
    for line in head.lines().skip(1) {
        if let Some((n, v)) = line.split_once(':') {
            fields
                .entry(n.trim().to_ascii_lowercase())
                .or_insert_with(|| v.trim().to_string());
        }
    }
    Some(HttpResponse {
        content_type: fields.remove("content-type"),
        transfer_encoding: fields.remove("transfer-encoding"),
        content_encoding: fields.remove("content-encoding"),
        body: &block[head_len + sep..],
    })
}

/// Position of `needle` in `hay`.
fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Undoes chunked transfer coding and gzip/deflate content coding when the archive kept them
/// (Common Crawl stores decoded bodies, other crawlers may not).
fn decode_body<'a>(resp: &HttpResponse<'a>) -> Result<std::borrow::Cow<'a, [u8]>, SkipReason> {
    let chunked = resp
        .transfer_encoding
        .as_deref()
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    let body: std::borrow::Cow<'a, [u8]> = if chunked {
        dechunk(resp.body).map_or(std::borrow::Cow::Borrowed(resp.body), Into::into)
    } else {
        std::borrow::Cow::Borrowed(resp.body)
    };
    let limit = html::DEFAULT_MAX_HTML_BYTES as u64;
    let mut out = Vec::new();
    let read = match resp
        .content_encoding
        .as_deref()
        .map(str::to_ascii_lowercase)
    {
        Some(e) if e.contains("gzip") => flate2::read::MultiGzDecoder::new(&body[..])
            .take(limit)
            .read_to_end(&mut out),
        Some(e) if e.contains("deflate") => flate2::read::ZlibDecoder::new(&body[..])
            .take(limit)
            .read_to_end(&mut out),
        _ => return Ok(body),
    };
    // A body cut by the archive still yields its decodable beginning.
    match read {
        Ok(_) => Ok(out.into()),
        Err(_) if !out.is_empty() => Ok(out.into()),
        Err(_) => Err(SkipReason::BadHttp),
    }
}

/// Decodes a chunked body; `None` when it is not valid chunked coding (then the raw body is
/// used: some archives dechunk but keep the header).
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let line_end = find_bytes(body, b"\n")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_hex = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        body = &body[line_end + 1..];
        if size == 0 {
            return Some(out);
        }
        let chunk = body.get(..size)?;
        out.extend_from_slice(chunk);
        body = &body[size..];
        body = body
            .strip_prefix(b"\r\n")
            .or(body.strip_prefix(b"\n"))
            .unwrap_or(body);
    }
}

/// The subset of a WAT JSON record that image pairs come from.
#[derive(Deserialize)]
struct Wat {
    #[serde(rename = "Envelope")]
    envelope: Envelope,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "WARC-Header-Metadata", default)]
    header: WarcHeaderMeta,
    #[serde(rename = "Payload-Metadata", default)]
    payload: Option<PayloadMeta>,
}

#[derive(Deserialize, Default)]
struct WarcHeaderMeta {
    #[serde(rename = "WARC-Target-URI")]
    target_uri: Option<String>,
}

#[derive(Deserialize)]
struct PayloadMeta {
    #[serde(rename = "HTTP-Response-Metadata")]
    http: Option<HttpMeta>,
}

#[derive(Deserialize)]
struct HttpMeta {
    #[serde(rename = "HTML-Metadata")]
    html: Option<HtmlMeta>,
}

#[derive(Deserialize)]
struct HtmlMeta {
    #[serde(rename = "Head", default)]
    head: Option<Head>,
    #[serde(rename = "Links", default)]
    links: Vec<Link>,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "Base")]
    base: Option<String>,
    #[serde(rename = "Title")]
    title: Option<String>,
}

#[derive(Deserialize)]
struct Link {
    path: Option<String>,
    url: Option<String>,
    alt: Option<String>,
}

/// Pairs of a WAT metadata record, following cc2dataset: links whose `path` is `IMG@/src` with
/// a non-empty alt, resolved against `Head.Base` (itself resolved against the target URI) or
/// the target URI; http(s) only.
fn wat_pairs(rec: &Record) -> Result<RecordPairs, SkipReason> {
    let wat: Wat = serde_json::from_slice(&rec.content).map_err(|_| SkipReason::MalformedJson)?;
    let html = wat
        .envelope
        .payload
        .and_then(|p| p.http)
        .and_then(|h| h.html);
    let Some(html) = html else {
        return Ok(RecordPairs::default());
    };
    let target = wat
        .envelope
        .header
        .target_uri
        .or_else(|| rec.target_uri.clone());
    let Some(page_url) = target_url(target.as_deref())? else {
        return Ok(RecordPairs::default());
    };
    let mut capped = html::Capped::default();
    let (base, title) = match html.head {
        Some(h) => (
            h.base
                .and_then(|b| capped_url(&mut capped, page_url.join(b.trim()).ok())),
            h.title
                .map(|t| html::collapse_ws(&t))
                .filter(|t| !t.is_empty()),
        ),
        None => (None, None),
    };
    let title: Option<Arc<str>> = title.map(|mut t| {
        capped.long_titles += u64::from(html::truncate_at_char(&mut t, html::MAX_TITLE_BYTES));
        t.into()
    });
    let base = base.unwrap_or_else(|| page_url.clone());
    let shared_url: Arc<str> = page_url.as_str().into();
    let mut pairs = Vec::new();
    let images = html
        .links
        .iter()
        .filter(|l| l.path.as_deref() == Some("IMG@/src"));
    for (i, l) in images.enumerate() {
        if i >= html::MAX_IMAGES_PER_PAGE {
            capped.extra_images += 1;
            continue;
        }
        let (Some(alt), Some(reference)) = (l.alt.as_deref(), l.url.as_deref()) else {
            continue;
        };
        let mut alt = html::collapse_ws(alt);
        let resolved = (reference.len() <= html::MAX_URL_BYTES)
            .then(|| html::resolve(&base, reference))
            .flatten();
        let Some(url) = capped_url(&mut capped, resolved) else {
            capped.long_urls += u64::from(reference.len() > html::MAX_URL_BYTES);
            continue;
        };
        if alt.is_empty() {
            continue;
        }
        capped.long_alts += u64::from(html::truncate_at_char(&mut alt, html::MAX_ALT_BYTES));
        pairs.push(Pair {
            url: url.into(),
            caption: alt,
            page_url: Arc::clone(&shared_url),
            title: title.clone(),
            position: i32::try_from(i).unwrap_or(i32::MAX),
            width: None,
            height: None,
        });
    }
    Ok(RecordPairs {
        pairs,
        page: true,
        capped,
        ..RecordPairs::default()
    })
}

/// `url` unless it is longer than [`html::MAX_URL_BYTES`] (then counted and dropped).
fn capped_url(capped: &mut html::Capped, url: Option<Url>) -> Option<Url> {
    let url = url?;
    if url.as_str().len() > html::MAX_URL_BYTES {
        capped.long_urls += 1;
        return None;
    }
    Some(url)
}

/// Settings of an extraction run.
#[derive(Debug, Clone)]
pub struct WarcOptions {
    /// Extraction worker threads (HTML parsing is the CPU cost).
    pub jobs: usize,
    /// Per-record size limit, see [`DEFAULT_MAX_RECORD_BYTES`].
    pub max_record_bytes: usize,
}

impl Default for WarcOptions {
    fn default() -> Self {
        WarcOptions {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// Counts of an extraction run, reported as progress and as the final summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WarcSummary {
    /// Sources fully or partly read.
    pub sources: u64,
    /// Records read intact.
    pub records: u64,
    /// HTML responses and WAT pages with HTML metadata.
    pub pages: u64,
    /// Pages whose pairs were not taken because they reserve text and data mining (TDMRep
    /// `<meta name="tdm-reservation" content="1">`).
    pub opted_out: u64,
    /// Pages of which only the beginning was used (over the size or parse-time limit).
    pub pages_cut: u64,
    /// What the per-page caps dropped or cut (long URLs, alts, titles; images past the cap).
    pub capped: html::Capped,
    /// Pairs found, before deduplication.
    pub pairs_found: u64,
    /// Pairs passed on (first occurrence of each (url, alt)).
    pub pairs: u64,
    /// Pairs dropped as repeats of an earlier (url, alt).
    pub duplicates: u64,
    /// Skipped records and stretches, all reasons.
    pub skipped: u64,
    /// Skips by reason (see [`SkipReason::as_str`]).
    pub skipped_by_reason: BTreeMap<String, u64>,
}

impl WarcSummary {
    /// Counts one skip.
    fn skip(&mut self, reason: SkipReason) {
        self.skipped += 1;
        *self
            .skipped_by_reason
            .entry(reason.as_str().to_string())
            .or_default() += 1;
    }
}

/// Opens a source as a byte stream.
pub type Opener<'a> = dyn Fn(&Source) -> io::Result<Box<dyn Read + Send>> + Sync + 'a;

/// What the reader hands to the workers: a new source begins, or an archive event.
enum Item {
    Source,
    Event(Event),
}

/// One batch of items in archive order, tagged with its sequence number.
struct Batch {
    seq: u64,
    items: Vec<Item>,
}

/// The extraction result of one batch.
struct BatchOut {
    seq: u64,
    pairs: Vec<Pair>,
    summary: WarcSummary,
}

/// Extracts pairs from all sources in order. `keep` decides per pair whether it is new (the
/// caller's (url, alt) dedup set); `sink` receives kept pairs in archive order; `progress` sees
/// the running counts after each batch. A sink error stops the run and is returned.
pub fn extract_sources<E>(
    sources: &[Source],
    opts: &WarcOptions,
    open: &Opener<'_>,
    keep: &mut dyn FnMut(&Pair) -> bool,
    sink: &mut dyn FnMut(Pair) -> Result<(), E>,
    progress: &mut dyn FnMut(&WarcSummary),
) -> Result<WarcSummary, E> {
    let jobs = opts.jobs.max(1);
    let (batch_tx, batch_rx) = sync_channel::<Batch>(jobs * 2);
    let (out_tx, out_rx) = sync_channel::<BatchOut>(jobs * 2);
    // One token per batch in flight bounds the reorder buffer whatever the workers' speed.
    let (token_tx, token_rx) = sync_channel::<()>(jobs * 4);
    let batch_rx = Arc::new(Mutex::new(batch_rx));
    std::thread::scope(|scope| {
        scope.spawn(|| read_sources(sources, opts.max_record_bytes, open, batch_tx, token_tx));
        for _ in 0..jobs {
            let rx = Arc::clone(&batch_rx);
            let tx = out_tx.clone();
            scope.spawn(move || extract_worker(&rx, &tx));
        }
        drop(batch_rx);
        drop(out_tx);
        let mut summary = WarcSummary::default();
        let result = merge_in_order(&out_rx, &token_rx, &mut summary, keep, sink, progress);
        // On a sink error, unblock the reader (tokens) and the workers (results) so they stop.
        drop(token_rx);
        drop(out_rx);
        result.map(|()| summary)
    })
}

/// Reads every source into batches; a source that fails to open or read is counted as skipped
/// and the next one is read. Stops early when the consumer has gone.
fn read_sources(
    sources: &[Source],
    max: usize,
    open: &Opener<'_>,
    tx: SyncSender<Batch>,
    tokens: SyncSender<()>,
) {
    let mut seq = 0u64;
    let mut items: Vec<Item> = Vec::with_capacity(BATCH_RECORDS);
    let mut bytes = 0usize;
    let mut stopped = false;
    let mut send = |items: &mut Vec<Item>, stopped: &mut bool| {
        if *stopped || tokens.send(()).is_err() {
            *stopped = true;
            return;
        }
        let batch = Batch {
            seq,
            items: std::mem::take(items),
        };
        seq += 1;
        *stopped = tx.send(batch).is_err();
    };
    for source in sources {
        items.push(Item::Source);
        let result = open(source).and_then(|reader| {
            read_archive(reader, max, &mut |ev| {
                if stopped {
                    return;
                }
                if let Event::Record(rec) = &ev {
                    bytes += rec.content.len();
                }
                items.push(Item::Event(ev));
                if items.len() >= BATCH_RECORDS || bytes >= BATCH_BYTES {
                    send(&mut items, &mut stopped);
                    bytes = 0;
                }
            })
        });
        if let Err(e) = result {
            tracing::warn!("{source}: {e}; skipping the rest of it");
            items.push(Item::Event(Event::Skipped(SkipReason::SourceFailed)));
        }
        if stopped {
            return;
        }
    }
    if !items.is_empty() {
        send(&mut items, &mut stopped);
    }
}

/// Extraction worker: turns batches of events into pairs and counts.
fn extract_worker(rx: &Mutex<Receiver<Batch>>, tx: &SyncSender<BatchOut>) {
    loop {
        let batch = match rx.lock().map(|r| r.recv()) {
            Ok(Ok(b)) => b,
            _ => return,
        };
        if tx.send(extract_batch(batch)).is_err() {
            return;
        }
    }
}

/// Extracts one batch.
fn extract_batch(batch: Batch) -> BatchOut {
    let mut summary = WarcSummary::default();
    let mut pairs = Vec::new();
    for item in batch.items {
        match item {
            Item::Source => summary.sources += 1,
            Item::Event(Event::Record(rec)) => {
                summary.records += 1;
                match record_pairs(&rec) {
                    Ok(found) => {
                        summary.pages += u64::from(found.page);
                        summary.opted_out += u64::from(found.opted_out);
                        summary.pages_cut += u64::from(found.cut);
                        summary.capped.add(&found.capped);
                        summary.pairs_found += found.pairs.len() as u64;
                        pairs.extend(found.pairs);
                    }
                    Err(reason) => summary.skip(reason),
                }
            }
            Item::Event(Event::Skipped(reason)) => summary.skip(reason),
        }
    }
    BatchOut {
        seq: batch.seq,
        pairs,
        summary,
    }
}

/// Receives batch results, puts them back in archive order, dedups and sinks the pairs.
fn merge_in_order<E>(
    rx: &Receiver<BatchOut>,
    tokens: &Receiver<()>,
    summary: &mut WarcSummary,
    keep: &mut dyn FnMut(&Pair) -> bool,
    sink: &mut dyn FnMut(Pair) -> Result<(), E>,
    progress: &mut dyn FnMut(&WarcSummary),
) -> Result<(), E> {
    let mut waiting: BTreeMap<u64, BatchOut> = BTreeMap::new();
    let mut next = 0u64;
    for out in rx {
        waiting.insert(out.seq, out);
        while let Some(out) = waiting.remove(&next) {
            next += 1;
            let _ = tokens.recv();
            add_counts(summary, &out.summary);
            for pair in out.pairs {
                if keep(&pair) {
                    summary.pairs += 1;
                    sink(pair)?;
                } else {
                    summary.duplicates += 1;
                }
            }
            progress(summary);
        }
    }
    Ok(())
}

/// Adds a batch's counts to the running summary.
fn add_counts(total: &mut WarcSummary, part: &WarcSummary) {
    total.sources += part.sources;
    total.records += part.records;
    total.pages += part.pages;
    total.opted_out += part.opted_out;
    total.pages_cut += part.pages_cut;
    total.capped.add(&part.capped);
    total.pairs_found += part.pairs_found;
    total.skipped += part.skipped;
    for (k, v) in &part.skipped_by_reason {
        *total.skipped_by_reason.entry(k.clone()).or_default() += v;
    }
}

/// Opens a local file, or streams an http(s) URL through `wit-net` (the SSRF guard on resolved
/// addresses and every redirect hop, retries, a read timeout and `Range` resumes: a multi-GB
/// archive survives a dropped connection). The body is read in chunks as the archive is parsed,
/// never held whole.
pub fn open_source(
    source: &Source,
    policy: &NetPolicy,
    user_agent: &str,
) -> io::Result<Box<dyn Read + Send>> {
    match source {
        Source::Path(p) => Ok(Box::new(std::fs::File::open(p).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", p.display()))
        })?)),
        Source::Url(u) => {
            let cfg = HttpConfig {
                user_agent: user_agent.to_string(),
                connect_timeout: ARCHIVE_CONNECT_TIMEOUT,
                read_timeout: ARCHIVE_READ_TIMEOUT,
                ..HttpConfig::new(policy.clone())
            };
            open_blocking(cfg, u.clone(), None)
        }
    }
}

/// Connecting to an archive server (Common Crawl's S3/CloudFront) may take this long.
const ARCHIVE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest silence in an archive body before the connection is dropped and resumed with `Range`.
const ARCHIVE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn record(kind: &str, uri: &str, content_type: &str, block: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Target-URI: {uri}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            block.len()
        )
        .into_bytes();
        r.extend_from_slice(block);
        r.extend_from_slice(b"\r\n\r\n");
        r
    }

    fn html_response(uri: &str, alt: &str) -> Vec<u8> {
        let body = format!("<html><title>T</title><img src=\"/i/{alt}.jpg\" alt=\"{alt}\"></html>");
        let http = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        record(
            "response",
            uri,
            "application/http; msgtype=response",
            http.as_bytes(),
        )
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn run(bytes: &[u8]) -> (Vec<String>, WarcSummary) {
        let sources = [Source::Path("mem".into())];
        let data = bytes.to_vec();
        let open = move |_: &Source| -> io::Result<Box<dyn Read + Send>> {
            Ok(Box::new(io::Cursor::new(data.clone())))
        };
        let mut got = Vec::new();
        let opts = WarcOptions {
            jobs: 2,
            ..WarcOptions::default()
        };
        let summary = extract_sources::<()>(
            &sources,
            &opts,
            &open,
            &mut |_| true,
            &mut |p| {
                got.push(format!("{} {}", p.url, p.caption));
                Ok(())
            },
            &mut |_| {},
        )
        .unwrap();
        (got, summary)
    }

    #[test]
    fn a_truncated_member_loses_only_its_own_record() {
        let members: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                gz(&html_response(
                    &format!("http://s{i}.test/p"),
                    &format!("a{i}"),
                ))
            })
            .collect();
        let mut file = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let keep = if i == 2 { m.len() / 2 } else { m.len() };
            file.extend_from_slice(&m[..keep]);
        }
        let (got, summary) = run(&file);
        assert_eq!(
            got,
            [
                "http://s0.test/i/a0.jpg a0",
                "http://s1.test/i/a1.jpg a1",
                "http://s3.test/i/a3.jpg a3",
                "http://s4.test/i/a4.jpg a4"
            ]
        );
        assert_eq!((summary.records, summary.skipped), (4, 1));
        assert_eq!(summary.skipped_by_reason["corrupt_gzip_member"], 1);
    }

    #[test]
    fn a_whole_file_gzip_and_a_plain_warc_read_the_same() {
        let plain: Vec<u8> = (0..3)
            .flat_map(|i| html_response(&format!("http://h.test/{i}"), &format!("x{i}")))
            .collect();
        let (from_plain, s1) = run(&plain);
        let (from_gz, s2) = run(&gz(&plain));
        assert_eq!(from_plain.len(), 3);
        assert_eq!(from_plain, from_gz);
        assert_eq!((s1.skipped, s2.skipped), (0, 0));
    }

    #[test]
    fn wat_links_follow_cc2dataset_and_bad_json_is_counted() {
        let wat = serde_json::json!({"Envelope": {
        "WARC-Header-Metadata": {"WARC-Target-URI": "http://w.test/dir/page"},
        "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {
            "Head": {"Base": "http://cdn.test/b/", "Title": " A  page "},
            "Links": [
                {"path": "A@/href", "url": "/x", "text": "not an image"},
                {"path": "IMG@/src", "url": "one.jpg", "alt": "first  image"},
                {"path": "IMG@/src", "url": "two.jpg"},
                {"path": "IMG@/src", "url": "data:image/png;base64,AAA", "alt": "inline"},
                {"path": "IMG@/src", "url": "/abs.png", "alt": "second"}
            ]}}}}});
        let mut file = gz(&record(
            "warcinfo",
            "",
            "application/warc-fields",
            b"software: t\r\n",
        ));
        file.extend(gz(&record(
            "metadata",
            "http://w.test/dir/page",
            "application/json",
            wat.to_string().as_bytes(),
        )));
        file.extend(gz(&record(
            "metadata",
            "http://bad.test/",
            "application/json",
            b"{\"Envelope\": [",
        )));
        let (got, summary) = run(&file);
        assert_eq!(
            got,
            [
                "http://cdn.test/b/one.jpg first image",
                "http://cdn.test/abs.png second"
            ]
        );
        assert_eq!((summary.records, summary.pages), (3, 1));
        assert_eq!(summary.skipped_by_reason["malformed_wat_json"], 1);
    }

    #[test]
    fn garbage_between_members_and_bad_headers_are_skipped() {
        let mut file = gz(&html_response("http://a.test/", "a"));
        file.extend_from_slice(b"this is not gzip at all");
        file.extend(gz(b"HTTP/1.1 200 OK\r\n\r\nnot a warc record"));
        file.extend(gz(&html_response("http://b.test/", "b")));
        let (got, summary) = run(&file);
        assert_eq!(got, ["http://a.test/i/a.jpg a", "http://b.test/i/b.jpg b"]);
        assert_eq!(summary.skipped_by_reason["garbage_between_records"], 1);
        assert_eq!(summary.skipped_by_reason["bad_record_header"], 1);
    }

    #[test]
    fn chunked_and_gzipped_bodies_are_decoded() {
        let body = b"<img src=c.jpg alt=chunky>";
        let zipped = gz(body);
        let mut http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n".to_vec();
        http.extend(format!("{:x}\r\n", zipped.len()).as_bytes());
        http.extend(&zipped);
        http.extend(b"\r\n0\r\n\r\n");
        let rec = record(
            "response",
            "http://c.test/",
            "application/http; msgtype=response",
            &http,
        );
        let (got, _) = run(&rec);
        assert_eq!(got, ["http://c.test/c.jpg chunky"]);
    }

    /// Eleven records in one gzip member with damage in the middle: a too-long length, a
    /// too-short length and a header cut short each cost their own record only.
    #[test]
    fn a_whole_file_gzip_resynchronises_after_bad_records() {
        let good = |i: usize| html_response(&format!("http://g{i}.test/"), &format!("g{i}"));
        let mut plain = Vec::new();
        for i in 0..11 {
            let text = String::from_utf8(good(i)).unwrap();
            let length = |delta: i64| {
                let at = text.find("Content-Length: ").unwrap() + "Content-Length: ".len();
                let end = at + text[at..].find('\r').unwrap();
                let n: i64 = text[at..end].parse().unwrap();
                format!("{}{}{}", &text[..at], n + delta, &text[end..])
            };
            let damaged = match i {
                3 => length(100),
                6 => length(-10),
                8 => {
                    let cut = text.find("Content-Type").unwrap();
                    text[..cut].to_string()
                }
                _ => text,
            };
            plain.extend_from_slice(damaged.as_bytes());
        }
        for bytes in [plain.clone(), gz(&plain)] {
            let (got, summary) = run(&bytes);
            let alts: Vec<&str> = got.iter().map(|g| g.rsplit(' ').next().unwrap()).collect();
            assert_eq!(
                alts,
                ["g0", "g1", "g2", "g4", "g5", "g7", "g9", "g10"],
                "{summary:?}"
            );
            assert_eq!(summary.skipped, 3, "{summary:?}");
        }
    }

    #[test]
    fn a_length_past_the_end_gives_back_the_records_it_swallowed() {
        let mut plain = html_response("http://a.test/", "a");
        let bad = String::from_utf8(html_response("http://b.test/", "b")).unwrap();
        plain.extend(
            bad.replacen("Content-Length: ", "Content-Length: 99999", 1)
                .bytes(),
        );
        plain.extend(html_response("http://c.test/", "c"));
        let (got, summary) = run(&gz(&plain));
        assert_eq!(got, ["http://a.test/i/a.jpg a", "http://c.test/i/c.jpg c"]);
        assert_eq!(summary.skipped_by_reason["bad_record_length"], 1);
    }

    #[test]
    fn page_strings_are_shared_and_capped_and_tdm_pages_give_nothing() {
        let title = "t".repeat(html::MAX_TITLE_BYTES * 50);
        let images = "<img src=i.jpg alt=x>".repeat(100);
        let body = format!("<title>{title}</title><base href=\"/b/\">{images}");
        let http = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n{body}");
        let rec = |uri: &str, block: &[u8]| Record {
            warc_type: "response".into(),
            target_uri: Some(uri.into()),
            content_type: Some("application/http; msgtype=response".into()),
            payload_type: None,
            content: block.to_vec(),
            cut: false,
        };
        let found = record_pairs(&rec("http://p.test/", http.as_bytes())).unwrap();
        assert_eq!(found.pairs.len(), 100);
        let (first, last) = (&found.pairs[0], &found.pairs[99]);
        assert!(Arc::ptr_eq(&first.page_url, &last.page_url));
        assert!(Arc::ptr_eq(
            first.title.as_ref().unwrap(),
            last.title.as_ref().unwrap()
        ));
        assert_eq!(first.title.as_deref().unwrap().len(), html::MAX_TITLE_BYTES);
        assert_eq!(found.capped.long_titles, 1);

        let long_uri = format!("http://p.test/{}", "u".repeat(html::MAX_URL_BYTES));
        let err = record_pairs(&rec(&long_uri, http.as_bytes())).unwrap_err();
        assert_eq!(err, SkipReason::LongTargetUri);

        let reserved = http.replace("<title>", "<meta name=tdm-reservation content=1><title>");
        let found = record_pairs(&rec("http://p.test/", reserved.as_bytes())).unwrap();
        assert!(found.pairs.is_empty() && found.opted_out && found.page);
    }
}
