//! Whole-scenario runs of the simulation harness, timed: the targets of issue 8.
//!
//! `cargo bench -p flotilla-tests --bench sim` runs each scenario (all its policies)
//! a few times and prints the best and median wall time and the requests simulated
//! per second. Targets: the Azure trace replay (~9k requests, 10 clusters, three
//! policies) under 5 s; the 100-cluster, million-request fleet under 60 s.

use flotilla_sim::{Options, Scenario, simulate};
use std::path::Path;
use std::time::{Duration, Instant};

fn bench(file: &str, runs: usize, target: Duration) -> bool {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../simulations/scenarios")
        .join(file);
    let scenario = match Scenario::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return false;
        }
    };
    let mut times = Vec::new();
    let mut requests = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let outcome = simulate(&scenario, &Options::default());
        times.push(start.elapsed());
        requests = outcome.runs.iter().map(|r| r.summary.requests).sum::<u64>();
    }
    times.sort();
    let best = times[0];
    let median = times[times.len() / 2];
    let ok = median < target;
    println!(
        "{:<24} {} policies, {:>9} requests simulated: best {:>8.3} s, median {:>8.3} s, {:>10.0} requests/s (target < {} s: {})",
        scenario.name,
        scenario.policies.len(),
        requests,
        best.as_secs_f64(),
        median.as_secs_f64(),
        requests as f64 / median.as_secs_f64(),
        target.as_secs(),
        if ok { "met" } else { "MISSED" },
    );
    ok
}

fn main() {
    // `cargo test --benches` passes `--bench`-less args; run quickly then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs = if quick { 1 } else { 5 };
    let mut ok = true;
    ok &= bench("azure-trace-replay.toml", runs, Duration::from_secs(5));
    ok &= bench("spot-preemption.toml", runs, Duration::from_secs(5));
    if !quick {
        ok &= bench("fleet-100.toml", 3, Duration::from_secs(60));
    }
    if !ok {
        std::process::exit(1);
    }
}
