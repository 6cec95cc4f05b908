//! What a run measures: per-request outcomes, GPU time, scheduler activity, and a time
//! series sampled at the scenario's `sample_interval`.

use crate::duration::Micros;
use crate::load::Request;
use crate::scenario::{PolicyDef, PolicyKind, Scenario};
use serde::Serialize;
use std::collections::BTreeMap;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailReason {
    /// No Ready replica of its model in any reachable cluster.
    NoRoute,
    /// Its replica died (GPU lost, cluster lost) while it queued or ran.
    ReplicaLost,
    /// Its replica was released at the drain deadline (or rolled back) with it aboard.
    DrainDeadline,
    /// It waited in a queue longer than `request_timeout`.
    Timeout,
    /// Still queued or running when the simulation ended.
    Unfinished,
}

impl FailReason {
    pub const ALL: [FailReason; 5] = [
        FailReason::NoRoute,
        FailReason::ReplicaLost,
        FailReason::DrainDeadline,
        FailReason::Timeout,
        FailReason::Unfinished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::NoRoute => "no-route",
            FailReason::ReplicaLost => "replica-lost",
            FailReason::DrainDeadline => "drain-deadline",
            FailReason::Timeout => "timeout",
            FailReason::Unfinished => "unfinished",
        }
    }
}

/// One interval of the time series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// End of the interval, µs of simulated time.
    pub at: Micros,
    pub arrivals: u64,
    pub completed: u64,
    pub failed: u64,
    pub slo_met: u64,
    /// Busy batch slots over allocated GPU time, in this interval (0–1).
    pub gpu_utilisation: f64,
    /// GPUs held by replicas (Starting, Ready or Draining) at the sample.
    pub gpus_allocated: u64,
    pub ready_replicas: u32,
    /// Requests sent to each cluster in this interval, by cluster index.
    pub routed: Vec<u64>,
}

/// Outcomes for one model's requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelSummary {
    pub model: String,
    pub requests: u64,
    pub completed: u64,
    pub failed: u64,
    pub slo_met: u64,
}

/// The numbers a policy is judged by.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub policy: String,
    pub kind: PolicyKind,
    pub requests: u64,
    pub completed: u64,
    pub failed: u64,
    pub failed_by_reason: BTreeMap<String, u64>,
    pub slo_met: u64,
    /// Requests that completed within their model's SLO, over all requests (failed
    /// ones count as misses).
    pub slo_attainment: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    /// Busy batch slots over allocated GPU time, for the whole run.
    pub gpu_utilisation: f64,
    /// GPU time held by replicas (Starting, Ready or Draining).
    pub gpu_hours: f64,
    /// Planned moves started (make-before-break migrations).
    pub moves: u64,
    /// Replicas started after the initial placement that replace nothing (replacements
    /// of lost replicas, new capacity).
    pub replacements: u64,
    pub replicas_lost: u64,
    pub commands_applied: u64,
    pub commands_rejected: u64,
    /// Commands the scheduler proposed that the policy did not apply.
    pub commands_withheld: u64,
    pub models: Vec<ModelSummary>,
}

/// Everything one run of one policy produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub summary: Summary,
    pub samples: Vec<Sample>,
    /// Capacity events as they happened: (time, cluster, what).
    pub timeline: Vec<(Micros, String, String)>,
}

#[derive(Debug, Default)]
struct Interval {
    arrivals: u64,
    completed: u64,
    failed: u64,
    slo_met: u64,
    routed: Vec<u64>,
    busy_at_start: f64,
    allocated_at_start: f64,
}

#[derive(Debug)]
pub(crate) struct Metrics {
    policy: String,
    kind: PolicyKind,
    arrivals: u64,
    completed: u64,
    failed: BTreeMap<FailReason, u64>,
    slo_met: u64,
    ttft: Vec<Micros>,
    e2e: Vec<Micros>,
    models: Vec<ModelSummary>,
    pub(crate) busy_integral: f64,
    pub(crate) allocated_integral: f64,
    pub(crate) moves: u64,
    pub(crate) replacements: u64,
    pub(crate) replicas_lost: u64,
    pub(crate) commands_applied: u64,
    pub(crate) commands_rejected: u64,
    pub(crate) commands_withheld: u64,
    interval: Interval,
    samples: Vec<Sample>,
    last_sample: Option<Micros>,
    timeline: Vec<(Micros, String, String)>,
}

impl Metrics {
    pub(crate) fn new(sc: &Scenario, policy: &PolicyDef) -> Self {
        Metrics {
            policy: policy.name.clone(),
            kind: policy.kind,
            arrivals: 0,
            completed: 0,
            failed: BTreeMap::new(),
            slo_met: 0,
            ttft: Vec::new(),
            e2e: Vec::new(),
            models: sc
                .models
                .iter()
                .map(|m| ModelSummary {
                    model: m.id.clone(),
                    ..ModelSummary::default()
                })
                .collect(),
            busy_integral: 0.0,
            allocated_integral: 0.0,
            moves: 0,
            replacements: 0,
            replicas_lost: 0,
            commands_applied: 0,
            commands_rejected: 0,
            commands_withheld: 0,
            interval: Interval {
                routed: vec![0; sc.clusters.len()],
                ..Interval::default()
            },
            samples: Vec::new(),
            last_sample: None,
            timeline: Vec::new(),
        }
    }

    pub(crate) fn arrived(&mut self, r: &Request) {
        self.arrivals += 1;
        self.interval.arrivals += 1;
        self.models[r.model as usize].requests += 1;
    }

    pub(crate) fn routed(&mut self, cluster: usize) {
        self.interval.routed[cluster] += 1;
    }

    pub(crate) fn failed(&mut self, r: &Request, reason: FailReason) {
        *self.failed.entry(reason).or_default() += 1;
        self.interval.failed += 1;
        self.models[r.model as usize].failed += 1;
    }

    pub(crate) fn completed(&mut self, r: &Request, ttft: Micros, e2e: Micros, slo_met: bool) {
        self.completed += 1;
        self.interval.completed += 1;
        self.ttft.push(ttft);
        self.e2e.push(e2e);
        let m = &mut self.models[r.model as usize];
        m.completed += 1;
        if slo_met {
            self.slo_met += 1;
            self.interval.slo_met += 1;
            m.slo_met += 1;
        }
    }

    pub(crate) fn note_event(&mut self, at: Micros, cluster: &str, kind: &str, gpus: Option<u32>) {
        let what = match gpus {
            Some(n) => format!("{kind} ({n} GPUs)"),
            None => kind.to_owned(),
        };
        self.timeline.push((at, cluster.to_owned(), what));
    }

    pub(crate) fn sample(&mut self, now: Micros, allocated: u64, ready: u32) {
        if self.last_sample == Some(now) {
            return;
        }
        self.last_sample = Some(now);
        let busy = self.busy_integral - self.interval.busy_at_start;
        let alloc = self.allocated_integral - self.interval.allocated_at_start;
        let n = self.interval.routed.len();
        let i = std::mem::replace(
            &mut self.interval,
            Interval {
                routed: vec![0; n],
                busy_at_start: self.busy_integral,
                allocated_at_start: self.allocated_integral,
                ..Interval::default()
            },
        );
        self.samples.push(Sample {
            at: now,
            arrivals: i.arrivals,
            completed: i.completed,
            failed: i.failed,
            slo_met: i.slo_met,
            gpu_utilisation: if alloc > 0.0 { busy / alloc } else { 0.0 },
            gpus_allocated: allocated,
            ready_replicas: ready,
            routed: i.routed,
        });
    }

    pub(crate) fn finish(mut self, _sc: &Scenario) -> RunResult {
        self.ttft.sort_unstable();
        self.e2e.sort_unstable();
        let failed: u64 = self.failed.values().sum();
        let summary = Summary {
            policy: self.policy,
            kind: self.kind,
            requests: self.arrivals,
            completed: self.completed,
            failed,
            failed_by_reason: FailReason::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str().to_owned(),
                        self.failed.get(r).copied().unwrap_or(0),
                    )
                })
                .collect(),
            slo_met: self.slo_met,
            slo_attainment: if self.arrivals == 0 {
                0.0
            } else {
                self.slo_met as f64 / self.arrivals as f64
            },
            ttft_p50_ms: percentile_ms(&self.ttft, 50.0),
            ttft_p99_ms: percentile_ms(&self.ttft, 99.0),
            e2e_p50_ms: percentile_ms(&self.e2e, 50.0),
            e2e_p99_ms: percentile_ms(&self.e2e, 99.0),
            gpu_utilisation: if self.allocated_integral > 0.0 {
                self.busy_integral / self.allocated_integral
            } else {
                0.0
            },
            gpu_hours: self.allocated_integral / 3.6e9,
            moves: self.moves,
            replacements: self.replacements,
            replicas_lost: self.replicas_lost,
            commands_applied: self.commands_applied,
            commands_rejected: self.commands_rejected,
            commands_withheld: self.commands_withheld,
            models: self.models,
        };
        RunResult {
            summary,
            samples: self.samples,
            timeline: self.timeline,
        }
    }
}

/// Nearest-rank percentile of sorted µs values, in ms; 0 when empty.
pub fn percentile_ms(sorted: &[Micros], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let v = sorted[rank.clamp(1, sorted.len()) - 1];
    v as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Micros> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&[7000], 99.0), 7.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }
}
