//! A scenario small enough to work out by hand, with every number asserted exactly.
//!
//! One H100 in `east`, nothing in `west`, 100 ms between them. The model starts in
//! 10 s, prefills 1000 tokens/s, decodes 100 tokens/s, one request at a time.
//!
//! | request | at    | from | prompt | output | what happens                                   | TTFT   | E2E    |
//! |---------|-------|------|--------|--------|------------------------------------------------|--------|--------|
//! | 0       | 5 s   | east | 1000   | 100    | no replica Ready yet: fails (no-route)          | –      | –      |
//! | 1       | 20 s  | east | 1000   | 100    | runs 20–22 s: 1 s prefill, 1 s decode          | 1.0 s  | 2.0 s  |
//! | 2       | 20.5 s| west | 500    | 200    | queues to 22 s, runs to 24.5 s, +100 ms RTT    | 2.1 s  | 4.1 s  |
//! | 3       | 30 s  | east | 2000   | 50     | runs 30–32.5 s                                 | 2.0 s  | 2.5 s  |
//!
//! SLO: TTFT ≤ 2 s and E2E ≤ 5 s, so requests 1 and 3 meet it (2.0 s counts), 2 misses.
//! The GPU is held for the whole minute and busy 2 + 2.5 + 2.5 = 7 s of it.

use super::run;

const TINY: &str = r#"
name = "tiny"
seed = 1
duration = "60s"
sample_interval = "10s"

[network]
rtt = [{ between = ["east", "west"], rtt = "100ms" }]

[[clusters]]
name = "east-1"
region = "east"
gpus = { H100 = 1 }

[[clusters]]
name = "west-1"
region = "west"
gpus = {}

[[models]]
id = "m"
startup = "10s"
perf.H100 = { prefill_tps = 1000, decode_tps = 100, max_batch = 1 }

[[workloads]]
name = "w"
model = "m"
replicas = 1
slo = { ttft = "2s", e2e = "5s" }

[[load]]
model = "m"
requests = [
  { at = "5s", origin = "east", prompt = 1000, output = 100 },
  { at = "20s", origin = "east", prompt = 1000, output = 100 },
  { at = "20.5s", origin = "west", prompt = 500, output = 200 },
  { at = "30s", origin = "east", prompt = 2000, output = 50 },
]
"#;

#[test]
fn every_number_of_the_tiny_scenario_is_as_worked_out_by_hand() {
    let outcome = run(TINY);
    assert_eq!(outcome.runs.len(), 3, "static, failover-only and flotilla");
    for r in &outcome.runs {
        let s = &r.summary;
        let who = &s.policy;
        assert_eq!(s.requests, 4, "{who}");
        assert_eq!(s.completed, 3, "{who}");
        assert_eq!(s.failed, 1, "{who}");
        assert_eq!(s.failed_by_reason["no-route"], 1, "{who}");
        assert_eq!(s.slo_met, 2, "{who}");
        assert_eq!(s.slo_attainment, 0.5, "{who}");
        assert_eq!(
            s.ttft_p50_ms, 2000.0,
            "{who}: TTFTs are 1000, 2000, 2100 ms"
        );
        assert_eq!(s.ttft_p99_ms, 2100.0, "{who}");
        assert_eq!(s.e2e_p50_ms, 2500.0, "{who}: E2Es are 2000, 2500, 4100 ms");
        assert_eq!(s.e2e_p99_ms, 4100.0, "{who}");
        assert_eq!(s.gpu_hours, 60.0 / 3600.0, "{who}: one GPU for a minute");
        assert_eq!(s.gpu_utilisation, 7.0 / 60.0, "{who}: busy 7 s of 60");
        assert_eq!(
            (s.moves, s.replacements, s.replicas_lost),
            (0, 0, 0),
            "{who}"
        );
    }
}

#[test]
fn the_time_series_places_each_request_in_its_interval() {
    let outcome = run(TINY);
    let samples = &outcome.runs[2].samples;
    let at: Vec<u64> = samples.iter().map(|s| s.at / 1_000_000).collect();
    assert_eq!(at, [10, 20, 30, 40, 50, 60]);
    let arrivals: Vec<u64> = samples.iter().map(|s| s.arrivals).collect();
    assert_eq!(
        arrivals,
        [1, 1, 2, 0, 0, 0],
        "a sample at t closes (t - 10 s, t]"
    );
    let completed: Vec<u64> = samples.iter().map(|s| s.completed).collect();
    assert_eq!(completed, [0, 0, 2, 1, 0, 0]);
    // Only east-1 (cluster 0) serves; the west request crossed the WAN to it.
    let routed: Vec<u64> = samples.iter().map(|s| s.routed[0]).collect();
    assert_eq!(routed, [0, 1, 2, 0, 0, 0], "counted when routed");
    assert!(samples.iter().all(|s| s.routed[1] == 0));
    assert_eq!(samples[0].ready_replicas, 1, "Ready at 10 s");
    assert_eq!(samples[2].gpu_utilisation, 0.45, "busy 4.5 s of (20, 30]");
}
