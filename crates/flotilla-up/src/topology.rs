//! What `flotilla up` starts, decided before anything starts: the clusters and their
//! simulated fleets (from the scenario), the workloads, the settings, and the capacity
//! events to play, each at its wall-clock time.
//!
//! Everything here is pure, so a scenario `up` cannot play is refused before a single
//! process runs.

use crate::UpError;
use flotilla_core::{Millis, Settings, Workload};
use flotilla_sim::Scenario;
use flotilla_sim::scenario::{EventKind, PolicyKind};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// One cluster of the local federation.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPlan {
    pub name: String,
    pub region: String,
    pub zone: String,
    /// The simulated fleet file its agent reads.
    pub fleet_toml: String,
    pub gpus: usize,
}

/// What happens to a cluster when a scenario event comes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Another tenant takes `gpus` GPUs (reclaim, spot preemption).
    Claim { gpus: u32 },
    /// Every GPU `up` took away comes back.
    Release,
    /// `gpus` GPUs fail at once.
    Fail { gpus: u32 },
    /// Failed GPUs are healthy again.
    Repair,
    /// Every process of the cluster is killed.
    Lose,
    /// The cluster's processes start again.
    Recover,
    /// The Raft leader's server is killed (SIGKILL), nothing else of its cluster.
    KillLeader,
    /// Servers that were killed alone start again.
    RestartServers,
    /// Every server is frozen (SIGSTOP): connections to the registry hang as in a
    /// network partition, which is what gateways and agents must ride out.
    PauseRegistry,
    /// The frozen servers go on (SIGCONT).
    ResumeRegistry,
}

impl Action {
    pub fn describe(self) -> String {
        match self {
            Action::Claim { gpus } => format!("another tenant takes {gpus} GPUs"),
            Action::Release => "the other tenant gives its GPUs back".into(),
            Action::Fail { gpus } => format!("{gpus} GPUs fail"),
            Action::Repair => "failed GPUs are repaired".into(),
            Action::Lose => "the whole cluster is lost (every process killed)".into(),
            Action::Recover => "the cluster comes back".into(),
            Action::KillLeader => "the Raft leader's server is killed".into(),
            Action::RestartServers => "killed servers start again".into(),
            Action::PauseRegistry => "every server is cut off (frozen)".into(),
            Action::ResumeRegistry => "the servers are reachable again".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TimedEvent {
    /// After the start of the scenario, in wall-clock time (already divided by speed).
    pub at: Duration,
    pub cluster: String,
    pub action: Action,
}

/// The whole plan.
#[derive(Debug, Clone)]
pub struct Topology {
    pub scenario: String,
    pub description: String,
    pub clusters: Vec<ClusterPlan>,
    pub workloads: Vec<Workload>,
    pub settings: Settings,
    pub events: Vec<TimedEvent>,
    /// The scenario's own length, in wall-clock time.
    pub duration: Duration,
}

/// How the scenario is adapted to one machine.
#[derive(Debug, Clone)]
pub struct TopologyOptions {
    /// Keep only the scenario's first N clusters (events and nothing else refer to
    /// the others, so theirs are dropped).
    pub clusters: Option<usize>,
    /// Scenario time runs this many times faster than the wall clock.
    pub speed: f64,
    /// The cluster lease: how long a silent cluster stays Ready.
    pub lease: Duration,
}

impl Topology {
    pub fn from_scenario(s: &Scenario, o: &TopologyOptions) -> Result<Topology, UpError> {
        let bad = |message: String| UpError::Scenario {
            path: s.path.clone(),
            message,
        };
        if !(o.speed.is_finite() && o.speed > 0.0) {
            return Err(UpError::Option {
                flag: "--speed",
                message: format!("must be a number above 0, not {}", o.speed),
            });
        }
        let keep = match o.clusters {
            None => s.clusters.len(),
            Some(0) => {
                return Err(UpError::Option {
                    flag: "--clusters",
                    message: "must be at least 1".into(),
                });
            }
            Some(n) if n > s.clusters.len() => {
                return Err(UpError::Option {
                    flag: "--clusters",
                    message: format!(
                        "scenario {:?} describes {} clusters; ask for at most that many",
                        s.name,
                        s.clusters.len()
                    ),
                });
            }
            Some(n) => n,
        };
        let clusters: Vec<ClusterPlan> = s
            .clusters
            .iter()
            .take(keep)
            .map(|c| ClusterPlan {
                name: c.spec.name.clone(),
                region: c.spec.region.clone(),
                zone: c.spec.zone.clone(),
                fleet_toml: fleet_toml(&c.devices),
                gpus: c.devices.len(),
            })
            .collect();
        let wall = |micros: u64| Duration::from_secs_f64(micros as f64 / 1e6 / o.speed);
        let mut events = Vec::new();
        for e in &s.events {
            let Some(cluster) = s.clusters.get(e.cluster).filter(|_| e.cluster < keep) else {
                continue;
            };
            let gpus = e.gpus.unwrap_or(cluster.devices.len() as u32);
            let action = match e.kind {
                EventKind::Reclaim | EventKind::SpotPreemption => Action::Claim { gpus },
                EventKind::Return => Action::Release,
                EventKind::Fail => Action::Fail { gpus },
                EventKind::Repair => Action::Repair,
                EventKind::ClusterLost => Action::Lose,
                EventKind::ClusterRecovered => Action::Recover,
                EventKind::Add => {
                    return Err(bad(format!(
                        "event at {} on {:?}: `add` (new GPUs joining) cannot be played on simulated agents yet; `flotilla sim` can",
                        flotilla_sim::duration::Dur(e.at),
                        cluster.spec.name
                    )));
                }
            };
            events.push(TimedEvent {
                at: wall(e.at),
                cluster: cluster.spec.name.clone(),
                action,
            });
        }
        // The scheduler's settings are the scenario's "flotilla" policy's; the lease
        // is shortened so that a lost cluster is noticed at demo speed.
        let mut settings = s
            .policies
            .iter()
            .find(|p| p.kind == PolicyKind::Flotilla)
            .map(|p| p.settings.clone())
            .unwrap_or_default();
        settings.lease_duration = Millis(o.lease.as_millis() as u64);
        // Traffic steps and drains keep pace with the faster clock, but not below what
        // real processes need to start taking or finish requests.
        let scaled = |m: Millis, floor: u64| Millis(((m.0 as f64 / o.speed) as u64).max(floor));
        settings.traffic_step_interval = scaled(settings.traffic_step_interval, 200);
        settings.drain_deadline = scaled(settings.drain_deadline, 2_000);
        Ok(Topology {
            scenario: s.name.clone(),
            description: s.description.clone(),
            clusters,
            workloads: s.workloads.iter().map(|w| w.workload.clone()).collect(),
            settings,
            events,
            duration: wall(s.duration),
        })
    }
}

/// A simulated fleet file holding exactly the scenario's devices (same nodes, same
/// UUIDs, same GPU model names, so the scenario's workload constraints match).
fn fleet_toml(devices: &[flotilla_sim::scenario::DeviceDef]) -> String {
    let mut by_node: BTreeMap<&str, Vec<&flotilla_sim::scenario::DeviceDef>> = BTreeMap::new();
    for d in devices {
        by_node.entry(d.node.as_str()).or_default().push(d);
    }
    let mut out = String::from("# Written by `flotilla up` from the scenario's cluster.\n");
    for (node, devices) in by_node {
        let _ = writeln!(out, "\n[[nodes]]\nname = {}", toml_str(node));
        for d in devices {
            let _ = writeln!(
                out,
                "[[nodes.devices]]\nmodel = {}\nmemory_mib = {}\nuuid = {}",
                toml_str(&d.model),
                d.memory_mib,
                toml_str(&d.uuid)
            );
        }
    }
    out
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A fault `up` injects on top of the scenario (`--inject KIND@AT[+FOR]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub at: Duration,
    pub kind: InjectionKind,
    /// How long the fault lasts; without it a killed leader stays down.
    pub lasts: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectionKind {
    LeaderLoss,
    RegistryPartition,
}

impl Injection {
    /// `leader-loss@10s`, `leader-loss@10s+20s`, `registry-partition@5s+8s`.
    pub fn parse(text: &str) -> Result<Injection, String> {
        let (kind, when) = text.split_once('@').ok_or_else(|| {
            format!(
                "{text:?}: write KIND@AT[+FOR], e.g. leader-loss@10s or registry-partition@5s+8s"
            )
        })?;
        let kind = match kind {
            "leader-loss" => InjectionKind::LeaderLoss,
            "registry-partition" => InjectionKind::RegistryPartition,
            other => {
                return Err(format!(
                    "{other:?} is not a fault up can inject; use leader-loss or registry-partition"
                ));
            }
        };
        let (at, lasts) = match when.split_once('+') {
            Some((at, lasts)) => (at, Some(lasts)),
            None => (when, None),
        };
        let dur = |t: &str| {
            flotilla_sim::duration::Dur::parse(t)
                .map(|d| Duration::from_micros(d.micros()))
                .map_err(|e| format!("{text:?}: {e}"))
        };
        let injection = Injection {
            at: dur(at)?,
            kind,
            lasts: lasts.map(dur).transpose()?,
        };
        if kind == InjectionKind::RegistryPartition && injection.lasts.is_none() {
            return Err(format!(
                "{text:?}: a registry partition needs its length (+FOR), or nothing could be scheduled again"
            ));
        }
        Ok(injection)
    }

    /// The timed events it stands for.
    pub fn events(&self) -> Vec<TimedEvent> {
        let (start, end) = match self.kind {
            InjectionKind::LeaderLoss => (Action::KillLeader, Action::RestartServers),
            InjectionKind::RegistryPartition => (Action::PauseRegistry, Action::ResumeRegistry),
        };
        let mut out = vec![TimedEvent {
            at: self.at,
            cluster: String::new(),
            action: start,
        }];
        if let Some(lasts) = self.lasts {
            out.push(TimedEvent {
                at: self.at + lasts,
                cluster: String::new(),
                action: end,
            });
        }
        out
    }
}

impl Topology {
    /// Adds injected faults to the scenario's events, keeping them in time order.
    pub fn inject(&mut self, injections: &[Injection]) {
        for i in injections {
            self.events.extend(i.events());
        }
        // Stable: events at the same time keep their order.
        self.events.sort_by_key(|e| e.at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Scenario {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../simulations/scenarios/demo.toml");
        Scenario::load(&path).unwrap()
    }

    fn options() -> TopologyOptions {
        TopologyOptions {
            clusters: None,
            speed: 20.0,
            lease: Duration::from_secs(3),
        }
    }

    #[test]
    fn the_demo_becomes_three_clusters_with_their_events_at_twenty_times_speed() {
        let t = Topology::from_scenario(&demo(), &options()).unwrap();
        let names: Vec<&str> = t.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["use-a", "use-b", "euw-a"]);
        assert_eq!(t.clusters[0].gpus, 16);
        assert_eq!(t.duration, Duration::from_secs(120));
        let first = &t.events[0];
        assert_eq!(first.at, Duration::from_secs(30));
        assert_eq!(first.cluster, "use-a");
        assert_eq!(first.action, Action::Claim { gpus: 8 });
        assert!(t.events.iter().any(|e| e.action == Action::Lose));
        assert_eq!(t.settings.lease_duration, Millis(3_000));
        assert_eq!(t.workloads.len(), 2);
    }

    #[test]
    fn each_fleet_file_names_the_scenarios_devices() {
        let t = Topology::from_scenario(&demo(), &options()).unwrap();
        let fleet = &t.clusters[1].fleet_toml;
        assert_eq!(fleet.matches("[[nodes.devices]]").count(), 8);
        assert!(fleet.contains("model = \"A100\""), "{fleet}");
        let parsed: toml::Value = toml::from_str(fleet).unwrap();
        assert!(parsed.get("nodes").is_some());
    }

    #[test]
    fn fewer_clusters_drop_the_others_events_and_too_many_are_refused() {
        let o = TopologyOptions {
            clusters: Some(2),
            ..options()
        };
        let t = Topology::from_scenario(&demo(), &o).unwrap();
        assert_eq!(t.clusters.len(), 2);
        assert!(t.events.iter().all(|e| e.cluster != "euw-a"));
        let o = TopologyOptions {
            clusters: Some(9),
            ..options()
        };
        let err = Topology::from_scenario(&demo(), &o)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--clusters") && err.contains("3 clusters"),
            "{err}"
        );
    }

    #[test]
    fn injected_faults_parse_and_join_the_timeline_in_order() {
        let mut t = Topology::from_scenario(&demo(), &options()).unwrap();
        let leader = Injection::parse("leader-loss@40s+10s").unwrap();
        assert_eq!(leader.kind, InjectionKind::LeaderLoss);
        t.inject(&[leader]);
        let at: Vec<Duration> = t.events.iter().map(|e| e.at).collect();
        assert!(at.windows(2).all(|w| w[0] <= w[1]), "{at:?}");
        assert!(
            t.events
                .iter()
                .any(|e| e.action == Action::KillLeader && e.at == Duration::from_secs(40))
        );
        assert!(
            t.events
                .iter()
                .any(|e| e.action == Action::RestartServers && e.at == Duration::from_secs(50))
        );
        let err = Injection::parse("registry-partition@5s").unwrap_err();
        assert!(err.contains("+FOR"), "{err}");
        let err = Injection::parse("meteor@5s").unwrap_err();
        assert!(err.contains("leader-loss or registry-partition"), "{err}");
        let err = Injection::parse("leader-loss").unwrap_err();
        assert!(err.contains("KIND@AT"), "{err}");
    }

    #[test]
    fn a_speed_of_zero_is_refused() {
        let o = TopologyOptions {
            speed: 0.0,
            ..options()
        };
        let err = Topology::from_scenario(&demo(), &o)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--speed"), "{err}");
    }
}
