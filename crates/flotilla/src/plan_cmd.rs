//! `flotilla plan`: the scheduler on a federation file, as a dry run.
//!
//! It loads clusters, GPUs and workloads from a TOML file into a registry, runs the
//! real scheduler until it settles (assuming every replica starts at once), and prints
//! the placements and the route table. `--drain` and `--reclaim` then play a capacity
//! event and show the make-before-break moves it causes.

use crate::table;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use flotilla_core::fixtures::instant_materializer;
use flotilla_core::{
    ClusterSpec, Command, Entry, Event, Millis, NodeReport, Phase, Settings, State, Timestamp,
    Workload, apply, plan,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

const SAMPLE: &str = include_str!("../../../deploy/examples/sample-federation.toml");

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// Federation file (TOML). Without one, the bundled sample federation is used.
    #[arg(long, short = 'f', value_name = "FILE")]
    federation: Option<PathBuf>,
    /// After settling, drain this cluster and show the moves (repeatable).
    #[arg(long, value_name = "CLUSTER")]
    drain: Vec<String>,
    /// After settling, let another tenant take every GPU of this cluster (repeatable).
    #[arg(long, value_name = "CLUSTER")]
    reclaim: Vec<String>,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// The federation file: clusters with their GPU nodes, workloads, and settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FederationFile {
    #[serde(default)]
    settings: Settings,
    #[serde(default)]
    clusters: Vec<ClusterEntry>,
    #[serde(default)]
    workloads: Vec<Workload>,
}

/// A cluster and its GPU nodes. (Spelled out rather than flattening `ClusterSpec`,
/// so that a typo is reported at its own line.)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterEntry {
    name: String,
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    gateway_address: String,
    #[serde(default)]
    nodes: Vec<NodeEntry>,
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
}

/// A node of identical GPUs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    name: String,
    gpu: String,
    count: u32,
    memory_mib: u64,
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

/// A registry under a virtual clock, with a materializer that starts replicas at once.
struct DryRun {
    state: State,
    now: Timestamp,
    file: FederationFile,
}

impl DryRun {
    fn apply(&mut self, command: Command) -> Result<Vec<Event>> {
        let kind = command.kind();
        apply(&mut self.state, &Entry::new(self.now, command))
            .with_context(|| format!("{kind} refused"))
    }

    /// Plans, applies and materializes until nothing changes. Returns the events.
    fn settle(&mut self) -> Result<Vec<Event>> {
        let step = self.state.settings().traffic_step_interval.max(Millis(1));
        let mut events = Vec::new();
        for _ in 0..10_000 {
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
        bail!("the scheduler did not settle after 10,000 passes")
    }

    fn cluster_entry(&self, name: &str) -> Result<&ClusterEntry> {
        self.file
            .clusters
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("cluster {name:?} is not in the federation file"))
    }
}

#[derive(Debug, Serialize)]
struct PlacementRow {
    workload: String,
    model: String,
    cluster: String,
    region: String,
    replicas: u32,
    phase: &'static str,
    gpus: u32,
}

#[derive(Debug, Serialize)]
struct RouteRow {
    model: String,
    cluster: String,
    weight: u32,
    share_pct: f64,
}

#[derive(Debug, Serialize)]
struct MoveRow {
    workload: String,
    from: String,
    to: String,
    reason: &'static str,
}

#[derive(Debug, Serialize)]
struct Report {
    stage: String,
    placements: Vec<PlacementRow>,
    unplaced: Vec<String>,
    routes: Vec<RouteRow>,
    moves: Vec<MoveRow>,
    /// What the scheduler could not do, e.g. replicas left in a draining cluster.
    notes: Vec<String>,
}

fn report(stage: String, state: &State, events: &[Event]) -> Report {
    let mut placements = Vec::new();
    let mut unplaced = Vec::new();
    for (name, w) in state.workloads() {
        let p = state.placement(name);
        let mut groups: BTreeMap<(String, Phase), (u32, u32)> = BTreeMap::new();
        for r in p.into_iter().flat_map(|p| p.replicas.values()) {
            let g = groups.entry((r.cluster.clone(), r.phase)).or_default();
            g.0 += 1;
            g.1 += r.devices.len() as u32;
        }
        let placed: u32 = groups.values().map(|g| g.0).sum();
        if placed < w.replicas.max {
            unplaced.push(format!(
                "{name}: {placed} of {} replicas placed",
                w.replicas.max
            ));
        }
        for ((cluster, phase), (replicas, gpus)) in groups {
            placements.push(PlacementRow {
                workload: name.clone(),
                model: w.model.clone(),
                region: state
                    .cluster(&cluster)
                    .map(|c| c.region().to_owned())
                    .unwrap_or_default(),
                cluster,
                replicas,
                phase: phase.as_str(),
                gpus,
            });
        }
    }
    let routes = state
        .routes()
        .routes
        .values()
        .flat_map(|r| {
            r.endpoints.iter().map(move |e| RouteRow {
                model: r.model.clone(),
                cluster: e.cluster.clone(),
                weight: e.weight,
                share_pct: (r.share(&e.cluster) * 1000.0).round() / 10.0,
            })
        })
        .collect();
    let moves = events
        .iter()
        .filter_map(|e| match e {
            Event::MigrationStarted {
                workload,
                from,
                to,
                reason,
                ..
            } => Some(MoveRow {
                workload: workload.clone(),
                from: from.clone(),
                to: to.clone(),
                reason: reason.as_str(),
            }),
            _ => None,
        })
        .collect();
    let mut notes = Vec::new();
    for (name, c) in state.clusters() {
        let stuck: Vec<String> = state
            .placements()
            .iter()
            .flat_map(|(w, p)| p.replicas.values().map(move |r| (w, r)))
            .filter(|(_, r)| r.cluster == *name && r.is_active() && (c.draining || r.evicted))
            .map(|(w, r)| format!("{w}/{}", r.id))
            .collect();
        if !stuck.is_empty() {
            notes.push(format!(
                "{} replica(s) must leave {name} but no other cluster has room: {}",
                stuck.len(),
                stuck.join(", ")
            ));
        }
    }
    Report {
        stage,
        placements,
        unplaced,
        routes,
        moves,
        notes,
    }
}

fn print(r: &Report) {
    println!("== {}", r.stage);
    if !r.moves.is_empty() {
        let rows: Vec<Vec<String>> = r
            .moves
            .iter()
            .map(|m| {
                vec![
                    m.workload.clone(),
                    m.from.clone(),
                    m.to.clone(),
                    m.reason.to_owned(),
                ]
            })
            .collect();
        println!("\nMoves (make-before-break: target Ready, traffic shifted, then source drained)");
        print!(
            "{}",
            table::render(&["WORKLOAD", "FROM", "TO", "REASON"], &rows)
        );
    }
    let rows: Vec<Vec<String>> = r
        .placements
        .iter()
        .map(|p| {
            vec![
                p.workload.clone(),
                p.model.clone(),
                p.cluster.clone(),
                p.region.clone(),
                p.replicas.to_string(),
                p.phase.to_owned(),
                p.gpus.to_string(),
            ]
        })
        .collect();
    println!("\nPlacements");
    print!(
        "{}",
        table::render(
            &[
                "WORKLOAD", "MODEL", "CLUSTER", "REGION", "REPLICAS", "PHASE", "GPUS"
            ],
            &rows
        )
    );
    for u in &r.unplaced {
        println!("  not fully placed: {u}");
    }
    for note in &r.notes {
        println!("  {note}");
    }
    let rows: Vec<Vec<String>> = r
        .routes
        .iter()
        .map(|x| {
            vec![
                x.model.clone(),
                x.cluster.clone(),
                x.weight.to_string(),
                format!("{:.1}%", x.share_pct),
            ]
        })
        .collect();
    println!("\nRoutes");
    print!(
        "{}",
        table::render(&["MODEL", "CLUSTER", "WEIGHT", "SHARE"], &rows)
    );
    println!();
}

pub(crate) fn run(args: PlanArgs) -> Result<()> {
    let (text, source) = match &args.federation {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("reading federation file {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            SAMPLE.to_owned(),
            "the bundled sample federation".to_owned(),
        ),
    };
    let file: FederationFile =
        toml::from_str(&text).with_context(|| format!("parsing {source}"))?;
    let mut run = DryRun {
        state: State::new(),
        now: Timestamp::ZERO,
        file: FederationFile {
            settings: file.settings.clone(),
            clusters: Vec::new(),
            workloads: Vec::new(),
        },
    };
    run.apply(Command::SetSettings {
        settings: file.settings.clone(),
    })
    .with_context(|| format!("{source}: [settings]"))?;
    for c in &file.clusters {
        let name = c.name.clone();
        run.apply(Command::RegisterCluster { spec: c.spec() })
            .with_context(|| format!("{source}: cluster {name:?}"))?;
        let nodes = c.nodes.iter().map(|n| n.report(&name)).collect();
        run.apply(Command::ReportCapacity {
            cluster: name.clone(),
            nodes,
        })
        .with_context(|| format!("{source}: nodes of cluster {name:?}"))?;
    }
    for w in &file.workloads {
        if run.state.workload(&w.name).is_some() {
            bail!("{source}: workload {:?} is defined twice", w.name);
        }
        run.apply(Command::ApplyWorkload {
            workload: w.clone(),
        })
        .with_context(|| format!("{source}: workload {:?}", w.name))?;
    }
    run.file = file;
    for name in args.drain.iter().chain(&args.reclaim) {
        run.cluster_entry(name)?;
    }

    let mut reports = Vec::new();
    let events = run.settle()?;
    reports.push(report(
        format!("Placements for {source} (dry run: replicas start at once)"),
        &run.state,
        &events,
    ));
    for name in &args.drain {
        run.apply(Command::Drain {
            cluster: name.clone(),
        })?;
        let events = run.settle()?;
        reports.push(report(
            format!("After draining cluster {name}"),
            &run.state,
            &events,
        ));
    }
    for name in &args.reclaim {
        let entry = run.cluster_entry(name)?;
        let nodes: Vec<NodeReport> = entry
            .nodes
            .iter()
            .map(|n| {
                let mut report = n.report(name);
                for d in &mut report.devices {
                    d.claimed_by_other = true;
                }
                report
            })
            .collect();
        run.apply(Command::ReportCapacity {
            cluster: name.clone(),
            nodes,
        })?;
        let events = run.settle()?;
        reports.push(report(
            format!("After another tenant took every GPU of {name}"),
            &run.state,
            &events,
        ));
    }
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        Output::Table => reports.iter().for_each(print),
    }
    Ok(())
}
