//! Federation files (`flotilla plan`): clusters with their GPU nodes, workloads and
//! settings in TOML, loaded into a registry under a virtual clock, and the real
//! scheduler run on it until it settles, as a dry run in which every replica
//! starts at once. Capacity events (a drain, another tenant taking a cluster's
//! GPUs) then show the moves they cause.

use crate::SimError;
use flotilla_core::fixtures::instant_materializer;
use flotilla_core::{
    ClusterSpec, Command, Entry, Event, Millis, NodeReport, Settings, State, Timestamp, Workload,
    apply, plan,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The most scheduler passes a dry run makes before it gives up on settling.
const MAX_PASSES: usize = 10_000;

/// The federation file: clusters with their GPU nodes, workloads, and settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationFile {
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub clusters: Vec<ClusterEntry>,
    #[serde(default)]
    pub workloads: Vec<Workload>,
}

/// A cluster and its GPU nodes. (Spelled out rather than flattening `ClusterSpec`,
/// so that a typo is reported at its own line.)
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterEntry {
    pub name: String,
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateway_address: String,
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
}

impl ClusterEntry {
    fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            name: self.name.clone(),
            region: self.region.clone(),
            zone: self.zone.clone(),
            labels: self.labels.clone(),
            gateway_address: self.gateway_address.clone(),
            endpoint_ranges: Vec::new(),
        }
    }

    /// Its nodes' reports; with `claimed`, every GPU taken by another tenant.
    fn reports(&self, claimed: bool) -> Vec<NodeReport> {
        self.nodes
            .iter()
            .map(|n| {
                let mut report = n.report(&self.name);
                for d in &mut report.devices {
                    d.claimed_by_other = claimed;
                }
                report
            })
            .collect()
    }
}

/// A node of identical GPUs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub name: String,
    pub gpu: String,
    pub count: u32,
    pub memory_mib: u64,
}

impl NodeEntry {
    fn report(&self, cluster: &str) -> NodeReport {
        // The sample federation's GPUs are the same idle GPUs the tests use.
        flotilla_core::fixtures::gpu_node(
            cluster,
            &self.name,
            &self.gpu,
            self.count,
            self.memory_mib,
        )
    }
}

impl FederationFile {
    /// Parses `text`, read from `source` (named in errors).
    pub fn parse(source: &Path, text: &str) -> Result<FederationFile, SimError> {
        toml::from_str(text).map_err(|e| SimError::Parse {
            path: source.to_owned(),
            message: e.to_string(),
        })
    }
}

/// A registry under a virtual clock, loaded from a federation file, with a
/// materializer that starts replicas at once.
#[derive(Debug)]
pub struct DryRun {
    pub state: State,
    now: Timestamp,
    file: FederationFile,
    source: PathBuf,
}

impl DryRun {
    /// Loads `file` (read from `source`): its settings, clusters with their nodes,
    /// and workloads, each refused with what core said about it.
    pub fn load(source: &Path, file: FederationFile) -> Result<DryRun, SimError> {
        let mut run = DryRun {
            state: State::new(),
            now: Timestamp::ZERO,
            file,
            source: source.to_owned(),
        };
        let settings = run.file.settings.clone();
        run.apply_for("settings", Command::SetSettings { settings })?;
        for c in run.file.clusters.clone() {
            let what = format!("clusters[{:?}]", c.name);
            run.apply_for(&what, Command::RegisterCluster { spec: c.spec() })?;
            let nodes = c.reports(false);
            run.apply_for(
                &format!("{what}.nodes"),
                Command::ReportCapacity {
                    cluster: c.name.clone(),
                    nodes,
                },
            )?;
        }
        for w in run.file.workloads.clone() {
            let what = format!("workloads[{:?}]", w.name);
            if run.state.workload(&w.name).is_some() {
                return Err(SimError::invalid(source, what, "is defined twice"));
            }
            run.apply_for(&what, Command::ApplyWorkload { workload: w })?;
        }
        Ok(run)
    }

    /// Applies `command` at the dry run's time.
    pub fn apply(&mut self, command: Command) -> Result<Vec<Event>, SimError> {
        let what = command.kind();
        self.apply_for(what, command)
    }

    fn apply_for(&mut self, what: &str, command: Command) -> Result<Vec<Event>, SimError> {
        apply(&mut self.state, &Entry::new(self.now, command))
            .map_err(|r| SimError::invalid(&self.source, what, r.to_string()))
    }

    /// Plans, applies and materializes until nothing changes. Returns the events.
    pub fn settle(&mut self) -> Result<Vec<Event>, SimError> {
        let step = self.state.settings().traffic_step_interval.max(Millis(1));
        let mut events = Vec::new();
        for _ in 0..MAX_PASSES {
            self.now = self.now + step;
            let clusters: Vec<String> = self.state.clusters().keys().cloned().collect();
            for cluster in clusters {
                self.apply(Command::Heartbeat { cluster })?;
            }
            let commands = plan(&self.state, self.now);
            for command in &commands {
                events.extend(self.apply(command.clone())?);
            }
            let reports = instant_materializer(&self.state);
            for command in &reports {
                events.extend(self.apply(command.clone())?);
            }
            if commands.is_empty() && reports.is_empty() {
                return Ok(events);
            }
        }
        Err(SimError::invalid(
            &self.source,
            "workloads",
            format!("the scheduler did not settle after {MAX_PASSES} passes"),
        ))
    }

    /// The file's cluster `name`, or an error naming it.
    pub fn cluster(&self, name: &str) -> Result<&ClusterEntry, SimError> {
        self.file
            .clusters
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                SimError::invalid(
                    &self.source,
                    "clusters",
                    format!("cluster {name:?} is not in the federation file"),
                )
            })
    }

    /// Drains cluster `name` and settles.
    pub fn drain(&mut self, name: &str) -> Result<Vec<Event>, SimError> {
        self.cluster(name)?;
        self.apply(Command::Drain {
            cluster: name.to_owned(),
        })?;
        self.settle()
    }

    /// Lets another tenant take every GPU of cluster `name`, and settles.
    pub fn reclaim(&mut self, name: &str) -> Result<Vec<Event>, SimError> {
        let nodes = self.cluster(name)?.reports(true);
        self.apply(Command::ReportCapacity {
            cluster: name.to_owned(),
            nodes,
        })?;
        self.settle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../../deploy/examples/sample-federation.toml");

    #[test]
    fn the_sample_federation_settles_with_every_workload_placed() {
        let source = Path::new("sample-federation.toml");
        let file = FederationFile::parse(source, SAMPLE).unwrap();
        let mut run = DryRun::load(source, file).unwrap();
        run.settle().unwrap();
        for name in run.state.workloads().keys() {
            assert!(run.state.placement(name).is_some(), "{name} is not placed");
        }
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        let source = Path::new("f.toml");
        let err = FederationFile::parse(source, "[[clusters]]\nname = \"a\"\nregoin = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.toml: ") && err.contains("regoin"),
            "{err}"
        );
        let file =
            FederationFile::parse(source, "[[clusters]]\nname = \"A\"\nregion = \"x\"\n").unwrap();
        let err = DryRun::load(source, file).unwrap_err().to_string();
        assert!(err.contains("clusters[\"A\"]"), "{err}");
        let mut run = DryRun::load(source, FederationFile::parse(source, "").unwrap()).unwrap();
        let err = run.drain("nowhere").unwrap_err().to_string();
        assert!(
            err.contains("\"nowhere\" is not in the federation file"),
            "{err}"
        );
    }
}
