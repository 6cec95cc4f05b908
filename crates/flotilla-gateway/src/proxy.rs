//! The request path: find the route, check the tenant, pick an endpoint, send, and
//! pass the response back as it comes.

use crate::body::{self, Metered, ProxyBody, ReclaimHandle, Reclaimable, Tracked};
use crate::eastwest::EastWestClient;
use crate::error::GatewayError;
use crate::external::ExternalEndpoint;
use crate::governance::{API_KEY_HEADER, Caller, Decision, GovernanceCell, TENANT_HEADER};
use crate::health::{EndpointKey, Failure, Health};
use crate::identity::PeerIdentity;
use crate::metrics::{Metrics, Outcome, TargetKind};
use crate::openai;
use crate::select::{Ejected, Target, pick};
use crate::source::RouteState;
use crate::table::{LocalReplica, ModelRoutes, RemoteGateway, UpstreamProtocol};
use bytes::Bytes;
use flotilla_core::TenantPolicy;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set on the east-west hop to the sending cluster. The receiving gateway delivers
/// such a request to its own replicas and never forwards it again.
pub const HOP_HEADER: &str = "flotilla-hop";
/// Set on the east-west hop to the route (model or service) the sender resolved, so
/// the receiver need not read the body again.
pub const ROUTE_HEADER: &str = "flotilla-route";
/// Set on an answer that came from an approved external endpoint (the last
/// tier), to the endpoint's name.
pub const EXTERNAL_HEADER: &str = "x-flotilla-external-endpoint";

/// Set on a response that says the request was not processed, to why (`draining`,
/// `loading`, `no_ready_replica`, `no_route`). The model stand-in sets it on its
/// refusals and gateways on their own such answers; a gateway that gets it tries
/// another endpoint, as after a failed connect, when it can send the body again.
/// The value is the model's `flotilla_model::NOT_PROCESSED_HEADER`; the gateway does
/// not depend on the model crate.
pub const NOT_PROCESSED_HEADER: &str = "x-flotilla-not-processed";

/// Marks one of the gateway's own answers as not processed.
fn not_processed(mut r: Response<ProxyBody>, reason: &'static str) -> Response<ProxyBody> {
    r.headers_mut()
        .insert(NOT_PROCESSED_HEADER, HeaderValue::from_static(reason));
    r
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerKind {
    Inference,
    EastWest,
}

/// What the connection tells about the caller.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) listener: ListenerKind,
    pub(crate) identity: Option<PeerIdentity>,
}

impl ConnInfo {
    /// The policy whose budgets a request on this connection spends: its tenant's,
    /// where requests come in. The east-west hop spends none, since the gateway
    /// the request came in through already did.
    pub(crate) fn ingress_policy<'g>(
        &self,
        governance: &'g crate::governance::Governance,
        tenant: Option<&String>,
    ) -> Option<&'g TenantPolicy> {
        tenant
            .filter(|_| self.listener == ListenerKind::Inference)
            .and_then(|t| governance.policies.get(t))
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cluster: String,
    pub(crate) federation: String,
    pub(crate) max_body_bytes: usize,
    pub(crate) connect_timeout: std::time::Duration,
    pub(crate) governance: GovernanceCell,
    pub(crate) limits: crate::limits::RateLimits,
    pub(crate) external: Vec<Arc<ExternalEndpoint>>,
    pub(crate) routes: RouteState,
    pub(crate) health: Health,
    pub(crate) metrics: Metrics,
    pub(crate) local_h1: Client<HttpConnector, ProxyBody>,
    pub(crate) local_h2c: Client<HttpConnector, ProxyBody>,
    pub(crate) east_west: Option<EastWestClient>,
}

pub(crate) enum ReqBody {
    Buffered(Bytes),
    Stream(Incoming),
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    let trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("trailers"));
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    // gRPC needs `te: trailers` end to end; it is the one TE value HTTP/2 allows.
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn host_of(parts: &Parts) -> Option<String> {
    let raw = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))?;
    // Strip a port, minding bracketed IPv6 literals.
    let host = match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => raw[..i].to_owned(),
        _ => raw,
    };
    Some(host)
}

/// Now, in ms since the epoch.
pub(crate) fn now_ms() -> u64 {
    flotilla_client::convert::timestamp_of(std::time::SystemTime::now()).0
}

impl Shared {
    pub(crate) async fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let table = self.routes.current();
        let trusted_gateway = conn.listener == ListenerKind::EastWest
            && conn
                .identity
                .as_ref()
                .is_some_and(|id| id.role == "gateway" && id.federation == self.federation);
        let (mut parts, body) = req.into_parts();
        let hop_route = if trusted_gateway {
            parts
                .headers
                .remove(ROUTE_HEADER)
                .and_then(|v| v.to_str().ok().map(str::to_owned))
        } else {
            // Only a gateway may speak for a tenant or a route.
            parts.headers.remove(TENANT_HEADER);
            parts.headers.remove(ROUTE_HEADER);
            None
        };
        parts.headers.remove(HOP_HEADER);

        if parts.method == Method::GET && parts.uri.path() == "/v1/models" {
            return self.model_list(&table, &parts.headers, &conn, trusted_gateway);
        }

        // Only with MCP servers registered: the host is read (and allocated)
        // for nothing else on this path.
        if !table.mcp.is_empty()
            && !openai::is_model_path(parts.uri.path())
            && let Some(server) = table.mcp_server(host_of(&parts).as_deref(), parts.uri.path())
        {
            return self
                .handle_mcp(server, &table, &conn, trusted_gateway, parts, body)
                .await;
        }

        let (key, body) = if let Some(route) = hop_route {
            (route, ReqBody::Stream(body))
        } else if parts.method == Method::POST && openai::is_model_path(parts.uri.path()) {
            let bytes = match Limited::new(body, self.max_body_bytes).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e)
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() =>
                {
                    self.metrics.request("", false, Outcome::TooLarge);
                    return openai::error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "invalid_request_error",
                        "request_too_large",
                        None,
                        &format!(
                            "the request body is over the gateway's limit of {} bytes",
                            self.max_body_bytes
                        ),
                    );
                }
                Err(e) => {
                    self.metrics.request("", false, Outcome::BadRequest);
                    return openai::error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "body_unreadable",
                        None,
                        &format!("could not read the request body: {e}"),
                    );
                }
            };
            match openai::model_of(&bytes) {
                Ok(model) => (model, ReqBody::Buffered(bytes)),
                Err(msg) => {
                    self.metrics.request("", false, Outcome::BadRequest);
                    return openai::error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "invalid_model",
                        Some("model"),
                        &msg,
                    );
                }
            }
        } else {
            let host = host_of(&parts);
            match table.match_host(host.as_deref(), parts.uri.path()) {
                Some(service) => (service.to_owned(), ReqBody::Stream(body)),
                None => {
                    self.metrics.request("", false, Outcome::UnknownModel);
                    return not_processed(
                        openai::error(
                            StatusCode::NOT_FOUND,
                            "invalid_request_error",
                            "route_not_found",
                            None,
                            &format!(
                                "no route for host `{}` and path `{}`",
                                host.as_deref().unwrap_or(""),
                                parts.uri.path()
                            ),
                        ),
                        "no_route",
                    );
                }
            }
        };

        let Some(routes) = table.models.get(&key) else {
            self.metrics.request(&key, false, Outcome::UnknownModel);
            // A peer whose table lags may not know the model yet: the sender can
            // still try another cluster.
            return not_processed(
                openai::error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "model_not_found",
                    Some("model"),
                    &format!(
                        "the model `{key}` does not exist or is not served by this federation"
                    ),
                ),
                "no_route",
            );
        };

        let caller = Caller {
            identity: conn.identity.as_ref(),
            trusted_gateway,
            now_ms: now_ms(),
        };
        let governance = self.governance.load();
        let tenant = match governance.decide(&key, &parts.headers, caller) {
            Decision::Allow { tenant } => tenant,
            Decision::Unauthorized(msg) => {
                self.metrics.request(&key, true, Outcome::Unauthorized);
                self.metrics.denied(None, "unauthenticated");
                tracing::info!(tenant = "", model = %key, policy = "", reason = %msg, "request denied");
                return openai::error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    "invalid_api_key",
                    None,
                    &msg,
                );
            }
            Decision::Forbidden { message, tenant } => {
                self.metrics.request(&key, true, Outcome::Forbidden);
                self.metrics.denied(Some(&tenant), "model_not_approved");
                tracing::info!(tenant = %tenant, model = %key, policy = %tenant, reason = %message, "request denied");
                return openai::error(
                    StatusCode::FORBIDDEN,
                    "permission_denied",
                    "model_not_approved",
                    Some("model"),
                    &message,
                );
            }
        };

        // Budgets are spent where the request comes in, and the last tier is
        // chosen there; the hop does neither.
        let ingress_policy = conn.ingress_policy(&governance, tenant.as_ref());
        let (mut metered, mut last_tier) = (None, None);
        if let Some(policy) = ingress_policy {
            if let Some(refusal) = self.over_limit(&key, policy) {
                return refusal;
            }
            metered = (policy.tokens_per_minute > 0)
                .then(|| (policy.tenant.clone(), policy.tokens_per_minute));
            last_tier = self.external_for(&key, policy);
        }
        // The client's credentials end here: neither replicas nor other clusters
        // see them (the hop carries the tenant established here instead).
        parts.headers.remove(header::AUTHORIZATION);
        parts.headers.remove(API_KEY_HEADER);
        // A request that came over the hop is delivered here or nowhere.
        let allow_remote = conn.listener == ListenerKind::Inference;
        let resp = self
            .forward(&key, routes, parts, body, tenant, allow_remote, last_tier)
            .await;
        match metered {
            Some((tenant, per_minute)) if resp.status().is_success() => {
                self.metered(resp, tenant, per_minute)
            }
            _ => resp,
        }
    }

    /// The first external endpoint the policy approves that serves `model`.
    fn external_for(&self, model: &str, policy: &TenantPolicy) -> Option<Arc<ExternalEndpoint>> {
        policy.external_endpoints.iter().find_map(|name| {
            self.external
                .iter()
                .find(|e| &e.name == name && e.models.contains_key(model))
                .cloned()
        })
    }

    /// The last tier's answer: no cluster could take the request, and the
    /// tenant's policy approves `endpoint` for the model.
    async fn send_external(
        &self,
        key: &str,
        endpoint: &ExternalEndpoint,
        parts: &Parts,
        body: Bytes,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let sent = endpoint
            .send(
                key,
                &parts.method,
                parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                parts.headers.clone(),
                body,
                self.connect_timeout,
            )
            .await;
        match sent {
            Ok(resp) => {
                self.metrics
                    .upstream_latency(TargetKind::External, started.elapsed());
                self.metrics
                    .request(key, true, Outcome::of_upstream(resp.status()));
                tracing::info!(model = key, endpoint = %endpoint.name, status = resp.status().as_u16(), "no cluster could serve the request; an approved external endpoint did");
                let (mut rparts, rbody) = resp.into_parts();
                for_the_client(&mut rparts);
                if let Ok(v) = HeaderValue::from_str(&endpoint.name) {
                    rparts.headers.insert(EXTERNAL_HEADER, v);
                }
                Response::from_parts(rparts, rbody.map_err(body::BoxError::from).boxed_unsync())
            }
            Err(e) => {
                self.metrics.request(key, true, Outcome::UpstreamFailed);
                tracing::warn!(model = key, endpoint = %endpoint.name, error = %e, "the approved external endpoint failed too");
                openai::error(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    "upstream_failed",
                    None,
                    &format!("no ready replica of `{key}` in the federation, and {e}"),
                )
            }
        }
    }

    /// The 429 (with `Retry-After`) when the policy's request or token budget
    /// admits no more requests now.
    fn over_limit(&self, key: &str, policy: &TenantPolicy) -> Option<Response<ProxyBody>> {
        let (message, wait) = self.budget_spent(key, policy, true)?;
        let resp = openai::error(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "rate_limit_exceeded",
            None,
            &message,
        );
        Some(with_retry_after(resp, wait))
    }

    /// Which budget of `policy` admits no request now (counted and logged), and
    /// how long until it does. Tokens are checked first, where the request can
    /// spend them: that check takes nothing, so a request refused for its tokens
    /// does not spend the request budget too.
    pub(crate) fn budget_spent(
        &self,
        key: &str,
        policy: &TenantPolicy,
        spends_tokens: bool,
    ) -> Option<(String, Duration)> {
        let now = Instant::now();
        let t = &policy.tenant;
        let (limit, wait) = if spends_tokens
            && policy.tokens_per_minute > 0
            && let Err(wait) = self.limits.tokens_left(t, policy.tokens_per_minute, now)
        {
            (format!("{} tokens", policy.tokens_per_minute), wait)
        } else if policy.requests_per_minute > 0
            && let Err(wait) = self.limits.take_request(t, policy.requests_per_minute, now)
        {
            (format!("{} requests", policy.requests_per_minute), wait)
        } else {
            return None;
        };
        self.metrics.request(key, true, Outcome::RateLimited);
        self.metrics.denied(Some(t), "rate_limited");
        let message = format!(
            "tenant `{t}` is over its limit of {limit} a minute (policy `{t}`); retry in {:.1} s",
            wait.as_secs_f64()
        );
        tracing::info!(tenant = %t, model = %key, policy = %t, reason = %message, "request denied");
        Some((message, wait))
    }

    /// The answer, its token spend charged to `tenant` as it ends.
    fn metered(
        self: Arc<Self>,
        resp: Response<ProxyBody>,
        tenant: String,
        per_minute: u32,
    ) -> Response<ProxyBody> {
        let (parts, body) = resp.into_parts();
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let on_spent = Box::new(move |spent: u64| {
            self.limits
                .spend_tokens(&tenant, per_minute, spent, Instant::now());
            self.metrics.tokens_spent(&tenant, spent);
        });
        let body = Metered::new(body, content_type, on_spent).boxed_unsync();
        Response::from_parts(parts, body)
    }

    /// `GET /v1/models`: the models served now that the caller may use (all of
    /// them when governance is off).
    fn model_list(
        &self,
        table: &crate::table::RoutingTable,
        headers: &HeaderMap,
        conn: &ConnInfo,
        trusted_gateway: bool,
    ) -> Response<ProxyBody> {
        let governance = self.governance.load();
        let caller = Caller {
            identity: conn.identity.as_ref(),
            trusted_gateway,
            now_ms: now_ms(),
        };
        let models = table.models.keys().map(String::as_str);
        if !governance.enforce {
            return openai::model_list(models);
        }
        match governance.usable_models(models, headers, caller) {
            Ok(usable) => openai::model_list(usable.into_iter()),
            Err(msg) => {
                self.metrics.denied(None, "unauthenticated");
                tracing::info!(tenant = "", model = "", policy = "", reason = %msg, "request denied");
                openai::error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    "invalid_api_key",
                    None,
                    &msg,
                )
            }
        }
    }

    /// Sends the request to an endpoint of `routes`, trying others while it was
    /// not processed. A response from an endpoint carries its [`EndpointKey`] in
    /// its extensions (MCP pins sessions by it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn forward(
        &self,
        key: &str,
        routes: &ModelRoutes,
        mut parts: Parts,
        body: ReqBody,
        tenant: Option<String>,
        allow_remote: bool,
        last_tier: Option<Arc<ExternalEndpoint>>,
    ) -> Response<ProxyBody> {
        strip_hop_by_hop(&mut parts.headers);
        let mut tried: Vec<EndpointKey> = Vec::new();
        let mut body = Some(body);
        let mut last_error: Option<GatewayError> = None;
        loop {
            // The last tier can take the request while its body is still whole here.
            let last_tier_request = match (&last_tier, &body) {
                (Some(endpoint), Some(ReqBody::Buffered(bytes))) => Some((endpoint, bytes)),
                _ => None,
            };
            let ejected = if last_tier_request.is_some() {
                Ejected::Skip
            } else {
                Ejected::AsLastResort
            };
            let now = Instant::now();
            let Some(target) = pick(routes, &self.health, &tried, allow_remote, ejected, now)
            else {
                if let Some((endpoint, bytes)) = last_tier_request {
                    return self
                        .send_external(key, endpoint, &parts, bytes.clone())
                        .await;
                }
                self.metrics.request(key, true, Outcome::NoReplica);
                let why = match &last_error {
                    Some(e) => format!("; last error: {e}"),
                    None => String::new(),
                };
                let scope = if allow_remote {
                    "in this or any reachable cluster"
                } else {
                    "in this cluster"
                };
                return not_processed(
                    openai::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "no_ready_replica",
                        Some("model"),
                        &format!(
                            "no ready replica of `{key}` {scope} ({} tried){why}",
                            tried.len()
                        ),
                    ),
                    "no_ready_replica",
                );
            };
            let endpoint = target.key();
            let guard = self.health.begin(&endpoint);
            let (send_body, reclaim) = match body.take() {
                Some(ReqBody::Buffered(b)) => {
                    body = Some(ReqBody::Buffered(b.clone()));
                    (body::full(b), None)
                }
                Some(ReqBody::Stream(s)) => {
                    let (r, handle) = Reclaimable::new(s);
                    (r.boxed_unsync(), Some(handle))
                }
                None => {
                    // Unreachable by construction: a failed attempt either puts the
                    // body back or returns.
                    self.metrics.request(key, true, Outcome::UpstreamFailed);
                    return openai::error(
                        StatusCode::BAD_GATEWAY,
                        "server_error",
                        "upstream_failed",
                        None,
                        "request body lost",
                    );
                }
            };
            let mut headers = parts.headers.clone();
            let started = Instant::now();
            let (kind, result) = match target {
                Target::Local(r) => (
                    TargetKind::Local,
                    self.send_local(r, &parts, headers, send_body).await,
                ),
                Target::Remote(g) => {
                    headers.insert(HOP_HEADER, header_value(&self.cluster));
                    headers.insert(ROUTE_HEADER, header_value(key));
                    if let Some(t) = &tenant {
                        headers.insert(TENANT_HEADER, header_value(t));
                    }
                    (
                        TargetKind::Remote,
                        self.send_remote(g, &parts, headers, send_body).await,
                    )
                }
            };
            // A refusal that generated nothing is a failure to reach a replica, not
            // the model's answer: go on like after a failed connect, if the body can
            // be sent again. If it cannot, the refusal itself is the answer.
            let result = match result {
                Ok(resp) if resp.headers().contains_key(NOT_PROCESSED_HEADER) => {
                    let resendable = body.is_some()
                        || match reclaim.as_ref().and_then(ReclaimHandle::reclaim) {
                            Some(b) => {
                                body = Some(ReqBody::Stream(b));
                                true
                            }
                            None => false,
                        };
                    if resendable {
                        let reason = resp
                            .headers()
                            .get(NOT_PROCESSED_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("unreadable reason");
                        Err(GatewayError::NotProcessed {
                            target: endpoint.to_string(),
                            reason: format!("{} {reason}", resp.status().as_u16()),
                        })
                    } else {
                        Ok(resp)
                    }
                }
                other => other,
            };
            match result {
                Ok(resp) => {
                    self.metrics.upstream_latency(kind, started.elapsed());
                    let outcome = Outcome::of_upstream(resp.status());
                    if outcome == Outcome::Upstream5xx {
                        self.health
                            .record_failure(&endpoint, Failure::Failed, Instant::now());
                    } else {
                        self.health.record_success(&endpoint);
                    }
                    self.metrics.request(key, true, outcome);
                    let (mut rparts, rbody) = resp.into_parts();
                    for_the_client(&mut rparts);
                    rparts.extensions.insert(endpoint);
                    return Response::from_parts(rparts, Tracked::new(rbody, guard).boxed_unsync());
                }
                Err(e) if e.retryable() => {
                    // A refusal comes from an endpoint that is up and said why: not a
                    // health failure (a peer gateway without a replica of one model
                    // may serve every other), only not the place for this request.
                    if !matches!(e, GatewayError::NotProcessed { .. }) {
                        self.health
                            .record_failure(&endpoint, Failure::Unreachable, Instant::now());
                    }
                    tracing::info!(model = key, endpoint = %endpoint, error = %e, "not sent or not processed; trying elsewhere");
                    drop(guard);
                    tried.push(endpoint);
                    match (
                        body.is_some(),
                        reclaim.and_then(|h: ReclaimHandle| h.reclaim()),
                    ) {
                        (true, _) => {}
                        (false, Some(b)) => body = Some(ReqBody::Stream(b)),
                        (false, None) => {
                            self.metrics.request(key, true, Outcome::UpstreamFailed);
                            return openai::error(
                                StatusCode::BAD_GATEWAY,
                                "server_error",
                                "upstream_failed",
                                None,
                                &format!(
                                    "{e}; the request body was already partly read and cannot be sent again"
                                ),
                            );
                        }
                    }
                    self.metrics.retry();
                    last_error = Some(e);
                }
                Err(e) => {
                    self.health
                        .record_failure(&endpoint, Failure::Failed, Instant::now());
                    self.metrics.request(key, true, Outcome::UpstreamFailed);
                    tracing::warn!(model = key, endpoint = %endpoint, error = %e, "upstream failed after the request was sent");
                    return openai::error(
                        StatusCode::BAD_GATEWAY,
                        "server_error",
                        "upstream_failed",
                        None,
                        &format!(
                            "{e}. The request reached the model and is not retried, so that it is not generated twice."
                        ),
                    );
                }
            }
        }
    }

    async fn send_local(
        &self,
        replica: &LocalReplica,
        parts: &Parts,
        headers: HeaderMap,
        body: ProxyBody,
    ) -> Result<Response<Incoming>, GatewayError> {
        let target = || format!("replica {}", replica.address);
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = format!("http://{}{pq}", replica.address)
            .parse()
            .map_err(|e| GatewayError::Connect {
                target: target(),
                reason: format!("bad URI: {e}"),
            })?;
        let (client, version) = match replica.protocol {
            UpstreamProtocol::Http1 => (&self.local_h1, Version::HTTP_11),
            UpstreamProtocol::H2c => (&self.local_h2c, Version::HTTP_2),
        };
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        client.request(req).await.map_err(|e| {
            let reason = match std::error::Error::source(&e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            };
            if e.is_connect() {
                GatewayError::Connect {
                    target: target(),
                    reason,
                }
            } else {
                GatewayError::AfterSend {
                    target: target(),
                    reason,
                }
            }
        })
    }

    async fn send_remote(
        &self,
        gw: &RemoteGateway,
        parts: &Parts,
        mut headers: HeaderMap,
        body: ProxyBody,
    ) -> Result<Response<Incoming>, GatewayError> {
        let Some(client) = &self.east_west else {
            return Err(GatewayError::Connect {
                target: format!("gateway of cluster {}", gw.cluster),
                reason: "this gateway has no east-west client configuration".to_owned(),
            });
        };
        // Carry the client's host as :authority, so host-routed services see it.
        let authority = host_of(parts).unwrap_or_else(|| gw.server_name.clone());
        headers.remove(header::HOST);
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri =
            format!("https://{authority}{pq}")
                .parse()
                .map_err(|e| GatewayError::Connect {
                    target: format!("gateway of cluster {}", gw.cluster),
                    reason: format!("bad URI: {e}"),
                })?;
        let sender = client.checkout(gw).await?;
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = headers;
        EastWestClient::send(sender, gw, req).await
    }
}

/// An upstream answer's head as the client gets it: without hop-by-hop
/// headers, in HTTP/1.1 terms (hyper speaks whatever the client's connection does).
fn for_the_client(parts: &mut hyper::http::response::Parts) {
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

pub(crate) fn empty_response(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = status;
    r
}

/// `resp` with `Retry-After` in whole seconds (at least 1).
pub(crate) fn with_retry_after(
    mut resp: Response<ProxyBody>,
    wait: Duration,
) -> Response<ProxyBody> {
    let seconds = wait.as_secs_f64().ceil().max(1.0);
    if let Ok(v) = HeaderValue::from_str(&format!("{seconds:.0}")) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}
