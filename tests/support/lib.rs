//! Shared fixtures for end-to-end tests and benchmarks: federations of any size,
//! generated deterministically from a seed.

use flotilla_core::fixtures::{Federation, cluster, gpu_node, workload};
use flotilla_core::{Command, NodeReport, RegionPreference, Settings};

/// GPU products in generated clusters, with their memory in MiB.
pub const GPU_MODELS: [(&str, u64); 3] = [
    ("NVIDIA H100 80GB HBM3", 81_559),
    ("NVIDIA A100-SXM4-80GB", 81_920),
    ("NVIDIA L40S", 46_068),
];

/// Regions generated clusters spread over.
pub const REGIONS: [&str; 6] = [
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-northeast-1",
    "ap-south-1",
];

/// SplitMix64: a tiny, well-mixed deterministic generator, enough for fixtures.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The name of generated cluster `i`.
pub fn cluster_name(i: usize) -> String {
    format!("cluster-{i:04}")
}

/// The nodes of generated cluster `i`: `nodes` nodes of 8 GPUs, one model per cluster.
pub fn cluster_nodes(i: usize, nodes: usize) -> Vec<NodeReport> {
    let name = cluster_name(i);
    let (model, memory) = GPU_MODELS[i % GPU_MODELS.len()];
    (0..nodes)
        .map(|n| gpu_node(&name, &format!("node-{n:02}"), model, 8, memory))
        .collect()
}

/// A federation of `clusters` clusters (8 nodes × 8 GPUs each) and `workloads`
/// workloads of mixed shapes, none placed yet. The same seed gives the same federation.
pub fn federation(clusters: usize, workloads: usize, seed: u64) -> Federation {
    let mut rng = SplitMix::new(seed);
    let mut f = Federation::new();
    f.apply(Command::SetSettings {
        settings: Settings {
            // Long leases: benchmarks plan at one instant and must not see expiries.
            lease_duration: flotilla_core::Millis::from_secs(3600),
            ..Settings::default()
        },
    })
    .expect("valid settings");
    for i in 0..clusters {
        let name = cluster_name(i);
        f.apply(Command::RegisterCluster {
            spec: cluster(&name, REGIONS[i % REGIONS.len()]),
        })
        .expect("valid cluster");
        f.apply(Command::ReportCapacity {
            cluster: name,
            nodes: cluster_nodes(i, 8),
        })
        .expect("valid report");
    }
    for i in 0..workloads {
        let gpus = [1, 1, 1, 2, 2, 4, 8][rng.below(7) as usize];
        let replicas = 1 + rng.below(3) as u32;
        let mut w = workload(
            &format!("wl-{i:05}"),
            &format!("model-{:04}", i % 500),
            gpus,
            replicas,
        );
        w.priority = rng.below(4) as i32;
        match rng.below(10) {
            0 => w.gpu.models = vec![GPU_MODELS[rng.below(3) as usize].0.to_owned()],
            1 => w.constraints.regions = vec![REGIONS[rng.below(6) as usize].to_owned()],
            2 => {
                w.constraints.preferred_regions = vec![RegionPreference {
                    region: REGIONS[rng.below(6) as usize].to_owned(),
                    weight: 100,
                }]
            }
            3 => w.constraints.spread_across_clusters = true,
            _ => {}
        }
        f.apply(Command::ApplyWorkload { workload: w })
            .expect("valid workload");
    }
    f
}

/// The same federation with every placement made and every replica Ready.
pub fn settled_federation(clusters: usize, workloads: usize, seed: u64) -> Federation {
    let mut f = federation(clusters, workloads, seed);
    for _ in 0..3 {
        f.plan_and_apply();
        f.materialize();
    }
    f
}

/// One capacity change: another tenant claims the first GPU of cluster 0's first
/// node, evicting whatever Flotilla ran there.
pub fn claim_one_gpu(f: &mut Federation) {
    let mut nodes = cluster_nodes(0, 8);
    nodes[0].devices[0].claimed_by_other = true;
    f.apply(Command::ReportCapacity {
        cluster: cluster_name(0),
        nodes,
    })
    .expect("valid report");
}

/// `target/release/flotilla`, next to the running benchmark's own `deps/` directory:
/// the benchmarks that start real processes run the release build.
///
/// # Panics
/// When it is missing, saying how to build it.
pub fn release_flotilla() -> std::path::PathBuf {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("flotilla")));
    match bin {
        Some(bin) if bin.exists() => bin,
        _ => panic!(
            "target/release/flotilla is missing: run `cargo build --release -p flotilla` first"
        ),
    }
}
