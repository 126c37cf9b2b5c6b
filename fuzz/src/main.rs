//! `wit-fuzz [TARGET|all] [--seconds N] [--seed S] [--cases C]`: a fuzzing campaign against the
//! clock. Each round generates `C` inputs from seed `S + round`; a failure prints the shrunk
//! input and the line to add to `fuzz/regressions.txt`, and exits 1.

use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut which = "all".to_string();
    let (mut seconds, mut seed, mut cases) = (60u64, 0u64, 64u32);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&format!("{name} needs a number")))
        };
        match arg.as_str() {
            "--seconds" => seconds = value("--seconds"),
            "--seed" => seed = value("--seed"),
            "--cases" => cases = value("--cases") as u32,
            "-h" | "--help" => usage(""),
            name => which = name.to_string(),
        }
    }
    let targets: Vec<_> = if which == "all" {
        wit_fuzz::TARGETS.iter().collect()
    } else {
        vec![wit_fuzz::target(&which).unwrap_or_else(|| usage(&format!("no target `{which}`")))]
    };
    let budget = Duration::from_secs(seconds) / targets.len() as u32;
    for t in targets {
        let started = Instant::now();
        let (mut rounds, mut slowest) = (0u64, 0u64);
        while started.elapsed() < budget {
            let round_seed = seed + rounds;
            match t.round(round_seed, cases) {
                Ok(r) => slowest = slowest.max(r.slowest_ms),
                Err(e) => {
                    eprintln!("{}: FAILED at seed {round_seed}\n{e}", t.name);
                    eprintln!(
                        "add to fuzz/regressions.txt once fixed: {} {round_seed} {cases}",
                        t.name
                    );
                    std::process::exit(1);
                }
            }
            rounds += 1;
        }
        println!(
            "{}: {} cases (seeds {seed}..{}) in {:.0} s, no failure; slowest case {slowest} ms",
            t.name,
            rounds * u64::from(cases),
            seed + rounds,
            started.elapsed().as_secs_f64()
        );
    }
}

fn usage(problem: &str) -> ! {
    let names: Vec<_> = wit_fuzz::TARGETS.iter().map(|t| t.name).collect();
    eprintln!(
        "{problem}\nusage: wit-fuzz [TARGET|all] [--seconds 60] [--seed 0] [--cases 64]\ntargets: {}",
        names.join(", ")
    );
    std::process::exit(2);
}
