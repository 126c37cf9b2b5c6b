//! Truncated, corrupt and unreadable tar streams end in a clean `ShardError` that says where:
//! never a panic, never an endless loop, never a silently short shard.

use crate::common::*;
use std::io::Read;
use wit_shards::*;

/// Collects at most `limit` items so a looping reader fails the test instead of hanging it.
fn collect(bytes: &[u8], limit: usize) -> Vec<Result<Sample, ShardError>> {
    let items: Vec<_> = ShardReader::new(bytes).take(limit).collect();
    assert!(items.len() < limit, "reader did not terminate");
    items
}

fn shard_bytes(n: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    write_shard(dir.path(), 0, &records(n));
    std::fs::read(dir.path().join("00000.tar")).unwrap()
}

#[test]
fn every_truncation_is_an_error_after_a_correct_prefix() {
    let tar = shard_bytes(12);
    let full: Vec<Sample> = collect(&tar, 1000)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(full.len() >= 5);
    let cuts = (0..tar.len() - 512)
        .step_by(97)
        .chain((0..tar.len() - 512).step_by(512));
    for cut in cuts {
        let items = collect(&tar[..cut], 1000);
        let (last, prefix) = items
            .split_last()
            .expect("a truncated tar yields at least an error");
        match last {
            Err(ShardError::Truncated { offset, .. }) => {
                assert!(*offset <= cut as u64, "cut {cut}: offset {offset}")
            }
            other => panic!("cut at {cut}: expected a truncation error, got {other:?}"),
        }
        for (got, want) in prefix.iter().zip(&full) {
            assert_eq!(
                got.as_ref().unwrap(),
                want,
                "cut at {cut}: samples before the cut are intact"
            );
        }
        assert!(
            prefix.len() < full.len(),
            "cut at {cut}: the last sample must not be reported complete"
        );
    }
    // Cutting inside the second end-of-archive block is harmless, like for tar(1).
    let items = collect(&tar[..tar.len() - 100], 1000);
    assert_eq!(items.len(), full.len(), "{:?}", items.last());
}

#[test]
fn garbage_is_a_corruption_error_at_byte_zero() {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in [1usize, 100, 511, 512, 513, 4096, 70_000] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let items = collect(&bytes, 10);
        assert_eq!(items.len(), 1, "stops after the first error");
        let err = items.into_iter().next().unwrap().unwrap_err();
        if len < 512 {
            assert!(
                matches!(err, ShardError::Truncated { offset, .. } if offset == len as u64),
                "{err}"
            );
        } else {
            assert!(
                matches!(err, ShardError::Corrupt { offset: 0, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("byte 0"), "{err}");
        }
    }
}

#[test]
fn a_damaged_header_is_reported_at_its_offset() {
    let mut tar = shard_bytes(3);
    let first_size = usize::from_str_radix(
        std::str::from_utf8(&tar[124..135])
            .unwrap()
            .trim_matches(char::from(0)),
        8,
    )
    .unwrap();
    let second = 512 + first_size.div_ceil(512) * 512;
    tar[second + 3] ^= 0x55;
    let items = collect(&tar, 10);
    let err = items.last().unwrap().as_ref().unwrap_err();
    match err {
        ShardError::Corrupt { offset, reason, .. } => {
            assert_eq!(*offset, second as u64);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(
        err.to_string().contains("regenerate"),
        "message says what to do: {err}"
    );
}

fn header(name: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h.as_bytes().to_vec()
}

#[test]
fn an_absurd_member_size_is_refused_without_allocating_it() {
    let mut tar = header("big.bin", 1 << 40);
    tar.extend_from_slice(&[7u8; 2048]);
    let items = collect(&tar, 10);
    let err = items[0].as_ref().unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
}

#[test]
fn duplicate_extensions_in_one_sample_are_an_error() {
    let mut tar = Vec::new();
    for name in ["k.txt", "k.TXT"] {
        tar.extend(header(name, 1));
        tar.extend_from_slice(&[b'x'; 512]);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let items = collect(&tar, 10);
    let err = items[0].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("duplicate extension") && err.contains("byte 1024"),
        "{err}"
    );
}

/// A source that fails like a dropped connection after `ok` bytes.
struct Flaky<'a> {
    data: &'a [u8],
    ok: usize,
}

impl Read for Flaky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ok == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset",
            ));
        }
        let n = buf.len().min(self.ok).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn read_errors_carry_the_offset() {
    let tar = shard_bytes(3);
    let items: Vec<_> = ShardReader::new(Flaky {
        data: &tar,
        ok: 1500,
    })
    .take(10)
    .collect();
    match items.last().unwrap() {
        Err(ShardError::Read { offset, .. }) => assert_eq!(*offset, 1500),
        other => panic!("expected a read error, got {other:?}"),
    }
}
