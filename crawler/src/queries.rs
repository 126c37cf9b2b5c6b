//! Builds a query list for `wit curate` from text the user has, with MetaCLIP's recipe, since
//! CLIP's own 500,000 queries were never published: words seen at least `min_count` times,
//! bigrams (also seen `min_count` times) whose pointwise mutual information is at least
//! `min_pmi`, and titles (e.g. Wikipedia article titles) as given.
//!
//! PMI here is the ratio `p(ab) / (p(a) p(b)) = count(ab) · N / (count(a) · count(b))` — the scale
//! on which MetaCLIP's threshold of 30 is meaningful. Text is streamed line by line (bigrams do
//! not cross lines); bigram counts are pruned of singletons whenever the table outgrows a fixed
//! size, so memory stays bounded on corpora of any length.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::curate::normalize;

/// Bigram table size that triggers pruning of bigrams seen once.
const MAX_BIGRAMS: usize = 20_000_000;

/// Settings of a query-list build.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildConfig {
    /// Plain-text corpus files (`.gz` allowed), one sentence or paragraph per line ideally.
    pub text: Vec<PathBuf>,
    /// Titles file: one title per line, all kept.
    pub titles: Option<PathBuf>,
    /// Minimum count of a word (and of a bigram).
    pub min_count: u64,
    /// Minimum PMI ratio of a bigram.
    pub min_pmi: f64,
}

/// What a build found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildSummary {
    /// Tokens read.
    pub tokens: u64,
    /// Unigram queries.
    pub unigrams: u64,
    /// Bigram queries.
    pub bigrams: u64,
    /// Title queries (not already present).
    pub titles: u64,
    /// Total distinct queries written.
    pub queries: u64,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct QueriesError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> QueriesError + '_ {
    move |source| QueriesError {
        path: path.to_path_buf(),
        source,
    }
}

fn open_text(path: &Path) -> Result<Box<dyn BufRead>, QueriesError> {
    let file = File::open(path).map_err(io_err(path))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, reader)))
}

/// Word and bigram counts over interned word ids.
#[derive(Default)]
struct Counts {
    ids: HashMap<String, u32>,
    words: Vec<String>,
    unigram: Vec<u64>,
    bigram: HashMap<(u32, u32), u64>,
    tokens: u64,
}

impl Counts {
    fn id(&mut self, word: &str) -> u32 {
        if let Some(&id) = self.ids.get(word) {
            return id;
        }
        let id = self.words.len() as u32;
        self.ids.insert(word.to_string(), id);
        self.words.push(word.to_string());
        self.unigram.push(0);
        id
    }

    fn add_line(&mut self, line: &str) {
        let lower = line.to_lowercase();
        let mut prev: Option<u32> = None;
        for word in lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let id = self.id(word);
            self.unigram[id as usize] += 1;
            self.tokens += 1;
            if let Some(p) = prev {
                *self.bigram.entry((p, id)).or_default() += 1;
            }
            prev = Some(id);
        }
        if self.bigram.len() > MAX_BIGRAMS {
            self.bigram.retain(|_, c| *c > 1);
        }
    }
}

/// Builds the query set (sorted, distinct) and a summary.
pub fn build(cfg: &BuildConfig) -> Result<(Vec<String>, BuildSummary), QueriesError> {
    let mut counts = Counts::default();
    for path in &cfg.text {
        for line in open_text(path)?.lines() {
            counts.add_line(&line.map_err(io_err(path))?);
        }
    }
    let mut summary = BuildSummary {
        tokens: counts.tokens,
        ..BuildSummary::default()
    };
    let mut queries = BTreeSet::new();
    for (word, &c) in counts.words.iter().zip(&counts.unigram) {
        if c >= cfg.min_count {
            queries.insert(word.clone());
            summary.unigrams += 1;
        }
    }
    let n = counts.tokens as f64;
    for (&(a, b), &c) in &counts.bigram {
        if c < cfg.min_count {
            continue;
        }
        let (ca, cb) = (
            counts.unigram[a as usize] as f64,
            counts.unigram[b as usize] as f64,
        );
        if c as f64 * n / (ca * cb) >= cfg.min_pmi {
            let bigram = format!("{} {}", counts.words[a as usize], counts.words[b as usize]);
            queries.insert(bigram);
            summary.bigrams += 1;
        }
    }
    if let Some(path) = &cfg.titles {
        for line in open_text(path)?.lines() {
            let title = normalize(&line.map_err(io_err(path))?);
            if !title.is_empty() && queries.insert(title) {
                summary.titles += 1;
            }
        }
    }
    summary.queries = queries.len() as u64;
    Ok((queries.into_iter().collect(), summary))
}

/// Writes one query per line.
pub fn write_queries(path: &Path, queries: &[String]) -> Result<(), QueriesError> {
    let file = File::create(path).map_err(io_err(path))?;
    let mut w = std::io::BufWriter::new(file);
    for q in queries {
        writeln!(w, "{q}").map_err(io_err(path))?;
    }
    w.flush().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequent_words_high_pmi_bigrams_and_titles_become_queries() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for i in 0..50 {
            // "sea lion" always together; "the" and "a" frequent everywhere.
            text.push_str(&format!("The sea lion swims near a rock number{i}\n"));
            text.push_str(&format!("A dog and the cat play with item{i}\n"));
        }
        for _ in 0..200 {
            text.push_str("the dog and a cat play in garden\n");
        }
        let corpus = dir.path().join("corpus.txt.gz");
        let mut enc = flate2::write::GzEncoder::new(
            File::create(&corpus).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
        let titles = dir.path().join("titles.txt");
        std::fs::write(&titles, "Eiffel Tower\n\nsea lion\n").unwrap();
        let cfg = BuildConfig {
            text: vec![corpus],
            titles: Some(titles),
            min_count: 10,
            min_pmi: 30.0,
        };
        let (queries, summary) = build(&cfg).unwrap();
        assert!(queries.contains(&"sea".to_string()) && queries.contains(&"the".to_string()));
        assert!(
            !queries.iter().any(|q| q.starts_with("number")),
            "rare words are left out"
        );
        // N = 2400 tokens: PMI(sea lion) = 50 · 2400 / (50 · 50) = 48; PMI(the sea) = 8.
        assert_eq!(summary.tokens, 2400);
        assert!(queries.contains(&"sea lion".to_string()), "{queries:?}");
        assert!(
            !queries.contains(&"the sea".to_string()),
            "low-PMI bigram with a common word"
        );
        assert!(queries.contains(&"eiffel tower".to_string()));
        assert_eq!(summary.titles, 1, "sea lion was already a bigram");
        let out = dir.path().join("q.txt");
        write_queries(&out, &queries).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().lines().count(),
            queries.len()
        );
    }
}
