//! The short text summary `wit stats` prints.

use super::html::{bytes, count, pct};
use super::schema::{Distribution, Stats};
use std::fmt::Write;

/// Makes a data-derived string safe to print to a terminal: control characters (ESC starts
/// colour, cursor and OSC title/hyperlink sequences; BEL, CR and BS rewrite what is shown) and
/// Unicode bidirectional overrides become visible `\u{..}` escapes. Every string `summary`
/// prints that came from the shards (hosts, errors, words, languages, status names) goes
/// through it.
pub fn terminal_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A dozen lines a person reads in a terminal; the details are in `stats.json` and the report.
/// Data-derived strings are printed through [`terminal_safe`].
pub fn summary(s: &Stats) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{}: {} shards, {} rows, {} successes ({})",
        terminal_safe(&s.folder),
        s.shards,
        s.count,
        s.successes,
        pct(s.success_rate)
    );
    let statuses: Vec<String> = s
        .statuses
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{} {v}", terminal_safe(k)))
        .collect();
    let _ = writeln!(t, "statuses: {}", statuses.join(", "));
    if let Some(e) = s.top_errors.first() {
        let _ = writeln!(t, "top error: {} ({}x)", terminal_safe(&e.value), e.count);
    }
    if s.throughput.wall_seconds > 0.0 {
        let _ = writeln!(
            t,
            "throughput: {:.1} rows/s over {:.0} s",
            s.throughput.rows_per_second, s.throughput.wall_seconds
        );
    }
    let px = |d: &Distribution| d.p50.map_or("-".into(), |v| format!("{v:.0}"));
    let b = |d: &Distribution| d.p50.map_or("-".into(), |v| bytes(v as u64));
    let (o, st) = (&s.images.original, &s.images.stored);
    let _ = writeln!(
        t,
        "median image: downloaded {}x{} px {}, stored {}x{} px {}",
        px(&o.width),
        px(&o.height),
        b(&o.bytes),
        px(&st.width),
        px(&st.height),
        b(&st.bytes)
    );
    let _ = writeln!(
        t,
        "captions: median {} chars, {} words; {} missing",
        px(&s.captions.chars),
        px(&s.captions.words),
        s.captions.missing
    );
    let top = |items: &[super::schema::Ranked]| {
        items
            .iter()
            .take(5)
            .map(|r| terminal_safe(&r.value))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(t, "top domains: {}", top(&s.domains));
    let _ = writeln!(t, "top words: {}", top(&s.captions.top_words));
    if !s.languages.is_empty() {
        let _ = writeln!(t, "languages: {}", top(&s.languages));
    }
    let d = &s.duplicates;
    let _ = writeln!(
        t,
        "duplicates: ~{} distinct URLs, exact-dup rate ~{}, {} near duplicates; opted out {}, robots {}",
        count(d.distinct_urls as u64),
        pct(d.exact_duplicate_rate),
        d.near_duplicates,
        s.opted_out,
        s.disallowed_by_robots
    );
    if let Some(q) = &s.queries {
        let _ = writeln!(
            t,
            "queries: {} matched after balancing (largest {}), Herfindahl {:.5}",
            q.matched_after, q.max_after, q.hhi_after
        );
    }
    if let Some(dp) = &s.deep {
        let _ = writeln!(
            t,
            "deep: {} images read, {} undecodable, {} missing",
            dp.images_read, dp.undecodable, dp.missing_images
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        let hostile = "a\u{1b}]8;;http://x\u{7}b\u{1b}[2Jc\rd\u{202e}e\u{9b}f";
        let safe = terminal_safe(hostile);
        assert!(
            !safe.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{safe:?}"
        );
        assert!(safe.starts_with("a\\u{1b}]8;;http://x\\u{7}b"), "{safe}");
        assert_eq!(terminal_safe("plain.example, café"), "plain.example, café");
    }
}
