//! Shard reading (`wit_shards::ShardReader`): tars of samples with many members, odd names, long
//! names, then damaged (flipped header bytes, a cut tail, garbage size fields).

use crate::run;
use proptest::prelude::*;
use wit_shards::ShardReader;

#[derive(Debug, Clone)]
struct Member {
    name: String,
    size: usize,
}

fn member() -> impl Strategy<Value = Member> {
    let name = prop_oneof![
        4 => ("[0-9]{1,9}", proptest::sample::select(&["jpg", "txt", "json", "png", "cls", "a.b"][..]))
            .prop_map(|(k, e)| format!("{k}.{e}")),
        1 => "[./a-z0-9]{1,40}",
        1 => (1usize..300).prop_map(|n| format!("{}.jpg", "k".repeat(n))),
    ];
    (name, 0usize..2048).prop_map(|(name, size)| Member { name, size })
}

fn archive(members: &[Member]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for m in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(m.size as u64);
        header.set_mode(0o644);
        header.set_cksum();
        let body = vec![b'x'; m.size];
        // Names tar refuses (absolute, `..`) are skipped: the reader still sees the rest.
        let _ = builder.append_data(&mut header, &m.name, &body[..]);
    }
    builder.into_inner().unwrap()
}

/// Reading never panics, yields no more samples than members, and never holds more member bytes
/// than the archive has.
pub(crate) fn check(runner: &mut proptest::test_runner::TestRunner) -> Result<(), String> {
    let members = prop_oneof![
        4 => proptest::collection::vec(member(), 0..40),
        1 => (1usize..20_000).prop_map(|n| (0..n).map(|i| Member { name: format!("000000001.m{i}"), size: 0 }).collect()),
    ];
    let flips = proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4);
    let cut = proptest::option::weighted(0.2, any::<prop::sample::Index>());
    run(runner, (members, flips, cut), |(members, flips, cut)| {
        let mut bytes = archive(&members);
        for (at, b) in flips {
            let i = at.index(bytes.len().max(1));
            if let Some(byte) = bytes.get_mut(i) {
                *byte ^= b;
            }
        }
        if let Some(at) = cut {
            let len = bytes.len().max(1);
            bytes.truncate(at.index(len));
        }
        let mut samples = 0usize;
        let mut held = 0usize;
        for sample in ShardReader::new(&bytes[..]) {
            let Ok(sample) = sample else { break };
            samples += 1;
            held += sample.members.iter().map(|(_, b)| b.len()).sum::<usize>();
        }
        prop_assert!(
            samples <= members.len().max(1),
            "{samples} samples from {} members",
            members.len()
        );
        prop_assert!(
            held <= bytes.len(),
            "{held} member bytes from a {}-byte tar",
            bytes.len()
        );
        Ok(())
    })
}
