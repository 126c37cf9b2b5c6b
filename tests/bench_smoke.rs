//! The benchmark harness runs end to end on a tiny input: `bash bench/run.sh --quick` with the
//! test build of `wit` must install the peers (img2dataset, webdataset, selectolax), run every
//! comparison against them over 127.0.0.1 and write a results table whose every row is present
//! and whose every number parses (the trainer row runs wit only: PyTorch is for full runs). Timings
//! themselves are never asserted.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest the smoke run may take before it counts as hung (normally well under 3 minutes).
const HUNG_AFTER: Duration = Duration::from_secs(900);

/// The rows each section of the table must have: (heading prefix, row label prefix, tools).
const EXPECTED: [(&str, &str, &[&str]); 6] = [
    ("## Download", "synthetic", &["img2dataset", "wit"]),
    ("## Download", "photos", &["img2dataset", "wit"]),
    (
        "## Loader",
        "wit shards (synthetic)",
        &["webdataset+PIL", "wit"],
    ),
    (
        "## Loader",
        "img2dataset shards (synthetic)",
        &["webdataset+PIL", "wit"],
    ),
    (
        "## Loader",
        "img2dataset shards (photos)",
        &["webdataset+PIL", "wit"],
    ),
    ("## HTML", "test web", &["selectolax", "wit"]),
];

/// The table rows (cells trimmed) under the section whose heading starts with `heading`.
fn section_rows(md: &str, heading: &str) -> Vec<Vec<String>> {
    let Some(start) = md.find(heading) else {
        panic!("the results have no section {heading:?}:\n{md}");
    };
    let section = &md[start..];
    let end = section[2..].find("\n## ").map_or(section.len(), |e| e + 2);
    section[..end]
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .skip(1)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// Parses a numeric cell (`12.5`, `**2.85×**`), panicking with the row when it is not a finite
/// number.
fn number(cell: &str, row: &[String]) -> f64 {
    let v: f64 = cell
        .trim_matches(|c: char| c == '*' || c == '×')
        .parse()
        .unwrap_or_else(|_| panic!("cell {cell:?} is not a number in row {row:?}"));
    assert!(v.is_finite(), "cell {cell:?} is not finite in row {row:?}");
    v
}

/// Checks one row: every cell after the label columns is a finite number (or `a/b`), and the
/// ratio sits on the wit row only.
fn check_row(row: &[String], label_cols: usize, ratio_col: usize) {
    let tool = row[label_cols - 1].as_str();
    for (i, cell) in row.iter().enumerate().skip(label_cols) {
        if i == ratio_col {
            continue;
        }
        match cell.split_once('/') {
            Some((ok, total)) => {
                let (ok, total) = (number(ok, row), number(total, row));
                assert!(
                    ok == total && total > 0.0,
                    "every URL on the static server must download: {row:?}"
                );
            }
            None => {
                number(cell, row);
            }
        }
    }
    let ratio = &row[ratio_col];
    if tool == "wit" {
        assert!(number(ratio, row) > 0.0, "the ratio is positive: {row:?}");
    } else {
        assert!(ratio.is_empty(), "only wit rows carry the ratio: {row:?}");
    }
}

fn run_quick_bench(repo: &Path) -> String {
    let started = Instant::now();
    let mut child = Command::new("bash")
        .args(["bench/run.sh", "--quick"])
        .current_dir(repo)
        .env("WIT_BIN", common::wit_bin())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs bench/run.sh");
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let read = |s: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut s) = s {
                let _ = s.read_to_string(&mut text);
            }
            text
        })
    };
    let (out, err) = (
        read(out.map(|s| Box::new(s) as _)),
        read(err.map(|s| Box::new(s) as _)),
    );
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait on bench/run.sh") {
            break status;
        }
        if started.elapsed() > HUNG_AFTER {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench/run.sh --quick ran past {HUNG_AFTER:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (out, err) = (out.join().expect("stdout"), err.join().expect("stderr"));
    assert!(
        status.success(),
        "bench/run.sh --quick failed ({status}). It needs PyPI reachable to create \
         bench/.work/venv with img2dataset, webdataset and selectolax (pip install); delete \
         bench/.work/venv to retry a broken install.\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

#[test]
fn quick_bench_writes_a_complete_table() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let results = repo.join("bench/.work/RESULTS.quick.md");
    // An earlier results file: its table must be replaced, its hand-written history kept.
    let history = format!(
        "## How the ratio moved\n\nwritten by hand before run {}\n",
        std::process::id()
    );
    std::fs::create_dir_all(results.parent().unwrap()).unwrap();
    std::fs::write(&results, format!("| stale table |\n\n{history}")).unwrap();
    let out = run_quick_bench(repo);
    let md = std::fs::read_to_string(&results)
        .unwrap_or_else(|e| panic!("no {} ({e}) after the run:\n{out}", results.display()));
    assert!(md.starts_with("# wit benchmark results"), "{md}");
    assert!(!md.contains("stale table"), "{md}");
    assert!(
        md.ends_with(&history),
        "the history section was not kept:\n{md}"
    );
    for (heading, label, tools) in EXPECTED {
        let rows = section_rows(&md, heading);
        for tool in tools {
            let row = rows
                .iter()
                .find(|r| r[0].starts_with(label) && r.iter().any(|c| c == tool))
                .unwrap_or_else(|| panic!("no row {label:?} / {tool:?} under {heading}:\n{md}"));
            let (label_cols, ratio_col) = match heading {
                "## Download" => (3, 9),
                "## Loader" => (2, 5),
                _ => (2, 6),
            };
            assert_eq!(
                row.len(),
                ratio_col + 1,
                "row {row:?} has the wrong number of cells"
            );
            check_row(row, label_cols, ratio_col);
        }
    }
    let train = section_rows(&md, "## Trainer");
    let wit = train
        .iter()
        .find(|r| r.get(2).map(String::as_str) == Some("wit"))
        .unwrap_or_else(|| panic!("no wit row under ## Trainer:\n{md}"));
    assert_eq!(wit.len(), 7, "row {wit:?} has the wrong number of cells");
    for cell in &wit[3..6] {
        assert!(number(cell, wit) > 0.0, "trainer row {wit:?}");
    }
    assert!(
        wit[6].contains("not run") || number(&wit[6], wit) > 0.0,
        "the quick run has no PyTorch; the cell says so or holds the ratio: {wit:?}"
    );
}
