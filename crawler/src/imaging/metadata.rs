//! EXIF → img2dataset's `exif` column, bounded. A file whose thousands of IFD entries all point
//! at one large block amplifies tens of kilobytes into gigabytes when every entry is parsed and
//! rendered, so the raw TIFF structure is first walked by hand — at most [`MAX_EXIF_ENTRIES`]
//! entries, within the first [`MAX_EXIF_BYTES`] — and only [`ALLOWED`] tags, each value cut to
//! [`MAX_EXIF_VALUE_BYTES`], are copied into a small TIFF that `kamadak-exif` then renders, into
//! a JSON object of at most [`MAX_EXIF_JSON_BYTES`].

use exif::{Context, Tag};

/// Raw EXIF past this many bytes is not read: JPEG's APP1 segment, where nearly all EXIF lives,
/// holds at most 64 KiB.
pub const MAX_EXIF_BYTES: usize = 64 << 10;

/// IFD entries visited in all (IFD0, then its Exif and GPS IFDs). Cameras write a few dozen.
pub const MAX_EXIF_ENTRIES: usize = 512;

/// Bytes of one value kept (a longer string or array is cut to its first bytes).
pub const MAX_EXIF_VALUE_BYTES: usize = 256;

/// Characters of one rendered value kept (an array's rendering may be longer than its bytes).
pub const MAX_EXIF_VALUE_CHARS: usize = 256;

/// The JSON object stays within this many bytes; tags that would pass it are left out.
pub const MAX_EXIF_JSON_BYTES: usize = 4 << 10;

/// The tags kept, all from the primary image's IFDs: what a corpus user filters, dedups or
/// attributes by — orientation (already applied to the pixels, kept as provenance), the capture
/// device and software (camera vs. screenshot vs. render), capture time and time zone, the
/// exposure basics, the stored pixel size, colour space, GPS position and time, and the rights
/// holder. Maker notes, thumbnails, comments and vendor blobs are left out: large,
/// vendor-specific, and the usual carriers of amplification.
const ALLOWED: &[Tag] = &[
    Tag::Make,
    Tag::Model,
    Tag::Software,
    Tag::Orientation,
    Tag::DateTime,
    Tag::ImageDescription,
    Tag::Artist,
    Tag::Copyright,
    Tag::DateTimeOriginal,
    Tag::DateTimeDigitized,
    Tag::OffsetTimeOriginal,
    Tag::ExposureTime,
    Tag::FNumber,
    Tag::PhotographicSensitivity,
    Tag::ExposureBiasValue,
    Tag::FocalLength,
    Tag::FocalLengthIn35mmFilm,
    Tag::Flash,
    Tag::LensMake,
    Tag::LensModel,
    Tag::ColorSpace,
    Tag::PixelXDimension,
    Tag::PixelYDimension,
    Tag::GPSLatitudeRef,
    Tag::GPSLatitude,
    Tag::GPSLongitudeRef,
    Tag::GPSLongitude,
    Tag::GPSAltitudeRef,
    Tag::GPSAltitude,
    Tag::GPSTimeStamp,
    Tag::GPSDateStamp,
];

/// IFD0's pointers to the Exif and GPS IFDs.
const EXIF_POINTER: u16 = 0x8769;
const GPS_POINTER: u16 = 0x8825;

/// Renders raw EXIF (TIFF structure, optionally after an `Exif\0\0` prefix) as a JSON object of
/// `"<IFD> <Tag>": "<value>"`, the key style of exifread that img2dataset writes, keeping only
/// [`ALLOWED`] tags. Damaged EXIF gives what could be read, or `None`.
pub(crate) fn exif_json(raw: &[u8]) -> Option<String> {
    let tiff = raw.strip_prefix(b"Exif\0\0").unwrap_or(raw);
    let small = compact(&tiff[..tiff.len().min(MAX_EXIF_BYTES)])?;
    let exif = match exif::Reader::new().continue_on_error(true).read_raw(small) {
        Ok(exif) => exif,
        Err(e) => e.distill_partial_result(|_| {}).ok()?,
    };
    let mut map = serde_json::Map::new();
    // The braces, then per entry a comma, the quoted key and value and a colon.
    let mut json_len = 2;
    for field in exif.fields() {
        let group = match field.tag.context() {
            Context::Tiff => "Image",
            Context::Exif => "EXIF",
            Context::Gps => "GPS",
            _ => continue,
        };
        let rendered = field.display_value().with_unit(&exif).to_string();
        let value: String = rendered.trim().chars().take(MAX_EXIF_VALUE_CHARS).collect();
        let key = format!("{group} {}", field.tag);
        let entry_len = json_string_len(&key) + json_string_len(&value) + 2;
        if json_len + entry_len <= MAX_EXIF_JSON_BYTES {
            json_len += entry_len;
            map.insert(key, value.into());
        }
    }
    serde_json::to_string(&map).ok()
}

/// The length of `s` as a JSON string, quotes and escapes included.
fn json_string_len(s: &str) -> usize {
    serde_json::to_string(s).map_or(usize::MAX / 2, |j| j.len())
}

/// One kept IFD entry: its tag number, TIFF type, element count and value bytes (in the
/// source's byte order).
pub(super) struct Entry {
    pub(super) tag: u16,
    pub(super) typ: u16,
    pub(super) count: u32,
    pub(super) value: Vec<u8>,
}

/// Reads the TIFF structure within the caps.
struct Walker<'a> {
    data: &'a [u8],
    little_endian: bool,
    visited: usize,
}

impl Walker<'_> {
    fn u16_at(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.data.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.little_endian {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.data.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.little_endian {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    /// The allowed entries of the IFD at `offset` (first occurrence of each tag), and the
    /// values of the Exif and GPS pointers when `context` is IFD0.
    fn ifd(&mut self, offset: usize, context: Context) -> (Vec<Entry>, [Option<usize>; 2]) {
        let (mut kept, mut pointers) = (Vec::new(), [None, None]);
        let count = self.u16_at(offset).unwrap_or(0) as usize;
        let count = count.min(MAX_EXIF_ENTRIES - self.visited);
        self.visited += count;
        for i in 0..count {
            let at = offset + 2 + 12 * i;
            let (Some(tag), Some(typ), Some(n)) =
                (self.u16_at(at), self.u16_at(at + 2), self.u32_at(at + 4))
            else {
                break;
            };
            if context == Context::Tiff && matches!(tag, EXIF_POINTER | GPS_POINTER) {
                let slot = usize::from(tag == GPS_POINTER);
                pointers[slot] = self.u32_at(at + 8).map(|o| o as usize);
                continue;
            }
            let allowed = ALLOWED.contains(&Tag(context, tag));
            if !allowed || kept.iter().any(|e: &Entry| e.tag == tag) {
                continue;
            }
            if let Some(entry) = self.value(at, tag, typ, n) {
                kept.push(entry);
            }
        }
        (kept, pointers)
    }

    /// The entry at `at` with its value cut to [`MAX_EXIF_VALUE_BYTES`], or `None` when its
    /// type is unknown or its value lies outside the data.
    fn value(&self, at: usize, tag: u16, typ: u16, count: u32) -> Option<Entry> {
        let unit = type_len(typ)?;
        let full = unit.checked_mul(count as usize)?;
        let kept = (MAX_EXIF_VALUE_BYTES / unit).min(count as usize);
        let start = if full <= 4 {
            at + 8
        } else {
            self.u32_at(at + 8)? as usize
        };
        let value = self.data.get(start..start.checked_add(kept * unit)?)?;
        Some(Entry {
            tag,
            typ,
            count: kept as u32,
            value: value.to_vec(),
        })
    }
}

/// Bytes per element of a TIFF field type; `None` for types TIFF does not define.
fn type_len(typ: u16) -> Option<usize> {
    match typ {
        1 | 2 | 6 | 7 => Some(1),
        3 | 8 => Some(2),
        4 | 9 | 11 => Some(4),
        5 | 10 | 12 => Some(8),
        _ => None,
    }
}

/// A new TIFF holding only the allowed entries of `tiff`'s IFD0, Exif IFD and GPS IFD, each
/// value cut to [`MAX_EXIF_VALUE_BYTES`]: at most a few kilobytes whatever `tiff` holds.
fn compact(tiff: &[u8]) -> Option<Vec<u8>> {
    let little_endian = match tiff.get(..4)? {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let mut walker = Walker {
        data: tiff,
        little_endian,
        visited: 0,
    };
    let ifd0_offset = walker.u32_at(4)? as usize;
    let (ifd0, [exif_at, gps_at]) = walker.ifd(ifd0_offset, Context::Tiff);
    // A pointer back to IFD0 would only revisit it; the entry cap bounds any other loop.
    let mut sub = |at: Option<usize>, context| {
        at.filter(|&o| o != ifd0_offset)
            .map_or_else(Vec::new, |o| walker.ifd(o, context).0)
    };
    let (exif, gps) = (sub(exif_at, Context::Exif), sub(gps_at, Context::Gps));
    Some(write_tiff(little_endian, ifd0, exif, gps))
}

/// Serialises IFD0 (with pointers to the non-empty Exif and GPS IFDs), then those IFDs, then
/// the values longer than four bytes.
pub(super) fn write_tiff(
    little_endian: bool,
    mut ifd0: Vec<Entry>,
    exif: Vec<Entry>,
    gps: Vec<Entry>,
) -> Vec<u8> {
    let u16b = |v: u16| {
        if little_endian {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    let u32b = |v: u32| {
        if little_endian {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    let ifd_len = |n: usize| 2 + 12 * n + 4;
    let pointer = |tag: u16| Entry {
        tag,
        typ: 4,
        count: 1,
        value: Vec::new(),
    };
    if !exif.is_empty() {
        ifd0.push(pointer(EXIF_POINTER));
    }
    if !gps.is_empty() {
        ifd0.push(pointer(GPS_POINTER));
    }
    let exif_at = 8 + ifd_len(ifd0.len());
    let gps_at = exif_at
        + if exif.is_empty() {
            0
        } else {
            ifd_len(exif.len())
        };
    let mut data_at = gps_at
        + if gps.is_empty() {
            0
        } else {
            ifd_len(gps.len())
        };
    let mut out = Vec::new();
    out.extend_from_slice(if little_endian { b"II*\0" } else { b"MM\0*" });
    out.extend(u32b(8));
    let mut values = Vec::new();
    for (entries, present) in [
        (&ifd0, true),
        (&exif, !exif.is_empty()),
        (&gps, !gps.is_empty()),
    ] {
        if !present {
            continue;
        }
        out.extend(u16b(entries.len() as u16));
        for e in entries {
            out.extend(u16b(e.tag));
            out.extend(u16b(e.typ));
            out.extend(u32b(e.count));
            match e.tag {
                EXIF_POINTER => out.extend(u32b(exif_at as u32)),
                GPS_POINTER => out.extend(u32b(gps_at as u32)),
                _ if e.value.len() <= 4 => {
                    let mut inline = [0u8; 4];
                    inline[..e.value.len()].copy_from_slice(&e.value);
                    out.extend(inline);
                }
                _ => {
                    out.extend(u32b(data_at as u32));
                    values.extend_from_slice(&e.value);
                    data_at += e.value.len();
                }
            }
        }
        out.extend(u32b(0));
    }
    out.extend(values);
    out
}
