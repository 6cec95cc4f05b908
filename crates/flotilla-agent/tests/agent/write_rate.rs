//! The registry write rate of a steady fleet: 1,000 GPUs whose utilisation is noise
//! and whose memory jitters by allocator-sized amounts cause no capacity writes, only
//! lease heartbeats; one real event causes exactly one write.

use flotilla_agent::change::{Action, ReportPolicy, Reporter};
use flotilla_agent::gpu::GpuSource;
use flotilla_agent::gpu::simulated::{DeviceChange, SimulatedFleet, SimulatedNode};
use flotilla_core::{Millis, Timestamp};

const NODES: usize = 125;
const GPUS_PER_NODE: u32 = 8;
const SAMPLE_EVERY: Millis = Millis(5_000);
const MINUTES: u64 = 10;

/// A fixed-seed generator: the test must not depend on luck.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

struct Agent {
    source: SimulatedNode,
    reporter: Reporter,
}

#[derive(Debug, Default, PartialEq)]
struct Counts {
    writes: usize,
    heartbeats: usize,
}

fn fleet() -> SimulatedFleet {
    let text = format!(
        "[[nodes]]\nname = \"gpu\"\ncount = {NODES}\n[[nodes.devices]]\nmodel = \"NVIDIA H100 80GB HBM3\"\nmemory_mib = 81920\ncount = {GPUS_PER_NODE}\n"
    );
    SimulatedFleet::from_toml("fleet.toml", &text).unwrap()
}

/// One sample on every node at `now`: act on the decision as a real agent would,
/// assuming the registry accepts every write.
fn sample_all(agents: &mut [Agent], now: Timestamp, counts: &mut Counts) {
    for agent in agents {
        let reports = agent.source.snapshot().unwrap().to_reports();
        match agent.reporter.decide(now, &reports) {
            Action::WriteCapacity(_) => {
                counts.writes += 1;
                agent.reporter.written(now, reports);
            }
            Action::Heartbeat => {
                counts.heartbeats += 1;
                agent.reporter.renewed(now);
            }
            Action::Wait => {}
        }
    }
}

/// Busy GPUs hold about 60 GiB, idle ones about 1 GiB; both jitter by up to ±256 MiB,
/// and utilisation is anything from 0 to 100 % every sample.
fn noise(fleet: &SimulatedFleet, rng: &mut Lcg) {
    for node in fleet.node_names() {
        for gpu in 0..GPUS_PER_NODE {
            let base = if gpu % 2 == 0 { 61_440 } else { 1_024 };
            let used = base + rng.next(513) - 256;
            let change = DeviceChange::Usage {
                memory_used_mib: used,
                utilization_pct: rng.next(101) as u32,
            };
            fleet.set(&node, &gpu.to_string(), change).unwrap();
        }
    }
}

#[test]
fn a_steady_fleet_of_1000_gpus_writes_no_capacity_only_heartbeats() {
    let fleet = fleet();
    let policy = ReportPolicy::default();
    let mut agents: Vec<Agent> = fleet
        .node_names()
        .iter()
        .map(|n| Agent {
            source: fleet.node(n).unwrap(),
            reporter: Reporter::new(policy),
        })
        .collect();
    let mut rng = Lcg(7);

    // Start-up: every agent writes its first report once.
    noise(&fleet, &mut rng);
    let mut startup = Counts::default();
    sample_all(&mut agents, Timestamp(0), &mut startup);
    assert_eq!(startup.writes, NODES);

    let mut steady = Counts::default();
    let samples = MINUTES * 60_000 / SAMPLE_EVERY.0;
    for i in 1..=samples {
        noise(&fleet, &mut rng);
        sample_all(&mut agents, Timestamp(i * SAMPLE_EVERY.0), &mut steady);
    }
    let per_minute = |n: usize| n as f64 / MINUTES as f64;
    assert_eq!(per_minute(steady.writes), 0.0, "capacity writes per minute");
    // Each agent renews its lease every heartbeat_interval (10 s): 6 a minute.
    let expected = NODES as f64 * 60_000.0 / policy.heartbeat_interval.0 as f64;
    assert_eq!(
        per_minute(steady.heartbeats),
        expected,
        "heartbeats per minute"
    );

    // A real event, a GPU failing, is one write from that node's agent, once.
    fleet
        .set(
            "gpu-17",
            "3",
            DeviceChange::Fail {
                reason: "Xid 79".into(),
            },
        )
        .unwrap();
    let mut event = Counts::default();
    for i in 1..=12 {
        noise(&fleet, &mut rng);
        sample_all(
            &mut agents,
            Timestamp((samples + i) * SAMPLE_EVERY.0),
            &mut event,
        );
    }
    assert_eq!(event.writes, 1);
}
