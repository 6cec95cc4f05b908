//! `flotilla plan`: the scheduler on a federation file, as a dry run.
//!
//! It loads clusters, GPUs and workloads from a TOML file into a registry, runs the
//! real scheduler until it settles (assuming every replica starts at once), and prints
//! the placements and the route table. `--drain` and `--reclaim` then play a capacity
//! event and show the make-before-break moves it causes.

use crate::table;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use flotilla_core::{Event, Phase, State};
use flotilla_sim::federation::{DryRun, FederationFile};
use serde::Serialize;
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
            path.clone(),
        ),
        None => (
            SAMPLE.to_owned(),
            PathBuf::from("the bundled sample federation"),
        ),
    };
    let file = FederationFile::parse(&source, &text)?;
    let mut run = DryRun::load(&source, file)?;
    for name in args.drain.iter().chain(&args.reclaim) {
        run.cluster(name)?;
    }

    let mut reports = Vec::new();
    let events = run.settle()?;
    reports.push(report(
        format!(
            "Placements for {} (dry run: replicas start at once)",
            source.display()
        ),
        &run.state,
        &events,
    ));
    for name in &args.drain {
        let events = run.drain(name)?;
        reports.push(report(
            format!("After draining cluster {name}"),
            &run.state,
            &events,
        ));
    }
    for name in &args.reclaim {
        let events = run.reclaim(name)?;
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
