//! The end-of-run summary: what moved, how fast traffic followed, what was served and
//! what failed. Pure: computed from the load records, the moves the observer saw and
//! the capacity events played.

use crate::load::Record;
use crate::observe::MoveSeen;
use crate::topology::TimedEvent;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoveReport {
    pub workload: String,
    pub model: String,
    pub replica: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    /// "done", "rolled back" or "in progress".
    pub outcome: String,
    /// The capacity event the move answered (seconds into the run), if one came
    /// before it on the source cluster.
    pub event_at_s: Option<f64>,
    /// From the event (or the move's start) to the target being Ready: mostly the
    /// model's own start-up time.
    pub target_ready_after_s: Option<f64>,
    /// From the event to the last new request the source served, once the target
    /// serves: the time traffic took to follow.
    pub traffic_followed_after_s: Option<f64>,
}

/// How often one kind of failure happened, and when (seconds into the run).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FailureCount {
    pub count: u64,
    pub first_s: f64,
    pub last_s: f64,
}

/// What a lost cluster cost each model: requests from the surviving clusters that
/// failed after the loss, and when the last of them started.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutageReport {
    pub cluster: String,
    pub event_at_s: f64,
    pub model: String,
    pub failed: u64,
    /// From the loss to the start of the last failed request: after this, every
    /// request was served elsewhere. 0 when none failed.
    pub rerouted_after_s: f64,
}

/// One process's resident memory when the load started and when it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessMemory {
    /// `CLUSTER ROLE`, e.g. `use-a server`.
    pub process: String,
    pub start_mib: Option<f64>,
    pub end_mib: Option<f64>,
}

/// Pairs the samples taken at the start and at the end, by process.
pub fn process_memory(
    start: &BTreeMap<String, u64>,
    end: &BTreeMap<String, u64>,
) -> Vec<ProcessMemory> {
    let mib = |b: &u64| (*b as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0;
    let names: std::collections::BTreeSet<&String> = start.keys().chain(end.keys()).collect();
    names
        .into_iter()
        .map(|name| ProcessMemory {
            process: name.clone(),
            start_mib: start.get(name).map(mib),
            end_mib: end.get(name).map(mib),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub ran_for_s: f64,
    pub requests: u64,
    pub failed: u64,
    pub streamed: u64,
    pub streams_failed: u64,
    /// Whole-request latency of the successful requests, as the client saw it.
    pub latency_p50_s: Option<f64>,
    pub latency_p99_s: Option<f64>,
    /// Successful requests by the cluster that served them.
    pub served_by_cluster: BTreeMap<String, u64>,
    /// Failed requests by what went wrong (first 100 characters of the error).
    pub failures: BTreeMap<String, FailureCount>,
    pub moves: Vec<MoveReport>,
    pub outages: Vec<OutageReport>,
    /// Resident memory of every server, agent and gateway, at the start of the load
    /// and at its end (empty where `/proc` cannot be read).
    pub memory: Vec<ProcessMemory>,
    /// With `--chaos`: the faults and what the checks found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos: Option<crate::chaos::ChaosReport>,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

pub fn summarize(
    scenario: &str,
    ran_for: Duration,
    records: &[Record],
    moves: &[MoveSeen],
    events: &[TimedEvent],
) -> Summary {
    let mut served_by_cluster: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures: BTreeMap<String, FailureCount> = BTreeMap::new();
    let (mut failed, mut streamed, mut streams_failed) = (0, 0, 0);
    for r in records {
        streamed += u64::from(r.streamed);
        if r.ok {
            let by = r.served_by.clone().unwrap_or_else(|| "?".into());
            *served_by_cluster.entry(by).or_default() += 1;
        } else {
            failed += 1;
            streams_failed += u64::from(r.streamed);
            let why = r
                .error
                .clone()
                .unwrap_or_else(|| format!("HTTP {}", r.status));
            let at = secs(r.started);
            let f = failures
                .entry(why.chars().take(100).collect())
                .or_insert(FailureCount {
                    count: 0,
                    first_s: at,
                    last_s: at,
                });
            f.count += 1;
            f.first_s = f.first_s.min(at);
            f.last_s = f.last_s.max(at);
        }
    }
    let moves = moves
        .iter()
        .map(|m| report_move(m, records, events))
        .collect();
    let outages = report_outages(records, events);
    let mut latencies: Vec<Duration> = records
        .iter()
        .filter(|r| r.ok)
        .map(|r| r.finished.saturating_sub(r.started))
        .collect();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len().saturating_sub(1)) as f64 * p).round() as usize;
        latencies.get(i).copied().map(secs)
    };
    Summary {
        scenario: scenario.to_owned(),
        ran_for_s: secs(ran_for),
        requests: records.len() as u64,
        failed,
        streamed,
        streams_failed,
        latency_p50_s: pct(0.5),
        latency_p99_s: pct(0.99),
        served_by_cluster,
        failures,
        moves,
        outages,
        memory: Vec::new(),
        chaos: None,
    }
}

fn report_outages(records: &[Record], events: &[TimedEvent]) -> Vec<OutageReport> {
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if e.action != crate::topology::Action::Lose {
            continue;
        }
        // Until the cluster is back (or the run ends).
        let end = events
            .iter()
            .skip(i + 1)
            .find(|r| r.cluster == e.cluster && r.action == crate::topology::Action::Recover)
            .map_or(Duration::MAX, |r| r.at);
        let mut models: BTreeMap<&str, (u64, Duration)> = BTreeMap::new();
        for r in records {
            if r.started < e.at || r.started >= end || r.origin == e.cluster {
                continue;
            }
            let m = models
                .entry(r.model.as_str())
                .or_insert((0, Duration::ZERO));
            if !r.ok {
                m.0 += 1;
                m.1 = m.1.max(r.started - e.at);
            }
        }
        for (model, (failed, last)) in models {
            out.push(OutageReport {
                cluster: e.cluster.clone(),
                event_at_s: secs(e.at),
                model: model.to_owned(),
                failed,
                rerouted_after_s: secs(last),
            });
        }
    }
    out
}

fn report_move(m: &MoveSeen, records: &[Record], events: &[TimedEvent]) -> MoveReport {
    let event_at = events
        .iter()
        .filter(|e| e.cluster == m.source_cluster && e.at <= m.seen_at)
        .map(|e| e.at)
        .max();
    let from = event_at.unwrap_or(m.seen_at);
    let source = m.source.to_string();
    let target = m.target.to_string();
    let served = |replica: &str, cluster: &str, r: &&Record| {
        r.ok && r.model == m.model
            && r.replica.as_deref() == Some(replica)
            && r.served_by.as_deref() == Some(cluster)
    };
    let target_served = records
        .iter()
        .any(|r| served(&target, &m.target_cluster, &r));
    let last_to_source = records
        .iter()
        .filter(|r| r.started >= from && served(&source, &m.source_cluster, r))
        .map(|r| r.started)
        .max();
    // Only a finished move has followed: until then the source may still serve.
    let followed = (target_served && m.ended_at.is_some() && !m.rolled_back)
        .then(|| last_to_source.unwrap_or(from).saturating_sub(from));
    MoveReport {
        workload: m.workload.clone(),
        model: m.model.clone(),
        replica: source,
        from: m.source_cluster.clone(),
        to: m.target_cluster.clone(),
        reason: m.reason.as_str().to_owned(),
        outcome: match (m.ended_at, m.rolled_back) {
            (None, _) => "in progress",
            (Some(_), false) => "done",
            (Some(_), true) => "rolled back",
        }
        .to_owned(),
        event_at_s: event_at.map(secs),
        target_ready_after_s: m.target_ready_at.map(|t| secs(t.saturating_sub(from))),
        traffic_followed_after_s: followed.map(secs),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{s:.2}s"))
}

impl Summary {
    /// For people: a few lines and a table of moves.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Scenario {:?} ran for {:.1}s: {} requests, {} failed ({} streamed, {} of them failed).",
            self.scenario,
            self.ran_for_s,
            self.requests,
            self.failed,
            self.streamed,
            self.streams_failed
        );
        if let (Some(p50), Some(p99)) = (self.latency_p50_s, self.latency_p99_s) {
            let _ = writeln!(
                out,
                "Latency of successful requests: p50 {p50:.3}s, p99 {p99:.3}s."
            );
        }
        let by: Vec<String> = self
            .served_by_cluster
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        let _ = writeln!(out, "Served by cluster: {}.", by.join(", "));
        if self.moves.is_empty() {
            let _ = writeln!(out, "No moves.");
        } else {
            let _ = writeln!(out, "\n{} moves:", self.moves.len());
            let _ = writeln!(
                out,
                "  {:<12} {:<7} {:<10} {:<10} {:<13} {:<12} {:>9} {:>11} {:>15}",
                "WORKLOAD",
                "REPLICA",
                "FROM",
                "TO",
                "REASON",
                "OUTCOME",
                "EVENT AT",
                "TARGET UP",
                "TRAFFIC FOLLOWED"
            );
            for m in &self.moves {
                let _ = writeln!(
                    out,
                    "  {:<12} {:<7} {:<10} {:<10} {:<13} {:<12} {:>9} {:>11} {:>15}",
                    m.workload,
                    m.replica,
                    m.from,
                    m.to,
                    m.reason,
                    m.outcome,
                    opt(m.event_at_s),
                    opt(m.target_ready_after_s),
                    opt(m.traffic_followed_after_s)
                );
            }
        }
        for o in &self.outages {
            let _ = writeln!(
                out,
                "Cluster {} lost at {:.1}s: {} requests for {} failed elsewhere; all served again after {:.2}s.",
                o.cluster, o.event_at_s, o.failed, o.model, o.rerouted_after_s
            );
        }
        if !self.memory.is_empty() {
            let _ = writeln!(
                out,
                "\nResident memory (MiB), at the start and at the end of the load:"
            );
            for m in &self.memory {
                let _ = writeln!(
                    out,
                    "  {:<20} {:>8} {:>8}",
                    m.process,
                    m.start_mib
                        .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
                    m.end_mib
                        .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
                );
            }
        }
        if let Some(c) = &self.chaos {
            out.push_str(&c.render());
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "\nFailures:");
            for (why, f) in &self.failures {
                let _ = writeln!(
                    out,
                    "  {:>5}  {why}  (between {:.1}s and {:.1}s)",
                    f.count, f.first_s, f.last_s
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Action;
    use flotilla_core::{MoveReason, ReplicaId};

    fn record(at_ms: u64, cluster: &str, replica: &str, ok: bool) -> Record {
        Record {
            started: Duration::from_millis(at_ms),
            finished: Duration::from_millis(at_ms + 300),
            origin: "a".into(),
            model: "m".into(),
            streamed: at_ms.is_multiple_of(2),
            status: if ok { 200 } else { 503 },
            served_by: ok.then(|| cluster.to_owned()),
            replica: ok.then(|| replica.to_owned()),
            ok,
            error: (!ok).then(|| "no ready replica".to_owned()),
        }
    }

    fn a_move() -> MoveSeen {
        MoveSeen {
            workload: "chat".into(),
            model: "m".into(),
            source: ReplicaId(1),
            source_cluster: "a".into(),
            target: ReplicaId(2),
            target_cluster: "b".into(),
            reason: MoveReason::Reclaimed,
            seen_at: Duration::from_millis(10_200),
            target_ready_at: Some(Duration::from_millis(12_000)),
            ended_at: Some(Duration::from_millis(15_000)),
            rolled_back: false,
        }
    }

    #[test]
    fn traffic_follows_when_the_source_serves_its_last_new_request() {
        let records = vec![
            record(9_000, "a", "r1", true),
            record(11_000, "a", "r1", true),
            record(13_500, "a", "r1", true),
            record(14_000, "b", "r2", true),
            record(16_000, "b", "r2", true),
        ];
        let events = vec![TimedEvent {
            at: Duration::from_secs(10),
            cluster: "a".into(),
            action: Action::Claim { gpus: 8 },
        }];
        let s = summarize(
            "demo",
            Duration::from_secs(20),
            &records,
            &[a_move()],
            &events,
        );
        let m = &s.moves[0];
        assert_eq!(m.event_at_s, Some(10.0));
        assert_eq!(m.target_ready_after_s, Some(2.0));
        assert_eq!(m.traffic_followed_after_s, Some(3.5));
        assert_eq!(m.outcome, "done");
        assert_eq!((s.requests, s.failed), (5, 0));
        assert_eq!(s.served_by_cluster.get("b"), Some(&2));
    }

    #[test]
    fn a_lost_cluster_costs_the_requests_that_failed_before_traffic_went_elsewhere() {
        let records = vec![
            record(9_000, "b", "r1", true),
            record(10_500, "b", "r1", false),
            record(12_000, "b", "r1", false),
            record(13_000, "b", "r3", true),
        ];
        let events = vec![TimedEvent {
            at: Duration::from_secs(10),
            cluster: "x".into(),
            action: Action::Lose,
        }];
        let s = summarize("demo", Duration::from_secs(20), &records, &[], &events);
        assert_eq!(s.outages.len(), 1);
        assert_eq!(s.outages[0].failed, 2);
        assert_eq!(s.outages[0].rerouted_after_s, 2.0);
    }

    #[test]
    fn a_move_whose_target_never_served_has_no_follow_time() {
        let records = vec![
            record(11_000, "a", "r1", true),
            record(12_000, "a", "r1", false),
        ];
        let s = summarize("demo", Duration::from_secs(20), &records, &[a_move()], &[]);
        assert_eq!(s.moves[0].traffic_followed_after_s, None);
        assert_eq!(s.moves[0].event_at_s, None);
        assert_eq!(s.failed, 1);
        assert_eq!(s.failures.get("no ready replica").map(|f| f.count), Some(1));
        assert!(s.render().contains("1 failed"));
    }

    #[test]
    fn memory_pairs_start_and_end_by_process_and_keeps_ones_seen_only_once() {
        let mib = |n: u64| n * 1024 * 1024;
        let start = BTreeMap::from([
            ("a server".to_owned(), mib(24)),
            ("a agent".to_owned(), mib(18)),
        ]);
        let end = BTreeMap::from([
            ("a server".to_owned(), mib(26)),
            ("b server".to_owned(), mib(25)),
        ]);
        let m = process_memory(&start, &end);
        let row = |p: &str| m.iter().find(|r| r.process == p).cloned();
        assert_eq!(
            row("a server").map(|r| (r.start_mib, r.end_mib)),
            Some((Some(24.0), Some(26.0)))
        );
        assert_eq!(row("a agent").map(|r| r.end_mib), Some(None), "it stopped");
        assert_eq!(
            row("b server").map(|r| r.start_mib),
            Some(None),
            "restarted later"
        );
    }
}
