//! Hard negatives (NegCLIP): captions listed in each sample's `.json` member arrive as extra
//! token rows, at most `per_sample` per sample, drawn deterministically; bad or missing lists
//! leave the sample a plain pair.

use crate::common;
use crate::common::{caption, config, jpeg, write_tar};
use std::collections::HashSet;
use wit_loader::{HardNegatives, Loader};

/// The hard-negative captions sample `i` lists, and the `.json` member that lists them: a JSON
/// array, a string holding one (as `--save-additional-columns` stores parquet text), nothing, or
/// a malformed value.
fn listed(i: u64) -> (Vec<String>, String) {
    let three: Vec<String> = (1..=3).map(|k| caption(i + 100 * k)).collect();
    match i % 4 {
        0 => (
            three.clone(),
            serde_json::json!({ "neg": three }).to_string(),
        ),
        1 => {
            let one = vec![caption(i + 100)];
            let text = serde_json::to_string(&one).unwrap();
            (one, serde_json::json!({ "neg": text }).to_string())
        }
        2 => (Vec::new(), serde_json::json!({ "other": 1 }).to_string()),
        _ => (Vec::new(), serde_json::json!({ "neg": 42 }).to_string()),
    }
}

fn shard(dir: &std::path::Path) -> Vec<String> {
    let samples: Vec<_> = (0..16u64)
        .map(|i| {
            (
                format!("{i:09}"),
                vec![
                    ("jpg", jpeg(40, 40, i as u32)),
                    ("txt", caption(i).into_bytes()),
                    ("json", listed(i).1.into_bytes()),
                ],
            )
        })
        .collect();
    let path = dir.join("00000.tar");
    write_tar(&path, &samples);
    vec![path.to_string_lossy().into_owned()]
}

/// The negative token rows of the epoch's one batch, with the batch's keys.
fn negatives_of_one_batch(shards: Vec<String>, per_sample: usize) -> (Vec<String>, Vec<Vec<u32>>) {
    let mut cfg = config(shards, 16);
    cfg.hard_negatives = Some(HardNegatives {
        field: "neg".into(),
        per_sample,
    });
    let mut loader = Loader::new(cfg).unwrap();
    let b = loader.next_batch().unwrap().unwrap();
    let rows = b
        .negatives
        .map_or(Vec::new(), |t| t.to_vec2::<u32>().unwrap());
    (b.keys, rows)
}

#[test]
fn listed_captions_become_token_rows_in_sample_order() {
    let dir = tempfile::tempdir().unwrap();
    let shards = shard(dir.path());
    let tok = common::tokenizer();
    let (keys, rows) = negatives_of_one_batch(shards.clone(), 2);
    let mut next = rows.iter();
    for key in &keys {
        let i: u64 = key.parse().unwrap();
        let allowed: Vec<Vec<u32>> = listed(i).0.iter().map(|c| tok.encode(c).unwrap()).collect();
        let mut mine = HashSet::new();
        for _ in 0..allowed.len().min(2) {
            let row = next.next().expect("a negative row for this sample");
            assert!(
                allowed.contains(row),
                "sample {i}: row is not one of its negatives"
            );
            assert!(
                mine.insert(row.clone()),
                "sample {i}: the same negative twice"
            );
        }
    }
    assert!(
        next.next().is_none(),
        "more negative rows than samples listed"
    );
    assert_eq!(
        rows.len(),
        4 * 2 + 4,
        "two from each list of three, one from each list of one"
    );
    let again = negatives_of_one_batch(shards, 2);
    assert_eq!(
        (keys, rows),
        again,
        "the draw depends only on seed and position"
    );
}

#[test]
fn without_the_option_batches_carry_no_negatives() {
    let dir = tempfile::tempdir().unwrap();
    let mut loader = Loader::new(config(shard(dir.path()), 16)).unwrap();
    assert!(loader.next_batch().unwrap().unwrap().negatives.is_none());
}
