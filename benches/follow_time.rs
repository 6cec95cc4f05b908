//! The follow time, end to end: how long after a capacity event every new request is
//! served by the cluster the model moved to, with real processes (servers, agents,
//! gateways, model replicas over mTLS on 127.0.0.1) started by `flotilla up`.
//!
//! Two cases, each run `FLOTILLA_BENCH_RUNS` times (default 3):
//! - planned move (`simulations/scenarios/e2e/planned-move.toml`): another tenant
//!   takes the GPUs of the cluster serving the model; reported: time from the event
//!   to the last new request the old replica served (traffic followed), the target's
//!   start-up (event to Ready, mostly the model's own start), failed requests;
//! - cluster loss (`…/cluster-loss.toml`): every process of the serving cluster is
//!   killed; reported: time from the loss to the last failed request from the
//!   surviving clusters (rerouted), and how many failed.
//!
//! Needs the release binary: `cargo build --release -p flotilla`, then
//! `cargo bench -p flotilla-tests --bench follow_time`. `FLOTILLA_BENCH_LEASE`
//! (seconds, default 2, as `flotilla up`) sets the clusters' lease, which bounds
//! how soon a lost cluster's replicas are replaced; `FLOTILLA_BENCH_CASES=loss`
//! (or `move`) runs one case only.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn percentile(mut v: Vec<f64>, p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v.get(i).copied()
}

fn show(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.2} s"))
}

async fn run(scenario: &str, duration: u64, lease: Duration) -> flotilla_up::Summary {
    let state = std::env::temp_dir().join(format!("flotilla-follow-bench-{}", std::process::id()));
    flotilla_up::run(
        flotilla_up::UpOptions {
            binary: flotilla_tests::release_flotilla(),
            scenario: root().join("simulations/scenarios/e2e").join(scenario),
            state_dir: state,
            clusters: None,
            speed: 1.0,
            duration: Some(Duration::from_secs(duration)),
            rate: 10.0,
            lease,
            injections: Vec::new(),
            chaos: None,
            governance: false,
            live_view: false,
            progress: Box::new(|_| {}),
        },
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

fn main() {
    let runs: usize = std::env::var("FLOTILLA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let lease = Duration::from_secs_f64(
        std::env::var("FLOTILLA_BENCH_LEASE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2.0),
    );
    let cases = std::env::var("FLOTILLA_BENCH_CASES").unwrap_or_default();
    let (moves_runs, loss_runs) = match cases.as_str() {
        "move" => (runs, 0),
        "loss" => (0, runs),
        _ => (runs, runs),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut followed, mut started, mut move_failed, mut moves) = (vec![], vec![], 0, 0);
    for i in 0..moves_runs {
        let s = rt.block_on(run("planned-move.toml", 28, lease));
        eprintln!(
            "planned move, run {}: {} requests, {} failed",
            i + 1,
            s.requests,
            s.failed
        );
        move_failed += s.failed;
        for m in s.moves.iter().filter(|m| m.outcome == "done") {
            moves += 1;
            followed.extend(m.traffic_followed_after_s);
            started.extend(m.target_ready_after_s);
        }
    }
    let (mut rerouted, mut loss_failed) = (vec![], 0);
    for i in 0..loss_runs {
        let s = rt.block_on(run("cluster-loss.toml", 35, lease));
        eprintln!(
            "cluster loss, run {}: {} requests, {} failed",
            i + 1,
            s.requests,
            s.failed
        );
        for o in &s.outages {
            rerouted.push(o.rerouted_after_s);
            loss_failed += o.failed;
        }
    }
    println!(
        "follow time over {runs} runs each, lease {:.1} s ({} CPUs)",
        lease.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| case | p50 | max | failed requests |");
    println!("|---|---:|---:|---:|");
    println!(
        "| planned move: event → traffic followed ({moves} moves) | {} | {} | {move_failed} |",
        show(percentile(followed.clone(), 0.5)),
        show(percentile(followed, 1.0))
    );
    println!(
        "| planned move: event → target Ready (model start-up) | {} | {} | |",
        show(percentile(started.clone(), 0.5)),
        show(percentile(started, 1.0))
    );
    println!(
        "| cluster loss: loss → every request served elsewhere | {} | {} | {loss_failed} |",
        show(percentile(rerouted.clone(), 0.5)),
        show(percentile(rerouted, 1.0))
    );
    println!(
        "For scale: Karmada waits ~40 s to detect a lost cluster plus 300 s of toleration by default; Istio debounces pushes 100 ms–10 s; Submariner has taken 15 s+ to fail over."
    );
}
