//! Listeners, connections and shutdown.

use crate::body::ProxyBody;
use crate::eastwest::{EastWestClient, PeerCheck};
use crate::error::GatewayError;
use crate::governance::Governance;
use crate::health::{EndpointKey, Failure, Health, HealthSettings};
use crate::identity::PeerIdentity;
use crate::metrics::{Gauges, Metrics};
use crate::openai;
use crate::proxy::{ConnInfo, ListenerKind, Shared, empty_response};
use crate::source::{RegistryStatus, RouteEvent, RouteSource, RouteState};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Static configuration: what does not come from the registry.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This cluster's name, as the route table spells it.
    pub cluster: String,
    /// The federation name in peers' SPIFFE identities.
    pub federation: String,
    /// The most of an OpenAI request body read to find its `model`.
    pub max_body_bytes: usize,
    pub connect_timeout: Duration,
    pub health: HealthSettings,
    pub governance: Governance,
    /// Approved external endpoints (`--external-endpoints`): the last tier for
    /// tenants whose policy names them.
    pub external_endpoints: Vec<Arc<crate::external::ExternalEndpoint>>,
    /// TLS for the inference listener; cleartext without it. ALPN is set here.
    pub inference_tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS for the east-west listener. It must require client certificates; the
    /// gateway also drops any connection that presents none.
    pub east_west_server_tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS for calls to other gateways, with this gateway's client certificate.
    pub east_west_client_tls: Option<rustls::ClientConfig>,
    /// How a peer gateway's certificate is matched to the cluster the route names.
    pub east_west_peer_check: PeerCheck,
    /// How long in-flight requests and streams may run on after shutdown begins.
    pub shutdown_grace: Duration,
    pub tls_handshake_timeout: Duration,
}

impl GatewayConfig {
    pub fn new(cluster: impl Into<String>, federation: impl Into<String>) -> GatewayConfig {
        GatewayConfig {
            cluster: cluster.into(),
            federation: federation.into(),
            max_body_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(2),
            health: HealthSettings::default(),
            governance: Governance::default(),
            external_endpoints: Vec::new(),
            inference_tls: None,
            east_west_server_tls: None,
            east_west_client_tls: None,
            east_west_peer_check: PeerCheck::default(),
            shutdown_grace: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }

    fn validate(&self, listeners: &Listeners) -> Result<(), GatewayError> {
        if self.cluster.is_empty() || self.federation.is_empty() {
            return Err(GatewayError::Config(
                "cluster and federation names must not be empty".into(),
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(GatewayError::Config(
                "max_body_bytes must be above zero".into(),
            ));
        }
        if self.health.failures_to_eject == 0 {
            return Err(GatewayError::Config(
                "failures_to_eject must be at least 1".into(),
            ));
        }
        if listeners.east_west.is_some() && self.east_west_server_tls.is_none() {
            return Err(GatewayError::Config(
                "the east-west listener is mTLS only: give it a server TLS configuration".into(),
            ));
        }
        for (tenant, p) in &self.governance.policies {
            p.validate()
                .map_err(|e| GatewayError::Config(format!("policy of tenant `{tenant}`: {e}")))?;
        }
        Ok(())
    }
}

/// The bound listeners; bind first (port 0 in tests), then hand them over.
#[derive(Debug)]
pub struct Listeners {
    pub inference: TcpListener,
    pub east_west: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

/// A gateway, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    config: GatewayConfig,
}

#[derive(serde::Serialize)]
struct Status<'a> {
    cluster: &'a str,
    route_revision: u64,
    models: usize,
    /// `static`, `connecting`, `connected` or `fail_static`.
    registry: &'static str,
    registry_connected: bool,
    fail_static_since_unix_ms: Option<u64>,
    /// When the table was last swapped in, and how long ago (ms).
    routes_replaced_unix_ms: Option<u64>,
    routes_age_ms: Option<u64>,
    ejected: Vec<crate::health::EjectedEndpoint>,
}

impl Gateway {
    pub fn new(config: GatewayConfig, routes: RouteState) -> Gateway {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let local_h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(http.clone());
        let local_h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_timer(TokioTimer::new())
            .build(http);
        let east_west = config.east_west_client_tls.clone().map(|c| {
            EastWestClient::new(
                c,
                config.east_west_peer_check.clone(),
                config.connect_timeout,
            )
        });
        let shared = Arc::new(Shared {
            cluster: config.cluster.clone(),
            federation: config.federation.clone(),
            max_body_bytes: config.max_body_bytes,
            connect_timeout: config.connect_timeout,
            governance: crate::governance::GovernanceCell::new(config.governance.clone()),
            limits: Default::default(),
            external: config.external_endpoints.clone(),
            routes,
            health: Health::new(config.health.clone()),
            metrics: Metrics::default(),
            local_h1,
            local_h2c,
            east_west,
        });
        Gateway { shared, config }
    }

    pub fn routes(&self) -> &RouteState {
        &self.shared.routes
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight
    /// requests and streams finish for up to `shutdown_grace` before cutting them.
    pub async fn serve<S: RouteSource>(
        self,
        listeners: Listeners,
        mut source: S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), GatewayError> {
        self.config.validate(&listeners)?;
        let Listeners {
            inference,
            east_west,
            admin,
        } = listeners;
        let inference_tls = self.config.inference_tls.clone().map(|c| {
            let mut c = (*c).clone();
            if c.alpn_protocols.is_empty() {
                c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            }
            TlsAcceptor::from(Arc::new(c))
        });
        let east_west_tls = self.config.east_west_server_tls.clone().map(|c| {
            let mut c = (*c).clone();
            c.alpn_protocols = vec![b"h2".to_vec()];
            TlsAcceptor::from(Arc::new(c))
        });

        let checker = self
            .config
            .health
            .active_interval
            .map(|every| tokio::spawn(active_checks(self.shared.clone(), every)));

        let graceful = GracefulShutdown::new();
        let mut conns: JoinSet<()> = JoinSet::new();
        let mut source_open = true;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                event = source.next(), if source_open => match event {
                    Some(RouteEvent::Governance(g)) => {
                        tracing::info!(
                            tenants = g.policies.len(),
                            keys = g.keys.len(),
                            "governance replaced"
                        );
                        self.shared.limits.keep_only(&g.policies);
                        self.shared.governance.store(g);
                    }
                    Some(event) => {
                        let replaced = matches!(event, RouteEvent::Replace(_));
                        self.shared.routes.apply(event);
                        if replaced {
                            self.forget_unrouted();
                        }
                    }
                    None => {
                        source_open = false;
                        self.shared.routes.apply(RouteEvent::RegistryLost);
                    }
                },
                accepted = inference.accept() => {
                    let Some(stream) = accepted_or_log(accepted, &inference) else { continue };
                    conns.spawn(serve_conn(self.shared.clone(), stream, ListenerKind::Inference, inference_tls.clone(), self.config.tls_handshake_timeout, graceful.watcher()));
                }
                accepted = accept_opt(east_west.as_ref()) => {
                    let Some(stream) = east_west.as_ref().and_then(|l| accepted_or_log(accepted, l)) else { continue };
                    conns.spawn(serve_conn(self.shared.clone(), stream, ListenerKind::EastWest, east_west_tls.clone(), self.config.tls_handshake_timeout, graceful.watcher()));
                }
                accepted = accept_opt(admin.as_ref()) => {
                    let Some(stream) = admin.as_ref().and_then(|l| accepted_or_log(accepted, l)) else { continue };
                    conns.spawn(serve_admin(self.shared.clone(), stream, graceful.watcher()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }

        drop((inference, east_west, admin));
        tracing::info!(
            connections = graceful.count(),
            "shutting down: no new connections; draining"
        );
        if tokio::time::timeout(self.config.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; closing the connections still open");
        }
        conns.shutdown().await;
        if let Some(c) = checker {
            c.abort();
            let _ = c.await;
        }
        Ok(())
    }

    fn forget_unrouted(&self) {
        let table = self.shared.routes.current();
        self.shared.health.retain(|k| {
            table.models.values().any(|m| match k {
                EndpointKey::Replica(a) => m.local.iter().any(|r| &r.address == a),
                EndpointKey::Gateway(c) => m.remote.iter().any(|g| &g.cluster == c),
            })
        });
    }
}

async fn accept_opt(l: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn accepted_or_log(
    r: std::io::Result<(TcpStream, SocketAddr)>,
    l: &TcpListener,
) -> Option<TcpStream> {
    match r {
        Ok((s, _)) => {
            let _ = s.set_nodelay(true);
            Some(s)
        }
        Err(e) => {
            // Usually EMFILE or a reset before accept; the listener itself is fine.
            tracing::warn!(listener = ?l.local_addr().ok(), error = %e, "accept failed");
            None
        }
    }
}

async fn serve_conn(
    shared: Arc<Shared>,
    stream: TcpStream,
    listener: ListenerKind,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    watcher: Watcher,
) {
    let Some(tls) = tls else {
        let info = Arc::new(ConnInfo {
            listener,
            identity: None,
        });
        return serve_http(shared, TokioIo::new(stream), info, watcher).await;
    };
    let tls_stream = match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
        Ok(Ok(s)) => s,
        // A connection closed before any TLS byte is a TCP health probe (the other
        // gateways' active checks), not a refused peer: not worth a log line.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            tracing::debug!(?listener, error = %e, "connection closed before the TLS handshake");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(?listener, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let peer_cert = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first());
    if listener == ListenerKind::EastWest && peer_cert.is_none() {
        tracing::warn!("east-west connection without a client certificate; closed");
        return;
    }
    let identity = peer_cert.and_then(|c| PeerIdentity::from_cert_der(c.as_ref()));
    let info = Arc::new(ConnInfo { listener, identity });
    serve_http(shared, TokioIo::new(tls_stream), info, watcher).await;
}

async fn serve_http<I>(shared: Arc<Shared>, io: TokioIo<I>, info: Arc<ConnInfo>, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let listener = info.listener;
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(shared.handle(info, req).await) }
    });
    let result = match listener {
        ListenerKind::EastWest => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new()).max_concurrent_streams(1024);
            watcher
                .watch(b.serve_connection(io, svc))
                .await
                .map_err(|e| e.to_string())
        }
        ListenerKind::Inference => {
            let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            watcher
                .watch(b.serve_connection(io, svc))
                .await
                .map_err(|e| e.to_string())
        }
    };
    if let Err(e) = result {
        tracing::debug!(?listener, error = %e, "connection ended with an error");
    }
}

async fn serve_admin(shared: Arc<Shared>, stream: TcpStream, watcher: Watcher) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(admin(&shared, &req)) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

fn admin(shared: &Shared, req: &Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET {
        return empty_response(StatusCode::METHOD_NOT_ALLOWED);
    }
    let table = shared.routes.current();
    let link = shared.routes.link();
    let replaced = shared.routes.replaced_at();
    let now = Instant::now();
    match req.uri().path() {
        "/flotilla/status" => {
            let (registry, since) = match link {
                RegistryStatus::Static => ("static", None),
                RegistryStatus::Connecting => ("connecting", None),
                RegistryStatus::Connected => ("connected", None),
                RegistryStatus::FailStatic { since } => ("fail_static", Some(since)),
            };
            let status = Status {
                cluster: &shared.cluster,
                route_revision: table.revision,
                models: table.models.len(),
                registry,
                registry_connected: link == RegistryStatus::Connected,
                fail_static_since_unix_ms: since
                    .and_then(|s| s.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64),
                routes_replaced_unix_ms: replaced
                    .and_then(|s| s.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64),
                routes_age_ms: replaced
                    .and_then(|s| s.elapsed().ok())
                    .map(|d| d.as_millis() as u64),
                ejected: shared.health.ejected(now),
            };
            openai::json_response(
                StatusCode::OK,
                serde_json::to_vec(&status).unwrap_or_default(),
            )
        }
        "/metrics" => {
            let text = shared.metrics.render(&Gauges {
                fail_static: matches!(link, RegistryStatus::FailStatic { .. }),
                registry_connected: match link {
                    RegistryStatus::Static => None,
                    l => Some(l == RegistryStatus::Connected),
                },
                routes_age: replaced.and_then(|s| s.elapsed().ok()),
                route_revision: table.revision,
                models: table.models.len(),
                ejected: shared.health.ejected(now).len(),
                governance_enforced: shared.governance.load().enforce,
            });
            let mut r = Response::new(crate::body::full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => Response::new(crate::body::full("ok\n")),
        _ => empty_response(StatusCode::NOT_FOUND),
    }
}

/// Probes every routed endpoint with a TCP connect. A refused or timed-out connect
/// counts as a failure like a passive one, so a dead replica is ejected even when
/// no request happens to go its way. A good connect proves little about an HTTP
/// server, so it neither clears failures that requests saw nor ends a back-off.
async fn active_checks(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = shared.health.settings().active_timeout;
    loop {
        tick.tick().await;
        let table = shared.routes.current();
        // Local replicas are `host:port` and may be DNS names: each probe resolves
        // anew (tokio's resolver) and tries every address, as a request's connect
        // does, within the one timeout; a name that does not resolve is a failure.
        let mut targets: Vec<(EndpointKey, String)> = Vec::new();
        for m in table.models.values() {
            targets.extend(
                m.local
                    .iter()
                    .map(|r| (EndpointKey::Replica(r.address.clone()), r.address.clone())),
            );
            targets.extend(m.remote.iter().map(|g| {
                (
                    EndpointKey::Gateway(g.cluster.clone()),
                    g.address.to_string(),
                )
            }));
        }
        targets.sort_by(|a, b| a.1.cmp(&b.1));
        targets.dedup();
        let mut probes = JoinSet::new();
        for (key, addr) in targets {
            probes.spawn(async move {
                let ok = matches!(
                    tokio::time::timeout(timeout, TcpStream::connect(addr.as_str())).await,
                    Ok(Ok(_))
                );
                (key, ok)
            });
        }
        while let Some(Ok((key, ok))) = probes.join_next().await {
            if ok {
                shared.health.record_reachable(&key, Instant::now());
            } else {
                shared
                    .health
                    .record_failure(&key, Failure::Unreachable, Instant::now());
            }
        }
    }
}
