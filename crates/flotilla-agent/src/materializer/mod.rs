//! Materializers: turning this cluster's placements into running replicas.
//!
//! [`Materializer`] is the seam: local processes ([`local`]) and Kubernetes
//! Deployments ([`kubernetes`]). [`run`] is the loop around it:
//!
//! 1. every `poll_interval` it reads the registry and picks the replicas placed on
//!    this cluster ([`desired_for`]);
//! 2. it hands them to [`Materializer::reconcile`], which starts, checks, drains and
//!    stops what runs and answers with the phases the registry must learn
//!    ([`PhaseReport`]: `Ready` once a replica answers its health check, `Gone` once
//!    a draining replica exited or its deadline passed, or a replica gave up
//!    restarting);
//! 3. it proposes each as `SetReplicaPhase`.
//!
//! **Why polling.** The registry's client service today has no watch of
//! placements (the typed `flotilla.v1` API brings one). Polling a local read is
//! cheap (one server's copy, no Raft round), and the loop is level-triggered: it
//! compares what should run with what runs on every pass, so a missed or failed
//! report is simply made again on the next pass, and an agent that restarts or
//! reconnects needs no history. A local read may be a little behind the leader;
//! that only delays an action by a pass.
//!
//! When the registry cannot be read, the last placements read stay in force
//! (fail-static, like the gateway): running replicas are kept, crashed ones still
//! restart, nothing is stopped for lack of news.
//!
//! **Endpoints.** A replica's `host:port` goes to the registry with its Ready report
//! (core's `Replica::endpoint`), and again whenever it changes (a crashed process
//! restarted on another port); the registry serves it in the Placements API. The
//! agent's admin endpoint (`GET /replicas`, from [`ReplicaTable`]) shows it too,
//! with the local process details.

pub mod kubernetes;
pub mod local;

use crate::AgentError;
use crate::registry::RegistryLink;
use flotilla_core::{Command, DeviceRef, Phase, ReplicaId, State, Timestamp};
use serde::Serialize;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One replica the registry placed on this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredReplica {
    pub workload: String,
    pub model: String,
    pub id: ReplicaId,
    pub devices: Vec<DeviceRef>,
    /// Starting, Ready or Draining (Gone replicas leave the placement).
    pub phase: Phase,
    /// While Draining: when to stop waiting for in-flight requests (wall clock, ms).
    pub drain_deadline: Option<Timestamp>,
    /// Where the registry believes the replica serves (the last endpoint reported).
    pub endpoint: Option<String>,
}

/// The replicas of `cluster`, in workload then replica order.
pub fn desired_for(state: &State, cluster: &str) -> Vec<DesiredReplica> {
    state
        .placements()
        .iter()
        .flat_map(|(workload, p)| {
            p.replicas
                .values()
                .filter(|r| r.cluster == cluster)
                .map(|r| DesiredReplica {
                    workload: workload.clone(),
                    model: p.model.clone(),
                    id: r.id,
                    devices: r.devices.clone(),
                    phase: r.phase,
                    drain_deadline: r.drain_deadline,
                    endpoint: r.endpoint.clone(),
                })
        })
        .collect()
}

/// A phase the registry must learn: `Ready` or `Gone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseReport {
    pub workload: String,
    pub replica: ReplicaId,
    pub phase: Phase,
    /// With Ready: where the replica serves (`host:port`).
    pub endpoint: Option<String>,
}

/// What the agent runs for one replica, as `GET /replicas` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaView {
    pub workload: String,
    pub model: String,
    /// `r<id>`, as the replica names itself in responses.
    pub replica: String,
    pub id: u64,
    /// Where the replica serves (`host:port`), while it runs.
    pub address: Option<String>,
    /// The registry's phase: Starting, Ready, Draining.
    pub registry_phase: &'static str,
    /// What runs here: starting, ready, draining, restarting, exited, failed.
    pub local_state: &'static str,
    /// Device UUIDs, as given to the replica (`CUDA_VISIBLE_DEVICES`).
    pub devices: Vec<String>,
    pub pid: Option<u32>,
    /// Times the replica's process was started again after it exited.
    pub restarts: u32,
    pub last_exit: Option<String>,
}

/// Makes what runs on this cluster match its placements.
///
/// Level-triggered: [`Materializer::reconcile`] is called on every pass with the
/// whole desired set, whether or not it changed, and must be idempotent. It does
/// the IO (processes, Kubernetes objects) and returns the phases to report; it never
/// talks to the registry itself.
pub trait Materializer: Send + 'static {
    /// One pass: start what is missing, check what is starting, drain what drains,
    /// stop what is no longer placed here, restart what crashed.
    fn reconcile(
        &mut self,
        desired: &[DesiredReplica],
    ) -> impl Future<Output = Vec<PhaseReport>> + Send;

    /// What runs now, for the admin endpoint.
    fn replicas(&self) -> Vec<ReplicaView>;

    /// Stops everything it runs (drain, then force at a deadline). Nothing it
    /// started outlives this.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// The latest [`ReplicaView`]s, shared with the admin endpoint.
#[derive(Debug, Clone, Default)]
pub struct ReplicaTable(Arc<Mutex<Vec<ReplicaView>>>);

impl ReplicaTable {
    pub fn get(&self) -> Vec<ReplicaView> {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn set(&self, views: Vec<ReplicaView>) {
        if let Ok(mut t) = self.0.lock() {
            *t = views;
        }
    }
}

/// Runs `materializer` for `cluster` until `shutdown` is cancelled, then stops
/// every replica it runs.
pub async fn run<L: RegistryLink, M: Materializer>(
    link: L,
    mut materializer: M,
    cluster: String,
    poll_interval: Duration,
    table: ReplicaTable,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    if poll_interval.is_zero() {
        return Err(AgentError::Config {
            field: "poll_interval".into(),
            message: "must be greater than 0".into(),
        });
    }
    let mut desired: Option<Vec<DesiredReplica>> = None;
    // Warn once per outage, not once per poll.
    let mut reading = true;
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match link.read_state().await {
            Ok(state) => {
                desired = Some(desired_for(&state, &cluster));
                reading = true;
            }
            Err(e) if reading => {
                reading = false;
                tracing::warn!(error = %e, "cannot read placements; keeping the last ones until the registry answers");
            }
            Err(e) => tracing::debug!(error = %e, "cannot read placements"),
        }
        // Before the first successful read nothing is known: start nothing, stop
        // nothing.
        let Some(desired) = &desired else { continue };
        let reports = materializer.reconcile(desired).await;
        table.set(materializer.replicas());
        for r in reports {
            let command = Command::SetReplicaPhase {
                workload: r.workload.clone(),
                replica: r.replica,
                phase: r.phase,
                endpoint: r.endpoint.clone(),
            };
            match link.propose(&command).await {
                Ok(()) => {
                    tracing::info!(workload = %r.workload, replica = %r.replica, phase = r.phase.as_str(), endpoint = r.endpoint.as_deref().unwrap_or(""), "phase reported")
                }
                // The replica left the placement meanwhile: nothing to tell.
                Err(AgentError::Rejected {
                    not_found: true, ..
                }) => {}
                // Made again on the next pass: the registry's phase has not moved.
                Err(e) => {
                    tracing::warn!(workload = %r.workload, replica = %r.replica, error = %e, "phase report failed")
                }
            }
        }
    }
    materializer.shutdown().await;
    table.set(materializer.replicas());
    Ok(())
}
