//! `report.html`: one self-contained file (inline CSS, inline SVG charts, inline base64 JPEG
//! thumbnails; no scripts, fonts or anything remote), readable on a laptop screen.

use super::queries::QueryBalance;
use super::sample::Thumbnail;
use super::schema::{Bucket, Distribution, Ranked, Stats, TimeBin};
use std::fmt::Write;

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;\
background:#f6f7f9;color:#1d2330}main{max-width:1200px;margin:0 auto;padding:16px 24px}\
h1{font-size:1.5rem;margin:.4em 0}h2{font-size:1.15rem;margin:1.6em 0 .5em;border-bottom:1px solid #d5d9e0}\
h3{font-size:.95rem;margin:.6em 0 .2em}.cards{display:flex;flex-wrap:wrap;gap:10px}\
.card{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 14px;min-width:120px}\
.card b{display:block;font-size:1.25rem}.card span{font-size:.8rem;color:#5b6475}\
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:14px}\
.panel{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 12px}\
table{border-collapse:collapse;font-size:.85rem;width:100%}td,th{padding:2px 6px;text-align:left;\
border-bottom:1px solid #eef0f3}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\
.thumbs{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}\
figure{margin:0;background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:5px}\
figure img{display:block;margin:0 auto;max-width:160px;max-height:160px}\
figcaption{font-size:.75rem;color:#333;overflow-wrap:anywhere;margin-top:4px}\
.note{font-size:.8rem;color:#5b6475}svg text{font-size:11px;fill:#333}";

/// Renders the report.
pub fn render(stats: &Stats, thumbs: &[Thumbnail]) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>wit stats: {}</title><style>{STYLE}</style></head><body><main>",
        esc(&stats.folder)
    );
    let _ = write!(h, "<h1>Dataset report: {}</h1>", esc(&stats.folder));
    overview(&mut h, stats);
    outcomes(&mut h, stats);
    throughput(&mut h, &stats.throughput.bins);
    images(&mut h, stats);
    captions(&mut h, stats);
    duplicates(&mut h, stats);
    if let Some(q) = &stats.queries {
        queries(&mut h, q);
    }
    samples(&mut h, thumbs);
    bounds(&mut h, stats);
    h.push_str("</main></body></html>\n");
    h
}

fn overview(h: &mut String, s: &Stats) {
    let cards = [
        ("rows", count(s.count)),
        ("successes", count(s.successes)),
        ("success rate", pct(s.success_rate)),
        ("shards", count(s.shards)),
        ("distinct URLs ≈", count(s.duplicates.distinct_urls as u64)),
        ("exact-dup rate ≈", pct(s.duplicates.exact_duplicate_rate)),
        ("near duplicates", count(s.duplicates.near_duplicates)),
        ("opted out", count(s.opted_out)),
        ("robots.txt disallowed", count(s.disallowed_by_robots)),
    ];
    h.push_str("<div class=\"cards\">");
    for (label, value) in cards {
        let _ = write!(
            h,
            "<div class=\"card\"><b>{value}</b><span>{label}</span></div>"
        );
    }
    h.push_str("</div>");
    if s.shards_rebuilt_from_parquet > 0 {
        let _ = write!(
            h,
            "<p class=\"note\">{} shard(s) had no summary in _stats.json and were rebuilt from parquet.</p>",
            s.shards_rebuilt_from_parquet
        );
    }
    if let Some(d) = &s.deep {
        let _ = write!(
            h,
            "<p class=\"note\">--deep: {} images read back, {} undecodable, {} success rows \
             without an image, {} tar samples without a success row.</p>",
            d.images_read, d.undecodable, d.missing_images, d.orphan_samples
        );
    }
}

fn outcomes(h: &mut String, s: &Stats) {
    h.push_str("<h2>Outcomes</h2><div class=\"grid2\"><div class=\"panel\"><h3>Statuses</h3>");
    let bars: Vec<(String, f64)> = s
        .statuses
        .iter()
        .map(|(k, v)| (k.clone(), *v as f64))
        .collect();
    h.push_str(&hbars(&bars, |v| count(v as u64)));
    h.push_str("</div><div class=\"panel\"><h3>Top error messages</h3>");
    ranked_table(h, &s.top_errors, "message");
    h.push_str("</div></div>");
}

fn throughput(h: &mut String, bins: &[TimeBin]) {
    h.push_str("<h2>Throughput over time</h2><div class=\"panel\">");
    if bins.is_empty() {
        h.push_str("<p class=\"note\">No shard recorded start and end times.</p></div>");
        return;
    }
    let t0 = bins[0].start;
    let width = bins[0].end - bins[0].start;
    let bars: Vec<(String, f64)> = bins
        .iter()
        .map(|b| (format!("{:.0}s", b.start - t0), b.rows / width.max(1e-9)))
        .collect();
    h.push_str("<h3>Rows per second (shards written in parallel add up)</h3>");
    h.push_str(&columns(&bars, |v| format!("{v:.1}"), 1100.0));
    h.push_str("</div>");
}

fn images(h: &mut String, s: &Stats) {
    h.push_str("<h2>Images</h2><div class=\"grid2\">");
    let sets = [
        ("downloaded", &s.images.original),
        ("stored", &s.images.stored),
    ];
    for (name, set) in sets {
        dist_panel(h, &format!("Width, {name} (px)"), &set.width, count_f);
        dist_panel(h, &format!("Height, {name} (px)"), &set.height, count_f);
        dist_panel(h, &format!("Aspect ratio w/h, {name}"), &set.aspect, |v| {
            format!("{v:.2}")
        });
        dist_panel(h, &format!("Bytes, {name}"), &set.bytes, |v| {
            bytes(v as u64)
        });
    }
    for (name, set) in sets {
        let _ = write!(h, "<div class=\"panel\"><h3>Formats, {name}</h3>");
        h.push_str(&hbars(&pairs(&set.formats), |v| count(v as u64)));
        h.push_str("</div>");
    }
    h.push_str("</div>");
}

fn captions(h: &mut String, s: &Stats) {
    let c = &s.captions;
    let _ = write!(
        h,
        "<h2>Captions</h2><p class=\"note\">Over successes; {} without a caption.</p><div class=\"grid2\">",
        count(c.missing)
    );
    dist_panel(h, "Length (characters)", &c.chars, count_f);
    dist_panel(h, "Length (words)", &c.words, count_f);
    h.push_str("<div class=\"panel\"><h3>Top words</h3>");
    h.push_str(&hbars(
        &pairs(&c.top_words[..c.top_words.len().min(25)]),
        |v| count(v as u64),
    ));
    h.push_str("</div><div class=\"panel\"><h3>Languages</h3>");
    h.push_str(&hbars(&pairs(&s.languages), |v| count(v as u64)));
    h.push_str("</div><div class=\"panel\"><h3>Top domains</h3>");
    h.push_str(&hbars(&pairs(&s.domains[..s.domains.len().min(25)]), |v| {
        count(v as u64)
    }));
    h.push_str("</div></div>");
}

fn duplicates(h: &mut String, s: &Stats) {
    let d = &s.duplicates;
    let rows = [
        ("Distinct URLs (HyperLogLog)", count(d.distinct_urls as u64)),
        ("URL duplicate rate", pct(d.url_duplicate_rate)),
        ("Rows with downloaded bytes", count(d.with_blake3)),
        (
            "Distinct images by BLAKE3 (HyperLogLog)",
            count(d.distinct_images as u64),
        ),
        ("Exact-duplicate rate", pct(d.exact_duplicate_rate)),
        ("Near duplicates (dup_of)", count(d.near_duplicates)),
        ("Near-duplicate rate", pct(d.near_duplicate_rate)),
    ];
    h.push_str("<h2>Duplicates</h2><div class=\"panel\"><table>");
    for (k, v) in rows {
        let _ = write!(h, "<tr><td>{k}</td><td class=\"n\">{v}</td></tr>");
    }
    h.push_str("</table></div>");
}

fn queries(h: &mut String, q: &QueryBalance) {
    let _ = write!(
        h,
        "<h2>Query balance</h2><p class=\"note\">From {}: {} queries, {} matched before and {} \
         after balancing; {} matches before, {} after; largest query {}; concentration (Herfindahl) \
         {:.5} before, {:.5} after (= {:.0} equally sized queries).</p><div class=\"grid2\">",
        esc(&q.source),
        count(q.queries),
        count(q.matched_before),
        count(q.matched_after),
        count(q.matches_before),
        count(q.matches_after),
        count(q.max_after),
        q.hhi_before,
        q.hhi_after,
        q.effective_queries_after
    );
    h.push_str("<div class=\"panel\"><h3>Pairs per query (after)</h3>");
    h.push_str(&columns(
        &bucket_bars(&q.pairs_per_query, count_f),
        |v| count(v as u64),
        520.0,
    ));
    for (title, list) in [("Top queries", &q.top), ("Bottom queries", &q.bottom)] {
        let _ = write!(
            h,
            "</div><div class=\"panel\"><h3>{title}</h3><table><tr><th>query</th>\
             <th class=\"n\">before</th><th class=\"n\">after</th></tr>"
        );
        for e in list {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&e.query),
                count(e.before),
                count(e.after)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</div></div>");
}

fn samples(h: &mut String, thumbs: &[Thumbnail]) {
    let _ = write!(
        h,
        "<h2>Samples</h2><p class=\"note\">{} random samples (seeded).</p><div class=\"thumbs\">",
        thumbs.len()
    );
    for t in thumbs {
        let _ = write!(
            h,
            "<figure><img alt=\"sample {}\" src=\"data:image/jpeg;base64,{}\">\
             <figcaption><b>{}</b> {}</figcaption></figure>",
            esc(&t.sample.key),
            base64(&t.jpeg),
            esc(&t.sample.key),
            esc(&t.sample.caption)
        );
    }
    h.push_str("</div>");
}

fn bounds(h: &mut String, s: &Stats) {
    let b = &s.error_bounds;
    let _ = write!(
        h,
        "<h2>How exact are these figures?</h2><div class=\"panel note\"><ul>\
         <li>Exact: {}.</li>\
         <li>Distinct counts (URLs, images): HyperLogLog with 4,096 registers, relative standard \
         error {:.2}% (three times that covers 99.7% of cases).</li>\
         <li>Percentiles (p50/p90/p99): DDSketch, within {:.0}% relative error.</li>\
         <li>Top lists (errors, domains, words, languages, formats): {}. Each table shows the \
         maximum overestimate next to the count.</li></ul></div>",
        esc(&b.exact),
        b.hyperloglog_relative_standard_error * 100.0,
        b.quantile_relative_error * 100.0,
        esc(&b.top_k)
    );
}

fn dist_panel(h: &mut String, title: &str, d: &Distribution, label: fn(f64) -> String) {
    let _ = write!(h, "<div class=\"panel\"><h3>{}</h3>", esc(title));
    if d.count == 0 {
        h.push_str("<p class=\"note\">no values</p></div>");
        return;
    }
    let q = |v: Option<f64>| v.map_or("-".to_owned(), label);
    let _ = write!(
        h,
        "<p class=\"note\">n = {}, min {}, p50 {}, p90 {}, p99 {}, max {}, mean {}</p>",
        count(d.count),
        q(d.min),
        q(d.p50),
        q(d.p90),
        q(d.p99),
        q(d.max),
        q(d.mean)
    );
    h.push_str(&columns(
        &bucket_bars(&d.histogram, label),
        |v| count(v as u64),
        520.0,
    ));
    h.push_str("</div>");
}

/// Bars of a histogram from its first non-empty bucket (log2 histograms start at 0).
fn bucket_bars(buckets: &[Bucket], label: fn(f64) -> String) -> Vec<(String, f64)> {
    buckets
        .iter()
        .skip_while(|b| b.count == 0)
        .map(|b| {
            let name = match b.hi {
                Some(_) => label(b.lo),
                None => format!("≥{}", label(b.lo)),
            };
            (name, b.count as f64)
        })
        .collect()
}

fn ranked_table(h: &mut String, items: &[Ranked], what: &str) {
    if items.is_empty() {
        h.push_str("<p class=\"note\">none</p>");
        return;
    }
    let _ = write!(
        h,
        "<table><tr><th>{what}</th><th class=\"n\">count</th><th class=\"n\">± over</th></tr>"
    );
    for r in items {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&r.value),
            count(r.count),
            count(r.max_overestimate)
        );
    }
    h.push_str("</table>");
}

fn pairs(items: &[Ranked]) -> Vec<(String, f64)> {
    items
        .iter()
        .map(|r| (r.value.clone(), r.count as f64))
        .collect()
}

/// Horizontal bars: one row per item, label left, value right.
fn hbars(items: &[(String, f64)], value: impl Fn(f64) -> String) -> String {
    if items.is_empty() {
        return "<p class=\"note\">none</p>".into();
    }
    let (w, row, label_w) = (520.0, 18.0, 190.0);
    let max = items.iter().map(|i| i.1).fold(0.0, f64::max).max(1e-9);
    let height = row * items.len() as f64 + 4.0;
    let mut s = format!(
        "<svg viewBox=\"0 0 {w} {height}\" width=\"100%\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    for (i, (name, v)) in items.iter().enumerate() {
        let y = i as f64 * row + 2.0;
        let bw = (w - label_w - 70.0) * v / max;
        let short: String = name.chars().take(32).collect();
        let _ = write!(
            s,
            "<text x=\"{x}\" y=\"{ty}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{label_w}\" y=\"{y}\" width=\"{bw:.1}\" height=\"{bh}\" fill=\"#4c78a8\"/>\
             <text x=\"{vx:.1}\" y=\"{ty}\">{}</text>",
            esc(&short),
            esc(&value(*v)),
            x = label_w - 6.0,
            ty = y + 12.0,
            bh = row - 4.0,
            vx = label_w + bw + 4.0,
        );
    }
    s.push_str("</svg>");
    s
}

/// Vertical bars with a handful of x labels, for histograms and time series; `w` is the
/// drawing's width in SVG units (text keeps its size when the panel is as wide).
fn columns(bars: &[(String, f64)], value: impl Fn(f64) -> String, w: f64) -> String {
    if bars.is_empty() {
        return "<p class=\"note\">no values</p>".into();
    }
    let (h, pad_l, pad_b) = (170.0, 50.0, 22.0);
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9);
    let bw = (w - pad_l) / bars.len() as f64;
    let plot_h = h - pad_b - 8.0;
    let mut s = format!(
        "<svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">\
         <line x1=\"{pad_l}\" y1=\"{base}\" x2=\"{w}\" y2=\"{base}\" stroke=\"#999\"/>\
         <text x=\"{lx}\" y=\"14\" text-anchor=\"end\">{}</text>",
        esc(&value(max)),
        base = 8.0 + plot_h,
        lx = pad_l - 4.0
    );
    let every = bars.len().div_ceil(8).max(1);
    for (i, (name, v)) in bars.iter().enumerate() {
        let bh = plot_h * v / max;
        let x = pad_l + i as f64 * bw;
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#4c78a8\">\
             <title>{}: {}</title></rect>",
            8.0 + plot_h - bh,
            (bw - 1.0).max(0.5),
            esc(name),
            esc(&value(*v))
        );
        if i % every == 0 {
            let _ = write!(
                s,
                "<text x=\"{x:.1}\" y=\"{}\">{}</text>",
                h - 6.0,
                esc(name)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648), for inline `data:` images.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A count with thousands shortened: 1234 → 1.2k.
pub fn count(n: u64) -> String {
    count_f(n as f64)
}

fn count_f(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A byte size in binary units.
pub fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A rate as a percentage.
pub fn pct(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn escaping_and_units() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(pct(0.5), "50.0%");
    }
}
