//! Flotilla's simulation harness: what-if before anything moves.
//!
//! A discrete-event simulator that drives the **real** [`flotilla_core`] scheduler
//! ([`flotilla_core::plan`]) and registry state machine ([`flotilla_core::apply`])
//! under a virtual clock, over simulated clusters and an LLM request load, and
//! compares policies side by side. Nothing of core is re-implemented here: every
//! placement, move, traffic step and route comes from core; this crate plays only the
//! world around it (time, agents, materializers, gateways, requests).
//!
//! # The loop
//!
//! Events in a priority queue keyed by (time µs, insertion order), so ties resolve
//! the same way every run:
//!
//! - **Agents**: at start every cluster registers and reports its inventory
//!   (`ReportCapacity`); every `heartbeat_interval` each live cluster sends
//!   `Heartbeat`. A capacity event changes the simulated devices and the cluster
//!   reports its whole inventory again: `spot-preemption` and `reclaim` mark GPUs
//!   `claimed_by_other` for a grace period (core plans make-before-break moves), then
//!   the GPUs vanish (core loses replicas still on them); `fail` makes GPUs
//!   unhealthy at once; `return`, `repair` and `add` give GPUs back; `cluster-lost`
//!   stops the heartbeats (its replicas die at once; core marks the cluster
//!   Unreachable when the lease expires); `cluster-recovered` reports again.
//! - **Materializers**: on `ReplicaStarted` a replica starts and reports
//!   `SetReplicaPhase Ready` after its model's `startup`; a Draining replica reports
//!   `Gone` as soon as its last queued or running request ends.
//! - **Gateways**: a request arrives in its origin region and goes to a cluster
//!   chosen by core's route table ([`flotilla_core::State::routes`]): clusters of
//!   the origin region first, with the probability that their weight bears to their
//!   full weight (a local replica migrating away keeps only its share), the rest to
//!   other regions in proportion to route weight, adding the WAN round trip. A
//!   cluster that is physically down gets nothing (the gateways' health checks),
//!   even before core knows. In the cluster, the least-loaded Ready replica with
//!   a non-zero weight takes it.
//! - **Replicas**: each serves up to `max_batch` requests at once, the rest wait in
//!   FIFO order. A request takes `prompt / prefill_tps` to its first token and
//!   `output / decode_tps` more to its last. TTFT = queueing + prefill + RTT;
//!   end-to-end = queueing + prefill + decode + RTT. A request that waited longer
//!   than `request_timeout` fails when it reaches the head of the queue; requests on
//!   a replica that dies fail (`replica-lost`).
//!
//! # Dry runs
//!
//! [`federation`] is the smaller what-if of `flotilla plan`: a federation file
//! loaded into a registry, and the scheduler run until it settles with every
//! replica starting at once, then drains and reclaims played on it.
//!
//! # Policies
//!
//! Each policy starts alike: clusters register and report, workloads are applied,
//! and one full `plan` pass at t = 0 is applied (the initial placement). After that:
//!
//! - **`static`** never runs `plan` again. Only the agents' reports and heartbeats
//!   and the materializers' phase reports reach core. Replicas lost stay lost;
//!   replicas on reclaimed GPUs stay until the GPUs go.
//! - **`failover-only`** runs `plan` every `tick` and applies only what a
//!   cluster-failover system (Karmada-style) would do: `MarkUnreachable`;
//!   `StartReplica { replaces: None }` for a workload only while it has replicas lost
//!   to a cluster loss (`ReplicaLost { cause: ClusterUnreachable }`) not yet
//!   replaced, one per lost replica; and housekeeping `SetReplicaPhase Gone` (starts
//!   that never came up, drains past their deadline). Planned moves
//!   (`StartReplica { replaces: Some(..) }`), traffic shifts, drains, preemptions
//!   and replacements of replicas lost to a GPU loss are withheld.
//! - **`flotilla`** runs `plan` every `tick` and applies every command it
//!   proposes: the production scheduler, with the knobs (core `Settings`) from the
//!   scenario.
//!
//! # What this crate must not do
//!
//! Change or second-guess a decision of core; read a wall clock (the progress bar
//! aside, which never reaches a report); or use unseeded randomness. The same
//! scenario and seed give byte-identical reports.

// Tests unwrap on inputs they wrote themselves.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod duration;
mod engine;
pub mod error;
pub mod federation;
pub mod load;
pub mod metrics;
pub mod report;
pub mod scenario;
pub mod trace;

pub use error::SimError;
pub use metrics::{FailReason, RunResult, Sample, Summary};
pub use scenario::{PolicyKind, Scenario};

use duration::Micros;

/// The results of every policy of one scenario, in the scenario's policy order.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: Scenario,
    pub runs: Vec<RunResult>,
}

/// How to run a scenario.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run only the policies with these names (all when empty).
    pub policies: Vec<String>,
    /// Draw a progress bar on standard error (when it is a terminal).
    pub progress: bool,
}

/// Runs every (selected) policy of a scenario.
pub fn simulate(scenario: &Scenario, options: &Options) -> Outcome {
    let selected: Vec<&scenario::PolicyDef> = scenario
        .policies
        .iter()
        .filter(|p| options.policies.is_empty() || options.policies.contains(&p.name))
        .collect();
    let bar = if options.progress {
        let total = selected.len() as u64 * (scenario.duration / 1_000_000).max(1);
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>24} [{bar:40}] {pos}/{len} simulated s ({eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(scenario.name.clone());
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut runs = Vec::with_capacity(selected.len());
    for (k, policy) in selected.into_iter().enumerate() {
        let base = k as u64 * (scenario.duration / 1_000_000).max(1);
        let end = scenario.duration;
        let mut progress = |now: Micros| {
            bar.set_position(base + now.min(end) / 1_000_000);
        };
        runs.push(engine::run_policy(scenario, policy, &mut progress));
    }
    bar.finish_and_clear();
    Outcome {
        scenario: scenario.clone(),
        runs,
    }
}
