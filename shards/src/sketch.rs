//! Fixed-size, mergeable sketches: the building blocks of [`crate::summary::Summary`].
//!
//! Every sketch here has a size bounded independently of how many values it saw, merges exactly
//! (merging two sketches gives what one sketch over both inputs would give, up to the stated
//! error), and serialises compactly to JSON. That is what lets `wit stats` summarise 400M rows by
//! folding per-shard `_stats.json` files one at a time.
//!
//! Error bounds (stated in the report too):
//! - [`Histogram`]: exact counts per bucket.
//! - [`QuantileSketch`]: DDSketch; every quantile is within 1% relative error of a true sample value
//!   at that rank ([`QuantileSketch::RELATIVE_ERROR`]).
//! - [`HyperLogLog`]: p = 12 (4,096 registers); relative standard error 1.04/√4096 ≈ 1.6%.
//! - [`TopK`]: Space-Saving; each reported count overestimates the true count by at most its `err`,
//!   and `err` ≤ N/k (N = total observations, k = capacity); an unlisted item occurs at most
//!   [`TopK::floor`] times.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, HashMap};

/// How a [`Histogram`] maps values to buckets; part of the serialised form so a reader can label
/// buckets without knowing which field it is.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scale", rename_all = "snake_case")]
pub enum Buckets {
    /// Bucket 0 holds values below 1; bucket i ≥ 1 holds [2^(i-1), 2^i). For sizes spanning orders
    /// of magnitude (bytes, pixels).
    Log2,
    /// `n` buckets of `width` starting at `lo` (values below `lo` go to the first), plus a last
    /// bucket for everything ≥ `lo + n·width`. For bounded quantities (aspect ratio, caption length).
    Linear {
        /// Lower edge of the first bucket.
        lo: f64,
        /// Width of each bucket.
        width: f64,
        /// Number of regular buckets (the overflow bucket comes after them).
        n: u32,
    },
}

impl Buckets {
    /// The bucket a value falls in.
    pub fn index(&self, v: f64) -> usize {
        match *self {
            Buckets::Log2 => {
                if v < 1.0 {
                    0
                } else {
                    (v.log2().floor() as usize + 1).min(64)
                }
            }
            Buckets::Linear { lo, width, n } => {
                let i = ((v - lo) / width).floor();
                if i.is_nan() || i < 0.0 {
                    0
                } else {
                    (i as usize).min(n as usize)
                }
            }
        }
    }

    /// The half-open range `[lo, hi)` of bucket `i` (`hi` is infinite for the overflow bucket).
    pub fn range(&self, i: usize) -> (f64, f64) {
        match *self {
            Buckets::Log2 if i == 0 => (0.0, 1.0),
            Buckets::Log2 => (2f64.powi(i as i32 - 1), 2f64.powi(i as i32)),
            Buckets::Linear { lo, width, n } if i >= n as usize => {
                (lo + n as f64 * width, f64::INFINITY)
            }
            Buckets::Linear { lo, width, .. } => {
                (lo + i as f64 * width, lo + (i + 1) as f64 * width)
            }
        }
    }
}

/// Exact counts per fixed bucket. Trailing empty buckets are not stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// The bucket layout.
    pub buckets: Buckets,
    /// Count per bucket, index as in [`Buckets::index`].
    pub counts: Vec<u64>,
}

impl Histogram {
    /// An empty histogram with this layout.
    pub fn new(buckets: Buckets) -> Histogram {
        Histogram {
            buckets,
            counts: Vec::new(),
        }
    }

    /// Counts one value.
    pub fn add(&mut self, v: f64) {
        let i = self.buckets.index(v);
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
    }

    /// Adds the other histogram's counts. Layouts must match (they are fixed per summary version);
    /// a mismatch is logged and the other side ignored rather than mixing incompatible buckets.
    pub fn merge(&mut self, other: &Histogram) {
        if self.buckets != other.buckets {
            tracing::warn!(
                "histogram layouts differ ({:?} vs {:?}); skipping merge",
                self.buckets,
                other.buckets
            );
            return;
        }
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Total count.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// DDSketch (Masserman et al., VLDB 2019): log-spaced buckets with γ = (1+α)/(1−α), α = 1%.
/// Quantiles have relative error ≤ α; the bucket count is bounded by the value range
/// (about 2,300 for values from 10⁻³ to 2⁴⁸), never by how many values were seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantileSketch {
    /// Values ≤ [`QuantileSketch::MIN_VALUE`] (zeros, negatives).
    pub zeros: u64,
    /// Bucket key → count; key k covers (γ^(k−1), γ^k].
    pub bins: BTreeMap<i32, u64>,
}

impl QuantileSketch {
    /// α: the relative error of every quantile.
    pub const RELATIVE_ERROR: f64 = 0.01;
    /// Smallest positive value tracked; smaller ones count as zero.
    pub const MIN_VALUE: f64 = 1e-3;

    fn gamma() -> f64 {
        (1.0 + Self::RELATIVE_ERROR) / (1.0 - Self::RELATIVE_ERROR)
    }

    /// Counts one value.
    pub fn add(&mut self, v: f64) {
        if v.is_nan() || v <= Self::MIN_VALUE {
            self.zeros += 1;
            return;
        }
        let key = (v.ln() / Self::gamma().ln()).ceil() as i32;
        *self.bins.entry(key).or_insert(0) += 1;
    }

    /// Adds the other sketch's counts (exact: same buckets).
    pub fn merge(&mut self, other: &QuantileSketch) {
        self.zeros += other.zeros;
        for (k, c) in &other.bins {
            *self.bins.entry(*k).or_insert(0) += c;
        }
    }

    /// Number of values seen.
    pub fn count(&self) -> u64 {
        self.zeros + self.bins.values().sum::<u64>()
    }

    /// The q-quantile (0 ≤ q ≤ 1), within 1% relative error; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (n - 1) as f64).floor() as u64;
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        let g = Self::gamma();
        for (k, c) in &self.bins {
            seen += c;
            if seen > rank {
                return Some(2.0 * g.powi(*k) / (g + 1.0));
            }
        }
        None
    }
}

/// HyperLogLog (Flajolet et al. 2007) with p = 12 over BLAKE3-derived 64-bit hashes: distinct
/// counts with ≈1.6% relative standard error in 4 KiB. Small cardinalities use linear counting
/// (the standard small-range correction); no large-range correction is needed with 64-bit hashes.
///
/// Serialised as one character per register (an empty sketch as `""`), so a shard's sketch is
/// a 4,096-character string.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HyperLogLog {
    /// Register values; empty means all zero (allocated on first insert).
    registers: Vec<u8>,
}

const HLL_P: u32 = 12;
const HLL_M: usize = 1 << HLL_P;
const HLL_ALPHABET: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";

impl HyperLogLog {
    /// 1.04/√m: the relative standard error of [`HyperLogLog::estimate`].
    pub const RELATIVE_STANDARD_ERROR: f64 = 1.04 / 64.0;

    /// Counts one item (any bytes: a URL, a hash).
    pub fn insert(&mut self, item: &[u8]) {
        let digest = blake3::hash(item);
        let h = u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));
        self.insert_hash(h);
    }

    fn insert_hash(&mut self, h: u64) {
        if self.registers.is_empty() {
            self.registers = vec![0; HLL_M];
        }
        let idx = (h >> (64 - HLL_P)) as usize;
        let rest = h << HLL_P;
        let rho = (rest.leading_zeros() + 1).min(64 - HLL_P + 1) as u8;
        if self.registers[idx] < rho {
            self.registers[idx] = rho;
        }
    }

    /// Register-wise maximum: the sketch of the union.
    pub fn merge(&mut self, other: &HyperLogLog) {
        if other.registers.is_empty() {
            return;
        }
        if self.registers.is_empty() {
            self.registers = other.registers.clone();
            return;
        }
        for (a, b) in self.registers.iter_mut().zip(&other.registers) {
            *a = (*a).max(*b);
        }
    }

    /// Estimated number of distinct items inserted.
    pub fn estimate(&self) -> f64 {
        if self.registers.is_empty() {
            return 0.0;
        }
        let m = HLL_M as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self.registers.iter().map(|&r| 2f64.powi(-(r as i32))).sum();
        let raw = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|&&r| r == 0).count();
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }
}

impl Serialize for HyperLogLog {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text: String = self
            .registers
            .iter()
            .map(|&r| HLL_ALPHABET[r as usize] as char)
            .collect();
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for HyperLogLog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(HyperLogLog::default());
        }
        if text.len() != HLL_M {
            return Err(D::Error::custom(format!(
                "HyperLogLog needs {HLL_M} registers, found {}",
                text.len()
            )));
        }
        let registers = text
            .bytes()
            .map(|b| HLL_ALPHABET.iter().position(|&a| a == b).map(|r| r as u8))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| D::Error::custom("HyperLogLog register outside its alphabet"))?;
        Ok(HyperLogLog { registers })
    }
}

/// A counter's (count, err) during a merge.
type Counter = (u64, u64);

/// One counter of a [`TopK`]: serialised as `[item, count, err]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopKEntry(pub String, pub u64, pub u64);

impl TopKEntry {
    /// The item.
    pub fn item(&self) -> &str {
        &self.0
    }
    /// Upper bound of its true count.
    pub fn count(&self) -> u64 {
        self.1
    }
    /// Maximum overestimate: the true count lies in `[count − err, count]`.
    pub fn err(&self) -> u64 {
        self.2
    }
}

/// Space-Saving (Metwally et al. 2005) with at most `k` counters: the heavy hitters of a stream.
/// Exact while fewer than `k` distinct items were seen. Merging follows the mergeable Space-Saving
/// rule (an item missing from a full side is charged that side's minimum), which keeps both
/// invariants: each true count lies in `[count − err, count]` with `err ≤ n/k`, and every unlisted
/// item occurs at most [`TopK::floor`] ≤ n/k times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    /// Capacity.
    pub k: usize,
    /// Total observations (N in the bounds).
    pub n: u64,
    /// Counters, largest first (ties by item, so the form is deterministic).
    pub items: Vec<TopKEntry>,
    #[serde(skip)]
    index: HashMap<String, usize>,
}

impl TopK {
    /// An empty sketch with `k` counters.
    pub fn new(k: usize) -> TopK {
        TopK {
            k: k.max(1),
            n: 0,
            items: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Counts one occurrence of `item`.
    pub fn add(&mut self, item: &str) {
        self.n += 1;
        if self.index.len() != self.items.len() {
            self.rebuild_index();
        }
        if let Some(&i) = self.index.get(item) {
            self.items[i].1 += 1;
            return;
        }
        if self.items.len() < self.k {
            self.index.insert(item.to_owned(), self.items.len());
            self.items.push(TopKEntry(item.to_owned(), 1, 0));
            return;
        }
        let (i, min) = self.min_counter();
        self.index.remove(&self.items[i].0);
        self.index.insert(item.to_owned(), i);
        self.items[i] = TopKEntry(item.to_owned(), min + 1, min);
    }

    fn min_counter(&self) -> (usize, u64) {
        self.items
            .iter()
            .enumerate()
            .map(|(i, e)| (i, e.1))
            .min_by_key(|&(_, c)| c)
            .unwrap_or((0, 0))
    }

    fn rebuild_index(&mut self) {
        self.index = self
            .items
            .iter()
            .enumerate()
            .map(|(i, e)| (e.0.clone(), i))
            .collect();
    }

    /// The most an item not in [`TopK::items`] can have occurred: the smallest counter once all
    /// `k` are in use, else 0 (nothing was ever evicted).
    pub fn floor(&self) -> u64 {
        if self.items.len() < self.k {
            0
        } else {
            self.items.iter().map(|e| e.1).min().unwrap_or(0)
        }
    }

    /// Folds another sketch in (see the type's doc for the bounds kept).
    pub fn merge(&mut self, other: &TopK) {
        let (floor_a, floor_b) = (self.floor(), other.floor());
        let mut merged: HashMap<&str, [Option<Counter>; 2]> = HashMap::new();
        for e in &self.items {
            merged.entry(&e.0).or_default()[0] = Some((e.1, e.2));
        }
        for e in &other.items {
            merged.entry(&e.0).or_default()[1] = Some((e.1, e.2));
        }
        let charge = |side: Option<Counter>, floor: u64| side.unwrap_or((floor, floor));
        let merged = merged.into_iter().map(|(item, [a, b])| {
            let ((ca, ea), (cb, eb)) = (charge(a, floor_a), charge(b, floor_b));
            (item, (ca + cb, ea + eb))
        });
        let mut items: Vec<TopKEntry> = merged
            .into_iter()
            .map(|(item, (c, err))| TopKEntry(item.to_owned(), c, err))
            .collect();
        sort_entries(&mut items);
        items.truncate(self.k);
        self.items = items;
        self.n += other.n;
        self.rebuild_index();
    }

    /// The counters, largest first.
    pub fn sorted(&self) -> Vec<TopKEntry> {
        let mut items = self.items.clone();
        sort_entries(&mut items);
        items
    }
}

fn sort_entries(items: &mut [TopKEntry]) {
    items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream (splitmix64) so tests need no extra crate.
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn log2_buckets_match_bit_length() {
        let b = Buckets::Log2;
        assert_eq!(b.index(0.0), 0);
        assert_eq!(b.index(1.0), 1);
        assert_eq!(b.index(255.0), 8);
        assert_eq!(b.index(256.0), 9);
        for v in [1u64, 2, 3, 1000, 65_535, 1 << 40] {
            assert_eq!(b.index(v as f64), 64 - v.leading_zeros() as usize, "{v}");
            let (lo, hi) = b.range(b.index(v as f64));
            assert!(lo <= v as f64 && (v as f64) < hi);
        }
    }

    #[test]
    fn linear_buckets_clamp_and_overflow() {
        let b = Buckets::Linear {
            lo: 0.0,
            width: 10.0,
            n: 5,
        };
        assert_eq!(b.index(-3.0), 0);
        assert_eq!(b.index(9.99), 0);
        assert_eq!(b.index(10.0), 1);
        assert_eq!(b.index(49.0), 4);
        assert_eq!(b.index(50.0), 5);
        assert_eq!(b.index(1e9), 5);
        assert_eq!(b.range(5), (50.0, f64::INFINITY));
    }

    #[test]
    fn histogram_merge_equals_single_pass() {
        let mut all = Histogram::new(Buckets::Log2);
        let mut a = Histogram::new(Buckets::Log2);
        let mut b = Histogram::new(Buckets::Log2);
        for v in 0..5000u32 {
            all.add(v as f64);
            if v % 3 == 0 { &mut a } else { &mut b }.add(v as f64);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(a.total(), 5000);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Histogram>(&json).unwrap(), a);
    }

    #[test]
    fn quantiles_within_relative_error() {
        let mut s = QuantileSketch::default();
        let mut exact: Vec<f64> = Vec::new();
        let mut st = 7;
        for _ in 0..20_000 {
            let v = 1.0 + (splitmix(&mut st) % 1_000_000) as f64 / 7.0;
            s.add(v);
            exact.push(v);
        }
        exact.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0] {
            let truth = exact[(q * (exact.len() - 1) as f64).floor() as usize];
            let est = s.quantile(q).unwrap();
            assert!(
                (est - truth).abs() <= QuantileSketch::RELATIVE_ERROR * truth + 1e-9,
                "q={q}: {est} vs {truth}"
            );
        }
        assert!(s.bins.len() < 1000, "bounded size: {}", s.bins.len());
    }

    #[test]
    fn quantile_merge_is_exact_and_zeros_count() {
        let mut a = QuantileSketch::default();
        let mut b = QuantileSketch::default();
        let mut all = QuantileSketch::default();
        for v in 0..1000 {
            let v = v as f64 / 10.0;
            all.add(v);
            if v < 50.0 { &mut a } else { &mut b }.add(v);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(a.zeros, 1);
        assert_eq!(a.quantile(0.0), Some(0.0));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<QuantileSketch>(&json).unwrap(), a);
        assert_eq!(QuantileSketch::default().quantile(0.5), None);
    }

    #[test]
    fn hll_estimates_within_four_standard_errors() {
        for n in [10usize, 1_000, 10_000, 200_000] {
            let mut h = HyperLogLog::default();
            for i in 0..n {
                h.insert(format!("https://example.com/img/{i}.jpg").as_bytes());
                h.insert(format!("https://example.com/img/{}.jpg", i / 2).as_bytes());
            }
            let est = h.estimate();
            let bound = 4.0 * HyperLogLog::RELATIVE_STANDARD_ERROR * n as f64 + 1.0;
            assert!((est - n as f64).abs() <= bound, "n={n}: estimate {est}");
        }
    }

    #[test]
    fn hll_merge_is_union_and_round_trips() {
        let mut a = HyperLogLog::default();
        let mut b = HyperLogLog::default();
        let mut all = HyperLogLog::default();
        for i in 0..30_000u32 {
            let item = i.to_le_bytes();
            all.insert(&item);
            if i < 20_000 { &mut a } else { &mut b }.insert(&item);
            if (10_000..20_000).contains(&i) {
                b.insert(&item);
            }
        }
        a.merge(&b);
        assert_eq!(a, all);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json.len(), HLL_M + 2);
        assert_eq!(serde_json::from_str::<HyperLogLog>(&json).unwrap(), a);
        assert_eq!(
            serde_json::to_string(&HyperLogLog::default()).unwrap(),
            "\"\""
        );
        assert_eq!(HyperLogLog::default().estimate(), 0.0);
        assert!(serde_json::from_str::<HyperLogLog>("\"abc\"").is_err());
    }

    /// A Zipf-like stream: item i appears about 100000/(i+1) times, interleaved.
    fn zipf_stream(seed: u64) -> Vec<String> {
        let mut items = Vec::new();
        for i in 0..2000usize {
            for _ in 0..(20_000 / (i + 1)).max(1) {
                items.push(format!("item{i}"));
            }
        }
        let mut st = seed;
        for i in (1..items.len()).rev() {
            items.swap(i, (splitmix(&mut st) % (i as u64 + 1)) as usize);
        }
        items
    }

    fn check_bounds(t: &TopK, stream: &[String]) {
        let mut truth: HashMap<&str, u64> = HashMap::new();
        for s in stream {
            *truth.entry(s).or_insert(0) += 1;
        }
        let bound = t.n / t.k as u64;
        for e in &t.items {
            let f = truth[e.item()];
            assert!(e.count() >= f && e.count() - e.err() <= f, "{e:?} true {f}");
            assert!(e.err() <= bound, "{e:?} err above n/k = {bound}");
        }
        for (item, f) in truth {
            if !t.items.iter().any(|e| e.item() == item) {
                assert!(
                    f <= t.floor() && t.floor() <= bound,
                    "{item} {f} {}",
                    t.floor()
                );
            }
        }
    }

    #[test]
    fn space_saving_bounds_hold_single_and_merged() {
        let stream = zipf_stream(1);
        let mut single = TopK::new(64);
        for s in &stream {
            single.add(s);
        }
        check_bounds(&single, &stream);
        assert_eq!(single.sorted()[0].item(), "item0");
        let mut merged = TopK::new(64);
        for chunk in stream.chunks(3001) {
            let mut part = TopK::new(64);
            for s in chunk {
                part.add(s);
            }
            let json = serde_json::to_string(&part).unwrap();
            merged.merge(&serde_json::from_str(&json).unwrap());
        }
        assert_eq!(merged.n, stream.len() as u64);
        check_bounds(&merged, &stream);
        let top: Vec<String> = merged.sorted()[..5].iter().map(|e| e.0.clone()).collect();
        assert_eq!(top, ["item0", "item1", "item2", "item3", "item4"]);
    }

    #[test]
    fn space_saving_is_exact_below_capacity() {
        let mut a = TopK::new(10);
        for s in ["x", "y", "x", "z"] {
            a.add(s);
        }
        let mut b = TopK::new(10);
        b.add("y");
        a.merge(&b);
        let got: Vec<(String, u64, u64)> =
            a.sorted().into_iter().map(|e| (e.0, e.1, e.2)).collect();
        assert_eq!(
            got,
            [("x".into(), 2, 0), ("y".into(), 2, 0), ("z".into(), 1, 0)]
        );
        assert_eq!(a.floor(), 0);
        a.add("w");
        assert_eq!(a.items.len(), 4);
    }
}
