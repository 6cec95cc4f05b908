//! One flotilla server: its store, its Raft, its gRPC services (Raft, registry, health)
//! and its leader-side housekeeping, started together and shut down together.

use crate::api::{Forwarder, RegistryApi};
use crate::error::{Error, Result};
use crate::network::{Network, NetworkConfig};
use crate::raft_service::RaftService;
use crate::store::{self, Applied, StateMachineStore, StoreConfig};
use crate::types::{Node, NodeId, Raft};
use crate::v1::ApiCore;
use crate::v1::pki::{CaHolder, PkiApi};
use crate::v1::signals::SignalApi;
use flotilla_client::TransportSecurity;
use flotilla_proto::raft::v1::raft_server::RaftServer;
use flotilla_proto::registry::v1::registry_server::RegistryServer as RegistryGrpc;
use flotilla_proto::registry::v1::{JoinRequest, registry_client::RegistryClient};
use flotilla_proto::v1::{
    capacity_service_server::CapacityServiceServer,
    federation_service_server::FederationServiceServer, pki_service_server::PkiServiceServer,
    placement_service_server::PlacementServiceServer, policy_service_server::PolicyServiceServer,
    route_service_server::RouteServiceServer, tenant_service_server::TenantServiceServer,
    workload_service_server::WorkloadServiceServer,
};
use flotilla_proto::v1alpha1::mcp_service_server::McpServiceServer;
use flotilla_proto::v1alpha1::signal_service_server::SignalServiceServer;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Static configuration of one server (flags and files; desired state lives in the registry).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub federation: String,
    /// `None`: the id stored in the data directory, or a new one.
    pub node_id: Option<NodeId>,
    /// Where other servers reach this one (`host:port`); defaults to the bound address.
    pub advertise: Option<String>,
    pub security: TransportSecurity,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many applied entries since the last one; the log
    /// before it is then purged. Memory does not depend on it (the state is in
    /// memory either way); disk and a restart's replay time do.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log after a snapshot (for followers slightly behind).
    pub entries_kept_after_snapshot: u64,
    /// The store's page cache, in bytes.
    pub store_cache_bytes: usize,
    /// How often the leader runs the scheduler; `None` turns housekeeping off.
    pub housekeeping_interval: Option<Duration>,
    /// The largest gRPC message sent or accepted (Raft and registry services).
    pub max_message_bytes: usize,
    /// The largest snapshot accepted from a peer.
    pub max_snapshot_bytes: usize,
    /// fsync every acknowledged write (on by default).
    pub fsync: bool,
    /// Voters at most; further members stay learners.
    pub max_voters: usize,
    /// Bound `Join`s from loopback too (they are exempt: `flotilla up` starts a
    /// federation's members on one host at once). For tests of the bound.
    pub limit_loopback_joins: bool,
    /// How long `Bootstrap::Join` keeps trying.
    pub join_timeout: Duration,
    /// Test-only link faults (partitions); `None` in production.
    pub faults: Option<crate::network::FaultInjector>,
    /// This member's wall clock: the system's, unless a test steps it (see
    /// [`crate::clock`]).
    pub wall_clock: crate::clock::WallClock,
    /// Test-only: a disk that fills up ([`crate::store::StorageFaults`]); `None` in
    /// production.
    pub storage_faults: Option<crate::store::StorageFaults>,
    /// The federation CA, on the server that holds its key: it serves
    /// `flotilla.v1.PkiService` (join with a token, renew).
    pub ca: Option<Arc<CaHolder>>,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>, federation: impl Into<String>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            federation: federation.into(),
            node_id: None,
            advertise: None,
            security: TransportSecurity::Plaintext,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            snapshot_after_entries: 10_000,
            entries_kept_after_snapshot: 1_000,
            store_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
            housekeeping_interval: Some(Duration::from_millis(500)),
            max_message_bytes: 16 * 1024 * 1024,
            max_snapshot_bytes: 1024 * 1024 * 1024,
            fsync: true,
            max_voters: 5,
            limit_loopback_joins: false,
            join_timeout: Duration::from_secs(60),
            faults: None,
            wall_clock: crate::clock::WallClock::default(),
            storage_faults: None,
            ca: None,
        }
    }

    /// Checks the configuration before anything binds or opens.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.federation.is_empty() || self.federation.len() > 63 {
            return bad(format!(
                "federation name {:?} must be 1 to 63 characters",
                self.federation
            ));
        }
        if self.node_id == Some(0) {
            return bad("node id 0 is reserved".into());
        }
        if self.heartbeat_interval.is_zero()
            || self.election_timeout_min <= self.heartbeat_interval
            || self.election_timeout_max <= self.election_timeout_min
        {
            return bad(format!(
                "need 0 < heartbeat ({:?}) < election timeout min ({:?}) < max ({:?})",
                self.heartbeat_interval, self.election_timeout_min, self.election_timeout_max
            ));
        }
        if !(1..=7).contains(&self.max_voters) {
            return bad(format!(
                "max voters {} is not between 1 and 7",
                self.max_voters
            ));
        }
        if self.max_message_bytes < 64 * 1024 {
            return bad(format!(
                "max message size {} is below 64 KiB",
                self.max_message_bytes
            ));
        }
        if self.snapshot_after_entries == 0 {
            return bad("a snapshot after 0 entries: it must be at least 1".into());
        }
        if self.store_cache_bytes < 1024 * 1024 {
            return bad(format!(
                "store cache of {} bytes is below 1 MiB",
                self.store_cache_bytes
            ));
        }
        Ok(())
    }
}

/// How a server starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Start a new federation with this server as its only voter (a no-op if the data
    /// directory already holds one).
    Init,
    /// Ask the member at this address to add this server (as a learner, promoted to
    /// voter while that keeps an odd number of voters, at most `max_voters`). A no-op
    /// if already a member.
    Join(String),
    /// Carry on with what the data directory holds.
    Resume,
}

/// How long [`RegistryServer::shutdown`] waits for the store to be closed.
const STORE_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// A running flotilla server.
pub struct RegistryServer {
    node_id: NodeId,
    federation: String,
    local_addr: SocketAddr,
    advertise: String,
    raft: Raft,
    sm: StateMachineStore,
    shutdown: watch::Sender<bool>,
    grpc: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    tasks: Vec<JoinHandle<()>>,
    store: crate::store::StoreRelease,
}

impl std::fmt::Debug for RegistryServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryServer")
            .field("node_id", &self.node_id)
            .field("federation", &self.federation)
            .field("local_addr", &self.local_addr)
            .field("advertise", &self.advertise)
            .finish()
    }
}

impl RegistryServer {
    /// Opens the data directory, starts Raft and serves on `listener`, then bootstraps.
    pub async fn start(
        config: ServerConfig,
        listener: TcpListener,
        bootstrap: Bootstrap,
    ) -> Result<RegistryServer> {
        config.validate()?;
        let local_addr = listener.local_addr().map_err(|e| Error::Bind {
            addr: "listener".into(),
            source: e,
        })?;
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        let opened = open_store(&config).await?;
        let node_id = opened.node_id;
        let sm = opened.state_machine.clone();
        let store = opened.release();
        let (revoked_peers, reported) = tokio::sync::mpsc::channel(crate::left_members::QUEUE);
        let standing = crate::network::PeerStanding::new(sm.clone(), revoked_peers);
        let raft = start_raft(&config, opened, standing).await?;
        let (shutdown, _) = watch::channel(false);
        let clock = crate::clock::FederationClock::new(config.wall_clock.clone());
        let proposer = crate::propose::Proposer::spawn(raft.clone(), sm.clone(), clock);
        let api = registry_api(&config, &raft, &proposer, &sm, node_id);
        let evictions = tokio::spawn(crate::left_members::run(
            api.clone(),
            reported,
            shutdown.subscribe(),
        ));
        let router = grpc_router(&config, &raft, api, &shutdown).await?;
        let grpc = serve(router, listener, &config.security, &shutdown);
        let tasks = config
            .housekeeping_interval
            .map(|interval| {
                tokio::spawn(crate::housekeeping::run(
                    raft.clone(),
                    proposer,
                    sm.clone(),
                    node_id,
                    interval,
                    shutdown.subscribe(),
                ))
            })
            .into_iter()
            .chain([evictions])
            .collect();
        let server = RegistryServer {
            node_id,
            federation: config.federation.clone(),
            local_addr,
            advertise,
            raft,
            sm,
            shutdown,
            grpc,
            tasks,
            store,
        };
        server.bootstrap(bootstrap, &config).await
    }

    /// Inits, joins or resumes; a server that cannot is shut down, not left half
    /// started.
    async fn bootstrap(self, bootstrap: Bootstrap, config: &ServerConfig) -> Result<Self> {
        let started = match bootstrap {
            Bootstrap::Resume => Ok(()),
            Bootstrap::Init => self.init().await,
            Bootstrap::Join(addr) => self.join(&addr, config).await,
        };
        if let Err(e) = started {
            let _ = self.shutdown().await;
            return Err(e);
        }
        Ok(self)
    }

    async fn init(&self) -> Result<()> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Stopped(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let members = BTreeMap::from([(self.node_id, Node::new(self.advertise.clone()))]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| Error::Raft(format!("initialize federation {:?}: {e}", self.federation)))
    }

    async fn join(&self, addr: &str, config: &ServerConfig) -> Result<()> {
        let already = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&self.node_id)
            .is_some();
        if already {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + config.join_timeout;
        let channel = config.security.channel(addr, config.election_timeout_max)?;
        let mut client = RegistryClient::new(channel);
        loop {
            let req = JoinRequest {
                federation: self.federation.clone(),
                node_id: self.node_id,
                address: self.advertise.clone(),
            };
            let err = match client.join(req).await {
                Ok(_) => return Ok(()),
                Err(status) => Error::Rpc {
                    peer: addr.to_owned(),
                    code: status.code(),
                    message: status.message().to_owned(),
                },
            };
            if !err.is_retryable() || tokio::time::Instant::now() >= deadline {
                return Err(err);
            }
            tracing::info!(%addr, error = %err, "join not accepted yet; retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn federation(&self) -> &str {
        &self.federation
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address other servers use.
    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The registry as this server has applied it (a local read).
    pub fn applied(&self) -> Applied {
        self.sm.current()
    }

    /// Stops housekeeping, Raft and the gRPC server; waits for each to end.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let raft = self
            .raft
            .shutdown()
            .await
            .map_err(|e| Error::Stopped(format!("raft did not stop cleanly: {e}")));
        match self.grpc.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "gRPC server task failed"),
        }
        // Returning means the data directory can be opened again (a restart in the
        // same process): drop our own handle, then wait for Raft's storage tasks.
        drop(self.sm);
        if !self.store.wait(STORE_RELEASE_WAIT).await {
            tracing::warn!(
                waited = ?STORE_RELEASE_WAIT,
                "the store is still held after shutdown; reopening the data directory may find it locked"
            );
        }
        raft
    }
}

/// Opens (or creates) the data directory's store, off the async threads: it reads
/// and may fsync files.
async fn open_store(config: &ServerConfig) -> Result<store::Opened> {
    let store_config = StoreConfig {
        data_dir: config.data_dir.clone(),
        federation: config.federation.clone(),
        node_id: config.node_id,
        fsync: config.fsync,
        mtls: matches!(config.security, TransportSecurity::Mtls(_)),
        cache_bytes: config.store_cache_bytes,
        faults: config.storage_faults.clone(),
    };
    tokio::task::spawn_blocking(move || store::open(&store_config))
        .await
        .map_err(|e| Error::Stopped(format!("opening the store: {e}")))?
}

fn raft_config(config: &ServerConfig) -> Result<openraft::Config> {
    let ms = |d: Duration| d.as_millis() as u64;
    openraft::Config {
        cluster_name: config.federation.clone(),
        heartbeat_interval: ms(config.heartbeat_interval),
        election_timeout_min: ms(config.election_timeout_min),
        election_timeout_max: ms(config.election_timeout_max),
        install_snapshot_timeout: 10_000,
        max_payload_entries: 512,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
        max_in_snapshot_log_to_keep: config.entries_kept_after_snapshot,
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::Config(format!("raft: {e}")))
}

/// Starts this member's Raft on the opened store, talking to peers over `config`'s
/// transport.
async fn start_raft(
    config: &ServerConfig,
    opened: store::Opened,
    standing: crate::network::PeerStanding,
) -> Result<Raft> {
    let raft_config = raft_config(config)?;
    let network = Network::new(NetworkConfig {
        federation: config.federation.clone(),
        node_id: opened.node_id,
        security: config.security.clone(),
        max_message_bytes: config.max_message_bytes,
        snapshot_chunk_bytes: (config.max_message_bytes / 2).min(4 * 1024 * 1024),
        connect_timeout: config.election_timeout_min,
        faults: config.faults.clone(),
        standing: config.security.authenticates().then_some(standing),
    });
    Raft::new(
        opened.node_id,
        Arc::new(raft_config),
        network,
        opened.log,
        opened.state_machine,
    )
    .await
    .map_err(|e| Error::Stopped(format!("starting raft: {e}")))
}

/// The internal registry service, which the v1 services also go through.
fn registry_api(
    config: &ServerConfig,
    raft: &Raft,
    proposer: &crate::propose::Proposer,
    sm: &StateMachineStore,
    node_id: NodeId,
) -> RegistryApi {
    RegistryApi {
        raft: raft.clone(),
        proposer: proposer.clone(),
        sm: sm.clone(),
        node_id,
        federation: config.federation.clone(),
        forwarder: Forwarder::new(
            config.security.clone(),
            config.election_timeout_min,
            config.max_message_bytes,
            node_id,
            config.faults.clone(),
        ),
        max_voters: config.max_voters,
        log_policy: crate::api::LogPolicy {
            snapshot_after_entries: config.snapshot_after_entries,
            entries_kept_after_snapshot: config.entries_kept_after_snapshot,
        },
        retry_after: config.election_timeout_max,
        authenticates: config.security.authenticates(),
    }
}

/// Every gRPC service of a server (health, reflection, Raft, the internal registry,
/// the v1 API), each reported serving to health checks.
async fn grpc_router(
    config: &ServerConfig,
    raft: &Raft,
    api: RegistryApi,
    shutdown: &watch::Sender<bool>,
) -> Result<tonic::transport::server::Router> {
    let max = config.max_message_bytes;
    let raft_svc = RaftServer::new(RaftService::new(
        raft.clone(),
        api.sm.clone(),
        config.federation.clone(),
        config.max_snapshot_bytes,
        config.security.authenticates(),
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let (serving_tx, serving) = tokio::sync::watch::channel(false);
    let core = ApiCore {
        api: api.clone(),
        authenticates: config.security.authenticates(),
        shutdown: shutdown.subscribe(),
        serving,
    };
    let api_svc = RegistryGrpc::new(api)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let (health, health_svc) = tonic_health::server::health_reporter();
    // Every service's health follows the member's (the health module).
    use tonic::server::NamedService;
    let mut services = vec![
        <RaftServer<RaftService> as NamedService>::NAME,
        <RegistryGrpc<RegistryApi> as NamedService>::NAME,
    ];
    macro_rules! v1 {
        ($svc:ident, $ty:ty, $inner:expr) => {{
            let svc = $svc::new($inner)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max);
            services.push(<$svc<$ty> as NamedService>::NAME);
            svc
        }};
    }
    let federation_svc = v1!(FederationServiceServer, ApiCore, core.clone());
    let capacity_svc = v1!(CapacityServiceServer, ApiCore, core.clone());
    let workload_svc = v1!(WorkloadServiceServer, ApiCore, core.clone());
    let placement_svc = v1!(PlacementServiceServer, ApiCore, core.clone());
    let route_svc = v1!(RouteServiceServer, ApiCore, core.clone());
    let policy_svc = v1!(PolicyServiceServer, ApiCore, core.clone());
    let tenant_svc = v1!(TenantServiceServer, ApiCore, core.clone());
    let mcp_svc = v1!(McpServiceServer, ApiCore, core.clone());
    let pki_svc = v1!(
        PkiServiceServer,
        PkiApi,
        PkiApi {
            core: core.clone(),
            ca: config.ca.clone(),
            desk: crate::v1::pki::JoinDesk::start()?,
            join_rate: std::sync::Arc::new(
                crate::v1::join_rate::JoinRate::default()
                    .limiting_loopback(config.limit_loopback_joins),
            ),
        }
    );
    let signal_svc = v1!(
        SignalServiceServer,
        SignalApi,
        SignalApi {
            core: core.clone(),
            load: Default::default(),
        }
    );
    // Beyond an ordinary election (a couple of election timeouts), no leader means
    // this member is cut off or stopped: its health and its watches say so.
    crate::health::spawn(
        raft.clone(),
        health,
        services,
        config.election_timeout_max * 2,
        serving_tx,
        shutdown.subscribe(),
    );
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(flotilla_proto::PUBLIC_FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| Error::Config(format!("gRPC reflection: {e}")))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("gRPC reflection: {e}")))?;

    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let TransportSecurity::Tls { server, .. } = &config.security {
        builder = builder
            .tls_config((**server).clone())
            .map_err(|e| Error::Config(format!("server TLS: {e}")))?;
    }
    Ok(builder
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(raft_svc)
        .add_service(api_svc)
        .add_service(federation_svc)
        .add_service(capacity_svc)
        .add_service(workload_svc)
        .add_service(placement_svc)
        .add_service(route_svc)
        .add_service(policy_svc)
        .add_service(tenant_svc)
        .add_service(mcp_svc)
        .add_service(pki_svc)
        .add_service(signal_svc))
}

/// Serves `router` on `listener` until `shutdown` says so: mTLS terminated here,
/// or plain TCP (or the builder's TLS).
fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    security: &TransportSecurity,
    shutdown: &watch::Sender<bool>,
) -> JoinHandle<std::result::Result<(), tonic::transport::Error>> {
    let mut stop = shutdown.subscribe();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    match security {
        TransportSecurity::Mtls(m) => {
            let incoming =
                crate::transport::tls_incoming(listener, m.server_config(), shutdown.subscribe());
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        _ => {
            // Accepted sockets need TCP_NODELAY too (the builder's setting covers only
            // the listeners it binds itself); without it small Raft messages wait on
            // delayed ACKs.
            let incoming = tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(30)));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    }
}
