//! Order guarantees: determinism (independent of thread count), exact resume from a saved
//! state, equal batch counts per rank with uneven shards, fixed epoch length, resampling,
//! single pass.

use crate::common::{config, make_shards};
use std::collections::HashSet;
use wit_loader::{Loader, LoaderConfig, LoaderState};

/// Keys, image values and token ids of one batch, comparable bit for bit.
#[derive(Debug, PartialEq)]
struct Seen {
    keys: Vec<String>,
    images: Vec<u32>,
    tokens: Vec<u32>,
}

fn seen(b: &wit_loader::Batch) -> Seen {
    let images = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    Seen {
        keys: b.keys.clone(),
        images: images.iter().map(|v| v.to_bits()).collect(),
        tokens: b.tokens.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
    }
}

/// The batches of the current epoch, until `None`.
fn epoch(loader: &mut Loader) -> Vec<Seen> {
    let mut out = Vec::new();
    while let Some(b) = loader.next_batch().unwrap() {
        assert_eq!(b.images.dims()[0], b.keys.len());
        out.push(seen(&b));
    }
    out
}

fn shards(dir: &std::path::Path) -> Vec<String> {
    make_shards(dir, &[7, 13, 4, 10])
}

#[test]
fn same_seed_same_batches_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let paths = shards(dir.path());
    let run = |threads: usize, seed: u64| {
        let mut cfg = config(paths.clone(), 4);
        cfg.threads = threads;
        cfg.seed = seed;
        let mut l = Loader::new(cfg).unwrap();
        assert_eq!(l.total_samples(), 34);
        assert_eq!(l.batches_per_epoch(), 8);
        let e0 = epoch(&mut l);
        let e1 = epoch(&mut l);
        assert_eq!(l.stats().skipped(), 0);
        (e0, e1)
    };
    let (a0, a1) = run(1, 7);
    let (b0, b1) = run(3, 7);
    assert_eq!(a0.len(), 8);
    assert_eq!(a0, b0, "thread count changed epoch 0");
    assert_eq!(a1, b1, "thread count changed epoch 1");
    let keys = |e: &[Seen]| e.iter().flat_map(|s| s.keys.clone()).collect::<Vec<_>>();
    assert_ne!(keys(&a0), keys(&a1), "epochs must reshuffle");
    let (c0, _) = run(2, 8);
    assert_ne!(keys(&a0), keys(&c0), "another seed must give another order");
    let distinct: HashSet<_> = keys(&a0).into_iter().collect();
    assert_eq!(distinct.len(), 32, "one epoch of 32 samples repeats none");
}

#[test]
fn resumed_loader_yields_exactly_the_remaining_batches() {
    let dir = tempfile::tempdir().unwrap();
    let paths = shards(dir.path());
    for resampled in [false, true] {
        let cfg = || {
            let mut c = config(paths.clone(), 3);
            if resampled {
                c.resample = true;
                c.epoch_samples = Some(20);
            }
            c
        };
        resumes_exactly(cfg);
    }
}

/// Resumes loaders of `cfg` from states saved at several points of two epochs and checks each
/// yields the batches an uninterrupted loader does.
fn resumes_exactly(cfg: impl Fn() -> LoaderConfig) {
    let mut full = Loader::new(cfg()).unwrap();
    let per_epoch = full.batches_per_epoch() as usize;
    let mut reference = epoch(&mut full);
    reference.extend(epoch(&mut full));
    for k in [0, 1, 4, per_epoch - 1, per_epoch, per_epoch + 2] {
        let mut first = Loader::new(cfg()).unwrap();
        let mut got = Vec::new();
        while got.len() < k {
            if let Some(b) = first.next_batch().unwrap() {
                got.push(seen(&b));
            }
        }
        let json = serde_json::to_string(&first.state()).unwrap();
        drop(first);
        let state: LoaderState = serde_json::from_str(&json).unwrap();
        let mut resumed = Loader::resume(cfg(), state).unwrap();
        while got.len() < reference.len() {
            if let Some(b) = resumed.next_batch().unwrap() {
                got.push(seen(&b));
            }
        }
        assert_eq!(got, reference, "resume after {k} batches diverged");
    }
}

#[test]
fn a_byte_budget_that_holds_no_sample_changes_no_batch_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let paths = shards(dir.path());
    let cfg = |budget: u64| {
        let mut c = config(paths.clone(), 3);
        c.shuffle_buffer = 8;
        c.shuffle_initial = 4;
        c.shuffle_buffer_bytes = budget;
        c
    };
    let mut held = Loader::new(cfg(wit_loader::SHUFFLE_BUFFER_BYTES)).unwrap();
    let mut reread = Loader::new(cfg(1)).unwrap();
    let (a, b) = (epoch(&mut held), epoch(&mut reread));
    assert!(!a.is_empty());
    assert_eq!(a, b, "samples read again give the same batches");
    assert_eq!(reread.stats().skipped(), 0);
    resumes_exactly(|| cfg(1));
}

#[test]
fn resume_refuses_a_state_from_another_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let paths = shards(dir.path());
    let mut l = Loader::new(config(paths.clone(), 3)).unwrap();
    l.next_batch().unwrap();
    let err = Loader::resume(config(paths.clone(), 4), l.state())
        .err()
        .expect("mismatch");
    assert!(err.to_string().contains("batch_size"), "{err}");
    // Resampling and a fixed epoch length change the order too.
    let mut resampled = config(paths.clone(), 3);
    resampled.resample = true;
    let err = Loader::resume(resampled, l.state())
        .err()
        .expect("mismatch");
    assert!(err.to_string().contains("resampling"), "{err}");
    let mut fixed = config(paths, 3);
    fixed.epoch_samples = Some(20);
    let err = Loader::resume(fixed, l.state()).err().expect("mismatch");
    assert!(err.to_string().contains("epoch length"), "{err}");
}

fn rank_counts(paths: &[String], world: usize, resample: bool) -> Vec<Vec<usize>> {
    (0..world)
        .map(|rank| {
            let mut cfg: LoaderConfig = config(paths.to_vec(), 2);
            cfg.rank = rank;
            cfg.world_size = world;
            cfg.resample = resample;
            let mut l = Loader::new(cfg).unwrap();
            (0..3).map(|_| epoch(&mut l).len()).collect()
        })
        .collect()
}

#[test]
fn every_rank_gets_the_same_number_of_batches_with_uneven_shards() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_shards(dir.path(), &[1, 9, 3, 17, 5]);
    for world in [2usize, 3] {
        let expected = 35 / world / 2;
        for resample in [false, true] {
            let counts = rank_counts(&paths, world, resample);
            for (rank, per_epoch) in counts.iter().enumerate() {
                assert_eq!(
                    per_epoch,
                    &vec![expected; 3],
                    "world {world} rank {rank} resample {resample}"
                );
            }
        }
    }
}

#[test]
fn ranks_read_different_shards_in_one_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_shards(dir.path(), &[6, 6, 6, 6]);
    let keys = |rank: usize| {
        let mut cfg = config(paths.clone(), 2);
        cfg.rank = rank;
        cfg.world_size = 2;
        let mut l = Loader::new(cfg).unwrap();
        epoch(&mut l)
            .into_iter()
            .flat_map(|s| s.keys)
            .collect::<HashSet<_>>()
    };
    let (a, b) = (keys(0), keys(1));
    assert_eq!(a.len(), 12);
    assert!(a.is_disjoint(&b), "equal shards: ranks must not overlap");
}

#[test]
fn fixed_epoch_length_and_resampling_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let paths = shards(dir.path());
    let run = || {
        let mut cfg = config(paths.clone(), 4);
        cfg.epoch_samples = Some(13);
        cfg.resample = true;
        let mut l = Loader::new(cfg).unwrap();
        assert_eq!(l.batches_per_epoch(), 3);
        (epoch(&mut l), epoch(&mut l))
    };
    let (a0, a1) = run();
    assert_eq!(a0.len(), 3);
    assert_eq!(a1.len(), 3);
    assert_eq!((a0, a1), run());
}

#[test]
fn single_pass_reads_every_sample_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let paths = shards(dir.path());
    let mut cfg = config(paths, 5);
    cfg.single_pass = true;
    let mut l = Loader::new(cfg).unwrap();
    assert_eq!(l.batches_per_epoch(), 7);
    let e = epoch(&mut l);
    let sizes: Vec<usize> = e.iter().map(|s| s.keys.len()).collect();
    assert_eq!(sizes, vec![5, 5, 5, 5, 5, 5, 4]);
    let keys: Vec<String> = e.into_iter().flat_map(|s| s.keys).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "shard order, sample order");
    assert_eq!(keys.len(), 34);
}
