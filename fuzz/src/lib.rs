//! Fuzz targets: for every parser and decoder that reads what the web or a shard hands us, a
//! generator of structured hostile inputs and the properties every input must keep — no panic,
//! output bounded by the input (no amplification), damage confined to the item that holds it.
//!
//! The generators are structure-aware (proptest strategies that build HTML trees, WARC framings,
//! tar archives, images with lying headers...), so a short run already reaches deep paths that
//! random bytes never would. `wit-fuzz` (src/main.rs) runs a campaign against the clock; the
//! crate's tests run every target briefly and replay `regressions.txt` in CI.

mod html;
mod image;
mod input;
mod robots;
mod tar;
mod warc;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One fuzz target: a name and a function that runs one round of cases with a runner.
pub struct Target {
    pub name: &'static str,
    check: fn(&mut TestRunner) -> Result<(), String>,
}

/// Every target, in the order campaigns run them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "html",
        check: html::check,
    },
    Target {
        name: "warc",
        check: warc::check,
    },
    Target {
        name: "input",
        check: input::check,
    },
    Target {
        name: "parquet-input",
        check: input::check_parquet,
    },
    Target {
        name: "robots",
        check: robots::check,
    },
    Target {
        name: "image",
        check: image::check,
    },
    Target {
        name: "tar",
        check: tar::check,
    },
];

/// Looks a target up by name.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// What one round of a target did.
#[derive(Debug)]
pub struct Round {
    pub cases: u32,
    /// The slowest single case of the round, in milliseconds.
    pub slowest_ms: u64,
}

impl Target {
    /// Runs `cases` generated inputs from `seed` (the same seed always generates the same
    /// inputs, which is how a failure is replayed). On failure, returns proptest's shrunk input.
    pub fn round(&self, seed: u64, cases: u32) -> Result<Round, String> {
        let config = Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 512,
            ..Config::default()
        };
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..8 + self.name.len().min(24)]
            .copy_from_slice(&self.name.as_bytes()[..self.name.len().min(24)]);
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
        let mut runner = TestRunner::new_with_rng(config, rng);
        SLOWEST_NS.store(0, Ordering::Relaxed);
        (self.check)(&mut runner)?;
        Ok(Round {
            cases,
            slowest_ms: SLOWEST_NS.load(Ordering::Relaxed) / 1_000_000,
        })
    }
}

static SLOWEST_NS: AtomicU64 = AtomicU64::new(0);

/// Runs `test` on inputs from `strategy`, recording the slowest case and turning proptest's
/// failure (panics included) into a message with the minimal input.
fn run<S>(
    runner: &mut TestRunner,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> Result<(), String>
where
    S: Strategy,
    S::Value: Debug,
{
    let timed = |value: S::Value| {
        let started = Instant::now();
        let result = test(value);
        let ns = started.elapsed().as_nanos() as u64;
        SLOWEST_NS.fetch_max(ns, Ordering::Relaxed);
        result
    };
    runner.run(&strategy, timed).map_err(|e| match e {
        TestError::Fail(why, value) => {
            let mut shown = format!("{value:?}");
            if shown.len() > 4000 {
                shown.truncate(shown.floor_char_boundary(4000));
                shown.push('…');
            }
            format!("{why}\nminimal input: {shown}")
        }
        TestError::Abort(why) => format!("aborted: {why}"),
    })
}

/// Strings as pages and lists carry them: short printable ones, any Unicode, and long runs
/// (the amplification cases: one long value repeated into many outputs).
fn text() -> impl Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        4 => "[ -~]{0,24}",
        2 => ".{0,12}",
        1 => (any::<char>(), 1_000usize..200_000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target holds on a short run (CI's slice of the campaign).
    #[test]
    fn every_target_holds_on_a_short_run() {
        for t in TARGETS {
            if let Err(e) = t.round(0, 24) {
                panic!("fuzz target {} failed on seed 0:\n{e}", t.name);
            }
        }
    }

    /// Every failure a campaign found stays fixed: `regressions.txt` lists `target seed cases`.
    #[test]
    fn regressions_stay_fixed() {
        let list = include_str!("../regressions.txt");
        for line in list
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(seed), Some(cases)) = (parts.next(), parts.next(), parts.next())
            else {
                panic!("regressions.txt: `{line}` is not `target seed cases`");
            };
            let t = target(name).unwrap_or_else(|| panic!("regressions.txt: no target {name}"));
            let (seed, cases) = (seed.parse().unwrap(), cases.parse().unwrap());
            if let Err(e) = t.round(seed, cases) {
                panic!("regression {line} is back:\n{e}");
            }
        }
    }

    /// The properties can fail: a target whose check panics is reported, not passed.
    #[test]
    fn a_panicking_check_is_reported() {
        let t = Target {
            name: "self-test",
            check: |runner| {
                run(runner, text(), |s| {
                    assert!(s.len() < 10, "long");
                    Ok(())
                })
            },
        };
        assert!(t.round(0, 64).is_err());
    }
}
