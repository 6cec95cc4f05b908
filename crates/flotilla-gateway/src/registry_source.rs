//! The registry as a route source: follows `flotilla.v1.RouteService/WatchRoutes`
//! and turns what it says, plus this cluster's own replicas, into routing snapshots.
//!
//! One task per gateway keeps three inputs, all from the same registry server, and
//! builds the table from them with [`RoutingTable::from_core`]:
//! - a copy of core's [`RouteTable`], updated route by route from the watch. After
//!   a reconnect the watch resumes from the last revision seen, so nothing is
//!   reloaded and nothing is missed (the registry's resume invariant);
//! - this cluster's replicas (endpoint and phase), from the client crate's blocking
//!   query over `PlacementService/WatchPlacements` with a cluster filter
//!   ([`RegistryClient::watch_replicas_at`]): each answer is the whole list, with a
//!   version computed from the list itself, so a reconnect needs no resume protocol
//!   and a replica removed meanwhile cannot linger. Endpoints are `host:port` as the
//!   cluster's agent reported them with Ready, DNS names included (a Kubernetes
//!   replica is a Service); they are resolved when connecting;
//! - other clusters' east-west gateways, from `FederationService/ListClusters` on
//!   every connect, whenever a route names a cluster without a known gateway, and
//!   every `cluster_refresh_interval`.
//!
//! A replica turning Ready changes its placement and its model's route in one
//! registry command, but the two reach the gateway on separate calls. When a route
//! counts more Ready replicas here than the replica list has, the route waits (at
//! most `replica_catch_up`) for the list, so that the table never sends local
//! traffic to a model whose replica it does not know yet; when both are waiting,
//! the list is taken first.
//!
//! A [`RouteEvent::Replace`] goes out only when the built table differs from the
//! last one sent. With a tables file ([`RegistrySourceConfig::tables_file`]) the
//! inputs of every table sent are also kept on disk, and a source that starts reads
//! them back and sends that table at once: a gateway restarted while the registry is
//! unreachable serves, and enforces, what it served before (fail-static across
//! restarts). The watch then resumes from the kept revision. The watch going up or down is reported as
//! [`RouteEvent::RegistryConnected`] / [`RouteEvent::RegistryLost`]; while it is
//! down the gateway serves its last table, local replicas included (fail-static),
//! and the source reconnects with a capped, jittered back-off, moving to the next
//! server on every failure.
//!
//! With [`RegistrySourceConfig::follow_governance`], tenants, API key records and
//! policies are followed by watch (`TenantService.WatchGovernance`, beside the
//! route watch on the same server: each message is the whole governance) and sent
//! as [`RouteEvent::Governance`] when they changed. While the link is down the last
//! is enforced, and with a tables file it is kept with the tables, so a gateway
//! restarted while the registry is unreachable enforces what it enforced before.
//!
//! MCP servers (`flotilla.v1alpha1.McpService/WatchMcpServers`, also beside the
//! route watch; each message is the whole list) go into the table, and are kept
//! with it.
//!
//! Transport (plaintext or federation mTLS) is not this module's business: the
//! caller hands in a [`Connector`] that makes a channel to a server address. The
//! replica query, the "never an older list" check and the back-off are the client
//! crate's, shared with the agents' link.

use crate::error::GatewayError;
use crate::governance::Governance;
use crate::source::{RouteEvent, RouteSource};
use crate::table::{
    GatewayAddress, HostRule, LocalReplica, ReplicaPhase, RoutingTable, UpstreamProtocol,
};
use flotilla_client::convert::route_from;
use flotilla_client::freshness::Freshness;
use flotilla_client::link::ServerRotation;
use flotilla_client::{Backoff, RegistryClient};
use flotilla_core::{McpServer, Phase, PlacedReplica, Route, RouteTable};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::route_service_client::RouteServiceClient;
use flotilla_proto::v1::tenant_service_client::TenantServiceClient;
use flotilla_proto::v1alpha1::{self as alpha, mcp_service_client::McpServiceClient};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Makes a (lazily connecting) gRPC channel to a registry server at `host:port`.
pub type Connector = Arc<dyn Fn(&str) -> Result<Channel, GatewayError> + Send + Sync>;

/// How the registry source finds the registry.
#[derive(Debug, Clone)]
pub struct RegistrySourceConfig {
    /// This cluster's name, as the registry spells it.
    pub cluster: String,
    /// Federation servers (`host:port`); any one will do.
    pub servers: Vec<String>,
    /// How long one replica query waits for a change before it answers with the
    /// same list.
    pub replica_wait: Duration,
    /// How long a route that counts more Ready replicas here than the replica list
    /// shows waits for the list before it is swapped in anyway.
    pub replica_catch_up: Duration,
    pub cluster_refresh_interval: Duration,
    /// Bound on one unary call and on opening the watch (a replica query gets
    /// `replica_wait` on top).
    pub rpc_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Host/path rules for non-OpenAI traffic (static configuration).
    pub host_rules: Vec<HostRule>,
    /// Where the last tables are kept (see the module documentation); none by default.
    pub tables_file: Option<PathBuf>,
    /// Also follow the registry's tenants, API key records and policies (by
    /// watch), and send them as [`RouteEvent::Governance`] whenever they change;
    /// off by default.
    pub follow_governance: bool,
}

impl RegistrySourceConfig {
    pub fn new(cluster: impl Into<String>, servers: Vec<String>) -> RegistrySourceConfig {
        RegistrySourceConfig {
            cluster: cluster.into(),
            servers,
            replica_wait: Duration::from_secs(10),
            replica_catch_up: Duration::from_secs(1),
            cluster_refresh_interval: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            host_rules: Vec::new(),
            tables_file: None,
            follow_governance: false,
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
            self.replica_wait,
            self.replica_catch_up,
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

type LocalView = BTreeMap<String, Vec<LocalReplica>>;

/// This cluster's replicas as the registry last listed them.
#[derive(Debug, Default, Clone, PartialEq)]
struct LocalReplicas {
    /// The replica list's version; 0 before the first answer.
    version: u64,
    /// What the gateway may send to, by model.
    view: LocalView,
    /// Ready replicas by model, with an endpoint or not: what a route counts, to
    /// tell whether the list is behind the routes.
    ready: BTreeMap<String, u32>,
}

/// The gateway's view of one replica the registry placed on `cluster`, or `None`
/// if it takes no traffic here: placed elsewhere, no endpoint yet (the agent
/// reports it with Ready), or an endpoint that cannot be a URI authority (the
/// registry validates endpoints; this only keeps a bad one from failing every
/// request sent its way).
fn local_replica(cluster: &str, p: &PlacedReplica) -> Option<LocalReplica> {
    let r = &p.replica;
    if r.cluster != cluster {
        return None;
    }
    let endpoint = r.endpoint.as_deref()?;
    flotilla_core::placement::validate_endpoint(&p.workload, endpoint).ok()?;
    let phase = match r.phase {
        Phase::Starting => ReplicaPhase::Starting,
        Phase::Ready => ReplicaPhase::Ready,
        // Finishing what it has: it gets nothing new, but stays in the table so
        // that its ejection state and outstanding count are kept.
        Phase::Draining => ReplicaPhase::Draining,
        Phase::Gone => return None,
    };
    Some(LocalReplica {
        address: endpoint.to_owned(),
        phase,
        protocol: UpstreamProtocol::Http1,
        load: None,
    })
}

fn local_replicas(cluster: &str, version: u64, placed: &[PlacedReplica]) -> LocalReplicas {
    let mut local = LocalReplicas {
        version,
        ..LocalReplicas::default()
    };
    for p in placed {
        if p.replica.cluster == cluster && p.replica.phase == Phase::Ready {
            *local.ready.entry(p.model.clone()).or_default() += 1;
        }
        if let Some(l) = local_replica(cluster, p) {
            local.view.entry(p.model.clone()).or_default().push(l);
        }
    }
    for v in local.view.values_mut() {
        // A stable order keeps equal lists equal tables (no swap for nothing).
        v.sort_by(|a, b| a.address.cmp(&b.address));
    }
    local
}

/// Whether some route counts more Ready replicas of a model in `cluster` than
/// `ready` has: the replica list has not caught up with the routes yet. (A route
/// leaves out replicas at weight 0 during a move, so a list that has caught up
/// counts at least as many.)
fn replicas_behind(routes: &RouteTable, cluster: &str, ready: &BTreeMap<String, u32>) -> bool {
    routes.routes.values().any(|route| {
        route.endpoints.iter().any(|e| {
            e.cluster == cluster && e.ready_replicas > ready.get(&route.model).copied().unwrap_or(0)
        })
    })
}

/// (the log index the answer reflects, the list's version, the list).
type ReplicaAnswer = Result<(u64, u64, Vec<PlacedReplica>), String>;
type ReplicaQuery = Pin<Box<dyn Future<Output = ReplicaAnswer> + Send>>;

/// One `replica` blocking query: answers when the list differs from `known`,
/// or after `wait` with the same list.
fn query_replicas(
    server: &str,
    channel: Channel,
    cluster: String,
    known: u64,
    wait: Duration,
    rpc_timeout: Duration,
) -> ReplicaQuery {
    let mut client = RegistryClient::from_channel(server, channel);
    Box::pin(async move {
        tokio::time::timeout(
            wait + rpc_timeout,
            client.watch_replicas_at(&cluster, known, wait),
        )
        .await
        .map_err(|_| "the replica query timed out".to_owned())?
        .map_err(|e| format!("the replica query: {e}"))
    })
}

/// The outstanding query's answer; never, when none is outstanding.
async fn answer(query: &mut Option<ReplicaQuery>) -> ReplicaAnswer {
    match query {
        Some(q) => q.await,
        None => std::future::pending().await,
    }
}

/// The next message of a watch that may not be open (governance, MCP servers),
/// or never without one.
async fn next_message<T>(
    watch: &mut Option<tonic::Streaming<T>>,
) -> Result<Option<T>, tonic::Status> {
    match watch {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------- registry

// ---------------------------------------------------------------- kept tables

/// What a table is built from, as kept on disk between runs: core's route table
/// (with its revision, to resume the watch), this cluster's replicas and the other
/// clusters' gateways.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct KeptTables {
    format: u32,
    routes: RouteTable,
    replicas: BTreeMap<String, Vec<KeptReplica>>,
    ready: BTreeMap<String, u32>,
    gateways: BTreeMap<String, KeptGateway>,
    /// The governance last read from the registry (with `follow_governance`);
    /// absent from files written before it was kept.
    #[serde(default)]
    governance: Option<Governance>,
    /// MCP servers; absent from files written before they were kept.
    #[serde(default)]
    mcp: Vec<McpServer>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct KeptReplica {
    address: String,
    phase: ReplicaPhase,
    protocol: UpstreamProtocol,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct KeptGateway {
    address: SocketAddr,
    server_name: String,
}

/// The kept format this version writes and reads.
const KEPT_FORMAT: u32 = 1;

impl KeptTables {
    fn of(f: &Follower) -> KeptTables {
        KeptTables {
            format: KEPT_FORMAT,
            routes: f.core.clone(),
            replicas: f
                .local
                .view
                .iter()
                .map(|(model, rs)| {
                    let kept = rs
                        .iter()
                        .map(|r| KeptReplica {
                            address: r.address.clone(),
                            phase: r.phase,
                            protocol: r.protocol,
                        })
                        .collect();
                    (model.clone(), kept)
                })
                .collect(),
            ready: f.local.ready.clone(),
            gateways: f
                .gateways
                .iter()
                .map(|(c, g)| {
                    let kept = KeptGateway {
                        address: g.address,
                        server_name: g.server_name.clone(),
                    };
                    (c.clone(), kept)
                })
                .collect(),
            governance: f.governance.as_deref().cloned(),
            mcp: f.mcp.clone(),
        }
    }

    /// Puts the kept inputs in `f`. The replica list's version stays 0, so the
    /// first query of the registry answers the current list at once.
    fn restore(self, f: &mut Follower) {
        f.core = self.routes;
        f.local = LocalReplicas {
            version: 0,
            view: self
                .replicas
                .into_iter()
                .map(|(model, rs)| {
                    let local = rs
                        .into_iter()
                        .map(|r| LocalReplica {
                            address: r.address,
                            phase: r.phase,
                            protocol: r.protocol,
                            load: None,
                        })
                        .collect();
                    (model, local)
                })
                .collect(),
            ready: self.ready,
        };
        f.governance = self.governance.map(Arc::new);
        f.mcp = self.mcp;
        f.gateways = self
            .gateways
            .into_iter()
            .map(|(c, g)| {
                let address = GatewayAddress {
                    address: g.address,
                    server_name: g.server_name,
                };
                (c, address)
            })
            .collect();
    }

    /// Writes the file whole or not at all (a temporary file, then a rename).
    async fn write(&self, file: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let tmp = file.with_extension("tmp");
        tokio::fs::write(&tmp, json).await?;
        tokio::fs::rename(&tmp, file).await
    }

    /// The kept tables, `None` when there is no file; an error names what is wrong.
    async fn read(file: &Path) -> Result<Option<KeptTables>, String> {
        let bytes = match tokio::fs::read(file).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let kept: KeptTables = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if kept.format != KEPT_FORMAT {
            return Err(format!(
                "format {} (this version reads format {KEPT_FORMAT})",
                kept.format
            ));
        }
        Ok(Some(kept))
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

/// One message of the route watch, into `core`, or into `relist` while the whole
/// table is listed again (which replaces `core` once the watch says it is synced).
fn take_watched(
    core: &mut RouteTable,
    relist: &mut Option<RouteTable>,
    m: pb::WatchRoutesResponse,
) {
    match (m.route, relist.as_mut()) {
        (Some(r), Some(fresh)) => apply_route(fresh, route_from(r)),
        (Some(r), None) => apply_route(core, route_from(r)),
        (None, Some(_)) if m.synced => {
            let mut fresh = relist.take().unwrap_or_default();
            fresh.revision = fresh.revision.max(m.revision);
            tracing::info!(
                revision = fresh.revision,
                routes = fresh.routes.len(),
                "listed the whole route table again; it replaces the one held"
            );
            *core = fresh;
        }
        // A bookmark (or synced): everything up to its revision was sent, so a
        // watch resumed from there misses nothing.
        (None, None) => core.revision = core.revision.max(m.revision),
        (None, Some(_)) => {}
    }
}

/// Splits `host:port` (host may be a bracketed IPv6 literal) for the certificate
/// name; the address itself is resolved separately.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

struct Connected {
    server: String,
    channel: Channel,
    watch: tonic::Streaming<pb::WatchRoutesResponse>,
    /// With `follow_governance`: the governance watch on the same server.
    governance: Option<tonic::Streaming<pb::WatchGovernanceResponse>>,
    /// The MCP server watch on the same server; `None` from a server that
    /// predates `flotilla.v1alpha1.McpService`.
    mcp: Option<tonic::Streaming<alpha::WatchMcpServersResponse>>,
    /// The replica query in flight, if any.
    replicas: Option<ReplicaQuery>,
    /// After a failed query: when to ask again.
    replicas_retry_at: Option<Instant>,
}

struct Follower {
    config: RegistrySourceConfig,
    connect: Connector,
    tx: mpsc::Sender<RouteEvent>,
    core: RouteTable,
    /// The whole table, being listed again after the watch's revision was
    /// compacted away; the old one serves until this one is complete (synced).
    relist: Option<RouteTable>,
    gateways: BTreeMap<String, GatewayAddress>,
    local: LocalReplicas,
    /// Delays between failed replica queries (the route watch has its own).
    replica_backoff: Backoff,
    /// A replica query failed and none has answered since (logged once).
    replicas_failing: bool,
    /// The highest log index a replica list reflected. A server that is behind
    /// answers its older list at once; taken, it would bring back replicas that
    /// are gone.
    replicas_freshness: Freshness,
    /// The last table sent, to send only changes.
    sent: Option<RoutingTable>,
    last_cluster_refresh: Option<Instant>,
    /// The last governance sent, to send only changes.
    governance: Option<Arc<Governance>>,
    /// MCP servers, as the registry last listed them.
    mcp: Vec<McpServer>,
}

impl Follower {
    /// One message of the route watch: a route into the table (or into the one
    /// being listed again), or progress.
    fn take_watched(&mut self, m: pb::WatchRoutesResponse) {
        take_watched(&mut self.core, &mut self.relist, m);
    }

    /// The watch ended because its revision was compacted away: the next one lists
    /// the whole table.
    fn relist_after(&mut self, status: &tonic::Status) {
        if status.code() == tonic::Code::OutOfRange && self.relist.is_none() {
            tracing::warn!(revision = self.core.revision, reason = %status.message(), "the registry no longer has the route changes since this revision; listing the whole table again");
            self.relist = Some(RouteTable::default());
        }
    }

    fn build(&self) -> RoutingTable {
        let mut table = RoutingTable::from_core(
            &self.core,
            &self.config.cluster,
            &self.local.view,
            &self.gateways,
            self.config.host_rules.clone(),
        );
        table.mcp = self.mcp.clone();
        table
    }

    /// Sends the table if it changed, and keeps its inputs on disk. `false` if the
    /// gateway is gone.
    async fn publish(&mut self) -> bool {
        let table = self.build();
        if self.sent.as_ref() == Some(&table) {
            return true;
        }
        self.sent = Some(self.build());
        if self.tx.send(RouteEvent::Replace(table)).await.is_err() {
            return false;
        }
        self.keep().await;
        true
    }

    /// With a tables file, writes what a restart without the registry serves and
    /// enforces.
    async fn keep(&self) {
        if let Some(file) = &self.config.tables_file
            && let Err(e) = KeptTables::of(self).write(file).await
        {
            tracing::warn!(file = %file.display(), error = %e, "cannot keep the routing tables on disk; a restart without the registry would start empty");
        }
    }

    /// Takes back the tables a previous run kept; whether there were any.
    async fn restore(&mut self) -> bool {
        let Some(file) = self.config.tables_file.clone() else {
            return false;
        };
        match KeptTables::read(&file).await {
            Ok(None) => false,
            Ok(Some(kept)) => {
                tracing::info!(file = %file.display(), revision = kept.routes.revision, "serving the routing tables kept by the last run until the registry answers");
                kept.restore(self);
                true
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "the kept routing tables cannot be read; starting without them");
                false
            }
        }
    }

    async fn open(&self, server: &str) -> Result<Connected, String> {
        let channel = (self.connect)(server).map_err(|e| e.to_string())?;
        let request = pb::WatchRoutesRequest {
            from_revision: if self.relist.is_some() {
                0
            } else {
                self.core.revision
            },
            progress: true,
        };
        let watch = tokio::time::timeout(
            self.config.rpc_timeout,
            RouteServiceClient::new(channel.clone()).watch_routes(request),
        )
        .await
        .map_err(|_| "opening the route watch timed out".to_owned())?
        .map_err(|s| format!("WatchRoutes: {}: {}", s.code(), s.message()))?
        .into_inner();
        let governance = if self.config.follow_governance {
            let opened = tokio::time::timeout(
                self.config.rpc_timeout,
                TenantServiceClient::new(channel.clone())
                    .watch_governance(pb::WatchGovernanceRequest {}),
            )
            .await
            .map_err(|_| "opening the governance watch timed out".to_owned())?
            .map_err(|s| format!("WatchGovernance: {}: {}", s.code(), s.message()))?;
            Some(opened.into_inner())
        } else {
            None
        };
        let mcp = match tokio::time::timeout(
            self.config.rpc_timeout,
            McpServiceClient::new(channel.clone())
                .watch_mcp_servers(alpha::WatchMcpServersRequest {}),
        )
        .await
        .map_err(|_| "opening the MCP server watch timed out".to_owned())?
        {
            Ok(opened) => Some(opened.into_inner()),
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                tracing::warn!(%server, "this registry server does not serve MCP servers (flotilla.v1alpha1.McpService); routing none until one does");
                None
            }
            Err(s) => return Err(format!("WatchMcpServers: {}: {}", s.code(), s.message())),
        };
        Ok(Connected {
            server: server.to_owned(),
            channel,
            watch,
            governance,
            mcp,
            replicas: None,
            replicas_retry_at: None,
        })
    }

    /// Starts the next replica query, from the version held.
    fn ask_replicas(&self, c: &mut Connected) {
        c.replicas = Some(query_replicas(
            &c.server,
            c.channel.clone(),
            self.config.cluster.clone(),
            self.local.version,
            self.config.replica_wait,
            self.config.rpc_timeout,
        ));
        c.replicas_retry_at = None;
    }

    /// Takes a query's answer in and asks again (at once after an answer, after a
    /// back-off after a failure, keeping the last list meanwhile). Whether the list
    /// changed.
    fn take_replicas(&mut self, c: &mut Connected, answer: ReplicaAnswer) -> bool {
        let answer = answer.and_then(|(index, version, placed)| {
            self.replicas_freshness
                .accept(&c.server, index)
                .map_err(|e| e.to_string())?;
            Ok((version, placed))
        });
        match answer {
            Ok((version, placed)) => {
                if self.replicas_failing {
                    tracing::info!("reading this cluster's replicas from the registry again");
                    self.replicas_failing = false;
                }
                self.replica_backoff.reset();
                let changed = version != self.local.version;
                if changed {
                    self.local = local_replicas(&self.config.cluster, version, &placed);
                }
                self.ask_replicas(c);
                changed
            }
            Err(e) => {
                let delay = self.replica_backoff.next_delay();
                if !self.replicas_failing {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot read this cluster's replicas from the registry; keeping the last list");
                    self.replicas_failing = true;
                }
                c.replicas = None;
                c.replicas_retry_at = Some(Instant::now() + delay);
                false
            }
        }
    }

    fn replicas_behind(&self) -> bool {
        replicas_behind(&self.core, &self.config.cluster, &self.local.ready)
    }

    /// Waits, at most `replica_catch_up`, until the replica list has caught up
    /// with the routes (see the module documentation).
    async fn catch_up(&mut self, c: &mut Connected) {
        let deadline = Instant::now() + self.config.replica_catch_up;
        while self.replicas_behind() {
            if c.replicas.is_none() {
                if c.replicas_retry_at.is_some_and(|at| at > Instant::now()) {
                    // Failing: the back-off stands; the route goes in without the list.
                    return;
                }
                self.ask_replicas(c);
            }
            match tokio::time::timeout_at(deadline, answer(&mut c.replicas)).await {
                Ok(a) => {
                    c.replicas = None;
                    self.take_replicas(c, a);
                }
                Err(_) => {
                    tracing::warn!(
                        waited = ?self.config.replica_catch_up,
                        "routes count Ready replicas here that the registry's replica list does not show yet; using the routes without them"
                    );
                    return;
                }
            }
        }
    }

    /// Takes a governance watch message in: the whole governance, sent on (and
    /// kept) when it changed. `false` when the gateway is gone.
    async fn take_governance(&mut self, m: pb::WatchGovernanceResponse) -> bool {
        let read = Governance::from_registry(m.tenants, m.api_keys, m.policies);
        if self.governance.as_deref() == Some(&read) {
            return true;
        }
        let read = Arc::new(read);
        self.governance = Some(read.clone());
        if self.tx.send(RouteEvent::Governance(read)).await.is_err() {
            return false;
        }
        self.keep().await;
        true
    }

    /// Takes an MCP server watch message in (the whole list); sends the table
    /// when it changed. `false` when the gateway is gone.
    async fn take_mcp(&mut self, m: alpha::WatchMcpServersResponse) -> bool {
        let mut servers = Vec::with_capacity(m.servers.len());
        for s in m.servers {
            let name = s.name.clone();
            match flotilla_client::convert::mcp::server_from(s) {
                Ok(server) => servers.push(server),
                Err(e) => {
                    tracing::warn!(server = %name, error = %e.message(), "the registry sent an MCP server this gateway cannot read; leaving it out")
                }
            }
        }
        self.mcp = servers;
        self.publish().await
    }

    /// Reads every cluster's gateway address. Unresolvable or missing addresses
    /// keep what was known before: a DNS blip should not drop a cluster.
    async fn refresh_clusters(&mut self, channel: &Channel) -> Result<(), String> {
        self.last_cluster_refresh = Some(Instant::now());
        let clusters = tokio::time::timeout(
            self.config.rpc_timeout,
            flotilla_client::lists::clusters(channel, true),
        )
        .await
        .map_err(|_| "ListClusters timed out".to_owned())?
        .map_err(|s| format!("ListClusters: {}: {}", s.code(), s.message()))?;
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
    let mut f = Follower {
        config: config.clone(),
        connect,
        tx,
        core: RouteTable::default(),
        relist: None,
        gateways: BTreeMap::new(),
        local: LocalReplicas::default(),
        replica_backoff: Backoff::new(
            config.backoff_initial,
            config.backoff_max,
            Backoff::seed_from(&config.cluster),
        ),
        replicas_failing: false,
        replicas_freshness: Freshness::default(),
        sent: None,
        last_cluster_refresh: None,
        governance: None,
        mcp: Vec::new(),
    };
    if f.restore().await {
        if !f.publish().await {
            return;
        }
        // Enforced as kept until the registry answers (fail-static).
        if let Some(g) = f.governance.clone().filter(|_| config.follow_governance)
            && f.tx.send(RouteEvent::Governance(g)).await.is_err()
        {
            return;
        }
    }
    let mut backoff = Backoff::new(
        config.backoff_initial,
        config.backoff_max,
        Backoff::seed_from(&config.cluster),
    );
    let servers = ServerRotation::new(config.servers.len());
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
                    () = f.tx.closed() => return,
                }
                let server = config.servers[servers.current()].clone();
                let opened = match f.open(&server).await {
                    Ok(c) => f.refresh_clusters(&c.channel).await.map(|()| c),
                    Err(e) => Err(e),
                };
                match opened {
                    Ok(mut c) => {
                        progress.opened(f.core.revision);
                        tracing::info!(%server, from_revision = f.core.revision, "following the registry's routes and this cluster's replicas");
                        backoff.reset();
                        f.ask_replicas(&mut c);
                        link = Some(c);
                        refresh.reset();
                        if f.tx.send(RouteEvent::RegistryConnected).await.is_err()
                            || !f.publish().await
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(%server, error = %e, retry_in = ?delay, "cannot follow the registry from this server; trying the next");
                        servers.failed(servers.current());
                        retry_at = Instant::now() + delay;
                    }
                }
                continue;
            }
            Some(c) => {
                tokio::select! {
                    // The replica list before a route that arrived with it.
                    biased;
                    a = answer(&mut c.replicas) => {
                        c.replicas = None;
                        if f.take_replicas(c, a) && !f.publish().await {
                            return;
                        }
                        None
                    }
                    () = sleep_until_some(c.replicas_retry_at) => {
                        f.ask_replicas(c);
                        None
                    }
                    msg = c.watch.message() => match msg {
                        Ok(Some(m)) => {
                            f.take_watched(m);
                            // Take whatever else has already arrived before
                            // building, so that a burst (the whole table on the
                            // first connect) is one swap. A zero timeout still
                            // polls the stream once.
                            let mut burst_end = None;
                            while let Ok(next) = tokio::time::timeout(Duration::ZERO, c.watch.message()).await {
                                match next {
                                    Ok(Some(m)) => f.take_watched(m),
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
                            f.catch_up(c).await;
                            if !f.publish().await { return; }
                            match burst_end {
                                Some(Ok(None)) => Some("the server ended the watch".to_owned()),
                                Some(Err(s)) => {
                                    f.relist_after(&s);
                                    Some(format!("{}: {}", s.code(), s.message()))
                                }
                                // More to come (the burst loop stops only on an end).
                                None | Some(Ok(Some(_))) => None,
                            }
                        }
                        Ok(None) => Some("the server ended the watch".to_owned()),
                        Err(s) => {
                            f.relist_after(&s);
                            Some(format!("{}: {}", s.code(), s.message()))
                        }
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
                    msg = next_message(&mut c.mcp) => match msg {
                        Ok(Some(m)) => {
                            if !f.take_mcp(m).await { return; }
                            None
                        }
                        Ok(None) => Some("the server ended the MCP server watch".to_owned()),
                        Err(s) => Some(format!("MCP server watch: {}: {}", s.code(), s.message())),
                    },
                    msg = next_message(&mut c.governance) => match msg {
                        Ok(Some(m)) => {
                            if !f.take_governance(m).await { return; }
                            None
                        }
                        // Enforcing the last governance meanwhile (fail-static).
                        Ok(None) => Some("the server ended the governance watch".to_owned()),
                        Err(s) => Some(format!("governance watch: {}: {}", s.code(), s.message())),
                    },
                    _ = refresh.tick() => {
                        let channel = c.channel.clone();
                        if let Err(e) = f.refresh_clusters(&channel).await {
                            tracing::warn!(error = %e, "cannot refresh cluster gateways");
                        }
                        if !f.publish().await { return; }
                        None
                    }
                    () = f.tx.closed() => return,
                }
            }
        };
        if let Some(why) = lost {
            let server = config.servers[servers.current()].clone();
            tracing::warn!(%server, error = %why, revision = f.core.revision, "lost the registry's route watch; serving the last table");
            link = None;
            servers.failed(servers.current());
            // Reconnect at once (another server may be fine); the back-off
            // starts from the next failure.
            retry_at = Instant::now();
            if f.tx.send(RouteEvent::RegistryLost).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_interval_is_a_configuration_error() {
        let mut config = RegistrySourceConfig::new("a", vec!["127.0.0.1:7400".into()]);
        assert!(config.validate().is_ok());
        config.rpc_timeout = Duration::ZERO;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("above zero"), "{err}");
    }

    fn watched_route(model: &str, revision: u64, cluster: Option<&str>) -> pb::WatchRoutesResponse {
        pb::WatchRoutesResponse {
            route: Some(pb::Route {
                model: model.into(),
                endpoints: cluster
                    .map(|c| pb::RouteEndpoint {
                        cluster: c.into(),
                        weight: 100,
                        ready_replicas: 1,
                    })
                    .into_iter()
                    .collect(),
                revision,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn after_a_compaction_the_old_table_serves_until_the_whole_new_one_is_in() {
        let mut core = RouteTable::default();
        let mut relist = None;
        take_watched(&mut core, &mut relist, watched_route("gone", 3, Some("a")));
        take_watched(&mut core, &mut relist, watched_route("kept", 4, Some("a")));

        // The watch's revision was compacted away: list again, from 0.
        relist = Some(RouteTable::default());
        take_watched(
            &mut core,
            &mut relist,
            watched_route("kept", 2000, Some("b")),
        );
        assert_eq!(core.routes.len(), 2, "the old table serves meanwhile");
        assert_eq!(core.revision, 4);
        take_watched(
            &mut core,
            &mut relist,
            pb::WatchRoutesResponse {
                synced: true,
                revision: 2100,
                ..Default::default()
            },
        );
        assert!(relist.is_none());
        assert_eq!(
            core.routes.keys().collect::<Vec<_>>(),
            ["kept"],
            "a removal the compaction forgot is gone too"
        );
        assert_eq!(core.revision, 2100, "resumes after everything it was sent");
        take_watched(
            &mut core,
            &mut relist,
            pb::WatchRoutesResponse {
                bookmark: true,
                revision: 2200,
                ..Default::default()
            },
        );
        assert_eq!(core.revision, 2200);
    }

    use flotilla_core::{Replica, ReplicaId, RouteEndpoint, Timestamp};

    fn placed(
        model: &str,
        id: u64,
        cluster: &str,
        phase: Phase,
        endpoint: Option<&str>,
    ) -> PlacedReplica {
        PlacedReplica {
            workload: format!("w-{model}"),
            model: model.into(),
            replica: Replica {
                id: ReplicaId(id),
                cluster: cluster.into(),
                devices: Vec::new(),
                phase,
                phase_since: Timestamp(0),
                placed_at: Timestamp(0),
                drain_deadline: None,
                evicted: false,
                preempted_for: None,
                endpoint: endpoint.map(str::to_owned),
            },
        }
    }

    fn route(model: &str, endpoints: &[(&str, u32)]) -> Route {
        Route {
            model: model.into(),
            endpoints: endpoints
                .iter()
                .map(|(cluster, ready)| RouteEndpoint {
                    cluster: (*cluster).into(),
                    weight: 100,
                    ready_replicas: *ready,
                })
                .collect(),
            revision: 1,
        }
    }

    #[test]
    fn registry_phases_map_to_what_the_gateway_may_send_to() {
        let phase =
            |p| local_replica("a", &placed("m", 1, "a", p, Some("10.0.0.1:80"))).map(|r| r.phase);
        assert_eq!(phase(Phase::Ready), Some(ReplicaPhase::Ready));
        assert_eq!(phase(Phase::Starting), Some(ReplicaPhase::Starting));
        assert_eq!(phase(Phase::Draining), Some(ReplicaPhase::Draining));
        assert_eq!(phase(Phase::Gone), None);
    }

    #[test]
    fn endpoints_may_be_dns_names_and_are_kept_as_written() {
        let service = "llama-r7.flotilla-replicas.svc:8000";
        let r = local_replica("a", &placed("m", 7, "a", Phase::Ready, Some(service)));
        assert_eq!(r.map(|r| r.address), Some(service.to_owned()));
        let v6 = local_replica(
            "a",
            &placed("m", 8, "a", Phase::Ready, Some("[fd00::8]:8000")),
        );
        assert_eq!(v6.map(|r| r.address), Some("[fd00::8]:8000".to_owned()));
    }

    #[test]
    fn replicas_without_a_usable_endpoint_or_of_other_clusters_take_no_traffic_here() {
        // Starting replicas have no endpoint until the agent reports them Ready.
        assert!(local_replica("a", &placed("m", 1, "a", Phase::Starting, None)).is_none());
        assert!(local_replica("a", &placed("m", 1, "a", Phase::Ready, None)).is_none());
        assert!(local_replica("a", &placed("m", 1, "a", Phase::Ready, Some("no port"))).is_none());
        assert!(
            local_replica("a", &placed("m", 1, "b", Phase::Ready, Some("10.0.0.1:80"))).is_none()
        );
    }

    #[test]
    fn the_local_view_groups_by_model_in_a_stable_order_and_counts_ready_replicas() {
        let list = vec![
            placed("llama", 3, "a", Phase::Ready, Some("llama-r3.ns.svc:8000")),
            placed("llama", 1, "a", Phase::Ready, Some("10.0.0.9:8000")),
            placed("llama", 2, "a", Phase::Draining, Some("10.0.0.2:8000")),
            // Ready, but its endpoint is not known: counted, not routable.
            placed("llama", 4, "a", Phase::Ready, None),
            placed("llama", 5, "b", Phase::Ready, Some("10.1.0.5:8000")),
            placed("qwen", 6, "a", Phase::Starting, None),
        ];
        let local = local_replicas("a", 42, &list);
        assert_eq!(local.version, 42);
        let llama: Vec<(&str, ReplicaPhase)> = local.view["llama"]
            .iter()
            .map(|r| (r.address.as_str(), r.phase))
            .collect();
        assert_eq!(
            llama,
            [
                ("10.0.0.2:8000", ReplicaPhase::Draining),
                ("10.0.0.9:8000", ReplicaPhase::Ready),
                ("llama-r3.ns.svc:8000", ReplicaPhase::Ready),
            ]
        );
        assert!(!local.view.contains_key("qwen"));
        assert_eq!(local.ready, BTreeMap::from([("llama".to_owned(), 3)]));

        // The same list in another order is the same view: no table swap for nothing.
        let mut reversed = list.clone();
        reversed.reverse();
        assert_eq!(local_replicas("a", 42, &reversed), local);
    }

    #[test]
    fn the_list_is_behind_while_a_route_counts_more_ready_replicas_here_than_it_has() {
        let mut routes = RouteTable::default();
        routes
            .routes
            .insert("llama".into(), route("llama", &[("a", 1), ("b", 2)]));
        let ready = |n: u32| BTreeMap::from([("llama".to_owned(), n)]);
        // A move's target turned Ready: the route says so, the list does not yet.
        assert!(replicas_behind(&routes, "a", &BTreeMap::new()));
        assert!(replicas_behind(&routes, "a", &ready(0)));
        assert!(!replicas_behind(&routes, "a", &ready(1)));
        // A replica at weight 0 is Ready in the list but not counted by the route.
        assert!(!replicas_behind(&routes, "a", &ready(2)));
        // Other clusters' counts are theirs: cluster c serves nothing here.
        assert!(!replicas_behind(&routes, "c", &BTreeMap::new()));
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

    #[tokio::test]
    async fn kept_tables_are_read_back_and_a_file_that_is_not_ours_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("tables.json");
        assert_eq!(
            KeptTables::read(&file).await,
            Ok(None),
            "no file: nothing kept"
        );

        let mut routes = RouteTable::default();
        apply_route(&mut routes, route("llama", &[("a", 1)]));
        let kept = KeptTables {
            format: KEPT_FORMAT,
            routes,
            replicas: BTreeMap::from([(
                "llama".to_owned(),
                vec![KeptReplica {
                    address: "10.0.0.1:8000".into(),
                    phase: ReplicaPhase::Ready,
                    protocol: UpstreamProtocol::Http1,
                }],
            )]),
            ready: BTreeMap::from([("llama".to_owned(), 1)]),
            gateways: BTreeMap::new(),
            governance: Some(Governance::from_registry(
                vec![pb::Tenant {
                    name: "acme".into(),
                    identities: vec!["spiffe://f/app".into()],
                    etag: String::new(),
                }],
                Vec::new(),
                Vec::new(),
            )),
            mcp: vec![McpServer {
                name: "tools".into(),
                host: String::new(),
                path_prefix: "/mcp".into(),
                service: "tools-mcp".into(),
                tools: BTreeMap::from([("acme".to_owned(), vec!["search".to_owned()])]),
            }],
        };
        kept.write(&file).await.expect("written");
        assert_eq!(KeptTables::read(&file).await, Ok(Some(kept.clone())));

        tokio::fs::write(&file, b"not json").await.expect("written");
        assert!(KeptTables::read(&file).await.is_err());
        let newer = KeptTables {
            format: KEPT_FORMAT + 1,
            ..kept
        };
        tokio::fs::write(&file, serde_json::to_vec(&newer).expect("json"))
            .await
            .expect("written");
        let err = KeptTables::read(&file).await.expect_err("a newer format");
        assert!(err.contains("format 2"), "{err}");
    }

    #[test]
    fn certificate_names_come_from_the_gateway_address() {
        assert_eq!(host_of("gw.eu.example:7443"), "gw.eu.example");
        assert_eq!(host_of("[::1]:7443"), "::1");
        assert_eq!(host_of("10.0.0.1:7443"), "10.0.0.1");
    }
}
