//! Line-based lists (txt, jsonl): lines read with a bounded buffer, so a line of any length
//! costs at most its cap in memory and one failed row.

use super::{bad_line, check_url, parse_err, InputError, InputRow, InputSpec, PAGE_URL_COLUMN};
use super::{MAX_LINE_BYTES, MAX_URL_BYTES};
use std::io::{self, BufRead, ErrorKind};
use std::path::Path;

/// One line of a text list as read by [`CappedLines`].
enum Line {
    Text(String),
    /// Over the cap: this many bytes were read past, none held.
    TooLong(u64),
    /// Not UTF-8 from this byte of the line on.
    NotUtf8(usize),
}

/// Lines of a stream holding at most `cap` bytes of one line, whatever its length.
struct CappedLines {
    reader: Box<dyn BufRead + Send>,
    buf: Vec<u8>,
    cap: usize,
    /// 1-based number of the line last returned.
    line: u64,
}

impl CappedLines {
    fn new(reader: Box<dyn BufRead + Send>, cap: usize) -> Self {
        CappedLines {
            reader,
            buf: Vec::new(),
            cap,
            line: 0,
        }
    }

    fn next_line(&mut self) -> Option<io::Result<Line>> {
        self.buf.clear();
        let (mut total, mut over) = (0u64, false);
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Some(Err(e)),
            };
            if chunk.is_empty() {
                if total == 0 {
                    return None;
                }
                break;
            }
            let newline = memchr::memchr(b'\n', chunk);
            let take = newline.map_or(chunk.len(), |i| i + 1);
            total += take as u64;
            over |= total > self.cap as u64 + 2;
            if !over {
                self.buf.extend_from_slice(&chunk[..take]);
            }
            self.reader.consume(take);
            if newline.is_some() {
                break;
            }
        }
        self.line += 1;
        let content = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        Some(Ok(if over || content.len() > self.cap {
            Line::TooLong(total)
        } else {
            match std::str::from_utf8(content) {
                Ok(text) => Line::Text(text.to_string()),
                Err(e) => Line::NotUtf8(e.valid_up_to()),
            }
        }))
    }
}

/// Each line of `reader` as text, or the row-level problem with it (a [`InputError::BadLine`]);
/// `None` for blank lines, which are no rows.
fn lines(
    reader: Box<dyn BufRead + Send>,
    path: &Path,
    cap: usize,
    what: &'static str,
) -> impl Iterator<Item = Option<Result<(u64, String), InputError>>> + Send {
    let path = path.to_path_buf();
    let mut lines = CappedLines::new(reader, cap);
    std::iter::from_fn(move || {
        let line = match lines.next_line()? {
            Ok(line) => line,
            Err(source) => {
                return Some(Some(Err(InputError::Io {
                    path: path.clone(),
                    source,
                })))
            }
        };
        let n = lines.line;
        Some(match line {
            Line::Text(t) if t.trim().is_empty() => None,
            Line::Text(t) => Some(Ok((n, t))),
            Line::TooLong(len) => Some(Err(bad_line(
                &path,
                n,
                format!("{len} bytes, over the {cap}-byte limit of {what}"),
            ))),
            Line::NotUtf8(at) => Some(Err(bad_line(
                &path,
                n,
                format!("not valid UTF-8 (at byte {at} of the line)"),
            ))),
        })
    })
}

pub(super) fn txt_rows(
    reader: Box<dyn BufRead + Send>,
    path: &Path,
    extra_cols: usize,
) -> Result<impl Iterator<Item = Result<InputRow, InputError>> + Send, InputError> {
    if extra_cols > 0 {
        return Err(parse_err(
            path,
            "file",
            "a txt list has only URLs: drop --save-additional-columns or use csv/tsv/jsonl/parquet",
        ));
    }
    let rows = lines(reader, path, MAX_URL_BYTES, "a URL").flatten();
    Ok(rows.map(|line| {
        line.map(|(_, text)| InputRow {
            url: text.trim().to_string(),
            ..InputRow::default()
        })
    }))
}

pub(super) fn jsonl_rows(
    spec: &InputSpec,
    path: &Path,
    reader: Box<dyn BufRead + Send>,
) -> impl Iterator<Item = Result<InputRow, InputError>> + Send {
    let spec = spec.clone();
    let path = path.to_path_buf();
    lines(reader, &path, MAX_LINE_BYTES, "a row")
        .flatten()
        .map(move |line| {
            let (n, text) = line?;
            json_row(&spec, &path, n as usize, &text)
        })
}

fn json_row(
    spec: &InputSpec,
    path: &Path,
    line_no: usize,
    line: &str,
) -> Result<InputRow, InputError> {
    let bad = |message: String| InputError::BadLine {
        path: path.to_path_buf(),
        line: line_no as u64,
        message,
    };
    let obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    let get = |k: &str| match obj.get(k)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    };
    let url = get(&spec.url_col).ok_or_else(|| {
        let keys: Vec<String> = obj.keys().cloned().collect();
        bad(format!(
            "no `{}` key (keys: {}; choose the URL key with --url-col)",
            spec.url_col,
            keys.join(", ")
        ))
    })?;
    let row = InputRow {
        url,
        caption: spec.caption_col.as_deref().and_then(get),
        page_url: get(PAGE_URL_COLUMN),
        extra: spec.extra_cols.iter().map(|c| get(c)).collect(),
    };
    check_url(row, path, line_no as u64)
}
