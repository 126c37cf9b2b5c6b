//! The sample order of one rank's epoch, computed from (seed, epoch, rank, world size) and the
//! per-shard sample counts alone. Because the order never depends on bytes, thread timing or
//! decode results, it can be replayed symbolically: a resumed loader fast-forwards the order
//! without reading shards, then fetches only the samples still sitting in the shuffle buffer.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Stream tags so the shard order, resampling and crops draw from independent generators.
pub(crate) const TAG_SHARDS: u64 = 1;
const TAG_RESAMPLE: u64 = 2;
const TAG_BUFFER: u64 = 3;
/// Tag for the per-sample augmentation generator (used by the decode workers).
pub(crate) const TAG_CROP: u64 = 4;
/// Tag for the per-sample choice of hard-negative captions.
pub(crate) const TAG_NEGATIVES: u64 = 5;

/// SplitMix64 over the parts: a stable, well-mixed seed for each (seed, epoch, rank, ...) tuple.
pub(crate) fn mix(parts: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        h ^= p;
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

/// A ChaCha generator for one purpose, keyed by `parts`.
pub(crate) fn rng_for(parts: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(parts))
}

/// Which sample of which shard: `segment` counts the shards this rank has opened in this epoch,
/// so the same shard read twice (wrap-around, resampling) is two distinct segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SampleRef {
    pub segment: u64,
    pub shard: usize,
    pub idx: u64,
}

/// The ordering parameters shared by every rank.
#[derive(Debug, Clone)]
pub(crate) struct OrderParams {
    pub seed: u64,
    pub epoch: u64,
    pub rank: usize,
    pub world_size: usize,
    pub shuffle_shards: bool,
    pub resample: bool,
    pub buffer_size: usize,
    pub buffer_initial: usize,
}

/// The endless sequence of sample references of one rank: its share of the shards in
/// stride `world_size` over an endless sequence of per-cycle shard permutations (so a rank that
/// runs out of its own shards wraps into others' instead of stopping early), or shards drawn
/// with replacement in resampling mode.
pub(crate) struct RefStream {
    params: OrderParams,
    counts: std::sync::Arc<Vec<u64>>,
    perm: Vec<usize>,
    perm_cycle: Option<u64>,
    resample_rng: ChaCha8Rng,
    next_segment: u64,
    current: Option<(u64, usize, u64)>,
    idx: u64,
    boundary_sent: bool,
}

impl RefStream {
    pub fn new(params: OrderParams, counts: std::sync::Arc<Vec<u64>>) -> Self {
        let resample_rng = rng_for(&[params.seed, params.epoch, params.rank as u64, TAG_RESAMPLE]);
        RefStream {
            params,
            counts,
            perm: Vec::new(),
            perm_cycle: None,
            resample_rng,
            next_segment: 0,
            current: None,
            idx: 0,
            boundary_sent: false,
        }
    }

    /// The next reference; never ends (the caller bounds the epoch). Returns `None` once, where
    /// this rank's own shards end and wrap-around padding begins, so the shuffle buffer can
    /// drain first: a rank emits all its own samples before any padding.
    pub fn next_ref(&mut self) -> Option<SampleRef> {
        loop {
            if let Some((segment, shard, count)) = self.current {
                if self.idx < count {
                    self.idx += 1;
                    return Some(SampleRef {
                        segment,
                        shard,
                        idx: self.idx - 1,
                    });
                }
            }
            if !self.boundary_sent && !self.params.resample && self.is_padding(self.next_segment) {
                self.boundary_sent = true;
                return None;
            }
            let segment = self.next_segment;
            self.next_segment += 1;
            let shard = self.shard_of_segment(segment);
            self.current = Some((segment, shard, self.counts[shard]));
            self.idx = 0;
        }
    }

    fn is_padding(&self, segment: u64) -> bool {
        let global = self.params.rank as u64 + segment * self.params.world_size as u64;
        global >= self.counts.len() as u64
    }

    fn shard_of_segment(&mut self, segment: u64) -> usize {
        let n = self.counts.len() as u64;
        if self.params.resample {
            return self.resample_rng.random_range(0..n) as usize;
        }
        let global = self.params.rank as u64 + segment * self.params.world_size as u64;
        let cycle = global / n;
        if self.perm_cycle != Some(cycle) {
            self.perm = self.cycle_permutation(cycle);
            self.perm_cycle = Some(cycle);
        }
        self.perm[(global % n) as usize]
    }

    /// Cycle 0 is the epoch's shard order shared by all ranks; later cycles (wrap-around padding)
    /// reshuffle, or rotate when shuffling is off, so every shard stays reachable.
    fn cycle_permutation(&self, cycle: u64) -> Vec<usize> {
        let n = self.counts.len();
        let mut perm: Vec<usize> = (0..n).collect();
        if self.params.shuffle_shards {
            let mut rng = rng_for(&[self.params.seed, self.params.epoch, cycle, TAG_SHARDS]);
            perm.shuffle(&mut rng);
        } else {
            perm.rotate_left((cycle % n as u64) as usize);
        }
        perm
    }
}

/// webdataset's sample shuffle buffer (`shuffle(bufsize, initial)`): grows by one extra sample
/// per step until full, starts emitting once `initial` samples are in, emits a uniformly random
/// element by swap-remove.
pub(crate) struct Shuffler<T> {
    buf: Vec<T>,
    size: usize,
    initial: usize,
    rng: ChaCha8Rng,
    draining: bool,
}

impl<T> Shuffler<T> {
    pub fn new(params: &OrderParams) -> Self {
        let size = params.buffer_size;
        Shuffler {
            buf: Vec::with_capacity(size.min(1 << 16)),
            size,
            initial: params.buffer_initial.clamp(1, size.max(1)),
            rng: rng_for(&[params.seed, params.epoch, params.rank as u64, TAG_BUFFER]),
            draining: false,
        }
    }

    /// The next element, pulling from `pull` as webdataset's generator would. A `None` from
    /// `pull` marks the end of a run: the buffer drains completely before pulling resumes.
    pub fn next(&mut self, mut pull: impl FnMut() -> Option<T>) -> T {
        if self.size <= 1 {
            return loop {
                if let Some(x) = pull() {
                    break x;
                }
            };
        }
        loop {
            if !self.draining {
                self.pull_into_buffer(&mut pull);
            }
            if !self.draining && self.buf.len() < self.size {
                self.pull_into_buffer(&mut pull);
            }
            if self.draining && self.buf.is_empty() {
                self.draining = false;
                continue;
            }
            if self.draining || self.buf.len() >= self.initial {
                let k = self.rng.random_range(0..self.buf.len());
                return self.buf.swap_remove(k);
            }
        }
    }

    fn pull_into_buffer(&mut self, pull: &mut impl FnMut() -> Option<T>) {
        match pull() {
            Some(x) => self.buf.push(x),
            None => self.draining = true,
        }
    }

    /// The buffered elements, for fetching their bytes after a symbolic fast-forward.
    pub fn buffered_mut(&mut self) -> &mut [T] {
        &mut self.buf
    }
}
