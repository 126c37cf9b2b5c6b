//! The ground truth the test web publishes: one [`ManifestRow`] per (page, image) pair a correct
//! crawler extracts, serialised as `/manifest.parquet`, and the same pairs in img2dataset's input
//! form as `/urls.parquet`.

use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;

/// What `wit download URLS.parquet -o OUT --allow-net 127.0.0.1/32` with every other flag at its
/// default (robots respected, 2 retries, 5 redirects, 32 MiB body cap, default
/// `--disallowed-header-directives`, no caption/size filters) must record for the row's `url`.
pub const EXPECTED_VALUES: [&str; 6] = [
    "success",
    "failed_to_download",
    "failed_to_resize",
    "filtered",
    "opted_out",
    "disallowed_by_robots",
];

/// One (page, image) pair of the site and the outcome a correct client reaches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    /// The page holding the `<img>`, as a URL parser normalises it (no fragment).
    pub page_url: String,
    /// The page's `<title>` text, decoded.
    pub title: String,
    /// Depth of the page in the link graph (home = 0), for crawls with `--max-depth`.
    pub depth: i32,
    /// 0-based order of this pair among the page's pairs, in document order.
    pub position: i32,
    /// The absolute image URL an extractor must produce: resolved against `<base href>`, the
    /// largest `srcset` candidate, the lazy `data-src`/`data-original`, or the `<picture>`
    /// `<source>` (whose `<img>` carries only a `data:` placeholder).
    pub url: String,
    /// The alt text with entities decoded and whitespace collapsed to single spaces.
    pub caption: String,
    /// What `wit download` with default flags must record for `url` (see [`EXPECTED_VALUES`]).
    pub expected: &'static str,
    /// The canonical grammar caption of what the image shows, when it shows a scene.
    pub scene: Option<String>,
    /// `train` or `heldout` by [`super::scene::is_held_out`] for scene images, else `none`.
    pub split: &'static str,
    /// How the alt was written: `scene`, `entity`, `whitespace`, `non_ascii`, `long`, `text`,
    /// `decorative` or `empty`.
    pub alt_kind: &'static str,
    /// True when a boilerplate caption filter (empty alt, "logo", "spacer", a file name, digits)
    /// should drop the pair: with such a filter on, its expected outcome becomes `filtered`.
    pub boilerplate: bool,
    /// How the `<img>` is embedded (`src_root`, `srcset_w`, `picture`, `base_href`, `fault`...).
    pub form: &'static str,
    /// The served format (`jpeg`, `png`, `webp`, `gif`), or `none` when nothing decodable is served.
    pub format: &'static str,
    /// Width after applying EXIF orientation, when a decodable image is served.
    pub width: Option<i32>,
    /// Height after applying EXIF orientation, when a decodable image is served.
    pub height: Option<i32>,
    /// The EXIF orientation tag of the served JPEG (1 when there is none).
    pub orientation: i32,
    /// The fault-area behaviour behind `url`, if any.
    pub fault: Option<&'static str>,
}

fn strings<'a>(rows: &'a [ManifestRow], f: impl Fn(&'a ManifestRow) -> &'a str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
}

fn opt_strings<'a>(
    rows: &'a [ManifestRow],
    f: impl Fn(&'a ManifestRow) -> Option<&'a str>,
) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<StringArray>())
}

fn ints(rows: &[ManifestRow], f: impl Fn(&ManifestRow) -> Option<i32>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<Int32Array>())
}

/// `/manifest.parquet`: every field of [`ManifestRow`], one column each, in site order.
pub fn manifest_parquet(rows: &[ManifestRow]) -> Vec<u8> {
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("page_url", strings(rows, |r| r.page_url.as_str())),
        ("title", strings(rows, |r| r.title.as_str())),
        ("depth", ints(rows, |r| Some(r.depth))),
        ("position", ints(rows, |r| Some(r.position))),
        ("url", strings(rows, |r| r.url.as_str())),
        ("caption", strings(rows, |r| r.caption.as_str())),
        ("expected", strings(rows, |r| r.expected)),
        ("scene", opt_strings(rows, |r| r.scene.as_deref())),
        ("split", strings(rows, |r| r.split)),
        ("alt_kind", strings(rows, |r| r.alt_kind)),
        (
            "boilerplate",
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.boilerplate))
                    .collect::<BooleanArray>(),
            ),
        ),
        ("form", strings(rows, |r| r.form)),
        ("format", strings(rows, |r| r.format)),
        ("width", ints(rows, |r| r.width)),
        ("height", ints(rows, |r| r.height)),
        ("orientation", ints(rows, |r| Some(r.orientation))),
        ("fault", opt_strings(rows, |r| r.fault)),
    ];
    write_parquet(columns)
}

/// `/urls.parquet`: img2dataset's input form (`url`, `caption`), one row per manifest row.
pub fn urls_parquet(rows: &[ManifestRow]) -> Vec<u8> {
    write_parquet(vec![
        ("url", strings(rows, |r| r.url.as_str())),
        ("caption", strings(rows, |r| r.caption.as_str())),
    ])
}

/// Columns that may hold nulls; the schema is fixed so every site has the same one.
const NULLABLE: [&str; 4] = ["scene", "width", "height", "fault"];

fn write_parquet(columns: Vec<(&str, ArrayRef)>) -> Vec<u8> {
    let columns = columns
        .into_iter()
        .map(|(name, array)| (name, array, NULLABLE.contains(&name)));
    let batch = RecordBatch::try_from_iter_with_nullable(columns).expect("columns of equal length");
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None).expect("in-memory parquet");
    w.write(&batch).expect("in-memory parquet");
    w.close().expect("in-memory parquet");
    out
}
