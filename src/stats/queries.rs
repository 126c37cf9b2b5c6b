//! Query balance of a curated folder, from the per-query count table `wit curate` writes
//! (`_query_counts.parquet`, or `query_counts.parquet`: a string column `query` and integer columns `before` and `after`,
//! also accepted as `count_before`/`count_after`). Streamed: memory holds only the running sums
//! and the few top and bottom queries.

use super::columns;
use super::schema::Bucket;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use wit_shards::sketch::{Buckets, Histogram};

/// The file names looked for in the stats folder (`wit curate` writes the first).
pub const TABLE_NAMES: [&str; 2] = ["_query_counts.parquet", "query_counts.parquet"];

/// How many top and bottom queries are listed.
const LISTED: usize = 10;

/// How evenly the kept pairs spread over the queries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct QueryBalance {
    /// The table read.
    pub source: String,
    /// Queries in the table.
    pub queries: u64,
    /// Queries with at least one match before balancing.
    pub matched_before: u64,
    /// Queries keeping at least one pair after balancing.
    pub matched_after: u64,
    /// Σ matches before balancing (a pair matching two queries counts twice).
    pub matches_before: u64,
    /// Σ matches after balancing.
    pub matches_after: u64,
    /// Largest per-query count after balancing (should sit near the threshold T).
    pub max_after: u64,
    /// Herfindahl index of the per-query counts after balancing: Σ share². 1/queries when
    /// perfectly even, 1 when one query holds everything.
    pub hhi_after: f64,
    /// Same before balancing.
    pub hhi_before: f64,
    /// 1 / hhi_after: the number of equally sized queries with the same concentration.
    pub effective_queries_after: f64,
    /// Distribution of pairs per query after balancing (log2 buckets, queries with ≥ 1 pair).
    pub pairs_per_query: Vec<Bucket>,
    /// The queries with the most pairs after balancing.
    pub top: Vec<QueryCount>,
    /// The matched queries with the fewest pairs after balancing.
    pub bottom: Vec<QueryCount>,
}

/// One query's counts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QueryCount {
    /// The query text.
    pub query: String,
    /// Matches before balancing.
    pub before: u64,
    /// Pairs kept after balancing.
    pub after: u64,
}

/// Finds the query count table in `dir`, if `wit curate` wrote one there.
pub fn find_table(dir: &Path) -> Option<PathBuf> {
    TABLE_NAMES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The table named by `--queries`: the file itself, or the one in a `wit curate` output folder.
pub fn locate(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    anyhow::ensure!(
        path.is_dir(),
        "--queries {}: no such file or folder; pass the `wit curate` output folder or its _query_counts.parquet",
        path.display()
    );
    find_table(path).ok_or_else(|| {
        anyhow::anyhow!(
            "--queries {}: the folder has no {}; pass the `wit curate` output folder",
            path.display(),
            TABLE_NAMES.join(" or ")
        )
    })
}

/// Reads the table and computes the balance figures.
pub fn balance(path: &Path) -> anyhow::Result<QueryBalance> {
    let mut acc = Accumulator::default();
    for batch in columns::batches(path)? {
        let batch = batch?;
        let query = columns::strings(&batch, "query")
            .ok_or_else(|| anyhow::anyhow!("{} has no string column `query`", path.display()))?;
        let before = columns::ints_any(&batch, &["before", "count_before"]);
        let after = columns::ints_any(&batch, &["after", "count_after"])
            .ok_or_else(|| anyhow::anyhow!("{} has no integer column `after`", path.display()))?;
        for (i, q) in query.into_iter().enumerate() {
            let after = after[i].unwrap_or(0).max(0) as u64;
            let before = before
                .as_ref()
                .and_then(|b| b[i])
                .unwrap_or(after as i64)
                .max(0) as u64;
            acc.add(QueryCount {
                query: q.unwrap_or_default(),
                before,
                after,
            });
        }
    }
    Ok(acc.finish(path.display().to_string()))
}

#[derive(Default)]
struct Accumulator {
    b: QueryBalance,
    sq_before: f64,
    sq_after: f64,
    hist: Option<Histogram>,
}

impl Accumulator {
    fn add(&mut self, q: QueryCount) {
        let b = &mut self.b;
        b.queries += 1;
        b.matched_before += u64::from(q.before > 0);
        b.matched_after += u64::from(q.after > 0);
        b.matches_before += q.before;
        b.matches_after += q.after;
        b.max_after = b.max_after.max(q.after);
        self.sq_before += (q.before as f64).powi(2);
        self.sq_after += (q.after as f64).powi(2);
        if q.after > 0 {
            self.hist
                .get_or_insert_with(|| Histogram::new(Buckets::Log2))
                .add(q.after as f64);
        }
        if q.before > 0 {
            keep_extreme(&mut b.bottom, q.clone(), |x, y| {
                (x.after, &x.query) < (y.after, &y.query)
            });
        }
        keep_extreme(&mut b.top, q, |x, y| {
            (x.after, &y.query) > (y.after, &x.query)
        });
    }

    fn finish(mut self, source: String) -> QueryBalance {
        let hhi = |sq: f64, total: u64| {
            if total > 0 {
                sq / (total as f64).powi(2)
            } else {
                0.0
            }
        };
        self.b.source = source;
        self.b.hhi_before = hhi(self.sq_before, self.b.matches_before);
        self.b.hhi_after = hhi(self.sq_after, self.b.matches_after);
        self.b.effective_queries_after = if self.b.hhi_after > 0.0 {
            1.0 / self.b.hhi_after
        } else {
            0.0
        };
        if let Some(h) = self.hist {
            self.b.pairs_per_query = super::schema::buckets(&h);
        }
        self.b
    }
}

/// Keeps the `LISTED` entries that rank first under `better`, ordered best first.
fn keep_extreme(
    list: &mut Vec<QueryCount>,
    q: QueryCount,
    better: impl Fn(&QueryCount, &QueryCount) -> bool,
) {
    let pos = list
        .iter()
        .position(|x| better(&q, x))
        .unwrap_or(list.len());
    if pos < LISTED {
        list.insert(pos, q);
        list.truncate(LISTED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_figures_are_exact() {
        let mut acc = Accumulator::default();
        for i in 0..100u64 {
            acc.add(QueryCount {
                query: format!("q{i:03}"),
                before: i * 10,
                after: i.min(20),
            });
        }
        let b = acc.finish("t".into());
        assert_eq!(b.queries, 100);
        assert_eq!(b.matched_before, 99);
        assert_eq!(b.matched_after, 99);
        assert_eq!(b.max_after, 20);
        assert_eq!(b.top.len(), LISTED);
        assert_eq!(b.top[0].after, 20);
        assert_eq!(b.top[0].query, "q020");
        assert_eq!(b.bottom[0].query, "q001");
        let total: u64 = (0..100u64).map(|i| i.min(20)).sum();
        let sq: f64 = (0..100u64).map(|i| (i.min(20) as f64).powi(2)).sum();
        assert!((b.hhi_after - sq / (total as f64).powi(2)).abs() < 1e-12);
        let in_hist: u64 = b.pairs_per_query.iter().map(|x| x.count).sum();
        assert_eq!(in_hist, 99);
    }
}
