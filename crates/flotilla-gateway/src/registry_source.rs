//! The registry as a route source: follows `flotilla.v1.RouteService/WatchRoutes`
//! and turns what it says, plus this cluster's own replicas, into routing snapshots.
//!
//! One task per gateway keeps three inputs and builds the table from them with
//! [`RoutingTable::from_core`]:
//! - a copy of core's [`RouteTable`], updated route by route from the watch. After
//!   a reconnect the watch resumes from the last revision seen, so nothing is
//!   reloaded and nothing is missed (the registry's resume invariant);
//! - other clusters' east-west gateways, from `FederationService/ListClusters` on
//!   every connect, whenever a route names a cluster without a known gateway, and
//!   every `cluster_refresh_interval`;
//! - this cluster's replicas (address and phase), from the agent's loopback admin
//!   endpoint `GET /replicas`, every `replica_poll_interval`. Core's replicas carry
//!   no endpoint, so the agent's table is where addresses come from.
//!
//! A [`RouteEvent::Replace`] goes out only when the built table differs from the
//! last one sent. The watch going up or down is reported as
//! [`RouteEvent::RegistryConnected`] / [`RouteEvent::RegistryLost`]; while it is
//! down the gateway serves its last table (fail-static), local phases keep being
//! refreshed, and the source reconnects with a capped, jittered back-off, moving to
//! the next server on every failure.
//!
//! Transport (plaintext or federation mTLS) is not this module's business: the
//! caller hands in a [`Connector`] that makes a channel to a server address, so
//! this crate needs only the generated client, not the registry.

use crate::error::GatewayError;
use crate::source::{RouteEvent, RouteSource};
use crate::table::{
    GatewayAddress, HostRule, LocalReplica, ReplicaPhase, RoutingTable, UpstreamProtocol,
};
use bytes::Bytes;
use flotilla_core::{Route, RouteEndpoint, RouteTable};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::federation_service_client::FederationServiceClient;
use flotilla_proto::v1::route_service_client::RouteServiceClient;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Makes a (lazily connecting) gRPC channel to a registry server at `host:port`.
pub type Connector = Arc<dyn Fn(&str) -> Result<Channel, GatewayError> + Send + Sync>;

/// How the registry source finds the registry and this cluster's replicas.
#[derive(Debug, Clone)]
pub struct RegistrySourceConfig {
    /// This cluster's name, as the registry spells it.
    pub cluster: String,
    /// Federation servers (`host:port`); any one will do.
    pub servers: Vec<String>,
    /// The agent's admin endpoint (`GET /replicas`); `None`: no local replicas.
    pub agent_admin: Option<SocketAddr>,
    pub replica_poll_interval: Duration,
    pub cluster_refresh_interval: Duration,
    /// Bound on one unary call, opening the watch, and one agent poll.
    pub rpc_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Host/path rules for non-OpenAI traffic (static configuration).
    pub host_rules: Vec<HostRule>,
}

impl RegistrySourceConfig {
    pub fn new(cluster: impl Into<String>, servers: Vec<String>) -> RegistrySourceConfig {
        RegistrySourceConfig {
            cluster: cluster.into(),
            servers,
            agent_admin: Some(SocketAddr::from(([127, 0, 0, 1], 9410))),
            replica_poll_interval: Duration::from_millis(200),
            cluster_refresh_interval: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            host_rules: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), GatewayError> {
        let bad = |m: &str| Err(GatewayError::Config(m.to_owned()));
        if self.cluster.is_empty() {
            return bad("the registry source needs this cluster's name");
        }
        if self.servers.is_empty() || self.servers.iter().any(|s| s.trim().is_empty()) {
            return bad("the registry source needs at least one server address (host:port)");
        }
        if [
            self.replica_poll_interval,
            self.cluster_refresh_interval,
            self.rpc_timeout,
            self.backoff_initial,
        ]
        .contains(&Duration::ZERO)
        {
            return bad("registry source intervals and timeouts must be above zero");
        }
        if self.backoff_max < self.backoff_initial {
            return bad("backoff_max must be at least backoff_initial");
        }
        Ok(())
    }
}

/// What the source has done with the registry so far, readable while it runs
/// (operators' logs and the tests use it to tell a resume from a reload).
#[derive(Debug, Clone, Default)]
pub struct RegistryProgress {
    inner: Arc<ProgressInner>,
}

#[derive(Debug, Default)]
struct ProgressInner {
    watches_opened: AtomicU64,
    last_from_revision: AtomicU64,
}

impl RegistryProgress {
    /// Route watches opened, the first included.
    pub fn watches_opened(&self) -> u64 {
        self.inner.watches_opened.load(Ordering::Relaxed)
    }

    /// The `from_revision` the latest watch was opened with (0: the whole table).
    pub fn last_from_revision(&self) -> u64 {
        self.inner.last_from_revision.load(Ordering::Relaxed)
    }

    fn opened(&self, from: u64) {
        self.inner.last_from_revision.store(from, Ordering::Relaxed);
        self.inner.watches_opened.fetch_add(1, Ordering::Relaxed);
    }
}

/// A [`RouteSource`] that follows the registry. The work runs on one task, which
/// ends when this is dropped (the gateway drops its source when it stops).
#[derive(Debug)]
pub struct RegistryRouteSource {
    events: mpsc::Receiver<RouteEvent>,
    task: JoinHandle<()>,
    progress: RegistryProgress,
}

impl RegistryRouteSource {
    /// Checks the configuration and starts following the registry. Needs a tokio
    /// runtime.
    pub fn start(
        config: RegistrySourceConfig,
        connect: Connector,
    ) -> Result<RegistryRouteSource, GatewayError> {
        config.validate()?;
        let (tx, events) = mpsc::channel(16);
        let progress = RegistryProgress::default();
        let task = tokio::spawn(run(config, connect, tx, progress.clone()));
        Ok(RegistryRouteSource {
            events,
            task,
            progress,
        })
    }

    pub fn progress(&self) -> RegistryProgress {
        self.progress.clone()
    }
}

impl Drop for RegistryRouteSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RouteSource for RegistryRouteSource {
    async fn next(&mut self) -> Option<RouteEvent> {
        // mpsc::Receiver::recv is cancel-safe.
        self.events.recv().await
    }
}

// ---------------------------------------------------------------- local replicas

/// The fields of the agent's `ReplicaView` the gateway needs. Defined here, not
/// imported: the gateway does not depend on the agent, only on its admin JSON.
#[derive(Debug, serde::Deserialize)]
struct AgentReplica {
    model: String,
    #[serde(default)]
    address: Option<String>,
    /// The registry's phase: Starting, Ready, Draining.
    registry_phase: String,
    /// What runs here: starting, ready, draining, restarting, exited, failed.
    #[serde(default)]
    local_state: Option<String>,
}

type LocalView = BTreeMap<String, Vec<LocalReplica>>;

/// The gateway's view of one replica the agent lists, or `None` if it takes no
/// traffic at all (no address, not running, or a phase this version does not know).
fn local_replica(r: &AgentReplica) -> Option<LocalReplica> {
    let address: SocketAddr = r.address.as_deref()?.parse().ok()?;
    let local = r.local_state.as_deref();
    let phase = match (r.registry_phase.as_str(), local) {
        // Draining in either view: finish what it has, send nothing new.
        ("Draining", _) | (_, Some("draining")) => ReplicaPhase::Draining,
        // The process is not there (crashed, restarting): nothing to send to.
        (_, Some("restarting" | "exited" | "failed")) => return None,
        // Ready only when the registry says so (the route counts it) and the
        // process agrees.
        ("Ready", None | Some("ready")) => ReplicaPhase::Ready,
        ("Starting" | "Ready", _) => ReplicaPhase::Starting,
        _ => return None,
    };
    Some(LocalReplica {
        address,
        phase,
        protocol: UpstreamProtocol::Http1,
        load: None,
    })
}

fn local_view(replicas: &[AgentReplica]) -> LocalView {
    let mut view = LocalView::new();
    for r in replicas {
        if let Some(l) = local_replica(r) {
            view.entry(r.model.clone()).or_default().push(l);
        }
    }
    for v in view.values_mut() {
        // The agent's order is not promised; a stable order keeps equal views equal.
        v.sort_by_key(|r| r.address);
    }
    view
}

/// Polls the agent's `/replicas` and publishes the view when it changes. An agent
/// that does not answer leaves the last view in place: its replicas are separate
/// processes and may well still serve.
async fn poll_agent(
    admin: SocketAddr,
    every: Duration,
    timeout: Duration,
    out: watch::Sender<LocalView>,
) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let uri: hyper::Uri = match format!("http://{admin}/replicas").parse() {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(%admin, error = %e, "agent admin address is not a URI authority");
            return;
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let fetched = tokio::time::timeout(timeout, async {
            let resp = client
                .get(uri.clone())
                .await
                .map_err(|e| format!("request: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status()));
            }
            // The table is small; a bound keeps a confused peer from filling memory.
            let body = Limited::new(resp.into_body(), 16 << 20)
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            serde_json::from_slice::<Vec<AgentReplica>>(&body).map_err(|e| format!("JSON: {e}"))
        })
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()));
        match fetched {
            Ok(replicas) => {
                if failing {
                    tracing::info!(%admin, "agent admin endpoint answers again");
                    failing = false;
                }
                let view = local_view(&replicas);
                out.send_if_modified(|v| {
                    let changed = *v != view;
                    if changed {
                        *v = view;
                    }
                    changed
                });
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(%admin, error = %e, "cannot read local replicas from the agent; keeping the last view");
                    failing = true;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- registry

/// Doubling delays with equal jitter, capped. The jitter keeps a fleet of gateways
/// from reconnecting to a restarted server in step.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    rng: u64,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        // Seeded per process: determinism across gateways is what jitter is against.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Backoff {
            initial,
            max,
            next: initial,
            rng: seed | 1,
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    fn delay(&mut self) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = base / 2;
        half + Duration::from_nanos(self.rng % (half.as_nanos() as u64 + 1))
    }
}

fn route_from(r: pb::Route) -> Route {
    Route {
        model: r.model,
        endpoints: r
            .endpoints
            .into_iter()
            .map(|e| RouteEndpoint {
                cluster: e.cluster,
                weight: e.weight,
                ready_replicas: e.ready_replicas,
            })
            .collect(),
        revision: r.revision,
    }
}

/// Applies one watched route to the copy of core's table. Tombstones remove the
/// model (the copy need not keep them: the revision is what resumes the watch).
fn apply_route(table: &mut RouteTable, route: Route) {
    table.revision = table.revision.max(route.revision);
    if route.endpoints.is_empty() {
        table.routes.remove(&route.model);
    } else {
        table.routes.insert(route.model.clone(), route);
    }
}

/// Splits `host:port` (host may be a bracketed IPv6 literal) for the certificate
/// name; the address itself is resolved separately.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

struct Connected {
    channel: Channel,
    watch: tonic::Streaming<pb::WatchRoutesResponse>,
}

struct Follower {
    config: RegistrySourceConfig,
    connect: Connector,
    tx: mpsc::Sender<RouteEvent>,
    core: RouteTable,
    gateways: BTreeMap<String, GatewayAddress>,
    local: LocalView,
    /// The last table sent, to send only changes.
    sent: Option<RoutingTable>,
    last_cluster_refresh: Option<Instant>,
}

impl Follower {
    fn build(&self) -> RoutingTable {
        RoutingTable::from_core(
            &self.core,
            &self.config.cluster,
            &self.local,
            &self.gateways,
            self.config.host_rules.clone(),
        )
    }

    /// Sends the table if it changed. `false` if the gateway is gone.
    async fn publish(&mut self) -> bool {
        let table = self.build();
        if self.sent.as_ref() == Some(&table) {
            return true;
        }
        self.sent = Some(self.build());
        self.tx.send(RouteEvent::Replace(table)).await.is_ok()
    }

    async fn open(&self, server: &str) -> Result<Connected, String> {
        let channel = (self.connect)(server).map_err(|e| e.to_string())?;
        let request = pb::WatchRoutesRequest {
            from_revision: self.core.revision,
        };
        let watch = tokio::time::timeout(
            self.config.rpc_timeout,
            RouteServiceClient::new(channel.clone()).watch_routes(request),
        )
        .await
        .map_err(|_| "opening the route watch timed out".to_owned())?
        .map_err(|s| format!("WatchRoutes: {}: {}", s.code(), s.message()))?
        .into_inner();
        Ok(Connected { channel, watch })
    }

    /// Reads every cluster's gateway address. Unresolvable or missing addresses
    /// keep what was known before: a DNS blip should not drop a cluster.
    async fn refresh_clusters(&mut self, channel: &Channel) -> Result<(), String> {
        self.last_cluster_refresh = Some(Instant::now());
        let clusters = tokio::time::timeout(
            self.config.rpc_timeout,
            FederationServiceClient::new(channel.clone())
                .list_clusters(pb::ListClustersRequest { allow_stale: true }),
        )
        .await
        .map_err(|_| "ListClusters timed out".to_owned())?
        .map_err(|s| format!("ListClusters: {}: {}", s.code(), s.message()))?
        .into_inner()
        .clusters;
        let mut seen = BTreeSet::new();
        for spec in clusters.into_iter().filter_map(|c| c.spec) {
            if spec.name == self.config.cluster || spec.gateway_address.is_empty() {
                continue;
            }
            seen.insert(spec.name.clone());
            let resolved = tokio::time::timeout(
                self.config.rpc_timeout,
                tokio::net::lookup_host(spec.gateway_address.clone()),
            )
            .await;
            let address = match resolved {
                Ok(Ok(mut addrs)) => addrs.next(),
                _ => None,
            };
            match address {
                Some(address) => {
                    self.gateways.insert(
                        spec.name,
                        GatewayAddress {
                            address,
                            server_name: host_of(&spec.gateway_address).to_owned(),
                        },
                    );
                }
                None => tracing::warn!(
                    cluster = %spec.name,
                    address = %spec.gateway_address,
                    "cannot resolve the cluster's gateway address; keeping what was known"
                ),
            }
        }
        // Clusters gone from the registry lose their gateway.
        self.gateways.retain(|name, _| seen.contains(name));
        Ok(())
    }

    /// Whether a route names a remote cluster whose gateway is unknown, and the last
    /// refresh is old enough to ask again (a cluster without a gateway address would
    /// otherwise be asked about on every route).
    fn missing_gateway(&self) -> bool {
        let recent = self
            .last_cluster_refresh
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        !recent
            && self.core.routes.values().any(|r| {
                r.endpoints.iter().any(|e| {
                    e.weight > 0
                        && e.cluster != self.config.cluster
                        && !self.gateways.contains_key(&e.cluster)
                })
            })
    }
}

async fn run(
    config: RegistrySourceConfig,
    connect: Connector,
    tx: mpsc::Sender<RouteEvent>,
    progress: RegistryProgress,
) {
    let (local_tx, mut local_rx) = watch::channel(LocalView::new());
    let poller = async {
        match config.agent_admin {
            Some(admin) => {
                poll_agent(
                    admin,
                    config.replica_poll_interval,
                    config.rpc_timeout,
                    local_tx,
                )
                .await
            }
            None => std::future::pending().await,
        }
    };
    let mut f = Follower {
        config: config.clone(),
        connect,
        tx,
        core: RouteTable::default(),
        gateways: BTreeMap::new(),
        local: LocalView::new(),
        sent: None,
        last_cluster_refresh: None,
    };
    let follow = async move {
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let mut server_index = 0usize;
        let mut link: Option<Connected> = None;
        let mut retry_at = Instant::now();
        let mut refresh = tokio::time::interval(config.cluster_refresh_interval);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A route can name a cluster whose gateway was not registered yet when the
        // clusters were last read; ask again once a second until it is known, rather
        // than only on the next route or the slow refresh.
        let mut missing_check = tokio::time::interval(Duration::from_secs(1));
        missing_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let lost = match &mut link {
                None => {
                    tokio::select! {
                        () = tokio::time::sleep_until(retry_at) => {}
                        changed = local_rx.changed() => {
                            if changed.is_err() { return; }
                            f.local = local_rx.borrow_and_update().clone();
                            if !f.publish().await { return; }
                            continue;
                        }
                        () = f.tx.closed() => return,
                    }
                    let server = config.servers[server_index % config.servers.len()].clone();
                    let opened = match f.open(&server).await {
                        Ok(c) => f.refresh_clusters(&c.channel).await.map(|()| c),
                        Err(e) => Err(e),
                    };
                    match opened {
                        Ok(c) => {
                            progress.opened(f.core.revision);
                            tracing::info!(%server, from_revision = f.core.revision, "following the registry's routes");
                            backoff.reset();
                            link = Some(c);
                            refresh.reset();
                            if f.tx.send(RouteEvent::RegistryConnected).await.is_err()
                                || !f.publish().await
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            let delay = backoff.delay();
                            tracing::warn!(%server, error = %e, retry_in = ?delay, "cannot follow the registry from this server; trying the next");
                            server_index += 1;
                            retry_at = Instant::now() + delay;
                        }
                    }
                    continue;
                }
                Some(c) => {
                    tokio::select! {
                        msg = c.watch.message() => match msg {
                            Ok(Some(m)) => {
                                if let Some(r) = m.route {
                                    apply_route(&mut f.core, route_from(r));
                                }
                                // Take whatever else has already arrived before
                                // building, so that a burst (the whole table on
                                // the first connect) is one swap. A zero timeout
                                // still polls the stream once.
                                let mut burst_end = None;
                                while let Ok(next) = tokio::time::timeout(Duration::ZERO, c.watch.message()).await {
                                    match next {
                                        Ok(Some(m)) => {
                                            if let Some(r) = m.route {
                                                apply_route(&mut f.core, route_from(r));
                                            }
                                        }
                                        other => {
                                            burst_end = Some(other);
                                            break;
                                        }
                                    }
                                }
                                if f.missing_gateway() {
                                    let channel = c.channel.clone();
                                    if let Err(e) = f.refresh_clusters(&channel).await {
                                        tracing::warn!(error = %e, "cannot refresh cluster gateways");
                                    }
                                }
                                if !f.publish().await { return; }
                                match burst_end {
                                    Some(Ok(None)) => Some("the server ended the watch".to_owned()),
                                    Some(Err(s)) => Some(format!("{}: {}", s.code(), s.message())),
                                    // More to come (the burst loop stops only on an end).
                                    None | Some(Ok(Some(_))) => None,
                                }
                            }
                            Ok(None) => Some("the server ended the watch".to_owned()),
                            Err(s) => Some(format!("{}: {}", s.code(), s.message())),
                        },
                        _ = missing_check.tick() => {
                            if f.missing_gateway() {
                                let channel = c.channel.clone();
                                if let Err(e) = f.refresh_clusters(&channel).await {
                                    tracing::warn!(error = %e, "cannot refresh cluster gateways");
                                }
                                if !f.publish().await { return; }
                            }
                            None
                        }
                        _ = refresh.tick() => {
                            let channel = c.channel.clone();
                            if let Err(e) = f.refresh_clusters(&channel).await {
                                tracing::warn!(error = %e, "cannot refresh cluster gateways");
                            }
                            if !f.publish().await { return; }
                            None
                        }
                        changed = local_rx.changed() => {
                            if changed.is_err() { return; }
                            f.local = local_rx.borrow_and_update().clone();
                            if !f.publish().await { return; }
                            None
                        }
                        () = f.tx.closed() => return,
                    }
                }
            };
            if let Some(why) = lost {
                let server = config.servers[server_index % config.servers.len()].clone();
                tracing::warn!(%server, error = %why, revision = f.core.revision, "lost the registry's route watch; serving the last table");
                link = None;
                server_index += 1;
                // Reconnect at once (another server may be fine); the back-off
                // starts from the next failure.
                retry_at = Instant::now();
                if f.tx.send(RouteEvent::RegistryLost).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = poller => {}
        () = follow => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(model: &str, addr: Option<&str>, phase: &str, local: Option<&str>) -> AgentReplica {
        AgentReplica {
            model: model.into(),
            address: addr.map(str::to_owned),
            registry_phase: phase.into(),
            local_state: local.map(str::to_owned),
        }
    }

    #[test]
    fn agent_phases_map_to_what_the_gateway_may_send_to() {
        let phase = |p, l| local_replica(&agent("m", Some("127.0.0.1:1"), p, l)).map(|r| r.phase);
        assert_eq!(phase("Ready", Some("ready")), Some(ReplicaPhase::Ready));
        assert_eq!(phase("Ready", None), Some(ReplicaPhase::Ready));
        assert_eq!(
            phase("Ready", Some("starting")),
            Some(ReplicaPhase::Starting)
        );
        assert_eq!(
            phase("Starting", Some("ready")),
            Some(ReplicaPhase::Starting)
        );
        assert_eq!(
            phase("Draining", Some("ready")),
            Some(ReplicaPhase::Draining)
        );
        assert_eq!(
            phase("Ready", Some("draining")),
            Some(ReplicaPhase::Draining)
        );
        assert_eq!(phase("Ready", Some("restarting")), None);
        assert_eq!(phase("Gone", None), None);
        assert!(local_replica(&agent("m", None, "Ready", None)).is_none());
        assert!(local_replica(&agent("m", Some("not an address"), "Ready", None)).is_none());
    }

    #[test]
    fn the_agents_json_is_read_with_only_the_fields_needed() {
        let json = r#"[{"workload":"w","model":"m","replica":"r1","id":1,
            "address":"127.0.0.1:9000","registry_phase":"Ready","local_state":"ready",
            "devices":[],"pid":7,"restarts":0,"last_exit":null}]"#;
        let parsed: Vec<AgentReplica> = serde_json::from_str(json).unwrap();
        let view = local_view(&parsed);
        assert_eq!(view["m"][0].address, "127.0.0.1:9000".parse().unwrap());
    }

    #[test]
    fn tombstones_remove_and_the_revision_only_grows() {
        let mut t = RouteTable::default();
        let route = |rev, eps: &[&str]| Route {
            model: "m".into(),
            endpoints: eps
                .iter()
                .map(|c| RouteEndpoint {
                    cluster: (*c).into(),
                    weight: 100,
                    ready_replicas: 1,
                })
                .collect(),
            revision: rev,
        };
        apply_route(&mut t, route(3, &["a"]));
        assert!(t.get("m").is_some());
        apply_route(&mut t, route(5, &[]));
        assert!(t.routes.is_empty());
        assert_eq!(t.revision, 5);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<Duration> = (0..5).map(|_| b.delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[4] >= Duration::from_millis(200) && d[4] <= Duration::from_millis(400));
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }

    #[test]
    fn certificate_names_come_from_the_gateway_address() {
        assert_eq!(host_of("gw.eu.example:7443"), "gw.eu.example");
        assert_eq!(host_of("[::1]:7443"), "::1");
        assert_eq!(host_of("10.0.0.1:7443"), "10.0.0.1");
    }
}
