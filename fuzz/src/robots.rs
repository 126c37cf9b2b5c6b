//! robots.txt and `X-Robots-Tag` (`wit_crawler::robots`): generated rule sets with wildcards,
//! `$` anchors, long patterns and stray lines, any status; header values in every shape.

use crate::run;
use proptest::prelude::*;
use url::Url;
use wit_crawler::robots::{x_robots_opt_out, RobotsRules};

fn rule() -> impl Strategy<Value = String> {
    let directive = proptest::sample::select(
        &[
            "User-agent",
            "Allow",
            "Disallow",
            "Crawl-delay",
            "Sitemap",
            "user-AGENT",
            "Nonsense",
        ][..],
    );
    let value = prop_oneof![
        4 => "[/*$a-z?=.%-]{0,20}",
        1 => (1usize..5_000).prop_map(|n| "/*a".repeat(n)),
        1 => ".{0,10}",
    ];
    (directive, value).prop_map(|(d, v)| format!("{d}: {v}"))
}

fn robots_txt() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(rule(), 0..60).prop_map(|r| r.join("\n").into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
    ]
}

/// Parsing any robots.txt at any status never panics, and matching any path terminates.
pub(crate) fn check(runner: &mut proptest::test_runner::TestRunner) -> Result<(), String> {
    let status = prop_oneof![Just(200u16), Just(404), Just(503), 100u16..600];
    let paths = proptest::collection::vec("/[a-z*$?=/.%]{0,30}", 1..8);
    let header = proptest::collection::vec(
        prop_oneof![
            "[a-z]{0,8}: ?[a-z-]{0,12}(, ?[a-z-]{0,12}(:[a-z0-9]{1,6})?){0,3}",
            ".{0,30}",
            Just("noai, max-image-preview:large".to_string()),
        ],
        0..4,
    );
    run(
        runner,
        (status, robots_txt(), paths, header),
        |(status, body, paths, header)| {
            let rules = RobotsRules::from_response(status, &body, "wit");
            for p in &paths {
                if let Ok(url) = Url::parse(&format!("http://127.0.0.1{p}")) {
                    let _ = rules.allowed(&url);
                }
            }
            let disallowed = vec!["noai".to_string(), "noimageai".to_string()];
            let verdict = x_robots_opt_out(header.iter().map(String::as_str), "wit", &disallowed);
            // A bare `noai` directive list applies to every user agent (Google's grammar).
            if header.iter().any(|h| h == "noai, max-image-preview:large") {
                prop_assert!(
                    verdict.is_some(),
                    "`noai, max-image-preview:large` not an opt-out"
                );
            }
            Ok(())
        },
    )
}
