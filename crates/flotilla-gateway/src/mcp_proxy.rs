//! The request path of an MCP server (`flotilla.v1alpha1`): who is calling,
//! whether the tenant may use the server and each tool it calls, its request
//! budget, which backend holds the session, and what the tenant sees of
//! `tools/list`. The decisions are [`crate::mcp`]'s; sending is the proxy's own
//! `forward`, as for any route.

use crate::body::{self, ProxyBody};
use crate::governance::{API_KEY_HEADER, Caller};
use crate::health::EndpointKey;
use crate::mcp::{self, SESSION_HEADER};
use crate::metrics::Outcome;
use crate::openai;
use crate::proxy::{ConnInfo, ListenerKind, ReqBody, Shared, now_ms, with_retry_after};
use crate::table::{ModelRoutes, RoutingTable};
use flotilla_core::McpServer;
use flotilla_core::mcp::ALL_TOOLS;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde_json::Value;

/// The largest `tools/list` answer the gateway reads whole to filter.
const MAX_TOOL_LIST_BYTES: usize = 8 << 20;

/// A JSON-RPC error answer with no request to answer (`id` null).
fn refused(status: StatusCode, code: i64, message: &str) -> Response<ProxyBody> {
    answer(status, &mcp::error(Value::Null, code, message, None))
}

fn answer(status: StatusCode, value: &Value) -> Response<ProxyBody> {
    openai::json_response(status, serde_json::to_vec(value).unwrap_or_default())
}

impl Shared {
    pub(crate) async fn handle_mcp(
        &self,
        server: &McpServer,
        table: &RoutingTable,
        conn: &ConnInfo,
        trusted_gateway: bool,
        mut parts: Parts,
        body: Incoming,
    ) -> Response<ProxyBody> {
        let key = server.service.as_str();
        let governance = self.governance.load();
        let caller = Caller {
            identity: conn.identity.as_ref(),
            trusted_gateway,
            now_ms: now_ms(),
        };
        let tenant = match governance.tenant(&parts.headers, caller) {
            Ok(t) => t,
            Err(msg) => return self.mcp_denied(key, None, "unauthenticated", &msg),
        };
        // With governance on, `Some` is the tenant whose tools are enforced.
        let enforced = match (governance.enforce, &tenant) {
            (false, _) => None,
            (true, None) => {
                let msg =
                    "no tenant: send an API key (Authorization: Bearer …) or a client certificate";
                return self.mcp_denied(key, None, "unauthenticated", msg);
            }
            (true, Some(t)) if !server.admits(t) => {
                let msg = format!(
                    "tenant `{t}` may not use MCP server `{}` (it grants the tenant no tool)",
                    server.name
                );
                return self.mcp_denied(key, Some(t), "mcp_server_not_granted", &msg);
            }
            (true, Some(t)) => Some(t.as_str()),
        };
        let Some(routes) = table.models.get(key) else {
            self.metrics.request(key, false, Outcome::NoReplica);
            let msg = format!(
                "MCP server `{}` is served by `{key}`, which has no route in this federation now",
                server.name
            );
            return refused(StatusCode::SERVICE_UNAVAILABLE, mcp::NOT_ADMITTED, &msg);
        };

        let (body, inspected) = match parts.method {
            Method::POST => match self.read_messages(key, body).await {
                Ok((bytes, inspected)) => (ReqBody::Buffered(bytes), Some(inspected)),
                Err(resp) => return resp,
            },
            // GET opens the server's event stream; DELETE ends a session.
            Method::GET | Method::DELETE => (ReqBody::Stream(body), None),
            _ => {
                self.metrics.request(key, true, Outcome::BadRequest);
                let mut resp = refused(
                    StatusCode::METHOD_NOT_ALLOWED,
                    mcp::INVALID_REQUEST,
                    "MCP's Streamable HTTP transport takes POST, GET and DELETE",
                );
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST, GET, DELETE"));
                return resp;
            }
        };
        if let (Some(t), Some(inspected)) = (enforced, &inspected) {
            let forbidden = mcp::forbidden(inspected, |tool| server.allows(t, tool));
            if !forbidden.is_empty() {
                let tools: Vec<&str> = forbidden.iter().map(|(_, tool)| tool.as_str()).collect();
                self.metrics.request(key, true, Outcome::Forbidden);
                self.metrics.denied(Some(t), "tool_not_allowed");
                tracing::info!(tenant = %t, model = %key, policy = %server.name, reason = %format!("tools not allowed: {}", tools.join(", ")), "request denied");
                return match mcp::refusal(inspected, &forbidden, t, &server.name) {
                    Some(value) => answer(StatusCode::OK, &value),
                    None => refused(
                        StatusCode::FORBIDDEN,
                        mcp::TOOL_NOT_ALLOWED,
                        &format!(
                            "tool `{}` is not allowed for tenant `{t}` on MCP server `{}`",
                            tools[0], server.name
                        ),
                    ),
                };
            }
        }

        // A POSTed message (a tool call, a list) is a request of the tenant's like
        // any other: it spends the request budget where it comes in (MCP spends no
        // tokens). Opening the event stream or ending a session spends nothing, so
        // that a tenant over its budget can still let go of its sessions.
        let ingress_policy = conn
            .ingress_policy(&governance, tenant.as_ref())
            .filter(|_| inspected.is_some());
        if let Some(policy) = ingress_policy
            && let Some((message, wait)) = self.budget_spent(key, policy, false)
        {
            let resp = refused(StatusCode::TOO_MANY_REQUESTS, mcp::RATE_LIMITED, &message);
            return with_retry_after(resp, wait);
        }

        let pinned_routes;
        let routes = match self.session_routes(key, routes, &mut parts) {
            Ok(Some(r)) => {
                pinned_routes = r;
                &pinned_routes
            }
            Ok(None) => routes,
            Err(resp) => return *resp,
        };
        parts.headers.remove(header::AUTHORIZATION);
        parts.headers.remove(API_KEY_HEADER);
        let allow_remote = conn.listener == ListenerKind::Inference;
        let resp = self
            .forward(key, routes, parts, body, tenant.clone(), allow_remote, None)
            .await;
        let resp = pin_session(resp);
        let filter_for = enforced.filter(|t| !server.allows(t, ALL_TOOLS));
        match (filter_for, inspected) {
            (Some(t), Some(inspected)) if !inspected.tool_lists.is_empty() => {
                self.filter_tool_lists(resp, server, t, &inspected.tool_lists)
                    .await
            }
            _ => resp,
        }
    }

    /// The POSTed body and what it holds, or the answer that refuses it.
    async fn read_messages(
        &self,
        key: &str,
        body: Incoming,
    ) -> Result<(bytes::Bytes, mcp::Inspected), Response<ProxyBody>> {
        let bytes = match Limited::new(body, self.max_body_bytes).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                self.metrics.request(key, true, Outcome::BadRequest);
                let msg = if e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    format!(
                        "the message is over the gateway's limit of {} bytes",
                        self.max_body_bytes
                    )
                } else {
                    format!("the message could not be read: {e}")
                };
                return Err(refused(StatusCode::BAD_REQUEST, mcp::INVALID_REQUEST, &msg));
            }
        };
        match mcp::inspect(&bytes) {
            Ok(inspected) => Ok((bytes, inspected)),
            Err(bad) => {
                self.metrics.request(key, true, Outcome::BadRequest);
                tracing::info!(model = %key, reason = %bad.message, "an MCP message that is not JSON-RPC 2.0 was refused");
                Err(refused(StatusCode::BAD_REQUEST, bad.code, &bad.message))
            }
        }
    }

    /// The only endpoint a request of a pinned session may go to, with the
    /// session header put back as its server gave it; `None` for a request
    /// outside a session this gateway pinned. A session whose endpoint is gone is
    /// 404, which tells an MCP client to start a new one.
    fn session_routes(
        &self,
        key: &str,
        routes: &ModelRoutes,
        parts: &mut Parts,
    ) -> Result<Option<ModelRoutes>, Box<Response<ProxyBody>>> {
        let Some(session) = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(None);
        };
        let Some((pin, inner)) = mcp::unpin(session) else {
            return Ok(None);
        };
        let Some(pinned) = routes.pinned(pin) else {
            self.metrics.request(key, true, Outcome::NoReplica);
            return Err(Box::new(refused(
                StatusCode::NOT_FOUND,
                mcp::INVALID_REQUEST,
                "the session's server is no longer serving here; start a new session",
            )));
        };
        let inner = HeaderValue::from_str(inner).map_err(|_| {
            Box::new(refused(
                StatusCode::BAD_REQUEST,
                mcp::INVALID_REQUEST,
                "the Mcp-Session-Id header is not visible ASCII",
            ))
        })?;
        parts.headers.insert(SESSION_HEADER, inner);
        Ok(Some(pinned))
    }

    /// The answer with the `tools` of its `tools/list` results cut down to those
    /// the tenant may call.
    async fn filter_tool_lists(
        &self,
        resp: Response<ProxyBody>,
        server: &McpServer,
        tenant: &str,
        list_ids: &[Value],
    ) -> Response<ProxyBody> {
        if !resp.status().is_success() {
            return resp;
        }
        let (mut parts, body) = resp.into_parts();
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let filtered = match read_whole(body, MAX_TOOL_LIST_BYTES).await {
            Ok(bytes) => mcp::filter_tools(&bytes, &content_type, list_ids, |tool| {
                server.allows(tenant, tool)
            }),
            Err(e) => Err(format!("its answer could not be read whole: {e}")),
        };
        match filtered {
            Ok(bytes) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                Response::from_parts(parts, body::full(bytes))
            }
            Err(e) => {
                tracing::warn!(server = %server.name, error = %e, "cannot filter an MCP tool list; refusing it rather than showing tools the tenant may not call");
                refused(
                    StatusCode::BAD_GATEWAY,
                    mcp::NOT_ADMITTED,
                    &format!("MCP server `{}`'s tool list: {e}", server.name),
                )
            }
        }
    }

    fn mcp_denied(
        &self,
        key: &str,
        tenant: Option<&str>,
        reason: &'static str,
        message: &str,
    ) -> Response<ProxyBody> {
        let (status, outcome) = match tenant {
            None => (StatusCode::UNAUTHORIZED, Outcome::Unauthorized),
            Some(_) => (StatusCode::FORBIDDEN, Outcome::Forbidden),
        };
        self.metrics.request(key, true, outcome);
        self.metrics.denied(tenant, reason);
        tracing::info!(tenant = tenant.unwrap_or(""), model = %key, policy = "", reason = %message, "request denied");
        refused(status, mcp::NOT_ADMITTED, message)
    }
}

/// A whole answer, up to `max` bytes.
async fn read_whole(mut body: ProxyBody, max: usize) -> Result<bytes::Bytes, String> {
    let mut whole = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if whole.len() + data.len() > max {
                return Err(format!("it is over {max} bytes"));
            }
            whole.extend_from_slice(&data);
        }
    }
    Ok(whole.freeze())
}

/// The answer with its session id pinned to the endpoint that gave it.
fn pin_session(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let Some(answered) = resp.extensions().get::<EndpointKey>() else {
        return resp;
    };
    let pinned = resp
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| HeaderValue::from_str(&mcp::pinned(answered, s)).ok());
    if let Some(v) = pinned {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}
