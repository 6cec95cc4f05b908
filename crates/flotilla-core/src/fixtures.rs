//! Small builders for federations, used by tests, benchmarks, the simulator and the
//! sample federation that `flotilla plan` shows. They build plain values; nothing here
//! touches a registry except [`Federation`], which drives one the way production does.

use crate::cluster::ClusterSpec;
use crate::command::{Command, Entry, Event, apply};
use crate::error::Rejection;
use crate::gpu::{DeviceReport, GpuNeed, NodeReport};
use crate::placement::Phase;
use crate::scheduler::plan;
use crate::state::State;
use crate::time::{Millis, Timestamp};
use crate::workload::{Constraints, Mobility, Replicas, Workload};
use std::collections::BTreeMap;

/// A cluster spec with no labels.
pub fn cluster(name: &str, region: &str) -> ClusterSpec {
    ClusterSpec {
        name: name.to_owned(),
        region: region.to_owned(),
        zone: String::new(),
        labels: BTreeMap::new(),
        gateway_address: String::new(),
        endpoint_ranges: Vec::new(),
    }
}

/// A node of `count` idle whole GPUs of one model. UUIDs are `GPU-<cluster>-<node>-<i>`.
pub fn gpu_node(cluster: &str, node: &str, model: &str, count: u32, memory_mib: u64) -> NodeReport {
    NodeReport {
        name: node.to_owned(),
        devices: (0..count)
            .map(|i| DeviceReport {
                uuid: format!("GPU-{cluster}-{node}-{i}"),
                model: model.to_owned(),
                memory_total_mib: memory_mib,
                memory_used_mib: 0,
                utilization_pct: 0,
                mig_profile: None,
                healthy: true,
                claimed_by_other: false,
            })
            .collect(),
    }
}

/// A movable workload of `max` replicas (min 1) needing `gpus` whole GPUs each.
pub fn workload(name: &str, model: &str, gpus: u32, max: u32) -> Workload {
    Workload {
        name: name.to_owned(),
        model: model.to_owned(),
        replicas: Replicas { min: 1, max },
        gpu: GpuNeed {
            count: gpus,
            min_memory_mib: 0,
            models: Vec::new(),
            mig_profile: None,
        },
        constraints: Constraints::default(),
        priority: 0,
        slo: None,
        mobility: Mobility {
            movable: true,
            min_dwell: Millis(0),
        },
        container: None,
    }
}

/// What a materializer whose replicas start and drain instantly would report now:
/// every Starting replica Ready, every Draining one Gone. Dry runs and tests use it.
pub fn instant_materializer(state: &State) -> Vec<Command> {
    let mut reports = Vec::new();
    for (name, p) in state.placements() {
        for r in p.replicas.values() {
            let phase = match r.phase {
                Phase::Starting => Phase::Ready,
                Phase::Draining => Phase::Gone,
                _ => continue,
            };
            reports.push(Command::SetReplicaPhase {
                workload: name.clone(),
                replica: r.id,
                phase,
                endpoint: None,
            });
        }
    }
    reports
}

/// A registry driven the way production drives it: commands stamped with a clock the
/// test controls, the scheduler's plans applied, and a stand-in materializer that
/// makes Starting replicas Ready and lets Draining ones go.
#[derive(Debug, Default)]
pub struct Federation {
    pub state: State,
    pub now: Timestamp,
    /// Every event applied so far, in order.
    pub events: Vec<Event>,
    /// Every entry applied so far: replaying it gives the same state.
    pub log: Vec<Entry>,
}

impl Federation {
    pub fn new() -> Self {
        Federation::default()
    }

    /// Applies one command at the current time.
    pub fn apply(&mut self, command: Command) -> Result<Vec<Event>, Rejection> {
        let entry = Entry::new(self.now, command);
        let events = apply(&mut self.state, &entry)?;
        self.log.push(entry);
        self.events.extend(events.iter().cloned());
        Ok(events)
    }

    /// Registers a cluster with one node of `gpus` GPUs of `model` (80 GiB each).
    pub fn add_cluster(&mut self, name: &str, region: &str, model: &str, gpus: u32) {
        self.apply(Command::RegisterCluster {
            spec: cluster(name, region),
        })
        .expect("a fixture cluster is valid");
        self.apply(Command::ReportCapacity {
            cluster: name.to_owned(),
            nodes: vec![gpu_node(name, "node-0", model, gpus, 81_920)],
        })
        .expect("a fixture report is valid");
    }

    /// Runs the scheduler once and applies everything it proposes. Returns the commands.
    pub fn plan_and_apply(&mut self) -> Vec<Command> {
        let commands = plan(&self.state, self.now);
        for c in &commands {
            if let Err(e) = self.apply(c.clone()) {
                panic!("plan proposed {c:?}, which apply rejected: {e}");
            }
        }
        commands
    }

    /// The stand-in materializer: every Starting replica becomes Ready, every Draining
    /// one goes (its requests have finished).
    pub fn materialize(&mut self) {
        for c in instant_materializer(&self.state) {
            self.apply(c).expect("materializer reports are valid");
        }
    }

    /// Keeps the clusters' leases alive (what agents' heartbeats do).
    pub fn heartbeat_all(&mut self) {
        let names: Vec<String> = self.state.clusters().keys().cloned().collect();
        for cluster in names {
            self.apply(Command::Heartbeat { cluster })
                .expect("known cluster");
        }
    }

    /// Advances the clock, keeps leases alive, plans, applies and materializes until
    /// nothing changes (at most `rounds` times).
    pub fn settle(&mut self, step: Millis, rounds: usize) {
        for _ in 0..rounds {
            self.now = self.now + step;
            self.heartbeat_all();
            let commands = self.plan_and_apply();
            let before = self.events.len();
            self.materialize();
            if commands.is_empty() && self.events.len() == before {
                return;
            }
        }
    }

    /// Clusters where a model's traffic goes now, with weights.
    pub fn route_weights(&self, model: &str) -> Vec<(String, u32)> {
        self.state
            .routes()
            .get(model)
            .map(|r| {
                r.endpoints
                    .iter()
                    .map(|e| (e.cluster.clone(), e.weight))
                    .collect()
            })
            .unwrap_or_default()
    }
}
