//! Test fixtures: a PKI made with rcgen, upstream replicas that count what they
//! get, gateways on port 0, and a small HTTP client.

use bytes::Bytes;
use flotilla_gateway::{
    Gateway, GatewayAddress, GatewayConfig, GatewayError, HealthSettings, Listeners,
    RegistryStatus, ReplicaPhase, RouteEvent, RouteSource, RouteState, RoutingTable,
    StaticEndpoint, StaticReplica, StaticRoute, StaticRoutes,
};
use flotilla_model::{ModelConfig, Replica};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub(crate) const FEDERATION: &str = "testfed";

/// What every test runs under (with `flotilla_testkit::bounded`) unless it says
/// otherwise, so that a hang fails instead of stalling CI.
pub(crate) const LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- PKI

pub(crate) struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    /// A leaf for `spiffe://testfed/cluster/<cluster>/<role>`, valid for the DNS
    /// name `<cluster>.gateway.test`.
    pub(crate) fn leaf(
        &self,
        cluster: &str,
        role: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(vec![server_name(cluster)]).unwrap();
        params.subject_alt_names.push(SanType::URI(
            format!("spiffe://{FEDERATION}/cluster/{cluster}/{role}")
                .try_into()
                .unwrap(),
        ));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    pub(crate) fn server_config(&self, cluster: &str) -> Arc<ServerConfig> {
        let verifier = WebPkiClientVerifier::builder(Arc::new(self.roots()))
            .build()
            .unwrap();
        let (chain, key) = self.leaf(cluster, "gateway");
        Arc::new(
            ServerConfig::builder()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap(),
        )
    }

    pub(crate) fn client_config(&self, cluster: &str, role: &str) -> ClientConfig {
        let (chain, key) = self.leaf(cluster, role);
        ClientConfig::builder()
            .with_root_certificates(self.roots())
            .with_client_auth_cert(chain, key)
            .unwrap()
    }

    /// A certificate from this CA, trusting `other`'s servers: a foreign client
    /// that gets as far as presenting its certificate, and is refused for it alone.
    pub(crate) fn client_config_trusting(
        &self,
        other: &Pki,
        cluster: &str,
        role: &str,
    ) -> ClientConfig {
        let (chain, key) = self.leaf(cluster, role);
        ClientConfig::builder()
            .with_root_certificates(other.roots())
            .with_client_auth_cert(chain, key)
            .unwrap()
    }

    /// A server certificate for 127.0.0.1 from this CA, asking clients for none:
    /// a provider outside the federation, reached by address.
    pub(crate) fn ip_server_config(&self) -> Arc<ServerConfig> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Arc::new(
            ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key)
                .unwrap(),
        )
    }

    /// This CA's certificate, PEM.
    pub(crate) fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// Trusts this CA but presents no certificate.
    pub(crate) fn anonymous_client_config(&self) -> ClientConfig {
        ClientConfig::builder()
            .with_root_certificates(self.roots())
            .with_no_client_auth()
    }
}

pub(crate) fn server_name(cluster: &str) -> String {
    format!("{cluster}.gateway.test")
}

// ---------------------------------------------------------------- upstreams

/// What a stand-in replica does with each request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// Answers `<name> <method> <path> <body length>`.
    Echo,
    /// Answers an SSE stream whose events the test sends (see `Upstream::streams`).
    Sse,
    /// Reads the whole request, then drops the connection without answering: the
    /// model got the request and died.
    DieAfterBody,
    /// Answers with this status.
    Status(u16),
    /// Reads the request, then refuses it as a draining model does: 503 with
    /// `x-flotilla-not-processed: draining`.
    NotProcessed,
}

pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) hits: Arc<AtomicUsize>,
    /// One sender per SSE request, in arrival order.
    pub(crate) streams: Mutex<mpsc::UnboundedReceiver<mpsc::Sender<Bytes>>>,
    pub(crate) last_headers: Arc<Mutex<Option<hyper::HeaderMap>>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A body fed from a channel: each message is one frame, sent as it arrives.
pub(crate) struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type BoxErr = std::io::Error;
type UpBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

impl Upstream {
    pub(crate) async fn start(name: &str, mode: Mode) -> Upstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name, mode).await
    }

    pub(crate) async fn start_on(addr: SocketAddr, name: &str, mode: Mode) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (stream_tx, stream_rx) = mpsc::unbounded_channel();
        let last_headers = Arc::new(Mutex::new(None));
        let name = name.to_owned();
        let (h, lh) = (hits.clone(), last_headers.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (name, hits, stream_tx, lh) =
                    (name.clone(), h.clone(), stream_tx.clone(), lh.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (name, hits, stream_tx, lh) =
                            (name.clone(), hits.clone(), stream_tx.clone(), lh.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            *lh.lock().unwrap() = Some(parts.headers.clone());
                            let body = match body.collect().await {
                                Ok(b) => b.to_bytes(),
                                Err(e) => return Err(BoxErr::other(e.to_string())),
                            };
                            hits.fetch_add(1, Ordering::SeqCst);
                            let resp: Response<UpBody> = match mode {
                                Mode::Echo => Response::new(
                                    Full::new(Bytes::from(format!(
                                        "{name} {} {} {}",
                                        parts.method,
                                        parts.uri.path(),
                                        body.len()
                                    )))
                                    .boxed_unsync(),
                                ),
                                Mode::Sse => {
                                    let (tx, rx) = mpsc::channel(16);
                                    let _ = stream_tx.send(tx);
                                    let mut r = Response::new(ChannelBody(rx).boxed_unsync());
                                    r.headers_mut().insert(
                                        "content-type",
                                        "text/event-stream".parse().unwrap(),
                                    );
                                    r
                                }
                                Mode::DieAfterBody => {
                                    return Err(BoxErr::other("dies"));
                                }
                                Mode::NotProcessed => {
                                    let mut r = Response::new(
                                        Full::new(Bytes::from(name.clone())).boxed_unsync(),
                                    );
                                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                    r.headers_mut().insert(
                                        flotilla_gateway::NOT_PROCESSED_HEADER,
                                        "draining".parse().unwrap(),
                                    );
                                    r
                                }
                                Mode::Status(s) => {
                                    let mut r = Response::new(
                                        Full::new(Bytes::from(name.clone())).boxed_unsync(),
                                    );
                                    *r.status_mut() = StatusCode::from_u16(s).unwrap();
                                    r
                                }
                            };
                            Ok::<_, BoxErr>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hits,
            streams: Mutex::new(stream_rx),
            last_headers,
            task,
        }
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The sender of the next SSE stream this upstream answers.
    pub(crate) async fn next_stream(&self) -> mpsc::Sender<Bytes> {
        loop {
            if let Ok(tx) = self.streams.lock().unwrap().try_recv() {
                return tx;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

// ---------------------------------------------------------------- routes

pub(crate) struct Routes {
    pub(crate) revision: u64,
    pub(crate) routes: Vec<(&'static str, Vec<(&'static str, u32)>)>,
    pub(crate) replicas: Vec<(&'static str, SocketAddr, ReplicaPhase)>,
    pub(crate) gateways: Vec<(&'static str, SocketAddr)>,
}

impl Routes {
    pub(crate) fn table(&self, cluster: &str) -> RoutingTable {
        self.file().to_table(cluster).unwrap()
    }

    pub(crate) fn file(&self) -> StaticRoutes {
        StaticRoutes {
            revision: self.revision,
            gateways: self
                .gateways
                .iter()
                .map(|(c, a)| {
                    (
                        c.to_string(),
                        GatewayAddress {
                            address: *a,
                            server_name: server_name(c),
                        },
                    )
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|(m, eps)| StaticRoute {
                    model: m.to_string(),
                    endpoints: eps
                        .iter()
                        .map(|(c, w)| StaticEndpoint {
                            cluster: c.to_string(),
                            weight: *w,
                        })
                        .collect(),
                })
                .collect(),
            replicas: self
                .replicas
                .iter()
                .map(|(m, a, p)| StaticReplica {
                    model: m.to_string(),
                    address: a.to_string(),
                    phase: *p,
                    protocol: Default::default(),
                    load: None,
                })
                .collect(),
            hosts: vec![],
        }
    }
}

// ---------------------------------------------------------------- gateways

pub(crate) struct TestGateway {
    pub(crate) inference: SocketAddr,
    pub(crate) east_west: Option<SocketAddr>,
    pub(crate) admin: SocketAddr,
    pub(crate) events: Option<mpsc::Sender<RouteEvent>>,
    pub(crate) state: RouteState,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

/// Health settings for tests: no active checks unless a test asks.
pub(crate) fn quiet_health() -> HealthSettings {
    HealthSettings {
        active_interval: None,
        ..HealthSettings::default()
    }
}

pub(crate) fn config(cluster: &str) -> GatewayConfig {
    let mut c = GatewayConfig::new(cluster, FEDERATION);
    c.health = quiet_health();
    c.connect_timeout = Duration::from_secs(2);
    c.shutdown_grace = Duration::from_secs(5);
    c
}

/// `tenant`'s policy approving `models`, with no limits and no external endpoints.
pub(crate) fn policy(tenant: &str, models: &[&str]) -> flotilla_core::TenantPolicy {
    flotilla_core::TenantPolicy {
        tenant: tenant.into(),
        approved_models: models.iter().map(|m| m.to_string()).collect(),
        requests_per_minute: 0,
        tokens_per_minute: 0,
        external_endpoints: Vec::new(),
    }
}

/// [`config`] with governance enforced from a local file's worth: `keys` (API key,
/// tenant) and `policies`.
pub(crate) fn enforcing(
    cluster: &str,
    keys: &[(&str, &str)],
    policies: impl IntoIterator<Item = flotilla_core::TenantPolicy>,
) -> GatewayConfig {
    let mut c = config(cluster);
    c.governance.enforce = true;
    for (key, tenant) in keys {
        c.governance
            .api_keys
            .insert((*key).to_owned(), (*tenant).to_owned());
    }
    for p in policies {
        c.governance.policies.insert(p.tenant.clone(), p);
    }
    c
}

/// A gateway with mTLS east-west from `pki` (pass `None` for a lone cluster).
pub(crate) async fn start_gateway(
    mut config: GatewayConfig,
    pki: Option<&Pki>,
    table: RoutingTable,
) -> TestGateway {
    let inference = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let east_west = match pki {
        Some(pki) => {
            config.east_west_server_tls = Some(pki.server_config(&config.cluster));
            config.east_west_client_tls = Some(pki.client_config(&config.cluster, "gateway"));
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        }
        None => None,
    };
    let state = RouteState::new(RegistryStatus::Connecting);
    state.apply(RouteEvent::Replace(table));
    state.apply(RouteEvent::RegistryConnected);
    let (events, source) = mpsc::channel(8);
    let mut gw = serve_gateway(config, state, (inference, east_west, admin), source);
    gw.events = Some(events);
    gw
}

/// A gateway whose routes come from `source` (the registry, in registry tests).
pub(crate) fn start_gateway_with_source<S: RouteSource>(
    config: GatewayConfig,
    listeners: (TcpListener, Option<TcpListener>, TcpListener),
    source: S,
) -> TestGateway {
    serve_gateway(
        config,
        RouteState::new(RegistryStatus::Connecting),
        listeners,
        source,
    )
}

fn serve_gateway<S: RouteSource>(
    config: GatewayConfig,
    state: RouteState,
    (inference, east_west, admin): (TcpListener, Option<TcpListener>, TcpListener),
    source: S,
) -> TestGateway {
    let addrs = (
        inference.local_addr().unwrap(),
        east_west.as_ref().map(|l| l.local_addr().unwrap()),
        admin.local_addr().unwrap(),
    );
    let gateway = Gateway::new(config, state.clone());
    let (shutdown, stop) = oneshot::channel::<()>();
    let listeners = Listeners {
        inference,
        east_west,
        admin: Some(admin),
    };
    let task = tokio::spawn(gateway.serve(listeners, source, async {
        let _ = stop.await;
    }));
    TestGateway {
        inference: addrs.0,
        east_west: addrs.1,
        admin: addrs.2,
        events: None,
        state,
        shutdown: Some(shutdown),
        task: Some(task),
    }
}

impl TestGateway {
    /// Swaps routes through the source channel and waits until they are in use.
    pub(crate) async fn swap(&self, table: RoutingTable) {
        let revision = table.revision;
        self.events
            .as_ref()
            .unwrap()
            .send(RouteEvent::Replace(table))
            .await
            .unwrap();
        while self.state.current().revision != revision {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub(crate) async fn status(&self) -> serde_json::Value {
        let (s, body) = get(self.admin, "/flotilla/status").await;
        assert_eq!(s, 200);
        serde_json::from_str(&body).unwrap()
    }

    pub(crate) async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.1
    }

    /// Begins a graceful shutdown and returns its task.
    pub(crate) fn begin_shutdown(&mut self) -> JoinHandle<Result<(), GatewayError>> {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------- client

pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub(crate) async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("http://{addr}{}", parts.uri.path_and_query().unwrap())
        .parse()
        .unwrap();
    client()
        .request(Request::from_parts(parts, body))
        .await
        .unwrap()
}

pub(crate) async fn text(resp: Response<Incoming>) -> (u16, String) {
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub(crate) async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    text(send(addr, Request::get(path).body(Full::default()).unwrap()).await).await
}

pub(crate) fn chat(model: &str) -> Request<Full<Bytes>> {
    chat_with(model, &[])
}

pub(crate) fn chat_with(model: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":true}}"#
    );
    let mut b = Request::post("/v1/chat/completions").header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

pub(crate) async fn post_chat(addr: SocketAddr, model: &str) -> (u16, String) {
    text(send(addr, chat(model)).await).await
}

/// The next data frame of a streamed body, or `None` at its end.
pub(crate) async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("no frame within 5 s")?
            .unwrap();
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}

/// The seconds a response's `Retry-After` asks for; 0 without one.
pub(crate) fn retry_after(resp: &Response<Incoming>) -> u64 {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn error_json(body: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["error"].clone()
}

/// A `flotilla model` replica serving in this process.
pub(crate) struct Model {
    pub(crate) addr: SocketAddr,
    pub(crate) replica: Arc<Replica>,
    task: JoinHandle<()>,
}

impl Drop for Model {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn model(id: u64, cluster: &str, model: &str) -> Model {
    let mut c = ModelConfig::new(vec![model.into()], format!("r{id}"), cluster);
    c.ttft = Duration::from_millis(5);
    c.token_delay = Duration::from_millis(1);
    c.default_max_tokens = 4;
    let replica = Arc::new(Replica::new(c).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = replica.clone();
    let task = tokio::spawn(async move {
        let _ = r.serve(listener, std::future::pending()).await;
    });
    Model {
        addr,
        replica,
        task,
    }
}

/// What a provider was sent: each request's `Authorization` header and body.
pub(crate) type ProviderLog = Vec<(Option<String>, serde_json::Value)>;

/// An OpenAI-compatible provider outside the federation, over TLS on 127.0.0.1:
/// answers every request with a chat completion (with `usage`) and keeps what it
/// was sent.
pub(crate) struct Provider {
    pub(crate) addr: SocketAddr,
    pub(crate) seen: Arc<Mutex<ProviderLog>>,
    task: JoinHandle<()>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Provider {
    pub(crate) async fn start(tls: Arc<ServerConfig>) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let kept = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, kept) = (acceptor.clone(), kept.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = req.into_body().collect().await?.to_bytes();
                            let body: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            let model = body["model"].clone();
                            kept.lock().unwrap().push((auth, body));
                            let answer = serde_json::json!({
                                "id": "ext-1", "object": "chat.completion", "model": model,
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the provider"}}],
                                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                            });
                            let mut r = Response::new(Full::new(Bytes::from(answer.to_string())));
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, hyper::Error>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Provider { addr, seen, task }
    }
}
