//! csv/tsv lists through `csv_core`, with every buffer bounded.

use super::MAX_LINE_BYTES;
use super::{bad_line, check_url, parse_err, Columns, InputError, InputRow, InputSpec};
use std::io::{self, BufRead, ErrorKind};
use std::path::{Path, PathBuf};

/// Fields of one csv/tsv record; a record with more is one failed row.
const MAX_FIELDS: usize = 4096;

/// A csv/tsv record as read by [`DelimitedRows`].
enum Record {
    Fields(Vec<Option<String>>),
    /// Over [`MAX_LINE_BYTES`] or [`MAX_FIELDS`]: read past, nothing held.
    TooLong,
    NotUtf8,
}

/// csv/tsv records through `csv_core`, whose caller owns the buffers: a record over
/// [`MAX_LINE_BYTES`] (an unclosed quote swallowing the rest of the file, say) is read past into
/// a fixed scratch buffer instead of growing one without bound.
pub(super) struct DelimitedRows {
    path: PathBuf,
    columns: Columns,
    core: csv_core::Reader,
    reader: Box<dyn BufRead + Send>,
    out: Vec<u8>,
    ends: Vec<usize>,
    done: bool,
}

impl DelimitedRows {
    pub(super) fn open(
        spec: &InputSpec,
        path: &Path,
        reader: Box<dyn BufRead + Send>,
        delimiter: u8,
    ) -> Result<DelimitedRows, InputError> {
        let mut rows = DelimitedRows {
            path: path.to_path_buf(),
            columns: Columns {
                url: 0,
                caption: None,
                page_url: None,
                extra: Vec::new(),
            },
            core: csv_core::ReaderBuilder::new().delimiter(delimiter).build(),
            reader,
            out: vec![0; 1024],
            ends: vec![0; 16],
            done: false,
        };
        let header = match rows.read_record() {
            Err(e) => return Err(parse_err(path, "header", e.to_string())),
            Ok(None) => return Err(parse_err(path, "header", "the file is empty")),
            Ok(Some(Record::Fields(fields))) => fields,
            Ok(Some(Record::TooLong)) => {
                return Err(parse_err(path, "header", "over the row size limit"))
            }
            Ok(Some(Record::NotUtf8)) => return Err(parse_err(path, "header", "not valid UTF-8")),
        };
        let mut header: Vec<String> = header.into_iter().map(Option::unwrap_or_default).collect();
        if let Some(first) = header.first_mut() {
            *first = first.trim_start_matches('\u{feff}').to_string();
        }
        rows.columns = Columns::resolve(spec, path, &header)?;
        Ok(rows)
    }

    /// The next record, `None` at the end of the input.
    fn read_record(&mut self) -> io::Result<Option<Record>> {
        let (mut outlen, mut endlen, mut over) = (0, 0, false);
        loop {
            let input = match self.reader.fill_buf() {
                Ok(i) => i,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let (res, nin, nout, nend) =
                self.core
                    .read_record(input, &mut self.out[outlen..], &mut self.ends[endlen..]);
            self.reader.consume(nin);
            if !over {
                outlen += nout;
                endlen += nend;
            }
            match res {
                csv_core::ReadRecordResult::InputEmpty => {}
                csv_core::ReadRecordResult::OutputFull
                    if over || self.out.len() >= MAX_LINE_BYTES =>
                {
                    over = true;
                    outlen = 0;
                }
                csv_core::ReadRecordResult::OutputFull => {
                    let len = (self.out.len() * 2).min(MAX_LINE_BYTES);
                    self.out.resize(len, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull
                    if over || self.ends.len() >= MAX_FIELDS =>
                {
                    over = true;
                    endlen = 0;
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let len = (self.ends.len() * 2).min(MAX_FIELDS);
                    self.ends.resize(len, 0);
                }
                csv_core::ReadRecordResult::Record if over => return Ok(Some(Record::TooLong)),
                csv_core::ReadRecordResult::Record => return Ok(Some(self.fields(endlen))),
                csv_core::ReadRecordResult::End => return Ok(None),
            }
        }
    }

    fn fields(&self, count: usize) -> Record {
        // Each field on its own: the fields are stored back to back, so bytes that are valid
        // UTF-8 together (`c2` | `80`) can still split a character between two fields.
        let mut start = 0;
        let mut fields = Vec::with_capacity(count);
        for &end in &self.ends[..count] {
            let Ok(field) = std::str::from_utf8(&self.out[start..end]) else {
                return Record::NotUtf8;
            };
            start = end;
            fields.push((!field.is_empty()).then(|| field.to_string()));
        }
        Record::Fields(fields)
    }
}

impl Iterator for DelimitedRows {
    type Item = Result<InputRow, InputError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let line = self.core.line();
        let record = match self.read_record() {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(source) => {
                self.done = true;
                return Some(Err(InputError::Io {
                    path: self.path.clone(),
                    source,
                }));
            }
        };
        let fields = match record {
            Record::Fields(f) => f,
            Record::TooLong => {
                return Some(Err(bad_line(
                    &self.path,
                    line,
                    format!(
                    "record over the {MAX_LINE_BYTES}-byte or {MAX_FIELDS}-field limit of a row"
                ),
                )))
            }
            Record::NotUtf8 => {
                return Some(Err(bad_line(&self.path, line, "not valid UTF-8")));
            }
        };
        let row = self.columns.row(|i| fields.get(i).cloned().flatten());
        Some(check_url(row, &self.path, line))
    }
}
