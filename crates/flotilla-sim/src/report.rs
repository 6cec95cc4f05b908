//! Report writers: Markdown, CSV time series, SVG plots, and JSON/table summaries.
//!
//! Everything here is a pure function of the [`Outcome`], formatted with fixed
//! precision, so the same scenario and seed give byte-identical files.

use crate::duration::{Dur, MICROS_PER_SEC};
use crate::error::SimError;
use crate::metrics::Summary;
use crate::scenario::PolicyKind;
use crate::{Outcome, RunResult};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Clusters beyond this many are plotted per region instead.
const MAX_PLOTTED_CLUSTERS: usize = 12;

/// Writes `report.md`, `timeseries.csv`, `traffic.csv` and the SVG plots into `dir`.
/// Returns the files written.
pub fn write_report(outcome: &Outcome, dir: &Path) -> Result<Vec<PathBuf>, SimError> {
    std::fs::create_dir_all(dir).map_err(|source| SimError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    let mut put = |name: &str, text: String| -> Result<(), SimError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| SimError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
        Ok(())
    };
    put("report.md", markdown(outcome))?;
    put("timeseries.csv", timeseries_csv(outcome))?;
    put("traffic.csv", traffic_csv(outcome))?;
    for run in &outcome.runs {
        let path = dir.join(format!("traffic-{}.svg", run.summary.policy));
        plot_traffic(outcome, run, &path)?;
        written.push(path);
    }
    let path = dir.join("gpu-utilisation.svg");
    plot_per_policy(
        outcome,
        &path,
        "GPU utilisation (busy batch slots / allocated GPUs)",
        "utilisation",
        |s| s.gpu_utilisation,
    )?;
    written.push(path);
    let path = dir.join("slo-attainment.svg");
    plot_per_policy(
        outcome,
        &path,
        "SLO attainment per interval",
        "attainment",
        |s| {
            if s.arrivals == 0 {
                1.0
            } else {
                (s.slo_met as f64 / s.arrivals as f64).min(1.0)
            }
        },
    )?;
    written.push(path);
    Ok(written)
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

fn ms(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1} s", x / 1000.0)
    } else {
        format!("{x:.1} ms")
    }
}

/// The comparison table, one row per policy (Markdown).
pub fn summary_table(outcome: &Outcome) -> String {
    let mut t = String::new();
    t.push_str("| policy | kind | requests | SLO attainment | TTFT p50 | TTFT p99 | E2E p50 | E2E p99 | GPU util | GPU-hours | moves | replacements | failed |\n");
    t.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &outcome.runs {
        let s = &r.summary;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} ({}) |",
            s.policy,
            s.kind.as_str(),
            s.requests,
            pct(s.slo_attainment),
            ms(s.ttft_p50_ms),
            ms(s.ttft_p99_ms),
            ms(s.e2e_p50_ms),
            ms(s.e2e_p99_ms),
            pct(s.gpu_utilisation),
            s.gpu_hours,
            s.moves,
            s.replacements,
            s.failed,
            pct(if s.requests == 0 {
                0.0
            } else {
                s.failed as f64 / s.requests as f64
            }),
        );
    }
    t
}

/// How the `flotilla` policies compare with the others on SLO attainment.
pub fn comparison(outcome: &Outcome) -> Vec<String> {
    let by_kind = |k: PolicyKind| -> Vec<&Summary> {
        outcome
            .runs
            .iter()
            .map(|r| &r.summary)
            .filter(|s| s.kind == k)
            .collect()
    };
    let mut lines = Vec::new();
    for f in by_kind(PolicyKind::Flotilla) {
        for other in by_kind(PolicyKind::Static)
            .into_iter()
            .chain(by_kind(PolicyKind::FailoverOnly))
        {
            let d = (f.slo_attainment - other.slo_attainment) * 100.0;
            let verdict = if d > 0.005 {
                "beats"
            } else if d < -0.005 {
                "trails"
            } else {
                "ties"
            };
            lines.push(format!(
                "`{}` {verdict} `{}` on SLO attainment by {:+.2} percentage points ({} vs {}); failed requests {} vs {}.",
                f.policy,
                other.policy,
                d,
                pct(f.slo_attainment),
                pct(other.slo_attainment),
                f.failed,
                other.failed,
            ));
        }
    }
    lines
}

/// The Markdown report.
pub fn markdown(outcome: &Outcome) -> String {
    let sc = &outcome.scenario;
    let mut md = String::new();
    let _ = writeln!(md, "# Simulation report: {}\n", sc.name);
    if !sc.description.trim().is_empty() {
        let _ = writeln!(md, "{}\n", sc.description.trim());
    }
    let requests = outcome.runs.first().map_or(0, |r| r.summary.requests);
    let file = sc
        .path
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    let _ = writeln!(
        md,
        "Scenario `{file}`, seed {}, {} of simulated time: {} clusters in {} regions with {} GPUs, {} workloads, {} requests.\n",
        sc.seed,
        Dur(sc.duration),
        sc.clusters.len(),
        sc.regions.len(),
        sc.total_gpus(),
        sc.workloads.len(),
        requests,
    );
    md.push_str("Produced by `flotilla sim`, which drives the real `flotilla-core` scheduler and migration state machine under a virtual clock. The same scenario file and seed reproduce this report byte for byte.\n\n");

    md.push_str("## Results\n\n");
    md.push_str(&summary_table(outcome));
    md.push('\n');
    for line in comparison(outcome) {
        let _ = writeln!(md, "- {line}");
    }
    md.push_str("\nSLO attainment counts requests that completed within their model's TTFT and end-to-end objectives, over all requests (failed ones are misses). GPU utilisation is busy batch slots over allocated GPU time; GPU-hours is the GPU time held by replicas, starting and draining ones included. Moves are planned make-before-break migrations; replacements are replicas started after the initial placement that replace nothing.\n\n");

    md.push_str("## Per policy\n\n");
    for r in &outcome.runs {
        per_policy(&mut md, outcome, r);
    }

    if let Some(r) = outcome.runs.first()
        && !r.timeline.is_empty()
    {
        md.push_str("## Capacity events\n\n| time | cluster | event |\n|---:|---|---|\n");
        for (at, cluster, what) in &r.timeline {
            let _ = writeln!(md, "| {} | {cluster} | {what} |", Dur(*at));
        }
        md.push('\n');
    }

    md.push_str("## Plots\n\n");
    for r in &outcome.runs {
        let _ = writeln!(
            md,
            "![Traffic share, {0}](traffic-{0}.svg)\n",
            r.summary.policy
        );
    }
    md.push_str(
        "![GPU utilisation](gpu-utilisation.svg)\n\n![SLO attainment](slo-attainment.svg)\n\n",
    );

    md.push_str("## How the policies are defined\n\n");
    md.push_str("All policies start alike: the clusters register and report their GPUs, the workloads are applied, and one full pass of the real scheduler (`plan` at t = 0) is applied: the initial placement.\n\n");
    md.push_str("- `static`: never runs the scheduler again. Only agents' capacity reports and heartbeats and materializers' phase reports reach the registry. Lost replicas stay lost.\n");
    md.push_str("- `failover-only`: runs the scheduler every tick but applies only `MarkUnreachable`, housekeeping `SetReplicaPhase Gone`, and `StartReplica` without `replaces` for a workload while it has replicas lost to a cluster loss not yet replaced. Planned moves, traffic shifts, drains, preemptions and replacements of replicas lost to GPU loss are withheld: what Karmada-style cluster failover does.\n");
    md.push_str("- `flotilla`: runs the scheduler every tick and applies everything it proposes, with the settings listed above.\n\n");
    md.push_str("## Request model\n\n");
    md.push_str("Requests arrive at the gateway of their origin region and follow the route table: clusters of the origin region first, in the proportion their route weight bears to their full weight, the rest to other regions by route weight, plus the WAN round trip between the regions. Dead clusters get nothing (gateway health checks). In a cluster the least-loaded Ready replica takes the request. A replica serves `max_batch` requests at once; others queue in FIFO order. TTFT = queueing + prompt/prefill_tps + RTT; end-to-end = TTFT + output/decode_tps. Requests on a replica that dies fail; a request that queued longer than the request timeout fails.\n\n");

    md.push_str("## Data\n\n");
    md.push_str("- `timeseries.csv`: `policy,time_s,arrivals,completed,failed,slo_met,slo_attainment,gpu_utilisation,gpus_allocated,ready_replicas`, one row per policy and sample interval (");
    let _ = writeln!(md, "{}).", Dur(sc.sample_interval));
    md.push_str("- `traffic.csv`: `policy,time_s,cluster,region,requests,share`, requests routed to each cluster per interval (rows with no requests left out).\n");

    if !sc.traces.is_empty() {
        md.push_str("\n## Attribution\n\n");
        md.push_str("The request load replays the Azure LLM inference trace from the Azure Public Dataset (Azure/AzurePublicDataset), licensed CC-BY 4.0: Pratyush Patel, Esha Choukse, Chaojie Zhang, Aashaka Shah, Íñigo Goiri, Saeed Maleki, Ricardo Bianchini. \"Splitwise: Efficient generative LLM inference using phase splitting\", ISCA 2024.\n");
    }
    md
}

fn per_policy(md: &mut String, outcome: &Outcome, r: &RunResult) {
    let s = &r.summary;
    let _ = writeln!(md, "### {} (`{}`)\n", s.policy, s.kind.as_str());
    if let Some(p) = outcome
        .scenario
        .policies
        .iter()
        .find(|p| p.name == s.policy)
    {
        let st = &p.settings;
        let _ = writeln!(
            md,
            "Settings: tick {}, placement {:?}, hysteresis {}, traffic step {}% every {}, drain deadline {}, lease {}, start deadline {}, at most {} moves at once, preemption {}.\n",
            Dur(p.tick),
            st.placement_policy,
            st.hysteresis,
            st.traffic_step_pct,
            st.traffic_step_interval,
            st.drain_deadline,
            st.lease_duration,
            st.start_deadline,
            st.max_concurrent_moves,
            if st.preemption { "on" } else { "off" },
        );
    }
    md.push_str("| model | requests | completed | failed | SLO met | SLO attainment |\n|---|---:|---:|---:|---:|---:|\n");
    for m in s.models.iter().filter(|m| m.requests > 0) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            m.model,
            m.requests,
            m.completed,
            m.failed,
            m.slo_met,
            pct(m.slo_met as f64 / m.requests as f64)
        );
    }
    let causes: Vec<String> = s
        .failed_by_reason
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        md,
        "\nFailed requests by cause: {}. Replicas lost: {}. Scheduler commands applied {}, rejected {}, withheld by the policy {}.\n",
        causes.join(", "),
        s.replicas_lost,
        s.commands_applied,
        s.commands_rejected,
        s.commands_withheld,
    );
}

fn time_s(at: u64) -> String {
    let whole = at / MICROS_PER_SEC;
    let frac = at % MICROS_PER_SEC;
    if frac == 0 {
        format!("{whole}")
    } else {
        format!("{whole}.{:03}", frac / 1000)
    }
}

/// The time series, one row per policy and sample.
pub fn timeseries_csv(outcome: &Outcome) -> String {
    let mut csv = String::from(
        "policy,time_s,arrivals,completed,failed,slo_met,slo_attainment,gpu_utilisation,gpus_allocated,ready_replicas\n",
    );
    for r in &outcome.runs {
        for s in &r.samples {
            let att = if s.arrivals == 0 {
                String::new()
            } else {
                format!("{:.4}", s.slo_met as f64 / s.arrivals as f64)
            };
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{:.4},{},{}",
                r.summary.policy,
                time_s(s.at),
                s.arrivals,
                s.completed,
                s.failed,
                s.slo_met,
                att,
                s.gpu_utilisation,
                s.gpus_allocated,
                s.ready_replicas
            );
        }
    }
    csv
}

/// Requests routed to each cluster per interval.
pub fn traffic_csv(outcome: &Outcome) -> String {
    let sc = &outcome.scenario;
    let mut csv = String::from("policy,time_s,cluster,region,requests,share\n");
    for r in &outcome.runs {
        for s in &r.samples {
            let total: u64 = s.routed.iter().sum();
            for (c, &n) in s.routed.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let _ = writeln!(
                    csv,
                    "{},{},{},{},{},{:.4}",
                    r.summary.policy,
                    time_s(s.at),
                    sc.clusters[c].spec.name,
                    sc.regions[sc.clusters[c].region],
                    n,
                    n as f64 / total as f64
                );
            }
        }
    }
    csv
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> SimError {
    SimError::Plot {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

fn line_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    x_max: f64,
    series: &Series,
) -> Result<(), SimError> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (960, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max.max(1e-9), 0f64..1.05f64)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("time (minutes)")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_error(path, e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))?;
    Ok(())
}

fn minutes(at: u64) -> f64 {
    at as f64 / 60e6
}

/// Traffic share per cluster (or per region, for large fleets) over time.
fn plot_traffic(outcome: &Outcome, run: &RunResult, path: &Path) -> Result<(), SimError> {
    let sc = &outcome.scenario;
    let by_region = sc.clusters.len() > MAX_PLOTTED_CLUSTERS;
    let groups: Vec<String> = if by_region {
        sc.regions.clone()
    } else {
        sc.clusters.iter().map(|c| c.spec.name.clone()).collect()
    };
    let group_of = |c: usize| if by_region { sc.clusters[c].region } else { c };
    let mut series: Series = groups.iter().map(|g| (g.clone(), Vec::new())).collect();
    for s in &run.samples {
        let total: u64 = s.routed.iter().sum();
        let mut shares = vec![0u64; groups.len()];
        for (c, &n) in s.routed.iter().enumerate() {
            shares[group_of(c)] += n;
        }
        for (g, n) in shares.into_iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            };
            series[g].1.push((minutes(s.at), share));
        }
    }
    series.retain(|(_, pts)| pts.iter().any(|p| p.1 > 0.0));
    let x_max = minutes(run.samples.last().map_or(sc.duration, |s| s.at));
    let what = if by_region { "region" } else { "cluster" };
    line_chart(
        path,
        &format!("Traffic share per {what}: {}", run.summary.policy),
        "share of requests",
        x_max,
        &series,
    )
}

fn plot_per_policy(
    outcome: &Outcome,
    path: &Path,
    title: &str,
    y_desc: &str,
    value: impl Fn(&crate::Sample) -> f64,
) -> Result<(), SimError> {
    let series: Series = outcome
        .runs
        .iter()
        .map(|r| {
            (
                r.summary.policy.clone(),
                r.samples
                    .iter()
                    .map(|s| (minutes(s.at), value(s)))
                    .collect(),
            )
        })
        .collect();
    let x_max = outcome
        .runs
        .iter()
        .filter_map(|r| r.samples.last())
        .map(|s| minutes(s.at))
        .fold(0.0, f64::max);
    line_chart(path, title, y_desc, x_max, &series)
}

/// The summaries as pretty JSON.
pub fn json(outcome: &Outcome) -> String {
    let summaries: Vec<&Summary> = outcome.runs.iter().map(|r| &r.summary).collect();
    let value = serde_json::json!({
        "scenario": outcome.scenario.name,
        "seed": outcome.scenario.seed,
        "policies": summaries,
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}
