//! Materializing: turning a cluster's placements into running replicas.
//!
//! [`Materializer`] is the seam: local processes (the node agent's
//! `flotilla_agent::materializer::local`) and Kubernetes Deployments (the
//! `flotilla-controller` crate). [`run`] is the loop around it:
//!
//! 1. a follower task holds a blocking query of this cluster's replicas
//!    ([`RegistryLink::watch_replicas`]), answered as soon as they change, and
//!    publishes each new list ([`desired_from`]);
//! 2. the loop hands the list to [`Materializer::reconcile`] when it changes, on
//!    [`Materializer::wake`], and every `poll_interval`; `reconcile` starts, checks,
//!    drains and stops what runs and answers with the phases the registry must
//!    learn ([`PhaseReport`]: `Ready` once a replica answers its health check, `Gone`
//!    once a draining replica exited or its deadline passed, or a replica gave up
//!    restarting);
//! 3. it proposes each as `SetReplicaPhase`.
//!
//! **Level-triggered.** Every pass compares what should run with what runs, so a
//! missed or failed report is simply made again on the next pass, and a process that
//! restarts or reconnects needs no history. A list read from a server that is a
//! little behind only delays an action by a pass; the link never goes back to an
//! older one.
//!
//! When the registry cannot be read, the last placements stay in force
//! (fail-static, like the gateway): running replicas are kept, crashed ones still
//! restart, nothing is stopped for lack of news.
//!
//! **Endpoints.** A replica's `host:port` goes to the registry with its Ready report
//! (core's `Replica::endpoint`), and again whenever it changes (a crashed process
//! restarted on another port); the registry serves it in the Placements API. The
//! admin endpoints (`GET /replicas`, from [`ReplicaTable`]) show it too, with the
//! local details.

use crate::backoff::Backoff;
use crate::error::Error;
use crate::link::RegistryLink;
use flotilla_core::{Command, DeviceRef, Phase, PlacedReplica, ReplicaId, State, Timestamp};
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
    desired_from(state.replicas_in(cluster))
}

/// What the registry's replica list asks of this agent.
pub fn desired_from(placed: Vec<PlacedReplica>) -> Vec<DesiredReplica> {
    placed
        .into_iter()
        .map(|p| DesiredReplica {
            workload: p.workload,
            model: p.model,
            id: p.replica.id,
            devices: p.replica.devices,
            phase: p.replica.phase,
            drain_deadline: p.replica.drain_deadline,
            endpoint: p.replica.endpoint,
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

    /// Resolves when the materializer wants a pass before the loop's next tick
    /// (something it watches changed, a requeue time came). Must be cancel-safe:
    /// the loop drops it whenever a placement change or the ticker comes first.
    /// By default never: the ticker paces it.
    fn wake(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

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
pub async fn run<L: RegistryLink + Clone, M: Materializer>(
    link: L,
    mut materializer: M,
    cluster: String,
    poll_interval: Duration,
    table: ReplicaTable,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    if poll_interval.is_zero() {
        return Err(Error::Config(
            "poll_interval: must be greater than 0".into(),
        ));
    }
    // Placements arrive through a blocking query (answered when they change); the
    // ticker only paces the materializer's own checks (health, exits, deadlines).
    let (desired_tx, mut desired_rx) = tokio::sync::watch::channel(None);
    let follower = tokio::spawn(follow_placements(
        link.clone(),
        cluster.clone(),
        desired_tx,
        shutdown.clone(),
    ));
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
            r = desired_rx.changed() => if r.is_err() { break },
            () = materializer.wake() => {}
        }
        let desired: Option<Vec<DesiredReplica>> = desired_rx.borrow_and_update().clone();
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
                Err(e) if e.is_not_found() => {}
                // Made again on the next pass: the registry's phase has not moved.
                Err(e) => {
                    tracing::warn!(workload = %r.workload, replica = %r.replica, error = %e, "phase report failed")
                }
            }
        }
    }
    follower.abort();
    materializer.shutdown().await;
    table.set(materializer.replicas());
    Ok(())
}

/// How long one blocking query may wait for a change.
const WATCH_WAIT: Duration = Duration::from_secs(10);

/// Follows this cluster's replicas: each answer is published, and the next query
/// waits for a change from it. A failed query is retried with a back-off, on the
/// next server; the last list stays in force meanwhile.
async fn follow_placements<L: RegistryLink>(
    link: L,
    cluster: String,
    desired: tokio::sync::watch::Sender<Option<Vec<DesiredReplica>>>,
    shutdown: CancellationToken,
) {
    let mut known = 0u64;
    let mut backoff = Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(5),
        Backoff::seed_from(&cluster),
    );
    // Warn once per outage, not once per retry.
    let mut reading = true;
    loop {
        let answer = tokio::select! {
            () = shutdown.cancelled() => return,
            a = link.watch_replicas(&cluster, known, WATCH_WAIT) => a,
        };
        match answer {
            Ok((version, placed)) => {
                backoff.reset();
                reading = true;
                if version != known {
                    known = version;
                    desired.send_replace(Some(desired_from(placed)));
                }
            }
            Err(e) => {
                if reading {
                    tracing::warn!(error = %e, "cannot read placements; keeping the last ones until the registry answers");
                } else {
                    tracing::debug!(error = %e, "cannot read placements");
                }
                reading = false;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}
