//! Reporting: the loop that turns what a [`GpuSource`] sees into registry writes.
//!
//! Every `sample_interval` the loop takes a snapshot (on a blocking thread: NVML is a
//! blocking C library) and asks [`change::Reporter`] what it is worth:
//!
//! - the first time, and again whenever the registry says it no longer knows the
//!   cluster, it proposes `RegisterCluster` (region, zone, gateway address) and then
//!   the whole inventory;
//! - `ReportCapacity` (the whole inventory of every node the source describes) only
//!   when a device came, went, failed, recovered, was claimed or released, changed
//!   shape, or its free memory moved a whole step from what the registry holds;
//! - otherwise a `Heartbeat` once per heartbeat interval, to renew the lease.
//!
//! **Scope.** With [`ReportScope::Cluster`] (the default) the agent's report is the
//! cluster's whole inventory: one agent per cluster. With [`ReportScope::Nodes`]
//! (`flotilla agent --report-scope node`: one agent per GPU node, as a Kubernetes
//! DaemonSet runs it) it sends `ReportNodes` with only the nodes its source
//! describes, so agents of one cluster do not overwrite each other. A node reported
//! so holds a lease that only a report naming it renews (a `Heartbeat` renews the
//! cluster's alone), so in place of each heartbeat the agent sends its (small) report
//! again; a node that vanishes from the source is not removed by the agent but leaves
//! the registry when its lease runs out. An agent whose source describes no node
//! has nothing to report and only heartbeats.
//!
//! **Write rate.** In steady state one agent costs `60 s / heartbeat_interval` lease
//! renewals a minute (12 with the 5 s default, a third of core's 15 s lease so that
//! two lost renewals are survived) and zero capacity writes, whatever utilisation
//! does. While capacity changes, at most one `ReportCapacity` per `sample_interval`
//! (it carries the whole inventory, so a burst of changes within one interval is one
//! write). Registration happens once per process, plus once after each time the
//! registry forgot the cluster.
//!
//! **Failures.** A call that fails (server down, no leader, or no answer within
//! half a heartbeat interval: [`ReportConfig::call_timeout`]) moves the link on to
//! the next federation server and the loop waits an exponentially growing,
//! jittered delay ([`Backoff`]) before it samples and tries again; success resets
//! the delay. The delay never grows past half a heartbeat interval, so a Raft
//! failover, however long its election, costs no lease. Nothing is recorded as written until the registry applied it, so the
//! retried sample is compared with what the registry really holds. A leader change
//! needs nothing special: any server forwards writes to the leader, and
//! `UNAVAILABLE` while an election runs is one more retry.
//!
//! One agent process reports for one cluster and covers every node of its source.
//! With scope `Nodes` a node-scoped report renewal costs one log entry of the node's
//! devices per heartbeat interval per node: 12 a minute per node with the defaults.

use crate::AgentError;
use crate::change::{Action, ReportPolicy, Reporter};
use crate::gpu::GpuSource;
use flotilla_client::{Backoff, RegistryLink};
use flotilla_core::{ClusterSpec, Command, Millis, ReportScope, Timestamp};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How the reporting loop runs.
#[derive(Debug, Clone)]
pub struct ReportConfig {
    /// This cluster, as it registers itself.
    pub cluster: ClusterSpec,
    /// What this agent's reports cover: the whole cluster, or only its own nodes.
    pub scope: ReportScope,
    /// How often the source is sampled.
    pub sample_interval: Duration,
    /// When a sample is a write, and how often the lease is renewed.
    pub policy: ReportPolicy,
    /// First and largest delay between retries after a failed call. The largest
    /// is also held to half a heartbeat interval ([`ReportConfig::retry_cap`]).
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl ReportConfig {
    /// Defaults for `cluster`: sample every 2 s, renew the lease every 5 s, retry
    /// after 200 ms doubling up to 10 s.
    pub fn new(cluster: ClusterSpec) -> ReportConfig {
        ReportConfig {
            cluster,
            scope: ReportScope::Cluster,
            sample_interval: Duration::from_secs(2),
            policy: ReportPolicy {
                heartbeat_interval: Millis::from_secs(5),
                ..ReportPolicy::default()
            },
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
        }
    }

    /// Checks everything before anything connects.
    pub fn validate(&self) -> Result<(), AgentError> {
        self.cluster.validate().map_err(|e| AgentError::Config {
            field: format!("cluster.{}", e.field),
            message: e.message,
        })?;
        let bad = |field: &str, message: &str| {
            Err(AgentError::Config {
                field: field.into(),
                message: message.into(),
            })
        };
        if self.sample_interval.is_zero() {
            return bad("sample_interval", "must be greater than 0");
        }
        if self.policy.heartbeat_interval.0 == 0 {
            return bad("heartbeat_interval", "must be greater than 0");
        }
        if self.retry_initial.is_zero() {
            return bad("retry_initial", "must be greater than 0");
        }
        Ok(())
    }

    /// The longest wait between retries: `retry_max`, but never more than half a
    /// heartbeat interval. A new Raft leader gives every cluster one heartbeat
    /// interval to report before it may mark any unreachable; an agent whose
    /// back-off had grown past that while the election ran (each try failing
    /// with no leader) would lose its cluster's lease, and every replica with it,
    /// to a failover it would have survived with one more try.
    pub fn retry_cap(&self) -> Duration {
        let half_heartbeat = Duration::from_millis(self.policy.heartbeat_interval.0 / 2);
        self.retry_max.min(half_heartbeat).max(self.retry_initial)
    }

    /// How long one call to the registry may take before the agent gives up on
    /// that server and tries the next: half a heartbeat interval, between
    /// [`MIN_CALL_TIMEOUT`] and [`MAX_CALL_TIMEOUT`]. A server that accepted the
    /// connection but cannot answer (frozen, or cut off with the leader) would
    /// otherwise hold the lease renewal past the lease itself.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.policy.heartbeat_interval.0 / 2)
            .clamp(MIN_CALL_TIMEOUT, MAX_CALL_TIMEOUT)
    }
}

/// The shortest [`ReportConfig::call_timeout`]: a write's commit on a loaded
/// federation takes this long at worst.
pub const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(300);
/// The longest [`ReportConfig::call_timeout`].
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the loop has done, for the admin endpoint and tests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReportStatus {
    pub registered: bool,
    pub registrations: u64,
    pub capacity_writes: u64,
    /// Lease renewals: `Heartbeat`s, or with scope `Nodes` the node report sent again.
    pub heartbeats: u64,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
}

/// A shared view of [`ReportStatus`]; the lock is never held across an await.
#[derive(Debug, Clone, Default)]
pub struct StatusHandle(Arc<Mutex<ReportStatus>>);

impl StatusHandle {
    pub fn get(&self) -> ReportStatus {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut ReportStatus)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }
}

/// The time commands are stamped with by the registry; the reporter uses the same
/// wall clock to decide when a heartbeat is due.
fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

/// Runs until `shutdown` is cancelled (then returns `Ok`), or until the registry
/// refuses this cluster's registration (an operator must act: e.g. a region change
/// while replicas run there). Every other failure is retried.
pub async fn run<L: RegistryLink>(
    source: Arc<dyn GpuSource>,
    link: L,
    config: ReportConfig,
    status: StatusHandle,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    config.validate()?;
    let mut state = Loop {
        reporter: Reporter::new(config.policy),
        registered: false,
        config,
        status,
    };
    let mut backoff = Backoff::new(
        state.config.retry_initial,
        state.config.retry_cap(),
        Backoff::seed_from(&state.config.cluster.name),
    );
    let mut ticker = tokio::time::interval(state.config.sample_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        match state.step(&source, &link).await {
            Ok(()) => {
                backoff.reset();
                state.status.update(|s| s.last_error = None);
            }
            Err(
                e @ AgentError::Registry(flotilla_client::Error::Rejected {
                    command: "register_cluster",
                    ..
                }),
            ) => return Err(e),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "capacity report failed");
                state.status.update(|s| s.last_error = Some(e.to_string()));
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
                ticker.reset_immediately();
            }
        }
    }
}

struct Loop {
    reporter: Reporter,
    registered: bool,
    config: ReportConfig,
    status: StatusHandle,
}

impl Loop {
    async fn step<L: RegistryLink>(
        &mut self,
        source: &Arc<dyn GpuSource>,
        link: &L,
    ) -> Result<(), AgentError> {
        let sampling = source.clone();
        let snapshot = tokio::task::spawn_blocking(move || sampling.snapshot())
            .await
            .map_err(|e| AgentError::Sampling {
                kind: source.kind(),
                message: format!("the sampling thread failed: {e}"),
            })??;
        let reports = snapshot.to_reports();
        if !self.registered {
            let spec = self.config.cluster.clone();
            link.propose(&Command::RegisterCluster { spec }).await?;
            tracing::info!(cluster = %self.config.cluster.name, "registered");
            self.registered = true;
            // A (re)registered cluster's inventory is written whole, whatever was
            // written before.
            self.reporter = Reporter::new(self.config.policy);
            self.status.update(|s| {
                s.registered = true;
                s.registrations += 1;
            });
        }
        let cluster = self.config.cluster.name.clone();
        let at = now();
        // A node-scoped report must name a node; with none there is only a lease to keep.
        let nothing_to_report = self.config.scope == ReportScope::Nodes && reports.is_empty();
        let outcome = match self.reporter.decide(at, &reports) {
            Action::Wait => return Ok(()),
            Action::WriteCapacity(_) | Action::Heartbeat if nothing_to_report => {
                let r = link.propose(&Command::Heartbeat { cluster }).await;
                if r.is_ok() {
                    self.reporter.written(at, reports);
                    self.status.update(|s| s.heartbeats += 1);
                }
                r
            }
            Action::Heartbeat if self.config.scope == ReportScope::Nodes => {
                // Only a report naming the node renews the node's lease.
                let command = Command::ReportNodes {
                    cluster,
                    nodes: reports.clone(),
                };
                let r = link.propose(&command).await;
                if r.is_ok() {
                    self.reporter.written(at, reports);
                    self.status.update(|s| s.heartbeats += 1);
                }
                r
            }
            Action::WriteCapacity(changes) => {
                let command = Command::capacity_report(cluster, self.config.scope, reports.clone());
                let r = link.propose(&command).await;
                if r.is_ok() {
                    tracing::info!(changes = changes.len(), "capacity written");
                    self.reporter.written(at, reports);
                    self.status.update(|s| s.capacity_writes += 1);
                }
                r
            }
            Action::Heartbeat => {
                let r = link.propose(&Command::Heartbeat { cluster }).await;
                if r.is_ok() {
                    self.reporter.renewed(at);
                    self.status.update(|s| s.heartbeats += 1);
                }
                r
            }
        };
        if let Err(e) = &outcome
            && e.is_not_found()
        {
            // An operator removed the cluster (or the registry was rebuilt): register
            // again on the next sample.
            self.registered = false;
            self.status.update(|s| s.registered = false);
        }
        Ok(outcome?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(heartbeat_ms: u64) -> ReportConfig {
        let mut c = ReportConfig::new(ClusterSpec {
            name: "east".into(),
            region: "europe".into(),
            zone: String::new(),
            labels: Default::default(),
            gateway_address: String::new(),
            endpoint_ranges: Vec::new(),
        });
        c.policy.heartbeat_interval = Millis(heartbeat_ms);
        c
    }

    #[test]
    fn retries_come_at_least_twice_per_heartbeat_interval_however_many_failed() {
        let c = config(1_000);
        let mut backoff = Backoff::new(c.retry_initial, c.retry_cap(), 7);
        let longest = (0..20).map(|_| backoff.next_delay()).max();
        assert_eq!(c.retry_cap(), Duration::from_millis(500));
        assert!(longest <= Some(Duration::from_millis(500)), "{longest:?}");
    }

    #[test]
    fn a_long_heartbeat_interval_keeps_the_configured_largest_delay() {
        let c = config(60_000);
        assert_eq!(c.retry_cap(), c.retry_max);
    }

    #[test]
    fn a_call_gives_up_on_a_server_within_half_a_heartbeat_interval() {
        assert_eq!(config(1_000).call_timeout(), Duration::from_millis(500));
        assert_eq!(
            config(5_000).call_timeout(),
            Duration::from_millis(2_500),
            "the default"
        );
        assert_eq!(config(100).call_timeout(), MIN_CALL_TIMEOUT);
        assert_eq!(config(60_000).call_timeout(), MAX_CALL_TIMEOUT);
    }

    #[test]
    fn the_cap_never_falls_below_the_first_delay() {
        let c = config(100);
        assert_eq!(c.retry_cap(), c.retry_initial);
    }
}
