//! Turning sample references into sample bytes: a sequential cursor over the current shard, the
//! producer's ordered stream (refs → shuffle buffer → bytes), the counting pass for shards
//! without an index, and a caption-only reader for tokenizer training.

use crate::order::{OrderParams, RefStream, SampleRef, Shuffler};
use crate::source::{ShardEntry, ShardSource};
use crate::stats::{Counters, SkipReason, Stage};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use wit_shards::{Sample, ShardError, ShardReader};

type SampleIter = Box<dyn Iterator<Item = Result<Sample, ShardError>> + Send>;

/// A sample's bytes, or why there are none.
pub(crate) type Fetched = Result<Sample, SkipReason>;

fn open_samples(source: &dyn ShardSource, url: &str) -> Result<SampleIter, SkipReason> {
    match source.open(url) {
        Ok(r) => Ok(Box::new(ShardReader::new(r))),
        Err(e) => {
            tracing::warn!(url, error = %e, "skipping unreadable shard");
            Err(SkipReason::ShardError)
        }
    }
}

/// Reads one segment sequentially; asking for an earlier sample reopens the shard.
pub(crate) struct Cursor {
    source: Arc<dyn ShardSource>,
    urls: Arc<Vec<String>>,
    segment: Option<u64>,
    next_idx: u64,
    reader: Result<SampleIter, SkipReason>,
}

impl Cursor {
    pub fn new(source: Arc<dyn ShardSource>, urls: Arc<Vec<String>>) -> Self {
        Cursor {
            source,
            urls,
            segment: None,
            next_idx: 0,
            reader: Err(SkipReason::Missing),
        }
    }

    pub fn fetch(&mut self, r: SampleRef) -> Fetched {
        if self.segment != Some(r.segment) || r.idx < self.next_idx {
            self.segment = Some(r.segment);
            self.next_idx = 0;
            self.reader = open_samples(self.source.as_ref(), &self.urls[r.shard]);
        }
        while self.next_idx < r.idx {
            let _ = self.read_next(r.shard);
        }
        self.read_next(r.shard)
    }

    fn read_next(&mut self, shard: usize) -> Fetched {
        self.next_idx += 1;
        let it = self.reader.as_mut().map_err(|e| *e)?;
        match it.next() {
            Some(Ok(sample)) => Ok(sample),
            Some(Err(e)) if e.is_sample_only() => {
                tracing::warn!(url = %self.urls[shard], error = %e, "skipping one sample");
                Err(SkipReason::ShardError)
            }
            Some(Err(e)) => {
                tracing::warn!(url = %self.urls[shard], error = %e, "corrupt shard; skipping its remaining samples");
                self.reader = Err(SkipReason::ShardError);
                Err(SkipReason::ShardError)
            }
            None => {
                self.reader = Err(SkipReason::Missing);
                Err(SkipReason::Missing)
            }
        }
    }
}

/// A reference plus its bytes once fetched: `None` while only simulated, or when the sample is
/// too large to hold in the buffer (its bytes are read again when it leaves).
pub(crate) struct Slot {
    pub r: SampleRef,
    pub data: Option<Fetched>,
}

/// Bytes of member data a sample holds.
fn sample_bytes(sample: &Sample) -> u64 {
    sample.members.iter().map(|(_, b)| b.len() as u64).sum()
}

/// `fetched`, unless it is a sample over `slot_bytes`, which the buffer does not hold.
fn held(fetched: Fetched, slot_bytes: u64) -> Option<Fetched> {
    match &fetched {
        Ok(sample) if sample_bytes(sample) > slot_bytes => None,
        _ => Some(fetched),
    }
}

/// The producer's view of one rank's epoch: refs through the shuffle buffer, bytes fetched as
/// refs enter the buffer, so buffered memory is the only memory.
///
/// The buffer holds at most `buffer_bytes` of sample data: each of its `buffer_size` slots holds
/// a sample of at most `buffer_bytes / buffer_size` bytes; a larger sample keeps only its
/// reference there and is read again (a second sequential pass over its shard up to it) when
/// it leaves. The order never depends on sizes, so batches are the same whatever the budget;
/// only reading repeats, for samples far above the average.
pub(crate) struct OrderStream {
    refs: RefStream,
    shuffler: Shuffler<Slot>,
    cursor: Cursor,
    /// Reads again the samples too large to hold in the buffer.
    refetch: Cursor,
    slot_bytes: u64,
    counters: Arc<Counters>,
    remaining: Option<u64>,
}

impl OrderStream {
    /// `single_pass_total`: stop after this many refs (evaluation); otherwise endless.
    /// `buffer_bytes`: the shuffle buffer's budget of sample data.
    pub fn new(
        params: OrderParams,
        counts: Arc<Vec<u64>>,
        source: Arc<dyn ShardSource>,
        urls: Arc<Vec<String>>,
        counters: Arc<Counters>,
        single_pass_total: Option<u64>,
        buffer_bytes: u64,
    ) -> Self {
        let slot_bytes = match params.buffer_size {
            0 | 1 => u64::MAX,
            n => buffer_bytes / n as u64,
        };
        OrderStream {
            shuffler: Shuffler::new(&params),
            refs: RefStream::new(params, counts),
            cursor: Cursor::new(source.clone(), urls.clone()),
            refetch: Cursor::new(source, urls),
            slot_bytes,
            counters,
            remaining: single_pass_total,
        }
    }

    /// Fast-forwards `n` samples without reading any bytes, then fetches the bytes of whatever
    /// the shuffle buffer holds: the exact state an uninterrupted run would have reached.
    pub fn skip(&mut self, n: u64) {
        let refs = &mut self.refs;
        for _ in 0..n {
            self.shuffler
                .next(|| refs.next_ref().map(|r| Slot { r, data: None }));
        }
        if let Some(rem) = &mut self.remaining {
            *rem = rem.saturating_sub(n);
        }
        self.fetch_buffered();
    }

    fn fetch_buffered(&mut self) {
        let mut by_segment: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let slots = self.shuffler.buffered_mut();
        for (i, slot) in slots.iter().enumerate() {
            if slot.data.is_none() {
                by_segment.entry(slot.r.segment).or_default().push(i);
            }
        }
        for (_, mut idxs) in by_segment {
            idxs.sort_by_key(|&i| slots[i].r.idx);
            let mut cursor = Cursor::new(self.cursor.source.clone(), self.cursor.urls.clone());
            for i in idxs {
                let r = slots[i].r;
                let fetched = self.counters.time(Stage::Read, || cursor.fetch(r));
                slots[i].data = held(fetched, self.slot_bytes);
            }
        }
    }

    /// The next sample in epoch order, or `None` at the end of a single pass.
    pub fn next_sample(&mut self) -> Option<(SampleRef, Fetched)> {
        if let Some(rem) = &mut self.remaining {
            if *rem == 0 {
                return None;
            }
            *rem -= 1;
        }
        let (refs, cursor, counters) = (&mut self.refs, &mut self.cursor, &self.counters);
        let slot_bytes = self.slot_bytes;
        let slot = self.shuffler.next(|| {
            let r = refs.next_ref()?;
            let fetched = counters.time(Stage::Read, || cursor.fetch(r));
            Some(Slot {
                r,
                data: held(fetched, slot_bytes),
            })
        });
        let data = match slot.data {
            Some(data) => data,
            None => {
                let refetch = &mut self.refetch;
                self.counters.time(Stage::Read, || refetch.fetch(slot.r))
            }
        };
        Some((slot.r, data))
    }
}

/// Fills in `nsamples` for shards the index did not describe, by reading them once (no image
/// decoding), `threads` shards at a time. A corrupt shard counts the samples before the damage;
/// a sample the reader skipped over its budget still counts, so sample numbering stays that of
/// the tar. A panicking counter is an error, not a shard silently counted empty.
pub(crate) fn count_samples(
    entries: &[ShardEntry],
    source: &dyn ShardSource,
    threads: usize,
) -> Result<Vec<u64>, String> {
    let next = AtomicUsize::new(0);
    let mut counts = vec![0u64; entries.len()];
    let results: Vec<Vec<(usize, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(e) = entries.get(i) else { break };
                        let n = e.nsamples.unwrap_or_else(|| count_one(source, &e.url));
                        out.push((i, n));
                    }
                    out
                })
            })
            .collect();
        let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        joined
            .into_iter()
            .map(|j| j.map_err(|_| "counting samples: a counting thread panicked".to_string()))
            .collect::<Result<_, _>>()
    })?;
    for (i, n) in results.into_iter().flatten() {
        counts[i] = n;
    }
    Ok(counts)
}

fn count_one(source: &dyn ShardSource, url: &str) -> u64 {
    match open_samples(source, url) {
        Ok(it) => it
            .take_while(|item| {
                item.as_ref()
                    .map_or_else(ShardError::is_sample_only, |_| true)
            })
            .count() as u64,
        Err(_) => 0,
    }
}

/// Every caption of the shards in order, for training a tokenizer; unreadable shards and
/// samples without a caption are skipped (logged), never fatal.
pub fn read_captions(
    entries: Vec<ShardEntry>,
    source: Arc<dyn ShardSource>,
) -> impl Iterator<Item = String> + Send {
    entries.into_iter().flat_map(move |e| {
        open_samples(source.as_ref(), &e.url)
            .into_iter()
            .flatten()
            .take_while(|item| {
                item.as_ref()
                    .map_or_else(ShardError::is_sample_only, |_| true)
            })
            .filter_map(|item| item.ok()?.caption().map(str::to_string))
    })
}
