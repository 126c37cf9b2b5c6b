//! The report's sample grid: a few dozen (image, caption) pairs chosen at random with a seed,
//! read from a few tars only, turned into small inline JPEG thumbnails.

use super::schema::SampleRef;
use super::shard_base;
use anyhow::Context;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use wit_shards::reader::{Sample, ShardReader};

/// Samples taken from each tar read (more when there are few shards), so a grid of 36 reads
/// about 9 tars.
const PER_SHARD: usize = 4;
/// Longest side of a thumbnail, pixels.
const THUMB_SIDE: u32 = 160;

/// One grid entry.
pub struct Thumbnail {
    /// Which sample.
    pub sample: SampleRef,
    /// A JPEG of at most 160 px on its longest side.
    pub jpeg: Vec<u8>,
}

/// Picks up to `n` samples: shards in a seeded random order, [`PER_SHARD`] (or n/shards) per shard by
/// reservoir sampling over its tar. Undecodable images are skipped (the grid shows data, `--deep`
/// counts the broken ones).
pub fn grid(stats_files: &[PathBuf], n: usize, seed: u64) -> anyhow::Result<Vec<Thumbnail>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<&PathBuf> = stats_files.iter().collect();
    order.shuffle(&mut rng);
    let per_shard = PER_SHARD.max(n.div_ceil(stats_files.len().max(1)));
    let mut out = Vec::new();
    for stats in order {
        if out.len() >= n {
            break;
        }
        let mut tar = shard_base(stats).into_os_string();
        tar.push(".tar");
        let tar = PathBuf::from(tar);
        if !tar.is_file() {
            continue;
        }
        let want = per_shard.min(n - out.len());
        for s in reservoir(&tar, want, &mut rng)? {
            if let Some(t) = thumbnail(&s) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// Uniformly chooses `k` samples with an image from a tar, in one streaming pass; samples the
/// reader skipped over their budget are not candidates.
fn reservoir(tar: &PathBuf, k: usize, rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<Sample>> {
    let file = File::open(tar).with_context(|| format!("opening {}", tar.display()))?;
    let mut kept: Vec<Sample> = Vec::with_capacity(k);
    let mut seen = 0u64;
    for sample in ShardReader::new(BufReader::new(file)) {
        let sample = match sample {
            Err(e) if e.is_sample_only() => continue,
            other => other.with_context(|| format!("reading {}", tar.display()))?,
        };
        if sample.image().is_none() {
            continue;
        }
        seen += 1;
        if kept.len() < k {
            kept.push(sample);
        } else {
            let j = rng.random_range(0..seen);
            if (j as usize) < k {
                kept[j as usize] = sample;
            }
        }
    }
    kept.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(kept)
}

fn thumbnail(s: &Sample) -> Option<Thumbnail> {
    let (_, bytes) = s.image()?;
    let img = image::load_from_memory(bytes).ok()?;
    let small = img.thumbnail(THUMB_SIDE, THUMB_SIDE).to_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
        .encode_image(&small)
        .ok()?;
    Some(Thumbnail {
        sample: SampleRef {
            key: s.key.clone(),
            caption: s.caption().unwrap_or_default().to_owned(),
        },
        jpeg,
    })
}
