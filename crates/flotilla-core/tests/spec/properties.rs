//! Properties that hold for any sequence of capacity events, reports and plans.

use flotilla_core::fixtures::{Federation, cluster, gpu_node, workload};
use flotilla_core::{
    Command, Millis, NodeReport, Phase, RegionPreference, ReportScope, Settings, State, Workload,
    apply, plan,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const CLUSTERS: [(&str, &str); 3] = [("a", "r1"), ("b", "r2"), ("c", "r3")];
/// Clusters whose agents run one per node and report only their own node
/// (`ReportNodes`); the others report their whole inventory.
const PER_NODE: [bool; 3] = [false, false, true];
const MODELS: [&str; 2] = ["H100", "A100"];

#[derive(Debug, Clone)]
struct ClusterShape {
    /// GPUs per node, and the node's model index.
    nodes: Vec<(u32, usize)>,
}

#[derive(Debug, Clone)]
enum Op {
    /// Another tenant takes (true) or returns (false) a device.
    Claim {
        cluster: usize,
        device: usize,
        taken: bool,
    },
    /// A device fails (false) or recovers (true).
    Health {
        cluster: usize,
        device: usize,
        healthy: bool,
    },
    /// A cluster stops reporting for a while.
    Silence {
        cluster: usize,
    },
    /// One node's agent of a per-node cluster stops reporting for a while.
    SilenceNode {
        node: usize,
    },
    Drain {
        cluster: usize,
    },
    Uncordon {
        cluster: usize,
    },
    /// Time passes; the scheduler runs.
    Tick {
        ms: u64,
    },
    /// Replicas report Ready / drained.
    Materialize,
}

fn cluster_shape() -> impl Strategy<Value = ClusterShape> {
    prop::collection::vec((1u32..=4, 0usize..2), 1..=2).prop_map(|nodes| ClusterShape { nodes })
}

/// A generated workload: GPUs per replica, max, min, priority, allowed region,
/// spread across clusters, preferred region, GPU model.
type WorkloadSpec = (
    u32,
    u32,
    u32,
    i32,
    Option<usize>,
    bool,
    Option<usize>,
    Option<usize>,
);

fn a_workload() -> impl Strategy<Value = WorkloadSpec> {
    (
        1u32..=2,
        1u32..=3,
        0u32..=3,
        0i32..=3,
        prop::option::of(0usize..3),
        any::<bool>(),
        prop::option::of(0usize..3),
        prop::option::of(0usize..2),
    )
}

fn build_workload(i: usize, spec: &WorkloadSpec) -> Workload {
    let (gpus, max, min, priority, region, spread, preferred, model) = *spec;
    let mut w = workload(&format!("w{i}"), &format!("model-{i}"), gpus, max);
    w.replicas.min = min.min(max);
    w.priority = priority;
    w.constraints.spread_across_clusters = spread;
    if let Some(r) = region {
        w.constraints.regions = vec![CLUSTERS[r].1.to_owned()];
    }
    if let Some(p) = preferred
        && region.is_none_or(|r| r == p)
    {
        w.constraints.preferred_regions = vec![RegionPreference {
            region: CLUSTERS[p].1.to_owned(),
            weight: 100,
        }];
    }
    if let Some(m) = model {
        w.gpu.models = vec![MODELS[m].to_owned()];
    }
    w.mobility.min_dwell = Millis(3_000);
    w
}

fn op(planned_only: bool) -> impl Strategy<Value = Op> {
    let planned = prop_oneof![
        (0usize..3, 0usize..8, any::<bool>()).prop_map(|(cluster, device, taken)| Op::Claim {
            cluster,
            device,
            taken
        }),
        (0usize..3).prop_map(|cluster| Op::Drain { cluster }),
        (0usize..3).prop_map(|cluster| Op::Uncordon { cluster }),
        (0u64..4_000).prop_map(|ms| Op::Tick { ms }),
        Just(Op::Materialize),
        Just(Op::Materialize),
    ];
    if planned_only {
        planned.boxed()
    } else {
        prop_oneof![
            4 => planned,
            1 => (0usize..3, 0usize..8, any::<bool>()).prop_map(|(cluster, device, healthy)| Op::Health { cluster, device, healthy }),
            1 => (0usize..3).prop_map(|cluster| Op::Silence { cluster }),
            1 => (0usize..2).prop_map(|node| Op::SilenceNode { node }),
        ]
        .boxed()
    }
}

/// The world outside the registry: what each cluster's agents would report.
struct World {
    f: Federation,
    reports: Vec<Vec<NodeReport>>,
    silent_until: Vec<u64>,
    /// Per cluster and node: until when that node's agent is silent (per-node clusters).
    node_silent_until: Vec<Vec<u64>>,
}

impl World {
    fn new(shapes: &[ClusterShape], workloads: &[Workload], preemption: bool) -> World {
        let mut f = Federation::new();
        f.apply(Command::SetSettings {
            settings: Settings {
                preemption,
                lease_duration: Millis(10_000),
                ..Settings::default()
            },
        })
        .unwrap();
        let mut reports = Vec::new();
        for ((name, region), shape) in CLUSTERS.iter().zip(shapes) {
            f.apply(Command::RegisterCluster {
                spec: cluster(name, region),
            })
            .unwrap();
            let nodes: Vec<NodeReport> = shape
                .nodes
                .iter()
                .enumerate()
                .map(|(i, (gpus, model))| {
                    gpu_node(name, &format!("n{i}"), MODELS[*model], *gpus, 81_920)
                })
                .collect();
            let scope = if PER_NODE[reports.len()] {
                ReportScope::Nodes
            } else {
                ReportScope::Cluster
            };
            f.apply(Command::capacity_report(
                (*name).to_owned(),
                scope,
                nodes.clone(),
            ))
            .unwrap();
            reports.push(nodes);
        }
        let node_silent_until = reports.iter().map(|nodes| vec![0; nodes.len()]).collect();
        for w in workloads {
            f.apply(Command::ApplyWorkload {
                workload: w.clone(),
            })
            .unwrap();
        }
        World {
            f,
            reports,
            silent_until: vec![0; CLUSTERS.len()],
            node_silent_until,
        }
    }

    /// The `device`th device of a cluster (wrapping), as (node, device) indexes.
    fn locate(&self, cluster: usize, device: usize) -> Option<(usize, usize)> {
        let devices: Vec<(usize, usize)> = self.reports[cluster]
            .iter()
            .enumerate()
            .flat_map(|(n, node)| (0..node.devices.len()).map(move |d| (n, d)))
            .collect();
        devices.get(device % devices.len().max(1)).copied()
    }

    fn change_device(
        &mut self,
        cluster: usize,
        device: usize,
        change: impl FnOnce(&mut flotilla_core::DeviceReport),
    ) {
        let Some((n, d)) = self.locate(cluster, device) else {
            return;
        };
        change(&mut self.reports[cluster][n].devices[d]);
        self.report(cluster, n);
    }

    /// What the agents write after a change on `node`: the whole inventory, or on a
    /// per-node cluster that node alone.
    fn report(&mut self, cluster: usize, node: usize) {
        if self.f.now.0 < self.silent_until[cluster] {
            return;
        }
        let name = CLUSTERS[cluster].0.to_owned();
        let command = if PER_NODE[cluster] {
            if self.f.now.0 < self.node_silent_until[cluster][node] {
                return;
            }
            Command::ReportNodes {
                cluster: name,
                nodes: vec![self.reports[cluster][node].clone()],
            }
        } else {
            Command::ReportCapacity {
                cluster: name,
                nodes: self.reports[cluster].clone(),
            }
        };
        self.f.apply(command).unwrap();
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Claim {
                cluster,
                device,
                taken,
            } => {
                self.change_device(cluster, device, |d| d.claimed_by_other = taken);
            }
            Op::Health {
                cluster,
                device,
                healthy,
            } => {
                self.change_device(cluster, device, |d| d.healthy = healthy);
            }
            Op::Silence { cluster } => self.silent_until[cluster] = self.f.now.0 + 30_000,
            Op::SilenceNode { node } => {
                let cluster = PER_NODE.iter().position(|p| *p).unwrap_or_default();
                let nodes = &mut self.node_silent_until[cluster];
                let n = node % nodes.len();
                nodes[n] = self.f.now.0 + 30_000;
            }
            Op::Drain { cluster } => {
                self.f
                    .apply(Command::Drain {
                        cluster: CLUSTERS[cluster].0.to_owned(),
                    })
                    .unwrap();
            }
            Op::Uncordon { cluster } => {
                self.f
                    .apply(Command::Uncordon {
                        cluster: CLUSTERS[cluster].0.to_owned(),
                    })
                    .unwrap();
            }
            Op::Tick { ms } => {
                self.f.now = self.f.now + Millis(ms);
                for (i, (name, _)) in CLUSTERS.iter().enumerate() {
                    if PER_NODE[i] {
                        // Node agents renew their nodes' leases (and the cluster's) by
                        // reporting again; a silent node's lease runs out.
                        for n in 0..self.reports[i].len() {
                            self.report(i, n);
                        }
                    } else if self.f.now.0 >= self.silent_until[i] {
                        let cluster = (*name).to_owned();
                        self.f.apply(Command::Heartbeat { cluster }).unwrap();
                    }
                }
                let commands = self.f.plan_and_apply();
                for c in &commands {
                    if let Command::PreemptReplica {
                        workload,
                        for_workload,
                        ..
                    } = c
                    {
                        let victim = self
                            .f
                            .state
                            .workload(workload)
                            .map_or(i32::MIN, |w| w.priority);
                        let winner = self
                            .f
                            .state
                            .workload(for_workload)
                            .map_or(i32::MIN, |w| w.priority);
                        assert!(
                            victim < winner,
                            "{workload} (priority {victim}) preempted for {for_workload} ({winner})"
                        );
                    }
                }
                let again = plan(&self.f.state, self.f.now);
                assert!(
                    again.is_empty(),
                    "a second pass at the same time proposed {again:?} after the first proposed {commands:?}"
                );
            }
            Op::Materialize => self.f.materialize(),
        }
    }
}

/// No device is held by two replicas; every replica holds exactly the devices it lists.
fn assert_no_overcommit(state: &State) {
    let twice = state.overcommitted();
    assert!(twice.is_empty(), "{twice:?}");
    let mut holders: BTreeMap<(String, String), u64> = BTreeMap::new();
    for p in state.placements().values() {
        for r in p.replicas.values() {
            for d in &r.devices {
                let key = (r.cluster.clone(), d.uuid.clone());
                holders.insert(key.clone(), r.id.0);
                let device = state
                    .cluster(&r.cluster)
                    .and_then(|c| c.inventory.device(d))
                    .expect("a held device exists");
                assert_eq!(device.allocated_to, Some(r.id));
            }
        }
    }
    for (name, c) in state.clusters() {
        for (at, d) in c.inventory.devices() {
            if let Some(id) = d.allocated_to {
                assert_eq!(
                    holders.get(&(name.clone(), at.uuid.clone())),
                    Some(&id.0),
                    "allocation without a holder"
                );
            }
        }
    }
}

/// Every replica runs where its workload's constraints allow.
fn assert_constraints_honoured(state: &State) {
    for (name, p) in state.placements() {
        let Some(w) = state.workload(name) else {
            continue;
        };
        let mut per_cluster: BTreeMap<&str, usize> = BTreeMap::new();
        for r in p.replicas.values().filter(|r| r.is_active()) {
            let c = state.cluster(&r.cluster).unwrap();
            assert!(
                w.allows(&r.cluster, c.region()),
                "{name} runs in {} against its constraints",
                r.cluster
            );
            let moving_in = p.migrations.iter().any(|m| m.target == r.id);
            if !moving_in {
                *per_cluster.entry(r.cluster.as_str()).or_default() += 1;
            }
            for d in &r.devices {
                let device = c.inventory.device(d).unwrap();
                assert!(
                    w.gpu
                        .accepts_shape(&device.report.model, device.report.mig_profile.as_deref())
                );
            }
        }
        if w.constraints.spread_across_clusters {
            assert!(
                per_cluster.values().all(|n| *n <= 1),
                "{name} spreads but has {per_cluster:?}"
            );
        }
    }
}

/// Models with a Ready replica in their route.
fn served(state: &State) -> BTreeSet<String> {
    state
        .routes()
        .routes
        .values()
        .filter(|r| r.total_weight() > 0)
        .map(|r| r.model.clone())
        .collect()
}

fn setup() -> impl Strategy<Value = (Vec<ClusterShape>, Vec<Workload>)> {
    (
        prop::collection::vec(cluster_shape(), 3),
        prop::collection::vec(a_workload(), 1..=4).prop_map(|ws| {
            ws.iter()
                .enumerate()
                .map(|(i, w)| build_workload(i, w))
                .collect()
        }),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn no_device_is_overcommitted_constraints_hold_and_passes_are_complete(
        (shapes, workloads) in setup(),
        ops in prop::collection::vec(op(false), 1..60),
    ) {
        let mut world = World::new(&shapes, &workloads, true);
        for op in &ops {
            world.step(op);
            assert_no_overcommit(&world.f.state);
            assert_constraints_honoured(&world.f.state);
        }
    }

    #[test]
    fn apply_is_deterministic_and_snapshots_round_trip_exactly(
        (shapes, workloads) in setup(),
        ops in prop::collection::vec(op(false), 1..40),
    ) {
        let mut world = World::new(&shapes, &workloads, true);
        for op in &ops {
            world.step(op);
        }
        let mut replayed = State::new();
        for entry in &world.f.log {
            apply(&mut replayed, entry).unwrap();
        }
        prop_assert_eq!(&replayed, &world.f.state);
        let restored = State::from_snapshot(&world.f.state.to_snapshot()).unwrap();
        prop_assert_eq!(&restored, &world.f.state);
        prop_assert_eq!(plan(&restored, world.f.now), plan(&world.f.state, world.f.now));
    }

    #[test]
    fn planned_events_never_leave_a_served_model_without_a_ready_replica(
        (shapes, workloads) in setup(),
        ops in prop::collection::vec(op(true), 1..60),
    ) {
        // Reclaims and drains are planned: moves must be make-before-break. (Preemption
        // is off: evicting a lower priority is a deliberate break.)
        let mut world = World::new(&shapes, &workloads, false);
        for op in &ops {
            let before = served(&world.f.state);
            world.step(op);
            let after = served(&world.f.state);
            let lost: Vec<&String> = before.difference(&after).collect();
            prop_assert!(lost.is_empty(), "{:?} lost every Ready replica after {:?}", lost, op);
        }
    }

    #[test]
    fn a_workload_that_fits_somewhere_gets_placed(
        shapes in prop::collection::vec(cluster_shape(), 3),
        spec in a_workload(),
    ) {
        let w = build_workload(0, &spec);
        let world = World::new(&shapes, std::slice::from_ref(&w), true);
        let mut f = world.f;
        // How many replicas could fit, counting whole nodes.
        let mut fits = 0;
        for ((name, region), shape) in CLUSTERS.iter().zip(&shapes) {
            if !w.allows(name, region) { continue; }
            let per_cluster: u32 = shape.nodes.iter()
                .filter(|(_, m)| w.gpu.models.is_empty() || w.gpu.models[0] == MODELS[*m])
                .map(|(gpus, _)| gpus / w.gpu.count)
                .sum();
            fits += if w.constraints.spread_across_clusters { per_cluster.min(1) } else { per_cluster };
        }
        f.settle(Millis(1000), 10);
        let placed = f.state.placement("w0").map_or(0, |p| p.replicas.values().filter(|r| r.phase == Phase::Ready).count() as u32);
        prop_assert_eq!(placed, fits.min(w.replicas.max));
    }
}
